"""Connection limits of both HTTP servers (issue 11, item 8), printed, never asserted.

Each server runs as users run it: ``moa-search sim-server`` and ``moa-search serve PRESET.json
--backend sim`` as child processes (``python -m moa_search.cli``), with their default limits,
their stderr captured. This process plays the clients over raw sockets on 127.0.0.1.

1. Stuck clients: ``--n`` connections of each kind are opened and then left alone — *silent*
   (connect, send nothing), *partial headers* (half a request head), *trickled body* (headers
   announcing 1,000 bytes, then 1 byte a second) — and after ``--wait`` seconds the number the
   server closed is printed, with the median time it took.
2. A file-descriptor limit: the server is started with ``RLIMIT_NOFILE`` = ``--fd-limit`` (256)
   and ``--flood`` (350) partial-header connections are opened and held; then one normal request
   a second for ``--wait`` seconds: how many were answered, when the first one was.
3. Memory: ``moa-search sim-server``'s RSS (VmRSS from /proc/<pid>/status) while ``--bodies``
   chat requests of ~1 MB each are answered one after another.
4. Client disconnects mid-body: ``--disconnects`` requests announce 100 kB, send 1 kB and close;
   the lines the server wrote to stderr for them (and whether a traceback was among them).

For a before/after comparison, run it once with ``PYTHONPATH`` pointing at an older checkout
of the package (the child processes import whatever ``moa_search`` the environment gives).

Usage: python benchmarks/server_limits.py [--n 100] [--wait 40] [--bodies 300] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from serve_load import rss_mib  # this folder is on sys.path when a script in it runs

HOST = "127.0.0.1"
CHAT = "/v1/chat/completions"
PARTIAL_HEAD = f"POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Ty".encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def start(kind: str, workdir: Path, fd_limit: int | None = None) -> Server:
    """``moa-search sim-server`` or ``moa-search serve`` (the moa-lite preset, simulated backend)."""
    port = free_port()
    if kind == "sim-server":
        args = ["sim-server", "--port", str(port)]
        probe = "/health"
    else:
        from moa_search.catalog import Catalog
        from moa_search.config import BUILTIN_PRESETS
        from moa_search.preset import from_builtin, write_preset
        preset = write_preset(workdir / "moa-lite.json", from_builtin(BUILTIN_PRESETS["moa-lite"], Catalog.default()))
        args = ["serve", str(preset), "--backend", "sim", "--port", str(port), "--store", str(workdir / "calls.db")]
        probe = "/v1/models"

    def limit_fds() -> None:
        if fd_limit is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, hard))

    stderr_path = workdir / f"{kind}-{port}.log"
    with open(stderr_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moa_search.cli", *args], stdout=log, stderr=log,
                                   preexec_fn=limit_fds, cwd=workdir)
    server = Server(process, port, stderr_path)
    deadline = time.monotonic() + 60
    while True:
        try:
            if request(port, "GET", probe, timeout=2).startswith(b"HTTP/1.1 200"):
                return server
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop(server)
            raise RuntimeError(f"{kind} did not start:\n{server.stderr()}")
        time.sleep(0.1)


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def request(port: int, method: str, path: str, body: bytes = b"", timeout: float = 10) -> bytes:
    """One request on a fresh connection (``Connection: close``); the raw reply."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        s.sendall(head.encode() + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def chat_body(content: str) -> bytes:
    return json.dumps({"model": "Qwen/Qwen1.5-72B-Chat", "max_tokens": 16,
                       "messages": [{"role": "user", "content": content}]}).encode()


# ---- 1. stuck clients -------------------------------------------------------------------


