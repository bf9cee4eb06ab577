"""The ``moa-search`` command end to end: real store files, real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from moa_search.catalog import Catalog
from moa_search.cli import main
from moa_search.providers.simulated import SimulatedProvider
from moa_search.sim_server import FaultConfig, SimServer
from moa_search.store import CallStore

PROMPT = "Explain why the sky is blue."


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_preset_on_the_simulated_world_then_from_the_store(tmp_path, capsys):
    store = tmp_path / "calls.db"
    code, out, _ = run_cli(capsys, "run", "--preset", "moa", "--backend", "sim", "--prompt", PROMPT,
                           "--store", str(store))
    assert code == 0
    assert "[simulated answer" in out and "(simulated)" in out
    assert "calls 13 (0 from store, 0 failed)" in out  # 6 + 6 proposers + aggregator
    code, out2, _ = run_cli(capsys, "run", "--preset", "moa", "--backend", "sim", "--prompt", PROMPT,
                            "--store", str(store), "--json")
    second = json.loads(out2)
    assert second["cached_calls"] == 13 and second["paid_usd"] == 0 and second["cost_usd"] > 0
    assert second["answer"] in out


def test_run_over_http_matches_in_process_answer(tmp_path, capsys):
    world = SimulatedProvider(Catalog.default())
    with SimServer(world) as server:
        code, out, err = run_cli(capsys, "run", "--preset", "moa-lite", "--backend", "http", "--base-url",
                                 server.base_url, "--sim-endpoint", "--prompt", PROMPT, "--no-store", "--json")
    assert code == 0, err
    code, out_sim, _ = run_cli(capsys, "run", "--preset", "moa-lite", "--backend", "sim", "--prompt", PROMPT,
                               "--no-store", "--json")
    http_run, sim_run = json.loads(out), json.loads(out_sim)
    assert http_run["answer"] == sim_run["answer"]
    assert http_run["simulated"] is True and http_run["completion_tokens"] == sim_run["completion_tokens"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sim_server_command_serves_the_run_command(tmp_path):
    """Both commands as a user types them, in separate processes."""
    port = free_port()
    exe = [sys.executable, "-m", "moa_search.cli"]
    server = subprocess.Popen([*exe, "sim-server", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("sim-server did not come up")
        done = subprocess.run([*exe, "run", "--preset", "moa", "--backend", "http", "--base-url",
                               f"http://127.0.0.1:{port}/v1", "--prompt", PROMPT, "--store",
                               str(tmp_path / "calls.db")], capture_output=True, text=True, timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert done.returncode == 0, done.stderr
    assert "calls 13 (0 from store, 0 failed)" in done.stdout and "(simulated)" in done.stdout


# ---- bad input: one clear line, non-zero exit, store unharmed ---------------------------------

def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_malformed_config_file(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"aggregator": "gpt-4o-2024-05-13",\n "layers": [[}')
    code, _, err = run_cli(capsys, "run", "--config", str(cfg), "--prompt", PROMPT, "--no-store")
    assert_one_line_error(code, err, str(cfg), "line 2")


def test_unknown_model_in_config(tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('proposers = ["acme/unknown-7b"]\nlayers = 2\naggregator = "gpt-4o-2024-05-13"\n')
    code, _, err = run_cli(capsys, "run", "--config", str(cfg), "--prompt", PROMPT, "--no-store")
    assert_one_line_error(code, err, "unknown model 'acme/unknown-7b'")


def test_malformed_catalog(tmp_path, capsys):
    cat = tmp_path / "cat.toml"
    cat.write_text('[providers.p]\nbase_url = "http://x/v1"\n[models.m]\nprovider = "p"\ninput_price = "free"\n')
    code, _, err = run_cli(capsys, "run", "--preset", "moa", "--catalog", str(cat), "--prompt", PROMPT, "--no-store")
    assert_one_line_error(code, err, str(cat), "input_price")


def test_empty_prompt(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--preset", "moa-lite", "--prompt", "  ", "--store", str(tmp_path / "c.db"))
    assert_one_line_error(code, err, "empty prompt")


def test_unknown_preset_and_both_config_sources(capsys):
    code, _, err = run_cli(capsys, "run", "--preset", "nope", "--prompt", PROMPT, "--no-store")
    assert_one_line_error(code, err, "unknown preset 'nope'")
    code, _, err = run_cli(capsys, "run", "--prompt", PROMPT, "--no-store")
    assert_one_line_error(code, err, "--preset")


def store_state(path: Path) -> tuple[int, int]:
    with CallStore(path) as store:
        spend = store.spend()
        return spend.calls - spend.failed_calls, spend.cached_calls


def test_dead_endpoint_fails_the_item_and_leaves_the_store_usable(tmp_path, capsys):
    store = tmp_path / "calls.db"
    run_cli(capsys, "run", "--preset", "moa-lite", "--prompt", PROMPT, "--store", str(store))
    before = store_state(store)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = run_cli(capsys, "run", "--preset", "moa-lite", "--backend", "http", "--base-url", dead,
                           "--retries", "0", "--prompt", PROMPT, "--store", str(store))
    assert code == 1 and "item failed" in err and "cannot connect" in err and dead in err
    assert store_state(store) == before  # failures are logged, never cached as answers
    code, out, _ = run_cli(capsys, "run", "--preset", "moa-lite", "--prompt", PROMPT, "--store", str(store))
    assert code == 0 and "7 from store" in out


def test_401_names_the_endpoint_and_never_shows_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MY_TEST_KEY", "sk-wrong-secret-123")
    with SimServer(SimulatedProvider(Catalog.default()), require_api_key="sk-right") as server:
        code, out, err = run_cli(capsys, "run", "--preset", "moa-lite", "--backend", "http", "--base-url",
                                 server.base_url, "--api-key-env", "MY_TEST_KEY", "--prompt", PROMPT,
                                 "--store", str(tmp_path / "c.db"))
    assert code == 1 and "401" in err and server.base_url in err
    assert "sk-wrong-secret-123" not in err + out
    assert b"sk-wrong-secret-123" not in (tmp_path / "c.db").read_bytes()


def test_missing_key_variable_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NOT_SET_KEY_VAR", raising=False)
    with SimServer(SimulatedProvider(Catalog.default())) as server:
        code, _, err = run_cli(capsys, "run", "--preset", "moa-lite", "--backend", "http", "--base-url",
                               server.base_url, "--api-key-env", "NOT_SET_KEY_VAR", "--prompt", PROMPT,
                               "--no-store")
    assert code == 1 and "NOT_SET_KEY_VAR" in err


def test_reply_without_usage_is_an_error_not_a_free_call(tmp_path, capsys):
    faults = FaultConfig(script=("no_usage",) * 50)
    with SimServer(SimulatedProvider(Catalog.default()), faults=faults) as server:
        code, _, err = run_cli(capsys, "run", "--preset", "moa-lite", "--backend", "http", "--base-url",
                               server.base_url, "--retries", "0", "--prompt", PROMPT,
                               "--store", str(tmp_path / "c.db"))
    assert code == 1 and "usage" in err
    assert store_state(tmp_path / "c.db") == (0, 0)
