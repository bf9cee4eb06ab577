"""The study loop against a synthetic, deterministic evaluator and a real SQLite Optuna storage.

``FormulaEvaluator`` is a test double, named as such: quality, cost and latency are computed from
the config by a formula (no LLMs, no simulated world), so each test can know the right answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna
import pytest

from moa_search.config import BUILTIN_PRESETS, PAPER_PROPOSERS, MoAConfig
from moa_search.errors import ConfigError
from moa_search.search import (
    StudyResult, TrialEvent, TrialMetrics, load_result, mean_bound, merge_metrics, prepare_study,
    price_estimate, run_study,
)
from moa_search.catalog import Catalog
from moa_search.search.records import trial_config, trial_metrics
from moa_search.study_spec import StudySpec, load_study_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: model -> (skill, $ per call, seconds per call) in the formula world.
WORLD: dict[str, tuple[float, float, float]] = {
    "w-strong-cheap": (0.85, 0.0010, 1.0),
    "w-strong-pricey": (0.88, 0.0100, 2.0),
    "w-weak-pricey": (0.15, 0.0120, 3.0),
    "w-mid": (0.55, 0.0020, 1.5),
    "w-small-1": (0.35, 0.0003, 0.5),
    "w-small-2": (0.30, 0.0002, 0.4),
    "w-small-3": (0.40, 0.0004, 0.6),
}
for _m in PAPER_PROPOSERS + ("gpt-4o-2024-05-13",):
    WORLD[_m] = (0.4, 0.001, 1.0)

ITEMS = [f"q{i:03d}" for i in range(40)]


def _difficulty(item: str) -> float:
    return int(hashlib.sha256(item.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def strength(config: MoAConfig) -> float:
    """The formula: aggregator skill, lifted by diverse, skilled proposers and by depth."""
    agg = WORLD[config.aggregator.model][0]
    if not config.proposer_layers:
        return agg
    layer = [a.model for a in config.proposer_layers[0]]
    distinct = len(set(layer))
    mean_skill = sum(WORLD[m][0] for m in layer) / len(layer)
    lift = (1 - agg) * (1 - 0.6 ** distinct) * (0.3 + mean_skill) * (1 + 0.2 * (config.rounds - 1))
    return min(0.99, agg + 0.6 * lift)


def cost_per_item(config: MoAConfig) -> float:
    return (sum(WORLD[a.model][1] for layer in config.proposer_layers for a in layer)
            + WORLD[config.aggregator.model][1])


def item_value(config: MoAConfig, item: str) -> float:
    return 1.0 if strength(config) > _difficulty(item) else 0.0


class FormulaEvaluator:
    """Deterministic evaluator double: records every call; pays only for (config, item) pairs it
    has not seen (a stand-in for the call store); can raise KeyboardInterrupt on call N."""

    def __init__(self, *, interrupt_on_call: int | None = None) -> None:
        self.log: list[tuple[str, tuple[str, ...], int]] = []
        self.paid_pairs: set[tuple[str, str]] = set()
        self.interrupt_on_call = interrupt_on_call
        self.paid_total = 0.0

    async def evaluate(self, config: MoAConfig, item_ids: Sequence[str], *, trial_number: int) -> TrialMetrics:
        if self.interrupt_on_call is not None and len(self.log) + 1 == self.interrupt_on_call:
            raise KeyboardInterrupt
        self.log.append((config.config_hash, tuple(item_ids), trial_number))
        values = {i: item_value(config, i) for i in item_ids}
        calls_per_item = sum(len(layer) for layer in config.proposer_layers) + 1
        fresh = [i for i in item_ids if (config.config_hash, i) not in self.paid_pairs]
        self.paid_pairs.update((config.config_hash, i) for i in item_ids)
        per_item = cost_per_item(config)
        paid = per_item * len(fresh)
        self.paid_total += paid
        latency = sum(max(WORLD[a.model][2] for a in layer) for layer in config.proposer_layers) \
            + WORLD[config.aggregator.model][2]
        x = np.array(list(values.values()))
        return TrialMetrics(
            quality=float(x.mean()), quality_low=mean_bound(x, 0.975, upper=False),
            quality_high=mean_bound(x, 0.975, upper=True), n_items=len(item_ids), item_values=values,
            cost_usd_per_item=per_item, paid_usd=paid, latency_p50_s=latency, latency_p95_s=latency,
            calls=calls_per_item * len(item_ids), cached_calls=calls_per_item * (len(item_ids) - len(fresh)),
            cost_by_role={"proposer": per_item - WORLD[config.aggregator.model][1],
                          "aggregator": WORLD[config.aggregator.model][1]},
            cost_by_model={m: per_item / len(config.models) for m in config.models},
            simulated=True, tokens_in=100 * len(item_ids), tokens_out=50 * len(item_ids),
            item_latency_s={i: latency for i in item_ids},
        )


def formula_estimate(config: MoAConfig) -> float:
    return cost_per_item(config)


# ---- study files ---------------------------------------------------------------------------------

CATALOG = "[providers.fake]\nbase_url = \"http://127.0.0.1:9/v1\"\n\n" + "\n".join(
    f'[models."{m}"]\nprovider = "fake"\ninput_price = 1.0\noutput_price = 1.0\n'
    for m in WORLD if m.startswith("w-"))


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def make_spec(tmp_path: Path, name: str = "s", **sections: dict[str, Any]) -> StudySpec:
    """A study file in tmp_path over the formula world's catalog; ``sections`` override defaults."""
    (tmp_path / "catalog.toml").write_text(CATALOG, "utf-8")
    base: dict[str, dict[str, Any]] = {
        "study": {"name": name, "seed": 1},
        "catalog": {"path": "catalog.toml"},
        "data": {"builtin": "math"},
        "scorer": {"name": "numeric"},
        "space": {"models": ["w-small-1", "w-small-2", "w-small-3", "w-mid"],
                  "aggregators": ["w-mid", "w-strong-cheap"], "layers": [1, 2], "proposers": [1, 3]},
        "budget": {"trials": 10},
        "sampler": {"name": "random"},
        "fidelity": {"enabled": False},
    }
    for key, table in sections.items():
        base[key] = {**base.get(key, {}), **table}
        base[key] = {k: v for k, v in base[key].items() if v is not None}
    text = "\n".join(f"[{sec}]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in table.items()) + "\n"
                     for sec, table in base.items())
    path = tmp_path / f"{name}.toml"
    path.write_text(text, "utf-8")
    return load_study_spec(path, runs_dir=tmp_path / "runs")


