"""The samplers a study file can name: Optuna's, plus ``cheapest-first`` (``cost_order``)."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ..config import MoAConfig
from ..errors import ConfigError
from ..space import SearchSpace
from ..study_spec import StudySpec, check_gp_available
from .budget import cost_now, measured_configs, price_estimate
from .cost_order import DEFAULT_SLACK, CheapestFirstSampler, CostEstimate
from .pareto_skip import known_dominated, perfect_configs


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


#: How often a proposal that repeats an evaluated config is redrawn from the study's own
#: sampler (another seed each time) before uniform draws take over.
MODEL_REDRAWS = 8
#: Uniform draws tried after that; on a space the study has not nearly exhausted one suffices.
UNIFORM_REDRAWS = 64

#: Statuses whose config counts as taken: a new proposal of it would only reuse its metrics.
_TAKEN = ("complete", "stopped_early", "duplicate")


def taken_hashes(trials: Sequence[FrozenTrial], baseline_hash: str | None = None) -> set[str]:
    """Configs a new trial should not repeat: evaluated ones (a budget stop says nothing about
    quality, so those may be tried again), the ones other workers are running, the baseline."""
    out = {baseline_hash} if baseline_hash else set()
    for t in trials:
        h = t.user_attrs.get("config_hash")
        if h is None:
            continue
        if t.state == TrialState.RUNNING or (
                t.user_attrs.get("status") in _TAKEN
                and not str(t.user_attrs.get("stopped_early", "")).startswith("budget")):
            out.add(h)
    return out


class _PlanTrial:
    """Answers ``SearchSpace.suggest`` the way ``optuna.Trial`` would, without a storage: the
    sampler's relative draw first, its independent draw for the rest. Lets a sampler look at a
    whole proposal (its config hash) before the real trial records a single parameter."""

    def __init__(self, sampler: optuna.samplers.BaseSampler, study: optuna.Study, trial: FrozenTrial) -> None:
        self._sampler, self._study, self._trial = sampler, study, trial
        self._space = sampler.infer_relative_search_space(study, trial)
        self._relative = sampler.sample_relative(study, trial, self._space) if self._space else {}
        self.params: dict[str, Any] = {}

    def _suggest(self, name: str, dist: BaseDistribution) -> Any:
        if name in self._relative and self._space.get(name) == dist:
            value = self._relative[name]
        else:
            value = self._sampler.sample_independent(self._study, self._trial, name, dist)
        self.params[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(self._suggest(name, IntDistribution(low, high, log=log, step=step)))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._suggest(name, CategoricalDistribution(list(choices)))


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """An Optuna sampler rebuilt for every trial, seeded by how many trials it sampled before,
    which redraws proposals that repeat a config the study already evaluated.

    Why the seeding: a sampler seeded once per process replays its first draws when a study is
    resumed, so the resumed process used to mix the number of existing trials into the seed, and
    an interrupted study then drew other configs than the same study run without a stop. Here
    the k-th sampled trial (trials taken from the queue, such as presets and the retry of an
    interrupted trial, do not count) always gets seed (study seed, worker, k); the samplers keep
    no other state (their history is the storage), so a seeded single-worker study interrupted
    and resumed asks for the same configs as one that ran through.

    Why the redraw: samplers revisit good regions, and the space maps several parameter vectors
    to one config (``SearchSpace`` repairs proposer sets), so on the default study half of the
    trials used to be free repeats, each an Optuna trial (a storage round trip, and a second
    COMPLETE entry of one config in ``best_trials``). With ``space`` given, ``before_trial``
    plans the whole proposal in memory (``_PlanTrial``); a plan whose config is taken is drawn
    again from the same sampler with another seed (``MODEL_REDRAWS`` times), then uniformly
    (``UNIFORM_REDRAWS`` times). The trial then receives the plan. Only when every redraw
    repeats (a space nearly exhausted) does the trial get a repeat, which the loop answers from
    the earlier metrics as a PRUNED ``duplicate``.

    Why ``candidates`` (sampler option, with a ``cost_estimate``): the price of a config is known
    before it runs, and so is the part of it the call store already holds (proposer calls other
    trials made). With ``candidates = n > 1`` the sampler draws up to n new proposals (reseeded,
    as above) and takes the one that is cheapest to evaluate *now* (list estimate times
    ``budget.uncached_share``): among proposals the model rates alike, the cheaper one buys the
    same information for less.

    Why ``pareto`` (the study's Pareto metrics): a proposal that cannot reach the front is redrawn
    unpaid (``known_dominated``)."""

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], seed: int, worker: int,
                 space: SearchSpace | None = None, cost_estimate: CostEstimate | None = None,
                 candidates: int = 1, pareto: Sequence[str] = ()) -> None:
        self._build, self._seed, self._worker, self._space = build, seed, worker, space
        self._cost_estimate, self._candidates = cost_estimate, max(1, candidates)
        self._pareto = tuple(pareto)
        self.known_dominated = 0  # proposals redrawn because a perfect config dominates them
        self._n_items = 0
        self._current = build(_derive(seed, worker, 0))
        self._plan: dict[str, Any] | None = None
        self._baseline: str | None = None
        self._baseline_read = False
        self.redraws = 0  # proposals redrawn by this process (a figure for benchmarks)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        k = sum(1 for t in trials if t.number < trial.number and "fixed_params" not in t.system_attrs)
        self._current = self._build(_derive(self._seed, self._worker, k))
        self._current.before_trial(study, trial)
        self._plan = None
        if self._space is not None and "fixed_params" not in trial.system_attrs:
            if not self._baseline_read:  # fixed before any trial runs (prepare_study)
                attrs = study.user_attrs
                self._baseline = (attrs.get("baseline") or {}).get("config_hash")
                self._n_items = int(attrs.get("n_items") or 0)
                self._baseline_read = True
            self._plan = self._redraw(study, trial, trials, k)

    def _cost_now(self, trials: Sequence[FrozenTrial]) -> Callable[[MoAConfig], float] | None:
        """$ to evaluate a config now (list estimate less what the call store holds), or None."""
        if self._candidates <= 1 or self._cost_estimate is None or not self._n_items:
            return None
        return cost_now(self._cost_estimate, measured_configs(trials), self._n_items)

    def _redraw(self, study: optuna.Study, trial: FrozenTrial, trials: Sequence[FrozenTrial],
                k: int) -> dict[str, Any]:
        """The proposal to plan: the first whose config is not taken, or with ``candidates > 1``
        the cheapest now of up to that many; else the last one drawn."""
        assert self._space is not None
        taken = taken_hashes(trials, self._baseline)
        price_now = self._cost_now(trials)
        perfect = perfect_configs(trials) if self._pareto and self._cost_estimate is not None else []
        params: dict[str, Any] = {}
        best: tuple[float, dict[str, Any]] | None = None
        found = 0
        for attempt in range(MODEL_REDRAWS + UNIFORM_REDRAWS):
            if best is not None and attempt >= MODEL_REDRAWS:
                break
            if attempt == 0:
                sampler = self._current
            elif attempt < MODEL_REDRAWS:
                sampler = self._build(_derive(self._seed, self._worker, k * 1_000 + attempt))
            else:
                sampler = optuna.samplers.RandomSampler(seed=_derive(self._seed, self._worker, k * 1_000 + attempt))
            plan = _PlanTrial(sampler, study, trial)
            config: MoAConfig = self._space.suggest(plan)
            params = plan.params
            if config.config_hash in taken:
                self.redraws += 1
                continue
            if perfect and known_dominated(
                    config, perfect, self._cost_estimate, self._pareto):  # type: ignore[arg-type]
                self.known_dominated += 1
                continue
            if price_now is None:
                return params
            taken.add(config.config_hash)
            cost = price_now(config)
            if best is None or cost < best[0]:
                best = (cost, params)
            found += 1
            if found >= self._candidates:
                break
        return best[1] if best is not None else params

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._plan is not None:
            return {}
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self._plan is not None:
            return {}
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if self._plan is not None and param_name in self._plan:
            return self._plan[param_name]
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._plan = None
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()


def _cost_now_factory(estimate: CostEstimate) -> Callable[[Sequence[FrozenTrial]], Callable[[MoAConfig], float]]:
    """For ``CheapestFirstSampler``: given the trials so far, $ per item to evaluate a config now."""
    def for_trials(trials: Sequence[FrozenTrial]) -> Callable[[MoAConfig], float]:
        measured = measured_configs(trials)
        return cost_now(estimate, measured, max((k for _, k in measured), default=1))
    return for_trials


def build_sampler(spec: StudySpec, *, seed: int, cost_estimate: CostEstimate | None = None,
                  worker: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler named in ``[sampler]``, seeded. Defaults suit studies of tens of trials.
    ``cost_estimate`` (default: the catalog's ``price_estimate``) orders ``cheapest-first``, and
    ``worker`` tells it which of the next cheapest configs this process takes (and varies the
    seeds, so parallel workers do not draw alike)."""
    name, o = spec.sampler.name, dict(spec.sampler.options)
    candidates = int(o.pop("candidates", 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name in PER_TRIAL:
            factory = PER_TRIAL[name]
            factory(spec, o, seed)  # fail now (e.g. gp without torch), not at the first trial

            def build(s: int) -> optuna.samplers.BaseSampler:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return factory(spec, o, s)
            pareto = spec.objectives.metrics if spec.objectives.mode == "pareto" else ()
            if (candidates > 1 or pareto) and cost_estimate is None:
                cost_estimate = price_estimate(spec.load_catalog())
            return TrialSeededSampler(build, seed, worker, spec.space, cost_estimate, candidates, pareto)
        # Built once: both enumerate the space, and neither draws at random beyond its order.
        if name == "cheapest-first":
            estimate = cost_estimate or price_estimate(spec.load_catalog())
            now = _cost_now_factory(estimate) if spec.objectives.mode == "pareto" else None
            return CheapestFirstSampler(spec.space, estimate, slack=float(o.get("slack", DEFAULT_SLACK)),
                                        worker=worker, seed=_derive(seed, worker, 0), cost_now=now)
        if name == "grid":
            return optuna.samplers.GridSampler(spec.space.grid_search_space(), seed=_derive(seed, worker, 0))
    raise ConfigError(f"unknown sampler {name!r}", source=spec.source, field="sampler.name")
