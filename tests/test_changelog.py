"""Changelogs: outer regular joins against DuckDB's outer joins (the final table, as a multiset),
arrival order within the bound, TTL, changelog aggregates against a group-by, the upsert sink
and ``CollectSink.table``, snapshot/restore at every cut, exactly-once recovery, build errors.
"""

from __future__ import annotations

import pickle
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millstream as ms
from conftest import canon, collect, finish, start
from millstream import changelog
from millstream.errors import FlowDefinitionError, StepError
from millstream.testing import CollectSink, TestSource, TransactionalCollectSink, watermark
from test_recovery import TickingClock

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

Event = dict[str, Any]
FIELDS = ("lid", "k", "lts", "rid", "rk", "rts")
HOWS = ("left", "right", "full")


# -- inputs and references --------------------------------------------------------------------------


@st.composite
def two_inputs(draw: st.DrawFn) -> tuple[list[Event], list[Event], int]:
    """Left ``{lid, k, lts}`` and right ``{rid, rk, rts}`` events (disjoint field names, so the
    default output has no renames), each side in an arrival order within ``bound`` of its watermark."""
    bound = draw(st.integers(0, 25))

    def side(prefix: str, key: str, ts: str) -> list[Event]:
        times = draw(st.lists(st.integers(-40, 200), max_size=20))
        keys = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=len(times), max_size=len(times)))
        jitter = draw(st.lists(st.integers(0, bound), min_size=len(times), max_size=len(times)))
        events = [{f"{prefix}id": f"{prefix.upper()}{i}", key: k, ts: t} for i, (t, k) in enumerate(zip(times, keys))]
        return [events[i] for i in sorted(range(len(events)), key=lambda i: (times[i] + jitter[i], i))]

    return side("l", "k", "lts"), side("r", "rk", "rts"), bound


