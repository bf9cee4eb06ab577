"""The study file: one TOML document that says what to search, on what data, judged how, for how much.

Every section and key is checked when the file is loaded, before anything is spent: an unknown
key, a wrong type or an impossible value raises ``ConfigError`` naming ``<file>: <section>.<key>``,
because a typo in a study file (``budget.usd`` spelled ``budget.dollars``) would otherwise silently
run an unbounded study.

Paths inside the file (catalog, data, store) are relative to the file's folder, so a study
directory can be moved or shared. Run outputs default to ``<runs dir>/<name>/optuna.db`` (the
Optuna storage) and ``<runs dir>/<name>/calls.db`` (the call store), where the runs dir is
``./runs`` or the ``--runs-dir`` the caller passes. A study whose storage is PostgreSQL keeps
its call store in the same database by default, so every machine running it shares one cache.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from .catalog import BACKEND_NAMES, Catalog
from .config import BUILTIN_PRESETS, MoAConfig
from .datasets import Dataset, builtin_dataset, load_dataset
from .errors import ConfigError
from .importers import FIELD_OPTIONS, IMPORTERS, ImportOptions, import_file
from .inputs import parse_toml, read_text
from .runner import DegradedPolicy
from .scoring import SCORER_ALIASES, SCORERS, scorer_class
from .space import DEFAULT_ENUMERATION_LIMIT, SearchSpace
from .store_backend import BACKENDS as STORE_BACKENDS

BACKENDS = BACKEND_NAMES  # "sim", "http", "local"
BUILTIN_DATASETS = ("math", "choice", "instruct")
#: Scorer names (and accepted aliases) the scoring module provides.
KNOWN_SCORERS: tuple[str, ...] = tuple(SCORERS) + tuple(SCORER_ALIASES)
#: Scorer constructor arguments the evaluation layer supplies itself, never the study file.
_SCORER_INJECTED = {"self", "call"}
METRICS = ("quality", "cost", "latency")
SAMPLERS = ("nsga2", "tpe", "gp", "random", "grid", "cheapest-first")

ObjectiveMode = Literal["pareto", "constrained"]

_SECTIONS = {"study", "catalog", "data", "scorer", "space", "objectives", "budget", "sampler", "fidelity"}
_REQUIRED_SECTIONS = ("study", "data", "scorer", "space", "budget")
_KEYS = {
    "study": {"name", "seed", "storage", "store", "backend", "description"},
    "catalog": {"path"},
    "data": {"builtin", "path", "source", "format", "baseline", *FIELD_OPTIONS, "dev_fraction",
             "split_seed", "n_items"},
    "scorer": {"name", "options", "degraded"},
    "objectives": {"mode", "metrics", "target", "target_confidence"},
    "budget": {"usd", "calls", "trials"},
    "sampler": {"name", "options"},
    "fidelity": {"enabled", "first_items", "confidence"},
}
#: Options each sampler accepts, with their kind; anything else is a typo.
_SAMPLER_OPTIONS: dict[str, dict[str, str]] = {
    "nsga2": {"population_size": "int>=2", "mutation_prob": "prob", "crossover_prob": "prob",
              "swapping_prob": "prob", "candidates": "int>=1"},
    "tpe": {"n_startup_trials": "int>=0", "n_ei_candidates": "int>=1", "multivariate": "bool",
            "group": "bool", "constant_liar": "bool", "candidates": "int>=1"},
    "gp": {"n_startup_trials": "int>=0", "deterministic_objective": "bool", "candidates": "int>=1"},
    "random": {"candidates": "int>=1"},
    "grid": {},
    "cheapest-first": {"slack": "float>=0"},
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class DataSpec:
    """Which validation set, and which part of it the search may look at.

    ``dev_fraction`` of the items (after a seeded shuffle with ``split_seed``) form the dev split
    the search optimises on; the rest is held out so the final pick can be checked on items the
    search never saw. ``n_items`` subsamples the dev split (cheaper studies). A ``source`` file
    in a benchmark's own layout is kept in ``path`` with its ``source_format`` and is imported
    (``importers``) each time the set is loaded, so no converted copy can go stale.
    """

    builtin: str | None
    path: Path | None
    dev_fraction: float = 1.0
    split_seed: int = 0
    n_items: int | None = None
    source_format: str | None = None
    import_options: ImportOptions = field(default_factory=ImportOptions)

    def load(self) -> Dataset:
        """The whole set: built-in, the project's JSONL, or an imported benchmark file."""
        if self.builtin is not None:
            return builtin_dataset(self.builtin)
        assert self.path is not None  # _data guarantees one of builtin / path / source
        if self.source_format is not None:
            return import_file(self.path, self.source_format, self.import_options)
        return load_dataset(self.path)


