"""Issue 10 §3: every vectorised kernel is proven against its per-record reference.

Each test builds a flow whose step the micro-batch executor vectorises, runs it there and natively
on the same random input (nulls, several key types, out-of-order and late events, empty batches and
batches of one, every built-in aggregation), and asserts both that the answers are equal and that the
vectorised operator really is the one that ran (compiled, and never handed over to its native twin).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import millstream as ms
from millstream._runtime._base import Runtime
from millstream._runtime._cagg import ColumnarAggregate
from millstream._runtime._cjoins import ColumnarIntervalJoin, ColumnarRegularJoin, ColumnarWindowJoin
from millstream._runtime._columnar import StandInOperator
from millstream._runtime._cwindows import ColumnarSessionWindow, ColumnarSlicedWindow
from millstream._runtime._microbatch import MicroBatchJob
from millstream.testing import CollectSink, ManualClock, TestSource


def _num(v: Any) -> Any:
    # floats are summed in another order by Polars (the last place may differ: documented) and -0.0 is 0.0
    return round(float(v), 6) + 0.0 if isinstance(v, int | float) and not isinstance(v, bool) else v


def canon(rows: list[Any]) -> list[str]:
    """Rows as a sorted multiset of reprs, each value with its Python type (a sum of no values is the
    int 0 in a float field too, as natively); numbers compare by value up to the last places."""
    return sorted(repr(sorted((k, type(v).__name__, _num(v)) for k, v in r.items())) if isinstance(r, dict)
                  else repr((type(r).__name__, _num(r))) for r in rows)

KEYS = {
    "int": st.integers(-2, 3),
    "str": st.sampled_from(["a", "b", "ä", ""]),
    "nullable": st.one_of(st.none(), st.sampled_from(["x", "y"])),
}
AGGS = ["count", "count_field", "sum", "mean", "min", "max", "first", "last"]


def _aggs(names: list[str], field: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in names:
        out[n] = ms.agg.count(field) if n == "count_field" else ms.agg.count() if n == "count" \
            else getattr(ms.agg, n)(field)
    return out


@st.composite
def _records(draw: st.DrawFn, key: str, value: st.SearchStrategy[Any]) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 40))
    out = []
    high = 0
    for i in range(n):
        step = draw(st.integers(-30, 60))
        t = max(0, high + step) if draw(st.integers(0, 9)) else max(0, high - draw(st.integers(100, 400)))
        high = max(high, t)
        out.append({"k": draw(KEYS[key]), "v": draw(st.one_of(st.none(), value)), "ts": t, "i": i})
    return out


# one numeric type per field, so that the vectorised operator runs every batch (a field mixing ints and
# floats hands over to the native operator: tests/test_mixed_types.py)
INTS = st.integers(-1_000, 1_000)
# (no -0.0: compared by min or max, it hands over to the native operator, see tests/test_mixed_types.py)
FLOATS = st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 3) + 0.0)


def _run_microbatch(flow: ms.Flow, chunk: int) -> MicroBatchJob:
    job = MicroBatchJob(flow.plan(), Runtime(ManualClock()), "microbatch")
    job.open()
    while job.step(chunk)[1]:
        pass
    return job


def _vectorised(job: MicroBatchJob, kind: type) -> StandInOperator:
    ops = [op for op in job.ops if isinstance(op, kind)]
    assert ops, f"no {kind.__name__} was compiled: the step was not vectorised ({[type(o).__name__ for o in job.ops]})"
    op = ops[0]
    assert isinstance(op, StandInOperator) and op.delegate is None, f"{kind.__name__} handed over to its native twin"
    return op


def _both(build: Any, records: list[dict[str, Any]], chunk: int, kind: type) -> None:
    flow, outs = build(records)
    flow.run(mode="native")
    native = [canon(o.values) for o in outs]
    for o in outs:
        o.clear()
    flow2, outs2 = build(records)
    job = _run_microbatch(flow2, chunk)
    _vectorised(job, kind)
    job.close()
    assert [canon(o.values) for o in outs2] == native


@settings(max_examples=60, deadline=None)
@given(data=st.data(), key=st.sampled_from(sorted(KEYS)), window=st.sampled_from(["tumbling", "sliding", "session"]),
       aggs=st.lists(st.sampled_from(AGGS), min_size=1, max_size=4, unique=True), bound=st.sampled_from([0, 40]),
       chunk=st.sampled_from([1, 3, 1000]), floats=st.booleans())
def test_vectorised_windows_equal_the_native_operator(data: st.DataObject, key: str, window: str, aggs: list[str],
                                                      bound: int, chunk: int, floats: bool) -> None:
    records = data.draw(_records(key, FLOATS if floats else INTS))
    assigner = {"tumbling": ms.windows.tumbling(50), "sliding": ms.windows.sliding(60, every=20),
                "session": ms.windows.session(25)}[window]

    def build(recs: list[dict[str, Any]]) -> tuple[ms.Flow, list[CollectSink]]:
        flow = ms.Flow("w")
        w = (flow.source(TestSource(recs, chunk=chunk), watermark=ms.WatermarkStrategy.bounded(bound, timestamp="ts"))
             .key_by("k").window(assigner).aggregate(**_aggs(aggs, "v")))
        out, late = CollectSink(), CollectSink()
        w.sink(out)
        w.late().sink(late)
        return flow, [out, late]

    _both(build, records, chunk, ColumnarSessionWindow if window == "session" else ColumnarSlicedWindow)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), key=st.sampled_from(sorted(KEYS)),
       aggs=st.lists(st.sampled_from(["count", "count_field", "sum", "mean", "min", "max"]), min_size=1, max_size=4,
                     unique=True), chunk=st.sampled_from([1, 4, 1000]))
def test_vectorised_running_aggregates_equal_the_native_operator(data: st.DataObject, key: str, aggs: list[str],
                                                                 chunk: int) -> None:
    records = data.draw(_records(key, INTS))

    def build(recs: list[dict[str, Any]]) -> tuple[ms.Flow, list[CollectSink]]:
        flow = ms.Flow("a")
        out = CollectSink()
        (flow.source(TestSource(recs, chunk=chunk), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
         .key_by("k").aggregate(**_aggs(aggs, "v")).sink(out))
        return flow, [out]

    _both(build, records, chunk, ColumnarAggregate)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), key=st.sampled_from(["int", "str"]), mode=st.sampled_from(["window", "regular", "interval"]),
       chunk=st.sampled_from([1, 5, 1000]))
def test_vectorised_joins_equal_the_native_operator(data: st.DataObject, key: str, mode: str, chunk: int) -> None:
    left = data.draw(_records(key, st.integers(0, 9)))
    right = [dict(r, w=r.pop("v")) for r in data.draw(_records(key, st.integers(0, 9)))]

    def build(recs: list[dict[str, Any]]) -> tuple[ms.Flow, list[CollectSink]]:
        flow = ms.Flow("j")
        wm = ms.WatermarkStrategy.bounded(20, timestamp="ts")
        a = flow.source(TestSource(recs, chunk=chunk, name="left"), watermark=wm).key_by("k")
        b = flow.source(TestSource(right, chunk=chunk, name="right"), watermark=wm).key_by("k")
        if mode == "window":
            joined = a.window_join(b, ms.windows.tumbling(50))
        elif mode == "regular":
            joined = a.join(b, ttl=200)
        else:
            joined = a.interval_join(b, lower=-30, upper=30)
        out = CollectSink()
        joined.sink(out)
        return flow, [out]

    kind = {"window": ColumnarWindowJoin, "regular": ColumnarRegularJoin, "interval": ColumnarIntervalJoin}[mode]
    _both(build, left, chunk, kind)


@pytest.mark.parametrize("window", ["tumbling", "session"])
def test_the_differential_test_can_tell_a_native_run(window: str) -> None:
    """A flow the executor cannot vectorise (a Python key function) is reported, not silently compared."""
    flow = ms.Flow("nv")
    assigner = ms.windows.tumbling(10) if window == "tumbling" else ms.windows.session(10)
    (flow.source(TestSource([{"k": 1, "ts": 1, "v": 1}]), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
     .key_by(lambda r: r["k"]).window(assigner).aggregate(n=ms.agg.count()).sink(CollectSink()))
    job = _run_microbatch(flow, 10)
    with pytest.raises(AssertionError, match="not vectorised"):
        _vectorised(job, ColumnarSessionWindow if window == "session" else ColumnarSlicedWindow)
    job.close()


@pytest.mark.parametrize("mode", ["native", "microbatch", "batch"])
def test_integer_sums_grow_past_2_63_in_every_mode(mode: str) -> None:
    """Polars' Int64 sums wrap at 2**63 where Python's ints grow: the vectorised kernels sum integers
    as Int128, so every mode gives the same (exact) answer."""
    big = 2**62
    recs = [{"k": "a", "v": big, "ts": t} for t in range(3)] + [{"k": "b", "v": 5, "ts": 3}]
    flow = ms.Flow("big")
    src = flow.source(ms.connectors.memory.read(recs), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
    windows, running = CollectSink(), CollectSink()
    src.key_by("k").window(ms.windows.tumbling(100)).aggregate(s=ms.agg.sum("v"), m=ms.agg.mean("v")).sink(windows)
    src.key_by("k").aggregate(s=ms.agg.sum("v")).sink(running)
    flow.run(mode=mode)
    assert sorted((r["k"], r["s"]) for r in windows.values) == [("a", 3 * big), ("b", 5)]
    assert all(type(r["s"]) is int for r in windows.values)
    assert [r["s"] for r in running.values if r["k"] == "a"] == [big, 2 * big, 3 * big]
