"""The HTTP provider against the real sim-server on 127.0.0.1 (no mocks): success, accounting,
retries, Retry-After, client errors, dead endpoints, malformed replies, limits and key hygiene."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable, Iterator

import pytest
from aiolimiter import AsyncLimiter

from moa_search.catalog import Catalog
from moa_search.errors import ConfigError, UnknownModelError
from moa_search.providers.base import AuthError, ChatRequest, MalformedReplyError, Message, Provider, ProviderError
from moa_search.providers.openai_compat import (OpenAICompatProvider, _acquire, estimate_prompt_tokens,
                                                parse_chat_reply, parse_retry_after, scrub)
from moa_search.sim_server import FaultConfig, SimServer
from tests.test_sim_server import EchoProvider, small_catalog

SECRET = "sk-test-NEVER-LEAK-4f9a2c"
KEY_ENV = "MOA_TEST_API_KEY"


def request(model: str = "test/small", text: str = "hello world", **kwargs: Any) -> ChatRequest:
    return ChatRequest(model, (Message("system", "be brief"), Message("user", text)), **kwargs)


@pytest.fixture
def start_server() -> Iterator[Callable[..., SimServer]]:
    servers: list[SimServer] = []

    def start(**kwargs: Any) -> SimServer:
        provider = kwargs.pop("provider", None) or EchoProvider()
        servers.append(SimServer(provider, **kwargs).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
async def make_provider() -> AsyncIterator[Callable[..., OpenAICompatProvider]]:
    providers: list[OpenAICompatProvider] = []

    def make(base_url: str, *, api_key_env: str = "", **kwargs: Any) -> OpenAICompatProvider:
        options: dict[str, Any] = {"timeout_s": 5.0, "max_retries": 3, "backoff_base_s": 0.01,
                                   "backoff_max_s": 0.2, "env": {}}
        options.update(kwargs)
        providers.append(OpenAICompatProvider(small_catalog(base_url, api_key_env), **options))
        return providers[-1]

    yield make
    for p in providers:
        await p.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- success and accounting --------------------------------------------------------------

async def test_success_text_usage_cost_and_flags(start_server, make_provider) -> None:
    server = start_server()
    provider = make_provider(server.base_url)
    assert isinstance(provider, Provider)
    t0 = time.perf_counter()
    c = await provider.complete(request("test/big", temperature=0.3, max_tokens=77, sample_index=5))
    outside = time.perf_counter() - t0
    assert c.text == "echo test/big#0: hello world"  # stripped; the sample index is not sent
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (4, 4)
    assert c.cost_usd == pytest.approx((4 * 3.0 + 4 * 6.0) / 1e6)
    assert c.model == "test/big" and c.finish_reason == "stop" and c.ttft_s is None
    assert c.simulated is True and c.cached is False
    assert c.extra["attempts"] == 1 and c.extra["reported_latency_s"] == pytest.approx(0.05)
    # the model's latency is the server's reported time (not ours on the wire); the wall time is
    # ours, in seconds, inside what the caller measured around the call
    assert c.latency_s == pytest.approx(0.05) and c.extra["latency_source"] == "x_latency_s"
    assert 0 < c.extra["wall_s"] <= outside
    [sent] = server.recorded_requests
    assert sent.body == {"model": "test/big", "temperature": 0.3, "max_tokens": 77,
                         "messages": [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": "hello world"}]}
    assert sent.has_authorization is False


async def test_simulated_only_when_the_reply_says_so(start_server, make_provider) -> None:
    server = start_server(provider=EchoProvider(simulated=False))
    c = await make_provider(server.base_url).complete(request())
    assert c.simulated is False


async def test_sample_index_sent_only_when_asked(start_server, make_provider) -> None:
    server = start_server()
    c = await make_provider(server.base_url, send_sample_index=True).complete(request(sample_index=2))
    assert c.text.startswith("echo test/small#2:")
    assert server.recorded_requests[-1].body["x_sample_index"] == 2


async def test_endpoint_identity_is_the_base_url(make_provider) -> None:
    provider = make_provider("http://127.0.0.1:8000/v1", api_key_env=KEY_ENV, env={KEY_ENV: SECRET})
    assert provider.endpoint_identity("test/small") == "http://127.0.0.1:8000/v1"
    assert SECRET not in repr(provider)
    with pytest.raises(UnknownModelError):
        provider.endpoint_identity("nobody/nothing")


# ---- retries -----------------------------------------------------------------------------

async def test_retries_429_500_timeout_then_succeeds(start_server, make_provider) -> None:
    server = start_server(faults=FaultConfig(script=("429", "500", "timeout", "ok"), timeout_hang_s=30))
    provider = make_provider(server.base_url, timeout_s=0.3, max_retries=3)
    c = await provider.complete(request())
    assert c.text.startswith("echo") and c.extra["attempts"] == 4
    assert server.stats.faults == {"429": 1, "500": 1, "timeout": 1}
    # latency_s is the good attempt's (or the server's reported 0.05 s), never the wall time,
    # which also holds the 0.3 s hang: a floor that load can only raise, not a speed bound
    assert c.extra["wall_s"] - c.latency_s >= 0.25


async def test_gives_up_after_max_retries_with_the_last_status(start_server, make_provider) -> None:
    server = start_server(faults=FaultConfig(rate_500=1.0))
    with pytest.raises(ProviderError) as info:
        await make_provider(server.base_url, max_retries=2).complete(request())
    assert info.value.status == 500 and info.value.retryable
    assert "3 attempts" in str(info.value) and "HTTP 500" in str(info.value)
    assert str(info.value).startswith(server.base_url)
    assert server.stats.requests == 3


async def test_persistent_timeout_is_a_provider_error(start_server, make_provider) -> None:
    server = start_server(faults=FaultConfig(rate_timeout=1.0, timeout_hang_s=30))
    with pytest.raises(ProviderError, match=r"failed after 2 attempts: timed out after 0\.2s"):
        await make_provider(server.base_url, timeout_s=0.2, max_retries=1).complete(request())
    assert server.stats.requests == 2 and server.stats.completed == 0  # gave up on both hangs


@pytest.mark.parametrize("status", ["429", "503"])
async def test_retry_after_is_honoured(start_server, make_provider, status: str, caplog) -> None:
    caplog.set_level(logging.INFO)
    server = start_server(faults=FaultConfig(script=(status,), retry_after_s=0.6))
    provider = make_provider(server.base_url, backoff_base_s=0.001, backoff_max_s=5.0)
    t0 = time.monotonic()
    c = await provider.complete(request())
    assert time.monotonic() - t0 >= 0.6  # a floor: the wait asked for, which load only lengthens
    assert c.extra["attempts"] == 2
    assert "retrying in 0.60s" in caplog.text  # the server's 0.6 s, not the 0.001 s backoff


async def test_retry_after_longer_than_backoff_max_fails_fast(start_server, make_provider) -> None:
    server = start_server(faults=FaultConfig(rate_429=1.0, retry_after_s=3600))
    with pytest.raises(ProviderError, match="retry after 3600s") as info:
        await make_provider(server.base_url, backoff_max_s=1.0).complete(request())
    assert info.value.status == 429
    assert server.stats.requests == 1  # refused at once: no retry, no wait


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = datetime(2024, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
    later = now + timedelta(seconds=42)
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"), now=now) == pytest.approx(42)
    assert parse_retry_after("Sat, 01 Jun 2024 11:00:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("nan") is None


# ---- client errors: no retry -------------------------------------------------------------

async def test_401_is_auth_error_without_retry_and_never_leaks_the_key(start_server, make_provider, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_server(require_api_key="the-right-key")
    provider = make_provider(server.base_url, api_key_env=KEY_ENV, env={KEY_ENV: SECRET})
    with pytest.raises(AuthError) as info:
        await provider.complete(request())
    assert info.value.status == 401 and "HTTP 401" in str(info.value) and "Incorrect API key" in str(info.value)
    assert server.stats.requests == 1
    for text in (str(info.value), repr(info.value), repr(provider), caplog.text):
        assert SECRET not in text
    assert server.recorded_requests[0].has_authorization


async def test_right_key_is_sent_as_bearer(start_server, make_provider) -> None:
    server = start_server(require_api_key=SECRET)
    provider = make_provider(server.base_url, api_key_env=KEY_ENV, env={KEY_ENV: SECRET})
    assert (await provider.complete(request())).text.startswith("echo")


async def test_key_is_read_from_env_at_call_time(start_server, make_provider) -> None:
    server = start_server(require_api_key=SECRET)
    env: dict[str, str] = {}
    provider = make_provider(server.base_url, api_key_env=KEY_ENV, env=env)
    with pytest.raises(AuthError, match=f"environment variable {KEY_ENV} is not set"):
        await provider.complete(request())
    assert server.stats.requests == 0  # nothing was sent without a key
    env[KEY_ENV] = SECRET
    assert (await provider.complete(request())).text.startswith("echo")


async def test_400_is_not_retried_and_quotes_the_server(start_server, make_provider) -> None:
    server = start_server()
    with pytest.raises(ProviderError) as info:
        await make_provider(server.base_url).complete(request(temperature=5.0))
    assert info.value.status == 400 and not isinstance(info.value, AuthError)
    assert "temperature must be a number in 0 .. 2" in str(info.value)
    assert server.stats.requests == 1


async def test_404_unknown_model_is_not_retried(start_server, make_provider) -> None:
    only_big = Catalog.from_dict({"providers": {"p": {"base_url": "http://x.invalid/v1"}},
                                  "models": {"test/big": {"provider": "p", "input_price": 0, "output_price": 0}}},
                                 source="<server catalog>")
    server = start_server(provider=EchoProvider(only_big))
    with pytest.raises(ProviderError, match="does not exist") as info:
        await make_provider(server.base_url).complete(request("test/small"))
    assert info.value.status == 404 and server.stats.requests == 1


def test_echoed_keys_are_scrubbed() -> None:
    assert scrub(f"Incorrect API key provided: {SECRET}", SECRET) == "Incorrect API key provided: ***"
    assert scrub(f"masked sk-...{SECRET[-4:]}", SECRET) == "masked sk-...***"
    assert scrub(f"masked sk-****{SECRET[-4:]}.", SECRET) == "masked sk-*******."
    assert scrub("an id ending 4f9a2c is not the key", SECRET) == "an id ending 4f9a2c is not the key"
    assert scrub("anything", None) == "anything"


# ---- dead endpoints and malformed replies ------------------------------------------------

async def test_dead_endpoint_is_cannot_connect(make_provider) -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(ProviderError) as info:
        await make_provider(base_url, max_retries=2).complete(request())
    message = str(info.value)
    assert message.startswith(f"cannot connect to {base_url}") and "3 attempts" in message
    assert info.value.endpoint == base_url and info.value.status is None


async def test_malformed_json_is_retried_then_succeeds(start_server, make_provider) -> None:
    server = start_server(faults=FaultConfig(script=("malformed", "ok")))
    c = await make_provider(server.base_url).complete(request())
    assert c.extra["attempts"] == 2


async def test_persistent_malformed_json_uses_the_one_retry_budget(start_server, make_provider) -> None:
    server = start_server(faults=FaultConfig(rate_malformed=1.0))
    with pytest.raises(MalformedReplyError, match=r"not valid JSON \(5 attempts\)"):
        await make_provider(server.base_url, max_retries=4).complete(request())
    assert server.stats.requests == 5  # no separate, smaller cap for malformed replies


async def test_reply_without_usage_is_refused(start_server, make_provider) -> None:
    server = start_server(faults=FaultConfig(script=("no_usage",)))
    with pytest.raises(MalformedReplyError) as info:
        await make_provider(server.base_url).complete(request())
    message = str(info.value)
    assert message.startswith(server.base_url) and "'test/small'" in message and "usage" in message
    assert server.stats.requests == 1


@pytest.mark.parametrize("data, fragment", [
    ([], "not a JSON object"),
    ({"usage": {}}, "no choices"),
    ({"choices": []}, "no choices"),
    ({"choices": [{"message": {"role": "assistant"}}]}, "no message content"),
    ({"choices": [{"message": {"content": "x"}}]}, "no 'usage'"),
    ({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 1}}, "usage.completion_tokens"),
    ({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": -1, "completion_tokens": 1}},
     "usage.prompt_tokens"),
    ({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": True, "completion_tokens": 1}},
     "usage.prompt_tokens"),
])
def test_parse_chat_reply_rejects_what_cannot_be_accounted(data: Any, fragment: str) -> None:
    with pytest.raises(MalformedReplyError, match=fragment) as info:
        parse_chat_reply(data, endpoint="http://e/v1", model="m")
    assert str(info.value).startswith("http://e/v1: reply for model 'm'") or "not a JSON object" in str(info.value)


def test_an_error_wrapped_in_a_200_is_quoted() -> None:
    with pytest.raises(MalformedReplyError, match=r"no choices \(the server said: quota exceeded\)"):
        parse_chat_reply({"error": {"message": "quota\n exceeded"}}, endpoint="e", model="m")


def test_parse_chat_reply_reads_finish_reason_and_simulated_flag() -> None:
    text, usage, finish, extras = parse_chat_reply(
        {"choices": [{"message": {"content": " hi "}, "finish_reason": "length"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 9}, "x_simulated": True},
        endpoint="e", model="m")
    assert (text, usage.total_tokens, finish, extras) == (" hi ", 12, "length", {"x_simulated": True})


# ---- concurrency and rate limits ---------------------------------------------------------

async def test_concurrency_cap_per_endpoint_is_respected(start_server, make_provider) -> None:
    server = start_server(latency_override_s=0.15)
    provider = make_provider(server.base_url, max_concurrency_per_endpoint=3)
    replies = await asyncio.gather(*(provider.complete(request(text=f"q{i}")) for i in range(10)))
    assert len(replies) == 10
    assert server.stats.max_in_flight == 3


async def test_requests_per_minute_limit_paces_requests(start_server, make_provider) -> None:
    server = start_server()
    provider = make_provider(server.base_url, requests_per_minute=1200)  # 20 a second
    t0 = time.monotonic()
    await asyncio.gather(*(provider.complete(request(text=f"q{i}")) for i in range(30)))
    assert time.monotonic() - t0 >= 0.4  # 20 pass at once, the other 10 drain at 20/s


async def test_tokens_per_minute_limit_paces_requests(start_server, make_provider) -> None:
    server = start_server()
    provider = make_provider(server.base_url, tokens_per_minute=60 * 300)  # 300 tokens a second
    req = request(max_tokens=100)
    cost = estimate_prompt_tokens(req) + 100
    assert 100 < cost < 150
    t0 = time.monotonic()
    await asyncio.gather(*(provider.complete(req) for _ in range(6)))
    assert time.monotonic() - t0 >= (6 * cost - 300) / 300 - 0.1


async def test_a_request_larger_than_the_token_bucket_is_charged_in_full() -> None:
    bucket = AsyncLimiter(10, 0.1)  # 100 tokens a second, at most 10 at once
    t0 = time.monotonic()
    await _acquire(bucket, 50)
    assert time.monotonic() - t0 >= 0.35  # (50 - 10) / 100 s, not "capped at 10 and free"


@pytest.mark.parametrize("kwargs, field", [
    ({"timeout_s": 0}, "timeout_s"), ({"max_retries": -1}, "max_retries"),
    ({"max_concurrency_per_endpoint": 0}, "max_concurrency_per_endpoint"),
    ({"requests_per_minute": 0}, "requests_per_minute"), ({"backoff_base_s": -1}, "backoff_base_s"),
])
def test_bad_constructor_values_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        OpenAICompatProvider(small_catalog(), **kwargs)


async def test_aclose_is_idempotent_and_the_provider_reopens(start_server, make_provider) -> None:
    server = start_server()
    provider = make_provider(server.base_url)
    await provider.complete(request())
    await provider.aclose()
    await provider.aclose()
    assert (await provider.complete(request())).text.startswith("echo")


async def test_connection_is_reused(start_server, make_provider) -> None:
    """One shared client: sequential calls ride one keep-alive connection."""
    server = start_server()
    provider = make_provider(server.base_url)
    for i in range(5):
        await provider.complete(request(text=f"q{i}"))
    pool = provider._http()._transport._pool  # noqa: SLF001 - white-box check of pooling
    assert len(pool.connections) == 1
