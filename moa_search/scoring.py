"""Scorers: how good is each answer, and how good is a config over a validation set.

Two families. *Reference* scorers (exact, numeric, choice, regex) compare an answer with the
item's ``reference``; they are free and deterministic. *Judge* scorers ask an LLM, through the
runner's ``call`` so that every judge call is cached, costed and logged with role ``"judge"``:
the pairwise judge compares the answer with the item's ``baseline_output`` (AlpacaEval-style
win rate, and its length-controlled variant) and the single-grade judge rates it 1-10 (MT-Bench).

Nothing is silently zero. Every item gets an ``ItemScore`` with a status:

- ``ok``: scored.
- ``unparseable``: the answer (reference scorers) or the judge's verdict (judges) could not be
  read. For reference scorers a reply with no readable answer *is* a wrong answer, so it scores
  0 but is counted separately; for judges the item has no score (excluded from the mean).
- ``missing_field``: the item lacks what the scorer needs (no reference / no baseline): no score.
- ``failed``: the run (or a judge call) failed: no score. Quality is over scored items, and
  the counts say how many were left out, so a config cannot look good by failing hard items.
  A *degraded* run (an agent lost, see ``runner.DegradedPolicy``) is failed here under the
  ``fail`` policy, and scored like any answer under ``score``; the evaluation counts it apart.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Iterable, Literal, Mapping, Protocol, Sequence

from .datasets import Dataset, Item
from .errors import ConfigError, MoASearchError
from .prompts import (REFERENCE_CATEGORIES, pairwise_judge_messages, single_grade_judge_messages,
                      single_grade_template)
from .providers.base import ChatRequest, Completion, Message
from .stats import (LC_APPROXIMATE_NOTE, Estimate, alpacaeval_win_rate, bootstrap_ci,
                    lc_win_rate_ci, per_category)

Status = Literal["ok", "unparseable", "missing_field", "failed"]
STATUSES: tuple[Status, ...] = ("ok", "unparseable", "missing_field", "failed")
LETTERS = "ABCDE"

# ---- parsers --------------------------------------------------------------------------------

_LATEX_SUBS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\frac\{\s*([-+]?[\d.,]+)\s*\}\{\s*([-+]?[\d.,]+)\s*\}"), r"\1/\2"),
    (re.compile(r"\{,\}"), ""),          # 1{,}000: LaTeX thousands separator
    (re.compile(r"\\[,!;: ]"), ""),      # LaTeX spacing commands
    (re.compile(r"\\([$%])"), r"\1"),    # \$ and \%
    (re.compile("\u2212"), "-"),         # unicode minus sign
)

_NUMBER = re.compile(r"""
    (?<![\w.])                                  # not glued to a word or another number
    (?P<neg>-)?\s?[$€£]?\s?(?P<neg2>-)?         # sign, currency, or currency then sign
    (?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)
    (?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?           # a fraction: 3/4
    (?:[eE](?P<exp>[-+]?\d+))?                   # scientific notation
    """, re.VERBOSE)

_ANSWER_MARKER = re.compile(r"final\s+answer|the\s+answer\s+is|answer\s*(?:is|:|=)|####",
                            re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _normalise_math(text: str) -> str:
    for pattern, repl in _LATEX_SUBS:
        text = pattern.sub(repl, text)
    return text


def _numbers(text: str) -> list[float]:
    out: list[float] = []
    for m in _NUMBER.finditer(text):
        value = float(m.group("num").replace(",", ""))
        if m.group("den"):
            den = float(m.group("den"))
            if den == 0.0:
                continue
            value /= den
        if m.group("exp"):
            value *= 10.0 ** int(m.group("exp"))
        if m.group("neg") or m.group("neg2"):
            value = -value
        if math.isfinite(value):
            out.append(value)
    return out


def _boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}``, with nested braces balanced."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.end():i - 1] if depth == 0 else text[m.end():])
    return out


def extract_number(text: str | None) -> float | None:
    """The answer's final number: a ``\\boxed{}`` value, else the first number after the last
    "final answer"/"the answer is"/"answer:"/"####" marker, else the last number in the text.

    Tolerates thousands separators, currency, percent signs (``12%`` -> 12), fractions
    (``3/4`` and ``\\frac{3}{4}`` -> 0.75), a trailing period and LaTeX spacing. ``None`` when
    there is no number at all.
    """
    if not text:
        return None
    text = _normalise_math(text)
    for content in reversed(_boxed_contents(text)):
        found = _numbers(content)
        if found:
            return found[-1]
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        found = _numbers(text[markers[-1].end():])
        if found:
            return found[0]
    found = _numbers(text)
    return found[-1] if found else None


_CHOICE_MARKED = re.compile(r"""
    (?P<marker>(?i:final\s+answer|correct\s+(?:answer|option|choice)|answer))
    (?i:\s*(?:is|:|=|would\s+be|should\s+be)?\s*(?:option|choice)?\s*:?)\s*
    (?:\*\*|__)?\s*
    (?:\(\s*(?P<paren>[A-Ea-e])\s*\)|\[\s*(?P<bracket>[A-Ea-e])\s*\]|(?P<upper>[A-E])(?!\w))
    """, re.VERBOSE)
_CHOICE_ALONE = re.compile(r"^\W*(?:(?i:option|choice)\s+)?\(?\s*([A-Ea-e])\s*\)?\W*$")
_CHOICE_FORMATTED = re.compile(r"""
    \*\*\s*\(?(?P<bold>[A-E])\)?\s*\*\*(?!\w)       # **B** or **(B)**
    | (?<!\w)\((?P<paren>[A-Ea-e])\)(?!\w)          # (d)
    | (?i:option|choice)\s+(?P<named>[A-E])(?!\w)   # option C
    | ^\s*(?P<line>[A-E])[.)](?=\s|$)          # C) at the start of a line
    """, re.VERBOSE | re.MULTILINE)


def extract_choice(text: str | None) -> str | None:
    """The chosen option letter A-E, or ``None`` when absent or ambiguous.

    Order of trust: an explicit marker ("Answer: (C)", "the answer is C", "final answer" wins
    over plain "answer"; the last one counts, as models revise), then a reply that is only a
    letter, then formatted letters ("**B**", "(d)", "option C"), which must all agree. A bare
    lowercase "a" is an article, so lowercase letters count only when bracketed or alone.
    """
    if not text:
        return None
    marked = [(m.group("marker").lower().startswith("final"),
               (m.group("paren") or m.group("bracket") or m.group("upper")).upper())
              for m in _CHOICE_MARKED.finditer(text)]
    if marked:
        finals = [letter for is_final, letter in marked if is_final]
        return finals[-1] if finals else marked[-1][1]
    alone = _CHOICE_ALONE.match(text.strip())
    if alone:
        return alone.group(1).upper()
    letters = {next(g for g in m.groups() if g).upper() for m in _CHOICE_FORMATTED.finditer(text)}
    return letters.pop() if len(letters) == 1 else None


_VERDICT = re.compile(r"\[\[\s*([abAB])\s*\]\]")
_GRADE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_pairwise_verdict(text: str | None) -> Literal["a", "b"] | None:
    """``"a"`` or ``"b"`` from a ``[[a]]``/``[[b]]`` verdict; ``None`` if absent or both appear."""
    found = {v.lower() for v in _VERDICT.findall(text or "")}
    if found == {"a"}:
        return "a"
    if found == {"b"}:
        return "b"
    return None


def parse_grade(text: str | None) -> int | float | None:
    """A rating 0-10 from ``[[7]]`` or ``[[9.5]]`` (FastChat reads half points, and a judge's
    occasional 0, as they are, so they count); ``None`` if absent, out of range or contradictory
    (two different ratings), where FastChat would take the first number it finds. Whole ratings
    come back as ``int``."""
    found = {float(v) for v in _GRADE.findall(text or "")}
    if len(found) != 1:
        return None
    value = found.pop()
    if not 0 <= value <= 10:
        return None
    return int(value) if value.is_integer() else value


def normalise_text(text: str) -> str:
    """For exact match: case, surrounding whitespace/quotes/markup and a final period don't count."""
    text = " ".join(text.split()).casefold()
    text = text.strip("\"'`*_ ")
    return text[:-1].rstrip() if text.endswith(".") else text


