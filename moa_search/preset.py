"""Preset files: a tuned config packed with everything needed to run it somewhere else.

A search ends in a config; a user wants to *take it away*: serve it, run it from a script, hand
it to another runtime. So a preset file carries, besides the config, the catalog entries of the
models it calls (endpoint base URL, the *name* of the env var holding the key, list prices for
input, output and cache-read input tokens, with the price table and date they came from), the
text of the aggregation prompt (so a runtime without moa_search reproduces the messages), and the
provenance of its numbers (which study, trial, validation set and scorer; quality with its CI;
cost and latency; whether they came from the simulated world).

The file is versioned (``"format": "moa-preset/1"``) and validated against a JSON Schema shipped
with the package (``data/preset.schema.json``), so other tools can validate it too. Every error
names the file and the JSON path of the bad field. ``config_hash`` is checked against the config,
so a hand-edited config that forgot its hash is caught instead of silently running as
something else than what the numbers describe.

Keys: only env var *names* are stored. ``write_preset`` also refuses to write a file that would
contain the value of any of those env vars, as a last guard against a key pasted in the wrong
place.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from .catalog import CATALOG_PRICE, Catalog, Endpoint, ModelInfo, SimProfile, family_rules
from .config import MoAConfig, Preset, read_config_data
from .errors import ConfigError
from .inputs import parse_json, read_text, write_text_atomic
from .prompts import TEMPLATES, template_text

PRESET_FORMAT = "moa-preset/1"
_FORMAT_PREFIX = "moa-preset/"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def moa_search_version() -> str:
    """The installed package version, recorded in provenance so numbers can be traced to code."""
    try:
        return metadata.version("moa_search")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "unknown"


# ---- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresetModel:
    """One catalog entry as embedded in a preset: enough to call and price the model."""

    id: str
    base_url: str
    api_key_env: str
    input_price: float  # USD per 1M input tokens
    output_price: float  # USD per 1M output tokens
    context_window: int
    provider: str = ""  # the catalog's endpoint name, kept for readability and cache identity
    sim: SimProfile | None = None  # how the simulated world plays it, when the catalog said
    price_source: str = CATALOG_PRICE  # which price table the prices came from (catalog.ModelInfo)
    price_date: str = ""
    cached_input_price: float | None = None  # per 1M cache-read input tokens; None: input price

    @classmethod
    def from_model_info(cls, info: ModelInfo) -> "PresetModel":
        return cls(info.id, info.endpoint.base_url, info.endpoint.api_key_env, info.input_price,
                   info.output_price, info.context_window, info.endpoint.name, info.sim,
                   info.price_source, info.price_date, info.cached_input_price)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"base_url": self.base_url, "api_key_env": self.api_key_env,
                               "input_price": self.input_price, "output_price": self.output_price,
                               "context_window": self.context_window, "price_source": self.price_source}
        if self.price_date:
            out["price_date"] = self.price_date
        if self.cached_input_price is not None:
            out["cached_input_price"] = self.cached_input_price
        if self.provider:
            out["provider"] = self.provider
        if self.sim is not None:
            out["sim"] = {"skill": self.sim.skill, "ttft_s": self.sim.ttft_s,
                          "tokens_per_s": self.sim.tokens_per_s, "verbosity": self.sim.verbosity}
        return out

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0) -> float:
        """``catalog.ModelInfo.cost`` (one pricing rule): it reads only the three prices, which a
        preset entry has under the same names."""
        return ModelInfo.cost(self, prompt_tokens, completion_tokens, cached_prompt_tokens)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PromptTemplate:
    """The aggregation prompt by id *and* text, so runtimes without moa_search can rebuild it."""

    id: str
    text: str


@dataclass(frozen=True)
class Provenance:
    """Where a preset's numbers came from; a reader must be able to judge and reproduce them."""

    validation_set: str
    scorer: str
    quality: float
    quality_ci: tuple[float, float]
    n_items: int
    cost_usd_per_item: float
    latency_p50_s: float
    latency_p95_s: float
    simulated: bool
    study: str | None = None
    trial: int | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).date().isoformat())
    moa_search_version: str = field(default_factory=moa_search_version)

    def __post_init__(self) -> None:
        object.__setattr__(self, "quality_ci", tuple(self.quality_ci))
        # built in code (by the search) or read from a file: the same rules either way
        error = best_match(_validator("provenance").iter_errors(self.to_dict()))
        if error is not None:
            fld, message = _describe(error)
            raise ConfigError(message, field=f"provenance.{fld}" if fld else "provenance")
        problems = _provenance_problems(self.to_dict())
        if problems:
            fld, message = problems[0]
            raise ConfigError(message, field=f"provenance.{fld}")

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "trial": self.trial, "validation_set": self.validation_set,
                "scorer": self.scorer, "quality": self.quality, "quality_ci": list(self.quality_ci),
                "n_items": self.n_items, "cost_usd_per_item": self.cost_usd_per_item,
                "latency_p50_s": self.latency_p50_s, "latency_p95_s": self.latency_p95_s,
                "simulated": self.simulated, "created_at": self.created_at,
                "moa_search_version": self.moa_search_version}


