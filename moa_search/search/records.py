"""What a study records and returns: trial metrics, trial records, the study's result.

Trial bookkeeping in the Optuna storage (user attributes, all JSON):
  ``config`` / ``config_hash`` / ``summary``  what was tried;
  ``status``   complete | stopped_early | duplicate | skipped | failed | interrupted;
  ``metrics``  ``TrialMetrics.to_dict()`` (quality with CI and n items, $ per item split by role
               and model, tokens, latency p50/p95, calls vs cached, paid $, simulated flag);
  ``paid_usd`` / ``paid_calls``  what this trial actually spent (0 for a duplicate);
  ``reserved``  [usd, calls]: the estimate held while it runs (budgets shared by workers);
  ``duplicate_of``, ``stopped_early``, ``skipped``, ``error``  why a trial is not a plain one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from optuna.trial import FrozenTrial, TrialState

from ..config import MoAConfig
from ..errors import ConfigError, MoASearchError
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
    config = MoAConfig.from_dict(a["config"]) if "config" in a else None
    metrics = TrialMetrics.from_dict(a["metrics"]) if "metrics" in a else None
    note = a.get("stopped_early") or a.get("skipped") or a.get("error") or ""
    constraint = t.constraints.get("quality_target")
    return TrialRecord(t.number, status, config, metrics, a.get("duplicate_of"), note, constraint,
                       full_fidelity=t.state == TrialState.COMPLETE and metrics is not None)


def _objective_values(names: Sequence[str], m: TrialMetrics) -> list[float]:
    pick = {"quality": m.quality, "cost": m.cost_usd_per_item, "latency": m.latency_p50_s}
    return [float(pick[n]) for n in names]

