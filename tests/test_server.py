"""The preset server, over real HTTP on 127.0.0.1, with the official ``openai`` client."""

import asyncio
import json
import re
import socket
import sqlite3
import threading
import time
from dataclasses import replace
from typing import Iterator

import httpx
import openai
import pytest
import uvicorn

from moa_search.catalog import Catalog
from moa_search.config import MoAConfig
from moa_search.errors import ConfigError, MoASearchError
from moa_search.preset import PresetFile, from_config
from moa_search.providers.base import ChatRequest, Completion, ProviderError
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
ANSWER = re.compile(rf"answer from {re.escape(QWEN72)}#(\d+)")
"""The double answers with the sample index: each request is a new draw (``server``)."""


def draw_of(text: str | None) -> int:
    match = ANSWER.fullmatch(text or "")
    assert match, text
    return int(match.group(1))


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


def test_usage_counts_the_answer_as_completion_and_every_other_token_as_prompt(server):
    raw = client(server).chat.completions.with_raw_response.create(**ask())
    completion = raw.parse()
    assert completion.model == "tuned-moa"
    assert draw_of(completion.choices[0].message.content) >= 1  # a fresh draw, not the search's 0
    assert completion.choices[0].finish_reason == "stop"
    # the double: 10 prompt + 5 completion tokens a call; the answer is the aggregator's 5
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (15 * N_CALLS - 5, 5, 15 * N_CALLS)
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
    chunks = list(client(server).chat.completions.create(
        **ask(), stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert draw_of(text) >= 1
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
    assert bodies[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert "usage" not in bodies[-1]  # only with stream_options.include_usage
    # what the stream cost, where a non-streamed answer has its x-moa-* headers
    assert bodies[-1]["x_moa"]["cost_usd"] == pytest.approx(0.001 * N_CALLS)
    assert bodies[-1]["x_moa"]["calls"] == N_CALLS and bodies[-1]["x_moa"]["simulated"] is False
    assert {b["model"] for b in bodies} == {"tuned-moa"}


def test_the_aggregator_streams_its_tokens_as_they_arrive():
    """The double's aggregator sends its first piece, then waits until the client has it before
    sending the rest: the request could not succeed if the server held the text back."""
    client_has_first = threading.Event()

    class Streaming(RecordingProvider):
        async def stream(self, request: ChatRequest, on_delta) -> Completion:
            done = await self.complete(request)
            await on_delta("first ")
            if not await asyncio.to_thread(client_has_first.wait, 10):
                raise ProviderError("the client never got the first piece", status=500)
            await on_delta("second")
            return replace(done, text="first second")

    provider = Streaming()
    with serving(provider) as s:
        pieces = []
        for chunk in client(s).chat.completions.create(**ask(), stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                client_has_first.set()
    assert pieces == ["first ", "second"]
    assert len(provider.requests) == N_CALLS  # proposers called whole, the aggregator streamed


def test_a_stream_that_fails_before_its_first_token_is_an_http_error_and_after_it_an_error_event():
    class BreaksMidway(RecordingProvider):
        async def stream(self, request: ChatRequest, on_delta) -> Completion:
            await self.complete(request)
            await on_delta("half an ans")
            raise ProviderError("the upstream dropped the stream", status=500)

    with serving(RecordingProvider(failing_models={LLAMA8, MIX8x7})) as s:
        with pytest.raises(openai.APIStatusError) as err:
            client(s).chat.completions.create(**ask(), stream=True)
    assert err.value.status_code == 502 and "every proposer in layer 1 failed" in err.value.body["message"]
    with serving(BreaksMidway()) as s:
        got = []
        with pytest.raises(openai.APIError, match="the upstream dropped the stream"):
            for chunk in client(s).chat.completions.create(**ask(), stream=True):
                got.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert got == ["half an ans"]


class StreamsInWords(RecordingProvider):
    """Streams its answer a word a piece; ``streamed`` counts the calls made by streaming."""

    def __init__(self) -> None:
        super().__init__()
        self.streamed = 0

    async def stream(self, request: ChatRequest, on_delta) -> Completion:
        self.streamed += 1
        done = await self.complete(request)
        for word in done.text.split(" "):
            await on_delta(word + " ")
        return done


def test_a_streamed_seeded_repeat_is_served_whole_from_the_store_and_paid_once(tmp_path):
    from moa_search.store import CallStore

    provider = StreamsInWords()
    with CallStore(tmp_path / "calls.db") as store, serving(provider, store=store) as s:
        streams = [[c.choices[0].delta.content for c in client(s).chat.completions.create(
            **ask(seed=5), stream=True) if c.choices and c.choices[0].delta.content] for _ in range(2)]
    assert len(streams[0]) == 3 and len(streams[1]) == 1  # relayed word by word; then from the store
    assert "".join(streams[0]).strip() == streams[1][0]
    assert provider.streamed == 1 and len(provider.requests) == N_CALLS
    with sqlite3.connect(tmp_path / "calls.db") as db:
        rows = db.execute("SELECT cached, paid_usd FROM calls WHERE role = 'aggregator' ORDER BY id").fetchall()
    assert rows == [(0, pytest.approx(0.001)), (1, 0.0)]  # stored once with its usage, then free


def test_a_client_leaving_mid_stream_stops_the_aggregator_and_the_store_keeps_the_call(tmp_path):
    """The relayed upstream call is cancelled (nobody would read its tokens), and the store logs
    it as possibly billed: its tokens so far may be charged, with no usage to count them."""
    from moa_search.store import CallStore

    cancelled = threading.Event()

    class Endless(RecordingProvider):
        async def stream(self, request: ChatRequest, on_delta) -> Completion:
            await self.complete(request)
            try:
                for i in range(10_000):
                    await on_delta(f"token{i} ")
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise ProviderError("the client never left", status=500)

    with CallStore(tmp_path / "calls.db") as store, serving(Endless(), store=store) as s:
        with httpx.stream("POST", f"{s.base_url}/chat/completions", json=ask(stream=True), timeout=20) as r:
            for line in r.iter_lines():
                if "token2 " in line:
                    break  # and the connection closes
        assert cancelled.wait(30)
        deadline = time.monotonic() + 30  # the store's write follows the cancellation
        while store.inflight() or not store.calls(role="aggregator"):
            assert time.monotonic() < deadline, store.inflight()
            time.sleep(0.01)
    with sqlite3.connect(tmp_path / "calls.db") as db:
        rows = db.execute("SELECT role, possibly_billed, error FROM calls ORDER BY id").fetchall()
    assert [r[:2] for r in rows] == [("proposer", 0)] * 4 + [("aggregator", 1)]
    assert "cancelled while in flight" in rows[-1][2]


async def test_a_stream_cancelled_before_its_first_token_cancels_its_choices():
    """E.g. the server shutting down while the proposers run: no choice is left running unread."""
    from moa_search.server import _parse_chat, _Stream

    class Hangs(RecordingProvider):
        async def complete(self, request: ChatRequest) -> Completion:
            self.requests.append(request)
            await asyncio.Event().wait()  # never answers
            raise AssertionError("unreachable")

    provider = Hangs()
    stream = _Stream(Runner(provider), PRESET, _parse_chat(ask(stream=True, n=2), PRESET.name), 600, "id")
    started = asyncio.ensure_future(stream.start())
    while len(provider.requests) < 4:  # both choices' first layer in flight
        await asyncio.sleep(0.01)
    started.cancel()
    with pytest.raises(asyncio.CancelledError):
        await started
    _, running = await asyncio.wait(stream.tasks, timeout=30)  # a guard against hanging, not a speed bound
    assert not running and all(t.cancelled() for t in stream.tasks)


def test_an_answer_that_cannot_stream_comes_in_one_piece():
    class Verbose(RecordingProvider):  # no ``stream`` method: like the in-process simulated world
        async def complete(self, request: ChatRequest) -> Completion:
            done = await super().complete(request)
            return replace(done, text=" ".join(["word"] * 100))

    with serving(Verbose()) as s:
        chunks = list(client(s).chat.completions.create(**ask(), stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert pieces == [" ".join(["word"] * 100)]


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
        assert draw_of(ok.choices[0].message.content) >= 1


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
    (ask(n=9), 400, "n", "1 .. 8"),
    (ask(n=0), 400, "n", "1 .. 8"),
    (ask(temperature=2.5), 400, "temperature", "0 .. 2"),
    (ask(top_p=-0.1), 400, "top_p", "0 .. 1"),
    (ask(max_tokens=0), 400, "max_tokens", ">= 1"),
    (ask(max_completion_tokens="5"), 400, "max_completion_tokens", ">= 1"),
    (ask(max_tokens=5, max_completion_tokens=6), 400, "max_tokens", "disagree"),
    (ask(stop=["a", "b", "c", "d", "e"]), 400, "stop", "up to 4"),
    (ask(stop=""), 400, "stop", "non-empty string"),
    (ask(seed=1.5), 400, "seed", "integer"),
    (ask(user=7), 400, "user", "string"),
    (ask(stream_options={"include_usage": True}), 400, "stream_options", "only allowed"),
    (ask(stream=True, stream_options={"include_obfuscation": False}), 400,
     "stream_options.include_obfuscation", "not supported"),
    # known parameters the mixture cannot honour: refused, never ignored
    (ask(response_format={"type": "json_object"}), 400, "response_format", "not supported"),
    (ask(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools", "no tool calls"),
    (ask(tool_choice="required"), 400, "tool_choice", "no tool calls"),
    (ask(functions=[{"name": "f"}]), 400, "functions", "no function calls"),
    (ask(logprobs=True), 400, "logprobs", "log probabilities"),
    (ask(presence_penalty=0.5), 400, "presence_penalty", "only 0"),
    (ask(logit_bias={"50256": -100}), 400, "logit_bias", "tokenizer"),
    (ask(temprature=0.2), 400, "temprature", "Unrecognized request argument"),  # a typo, caught
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


def test_a_seeded_repeat_is_served_from_the_store_and_an_unseeded_one_samples_again(tmp_path):
    from moa_search.store import CallStore

    provider = RecordingProvider()
    with CallStore(tmp_path / "calls.db") as store, serving(provider, store=store) as s:
        first = client(s).chat.completions.with_raw_response.create(**ask(seed=7))
        second = client(s).chat.completions.with_raw_response.create(**ask(seed=7))
        assert len(provider.requests) == N_CALLS  # the seeded repeat cost nothing
        other_seed = client(s).chat.completions.create(**ask(seed=8))
        fresh = [client(s).chat.completions.create(**ask()) for _ in range(2)]
    assert len(provider.requests) == 4 * N_CALLS  # seed 8 and both unseeded requests were paid
    assert second.headers["x-moa-cached-calls"] == str(N_CALLS) and first.headers["x-moa-cached-calls"] == "0"
    answers = [first.parse(), second.parse(), other_seed, *fresh]
    draws = [draw_of(a.choices[0].message.content) for a in answers]
    assert draws[0] == draws[1] and len(set(draws[1:])) == 4  # every other request is its own sample
    # list cost does not depend on the cache
    assert second.headers["x-moa-cost-usd"] == first.headers["x-moa-cost-usd"]
    assert second.parse().usage.total_tokens == first.parse().usage.total_tokens


def test_sampling_parameters_reach_the_aggregator_and_the_seed_numbers_every_draw():
    provider = RecordingProvider()
    with serving(provider) as s:
        client(s).chat.completions.create(**ask(temperature=0.1, top_p=0.5, max_completion_tokens=7,
                                                stop=["\n\n", "END"], seed=42))
    *proposers, aggregator = provider.requests
    assert (aggregator.temperature, aggregator.top_p, aggregator.max_tokens, aggregator.stop,
            aggregator.seed) == (0.1, 0.5, 7, ("\n\n", "END"), 42)
    agents = {(a.model, a.temperature, a.max_tokens) for layer in CONFIG.proposer_layers for a in layer}
    for p in proposers:  # the preset's own settings, and no seed sent upstream
        assert (p.model, p.temperature, p.max_tokens) in agents
        assert (p.top_p, p.stop, p.seed) == (None, (), None)
    # one draw for the whole mixture: every agent's sample index moved by it
    assert len({p.sample_index for p in proposers}) == 1 and aggregator.sample_index == proposers[0].sample_index >= 1


def test_n_runs_the_mixture_n_times():
    provider = RecordingProvider()
    with serving(provider) as s:
        completion = client(s).chat.completions.create(**ask(n=2, seed=3))
        streamed = list(client(s).chat.completions.create(**ask(n=2), stream=True,
                                                         stream_options={"include_usage": True}))
    assert [c.index for c in completion.choices] == [0, 1]
    assert draw_of(completion.choices[0].message.content) != draw_of(completion.choices[1].message.content)
    assert completion.usage.completion_tokens == 2 * 5 and completion.usage.total_tokens == 2 * 15 * N_CALLS
    texts = {j: "".join(c.choices[0].delta.content or "" for c in streamed
                        if c.choices and c.choices[0].index == j) for j in (0, 1)}
    assert draw_of(texts[0]) != draw_of(texts[1])
    assert streamed[-1].usage.total_tokens == 2 * 15 * N_CALLS
    assert len(provider.requests) == 4 * N_CALLS
    # the aggregator of choice j is sent seed + j
    assert sorted(r.seed for r in provider.requests if r.model == QWEN72 and r.seed is not None) == [3, 4]


def test_a_temperature_the_aggregator_does_not_take_is_refused_not_dropped():
    catalog = Catalog.from_dict({"providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}}, "models": {
        "lab/reasoner": {"provider": "p", "input_price": 2.0, "output_price": 8.0,
                         "temperature": "default-only"}}}, source="<test catalog>")
    provider = RecordingProvider()
    provider.catalog = catalog  # as the HTTP provider routes: by its catalog's rules
    preset = from_config("reasoned", MoAConfig.uniform(["lab/reasoner"], "lab/reasoner", layers=2), catalog)
    with serving(provider, preset) as s:
        with pytest.raises(openai.BadRequestError) as err:
            client(s).chat.completions.create(**ask("reasoned", temperature=0.3))
        assert not provider.requests  # refused before anything was paid
        assert client(s).chat.completions.create(**ask("reasoned", top_p=0.5)).choices[0].message.content
    assert err.value.param == "temperature" and "'lab/reasoner' takes only its default" in err.value.message


def test_neutral_values_of_refused_parameters_are_accepted(server):
    completion = client(server).chat.completions.create(
        **ask(response_format={"type": "text"}, tools=[], presence_penalty=0, frequency_penalty=0.0,
              logprobs=False, tool_choice="none", user="alice", stop=None, seed=None))
    assert draw_of(completion.choices[0].message.content) >= 1


def test_the_end_user_is_recorded_with_the_calls(tmp_path):
    from moa_search.store import CallStore

    with CallStore(tmp_path / "calls.db") as store, serving(RecordingProvider(), store=store) as s:
        client(s).chat.completions.create(**ask(user="alice@example.com"))
    with sqlite3.connect(tmp_path / "calls.db") as db:
        items = {row[0] for row in db.execute("SELECT DISTINCT item_id FROM calls")}
    assert len(items) == 1 and next(iter(items)).startswith("user=alice@example.com/request-")


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
