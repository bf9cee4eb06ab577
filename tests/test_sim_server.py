"""The sim-server over real HTTP on 127.0.0.1: wire format, validation, auth, faults, shutdown."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any, Iterator

import httpx
import pytest

from moa_search.catalog import Catalog
from moa_search.errors import ConfigError, MoASearchError
from moa_search.providers.base import ChatRequest, Completion, Message, Usage
from moa_search.sim_server import MAX_BODY_BYTES, FaultConfig, SimServer, create_app, serve_forever


def small_catalog(base_url: str = "http://127.0.0.1:9/v1", api_key_env: str = "") -> Catalog:
    return Catalog.from_dict({
        "providers": {"loopback": {"base_url": base_url, "api_key_env": api_key_env}},  # "local" is reserved
        "models": {
            "test/small": {"provider": "loopback", "input_price": 1.0, "output_price": 2.0},
            "test/big": {"provider": "loopback", "input_price": 3.0, "output_price": 6.0},
        },
    }, source="<test catalog>")


class EchoProvider:
    """Test double (not the simulated world): echoes the last user message, deterministically.

    The reply is padded with spaces so clients' ``.strip()`` is observable, and names the model
    and sample index so tests can see what reached the provider.
    """

    def __init__(self, catalog: Catalog | None = None, *, simulated: bool = True, latency_s: float = 0.05,
                 fail_with: Exception | None = None):
        self.catalog = catalog or small_catalog()
        self.simulated = simulated
        self.latency_s = latency_s
        self.fail_with = fail_with
        self.requests: list[ChatRequest] = []

    def endpoint_identity(self, model: str) -> str:
        return "test-double:echo"

    async def complete(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        info = self.catalog.get(request.model)
        user = [m.content for m in request.messages if m.role == "user"][-1]
        text = f"  echo {request.model}#{request.sample_index}: {user}  "
        usage = Usage(sum(len(m.content.split()) for m in request.messages), len(text.split()))
        return Completion(text=text, model=request.model, usage=usage,
                          cost_usd=info.cost(usage.prompt_tokens, usage.completion_tokens),
                          latency_s=self.latency_s, finish_reason="stop", simulated=self.simulated)

    async def aclose(self) -> None:
        pass


def chat_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "test/small", "messages": [{"role": "user", "content": "hello world"}],
                            "temperature": 0.7, "max_tokens": 64}
    body.update(overrides)
    return body


@pytest.fixture(scope="module")
def shared_server() -> Iterator[SimServer]:
    with SimServer(EchoProvider()) as s:
        yield s


@pytest.fixture
def server(shared_server: SimServer) -> SimServer:
    """One fault-free server for the module (starting one costs ~0.2 s), with fresh stats."""
    shared_server.reset_stats()
    return shared_server


def post(server: SimServer, body: Any = None, *, timeout: float = 5.0, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return httpx.post(f"{server.base_url}/chat/completions", timeout=timeout, **kwargs)


# ---- wire format -------------------------------------------------------------------------

def test_base_url_uses_the_picked_port_on_loopback(server: SimServer) -> None:
    assert server.port > 0
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert httpx.get(server.base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}


def test_chat_completion_has_openai_shape_usage_and_simulated_flag(server: SimServer) -> None:
    r = post(server, chat_body())
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion" and data["model"] == "test/small"
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "  echo test/small#0: hello world  "}
    assert choice["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert data["x_simulated"] is True and data["x_latency_s"] == pytest.approx(0.05)


def test_non_simulated_provider_reports_x_simulated_false() -> None:
    with SimServer(EchoProvider(simulated=False)) as s:
        assert post(s, chat_body()).json()["x_simulated"] is False


def test_x_sample_index_reaches_the_provider(server: SimServer) -> None:
    assert "#3:" in post(server, chat_body(x_sample_index=3)).json()["choices"][0]["message"]["content"]
    assert "#0:" in post(server, chat_body()).json()["choices"][0]["message"]["content"]


def test_seed_picks_the_sample_unless_x_sample_index_does(server: SimServer) -> None:
    assert "#12:" in post(server, chat_body(seed=12)).json()["choices"][0]["message"]["content"]
    assert "#3:" in post(server, chat_body(seed=12, x_sample_index=3)).json()["choices"][0]["message"]["content"]
    assert "#%d:" % (-1 % 2**31) in post(server, chat_body(seed=-1)).json()["choices"][0]["message"]["content"]


def sse_events(server: SimServer, body: dict[str, Any]) -> list[tuple[float, Any]]:
    """(arrival time, parsed body or "[DONE]") of each server-sent event."""
    out: list[tuple[float, Any]] = []
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: ")
                out.append((time.monotonic(), "[DONE]" if line == "data: [DONE]" else json.loads(line[6:])))
    return out


def test_streaming_sends_the_answer_as_openai_chunks(server: SimServer) -> None:
    events = sse_events(server, chat_body(stream=True, stream_options={"include_usage": True}))
    bodies = [b for _, b in events[:-1]]
    assert events[-1][1] == "[DONE]" and {b["object"] for b in bodies} == {"chat.completion.chunk"}
    assert len({b["id"] for b in bodies}) == 1 and bodies[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(b["choices"][0]["delta"].get("content", "") for b in bodies if b["choices"])
    assert text == "  echo test/small#0: hello world  "  # as the non-streamed reply, byte for byte
    finish = [b for b in bodies if b["choices"] and b["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finish] == ["stop"]
    assert finish[0]["x_simulated"] is True and finish[0]["x_latency_s"] == pytest.approx(0.05)
    assert bodies[-1]["choices"] == [] and bodies[-1]["usage"] == {
        "prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert "usage" not in sse_events(server, chat_body(stream=True))[-2][1]  # only when asked for


def test_streaming_spreads_the_latency_over_the_tokens() -> None:
    """The first token comes at once (this double reports no time to first token), the last one
    after (nearly) the whole latency: a floor, since sleeping never ends early."""
    with SimServer(EchoProvider(), latency_override_s=0.5) as s:
        events = sse_events(s, chat_body(stream=True, messages=[{"role": "user", "content": "x" * 80}]))
    content = [t for t, b in events if b != "[DONE]" and b["choices"] and b["choices"][0]["delta"].get("content")]
    assert len(content) >= 5  # about a token a chunk, not the answer in one piece
    assert content[-1] - content[0] >= 0.5 * (1 - 2 / len(content))
    assert events[-1][0] - content[0] >= 0.45


def test_models_lists_the_catalog(server: SimServer) -> None:
    data = httpx.get(f"{server.base_url}/models").json()
    assert data["object"] == "list"
    assert sorted(m["id"] for m in data["data"]) == ["test/big", "test/small"]


def test_the_openai_sdk_can_talk_to_it(server: SimServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=5)
    reply = client.chat.completions.create(model="test/big", messages=[{"role": "user", "content": "hi"}],
                                           temperature=0.0, max_tokens=8)
    assert reply.choices[0].message.content.strip() == "echo test/big#0: hi"
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1, 3)
    assert [m.id for m in client.models.list()] == ["test/small", "test/big"]


# ---- validation --------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, param", [
    ({"model": ""}, "model"),
    ({"model": 3}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"x_sample_index": -1}, "x_sample_index"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stop": 5}, "stop"),
    ({"top_p": 2}, "top_p"),
    ({"seed": "x"}, "seed"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens"),
    ({"n": 2}, "n"),
])
def test_bad_body_is_400_naming_the_param(server: SimServer, overrides: dict[str, Any], param: str) -> None:
    r = post(server, chat_body(**overrides))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_body_that_is_not_json_or_not_an_object_is_400(server: SimServer) -> None:
    r = post(server, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert post(server, [1, 2]).status_code == 400


def test_unknown_model_is_404_model_not_found(server: SimServer) -> None:
    r = post(server, chat_body(model="nobody/nothing"))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert server.stats.completed == 0


def test_unknown_model_from_a_provider_without_catalog_is_404() -> None:
    provider = EchoProvider()
    app_provider = type("NoCatalog", (), {  # the same double, minus the catalog attribute
        "endpoint_identity": provider.endpoint_identity, "complete": provider.complete,
        "aclose": provider.aclose})()
    with SimServer(app_provider) as s:
        assert post(s, chat_body(model="nobody/nothing")).json()["error"]["code"] == "model_not_found"
        assert httpx.get(f"{s.base_url}/models").json()["data"] == []


def test_body_over_1_mib_is_413(server: SimServer) -> None:
    big = "x" * (MAX_BODY_BYTES + 10)
    r = post(server, chat_body(messages=[{"role": "user", "content": big}]))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_body_over_1_mib_without_content_length_is_413(server: SimServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    r = post(server, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_provider_bug_is_500_and_the_server_keeps_serving() -> None:
    with SimServer(EchoProvider(fail_with=RuntimeError("boom"))) as s:
        r = post(s, chat_body())
        assert r.status_code == 500 and "boom" not in r.text
        assert httpx.get(s.base_url.removesuffix("/v1") + "/health").status_code == 200


def test_unknown_path_is_openai_style_404(server: SimServer) -> None:
    r = httpx.get(server.base_url + "/nothing")
    assert r.status_code == 404 and "error" in r.json()


# ---- auth --------------------------------------------------------------------------------

def test_bearer_auth_required_when_configured() -> None:
    with SimServer(EchoProvider(), require_api_key="s3cret-key") as s:
        missing = post(s, chat_body())
        wrong = post(s, chat_body(), headers={"Authorization": "Bearer nope"})
        right = post(s, chat_body(), headers={"Authorization": "Bearer s3cret-key"})
        assert missing.status_code == 401 and wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert "nope" not in wrong.text and "s3cret" not in wrong.text
        assert right.status_code == 200
        assert httpx.get(f"{s.base_url}/models").status_code == 401
        assert httpx.get(s.base_url.removesuffix("/v1") + "/health").status_code == 200
        assert [r.has_authorization for r in s.recorded_requests] == [False, True, True]


def test_empty_required_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="require_api_key"):
        create_app(EchoProvider(), require_api_key="")


# ---- faults ------------------------------------------------------------------------------

def test_injected_429_carries_retry_after() -> None:
    with SimServer(EchoProvider(), faults=FaultConfig(rate_429=1.0, retry_after_s=1.5)) as s:
        r = post(s, chat_body())
        assert r.status_code == 429 and r.headers["retry-after"] == "1.5"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert s.stats.faults == {"429": 1}


def test_injected_500_and_malformed() -> None:
    with SimServer(EchoProvider(), faults=FaultConfig(script=("500", "malformed", "no_usage", "ok"))) as s:
        assert post(s, chat_body()).status_code == 500
        malformed = post(s, chat_body())
        assert malformed.status_code == 200
        with pytest.raises(ValueError):
            malformed.json()
        assert "usage" not in post(s, chat_body()).json()
        assert "usage" in post(s, chat_body()).json()
        assert s.stats.faults == {"500": 1, "malformed": 1, "no_usage": 1}
        assert s.stats.statuses == {500: 1, 200: 3}


def test_injected_timeout_hangs_until_the_client_gives_up() -> None:
    with SimServer(EchoProvider(), faults=FaultConfig(rate_timeout=1.0, timeout_hang_s=30)) as s:
        with pytest.raises(httpx.ReadTimeout):
            post(s, chat_body(), timeout=0.3)
        stats = s.stats  # the client gave up; the server still holds the request, unanswered
        assert (stats.requests, stats.in_flight, stats.completed, stats.statuses) == (1, 1, 0, {})


def test_timeout_hang_ends_with_a_504_when_short() -> None:
    with SimServer(EchoProvider(), faults=FaultConfig(rate_timeout=1.0, timeout_hang_s=0.2)) as s:
        assert post(s, chat_body()).status_code == 504


def fault_sequence(seed: int, n: int = 40) -> list[int]:
    faults = FaultConfig(rate_429=0.2, rate_500=0.2, rate_malformed=0.2, seed=seed)
    with SimServer(EchoProvider(), faults=faults) as s:
        with httpx.Client(timeout=5) as client:
            return [client.post(f"{s.base_url}/chat/completions", json=chat_body()).status_code
                    for _ in range(n)]


def test_seeded_faults_are_reproducible_and_roughly_at_rate() -> None:
    first, again, other = fault_sequence(7), fault_sequence(7), fault_sequence(8)
    assert first == again
    assert first != other
    assert 3 <= first.count(429) <= 16 and 3 <= first.count(500) <= 16
    assert 8 <= first.count(200) <= 30  # ok + malformed (200 with a broken body)


@pytest.mark.parametrize("kwargs", [
    {"rate_429": 1.5}, {"rate_500": -0.1}, {"rate_429": 0.6, "rate_500": 0.6},
    {"retry_after_s": -1}, {"script": ("boom",)}, {"rate_timeout": True},
])
def test_fault_config_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="faults"):
        FaultConfig(**kwargs)


# ---- latency, concurrency, lifecycle ----------------------------------------------------

def test_sleep_latency_uses_the_completion_latency() -> None:
    with SimServer(EchoProvider(latency_s=0.3), sleep_latency=True) as s:
        t0 = time.monotonic()
        assert post(s, chat_body()).status_code == 200
        assert time.monotonic() - t0 >= 0.3


def test_latency_override_and_in_flight_stats() -> None:
    with SimServer(EchoProvider(latency_s=10.0), latency_override_s=0.25) as s:
        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=5) as client:
                replies = await asyncio.gather(*(client.post(f"{s.base_url}/chat/completions", json=chat_body())
                                                 for _ in range(5)))
            return [r.status_code for r in replies]

        t0 = time.monotonic()
        assert asyncio.run(burst()) == [200] * 5  # within the 5 s timeout: not the provider's 10 s
        elapsed = time.monotonic() - t0
        stats = s.stats
        assert elapsed >= 0.25  # each reply waited the override (a floor: a busy box only adds)
        assert stats.requests == 5 and stats.completed == 5 and stats.in_flight == 0
        assert stats.max_in_flight == 5  # all five slept at once: concurrent, not 5 x 0.25 s
        s.reset_stats()
        assert s.stats.requests == 0 and s.recorded_requests == ()


def test_stop_is_prompt_even_with_a_request_hanging() -> None:
    server = SimServer(EchoProvider(), faults=FaultConfig(rate_timeout=1.0, timeout_hang_s=30)).start()
    errors: list[BaseException] = []
    replies: list[httpx.Response] = []

    def client() -> None:
        try:
            replies.append(post(server, chat_body(), timeout=20))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 5
    while server.stats.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.stats.in_flight == 1
    server.stop()
    thread.join(5)
    assert not thread.is_alive() and not errors, errors
    # stop() woke the hanging handler, which answered; had it waited for uvicorn's graceful
    # shutdown window to cancel the handler instead, the client would have got a bare 500
    [reply] = replies
    assert reply.status_code == 504 and reply.json()["error"]["code"] == "timeout"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=1)


def test_busy_port_is_a_clear_error(server: SimServer) -> None:
    with pytest.raises(MoASearchError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        SimServer(EchoProvider(), port=server.port).start()


def test_serve_forever_on_a_busy_port_is_a_clear_error(server: SimServer) -> None:
    with pytest.raises(MoASearchError, match="cannot listen"):
        serve_forever(EchoProvider(), "127.0.0.1", server.port)


def test_start_twice_is_an_error(server: SimServer) -> None:
    with pytest.raises(MoASearchError, match="already started"):
        server.start()


def test_keep_alive_requests_are_not_delayed_by_nagle(server: SimServer) -> None:
    """Regression: without TCP_NODELAY on accepted sockets every keep-alive reply waited ~40 ms
    for the client's delayed ACK. The delay itself is measured in benchmarks/serve_load.py (a
    clock bound here would flake on a busy machine); this checks the option on the server's
    side of a live keep-alive connection (white-box: uvicorn's connection set)."""
    with httpx.Client(timeout=5) as client:
        for _ in range(2):
            assert client.get(f"{server.base_url}/models").status_code == 200
        connections = list(server._server.server_state.connections)  # type: ignore[union-attr]  # noqa: SLF001
        sockets = [c.transport.get_extra_info("socket") for c in connections]
        assert sockets and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)


async def test_serves_the_simulated_world_identically_over_http() -> None:
    """The real world, not a double: HTTP answers equal in-process answers, sample index included."""
    simulated = pytest.importorskip("moa_search.providers.simulated")
    from moa_search.providers.openai_compat import OpenAICompatProvider

    catalog = Catalog.default()
    world = simulated.SimulatedProvider(catalog, seed=3)
    with SimServer(world, catalog=catalog) as s:
        client = OpenAICompatProvider(catalog.with_base_url(s.base_url), send_sample_index=True,
                                      backoff_base_s=0.01, max_retries=1, timeout_s=10)
        try:
            for sample_index in (0, 1):
                req = ChatRequest("Qwen/Qwen1.5-72B-Chat", (Message("user", "Name three primes."),),
                                  temperature=0.7, max_tokens=256, sample_index=sample_index)
                local = await world.complete(req)
                remote = await client.complete(req)
                assert remote.text == local.text.strip()
                assert remote.usage == local.usage
                assert remote.cost_usd == pytest.approx(local.cost_usd)
                assert remote.simulated is True and remote.finish_reason == local.finish_reason
                assert remote.extra["reported_latency_s"] == pytest.approx(local.latency_s)
        finally:
            await client.aclose()
            await world.aclose()
