"""Plumbing our two HTTP servers (``serve`` and ``sim-server``) share: the listening socket,
size-limited request bodies, and connection limits (timeouts, a cap on open connections).

The socket is bound before uvicorn starts, so a busy port is one clear error rather than a SystemExit. Made
with ``proto=IPPROTO_TCP`` on purpose: asyncio sets TCP_NODELAY only on accepted sockets whose
proto says TCP, and without it uvicorn's body write (sent after the headers) waits for the
client's delayed ACK: ~40 ms on every quick answer (measured in benchmarks/serve_load.py).

Connection limits. uvicorn closes an idle keep-alive connection (``timeout_keep_alive``, our
idle timeout) but only once a response has been sent; a connection that never completes its
request head or body is kept forever, and ``limit_concurrency`` answers 503 only after a request
head arrives, so neither protects the process's file descriptors from clients that connect and
stall (benchmarks/server_limits.py, before: 0 of 100 stalled connections of each kind closed
after 40 s; with a 256-fd limit and 350 stalled clients, 0 of 40 normal requests answered).
``_GuardedH11Protocol`` adds the two deadlines uvicorn lacks, and the listening socket the cap:

- the request head (request line and headers) must arrive within ``header_timeout_s`` of the
  connection opening or of its first byte after an idle keep-alive period — a total deadline,
  so a client sending the head byte by byte is cut off too;
- the body must arrive within ``body_timeout_s`` of the head, whether or not the app reads it;
- at most ``max_connections`` connections are open: the listener's ``accept`` closes one more
  at once. It has to be there, not in the protocol: asyncio accepts a whole backlog in one go
  before any protocol runs, so a burst would exhaust the fds first (and on EMFILE Python 3.11
  logs a traceback per remaining backlog slot: ~650,000 of them in 40 s, measured).

A client that started a request gets a 408 before the close. Each such event, and a client
that disconnects in the middle of its body, is one log line (``uvicorn.error``, so it shows in
the servers' own log and honours ``--log-level``), never a traceback: ``read_body`` turns the
app's view of that disconnect into ``ClientGone``, which the servers answer silently.
"""

from __future__ import annotations

import json
import logging
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import ConfigError, MoASearchError

log = logging.getLogger("uvicorn.error")

MAX_TIMEOUT_S = 3600.0
MAX_CONNECTIONS = 100_000


