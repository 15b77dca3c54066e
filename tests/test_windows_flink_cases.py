"""Cases transcribed from Flink's published window, trigger and interval-join tests.

Sources (read for their inputs and expected outputs; the code here is ours): WindowOperatorTest,
EventTimeTriggerTest, ProcessingTimeTriggerTest, CountTriggerTest, PurgingTriggerTest,
MergingWindowSetTest and IntervalJoinOperatorTest of apache/flink. Each case feeds the same
records and watermarks (a scripted TestSource: records between ``watermark(...)`` markers, as
the test harness processes them between ``processWatermark`` calls) and expects the same
outputs: ``(key, sum, timestamp)`` where Flink emits ``Tuple2(key, sum)`` at a timestamp.

Where millstream differs by design, the case says so:

- a bounded input ends with the watermark at +inf, so windows that Flink's test leaves pending
  fire at the end here (the case lists those outputs as "at the end of input");
- a session fires once the watermark has passed its end (``>= end``, Flink: ``>= end - 1``), so
  that a record exactly one gap after a session, when not late, always joins it; a Flink case
  whose last watermark is exactly ``end - 1`` gets that session at the end of input instead
  (same output, same timestamp);
- late records are not only dropped: they go to the late side output, which the cases check too;
- processing-time windows here stamp their output with the latest event time in the window
  (Flink: the window's end - 1), so their cases compare keys and sums.

Every case runs in native, micro-batch and batch mode.
"""

from __future__ import annotations

from typing import Any

import pytest

import millstream as ms
from millstream import agg
from millstream.testing import CollectSink, ManualClock, TestSource, advance_processing_time, watermark

pytestmark = pytest.mark.usefixtures("exec_mode")
W = ms.windows
MAX = 2**63 - 1


def r(k: str, v: int, ts: int) -> dict[str, Any]:
    return {"k": k, "v": v, "ts": ts}


def harness_source(flow: ms.Flow, script: list[Any]) -> ms.Stream:
    """The script's watermarks only, as the test harness: records never move the watermark."""
    return flow.source(TestSource([NO_WATERMARK, *script]),
                       watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))


NO_WATERMARK = watermark(-(2**62))


def run_keyed(script: list[Any], assigner: Any, *, trigger: Any = None, lateness: int = 0,
              finish: str = "aggregate") -> tuple[list[tuple[Any, ...]], list[Any]]:
    """Sum of ``v`` per key and window: sorted ``(key, sum, timestamp)``, and the late records."""
    flow = ms.Flow("flink")
    src = harness_source(flow, script)
    w = src.key_by("k").window(assigner, allowed_lateness=lateness, trigger=trigger)
    if finish == "aggregate":
        res = w.aggregate(s=agg.sum("v"))
    elif finish == "reduce":
        res = w.reduce(lambda a, b: {"k": a["k"], "v": a["v"] + b["v"]})
    else:  # an iterable window function
        res = w.process(lambda k, win, rs: [{"k": k, "s": sum(x["v"] for x in rs)}])
    out, late = CollectSink(), CollectSink()
    res.sink(out)
    res.late().sink(late)
    flow.run()
    rows = [(row["k"], row["s"] if "s" in row else row["v"], t) for row, t in zip(out.values, out.times)]
    return sorted(rows, key=repr), late.values


def run_sessions(script: list[Any], assigner: Any, *, trigger: Any = None, lateness: int = 0
                 ) -> tuple[list[tuple[Any, ...]], list[Any]]:
    """Flink's SessionWindowFunction output: ``("key-sum", start, end)`` at its timestamp."""
    flow = ms.Flow("flink")
    src = harness_source(flow, script)
    res = src.key_by("k").window(assigner, allowed_lateness=lateness, trigger=trigger).aggregate(s=agg.sum("v"))
    out, late = CollectSink(), CollectSink()
    res.sink(out)
    res.late().sink(late)
    flow.run()
    rows = [(f"{row['k']}-{row['s']}", row["window_start"], row["window_end"], t)
            for row, t in zip(out.values, out.times)]
    return sorted(rows, key=repr), late.values


