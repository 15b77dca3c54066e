"""Windows against an independent brute-force reference, and the event-time rules around them.

The reference assigns every event to its windows straight from the definitions
(tumbling/sliding: every ``[offset + j*every, offset + j*every + size)`` that
holds it; sessions: per key, events at most ``gap`` apart; count windows:
every ``size`` events of a key in arrival order, stepping by ``every``) and
computes each aggregation in plain Python. Results are compared as multisets.
"""

from __future__ import annotations

import functools
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import millstream as ms
from conftest import canon, collect, finish, stamped, start
from millstream import agg
from millstream.testing import CollectSink, TestSource, watermark

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

# -- the reference ---------------------------------------------------------------------

Event = dict[str, Any]
WindowKey = tuple[Any, Any, Any]  # (key, start, end)


def time_windows(t: int, size: int, every: int, offset: int) -> list[tuple[int, int]]:
    """Every window [offset + j*every, offset + j*every + size) that holds t, by trying each j near t."""
    lo = (t - offset - size) // every - 1
    hi = (t - offset) // every + 1
    out = []
    for j in range(lo, hi + 1):
        ws = offset + j * every
        if ws <= t < ws + size:
            out.append((ws, ws + size))
    return out


def session_windows(events: list[Event], gap: int, key: str | None) -> dict[WindowKey, list[Event]]:
    """Per key: sort by time, a new session starts where the distance to the previous event is > gap."""
    by_key: dict[Any, list[Event]] = defaultdict(list)
    for e in events:
        by_key[e[key] if key else None].append(e)
    out: dict[WindowKey, list[Event]] = {}
    for k, evs in by_key.items():
        evs = sorted(evs, key=lambda e: (e["ts"], e["_arrival"]))
        groups: list[list[Event]] = [[evs[0]]]
        for e in evs[1:]:
            if e["ts"] - groups[-1][-1]["ts"] <= gap:
                groups[-1].append(e)
            else:
                groups.append([e])
        for g in groups:
            out[(k, g[0]["ts"], g[-1]["ts"] + gap)] = g
    return out


def count_windows(events: list[Event], size: int, every: int, key: str | None,
                  timed: bool) -> dict[WindowKey, list[Event]]:
    """Every full run of ``size`` consecutive events of a key, starting every ``every`` events."""
    by_key: dict[Any, list[Event]] = defaultdict(list)
    for e in events:
        by_key[e[key] if key else None].append(e)
    out: dict[WindowKey, list[Event]] = {}
    for k, evs in by_key.items():
        i = 0
        while i + size <= len(evs):
            chunk = evs[i:i + size]
            if timed:  # a count window's bounds are its events' time span
                ws, we = min(e["ts"] for e in chunk), max(e["ts"] for e in chunk) + 1
            else:
                ws = we = None
            out[(k, ws, we, i)] = chunk  # type: ignore[index]
            i += every
    return out


def assign(events: list[Event], assigner: Any, key: str | None = "k", timed: bool = True
           ) -> dict[Any, list[Event]]:
    """Window key -> events (in arrival order), from the definitions."""
    events = [{**e, "_arrival": i} for i, e in enumerate(events)]
    if isinstance(assigner, ms.windows.TumblingWindow | ms.windows.SlidingWindow):
        out: dict[Any, list[Event]] = defaultdict(list)
        for e in events:
            for ws, we in time_windows(e["ts"], assigner.size_ms, assigner.slide_ms, assigner.offset_ms):
                out[(e[key] if key else None, ws, we)].append(e)
        return dict(out)
    if isinstance(assigner, ms.windows.SessionWindow):
        return session_windows(events, assigner.gap_ms, key)
    return count_windows(events, assigner.size, assigner.every, key, timed)


def _vals(evs: list[Event], f: str = "v") -> list[Any]:
    return [e[f] for e in evs if e[f] is not None]


def _first(evs: list[Event], timed: bool) -> Any:
    return min(evs, key=lambda e: (e["ts"] if timed else 0, e["_arrival"]))["v"]


