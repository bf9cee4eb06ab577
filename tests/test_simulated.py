"""The simulated model world: determinism, accounting, answers to keyed items, aggregation, judges.

Everything here runs the real world (no doubles); rates are measured over enough draws that the
asserted margins are several standard errors wide.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
import time
from typing import Any, Coroutine

import numpy as np
import pytest

from moa_search.catalog import Catalog
from moa_search.config import AgentSpec, MoAConfig
from moa_search.errors import ConfigError, UnknownModelError
from moa_search.prompts import agent_messages, pairwise_judge_messages, single_grade_judge_messages
from moa_search.providers.sim_model import WORLD_VERSION
from moa_search.providers.base import ChatRequest, Completion, Message, Provider
from moa_search.providers.simulated import (AnswerKey, AnswerKeyEntry, Footer, SimulatedProvider,
                                            parse_footer)
from moa_search.runner import Runner

CATALOG = Catalog.default()
QWEN72 = "Qwen/Qwen1.5-72B-Chat"
QWEN110 = "Qwen/Qwen1.5-110B-Chat"
GPT4O = "gpt-4o-2024-05-13"
DBRX = "databricks/dbrx-instruct"
JUDGE = "gpt-4-turbo-2024-04-09"
PROMPT = (Message("user", "Explain how ocean tides work."),)
FOOTER_LINE = "\n\n[simulated answer"
VERDICT = re.compile(r"\[\[([ab])\]\]")


def request(model: str = QWEN72, messages: tuple[Message, ...] = PROMPT, **kw: object) -> ChatRequest:
    return ChatRequest(model, messages, **kw)  # type: ignore[arg-type]


def visible(text: str) -> str:
    return text[:text.rindex(FOOTER_LINE)]


def quality(completion: Completion) -> float:
    footer = parse_footer(completion.text)
    assert footer is not None
    return footer.quality


def reference(model: str, q: float, *, depth: int = 0, answer: str | None = None,
              chars: int = 1200) -> str:
    """A reference as the world would write it, with a chosen footer."""
    body = ("Some considered words about the question. " * 100)[:chars].rstrip()
    if answer is not None:
        body += f"\n\nFinal answer: {answer}"
    return f"{body}\n\n{Footer(model, q, depth, answer).render()}"


# ---- determinism -----------------------------------------------------------------------------

async def test_same_request_gives_the_same_completion() -> None:
    world, twin = SimulatedProvider(CATALOG), SimulatedProvider(CATALOG)
    assert isinstance(world, Provider)
    first = await world.complete(request())
    assert first == await world.complete(request()) == await twin.complete(request())
    assert first.text == (await twin.complete(request())).text
    assert first.simulated and not first.cached


async def test_sample_index_seed_and_temperature_change_the_answer() -> None:
    world = SimulatedProvider(CATALOG)
    base = (await world.complete(request())).text
    assert (await world.complete(request(sample_index=1))).text != base
    assert (await world.complete(request(temperature=1.0))).text != base
    assert (await SimulatedProvider(CATALOG, seed=1).complete(request())).text != base
    greedy = {(await world.complete(request(temperature=0.0, sample_index=i))).text for i in range(3)}
    assert len(greedy) == 1, "greedy decoding (T = 0) has nothing to resample"


def test_answers_do_not_depend_on_the_process_hash_seed() -> None:
    """Seeds come from sha256, not ``hash()``: a fresh interpreter with another hash salt agrees."""
    code = ("import asyncio, hashlib;"
            "from moa_search.catalog import Catalog;"
            "from moa_search.providers.base import ChatRequest, Message;"
            "from moa_search.providers.simulated import SimulatedProvider;"
            "r = ChatRequest('Qwen/Qwen1.5-72B-Chat', (Message('user', 'Explain how ocean tides work.'),));"
            "c = asyncio.run(SimulatedProvider(Catalog.default()).complete(r));"
            "print(hashlib.sha256(c.text.encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=60).stdout.strip()
    here = SimulatedProvider(CATALOG).respond(request()).text
    assert out == hashlib.sha256(here.encode()).hexdigest()


async def test_answer_is_prose_with_one_parseable_footer() -> None:
    completion = await SimulatedProvider(CATALOG).complete(request())
    text = completion.text
    assert text == text.strip() and text.count("[simulated answer") == 1
    assert text.splitlines()[-1].startswith("[simulated answer | model=Qwen/Qwen1.5-72B-Chat |")
    footer = parse_footer(text)
    assert footer is not None and footer.model == QWEN72 and footer.depth == 0 and footer.answer is None
    assert footer.quality == completion.extra["sim_quality"]
    body = visible(text)
    assert len(body.split()) > 100 and body.endswith(".")
    assert not re.search(r"^\d+\. ", body, re.MULTILINE), "would be mistaken for a numbered reference"


def test_footer_round_trips_awkward_answers() -> None:
    footer = Footer("org/model-1.5", -1.25, 2, "a|b] 100%\nnext")
    assert parse_footer("text\n\n" + footer.render()) == footer


# ---- accounting ------------------------------------------------------------------------------

async def test_usage_and_cost_follow_the_catalog_prices() -> None:
    world = SimulatedProvider(CATALOG)
    messages = (Message("system", "Be brief."), Message("user", "x" * 401))
    for model in (QWEN72, GPT4O):
        c = await world.complete(request(model, messages))
        assert c.usage.prompt_tokens == math.ceil((9 + 401) / 4)
        assert c.usage.completion_tokens == math.ceil(len(visible(c.text)) / 4)
        info = CATALOG.get(model)
        expected = (c.usage.prompt_tokens * info.input_price
                    + c.usage.completion_tokens * info.output_price) / 1e6
        assert c.cost_usd == pytest.approx(expected) and c.cost_usd > 0
    gpt4o = await world.complete(request(GPT4O, messages))
    assert gpt4o.cost_usd == pytest.approx((103 * 5.0 + gpt4o.usage.completion_tokens * 15.0) / 1e6)


async def test_answer_length_follows_the_model_verbosity() -> None:
    world = SimulatedProvider(CATALOG)
    prompts = [(Message("user", f"Describe topic number {i}."),) for i in range(60)]
    def mean_tokens(model: str) -> float:
        return float(np.mean([world.respond(request(model, p)).usage.completion_tokens for p in prompts]))
    wordy, terse = mean_tokens("microsoft/WizardLM-2-8x22B"), mean_tokens(DBRX)  # verbosity 600 vs 330
    assert wordy == pytest.approx(600, rel=0.1) and terse == pytest.approx(330, rel=0.1)


async def test_latency_is_ttft_plus_prefill_plus_decode() -> None:
    world = SimulatedProvider(CATALOG)
    sim = CATALOG.get(QWEN72).sim
    assert sim is not None
    short = await world.complete(request())
    long = await world.complete(request(messages=(Message("user", "Explain how ocean tides work. " * 300),)))
    for c in (short, long):
        prefill = c.usage.prompt_tokens / (20 * sim.tokens_per_s)
        assert c.ttft_s == pytest.approx(sim.ttft_s + prefill)
        assert c.latency_s == pytest.approx(sim.ttft_s + prefill + c.usage.completion_tokens / sim.tokens_per_s)
    assert long.ttft_s > short.ttft_s + 1.0


async def test_sleep_waits_the_scaled_latency() -> None:
    sleeper = SimulatedProvider(CATALOG, sleep=True, time_scale=0.02)
    start = time.perf_counter()
    c = await sleeper.complete(request())
    waited = time.perf_counter() - start
    assert waited >= 0.02 * c.latency_s * 0.95 and 0.02 * c.latency_s > 0.05
    # Without sleep=True the answer comes in one step: the coroutine never suspends (checked
    # by driving it by hand, not by a clock bound a busy machine could break); the sleeper does.
    assert _completes_without_suspending(SimulatedProvider(CATALOG).complete(request(sample_index=3)))
    assert not _completes_without_suspending(sleeper.complete(request(sample_index=3)))


def _completes_without_suspending(coroutine: Coroutine[Any, Any, Any]) -> bool:
    """Run ``coroutine`` one step: True if it returned without giving control back to the event
    loop (no sleep, no I/O); else it is closed (which cancels its pending sleep)."""
    try:
        coroutine.send(None)
    except StopIteration:
        return True
    coroutine.close()
    return False


async def test_small_max_tokens_truncates_the_same_answer() -> None:
    world = SimulatedProvider(CATALOG)
    full = await world.complete(request(max_tokens=2048))
    short = await world.complete(request(max_tokens=40))
    assert full.finish_reason == "stop" and short.finish_reason == "length"
    assert short.usage.completion_tokens <= 40 < full.usage.completion_tokens
    assert visible(full.text).startswith(visible(short.text))
    assert quality(short) < quality(full)


# ---- keyed items -----------------------------------------------------------------------------

def keyed(n: int, difficulty: float, tag: str) -> tuple[AnswerKey, list[tuple[Message, ...]], list[str]]:
    prompts = [f"[{tag}] What is {i} times 37 plus {i % 9}? Give the final answer as a number."
               for i in range(n)]
    refs = [str(i * 37 + i % 9) for i in range(n)]
    key = AnswerKey.from_pairs([(p, r, difficulty) for p, r in zip(prompts, refs)])
    return key, [(Message("user", p),) for p in prompts], refs


def accuracy(texts: list[str], refs: list[str]) -> float:
    return float(np.mean([f"Final answer: {r}\n" in t for t, r in zip(texts, refs)]))


async def test_keyed_accuracy_rises_with_skill_and_falls_with_difficulty() -> None:
    easy_key, easy, easy_refs = keyed(150, 0.1, "easy")
    hard_key, hard, hard_refs = keyed(150, 0.9, "hard")
    world = SimulatedProvider(CATALOG, answer_key=easy_key.merge(hard_key))
    acc = {(model, level): accuracy([world.respond(request(model, m)).text for m in prompts], refs)
           for model in (GPT4O, DBRX)
           for level, prompts, refs in (("easy", easy, easy_refs), ("hard", hard, hard_refs))}
    assert acc[GPT4O, "easy"] > acc[DBRX, "easy"] + 0.1
    assert acc[GPT4O, "hard"] > acc[DBRX, "hard"] + 0.2
    assert acc[GPT4O, "easy"] > acc[GPT4O, "hard"] + 0.1
    assert acc[DBRX, "easy"] > acc[DBRX, "hard"] + 0.2


async def test_wrong_answers_are_plausible_and_stated_for_the_scorers() -> None:
    prompt = "What is 4321 minus 1087? Give the final answer as a number."
    letter = "Which option is right?\nA) 1\nB) 2\nC) 3\nD) 4\nE) 5"
    phrase = "Which process makes plant sugar?"
    key = AnswerKey.from_pairs([(prompt, "3234", 1.0), (letter, "C", 1.0), (phrase, "photosynthesis", 1.0)])
    world = SimulatedProvider(CATALOG, answer_key=key)
    def answers(text: str, pattern: str) -> list[str]:
        out = []
        for i in range(80):
            c = world.respond(request("meta-llama/Llama-3-8b-chat-hf", (Message("user", text),), sample_index=i))
            found = re.findall(pattern, c.text)
            assert len(found) == 1, c.text[-200:]
            out.append(found[0])
            assert parse_footer(c.text).answer == found[0]  # type: ignore[union-attr]
        return out
    numbers = answers(prompt, r"Final answer: (\S+)\n")
    wrong = {n for n in numbers if n != "3234"}
    assert 0 < len(wrong) <= 3 and "3234" in numbers, "a few plausible mistakes, shared across samples"
    assert all(re.fullmatch(r"-?\d+", w) and 1600 <= int(w) <= 6500 for w in wrong), wrong
    letters = answers(letter, r"Answer: \(([A-E])\)")
    assert set(letters) - {"C"} and "C" in letters
    phrases = answers(phrase, r"Final answer: (.+)\n")
    assert {p for p in phrases if p != "photosynthesis"}


async def test_aggregator_follows_a_strong_majority_and_otherwise_its_own_skill() -> None:
    key, prompts, refs = keyed(120, 0.5, "agg")
    world = SimulatedProvider(CATALOG, answer_key=key)
    def synthesise(model: str, answers: list[str], prompt: tuple[Message, ...], q: float = 0.0) -> str:
        shown = [reference(m, q, answer=a) for m, a in zip((QWEN72, DBRX, GPT4O), answers)]
        return world.respond(request(model, agent_messages(AgentSpec(model), prompt, shown))).text
    # every reference says the same wrong number: the aggregator goes along with it
    wrong = [synthesise(QWEN110, ["999999"] * 3, p) for p in prompts]
    assert np.mean(["Final answer: 999999\n" in t for t in wrong]) > 0.8
    # poor references that disagree, one of them right: the aggregator's own skill decides
    def mixed(model: str) -> float:
        texts = [synthesise(model, [r, "11", "13"], p, q=-2.0) for p, r in zip(prompts, refs)]
        return accuracy(texts, refs)
    assert mixed(GPT4O) > mixed(DBRX) + 0.1


async def test_moa_beats_its_best_proposer_on_keyed_items() -> None:
    key, prompts, refs = keyed(150, 0.5, "moa")
    world = SimulatedProvider(CATALOG, answer_key=key)
    runner = Runner(world, max_concurrent_items=32)
    proposers = [QWEN72, "meta-llama/Llama-3-70b-chat-hf", "mistralai/Mixtral-8x22B-Instruct-v0.1"]
    items = [(str(i), p) for i, p in enumerate(prompts)]
    async def acc(config: MoAConfig) -> float:
        return accuracy([t.answer or "" for t in await runner.run_items(config, items)], refs)
    alone = [await acc(MoAConfig.single(m)) for m in proposers]
    moa = await acc(MoAConfig.uniform(proposers, QWEN72, layers=2))
    assert moa > max(alone) + 0.05, (moa, alone)


# ---- aggregation -----------------------------------------------------------------------------

NEUTRAL = [f"Summarise the causes of historical event number {i}." for i in range(40)]
NEUTRAL_KEY = AnswerKey.from_pairs([(p, None, 0.5) for p in NEUTRAL])  # difficulty 0.5: no offset


def synthesis(refs: list[str], model: str = QWEN110, prompt: str = NEUTRAL[0]) -> Completion:
    """A greedy (T = 0) synthesis: no sampling noise, so it is a function of the references."""
    world = SimulatedProvider(CATALOG, answer_key=NEUTRAL_KEY)
    agent = AgentSpec(model, temperature=0.0)
    return world.respond(request(model, agent_messages(agent, (Message("user", prompt),), refs),
                                 temperature=0.0))


MODELS = (QWEN72, DBRX, GPT4O, "meta-llama/Llama-3-70b-chat-hf", "microsoft/WizardLM-2-8x22B",
          "mistralai/Mixtral-8x22B-Instruct-v0.1")


def test_synthesis_rises_with_the_quality_of_the_references() -> None:
    low = synthesis([reference(m, 0.0) for m in MODELS[:3]])
    high = synthesis([reference(m, 1.5) for m in MODELS[:3]])
    assert quality(high) > quality(low) + 1.0
    assert parse_footer(high.text).depth == 1  # type: ignore[union-attr]
    assert high.extra["sim_kind"] == "aggregate" and "Drawing on the 3 responses" in high.text


def test_diverse_references_help_more_than_repeated_samples_with_diminishing_returns() -> None:
    q = {n: quality(synthesis([reference(m, 1.0) for m in MODELS[:n]])) for n in (1, 2, 3, 6)}
    steps = [q[2] - q[1], q[3] - q[2], (q[6] - q[3]) / 3]
    assert steps[0] > steps[1] > steps[2] > 0, steps
    same = quality(synthesis([reference(QWEN72, 1.0) for _ in range(3)]))
    assert q[1] < same < q[3]


def test_a_stronger_aggregator_makes_more_of_weak_references() -> None:
    weak = [reference(m, -1.0) for m in MODELS[:3]]
    def mean_quality(model: str) -> float:  # over items: a model suits some items better than others
        return float(np.mean([quality(synthesis(weak, model, p)) for p in NEUTRAL]))
    assert mean_quality(GPT4O) > mean_quality(DBRX) + 0.5


def test_syntheses_of_syntheses_add_less() -> None:
    fresh = quality(synthesis([reference(m, 1.0) for m in MODELS[:3]]))
    resynth = synthesis([reference(m, 1.0, depth=1) for m in MODELS[:3]])
    assert quality(resynth) < fresh and parse_footer(resynth.text).depth == 2  # type: ignore[union-attr]


def test_references_without_a_footer_count_at_the_baseline_level() -> None:
    plain = synthesis(["A plain answer written elsewhere.", "Another plain answer.", "A third one."])
    assert parse_footer(plain.text).depth == 1 and "Drawing on the 3 responses" in plain.text  # type: ignore[union-attr]
    assert abs(quality(plain)) < 2.5


async def test_runner_layers_reach_the_aggregator_through_stripped_outputs() -> None:
    runner = Runner(SimulatedProvider(CATALOG))
    trace = await runner.run_item(MoAConfig.uniform([QWEN72, DBRX], QWEN110, layers=3), PROMPT)
    depths = [(c.layer, parse_footer(c.completion.text).depth) for c in trace.calls]  # type: ignore[union-attr]
    assert depths == [(0, 0), (0, 0), (1, 1), (1, 1), (2, 2)]
    assert trace.answer is not None and trace.answer.startswith("Drawing on the 2 responses")


# ---- judges ----------------------------------------------------------------------------------

def judge(world: SimulatedProvider, instruction: str, a: str, b: str, sample_index: int = 0) -> str:
    return world.respond(ChatRequest(JUDGE, pairwise_judge_messages(instruction, a, b),
                                     temperature=0.0, sample_index=sample_index)).text


def preference_for_b(world: SimulatedProvider, pairs: list[tuple[str, str, str]]) -> float:
    verdicts = [VERDICT.findall(judge(world, i, a, b)) for i, a, b in pairs]
    return float(np.mean([v == ["b"] for v in verdicts]))


INSTRUCTIONS = [f"Write advice about situation {i}." for i in range(500)]


def test_judge_prefers_the_higher_quality_output() -> None:
    world = SimulatedProvider(CATALOG, judge_unparseable_rate=0.0)
    worse, better = reference(QWEN72, -0.5), reference(GPT4O, 0.5)
    assert preference_for_b(world, [(i, worse, better) for i in INSTRUCTIONS[:300]]) > 0.6
    assert preference_for_b(world, [(i, better, worse) for i in INSTRUCTIONS[:300]]) < 0.4


def test_judge_has_a_length_bias() -> None:
    world = SimulatedProvider(CATALOG, judge_unparseable_rate=0.0)
    short, long = reference(QWEN72, 0.0, chars=600), reference(QWEN72, 0.0, chars=1800)
    long_wins = (preference_for_b(world, [(i, short, long) for i in INSTRUCTIONS])
                 + 1 - preference_for_b(world, [(i, long, short) for i in INSTRUCTIONS])) / 2
    even = (preference_for_b(world, [(i, short, short) for i in INSTRUCTIONS])
            + 1 - preference_for_b(world, [(i, short, short + " ") for i in INSTRUCTIONS])) / 2
    assert long_wins > 0.55 and abs(even - 0.5) < 0.04, (long_wins, even)


def test_output_without_footer_is_judged_as_the_baseline() -> None:
    """A real baseline text has no footer: it counts at the GPT-4 Turbo level (q = 0)."""
    key = AnswerKey.from_pairs([(i, None, 0.5) for i in INSTRUCTIONS[:300]])
    world = SimulatedProvider(CATALOG, answer_key=key, judge_unparseable_rate=0.0)
    def vs_baseline(q: float) -> float:
        pairs = [(i, ("A baseline answer to: " + i + " " + "Plain words here. " * 200)[:1200],
                  reference(QWEN72, q, chars=1200)) for i in INSTRUCTIONS[:300]]
        return preference_for_b(world, pairs)
    assert 0.38 < vs_baseline(0.0) < 0.58  # the same level, less the small position bias
    assert vs_baseline(1.5) > 0.7


def test_some_judge_replies_have_no_verdict_and_a_retry_can_fix_it() -> None:
    a, b = reference(QWEN72, 0.0), reference(DBRX, 0.0)
    def unparseable(world: SimulatedProvider, sample_index: int = 0) -> list[str]:
        return [i for i in INSTRUCTIONS if not VERDICT.search(judge(world, i, a, b, sample_index))]
    often = SimulatedProvider(CATALOG, judge_unparseable_rate=0.2)
    failed = unparseable(often)
    assert 0.15 < len(failed) / len(INSTRUCTIONS) < 0.25
    retried = [i for i in failed if VERDICT.search(judge(often, i, a, b, sample_index=1))]
    assert len(retried) > 0.65 * len(failed)
    assert len(unparseable(SimulatedProvider(CATALOG))) <= 0.03 * len(INSTRUCTIONS)
    assert unparseable(SimulatedProvider(CATALOG, judge_unparseable_rate=0.0)) == []


def test_single_grade_is_monotone_in_quality() -> None:
    world = SimulatedProvider(CATALOG, judge_unparseable_rate=0.0)
    def mean_rating(q: float) -> float:
        ratings = []
        for i in INSTRUCTIONS[:60]:
            reply = world.respond(ChatRequest(JUDGE, single_grade_judge_messages(i, reference(QWEN72, q)),
                                              temperature=0.0)).text
            found = re.findall(r"Rating: \[\[(\d+)\]\]", reply)
            assert len(found) == 1 and 1 <= int(found[0]) <= 10
            ratings.append(int(found[0]))
        return float(np.mean(ratings))
    means = [mean_rating(q) for q in (-3.0, -1.5, 0.0, 1.5, 3.0)]
    assert all(lo < hi for lo, hi in zip(means, means[1:])), means


# ---- errors and settings ---------------------------------------------------------------------

async def test_unknown_model_is_an_error() -> None:
    world = SimulatedProvider(CATALOG)
    with pytest.raises(UnknownModelError, match="nobody/nothing"):
        await world.complete(request("nobody/nothing"))
    with pytest.raises(UnknownModelError):
        world.endpoint_identity("nobody/nothing")


@pytest.mark.parametrize("kwargs, field", [({"temperature": 2.5}, "temperature"),
                                           ({"max_tokens": 0}, "max_tokens"),
                                           ({"sample_index": -1}, "sample_index")])
async def test_bad_sampling_settings_are_config_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        await SimulatedProvider(CATALOG).complete(request(**kwargs))
    assert info.value.field == field


@pytest.mark.parametrize("kwargs, field", [({"seed": "0"}, "seed"), ({"time_scale": -1.0}, "time_scale"),
                                           ({"judge_unparseable_rate": 1.5}, "judge_unparseable_rate"),
                                           ({"answer_key": {"q": "a"}}, "answer_key")])
def test_bad_constructor_arguments_are_config_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SimulatedProvider(CATALOG, **kwargs)
    assert info.value.field == field


def test_model_without_a_sim_profile_gets_a_price_based_default() -> None:
    catalog = Catalog.from_toml_text("""
        [providers.local]
        base_url = "http://127.0.0.1:8000/v1"
        [models.cheap]
        provider = "local"
        input_price = 0.1
        output_price = 0.1
        [models.dear]
        provider = "local"
        input_price = 10.0
        output_price = 30.0
    """, source="test")
    world = SimulatedProvider(catalog)
    def mean_quality(model: str) -> float:
        return float(np.mean([quality(world.respond(request(model, (Message("user", i),))))
                              for i in INSTRUCTIONS[:80]]))
    assert mean_quality("dear") > mean_quality("cheap") + 0.5


def test_endpoint_identity_names_what_changes_answers_and_no_secrets() -> None:
    plain = SimulatedProvider(CATALOG).endpoint_identity(QWEN72)
    assert plain.startswith(f"sim:v{WORLD_VERSION}:seed=0:") and "KEY" not in plain
    assert SimulatedProvider(CATALOG, seed=1).endpoint_identity(QWEN72) != plain
    assert SimulatedProvider(CATALOG).endpoint_identity(GPT4O) != plain  # another profile
    keyed_a = SimulatedProvider(CATALOG, answer_key=AnswerKey.from_pairs([("q", "1")]))
    keyed_b = SimulatedProvider(CATALOG, answer_key=AnswerKey.from_pairs([("q", "2")]))
    assert len({plain, keyed_a.endpoint_identity(QWEN72), keyed_b.endpoint_identity(QWEN72)}) == 3


# ---- the answer key --------------------------------------------------------------------------

def test_answer_key_normalises_prompts_and_merges() -> None:
    key = AnswerKey.from_pairs([("  What is 2+2?\n", "4", 0.2), ("Name a colour", None, None)])
    assert len(key) == 2 and "what   is 2+2?" in key
    assert key.get("WHAT IS 2+2?") == AnswerKeyEntry("4", 0.2)
    merged = key.merge(AnswerKey.from_pairs([("What is 3+3?", "6"), ("what is 2+2?", "4", 0.2)]))
    assert len(merged) == 3 and len(key) == 2


@pytest.mark.parametrize("pairs, match", [
    ([("q", "1"), ("Q ", "2")], "two different entries"),
    ([("q", "1", 1.5)], r"\[0\]\.difficulty"),
    ([("q", "")], r"\[0\]\.reference"),
    ([("q",)], r"prompt, reference"),
    ([("", "1")], "non-empty prompt"),
])
def test_answer_key_rejects_bad_pairs(pairs: list, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AnswerKey.from_pairs(pairs)


def test_merging_conflicting_keys_is_an_error() -> None:
    with pytest.raises(ConfigError, match="two different entries"):
        AnswerKey.from_pairs([("q", "1")]).merge(AnswerKey.from_pairs([("q", "2")]))
