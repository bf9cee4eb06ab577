"""The search space: suggestions cover it, equal sets are one config, known configs round-trip."""

from __future__ import annotations

import optuna
import pytest

from moa_search.catalog import Catalog
from moa_search.config import BUILTIN_PRESETS, PAPER_PROPOSERS, AgentSpec, MoAConfig
from moa_search.errors import ConfigError
from moa_search.space import OutsideSpaceError, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

M = ("m-a", "m-b", "m-c", "m-d")


def _study(sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    return optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))


def _suggested(space: SearchSpace, params: dict, *, indexed: bool = False) -> MoAConfig:
    study = _study()
    study.enqueue_trial(params)
    trial = study.ask()
    return space.suggest_indexed(trial) if indexed else space.suggest(trial)


@pytest.mark.parametrize("mode", ["distinct", "same", "both"])
def test_random_suggestions_cover_the_space_and_stay_inside_it(mode: str) -> None:
    space = SearchSpace(models=M, aggregators=("agg-1", "agg-2"), layers=(1, 2), proposers=(1, 3),
                        proposer_mode=mode)
    everything = {c.config_hash for c in space.enumerate_configs()}
    assert len(everything) == space.count_configs()
    study = _study()
    seen = set()
    for _ in range(600):
        config = space.suggest(study.ask())
        assert space.explain_outside(config) is None
        seen.add(config.config_hash)
    assert seen == everything


def test_repair_keeps_distinct_sets_in_bounds_and_depends_on_the_set_only() -> None:
    space = SearchSpace(models=M, aggregators=("agg",), layers=(2, 2), proposers=(2, 3))
    none = {f"use:{m}": False for m in M}
    all_ = {f"use:{m}": True for m in M}
    few = _suggested(space, {"layers": 2, "aggregator": "agg", "temperature": 0.7, **none})
    many = _suggested(space, {"layers": 2, "aggregator": "agg", "temperature": 0.7, **all_})
    assert len(few.proposer_layers[0]) == 2 and len(many.proposer_layers[0]) == 3
    # Same input set, listed in another order in another space -> the same repair.
    reordered = SearchSpace(models=tuple(reversed(M)), aggregators=("agg",), layers=(2, 2), proposers=(2, 3))
    assert reordered.repair(list(M)) == space.repair(list(reversed(M)))
    # Repair does not always keep the first-listed models (no list-order bias).
    picks = {space.repair([m for m in M if m != skip]) for skip in M}
    assert len(picks) > 1


def test_equal_proposer_sets_in_any_order_are_one_config_with_one_params() -> None:
    space = SearchSpace(models=M, aggregators=("agg",), layers=(1, 3), proposers=(1, 4))
    one = MoAConfig.uniform(["m-c", "m-a", "m-b"], "agg", layers=3)
    two = MoAConfig.uniform(["m-b", "m-c", "m-a"], "agg", layers=3)
    assert one.config_hash == two.config_hash
    assert space.config_to_params(one) == space.config_to_params(two)
    assert _suggested(space, space.config_to_params(two)).config_hash == one.config_hash


@pytest.mark.parametrize("mode", ["distinct", "same", "both"])
def test_every_config_round_trips_through_params(mode: str) -> None:
    space = SearchSpace(models=M[:3], aggregators=("agg-1", "agg-2"), layers=(1, 3), proposers=(1, 3),
                        proposer_mode=mode, temperatures=(0.0, 0.7))
    for config in space.enumerate_configs():
        assert _suggested(space, space.config_to_params(config)).config_hash == config.config_hash
        indexed = space.config_to_params(config, indexed=True)
        assert _suggested(space, indexed, indexed=True) == config


def test_both_mode_single_proposer_is_one_config_whichever_mode_picks_it() -> None:
    space = SearchSpace(models=M, aggregators=("agg",), layers=(2, 2), proposers=(1, 3), proposer_mode="both")
    base = {"layers": 2, "aggregator": "agg", "temperature": 0.7}
    same = _suggested(space, {**base, "proposer_mode": "same", "self_model": "m-b", "n_proposers": 1})
    distinct = _suggested(space, {**base, "proposer_mode": "distinct",
                                  **{f"use:{m}": m == "m-b" for m in M}})
    assert same.config_hash == distinct.config_hash
    hashes = [c.config_hash for c in space.enumerate_configs()]
    assert len(hashes) == len(set(hashes)) == space.count_configs()


def test_self_moa_samples_one_model_n_times() -> None:
    space = SearchSpace(models=M, aggregators=("agg",), layers=(3, 3), proposers=(3, 3), proposer_mode="same")
    config = _suggested(space, {"layers": 3, "aggregator": "agg", "temperature": 0.7,
                                "self_model": "m-d", "n_proposers": 3})
    assert config.n_layers == 3
    assert all([a.model for a in layer] == ["m-d"] * 3 for layer in config.proposer_layers)


