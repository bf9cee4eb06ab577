"""Importers: each published layout (fixtures written here, in tests/fixtures/importers) imports
in one command, loads with ``load_dataset`` and runs through ``moa-search eval`` on the simulated
backend; a wrong file gives one line naming the file, the line and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moa_search.cli import main
from moa_search.datasets import Item, item_to_dict, load_dataset, write_dataset
from moa_search.errors import ConfigError
from moa_search.importers import IMPORTERS, ImportOptions, import_file
from moa_search.scoring import annotated_win_rates
from moa_search.stats import alpacaeval_win_rate
from moa_search.study import study_data
from moa_search.study_spec import load_study_spec

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "importers"
CHOICE_TAIL = "\n\nAnswer with the letter of the correct option."

# format, fixture, extra CLI options, scorer for `eval`, expected items (as item_to_dict gives them)
CASES = [
    ("gsm8k", "gsm8k_test.jsonl", [], "numeric", [
        {"id": "gsm8k-1", "prompt": "A baker makes 12 loaves a day for 5 days. How many loaves does she make?",
         "reference": "60", "metadata": {"solution": "She makes 12 a day.\n12 * 5 = <<12*5=60>>60 loaves."}},
        {"id": "gsm8k-2", "reference": "1450000"},
        {"id": "gsm8k-3", "reference": "5"}]),
    ("arc", "arc_challenge.jsonl", [], "choice", [
        {"id": "Fixture_0001", "reference": "B", "prompt": "Which of these is a source of light?\n\n"
         "A) the Moon\nB) the Sun\nC) a mirror\nD) a rock" + CHOICE_TAIL},
        {"id": "Fixture_0002", "reference": "A", "metadata": {"labels": ["1", "2", "3"]},
         "prompt": "What state of matter is ice?\n\nA) solid\nB) liquid\nC) gas" + CHOICE_TAIL}]),
    ("openbookqa", "openbookqa_test.jsonl", [], "choice", [
        {"id": "7-001", "reference": "B"}, {"id": "7-002", "reference": "C"}]),
    ("mmlu", "elementary_arithmetic_test.csv", [], "choice", [
        {"id": "elementary_arithmetic-1", "reference": "C", "category": "elementary_arithmetic",
         "prompt": "What is 7 + 6?\n\nA) 11\nB) 12\nC) 13\nD) 14" + CHOICE_TAIL},
        {"id": "elementary_arithmetic-2", "reference": "C",
         "prompt": "Which number is even?\nPick one.\n\nA) 3\nB) 5\nC) 8\nD) 9" + CHOICE_TAIL},
        {"id": "elementary_arithmetic-3", "reference": "B"}]),
    ("alpacaeval", "alpacaeval_model_outputs.json",
     ["--baseline", str(FIXTURES / "alpacaeval_reference_outputs.json")], "pairwise_judge", [
        {"id": "alpacaeval-1", "prompt": "Name three primary colours.", "category": "helpful_base",
         "baseline_output": "The primary colours are red, yellow and blue.",
         "metadata": {"generator": "fixture_reference"}},
        {"id": "alpacaeval-2", "category": "koala",
         "baseline_output": "Rain taps the window\nclouds fold the hills into grey\nthe street shines again"}]),
    ("alpacaeval_annotations", "alpacaeval_annotations_v1.json", [], "pairwise_judge", [
        {"id": "alpacaeval-1", "prompt": "Name three primary colours.", "category": "helpful_base",
         "baseline_output": "Red, yellow and blue.",
         "metadata": {"output": "The three primary colours are red, yellow and blue.",
                      "preference": 2.0, "generator": "fixture_model",
                      "baseline_generator": "text_davinci_003"}},
        {"id": "alpacaeval-2", "metadata": {"output": "Soft rain on the roof.", "preference": 1.0,
                                            "generator": "fixture_model",
                                            "baseline_generator": "text_davinci_003"}},
        # AlpacaEval 1.0 writes a draw as 0; it is kept as AlpacaEval 2.0's 1.5
        {"id": "alpacaeval-3", "baseline_output": "Paris."},
        {"id": "alpacaeval-4", "category": "oasst"}]),
    ("mtbench", "mtbench_question.jsonl", [], "single_grade_judge", [
        {"id": "81", "prompt": "Write a short note inviting a neighbour to tea.", "category": "writing",
         "follow_ups": [{"prompt": "Rewrite it as a limerick."}], "metadata": None},
        {"id": "111", "reference": "9", "category": "math",
         "follow_ups": [{"prompt": "And with side 4?", "reference": "16"}]}]),
    ("jsonl", "generic_custom.jsonl", ["--id-field", "qid", "--prompt-field", "task.text",
                                       "--reference-field", "gold", "--category-field", "topic"], "numeric", [
        {"id": "1", "prompt": "What is 6 * 7?", "reference": "42", "category": "arithmetic",
         "metadata": {"source": "fixture"}},
        {"id": "2", "reference": "99"}]),
    ("json", "generic_custom.json", ["--id-field", "key", "--prompt-field", "q", "--reference-field", "ans",
                                     "--category-field", "kind"], "numeric", [
        {"id": "a1", "prompt": "What is 3 + 4?", "reference": "7", "category": "arithmetic"},
        {"id": "a2", "reference": "16"}]),
    ("csv", "generic_custom.csv", ["--id-field", "number", "--prompt-field", "text",
                                   "--reference-field", "expected", "--category-field", "theme"], "numeric", [
        {"id": "1", "prompt": "What is 5 + 5?", "reference": "10", "category": "arithmetic"},
        {"id": "2", "reference": "27"}]),
]


def test_every_registered_format_has_a_fixture_case() -> None:
    assert sorted(IMPORTERS) == sorted(fmt for fmt, *_ in CASES)


@pytest.mark.parametrize("fmt, fixture, options, scorer, expected", CASES, ids=[c[0] for c in CASES])
def test_import_load_and_eval(fmt: str, fixture: str, options: list[str], scorer: str,
                              expected: list[dict[str, object]], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"{fmt}.jsonl"
    code = main(["data", "import", str(FIXTURES / fixture), "--format", fmt, "--out", str(out), *options])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"imported {len(expected)} items" in printed.out

    ds = load_dataset(out)
    assert len(ds) == len(expected)
    for item, want in zip(ds, expected):
        got = item_to_dict(item)
        assert {k: got.get(k) for k in want} == want
        assert isinstance(item.id, str)

    code = main(["eval", "--data", str(out), "--scorer", scorer, "--preset", "moa-lite",
                 "--store", str(tmp_path / "calls.db"), "--json", "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = json.loads(printed.out)
    assert result["dataset_source"] == str(out) and result["simulated"] is True
    quality = result["quality"]
    # every item carries what its scorer needs (a reference, a baseline output) and is scored
    assert quality["n"] == quality["n_scored"] == len(expected)
    assert quality["counts"]["missing_field"] == 0
    if scorer == "pairwise_judge":
        assert quality["n_wins"] + quality["n_draws"] + quality["n_losses"] == len(expected)
        assert main(["eval", "--data", str(out), "--scorer", scorer, "--preset", "moa-lite",
                     "--store", str(tmp_path / "calls.db"), "--quiet"]) == 0
        text = capsys.readouterr().out
        assert (f"  wins {quality['n_wins']}, draws {quality['n_draws']}, "
                f"losses {quality['n_losses']} (vs baseline)\n") in text
        # no instruction_difficulty in these sets: the LC win rate says it is approximate
        assert quality["lc_approximate"] is True
        assert "  (length-controlled: approximate: no instruction difficulty)\n" in text
    if fmt == "mtbench":  # both turns run and graded, each reported
        assert sorted(quality["per_turn"]) == ["1", "2"]


def test_written_set_round_trips_through_the_loader(tmp_path: Path) -> None:
    ds = import_file(FIXTURES / "mtbench_question.jsonl", "mtbench")
    back = load_dataset(write_dataset(ds, tmp_path / "sub" / "mt.jsonl"))
    assert back.items == ds.items
    assert [dict(i.metadata) for i in back] == [dict(i.metadata) for i in ds]
    assert not (tmp_path / "sub" / "mt.jsonl.tmp").exists()


def test_alpacaeval_without_a_baseline_file_uses_its_own_outputs() -> None:
    ds = import_file(FIXTURES / "alpacaeval_model_outputs.json", "alpacaeval")
    assert ds.get("alpacaeval-1").baseline_output == "Red, yellow and blue."
    assert dict(ds.get("alpacaeval-1").metadata) == {"generator": "fixture_model"}


def test_gsm8k_keeps_large_answers_exact_for_the_numeric_scorer() -> None:
    """2 of 1319 GSM8K test answers are this large; a 1e-6 tolerance used to accept one off."""
    from moa_search.scoring import NumericScorer
    item = import_file(FIXTURES / "gsm8k_test.jsonl", "gsm8k").get("gsm8k-2")
    assert NumericScorer().score(item, "#### 1,450,001").value == 0.0
    assert NumericScorer().score(item, "The answer is 1,450,000.").value == 1.0


BAD = [
    ("gsm8k", "x.jsonl", '{"question": "q", "answer": "42"}\n', "line 1: answer",
     "expected the answer to end with '#### N'"),
    ("gsm8k", "x.jsonl", '{"question": "q", "answer": "#### 1"}\n{"question": "q"\n', "line 2",
     "invalid JSON"),
    ("gsm8k", "x.jsonl", '\n{"answer": "#### 1"}\n', "line 2: question", "missing required field"),
    ("arc", "x.jsonl", ('{"id": "a", "question": {"stem": "s", "choices": [{"text": "t", "label": "A"}, '
                        '{"text": "u", "label": "B"}]}, "answerKey": "E"}\n'), "line 1: answerKey",
     "expected one of the choice labels ['A', 'B'], got 'E'"),
    ("arc", "x.jsonl", ('{"id": true, "question": {"stem": "s", "choices": [{"text": "t", "label": "A"}, '
                        '{"text": "u", "label": "B"}]}, "answerKey": "A"}\n'), "line 1: id",
     "expected a string or an integer id, got a boolean"),
    ("openbookqa", "x.jsonl", '{"id": "a", "question": {"stem": "s", "choices": "AB"}, "answerKey": "A"}\n',
     "line 1: question.choices", "expected a list of {label, text} objects"),
    ("mmlu", "x_test.csv", "q,1,2,3,4,A\nq2,1,2,3,4,F\n", "line 2: answer", "expected a letter A-D, got 'F'"),
    ("mmlu", "x_test.csv", "q,1,2,3,4\n", "line 1", "expected 6 cells"),
    ("alpacaeval", "x.json", '[{"instruction": "i", "output": "o"}, {"output": "o"}]', "item 2: instruction",
     "missing required field"),
    ("alpacaeval", "x.json", '{"instruction": "i"}', "x.json", "expected a JSON array of objects"),
    ("alpacaeval_annotations", "x.json",
     '[{"instruction": "i", "output_1": "a", "output_2": "b", "preference": 3}]', "item 1: preference",
     "expected 1 (baseline wins), 2 (model wins), a value between them, or 0 (a draw, AlpacaEval 1.0), got 3"),
    ("alpacaeval_annotations", "x.json",
     '[{"instruction": "i", "output_1": "a", "output_2": "b", "preference": "2"}]', "item 1: preference",
     "expected a number, got a string"),
    ("alpacaeval_annotations", "x.json",
     '[{"instruction": "i", "output_1": "a", "output_2": "b", "preference": 2, '
     '"instruction_difficulty": "hard"}]', "item 1: instruction_difficulty", "expected a finite number"),
    ("mtbench", "x.jsonl", '{"question_id": 1, "category": "c", "turns": []}\n', "line 1: turns",
     "expected a non-empty list of strings"),
    ("mtbench", "x.jsonl", '{"question_id": 1, "turns": ["a"]}\n{"question_id": 1, "turns": ["b"]}\n',
     "line 2: id", "duplicate id '1' (first at line 1)"),
    ("jsonl", "x.jsonl", '{"prompt": "p", "id": [1]}\n', "line 1: id", "expected a string or an integer id"),
    ("csv", "x.csv", "id,prompt\n1,\n", "line 2: prompt", "expected a non-empty string, got an empty one"),
    ("json", "x.json", "[1]", "item 1", "expected an object, got a number"),
]


@pytest.mark.parametrize("fmt, name, text, where, message", BAD, ids=[f"{b[0]}-{k}" for k, b in enumerate(BAD)])
def test_a_wrong_file_gives_one_line_naming_file_line_and_field(
        fmt: str, name: str, text: str, where: str, message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / name
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(["data", "import", str(src), "--format", fmt, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(src) in err and where in err and message in err
    assert not out.exists()  # nothing half-written


def test_mapped_fields_are_required_and_options_fit_their_format(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    gsm = str(FIXTURES / "gsm8k_test.jsonl")
    out = str(tmp_path / "o.jsonl")
    assert main(["data", "import", gsm, "--format", "gsm8k", "--out", out, "--prompt-field", "q"]) == 2
    assert "field mappings (prompt_field) apply to the jsonl, json and csv formats" in capsys.readouterr().err
    assert main(["data", "import", gsm, "--format", "mmlu", "--out", out, "--baseline", gsm]) == 2
    assert "a baseline file applies to the alpacaeval format" in capsys.readouterr().err
    assert main(["data", "import", gsm, "--format", "parquet", "--out", out]) == 2
    assert "unknown format 'parquet'; available: gsm8k" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"line 1: answer_text: missing required field"):
        import_file(FIXTURES / "gsm8k_test.jsonl", "jsonl",
                    ImportOptions(prompt_field="question", reference_field="answer_text"))
    ref = FIXTURES / "alpacaeval_reference_outputs.json"
    other = tmp_path / "other_outputs.json"
    other.write_text('[{"instruction": "Write a haiku about rain.", "output": "o", "generator": "g"}]')
    with pytest.raises(ConfigError, match=r"model_outputs.json: item 1: instruction: no output for this "
                                          r"instruction in the baseline file .*other_outputs.json"):
        import_file(FIXTURES / "alpacaeval_model_outputs.json", "alpacaeval", ImportOptions(baseline=other))
    with pytest.raises(ConfigError, match=r"generic_custom.json: item 1: output: missing required field"):
        import_file(FIXTURES / "alpacaeval_model_outputs.json", "alpacaeval",
                    ImportOptions(baseline=FIXTURES / "generic_custom.json"))
    assert import_file(FIXTURES / "alpacaeval_model_outputs.json", "alpacaeval",
                       ImportOptions(baseline=ref)).get("alpacaeval-2").baseline_output.startswith("Rain taps")


def test_generic_import_numbers_records_without_ids_and_converts_integer_ids() -> None:
    ds = import_file(FIXTURES / "gsm8k_test.jsonl", "jsonl", ImportOptions(prompt_field="question"))
    assert ds.ids == ("line-1", "line-2", "line-3")
    assert "answer" in ds.get("line-1").metadata
    assert Item("x", prompt="p") == Item("x", prompt="p")  # items stay comparable after import


STUDY = """
[study]
name = "imported"