@dataclass(frozen=True)
class PresetFile:
    """A preset as read from or written to a ``moa-preset/1`` file."""

    name: str
    config: MoAConfig
    models: tuple[PresetModel, ...]
    prompt_template: PromptTemplate
    description: str = ""
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        models = tuple(sorted(self.models, key=lambda m: m.id))
        ids = [m.id for m in models]
        if len(set(ids)) != len(ids):
            raise ConfigError("a model is listed twice", field="models")
        missing = [m for m in self.config.models if m not in ids]
        if missing:
            raise ConfigError(f"the config calls {missing} but the preset embeds no entry for it",
                              field="models")
        if self.prompt_template.id != self.config.prompt_template:
            raise ConfigError(f"template {self.prompt_template.id!r} is not the config's "
                              f"{self.config.prompt_template!r}", field="prompt_template.id")
        object.__setattr__(self, "models", models)

    @property
    def format(self) -> str:
        return PRESET_FORMAT

    @property
    def config_hash(self) -> str:
        return self.config.config_hash

    @property
    def simulated(self) -> bool:
        """Whether the preset's numbers come from the simulated world (say so wherever shown)."""
        return self.provenance is not None and self.provenance.simulated

    def model(self, model_id: str) -> PresetModel:
        for m in self.models:
            if m.id == model_id:
                return m
        raise ConfigError(f"the preset embeds no model {model_id!r}", field="models")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": PRESET_FORMAT,
            "name": self.name,
            "description": self.description,
            "config": self.config.to_dict(),
            "config_hash": self.config.config_hash,
            "models": {m.id: m.to_dict() for m in self.models},
            "prompt_template": {"id": self.prompt_template.id, "text": self.prompt_template.text},
        }
        if self.provenance is not None:
            out["provenance"] = self.provenance.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> "PresetFile":
        return _parse(data, source)


# ---- building ------------------------------------------------------------------------------


def from_config(name: str, config: MoAConfig, catalog: Catalog, provenance: Provenance | None = None,
                *, description: str = "") -> PresetFile:
    """A preset for ``config`` embedding only the catalog entries it calls.

    Fails if the catalog lacks a model or the config's prompt template is unknown, because a
    preset that cannot be run is worse than no preset.
    """
    _check_name(name)
    catalog.check_config(config)
    models = tuple(PresetModel.from_model_info(catalog.get(m)) for m in config.models)
    for m in models:
        _check_base_url(m.base_url, f'models."{m.id}".base_url')
        if m.api_key_env and not _IDENT.match(m.api_key_env):
            raise ConfigError("expected the NAME of an environment variable, e.g. TOGETHER_API_KEY",
                              source=catalog.source, field=f'models."{m.id}".api_key_env')
    template = PromptTemplate(config.prompt_template, template_text(config.prompt_template))
    return PresetFile(name, config, models, template, description, provenance)


def from_builtin(preset: Preset, catalog: Catalog) -> PresetFile:
    """A ``config.Preset`` (e.g. the paper's built-ins) as a preset file."""
    return from_config(preset.name, preset.config, catalog, description=preset.description)