def duckdb_join(lefts: list[Event], rights: list[Event], how: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    con.execute("CREATE TABLE l (lid VARCHAR, k VARCHAR, lts INTEGER)")
    con.execute("CREATE TABLE r (rid VARCHAR, rk VARCHAR, rts INTEGER)")
    if lefts:
        con.executemany("INSERT INTO l VALUES (?, ?, ?)", [(e["lid"], e["k"], e["lts"]) for e in lefts])
    if rights:
        con.executemany("INSERT INTO r VALUES (?, ?, ?)", [(e["rid"], e["rk"], e["rts"]) for e in rights])
    sql = {"left": "LEFT OUTER", "right": "RIGHT OUTER", "full": "FULL OUTER"}[how]
    rows = con.execute(f"SELECT lid, k, lts, rid, rk, rts FROM l {sql} JOIN r ON l.k = r.rk").fetchall()
    con.close()
    return sorted(rows, key=repr)


def as_tuples(rows: list[Event]) -> list[tuple[Any, ...]]:
    """Rows of the final table as tuples of FIELDS, an absent field as None (as SQL pads)."""
    for r in rows:
        assert set(r) <= set(FIELDS), r
    return sorted((tuple(r.get(f) for f in FIELDS) for r in rows), key=repr)


def sides(flow: ms.Flow, lefts: list[Event], rights: list[Event], bound: int, chunk: int | None = None,
          ) -> tuple[ms.KeyedStream, ms.KeyedStream]:
    left = flow.source(TestSource(lefts, chunk=chunk, name="left"),
                       watermark=ms.WatermarkStrategy.bounded(bound, timestamp="lts"))
    right = flow.source(TestSource(rights, chunk=chunk, name="right"),
                        watermark=ms.WatermarkStrategy.bounded(bound, timestamp="rts"))
    return left.key_by("k"), right.key_by("rk")


def run_outer(lefts: list[Event], rights: list[Event], bound: int, how: str, chunk: int | None = None,
              ttl: int | None = None) -> tuple[CollectSink, int]:
    flow = ms.Flow("outer")
    a, b = sides(flow, lefts, rights, bound, chunk)
    out = collect(a.join(b, how=how, ttl=ttl))
    result = flow.run()
    return out, result.total("late")


def check_changelog(values: list[Any]) -> None:
    """Every record is marked; every -D takes back a row inserted before and still there."""
    live: Counter[Any] = Counter()
    for r in values:
        kind = r[changelog.CHANGE]
        assert kind in (changelog.INSERT, changelog.DELETE)
        row = canon([changelog.strip(r)])[0]
        if kind == changelog.DELETE:
            assert live[row] > 0, f"-D of a row not inserted: {r}"
            live[row] -= 1
        else:
            live[row] += 1


CHUNKS = st.sampled_from([1, 2, 3, 7, 64])


# -- outer joins against DuckDB -------------------------------------------------------------------


@SETTINGS
@given(data=two_inputs(), chunk=CHUNKS, how=st.sampled_from(HOWS))
def test_outer_join_final_table_is_duckdbs_outer_join(data: tuple[list[Event], list[Event], int], chunk: int,
                                                      how: str) -> None:
    lefts, rights, bound = data
    out, late = run_outer(lefts, rights, bound, how, chunk)
    assert late == 0
    check_changelog(out.values)
    assert as_tuples(out.table()) == duckdb_join(lefts, rights, how)


@SETTINGS
@given(data=two_inputs(), how=st.sampled_from(HOWS), seed=st.integers(0, 2**32))
def test_outer_join_final_table_is_the_same_for_any_arrival_order_within_the_bound(
        data: tuple[list[Event], list[Event], int], how: str, seed: int) -> None:
    lefts, rights, bound = data
    first, _ = run_outer(lefts, rights, bound, how, 3)
    # both sides interleaved differently: one chunk at a time, the other all at once
    second, _ = run_outer(lefts, rights, bound, how, random.Random(seed).choice([1, 64]))
    assert canon(first.table()) == canon(second.table())


def test_inner_join_output_is_unchanged_and_unmarked() -> None:
    lefts = [{"lid": "L1", "k": "a", "lts": 1}, {"lid": "L2", "k": "b", "lts": 2}]
    rights = [{"rid": "R1", "rk": "a", "rts": 3}]
    out, _ = run_outer(lefts, rights, 0, "inner")
    assert out.values == [{"lid": "L1", "k": "a", "lts": 1, "rid": "R1", "rk": "a", "rts": 3}]


def ev(ident: str, t: int, k: str = "a") -> Event:
    return {"id": ident, "k": k, "ts": t}


def one_source(flow: ms.Flow, script: list[Any]) -> tuple[ms.KeyedStream, ms.KeyedStream]:
    """Both sides from one scripted source, a record at a time (the same watermark, the script's order)."""
    src = flow.source(TestSource(script, chunk=1), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    return (src.filter(lambda e: e["id"][0] == "L").key_by("k"),
            src.filter(lambda e: e["id"][0] == "R").key_by("k"))


def test_a_padded_row_is_retracted_when_its_first_partner_comes() -> None:
    flow = ms.Flow("s")
    a, b = one_source(flow, [ev("L1", 1), ev("L2", 2, "b"), ev("R1", 5), ev("R2", 6)])
    out = collect(a.join(b, how="left"))
    flow.run()
    l1 = {"id": "L1", "k": "a", "ts": 1}
    assert out.items == [
        ({**l1, "_change": "+I"}, 1),
        ({"id": "L2", "k": "b", "ts": 2, "_change": "+I"}, 2),
        ({**l1, "_change": "-D"}, 5),  # the very row inserted, taken back before the pair
        ({**l1, "id_right": "R1", "ts_right": 5, "_change": "+I"}, 5),
        ({**l1, "id_right": "R2", "ts_right": 6, "_change": "+I"}, 6),
    ]
    assert out.table() == [{"id": "L2", "k": "b", "ts": 2}, {**l1, "id_right": "R1", "ts_right": 5},
                           {**l1, "id_right": "R2", "ts_right": 6}]


def test_a_full_join_pads_and_retracts_both_sides() -> None:
    flow = ms.Flow("s")
    a, b = one_source(flow, [ev("R1", 1), ev("R2", 2), ev("L1", 3), ev("L2", 4, "b")])
    out = collect(a.join(b, how="full", combine=lambda x, y: {"l": x and x["id"], "r": y and y["id"]}))
    flow.run()
    assert out.items == [
        ({"l": None, "r": "R1", "_change": "+I"}, 1),
        ({"l": None, "r": "R2", "_change": "+I"}, 2),
        ({"l": None, "r": "R1", "_change": "-D"}, 3),
        ({"l": None, "r": "R2", "_change": "-D"}, 3),
        ({"l": "L1", "r": "R1", "_change": "+I"}, 3),
        ({"l": "L1", "r": "R2", "_change": "+I"}, 3),
        ({"l": "L2", "r": None, "_change": "+I"}, 4),
    ]


# -- TTL --------------------------------------------------------------------------------------------


def test_an_expired_padded_row_is_not_retracted() -> None:
    script = [ev("L1", 0), watermark(20),
              ev("L2", 12),  # alive (>= 20 - 10); L1 has expired unmatched
              ev("R1", 15),  # pairs with L2 (retracting L2's padded row), not with L1
              ev("L3", 5)]   # late: joins nothing, not padded either
    flow = ms.Flow("ttl")
    a, b = one_source(flow, script)
    out = collect(a.join(b, how="left", ttl=10, combine=lambda x, y: {"l": x["id"], "r": y and y["id"]}))
    result = flow.run()
    assert out.items == [
        ({"l": "L1", "r": None, "_change": "+I"}, 0),
        ({"l": "L2", "r": None, "_change": "+I"}, 12),
        ({"l": "L2", "r": None, "_change": "-D"}, 15),
        ({"l": "L2", "r": "R1", "_change": "+I"}, 15),
    ]
    assert result.total("late") == 1
    assert out.table() == [{"l": "L1", "r": None}, {"l": "L2", "r": "R1"}]


@SETTINGS
@given(data=two_inputs(), chunk=CHUNKS, ttl=st.integers(0, 60), how=st.sampled_from(HOWS))
def test_with_a_ttl_each_record_is_either_paired_or_padded(data: tuple[list[Event], list[Event], int], chunk: int,
                                                           ttl: int, how: str) -> None:
    """The pairs are the inner join's (every pair within the TTL, none invented); a record of an
    outer side that paired with nothing is in the final table once, padded; one that paired is not."""
    lefts, rights, bound = data
    out, late = run_outer(lefts, rights, bound, how, chunk, ttl)
    assert late == 0
    check_changelog(out.values)
    table = out.table()
    pairs = [(r["lid"], r["rid"]) for r in table if "lid" in r and "rid" in r]
    lts = {e["lid"]: e["lts"] for e in lefts}
    rts = {e["rid"]: e["rts"] for e in rights}
    every = {(a["lid"], b["rid"]) for a in lefts for b in rights if a["k"] == b["rk"]}
    assert set(pairs) <= every and len(set(pairs)) == len(pairs)
    assert {p for p in every if abs(lts[p[0]] - rts[p[1]]) <= ttl} <= set(pairs)
    padded_left = sorted(r["lid"] for r in table if "rid" not in r)
    padded_right = sorted(r["rid"] for r in table if "lid" not in r)
    paired_left, paired_right = {p[0] for p in pairs}, {p[1] for p in pairs}
    assert padded_left == (sorted(i for i in lts if i not in paired_left) if how in ("left", "full") else [])
    assert padded_right == (sorted(i for i in rts if i not in paired_right) if how in ("right", "full") else [])


# -- changelog aggregates ---------------------------------------------------------------------------


def _group_by(events: list[Event]) -> list[Event]:
    groups: dict[str, list[int]] = defaultdict(list)
    for e in events:
        groups[e["k"]].append(e["v"])
    return [{"k": k, "n": len(vs), "s": sum(vs), "lo": min(vs), "hi": max(vs), "m": sum(vs) / len(vs)}
            for k, vs in groups.items()]


@SETTINGS
@given(values=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(-50, 50)), max_size=40), chunk=CHUNKS,
       timed=st.booleans())
