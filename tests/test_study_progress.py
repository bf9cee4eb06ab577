"""`study run` shows a bar of trials and, inside each trial, a bar of its items (items done,
calls, spend) on stderr; silent with --quiet and --json, whose stdout stays one JSON document."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.console import Console

from moa_search.progress import trial_progress
from moa_search.study import run_study_file

STUDY = """
[study]
name = "progress-check"
seed = 2
backend = "sim"

[data]
builtin = "math"
n_items = 6

[scorer]
name = "numeric"

[space]
models = ["mistralai/Mixtral-8x7B-Instruct-v0.1", "Qwen/Qwen1.5-72B-Chat"]
aggregators = ["Qwen/Qwen1.5-110B-Chat"]
layers = [1, 2]
proposers = [1, 2]

[objectives]
mode = "pareto"
metrics = ["quality", "cost"]

[budget]
trials = 2
usd = 1.0

[sampler]
name = "random"

[fidelity]
enabled = false
"""


def _study(tmp_path: Path) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(STUDY, encoding="utf-8")
    return path


def _run_captured(tmp_path: Path, show_after_s: float, quiet: bool = False) -> str:
    capture = io.StringIO()
    console = Console(file=capture, force_terminal=True, width=120, color_system=None)
    with trial_progress(2, quiet=quiet, console=console, show_after_s=show_after_s) as progress:
        run_study_file(_study(tmp_path), runs_dir=tmp_path / "runs", on_trial=progress,
                       progress=progress.items)
    return capture.getvalue()


def test_each_trial_draws_a_bar_of_its_items_with_calls_and_spend(tmp_path: Path) -> None:
    drawn = _run_captured(tmp_path, show_after_s=0)
    assert "trial   0" in drawn and "trial   1" in drawn  # the per-trial lines
    assert "trial 0 items" in drawn and "trial 1 items" in drawn
    assert "6/6" in drawn  # every item of a trial counted
    assert "cached) · paid $" in drawn and "calls " in drawn


def test_a_trial_faster_than_the_threshold_draws_no_item_bar(tmp_path: Path) -> None:
    drawn = _run_captured(tmp_path, show_after_s=3600)
    assert "trial   0" in drawn and "items" not in drawn


def test_quiet_draws_nothing(tmp_path: Path) -> None:
    assert _run_captured(tmp_path, show_after_s=0, quiet=True) == ""


def _cli_with_stderr_on_a_terminal(cwd: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """The real command with stderr on a pseudo-terminal (so rich would draw there) and stdout
    piped; returns the process and what reached the terminal."""
    main, child = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR")}
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # the child side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        done = subprocess.run([sys.executable, "-m", "moa_search.cli", *argv], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=child, text=True, timeout=300)
    finally:
        os.close(child)
        reader.join(timeout=10)
        os.close(main)
    return done, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
def test_json_and_quiet_keep_the_terminal_free_of_progress(tmp_path: Path, flag: str) -> None:
    _study(tmp_path)
    done, terminal = _cli_with_stderr_on_a_terminal(tmp_path, "study", "run", "study.toml", flag)
    assert done.returncode == 0, terminal
    assert "trial   0" not in terminal and "trials" not in terminal
    if flag == "--json":
        assert json.loads(done.stdout)["study"] == "progress-check"  # stdout is one JSON document


def test_without_flags_the_terminal_shows_the_trials(tmp_path: Path) -> None:
    _study(tmp_path)
    done, terminal = _cli_with_stderr_on_a_terminal(tmp_path, "study", "run", "study.toml")
    assert done.returncode == 0, terminal
    assert "trial   0" in terminal and "trial   0" not in done.stdout
