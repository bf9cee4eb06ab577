"""Builds the provider a command runs against: the simulated world, OpenAI-compatible HTTP, or
llama.cpp servers this process starts (``local``).

Kept apart from the CLI so that library users, the evaluation layer and the search build the
same provider the same way. Backends are a registry (name -> factory); each backend may also
name its default catalog, used when the command gives none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .catalog import BACKEND_NAMES, LOCAL_BASE_URL, Catalog
from .errors import ConfigError
from .providers.base import Provider


@dataclass(frozen=True)
class BackendOptions:
    """Everything a backend factory may use; each uses only what applies to it."""

    base_url: str | None = None
    answer_key: "object | None" = None
    seed: int = 0
    sleep: bool = False
    sim_endpoint: bool = False
    max_retries: int | None = None
    api_key_env: str = ""
    max_concurrency: int | None = None
    models: Sequence[str] | None = None
    timeout_s: float | None = None  # with max_concurrency: overrides the catalog's per-endpoint values


def _sim(catalog: Catalog, o: BackendOptions) -> Provider:
    if o.base_url:
        raise ConfigError("--base-url goes with --backend http (the sim backend runs in process)",
                          field="base_url")
    from .providers.simulated import SimulatedProvider
    return SimulatedProvider(catalog, answer_key=o.answer_key, seed=o.seed, sleep=o.sleep)  # type: ignore[arg-type]


def _http(catalog: Catalog, o: BackendOptions) -> Provider:
    from .providers.openai_compat import OpenAICompatProvider
    if o.base_url:
        catalog = catalog.with_base_url(o.base_url, o.api_key_env)
    names = o.models if o.models is not None else list(catalog.models)
    unserved = sorted(m for m in set(names) if catalog.get(m).endpoint.base_url == LOCAL_BASE_URL)
    if unserved:
        raise ConfigError(f"{unserved} are local models (provider = \"local\"): run them with --backend local "
                          "(backend = \"local\" in a study file)", source=catalog.source)
    limits: dict[str, int] = {}
    if o.max_retries is not None:
        limits["max_retries"] = o.max_retries
    return OpenAICompatProvider(catalog, send_sample_index=o.sim_endpoint, timeout_s=o.timeout_s,
                                max_concurrency_per_endpoint=o.max_concurrency, **limits)


def _local(catalog: Catalog, o: BackendOptions) -> Provider:
    if o.base_url:
        raise ConfigError("--base-url goes with --backend http (--backend local starts its own servers)",
                          field="base_url")
    from .local.provider import open_local_provider
    return open_local_provider(catalog, o.models, max_retries=o.max_retries, timeout_s=o.timeout_s,
                               max_concurrency=o.max_concurrency)


BACKENDS: dict[str, Callable[[Catalog, BackendOptions], Provider]] = {
    "sim": _sim,
    "http": _http,
    "local": _local,
}

assert tuple(BACKENDS) == BACKEND_NAMES, "catalog.BACKEND_NAMES lists every backend"


def default_catalog(backend: str = "sim") -> Catalog:
    """The catalog a command uses without ``--catalog`` (``Catalog.default``)."""
    return Catalog.default(backend)


def make_provider(backend: str, catalog: Catalog, *, base_url: str | None = None,
                  answer_key: "object | None" = None, seed: int = 0, sleep: bool = False,
                  sim_endpoint: bool = False, max_retries: int | None = None,
                  api_key_env: str = "", max_concurrency: int | None = None,
                  models: Sequence[str] | None = None, timeout_s: float | None = None) -> Provider:
    """``base_url`` routes every model to one endpoint (a local server, the sim-server).

    ``sim_endpoint`` says the HTTP endpoint is ``moa-search sim-server``: the request's sample
    index is then sent (as ``x_sample_index``) so repeated samples of one model differ there as
    they do in process. Real APIs reject unknown fields, so it is off unless asked for.
    ``api_key_env`` names the variable holding the key for ``base_url`` (read at call time).
    ``max_concurrency`` and ``timeout_s`` (``--concurrency``, ``--timeout``) override the
    catalog's per-endpoint values; None keeps them. The simulated world has neither.
    ``models`` are the ones the command will call: ``local`` starts servers for those only
    (default: every local model in the catalog). Close the provider (``aclose``) to stop them.
    """
    factory = BACKENDS.get(backend)
    if factory is None:
        raise ConfigError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}", field="backend")
    return factory(catalog, BackendOptions(base_url, answer_key, seed, sleep, sim_endpoint, max_retries,
                                           api_key_env, max_concurrency, models, timeout_s))
