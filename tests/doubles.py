"""Test doubles, named as such: deterministic stand-ins for a provider where the point of the test
is the caller's logic (message construction, failure policy), not the model world."""

from __future__ import annotations

import asyncio

from moa_search.providers.base import ChatRequest, Completion, ProviderError, Usage


class RecordingProvider:
    """Answers ``<model>#<sample_index>@<call n>`` and records every request it sees."""

    def __init__(self, *, failing_models: set[str] = frozenset(), latency: dict[str, float] | None = None):
        self.requests: list[ChatRequest] = []
        self.failing_models = set(failing_models)
        self.latency = latency or {}

    def endpoint_identity(self, model: str) -> str:
        return "test-double:recording"

    async def complete(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        await asyncio.sleep(0)
        if request.model in self.failing_models:
            raise ProviderError(f"injected failure for {request.model}", endpoint="test-double", status=500)
        text = f"  answer from {request.model}#{request.sample_index}  "
        return Completion(text=text.strip(), model=request.model, usage=Usage(10, 5),
                          cost_usd=0.001, latency_s=self.latency.get(request.model, 1.0))

    async def aclose(self) -> None:
        pass
