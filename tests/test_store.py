"""The call store: a paid answer is never paid twice, a killed run loses nothing, keys hold no
secrets, and other people's files are never touched. Real SQLite files, real processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from moa_search.errors import MoASearchError
from moa_search.providers.base import ChatRequest, Completion, Message, ProviderError, Usage
from moa_search.store import SCHEMA_VERSION, CallStore, StoreError

SECRET = "sk-test-SECRET-6f1c2a9d0b"


class CountingProvider:
    """Test double: a deterministic answer per request, counting the calls it really makes.

    ``fail_first`` makes the first n calls raise ``ProviderError`` (status 503); ``delay`` makes
    each call take real time so concurrent callers overlap. It holds an API key in an attribute
    and echoes it into ``Completion.extra`` as a careless HTTP client might, so the tests can
    prove the store never writes it.
    """

    def __init__(self, name: str = "a", *, delay: float = 0.0, fail_first: int = 0,
                 api_key: str = SECRET):
        self.name = name
        self.delay = delay
        self.fail_first = fail_first
        self.api_key = api_key
        self.count = 0

    def endpoint_identity(self, model: str) -> str:
        return f"counting:{self.name}"

    async def complete(self, request: ChatRequest) -> Completion:
        self.count += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.count <= self.fail_first:
            raise ProviderError("overloaded, try later", endpoint=f"counting:{self.name}",
                                status=503)
        prompt = request.messages[-1].content
        text = f"{request.model}/{request.sample_index}/{request.temperature}: {prompt[::-1]}"
        usage = Usage(len(prompt) + 7, len(text))
        return Completion(text=text, model=request.model, usage=usage,
                          cost_usd=usage.total_tokens * 1e-6, latency_s=1.25, ttft_s=0.25,
                          finish_reason="length", simulated=True,
                          extra={"headers": {"Authorization": f"Bearer {self.api_key}"}})

    async def aclose(self) -> None:
        pass


def req(content: str = "What is 2+2?", *, model: str = "m1", temperature: float = 0.7,
        sample_index: int = 0, max_tokens: int = 256) -> ChatRequest:
    return ChatRequest(model, (Message("user", content),), temperature, max_tokens, sample_index)


@pytest.fixture
def store(tmp_path: Path):
    s = CallStore(tmp_path / "calls.db")
    yield s
    s.close()


def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


# ---------------------------------------------------------------- cache semantics

async def test_hit_is_identical_free_and_survives_reopen(tmp_path: Path):
    path = tmp_path / "deep" / "dir" / "calls.db"
    provider = CountingProvider()
    with CallStore(path) as store:
        first = await store.complete(provider, req(), role="proposer", run_id="r1")
        second = await store.complete(provider, req(), role="proposer", run_id="r1")
    assert provider.count == 1
    assert first.cached is False and first.paid_usd == first.cost_usd > 0
    assert second.cached is True and second.paid_usd == 0.0
    for field in ("text", "model", "usage", "cost_usd", "latency_s", "ttft_s", "finish_reason",
                  "simulated"):
        assert getattr(second, field) == getattr(first, field), field

    with CallStore(path) as reopened:  # a new run on the same file: still free
        third = await reopened.complete(CountingProvider(), req(), role="proposer")
        assert third.cached and third.text == first.text
        assert reopened.lookup(CallStore.cache_key("counting:a", req())) == second


def test_cache_key_separates_everything_that_changes_the_answer():
    base = CallStore.cache_key("e1", req())
    assert CallStore.cache_key("e1", req()) == base
    variants = [
        CallStore.cache_key("e2", req()),
        CallStore.cache_key("e1", req(sample_index=1)),
        CallStore.cache_key("e1", req(temperature=0.0)),
        CallStore.cache_key("e1", req(max_tokens=255)),
        CallStore.cache_key("e1", req(model="m2")),
        CallStore.cache_key("e1", req("What is 2+3?")),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    assert len(base) == 64 and int(base, 16) >= 0


def test_cache_key_is_pinned():
    """Changing this digest silently invalidates every user's cache: it must be deliberate."""
    assert req().cache_key_material("e1") == (
        '{"endpoint":"e1","max_tokens":256,"messages":[{"content":"What is 2+2?","role":"user"}],'
        '"model":"m1","sample_index":0,"temperature":0.7}')
    assert CallStore.cache_key("e1", req()) == \
        "33dae355cafddffb18ae684ba9b28fc5eda8bdcd0564575a015fce15a24a8daa"


