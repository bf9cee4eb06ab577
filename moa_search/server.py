"""An OpenAI-compatible endpoint that answers with a preset's Mixture-of-Agents.

Why: the quickest way to use a tuned preset from existing tools (the ``openai`` client, chat
UIs, evaluation harnesses) is to look like any other chat model. ``POST /v1/chat/completions``
runs the preset's config on the request's messages through ``moa_search.runner.Runner`` (so
calls go through the call store when one is given) and answers in OpenAI's wire format;
``model`` is the preset name and ``GET /v1/models`` lists it.

Honest parameters: every request parameter is either honoured or refused with a 400 naming it,
never ignored (``PARAMETERS``, ``REFUSED``; an unknown one gets OpenAI's "Unrecognized request
argument"). What each honoured one does:

- ``temperature``, ``top_p``, ``max_tokens`` / ``max_completion_tokens``, ``stop``: applied to
  the *aggregator*, whose text is the answer. The proposers keep the preset's settings: the
  config was tuned with them, and a client asking for a short, greedy answer is asking about
  the answer, not about the drafts behind it. A ``temperature`` the aggregator does not take
  (catalog rules: default-only) is refused, since the provider would leave it out.
- ``seed``: makes the whole mixture reproducible. Every request is a *draw*: a number added to
  every agent's sample index, so proposers and aggregator are sampled afresh together. A seeded
  request's draws come from the seed (choice j of ``n``: a hash of (seed, j)), so a repeat gets
  the same sample, served from the call store at no cost; an unseeded request draws at random,
  so each identical request is a new sample (and a new paid call: the store is never asked to
  return one sample for two draws). The aggregator is also sent ``seed`` (+ j for choice j),
  for upstreams whose sampling honours it.
- ``n``: the mixture runs n times, concurrently, each with its own draw (up to ``MAX_N``).
- ``stream`` / ``stream_options.include_usage``: real streaming. The proposer layers run, then
  the aggregator's tokens are relayed from upstream as they arrive (``providers.base.
  StreamingProvider``); an aggregator answer served from the store, or by a provider that cannot
  stream (the in-process simulated world), comes as one piece. A failure before the first token
  is an HTTP error like any other; after it, an ``error`` event ends the stream.
- ``user``: recorded with the request's calls in the call store (their item id), so spend can
  be traced to an end user; it does not change the answer.
- Neutral values of refused parameters are accepted, since they ask for what the mixture does
  anyway: ``response_format: {"type": "text"}``, ``tools: []``, ``presence_penalty: 0``...

``usage``: ``completion_tokens`` are the returned answers' tokens (the aggregator's, so
``max_tokens`` bounds them per choice); ``prompt_tokens`` are every other token the mixture's
calls processed (all prompts, and the proposers' drafts), so ``total_tokens`` is everything the
answer cost. The list cost of those calls is the ``x-moa-cost-usd`` header (for a stream: the
``x_moa`` field of its last choice chunk), and ``x-moa-simulated: true`` marks answers from the
simulated world.

Failure is always an answer, never a hang: bad requests get OpenAI-style 4xx errors naming the
parameter, a failed item (every proposer of a layer, or the aggregator, failed) is a 502 with
the reason, and an overall timeout turns a stuck upstream into a 504. A stalled *client* is
cut off too: ``serving.ConnectionLimits`` bounds the time for a request's head and body, idle
keep-alive connections and the number of open connections. The server binds 127.0.0.1 unless
told otherwise; an optional bearer token guards it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import sys
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Mapping, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import chat_params
from .catalog import Catalog
from .errors import ConfigError, MoASearchError
from .keys import scrub
from .serving import BodyTooLarge, ClientGone, ConnectionLimits, listen, read_body, uvicorn_config
from .preset import PresetFile
from .providers.base import Message, Provider
from .runner import ItemTrace, Runner, Sampling

if TYPE_CHECKING:  # the store is optional at run time
    from .store import CallStore

log = logging.getLogger(__name__)

RunnerFactory = Callable[[], Runner]
DEFAULT_TIMEOUT_S = 600.0
"""A whole MoA answer (several layers of calls with retries) may take minutes; never forever."""
MAX_N = 8
"""Choices per request: each is a whole mixture, so n multiplies the cost; 8 is plenty."""
MAX_USER_CHARS = 256
DRAW_SPACE = 2**31 - 2**16
"""Draws are 1 .. DRAW_SPACE (0 is the samples a search measures), so a draw plus a layer's
sample indices stays below 2**31: llama.cpp takes the sample index as a 32-bit seed."""
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

PARAMETERS = frozenset({"model", "messages", "stream", "stream_options", "n", "temperature", "top_p",
                        "max_tokens", "max_completion_tokens", "stop", "seed", "user"})
"""Request parameters this server honours (module docstring)."""

REFUSED: Mapping[str, tuple[tuple[Any, ...], str]] = {
    # parameter: (values accepted because they ask for nothing, why any other is refused)
    "response_format": (({"type": "text"},), "the mixture answers in free text; it cannot "
                        "guarantee JSON or a schema"),
    "tools": (([],), "the mixture answers in text; it makes no tool calls"),
    "tool_choice": (("none",), "the mixture makes no tool calls"),
    "parallel_tool_calls": ((), "the mixture makes no tool calls"),
    "functions": (([],), "the mixture makes no function calls"),
    "function_call": (("none",), "the mixture makes no function calls"),
    "logprobs": ((False,), "a mixture's answer has no single model's log probabilities"),
    "top_logprobs": ((0,), "a mixture's answer has no single model's log probabilities"),
    "logit_bias": (({},), "the aggregator's token ids depend on its tokenizer, unknown here"),
    "frequency_penalty": ((0, 0.0), "not every upstream takes penalties; only 0 is supported"),
    "presence_penalty": ((0, 0.0), "not every upstream takes penalties; only 0 is supported"),
    "modalities": ((["text"],), "the mixture answers in text only"),
    "audio": ((), "the mixture answers in text only"),
    "prediction": ((), "predicted outputs are not supported"),
    "reasoning_effort": ((), "the preset fixes each agent's model and settings"),
    "verbosity": ((), "the preset fixes each agent's model and settings"),
    "service_tier": (("auto", "default"), "the upstream tiers are the catalog's, not the request's"),
    "store": ((False,), "completions are kept in the call store, not for OpenAI's evals"),
    "metadata": (({},), "completions are kept in the call store, not for OpenAI's evals"),
    "web_search_options": ((), "the mixture does not search the web"),
    "prompt_cache_key": ((), "prompt caching is the upstream's own"),
    "safety_identifier": ((), "send 'user' instead: it is recorded in the call store"),
}
"""Known OpenAI parameters this server does not honour: refused with a 400 naming them, unless
the value is neutral (asks for what the mixture does anyway). ``null`` is always the default."""


class _ApiError(Exception):
    """Raised while handling a request; becomes an OpenAI-style error reply."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def openai_error(status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> JSONResponse:
    """The error body every OpenAI client knows how to read."""
    return JSONResponse(_ApiError(status, message, type_=type_, param=param, code=code).body(),
                        status_code=status)


