"""Joins: regular, interval and window joins against brute-force pairings, TTL, late records,
snapshot/restore at every cut, checkpointed recovery, build-time errors and step errors.
"""

from __future__ import annotations

import pickle
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millstream as ms
from conftest import collect, finish, start
from millstream.errors import FlowDefinitionError, StepError
from millstream.testing import CollectSink, TestSource, TransactionalCollectSink, watermark
from test_recovery import TickingClock
from test_windows import assign

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

Event = dict[str, Any]
Pair = tuple[tuple[str, str], int]


def ids(left: Event, right: Event) -> tuple[str, str]:
    return (left["id"], right["id"])


# -- brute force --------------------------------------------------------------------------------


def all_pairs(lefts: list[Event], rights: list[Event]) -> list[Pair]:
    return [((a["id"], b["id"]), max(a["ts"], b["ts"])) for a in lefts for b in rights if a["k"] == b["rk"]]


def interval_pairs(lefts: list[Event], rights: list[Event], lower: int, upper: int) -> list[Pair]:
    return [((a["id"], b["id"]), max(a["ts"], b["ts"])) for a in lefts for b in rights
            if a["k"] == b["rk"] and a["ts"] + lower <= b["ts"] <= a["ts"] + upper]


def window_pairs(lefts: list[Event], rights: list[Event], assigner: Any) -> list[Pair]:
    """Both sides' events assigned to windows (per key) by the window tests' definitions; pairs per window."""
    union = [{**e, "side": "L"} for e in lefts] + [{**e, "k": e["rk"], "side": "R"} for e in rights]
    out = []
    for (_, _, we), evs in assign(union, assigner).items():
        ls = [e for e in evs if e["side"] == "L"]
        rs = [e for e in evs if e["side"] == "R"]
        out += [((a["id"], b["id"]), we - 1) for a in ls for b in rs]
    return out


# -- running ------------------------------------------------------------------------------------


def sides(flow: ms.Flow, lefts: list[Any], rights: list[Any], bound: int, chunk: int | None = None,
          ) -> tuple[ms.KeyedStream, ms.KeyedStream]:
    wm = ms.WatermarkStrategy.bounded(bound, timestamp="ts")
    left = flow.source(TestSource(lefts, chunk=chunk, name="left"), watermark=wm)
    right = flow.source(TestSource(rights, chunk=chunk, name="right"), watermark=wm)
    return left.key_by("k"), right.key_by("rk")


JoinFn = Callable[[ms.KeyedStream, ms.KeyedStream], ms.Stream]


def run_join(join: JoinFn, lefts: list[Any], rights: list[Any], bound: int, chunk: int | None = None
             ) -> tuple[list[Pair], int]:
    flow = ms.Flow("j")
    out = collect(join(*sides(flow, lefts, rights, bound, chunk)))
    result = flow.run()
    return sorted(zip(out.values, out.times)), result.total("late")  # type: ignore[arg-type]


@st.composite
def two_inputs(draw: st.DrawFn) -> tuple[list[Event], list[Event], int]:
    """Left and right events, each side in an arrival order within ``bound`` of its watermark."""
    bound = draw(st.integers(0, 25))

    def side(prefix: str, key: str) -> list[Event]:
        times = draw(st.lists(st.integers(-40, 200), max_size=25))
        keys = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=len(times), max_size=len(times)))
        jitter = draw(st.lists(st.integers(0, bound), min_size=len(times), max_size=len(times)))
        events = [{"id": f"{prefix}{i}", key: k, "ts": t} for i, (t, k) in enumerate(zip(times, keys))]
        return [events[i] for i in sorted(range(len(events)), key=lambda i: (times[i] + jitter[i], i))]

    return side("L", "k"), side("R", "rk"), bound


CHUNKS = st.sampled_from([1, 2, 3, 7, 64])


@SETTINGS
@given(data=two_inputs(), chunk=CHUNKS)
def test_regular_join_is_every_pair_with_equal_keys(data: tuple[list[Event], list[Event], int], chunk: int) -> None:
    lefts, rights, bound = data
    got, late = run_join(lambda a, b: a.join(b, combine=ids), lefts, rights, bound, chunk)
    assert got == sorted(all_pairs(lefts, rights))
    assert late == 0


