"""Exporters: Archon (both ways), the reference MoA command line, and the standalone script
(run for real with ``python script.py`` against the loopback sim-server)."""

import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from moa_search.catalog import Catalog
from moa_search.config import BUILTIN_PRESETS, AgentSpec, MoAConfig
from moa_search.errors import ConfigError
from moa_search.exporters import EXPORT_FORMATS, export_text
from moa_search.exporters.archon import to_archon
from moa_search.importers.archon import from_archon
from moa_search.exporters.moa_reference import to_moa_reference
from moa_search.exporters.standalone import to_standalone_script
from moa_search.preset import Provenance, from_builtin, from_config
from moa_search.providers.base import Message
from moa_search.runner import Runner
from moa_search.sim_server import SimServer
from tests.doubles import RecordingProvider

CATALOG = Catalog.default()
WIZ, QWEN110, QWEN72 = "microsoft/WizardLM-2-8x22B", "Qwen/Qwen1.5-110B-Chat", "Qwen/Qwen1.5-72B-Chat"
LLAMA8, MIX8x7 = "meta-llama/Llama-3-8b-chat-hf", "mistralai/Mixtral-8x7B-Instruct-v0.1"
SELF_MOA = MoAConfig(((AgentSpec(WIZ),) * 6,), AgentSpec(QWEN110))
MIXED = MoAConfig(((AgentSpec(LLAMA8), AgentSpec(MIX8x7), AgentSpec(LLAMA8, temperature=1.0)),
                   (AgentSpec(LLAMA8, temperature=0.2), AgentSpec(MIX8x7, max_tokens=512))),
                  AgentSpec("gpt-4o-2024-05-13", temperature=0.0, max_tokens=1024))


# ---- Archon (more in test_archon.py: fixtures, prompt style, request equality, CLI) -----------


SAMPLED_MIX = MoAConfig(((AgentSpec(WIZ), AgentSpec(QWEN72), AgentSpec(WIZ)),
                         (AgentSpec(QWEN72),) * 3), AgentSpec(QWEN110))


def archon(config: MoAConfig) -> MoAConfig:
    """The same agents in Archon's prompt style (the one Archon exports are faithful for)."""
    return MoAConfig(config.proposer_layers, config.aggregator, prompt_style="archon")


@pytest.mark.parametrize("config", [p.config for p in BUILTIN_PRESETS.values()] + [SELF_MOA, MIXED,
                         SAMPLED_MIX, MoAConfig.single("gpt-4o-2024-05-13")],
                         ids=list(BUILTIN_PRESETS) + ["self-moa", "mixed", "sampled-mix", "single"])
@pytest.mark.parametrize("style", ["moa", "archon"])
def test_archon_round_trip_keeps_the_config(config, style):
    config = archon(config) if style == "archon" else config
    exported = json.loads(json.dumps(to_archon(config, allow_prompt_change=True)))  # through JSON, as a file
    back = from_archon(exported, source="archon.json")
    assert back == config and back.config_hash == config.config_hash


def test_archon_moa_layout_follows_archons_moa_config():
    preset = from_config("moa", archon(BUILTIN_PRESETS["moa"].config), CATALOG)
    out = to_archon(preset)
    assert out["name"] == "moa" and len(out["layers"]) == 3
    first, second, final = out["layers"]
    assert {e["type"] for e in first} == {"generator"} and len(first) == 6
    assert {e["type"] for e in second} == {"fuser"} and len(second) == 6  # later layers read candidates
    assert final == [{"type": "fuser", "model": QWEN110, "model_type": "Together_API", "top_k": 1,
                      "temperature": 0.7, "max_tokens": 2048, "samples": 1}]


def test_archon_self_moa_is_one_entry_with_samples():
    out = to_archon(archon(SELF_MOA))
    assert out["layers"][0] == [{"type": "generator", "model": WIZ, "model_type": "Together_API",
                                 "top_k": 1, "temperature": 0.7, "max_tokens": 2048, "samples": 6}]
    out = to_archon(SAMPLED_MIX, allow_prompt_change=True)  # moa style: sorted, equal agents adjacent
    assert [(e["type"], e["model"], e["samples"]) for e in out["layers"][0]] == \
           [("generator", QWEN72, 1), ("generator", WIZ, 2)]
    assert [(e["type"], e["model"], e["samples"]) for e in out["layers"][1]] == [("fuser", QWEN72, 3)]
    given = MoAConfig(((AgentSpec(WIZ), AgentSpec(QWEN72), AgentSpec(WIZ)),), AgentSpec(QWEN110),
                      prompt_style="archon")
    out = to_archon(given)  # archon style: the order given, samples only in a row
    assert [(e["model"], e["samples"]) for e in out["layers"][0]] == [(WIZ, 1), (QWEN72, 1), (WIZ, 1)]