async def test_different_sample_index_or_endpoint_is_a_new_paid_call(store: CallStore):
    a, b = CountingProvider("a"), CountingProvider("b")
    await store.complete(a, req(), role="proposer")
    s1 = await store.complete(a, req(sample_index=1), role="proposer")
    other = await store.complete(b, req(), role="proposer")
    assert (a.count, b.count) == (2, 1)
    assert not s1.cached and not other.cached


async def test_failure_is_logged_not_cached_and_retried_next_time(store: CallStore):
    provider = CountingProvider(fail_first=1)
    with pytest.raises(ProviderError, match="overloaded"):
        await store.complete(provider, req(), role="aggregator", run_id="r")
    assert store.lookup(CallStore.cache_key("counting:a", req())) is None
    [row] = store.calls()
    assert row.error is not None and "overloaded" in row.error and row.status == 503
    assert row.paid_usd == 0.0 and not row.cached and not row.ok

    ok = await store.complete(provider, req(), role="aggregator", run_id="r")
    assert provider.count == 2 and not ok.cached
    spend = store.spend(run_id="r")
    assert (spend.calls, spend.failed_calls, spend.cached_calls) == (2, 1, 0)
    assert spend.paid_usd == pytest.approx(ok.cost_usd)


async def test_unknown_role_is_refused_before_any_call(store: CallStore):
    provider = CountingProvider()
    with pytest.raises(ValueError, match="role"):
        await store.complete(provider, req(), role="proposr")
    assert provider.count == 0 and store.calls() == []


# ---------------------------------------------------------------- concurrency in one process

async def test_single_flight_50_identical_tasks_make_one_call(store: CallStore):
    provider = CountingProvider(delay=0.05)
    results = await asyncio.gather(*(store.complete(provider, req(), role="proposer", run_id="sf")
                                     for _ in range(50)))
    assert provider.count == 1
    assert len({r.text for r in results}) == 1
    assert sum(not r.cached for r in results) == 1
    spend = store.spend(run_id="sf")
    assert (spend.calls, spend.cached_calls) == (50, 49)
    assert spend.paid_usd == pytest.approx(results[0].cost_usd)
    assert spend.list_cost_usd == pytest.approx(50 * results[0].cost_usd)


async def test_50_distinct_concurrent_tasks_are_all_stored(store: CallStore):
    provider = CountingProvider(delay=0.01)
    results = await asyncio.gather(*(store.complete(provider, req(f"q{i}"), role="proposer")
                                     for i in range(50)))
    assert provider.count == 50 and not any(r.cached for r in results)
    for i, r in enumerate(results):
        assert store.lookup(CallStore.cache_key("counting:a", req(f"q{i}"))).text == r.text
    assert len(store.calls(limit=None)) == 50


async def test_single_flight_failure_reaches_every_waiter_and_is_not_cached(store: CallStore):
    provider = CountingProvider(delay=0.02, fail_first=1)
    results = await asyncio.gather(*(store.complete(provider, req(), role="judge")
                                     for _ in range(5)), return_exceptions=True)
    assert provider.count == 1
    assert all(isinstance(r, ProviderError) for r in results)
    assert store.spend().failed_calls == 5
    assert (await store.complete(provider, req(), role="judge")).cached is False
    assert provider.count == 2


async def test_cancelled_follower_does_not_cancel_the_call_others_wait_for(store: CallStore):
    provider = CountingProvider(delay=0.05)
    leader = asyncio.create_task(store.complete(provider, req(), role="proposer"))
    await asyncio.sleep(0.01)
    impatient = asyncio.create_task(store.complete(provider, req(), role="proposer"))
    patient = asyncio.create_task(store.complete(provider, req(), role="proposer"))
    await asyncio.sleep(0.01)
    impatient.cancel()
    first, other = await asyncio.wait_for(asyncio.gather(leader, patient), 2)
    assert provider.count == 1 and not first.cached and other.cached
    assert impatient.cancelled()


