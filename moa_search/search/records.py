"""What a study records and returns: trial metrics, trial records, the study's result.

Trial bookkeeping in the Optuna storage, laid out for optuna-dashboard: every user attribute is
flat, under 1 KB (the dashboard cuts longer ones) and, where it is a number, sortable:
  ``config``   the config's one-line summary; ``config_hash`` its identity;
  ``status``   complete | stopped_early | duplicate | skipped | failed | interrupted;
  ``quality``, ``quality_ci_low``, ``quality_ci_high`` (0-1), ``cost_usd_per_item``,
  ``latency_p50_s``, ``latency_p95_s``, ``n_items``, ``n_failed``, ``n_degraded``, ``simulated``,
  ``calls``, ``cached_calls``, ``tokens_in``, ``tokens_out``, ``cost_usd_per_item_by_role`` /
  ``_by_model``, ``first_error``: the ``TrialMetrics`` (``metric_attrs``);
  ``price_table``  the price table (source, effective date) the costs come from;
  ``paid_usd`` / ``paid_calls``  what this trial actually spent (0 for a duplicate);
  ``reserved``  [usd, calls]: the estimate held while it runs (budgets shared by workers);
  ``duplicate_of``, ``stopped_early``, ``skipped``, ``error``  why a trial is not a plain one.
Per-item data (quality and latency of each item) and the full config are kept out of the user
attributes, in the trial's system attributes ``moa_search:items`` / ``moa_search:config``: the
same storage, so every worker (on every machine of a PostgreSQL study) reads them for the
early-stopping rule, where Optuna's own samplers keep their per-trial data, and not shown by the
dashboard. The baseline likewise: a short ``baseline`` study attribute, the full one in the
study's system attribute ``moa_search:baseline``. Studies written before this layout (one nested
``metrics`` attribute, a ``config`` dict) still load: ``trial_metrics`` / ``trial_config`` read both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import MoAConfig
from ..errors import ConfigError, MoASearchError
from ..price_db import entry_table
from ..stats import confidence_at_least


@dataclass(frozen=True)
class TrialMetrics:
    """What one evaluation of a config on some items measured.

    ``cost_usd_per_item`` is the list cost of running the config (independent of caching), and
    ``cost_by_role`` / ``cost_by_model`` split it (also per item). ``paid_usd`` is what this
    evaluation actually spent (0 when every call came from the call store). ``calls`` counts every
    LLM call the evaluation needed (judge calls included), ``cached_calls`` those served from the
    call store. ``item_values`` (per item quality) feed the statistical rules; ``item_latency_s``
    (per item critical-path latency), when given, lets merged fidelity stages keep exact
    percentiles. ``n_failed`` counts items not scored because their run failed, ``n_degraded``
    items that lost an agent (failed or scored, by the study's ``[scorer] degraded`` policy;
    0 in metrics stored before it existed); ``first_error`` is the first error met, if any.
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
    n_degraded: int = 0
    first_error: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_items", "calls", "cached_calls", "n_failed", "n_degraded"):
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
            "n_degraded": self.n_degraded, "first_error": self.first_error,
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
    price_table: str = ""  # where its costs' prices came from (``price_table``); "" before it was kept

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

    def total_failure(self) -> str | None:
        """Why nothing could be scored in this study, with the first error, on one line: trials
        were evaluated and not one item of any was scored. None otherwise (no trial evaluated at
        all is a budget matter, not a failure)."""
        measured = [r for r in self.trials if r.metrics is not None and r.status != "duplicate"]
        if not measured or any(math.isfinite(r.metrics.quality) for r in measured):  # type: ignore[union-attr]
            return None
        first = next((r.metrics.first_error for r in measured if r.metrics and r.metrics.first_error),
                     None) or next((r.note for r in measured if r.note), "none recorded")
        return " ".join(f"nothing could be scored in study {self.study_name}: {len(measured)} "
                        f"trial(s) evaluated, no item scored; first error: {first}".split())

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


_COUNTED = {"complete", "stopped_early", "failed"}
_WITH_METRICS = {"complete", "stopped_early", "duplicate"}


def _counted(t: FrozenTrial) -> bool:
    """Does this trial use up one unit of the trial budget?"""
    status = t.user_attrs.get("status")
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        return status not in ("skipped", "interrupted", "duplicate")
    return status in _COUNTED


