"""The study loop: Optuna asks for configs, an ``Evaluator`` measures them, budgets bound the spend.

The search knows nothing of HTTP, providers or scorers: it sees an ``Evaluator`` that turns a
``MoAConfig`` and item ids into ``TrialMetrics``. Everything a study learns is written to the
Optuna storage (trial values, constraints, and user attributes), so a study can be resumed,
shared by parallel workers, and reported on (``load_result``) without any other state.

Trial bookkeeping (user attributes, all JSON):
  ``config`` / ``config_hash`` / ``summary``  what was tried;
  ``status``   complete | stopped_early | duplicate | skipped | failed | interrupted;
  ``metrics``  ``TrialMetrics.to_dict()`` (quality with CI and n items, $ per item split by role
               and model, tokens, latency p50/p95, calls vs cached, paid $, simulated flag);
  ``paid_usd`` / ``paid_calls``  what this trial actually spent (0 for a duplicate);
  ``reserved``  [usd, calls]: the estimate held while it runs (budgets shared by workers);
  ``duplicate_of``, ``stopped_early``, ``skipped``, ``error``  why a trial is not a plain one.

Samplers are Optuna's (``build_sampler``), plus ``cheapest-first`` for constrained mode
(``cost_order``: configs from the cheapest estimate up, until one meets the target).

Multi-fidelity rule (ours: Optuna's pruners do not handle multi-objective studies). With
``[fidelity] enabled`` and more items than ``first_items``, a trial first runs on the first
``first_items`` items only, then stops early when, at one-sided confidence ``c``
(``[fidelity] confidence``, Student-t bounds):

* *dominated*: some fully evaluated config R is no worse on every other objective (cost per item
  and/or latency p50, as measured on the subset) and the upper bound of the paired mean quality
  difference (this - R) over the shared subset items is below 0; in constrained mode R must
  also be feasible and only cost counts;
* *below target* (constrained mode): the upper bound of this config's subset quality is below
  the target.

Otherwise it evaluates the remaining items only and merges both parts. A stopped trial is told
to Optuna as PRUNED (so it never enters ``study.best_trials``), its subset metrics kept in its
user attributes. Pairing against the same items is what makes 20 items enough to call a
config "clearly" worse; the comparison with several fully evaluated configs is not corrected
for multiplicity, which makes the rule somewhat more eager at low ``c``.

Budgets. Spend is read from the storage (sum of finished trials' ``paid_usd``/``paid_calls``,
the baseline's, plus the reservations of trials other workers are running), so it survives
resumes and is shared by workers. A trial starts only if its estimate (``cost_estimate`` of the
config, or the highest observed $ per call times the config's calls, whichever is larger) fits in
what is left; the second fidelity stage is checked again with the measured per-item cost. Two
workers that check at the same instant can each start one trial; the overshoot is bounded by one
trial's estimate per extra worker.

The trial budget counts *evaluations* (complete, stopped early, failed): duplicates and
budget-skipped trials are recorded but free, because the space maps several parameter vectors
to one config and samplers revisit good regions, so counting them would spend the budget on
nothing. It is exact across workers: a trial runs only if fewer than ``budget.trials`` counted
trials have a smaller number (numbers are assigned atomically by the storage; a running trial of
another worker counts until it turns out to be free, and that worker then asks again). A sampler
that only proposes evaluated configs for ``max(30, budget.trials)`` trials in a row has
converged, and the study stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from scipy import stats as sstats

from .catalog import Catalog
from .config import BUILTIN_PRESETS, MoAConfig, canonical_json
from .cost_order import DEFAULT_SLACK, CheapestFirstSampler, CostEstimate
from .errors import ConfigError, MoASearchError
from .stats import bootstrap_ci
from .study_spec import StudySpec, check_gp_available

#: Two-sided level of the CIs this module computes when it merges fidelity stages.
CI_LEVEL = 0.95
HEARTBEAT_INTERVAL_S = 20
GRACE_PERIOD_S = 90
_BUDGET_SKIPS_BEFORE_STOP = 5
_DUP_POLL_S = 0.2


# ---- data crossing the boundary --------------------------------------------------------------

@dataclass(frozen=True)
class TrialMetrics:
    """What one evaluation of a config on some items measured.

    ``cost_usd_per_item`` is the list cost of running the config (independent of caching), and
    ``cost_by_role`` / ``cost_by_model`` split it (also per item). ``paid_usd`` is what this
    evaluation actually spent (0 when every call came from the call store). ``calls`` counts every
    LLM call the evaluation needed (judge calls included), ``cached_calls`` those served from the
    call store. ``item_values`` (per item quality) feed the statistical rules; ``item_latency_s``
    (per item critical-path latency), when given, lets merged fidelity stages keep exact
    percentiles.
    """

    quality: float
    quality_low: float
    quality_high: float
    n_items: int
    item_values: Mapping[str, float]
    cost_usd_per_item: float
    paid_usd: float
    latency_p50_s: float
    latency_p95_s: float
    calls: int
    cached_calls: int
    cost_by_role: Mapping[str, float] = field(default_factory=dict)
    cost_by_model: Mapping[str, float] = field(default_factory=dict)
    n_failed: int = 0
    simulated: bool = False
    tokens_in: int | None = None
    tokens_out: int | None = None
    item_latency_s: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("n_items", "calls", "cached_calls", "n_failed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MoASearchError(f"evaluator returned {name}={value!r}; expected an integer >= 0")
        if self.cached_calls > self.calls:
            raise MoASearchError(f"evaluator returned cached_calls={self.cached_calls} > calls={self.calls}")
        for name in ("cost_usd_per_item", "paid_usd"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise MoASearchError(f"evaluator returned {name}={value!r}; expected a number >= 0")
        object.__setattr__(self, "item_values", {str(k): float(v) for k, v in self.item_values.items()})
        object.__setattr__(self, "item_latency_s", {str(k): float(v) for k, v in self.item_latency_s.items()})
        object.__setattr__(self, "cost_by_role", dict(self.cost_by_role))
        object.__setattr__(self, "cost_by_model", dict(self.cost_by_model))

    @property
    def paid_calls(self) -> int:
        return self.calls - self.cached_calls

    def to_dict(self) -> dict[str, Any]:
        return {
            "quality": self.quality, "quality_low": self.quality_low, "quality_high": self.quality_high,
            "n_items": self.n_items, "item_values": dict(self.item_values),
            "cost_usd_per_item": self.cost_usd_per_item, "paid_usd": self.paid_usd,
            "latency_p50_s": self.latency_p50_s, "latency_p95_s": self.latency_p95_s,
            "calls": self.calls, "cached_calls": self.cached_calls,
            "cost_by_role": dict(self.cost_by_role), "cost_by_model": dict(self.cost_by_model),
            "n_failed": self.n_failed, "simulated": self.simulated,
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
            "item_latency_s": dict(self.item_latency_s),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialMetrics":
        return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})


class Evaluator(Protocol):
    """Measures a config on items. Implementations own providers, call store and scorer."""

    async def evaluate(self, config: MoAConfig, item_ids: Sequence[str], *,
                       trial_number: int) -> TrialMetrics: ...


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the results see it. ``metrics`` is None for skipped or failed trials."""

    number: int
    status: str
    config: MoAConfig | None
    metrics: TrialMetrics | None
    duplicate_of: int | str | None = None  # a trial number, or "baseline"
    note: str = ""
    constraint: float | None = None  # target - quality lower bound (constrained mode; <= 0 feasible)
    full_fidelity: bool = False  # measured on every item (Optuna state COMPLETE)

    @property
    def counted(self) -> bool:
        """Was it an evaluation, one unit of the trial budget (not a free repeat or a skip)?"""
        return self.status in _COUNTED


