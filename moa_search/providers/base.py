"""What crosses the boundary between the MoA core and whatever answers chat requests.

Every ``Completion`` carries the usage the provider *reported* and the dollar cost computed from
it, so every token spent is accounted for (as inspect_ai puts usage on every model output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Protocol, runtime_checkable

from ..config import canonical_json
from ..errors import MoASearchError

Role = Literal["proposer", "aggregator", "judge"]

MAX_BYTES_PER_TOKEN = 6
"""Common chat tokenizers (GPT-4's, Llama 3's, SmolLM2's BPE) average 3-5 UTF-8 bytes per token
on prose and code, and CJK text takes about one token per 3-byte character; 6 leaves a margin.
Only text made of long runs of one character packs more bytes into a token."""


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request.

    ``sample_index`` distinguishes repeated samples of the same request (Self-MoA: one model
    sampled n times), so temperature > 0 samples stay distinct in the call store while each
    stays reproducible. It is not sent to HTTP endpoints.

    ``top_p``, ``stop`` and ``seed`` are sent upstream only when set (``serve`` sets them on the
    aggregator from a client's request); unset, they leave the cache key as it always was, so
    calls stored before they existed are still found.
    """

    model: str
    messages: tuple[Message, ...]
    temperature: float = 0.7
    max_tokens: int = 2048
    sample_index: int = 0
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise MoASearchError("a chat request needs at least one message")
        if not any(m.role == "user" and m.content.strip() for m in self.messages):
            raise MoASearchError("empty prompt: a chat request needs a non-empty user message")

    def min_prompt_tokens(self) -> int:
        """A lower bound on the prompt's tokens: its UTF-8 bytes / ``MAX_BYTES_PER_TOKEN``.

        A bound rather than a guess, so the context-window check refuses only requests that
        certainly do not fit and never a request the server would have taken; the server's own
        check (an HTTP 400) still catches the rest.
        """
        size = sum(len(m.content.encode("utf-8")) for m in self.messages)
        return -(-size // MAX_BYTES_PER_TOKEN)

    def messages_as_dicts(self) -> list[dict[str, str]]:
        return [m.to_dict() for m in self.messages]

    def identity(self) -> dict[str, Any]:
        """Everything that determines the response, except the endpoint."""
        return {
            "model": self.model,
            "messages": self.messages_as_dicts(),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "sample_index": self.sample_index,
            **self.extra_sampling(),
        }

    def extra_sampling(self) -> dict[str, Any]:
        """The optional sampling parameters that are set, by their OpenAI names."""
        extra: dict[str, Any] = {}
        if self.top_p is not None:
            extra["top_p"] = self.top_p
        if self.stop:
            extra["stop"] = list(self.stop)
        if self.seed is not None:
            extra["seed"] = self.seed
        return extra

    def cache_key_material(self, endpoint_identity: str) -> str:
        return canonical_json({"endpoint": endpoint_identity, **self.identity()})


@dataclass(frozen=True)
class Usage:
    """Tokens as the provider reported them. ``cached_prompt_tokens`` is the part of
    ``prompt_tokens`` the provider read from its prompt cache (0 when it reports none), which
    providers bill at a lower cache-read price (``ModelInfo.cached_input_price``)."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """A provider's answer.

    Two times, because they answer different questions:

    * ``latency_s`` is how long the *model* took to answer: the time the server reports for the
      request when the reply carries one (llama.cpp's ``timings``, OpenAI's processing-time
      header, the sim-server's ``x_latency_s``), else the time from sending the request to having
      the response body, for the attempt that succeeded, not counting the wait for a concurrency
      slot or a rate limiter (for the simulated world: simulated seconds). This is what the
      latency objective and every "critical path" figure use, so a config's latency does not
      depend on how many other calls we had in flight, on transient faults, or on cache state.
    * ``wall_s`` is what the caller waited: from asking to having the answer, including queueing
      for a slot, rate limiting and retries. None when not measured (the simulated world, the
      store).

    ``reply_model`` is the model name the reply carried when it differs from the one requested
    (a server that answers with its default model, a provider that resolves an alias); None
    when they agree or the reply names none. ``cached`` is set by the call store on a hit: the
    call was free and instant, while ``cost_usd`` and ``latency_s`` keep the values of the
    original call.
    """

    text: str
    model: str
    usage: Usage
    cost_usd: float
    latency_s: float
    ttft_s: float | None = None
    finish_reason: str = "stop"
    simulated: bool = False
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    wall_s: float | None = field(default=None, compare=False)
    reply_model: str | None = None

    @property
    def paid_usd(self) -> float:
        """What this call actually cost now: nothing when served from the store."""
        return 0.0 if self.cached else self.cost_usd


class ProviderError(MoASearchError):
    """A call failed for good (after any retries). The message names the endpoint."""

    def __init__(self, message: str, *, endpoint: str = "", status: int | None = None,
                 retryable: bool = False):
        self.endpoint = endpoint
        self.status = status
        self.retryable = retryable
        super().__init__(f"{endpoint}: {message}" if endpoint else message)


class AuthError(ProviderError):
    """401/403, or a key env var that is not set: retrying cannot help."""


class MalformedReplyError(ProviderError):
    """The endpoint answered, but not with a chat completion we can account for."""


class ContextWindowError(ProviderError):
    """The request cannot fit the model's context window: refused before anything is sent."""


@runtime_checkable
class Provider(Protocol):
    """Anything that answers ``ChatRequest``s: the HTTP client, the simulated world, a test double."""

    def endpoint_identity(self, model: str) -> str:
        """Where ``model`` is served, without secrets: part of the call store's cache key."""
        ...

    async def complete(self, request: ChatRequest) -> Completion: ...

    async def aclose(self) -> None: ...


DeltaSink = Callable[[str], Awaitable[None]]
"""Receives a streamed answer's text pieces, in order, as they arrive."""


@runtime_checkable
class StreamingProvider(Provider, Protocol):
    """A provider that can also stream: ``stream`` hands each piece of the answer's text to
    ``on_delta`` as it arrives and returns the same ``Completion`` ``complete`` would (usage,
    cost, latency), so the call store records a streamed call like any other. Optional: the
    runner falls back to ``complete`` and hands over the whole text at once."""

    async def stream(self, request: ChatRequest, on_delta: DeltaSink) -> Completion: ...
