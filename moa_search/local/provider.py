"""``--backend local``: the catalog's local models answered by llama.cpp servers, the rest over HTTP.

Opening the provider resolves every GGUF file and brings up one server per local model the
command needs — reusing one a running ``moa-search local serve`` offers (see ``state``) — *before*
any call is made, so a missing file, a taken port or a build without ``llama_cpp`` fails
before anything is written to the call store. Closing it stops the servers it started.

Four things differ from a remote endpoint, and are set here rather than by the caller:

* one request in flight per server: a llama.cpp server answers one at a time, so more would
  only queue inside it, where the queueing would be timed as the model's latency;
* the request's sample index is sent as ``seed``, so the n samples of one model in a Self-MoA
  layer differ from each other; llama.cpp does not promise bit-identical output across runs
  (measured for the SmolLM2 study: 70 of 1,485 repeated requests differed, 21 at temperature 0),
  which is one more reason every answer is kept in the call store and served from it;
* no ``stream``: llama-cpp-python's server (0.3.36) sends no ``usage`` in a stream, even with
  ``stream_options.include_usage``, and a call without usage is never booked, so ``serve``
  fetches a local aggregator's answer whole and sends it as one piece;
* the call store's endpoint identity is the GGUF file (name and size) and chat format, not the
  URL: ports change from run to run, and a repeated call must still be served from the store.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ..catalog import LOCAL_BASE_URL, LOCAL_PROVIDER, Catalog, Endpoint, ModelInfo
from ..errors import ConfigError
from ..providers.base import ChatRequest, Completion, ProviderError
from ..providers.openai_compat import OpenAICompatProvider
from .discover import resolve_gguf
from .servers import (DEFAULT_READY_TIMEOUT_S, LocalServer, LocalServerError, ServerPool, ServerSpec, check_serves,
                      exit_message)
from .state import find_reusable, state_path

log = logging.getLogger(__name__)

LOCAL_TIMEOUT_S = 600.0
"""A 512-token answer at 4.5 tokens/s (two threads on a busy 2-core box) takes about two minutes."""
LOCAL_CONCURRENCY = 1
LOCAL_MAX_RETRIES = 2
"""A server of our own does not rate-limit; a failure is most often a dead server, which retrying
with backoff cannot help (its exit is reported instead, see ``complete``)."""


def local_identity(spec: ServerSpec) -> str:
    """What decides a local model's answers, as the call store's endpoint identity."""
    return f"llama.cpp:{spec.gguf.name}:{spec.gguf.stat().st_size}:{spec.chat_format or 'gguf-template'}"


def server_spec(info: ModelInfo, source: str) -> ServerSpec:
    assert info.local is not None
    return ServerSpec(info.id, resolve_gguf(info, source), info.local.n_ctx, info.local.n_threads,
                      info.local.chat_format)


def local_models(catalog: Catalog, models: Sequence[str] | None = None) -> list[ModelInfo]:
    """The local entries among ``models`` (default: the whole catalog)."""
    names = sorted(set(models)) if models is not None else sorted(catalog.models)
    return [info for info in (catalog.get(m) for m in names) if info.local is not None]


class LocalBackendProvider:
    """Implements ``Provider``: routes each model to its server (local) or its endpoint (remote)."""

    def __init__(self, catalog: Catalog, pool: ServerPool, *, max_retries: int | None = None,
                 timeout_s: float | None = None, max_concurrency: int | None = None):
        """``timeout_s`` / ``max_concurrency`` (``--timeout``, ``--concurrency``) override the
        per-endpoint values, the local servers' included (``LOCAL_TIMEOUT_S``, one at a time)."""
        self.pool = pool
        self._identities = {alias: local_identity(s.spec) for alias, s in pool.servers.items()}
        routed = {k: (replace(m, endpoint=Endpoint(f"{LOCAL_PROVIDER}:{k}", pool.servers[k].base_url,
                                                   concurrency=LOCAL_CONCURRENCY, timeout_s=LOCAL_TIMEOUT_S))
                      if k in pool.servers else m) for k, m in catalog.models.items()}
        self.catalog = Catalog(routed, catalog.source, catalog.endpoints)
        options: dict[str, Any] = {"timeout_s": timeout_s, "max_concurrency_per_endpoint": max_concurrency}
        remote_retries = {} if max_retries is None else {"max_retries": max_retries}
        self._local = OpenAICompatProvider(self.catalog, send_seed=True, **options,
                                           max_retries=LOCAL_MAX_RETRIES if max_retries is None else max_retries)
        self._remote = OpenAICompatProvider(self.catalog, **options, **remote_retries)

    def __repr__(self) -> str:
        servers = ", ".join(f"{a}@{s.base_url}" for a, s in self.pool.servers.items())
        return f"LocalBackendProvider({servers})"

    @property
    def servers(self) -> dict[str, LocalServer]:
        return self.pool.servers

    def endpoint_identity(self, model: str) -> str:
        return self._identities.get(model) or self._remote.endpoint_identity(model)

    def check_keys(self, models: Sequence[str]) -> None:
        """The remote models' API-key variables (``OpenAICompatProvider.check_keys``); local
        servers need none."""
        self._remote.check_keys([m for m in models if m not in self._identities])

    async def complete(self, request: ChatRequest) -> Completion:
        if request.model in self._identities:
            server = self.pool.servers[request.model]
            _raise_if_dead(server)
            try:
                return await self._local.complete(request)
            except ProviderError:
                _raise_if_dead(server)  # say why (e.g. SIGILL from a native build), not "cannot connect"
                raise
        if self.catalog.get(request.model).local is not None:
            raise ProviderError(f"local model {request.model!r} has no server: it was not among the models "
                                "this command started")
        return await self._remote.complete(request)

    async def aclose(self) -> None:
        try:
            await self._local.aclose()
            await self._remote.aclose()
        finally:
            self.pool.stop()


