"""Study files: the examples load, defaults land where documented, every bad input names its field."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from moa_search.config import MoAConfig
from moa_search.errors import ConfigError
from moa_search.study import study_data
from moa_search.study_spec import load_study_spec, parse_study_spec

STUDIES = Path(__file__).resolve().parent.parent / "studies"

MINIMAL = """
[study]
name = "t1"

[data]
builtin = "math"

[scorer]
name = "numeric"

[space]
models = ["Qwen/Qwen1.5-72B-Chat", "meta-llama/Llama-3-8b-chat-hf"]
aggregators = ["Qwen/Qwen1.5-72B-Chat"]
layers = [1, 2]
proposers = [1, 2]

[budget]
trials = 10
"""


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def _error(tmp_path: Path, text: str) -> ConfigError:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_study_spec(path, runs_dir=tmp_path / "runs")
    assert exc.value.source == str(path)
    return exc.value


@pytest.mark.parametrize("name", ["sim-demo", "cheapest-gpt4t", "diversity"])
def test_example_studies_load(name: str, tmp_path: Path) -> None:
    spec = load_study_spec(STUDIES / f"{name}.toml", runs_dir=tmp_path)
    assert spec.name == name
    assert spec.space.count_configs() > 1
    data = study_data(spec)  # the data section fits the set (n_items, split)
    assert len(data.dev_ids) >= 40


def test_example_studies_say_what_they_promise(tmp_path: Path) -> None:
    demo = load_study_spec(STUDIES / "sim-demo.toml", runs_dir=tmp_path)
    assert (demo.backend, demo.data.builtin, demo.scorer.name, demo.sampler.name) == ("sim", "math", "numeric",
                                                                                      "cheapest-first")
    assert demo.space.count_configs() <= 20_000  # the walk orders the whole space
    assert 40 <= (demo.data.n_items or 0) <= 60 and demo.budget.usd is not None and demo.budget.usd < 5
    gpt4t = load_study_spec(STUDIES / "cheapest-gpt4t.toml", runs_dir=tmp_path)
    assert gpt4t.backend == "http" and gpt4t.objectives.mode == "constrained"
    assert gpt4t.objectives.target is not None and gpt4t.objectives.target.value == 0.5
    assert gpt4t.scorer.name == "pairwise_judge" and gpt4t.objectives.directions == ("minimize",)
    div = load_study_spec(STUDIES / "diversity.toml", runs_dir=tmp_path)
    assert div.space.proposers == (1, 6) and div.space.proposer_mode == "both"


def test_defaults_put_storage_and_call_store_under_the_runs_dir(tmp_path: Path) -> None:
    spec = load_study_spec(_write(tmp_path, MINIMAL), runs_dir=tmp_path / "runs")
    run_dir = (tmp_path / "runs" / "t1").resolve()
    assert spec.storage == f"sqlite:///{run_dir / 'optuna.db'}"
    assert spec.call_store == run_dir / "calls.db"
    assert (spec.seed, spec.backend, spec.sampler.name, spec.objectives.mode) == (0, "sim", "tpe", "pareto")
    assert spec.objectives.directions == ("maximize", "minimize", "minimize")
    assert spec.fidelity.enabled and spec.fidelity.first_items == 20
    assert spec.budget.usd is None and spec.budget.trials == 10


def test_relative_paths_resolve_against_the_study_file(tmp_path: Path) -> None:
    text = MINIMAL.replace('builtin = "math"', 'path = "data/items.jsonl"')
    spec = load_study_spec(_write(tmp_path, text), runs_dir=tmp_path)
    assert spec.data.path == tmp_path / "data" / "items.jsonl" and spec.data.builtin is None


def test_objective_subset_and_baseline_target(tmp_path: Path) -> None:
    text = MINIMAL + '\n[objectives]\nmode = "pareto"\nmetrics = ["cost", "quality"]\n' \
                     'target = { baseline = "Qwen/Qwen1.5-72B-Chat" }\n'
    spec = load_study_spec(_write(tmp_path, text), runs_dir=tmp_path)
    assert spec.objectives.metrics == ("quality", "cost")
    assert spec.objectives.directions == ("maximize", "minimize")
    assert spec.objectives.target is not None
    assert spec.objectives.target.baseline_config == MoAConfig.single("Qwen/Qwen1.5-72B-Chat")
    preset = MINIMAL + '\n[objectives]\nmode = "constrained"\ntarget = { baseline = "moa-lite" }\n'
    spec = load_study_spec(_write(tmp_path, preset), runs_dir=tmp_path)
    assert spec.objectives.target.baseline_config.n_layers == 2  # type: ignore[union-attr]
    assert spec.objectives.objective_names == ("cost",)


@pytest.mark.parametrize("change, field, words", [
    (("[budget]\ntrials = 10", "[budget]\ntrials = 10\nusd = 0"), "budget.usd", "(0.0, inf]"),
    (("trials = 10", "trials = 0"), "budget.trials", ">= 1"),
    (("trials = 10", "trials = 10\ncalls = -5"), "budget.calls", ">= 1"),
    (("trials = 10", "trials = 10\ndollars = 3"), "budget.dollars", "unknown key"),
    (('name = "t1"', 'name = "t1"\nseed = "x"'), "study.seed", "integer"),
    (('name = "t1"', 'name = "t1"\nbackend = "grpc"'), "study.backend", "'sim', 'http'"),
    (('name = "t1"', 'name = "a b"'), "study.name", "run folder"),
    (('builtin = "math"', 'builtin = "poetry"'), "data.builtin", "math"),
    (('builtin = "math"', 'builtin = "math"\npath = "x.jsonl"'), "data", "exactly one"),
    (('builtin = "math"', 'builtin = "math"\ndev_fraction = 0'), "data.dev_fraction", "number in"),
    (('name = "numeric"', 'name = "vibes"'), "scorer.name", "pairwise_judge"),
    (('name = "numeric"', 'name = "pairwise_judge"\noptions = { judge_model = "nope" }'),
     "scorer.options.judge_model", "catalog"),
    (('name = "numeric"', 'name = "pairwise_judge"'), "scorer.options.judge_model", "needs this option"),
    (('name = "numeric"', 'name = "numeric"\noptions = { rel_tolerance = 0.1 }'),
     "scorer.options.rel_tolerance", "rel_tol"),
    (("proposers = [1, 2]", "proposers = [1, 3]"), "space.proposers", "distinct"),
    (("proposers = [1, 2]", "proposers = [2, 1]"), "space.proposers", "min 2 > max 1"),
    (('aggregators = ["Qwen/Qwen1.5-72B-Chat"]', 'aggregators = ["acme/unknown"]'),
     "space.aggregators[0]", "unknown model"),
    (('aggregators = ["Qwen/Qwen1.5-72B-Chat"]', "aggregators = []"), "space.aggregators", "at least one"),
    (("[budget]", "[typo_section]\nx = 1\n\n[budget]"), "typo_section", "unknown section"),
])
def test_bad_values_name_file_and_field(tmp_path: Path, change: tuple[str, str], field: str, words: str) -> None:
    old, new = change
    assert old in MINIMAL
    exc = _error(tmp_path, MINIMAL.replace(old, new, 1))
    assert exc.field == field
    assert words in str(exc)
    assert str(exc).startswith(f"{tmp_path / 'study.toml'}: {field}: ")


@pytest.mark.parametrize("extra, field, words", [
    ('[objectives]\nmode = "constrained"\n', "objectives.target", "needs a target"),
    ('[objectives]\nmode = "constrained"\ntarget = 0.5\nmetrics = ["quality"]\n', "objectives.metrics", "pareto"),
    ('[objectives]\nmetrics = ["cost"]\n', "objectives.metrics", "include 'quality'"),
    ('[objectives]\nmetrics = ["quality", "speed"]\n', "objectives.metrics[1]", "latency"),
    ('[objectives]\ntarget = { baseline = "gpt-5-ultra" }\n', "objectives.target.baseline", "unknown baseline"),
    ('[objectives]\ntarget = { model = "x" }\n', "objectives.target.model", "unknown key"),
    ('[objectives]\ntarget = "high"\n', "objectives.target", "a number or"),
    ('[objectives]\nmode = "constrained"\ntarget = 50\n', "objectives.target", "50% win rate is 0.5"),
    ('[objectives]\ntarget = 0.5\ntarget_confidence = 1.0\n', "objectives.target_confidence", "number in"),
    ('[sampler]\nname = "cmaes"\n', "sampler.name", "nsga2"),
    ('[sampler]\nname = "tpe"\noptions = { population_size = 4 }\n', "sampler.options.population_size", "unknown key"),
    ('[sampler]\nname = "nsga2"\noptions = { mutation_prob = 2.0 }\n', "sampler.options.mutation_prob", "number in"),
    ('[objectives]\nmode = "constrained"\ntarget = 0.5\n[sampler]\nname = "cheapest-first"\noptions = { slack = -0.1 }\n',
     "sampler.options.slack", "number in [0.0, inf]"),
    ('[objectives]\nmode = "constrained"\ntarget = 0.5\n[sampler]\nname = "cheapest-first"\noptions = { slack = "10%" }\n',
     "sampler.options.slack", "expected a number"),
    ('[fidelity]\nfirst_items = 1\n', "fidelity.first_items", ">= 2"),
    ('[fidelity]\nenabled = "yes"\n', "fidelity.enabled", "true or false"),
    ('[catalog]\npath = "missing-catalog.toml"\n', None, "cannot read catalog"),
])
def test_bad_sections_name_their_field(tmp_path: Path, extra: str, field: str | None, words: str) -> None:
    path = _write(tmp_path, MINIMAL + "\n" + extra)
    with pytest.raises(ConfigError) as exc:
        load_study_spec(path, runs_dir=tmp_path)
    assert exc.value.field == field
    assert words in str(exc.value)


def test_missing_sections_and_keys(tmp_path: Path) -> None:
    exc = _error(tmp_path, MINIMAL.replace("[scorer]\nname = \"numeric\"\n", ""))
    assert exc.field == "scorer"
    exc = _error(tmp_path, MINIMAL.replace('name = "t1"', 'seed = 1'))
    assert exc.field == "study.name"


def test_bad_toml_reports_the_line(tmp_path: Path) -> None:
    text = MINIMAL.replace("trials = 10", "trials = = 10")
    line = text.splitlines().index("trials = = 10") + 1
    exc = _error(tmp_path, text)
    assert "not valid TOML" in str(exc) and f"line {line}," in str(exc)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_study_spec(tmp_path / "nope.toml")
    assert exc.value.source == str(tmp_path / "nope.toml") and "cannot read study file" in str(exc.value)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_gp_sampler_without_torch_says_how_to_install_it(tmp_path: Path) -> None:
    exc = _error(tmp_path, MINIMAL + '\n[sampler]\nname = "gp"\n')
    assert exc.field == "sampler.name" and "pip install torch" in str(exc)


@pytest.mark.parametrize("sampler", ["grid", "cheapest-first"])
def test_enumerating_samplers_refuse_a_space_too_big_to_enumerate(sampler: str, tmp_path: Path) -> None:
    text = MINIMAL.replace('models = ["Qwen/Qwen1.5-72B-Chat", "meta-llama/Llama-3-8b-chat-hf"]', "models = [" + ", ".join(
        f'"{m}"' for m in ["Qwen/Qwen1.5-110B-Chat", "Qwen/Qwen1.5-72B-Chat", "microsoft/WizardLM-2-8x22B",
                           "meta-llama/Llama-3-70b-chat-hf", "mistralai/Mixtral-8x22B-Instruct-v0.1",
                           "databricks/dbrx-instruct", "meta-llama/Llama-3-8b-chat-hf",
                           "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4o-2024-05-13",
                           "gpt-4-turbo-2024-04-09"]) + "]")
    text = text.replace("layers = [1, 2]", "layers = [1, 8]").replace("proposers = [1, 2]", "proposers = [1, 10]")
    text = text.replace('aggregators = ["Qwen/Qwen1.5-72B-Chat"]',
                        'aggregators = ["Qwen/Qwen1.5-72B-Chat", "Qwen/Qwen1.5-110B-Chat", "gpt-4o-2024-05-13"]')
    if sampler == "cheapest-first":
        text += '\n[objectives]\nmode = "constrained"\ntarget = 0.5\n'
    exc = _error(tmp_path, text + f'\n[sampler]\nname = "{sampler}"\n')
    assert exc.field == "sampler.name" and "enumerates every config" in str(exc)


def test_parse_text_without_a_file() -> None:
    spec = parse_study_spec(MINIMAL, source="<memory>", base_dir="/", runs_dir="/tmp/unused-runs")
    assert spec.source == "<memory>" and spec.space.aggregators == ("Qwen/Qwen1.5-72B-Chat",)


@pytest.mark.parametrize("scorer", ['name = "single_grade"\noptions = { judge_model = "gpt-4o-2024-05-13" }',
                                    'name = "numeric"\noptions = { rel_tol = 0.01 }'])
def test_scorer_options_follow_the_scorer_signature(tmp_path: Path, scorer: str) -> None:
    spec = load_study_spec(_write(tmp_path, MINIMAL.replace('name = "numeric"', scorer)), runs_dir=tmp_path)
    assert spec.scorer.options and spec.scorer.name in ("single_grade", "numeric")


def test_a_local_study_without_a_catalog_uses_the_local_catalog(tmp_path: Path) -> None:
    text = ('[study]\nname = "loc"\nbackend = "local"\n[data]\nbuiltin = "math"\nn_items = 4\n'
            '[scorer]\nname = "numeric"\n[space]\nmodels = ["smollm2-135m"]\n'
            'aggregators = ["smollm2-135m"]\nlayers = [1, 2]\nproposers = [1, 2]\n'
            'proposer_mode = "same"\n[objectives]\nmode = "pareto"\nmetrics = ["quality", "latency"]\n'
            '[budget]\ntrials = 2\n')
    spec = load_study_spec(_write(tmp_path, text), runs_dir=tmp_path / "runs")
    assert "smollm2-135m" in spec.load_catalog()
    sim = text.replace('backend = "local"', 'backend = "sim"')
    assert "smollm2-135m" in _error(tmp_path, sim).args[0]  # the paper catalog has no such model
