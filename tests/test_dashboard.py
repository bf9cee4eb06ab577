"""Studies read well in optuna-dashboard: named objectives, flat sortable attributes under 1 KB,
per-item data out of the attributes; and studies written in the earlier layout still load.

The dashboard test starts the real ``optuna-dashboard`` command (the README's) on a free port of
127.0.0.1 and reads the study over HTTP with httpx, from the JSON API its web page reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import optuna
import pytest

from moa_search.config import AgentSpec, MoAConfig
from moa_search.search import TrialMetrics, load_result
from moa_search.search.records import (CONFIG_KEY, ITEMS_KEY, MAX_ATTR_CHARS, config_attrs, fit_map,
                                       item_attrs, metric_attrs, trial_config, trial_metrics)

NAME = "dashboard-check"
STUDY = f"""
[study]
name = "{NAME}"
seed = 3
backend = "sim"

[data]
builtin = "math"
n_items = 8

[scorer]
name = "numeric"

[space]
models = ["mistralai/Mixtral-8x7B-Instruct-v0.1", "Qwen/Qwen1.5-72B-Chat"]
aggregators = ["Qwen/Qwen1.5-110B-Chat", "meta-llama/Llama-3-8b-chat-hf"]
layers = [1, 2]
proposers = [1, 2]
proposer_mode = "distinct"

[objectives]
mode = "pareto"
metrics = ["quality", "cost", "latency"]

[budget]
trials = 5
usd = 2.0

[sampler]
name = "random"

[fidelity]
enabled = false
"""
SORTABLE = ("quality", "quality_ci_low", "quality_ci_high", "cost_usd_per_item", "latency_p50_s",
            "latency_p95_s", "n_items", "n_failed", "n_degraded", "paid_usd")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    """A study run by the real command, served by optuna-dashboard on a free local port.

    It is resumed once with a repeat of a front config queued (as ``enqueue_trial`` or a retry
    would), so the study holds a repeat for the best-trials check to see."""
    root = tmp_path_factory.mktemp("dash")
    (root / "study.toml").write_text(STUDY, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}

    def run() -> None:
        done = subprocess.run([sys.executable, "-m", "moa_search.cli", "study", "run", "study.toml", "-q"],
                              cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    run()
    storage = f"sqlite:///{root / 'runs' / NAME / 'optuna.db'}"
    study = optuna.load_study(study_name=NAME, storage=storage)
    study.enqueue_trial(dict(study.best_trials[0].params))
    (root / "study.toml").write_text(STUDY.replace("trials = 5", "trials = 6"), encoding="utf-8")
    run()
    # the README's command, as a user types it in the folder the study ran in
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"),
                               f"sqlite:///runs/{NAME}/optuna.db", "--host", "127.0.0.1", "--port", str(port),
                               "--quiet"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _wait_until_up(client, server)
            yield client, storage
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_until_up(client: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if server.poll() is not None:
            raise AssertionError(f"optuna-dashboard exited: {server.stderr.read().decode() if server.stderr else ''}")
        try:
            if client.get("/api/meta").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("optuna-dashboard did not answer within 30 s")


def _detail(client: httpx.Client) -> dict[str, Any]:
    studies = client.get("/api/studies")
    assert studies.status_code == 200, studies.text
    [study] = [s for s in studies.json()["study_summaries"] if s["study_name"] == NAME]
    detail = client.get(f"/api/studies/{study['study_id']}")
    assert detail.status_code == 200, detail.text
    return detail.json()


def _attrs(trial: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


def test_dashboard_names_the_objectives_with_units(dashboard) -> None:
    client, _ = dashboard
    detail = _detail(client)
    assert detail["objective_names"] == ["quality", "cost_usd_per_item", "latency_p50_s"]
    assert detail["directions"] == ["maximize", "minimize", "minimize"]


def test_dashboard_attributes_are_flat_sortable_and_whole(dashboard) -> None:
    client, storage = dashboard
    detail = _detail(client)
    sortable = {a["key"]: a["sortable"] for a in detail["union_user_attrs"]}
    for key in SORTABLE:
        assert sortable.get(key) is True, f"{key} is not a sortable column: {sortable}"
    assert {"config", "status", "simulated", "price_table", "cost_usd_per_item_by_model"} <= sortable.keys()
    assert "metrics" not in sortable and not any("item_values" in k for k in sortable)
    measured = [t for t in detail["trials"] if "quality" in _attrs(t)]
    assert measured
    for trial in detail["trials"] + [{"user_attrs": detail["user_attrs"]}]:
        for key, value in _attrs(trial).items():
            # the dashboard cuts at 1024 characters; a dict must arrive whole, as valid JSON
            assert len(value) < MAX_ATTR_CHARS, (key, len(value))
            if value.startswith("{"):
                json.loads(value)
    # the dashboard's strings are the study's numbers, and per-item data is in the storage
    study = optuna.load_study(study_name=NAME, storage=storage)
    by_number = {t.number: t for t in study.trials}
    for trial in measured:
        frozen = by_number[trial["number"]]
        shown = _attrs(trial)
        assert float(shown["quality"]) == frozen.user_attrs["quality"]
        assert float(shown["latency_p95_s"]) == frozen.user_attrs["latency_p95_s"]
        assert shown["simulated"] == "True" and shown["config"] == trial_config(frozen).summary()  # type: ignore[union-attr]
        assert shown["price_table"].startswith(("genai-prices", "typed in catalog"))
        m = trial_metrics(frozen)
        assert m is not None and len(m.item_values) == m.n_items - m.n_failed


def test_dashboard_best_trials_hold_the_front(dashboard) -> None:
    client, storage = dashboard
    best = _detail(client)["best_trials"]
    result = load_result(storage, NAME)
    front = {r.number for r in result.pareto_front}
    assert front and front <= {t["number"] for t in best}
    assert any(r.status == "duplicate" for r in result.trials)  # the repeat the next test is about


def test_dashboard_best_trials_list_each_config_once(dashboard) -> None:
    """A repeat is a PRUNED trial (issue 15's loop change), so it is not among the best trials."""
    client, _ = dashboard
    configs = [_attrs(t)["config_hash"] for t in _detail(client)["best_trials"]]
    assert len(configs) == len(set(configs)), f"repeats listed as best trials: {sorted(configs)}"


def _metrics(n_models: int = 3) -> TrialMetrics:
    return TrialMetrics(
        quality=0.75, quality_low=0.5, quality_high=0.875, n_items=4,
        item_values={"q1": 1.0, "q2": 0.0, "q3": 1.0, "q4": 1.0}, cost_usd_per_item=0.0012,
        paid_usd=0.0048, latency_p50_s=1.5, latency_p95_s=2.25, calls=12, cached_calls=4,
        cost_by_role={"proposer": 0.001, "aggregator": 0.0002},
        cost_by_model={f"vendor/a-rather-long-model-name-number-{i}": 1e-4 * (i + 1) for i in range(n_models)},
        n_failed=0, simulated=True, tokens_in=900, tokens_out=300,
        item_latency_s={"q1": 1.0, "q2": 1.5, "q3": 2.0, "q4": 2.5}, n_degraded=1,
        first_error="x" * 5000)


def _big_config() -> MoAConfig:
    layer = tuple(AgentSpec(f"vendor/a-rather-long-model-name-number-{i}") for i in range(12))
    return MoAConfig(proposer_layers=(layer, layer, layer, layer),
                     aggregator=AgentSpec("vendor/the-aggregator-with-a-long-name"))


def test_attributes_stay_under_1kb_and_the_storage_keeps_everything(tmp_path: Path) -> None:
    """A config and metrics far bigger than a demo's: every attribute under 1 KB, and what was
    cut for the dashboard (per-model costs, the config) is read back whole from the storage."""
    config, m = _big_config(), _metrics(n_models=60)
    assert len(json.dumps(config.to_dict())) > MAX_ATTR_CHARS  # the earlier layout would be cut
    attrs = {**config_attrs(config), **metric_attrs(m), "paid_usd": m.paid_usd, "status": "complete"}
    skipped = fit_map({f"single vendor/model-{i}": "more known configs than half the trial budget (3)"
                       for i in range(40)})  # the study's ``enqueue_skipped`` of a large space
    for key, value in {**attrs, "enqueue_skipped": skipped}.items():
        assert len(value if isinstance(value, str) else json.dumps(value)) < MAX_ATTR_CHARS, key
    assert skipped["…"] == f"{40 - len(skipped) + 1} more not shown"
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(
        values=[m.quality, m.cost_usd_per_item], user_attrs=attrs,
        system_attrs={ITEMS_KEY: item_attrs(m), CONFIG_KEY: config.to_dict()}))
    [t] = optuna.load_study(study_name=study.study_name, storage=study._storage).trials
    assert len(t.user_attrs["first_error"]) < len(m.first_error)  # cut for the dashboard
    assert trial_metrics(t) == m  # and whole in the storage
    assert trial_config(t) == config