@dataclass(frozen=True)
class _ChatCall:
    messages: tuple[Message, ...]
    stream: bool
    include_usage: bool
    n: int = 1
    sampling: Sampling = Sampling()
    seed: int | None = None
    user: str | None = None

    def draws(self) -> list[int]:
        """One draw per choice: from the seed when there is one, else at random (docstring)."""
        if self.seed is None:
            return [1 + secrets.randbelow(DRAW_SPACE) for _ in range(self.n)]
        return [1 + int.from_bytes(hashlib.sha256(f"seed={self.seed};choice={j}".encode()).digest()[:8],
                                   "big") % DRAW_SPACE for j in range(self.n)]

    def sampling_for(self, choice: int) -> Sampling:
        """The aggregator's upstream seed: the client's for choice 0, + j for choice j."""
        if self.seed is None or choice == 0:
            return self.sampling
        seed = (self.seed + choice + 2**63) % 2**64 - 2**63  # stays a signed 64-bit integer
        return replace(self.sampling, seed=seed)


def create_server_app(preset: PresetFile, runner_factory: RunnerFactory, *, api_key: str | None = None,
                      max_body_bytes: int = 1_000_000, timeout_s: float = DEFAULT_TIMEOUT_S) -> Starlette:
    """The ASGI app serving ``preset``.

    ``runner_factory`` is called once, inside the serving event loop (providers may hold
    loop-bound HTTP clients); the runner's provider is closed when the app shuts down.
    """
    if api_key is not None and not api_key:
        raise ConfigError("an empty API key would accept anyone; pass None for no auth", field="api_key")
    if max_body_bytes < 1:
        raise ConfigError(f"expected max_body_bytes >= 1, got {max_body_bytes}", field="max_body_bytes")
    if not timeout_s > 0:
        raise ConfigError(f"expected timeout_s > 0, got {timeout_s}", field="timeout_s")
    holder: dict[str, Runner] = {}
    created = int(time.time())

    def runner() -> Runner:
        if "runner" not in holder:
            holder["runner"] = runner_factory()
        return holder["runner"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if "runner" in holder:
            with contextlib.suppress(Exception):
                await holder["runner"].provider.aclose()

    def denied(request: Request) -> Response | None:
        if api_key is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), api_key.encode()):
            return None
        message = ("Missing API key: send 'Authorization: Bearer <key>'."
                   if "authorization" not in request.headers else "Incorrect API key provided.")
        return openai_error(401, message, code="invalid_api_key")

    def model_card() -> dict[str, Any]:
        return {"id": preset.name, "object": "model", "created": created, "owned_by": "moa-search"}

    async def list_models(request: Request) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def get_model(request: Request) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        if request.path_params["model"] != preset.name:
            return openai_error(404, f"The model '{request.path_params['model']}' does not exist; "
                                f"this server serves '{preset.name}'.", param="model",
                                code="model_not_found")
        return JSONResponse(model_card())

    async def chat(request: Request) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        completion_id = f"chatcmpl-moa-{uuid.uuid4().hex[:24]}"
        try:
            call = _parse_chat(await _read_json(request, max_body_bytes), preset.name)
            _refuse_what_the_aggregator_cannot_take(call, runner().provider, preset)
            if call.stream:
                return await _Stream(runner(), preset, call, timeout_s, completion_id).start()
            traces = await _run_choices(runner(), preset, call, timeout_s)
        except _ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except ClientGone:  # logged by the connection layer; this reply is never sent
            return Response(status_code=499)
        return JSONResponse(_completion_body(traces, preset.name, completion_id), headers=_trace_headers(traces))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return openai_error(exc.status_code, str(exc.detail), code=f"http_{exc.status_code}")

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/models", list_models, methods=["GET"]),
                Route("/v1/models/{model:path}", get_model, methods=["GET"])],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