def _record(t: FrozenTrial) -> TrialRecord:
    a = t.user_attrs
    status = a.get("status") or ("failed" if t.state == TrialState.FAIL else t.state.name.lower())
    metrics = trial_metrics(t)
    note = a.get("stopped_early") or a.get("skipped") or a.get("error") or ""
    constraint = t.constraints.get("quality_target")
    return TrialRecord(t.number, status, trial_config(t), metrics, a.get("duplicate_of"), note, constraint,
                       full_fidelity=t.state == TrialState.COMPLETE and metrics is not None,
                       price_table=str(a.get("price_table", "")))


#: Trial system attributes (see the module docstring): per-item data, and the full config.
ITEMS_KEY = "moa_search:items"
CONFIG_KEY = "moa_search:config"
#: Study system attribute: the baseline's config and metrics with its per-item data.
BASELINE_KEY = "moa_search:baseline"
#: optuna-dashboard shows at most this many characters of an attribute.
MAX_ATTR_CHARS = 1024
#: The objective names ``[objectives] metrics`` stand for, with units, as the dashboard shows them;
#: each is also the ``TrialMetrics`` field that holds the value (``_objective_values``).
METRIC_NAMES = {"quality": "quality", "cost": "cost_usd_per_item", "latency": "latency_p50_s"}


def metric_attrs(m: TrialMetrics) -> dict[str, Any]:
    """The flat user attributes of ``m`` (not its per-item data: ``item_attrs``). ``paid_usd`` is
    left to the caller: a duplicate reuses metrics but pays nothing."""
    attrs = {
        "quality": m.quality, "quality_ci_low": m.quality_low, "quality_ci_high": m.quality_high,
        "cost_usd_per_item": m.cost_usd_per_item,
        "latency_p50_s": m.latency_p50_s, "latency_p95_s": m.latency_p95_s,
        "n_items": m.n_items, "n_failed": m.n_failed, "n_degraded": m.n_degraded,
        "simulated": m.simulated, "calls": m.calls, "cached_calls": m.cached_calls,
        "tokens_in": m.tokens_in, "tokens_out": m.tokens_out,
        "cost_usd_per_item_by_role": _short_map(m.cost_by_role),
        "cost_usd_per_item_by_model": _short_map(m.cost_by_model),
        "first_error": _short(m.first_error) if m.first_error else None,
    }
    return {k: v for k, v in attrs.items() if v is not None}  # a null is neither shown nor sortable


def item_attrs(m: TrialMetrics) -> dict[str, Any]:
    """The per-item data of ``m``, for the system attribute ``ITEMS_KEY``, and uncut what the
    user attributes may shorten for the dashboard (the cost splits, the first error)."""
    return {"item_values": dict(m.item_values), "item_latency_s": dict(m.item_latency_s),
            "cost_by_role": dict(m.cost_by_role), "cost_by_model": dict(m.cost_by_model),
            "first_error": m.first_error}


def trial_metrics(t: FrozenTrial) -> TrialMetrics | None:
    """The metrics a trial recorded (either layout), or None when it has none."""
    a = t.user_attrs
    if "metrics" in a:  # written before the flat layout
        return TrialMetrics.from_dict(a["metrics"])
    # Attributes are written one by one; only a finished trial has all of them (a worker may
    # read another's trial mid-write, or one failed by a stale heartbeat in the middle).
    if not t.state.is_finished() or not _METRIC_KEYS <= a.keys():
        return None
    return metrics_from_attrs(a, t.system_attrs.get(ITEMS_KEY, {}))


_METRIC_KEYS = frozenset({"quality", "quality_ci_low", "quality_ci_high", "n_items", "cost_usd_per_item",
                          "latency_p50_s", "latency_p95_s", "calls", "cached_calls", "n_failed",
                          "simulated"})


