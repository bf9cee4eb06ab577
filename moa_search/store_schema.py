"""The call store's tables, written once as numbered migrations that every backend renders.

Why data and not SQL: the call store lives in an SQLite file or in a PostgreSQL database, and the
two must hold the same tables and columns, so that ``spend()``, the ``moa-search calls`` viewer
and a user's own queries read both alike. Each migration is a list of steps (create a table, an
index, add a column); a backend turns a step into its dialect's DDL. A schema change is then
written once, and numbered: ``store_meta.schema_version`` is the last migration applied, so an
older store is upgraded in place (inside one transaction) and a newer one is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

from .store_backend import NoStoreError, StoreBackend, StoreError

__all__ = ["AddColumn", "Column", "Dialect", "Index", "MIGRATIONS", "SCHEMA_VERSION",
           "STORE_FORMAT", "Step", "Table", "init_schema"]

STORE_FORMAT = "moa_search.call_store"
META_TABLE = "store_meta"


@dataclass(frozen=True)
class Dialect:
    """What differs in DDL between databases."""

    types: Mapping[type, str]  # str, int, float -> column type
    auto_id: str  # declaration of an integer key the database numbers
    if_not_exists_column: str  # "IF NOT EXISTS " where ADD COLUMN takes it


@dataclass(frozen=True)
class Column:
    """A column; ``kind`` is str, int or float (each dialect names its type for it)."""

    name: str
    kind: type
    not_null: bool = False
    default: Any = None  # only for columns added to a table that may already hold rows

    def ddl(self, d: Dialect) -> str:
        default = f" DEFAULT {self.default!r}" if self.default is not None else ""
        return f'"{self.name}" {d.types[self.kind]}{" NOT NULL" if self.not_null else ""}{default}'


@dataclass(frozen=True)
class Table:
    """``CREATE TABLE IF NOT EXISTS``; ``auto_id``: the key is an integer the database numbers."""

    name: str
    columns: tuple[Column, ...]
    key: str
    auto_id: bool = False

    def ddl(self, d: Dialect) -> str:
        def column(c: Column) -> str:
            if c.name != self.key:
                return c.ddl(d)
            return f'"{c.name}" {d.auto_id}' if self.auto_id else f'"{c.name}" {d.types[c.kind]} PRIMARY KEY'
        return f'CREATE TABLE IF NOT EXISTS "{self.name}" ({", ".join(map(column, self.columns))})'


@dataclass(frozen=True)
class Index:
    table: str
    column: str

    @property
    def name(self) -> str:
        return f"idx_{self.table}_{self.column}"  # sqlite-utils' naming, which the first files used

    def ddl(self, d: Dialect) -> str:
        return f'CREATE INDEX IF NOT EXISTS "{self.name}" ON "{self.table}" ("{self.column}")'


@dataclass(frozen=True)
class AddColumn:
    table: str
    column: Column

    def ddl(self, d: Dialect) -> str:
        return f'ALTER TABLE "{self.table}" ADD COLUMN {d.if_not_exists_column}{self.column.ddl(d)}'


Step = Union[Table, Index, AddColumn]


def _columns(spec: dict[str, type], not_null: set[str]) -> tuple[Column, ...]:
    return tuple(Column(name, kind, name in not_null) for name, kind in spec.items())


RESPONSE_COLUMNS: dict[str, type] = {
    "key": str, "endpoint": str, "model": str, "request_json": str, "text": str,
    "prompt_tokens": int, "completion_tokens": int, "cost_usd": float, "latency_s": float,
    "ttft_s": float, "finish_reason": str, "simulated": int, "created_at": str,
    "cached_prompt_tokens": int,
}
CALL_COLUMNS: dict[str, type] = {
    "id": int, "ts": str, "key": str, "model": str, "role": str, "run_id": str, "item_id": str,
    "config_hash": str, "cached": int, "paid_usd": float, "cost_usd": float, "latency_s": float,
    "error": str, "status": int, "possibly_billed": int,
}
INFLIGHT_COLUMNS: dict[str, type] = {
    "key": str, "owner": str, "host": str, "pid": int, "started": float, "ts": str, "model": str,
    "role": str, "run_id": str, "item_id": str, "config_hash": str,
}

META = Table(META_TABLE, (Column("name", str), Column("value", str)), key="name")

_CALLS_V1 = {k: v for k, v in CALL_COLUMNS.items() if k != "possibly_billed"}
_RESPONSES_V1 = {k: v for k, v in RESPONSE_COLUMNS.items() if k != "cached_prompt_tokens"}

#: Numbered schema migrations, applied in order inside one transaction; never edit a released one.
MIGRATIONS: tuple[tuple[int, tuple[Step, ...]], ...] = (
    (1, (  # answers and the run log
        Table("responses", _columns(_RESPONSES_V1, {"endpoint", "model", "request_json", "text"}),
              key="key"),
        Table("calls", _columns(_CALLS_V1, {"ts", "key", "model", "role", "cached"}), key="id",
              auto_id=True),
        Index("calls", "run_id"), Index("calls", "model"), Index("calls", "role"),
    )),
    (2, (  # cross-process single-flight and the crash trace: claims, and possibly billed calls
        Table("inflight", _columns(INFLIGHT_COLUMNS, {"owner", "host", "pid", "started"}), key="key"),
        AddColumn("calls", Column("possibly_billed", int, not_null=True, default=0)),
    )),
    (3, (  # the prompt tokens the provider read from its cache (cheaper), so a hit keeps its usage
        AddColumn("responses", Column("cached_prompt_tokens", int, not_null=True, default=0)),
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
assert [n for n, _ in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
_STORE_TABLES = frozenset(s.name for _, steps in MIGRATIONS for s in steps if isinstance(s, Table))


def init_schema(db: StoreBackend, *, create: bool = True,
                migrations: tuple[tuple[int, tuple[Step, ...]], ...] = MIGRATIONS) -> None:
    """Check that ``db`` holds a call store (or nothing), then bring it to the last migration.

    The first check only reads, because preparing an SQLite file (WAL mode) writes to it. The
    transaction checks again, so processes creating one new store at the same instant cannot
    race (SQLite: its write lock; PostgreSQL: an advisory lock). ``create=False`` refuses a
    place that holds no store yet instead of making one. ``migrations`` is cut short only by
    tests of the upgrade path."""
    target = migrations[-1][0]
    version = _check_ours(db, db.tables(), target, create)
    db.prepare()
    if version == target:
        return
    with db.transaction(schema=True):
        tables = db.tables()
        version = _check_ours(db, tables, target, create)
        if META_TABLE not in tables:
            for sql in db.render(META):
                db.execute(sql)
            db.execute(f"INSERT INTO {META_TABLE} (name, value) VALUES (?, ?), (?, ?)",
                       ["format", STORE_FORMAT, "schema_version", "0"])
            version = 0
        for number, steps in migrations:
            if number > (version or 0):
                for step in steps:
                    for sql in db.render(step):
                        db.execute(sql)
        db.execute(f"UPDATE {META_TABLE} SET value = ? WHERE name = 'schema_version'", [str(target)])


def _check_ours(db: StoreBackend, tables: set[str], target: int, create: bool) -> int | None:
    """The store's schema version, or None for a place that holds no store yet; refuses, without
    writing, anything that is someone else's (another format, or tables that are not ours)."""
    if META_TABLE not in tables:
        if not create:
            raise NoStoreError(path=db.location)
        clash = tables if db.whole_database else tables & _STORE_TABLES
        if clash:
            shown = ", ".join(sorted(clash)[:5]) + (", ..." if len(clash) > 5 else "")
            raise StoreError(f"not a moa_search call store: {db.kind} with other tables ({shown}); "
                             "left untouched", path=db.location)
        return None
    meta = {r["name"]: r["value"] for r in db.fetch(f"SELECT name, value FROM {META_TABLE}")}
    if meta.get("format") != STORE_FORMAT:
        raise StoreError(f"not a moa_search call store (format {meta.get('format')!r}); "
                         "left untouched", path=db.location)
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        raise StoreError(f"call store has no valid schema version "
                         f"({meta.get('schema_version')!r})", path=db.location) from None
    if version > target:
        raise StoreError(f"call store schema version {version} is newer than this moa_search "
                         f"understands ({target}); upgrade moa_search", path=db.location)
    return version
