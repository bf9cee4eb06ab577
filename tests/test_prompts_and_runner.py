"""The MoA message construction (pinned to the reference implementation) and the runner's policy."""

import pytest

from moa_search.config import AgentSpec, MoAConfig
from moa_search.errors import MoASearchError
from moa_search.prompts import AGGREGATE_AND_SYNTHESIZE
from moa_search.providers.base import ChatRequest, Message
from moa_search.runner import Runner, sample_indices
from tests.doubles import RecordingProvider

PROMPT = (Message("user", "Name a prime."),)

EXPECTED_SYSTEM = (
    "You have been provided with a set of responses from various open-source models to the latest "
    "user query. Your task is to synthesize these responses into a single, high-quality response. "
    "It is crucial to critically evaluate the information provided in these responses, recognizing "
    "that some of it may be biased or incorrect. Your response should not simply replicate the given "
    "answers but should offer a refined, accurate, and comprehensive reply to the instruction. Ensure "
    "your response is well-structured, coherent, and adheres to the highest standards of accuracy and "
    "reliability.\n\nResponses from models:"
    "\n1. answer from p1#0"
    "\n2. answer from p2#0"
)


async def test_two_proposers_two_layers_exact_messages():
    provider = RecordingProvider()
    config = MoAConfig.uniform(["p2", "p1"], "agg", layers=2)
    trace = await Runner(provider).run_item(config, PROMPT)
    by_model = {r.model: r for r in provider.requests}
    assert by_model["p1"].messages == PROMPT and by_model["p2"].messages == PROMPT
    agg = by_model["agg"].messages
    assert agg == (Message("system", EXPECTED_SYSTEM), Message("user", "Name a prime."))
    assert AGGREGATE_AND_SYNTHESIZE in agg[0].content
    assert trace.answer == "answer from agg#0" and not trace.failed


async def test_existing_system_message_gets_references_after_a_blank_line():
    provider = RecordingProvider()
    prompt = (Message("system", "Be brief."), Message("user", "Name a prime."))
    await Runner(provider).run_item(MoAConfig.uniform(["p1", "p2"], "agg", layers=2), prompt)
    agg = [r for r in provider.requests if r.model == "agg"][0]
    assert agg.messages[0] == Message("system", "Be brief.\n\n" + EXPECTED_SYSTEM)
    assert len(agg.messages) == 2


async def test_later_layers_see_only_the_previous_layer():
    provider = RecordingProvider()
    config = MoAConfig((( AgentSpec("p1"),), (AgentSpec("q1"),)), AgentSpec("agg"))
    await Runner(provider).run_item(config, PROMPT)
    q1 = [r for r in provider.requests if r.model == "q1"][0]
    agg = [r for r in provider.requests if r.model == "agg"][0]
    assert "\n1. answer from p1#0" in q1.messages[0].content
    assert "\n1. answer from q1#0" in agg.messages[0].content
    assert "p1#0" not in agg.messages[0].content


async def test_same_model_sampled_n_times_gets_distinct_sample_indices():
    provider = RecordingProvider()
    config = MoAConfig(((AgentSpec("p"),) * 3,), AgentSpec("agg"))
    trace = await Runner(provider).run_item(config, PROMPT)
    assert sorted(r.sample_index for r in provider.requests if r.model == "p") == [0, 1, 2]
    assert sample_indices([AgentSpec("a"), AgentSpec("a"), AgentSpec("b")]) == [0, 1, 0]
    assert trace.n_calls == 4


async def test_failed_proposer_is_recorded_and_layer_continues():
    provider = RecordingProvider(failing_models={"p2"})
    trace = await Runner(provider).run_item(MoAConfig.uniform(["p1", "p2"], "agg", layers=2), PROMPT)
    assert not trace.failed and trace.n_failed_calls == 1
    failed = [c for c in trace.calls if not c.ok][0]
    assert failed.model == "p2" and "injected failure" in failed.error
    agg = [r for r in provider.requests if r.model == "agg"][0]
    assert "\n1. answer from p1#0" in agg.messages[0].content and "2." not in agg.messages[0].content.split("models:")[1]


async def test_all_proposers_failing_fails_the_item_without_calling_the_aggregator():
    provider = RecordingProvider(failing_models={"p1", "p2"})
    trace = await Runner(provider).run_item(MoAConfig.uniform(["p1", "p2"], "agg", layers=2), PROMPT)
    assert trace.failed and trace.answer is None and "layer 1" in trace.error
    assert not any(r.model == "agg" for r in provider.requests)


async def test_critical_path_and_cost_split():
    provider = RecordingProvider(latency={"p1": 2.0, "p2": 5.0, "agg": 3.0})
    trace = await Runner(provider).run_item(MoAConfig.uniform(["p1", "p2"], "agg", layers=3), PROMPT)
    assert trace.latency_s == pytest.approx(5.0 + 5.0 + 3.0)
    assert trace.cost_by_role() == pytest.approx({"proposer": 0.004, "aggregator": 0.001})
    assert trace.cost_by_model()["p1"] == pytest.approx(0.002)
    assert trace.cost_usd == pytest.approx(0.005) and trace.prompt_tokens == 50


async def test_run_items_keeps_order_and_bounds_concurrency():
    provider = RecordingProvider()
    items = [(f"i{k}", (Message("user", f"q{k}"),)) for k in range(20)]
    seen = []
    traces = await Runner(provider, max_concurrent_items=3).run_items(
        MoAConfig.single("m"), items, on_item=lambda t: seen.append(t.item_id))
    assert [t.item_id for t in traces] == [f"i{k}" for k in range(20)]
    assert sorted(seen) == sorted(t.item_id for t in traces)


def test_empty_prompt_is_rejected():
    with pytest.raises(MoASearchError, match="empty prompt"):
        ChatRequest("m", (Message("user", "   "),))
