"""Archon configs: import (fixtures written here in Archon's layout), prompt style, faithful
export, and the request-equality check of an archon-style preset against Archon's request shapes
(``fixtures/archon/request_shapes.json``, recorded from Archon's code) over the sim-server."""

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from moa_search.catalog import Catalog
from moa_search.cli import main
from moa_search.config import BUILTIN_PRESETS, AgentSpec, MoAConfig
from moa_search.errors import ConfigError
from moa_search.exporters.archon import to_archon
from moa_search.importers.archon import (
    catalog_entries,
    from_archon,
    read_archon_file,
)
from moa_search.preset import from_config, write_preset
from moa_search.providers.simulated import SimulatedProvider
from moa_search.sim_server import SimServer
from moa_search.terminal import out as console

FIXTURES = Path(__file__).parent / "fixtures" / "archon"
SHAPES = json.loads((FIXTURES / "request_shapes.json").read_text())
CATALOG = Catalog.default()
WIZ, QWEN110, QWEN72 = "microsoft/WizardLM-2-8x22B", "Qwen/Qwen1.5-110B-Chat", "Qwen/Qwen1.5-72B-Chat"
DBRX, LLAMA70 = "databricks/dbrx-instruct", "meta-llama/Llama-3-70b-chat-hf"
PROMPT = "Name three prime numbers and say why 1 is not one."


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- import: every fixture, imported or refused for its real reason ---------------------------

IMPORTED = {  # file -> words one of its notes holds ("" = no note needed)
    "MoA.json": "same agents as built-in preset 'moa'",
    "MoA-lite.json": "'top_k_generations' ignored (layer 2 component 1)",
    "length_contorl_typo.json": "'length_contorl' ignored (layer 2 component 1): a misspelling",
    "length_control_without_critiques.json": "'length_control' ignored (layer 2 component 1): "
                                             "Archon's fuser prompt uses it only with critiques",
    "capital_B_model_id.json": "'meta-llama/Llama-3-70B-chat-hf' is 'meta-llama/Llama-3-70b-chat-hf' "
                               "in the catalog (matched ignoring case)",
    "single_model.json": "",
    "self_moa_samples.json": "'max_context_length' ignored (layer 1 component 1)",
    "older_branches_form.json": "layer 1: ['branches'] of the older layer form",
}
REFUSED = {  # file -> the start of the message after the file name
    "ranker.json": "layer 2 component 1: ranker is not MoA (it reorders and filters candidates)",
    "stray_key_and_critic.json": "layer 2 component 1: critic is not MoA",
    "verifier.json": "layer 2 component 1: verifier is not MoA",
    "unit_tests.json": "layer 2 component 1: unit_test_generator is not MoA",
    "no_system.json": "layer 1 component 1: 'no_system': Archon then leaves out the first (system) message",
}


def test_the_fixtures_are_all_covered():
    names = {p.name for p in FIXTURES.glob("*.json")} - {"request_shapes.json"}
    assert names == set(IMPORTED) | set(REFUSED) | {"unknown_models.json"}


@pytest.mark.parametrize("name", sorted(IMPORTED))
def test_plain_moa_files_import_with_a_note_per_ignored_key(name):
    imported = read_archon_file(FIXTURES / name, CATALOG)
    assert imported.missing == ()
    assert imported.config.prompt_style == "archon"
    assert any(IMPORTED[name] in note for note in imported.notes) or not IMPORTED[name]
    assert all("\n" not in note for note in imported.notes)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_non_moa_files_are_refused_with_the_real_reason_first(name):
    with pytest.raises(ConfigError) as err:
        read_archon_file(FIXTURES / name, CATALOG)
    assert str(err.value).startswith(f"{FIXTURES / name}: {REFUSED[name]}")