@dataclass(frozen=True)
class TrialEvent:
    """What ``on_trial`` receives after every trial: the trial and the study's spend so far."""

    record: TrialRecord
    spent_usd: float
    spent_calls: int
    trials_done: int
    budget_usd: float | None
    budget_calls: int | None
    budget_trials: int


@dataclass(frozen=True)
class TargetResult:
    """Answer to "cheapest config with quality >= target at this confidence"."""

    target: float
    confidence: float
    met: bool
    record: TrialRecord | None  # the cheapest config meeting the target
    achieved_confidence: float | None  # P(true quality >= target) for that config
    best: TrialRecord | None  # when not met: the highest-quality config found
    message: str


@dataclass(frozen=True)
class StudyResult:
    study_name: str
    storage_url: str
    mode: str
    objective_names: tuple[str, ...]
    directions: tuple[str, ...]
    trials: tuple[TrialRecord, ...]
    pareto_front: tuple[TrialRecord, ...]
    spent_usd: float
    spent_calls: int
    target: float | None
    target_confidence: float
    baseline: TrialRecord | None
    is_simulated: bool
    stop_reason: str = ""

    @property
    def evaluated(self) -> tuple[TrialRecord, ...]:
        """Trials with full-fidelity metrics, one per distinct config (first occurrence)."""
        seen: set[str] = set()
        out = []
        for r in self.trials:
            if r.full_fidelity and r.config is not None and r.config.config_hash not in seen:
                seen.add(r.config.config_hash)
                out.append(r)
        return tuple(out)

    def cheapest_meeting_target(self, target: float | None = None,
                                confidence: float | None = None) -> TargetResult:
        """The cheapest fully evaluated config whose quality is >= ``target`` with ``confidence``.

        Confidence is one-sided (Student-t on the per-item values): 0.5 means "mean >= target".
        When no config qualifies, ``met`` is False and ``best`` is the highest-quality config.
        """
        target = self.target if target is None else target
        confidence = self.target_confidence if confidence is None else confidence
        if target is None:
            raise ConfigError("no target: pass one or set [objectives] target in the study file",
                              field="objectives.target")
        candidates = [r for r in self.evaluated if r.metrics is not None]
        scored = [(r, confidence_at_least(r.metrics.item_values.values(), target)) for r in candidates]  # type: ignore[union-attr]
        meeting = [(r, p) for r, p in scored if p >= confidence]
        if meeting:
            r, p = min(meeting, key=lambda rp: (rp[0].metrics.cost_usd_per_item, rp[0].number))  # type: ignore[union-attr]
            return TargetResult(target, confidence, True, r, p, None,
                                f"trial {r.number} ({r.config.summary() if r.config else '?'}) meets "
                                f"{target} with confidence {p:.3f} at ${r.metrics.cost_usd_per_item:.6f}/item")  # type: ignore[union-attr]
        best = max(candidates, key=lambda r: (r.metrics.quality, -r.metrics.cost_usd_per_item),  # type: ignore[union-attr]
                   default=None)
        msg = f"no config meets quality >= {target} with confidence {confidence}"
        if best is not None and best.metrics is not None:
            msg += f"; the best found is trial {best.number} with quality {best.metrics.quality:.4g}"
        return TargetResult(target, confidence, False, None, None, best, msg)