def _hashes(evaluator: FormulaEvaluator) -> list[str]:
    return [h for h, _, _ in evaluator.log]


def _counted(result: StudyResult) -> list:
    """Trials that used the trial budget: evaluations (duplicates and skips are free)."""
    return [r for r in result.trials if r.counted]


_OBJECTIVE = {"quality": lambda m: m.quality, "cost": lambda m: m.cost_usd_per_item,
              "latency": lambda m: m.latency_p50_s}


def _brute_force_front(result: StudyResult) -> set[str]:
    """Hashes of the fully measured configs no other one dominates, by definition (every
    objective at least as good, one strictly better): independent of Optuna's ``best_trials``."""
    sign = [1.0 if d == "maximize" else -1.0 for d in result.directions]
    points = {r.config.config_hash: tuple(s * _OBJECTIVE[n](r.metrics)  # type: ignore[union-attr]
                                          for s, n in zip(sign, result.objective_names))
              for r in result.evaluated}
    return {h for h, p in points.items()
            if not any(q != p and all(a >= b for a, b in zip(q, p)) for q in points.values())}


def _assert_front_is_exact(result: StudyResult) -> None:
    hashes = [r.config.config_hash for r in result.pareto_front]  # type: ignore[union-attr]
    assert len(hashes) == len(set(hashes)), f"a config is listed twice on the front: {hashes}"
    assert set(hashes) == _brute_force_front(result)


# ---- tests -------------------------------------------------------------------------------------

def test_presets_and_single_models_run_first(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, space={"models": list(PAPER_PROPOSERS),
                                      "aggregators": ["Qwen/Qwen1.5-110B-Chat", "Qwen/Qwen1.5-72B-Chat"],
                                      "layers": [1, 3], "proposers": [1, 6]},
                     catalog={"path": None}, budget={"trials": 8})
    result = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    first = [r.config for r in sorted(result.trials, key=lambda r: r.number)[:4]]
    assert first == [BUILTIN_PRESETS["moa"].config, BUILTIN_PRESETS["moa-lite"].config,
                     MoAConfig.single("Qwen/Qwen1.5-110B-Chat"), MoAConfig.single("Qwen/Qwen1.5-72B-Chat")]
    study = optuna.load_study(study_name="s", storage=spec.storage)
    assert "gpt-4o" in study.user_attrs["enqueue_skipped"]["preset moa-gpt4o"]
    assert len(_counted(result)) == 8


def test_duplicate_configs_are_not_re_evaluated(tmp_path: Path) -> None:
    space = {"models": ["w-small-1", "w-small-2"], "aggregators": ["w-mid"], "layers": [1, 2], "proposers": [1, 2]}
    evaluator = FormulaEvaluator()
    run_study(make_spec(tmp_path, space=space, budget={"trials": 2}), evaluator, ITEMS, cost_estimate=formula_estimate)
    # The random sampler over 4 configs repeats itself, but a repeat is redrawn before it
    # becomes a trial: one trial per config.
    spec = make_spec(tmp_path, space=space, budget={"trials": 12})
    study = optuna.load_study(study_name="s", storage=spec.storage)
    assert [t.user_attrs["status"] for t in study.trials] == ["complete"] * 2
    # A repeat that does become a trial (queued, as a retry or a preset is) reuses the metrics.
    for t in study.trials:
        study.enqueue_trial(dict(t.params))
    result = run_study(spec, evaluator, ITEMS, cost_estimate=formula_estimate)
    assert len(_hashes(evaluator)) == len(set(_hashes(evaluator)))  # each config evaluated once
    dups = [r for r in result.trials if r.status == "duplicate"]
    assert len(dups) == 2
    by_number = {r.number: r for r in result.trials}
    for d in dups:
        original = by_number[d.duplicate_of]  # type: ignore[index]
        assert original.config == d.config and d.metrics is not None and original.metrics is not None
        assert dataclasses.replace(d.metrics, paid_usd=original.metrics.paid_usd) == original.metrics
        assert d.metrics.paid_usd == 0 and not d.full_fidelity  # free, and PRUNED: not a second best trial
    # The space (4 configs) is exhausted well inside the trial budget (12): every config was
    # evaluated exactly once, and the loop stopped for that reason, not at the budget.
    every = {c.config_hash for c in spec.space.enumerate_configs()}
    assert len(every) == 4 and {r.config.config_hash for r in result.evaluated} == every  # type: ignore[union-attr]
    assert sorted(_hashes(evaluator)) == sorted(every)
    assert len(_counted(result)) == 4 and "every config" in result.stop_reason
    # A repeat pays nothing: the study's spend is exactly what the evaluations paid.
    study = optuna.load_study(study_name="s", storage=spec.storage)
    assert all(t.user_attrs["paid_usd"] == 0 for t in study.trials if t.user_attrs.get("status") == "duplicate")
    paid_by_evaluations = sum(r.metrics.paid_usd for r in _counted(result))  # type: ignore[union-attr]
    assert result.spent_usd == pytest.approx(paid_by_evaluations) == pytest.approx(evaluator.paid_total)
    assert evaluator.paid_total == pytest.approx(sum(cost_per_item(c) for c in spec.space.enumerate_configs())
                                                 * len(ITEMS))


