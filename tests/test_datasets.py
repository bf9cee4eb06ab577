"""Validation sets: the strict JSONL loader, deterministic subsets, and the shipped sets."""

from __future__ import annotations

import importlib.util
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from moa_search.datasets import (BUILTIN_DATASETS, BUILTIN_DIR, Dataset, Item, answer_key_pairs,
                                 builtin_dataset, load_dataset)
from moa_search.errors import ConfigError
from moa_search.providers.base import Message


def write_jsonl(path: Path, lines: list[object | str]) -> Path:
    """Objects are JSON-encoded; strings are written verbatim (for malformed lines)."""
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n",
                    encoding="utf-8")
    return path


# ---- loading valid files --------------------------------------------------------------------

def test_mixed_schema_loads_and_summary_counts_optional_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"id": "a", "prompt": "What is 2+2?", "reference": 4, "category": "math",
         "metadata": {"difficulty": 0.2}},
        "",
        {"id": "b", "messages": [{"role": "system", "content": "Be terse."},
                                 {"role": "user", "content": "Say hi"}],
         "baseline_output": "Hi!"},
        {"id": "c", "prompt": "Half?", "reference": 0.5},
        {"id": "d", "prompt": "Bond?", "reference": "007", "metadata": {"note": "free form"}},
    ])
    ds = load_dataset(path)
    assert ds.name == "mixed" and ds.source == str(path) and len(ds) == 4
    assert ds.ids == ("a", "b", "c", "d")
    # numbers become strings; a string reference keeps its leading zeros
    assert [i.reference for i in ds] == ["4", None, "0.5", "007"]
    assert ds.schema_summary() == {"items": 4, "prompt": 3, "messages": 1, "reference": 3,
                                   "baseline_output": 1, "category": 1, "difficulty": 1}
    b = ds.get("b")
    assert b.messages_tuple() == (Message("system", "Be terse."), Message("user", "Say hi"))
    assert b.prompt_text == "Say hi"
    assert ds.get("a").messages_tuple() == (Message("user", "What is 2+2?"),)
    assert ds.get("a").difficulty == 0.2 and ds.get("d").difficulty == 0.5
    assert ds.get("d").metadata == {"note": "free form"}


# ---- every bad input names file, line and field ---------------------------------------------

GOOD = {"id": "ok", "prompt": "fine"}

BAD_CASES = [
    # (lines, line number, field fragment or None, message fragment)
    ([GOOD, '{"id": "x", "prompt": "oops"'], 2, None, "invalid JSON"),
    ([GOOD, "[1, 2]"], 2, None, "expected a JSON object"),
    ([{"prompt": "no id"}], 1, "id", "missing"),
    ([{"id": 7, "prompt": "p"}], 1, "id", "non-empty string"),
    ([{"id": "x", "prompt": "p", "messages": [{"role": "user", "content": "m"}]}], 1, "prompt",
     "exactly one"),
    ([{"id": "x"}], 1, "prompt/messages", "exactly one"),
    ([{"id": "x", "prompt": "   "}], 1, "prompt", "empty prompt"),
    ([{"id": "x", "prompt": 3}], 1, "prompt", "expected a string"),
    ([{"id": "x", "prompt": "p", "reference": True}], 1, "reference", "string or a number"),
    ([{"id": "x", "prompt": "p", "reference": [1]}], 1, "reference", "string or a number"),
    ([{"id": "x", "prompt": "p", "baseline_output": 5}], 1, "baseline_output", "expected a string"),
    ([{"id": "x", "prompt": "p", "category": ""}], 1, "category", "non-empty"),
    ([{"id": "x", "prompt": "p", "metadata": [1]}], 1, "metadata", "expected an object"),
    ([{"id": "x", "prompt": "p", "metadata": {"difficulty": 1.5}}], 1, "metadata.difficulty", "[0, 1]"),
    ([{"id": "x", "prompt": "p", "metadata": {"difficulty": "hard"}}], 1, "metadata.difficulty", "[0, 1]"),
    ([{"id": "x", "promt": "typo"}], 1, None, "unknown key(s) ['promt']"),
    ([{"id": "x", "messages": []}], 1, "messages", "non-empty list"),
    ([{"id": "x", "messages": [{"role": "bot", "content": "hi"}]}], 1, "messages[0].role", "role"),
    ([{"id": "x", "messages": [{"role": "user", "content": 1}]}], 1, "messages[0].content", "string"),
    ([{"id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
     1, "messages", "last message must be a user message"),
    ([GOOD, "", "", {"id": "y", "prompt": ""}], 4, "prompt", "empty prompt"),  # blank lines still count
]


@pytest.mark.parametrize("lines, lineno, fld, fragment", BAD_CASES)
def test_bad_lines_are_reported_with_file_line_and_field(tmp_path: Path, lines: list, lineno: int,
                                                          fld: str | None, fragment: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ConfigError) as info:
        load_dataset(path)
    err = info.value
    assert err.source == str(path)
    assert err.field is not None and err.field.startswith(f"line {lineno}")
    if fld is not None:
        assert err.field == f"line {lineno}: {fld}"
    assert fragment in str(err)
    assert str(path) in str(err)


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dup.jsonl", [
        {"id": "q1", "prompt": "a"}, {"id": "q2", "prompt": "b"}, {"id": "q1", "prompt": "c"}])
    with pytest.raises(ConfigError) as info:
        load_dataset(path)
    assert info.value.field == "line 3: id"
    assert "'q1'" in str(info.value) and "first on line 1" in str(info.value)


