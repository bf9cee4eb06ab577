"""An OpenAI-compatible endpoint that answers with a preset's Mixture-of-Agents.

Why: the quickest way to use a tuned preset from existing tools (the ``openai`` client, chat
UIs, evaluation harnesses) is to look like any other chat model. ``POST /v1/chat/completions``
runs the preset's config on the request's messages through ``moa_search.runner.Runner`` (so
calls go through the call store when one is given) and answers in OpenAI's wire format:

- ``model`` is the preset name; ``GET /v1/models`` lists it;
- ``usage`` is the sum over *all* inner calls (proposers and aggregator), since that is what
  the answer cost in tokens; the list cost of those calls is in the ``x-moa-cost-usd`` header,
  and ``x-moa-simulated: true`` marks answers that came from the simulated world;
- sampling parameters in the request (temperature, max_tokens, ...) are ignored: the preset
  fixes them per agent, and the numbers it was tuned for depend on them.

Streaming (``stream: true``) is server-sent events in OpenAI's chunk format, but the text is
streamed in pieces *after* the aggregator has finished: the runner has no token streaming yet.
Proposer layers must finish before the aggregator starts anyway, so only the aggregator's own
decoding time could be hidden; that is left for when the provider protocol streams.

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
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Mapping

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .errors import ConfigError, MoASearchError
from .keys import scrub
from .serving import BodyTooLarge, ClientGone, ConnectionLimits, listen, read_body, uvicorn_config
from .preset import PresetFile
from .providers.base import Message, Provider
from .runner import ItemTrace, Runner

if TYPE_CHECKING:  # the store is optional at run time
    from .store import CallStore

log = logging.getLogger(__name__)

RunnerFactory = Callable[[], Runner]
DEFAULT_TIMEOUT_S = 600.0
"""A whole MoA answer (several layers of calls with retries) may take minutes; never forever."""
STREAM_CHUNK_CHARS = 48
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class _ApiError(Exception):
    """Raised while handling a request; becomes an OpenAI-style error reply."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def openai_error(status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> JSONResponse:
    """The error body every OpenAI client knows how to read."""
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status)


@dataclass(frozen=True)
class _ChatCall:
    messages: tuple[Message, ...]
    stream: bool
    include_usage: bool


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
        try:
            call = _parse_chat(await _read_json(request, max_body_bytes), preset.name)
            trace = await _run(runner(), preset, call, timeout_s)
        except _ApiError as exc:
            return openai_error(exc.status, exc.message, type_=exc.type, param=exc.param, code=exc.code)
        except ClientGone:  # logged by the connection layer; this reply is never sent
            return Response(status_code=499)
        headers = _trace_headers(trace)
        completion_id = f"chatcmpl-moa-{uuid.uuid4().hex[:24]}"
        if call.stream:
            return StreamingResponse(_sse(trace, preset.name, completion_id, call.include_usage),
                                     media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
        return JSONResponse(_completion_body(trace, preset.name, completion_id), headers=headers)

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


def serve(preset: PresetFile, provider: Provider, host: str = "127.0.0.1", port: int = 8000,
          store: "CallStore | None" = None, api_key: str | None = None, *,
          timeout_s: float = DEFAULT_TIMEOUT_S, log_level: str = "info",
          limits: ConnectionLimits = ConnectionLimits()) -> None:
    """Serve ``preset`` in the foreground until Ctrl-C (the CLI's ``moa-search serve``)."""
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach it spends your credits",
                    host)
    app = create_server_app(preset, lambda: Runner(provider, store, run_id=f"serve:{preset.name}"),
                            api_key=api_key, timeout_s=timeout_s)
    sock = listen(host, port)
    config = uvicorn_config(app, sock, limits, log_level=log_level, timeout_graceful_shutdown=5)
    shown = f"[{host}]" if ":" in host else host
    # uvicorn's logger: configured by uvicorn.Config, so the line shows at the default log level
    logging.getLogger("uvicorn.error").info("serving preset %s on http://%s:%d/v1", preset.name, shown,
                                            sock.getsockname()[1])
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
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _ApiError(400, "'model' must be a non-empty string", param="model")
    if model != served:
        raise _ApiError(404, f"The model '{model}' does not exist; this server serves '{served}'.",
                        param="model", code="model_not_found")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _ApiError(400, f"'stream' must be a boolean, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _ApiError(400, "'stream_options' must be an object", param="stream_options")
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or n != 1):
        raise _ApiError(400, "only n = 1 is supported: a preset gives one answer", param="n")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _ApiError(400, "'messages' must be a non-empty list", param="messages")
    messages = tuple(_parse_message(m, i) for i, m in enumerate(raw))
    if not any(m.role == "user" and m.content.strip() for m in messages):
        raise _ApiError(400, "'messages' needs a user message with non-empty content", param="messages")
    return _ChatCall(messages, bool(stream), bool(options.get("include_usage", False)))


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


async def _run(runner: Runner, preset: PresetFile, call: _ChatCall, timeout_s: float) -> ItemTrace:
    item_id = f"request-{uuid.uuid4().hex[:12]}"
    try:
        trace = await asyncio.wait_for(runner.run_item(preset.config, call.messages, item_id), timeout_s)
    except asyncio.TimeoutError:
        raise _ApiError(504, f"the mixture did not answer within {timeout_s:g} s", type_="server_error",
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


def _usage(trace: ItemTrace) -> dict[str, int]:
    return {"prompt_tokens": trace.prompt_tokens, "completion_tokens": trace.completion_tokens,
            "total_tokens": trace.prompt_tokens + trace.completion_tokens}


def _finish_reason(trace: ItemTrace) -> str:
    final = trace.calls[-1].completion
    return final.finish_reason if final is not None else "stop"


def _trace_headers(trace: ItemTrace) -> dict[str, str]:
    headers = {"x-moa-cost-usd": f"{trace.cost_usd:.8f}", "x-moa-config-hash": trace.config_hash,
               "x-moa-calls": str(trace.n_calls), "x-moa-cached-calls": str(trace.n_cached),
               "x-moa-latency-s": f"{trace.latency_s:.3f}"}
    if trace.simulated:
        headers["x-moa-simulated"] = "true"
    return headers


def _completion_body(trace: ItemTrace, model: str, completion_id: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": trace.answer},
                     "finish_reason": _finish_reason(trace), "logprobs": None}],
        "usage": _usage(trace),
    }


async def _sse(trace: ItemTrace, model: str, completion_id: str, include_usage: bool) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body: Mapping[str, Any] = {"id": completion_id, "object": "chat.completion.chunk",
                                   "created": created, "model": model, "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    text = trace.answer or ""
    for start in range(0, len(text), STREAM_CHUNK_CHARS):
        piece = text[start:start + STREAM_CHUNK_CHARS]
        yield chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
    yield chunk([{"index": 0, "delta": {}, "finish_reason": _finish_reason(trace)}])
    if include_usage:
        yield chunk([], usage=_usage(trace))
    yield b"data: [DONE]\n\n"
