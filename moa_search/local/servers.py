"""llama.cpp server processes: one per model on a loopback port, started, awaited, and stopped.

Why it looks like this:

* Each server runs in its own session (its own process group), so a Ctrl-C in the terminal
  reaches moa-search alone. moa-search then stops its servers itself — SIGTERM to the whole
  group, SIGKILL after a grace period — so a request in flight is not cut by the same keypress,
  and helper processes a server may have spawned go with it.
* No orphans, whatever happens to moa-search: on Linux every server asks the kernel for a
  SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), which covers a SIGKILLed parent; an
  ``atexit`` hook covers interpreter exits that skip ``finally`` blocks.
* "Ready" means ``GET /v1/models`` answers *and lists the model's alias*: a llama.cpp server
  answers a request for any model name with its default model and echoes the name back, so a
  name it does not serve has to be caught before the first request, not after it was paid.
* The launcher is ``python -m llama_cpp.server`` with this interpreter, or the command in
  ``$MOA_SEARCH_LLAMA_SERVER`` (how the tests put a fake server in its place). A launcher that
  cannot start (no ``llama_cpp``, a missing file, a taken port) exits early; its log's telling
  line becomes the error.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import httpx

from ..errors import MoASearchError

HOST = "127.0.0.1"
LAUNCHER_ENV = "MOA_SEARCH_LLAMA_SERVER"
DEFAULT_READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0
_PORT_ATTEMPTS = 3  # a free port can be taken between our probe and the server's bind


class LocalServerError(MoASearchError):
    """A local model server could not be started, or is not the server we need."""


@dataclass(frozen=True)
class ServerSpec:
    """What one server serves, and how: the alias is the model id it answers to."""

    alias: str
    gguf: Path
    n_ctx: int
    n_threads: int = 1
    chat_format: str | None = None

    def args(self, port: int) -> list[str]:
        """``llama_cpp.server`` flags; batch threads = threads (its default of 2 slows a busy box)."""
        out = ["--model", str(self.gguf), "--model_alias", self.alias, "--host", HOST, "--port", str(port),
               "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
               "--n_threads_batch", str(self.n_threads), "--verbose", "False"]
        if self.chat_format:
            out += ["--chat_format", self.chat_format]
        return out


@dataclass
class LocalServer:
    """A running server. ``owned``: this process started it and must stop it (else reused)."""

    spec: ServerSpec
    port: int
    pid: int
    owned: bool
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None
    ready_s: float = 0.0  # seconds from launch until it listed its model
    launcher: tuple[str, ...] = ()
    launched_at: float = 0.0  # time.monotonic() at launch

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"


def launcher_command() -> list[str]:
    """The command that starts a server, before the per-model flags."""
    custom = os.environ.get(LAUNCHER_ENV, "").strip()
    return shlex.split(custom) if custom else [sys.executable, "-m", "llama_cpp.server"]


# ---- ports ------------------------------------------------------------------------------------

def port_is_free(port: int) -> bool:
    """True if nothing listens on ``127.0.0.1:port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(taken: Iterable[int] = ()) -> int:
    """A port the kernel says is free now, not one of ``taken`` (handed out moments ago)."""
    avoid = set(taken)
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise LocalServerError("could not find a free TCP port on 127.0.0.1")


# ---- processes --------------------------------------------------------------------------------

def _prctl() -> "ctypes._FuncPointer | None":
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1
_LIVE: dict[int, LocalServer] = {}  # pid -> server this process started and has not stopped


def _die_with(parent_pid: int):
    """Runs in the child between fork and exec: SIGTERM me when my parent dies."""
    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    return setup


def _launch(spec: ServerSpec, port: int, launcher: Sequence[str], log_dir: Path) -> LocalServer:
    log_path = log_dir / f"{spec.alias}-{port}.log"
    with open(log_path, "wb") as log:
        try:
            process = subprocess.Popen([*launcher, *spec.args(port)], stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_die_with(os.getpid()))
        except OSError as exc:
            raise LocalServerError(f"cannot run the llama.cpp server launcher {launcher[0]!r}: "
                                   f"{exc.strerror or exc}") from None
    server = LocalServer(spec, port, process.pid, True, process, log_path, launcher=tuple(launcher),
                         launched_at=time.monotonic())
    _LIVE[process.pid] = server
    return server


def _telling_line(text: str) -> str:
    """The log line that says why a server stopped: the last one naming an error (a Python
    traceback ends with it; uvicorn logs a failed bind as ``ERROR: ... address already in use``)."""
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "ERROR" in line or "error" in line:
            return line
    return lines[-1] if lines else "it printed nothing"


def exit_message(server: LocalServer, code: int) -> str:
    """Why a server this process started has exited, in one line."""
    log = server.log_path.read_text("utf-8", "replace") if server.log_path and server.log_path.exists() else ""
    what = f"model {server.spec.alias!r} ({server.spec.gguf.name})"
    if "No module named 'llama_cpp" in log or "No module named llama_cpp" in log:
        return (f"cannot start the llama.cpp server for {what}: llama-cpp-python is not installed for "
                f"{' '.join(server.launcher[:1])} (install the 'local' extra; README, 'Local models')")
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = (" (a native llama.cpp build on a CPU that does not run all its instructions: rebuild "
                "with the portable flags in the README)" if -code == signal.SIGILL else "")
        return f"the llama.cpp server for {what} was killed by {name}{hint}"
    return f"the llama.cpp server for {what} exited (status {code}): {_telling_line(log)}"


