"""``moa-search serve moa`` as a user runs it, backed by a real sim-server with latency, driven by
the official ``openai`` client: every part real (two processes' worth of HTTP on 127.0.0.1, the
CLI in a subprocess, a SQLite call store), nothing mocked.

The sim-server sleeps ``LATENCY_S`` per call and streams it spread over the tokens, so a
streamed answer's first token can only come after the proposer layers (a floor) and must come
before the aggregator's last token (an ordering): no wall-clock upper bound is asserted.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import openai
import pytest

from moa_search.catalog import Catalog
from moa_search.config import BUILTIN_PRESETS
from moa_search.providers.simulated import SimulatedProvider
from moa_search.sim_server import SimServer
from tests.processes import wait_for_output

LATENCY_S = 0.25
PRESET = BUILTIN_PRESETS["moa"].config  # 2 proposer layers of 6, then the aggregator
PROMPT = "Explain why the sky is blue."


class Served:
    def __init__(self, process: subprocess.Popen[str], base_url: str, store: Path, sim: SimServer):
        self.process, self.base_url, self.store, self.sim = process, base_url, store, sim

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=60)

    def aggregator_calls(self) -> list[tuple[float, int, int]]:
        """(paid_usd, cached, stored completion tokens) of every aggregator call logged, in order."""
        with sqlite3.connect(self.store) as db:
            return db.execute("SELECT c.paid_usd, c.cached, r.completion_tokens FROM calls AS c"
                              " JOIN responses AS r ON r.key = c.key"
                              " WHERE c.role = 'aggregator' ORDER BY c.id").fetchall()


def start_serve(argv: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """The command in a subprocess, and the URL it prints at startup."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    process = subprocess.Popen([sys.executable, "-m", "moa_search.cli", *argv], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        match, _ = wait_for_output(process, r"serving preset \S+ on (http://127\.0\.0\.1:\d+/v1)")
    except AssertionError as exc:
        process.kill()
        raise AssertionError(f"serve did not start: {exc}{process.communicate()[1]}") from None
    return process, match.group(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    store = tmp / "calls.db"
    with SimServer(SimulatedProvider(Catalog.default()), latency_override_s=LATENCY_S) as sim:
        process, url = start_serve(["serve", "moa", "--backend", "http", "--base-url", sim.base_url,
                                    "--sim-endpoint", "--port", "0", "--store", str(store)], tmp)
        try:
            yield Served(process, url, store, sim)
        finally:
            process.terminate()
            process.communicate(timeout=30)


def ask(**kw: object) -> dict[str, object]:
    return {"model": "moa", "messages": [{"role": "user", "content": PROMPT}], **kw}


def test_a_non_streamed_answer(served: Served) -> None:
    raw = served.client().chat.completions.with_raw_response.create(**ask())
    completion = raw.parse()
    assert completion.model == "moa" and completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert raw.headers["x-moa-simulated"] == "true" and raw.headers["x-moa-calls"] == "13"
    usage = completion.usage
    assert 0 < usage.completion_tokens < usage.prompt_tokens  # the answer, and the 12 drafts behind it
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_relays_the_aggregator_tokens_as_they_arrive(served: Served) -> None:
    before = len(served.aggregator_calls())
    started = time.perf_counter()
    arrivals: list[float] = []
    pieces: list[str] = []
    usage = None
    for chunk in served.client().chat.completions.create(**ask(), stream=True,
                                                         stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
            pieces.append(chunk.choices[0].delta.content)
    total = time.perf_counter() - started
    assert len(pieces) > 5  # token by token, not the answer in one piece
    first, last = arrivals[0], arrivals[-1]
    assert first >= 2 * LATENCY_S  # floor: the two proposer layers ran first
    assert first < last <= total  # the first token came before the aggregator's last one
    # the streamed call was stored and paid once, with the usage upstream reported
    assert usage is not None and usage.completion_tokens > 0
    [(paid_usd, cached, stored_tokens)] = served.aggregator_calls()[before:]
    assert cached == 0 and paid_usd > 0 and stored_tokens == usage.completion_tokens


def test_n_2_runs_the_mixture_twice(served: Served) -> None:
    completion = served.client().chat.completions.create(**ask(n=2))
    texts = [c.message.content for c in completion.choices]
    assert [c.index for c in completion.choices] == [0, 1] and all(texts) and texts[0] != texts[1]


def test_max_tokens_bounds_the_answer(served: Served) -> None:
    completion = served.client().chat.completions.create(**ask(max_tokens=5))
    assert completion.usage.completion_tokens <= 5
    assert completion.choices[0].finish_reason == "length"
    bounded = served.client().chat.completions.create(**ask(max_completion_tokens=3, seed=1))
    assert bounded.usage.completion_tokens <= 3


def test_stop_cuts_the_answer(served: Served) -> None:
    full = served.client().chat.completions.create(**ask(seed=11)).choices[0].message.content
    assert full is not None
    word = full.split()[len(full.split()) // 2]
    stopped = served.client().chat.completions.create(**ask(seed=11, stop=[word])).choices[0]
    assert stopped.finish_reason == "stop" and word not in stopped.message.content
    assert full.startswith(stopped.message.content) and len(stopped.message.content) < len(full)


def test_response_format_is_refused_with_a_400_naming_it(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        served.client().chat.completions.create(**ask(response_format={"type": "json_object"}))
    assert err.value.status_code == 400 and err.value.param == "response_format"
    assert "not supported" in err.value.message


def test_a_seeded_repeat_reproduces_from_the_store(served: Served) -> None:
    client = served.client()
    first = client.chat.completions.with_raw_response.create(**ask(seed=2024))
    again = client.chat.completions.with_raw_response.create(**ask(seed=2024))
    assert first.parse().choices[0].message.content == again.parse().choices[0].message.content
    assert again.headers["x-moa-cached-calls"] == again.headers["x-moa-calls"] == "13"  # paid once


def test_an_unseeded_repeat_samples_again(served: Served) -> None:
    client = served.client()
    first = client.chat.completions.with_raw_response.create(**ask())
    again = client.chat.completions.with_raw_response.create(**ask())
    assert first.parse().choices[0].message.content != again.parse().choices[0].message.content
    assert again.headers["x-moa-cached-calls"] == "0"


def test_serve_refuses_to_start_without_a_needed_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TOGETHER_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "moa_search.cli", "serve", "moa", "--port", "0",
                           "--store", str(tmp_path / "calls.db")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
    assert "TOGETHER_API_KEY is not set" in done.stderr
    assert not (tmp_path / "calls.db").exists()  # nothing left behind


def test_the_streaming_benchmark_runs() -> None:
    """``benchmarks/serve_stream.py`` (named in the README) prints its figures."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "serve_stream.py"), "--requests", "1",
                           "--latency-ms", "50"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"median: first token at \d+\.\d\d s of \d+\.\d\d s", done.stdout), done.stdout
