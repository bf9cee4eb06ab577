"""What real endpoints need: per-endpoint concurrency, timeout and max_tokens from the catalog
(and the flags overriding them), the context-window check before sending, a warning when a reply
names another model, and the two latencies. Real HTTP to scripted servers on 127.0.0.1, a real
SQLite call store."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import sqlite_utils

import pytest

from moa_search.catalog import Catalog
from moa_search.cli import main
from moa_search.config import MoAConfig
from moa_search.errors import ConfigError
from moa_search.prompts import user_prompt
from moa_search.providers.base import (MAX_BYTES_PER_TOKEN, ChatRequest, ContextWindowError, Message,
                                       ProviderError)
from moa_search.providers.limits import fit_request
from moa_search.providers.openai_compat import OpenAICompatProvider
from moa_search.runner import Runner
from moa_search.store import CallStore
from tests.scripted_http import Reply, ScriptedServer, chat_body


def catalog(providers: dict[str, dict[str, Any]], models: dict[str, dict[str, Any]]) -> Catalog:
    return Catalog.from_dict({"providers": providers, "models": {
        k: {"input_price": 1.0, "output_price": 2.0, **v} for k, v in models.items()}}, source="<test>")


def request(model: str = "m/a", text: str = "hello", max_tokens: int = 100) -> ChatRequest:
    return ChatRequest(model, (Message("user", text),), max_tokens=max_tokens)


@asynccontextmanager
async def http(cat: Catalog, **kwargs: Any) -> AsyncIterator[OpenAICompatProvider]:
    provider = OpenAICompatProvider(cat, max_retries=0, backoff_base_s=0.01, env={}, **kwargs)
    try:
        yield provider
    finally:
        await provider.aclose()


# ---- the catalog's fields ------------------------------------------------------------------

def test_catalog_reads_endpoint_and_model_limits() -> None:
    cat = catalog({"p": {"base_url": "http://127.0.0.1:9/v1", "concurrency": 2, "timeout_s": 30}},
                  {"m/a": {"provider": "p", "context_window": 4096, "max_tokens": 256}, "m/b": {"provider": "p"}})
    a, b = cat.get("m/a"), cat.get("m/b")
    assert (a.endpoint.concurrency, a.endpoint.timeout_s, a.max_tokens, a.context_window) == (2, 30.0, 256, 4096)
    assert (b.max_tokens, b.context_window) == (None, 8192)
    routed = cat.with_base_url("http://127.0.0.1:8/v1").get("m/a")
    assert (routed.max_tokens, routed.context_window, routed.endpoint.concurrency) == (256, 4096, None)


@pytest.mark.parametrize("provider_extra, model_extra, field, fragment", [
    ({"concurrency": 0}, {}, "providers.p.concurrency", "expected a number in 1"),
    ({"concurrency": 2.5}, {}, "providers.p.concurrency", "expected an integer"),
    ({"concurrency": "4"}, {}, "providers.p.concurrency", "expected an integer"),
    ({"timeout_s": 0}, {}, "providers.p.timeout_s", "expected a number in"),
    ({"timeout_s": "slow"}, {}, "providers.p.timeout_s", "expected a number"),
    ({}, {"max_tokens": 0}, 'models."m/a".max_tokens', "expected a number in 1"),
    ({}, {"max_tokens": 4096, "context_window": 4096}, 'models."m/a".max_tokens', ".. 4095"),
    ({}, {"max_tokens": True}, 'models."m/a".max_tokens', "expected an integer"),
])
def test_bad_limits_name_file_and_field(tmp_path: Path, provider_extra: dict[str, Any],
                                        model_extra: dict[str, Any], field: str, fragment: str) -> None:
    path = tmp_path / "cat.toml"
    lines = ['[providers.p]', 'base_url = "http://127.0.0.1:9/v1"']
    lines += [f"{k} = {json.dumps(v).lower() if isinstance(v, bool) else json.dumps(v)}" for k, v in provider_extra.items()]
    lines += ['[models."m/a"]', 'provider = "p"', "input_price = 1", "output_price = 1"]
    lines += [f"{k} = {json.dumps(v).lower() if isinstance(v, bool) else json.dumps(v)}" for k, v in model_extra.items()]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        Catalog.load(path)
    assert str(info.value).startswith(f"{path}: {field}: ") and fragment in str(info.value)


# ---- concurrency and timeout per endpoint ---------------------------------------------------

async def test_concurrency_is_per_endpoint_from_the_catalog_and_the_flag_overrides_it() -> None:
    slow = Reply(delay_s=0.1)
    with ScriptedServer(lambda b, h: slow) as one, ScriptedServer(lambda b, h: slow) as three:
        cat = catalog({"one": {"base_url": one.base_url, "concurrency": 1},
                       "three": {"base_url": three.base_url, "concurrency": 3}},
                      {"m/a": {"provider": "one"}, "m/b": {"provider": "three"}})
        async with http(cat) as p:
            await asyncio.gather(*(p.complete(request(m, f"q{i}")) for i in range(4) for m in ("m/a", "m/b")))
        assert (one.max_in_flight, three.max_in_flight) == (1, 3)
        one.max_in_flight = three.max_in_flight = 0
        async with http(cat, max_concurrency_per_endpoint=2) as p:  # what --concurrency 2 builds
            await asyncio.gather(*(p.complete(request(m, f"r{i}")) for i in range(4) for m in ("m/a", "m/b")))
        assert (one.max_in_flight, three.max_in_flight) == (2, 2)


async def test_timeout_comes_from_the_catalog_unless_overridden() -> None:
    with ScriptedServer(lambda b, h: Reply(delay_s=1.0)) as server:
        cat = catalog({"p": {"base_url": server.base_url, "timeout_s": 0.2}}, {"m/a": {"provider": "p"}})
        for kwargs, shown in (({}, "0.2s"), ({"timeout_s": 0.3}, "0.3s")):
            async with http(cat, **kwargs) as p:
                with pytest.raises(ProviderError, match=f"timed out after {shown}"):
                    await p.complete(request())


# ---- max_tokens and the context window -------------------------------------------------------

def test_catalog_max_tokens_caps_the_request_and_the_window_is_checked() -> None:
    info = catalog({"p": {"base_url": "http://127.0.0.1:9/v1"}},
                   {"m/a": {"provider": "p", "context_window": 100, "max_tokens": 10}}).get("m/a")
    assert fit_request(info, request(max_tokens=2048)).max_tokens == 10
    assert fit_request(info, request(max_tokens=5)).max_tokens == 5  # smaller asks are kept
    fits = request(text="x" * (90 * MAX_BYTES_PER_TOKEN), max_tokens=10)  # at least 90 + 10 = 100
    assert fit_request(info, fits) == fits
    with pytest.raises(ContextWindowError) as e:
        fit_request(info, request(text="x" * (90 * MAX_BYTES_PER_TOKEN + 1), max_tokens=10))
    assert str(e.value) == (f"model 'm/a': the prompt is at least 91 tokens (its UTF-8 bytes / {MAX_BYTES_PER_TOKEN}) "
                            "+ max_tokens 10 > context_window 100; not sent (shorten the prompt, or lower "
                            "max_tokens in the config or the catalog)")
    # bytes, not characters: CJK text takes about a token per character
    assert request(text="数" * 60).min_prompt_tokens() == 30


async def test_capped_max_tokens_is_what_is_sent_and_stored(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        cat = catalog({"p": {"base_url": server.base_url}}, {"m/a": {"provider": "p", "max_tokens": 64}})
        store = CallStore(tmp_path / "calls.db")
        async with http(cat) as p:
            trace = await Runner(p, store).run_item(MoAConfig.single("m/a"), user_prompt("hi"))
        assert not trace.failed and server.requests[0][0]["max_tokens"] == 64
        store.close()
    [row] = sqlite_utils.Database(tmp_path / "calls.db")["responses"].rows
    assert json.loads(row["request_json"])["max_tokens"] == 64


async def test_a_prompt_past_the_window_is_refused_before_sending_and_not_stored(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        cat = catalog({"p": {"base_url": server.base_url}}, {"m/a": {"provider": "p", "context_window": 1000}})
        store = CallStore(tmp_path / "calls.db")
        async with http(cat) as p:
            trace = await Runner(p, store).run_item(MoAConfig.single("m/a", max_tokens=100),
                                                    user_prompt("word " * 2000))
            with pytest.raises(ContextWindowError):  # a direct caller of the provider is refused too
                await p.complete(request(text="word " * 2000))
        assert trace.failed and "context_window 1,000; not sent" in (trace.error or "")
        assert "m/a" in (trace.error or "") and "at least 1,667 tokens" in (trace.error or "")
        assert server.requests == []
        assert store.calls() == [] and store.spend().calls == 0
        store.close()


def test_run_command_with_a_prompt_past_the_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ScriptedServer() as server:
        cat = tmp_path / "cat.toml"
        cat.write_text(f'[providers.p]\nbase_url = "{server.base_url}"\n'
                       '[models."m/a"]\nprovider = "p"\ninput_price = 1\noutput_price = 1\ncontext_window = 512\n')
        store = tmp_path / "calls.db"
        config = tmp_path / "single.json"
        config.write_text(json.dumps({"aggregator": {"model": "m/a", "max_tokens": 256}}))
        code = main(["run", "--config", str(config), "--catalog", str(cat), "--backend", "http",
                     "--store", str(store), "--prompt", "x" * 30_000])
        err = capsys.readouterr().err
    assert code == 1 and server.requests == []
    [line] = err.strip().splitlines()
    assert "context_window 512; not sent" in line and "'m/a'" in line and "at least 5,000 tokens" in line
    assert CallStore(store).calls() == []


# ---- flags reach the provider ----------------------------------------------------------------

def test_concurrency_flag_reaches_the_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ScriptedServer(lambda b, h: Reply(delay_s=0.05)) as server:
        cat = tmp_path / "cat.toml"
        cat.write_text(f'[providers.p]\nbase_url = "{server.base_url}"\nconcurrency = 8\n'
                       + "".join(f'[models."m/{c}"]\nprovider = "p"\ninput_price = 1\noutput_price = 1\n' for c in "abcd"))
        config = tmp_path / "moa.json"
        config.write_text(json.dumps({"layers": [["m/a", "m/b", "m/c", "m/d"]], "aggregator": "m/a"}))
        code = main(["run", "--config", str(config), "--catalog", str(cat), "--backend", "http", "--no-store",
                     "--concurrency", "1", "--timeout", "30", "--prompt", "hi", "--json"])
        out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["calls"] == 5 and server.max_in_flight == 1
    assert out["wall_s"] >= out["latency_s"] > 0


# ---- what the reply says -----------------------------------------------------------------------

async def test_a_reply_naming_another_model_is_warned_once_and_traced(caplog: pytest.LogCaptureFixture) -> None:
    with ScriptedServer(lambda b, h: Reply(body=chat_body("default-model.gguf"))) as server:
        cat = catalog({"p": {"base_url": server.base_url}}, {"m/a": {"provider": "p"}})
        async with http(cat) as p:
            with caplog.at_level(logging.WARNING, logger="moa_search.providers.openai_compat"):
                trace = await Runner(p).run_item(MoAConfig.uniform(["m/a", "m/a"], "m/a", layers=2),
                                                 user_prompt("hi"))
    assert trace.model_mismatches() == [("m/a", "default-model.gguf")] * 3
    assert all(c.completion is not None and c.completion.reply_model == "default-model.gguf" for c in trace.calls)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "'m/a'" in warning.getMessage() and "'default-model.gguf'" in warning.getMessage()


async def test_same_model_in_the_reply_is_no_mismatch() -> None:
    with ScriptedServer() as server:
        async with http(catalog({"p": {"base_url": server.base_url}}, {"m/a": {"provider": "p"}})) as p:
            c = await p.complete(request())
    assert c.reply_model is None


async def test_latency_is_the_servers_own_time_when_reported() -> None:
    timings = {"prompt_n": 7, "prompt_ms": 1200.0, "predicted_n": 3, "predicted_ms": 3400.0}
    replies = {"llama": Reply(body=chat_body("m/a", timings=timings)),
               "openai": Reply(headers={"openai-processing-ms": "2500"}),
               "none": Reply()}
    with ScriptedServer(lambda b, h: replies[b["messages"][0]["content"]]) as server:
        async with http(catalog({"p": {"base_url": server.base_url}}, {"m/a": {"provider": "p"}})) as p:
            llama, openai, none = [await p.complete(request(text=t)) for t in ("llama", "openai", "none")]
    assert (llama.latency_s, llama.extra["latency_source"]) == (pytest.approx(4.6), "timings")
    assert (openai.latency_s, openai.extra["latency_source"]) == (pytest.approx(2.5), "openai-processing-ms")
    assert none.extra["latency_source"] == "on-the-wire"
    assert none.wall_s is not None and 0 < none.latency_s <= none.wall_s


async def test_latency_leaves_out_the_wait_for_a_slot_and_wall_time_keeps_it() -> None:
    """Two calls, one slot: the second waits for the first. Its latency is its own time on the
    wire; its wall time also holds the wait. The server sleeps 0.3 s per request, so the second
    waits that long at least (less only the moment the first took to start sending)."""
    with ScriptedServer(lambda b, h: Reply(delay_s=0.3)) as server:
        cat = catalog({"p": {"base_url": server.base_url, "concurrency": 1}}, {"m/a": {"provider": "p"}})
        async with http(cat) as p:
            a, b = await asyncio.gather(p.complete(request(text="a")), p.complete(request(text="b")))
    first, second = sorted((a, b), key=lambda c: c.wall_s or 0)
    assert second.wall_s is not None and first.wall_s is not None
    waited = second.wall_s - second.latency_s  # the queueing is in wall time only
    assert waited >= 0.2 and waited > first.wall_s - first.latency_s


def test_study_run_flags_reach_every_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ScriptedServer(lambda b, h: Reply(body=chat_body(b["model"], "The answer is 42."), delay_s=0.02)) as server:
        (tmp_path / "catalog.toml").write_text(
            f'[providers.p]\nbase_url = "{server.base_url}"\nconcurrency = 8\n'
            + "".join(f'[models."m/{c}"]\nprovider = "p"\ninput_price = 1\noutput_price = 1\n' for c in "abc"))
        study = tmp_path / "study.toml"
        study.write_text('[study]\nname = "flags"\nseed = 1\nbackend = "http"\n[catalog]\npath = "catalog.toml"\n'
                         '[data]\nbuiltin = "math"\ndev_fraction = 1.0\nn_items = 4\n[scorer]\nname = "numeric"\n'
                         '[space]\nmodels = ["m/a", "m/b", "m/c"]\naggregators = ["m/a"]\nlayers = 2\n'
                         'proposers = 3\n[budget]\ntrials = 1\n[sampler]\nname = "random"\n'
                         '[fidelity]\nenabled = false\n')
        code = main(["study", "run", str(study), "--runs-dir", str(tmp_path / "runs"), "--quiet", "--json",
                     "--concurrency", "1", "--timeout", "30"])
        captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(server.requests) == 16 and server.max_in_flight == 1  # 4 items x (3 proposers + aggregator)
