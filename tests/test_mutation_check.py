"""benchmarks/mutation_check.py stays runnable: every planted bug still applies to today's source,
and one of them is caught end to end without touching the working tree."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "mutation_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


mutation_check = _load()
MUTATIONS = mutation_check.MUTATIONS


def test_mutation_names_are_unique_and_cover_the_core_modules() -> None:
    names = [m.name for m in MUTATIONS]
    assert len(names) == len(set(names))
    touched = {m.path for m in MUTATIONS}
    for core in ("store.py", "stats.py", "scoring.py", "runner.py", "prompts.py", "config.py",
                 "catalog.py", "report.py", "search/"):
        assert any(core in path for path in touched), core


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: m.name)
def test_every_snippet_occurs_once_and_its_mutant_compiles(m) -> None:
    """A snippet that no longer matches would make the check silently skip its mutation."""
    source = (ROOT / m.path).read_text("utf-8")
    assert source.count(m.original) == 1, f"{m.path}: the snippet of {m.name!r} occurs {source.count(m.original)} times"
    mutant = source.replace(m.original, m.replacement)
    assert mutant != source
    compile(mutant, m.path, "exec")  # a syntax error would be 'caught' by any test, and prove nothing


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: m.name)
def test_every_target_test_exists(m) -> None:
    assert m.tests
    for target in m.tests:
        path, _, name = target.partition("::")
        text = (ROOT / path).read_text("utf-8")
        if name:
            assert re.search(rf"^(async )?def {re.escape(name)}\(", text, re.M), target


def test_one_mutation_is_caught_on_a_copy_and_the_working_tree_is_untouched() -> None:
    store = ROOT / "moa_search" / "store.py"
    before = store.read_bytes()
    done = subprocess.run([sys.executable, str(SCRIPT), "--only", "store-first-answer-wins", "--no-baseline"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^caught\s+store-first-answer-wins", done.stdout, re.M)
    assert "score: 1/1 mutations caught" in done.stdout
    assert store.read_bytes() == before


def test_an_unknown_name_is_one_line_and_exit_2() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--only", "no-such-bug"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "mutation_check: unknown mutation 'no-such-bug' (hint: --list shows the names)"]
