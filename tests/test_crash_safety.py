"""Processes that start together, and workers killed with -9 (issue 11): real processes, a real
SQLite Optuna storage, the formula world of ``test_search``."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Sequence

import optuna
from optuna.trial import TrialState

from moa_search.config import MoAConfig
from moa_search.search import TrialMetrics, load_result, open_storage, run_study
from moa_search.study_spec import StudySpec
from tests.test_search import ITEMS, FormulaEvaluator, _counted, formula_estimate, make_spec

SPACE = {"models": ["w-small-1", "w-small-2", "w-small-3", "w-mid"],
         "aggregators": ["w-mid", "w-strong-cheap"], "layers": [1, 3], "proposers": [1, 4]}


def _start_together(spec: StudySpec, worker: int, barrier) -> None:  # type: ignore[no-untyped-def]
    barrier.wait(timeout=60)
    run_study(spec, FormulaEvaluator(), ITEMS, worker=worker, cost_estimate=formula_estimate)


def start_three_at_once_and_check(spec: StudySpec) -> None:
    """Three processes start ``spec`` (8 trials) together on fresh storage: all exit 0, the
    built-ins are queued once, the trial budget holds. Shared with the PostgreSQL test."""
    ctx = multiprocessing.get_context("fork")  # ready at the barrier together: the tightest race
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_start_together, args=(spec, w, barrier)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    study = optuna.load_study(study_name="s", storage=open_storage(spec.storage, create=False))
    enqueued = [t.user_attrs["enqueued_as"] for t in study.trials if "enqueued_as" in t.user_attrs]
    assert sorted(enqueued) == ["single w-mid", "single w-strong-cheap"]  # once, not once per process
    assert len(_counted(load_result(spec.storage, "s"))) == 8


def test_processes_starting_a_fresh_study_at_once_all_run_and_queue_built_ins_once(tmp_path: Path) -> None:
    start_three_at_once_and_check(make_spec(tmp_path, space=SPACE, budget={"trials": 8}))


class HangingEvaluator(FormulaEvaluator):
    """Formula evaluator double whose evaluation of one chosen config never returns, so the test
    can kill its worker while that trial is RUNNING."""

    def __init__(self, hang_on: str) -> None:
        super().__init__()
        self.hang_on = hang_on

    async def evaluate(self, config: MoAConfig, item_ids: Sequence[str], *, trial_number: int) -> TrialMetrics:
        if config.config_hash == self.hang_on:
            await asyncio.sleep(3600)
        return await super().evaluate(config, item_ids, trial_number=trial_number)


def _hang(spec: StudySpec, hang_on: str) -> None:
    run_study(spec, HangingEvaluator(hang_on), ITEMS, cost_estimate=formula_estimate)


def test_a_trial_killed_with_kill_9_is_failed_and_requeued_on_resume(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, space=SPACE, budget={"trials": 6})
    victim = MoAConfig.single("w-strong-cheap")  # the second queued config
    proc = multiprocessing.get_context("fork").Process(target=_hang, args=(spec, victim.config_hash),
                                                       daemon=True)
    proc.start()
    deadline = time.monotonic() + 60
    running: list[optuna.trial.FrozenTrial] = []
    try:
        while time.monotonic() < deadline and not running:
            time.sleep(0.2)
            if Path(spec.storage.removeprefix("sqlite:///")).exists():
                try:  # open_storage: waits while the worker is still creating the storage's tables
                    study = optuna.load_study(study_name="s", storage=open_storage(spec.storage, create=False))
                except KeyError:  # the study itself is not created yet
                    continue
                running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                           if t.user_attrs.get("config_hash") == victim.config_hash]
    finally:  # never leave the hanging worker behind, whatever happened
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join(30)
    assert running, "the worker never started the trial it hangs on"

    evaluator = FormulaEvaluator()
    result = run_study(spec, evaluator, ITEMS, cost_estimate=formula_estimate)
    killed = next(r for r in result.trials if r.number == running[0].number)
    assert killed.status == "interrupted" and "gone" in killed.note
    assert not [r for r in result.trials if r.status in ("running", "waiting")]
    assert evaluator.log[0][0] == victim.config_hash  # re-queued first, run at once
    assert victim.config_hash in {r.config.config_hash for r in result.evaluated}  # type: ignore[union-attr]
    assert len(_counted(result)) == 6


# ---- kill -9 of a real study (sim backend, real call store), then resume -----------------------

REPO = Path(__file__).resolve().parents[1]


def _small_sim_study(tmp_path: Path) -> Path:
    text = (REPO / "studies" / "sim-demo.toml").read_text("utf-8")
    text = text.replace("n_items = 48", "n_items = 24").replace("trials = 120", "trials = 14")
    text = text.replace("first_items = 16", "first_items = 8")
    # TPE, whose draws span the space (the walk's first configs are too cheap to kill it twice)
    text = text.replace('name = "cheapest-first"', 'name = "tpe"').replace("usd = 1.7 ", "usd = 5.0 ")
    assert 'name = "tpe"' in text and "trials = 14 " in text and "usd = 5.0 " in text
    path = tmp_path / "killed.toml"
    path.write_text(text, "utf-8")
    return path


def _run_file(path: str, runs_dir: str) -> None:
    from moa_search.study import run_study_file
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_study_file(path, runs_dir=runs_dir)


def _store_calls(db: Path) -> int:
    import sqlite3
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


def test_kill_9_mid_study_then_resume_leaves_no_running_trial_and_books_what_the_store_paid(tmp_path: Path) -> None:
    from moa_search.store import CallStore
    from moa_search.study import run_prefix, run_study_file, study_result
    from moa_search.study_spec import load_study_spec

    path = _small_sim_study(tmp_path)
    runs = tmp_path / "runs"
    spec = load_study_spec(path, runs_dir=runs)
    ctx = multiprocessing.get_context("fork")
    for kill_after_calls in (150, 420):  # two kills, at different points of the study
        proc = ctx.Process(target=_run_file, args=(str(path), str(runs)))
        proc.start()
        deadline = time.monotonic() + 60
        start = _store_calls(spec.call_store)
        while time.monotonic() < deadline and proc.is_alive() \
                and _store_calls(spec.call_store) - start < kill_after_calls:
            time.sleep(0.01)
        assert proc.is_alive(), "the study finished before the kill; give it more work"
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join(30)
    result = run_study_file(path, runs_dir=runs)
    assert not [r for r in result.trials if r.status in ("running", "waiting")]
    with CallStore(spec.call_store) as store:
        spend = store.spend(run_id_prefix=run_prefix(spec))
        assert store.inflight() == []
    _, shown = study_result(path, runs_dir=runs)
    assert shown.spent_usd == spend.paid_usd > 0  # the books are the store's, killed calls included
    assert shown.spent_calls == spend.paid_calls + spend.possibly_billed_calls
    assert len([r for r in result.trials if r.counted]) == 14


def _evaluated(result) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    return sorted((r.config.config_hash, r.metrics.quality) for r in result.evaluated)


def _front(result) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(r.config.config_hash for r in result.pareto_front)


def test_a_seeded_study_interrupted_and_resumed_asks_what_an_uninterrupted_one_asks(tmp_path: Path) -> None:
    import pytest

    sections = {"space": SPACE, "budget": {"trials": 12},
                "sampler": {"name": "tpe", "options": {"n_startup_trials": 4}}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = run_study(make_spec(tmp_path / "a", **sections), FormulaEvaluator(), ITEMS,
                         cost_estimate=formula_estimate)
    spec = make_spec(tmp_path / "b", **sections)
    for call in (3, 5):  # interrupted twice, at the 3rd and then the 5th evaluation of a run
        with pytest.raises(KeyboardInterrupt):
            run_study(spec, FormulaEvaluator(interrupt_on_call=call), ITEMS, cost_estimate=formula_estimate)
    resumed = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    assert len([r for r in resumed.trials if r.status == "interrupted"]) == 2
    assert _evaluated(resumed) == _evaluated(straight)
    assert _front(resumed) == _front(straight)
