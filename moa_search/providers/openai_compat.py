"""The HTTP provider: any OpenAI-compatible ``/chat/completions`` endpoint over one httpx client.

Why it looks like this:

* Money is counted from the usage the endpoint *reports*; a reply without usable ``usage`` is
  refused (``MalformedReplyError``) rather than silently counted as free.
* Transient failures (408, 429, 5xx, timeouts, dropped connections, and replies that deliver
  nothing: a body that is not JSON, or JSON without ``choices``) are retried with full-jitter
  exponential backoff (tenacity), honouring ``Retry-After``, all from one budget of
  ``max_retries`` per call: no kind of fault has a cap of its own, so three garbled replies in a
  row cost three retries, not the call. Client errors (other 4xx) are not retried, because
  repeating a bad request only spends quota; nor is a reply that delivered an answer but no
  usable ``usage`` (an endpoint that never reports usage never will, and asking again pays again).
* Concurrency is bounded per endpoint (a semaphore held only while a request is on the wire, not
  while backing off) and optional RPM / TPM limits use aiolimiter leaky buckets, so a large MoA
  fan-out does not trip the provider's own rate limiter. Concurrency and the request timeout
  come, per endpoint, from the constructor (``--concurrency``, ``--timeout``), else the catalog,
  else ``DEFAULT_CONCURRENCY`` / ``DEFAULT_TIMEOUT_S``.
* The catalog's ``max_tokens`` and ``context_window`` are applied before sending
  (``providers.limits``); a request that cannot fit is refused, not sent.
* The body follows the model's request rules (``catalog.RequestRules``: the name of the output
  limit, whether a temperature is sent, whether a system message is allowed). A 400 whose message
  names one of those parameters makes the provider adapt that rule for the model, once, say so in
  the log and keep it on the endpoint's state (``adapted_rules``); the call is then sent again.
* Latency is the server's own time when the reply carries it (``SERVER_LATENCY``), else the time
  on the wire; never the wait for a slot (see ``Completion``).
* ``stream`` is ``complete`` over server-sent events, each content delta handed on as it
  arrives (``serve`` relays the aggregator's tokens this way). It asks for
  ``stream_options.include_usage`` and, like ``complete``, refuses a stream that ends without
  usage rather than count it free. Faults before the first delta are retried as usual; after
  it the caller already has text, and a retry would hand it over twice, so the call fails.
* The API key is read from the environment at call time, sent only as a per-request header, and
  every key the catalog names is masked (``keys.scrub``) in every text taken from a reply —
  status line, error body, answer — so it never reaches a log line, exception, store or repr.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import time
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import httpx
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

from ..catalog import Catalog, Endpoint, ModelInfo, RequestRules
from ..errors import ConfigError
from ..keys import StreamScrubber, remember, scrub, scrub_content
from .base import (AuthError, ChatRequest, Completion, DeltaSink, MalformedReplyError, ProviderError,
                   Usage)
from .limits import fit_request

log = logging.getLogger(__name__)

_MAX_SERVER_MESSAGE = 300

DEFAULT_TIMEOUT_S = 120.0
"""Per HTTP request, when neither the caller nor the catalog sets one."""
DEFAULT_CONCURRENCY = 16
"""Requests in flight per endpoint, when neither the caller nor the catalog sets a number."""


class _Transient(Exception):
    """One failed attempt that may succeed if repeated; becomes a ``ProviderError`` at the end.

    Private to this module: it never escapes ``complete``.
    """

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None,
                 kind: str = "http"):  # kind: "http" | "timeout" | "connect" | "transport" | "malformed"
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.kind = kind


class _RetryAfterOrBackoff(wait_base):
    """Wait what the server asked for (``Retry-After``), else full-jitter exponential backoff."""

    def __init__(self, base_s: float, max_s: float):
        self._backoff = wait_random_exponential(multiplier=base_s, max=max_s)

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _Transient) and exc.retry_after_s is not None:
            return exc.retry_after_s
        return self._backoff(retry_state)


@dataclass
class _EndpointLimits:
    """Per-endpoint throttles; created lazily, inside the running event loop."""

    semaphore: asyncio.Semaphore
    requests: AsyncLimiter | None
    tokens: AsyncLimiter | None
    adapted_rules: dict[str, RequestRules] = field(default_factory=dict)
    """Per model: the request rules learnt from this endpoint's 400s (see ``adapt_rules``)."""