# ---- statistics used by the rules ----------------------------------------------------------------

def mean_bound(values: Iterable[float], confidence: float, *, upper: bool) -> float:
    """One-sided Student-t bound of the mean; with fewer than 2 values, the mean itself."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean
    half = float(sstats.t.ppf(confidence, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean + half if upper else mean - half


def confidence_at_least(values: Iterable[float], target: float) -> float:
    """P(true mean >= target) under a one-sided t model of the per-item values."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return 0.0
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    if sd == 0.0 or x.size < 2:
        return 1.0 if mean >= target else 0.0
    return float(sstats.t.cdf((mean - target) / (sd / math.sqrt(x.size)), x.size - 1))


def merge_metrics(a: TrialMetrics, b: TrialMetrics) -> TrialMetrics:
    """Combine two evaluations of one config on disjoint items (the two fidelity stages).

    Quality and its CI are recomputed from the per-item values with the same bootstrap interval
    the evaluator reports (so it stays inside the values' range, unlike a t interval); latency percentiles are exact when both parts carry ``item_latency_s`` and an
    item-weighted average otherwise.
    """
    values = {**a.item_values, **b.item_values}
    x = np.asarray(list(values.values()), dtype=float)
    n = a.n_items + b.n_items
    wa, wb = (a.n_items / n, b.n_items / n) if n else (0.5, 0.5)
    lat = {**a.item_latency_s, **b.item_latency_s}
    if a.item_latency_s and b.item_latency_s:
        p50, p95 = (float(np.percentile(list(lat.values()), q)) for q in (50, 95))
    else:
        p50 = wa * a.latency_p50_s + wb * b.latency_p50_s
        p95 = max(a.latency_p95_s, b.latency_p95_s)
    ci = bootstrap_ci(x, CI_LEVEL) if x.size else None

    def mix(ma: Mapping[str, float], mb: Mapping[str, float]) -> dict[str, float]:
        return {k: wa * ma.get(k, 0.0) + wb * mb.get(k, 0.0) for k in sorted(set(ma) | set(mb))}

    def add(x1: int | None, x2: int | None) -> int | None:
        return None if x1 is None or x2 is None else x1 + x2

    return TrialMetrics(
        quality=float(x.mean()) if x.size else math.nan,
        quality_low=ci.low if ci else math.nan, quality_high=ci.high if ci else math.nan,
        n_items=n, item_values=values,
        cost_usd_per_item=wa * a.cost_usd_per_item + wb * b.cost_usd_per_item,
        paid_usd=a.paid_usd + b.paid_usd, latency_p50_s=p50, latency_p95_s=p95,
        calls=a.calls + b.calls, cached_calls=a.cached_calls + b.cached_calls,
        cost_by_role=mix(a.cost_by_role, b.cost_by_role), cost_by_model=mix(a.cost_by_model, b.cost_by_model),
        n_failed=a.n_failed + b.n_failed, simulated=a.simulated or b.simulated,
        tokens_in=add(a.tokens_in, b.tokens_in), tokens_out=add(a.tokens_out, b.tokens_out),
        item_latency_s=lat,
    )


# ---- cost estimates ----------------------------------------------------------------------------

