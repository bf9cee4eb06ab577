"""Degradation is visible (issue 11, item 4): one transient-error budget per call for 429 / 5xx /
timeouts / malformed replies; an item that lost a proposer is flagged *degraded*, counted, shown
by ``eval``, ``study show`` and the report, and scored or failed by the policy (studies: failed).

Real parts only: the real HTTP provider over httpx to a scripted server on 127.0.0.1
(``tests/scripted_http.py``), real SQLite call stores and Optuna storages, the real CLI."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import pytest

from moa_search.catalog import Catalog
from moa_search.cli import main
from moa_search.config import MoAConfig
from moa_search.datasets import answer_key_pairs, builtin_dataset
from moa_search.errors import ConfigError
from moa_search.prompts import user_prompt
from moa_search.providers.openai_compat import OpenAICompatProvider
from moa_search.providers.simulated import AnswerKey, SimulatedProvider
from moa_search.runner import DegradedPolicy, Runner
from moa_search.search import TrialMetrics, load_result
from moa_search.sim_server import FaultConfig, SimServer
from moa_search.study_spec import load_study_spec, parse_study_spec
from tests.scripted_http import Reply, ScriptedServer, chat_body
from tests.test_study_workflow import STUDY as WORKFLOW_STUDY

TRUNCATED = Reply(body='{"id": "chatcmpl-x", "object": "chat.completion", "choi')  # not JSON
NO_CHOICES = Reply(body={"error": {"message": "upstream hiccup"}})  # JSON, but delivers nothing
RATE_LIMITED = Reply(status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "0"})
SERVER_ERROR = Reply(status=500, body={"error": {"message": "boom"}})
CONFIG = MoAConfig.from_dict({"layers": [["m/good", "m/bad"]], "aggregator": "m/good"})
N_ITEMS = 4
BAD_ITEM = "q3"


def text_of(body: dict[str, Any]) -> str:
    return " ".join(m["content"] for m in body["messages"])


class Script:
    """Per-model replies: ``faults(n, body)`` gives the model's n-th reply (from 1), None = a good
    one ("The answer is 7."). Counts every request per model; thread-safe (the server's threads)."""

    def __init__(self, faults: dict[str, Callable[[int, dict[str, Any]], Reply | None]]):
        self.faults = faults
        self.count: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        model = body["model"]
        with self._lock:
            self.count[model] += 1
            n = self.count[model]
        fault = self.faults.get(model, lambda n, b: None)(n, body)
        return fault or Reply(body=chat_body(model, "The answer is 7."))


def catalog_toml(base_url: str, api_key_env: str = "") -> str:
    key = f'api_key_env = "{api_key_env}"\n' if api_key_env else ""
    return (f'[providers.p]\nbase_url = "{base_url}"\n{key}'
            + "".join(f'[models."m/{m}"]\nprovider = "p"\ninput_price = 1\noutput_price = 2\n'
                      for m in ("good", "bad")))


def write_inputs(tmp_path: Path, base_url: str, api_key_env: str = "") -> dict[str, Path]:
    """A catalog routing m/good and m/bad to ``base_url``, a 4-item set (every answer is 7) and
    the config [m/good, m/bad] -> m/good as a file."""
    paths = {"catalog": tmp_path / "catalog.toml", "data": tmp_path / "items.jsonl",
             "config": tmp_path / "config.json"}
    paths["catalog"].write_text(catalog_toml(base_url, api_key_env))
    paths["data"].write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"question q{i}: what is 3 + 4?",
                                                 "reference": "7"}) + "\n" for i in range(1, N_ITEMS + 1)))
    paths["config"].write_text(json.dumps(CONFIG.to_dict()))
    return paths


def http_provider(base_url: str, **kwargs: Any) -> OpenAICompatProvider:
    cat = Catalog.from_toml_text(catalog_toml(base_url), source="<test>")
    return OpenAICompatProvider(cat, backoff_base_s=0.01, backoff_max_s=0.05, env={}, **kwargs)


# ---- one budget ----------------------------------------------------------------------------

