"""Multi-fidelity: stop a clearly worse config after its first items, merge the two stages.

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
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from optuna.trial import FrozenTrial

from ..stats import bootstrap_ci, mean_bound
from ..study_spec import StudySpec
from .records import TrialMetrics, _objective_values

#: Two-sided level of the CIs this module computes when it merges fidelity stages.
CI_LEVEL = 0.95


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
        item_latency_s=lat, n_degraded=a.n_degraded + b.n_degraded,
        first_error=a.first_error or b.first_error,
    )


def early_stop_reason(first: TrialMetrics, number: int, spec: StudySpec, target: float | None,
                      trials: Sequence[FrozenTrial]) -> str | None:
    """Why trial ``number``, measured on its first items, stops early (the rule above), or None."""
    conf = spec.fidelity.confidence
    constrained = spec.objectives.mode == "constrained"
    if constrained and target is not None:
        ucb = mean_bound(first.item_values.values(), conf, upper=True)
        if ucb < target:
            return (f"below target: quality upper bound {ucb:.4g} < {target:.4g} on the first "
                    f"{first.n_items} items (confidence {conf})")
    others = ("cost",) if constrained else tuple(m for m in spec.objectives.metrics if m != "quality")
    mine = dict(zip(others, _objective_values(others, first)))
    for t in trials:
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
