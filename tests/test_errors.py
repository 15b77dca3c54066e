"""Errors: built flows fail early naming the step, the user's file:line and the fix; running
flows fail naming the step, the key, the event time and where the record came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import millstream as ms
from conftest import collect, stamped
from millstream import agg
from millstream.testing import CollectSink, TestSource, watermark

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

_SOURCE = Path(__file__).read_text().splitlines()


def line_of(tag: str) -> str:
    """``test_errors.py:N`` of the one line carrying the comment ``# <tag>``."""
    hits = [i + 1 for i, text in enumerate(_SOURCE) if text.rstrip().endswith(f"# <{tag}>")]
    assert len(hits) == 1, tag
    return f"test_errors.py:{hits[0]}"


def check(err: pytest.ExceptionInfo[ms.FlowDefinitionError], tag: str, step: str, *words: str) -> None:
    e = err.value
    assert isinstance(e, ValueError)
    assert e.step == step
    assert e.location is not None and e.location.endswith(line_of(tag))
    assert e.fix
    text = str(e)
    assert line_of(tag) in text and repr(step) in text and "fix:" in text
    for w in words:
        assert w in text, (w, text)


def timed(flow: ms.Flow) -> ms.Stream:
    return stamped(flow, [{"k": "a", "ts": 1, "v": 1}])


def plain(flow: ms.Flow) -> ms.Stream:
    return flow.source(TestSource([{"k": "a", "v": 1}]))


# -- build time -------------------------------------------------------------------------------


def test_event_time_window_on_a_stream_without_event_time() -> None:
    flow = ms.Flow("e")
    with pytest.raises(ms.FlowDefinitionError) as err:
        plain(flow).key_by("k").window(ms.windows.tumbling(10), name="per-10")  # <no-wm>
    check(err, "no-wm", "per-10", "tumbling 10ms", "without event time", "watermark=")


def test_non_callable_to_map() -> None:
    flow = ms.Flow("e")
    with pytest.raises(ms.FlowDefinitionError) as err:
        plain(flow).map(3)  # type: ignore[arg-type]  # <map-3>
    check(err, "map-3", "map", "needs a function", "int 3")


@pytest.mark.parametrize("what", ["map", "filter", "flat_map", "inspect"])
def test_stateless_function_with_the_wrong_arity(what: str) -> None:
    def two(a: Any, b: Any) -> Any:
        return a

    flow = ms.Flow("e")
    with pytest.raises(ms.FlowDefinitionError) as err:
        getattr(plain(flow), what)(two)  # <arity>
    check(err, "arity", f"{what}:test_stateless_function_with_the_wrong_arity.two", "1 argument",
          "two(a: 'Any', b: 'Any')", "exactly 1 positional parameter")


def test_reduce_needs_two_parameters() -> None:
    flow = ms.Flow("e")
    with pytest.raises(ms.FlowDefinitionError) as err:
        plain(flow).key_by("k").reduce(lambda a: a)  # type: ignore[arg-type,misc]  # <reduce-1>
    check(err, "reduce-1", "reduce:test_reduce_needs_two_parameters.<lambda>", "2 arguments", "(a) cannot")


def test_window_process_needs_three_parameters() -> None:
    flow = ms.Flow("e")
    with pytest.raises(ms.FlowDefinitionError) as err:
        timed(flow).key_by("k").window(ms.windows.tumbling(5)).process(lambda k, rs: rs)  # type: ignore[arg-type,misc]  # <wp-2>
    check(err, "wp-2", "window:test_window_process_needs_three_parameters.<lambda>", "3 arguments")


def test_on_timer_needs_two_parameters() -> None:
    flow = ms.Flow("e")
    with pytest.raises(ms.FlowDefinitionError) as err:
        timed(flow).key_by("k").process(lambda ctx, r: None, on_timer=lambda ctx: None, name="p")  # <timer-1>
    check(err, "timer-1", "p", "2 arguments")


def test_functions_with_defaults_or_varargs_are_accepted() -> None:
    flow = ms.Flow("ok")
    s = plain(flow).map(lambda r, extra=1: r).map(lambda *args: args[0]).filter(print)
    s.key_by("k").reduce(lambda *ab: ab[0])


