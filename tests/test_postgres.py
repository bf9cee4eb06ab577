"""The call store and the Optuna storage on PostgreSQL: a real server (pgserver's binaries, in a
temporary folder, started once per test session), real processes, never a mock.

What holds on PostgreSQL as on SQLite: the same cache semantics (the SQLite store's own tests are
run again here on a PostgreSQL store), no key paid twice by processes racing on it, a claim left
by a killed process taken over (after the lease when its host cannot be checked), the numbered
migrations, and processes starting one study on a fresh database together.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

from moa_search.cli import main
from moa_search.store import CLAIM_LEASE_S, SCHEMA_VERSION, CallStore, StoreError
from moa_search.store_backend import open_backend
from moa_search.store_schema import MIGRATIONS, init_schema
from moa_search.study_spec import parse_study_spec
from tests import test_store
from tests.test_crash_safety import SPACE, start_three_at_once_and_check
from tests.test_search import make_spec
from tests.test_store import SECRET, CountingProvider, GatedProvider, req

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the server

@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A PostgreSQL server for the session (pgserver runs it as an unprivileged user when the
    tests run as root), on a unix socket in a temporary folder it deletes when stopped."""
    try:
        import psycopg
        with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR not set (CI, root)
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        pytest.skip(f"no PostgreSQL server: {exc.name} is not installed (pip install -e '.[test]')")
    data = tempfile.mkdtemp(prefix="moa-pg-")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(data, cleanup_mode="delete")
    except Exception as exc:  # noqa: BLE001 - whatever keeps a server from starting here
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        pytest.skip(f"no PostgreSQL server: pgserver could not start one ({reason})")
    # throwaway data: no fsync, so creating a database per test and stopping take milliseconds
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.execute(f"ALTER SYSTEM SET {setting} = off")
        conn.execute("SELECT pg_reload_conf()")
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """A fresh, empty database on the session's server, as a ``postgresql://`` URL."""
    import psycopg
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.get_uri(name)