def agent_calls_per_item(config: MoAConfig) -> int:
    return sum(len(layer) for layer in config.proposer_layers) + 1


def price_estimate(catalog: Catalog, *, prompt_tokens: int = 300,
                   default_completion_tokens: int = 500) -> CostEstimate:
    """A list-price estimate of $ per item from the catalog, before anything is measured.

    Each agent writes its model's typical answer (the sim profile's verbosity, else
    ``default_completion_tokens``, capped by max_tokens); each later layer reads the prompt plus
    every answer of the layer before. Judge calls are not included: the observed per-call cost
    takes over as soon as trials have run.
    """
    def out_tokens(model: str, max_tokens: int) -> int:
        info = catalog.get(model)
        return min(info.sim.verbosity if info.sim else default_completion_tokens, max_tokens)

    def estimate(config: MoAConfig) -> float:
        total, previous = 0.0, 0
        for layer in config.proposer_layers:
            written = 0
            for agent in layer:
                out = out_tokens(agent.model, agent.max_tokens)
                total += catalog.get(agent.model).cost(prompt_tokens + previous, out)
                written += out
            previous = written
        agg = config.aggregator
        total += catalog.get(agg.model).cost(prompt_tokens + previous, out_tokens(agg.model, agg.max_tokens))
        return total

    return estimate


# ---- Optuna plumbing -----------------------------------------------------------------------------

def open_storage(url: str, *, source: str | None = None, create: bool = True) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats (so crashed workers' trials are failed, not left running)."""
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not create and not db.exists():
            raise ConfigError(f"cannot open Optuna storage {url!r}: no such file", source=source,
                              field="study.storage")
        if create:
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot open Optuna storage {url!r}: {exc.strerror or exc}",
                                  source=source, field="study.storage") from None
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                              heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                              grace_period=GRACE_PERIOD_S)
    except Exception as exc:  # sqlalchemy/optuna raise many kinds for a bad URL
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot open Optuna storage {url!r}: {detail}", source=source,
                          field="study.storage") from None


