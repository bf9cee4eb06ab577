"""The whole path a user takes, through the real command: run a study (two workers, then resume),
show it, export its presets in every format, serve one and ask it with the official `openai`
client. Offline, on the simulated world; servers on 127.0.0.1."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from moa_search.cli import main
from moa_search.exporters.archon import from_archon
from moa_search.preset import load_preset
from moa_search.store import CallStore

STUDY = """
[study]
name = "tiny"
seed = 3
backend = "sim"

[data]
builtin = "math"
n_items = 10

[scorer]
name = "numeric"

[space]
models = ["meta-llama/Llama-3-8b-chat-hf", "mistralai/Mixtral-8x7B-Instruct-v0.1", "Qwen/Qwen1.5-72B-Chat"]
aggregators = ["Qwen/Qwen1.5-72B-Chat", "meta-llama/Llama-3-8b-chat-hf"]
layers = [1, 2]
proposers = [1, 2]
proposer_mode = "distinct"

[objectives]
mode = "pareto"
metrics = ["quality", "cost"]

[budget]
trials = {trials}
usd = 2.0

[sampler]
name = "random"

[fidelity]
enabled = false
"""


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def study(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY.replace("{trials}", "6"))
    return path


def test_two_workers_then_resume_then_show(study, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    code, out, err = cli(capsys, "study", "run", str(study), "--workers", "2", "--runs-dir", runs, "--json")
    assert code == 0, err
    first = json.loads(out)
    measured = [t for t in first["trials"] if t["quality"] is not None and t["status"] == "complete"]
    assert first["simulated"] is True and first["pareto_front"]
    assert len({t["config_hash"] for t in measured}) >= 4
    # resume with a larger budget: finished trials are kept, new ones continue the numbering
    study.write_text(STUDY.replace("{trials}", "9"))
    code, out, err = cli(capsys, "study", "run", str(study), "--runs-dir", runs, "--json")
    assert code == 0, err
    second = json.loads(out)
    before = {t["trial"]: t for t in first["trials"]}
    assert all(second_t == before[second_t["trial"]] for second_t in second["trials"]
               if second_t["trial"] in before)
    assert len(second["trials"]) > len(first["trials"])
    code, out, _ = cli(capsys, "study", "show", str(study), "--runs-dir", runs)
    assert code == 0 and "Pareto front of study tiny (simulated world)" in out
    ran = sum(t["status"] in ("complete", "stopped_early", "failed") for t in second["trials"])
    repeats = sum(t["status"] == "duplicate" for t in second["trials"])
    assert f"{len(second['trials'])} trials ({ran} evaluated, {repeats} repeats" in " ".join(out.split())
    report = tmp_path / "out" / "report.html"
    code, _, err = cli(capsys, "report", str(study), "--runs-dir", runs, "--out", str(report))
    assert code == 0, err
    page = report.read_text("utf-8")
    assert "Pareto front" in page and "Simulated model world" in page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_export_every_format_and_serve_the_preset(study, tmp_path, capsys):
    runs, out_dir = str(tmp_path / "runs"), tmp_path / "presets"
    assert cli(capsys, "study", "run", str(study), "--runs-dir", runs, "-q")[0] == 0
    code, out, err = cli(capsys, "study", "export", str(study), "--runs-dir", runs, "--pareto", "--out", str(out_dir))
    assert code == 0, err
    presets = sorted(out_dir.glob("*.json"))
    assert presets and len(presets) == out.count("wrote")
    best = max((load_preset(p) for p in presets), key=lambda p: p.provenance.quality)
    assert best.provenance.simulated and best.provenance.study == "tiny"
    trial = best.provenance.trial

    for fmt, suffix in (("archon", ".archon.json"), ("moa-reference", ".sh"), ("standalone", ".py")):
        # the study measured 'moa'-style prompts: Archon export says it changes them (issue 14)
        allow = ["--allow-prompt-change"] if fmt == "archon" else []
        code, out, err = cli(capsys, "study", "export", str(study), "--runs-dir", runs, "--trial", str(trial),
                             "--format", fmt, "--out", str(out_dir), *allow)
        # every config of this space is expressible in every format (Together-served models,
        # distinct proposers, one proposer layer at most, default sampling): no refusal is right
        assert code == 0, err
        exported = out_dir / f"tiny-trial-{trial}{suffix}"
        assert exported.exists()
        if fmt == "moa-reference":
            script = exported.read_text()
            command = shlex.split(script.replace("\\\n", " ").splitlines()[-1])
            flags = dict(zip(command[2::2], command[3::2]))
            assert command[:2] == ["python", "generate_for_alpaca_eval.py"]
            assert flags["--model"] == best.config.aggregator.model
            if best.config.proposer_layers:
                assert flags["--reference-models"].split(",") == [a.model for a in best.config.proposer_layers[0]]
                assert flags["--rounds"] == str(len(best.config.proposer_layers))  # layers - 1
            else:
                assert "--reference-models" not in flags
        if fmt == "archon":
            back = from_archon(json.loads(exported.read_text()), source=str(exported))
            assert back == best.config and back.config_hash == best.config_hash
        if fmt == "standalone":
            compile(exported.read_text(), str(exported), "exec")

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moa_search.cli", "serve", str(out_dir / f"{best.name}.json"),
                               "--backend", "sim", "--port", str(port), "--store", str(tmp_path / "serve.db")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30)
        raw = client.chat.completions.with_raw_response.create(
            model=best.name, messages=[{"role": "user", "content": "What is 12 * 7?"}])
        reply = raw.parse()
    finally:
        server.terminate()
        server.wait(timeout=10)
    calls_per_item = sum(len(layer) for layer in best.config.proposer_layers) + 1
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert float(raw.headers["x-moa-cost-usd"]) > 0 and raw.headers["x-moa-simulated"] == "true"
    # the server ran the exported preset's config, every agent once, all paid into its own store
    assert raw.headers["x-moa-config-hash"] == best.config_hash
    assert (raw.headers["x-moa-calls"], raw.headers["x-moa-cached-calls"]) == (str(calls_per_item), "0")
    with CallStore(tmp_path / "serve.db") as store:
        spend = store.spend()
    assert (spend.calls, spend.cached_calls, spend.failed_calls) == (calls_per_item, 0, 0)
    assert spend.paid_usd == pytest.approx(float(raw.headers["x-moa-cost-usd"]), rel=1e-6)