def _last(evs: list[Event], timed: bool) -> Any:
    return max(evs, key=lambda e: (e["ts"] if timed else 0, e["_arrival"]))["v"]


def _most_frequent(evs: list[Event], k: int) -> list[list[Any]]:
    counts = Counter(_vals(evs))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], repr(kv[0])))
    return [[v, n] for v, n in ranked[:k]]


def _mean(evs: list[Event]) -> Any:
    vs = _vals(evs)
    return sum(vs) / len(vs) if vs else None


def _sumsq_create() -> list[int]:
    return [0, 0]


def _sumsq_add(acc: list[int], v: Any) -> list[int]:
    return acc if v is None else [acc[0] + v * v, acc[1] + 1]


def _sumsq_merge(a: list[int], b: list[int]) -> list[int]:
    return [a[0] + b[0], a[1] + b[1]]


def _record_add(acc: int, r: Event) -> int:
    return acc + len(r["k"])


#: name -> (aggregation, reference over a window's events given whether the stream is timed)
AGGS: dict[str, tuple[agg.Aggregation, Callable[[list[Event], bool], Any]]] = {
    "count": (agg.count(), lambda evs, timed: len(evs)),
    "count_v": (agg.count("v"), lambda evs, timed: len(_vals(evs))),
    "sum": (agg.sum("v"), lambda evs, timed: sum(_vals(evs))),
    "mean": (agg.mean("v"), lambda evs, timed: _mean(evs)),
    "min": (agg.min("v"), lambda evs, timed: min(_vals(evs), default=None)),
    "max": (agg.max("v"), lambda evs, timed: max(_vals(evs), default=None)),
    "first": (agg.first("v"), _first),
    "last": (agg.last("v"), _last),
    "distinct": (agg.count_distinct("v"), lambda evs, timed: len(set(_vals(evs)))),
    "top3": (agg.top_k("v", 3), lambda evs, timed: sorted(_vals(evs), reverse=True)[:3]),
    "freq2": (agg.most_frequent("v", 2), lambda evs, timed: _most_frequent(evs, 2)),
    "sumsq": (agg.custom(_sumsq_create, _sumsq_add, merge=_sumsq_merge, result=lambda a: (a[0], a[1]), field="v"),
              lambda evs, timed: (sum(v * v for v in _vals(evs)), len(_vals(evs)))),
    "keylen": (agg.custom(int, _record_add, merge=lambda a, b: a + b),
               lambda evs, timed: sum(len(e["k"]) for e in evs)),
}


def reference_rows(events: list[Event], assigner: Any, names: list[str], *, key: str | None = "k",
                   timed: bool = True) -> list[Event]:
    rows = []
    for wk, evs in assign(events, assigner, key, timed).items():
        row: Event = {} if key is None else {key: wk[0]}
        row["window_start"], row["window_end"] = wk[1], wk[2]
        for name in names:
            row[name] = AGGS[name][1](evs, timed)
        rows.append(row)
    return rows


# -- the inputs ------------------------------------------------------------------------

BOUND = 20


def make_events(seed: int, n: int = 400, bound: int = BOUND) -> list[Event]:
    """Events with keys of uneven frequency, some negative times, repeated times, None values,
    arriving out of order but never more than ``bound`` behind the latest event."""
    rnd = random.Random(seed)
    events = []
    for i in range(n):
        ts = rnd.randint(-60, 700)
        v = None if rnd.random() < 0.1 else rnd.randint(-5, 20)
        events.append({"k": rnd.choice(["a", "a", "a", "bb", "bb", "ccc"]), "ts": ts, "v": v, "id": i})
    jitter = [rnd.randint(0, bound) for _ in events]
    order = sorted(range(n), key=lambda i: (events[i]["ts"] + jitter[i], i))
    arrived = [events[i] for i in order]
    top = -(10**9)
    for e in arrived:  # the promise: no event is late
        assert e["ts"] >= top - bound
        top = max(top, e["ts"])
    return arrived


