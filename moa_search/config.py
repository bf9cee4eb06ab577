"""What a Mixture-of-Agents configuration *is*, independent of how it is run or searched.

Layers are counted as the MoA paper counts them: the aggregator's layer is a layer. So the
paper's ``MoA`` (6 proposers, 3 layers) is two proposer layers of 6 agents followed by one
aggregator, and the reference implementation's ``--rounds`` equals ``layers - 1``. A single
model is a config with no proposer layers (1 layer: the "aggregator" alone answers the prompt).

A config is frozen and hashable; its canonical JSON sorts the agents inside each layer, because
the order of proposers in a layer does not change what the layer computes (the numbered list
the next layer sees follows this canonical order too, so equal configs really run equally).

``prompt_style`` says which messages the agents get: ``"moa"`` (the reference MoA
implementation's aggregate-and-synthesize system prompt; the default, left out of the canonical
JSON so every hash made before the field existed still holds) or ``"archon"`` (Archon's generator
system message and fuser template, see ``prompts``). Archon numbers candidates in component
order, so an archon-style config keeps its proposers in the order given, and its hash depends
on that order.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .inputs import parse_json, parse_toml, read_text

DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 2048
DEFAULT_PROMPT_TEMPLATE = "moa-aggregate-v1"
ARCHON_PROMPT_TEMPLATE = "archon-fuse-v1"
DEFAULT_PROMPT_STYLE = "moa"

PROMPT_STYLES: dict[str, str] = {"moa": DEFAULT_PROMPT_TEMPLATE, "archon": ARCHON_PROMPT_TEMPLATE}
"""Prompt style -> its default template id. Archon has one fusion text, so an archon-style config
uses exactly ``ARCHON_PROMPT_TEMPLATE``; a moa-style one may name other (aggregation) templates."""

_AGENT_KEYS = {"model", "temperature", "max_tokens", "system_prompt"}
_CONFIG_KEYS = {"layers", "proposers", "aggregator", "prompt_template", "prompt_style"}


def canonical_json(value: Any) -> str:
    """The one serialisation used for hashes and cache keys: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class AgentSpec:
    """One LLM call site: a model and the sampling parameters it is called with."""

    model: str
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int = DEFAULT_MAX_TOKENS
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("expected a non-empty model id", field="model")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ConfigError(f"expected a number, got {self.temperature!r}", field="temperature")
        if not (0.0 <= float(self.temperature) <= 2.0) or math.isnan(self.temperature):
            raise ConfigError(f"expected 0 <= temperature <= 2, got {self.temperature}",
                              field="temperature")
        object.__setattr__(self, "temperature", float(self.temperature))
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ConfigError(f"expected an integer, got {self.max_tokens!r}", field="max_tokens")
        if not (1 <= self.max_tokens <= 1_000_000):
            raise ConfigError(f"expected 1 <= max_tokens <= 1000000, got {self.max_tokens}",
                              field="max_tokens")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ConfigError("expected a string or nothing", field="system_prompt")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "temperature": self.temperature,
                               "max_tokens": self.max_tokens}
        if self.system_prompt is not None:
            out["system_prompt"] = self.system_prompt
        return out

    @classmethod
    def from_value(cls, value: Any, *, field: str = "agent", source: str | None = None) -> "AgentSpec":
        """Accept a bare model id or a table of agent fields."""
        if isinstance(value, str):
            value = {"model": value}
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a model id or a table, got {type(value).__name__}",
                              source=source, field=field)
        unknown = set(value) - _AGENT_KEYS
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(_AGENT_KEYS)}",
                              source=source, field=field)
        if "model" not in value:
            raise ConfigError("missing required key 'model'", source=source, field=field)
        try:
            return cls(**dict(value))
        except ConfigError as exc:
            raise ConfigError(str(exc).split(": ", 1)[-1], source=source,
                              field=f"{field}.{exc.field}" if exc.field else field) from None

    def sort_key(self) -> str:
        return canonical_json(self.to_dict())


