"""The multi-fidelity stopping rule: its bounds (``stats.bounded_p_at_least``, ``paired_p_below_zero``) are valid and sharp near 1, and the rule over several looks keeps its error rate."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from moa_search.search import TrialMetrics
from moa_search.search.fidelity import early_stop_reason, fidelity_looks, look_confidence
from moa_search.stats import bounded_p_at_least, mean_bound
from moa_search.study_spec import FidelitySpec, StudySpec, TargetSpec, load_study_spec


def _false_stop_rate(draw, target: float, n: int, alpha: float, runs: int = 3000) -> float:
    rng = np.random.default_rng(0)
    return float(np.mean([bounded_p_at_least(draw(rng, n), target) <= alpha for _ in range(runs)]))


def test_a_config_exactly_at_the_target_is_stopped_at_most_alpha_of_the_time() -> None:
    for target in (0.5, 0.9, 0.97):
        binary = _false_stop_rate(lambda rng, n: (rng.random(n) < target).astype(float), target, 16, 0.05)
        assert binary <= 0.05, (target, binary)
        # graded scores in [0, 1] with the same mean (Beta), where only the Chernoff bound applies
        graded = _false_stop_rate(lambda rng, n: rng.beta(8 * target, 8 * (1 - target), n), target, 16, 0.05)
        assert graded <= 0.05, (target, graded)


def test_near_one_it_stops_what_a_t_bound_cannot() -> None:
    values = [1.0] * 14 + [0.0] * 2
    assert mean_bound(values, 0.95, upper=True) >= 0.99  # the t bound keeps it running
    assert bounded_p_at_least(values, 0.99) < 0.05  # 14 of 16 right is not a 0.99 config
    assert bounded_p_at_least([1.0] * 16, 0.99) == 1.0  # the mean meets it: never stopped


def test_scores_outside_zero_one_have_no_such_bound() -> None:
    assert math.isnan(bounded_p_at_least([2.0, 7.5], 5.0))
    assert math.isnan(bounded_p_at_least([], 0.5))


def test_three_discordant_pairs_all_one_way_do_not_prove_a_config_worse() -> None:
    from moa_search.stats import paired_p_below_zero
    diffs = [0.0] * 13 + [-1.0] * 3
    assert mean_bound(diffs, 0.95, upper=True) < 0  # the t bound would stop it ...
    assert paired_p_below_zero(diffs) == 0.125  # ... the sign test: 1/2 ** 3
    assert paired_p_below_zero([0.0] * 8 + [-1.0] * 8) < 0.01
    assert paired_p_below_zero([1.0, -1.0, 0.0]) == 1.0
    assert math.isnan(paired_p_below_zero([3.0, -2.0]))


def test_paired_tests_of_equal_configs_reject_at_most_alpha_of_the_time() -> None:
    from moa_search.stats import paired_p_below_zero
    rng = np.random.default_rng(1)
    for p_right in (0.6, 0.95):
        a = rng.random((2000, 16)) < p_right
        b = rng.random((2000, 16)) < p_right
        rate = np.mean([paired_p_below_zero(x - y) <= 0.05 for x, y in zip(a.astype(float), b.astype(float))])
        assert rate <= 0.05, (p_right, rate)
    graded = rng.beta(4, 2, (2000, 16)) - rng.beta(4, 2, (2000, 16))
    assert np.mean([paired_p_below_zero(d) <= 0.05 for d in graded]) <= 0.05


# ---- the rule as the study loop applies it: looks, per-look level, the split within a look ------

def _constrained_spec(target: float, confidence: float) -> StudySpec:
    """The shipped sim-demo study in constrained mode (the rule reads mode, metrics, confidence)."""
    spec = load_study_spec(Path(__file__).resolve().parent.parent / "studies" / "sim-demo.toml")
    objectives = dataclasses.replace(spec.objectives, mode="constrained", target=TargetSpec(value=target))
    return dataclasses.replace(spec, objectives=objectives,
                               fidelity=FidelitySpec(enabled=True, first_items=16, confidence=confidence))


def _measured(values: np.ndarray | list[int]) -> TrialMetrics:
    """Metrics of a config measured on these item values (only values and quality matter here)."""
    values = [float(v) for v in values]
    q = float(np.mean(values))
    return TrialMetrics(quality=q, quality_low=q, quality_high=q, n_items=len(values),
                        item_values={f"i{k}": v for k, v in enumerate(values)}, cost_usd_per_item=0.01,
                        paid_usd=0.0, latency_p50_s=1.0, latency_p95_s=1.0, calls=len(values), cached_calls=0)


def test_the_below_target_test_gets_half_the_looks_error() -> None:
    """6 of 20 right against a target of 0.5: P(Bin(20, 0.5) <= 6) = 0.058 lies between half the
    error (0.05 at confidence 0.9) and all of it (0.1). The dominance tests take the other half
    (a feasible reference's quality is >= the target), so this config must keep running; 5 of
    20 (p = 0.021) must stop."""
    spec = _constrained_spec(0.5, 0.9)
    assert 0.05 < bounded_p_at_least([1.0] * 6 + [0.0] * 14, 0.5) <= 0.1
    assert early_stop_reason(_measured([1] * 6 + [0] * 14), 0, spec, 0.5, [], confidence=0.9) is None
    why = early_stop_reason(_measured([1] * 5 + [0] * 15), 0, spec, 0.5, [], confidence=0.9)
    assert why is not None and why.startswith("below target")


def test_a_config_at_the_target_survives_every_look_but_alpha_of_the_time() -> None:
    """The whole sequential rule, as ``_Loop.evaluate`` runs it: checks after 16, 32 and 64 of 128
    items, each at ``look_confidence``; a config whose quality is exactly the target is stopped
    in at most (1 - c) / 2 of simulated runs: the union bound over the looks, the below-target
    test holding half of each look's error. (Measured here: 0.066 of 0.1; checking every look
    at confidence c instead gives 0.14. The split within a look is held by the test above.)"""
    confidence, target, n_items = 0.8, 0.7, 128
    spec = _constrained_spec(target, confidence)
    looks = fidelity_looks(16, n_items)
    assert looks == [16, 32, 64]
    conf = look_confidence(confidence, len(looks))
    rng = np.random.default_rng(2)
    stopped = 0
    runs = 2000
    for _ in range(runs):
        values = (rng.random(n_items) < target).astype(float)
        stopped += any(early_stop_reason(_measured(values[:n]), 0, spec, target, [], confidence=conf)
                       for n in looks)
    assert stopped / runs <= (1 - confidence) / 2