def test_empty_missing_and_non_utf8_files_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no items"):
        load_dataset(empty)
    with pytest.raises(ConfigError, match="not found") as info:
        load_dataset(tmp_path / "nope.jsonl")
    assert info.value.source == str(tmp_path / "nope.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": "x", "prompt": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_dataset(latin)


def test_item_built_in_code_needs_exactly_one_prompt_form() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        Item("x")
    with pytest.raises(ConfigError, match="exactly one"):
        Item("x", prompt="p", messages=(Message("user", "m"),))


# ---- subsets --------------------------------------------------------------------------------

def make_dataset(n: int, *, reverse: bool = False) -> Dataset:
    items = [Item(f"q{i:03d}", prompt=f"prompt {i}", category="even" if i % 2 == 0 else "odd")
             for i in range(n)]
    return Dataset("synthetic", tuple(reversed(items) if reverse else items))


def test_subsample_is_deterministic_nested_and_independent_of_file_order() -> None:
    ds = make_dataset(60)
    a, b = ds.subsample(20, seed=3), ds.subsample(20, seed=3)
    assert a.ids == b.ids and len(a) == 20 and len(set(a.ids)) == 20
    assert set(ds.subsample(20, seed=4).ids) != set(a.ids)
    # nested: a bigger budget keeps the items already run
    assert set(ds.subsample(10, seed=3).ids) <= set(a.ids) <= set(ds.subsample(40, seed=3).ids)
    # the same file in another order yields the same items
    assert set(make_dataset(60, reverse=True).subsample(20, seed=3).ids) == set(a.ids)
    # file order is kept inside the subset
    assert list(a.ids) == sorted(a.ids)
    assert ds.subsample(60, seed=1) is ds and ds.subsample(500, seed=1) is ds
    with pytest.raises(ConfigError, match="positive item count"):
        ds.subsample(0, seed=1)


def test_split_is_disjoint_complete_and_deterministic() -> None:
    ds = make_dataset(50)
    dev, held = ds.split(0.3, seed=7)
    assert len(dev) == 15 and len(held) == 35
    assert set(dev.ids).isdisjoint(held.ids)
    assert set(dev.ids) | set(held.ids) == set(ds.ids)
    assert ds.split(0.3, seed=7)[0].ids == dev.ids
    assert ds.split(0.3, seed=8)[0].ids != dev.ids
    assert dev.name == "synthetic/dev" and held.name == "synthetic/heldout"
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ConfigError, match="dev_fraction"):
            ds.split(bad, seed=0)
    # tiny sets still give two non-empty parts
    d1, h1 = make_dataset(2).split(0.01, seed=0)
    assert len(d1) == 1 and len(h1) == 1


def test_by_category_groups_items_and_names_missing_category() -> None:
    ds = Dataset("d", (Item("a", prompt="x", category="math"), Item("b", prompt="y"),
                       Item("c", prompt="z", category="math")))
    groups = ds.by_category()
    assert list(groups) == ["math", "uncategorized"]
    assert groups["math"].ids == ("a", "c") and groups["uncategorized"].ids == ("b",)