def require_keys(provider: Provider, preset: PresetFile) -> None:
    """Raise ``AuthError`` (one line, naming the variable) when a provider that can tell
    (``check_keys``: the HTTP one) lacks an API key the preset's models need: a server started
    without it would answer every request with a 502."""
    check_keys = getattr(provider, "check_keys", None)
    if check_keys is not None:
        check_keys(preset.config.models)


def serve(preset: PresetFile, provider: Provider, host: str = "127.0.0.1", port: int = 8000,
          store: "CallStore | None" = None, api_key: str | None = None, *,
          timeout_s: float = DEFAULT_TIMEOUT_S, log_level: str = "info",
          limits: ConnectionLimits = ConnectionLimits()) -> None:
    """Serve ``preset`` in the foreground until Ctrl-C (the CLI's ``moa-search serve``).

    Refuses to start when an API key the preset's models need is not set (``require_keys``)."""
    require_keys(provider, preset)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach it spends your credits",
                    host)
    app = create_server_app(preset, lambda: Runner(provider, store, run_id=f"serve:{preset.name}"),
                            api_key=api_key, timeout_s=timeout_s)
    sock = listen(host, port)
    config = uvicorn_config(app, sock, limits, log_level=log_level, timeout_graceful_shutdown=5)
    shown = f"[{host}]" if ":" in host else host
    # printed, not logged: shown whatever --log-level says (on stderr, with uvicorn's own lines)
    print(f"serving preset {preset.name} on http://{shown}:{sock.getsockname()[1]}/v1 "
          f"(model {preset.name!r}; Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


# ---- request handling ---------------------------------------------------------------------


async def _read_json(request: Request, limit: int) -> Any:
    try:
        raw = await read_body(request, limit)
    except BodyTooLarge as exc:
        raise _ApiError(413, str(exc), code="request_too_large") from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None


def _parse_chat(body: Any, served: str) -> _ChatCall:
    """Validate an OpenAI chat body; every error names the offending parameter."""
    if not isinstance(body, dict):
        raise _ApiError(400, "the request body must be a JSON object", code="invalid_body")
    _refuse_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _ApiError(400, "'model' must be a non-empty string", param="model")
    if model != served:
        raise _ApiError(404, f"The model '{model}' does not exist; this server serves '{served}'.",
                        param="model", code="model_not_found")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N):
        raise _ApiError(400, f"'n' must be an integer in 1 .. {MAX_N} (each choice runs the whole "
                        f"mixture), got {n!r}", param="n")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_CHARS):
        raise _ApiError(400, f"'user' must be a string of at most {MAX_USER_CHARS} characters", param="user")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _ApiError(400, "'messages' must be a non-empty list", param="messages")
    messages = tuple(_parse_message(m, i) for i, m in enumerate(raw))
    if not any(m.role == "user" and m.content.strip() for m in messages):
        raise _ApiError(400, "'messages' needs a user message with non-empty content", param="messages")
    try:
        stream, include_usage = chat_params.stream(body)
        seed = chat_params.seed(body)
        sampling = Sampling(chat_params.temperature(body), chat_params.top_p(body),
                            chat_params.max_tokens(body), chat_params.stop(body), seed)
    except chat_params.ParamError as exc:
        raise _ApiError(400, str(exc), param=exc.param) from None
    return _ChatCall(messages, stream, include_usage, n or 1, sampling, seed, user or None)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """A 400 naming the first parameter that is neither honoured nor given a neutral value."""
    for name, value in body.items():
        if name in PARAMETERS or value is None:
            continue
        if name not in REFUSED:
            raise _ApiError(400, f"Unrecognized request argument supplied: {name}", param=name,
                            code="unknown_parameter")
        neutral, why = REFUSED[name]
        if not any(type(value) is type(v) and value == v for v in neutral):
            raise _ApiError(400, f"'{name}' is not supported by this Mixture-of-Agents endpoint: {why}",
                            param=name, code="unsupported_parameter")