def test_a_changelog_aggregates_final_table_is_the_group_by(values: list[tuple[str, int]], chunk: int,
                                                           timed: bool) -> None:
    events = [{"k": k, "v": v, "ts": i} for i, (k, v) in enumerate(values)]
    flow = ms.Flow("agg")
    src = flow.source(TestSource(events, chunk=chunk),
                      watermark=ms.WatermarkStrategy.monotonous(timestamp="ts") if timed else None)
    aggs = {"n": ms.agg.count(), "s": ms.agg.sum("v"), "lo": ms.agg.min("v"), "hi": ms.agg.max("v"),
            "m": ms.agg.mean("v")}
    out = collect(src.key_by("k").aggregate(changelog=True, **aggs))
    plain = collect(src.key_by("k").aggregate(**aggs))
    table = ms.connectors.memory.upsert(key="k")
    src.key_by("k").aggregate(changelog=True, **aggs).sink(table)
    flow.run()
    expected = canon(_group_by(events))
    assert canon(out.table()) == expected
    assert canon(out.table(key="k")) == expected
    assert canon(table.table.values()) == expected
    # the stream: per key +I, then (-U previous, +U new) per record, each +I/+U the plain updated row
    assert len(out.values) == 2 * len(events) - len({e["k"] for e in events})
    assert [changelog.strip(r) for r in out.values if r["_change"] != "-U"] == plain.values
    last: dict[str, Event] = {}
    for r in out.values:
        row = changelog.strip(r)
        if r["_change"] == "+I":
            assert row["k"] not in last
        elif r["_change"] == "-U":
            assert last[row["k"]] == row
        else:
            last[row["k"]] = row
        if r["_change"] == "+I":
            last[row["k"]] = row
    if timed:
        assert all(t is not None for t in out.times)


