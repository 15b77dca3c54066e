"""Keyed steps: running reduce and aggregate, process functions with state, timers and TTL."""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any

import pytest

import millstream as ms
from conftest import collect, finish, stamped, start
from millstream._runtime._keyed import ProcessOperator
from millstream.testing import ManualClock, TestSource, advance_processing_time, watermark
from test_windows import AGGS, BOUND, make_events

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

Event = dict[str, Any]
EVENTS = make_events(11, n=200)


# -- running reduce and aggregate ---------------------------------------------------------


def _add(a: Event, b: Event) -> Event:
    return {"k": a["k"], "v": (a["v"] or 0) + (b["v"] or 0), "n": a.get("n", 1) + 1}


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_running_reduce_emits_the_new_value_per_record(chunk: int | None) -> None:
    flow = ms.Flow("r")
    out = collect(stamped(flow, EVENTS, bound=BOUND, chunk=chunk).key_by("k").reduce(_add))
    flow.run()
    expected = []
    acc: dict[str, Event] = {}
    for e in EVENTS:
        acc[e["k"]] = e if e["k"] not in acc else _add(acc[e["k"]], e)
        expected.append(acc[e["k"]])
    assert out.values == expected
    assert out.times == [e["ts"] for e in EVENTS]


def test_running_reduce_without_event_time_and_with_a_key_function() -> None:
    flow = ms.Flow("r")
    out = collect(flow.source(TestSource(range(10))).key_by(lambda x: x % 3).reduce(lambda a, b: a + b))
    flow.run()
    assert out.values == [0, 1, 2, 3, 5, 7, 9, 12, 15, 18]
    assert out.times == [None] * 10


@pytest.mark.parametrize("timed", [True, False])
def test_running_aggregate_matches_the_reference_on_every_prefix(timed: bool) -> None:
    names = list(AGGS)
    flow = ms.Flow("a")
    src = stamped(flow, EVENTS, bound=BOUND, chunk=9) if timed else flow.source(TestSource(EVENTS, chunk=9))
    out = collect(src.key_by("k").aggregate(**{n: AGGS[n][0] for n in names}))
    flow.run()
    seen: dict[str, list[Event]] = defaultdict(list)
    expected = []
    for i, e in enumerate(EVENTS):
        seen[e["k"]].append({**e, "_arrival": i})
        expected.append({"k": e["k"], **{n: AGGS[n][1](seen[e["k"]], timed) for n in names}})
    assert out.values == expected


def test_running_aggregate_with_composite_and_function_keys() -> None:
    rows = [{"a": i % 2, "b": i % 3, "v": i} for i in range(12)]
    flow = ms.Flow("a")
    src = flow.source(TestSource(rows))
    both = collect(src.key_by(("a", "b")).aggregate(s=ms.agg.sum("v")))
    fn = collect(src.key_by(lambda r: r["a"] + r["b"], name="ab").aggregate(n=ms.agg.count()))
    flow.run()
    assert both.values[-1] == {"a": 1, "b": 2, "s": 5 + 11}
    assert fn.values[:4] == [{"ab": 0, "n": 1}, {"ab": 2, "n": 1}, {"ab": 2, "n": 2}, {"ab": 1, "n": 1}]


# -- process functions: state ---------------------------------------------------------------


def test_value_state_per_key() -> None:
    def count(ctx: ms.Context, r: Event) -> None:
        n = ctx.state["n"].value() + 1
        ctx.state["n"].update(n)
        if n == 3:
            ctx.state["n"].clear()
        ctx.emit((ctx.key, n))

    flow = ms.Flow("v")
    out = collect(flow.source(TestSource("abaabaaa")).key_by(lambda c: c).process(
        count, state={"n": ms.state.value(default=0)}))
    flow.run()
    assert out.values == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("a", 1), ("a", 2), ("a", 3)]


def test_list_state() -> None:
    def fn(ctx: ms.Context, r: Event) -> None:
        st = ctx.state["seen"]
        if r["op"] == "add":
            st.add(r["x"])
        elif r["op"] == "set":
            st.update([r["x"], r["x"]])
        elif r["op"] == "clear":
            st.clear()
        got = st.get()
        got.append("copy")  # get() hands out a copy
        ctx.emit(st.get())

    script = [{"k": 1, "op": "add", "x": "a"}, {"k": 2, "op": "add", "x": "z"}, {"k": 1, "op": "add", "x": "b"},
              {"k": 1, "op": "set", "x": "c"}, {"k": 1, "op": "clear"}, {"k": 1, "op": "add", "x": "d"}]
    flow = ms.Flow("l")
    out = collect(flow.source(TestSource(script)).key_by("k").process(fn, state={"seen": ms.state.list()}))
    flow.run()
    assert out.values == [["a"], ["z"], ["a", "b"], ["c", "c"], [], ["d"]]


