"""Connection limits of both servers (``serve`` and ``sim-server``), over real sockets on
127.0.0.1: a stalled head or body is cut off (408, then close), an idle keep-alive connection
is closed, connections beyond the cap are closed on accept, a client vanishing mid-body is one
log line and no traceback, and the sim-server does not hold on to large bodies.

Timeouts are fractions of a second so the tests are quick. Every wait for the server's move is
bounded (``WAIT_S``, a socket timeout or a polling deadline) and fails the test when reached;
none is asserted as a speed."""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from moa_search.catalog import Catalog
from moa_search.cli import main
from moa_search.config import BUILTIN_PRESETS
from moa_search.errors import ConfigError
from moa_search.preset import from_builtin, write_preset
from moa_search.providers import sim_text
from moa_search.providers.simulated import SimulatedProvider
from moa_search.runner import Runner
from moa_search.server import create_server_app
from moa_search.serving import ConnectionLimits, listen, uvicorn_config
from moa_search.sim_server import MAX_BODY_BYTES, RECORDED_MAX_BYTES, SimServer
from tests.doubles import RecordingProvider
from tests.processes import wait_for_output
from tests.test_cli_usage import assert_usage_error
from tests.test_server import PRESET, ServerThread
from tests.test_sim_server import EchoProvider

REPO = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
WAIT_S = 10.0  # the longest a test waits for the server's move; never reached when it works
LONG = 60.0  # a limit the test is not about
PROBE = {"sim-server": "/health", "serve": "/v1/models"}  # a GET each server answers with 200


def limits(**given: float) -> ConnectionLimits:
    """Only the limit under test is short."""
    values = {"header_timeout_s": LONG, "body_timeout_s": LONG, "idle_timeout_s": LONG, **given}
    return ConnectionLimits(**values)  # type: ignore[arg-type]


class Running:
    """One of the two servers as its command runs it, on a free port, with the given limits."""

    def __init__(self, kind: str, connection_limits: ConnectionLimits, log_level: str):
        self.kind = kind
        self.sim: SimServer | None = None
        if kind == "sim-server":
            self.sim = SimServer(EchoProvider(), limits=connection_limits, log_level=log_level).start()
            self.port = self.sim.port
        else:
            app = create_server_app(PRESET, lambda: Runner(RecordingProvider()))
            self.thread = ServerThread(app, connection_limits, log_level=log_level).__enter__()
            self.port = self.thread.port

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()
        else:
            self.thread.__exit__()

    def requests_finished(self) -> bool:
        """No request handler is running (uvicorn's own task set)."""
        uv = self.sim._server if self.sim is not None else self.thread.server
        return uv is not None and not uv.server_state.tasks

    def probe(self) -> int | None:
        """The status of a GET on a fresh connection; None when the connection was refused."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{PROBE[self.kind]}", timeout=WAIT_S).status_code
        except httpx.TransportError:
            return None


@pytest.fixture(params=["sim-server", "serve"])
def start(request: pytest.FixtureRequest) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def _start(connection_limits: ConnectionLimits, log_level: str = "warning") -> Running:
        running.append(Running(request.param, connection_limits, log_level))
        return running[-1]

    yield _start
    for r in running:
        r.stop()


class Logs(logging.Handler):
    """Every log record of the process while attached: uvicorn's loggers (which do not
    propagate to the root) and all others (the root). Attach after the server started:
    uvicorn's logging setup replaces the handlers of its loggers."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "Logs":
        for name in ("uvicorn", ""):
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in ("uvicorn", ""):
            logging.getLogger(name).removeHandler(self)

    def lines(self) -> list[str]:
        return [self.format(r) for r in self.records if r.levelno >= logging.INFO]

    def tracebacks(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.exc_info]


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)


def head(content_length: int | None = None, *, method: str = "POST", path: str = CHAT) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_to_eof(s: socket.socket) -> bytes:
    """All the server sends until it closes (a server that never closes: ``socket.timeout``)."""
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:  # closed with our bytes unread: a close all the same
        pass
    return data


