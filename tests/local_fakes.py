"""Helpers for the local-backend tests: a FAKE llama.cpp server (``fake_llama_server.py``) put in
place of ``python -m llama_cpp.server``, a tiny stand-in GGUF file, and a catalog naming it.

Everything else in those tests is real: processes, process groups, ports, HTTP over httpx,
SQLite call stores. The fake only replaces the model, which cannot run here in a unit test.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

FAKE_SERVER = Path(__file__).with_name("fake_llama_server.py")
FAKE_LAUNCHER = [sys.executable, str(FAKE_SERVER)]
LOCAL_MODEL = "smollm2-135m"  # the name the shipped local preset uses


def fake_gguf(folder: Path, name: str = "tiny.gguf") -> Path:
    """Not a model: the fake server only checks that the file exists."""
    path = folder / name
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def write_catalog(folder: Path, *, models: dict[str, dict[str, object]] | None = None) -> Path:
    """A local catalog with ``smollm2-135m`` (and ``other``) served from a fake GGUF file."""
    fake_gguf(folder)
    models = models or {LOCAL_MODEL: {"context_window": 1024, "max_tokens": 128},
                        "other": {"context_window": 1024, "max_tokens": 128, "chat_format": "chatml"}}
    lines = []
    for name, extra in models.items():
        lines += [f'[models."{name}"]', 'provider = "local"', 'gguf = "tiny.gguf"', "input_price = 0.0",
                  "output_price = 0.0"]
        for key, value in extra.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        lines.append("")
    path = folder / "local.toml"
    path.write_text("\n".join(lines))
    return path


def local_study(name: str, catalog: Path | str, *, n_items: int, trials: int, max_tokens: int) -> str:
    """A study file on the local backend: one model, Self-MoA or alone (the study engineer's shape)."""
    return f"""
[study]
name = "{name}"
seed = 1
backend = "local"

[catalog]
path = "{catalog}"

[data]
builtin = "math"
n_items = {n_items}

[scorer]
name = "numeric"

[space]
models = ["{LOCAL_MODEL}"]
aggregators = ["{LOCAL_MODEL}"]
layers = [1, 2]
proposers = [1, 3]
proposer_mode = "same"
temperatures = [0.7]
max_tokens = {max_tokens}

[objectives]
mode = "pareto"
metrics = ["quality", "latency"]

[budget]
trials = {trials}

[sampler]
name = "random"

[fidelity]
enabled = false
"""


def fake_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess (or monkeypatch) that launches the fake server and keeps
    its reuse state inside ``tmp_path``."""
    env = dict(os.environ)
    env["MOA_SEARCH_LLAMA_SERVER"] = shlex.join(FAKE_LAUNCHER)
    env["MOA_SEARCH_LOCAL_STATE"] = str(tmp_path / "state" / "servers.json")
    env.update(extra)
    return env


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """The pids still alive after waiting up to ``timeout_s`` for them to go."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def child_pid_from_log(log_path: Path, timeout_s: float = 5.0) -> int:
    """The helper process the fake server spawns with FAKE_LLAMA_CHILD=1."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if line.startswith("child pid "):
                return int(line.split()[-1])
        time.sleep(0.05)
    raise AssertionError(f"no child pid in {log_path}")
