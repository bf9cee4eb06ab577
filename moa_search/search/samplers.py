"""The samplers a study file can name: Optuna's, plus ``cheapest-first`` (``cost_order``)."""

from __future__ import annotations

import warnings

import optuna

from ..errors import ConfigError
from ..study_spec import StudySpec, check_gp_available
from .budget import price_estimate
from .cost_order import DEFAULT_SLACK, CheapestFirstSampler, CostEstimate


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