def test_resume_after_interruption_continues_without_repeating_trials(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, space={"models": ["w-small-1", "w-small-2", "w-small-3", "w-mid"],
                                      "aggregators": ["w-mid", "w-strong-cheap"], "layers": [2, 3],
                                      "proposers": [1, 4]}, budget={"trials": 10})
    first = FormulaEvaluator(interrupt_on_call=4)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, first, ITEMS, cost_estimate=formula_estimate)
    before = load_result(spec.storage, "s")
    done = {r.number: r.config for r in before.trials if r.status in ("complete", "duplicate")}
    assert len(done) >= 3
    interrupted = [r for r in before.trials if r.status == "interrupted"]
    assert len(interrupted) == 1

    second = FormulaEvaluator()
    after = run_study(spec, second, ITEMS, cost_estimate=formula_estimate)
    assert len(_counted(after)) == 10
    finished_first = {h for h, _, _ in first.log}
    assert not finished_first & set(_hashes(second))  # completed configs are never re-run
    assert second.log[0][0] == interrupted[0].config.config_hash  # type: ignore[union-attr]
    for number, config in done.items():  # earlier trials unchanged
        assert next(r for r in after.trials if r.number == number).config == config


def _worker(spec: StudySpec, worker: int) -> None:
    run_study(spec, FormulaEvaluator(), ITEMS, worker=worker, cost_estimate=formula_estimate)