async def test_three_malformed_replies_then_a_good_one_stay_within_the_one_budget() -> None:
    """The old separate malformed-JSON cap (2) dropped this proposer; the one budget (6) does not."""
    script = Script({"m/bad": lambda n, b: TRUNCATED if n <= 3 else None})
    with ScriptedServer(script) as server:
        provider = http_provider(server.base_url)  # max_retries: the default
        try:
            trace = await Runner(provider).run_item(CONFIG, user_prompt("what is 3 + 4?"))
        finally:
            await provider.aclose()
    assert provider.max_retries == 6
    assert not trace.degraded and not trace.failed and trace.n_failed_calls == 0
    assert script.count["m/bad"] == 4
    bad = next(c for c in trace.calls if c.model == "m/bad")
    assert bad.completion is not None and bad.completion.extra["attempts"] == 4


async def test_every_kind_of_fault_draws_on_the_same_budget() -> None:
    kinds = [SERVER_ERROR, RATE_LIMITED, NO_CHOICES, TRUNCATED]
    script = Script({"m/bad": lambda n, b: kinds[(n - 1) % len(kinds)]})
    with ScriptedServer(script) as server:
        provider = http_provider(server.base_url, max_retries=3)
        try:
            trace = await Runner(provider).run_item(CONFIG, user_prompt("what is 3 + 4?"))
        finally:
            await provider.aclose()
    assert script.count["m/bad"] == 4  # 1 + 3 retries, whatever mix of kinds
    bad = next(c for c in trace.calls if c.model == "m/bad")
    assert bad.error is not None and "not valid JSON (4 attempts)" in bad.error
    assert bad.error.startswith(server.base_url)


async def test_a_reply_with_an_answer_but_no_usage_is_not_retried() -> None:
    """Repeating it would pay for the answer again, and an endpoint without usage stays so."""
    no_usage = {k: v for k, v in chat_body("m/bad", "7").items() if k != "usage"}
    script = Script({"m/bad": lambda n, b: Reply(body=no_usage)})
    with ScriptedServer(script) as server:
        provider = http_provider(server.base_url)
        try:
            trace = await Runner(provider).run_item(CONFIG, user_prompt("hi"))
        finally:
            await provider.aclose()
    assert script.count["m/bad"] == 1 and trace.degraded
    assert "no 'usage'" in (trace.first_error() or "")


# ---- the runner's policy -------------------------------------------------------------------

@pytest.mark.parametrize("policy", list(DegradedPolicy))
async def test_a_proposer_that_exhausts_the_budget_degrades_the_item(policy: DegradedPolicy) -> None:
    script = Script({"m/bad": lambda n, b: TRUNCATED})
    with ScriptedServer(script) as server:
        provider = http_provider(server.base_url, max_retries=3)
        try:
            trace = await Runner(provider, degraded=policy).run_item(CONFIG, user_prompt("what is 3 + 4?"))
        finally:
            await provider.aclose()
    assert script.count["m/bad"] == 4 and trace.degraded and trace.n_failed_calls == 1
    assert "not valid JSON (4 attempts)" in (trace.first_error() or "")
    if policy is DegradedPolicy.SCORE:
        assert trace.answer == "The answer is 7." and script.count["m/good"] == 2  # proposer + aggregator
    else:
        assert trace.failed and script.count["m/good"] == 1  # the aggregator was never paid for
        assert (trace.error or "").startswith("degraded (policy fail): 1 of 2 proposers in layer 1 failed")


def test_an_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"degraded: expected one of \['score', 'fail'\], got 'maybe'"):
        DegradedPolicy.parse("maybe")


def test_metrics_stored_before_n_degraded_still_load() -> None:
    old = TrialMetrics(1.0, 1.0, 1.0, 2, {"a": 1.0, "b": 1.0}, 0.01, 0.02, 0.5, 0.6, 4, 0).to_dict()
    del old["n_degraded"], old["first_error"]
    m = TrialMetrics.from_dict(old)
    assert (m.n_degraded, m.first_error, m.n_failed) == (0, None, 0)


# ---- eval: counted and shown, scored or failed ---------------------------------------------

def bad_on_one_item(reply: Reply) -> Script:
    return Script({"m/bad": lambda n, b: reply if f"question {BAD_ITEM}:" in text_of(b) else None})


