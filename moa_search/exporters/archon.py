"""Archon (ScalingIntelligence/Archon) configs, exported; importing is ``importers.archon``.

Archon runs a list of layers; each layer is a list of components. The mapping follows Archon's
own ``MoA.json``:

==========================================  ==============================================
moa_search                                  Archon
==========================================  ==============================================
proposer layer 1 (sees only the prompt)     a layer of ``generator`` entries
proposer layer k > 1 (sees layer k-1)       a layer of ``fuser`` entries (Archon allows
                                            generators only in the first layer: a fuser is
                                            what reads the previous layer's candidates)
aggregator                                  a final layer with one ``fuser``, ``samples: 1``
single model (no proposer layers)           one layer with one ``generator``
n identical agents in a row (Self-MoA)      one entry with ``samples: n``
==========================================  ==============================================

Faithful only for ``prompt_style = "archon"`` configs: those are measured with the messages
Archon sends (its generator system message and fuser template, candidates in component order),
and the entries keep the config's order. A ``"moa"``-style config was measured with the MoA
aggregate-and-synthesize prompt, which Archon cannot send; exporting one is refused unless
``allow_prompt_change``, and the file's notes then say so. Per-agent system prompts have no
Archon field and are refused.

``model_type`` says which of Archon's built-in generators calls the model; it is chosen from the
endpoint's host (``HOST_MODEL_TYPES``). Archon's Together generator posts to a fixed URL; the one
unpatched route to another OpenAI-compatible endpoint (vLLM, a gateway, the sim-server) is
``model_type: "OpenAI_API"`` with ``OPENAI_BASE_URL`` set when Archon runs (the OpenAI client
reads it), so one such endpoint per file: ``model_types={model: "OpenAI_API"}``, on the command
line ``--archon-model-type MODEL=OpenAI_API``. Archon's custom generators are no way out for an
MoA: its Fuser builds its Generator without them.

The file also carries a ``moa_search`` object (Archon never reads it): the prompt style and
config hash the export came from, and notes, so that importing it back gives the same config.
``top_k`` is written as 1, as in Archon's configs (generators and fusers do not read it).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..catalog import Catalog
from ..config import AgentSpec, MoAConfig
from ..errors import ConfigError
from ..importers.archon import EXPORT_KEY, from_archon
from ..preset import PresetFile

HOST_MODEL_TYPES: dict[str, str] = {
    "api.together.xyz": "Together_API",
    "api.together.ai": "Together_API",
    "api.openai.com": "OpenAI_API",
    "api.anthropic.com": "Anthropic_API",
    "api.groq.com": "Groq_API",
    "generativelanguage.googleapis.com": "Google_API",
}

ARCHON_MODEL_TYPES = ("Together_API", "OpenAI_API", "Anthropic_API", "Groq_API", "Google_API",
                      "tgi", "Bedrock_API", "vLLM")
"""The generators built into Archon (its ``GENERATE_MAP`` and ``vLLM``)."""

_OPENAI_HOST = "api.openai.com"

__all__ = ["ARCHON_MODEL_TYPES", "HOST_MODEL_TYPES", "from_archon", "to_archon"]


def to_archon(preset_or_config: PresetFile | MoAConfig, *, catalog: Catalog | None = None,
              model_types: Mapping[str, str] | None = None,
              allow_prompt_change: bool = False) -> dict[str, Any]:
    """The Archon config dict. A bare config takes endpoints from ``catalog`` (default: built-in)."""
    config, name, base_url = _source(preset_or_config, catalog)
    notes: list[str] = []
    if config.prompt_style != "archon":
        if not allow_prompt_change:
            raise ConfigError(f"{config.prompt_style!r}: this config was measured with the MoA "
                              "aggregate-and-synthesize prompt, which Archon does not send; export a "
                              "prompt_style = \"archon\" config (preset export: --prompt-style "
                              "archon), or pass --allow-prompt-change",
                              field="prompt_style")
        notes.append(f"prompts changed: this config (prompt_style {config.prompt_style!r}) was "
                     "measured with the MoA aggregate-and-synthesize prompt; Archon sends its own "
                     "generator system message and fuser template, so its answers and quality differ")
    types = _model_types(config, base_url, dict(model_types or {}), notes)

    def entries(kind: str, agents: tuple[AgentSpec, ...], where: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for agent in agents:
            if agent.system_prompt is not None:
                raise ConfigError("Archon has no per-agent system prompt; this agent's cannot be "
                                  "exported", field=f"{where}.system_prompt")
            if out and out[-1]["_agent"] == agent:  # equal agents in a row: one entry, samples n
                out[-1]["samples"] += 1
                continue
            out.append({"_agent": agent, "type": kind, "model": agent.model,
                        "model_type": types[agent.model], "top_k": 1, "temperature": agent.temperature,
                        "max_tokens": agent.max_tokens, "samples": 1})
        return [{k: v for k, v in e.items() if k != "_agent"} for e in out]

    layers = [entries("generator" if i == 0 else "fuser", layer, f"layers[{i}]")
              for i, layer in enumerate(config.proposer_layers)]
    final_kind = "fuser" if config.proposer_layers else "generator"
    layers.append(entries(final_kind, (config.aggregator,), "aggregator"))
    return {"name": name, "layers": layers,
            EXPORT_KEY: {"prompt_style": config.prompt_style, "config_hash": config.config_hash,
                         "notes": notes}}


def _source(preset_or_config: PresetFile | MoAConfig,
            catalog: Catalog | None) -> tuple[MoAConfig, str, Callable[[str], str]]:
    if isinstance(preset_or_config, PresetFile):
        preset = preset_or_config
        return preset.config, preset.name, lambda m: preset.model(m).base_url
    if isinstance(preset_or_config, MoAConfig):
        cat = catalog if catalog is not None else Catalog.default()
        return (preset_or_config, f"moa-search-{preset_or_config.config_hash}",
                lambda m: cat.get(m).endpoint.base_url)
    raise TypeError(f"expected a PresetFile or MoAConfig, got {type(preset_or_config).__name__}")


def _model_types(config: MoAConfig, base_url: Callable[[str], str], overrides: dict[str, str],
                 notes: list[str]) -> dict[str, str]:
    """model -> Archon model_type; an endpoint Archon cannot reach is refused with the way out."""
    unknown = sorted(set(overrides) - set(config.models))
    if unknown:
        raise ConfigError(f"{unknown} is not called by this config (it calls {list(config.models)})",
                          field="--archon-model-type")
    fused = {a.model for layer in config.proposer_layers[1:] for a in layer}
    if config.proposer_layers:
        fused.add(config.aggregator.model)
    types: dict[str, str] = {}
    redirected: dict[str, str] = {}
    for model in config.models:
        url = base_url(model)
        kind = overrides.get(model) or _host_type(model, url)
        if kind not in ARCHON_MODEL_TYPES and model in fused:
            raise ConfigError(f"{model!r} is a fuser and {kind!r} is not one of Archon's built-in "
                              "generators; Archon's Fuser builds its Generator without custom ones: "
                              f"use OpenAI_API with OPENAI_BASE_URL={url}", field="--archon-model-type")
        if kind == "OpenAI_API" and _host(url) != _OPENAI_HOST:
            redirected[model] = url
        types[model] = kind
    urls = sorted(set(redirected.values()))
    if len(urls) > 1:
        raise ConfigError(f"Archon's OpenAI generator reads one OPENAI_BASE_URL, but these models are "
                          f"served at {len(urls)} URLs: {urls}", field="--archon-model-type")
    if urls:
        notes.append(f"run Archon with OPENAI_BASE_URL={urls[0]} (and OPENAI_API_KEY): "
                     f"{sorted(redirected)} use model_type OpenAI_API to reach it")
    return types


def _host(base_url: str) -> str:
    return base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()


def _host_type(model: str, base_url: str) -> str:
    try:
        return HOST_MODEL_TYPES[_host(base_url)]
    except KeyError:
        raise ConfigError(f"{model!r} is served at {base_url}, which none of Archon's built-in "
                          "generators posts to; pass --archon-model-type "
                          f"{model}=OpenAI_API (Python: model_types=) and run Archon with "
                          f"OPENAI_BASE_URL={base_url}", field="model_type") from None
