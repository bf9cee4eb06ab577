"""Preset files: round trips, schema validation with JSON-path errors, hash checks, no keys."""

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from moa_search.catalog import Catalog
from moa_search.config import BUILTIN_PRESETS, AgentSpec, MoAConfig, load_config_file
from moa_search.errors import ConfigError, UnknownModelError
from moa_search.preset import (PRESET_FORMAT, PresetFile, Provenance, from_builtin, from_config,
                               load_preset, preset_catalog, preset_schema, write_preset)
from moa_search.prompts import AGGREGATE_AND_SYNTHESIZE, user_prompt
from moa_search.runner import Runner
from tests.doubles import RecordingProvider

CATALOG = Catalog.default()
SELF_MOA = MoAConfig(((AgentSpec("microsoft/WizardLM-2-8x22B"),) * 6,), AgentSpec("Qwen/Qwen1.5-110B-Chat"))


def provenance(**over) -> Provenance:
    fields = dict(study="demo", trial=7, validation_set="alpaca-mini", scorer="pairwise-judge",
                  quality=0.61, quality_ci=(0.55, 0.67), n_items=120, cost_usd_per_item=0.0123,
                  latency_p50_s=9.5, latency_p95_s=14.0, simulated=True, created_at="2024-06-01")
    fields.update(over)
    return Provenance(**fields)


def written(tmp_path: Path, preset: PresetFile | None = None) -> tuple[Path, dict]:
    preset = preset or from_config("tuned", SELF_MOA, CATALOG, provenance())
    path = write_preset(tmp_path / "preset.json", preset)
    return path, json.loads(path.read_text())


def rewrite(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name", sorted(BUILTIN_PRESETS))
def test_builtin_presets_round_trip(tmp_path, name):
    preset = from_builtin(BUILTIN_PRESETS[name], CATALOG)
    loaded = load_preset(write_preset(tmp_path / f"{name}.json", preset))
    assert loaded == preset
    assert loaded.config_hash == BUILTIN_PRESETS[name].config.config_hash
    assert loaded.provenance is None  # hand-made presets need none


def test_file_has_the_documented_shape(tmp_path):
    _, data = written(tmp_path)
    assert data["format"] == PRESET_FORMAT == "moa-preset/1"
    assert data["config"] == SELF_MOA.to_dict() and data["config_hash"] == SELF_MOA.config_hash
    # only the models the config calls, with endpoint, env var name and prices
    assert set(data["models"]) == {"microsoft/WizardLM-2-8x22B", "Qwen/Qwen1.5-110B-Chat"}
    wiz = data["models"]["microsoft/WizardLM-2-8x22B"]
    assert wiz["base_url"] == "https://api.together.xyz/v1" and wiz["api_key_env"] == "TOGETHER_API_KEY"
    assert (wiz["input_price"], wiz["output_price"], wiz["context_window"]) == (1.2, 1.2, 65536)
    assert data["prompt_template"] == {"id": "moa-aggregate-v1", "text": AGGREGATE_AND_SYNTHESIZE}
    prov = data["provenance"]
    assert prov["quality_ci"] == [0.55, 0.67] and prov["simulated"] is True and prov["trial"] == 7
    assert prov["moa_search_version"]


def test_round_trip_with_provenance_and_self_moa(tmp_path):
    preset = from_config("tuned", SELF_MOA, CATALOG, provenance(), description="Self-MoA")
    loaded = load_preset(write_preset(tmp_path / "p.json", preset))
    assert loaded == preset and loaded.simulated
    assert len(loaded.config.proposer_layers[0]) == 6


def test_schema_is_shipped_package_data_and_valid():
    text = resources.files("moa_search").joinpath("data/preset.schema.json").read_text("utf-8")
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == preset_schema()


def test_written_files_validate_against_the_schema_standalone(tmp_path):
    _, data = written(tmp_path)
    jsonschema.validate(data, preset_schema())  # other tools can validate with the schema alone


@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d["config"]["layers"][0][1].__setitem__("temperature", 3.5),
     "config.layers[0][1].temperature", "<= 2"),
    (lambda d: d["config"]["layers"][0][1].__setitem__("temperature", "hot"),
     "config.layers[0][1].temperature", 'expected a number, got "hot"'),
    (lambda d: d["config"]["aggregator"].__setitem__("max_tokens", 0),
     "config.aggregator.max_tokens", ">= 1"),
    (lambda d: d["config"]["layers"][0][0].pop("model"), "config.layers[0][0].model",
     "missing required key"),
    (lambda d: d["config"].__setitem__("layers", [[]]), "config.layers[0]", "non-empty"),
    (lambda d: d.__setitem__("colour", "blue"), "colour", "unknown key"),
    (lambda d: d["models"]["Qwen/Qwen1.5-110B-Chat"].pop("base_url"),
     'models."Qwen/Qwen1.5-110B-Chat".base_url', "missing required key"),
    (lambda d: d["models"]["Qwen/Qwen1.5-110B-Chat"].__setitem__("input_price", -1),
     'models."Qwen/Qwen1.5-110B-Chat".input_price', ">= 0"),
    (lambda d: d["provenance"].__setitem__("simulated", "yes"), "provenance.simulated", "true or false"),
    (lambda d: d["provenance"].pop("n_items"), "provenance.n_items", "missing required key"),
    (lambda d: d.__setitem__("name", "my preset!"), "name", "slug"),
])
def test_bad_fields_are_named_by_json_path(tmp_path, mutate, field, words):
    path, data = written(tmp_path)
    mutate(data)
    with pytest.raises(ConfigError) as err:
        load_preset(rewrite(path, data))
    assert err.value.source == str(path) and err.value.field == field
    assert str(err.value).startswith(f"{path}: {field}: ") and words in str(err.value)