# ---- item scores and scorers ----------------------------------------------------------------

@dataclass(frozen=True)
class ItemScore:
    """One item's score. ``value`` is in [0, 1], or ``None`` when the item is not scored."""

    item_id: str
    value: float | None
    status: Status
    detail: str = ""
    judge_cost_usd: float = 0.0
    judge_paid_usd: float = 0.0
    judge_calls: int = 0
    #: A multi-turn item's score per turn (``value`` is their mean); empty for one turn.
    turn_values: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if self.value is not None and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a score must be in [0, 1], got {self.value}")
        if self.status == "ok" and self.value is None:
            raise ValueError("an 'ok' score needs a value")
        if self.status in ("missing_field", "failed") and self.value is not None:
            raise ValueError(f"a {self.status!r} item has no value")


class Scorer(ABC):
    """Scores one answer to one item. ``requires`` names the item field it needs, if any."""

    name: ClassVar[str]
    requires: ClassVar[str | None] = None
    is_judge: ClassVar[bool] = False
    #: Whether the later turns of a multi-turn item are scored (a pairwise judge has no
    #: baseline answer for them, so it scores the first turn only).
    grades_follow_ups: ClassVar[bool] = True

    @abstractmethod
    async def ascore(self, item: Item, answer: str) -> ItemScore:
        ...

    async def ascore_turn(self, item: Item, answers: Sequence[str]) -> ItemScore:
        """Turn ``len(answers)`` of ``item``, its earlier answers given: by default scored as a
        one-turn item whose chat is the conversation up to that turn and whose reference is
        that turn's reference."""
        if len(answers) == 1:
            return await self.ascore(item, answers[0])
        turn_item = Item(item.id, messages=item.turn_messages(answers[:-1]),
                         reference=item.turn_references[len(answers) - 1],
                         category=item.category, metadata=item.metadata)
        return await self.ascore(turn_item, answers[-1])