@SETTINGS
@given(data=two_inputs(), chunk=CHUNKS, lower=st.integers(-30, 30), width=st.integers(0, 40))
def test_interval_join_is_every_pair_within_the_bounds(data: tuple[list[Event], list[Event], int], chunk: int,
                                                       lower: int, width: int) -> None:
    lefts, rights, bound = data
    upper = lower + width
    got, late = run_join(lambda a, b: a.interval_join(b, lower=lower, upper=upper, combine=ids),
                         lefts, rights, bound, chunk)
    assert got == sorted(interval_pairs(lefts, rights, lower, upper))
    assert late == 0


@st.composite
def join_windows(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["tumbling", "sliding", "session"]))
    if kind == "tumbling":
        size = draw(st.integers(1, 60))
        return ms.windows.tumbling(size, offset=draw(st.integers(0, size - 1)))
    if kind == "sliding":
        every = draw(st.integers(1, 30))
        size = max(every, every * draw(st.integers(1, 4)) + draw(st.integers(0, every - 1)))
        return ms.windows.sliding(size, every=every, offset=draw(st.integers(0, every - 1)))
    return ms.windows.session(draw(st.integers(1, 40)))


@SETTINGS
@given(data=two_inputs(), chunk=CHUNKS, assigner=join_windows())
def test_window_join_is_every_pair_in_a_common_window(data: tuple[list[Event], list[Event], int], chunk: int,
                                                      assigner: Any) -> None:
    lefts, rights, bound = data
    got, late = run_join(lambda a, b: a.window_join(b, assigner, combine=ids), lefts, rights, bound, chunk)
    assert got == sorted(window_pairs(lefts, rights, assigner))
    assert late == 0


@SETTINGS
@given(data=two_inputs(), chunk=CHUNKS, ttl=st.integers(0, 60))
def test_a_ttl_keeps_at_least_the_pairs_within_it(data: tuple[list[Event], list[Event], int], chunk: int,
                                                  ttl: int) -> None:
    """With arrival within the bound, a pair at most ``ttl`` apart always joins; no pair is invented."""
    lefts, rights, bound = data
    got, late = run_join(lambda a, b: a.join(b, ttl=ttl, combine=ids), lefts, rights, bound, chunk)
    everything = Counter(all_pairs(lefts, rights))
    assert not Counter(got) - everything
    near = [(p, t) for p, t in all_pairs(lefts, rights)
            if abs(next(e["ts"] for e in lefts if e["id"] == p[0]) - next(e["ts"] for e in rights
                                                                           if e["id"] == p[1])) <= ttl]
    assert not Counter(near) - Counter(got)
    assert late == 0


# -- exact scripted cases: watermarks, late records, default output -----------------------------


def one_source(flow: ms.Flow, script: list[Any]) -> tuple[ms.KeyedStream, ms.KeyedStream]:
    """Both sides from one scripted source (the same watermark, the script's order)."""
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    return (src.filter(lambda e: e["id"][0] == "L").key_by("k"),
            src.filter(lambda e: e["id"][0] == "R").key_by("k"))


def join_op(job: Any) -> Any:
    return next(op for op in job.ops if op.node.kind == "join")


def ev(ident: str, t: int, k: str = "a") -> Event:
    return {"id": ident, "k": k, "ts": t}


def scripted(join: JoinFn, script: list[Any]) -> tuple[list[Any], int]:
    flow = ms.Flow("s")
    out = collect(join(*one_source(flow, script)))
    result = flow.run()
    return list(zip(out.values, out.times)), result.total("late")


def test_regular_join_ttl_expires_state_behind_the_watermark() -> None:
    script = [ev("L1", 0), ev("R1", 5), watermark(20),
              ev("L2", 12),  # alive (>= 20 - 10); L1 and R1 have expired
              ev("R2", 8),   # 8 < 20 - 10: late
              ev("R3", 15)]
    got, late = scripted(lambda a, b: a.join(b, ttl=10, combine=ids), script)
    assert got == [(("L1", "R1"), 5), (("L2", "R3"), 15)]
    assert late == 1


