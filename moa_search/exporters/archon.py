"""Archon (ScalingIntelligence/Archon) configs, exported and imported.

Archon runs a list of layers; each layer is a list of components. Only two component types mean
something in a Mixture-of-Agents, and the mapping follows Archon's own ``MoA.json``:

==========================================  ==============================================
moa_search                                  Archon
==========================================  ==============================================
proposer layer 1 (sees only the prompt)     a layer of ``generator`` entries
proposer layer k > 1 (sees layer k-1)       a layer of ``fuser`` entries (Archon allows
                                            generators only in the first layer: a fuser is
                                            what reads the previous layer's candidates)
aggregator                                  a final layer with one ``fuser``, ``samples: 1``
single model (no proposer layers)           one layer with one ``generator``
n identical agents in a layer (Self-MoA)    one entry with ``samples: n``
==========================================  ==============================================

``model_type`` says which of Archon's built-in generators calls the model; it is chosen from the
endpoint's host: api.together.xyz → ``Together_API``, api.openai.com → ``OpenAI_API``,
api.anthropic.com → ``Anthropic_API``, api.groq.com → ``Groq_API``,
generativelanguage.googleapis.com → ``Google_API``. Any other endpoint (vLLM, Ollama, a gateway)
needs an Archon custom generator; pass its name with ``model_types={model: name}``. ``top_k`` is
written as 1, as in Archon's configs (generators and fusers do not read it).

Not carried over, by construction: Archon's fuser uses its own fusion prompt, not this toolkit's
aggregate-and-synthesize template, and adds its own system message; so an exported config makes
the same calls with the same sampling parameters but not byte-identical messages. Per-agent
system prompts have no Archon field and are refused on export.

Import refuses components with no MoA meaning (ranker, critic, verifier, unit test generator /
evaluator, custom components), naming the layer and component, rather than dropping them.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any, Mapping

from ..catalog import Catalog
from ..config import DEFAULT_PROMPT_TEMPLATE, AgentSpec, MoAConfig
from ..errors import ConfigError
from ..preset import PresetFile

HOST_MODEL_TYPES: dict[str, str] = {
    "api.together.xyz": "Together_API",
    "api.together.ai": "Together_API",
    "api.openai.com": "OpenAI_API",
    "api.anthropic.com": "Anthropic_API",
    "api.groq.com": "Groq_API",
    "generativelanguage.googleapis.com": "Google_API",
}

NON_MOA_COMPONENTS: dict[str, str] = {
    "ranker": "it reorders and filters candidates",
    "critic": "it writes critiques of candidates instead of answers",
    "verifier": "it filters candidates by verification",
    "unit_test_generator": "it writes unit tests, not answers",
    "unit_test_evaluator": "it ranks candidates by unit tests",
}

_ENTRY_KEYS = {"type", "model", "model_type", "temperature", "max_tokens", "samples", "top_k",
               "max_context_length"}
"""Accepted on import. ``top_k`` and ``max_context_length`` are not read by Archon's generator
and fuser, so ignoring them changes nothing; anything else (``no_system``, ``length_control``, …)
changes what is sent and is refused."""


def to_archon(preset_or_config: PresetFile | MoAConfig, *, catalog: Catalog | None = None,
              model_types: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Archon config dict. A bare config takes endpoints from ``catalog`` (default: built-in)."""
    if isinstance(preset_or_config, PresetFile):
        config, name = preset_or_config.config, preset_or_config.name
        base_url = lambda m: preset_or_config.model(m).base_url  # noqa: E731
    elif isinstance(preset_or_config, MoAConfig):
        config, name = preset_or_config, f"moa-search-{preset_or_config.config_hash}"
        cat = catalog if catalog is not None else Catalog.default()
        base_url = lambda m: cat.get(m).endpoint.base_url  # noqa: E731
    else:
        raise TypeError(f"expected a PresetFile or MoAConfig, got {type(preset_or_config).__name__}")
    if config.prompt_template != DEFAULT_PROMPT_TEMPLATE:
        raise ConfigError(f"Archon fuses with its own prompt; template {config.prompt_template!r} "
                          "cannot be carried over", field="prompt_template")
    overrides = dict(model_types or {})
    types = {m: overrides.get(m) or _model_type(m, base_url(m)) for m in config.models}

    def entries(kind: str, agents: tuple[AgentSpec, ...], where: str) -> list[dict[str, Any]]:
        out = []
        for agent, group in groupby(agents):  # agents are canonically sorted: equal ones adjacent
            if agent.system_prompt is not None:
                raise ConfigError("Archon has no per-agent system prompt; this agent's cannot be "
                                  "exported", field=f"{where}.system_prompt")
            out.append({"type": kind, "model": agent.model, "model_type": types[agent.model],
                        "top_k": 1, "temperature": agent.temperature,
                        "max_tokens": agent.max_tokens, "samples": len(list(group))})
        return out

    layers = [entries("generator" if i == 0 else "fuser", layer, f"layers[{i}]")
              for i, layer in enumerate(config.proposer_layers)]
    final_kind = "fuser" if config.proposer_layers else "generator"
    layers.append(entries(final_kind, (config.aggregator,), "aggregator"))
    return {"name": name, "layers": layers}