async def test_cancelled_leader_does_not_strand_its_followers(store: CallStore):
    provider = CountingProvider(delay=0.05)
    leader = asyncio.create_task(store.complete(provider, req(), role="proposer"))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(store.complete(provider, req(), role="proposer"))
    await asyncio.sleep(0.01)
    leader.cancel()
    answer = await asyncio.wait_for(follower, 2)
    assert answer.cached is False and provider.count == 2  # the follower led the retry


# ---------------------------------------------------------------- accounting and the log

async def test_spend_totals_and_run_id_prefix(store: CallStore):
    provider = CountingProvider()
    paid = [await store.complete(provider, req("x"), role="proposer", run_id="s1/t0"),
            await store.complete(provider, req("yy"), role="aggregator", run_id="s1/t1")]
    hit = await store.complete(provider, req("x"), role="proposer", run_id="s1/t1")
    other = await store.complete(provider, req("zzz"), role="proposer", run_id="s2/t0")
    failing = CountingProvider("f", fail_first=1)
    with pytest.raises(ProviderError):
        await store.complete(failing, req("w"), role="judge", run_id="s1/t1")

    s1 = store.spend(run_id_prefix="s1/")
    assert (s1.calls, s1.cached_calls, s1.failed_calls, s1.paid_calls) == (4, 1, 1, 2)
    assert s1.paid_usd == pytest.approx(sum(c.cost_usd for c in paid))
    assert s1.list_cost_usd == pytest.approx(sum(c.cost_usd for c in paid) + hit.cost_usd)
    assert s1.saved_usd == pytest.approx(hit.cost_usd)
    assert s1.prompt_tokens == sum(c.usage.prompt_tokens for c in paid)
    assert s1.completion_tokens == sum(c.usage.completion_tokens for c in paid)

    assert store.spend(run_id="s1/t1").calls == 3
    assert store.spend(run_id="s2/t0").paid_usd == pytest.approx(other.cost_usd)
    assert store.spend().calls == 5
    assert store.spend(run_id_prefix="s_").calls == 0  # a prefix, not a LIKE pattern
    assert store.spend(run_id="nope").paid_usd == 0.0


async def test_calls_filters_newest_first(store: CallStore):
    provider = CountingProvider()
    await store.complete(provider, req("a", model="m1"), role="proposer", run_id="r1", item_id="i1",
                         config_hash="h1")
    await store.complete(provider, req("b", model="m2"), role="aggregator", run_id="r1")
    await store.complete(provider, req("a", model="m1"), role="proposer", run_id="r2")
    await store.complete(provider, req("c", model="m2"), role="judge", run_id="r2")

    rows = store.calls()
    assert [r.id for r in rows] == sorted((r.id for r in rows), reverse=True)
    assert [(r.model, r.role) for r in rows] == [("m2", "judge"), ("m1", "proposer"),
                                                 ("m2", "aggregator"), ("m1", "proposer")]
    assert rows[-1].item_id == "i1" and rows[-1].config_hash == "h1" and rows[-1].ts.endswith("Z")
    assert [r.role for r in store.calls(model="m2")] == ["judge", "aggregator"]
    assert [r.model for r in store.calls(role="proposer")] == ["m1", "m1"]
    assert [r.run_id for r in store.calls(cached=True)] == ["r2"]
    assert len(store.calls(cached=False)) == 3
    assert [r.role for r in store.calls(run_id="r1", model="m1")] == ["proposer"]
    assert len(store.calls(run_id_prefix="r")) == 4
    assert [r.role for r in store.calls(limit=1)] == ["judge"]
    assert len(store.calls(limit=None)) == 4
    # the spend of a selection is the spend of exactly the calls listed
    for filters in ({"role": "judge"}, {"model": "m1"}, {"cached": True}, {"cached": False},
                    {"model": "m2", "role": "aggregator"}):
        listed = store.calls(limit=None, **filters)
        spend = store.spend(**filters)
        assert spend.calls == len(listed), filters
        assert spend.paid_usd == sum(r.paid_usd for r in listed), filters
    hit = store.calls(cached=True)[0]
    assert hit.paid_usd == 0.0 and hit.cost_usd > 0 and hit.latency_s == 1.25


