"""The study loop: ask Optuna for a config, find a twin or run it within budget, tell the result.

The trial budget counts *evaluations*; see ``budget`` for how spend is shared by workers, and
``fidelity`` for the early-stopping rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import MoAConfig
from ..space import P_GRID
from ..stats import mean_bound
from ..study_spec import StudySpec
from .budget import (PaidLedger, agent_calls_per_item, covered_calls, measured_configs, price_estimate,
                     spent_with_ledger, uncached_share)
from .cost_order import CheapestFirstSampler, CostEstimate
from .fidelity import (certain_stop_reason, early_stop_reason, fidelity_looks, look_confidence, merge_metrics,
                       quality_is_item_mean, stage_ends, staged_order)
from .prepare import prepare_study_async
from .records import (_WITH_METRICS, CONFIG_KEY, ITEMS_KEY, Evaluator, StudyResult, TrialEvent,
                      TrialMetrics, TrialRecord, _counted, _objective_values, _record, config_attrs,
                      item_attrs, metric_attrs, price_table, read_baseline, trial_config,
                      trial_metrics)
from .results import load_result
from .samplers import build_sampler
from .storage import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, open_storage, worker_id, worker_is_gone

_log = logging.getLogger(__name__)
_BUDGET_SKIPS_BEFORE_STOP = 5
_DUP_POLL_S = 0.2


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Optuna's notices about driving heartbeats from ask/tell: we record them ourselves
    (``_Loop.heartbeat``), which is what ``Study.optimize`` would do."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


class _Stop(Exception):
    """Internal: this worker should stop asking for trials; the message is the reason."""


@dataclass
class _Loop:
    spec: StudySpec
    evaluator: Evaluator
    items: list[str]
    study: optuna.Study
    storage: optuna.storages.RDBStorage
    cost_estimate: CostEstimate | None
    on_trial: Callable[[TrialEvent], None] | None
    indexed: bool
    _baseline: Mapping[str, Any] | None = field(default=None, init=False)
    _target: float | None = field(default=None, init=False)
    _catalog: Any = field(default=None, init=False)
    _grid: dict[str, MoAConfig] = field(default_factory=dict, init=False)
    _staged: list[str] = field(default_factory=list, init=False)  # fidelity stages' item order
    _item_mean: bool = field(default=True, init=False)  # quality = mean of item values (fidelity applies)

    def __post_init__(self) -> None:
        # Both are fixed once prepare_study has run, so read them once, not per trial.
        attrs = self.study.user_attrs
        self._baseline = read_baseline(self.study)
        self._target = attrs.get("objectives", {}).get("target")
        if self.indexed:  # the grid's enumeration, once per study run (it took ~1 s per trial)
            self._grid = {c.config_hash: c for c in self.spec.space.enumerate_configs()}
        self._staged = staged_order(self.items, self.spec.seed)
        self._item_mean = quality_is_item_mean(self.spec)

    # -- storage views --

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def baseline(self) -> Mapping[str, Any] | None:
        return self._baseline

    def target(self) -> float | None:
        return self._target

    def spent(self, exclude: int | None = None, trials: Sequence[FrozenTrial] | None = None,
              pending: tuple[float, int] = (0.0, 0)) -> tuple[float, int]:
        ledger = self.evaluator if isinstance(self.evaluator, PaidLedger) else None
        return spent_with_ledger(self.trials() if trials is None else trials, self._baseline, ledger,
                                 exclude, pending)

    # -- estimates --

    def covered(self, trials: Sequence[FrozenTrial]) -> dict[str, int]:
        """Calls the study has made (identity -> items covered), from its measured configs."""
        if self.cost_estimate is None:
            return {}
        measured = measured_configs(trials)
        if self._baseline:
            measured.append((MoAConfig.from_dict(self._baseline["config"]), len(self.items)))
        return covered_calls(self.cost_estimate, measured)

    def estimate(self, config: MoAConfig, n_items: int, trials: Sequence[FrozenTrial]) -> tuple[float, int]:
        """Conservative $ and calls for ``n_items`` items of ``config``: list price, less the
        share of its calls the call store already holds (``budget.uncached_share``)."""
        per_call, overhead = 0.0, 0.0
        for t in trials:
            m = trial_metrics(t) if t.user_attrs.get("status") == "complete" else None
            done = trial_config(t)
            if m is None or done is None or not m.n_items or not m.calls:
                continue
            calls_per_item = m.calls / m.n_items
            per_call = max(per_call, m.cost_usd_per_item / calls_per_item)
            agent_calls = agent_calls_per_item(done)
            overhead = max(overhead, calls_per_item - agent_calls)
        calls_per_item = agent_calls_per_item(config) + overhead
        usd_per_item = per_call * calls_per_item
        if self.cost_estimate is not None:
            usd_per_item = max(usd_per_item, float(self.cost_estimate(config)))
            usd_per_item *= uncached_share(self.cost_estimate, config, n_items, self.covered(trials))
        return usd_per_item * n_items, int(math.ceil(calls_per_item * n_items))

    def over_budget(self, usd: float, calls: int, exclude: int, trials: Sequence[FrozenTrial]) -> str | None:
        """Why spending ``usd``/``calls`` more would break a budget, or None."""
        b = self.spec.budget
        spent_usd, spent_calls = self.spent(exclude, trials)
        if b.usd is not None and spent_usd + usd > b.usd:
            return f"estimated ${usd:.4f} > remaining ${max(0.0, b.usd - spent_usd):.4f} of ${b.usd}"
        if b.calls is not None and spent_calls + calls > b.calls:
            return f"estimated {calls} calls > remaining {max(0, b.calls - spent_calls)} of {b.calls}"
        return None

    # -- one trial --

    def check_can_ask(self) -> None:
        trials = self.trials()
        b = self.spec.budget
        usd, calls = self.spent(trials=trials)
        if b.usd is not None and usd >= b.usd:
            raise _Stop(f"USD budget spent (${usd:.4f} of ${b.usd})")
        if b.calls is not None and calls >= b.calls:
            raise _Stop(f"call budget spent ({calls} of {b.calls})")
        if sum(t.state != TrialState.WAITING and _counted(t) for t in trials) >= b.trials:
            raise _Stop(f"trial budget reached ({b.trials})")
        # The last few *new* configs (duplicates are free and neither count nor break the streak)
        # did not fit in what is left of this budget: stop rather than keep drawing.
        trailing = 0
        for t in sorted((t for t in trials if t.state.is_finished()), key=lambda t: -t.number):
            status = t.user_attrs.get("status")
            if status == "duplicate":
                continue
            if status != "skipped" or t.user_attrs.get("budget_at_skip") != [b.usd, b.calls]:
                break
            trailing += 1
        if trailing >= _BUDGET_SKIPS_BEFORE_STOP:
            left = []
            if b.usd is not None:
                left.append(f"${b.usd - usd:.4f}")
            if b.calls is not None:
                left.append(f"{b.calls - calls} calls")
            raise _Stop(f"budget nearly spent: the last {trailing} new configs suggested did not fit "
                        f"in what is left ({', '.join(left)})")
        streak = 0
        for t in sorted((t for t in trials if t.state.is_finished()), key=lambda t: -t.number):
            if t.user_attrs.get("status") != "duplicate":
                break
            streak += 1
        if streak >= max(30, b.trials):
            raise _Stop(f"the sampler proposed only already-evaluated configs for {streak} trials in a row")
        done = {t.user_attrs.get("config_hash") for t in trials
                if t.state.is_finished() and t.user_attrs.get("status") in _WITH_METRICS}
        if len(done) >= self.spec.space.count_configs():
            raise _Stop(f"every config of the space has been evaluated ({len(done)})")

    async def run_one(self) -> TrialRecord:
        self.check_can_ask()
        if isinstance(self.study.sampler, CheapestFirstSampler):
            reason = self.study.sampler.exhausted(self.trials())
            if reason is not None:
                raise _Stop(reason)
        with _quiet():
            trial = self.study.ask()
        # Stamped at once, and beating from its first wait on (a wait for a twin included, which
        # may outlast the grace period): a worker killed from here on leaves a trial that
        # ``fail_orphans`` (this host) or the heartbeat check (any host) will fail.
        self.set_attrs(trial, {"worker": worker_id()})
        # Optuna exposes no public trial id; heartbeats are keyed by it.
        beat = asyncio.create_task(self.heartbeat(trial._trial_id))
        try:
            return await self.run_asked(trial)
        finally:
            beat.cancel()

    async def run_asked(self, trial: optuna.Trial) -> TrialRecord:
        """Everything after ``ask``: budget, config, twin, estimate, evaluation, ``tell``."""
        trials = self.trials()
        before = sum(1 for t in trials if t.number < trial.number and _counted(t))
        if before >= self.spec.budget.trials:
            self.finish(trial, "skipped", skipped=f"trial budget reached ({self.spec.budget.trials})")
            raise _Stop(f"trial budget reached ({self.spec.budget.trials})")
        if self.indexed:
            config = self._grid[trial.suggest_categorical(P_GRID, list(self._grid))]
        else:
            config = self.spec.space.suggest(trial)
        h = config.config_hash
        self.storage.set_trial_system_attr(trial._trial_id, CONFIG_KEY, config.to_dict())
        self.set_attrs(trial, config_attrs(config))

        # Read again after writing the hash: a twin another worker started meanwhile is seen
        # by whichever of the two writes its hash last (see find_duplicate).
        source = await self.find_duplicate(trial, h, self.trials())
        if source is not None:
            return self.reuse(trial, config, source)
        trials = self.trials()  # the wait for a twin may have been long: reservations changed

        usd, calls = self.estimate(config, len(self.items), trials)
        reason = self.over_budget(usd, calls, trial.number, trials)
        if reason is not None:
            b = self.spec.budget
            return self.finish(trial, "skipped", config=config, skipped=f"budget: {reason}",
                               budget_at_skip=[b.usd, b.calls])
        self.set_attrs(trial, {"reserved": [usd, calls]})
        try:
            metrics, status, why = await self.evaluate(trial, config)
        except BaseException as exc:
            interrupted = isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError))
            self.finish(trial, "interrupted" if interrupted else "failed", config=config,
                        error=f"{type(exc).__name__}: {exc}")
            if interrupted:  # retry the same config first when the study resumes
                self.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
            raise
        return self.finish(trial, status, config=config, metrics=metrics, stopped_early=why)

    async def heartbeat(self, trial_id: int) -> None:
        """Beat until cancelled; a failed beat (a storage hiccup) is logged, never the end of it."""
        while True:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as exc:  # noqa: BLE001 - any storage error; the next beat may pass
                _log.warning("heartbeat of trial id %s not recorded: %s", trial_id, exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def find_duplicate(self, trial: optuna.Trial, h: str,
                             trials: Sequence[FrozenTrial]) -> FrozenTrial | dict[str, Any] | None:
        """A finished trial (or the baseline) with the same config; waits for a running twin.

        ``trials`` is a snapshot read after this trial's hash was written. A running twin is one
        that already reserved its budget, or one with a smaller number (two workers that drew the
        same config at the same instant: the older trial runs it, the newer waits). While a twin
        runs in another worker, the storage is polled again until it finishes (or its heartbeat
        goes stale and it is failed)."""
        deadline = time.monotonic() + GRACE_PERIOD_S * 2
        while True:
            running_twin = False
            for t in trials:
                if t.number == trial.number or t.user_attrs.get("config_hash") != h:
                    continue
                stopped_for_budget = str(t.user_attrs.get("stopped_early", "")).startswith("budget")
                if t.state.is_finished() and t.user_attrs.get("status") in _WITH_METRICS \
                        and not stopped_for_budget:  # a budget stop says nothing about quality
                    return t
                if t.state == TrialState.RUNNING and ("reserved" in t.user_attrs or t.number < trial.number):
                    running_twin = True
            baseline = self.baseline()
            if baseline and baseline["config_hash"] == h:
                return dict(baseline)
            if not running_twin or time.monotonic() > deadline:
                return None
            await asyncio.sleep(_DUP_POLL_S)
            settle_dead_trials(self.study, self.storage)  # a twin whose worker died: now, not at its grace
            trials = self.trials()

    def reuse(self, trial: optuna.Trial, config: MoAConfig, source: FrozenTrial | dict[str, Any]) -> TrialRecord:
        if isinstance(source, dict):
            metrics = TrialMetrics.from_dict(source["metrics"])
            status, origin, why = "complete", "baseline", None
        else:
            metrics = trial_metrics(source)
            assert metrics is not None  # find_duplicate returns trials with metrics only
            origin = source.user_attrs.get("duplicate_of", source.number)
            status = source.user_attrs["status"]
            status = source.user_attrs.get("reused_status", status) if status == "duplicate" else status
            why = source.user_attrs.get("stopped_early")
        return self.finish(trial, "duplicate", config=config, metrics=metrics, duplicate_of=origin,
                           reused_status=status, stopped_early=why, paid=False)

    async def evaluate(self, trial: optuna.Trial, config: MoAConfig) -> tuple[TrialMetrics, str, str | None]:
        """Run the fidelity looks; return metrics, status and the early-stop reason if any.

        With multi-fidelity on, the items run in stages (``stage_ends``: doubling from
        ``SCREEN_START`` to first_items, then every first_items // 2), in the study's seeded order
        (``staged_order``). After each stage but the last the certain rule is checked, and at the
        looks (first_items, then doubling) the statistical rule too, at the per-look confidence
        ``look_confidence`` (see ``fidelity``); the rest of the items are reserved from the
        budget at the measured cost per item. A study whose quality is not the mean of its items
        (the LC win rate) runs every item at once."""
        f = self.spec.fidelity
        n = trial.number
        if not f.enabled or len(self.items) <= f.first_items or not self._item_mean:
            return await self.evaluator.evaluate(config, self.items, trial_number=n), "complete", None
        looks = fidelity_looks(f.first_items, len(self.items))
        conf = look_confidence(f.confidence, len(looks))
        done: TrialMetrics | None = None
        start = 0
        for end in stage_ends(f.first_items, len(self.items)):
            part = await self.evaluator.evaluate(config, self._staged[start:end], trial_number=n)
            done = part if done is None else merge_metrics(done, part)
            start = end
            # before first_items no rule compares with other trials: spare the storage read
            trials = self.trials() if end >= f.first_items else []
            why = certain_stop_reason(done, len(self.items) - end, n, self.spec, self.target(), trials)
            if why is None and end in looks:
                why = early_stop_reason(done, n, self.spec, self.target(), trials, confidence=conf)
            if why is not None:
                return done, "stopped_early", why
            why = self.rest_over_budget(trial, done, len(self.items) - end)
            if why is not None:
                return done, "stopped_early", why
        assert done is not None
        rest = await self.evaluator.evaluate(config, self._staged[start:], trial_number=n)
        return merge_metrics(done, rest), "complete", None

    def rest_over_budget(self, trial: optuna.Trial, done: TrialMetrics, n_rest: int) -> str | None:
        """Reserve the remaining ``n_rest`` items at the measured cost per item; why they do
        not fit in the budget, or None."""
        rest_usd = done.cost_usd_per_item * n_rest
        rest_calls = int(math.ceil(done.calls / max(1, done.n_items) * n_rest))
        self.set_attrs(trial, {"reserved": [done.paid_usd + rest_usd, done.paid_calls + rest_calls]})
        b = self.spec.budget
        spent_usd, spent_calls = self.spent(trial.number, pending=(done.paid_usd, done.paid_calls))
        if b.usd is not None and spent_usd + rest_usd > b.usd:
            return f"budget: the remaining {n_rest} items would cost ~${rest_usd:.4f}, over the budget"
        if b.calls is not None and spent_calls + rest_calls > b.calls:
            return f"budget: the remaining items need ~{rest_calls} calls, over the budget"
        return None

    # -- writing --

    def set_attrs(self, trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)

    def finish(self, trial: optuna.Trial, status: str, *, config: MoAConfig | None = None,
               metrics: TrialMetrics | None = None, paid: bool = True, **notes: Any) -> TrialRecord:
        """Record and ``tell``; a trial another worker already failed (its heartbeat looked
        stale, e.g. this process was suspended) is left as it is, with one warning: its calls are
        in the call store, so the config costs nothing when it is tried again."""
        try:
            return self._finish(trial, status, config=config, metrics=metrics, paid=paid, **notes)
        except optuna.exceptions.UpdateFinishedTrialError:
            _log.warning("trial %d was failed by another worker meanwhile (stale heartbeat); "
                         "its result is not recorded", trial.number)
            record = _record(next(t for t in self.trials() if t.number == trial.number))
            self.report(record)
            return record

    def _finish(self, trial: optuna.Trial, status: str, *, config: MoAConfig | None = None,
                metrics: TrialMetrics | None = None, paid: bool = True, **notes: Any) -> TrialRecord:
        attrs: dict[str, Any] = {"status": status}  # "reserved" only counts while RUNNING
        attrs.update({k: v for k, v in notes.items() if v is not None})
        state = TrialState.FAIL if status in ("failed", "interrupted") else TrialState.PRUNED
        values = None
        constraint = None
        if metrics is not None:
            attrs.update(metric_attrs(metrics))
            if config is not None:
                attrs["price_table"] = self.price_table(config)
            self.storage.set_trial_system_attr(trial._trial_id, ITEMS_KEY, item_attrs(metrics))
            attrs.update(paid_usd=metrics.paid_usd if paid else 0.0, paid_calls=metrics.paid_calls if paid else 0)
            target = self.target()
            if self.spec.objectives.mode == "constrained" and target is not None:
                lcb = mean_bound(metrics.item_values.values(), self.spec.objectives.target_confidence,
                                 upper=False)
                if math.isfinite(lcb):
                    constraint = target - lcb
                    attrs["quality_lcb"] = lcb
            # A repeat of a trial is PRUNED (Optuna's state for "not a new result"), so one config
            # is one entry of best_trials; a repeat of the baseline (not a trial) is its first.
            full = status == "complete" or (status == "duplicate" and notes.get("reused_status") == "complete"
                                            and notes.get("duplicate_of") == "baseline")
            values = _objective_values(self.spec.objectives.objective_names, metrics)
            if full and all(math.isfinite(v) for v in values):
                state = TrialState.COMPLETE
            elif full:
                attrs["status"] = "failed"
                attrs["error"] = "no item could be scored (non-finite objective values)"
                state = TrialState.FAIL
        self.set_attrs(trial, attrs)
        if constraint is not None:
            trial.set_constraint("quality_target", constraint)
        try:
            frozen = self.study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
        except RuntimeError as exc:  # GridSampler calls study.stop() when the grid is exhausted
            if "Study.stop" not in str(exc):
                raise
            frozen = next(t for t in self.trials() if t.number == trial.number)
        record = _record(frozen)
        self.report(record)
        return record

    def price_table(self, config: MoAConfig) -> str:
        """The ``price_table`` attribute of a trial of ``config``: recorded per trial, since a
        resumed study may run on a catalog whose prices have changed meanwhile. The catalog is
        read once per run, at the first measured trial, not per trial."""
        if self._catalog is None:
            self._catalog = self.spec.load_catalog()
        return price_table(self._catalog, config.models)

    def report(self, record: TrialRecord) -> None:
        if self.on_trial is None:
            return
        trials = self.trials()
        usd, calls = self.spent(trials=trials)
        b = self.spec.budget
        self.on_trial(TrialEvent(record, usd, calls, sum(1 for t in trials if t.state.is_finished() and _counted(t)),
                                 b.usd, b.calls, b.trials))


def settle_dead_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Fail the trials of workers that are gone: by stale heartbeat (any host, Optuna's rule)
    and by dead pid (this host, at once: ``fail_orphans``)."""
    with _quiet():
        optuna.storages.fail_stale_trials(study)
    fail_orphans(study, storage)


def fail_orphans(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[int]:
    """Fail the RUNNING trials whose worker process on this host is gone, and queue their
    configs again at once; return their numbers.

    A worker killed with -9 leaves its trial RUNNING. Optuna fails it only once its heartbeat is
    older than the grace period, and never when it was killed before its first heartbeat; so
    trials are stamped with their worker (``storage.worker_id``), and a dead pid settles it now.
    Setting the state is atomic, so of several processes that find one orphan, one re-queues it."""
    failed = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker is None:  # killed between ask and the stamp: no worker, no heartbeat either
            started = t.datetime_start or now
            if (now - started).total_seconds() < GRACE_PERIOD_S:
                continue
            worker = "unknown (killed before its first heartbeat)"
        elif not worker_is_gone(worker):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
            storage.set_trial_user_attr(t._trial_id, "error", f"its worker {worker} is gone (killed)")
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process settled it first
        if t.params:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        failed.append(t.number)
    return failed


async def run_study_async(spec: StudySpec, evaluator: Evaluator, item_ids: Sequence[str], *,
                          on_trial: Callable[[TrialEvent], None] | None = None, worker: int = 0,
                          cost_estimate: CostEstimate | None = None) -> StudyResult:
    """Run (or resume) the study until a budget is reached; see the module docstring.

    ``worker`` distinguishes parallel processes sharing one storage (it varies the sampler's
    seed). ``cost_estimate`` defaults to ``price_estimate`` of the study's catalog.
    """
    if cost_estimate is None:
        cost_estimate = price_estimate(spec.load_catalog())
    storage = open_storage(spec.storage, source=spec.source)
    study = await prepare_study_async(spec, evaluator, item_ids, storage=storage, cost_estimate=cost_estimate)
    sampler = build_sampler(spec, seed=spec.seed, cost_estimate=cost_estimate, worker=worker)
    study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler)
    loop = _Loop(spec, evaluator, list(item_ids), study, storage, cost_estimate, on_trial,
                 indexed=spec.sampler.name == "grid")
    stop_reason = ""
    while not stop_reason:
        settle_dead_trials(study, storage)
        try:
            await loop.run_one()
        except _Stop as stop:
            stop_reason = str(stop)
    result = load_result(spec.storage, spec.name)
    return _with_reason(result, stop_reason)


def run_study(spec: StudySpec, evaluator: Evaluator, item_ids: Sequence[str], *,
              on_trial: Callable[[TrialEvent], None] | None = None, worker: int = 0,
              cost_estimate: CostEstimate | None = None) -> StudyResult:
    """Synchronous ``run_study_async``: one event loop for the whole study, so an evaluator's
    async clients (bound to a loop) live as long as the study."""
    return asyncio.run(run_study_async(spec, evaluator, item_ids, on_trial=on_trial, worker=worker,
                                       cost_estimate=cost_estimate))


def _with_reason(result: StudyResult, reason: str) -> StudyResult:
    return replace(result, stop_reason=reason)