def expect(*rows: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=repr)


# -- WindowOperatorTest: sliding and tumbling event-time windows -------------------------------------

OUT_OF_ORDER = [r("key2", 1, 3999), r("key2", 1, 3000), r("key1", 1, 20), r("key1", 1, 0), r("key1", 1, 999),
                r("key2", 1, 1998), r("key2", 1, 1999), r("key2", 1, 1000)]
WATERMARKS = [watermark(t) for t in (999, 1999, 2999, 3999, 4999, 5999, 6999, 7999)]

SLIDING_OUT = expect(("key1", 3, 999), ("key1", 3, 1999), ("key2", 3, 1999), ("key1", 3, 2999), ("key2", 3, 2999),
                     ("key2", 5, 3999), ("key2", 2, 4999), ("key2", 2, 5999))
TUMBLING_OUT = expect(("key1", 3, 2999), ("key2", 3, 2999), ("key2", 2, 5999))


@pytest.mark.parametrize("finish", ["aggregate", "reduce", "process"])
def test_sliding_event_time_windows(finish: str) -> None:
    """testSlidingEventTimeWindowsReduce / ...Apply: size 3 s, slide 1 s."""
    got, late = run_keyed(OUT_OF_ORDER + WATERMARKS, W.sliding(3000, every=1000), finish=finish)
    assert got == SLIDING_OUT and late == []


@pytest.mark.parametrize("finish", ["aggregate", "reduce", "process"])
def test_tumbling_event_time_windows(finish: str) -> None:
    """testTumblingEventTimeWindowsReduce / ...Apply: size 3 s."""
    got, late = run_keyed(OUT_OF_ORDER + WATERMARKS, W.tumbling(3000), finish=finish)
    assert got == TUMBLING_OUT and late == []


# -- WindowOperatorTest: sessions -----------------------------------------------------------------------

SESSION_SCRIPT = [r("key2", 1, 0), r("key2", 2, 1000), r("key2", 3, 2500), r("key1", 1, 10), r("key1", 2, 1000),
                  r("key1", 3, 2500), r("key2", 4, 5501), r("key2", 5, 6000), r("key2", 5, 6000),
                  r("key2", 6, 6050), watermark(12000), r("key2", 10, 15000), r("key2", 20, 15000),
                  watermark(17999)]
# [15000, 18000) is due at watermark 18000 here (Flink: 17999): it fires at the end of input
SESSION_OUT = expect(("key1-6", 10, 5500, 5499), ("key2-6", 0, 5500, 5499), ("key2-20", 5501, 9050, 9049),
                     ("key2-30", 15000, 18000, 17999))


def test_session_windows() -> None:
    """testSessionWindows / testReduceSessionWindows: gap 3 s; 5501 is one ms past [0, 5500)."""
    got, late = run_sessions(SESSION_SCRIPT, W.session(3000))
    assert got == SESSION_OUT and late == []


def test_session_windows_on_the_trigger_operator() -> None:
    """The same case through the general window operator (an explicit event-time trigger)."""
    got, late = run_sessions(SESSION_SCRIPT, W.session(3000), trigger=W.on_event_time())
    assert got == SESSION_OUT and late == []


def test_session_windows_with_a_count_trigger() -> None:
    """testSessionWindowsWithCountTrigger: purging count 4; a record merging two key1 sessions of
    3 records each makes a session of 7, which fires."""
    script = [r("key2", 1, 0), r("key2", 2, 1000), r("key2", 3, 2500), r("key2", 4, 3500),
              r("key1", 1, 10), r("key1", 2, 1000), r("key1", 3, 2500),
              r("key1", 1, 6000), r("key1", 2, 6500), r("key1", 3, 7000), r("key1", 10, 4500)]
    got, late = run_sessions(script, W.session(3000), trigger=W.purging(W.on_count(4)))
    assert got == expect(("key2-10", 0, 6500, 6499), ("key1-22", 10, 10000, 9999)) and late == []