class _ReferenceScorer(Scorer):
    """Reference scorers are synchronous; ``ascore`` exists so ``score_traces`` treats all alike."""

    requires: ClassVar[str | None] = "reference"

    def score(self, item: Item, answer: str) -> ItemScore:
        if item.reference is None:
            return ItemScore(item.id, None, "missing_field", "item has no reference")
        return self._compare(item.id, item.reference, answer)

    async def ascore(self, item: Item, answer: str) -> ItemScore:
        return self.score(item, answer)

    @abstractmethod
    def _compare(self, item_id: str, reference: str, answer: str) -> ItemScore:
        ...


class ExactScorer(_ReferenceScorer):
    """The whole answer equals the reference, up to case, whitespace, quotes and a final period."""

    name = "exact"

    def _compare(self, item_id: str, reference: str, answer: str) -> ItemScore:
        ok = normalise_text(answer) == normalise_text(reference)
        return ItemScore(item_id, 1.0 if ok else 0.0, "ok")


def format_number(value: float) -> str:
    """Every digit that matters: ``1450001`` not ``1.45e+06``, so a near miss is visible."""
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


class NumericScorer(_ReferenceScorer):
    """The answer's final number (``extract_number``) equals the reference.

    With no tolerance given, an integer reference must be matched exactly (GSM8K's 1,450,000
    is not 1,450,001) and a non-integer one within ``DEFAULT_REL_TOL`` / ``DEFAULT_ABS_TOL``
    (float noise in 1/3). A tolerance given (either one) applies to every item, the other
    being 0.
    """

    name = "numeric"
    DEFAULT_REL_TOL: ClassVar[float] = 1e-6
    DEFAULT_ABS_TOL: ClassVar[float] = 1e-9

    def __init__(self, rel_tol: float | None = None, abs_tol: float | None = None):
        for fname, value in (("rel_tol", rel_tol), ("abs_tol", abs_tol)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"expected a number >= 0, got {value!r}", field=f"scorer.{fname}")
        self.rel_tol = None if rel_tol is None else float(rel_tol)
        self.abs_tol = None if abs_tol is None else float(abs_tol)

    def tolerances(self, expected: float) -> tuple[float, float]:
        """``(rel_tol, abs_tol)`` for this reference value."""
        if self.rel_tol is None and self.abs_tol is None:
            if expected.is_integer():
                return 0.0, 0.0
            return self.DEFAULT_REL_TOL, self.DEFAULT_ABS_TOL
        return self.rel_tol or 0.0, self.abs_tol or 0.0

    def _compare(self, item_id: str, reference: str, answer: str) -> ItemScore:
        expected = extract_number(reference)
        if expected is None:
            return ItemScore(item_id, None, "missing_field", f"reference {reference!r} is not a number")
        got = extract_number(answer)
        if got is None:
            return ItemScore(item_id, 0.0, "unparseable", "no number in the answer")
        rel_tol, abs_tol = self.tolerances(expected)
        ok = got == expected or math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)
        return ItemScore(item_id, 1.0 if ok else 0.0, "ok",
                         f"got {format_number(got)}, expected {format_number(expected)}")


