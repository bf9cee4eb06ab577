"""The call store: every LLM call goes through here, so a paid answer is never paid for twice.

Money is real. A search runs thousands of calls, is interrupted, resumed, re-run with one more
trial, and run by several worker processes at once; every call that was already answered must be
served from disk (free and instant), and a run killed at any moment must lose no call it paid for.
The store is also the run log: one ``calls`` row per request the toolkit made (paid, served from
the store, or failed), which is what ``spend()`` and the ``moa-search calls`` viewer read. Like
simonw's ``llm``, it is a plain SQLite file written with sqlite-utils, so users can open it with
``sqlite-utils`` or Datasette and ask their own questions.

Two tables:

- ``responses``: one row per cache key (the first answer stored for it wins), holding the request
  identity (model, messages, sampling params, sample index; never headers or keys) and what the
  provider answered, with its usage, list cost and timings.
- ``calls``: one row per request made, newest = highest ``id``.

Durability: each write is its own short ``BEGIN IMMEDIATE`` transaction, committed before the
answer is returned. The file is in WAL mode with ``synchronous=NORMAL``, so a committed write
survives the process being killed (it is in the WAL, which the next opener replays); only an OS
crash or power cut can drop the last few commits. Full fsync per call would block the event
loop on every answer for a risk the brief does not ask us to cover.

Concurrency: asyncio tasks in one process share one connection behind a ``threading.Lock``
(writes are synchronous and take well under a millisecond); processes share the file through WAL
and a 60 s busy timeout. Identical requests are *single-flighted* across tasks and processes:
one provider call, the others wait for it and are logged as cache hits. Within a process a
future carries the answer; across processes the leader first *claims* the key in the
``inflight`` table (in the same ``BEGIN IMMEDIATE`` transaction that finds no stored answer) and
the others poll until the answer is stored. A claim is removed with the answer (or the error);
a claim whose process is gone (same host: its pid is dead; another host: older than
``CLAIM_LEASE_S``) is stale, and the next process to meet it takes the key over.

Crash trace: the claim is written *before* the request is sent. When its process dies (kill -9)
or is cancelled mid-request, the provider may have billed the call though no answer was stored;
such a claim becomes a ``calls`` row with ``possibly_billed = 1``, which ``spend()`` counts, so
a study's books show every request that may have cost money.

Schema changes are numbered migrations (``_MIGRATIONS``); ``store_meta.schema_version`` is the
last one applied, so an older file is upgraded in place and a newer one is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, get_args

import sqlite_utils

from .config import canonical_json
from .errors import MoASearchError
from .keys import scrub, scrub_content
from .providers.base import ChatRequest, Completion, Provider, ProviderError, Role, Usage

__all__ = ["CallRow", "CallStore", "Spend", "StoreError", "SCHEMA_VERSION", "STORE_FORMAT"]

SCHEMA_VERSION = 2
STORE_FORMAT = "moa_search.call_store"
BUSY_TIMEOUT_S = 60.0
#: A claim by a process on another host is taken over after this long (its process cannot be
#: checked); longer than any request the HTTP provider lets run, retries included.
CLAIM_LEASE_S = 900.0
#: How often a process waiting for another's call looks for the answer (grows to the maximum).
CLAIM_POLL_S = (0.02, 0.5)

_META_TABLE = "store_meta"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_ROLES: frozenset[str] = frozenset(get_args(Role))

_RESPONSE_COLUMNS: dict[str, type] = {
    "key": str, "endpoint": str, "model": str, "request_json": str, "text": str,
    "prompt_tokens": int, "completion_tokens": int, "cost_usd": float, "latency_s": float,
    "ttft_s": float, "finish_reason": str, "simulated": int, "created_at": str,
}
_CALL_COLUMNS: dict[str, type] = {
    "id": int, "ts": str, "key": str, "model": str, "role": str, "run_id": str, "item_id": str,
    "config_hash": str, "cached": int, "paid_usd": float, "cost_usd": float, "latency_s": float,
    "error": str, "status": int,
}
_INFLIGHT_COLUMNS: dict[str, type] = {
    "key": str, "owner": str, "host": str, "pid": int, "started": float, "ts": str, "model": str,
    "role": str, "run_id": str, "item_id": str, "config_hash": str,
}



def _insert_sql(table: str, columns: list[str], verb: str = "INSERT") -> str:
    """Hot-path inserts are prepared SQL, not sqlite-utils' ``insert()``: that one inspects the
    table and wraps each row in a savepoint (about five statements per row), which tripled the
    time the event loop is blocked per call. Schema, queries and the log viewer use sqlite-utils."""
    names = ", ".join(columns)
    marks = ", ".join(f":{c}" for c in columns)
    return f"{verb} INTO {table} ({names}) VALUES ({marks})"


# OR IGNORE: another process may have stored this key meanwhile; the first answer wins
_INSERT_RESPONSE = _insert_sql("responses", list(_RESPONSE_COLUMNS), "INSERT OR IGNORE")
_INSERT_CALL = _insert_sql("calls", [c for c in _CALL_COLUMNS if c != "id"] + ["possibly_billed"])
_INSERT_CLAIM = _insert_sql("inflight", list(_INFLIGHT_COLUMNS))
_HOST = socket.gethostname()


def _migrate_1(db: sqlite_utils.Database) -> None:
    """The first schema: answers and the run log."""
    db["responses"].create(_RESPONSE_COLUMNS, pk="key", if_not_exists=True,
                           not_null={"endpoint", "model", "request_json", "text"})
    db["calls"].create(_CALL_COLUMNS, pk="id", if_not_exists=True,
                       not_null={"ts", "key", "model", "role", "cached"})
    for column in ("run_id", "model", "role"):
        db["calls"].create_index([column], if_not_exists=True)


def _migrate_2(db: sqlite_utils.Database) -> None:
    """Cross-process single-flight and the crash trace: claims, and possibly billed calls."""
    db["inflight"].create(_INFLIGHT_COLUMNS, pk="key", if_not_exists=True,
                          not_null={"owner", "host", "pid", "started"})
    if "possibly_billed" not in db["calls"].columns_dict:
        db.execute("ALTER TABLE calls ADD COLUMN possibly_billed INTEGER NOT NULL DEFAULT 0")


#: Numbered schema migrations, applied in order inside one transaction; never edit a released one.
_MIGRATIONS: tuple[tuple[int, Callable[[sqlite_utils.Database], None]], ...] = (
    (1, _migrate_1), (2, _migrate_2))
assert [n for n, _ in _MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


class StoreError(MoASearchError):
    """The call store file cannot be used as one. The message starts with the file's path."""

    def __init__(self, message: str, *, path: str | Path):
        self.path = str(path)
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class Spend:
    """What a set of calls cost: ``paid_usd`` is money actually spent, ``list_cost_usd`` is what
    the same successful calls would have cost with an empty store (so the two differ by the
    savings of the cache). Token counts are of paid calls only, i.e. tokens actually billed."""

    paid_usd: float
    list_cost_usd: float
    calls: int
    cached_calls: int
    failed_calls: int
    prompt_tokens: int
    completion_tokens: int
    possibly_billed_calls: int = 0  # sent, then their process died: no answer, maybe a bill

    @property
    def saved_usd(self) -> float:
        """Money the store saved: list cost of the calls it served."""
        return self.list_cost_usd - self.paid_usd

    @property
    def paid_calls(self) -> int:
        return self.calls - self.cached_calls - self.failed_calls