SESSION_LATENESS = [r("key2", 1, 1000), watermark(1999), r("key2", 1, 2000), watermark(4998),
                    r("key2", 1, 4500),  # not late: its session [1000, 7500) ends after the watermark
                    r("key2", 1, 8500), watermark(7400),
                    r("key2", 1, 7000),  # merges the two sessions
                    watermark(11501), r("key2", 1, 11600), watermark(14600),
                    r("key2", 1, 10000),  # late (lateness 0) / merges and re-fires (lateness 10)
                    r("key2", 1, 14500), watermark(20000), watermark(100000)]


@pytest.mark.parametrize("purge", [False, True])
def test_drop_due_to_lateness_session_zero_lateness(purge: bool) -> None:
    """testDropDueToLatenessSessionZeroLateness and ...PurgingTrigger (no difference at lateness 0)."""
    trig = W.purging(W.on_event_time()) if purge else None
    got, late = run_sessions(SESSION_LATENESS, W.session(3000), trigger=trig)
    assert got == expect(("key2-5", 1000, 11500, 11499), ("key2-1", 11600, 14600, 14599),
                         ("key2-1", 14500, 17500, 17499))
    assert late == [r("key2", 1, 10000)]


def test_drop_due_to_lateness_session_with_lateness() -> None:
    """testDropDueToLatenessSessionWithLateness: lateness 10, accumulating: the record at 10000
    merges into the fired session [11600, 14600), which fires again at once, then grows."""
    got, late = run_sessions(SESSION_LATENESS, W.session(3000), lateness=10)
    assert got == expect(("key2-5", 1000, 11500, 11499), ("key2-1", 11600, 14600, 14599),
                         ("key2-2", 10000, 14600, 14599), ("key2-3", 10000, 17500, 17499))
    assert late == []


def test_session_exactly_one_gap_apart_is_one_session() -> None:
    """Flink's TimeWindow.intersects merges windows that touch; so does millstream. With the
    watermark at the first session's end - 1, the touching record still joins it."""
    script = [r("key1", 1, 0), watermark(2999), r("key1", 2, 3000), watermark(10000)]
    got, late = run_sessions(script, W.session(3000))
    assert got == expect(("key1-3", 0, 6000, 5999)) and late == []


# -- WindowOperatorTest: global windows, count and continuous triggers ---------------------------------------


def test_count_trigger() -> None:
    """testCountTrigger: global windows, purging count 4."""
    script = [r("key2", 1, 3000), r("key2", 1, 3999), r("key1", 1, 20), r("key1", 1, 0), r("key1", 1, 999),
              r("key2", 1, 1998), r("key2", 1, 1999), r("key2", 1, 1000), r("key1", 1, 10999),
              r("key2", 1, 1000), r("key2", 1, 1000), r("key2", 1, 1000)]
    got, late = run_keyed(script, W.global_(), trigger=W.purging(W.on_count(4)))
    # a global window's output carries the latest event time among its records (Flink: +inf)
    assert [(k, s) for k, s, _ in got] == [("key1", 4), ("key2", 4), ("key2", 4)] and late == []


def test_continuous_watermark_trigger() -> None:
    """testContinuousWatermarkTrigger: global windows firing every 3 s of event time."""
    script = [r("key1", 1, 0), r("key2", 1, 3000), r("key2", 1, 3999), r("key1", 1, 20), r("key1", 1, 999),
              r("key2", 1, 1998), r("key2", 1, 1999), r("key2", 1, 1000)]
    script += [watermark(t) for t in range(1000, 9000, 1000)]
    got, _ = run_keyed(script, W.global_(), trigger=W.every_event_time(3000))
    flink = [("key1", 3), ("key1", 3), ("key2", 5)]  # at watermarks 3000, 6000 and 6000
    at_end = [("key1", 3), ("key2", 5)]  # the global window's end, at the end of input
    assert sorted((k, s) for k, s, _ in got) == sorted(flink + at_end)


