"""MT-Bench as its authors run it (issue 12): both turns of every question, the second asked
after the MoA's own first answer, and each turn graded with FastChat's template for it
(reference-guided for math / reasoning / coding). The simulated world answers and judges
through a real SQLite call store; ``Recording`` only keeps the requests it passes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moa_search.catalog import Catalog
from moa_search.config import MoAConfig
from moa_search.conversation import ConversationTrace
from moa_search.datasets import (FollowUp, answer_key_pairs, builtin_dataset, item_to_dict,
                                 parse_dataset, write_dataset)
from moa_search.errors import ConfigError
from moa_search.evaluate import DatasetEvaluator
from moa_search.importers import import_file
from moa_search.prompts import single_grade_judge_messages
from moa_search.providers.base import ChatRequest, Completion
from moa_search.providers.simulated import AnswerKey, SimulatedProvider
from moa_search.scoring import ItemScore, combine_turns
from moa_search.store import CallStore

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "importers"
JUDGE = "gpt-4-turbo-2024-04-09"
AGGREGATOR = "Qwen/Qwen1.5-110B-Chat"


class Recording:
    """The simulated world, unchanged, keeping every request it is sent (a recorder, not a
    mock: the world still answers)."""

    def __init__(self, inner: SimulatedProvider):
        self.inner = inner
        self.requests: list[ChatRequest] = []

    def endpoint_identity(self, model: str) -> str:
        return self.inner.endpoint_identity(model)

    async def complete(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        return await self.inner.complete(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# ---- FastChat's templates ---------------------------------------------------------------------

def test_single_turn_prompts_have_fastchats_layout() -> None:
    system, user = single_grade_judge_messages("Q?", "A.")
    assert (system.role, system.content) == ("system", "You are a helpful assistant.")
    assert user.content.startswith("[Instruction]\nPlease act as an impartial judge")
    assert user.content.endswith("\n\n[Question]\nQ?\n\n[The Start of Assistant's Answer]\nA.\n"
                                 "[The End of Assistant's Answer]")
    assert 'following this format: "[[rating]]", for example: "Rating: [[5]]".' in user.content
    _, guided = single_grade_judge_messages("Q?", "A.", ["R."])
    assert "compare" not in user.content and "reference answer" in guided.content
    assert guided.content.endswith("[Question]\nQ?\n\n[The Start of Reference Answer]\nR.\n"
                                   "[The End of Reference Answer]\n\n[The Start of Assistant's "
                                   "Answer]\nA.\n[The End of Assistant's Answer]")


def test_second_turn_prompts_show_the_conversation_as_fastchat_does() -> None:
    system, user = single_grade_judge_messages(["Q1", "Q2"], ["A1", "A2"])
    assert "focus on the assistant's answer to the second user question" in system.content
    assert system.content.endswith('"Rating: [[5]]".\n\n')
    assert user.content == ("<|The Start of Assistant A's Conversation with User|>\n\n"
                            "### User:\nQ1\n\n### Assistant A:\nA1\n\n"
                            "### User:\nQ2\n\n### Assistant A:\nA2\n\n"
                            "<|The End of Assistant A's Conversation with User|>")
    system, user = single_grade_judge_messages(["Q1", "Q2"], ["A1", "A2"], ["R1", "R2"])
    assert "focus on the assistant's answer to the second question" in system.content
    assert user.content.startswith("<|The Start of Reference Answer|>\n\n### User:\nQ1\n\n"
                                   "### Reference answer:\nR1\n\n### User:\nQ2\n\n"
                                   "### Reference answer:\nR2\n\n<|The End of Reference Answer|>"
                                   "\n\n\n<|The Start of Assistant A's Conversation with User|>")
    with pytest.raises(ValueError, match="2 questions, 1 answers"):
        single_grade_judge_messages(["Q1", "Q2"], ["A1"])


# ---- items with follow-ups --------------------------------------------------------------------

def test_follow_ups_load_write_and_leave_single_turn_sets_unchanged(tmp_path: Path) -> None:
    text = ('{"id": "q1", "prompt": "Area of a 3x3 square?", "category": "math", "reference": 9, '
            '"follow_ups": [{"prompt": "And 4x4?", "reference": 16}]}\n')
    item = parse_dataset(text, source="x.jsonl", name="x").get("q1")
    assert item.follow_ups == (FollowUp("And 4x4?", "16"),) and item.n_turns == 2
    assert item.turn_messages(["9"])[-2:] == item.turn_messages(["9"])[1:]
    assert [m.role for m in item.turn_messages(["9"])] == ["user", "assistant", "user"]
    assert item.turn_references == ("9", "16")
    with pytest.raises(ConfigError, match=r"line 1: follow_ups\[0\]\.prompt"):
        parse_dataset('{"id": "a", "prompt": "p", "follow_ups": [{"prompt": ""}]}', source="x.jsonl",
                      name="x")
    # a shipped single-turn set writes back byte for byte: its hash does not move
    for name in ("math", "instruct"):
        ds = builtin_dataset(name)
        assert all("follow_ups" not in item_to_dict(i) for i in ds)
        out = write_dataset(ds, tmp_path / f"{name}.jsonl")
        assert out.read_bytes() == Path(ds.source).read_bytes()


def test_a_failed_turn_fails_the_item_and_the_turns_are_kept() -> None:
    ok, bad = ItemScore("q", 0.5, "ok", "grade 5.5"), ItemScore("q", None, "failed", "timeout")
    both = combine_turns("q", [ok, ItemScore("q", 1.0, "ok", "grade 10")])
    assert both.value == pytest.approx(0.75) and both.turn_values == (0.5, 1.0)
    failed = combine_turns("q", [ok, bad])
    assert (failed.value, failed.status, failed.turn_values) == (None, "failed", (0.5, None))
    assert failed.detail == "turn 1: grade 5.5; turn 2: timeout"


async def test_mtbench_runs_both_turns_and_grades_each_with_its_template(tmp_path: Path) -> None:
    items = import_file(FIXTURES / "mtbench_question.jsonl", "mtbench")
    world = SimulatedProvider(Catalog.default(), seed=0,
                              answer_key=AnswerKey.from_pairs(answer_key_pairs(items)))
    provider = Recording(world)
    config = MoAConfig.uniform(["Qwen/Qwen1.5-72B-Chat", "databricks/dbrx-instruct"], AGGREGATOR,
                               layers=2)
    with CallStore(tmp_path / "calls.db") as store:
        evaluator = DatasetEvaluator(provider, store, items, "single_grade_judge",
                                     {"judge_model": JUDGE})
        ev = await evaluator.evaluate_items(config, list(items.ids), "run-1")
    await provider.aclose()

    traces = {t.item_id: t for t in ev.traces}
    for item in items:
        trace = traces[item.id]
        assert isinstance(trace, ConversationTrace) and len(trace.turns) == 2
        first, second = trace.turns
        # turn 2 is the whole MoA again (same calls), asked after turn 1's answer
        assert second.n_calls == first.n_calls == 3
        assert trace.n_calls == 6 and trace.cost_usd == pytest.approx(first.cost_usd + second.cost_usd)
        final = [r for r in provider.requests if r.model == AGGREGATOR
                 and r.messages[-1].content == item.follow_ups[0].prompt]
        assert final, "no second-turn request"
        convo = [(m.role, m.content) for m in final[-1].messages if m.role != "system"]
        assert convo == [("user", item.prompt), ("assistant", first.answer),
                         ("user", item.follow_ups[0].prompt)]

    judged = [r.messages for r in provider.requests if r.model == JUDGE]
    assert len(judged) == 4  # two turns of two questions, every verdict readable
    users = [m[-1].content for m in judged]
    # the math question has references: single-math-v1, then the multi-turn reference template
    assert sum("[The Start of Reference Answer]\n9\n" in u for u in users) == 1
    assert sum("### Reference answer:\n16\n" in u for u in users) == 1
    # the writing question has none: single-v1, then single-v1-multi-turn with both answers
    tea = traces["81"]
    assert any(u.startswith("<|The Start of Assistant A's Conversation") and tea.turns[0].answer in u
               and tea.turns[1].answer in u for u in users)

    r = ev.result
    assert r.n_scored == 2 and sorted(r.per_turn) == [1, 2]
    for score in r.scores:
        assert len(score.turn_values) == 2
        assert score.value == pytest.approx(sum(score.turn_values) / 2)
        assert "turn 2: grade" in score.detail
    assert "single-math-v1-multi-turn" in next(s.detail for s in r.scores if s.item_id == "111")
    summary = json.loads(json.dumps(r.to_dict()))
    assert sorted(summary["per_turn"]) == ["1", "2"]


async def test_a_judge_that_grades_the_first_turn_only_does_not_pay_for_the_second(tmp_path: Path) -> None:
    """A pairwise judge has no baseline answer for turn 2, so turn 2 is never run (it would be
    paid for and never graded)."""
    from moa_search.datasets import Dataset, Item
    items = Dataset("two-turn", (Item("q1", prompt="Name a colour.", baseline_output="Blue.",
                                      follow_ups=(FollowUp("Now another one."),)),))
    provider = Recording(SimulatedProvider(Catalog.default(), seed=0))
    config = MoAConfig.uniform(["Qwen/Qwen1.5-72B-Chat", "databricks/dbrx-instruct"], AGGREGATOR,
                               layers=2)
    with CallStore(tmp_path / "calls.db") as store:
        evaluator = DatasetEvaluator(provider, store, items, "pairwise_judge", {"judge_model": JUDGE})
        ev = await evaluator.evaluate_items(config, ["q1"], "run-1")
    await provider.aclose()
    assert not isinstance(ev.traces[0], ConversationTrace) and ev.traces[0].n_calls == 3
    assert not any(r.messages[-1].content == "Now another one." for r in provider.requests)
    assert ev.result.n_scored == 1
