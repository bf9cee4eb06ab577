"""``--backend local`` and ``moa-search local serve`` through the real command, against the FAKE
llama.cpp server (``tests/fake_llama_server.py``): real processes, signals, ports, HTTP and
SQLite stores. Checks that every server a command starts is gone when it ends — normally, on an
error, on Ctrl-C, on SIGTERM, and (through the kernel) when moa-search itself is SIGKILLed.
"""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from moa_search.cli import main
from moa_search.config import LOCAL_PRESETS
from moa_search.local import servers as servers_mod
from moa_search.store import CallStore
from tests.local_fakes import LOCAL_MODEL, alive, fake_env, fake_gguf, local_study, wait_gone, write_catalog
from tests.test_cli import assert_one_line_error

CLI = [sys.executable, "-m", "moa_search.cli"]
PRESET = "local-self-moa"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """The fake server as launcher and a private state file, for in-process and child commands."""
    values = fake_env(tmp_path, FAKE_LLAMA_PID_FILE=str(tmp_path / "server-pids"))
    for key in ("MOA_SEARCH_LLAMA_SERVER", "MOA_SEARCH_LOCAL_STATE", "FAKE_LLAMA_PID_FILE"):
        monkeypatch.setenv(key, values[key])
    return values


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert not servers_mod._LIVE, "a command left a server running"
    return code, captured.out, captured.err


def server_pids(tmp_path: Path) -> list[int]:
    path = tmp_path / "server-pids"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


# ---- the commands ------------------------------------------------------------------------------

def test_run_eval_and_compare_start_and_stop_their_servers(tmp_path, env, capsys):
    cat, store = str(write_catalog(tmp_path)), str(tmp_path / "calls.db")
    code, out, err = cli(capsys, "run", "--backend", "local", "--catalog", cat, "--preset", PRESET,
                         "--prompt", "What is 2 + 3?", "--store", store)
    assert code == 0, err
    assert "calls 4 (0 from store, 0 failed)" in out and "simulated" not in out
    code, out, err = cli(capsys, "run", "--backend", "local", "--catalog", cat, "--preset", PRESET,
                         "--prompt", "What is 2 + 3?", "--store", store, "--json")
    assert code == 0 and json.loads(out)["cached_calls"] == 4
    code, out, err = cli(capsys, "eval", "--backend", "local", "--catalog", cat, "--preset", PRESET,
                         "--data", "math", "--scorer", "numeric", "--n-items", "3", "--store", store, "-q")
    assert code == 0, err
    assert "n=3/3 scored" in out and "(simulated)" not in out
    code, out, err = cli(capsys, "compare", LOCAL_MODEL, PRESET, "--backend", "local", "--catalog", cat,
                         "--data", "math", "--scorer", "numeric", "--n-items", "3", "--store", store, "-q")
    assert code == 0, err
    assert "A - B on 3 paired items" in out
    assert len(server_pids(tmp_path)) == 4  # one server per command (compare shares one for A and B)
    assert wait_gone(server_pids(tmp_path)) == []




def test_a_study_file_selects_the_local_backend(tmp_path, env, capsys):
    study = tmp_path / "study.toml"
    study.write_text(local_study("local-tiny", write_catalog(tmp_path), n_items=3, trials=3, max_tokens=64))
    code, out, err = cli(capsys, "study", "run", str(study), "--runs-dir", str(tmp_path / "runs"), "--json", "-q")
    assert code == 0, err
    result = json.loads(out)
    assert result["simulated"] is False
    assert [t for t in result["trials"] if t["status"] == "complete"]
    assert wait_gone(server_pids(tmp_path)) == []


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------

def test_a_missing_gguf(tmp_path, env, capsys):
    cat = write_catalog(tmp_path)
    (tmp_path / "tiny.gguf").unlink()
    code, _, err = cli(capsys, "run", "--backend", "local", "--catalog", str(cat), "--preset", PRESET,
                       "--prompt", "hi", "--store", str(tmp_path / "calls.db"))
    assert_one_line_error(code, err, f'models."{LOCAL_MODEL}".gguf: no such GGUF file')
    assert not (tmp_path / "calls.db").exists() and server_pids(tmp_path) == []


