"""Which llama.cpp servers a running ``moa-search local serve`` offers for reuse.

``local serve`` records its servers in a small JSON file — ``runs/local/servers.json`` under
the working directory, or the file ``$MOA_SEARCH_LOCAL_STATE`` names — and removes them when it
stops. ``--backend local`` reuses a recorded server when the ``local serve`` that started it is
still alive, the server serves the same GGUF file with the same context size and chat format,
and its ``/v1/models`` lists the model; it never stops a server it reused.

Servers that ``--backend local`` starts for one command are not recorded: they live exactly as
long as that command, so nobody else may come to depend on them.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..inputs import write_text_atomic
from ..procs import pid_alive
from .servers import LocalServer, ServerSpec

STATE_ENV = "MOA_SEARCH_LOCAL_STATE"
DEFAULT_STATE = Path("runs/local/servers.json")


def state_path() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE)


@dataclass(frozen=True)
class ServerRecord:
    alias: str
    gguf: str
    n_ctx: int
    n_threads: int
    chat_format: str | None
    port: int
    pid: int
    owner_pid: int  # the `local serve` process; its death makes the record stale

    @classmethod
    def of(cls, server: LocalServer, owner_pid: int) -> "ServerRecord":
        s = server.spec
        return cls(s.alias, str(s.gguf), s.n_ctx, s.n_threads, s.chat_format, server.port, server.pid, owner_pid)

    def matches(self, spec: ServerSpec) -> bool:
        """Same model, same file, same window and chat format (thread count may differ)."""
        return (self.alias, self.gguf, self.n_ctx, self.chat_format) == (
            spec.alias, str(spec.gguf), spec.n_ctx, spec.chat_format)

    def server(self, spec: ServerSpec) -> LocalServer:
        return LocalServer(spec, self.port, self.pid, owned=False)


def read_records(path: Path) -> list[ServerRecord]:
    """Live records only. The file is our own hint, not user input: an unreadable one counts as
    empty (the next ``local serve`` rewrites it)."""
    try:
        raw = json.loads(path.read_text("utf-8"))
        records = [ServerRecord(**r) for r in raw.get("servers", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        return []
    return [r for r in records if pid_alive(r.pid) and pid_alive(r.owner_pid)]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(path: Path, records: Sequence[ServerRecord]) -> None:
    write_text_atomic(path, json.dumps({"servers": [asdict(r) for r in records]}, indent=2) + "\n",
                      "local server state")


def register(path: Path, servers: Sequence[LocalServer], owner_pid: int) -> None:
    with _locked(path):
        _write(path, read_records(path) + [ServerRecord.of(s, owner_pid) for s in servers])


def unregister(path: Path, owner_pid: int) -> None:
    """Drop this owner's records (and stale ones); remove the file when nothing is left."""
    with _locked(path):
        rest = [r for r in read_records(path) if r.owner_pid != owner_pid]
        if rest:
            _write(path, rest)
        else:
            path.unlink(missing_ok=True)


def find_reusable(path: Path, spec: ServerSpec) -> ServerRecord | None:
    for record in read_records(path):
        if record.matches(spec):
            return record
    return None
