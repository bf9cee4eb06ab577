"""The reference MoA implementation's command line (togethercomputer/MoA) for a preset.

Target: ``generate_for_alpaca_eval.py``, the script behind the paper's AlpacaEval numbers. Its
flags: ``--model`` (the aggregator), ``--reference-models`` (comma-separated proposers),
``--rounds`` (proposer layers, i.e. ``layers - 1``), ``--temperature`` and ``--max-tokens`` (for
the proposers), ``--output-path``, ``--num-proc``. Its message construction is the one
``moa_search.prompts`` reproduces, so an expressible config runs the same calls there.

What it cannot express, and why an export is refused rather than approximated:

- different proposer sets per layer: every round calls the same ``--reference-models``;
- per-agent sampling parameters: one ``--temperature`` / ``--max-tokens`` for all proposers,
  while the aggregator is called with the script's fixed defaults (temperature 0.7, 2048 tokens);
- Self-MoA (one model sampled several times in a layer): the script calls each reference model
  once per round and has no notion of a sample index;
- agent system prompts and other prompt templates;
- models not served by Together: the script sends every call to api.together.xyz with
  ``$TOGETHER_API_KEY``.
"""

from __future__ import annotations

import shlex

from ..catalog import Catalog
from ..config import DEFAULT_PROMPT_TEMPLATE, MoAConfig
from ..errors import ConfigError
from ..preset import PresetFile

SCRIPT = "generate_for_alpaca_eval.py"
TOGETHER_HOSTS = ("api.together.xyz", "api.together.ai")
AGGREGATOR_TEMPERATURE = 0.7  # the script calls the aggregator with generate_with_references' defaults
AGGREGATOR_MAX_TOKENS = 2048


def to_moa_reference(preset_or_config: PresetFile | MoAConfig, *, catalog: Catalog | None = None,
                     output_path: str | None = None, num_proc: int = 16) -> str:
    """A shell snippet running ``preset_or_config`` with the reference implementation."""
    if isinstance(preset_or_config, PresetFile):
        config, name = preset_or_config.config, preset_or_config.name
        urls = {m: preset_or_config.model(m).base_url for m in config.models}
    elif isinstance(preset_or_config, MoAConfig):
        config, name = preset_or_config, f"moa-search-{preset_or_config.config_hash}"
        cat = catalog if catalog is not None else Catalog.default()
        urls = {m: cat.get(m).endpoint.base_url for m in config.models}
    else:
        raise TypeError(f"expected a PresetFile or MoAConfig, got {type(preset_or_config).__name__}")
    _check_expressible(config, urls)

    args = ["python", SCRIPT, "--model", config.aggregator.model]
    if config.proposer_layers:
        first = config.proposer_layers[0]
        args += ["--reference-models", ",".join(a.model for a in first),
                 "--rounds", str(config.rounds),
                 "--temperature", f"{first[0].temperature:g}",
                 "--max-tokens", str(first[0].max_tokens)]
    args += ["--output-path", output_path or f"outputs/{name}.json", "--num-proc", str(num_proc)]
    lines = [
        "# Run from a checkout of https://github.com/togethercomputer/MoA (pip install -r requirements.txt).",
        f"# Preset {name} (config {config.config_hash}): {config.summary()}.",
        "# The script reads the key from $TOGETHER_API_KEY; set it in your shell, never in this file.",
        ": \"${TOGETHER_API_KEY:?set TOGETHER_API_KEY}\"",
    ]
    quoted = [shlex.quote(a) for a in args]
    body = " ".join(quoted[:2])
    pairs = [quoted[i:i + 2] for i in range(2, len(quoted), 2)]
    lines.append(body + " \\\n" + " \\\n".join("    " + " ".join(p) for p in pairs))
    return "\n".join(lines) + "\n"


def _check_expressible(config: MoAConfig, urls: dict[str, str]) -> None:
    def refuse(why: str, field: str) -> None:
        raise ConfigError(f"the reference MoA script cannot express this config: {why}", field=field)

    if config.prompt_template != DEFAULT_PROMPT_TEMPLATE:
        refuse(f"it only has the aggregate-and-synthesize prompt, not {config.prompt_template!r}",
               "prompt_template")
    for model, url in urls.items():
        host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
        if host not in TOGETHER_HOSTS:
            refuse(f"{model!r} is served at {url}, but the script sends every call to Together", "models")
    agents = [(f"layers[{i}][{j}]", a) for i, layer in enumerate(config.proposer_layers)
              for j, a in enumerate(layer)] + [("aggregator", config.aggregator)]
    for where, agent in agents:
        if agent.system_prompt is not None:
            refuse("it has no per-agent system prompt", f"{where}.system_prompt")
    if config.proposer_layers:
        first = config.proposer_layers[0]
        for i, layer in enumerate(config.proposer_layers[1:], start=1):
            if layer != first:
                refuse(f"proposer layer {i + 1} differs from layer 1, but every round calls the "
                       "same --reference-models", f"layers[{i}]")
        models = [a.model for a in first]
        if len(set(models)) != len(models):
            repeated = sorted({m for m in models if models.count(m) > 1})
            refuse(f"{repeated} is sampled several times in a layer (Self-MoA); the script calls "
                   "each reference model once per round", "layers[0]")
        if len({(a.temperature, a.max_tokens) for a in first}) != 1:
            refuse("proposers use different temperatures or max tokens, but --temperature and "
                   "--max-tokens apply to all of them", "layers[0]")
    agg = config.aggregator
    if (agg.temperature, agg.max_tokens) != (AGGREGATOR_TEMPERATURE, AGGREGATOR_MAX_TOKENS):
        refuse(f"the script calls the aggregator with temperature {AGGREGATOR_TEMPERATURE} and "
               f"{AGGREGATOR_MAX_TOKENS} max tokens, not {agg.temperature:g} / {agg.max_tokens}",
               "aggregator")
