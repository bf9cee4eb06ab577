"""The call store in one SQLite file: a user's own machine, or processes sharing one disk.

Durability: each write is its own short transaction, committed before the answer is returned.
The file is in WAL mode with ``synchronous=NORMAL``, so a committed write survives the process
being killed (it is in the WAL, which the next opener replays); only an OS crash or power cut
can drop the last few commits. Full fsync per call would block the event loop on every answer
for a risk the brief does not ask us to cover.

Transactions are ``BEGIN IMMEDIATE``: the write lock is taken up front (waiting up to the busy
timeout), so a read inside a transaction can never make its commit fail with SQLITE_BUSY, and a
claim's read-then-write is atomic between processes. Outside a transaction the driver is in
autocommit mode: a single statement commits itself.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .store_backend import NoStoreError, StoreError
from .store_schema import AddColumn, Dialect, Step

BUSY_TIMEOUT_S = 60.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
DIALECT = Dialect(types={str: "TEXT", int: "INTEGER", float: "FLOAT"},
                  auto_id="INTEGER PRIMARY KEY",  # an alias of the rowid: numbered by SQLite
                  if_not_exists_column="")


class SQLiteBackend:
    """One connection to a call store file (created with its folder when missing)."""

    kind = "an SQLite database"
    whole_database = True
    for_update = ""  # BEGIN IMMEDIATE already holds the whole file's write lock
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path, *, create: bool = True):
        self.path = path
        self.location = str(path)
        self._check_file_is_ours()
        if not create and not path.exists():
            raise NoStoreError(path=path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory for the call store ({exc})",
                             path=path) from exc
        try:
            # isolation_level=None: the driver never BEGINs on its own; transaction() does
            self._conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                                         isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the call store ({exc})", path=path) from exc

    def _check_file_is_ours(self) -> None:
        """Refuse, without writing a byte, anything that is not empty, absent, or SQLite.

        Opening a non-SQLite file with sqlite3 and switching it to WAL would rewrite its header;
        so the magic bytes are checked before any connection is made.
        """
        p = self.path
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

    def tables(self) -> set[str]:
        try:
            return {r[0] for r in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        except sqlite3.Error as exc:  # SQLite magic, but a corrupt or encrypted body
            raise StoreError(f"not a moa_search call store: unreadable SQLite ({exc}); "
                             "left untouched", path=self.path) from exc

    def prepare(self) -> None:
        """WAL (it writes to the file, hence after the ownership check) and its sync level."""
        mode = self._retry_locked(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot switch the call store to WAL mode (got {mode!r}); "
                             "is it on a network file system?", path=self.path)
        self._conn.execute("PRAGMA synchronous = NORMAL")

    def _retry_locked(self, step: Callable[[], Any]) -> Any:
        """Run ``step`` again while the file is locked by another process, up to the busy timeout.

        Switching to WAL needs a moment of exclusive access and SQLite answers "database is
        locked" at once rather than waiting out the busy timeout, so several processes opening a
        new store together would otherwise fail."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return step()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def transaction(self, *, schema: bool = False) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, args).rowcount

    def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self._conn.execute(sql, args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def render(self, step: Step) -> list[str]:
        if isinstance(step, AddColumn):  # SQLite has no ADD COLUMN IF NOT EXISTS
            have = {r[1] for r in self._conn.execute(f'PRAGMA table_info("{step.table}")')}
            if step.column.name in have:
                return []
        return [step.ddl(DIALECT)]

    def close(self) -> None:
        self._conn.close()