def test_regular_join_without_ttl_keeps_everything() -> None:
    script = [ev("L1", 0), watermark(1_000), ev("R1", 5), ev("R2", 2_000)]
    got, late = scripted(lambda a, b: a.join(b, combine=ids), script)
    assert got == [(("L1", "R1"), 5), (("L1", "R2"), 2_000)]
    assert late == 0


def test_interval_join_drops_state_and_late_records_by_the_watermark() -> None:
    script = [ev("L1", 10), ev("R1", 14), ev("R2", 16), ev("R0", 30), watermark(20),
              ev("R3", 18),  # behind the watermark: late, though L3 would pair with it
              ev("L2", 13),  # late too
              ev("L3", 22), ev("R4", 24)]
    flow = ms.Flow("s")
    out = collect(SNAP_CASES["interval-5"](*one_source(flow, script)))
    job = start(flow)
    join = join_op(job)
    while join.records_in < 8:
        job.step(100)
    assert join.metrics()["late"] == 2
    # R1 (14) is dead at watermark 20 (a right record goes once t < watermark + lower) but shares a
    # cleanup bucket (14, 15) with a time that is not: dropping is lazy by bucket, never early
    assert sorted(t for side in join.sides for lst in side.values() for t, _ in lst) == [14, 16, 22, 24, 30]  # type: ignore
    finish(job)
    assert list(zip(out.values, out.times)) == [(("L1", "R1"), 14), (("L3", "R4"), 24)]


def test_window_join_fires_with_the_watermark_and_counts_late_records() -> None:
    script = [ev("L1", 1), ev("R1", 3), ev("R2", 12), ev("L9", 4, "b"), watermark(9),
              ev("L2", 5),  # its window [0, 10) has fired: late
              ev("L3", 15)]
    flow = ms.Flow("w")
    left, right = one_source(flow, script)
    out = collect(left.window_join(right, ms.windows.tumbling(10)))
    assert flow.run().total("late") == 1
    assert out.items == [
        ({"id": "L1", "k": "a", "ts": 1, "id_right": "R1", "ts_right": 3, "window_start": 0, "window_end": 10}, 9),
        ({"id": "L3", "k": "a", "ts": 15, "id_right": "R2", "ts_right": 12, "window_start": 10, "window_end": 20},
         19),
    ]


def test_session_window_join_forms_sessions_from_both_sides() -> None:
    script = [ev("L1", 0), ev("R1", 8), ev("L2", 16), ev("R2", 40), ev("L3", 45), watermark(100)]
    got, _ = scripted(lambda a, b: a.window_join(b, ms.windows.session(10), combine=ids), script)
    # 0, 8, 16 are less than 10 apart: one session [0, 26); 40, 45: [40, 55)
    assert got == [(("L1", "R1"), 25), (("L2", "R1"), 25), (("L3", "R2"), 54)]


def test_default_output_merges_dicts_and_renames_right_collisions() -> None:
    flow = ms.Flow("d")
    wm = ms.WatermarkStrategy.monotonous(timestamp="ts")
    people = flow.source(TestSource([{"id": 1, "name": "ana", "ts": 1}], name="people"), watermark=wm)
    auctions = flow.source(TestSource([{"id": 7, "seller": 1, "ts": 3, "name": "lamp"}], name="auctions"),
                           watermark=wm)
    out = collect(people.key_by("id").join(auctions.key_by("seller")))
    same_key = collect(people.key_by("id").join(people.key_by("id")))
    flow.run()
    assert out.items == [({"id": 1, "name": "ana", "ts": 1, "id_right": 7, "seller": 1, "ts_right": 3,
                           "name_right": "lamp"}, 3)]
    assert same_key.values == [{"id": 1, "name": "ana", "ts": 1, "name_right": "ana", "ts_right": 1}]