def test_aggregate_needs_aggregations() -> None:
    flow = ms.Flow("e")
    keyed = timed(flow).key_by("k")
    with pytest.raises(ms.FlowDefinitionError) as err:
        keyed.aggregate()  # <no-aggs>
    check(err, "no-aggs", "aggregate", "at least one")
    with pytest.raises(ms.FlowDefinitionError) as err:
        keyed.window(ms.windows.tumbling(10)).aggregate(total=agg.sum)  # type: ignore[arg-type]  # <uncalled>
    check(err, "uncalled", "window", "'total'", "not an aggregation", "total=ms.agg.sum('amount')")
    with pytest.raises(ms.FlowDefinitionError) as err:
        keyed.aggregate(n=3, name="running")  # type: ignore[arg-type]  # <agg-3>
    check(err, "agg-3", "running", "'n' is 3")


@pytest.mark.parametrize("assigner", [ms.windows.sliding(20, every=10), ms.windows.session(5)])
def test_a_custom_aggregation_without_merge_in_windows_that_merge(assigner: Any) -> None:
    flow = ms.Flow("e")
    total = agg.custom(lambda: 0, lambda a, v: a + v, field="v", name="total")
    w = timed(flow).key_by("k").window(assigner)
    with pytest.raises(ms.FlowDefinitionError) as err:
        w.aggregate(t=total)  # <no-merge>
    check(err, "no-merge", "window", "t=total(v) has no merge function", "merge=")


def test_a_custom_aggregation_without_merge_is_fine_where_nothing_merges() -> None:
    flow = ms.Flow("ok")
    total = agg.custom(lambda: 0, lambda a, v: a + v, field="v")
    keyed = timed(flow).key_by("k")
    out = collect(keyed.window(ms.windows.tumbling(10), allowed_lateness=5).aggregate(t=total))
    collect(keyed.window(ms.windows.sliding(10, every=10)).aggregate(t=total))
    collect(keyed.window(ms.windows.count(2)).aggregate(t=total))
    collect(keyed.aggregate(t=total))
    flow.run()
    assert out.values == [{"k": "a", "window_start": 0, "window_end": 10, "t": 1}]


def test_bad_aggregation_arguments() -> None:
    with pytest.raises(ms.ConfigError, match="positive int"):
        agg.top_k("v", 0)
    with pytest.raises(ms.ConfigError, match="field name"):
        agg.sum(3)  # type: ignore[arg-type]
    with pytest.raises(ms.ConfigError, match="callable"):
        agg.custom(0, lambda a, v: a)  # type: ignore[arg-type]


def test_union_of_streams_with_and_without_event_time() -> None:
    flow = ms.Flow("e")
    a = timed(flow)
    b = flow.source(TestSource([1], name="untimed"))
    with pytest.raises(ms.FlowDefinitionError) as err:
        a.union(b)  # <union>
    check(err, "union", "union", "no event time: untimed", "watermark=")


def test_union_with_a_stream_of_another_flow_or_nothing() -> None:
    flow, other = ms.Flow("a"), ms.Flow("b")
    with pytest.raises(ms.FlowDefinitionError) as err:
        plain(flow).union(plain(other))  # <union-flows>
    check(err, "union-flows", "union", "two different flows")
    with pytest.raises(ms.FlowDefinitionError) as err:
        plain(flow).union(name="u")  # <union-none>
    check(err, "union-none", "u", "at least one")


def test_wrong_connectors_and_watermarks() -> None:
    flow = ms.Flow("e")
    with pytest.raises(ms.FlowDefinitionError) as err:
        flow.source([1, 2])  # type: ignore[arg-type]  # <source-list>
    check(err, "source-list", "source", "list")
    with pytest.raises(ms.FlowDefinitionError) as err:
        flow.source(TestSource([1]), watermark="ts")  # type: ignore[arg-type]  # <wm-str>
    check(err, "wm-str", "test-source", "WatermarkStrategy")
    with pytest.raises(ms.FlowDefinitionError) as err:
        plain(flow).sink(print)  # type: ignore[arg-type]  # <sink-print>
    check(err, "sink-print", "sink", "sink connector")