def test_a_changelog_aggregate_shows_in_the_plan_and_changes_its_fingerprint() -> None:
    flow = ms.Flow("p")
    keyed = flow.source(TestSource([])).key_by("k")
    keyed.aggregate(n=ms.agg.count(), changelog=True).sink(CollectSink())
    keyed.aggregate(n=ms.agg.count()).sink(CollectSink())
    text = str(flow.plan())
    assert "aggregate by k: n=count() (changelog)" in text
    assert "aggregate#2: aggregate by k: n=count() <-" in text


# -- sinks ------------------------------------------------------------------------------------------


def test_the_upsert_sink_applies_a_changelog() -> None:
    sink = ms.connectors.memory.upsert(key=lambda r: (r.get("lid"), r.get("rid")))
    lefts = [{"lid": f"L{i}", "k": "abc"[i % 3], "lts": i} for i in range(9)]
    rights = [{"rid": f"R{i}", "rk": "abd"[i % 3], "rts": i * 2} for i in range(6)]
    flow = ms.Flow("up")
    a, b = sides(flow, lefts, rights, 0, 2)
    joined = a.join(b, how="full")
    out = collect(joined)
    joined.sink(sink)
    flow.run()
    assert any(changelog.is_retraction(r) for r in out.values)
    assert as_tuples(list(sink.table.values())) == duckdb_join(lefts, rights, "full") == as_tuples(out.table())
    assert all("_change" not in r for r in sink.table.values())


def test_the_upsert_sink_stores_plain_records_as_before() -> None:
    sink = ms.connectors.memory.upsert(key="k")
    flow = ms.Flow("plain")
    flow.source(TestSource([{"k": "a", "n": 1}, {"k": "a", "n": 2}])).sink(sink)
    flow.run()
    assert sink.table == {"a": {"k": "a", "n": 2}}