def _refuse_what_the_aggregator_cannot_take(call: _ChatCall, provider: Provider, preset: PresetFile) -> None:
    """A 400 for a ``temperature`` the aggregator's API does not take (its catalog rules say
    default-only, e.g. OpenAI's reasoning models): the provider would leave it out of the
    upstream request, so accepting it would ignore it silently."""
    catalog, model = getattr(provider, "catalog", None), preset.config.aggregator.model
    if (call.sampling.temperature is not None and isinstance(catalog, Catalog) and model in catalog
            and catalog.get(model).rules.temperature != "any"):
        raise _ApiError(400, f"'temperature' cannot be honoured: the aggregator {model!r} takes only "
                        "its default temperature", param="temperature", code="unsupported_parameter")


def _parse_message(raw: Any, i: int) -> Message:
    if not isinstance(raw, dict):
        raise _ApiError(400, "each message must be an object with 'role' and 'content'", param=f"messages[{i}]")
    role = raw.get("role")
    if role not in _ROLES:
        raise _ApiError(400, f"role must be one of {sorted(_ROLES)}, got {role!r}", param=f"messages[{i}].role")
    content = raw.get("content")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _ApiError(400, "only text content parts are supported",
                                param=f"messages[{i}].content[{j}]")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise _ApiError(400, "content must be a string or a list of text parts",
                        param=f"messages[{i}].content")
    return Message(_ROLES[role], content)


def _item_id(call: _ChatCall, choice: int) -> str:
    who = f"user={call.user}/" if call.user else ""
    return f"{who}request-{uuid.uuid4().hex[:12]}" + (f"/choice-{choice}" if call.n > 1 else "")


async def _run(runner: Runner, preset: PresetFile, call: _ChatCall, choice: int, draw: int,
               deadline: float, on_delta: Callable[[str], Any] | None = None) -> ItemTrace:
    """One choice: the mixture run once, its failures turned into API errors."""
    try:
        async with asyncio.timeout_at(deadline):
            trace = await runner.run_item(preset.config, call.messages, _item_id(call, choice),
                                          sampling=call.sampling_for(choice), draw=draw, on_delta=on_delta)
    except TimeoutError:
        raise _ApiError(504, "the mixture did not answer in time", type_="server_error",
                        code="timeout") from None
    except MoASearchError as exc:
        raise _ApiError(502, scrub(f"the mixture failed: {exc}"), type_="server_error",
                        code="upstream_error") from None
    except Exception:  # a bug must not kill the server, nor leak internals to the client
        log.exception("unexpected error running preset %s", preset.name)
        raise _ApiError(500, "internal error while running the mixture", type_="server_error") from None
    if trace.failed:
        # upstream text, forwarded: no key value may pass through (``keys``)
        raise _ApiError(502, scrub(f"the mixture failed: {trace.error}"), type_="server_error",
                        code="upstream_error")
    return trace


async def _run_choices(runner: Runner, preset: PresetFile, call: _ChatCall, timeout_s: float) -> list[ItemTrace]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    tasks = [asyncio.ensure_future(_run(runner, preset, call, j, d, deadline))
             for j, d in enumerate(call.draws())]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # one choice failed: the others are not worth paying for
        for task in tasks:
            task.cancel()


def _answer_tokens(trace: ItemTrace) -> int:
    final = trace.calls[-1].completion
    return final.usage.completion_tokens if final is not None else 0