def test_bad_keys_windows_and_lateness() -> None:
    flow = ms.Flow("e")
    with pytest.raises(ms.FlowDefinitionError) as err:
        plain(flow).key_by(3)  # type: ignore[arg-type]  # <key-3>
    check(err, "key-3", "key_by:fields", "field name")
    with pytest.raises(ms.FlowDefinitionError) as err:
        timed(flow).key_by("k").window(10)  # type: ignore[arg-type]  # <window-10>
    check(err, "window-10", "window", "window assigner")
    with pytest.raises(ms.FlowDefinitionError) as err:
        timed(flow).window(ms.windows.tumbling(10), allowed_lateness=-1)  # <late-neg>
    check(err, "late-neg", "window", ">= 0")
    with pytest.raises(ms.FlowDefinitionError) as err:
        timed(flow).key_by("k").window(ms.windows.count(3), allowed_lateness=5)  # <late-count>
    check(err, "late-count", "window", "count windows")
    with pytest.raises(ms.ConfigError, match="larger than its size"):
        ms.windows.sliding(10, every=20)


def test_bad_state_declarations() -> None:
    flow = ms.Flow("e")
    with pytest.raises(ms.FlowDefinitionError) as err:
        plain(flow).key_by("k").process(lambda c, r: None, state={"n": 0}, name="p")  # type: ignore[dict-item]  # <state-0>
    check(err, "state-0", "p", "'n'", "ms.state.value")
    with pytest.raises(ms.FlowDefinitionError) as err:
        plain(flow).key_by("k").process(lambda c, r: None, state={"n": ms.state.value(ttl=5)}, name="p")  # <ttl>
    check(err, "ttl", "p", "event-time TTL", "ttl_time='processing'")


def test_a_flow_without_sink_or_source() -> None:
    flow = ms.Flow("e")
    with pytest.raises(ms.FlowDefinitionError, match="no source"):
        flow.run()
    plain(flow).map(str)
    with pytest.raises(ms.FlowDefinitionError, match="no sink") as err:
        flow.run()
    assert err.value.fix is not None and ".sink(" in err.value.fix


# -- run time ---------------------------------------------------------------------------------


def _raise_on(value: Any) -> Any:
    def fn(r: Any) -> Any:
        if r.get("v") == value:
            raise ValueError(f"bad value {value}")
        return r
    return fn


def _run_fail(flow: ms.Flow) -> ms.StepError:
    with pytest.raises(ms.StepError) as err:
        flow.run()
    e = err.value
    assert isinstance(e, RuntimeError)
    return e


SCRIPT = [{"k": "a", "ts": 1, "v": 0}, {"k": "b", "ts": 2, "v": 1}, watermark(1),
          {"k": "c", "ts": 5, "v": 2}, {"k": "d", "ts": 7, "v": 3}]


def _src(flow: ms.Flow, **kw: Any) -> ms.Stream:
    return flow.source(TestSource(SCRIPT, **kw), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))


@pytest.mark.parametrize("chunk", [None, 1])
def test_a_failing_map_names_step_location_event_time_and_position(chunk: int | None) -> None:
    flow = ms.Flow("e")
    collect(_src(flow, chunk=chunk).map(_raise_on(2), name="parse"))  # <parse>
    e = _run_fail(flow)
    assert e.step == "parse"
    assert e.location is not None and e.location.endswith(line_of("parse"))
    assert e.position == "test-source[3]"
    assert e.event_time == 5
    assert e.record == SCRIPT[3]
    assert isinstance(e.__cause__, ValueError)
    text = str(e)
    for part in ("'parse'", line_of("parse"), "ValueError: bad value 2", "test-source[3]", "event time: 5"):
        assert part in text


def test_a_failure_in_the_middle_of_a_fused_chain_names_that_step() -> None:
    flow = ms.Flow("e")
    s = _src(flow).flat_map(lambda r: [r, {**r, "v": r["v"] + 10}], name="dup").filter(_raise_on(13), name="check")
    collect(s.map(str, name="text"))
    e = _run_fail(flow)
    assert e.step == "check"
    assert e.position == "test-source[4]"  # the source record it came from
    assert e.record == {**SCRIPT[4], "v": 13}
    assert e.event_time == 7


def test_a_failing_key_function_names_the_keyed_step_and_position() -> None:
    flow = ms.Flow("e")
    collect(_src(flow).key_by(lambda r: r["missing"] if r["v"] == 3 else r["k"]).aggregate(n=agg.count()))
    e = _run_fail(flow)
    assert e.step == "aggregate"
    assert isinstance(e.__cause__, KeyError)
    assert e.position == "test-source[4]"


