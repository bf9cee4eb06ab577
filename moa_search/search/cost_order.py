"""The ``cheapest-first`` sampler: configs in ascending order of estimated cost.

For the question users ask most (the cheapest config that meets a quality target), a sampler
that models quality wastes money: cost per item is known *before* a config runs, from the
catalog's prices and typical answer lengths, and only quality has to be measured. So this
sampler walks the space from the cheapest estimate up. With multi-fidelity on, a config that
cannot reach the target stops as soon as its misses show it (after 4 items at the earliest), and
one clearly below it after ``first_items`` items, so the cheap configs below the target are paid
for only in part; the first config that meets the target (its constraint, set by the study loop
at the study's ``target_confidence``, is satisfied) bounds the walk: configs estimated at more
than ``(1 + slack)`` times its estimate cannot be cheaper, and the study stops. ``slack`` absorbs
the error of the estimate (actual answer lengths differ from the catalog's typical ones).

It is an Optuna sampler, so the storage keeps the whole history: a resumed study goes on where
it stopped, and parallel workers skip configs any worker has taken. Worker ``k`` takes the
``k``-th cheapest config not taken yet (0-based), so N workers that plan at the same instant walk
the N cheapest side by side instead of all drawing the same one.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from ..config import MoAConfig
from ..space import SearchSpace

#: A config's estimated list-price $ per item (``search.price_estimate``).
CostEstimate = Callable[[MoAConfig], float]

DEFAULT_SLACK = 0.1


@dataclass(frozen=True)
class CostOrder:
    """Every config of a space with its estimated $ per item, cheapest first (ties by hash)."""

    configs: tuple[MoAConfig, ...]
    estimates: tuple[float, ...]
    by_hash: Mapping[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_hash", {c.config_hash: e for c, e in zip(self.configs, self.estimates)})

    @classmethod
    def build(cls, space: SearchSpace, estimate: CostEstimate) -> "CostOrder":
        """Raises ``ConfigError`` (from ``enumerate_configs``) for a space too large to enumerate."""
        pairs = sorted(((float(estimate(c)), c.config_hash, c) for c in space.enumerate_configs()),
                       key=lambda p: (p[0], p[1]))
        return cls(tuple(c for _, _, c in pairs), tuple(e for e, _, _ in pairs))

    def next_config(self, taken: Iterable[str], bound: float | None, skip: int = 0) -> MoAConfig | None:
        """The cheapest config not in ``taken`` (hashes already tried) whose estimate is at most
        ``bound`` (None: no bound), passing over ``skip`` such configs (the last one if fewer
        remain); None when there is none."""
        taken = set(taken)
        end = len(self.estimates) if bound is None else bisect.bisect_right(self.estimates, bound)
        found: MoAConfig | None = None
        for config in self.configs[:end]:
            if config.config_hash not in taken:
                found = config
                if skip == 0:
                    break
                skip -= 1
        return found


def _meets_target(t: FrozenTrial) -> bool:
    constraints = t.constraints
    return t.state == TrialState.COMPLETE and bool(constraints) and all(v <= 0 for v in constraints.values())


class CheapestFirstSampler(optuna.samplers.BaseSampler):
    """Plans each new trial as the cheapest config no trial has taken, within the bound.

    Trials record their config's hash in the user attribute ``config_hash`` (the study loop sets
    it right after the parameters are drawn); that is what "taken" means.

    In a Pareto study (no target, so no bound: the budget ends the walk) ``cost_now`` may be
    given: for the trials so far, the $ each config would cost to evaluate *now*, its proposer
    calls that other trials made priced at nothing. The walk then takes the config cheapest now
    (ties in list order): a config that reuses cached proposers measures a point of the front
    for the price of its aggregator. (Measured on sim-demo: more of the front per dollar than
    the list order.) A constrained study keeps the list order, which its bound relies on.
    """

    def __init__(self, space: SearchSpace, estimate: CostEstimate, *, slack: float = DEFAULT_SLACK,
                 worker: int = 0, seed: int | None = None,
                 cost_now: Callable[[Sequence[FrozenTrial]], Callable[[MoAConfig], float]] | None = None) -> None:
        self.space = space
        self.order = CostOrder.build(space, estimate)
        self.cost_now = cost_now
        self.slack = slack
        self.worker = worker
        self._plans: dict[int, dict[str, Any]] = {}  # trial number -> params, this process
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def bound(self, trials: Sequence[FrozenTrial]) -> float | None:
        met = [self.order.by_hash[h] for t in trials
               if _meets_target(t) and (h := t.user_attrs.get("config_hash")) in self.order.by_hash]
        return min(met) * (1 + self.slack) if met else None

    def next_config(self, trials: Sequence[FrozenTrial], skip: int = 0) -> MoAConfig | None:
        taken = {h for t in trials if (h := t.user_attrs.get("config_hash"))}
        taken |= {h for p in self._plans.values() if (h := p.get("__hash__"))}
        bound = self.bound(trials)
        if self.cost_now is not None and bound is None:
            now = self.cost_now(trials)
            left = sorted((now(c), i) for i, c in enumerate(self.order.configs) if c.config_hash not in taken)
            return self.order.configs[left[min(skip, len(left) - 1)][1]] if left else None
        return self.order.next_config(taken, bound, skip)

    def exhausted(self, trials: Sequence[FrozenTrial]) -> str | None:
        """Why the walk is over, or None (the study loop asks before each trial)."""
        if self.next_config(trials) is not None:
            return None
        if self.bound(trials) is not None:
            return (f"cheapest-first: every config estimated at most {1 + self.slack:g}x the cheapest "
                    f"one meeting the target has been tried")
        return "cheapest-first: every config of the space has been tried"

    # -- Optuna's sampler interface --

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "fixed_params" in trial.system_attrs:  # an enqueued trial (a retry) brings its own
            return
        config = self.next_config(study.get_trials(deepcopy=False), skip=self.worker)
        if config is not None:
            params = self.space.config_to_params(config)
            self._plans[trial.number] = {**params, "__hash__": config.config_hash}

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = self._plans.get(trial.number)
        if plan is not None and param_name in plan:
            return plan[param_name]
        # Only when two workers raced for the last config: any draw, the loop then dedupes.
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._plans.pop(trial.number, None)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()