def metrics_from_attrs(a: Mapping[str, Any], items: Mapping[str, Any]) -> TrialMetrics:
    """``TrialMetrics`` from ``metric_attrs`` and ``item_attrs`` (``paid_usd`` from ``a``)."""
    return TrialMetrics(
        quality=a["quality"], quality_low=a["quality_ci_low"], quality_high=a["quality_ci_high"],
        n_items=a["n_items"], item_values=items.get("item_values", {}),
        cost_usd_per_item=a["cost_usd_per_item"], paid_usd=float(a.get("paid_usd", 0.0)),
        latency_p50_s=a["latency_p50_s"], latency_p95_s=a["latency_p95_s"],
        calls=a["calls"], cached_calls=a["cached_calls"],
        cost_by_role=items.get("cost_by_role", a.get("cost_usd_per_item_by_role") or {}),
        cost_by_model=items.get("cost_by_model", a.get("cost_usd_per_item_by_model") or {}),
        n_failed=a["n_failed"], simulated=bool(a["simulated"]), tokens_in=a.get("tokens_in"),
        tokens_out=a.get("tokens_out"), item_latency_s=items.get("item_latency_s", {}),
        n_degraded=a.get("n_degraded", 0), first_error=items.get("first_error", a.get("first_error")))


def trial_config(t: FrozenTrial) -> MoAConfig | None:
    """The config a trial ran (either layout), or None before it was drawn."""
    full = t.system_attrs.get(CONFIG_KEY)
    if full is None and isinstance(t.user_attrs.get("config"), dict):  # the earlier layout
        full = t.user_attrs["config"]
    return MoAConfig.from_dict(full) if full is not None else None


def config_attrs(config: MoAConfig) -> dict[str, Any]:
    """The user attributes naming a config: its summary (``config``) and hash."""
    return {"config": _short(config.summary()), "config_hash": config.config_hash}


def baseline_attrs(name: str, config: MoAConfig, m: TrialMetrics) -> tuple[dict[str, Any], dict[str, Any]]:
    """The baseline as (the short ``baseline`` study attribute, the full ``BASELINE_KEY`` one)."""
    short = {"name": name, "config": _short(config.summary()), "config_hash": config.config_hash,
             "quality": m.quality, "cost_usd_per_item": m.cost_usd_per_item, "paid_usd": m.paid_usd,
             "simulated": m.simulated}
    full = {"name": name, "config": config.to_dict(), "config_hash": config.config_hash,
            "metrics": m.to_dict()}
    return short, full


def read_baseline(study: optuna.Study) -> dict[str, Any] | None:
    """The baseline as ``{name, config (dict), config_hash, metrics (TrialMetrics.to_dict())}``
    (either layout), or None when the study has none."""
    legacy = study.user_attrs.get("baseline")
    if legacy is None:
        return None
    if "metrics" in legacy:
        return dict(legacy)
    # Optuna 5's Study has no public reader of its system attributes; its storage has one.
    return dict(study._storage.get_study_system_attrs(study._study_id)[BASELINE_KEY])


def price_table(catalog: Any, models: Sequence[str]) -> str:
    """Where the prices of ``models`` come from, with the date each took effect:
    ``genai-prices 0.2.3, effective 2025-06-10`` or ``typed in catalog <file>``; several joined by
    ``; `` (a config mixing tables)."""
    tables = {entry_table(catalog, model, dated=True) for model in models if model in catalog.models}
    return _short("; ".join(sorted(tables)))


def _short(text: str, limit: int = 400) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis: an attribute stays under 1 KB."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def fit_map(notes: Mapping[str, str]) -> dict[str, str]:
    """``notes`` in order while they fit one attribute, then a count of the rest."""
    out: dict[str, str] = {}
    for n, (k, v) in enumerate(notes.items()):
        if len(json.dumps({**out, k: v})) > MAX_ATTR_CHARS - 40:
            out["…"] = f"{len(notes) - n} more not shown"
            break
        out[k] = v
    return out


def _short_map(costs: Mapping[str, float]) -> dict[str, float]:
    """A cost split that fits an attribute; a huge one keeps its largest entries."""
    out = dict(costs)
    while len(json.dumps(out)) > MAX_ATTR_CHARS - 24 and out:
        out.pop(min(out, key=lambda k: out[k]))
    return out


def _objective_values(names: Sequence[str], m: TrialMetrics) -> list[float]:
    """The values told to Optuna: the ``TrialMetrics`` field each objective's dashboard name
    (``METRIC_NAMES``) is, so the names ``set_metric_names`` shows cannot drift from the values."""
    return [float(getattr(m, METRIC_NAMES[n])) for n in names]

