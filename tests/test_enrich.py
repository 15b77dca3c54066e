"""Enrichment: the table (temporal) join against a plain-Python reference and DuckDB's ASOF join,
deletes, left joins, late records, pruned state, snapshot/restore and checkpointed recovery; the
lookup join against a dict, its cache (hits, misses, TTL on a manual clock, LRU bound), batching,
order, left joins, and errors that name the step.
"""

from __future__ import annotations

import pickle
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millstream as ms
from conftest import collect, finish, start
from millstream.errors import FlowDefinitionError, StepError
from millstream.testing import (
    CollectSink,
    ManualClock,
    TestSource,
    TransactionalCollectSink,
    advance_processing_time,
    watermark,
)
from test_recovery import TickingClock

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

Event = dict[str, Any]

DELETES: dict[str, Any] = {
    "function": lambda r: r["op"] == "delete",
    "field": "deleted",
    "expression": ms.col("op") == "delete",
}


# -- the reference: the latest version at or before the event, the last to come among equal times ---


def as_of(events: list[Event], table: list[Event], how: str) -> list[tuple[tuple[str, str | None], int]]:
    out = []
    for e in events:
        best: tuple[int, int] | None = None
        row: Event | None = None
        for i, v in enumerate(table):  # arrival order breaks ties between versions at the same time
            if v["k"] == e["k"] and v["ts"] <= e["ts"] and (best is None or (v["ts"], i) > best):
                best, row = (v["ts"], i), v
        if row is not None and row["op"] == "delete":
            row = None
        if row is None and how == "inner":
            continue
        out.append(((e["id"], row["id"] if row is not None else None), e["ts"]))
    return sorted(out, key=repr)


def ids(event: Event, row: Event | None) -> tuple[str, str | None]:
    return (event["id"], row["id"] if row is not None else None)


def table_join(events: list[Any], table: list[Any], bound: int, *, how: str = "inner", deletes: Any = None,
               chunk: int | None = None) -> tuple[list[Any], int]:
    flow = ms.Flow("asof")
    wm = ms.WatermarkStrategy.bounded(bound, timestamp="ts")
    ev = flow.source(TestSource(events, chunk=chunk, name="events"), watermark=wm)
    tb = flow.source(TestSource(table, chunk=chunk, name="table"), watermark=wm)
    out = collect(ev.key_by("k").join_table(tb.key_by("k"), how=how, deletes=deletes, combine=ids))
    result = flow.run()
    return sorted(out.items, key=repr), result.total("late")


@st.composite
def changelog(draw: st.DrawFn) -> tuple[list[Event], list[Event], int]:
    """Events and table versions (some deletes), each in an arrival order within ``bound`` of its watermark."""
    bound = draw(st.integers(0, 20))

    def arrival(items: list[Event]) -> list[Event]:
        jitter = draw(st.lists(st.integers(0, bound), min_size=len(items), max_size=len(items)))
        return [items[i] for i in sorted(range(len(items)), key=lambda i: (items[i]["ts"] + jitter[i], i))]

    n = draw(st.integers(0, 25))
    events = [{"id": f"E{i}", "k": draw(st.sampled_from("abc")), "ts": draw(st.integers(-20, 120))}
              for i in range(n)]
    m = draw(st.integers(0, 20))
    table = []
    for i in range(m):
        op = draw(st.sampled_from(["upsert", "upsert", "upsert", "delete"]))
        table.append({"id": f"V{i}", "k": draw(st.sampled_from("abc")), "ts": draw(st.integers(-30, 120)),
                      "op": op, "deleted": op == "delete"})
    return arrival(events), arrival(table), bound


@SETTINGS
@given(data=changelog(), how=st.sampled_from(["inner", "left"]), deletes=st.sampled_from(sorted(DELETES)),
       chunk=st.sampled_from([1, 3, 64]))