def test_a_key_pasted_as_api_key_env_is_refused_without_echo(tmp_path):
    path, data = written(tmp_path)
    data["models"]["Qwen/Qwen1.5-110B-Chat"]["api_key_env"] = "sk-live-abcdef0123456789"
    with pytest.raises(ConfigError, match=r"NAME of an environment variable") as err:
        load_preset(rewrite(path, data))
    assert "sk-live" not in str(err.value)


def test_base_url_with_credentials_is_refused_without_echo(tmp_path):
    path, data = written(tmp_path)
    data["models"]["Qwen/Qwen1.5-110B-Chat"]["base_url"] = "https://me:hunter22@api.together.xyz/v1"
    with pytest.raises(ConfigError, match="without credentials") as err:
        load_preset(rewrite(path, data))
    assert "hunter22" not in str(err.value)


def test_edited_config_without_its_hash_is_caught(tmp_path):
    path, data = written(tmp_path)
    data["config"]["aggregator"]["temperature"] = 0.2  # valid value, but not what was measured
    with pytest.raises(ConfigError, match=r"config_hash: does not match the config") as err:
        load_preset(rewrite(path, data))
    assert SELF_MOA.config_hash in str(err.value)


def test_unsorted_but_equal_config_keeps_its_hash(tmp_path):
    path, data = written(tmp_path, from_builtin(BUILTIN_PRESETS["moa"], CATALOG))
    data["config"]["layers"][0].reverse()  # proposer order does not change the config
    assert load_preset(rewrite(path, data)).config_hash == BUILTIN_PRESETS["moa"].config.config_hash