def test_archon_model_type_by_endpoint_and_override():
    out = to_archon(from_builtin(BUILTIN_PRESETS["moa-gpt4o"], CATALOG), allow_prompt_change=True)
    assert out["layers"][-1][0]["model_type"] == "OpenAI_API"
    local = CATALOG.with_base_url("http://127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match=r"none of Archon's built-in generators posts to; pass --archon-model-type"):
        to_archon(archon(SELF_MOA), catalog=local)
    # a custom generator works for a first-layer generator only: Archon's Fuser cannot use one
    out = to_archon(archon(SELF_MOA), catalog=local, model_types={WIZ: "my_vllm", QWEN110: "OpenAI_API"})
    assert [e["model_type"] for layer in out["layers"] for e in layer] == ["my_vllm", "OpenAI_API"]
    with pytest.raises(ConfigError, match=r"is not called by this config"):
        to_archon(archon(SELF_MOA), catalog=local, model_types={"nope": "OpenAI_API"})


def test_archon_export_refuses_system_prompts():
    config = MoAConfig(((AgentSpec(WIZ, system_prompt="Be terse."),),), AgentSpec(QWEN110))
    with pytest.raises(ConfigError, match=r"layers\[0\].system_prompt: Archon has no per-agent system prompt"):
        to_archon(config, allow_prompt_change=True)


def archon_entry(kind="generator", model=WIZ, **over):
    entry = {"type": kind, "model": model, "model_type": "Together_API", "top_k": 1,
             "temperature": 0.7, "max_tokens": 2048, "samples": 1}
    entry.update(over)
    return entry


def test_archon_import_of_the_older_branches_layer_form():
    data = {"name": "x", "layers": [
        {"branches": 1, "models": [archon_entry(model=WIZ), archon_entry(model=QWEN72, samples=2)]},
        {"branches": 1, "models": [archon_entry("fuser", model=QWEN110)]}]}
    config = from_archon(data, source="old.json")
    assert config == MoAConfig(((AgentSpec(WIZ), AgentSpec(QWEN72), AgentSpec(QWEN72)),), AgentSpec(QWEN110),
                               prompt_style="archon")


@pytest.mark.parametrize("kind", ["ranker", "critic", "verifier", "unit_test_generator", "unit_test_evaluator"])
def test_archon_import_refuses_components_without_moa_meaning(kind):
    data = {"name": "x", "layers": [[archon_entry(no_system=True)], [archon_entry(kind, model=QWEN110)],
                                    [archon_entry("fuser", model=QWEN110)]]}
    with pytest.raises(ConfigError) as err:  # the component is the reason, not layer 1's key
        from_archon(data, source="cfg.json")
    assert err.value.field == "layer 2 component 1"
    assert str(err.value).startswith(f"cfg.json: layer 2 component 1: {kind} is not MoA (")


@pytest.mark.parametrize("data, field, words", [
    ({"layers": [[archon_entry()], [archon_entry("generator")]]}, "layer 2 component 1",
     "a generator here is not MoA"),
    ({"layers": [[archon_entry("fuser")]]}, "layer 1 component 1", "a fuser here is not MoA"),
    ({"layers": [[archon_entry()], [archon_entry("fuser", samples=3)]]}, "layer 2",
     "yields 3 candidates"),
    ({"layers": [[archon_entry(), archon_entry(model=QWEN72)]]}, "layer 1", "yields 2 candidates"),
    ({"layers": [[archon_entry(no_system=True)]]}, "layer 1 component 1", "'no_system': Archon then leaves out"),
    ({"layers": [[archon_entry(use_critiques=True)]]}, "layer 1 component 1", "unsupported key(s) ['use_critiques']"),
    ({"layers": [[archon_entry(temperature=9)]]}, "layer 1 component 1.temperature", "0 <= temperature <= 2"),
    ({"layers": [[archon_entry(samples=0)]]}, "layer 1 component 1.samples", "integer >= 1"),
    ({"layers": [[archon_entry(model_type="")]]}, "layer 1 component 1.model_type", "non-empty string"),
    ({"layers": [[archon_entry("my_component")]]}, "layer 1 component 1", "custom components cannot be imported"),
    ({"layers": []}, "layers", "non-empty list of layers"),
    ({"layers": [[]]}, "layer 1", "non-empty list of components"),
    ({"layers": [[archon_entry()]], "custom": True}, "custom", "custom Archon components"),
    ({"layers": [[archon_entry()]], "moa_search": {"prompt_style": "fancy"}}, "moa_search.prompt_style",
     "expected one of ['moa', 'archon']"),
])
def test_archon_import_errors_name_the_place(data, field, words):
    with pytest.raises(ConfigError) as err:
        from_archon(data, source="cfg.json")
    assert err.value.field == field and words in str(err.value)


# ---- reference MoA command line ---------------------------------------------------------------


def snippet_args(text: str) -> dict[str, str]:
    command = [line for line in text.splitlines() if not line.startswith(("#", ":"))]
    tokens = shlex.split(" ".join(command).replace("\\ ", " "))
    assert tokens[:2] == ["python", "generate_for_alpaca_eval.py"]
    return dict(zip(tokens[2::2], tokens[3::2]))


def test_moa_reference_command_for_the_papers_moa():
    text = to_moa_reference(from_builtin(BUILTIN_PRESETS["moa"], CATALOG))
    args = snippet_args(text)
    assert args["--model"] == QWEN110
    assert sorted(args["--reference-models"].split(",")) == sorted(p.model for p in BUILTIN_PRESETS["moa"].config.proposer_layers[0])
    assert args["--rounds"] == "2"  # layers - 1
    assert (args["--temperature"], args["--max-tokens"]) == ("0.7", "2048")
    assert "TOGETHER_API_KEY" in text
    assert snippet_args(to_moa_reference(BUILTIN_PRESETS["moa-lite"].config))["--rounds"] == "1"


def test_moa_reference_single_model_has_no_reference_models():
    args = snippet_args(to_moa_reference(MoAConfig.single(QWEN72)))
    assert args["--model"] == QWEN72 and "--reference-models" not in args


@pytest.mark.parametrize("config, words", [
    (SELF_MOA, "sampled several times in a layer (Self-MoA)"),
    (MoAConfig(((AgentSpec(WIZ),), (AgentSpec(QWEN72),)), AgentSpec(QWEN110)), "proposer layer 2 differs"),
    (MoAConfig(((AgentSpec(WIZ), AgentSpec(QWEN72, temperature=0.1)),), AgentSpec(QWEN110)),
     "different temperatures"),
    (MoAConfig.uniform([WIZ, QWEN72], QWEN110, layers=2, max_tokens=512), "aggregator with temperature 0.7"),
    (BUILTIN_PRESETS["moa-gpt4o"].config, "sends every call to Together"),
    (MoAConfig(((AgentSpec(WIZ, system_prompt="Be terse."),),), AgentSpec(QWEN110)), "system prompt"),
])
def test_moa_reference_refuses_what_it_cannot_express(config, words):
    with pytest.raises(ConfigError, match="the reference MoA script cannot express this config") as err:
        to_moa_reference(config)
    assert words in str(err.value)


# ---- export_text ---------------------------------------------------------------------------


def test_export_text_renders_every_format_and_refuses_unknown():
    preset = from_builtin(BUILTIN_PRESETS["moa-lite"], CATALOG)
    for fmt in EXPORT_FORMATS:
        assert preset.config_hash in export_text(preset, fmt, allow_prompt_change=fmt == "archon")
    with pytest.raises(ConfigError, match="prompt_style: 'moa'"):
        export_text(preset, "archon")
    assert from_archon(json.loads(export_text(preset, "archon", allow_prompt_change=True))) == preset.config
    with pytest.raises(ConfigError, match="unknown export format 'yaml'"):
        export_text(preset, "yaml")


# ---- standalone script ------------------------------------------------------------------------

PROMPT = "Name a prime number."


def script_file(tmp_path: Path, config: MoAConfig, **kw) -> Path:
    preset = from_config("mixed", config, CATALOG, **kw)
    path = tmp_path / "moa_preset.py"
    path.write_text(to_standalone_script(preset))
    return path


def run_script(path: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None,
               ) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("TOGETHER_API_KEY", "OPENAI_API_KEY", "MOA_BASE_URL")}
    return subprocess.run([sys.executable, str(path), *args], input=stdin, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=60)