[data]
source = "{source}"
format = "gsm8k"

[scorer]
name = "numeric"

[space]
models = ["Qwen/Qwen1.5-72B-Chat", "meta-llama/Llama-3-8b-chat-hf"]
aggregators = ["Qwen/Qwen1.5-72B-Chat"]
layers = 1
proposers = [1, 2]

[sampler]
name = "random"

[budget]
trials = 2
"""


def test_a_study_imports_its_data_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(source=FIXTURES / "gsm8k_test.jsonl"), encoding="utf-8")
    spec = load_study_spec(study, runs_dir=tmp_path / "runs")
    assert spec.data.source_format == "gsm8k"
    assert study_data(spec).dataset.ids == ("gsm8k-1", "gsm8k-2", "gsm8k-3")
    code = main(["study", "run", str(study), "--runs-dir", str(tmp_path / "runs"), "--quiet", "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    trials = json.loads(printed.out)["trials"]
    assert trials and all(t["status"] == "complete" and t["n_items"] == 3 for t in trials)


@pytest.mark.parametrize("data, message", [
    ('source = "x.jsonl"', "data.format: missing"),
    ('source = "x.jsonl"\nformat = "docx"', "data.format: expected one of ['gsm8k'"),
    ('path = "x.jsonl"\nformat = "gsm8k"', "data: format go with 'source'"),
    ('builtin = "math"\nsource = "x.jsonl"\nformat = "gsm8k"', "data: give exactly one of"),
    ('source = "x.jsonl"\nformat = "gsm8k"\nprompt_fields = "q"', "prompt_fields"),
])
def test_study_data_source_errors_name_the_key(data: str, message: str, tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text(STUDY.replace('source = "{source}"\nformat = "gsm8k"', data), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_study_spec(study, runs_dir=tmp_path / "runs")
    assert message in str(exc.value) and str(study) in str(exc.value)


def test_eval_and_compare_take_numeric_tolerances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--abs-tol reaches the numeric scorer: with a tolerance wider than any answer's error every
    parseable answer counts, while by default (integer references: exact) the wrong ones do not."""
    data = tmp_path / "gsm8k.jsonl"
    assert main(["data", "import", str(FIXTURES / "gsm8k_test.jsonl"), "--format", "gsm8k",
                 "--out", str(data)]) == 0
    common = ["--data", str(data), "--scorer", "numeric", "--store", str(tmp_path / "calls.db"),
              "--json", "--quiet"]

    def quality(*extra: str) -> float:
        assert main(["eval", "--preset", "moa-lite", *common, *extra]) == 0
        return json.loads(capsys.readouterr().out)["quality"]["quality"]["mean"]
    capsys.readouterr()
    exact, loose = quality(), quality("--abs-tol", "1e12")
    assert exact < 1.0 and loose == 1.0
    assert main(["compare", "moa-lite", "moa", *common, "--rel-tol", "1e12"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["a"]["quality"]["quality"]["mean"] == both["b"]["quality"]["quality"]["mean"] == 1.0
    assert main(["eval", "--preset", "moa-lite", *common[:2], "--scorer", "choice", "--rel-tol", "0.1"]) == 2
    assert "--rel-tol/--abs-tol go with the numeric scorer, not 'choice'" in capsys.readouterr().err


def test_the_readme_import_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """README, Validation sets: the two commands exactly as written, in a fresh folder."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    commands = ["moa-search data import test.jsonl --format gsm8k --out\ngsm8k.jsonl",
                "moa-search eval --preset moa-lite --data gsm8k.jsonl --scorer numeric"]
    assert all(c in readme for c in commands)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.jsonl").write_bytes((FIXTURES / "gsm8k_test.jsonl").read_bytes())
    for command in commands:
        code = main(command.split()[1:])
        assert code == 0, capsys.readouterr().err
    assert "quality (numeric, accuracy)" in capsys.readouterr().out


def test_alpacaeval_1_annotations_read_0_as_a_draw_in_the_win_rate() -> None:
    """Issue 12: AlpacaEval 1.0 files write a draw as 0; alpaca_eval reads it as 1.5."""
    ds = import_file(FIXTURES / "alpacaeval_annotations_v1.json", "alpacaeval_annotations")
    assert [i.metadata.get("preference") for i in ds] == [2.0, 1.0, 1.5, None]
    rates = annotated_win_rates(ds, n_resamples=20)
    # the unannotated item is dropped, as alpaca_eval drops it: (100 + 0 + 50) / 3
    assert rates.win_rate == pytest.approx(50.0)
    assert (rates.n_wins, rates.n_draws, rates.n_losses) == (1, 1, 1)
    assert rates.lc_approximate  # no instruction_difficulty in a 1.0 file
    # the same preferences as numbers: 0 is refused unless the caller says it is a draw
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        alpacaeval_win_rate([2, 1, 0])
    assert alpacaeval_win_rate([2, 1, 0], zero_is_draw=True)[0] == pytest.approx(50.0)


def test_alpacaeval_annotations_read_a_nan_preference_as_unannotated(tmp_path: Path) -> None:
    """Python's json writes a missing preference as NaN; it is dropped like null, not fitted."""
    src = tmp_path / "annotations.json"
    src.write_text('[{"instruction": "i", "output_1": "a", "output_2": "bb", "preference": 2},'
                   ' {"instruction": "j", "output_1": "a", "output_2": "b", "preference": 1},'
                   ' {"instruction": "k", "output_1": "a", "output_2": "b", "preference": NaN}]')
    ds = import_file(src, "alpacaeval_annotations")
    assert [i.metadata.get("preference") for i in ds] == [2.0, 1.0, None]
    rates = annotated_win_rates(ds, n_resamples=20)
    assert rates.win_rate == pytest.approx(50.0) and rates.lc.mean == rates.lc.mean  # not NaN
