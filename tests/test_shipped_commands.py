"""Every command a shipped study, catalog or data file names in its comments is a real command,
and is run here (or, where a file's own test already runs it, that test is named).

A comment that names a new command fails ``test_every_named_command_is_known`` until it is added
to ``HOW``: the comments cannot drift from what the commands are.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from moa_search.cli import app

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted([*ROOT.glob("studies/*.toml"), *ROOT.glob("catalogs/*.toml"),
                  *ROOT.glob("moa_search/data/*.toml")])
#: A command in a comment: ``moa-search ...`` or ``python <script>.py``, up to a backtick, a
#: parenthesis or the end of the line. ``moa-search`` followed by a word that is no command of
#: the CLI is prose ("servers started by moa-search").
_COMMAND = re.compile(r"moa-search((?: [^\s`()]+)*)|python ((?:benchmarks|analysis|scripts)/[\w/]+\.py)")
_CLI = typer.main.get_command(app)

#: How each named command is run: ``run`` (as written, with the study's runs in a temporary
#: folder) or ``help`` (a long benchmark, a real-model run, or a bare command name: its
#: ``--help`` must work; the note says where it runs in full).
HOW: dict[str, tuple[str, str]] = {
    "moa-search study run studies/sim-demo.toml": ("run", ""),
    "moa-search catalog check": ("run", ""),
    "moa-search catalog add": ("help", "tests/test_price_db.py runs it with arguments"),
    "python benchmarks/search_efficiency.py": ("help", "a benchmark of about 16 minutes; run by hand"),
    "python analysis/local.py": ("help", "tests/test_local_study.py (-m local_llm, needs the real model)"),
}


def named_commands() -> dict[str, list[str]]:
    """Command -> the shipped files whose comments name it (current.toml's own commands, which
    its test replays, are left to that test)."""
    found: dict[str, list[str]] = {}
    for path in SHIPPED:
        for line in path.read_text(encoding="utf-8").splitlines():
            comment = line.partition("#")[2]
            if not comment or (path.name == "current.toml" and comment.startswith("   moa-search catalog add ")):
                continue
            for match in _COMMAND.finditer(comment):
                command = _command(match)
                if command is not None:
                    found.setdefault(command, []).append(str(path.relative_to(ROOT)))
    return found


def _command(match: re.Match[str]) -> str | None:
    if match.group(2):
        return f"python {match.group(2)}"
    words = [w.rstrip(".,:;") for w in match.group(1).split()]
    if not words or words[0] not in getattr(_CLI, "commands", {}):
        return None
    return " ".join(["moa-search", *words])


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_every_named_command_is_known() -> None:
    found = named_commands()
    assert "moa-search study run studies/sim-demo.toml" in found  # the scan does see comments
    unknown = {c: files for c, files in found.items() if c not in HOW}
    assert not unknown, f"shipped files name commands no test runs: {unknown}"


def test_the_current_catalog_commands_are_replayed_by_its_test() -> None:
    text = (ROOT / "tests" / "test_price_db.py").read_text(encoding="utf-8")
    assert "def test_shipped_current_catalog_is_what_its_commands_write" in text
    assert any(line.startswith("#   moa-search catalog add ")
               for line in (ROOT / "catalogs" / "current.toml").read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("command", sorted(c for c, (how, _) in HOW.items() if how == "run"))
def test_each_named_command_runs(command: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "moa_search.cli", *command.split()[1:]]
    if command.startswith("moa-search study run"):
        argv += ["--runs-dir", str(tmp_path), "-q"]
    done = _run(*argv)
    if command == "moa-search catalog check":  # exit 1 is its documented "prices differ" answer
        assert done.returncode in (0, 1) and done.stdout.startswith("model"), done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert "Pareto" in done.stdout or "trial" in done.stdout


@pytest.mark.parametrize("command", sorted(c for c, (how, _) in HOW.items() if how == "help"))
def test_each_long_named_command_answers_help(command: str) -> None:
    head, *rest = command.split()
    argv = ([sys.executable, "-m", "moa_search.cli", *rest] if head == "moa-search"
            else [sys.executable, *rest])
    done = _run(*argv, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()