def read_response(s: socket.socket) -> tuple[bytes, bytes]:
    """One response (head, body) by its Content-Length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed before a response"
        data += chunk
    head_bytes, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head_bytes).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += s.recv(65536)
    return head_bytes, body


def trickle_until_closed(s: socket.socket, data: bytes, every_s: float = 0.05) -> tuple[bytes, int]:
    """Send ``data`` a byte at a time until the server closes the connection; what the server
    sent, and how many bytes went out. Fails if the server never closes."""
    received, sent = b"", 0
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if select.select([s], [], [], 0)[0]:
                chunk = s.recv(65536)
                if not chunk:
                    return received, sent
                received += chunk
                continue
            if sent < len(data):
                s.sendall(data[sent:sent + 1])
                sent += 1
        except (ConnectionResetError, BrokenPipeError):
            return received, sent
        time.sleep(every_s)
    raise AssertionError(f"the server did not close the connection within {WAIT_S} s")


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def until(condition: Callable[[], object]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "the server did not get there"
        time.sleep(0.02)


# ---- the request head ---------------------------------------------------------------------

def test_a_partial_head_gets_a_408_and_is_closed(start: Callable[..., Running]) -> None:
    server = start(limits(header_timeout_s=0.3))
    with connect(server.port) as s:
        s.sendall(head(10)[:30])  # the request line and half a header
        reply = read_to_eof(s)
    assert status_of(reply) == 408
    error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_timeout" and error["message"] == "request head not received within 0.3 s"


def test_a_silent_connection_is_closed_without_a_reply(start: Callable[..., Running]) -> None:
    server = start(limits(header_timeout_s=0.3))
    with connect(server.port) as s:
        assert read_to_eof(s) == b""


def test_a_head_sent_byte_by_byte_is_cut_off_before_it_reaches_the_app() -> None:
    """Slow loris: each byte comes well within the timeout, the whole head never does."""
    with SimServer(EchoProvider(), limits=limits(header_timeout_s=0.3), log_level="info") as server:
        with Logs() as logs, connect(server.port) as s:
            message = head(2) + b"{}"
            _, sent = trickle_until_closed(s, message)  # a byte / 0.05 s: the head would take > 4 s
            until(lambda: logs.lines())
        assert sent < len(message) - 2
        assert server.stats.requests == 0
        [line] = logs.lines()
        assert "request head not received within 0.3 s; connection closed" in line


def test_a_slow_app_is_not_a_slow_client() -> None:
    """The deadlines cover receiving the request, not answering it."""
    with SimServer(EchoProvider(), limits=limits(header_timeout_s=0.2, body_timeout_s=0.2),
                   latency_override_s=0.6) as server:
        r = httpx.post(f"{server.base_url}/chat/completions", timeout=WAIT_S,
                       json={"model": "test/small", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200


# ---- the request body ---------------------------------------------------------------------

def test_a_trickled_body_is_cut_off_and_logged_once(start: Callable[..., Running]) -> None:
    server = start(limits(body_timeout_s=0.3), log_level="info")
    with Logs() as logs, connect(server.port) as s:
        s.sendall(head(1000) + b"{")
        reply, _ = trickle_until_closed(s, b" " * 999)  # a byte / 0.05 s: 50 s for the body
        until(server.requests_finished)
    assert reply == b"" or status_of(reply) == 408  # the 408 is lost if our byte races the close
    [line] = logs.lines()
    assert "request body not received within 0.3 s (POST /v1/chat/completions); connection closed" in line
    assert not logs.tracebacks()
    if server.sim is not None:  # the handler saw the connection go and ended quietly
        assert server.sim.stats.completed == 0 and server.sim.stats.statuses == {499: 1}


def test_a_trickled_body_gets_the_408_when_the_client_waits() -> None:
    with SimServer(EchoProvider(), limits=limits(body_timeout_s=0.3)) as server, connect(server.port) as s:
        s.sendall(head(1000) + b"{" + b" " * 100)
        reply = read_to_eof(s)
    assert status_of(reply) == 408 and b"request body not received within 0.3 s" in reply


def test_the_body_deadline_holds_when_the_app_never_reads_the_body(start: Callable[..., Running]) -> None:
    """A POST to a GET-only route is answered (405) at once; the client trickling the body
    it announced is still cut off."""
    server = start(limits(body_timeout_s=0.3))
    with connect(server.port) as s:
        s.sendall(head(1000, path=PROBE[server.kind]) + b"{")
        first_head, _ = read_response(s)
        assert status_of(first_head) == 405
        trickle_until_closed(s, b" " * 999)


# ---- idle connections and the cap -------------------------------------------------------

def test_an_idle_keep_alive_connection_is_closed(start: Callable[..., Running]) -> None:
    """Waits at most 3 s, ten times the timeout: below uvicorn's own default of 5 s, so the
    option is what closes it."""
    server = start(limits(idle_timeout_s=0.3))
    with connect(server.port) as s:
        s.sendall(head(method="GET", path=PROBE[server.kind]))
        response_head, _ = read_response(s)
        assert status_of(response_head) == 200 and b"connection: close" not in response_head.lower()
        s.settimeout(3.0)
        assert read_to_eof(s) == b""  # closed by the server, with nothing more to say


def test_connections_beyond_the_cap_are_closed_on_accept(start: Callable[..., Running]) -> None:
    server = start(limits(max_connections=2), log_level="info")
    with Logs() as logs:
        held = [connect(server.port) for _ in range(2)]
        try:
            with connect(server.port) as third:
                assert read_to_eof(third) == b""
            assert server.probe() is None  # still full
            for s in held:  # the first two are open
                assert select.select([s], [], [], 0)[0] == []
            held.pop(0).close()
            until(lambda: server.probe() == 200)  # a slot came free
        finally:
            for s in held:
                s.close()
    warnings = [r for r in logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # refusals are warned about once per 10 s, not once each
    assert "2 connections open, the most allowed (--max-connections)" in warnings[0].getMessage()


# ---- a client disconnect mid-body ----------------------------------------------------------

def test_a_client_disconnect_mid_body_is_one_log_line_and_no_traceback(start: Callable[..., Running]) -> None:
    server = start(ConnectionLimits(), log_level="info")
    with Logs() as logs:
        with connect(server.port) as s:
            s.sendall(head(100_000) + b"{" + b" " * 1000)
        until(lambda: logs.lines())
        until(server.requests_finished)
    [line] = logs.lines()
    assert re.search(r"client 127\.0\.0\.1:\d+: the client closed the connection before sending the whole "
                     r"body of POST /v1/chat/completions$", line)
    assert not logs.tracebacks()
    if server.sim is not None:
        assert server.sim.stats.statuses == {499: 1}


# ---- bounded memory -------------------------------------------------------------------------

def test_the_sim_server_keeps_recent_bodies_within_a_byte_budget() -> None:
    pad = "x" * (MAX_BODY_BYTES - 100)  # ~1 MiB each: not chat requests (400), recorded all the same
    with SimServer(EchoProvider()) as server:
        for i in range(12):
            r = httpx.post(f"{server.base_url}/chat/completions", content=json.dumps({"i": i, "pad": pad}),
                           timeout=WAIT_S)
            assert r.status_code == 400
        recorded = server.recorded_requests
    assert 1 <= len(recorded) < 12 and len(recorded) * len(pad) <= RECORDED_MAX_BYTES
    assert [r.body["i"] for r in recorded] == list(range(12 - len(recorded), 12))  # the latest, in order


def test_the_simulated_world_does_not_cache_megabyte_prompts() -> None:
    """Its keyword cache held its keys: 4096 prompts of 1 MB each could stay in memory."""
    def ask(content: str) -> None:
        r = httpx.post(f"{server.base_url}/chat/completions", timeout=WAIT_S, json={
            "model": "Qwen/Qwen1.5-72B-Chat", "max_tokens": 16, "messages": [{"role": "user", "content": content}]})
        assert r.status_code == 200

    cached = sim_text._cached_keywords.cache_info
    with SimServer(SimulatedProvider(Catalog.default())) as server:
        before = cached().currsize
        for i in range(3):
            ask(f"question {i}: " + "explain the tradeoff carefully " * 30_000)  # ~0.9 MB
        after_big = cached().currsize
        ask(f"a short question {time.time_ns()}")
        after_small = cached().currsize
    assert after_big == before and after_small == before + 1


# ---- options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("given, field", [
    ({"header_timeout_s": 0}, "header_timeout_s"),
    ({"body_timeout_s": -1.0}, "body_timeout_s"),
    ({"idle_timeout_s": 7200}, "idle_timeout_s"),
    ({"max_connections": 0}, "max_connections"),
    ({"max_connections": 2.5}, "max_connections"),
])
def test_limits_out_of_range_name_the_field(given: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ConnectionLimits(**given)  # type: ignore[arg-type]


def test_the_default_cap_leaves_file_descriptors_for_the_rest() -> None:
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = ConnectionLimits().connection_cap()
    assert 1 <= cap <= 1024 and (soft == resource.RLIM_INFINITY or cap <= soft // 2)
    assert ConnectionLimits(max_connections=7).connection_cap() == 7


def test_uvicorn_config_needs_our_listener() -> None:
    plain = socket.socket()
    try:
        with pytest.raises(TypeError, match="serving.listen"):
            uvicorn_config(None, plain, ConnectionLimits())
    finally:
        plain.close()
    sock = listen("127.0.0.1", 0)
    try:
        config = uvicorn_config(None, sock, ConnectionLimits(idle_timeout_s=2.5))
    finally:
        sock.close()
    assert config.timeout_keep_alive == 2.5
    assert config.ws == "none"  # an upgraded connection would never give back its slot under the cap


@pytest.mark.parametrize("path, args, fragment", [
    ("sim-server", ["--header-timeout", "0"], "'--header-timeout'"),
    ("sim-server", ["--max-connections", "0"], "'--max-connections'"),
    ("serve", ["p.json", "--body-timeout", "-1"], "'--body-timeout'"),
    ("serve", ["p.json", "--idle-timeout", "4000"], "'--idle-timeout'"),
])
def test_out_of_range_limits_are_usage_errors(path: str, args: list[str], fragment: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main([path, *args])
    captured = capsys.readouterr()
    assert_usage_error(code, captured.out, captured.err, (path,))
    assert fragment in captured.err


@pytest.fixture
def preset_file(tmp_path: Path) -> Path:
    return write_preset(tmp_path / "moa-lite.json", from_builtin(BUILTIN_PRESETS["moa-lite"], Catalog.default()))


@pytest.mark.parametrize("command", [
    ["sim-server", "--port", "0", "--header-timeout", "0.3", "--max-connections", "50"],
    ["serve", "PRESET", "--backend", "sim", "--port", "0", "--header-timeout", "0.3", "--body-timeout", "5",
     "--idle-timeout", "5"],
], ids=["sim-server", "serve"])
def test_the_commands_take_the_options(command: list[str], preset_file: Path, tmp_path: Path) -> None:
    """``moa-search sim-server`` / ``serve`` as a user runs them: the address from the log, a
    partial head answered 408 after the given timeout, one log line for it."""
    argv = [str(preset_file) if a == "PRESET" else a for a in command]
    if argv[0] == "serve":
        argv += ["--store", str(tmp_path / "calls.db")]
    process = subprocess.Popen([sys.executable, "-m", "moa_search.cli", *argv], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = ""
    try:
        match, log = wait_for_output(process, r"on http://127\.0\.0\.1:(\d+)/v1")
        with connect(int(match.group(1))) as s:
            s.sendall(head(10)[:30])
            reply = read_to_eof(s)
        assert status_of(reply) == 408 and b"within 0.3 s" in reply
    finally:
        process.terminate()
        rest = process.communicate(timeout=30)[1]
    text = log + rest
    assert text.count("request head not received within 0.3 s") == 1 and "Traceback" not in text


def test_the_benchmark_runs(tmp_path: Path) -> None:
    """``benchmarks/server_limits.py`` (named in the README), with tiny numbers."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "server_limits.py"), "--servers", "sim-server",
                             "--n", "2", "--wait", "1", "--flood", "5", "--bodies", "2", "--every", "1",
                             "--disconnects", "1"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for phase in ("1. sim-server: stuck clients", "2. sim-server with RLIMIT_NOFILE", "3. sim-server memory",
                  "4. sim-server: 1 client disconnects mid-body -> 1 log lines"):
        assert phase in result.stdout, result.stdout
