"""A loopback OpenAI-compatible server that answers from any ``Provider``.

Why it exists: the real HTTP client (``providers.openai_compat``) must be tested against a real
server, and searches over HTTP must be reproducible offline. Serving the simulated world through
the same wire format as Together/OpenAI/vLLM lets the HTTP path, its retries and its fault
handling be exercised end to end, with faults injected on purpose and seeded so a failing run can
be replayed.

Wire format: ``POST /v1/chat/completions`` answers in OpenAI's ``chat.completion`` shape, plus
three non-standard fields a stock client ignores: ``x_simulated`` (the completion came from the
simulated world), ``x_latency_s`` (the latency the provider reports, e.g. simulated seconds) and,
in requests, ``x_sample_index`` (which Self-MoA sample to reproduce; default: the request's
``seed`` modulo 2**31, else 0). ``stop`` cuts the answer as OpenAI does (usage counts what is
returned); ``top_p`` is checked and forwarded, but the simulated world models temperature only,
so it does not change an answer.

Streaming (``stream: true``): OpenAI's ``chat.completion.chunk`` server-sent events, about one
token (4 characters) a chunk. With sleeping on (``sleep_latency`` / ``latency_override_s``) the
latency is spread as a real server spends it: the time to first token (the completion's
``ttft_s`` share of it) before the first chunk, the rest evenly over the tokens, so a client
sees the first token early and the last at the full latency. ``stream_options.include_usage``
adds OpenAI's usage chunk; the last chunk with a ``finish_reason`` carries ``x_simulated`` and
``x_latency_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import chat_params
from .catalog import Catalog
from .config import DEFAULT_MAX_TOKENS
from .errors import ConfigError, MoASearchError, UnknownModelError
from .serving import BodyTooLarge, ClientGone, ConnectionLimits, listen, read_body, uvicorn_config
from .providers.base import ChatRequest, Completion, Message, Provider, ProviderError
from .providers.sim_model import CHARS_PER_TOKEN

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""Request bodies above 1 MiB get 413: no MoA prompt is that large, a runaway client is."""

RECORDED_MAX_REQUESTS = 256
RECORDED_MAX_BYTES = 8 * 1024 * 1024
"""``recorded_requests`` keeps the last 256 bodies, fewer when they are large: at most 8 MiB of
them (eight 1 MiB bodies), so a long run of big requests keeps memory bounded. Kept as the
bytes received and parsed when read, so the budget counts what is really held."""

FAULT_KINDS = ("ok", "429", "500", "503", "timeout", "malformed", "no_usage")
"""What a scripted fault may be. ``503`` honours ``retry_after_s`` like ``429``; ``no_usage``
answers normally but leaves out ``usage`` (a client must refuse to count such a reply as free)."""

_ROLES = {"system", "user", "assistant", "developer"}
_DEFAULT_TEMPERATURE = 1.0  # OpenAI's documented default when a client omits it
STREAM_CHUNK_CHARS = CHARS_PER_TOKEN  # one simulated token a chunk
_NOT_JSON = object()


@dataclass(frozen=True)
class FaultConfig:
    """Faults injected per chat request, so clients can be tested against a misbehaving server.

    ``script`` is applied first, one entry per chat request in arrival order (kinds from
    ``FAULT_KINDS``), then each request draws one seeded uniform number against the rates, in
    the order 429, 500, timeout, malformed. The same seed gives the same fault sequence.
    """

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_malformed: float = 0.0
    retry_after_s: float | None = None
    seed: int = 0
    timeout_hang_s: float = 30.0
    script: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        rates = {"rate_429": self.rate_429, "rate_500": self.rate_500,
                 "rate_timeout": self.rate_timeout, "rate_malformed": self.rate_malformed}
        for name, value in rates.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"expected a probability in 0 .. 1, got {value!r}", field=f"faults.{name}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ConfigError(f"fault rates sum to {sum(rates.values()):g} > 1", field="faults")
        if self.retry_after_s is not None and not self.retry_after_s >= 0:
            raise ConfigError(f"expected seconds >= 0, got {self.retry_after_s!r}", field="faults.retry_after_s")
        if not self.timeout_hang_s >= 0:
            raise ConfigError(f"expected seconds >= 0, got {self.timeout_hang_s!r}", field="faults.timeout_hang_s")
        object.__setattr__(self, "script", tuple(self.script))
        for i, kind in enumerate(self.script):
            if kind not in FAULT_KINDS:
                raise ConfigError(f"unknown fault {kind!r}; expected one of {list(FAULT_KINDS)}",
                                  field=f"faults.script[{i}]")