# ---------------------------------------------------------------- the file

def test_wal_mode_busy_timeout_and_schema(tmp_path: Path):
    path = tmp_path / "calls.db"
    with CallStore(path) as store:
        assert store._db._conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 30_000
        other = sqlite3.connect(path)
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"responses", "calls", "store_meta"} <= tables
        indexes = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"idx_calls_run_id", "idx_calls_model", "idx_calls_role"} <= indexes
        assert dict(other.execute("SELECT name, value FROM store_meta"))["schema_version"] == \
            str(SCHEMA_VERSION)
        other.close()


def _foreign_sqlite(path: Path, *, wal: bool) -> None:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('precious')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["sqlite", "sqlite-wal", "garbage", "short-garbage",
                                  "sqlite-magic-garbage"])
def test_foreign_file_is_refused_and_left_byte_identical(tmp_path: Path, kind: str):
    path = tmp_path / "not-a-store.db"
    if kind.startswith("sqlite"):
        _foreign_sqlite(path, wal=kind == "sqlite-wal")
    elif kind == "sqlite-magic-garbage":
        path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        path.write_bytes(b"hello")
    before = path.read_bytes()
    with pytest.raises(StoreError) as info:
        CallStore(path)
    assert isinstance(info.value, MoASearchError)
    assert str(path) in str(info.value) and "not a moa_search call store" in str(info.value)
    assert path.read_bytes() == before


async def test_empty_file_becomes_a_store(tmp_path: Path):
    """A zero-byte file (``touch``, or a crash before the first commit) holds nothing to protect."""
    path = tmp_path / "calls.db"
    path.touch()
    with CallStore(path) as store:
        await store.complete(CountingProvider(), req(), role="proposer")
        assert store.spend().calls == 1


def test_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "calls.db"
    CallStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE store_meta SET value = ? WHERE name = 'schema_version'",
                 [str(SCHEMA_VERSION + 1)])
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        CallStore(path)


def test_directory_and_closed_store_give_store_errors(tmp_path: Path):
    with pytest.raises(StoreError, match="directory"):
        CallStore(tmp_path)
    store = CallStore(tmp_path / "calls.db")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.calls()


class GatedProvider(CountingProvider):
    """Test double: a CountingProvider whose answers carry ``tag`` and, given a ``gate``, wait
    for it, so two stores can miss one key together and answer it differently in a known order."""

    def __init__(self, tag: str, gate: asyncio.Event | None = None):
        super().__init__()
        self.tag, self.gate, self.asked = tag, gate, asyncio.Event()

    async def complete(self, request: ChatRequest) -> Completion:
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        answer = await super().complete(request)
        return Completion(text=f"{self.tag}: {answer.text}", model=answer.model, usage=answer.usage,
                          cost_usd=answer.cost_usd, latency_s=answer.latency_s)


def _reaped_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


async def test_first_answer_stored_wins_when_two_connections_pay_for_one_key(tmp_path: Path):
    """Two connections (as two processes have) both pay for one key only when the first one's
    claim looks stale (its process judged gone); the answer stored first is then the one kept,
    whatever the second stores later. The two answers differ, so keeping the wrong one is visible."""
    path = tmp_path / "calls.db"
    late_provider = GatedProvider("late", gate=asyncio.Event())
    with CallStore(path) as first, CallStore(path) as second:
        late = asyncio.create_task(second.complete(late_provider, req("raced"), role="proposer"))
        await late_provider.asked.wait()  # it missed the store and is now paying
        conn = sqlite3.connect(path)
        with conn:  # its claim now names a dead process, so the next caller takes the key over
            conn.execute("UPDATE inflight SET pid = ?", [_reaped_pid()])
        conn.close()
        early = await first.complete(GatedProvider("early"), req("raced"), role="proposer")
        late_provider.gate.set()  # type: ignore[union-attr]
        late_answer = await late
    assert early.text.startswith("early: ") and not early.cached and not late_answer.cached
    with CallStore(path) as reopened:
        spend = reopened.spend()
        # both paid; the taken-over claim is also logged as a possibly billed call
        assert (spend.calls, spend.cached_calls, spend.possibly_billed_calls) == (3, 0, 1)
        assert spend.paid_usd > 0
        again = await reopened.complete(GatedProvider("third"), req("raced"), role="proposer")
    assert again.cached and again.text == early.text
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT text FROM responses").fetchall() == [(early.text,)]
    conn.close()


