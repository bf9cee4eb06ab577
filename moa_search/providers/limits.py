"""What a model's catalog entry allows a request, applied before the request goes anywhere.

Two rules, both from the catalog (see ``catalog.py``):

* ``max_tokens``: an agent asking for more output tokens than the model's catalog ``max_tokens``
  is sent that number instead. It is applied before the call store makes the cache key, so the
  stored request is the one sent.
* ``context_window``: a request whose prompt (estimated from below, see
  ``ChatRequest.min_prompt_tokens``) plus ``max_tokens`` exceeds the model's window is refused
  with a ``ContextWindowError`` naming the model, the estimate and the window. Nothing is sent
  and nothing is written to the call store: ``Runner.call`` applies this before the store.
"""

from __future__ import annotations

from dataclasses import replace

from ..catalog import Catalog, ModelInfo
from .base import MAX_BYTES_PER_TOKEN, ChatRequest, ContextWindowError, Provider


def fit_request(info: ModelInfo, request: ChatRequest) -> ChatRequest:
    """``request`` with its ``max_tokens`` capped by the catalog; raises if it cannot fit."""
    if info.max_tokens is not None and request.max_tokens > info.max_tokens:
        request = replace(request, max_tokens=info.max_tokens)
    prompt = request.min_prompt_tokens()
    if prompt + request.max_tokens > info.context_window:
        raise ContextWindowError(
            f"model {info.id!r}: the prompt is at least {prompt:,} tokens (its UTF-8 bytes / "
            f"{MAX_BYTES_PER_TOKEN}) + max_tokens {request.max_tokens:,} > context_window "
            f"{info.context_window:,}; not sent (shorten the prompt, or lower max_tokens in the "
            f"config or the catalog)")
    return request


def fit_for(provider: Provider, request: ChatRequest) -> ChatRequest:
    """``fit_request`` with the model's entry in the provider's catalog.

    Both real providers (HTTP and the simulated world) route by a ``catalog`` attribute; a
    provider without one (a test double) or a model it does not list is left as it is.
    """
    catalog = getattr(provider, "catalog", None)
    if not isinstance(catalog, Catalog) or request.model not in catalog:
        return request
    return fit_request(catalog.get(request.model), request)