def test_final_table_and_collect_sink_table() -> None:
    log = [{"k": "a", "n": 1, "_change": "+I"}, {"k": "b", "n": 1}, {"k": "a", "n": 1, "_change": "-U"},
           {"k": "a", "n": 2, "_change": "+U"}, {"k": "b", "n": 1, "_change": "-D"}, "x"]
    assert changelog.final_table(log[:5]) == [{"k": "a", "n": 2}]
    assert changelog.final_table(log) == [{"k": "a", "n": 2}, "x"]
    assert changelog.final_table(log[:5], key=("k",)) == [{"k": "a", "n": 2}]
    sink = CollectSink()
    sink.values.extend(log[:5])
    assert sink.table() == sink.table(key="k") == [{"k": "a", "n": 2}]
    assert [changelog.change_of(r) for r in log] == ["+I", "+I", "-U", "+U", "-D", "+I"]


def test_a_broken_changelog_is_reported() -> None:
    with pytest.raises(ValueError, match="retraction of a row that is not in the table"):
        changelog.final_table([{"k": "a", "_change": "-D"}])
    with pytest.raises(ValueError, match="must be one of"):
        changelog.final_table([{"k": "a", "_change": "+X"}])


# -- snapshot and restore ---------------------------------------------------------------------------


def _events(prefix: str, key: str, ts: str, n: int, seed: int) -> list[Event]:
    rnd = random.Random(seed)
    return [{f"{prefix}id": f"{prefix}{i}", key: rnd.choice("abcde"), ts: i * 3 + rnd.randint(-25, 0)}
            for i in range(n)]  # disorder of up to 25 against a bound of 10: some records are late


LEFTS, RIGHTS = _events("l", "k", "lts", 80, 1), _events("r", "rk", "rts", 70, 2)
CHUNK = 5
SNAP_CASES: dict[str, Callable[[ms.KeyedStream, ms.KeyedStream], ms.Stream]] = {
    "left": lambda a, b: a.join(b, how="left"),
    "right-ttl": lambda a, b: a.join(b, how="right", ttl=8),
    "full-ttl": lambda a, b: a.join(b, how="full", ttl=20),
    "aggregate": lambda a, b: a.aggregate(n=ms.agg.count(), first=ms.agg.first("lid"), changelog=True),
}


def _snap_run(case: str, cut: int | None) -> list[Any]:
    def build() -> tuple[ms.Flow, CollectSink]:
        flow = ms.Flow("snap")
        return flow, collect(SNAP_CASES[case](*sides(flow, LEFTS, RIGHTS, 10, CHUNK)))

    flow, sink = build()
    job = start(flow)
    if cut is None:
        finish(job)
        return sink.items
    for _ in range(cut):
        job.step(CHUNK)
    blob = pickle.dumps(job.snapshot())
    job.close()
    flow2, sink2 = build()
    job2 = start(flow2)
    job2.restore(pickle.loads(blob))
    finish(job2)
    return sink.items + sink2.items