def test_moa_lite_equals_the_builtin_and_keeps_archons_order():
    moa_style = read_archon_file(FIXTURES / "MoA-lite.json", CATALOG, prompt_style="moa").config
    assert moa_style == BUILTIN_PRESETS["moa-lite"].config
    assert moa_style.config_hash == BUILTIN_PRESETS["moa-lite"].config.config_hash
    imported = read_archon_file(FIXTURES / "MoA-lite.json", CATALOG)
    assert [a.model for a in imported.config.proposer_layers[0]] == [
        WIZ, QWEN110, QWEN72, LLAMA70, "mistralai/Mixtral-8x22B-Instruct-v0.1", DBRX]  # the file's order
    assert sum("ignored" in n for n in imported.notes) == 3  # top_k_generations, fuse_..., ranker_config
    assert any("same agents as built-in preset 'moa-lite'" in n for n in imported.notes)


def test_samples_and_case_matching_become_agents():
    self_moa = read_archon_file(FIXTURES / "self_moa_samples.json", CATALOG).config
    assert self_moa.proposer_layers == ((AgentSpec(WIZ),) * 5,)
    capital = read_archon_file(FIXTURES / "capital_B_model_id.json", CATALOG).config
    assert [a.model for a in capital.proposer_layers[0]] == [LLAMA70, WIZ]
    single = read_archon_file(FIXTURES / "single_model.json", CATALOG).config
    assert single == MoAConfig((), AgentSpec(QWEN72), prompt_style="archon")


def test_unknown_models_are_listed_with_the_catalog_entry_to_add():
    imported = read_archon_file(FIXTURES / "unknown_models.json", CATALOG)
    assert imported.missing == (("Qwen/Qwen2-72B-Instruct", "Together_API"),
                                ("deepseek-ai/deepseek-llm-67b-chat", "Together_API"))
    entries = catalog_entries(imported.missing)
    assert entries[0].startswith('[models."Qwen/Qwen2-72B-Instruct"]\nprovider = "together"\n')
    added = CATALOG.from_toml_text(  # the printed entries load as catalog TOML
        '[providers.together]\nbase_url = "https://api.together.xyz/v1"\napi_key_env = "TOGETHER_API_KEY"\n'
        + "\n".join(e.replace("input_price = 0.0", "input_price = 0.9").replace("output_price = 0.0", "output_price = 0.9")
                    for e in entries), source="added.toml")
    assert set(added.models) == {m for m, _ in imported.missing}


# ---- prompt style: round trips, order, refusal -----------------------------------------------

ORDERED = MoAConfig(((AgentSpec(QWEN72), AgentSpec(WIZ), AgentSpec(WIZ), AgentSpec(DBRX)),
                     (AgentSpec(QWEN110), AgentSpec(LLAMA70, temperature=0.2))),
                    AgentSpec(QWEN72), prompt_style="archon")


def _archon_style(config: MoAConfig) -> MoAConfig:
    return MoAConfig(config.proposer_layers, config.aggregator, prompt_style="archon")


@pytest.mark.parametrize("config", [p.config for p in BUILTIN_PRESETS.values()]
                         + [_archon_style(p.config) for p in BUILTIN_PRESETS.values()]
                         + [ORDERED, MoAConfig((), AgentSpec(QWEN72), prompt_style="archon")],
                         ids=[*BUILTIN_PRESETS, *(f"{n}-archon" for n in BUILTIN_PRESETS), "ordered", "single"])
def test_round_trips_keep_the_hash_in_both_styles(config):
    exported = json.loads(json.dumps(to_archon(config, allow_prompt_change=True)))
    back = from_archon(exported, source="x.archon.json")
    assert back == config and back.config_hash == config.config_hash
    assert [[a.model for a in layer] for layer in back.proposer_layers] == \
           [[a.model for a in layer] for layer in config.proposer_layers]  # order included


def test_archon_style_order_is_in_the_hash_and_moa_style_is_not():
    layer = ORDERED.proposer_layers[0]
    reordered = MoAConfig((tuple(reversed(layer)), ORDERED.proposer_layers[1]), ORDERED.aggregator,
                          prompt_style="archon")
    assert reordered.config_hash != ORDERED.config_hash
    as_moa = [MoAConfig((l, ORDERED.proposer_layers[1]), ORDERED.aggregator) for l in (layer, layer[::-1])]
    assert as_moa[0].config_hash == as_moa[1].config_hash
    assert "prompt_style" not in as_moa[0].canonical_json()  # the default stays out: old hashes hold
    assert json.loads(ORDERED.canonical_json())["prompt_style"] == "archon"


