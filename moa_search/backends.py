"""Builds the provider a command runs against: the simulated world or OpenAI-compatible HTTP.

Kept apart from the CLI so that library users, the evaluation layer and the search build the
same provider the same way.
"""

from __future__ import annotations

from typing import Literal

from .catalog import Catalog
from .errors import ConfigError
from .providers.base import Provider

Backend = Literal["sim", "http"]


def make_provider(backend: str, catalog: Catalog, *, base_url: str | None = None,
                  answer_key: "object | None" = None, seed: int = 0, sleep: bool = False,
                  sim_endpoint: bool = False, max_retries: int | None = None,
                  api_key_env: str = "", max_concurrency: int | None = None) -> Provider:
    """``base_url`` routes every model to one endpoint (a local server, the sim-server).

    ``sim_endpoint`` says the HTTP endpoint is ``moa-search sim-server``: the request's sample
    index is then sent (as ``x_sample_index``) so repeated samples of one model differ there as
    they do in process. Real APIs reject unknown fields, so it is off unless asked for.
    ``api_key_env`` names the variable holding the key for ``base_url`` (read at call time).
    """
    if backend == "sim":
        if base_url:
            raise ConfigError("--base-url goes with --backend http (the sim backend runs in process)",
                              field="base_url")
        from .providers.simulated import SimulatedProvider
        return SimulatedProvider(catalog, answer_key=answer_key, seed=seed, sleep=sleep)  # type: ignore[arg-type]
    if backend == "http":
        from .providers.openai_compat import OpenAICompatProvider
        limits: dict[str, int] = {}
        if max_retries is not None:
            limits["max_retries"] = max_retries
        if max_concurrency is not None:
            limits["max_concurrency_per_endpoint"] = max_concurrency
        return OpenAICompatProvider(catalog.with_base_url(base_url, api_key_env) if base_url else catalog,
                                    send_sample_index=sim_endpoint, **limits)
    raise ConfigError(f"unknown backend {backend!r}; expected 'sim' or 'http'", field="backend")