def test_answer_key_pairs_use_last_user_message_and_default_difficulty() -> None:
    ds = Dataset("d", (
        Item("a", prompt="2+2?", reference="4", metadata={"difficulty": 0.9}),
        Item("b", messages=(Message("user", "first"), Message("assistant", "ok"),
                            Message("user", "second question")))))
    assert answer_key_pairs(ds) == [("2+2?", "4", 0.9), ("second question", None, 0.5)]


# ---- built-in sets --------------------------------------------------------------------------

def test_unknown_builtin_lists_available_names() -> None:
    with pytest.raises(ConfigError) as info:
        builtin_dataset("gsm8k")
    for name in BUILTIN_DATASETS:
        assert name in str(info.value)


@pytest.mark.parametrize("name, low, high", [("math", 100, 140), ("choice", 100, 140),
                                             ("instruct", 130, 170)])
def test_builtin_sets_load_with_unique_prompts_and_difficulty(name: str, low: int, high: int) -> None:
    ds = builtin_dataset(name)
    assert low <= len(ds) <= high
    prompts = [i.prompt_text for i in ds]
    assert len(set(prompts)) == len(prompts), "the simulated answer key is keyed by prompt text"
    assert all(0.0 <= i.difficulty <= 1.0 and "difficulty" in i.metadata for i in ds)
    assert len(ds.by_category()) >= 3


def test_builtin_math_references_are_right() -> None:
    """Recompute answers of two templates independently of the generator."""
    ds = builtin_dataset("math")
    checked = 0
    for item in ds:
        m = re.match(r"(?:What is|Compute) (\d+) × (\d+)[.?]", item.prompt_text)
        if m:
            assert Fraction(item.reference) == int(m.group(1)) * int(m.group(2))
            checked += 1
        m = re.match(r"What is (\d+)% of (\d+)\?", item.prompt_text)
        if m:
            assert Fraction(item.reference) == Fraction(int(m.group(1)) * int(m.group(2)), 100)
            checked += 1
    assert checked >= 10
    assert {i.category for i in ds} == {"arithmetic", "percent", "word"}


def test_builtin_choice_reference_letter_points_at_the_correct_option() -> None:
    ds = builtin_dataset("choice")
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    checked = 0
    for item in ds:
        assert item.reference in tuple("ABCDE")
        options = dict(re.findall(r"^([A-E])\) (.+)$", item.prompt_text, re.M))
        assert sorted(options) == list("ABCDE") and len(set(options.values())) == 5
        chosen = options[item.reference]
        if (m := re.match(r"What is (\d+) × (\d+)\?", item.prompt_text)):
            assert int(chosen) == int(m.group(1)) * int(m.group(2))
            checked += 1
        elif (m := re.match(r"If today is (\w+), what day of the week will it be in (\d+) days",
                            item.prompt_text)):
            assert chosen == days[(days.index(m.group(1)) + int(m.group(2))) % 7]
            checked += 1
        elif "is the largest" in item.prompt_text:
            assert Fraction(chosen) == max(Fraction(v) for v in options.values())
            checked += 1
        elif "is prime" in item.prompt_text:
            primes = [v for v in options.values()
                      if all(int(v) % d for d in range(2, int(int(v) ** 0.5) + 1))]
            assert primes == [chosen]
            checked += 1
    assert checked >= 50


def test_builtin_instruct_has_synthetic_baselines_marked_as_such() -> None:
    ds = builtin_dataset("instruct")
    assert ds.schema_summary()["baseline_output"] == len(ds)
    assert {i.category for i in ds} == {"writing", "coding", "advice", "reasoning"}
    for item in ds:
        assert item.baseline_output and item.reference is None
        assert item.metadata["baseline_synthetic"] is True
        assert "not a real model output" in item.metadata["baseline_note"]


def test_generator_is_deterministic_and_matches_shipped_files(tmp_path: Path) -> None:
    script = BUILTIN_DIR / "make_builtin_sets.py"
    spec = importlib.util.spec_from_file_location("make_builtin_sets", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path)])
    for name in BUILTIN_DATASETS:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (BUILTIN_DIR / f"{name}.jsonl").read_bytes(), \
            f"{name}.jsonl is stale: rerun studies/data/make_builtin_sets.py"