@dataclass(frozen=True)
class ScorerSpec:
    """``degraded``: what an item that lost an agent becomes (``runner.DegradedPolicy``). A study
    fails it by default, so a transient fault cannot change which configs the search keeps."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    degraded: DegradedPolicy = DegradedPolicy.FAIL


@dataclass(frozen=True)
class TargetSpec:
    """A quality target: a number, or the measured quality of a baseline config."""

    value: float | None = None
    baseline: str | None = None  # the model id or preset name as written
    baseline_config: MoAConfig | None = None

    @property
    def is_measured(self) -> bool:
        return self.baseline_config is not None


@dataclass(frozen=True)
class ObjectiveSpec:
    """``pareto``: maximise quality and minimise the chosen costs together.
    ``constrained``: minimise cost per item subject to quality >= target."""

    mode: ObjectiveMode = "pareto"
    metrics: tuple[str, ...] = METRICS
    target: TargetSpec | None = None
    target_confidence: float = 0.9

    @property
    def objective_names(self) -> tuple[str, ...]:
        """The values told to Optuna, in order."""
        return ("cost",) if self.mode == "constrained" else self.metrics

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple("maximize" if m == "quality" else "minimize" for m in self.objective_names)


@dataclass(frozen=True)
class BudgetSpec:
    trials: int
    usd: float | None = None
    calls: int | None = None


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "nsga2"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FidelitySpec:
    """Evaluate ``first_items`` first and stop clearly bad configs (rule in ``search``)."""

    enabled: bool = True
    first_items: int = 20
    confidence: float = 0.9


@dataclass(frozen=True)
class StudySpec:
    name: str
    source: str
    seed: int
    backend: str
    storage: str
    run_dir: Path
    call_store: Path | str  # an SQLite file, or a database URL (postgresql://...)
    catalog_path: Path | None
    data: DataSpec
    scorer: ScorerSpec
    space: SearchSpace
    objectives: ObjectiveSpec
    budget: BudgetSpec
    sampler: SamplerSpec
    fidelity: FidelitySpec
    description: str = ""

    def load_catalog(self) -> Catalog:
        return Catalog.load(self.catalog_path) if self.catalog_path else Catalog.default(self.backend)


# ---- loading -------------------------------------------------------------------------------

def load_study_spec(path: str | Path, *, runs_dir: str | Path | None = None) -> StudySpec:
    """Read and validate a study file. ``runs_dir`` defaults to ``./runs``."""
    path = Path(path)
    return parse_study_spec(read_text(path, "study file"), source=str(path), base_dir=path.parent, runs_dir=runs_dir)


def parse_study_spec(text: str, *, source: str, base_dir: str | Path = ".",
                     runs_dir: str | Path | None = None) -> StudySpec:
    """Validate study TOML text; relative paths resolve against ``base_dir``."""
    data = parse_toml(text, source)
    base = Path(base_dir)
    _known(data, _SECTIONS, source, "")
    for section in _REQUIRED_SECTIONS:
        if section not in data:
            raise ConfigError("missing required section", source=source, field=section)
    sections = {name: _section(data, name, source) for name in _SECTIONS}
    for name, keys in _KEYS.items():
        _known(sections[name], keys, source, name)

    st = sections["study"]
    name = _str(st, "study", "name", source)
    if not _NAME_RE.match(name):
        raise ConfigError("expected letters, digits, '.', '_' or '-' (it names the run folder)",
                          source=source, field="study.name")
    seed = _int(st, "study", "seed", source, default=0, lo=0)
    backend = _choice(st, "study", "backend", source, BACKENDS, default="sim")
    description = _str(st, "study", "description", source, default="")
    run_dir = (Path(runs_dir) if runs_dir is not None else Path("runs")).resolve() / name
    storage = _str(st, "study", "storage", source, default="") or f"sqlite:///{run_dir / 'optuna.db'}"
    if "://" not in storage:
        raise ConfigError(f"expected an Optuna storage URL such as sqlite:///path.db, got {storage!r}",
                          source=source, field="study.storage")
    call_store = _call_store(_str(st, "study", "store", source, default=""), storage, run_dir,
                             base, source)

    cat = sections["catalog"]
    catalog_path = _path(cat, "catalog", "path", source, base)
    catalog = Catalog.load(catalog_path) if catalog_path else Catalog.default(backend)

    space = SearchSpace.from_dict(sections["space"], source=source)
    space.check_catalog(catalog)

    budget = _budget(sections["budget"], source)
    objectives = _objectives(sections["objectives"], source, catalog, space)
    return StudySpec(
        name=name, source=source, seed=seed, backend=backend, storage=storage, run_dir=run_dir,
        call_store=call_store, catalog_path=catalog_path,
        data=_data(sections["data"], source, base),
        scorer=_scorer(sections["scorer"], source, catalog),
        space=space,
        objectives=objectives,
        budget=budget,
        sampler=_sampler(sections["sampler"], source, space, objectives),
        fidelity=_fidelity(sections["fidelity"], source),
        description=description,
    )


def _call_store(value: str, storage: str, run_dir: Path, base: Path, source: str) -> Path | str:
    """``[study] store``: a file (relative to the study file) or a database URL. Default: the
    storage's database when that is a server (PostgreSQL), else ``<run dir>/calls.db``."""
    if not value:
        scheme = storage.partition("://")[0].split("+", 1)[0].lower()
        return storage if scheme != "sqlite" and scheme in STORE_BACKENDS else run_dir / "calls.db"
    if "://" in value:
        scheme = value.partition("://")[0].split("+", 1)[0].lower()
        if scheme not in STORE_BACKENDS:
            raise ConfigError(f"expected a file path or a URL with scheme {sorted(STORE_BACKENDS)}, "
                              f"got scheme {scheme!r}", source=source, field="study.store")
        return value
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _data(d: Mapping[str, Any], source: str, base: Path) -> DataSpec:
    if sum(k in d for k in ("builtin", "path", "source")) != 1:
        raise ConfigError("give exactly one of 'builtin' (a built-in set), 'path' (a JSONL file) "
                          "or 'source' with 'format' (a benchmark file to import)",
                          source=source, field="data")
    import_keys = sorted(k for k in ("format", "baseline", *FIELD_OPTIONS) if k in d)
    if import_keys and "source" not in d:
        raise ConfigError(f"{', '.join(import_keys)} go with 'source' (a file to import)",
                          source=source, field="data")
    builtin = _choice(d, "data", "builtin", source, BUILTIN_DATASETS) if "builtin" in d else None
    path = _path(d, "data", "path", source, base) or _path(d, "data", "source", source, base)
    fmt = _choice(d, "data", "format", source, tuple(IMPORTERS)) if "source" in d else None
    options = ImportOptions(_path(d, "data", "baseline", source, base),
                            *(_str(d, "data", k, source, default=None) for k in FIELD_OPTIONS))
    fraction = _float(d, "data", "dev_fraction", source, default=1.0, lo=0.0, hi=1.0, lo_open=True)
    n_items = _int(d, "data", "n_items", source, default=None, lo=1)
    return DataSpec(builtin, path, fraction, _int(d, "data", "split_seed", source, default=0), n_items,
                    fmt, options)