@dataclass(frozen=True)
class ServerStats:
    """A consistent snapshot of what the server has seen, for tests and benchmarks."""

    requests: int  # chat requests received (any outcome)
    completed: int  # chat completions answered with 200
    in_flight: int
    max_in_flight: int
    faults: Mapping[str, int]  # injected fault kind -> count
    statuses: Mapping[int, int]  # HTTP status of chat replies -> count


@dataclass(frozen=True)
class RecordedRequest:
    """One chat request as received. The Authorization header's *value* is never kept."""

    body: Mapping[str, Any]
    has_authorization: bool


class _AppState:
    """Mutable per-app state; a lock because tests read it from another thread."""

    recorded: deque[tuple[bytes, bool]]  # (raw JSON body, had an Authorization header)

    def __init__(self, provider: Provider, catalog: Catalog | None, faults: FaultConfig,
                 sleep_latency: bool, latency_override_s: float | None, require_api_key: str | None):
        self.provider = provider
        self.catalog = catalog
        self.faults = faults
        self.sleep_latency = sleep_latency or latency_override_s is not None
        self.latency_override_s = latency_override_s
        self.require_api_key = require_api_key
        self.lock = threading.Lock()
        self.rng = random.Random(faults.seed)
        self.script_pos = 0
        self.release: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests = 0
            self.completed = 0
            self.in_flight = 0
            self.max_in_flight = 0
            self.faults_seen: Counter[str] = Counter()
            self.statuses: Counter[int] = Counter()
            self.recorded = deque()
            self.recorded_bytes = 0

    def record(self, raw: bytes, has_authorization: bool) -> None:
        with self.lock:
            self.recorded.append((raw, has_authorization))
            self.recorded_bytes += len(raw)
            while len(self.recorded) > RECORDED_MAX_REQUESTS or (
                    self.recorded_bytes > RECORDED_MAX_BYTES and len(self.recorded) > 1):
                self.recorded_bytes -= len(self.recorded.popleft()[0])

    def recorded_requests(self) -> tuple[RecordedRequest, ...]:
        with self.lock:
            kept = tuple(self.recorded)
        bodies = [(json.loads(raw), auth) for raw, auth in kept]
        return tuple(RecordedRequest(body if isinstance(body, dict) else {"_": body}, auth)
                     for body, auth in bodies)

    def snapshot(self) -> ServerStats:
        with self.lock:
            return ServerStats(self.requests, self.completed, self.in_flight, self.max_in_flight,
                               dict(self.faults_seen), dict(self.statuses))

    def next_fault(self) -> str:
        """The fault for the next chat request: the script first, then the seeded rates."""
        f = self.faults
        with self.lock:
            if self.script_pos < len(f.script):
                kind = f.script[self.script_pos]
                self.script_pos += 1
            else:
                u = self.rng.random()
                kind = "ok"
                for name, rate in (("429", f.rate_429), ("500", f.rate_500),
                                   ("timeout", f.rate_timeout), ("malformed", f.rate_malformed)):
                    if u < rate:
                        kind = name
                        break
                    u -= rate
            if kind != "ok":
                self.faults_seen[kind] += 1
        return kind

    def bind_loop(self) -> asyncio.Event:
        """The release event lives in the serving loop; created on first use there."""
        if self.release is None or self.loop is not asyncio.get_running_loop():
            self.loop = asyncio.get_running_loop()
            self.release = asyncio.Event()
        return self.release

    def release_sleepers(self) -> None:
        """Wake every hanging/sleeping handler so shutdown is prompt; safe from any thread."""
        loop, event = self.loop, self.release
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    async def sleep(self, seconds: float) -> None:
        """Sleep, unless the server is shutting down."""
        if seconds <= 0:
            return
        event = self.bind_loop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=seconds)


