"""Snapshot and restore of every stateful operator.

Each case runs part of the input as a native job, takes ``job.snapshot()``, sends it through
pickle, restores it into a fresh job of a freshly built flow, runs that to the end, and
requires the output of the two halves to equal an uninterrupted run's, record for record.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import pytest

import millstream as ms
from conftest import finish, start
from millstream import agg
from millstream.testing import CollectSink, ManualClock, TestSource, advance_processing_time
from test_windows import make_events

Event = dict[str, Any]
Build = Callable[[ms.Flow], list[ms.Stream]]

# bound 30 in the data, 10 in the watermark: some records are late, some within the lateness
EVENTS = make_events(3, n=120, bound=30)
CHUNK = 7


def source(flow: ms.Flow, events: list[Any] = EVENTS, name: str = "src") -> ms.Stream:
    return flow.source(TestSource(events, chunk=CHUNK, name=name),
                       watermark=ms.WatermarkStrategy.bounded(10, timestamp="ts"))


def _window(assigner: Any, lateness: int = 0) -> Build:
    def build(flow: ms.Flow) -> list[ms.Stream]:
        w = source(flow).key_by("k").window(assigner, allowed_lateness=lateness).aggregate(
            n=agg.count(), s=agg.sum("v"), first=agg.first("id"), last=agg.last("id"), top=agg.top_k("v", 2),
            freq=agg.most_frequent("v", 1), d=agg.count_distinct("v"), m=agg.mean("v"))
        return [w, w.late()]
    return build


def _window_reduce(flow: ms.Flow) -> list[ms.Stream]:
    return [source(flow).key_by("k").window(ms.windows.sliding(40, every=20), allowed_lateness=15)
            .reduce(lambda a, b: {"k": a["k"], "v": (a["v"] or 0) + (b["v"] or 0)})]


def _window_process(flow: ms.Flow) -> list[ms.Stream]:
    return [source(flow).key_by("k").window(ms.windows.session(15), allowed_lateness=10)
            .process(lambda k, w, rs: [(k, w.start, w.end, [r["id"] for r in rs])])]


def _count_window(flow: ms.Flow) -> list[ms.Stream]:
    return [source(flow).key_by("k").window(ms.windows.count(4, every=3)).aggregate(ids=agg.top_k("id", 4))]


def _whole_stream_window(flow: ms.Flow) -> list[ms.Stream]:
    return [source(flow).window(ms.windows.tumbling(25), allowed_lateness=10).aggregate(n=agg.count())]


def _running(flow: ms.Flow) -> list[ms.Stream]:
    keyed = source(flow).key_by("k")
    return [keyed.aggregate(n=agg.count(), first=agg.first("id"), last=agg.last("id"), top=agg.top_k("id", 3)),
            keyed.reduce(lambda a, b: {"k": a["k"], "ids": (a["ids"] if "ids" in a else [a["id"]]) + [b["id"]]})]


def _process(flow: ms.Flow) -> list[ms.Stream]:
    def fn(ctx: ms.Context, r: Event) -> None:
        st = ctx.state
        st["n"].update(st["n"].value() + 1)
        st["ids"].add(r["id"])
        st["vals"].put(r["v"], st["vals"].get(r["v"], 0) + 1)
        st["recent"].update(r["id"])
        if st["n"].value() % 3 == 0:
            ctx.timers.register_event_time(r["ts"] + 25)
        ctx.emit(("rec", ctx.key, r["id"], st["recent"].value()))

    def on_timer(ctx: ms.Context, ts: int) -> None:
        st = ctx.state
        ctx.emit(("timer", ctx.key, ts, st["n"].value(), st["ids"].get(), sorted(st["vals"].items(), key=repr),
                  st["recent"].value()))
        st["ids"].clear()

    state = {"n": ms.state.value(default=0), "ids": ms.state.list(), "vals": ms.state.map(),
             "recent": ms.state.value(default=None, ttl=20)}
    return [source(flow).key_by("k").process(fn, on_timer=on_timer, state=state)]


def _union_window(flow: ms.Flow) -> list[ms.Stream]:
    a = source(flow, EVENTS[::2], name="a")
    b = source(flow, EVENTS[1::2], name="b")
    return [a.union(b).key_by("k").window(ms.windows.tumbling(30), allowed_lateness=5).aggregate(n=agg.count())]


def _cascade(flow: ms.Flow) -> list[ms.Stream]:
    w = source(flow).key_by("k").window(ms.windows.tumbling(20), allowed_lateness=10).aggregate(n=agg.count())
    again = w.late().key_by("k").window(ms.windows.tumbling(1000), allowed_lateness=1000).aggregate(n=agg.count())
    return [w.key_by("k").window(ms.windows.tumbling(100)).aggregate(total=agg.sum("n")), again]


CASES: dict[str, Build] = {
    "tumbling": _window(ms.windows.tumbling(20, offset=5), lateness=15),
    "sliding": _window(ms.windows.sliding(40, every=10), lateness=15),
    "session": _window(ms.windows.session(12), lateness=20),
    "session-no-lateness": _window(ms.windows.session(12)),
    "window-reduce": _window_reduce,
    "window-process": _window_process,
    "count-window": _count_window,
    "whole-stream-window": _whole_stream_window,
    "running-aggregate-and-reduce": _running,
    "process-state-timers-ttl": _process,
    "union-window": _union_window,
    "cascade": _cascade,
}


def _flow(build: Build) -> tuple[ms.Flow, list[CollectSink]]:
    flow = ms.Flow("snap")
    streams = build(flow)
    sinks = [CollectSink(f"out{i}") for i in range(len(streams))]
    for stream, sink in zip(streams, sinks):
        stream.sink(sink)
    return flow, sinks


def _run(build: Build, cut: int | None) -> list[list[Any]]:
    """Outputs per sink: in one go (cut None), or stopped after ``cut`` steps, snapshotted and resumed."""
    flow, sinks = _flow(build)
    job = start(flow)
    if cut is None:
        finish(job)
        return [s.values for s in sinks]
    for _ in range(cut):
        job.step(CHUNK)
    blob = pickle.dumps(job.snapshot())
    job.close()
    resumed, sinks2 = _flow(build)
    job2 = start(resumed)
    job2.restore(pickle.loads(blob))
    finish(job2)
    return [a.values + b.values for a, b in zip(sinks, sinks2)]


def run_on_a_manual_clock(build: Callable[[ms.Flow, CollectSink], None], steps: int,
                          cut: int | None = None) -> list[Any]:
    """The output of the flow ``build`` makes, driven ``steps`` steps of 10 records with its processing-time
    timers fired at a manual clock after each step; with ``cut``, snapshotted after ``cut`` steps and
    restored into a new job (its clock where the first one's stopped) that runs the ``steps``."""

    def drive(job: Any, clock: ManualClock, steps: int) -> None:
        for _ in range(steps):
            job.step(10)
            job.fire_processing_time(clock.now_ms())

    first, clock = CollectSink(), ManualClock(0)
    build(flow := ms.Flow("p"), first)
    job = start(flow, clock)
    if cut is None:
        drive(job, clock, steps)
        job.close()
        return first.values
    drive(job, clock, cut)
    blob = pickle.dumps(job.snapshot())
    second, clock2 = CollectSink(), ManualClock(clock.now_ms())
    build(flow := ms.Flow("p"), second)
    job = start(flow, clock2)
    job.restore(pickle.loads(blob))
    drive(job, clock2, steps)
    return first.values + second.values


@pytest.mark.parametrize("case", list(CASES))
def test_snapshot_restore_gives_the_uninterrupted_output(case: str) -> None:
    build = CASES[case]
    whole = _run(build, None)
    assert any(whole), "the case produces output"
    steps = len(EVENTS) // CHUNK + 3
    for cut in range(steps):
        assert _run(build, cut) == whole, f"cut after {cut} steps"


def test_processing_time_timers_and_ttl_survive_a_restore() -> None:
    def fn(ctx: ms.Context, r: Event) -> None:
        ctx.state["v"].update(r["x"])
        ctx.timers.register_processing_time(ctx.timers.current_processing_time() + 50)

    def on_timer(ctx: ms.Context, ts: int) -> None:
        ctx.emit((ctx.key, ts, ctx.state["v"].value()))

    script = [{"k": "a", "x": 1}, advance_processing_time(30), {"k": "b", "x": 2}, advance_processing_time(30),
              {"k": "a", "x": 3}, advance_processing_time(15), advance_processing_time(40)]

    def build(flow: ms.Flow, sink: CollectSink) -> None:
        flow.source(TestSource(script)).key_by("k").process(
            fn, on_timer=on_timer, state={"v": ms.state.value(default="-", ttl=100, ttl_time="processing")}).sink(sink)

    whole = run_on_a_manual_clock(build, 10)
    assert whole == [("a", 50, 1), ("b", 80, 2), ("a", 110, 3)]
    for cut in range(8):
        assert run_on_a_manual_clock(build, 10, cut) == whole, cut


def test_state_cleanup_scheduled_after_a_restore_does_not_collide_with_restored_entries() -> None:
    """Regression: restored cleanup entries kept their sequence numbers while new ones started from 0
    again, so equal (time, seq) pairs made the heap compare keys of different types."""
    def fn(ctx: ms.Context, r: Event) -> None:
        ctx.state["v"].update(r["ts"])
        ctx.emit((ctx.key, ctx.state["v"].value()))

    def build(flow: ms.Flow, sink: CollectSink) -> None:
        script = [{"k": "a", "ts": 5}, {"k": 1, "ts": 5}]
        src = flow.source(TestSource(script, chunk=1), watermark=ms.WatermarkStrategy.bounded(100, timestamp="ts"))
        src.key_by(lambda r: r["k"]).process(fn, state={"v": ms.state.value(ttl=10)}).sink(sink)

    first, second = CollectSink(), CollectSink()
    build(flow := ms.Flow("p"), first)
    job = start(flow)
    job.step(1)
    blob = pickle.dumps(job.snapshot())
    build(flow := ms.Flow("p"), second)
    job = start(flow)
    job.restore(pickle.loads(blob))
    finish(job)
    assert first.values + second.values == [("a", 5), (1, 5)]