def sql(url: str, query: str, args: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement in a connection of its own (as another process or a user would)."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query, args)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[CallStore]:
    with CallStore(pg_url) as store:
        yield store


# ---------------------------------------------------------------- one process

SQLITE_STORE_TESTS = [
    test_store.test_different_sample_index_or_endpoint_is_a_new_paid_call,
    test_store.test_failure_is_logged_not_cached_and_retried_next_time,
    test_store.test_unknown_role_is_refused_before_any_call,
    test_store.test_single_flight_50_identical_tasks_make_one_call,
    test_store.test_50_distinct_concurrent_tasks_are_all_stored,
    test_store.test_single_flight_failure_reaches_every_waiter_and_is_not_cached,
    test_store.test_cancelled_follower_does_not_cancel_the_call_others_wait_for,
    test_store.test_cancelled_leader_does_not_strand_its_followers,
    test_store.test_spend_totals_and_run_id_prefix,
    test_store.test_calls_filters_newest_first,
]


@pytest.mark.parametrize("case", SQLITE_STORE_TESTS, ids=lambda f: f.__name__[5:])
async def test_the_sqlite_stores_tests_pass_on_postgres(pg_store: CallStore, case: Any) -> None:
    await case(pg_store)


async def test_hit_survives_reopen_and_no_key_reaches_the_database(pg_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", SECRET)
    provider = CountingProvider(api_key=SECRET)
    with CallStore(pg_url) as store:
        first = await store.complete(provider, req(), role="proposer", run_id="k")
        with pytest.raises(Exception):
            await store.complete(CountingProvider("f", fail_first=5, api_key=SECRET), req(),
                                 role="proposer", run_id="k")
    with CallStore(pg_url) as reopened:
        again = await reopened.complete(CountingProvider(), req(), role="proposer", run_id="k")
        assert again.cached and again.text == first.text and provider.count == 1
        assert reopened.spend(run_id="k").calls == 3
    dump = "".join(str(row) for table in ("responses", "calls", "inflight", "store_meta")
                   for row in sql(pg_url, f"SELECT * FROM {table}"))
    assert "What is 2+2?" in dump and SECRET not in dump


async def test_first_answer_stored_wins_on_postgres(pg_url: str) -> None:
    """Two connections pay for one key only when the first one's claim looks stale; the answer
    stored first is the one kept (ON CONFLICT DO NOTHING), whatever the second stores later."""
    late_provider = GatedProvider("late", gate=asyncio.Event())
    with CallStore(pg_url) as first, CallStore(pg_url) as second:
        late = asyncio.create_task(second.complete(late_provider, req("raced"), role="proposer"))
        await late_provider.asked.wait()
        sql(pg_url, "UPDATE inflight SET pid = %s", [test_store._reaped_pid()])  # its process: gone
        early = await first.complete(GatedProvider("early"), req("raced"), role="proposer")
        late_provider.gate.set()  # type: ignore[union-attr]
        await late
        again = await first.complete(GatedProvider("third"), req("raced"), role="proposer")
    assert again.cached and again.text == early.text and early.text.startswith("early: ")
    assert sql(pg_url, "SELECT text FROM responses") == [(early.text,)]


# ---------------------------------------------------------------- schema and migrations

def _columns_sqlite(path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    try:
        return {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")]
                for t in ("responses", "calls", "inflight", "store_meta")}
    finally:
        conn.close()


def _columns_pg(url: str) -> dict[str, list[str]]:
    rows = sql(url, "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position")
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def test_the_migrations_apply_on_postgres_and_give_the_sqlite_tables(pg_url: str, tmp_path: Path) -> None:
    sql(pg_url, "CREATE TABLE notes (id SERIAL PRIMARY KEY, body TEXT)")  # the user's own table
    sql(pg_url, "INSERT INTO notes (body) VALUES ('precious')")
    backend = open_backend(pg_url)
    try:
        init_schema(backend, migrations=MIGRATIONS[:1])  # a store made by the first release
    finally:
        backend.close()
    assert sql(pg_url, "SELECT value FROM store_meta WHERE name = 'schema_version'") == [("1",)]
    assert "possibly_billed" not in _columns_pg(pg_url)["calls"] and "inflight" not in _columns_pg(pg_url)
    sql(pg_url, "INSERT INTO calls (ts, key, model, role, cached, paid_usd) VALUES"
                " ('2026-01-01T00:00:00.000Z', 'k1', 'm1', 'proposer', 0, 0.5)")

    with CallStore(pg_url) as store:  # upgraded in place
        [old] = store.calls()
        assert (old.key, old.paid_usd, old.possibly_billed) == ("k1", 0.5, False)
        assert store.spend().paid_usd == 0.5
    assert sql(pg_url, "SELECT value FROM store_meta WHERE name = 'schema_version'") == \
        [(str(SCHEMA_VERSION),)]
    with CallStore(tmp_path / "calls.db"):
        pass
    pg_tables = _columns_pg(pg_url)
    assert {t: pg_tables[t] for t in ("responses", "calls", "inflight", "store_meta")} == \
        _columns_sqlite(tmp_path / "calls.db")
    assert sql(pg_url, "SELECT body FROM notes") == [("precious",)]

    sql(pg_url, "UPDATE store_meta SET value = %s WHERE name = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    with pytest.raises(StoreError, match="newer"):
        CallStore(pg_url)


def test_tables_named_like_the_stores_without_its_marker_are_refused_and_untouched(pg_url: str) -> None:
    sql(pg_url, "CREATE TABLE calls (id SERIAL PRIMARY KEY, phone TEXT)")
    with pytest.raises(StoreError, match="not a moa_search call store.*calls.*left untouched"):
        CallStore(pg_url)
    assert "store_meta" not in _columns_pg(pg_url) and _columns_pg(pg_url)["calls"] == ["id", "phone"]


def test_viewer_refuses_a_database_without_a_store_and_errors_hide_the_password(pg_url: str) -> None:
    with pytest.raises(StoreError, match="no call store here yet"):
        CallStore(pg_url, create=False)
    assert "store_meta" not in _columns_pg(pg_url)
    with pytest.raises(StoreError) as info:  # nothing listens on port 1
        CallStore("postgresql://moa:hunter2@127.0.0.1:1/db")
    message = str(info.value)
    assert "cannot connect" in message and "hunter2" not in message and "moa:***@" in message
    assert "\n" not in message


# ---------------------------------------------------------------- several processes

def _racer(url: str, keys: int, barrier: Any, queue: Any) -> None:
    """Opens the store on the shared (maybe still empty) database when the others do, then asks
    every shared key at once with them; reports how many calls its provider really made."""
    async def main() -> int:
        barrier.wait(timeout=60)
        provider = CountingProvider(delay=0.05)
        with CallStore(url) as store:
            barrier.wait(timeout=60)  # again: opening the store staggered them
            await asyncio.gather(*(store.complete(provider, req(f"shared {i}"), role="proposer",
                                                  run_id=f"race/{os.getpid()}") for i in range(keys)))
        return provider.count
    try:
        queue.put(asyncio.run(main()))
    except BaseException as exc:  # report, so the parent fails fast instead of timing out
        queue.put(repr(exc))
        raise


def test_processes_racing_on_one_postgres_store_pay_once_per_key(pg_url: str) -> None:
    keys, n = 40, 3
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(pg_url, keys, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    made = [queue.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0] * n, made
    assert sum(made) == keys  # provider calls really made, over all processes
    assert sql(pg_url, "SELECT COUNT(*) FROM responses") == [(keys,)]
    assert sql(pg_url, "SELECT COUNT(*) FROM calls WHERE cached = 0") == [(keys,)]
    assert sql(pg_url, "SELECT COUNT(*) FROM calls WHERE cached = 1") == [((n - 1) * keys,)]
    assert sql(pg_url, "SELECT COUNT(*) FROM inflight") == [(0,)]


def _claim_then_hang(url: str, queue: Any) -> None:
    """Plays a process on another machine (the one thing a single host cannot have: its claims
    carry another host name, so its pid cannot be checked), which sends a request and hangs."""
    import moa_search.store as store_module
    store_module.HOST = "machine-b"

    async def main() -> None:
        store = CallStore(url)  # never closed: the process is killed
        provider = GatedProvider("never", gate=asyncio.Event())
        task = asyncio.create_task(store.complete(provider, req("in flight"), role="proposer",
                                                  run_id="killed/1"))
        await provider.asked.wait()
        queue.put("sent")
        await task
    asyncio.run(main())


def test_a_killed_claimants_claim_on_another_host_is_taken_over_after_the_lease(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_claim_then_hang, args=(pg_url, queue))
    proc.start()
    assert queue.get(timeout=60) == "sent"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    [claim] = sql(pg_url, "SELECT host, run_id FROM inflight")
    assert claim == ("machine-b", "killed/1")

    provider = CountingProvider()
    with CallStore(pg_url) as patient:  # the default lease: it keeps waiting, pays nothing
        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(asyncio.wait_for(patient.complete(provider, req("in flight"), role="proposer"), 1.0))
    assert provider.count == 0 and CLAIM_LEASE_S > 60
    with CallStore(pg_url, claim_lease_s=0.2) as store:  # a lease the claim has outlived (1 s)
        answer = asyncio.run(store.complete(provider, req("in flight"), role="proposer"))
        assert not answer.cached and provider.count == 1
        assert store.inflight() == []
        [row] = store.calls(run_id="killed/1")
        assert row.possibly_billed and "lease" in (row.error or "") and "machine-b" in (row.error or "")
        assert store.spend(run_id="killed/1").possibly_billed_calls == 1


def test_a_killed_process_loses_no_paid_call_on_postgres(pg_url: str) -> None:
    proc = multiprocessing.get_context("spawn").Process(target=test_store._pay_then_die, args=(pg_url,))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    provider = CountingProvider()
    with CallStore(pg_url) as store:
        again = asyncio.run(store.complete(provider, req("paid before the kill"), role="proposer"))
        assert again.cached and provider.count == 0 and store.spend().calls == 2


# ---------------------------------------------------------------- studies on PostgreSQL

def test_processes_starting_one_study_on_a_fresh_postgres_database_all_run_and_queue_built_ins_once(
        pg_url: str, tmp_path: Path) -> None:
    start_three_at_once_and_check(make_spec(tmp_path, space=SPACE, budget={"trials": 8},
                                            study={"storage": pg_url}))


STUDY = (REPO / "tests" / "test_study_workflow.py").read_text("utf-8").split('STUDY = """', 1)[1] \
    .split('"""', 1)[0]


def test_a_study_on_postgres_keeps_its_calls_in_the_same_database(pg_url: str, tmp_path: Path, capsys) -> None:
    """Two worker processes, storage and call store in one database: no key paid twice, the
    study's spend is the store's, and `moa-search calls --store URL` reads it."""
    study = tmp_path / "tiny.toml"
    study.write_text(STUDY.replace("{trials}", "6").replace('backend = "sim"',
                                                           f'backend = "sim"\nstorage = "{pg_url}"'))
    runs = tmp_path / "runs"
    code = main(["study", "run", str(study), "--workers", "2", "--runs-dir", str(runs), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["simulated"] is True
    assert not list(runs.rglob("calls.db"))  # the store is in PostgreSQL
    twice = sql(pg_url, "SELECT key FROM calls WHERE cached = 0 AND error IS NULL"
                        " GROUP BY key HAVING COUNT(*) > 1")
    assert twice == []
    paid = sql(pg_url, "SELECT COUNT(*), SUM(paid_usd) FROM calls WHERE run_id LIKE 'study:tiny/%'")[0]
    assert paid[0] > 0

    code = main(["calls", "--store", pg_url, "--run", "study:tiny/", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    spend = json.loads(out)["spend"]
    assert spend["calls"] == paid[0] and spend["paid_usd"] == pytest.approx(paid[1])


def test_run_with_store_url_serves_the_second_run_from_postgres(pg_url: str, capsys) -> None:
    argv = ["run", "--preset", "moa-lite", "--backend", "sim", "--prompt", "What is 2+2?",
            "--store", pg_url, "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["cached_calls"] == 0 and second["cached_calls"] == second["calls"] > 0
    assert second["paid_usd"] == 0 and second["answer"] == first["answer"]


# ---------------------------------------------------------------- without a server

def test_study_store_defaults_to_the_postgres_storage_else_a_file(tmp_path: Path) -> None:
    text = (REPO / "studies" / "sim-demo.toml").read_text("utf-8")
    url = "postgresql+psycopg://moa@db.example/studies"
    pg = parse_study_spec(text.replace('[study]\n', f'[study]\nstorage = "{url}"\n', 1),
                          source="s.toml", base_dir=tmp_path, runs_dir=tmp_path)
    assert pg.call_store == url
    own = parse_study_spec(text.replace('[study]\n', f'[study]\nstorage = "{url}"\nstore = "c/calls.db"\n', 1),
                           source="s.toml", base_dir=tmp_path, runs_dir=tmp_path)
    assert own.call_store == tmp_path / "c" / "calls.db"
    lite = parse_study_spec(text, source="s.toml", base_dir=tmp_path, runs_dir=tmp_path)
    assert lite.call_store == lite.run_dir / "calls.db"
    with pytest.raises(Exception, match=r"s.toml: study.store: .*'mysql'"):
        parse_study_spec(text.replace('[study]\n', '[study]\nstore = "mysql://x/y"\n', 1),
                         source="s.toml", base_dir=tmp_path, runs_dir=tmp_path)


_WITHOUT_PSYCOPG = """
import sys
sys.modules["psycopg"] = None  # as if the postgres extra were not installed
from moa_search.errors import MoASearchError
from moa_search.search import open_storage
from moa_search.store import CallStore
for open_ in (CallStore, open_storage):
    try:
        open_("postgresql://moa@127.0.0.1:1/db")
    except MoASearchError as exc:
        print(exc)
"""


def test_without_the_driver_one_line_names_the_extra() -> None:
    """A fresh interpreter in which psycopg cannot be imported (the one part faked: an install
    without the extra)."""
    done = subprocess.run([sys.executable, "-c", _WITHOUT_PSYCOPG], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    for line in lines:
        assert "postgresql://moa@127.0.0.1:1/db" in line and "pip install 'moa_search[postgres]'" in line