def test_a_study_in_the_earlier_nested_layout_still_loads(tmp_path: Path) -> None:
    """Before the flat layout, a trial kept ``metrics`` (with per-item data) and ``config`` as
    nested attributes, and the baseline its metrics in the study attribute."""
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.create_study(study_name="old", storage=storage, directions=["maximize", "minimize"])
    study.set_user_attr("objectives", {"mode": "pareto", "names": ["quality", "cost"], "target": None,
                                       "target_confidence": 0.9})
    base, m = MoAConfig.single("Qwen/Qwen1.5-72B-Chat"), _metrics()
    study.set_user_attr("baseline", {"name": "b", "config": base.to_dict(), "config_hash": base.config_hash,
                                     "metrics": m.to_dict()})
    config = MoAConfig.single("Qwen/Qwen1.5-110B-Chat")
    study.add_trial(optuna.trial.create_trial(
        values=[m.quality, m.cost_usd_per_item],
        user_attrs={"status": "complete", "config": config.to_dict(), "config_hash": config.config_hash,
                    "summary": config.summary(), "metrics": m.to_dict(), "paid_usd": m.paid_usd,
                    "paid_calls": m.paid_calls}))
    result = load_result(storage, "old")
    [record] = result.trials
    assert record.config == config and record.metrics == m and record.full_fidelity
    assert result.baseline is not None and result.baseline.metrics == m
    assert result.spent_usd == pytest.approx(2 * m.paid_usd)  # the trial's and the baseline's
    assert [r.number for r in result.pareto_front] == [0]
    # Such studies kept a free repeat as a second COMPLETE trial: the front still lists the config once.
    study.add_trial(optuna.trial.create_trial(
        values=[m.quality, m.cost_usd_per_item],
        user_attrs={"status": "duplicate", "duplicate_of": 0, "config": config.to_dict(),
                    "config_hash": config.config_hash, "summary": config.summary(),
                    "metrics": m.to_dict(), "paid_usd": 0.0, "paid_calls": 0}))
    again = load_result(storage, "old")
    assert len(again.trials) == 2 and [r.number for r in again.pareto_front] == [0]