def restyled(preset: PresetFile, *, prompt_style: str | None = None,
             base_url: str | None = None) -> PresetFile:
    """The preset with its agents in another prompt style (a new config: its measured numbers
    are dropped and the description says so) and/or every model at one endpoint (numbers kept,
    as ``serve --base-url`` keeps them)."""
    catalog = preset_catalog(preset)
    if base_url is not None:
        catalog = catalog.with_base_url(base_url)
    config, provenance, description = preset.config, preset.provenance, preset.description
    if prompt_style is not None and prompt_style != config.prompt_style:
        old = config
        config = MoAConfig(old.proposer_layers, old.aggregator, "", prompt_style)
        provenance = None
        description = (f"{description} In prompt_style {prompt_style!r} (config {config.config_hash}, from "
                       f"{old.config_hash} in {old.prompt_style!r}): not measured in this style.").strip()
    if config is preset.config and base_url is None:
        return preset
    return from_config(preset.name, config, catalog, provenance, description=description)


def preset_catalog(preset: PresetFile) -> Catalog:
    """A catalog rebuilt from the preset's own entries, so it runs without the original catalog."""
    endpoints: dict[tuple[str, str, str], Endpoint] = {}
    models: dict[str, ModelInfo] = {}
    for m in preset.models:
        name = m.provider or _host(m.base_url)
        key = (name, m.base_url, m.api_key_env)
        if key not in endpoints:
            taken = {e.name for e in endpoints.values()}
            unique = name if name not in taken else f"{name}-{len(endpoints)}"
            endpoints[key] = Endpoint(unique, m.base_url.rstrip("/"), m.api_key_env)
        models[m.id] = ModelInfo(m.id, endpoints[key], m.input_price, m.output_price,
                                 m.context_window, m.sim, rules=family_rules(m.id), price_source=m.price_source,
                                 price_date=m.price_date, cached_input_price=m.cached_input_price)
    return Catalog(models, f"<preset {preset.name}>", {e.name: e for e in endpoints.values()})


# ---- files ---------------------------------------------------------------------------------


def write_preset(path: str | Path, preset: PresetFile) -> Path:
    """Write atomically (a reader never sees half a file); refuse to write anything key-like."""
    path = Path(path)
    text = preset.to_json()
    for m in preset.models:
        value = os.environ.get(m.api_key_env) if m.api_key_env else None
        if value and len(value) >= 4 and value in text:
            raise ConfigError(f"refusing to write: the file would contain the value of ${m.api_key_env}",
                              source=str(path))
    # the file must be readable back: validate what we are about to write
    _parse(json.loads(text), str(path))
    return write_text_atomic(path, text, "preset")


def load_preset(path: str | Path) -> PresetFile:
    """Read and fully validate a preset file; errors read ``file: json.path: what is wrong``."""
    path = Path(path)
    return _parse(parse_json(read_text(path, "preset"), str(path)), str(path))


def load_config_or_preset(path: str | Path) -> MoAConfig:
    """What ``run`` / ``eval`` / ``compare`` run from a file: a config, or a preset file checked
    exactly as ``serve`` checks it (format version, schema, ``config_hash``). A file carrying a
    ``format`` or ``config_hash`` is a preset; a bare config has neither key."""
    data = read_config_data(path)
    if isinstance(data, Mapping) and ("format" in data or "config_hash" in data):
        return _parse(data, str(path)).config
    from .importers.archon import looks_like_archon
    if looks_like_archon(data):
        raise ConfigError(f"this is an Archon config; import it with: moa-search import {path} --from archon",
                          source=str(path))
    return MoAConfig.from_dict(data, source=str(path))


@lru_cache(maxsize=1)
def preset_schema() -> dict[str, Any]:
    """The shipped JSON Schema (package data), for this module and for other tools."""
    text = resources.files("moa_search").joinpath("data/preset.schema.json").read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=4)
def _validator(definition: str | None = None) -> jsonschema.Draft202012Validator:
    """The whole-file validator, or one for a ``$defs`` entry (e.g. provenance built in code)."""
    schema = preset_schema()
    if definition is not None:
        schema = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    return jsonschema.Draft202012Validator(schema)