class BodyTooLarge(Exception):
    """The request body exceeded the limit; each server answers it in its own error format."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"request body exceeds {limit} bytes")


class ClientGone(Exception):
    """The client closed the connection before sending its whole body: nobody to answer. The
    connection layer has logged it (one line); the app ends the request quietly."""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing early on a declared Content-Length and while streaming otherwise, so
    an oversized upload is never held in memory whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


class _Gate:
    """Counts open connections against the cap; warns about refusals at most every 10 s (a flood
    is a line per 10 s, not a line per connection)."""

    def __init__(self, cap: int):
        self.cap, self.open, self.refused, self.warned_at = cap, 0, 0, float("-inf")

    def admit(self) -> bool:
        if self.open < self.cap:
            self.open += 1
            return True
        self.refused += 1
        now = time.monotonic()
        if now - self.warned_at >= 10:
            log.warning("%d connections open, the most allowed (--max-connections): closing new ones "
                        "at once (%d so far)", self.open, self.refused)
            self.warned_at = now
        return False

    def release(self) -> None:
        self.open -= 1


class _Listener(socket.socket):
    """The listening socket; once ``uvicorn_config`` gives it a gate, ``accept`` closes the
    connections beyond the cap as it takes them from the backlog."""

    gate: _Gate | None = None

    def accept(self) -> tuple[socket.socket, Any]:
        while True:  # ends with a connection, or BlockingIOError once the backlog is empty
            conn, address = super().accept()
            if self.gate is None or self.gate.admit():
                return conn, address
            conn.close()


def listen(host: str, port: int, *, what: str = "server", backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = _Listener(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise MoASearchError(f"{what} cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take, and how many may be connected (``--header-timeout``,
    ``--body-timeout``, ``--idle-timeout``, ``--max-connections``).

    The defaults are generous for any real client on a LAN (a 1 MB body in 30 s is 33 kB/s) and
    tight enough that stalled connections cannot pile up. ``idle_timeout_s`` is above httpx's
    5 s keep-alive expiry (the ``openai`` client's and ours), so a client never reuses a
    connection at the instant the server closes it. ``max_connections=None`` means half the
    process's file-descriptor limit, at most 1024: the other half stays for upstream calls,
    the call store and logs.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 15.0
    max_connections: int | None = None

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT_S:
                raise ConfigError(f"expected seconds in (0, {MAX_TIMEOUT_S:g}], got {value!r}", field=name)
        cap = self.max_connections
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_CONNECTIONS):
            raise ConfigError(f"expected an integer in 1 .. {MAX_CONNECTIONS}, got {cap!r}", field="max_connections")

    def connection_cap(self) -> int:
        if self.max_connections is not None:
            return self.max_connections
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return 1024 if soft == resource.RLIM_INFINITY else max(1, min(1024, soft // 2))


def uvicorn_config(app: Any, sock: socket.socket, limits: ConnectionLimits, *, log_level: str = "info",
                   **options: Any) -> uvicorn.Config:
    """The uvicorn settings both servers run with, to be run with ``sockets=[sock]``: our h11
    protocol enforcing ``limits`` (chosen explicitly, so an installed httptools changes
    nothing), the idle timeout as uvicorn's keep-alive timeout, and the app's lifespan.
    ``sock`` comes from ``listen`` and gets the connection cap. No WebSockets (neither server
    has any): an upgraded connection would leave our protocol without giving back its slot."""
    if not isinstance(sock, _Listener):
        raise TypeError("uvicorn_config needs a socket from serving.listen (it enforces the connection cap)")
    gate = sock.gate = _Gate(limits.connection_cap())
    protocol = type("GuardedH11Protocol", (_GuardedH11Protocol,), {"limits": limits, "gate": gate})
    host, port = sock.getsockname()[:2]
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", http=protocol,
                          ws="none", timeout_keep_alive=limits.idle_timeout_s,  # type: ignore[arg-type]
                          **options)


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the head and body deadlines; gives back its slot under the
    connection cap when the connection ends.

    One timer per connection, re-aimed when h11's view of the client changes: waiting for a
    head (``IDLE`` after bytes arrived, or a fresh connection) -> head deadline; receiving the
    body (``SEND_BODY``) -> body deadline; request received (``DONE``) -> none, the app runs
    under its own timeout; after a response, uvicorn's keep-alive timer (our idle timeout).
    """

    limits: ClassVar[ConnectionLimits]
    gate: ClassVar[_Gate]  # admitted this connection in the listener's accept

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: Any = None
        self._waiting_for: str | None = None
        self._started = False  # bytes of the current request have arrived
        self._dropped = False  # closed by us: its connection_lost is not the client's doing
        self._aim("head")

    def data_received(self, data: bytes) -> None:
        self._started = True
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._started = False
        self._follow(after_response=True)

    def connection_lost(self, exc: Exception | None) -> None:
        mid_body = not self._dropped and self.conn.their_state is h11.SEND_BODY
        self._aim(None)
        self.gate.release()
        super().connection_lost(exc)
        if mid_body:
            log.info("%s: the client closed the connection before sending the whole body of %s",
                     self._who(), self._request_line())

    def _follow(self, *, after_response: bool = False) -> None:
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._aim("body")
        elif state is h11.IDLE and not after_response:
            self._aim("head")
        else:  # DONE: the app's turn; IDLE after a response: uvicorn's keep-alive timer
            self._aim(None)

    def _aim(self, what: str | None) -> None:
        """Deadlines are totals: re-aiming at what is already awaited keeps the first one."""
        if what == self._waiting_for:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting_for = what
        if what is not None:
            seconds = self.limits.header_timeout_s if what == "head" else self.limits.body_timeout_s
            self._timer = self.loop.call_later(seconds, self._expire, what, seconds)

    def _expire(self, what: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        self._dropped = True
        if what == "body":
            message = f"request body not received within {seconds:g} s"
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                cycle.disconnected = True  # the app, if still reading, sees a disconnect
                cycle.message_event.set()
                self._send_408(message)
            log.info("%s: %s (%s); connection closed", self._who(), message, self._request_line())
        elif self._started:
            message = f"request head not received within {seconds:g} s"
            self._send_408(message)
            log.info("%s: %s; connection closed", self._who(), message)
        else:  # connected and never sent a byte: routine for pre-connecting clients
            log.debug("%s: no request within %g s; connection closed", self._who(), seconds)
        self.transport.close()

    def _send_408(self, message: str) -> None:
        """Written raw: h11 cannot send a response to a request it has not (fully) seen."""
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                     "param": None, "code": "request_timeout"}}).encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    def _who(self) -> str:
        return "client %s:%d" % self.client if self.client else "client"

    def _request_line(self) -> str:
        scope = self.scope
        return f"{scope['method']} {scope['path']}" if scope else "a request"