def _usage(traces: Sequence[ItemTrace]) -> dict[str, int]:
    """Completion tokens: the answers'; prompt tokens: all the rest (module docstring)."""
    answers = sum(_answer_tokens(t) for t in traces)
    total = sum(t.prompt_tokens + t.completion_tokens for t in traces)
    return {"prompt_tokens": total - answers, "completion_tokens": answers, "total_tokens": total}


def _finish_reason(trace: ItemTrace) -> str:
    final = trace.calls[-1].completion
    return final.finish_reason if final is not None else "stop"


def _moa_summary(traces: Sequence[ItemTrace]) -> dict[str, Any]:
    return {"cost_usd": round(sum(t.cost_usd for t in traces), 8), "config_hash": traces[0].config_hash,
            "calls": sum(t.n_calls for t in traces), "cached_calls": sum(t.n_cached for t in traces),
            "latency_s": round(max(t.latency_s for t in traces), 3),
            "simulated": any(t.simulated for t in traces)}


def _trace_headers(traces: Sequence[ItemTrace]) -> dict[str, str]:
    moa = _moa_summary(traces)
    headers = {"x-moa-cost-usd": f"{moa['cost_usd']:.8f}", "x-moa-config-hash": moa["config_hash"],
               "x-moa-calls": str(moa["calls"]), "x-moa-cached-calls": str(moa["cached_calls"]),
               "x-moa-latency-s": f"{moa['latency_s']:.3f}"}
    if moa["simulated"]:
        headers["x-moa-simulated"] = "true"
    return headers


def _completion_body(traces: Sequence[ItemTrace], model: str, completion_id: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": j, "message": {"role": "assistant", "content": t.answer},
                     "finish_reason": _finish_reason(t), "logprobs": None} for j, t in enumerate(traces)],
        "usage": _usage(traces),
    }


class _Stream:
    """One streamed request: the n choices run as tasks whose aggregator pieces, and then their
    traces or errors, arrive on one queue in order. ``start`` waits for the first event, so a
    mixture that fails before its first token is an ordinary HTTP error; the SSE body follows."""

    def __init__(self, runner: Runner, preset: PresetFile, call: _ChatCall, timeout_s: float,
                 completion_id: str):
        self.runner, self.preset, self.call, self.timeout_s = runner, preset, call, timeout_s
        self.id, self.created = completion_id, int(time.time())
        self.queue: asyncio.Queue[tuple[int, str | ItemTrace | _ApiError]] = asyncio.Queue()
        self.tasks: list[asyncio.Future[None]] = []

    async def start(self) -> Response:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        self.tasks = [asyncio.ensure_future(self._choice(j, d, deadline))
                      for j, d in enumerate(self.call.draws())]
        try:
            first = await self.queue.get()
            if isinstance(first[1], _ApiError):
                raise first[1]
        except BaseException:  # failed before the first token, or this request was cancelled
            self._cancel()
            raise
        return StreamingResponse(self._events(first), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _choice(self, j: int, draw: int, deadline: float) -> None:
        async def on_delta(piece: str) -> None:
            await self.queue.put((j, piece))
        try:
            outcome: ItemTrace | _ApiError = await _run(self.runner, self.preset, self.call, j, draw,
                                                        deadline, on_delta)
        except _ApiError as exc:
            outcome = exc
        await self.queue.put((j, outcome))

    def _cancel(self) -> None:
        for task in self.tasks:
            task.cancel()

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body: Mapping[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                   "model": self.preset.name, "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    async def _events(self, first: tuple[int, str | ItemTrace | _ApiError]) -> AsyncIterator[bytes]:
        try:
            for j in range(self.call.n):
                yield self._chunk([{"index": j, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None, "logprobs": None}])
            traces: dict[int, ItemTrace] = {}
            event: tuple[int, str | ItemTrace | _ApiError] | None = first
            while len(traces) < self.call.n:
                j, what = event if event is not None else await self.queue.get()
                event = None
                if isinstance(what, _ApiError):  # after the first token: only an error event can say so
                    yield f"data: {json.dumps(what.body())}\n\n".encode()
                    return
                if isinstance(what, str):
                    yield self._chunk([{"index": j, "delta": {"content": what}, "finish_reason": None,
                                        "logprobs": None}])
                    continue
                traces[j] = what
                last = len(traces) == self.call.n
                extra = {"x_moa": _moa_summary(list(traces.values()))} if last else {}
                yield self._chunk([{"index": j, "delta": {}, "finish_reason": _finish_reason(what),
                                    "logprobs": None}], **extra)
            if self.call.include_usage:
                yield self._chunk([], usage=_usage(list(traces.values())))
            yield b"data: [DONE]\n\n"
        finally:  # the client left, or a choice failed: the others are not worth paying for
            self._cancel()