def from_archon(data: Any, *, source: str | None = None) -> MoAConfig:
    """An MoAConfig from an Archon config dict (the current list form or the older
    ``{"branches", "models"}`` layer form). ``model_type`` is checked but not kept: endpoints
    come from the catalog."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected an Archon config object, got {type(data).__name__}", source=source)
    unknown = set(data) - {"name", "layers", "custom"}
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected 'name', 'layers'", source=source)
    if data.get("custom"):
        raise ConfigError("custom Archon components have no MoA meaning", source=source, field="custom")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ConfigError("expected a non-empty list of layers", source=source, field="layers")

    layers: list[list[AgentSpec]] = []
    for i, raw in enumerate(raw_layers):
        components = _layer_components(raw, i, source)
        agents: list[AgentSpec] = []
        for j, entry in enumerate(components):
            kind = _component_kind(entry, i, j, source)
            expected = "generator" if i == 0 else "fuser"
            if kind != expected:
                why = ("the first layer answers the prompt, so it holds generators" if i == 0 else
                       "after the first layer components read the previous layer's candidates, "
                       "which in Archon only a fuser does for MoA")
                raise ConfigError(f"a {kind!r} component here has no MoA meaning: {why}",
                                  source=source, field=f"layers[{i}][{j}]")
            agents.extend(_entry_agents(entry, f"layers[{i}][{j}]", source))
        layers.append(agents)

    final = layers[-1]
    if len(final) != 1:
        raise ConfigError(f"the last layer yields {len(final)} candidates (Archon would return a "
                          "random one); an MoA ends in exactly one aggregator with samples 1",
                          source=source, field=f"layers[{len(layers) - 1}]")
    try:
        return MoAConfig(tuple(tuple(layer) for layer in layers[:-1]), final[0])
    except ConfigError as exc:
        raise ConfigError(str(exc).split(": ", 1)[-1], source=source, field=exc.field) from None


def _model_type(model: str, base_url: str) -> str:
    host = base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    try:
        return HOST_MODEL_TYPES[host]
    except KeyError:
        raise ConfigError(f"{model!r} is served at {base_url}, which none of Archon's built-in "
                          f"generators calls ({sorted(set(HOST_MODEL_TYPES.values()))}); register an "
                          f"Archon custom generator and pass model_types={{{model!r}: 'its name'}}",
                          field="model_type") from None


def _layer_components(raw: Any, i: int, source: str | None) -> list[Any]:
    if isinstance(raw, Mapping):  # Archon's older layer form
        if raw.get("branches", 1) != 1:
            raise ConfigError(f"branches = {raw.get('branches')!r} has no MoA meaning (expected 1)",
                              source=source, field=f"layers[{i}].branches")
        raw = raw.get("models")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("expected a non-empty list of components", source=source, field=f"layers[{i}]")
    return raw


def _component_kind(entry: Any, i: int, j: int, source: str | None) -> str:
    where = f"layers[{i}][{j}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"expected a component object, got {type(entry).__name__}",
                          source=source, field=where)
    kind = entry.get("type")
    if kind in NON_MOA_COMPONENTS:
        raise ConfigError(f"a {kind!r} component has no Mixture-of-Agents meaning "
                          f"({NON_MOA_COMPONENTS[kind]}); MoA layers only generate and fuse",
                          source=source, field=where)
    if kind not in ("generator", "fuser"):
        raise ConfigError(f"component type {kind!r} is not an MoA layer (expected 'generator' or "
                          "'fuser'; custom components cannot be imported)", source=source, field=where)
    return str(kind)


def _entry_agents(entry: Mapping[str, Any], where: str, source: str | None) -> list[AgentSpec]:
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ConfigError(f"unsupported key(s) {sorted(unknown)}: they change what Archon sends and "
                          "have no moa_search equivalent", source=source, field=where)
    model_type = entry.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError("expected a non-empty string", source=source, field=f"{where}.model_type")
    for key in ("temperature", "max_tokens"):
        if key not in entry:
            raise ConfigError("missing required key", source=source, field=f"{where}.{key}")
    samples = entry.get("samples", 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"expected an integer >= 1, got {samples!r}", source=source,
                          field=f"{where}.samples")
    agent = AgentSpec.from_value({k: entry[k] for k in ("model", "temperature", "max_tokens") if k in entry},
                                 field=where, source=source)
    return [agent] * samples
