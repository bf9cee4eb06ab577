"""``moa-search local serve``: local GGUF models served in the foreground until Ctrl-C.

One llama.cpp server per model, a catalog for them, a record in the state file so that
``--backend local`` commands reuse them meanwhile, and the commands that use them printed.
Ctrl-C (or SIGTERM) stops every server and removes the record; a server that dies on its own
ends the command with an error, so nobody keeps using a half-dead setup.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..config import LOCAL_MODEL, LOCAL_PRESETS
from . import DEFAULT_CATALOG_OUT, DEFAULT_N_CTX
from .catalog_file import write_catalog
from .discover import FoundModel
from .servers import DEFAULT_READY_TIMEOUT_S, LocalServer, LocalServerError, ServerPool, ServerSpec
from .state import register, unregister



@dataclass(frozen=True)
class ServeOptions:
    n_ctx: int = DEFAULT_N_CTX
    n_threads: int = 1
    chat_format: str | None = None
    port: int | None = None  # the first server's port; the next ones count up from it
    catalog_out: Path = DEFAULT_CATALOG_OUT
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the servers the way Ctrl-C does (the default would skip ``finally``)."""
    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def usage_lines(servers: Sequence[LocalServer], catalog: Path) -> list[str]:
    """Commands that work while the servers run (the tests run them)."""
    cat = shlex.quote(str(catalog))
    aliases = [s.spec.alias for s in servers]
    lines = [f"wrote {catalog}", "use them (in another terminal, while this runs):"]
    if LOCAL_MODEL in aliases:
        preset = next(iter(LOCAL_PRESETS))
        lines.append(f"  moa-search run --backend local --catalog {cat} --preset {preset} "
                     "--prompt 'What is 12 + 30?'")
    if len(aliases) >= 2:
        lines.append(f"  moa-search compare {shlex.quote(aliases[0])} {shlex.quote(aliases[1])} --backend local "
                     f"--catalog {cat} --data math --scorer numeric --n-items 3")
    for s in servers:
        body = ('{"model": "%s", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}'
                % s.spec.alias)
        lines.append(f"  curl -s {s.base_url}/chat/completions -H 'Content-Type: application/json' "
                     f"-d {shlex.quote(body)}")
    lines.append("Ctrl-C stops the servers.")
    return lines


def serve_local(models: Sequence[FoundModel], options: ServeOptions, *, state: Path,
                echo: Callable[[str], None], launcher: Sequence[str] | None = None,
                poll_s: float = 0.5) -> None:
    """Serve until interrupted; see the module doc. Returns normally on Ctrl-C / SIGTERM."""
    specs = [ServerSpec(m.alias, m.path, options.n_ctx, options.n_threads, options.chat_format) for m in models]
    ports = None if options.port is None else [options.port + i for i in range(len(specs))]
    owner = os.getpid()
    with _sigterm_as_interrupt(), ServerPool() as pool:
        try:
            pool.start(specs, ports=ports, launcher=launcher, ready_timeout_s=options.ready_timeout_s)
            servers = list(pool.servers.values())
            write_catalog(options.catalog_out, servers, "moa-search local serve")
            register(state, servers, owner)
            echo(f"serving {len(servers)} local model(s) with llama.cpp (n_ctx {options.n_ctx}, "
                 f"n_threads {options.n_threads}, chat format {options.chat_format or 'from the GGUF'}):")
            for m, s in zip(models, servers):
                echo(f"  {s.spec.alias}  {s.base_url}  {m.path.name} ({m.origin}), ready in {s.ready_s:.1f} s")
            for line in usage_lines(servers, options.catalog_out):
                echo(line)
            while not pool.dead():
                time.sleep(poll_s)
            dead = pool.dead()[0]
            raise LocalServerError(f"the server for {dead.spec.alias!r} stopped on its own "
                                   f"(status {dead.process.returncode if dead.process else '?'})")
        except KeyboardInterrupt:
            echo(f"stopping {len(pool.servers)} server(s)")
        finally:
            unregister(state, owner)