def _run_two_workers(spec: StudySpec) -> StudyResult:
    """Two forked processes run the prepared study on one storage; both must exit cleanly."""
    prepare_study(spec, FormulaEvaluator(), ITEMS)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(spec, i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    return load_result(spec.storage, spec.name)


def test_two_worker_processes_share_one_storage_and_the_trial_budget(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, space={"models": ["w-small-1", "w-small-2", "w-small-3", "w-mid"],
                                      "aggregators": ["w-mid", "w-strong-cheap"], "layers": [1, 3],
                                      "proposers": [1, 4]},
                     budget={"trials": 10}, sampler={"name": "tpe", "options": {"n_startup_trials": 4}})
    result = _run_two_workers(spec)
    assert len(_counted(result)) == 10
    assert not [r for r in result.trials if r.status in ("running", "waiting")]
    numbers = sorted(r.number for r in _counted(result))
    assert numbers == sorted(set(numbers))


def test_usd_budget_is_never_exceeded(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, space={"models": ["w-small-1", "w-small-2", "w-small-3", "w-mid"],
                                      "aggregators": ["w-mid", "w-strong-pricey"], "layers": [1, 3],
                                      "proposers": [1, 4]},
                     budget={"trials": 40, "usd": 0.6}, sampler={"name": "random"})
    evaluator = FormulaEvaluator()
    events: list[TrialEvent] = []
    result = run_study(spec, evaluator, ITEMS, on_trial=events.append, cost_estimate=formula_estimate)
    assert 0 < result.spent_usd <= 0.6
    assert math.isclose(result.spent_usd, evaluator.paid_total)
    assert "budget" in result.stop_reason
    assert events and all(e.spent_usd <= 0.6 for e in events)
    assert [e.spent_usd for e in events] == sorted(e.spent_usd for e in events)
    skipped = [r for r in result.trials if r.status == "skipped"]
    assert all("budget" in r.note or "trial budget" in r.note for r in skipped)


def test_call_budget_is_tracked_across_resumes(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, space={"layers": [2, 2]}, budget={"trials": 40, "calls": 300})
    first = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    assert first.spent_calls <= 300
    assert "call" in first.stop_reason or "budget nearly spent" in first.stop_reason
    evaluator = FormulaEvaluator()
    again = run_study(spec, evaluator, ITEMS, cost_estimate=formula_estimate)
    assert evaluator.log == [] and again.spent_calls == first.spent_calls  # nothing more was spent
    assert len(again.trials) == len(first.trials) and again.stop_reason == first.stop_reason


def test_early_stopping_fires_on_a_clearly_bad_config_only(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, space={"models": ["w-mid"],
                                      "aggregators": ["w-strong-cheap", "w-weak-pricey", "w-strong-pricey"],
                                      "layers": [1, 1], "proposers": [1, 1]},
                     budget={"trials": 6}, fidelity={"enabled": True, "first_items": 10, "confidence": 0.9})
    evaluator = FormulaEvaluator()
    result = run_study(spec, evaluator, ITEMS, cost_estimate=formula_estimate)
    status = {r.config.aggregator.model: r for r in result.trials}  # type: ignore[union-attr]
    bad = status["w-weak-pricey"]
    assert bad.status == "stopped_early" and "dominated by trial" in bad.note
    assert bad.metrics is not None and bad.metrics.n_items == 10
    for good in ("w-strong-cheap", "w-strong-pricey"):
        assert status[good].status == "complete" and status[good].metrics.n_items == 40  # type: ignore[union-attr]
    # Each stage covers new items only, in the study's seeded order (not file order).
    from moa_search.search.fidelity import staged_order
    order = staged_order(ITEMS, spec.seed)
    assert order != ITEMS and sorted(order) == sorted(ITEMS) and order == staged_order(ITEMS, spec.seed)
    strong = MoAConfig.single("w-strong-cheap").config_hash
    parts = [items for h, items, _ in evaluator.log if h == strong]
    # the looks at 10 and 20, and between them the certain rule's checks (4 and 8, then every 5)
    ends = [0, 4, 8, 10, 15, 20, 25, 30, 35, 40]
    assert parts == [tuple(order[a:b]) for a, b in zip(ends, ends[1:])]
    # A stopped trial is not on the Pareto front.
    assert bad.number not in {r.number for r in result.pareto_front}


def _brute_force_cheapest(spec: StudySpec, target: float, confidence: float) -> MoAConfig:
    feasible = [c for c in spec.space.enumerate_configs()
                if mean_bound([item_value(c, i) for i in ITEMS], confidence, upper=False) >= target]
    return min(feasible, key=cost_per_item)


def test_constrained_mode_finds_the_cheapest_feasible_config(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, objectives={"mode": "constrained", "target": 0.65, "target_confidence": 0.9},
                     space={"models": ["w-small-1", "w-small-2"],
                            "aggregators": ["w-mid", "w-strong-cheap", "w-weak-pricey"], "layers": [1, 2],
                            "proposers": [1, 2]},
                     budget={"trials": 30}, sampler={"name": "grid"},
                     fidelity={"enabled": True, "first_items": 10, "confidence": 0.95})
    evaluator = FormulaEvaluator()
    result = run_study(spec, evaluator, ITEMS, cost_estimate=formula_estimate)
    assert result.directions == ("minimize",)
    expected = _brute_force_cheapest(spec, 0.65, 0.9)
    answer = result.cheapest_meeting_target()
    assert answer.met and answer.record is not None and answer.record.config == expected
    assert answer.achieved_confidence is not None and answer.achieved_confidence >= 0.9
    assert [r.config for r in result.pareto_front] == [expected]
    assert result.pareto_front[0].constraint is not None and result.pareto_front[0].constraint <= 0
    # Configs clearly below the target were stopped after the first items.
    assert any(r.status == "stopped_early" and "below target" in r.note for r in result.trials)


def _cheapest_first_spec(tmp_path: Path, **extra: dict[str, Any]) -> StudySpec:
    tmp_path.mkdir(parents=True, exist_ok=True)
    sections: dict[str, dict[str, Any]] = dict(
        objectives={"mode": "constrained", "target": 0.7, "target_confidence": 0.75},
        space={"models": ["w-small-1", "w-small-2", "w-small-3", "w-mid"],
               "aggregators": ["w-mid", "w-strong-pricey", "w-weak-pricey"], "layers": [1, 3],
               "proposers": [1, 3]},
        budget={"trials": 200}, sampler={"name": "cheapest-first", "options": {"slack": 0.0}},
        fidelity={"enabled": True, "first_items": 20, "confidence": 0.9})
    sections.update(extra)
    return make_spec(tmp_path, **sections)


def test_cheapest_first_walks_up_the_cost_order_and_stops_at_the_cheapest_feasible(tmp_path: Path) -> None:
    spec = _cheapest_first_spec(tmp_path)
    evaluator = FormulaEvaluator()
    result = run_study(spec, evaluator, ITEMS, cost_estimate=formula_estimate)
    expected = _brute_force_cheapest(spec, 0.7, 0.75)
    answer = result.cheapest_meeting_target()
    assert answer.met and answer.record is not None and answer.record.config == expected
    assert "cheapest-first" in result.stop_reason
    # Exactly the configs estimated cheaper than the answer were tried (slack 0), cheapest first,
    # none of the presets (outside the cost order), and the more expensive ones never.
    tried = [r.config for r in result.trials if r.config is not None]
    costs = [cost_per_item(c) for c in tried]
    assert costs == sorted(costs)
    cheaper = {c.config_hash for c in spec.space.enumerate_configs() if cost_per_item(c) < cost_per_item(expected)}
    assert {c.config_hash for c in tried[:-1]} == cheaper and tried[-1] == expected
    assert len(tried) < spec.space.count_configs() / 2
    # Configs clearly below the target stopped after the first items: paid for in part.
    assert any(r.status == "stopped_early" and "below target" in r.note for r in result.trials)


def test_cheapest_first_slack_also_tries_configs_estimated_a_little_dearer(tmp_path: Path) -> None:
    tight = run_study(_cheapest_first_spec(tmp_path / "a"), FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    loose_spec = _cheapest_first_spec(tmp_path / "b", sampler={"name": "cheapest-first", "options": {"slack": 1.0}})
    loose = run_study(loose_spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    found = tight.cheapest_meeting_target().record
    assert found is not None and loose.cheapest_meeting_target().record.config == found.config  # type: ignore[union-attr]
    extra = [r.config for r in loose.trials if r.config is not None and cost_per_item(r.config) > cost_per_item(found.config)]  # type: ignore[arg-type]
    assert extra and all(cost_per_item(c) <= 2 * cost_per_item(found.config) for c in extra)  # type: ignore[arg-type]


def test_cheapest_first_resumes_where_it_stopped(tmp_path: Path) -> None:
    spec = _cheapest_first_spec(tmp_path)
    first = FormulaEvaluator(interrupt_on_call=5)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, first, ITEMS, cost_estimate=formula_estimate)
    second = FormulaEvaluator()
    result = run_study(spec, second, ITEMS, cost_estimate=formula_estimate)
    full_once = FormulaEvaluator()
    run_study(_cheapest_first_spec(tmp_path / "once"), full_once, ITEMS, cost_estimate=formula_estimate)
    assert result.cheapest_meeting_target().record.config == _brute_force_cheapest(spec, 0.7, 0.75)  # type: ignore[union-attr]
    # Together the two runs tried the configs one uninterrupted run tries, in the same order; the
    # interrupted one first on resume (its finished stage is served by the call store in real runs).
    order = list(dict.fromkeys(h for h, _, _ in first.log + second.log))
    assert order == list(dict.fromkeys(h for h, _, _ in full_once.log))
    interrupted = next(r for r in load_result(spec.storage, "s").trials if r.status == "interrupted")
    assert second.log[0][0] == interrupted.config.config_hash  # type: ignore[union-attr]


def test_cheapest_first_with_two_worker_processes_finds_the_same_answer(tmp_path: Path) -> None:
    spec = _cheapest_first_spec(tmp_path)
    result = _run_two_workers(spec)
    assert result.cheapest_meeting_target().record.config == _brute_force_cheapest(spec, 0.7, 0.75)  # type: ignore[union-attr]
    evaluated = [r.config.config_hash for r in _counted(result)]  # type: ignore[union-attr]
    assert len(evaluated) == len(set(evaluated))  # no config evaluated twice


def test_cheapest_first_in_pareto_mode_walks_by_what_a_config_costs_now(tmp_path: Path) -> None:
    """Without a target the walk takes the config cheapest to evaluate *now*: proposer calls
    earlier trials made are free, so a config reusing them comes before one with a lower list
    price that reuses nothing; the budget ends the walk."""
    from moa_search.search.budget import covered_calls, uncached_share
    spec = make_spec(tmp_path, sampler={"name": "cheapest-first"}, budget={"trials": 12},
                     space={"models": ["w-small-1", "w-small-2", "w-mid"], "aggregators": ["w-mid", "w-strong-cheap"],
                            "layers": [1, 3], "proposers": [1, 2]})
    estimate = price_estimate(spec.load_catalog())
    result = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=estimate)
    walked = [r.config for r in sorted(result.trials, key=lambda r: r.number) if r.config is not None]
    assert len(walked) == 12 and len({c.config_hash for c in walked}) == 12
    every = spec.space.enumerate_configs()
    for i, config in enumerate(walked):
        covered = covered_calls(estimate, [(c, len(ITEMS)) for c in walked[:i]])
        now = {c.config_hash: estimate(c) * uncached_share(estimate, c, len(ITEMS), covered) for c in every}
        left = [h for h in now if h not in {c.config_hash for c in walked[:i]}]
        assert now[config.config_hash] == pytest.approx(min(now[h] for h in left))
    lists = [estimate(c) for c in walked]
    assert lists != sorted(lists)  # not the list-price order


def test_a_target_no_config_meets_is_reported_with_the_best_found(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, objectives={"mode": "constrained", "target": 0.999},
                     budget={"trials": 6})
    result = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    answer = result.cheapest_meeting_target()
    assert not answer.met and answer.record is None
    assert answer.best is not None and answer.best.metrics is not None
    assert answer.best.metrics.quality == max(r.metrics.quality for r in result.evaluated)  # type: ignore[union-attr]
    assert "no config meets" in answer.message
    assert result.pareto_front == ()  # nothing feasible


def test_cheapest_meeting_target_honours_the_confidence_asked(tmp_path: Path) -> None:
    """Just under the cheapest config's quality, that config meets the target at confidence 0.5
    (mean above it) but not at 0.95 (its lower bound is below): the answers must differ, each
    the cheapest config whose one-sided Student-t lower bound clears the target."""
    spec = make_spec(tmp_path, space={"models": ["w-small-1", "w-small-2"], "aggregators": ["w-mid", "w-strong-pricey"],
                                      "layers": [1, 2], "proposers": [1, 2]},
                     budget={"trials": 20}, sampler={"name": "grid"})
    result = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    measured = [r for r in result.evaluated if r.metrics is not None]
    cheapest = min(measured, key=lambda r: r.metrics.cost_usd_per_item)  # type: ignore[union-attr]
    assert 0 < cheapest.metrics.quality < 1  # type: ignore[union-attr]
    target = cheapest.metrics.quality - 0.01  # type: ignore[union-attr]
    answers = {}
    for confidence in (0.5, 0.95):
        meeting = [r for r in measured
                   if mean_bound(r.metrics.item_values.values(), confidence, upper=False) >= target]  # type: ignore[union-attr]
        assert meeting, f"no config is {confidence} sure to beat {target}: the test would prove nothing"
        expected = min(meeting, key=lambda r: r.metrics.cost_usd_per_item)  # type: ignore[union-attr]
        answer = result.cheapest_meeting_target(target, confidence)
        assert answer.met and answer.record is not None and answer.record.number == expected.number
        assert answer.achieved_confidence is not None and answer.achieved_confidence >= confidence
        answers[confidence] = answer.record.number
    assert answers[0.5] == cheapest.number != answers[0.95]


def test_baseline_target_is_measured_first_and_reused(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, objectives={"mode": "constrained", "target": {"baseline": "w-mid"}},
                     space={"models": ["w-small-1", "w-small-2"], "aggregators": ["w-mid", "w-strong-cheap"],
                            "layers": [1, 2], "proposers": [1, 2]}, budget={"trials": 4})
    evaluator = FormulaEvaluator()
    result = run_study(spec, evaluator, ITEMS, cost_estimate=formula_estimate)
    assert evaluator.log[0][2] == -1 and evaluator.log[0][0] == MoAConfig.single("w-mid").config_hash
    assert result.baseline is not None and result.baseline.metrics is not None
    assert result.target == result.baseline.metrics.quality
    reused = [r for r in result.trials if r.config == MoAConfig.single("w-mid")]
    assert reused and reused[0].duplicate_of == "baseline"
    assert _hashes(evaluator).count(MoAConfig.single("w-mid").config_hash) == 1


def test_pareto_front_is_optunas_and_trials_record_everything(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, budget={"trials": 8}, sampler={"name": "nsga2"})
    result = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    study = optuna.load_study(study_name="s", storage=spec.storage)
    front_hashes = {t.user_attrs["config_hash"] for t in study.best_trials}
    assert {r.config.config_hash for r in result.pareto_front} == front_hashes  # type: ignore[union-attr]
    _assert_front_is_exact(result)  # and that set is right by definition, not only Optuna's
    assert result.is_simulated and result.directions == ("maximize", "minimize", "minimize")
    t = next(t for t in study.trials if t.user_attrs.get("status") == "complete")
    attrs = t.user_attrs
    assert trial_config(t).config_hash == attrs["config_hash"]  # type: ignore[union-attr]
    assert attrs["config"] == trial_config(t).summary()  # type: ignore[union-attr]
    for key in ("quality_ci_low", "quality_ci_high", "n_items", "cost_usd_per_item_by_role",
                "cost_usd_per_item_by_model", "tokens_in", "latency_p50_s", "latency_p95_s", "calls",
                "cached_calls", "paid_usd", "simulated", "price_table"):
        assert key in attrs
    assert t.values == [attrs["quality"], attrs["cost_usd_per_item"], attrs["latency_p50_s"]]
    assert trial_metrics(t).item_values  # type: ignore[union-attr]  # per-item data, out of the attributes
    assert not {"metrics", "item_values", "item_latency_s"} & set(attrs)


def test_pareto_front_lists_each_non_dominated_config_once(tmp_path: Path) -> None:
    """A repeat of an evaluated config that does become a trial (here: queued by hand, as a
    retry or a preset would be) reuses the metrics but is told PRUNED, so Optuna's
    ``best_trials`` holds each config once; the front names only undominated configs."""
    space = {"models": ["w-small-1", "w-small-2"], "aggregators": ["w-mid", "w-strong-cheap"],
             "layers": [1, 2], "proposers": [1, 2]}
    spec = make_spec(tmp_path, space=space, budget={"trials": 4})
    first = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    study = optuna.load_study(study_name="s", storage=spec.storage)
    for r in first.pareto_front:
        study.enqueue_trial(spec.space.config_to_params(r.config))  # type: ignore[arg-type]
    spec = make_spec(tmp_path, space=space, budget={"trials": 40})
    result = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    front = {r.config.config_hash for r in result.pareto_front}  # type: ignore[union-attr]
    repeats = [r for r in result.trials if r.status == "duplicate" and r.config.config_hash in front]  # type: ignore[union-attr]
    assert repeats, "the study must repeat a front config, or this test proves nothing"
    assert all(not r.full_fidelity for r in repeats)  # PRUNED, not COMPLETE
    best = optuna.load_study(study_name="s", storage=spec.storage).best_trials
    best_hashes = [t.user_attrs["config_hash"] for t in best]
    assert sorted(best_hashes) == sorted(set(best_hashes)) == sorted(front)
    assert 0 < len(front) < len(result.evaluated)  # some configs are dominated
    for loaded in (result, load_result(spec.storage, "s")):
        _assert_front_is_exact(loaded)


def test_an_unopenable_storage_names_the_url(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    spec = make_spec(tmp_path, study={"storage": f"sqlite:///{blocker}/sub/optuna.db"})
    with pytest.raises(ConfigError) as exc:
        run_study(spec, FormulaEvaluator(), ITEMS)
    assert f"sqlite:///{blocker}/sub/optuna.db" in str(exc.value) and exc.value.field == "study.storage"
    spec = make_spec(tmp_path, study={"storage": "nosuchdialect://host/db"})
    with pytest.raises(ConfigError, match="nosuchdialect://host/db"):
        run_study(spec, FormulaEvaluator(), ITEMS)
    with pytest.raises(ConfigError, match="no such file"):
        load_result(f"sqlite:///{tmp_path}/missing.db", "s")


def test_resuming_with_other_items_or_objectives_is_refused(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, budget={"trials": 2})
    run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    with pytest.raises(ConfigError, match="other items"):
        run_study(spec, FormulaEvaluator(), ITEMS[:10], cost_estimate=formula_estimate)
    other = make_spec(tmp_path, objectives={"mode": "constrained", "target": 0.5})
    with pytest.raises(ConfigError, match="directions"):
        run_study(other, FormulaEvaluator(), ITEMS)


def test_merge_metrics_recomputes_from_items() -> None:
    def part(items: list[str], value: float, latency: float, paid: float) -> TrialMetrics:
        return TrialMetrics(value, value, value, len(items), {i: value for i in items}, 0.01, paid, latency,
                            latency, 3 * len(items), len(items), cost_by_role={"proposer": 0.01},
                            item_latency_s={i: latency for i in items})
    merged = merge_metrics(part(ITEMS[:10], 1.0, 1.0, 0.1), part(ITEMS[10:40], 0.0, 3.0, 0.3))
    assert merged.n_items == 40 and merged.quality == pytest.approx(0.25)
    assert merged.quality_low < 0.25 < merged.quality_high
    assert merged.latency_p50_s == 3.0 and merged.paid_usd == pytest.approx(0.4)
    assert merged.calls == 120 and merged.cached_calls == 40


def test_price_estimate_grows_with_proposers_and_depth() -> None:
    estimate = price_estimate(Catalog.default())
    single = estimate(MoAConfig.single("Qwen/Qwen1.5-72B-Chat"))
    lite = estimate(BUILTIN_PRESETS["moa-lite"].config)
    full = estimate(BUILTIN_PRESETS["moa"].config)
    assert 0 < single < lite < full


# ---- issue 15: redraws, cache-aware estimates, sequential looks, the grid's enumeration ------------

class _StuckSampler(optuna.samplers.BaseSampler):
    """A sampler double that always proposes the same parameters (every choice's first value):
    the worst case for repeats, which the redraw must get past."""

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            return dist.choices[0]
        return dist.low


def test_a_sampler_that_repeats_itself_is_redrawn_into_new_configs(tmp_path: Path) -> None:
    from moa_search.search.samplers import TrialSeededSampler
    spec = make_spec(tmp_path, budget={"trials": 6})
    sampler = TrialSeededSampler(lambda seed: _StuckSampler(), 1, 0, spec.space)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", directions=["maximize"],
                                sampler=sampler)
    seen = []
    for _ in range(6):
        trial = study.ask()
        config = spec.space.suggest(trial)
        trial.set_user_attr("config_hash", config.config_hash)
        trial.set_user_attr("status", "complete")
        study.tell(trial, 0.5)
        seen.append(config.config_hash)
    assert len(set(seen)) == 6  # the stuck proposal once, then uniform redraws of new configs
    assert sampler.redraws >= 5


def test_the_estimate_knows_which_calls_the_store_already_holds(tmp_path: Path) -> None:
    from moa_search.search.budget import covered_calls, uncached_share
    spec = make_spec(tmp_path)
    estimate = price_estimate(spec.load_catalog())
    a = MoAConfig.from_dict({"layers": [[{"model": "w-small-1"}, {"model": "w-small-2"}]],
                             "aggregator": {"model": "w-mid"}})
    b = MoAConfig.from_dict({"layers": [[{"model": "w-small-1"}, {"model": "w-small-2"}]],
                             "aggregator": {"model": "w-strong-cheap"}})
    covered = covered_calls(estimate, [(a, 40)])
    assert uncached_share(estimate, a, 40, covered) == 0.0  # every call made
    share = uncached_share(estimate, b, 40, covered)  # its proposers' calls are shared
    agg = estimate.calls(b)[-1][1]
    assert share == pytest.approx(agg / estimate(b)) and 0 < share < 1
    # made on the first 20 items only (an early stop): the other 20 are still to pay
    half = covered_calls(estimate, [(a, 20)])
    assert uncached_share(estimate, a, 40, half) == pytest.approx(0.5)
    assert uncached_share(estimate, MoAConfig.single("w-small-3"), 40, covered) == 1.0
    assert uncached_share(formula_estimate, b, 40, covered) == 1.0  # an estimate without calls


def test_candidates_take_the_proposal_cheapest_to_evaluate_now(tmp_path: Path) -> None:
    """The first candidate is the proposal ``candidates = 1`` would take, so with more the
    chosen config is never dearer; over a study it is cheaper on average."""
    from moa_search.search.samplers import build_sampler
    costs = {}
    for n in (1, 4):
        (tmp_path / f"c{n}").mkdir()
        spec = make_spec(tmp_path / f"c{n}", space={"models": ["w-small-1", "w-small-2", "w-mid", "w-weak-pricey"],
                                                    "aggregators": ["w-mid", "w-strong-pricey"],
                                                    "layers": [1, 3], "proposers": [1, 4]},
                         sampler={"name": "random", "options": {}}, budget={"trials": 12})
        spec = dataclasses.replace(spec, sampler=dataclasses.replace(spec.sampler, options={"candidates": n}))
        estimate = price_estimate(spec.load_catalog())
        run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=estimate)
        study = optuna.load_study(study_name="s", storage=spec.storage)
        sampled = [t for t in study.trials if "fixed_params" not in t.system_attrs]
        costs[n] = [estimate(spec.space.suggest(optuna.trial.FixedTrial(t.params))) for t in sampled]
    assert sum(costs[4]) < sum(costs[1])
    assert isinstance(build_sampler(spec, seed=1), optuna.samplers.BaseSampler)


