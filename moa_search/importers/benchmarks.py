"""Importers for published benchmark layouts: each maps one source record to one ``Item``.

The layouts are the ones the benchmarks publish (field names below); nothing is downloaded,
the user points at a file they already have.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterator

from ..datasets import FollowUp, Item, json_type
from ..scoring import LETTERS, extract_number
from ..stats import decode_alpacaeval_preferences
from ._read import Row, csv_rows, json_rows, jsonl_rows
from .options import ImportOptions

CHOICE_INSTRUCTION = "Answer with the letter of the correct option."
_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)
_MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")
_MMLU_SPLIT_SUFFIX = re.compile(r"_(?:test|dev|val|validation|train)$")


def render_choices(stem: str, options: list[tuple[str, str]]) -> str:
    """A stem and lettered options, in the layout of the built-in ``choice`` set, so the
    ``choice`` scorer and the simulated world read imported sets as they read that one."""
    lines = "\n".join(f"{letter}) {text}" for letter, text in options)
    return f"{stem.strip()}\n\n{lines}\n\n{CHOICE_INSTRUCTION}"


def gsm8k(path: Path, opts: ImportOptions) -> Iterator[tuple[Row, Item]]:
    """GSM8K JSONL: ``question`` and ``answer``, whose last line is ``#### N`` (the reference;
    thousands separators dropped). The worked solution is kept as ``metadata.solution``."""
    for n, row in enumerate(jsonl_rows(path), start=1):
        question, answer = row.text("question"), row.text("answer")
        match = _GSM8K_FINAL.search(answer or "")
        if match is None or "####" in match.group(1):
            raise row.fail("expected the answer to end with '#### N'", "answer")
        final = match.group(1).replace(",", "").strip()
        if extract_number(final) is None:  # such an item could never be scored right
            raise row.fail(f"expected a number after '####', got {final!r}", "answer")
        yield row, Item(id=f"gsm8k-{n}", prompt=question, reference=final,
                        metadata={"solution": (answer or "")[:match.start()].strip()})


def ai2_choice(path: Path, opts: ImportOptions) -> Iterator[tuple[Row, Item]]:
    """ARC / OpenBookQA (AI2 JSONL): ``id``, ``question.stem``, ``question.choices`` as a list
    of ``{label, text}`` (or the column form ``choices.label`` / ``choices.text``) and
    ``answerKey``. Labels ``1``-``5`` (some ARC items) become ``A``-``E`` by position."""
    for row in jsonl_rows(path):
        question = row.get("question")
        if isinstance(question, dict):
            stem, choices_path = row.text("question.stem"), "question.choices"
        else:
            stem, choices_path = row.text("question"), "choices"
        labels, texts = _choices(row, choices_path)
        letters = {label: LETTERS[k] for k, label in enumerate(labels)}
        key = row.text("answerKey") or ""
        if key.strip() not in letters:
            raise row.fail(f"expected one of the choice labels {labels}, got {key!r}", "answerKey")
        metadata = {} if list(letters) == list(letters.values()) else {"labels": labels}
        prompt = render_choices(stem or "", list(zip(letters.values(), texts)))
        yield row, Item(id=row.item_id("id"), prompt=prompt, reference=letters[key.strip()],
                        metadata=metadata)


def _choices(row: Row, path: str) -> tuple[list[str], list[str]]:
    raw = row.get(path)
    if isinstance(raw, dict):
        labels, texts = raw.get("label"), raw.get("text")
        if not isinstance(labels, list) or not isinstance(texts, list) or len(labels) != len(texts):
            raise row.fail("expected 'label' and 'text' lists of the same length", path)
        pairs = list(zip(labels, texts))
    elif isinstance(raw, list):
        if not all(isinstance(c, dict) and "label" in c and "text" in c for c in raw):
            raise row.fail("expected a list of {label, text} objects", path)
        pairs = [(c["label"], c["text"]) for c in raw]
    else:
        raise row.fail("expected a list of {label, text} objects", path)
    if not 2 <= len(pairs) <= len(LETTERS):
        raise row.fail(f"expected 2 to {len(LETTERS)} choices, got {len(pairs)}", path)
    if not all(isinstance(l, str) and l.strip() and isinstance(t, str) for l, t in pairs):
        raise row.fail("expected string labels and texts", path)
    labels = [str(l).strip() for l, _ in pairs]
    if len(set(labels)) != len(labels):
        raise row.fail(f"duplicate choice labels {labels}", path)
    return labels, [t for _, t in pairs]


def mmlu(path: Path, opts: ImportOptions) -> Iterator[tuple[Row, Item]]:
    """MMLU CSV as published (no header): question, A, B, C, D, answer letter. A header row with
    those names is skipped. The subject, from the file name (``abstract_algebra_test.csv``),
    is the category and the id prefix."""
    subject = _MMLU_SPLIT_SUFFIX.sub("", path.stem)
    n = 0
    for row in csv_rows(path, columns=_MMLU_COLUMNS):
        if [str(v).strip().lower() for v in row.data.values()] == [c.lower() for c in _MMLU_COLUMNS]:
            continue
        n += 1
        answer = (row.text("answer") or "").strip().upper()
        if answer not in ("A", "B", "C", "D"):
            raise row.fail(f"expected a letter A-D, got {row.data['answer']!r}", "answer")
        options = [(c, row.data[c]) for c in "ABCD"]
        yield row, Item(id=f"{subject}-{n}", prompt=render_choices(row.text("question") or "", options),
                        reference=answer, category=subject)


def alpacaeval(path: Path, opts: ImportOptions) -> Iterator[tuple[Row, Item]]:
    """AlpacaEval ``model_outputs.json`` (an array of ``instruction``, ``output``, ``generator``,
    optional ``dataset``). The pairwise judge's ``baseline_output`` is the output of
    ``opts.baseline``'s model for the same instruction (e.g. GPT-4 Turbo's file), or, without
    it, this file's own output (the layout of ``alpaca_eval.json``, whose outputs are the
    reference). ``dataset`` becomes the category."""
    baseline = _outputs_by_instruction(opts.baseline) if opts.baseline else None
    for n, row in enumerate(json_rows(path), start=1):
        instruction = row.text("instruction") or ""
        if baseline is None:
            output, generator = row.text("output"), row.text("generator", optional=True)
        elif instruction in baseline:
            output, generator = baseline[instruction]
        else:
            raise row.fail(f"no output for this instruction in the baseline file {opts.baseline}",
                           "instruction")
        metadata = {"generator": generator} if generator else {}
        yield row, Item(id=f"alpacaeval-{n}", prompt=instruction, baseline_output=output,
                        category=row.text("dataset", optional=True), metadata=metadata)


def alpacaeval_annotations(path: Path, opts: ImportOptions) -> Iterator[tuple[Row, Item]]:
    """AlpacaEval ``annotations.json`` (an array of ``instruction``, ``output_1`` = the
    baseline's, ``output_2`` = the model's, ``generator_1/2``, ``preference``): judgments
    already made, for win rates without a judge (``scoring.annotated_win_rates``).

    ``preference`` is 1 (baseline), 2 (model), 1.5 or a fraction (soft), null (unannotated),
    or 0: a draw, as AlpacaEval 1.0 files write it. It is kept decoded (1-2) in
    ``metadata.preference``, the model's output in ``metadata.output``. A record may carry
    ``instruction_difficulty`` (alpaca_eval's per-instruction difficulty, a number); with it on
    every record the LC win rate uses alpaca_eval's difficulty term."""
    for n, row in enumerate(json_rows(path), start=1):
        metadata: dict[str, object] = {"output": row.text("output_2") or ""}
        preference = row.get("preference", None)
        if isinstance(preference, float) and math.isnan(preference):
            preference = None  # NaN (Python's json reads it) is unannotated, as null is
        if preference is not None:
            if isinstance(preference, bool) or not isinstance(preference, (int, float)):
                raise row.fail(f"expected a number, got {json_type(preference)}", "preference")
            try:
                metadata["preference"] = float(
                    decode_alpacaeval_preferences([preference], zero_is_draw=True)[0])
            except ValueError:
                raise row.fail(f"expected 1 (baseline wins), 2 (model wins), a value between "
                               f"them, or 0 (a draw, AlpacaEval 1.0), got {preference!r}",
                               "preference") from None
        difficulty = row.get("instruction_difficulty", None)
        if difficulty is not None:
            if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)) \
                    or not math.isfinite(difficulty):
                raise row.fail(f"expected a finite number, got {difficulty!r}",
                               "instruction_difficulty")
            metadata["instruction_difficulty"] = float(difficulty)
        for key, source in (("generator", "generator_2"), ("baseline_generator", "generator_1")):
            value = row.text(source, optional=True)
            if value:
                metadata[key] = value
        yield row, Item(id=f"alpacaeval-{n}", prompt=row.text("instruction") or "",
                        baseline_output=row.text("output_1") or "",
                        category=row.text("dataset", optional=True), metadata=metadata)


