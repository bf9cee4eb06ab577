"""``OpenAICompatProvider.stream`` against the real sim-server on 127.0.0.1 (no mocks): deltas as
they arrive, the same ``Completion`` as ``complete``, usage refused when missing, retries only
before the first delta, and the sampling parameters a request sets reaching the body."""
# ruff: noqa: F811  (the fixtures of test_openai_compat, imported, are the tests' parameters)

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from moa_search.providers.base import MalformedReplyError, ProviderError, StreamingProvider
from moa_search.providers.openai_compat import OpenAICompatProvider
from moa_search.sim_server import FaultConfig
from tests.test_openai_compat import KEY_ENV, SECRET, make_provider, request, start_server  # noqa: F401
from tests.test_server import ServerThread


class Collect:
    def __init__(self) -> None:
        self.pieces: list[str] = []

    async def __call__(self, piece: str) -> None:
        self.pieces.append(piece)


async def test_stream_hands_on_deltas_and_returns_what_complete_returns(start_server, make_provider) -> None:
    server = start_server(latency_override_s=0.2)
    provider = make_provider(server.base_url)
    assert isinstance(provider, StreamingProvider)
    collect = Collect()
    streamed = await provider.stream(request(text="tell me a long story " * 3), collect)
    whole = await provider.complete(request(text="tell me a long story " * 3))
    assert len(collect.pieces) > 5 and "".join(collect.pieces).rstrip() == streamed.text == whole.text
    assert (streamed.usage, streamed.cost_usd, streamed.finish_reason) == (whole.usage, whole.cost_usd, "stop")
    assert streamed.latency_s == pytest.approx(0.05)  # the server's reported time, as for complete
    assert streamed.ttft_s is not None and 0 < streamed.ttft_s < streamed.extra["wall_s"]
    body = server.recorded_requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_a_stream_without_usage_is_refused_as_a_reply_without_usage_is(start_server, make_provider) -> None:
    server = start_server(faults=FaultConfig(script=("no_usage",)))
    collect = Collect()
    with pytest.raises(MalformedReplyError, match="no 'usage'"):
        await make_provider(server.base_url).stream(request(), collect)
    assert collect.pieces  # the text came, but the call is not counted as free


async def test_faults_before_the_first_delta_are_retried(start_server, make_provider) -> None:
    server = start_server(faults=FaultConfig(script=("500", "429", "ok")))
    collect = Collect()
    completion = await make_provider(server.base_url).stream(request(), collect)
    assert completion.extra["attempts"] == 3 and "".join(collect.pieces).strip() == completion.text


@pytest.mark.parametrize("fields", [
    {"top_p": 0.5}, {"stop": ("\n\n", "END")}, {"seed": 7}, {"top_p": 0.9, "stop": ("x",), "seed": -3}])
async def test_set_sampling_parameters_reach_the_body_and_unset_ones_do_not(
        start_server, make_provider, fields: dict[str, Any]) -> None:
    server = start_server()
    provider: OpenAICompatProvider = make_provider(server.base_url)
    await provider.complete(request(**fields))
    await provider.complete(request())
    sent, plain = (r.body for r in server.recorded_requests)
    assert {k: sent[k] for k in fields} == {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    assert not {"top_p", "stop", "seed"} & set(plain)


def test_unset_parameters_leave_the_cache_key_as_it_was() -> None:
    """Calls stored before top_p / stop / seed existed are still found."""
    plain = request()
    assert set(plain.identity()) == {"model", "messages", "temperature", "max_tokens", "sample_index"}
    assert request(seed=1).cache_key_material("e") != plain.cache_key_material("e")


async def test_a_key_split_across_deltas_is_still_masked(start_server, make_provider) -> None:
    """The sim-server streams 4 characters a chunk, so the echoed key arrives in 7 pieces; the
    provider holds back (key length - 1) characters until it can tell."""
    server = start_server()
    provider = make_provider(server.base_url, api_key_env=KEY_ENV, env={KEY_ENV: SECRET})
    collect = Collect()
    completion = await provider.stream(request(text=f"repeat {SECRET} back"), collect)
    relayed = "".join(collect.pieces)
    assert SECRET not in relayed and "***" in relayed and SECRET not in completion.text
    assert not any(SECRET[:4] in piece for piece in collect.pieces)  # not even its start, alone
    assert relayed.rstrip() == completion.text  # everything handed on in the end


def breaking_upstream(pieces: list[str]) -> tuple[Starlette, list[int]]:
    """A real OpenAI-style server (no sim-server fault does this) whose every stream sends
    ``pieces`` and then ends with neither a finish reason nor ``[DONE]``: a dropped stream.
    The list counts the requests it got."""
    requests: list[int] = []

    async def chat(request: Request) -> StreamingResponse:
        requests.append(1)

        async def events() -> AsyncIterator[bytes]:
            for piece in ["", *pieces]:
                chunk = {"object": "chat.completion.chunk", "model": "test/small",
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]), requests


@pytest.mark.parametrize("pieces, attempts", [
    ([], 4),  # nothing handed on yet: retried, as a fault before the first delta is (1 + 3 retries)
    (["x" * 200], 1),  # text handed on (longer than any key held back): a retry would repeat it
])
async def test_a_dropped_stream_is_retried_only_before_its_first_delta(make_provider, pieces, attempts) -> None:
    app, requests = breaking_upstream(pieces)
    collect = Collect()
    with ServerThread(app) as upstream:
        with pytest.raises(ProviderError, match="ended before its last chunk"):
            await make_provider(upstream.base_url).stream(request(), collect)
    assert len(requests) == attempts
    # what was handed on: the text, less the tail a known key's length holds back (StreamScrubber)
    assert bool(collect.pieces) == bool(pieces) and "".join(pieces).startswith("".join(collect.pieces))