_RULE_FIXES: tuple[tuple[re.Pattern[str], str, Any], ...] = (
    # (what a 400 message names, the rule it breaks, the value that obeys it)
    (re.compile(r"\bmax_tokens\b"), "max_tokens_field", "max_completion_tokens"),
    (re.compile(r"\btemperature\b"), "temperature", "default-only"),
    (re.compile(r"'system'|\bsystem role\b"), "system_role", False),
)
_UNSUPPORTED = re.compile(r"unsupported|not supported|does not support", re.IGNORECASE)
"""How OpenAI words these refusals, e.g. "Unsupported parameter: 'max_tokens' is not supported
with this model. Use 'max_completion_tokens' instead." """


def adapt_rules(rules: RequestRules, message: str) -> RequestRules | None:
    """The rules with the one a 400 ``message`` names changed, or None when it names none the
    rules still break (so an unrelated 400, or one already adapted to, stays an error)."""
    if not _UNSUPPORTED.search(message):  # e.g. "temperature must be in 0 .. 2": a bad value, not a rule
        return None
    for pattern, name, value in _RULE_FIXES:
        if pattern.search(message) and getattr(rules, name) != value:
            return replace(rules, **{name: value})
    return None


def request_body(request: ChatRequest, rules: RequestRules) -> dict[str, Any]:
    """The JSON body for ``request`` under ``rules``: a default-only model gets no temperature; a
    model without the system role gets the system prompt at the start of the first user turn."""
    messages = request.messages_as_dicts()
    if not rules.system_role:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        messages = [dict(m) for m in messages if m["role"] != "system"]
        if system:
            first_user = next((m for m in messages if m["role"] == "user"), None)
            if first_user is None:
                messages.insert(0, {"role": "user", "content": system})
            else:
                first_user["content"] = f"{system}\n\n{first_user['content']}"
    body: dict[str, Any] = {"model": request.model, "messages": messages,
                            rules.max_tokens_field: request.max_tokens}
    if rules.temperature == "any":
        body["temperature"] = request.temperature
    body.update(request.extra_sampling())  # top_p, stop, seed: only when the request sets them
    return body


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if unusable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """A cheap upper-ish estimate (4 characters a token, plus framing) for the TPM limiter."""
    return sum(len(m.content) // 4 + 4 for m in request.messages) + 3


def server_message(response: httpx.Response, *, secret: str | None = None) -> str:
    """The server's error message on one line, truncated, with the API key (if echoed) masked."""
    text = response.text
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            text = err["message"]
        elif isinstance(err, str):
            text = err
        elif isinstance(data.get("detail"), str):
            text = data["detail"]
        elif isinstance(data.get("message"), str):
            text = data["message"]
    return scrub(" ".join(text.split()) or response.reason_phrase, secret)[:_MAX_SERVER_MESSAGE]


def _x_latency(data: Any, headers: httpx.Headers) -> float | None:
    value = data.get("x_latency_s")  # moa-search sim-server
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _llama_cpp_timings(data: Any, headers: httpx.Headers) -> float | None:
    timings = data.get("timings")  # llama.cpp's C++ server: prompt and generation milliseconds
    if not isinstance(timings, dict):
        return None
    parts = [timings.get("prompt_ms"), timings.get("predicted_ms")]
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parts):
        return None
    return (parts[0] + parts[1]) / 1000.0


def _processing_ms_header(data: Any, headers: httpx.Headers) -> float | None:
    try:  # OpenAI (and Azure OpenAI) report the server's processing time as a header
        return float(headers["openai-processing-ms"]) / 1000.0
    except (KeyError, ValueError):
        return None


SERVER_LATENCY = {"x_latency_s": _x_latency, "timings": _llama_cpp_timings,
                  "openai-processing-ms": _processing_ms_header}