def _raise_if_dead(server: LocalServer) -> None:
    code = server.process.poll() if server.process is not None else None
    if code is not None:
        raise ProviderError(exit_message(server, code), endpoint=server.base_url)


def open_local_provider(catalog: Catalog, models: Sequence[str] | None = None, *,
                        max_retries: int | None = None, timeout_s: float | None = None,
                        max_concurrency: int | None = None, launcher: Sequence[str] | None = None,
                        state: Path | None = None,
                        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> LocalBackendProvider:
    """Resolve, reuse or start a server for every local model among ``models``; see the module doc."""
    infos = local_models(catalog, models)
    if not infos:
        raise ConfigError("--backend local needs local models (provider = \"local\" with a gguf); "
                          f"none of {sorted(set(models or catalog.models))} is one", source=catalog.source)
    specs = [server_spec(info, catalog.source) for info in infos]  # every file checked before any start
    pool = ServerPool()
    try:
        to_start = []
        for spec in specs:
            record = find_reusable(state or state_path(), spec)
            if record is not None:
                server = record.server(spec)
                try:
                    check_serves(server.base_url, spec.alias)
                except LocalServerError as exc:
                    log.info("not reusing %s: %s", server.base_url, exc)
                else:
                    pool.add_reused(server)
                    continue
            to_start.append(spec)
        pool.start(to_start, launcher=launcher, ready_timeout_s=ready_timeout_s)
        return LocalBackendProvider(catalog, pool, max_retries=max_retries, timeout_s=timeout_s,
                                    max_concurrency=max_concurrency)
    except BaseException:
        pool.stop()
        raise


def attach_local(catalog: Catalog, local_catalog: Catalog) -> Catalog:
    """A preset's catalog with its local models' GGUF entries taken from ``local_catalog``.

    A preset records a local model's provider (``local``) but not its weights, so ``moa-search
    serve PRESET --backend local`` looks them up by model id in a local catalog.
    """
    models = dict(catalog.models)
    for model_id, info in catalog.models.items():
        if info.endpoint.base_url != LOCAL_BASE_URL:  # not a model moa-search serves itself
            continue
        entry = local_catalog.models.get(model_id)
        if entry is None or entry.local is None:
            raise ConfigError(f"the preset's model {model_id!r} is local, but this local catalog has no "
                              "entry for it (give --catalog with its gguf)", source=local_catalog.source)
        models[model_id] = replace(entry, input_price=info.input_price, output_price=info.output_price)
    return Catalog(models, catalog.source, catalog.endpoints)