def _scorer(d: Mapping[str, Any], source: str, catalog: Catalog) -> ScorerSpec:
    """Name and options, checked against the scorer's own keyword arguments (as ``make_scorer``
    will call it), so a misspelt option fails at load time with its field."""
    name = _choice(d, "scorer", "name", source, KNOWN_SCORERS)
    options = d.get("options", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"expected a table, got {type(options).__name__}", source=source,
                          field="scorer.options")
    cls = scorer_class(name)
    params = {p: v for p, v in inspect.signature(cls.__init__).parameters.items()
              if p not in _SCORER_INJECTED and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}
    _known(options, set(params), source, "scorer.options")
    for p, v in params.items():
        if v.default is inspect.Parameter.empty and p not in options:
            raise ConfigError(f"scorer {name!r} needs this option", source=source, field=f"scorer.options.{p}")
    if "judge_model" in options:
        value = options["judge_model"]
        if not isinstance(value, str) or value not in catalog:
            raise ConfigError(f"expected a catalog model id, got {value!r}", source=source,
                              field="scorer.options.judge_model")
    degraded = _choice(d, "scorer", "degraded", source, tuple(p.value for p in DegradedPolicy),
                       default=DegradedPolicy.FAIL.value)
    return ScorerSpec(name, dict(options), DegradedPolicy(degraded))