"""Where a reply may carry the server's own time to answer, by name; the first that does wins.
llama-cpp-python's server sends none of these: its latency is then measured on the wire."""


def server_latency(data: Any, headers: httpx.Headers) -> tuple[float, str] | None:
    """(seconds, source name) of the server-reported time to answer, or None."""
    if not isinstance(data, dict):
        return None
    for name, read in SERVER_LATENCY.items():
        seconds = read(data, headers)
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            return seconds, name
    return None


def undelivered_reply(data: Any) -> str | None:
    """Why a 200 reply delivered no answer at all (not a JSON object, no ``choices``: a truncated
    body, or an error some proxies wrap in a 200), or None when it has choices. Such a reply is
    a transient fault, retried; a reply with choices but no usable usage is not."""
    if not isinstance(data, dict):
        return "is not a JSON object"
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return None
    error = data.get("error")
    detail = error.get("message") if isinstance(error, dict) else error
    said = (f" (the server said: {scrub(' '.join(detail.split()))[:_MAX_SERVER_MESSAGE]})"
            if isinstance(detail, str) else "")
    return f"has no choices{said}"


#: Where providers report the prompt tokens served from their prompt cache, first found wins:
#: OpenAI (and Fireworks, vLLM, OpenRouter) under ``prompt_tokens_details``, some providers at
#: the top of ``usage``, DeepSeek as its cache hits.
CACHED_TOKEN_PATHS: tuple[tuple[str, ...], ...] = (
    ("prompt_tokens_details", "cached_tokens"), ("cached_tokens",), ("prompt_cache_hit_tokens",))


def cached_prompt_tokens(usage: dict[str, Any], prompt_tokens: int) -> int:
    """The cached part of ``prompt_tokens`` as ``usage`` reports it; 0 when it reports none, or
    a count that is not an integer in [0, prompt_tokens]: those tokens are then counted at the
    full input price, which can overstate a call's cost but never understate it."""
    for path in CACHED_TOKEN_PATHS:
        value: Any = usage
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            valid = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= prompt_tokens
            return value if valid else 0
    return 0


def parse_chat_reply(data: Any, *, endpoint: str, model: str) -> tuple[str, Usage, str, dict[str, Any]]:
    """Text, usage, finish reason and the non-standard ``x_`` fields of a chat.completion body."""
    where = f"reply for model {model!r}"
    undelivered = undelivered_reply(data)
    if undelivered is not None:
        raise MalformedReplyError(f"{where} {undelivered}", endpoint=endpoint)
    choices = data["choices"]
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedReplyError(f"{where} has no message content", endpoint=endpoint)
    usage = data.get("usage")
    if not isinstance(usage, dict):
        raise MalformedReplyError(f"{where} has no 'usage'; its cost cannot be counted", endpoint=endpoint)
    counts = []
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MalformedReplyError(f"{where} has invalid usage.{key}: {value!r}", endpoint=endpoint)
        counts.append(value)
    finish = choices[0].get("finish_reason")
    extras = {k: v for k, v in data.items() if k.startswith("x_")}
    return (scrub_content(content), Usage(counts[0], counts[1], cached_prompt_tokens(usage, counts[0])),
            scrub(finish) if isinstance(finish, str) else "unknown", extras)