async def expected_requests(config: MoAConfig) -> Counter:
    """What the in-process runner sends for the same prompt: the script must send the same."""
    provider = RecordingProvider()
    await Runner(provider).run_item(config, (Message("user", PROMPT),))
    return Counter(json.dumps([r.model, r.messages_as_dicts(), r.temperature, r.max_tokens])
                   for r in provider.requests)


async def test_standalone_script_runs_the_mixture_over_http(tmp_path):
    path = script_file(tmp_path, MIXED)
    key = "test-key-for-the-loopback-server"
    with SimServer(RecordingProvider(), require_api_key=key) as server:
        done = run_script(path, "--base-url", server.base_url, PROMPT,
                          env={"TOGETHER_API_KEY": key, "OPENAI_API_KEY": key})
        recorded = server.recorded_requests
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "answer from gpt-4o-2024-05-13#0"
    # 5 proposers + 1 aggregator, 10 prompt / 5 completion tokens each (the double's usage)
    assert "6 calls (0 failed), prompt_tokens=60 completion_tokens=30 total_tokens=90" in done.stderr
    cost = (3 * 15 * 0.2 + 2 * 15 * 0.6 + (10 * 5.0 + 5 * 15.0)) / 1e6
    assert f"cost_usd={cost:.6f}" in done.stderr
    assert all(r.has_authorization for r in recorded)
    sent = Counter(json.dumps([b["model"], b["messages"], b["temperature"], b["max_tokens"]])
                   for b in (r.body for r in recorded))
    assert sent == await expected_requests(MIXED)
    # layer order: both proposer layers strictly before the aggregator
    assert [r.body["model"] for r in recorded][-1] == "gpt-4o-2024-05-13"


