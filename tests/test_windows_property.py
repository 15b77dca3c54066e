"""Property tests of event-time windows: arrival order within the bound does not matter, and
with any disorder every event is either in a window result or in the late output, exactly as
the definitions say.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millstream as ms
from conftest import canon, collect, stamped
from millstream import agg
from test_windows import assign, time_windows

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

Event = dict[str, Any]


@st.composite
def time_assigners(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["tumbling", "sliding", "session"]))
    if kind == "tumbling":
        size = draw(st.integers(1, 60))
        return ms.windows.tumbling(size, offset=draw(st.integers(0, size - 1)))
    if kind == "sliding":
        every = draw(st.integers(1, 30))
        size = every * draw(st.integers(1, 4)) + draw(st.integers(0, every - 1))
        size = max(size, every)
        return ms.windows.sliding(size, every=every, offset=draw(st.integers(0, every - 1)))
    return ms.windows.session(draw(st.integers(1, 40)))


def _events(times: list[int], keys: list[str]) -> list[Event]:
    return [{"k": k, "ts": t, "id": i} for i, (t, k) in enumerate(zip(times, keys))]


@st.composite
def within_bound(draw: st.DrawFn) -> tuple[list[Event], list[Event], int]:
    """(events in time order, the same events in an arrival order within ``bound``, bound)."""
    bound = draw(st.integers(0, 30))
    times = draw(st.lists(st.integers(-50, 300), min_size=1, max_size=60, unique=True))
    keys = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=len(times), max_size=len(times)))
    jitter = draw(st.lists(st.integers(0, bound), min_size=len(times), max_size=len(times)))
    events = _events(times, keys)
    arrival = [events[i] for i in sorted(range(len(events)), key=lambda i: (times[i] + jitter[i], i))]
    return sorted(events, key=lambda e: e["ts"]), arrival, bound


def _ids(key: Any, window: ms.Window, records: list[Event]) -> list[Event]:
    return [{"k": key, "ws": window.start, "we": window.end, "ids": [r["id"] for r in records]}]


def _run(events: list[Event], assigner: Any, bound: int, chunk: int) -> tuple[list[Any], list[Any]]:
    flow = ms.Flow("p")
    keyed = stamped(flow, events, bound=bound, chunk=chunk).key_by("k")
    aggs = collect(keyed.window(assigner).aggregate(n=agg.count(), first=agg.first("id"), last=agg.last("id"),
                                                    top=agg.top_k("ts", 2)))
    procs = collect(keyed.window(assigner).process(_ids))
    res = flow.run()
    assert res.total("late") == 0
    return aggs.values, procs.values


@SETTINGS
@given(data=within_bound(), assigner=time_assigners(), chunk=st.sampled_from([1, 2, 3, 7, 64]))
def test_any_arrival_order_within_the_bound_gives_the_same_windows(
        data: tuple[list[Event], list[Event], int], assigner: Any, chunk: int) -> None:
    in_order, arrival, bound = data
    top = None
    for e in arrival:  # the generated order keeps its promise
        assert top is None or e["ts"] >= top - bound
        top = e["ts"] if top is None else max(top, e["ts"])
    aggs, procs = _run(arrival, assigner, bound, chunk)
    aggs0, procs0 = _run(in_order, assigner, bound, 64)
    assert canon(aggs) == canon(aggs0)
    assert canon(procs) == canon(procs0)
    # and both are the definition's answer
    expected = []
    for (k, ws, we), evs in assign(in_order, assigner).items():
        expected.append({"k": k, "ws": ws, "we": we, "ids": [e["id"] for e in sorted(evs, key=lambda e: e["ts"])]})
    assert canon(procs) == canon(expected)


# -- arbitrary disorder with allowed lateness ------------------------------------------------


def _reference_sliced(arrival: list[Event], assigner: Any, bound: int, lateness: int
                      ) -> tuple[dict[Any, list[list[int]]], list[int]]:
    """Every firing of every window (its sorted ids) and the late ids, with the watermark of
    ``max event time so far - bound - 1`` taken after each record."""
    size, every, offset = assigner.size_ms, assigner.slide_ms, assigner.offset_ms
    wm: int | None = None
    contents: dict[Any, list[int]] = defaultdict(list)
    fired: set[Any] = set()
    firings: dict[Any, list[list[int]]] = defaultdict(list)
    late: list[int] = []
    top: int | None = None

    def fire_due() -> None:
        for w, ids in contents.items():
            if w not in fired and (wm is None or wm >= w[2] - 1):
                fired.add(w)
                firings[w].append(sorted(ids))

    for e in arrival:
        wins = [(e["k"], ws, we) for ws, we in time_windows(e["ts"], size, every, offset)]
        open_ = [w for w in wins if wm is None or wm < w[2] - 1 + lateness]
        if not open_:
            late.append(e["id"])
        for w in open_:
            contents[w].append(e["id"])
            if wm is not None and wm >= w[2] - 1:  # already fired (or due): fire again with this record
                fired.add(w)
                firings[w].append(sorted(contents[w]))
        top = e["ts"] if top is None else max(top, e["ts"])
        wm = top - bound - 1 if wm is None else max(wm, top - bound - 1)
        fire_due()
    wm = None  # end of input: +inf
    fire_due()
    return firings, late


def _reference_sessions(arrival: list[Event], gap: int, bound: int, lateness: int
                        ) -> tuple[dict[Any, list[list[int]]], list[int]]:
    """Sessions per key: a record joins (and merges) the live sessions its [t, t + gap) overlaps or
    touches (events at most gap apart share a session, as in Flink); a session fires once the
    watermark reaches its end; a record is late when the merged session's end + lateness is at or
    behind the watermark; sessions are dropped once the watermark reaches end + lateness."""
    wm: int | None = None
    live: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    firings: dict[Any, list[list[int]]] = defaultdict(list)
    late: list[int] = []
    top: int | None = None

    def fire_due() -> None:
        for k, sessions in live.items():
            for s in sessions:
                if not s["fired"] and (wm is None or wm >= s["end"]):
                    s["fired"] = True
                    firings[(k, s["start"], s["end"])].append(sorted(s["ids"]))
            if wm is not None:
                live[k] = [s for s in sessions if wm < s["end"] + lateness]

    for e in arrival:
        k, t = e["k"], e["ts"]
        start, end = t, t + gap
        touching = [s for s in live[k] if s["start"] <= end and start <= s["end"]]
        start = min([start] + [s["start"] for s in touching])
        end = max([end] + [s["end"] for s in touching])
        if wm is not None and wm >= end + lateness:
            late.append(e["id"])
        else:
            ids = [e["id"]] + [i for s in touching for i in s["ids"]]
            merged = {"start": start, "end": end, "ids": ids, "fired": False}
            live[k] = [s for s in live[k] if s not in touching] + [merged]
            if wm is not None and wm >= end:
                merged["fired"] = True
                firings[(k, start, end)].append(sorted(ids))
        top = t if top is None else max(top, t)
        wm = top - bound - 1 if wm is None else max(wm, top - bound - 1)
        fire_due()
    wm = None
    fire_due()
    return firings, late


@st.composite
def disorder(draw: st.DrawFn) -> list[Event]:
    times = draw(st.lists(st.integers(0, 200), min_size=1, max_size=50))
    keys = draw(st.lists(st.sampled_from(["a", "b"]), min_size=len(times), max_size=len(times)))
    return draw(st.permutations(_events(times, keys)))


@SETTINGS
@given(arrival=disorder(), assigner=time_assigners(), bound=st.integers(0, 20), lateness=st.integers(0, 40))
def test_every_event_is_in_a_window_or_late_exactly_as_defined(
        arrival: list[Event], assigner: Any, bound: int, lateness: int) -> None:
    flow = ms.Flow("late")
    w = (stamped(flow, arrival, bound=bound, chunk=1).key_by("k")
         .window(assigner, allowed_lateness=lateness).process(_ids))
    out = collect(w)
    late_out = collect(w.late())
    res = flow.run()

    got: dict[Any, list[list[int]]] = defaultdict(list)
    for row in out.values:
        got[(row["k"], row["ws"], row["we"])].append(sorted(row["ids"]))
    late = [r["id"] for r in late_out.values]

    # never lost, never both
    in_windows = {i for firings in got.values() for ids in firings for i in ids}
    assert in_windows | set(late) == {e["id"] for e in arrival}
    assert not in_windows & set(late)
    assert res.total("late") == len(late)

    if isinstance(assigner, ms.windows.SessionWindow):
        firings, expected_late = _reference_sessions(arrival, assigner.gap_ms, bound, lateness)
    else:
        firings, expected_late = _reference_sliced(arrival, assigner, bound, lateness)
    assert late == expected_late
    assert dict(got) == dict(firings)


@SETTINGS
@given(arrival=disorder(), size=st.integers(1, 50), bound=st.integers(0, 20), chunk=st.sampled_from([2, 5, 50]))
def test_nothing_is_lost_with_any_chunking(arrival: list[Event], size: int, bound: int, chunk: int) -> None:
    """With bigger chunks the watermark moves less often, so fewer records are late; none is lost."""
    flow = ms.Flow("chunks")
    w = stamped(flow, arrival, bound=bound, chunk=chunk).key_by("k").window(ms.windows.tumbling(size)).process(_ids)
    out = collect(w)
    late = collect(w.late())
    flow.run()
    ids = [i for row in out.values for i in row["ids"]] + [r["id"] for r in late.values]
    assert sorted(ids) == sorted(e["id"] for e in arrival)