def test_the_statistical_rule_stops_what_the_certain_rule_cannot(tmp_path: Path) -> None:
    """w-mid (quality ~0.55) could still reach w-strong-cheap's ~0.85 if its 30 items left all
    scored 1, so only the test of its first 10 items can stop it as dominated."""
    spec = make_spec(tmp_path, space={"models": ["w-mid"], "aggregators": ["w-strong-cheap", "w-mid"],
                                      "layers": [1, 1], "proposers": [1, 1]},
                     budget={"trials": 4}, fidelity={"enabled": True, "first_items": 10, "confidence": 0.9})
    result = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    mid = next(r for r in result.trials if r.config.aggregator.model == "w-mid")  # type: ignore[union-attr]
    assert mid.status == "stopped_early" and mid.metrics is not None and mid.metrics.n_items == 10, mid.note
    assert mid.note.startswith("dominated by trial") and "P(" in mid.note  # a test's p-value, not a bound
    best = (sum(mid.metrics.item_values.values()) + len(ITEMS) - 10) / len(ITEMS)
    strong = next(r for r in result.trials if r.config.aggregator.model == "w-strong-cheap")  # type: ignore[union-attr]
    assert strong.metrics is not None and best > strong.metrics.quality  # out of the certain rule's reach


def test_sequential_looks_stop_at_the_first_look_that_is_clear(tmp_path: Path) -> None:
    from moa_search.search.fidelity import fidelity_looks, look_confidence, staged_order
    assert fidelity_looks(10, 40) == [10, 20] and fidelity_looks(16, 48) == [16, 32]
    assert fidelity_looks(16, 16) == [] and fidelity_looks(5, 41) == [5, 10, 20, 40]
    assert look_confidence(0.9, 2) == pytest.approx(0.95) and look_confidence(0.9, 1) == pytest.approx(0.9)
    spec = make_spec(tmp_path, space={"models": ["w-mid"], "aggregators": ["w-strong-cheap", "w-weak-pricey"],
                                      "layers": [1, 1], "proposers": [1, 1]},
                     objectives={"mode": "constrained", "target": 0.6, "target_confidence": 0.9},
                     budget={"trials": 4}, fidelity={"enabled": True, "first_items": 5, "confidence": 0.9})
    evaluator = FormulaEvaluator()
    result = run_study(spec, evaluator, ITEMS, cost_estimate=formula_estimate)
    weak = next(r for r in result.trials if r.config.aggregator.model == "w-weak-pricey")  # type: ignore[union-attr]
    assert weak.status == "stopped_early" and "below target" in weak.note
    parts = [items for h, items, _ in evaluator.log if h == weak.config.config_hash]  # type: ignore[union-attr]
    assert sum(len(p) for p in parts) < len(ITEMS) and parts[0] == tuple(staged_order(ITEMS, spec.seed)[:4])