@dataclass(frozen=True)
class MoAConfig:
    """Proposer layers (each a tuple of agents) followed by one final aggregator."""

    proposer_layers: tuple[tuple[AgentSpec, ...], ...]
    aggregator: AgentSpec
    prompt_template: str = ""  # "": the prompt style's template (PROMPT_STYLES)
    prompt_style: str = DEFAULT_PROMPT_STYLE
    _hash: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_style()
        ordered = self.prompt_style == "archon"  # Archon numbers candidates in component order
        layers = tuple(tuple(layer) if ordered else tuple(sorted(layer, key=AgentSpec.sort_key))
                       for layer in self.proposer_layers)
        for i, layer in enumerate(layers):
            if not layer:
                raise ConfigError("a proposer layer must have at least one agent",
                                  field=f"layers[{i}]")
            for j, agent in enumerate(layer):
                if not isinstance(agent, AgentSpec):
                    raise ConfigError("expected an AgentSpec", field=f"layers[{i}][{j}]")
        if not isinstance(self.aggregator, AgentSpec):
            raise ConfigError("expected an AgentSpec", field="aggregator")
        if not isinstance(self.prompt_template, str) or not self.prompt_template:
            raise ConfigError("expected a template id", field="prompt_template")
        object.__setattr__(self, "proposer_layers", layers)
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]
        object.__setattr__(self, "_hash", digest)

    def _check_style(self) -> None:
        style = self.prompt_style
        if not isinstance(style, str) or style not in PROMPT_STYLES:
            raise ConfigError(f"expected one of {list(PROMPT_STYLES)}, got {style!r}", field="prompt_style")
        if self.prompt_template == "":
            object.__setattr__(self, "prompt_template", PROMPT_STYLES[style])
        if (self.prompt_template == ARCHON_PROMPT_TEMPLATE) != (style == "archon"):
            raise ConfigError(f"template {self.prompt_template!r} does not go with prompt_style "
                              f"{style!r} (archon style uses {ARCHON_PROMPT_TEMPLATE!r}, only it)",
                              field="prompt_template")
        if style == "archon":
            agents = [a for layer in self.proposer_layers for a in layer] + [self.aggregator]
            if any(isinstance(a, AgentSpec) and a.system_prompt is not None for a in agents):
                raise ConfigError("Archon has no per-agent system prompt; an archon-style config "
                                  "cannot give one", field="prompt_style")

    @property
    def n_layers(self) -> int:
        """Layers as the paper counts them, aggregator included."""
        return len(self.proposer_layers) + 1

    @property
    def rounds(self) -> int:
        """The reference implementation's ``--rounds``."""
        return len(self.proposer_layers)

    @property
    def config_hash(self) -> str:
        return self._hash

    @property
    def models(self) -> tuple[str, ...]:
        """Every distinct model the config calls, sorted."""
        names = {a.model for layer in self.proposer_layers for a in layer} | {self.aggregator.model}
        return tuple(sorted(names))

    def summary(self) -> str:
        """A short human label, e.g. ``2L [WizardLM-2-8x22B + dbrx-instruct] -> Qwen1.5-72B-Chat``.

        Up to three distinct proposers are named; more are counted. Repeated samples of one
        model (Self-MoA) read ``3x Qwen1.5-110B-Chat``.
        """
        style = "" if self.prompt_style == DEFAULT_PROMPT_STYLE else f" ({self.prompt_style})"
        if not self.proposer_layers:
            return f"single {_short(self.aggregator.model)}{style}"
        first = self.proposer_layers[0]
        names = sorted({_short(a.model) for a in first})
        if len(names) == 1:
            kind = f"{len(first)}x {names[0]}"
        elif len(names) <= 3 and len(names) == len(first):
            kind = " + ".join(names)
        else:
            kind = f"{len(first)} agents, {len(names)} models"
        return f"{self.n_layers}L [{kind}] -> {_short(self.aggregator.model)}{style}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layers": [[a.to_dict() for a in layer] for layer in self.proposer_layers],
            "aggregator": self.aggregator.to_dict(),
            "prompt_template": self.prompt_template,
        }
        if self.prompt_style != DEFAULT_PROMPT_STYLE:  # absent = "moa": older hashes still hold
            out["prompt_style"] = self.prompt_style
        return out

    def canonical_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> "MoAConfig":
        """Build from the JSON/TOML form.

        Two spellings are accepted: ``layers`` as a list of proposer layers (each a list of
        agents), or the shorthand ``proposers = [...]`` with ``layers = N`` (the paper's count,
        aggregator included) that repeats the same proposers in every proposer layer.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a table, got {type(data).__name__}", source=source)
        unknown = set(data) - _CONFIG_KEYS
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(_CONFIG_KEYS)}",
                              source=source)
        if "aggregator" not in data:
            raise ConfigError("missing required key 'aggregator'", source=source)
        aggregator = AgentSpec.from_value(data["aggregator"], field="aggregator", source=source)
        raw_layers = data.get("layers", [])
        if "proposers" in data:
            if isinstance(raw_layers, bool) or not isinstance(raw_layers, int) or raw_layers < 1:
                raise ConfigError("with 'proposers', 'layers' must be the layer count (>= 1, "
                                  "aggregator included)", source=source, field="layers")
            proposers = data["proposers"]
            if not isinstance(proposers, list) or not proposers:
                raise ConfigError("expected a non-empty list of agents", source=source, field="proposers")
            raw_layers = [proposers] * (raw_layers - 1)
        if not isinstance(raw_layers, list):
            raise ConfigError("expected a list of proposer layers", source=source, field="layers")
        layers = []
        for i, layer in enumerate(raw_layers):
            if not isinstance(layer, list) or not layer:
                raise ConfigError("expected a non-empty list of agents", source=source, field=f"layers[{i}]")
            layers.append(tuple(AgentSpec.from_value(a, field=f"layers[{i}][{j}]", source=source)
                                for j, a in enumerate(layer)))
        template = data.get("prompt_template", "")
        style = data.get("prompt_style", DEFAULT_PROMPT_STYLE)
        if template == "" and "prompt_template" in data:
            raise ConfigError("expected a template id", source=source, field="prompt_template")
        try:
            return cls(tuple(layers), aggregator, template, style)
        except ConfigError as exc:
            raise ConfigError(str(exc).split(": ", 1)[-1], source=source, field=exc.field) from None

    @classmethod
    def single(cls, model: str, **agent: Any) -> "MoAConfig":
        return cls((), AgentSpec(model, **agent))

    @classmethod
    def uniform(cls, proposers: list[str] | tuple[str, ...], aggregator: str, layers: int,
                **agent: Any) -> "MoAConfig":
        """The paper's shape: the same proposers in each of ``layers - 1`` layers."""
        if layers < 1:
            raise ConfigError("expected layers >= 1", field="layers")
        layer = tuple(AgentSpec(m, **agent) for m in proposers)
        return cls((layer,) * (layers - 1), AgentSpec(aggregator, **agent))


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Preset:
    """A named config. The versioned preset *file* format (with provenance) lives in export."""

    name: str
    config: MoAConfig
    description: str = ""