def test_table_join_is_the_version_valid_at_the_event_time(data: tuple[list[Event], list[Event], int], how: str,
                                                           deletes: str, chunk: int) -> None:
    events, table, bound = data
    got, late = table_join(events, table, bound, how=how, deletes=DELETES[deletes], chunk=chunk)
    assert got == as_of(events, table, how)
    assert late == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_table_join_matches_a_duckdb_asof_join(seed: int) -> None:
    duckdb = pytest.importorskip("duckdb")
    rnd = random.Random(seed)
    events = [{"id": f"E{i}", "k": rnd.choice("abcd"), "ts": rnd.randint(0, 2_000)} for i in range(400)]
    # distinct version times per key: DuckDB's ASOF join has no arrival order to break ties with
    times = {k: rnd.sample(range(-100, 2_000), 60) for k in "abcd"}
    table = [{"id": f"V{k}{j}", "k": k, "ts": t, "op": "delete" if rnd.random() < 0.15 else "upsert"}
             for k in "abcd" for j, t in enumerate(times[k])]
    # arrival: out of order by up to 50 ms on each side
    events.sort(key=lambda e: e["ts"] + rnd.randint(0, 50))
    table.sort(key=lambda v: v["ts"] + rnd.randint(0, 50))
    db = duckdb.connect()
    db.execute("CREATE TABLE ev (id VARCHAR, k VARCHAR, ts BIGINT)")
    db.execute("CREATE TABLE tb (id VARCHAR, k VARCHAR, ts BIGINT, op VARCHAR)")
    db.executemany("INSERT INTO ev VALUES (?, ?, ?)", [(e["id"], e["k"], e["ts"]) for e in events])
    db.executemany("INSERT INTO tb VALUES (?, ?, ?, ?)", [(v["id"], v["k"], v["ts"], v["op"]) for v in table])
    rows = db.execute("SELECT ev.id, CASE WHEN tb.op = 'upsert' THEN tb.id END, ev.ts "
                      "FROM ev ASOF LEFT JOIN tb ON ev.k = tb.k AND ev.ts >= tb.ts").fetchall()
    expected_left = sorted((((e, v), t) for e, v, t in rows), key=repr)
    for how in ("inner", "left"):
        got, late = table_join(events, table, 50, how=how, deletes=DELETES["function"], chunk=37)
        expected = expected_left if how == "left" else [x for x in expected_left if x[0][1] is not None]
        assert got == expected, how
        assert late == 0
    assert any(v is None for (_, v), _ in expected_left) and any(v for (_, v), _ in expected_left)


# -- scripted cases -------------------------------------------------------------------------------


def scripted(script: list[Any], **kw: Any) -> tuple[list[Any], int]:
    """Events (id E..) and versions (id V..) from one source in the script's order."""
    flow = ms.Flow("scripted")
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    ev = src.filter(lambda r: r["id"][0] == "E").key_by("k")
    tb = src.filter(lambda r: r["id"][0] == "V").key_by("k")
    out = collect(ev.join_table(tb, **kw))
    result = flow.run()
    return out.items, result.total("late")


def test_default_output_merges_the_row_and_a_left_join_keeps_events_without_one() -> None:
    script = [{"id": "V1", "k": "a", "ts": 0, "limit": 5},
              {"id": "E1", "k": "a", "ts": 3, "amount": 2},
              {"id": "E2", "k": "b", "ts": 4, "amount": 7},   # no row for b
              {"id": "V2", "k": "a", "ts": 5, "limit": 9},
              {"id": "E3", "k": "a", "ts": 5, "amount": 1},   # the version at the same time applies
              {"id": "V3", "k": "a", "ts": 8, "op": "delete"},
              {"id": "E4", "k": "a", "ts": 9, "amount": 4}]   # deleted
    got, late = scripted(script, how="left", deletes=lambda r: r.get("op") == "delete")
    assert got == [
        ({"id": "E1", "k": "a", "ts": 3, "amount": 2, "id_right": "V1", "ts_right": 0, "limit": 5}, 3),
        ({"id": "E2", "k": "b", "ts": 4, "amount": 7}, 4),
        ({"id": "E3", "k": "a", "ts": 5, "amount": 1, "id_right": "V2", "ts_right": 5, "limit": 9}, 5),
        ({"id": "E4", "k": "a", "ts": 9, "amount": 4}, 9),
    ]
    assert late == 0
    inner, _ = scripted(script, combine=ids)
    assert [v for v, _ in inner] == [("E1", "V1"), ("E3", "V2"), ("E4", "V3")]  # without deletes V3 is a row