def test_a_build_without_llama_cpp(tmp_path, env, capsys, monkeypatch):
    """The real launcher on a real interpreter that cannot import llama_cpp (``-S``)."""
    monkeypatch.setenv("MOA_SEARCH_LLAMA_SERVER", f"{shlex.quote(sys.executable)} -S -m llama_cpp.server")
    code, _, err = cli(capsys, "eval", "--backend", "local", "--catalog", str(write_catalog(tmp_path)),
                       "--preset", PRESET, "--data", "math", "--scorer", "numeric", "--n-items", "3",
                       "--store", str(tmp_path / "calls.db"))
    assert_one_line_error(code, err, "llama-cpp-python is not installed", "install the 'local' extra")
    assert not (tmp_path / "calls.db").exists()


def test_a_model_name_the_server_does_not_have(tmp_path, env, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "ignore_alias")
    code, _, err = cli(capsys, "run", "--backend", "local", "--catalog", str(write_catalog(tmp_path)),
                       "--preset", PRESET, "--prompt", "hi", "--store", str(tmp_path / "calls.db"))
    assert_one_line_error(code, err, "lists ['default-model']", f"answer requests for '{LOCAL_MODEL}' with another model")
    assert not (tmp_path / "calls.db").exists()
    assert wait_gone(server_pids(tmp_path)) == []