def _objectives(d: Mapping[str, Any], source: str, catalog: Catalog, space: SearchSpace) -> ObjectiveSpec:
    mode = _choice(d, "objectives", "mode", source, ("pareto", "constrained"), default="pareto")
    confidence = _float(d, "objectives", "target_confidence", source, default=0.9, lo=0.5, hi=1.0,
                        lo_open=False, hi_open=True)
    metrics: tuple[str, ...] = METRICS
    if "metrics" in d:
        if mode == "constrained":
            raise ConfigError("'metrics' applies to mode 'pareto'; constrained mode minimises cost",
                              source=source, field="objectives.metrics")
        raw = d["metrics"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"expected a non-empty list of {list(METRICS)}", source=source,
                              field="objectives.metrics")
        for i, m in enumerate(raw):
            if m not in METRICS:
                raise ConfigError(f"expected one of {list(METRICS)}, got {m!r}", source=source,
                                  field=f"objectives.metrics[{i}]")
        if len(set(raw)) != len(raw):
            raise ConfigError("duplicate metric", source=source, field="objectives.metrics")
        if "quality" not in raw:
            raise ConfigError("the metrics must include 'quality'", source=source,
                              field="objectives.metrics")
        metrics = tuple(m for m in METRICS if m in raw)
    target = None
    if "target" in d:
        target = _target(d["target"], source, catalog, space)
    elif mode == "constrained":
        raise ConfigError("constrained mode needs a target (a number or { baseline = ... })",
                          source=source, field="objectives.target")
    return ObjectiveSpec(mode, metrics, target, confidence)


