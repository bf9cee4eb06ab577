import json

import pytest

from moa_search.config import (BUILTIN_PRESETS, AgentSpec, MoAConfig, PAPER_PROPOSERS, builtin_preset)
from moa_search.errors import ConfigError


def test_paper_presets_follow_the_paper_layer_count():
    moa = builtin_preset("moa").config
    assert moa.n_layers == 3 and moa.rounds == 2
    assert all(len(layer) == 6 for layer in moa.proposer_layers)
    assert moa.aggregator.model == "Qwen/Qwen1.5-110B-Chat"
    lite = builtin_preset("moa-lite").config
    assert lite.n_layers == 2 and lite.aggregator.model == "Qwen/Qwen1.5-72B-Chat"
    assert builtin_preset("moa-gpt4o").config.aggregator.model.startswith("gpt-4o")
    assert set(moa.models) == set(PAPER_PROPOSERS)


def test_hash_is_permutation_invariant_and_parameter_sensitive():
    a = MoAConfig.uniform(["m1", "m2", "m3"], "agg", layers=2)
    b = MoAConfig.uniform(["m3", "m1", "m2"], "agg", layers=2)
    assert a == b and a.config_hash == b.config_hash
    c = MoAConfig.uniform(["m1", "m2", "m3"], "agg", layers=2, temperature=0.2)
    d = MoAConfig.uniform(["m1", "m2", "m3"], "agg", layers=3)
    assert len({a.config_hash, c.config_hash, d.config_hash}) == 3


def test_canonical_json_round_trips():
    cfg = builtin_preset("moa").config
    again = MoAConfig.from_dict(json.loads(cfg.canonical_json()))
    assert again == cfg and again.config_hash == cfg.config_hash


def test_shorthand_spelling_equals_explicit_layers():
    short = MoAConfig.from_dict({"proposers": ["a", {"model": "b", "temperature": 0.3}],
                                 "layers": 3, "aggregator": "c"})
    explicit = MoAConfig.from_dict({"layers": [["a", {"model": "b", "temperature": 0.3}]] * 2,
                                    "aggregator": {"model": "c"}})
    assert short == explicit and short.n_layers == 3


def test_single_model_is_one_layer():
    cfg = MoAConfig.from_dict({"aggregator": "gpt-4o-2024-05-13"})
    assert cfg.n_layers == 1 and cfg.proposer_layers == () and cfg.summary() == "single gpt-4o-2024-05-13"


@pytest.mark.parametrize("data, field", [
    ({"layers": [[]], "aggregator": "a"}, "layers[0]"),
    ({"layers": [["a"]], "aggregator": {"model": "a", "temperature": 3}}, "aggregator.temperature"),
    ({"layers": [["a"]], "aggregator": {"model": "a", "max_tokens": 0}}, "aggregator.max_tokens"),
    ({"layers": [[{"model": ""}]], "aggregator": "a"}, "layers[0][0].model"),
    ({"layers": [[{"modle": "x"}]], "aggregator": "a"}, "layers[0][0]"),
    ({"layers": [["a"]]}, None),
    ({"layers": [["a"]], "aggregator": "a", "rounds": 2}, None),
    ({"proposers": ["a"], "layers": 0, "aggregator": "a"}, "layers"),
])
def test_invalid_configs_name_the_field(data, field):
    with pytest.raises(ConfigError) as info:
        MoAConfig.from_dict(data, source="cfg.json")
    assert "cfg.json" in str(info.value)
    if field:
        assert info.value.field == field, str(info.value)


def test_unknown_preset_lists_the_builtins():
    with pytest.raises(ConfigError, match="moa-lite"):
        builtin_preset("nope")
    assert set(BUILTIN_PRESETS) == {"moa", "moa-gpt4o", "moa-lite"}


def test_agent_spec_rejects_bool_and_nan():
    with pytest.raises(ConfigError):
        AgentSpec("m", temperature=True)
    with pytest.raises(ConfigError):
        AgentSpec("m", temperature=float("nan"))