# -- WindowOperatorTest: processing-time windows -----------------------------------------------------------


def run_processing(script: list[Any], assigner: Any) -> list[tuple[Any, int]]:
    flow = ms.Flow("flink")
    res = flow.source(TestSource(script)).key_by("k").window(assigner).aggregate(s=agg.sum("v"))
    out = CollectSink()
    res.sink(out)
    flow.run(clock=ManualClock())
    return [(row["k"], row["s"]) for row in out.values]


def at(ms_: int, now: list[int]) -> Any:
    step = ms_ - now[0]
    now[0] = ms_
    return advance_processing_time(step)


def test_processing_time_tumbling_windows() -> None:
    """testProcessingTimeTumblingWindows: size 3 s; the clock at 3, 5000, 7000."""
    now = [0]
    script = [at(3, now), *[r("key2", 1, 0)] * 3, *[r("key1", 1, 0)] * 2, at(5000, now),
              *[r("key1", 1, 0)] * 3, at(7000, now)]
    assert sorted(run_processing(script, W.tumbling(3000, processing_time=True))) == sorted(
        [("key2", 3), ("key1", 2), ("key1", 3)])


def test_processing_time_sliding_windows() -> None:
    """testProcessingTimeSlidingWindows: size 3 s, slide 1 s."""
    now = [0]
    script = [at(3, now), r("key2", 1, 0), at(1000, now), r("key2", 1, 0), r("key2", 1, 0), at(2000, now),
              r("key1", 1, 0), r("key1", 1, 0), at(3000, now), *[r("key1", 1, 0)] * 3, at(7000, now)]
    assert sorted(run_processing(script, W.sliding(3000, every=1000, processing_time=True))) == sorted(
        [("key2", 1), ("key2", 3), ("key2", 3), ("key1", 2), ("key2", 2), ("key1", 5), ("key1", 5), ("key1", 3)])


# -- WindowOperatorTest: lateness ----------------------------------------------------------------------------


def test_lateness_with_a_purging_trigger() -> None:
    """testLateness: tumbling 2 s, purging event-time trigger, allowed lateness 500."""
    script = [r("key2", 1, 500), watermark(1500), r("key2", 1, 1300), watermark(2300),
              r("key2", 1, 1997),  # within the lateness: fires again at once, alone (purged)
              watermark(6000), r("key2", 1, 1998), watermark(7000)]
    got, late = run_keyed(script, W.tumbling(2000), trigger=W.purging(W.on_event_time()), lateness=500)
    assert got == expect(("key2", 2, 1999), ("key2", 1, 1999))
    assert late == [r("key2", 1, 1998)]


def test_cleanup_time_overflow() -> None:
    """testCleanupTimeOverflow: a window near the end of time with lateness 2000 is not cleaned
    up early by a wrapped-around cleanup time (Python integers do not wrap)."""
    t = MAX - 1750
    start = t - t % 1000
    script = [r("key2", 1, t), watermark(MAX - 1500), watermark(start + 999)]
    got, late = run_keyed(script, W.tumbling(1000), trigger=W.on_event_time(), lateness=2000)
    assert got == [("key2", 1, start + 999)] and late == []


def test_drop_due_to_lateness_tumbling() -> None:
    """testDropDueToLatenessTumbling (and testSideOutputDueToLatenessTumbling): lateness 0."""
    script = [r("key2", 1, 1000), watermark(1985), r("key2", 1, 1980), watermark(1999),
              r("key2", 1, 1998), r("key2", 1, 2001), watermark(2999), watermark(3999)]
    got, late = run_keyed(script, W.tumbling(2000))
    assert got == expect(("key2", 2, 1999), ("key2", 1, 3999))
    assert late == [r("key2", 1, 1998)]


