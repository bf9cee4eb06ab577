"""Usage mistakes are one line and a hint, exit 2, never a traceback — for every subcommand,
enumerated from the typer app so a new command is covered the day it is added. Also: bare
commands print help, out-of-range numbers are usage errors, and a preset given to ``--config`` is
checked exactly as ``serve`` checks it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import typer

from moa_search.catalog import Catalog
from moa_search.cli import app, main
from moa_search.config import BUILTIN_PRESETS
from moa_search.preset import from_builtin, write_preset


def all_commands() -> Iterator[tuple[tuple[str, ...], object]]:
    """Every command and group of the app, by path (the root group is ``()``)."""
    def walk(command: object, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
        yield path, command
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, path + (name,))
    yield from walk(typer.main.get_command(app), ())


COMMANDS = dict(all_commands())
GROUPS = {path: c for path, c in COMMANDS.items() if hasattr(c, "commands")}
LEAVES = {path: c for path, c in COMMANDS.items() if path not in GROUPS}
REQUIRED = {path: cmd for path, cmd in LEAVES.items() if any(p.required for p in cmd.params)}  # type: ignore[attr-defined]


def test_the_enumeration_sees_the_commands() -> None:
    names = {" ".join(p) for p in LEAVES}
    assert {"run", "eval", "compare", "calls", "serve", "sim-server", "report",
            "study run", "study show", "study export"} <= names
    assert {"run", "eval", "compare", "serve", "study run", "study show", "study export", "report"} <= {
        " ".join(p) for p in REQUIRED}


def assert_usage_error(code: int, out: str, err: str, path: tuple[str, ...]) -> None:
    assert code == 2, (path, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("error: ")
    assert lines[1].startswith(f"Usage: moa-search {' '.join(path)}".rstrip())
    assert f"(see 'moa-search {' '.join(path)} --help')" in lines[1]


@pytest.mark.parametrize("path", sorted(LEAVES), ids=" ".join)
def test_every_command_rejects_an_unknown_option(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*path, "--no-such-option"])
    captured = capsys.readouterr()
    assert_usage_error(code, captured.out, captured.err, path)
    assert "No such option: --no-such-option" in captured.err


@pytest.mark.parametrize("path", sorted(REQUIRED), ids=" ".join)
def test_every_command_names_a_missing_argument(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(list(path))
    captured = capsys.readouterr()
    assert_usage_error(code, captured.out, captured.err, path)
    assert "Missing" in captured.err


@pytest.mark.parametrize("path, args, fragment", [
    ("eval", ["--data", "math", "--scorer", "exact", "--preset", "moa", "--n-items", "0"], "'--n-items'"),
    ("compare", ["moa", "moa-lite", "--data", "math", "--scorer", "exact", "--n-items", "-3"], "'--n-items'"),
    ("study run", ["s.toml", "--workers", "0"], "'--workers'"),
    ("study run", ["s.toml", "--workers", "abc"], "'--workers'"),
    ("run", ["--preset", "moa", "--prompt", "x", "--retries", "-1"], "'--retries'"),
    ("run", ["--preset", "moa", "--prompt", "x", "--timeout", "0"], "'--timeout'"),
    ("eval", ["--data", "math", "--scorer", "exact", "--preset", "moa", "--concurrency", "0"], "'--concurrency'"),
    ("serve", ["p.json", "--port", "70000"], "'--port'"),
    ("serve", ["p.json", "--concurrency", "0"], "'--concurrency'"),
    ("sim-server", ["--fault-429", "1.5"], "'--fault-429'"),
    ("calls", ["--limit", "-1"], "'--limit'"),
    ("study export", ["s.toml", "--trial", "-1"], "'--trial'"),
    ("eval", ["--data"], "'--data' requires an argument"),
])
def test_out_of_range_numbers_and_bad_values_are_usage_errors(path: str, args: list[str], fragment: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*path.split(), *args])
    captured = capsys.readouterr()
    assert_usage_error(code, captured.out, captured.err, tuple(path.split()))
    assert fragment in captured.err


def test_more_items_than_the_set_holds_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "calls.db"
    code = main(["eval", "--data", "math", "--scorer", "exact", "--preset", "moa-lite", "--n-items", "100000",
                 "--store", str(store)])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line == "error: --n-items: expected at most 120 (the items in math), got 100000"
    assert not store.exists()


@pytest.mark.parametrize("path", sorted(GROUPS), ids=lambda p: " ".join(("moa-search",) + p))
def test_bare_groups_print_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """``moa-search``, ``moa-search study``, and any group added later."""
    code = main(list(path))
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.out + captured.err
    assert " ".join(("Usage: moa-search",) + path) in captured.out
    assert all(name in captured.out for name in GROUPS[path].commands)  # type: ignore[attr-defined]


def test_the_installed_command_gives_one_line_and_a_hint() -> None:
    """The console script itself (not just ``main``): the path users hit."""
    script = Path(sys.executable).parent / "moa-search"
    result = subprocess.run([str(script), "study", "run"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == "error: Missing argument 'study_file'."


# ---- --config takes a preset only if it passes serve's checks -----------------------------------

@pytest.fixture
def preset_file(tmp_path: Path) -> Path:
    return write_preset(tmp_path / "lite.json", from_builtin(BUILTIN_PRESETS["moa-lite"], Catalog.default()))


def edited(path: Path, **changes: object) -> Path:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("command", [
    ["run", "--prompt", "hi", "--no-store", "--config"],
    ["eval", "--data", "math", "--scorer", "exact", "--n-items", "2", "--config"],
])
@pytest.mark.parametrize("changes, field, fragment", [
    ({"format": "moa-preset/9"}, "format", "unsupported preset format version 'moa-preset/9'"),
    ({"config_hash": "0123456789abcdef"}, "config_hash", "does not match the config"),
])
def test_config_option_checks_presets_like_serve(command: list[str], changes: dict[str, object], field: str,
                                                 fragment: str, preset_file: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = edited(preset_file, **changes)
    code = main([*command, str(path), "--store", str(tmp_path / "calls.db")] if command[0] == "eval"
                else [*command, str(path)])
    err = capsys.readouterr().err
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: {path}: {field}: ") and fragment in line
    assert not (tmp_path / "calls.db").exists()


def test_compare_checks_preset_files_too(preset_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = edited(preset_file, config_hash="0123456789abcdef")
    code = main(["compare", str(path), "moa", "--data", "math", "--scorer", "exact", "--n-items", "2"])
    assert code == 2 and f"{path}: config_hash: " in capsys.readouterr().err


def test_a_valid_preset_runs_from_config(preset_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(preset_file), "--prompt", "hi", "--no-store", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calls"] == 7