class ChoiceScorer(_ReferenceScorer):
    """The chosen letter (``extract_choice``) equals the reference letter A-E."""

    name = "choice"

    def _compare(self, item_id: str, reference: str, answer: str) -> ItemScore:
        expected = reference.strip().strip("()[]*").upper()
        if len(expected) != 1 or expected not in LETTERS:
            return ItemScore(item_id, None, "missing_field",
                             f"reference {reference!r} is not a letter A-E")
        got = extract_choice(answer)
        if got is None:
            return ItemScore(item_id, 0.0, "unparseable", "no unambiguous option letter")
        return ItemScore(item_id, 1.0 if got == expected else 0.0, "ok",
                         f"got {got}, expected {expected}")


class RegexScorer(_ReferenceScorer):
    """Extract the answer with a pattern (its first group, else the whole match; the last match
    counts) and compare it with the reference as ``ExactScorer`` does: for answer formats the
    other parsers do not know, e.g. ``r"ANSWER:\\s*(\\w+)"``."""

    name = "regex"

    def __init__(self, pattern: str):
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("expected a non-empty regular expression", field="scorer.pattern")
        try:
            self.pattern = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"invalid regular expression: {exc}", field="scorer.pattern") from None

    def _compare(self, item_id: str, reference: str, answer: str) -> ItemScore:
        matches = list(self.pattern.finditer(answer))
        if not matches:
            return ItemScore(item_id, 0.0, "unparseable", "pattern did not match")
        last = matches[-1]
        got = last.group(1) if self.pattern.groups else last.group(0)
        if got is None:
            return ItemScore(item_id, 0.0, "unparseable", "pattern group did not participate")
        ok = normalise_text(got) == normalise_text(reference)
        return ItemScore(item_id, 1.0 if ok else 0.0, "ok", f"got {got!r}")


# ---- judges ---------------------------------------------------------------------------------

class JudgeCall(Protocol):
    """How judges reach a model: ``Runner.call`` (cached, costed, logged as role "judge")."""

    def __call__(self, request: ChatRequest, *, role: str,
                 item_id: str | None = None) -> Awaitable[Completion]: ...


@dataclass(frozen=True)
class _Asked:
    """One judge question after at most one retry: what was read, and what it cost."""

    parsed: Any
    cost_usd: float
    paid_usd: float
    calls: int
    error: str | None = None


class _Judge(Scorer):
    is_judge = True

    def __init__(self, judge_model: str, call: JudgeCall, *, temperature: float = 0.0,
                 max_tokens: int = 512):
        if not isinstance(judge_model, str) or not judge_model.strip():
            raise ConfigError("expected a non-empty model id", field="scorer.judge_model")
        if not callable(call):
            raise ConfigError("expected an async callable (Runner.call)", field="scorer.call")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0.0 <= temperature <= 2.0:
            raise ConfigError(f"expected 0 <= temperature <= 2, got {temperature!r}",
                              field="scorer.temperature")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"expected a positive integer, got {max_tokens!r}",
                              field="scorer.max_tokens")
        self.judge_model = judge_model
        self.call = call
        self.temperature = float(temperature)
        self.max_tokens = max_tokens

    async def _ask(self, item_id: str, messages: tuple[Message, ...],
                   parse: Callable[[str], Any]) -> _Asked:
        """Ask; on an unreadable verdict ask once more as a fresh sample (``sample_index`` 1),
        since at temperature 0 the identical request would be served the same reply."""
        cost = paid = 0.0
        calls = 0
        for sample_index in (0, 1):
            request = ChatRequest(self.judge_model, messages, temperature=self.temperature,
                                  max_tokens=self.max_tokens, sample_index=sample_index)
            try:
                completion = await self.call(request, role="judge", item_id=item_id)
            except MoASearchError as exc:
                return _Asked(None, cost, paid, calls, error=str(exc))
            calls += 1
            cost += completion.cost_usd
            paid += completion.paid_usd
            parsed = parse(completion.text)
            if parsed is not None:
                return _Asked(parsed, cost, paid, calls)
        return _Asked(None, cost, paid, calls)


