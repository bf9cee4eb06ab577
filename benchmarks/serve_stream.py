"""Time to first token vs total time of ``moa-search serve`` answers, printed, never asserted.

Three processes' worth of loopback HTTP, as a user runs them: a sim-server (this process, a
``SimServer`` thread) whose calls take the simulated world's own latency (``--latency-ms`` for
one fixed latency instead) and stream it spread over the tokens; ``moa-search serve PRESET
--backend http --base-url <sim> --sim-endpoint`` in a subprocess; and the official ``openai``
client here. Each request is unseeded, so each runs the whole mixture (nothing from the store).

For every request: time to the first content chunk (TTFT) and to the end of the stream, and the
same prompt asked without streaming (its first byte is its last: what every streamed answer
looked like before the aggregator's tokens were relayed). The figures are simulated latencies.

Usage: python benchmarks/serve_stream.py [--preset moa-lite] [--requests 5] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

from moa_search.catalog import Catalog
from moa_search.providers.simulated import SimulatedProvider
from moa_search.sim_server import SimServer


def start_serve(preset: str, sim_url: str, store: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "moa_search.cli", "serve", preset, "--backend", "http",
                                "--base-url", sim_url, "--sim-endpoint", "--port", "0", "--store", str(store)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 60
    while not (match := re.search(r" on (http://\S+/v1)", seen)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"serve did not start: {seen}{process.communicate()[1]}")
        if select.select([process.stderr], [], [], 0.2)[0]:  # the fd: readline() would buffer
            seen += os.read(process.stderr.fileno(), 65536).decode()  # type: ignore[union-attr]
    return process, match.group(1)


def streamed(client: openai.OpenAI, preset: str, prompt: str) -> tuple[float, float, int]:
    """(TTFT s, total s, content chunks) of one streamed answer."""
    started = time.perf_counter()
    first, chunks = None, 0
    for chunk in client.chat.completions.create(model=preset, messages=[{"role": "user", "content": prompt}],
                                                stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            first = first if first is not None else time.perf_counter() - started
    return first or float("nan"), time.perf_counter() - started, chunks


def whole(client: openai.OpenAI, preset: str, prompt: str) -> float:
    started = time.perf_counter()
    client.chat.completions.create(model=preset, messages=[{"role": "user", "content": prompt}])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="moa-lite", help="a built-in preset")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="one fixed latency per inner call (0: the simulated world's own)")
    args = parser.parse_args()
    override = args.latency_ms / 1000 if args.latency_ms > 0 else None
    sim = SimServer(SimulatedProvider(Catalog.default()), sleep_latency=True, latency_override_s=override)
    with sim, tempfile.TemporaryDirectory() as tmp:
        process, url = start_serve(args.preset, sim.base_url, Path(tmp) / "calls.db")
        try:
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
            rows = []
            for i in range(args.requests):
                prompt = f"Question {i}: explain one reason the sky is blue."
                rows.append((*streamed(client, args.preset, prompt), whole(client, args.preset, prompt)))
        finally:
            process.terminate()
            process.communicate(timeout=30)
    latency = "the simulated world's own" if override is None else f"{args.latency_ms:g} ms"
    print(f"serve {args.preset}, sim-server latency per call: {latency} (simulated), "
          f"{os.cpu_count()} CPUs")
    print(f"{'request':>7} {'TTFT s':>8} {'total s':>8} {'TTFT/total':>10} {'chunks':>6} {'unstreamed s':>12}")
    for i, (ttft, total, chunks, unstreamed) in enumerate(rows):
        print(f"{i:>7} {ttft:>8.2f} {total:>8.2f} {ttft / total:>10.0%} {chunks:>6} {unstreamed:>12.2f}")
    ttft_m, total_m = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    print(f"median: first token at {ttft_m:.2f} s of {total_m:.2f} s ({ttft_m / total_m:.0%}); "
          f"unstreamed first byte at {statistics.median(r[3] for r in rows):.2f} s")


if __name__ == "__main__":
    main()
