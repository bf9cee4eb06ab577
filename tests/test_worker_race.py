"""Parallel workers never run one trial twice (issue 18: `Cannot tell a COMPLETE trial`).

Optuna pops a queued trial by reading it as WAITING and then setting it RUNNING. On SQLite the
read ran outside any transaction, so two processes could both read WAITING and both "win".
``search.storage`` runs every SQLite transaction as ``BEGIN IMMEDIATE``; these tests pin that.
The deterministic test forces the interleaving that used to lose; the stress test (opt-in,
``pytest -m stress``) repeats the real multi-process run many times.
"""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from moa_search.search import load_result, open_storage
from tests.test_search import _counted, _run_two_workers, make_spec


def _queued_study(tmp_path: Path) -> tuple[str, int]:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    study.enqueue_trial({"x": 1.0})
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return url, waiting[0]._trial_id


def test_a_queued_trial_is_claimed_by_exactly_one_storage_under_the_losing_interleaving(tmp_path: Path) -> None:
    """B reads the trial as WAITING, then A claims it, then B writes: B must see A's claim."""
    url, trial_id = _queued_study(tmp_path)
    a, b = open_storage(url), open_storage(url)
    b_has_read, a_done = threading.Event(), threading.Event()

    @event.listens_for(b.engine, "before_cursor_execute")
    def pause_before_write(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE TRIALS"):
            b_has_read.set()
            # With the fix A is blocked behind B's write lock and cannot finish first; without it,
            # A finishes here and B then overwrites A's claim.
            a_done.wait(timeout=3)

    results: dict[str, bool] = {}

    def claim_b() -> None:
        results["b"] = b.set_trial_state_values(trial_id, state=TrialState.RUNNING)

    def claim_a() -> None:
        b_has_read.wait(timeout=10)
        results["a"] = a.set_trial_state_values(trial_id, state=TrialState.RUNNING)
        a_done.set()

    threads = [threading.Thread(target=claim_b), threading.Thread(target=claim_a)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert b_has_read.is_set()
    assert sorted(results.values()) == [False, True], results


def test_two_workers_never_both_start_the_queued_trials(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, space={"models": ["w-small-1", "w-small-2", "w-small-3", "w-mid"],
                                      "aggregators": ["w-mid", "w-strong-cheap"], "layers": [1, 3],
                                      "proposers": [1, 4]},
                     budget={"trials": 6}, sampler={"name": "random"})
    result = _run_two_workers(spec)
    numbers = [r.number for r in result.trials]
    assert len(numbers) == len(set(numbers))
    enqueued = [t for t in optuna.load_study(study_name="s", storage=spec.storage).trials
                if "enqueued_as" in t.user_attrs]
    assert enqueued and all(t.state != TrialState.RUNNING for t in enqueued)
    assert len(_counted(result)) == 6


@pytest.mark.stress
@pytest.mark.parametrize("round_", range(30))
def test_stress_two_workers_share_one_storage(tmp_path: Path, round_: int) -> None:
    spec = make_spec(tmp_path, space={"models": ["w-small-1", "w-small-2", "w-small-3", "w-mid"],
                                      "aggregators": ["w-mid", "w-strong-cheap"], "layers": [1, 3],
                                      "proposers": [1, 4]},
                     budget={"trials": 10}, sampler={"name": "tpe", "options": {"n_startup_trials": 4}})
    result = _run_two_workers(spec)  # asserts both workers exit 0
    assert len(_counted(result)) == 10
    assert not [r for r in load_result(spec.storage, "s").trials if r.status in ("running", "waiting")]