@dataclass(frozen=True)
class CallRow:
    """One row of the run log, as the ``moa-search calls`` viewer shows it.

    ``latency_s`` is the provider-reported latency of the answer (for a cache hit: of the
    original call, so a config's latency does not depend on cache state); for a failed call,
    which has no answer, it is the wall-clock seconds until the failure. ``status`` is the HTTP
    status of a failure when there was one.
    """

    id: int
    ts: str
    key: str
    model: str
    role: str
    run_id: str | None
    item_id: str | None
    config_hash: str | None
    cached: bool
    paid_usd: float
    cost_usd: float
    latency_s: float | None
    error: str | None
    status: int | None
    possibly_billed: bool = False  # in flight when its process died or was cancelled

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class _CallContext:
    """Who asked for a call: everything a ``calls`` row needs besides the outcome."""

    key: str
    endpoint: str
    model: str
    role: str
    run_id: str | None
    item_id: str | None
    config_hash: str | None


def _claim_is_stale(claim: dict[str, Any]) -> bool:
    """Is the process that holds this claim gone? Checked by pid on this host, by age elsewhere."""
    if claim["host"] != _HOST:
        return time.time() - float(claim["started"]) > CLAIM_LEASE_S
    try:
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _now() -> str:
    """UTC, ISO 8601, millisecond precision: sorts as text and reads well in the viewer."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CallStore:
    """An SQLite file that caches chat completions by request identity and logs every call."""

    def __init__(self, path: str | Path):
        self._path = Path(path)
        self._lock = threading.Lock()
        # one in-flight future per (event loop, key): futures belong to a loop, and a store may
        # be used by successive ``asyncio.run`` calls (tests, the CLI)
        self._inflight: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Any]] = {}
        self._owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"  # claims in other processes
        self._check_file_is_ours()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory for the call store ({exc})",
                             path=self._path) from exc
        self._conn = self._connect()
        self._db = sqlite_utils.Database(self._conn, execute_plugins=False)
        self._closed = False
        try:
            self._init_schema()
        except BaseException:
            self._conn.close()
            self._closed = True
            raise

    # ---------------------------------------------------------------- opening

    def _check_file_is_ours(self) -> None:
        """Refuse, without writing a byte, anything that is not empty, absent, or SQLite.

        Opening a non-SQLite file with sqlite3 and switching it to WAL would rewrite its header;
        so the magic bytes are checked before any connection is made.
        """
        p = self._path
        if p.is_dir():
            raise StoreError("is a directory, expected a call store file", path=p)
        if not p.exists():
            return
        try:
            with p.open("rb") as fh:
                head = fh.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise StoreError(f"cannot read the call store ({exc})", path=p) from exc
        if head and head != _SQLITE_MAGIC:
            raise StoreError("not a moa_search call store: not an SQLite database; "
                             "left untouched", path=p)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self._path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the call store ({exc})", path=self._path) from exc
        return conn

    def _existing_tables(self) -> list[str]:
        return [r[0] for r in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]

    def _refuse_foreign(self, tables: list[str]) -> None:
        """A database with tables but no store marker is someone else's: never touch it."""
        if tables and _META_TABLE not in tables:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(f"not a moa_search call store: an SQLite database with other tables "
                             f"({shown}); left untouched", path=self._path)
        if _META_TABLE in tables:
            meta = dict(self._conn.execute(f"SELECT name, value FROM {_META_TABLE}").fetchall())
            if meta.get("format") != STORE_FORMAT:
                raise StoreError(f"not a moa_search call store (format {meta.get('format')!r}); "
                                 "left untouched", path=self._path)
            try:
                version = int(meta.get("schema_version", ""))
            except ValueError:
                raise StoreError(f"call store has no valid schema version "
                                 f"({meta.get('schema_version')!r})", path=self._path) from None
            if version > SCHEMA_VERSION:
                raise StoreError(f"call store schema version {version} is newer than this "
                                 f"moa_search understands ({SCHEMA_VERSION}); upgrade moa_search",
                                 path=self._path)

    def _init_schema(self) -> None:
        """Check ownership without writing, then switch to WAL and create the schema atomically.

        The read-only check comes first because ``journal_mode=WAL`` itself writes to the file.
        The transaction re-checks, so two processes creating the same new store cannot race.
        """
        try:
            tables = self._existing_tables()
        except sqlite3.Error as exc:  # SQLite magic, but a corrupt or encrypted body
            raise StoreError(f"not a moa_search call store: unreadable SQLite ({exc}); "
                             "left untouched", path=self._path) from exc
        try:
            self._refuse_foreign(tables)
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot switch the call store to WAL mode (got {mode!r}); "
                                 "is it on a network file system?", path=self._path)
            self._conn.execute("PRAGMA synchronous = NORMAL")
            with self._transaction():
                self._refuse_foreign(self._existing_tables())
                db = self._db
                db[_META_TABLE].create({"name": str, "value": str}, pk="name", if_not_exists=True)
                db[_META_TABLE].insert_all([{"name": "format", "value": STORE_FORMAT},
                                            {"name": "schema_version", "value": "0"}], ignore=True)
                have = int(db[_META_TABLE].get("schema_version")["value"])
                for number, migrate in _MIGRATIONS:
                    if number > have:
                        migrate(db)
                db[_META_TABLE].upsert({"name": "schema_version", "value": str(SCHEMA_VERSION)},
                                       pk="name")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot initialise the call store ({exc})", path=self._path) from exc

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE``: take the write lock up front (waiting up to the busy timeout), so a
        read inside the transaction can never make the commit fail with SQLITE_BUSY."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.rollback()
            raise
        self._db.commit()

    @contextmanager
    def _locked(self, what: str) -> Iterator[sqlite_utils.Database]:
        """Serialise use of the one connection and turn SQLite failures into a StoreError."""
        with self._lock:
            if self._closed:
                raise StoreError(f"cannot {what}: the call store is closed", path=self._path)
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {what} ({exc})", path=self._path) from exc

    # ---------------------------------------------------------------- public API

    @property
    def path(self) -> Path:
        return self._path

    @staticmethod
    def cache_key(endpoint_identity: str, request: ChatRequest) -> str:
        """sha256 of the request's canonical identity: stable across processes and versions
        (never Python's salted ``hash()``), and free of secrets because its inputs are."""
        material = request.cache_key_material(endpoint_identity)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    async def complete(self, provider: Provider, request: ChatRequest, *, role: str,
                       run_id: str | None = None, item_id: str | None = None,
                       config_hash: str | None = None) -> Completion:
        """Answer ``request`` from the store if it can, else from ``provider``; log the call.

        A hit costs nothing and keeps the original ``cost_usd`` and ``latency_s`` (``cached=True``).
        A miss is stored before it is returned. A ``ProviderError`` is logged and re-raised,
        never cached: a failure may be transient, and caching it would make it permanent.
        """
        if role not in _ROLES:
            raise ValueError(f"role must be one of {sorted(_ROLES)}, got {role!r}")
        endpoint = provider.endpoint_identity(request.model)
        ctx = _CallContext(self.cache_key(endpoint, request), endpoint, request.model, role,
                           run_id, item_id, config_hash)
        loop = asyncio.get_running_loop()
        slot = (loop, ctx.key)
        started = time.perf_counter()
        poll = CLAIM_POLL_S[0]
        while True:
            hit = self.lookup(ctx.key)
            if hit is not None:
                self._log_call(ctx, hit)
                return hit
            leader = self._inflight.get(slot)
            if leader is None:
                if self._claim(ctx):
                    break
                # another process is making this call: wait for its answer (or its claim to go)
                await asyncio.sleep(poll)
                poll = min(poll * 2, CLAIM_POLL_S[1])
                continue
            # shield: a follower being cancelled must not cancel the leader's paid call
            outcome = await asyncio.shield(leader)
            if isinstance(outcome, ProviderError):
                self._log_failure(ctx, outcome, time.perf_counter() - started)
                raise outcome
            if isinstance(outcome, Completion):
                # normally stored by now; if the leader's write failed, the answer is still paid
                served = self.lookup(ctx.key) or replace(outcome, cached=True)
                self._log_call(ctx, served)
                return served
            # None: the leader was cancelled or crashed before an answer; look again, maybe lead
        return await self._lead(provider, request, ctx, slot, started)

    async def _lead(self, provider: Provider, request: ChatRequest, ctx: _CallContext,
                    slot: tuple[asyncio.AbstractEventLoop, str], started: float) -> Completion:
        """Make the one provider call for ``slot``; followers get its outcome through a future
        (a result, never an exception, so no 'exception never retrieved' noise)."""
        future: asyncio.Future[Any] = slot[0].create_future()
        self._inflight[slot] = future
        outcome: Completion | ProviderError | None = None
        try:
            try:
                answer = await provider.complete(request)
            except ProviderError as exc:
                outcome = exc
                self._log_failure(ctx, exc, time.perf_counter() - started)
                raise
            outcome = answer if not answer.cached else replace(answer, cached=False)
            self._store_paid(ctx, request, outcome)
            return outcome
        finally:
            del self._inflight[slot]
            if not future.done():
                future.set_result(outcome)
            if outcome is None:  # cancelled or crashed after sending: the call may be billed
                self._release_claim(ctx.key, "cancelled while in flight")

    def _claim(self, ctx: _CallContext) -> bool:
        """Claim ``ctx.key`` for this process unless another live process holds it.

        One ``BEGIN IMMEDIATE`` transaction: no answer stored meanwhile, no live claim, then ours
        is written (replacing a stale one, which is first logged as possibly billed). True when
        this process now leads; False when it must wait, or when the answer just arrived."""
        with self._locked("claim a call") as db, self._transaction():
            if _fetch(db, "SELECT 1 FROM responses WHERE key = ?", [ctx.key]):
                return False  # the next lookup serves it
            rows = _fetch(db, "SELECT * FROM inflight WHERE key = ?", [ctx.key])
            if rows:
                if not _claim_is_stale(rows[0]):
                    return False
                self._log_possibly_billed(db, rows[0], "its process is gone")
            db.execute(_INSERT_CLAIM.replace("INSERT", "INSERT OR REPLACE", 1), {
                "key": ctx.key, "owner": self._owner, "host": _HOST, "pid": os.getpid(),
                "started": time.time(), "ts": _now(), "model": ctx.model, "role": ctx.role,
                "run_id": ctx.run_id, "item_id": ctx.item_id, "config_hash": ctx.config_hash})
        return True

    def _release_claim(self, key: str, why: str) -> None:
        """Drop our claim on ``key`` after a request was sent but not answered (cancelled):
        logged as possibly billed, and the key is free for the next caller."""
        with self._locked("release a claim") as db, self._transaction():
            rows = _fetch(db, "SELECT * FROM inflight WHERE key = ? AND owner = ?", [key, self._owner])
            if rows:
                self._log_possibly_billed(db, rows[0], why)

    def _log_possibly_billed(self, db: sqlite_utils.Database, claim: dict[str, Any], why: str) -> None:
        """Turn a claim into a ``calls`` row: sent, never answered, perhaps billed (inside a
        transaction of the caller's)."""
        db.execute("DELETE FROM inflight WHERE key = ?", [claim["key"]])
        ctx = _CallContext(claim["key"], "", claim["model"], claim["role"], claim["run_id"],
                           claim["item_id"], claim["config_hash"])
        db.execute(_INSERT_CALL, self._call_row(
            ctx, cached=0, paid_usd=0.0, cost_usd=0.0, latency_s=None, status=None, possibly_billed=1,
            error=f"in flight since {claim['ts']} on {claim['host']} (pid {claim['pid']}), "
                  f"never answered: {why}; possibly billed"))

    def inflight(self) -> list[dict[str, Any]]:
        """Claims held now (requests sent and not yet answered), oldest first."""
        with self._locked("read the call store") as db:
            return _fetch(db, "SELECT * FROM inflight ORDER BY started", [])

    def lookup(self, key: str) -> Completion | None:
        """The stored answer for ``key`` as a free hit (``cached=True``), or None."""
        with self._locked("read the call store") as db:
            rows = _fetch(db, "SELECT model, text, prompt_tokens, completion_tokens, cost_usd,"
                              " latency_s, ttft_s, finish_reason, simulated"
                              " FROM responses WHERE key = ?", [key])
        if not rows:
            return None
        r = rows[0]
        return Completion(text=r["text"], model=r["model"],
                          usage=Usage(r["prompt_tokens"], r["completion_tokens"]),
                          cost_usd=r["cost_usd"], latency_s=r["latency_s"], ttft_s=r["ttft_s"],
                          finish_reason=r["finish_reason"], simulated=bool(r["simulated"]),
                          cached=True)

    def spend(self, *, run_id: str | None = None, run_id_prefix: str | None = None) -> Spend:
        """Totals over the run log, optionally for one run or for runs sharing a prefix
        (e.g. every trial of a study whose run ids are ``<study>/<trial>``)."""
        where, args = _filters(run_id=run_id, run_id_prefix=run_id_prefix, column_prefix="c.")
        sql = (
            "SELECT COUNT(*) AS calls,"
            " COALESCE(SUM(c.cached), 0) AS cached_calls,"
            " COALESCE(SUM(c.error IS NOT NULL), 0) AS failed_calls,"
            " COALESCE(SUM(c.possibly_billed), 0) AS possibly_billed_calls,"
            " COALESCE(SUM(c.paid_usd), 0.0) AS paid_usd,"
            " COALESCE(SUM(CASE WHEN c.error IS NULL THEN c.cost_usd END), 0.0) AS list_cost_usd,"
            " COALESCE(SUM(CASE WHEN c.cached = 0 AND c.error IS NULL"
            "   THEN r.prompt_tokens END), 0) AS prompt_tokens,"
            " COALESCE(SUM(CASE WHEN c.cached = 0 AND c.error IS NULL"
            "   THEN r.completion_tokens END), 0) AS completion_tokens"
            " FROM calls AS c LEFT JOIN responses AS r ON r.key = c.key"
            + (f" WHERE {where}" if where else ""))
        with self._locked("read the call store") as db:
            row = _fetch(db, sql, args)[0]
        return Spend(paid_usd=float(row["paid_usd"]), list_cost_usd=float(row["list_cost_usd"]),
                     calls=row["calls"], cached_calls=row["cached_calls"],
                     failed_calls=row["failed_calls"], prompt_tokens=row["prompt_tokens"],
                     completion_tokens=row["completion_tokens"],
                     possibly_billed_calls=row["possibly_billed_calls"])

    def calls(self, *, model: str | None = None, role: str | None = None,
              run_id: str | None = None, run_id_prefix: str | None = None,
              cached: bool | None = None, limit: int | None = 100) -> list[CallRow]:
        """The run log, newest first, filtered; ``limit=None`` returns every matching row."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        where, args = _filters(model=model, role=role, run_id=run_id,
                               run_id_prefix=run_id_prefix, cached=cached)
        with self._locked("read the call store") as db:
            rows = list(db["calls"].rows_where(where or None, args, order_by="id DESC",
                                               limit=limit))
        return [CallRow(**{**r, "cached": bool(r["cached"]),
                           "possibly_billed": bool(r["possibly_billed"])}) for r in rows]

    def close(self) -> None:
        """Close the connection (checkpointing the WAL when this was the last one). Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> "CallStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CallStore({str(self._path)!r})"

    # ---------------------------------------------------------------- writes

    def _call_row(self, ctx: _CallContext, **outcome: Any) -> dict[str, Any]:
        return {"ts": _now(), "key": ctx.key, "model": ctx.model, "role": ctx.role,
                "run_id": ctx.run_id, "item_id": ctx.item_id, "config_hash": ctx.config_hash,
                "possibly_billed": 0, **outcome}

    def _store_paid(self, ctx: _CallContext, request: ChatRequest, answer: Completion) -> None:
        """The answer and its paid call row in one transaction, committed before returning."""
        response = {
            "key": ctx.key, "endpoint": ctx.endpoint, "model": answer.model,
            "request_json": canonical_json(request.identity()), "text": scrub_content(answer.text),
            "prompt_tokens": answer.usage.prompt_tokens,
            "completion_tokens": answer.usage.completion_tokens,
            "cost_usd": answer.cost_usd, "latency_s": answer.latency_s, "ttft_s": answer.ttft_s,
            "finish_reason": answer.finish_reason, "simulated": int(answer.simulated),
            "created_at": _now(),
        }
        call = self._call_row(ctx, cached=0, paid_usd=answer.cost_usd, cost_usd=answer.cost_usd,
                              latency_s=answer.latency_s, error=None, status=None)
        with self._locked("store a paid answer") as db, self._transaction():
            db.execute(_INSERT_RESPONSE, response)
            db.execute(_INSERT_CALL, call)
            db.execute("DELETE FROM inflight WHERE key = ?", [ctx.key])

    def _log_call(self, ctx: _CallContext, hit: Completion) -> None:
        row = self._call_row(ctx, cached=1, paid_usd=0.0, cost_usd=hit.cost_usd,
                             latency_s=hit.latency_s, error=None, status=None)
        with self._locked("log a cached call") as db:
            db.execute(_INSERT_CALL, row)  # one statement: its own transaction

    def _log_failure(self, ctx: _CallContext, exc: ProviderError, elapsed_s: float) -> None:
        row = self._call_row(ctx, cached=0, paid_usd=0.0, cost_usd=0.0, latency_s=elapsed_s,
                             error=scrub(f"{type(exc).__name__}: {exc}"), status=exc.status)
        with self._locked("log a failed call") as db, self._transaction():
            db.execute(_INSERT_CALL, row)
            db.execute("DELETE FROM inflight WHERE key = ? AND owner = ?", [ctx.key, self._owner])


def _fetch(db: sqlite_utils.Database, sql: str, args: list[Any]) -> list[dict[str, Any]]:
    """Rows as dicts via a plain cursor: ``Database.query`` wraps every SELECT in a savepoint,
    two extra statements on the hot path (one lookup per call) for a guard reads do not need."""
    cursor = db.execute(sql, args)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _filters(*, model: str | None = None, role: str | None = None, run_id: str | None = None,
             run_id_prefix: str | None = None, cached: bool | None = None,
             column_prefix: str = "") -> tuple[str, list[Any]]:
    """A WHERE clause (without the keyword) and its parameters; every filter is ANDed."""
    clauses: list[str] = []
    args: list[Any] = []
    c = column_prefix
    for column, value in (("model", model), ("role", role), ("run_id", run_id)):
        if value is not None:
            clauses.append(f"{c}{column} = ?")
            args.append(value)
    if run_id_prefix is not None:
        # substr, not LIKE: no wildcard escaping, and case-sensitive like run ids are
        clauses.append(f"substr({c}run_id, 1, ?) = ?")
        args.extend([len(run_id_prefix), run_id_prefix])
    if cached is not None:
        clauses.append(f"{c}cached = ?")
        args.append(int(cached))
    return " AND ".join(clauses), args