def nsga2_population(trials: int) -> int:
    """NSGA-II's default population: a quarter of the trial budget, within 4..20."""
    return max(4, min(20, trials // 4))


def build_sampler(spec: StudySpec, *, seed: int, cost_estimate: CostEstimate | None = None,
                  worker: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler named in ``[sampler]``, seeded. Defaults suit studies of tens of trials.
    ``cost_estimate`` (default: the catalog's ``price_estimate``) orders ``cheapest-first``, and
    ``worker`` tells it which of the next cheapest configs this process takes."""
    name, o = spec.sampler.name, dict(spec.sampler.options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(
                seed=seed, population_size=o.get("population_size", nsga2_population(spec.budget.trials)),
                mutation_prob=o.get("mutation_prob"), crossover_prob=o.get("crossover_prob", 0.9),
                swapping_prob=o.get("swapping_prob", 0.5))
        if name == "tpe":
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=o.get("multivariate", True), group=o.get("group", True),
                constant_liar=o.get("constant_liar", True),
                n_startup_trials=o.get("n_startup_trials", 10), n_ei_candidates=o.get("n_ei_candidates", 24))
        if name == "gp":
            check_gp_available(source=spec.source)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=o.get("n_startup_trials", 10),
                                             deterministic_objective=o.get("deterministic_objective", False))
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "cheapest-first":
            return CheapestFirstSampler(spec.space, cost_estimate or price_estimate(spec.load_catalog()),
                                        slack=float(o.get("slack", DEFAULT_SLACK)), worker=worker, seed=seed)
        if name == "grid":
            return optuna.samplers.GridSampler(spec.space.grid_search_space(), seed=seed)
    raise ConfigError(f"unknown sampler {name!r}", source=spec.source, field="sampler.name")


def open_study(spec: StudySpec, *, sampler: optuna.samplers.BaseSampler | None = None,
               storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create the study or load it (resume); refuse one whose objectives differ."""
    storage = storage if storage is not None else open_storage(spec.storage, source=spec.source)
    directions = list(spec.objectives.directions)
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name, directions=directions,
                                    sampler=sampler, load_if_exists=True)
    except Exception as exc:
        raise ConfigError(f"cannot open study {spec.name!r} in {spec.storage!r}: {exc}",
                          source=spec.source, field="study.storage") from None
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError(f"study {spec.name!r} already exists in {spec.storage} with directions {have}, "
                          f"but the file asks for {directions}; use a new study name",
                          source=spec.source, field="objectives")
    return study


def _items_digest(item_ids: Sequence[str]) -> str:
    return hashlib.sha256(canonical_json(list(item_ids)).encode()).hexdigest()[:16]


async def prepare_study_async(spec: StudySpec, evaluator: Evaluator, item_ids: Sequence[str], *,
                              storage: optuna.storages.BaseStorage | None = None,
                              cost_estimate: CostEstimate | None = None) -> optuna.Study:
    """Create the study once: record its settings, enqueue known configs, measure the baseline.

    Idempotent: a study that already has these is left as it is. Run it once before starting
    parallel workers so they do not each enqueue presets or measure the baseline. The baseline
    is evaluated outside Optuna (it need not be in the space; ``trial_number=-1``); its spend
    counts towards the budget, and a trial that suggests the same config reuses its metrics.
    """
    if not item_ids:
        raise ConfigError("no items to evaluate on", source=spec.source, field="data")
    if len(set(item_ids)) != len(item_ids):
        raise ConfigError("item ids must be unique", source=spec.source, field="data")
    study = open_study(spec, storage=storage)
    attrs = study.user_attrs
    digest = _items_digest(item_ids)
    if "items_digest" in attrs and attrs["items_digest"] != digest:
        raise ConfigError(f"study {spec.name!r} was run on other items ({attrs.get('n_items')} items); "
                          f"resume it with the same data settings or use a new study name",
                          source=spec.source, field="data")
    if "items_digest" not in attrs:
        study.set_user_attr("items_digest", digest)
        study.set_user_attr("n_items", len(item_ids))
        study.set_user_attr("objectives", {
            "mode": spec.objectives.mode, "names": list(spec.objectives.objective_names),
            "target": spec.objectives.target.value if spec.objectives.target else None,
            "target_confidence": spec.objectives.target_confidence})
    if not attrs.get("initialized") and not study.get_trials(deepcopy=False):
        _enqueue_known(study, spec)
        study.set_user_attr("initialized", True)
    target = spec.objectives.target
    if target is not None and target.baseline_config is not None and "baseline" not in study.user_attrs:
        config = target.baseline_config
        budget = spec.budget.usd
        if budget is not None:
            estimate = (cost_estimate or price_estimate(spec.load_catalog()))(config) * len(item_ids)
            if estimate > budget:
                raise ConfigError(f"measuring the baseline {target.baseline!r} on {len(item_ids)} items "
                                  f"is estimated at ${estimate:.2f}, more than the whole budget",
                                  source=spec.source, field="budget.usd")
        metrics = await evaluator.evaluate(config, list(item_ids), trial_number=-1)
        if not math.isfinite(metrics.quality):
            raise MoASearchError(f"the baseline {target.baseline!r} could not be scored on any item; "
                                 f"no quality target can be derived from it")
        study.set_user_attr("baseline", {"name": target.baseline, "config": config.to_dict(),
                                         "config_hash": config.config_hash, "metrics": metrics.to_dict()})
        objectives = dict(study.user_attrs["objectives"])
        objectives["target"] = metrics.quality
        study.set_user_attr("objectives", objectives)
    return study


def prepare_study(spec: StudySpec, evaluator: Evaluator, item_ids: Sequence[str], *,
                  cost_estimate: CostEstimate | None = None) -> None:
    """Synchronous ``prepare_study_async`` (the CLI calls it before forking workers)."""
    asyncio.run(prepare_study_async(spec, evaluator, item_ids, cost_estimate=cost_estimate))


def _enqueue_known(study: optuna.Study, spec: StudySpec) -> None:
    """Put the paper's presets, then each single aggregator model, first in the queue.

    Only those the space can express are enqueued (with the space's sampling parameters), at
    most half the trial budget so the sampler still gets its share; the others are listed with
    the reason in the study attribute ``enqueue_skipped``.
    """
    if spec.sampler.name in ("grid", "cheapest-first"):  # they visit configs in their own order
        return
    space = spec.space
    candidates = [(f"preset {name}", space.adapt(p.config)) for name, p in BUILTIN_PRESETS.items()]
    candidates += [(f"single {m}", MoAConfig.single(m, temperature=space.temperatures[0],
                                                     max_tokens=space.max_tokens)) for m in space.aggregators]
    skipped: dict[str, str] = {}
    cap = max(1, spec.budget.trials // 2)
    queued: set[str] = set()
    for label, config in candidates:
        reason = space.explain_outside(config)
        if reason is not None:
            skipped[label] = reason
            continue
        if config.config_hash in queued:
            continue
        if len(queued) >= cap:
            skipped[label] = f"more known configs than half the trial budget ({cap})"
            continue
        queued.add(config.config_hash)
        study.enqueue_trial(space.config_to_params(config), user_attrs={"enqueued_as": label},
                            skip_if_exists=True)
    study.set_user_attr("enqueue_skipped", skipped)


# ---- reading trials ------------------------------------------------------------------------------

_COUNTED = {"complete", "stopped_early", "failed"}
_WITH_METRICS = {"complete", "stopped_early", "duplicate"}


def _counted(t: FrozenTrial) -> bool:
    """Does this trial use up one unit of the trial budget?"""
    status = t.user_attrs.get("status")
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        return status not in ("skipped", "interrupted", "duplicate")
    return status in _COUNTED


def _spent(trials: Sequence[FrozenTrial], baseline: Mapping[str, Any] | None,
           exclude: int | None = None) -> tuple[float, int]:
    """Spend recorded in the storage; running trials (other workers) count their reservation."""
    usd = 0.0
    calls = 0
    for t in trials:
        if t.number == exclude:
            continue
        if t.state == TrialState.RUNNING:
            r_usd, r_calls = t.user_attrs.get("reserved", (0.0, 0))
            usd += float(r_usd)
            calls += int(r_calls)
        elif t.state.is_finished():
            usd += float(t.user_attrs.get("paid_usd", 0.0))
            calls += int(t.user_attrs.get("paid_calls", 0))
    if baseline:
        m = baseline["metrics"]
        usd += float(m["paid_usd"])
        calls += int(m["calls"]) - int(m["cached_calls"])
    return usd, calls


def _record(t: FrozenTrial) -> TrialRecord:
    a = t.user_attrs
    status = a.get("status") or ("failed" if t.state == TrialState.FAIL else t.state.name.lower())
    config = MoAConfig.from_dict(a["config"]) if "config" in a else None
    metrics = TrialMetrics.from_dict(a["metrics"]) if "metrics" in a else None
    note = a.get("stopped_early") or a.get("skipped") or a.get("error") or ""
    constraint = t.constraints.get("quality_target")
    return TrialRecord(t.number, status, config, metrics, a.get("duplicate_of"), note, constraint,
                       full_fidelity=t.state == TrialState.COMPLETE and metrics is not None)


def _objective_values(names: Sequence[str], m: TrialMetrics) -> list[float]:
    pick = {"quality": m.quality, "cost": m.cost_usd_per_item, "latency": m.latency_p50_s}
    return [float(pick[n]) for n in names]


# ---- the loop ------------------------------------------------------------------------------------

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

    def __post_init__(self) -> None:
        # Both are fixed once prepare_study has run, so read them once, not per trial.
        attrs = self.study.user_attrs
        self._baseline = attrs.get("baseline")
        self._target = attrs.get("objectives", {}).get("target")

    # -- storage views --

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def baseline(self) -> Mapping[str, Any] | None:
        return self._baseline

    def target(self) -> float | None:
        return self._target

    def spent(self, exclude: int | None = None, trials: Sequence[FrozenTrial] | None = None) -> tuple[float, int]:
        return _spent(self.trials() if trials is None else trials, self._baseline, exclude)

    # -- estimates --

    def estimate(self, config: MoAConfig, n_items: int, trials: Sequence[FrozenTrial]) -> tuple[float, int]:
        """Conservative list-price $ and calls for ``n_items`` items of ``config``."""
        per_call, overhead = 0.0, 0.0
        for t in trials:
            if t.user_attrs.get("status") != "complete" or "metrics" not in t.user_attrs:
                continue
            m = t.user_attrs["metrics"]
            if not m["n_items"] or not m["calls"]:
                continue
            calls_per_item = m["calls"] / m["n_items"]
            per_call = max(per_call, m["cost_usd_per_item"] / calls_per_item)
            agent_calls = agent_calls_per_item(MoAConfig.from_dict(t.user_attrs["config"]))
            overhead = max(overhead, calls_per_item - agent_calls)
        calls_per_item = agent_calls_per_item(config) + overhead
        usd_per_item = per_call * calls_per_item
        if self.cost_estimate is not None:
            usd_per_item = max(usd_per_item, float(self.cost_estimate(config)))
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
        usd, calls = _spent(trials, self.baseline())
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
        trials = self.trials()
        before = sum(1 for t in trials if t.number < trial.number and _counted(t))
        if before >= self.spec.budget.trials:
            self.finish(trial, "skipped", skipped=f"trial budget reached ({self.spec.budget.trials})")
            raise _Stop(f"trial budget reached ({self.spec.budget.trials})")
        config = self.spec.space.suggest_indexed(trial) if self.indexed else self.spec.space.suggest(trial)
        h = config.config_hash
        self.set_attrs(trial, {"config": config.to_dict(), "config_hash": h, "summary": config.summary()})

        # Read again after writing the hash: a twin another worker started meanwhile is seen
        # by whichever of the two writes its hash last (see find_duplicate).
        source = await self.find_duplicate(trial, h, self.trials())
        if source is not None:
            return self.reuse(trial, config, source)

        usd, calls = self.estimate(config, len(self.items), trials)
        reason = self.over_budget(usd, calls, trial.number, trials)
        if reason is not None:
            b = self.spec.budget
            return self.finish(trial, "skipped", config=config, skipped=f"budget: {reason}",
                               budget_at_skip=[b.usd, b.calls])
        self.set_attrs(trial, {"reserved": [usd, calls]})
        # Optuna exposes no public trial id; heartbeats are keyed by it.
        beat = asyncio.create_task(self.heartbeat(trial._trial_id))
        try:
            metrics, status, why = await self.evaluate(trial, config)
        except BaseException as exc:
            interrupted = isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError))
            self.finish(trial, "interrupted" if interrupted else "failed", config=config,
                        error=f"{type(exc).__name__}: {exc}")
            if interrupted:  # retry the same config first when the study resumes
                self.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
            raise
        finally:
            beat.cancel()
        return self.finish(trial, status, config=config, metrics=metrics, stopped_early=why)

    async def heartbeat(self, trial_id: int) -> None:
        while True:
            self.storage.record_heartbeat(trial_id)
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
            with _quiet():
                optuna.storages.fail_stale_trials(self.study)
            trials = self.trials()

    def reuse(self, trial: optuna.Trial, config: MoAConfig, source: FrozenTrial | dict[str, Any]) -> TrialRecord:
        if isinstance(source, dict):
            metrics = TrialMetrics.from_dict(source["metrics"])
            status, origin, why = "complete", "baseline", None
        else:
            metrics = TrialMetrics.from_dict(source.user_attrs["metrics"])
            origin = source.user_attrs.get("duplicate_of", source.number)
            status = source.user_attrs["status"]
            status = source.user_attrs.get("reused_status", status) if status == "duplicate" else status
            why = source.user_attrs.get("stopped_early")
        return self.finish(trial, "duplicate", config=config, metrics=metrics, duplicate_of=origin,
                           reused_status=status, stopped_early=why, paid=False)

    async def evaluate(self, trial: optuna.Trial, config: MoAConfig) -> tuple[TrialMetrics, str, str | None]:
        """Run the fidelity stages; return metrics, status and the early-stop reason if any."""
        f = self.spec.fidelity
        n = trial.number
        if not f.enabled or len(self.items) <= f.first_items:
            return await self.evaluator.evaluate(config, self.items, trial_number=n), "complete", None
        first_ids, rest_ids = self.items[:f.first_items], self.items[f.first_items:]
        first = await self.evaluator.evaluate(config, first_ids, trial_number=n)
        why = self.stop_rule(first, trial.number)
        if why is not None:
            return first, "stopped_early", why
        rest_usd = first.cost_usd_per_item * len(rest_ids)
        rest_calls = int(math.ceil(first.calls / max(1, first.n_items) * len(rest_ids)))
        self.set_attrs(trial, {"reserved": [first.paid_usd + rest_usd, first.paid_calls + rest_calls]})
        b = self.spec.budget
        spent_usd, spent_calls = self.spent(trial.number)
        if b.usd is not None and spent_usd + first.paid_usd + rest_usd > b.usd:
            return first, "stopped_early", (f"budget: the remaining {len(rest_ids)} items would cost "
                                            f"~${rest_usd:.4f}, over the budget")
        if b.calls is not None and spent_calls + first.paid_calls + rest_calls > b.calls:
            return first, "stopped_early", f"budget: the remaining items need ~{rest_calls} calls, over the budget"
        rest = await self.evaluator.evaluate(config, rest_ids, trial_number=n)
        return merge_metrics(first, rest), "complete", None

    def stop_rule(self, first: TrialMetrics, number: int) -> str | None:
        """The early-stopping rule stated in the module docstring."""
        conf = self.spec.fidelity.confidence
        constrained = self.spec.objectives.mode == "constrained"
        target = self.target()
        if constrained and target is not None:
            ucb = mean_bound(first.item_values.values(), conf, upper=True)
            if ucb < target:
                return (f"below target: quality upper bound {ucb:.4g} < {target:.4g} on the first "
                        f"{first.n_items} items (confidence {conf})")
        others = ("cost",) if constrained else tuple(m for m in self.spec.objectives.metrics if m != "quality")
        mine = dict(zip(others, _objective_values(others, first)))
        for t in self.trials():
            if t.number == number or t.user_attrs.get("status") != "complete" or "metrics" not in t.user_attrs:
                continue
            if constrained and not all(v <= 0 for v in t.constraints.values()):
                continue
            ref = TrialMetrics.from_dict(t.user_attrs["metrics"])
            theirs = dict(zip(others, _objective_values(others, ref)))
            if any(theirs[k] > mine[k] for k in others):
                continue
            shared = [k for k in first.item_values if k in ref.item_values]
            if len(shared) < 2:
                continue
            diffs = [first.item_values[k] - ref.item_values[k] for k in shared]
            ucb = mean_bound(diffs, conf, upper=True)
            if ucb < 0:
                better = ", ".join(f"{k} {theirs[k]:.4g} <= {mine[k]:.4g}" for k in others)
                return (f"dominated by trial {t.number}: paired quality difference upper bound "
                        f"{ucb:.4g} < 0 on {len(shared)} items (confidence {conf})"
                        + (f"; {better}" if better else ""))
        return None

    # -- writing --

    def set_attrs(self, trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)

    def finish(self, trial: optuna.Trial, status: str, *, config: MoAConfig | None = None,
               metrics: TrialMetrics | None = None, paid: bool = True, **notes: Any) -> TrialRecord:
        attrs: dict[str, Any] = {"status": status}  # "reserved" only counts while RUNNING
        attrs.update({k: v for k, v in notes.items() if v is not None})
        state = TrialState.FAIL if status in ("failed", "interrupted") else TrialState.PRUNED
        values = None
        constraint = None
        if metrics is not None:
            attrs["metrics"] = metrics.to_dict()
            attrs.update(paid_usd=metrics.paid_usd if paid else 0.0, paid_calls=metrics.paid_calls if paid else 0)
            target = self.target()
            if self.spec.objectives.mode == "constrained" and target is not None:
                lcb = mean_bound(metrics.item_values.values(), self.spec.objectives.target_confidence,
                                 upper=False)
                if math.isfinite(lcb):
                    constraint = target - lcb
                    attrs["quality_lcb"] = lcb
            full = status == "complete" or (status == "duplicate" and notes.get("reused_status") == "complete")
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

    def report(self, record: TrialRecord) -> None:
        if self.on_trial is None:
            return
        trials = self.trials()
        usd, calls = _spent(trials, self.baseline())
        b = self.spec.budget
        self.on_trial(TrialEvent(record, usd, calls, sum(1 for t in trials if t.state.is_finished() and _counted(t)),
                                 b.usd, b.calls, b.trials))


def _derived_seed(spec: StudySpec, worker: int, n_existing: int) -> int:
    """Different per worker and per resume, so workers and resumed runs do not replay samples."""
    material = f"{spec.seed}|{worker}|{n_existing}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:4], "big")


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
    seed = _derived_seed(spec, worker, len(study.get_trials(deepcopy=False)))
    sampler = build_sampler(spec, seed=seed, cost_estimate=cost_estimate, worker=worker)
    study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler)
    loop = _Loop(spec, evaluator, list(item_ids), study, storage, cost_estimate, on_trial,
                 indexed=spec.sampler.name == "grid")
    stop_reason = ""
    while not stop_reason:
        with _quiet():
            optuna.storages.fail_stale_trials(study)
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


# ---- results -----------------------------------------------------------------------------------

def load_result(storage_url: str, study_name: str) -> StudyResult:
    """Everything a report needs, read back from the Optuna storage alone."""
    storage = open_storage(storage_url, create=False)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise ConfigError(f"no study {study_name!r} in {storage_url}; it holds {names}",
                          field="study.name") from None
    attrs = study.user_attrs
    objectives = attrs.get("objectives", {})
    trials = study.get_trials(deepcopy=False)
    records = tuple(_record(t) for t in trials)
    by_number = {r.number: r for r in records}
    front: list[TrialRecord] = []
    seen: set[str] = set()
    for t in sorted(study.best_trials, key=lambda t: t.number):  # Optuna's Pareto set
        r = by_number[t.number]
        key = r.config.config_hash if r.config else str(t.number)
        if key not in seen:
            seen.add(key)
            front.append(r)
    baseline = None
    if "baseline" in attrs:
        b = attrs["baseline"]
        baseline = TrialRecord(-1, "baseline", MoAConfig.from_dict(b["config"]),
                               TrialMetrics.from_dict(b["metrics"]), note=str(b.get("name", "")),
                               full_fidelity=True)
    usd, calls = _spent(trials, attrs.get("baseline"))
    simulated = any(r.metrics.simulated for r in records if r.metrics is not None) or bool(
        baseline and baseline.metrics and baseline.metrics.simulated)
    return StudyResult(
        study_name=study_name, storage_url=storage_url, mode=objectives.get("mode", "pareto"),
        objective_names=tuple(objectives.get("names", ())),
        directions=tuple(d.name.lower() for d in study.directions), trials=records,
        pareto_front=tuple(front), spent_usd=usd, spent_calls=calls, target=objectives.get("target"),
        target_confidence=float(objectives.get("target_confidence", 0.9)), baseline=baseline,
        is_simulated=simulated)
