"""The samplers a study file can name: Optuna's, plus ``cheapest-first`` (``cost_order``)."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError
from ..study_spec import StudySpec, check_gp_available
from .budget import price_estimate
from .cost_order import DEFAULT_SLACK, CheapestFirstSampler, CostEstimate


def nsga2_population(trials: int) -> int:
    """NSGA-II's default population: a quarter of the trial budget, within 4..20."""
    return max(4, min(20, trials // 4))


SamplerFactory = Callable[[StudySpec, Mapping[str, Any], int], optuna.samplers.BaseSampler]


def _nsga2(spec: StudySpec, o: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(
        seed=seed, population_size=o.get("population_size", nsga2_population(spec.budget.trials)),
        mutation_prob=o.get("mutation_prob"), crossover_prob=o.get("crossover_prob", 0.9),
        swapping_prob=o.get("swapping_prob", 0.5))


def _tpe(spec: StudySpec, o: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=o.get("multivariate", True), group=o.get("group", True),
        constant_liar=o.get("constant_liar", True),
        n_startup_trials=o.get("n_startup_trials", 10), n_ei_candidates=o.get("n_ei_candidates", 24))


def _gp(spec: StudySpec, o: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    check_gp_available(source=spec.source)
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=o.get("n_startup_trials", 10),
                                     deterministic_objective=o.get("deterministic_objective", False))


def _random(spec: StudySpec, o: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


#: Optuna's model-based and random samplers: cheap to build, all state in the storage, so they
#: are rebuilt per trial with a seed of their own (``TrialSeededSampler``).
PER_TRIAL: dict[str, SamplerFactory] = {"nsga2": _nsga2, "tpe": _tpe, "gp": _gp, "random": _random}


def _derive(seed: int, worker: int, k: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{worker}|{k}".encode()).digest()[:4], "big")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """An Optuna sampler rebuilt for every trial, seeded by how many trials it sampled before.

    Why: a sampler seeded once per process replays its first draws when a study is resumed, so
    the resumed process used to mix the number of existing trials into the seed, and an
    interrupted study then drew other configs than the same study run without a stop. Here
    the k-th sampled trial (trials taken from the queue, such as presets and the retry of an
    interrupted trial, do not count) always gets seed (study seed, worker, k); the samplers keep
    no other state (their history is the storage), so a seeded single-worker study interrupted
    and resumed asks for the same configs as one that ran through."""

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], seed: int, worker: int) -> None:
        self._build, self._seed, self._worker = build, seed, worker
        self._current = build(_derive(seed, worker, 0))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        k = sum(1 for t in study.get_trials(deepcopy=False)
                if t.number < trial.number and "fixed_params" not in t.system_attrs)
        self._current = self._build(_derive(self._seed, self._worker, k))
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()


def build_sampler(spec: StudySpec, *, seed: int, cost_estimate: CostEstimate | None = None,
                  worker: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler named in ``[sampler]``, seeded. Defaults suit studies of tens of trials.
    ``cost_estimate`` (default: the catalog's ``price_estimate``) orders ``cheapest-first``, and
    ``worker`` tells it which of the next cheapest configs this process takes (and varies the
    seeds, so parallel workers do not draw alike)."""
    name, o = spec.sampler.name, dict(spec.sampler.options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name in PER_TRIAL:
            factory = PER_TRIAL[name]
            factory(spec, o, seed)  # fail now (e.g. gp without torch), not at the first trial

            def build(s: int) -> optuna.samplers.BaseSampler:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return factory(spec, o, s)
            return TrialSeededSampler(build, seed, worker)
        # Built once: both enumerate the space, and neither draws at random beyond its order.
        if name == "cheapest-first":
            return CheapestFirstSampler(spec.space, cost_estimate or price_estimate(spec.load_catalog()),
                                        slack=float(o.get("slack", DEFAULT_SLACK)), worker=worker,
                                        seed=_derive(seed, worker, 0))
        if name == "grid":
            return optuna.samplers.GridSampler(spec.space.grid_search_space(), seed=_derive(seed, worker, 0))
    raise ConfigError(f"unknown sampler {name!r}", source=spec.source, field="sampler.name")
