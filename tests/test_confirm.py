"""Held-out confirmation (`study confirm`, and at the end of a constrained `study run`).

Real parts: the simulated world as the backend (its numbers are simulated, and the output says
so), a real Optuna SQLite storage and a real SQLite call store in a temporary folder, and the
real command (``cli.main``) in process.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from moa_search import terminal
from moa_search.cli import main
from moa_search.confirm import CONFIG_ATTR_PREFIX, SUMMARY_ATTR
from moa_search.store import CallStore
from moa_search.study import study_data
from moa_search.study_spec import load_study_spec

SPACE = """
[space]
models = ["meta-llama/Llama-3-8b-chat-hf", "mistralai/Mixtral-8x7B-Instruct-v0.1", "Qwen/Qwen1.5-72B-Chat"]
aggregators = ["Qwen/Qwen1.5-72B-Chat", "meta-llama/Llama-3-8b-chat-hf"]
layers = [1, 2]
proposers = [1, 2]
proposer_mode = "distinct"

[budget]
trials = 14
usd = 5.0

[fidelity]
enabled = false
"""

# The search sees 20 of the 96 dev items; the 24 held-out items are the rest of the split.
NUMERIC = """
[study]
name = "confirm-numeric"
seed = 2
backend = "sim"

[data]
builtin = "math"
dev_fraction = 0.8
split_seed = 1
n_items = 20

[scorer]
name = "numeric"

[objectives]
mode = "constrained"
target = { baseline = "microsoft/WizardLM-2-8x22B" }
target_confidence = 0.5

[sampler]
name = "grid"
""" + SPACE

# A win rate against the items' baseline_output (AlpacaEval-style), target 40 %.
WIN_RATE = """
[study]
name = "confirm-winrate"
seed = 4
backend = "sim"

[data]
builtin = "instruct"
dev_fraction = 0.8
split_seed = 0
n_items = 16

[scorer]
name = "pairwise_judge"
options = { judge_model = "gpt-4o-2024-05-13" }

[objectives]
mode = "constrained"
target = 0.4
target_confidence = 0.5

