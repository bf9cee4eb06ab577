"""Costs in study results name their price table, and ``study run``/``study show`` warn in one
line when the study's typed prices differ from the installed price database by more than
``catalog check``'s threshold. Through the real command, on the simulated world, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moa_search import price_db
from moa_search.catalog import Catalog
from moa_search.cli import main

STALE, CURRENT = "mistralai/Mixtral-8x7B-Instruct-v0.1", "meta-llama/Llama-3.3-70B-Instruct-Turbo"

CATALOG = """
[providers.together]
base_url = "https://api.together.xyz/v1"
api_key_env = "TOGETHER_API_KEY"

[models."{stale}"]
provider = "together"
{stale_price}
context_window = 32768
sim = {{ skill = 20.0 }}

[models."{current}"]
provider = "together"
price = "genai-prices"
sim = {{ skill = 40.0 }}
"""

STUDY = """
[study]
name = "priced"
seed = 1

[catalog]
path = "catalog.toml"

[data]
builtin = "math"
n_items = 4

[scorer]
name = "numeric"

[space]
models = ["{stale}", "{current}"]
aggregators = ["{current}"]
layers = 1
proposers = [1, 2]

[objectives]
mode = "pareto"
metrics = ["quality", "cost"]

[budget]
trials = 2

[sampler]
name = "random"

[fidelity]
enabled = false
"""


def write_study(tmp_path: Path, stale_price: str) -> Path:
    (tmp_path / "catalog.toml").write_text(CATALOG.format(stale=STALE, current=CURRENT, stale_price=stale_price))
    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(stale=STALE, current=CURRENT))
    return study


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_show_warns_once_about_stale_typed_prices_and_names_the_price_tables(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    today = price_db.lookup("together", STALE)
    typed = today.input_price / 2  # half today's price: far beyond the threshold
    study = write_study(tmp_path, f"input_price = {typed}\noutput_price = {today.output_price}")
    runs = str(tmp_path / "runs")
    code, out, err = run(capsys, "study", "run", str(study), "--runs-dir", runs, "-q")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 of the study's 2 models" in warnings[0]
    assert f"catalog check --catalog {tmp_path / 'catalog.toml'}" in warnings[0]

    code, out, err = run(capsys, "study", "show", str(study), "--runs-dir", runs)
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == warnings
    footer = out.strip().splitlines()[-1]
    assert footer == (f"prices: {price_db.source()} for 1 model, typed in catalog "
                      f"{tmp_path / 'catalog.toml'} for 1 model")

    code, out, _ = run(capsys, "study", "show", str(study), "--runs-dir", runs, "--json")
    assert code == 0 and json.loads(out)["prices"] == footer


def test_no_warning_when_typed_prices_are_within_the_threshold(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    today = price_db.lookup("together", STALE)
    within = today.input_price * (1 + price_db.DEFAULT_THRESHOLD / 2)
    study = write_study(tmp_path, f"input_price = {within}\noutput_price = {today.output_price}")
    runs = str(tmp_path / "runs")
    code, _, err = run(capsys, "study", "run", str(study), "--runs-dir", runs, "-q")
    assert code == 0 and "warning:" not in err
    code, out, err = run(capsys, "study", "show", str(study), "--runs-dir", runs)
    assert code == 0 and "warning:" not in err
    assert out.strip().splitlines()[-1].startswith("prices: ")
    # the same verdict as `catalog check` on the study's catalog
    assert price_db.check(Catalog.load(tmp_path / "catalog.toml")) == []


def test_price_tables_line_for_one_table() -> None:
    cat = Catalog.default()
    assert price_db.price_tables(cat, [STALE]) == "prices: typed in catalog <built-in catalog>"
    current = Catalog.load(Path(__file__).parent.parent / "catalogs" / "current.toml")
    some = sorted(current.models)[:2]
    assert price_db.price_tables(current, some) == (f"prices: {price_db.source()} "
                                                     f"(catalog {current.source})")
