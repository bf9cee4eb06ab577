"""Load benchmark for ``moa_search.server`` (issue 6), printed, never asserted.

Three processes on loopback: the simulated model world (a ``SimServer``), the preset server
(``moa_search.server``'s app run by uvicorn as ``server.serve`` runs it: socket from
``server.listen``, same uvicorn settings, no call store, so every prompt is really run) and
this one, whose N concurrent ``httpx.AsyncClient`` clients post distinct prompts to
``/v1/chat/completions``. Separate processes keep the server's RSS its own and give each role
its own GIL. The server's provider is what ``moa-search serve --base-url`` builds: the preset's
catalog re-pointed at one endpoint (``with_base_url``), so every model shares one
``max_concurrency_per_endpoint`` (``--endpoint-concurrency``, default the provider's 16).

1. Latency: every inner call sleeps ``--latency-ms`` (100 ms) in the SimServer. Throughput,
   p50/p95 request latency vs the preset's critical path (layers x latency), errors; stops at
   ``--requests`` or ``--max-seconds``, whichever comes first.
1b. Nagle check: 1 client, 0 ms inner calls, the server's listening socket as ``server.listen``
   makes it vs one made with ``IPPROTO_TCP`` (asyncio sets TCP_NODELAY only on accepted sockets
   whose proto says TCP): per-request time outside the inner calls (latency - x-moa-latency-s).
2. Memory: a fresh server against a 0 ms SimServer, serving ``--memory-preset`` (default a
   2-call MoA, so 10,000 requests fit in the budget on a shared 2-CPU box): the server's RSS
   (VmRSS from /proc/<pid>/status, read while nothing is in flight) after warm-up and after
   1,000, 5,000 and 10,000 requests; growth per 1,000 requests; "POSSIBLE LEAK" when the last
   5,000 requests grew it by more than ``--leak-mb``.

Usage: python benchmarks/serve_load.py [--clients 16] [--requests 500] [--max-seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

HOST = "127.0.0.1"
MEMORY_CHECKPOINTS = (1_000, 5_000, 10_000)
MINI = "moa-mini"  # 1 proposer + aggregator: the same server/runner/provider path, 2 calls a request


def build_preset(name: str) -> Any:
    """A built-in preset by name, or ``moa-mini`` (MoA-Lite's shape with one proposer)."""
    from moa_search.catalog import Catalog
    from moa_search.config import PAPER_PROPOSERS, MoAConfig, builtin_preset
    from moa_search.preset import from_builtin, from_config

    if name == MINI:
        config = MoAConfig.uniform(PAPER_PROPOSERS[:1], "Qwen/Qwen1.5-72B-Chat", layers=2)
        return from_config(MINI, config, Catalog.default(), description="benchmark: 1 proposer, 2 layers")
    return from_builtin(builtin_preset(name), Catalog.default())


# ---- the two server processes (spawned: module-level targets, imports inside) --------------


def _sim_process(latency_s: float, conn: Any) -> None:
    """The simulated model world behind a SimServer; sends its base URL, then its stats on stop."""
    from moa_search.catalog import Catalog
    from moa_search.providers.simulated import SimulatedProvider
    from moa_search.sim_server import SimServer

    server = SimServer(SimulatedProvider(Catalog.default()), host=HOST, port=0,
                       latency_override_s=latency_s).start()
    conn.send(server.base_url)
    try:
        conn.recv()  # any message (or the parent going away) = stop
    except EOFError:
        pass
    stats = server.stats
    server.stop()
    conn.send({"completed": stats.completed, "max_in_flight": stats.max_in_flight})


def _serve_process(preset_name: str, sim_base_url: str, endpoint_concurrency: int, tcp_nodelay: bool,
                   conn: Any) -> None:
    """``moa_search.server`` serving ``preset_name``, run as ``server.serve`` runs it, on port 0."""
    import logging

    import uvicorn

    from moa_search.preset import preset_catalog
    from moa_search.providers.openai_compat import OpenAICompatProvider
    from moa_search.runner import Runner
    from moa_search.server import create_server_app, listen
    from moa_search.serving import ConnectionLimits, uvicorn_config

    logging.basicConfig(level=logging.WARNING)
    preset = build_preset(preset_name)
    provider = OpenAICompatProvider(preset_catalog(preset).with_base_url(sim_base_url),
                                    send_sample_index=True,
                                    max_concurrency_per_endpoint=endpoint_concurrency)
    # server.serve's own factory, without a call store: distinct prompts, nothing cached.
    app = create_server_app(preset, lambda: Runner(provider, None, run_id=f"serve:{preset.name}"))
    if tcp_nodelay:  # diagnostic (1b) only: a plain IPPROTO_TCP socket, uvicorn's own settings
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        sock.listen(2048)
        config = uvicorn.Config(app, host=HOST, port=sock.getsockname()[1], log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=5)
    else:  # what server.serve uses: its socket, its uvicorn settings and connection limits
        sock = listen(HOST, 0)
        config = uvicorn_config(app, sock, ConnectionLimits(), log_level="warning", timeout_graceful_shutdown=5)
    port = sock.getsockname()[1]
    conn.send(port)
    uvicorn.Server(config).run(sockets=[sock])  # SIGTERM from the parent ends it gracefully


@dataclass
class Proc:
    process: Any
    conn: Any
    address: str


def _spawn(ctx: Any, target: Any, args: tuple, name: str) -> tuple[Any, Any, Any]:
    parent, child = ctx.Pipe()
    p = ctx.Process(target=target, args=(*args, child), name=name, daemon=True)
    p.start()
    deadline = time.monotonic() + 60
    while not parent.poll(0.1):
        if not p.is_alive() or time.monotonic() > deadline:
            p.kill()
            raise RuntimeError(f"{name} process did not start")
    return p, parent, parent.recv()


def start_sim(ctx: Any, latency_s: float) -> Proc:
    p, conn, url = _spawn(ctx, _sim_process, (latency_s,), "sim-server")
    return Proc(p, conn, url)


def stop_sim(proc: Proc) -> dict[str, Any]:
    proc.conn.send("stop")
    stats = proc.conn.recv() if proc.conn.poll(15) else {}
    proc.process.join(10)
    if proc.process.is_alive():
        proc.process.kill()
        proc.process.join()
    return stats


def start_preset_server(ctx: Any, preset: str, sim_url: str, endpoint_concurrency: int,
                        tcp_nodelay: bool = False) -> Proc:
    p, conn, port = _spawn(ctx, _serve_process, (preset, sim_url, endpoint_concurrency, tcp_nodelay),
                           "moa-server")
    url = f"http://{HOST}:{port}/v1"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/models", timeout=1).raise_for_status()
            return Proc(p, conn, url)
        except httpx.TransportError:
            if time.monotonic() > deadline or not p.is_alive():
                p.kill()
                raise RuntimeError("preset server did not answer /v1/models")
            time.sleep(0.05)


def stop_preset_server(proc: Proc) -> None:
    proc.process.terminate()  # SIGTERM: uvicorn shuts down, the app's lifespan closes the provider
    proc.process.join(15)
    if proc.process.is_alive():
        proc.process.kill()
        proc.process.join()


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB, from /proc (no psutil)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


# ---- the clients ---------------------------------------------------------------------------


@dataclass
class LoadResult:
    done: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    inner_s: list[float] = field(default_factory=list)  # x-moa-latency-s of each 200
    outside_s: list[float] = field(default_factory=list)  # latency - x-moa-latency-s
    errors: dict[str, int] = field(default_factory=dict)
    stopped_by: str = "requests"

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())


