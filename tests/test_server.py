"""The preset server, over real HTTP on 127.0.0.1, with the official ``openai`` client."""

import asyncio
import json
import socket
import threading
import time
from typing import Iterator

import httpx
import openai
import pytest
import uvicorn

from moa_search.catalog import Catalog
from moa_search.config import MoAConfig
from moa_search.errors import ConfigError, MoASearchError
from moa_search.preset import PresetFile, from_config
from moa_search.providers.base import ChatRequest, Completion
from moa_search.runner import Runner
from moa_search.server import create_server_app, listen
from moa_search.serving import ConnectionLimits, uvicorn_config
from tests.doubles import RecordingProvider

CATALOG = Catalog.default()
LLAMA8, MIX8x7, QWEN72 = ("meta-llama/Llama-3-8b-chat-hf", "mistralai/Mixtral-8x7B-Instruct-v0.1",
                          "Qwen/Qwen1.5-72B-Chat")
CONFIG = MoAConfig.uniform([LLAMA8, MIX8x7], QWEN72, layers=3)  # 2 + 2 proposers, 1 aggregator
PRESET = from_config("tuned-moa", CONFIG, CATALOG)
N_CALLS = 5
ANSWER = f"answer from {QWEN72}#0"


class ServerThread:
    """uvicorn on a background thread, bound to a free port on 127.0.0.1, with the connection
    handling ``server.serve`` runs (``serving.uvicorn_config``)."""

    def __init__(self, app, limits: ConnectionLimits = ConnectionLimits(), log_level: str = "warning"):
        self.sock = listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(app, self.sock, limits, log_level=log_level,
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def serving(provider, preset: PresetFile = PRESET, store=None, **kw) -> ServerThread:
    return ServerThread(create_server_app(preset, lambda: Runner(provider, store), **kw))


def client(server: ServerThread, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with serving(RecordingProvider()) as s:
        yield s


def ask(model: str = "tuned-moa", content: str = "Name a prime.", **kw) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **kw}


def test_completion_sums_usage_over_inner_calls_and_reports_cost(server):
    raw = client(server).chat.completions.with_raw_response.create(**ask())
    completion = raw.parse()
    assert completion.model == "tuned-moa"
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (10 * N_CALLS, 5 * N_CALLS, 15 * N_CALLS)
    assert float(raw.headers["x-moa-cost-usd"]) == pytest.approx(0.001 * N_CALLS)
    assert raw.headers["x-moa-calls"] == str(N_CALLS)
    assert raw.headers["x-moa-config-hash"] == CONFIG.config_hash
    assert "x-moa-simulated" not in raw.headers  # the double's answers are not simulated


def test_request_messages_reach_every_agent():
    provider = RecordingProvider()
    with serving(provider) as s:
        client(s).chat.completions.create(model="tuned-moa", messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Name "}, {"type": "text", "text": "a prime."}]}])
    assert len(provider.requests) == N_CALLS
    first_layer = provider.requests[:2]
    assert all([m.to_dict() for m in r.messages] == [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Name a prime."}]
               for r in first_layer)
    aggregator = provider.requests[-1]
    assert aggregator.model == QWEN72 and "answer from" in aggregator.messages[0].content


def test_streaming_sends_openai_chunks_then_done(server):
    raw = client(server).chat.completions.with_raw_response.create(
        **ask(), stream=True, stream_options={"include_usage": True})
    assert float(raw.headers["x-moa-cost-usd"]) == pytest.approx(0.001 * N_CALLS)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].usage.total_tokens == 15 * N_CALLS and all(c.model == "tuned-moa" for c in chunks)


def test_streaming_wire_format(server):
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=ask(stream=True), timeout=20) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    bodies = [json.loads(e[6:]) for e in events[:-1]]
    assert {b["object"] for b in bodies} == {"chat.completion.chunk"}
    assert len({b["id"] for b in bodies}) == 1
    assert bodies[0]["choices"][0]["delta"]["role"] == "assistant"
    assert bodies[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert "usage" not in bodies[-1]  # only with stream_options.include_usage
    assert {b["model"] for b in bodies} == {"tuned-moa"}


def test_long_answers_stream_in_several_chunks():
    class Verbose(RecordingProvider):
        async def complete(self, request: ChatRequest) -> Completion:
            done = await super().complete(request)
            return Completion(" ".join(["word"] * 100), done.model, done.usage, done.cost_usd, done.latency_s)

    with serving(Verbose()) as s:
        chunks = list(client(s).chat.completions.create(**ask(), stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 5 and "".join(pieces) == " ".join(["word"] * 100)


def test_models_list_and_retrieve(server):
    c = client(server)
    assert [m.id for m in c.models.list()] == ["tuned-moa"]
    assert c.models.retrieve("tuned-moa").id == "tuned-moa"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o")


def test_bearer_token_is_required_when_set():
    with serving(RecordingProvider(), api_key="s3cret-token") as s:
        with pytest.raises(openai.AuthenticationError) as err:
            client(s, "wrong").chat.completions.create(**ask())
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").models.list()
        r = httpx.get(f"{s.base_url}/models")
        assert r.status_code == 401 and "Missing API key" in r.json()["error"]["message"]
        ok = client(s, "s3cret-token").chat.completions.create(**ask())
        assert ok.choices[0].message.content == ANSWER


def test_empty_api_key_is_refused():
    with pytest.raises(ConfigError, match="empty API key"):
        create_server_app(PRESET, lambda: Runner(RecordingProvider()), api_key="")


def test_oversized_bodies_get_413():
    provider = RecordingProvider()
    with serving(provider, max_body_bytes=2_000) as s:
        with pytest.raises(openai.APIStatusError) as err:
            client(s).chat.completions.create(**ask(content="x" * 5_000))
        assert err.value.status_code == 413
        # chunked upload without a Content-Length is cut off too
        r = httpx.post(f"{s.base_url}/chat/completions", content=iter([b"{" + b" " * 1500, b" " * 1500 + b"}"]))
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert provider.requests == []


@pytest.mark.parametrize("body, status, param, words", [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
    ({"model": "tuned-moa"}, 400, "messages", "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model", "'model'"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model", "does not exist"),
    (ask(content="   "), 400, "messages", "non-empty content"),
    ({"model": "tuned-moa", "messages": [{"role": "system", "content": "only a system prompt"}]}, 400,
     "messages", "user message"),
    ({"model": "tuned-moa", "messages": "hi"}, 400, "messages", "non-empty list"),
    ({"model": "tuned-moa", "messages": [{"role": "user", "content": 42}]}, 400, "messages[0].content",
     "string"),
    ({"model": "tuned-moa", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", "role"),
    ({"model": "tuned-moa", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content[0]", "text content parts"),
    (ask(stream="yes"), 400, "stream", "boolean"),
    (ask(n=3), 400, "n", "n = 1"),
])
def test_malformed_requests_get_openai_style_errors(server, body, status, param, words):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server.base_url}/chat/completions", headers={"content-type": "application/json"},
                   timeout=20, **kw)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and words in error["message"]


def test_unknown_routes_are_openai_style_too(server):
    r = httpx.get(f"{server.base_url}/embeddings")
    assert r.status_code in (404, 405) and "message" in r.json()["error"]


def test_every_proposer_failing_is_a_502_with_the_reason():
    with serving(RecordingProvider(failing_models={LLAMA8, MIX8x7})) as s:
        with pytest.raises(openai.APIStatusError) as err:  # an answer, not the client's timeout
            client(s).chat.completions.create(**ask())
    assert err.value.status_code == 502
    message = err.value.body["message"]
    assert "every proposer in layer 1 failed" in message and f"injected failure for {LLAMA8}" in message


def test_a_hanging_upstream_times_out_with_504():
    class Hanging(RecordingProvider):
        async def complete(self, request: ChatRequest) -> Completion:
            await asyncio.sleep(30)
            raise AssertionError("not reached")

    with serving(Hanging(), timeout_s=0.3) as s:
        # the server's own 0.3 s timeout answers; waiting out the 30 s hang would have hit the
        # client's 20 s timeout (openai.APITimeoutError, not an APIStatusError)
        with pytest.raises(openai.APIStatusError) as err:
            client(s).chat.completions.create(**ask())
    assert err.value.status_code == 504


def test_call_store_serves_a_repeated_request_from_cache(tmp_path):
    from moa_search.store import CallStore

    provider = RecordingProvider()
    with CallStore(tmp_path / "calls.db") as store, serving(provider, store=store) as s:
        first = client(s).chat.completions.with_raw_response.create(**ask())
        second = client(s).chat.completions.with_raw_response.create(**ask())
    assert len(provider.requests) == N_CALLS  # the second answer cost nothing
    assert second.headers["x-moa-cached-calls"] == str(N_CALLS) and first.headers["x-moa-cached-calls"] == "0"
    # list cost does not depend on the cache
    assert second.headers["x-moa-cost-usd"] == first.headers["x-moa-cost-usd"]
    assert second.parse().usage.total_tokens == first.parse().usage.total_tokens


def test_simulated_world_is_flagged():
    simulated = pytest.importorskip("moa_search.providers.simulated")
    provider = simulated.SimulatedProvider(CATALOG)
    with serving(provider) as s:
        raw = client(s).chat.completions.with_raw_response.create(**ask())
    completion = raw.parse()
    assert raw.headers["x-moa-simulated"] == "true"
    assert completion.choices[0].message.content and completion.usage.total_tokens > 0
    assert float(raw.headers["x-moa-cost-usd"]) > 0


def test_busy_port_is_a_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(MoASearchError, match="cannot listen on 127.0.0.1"):
            listen("127.0.0.1", taken.getsockname()[1])
