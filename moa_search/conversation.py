"""Multi-turn items: the whole MoA runs once per user turn, each turn seeing its own earlier
answers (MT-Bench's second turn is asked after the model's first answer, in one conversation).

``run_conversations`` runs a set's first turns together, then each later turn of the items that
have one, in rounds (turn 2 of every item, then turn 3, ...), through the runner's own
concurrency limit. A multi-turn item's result is a ``ConversationTrace``: its turns' traces,
read as one item's trace (costs, calls and latency summed), plus the answer of every turn for
the scorer. Single-turn items keep their runner ``ItemTrace`` unchanged.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Sequence

from .config import MoAConfig
from .datasets import Item
from .runner import CallTrace, ItemTrace, Runner

OnItem = Callable[[ItemTrace], None | Awaitable[None]]


@dataclass(frozen=True)
class ConversationTrace:
    """One multi-turn item's run: a trace per turn that was run (a turn is not run once an
    earlier one failed). It answers what an ``ItemTrace`` answers, for the whole conversation:
    ``answer`` is the last turn's (``None`` unless every turn was answered)."""

    turns: tuple[ItemTrace, ...]
    n_turns: int

    @property
    def item_id(self) -> str:
        return self.turns[0].item_id

    @property
    def config_hash(self) -> str:
        return self.turns[0].config_hash

    @property
    def answers(self) -> tuple[str | None, ...]:
        return tuple(t.answer for t in self.turns)

    @property
    def answer(self) -> str | None:
        return self.turns[-1].answer if len(self.turns) == self.n_turns else None

    @property
    def failed(self) -> bool:
        return self.answer is None

    @property
    def error(self) -> str | None:
        for k, t in enumerate(self.turns, start=1):
            if t.failed:
                return f"turn {k}: {t.error or 'no answer'}"
        return None

    def first_error(self) -> str | None:
        for k, t in enumerate(self.turns, start=1):
            found = t.first_error()
            if found:
                return f"turn {k}: {found}"
        return None

    @property
    def calls(self) -> tuple[CallTrace, ...]:
        return tuple(c for t in self.turns for c in t.calls)

    @property
    def wall_s(self) -> float:
        return sum(t.wall_s for t in self.turns)

    @property
    def degraded(self) -> bool:
        return any(t.degraded for t in self.turns)

    @property
    def cost_usd(self) -> float:
        return sum(t.cost_usd for t in self.turns)

    @property
    def paid_usd(self) -> float:
        return sum(t.paid_usd for t in self.turns)

    @property
    def prompt_tokens(self) -> int:
        return sum(t.prompt_tokens for t in self.turns)

    @property
    def completion_tokens(self) -> int:
        return sum(t.completion_tokens for t in self.turns)

    @property
    def latency_s(self) -> float:
        """Turns run one after another, so their critical paths add up."""
        return sum(t.latency_s for t in self.turns)

    @property
    def n_calls(self) -> int:
        return sum(t.n_calls for t in self.turns)

    @property
    def n_cached(self) -> int:
        return sum(t.n_cached for t in self.turns)

    @property
    def n_failed_calls(self) -> int:
        return sum(t.n_failed_calls for t in self.turns)

    @property
    def simulated(self) -> bool:
        return any(t.simulated for t in self.turns)

    def model_mismatches(self) -> list[tuple[str, str]]:
        return [m for t in self.turns for m in t.model_mismatches()]

    def cost_by_role(self) -> dict[str, float]:
        return _merged(t.cost_by_role() for t in self.turns)

    def cost_by_model(self) -> dict[str, float]:
        return _merged(t.cost_by_model() for t in self.turns)


def _merged(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for part in parts:
        for key, value in part.items():
            out[key] += value
    return dict(out)


async def run_conversations(runner: Runner, config: MoAConfig, items: Sequence[Item], *,
                            on_item: OnItem | None = None, follow_ups: bool = True
                            ) -> list[ItemTrace | ConversationTrace]:
    """Every turn of every item, in item order; ``on_item`` once per item, when it is done.

    ``follow_ups=False`` (a scorer that grades the first turn only) runs first turns alone: a
    later turn nobody grades would be paid for nothing."""
    multi = {item.id for item in items if item.follow_ups} if follow_ups else set()

    async def report(trace: ItemTrace | ConversationTrace) -> None:
        if on_item is not None:
            maybe = on_item(trace)  # type: ignore[arg-type]
            if asyncio.iscoroutine(maybe):
                await maybe

    async def first_done(trace: ItemTrace) -> None:
        if trace.item_id not in multi:
            await report(trace)

    firsts = await runner.run_items(config, [(i.id, i.messages_tuple()) for i in items],
                                    on_item=first_done)
    if not multi:
        return list(firsts)
    turns: dict[str, list[ItemTrace]] = {t.item_id: [t] for t in firsts}
    for k in range(1, max(item.n_turns for item in items)):
        due = [i for i in items if i.n_turns > k and not turns[i.id][-1].failed]
        if not due:
            break
        asked = [(i.id, i.turn_messages([t.answer or "" for t in turns[i.id]])) for i in due]
        for item, trace in zip(due, await runner.run_items(config, asked)):
            turns[item.id].append(trace)
    out: list[ItemTrace | ConversationTrace] = []
    for item in items:
        if item.id in multi:
            conversation = ConversationTrace(tuple(turns[item.id]), item.n_turns)
            await report(conversation)
            out.append(conversation)
        else:
            out.append(turns[item.id][0])
    return out