@pytest.mark.native_only("snapshot/restore of a stepped native job")
@pytest.mark.parametrize("case", list(SNAP_CASES))
def test_snapshot_restore_gives_the_uninterrupted_changelog(case: str) -> None:
    whole = _snap_run(case, None)
    assert any(changelog.is_retraction(r) for r, _ in whole), "the case retracts something"
    for cut in range(max(len(LEFTS), len(RIGHTS)) // CHUNK + 3):
        assert _snap_run(case, cut) == whole, f"cut after {cut} steps"


# -- exactly-once recovery --------------------------------------------------------------------------


def _recovery_flow(joins: ms.connectors.Sink, counts: ms.connectors.Sink, fail: Callable[[Event], Event]
                   ) -> ms.Flow:
    flow = ms.Flow("changelog-recovery")
    people = flow.source(ms.connectors.memory.read([{"lid": i, "k": i % 50, "lts": i * 10} for i in range(300)],
                                                   name="people"),
                         watermark=ms.WatermarkStrategy.bounded(0, timestamp="lts"))
    bids = flow.source(ms.connectors.memory.read([{"rid": j, "rk": j % 70, "rts": j * 3} for j in range(1_000)],
                                                 name="bids"),
                       watermark=ms.WatermarkStrategy.bounded(0, timestamp="rts"))
    people.key_by("k").join(bids.key_by("rk"), how="full").map(fail).sink(joins)
    bids.key_by("rk").aggregate(n=ms.agg.count(), s=ms.agg.sum("rid"), changelog=True).sink(counts)
    return flow


def test_outer_joins_and_changelog_aggregates_recover_exactly_once(tmp_path: Path) -> None:
    ref_joins, ref_counts = CollectSink(), CollectSink()
    _recovery_flow(ref_joins, ref_counts, lambda r: r).run()
    poison = len(ref_joins.table()) * 2 // 3
    seen: list[int] = []

    def flaky(r: Event) -> Event:
        seen.append(1)
        if len(seen) == poison:
            raise ConnectionError("the downstream service blinked")
        return r

    joins, counts = TransactionalCollectSink(), TransactionalCollectSink()
    result = _recovery_flow(joins, counts, flaky).run(
        guarantee="exactly-once", restarts=2, restart_delay_s=0, checkpoint_dir=tmp_path / "ck",
        checkpoint_interval=100, clock=TickingClock(), max_chunk=64)
    assert result.restarts == 1
    assert result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert any(changelog.is_retraction(r) for r in ref_joins.values)
    # which rows were padded first depends on how the two inputs interleaved, which a restart
    # changes; what was committed is still one well-formed changelog of the same final table
    check_changelog(joins.values)
    assert canon(joins.table()) == canon(ref_joins.table())
    assert canon(counts.values) == canon(ref_counts.values)
    assert canon(counts.table(key="rk")) == canon(ref_counts.table(key="rk"))


# -- errors -----------------------------------------------------------------------------------------


def _two(flow: ms.Flow) -> tuple[ms.KeyedStream, ms.KeyedStream]:
    wm = ms.WatermarkStrategy.monotonous(timestamp="ts")
    a = flow.source(TestSource([ev("L1", 1)], name="a"), watermark=wm)
    b = flow.source(TestSource([ev("R1", 1)], name="b"), watermark=wm)
    return a.key_by("k"), b.key_by("k")


ERRORS: dict[str, tuple[Callable[[ms.KeyedStream, ms.KeyedStream], Any], str, str]] = {
    "outer": (lambda a, b: a.join(b, how="outer"), r"join\(how='outer'\): a regular join is 'inner', 'left'",
              "how='full'"),
    "none": (lambda a, b: a.join(b, how=None), r"join\(how=None\)", "how='left'"),
    "changelog-not-bool": (lambda a, b: a.aggregate(n=ms.agg.count(), changelog="yes"),
                           r"aggregate\(changelog='yes'\)", "changelog=True"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_changelog_steps_built_wrong_fail_while_building_naming_step_and_line(case: str) -> None:
    build, message, fix = ERRORS[case]
    a, b = _two(ms.Flow("e"))
    with pytest.raises(FlowDefinitionError, match=message) as info:
        build(a, b)
    assert info.value.location is not None and "test_changelog.py:" in info.value.location
    assert info.value.step in ("join", "aggregate")
    assert fix in (info.value.fix or "")


def test_outer_joins_show_in_the_plan() -> None:
    flow = ms.Flow("p")
    a, b = _two(flow)
    a.join(b, how="left", ttl=5_000).sink(CollectSink())
    a.join(b, how="full", name="both").sink(CollectSink())
    text = str(flow.plan())
    assert "join: join left on k = k, ttl 5s <-" in text
    assert "both: join full on k = k <-" in text


def test_an_outer_join_whose_combine_returns_no_dict_raises_a_step_error() -> None:
    flow = ms.Flow("nd")
    a, b = _two(flow)
    a.join(b, how="left", combine=lambda x, y: (x["id"], y and y["id"]), name="enrich").sink(CollectSink())
    with pytest.raises(StepError, match=r"step 'enrich'.*make combine return a dict"):
        flow.run()