def test_map_state() -> None:
    def fn(ctx: ms.Context, r: Event) -> None:
        m = ctx.state["m"]
        if r["op"] == "put":
            m.put(r["x"], m.get(r["x"], 0) + 1)
        elif r["op"] == "remove":
            m.remove(r["x"])
        elif r["op"] == "clear":
            m.clear()
        ctx.emit((sorted(m.items()), m.contains("a"), m.get("missing", "dflt")))

    script = [{"k": 1, "op": "put", "x": "a"}, {"k": 1, "op": "put", "x": "a"}, {"k": 2, "op": "put", "x": "b"},
              {"k": 1, "op": "put", "x": "c"}, {"k": 1, "op": "remove", "x": "a"}, {"k": 1, "op": "remove", "x": "q"},
              {"k": 1, "op": "clear"}]
    flow = ms.Flow("m")
    out = collect(flow.source(TestSource(script)).key_by("k").process(fn, state={"m": ms.state.map()}))
    flow.run()
    assert out.values == [
        ([("a", 1)], True, "dflt"), ([("a", 2)], True, "dflt"), ([("b", 1)], False, "dflt"),
        ([("a", 2), ("c", 1)], True, "dflt"), ([("c", 1)], False, "dflt"), ([("c", 1)], False, "dflt"),
        ([], False, "dflt")]


def test_context_carries_key_timestamp_watermark_and_emit_time() -> None:
    seen = []

    def fn(ctx: ms.Context, r: Event) -> None:
        seen.append((ctx.key, ctx.timestamp, ctx.time_domain, ctx.watermark, ctx.timers.current_watermark()))
        ctx.emit(r["ts"])
        ctx.emit(-r["ts"], timestamp=r["ts"] + 1000)

    flow = ms.Flow("c")
    out = collect(stamped(flow, [{"a": 1, "b": "x", "ts": 5}, {"a": 1, "b": "x", "ts": 9}], chunk=1)
                  .key_by(("a", "b")).process(fn))
    flow.run()
    assert seen[0][:3] == ((1, "x"), 5, "record")
    assert seen[1][3] == seen[1][4] == 4  # bounded(0): 5 - 0 - 1
    assert out.items == [(5, 5), (-5, 1005), (9, 9), (-9, 1009)]


# -- timers -----------------------------------------------------------------------------------


def _timer_flow(script: list[Any], fn: Any, on_timer: Any, **state: Any) -> tuple[ms.Flow, Any]:
    flow = ms.Flow("timers")
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    return flow, collect(src.key_by("k").process(fn, on_timer=on_timer, state=state or None))


def test_event_time_timers_fire_when_the_watermark_reaches_them() -> None:
    def fn(ctx: ms.Context, r: Event) -> None:
        ctx.timers.register_event_time(r["ts"] + 10)
        ctx.timers.register_event_time(r["ts"] + 10)  # the same timer twice fires once

    def on_timer(ctx: ms.Context, ts: int) -> None:
        ctx.emit({"key": ctx.key, "at": ts, "domain": ctx.time_domain, "ctx_ts": ctx.timestamp,
                  "wm": ctx.watermark})

    script = [{"k": "a", "ts": 1}, {"k": "b", "ts": 3}, watermark(10), watermark(11), watermark(12), watermark(13)]
    flow, out = _timer_flow(script, fn, on_timer)
    job = start(flow)
    job.step(10)  # both records
    job.step(10)  # watermark 10: not yet
    assert out.values == []
    job.step(10)  # watermark 11 reaches a's timer
    assert out.values == [{"key": "a", "at": 11, "domain": "event", "ctx_ts": 11, "wm": 11}]
    assert out.times == [11]
    job.step(10)
    assert len(out.values) == 1
    job.step(10)  # 13 reaches b's
    assert out.values[1]["key"] == "b"
    finish(job)
    assert len(out.values) == 2


def test_timers_left_at_the_end_of_input_fire() -> None:
    def fn(ctx: ms.Context, r: Event) -> None:
        ctx.timers.register_event_time(10**12)

    flow, out = _timer_flow([{"k": "a", "ts": 1}], fn, lambda ctx, ts: ctx.emit(ts))
    flow.run()
    assert out.values == [10**12]


