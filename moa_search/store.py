"""The call store: every LLM call goes through here, so a paid answer is never paid for twice.

Money is real. A search runs thousands of calls, is interrupted, resumed, re-run with one more
trial, and run by several worker processes (or machines) at once; every call that was already
answered must be served from the store (free and instant), and a run killed at any moment must
lose no call it paid for. The store is also the run log: one ``calls`` row per request the
toolkit made (paid, served from the store, or failed), which is what ``spend()`` and the
``moa-search calls`` viewer read.

Where it lives: a plain SQLite file by default (like simonw's ``llm``: open it with
``sqlite-utils`` or Datasette and ask your own questions), or a PostgreSQL database
(``postgresql://...``) that the machines of one study share. ``store_backend`` picks the backend
by URL scheme; this module holds every rule and speaks one SQL to both; ``store_schema`` holds
the tables as numbered migrations.

Three tables:

- ``responses``: one row per cache key (the first answer stored for it wins), holding the request
  identity (model, messages, sampling params, sample index; never headers or keys) and what the
  provider answered, with its usage, list cost and timings.
- ``calls``: one row per request made, newest = highest ``id``.
- ``inflight``: one row per request sent and not yet answered (a claim).

Durability: every write is a short transaction committed before the answer is returned.

Concurrency: asyncio tasks in one process share one connection behind a ``threading.Lock``
(writes are synchronous and take well under a millisecond locally); processes and machines share
the database. Identical requests are *single-flighted* across tasks, processes and machines: one
provider call, the others wait for it and are logged as cache hits. Within a process a future
carries the answer; across processes the leader first *claims* the key in the ``inflight``
table (in one transaction that finds no live claim and no stored answer) and the others poll
until the answer is stored. A claim is removed with the answer (or the error); a claim whose
process is gone (same host: its pid is dead; another host: older than the lease,
``CLAIM_LEASE_S``) is stale, and the next process to meet it takes the key over.

Crash trace: the claim is written *before* the request is sent. When its process dies (kill -9)
or is cancelled mid-request, the provider may have billed the call though no answer was stored;
such a claim becomes a ``calls`` row with ``possibly_billed = 1``, which ``spend()`` counts, so
a study's books show every request that may have cost money.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, get_args

from .config import canonical_json
from .keys import scrub, scrub_content
from .providers.base import ChatRequest, Completion, Provider, ProviderError, Role, Usage
from .procs import HOST, pid_alive
from .store_backend import NoStoreError, StoreBackend, StoreError, first_line, open_backend
from .store_schema import (CALL_COLUMNS, INFLIGHT_COLUMNS, RESPONSE_COLUMNS, SCHEMA_VERSION,
                           STORE_FORMAT, init_schema)

__all__ = ["CallRow", "CallStore", "NoStoreError", "Spend", "StoreError", "SCHEMA_VERSION",
           "STORE_FORMAT"]

#: A claim by a process on another host is taken over after this long (its process cannot be
#: checked); longer than any request the HTTP provider lets run, retries included.
CLAIM_LEASE_S = 3600.0
#: How often a process waiting for another's call looks for the answer (grows to the maximum).
CLAIM_POLL_S = (0.02, 0.5)

_ROLES: frozenset[str] = frozenset(get_args(Role))


@lru_cache(maxsize=None)
def _insert_sql(table: str, columns: tuple[str, ...], on_conflict: str = "") -> str:
    """Hot-path inserts are prepared SQL with one placeholder per column, in ``columns`` order."""
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({marks}){' ' + on_conflict if on_conflict else ''}"


_RESPONSE_FIELDS = tuple(RESPONSE_COLUMNS)
_CALL_FIELDS = tuple(c for c in CALL_COLUMNS if c != "id")
_CLAIM_FIELDS = tuple(INFLIGHT_COLUMNS)
# DO NOTHING: another process may have stored this key meanwhile; the first answer wins
_INSERT_RESPONSE = _insert_sql("responses", _RESPONSE_FIELDS, "ON CONFLICT (key) DO NOTHING")
_INSERT_CALL = _insert_sql("calls", _CALL_FIELDS)
# DO NOTHING: a process that claimed the key meanwhile holds it (the insert reports 0 rows)
_INSERT_CLAIM = _insert_sql("inflight", _CLAIM_FIELDS, "ON CONFLICT (key) DO NOTHING")


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


def _stale_reason(claim: dict[str, Any], lease_s: float) -> str | None:
    """Why the process holding this claim is gone, or None while it may be alive: checked by
    pid on this host, by the lease elsewhere (another host's pids cannot be checked)."""
    if claim["host"] != HOST:
        age_s = time.time() - float(claim["started"])
        return f"no answer within the {lease_s:g} s lease" if age_s > lease_s else None
    return None if pid_alive(int(claim["pid"])) else "its process is gone"


def _now() -> str:
    """UTC, ISO 8601, millisecond precision: sorts as text and reads well in the viewer."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CallStore:
    """Caches chat completions by request identity and logs every call, in an SQLite file or a
    PostgreSQL database (``location``: a path, ``sqlite:///FILE`` or ``postgresql://...``).

    ``create=False`` opens an existing store only (the viewer: "no call store here yet").
    ``claim_lease_s``: how long a claim from another host is waited for before it is taken over.
    """

    def __init__(self, location: str | Path, *, create: bool = True,
                 claim_lease_s: float = CLAIM_LEASE_S):
        self._lock = threading.Lock()
        # one in-flight future per (event loop, key): futures belong to a loop, and a store may
        # be used by successive ``asyncio.run`` calls (tests, the CLI)
        self._inflight: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Any]] = {}
        self._owner = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"  # claims in other processes
        self._lease_s = claim_lease_s
        self._db: StoreBackend = open_backend(location, create=create)
        self._closed = False
        try:
            init_schema(self._db, create=create)
            self.sweep_stale_claims()
        except self._db.errors as exc:
            self.close()
            raise StoreError(f"cannot initialise the call store ({first_line(exc)})",
                             path=self._db.location) from exc
        except BaseException:
            self.close()
            raise

    def sweep_stale_claims(self) -> int:
        """Book every claim whose process is gone as a possibly billed call; return how many.

        Done when a store opens, so a killed process's requests are counted by ``spend()`` (and
        a study's budget) even when nobody asks for the same key again."""
        with self._write("sweep stale claims") as db:
            stale = [(c, why) for c in db.fetch("SELECT * FROM inflight" + db.for_update, [])
                     if (why := _stale_reason(c, self._lease_s)) is not None]
            for claim, why in stale:
                self._log_possibly_billed(db, claim, why)
        return len(stale)

    @contextmanager
    def _locked(self, what: str) -> Iterator[StoreBackend]:
        """Serialise use of the one connection and turn driver failures into a StoreError."""
        with self._lock:
            if self._closed:
                raise StoreError(f"cannot {what}: the call store is closed", path=self._db.location)
            try:
                yield self._db
            except self._db.errors as exc:
                raise StoreError(f"cannot {what} ({first_line(exc)})", path=self._db.location) from exc

    @contextmanager
    def _write(self, what: str) -> Iterator[StoreBackend]:
        """``_locked`` inside one transaction, committed when the block ends."""
        with self._locked(what) as db, db.transaction():
            yield db

    # ---------------------------------------------------------------- public API

    @property
    def path(self) -> Path | None:
        """The file of an SQLite store; None for a database server."""
        return self._db.path

    @property
    def location(self) -> str:
        """The file or URL (without a password), as error messages name it."""
        return self._db.location

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
        stored = False
        try:
            try:
                answer = await provider.complete(request)
            except ProviderError as exc:
                outcome = exc
                self._log_failure(ctx, exc, time.perf_counter() - started)
                raise
            outcome = answer if not answer.cached else replace(answer, cached=False)
            self._store_paid(ctx, request, outcome)
            stored = True
            return outcome
        finally:
            del self._inflight[slot]
            if not future.done():
                future.set_result(outcome)
            if outcome is None:  # cancelled or crashed after sending: the call may be billed
                self._release_claim(ctx.key, "cancelled while in flight")
            elif isinstance(outcome, Completion) and not stored:  # paid, but the write failed
                with contextlib.suppress(StoreError):  # the store may be what is failing
                    self._release_claim(ctx.key, "answered, but the answer could not be stored")

    def _claim(self, ctx: _CallContext) -> bool:
        """Claim ``ctx.key`` for this process unless another live process holds it.

        One transaction: an existing claim is read and locked (a stale one is logged as possibly
        billed and removed), ours is inserted unless a claim appeared meanwhile, and the answer
        is looked for last, so an answer committed before our claim went in is always seen
        (the answering transaction also removes its claim). True when this process now leads;
        False when it must wait, or when the answer just arrived."""
        with self._write("claim a call") as db:
            rows = db.fetch("SELECT * FROM inflight WHERE key = ?" + db.for_update, [ctx.key])
            if rows:
                # our own claim with no leader in this process: its write failed (see _lead)
                why = ("left by this process" if rows[0]["owner"] == self._owner
                       else _stale_reason(rows[0], self._lease_s))
                if why is None:
                    return False
                self._log_possibly_billed(db, rows[0], why)
            claim = {"key": ctx.key, "owner": self._owner, "host": HOST, "pid": os.getpid(),
                     "started": time.time(), "ts": _now(), "model": ctx.model, "role": ctx.role,
                     "run_id": ctx.run_id, "item_id": ctx.item_id, "config_hash": ctx.config_hash}
            if not db.execute(_INSERT_CLAIM, [claim[c] for c in _CLAIM_FIELDS]):
                return False  # another process claimed it just now
            if db.fetch("SELECT 1 FROM responses WHERE key = ?", [ctx.key]):
                db.execute("DELETE FROM inflight WHERE key = ? AND owner = ?", [ctx.key, self._owner])
                return False  # the next lookup serves it
        return True

    def _release_claim(self, key: str, why: str) -> None:
        """Drop our claim on ``key`` after a request was sent but not answered (cancelled):
        logged as possibly billed, and the key is free for the next caller."""
        with self._write("release a claim") as db:
            rows = db.fetch("SELECT * FROM inflight WHERE key = ? AND owner = ?" + db.for_update,
                            [key, self._owner])
            if rows:
                self._log_possibly_billed(db, rows[0], why)

    def _log_possibly_billed(self, db: StoreBackend, claim: dict[str, Any], why: str) -> None:
        """Turn a claim into a ``calls`` row: sent, never answered, perhaps billed (inside a
        transaction of the caller's)."""
        db.execute("DELETE FROM inflight WHERE key = ?", [claim["key"]])
        ctx = _CallContext(claim["key"], "", claim["model"], claim["role"], claim["run_id"],
                           claim["item_id"], claim["config_hash"])
        self._insert_call(db, self._call_row(
            ctx, cached=0, paid_usd=0.0, cost_usd=0.0, latency_s=None, status=None, possibly_billed=1,
            error=f"in flight since {claim['ts']} on {claim['host']} (pid {claim['pid']}), "
                  f"never answered: {why}; possibly billed"))

    def inflight(self) -> list[dict[str, Any]]:
        """Claims held now (requests sent and not yet answered), oldest first."""
        with self._locked("read the call store") as db:
            return db.fetch("SELECT * FROM inflight ORDER BY started", [])

    def lookup(self, key: str) -> Completion | None:
        """The stored answer for ``key`` as a free hit (``cached=True``), or None."""
        with self._locked("read the call store") as db:
            rows = db.fetch("SELECT model, text, prompt_tokens, completion_tokens,"
                            " cached_prompt_tokens, cost_usd,"
                            " latency_s, ttft_s, finish_reason, simulated"
                            " FROM responses WHERE key = ?", [key])
        if not rows:
            return None
        r = rows[0]
        return Completion(text=r["text"], model=r["model"],
                          usage=Usage(r["prompt_tokens"], r["completion_tokens"],
                                      r["cached_prompt_tokens"]),
                          cost_usd=r["cost_usd"], latency_s=r["latency_s"], ttft_s=r["ttft_s"],
                          finish_reason=r["finish_reason"], simulated=bool(r["simulated"]),
                          cached=True)

    def spend(self, *, run_id: str | None = None, run_id_prefix: str | None = None,
              model: str | None = None, role: str | None = None, cached: bool | None = None) -> Spend:
        """Totals over the run log, optionally for one run or for runs sharing a prefix
        (e.g. every trial of a study whose run ids are ``<study>/<trial>``), and for the same
        model / role / cached filters as ``calls``."""
        where, args = _filters(run_id=run_id, run_id_prefix=run_id_prefix, model=model, role=role,
                               cached=cached, column_prefix="c.")
        sql = (
            "SELECT COUNT(*) AS calls,"
            " COALESCE(SUM(c.cached), 0) AS cached_calls,"
            " COALESCE(SUM(CASE WHEN c.error IS NOT NULL THEN 1 ELSE 0 END), 0) AS failed_calls,"
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
            row = db.fetch(sql, args)[0]
        return Spend(paid_usd=float(row["paid_usd"]), list_cost_usd=float(row["list_cost_usd"]),
                     calls=int(row["calls"]), cached_calls=int(row["cached_calls"]),
                     failed_calls=int(row["failed_calls"]), prompt_tokens=int(row["prompt_tokens"]),
                     completion_tokens=int(row["completion_tokens"]),
                     possibly_billed_calls=int(row["possibly_billed_calls"]))

    def calls(self, *, model: str | None = None, role: str | None = None,
              run_id: str | None = None, run_id_prefix: str | None = None,
              cached: bool | None = None, limit: int | None = 100) -> list[CallRow]:
        """The run log, newest first, filtered; ``limit=None`` returns every matching row."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        where, args = _filters(model=model, role=role, run_id=run_id,
                               run_id_prefix=run_id_prefix, cached=cached)
        sql = ("SELECT * FROM calls" + (f" WHERE {where}" if where else "") + " ORDER BY id DESC"
               + (" LIMIT ?" if limit is not None else ""))
        with self._locked("read the call store") as db:
            rows = db.fetch(sql, [*args, limit] if limit is not None else args)
        return [CallRow(**{**r, "cached": bool(r["cached"]),
                           "possibly_billed": bool(r["possibly_billed"])}) for r in rows]

    def close(self) -> None:
        """Close the connection (an SQLite file checkpoints its WAL when this was the last one).
        Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> "CallStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CallStore({self._db.location!r})"

    # ---------------------------------------------------------------- writes

    def _call_row(self, ctx: _CallContext, **outcome: Any) -> dict[str, Any]:
        return {"ts": _now(), "key": ctx.key, "model": ctx.model, "role": ctx.role,
                "run_id": ctx.run_id, "item_id": ctx.item_id, "config_hash": ctx.config_hash,
                "possibly_billed": 0, **outcome}

    @staticmethod
    def _insert_call(db: StoreBackend, row: dict[str, Any]) -> None:
        db.execute(_INSERT_CALL, [row[c] for c in _CALL_FIELDS])

    def _store_paid(self, ctx: _CallContext, request: ChatRequest, answer: Completion) -> None:
        """The answer and its paid call row in one transaction, committed before returning."""
        response = {
            "key": ctx.key, "endpoint": ctx.endpoint, "model": answer.model,
            "request_json": canonical_json(request.identity()), "text": scrub_content(answer.text),
            "prompt_tokens": answer.usage.prompt_tokens,
            "completion_tokens": answer.usage.completion_tokens,
            "cached_prompt_tokens": answer.usage.cached_prompt_tokens,
            "cost_usd": answer.cost_usd, "latency_s": answer.latency_s, "ttft_s": answer.ttft_s,
            "finish_reason": answer.finish_reason, "simulated": int(answer.simulated),
            "created_at": _now(),
        }
        call = self._call_row(ctx, cached=0, paid_usd=answer.cost_usd, cost_usd=answer.cost_usd,
                              latency_s=answer.latency_s, error=None, status=None)
        with self._write("store a paid answer") as db:
            db.execute(_INSERT_RESPONSE, [response[c] for c in _RESPONSE_FIELDS])
            self._insert_call(db, call)
            db.execute("DELETE FROM inflight WHERE key = ? AND owner = ?", [ctx.key, self._owner])

    def _log_call(self, ctx: _CallContext, hit: Completion) -> None:
        row = self._call_row(ctx, cached=1, paid_usd=0.0, cost_usd=hit.cost_usd,
                             latency_s=hit.latency_s, error=None, status=None)
        with self._locked("log a cached call") as db:
            self._insert_call(db, row)  # one statement: its own transaction

    def _log_failure(self, ctx: _CallContext, exc: ProviderError, elapsed_s: float) -> None:
        row = self._call_row(ctx, cached=0, paid_usd=0.0, cost_usd=0.0, latency_s=elapsed_s,
                             error=scrub(f"{type(exc).__name__}: {exc}"), status=exc.status)
        with self._write("log a failed call") as db:
            self._insert_call(db, row)
            db.execute("DELETE FROM inflight WHERE key = ? AND owner = ?", [ctx.key, self._owner])


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
