"""Archon (ScalingIntelligence/Archon) configs -> MoA configs, with what Archon really reads.

Archon runs a list of layers, each a list of components. Two component types make a
Mixture-of-Agents: ``generator`` entries in the first layer (they answer the conversation) and
``fuser`` entries after it (each reads the previous layer's candidates). The last layer must
yield one candidate (Archon would return a random one of several). ``samples: n`` is the same
agent n times, in place.

What is accepted is decided by what Archon's code reads, not by what a file happens to hold:

* keys Archon never reads on a generator or fuser (``IGNORED_KEYS``) are accepted, with one
  note each saying why they change nothing; top-level keys other than ``name``, ``layers`` and
  ``custom`` likewise (Archon reads no others), and the older ``{"branches", "models"}`` layer
  form (Archon reads ``models`` only);
* keys that change what is sent (``no_system``, unknown ones) are refused;
* components with no MoA meaning (ranker, critic, verifier, unit tests, custom) are refused,
  naming the component type and its position, before any key of any layer is looked at: the
  real reason comes first.

The imported config has ``prompt_style = "archon"`` (what Archon sends) and keeps the
component order (Archon numbers candidates in that order), unless the file records the style
it was exported with (``moa_search.prompt_style``) or the caller asks for another. Model ids are
matched to the catalog ignoring case (Archon's configs spell ``Llama-3-70B-chat-hf`` and
``Llama-3-70b-chat-hf``); models the catalog lacks are returned with the catalog entry to add.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..catalog import Catalog
from ..config import (
    BUILTIN_PRESETS,
    DEFAULT_PROMPT_STYLE,
    PROMPT_STYLES,
    AgentSpec,
    MoAConfig,
)
from ..errors import ConfigError
from ..inputs import parse_json, read_text

EXPORT_KEY = "moa_search"
"""The top-level key moa-search writes into exported Archon files (Archon never reads it):
``prompt_style``, ``config_hash`` and ``notes``."""

NON_MOA_COMPONENTS: dict[str, str] = {
    "ranker": "it reorders and filters candidates",
    "critic": "it writes critiques of candidates instead of answers",
    "verifier": "it filters candidates by verification",
    "unit_test_generator": "it writes unit tests, not answers",
    "unit_test_evaluator": "it ranks candidates by unit tests",
}

READ_KEYS = frozenset({"type", "model", "model_type", "temperature", "max_tokens", "samples"})
"""What Archon's Generator and Fuser read to build their requests."""

IGNORED_KEYS: dict[str, str] = {
    "top_k": "Archon's Generator and Fuser do not read it",
    "max_context_length": "Archon's Generator does not read it (the line using it is commented out)",
    "top_k_generations": "Archon's Fuser does not read it (the line reading it is commented out)",
    "fuse_generations_count": "Archon's Fuser does not read it",
    "ranker_config": "only a ranker reads it; Archon's Fuser does not",
    "length_contorl": "a misspelling of length_control, which is the key Archon reads",
    "length_control": "Archon's fuser prompt uses it only with critiques, and an MoA has none",
}
"""Keys found on generators and fusers in Archon's own configs that change nothing it sends."""

REFUSED_KEYS: dict[str, str] = {
    "no_system": "Archon then leaves out the first (system) message; moa-search has no equivalent",
}
"""Keys Archon reads that change what it sends; any other unknown key is refused as well."""

TOP_LEVEL_READ = frozenset({"name", "layers", "custom"})


@dataclass(frozen=True)
class ArchonImport:
    """One imported file: the config, a note per thing accepted but not carried over, and the
    models the catalog lacks as (model id, Archon model_type)."""

    name: str
    config: MoAConfig
    notes: tuple[str, ...] = ()
    missing: tuple[tuple[str, str], ...] = ()


def looks_like_archon(data: Any) -> bool:
    """Whether parsed file content is an Archon config (``layers`` of component objects with a
    ``type``), so that commands given one by mistake can say how to import it."""
    if not isinstance(data, Mapping) or not isinstance(data.get("layers"), list):
        return False
    for layer in data["layers"]:
        components = layer.get("models") if isinstance(layer, Mapping) else layer
        if isinstance(components, list) and any(isinstance(c, Mapping) and "type" in c for c in components):
            return True
    return False


def read_archon_file(path: str | Path, catalog: Catalog | None = None, *,
                     prompt_style: str | None = None) -> ArchonImport:
    """``import_archon`` of a JSON file; errors name the file."""
    path = Path(path)
    return import_archon(parse_json(read_text(path, "Archon config"), str(path)), catalog,
                         source=str(path), prompt_style=prompt_style)