def test_deleted_timers_do_not_fire_and_can_be_set_again() -> None:
    def fn(ctx: ms.Context, r: Event) -> None:
        if r["op"] == "set":
            ctx.timers.register_event_time(r["at"])
        elif r["op"] == "delete":
            ctx.timers.delete_event_time(r["at"])

    script = [{"k": "a", "ts": 1, "op": "set", "at": 50}, {"k": "a", "ts": 2, "op": "set", "at": 60},
              {"k": "b", "ts": 2, "op": "set", "at": 50}, {"k": "a", "ts": 3, "op": "delete", "at": 50},
              {"k": "a", "ts": 4, "op": "delete", "at": 60}, {"k": "a", "ts": 5, "op": "set", "at": 60}]
    flow, out = _timer_flow(script, fn, lambda ctx, ts: ctx.emit((ctx.key, ts)))
    flow.run()
    assert out.values == [("b", 50), ("a", 60)]


def test_a_timer_may_set_the_next_one_and_read_state() -> None:
    def fn(ctx: ms.Context, r: Event) -> None:
        ctx.state["n"].update(ctx.state["n"].value() + 1)
        ctx.timers.register_event_time(100)

    def on_timer(ctx: ms.Context, ts: int) -> None:
        ctx.emit((ctx.key, ts, ctx.state["n"].value()))
        if ts < 300:
            ctx.timers.register_event_time(ts + 100)

    flow, out = _timer_flow([{"k": "a", "ts": 1}, {"k": "a", "ts": 2}, {"k": "b", "ts": 3}], fn, on_timer,
                            n=ms.state.value(default=0))
    flow.run()
    assert out.values == [("a", 100, 2), ("b", 100, 1), ("a", 200, 2), ("b", 200, 1), ("a", 300, 2), ("b", 300, 1)]


def test_processing_time_timers_follow_the_manual_clock() -> None:
    def fn(ctx: ms.Context, r: Event) -> None:
        ctx.timers.register_processing_time(ctx.timers.current_processing_time() + 100)

    def on_timer(ctx: ms.Context, ts: int) -> None:
        ctx.emit((ctx.key, ts, ctx.time_domain, ctx.timers.current_processing_time()))

    script = [{"k": "a"}, advance_processing_time(60), {"k": "b"}, advance_processing_time(39),
              advance_processing_time(1), advance_processing_time(60)]
    flow = ms.Flow("proc")
    out = collect(flow.source(TestSource(script)).key_by("k").process(fn, on_timer=on_timer))
    clock = ManualClock(1_000)
    job = start(flow, clock)

    def step() -> None:
        job.step(10)
        job.fire_processing_time(clock.now_ms())

    step()  # a at 1000 -> timer 1100
    step()  # clock 1060
    step()  # b at 1060 -> timer 1160
    step()  # clock 1099
    assert out.values == []
    step()  # clock 1100
    assert out.values == [("a", 1100, "processing", 1100)]
    step()  # clock 1160
    assert out.values[1] == ("b", 1160, "processing", 1160)
    finish(job)


def test_scripted_processing_time_is_exact_in_a_run() -> None:
    """Regression: idle waits between scripted markers moved the manual clock by a few ms each."""
    seen = []

    def fn(ctx: ms.Context, r: Event) -> None:
        seen.append(ctx.timers.current_processing_time())

    script = [{"k": "a"}, watermark(1), watermark(2), advance_processing_time(10), {"k": "a"},
              advance_processing_time(5), advance_processing_time(5), {"k": "a"}]
    flow = ms.Flow("clock")
    collect(flow.source(TestSource(script)).key_by("k").process(fn))
    flow.run(clock=ManualClock(0))
    assert seen == [0, 10, 20]


def test_untimed_records_after_a_timer_have_no_timestamp() -> None:
    seen = []

    def fn(ctx: ms.Context, r: Event) -> None:
        seen.append(ctx.timestamp)
        ctx.timers.register_processing_time(5)

    flow = ms.Flow("untimed")
    collect(flow.source(TestSource([{"k": 1}, advance_processing_time(10), {"k": 1}])).key_by("k")
            .process(fn, on_timer=lambda ctx, ts: None))
    flow.run(clock=ManualClock(0))
    assert seen == [None, None]


# -- TTL -------------------------------------------------------------------------------------------


def _ttl_fn(ctx: ms.Context, r: Event) -> None:
    st = ctx.state["v"]
    if "write" in r:
        st.update(r["write"])
    else:
        ctx.emit((r.get("ts"), st.value()))


def test_event_time_ttl_hides_entries_from_events_at_t_plus_ttl() -> None:
    script = [{"k": "a", "ts": 10, "write": "x"}, {"k": "a", "ts": 14}, {"k": "a", "ts": 15}, {"k": "a", "ts": 12},
              {"k": "b", "ts": 12}]
    flow = ms.Flow("ttl")
    out = collect(stamped(flow, script, bound=100).key_by("k").process(
        _ttl_fn, state={"v": ms.state.value(default="-", ttl=5)}))
    flow.run()
    # an out-of-order event still sees what was written before its own time + ttl
    assert out.values == [(14, "x"), (15, "-"), (12, "x"), (12, "-")]