async def test_answer_is_committed_before_it_is_returned(store: CallStore):
    """Another connection (as a new process after a kill would) sees the row at once."""
    answer = await store.complete(CountingProvider(), req(), role="proposer")
    other = sqlite3.connect(store.path)
    assert other.execute("SELECT text FROM responses").fetchall() == [(answer.text,)]
    assert other.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 1
    other.close()


async def test_api_key_never_reaches_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TOGETHER_API_KEY", SECRET)
    provider = CountingProvider(api_key=SECRET)
    failing = CountingProvider("f", fail_first=5, api_key=SECRET)
    with CallStore(tmp_path / "calls.db") as store:
        await store.complete(provider, req(), role="proposer", run_id="k")
        await store.complete(provider, req(), role="proposer", run_id="k")
        with pytest.raises(ProviderError):
            await store.complete(failing, req(), role="proposer", run_id="k")
        assert store.spend().calls == 3  # the calls did reach the file
        assert SECRET.encode() not in all_bytes(tmp_path)  # WAL included
    data = all_bytes(tmp_path)
    assert b"What is 2+2?" in data and SECRET.encode() not in data


# ---------------------------------------------------------------- several processes

def _key_in_child(_: int) -> str:
    return CallStore.cache_key("e1", req())


def _worker(path: str, worker: int, n: int, queue) -> None:
    """A separate process: n shared requests (same keys in every worker) and n of its own."""
    async def main() -> dict[str, str]:
        provider = CountingProvider()
        texts = {}
        with CallStore(path) as store:
            for i in range(n):
                for content in (f"shared {i}", f"own {worker} {i}"):
                    c = await store.complete(provider, req(content), role="proposer",
                                             run_id=f"w{worker}")
                    texts[content] = c.text
        return texts
    try:
        queue.put((worker, asyncio.run(main())))
    except BaseException as exc:  # report, so the parent fails fast instead of timing out
        queue.put((worker, repr(exc)))
        raise


def _race(path: str, barrier, queue) -> None:
    """Both processes miss together; one pays, the other waits for its answer."""
    async def main() -> str:
        with CallStore(path) as store:
            barrier.wait(timeout=30)
            c = await store.complete(CountingProvider(delay=0.3), req("raced"), role="proposer")
            return f"cached={c.cached} {c.text}"
    try:
        queue.put(asyncio.run(main()))
    except BaseException as exc:  # report, so the parent fails fast instead of timing out
        queue.put(repr(exc))
        raise


def _pay_then_die(path: str) -> None:
    async def main() -> None:
        store = CallStore(path)  # never closed: the process is killed
        await store.complete(CountingProvider(), req("paid before the kill"), role="proposer")
        os.kill(os.getpid(), signal.SIGKILL)
    asyncio.run(main())


def test_cache_key_is_the_same_in_another_process():
    ctx = multiprocessing.get_context("spawn")  # fresh interpreter, fresh hash() salt
    with ctx.Pool(1) as pool:
        assert pool.map(_key_in_child, [0]) == [CallStore.cache_key("e1", req())]


