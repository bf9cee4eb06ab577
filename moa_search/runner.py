"""Runs one ``MoAConfig`` on prompts: layer by layer, the agents of a layer concurrently.

Every call goes through the call store when one is given, so a call already paid for is served
free; the trace keeps each call's list cost and latency either way, so a config's measured cost
and latency do not depend on what happened to be cached.

Failure policy: a proposer that fails after the provider's retries is recorded in the trace; if
every agent of a layer fails, or the aggregator fails, the item fails and is recorded as failed
(``answer`` is None), never scored silently. An item that lost some but not all of a layer's
agents is *degraded*: its answer was made by fewer agents than the config has, so it measures
another config. ``DegradedPolicy`` says what happens to it: ``score`` (the layer continues with
the others and the answer is scored, flagged ``degraded``) or ``fail`` (the item fails at once,
flagged ``degraded``, and its later layers are never called, so no money is spent on an answer
that will not be scored). Either way it is counted, never hidden.

Latency: ``ItemTrace.latency_s`` (the latency objective) is the critical path of the calls'
*model* latencies (``Completion.latency_s``: the server's own time when it reports one, else the
time on the wire), never our queueing: how many calls we keep in flight is a property of the
machine running the search, not of the config. ``ItemTrace.wall_s`` is what the item really
took here, queueing and retries included.

Serving (``server``) adds three things to ``run_item``, all off by default so a search's calls
and cache keys are as they always were: ``sampling`` overrides the *aggregator's* sampling
parameters (a client's ``temperature``, ``max_tokens``...), ``draw`` shifts every agent's sample
index so one request's mixture is a fresh, reproducible sample of the config, and ``on_delta``
receives the aggregator's text as it is generated (``providers.base.StreamingProvider``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence

from .config import AgentSpec, MoAConfig
from .errors import ConfigError
from .prompts import agent_messages
from .providers.base import (ChatRequest, Completion, DeltaSink, Message, Provider, ProviderError, Role,
                             StreamingProvider)
from .providers.limits import fit_for

if TYPE_CHECKING:  # the store is optional at run time; only its interface matters here
    from .store import CallStore


class DegradedPolicy(str, Enum):
    """What a degraded item (one that lost an agent, see the module docstring) becomes.

    ``score``: scored with the answer the remaining agents made (the default of ``run`` and
    ``eval``: a one-off measurement should show what came back). ``fail``: not scored, counted as
    failed (the default of studies, so a transient fault cannot change which configs a search
    keeps or stops early)."""

    SCORE = "score"
    FAIL = "fail"

    @classmethod
    def parse(cls, value: str | DegradedPolicy, *, field: str = "degraded",
              source: str | None = None) -> DegradedPolicy:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"expected one of {[p.value for p in cls]}, got {value!r}",
                              source=source, field=field) from None


@dataclass(frozen=True)
class CallTrace:
    """One agent's call: its place in the config and its completion or error."""

    layer: int  # 0-based; the aggregator's layer index equals config.rounds
    role: Role
    agent_index: int
    model: str
    sample_index: int
    completion: Completion | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.completion is not None