def test_drop_due_to_lateness_sliding() -> None:
    """testDropDueToLatenessSliding (and ...SideOutput...): size 3 s, slide 1 s, lateness 0; a
    record late for one of its windows still counts in the others."""
    script = [r("key2", 1, 1000), watermark(1999), r("key2", 1, 2000), watermark(3000), r("key1", 1, 3001),
              r("key2", 1, 2400), r("key2", 1, 2400), r("key1", 1, 3001), r("key2", 1, 3900), watermark(6000),
              r("key1", 1, 3001), watermark(25000)]
    got, late = run_keyed(script, W.sliding(3000, every=1000))
    assert got == expect(("key2", 1, 1999), ("key2", 2, 2999), ("key2", 5, 3999), ("key1", 2, 3999),
                         ("key2", 4, 4999), ("key1", 2, 4999), ("key2", 1, 5999), ("key1", 2, 5999))
    assert late == [r("key1", 1, 3001)]


def test_event_time_tumbling_windows_with_offset() -> None:
    """TumblingEventTimeWindows.of(2 s, offset 100 ms), and the same with a negative offset."""
    script = [r("key1", 1, 50), r("key1", 1, 100), r("key1", 1, 2099), r("key1", 1, 2100), watermark(5000)]
    for offset in (100, 100 - 2000):
        got, _ = run_keyed(script, W.tumbling(2000, offset=offset))
        assert got == expect(("key1", 1, 99), ("key1", 2, 2099), ("key1", 1, 4099))


# -- EventTimeTriggerTest, CountTriggerTest, PurgingTriggerTest, ProcessingTimeTriggerTest ----------------------


def test_event_time_trigger_window_separation_and_firing() -> None:
    script = [r("k", 1, 0), r("k", 1, 1), r("k", 1, 2), watermark(1), watermark(3)]
    got, _ = run_keyed(script, W.tumbling(2), trigger=W.on_event_time())
    assert got == expect(("k", 2, 1), ("k", 1, 3))


def test_event_time_trigger_late_element_triggers_immediately() -> None:
    script = [r("k", 1, 3), watermark(2), r("k", 1, 0), r("k", 1, 1)]
    got, late = run_keyed(script, W.tumbling(2), trigger=W.on_event_time(), lateness=100)
    assert got == expect(("k", 1, 1), ("k", 2, 1), ("k", 1, 3)) and late == []


def test_event_time_trigger_merging_windows() -> None:
    """Windows (0, 2) and (2, 4) merge into (0, 4), which fires once."""
    script = [{"k": "k", "v": 1, "ts": 0, "gap": 2}, {"k": "k", "v": 1, "ts": 2, "gap": 2}, watermark(10)]
    got, _ = run_sessions(script, W.session(gap_fn=lambda x: x["gap"]), trigger=W.on_event_time())
    assert got == expect(("k-2", 0, 4, 3))


def test_count_trigger_window_separation_and_firing() -> None:
    script = [r("k", 1, 0), r("k", 1, 1), r("k", 1, 2), r("k", 1, 0), r("k", 1, 3), watermark(10)]
    got, _ = run_keyed(script, W.tumbling(2), trigger=W.on_count(3))
    assert got == expect(("k", 3, 1))  # (2, 4) holds 2 records: it never fires


def test_count_trigger_fires_again_after_clearing_its_count() -> None:
    script = [r("k", i, 0) for i in range(1, 7)]
    got, _ = run_keyed(script, W.tumbling(2), trigger=W.on_count(3))
    assert got == expect(("k", 6, 1), ("k", 21, 1))  # accumulating: 1+2+3, then all six