async def run_load(client: httpx.AsyncClient, url: str, model: str, n_requests: int, clients: int,
                   max_seconds: float, tag: str) -> LoadResult:
    """``clients`` loops posting distinct prompts until ``n_requests`` are sent or time is up."""
    result = LoadResult()
    issued = 0
    t0 = time.perf_counter()
    deadline = t0 + max_seconds

    async def one_client() -> None:
        nonlocal issued
        while issued < n_requests:
            if time.perf_counter() >= deadline:
                result.stopped_by = "time"
                return
            i = issued
            issued += 1
            body = {"model": model, "messages": [
                {"role": "user", "content": f"[{tag}-{i}] Load test question {i}: explain topic {i} briefly."}]}
            started = time.perf_counter()
            inner = None
            try:
                r = await client.post(f"{url}/chat/completions", json=body)
                if r.status_code != 200:
                    kind: str | None = f"HTTP {r.status_code}"
                elif not isinstance(r.json()["choices"][0]["message"]["content"], str):
                    kind = "bad body"
                else:
                    kind = None
                    inner = float(r.headers["x-moa-latency-s"])
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
                kind = type(exc).__name__
            elapsed = time.perf_counter() - started
            result.latencies.append(elapsed)
            result.done += 1
            if inner is not None:
                result.inner_s.append(inner)
                result.outside_s.append(elapsed - inner)
            if kind is not None:
                result.errors[kind] = result.errors.get(kind, 0) + 1

    await asyncio.gather(*(one_client() for _ in range(clients)))
    result.wall_s = time.perf_counter() - t0
    return result


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def errors_text(r: LoadResult) -> str:
    if not r.errors:
        return "0 errors"
    return f"{r.n_errors} errors (" + ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) + ")"