def test_standalone_script_json_output_and_stdin(tmp_path):
    path = script_file(tmp_path, SELF_MOA)
    with SimServer(RecordingProvider()) as server:  # keyless loopback server: no key needed
        done = run_script(path, "--json", env={"MOA_BASE_URL": server.base_url}, stdin=PROMPT)
        recorded = server.recorded_requests
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["answer"] == f"answer from {QWEN110}#0" and out["config_hash"] == SELF_MOA.config_hash
    assert out["usage"] == {"prompt_tokens": 70, "completion_tokens": 35, "total_tokens": 105}
    assert [c["role"] for c in out["calls"]].count("proposer") == 6
    assert not any(r.has_authorization for r in recorded)
    assert all(r.body["messages"][-1] == {"role": "user", "content": PROMPT} for r in recorded)


def test_standalone_script_reports_a_failed_layer(tmp_path):
    path = script_file(tmp_path, SELF_MOA)
    with SimServer(RecordingProvider(failing_models={WIZ})) as server:
        done = run_script(path, "--retries", "0", "--base-url", server.base_url, PROMPT)
        models = [r.body["model"] for r in server.recorded_requests]
    assert done.returncode == 1
    assert "every proposer in layer 1 failed" in done.stderr and "HTTP 502" in done.stderr
    assert QWEN110 not in models  # no aggregator call after a dead layer


def test_standalone_script_needs_the_key_env_var_for_remote_endpoints(tmp_path):
    done = run_script(script_file(tmp_path, SELF_MOA), PROMPT)  # real Together URL, no key set
    assert done.returncode != 0
    assert "set $TOGETHER_API_KEY (the API key for https://api.together.xyz/v1)" in done.stderr


def test_standalone_script_text_holds_no_key_but_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "sk-test-SECRET-0123456789")
    prov = Provenance(validation_set="alpaca-mini", scorer="judge", quality=0.6, quality_ci=(0.5, 0.7),
                      n_items=50, cost_usd_per_item=0.01, latency_p50_s=3.0, latency_p95_s=5.0,
                      simulated=True, created_at="2024-06-01")
    preset = from_config("tuned", SELF_MOA, CATALOG, prov, description='Has """ quotes and \\ slashes')
    text = to_standalone_script(preset)
    assert "sk-test-SECRET" not in text and "TOGETHER_API_KEY" in text
    assert "SIMULATED MODEL WORLD" in text
    compile(text, "moa_preset.py", "exec")  # the description cannot break the script
    namespace: dict = {}
    exec(compile(text.split("RETRY_STATUSES")[0], "x", "exec"), namespace)  # up to PRESET
    assert namespace["PRESET"]["config"] == SELF_MOA.to_dict()
    assert "sim" not in namespace["PRESET"]["models"][WIZ]
