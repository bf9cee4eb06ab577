"""The model catalog: where each model is served, what it costs, and how the simulated world plays it.

A catalog names endpoints by base URL and the *name* of the environment variable that holds the
key, never the key itself, so a catalog (and every preset built from it) is safe to share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from .config import MoAConfig
from .errors import ConfigError, UnknownModelError
from .inputs import parse_toml, read_text

_PROVIDER_KEYS = {"base_url", "api_key_env"}
_MODEL_KEYS = {"provider", "input_price", "output_price", "context_window", "sim"}
_SIM_KEYS = {"skill", "ttft_s", "tokens_per_s", "verbosity"}


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible API root; ``api_key_env`` may be empty for keyless local servers."""

    name: str
    base_url: str
    api_key_env: str = ""


@dataclass(frozen=True)
class SimProfile:
    """How the simulated world plays a model (see ``providers.simulated``)."""

    skill: float
    ttft_s: float = 0.4
    tokens_per_s: float = 60.0
    verbosity: int = 400


@dataclass(frozen=True)
class ModelInfo:
    id: str
    endpoint: Endpoint
    input_price: float  # USD per 1M input tokens
    output_price: float  # USD per 1M output tokens
    context_window: int
    sim: SimProfile | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1e6


@dataclass(frozen=True)
class Catalog:
    models: Mapping[str, ModelInfo]
    source: str = "<built-in>"
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)

    def get(self, model: str) -> ModelInfo:
        try:
            return self.models[model]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise UnknownModelError(f"unknown model {model!r}; the catalog lists: {known}",
                                    source=self.source) from None

    def __contains__(self, model: object) -> bool:
        return model in self.models

    def check_config(self, config: MoAConfig) -> None:
        """Raise ``UnknownModelError`` naming the first model the catalog lacks."""
        for model in config.models:
            self.get(model)

    def with_base_url(self, base_url: str, api_key_env: str = "") -> "Catalog":
        """Every model routed to one endpoint (a local server, the sim-server), prices kept."""
        endpoint = Endpoint("override", base_url.rstrip("/"), api_key_env)
        models = {k: ModelInfo(m.id, endpoint, m.input_price, m.output_price, m.context_window, m.sim)
                  for k, m in self.models.items()}
        return Catalog(models, self.source, {"override": endpoint})

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def default(cls) -> "Catalog":
        text = resources.files("moa_search").joinpath("data/catalog.toml").read_text("utf-8")
        return cls.from_toml_text(text, source="<built-in catalog>")

    @classmethod
    def load(cls, path: str | Path) -> "Catalog":
        return cls.from_toml_text(read_text(path, "catalog"), source=str(path))

    @classmethod
    def from_toml_text(cls, text: str, *, source: str) -> "Catalog":
        return cls.from_dict(parse_toml(text, source), source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str) -> "Catalog":
        unknown = set(data) - {"providers", "models"}
        if unknown:
            raise ConfigError(f"unknown top-level key(s) {sorted(unknown)}; expected 'providers' and 'models'",
                              source=source)
        endpoints: dict[str, Endpoint] = {}
        for name, raw in _table(data.get("providers", {}), source, "providers").items():
            f = f"providers.{name}"
            raw = _table(raw, source, f)
            _no_unknown(raw, _PROVIDER_KEYS, source, f)
            base_url = _str(raw, "base_url", source, f)
            if not base_url.startswith(("http://", "https://")):
                raise ConfigError(f"expected an http(s) URL, got {base_url!r}", source=source,
                                  field=f"{f}.base_url")
            endpoints[name] = Endpoint(name, base_url.rstrip("/"), str(raw.get("api_key_env", "")))
        models: dict[str, ModelInfo] = {}
        raw_models = _table(data.get("models", {}), source, "models")
        if not raw_models:
            raise ConfigError("the catalog lists no models", source=source, field="models")
        for model_id, raw in raw_models.items():
            f = f'models."{model_id}"'
            raw = _table(raw, source, f)
            _no_unknown(raw, _MODEL_KEYS, source, f)
            provider = _str(raw, "provider", source, f)
            if provider not in endpoints:
                raise ConfigError(f"unknown provider {provider!r}; [providers] defines {sorted(endpoints)}",
                                  source=source, field=f"{f}.provider")
            sim = None
            if "sim" in raw:
                s = _table(raw["sim"], source, f"{f}.sim")
                _no_unknown(s, _SIM_KEYS, source, f"{f}.sim")
                sim = SimProfile(
                    skill=_num(s, "skill", source, f"{f}.sim", lo=0.0, hi=100.0),
                    ttft_s=_num(s, "ttft_s", source, f"{f}.sim", lo=0.0, default=0.4),
                    tokens_per_s=_num(s, "tokens_per_s", source, f"{f}.sim", lo=1e-3, default=60.0),
                    verbosity=int(_num(s, "verbosity", source, f"{f}.sim", lo=1, default=400)),
                )
            models[model_id] = ModelInfo(
                id=model_id,
                endpoint=endpoints[provider],
                input_price=_num(raw, "input_price", source, f, lo=0.0),
                output_price=_num(raw, "output_price", source, f, lo=0.0),
                context_window=int(_num(raw, "context_window", source, f, lo=1, default=8192)),
                sim=sim,
            )
        return cls(models, source, endpoints)


def _table(value: Any, source: str, f: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a table, got {type(value).__name__}", source=source, field=f)
    return value


def _no_unknown(raw: Mapping[str, Any], allowed: set[str], source: str, f: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(allowed)}",
                          source=source, field=f)


def _str(raw: Mapping[str, Any], key: str, source: str, f: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError("expected a non-empty string", source=source, field=f"{f}.{key}")
    return value


_MISSING = object()


def _num(raw: Mapping[str, Any], key: str, source: str, f: str, *, lo: float | None = None,
         hi: float | None = None, default: Any = _MISSING) -> float:
    value = raw.get(key, default)
    if value is _MISSING:
        raise ConfigError("missing required number", source=source, field=f"{f}.{key}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"expected a number, got {value!r}", source=source, field=f"{f}.{key}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"{lo if lo is not None else '-inf'} .. {hi if hi is not None else 'inf'}"
        raise ConfigError(f"expected a number in {rng}, got {value}", source=source, field=f"{f}.{key}")
    return float(value)