@pytest.mark.parametrize("policy", ["score", "fail"])
def test_eval_counts_and_shows_degraded_items(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              policy: str) -> None:
    with ScriptedServer(bad_on_one_item(SERVER_ERROR)) as server:
        p = write_inputs(tmp_path, server.base_url)
        common = ["eval", "--backend", "http", "--catalog", str(p["catalog"]), "--config", str(p["config"]),
                  "--data", str(p["data"]), "--scorer", "numeric", "--retries", "0", "--quiet"]
        policy_args = [] if policy == "score" else ["--degraded", "fail"]  # score: the default
        code = main([*common, *policy_args, "--store", str(tmp_path / "a.db"), "--json"])
        report = json.loads(capsys.readouterr().out)
        text_code = main([*common, *policy_args, "--store", str(tmp_path / "b.db")])
        text = capsys.readouterr().out
    assert code == 0 and text_code == 0
    assert (report["n_degraded"], report["degraded_policy"]) == (1, policy)
    assert "HTTP 500" in report["first_error"] and server.base_url in report["first_error"]
    values = report["quality"]["values"]
    if policy == "score":
        assert report["n_failed"] == 0 and values[BAD_ITEM] == 1.0 and report["quality"]["n_scored"] == N_ITEMS
        assert "degraded 1 (scored, --degraded score)" in text
    else:  # not scored 0: not scored at all, and counted as failed
        assert report["n_failed"] == 1 and values[BAD_ITEM] is None
        assert report["quality"]["n_scored"] == N_ITEMS - 1 and report["quality"]["counts"]["failed"] == 1
        assert report["quality"]["quality"]["mean"] == 1.0
        assert "failed 1; degraded 1 (failed, --degraded fail)" in text


# ---- studies: failed by default, counted, shown --------------------------------------------

def study_text(name: str, degraded: str | None = None) -> str:
    scorer = 'name = "numeric"\n' + (f'degraded = "{degraded}"\n' if degraded else "")
    return (f'[study]\nname = "{name}"\nseed = 1\nbackend = "http"\n[catalog]\npath = "catalog.toml"\n'
            f'[data]\npath = "items.jsonl"\n[scorer]\n{scorer}'
            '[space]\nmodels = ["m/good", "m/bad"]\naggregators = ["m/good"]\nlayers = 2\nproposers = 2\n'
            '[budget]\ntrials = 1\n[sampler]\nname = "random"\n[fidelity]\nenabled = false\n')


def test_study_spec_reads_and_checks_the_degraded_policy(tmp_path: Path) -> None:
    Path(tmp_path / "catalog.toml").write_text(catalog_toml("http://127.0.0.1:9/v1"))
    (tmp_path / "items.jsonl").write_text('{"id": "a", "prompt": "p", "reference": "7"}\n')
    default = parse_study_spec(study_text("d"), source="s.toml", base_dir=tmp_path)
    score = parse_study_spec(study_text("d", "score"), source="s.toml", base_dir=tmp_path)
    assert (default.scorer.degraded, score.scorer.degraded) == (DegradedPolicy.FAIL, DegradedPolicy.SCORE)
    with pytest.raises(ConfigError, match=r"^s\.toml: scorer\.degraded: expected one of \['score', 'fail'\]"):
        parse_study_spec(study_text("d", "drop"), source="s.toml", base_dir=tmp_path)