EVENTS = make_events(7)

WINDOWS = {
    "tumbling": ms.windows.tumbling(50),
    "tumbling-offset": ms.windows.tumbling(timedelta(milliseconds=50), offset=timedelta(milliseconds=17)),
    "sliding": ms.windows.sliding(60, every=20),
    "sliding-gcd": ms.windows.sliding(50, every=20),
    "sliding-offset": ms.windows.sliding(45, every=15, offset=7),
    "sliding-equal": ms.windows.sliding(30, every=30),
    "session": ms.windows.session(12),
    "count": ms.windows.count(5),
    "count-every": ms.windows.count(5, every=2),
}


def run_window(assigner: Any, events: list[Event], finish_with: Callable[[ms.WindowedStream], ms.Stream],
               *, chunk: int | None = None, keyed: bool = True) -> list[Any]:
    flow = ms.Flow("w")
    src = stamped(flow, events, bound=BOUND, chunk=chunk)
    ws = src.key_by("k").window(assigner) if keyed else src.window(assigner)
    out = collect(finish_with(ws))
    res = flow.run()
    assert res.total("late") == 0
    return out.values


# -- aggregations ----------------------------------------------------------------------


@pytest.mark.parametrize("wname", list(WINDOWS))
@pytest.mark.parametrize("chunk", [None, 1, 13])
def test_all_aggregations_at_once_match_the_reference(wname: str, chunk: int | None) -> None:
    assigner = WINDOWS[wname]
    names = list(AGGS)
    got = run_window(assigner, EVENTS, lambda w: w.aggregate(**{n: AGGS[n][0] for n in names}), chunk=chunk)
    assert canon(got) == canon(reference_rows(EVENTS, assigner, names))


@pytest.mark.parametrize("wname", list(WINDOWS))
@pytest.mark.parametrize("name", list(AGGS))
def test_each_aggregation_alone_matches_the_reference(wname: str, name: str) -> None:
    assigner = WINDOWS[wname]
    events = EVENTS[:150]
    got = run_window(assigner, events, lambda w: w.aggregate(**{name: AGGS[name][0]}), chunk=9)
    assert canon(got) == canon(reference_rows(events, assigner, [name]))


@pytest.mark.parametrize("wname", ["tumbling", "sliding-offset", "session", "count-every"])
def test_windows_over_the_whole_stream(wname: str) -> None:
    assigner = WINDOWS[wname]
    got = run_window(assigner, EVENTS, lambda w: w.aggregate(n=agg.count(), s=agg.sum("v"), f=agg.first("v")),
                     keyed=False)
    ref = reference_rows(EVENTS, assigner, ["count", "sum", "first"], key=None)
    ref = [{"window_start": r["window_start"], "window_end": r["window_end"], "n": r["count"], "s": r["sum"],
            "f": r["first"]} for r in ref]
    assert canon(got) == canon(ref)


@pytest.mark.parametrize("wname", ["count", "count-every"])
def test_count_windows_without_event_time(wname: str) -> None:
    """On a stream without event time a count window has no bounds; first/last follow arrival order."""
    assigner = WINDOWS[wname]
    names = ["count", "sum", "first", "last", "top3", "sumsq"]
    flow = ms.Flow("c")
    out = collect(flow.source(TestSource(EVENTS, chunk=11)).key_by("k").window(assigner)
                  .aggregate(**{n: AGGS[n][0] for n in names}))
    flow.run()
    assert canon(out.values) == canon(reference_rows(EVENTS, assigner, names, timed=False))
    assert out.times == [None] * len(out.values)


def test_count_window_fires_only_when_full() -> None:
    flow = ms.Flow("c")
    out = collect(flow.source(TestSource([{"k": "a", "v": i} for i in range(7)])).key_by("k")
                  .window(ms.windows.count(3)).aggregate(s=agg.sum("v")))
    flow.run()
    assert [r["s"] for r in out.values] == [0 + 1 + 2, 3 + 4 + 5]


# -- reduce and process ----------------------------------------------------------------