def test_three_processes_share_one_file(tmp_path: Path):
    path = tmp_path / "calls.db"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    n = 40
    procs = [ctx.Process(target=_worker, args=(str(path), w, n, queue)) for w in range(3)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0, 0], results
    with CallStore(path) as store:
        assert store.spend().calls == 3 * 2 * n
        assert store.spend().failed_calls == 0
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == n + 3 * n
        conn.close()
        for i in range(n):
            stored = store.lookup(CallStore.cache_key("counting:a", req(f"shared {i}")))
            assert all(results[w][f"shared {i}"] == stored.text for w in range(3))
        for w in range(3):
            assert store.spend(run_id=f"w{w}").calls == 2 * n


def test_two_processes_racing_on_one_key_pay_once(tmp_path: Path):
    path = tmp_path / "calls.db"
    CallStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(path), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0], outcomes
    with CallStore(path) as store:
        spend = store.spend()
        assert (spend.calls, spend.cached_calls, spend.failed_calls) == (2, 1, 0)  # paid once
        stored = store.lookup(CallStore.cache_key("counting:a", req("raced")))
        assert sorted(outcomes) == [f"cached=False {stored.text}", f"cached=True {stored.text}"]
        assert store.inflight() == []
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 1
    conn.close()


def _die_in_flight(path: str) -> None:
    """Sends a request (a provider that never answers) and is killed before the answer."""
    async def main() -> None:
        store = CallStore(path)  # never closed: the process is killed
        provider = GatedProvider("never", gate=asyncio.Event())
        task = asyncio.create_task(store.complete(provider, req("in flight"), role="proposer",
                                                  run_id="killed/1"))
        await provider.asked.wait()
        os.kill(os.getpid(), signal.SIGKILL)
        await task
    asyncio.run(main())


def test_a_call_in_flight_at_kill_9_is_counted_as_possibly_billed_and_taken_over(tmp_path: Path):
    path = tmp_path / "calls.db"
    proc = multiprocessing.get_context("spawn").Process(target=_die_in_flight, args=(str(path),))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    conn = sqlite3.connect(path)
    left = conn.execute("SELECT run_id FROM inflight").fetchall()
    conn.close()
    assert left == [("killed/1",)]  # the trace it left
    with CallStore(path) as store:  # opening books it at once, asked again or not
        assert store.inflight() == [] and store.spend(run_id="killed/1").possibly_billed_calls == 1
        provider = CountingProvider()
        answer = asyncio.run(store.complete(provider, req("in flight"), role="proposer"))
        assert not answer.cached and provider.count == 1  # taken over at once, no waiting
        assert store.inflight() == []
        spend = store.spend(run_id="killed/1")
        assert (spend.calls, spend.possibly_billed_calls) == (1, 1)
        row = store.calls(run_id="killed/1")[0]
        assert row.possibly_billed and "possibly billed" in (row.error or "")


def test_a_killed_process_loses_no_paid_call(tmp_path: Path):
    path = tmp_path / "calls.db"
    proc = multiprocessing.get_context("spawn").Process(target=_pay_then_die, args=(str(path),))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    provider = CountingProvider()
    with CallStore(path) as store:
        again = asyncio.run(store.complete(provider, req("paid before the kill"), role="proposer"))
        assert again.cached and provider.count == 0
        assert store.spend().calls == 2 and store.spend().cached_calls == 1


async def test_a_failed_write_of_a_paid_answer_neither_hangs_the_key_nor_hides_the_call(
        store: CallStore, monkeypatch: pytest.MonkeyPatch):
    """Fault injected into our own write (a full disk, a lock timeout): the paid call is booked
    as possibly billed and the next request for the key is answered, not left waiting on a claim."""
    real = store._store_paid
    calls = {"n": 0}

    def failing_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreError("disk full (injected)", path=store.location)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_store_paid", failing_once)
    provider = CountingProvider()
    with pytest.raises(StoreError):
        await store.complete(provider, req("lost write"), role="proposer", run_id="w")
    again = await asyncio.wait_for(store.complete(provider, req("lost write"), role="proposer",
                                                  run_id="w"), timeout=10)
    assert not again.cached and provider.count == 2
    spend = store.spend(run_id="w")
    assert spend.possibly_billed_calls == 1 and store.inflight() == []