def test_the_grid_enumerates_the_space_once_per_study_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moa_search.space import SearchSpace
    calls = []
    real = SearchSpace.enumerate_configs

    def counting(self: SearchSpace, *args: Any, **kwargs: Any) -> Any:  # a spy on the real method
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SearchSpace, "enumerate_configs", counting)
    spec = make_spec(tmp_path, budget={"trials": 8}, sampler={"name": "grid"})
    result = run_study(spec, FormulaEvaluator(), ITEMS, cost_estimate=formula_estimate)
    assert len(_counted(result)) == 8
    assert len(calls) <= 2  # the sampler's grid and the loop's index, not once per trial


def test_a_proposal_a_perfect_config_dominates_by_estimate_is_not_evaluated(tmp_path: Path) -> None:
    from moa_search.search.pareto_skip import known_dominated
    sim = load_study_spec(Path(__file__).resolve().parent.parent / "studies" / "sim-demo.toml")
    estimate = price_estimate(sim.load_catalog())
    cheap = MoAConfig.single("meta-llama/Llama-3-8b-chat-hf")
    dear = MoAConfig.from_dict({"layers": [[{"model": "Qwen/Qwen1.5-72B-Chat"}, {"model": "microsoft/WizardLM-2-8x22B"}]],
                                "aggregator": {"model": "Qwen/Qwen1.5-110B-Chat"}})
    metrics = ("quality", "cost", "latency")
    assert known_dominated(dear, [cheap], estimate, metrics)  # dearer and slower than a perfect config
    assert not known_dominated(cheap, [dear], estimate, metrics)  # cheaper: could be on the front
    assert not known_dominated(dear, [], estimate, metrics)
    # without typed speeds (the formula world's catalog) latency has no estimate: nothing is skipped
    spec = make_spec(tmp_path)
    plain = price_estimate(spec.load_catalog())
    small = MoAConfig.single("w-small-1")
    big = MoAConfig.from_dict({"layers": [[{"model": "w-mid"}, {"model": "w-small-2"}]], "aggregator": {"model": "w-mid"}})
    assert not known_dominated(big, [small], plain, metrics)
    assert known_dominated(big, [small], plain, ("quality", "cost"))