def from_archon(data: Any, *, source: str | None = None) -> MoAConfig:
    """The config alone, model ids as written (no catalog)."""
    return import_archon(data, source=source).config


def import_archon(data: Any, catalog: Catalog | None = None, *, source: str | None = None,
                  prompt_style: str | None = None) -> ArchonImport:
    """An Archon config dict (list layers or the older ``{"branches", "models"}`` form) as an
    ``ArchonImport``. ``model_type`` is checked but not kept: endpoints come from the catalog."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected an Archon config object, got {type(data).__name__}", source=source)
    notes: list[str] = []
    layers = _layers(data, source, notes)  # refuses non-MoA components before anything else
    for key in sorted(set(data) - TOP_LEVEL_READ - {EXPORT_KEY}):
        notes.append(f"top-level key {key!r}: Archon does not read it; ignored")
    style = _style(data, prompt_style, source, notes)
    missing: dict[str, str] = {}
    ignored: dict[str, list[str]] = {}
    agent_layers: list[list[AgentSpec]] = []
    for i, layer in enumerate(layers):
        agents: list[AgentSpec] = []
        for j, entry in enumerate(layer):
            agents.extend(_entry_agents(entry, _where(i, j), source, notes, catalog, missing))
            for key in sorted(set(entry) & set(IGNORED_KEYS) - {"top_k"}):  # top_k: on every entry
                ignored.setdefault(key, []).append(_where(i, j))
        agent_layers.append(agents)
    notes[:0] = [f"{key!r} ignored ({', '.join(where)}): {IGNORED_KEYS[key]}"
                 for key, where in ignored.items()]
    final = agent_layers[-1]
    if len(final) != 1:
        raise ConfigError(f"yields {len(final)} candidates (Archon would return a random one); an MoA "
                          "ends in exactly one aggregator with samples 1", source=source,
                          field=f"layer {len(layers)}")
    try:
        config = MoAConfig(tuple(tuple(layer) for layer in agent_layers[:-1]), final[0],
                           prompt_style=style)
    except ConfigError as exc:
        raise ConfigError(str(exc).split(": ", 1)[-1], source=source, field=exc.field) from None
    notes.extend(_builtin_notes(config))
    name = data.get("name")
    return ArchonImport(name if isinstance(name, str) and name.strip() else "", config,
                        tuple(notes), tuple(sorted(missing.items())))


def _where(i: int, j: int) -> str:
    return f"layer {i + 1} component {j + 1}"


def _layers(data: Mapping[str, Any], source: str | None, notes: list[str]) -> list[list[Mapping[str, Any]]]:
    """The components per layer, every type checked first: a ranker anywhere is the reason a
    file is refused, whatever else it holds."""
    if data.get("custom"):
        raise ConfigError("custom Archon components have no MoA meaning", source=source, field="custom")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ConfigError("expected a non-empty list of layers", source=source, field="layers")
    layers: list[list[Mapping[str, Any]]] = []
    for i, raw in enumerate(raw_layers):
        if isinstance(raw, Mapping):  # Archon's older layer form: it reads "models" only
            extra = sorted(set(raw) - {"models"})
            if extra:
                notes.append(f"layer {i + 1}: {extra} of the older layer form: Archon reads only "
                             "'models'; ignored")
            raw = raw.get("models")
        if not isinstance(raw, list) or not raw:
            raise ConfigError("expected a non-empty list of components", source=source, field=f"layer {i + 1}")
        for j, entry in enumerate(raw):
            if not isinstance(entry, Mapping):
                raise ConfigError(f"expected a component object, got {type(entry).__name__}",
                                  source=source, field=_where(i, j))
        layers.append(list(raw))
    for i, layer in enumerate(layers):
        for j, entry in enumerate(layer):
            _check_kind(entry.get("type"), i, j, source)
    return layers


def _check_kind(kind: Any, i: int, j: int, source: str | None) -> None:
    where = _where(i, j)
    if kind in NON_MOA_COMPONENTS:
        raise ConfigError(f"{kind} is not MoA ({NON_MOA_COMPONENTS[kind]}); MoA layers only "
                          "generate and fuse", source=source, field=where)
    if kind not in ("generator", "fuser"):
        raise ConfigError(f"component type {kind!r} is not MoA (expected 'generator' or 'fuser'; "
                          "custom components cannot be imported)", source=source, field=where)
    expected = "generator" if i == 0 else "fuser"
    if kind != expected:
        why = ("the first layer answers the conversation, so it holds generators" if i == 0 else
               "after the first layer a component reads the previous layer's candidates, which "
               "in Archon only a fuser does for MoA")
        raise ConfigError(f"a {kind} here is not MoA: {why}", source=source, field=where)


def _style(data: Mapping[str, Any], asked: str | None, source: str | None, notes: list[str]) -> str:
    recorded = data.get(EXPORT_KEY, {})
    if not isinstance(recorded, Mapping):
        raise ConfigError("expected an object (written by moa-search export)", source=source, field=EXPORT_KEY)
    style = recorded.get("prompt_style", "archon")
    if style not in PROMPT_STYLES:
        raise ConfigError(f"expected one of {list(PROMPT_STYLES)}, got {style!r}", source=source,
                          field=f"{EXPORT_KEY}.prompt_style")
    if asked is not None and asked not in PROMPT_STYLES:
        raise ConfigError(f"expected one of {list(PROMPT_STYLES)}, got {asked!r}", field="--prompt-style")
    if asked is not None and asked != style:
        notes.append(f"imported with prompt_style {asked!r} as asked; run by Archon this file sends "
                     f"{style!r}-style prompts")
        return asked
    if style != "archon":
        notes.append(f"the file records prompt_style {style!r} (exported with --allow-prompt-change); "
                     "kept, so the config is the one that was exported")
    return style


def _entry_agents(entry: Mapping[str, Any], where: str, source: str | None, notes: list[str],
                  catalog: Catalog | None, missing: dict[str, str]) -> list[AgentSpec]:
    changing = sorted(set(entry) - READ_KEYS - set(IGNORED_KEYS))
    known = [key for key in changing if key in REFUSED_KEYS]
    if known:
        raise ConfigError(f"{known[0]!r}: {REFUSED_KEYS[known[0]]}", source=source, field=where)
    if changing:
        raise ConfigError(f"unsupported key(s) {changing}: Archon may send something else because of "
                          "them, and moa-search has no equivalent", source=source, field=where)
    model_type = entry.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError("expected a non-empty string", source=source, field=f"{where}.model_type")
    for key in ("model", "temperature", "max_tokens"):
        if key not in entry:
            raise ConfigError("missing required key", source=source, field=f"{where}.{key}")
    samples = entry.get("samples", 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"expected an integer >= 1, got {samples!r}", source=source,
                          field=f"{where}.samples")
    fields = {k: entry[k] for k in ("model", "temperature", "max_tokens")}
    if catalog is not None and isinstance(fields["model"], str):
        fields["model"] = _catalog_id(fields["model"], model_type, where, catalog, notes, missing)
    agent = AgentSpec.from_value(fields, field=where, source=source)
    return [agent] * samples


def _catalog_id(model: str, model_type: str, where: str, catalog: Catalog, notes: list[str],
                missing: dict[str, str]) -> str:
    if model in catalog:
        return model
    matches = [m for m in catalog.models if m.lower() == model.lower()]
    if len(matches) == 1:
        notes.append(f"{where}: model {model!r} is {matches[0]!r} in the catalog (matched ignoring case)")
        return matches[0]
    missing.setdefault(model, model_type)
    return model


def _builtin_notes(config: MoAConfig) -> list[str]:
    """Say so when the agents are exactly a built-in preset's (which is in the 'moa' style)."""
    as_moa = MoAConfig(config.proposer_layers, config.aggregator)
    return [f"the same agents as built-in preset {name!r} (prompt_style {DEFAULT_PROMPT_STYLE!r}"
            f"{'' if config.prompt_style == DEFAULT_PROMPT_STYLE else '; this import keeps archon'})"
            for name, preset in BUILTIN_PRESETS.items() if preset.config == as_moa]


# ---- what to add to a catalog -------------------------------------------------------------

ARCHON_PROVIDERS: dict[str, str] = {"Together_API": "together", "OpenAI_API": "openai",
                                    "Groq_API": "groq"}
"""Archon model_type -> the catalog provider name that serves it (those ``catalog add`` knows)."""


def catalog_entries(missing: tuple[tuple[str, str], ...]) -> list[str]:
    """Catalog TOML to add for each missing model (a price from the offline price database
    when it knows the model, else prices to fill in), or a line saying why there is none."""
    from .. import price_db
    out: list[str] = []
    for model, model_type in missing:
        provider = ARCHON_PROVIDERS.get(model_type)
        if provider is None:
            out.append(f'# {model}: model_type {model_type!r} has no OpenAI-compatible provider here; '
                       'add a [providers.NAME] with its base_url and a [models."..."] entry')
            continue
        try:
            price_db.lookup(provider, model)
            price = f'price = "{price_db.DATABASE}"'
        except ConfigError:
            price = "input_price = 0.0  # USD per 1M tokens: fill in\noutput_price = 0.0  # fill in"
        out.append(f'[models."{model}"]\nprovider = "{provider}"\n{price}')
    return out