def test_a_study_fails_degraded_items_by_default_and_shows_them(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A proposer that exhausts its budget (429s with Retry-After: 0, so no waiting) on one item."""
    with ScriptedServer(bad_on_one_item(RATE_LIMITED)) as server:
        write_inputs(tmp_path, server.base_url)
        for name, degraded in (("failing", None), ("scoring", "score")):
            (tmp_path / f"{name}.toml").write_text(study_text(name, degraded))
            code = main(["study", "run", str(tmp_path / f"{name}.toml"), "--runs-dir", str(tmp_path / "runs"),
                         "--quiet"])
            assert code == 0, capsys.readouterr().err
    bad_requests = script_requests(server, "m/bad", BAD_ITEM)
    assert bad_requests == 7 * 2  # 1 + 6 retries (the default budget), once per study

    failing = load_result(load_study_spec(tmp_path / "failing.toml", runs_dir=tmp_path / "runs").storage, "failing")
    m = failing.trials[0].metrics
    assert m is not None and (m.n_items, m.n_degraded, m.n_failed) == (N_ITEMS, 1, 1)
    assert BAD_ITEM not in m.item_values and m.quality == 1.0  # left out, not scored 0
    assert m.first_error is not None and "HTTP 429" in m.first_error
    scoring = load_result(load_study_spec(tmp_path / "scoring.toml", runs_dir=tmp_path / "runs").storage, "scoring")
    s = scoring.trials[0].metrics
    assert s is not None and (s.n_degraded, s.n_failed, s.item_values[BAD_ITEM]) == (1, 0, 1.0)

    capsys.readouterr()
    assert main(["study", "show", str(tmp_path / "failing.toml"), "--runs-dir", str(tmp_path / "runs")]) == 0
    shown = capsys.readouterr().out
    assert 'items with failed runs 1, degraded 1 (failed: [scorer] degraded = "fail")' in shown
    assert main(["study", "show", str(tmp_path / "failing.toml"), "--runs-dir", str(tmp_path / "runs"),
                 "--json"]) == 0
    trial = json.loads(capsys.readouterr().out)["trials"][0]
    assert (trial["n_degraded"], trial["n_failed"]) == (1, 1)
    html_path = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "failing.toml"), "--runs-dir", str(tmp_path / "runs"),
                 "--out", str(html_path)]) == 0
    page = html_path.read_text()
    assert re.search(r"<th>Faults</th><td>items with failed runs 1; degraded \(an agent lost\) 1: "
                     r"failed, not scored \(\[scorer\] degraded = &quot;fail&quot;\)</td>", page)


def script_requests(server: ScriptedServer, model: str, item: str) -> int:
    return sum(1 for body, _ in server.requests
               if body["model"] == model and f"question {item}:" in text_of(body))


# ---- 20 % injected faults: the same front as a clean run -----------------------------------

def fault_study() -> str:
    """The small study of the workflow test (random sampler, 10 math items, 5 trials), over HTTP."""
    return (WORKFLOW_STUDY.replace("{trials}", "5").replace('backend = "sim"', 'backend = "http"')
            .replace("[data]", '[catalog]\npath = "catalog.toml"\n\n[data]', 1))


def run_fault_study(tmp_path: Path, server: SimServer, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``study run --json`` against ``server``: the built-in catalog routed there, 1 s timeouts."""
    text = resources.files("moa_search").joinpath("data/catalog.toml").read_text("utf-8")
    text = re.sub(r'base_url = "[^"]+"', f'base_url = "{server.base_url}"', text)
    text = re.sub(r'api_key_env = "[^"]+"', "timeout_s = 1.0", text)  # the sim-server needs no key
    tmp_path.mkdir()
    (tmp_path / "catalog.toml").write_text(text)
    (tmp_path / "study.toml").write_text(fault_study())
    capsys.readouterr()
    code = main(["study", "run", str(tmp_path / "study.toml"), "--runs-dir", str(tmp_path / "runs"),
                 "--quiet", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_twenty_percent_injected_faults_give_the_same_front_as_a_clean_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The sim-server injects 429 (Retry-After: 0), 500, malformed JSON and timeouts (a 5 s hang
    against a 1 s client timeout) into 20 % of the replies (after one of each kind first); every one is absorbed by the retry
    budget, so the study evaluates the same trials, configs and numbers as against a clean server."""
    def world() -> SimulatedProvider:
        key = AnswerKey.from_pairs(answer_key_pairs(builtin_dataset("math")))
        return SimulatedProvider(Catalog.default(), answer_key=key, seed=0)

    faults = FaultConfig(rate_429=0.08, rate_500=0.05, rate_malformed=0.05, rate_timeout=0.02,
                         retry_after_s=0, timeout_hang_s=5.0, seed=11,
                         script=("timeout", "malformed", "500", "429"))  # each kind at least once
    with SimServer(world()) as clean_server:
        clean = run_fault_study(tmp_path / "clean", clean_server, capsys)
    with SimServer(world(), faults=faults) as faulty_server:
        faulty = run_fault_study(tmp_path / "faulty", faulty_server, capsys)
        stats = faulty_server.stats
    assert set(stats.faults) == {"429", "500", "malformed", "timeout"}, stats.faults
    assert sum(stats.faults.values()) >= 0.1 * stats.requests  # faults really were injected

    assert len(clean["trials"]) == 5 and clean["pareto_front"]
    assert faulty["trials"] == clean["trials"]  # same trials, configs, quality, cost, latency
    assert faulty["pareto_front"] == clean["pareto_front"]
    assert all(t["n_degraded"] == 0 and t["n_failed"] == 0 for t in faulty["trials"] if t["n_items"])