def test_events_wait_for_the_table_watermark_and_late_records_are_counted() -> None:
    flow = ms.Flow("late")
    wm = ms.WatermarkStrategy.monotonous(timestamp="ts")
    ev = flow.source(TestSource([{"id": "E1", "k": "a", "ts": 10}, watermark(30),
                                 {"id": "E2", "k": "a", "ts": 20},  # behind the watermark: late
                                 {"id": "E3", "k": "a", "ts": 40}], name="events"), watermark=wm)
    tb = flow.source(TestSource([{"id": "V1", "k": "a", "ts": 5}, {"id": "V2", "k": "a", "ts": 9},
                                 watermark(35),
                                 {"id": "V0", "k": "a", "ts": 7},  # late: E1 was answered without it
                                 {"id": "V3", "k": "a", "ts": 39}], name="table"), watermark=wm)
    out = collect(ev.key_by("k").join_table(tb.key_by("k"), combine=ids))
    result = flow.run()
    assert out.items == [(("E1", "V2"), 10), (("E3", "V3"), 40)]
    assert result.total("late") == 2


@pytest.mark.native_only("reads the operator's state between steps")
def test_versions_no_pending_event_can_need_are_dropped() -> None:
    n = 3_000
    events = [{"id": f"E{i}", "k": i % 5, "ts": i} for i in range(n)]
    table = [{"id": f"V{i}", "k": i % 5, "ts": i, "op": "delete" if i % 50 == 49 else "upsert"} for i in range(n)]
    flow = ms.Flow("prune")
    wm = ms.WatermarkStrategy.bounded(10, timestamp="ts")
    ev = flow.source(TestSource(events, chunk=40, name="events"), watermark=wm)
    tb = flow.source(TestSource(table, chunk=40, name="table"), watermark=wm)
    out = collect(ev.key_by("k").join_table(tb.key_by("k"), deletes=DELETES["function"], combine=ids))
    job = start(flow)
    op = next(o for o in job.ops if o.node.kind == "table_join")
    sizes = []
    while job.step(40)[1]:
        sizes.append(op.state_size())  # type: ignore[attr-defined]
    job.close()
    assert max(sizes) < 2 * (40 + 10) + 10  # a chunk and the bound of each side, not the history
    assert sorted(out.values, key=repr) == sorted((v for v, _ in as_of(events, table, "inner")), key=repr)


# -- snapshot, restore and recovery --------------------------------------------------------------------


def _random_inputs(seed: int) -> tuple[list[Event], list[Event]]:
    rnd = random.Random(seed)
    events = [{"id": f"E{i}", "k": rnd.choice("abc"), "ts": i * 3 + rnd.randint(-25, 0)} for i in range(90)]
    table = []
    for i in range(60):
        op = "delete" if rnd.random() < 0.2 else "upsert"
        table.append({"id": f"V{i}", "k": rnd.choice("abc"), "ts": i * 4 + rnd.randint(-25, 0), "op": op})
    return events, table  # disorder of up to 25 against a bound of 10: some records are late


SNAP_EVENTS, SNAP_TABLE = _random_inputs(3)


