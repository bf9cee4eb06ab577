"""The certain early stop (``fidelity.certain_stop_reason``): a config whose quality on the
study's items cannot reach the target (or the front) even if every item left scores 1.

Unlike the statistical looks it involves no chance, so the test can demand exactly: it fires at
the first stage end where the misses make the target unreachable, and never on a config whose
full-set quality meets the target.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from moa_search.search import TrialMetrics, run_study
from moa_search.search.fidelity import (
    SCREEN_START, certain_stop_reason, quality_is_item_mean, reachable_quality, stage_ends,
)

from test_search import ITEMS, FormulaEvaluator, formula_estimate, item_value, make_spec


def _metrics(values: dict[str, float]) -> TrialMetrics:
    x = list(values.values())
    return TrialMetrics(quality=float(np.mean(x)), quality_low=0.0, quality_high=1.0, n_items=len(x),
                        item_values=values, cost_usd_per_item=0.01, paid_usd=0.0, latency_p50_s=1.0,
                        latency_p95_s=1.0, calls=len(x), cached_calls=0)


def test_stage_ends_are_the_looks_and_the_certain_checks_between_them() -> None:
    assert SCREEN_START == 4
    assert stage_ends(16, 48) == [4, 8, 16, 24, 32, 40]
    assert stage_ends(10, 40) == [4, 8, 10, 15, 20, 25, 30, 35]
    assert stage_ends(4, 20) == [4, 8, 12, 16]    # nothing to screen below first_items


def test_reachable_quality_is_the_mean_with_every_item_left_at_one() -> None:
    m = _metrics({"a": 1.0, "b": 0.0, "c": 0.5})
    assert reachable_quality(m, 0) == pytest.approx(0.5)
    assert reachable_quality(m, 5) == pytest.approx((1.5 + 5) / 8)
    assert reachable_quality(_metrics({"a": 2.0}), 3) is None  # no maximum known


@pytest.mark.parametrize("graded", [False, True])
def test_the_certain_rule_fires_exactly_when_the_target_is_out_of_reach(graded: bool) -> None:
    """Random score vectors on 48 items at three targets: at each stage end the rule stops the
    config iff its misses (1 - score, summed) exceed 48 * (1 - target), and no config it stops
    meets the target on all 48 items."""
    rng = np.random.default_rng(5)
    objectives = SimpleNamespace(mode="constrained", metrics=("quality", "cost"))
    spec = SimpleNamespace(objectives=objectives)
    n, fired, kept_meeting = 48, 0, 0
    for target in (0.75, 0.9, 46 / 48):
        for _ in range(400):
            p = rng.uniform(0.5, 1.0)
            x = rng.uniform(0, 1, n) < p if not graded else np.clip(rng.normal(p, 0.2, n), 0, 1)
            scores = {f"i{k}": float(v) for k, v in enumerate(x)}
            for end in stage_ends(16, n):
                done = _metrics(dict(list(scores.items())[:end]))
                why = certain_stop_reason(done, n - end, 1, spec, target, [])  # type: ignore[arg-type]
                out_of_reach = sum(1 - v for v in done.item_values.values()) > n * (1 - target) + 1e-9
                assert (why is not None) == out_of_reach, (target, end, done.item_values)
                if why is not None:
                    assert "below target for sure" in why
                    assert float(np.mean(x)) < target  # sound: the full set misses the target
                    fired += 1
                    break
            else:
                kept_meeting += float(np.mean(x)) >= target
    assert fired > 100 and kept_meeting > 50  # both outcomes happen: the check above is not vacuous


def test_pareto_certain_dominance_needs_a_reference_as_good_on_every_other_objective() -> None:
    from optuna.trial import TrialState, create_trial
    from moa_search.search.records import metric_attrs

    objectives = SimpleNamespace(mode="pareto", metrics=("quality", "cost"))
    spec = SimpleNamespace(objectives=objectives, fidelity=SimpleNamespace(first_items=4))
    ref_values = {f"i{k}": 1.0 if k % 10 else 0.0 for k in range(40)}  # quality 0.9
    ref = dataclasses.replace(_metrics(ref_values), cost_usd_per_item=0.005)
    trial = create_trial(state=TrialState.COMPLETE, values=[0.9, 0.005],
                         user_attrs={"status": "complete", **metric_attrs(ref)})
    trial.number = 0
    done = _metrics({f"i{k}": 0.0 for k in range(6)})  # at most 34/40 = 0.85 < 0.9
    why = certain_stop_reason(done, 34, 1, spec, None, [trial])  # type: ignore[arg-type]
    assert why is not None and why.startswith("dominated by trial 0: quality at most 0.85")
    dear_ref = create_trial(state=TrialState.COMPLETE, values=[0.9, 0.02],
                            user_attrs={"status": "complete",
                                        **metric_attrs(dataclasses.replace(ref, cost_usd_per_item=0.02))})
    dear_ref.number = 0
    assert certain_stop_reason(done, 34, 1, spec, None, [dear_ref]) is None  # dearer: no dominance
    # cheaper by 5 % on a subset's cost: within the estimate's noise, so not "for sure"
    near_ref = create_trial(state=TrialState.COMPLETE, values=[0.9, 0.0095],
                            user_attrs={"status": "complete",
                                        **metric_attrs(dataclasses.replace(ref, cost_usd_per_item=0.0095))})
    near_ref.number = 0
    assert certain_stop_reason(done, 34, 1, spec, None, [near_ref]) is None  # type: ignore[arg-type]
    almost = _metrics({f"i{k}": 0.0 for k in range(3)})  # at most 37/40 > 0.9: may still beat it
    assert certain_stop_reason(almost, 37, 1, spec, None, [trial]) is None  # type: ignore[arg-type]
    # cost on fewer items than the statistical rule waits for is no ground, certain quality or not
    early = SimpleNamespace(objectives=objectives, fidelity=SimpleNamespace(first_items=16))
    assert certain_stop_reason(done, 34, 1, early, None, [trial]) is None  # type: ignore[arg-type]


def test_failed_items_leave_the_mean_so_they_do_not_count_as_misses() -> None:
    """Items whose run failed are not scored (absent from ``item_values``), and the study's
    quality is the mean over the scored ones: two failures and two right answers of 48 can
    still end at 1.0, so a target of 0.96 is not out of reach."""
    spec = SimpleNamespace(objectives=SimpleNamespace(mode="constrained", metrics=("quality", "cost")))
    done = dataclasses.replace(_metrics({"a": 1.0, "b": 1.0}), n_items=4, n_failed=2)
    assert reachable_quality(done, 44) == pytest.approx(1.0)
    assert certain_stop_reason(done, 44, 1, spec, 0.96, []) is None  # type: ignore[arg-type]
    missed = dataclasses.replace(_metrics({"a": 0.0, "b": 0.0, "c": 1.0}), n_items=4, n_failed=1)
    assert reachable_quality(missed, 44) == pytest.approx(45 / 47)  # below 0.96: stopped
    assert certain_stop_reason(missed, 44, 1, spec, 0.96, []) is not None  # type: ignore[arg-type]


def test_a_stage_whose_items_all_failed_does_not_make_the_merged_latency_nan() -> None:
    from moa_search.search import merge_metrics
    ok = dataclasses.replace(_metrics({"a": 1.0, "b": 0.0}), item_latency_s={"a": 2.0, "b": 4.0},
                             latency_p50_s=3.0, latency_p95_s=3.9)
    failed = TrialMetrics(quality=float("nan"), quality_low=float("nan"), quality_high=float("nan"), n_items=2,
                          item_values={}, cost_usd_per_item=0.01, paid_usd=0.0, latency_p50_s=float("nan"),
                          latency_p95_s=float("nan"), calls=2, cached_calls=0, n_failed=2)
    for merged in (merge_metrics(ok, failed), merge_metrics(failed, ok)):
        assert merged.latency_p50_s == pytest.approx(3.0) and merged.n_items == 4 and merged.quality == 0.5


def test_constrained_mode_has_no_certain_dominance_by_a_subsets_cost() -> None:
    """Among feasible configs only cost counts, and a subset's cost is an estimate: a config out
    of a feasible reference's reach on quality is not stopped for being dearer on four items."""
    from optuna.trial import TrialState, create_trial
    from moa_search.search.records import metric_attrs

    spec = SimpleNamespace(objectives=SimpleNamespace(mode="constrained", metrics=("quality", "cost")))
    ref = dataclasses.replace(_metrics({f"i{k}": 1.0 for k in range(40)}), cost_usd_per_item=0.005)
    trial = create_trial(state=TrialState.COMPLETE, values=[0.005], system_attrs={"constraints": [-0.1]},
                         user_attrs={"status": "complete", **metric_attrs(ref)})
    trial.number = 0
    done = _metrics({f"i{k}": 1.0 if k else 0.0 for k in range(4)})  # at most 39/40, dearer on 4 items
    assert certain_stop_reason(done, 36, 1, spec, 0.9, [trial]) is None  # type: ignore[arg-type]