def test_a_self_join_pairs_each_record_with_itself_and_the_others() -> None:
    flow = ms.Flow("self")
    src = flow.source(TestSource([ev("A", 1), ev("B", 2), ev("C", 3, "b")], chunk=2),
                      watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    keyed = src.key_by("k")
    out = collect(keyed.join(keyed, combine=ids))
    flow.run()
    assert sorted(out.values) == [("A", "A"), ("A", "B"), ("B", "A"), ("B", "B"), ("C", "C")]


def test_joins_show_in_the_plan() -> None:
    flow = ms.Flow("p")
    a, b = sides(flow, [], [], 0)
    a.join(b, ttl=5_000).sink(CollectSink())
    a.interval_join(b, lower=-10, upper=0, name="iv").sink(CollectSink())
    a.window_join(b, ms.windows.tumbling(1_000), combine=ids).sink(CollectSink())
    text = str(flow.plan())
    assert "join: join inner on k = rk, ttl 5s <- key_by:k, key_by:rk" in text
    assert "iv: join inner on k = rk, right.t in [left.t-10ms, left.t+0ms]" in text
    assert "window_join: join inner on k = rk, window tumbling 1s: ids" in text


# -- snapshot and restore -----------------------------------------------------------------------


def _events(prefix: str, key: str, n: int, seed: int) -> list[Event]:
    rnd = random.Random(seed)
    out = [{"id": f"{prefix}{i}", key: rnd.choice("abc"), "ts": i * 3 + rnd.randint(-25, 0)} for i in range(n)]
    return out  # disorder of up to 25 against a bound of 10: some records are late


LEFTS, RIGHTS = _events("L", "k", 80, 1), _events("R", "rk", 70, 2)
CHUNK = 5

SNAP_CASES: dict[str, JoinFn] = {
    "regular": lambda a, b: a.join(b, combine=ids),
    "regular-ttl": lambda a, b: a.join(b, ttl=5),
    "interval": lambda a, b: a.interval_join(b, lower=-15, upper=10),
    "interval-5": lambda a, b: a.interval_join(b, lower=-5, upper=5, combine=ids),
    "tumbling": lambda a, b: a.window_join(b, ms.windows.tumbling(20, offset=5)),
    "sliding": lambda a, b: a.window_join(b, ms.windows.sliding(6, every=3), combine=ids),
    "session": lambda a, b: a.window_join(b, ms.windows.session(6), combine=ids),
}


def _snap_run(join: JoinFn, cut: int | None) -> tuple[list[Any], int]:
    def build() -> tuple[ms.Flow, CollectSink]:
        flow = ms.Flow("snap")
        return flow, collect(join(*sides(flow, LEFTS, RIGHTS, 10, CHUNK)))

    flow, sink = build()
    job = start(flow)
    if cut is None:
        finish(job)
        return sink.items, join_op(job).metrics()["late"]
    for _ in range(cut):
        job.step(CHUNK)
    blob = pickle.dumps(job.snapshot())
    job.close()
    flow2, sink2 = build()
    job2 = start(flow2)
    job2.restore(pickle.loads(blob))
    finish(job2)
    return sink.items + sink2.items, join_op(job2).metrics()["late"]


@pytest.mark.parametrize("case", list(SNAP_CASES))
def test_snapshot_restore_gives_the_uninterrupted_output(case: str) -> None:
    join = SNAP_CASES[case]
    whole, late = _snap_run(join, None)
    assert whole, "the case produces output"
    if case != "regular":
        assert late > 0, "the case has late records"
    for cut in range(max(len(LEFTS), len(RIGHTS)) // CHUNK + 3):
        assert _snap_run(join, cut) == (whole, late), f"cut after {cut} steps"


def test_ttl_cleanup_bounds_the_state() -> None:
    flow = ms.Flow("ttl")
    n = 2_000
    lefts = [{"id": f"L{i}", "k": i % 7, "ts": i} for i in range(n)]
    rights = [{"id": f"R{i}", "rk": i % 7, "ts": i} for i in range(n)]
    a, b = sides(flow, lefts, rights, 0, 50)
    sink = collect(a.join(b, ttl=100, combine=ids))
    job = start(flow)
    sizes = []
    while job.step(50)[1]:
        sizes.append(join_op(job).state_size())  # type: ignore[attr-defined]
    job.close()
    assert max(sizes) < 2 * (100 + 100 // 4 + 50) + 10  # retention + a bucket + a chunk, per side
    near = sum(1 for a_ in lefts for b_ in rights if a_["k"] == b_["rk"] and abs(a_["ts"] - b_["ts"]) <= 100)
    assert near <= len(sink.values) < len(all_pairs(lefts, rights)) / 4


# -- checkpointed recovery ----------------------------------------------------------------------


def _recovery_flow(sink: ms.connectors.Sink, fail: Callable[[Event, Event], Any]) -> ms.Flow:
    flow = ms.Flow("join-recovery")
    wm = ms.WatermarkStrategy.bounded(0, timestamp="ts")
    people = flow.source(ms.connectors.memory.read([{"id": i, "ts": i * 10} for i in range(300)], name="people"),
                         watermark=wm)
    bids = flow.source(ms.connectors.memory.read([{"bid": j, "person": j % 300, "ts": j * 3} for j in range(1_500)],
                                                 name="bids"), watermark=wm)
    people.key_by("id").interval_join(bids.key_by("person"), lower=-200, upper=200, combine=fail).sink(sink)
    return flow


def test_a_join_recovers_exactly_once_from_a_checkpoint(tmp_path: Path) -> None:
    def pair(p: Event, b: Event) -> tuple[int, int]:
        return (p["id"], b["bid"])

    reference = CollectSink()
    _recovery_flow(reference, pair).run()
    poison = sorted(reference.values)[len(reference.values) * 2 // 3][1]
    failed: list[int] = []

    def flaky(p: Event, b: Event) -> tuple[int, int]:
        if b["bid"] == poison and not failed:
            failed.append(1)
            raise ConnectionError("the enrichment service blinked")
        return pair(p, b)

    sink = TransactionalCollectSink()
    result = _recovery_flow(sink, flaky).run(
        guarantee="exactly-once", restarts=2, restart_delay_s=0, checkpoint_dir=tmp_path / "ck",
        checkpoint_interval=100, clock=TickingClock(), max_chunk=64)
    assert failed and result.restarts == 1
    assert result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert Counter(sink.values) == Counter(reference.values) and reference.values


# -- errors ---------------------------------------------------------------------------------------


def _two(flow: ms.Flow, timed: bool = True) -> tuple[ms.KeyedStream, ms.KeyedStream]:
    wm = ms.WatermarkStrategy.monotonous(timestamp="ts") if timed else None
    a = flow.source(TestSource([ev("L1", 1)], name="a"), watermark=wm)
    b = flow.source(TestSource([ev("R1", 1)], name="b"), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    return a.key_by("k"), b.key_by("k")


ERRORS: dict[str, tuple[Callable[[ms.KeyedStream, ms.KeyedStream], Any], str]] = {
    "cross-join": (lambda a, b: a.join(b, how="cross"), r"a regular join is 'inner', 'left', 'right' or 'full'"),
    "not-keyed": (lambda a, b: a.join(b.map(lambda r: r)), r"joins two keyed streams"),
    "count-window": (lambda a, b: a.window_join(b, ms.windows.count(3)), r"event-time window assigner"),
    "lower-above-upper": (lambda a, b: a.interval_join(b, lower=10, upper=5), r"lower is above upper"),
    "negative-ttl": (lambda a, b: a.join(b, ttl=-1), r"ttl must be >= 0"),
    "bad-ttl": (lambda a, b: a.join(b, ttl=1.5), r"ttl must be a datetime.timedelta"),
    "combine-arity": (lambda a, b: a.join(b, combine=lambda r: r), r"combine calls its function with 2 arguments"),
    "combine-not-callable": (lambda a, b: a.join(b, combine="merge"), r"takes a function of \(left, right\)"),
    "key-widths": (lambda a, b: a.join(b.map(lambda r: r).key_by(("k", "id"))), r"keys of different widths"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_joins_built_wrong_fail_while_building_naming_step_and_line(case: str) -> None:
    build, message = ERRORS[case]
    a, b = _two(ms.Flow("e"))
    with pytest.raises(FlowDefinitionError, match=message) as info:
        build(a, b)
    assert info.value.location is not None and "test_joins.py:" in info.value.location
    assert info.value.step is not None and "join" in info.value.step
    assert info.value.fix


def test_joins_need_event_time_on_both_inputs() -> None:
    a, b = _two(ms.Flow("e"), timed=False)
    with pytest.raises(FlowDefinitionError, match=r"needs event time on both inputs; no event time: key_by:k") as info:
        a.join(b, name="enrich")
    assert info.value.step == "enrich" and "watermark" in (info.value.fix or "")


@pytest.mark.parametrize("kind", ["regular", "interval", "window"])
def test_a_failing_combine_raises_a_step_error_naming_step_and_key(kind: str) -> None:
    def boom(left: Event, right: Event) -> Any:
        return 1 / 0

    flow = ms.Flow("boom")
    a, b = _two(flow)
    joined = {"regular": lambda: a.join(b, combine=boom, name="enrich"),
              "interval": lambda: a.interval_join(b, lower=0, upper=5, combine=boom, name="enrich"),
              "window": lambda: a.window_join(b, ms.windows.tumbling(10), combine=boom, name="enrich")}[kind]()
    joined.sink(CollectSink())
    with pytest.raises(StepError, match=r"step 'enrich'.*ZeroDivisionError") as info:
        flow.run()
    assert "'a'" in str(info.value)  # the key


def test_default_output_of_non_dict_records_asks_for_combine() -> None:
    flow = ms.Flow("nd")
    wm = ms.WatermarkStrategy.monotonous(timestamp=lambda r: r[1])
    a = flow.source(TestSource([("x", 1)], name="a"), watermark=wm).key_by(lambda r: r[0])
    b = flow.source(TestSource([("x", 2)], name="b"), watermark=wm).key_by(lambda r: r[0])
    a.join(b).sink(CollectSink())
    with pytest.raises(StepError, match="pass combine="):
        flow.run()


@pytest.mark.parametrize("how", ["window", "interval", "regular"])
def test_joins_keyed_by_an_expression(how: str) -> None:
    """Both sides keyed by an expression (``col("k") % 3``): every pair whose keys' values are equal,
    in every mode (building such a join raised TypeError: an expression was tested for truth)."""
    left = [{"k": i % 7, "ts": i * 3, "a": i} for i in range(60)]
    right = [{"k": (i * 5) % 7, "ts": i * 3 + 1, "b": i} for i in range(60)]
    flow, out = ms.Flow("expr-join"), CollectSink()
    wm = ms.WatermarkStrategy.bounded(0, timestamp="ts")
    a = flow.source(ms.connectors.memory.read(left), watermark=wm, name="left").key_by(ms.col("k") % 3)
    b = flow.source(ms.connectors.memory.read(right), watermark=wm, name="right").key_by(ms.col("k") % 3)
    joined = (a.window_join(b, ms.windows.tumbling(30)) if how == "window"
              else a.interval_join(b, lower=-10, upper=10) if how == "interval" else a.join(b))
    joined.sink(out)
    assert flow.run().ok

    def pairs(ok: Callable[[dict[str, Any], dict[str, Any]], bool]) -> Counter[tuple[int, int]]:
        return Counter((x["a"], y["b"]) for x in left for y in right if x["k"] % 3 == y["k"] % 3 and ok(x, y))

    want = {"window": pairs(lambda x, y: x["ts"] // 30 == y["ts"] // 30),
            "interval": pairs(lambda x, y: -10 <= y["ts"] - x["ts"] <= 10),
            "regular": pairs(lambda x, y: True)}[how]
    assert want and Counter((r["a"], r["b"]) for r in out.values) == want
