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
                  answer_key: "object | None" = None, seed: int = 0, sleep: bool = False) -> Provider:
    """``base_url`` routes every model to one endpoint (a local server, the sim-server)."""
    if backend == "sim":
        if base_url:
            raise ConfigError("--base-url goes with --backend http (the sim backend runs in process)",
                              field="base_url")
        from .providers.simulated import SimulatedProvider
        return SimulatedProvider(catalog, answer_key=answer_key, seed=seed, sleep=sleep)  # type: ignore[arg-type]
    if backend == "http":
        from .providers.openai_compat import OpenAICompatProvider
        return OpenAICompatProvider(catalog.with_base_url(base_url) if base_url else catalog)
    raise ConfigError(f"unknown backend {backend!r}; expected 'sim' or 'http'", field="backend")