class PairwiseJudge(_Judge):
    """AlpacaEval-style: is the answer better than the item's ``baseline_output``?

    The judge sees both orders (answer as (a), then as (b)), which cancels its position bias:
    the item's preference is 1 (answer preferred in both), 0.5 (split) or 0 (baseline in both).
    The mean preference x 100 is the raw win rate against the baseline; ``score_traces`` also
    reports the length-controlled win rate (lengths in ``length_unit``).
    """

    name = "pairwise_judge"
    requires = "baseline_output"
    grades_follow_ups = False
    headline: ClassVar[Literal["win_rate", "lc_win_rate"]] = "win_rate"

    def __init__(self, judge_model: str, call: JudgeCall, *, temperature: float = 0.0,
                 max_tokens: int = 512, length_unit: Literal["chars", "words"] = "chars"):
        super().__init__(judge_model, call, temperature=temperature, max_tokens=max_tokens)
        if length_unit not in ("chars", "words"):
            raise ConfigError(f"expected 'chars' or 'words', got {length_unit!r}",
                              field="scorer.length_unit")
        self.length_unit = length_unit

    def length(self, text: str) -> int:
        return len(text) if self.length_unit == "chars" else len(text.split())

    async def ascore(self, item: Item, answer: str) -> ItemScore:
        if item.baseline_output is None:
            return ItemScore(item.id, None, "missing_field", "item has no baseline_output")
        instruction = item.prompt_text
        first, second = await asyncio.gather(
            self._ask(item.id, pairwise_judge_messages(instruction, answer, item.baseline_output),
                      parse_pairwise_verdict),
            self._ask(item.id, pairwise_judge_messages(instruction, item.baseline_output, answer),
                      parse_pairwise_verdict))
        costs = dict(judge_cost_usd=first.cost_usd + second.cost_usd,
                     judge_paid_usd=first.paid_usd + second.paid_usd,
                     judge_calls=first.calls + second.calls)
        detail = f"answer first: {first.parsed}, answer second: {second.parsed}"
        if first.error or second.error:
            return ItemScore(item.id, None, "failed", first.error or second.error or "", **costs)
        if first.parsed is None or second.parsed is None:
            return ItemScore(item.id, None, "unparseable", f"no verdict after a retry ({detail})",
                             **costs)
        preference = ((first.parsed == "a") + (second.parsed == "b")) / 2.0
        return ItemScore(item.id, preference, "ok", detail, **costs)


class LengthControlledJudge(PairwiseJudge):
    """The pairwise judge with the length-controlled win rate as its headline quality."""

    name = "length_controlled"
    headline = "lc_win_rate"


class SingleGradeJudge(_Judge):
    """MT-Bench single-answer grading, as FastChat grades: a rating (the prompt asks 1-10;
    decimals such as 9.5, and 0, count as FastChat counts them) mapped to g / 10 in [0, 1], so
    a quality of 89.9 % is an MT-Bench score of 8.99. Items in a reference category (math, reasoning,
    coding: ``prompts.REFERENCE_CATEGORIES``) that have a reference are graded against it
    (``single-math-v1``); a later turn is graded with the multi-turn template, which shows the
    whole conversation (and every turn's reference) and asks about the last answer."""

    name = "single_grade_judge"

    def __init__(self, judge_model: str, call: JudgeCall, *, temperature: float = 0.0,
                 max_tokens: int = 1024):
        super().__init__(judge_model, call, temperature=temperature, max_tokens=max_tokens)

    async def ascore(self, item: Item, answer: str) -> ItemScore:
        return await self.ascore_turn(item, [answer])

    async def ascore_turn(self, item: Item, answers: Sequence[str]) -> ItemScore:
        turn = len(answers)
        references = item.turn_references[:turn]
        guided = item.category in REFERENCE_CATEGORIES and all(r is not None for r in references)
        messages = single_grade_judge_messages(
            item.turn_questions[:turn], list(answers),
            [r or "" for r in references] if guided else None)
        asked = await self._ask(item.id, messages, parse_grade)
        costs = dict(judge_cost_usd=asked.cost_usd, judge_paid_usd=asked.paid_usd,
                     judge_calls=asked.calls)
        template = single_grade_template(turn, guided)
        if asked.error:
            return ItemScore(item.id, None, "failed", asked.error, **costs)
        if asked.parsed is None:
            return ItemScore(item.id, None, "unparseable",
                             f"no [[rating]] after a retry ({template})", **costs)
        return ItemScore(item.id, asked.parsed / 10.0, "ok",
                         f"grade {asked.parsed} ({template})", **costs)


_SEVERITY: dict[Status, int] = {"ok": 0, "unparseable": 1, "missing_field": 2, "failed": 3}