def _snap_run(how: str, cut: int | None) -> tuple[list[Any], int]:
    def build() -> tuple[ms.Flow, CollectSink]:
        flow = ms.Flow("snap")
        wm = ms.WatermarkStrategy.bounded(10, timestamp="ts")
        ev = flow.source(TestSource(SNAP_EVENTS, chunk=5, name="events"), watermark=wm)
        tb = flow.source(TestSource(SNAP_TABLE, chunk=5, name="table"), watermark=wm)
        joined = ev.key_by("k").join_table(tb.key_by("k"), how=how, deletes=DELETES["function"], combine=ids)
        return flow, collect(joined)

    flow, sink = build()
    job = start(flow)
    op = next(o for o in job.ops if o.node.kind == "table_join")
    if cut is None:
        finish(job)
        return sink.items, op.metrics()["late"]
    for _ in range(cut):
        job.step(5)
    blob = pickle.dumps(job.snapshot())
    job.close()
    flow2, sink2 = build()
    job2 = start(flow2)
    job2.restore(pickle.loads(blob))
    finish(job2)
    op2 = next(o for o in job2.ops if o.node.kind == "table_join")
    return sink.items + sink2.items, op2.metrics()["late"]


@pytest.mark.native_only("drives a native job step by step")
@pytest.mark.parametrize("how", ["inner", "left"])
def test_snapshot_restore_at_every_cut_gives_the_uninterrupted_output(how: str) -> None:
    whole, late = _snap_run(how, None)
    assert whole and late > 0
    for cut in range(len(SNAP_EVENTS) // 5 + 3):
        assert _snap_run(how, cut) == (whole, late), f"cut after {cut} steps"


def _enrich_flow(sink: ms.connectors.Sink, users: Any, fail: Callable[[Event, Any], Any]) -> ms.Flow:
    flow = ms.Flow("enrich-recovery")
    wm = ms.WatermarkStrategy.bounded(0, timestamp="ts")
    tx = flow.source(ms.connectors.memory.read(
        [{"tx": j, "card": j % 40, "ts": j * 3} for j in range(1_500)], name="tx"), watermark=wm)
    limits = flow.source(ms.connectors.memory.read(
        [{"card": i % 40, "limit": i, "user": i % 40 + 1, "ts": i * 40} for i in range(120)], name="limits"),
        watermark=wm)
    (tx.key_by("card").join_table(limits.key_by("card"), combine=lambda t, v: {**t, "limit": v["limit"],
                                                                              "user": v["user"]})
     .lookup(users, key="user", combine=fail, cache_size=10)
     .sink(sink))
    return flow


def test_table_and_lookup_joins_recover_exactly_once_from_a_checkpoint(tmp_path: Path) -> None:
    users = DictTable({u: {"user": u, "name": f"u{u}"} for u in range(1, 41)})

    def pair(t: Event, u: Any) -> tuple[int, int, str]:
        return (t["tx"], t["limit"], u["name"])

    reference = CollectSink()
    _enrich_flow(reference, users, pair).run()
    assert len(reference.values) > 1_000
    poison = sorted(reference.values)[len(reference.values) * 2 // 3][0]
    failed: list[int] = []

    def flaky(t: Event, u: Any) -> tuple[int, int, str]:
        if t["tx"] == poison and not failed:
            failed.append(1)
            raise ConnectionError("the enrichment service blinked")
        return pair(t, u)

    sink = TransactionalCollectSink()
    result = _enrich_flow(sink, users, flaky).run(
        guarantee="exactly-once", restarts=2, restart_delay_s=0, checkpoint_dir=tmp_path / "ck",
        checkpoint_interval=100, clock=TickingClock(), max_chunk=64)
    assert failed and result.restarts == 1
    assert result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert Counter(sink.values) == Counter(reference.values)


# -- lookup joins ----------------------------------------------------------------------------------


class DictTable:
    """A lookup table over a dict that records every fetch (optionally slow, to overlap batches)."""

    key = "id"  # the rows' key field: a record keyed by a field of that name keeps one copy

    def __init__(self, rows: Mapping[Any, Any], delay_s: float = 0.0) -> None:
        self.rows = dict(rows)
        self.delay_s = delay_s
        self.calls: list[list[Any]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()
        self.opened = self.closed = 0

    def fetch(self, keys: Sequence[Any]) -> Mapping[Any, Any]:
        with self._lock:
            self.calls.append(list(keys))
            self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        return {k: self.rows[k] for k in keys if k in self.rows}

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1


USERS = {i: {"id": i, "name": f"user{i}"} for i in range(20)}


def lookup_run(records: list[Any], table: Any, *, clock: Any = None, chunk: int | None = None,
               **kw: Any) -> tuple[list[Any], ms.RunResult]:
    flow = ms.Flow("lookup")
    out = collect(flow.source(TestSource(records, chunk=chunk)).lookup(table, **kw))
    result = flow.run(clock=clock or ManualClock())
    return out.values, result


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.integers(0, 30), max_size=60), how=st.sampled_from(["inner", "left"]),
       batch_size=st.sampled_from([1, 3, 1_000]), cache_size=st.sampled_from([0, 2, 1_000]),
       max_in_flight=st.sampled_from([1, 3]), chunk=st.sampled_from([2, 7, 100]))
def test_lookup_is_a_dict_lookup_in_input_order(keys: list[int], how: str, batch_size: int, cache_size: int,
                                                max_in_flight: int, chunk: int) -> None:
    records = [{"n": i, "user_id": k} for i, k in enumerate(keys)]
    table = DictTable(USERS)
    got, _ = lookup_run(records, table, chunk=chunk, key="user_id", how=how, batch_size=batch_size,
                        cache_size=cache_size, max_in_flight=max_in_flight,
                        combine=lambda r, u: (r["n"], u["name"] if u is not None else None))
    expected = [(r["n"], USERS[r["user_id"]]["name"] if r["user_id"] in USERS else None) for r in records
                if how == "left" or r["user_id"] in USERS]
    assert got == expected
    assert all(len(c) <= batch_size and len(set(c)) == len(c) for c in table.calls)
    assert table.opened == table.closed == 1


def test_lookup_default_output_and_left_misses() -> None:
    records = [{"user_id": 1, "id": "tx1"}, {"user_id": 99, "id": "tx2"}, {"user_id": 2, "id": "tx3"}]
    inner, result = lookup_run(records, DictTable(USERS), key="user_id")
    assert inner == [{"user_id": 1, "id": "tx1", "id_right": 1, "name": "user1"},
                     {"user_id": 2, "id": "tx3", "id_right": 2, "name": "user2"}]
    assert result.total("not_found") == 1
    left, _ = lookup_run(records, DictTable(USERS), key="user_id", how="left")
    assert left[1] == {"user_id": 99, "id": "tx2"}  # no row: the record unchanged
    same_name, _ = lookup_run([{"id": 3, "amount": 5}], DictTable(USERS), key="id")
    assert same_name == [{"id": 3, "amount": 5, "name": "user3"}]  # the key is not repeated


def test_the_cache_serves_hits_and_expires_by_processing_time() -> None:
    table = DictTable(USERS)
    script = [{"u": 1}, {"u": 2}, {"u": 99}, {"u": 1},  # 1, 2 and the miss 99 fetched once
              advance_processing_time(500),
              {"u": 1}, {"u": 3}, {"u": 99},            # 1 and 99 from the cache (misses are cached too)
              advance_processing_time(600),             # 1 100 ms: the first fetch has expired
              {"u": 1}, {"u": 3}]                       # 3 was fetched at 500: still fresh
    got, result = lookup_run(script, table, key="u", how="left", cache_ttl=1_000,
                             combine=lambda r, u: u["name"] if u else None)
    assert got == ["user1", "user2", None, "user1", "user1", "user3", None, "user1", "user3"]
    assert table.calls == [[1, 2, 99], [3], [1]]
    assert result.total("queries") == 3 and result.total("cache_misses") == 5
    assert result.total("cache_hits") == 3  # 1 and 99 at 500, 3 at 1 100 (counted once per key and chunk)


def test_the_cache_keeps_the_most_recently_used_keys() -> None:
    table = DictTable(USERS)
    script = [{"u": 1}, {"u": 2}, {"u": 1}, {"u": 3}, {"u": 2}, {"u": 1}]
    lookup_run(script, table, key="u", cache_size=2, chunk=1)
    # 1, 2 cached; 1 hit (now newest); 3 evicts 2; 2 evicts 1; 1 again
    assert table.calls == [[1], [2], [3], [2], [1]]
    no_cache = DictTable(USERS)
    lookup_run(script, no_cache, key="u", cache_size=0, chunk=1)
    assert len(no_cache.calls) == len(script)


def test_batches_are_fetched_ahead_on_a_pool_and_the_output_keeps_the_input_order() -> None:
    table = DictTable({i: {"id": i} for i in range(40)}, delay_s=0.02)
    records = [{"n": i, "u": (i * 7) % 40} for i in range(40)]  # 40 distinct keys: 20 batches to fetch
    started = time.perf_counter()
    got, _ = lookup_run(records, table, key="u", batch_size=2, max_in_flight=4, cache_size=0,
                        combine=lambda r, u: (r["n"], u["id"]))
    elapsed = time.perf_counter() - started
    assert got == [(r["n"], r["u"]) for r in records]
    assert len(table.calls) == 20 and len(table.threads) > 1
    assert elapsed < 20 * 0.02  # sequential fetches would take at least 0.4 s


# -- SQLite ----------------------------------------------------------------------------------------


@pytest.fixture
def users_db(tmp_path: Path) -> str:
    path = str(tmp_path / "users.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, tier TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?)", [(i, f"user{i}", "gold" if i % 3 else "basic")
                                                               for i in range(2_000)])
    return path


def test_sqlite_lookup_matches_a_dict(users_db: str) -> None:
    rnd = random.Random(5)
    records = [{"n": i, "user_id": rnd.randint(0, 2_500)} for i in range(3_000)]
    table = ms.connectors.sqlite.table(users_db, "users", key="id", columns=["name"])
    got, result = lookup_run(records, table, key="user_id", batch_size=256, how="left")
    expected = [{**r, "id": r["user_id"], "name": f"user{r['user_id']}"} if r["user_id"] < 2_000 else r
                for r in records]
    assert got == expected
    assert result.total("cache_misses") == len({r["user_id"] for r in records})


def test_sqlite_lookup_by_expression_key(users_db: str) -> None:
    table = ms.connectors.sqlite.table(users_db, "users", key="id")
    got, _ = lookup_run([{"ref": "u17"}, {"ref": "u4000"}], table, key=lambda r: int(r["ref"][1:]),
                        combine=lambda r, u: (r["ref"], u["tier"]))
    assert got == [("u17", "gold")]


@pytest.mark.parametrize(("table", "key", "message"), [
    ("nosuch", "id", r"has no table 'nosuch' \(tables: users\)"),
    ("users", "uid", r"has no column 'uid' \(columns: id, name, tier\)"),
])
def test_a_missing_table_or_column_fails_before_running_naming_the_step(users_db: str, table: str, key: str,
                                                                        message: str) -> None:
    flow = ms.Flow("bad")
    sink = CollectSink()
    flow.source(TestSource([{"user_id": 1}])).lookup(
        ms.connectors.sqlite.table(users_db, table, key=key), key="user_id", name="users").sink(sink)
    with pytest.raises(FlowDefinitionError, match=message) as info:
        flow.run()
    assert info.value.step == "users" and "test_enrich.py:" in (info.value.location or "")
    assert info.value.fix and not sink.values


def test_a_missing_database_fails_naming_the_step(tmp_path: Path) -> None:
    flow = ms.Flow("bad")
    flow.source(TestSource([{"user_id": 1}])).lookup(
        ms.connectors.sqlite.table(tmp_path / "absent.db", "users", key="id"), key="user_id").sink(CollectSink())
    with pytest.raises(FlowDefinitionError, match=r"step 'lookup'.*absent.db' does not exist"):
        flow.run()


def test_a_failing_fetch_raises_a_step_error() -> None:
    class Broken:
        def fetch(self, keys: Sequence[Any]) -> Mapping[Any, Any]:
            raise ConnectionError("database went away")

    flow = ms.Flow("broken")
    flow.source(TestSource([{"u": 1}])).lookup(Broken(), key="u", name="enrich").sink(CollectSink())
    with pytest.raises(StepError, match=r"step 'enrich'.*ConnectionError: database went away"):
        flow.run()


# -- building ----------------------------------------------------------------------------------------


def _streams(flow: ms.Flow, timed: bool = True) -> tuple[ms.KeyedStream, ms.KeyedStream]:
    wm = ms.WatermarkStrategy.monotonous(timestamp="ts")
    a = flow.source(TestSource([{"k": "a", "ts": 1}], name="a"), watermark=wm if timed else None)
    b = flow.source(TestSource([{"k": "a", "ts": 1}], name="b"), watermark=wm)
    return a.key_by("k"), b.key_by("k")


BUILD_ERRORS: dict[str, tuple[Callable[[ms.KeyedStream, ms.KeyedStream], Any], str]] = {
    "table-how": (lambda a, b: a.join_table(b, how="outer"), r"'inner' .* or 'left'"),
    "table-not-keyed": (lambda a, b: a.join_table(b.map(lambda r: r)), r"joins two keyed streams"),
    "table-deletes": (lambda a, b: a.join_table(b, deletes=42), r"join_table\(deletes=...\) needs a function"),
    "table-combine": (lambda a, b: a.join_table(b, combine=lambda r: r), r"combine calls its function with 2"),
    "lookup-table": (lambda a, b: a.lookup({"a": 1}, key="k"), r"takes a lookup table"),
    "lookup-key": (lambda a, b: a.lookup(DictTable({}), key=3), r"key_by takes a field name"),
    "lookup-batch": (lambda a, b: a.lookup(DictTable({}), key="k", batch_size=0), r"batch_size must be an int >= 1"),
    "lookup-cache": (lambda a, b: a.lookup(DictTable({}), key="k", cache_size=-1), r"cache_size must be an int >= 0"),
    "lookup-ttl": (lambda a, b: a.lookup(DictTable({}), key="k", cache_ttl=1.5), r"cache_ttl must be a datetime"),
    "lookup-how": (lambda a, b: a.lookup(DictTable({}), key="k", how="right"), r"'inner' .* or 'left'"),
}


@pytest.mark.parametrize("case", list(BUILD_ERRORS))
def test_enrichment_built_wrong_fails_while_building_naming_step_and_line(case: str) -> None:
    build, message = BUILD_ERRORS[case]
    a, b = _streams(ms.Flow("e"))
    with pytest.raises(FlowDefinitionError, match=message) as info:
        build(a, b)
    assert info.value.location is not None and "test_enrich.py:" in info.value.location
    assert info.value.step in ("join_table", "lookup") and info.value.fix


def test_a_table_join_needs_event_time_on_both_inputs() -> None:
    a, b = _streams(ms.Flow("e"), timed=False)
    with pytest.raises(FlowDefinitionError, match=r"needs event time on both inputs; no event time: key_by:k"):
        a.join_table(b, name="limits")


def test_enrichment_shows_in_the_plan(users_db: str) -> None:
    flow = ms.Flow("p")
    a, b = _streams(flow)
    a.join_table(b, deletes="deleted", how="left").sink(CollectSink())
    users = ms.connectors.sqlite.table(users_db, "users", key="id")
    a.lookup(users, key="k", cache_ttl=60_000, combine=ids).sink(CollectSink())
    text = str(flow.plan())
    assert "join_table: table_join left on k = k as of event time, deletes: field 'deleted' set" in text
    assert f"lookup: lookup inner sqlite {users_db}:users.id on k: ids" in text
    assert pickle.loads(pickle.dumps(users)) == users  # a plain value: steps pickle to workers