class OpenAICompatProvider:
    """Implements ``Provider`` for OpenAI-compatible endpoints named in a ``Catalog``.

    ``max_retries`` counts retries after the first attempt, for every kind of transient fault
    together (the one budget of the module docstring). ``timeout_s`` and
    ``max_concurrency_per_endpoint``, when given, override the catalog's per-endpoint
    ``timeout_s`` / ``concurrency`` for every endpoint. ``latency_s`` of a completion is the
    server's reported time or else the on-the-wire time of the attempt that succeeded; the wall
    time including queueing and retries is ``wall_s`` (see ``Completion``).
    ``send_sample_index`` adds the non-standard ``x_sample_index`` field, understood by the
    sim-server only (real APIs reject unknown fields).
    ``send_seed`` sends the sample index as the request's ``seed`` (llama.cpp's server reseeds its
    sampler per request), so repeated samples of one model differ, and each is reproducible.
    """

    def __init__(self, catalog: Catalog, *, timeout_s: float | None = None, max_retries: int = 6,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 60.0,
                 max_concurrency_per_endpoint: int | None = None, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, env: Mapping[str, str] | None = None,
                 send_sample_index: bool = False, send_seed: bool = False):
        for name, value in (("timeout_s", timeout_s), ("backoff_base_s", backoff_base_s),
                            ("backoff_max_s", backoff_max_s)):
            if value is not None and not value > 0:
                raise ConfigError(f"must be > 0, got {value!r}", field=name)
        if max_retries < 0:
            raise ConfigError(f"must be >= 0, got {max_retries!r}", field="max_retries")
        if max_concurrency_per_endpoint is not None and max_concurrency_per_endpoint < 1:
            raise ConfigError(f"must be >= 1, got {max_concurrency_per_endpoint!r}",
                              field="max_concurrency_per_endpoint")
        for name, rate in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if rate is not None and not rate > 0:
                raise ConfigError(f"must be > 0, got {rate!r}", field=name)
        self.catalog = catalog
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_concurrency_per_endpoint = max_concurrency_per_endpoint
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.send_sample_index = send_sample_index
        self.send_seed = send_seed
        self._env = env
        self._client: httpx.AsyncClient | None = None
        self._limits: dict[str, _EndpointLimits] = {}
        self._mismatches_told: set[tuple[str, str, str]] = set()
        for endpoint in {m.endpoint for m in catalog.models.values()}:
            # known before the first call, so even a reply to another endpoint cannot echo it
            remember(self._environ().get(endpoint.api_key_env) if endpoint.api_key_env else None)

    def __repr__(self) -> str:
        return (f"OpenAICompatProvider(endpoints={sorted({m.endpoint.base_url for m in self.catalog.models.values()})}, "
                f"max_retries={self.max_retries}, timeout_s={self.timeout_s})")

    def timeout_for(self, endpoint: Endpoint) -> float:
        """Seconds per HTTP request to ``endpoint``: the caller's, else the catalog's, else the default."""
        return next(t for t in (self.timeout_s, endpoint.timeout_s, DEFAULT_TIMEOUT_S) if t is not None)

    def concurrency_for(self, endpoint: Endpoint) -> int:
        """Requests in flight to ``endpoint``: the caller's, else the catalog's, else the default."""
        return next(int(c) for c in (self.max_concurrency_per_endpoint, endpoint.concurrency,
                                     DEFAULT_CONCURRENCY) if c is not None)

    def endpoint_identity(self, model: str) -> str:
        return self.catalog.get(model).endpoint.base_url

    def check_keys(self, models: Iterable[str]) -> None:
        """Raise ``AuthError`` naming the first API-key variable ``models`` need that is not
        set: ``serve`` checks before it starts, rather than answer every request with a 502."""
        for model in models:
            self._api_key(self.catalog.get(model))

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # ---- one call ------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> Completion:
        return await self._call(request, None)

    async def stream(self, request: ChatRequest, on_delta: DeltaSink) -> Completion:
        """``complete``, streamed: each piece of the answer goes to ``on_delta`` as it arrives
        (see the module docstring for retries and usage)."""
        return await self._call(request, on_delta)

    async def _call(self, request: ChatRequest, on_delta: DeltaSink | None) -> Completion:
        info = self.catalog.get(request.model)
        request = fit_request(info, request)  # as Runner.call did; here for direct callers
        base_url = info.endpoint.base_url
        key = self._api_key(info)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = self._endpoint_limits(info.endpoint)
        while True:
            rules = limits.adapted_rules.get(request.model, info.rules)
            try:
                body = request_body(request, rules)
                if on_delta is not None:
                    body.update(stream=True, stream_options={"include_usage": True})
                return await self._complete(info, request, body, headers, key, limits, on_delta)
            except ProviderError as exc:
                adapted = adapt_rules(rules, str(exc)) if exc.status == 400 else None
                if adapted is None:
                    raise
                limits.adapted_rules[request.model] = adapted
                log.warning("warning: %s refused a request for model %r (%s); sending it with %s from now "
                            "on (set this in the catalog entry to skip the failed request)", base_url,
                            request.model, exc, _rule_change(rules, adapted))

    async def _complete(self, info: ModelInfo, request: ChatRequest, body: dict[str, Any],
                        headers: dict[str, str], key: str | None, limits: _EndpointLimits,
                        on_delta: DeltaSink | None = None) -> Completion:
        """One call with retries on transient faults (for a stream: until its first delta)."""
        base_url = info.endpoint.base_url
        if self.send_sample_index:
            body["x_sample_index"] = request.sample_index
        if self.send_seed:  # the sample index already varies with a request's seed (``Runner``)
            body["seed"] = request.sample_index
        relay = None if on_delta is None else _Relay(on_delta)
        tokens = estimate_prompt_tokens(request) + request.max_tokens

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.info("%s: model %r attempt %d/%d failed (%s); retrying in %.2fs", base_url, request.model,
                     state.attempt_number, self.max_retries + 1, exc, wait)

        started = time.perf_counter()
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.max_retries + 1),
                    wait=_RetryAfterOrBackoff(self.backoff_base_s, self.backoff_max_s),
                    retry=retry_if_exception(lambda exc: isinstance(exc, _Transient)
                                             and (relay is None or not relay.relayed)),
                    before_sleep=before_sleep, reraise=True):
                with attempt:
                    attempts += 1
                    data, on_wire_s, reported = await self._attempt(info.endpoint, body, headers, key,
                                                                    limits, tokens, relay)
        except _Transient as exc:
            raise self._final_error(exc, base_url, request.model, attempts) from None
        completion = self._completion(info, request, data, on_wire_s, reported,
                                      {"attempts": attempts, "wall_s": time.perf_counter() - started})
        return completion if relay is None else replace(completion, ttft_s=relay.ttft_s)

    def _completion(self, info: ModelInfo, request: ChatRequest, data: Any, on_wire_s: float,
                    reported: tuple[float, str] | None, extra: dict[str, Any]) -> Completion:
        """The reply as a ``Completion``: cost from reported usage, the model's latency, the
        model the reply names (told once per endpoint and pair when it is not the one asked for)."""
        base_url = info.endpoint.base_url
        text, usage, finish, extras = parse_chat_reply(data, endpoint=base_url, model=request.model)
        if reported is not None:
            extra["reported_latency_s"], extra["latency_source"] = reported
        else:
            extra["latency_source"] = "on-the-wire"
        said = data.get("model")
        reply_model = scrub(said) if isinstance(said, str) and said and said != request.model else None
        if reply_model is not None and (base_url, request.model, reply_model) not in self._mismatches_told:
            self._mismatches_told.add((base_url, request.model, reply_model))
            log.warning("warning: %s answered a request for model %r as model %r; the numbers are "
                        "recorded under %r (is the model loaded there under this name?)",
                        base_url, request.model, reply_model, request.model)
        return Completion(text=text.strip(), model=request.model, usage=usage,
                          cost_usd=info.cost(usage.prompt_tokens, usage.completion_tokens,
                                             usage.cached_prompt_tokens),
                          latency_s=on_wire_s if reported is None else reported[0], ttft_s=None,
                          finish_reason=finish, simulated=extras.get("x_simulated") is True,
                          extra=extra, wall_s=extra["wall_s"], reply_model=reply_model)

    async def _attempt(self, endpoint: Endpoint, body: dict[str, Any], headers: dict[str, str], key: str | None,
                       limits: _EndpointLimits, tokens: float, relay: "_Relay | None" = None,
                       ) -> tuple[Any, float, tuple[float, str] | None]:
        """One HTTP exchange: throttled, timed, and classified into success / retry / final error.

        Returns the reply, the seconds from sending to having the body (the slot wait excluded),
        and the server's own time when the reply reports it. With ``relay``, the exchange is a
        stream; its reply is assembled from the chunks as a ``chat.completion`` body."""
        base_url, timeout_s = endpoint.base_url, self.timeout_for(endpoint)
        if limits.requests is not None:
            await limits.requests.acquire()
        if limits.tokens is not None:
            await _acquire(limits.tokens, tokens)
        client = self._http()  # built on first use (an SSL context: slow), not timed as the model's
        async with limits.semaphore:
            t0 = time.perf_counter()
            streamed: Any = None
            try:
                if relay is None:
                    response = await client.post(f"{base_url}/chat/completions", json=body, headers=headers,
                                                 timeout=timeout_s)
                else:
                    response, streamed = await relay.exchange(client, f"{base_url}/chat/completions",
                                                              body, headers, timeout_s, t0)
            except httpx.TimeoutException:
                raise _Transient(f"timed out after {timeout_s:g}s", kind="timeout") from None
            except httpx.ConnectError as exc:
                raise _Transient(f"connection failed: {scrub(str(exc), key) or type(exc).__name__}",
                                 kind="connect") from None
            except httpx.TransportError as exc:
                raise _Transient(f"{type(exc).__name__}: {scrub(str(exc), key)}", kind="transport") from None
            latency = time.perf_counter() - t0
        status = response.status_code
        if 200 <= status < 300 and relay is not None:
            return streamed, latency, server_latency(streamed, response.headers)
        if 200 <= status < 300:
            model = body["model"]
            try:
                data = response.json()
            except ValueError:
                raise _Transient(f"reply for model {model!r} is not valid JSON", status=200,
                                 kind="malformed") from None
            undelivered = undelivered_reply(data)
            if undelivered is not None:
                raise _Transient(f"reply for model {model!r} {undelivered}", status=200, kind="malformed")
            return data, latency, server_latency(data, response.headers)
        message = server_message(response, secret=key)
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
            if retry_after is not None and retry_after > self.backoff_max_s:
                raise ProviderError(f"HTTP {status}: {message} (the server asks to retry after "
                                    f"{retry_after:g}s, more than backoff_max_s={self.backoff_max_s:g})",
                                    endpoint=base_url, status=status, retryable=True)
            raise _Transient(f"HTTP {status}: {message}", status=status, retry_after_s=retry_after)
        error_class = AuthError if status in (401, 403) else ProviderError
        raise error_class(f"HTTP {status} for model {body['model']!r}: {message}", endpoint=base_url,
                          status=status)

    def _final_error(self, exc: _Transient, base_url: str, model: str, attempts: int) -> ProviderError:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if exc.kind == "connect":
            err = ProviderError(f"cannot connect to {base_url} (model {model!r}, {tries}): {exc}",
                                status=None, retryable=True)
            err.endpoint = base_url  # the message already names it; don't prefix it twice
            return err
        if exc.kind == "malformed":
            return MalformedReplyError(f"{exc} ({tries})", endpoint=base_url, status=200, retryable=True)
        return ProviderError(f"model {model!r} failed after {tries}: {exc}", endpoint=base_url,
                             status=exc.status, retryable=True)

    # ---- shared resources ----------------------------------------------------------------

    def _environ(self) -> Mapping[str, str]:
        return self._env if self._env is not None else os.environ

    def _api_key(self, info: ModelInfo) -> str | None:
        name = info.endpoint.api_key_env
        if not name:
            return None
        key = self._environ().get(name)
        if not key:
            raise AuthError(f"environment variable {name} is not set (needed for model {info.id!r})",
                            endpoint=info.endpoint.base_url)
        remember(key)
        return key

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # Concurrency is bounded per endpoint by our semaphores, so the pool itself is not;
            # the timeout is set per request, per endpoint (``timeout_for``).
            keepalive = max([20] + [self.concurrency_for(m.endpoint) for m in self.catalog.models.values()])
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=keepalive),
                headers={"Content-Type": "application/json"},
            )
        return self._client

    def _endpoint_limits(self, endpoint: Endpoint) -> _EndpointLimits:
        limits = self._limits.get(endpoint.base_url)
        if limits is None:
            requests = _per_second_bucket(self.requests_per_minute)
            tokens = _per_second_bucket(self.tokens_per_minute)
            limits = _EndpointLimits(asyncio.Semaphore(self.concurrency_for(endpoint)), requests, tokens)
            self._limits[endpoint.base_url] = limits
        return limits