def _target(raw: Any, source: str, catalog: Catalog, space: SearchSpace) -> TargetSpec:
    f = "objectives.target"
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if not math.isfinite(raw) or not 0.0 <= raw <= 1.0:
            raise ConfigError(f"expected a quality in [0, 1] (every scorer reports a fraction: a 50% "
                              f"win rate is 0.5), got {raw}", source=source, field=f)
        return TargetSpec(value=float(raw))
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a number or {{ baseline = \"<model or preset>\" }}, got {raw!r}",
                          source=source, field=f)
    _known(raw, {"baseline"}, source, f)
    name = raw.get("baseline")
    if not isinstance(name, str) or not name:
        raise ConfigError("expected a model id or preset name", source=source, field=f"{f}.baseline")
    if name in BUILTIN_PRESETS:
        config = space.adapt(BUILTIN_PRESETS[name].config)
    elif name in catalog:
        config = MoAConfig.single(name, temperature=space.temperatures[0], max_tokens=space.max_tokens)
    else:
        raise ConfigError(f"unknown baseline {name!r}: not a catalog model nor a preset "
                          f"({sorted(BUILTIN_PRESETS)})", source=source, field=f"{f}.baseline")
    try:
        catalog.check_config(config)
    except ConfigError as exc:
        raise ConfigError(str(exc), source=source, field=f"{f}.baseline") from None
    return TargetSpec(baseline=name, baseline_config=config)


def _budget(d: Mapping[str, Any], source: str) -> BudgetSpec:
    if "trials" not in d:
        raise ConfigError("missing required key (how many trials at most)", source=source,
                          field="budget.trials")
    return BudgetSpec(
        trials=_int(d, "budget", "trials", source, lo=1),
        usd=_float(d, "budget", "usd", source, default=None, lo=0.0, lo_open=True),
        calls=_int(d, "budget", "calls", source, default=None, lo=1),
    )


def _sampler(d: Mapping[str, Any], source: str, space: SearchSpace, objectives: ObjectiveSpec) -> SamplerSpec:
    name = _choice(d, "sampler", "name", source, SAMPLERS, default="tpe")
    options = d.get("options", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"expected a table, got {type(options).__name__}", source=source,
                          field="sampler.options")
    allowed = _SAMPLER_OPTIONS[name]
    _known(options, set(allowed), source, "sampler.options")
    for key, kind in allowed.items():
        if key not in options:
            continue
        if kind == "bool":
            _bool(options, "sampler.options", key, source)
        elif kind == "prob":
            _float(options, "sampler.options", key, source, lo=0.0, hi=1.0)
        elif kind == "float>=0":
            _float(options, "sampler.options", key, source, lo=0.0)
        else:
            _int(options, "sampler.options", key, source, lo=int(kind.split(">=")[1]))
    if name == "gp":
        check_gp_available(source=source)
    if name in ("grid", "cheapest-first") and space.count_configs() > DEFAULT_ENUMERATION_LIMIT:
        raise ConfigError(f"the {name} sampler enumerates every config, but the space holds "
                          f"{space.count_configs()} (limit {DEFAULT_ENUMERATION_LIMIT}); narrow [space] "
                          f"or choose another sampler", source=source, field="sampler.name")
    return SamplerSpec(name, dict(options))


def check_gp_available(*, source: str | None = None) -> None:
    """Optuna's GPSampler needs PyTorch, which moa_search does not install by default."""
    if importlib.util.find_spec("torch") is None:
        raise ConfigError("sampler 'gp' (Optuna's GPSampler) needs PyTorch: run `pip install torch` "
                          "(the CPU build is enough), or choose 'tpe' or 'nsga2'",
                          source=source, field="sampler.name")


def _fidelity(d: Mapping[str, Any], source: str) -> FidelitySpec:
    return FidelitySpec(
        enabled=_bool(d, "fidelity", "enabled", source, default=True),
        first_items=_int(d, "fidelity", "first_items", source, default=20, lo=2),
        confidence=_float(d, "fidelity", "confidence", source, default=0.9, lo=0.5, hi=1.0,
                          hi_open=True),
    )


# ---- typed getters: every error names section.key --------------------------------------------

_MISSING: Any = object()


def _known(d: Mapping[str, Any], allowed: set[str], source: str, section: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        where = f"{section}.{unknown[0]}" if section else unknown[0]
        what = "section" if not section else "key"
        raise ConfigError(f"unknown {what}; expected one of {sorted(allowed)}", source=source, field=where)


def _section(data: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a [{name}] table, got {type(value).__name__}", source=source, field=name)
    return value


def _get(d: Mapping[str, Any], section: str, key: str, source: str, default: Any) -> Any:
    if key in d:
        return d[key]
    if default is _MISSING:
        raise ConfigError("missing required key", source=source, field=f"{section}.{key}")
    return default


def _str(d: Mapping[str, Any], section: str, key: str, source: str, default: Any = _MISSING) -> str:
    value = _get(d, section, key, source, default)
    if value is default and default is not _MISSING:
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"expected a non-empty string, got {value!r}", source=source, field=f"{section}.{key}")
    return value


def _choice(d: Mapping[str, Any], section: str, key: str, source: str, choices: tuple[str, ...],
            default: Any = _MISSING) -> str:
    value = _get(d, section, key, source, default)
    if value not in choices:
        raise ConfigError(f"expected one of {list(choices)}, got {value!r}", source=source,
                          field=f"{section}.{key}")
    return value


def _int(d: Mapping[str, Any], section: str, key: str, source: str, default: Any = _MISSING,
         lo: int | None = None) -> Any:
    value = _get(d, section, key, source, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {value!r}", source=source, field=f"{section}.{key}")
    if lo is not None and value < lo:
        raise ConfigError(f"expected an integer >= {lo}, got {value}", source=source, field=f"{section}.{key}")
    return value


def _float(d: Mapping[str, Any], section: str, key: str, source: str, default: Any = _MISSING,
           lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Any:
    value = _get(d, section, key, source, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"expected a number, got {value!r}", source=source, field=f"{section}.{key}")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"{left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{right}"
        raise ConfigError(f"expected a number in {rng}, got {value}", source=source, field=f"{section}.{key}")
    return float(value)


def _bool(d: Mapping[str, Any], section: str, key: str, source: str, default: Any = _MISSING) -> bool:
    value = _get(d, section, key, source, default)
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {value!r}", source=source, field=f"{section}.{key}")
    return value


def _path(d: Mapping[str, Any], section: str, key: str, source: str, base: Path) -> Path | None:
    if key not in d:
        return None
    value = _str(d, section, key, source)
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)