def test_event_time_ttl_removes_entries_once_the_watermark_passes() -> None:
    script = [{"k": "a", "ts": 10, "write": "x"}, {"k": "b", "ts": 11, "write": "y"}, watermark(14), watermark(15)]
    flow = ms.Flow("ttl")
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    collect(src.key_by("k").process(_ttl_fn, state={"v": ms.state.value(ttl=5)}))
    job = start(flow)
    op = next(o for o in job.ops if isinstance(o, ProcessOperator))
    job.step(10)
    job.step(10)  # watermark 14
    assert set(op.stores["v"]) == {"a", "b"}
    job.step(10)  # watermark 15 = 10 + 5
    assert set(op.stores["v"]) == {"b"}
    finish(job)
    assert op.stores["v"] == {}


def test_rewriting_an_entry_extends_its_ttl() -> None:
    script = [{"k": "a", "ts": 10, "write": "x"}, {"k": "a", "ts": 13, "write": "y"}, watermark(16),
              {"k": "a", "ts": 17}]
    flow = ms.Flow("ttl")
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    out = collect(src.key_by("k").process(_ttl_fn, state={"v": ms.state.value(ttl=5)}))
    flow.run()
    assert out.values == [(17, "y")]


def test_list_and_map_state_with_event_time_ttl() -> None:
    def fn(ctx: ms.Context, r: Event) -> None:
        if r.get("write"):
            ctx.state["l"].add(r["ts"])
            ctx.state["m"].put(r["ts"], 1)
        ctx.emit((ctx.state["l"].get(), ctx.state["m"].items()))

    script = [{"k": "a", "ts": 10, "write": True}, {"k": "a", "ts": 12, "write": True}, {"k": "a", "ts": 16},
              {"k": "a", "ts": 17}]
    flow = ms.Flow("ttl")
    out = collect(stamped(flow, script, bound=100).key_by("k").process(
        fn, state={"l": ms.state.list(ttl=5), "m": ms.state.map(ttl=5)}))
    flow.run()
    # the whole entry (list or map) of a key carries the time of its last write
    assert out.values == [([10], [(10, 1)]), ([10, 12], [(10, 1), (12, 1)]), ([10, 12], [(10, 1), (12, 1)]),
                          ([], [])]


def test_processing_time_ttl_follows_the_manual_clock() -> None:
    script = [{"k": "a", "write": "x"}, advance_processing_time(99), {"k": "a"}, advance_processing_time(1),
              {"k": "a"}]
    flow = ms.Flow("ttl")
    out = collect(flow.source(TestSource(script)).key_by("k").process(
        _ttl_fn, state={"v": ms.state.value(default="-", ttl=100, ttl_time="processing")}))
    flow.run(clock=ManualClock(0))
    assert out.values == [(None, "x"), (None, "-")]


def test_processing_time_ttl_cleans_up_without_reads() -> None:
    script = [{"k": "a", "write": "x"}, {"k": "b", "write": "y"}, advance_processing_time(100)]
    flow = ms.Flow("ttl")
    collect(flow.source(TestSource(script)).key_by("k").process(
        _ttl_fn, state={"v": ms.state.value(ttl=100, ttl_time="processing")}))
    job = start(flow, ManualClock(0))
    op = next(o for o in job.ops if isinstance(o, ProcessOperator))
    job.step(10)
    assert set(op.stores["v"]) == {"a", "b"}
    job.step(10)
    job.fire_processing_time(100)
    assert op.stores["v"] == {}
    finish(job)


def test_event_time_ttl_inside_a_processing_time_timer_uses_the_watermark() -> None:
    """Regression: a processing-time timer's time was taken as event time for event-time TTL."""
    def fn(ctx: ms.Context, r: Event) -> None:
        ctx.state["v"].update("x")
        ctx.timers.register_processing_time(10_000)

    def on_timer(ctx: ms.Context, ts: int) -> None:
        ctx.emit(ctx.state["v"].value())

    script = [{"k": "a", "ts": 10}, advance_processing_time(10_000)]
    flow = ms.Flow("ttl")
    out = collect(stamped(flow, script).key_by("k").process(
        fn, on_timer=on_timer, state={"v": ms.state.value(default="-", ttl=100)}))
    flow.run(clock=ManualClock(0))
    assert out.values == ["x"]


def test_reduce_is_a_fold() -> None:
    flow = ms.Flow("r")
    out = collect(flow.source(TestSource(list(range(1, 8)))).key_by(lambda x: x % 2).reduce(max))
    flow.run()
    assert out.values == [functools.reduce(max, [x for x in range(1, i + 1) if x % 2 == i % 2]) for i in range(1, 8)]