def test_a_failing_running_aggregate_names_the_key() -> None:
    flow = ms.Flow("e")
    script = [{**r, "v": "x"} if isinstance(r, dict) and r["v"] == 2 else r for r in SCRIPT]
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    collect(src.key_by("k").aggregate(total=agg.sum("v"), name="totals"))
    e = _run_fail(flow)
    assert (e.step, e.key, e.event_time) == ("totals", "c", 5)
    assert e.position == "test-source[3]"
    assert "key: 'c'" in str(e)


def test_a_failing_running_reduce_names_the_key() -> None:
    flow = ms.Flow("e")
    script = [{"k": "a", "v": 1}, {"k": "a", "v": None}]
    collect(flow.source(TestSource(script)).key_by("k").reduce(lambda a, b: {"k": a["k"], "v": a["v"] + b["v"]}))
    e = _run_fail(flow)
    assert (e.step, e.key, e.event_time, e.position) == (
        "reduce:test_a_failing_running_reduce_names_the_key.<lambda>", "a", None, "test-source[1]")


def test_a_failing_process_function_names_key_time_and_position() -> None:
    def fn(ctx: ms.Context, r: Any) -> None:
        if r["v"] == 3:
            raise RuntimeError("boom")
        ctx.emit(r)

    flow = ms.Flow("e")
    collect(_src(flow).key_by("k").process(fn))
    e = _run_fail(flow)
    assert (e.step, e.key, e.event_time, e.position) == ("process:test_a_failing_process_function_names_key_time_"
                                                         "and_position.fn", "d", 7, "test-source[4]")


def test_a_failing_timer_names_key_and_timer_time() -> None:
    def on_timer(ctx: ms.Context, ts: int) -> None:
        raise RuntimeError("timer")

    flow = ms.Flow("e")
    collect(_src(flow).key_by("k").process(lambda ctx, r: ctx.timers.register_event_time(r["ts"] + 100),
                                           on_timer=on_timer, name="p"))
    e = _run_fail(flow)
    assert (e.step, e.key, e.event_time) == ("p", "a", 101)


def test_a_failing_window_aggregation_names_key_time_and_position() -> None:
    flow = ms.Flow("e")
    script = [{**r, "v": "x"} if isinstance(r, dict) and r["v"] == 3 else r for r in SCRIPT]
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    collect(src.key_by("k").window(ms.windows.tumbling(4), name="sums").aggregate(s=agg.sum("v")))
    e = _run_fail(flow)
    assert (e.step, e.key, e.event_time, e.position) == ("sums", "d", 7, "test-source[4]")


@pytest.mark.parametrize("assigner", [ms.windows.tumbling(10), ms.windows.session(10)])
def test_a_failing_window_aggregation_of_a_late_record_names_the_key(assigner: Any) -> None:
    script = [{"k": "a", "ts": 1, "v": 1}, watermark(50), {"k": "a", "ts": 2, "v": "x"}]
    flow = ms.Flow("e")
    src = flow.source(TestSource(script), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    collect(src.key_by("k").window(assigner, allowed_lateness=100).aggregate(s=agg.sum("v")))
    e = _run_fail(flow)
    assert (e.step, e.key, e.event_time, e.position) == ("window", "a", 2, "test-source[2]")


def test_a_failing_window_process_names_key_and_window_time() -> None:
    def fn(key: Any, window: ms.Window, records: list[Any]) -> list[Any]:
        raise ValueError(key)

    flow = ms.Flow("e")
    collect(_src(flow).key_by("k").window(ms.windows.tumbling(10), name="w").process(fn))
    e = _run_fail(flow)
    assert (e.step, e.event_time) == ("w", 9)
    assert e.key in {"a", "b", "c", "d"}


def test_a_failing_sink_names_the_sink() -> None:
    class Broken(CollectSink):
        def open(self, step: str) -> Any:
            writer = super().open(step)

            def write(records: list[Any], times: list[int] | None) -> None:
                raise OSError("disk full")
            writer.write = write  # type: ignore[method-assign]
            return writer

    flow = ms.Flow("e")
    plain(flow).sink(Broken("out"))
    e = _run_fail(flow)
    assert e.step == "out"
    assert isinstance(e.__cause__, OSError)


def test_a_bad_timestamp_is_a_record_error_with_its_position() -> None:
    flow = ms.Flow("e")
    collect(stamped(flow, [{"ts": 1}, {"ts": "yesterday"}]))
    with pytest.raises(ms.RecordError) as err:
        flow.run()
    assert err.value.position == "test-source[1]"
    assert "yesterday" in str(err.value)
