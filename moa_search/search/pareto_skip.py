"""The Pareto skip rule: a proposal an evaluated config dominates whatever it would measure.

Issue 15's "use what is known before paying": the catalog prices a config before it runs, so in
a Pareto study a proposal can be redrawn unpaid (``samplers.TrialSeededSampler``) when an
evaluated config is sure to dominate it. ``known_dominated`` says when that is sound.
"""

from __future__ import annotations

from typing import Sequence

from optuna.trial import FrozenTrial, TrialState

from ..config import MoAConfig
from .cost_order import DEFAULT_SLACK, CostEstimate
from .records import trial_config, trial_metrics


def perfect_configs(trials: Sequence[FrozenTrial]) -> list[MoAConfig]:
    """Fully evaluated configs that scored the maximum (1) on every item, none failed."""
    out = []
    for t in trials:
        if t.state != TrialState.COMPLETE or t.user_attrs.get("status") != "complete":
            continue
        m = trial_metrics(t)
        config = trial_config(t)
        if (m is not None and config is not None and not m.n_failed and m.item_values
                and len(m.item_values) == m.n_items and all(v == 1.0 for v in m.item_values.values())):
            out.append(config)
    return out


def known_dominated(config: MoAConfig, perfect: Sequence[MoAConfig], estimate: CostEstimate,
                    metrics: Sequence[str], margin: float = DEFAULT_SLACK) -> bool:
    """Can ``config`` be left unevaluated in a Pareto study, from what is known before paying?

    It can when an evaluated config R dominates it whatever ``config`` would measure, which
    takes three bounds: an *upper* bound on ``config``'s quality no higher than R's measured
    quality, and *lower* bounds on its cost and latency no lower than R's. The quality bound is
    the sound part: a study's quality is the mean over its fixed items, so R's is exact (not an
    estimate with an interval), and the only upper bound on an unrun config's quality is the
    score's maximum, 1; R must therefore have scored 1 on every item (``perfect_configs``). A
    lower bound from R's confidence interval, or a "plausible" bound from configs seen so far,
    would skip configs that could beat R, so neither is used. The cost and latency bounds are
    the catalog's estimates with a ``margin`` (10 %): ``config``'s estimate must exceed R's by
    more than it, which holds as a bound when the estimates' errors are alike for both configs
    (the same models' typical lengths and speeds); latency needs typed speeds for every model
    (``PriceEstimate.latency``), else nothing is skipped.
    """
    cost = float(estimate(config))
    latency_of = getattr(estimate, "latency", None)
    lat = latency_of(config) if "latency" in metrics and latency_of is not None else 0.0
    if lat is None or ("latency" in metrics and latency_of is None):
        return False
    for ref in perfect:
        if "cost" in metrics and cost < (1 + margin) * float(estimate(ref)):
            continue
        if "latency" in metrics:
            ref_lat = latency_of(ref)  # type: ignore[misc]
            if ref_lat is None or lat < (1 + margin) * ref_lat:
                continue
        return True
    return False
