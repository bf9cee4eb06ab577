"""Cached-input prices: the prompt tokens a provider reports as read from its prompt cache are
billed at the price table's cache-read price, over real HTTP (a loopback server replying with
cached tokens) and through a real SQLite call store, whose hit keeps the original usage and
cost; the store migration that holds the cached count."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from moa_search.catalog import Catalog
from moa_search.errors import ConfigError
from moa_search.providers.base import ChatRequest, Completion, Message
from moa_search.providers.openai_compat import (
    OpenAICompatProvider,
    cached_prompt_tokens,
)
from moa_search.store import SCHEMA_VERSION, CallStore
from moa_search.store_backend import open_backend
from moa_search.store_schema import MIGRATIONS, init_schema
from tests.scripted_http import Reply, ScriptedServer, chat_body

PROMPT, CACHED, COMPLETION = 1000, 600, 100


def replying(usage_extra: dict[str, Any]) -> Any:
    """A server whose every answer reports PROMPT prompt tokens plus ``usage_extra``."""
    def reply(body: dict[str, Any], headers: dict[str, str]) -> Reply:
        answer = chat_body(body["model"], "cached answer")
        answer["usage"] = {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION,
                           "total_tokens": PROMPT + COMPLETION, **usage_extra}
        return Reply(200, answer)
    return reply


def catalog(base_url: str) -> Catalog:
    """gpt-4o priced from the installed genai-prices (which has a cache-read price for it), and
    a typed entry without one, both served by the loopback server."""
    return Catalog.from_dict({"providers": {"openai": {"base_url": base_url}},
                              "models": {"gpt-4o": {"provider": "openai", "price": "genai-prices"},
                                         "lab/typed": {"provider": "openai", "input_price": 3.0,
                                                       "output_price": 6.0}}}, source="<test catalog>")


def ask(model: str) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message("user", "the long shared prefix ..."),), max_tokens=64)


OPENAI_STYLE = {"prompt_tokens_details": {"cached_tokens": CACHED, "audio_tokens": 0}}


async def test_cached_tokens_cost_the_cache_read_price_and_a_store_hit_keeps_them(tmp_path: Path) -> None:
    with ScriptedServer(replying(OPENAI_STYLE)) as server:
        cat = catalog(server.base_url)
        info = cat.get("gpt-4o")
        assert info.cached_input_price is not None and info.cached_input_price < info.input_price
        provider = OpenAICompatProvider(cat, max_retries=0)
        try:
            with CallStore(tmp_path / "calls.db") as store:
                paid = await store.complete(provider, ask("gpt-4o"), role="proposer")
                hit = await store.complete(provider, ask("gpt-4o"), role="proposer")
            with CallStore(tmp_path / "calls.db") as store:  # a later process: read from the file
                later = await store.complete(provider, ask("gpt-4o"), role="proposer")
        finally:
            await provider.aclose()
    assert len(server.requests) == 1  # paid once
    assert paid.usage.cached_prompt_tokens == CACHED
    expected = ((PROMPT - CACHED) * info.input_price + CACHED * info.cached_input_price
                + COMPLETION * info.output_price) / 1e6
    assert paid.cost_usd == pytest.approx(expected)
    assert paid.cost_usd < info.cost(PROMPT, COMPLETION)  # cheaper than counting every token as new
    for served in (hit, later):
        assert served.cached and served.paid_usd == 0.0
        assert served.usage == paid.usage and served.cost_usd == paid.cost_usd
    with sqlite3.connect(tmp_path / "calls.db") as conn:
        assert conn.execute("SELECT cached_prompt_tokens FROM responses").fetchall() == [(CACHED,)]


async def one_answer(usage_extra: dict[str, Any], model: str) -> tuple[Completion, Catalog]:
    """One call over real HTTP to a server reporting ``usage_extra``, and the catalog it used."""
    with ScriptedServer(replying(usage_extra)) as server:
        cat = catalog(server.base_url)
        provider = OpenAICompatProvider(cat, max_retries=0)
        try:
            return await provider.complete(ask(model)), cat
        finally:
            await provider.aclose()


async def test_without_a_cache_read_price_cached_tokens_cost_the_input_price() -> None:
    answer, cat = await one_answer(OPENAI_STYLE, "lab/typed")
    assert cat.get("lab/typed").cached_input_price is None
    assert answer.usage.cached_prompt_tokens == CACHED
    assert answer.cost_usd == pytest.approx((PROMPT * 3.0 + COMPLETION * 6.0) / 1e6)


@pytest.mark.parametrize("usage, cached", [
    (OPENAI_STYLE, CACHED),
    ({"cached_tokens": 250}, 250),  # at the top of usage
    ({"prompt_cache_hit_tokens": 900, "prompt_cache_miss_tokens": 100}, 900),  # DeepSeek
    ({"prompt_tokens_details": None}, 0),  # vLLM without prefix caching
    ({"prompt_tokens_details": {"cached_tokens": None}, "cached_tokens": 40}, 40),
    ({}, 0),
    # not a count within the prompt: ignored, so the tokens cost the full input price
    ({"prompt_tokens_details": {"cached_tokens": PROMPT + 1}}, 0),
    ({"prompt_tokens_details": {"cached_tokens": -5}}, 0),
    ({"prompt_tokens_details": {"cached_tokens": "600"}}, 0),
    ({"prompt_tokens_details": {"cached_tokens": True}}, 0),
])
def test_where_providers_report_cached_tokens(usage: dict[str, Any], cached: int) -> None:
    assert cached_prompt_tokens({"prompt_tokens": PROMPT, **usage}, PROMPT) == cached


async def test_reported_counts_outside_the_prompt_are_billed_at_the_full_input_price() -> None:
    answer, cat = await one_answer({"prompt_tokens_details": {"cached_tokens": PROMPT * 2}}, "gpt-4o")
    assert answer.usage.cached_prompt_tokens == 0
    assert answer.cost_usd == pytest.approx(cat.get("gpt-4o").cost(PROMPT, COMPLETION))


def test_a_store_from_before_the_cached_column_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    backend = open_backend(path)
    try:
        init_schema(backend, migrations=MIGRATIONS[:2])  # a store made before migration 3
    finally:
        backend.close()
    with sqlite3.connect(path) as conn:
        assert "cached_prompt_tokens" not in {r[1] for r in conn.execute("PRAGMA table_info(responses)")}
        conn.execute("INSERT INTO responses (key, endpoint, model, request_json, text, prompt_tokens,"
                     " completion_tokens, cost_usd, latency_s, finish_reason, simulated, created_at)"
                     " VALUES ('k', 'e', 'm', '{}', 'old answer', 10, 2, 0.5, 1.0, 'stop', 0, 'then')")
    with CallStore(path) as store:
        old = store.lookup("k")
    assert old is not None and (old.text, old.usage.cached_prompt_tokens, old.cost_usd) == ("old answer", 0, 0.5)
    with sqlite3.connect(path) as conn:
        meta = dict(conn.execute("SELECT name, value FROM store_meta"))
    assert meta["schema_version"] == str(SCHEMA_VERSION) == "3"


def test_a_typed_cache_read_price_is_used_and_cannot_be_mixed_with_the_database() -> None:
    typed = {"provider": "p", "input_price": 2.0, "output_price": 8.0, "cached_input_price": 0.5}
    cat = Catalog.from_dict({"providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
                             "models": {"lab/typed": typed}}, source="<t>")
    assert cat.get("lab/typed").cost(PROMPT, COMPLETION, CACHED) == pytest.approx(
        ((PROMPT - CACHED) * 2.0 + CACHED * 0.5 + COMPLETION * 8.0) / 1e6)
    mixed = {"provider": "p", "price": "genai-prices", "cached_input_price": 0.5}
    with pytest.raises(ConfigError, match=r"models\.\"gpt-4o\"\.price.*not both"):
        Catalog.from_dict({"providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
                           "models": {"gpt-4o": mixed}}, source="<t>")
    with pytest.raises(ConfigError, match="cached_input_price: expected a number"):
        Catalog.from_dict({"providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
                           "models": {"lab/typed": {**typed, "cached_input_price": "cheap"}}}, source="<t>")