def new_client(clients: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients,
                                                              max_keepalive_connections=clients))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# ---- phases --------------------------------------------------------------------------------


async def latency_phase(ctx: Any, args: argparse.Namespace) -> None:
    config = build_preset(args.preset).config
    per_call = args.latency_ms / 1000
    critical = config.n_layers * per_call
    calls = sum(len(layer) for layer in config.proposer_layers) + 1
    sim = start_sim(ctx, per_call)
    server = start_preset_server(ctx, args.preset, sim.address, args.endpoint_concurrency)
    try:
        async with new_client(args.clients) as client:
            await run_load(client, server.address, args.preset, 2 * args.clients, args.clients, 30, "warm")
            cpu0 = cpu_s(server.process.pid)
            r = await run_load(client, server.address, args.preset, args.requests, args.clients,
                               args.max_seconds, f"lat-{uuid.uuid4().hex[:8]}")
            cpu1 = cpu_s(server.process.pid)
        rss = rss_mib(server.process.pid)
    finally:
        stop_preset_server(server)
        stats = stop_sim(sim)
    p50, p95 = pct(r.latencies, 50), pct(r.latencies, 95)
    bound = args.endpoint_concurrency / (calls * per_call)
    print(f"1. latency/throughput: {args.preset} ({calls} calls/request), {args.clients} clients, "
          f"{args.latency_ms:g} ms per inner call")
    print(f"   {r.done} requests in {r.wall_s:.1f} s (stopped by {r.stopped_by}) = {r.done / r.wall_s:.1f} req/s, "
          f"{errors_text(r)}")
    print(f"   latency p50 {ms(p50)}, p95 {ms(p95)}, max {ms(max(r.latencies))} vs critical path "
          f"{config.n_layers} layers x {args.latency_ms:g} ms = {ms(critical)} (p50 {p50 / critical:.1f}x)")
    if r.inner_s:
        print(f"   server-reported path (x-moa-latency-s; endpoint queueing excluded) p50 "
              f"{ms(statistics.median(r.inner_s))}; rest of each request p50 {ms(statistics.median(r.outside_s))}")
    print(f"   sim-server: {stats.get('completed', '?')} inner calls, max {stats.get('max_in_flight', '?')} in "
          f"flight; endpoint cap {args.endpoint_concurrency} -> <= {bound:.1f} req/s; server "
          f"{1000 * (cpu1 - cpu0) / max(r.done, 1):.0f} ms CPU/request, RSS {rss:.1f} MiB")


async def nagle_phase(ctx: Any, args: argparse.Namespace) -> None:
    sim = start_sim(ctx, 0.0)
    rows = []
    try:
        for nodelay in (False, True):
            server = start_preset_server(ctx, args.preset, sim.address, args.endpoint_concurrency, nodelay)
            try:
                async with new_client(1) as client:
                    await run_load(client, server.address, args.preset, 10, 1, 30, "nwarm")
                    r = await run_load(client, server.address, args.preset, args.nagle_requests, 1,
                                       args.max_seconds, f"nagle-{nodelay}-{uuid.uuid4().hex[:8]}")
            finally:
                stop_preset_server(server)
            rows.append((nodelay, r))
    finally:
        stop_sim(sim)
    print(f"1b. Nagle check: 1 client, 0 ms inner calls, {args.nagle_requests} requests per socket kind")
    for nodelay, r in rows:
        what = "IPPROTO_TCP socket (TCP_NODELAY)" if nodelay else "server.listen socket (as served)"
        print(f"   {what:33}: p50 {ms(statistics.median(r.latencies))}, outside the inner calls p50 "
              f"{ms(statistics.median(r.outside_s)) if r.outside_s else 'n/a'}, {errors_text(r)}")