@dataclass(frozen=True)
class ItemTrace:
    item_id: str
    config_hash: str
    answer: str | None
    calls: tuple[CallTrace, ...]
    error: str | None = None
    wall_s: float = 0.0  # what the item took here, queueing and retries included
    degraded: bool = False  # lost an agent; scored anyway or failed, by the DegradedPolicy

    @property
    def failed(self) -> bool:
        return self.answer is None

    def first_error(self) -> str | None:
        """The first failed call's error (the root cause), else the item's own error."""
        return next((c.error for c in self.calls if c.error), self.error)

    def _completions(self) -> list[Completion]:
        return [c.completion for c in self.calls if c.completion is not None]

    @property
    def cost_usd(self) -> float:
        """What running this config on the item costs at list prices, cache or not."""
        return sum(c.cost_usd for c in self._completions())

    @property
    def paid_usd(self) -> float:
        """What this run actually spent: cache hits are free."""
        return sum(c.paid_usd for c in self._completions())

    @property
    def prompt_tokens(self) -> int:
        return sum(c.usage.prompt_tokens for c in self._completions())

    @property
    def completion_tokens(self) -> int:
        return sum(c.usage.completion_tokens for c in self._completions())

    @property
    def latency_s(self) -> float:
        """Critical path: per layer the slowest successful call, summed over layers."""
        slowest: dict[int, float] = defaultdict(float)
        for c in self.calls:
            if c.completion is not None:
                slowest[c.layer] = max(slowest[c.layer], c.completion.latency_s)
        return sum(slowest.values())

    @property
    def n_calls(self) -> int:
        return len(self.calls)

    def model_mismatches(self) -> list[tuple[str, str]]:
        """(requested, answered) model names of calls whose reply named another model."""
        return [(c.model, c.completion.reply_model) for c in self.calls
                if c.completion is not None and c.completion.reply_model is not None]

    @property
    def n_cached(self) -> int:
        return sum(1 for c in self._completions() if c.cached)

    @property
    def n_failed_calls(self) -> int:
        return sum(1 for c in self.calls if c.completion is None)

    @property
    def simulated(self) -> bool:
        return any(c.simulated for c in self._completions())

    def cost_by_role(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for c in self.calls:
            if c.completion is not None:
                out[c.role] += c.completion.cost_usd
        return dict(out)

    def cost_by_model(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for c in self.calls:
            if c.completion is not None:
                out[c.model] += c.completion.cost_usd
        return dict(out)


@dataclass(frozen=True)
class Sampling:
    """Overrides of one agent's sampling parameters; None (or no stop) keeps the config's.

    ``serve`` applies a client's parameters to the aggregator only: the proposers keep the
    settings the config was tuned with (see ``server``)."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def apply(self, request: ChatRequest) -> ChatRequest:
        changes = {k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p),
                                     ("max_tokens", self.max_tokens), ("seed", self.seed)) if v is not None}
        if self.stop:
            changes["stop"] = self.stop
        return replace(request, **changes) if changes else request


def sample_indices(layer: Sequence[AgentSpec]) -> list[int]:
    """Identical agents in one layer are repeated samples: number them 0, 1, 2, …"""
    seen: Counter[AgentSpec] = Counter()
    out = []
    for agent in layer:
        out.append(seen[agent])
        seen[agent] += 1
    return out


class Runner:
    """Executes configs against one provider, optionally through a call store."""

    def __init__(self, provider: Provider, store: "CallStore | None" = None, *,
                 max_concurrent_items: int = 8, run_id: str | None = None,
                 degraded: DegradedPolicy | str = DegradedPolicy.SCORE):
        if max_concurrent_items < 1:
            raise ValueError("max_concurrent_items must be >= 1")
        self.provider = provider
        self.store = store
        self.max_concurrent_items = max_concurrent_items
        self.run_id = run_id
        self.degraded = DegradedPolicy.parse(degraded)

    async def call(self, request: ChatRequest, role: Role = "judge", item_id: str | None = None,
                   config_hash: str | None = None, on_delta: DeltaSink | None = None) -> Completion:
        """One call through the store (if any). Judges use this too, so their calls are logged.

        The catalog's limits are applied first (``providers.limits``): a request that cannot fit
        its model's context window raises ``ContextWindowError`` here, before the store sees it.
        With ``on_delta`` the call is streamed when the provider can (``_Streamed``); an answer
        served whole (from the store, or by a provider that cannot stream) is handed over whole.
        """
        request = fit_for(self.provider, request)
        provider: Provider = self.provider if on_delta is None else _Streamed(self.provider, on_delta)
        if self.store is None:
            completion = await provider.complete(request)
        else:
            completion = await self.store.complete(provider, request, role=role, run_id=self.run_id,
                                                   item_id=item_id, config_hash=config_hash)
        if isinstance(provider, _Streamed) and not provider.relayed and completion.text:
            await provider.on_delta(completion.text)
        return completion

    async def _agent_call(self, agent: AgentSpec, sample_index: int, layer: int, agent_index: int,
                          role: Role, prompt: tuple[Message, ...], references: Sequence[str],
                          config: MoAConfig, item_id: str, sampling: Sampling | None = None,
                          on_delta: DeltaSink | None = None) -> CallTrace:
        messages = agent_messages(agent, prompt, references, config.prompt_template)
        request = ChatRequest(agent.model, messages, agent.temperature, agent.max_tokens, sample_index)
        if sampling is not None:
            request = sampling.apply(request)
        try:
            completion = await self.call(request, role, item_id, config.config_hash, on_delta)
        except ProviderError as exc:
            return CallTrace(layer, role, agent_index, agent.model, sample_index, None, str(exc))
        return CallTrace(layer, role, agent_index, agent.model, sample_index, completion)

    async def run_item(self, config: MoAConfig, messages: tuple[Message, ...],
                       item_id: str = "prompt", *, sampling: Sampling | None = None, draw: int = 0,
                       on_delta: DeltaSink | None = None) -> ItemTrace:
        """One item. ``sampling``, ``draw`` and ``on_delta`` are for serving (module docstring):
        ``draw`` is added to every agent's sample index (0: the samples a search measures)."""
        if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
            raise ConfigError(f"expected an integer >= 0, got {draw!r}", field="draw")
        started = time.perf_counter()
        trace = await self._run_layers(config, messages, item_id, sampling, draw, on_delta)
        return replace(trace, wall_s=time.perf_counter() - started)

    async def _run_layers(self, config: MoAConfig, messages: tuple[Message, ...], item_id: str,
                          sampling: Sampling | None = None, draw: int = 0,
                          on_delta: DeltaSink | None = None) -> ItemTrace:
        calls: list[CallTrace] = []
        references: list[str] = []
        degraded = False
        for layer_index, layer in enumerate(config.proposer_layers):
            results = await asyncio.gather(*(
                self._agent_call(agent, draw + s, layer_index, i, "proposer", messages, references, config,
                                 item_id)
                for i, (agent, s) in enumerate(zip(layer, sample_indices(layer)))))
            calls.extend(results)
            ok = [r.completion.text for r in results if r.completion is not None]
            lost = [r for r in results if r.completion is None]
            if not ok:
                return ItemTrace(item_id, config.config_hash, None, tuple(calls),
                                 f"every proposer in layer {layer_index + 1} failed ({len(results)} "
                                 f"agents; each error is in the trace), first: {lost[0].error}")
            if lost and self.degraded is DegradedPolicy.FAIL:
                return ItemTrace(item_id, config.config_hash, None, tuple(calls),
                                 f"degraded (policy fail): {len(lost)} of {len(results)} proposers in "
                                 f"layer {layer_index + 1} failed, first: {lost[0].error}", degraded=True)
            degraded = degraded or bool(lost)
            references = ok
        final = await self._agent_call(config.aggregator, draw, config.rounds, 0, "aggregator",
                                       messages, references, config, item_id, sampling, on_delta)
        calls.append(final)
        if final.completion is None:
            return ItemTrace(item_id, config.config_hash, None, tuple(calls),
                             f"aggregator failed: {final.error}")
        return ItemTrace(item_id, config.config_hash, final.completion.text, tuple(calls),
                         degraded=degraded)

    async def run_items(self, config: MoAConfig, items: Sequence[tuple[str, tuple[Message, ...]]],
                        on_item: Callable[[ItemTrace], None | Awaitable[None]] | None = None,
                        ) -> list[ItemTrace]:
        """Items concurrently up to ``max_concurrent_items``; results in input order."""
        gate = asyncio.Semaphore(self.max_concurrent_items)

        async def one(item_id: str, messages: tuple[Message, ...]) -> ItemTrace:
            async with gate:
                trace = await self.run_item(config, messages, item_id)
            if on_item is not None:
                maybe = on_item(trace)
                if asyncio.iscoroutine(maybe):
                    await maybe
            return trace

        return list(await asyncio.gather(*(one(i, m) for i, m in items)))


class _Streamed:
    """The provider as the store sees it for one streamed call: ``complete`` streams when the
    real provider can, handing each piece to ``on_delta``. Same endpoint identity, so a streamed
    call has the same cache key as the call made whole, and is paid for once either way."""

    def __init__(self, provider: Provider, on_delta: DeltaSink):
        self.provider, self.on_delta, self.relayed = provider, on_delta, False

    def endpoint_identity(self, model: str) -> str:
        return self.provider.endpoint_identity(model)

    async def complete(self, request: ChatRequest) -> Completion:
        if not isinstance(self.provider, StreamingProvider):
            return await self.provider.complete(request)

        async def relay(piece: str) -> None:
            self.relayed = True
            await self.on_delta(piece)
        return await self.provider.stream(request, relay)

    async def aclose(self) -> None:
        """The real provider is closed by its owner."""