def _listed_models(base_url: str, client: httpx.Client) -> list[str] | None:
    """The ids ``GET /v1/models`` lists, or None while the server is not answering yet."""
    try:
        response = client.get(f"{base_url}/models")
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    try:
        data = response.json().get("data", [])
        return [str(m.get("id")) for m in data if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return None


def check_serves(base_url: str, alias: str, *, timeout_s: float = 5.0) -> None:
    """Raise unless the server at ``base_url`` lists ``alias`` (reused servers are checked too)."""
    with httpx.Client(timeout=timeout_s) as client:
        listed = _listed_models(base_url, client)
    if listed is None:
        raise LocalServerError(f"no llama.cpp server answers at {base_url}")
    if alias not in listed:
        raise LocalServerError(f"the server at {base_url} lists {listed}, not {alias!r}: it would answer "
                               f"requests for {alias!r} with another model")


class _PortTaken(Exception):
    pass


def _wait_ready(server: LocalServer, deadline: float, client: httpx.Client) -> None:
    assert server.process is not None
    while True:
        code = server.process.poll()
        if code is not None:
            log = server.log_path.read_text("utf-8", "replace") if server.log_path else ""
            if "address already in use" in log:
                raise _PortTaken()
            raise LocalServerError(exit_message(server, code))
        listed = _listed_models(server.base_url, client)
        if listed is not None:
            if server.spec.alias not in listed:
                raise LocalServerError(
                    f"the server started for {server.spec.alias!r} at {server.base_url} lists {listed}: "
                    f"it would answer requests for {server.spec.alias!r} with another model")
            server.ready_s = time.monotonic() - server.launched_at
            return
        if time.monotonic() > deadline:
            log = server.log_path.read_text("utf-8", "replace") if server.log_path else ""
            raise LocalServerError(f"the llama.cpp server for {server.spec.alias!r} did not answer at "
                                   f"{server.base_url} in time (last log line: {_telling_line(log)})")
        time.sleep(0.05)


def start_servers(specs: Sequence[ServerSpec], log_dir: Path, *, ports: Sequence[int | None] | None = None,
                  launcher: Sequence[str] | None = None,
                  ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> list[LocalServer]:
    """Launch every server at once (they load in parallel), then wait for each to be ready.

    ``ports[i]`` fixes server i's port (refused at once if something listens there); None or a
    missing entry picks a free one, and a free port lost to a race is replaced up to
    ``_PORT_ATTEMPTS`` times. On any failure every server started here is stopped first.
    """
    launcher = list(launcher or launcher_command())
    wanted = list(ports or [])
    wanted += [None] * (len(specs) - len(wanted))
    for port in wanted:
        if port is not None and not port_is_free(port):
            raise LocalServerError(f"port {port} on {HOST} is in use by another process; choose another "
                                   "--port, or leave it out to use free ports")
    started: list[LocalServer] = []
    try:
        taken: list[int] = [p for p in wanted if p is not None]
        for spec, port in zip(specs, wanted):
            chosen = port if port is not None else free_port(taken)
            taken.append(chosen)
            started.append(_launch(spec, chosen, launcher, log_dir))
        deadline = time.monotonic() + ready_timeout_s
        with httpx.Client(timeout=2.0) as client:
            for i, (server, port) in enumerate(zip(list(started), wanted)):
                for attempt in range(_PORT_ATTEMPTS):
                    try:
                        _wait_ready(server, deadline, client)
                        break
                    except _PortTaken:
                        if port is not None or attempt == _PORT_ATTEMPTS - 1:
                            raise LocalServerError(f"port {server.port} on {HOST} is in use by another "
                                                   "process") from None
                        stop_server(server)
                        server = _launch(server.spec, free_port(taken), launcher, log_dir)
                        taken.append(server.port)
                        started[i] = server
    except BaseException:
        stop_servers(started)
        raise
    return started


def _exited_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait for the child to exit *without reaping it*: while it is a zombie its pid, and so its
    process group id, cannot be reused, so the SIGKILL to the group that follows is safe."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_server(server: LocalServer, grace_s: float = STOP_GRACE_S) -> None:
    """Stop a server this process started, and everything in its process group. Idempotent;
    a reused server (``owned`` false) is left running for whoever started it."""
    process = server.process
    if not server.owned or process is None:
        return
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGTERM)
        _exited_unreaped(process.pid, grace_s)
        _signal_group(process.pid, signal.SIGKILL)  # stragglers, or a leader that ignored SIGTERM
        process.wait()
    _LIVE.pop(process.pid, None)


def stop_servers(servers: Iterable[LocalServer]) -> None:
    for server in servers:
        stop_server(server)


@atexit.register
def _stop_leftovers() -> None:
    stop_servers(list(_LIVE.values()))


class ServerPool:
    """The servers one command uses, by alias: those it started (stopped by ``stop``) and those
    it found running (left alone). Logs of started servers go to a temporary folder unless a
    ``log_dir`` is given; the temporary folder goes when the pool stops."""

    def __init__(self, servers: Sequence[LocalServer] = (), log_dir: Path | None = None):
        self._tmp = None if log_dir is not None else tempfile.TemporaryDirectory(prefix="moa-search-llama-")
        self.log_dir = log_dir if log_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.servers: dict[str, LocalServer] = {s.spec.alias: s for s in servers}

    def start(self, specs: Sequence[ServerSpec], *, ports: Sequence[int | None] | None = None,
              launcher: Sequence[str] | None = None, ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        for server in start_servers(specs, self.log_dir, ports=ports, launcher=launcher,
                                    ready_timeout_s=ready_timeout_s):
            self.servers[server.spec.alias] = server

    def add_reused(self, server: LocalServer) -> None:
        self.servers[server.spec.alias] = server

    def dead(self) -> list[LocalServer]:
        """Started servers that have exited on their own."""
        return [s for s in self.servers.values() if s.process is not None and s.process.poll() is not None]

    def stop(self) -> None:
        stop_servers(list(self.servers.values()))
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "ServerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