def test_archon_style_entries_keep_order_and_group_samples_in_a_row():
    out = to_archon(ORDERED)
    assert [(e["model"], e["samples"]) for e in out["layers"][0]] == [(QWEN72, 1), (WIZ, 2), (DBRX, 1)]
    assert out["moa_search"] == {"prompt_style": "archon", "config_hash": ORDERED.config_hash, "notes": []}


def test_moa_style_export_refuses_unless_allowed_and_then_says_so():
    with pytest.raises(ConfigError, match=r"^prompt_style: 'moa': this config was measured with the MoA"):
        to_archon(BUILTIN_PRESETS["moa"].config)
    out = to_archon(BUILTIN_PRESETS["moa"].config, allow_prompt_change=True)
    assert out["moa_search"]["prompt_style"] == "moa"
    assert out["moa_search"]["notes"][0].startswith("prompts changed:")


def test_openai_api_route_to_another_endpoint_and_no_custom_fusers():
    local = CATALOG.with_base_url("http://127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match=r"--archon-model-type .*=OpenAI_API .*OPENAI_BASE_URL=http://127.0.0.1:8000/v1"):
        to_archon(ORDERED, catalog=local)
    types = {m: "OpenAI_API" for m in ORDERED.models}
    out = to_archon(ORDERED, catalog=local, model_types=types)
    assert {e["model_type"] for layer in out["layers"] for e in layer} == {"OpenAI_API"}
    assert "OPENAI_BASE_URL=http://127.0.0.1:8000/v1" in out["moa_search"]["notes"][0]
    with pytest.raises(ConfigError, match="Archon's Fuser builds its Generator without custom ones"):
        to_archon(ORDERED, catalog=local, model_types={**types, QWEN110: "my_vllm"})


def test_archon_style_refuses_agent_system_prompts():
    with pytest.raises(ConfigError, match="Archon has no per-agent system prompt"):
        MoAConfig(((AgentSpec(WIZ, system_prompt="Be terse."),),), AgentSpec(QWEN110), prompt_style="archon")


# ---- request equality: moa-search run vs Archon's request shapes, over the sim-server ------------


def fuser_user_text(query: str, candidates: list[str]) -> str:
    """Archon's fuser prompt rebuilt from the fixture's string-literal lines (not from prompts.py)."""
    shape = SHAPES["fuser"]
    lines = shape["user_string_literal_lines"]
    text = "".join(line[:-1] if line.endswith("\\") else line for line in lines).replace("\\n", "\n")
    text += "".join(shape["user_then"])
    text = text.replace("{query}", query)
    return text + "".join(shape["per_candidate"].replace("{n}", str(n)).replace("{candidate}", c)
                          for n, c in enumerate(candidates, start=1))


def archon_replay(config: dict, conversation: list[dict], base_url: str) -> str:
    """Archon's layer loop as the fixture records it: components in order, samples in a row,
    generator = the conversation, fuser = its system + earlier turns + the fusion text."""
    system = SHAPES["conversation"]["system_added_when_first_message_is_not_system"]
    conv = conversation if conversation[0]["role"] == "system" else [system] + conversation
    fields = SHAPES["request_body"]["Together_API"]["fields"]
    outputs: list[str] = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for layer in config["layers"]:
            produced: list[str] = []
            for entry in layer:
                if entry["type"] == "generator":
                    messages = conv
                else:
                    messages = ([{"role": "system", "content": SHAPES["fuser"]["system"]}]
                                + [m for m in conv[:-1] if m["role"] != "system"]
                                + [{"role": "user", "content": fuser_user_text(conv[-1]["content"], outputs)}])
                values = {"model": entry["model"], "max_tokens": entry["max_tokens"],
                          "temperature": entry["temperature"], "messages": messages}
                for _ in range(entry.get("samples", 1)):
                    reply = client.post("/chat/completions", json={f: values[f] for f in fields})
                    reply.raise_for_status()
                    produced.append(reply.json()["choices"][0]["message"]["content"].strip())
            outputs = produced
    assert len(outputs) == 1
    return outputs[0]


def sent(server: SimServer) -> Counter:
    return Counter(json.dumps([b["model"], b["messages"], b["temperature"], b["max_tokens"]])
                   for b in (r.body for r in server.recorded_requests))


def test_archon_style_preset_sends_what_archon_sends(tmp_path, capsys):
    preset = tmp_path / "ordered.json"
    write_preset(preset, from_config("ordered", ORDERED, CATALOG))
    exported = tmp_path / "ordered.archon.json"
    code, _, err = cli(capsys, "preset", "export", str(preset), "--format", "archon", "--out", str(exported))
    assert code == 0, err
    with SimServer(SimulatedProvider(CATALOG)) as server:
        code, out, err = cli(capsys, "run", "--config", str(preset), "--backend", "http", "--base-url",
                             server.base_url, "--no-store", "--json", "--prompt", PROMPT)
        assert code == 0, err
        ours = sent(server)
        keys = {frozenset(r.body) for r in server.recorded_requests}
        server.reset_stats()
        answer = archon_replay(json.loads(exported.read_text()), [{"role": "user", "content": PROMPT}],
                               server.base_url)
        theirs = sent(server)
    assert keys == {frozenset(SHAPES["request_body"]["Together_API"]["fields"])}
    assert sum(ours.values()) == 4 + 2 + 1 and ours == theirs  # byte-identical messages, same calls
    assert json.loads(out)["answer"] == answer  # and so the same answer
    # both fusion layers (2 fusers, then the aggregator) sent Archon's fuser messages; that the
    # sim world reads them as aggregation is the next test's
    fused = [r for r in theirs if "fuses multiple answers" in r]
    assert len(fused) == 3


def test_the_sim_world_reads_archons_fusion_as_aggregation():
    import asyncio

    from moa_search.prompts import user_prompt
    from moa_search.runner import Runner
    trace = asyncio.run(Runner(SimulatedProvider(CATALOG)).run_item(ORDERED, user_prompt(PROMPT)))
    kinds = [c.completion.extra["sim_kind"] for c in trace.calls]
    assert kinds == ["answer"] * 4 + ["aggregate"] * 3
    assert trace.answer.startswith("Drawing on the 2 responses")


# ---- CLI ------------------------------------------------------------------------------------


def test_cli_import_writes_presets_and_refuses_with_one_line_each(tmp_path, capsys):
    files = [str(FIXTURES / n) for n in ("MoA-lite.json", "ranker.json", "unknown_models.json")]
    code, out, err = cli(capsys, "import", *files, "--from", "archon", "--out", str(tmp_path))
    assert code == 2
    assert "1 imported, 2 refused" in out
    assert "note: 'top_k_generations' ignored" in out
    # notes wrap at the console's width (80 in a pipe) under their indent; only a path may overrun
    notes = [line for line in out.splitlines() if line.startswith("  note:") or line.startswith(" " * 8)]
    assert len(notes) > 4 and all(len(line) <= console.width for line in notes), out
    refusals = [line for line in err.splitlines() if line.startswith("refused:")]
    assert len(refusals) == 2 and "Traceback" not in err
    assert refusals[0].endswith("ranker.json: layer 2 component 1: ranker is not MoA (it reorders and "
                                "filters candidates); MoA layers only generate and fuse")
    assert '[models."Qwen/Qwen2-72B-Instruct"]' in out
    written = json.loads((tmp_path / "MoA-lite.json").read_text())
    assert written["format"] == "moa-preset/1" and written["config"]["prompt_style"] == "archon"
    # the imported preset runs as it is
    code, out, err = cli(capsys, "run", "--config", str(tmp_path / "MoA-lite.json"), "--no-store",
                         "--prompt", PROMPT)
    assert code == 0, err
    assert "(archon)" in out


@pytest.mark.parametrize("command", [["run", "--prompt", PROMPT], ["eval", "--data", "math", "--scorer", "numeric"]])
def test_cli_config_given_an_archon_file_says_how_to_import_it(capsys, tmp_path, command):
    path = FIXTURES / "MoA.json"
    code, out, err = cli(capsys, *command, "--config", str(path), "--store", str(tmp_path / "calls.db"))
    assert code == 2
    assert err.strip() == f"error: {path}: this is an Archon config; import it with: moa-search import {path} --from archon"
    assert not (tmp_path / "calls.db").exists()  # refused before a store was made


def test_other_exporters_refuse_the_archon_style_in_one_line():
    from moa_search.exporters import export_text
    preset = from_config("ordered", ORDERED, CATALOG)
    with pytest.raises(ConfigError, match=r"^prompt_style: the standalone script sends the MoA prompts only"):
        export_text(preset, "standalone")
    with pytest.raises(ConfigError, match=r"cannot express this config: it only has the aggregate-and-synthesize prompt, "
                                          r"not 'archon-fuse-v1'"):
        export_text(preset, "moa-reference")


@pytest.mark.parametrize("fmt, words", [("archon", '"generator"'), ("moa-reference", "--rounds 1"),
                                        ("standalone", "import httpx"), ("preset", '"moa-preset/1"')])
def test_cli_preset_export_of_a_builtin(capsys, tmp_path, fmt, words):
    extra = ["--allow-prompt-change"] if fmt == "archon" else []
    code, out, err = cli(capsys, "preset", "export", "moa-lite", "--format", fmt, *extra)
    assert code == 0, err
    assert words in out


@pytest.mark.parametrize("argv, words", [
    (["preset", "export", "moa", "--format", "archon"], "error: prompt_style: 'moa': this config was measured"),
    (["preset", "export", "nope", "--format", "archon"], "error: preset: unknown preset 'nope'"),
    (["preset", "export", "moa", "--format", "yaml"], "error: --format: unknown format 'yaml'"),
    (["preset", "export", "moa", "--format", "archon", "--archon-model-type", "oops"],
     "expected MODEL=TYPE"),
    (["preset", "export", "moa", "--format", "standalone", "--allow-prompt-change"], "goes with --format archon"),
    (["preset", "export", "moa", "--prompt-style", "bogus"], "--prompt-style: expected one of"),
    (["import", str(FIXTURES / "MoA.json"), "--from", "archon", "--prompt-style", "bogus"],
     "--prompt-style: expected one of"),
    (["import", str(FIXTURES / "MoA.json"), "--from", "crewai"], "expected one of ['archon'], got 'crewai'"),
    (["import", "/nonexistent/x.json", "--from", "archon"], "refused: "),
])
def test_cli_bad_input_is_one_line_without_traceback(capsys, argv, words):
    code, out, err = cli(capsys, *argv)
    assert code == 2
    assert words in err.splitlines()[0] and "Traceback" not in err


def test_cli_export_archon_style_of_a_builtin_and_back(tmp_path, capsys):
    path = tmp_path / "moa.archon.json"
    code, out, err = cli(capsys, "preset", "export", "moa", "--format", "archon", "--prompt-style", "archon",
                         "--out", str(path))
    assert code == 0, err
    code, out, err = cli(capsys, "import", str(path), "--from", "archon", "--out", str(tmp_path / "back"))
    assert code == 0, err
    back = json.loads((tmp_path / "back" / "moa.json").read_text())
    assert back["config_hash"] == json.loads(path.read_text())["moa_search"]["config_hash"]
    assert back["config_hash"] == _archon_style(BUILTIN_PRESETS["moa"].config).config_hash


# ---- prompt style in a study's space -----------------------------------------------------------


def test_prompt_style_is_searchable_in_a_space():
    import optuna

    from moa_search.space import P_STYLE, SearchSpace
    base = {"models": [WIZ, QWEN72, DBRX], "aggregators": [QWEN110], "layers": [1, 2], "proposers": [2, 3]}
    plain = SearchSpace.from_dict(base)
    both = SearchSpace.from_dict({**base, "prompt_styles": ["moa", "archon"]})
    assert both.count_configs() == 2 * plain.count_configs() == len(both.enumerate_configs())
    assert {c.prompt_style for c in both.enumerate_configs()} == {"moa", "archon"}
    assert P_STYLE not in plain.config_to_params(plain.enumerate_configs()[-1])  # old studies: same params
    for config in both.enumerate_configs():
        params = both.config_to_params(config)
        assert both.suggest(optuna.trial.FixedTrial(params)) == config
    moa = BUILTIN_PRESETS["moa-lite"].config
    archon_only = SearchSpace.from_dict({**base, "models": [m.model for m in moa.proposer_layers[0]],
                                         "aggregators": [QWEN72], "proposers": [6, 6],
                                         "prompt_styles": ["archon"]})
    assert archon_only.adapt(moa) == _archon_style(moa) and archon_only.contains(_archon_style(moa))
    with pytest.raises(ConfigError, match=r"space.prompt_styles\[1\]: expected distinct values"):
        SearchSpace.from_dict({**base, "prompt_styles": ["moa", "moa"]})


def test_readme_archon_commands_as_written(tmp_path, monkeypatch, capsys):
    """README, Archon: the two commands exactly as written, in a folder holding the two files."""
    import shlex
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    block = readme.split("### Archon", 1)[1].split("```", 2)[1]
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("moa-search")]
    assert [c[1] for c in commands] == ["import", "preset"]
    for name in ("MoA-lite.json", "MoA.json"):
        (tmp_path / name).write_text((FIXTURES / name).read_text())
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        code, out, err = cli(capsys, *argv[1:])
        assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "presets").iterdir()) == ["MoA-lite.json", "MoA.json"]
    exported = json.loads((tmp_path / "moa.archon.json").read_text())
    assert exported["moa_search"]["prompt_style"] == "archon" and len(exported["layers"]) == 3