[sampler]
name = "cheapest-first"
""" + SPACE

PARETO = NUMERIC.replace('name = "confirm-numeric"', 'name = "confirm-pareto"').replace(
    'mode = "constrained"\ntarget = { baseline = "microsoft/WizardLM-2-8x22B" }\ntarget_confidence = 0.5',
    'mode = "pareto"\nmetrics = ["quality", "cost"]')


def cli_run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def write(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def confirm_rows(store_path: Path, study: str) -> list:
    with CallStore(store_path, create=False) as store:
        return store.calls(run_id_prefix=f"confirm:{study}/", limit=None)


def fits(text: str) -> None:
    if terminal.out.width == 80:  # no COLUMNS in the environment: a pipe is 80 wide
        assert max(len(line) for line in text.splitlines()) <= 80, text


def test_confirm_measures_pick_and_baseline_on_heldout_items_only_then_serves_them_free(tmp_path, capsys):
    study = write(tmp_path, NUMERIC, "numeric")
    runs = str(tmp_path / "runs")
    code, out, err = cli_run(capsys, "study", "run", str(study), "--runs-dir", runs, "--no-confirm", "-q")
    assert code == 0, err
    assert "held-out" not in out  # --no-confirm: nothing checked, nothing stored
    spec = load_study_spec(study, runs_dir=runs)
    assert not confirm_rows(spec.call_store, spec.name)

    code, out, err = cli_run(capsys, "study", "confirm", str(study), "--runs-dir", runs, "--json", "-q")
    assert code == 0, err
    first = json.loads(out)
    data = study_data(spec)
    assert first["n_items"] == len(data.heldout_ids) == 24 and first["simulated"] is True
    roles = [c["role"] for c in first["configs"]]
    assert roles == ["pick", "baseline"]
    pick, base = first["configs"]
    assert pick["summary"] != base["summary"] and pick["config_hash"] != base["config_hash"]
    assert pick["n_scored"] == base["n_scored"] == 24
    assert pick["dev_n_items"] == base["dev_n_items"] == 20
    assert pick["vs_n"] == 24 and pick["vs_wins"] + pick["vs_losses"] + pick["vs_ties"] == 24
    assert pick["vs_low"] <= pick["vs_diff"] <= pick["vs_high"]
    assert pick["paid_usd"] > 0 and first["paid_usd"] > 0
    # every call ran on a held-out item, for both configs, and on every held-out item
    rows = confirm_rows(spec.call_store, spec.name)
    assert {r.item_id for r in rows} == set(data.heldout_ids)
    assert not {r.item_id for r in rows} & set(data.dev_ids)
    assert {r.run_id for r in rows} == {f"confirm:{spec.name}/{c['config_hash']}" for c in first["configs"]}
    # the study's own spend (run ids study:<name>/) is untouched by the check
    with CallStore(spec.call_store, create=False) as store:
        assert store.spend(run_id_prefix=f"study:{spec.name}/").paid_usd > 0
        assert not any(r.run_id.startswith(f"study:{spec.name}/") and r.item_id in data.heldout_ids
                       for r in store.calls(limit=None))

    code, out, err = cli_run(capsys, "study", "confirm", str(study), "--runs-dir", runs, "--json", "-q")
    assert code == 0, err
    second = json.loads(out)
    assert second["paid_usd"] == 0.0 and second["cached_calls"] == second["calls"] == first["calls"]
    assert [c["quality"] for c in second["configs"]] == [c["quality"] for c in first["configs"]]

    # stored flat and small in the Optuna storage, and shown beside the dev numbers
    attrs = optuna.load_study(study_name=spec.name, storage=spec.storage).user_attrs
    assert attrs[SUMMARY_ATTR]["configs"] == f"{pick['slug']},baseline"
    for value in (attrs[SUMMARY_ATTR], attrs[CONFIG_ATTR_PREFIX + pick["slug"]],
                  attrs[CONFIG_ATTR_PREFIX + "baseline"]):
        assert all(not isinstance(v, (dict, list)) for v in value.values())
        assert len(json.dumps(value)) < 1024
    code, out, err = cli_run(capsys, "study", "show", str(study), "--runs-dir", runs)
    assert code == 0, err
    fits(out)
    out = " ".join(out.split())  # the 80-column console wraps long lines
    assert "held-out (24 items the search never saw; simulated world)" in out
    assert f"{pick['label']} - baseline on 24 paired items" in out
    assert f"{second['calls']} calls, {second['calls']} served from the call store, paid $0.0000 (simulated)" in out
    assert out.index("target met") < out.index("held-out (24 items")
    code, out, _ = cli_run(capsys, "study", "show", str(study), "--runs-dir", runs, "--json")
    assert json.loads(out)["heldout"]["configs"] == second["configs"]


def test_a_constrained_run_checks_its_pick_against_the_baseline_outputs(tmp_path, capsys):
    study = write(tmp_path, WIN_RATE, "winrate")
    runs = str(tmp_path / "runs")
    code, out, err = cli_run(capsys, "study", "run", str(study), "--runs-dir", runs, "-q")
    assert code == 0, err
    fits(out)
    out = " ".join(out.split())
    assert out.index("target met") < out.index("held-out (30 items the search never saw; simulated world)")
    assert "items' baseline_output" in out  # a table cell: may wrap inside its column
    assert " - baseline on 30 paired items" in out
    assert "on held-out items: confidence" in out  # the target rule, on the held-out values
    spec = load_study_spec(study, runs_dir=runs)
    rows = confirm_rows(spec.call_store, spec.name)
    assert {r.item_id for r in rows} == set(study_data(spec).heldout_ids)
    assert {r.role for r in rows} >= {"judge"}
    # the baseline outputs cost no call: every run id is the pick's
    assert len({r.run_id for r in rows}) == 1
    code, out, err = cli_run(capsys, "study", "run", str(study), "--runs-dir", runs, "--json", "-q")
    assert code == 0, err
    again = json.loads(out)["heldout"]
    assert again["paid_usd"] == 0.0 and [c["role"] for c in again["configs"]] == ["pick", "baseline"]
    assert again["configs"][1]["quality"] == 0.5 and again["configs"][1]["calls"] == 0


def test_a_pareto_study_confirms_its_front_or_the_trials_asked_for(tmp_path, capsys, monkeypatch):
    study = write(tmp_path, PARETO, "pareto")
    runs = str(tmp_path / "runs")
    code, out, err = cli_run(capsys, "study", "run", str(study), "--runs-dir", runs, "--json", "-q")
    assert code == 0, err
    result = json.loads(out)
    assert result["heldout"] is None  # only a constrained study confirms on its own
    front = {t["config_hash"] for t in result["pareto_front"]}
    code, out, err = cli_run(capsys, "study", "confirm", str(study), "--runs-dir", runs, "--json", "-q")
    assert code == 0, err
    conf = json.loads(out)
    assert {c["config_hash"] for c in conf["configs"]} == front
    assert {c["role"] for c in conf["configs"]} == {"front"}  # no baseline: no paired line
    assert all(c.get("vs_n") is None and c["target_confidence"] is None for c in conf["configs"])
    trial = result["pareto_front"][0]["trial"]
    # --timeout / --concurrency reach the held-out evaluator (a spy around the real factory)
    import moa_search.confirm as confirm_module
    given = []

    def spy(*args, **kwargs):
        given.append(kwargs.get("overrides"))
        return real(*args, **kwargs)

    real = confirm_module.make_evaluator
    monkeypatch.setattr(confirm_module, "make_evaluator", spy)
    code, out, err = cli_run(capsys, "study", "confirm", str(study), "--runs-dir", runs, "--trial", str(trial), "-q",
                             "--timeout", "7", "--concurrency", "3")
    assert code == 0, err
    assert [(o.timeout_s, o.concurrency) for o in given] == [(7.0, 3)]
    assert f"trial {trial} " in out and "paid $0.0000" in " ".join(out.split())
    code, out, _ = cli_run(capsys, "study", "show", str(study), "--runs-dir", runs, "--json")
    assert [c["label"] for c in json.loads(out)["heldout"]["configs"]] == [f"trial {trial}"]


@pytest.mark.parametrize("case", ["nothing held out", "not run"])
def test_bad_input_is_one_line(tmp_path, capsys, case):
    runs = str(tmp_path / "runs")
    text = PARETO.replace("dev_fraction = 0.8", "dev_fraction = 1.0").replace("trials = 14", "trials = 2")
    study = write(tmp_path, text, "no-heldout")
    if case == "nothing held out":
        assert cli_run(capsys, "study", "run", str(study), "--runs-dir", runs, "-q")[0] == 0
    code, out, err = cli_run(capsys, "study", "confirm", str(study), "--runs-dir", runs)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    if case == "nothing held out":
        assert "data.dev_fraction" in err and "holds no items out" in err
    else:
        assert "has not been run yet" in err and "moa-search study run" in err


def test_a_study_whose_target_is_not_met_has_no_pick_to_confirm(tmp_path, capsys):
    text = NUMERIC.replace('target = { baseline = "microsoft/WizardLM-2-8x22B" }', "target = 0.99")
    study = write(tmp_path, text.replace('name = "confirm-numeric"', 'name = "confirm-unmet"'), "unmet")
    runs = str(tmp_path / "runs")
    code, out, err = cli_run(capsys, "study", "run", str(study), "--runs-dir", runs, "-q")
    assert code == 0, err
    assert "held-out check skipped: no config meets quality >= 0.99" in " ".join(out.split())
    assert "held-out (" not in out
    code, out, err = cli_run(capsys, "study", "confirm", str(study), "--runs-dir", runs)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "no pick to confirm; give --trial N" in err
    code, out, err = cli_run(capsys, "study", "confirm", str(study), "--runs-dir", runs, "--trial", "0", "--json", "-q")
    assert code == 0, err
    conf = json.loads(out)
    assert [c["role"] for c in conf["configs"]] == ["trial"] and conf["configs"][0]["target_confidence"] < 0.5