class _Relay:
    """One streamed call: reads the server-sent events, hands each content delta on, and
    assembles the ``chat.completion`` body the non-streamed path would have had. ``relayed``
    says whether the caller has text yet (then no retry); ``ttft_s`` is the first delta's time."""

    def __init__(self, on_delta: DeltaSink):
        self.on_delta = on_delta
        self.relayed = False
        self.ttft_s: float | None = None
        self.scrubber = StreamScrubber()  # per attempt (``_read``)

    async def exchange(self, client: httpx.AsyncClient, url: str, body: dict[str, Any],
                       headers: dict[str, str], timeout_s: float, t0: float) -> tuple[httpx.Response, Any]:
        async with client.stream("POST", url, json=body, headers=headers, timeout=timeout_s) as response:
            if not 200 <= response.status_code < 300:
                await response.aread()  # an error reply: classified by the caller like any other
                return response, None
            return response, await self._read(response, body["model"], t0)

    async def _read(self, response: httpx.Response, model: str, t0: float) -> dict[str, Any]:
        self.scrubber = StreamScrubber()  # an attempt that failed before handing anything on left no text
        parts: list[str] = []
        reply: dict[str, Any] = {}
        finish: Any = None
        ended = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments (": keep-alive"), event names
            payload = line[5:].strip()
            if payload == "[DONE]":
                ended = True
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                raise _Transient(f"stream for model {model!r} has a chunk that is not JSON",
                                 status=200, kind="malformed") from None
            if not isinstance(chunk, dict) or "error" in chunk:
                raise _Transient(f"stream for model {model!r} broke off: "
                                 f"{scrub(str(chunk))[:_MAX_SERVER_MESSAGE]}", status=200, kind="malformed")
            reply.update({k: v for k, v in chunk.items() if k.startswith("x_") or k == "model"})
            if isinstance(chunk.get("usage"), dict):
                reply["usage"] = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                finish = choice.get("finish_reason") or finish
                delta = choice.get("delta")
                piece = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(piece, str):
                    await self._hand_on(piece, parts, t0)
        if not ended and finish is None:
            raise _Transient(f"stream for model {model!r} ended before its last chunk", status=200,
                             kind="malformed")
        await self._send(self.scrubber.flush(), t0)
        reply["choices"] = [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                             "finish_reason": finish}]
        return reply

    async def _hand_on(self, piece: str, parts: list[str], t0: float) -> None:
        """Leading whitespace is dropped, as ``complete`` strips its text; key values are masked
        (``StreamScrubber``), and the assembled text is scrubbed whole again when parsed."""
        if not parts:
            piece = piece.lstrip()
        if piece:
            parts.append(piece)
            await self._send(self.scrubber.feed(piece), t0)

    async def _send(self, text: str, t0: float) -> None:
        if not text:
            return
        if self.ttft_s is None:
            self.ttft_s = time.perf_counter() - t0
        self.relayed = True
        await self.on_delta(text)


def _rule_change(old: RequestRules, new: RequestRules) -> str:
    return ", ".join(f"{name} = {getattr(new, name)!r}" for name in ("max_tokens_field", "temperature", "system_role")
                     if getattr(old, name) != getattr(new, name))


async def _acquire(bucket: AsyncLimiter, amount: float) -> None:
    """Take ``amount`` from the bucket, in bucket-sized pieces when it is larger than the bucket.

    A request bigger than one second's token budget is charged in full (it just waits longer),
    so the long-run rate never exceeds the limit.
    """
    while amount > 0:
        piece = min(amount, bucket.max_rate)
        await bucket.acquire(piece)
        amount -= piece


def _per_second_bucket(per_minute: float | None) -> AsyncLimiter | None:
    """A leaky bucket that drains per second rather than per minute.

    Providers enforce "per minute" limits over shorter windows (OpenAI documents 60 RPM being
    enforced as 1 per second), so a bucket that allows the whole minute's budget as one burst
    would trip them. Below one a second, the bucket holds a single request.
    """
    if per_minute is None:
        return None
    if per_minute >= 60:
        return AsyncLimiter(per_minute / 60.0, 1.0)
    return AsyncLimiter(1, 60.0 / per_minute)
