"""Exit status on total failure (issue 11, item 5): valid input, but every call answered 401.
``run``, ``eval``, ``compare`` and ``study run`` exit 1 (not 0 with quality nan, not 2 as for bad
input) with one line on stderr naming the endpoint and the status, and the key the server echoed
masked. Real HTTP to a scripted server on 127.0.0.1, real call stores and Optuna storage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moa_search.cli import main
from tests.scripted_http import Reply, ScriptedServer
from tests.test_degraded import N_ITEMS, study_text, write_inputs

KEY_ENV = "MOA_TOTAL_FAILURE_KEY"
SECRET = "sk-total-failure-0123456789abcdef"
UNAUTHORIZED = Reply(status=401, body={"error": {"message": f"Incorrect API key provided: {SECRET}",
                                                 "type": "invalid_request_error", "code": "invalid_api_key"}})


def commands(p: dict[str, Path], tmp_path: Path) -> dict[str, list[str]]:
    http = ["--backend", "http", "--catalog", str(p["catalog"]), "--store", str(tmp_path / "calls.db")]
    data = ["--data", str(p["data"]), "--scorer", "numeric", "--quiet"]
    return {
        "run": ["run", "--config", str(p["config"]), "--prompt", "what is 3 + 4?", *http],
        "eval": ["eval", "--config", str(p["config"]), *data, *http],
        "compare": ["compare", str(p["config"]), "m/good", *data, *http],
        "study run": ["study", "run", str(tmp_path / "study.toml"), "--runs-dir", str(tmp_path / "runs"), "--quiet"],
    }


@pytest.mark.parametrize("command", ["run", "eval", "compare", "study run"])
def test_every_call_401_exits_1_with_the_first_error_on_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ScriptedServer(lambda body, headers: UNAUTHORIZED) as server:
        p = write_inputs(tmp_path, server.base_url, api_key_env=KEY_ENV)
        (tmp_path / "study.toml").write_text(study_text("all-401"))
        capsys.readouterr()
        code = main(commands(p, tmp_path)[command])
        captured = capsys.readouterr()
    assert server.requests, "the endpoint was really called"
    assert all(h["authorization"] == f"Bearer {SECRET}" for _, h in server.requests)
    assert code == 1, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    line = lines[0]
    assert line.startswith("error: ") and re.search(re.escape(server.base_url) + r": HTTP 401 for model 'm/", line)
    assert "Incorrect API key provided" in line and SECRET not in line and SECRET not in captured.out


def test_eval_says_how_many_items_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ScriptedServer(lambda body, headers: UNAUTHORIZED) as server:
        p = write_inputs(tmp_path, server.base_url, api_key_env=KEY_ENV)
        code = main(commands(p, tmp_path)["eval"])
        captured = capsys.readouterr()
    assert code == 1
    assert captured.err.startswith(f"error: nothing could be scored: 0 of {N_ITEMS} items (failed {N_ITEMS}); "
                                   f"first error: {server.base_url}: HTTP 401")
    assert f"quality (numeric): none, n=0/{N_ITEMS} scored" in captured.out  # not "nan%"


def test_a_study_with_some_items_scored_still_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 1 is for *nothing* scored: one failing item leaves the study a success."""
    def reply(body: dict, headers: dict) -> Reply:
        first_item = any("question q1:" in m["content"] for m in body["messages"])
        return UNAUTHORIZED if first_item else Reply(body=None)
    with ScriptedServer(reply) as server:
        write_inputs(tmp_path, server.base_url)
        (tmp_path / "study.toml").write_text(study_text("mostly-fine"))
        code = main(["study", "run", str(tmp_path / "study.toml"), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
        captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "items with failed runs 1, degraded 0" in captured.out