async def memory_phase(ctx: Any, args: argparse.Namespace) -> None:
    preset = args.memory_preset
    sim = start_sim(ctx, 0.0)
    server = start_preset_server(ctx, preset, sim.address, args.endpoint_concurrency)
    pid = server.process.pid
    readings: list[tuple[int, float]] = []
    errors = 0
    stopped = ""
    t0 = time.perf_counter()
    try:
        async with new_client(args.clients) as client:
            await run_load(client, server.address, preset, args.warmup, args.clients, 60, "mwarm")
            readings.append((0, rss_mib(pid)))
            tag = f"mem-{uuid.uuid4().hex[:8]}"
            done = 0
            for checkpoint in MEMORY_CHECKPOINTS:
                left = args.memory_max_seconds - (time.perf_counter() - t0)
                r = await run_load(client, server.address, preset, checkpoint - done, args.clients,
                                   max(left, 0.0), f"{tag}-{checkpoint}")
                done += r.done
                errors += r.n_errors
                readings.append((done, rss_mib(pid)))
                if r.stopped_by == "time":
                    stopped = f"; time limit {args.memory_max_seconds:g} s reached at {done} requests"
                    break
        cpu = cpu_s(pid)
    finally:
        wall = time.perf_counter() - t0
        stop_preset_server(server)
        stats = stop_sim(sim)
    total, base = readings[-1][0], readings[0][1]
    print(f"2. memory: server RSS (VmRSS of pid {pid}), {preset}, 0 ms inner calls, {args.clients} clients{stopped}")
    print(f"   {total} requests (+{args.warmup} warm-up) in {wall:.1f} s = {(total + args.warmup) / wall:.0f} "
          f"req/s, {errors} errors, sim-server {stats.get('completed', '?')} inner calls, server CPU {cpu:.0f} s")
    print(f"   after warm-up: {base:.1f} MiB | " +
          " | ".join(f"{n:,}: {mb:.1f} MiB ({mb - base:+.1f})" for n, mb in readings[1:]))
    if total == 0:
        return
    line = f"   growth per 1,000 requests: {1000 * (readings[-1][1] - base) / total:+.2f} MiB overall"
    at5k = [mb for n, mb in readings if n == MEMORY_CHECKPOINTS[1]]
    at1k = [mb for n, mb in readings if n == MEMORY_CHECKPOINTS[0]]
    if at5k and total == MEMORY_CHECKPOINTS[-1]:
        last, span = readings[-1][1] - at5k[0], "over the last 5,000"
    elif at1k and total >= 2 * MEMORY_CHECKPOINTS[0]:  # time ran out: extrapolate from 1,000 on
        last = (readings[-1][1] - at1k[0]) * 5_000 / (total - MEMORY_CHECKPOINTS[0])
        span = f"per 5,000 extrapolated from 1,000..{total:,} (10,000 not reached)"
    else:
        print(line + " (too few requests for a leak verdict)")
        return
    verdict = (f"POSSIBLE LEAK (> {args.leak_mb:g} MiB)" if last > args.leak_mb
               else f"no leak signal (bound {args.leak_mb:g} MiB)")
    line += f", {last / 5:+.2f} MiB/1,000 {span} ({last:+.1f} MiB) -> {verdict}"
    print(line)


async def main(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    print(f"moa_search serve-load benchmark — moa_search.server over loopback HTTP, simulated world "
          f"(SimServer, own process), no call store, distinct prompts")
    print(f"   params: --clients {args.clients} --requests {args.requests} --max-seconds {args.max_seconds:g} "
          f"--latency-ms {args.latency_ms:g} --endpoint-concurrency {args.endpoint_concurrency} --preset "
          f"{args.preset} --memory-preset {args.memory_preset} --warmup {args.warmup} --memory-max-seconds "
          f"{args.memory_max_seconds:g} --leak-mb {args.leak_mb:g}")
    print(f"   python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {loadavg()} at start")
    if not args.skip_latency:
        await latency_phase(ctx, args)
    if args.nagle_requests > 0 and not args.skip_latency:
        await nagle_phase(ctx, args)
    if not args.skip_memory:
        await memory_phase(ctx, args)
    print(f"elapsed {time.perf_counter() - t0:.1f} s, load average {loadavg()} at end")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=500, help="phase 1 requests")
    parser.add_argument("--max-seconds", type=float, default=40.0, help="phase 1 (and 1b) time limit")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="phase 1 inner-call latency")
    parser.add_argument("--preset", default="moa-lite", help="phase 1/1b preset (built-in name)")
    parser.add_argument("--endpoint-concurrency", type=int, default=16,
                        help="the server provider's max_concurrency_per_endpoint (16 = as `serve`)")
    parser.add_argument("--nagle-requests", type=int, default=100, help="phase 1b requests (0 = skip)")
    parser.add_argument("--memory-preset", default=MINI, help=f"phase 2 preset ({MINI} or a built-in)")
    parser.add_argument("--warmup", type=int, default=200, help="phase 2 warm-up requests")
    parser.add_argument("--memory-max-seconds", type=float, default=190.0, help="phase 2 time limit")
    parser.add_argument("--leak-mb", type=float, default=20.0)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-latency", action="store_true", help="skip phases 1 and 1b")
    a = parser.parse_args()
    if min(a.clients, a.requests, a.endpoint_concurrency, a.warmup) < 1 or a.nagle_requests < 0:
        parser.error("--clients, --requests, --endpoint-concurrency and --warmup must be >= 1")
    asyncio.run(main(a))