def combine_turns(item_id: str, turns: Sequence[ItemScore]) -> ItemScore:
    """One multi-turn item's score from its turns' scores: the mean of the turn values, and
    the worst turn's status (an item is scored only when every turn is, so a config cannot
    look good by failing its second turns); every turn's value is kept (``turn_values``)."""
    worst = max(turns, key=lambda t: _SEVERITY[t.status])
    values = tuple(t.value for t in turns)
    known = [v for v in values if v is not None]
    value = None if len(known) < len(values) else sum(known) / len(known)
    detail = "; ".join(f"turn {k}: {t.detail}" for k, t in enumerate(turns, start=1))
    return ItemScore(item_id, value, worst.status, detail,
                     judge_cost_usd=sum(t.judge_cost_usd for t in turns),
                     judge_paid_usd=sum(t.judge_paid_usd for t in turns),
                     judge_calls=sum(t.judge_calls for t in turns), turn_values=values)


# ---- scoring a run --------------------------------------------------------------------------

def _turn_answers(trace: "TraceLike") -> tuple[str, ...]:
    """Every turn's answer of a scored trace: a ``ConversationTrace`` has ``answers``, a
    runner ``ItemTrace`` one answer."""
    answers = getattr(trace, "answers", None)
    return tuple(a or "" for a in answers) if answers else (trace.answer or "",)


class TraceLike(Protocol):
    """What scoring needs from a ``runner.ItemTrace`` (or a ``ConversationTrace``)."""

    @property
    def item_id(self) -> str: ...
    @property
    def answer(self) -> str | None: ...
    @property
    def failed(self) -> bool: ...
    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True)