# ---- parsing -------------------------------------------------------------------------------


def _parse(data: Any, source: str | None) -> PresetFile:
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a JSON object, got {type(data).__name__}", source=source)
    fmt = data.get("format")
    if fmt is None:
        raise ConfigError(f"not a preset file: no 'format' (expected {PRESET_FORMAT!r})",
                          source=source, field="format")
    if fmt != PRESET_FORMAT:
        if isinstance(fmt, str) and fmt.startswith(_FORMAT_PREFIX):
            raise ConfigError(f"unsupported preset format version {fmt!r}; this moa_search "
                              f"({moa_search_version()}) reads {PRESET_FORMAT!r}",
                              source=source, field="format")
        raise ConfigError(f"not a preset file: format {fmt!r}, expected {PRESET_FORMAT!r}",
                          source=source, field="format")
    error = best_match(_validator().iter_errors(data))
    if error is not None:
        fld, message = _describe(error)
        raise ConfigError(message, source=source, field=fld or None)

    try:
        config = MoAConfig.from_dict(data["config"])
    except ConfigError as exc:
        raise ConfigError(str(exc).split(": ", 1)[-1] if exc.field else str(exc), source=source,
                          field=f"config.{exc.field}" if exc.field else "config") from None
    if data["config_hash"] != config.config_hash:
        raise ConfigError(f"does not match the config (the config hashes to {config.config_hash}, "
                          f"the file says {data['config_hash']}): the config was edited or the file "
                          "is corrupt; re-export it, or fix the hash only if you meant the edit",
                          source=source, field="config_hash")
    models = []
    for model_id, raw in data["models"].items():
        sim = raw.get("sim")
        models.append(PresetModel(
            model_id, raw["base_url"].rstrip("/"), raw["api_key_env"], float(raw["input_price"]),
            float(raw["output_price"]), int(raw["context_window"]), raw.get("provider", ""),
            None if sim is None else SimProfile(float(sim["skill"]), float(sim.get("ttft_s", 0.4)),
                                                float(sim.get("tokens_per_s", 60.0)),
                                                int(sim.get("verbosity", 400))),
            raw.get("price_source", CATALOG_PRICE), raw.get("price_date", ""),
            None if raw.get("cached_input_price") is None else float(raw["cached_input_price"])))
    embedded = {m.id for m in models}
    for model_id in config.models:
        if model_id not in embedded:
            raise ConfigError(f"the config calls {model_id!r} but 'models' has no entry for it",
                              source=source, field="models")
    template = data["prompt_template"]
    if template["id"] != config.prompt_template:
        raise ConfigError(f"{template['id']!r} is not the config's template {config.prompt_template!r}",
                          source=source, field="prompt_template.id")
    if template["id"] in TEMPLATES and template["text"] != TEMPLATES[template["id"]]:
        raise ConfigError(f"differs from the built-in text of {template['id']!r}: a runtime would "
                          "send different messages than the ones this preset was measured with; "
                          "give the edited template a new id", source=source, field="prompt_template.text")
    provenance = None
    if "provenance" in data:
        raw = data["provenance"]
        problems = _provenance_problems(raw)
        if problems:
            fld, message = problems[0]
            raise ConfigError(message, source=source, field=f"provenance.{fld}")
        provenance = Provenance(
            study=raw["study"], trial=raw["trial"], validation_set=raw["validation_set"],
            scorer=raw["scorer"], quality=float(raw["quality"]),
            quality_ci=(float(raw["quality_ci"][0]), float(raw["quality_ci"][1])),
            n_items=raw["n_items"], cost_usd_per_item=float(raw["cost_usd_per_item"]),
            latency_p50_s=float(raw["latency_p50_s"]), latency_p95_s=float(raw["latency_p95_s"]),
            simulated=raw["simulated"], created_at=raw["created_at"],
            moa_search_version=raw["moa_search_version"])
    try:
        return PresetFile(data["name"], config, tuple(models),
                          PromptTemplate(template["id"], template["text"]),
                          data.get("description", ""), provenance)
    except ConfigError as exc:  # defensive: the checks above should have caught it
        raise ConfigError(str(exc).split(": ", 1)[-1], source=source, field=exc.field) from None