class _BadRequest(Exception):
    """Raised inside the handler, turned into an OpenAI-style error reply."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error",
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = dict(headers or {})


def openai_error(status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The error body OpenAI clients know how to read."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def create_app(provider: Provider, *, faults: FaultConfig = FaultConfig(), sleep_latency: bool = False,
               latency_override_s: float | None = None, require_api_key: str | None = None,
               catalog: Catalog | None = None) -> Starlette:
    """Build the ASGI app.

    ``catalog`` (default: ``provider.catalog`` when the provider has one) lists ``/v1/models``
    and turns unknown models into 404 before the provider is asked. ``latency_override_s``
    implies sleeping that long per completion; ``sleep_latency`` alone sleeps the latency the
    provider reports, so wall-clock behaviour matches the simulated world.
    """
    if catalog is None and isinstance(getattr(provider, "catalog", None), Catalog):
        catalog = provider.catalog  # type: ignore[attr-defined]
    if latency_override_s is not None and not latency_override_s >= 0:
        raise ConfigError(f"expected seconds >= 0, got {latency_override_s!r}", field="latency_override_s")
    if require_api_key is not None and not require_api_key:
        raise ConfigError("an empty API key would accept anyone; pass None for no auth",
                          field="require_api_key")
    state = _AppState(provider, catalog, faults, sleep_latency, latency_override_s, require_api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.bind_loop()
        yield
        state.release_sleepers()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return openai_error(exc.status_code, str(exc.detail), code=f"http_{exc.status_code}")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        if (denied := _check_auth(state, request)) is not None:
            return denied
        data = [] if state.catalog is None else [
            {"id": m.id, "object": "model", "created": 0, "owned_by": m.endpoint.name}
            for m in state.catalog.models.values()]
        return JSONResponse({"object": "list", "data": data})

    async def chat(request: Request) -> Response:
        with state.lock:
            state.requests += 1
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            response = await _chat(state, request)
        except _BadRequest as exc:
            response = openai_error(exc.status, exc.message, type_=exc.type, param=exc.param,
                                    code=exc.code, headers=exc.headers)
        except ClientGone:  # logged by the connection layer; never sent, counted as nginx's 499
            response = Response(status_code=499)
        except Exception:  # a bug in the provider must not kill the server
            log.exception("sim-server: unexpected error answering a chat request")
            response = openai_error(500, "internal error in the sim-server", type_="server_error")
        finally:
            with state.lock:
                state.in_flight -= 1
        with state.lock:
            state.statuses[response.status_code] += 1
            if response.status_code == 200:
                state.completed += 1
        return response

    app = Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/models", models, methods=["GET"]),
                Route("/health", health, methods=["GET"])],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.sim = state
    return app


def _check_auth(state: _AppState, request: Request) -> Response | None:
    if state.require_api_key is None:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), state.require_api_key.encode()):
        return None
    message = "Missing API key." if not header else "Incorrect API key provided."
    return openai_error(401, message, code="invalid_api_key")


async def _read_body(request: Request) -> bytes:
    try:
        return await read_body(request, MAX_BODY_BYTES)
    except BodyTooLarge as exc:
        raise _BadRequest(413, str(exc), code="request_too_large") from None


def _parse_chat_request(body: Any) -> ChatRequest:
    """Validate an OpenAI chat body; every error names the offending parameter."""
    if not isinstance(body, dict):
        raise _BadRequest(400, "the request body must be a JSON object", code="invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _BadRequest(400, "'model' must be a non-empty string", param="model")
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise _BadRequest(400, "only n = 1 is supported", param="n")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _BadRequest(400, "'messages' must be a non-empty list", param="messages")
    messages = []
    for i, m in enumerate(raw_messages):
        if not isinstance(m, dict):
            raise _BadRequest(400, "each message must be an object with 'role' and 'content'",
                              param=f"messages[{i}]")
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES:
            raise _BadRequest(400, f"role must be one of {sorted(_ROLES)}, got {role!r}",
                              param=f"messages[{i}].role")
        if not isinstance(content, str):
            raise _BadRequest(400, "content must be a string", param=f"messages[{i}].content")
        messages.append(Message("system" if role == "developer" else role, content))
    try:
        temperature = chat_params.temperature(body)
        max_tokens = chat_params.max_tokens(body)
        top_p, stop, seed = chat_params.top_p(body), chat_params.stop(body), chat_params.seed(body)
    except chat_params.ParamError as exc:
        raise _BadRequest(400, str(exc), param=exc.param) from None
    sample_index = body.get("x_sample_index", 0 if seed is None else seed % 2**31)
    if isinstance(sample_index, bool) or not isinstance(sample_index, int) or sample_index < 0:
        raise _BadRequest(400, f"x_sample_index must be an integer >= 0, got {sample_index!r}",
                          param="x_sample_index")
    try:
        return ChatRequest(model, tuple(messages), _DEFAULT_TEMPERATURE if temperature is None else temperature,
                           max_tokens or DEFAULT_MAX_TOKENS, sample_index, top_p, stop, seed)
    except MoASearchError as exc:
        raise _BadRequest(400, str(exc), param="messages") from None


def _fault_response(state: _AppState, kind: str) -> Response:
    f = state.faults
    retry_headers = {} if f.retry_after_s is None else {"Retry-After": f"{f.retry_after_s:g}"}
    if kind == "429":
        return openai_error(429, "Rate limit reached (injected by the sim-server).", type_="requests",
                            code="rate_limit_exceeded", headers=retry_headers)
    if kind == "503":
        return openai_error(503, "The server is overloaded (injected by the sim-server).",
                            type_="server_error", code="overloaded", headers=retry_headers)
    if kind == "500":
        return openai_error(500, "The server had an error (injected by the sim-server).", type_="server_error")
    if kind == "malformed":
        return Response('{"id": "chatcmpl-sim", "object": "chat.completion", "choi',
                        media_type="application/json")
    raise AssertionError(f"not an immediate fault: {kind}")


async def _chat(state: _AppState, request: Request) -> Response:
    denied = _check_auth(state, request)
    raw = await _read_body(request)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = _NOT_JSON
    if body is not _NOT_JSON:  # recorded even when refused, so tests can see what was sent
        state.record(raw, "authorization" in request.headers)
    if denied is not None:
        return denied
    if body is _NOT_JSON:
        raise _BadRequest(400, "the request body is not valid JSON", code="invalid_json")
    kind = state.next_fault()
    if kind == "timeout":
        await state.sleep(state.faults.timeout_hang_s)
        return openai_error(504, "simulated timeout", type_="server_error", code="timeout",
                            headers={"Connection": "close"})
    if kind in ("429", "503", "500", "malformed"):
        return _fault_response(state, kind)
    chat_request = _parse_chat_request(body)
    try:
        stream, include_usage = chat_params.stream(body)
    except chat_params.ParamError as exc:
        raise _BadRequest(400, str(exc), param=exc.param) from None
    if state.catalog is not None and chat_request.model not in state.catalog:
        raise _BadRequest(404, f"The model '{chat_request.model}' does not exist", param="model",
                          code="model_not_found")
    try:
        completion = await state.provider.complete(chat_request)
    except UnknownModelError:
        raise _BadRequest(404, f"The model '{chat_request.model}' does not exist", param="model",
                          code="model_not_found") from None
    except ProviderError as exc:
        raise _BadRequest(502, f"upstream provider failed: {exc}", type_="server_error") from None
    except MoASearchError as exc:
        raise _BadRequest(400, str(exc)) from None
    delay = 0.0
    if state.sleep_latency:
        delay = state.latency_override_s if state.latency_override_s is not None else completion.latency_s
    if stream:
        return StreamingResponse(_stream_body(state, completion, delay, include_usage and kind != "no_usage"),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    await state.sleep(delay)
    return JSONResponse(_completion_body(completion, include_usage=kind != "no_usage"))


async def _stream_body(state: _AppState, completion: Completion, delay_s: float,
                       include_usage: bool) -> AsyncIterator[bytes]:
    """The completion as chunks, ``delay_s`` spread as the module docstring says: each piece is
    sent when it is due (all the overdue ones together), never earlier."""
    created, completion_id = int(time.time()), f"chatcmpl-sim-{uuid.uuid4().hex[:24]}"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": completion.model, "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    def delta(**fields: Any) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": fields, "finish_reason": None, "logprobs": None}]

    text = completion.text
    pieces = [text[i:i + STREAM_CHUNK_CHARS] for i in range(0, len(text), STREAM_CHUNK_CHARS)]
    share = (completion.ttft_s or 0.0) / completion.latency_s if completion.latency_s > 0 else 0.0
    first_s = delay_s * min(1.0, share)
    per_piece_s = (delay_s - first_s) / max(1, len(pieces))
    loop = asyncio.get_running_loop()
    start = loop.time()
    yield chunk(delta(role="assistant", content=""))
    await state.sleep(first_s)
    sent = 0
    while sent < len(pieces):
        elapsed = loop.time() - start - first_s
        due = len(pieces) if per_piece_s <= 0 else int(elapsed / per_piece_s) + 1
        upto = max(sent + 1, min(len(pieces), due))
        yield chunk(delta(content="".join(pieces[sent:upto])))
        sent = upto
        if sent < len(pieces):
            await state.sleep(start + first_s + sent * per_piece_s - loop.time())
    await state.sleep(start + delay_s - loop.time())  # the last token's share of the time
    yield chunk([{"index": 0, "delta": {}, "finish_reason": completion.finish_reason, "logprobs": None}],
                x_simulated=completion.simulated, x_latency_s=completion.latency_s)
    if include_usage:
        u = completion.usage
        yield chunk([], usage={"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                               "total_tokens": u.total_tokens})
    yield b"data: [DONE]\n\n"


def _completion_body(completion: Completion, *, include_usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                     "finish_reason": completion.finish_reason, "logprobs": None}],
        "x_simulated": completion.simulated,
        "x_latency_s": completion.latency_s,
    }
    if include_usage:
        u = completion.usage
        body["usage"] = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                         "total_tokens": u.total_tokens}
    return body


def _uvicorn_config(app: Starlette, sock: socket.socket, log_level: str,
                    limits: ConnectionLimits) -> uvicorn.Config:
    # A short graceful-shutdown window: a hanging fault must never hold a test or Ctrl-C hostage.
    return uvicorn_config(app, sock, limits, log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=2)


class SimServer:
    """Runs the app with uvicorn in a background thread; ``port=0`` picks a free port.

    Use as a context manager in tests: the port is bound before ``start`` returns, and ``stop``
    wakes hanging fault handlers so the thread ends within about a second. ``limits`` are the
    connection limits (``serving.ConnectionLimits``) the CLI's ``sim-server`` runs with.
    """

    def __init__(self, provider: Provider, *, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout_s: float = 10.0, log_level: str = "warning",
                 limits: ConnectionLimits = ConnectionLimits(), **create_app_kwargs: Any):
        self.app = create_app(provider, **create_app_kwargs)
        self.limits = limits
        self._state: _AppState = self.app.state.sim
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._startup_timeout_s = startup_timeout_s
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise MoASearchError("the sim-server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def stats(self) -> ServerStats:
        return self._state.snapshot()

    @property
    def recorded_requests(self) -> tuple[RecordedRequest, ...]:
        """The last chat request bodies that were parsed as JSON (up to 256 and 8 MiB)."""
        return self._state.recorded_requests()

    def reset_stats(self) -> None:
        self._state.reset()

    def start(self) -> "SimServer":
        if self._thread is not None:
            raise MoASearchError("the sim-server is already started")
        sock = listen(self.host, self._requested_port, what="sim-server")
        self._port = sock.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(self.app, sock, self._log_level, self.limits))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"sim-server:{self._port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise MoASearchError(f"sim-server on {self.host}:{self._port} failed to start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask uvicorn to exit, release hanging handlers, and join the thread."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._state.release_sleepers()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)
        self._thread = None
        self._server = None

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_forever(provider: Provider, host: str = "127.0.0.1", port: int = 8000, *,
                  log_level: str = "info", limits: ConnectionLimits = ConnectionLimits(),
                  **create_app_kwargs: Any) -> None:
    """Serve in the foreground until Ctrl-C (the CLI's ``moa-search sim-server``)."""
    app = create_app(provider, **create_app_kwargs)
    sock = listen(host, port, what="sim-server")
    bound = sock.getsockname()[1]
    server = uvicorn.Server(_uvicorn_config(app, sock, log_level, limits))
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger("uvicorn.error").info("sim-server listening on http://%s:%d/v1", shown, bound)
    try:
        server.run(sockets=[sock])
    finally:
        app.state.sim.release_sleepers()
        sock.close()