@pytest.mark.parametrize("fmt, words", [
    ("moa-preset/2", "unsupported preset format version 'moa-preset/2'"),
    ("something-else", "not a preset file"),
    (None, "no 'format'"),
])
def test_format_version_is_checked_first(tmp_path, fmt, words):
    path, data = written(tmp_path)
    data.pop("format")
    if fmt is not None:
        data["format"] = fmt
    data["config"] = "garbage that the schema would also reject"
    with pytest.raises(ConfigError, match=words) as err:
        load_preset(rewrite(path, data))
    assert err.value.field == "format"


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "format": "moa-preset/1",\n  "name": oops\n}')
    with pytest.raises(ConfigError, match=r"broken.json: not valid JSON at line 3, column 11"):
        load_preset(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read preset"):
        load_preset(tmp_path / "nope.json")


def test_config_model_without_an_embedded_entry(tmp_path):
    path, data = written(tmp_path)
    del data["models"]["Qwen/Qwen1.5-110B-Chat"]
    with pytest.raises(ConfigError, match=r"models: the config calls 'Qwen/Qwen1.5-110B-Chat'"):
        load_preset(rewrite(path, data))


def test_prompt_template_text_must_match_its_id(tmp_path):
    path, data = written(tmp_path)
    data["prompt_template"]["text"] = "Just pick the best answer."
    with pytest.raises(ConfigError, match=r"prompt_template.text: differs from the built-in"):
        load_preset(rewrite(path, data))
    data["prompt_template"] = {"id": "other", "text": "x"}
    with pytest.raises(ConfigError, match=r"prompt_template.id: 'other' is not the config's"):
        load_preset(rewrite(path, data))


@pytest.mark.parametrize("over, field", [
    ({"quality_ci": [0.7, 0.5]}, "provenance.quality_ci"),
    ({"quality": 0.9}, "provenance.quality"),
    ({"latency_p95_s": 1.0}, "provenance.latency_p95_s"),
    ({"created_at": "2024-13-45"}, "provenance.created_at"),
])
def test_provenance_consistency(tmp_path, over, field):
    path, data = written(tmp_path)
    data["provenance"].update(over)
    with pytest.raises(ConfigError) as err:
        load_preset(rewrite(path, data))
    assert err.value.field == field
    with pytest.raises(ConfigError) as err:  # the same rule holds when building in code
        provenance(**{k: tuple(v) if isinstance(v, list) else v for k, v in over.items()})
    assert err.value.field == field


def test_a_key_in_the_environment_never_reaches_the_file(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("TOGETHER_API_KEY", secret)
    monkeypatch.setenv("OPENAI_API_KEY", secret + "-openai")
    path = write_preset(tmp_path / "p.json", from_builtin(BUILTIN_PRESETS["moa-gpt4o"], CATALOG))
    text = path.read_text()
    assert secret not in text and "TOGETHER_API_KEY" in text and "OPENAI_API_KEY" in text


def test_write_refuses_a_file_that_would_contain_a_key(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("TOGETHER_API_KEY", secret)
    preset = from_config("tuned", SELF_MOA, CATALOG, description=f"my key is {secret}")
    with pytest.raises(ConfigError, match=r"would contain the value of \$TOGETHER_API_KEY") as err:
        write_preset(tmp_path / "p.json", preset)
    assert secret not in str(err.value) and not (tmp_path / "p.json").exists()


def test_from_config_refuses_models_the_catalog_lacks():
    with pytest.raises(UnknownModelError, match="unknown model 'nope/model'"):
        from_config("x", MoAConfig.single("nope/model"), CATALOG)
    with pytest.raises(ConfigError, match="slug"):
        from_config("has space", SELF_MOA, CATALOG)


def test_preset_catalog_runs_without_the_original_catalog(tmp_path):
    preset = load_preset(write_preset(tmp_path / "p.json", from_builtin(BUILTIN_PRESETS["moa-gpt4o"], CATALOG)))
    rebuilt = preset_catalog(preset)
    rebuilt.check_config(preset.config)
    assert set(rebuilt.models) == set(preset.config.models)
    for model_id in rebuilt.models:
        original, copy = CATALOG.get(model_id), rebuilt.get(model_id)
        assert (copy.input_price, copy.output_price, copy.context_window, copy.sim) == \
               (original.input_price, original.output_price, original.context_window, original.sim)
        assert (copy.endpoint.base_url, copy.endpoint.api_key_env, copy.endpoint.name) == \
               (original.endpoint.base_url, original.endpoint.api_key_env, original.endpoint.name)
    assert {e.name for e in rebuilt.endpoints.values()} == {"together", "openai"}
    assert rebuilt.get("gpt-4o-2024-05-13").cost(1_000_000, 1_000_000) == pytest.approx(20.0)


async def test_a_loaded_preset_runs(tmp_path):
    preset = load_preset(write_preset(tmp_path / "p.json", from_config("tuned", SELF_MOA, CATALOG)))
    provider = RecordingProvider()
    trace = await Runner(provider).run_item(preset.config, user_prompt("Name a prime."))
    assert trace.answer == "answer from Qwen/Qwen1.5-110B-Chat#0"
    assert sorted(r.sample_index for r in provider.requests[:6]) == [0, 1, 2, 3, 4, 5]


def test_config_loader_reads_preset_files(tmp_path):
    path, _ = written(tmp_path)
    assert load_config_file(path) == SELF_MOA


@pytest.mark.parametrize("over, field", [
    ({"n_items": "many"}, "provenance.n_items"),
    ({"quality_ci": (0.1,)}, "provenance.quality_ci"),
    ({"simulated": None}, "provenance.simulated"),
    ({"cost_usd_per_item": -0.5}, "provenance.cost_usd_per_item"),
])
def test_provenance_built_in_code_is_checked_like_a_file(over, field):
    with pytest.raises(ConfigError) as err:
        provenance(**over)
    assert err.value.field == field