def _provenance_problems(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Checks a schema cannot express: ordering of numbers, a parseable date."""
    out: list[tuple[str, str]] = []
    lo, hi = raw["quality_ci"]
    if not lo <= hi:
        out.append(("quality_ci", f"expected [lo, hi] with lo <= hi, got [{lo}, {hi}]"))
    elif not lo <= raw["quality"] <= hi:
        out.append(("quality", f"{raw['quality']} lies outside its own CI [{lo}, {hi}]"))
    if not raw["latency_p50_s"] <= raw["latency_p95_s"]:
        out.append(("latency_p95_s", f"p95 ({raw['latency_p95_s']}) is below p50 ({raw['latency_p50_s']})"))
    created = raw["created_at"]
    try:
        (date.fromisoformat if len(str(created)) == 10 else datetime.fromisoformat)(created)
    except (TypeError, ValueError):
        out.append(("created_at", f"expected an ISO date like 2024-06-01, got {created!r}"))
    return out


def _describe(error: ValidationError) -> tuple[str, str]:
    """A JSON-path field name and a plain message for one schema violation."""
    path = list(error.absolute_path)
    instance = error.instance
    v = error.validator
    if v == "required" and isinstance(instance, Mapping):
        missing = [k for k in error.validator_value if k not in instance]
        return _json_path(path + missing[:1]), "missing required key"
    if v == "additionalProperties" and isinstance(instance, Mapping):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in instance if k not in allowed)
        return _json_path(path + extra[:1]), f"unknown key; expected some of {allowed}"
    last = path[-1] if path else ""
    if v == "pattern":
        if last == "api_key_env":
            return _json_path(path), ("expected the NAME of an environment variable (e.g. "
                                      "TOGETHER_API_KEY), never a key itself")
        if last == "base_url":
            # never echo it: a URL that fails this check may carry a password
            return _json_path(path), "expected an http(s) URL without credentials (no user:pass@)"
        if last == "name":
            return _json_path(path), f"expected a short slug (letters, digits, '.', '_', '-'), got {instance!r}"
        if last == "config_hash":
            return _json_path(path), f"expected 16 hex digits, got {instance!r}"
    if v == "type":
        return _json_path(path), f"expected {_type_name(error.validator_value)}, got {json.dumps(instance)}"
    if v in ("minimum", "maximum", "exclusiveMinimum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">"}[v]
        return _json_path(path), f"expected a number {op} {error.validator_value}, got {instance}"
    if v in ("minItems", "maxItems") and last == "quality_ci":
        return _json_path(path), "expected [lo, hi]"
    if v == "minItems":
        return _json_path(path), "expected a non-empty list"
    return _json_path(path), error.message


def _type_name(t: Any) -> str:
    names = {"string": "a string", "number": "a number", "integer": "an integer",
             "boolean": "true or false", "object": "an object", "array": "a list", "null": "null"}
    if isinstance(t, list):
        return " or ".join(names.get(x, x) for x in t)
    return names.get(t, str(t))


def _json_path(parts: Sequence[Any]) -> str:
    """``config.layers[0][1].temperature``; keys that are not identifiers are quoted."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            key = p if _IDENT.match(str(p)) else json.dumps(p, ensure_ascii=False)
            out += f".{key}" if out else key
    return out


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name):
        raise ConfigError(f"expected a short slug (letters, digits, '.', '_', '-'; <= 64 chars), "
                          f"got {name!r}", field="name")


def _check_base_url(url: str, fld: str) -> None:
    if not re.match(r"^https?://[^\s@/]+(/\S*)?$", url):
        # not echoed: a URL rejected here may carry a password
        raise ConfigError("expected an http(s) URL without credentials (no user:pass@)", field=fld)


def _host(base_url: str) -> str:
    return re.sub(r"^https?://", "", base_url).split("/", 1)[0] or "endpoint"