def test_count_trigger_merging_windows() -> None:
    """Counts of merged windows add up: 1 + 1, and the bridging record makes 3."""
    script = [{"k": "k", "v": 1, "ts": 0, "gap": 2}, {"k": "k", "v": 1, "ts": 3, "gap": 2},
              {"k": "k", "v": 1, "ts": 2, "gap": 1}]
    got, _ = run_sessions(script, W.session(gap_fn=lambda x: x["gap"]), trigger=W.on_count(3))
    assert got == expect(("k-3", 0, 5, 4))


def test_purging_trigger_turns_fire_into_fire_and_purge() -> None:
    script = [r("k", i, i) for i in range(1, 6)]
    got, _ = run_keyed(script, W.global_(), trigger=W.purging(W.on_count(2)))
    assert [s for _, s, _ in got] == [3, 7]  # 1+2, 3+4; the fifth waits for a partner


def test_processing_time_trigger_window_separation_and_firing() -> None:
    now = [0]
    script = [r("k", 1, 0), at(2, now), r("k", 2, 0), at(3, now), at(10, now)]
    assert run_processing(script, W.tumbling(2, processing_time=True)) == [("k", 1), ("k", 2)]


# -- MergingWindowSetTest (through sessions with a gap per record) ---------------------------------------------


def gap_sessions(items: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    script = [{"k": "k", "v": 1, "ts": t, "gap": g} for t, g in items]
    got, _ = run_sessions(script, W.session(gap_fn=lambda x: x["gap"]))
    return sorted((s, e, int(name.split("-")[1])) for name, s, e, _ in got)


def test_merging_window_set_incremental_merging() -> None:
    """(0, 1) and (2, 3) stay apart until (1, 2) touches both."""
    assert gap_sessions([(0, 1), (2, 1)]) == [(0, 1, 1), (2, 3, 1)]
    assert gap_sessions([(0, 1), (2, 1), (1, 1)]) == [(0, 3, 3)]


def test_merging_window_set_contained_window() -> None:
    assert gap_sessions([(0, 3), (1, 1)]) == [(0, 3, 2)]


def test_merging_window_set_several_windows_at_once() -> None:
    """(0, 2), (3, 5), (6, 8) merged by one wide window (1, 7)."""
    assert gap_sessions([(0, 2), (3, 2), (6, 2), (10, 1)]) == [(0, 2, 1), (3, 5, 1), (6, 8, 1), (10, 11, 1)]
    assert gap_sessions([(0, 2), (3, 2), (6, 2), (10, 1), (1, 6)]) == [(0, 8, 4), (10, 11, 1)]


# -- IntervalJoinOperatorTest ----------------------------------------------------------------------------------


def run_interval(script: list[Any], lower: int, upper: int, lower_inclusive: bool = True,
                 upper_inclusive: bool = True) -> tuple[list[tuple[int, int, int]], list[Any]]:
    """Pairs ``(left ts, right ts, output ts)`` and the late records of either side."""
    flow = ms.Flow("ij")
    src = harness_source(flow, script)
    left = src.filter(ms.col("side") == "L").key_by("k")
    right = src.filter(ms.col("side") == "R").key_by("k")
    j = left.interval_join(right, lower=lower, upper=upper, lower_inclusive=lower_inclusive,
                           upper_inclusive=upper_inclusive, combine=lambda a, b: (a["ts"], b["ts"]))
    out, late = CollectSink(), CollectSink()
    j.sink(out)
    j.late().sink(late)
    flow.run()
    return sorted((a, b, t) for (a, b), t in zip(out.values, out.times)), late.values


def L(ts: int) -> dict[str, Any]:  # noqa: N802 - the test's own shorthand
    return {"side": "L", "k": "key", "ts": ts}


def R(ts: int) -> dict[str, Any]:  # noqa: N802
    return {"side": "R", "k": "key", "ts": ts}


def elements_and_watermarks(first: int, last: int) -> list[Any]:
    """processElementsAndWatermarks: per time, a left and a right record, then both watermarks."""
    out: list[Any] = []
    for t in range(first, last + 1):
        out += [L(t), R(t), watermark(t)]
    return out


def pairs(*ps: tuple[int, int]) -> list[tuple[int, int, int]]:
    return sorted((a, b, max(a, b)) for a, b in ps)


@pytest.mark.parametrize(("bounds", "want"), [
    # testImplementationMirrorsCorrectly, both halves
    ((1, 3, True, False), [(1, 2), (1, 3), (2, 3), (2, 4), (3, 4)]),
    ((-3, -1, False, True), [(2, 1), (3, 1), (3, 2), (4, 2), (4, 3)]),
    # testNegativeInclusiveAndNegativeInclusive
    ((-2, -1, True, True), [(2, 1), (3, 1), (3, 2), (4, 2), (4, 3)]),
    # testNegativeInclusiveAndPositiveInclusive
    ((-1, 1, True, True), [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3), (3, 4), (4, 3), (4, 4)]),
    # testPositiveInclusiveAndPositiveInclusive
    ((1, 2, True, True), [(1, 2), (1, 3), (2, 3), (2, 4), (3, 4)]),
    # testNegativeExclusiveAndNegativeExlusive
    ((-3, -1, False, False), [(3, 1), (4, 2)]),
    # testNegativeExclusiveAndPositiveExlusive
    ((-1, 1, False, False), [(1, 1), (2, 2), (3, 3), (4, 4)]),
    # testPositiveExclusiveAndPositiveExlusive
    ((1, 3, False, False), [(1, 3), (2, 4)]),
], ids=["mirrors-1", "mirrors-2", "neg-incl-neg-incl", "neg-incl-pos-incl", "pos-incl-pos-incl",
        "neg-excl-neg-excl", "neg-excl-pos-excl", "pos-excl-pos-excl"])