PAPER_PROPOSERS: tuple[str, ...] = (
    "Qwen/Qwen1.5-110B-Chat",
    "Qwen/Qwen1.5-72B-Chat",
    "microsoft/WizardLM-2-8x22B",
    "meta-llama/Llama-3-70b-chat-hf",
    "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "databricks/dbrx-instruct",
)

BUILTIN_PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("moa", MoAConfig.uniform(PAPER_PROPOSERS, "Qwen/Qwen1.5-110B-Chat", layers=3),
               "The paper's MoA: 6 open proposers, 3 layers, Qwen1.5-110B-Chat aggregating."),
        Preset("moa-gpt4o", MoAConfig.uniform(PAPER_PROPOSERS, "gpt-4o-2024-05-13", layers=3),
               "MoA w/ GPT-4o: the same proposers, GPT-4o as the final aggregator."),
        Preset("moa-lite", MoAConfig.uniform(PAPER_PROPOSERS, "Qwen/Qwen1.5-72B-Chat", layers=2),
               "MoA-Lite: 6 open proposers, 2 layers, Qwen1.5-72B-Chat aggregating."),
    )
}

LOCAL_MODEL = "smollm2-135m"
"""The model of the shipped local catalog (``data/local.toml``): SmolLM2-135M-Instruct."""

LOCAL_PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("local-self-moa", MoAConfig.uniform([LOCAL_MODEL] * 3, LOCAL_MODEL, layers=2, max_tokens=256),
               "Self-MoA on a local model (--backend local): SmolLM2-135M-Instruct sampled 3 times at "
               "temperature 0.7, then aggregating."),
    )
}
"""Presets over the local catalog. Kept apart from ``BUILTIN_PRESETS``, whose models are the
default catalog's and with which the search seeds every study; looked up by the same name."""


def builtin_preset(name: str) -> Preset:
    preset = BUILTIN_PRESETS.get(name) or LOCAL_PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}; built-in presets are "
                          f"{sorted(BUILTIN_PRESETS) + sorted(LOCAL_PRESETS)}", field="preset")
    return preset


def read_config_data(path: str | Path) -> Any:
    """The parsed content of a ``.json`` or ``.toml`` file; a parse error names the file and line."""
    path = Path(path)
    text = read_text(path, "config")
    return parse_toml(text, str(path)) if path.suffix.lower() == ".toml" else parse_json(text, str(path))


def load_config_file(path: str | Path) -> MoAConfig:
    """A config from a ``.json`` or ``.toml`` file. A preset file's config is taken as it is;
    the commands read files with ``preset.load_config_or_preset``, which checks the preset."""
    data = read_config_data(path)
    if isinstance(data, dict) and "config" in data and "format" in data:
        data = data["config"]  # a preset file: its config is what runs
    return MoAConfig.from_dict(data, source=str(path))