def test_a_port_in_use(tmp_path, env, capsys):
    write_catalog(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code, _, err = cli(capsys, "local", "serve", "--gguf", f"{tmp_path / 'tiny.gguf'}={LOCAL_MODEL}",
                           "--port", str(port), "--catalog-out", str(tmp_path / "out.toml"))
    assert_one_line_error(code, err, f"port {port} on 127.0.0.1 is in use by another process")
    assert not (tmp_path / "out.toml").exists() and server_pids(tmp_path) == []


def test_a_prompt_past_the_context_window(tmp_path, env, capsys, monkeypatch):
    """The catalog's context_window is the server's n_ctx: a prompt that cannot fit is not sent."""
    monkeypatch.setenv("FAKE_LLAMA_REQUEST_LOG", str(tmp_path / "requests"))
    store = tmp_path / "calls.db"
    code, _, err = cli(capsys, "run", "--backend", "local", "--catalog", str(write_catalog(tmp_path)),
                       "--preset", PRESET, "--prompt", "word " * 2000, "--store", str(store))
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "> context_window 1,024; not sent" in err
    assert not (tmp_path / "requests").exists()  # the server saw nothing
    assert not store.exists() or CallStore(store).calls(limit=10) == []


def test_presets_of_the_paper_are_not_local(tmp_path, env, capsys):
    code, _, err = cli(capsys, "run", "--backend", "local", "--preset", "moa", "--prompt", "hi",
                       "--store", str(tmp_path / "calls.db"))
    assert_one_line_error(code, err, "unknown model", "<built-in local catalog>")
    assert not (tmp_path / "calls.db").exists()


# ---- local serve, reuse, and stopping on signals -------------------------------------------------

def start_local_serve(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`moa-search local serve` in its own process, read until it says how to use it. Without
    ``args`` it serves the fake GGUF file as smollm2-135m."""
    gguf = write_catalog(tmp_path).with_name("tiny.gguf")
    args = args or ("--gguf", f"{gguf}={LOCAL_MODEL}")
    proc = subprocess.Popen([*CLI, "local", "serve", *args, "--n-ctx", "1024"],
                            cwd=tmp_path, env={**env, "FAKE_LLAMA_REQUEST_LOG": str(tmp_path / "requests")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Ctrl-C stops"):
            return proc, lines
    proc.kill()
    raise AssertionError(f"local serve did not get ready: {lines} {proc.stderr.read()}")  # type: ignore[union-attr]


def printed_command(lines: list[str], start: str, naming: str = "") -> list[str]:
    [line] = [x.strip() for x in lines if x.strip().startswith(start) and naming in x]
    return shlex.split(line)


@pytest.mark.parametrize("sig, models_dir", [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["gguf-ctrl-c", "models-dir-sigterm"])
def test_local_serve_is_reused_by_its_printed_commands_and_stops_on_a_signal(tmp_path, env, sig, models_dir):
    folder = tmp_path / "models"
    if models_dir:  # two models, named after their files: the printed commands include a compare
        folder.mkdir()
        fake_gguf(folder, f"{LOCAL_MODEL}.gguf")
        fake_gguf(folder, "Other-Model.Q4.gguf")
    proc, lines = start_local_serve(tmp_path, env, *(["--models-dir", str(folder)] if models_dir else []))
    try:
        pids = server_pids(tmp_path)
        assert len(pids) == 1 + models_dir and Path(env["MOA_SEARCH_LOCAL_STATE"]).exists()
        run = printed_command(lines, "moa-search run")
        assert run[1:3] == ["run", "--backend"] and PRESET in run
        done = subprocess.run([*CLI, *run[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "calls 4 (0 from store, 0 failed)" in done.stdout
        # the served server answered (only it logs requests), and no other server was started
        assert len((tmp_path / "requests").read_text().splitlines()) == 4 and server_pids(tmp_path) == pids
        curl = printed_command(lines, "curl", f'"model": "{LOCAL_MODEL}"')
        reply = httpx.post(curl[2], json=json.loads(curl[-1]), timeout=10).json()
        assert reply["model"] == LOCAL_MODEL and reply["usage"]["completion_tokens"] > 0
        if models_dir:
            compare = printed_command(lines, "moa-search compare")
            assert sorted(compare[2:4]) == ["other-model.q4", LOCAL_MODEL]
            done = subprocess.run([*CLI, *compare[1:], "-q"], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0 and "A - B on 3 paired items" in done.stdout, done.stderr
            assert server_pids(tmp_path) == pids
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"stopping {len(pids)} server(s)" in out
    assert wait_gone(pids) == [] and not Path(env["MOA_SEARCH_LOCAL_STATE"]).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_servers_die_with_a_killed_moa_search(tmp_path, env):
    proc, _ = start_local_serve(tmp_path, env)
    pids = server_pids(tmp_path)
    assert pids and all(alive(p) for p in pids)
    proc.kill()  # SIGKILL: no finally, no atexit; the kernel tells the servers
    proc.wait(timeout=10)
    assert wait_gone(pids) == []


def test_ctrl_c_during_a_local_run_stops_its_servers(tmp_path, env):
    cat = write_catalog(tmp_path)
    proc = subprocess.Popen([*CLI, "run", "--backend", "local", "--catalog", str(cat), "--preset", PRESET,
                             "--prompt", "hi", "--store", str(tmp_path / "calls.db")],
                            env={**env, "FAKE_LLAMA_ANSWER_DELAY_S": "30"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not server_pids(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the server is answering its first (slow) request now
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert wait_gone(server_pids(tmp_path)) == []


def test_serve_a_preset_on_the_local_backend(tmp_path, env):
    from moa_search.backends import default_catalog
    from moa_search.preset import from_builtin, write_preset
    preset = write_preset(tmp_path / "p.json", from_builtin(LOCAL_PRESETS[PRESET], default_catalog("local")))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([*CLI, "serve", str(preset), "--backend", "local", "--catalog",
                             str(write_catalog(tmp_path)), "--port", str(port), "--store", str(tmp_path / "s.db")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, reply = time.monotonic() + 30, None
        while time.monotonic() < deadline and reply is None:
            try:
                reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                                   json={"model": PRESET, "messages": [{"role": "user", "content": "hi"}]})
            except httpx.TransportError:
                time.sleep(0.1)
        assert reply is not None and reply.status_code == 200, reply and reply.text
        assert "fake llama answer" in reply.json()["choices"][0]["message"]["content"]
        pids = server_pids(tmp_path)
        assert len(pids) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert wait_gone(pids) == []