def _outputs_by_instruction(path: Path) -> dict[str, tuple[str | None, str | None]]:
    out: dict[str, tuple[str | None, str | None]] = {}
    for row in json_rows(path):
        out[row.text("instruction") or ""] = (row.text("output"),
                                              row.text("generator", optional=True))
    return out


def mtbench(path: Path, opts: ImportOptions) -> Iterator[tuple[Row, Item]]:
    """MT-Bench ``question.jsonl``: ``question_id``, ``category``, ``turns`` and an optional
    ``reference`` (one answer per turn). Every turn is kept: the first is the prompt (its
    reference answer the item's reference), the later ones are follow-ups asked after the
    MoA's own answer, each with its reference answer."""
    for row in jsonl_rows(path):
        turns = _strings(row, "turns")
        reference = _strings(row, "reference") if row.get("reference", None) is not None else []
        if len(reference) > len(turns):
            raise row.fail(f"expected at most one reference answer per turn ({len(turns)}), "
                           f"got {len(reference)}", "reference")
        for k, turn in enumerate(turns[1:], start=1):
            if not turn.strip():
                raise row.fail("expected a non-empty turn", f"turns[{k}]")
        references = reference + [None] * (len(turns) - len(reference))
        yield row, Item(id=row.item_id("question_id"), prompt=turns[0], reference=references[0],
                        category=row.text("category", optional=True),
                        follow_ups=tuple(FollowUp(t, r) for t, r in zip(turns[1:], references[1:])))


def _strings(row: Row, path: str) -> list[str]:
    value = row.get(path)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise row.fail("expected a non-empty list of strings", path)
    if not value[0].strip():
        raise row.fail("expected a non-empty first turn", f"{path}[0]")
    return value
