"""Where the call store lives: an SQLite file, or a PostgreSQL database that many machines share.

``CallStore`` holds every rule of the store (the cache key, single-flight claims, the run log)
and speaks one SQL, written with ``?`` placeholders in the part of SQL that SQLite and
PostgreSQL share (``INSERT ... ON CONFLICT``, ``CASE``, ``substr``). A backend is the small rest:
connecting, transactions, the placeholder style, DDL types, and the driver's error classes.
Backends are found by the location's URL scheme in ``BACKENDS``; a plain path is an SQLite file.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence
from urllib.parse import urlsplit, urlunsplit

from .errors import MoASearchError

if TYPE_CHECKING:
    from .store_schema import Step

__all__ = ["BACKENDS", "NoStoreError", "StoreBackend", "StoreError", "open_backend", "redact_url"]

#: What to install for a PostgreSQL call store or Optuna storage; named in the missing-driver error.
POSTGRES_EXTRA = "pip install 'moa_search[postgres]'"


class StoreError(MoASearchError):
    """The call store cannot be used as one. The message starts with its path or URL (without
    a password)."""

    def __init__(self, message: str, *, path: str | Path):
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class NoStoreError(StoreError):
    """Nothing at this location holds a call store yet (it was opened with ``create=False``)."""

    def __init__(self, *, path: str | Path):
        super().__init__("no call store here yet", path=path)


class StoreBackend(Protocol):
    """One open connection to where a call store lives. Not thread-safe: ``CallStore`` holds a
    lock around every use."""

    location: str  # the path or URL (without a password) that starts every StoreError message
    path: Path | None  # the file, for a file store
    kind: str  # "an SQLite database": how error messages name what they found
    whole_database: bool  # True: any other table means someone else's; False: shares a database
    for_update: str  # appended to a SELECT that must lock the rows it reads in a transaction
    errors: tuple[type[Exception], ...]  # the driver's errors, turned into StoreError

    def tables(self) -> set[str]: ...
    def prepare(self) -> None: ...
    def transaction(self, *, schema: bool = False) -> AbstractContextManager[None]: ...
    def execute(self, sql: str, args: Sequence[Any] = ()) -> int: ...
    def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
    def render(self, step: "Step") -> list[str]: ...
    def close(self) -> None: ...


def _sqlite(location: str, create: bool) -> StoreBackend:
    from .store_sqlite import SQLiteBackend
    path = location[len("sqlite:///"):] if location.startswith("sqlite:///") else location
    return SQLiteBackend(Path(path), create=create)


def _postgres(location: str, create: bool) -> StoreBackend:
    from .store_postgres import PostgresBackend
    return PostgresBackend(location)


#: URL scheme (before any ``+driver``) -> backend factory(location, create).
BACKENDS: dict[str, Callable[[str, bool], StoreBackend]] = {
    "sqlite": _sqlite, "postgresql": _postgres, "postgres": _postgres}


def open_backend(location: str | Path, *, create: bool = True) -> StoreBackend:
    """The backend for a file path, ``sqlite:///FILE`` or ``postgresql://...`` URL."""
    text = str(location)
    if isinstance(location, Path) or "://" not in text:
        return BACKENDS["sqlite"](text, create)
    scheme = text.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in BACKENDS:
        raise StoreError(f"unknown call store URL scheme {scheme!r}; expected a file path, "
                         f"sqlite:///FILE or postgresql://USER@HOST/DATABASE", path=redact_url(text))
    return BACKENDS[scheme](text, create)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: URLs are printed in errors and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = "&".join(("password=***" if q.lower().startswith("password=") else q)
                     for q in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def first_line(exc: BaseException) -> str:
    """A driver error in one line (PostgreSQL adds DETAIL and HINT lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
