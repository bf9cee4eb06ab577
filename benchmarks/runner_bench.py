"""Runner benchmarks (issue 4), measured side by side in one run and printed, never asserted.

1. Overhead: MoA-Lite over HTTP against the sim-server with 0 ms latency, N items: calls/s through
   the runner (provider + retries + call store) vs raw httpx posting the same requests at the same
   concurrency against the same server.
2. Parallelism: every call takes 200 ms (real sleeps in the server): wall time per item vs the
   config's critical path (2 layers -> 400 ms).
3. Cache: the same run again through the same call store: $ paid and wall time as a ratio.

Usage: python benchmarks/runner_bench.py [--items 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx

from moa_search.catalog import Catalog
from moa_search.config import builtin_preset
from moa_search.prompts import agent_messages, user_prompt
from moa_search.providers.openai_compat import OpenAICompatProvider
from moa_search.runner import Runner
from moa_search.store import CallStore

CONCURRENT_ITEMS = 16


@contextlib.contextmanager
def sim_server(latency_ms: float = 0.0, *options: str) -> Iterator[str]:
    """``moa-search sim-server`` in its own process, so the server's CPU is not the client's;
    ``options`` are more of its flags (faults, ...). Yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moa_search.cli", "sim-server", "--port", str(port),
                             "--latency-ms", str(latency_ms), *options], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("sim-server did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def items(n: int, tag: str) -> list[tuple[str, tuple]]:
    return [(f"{tag}{i}", user_prompt(f"[{tag}] Benchmark question number {i}: explain topic {i}."))
            for i in range(n)]


async def run_config(base_url: str, store: CallStore | None, batch: list) -> tuple[float, list]:
    catalog = Catalog.default().with_base_url(base_url)
    provider = OpenAICompatProvider(catalog, max_concurrency_per_endpoint=64)
    runner = Runner(provider, store, max_concurrent_items=CONCURRENT_ITEMS)
    t0 = time.perf_counter()
    traces = await runner.run_items(builtin_preset("moa-lite").config, batch)
    elapsed = time.perf_counter() - t0
    await provider.aclose()
    return elapsed, traces


async def raw_httpx(base_url: str, payloads: list[dict]) -> float:
    """The same requests, no runner: a semaphore-bounded gather of bare posts."""
    gate = asyncio.Semaphore(CONCURRENT_ITEMS * 6)  # the runner's peak in-flight calls
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        async def post(body: dict) -> None:
            async with gate:
                r = await client.post(f"{base_url}/chat/completions", json=body)
                r.raise_for_status()
                r.json()
        t0 = time.perf_counter()
        await asyncio.gather(*(post(p) for p in payloads))
        return time.perf_counter() - t0


def payloads_of(config, batch: list, traces: list) -> list[dict]:
    """The exact bodies the runner sent, rebuilt from its traces (same prompts, same references),
    so the server does the same work for both sides of the comparison."""
    prompts = dict(batch)
    out = []
    for t in traces:
        references: list[str] = []
        for layer_index, layer in enumerate((*config.proposer_layers, (config.aggregator,))):
            calls = [c for c in t.calls if c.layer == layer_index]
            for agent, c in zip(layer, calls):
                messages = agent_messages(agent, prompts[t.item_id], references, config.prompt_template)
                out.append({"model": agent.model, "temperature": agent.temperature, "max_tokens": agent.max_tokens,
                            "messages": [m.to_dict() for m in messages]})
            references = [c.completion.text for c in calls if c.completion is not None]
    return out


async def main(n_items: int) -> None:
    print(f"moa_search runner benchmarks — simulated model world over loopback HTTP, {n_items} items, "
          f"MoA-Lite (7 calls/item), {CONCURRENT_ITEMS} items in flight\n")

    # 1. overhead at 0 ms latency
    with sim_server(0) as base_url, tempfile.TemporaryDirectory() as tmp:
        store = CallStore(Path(tmp) / "calls.db")
        t_runner, traces = await run_config(base_url, store, items(n_items, "o"))
        calls = sum(t.n_calls for t in traces)
        batch = items(n_items, "o")
        t_raw = await raw_httpx(base_url, payloads_of(builtin_preset("moa-lite").config, batch, traces))
        store.close()
    r_rate, raw_rate = calls / t_runner, calls / t_raw
    print("1. overhead (0 ms per call)")
    print(f"   runner + store : {calls} calls in {t_runner:.2f} s = {r_rate:,.0f} calls/s")
    print(f"   raw httpx      : {calls} calls in {t_raw:.2f} s = {raw_rate:,.0f} calls/s")
    print(f"   ratio runner/raw throughput = {r_rate / raw_rate:.2f} (1.00 = no overhead)\n")

    # 2. parallelism at 200 ms per call
    n_par = min(n_items, 64)
    with sim_server(200) as base_url:
        provider = OpenAICompatProvider(Catalog.default().with_base_url(base_url),
                                        max_concurrency_per_endpoint=64)
        runner = Runner(provider, None, max_concurrent_items=1)
        per_item = []
        for item_id, msgs in items(5, "p"):
            t0 = time.perf_counter()
            await runner.run_item(builtin_preset("moa-lite").config, msgs, item_id)
            per_item.append(time.perf_counter() - t0)
        await provider.aclose()
        critical = 0.2 * builtin_preset("moa-lite").config.n_layers
        t_batch, _ = await run_config(base_url, None, items(n_par, "q"))
    med = statistics.median(per_item)
    print("2. parallelism (200 ms per call, real sleeps)")
    print(f"   one item at a time: median wall {med * 1000:.0f} ms vs critical path {critical * 1000:.0f} ms "
          f"-> {100 * (med / critical - 1):+.1f} %")
    print(f"   {n_par} items, {CONCURRENT_ITEMS} in flight: {t_batch:.2f} s wall = "
          f"{t_batch / n_par * 1000:.0f} ms/item (ideal {critical * 1000 / CONCURRENT_ITEMS:.0f} ms/item)\n")

    # 3. cache: same run twice through one store
    with sim_server(20) as base_url, tempfile.TemporaryDirectory() as tmp:
        store = CallStore(Path(tmp) / "calls.db")
        batch = items(n_items, "c")
        t1, first = await run_config(base_url, store, batch)
        t2, second = await run_config(base_url, store, batch)
        store.close()
    paid1, paid2 = sum(t.paid_usd for t in first), sum(t.paid_usd for t in second)
    hits = sum(t.n_cached for t in second)
    total = sum(t.n_calls for t in second)
    print("3. cache (20 ms per call; simulated prices)")
    print(f"   first run : ${paid1:.4f} paid, {t1:.2f} s")
    print(f"   second run: ${paid2:.4f} paid, {t2:.2f} s, {hits}/{total} calls from the store")
    print(f"   wall time ratio second/first = {t2 / t1:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    asyncio.run(main(parser.parse_args().items))