def _reduce_dicts(a: Event, b: Event) -> Event:
    return {"k": a["k"], "ts": max(a["ts"], b["ts"]), "v": (a["v"] or 0) + (b["v"] or 0), "id": min(a["id"], b["id"])}


@pytest.mark.parametrize("wname", list(WINDOWS))
def test_window_reduce_of_dicts_matches_the_reference(wname: str) -> None:
    assigner = WINDOWS[wname]
    got = run_window(assigner, EVENTS, lambda w: w.reduce(_reduce_dicts), chunk=17)
    ref = [{**functools.reduce(_reduce_dicts, [{f: e[f] for f in ("k", "ts", "v", "id")} for e in evs]),
            "window_start": wk[1], "window_end": wk[2]}
           for wk, evs in assign(EVENTS, assigner).items()]
    assert canon(got) == canon(ref)


@pytest.mark.parametrize("wname", ["tumbling", "sliding-gcd", "session", "count"])
def test_window_reduce_of_other_values_is_wrapped(wname: str) -> None:
    assigner = WINDOWS[wname]
    tuples = [(e["k"], e["ts"], e["v"] or 0) for e in EVENTS]
    flow = ms.Flow("r")
    src = flow.source(TestSource(tuples, chunk=5),
                      watermark=ms.WatermarkStrategy.bounded(BOUND, timestamp=lambda r: r[1]))
    out = collect(src.key_by(lambda r: r[0], name="card").window(assigner)
                  .reduce(lambda a, b: (a[0], max(a[1], b[1]), a[2] + b[2])))
    flow.run()
    ref = []
    for wk, evs in assign(EVENTS, assigner).items():
        value = (wk[0], max(e["ts"] for e in evs), sum(e["v"] or 0 for e in evs))
        ref.append({"card": wk[0], "window_start": wk[1], "window_end": wk[2], "value": value})
    assert canon(out.values) == canon(ref)


@pytest.mark.parametrize("wname", list(WINDOWS))
def test_window_process_sees_each_window_sorted_by_event_time(wname: str) -> None:
    assigner = WINDOWS[wname]

    def fn(key: Any, window: ms.Window, records: list[Event]) -> list[Event]:
        return [{"k": key, "ws": window.start, "we": window.end, "ids": [r["id"] for r in records]}]

    got = run_window(assigner, EVENTS, lambda w: w.process(fn), chunk=4)
    ref = []
    for wk, evs in assign(EVENTS, assigner).items():
        ordered = sorted(evs, key=lambda e: (e["ts"], e["_arrival"]))
        ref.append({"k": wk[0], "ws": wk[1], "we": wk[2], "ids": [e["id"] for e in ordered]})
    assert canon(got) == canon(ref)


def test_window_process_may_emit_nothing_one_dict_or_many() -> None:
    events = [{"k": "a", "ts": t, "v": t} for t in (1, 2, 11, 21, 22, 23)]

    def fn(key: Any, window: ms.Window, records: list[Event]) -> Any:
        if len(records) == 1:
            return None
        if len(records) == 2:
            return {"k": key, "n": 2}
        return ({"k": key, "v": r["v"]} for r in records)

    flow = ms.Flow("p")
    out = collect(stamped(flow, events).key_by("k").window(ms.windows.tumbling(10)).process(fn))
    flow.run()
    assert canon(out.values) == canon([{"k": "a", "n": 2}, {"k": "a", "v": 21}, {"k": "a", "v": 22},
                                       {"k": "a", "v": 23}])


def test_window_process_on_count_windows_without_event_time() -> None:
    """Regression: records without event time were sorted on ``None`` and raised TypeError."""
    flow = ms.Flow("c")
    out = collect(flow.source(TestSource([{"k": "a", "v": i} for i in range(6)])).key_by("k")
                  .window(ms.windows.count(3)).process(lambda k, w, rs: [[r["v"] for r in rs]]))
    flow.run()
    assert out.values == [[0, 1, 2], [3, 4, 5]]