def test_one_layer_is_a_single_model() -> None:
    space = SearchSpace(models=M, aggregators=("agg",), layers=(1, 2), proposers=(1, 2))
    config = _suggested(space, {"layers": 1, "aggregator": "agg", "temperature": 0.7})
    assert config == MoAConfig.single("agg")


def test_paper_presets_fit_a_paper_space_and_others_are_refused_with_a_reason() -> None:
    space = SearchSpace(models=PAPER_PROPOSERS, aggregators=("Qwen/Qwen1.5-110B-Chat", "Qwen/Qwen1.5-72B-Chat"),
                        layers=(1, 3), proposers=(1, 6))
    for name in ("moa", "moa-lite"):
        preset = BUILTIN_PRESETS[name].config
        assert _suggested(space, space.config_to_params(preset)) == preset
    with pytest.raises(OutsideSpaceError, match="gpt-4o-2024-05-13"):
        space.config_to_params(BUILTIN_PRESETS["moa-gpt4o"].config)
    small = SearchSpace(models=PAPER_PROPOSERS[:3], aggregators=("Qwen/Qwen1.5-110B-Chat",), layers=(1, 3),
                        proposers=(1, 3))
    assert "not among the space's models" in (small.explain_outside(BUILTIN_PRESETS["moa"].config) or "")
    assert "temperature" in (space.explain_outside(MoAConfig.single("Qwen/Qwen1.5-72B-Chat", temperature=0.2)) or "")
    uneven = MoAConfig(((AgentSpec(PAPER_PROPOSERS[0]),), (AgentSpec(PAPER_PROPOSERS[1]),)),
                       AgentSpec("Qwen/Qwen1.5-72B-Chat"))
    assert "layers differ" in (space.explain_outside(uneven) or "")


def test_adapt_takes_the_structure_with_the_space_sampling_params() -> None:
    space = SearchSpace(models=PAPER_PROPOSERS, aggregators=("Qwen/Qwen1.5-72B-Chat",), layers=(2, 2),
                        proposers=(6, 6), temperatures=(0.3,), max_tokens=512)
    adapted = space.adapt(BUILTIN_PRESETS["moa-lite"].config)
    assert space.contains(adapted)
    assert {a.temperature for a in adapted.proposer_layers[0]} == {0.3}


@pytest.mark.parametrize("kwargs, field", [
    (dict(models=M[:2], proposers=(1, 3)), "space.proposers"),
    (dict(models=(), layers=(1, 2)), "space.models"),
    (dict(aggregators=()), "space.aggregators"),
    (dict(layers=(3, 2)), "space.layers"),
    (dict(proposers=(0, 2)), "space.proposers"),
    (dict(proposer_mode="mixed"), "space.proposer_mode"),
    (dict(temperatures=(3.0,)), "space.temperatures[0]"),
    (dict(models=("m-a", "m-a")), "space.models[1]"),
    (dict(max_tokens=0), "space.max_tokens"),
    (dict(models=M[:2], proposers=(3, 4), proposer_mode="both"), "space.proposers"),
])
def test_impossible_spaces_name_the_field(kwargs: dict, field: str) -> None:
    args = dict(models=M, aggregators=("agg",), layers=(1, 2), proposers=(1, 2), source="s.toml")
    args.update(kwargs)
    with pytest.raises(ConfigError) as exc:
        SearchSpace(**args)
    assert exc.value.field == field and exc.value.source == "s.toml"


def test_same_mode_may_ask_for_more_proposers_than_models() -> None:
    space = SearchSpace(models=("m-a",), aggregators=("agg",), layers=(2, 2), proposers=(1, 5), proposer_mode="same")
    assert space.count_configs() == 5


def test_unknown_models_are_checked_against_a_catalog() -> None:
    space = SearchSpace(models=(PAPER_PROPOSERS[0], "no/such-model"), aggregators=(PAPER_PROPOSERS[0],),
                        layers=(1, 2), proposers=(1, 2), source="s.toml")
    with pytest.raises(ConfigError) as exc:
        space.check_catalog(Catalog.default())
    assert exc.value.field == "space.models[1]" and "no/such-model" in str(exc.value)


def test_from_dict_rejects_unknown_keys_and_accepts_integer_ranges() -> None:
    with pytest.raises(ConfigError) as exc:
        SearchSpace.from_dict({"aggregators": ["a"], "layer": 2}, source="s.toml")
    assert exc.value.field == "space.layer"
    space = SearchSpace.from_dict({"models": ["a", "b"], "aggregators": ["a"], "layers": 2, "proposers": 2})
    assert space.layers == (2, 2) and space.proposers == (2, 2)


def test_enumeration_refuses_huge_spaces() -> None:
    space = SearchSpace(models=tuple(f"m{i}" for i in range(16)), aggregators=("agg",), layers=(1, 4),
                        proposers=(1, 8))
    with pytest.raises(ConfigError, match="more than the limit"):
        space.enumerate_configs(limit=10_000)