class EvalResult:
    """A config's quality on a set of items, with everything needed to trust (or distrust) it.

    ``quality`` is a fraction in [0, 1] over the scored items: accuracy for reference scorers,
    mean g/10 for the single-grade judge, mean preference (= raw win rate / 100) for the
    pairwise judge, and the LC win rate / 100 for ``length_controlled`` (``headline`` says which).
    ``win_rate``/``win_rate_se``/``lc_win_rate`` are AlpacaEval-style percentages (0-100),
    set for pairwise judges only, with the counts beside them as the leaderboards print them
    (``n_wins``: preferred in both orders, ``n_draws``: split, ``n_losses``: baseline in both).
    ``lc_approximate`` is True when the LC fit had no per-instruction difficulty (some scored
    item lacks ``metadata.instruction_difficulty``): alpaca_eval's minimal GLM, not its
    leaderboard formula. ``per_turn`` is the score of each turn over the scored multi-turn
    items (empty when no item has follow-ups). Judge cost is kept apart from the config's own
    cost.
    """

    scorer: str
    n: int
    n_scored: int
    counts: Mapping[str, int]
    quality: Estimate
    per_category: Mapping[str, Estimate]
    values: Mapping[str, float | None]
    scores: tuple[ItemScore, ...] = field(repr=False, default=())
    headline: str = "mean"
    judge_cost_usd: float = 0.0
    judge_paid_usd: float = 0.0
    judge_calls: int = 0
    win_rate: float | None = None
    win_rate_se: float | None = None
    lc_win_rate: float | None = None
    lc_approximate: bool | None = None
    per_turn: Mapping[int, Estimate] = field(default_factory=dict)
    n_wins: int | None = None
    n_draws: int | None = None
    n_losses: int | None = None

    @property
    def n_failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def n_unparseable(self) -> int:
        return self.counts.get("unparseable", 0)

    @property
    def n_missing_field(self) -> int:
        return self.counts.get("missing_field", 0)

    @property
    def lc_note(self) -> str | None:
        """What to print beside an LC win rate: ``None`` when it is alpaca_eval's formula."""
        return LC_APPROXIMATE_NOTE if self.lc_approximate else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-item values included, item details not)."""
        return {
            "scorer": self.scorer, "headline": self.headline, "n": self.n,
            "n_scored": self.n_scored, "counts": dict(self.counts),
            "quality": self.quality.to_dict(),
            "per_category": {k: v.to_dict() for k, v in self.per_category.items()},
            "values": dict(self.values), "judge_cost_usd": self.judge_cost_usd,
            "judge_paid_usd": self.judge_paid_usd, "judge_calls": self.judge_calls,
            "win_rate": _finite_or_none(self.win_rate),
            "win_rate_se": _finite_or_none(self.win_rate_se),
            "lc_win_rate": _finite_or_none(self.lc_win_rate),
            "lc_approximate": self.lc_approximate,
            "lc_note": self.lc_note,
            "per_turn": {str(k): v.to_dict() for k, v in self.per_turn.items()},
            "n_wins": self.n_wins, "n_draws": self.n_draws, "n_losses": self.n_losses,
        }


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def _scaled(est: Estimate, factor: float) -> Estimate:
    return Estimate(est.mean * factor, est.low * factor, est.high * factor, est.n,
                    est.stderr * factor, est.confidence)


async def score_traces(scorer: Scorer, items: Dataset | Iterable[Item], traces: Sequence[TraceLike],
                       *, confidence: float = 0.95, seed: int = 0, n_resamples: int = 2000,
                       lc_resamples: int = 200, max_concurrent: int = 8) -> EvalResult:
    """Score every trace against its item and summarise.

    ``items`` is a lookup: it may hold more items than were run (a subsample's traces against
    the full set). A trace for an unknown item, or two traces for one item, is a bug upstream
    and raises ``ValueError``. Judges score up to ``max_concurrent`` items at once.
    """
    lookup = {item.id: item for item in items}
    seen: set[str] = set()
    for trace in traces:
        if trace.item_id not in lookup:
            raise ValueError(f"trace for item {trace.item_id!r}, which is not in the item set")
        if trace.item_id in seen:
            raise ValueError(f"two traces for item {trace.item_id!r}")
        seen.add(trace.item_id)

    gate = asyncio.Semaphore(max(1, max_concurrent))

    async def one(trace: TraceLike) -> ItemScore:
        if trace.failed or trace.answer is None:
            return ItemScore(trace.item_id, None, "failed", trace.error or "no answer")
        item, answers = lookup[trace.item_id], _turn_answers(trace)
        async with gate:
            if len(answers) > 1 and scorer.grades_follow_ups:
                turns = await asyncio.gather(*(scorer.ascore_turn(item, answers[:k])
                                               for k in range(1, len(answers) + 1)))
                return combine_turns(item.id, turns)
            return await scorer.ascore(item, answers[0])

    scores = tuple(await asyncio.gather(*(one(t) for t in traces)))

    counts = {status: 0 for status in STATUSES}
    for s in scores:
        counts[s.status] += 1
    scored = [(s, lookup[s.item_id]) for s in scores if s.value is not None]
    values = [s.value for s, _ in scored if s.value is not None]
    quality = bootstrap_ci(values, confidence, n_resamples, seed)
    categories = per_category(values, [item.category_or_default for _, item in scored],
                              confidence=confidence, n_resamples=n_resamples, seed=seed)
    result: dict[str, Any] = dict(
        scorer=scorer.name, n=len(scores), n_scored=len(values), counts=counts,
        per_category=categories, values={s.item_id: s.value for s in scores}, scores=scores,
        judge_cost_usd=sum(s.judge_cost_usd for s in scores),
        judge_paid_usd=sum(s.judge_paid_usd for s in scores),
        judge_calls=sum(s.judge_calls for s in scores),
        headline="accuracy" if isinstance(scorer, _ReferenceScorer) else "mean_score")

    turn_scores: dict[int, list[float]] = {}
    for s in scores:
        for k, v in enumerate(s.turn_values, start=1):
            if v is not None and s.value is not None:
                turn_scores.setdefault(k, []).append(v)
    if turn_scores:
        result["per_turn"] = {k: bootstrap_ci(v, confidence, n_resamples, seed)
                              for k, v in sorted(turn_scores.items())}

    if isinstance(scorer, PairwiseJudge):
        answers = {t.item_id: _turn_answers(t)[0] if not t.failed else "" for t in traces}
        rates = win_rates(values, [scorer.length(answers[s.item_id]) for s, _ in scored],
                          [scorer.length(item.baseline_output or "") for _, item in scored],
                          [item.instruction_difficulty for _, item in scored],
                          confidence=confidence, n_resamples=lc_resamples, seed=seed)
        result.update(rates.fields(), headline=scorer.headline)
        if scorer.headline == "lc_win_rate":
            quality = _scaled(rates.lc, 0.01)
    return EvalResult(quality=quality, **result)


@dataclass(frozen=True)
class WinRates:
    """AlpacaEval's numbers for one model against a baseline: raw win rate and its standard
    error, the LC win rate (with a bootstrap interval), and the win / draw / loss counts."""

    win_rate: float
    win_rate_se: float
    lc: Estimate
    lc_approximate: bool
    n_wins: int
    n_draws: int
    n_losses: int

    def fields(self) -> dict[str, Any]:
        """The ``EvalResult`` fields these fill."""
        return dict(win_rate=self.win_rate, win_rate_se=self.win_rate_se,
                    lc_win_rate=self.lc.mean, lc_approximate=self.lc_approximate,
                    n_wins=self.n_wins, n_draws=self.n_draws, n_losses=self.n_losses)


def win_rates(preferences: Sequence[float], len_candidate: Sequence[float],
              len_baseline: Sequence[float], difficulty: Sequence[float | None], *,
              confidence: float = 0.95, n_resamples: int = 200, seed: int = 0) -> WinRates:
    """Win rates from preferences in [0, 1] (1 = candidate preferred). The LC fit uses the
    per-instruction difficulty only when every item has one (alpaca_eval's formula); with any
    missing it falls back to the minimal GLM and says so (``lc_approximate``)."""
    values = [float(v) for v in preferences]
    known = None if any(d is None for d in difficulty) or not values \
        else [float(d) for d in difficulty if d is not None]
    win_rate, win_rate_se = alpacaeval_win_rate([v + 1.0 for v in values])
    lc = lc_win_rate_ci(values, len_candidate, len_baseline, confidence=confidence,
                        n_resamples=n_resamples, seed=seed, difficulty=known)
    return WinRates(win_rate, win_rate_se, lc, known is None, n_wins=values.count(1.0),
                    n_draws=values.count(0.5), n_losses=values.count(0.0))


def annotated_win_rates(dataset: Dataset | Iterable[Item], *,
                        length_unit: Literal["chars", "words"] = "chars",
                        confidence: float = 0.95, n_resamples: int = 200,
                        seed: int = 0) -> WinRates:
    """Win rates from judgments already made: a set imported from an AlpacaEval
    ``annotations.json`` (format ``alpacaeval_annotations``), whose items carry the model's
    output and the decoded preference (1-2) in their metadata. Unannotated items are dropped,
    as alpaca_eval drops them. Lengths are characters by default, as alpaca_eval counts them."""
    def length(text: str) -> int:
        return len(text) if length_unit == "chars" else len(text.split())

    items = list(dataset)  # read twice below; a generator would be empty the second time
    rows = [item for item in items if item.metadata.get("preference") is not None]
    missing = [item.id for item in items if "output" not in item.metadata]
    if missing:
        raise ConfigError(f"item {missing[0]!r} has no metadata.output: import the file with "
                          f"--format alpacaeval_annotations", field="metadata.output")
    return win_rates([float(i.metadata["preference"]) - 1.0 for i in rows],
                     [length(str(i.metadata["output"])) for i in rows],
                     [length(i.baseline_output or "") for i in rows],
                     [i.instruction_difficulty for i in rows],
                     confidence=confidence, n_resamples=n_resamples, seed=seed)


# ---- registry -------------------------------------------------------------------------------

SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls for cls in (ExactScorer, NumericScorer, ChoiceScorer, RegexScorer,
                              PairwiseJudge, LengthControlledJudge, SingleGradeJudge)
}


#: Accepted spellings that are not the scorer's own name (study files say ``single_grade``).
SCORER_ALIASES: dict[str, str] = {"single_grade": "single_grade_judge"}


def scorer_class(name: str) -> type[Scorer]:
    """The scorer class a name (or an alias, ``SCORER_ALIASES``) stands for; an unknown name is
    a ``ConfigError`` listing the available ones."""
    cls = SCORERS.get(SCORER_ALIASES.get(name, name))
    if cls is None:
        raise ConfigError(f"unknown scorer {name!r}; available: {', '.join(SCORERS)}",
                          field="scorer")
    return cls


def make_scorer(name: str, **opts: Any) -> Scorer:
    """A scorer by name; options are the class's keyword arguments (judges need ``judge_model``
    and ``call``). Unknown names and options are ``ConfigError``s that list what is accepted."""
    cls = scorer_class(name)
    params = {p: v for p, v in inspect.signature(cls.__init__).parameters.items()
              if p != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}
    unknown = sorted(set(opts) - set(params))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for scorer {name!r}; accepted: "
                          f"{sorted(params) or 'none'}", field="scorer")
    missing = sorted(p for p, v in params.items()
                     if v.default is inspect.Parameter.empty and p not in opts)
    if missing:
        raise ConfigError(f"scorer {name!r} needs option(s) {missing}", field="scorer")
    return cls(**opts)
