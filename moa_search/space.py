"""The search space: which MoA configs a study may try, and how Optuna parameters map onto them.

Shape (the paper's): ``layers`` counts the aggregator's layer, so 1 is a single model and
``layers - 1`` proposer layers precede the aggregator; every proposer layer holds the *same*
proposer set, as in the paper's MoA, MoA-Lite and MoA w/ GPT-4o.

Parameterisation (why it looks like this):

* Distinct proposers are chosen with one boolean per model (``use:<model id>``), not with an
  ordered list of slots. A set has no order, so slots would give the sampler ``n!`` spellings of
  the same config; booleans give one, and let NSGA-II's crossover and TPE's multivariate model
  learn "including model X helps" directly.
* When the booleans pick fewer or more models than ``proposers`` allows, the set is *repaired*
  deterministically: models are added or dropped in an order derived from a hash of the picked
  set itself. Repair therefore depends on the set only (not on how models are listed), and it is
  not biased towards the first models of the list. Several parameter vectors can thus denote one
  config; the search detects such effective duplicates by ``MoAConfig.config_hash``, never by
  parameters.
* Self-MoA ("same": one model sampled ``n`` times) uses ``self_model`` and ``n_proposers``;
  mode "both" adds a ``proposer_mode`` choice. With one proposer the two modes coincide and
  produce the same config hash.
* ``prompt_styles`` (default ``["moa"]``) lists the prompt styles to try; a ``prompt_style``
  parameter is suggested only when there are several, so studies without the key keep their
  parameters (and their stored trials) exactly. Archon-style proposers are in the sorted order
  the set gets here, and that order is part of the config.
* The grid sampler needs a Cartesian product, which conditional parameters are not; for it the
  space offers an *indexed* encoding: one categorical ``config`` whose choices are the hashes
  of ``enumerate_configs()``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Sequence

from .config import (DEFAULT_MAX_TOKENS, DEFAULT_PROMPT_STYLE, DEFAULT_TEMPERATURE, PROMPT_STYLES, AgentSpec,
                     MoAConfig)
from .errors import ConfigError

if TYPE_CHECKING:  # optuna is only needed by callers that actually suggest
    import optuna

    from .catalog import Catalog

ProposerMode = Literal["distinct", "same", "both"]
PROPOSER_MODES: tuple[str, ...] = ("distinct", "same", "both")

#: Parameter names. Kept as constants because enqueued params and stored trials depend on them.
P_LAYERS = "layers"
P_AGGREGATOR = "aggregator"
P_TEMPERATURE = "temperature"
P_MODE = "proposer_mode"
P_SELF_MODEL = "self_model"
P_N_PROPOSERS = "n_proposers"
P_USE_PREFIX = "use:"
P_STYLE = "prompt_style"
P_GRID = "config"

DEFAULT_ENUMERATION_LIMIT = 20_000

_SPACE_KEYS = {"models", "aggregators", "layers", "proposers", "proposer_mode", "temperatures",
               "max_tokens", "prompt_styles"}


class OutsideSpaceError(ConfigError):
    """A known config (a preset, a baseline) that the space cannot express; the message says why."""


@dataclass(frozen=True)
class SearchSpace:
    """The set of configs a study may suggest. Validated on construction (see ``from_dict``)."""

    models: tuple[str, ...]
    aggregators: tuple[str, ...]
    layers: tuple[int, int] = (1, 3)
    proposers: tuple[int, int] = (1, 6)
    proposer_mode: ProposerMode = "distinct"
    temperatures: tuple[float, ...] = (DEFAULT_TEMPERATURE,)
    max_tokens: int = DEFAULT_MAX_TOKENS
    source: str | None = None
    prompt_styles: tuple[str, ...] = (DEFAULT_PROMPT_STYLE,)

    def __post_init__(self) -> None:
        src = self.source
        object.__setattr__(self, "models", _ids(self.models, "space.models", src, allow_empty=True))
        object.__setattr__(self, "aggregators", _ids(self.aggregators, "space.aggregators", src))
        object.__setattr__(self, "layers", _range(self.layers, "space.layers", src))
        object.__setattr__(self, "proposers", _range(self.proposers, "space.proposers", src))
        if self.proposer_mode not in PROPOSER_MODES:
            raise ConfigError(f"expected one of {list(PROPOSER_MODES)}, got {self.proposer_mode!r}",
                              source=src, field="space.proposer_mode")
        temps = self.temperatures
        if not isinstance(temps, (tuple, list)) or not temps:
            raise ConfigError("expected a non-empty list of temperatures", source=src,
                              field="space.temperatures")
        clean: list[float] = []
        for i, t in enumerate(temps):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 2.0:
                raise ConfigError(f"expected a number in 0 .. 2, got {t!r}", source=src,
                                  field=f"space.temperatures[{i}]")
            if float(t) in clean:
                raise ConfigError(f"duplicate temperature {t}", source=src, field=f"space.temperatures[{i}]")
            clean.append(float(t))
        object.__setattr__(self, "temperatures", tuple(clean))
        styles = self.prompt_styles
        if not isinstance(styles, (tuple, list)) or not styles:
            raise ConfigError("expected a non-empty list of prompt styles", source=src,
                              field="space.prompt_styles")
        for i, style in enumerate(styles):
            if not isinstance(style, str) or style not in PROMPT_STYLES or style in styles[:i]:
                raise ConfigError(f"expected distinct values of {list(PROMPT_STYLES)}, got {style!r}",
                                  source=src, field=f"space.prompt_styles[{i}]")
        object.__setattr__(self, "prompt_styles", tuple(styles))
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or not (
                1 <= self.max_tokens <= 1_000_000):
            raise ConfigError(f"expected an integer in 1 .. 1000000, got {self.max_tokens!r}",
                              source=src, field="space.max_tokens")
        if self.layers[1] > 1:  # proposers are actually used
            if not self.models:
                raise ConfigError("layers > 1 needs at least one proposer model", source=src,
                                  field="space.models")
            lo, hi = self.proposers
            n = len(self.models)
            if self.proposer_mode == "distinct" and hi > n:
                raise ConfigError(f"max {hi} distinct proposers but only {n} model(s) listed; lower "
                                  f"the max or use proposer_mode 'same'/'both'", source=src,
                                  field="space.proposers")
            if self.proposer_mode == "both" and lo > n:
                raise ConfigError(f"min {lo} distinct proposers but only {n} model(s) listed",
                                  source=src, field="space.proposers")

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> "SearchSpace":
        """Build from the ``[space]`` table of a study file; every problem names ``space.<key>``."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a table, got {type(data).__name__}", source=source, field="space")
        unknown = sorted(set(data) - _SPACE_KEYS)
        if unknown:
            raise ConfigError(f"unknown key; expected some of {sorted(_SPACE_KEYS)}",
                              source=source, field=f"space.{unknown[0]}")
        for key in ("aggregators",):
            if key not in data:
                raise ConfigError("missing required key", source=source, field=f"space.{key}")
        kwargs: dict[str, Any] = {"source": source}
        for key in ("models", "aggregators", "temperatures", "prompt_styles"):
            if key in data:
                value = data[key]
                if not isinstance(value, list):
                    raise ConfigError(f"expected a list, got {type(value).__name__}", source=source,
                                      field=f"space.{key}")
                kwargs[key] = tuple(value)
        for key in ("layers", "proposers"):
            if key in data:
                value = data[key]
                kwargs[key] = (value, value) if isinstance(value, int) and not isinstance(value, bool) \
                    else tuple(value) if isinstance(value, list) else value
        for key in ("proposer_mode", "max_tokens"):
            if key in data:
                kwargs[key] = data[key]
        return cls(**kwargs)

    def check_catalog(self, catalog: "Catalog") -> None:
        """Every model named by the space must be in the catalog (field: ``space.models[i]``)."""
        for key, ids in (("models", self.models), ("aggregators", self.aggregators)):
            for i, model in enumerate(ids):
                if model not in catalog:
                    known = ", ".join(sorted(catalog.models))
                    raise ConfigError(f"unknown model {model!r}; the catalog ({catalog.source}) lists: {known}",
                                      source=self.source, field=f"space.{key}[{i}]")
                # a model that only runs at its default temperature would make the search's
                # temperature axis a fiction: refused rather than silently ignored
                if len(self.temperatures) > 1 and catalog.get(model).rules.temperature == "default-only":
                    raise ConfigError(f"model {model!r} takes only its default temperature (catalog: temperature = "
                                      f"\"default-only\"); give one value in space.temperatures or drop the model",
                                      source=self.source, field="space.temperatures")

    # ---- shape helpers -------------------------------------------------------------------

    def _distinct_range(self) -> tuple[int, int] | None:
        if self.proposer_mode == "same":
            return None
        lo, hi = self.proposers[0], min(self.proposers[1], len(self.models))
        return (lo, hi) if lo <= hi else None

    def _agent(self, model: str, temperature: float) -> AgentSpec:
        return AgentSpec(model, temperature=temperature, max_tokens=self.max_tokens)

    def _build(self, layers: int, aggregator: str, temperature: float,
               proposers: Sequence[str], style: str = DEFAULT_PROMPT_STYLE) -> MoAConfig:
        agg = self._agent(aggregator, temperature)
        if layers == 1:
            return MoAConfig((), agg, prompt_style=style)
        layer = tuple(self._agent(m, temperature) for m in proposers)
        return MoAConfig((layer,) * (layers - 1), agg, prompt_style=style)

    def _suggest_style(self, trial: "optuna.trial.BaseTrial") -> str:
        if len(self.prompt_styles) == 1:
            return self.prompt_styles[0]
        return str(trial.suggest_categorical(P_STYLE, list(self.prompt_styles)))

    # ---- Optuna suggestions ----------------------------------------------------------------

    def suggest(self, trial: "optuna.trial.BaseTrial") -> MoAConfig:
        """Ask the trial for parameters and build the config they denote (see module docstring)."""
        layers = trial.suggest_int(P_LAYERS, self.layers[0], self.layers[1])
        aggregator = trial.suggest_categorical(P_AGGREGATOR, list(self.aggregators))
        temperature = trial.suggest_categorical(P_TEMPERATURE, list(self.temperatures))
        style = self._suggest_style(trial)
        if layers == 1:
            return self._build(1, aggregator, temperature, (), style)
        mode = self.proposer_mode
        if mode == "both":
            mode = trial.suggest_categorical(P_MODE, ["distinct", "same"])
        if mode == "same":
            model = trial.suggest_categorical(P_SELF_MODEL, list(self.models))
            n = trial.suggest_int(P_N_PROPOSERS, self.proposers[0], self.proposers[1])
            return self._build(layers, aggregator, temperature, [model] * n, style)
        picked = [m for m in self.models if trial.suggest_categorical(P_USE_PREFIX + m, [False, True])]
        return self._build(layers, aggregator, temperature, self.repair(picked), style)

    def repair(self, picked: Sequence[str]) -> tuple[str, ...]:
        """Bring a distinct proposer set within ``proposers`` bounds, deterministically.

        The add/drop order is a hash of the picked *set* and each model id, so the result does
        not depend on list order and does not favour any model systematically.
        """
        rng = self._distinct_range()
        if rng is None:
            raise ConfigError("this space has no distinct proposer sets", source=self.source,
                              field="space.proposer_mode")
        lo, hi = rng
        chosen = sorted(set(picked))
        if lo <= len(chosen) <= hi:
            return tuple(chosen)
        salt = ",".join(chosen)

        def order(model: str) -> str:
            return hashlib.sha256(f"{salt}|{model}".encode()).hexdigest()

        if len(chosen) > hi:
            return tuple(sorted(sorted(chosen, key=order)[:hi]))
        missing = sorted((m for m in self.models if m not in chosen), key=order)
        return tuple(sorted(chosen + missing[: lo - len(chosen)]))

    def grid_search_space(self, limit: int = DEFAULT_ENUMERATION_LIMIT) -> dict[str, list[str]]:
        """The indexed encoding for ``optuna.samplers.GridSampler``: one choice per distinct config."""
        return {P_GRID: [c.config_hash for c in self.enumerate_configs(limit)]}

    def suggest_indexed(self, trial: "optuna.trial.BaseTrial",
                        limit: int = DEFAULT_ENUMERATION_LIMIT) -> MoAConfig:
        """Suggest through the indexed encoding (grid sampler): the config whose hash is chosen."""
        configs = {c.config_hash: c for c in self.enumerate_configs(limit)}
        chosen = trial.suggest_categorical(P_GRID, list(configs))
        return configs[chosen]

    # ---- known configs -> params -------------------------------------------------------------

    def explain_outside(self, config: MoAConfig) -> str | None:
        """Why ``config`` is not in this space, or None when it is."""
        if not self.layers[0] <= config.n_layers <= self.layers[1]:
            return f"{config.n_layers} layer(s), the space allows {self.layers[0]}..{self.layers[1]}"
        if config.prompt_style not in self.prompt_styles:
            return f"prompt style {config.prompt_style!r} is not among {list(self.prompt_styles)}"
        if config.prompt_template != PROMPT_STYLES[config.prompt_style]:
            return f"prompt template {config.prompt_template!r} is not searched"
        agents = [config.aggregator] + [a for layer in config.proposer_layers for a in layer]
        temps = {a.temperature for a in agents}
        if len(temps) != 1 or next(iter(temps)) not in self.temperatures:
            return f"temperature(s) {sorted(temps)} not one value of {list(self.temperatures)}"
        if any(a.max_tokens != self.max_tokens for a in agents):
            return f"max_tokens differs from the space's {self.max_tokens}"
        if any(a.system_prompt is not None for a in agents):
            return "agents with a custom system prompt are not searched"
        if config.aggregator.model not in self.aggregators:
            return f"aggregator {config.aggregator.model!r} is not among the space's aggregators"
        if not config.proposer_layers:
            return None
        first = config.proposer_layers[0]
        if config.prompt_style != DEFAULT_PROMPT_STYLE and list(first) != sorted(first, key=AgentSpec.sort_key):
            return "proposers out of the sorted order the space builds (the order matters in this style)"
        if any(layer != first for layer in config.proposer_layers):
            return "proposer layers differ (the space uses one proposer set for every layer)"
        models = [a.model for a in first]
        outside = sorted({m for m in models if m not in self.models})
        if outside:
            return f"proposer(s) {outside} not among the space's models"
        n = len(models)
        if len(set(models)) == 1 and self.proposer_mode in ("same", "both"):
            if self.proposers[0] <= n <= self.proposers[1]:
                return None
        if len(set(models)) == n:
            rng = self._distinct_range()
            if rng and rng[0] <= n <= rng[1]:
                return None
            if rng is None and n > 1:
                return "distinct proposers, but the space's proposer_mode is 'same'"
        elif len(set(models)) > 1:
            return "a proposer layer that repeats some models but not all is not searched"
        return f"{n} proposer(s), the space allows {self.proposers[0]}..{self.proposers[1]} " \
               f"in mode {self.proposer_mode!r}"

    def contains(self, config: MoAConfig) -> bool:
        return self.explain_outside(config) is None

    def config_to_params(self, config: MoAConfig, *, indexed: bool = False) -> dict[str, Any]:
        """Parameters that make ``suggest`` (or ``suggest_indexed``) return exactly ``config``.

        Used with ``study.enqueue_trial`` to put presets and single models first. The mapping is
        canonical: equal configs (any proposer order) give equal params. Raises
        ``OutsideSpaceError`` with the reason when the space cannot express the config.
        """
        reason = self.explain_outside(config)
        if reason is not None:
            raise OutsideSpaceError(f"{config.summary()}: {reason}", source=self.source, field="space")
        if indexed:
            return {P_GRID: config.config_hash}
        params: dict[str, Any] = {P_LAYERS: config.n_layers, P_AGGREGATOR: config.aggregator.model,
                                  P_TEMPERATURE: config.aggregator.temperature}
        if len(self.prompt_styles) > 1:
            params[P_STYLE] = config.prompt_style
        if not config.proposer_layers:
            return params
        models = [a.model for a in config.proposer_layers[0]]
        same = len(models) > 1 and len(set(models)) == 1 or (
            len(models) == 1 and self.proposer_mode == "same")
        if self.proposer_mode == "both":
            params[P_MODE] = "same" if same else "distinct"
        if same:
            params[P_SELF_MODEL] = models[0]
            params[P_N_PROPOSERS] = len(models)
        else:
            for m in self.models:
                params[P_USE_PREFIX + m] = m in models
        return params

    def adapt(self, config: MoAConfig) -> MoAConfig:
        """The same structure with this space's sampling parameters (first temperature, max_tokens)
        and, when the space does not search the config's prompt style, its first style.

        Why: the paper's presets use temperature 0.7 and 2048 tokens; a space searching at other
        settings still wants their *structure* as a starting point.
        """
        temperature = config.aggregator.temperature
        if temperature not in self.temperatures:
            temperature = self.temperatures[0]

        def fix(agent: AgentSpec) -> AgentSpec:
            return replace(agent, temperature=temperature, max_tokens=self.max_tokens)

        style, template = config.prompt_style, config.prompt_template
        if style not in self.prompt_styles:  # the structure, in the style the space searches
            style, template = self.prompt_styles[0], ""
        return MoAConfig(tuple(tuple(fix(a) for a in layer) for layer in config.proposer_layers),
                         fix(config.aggregator), template, style)

    # ---- enumeration ---------------------------------------------------------------------

    def _proposer_sets(self) -> Iterator[tuple[str, ...]]:
        seen: set[tuple[str, ...]] = set()
        rng = self._distinct_range()
        if rng:
            for n in range(rng[0], rng[1] + 1):
                for combo in itertools.combinations(sorted(self.models), n):
                    seen.add(combo)
                    yield combo
        if self.proposer_mode in ("same", "both"):
            for model in sorted(self.models):
                for n in range(self.proposers[0], self.proposers[1] + 1):
                    combo = (model,) * n
                    if combo not in seen:
                        yield combo

    def count_configs(self) -> int:
        """How many distinct configs the space holds, computed without enumerating them."""
        n_sets = 0
        rng = self._distinct_range()
        m = len(self.models)
        if rng:
            n_sets += sum(math.comb(m, k) for k in range(rng[0], rng[1] + 1))
        if self.proposer_mode in ("same", "both"):
            per_model = self.proposers[1] - self.proposers[0] + 1
            overlap = 1 if (rng and rng[0] <= 1 and self.proposers[0] <= 1) else 0
            n_sets += m * (per_model - overlap)
        deep_layers = max(0, self.layers[1] - max(self.layers[0], 2) + 1)
        singles = 1 if self.layers[0] == 1 else 0
        per_head = len(self.aggregators) * len(self.temperatures) * len(self.prompt_styles)
        return per_head * (singles + deep_layers * n_sets)

    def enumerate_configs(self, limit: int = DEFAULT_ENUMERATION_LIMIT) -> list[MoAConfig]:
        """Every distinct config of the space, in a stable order; ``ConfigError`` past ``limit``."""
        total = self.count_configs()
        if total > limit:
            raise ConfigError(f"the space holds {total} configs, more than the limit of {limit} for "
                              f"exhaustive enumeration (grid sampler, benchmarks); narrow the space "
                              f"or use another sampler", source=self.source, field="space")
        out: list[MoAConfig] = []
        seen: set[str] = set()
        sets = list(self._proposer_sets())
        for layers in range(self.layers[0], self.layers[1] + 1):
            for aggregator in self.aggregators:
                for temperature in self.temperatures:
                    for style in self.prompt_styles:
                        for proposers in (sets if layers > 1 else [()]):
                            config = self._build(layers, aggregator, temperature, proposers, style)
                            if config.config_hash not in seen:
                                seen.add(config.config_hash)
                                out.append(config)
        return out


def _ids(value: Any, field: str, source: str | None, *, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, (tuple, list)):
        raise ConfigError(f"expected a list of model ids, got {type(value).__name__}", source=source,
                          field=field)
    if not value and not allow_empty:
        raise ConfigError("expected at least one model id", source=source, field=field)
    out: list[str] = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"expected a model id, got {v!r}", source=source, field=f"{field}[{i}]")
        if v in out:
            raise ConfigError(f"duplicate model {v!r}", source=source, field=f"{field}[{i}]")
        out.append(v)
    return tuple(out)


def _range(value: Any, field: str, source: str | None) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"expected [min, max] or one integer, got {value!r}", source=source, field=field)
    lo, hi = value
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"expected integers, got {v!r}", source=source, field=field)
    if lo < 1:
        raise ConfigError(f"expected min >= 1, got {lo}", source=source, field=field)
    if lo > hi:
        raise ConfigError(f"min {lo} > max {hi}", source=source, field=field)
    return (lo, hi)
