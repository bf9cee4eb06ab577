"""Optuna storage: open it (with heartbeats, and safe for many processes), create or load a study.

Why SQLite transactions are ``BEGIN IMMEDIATE`` here: Optuna claims a queued trial by reading
it as WAITING and then writing RUNNING, inside one session. Python's sqlite3 driver opens a
transaction only at the first write, so the read ran outside it: two processes could both read
WAITING, both write RUNNING, both run the trial, and the second ``tell`` crashed the worker
("Cannot tell a COMPLETE trial"). Taking SQLite's write lock when each transaction begins makes
every read-then-write atomic across processes (SQLAlchemy's documented pysqlite recipe, with
IMMEDIATE instead of a deferred BEGIN).
PostgreSQL needs nothing: Optuna reads the trial ``FOR UPDATE`` there.

Why a creation lock: Optuna creates a fresh storage's tables and its alembic row without a
transaction that would make two creators wait for each other (on PostgreSQL the loser fails
with "UniqueViolation ... pg_type_typname_nsp_index"), and a study's one-time setup (queue the
known configs, measure the baseline) reads "not done yet" in every process that starts at the
same instant. ``creation_lock`` serialises both: for SQLite between processes on one machine (an
``flock`` on the storage file's folder), for PostgreSQL between all machines (a session advisory
lock, in a connection of its own). It is held only while opening and preparing.

PostgreSQL URLs: a bare ``postgresql://`` (or ``postgres://``) means psycopg 3, the driver the
``postgres`` extra installs; without it, one line names the extra instead of Optuna's generic
"install appropriate one".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import optuna
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from ..errors import ConfigError
from ..procs import HOST, pid_alive
from ..store_backend import POSTGRES_EXTRA, first_line, redact_url
from ..study_spec import StudySpec

HEARTBEAT_INTERVAL_S = 20
GRACE_PERIOD_S = 90
#: Seconds a process waits for another's write lock before SQLite says "database is locked".
SQLITE_LOCK_TIMEOUT_S = 60


def _begin_immediate_on(engine: Engine) -> None:
    """Make every later transaction on ``engine`` start with ``BEGIN IMMEDIATE``.

    Applied after Optuna has created its tables: its start-up code opens a second connection
    while the first is in a transaction, which under IMMEDIATE would wait on its own lock. The
    pooled connections made so far are dropped so that every connection gets the setting."""
    @event.listens_for(engine, "connect")
    def _driver_autocommit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()


#: pg_advisory_lock key of ``creation_lock``. One key per database: advisory locks are scoped to
#: a database, and so is what they guard (Optuna's tables), whatever spelling the URL has.
CREATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"moa_search.creation_lock").digest()[:8],
                                   "big", signed=True)


def sqlalchemy_url(url: str) -> str:
    """A bare ``postgresql://`` or ``postgres://`` URL with psycopg 3 named as its driver: the
    one the ``postgres`` extra installs (SQLAlchemy 2.0 would pick psycopg2, and knows no
    ``postgres://``). Other URLs are returned as they are."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if sep and scheme in ("postgresql", "postgres") else url


def _dialect(url: str) -> str:
    return url.partition("://")[0].split("+", 1)[0]


@contextlib.contextmanager
def _folder_flock(url: str) -> Iterator[None]:
    """SQLite: an ``flock`` on the database file's folder (missing folder: no lock; open_storage
    reports it; an in-memory database: nothing to share)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    folder = Path(url[len("sqlite:///"):]).parent
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    """PostgreSQL: ``pg_advisory_lock`` in a connection of its own, so that it is held across
    Optuna's own connections and transactions, and released if this process dies."""
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        try:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception as exc:  # noqa: BLE001 - the driver's many connection errors
            raise ConfigError(f"cannot open Optuna storage {redact_url(url)!r}: "
                              f"{first_line(exc)}", field="study.storage") from None
        with conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": CREATION_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": CREATION_LOCK_KEY})
    finally:
        engine.dispose()


#: Storage dialect -> its creation lock; other databases get none.
_CREATION_LOCKS: dict[str, Callable[[str], ContextManager[None]]] = {
    "sqlite": _folder_flock, "postgresql": _advisory_lock, "postgres": _advisory_lock}


def creation_lock(url: str) -> ContextManager[None]:
    """Exclusive between processes (SQLite: on this machine; PostgreSQL: on any machine) while a
    storage is created or a study prepared (see the module docstring). Not re-entrant."""
    lock = _CREATION_LOCKS.get(_dialect(url))
    return lock(url) if lock is not None else contextlib.nullcontext()


def _check_driver(url: str, source: str | None) -> None:
    """One line naming the extra when a PostgreSQL URL's driver (psycopg 3) is not installed."""
    if sqlalchemy_url(url).startswith("postgresql+psycopg://") and importlib.util.find_spec("psycopg") is None:
        raise ConfigError(f"cannot open Optuna storage {redact_url(url)!r}: PostgreSQL needs the "
                          f"psycopg driver: {POSTGRES_EXTRA}", source=source, field="study.storage")


def worker_id() -> str:
    """Who runs a trial (host:pid), stamped on it when it starts: a trial RUNNING under a dead
    pid of this host is the orphan of a killed worker (``loop.fail_orphans``)."""
    return f"{HOST}:{os.getpid()}"


def worker_is_gone(worker: str) -> bool:
    """True when ``worker`` (from ``worker_id``) was a process of this host that has ended.
    Workers on other hosts are left to Optuna's heartbeats."""
    host, _, pid = worker.rpartition(":")
    return host == HOST and pid.isdigit() and not pid_alive(int(pid))


def open_storage(url: str, *, source: str | None = None, create: bool = True) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats (so crashed workers' trials are failed, not left running)."""
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not create and not db.exists():
            raise ConfigError(f"cannot open Optuna storage {url!r}: no such file", source=source,
                              field="study.storage")
        if create:
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot open Optuna storage {url!r}: {exc.strerror or exc}",
                                  source=source, field="study.storage") from None
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    _check_driver(url, source)
    try:
        with creation_lock(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(sqlalchemy_url(url), engine_kwargs=kwargs,
                                                 heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                                 grace_period=GRACE_PERIOD_S)
    except ConfigError:
        raise
    except ImportError as exc:  # Optuna's "Please install appropriate one": say which
        raise ConfigError(f"cannot open Optuna storage {redact_url(url)!r}: the database driver "
                          f"for {_dialect(url)!r} is not installed ({first_line(exc)})",
                          source=source, field="study.storage") from None
    except Exception as exc:  # sqlalchemy/optuna raise many kinds for a bad URL
        raise ConfigError(f"cannot open Optuna storage {redact_url(url)!r}: {first_line(exc)}",
                          source=source, field="study.storage") from None
    if storage.engine.dialect.name == "sqlite":
        _begin_immediate_on(storage.engine)
    return storage


def open_study(spec: StudySpec, *, sampler: optuna.samplers.BaseSampler | None = None,
               storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create the study or load it (resume); refuse one whose objectives differ."""
    storage = storage if storage is not None else open_storage(spec.storage, source=spec.source)
    directions = list(spec.objectives.directions)
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name, directions=directions,
                                    sampler=sampler, load_if_exists=True)
    except Exception as exc:
        raise ConfigError(f"cannot open study {spec.name!r} in {redact_url(spec.storage)!r}: "
                          f"{first_line(exc)}", source=spec.source, field="study.storage") from None
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError(f"study {spec.name!r} already exists in {redact_url(spec.storage)} with directions {have}, "
                          f"but the file asks for {directions}; use a new study name",
                          source=spec.source, field="objectives")
    return study

