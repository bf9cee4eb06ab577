"""The CLI's tables fit 80 columns without losing a column, and ``--wide`` cuts nothing.

A real study (simulated backend, a real Optuna SQLite storage and call store in a temporary
folder) is run once by the installed command in a subprocess, so the console width is decided
as a user's pipe decides it: no terminal and no ``COLUMNS`` means 80. Its configs are all
two-layer mixtures of long model names and its name is long, so the config summaries and the
run ids that ``calls --run`` filters on are longer than any 80-column cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NAME = "terminal-width-check-with-a-study-name-long-enough-to-wrap"
STUDY = f"""
[study]
name = "{NAME}"
seed = 5
backend = "sim"

[data]
builtin = "math"
n_items = 6

[scorer]
name = "numeric"

[space]
models = ["mistralai/Mixtral-8x7B-Instruct-v0.1", "microsoft/WizardLM-2-8x22B", "Qwen/Qwen1.5-72B-Chat"]
aggregators = ["Qwen/Qwen1.5-110B-Chat"]
layers = 2
proposers = 2
proposer_mode = "distinct"

[objectives]
mode = "pareto"
metrics = ["quality", "cost"]

[budget]
trials = 4
usd = 2.0

[sampler]
name = "random"

[fidelity]
enabled = false
"""
STUDY_HEADERS = ("trial", "config", "quality % [95% CI]", "$/item", "p50 s", "p95 s", "n")
CALLS_HEADERS = ("id", "time", "model", "role", "run", "item", "cached", "paid $", "list $", "latency s",
                 "error")


def moa(cwd: Path, *argv: str, columns: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, output piped; ``COLUMNS`` removed unless ``columns`` is given."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    return subprocess.run([sys.executable, "-m", "moa_search.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A folder holding ``studies/NAME.toml`` and its ``runs/NAME/``; the run's stdout."""
    root = tmp_path_factory.mktemp("width")
    (root / "studies").mkdir()
    (root / "studies" / f"{NAME}.toml").write_text(STUDY, encoding="utf-8")
    done = moa(root, "study", "run", f"studies/{NAME}.toml", "-q")
    assert done.returncode == 0, done.stderr
    return root, done.stdout


def header_and_body(text: str) -> tuple[str, list[str]]:
    """The lines above the table's rule (title and headers) joined, and the lines below it."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    return "\n".join(lines[:rule]), lines[rule + 1:]


def assert_fits(text: str, width: int = 80) -> None:
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert not too_wide, f"{len(too_wide)} lines over {width} columns, e.g. {too_wide[0]!r}"
    assert "…" not in text  # nothing cut: rich marks a cut cell with an ellipsis


def front(root: Path) -> list[dict[str, object]]:
    done = moa(root, "study", "show", f"studies/{NAME}.toml", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["pareto_front"]


@pytest.mark.parametrize("columns", [None, "80"])
def test_study_tables_fit_80_columns_with_every_column_and_whole_numbers(ran, columns):
    root, run_out = ran
    show = moa(root, "study", "show", f"studies/{NAME}.toml", columns=columns)
    assert show.returncode == 0, show.stderr
    for text in (run_out, show.stdout):
        assert_fits(text)
        headers, body = header_and_body(text)
        for header in STUDY_HEADERS:
            assert header in headers, header
        # every front trial's numbers are printed whole on its first line
        for rec in front(root):
            row = next(line for line in body if line.split()[:1] == [str(rec["trial"])])
            assert f"{rec['cost_usd_per_item']:.6f}" in row
            assert f"{100 * rec['quality']:.1f} [" in row
    # the configs are longer than their 80-column cell, so they wrapped rather than being cut
    summaries = [str(rec["summary"]) for rec in front(root)]
    assert max(map(len, summaries)) > 40
    assert not any(s in show.stdout for s in summaries if len(s) > 40)


def test_study_show_wide_prints_each_config_whole_on_one_line(ran):
    root, _ = ran
    done = moa(root, "study", "show", f"studies/{NAME}.toml", "--wide")
    assert done.returncode == 0, done.stderr
    _, body = header_and_body(done.stdout)
    for rec in front(root):
        row = next(line for line in body if line.split()[:1] == [str(rec["trial"])])
        assert str(rec["summary"]) in row and f"{rec['cost_usd_per_item']:.6f}" in row
    assert max(len(line) for line in done.stdout.splitlines()) > 80


def test_calls_fit_80_columns_and_wide_shows_run_ids_whole(ran):
    root, _ = ran
    listed = moa(root, "calls", "--study", f"studies/{NAME}.toml", "--limit", "5", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["calls"]
    assert len(rows) == 5 and all(len(r["run_id"]) > 60 for r in rows)
    for columns in (None, "80"):
        done = moa(root, "calls", "--study", f"studies/{NAME}.toml", "--limit", "5", columns=columns)
        assert done.returncode == 0, done.stderr
        assert_fits(done.stdout)
        headers, body = header_and_body(done.stdout)
        for header in CALLS_HEADERS:
            assert header in headers, header
        text = "\n".join(body)
        for r in rows:  # money whole (5 decimals), never "0.00…"
            assert f"{r['paid_usd']:.5f}" in text and f"{r['cost_usd']:.5f}" in text
    wide = moa(root, "calls", "--study", f"studies/{NAME}.toml", "--limit", "5", "--wide")
    assert wide.returncode == 0, wide.stderr
    headers, body = header_and_body(wide.stdout)
    assert " ".join(headers.split()) == " ".join(CALLS_HEADERS)  # one header line, every column
    for r, line in zip(rows, body):
        assert line.split()[:1] == [str(r["id"])] and r["run_id"] in line and r["model"].split("/")[-1] in line


def test_a_wide_columns_value_gets_the_one_line_table(ran):
    root, _ = ran
    done = moa(root, "calls", "--study", f"studies/{NAME}.toml", "--limit", "3", columns="200")
    assert done.returncode == 0, done.stderr
    headers, body = header_and_body(done.stdout)
    assert " ".join(headers.split()) == " ".join(CALLS_HEADERS)
    assert len(body) == 3 + 1  # three calls, then the spend line
    assert_fits(done.stdout, 200)


def test_calls_without_a_default_store_names_the_studies_stores(ran, tmp_path):
    root, _ = ran
    done = moa(root, "calls")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("error: runs/calls.db: no call store here")
    assert f"--study studies/{NAME}.toml" in line and f"--store runs/{NAME}/calls.db" in line
    # no study stores either: the plain error; --study with --store: a usage error
    assert moa(tmp_path, "calls").stderr.strip() == "error: runs/calls.db: no call store here yet"
    both = moa(root, "calls", "--study", f"studies/{NAME}.toml", "--store", "x.db")
    assert both.returncode == 2 and "give --study or --store, not both" in both.stderr