def test_a_study_stops_an_out_of_reach_config_at_the_first_screening_stage_that_shows_it(tmp_path: Path) -> None:
    target = 0.85
    spec = make_spec(tmp_path, space={"models": ["w-mid"], "aggregators": ["w-strong-cheap", "w-weak-pricey"],
                                      "layers": [1, 1], "proposers": [1, 1]},
                     objectives={"mode": "constrained", "target": target, "target_confidence": 0.9},
                     budget={"trials": 4}, fidelity={"enabled": True, "first_items": 10, "confidence": 0.9})
    evaluator = FormulaEvaluator()
    result = run_study(spec, evaluator, ITEMS, cost_estimate=formula_estimate)
    from moa_search.search.fidelity import staged_order
    order = staged_order(ITEMS, spec.seed)
    weak = next(r for r in result.trials if r.config.aggregator.model == "w-weak-pricey")  # type: ignore[union-attr]
    misses = np.cumsum([1 - item_value(weak.config, i) for i in order])  # type: ignore[arg-type]
    expected = next(end for end in stage_ends(10, len(ITEMS)) if misses[end - 1] > len(ITEMS) * (1 - target) + 1e-9)
    assert expected < 10  # this world makes it clear before the first statistical look
    assert weak.status == "stopped_early" and "below target for sure" in weak.note
    assert weak.metrics is not None and weak.metrics.n_items == expected
    for r in result.trials:
        if "for sure" in r.note:
            assert np.mean([item_value(r.config, i) for i in ITEMS]) < target  # type: ignore[arg-type]


def test_a_length_controlled_study_runs_every_item_at_once(tmp_path: Path) -> None:
    """The LC win rate is a fit over the whole set, not the mean the stopping rules test and the
    stage merge recomputes: such a study ignores the stages."""
    spec = make_spec(tmp_path, space={"models": ["w-mid"], "aggregators": ["w-strong-cheap", "w-weak-pricey"],
                                      "layers": [1, 1], "proposers": [1, 1]},
                     budget={"trials": 2}, fidelity={"enabled": True, "first_items": 10, "confidence": 0.9})
    for name in ("numeric", "exact", "choice", "pairwise_judge", "single_grade_judge"):  # means of items
        assert quality_is_item_mean(dataclasses.replace(spec, scorer=dataclasses.replace(spec.scorer, name=name)))
    lc = dataclasses.replace(spec, scorer=dataclasses.replace(spec.scorer, name="length_controlled"))
    assert not quality_is_item_mean(lc)
    evaluator = FormulaEvaluator()
    run_study(lc, evaluator, ITEMS, cost_estimate=formula_estimate)
    assert evaluator.log and all(len(items) == len(ITEMS) for _, items, _ in evaluator.log)