def test_interval_join_bounds(bounds: tuple[int, int, bool, bool], want: list[tuple[int, int]]) -> None:
    got, late = run_interval(elements_and_watermarks(1, 4), *bounds)
    assert got == pairs(*want) and late == []


def test_interval_join_discards_late_data() -> None:
    """testDiscardsLateData: after watermark 3 a left record at 1 is late (and here goes to .late())."""
    script = [L(1), R(1), L(2), R(2), L(3), R(3), watermark(3), L(1), L(4), R(4), L(5), R(5)]
    got, late = run_interval(script, -1, 1)
    assert got == pairs((1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3), (3, 4), (4, 3), (4, 4), (4, 5),
                        (5, 4), (5, 5))
    assert late == [L(1)]


def test_interval_join_late_data_goes_to_the_side_output() -> None:
    """testLateData (side outputs of both sides)."""
    script = [L(6), R(6), watermark(6), L(3), R(3), L(7), R(7)]
    got, late = run_interval(script, -2, 2)
    assert got == pairs((6, 6), (6, 7), (7, 6), (7, 7))
    assert late == [L(3), R(3)]


def test_interval_join_returns_the_later_timestamp() -> None:
    """testReturnsCorrectTimestamp: the output carries the later of the two records' times."""
    got, _ = run_interval([L(10), R(13), R(8)], -5, 5)
    assert got == [(10, 8, 10), (10, 13, 13)]


def test_interval_join_joins_a_record_at_the_watermark() -> None:
    """Flink's isLate is ``timestamp < watermark``: a record exactly at the watermark joins."""
    script = [L(1), watermark(3), R(3), L(3), R(2)]
    got, late = run_interval(script, -2, 2)
    assert got == pairs((1, 3), (3, 3))
    assert late == [R(2)]


def test_interval_join_fails_without_event_time() -> None:
    """testFailsWithNoTimestampsLeft/Right: here refused when the flow is built."""
    flow = ms.Flow("ij")
    a = flow.source(TestSource([L(1)])).key_by("k")
    b = flow.source(TestSource([R(1)]), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts")).key_by("k")
    with pytest.raises(ms.errors.FlowDefinitionError, match="event time"):
        a.interval_join(b, lower=0, upper=1)