# -- event time: firing, output times, lateness ---------------------------------------


def test_results_carry_the_window_end_minus_one_as_event_time() -> None:
    flow = ms.Flow("t")
    out = collect(stamped(flow, [{"k": "a", "ts": 3}, {"k": "a", "ts": 14}]).key_by("k")
                  .window(ms.windows.tumbling(10)).aggregate(n=agg.count()))
    flow.run()
    assert out.items == [({"k": "a", "window_start": 0, "window_end": 10, "n": 1}, 9),
                         ({"k": "a", "window_start": 10, "window_end": 20, "n": 1}, 19)]


def test_window_fires_exactly_when_the_watermark_reaches_end_minus_one() -> None:
    flow = ms.Flow("t")
    src = flow.source(TestSource([{"k": "a", "ts": 3}, watermark(8), watermark(9), {"k": "a", "ts": 12}]),
                      watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    out = collect(src.key_by("k").window(ms.windows.tumbling(10)).aggregate(n=agg.count()))
    job = start(flow)
    job.step(100)  # the record
    job.step(100)  # watermark 8
    assert out.values == []
    job.step(100)  # watermark 9 == end - 1
    assert out.values == [{"k": "a", "window_start": 0, "window_end": 10, "n": 1}]
    finish(job)
    assert len(out.values) == 2


def test_the_watermark_fires_windows_of_keys_that_see_no_more_events() -> None:
    events = [{"k": "quiet", "ts": 1}] + [{"k": "busy", "ts": t} for t in range(2, 40, 3)]
    flow = ms.Flow("t")
    out = collect(stamped(flow, events, chunk=1).key_by("k").window(ms.windows.tumbling(10))
                  .aggregate(n=agg.count()))
    job = start(flow)
    for _ in range(6):  # up to busy@14: watermark 13 >= 9
        job.step(1)
    assert {"k": "quiet", "window_start": 0, "window_end": 10, "n": 1} in out.values
    finish(job)


def test_end_of_input_fires_every_window() -> None:
    flow = ms.Flow("t")
    out = collect(stamped(flow, [{"k": "a", "ts": 5}], bound=10**6).key_by("k")
                  .window(ms.windows.session(10**6)).aggregate(n=agg.count()))
    flow.run()
    assert out.values == [{"k": "a", "window_start": 5, "window_end": 5 + 10**6, "n": 1}]


def _late_flow(script: list[Any], assigner: Any, lateness: int) -> tuple[ms.Flow, CollectSink, CollectSink]:
    flow = ms.Flow("late")
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    w = src.key_by("k").window(assigner, allowed_lateness=lateness).aggregate(n=agg.count(), ids=agg.top_k("id", 9))
    out = collect(w)
    late = collect(w.late())
    return flow, out, late


def e(ts: int, id: int, k: str = "a") -> Event:  # noqa: A002
    return {"k": k, "ts": ts, "id": id}


def test_late_events_within_the_allowed_lateness_refire_once_each() -> None:
    """Flink's rule: a window that has fired fires again for every record that arrives within the
    allowed lateness (wm < end - 1 + lateness); once wm >= end - 1 + lateness the record is late."""
    script = [e(1, 1), e(5, 2), watermark(9), e(7, 3), watermark(13), e(2, 4), watermark(14), e(8, 5)]
    flow, out, late = _late_flow(script, ms.windows.tumbling(10), lateness=5)
    res = flow.run()
    assert [(r["n"], r["ids"]) for r in out.values] == [(2, [2, 1]), (3, [3, 2, 1]), (4, [4, 3, 2, 1])]
    assert late.values == [e(8, 5)]
    assert late.times == [8]
    assert res.total("late") == 1
    assert res.total("refired") == 2


def test_without_lateness_an_event_at_or_behind_a_fired_window_is_late() -> None:
    script = [e(1, 1), watermark(9), e(9, 2), e(10, 3)]
    flow, out, late = _late_flow(script, ms.windows.tumbling(10), lateness=0)
    flow.run()
    assert [(r["window_start"], r["n"]) for r in out.values] == [(0, 1), (10, 1)]
    assert late.values == [e(9, 2)]


def test_a_late_record_for_a_window_that_never_fired_fires_it_once() -> None:
    script = [e(25, 1), watermark(29), e(3, 2)]
    flow, out, late = _late_flow(script, ms.windows.tumbling(10), lateness=100)
    flow.run()
    assert canon((r["window_start"], r["n"]) for r in out.values) == [(0, 1), (20, 1)]
    assert late.values == []


def test_sliding_event_late_for_some_windows_only_goes_to_the_others() -> None:
    """Flink's rule: a record goes to the late output only when every window it belongs to is late."""
    script = [e(1, 1), watermark(20), e(15, 2), e(3, 3)]
    flow, out, late = _late_flow(script, ms.windows.sliding(20, every=10), lateness=0)
    flow.run()
    assert canon((r["window_start"], r["ids"]) for r in out.values) == canon(
        [(-10, [1]), (0, [1]), (10, [2])])
    assert late.values == [e(3, 3)]


def test_sliding_late_record_refires_each_window_still_within_lateness() -> None:
    script = [e(12, 1), watermark(30), e(15, 2)]
    flow, out, late = _late_flow(script, ms.windows.sliding(20, every=10), lateness=5)
    flow.run()
    # [0, 20) ends at 19: 30 >= 19 + 5, too late to refire; [10, 30) ends at 29: 30 < 34, refires
    assert canon((r["window_start"], r["ids"]) for r in out.values) == canon(
        [(0, [1]), (10, [1]), (10, [2, 1])])
    assert late.values == []


def test_session_lateness_merges_refires_and_then_drops() -> None:
    # a session fires once the watermark has passed its end (>= end), and is kept 10 more
    script = [e(0, 1), watermark(10), e(5, 2), watermark(15), e(3, 3), watermark(25), e(4, 4)]
    flow, out, late = _late_flow(script, ms.windows.session(10), lateness=10)
    flow.run()
    assert [(r["window_start"], r["window_end"], r["ids"]) for r in out.values] == [
        (0, 10, [1]), (0, 15, [2, 1]), (0, 15, [3, 2, 1])]
    assert late.values == [e(4, 4)]


def test_sessions_exactly_one_gap_apart_are_one_session() -> None:
    """As in Flink and Kafka Streams, an event exactly ``gap`` after a session's last event joins it.

    The session fires only once the watermark has passed its end (>= end), so the touching event,
    when it is not late, always finds the session open: the result does not depend on arrival order.
    """
    for order in ([0, 15, 10], [0, 10, 15], [0, 35, 10], [35, 0, 10], [10, 0, 35]):
        flow = ms.Flow("s")
        out = collect(stamped(flow, [e(t, t) for t in order], bound=25, chunk=1).key_by("k")
                      .window(ms.windows.session(10)).aggregate(n=agg.count()))
        flow.run()
        want = [(0, 25, 3)] if 15 in order else [(0, 20, 2), (35, 45, 1)]
        assert canon((r["window_start"], r["window_end"], r["n"]) for r in out.values) == canon(want)


def test_a_session_touching_event_at_watermark_end_minus_one_still_merges() -> None:
    """The watermark at end - 1 does not fire the session [0, 10): the event at 10 is on time and joins."""
    script = [e(0, 1), watermark(9), e(10, 2), watermark(30)]
    flow, out, late = _late_flow(script, ms.windows.session(10), lateness=0)
    flow.run()
    assert [(r["window_start"], r["window_end"], r["ids"]) for r in out.values] == [(0, 20, [2, 1])]
    assert late.values == []


def test_a_session_result_is_never_late_downstream() -> None:
    """Session [100, 200) fires once the watermark reaches 200 and its result carries 199; the watermark
    stopped at 199 first. A tumbling window [100, 200) downstream must not have fired at 199 already:
    the session step's output watermark stays 1 ms behind its input's, so the result is on time there."""
    script = [{"k": "a", "ts": 100}, {"k": "b", "ts": 199}, watermark(199), {"k": "b", "ts": 300},
              watermark(1_000)]
    flow = ms.Flow("s")
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    sessions = src.key_by("k").window(ms.windows.session(100)).aggregate(n=agg.count())
    counted = sessions.key_by(lambda r: 0).window(ms.windows.tumbling(100)).aggregate(n=agg.count())
    out = collect(counted)
    late = collect(counted.late())
    flow.run()
    assert late.values == []
    assert canon((r["window_start"], r["n"]) for r in out.values) == canon([(100, 1), (200, 1), (300, 1)])


def test_late_output_is_the_records_as_they_came() -> None:
    script = [{"k": "a", "ts": 50, "x": [1]}, {"k": "b", "ts": 1, "x": {"y": 2}}]
    flow = ms.Flow("l")
    w = stamped(flow, script, chunk=1).key_by("k").window(ms.windows.tumbling(10)).aggregate(n=agg.count())
    collect(w)
    late = collect(w.late())
    flow.run()
    assert late.values[0] is script[1]


def test_windows_downstream_of_the_late_output_still_fire() -> None:
    """Regression: the late side output never got a watermark, so windows on it never fired."""
    flow = ms.Flow("l")
    script = [e(1, 1), e(50, 2), e(2, 3), e(3, 4), e(120, 5)]
    w = stamped(flow, script, chunk=1).key_by("k").window(ms.windows.tumbling(10)).aggregate(n=agg.count())
    collect(w)
    again = collect(w.late().key_by("k").window(ms.windows.tumbling(1000)).aggregate(n=agg.count()))
    flow.run()
    assert again.values == [{"k": "a", "window_start": 0, "window_end": 1000, "n": 2}]


def test_union_with_the_late_output_keeps_a_watermark() -> None:
    flow = ms.Flow("l")
    src = stamped(flow, [e(1, 1), e(50, 2), e(2, 3)], chunk=1)
    w = src.key_by("k").window(ms.windows.tumbling(10)).aggregate(n=agg.count())
    collect(w)
    both = src.union(w.late()).key_by("k").window(ms.windows.tumbling(100)).aggregate(n=agg.count())
    out = collect(both)
    flow.run()
    assert out.values == [{"k": "a", "window_start": 0, "window_end": 100, "n": 4}]


def test_results_of_one_window_step_feed_another() -> None:
    events = [{"k": "a", "ts": t, "v": 1} for t in range(0, 100, 3)]
    flow = ms.Flow("cascade")
    small = stamped(flow, events, bound=5).key_by("k").window(ms.windows.tumbling(10)).aggregate(n=agg.count())
    big = collect(small.key_by("k").window(ms.windows.tumbling(50)).aggregate(total=agg.sum("n")))
    flow.run()
    assert canon((r["window_start"], r["total"]) for r in big.values) == [(0, 17), (50, 17)]


def test_a_session_that_keeps_its_extent_fires_once() -> None:
    """Regression: a record that left its session's bounds unchanged added a second timer, and with
    allowed lateness the session fired twice."""
    flow = ms.Flow("s")
    out = collect(stamped(flow, [e(0, 1), e(0, 2)], chunk=1).key_by("k")
                  .window(ms.windows.session(1), allowed_lateness=1).aggregate(n=agg.count()))
    flow.run()
    assert out.values == [{"k": "a", "window_start": 0, "window_end": 1, "n": 2}]


def test_an_order_dependent_statistic_in_a_merging_window_fails_with_the_right_fix() -> None:
    flow = ms.Flow("z")
    w = flow.source(TestSource([{"k": 1, "v": 1.0, "ts": 0}]),
                    watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts")).key_by("k")
    with pytest.raises(ms.FlowDefinitionError) as err:
        w.window(ms.windows.sliding(10, every=5)).aggregate(z=ms.stats.zscore("v"))
    assert "depends on the order" in str(err.value) and "tumbling" in (err.value.fix or "")
