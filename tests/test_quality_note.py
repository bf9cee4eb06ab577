"""Study tables say when their quality is an approximate length-controlled win rate (issue 12):
alpaca_eval's LC needs a per-instruction difficulty on every item."""

from __future__ import annotations

import json
from pathlib import Path

from moa_search.study import quality_note
from moa_search.study_spec import load_study_spec
from tests.test_confirm import WIN_RATE


def spec_with(tmp_path: Path, scorer: str, data: str | None = None):
    text = WIN_RATE.replace('name = "pairwise_judge"', f'name = "{scorer}"')
    if data is not None:
        text = text.replace('builtin = "instruct"\ndev_fraction = 0.8', f'path = "{data}"\ndev_fraction = 1.0')
    path = tmp_path / "study.toml"
    path.write_text(text)
    return load_study_spec(path, runs_dir=tmp_path / "runs")


def test_lc_without_difficulty_is_labelled_approximate(tmp_path: Path) -> None:
    note = quality_note(spec_with(tmp_path, "length_controlled"))
    assert note is not None and "approximate: no instruction difficulty" in note
    assert quality_note(spec_with(tmp_path, "pairwise_judge")) is None  # a raw win rate needs no note


def test_lc_with_difficulty_on_every_item_is_not_approximate(tmp_path: Path) -> None:
    rows = [{"id": f"i{k}", "prompt": f"Say {k}.", "baseline_output": "ok",
             "metadata": {"instruction_difficulty": k / 10}} for k in range(20)]
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    note = quality_note(spec_with(tmp_path, "length_controlled", str(data)))
    assert note is not None and "approximate" not in note and "instruction difficulty" in note
    rows[3]["metadata"] = {}
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert "approximate" in (quality_note(spec_with(tmp_path, "length_controlled", str(data))) or "")