def test_cli_archon_model_type_and_base_url(capsys):
    code, out, err = cli(capsys, "preset", "export", "moa-lite", "--format", "archon", "--prompt-style", "archon",
                         "--archon-model-type", f"{QWEN72}=OpenAI_API")
    assert code == 0, err
    data = json.loads(out)
    assert {e["model"]: e["model_type"] for layer in data["layers"] for e in layer}[QWEN72] == "OpenAI_API"
    assert data["moa_search"]["notes"] == [
        f"run Archon with OPENAI_BASE_URL=https://api.together.xyz/v1 (and OPENAI_API_KEY): ['{QWEN72}'] "
        "use model_type OpenAI_API to reach it"]
    code, out, err = cli(capsys, "preset", "export", "moa-lite", "--format", "archon", "--prompt-style", "archon",
                         "--base-url", "http://127.0.0.1:8000/v1")
    assert code == 0, err
    data = json.loads(out)
    assert {e["model_type"] for layer in data["layers"] for e in layer} == {"OpenAI_API"}
    assert "OPENAI_BASE_URL=http://127.0.0.1:8000/v1" in data["moa_search"]["notes"][0]


def test_cli_import_never_replaces_a_preset_it_just_wrote(tmp_path, capsys):
    """Two files of one name (Archon's configs live in several folders) would write one preset."""
    (tmp_path / "other").mkdir()
    copy = tmp_path / "other" / "MoA-lite.json"
    copy.write_text((FIXTURES / "MoA.json").read_text())  # same name, different agents
    code, out, err = cli(capsys, "import", str(FIXTURES / "MoA-lite.json"), str(copy), "--from", "archon",
                         "--out", str(tmp_path / "presets"))
    assert code == 2 and "1 imported, 1 refused" in out
    assert err.startswith(f"refused: {copy}: ") and "was just written from" in err
    kept = json.loads((tmp_path / "presets" / "MoA-lite.json").read_text())
    assert len(kept["config"]["layers"]) == 1  # MoA-lite's one proposer layer, not MoA's two
