"""Scorers: answer parsers, reference scorers, LLM judges (through a test double) and run summaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from scipy import stats as sps

from moa_search.datasets import Dataset, Item
from moa_search.errors import ConfigError
from moa_search.prompts import PAIRWISE_JUDGE_USER
from moa_search.providers.base import ChatRequest, Completion, ProviderError, Usage
from moa_search.scoring import (SCORERS, ChoiceScorer, ExactScorer, LengthControlledJudge,
                                NumericScorer, PairwiseJudge, RegexScorer, SingleGradeJudge,
                                extract_choice, extract_number, format_number, make_scorer, parse_grade,
                                parse_pairwise_verdict, score_traces)
from moa_search.stats import length_controlled_win_rate

# ---- parsers --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("1,000", 1000.0),
    ("$1,000.50", 1000.5),
    ("The total is \\boxed{12}.", 12.0),
    ("Final answer: -3.5", -3.5),
    ("It rose by 12%", 12.0),
    ("3/4", 0.75),
    ("So she has 42.", 42.0),
    ("$\\frac{3}{4}$", 0.75),
    ("\\boxed{\\dfrac{1}{8}}", 0.125),
    ("1{,}250 apples", 1250.0),
    ("x = \u22125", -5.0),
    ("costs -$5.25", -5.25),
    ("#### 72", 72.0),
    ("2.5e3 metres", 2500.0),
    ("First 3 + 4 = 7, then 7 * 2 = 14", 14.0),              # no marker: the last number
    ("The answer is 7. Check: 7 * 2 = 14.", 7.0),             # marker beats the last number
    ("\\boxed{9} although 3 other ways give 11", 9.0),        # boxed beats everything
    ("Final answer: **1,234**", 1234.0),
    ("GPT-4 reckons the range is 3-4", 4.0),                  # a hyphen is not a minus sign
    ("no numbers here", None),
    ("", None),
    (None, None),
])
def test_extract_number(text: str | None, expected: float | None) -> None:
    got = extract_number(text)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("text, expected", [
    ("Answer: (C)", "C"),
    ("After checking, the answer is C.", "C"),
    ("**B**", "B"),
    ("(d)", "D"),
    ("B", "B"),
    ("c.", "C"),
    ("I would pick option E because it is prime.", "E"),
    ("The correct option is **A**", "A"),
    ("Answer: B. On reflection, final answer: (D)", "D"),
    ("E) 42", "E"),
    ("The answer is a tricky one, but (B) fits.", "B"),       # lowercase 'a' is an article
    ("Either (A) or (C) could be right.", None),              # ambiguous
    ("A) 1\nB) 2\nC) 3", None),                               # restating the options
    ("I am not sure.", None),
    ("", None),
])
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Output (a) is clearer. [[a]]", "a"), ("[[B]]", "b"), ("verdict: [[ b ]]", "b"),
    ("[[a]] or [[b]]", None), ("I prefer (a).", None), ("[a]", None), ("", None)])
def test_parse_pairwise_verdict(text: str, expected: str | None) -> None:
    assert parse_pairwise_verdict(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Rating: [[7]]", 7), ("[[10]]", 10), ("[[1]]", 1), ("Rating: [[ 8 ]]", 8), ("[[6.0]]", 6),
    # Half points, as FastChat reads them (issue 12: every "Rating: [[9.5]]" used to be lost).
    ("[[7.5]]", 7.5), ("Rating: [[9.5]]", 9.5), ("[[1.5]]", 1.5),
    # Still rejected where FastChat would mis-read: out of range, or two ratings (it takes the first).
    ("[[10.5]]", None), ("[[-1]]", None), ("[[9.5]] then [[8]]", None), ("Rating: [[9.]]", None),
    ("[[11]]", None), ("Rating: [[rating]]", None),
    # 0-10 as issue 12 and FastChat's reading have it (the prompt asks 1-10; a 0 still counts)
    ("[[0]]", 0), ("[[0.5]]", 0.5),
    ("[[3]] then [[8]]", None), ("Rating: 7/10", None), ("", None)])
def test_parse_grade(text: str, expected: float | None) -> None:
    assert parse_grade(text) == expected


# ---- reference scorers ----------------------------------------------------------------------

NUM = Item("n1", prompt="2+2?", reference="4")
NOREF = Item("n2", prompt="Say hi")


def test_numeric_scorer_statuses() -> None:
    s = NumericScorer()
    assert s.score(NUM, "It is 4.").value == 1.0
    wrong = s.score(NUM, "It is 5.")
    assert (wrong.value, wrong.status) == (0.0, "ok")
    unparsed = s.score(NUM, "I cannot say.")
    assert (unparsed.value, unparsed.status) == (0.0, "unparseable")
    missing = s.score(NOREF, "4")
    assert (missing.value, missing.status) == (None, "missing_field")
    bad_ref = s.score(Item("n3", prompt="?", reference="four"), "4")
    assert bad_ref.status == "missing_field" and "not a number" in bad_ref.detail


def test_numeric_scorer_tolerance() -> None:
    item = Item("t", prompt="?", reference="0.3333")  # 1e-4 relative error against 1/3
    assert NumericScorer().score(item, "1/3").value == 0.0
    assert NumericScorer(rel_tol=1e-3).score(item, "1/3").value == 1.0
    assert NumericScorer().score(Item("u", prompt="?", reference="0.3333333"), "1/3").value == 1.0
    assert NumericScorer().score(Item("f", prompt="?", reference="3/4"), "0.75").value == 1.0
    with pytest.raises(ConfigError, match="rel_tol"):
        NumericScorer(rel_tol=-1)


def test_numeric_scorer_integer_reference_is_exact_by_default() -> None:
    """Issue 12: the old default rel_tol 1e-6 accepted 1,450,001 for GSM8K's 1,450,000 and
    printed both as 1.45e+06."""
    item = Item("g", prompt="?", reference="1450000")
    near = NumericScorer().score(item, "The answer is 1,450,001.")
    assert near.value == 0.0
    assert near.detail == "got 1450001, expected 1450000"
    assert NumericScorer().score(item, "#### 1,450,000").value == 1.0
    assert NumericScorer().score(item, "1450000.0").value == 1.0
    # Asked for: a tolerance applies to integer references too.
    assert NumericScorer(rel_tol=1e-6).score(item, "1,450,001").value == 1.0
    assert NumericScorer(abs_tol=0.5).score(Item("h", prompt="?", reference="7"), "7.4").value == 1.0
    assert NumericScorer(abs_tol=0.5).score(Item("h", prompt="?", reference="7"), "7.6").value == 0.0
    # Non-integer references keep the float-noise default and print in full.
    third = NumericScorer().score(Item("t", prompt="?", reference="0.1"), "0.100001")
    assert third.value == 0.0 and third.detail == "got 0.100001, expected 0.1"
    assert NumericScorer().score(Item("s", prompt="?", reference="0.3"), "0.1+0.2 = 0.30000000000000004").value == 1.0


@pytest.mark.parametrize("value, text", [(1450001.0, "1450001"), (-3.0, "-3"), (0.75, "0.75"),
                                         (1 / 3, "0.3333333333333333"), (1e25, "1e+25")])
def test_format_number_shows_every_digit(value: float, text: str) -> None:
    assert format_number(value) == text


def test_choice_exact_and_regex_scorers() -> None:
    item = Item("c", prompt="Pick", reference="c")
    assert ChoiceScorer().score(item, "Answer: (C)").value == 1.0
    assert ChoiceScorer().score(item, "Answer: B").value == 0.0
    amb = ChoiceScorer().score(item, "(A) or (C)")
    assert (amb.value, amb.status) == (0.0, "unparseable")
    assert ChoiceScorer().score(Item("x", prompt="p", reference="Z"), "Z").status == "missing_field"

    ex = Item("e", prompt="Capital of France?", reference="Paris")
    assert ExactScorer().score(ex, "  paris. ").value == 1.0
    assert ExactScorer().score(ex, "It is Paris").value == 0.0

    rx = RegexScorer(r"ANSWER:\s*(\w+)")
    assert rx.score(ex, "Thinking... ANSWER: Lyon\nNo wait, ANSWER: paris").value == 1.0
    no_match = rx.score(ex, "Paris")
    assert (no_match.value, no_match.status) == (0.0, "unparseable")
    with pytest.raises(ConfigError, match="scorer.pattern"):
        RegexScorer("(unclosed")


# ---- judges through a test double -----------------------------------------------------------

class ScriptedJudgeDouble:
    """Test double for ``Runner.call``: answers each request with ``reply(request)`` and records
    (request, role, item_id). Each call costs $0.01; requests whose output text contains
    "CACHED" are reported as served from the cache (free)."""

    def __init__(self, reply: Callable[[ChatRequest], str], *, fail: bool = False):
        self.reply = reply
        self.fail = fail
        self.calls: list[tuple[ChatRequest, str, str | None]] = []

    async def __call__(self, request: ChatRequest, *, role: str, item_id: str | None = None) -> Completion:
        self.calls.append((request, role, item_id))
        if self.fail:
            raise ProviderError("judge endpoint down", endpoint="test-double", status=503)
        user = request.messages[-1].content
        return Completion(text=self.reply(request), model=request.model, usage=Usage(100, 5),
                          cost_usd=0.01, latency_s=0.1, cached="CACHED" in user)


def outputs_in(request: ChatRequest) -> tuple[str, str]:
    """The (a) and (b) outputs of a pairwise judge prompt."""
    user = request.messages[-1].content
    a = user.split("## Output (a)\n\n", 1)[1].split("\n\n## Output (b)", 1)[0]
    b = user.split("## Output (b)\n\n", 1)[1].split("\n\n## Task", 1)[0]
    return a, b


def prefers_good(request: ChatRequest) -> str:
    """An unbiased judge: GOOD beats BASE (the baselines), BASE beats anything else."""
    a, b = outputs_in(request)

    def rank(text: str) -> int:
        return 2 if "GOOD" in text else 1 if "BASE" in text else 0
    return "[[a]]" if rank(a) > rank(b) else "[[b]]"


INSTRUCT = Item("i1", prompt="Write a haiku.", baseline_output="BASE haiku", category="writing")


async def test_pairwise_judge_asks_both_orders_and_cancels_position_bias() -> None:
    double = ScriptedJudgeDouble(prefers_good)
    judge = PairwiseJudge("judge-model", double)
    win = await judge.ascore(INSTRUCT, "a GOOD haiku")
    assert (win.value, win.status) == (1.0, "ok")
    assert len(double.calls) == 2
    (r1, role1, id1), (r2, _, _) = double.calls
    assert role1 == "judge" and id1 == "i1" and r1.model == "judge-model" and r1.temperature == 0.0
    assert outputs_in(r1) == ("a GOOD haiku", "BASE haiku")
    assert outputs_in(r2) == ("BASE haiku", "a GOOD haiku")
    assert PAIRWISE_JUDGE_USER.split("{instruction}")[0] + "Write a haiku." in r1.messages[-1].content

    loss = await PairwiseJudge("judge-model", ScriptedJudgeDouble(prefers_good)).ascore(
        Item("i2", prompt="p", baseline_output="BASE"), "weak")
    assert loss.value == 0.0

    always_a = ScriptedJudgeDouble(lambda r: "Clearly [[a]]")  # pure position bias
    tie = await PairwiseJudge("j", always_a).ascore(INSTRUCT, "anything")
    assert (tie.value, tie.status) == (0.5, "ok")


async def test_pairwise_judge_retries_once_with_next_sample_index() -> None:
    double = ScriptedJudgeDouble(lambda r: "hmm" if r.sample_index == 0 else prefers_good(r))
    score = await PairwiseJudge("j", double).ascore(INSTRUCT, "GOOD")
    assert (score.value, score.status, score.judge_calls) == (1.0, "ok", 4)
    assert sorted(req.sample_index for req, _, _ in double.calls) == [0, 0, 1, 1]
    assert score.judge_cost_usd == pytest.approx(0.04)


async def test_pairwise_judge_unparseable_after_retry_has_no_value() -> None:
    double = ScriptedJudgeDouble(lambda r: "I cannot decide.")
    score = await PairwiseJudge("j", double).ascore(INSTRUCT, "x")
    assert (score.value, score.status, score.judge_calls) == (None, "unparseable", 4)


async def test_pairwise_judge_missing_baseline_and_failed_call() -> None:
    double = ScriptedJudgeDouble(prefers_good)
    missing = await PairwiseJudge("j", double).ascore(Item("m", prompt="p"), "x")
    assert missing.status == "missing_field" and double.calls == []
    down = await PairwiseJudge("j", ScriptedJudgeDouble(prefers_good, fail=True)).ascore(INSTRUCT, "x")
    assert (down.value, down.status) == (None, "failed") and "judge endpoint down" in down.detail


async def test_single_grade_judge_maps_grade_and_retries() -> None:
    double = ScriptedJudgeDouble(lambda r: "Solid. Rating: [[7]]")
    score = await SingleGradeJudge("j", double).ascore(INSTRUCT, "answer")
    assert score.value == pytest.approx(0.7) and score.judge_calls == 1  # MT-Bench score / 10
    request = double.calls[0][0]
    assert "[Question]\nWrite a haiku." in request.messages[-1].content
    assert "answer" in request.messages[-1].content
    top = await SingleGradeJudge("j", ScriptedJudgeDouble(lambda r: "[[10]]")).ascore(INSTRUCT, "a")
    assert top.value == 1.0
    retry = ScriptedJudgeDouble(lambda r: "[[11]]" if r.sample_index == 0 else "[[1]]")
    low = await SingleGradeJudge("j", retry).ascore(INSTRUCT, "a")  # out of range: asked again
    assert (low.value, low.judge_calls) == (0.1, 2)
    never = await SingleGradeJudge("j", ScriptedJudgeDouble(lambda r: "great")).ascore(INSTRUCT, "a")
    assert (never.value, never.status, never.judge_calls) == (None, "unparseable", 2)


# ---- score_traces ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FakeTrace:
    """Test double for ``runner.ItemTrace``: only the fields scoring reads."""

    item_id: str
    answer: str | None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.answer is None


MATH = Dataset("m", tuple(Item(f"q{i}", prompt=f"{i}+{i}?", reference=str(2 * i),
                               category="easy" if i < 6 else "hard") for i in range(10)))


async def test_score_traces_counts_every_status_and_averages_scored_items_only() -> None:
    traces = [FakeTrace(f"q{i}", f"The answer is {2 * i}.") for i in range(5)]   # 5 right
    traces += [FakeTrace("q5", "It is 999"), FakeTrace("q6", "no idea")]         # wrong, unparseable
    traces += [FakeTrace("q7", None, error="aggregator failed"), FakeTrace("q8", None)]
    result = await score_traces(NumericScorer(), MATH, traces)
    assert result.scorer == "numeric" and result.headline == "accuracy"
    assert result.n == 9 and result.n_scored == 7
    assert dict(result.counts) == {"ok": 6, "unparseable": 1, "missing_field": 0, "failed": 2}
    assert result.n_failed == 2 and result.n_unparseable == 1
    assert result.quality.mean == pytest.approx(5 / 7)
    assert result.values["q7"] is None and result.values["q6"] == 0.0 and result.values["q0"] == 1.0
    assert "q9" not in result.values  # not run, not scored
    failed = next(s for s in result.scores if s.item_id == "q7")
    assert failed.status == "failed" and failed.detail == "aggregator failed"
    assert result.per_category["easy"].mean == pytest.approx(5 / 6)
    assert result.per_category["hard"].mean == 0.0 and result.per_category["hard"].n == 1
    assert result.judge_cost_usd == 0.0 and result.win_rate is None
    assert result.to_dict()["counts"]["failed"] == 2


async def test_score_traces_rejects_unknown_and_duplicate_items() -> None:
    with pytest.raises(ValueError, match="not in the item set"):
        await score_traces(NumericScorer(), MATH, [FakeTrace("zzz", "1")])
    with pytest.raises(ValueError, match="two traces"):
        await score_traces(NumericScorer(), MATH, [FakeTrace("q1", "2"), FakeTrace("q1", "2")])


def make_instruct_set(n: int) -> Dataset:
    return Dataset("inst", tuple(Item(f"i{k}", prompt=f"Instruction {k}", baseline_output="BASE".ljust(100, "."),
                                      category="odd" if k % 2 else "even") for k in range(n)))


async def test_pairwise_score_traces_reports_alpacaeval_win_rate_lc_and_judge_cost() -> None:
    n = 40
    items = make_instruct_set(n)
    rng = np.random.default_rng(0)
    good = rng.random(n) < 0.6
    # equal lengths (100 chars) so LC must equal the raw win rate
    traces = [FakeTrace(f"i{k}", ("GOOD" if good[k] else "weak").ljust(100, ".")) for k in range(n)]
    # a judge reply for answers marked CACHED is free: none here, so paid == cost
    result = await score_traces(PairwiseJudge("j", ScriptedJudgeDouble(prefers_good)), items, traces)
    prefs = good.astype(float)
    assert result.headline == "win_rate"
    assert result.quality.mean == pytest.approx(prefs.mean())
    assert result.win_rate == pytest.approx(np.mean(prefs * 100))
    assert result.win_rate_se == pytest.approx(sps.sem(prefs * 100))
    assert result.lc_win_rate == pytest.approx(result.win_rate, abs=1e-3)
    assert result.judge_calls == 2 * n
    assert result.judge_cost_usd == pytest.approx(0.01 * 2 * n)
    assert result.judge_paid_usd == pytest.approx(result.judge_cost_usd)


async def test_pairwise_score_traces_counts_wins_draws_and_losses() -> None:
    """Issue 12 item 6: the leaderboards print n_wins / n_draws / n_losses beside the win rate."""
    items = make_instruct_set(7)

    def judge(request: ChatRequest) -> str:
        a, b = outputs_in(request)
        if "TIE" in a or "TIE" in b:
            return "[[a]]"  # position bias: one order each way -> a draw
        return prefers_good(request)
    answers = ["GOOD", "GOOD", "TIE", "weak", "weak", "weak", None]
    traces = [FakeTrace(f"i{k}", a, None if a else "run failed") for k, a in enumerate(answers)]
    result = await score_traces(PairwiseJudge("j", ScriptedJudgeDouble(judge)), items, traces)
    assert (result.n_wins, result.n_draws, result.n_losses) == (2, 1, 3)
    assert result.win_rate == pytest.approx(100 * 2.5 / 6)
    summary = result.to_dict()
    assert (summary["n_wins"], summary["n_draws"], summary["n_losses"]) == (2, 1, 3)
    numeric = await score_traces(NumericScorer(), items, [])
    assert numeric.n_wins is None and numeric.to_dict()["n_draws"] is None


async def test_length_controlled_scorer_discounts_wins_bought_with_length() -> None:
    n = 60
    items = make_instruct_set(n)
    rng = np.random.default_rng(4)
    longer = rng.random(n) < 0.75
    # the judge double prefers whichever output is longer (wins explained by length only),
    # except on a few answers (length divisible by 5): a perfectly separable record has no
    # finite fit, in alpaca_eval's GLM or here
    def prefers_longer(request: ChatRequest) -> str:
        a, b = outputs_in(request)
        answer = a if a.startswith("x") else b
        flip = len(answer) % 5 == 0
        return "[[a]]" if (len(a) > len(b)) != flip else "[[b]]"
    lengths = np.where(longer, 100 + rng.integers(10, 400, size=n), 100 - rng.integers(10, 90, size=n))
    traces = [FakeTrace(f"i{k}", "x" * int(lengths[k])) for k in range(n)]
    raw = await score_traces(PairwiseJudge("j", ScriptedJudgeDouble(prefers_longer)), items, traces)
    lc = await score_traces(LengthControlledJudge("j", ScriptedJudgeDouble(prefers_longer)), items, traces,
                            lc_resamples=50)
    assert raw.win_rate > 60
    assert lc.lc_approximate and lc.to_dict()["lc_note"] == "approximate: no instruction difficulty"
    assert lc.headline == "lc_win_rate" and lc.scorer == "length_controlled"
    assert lc.quality.mean == pytest.approx(lc.lc_win_rate / 100)
    assert abs(lc.lc_win_rate - 50) < abs(raw.win_rate - 50)
    assert 40 < lc.lc_win_rate < 60
    assert lc.quality.low <= lc.quality.mean <= lc.quality.high


async def test_unparseable_and_failed_judgements_are_excluded_and_paid_tracks_cache() -> None:
    items = make_instruct_set(4)

    def reply(request: ChatRequest) -> str:
        a, b = outputs_in(request)
        return "no verdict" if "MUTE" in a + b else prefers_good(request)

    traces = [FakeTrace("i0", "GOOD CACHED"), FakeTrace("i1", "weak"), FakeTrace("i2", "MUTE"),
              FakeTrace("i3", None, error="timeout")]
    result = await score_traces(PairwiseJudge("j", ScriptedJudgeDouble(reply)), items, traces)
    assert dict(result.counts) == {"ok": 2, "unparseable": 1, "missing_field": 0, "failed": 1}
    assert result.quality.mean == pytest.approx(0.5) and result.n_scored == 2
    assert result.judge_calls == 2 + 2 + 4  # i2 retried in both orders, i3 never judged
    assert result.judge_cost_usd == pytest.approx(0.08)
    assert result.judge_paid_usd == pytest.approx(0.06)  # i0's two calls were cache hits


async def test_pairwise_summary_with_nothing_scored_is_nan_not_a_crash() -> None:
    items = make_instruct_set(3)
    traces = [FakeTrace(f"i{k}", None, error="boom") for k in range(3)]
    double = ScriptedJudgeDouble(prefers_good)
    result = await score_traces(PairwiseJudge("j", double), items, traces)
    assert result.n == 3 and result.n_scored == 0 and result.n_failed == 3
    assert double.calls == []
    summary = result.to_dict()
    assert summary["quality"]["mean"] is None and summary["win_rate"] is None
    assert summary["lc_win_rate"] is None and summary["judge_cost_usd"] == 0.0


# ---- registry -------------------------------------------------------------------------------

def test_make_scorer_builds_each_named_scorer_and_rejects_bad_options() -> None:
    double = ScriptedJudgeDouble(prefers_good)
    assert isinstance(make_scorer("numeric", rel_tol=1e-3), NumericScorer)
    assert make_scorer("regex", pattern=r"(\d+)").name == "regex"
    for name in ("pairwise_judge", "length_controlled", "single_grade_judge"):
        scorer = make_scorer(name, judge_model="j", call=double)
        assert scorer.name == name and scorer.is_judge
    assert make_scorer("single_grade", judge_model="j", call=double).name == "single_grade_judge"
    assert set(SCORERS) == {"exact", "numeric", "choice", "regex", "pairwise_judge",
                            "length_controlled", "single_grade_judge"}
    with pytest.raises(ConfigError) as info:
        make_scorer("bleu")
    assert all(name in str(info.value) for name in SCORERS)
    with pytest.raises(ConfigError, match="unknown option"):
        make_scorer("exact", tolerance=1)
    with pytest.raises(ConfigError, match=r"needs option\(s\) \['judge_model'\]"):
        make_scorer("pairwise_judge", call=double)
    with pytest.raises(ConfigError, match="length_unit"):
        make_scorer("pairwise_judge", judge_model="j", call=double, length_unit="tokens")


# ---- integration: Runner + the simulated world ----------------------------------------------

async def test_pairwise_judge_through_runner_and_simulated_world() -> None:
    """Judge calls go through ``Runner.call`` to the simulated world's judge: the verdicts parse,
    the calls are costed, and the summary is consistent with the per-item preferences."""
    simulated = pytest.importorskip("moa_search.providers.simulated")
    from moa_search.catalog import Catalog
    from moa_search.config import MoAConfig
    from moa_search.datasets import answer_key_pairs, builtin_dataset
    from moa_search.runner import Runner

    items = builtin_dataset("instruct").subsample(12, seed=0)
    catalog = Catalog.default()
    key = simulated.AnswerKey.from_pairs(answer_key_pairs(items))
    provider = simulated.SimulatedProvider(catalog, answer_key=key, seed=0)
    try:
        runner = Runner(provider)
        config = MoAConfig.uniform(["Qwen/Qwen1.5-72B-Chat", "databricks/dbrx-instruct"],
                                   "Qwen/Qwen1.5-110B-Chat", layers=2)
        traces = await runner.run_items(config, [(i.id, i.messages_tuple()) for i in items])
        judge = make_scorer("pairwise_judge", judge_model="gpt-4-turbo-2024-04-09", call=runner.call)
        result = await score_traces(judge, items, traces)
    finally:
        await provider.aclose()
    assert result.n == 12 and result.counts["failed"] == 0 and result.counts["missing_field"] == 0
    assert result.counts["unparseable"] <= 1, "the simulated judge should answer in [[a]]/[[b]] form"
    assert result.judge_calls >= 2 * result.n_scored and result.judge_cost_usd > 0
    scored = [v for v in result.values.values() if v is not None]
    assert set(scored) <= {0.0, 0.5, 1.0}
    assert result.win_rate == pytest.approx(100 * np.mean(scored))
    assert 0.0 <= result.lc_win_rate <= 100.0


async def test_lc_uses_instruction_difficulty_when_every_item_has_it() -> None:
    """Issue 12: with alpaca_eval's per-instruction difficulty the LC win rate is its formula
    (not labelled approximate); one item without it and the minimal fit is used, labelled."""
    n = 40
    rng = np.random.default_rng(8)
    difficulty = rng.normal(0, 1, n).round(3)
    items = Dataset("inst", tuple(
        Item(f"i{k}", prompt=f"Instruction {k}", baseline_output="BASE".ljust(100, "."),
             metadata={"instruction_difficulty": float(difficulty[k])}) for k in range(n)))
    # the candidate wins the easy instructions (difficulty < 0), at assorted lengths
    answers = [("GOOD" if difficulty[k] < 0 else "weak").ljust(60 + 7 * k, ".") for k in range(n)]
    traces = [FakeTrace(f"i{k}", answers[k]) for k in range(n)]
    judge = LengthControlledJudge("j", ScriptedJudgeDouble(prefers_good))
    full = await score_traces(judge, items, traces, lc_resamples=20)
    prefs = [full.values[f"i{k}"] for k in range(n)]
    lengths = [len(a) for a in answers]
    assert full.lc_approximate is False and full.lc_note is None
    assert full.lc_win_rate == pytest.approx(length_controlled_win_rate(
        prefs, lengths, [100] * n, difficulty=difficulty))
    partial = Dataset("inst", items.items[:-1] + (Item("i39", prompt="Instruction 39",
                                                       baseline_output="BASE".ljust(100, ".")),))
    minimal = await score_traces(judge, partial, traces, lc_resamples=20)
    assert minimal.lc_approximate is True
    assert minimal.to_dict()["lc_note"] == "approximate: no instruction difficulty"
    assert minimal.lc_win_rate == pytest.approx(length_controlled_win_rate(prefs, lengths, [100] * n))


async def test_reference_guided_grading_only_in_fastchats_reference_categories() -> None:
    double = ScriptedJudgeDouble(lambda r: "Close to the reference. Rating: [[8.5]]")
    judge = SingleGradeJudge("j", double)
    math = Item("m", prompt="What is 2+2?", reference="4", category="math")
    prose = Item("w", prompt="Write a haiku.", reference="An example haiku.", category="writing")
    no_ref = Item("c", prompt="Write a sort.", category="coding")
    scores = [await judge.ascore(i, "4") for i in (math, prose, no_ref)]
    users = [req.messages[-1].content for req, _, _ in double.calls]
    assert "[The Start of Reference Answer]\n4\n" in users[0]
    assert "Reference Answer" not in users[1] and "Reference Answer" not in users[2]
    assert [s.detail for s in scores] == ["grade 8.5 (single-math-v1)", "grade 8.5 (single-v1)",
                                          "grade 8.5 (single-v1)"]
    assert scores[0].value == pytest.approx(0.85)