def open_stuck(port: int, kind: str) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=10)
    s.setblocking(False)
    if kind == "partial headers":
        s.sendall(PARTIAL_HEAD)
    elif kind == "trickled body":
        s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n{{".encode())
    return s


def closed_by_server(s: socket.socket) -> bool:
    """True once the server has closed (EOF or reset); replies such as a 408 are read and dropped."""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def watch(conns: dict[str, list[socket.socket]], seconds: float, tick: Callable[[float], None]) -> dict[str, list[float]]:
    """Seconds until each connection was closed by the server (those still open are absent)."""
    t0 = time.monotonic()
    closed: dict[str, dict[int, float]] = {kind: {} for kind in conns}
    next_tick = 0.0
    while (now := time.monotonic() - t0) < seconds:
        if now >= next_tick:
            tick(now)
            next_tick += 1.0
        for kind, socks in conns.items():
            for i, s in enumerate(socks):
                if i not in closed[kind] and closed_by_server(s):
                    closed[kind][i] = now
        if all(len(closed[k]) == len(v) for k, v in conns.items()):
            break
        time.sleep(0.05)
    return {kind: sorted(times.values()) for kind, times in closed.items()}


def stuck_phase(kind: str, args: argparse.Namespace, workdir: Path) -> None:
    server = start(kind, workdir)
    kinds = ("silent", "partial headers", "trickled body")
    conns = {k: [open_stuck(server.port, k) for _ in range(args.n)] for k in kinds}

    def trickle(_: float) -> None:
        for s in conns["trickled body"]:
            try:
                s.send(b" ")
            except OSError:
                pass

    try:
        closed = watch(conns, args.wait, trickle)
    finally:
        for socks in conns.values():
            for s in socks:
                s.close()
        stop(server)
    print(f"1. {kind}: stuck clients, {args.n} of each kind, watched up to {args.wait:g} s")
    for k in kinds:
        times = closed[k]
        when = f", median after {statistics.median(times):.1f} s" if times else ""
        print(f"   {k:16}: {len(times):4d} of {args.n} closed by the server{when}")


# ---- 2. an fd limit ---------------------------------------------------------------------


def fd_phase(kind: str, args: argparse.Namespace, workdir: Path) -> None:
    server = start(kind, workdir, fd_limit=args.fd_limit)
    flood = []
    for _ in range(args.flood):
        try:
            flood.append(open_stuck(server.port, "partial headers"))
        except OSError:
            break
    probe, body = ("/health", b"") if kind == "sim-server" else ("/v1/models", b"")
    answered, first, refused, timed_out = 0, None, 0, 0
    t0 = time.monotonic()
    try:
        while (now := time.monotonic() - t0) < args.wait:
            try:
                if request(server.port, "GET", probe, body, timeout=1).startswith(b"HTTP/1.1 200"):
                    answered += 1
                    first = now if first is None else first
                else:
                    refused += 1
            except TimeoutError:
                timed_out += 1
            except OSError:
                refused += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - now)))
        tries = answered + refused + timed_out
        accept_errors = server.stderr().count("out of system resource")
    finally:
        for s in flood:
            s.close()
        stop(server)
    when = "never" if first is None else f"first after {first:.1f} s"
    print(f"2. {kind} with RLIMIT_NOFILE {args.fd_limit}: {len(flood)} partial-header connections held, "
          f"then 1 request/s for {args.wait:g} s")
    print(f"   {answered} of {tries} answered ({when}), {timed_out} timed out (1 s), {refused} refused/closed; "
          f"{accept_errors} 'accept() out of system resource' errors logged")


# ---- 3. memory --------------------------------------------------------------------------


def memory_phase(args: argparse.Namespace, workdir: Path) -> None:
    server = start("sim-server", workdir)
    pid = server.process.pid
    filler = ("lorem ipsum dolor sit amet " * 40_000)[:1_000_000]
    readings = [(0, rss_mib(pid))]
    statuses: dict[str, int] = {}
    try:
        for i in range(1, args.bodies + 1):
            reply = request(server.port, "POST", CHAT, chat_body(f"{i} {filler}"), timeout=60)
            status = reply[9:12].decode()
            statuses[status] = statuses.get(status, 0) + 1
            if i % args.every == 0 or i == args.bodies:
                readings.append((i, rss_mib(pid)))
    finally:
        stop(server)
    print(f"3. sim-server memory: {args.bodies} chat requests of {len(chat_body(filler)) / 1e6:.2f} MB, "
          f"statuses {statuses}")
    print("   RSS MiB: " + " | ".join(f"{n}: {mb:.0f}" for n, mb in readings) +
          f"  (growth {readings[-1][1] - readings[0][1]:+.0f} MiB)")


# ---- 4. client disconnects mid-body -----------------------------------------------------


def disconnect_phase(kind: str, args: argparse.Namespace, workdir: Path) -> None:
    server = start(kind, workdir)
    before = server.stderr()
    try:
        for _ in range(args.disconnects):
            with socket.create_connection((HOST, server.port), timeout=10) as s:
                s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: 100000\r\n\r\n".encode() + b"{" + b" " * 1000)
                time.sleep(0.1)
        time.sleep(1.0)
        log = server.stderr()[len(before):]
    finally:
        stop(server)
    lines = [line for line in log.splitlines() if line.strip()]
    print(f"4. {kind}: {args.disconnects} client disconnects mid-body -> {len(lines)} log lines "
          f"({len(lines) / args.disconnects:.1f} per disconnect), "
          f"{log.count('Traceback')} tracebacks")
    if lines:
        print(f"   e.g. {lines[-1][:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="connections of each stuck kind")
    parser.add_argument("--wait", type=float, default=40.0, help="seconds to watch (phases 1 and 2)")
    parser.add_argument("--fd-limit", type=int, default=256)
    parser.add_argument("--flood", type=int, default=350)
    parser.add_argument("--bodies", type=int, default=300, help="phase 3: 1 MB requests")
    parser.add_argument("--every", type=int, default=50, help="phase 3: RSS reading every N requests")
    parser.add_argument("--disconnects", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--servers", default="sim-server,serve", help="comma-separated: sim-server, serve")
    args = parser.parse_args()
    if min(args.n, args.fd_limit, args.flood, args.bodies, args.every, args.disconnects) < 1 or args.wait <= 0:
        parser.error("counts must be >= 1 and --wait > 0")
    import moa_search
    print(f"moa_search server-limits benchmark: moa_search from {Path(moa_search.__file__).parent}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    kinds = [k for k in args.servers.split(",") if k]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="moa-server-limits-") as tmp:
        workdir = Path(tmp)
        for kind in kinds:
            stuck_phase(kind, args, workdir)
        for kind in kinds:
            fd_phase(kind, args, workdir)
        if not args.skip_memory:
            memory_phase(args, workdir)
        for kind in kinds:
            disconnect_phase(kind, args, workdir)
    print(f"elapsed {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
