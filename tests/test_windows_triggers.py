"""Issue 10 §5: triggers, global, processing-time, staggered and per-record-gap session windows,
negative offsets, co-group, and the interval join's late side output.

Every behavioural test runs in every mode (conftest.exec_mode) and compares with an independent
computation in plain Python over the same bounded input: records in arrival order, windows from
their definitions.
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from typing import Any

import pytest

import millstream as ms
import test_snapshot as snap
from conftest import canon, collect, stamped
from millstream import agg
from millstream.testing import CollectSink, ManualClock, TestSource, advance_processing_time, watermark
from millstream.windows import CONTINUE, FIRE, FIRE_AND_PURGE, Trigger, TriggerContext, TriggerResult, Window

pytestmark = pytest.mark.usefixtures("exec_mode")
W = ms.windows
Event = dict[str, Any]


def events(seed: int, n: int = 150, keys: str = "abc", span: int = 400) -> list[Event]:
    """In event-time order (nothing is late), keys of uneven frequency, a few equal times."""
    rnd = random.Random(seed)
    out = [{"k": rnd.choice(keys[:1] * 3 + keys), "ts": rnd.randint(0, span), "v": rnd.randint(-5, 20), "id": i}
           for i in range(n)]
    out.sort(key=lambda e: (e["ts"], e["id"]))
    return out


def run(script: list[Any], build: Any, *, clock: Any = None, chunk: int | None = None) -> tuple[list[Any], list[Any]]:
    flow = ms.Flow("t")
    res = build(stamped(flow, script, bound=0, chunk=chunk))
    out = collect(res)
    late = collect(res.late()) if hasattr(res, "late") else CollectSink()
    flow.run(clock=clock) if clock is not None else flow.run()
    return out.values, late.values


# -- global windows with count triggers -----------------------------------------------------------


def ref_count(evs: list[Event], n: int, purge: bool) -> list[tuple[Any, int, int]]:
    """Per key in arrival order: every n-th record fires the window (since the last purge, or all)."""
    held: dict[Any, list[int]] = defaultdict(list)
    seen: dict[Any, int] = defaultdict(int)
    out = []
    for e in evs:
        held[e["k"]].append(e["v"])
        seen[e["k"]] += 1
        if seen[e["k"]] % n == 0:
            out.append((e["k"], len(held[e["k"]]), sum(held[e["k"]])))
            if purge:
                held[e["k"]] = []
    return out


@pytest.mark.parametrize("purge", [True, False])
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_global_window_with_a_count_trigger_equals_the_reference(purge: bool, chunk: int | None) -> None:
    evs = events(1)
    trig = W.purging(W.on_count(4)) if purge else W.on_count(4)
    got, _ = run(evs, lambda s: s.key_by("k").window(W.global_(), trigger=trig)
                 .aggregate(n=agg.count(), s=agg.sum("v")), chunk=chunk)
    assert canon((r["k"], r["n"], r["s"]) for r in got) == canon(ref_count(evs, 4, purge))
    assert all(r["window_start"] is None and r["window_end"] is None for r in got)


def test_global_window_without_a_trigger_fires_once_at_the_end_of_input() -> None:
    evs = events(2)
    got, _ = run(evs, lambda s: s.key_by("k").window(W.global_()).aggregate(n=agg.count(), s=agg.sum("v")))
    want = defaultdict(list)
    for e in evs:
        want[e["k"]].append(e["v"])
    assert canon((r["k"], r["n"], r["s"]) for r in got) == canon((k, len(v), sum(v)) for k, v in want.items())


def test_global_window_process_gets_the_records_since_the_last_purge_in_arrival_order() -> None:
    evs = events(3, n=40)
    got, _ = run(evs, lambda s: s.key_by("k").window(W.global_(), trigger=W.purging(W.on_count(3)))
                 .process(lambda k, w, rs: [(k, [r["id"] for r in rs])]))
    held: dict[Any, list[int]] = defaultdict(list)
    want = []
    for e in evs:
        held[e["k"]].append(e["id"])
        if len(held[e["k"]]) == 3:
            want.append((e["k"], held.pop(e["k"])))
    assert canon(got) == canon(want)


# -- triggers on time windows ---------------------------------------------------------------------


def test_a_count_trigger_on_tumbling_windows_fires_per_window_and_the_window_goes_at_its_end() -> None:
    evs = events(4)
    got, _ = run(evs, lambda s: s.key_by("k").window(W.tumbling(50), trigger=W.on_count(3))
                 .aggregate(n=agg.count(), s=agg.sum("v")))
    held: dict[Any, list[int]] = defaultdict(list)
    want = []
    for e in evs:
        wk = (e["k"], e["ts"] // 50 * 50)
        held[wk].append(e["v"])
        if len(held[wk]) % 3 == 0:
            want.append((wk[0], wk[1], wk[1] + 50, len(held[wk]), sum(held[wk])))
    assert canon((r["k"], r["window_start"], r["window_end"], r["n"], r["s"]) for r in got) == canon(want)


def test_every_event_time_fires_early_results_and_the_final_one() -> None:
    def e(t: int) -> Event:
        return {"k": "a", "ts": t, "v": 1}
    script = [e(1), e(3), e(12), watermark(10), e(25), watermark(20), e(31), watermark(35), e(47)]
    got, _ = run(script, lambda s: s.key_by("k").window(W.tumbling(50), trigger=W.every_event_time(10))
                 .aggregate(n=agg.count()))
    # timers at 10, 20, 30 (aligned to the interval from the first record) fire as the watermark
    # passes them; at the end of input only the window's end (49) fires, not the early timer at 40
    assert [r["n"] for r in got] == [3, 4, 5, 6]


class FlushOn(Trigger):
    """A user trigger: fire and purge on a record flagged ``flush``, and fire at an event-time timer
    10 ms after the first record of each batch."""

    def on_element(self, record: Any, timestamp: int | None, window: Window, ctx: TriggerContext
                   ) -> TriggerResult:
        if record.get("flush"):
            ctx.state.pop("timer", None)
            return FIRE_AND_PURGE
        if "timer" not in ctx.state and timestamp is not None:
            ctx.state["timer"] = timestamp + 10
            ctx.register_event_time_timer(timestamp + 10)
        return CONTINUE

    def on_event_time(self, time: int, window: Window, ctx: TriggerContext) -> TriggerResult:
        if ctx.state.get("timer") == time:
            del ctx.state["timer"]
            return FIRE_AND_PURGE
        return CONTINUE


def test_a_user_trigger_function() -> None:
    script = [{"k": "a", "ts": 1, "id": 1}, {"k": "a", "ts": 2, "id": 2, "flush": True},
              {"k": "a", "ts": 3, "id": 3}, {"k": "a", "ts": 5, "id": 4}, watermark(15), {"k": "a", "ts": 20, "id": 5},
              {"k": "a", "ts": 21, "id": 6, "flush": True}]
    got, _ = run(script, lambda s: s.key_by("k").window(W.global_(), trigger=FlushOn())
                 .process(lambda k, w, rs: [[r["id"] for r in rs]]))
    assert got == [[1, 2], [3, 4], [5, 6]]


def test_trigger_results_combine_as_flags() -> None:
    assert FIRE | ms.windows.PURGE == FIRE_AND_PURGE
    assert FIRE_AND_PURGE & FIRE and not CONTINUE & FIRE


# -- processing-time windows ---------------------------------------------------------------------


@pytest.mark.parametrize("sliding", [False, True])
def test_processing_time_windows_equal_a_simulation_of_the_clock(sliding: bool) -> None:
    """The clock moves only at the script's markers; after each group of records and after each move,
    every window whose end - 1 the clock has reached fires (Flink's rule: a processing-time window
    fires at its last millisecond, and a record that comes in that millisecond after it fired opens
    it again); the end of input fires the rest."""
    rnd = random.Random(5)
    script: list[Any] = []
    for i in range(80):
        if rnd.random() < 0.3:
            script.append(advance_processing_time(rnd.randint(1, 9)))
        script.append({"k": rnd.choice("ab"), "v": i})
    size = 20 if sliding else 15
    assigner = W.sliding(20, every=10, processing_time=True) if sliding else W.tumbling(15, processing_time=True)
    flow = ms.Flow("p")
    out = collect(flow.source(TestSource(script)).key_by("k").window(assigner).aggregate(n=agg.count(),
                                                                                      s=agg.sum("v")))
    flow.run(clock=ManualClock())
    now = 0
    open_: dict[tuple[Any, int], list[int]] = {}
    want = []

    def fire(upto: int | None) -> None:
        for (k, s), vs in list(open_.items()):
            if upto is None or s + size - 1 <= upto:
                want.append((k, s, s + size, len(vs), sum(vs)))
                del open_[(k, s)]

    for item in script:
        if isinstance(item, dict):
            starts = range(now - now % 10, now - 20, -10) if sliding else [now - now % 15]
            for s in starts:
                open_.setdefault((item["k"], s), []).append(item["v"])
        else:
            fire(now)
            now += item.advance_ms
            fire(now)
    fire(None)
    assert canon((r["k"], r["window_start"], r["window_end"], r["n"], r["s"]) for r in out.values) == canon(want)


def test_processing_time_windows_fire_when_the_clock_passes_their_end() -> None:
    script = [{"k": "a", "v": 1}, advance_processing_time(5), {"k": "a", "v": 2}, advance_processing_time(5),
              {"k": "a", "v": 3}, advance_processing_time(30), {"k": "a", "v": 4}]
    flow = ms.Flow("p")
    w = flow.source(TestSource(script)).key_by("k").window(W.tumbling(10, processing_time=True))
    out = collect(w.process(lambda k, win, rs: [(win.start, [r["v"] for r in rs])]))
    flow.run(clock=ManualClock())
    # [0, 10) fires when the clock reaches 9 (its end - 1), here at 10, before record 3 (at 10) comes;
    # [40, 50) at the end of input
    assert out.values == [(0, [1, 2]), (10, [3]), (40, [4])]


# -- sessions with a gap per record ------------------------------------------------------------------


def ref_dynamic_sessions(evs: list[Event]) -> list[tuple[Any, int, int, int]]:
    by: dict[Any, list[tuple[int, int, int]]] = defaultdict(list)
    for e in evs:
        by[e["k"]].append((e["ts"], e["ts"] + e["gap"], e["v"]))
    out = []
    for k, ivs in by.items():
        ivs.sort()
        cur = list(ivs[0])
        n = 1
        for s, end, v in ivs[1:]:
            if s <= cur[1]:  # touching sessions merge
                cur[1] = max(cur[1], end)
                cur[2] += v
                n += 1
            else:
                out.append((k, cur[0], cur[1], n, cur[2]))
                cur, n = [s, end, v], 1
        out.append((k, cur[0], cur[1], n, cur[2]))
    return out


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_sessions_with_a_gap_per_record_equal_the_reference(chunk: int | None) -> None:
    rnd = random.Random(9)
    evs = [{**e, "gap": rnd.choice([1, 5, 10, 25])} for e in events(6, n=120, span=1500)]
    got, late = run(evs, lambda s: s.key_by("k").window(W.session(gap_fn=lambda r: r["gap"]))
                    .aggregate(n=agg.count(), s=agg.sum("v")), chunk=chunk)
    assert late == []
    assert canon((r["k"], r["window_start"], r["window_end"], r["n"], r["s"]) for r in got) == canon(
        ref_dynamic_sessions(evs))


def test_a_session_gap_function_returning_nothing_useful_fails_naming_the_record() -> None:
    with pytest.raises(ms.errors.MillstreamError, match="gap"):
        run([{"k": "a", "ts": 1, "gap": 0}], lambda s: s.key_by("k").window(W.session(gap_fn=lambda r: r["gap"]))
            .aggregate(n=agg.count()))


# -- offsets and stagger ---------------------------------------------------------------------------------


def test_a_negative_offset_is_the_same_windows_as_its_positive_counterpart() -> None:
    evs = events(10)
    assert W.tumbling(50, offset=-13) == W.tumbling(50, offset=37)
    assert W.sliding(60, every=20, offset=-5).offset_ms == 15
    got, _ = run(evs, lambda s: s.key_by("k").window(W.tumbling(50, offset=-13)).aggregate(n=agg.count()))
    want: dict[tuple[Any, int], int] = defaultdict(int)
    for e in evs:
        want[(e["k"], e["ts"] - (e["ts"] - 37) % 50)] += 1
    assert canon((r["k"], r["window_start"], r["n"]) for r in got) == canon((k, s, n) for (k, s), n in want.items())
    with pytest.raises(ms.errors.ConfigError, match="offset"):
        W.tumbling(50, offset=-50)


@pytest.mark.parametrize("stagger", ["key", "fn"])
def test_staggered_windows_shift_each_key_by_its_own_offset(stagger: str) -> None:
    evs = events(11, keys="abcdef")
    shift = (lambda k: zlib.crc32(repr(k).encode()) % 50) if stagger == "key" else (lambda k: 7 * (ord(k) - 97))
    got, _ = run(evs, lambda s: s.key_by("k").window(W.tumbling(50, stagger="key" if stagger == "key" else shift))
                 .aggregate(n=agg.count()))
    want: dict[tuple[Any, int], int] = defaultdict(int)
    for e in evs:
        off = shift(e["k"]) % 50
        want[(e["k"], e["ts"] - (e["ts"] - off) % 50)] += 1
    assert canon((r["k"], r["window_start"], r["window_end"] - r["window_start"], r["n"]) for r in got) == canon(
        (k, s, 50, n) for (k, s), n in want.items())
    assert len({(r["window_start"] % 50) for r in got}) > 1  # the keys' windows do not all align


# -- co-group ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("assigner", ["tumbling", "session"])
def test_co_group_equals_the_reference(assigner: str) -> None:
    evs = [{**e, "side": "L" if e["id"] % 3 else "R"} for e in events(12, span=600)]
    w = W.tumbling(40) if assigner == "tumbling" else W.session(15)
    flow = ms.Flow("cg")
    src = stamped(flow, evs)
    left = src.filter(ms.col("side") == "L").key_by("k")
    right = src.filter(ms.col("side") == "R").key_by("k")
    out = collect(left.co_group(right, w, lambda k, win, ls, rs: [
        (k, win.start, win.end, [r["id"] for r in ls], [r["id"] for r in rs])]))
    flow.run()
    groups: dict[tuple[Any, int, int], list[Event]] = defaultdict(list)
    if assigner == "tumbling":
        for e in evs:
            s = e["ts"] // 40 * 40
            groups[(e["k"], s, s + 40)].append(e)
    else:
        by: dict[Any, list[Event]] = defaultdict(list)
        for e in evs:
            by[e["k"]].append(e)
        for k, es in by.items():
            cur = [es[0]]
            for e in es[1:]:
                if e["ts"] - cur[-1]["ts"] <= 15:
                    cur.append(e)
                else:
                    groups[(k, cur[0]["ts"], cur[-1]["ts"] + 15)] = cur
                    cur = [e]
            groups[(k, cur[0]["ts"], cur[-1]["ts"] + 15)] = cur
    want = [(k, s, e, [r["id"] for r in rs if r["side"] == "L"], [r["id"] for r in rs if r["side"] == "R"])
            for (k, s, e), rs in groups.items()]
    assert canon(out.values) == canon(want)


def test_co_group_late_records_come_out_of_late_as_they_came() -> None:
    script = [{"s": "L", "k": 1, "ts": 1}, {"s": "R", "k": 1, "ts": 2}, watermark(30),
              {"s": "R", "k": 1, "ts": 5}, {"s": "L", "k": 1, "ts": 35}]
    flow = ms.Flow("cg")
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
    left, right = (src.filter(ms.col("s") == side).key_by("k") for side in "LR")
    res = left.co_group(right, W.tumbling(10), lambda k, w, ls, rs: [(w.start, len(ls), len(rs))])
    out, late = collect(res), collect(res.late())
    flow.run()
    assert out.values == [(0, 1, 1), (30, 1, 0)]
    assert late.values == [{"s": "R", "k": 1, "ts": 5}]


# -- interval join: the watermark's own time joins; late records have a side output ----------------------


def test_interval_join_joins_a_record_at_the_watermark_and_sends_later_ones_to_late() -> None:
    script = [{"s": "L", "k": 1, "ts": 10}, {"s": "R", "k": 1, "ts": 30}, watermark(20),
              {"s": "R", "k": 1, "ts": 20},  # at the watermark: joins L@10 (10 + 10 >= 20), as in Flink
              {"s": "L", "k": 1, "ts": 19},  # behind it: late
              {"s": "L", "k": 1, "ts": 20}]  # at it: joins R@20 and R@30
    flow = ms.Flow("ij")
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
    left, right = (src.filter(ms.col("s") == side).key_by("k") for side in "LR")
    j = left.interval_join(right, lower=0, upper=10)
    out, late = collect(j.select("ts", "ts_right")), collect(j.late())
    flow.run()
    assert canon(out.values) == canon([{"ts": 10, "ts_right": 20}, {"ts": 20, "ts_right": 20},
                                       {"ts": 20, "ts_right": 30}])
    assert late.values == [{"s": "L", "k": 1, "ts": 19}]


def test_interval_join_late_output_equals_a_per_record_simulation() -> None:
    """Random out-of-order input with a bound smaller than the disorder: the late side output and the
    pairs equal a simulation where each record meets the watermark of the records before it."""
    rnd = random.Random(3)
    recs = []
    for i in range(200):
        recs.append({"s": rnd.choice("LR"), "k": rnd.randint(0, 3), "ts": rnd.randint(0, 600), "id": i})
    recs.sort(key=lambda r: r["ts"] + rnd.randint(0, 60))
    bound, lo, hi = 20, -15, 25
    high = None
    kept: list[Event] = []
    pairs, late = [], []
    for r in recs:
        wm = None if high is None else high - bound - 1
        if wm is not None and r["ts"] < wm:
            late.append(r["id"])
        else:
            for o in kept:
                if o["k"] == r["k"] and o["s"] != r["s"]:
                    lt, rt = (r, o) if r["s"] == "L" else (o, r)
                    if lt["ts"] + lo <= rt["ts"] <= lt["ts"] + hi:
                        pairs.append((lt["id"], rt["id"]))
            kept.append(r)
        high = r["ts"] if high is None else max(high, r["ts"])
    flow = ms.Flow("ij")
    src = flow.source(TestSource(recs, chunk=9), watermark=ms.WatermarkStrategy.bounded(bound, timestamp="ts"))
    left, right = (src.filter(ms.col("s") == side).key_by("k") for side in "LR")
    j = left.interval_join(right, lower=lo, upper=hi, combine=lambda a, b: (a["id"], b["id"]))
    out, lout = collect(j), collect(j.late())
    flow.run()
    assert canon(out.values) == canon(pairs)
    assert sorted(r["id"] for r in lout.values) == sorted(late)


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.native_only("checks made when the flow is built")
def test_bad_trigger_uses_fail_when_the_flow_is_built() -> None:
    flow = ms.Flow("e")
    keyed = stamped(flow, []).key_by("k")
    with pytest.raises(ms.errors.FlowDefinitionError, match="trigger"):
        keyed.window(W.tumbling(10), trigger="count")  # type: ignore[arg-type]
    with pytest.raises(ms.errors.FlowDefinitionError, match="count windows"):
        keyed.window(W.count(3), trigger=W.on_count(2))
    with pytest.raises(ms.errors.FlowDefinitionError, match="lateness"):
        keyed.window(W.tumbling(10, processing_time=True), allowed_lateness=5)
    with pytest.raises(ms.errors.FlowDefinitionError, match="co_group"):
        keyed.window_join(keyed, W.tumbling(10, stagger="key"))
    with pytest.raises(ms.errors.ConfigError, match="exactly one"):
        W.session()


# -- snapshot and restore of the trigger-driven operator --------------------------------------------------


def _snap_case(assigner: Any, trigger: Any = None, lateness: int = 0) -> Any:
    def build(flow: ms.Flow) -> list[ms.Stream]:
        w = snap.source(flow).key_by("k").window(assigner, allowed_lateness=lateness, trigger=trigger).aggregate(
            n=agg.count(), s=agg.sum("v"), top=agg.top_k("v", 2))
        return [w, w.late()]
    return build


SNAP_CASES = {
    "global-count-purging": _snap_case(W.global_(), W.purging(W.on_count(4))),
    "tumbling-count": _snap_case(W.tumbling(40), W.on_count(3), lateness=10),
    "every-event-time": _snap_case(W.sliding(60, every=20), W.every_event_time(15), lateness=5),
    "session-gap-fn": _snap_case(W.session(gap_fn=lambda r: 5 + r["id"] % 11), lateness=10),
    "staggered": _snap_case(W.tumbling(30, stagger="key")),
}


@pytest.mark.native_only("snapshots of a native job, cut between steps")
@pytest.mark.parametrize("case", list(SNAP_CASES))
def test_the_trigger_operator_snapshots_and_restores(case: str) -> None:
    build = SNAP_CASES[case]
    whole = snap._run(build, None)
    assert any(whole)
    for cut in range(0, len(snap.EVENTS) // snap.CHUNK + 3, 3):
        assert snap._run(build, cut) == whole, cut


@pytest.mark.native_only("drives a native job step by step with a manual clock")
def test_processing_time_windows_survive_a_restore() -> None:
    script = [{"k": "a", "v": 1}, advance_processing_time(4), {"k": "b", "v": 2}, advance_processing_time(4),
              {"k": "a", "v": 3}, advance_processing_time(4), {"k": "a", "v": 4}, advance_processing_time(20)]

    def build(flow: ms.Flow, sink: CollectSink) -> None:
        flow.source(TestSource(script)).key_by("k").window(W.tumbling(10, processing_time=True)).aggregate(
            s=agg.sum("v")).sink(sink)

    whole = snap.run_on_a_manual_clock(build, 12)
    assert canon((r["k"], r["window_start"], r["s"]) for r in whole) == [("a", 0, 4), ("a", 10, 4), ("b", 0, 2)]
    for cut in range(10):
        assert canon(snap.run_on_a_manual_clock(build, 12, cut)) == canon(whole), cut
