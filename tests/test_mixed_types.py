"""Issue 10 §2: one value of another type must not change the other records' types in any mode.

Native mode keeps each record's own JSON types: ``{"key": 1}`` next to ``{"key": "x"}`` stays an int key.
Polars, inferring one type per column, would read the whole column as strings (``1 -> "1"``). These
tests run the same flows natively, in micro-batches of 1, 7 and 4,096 records and in batch mode, on
random mixtures of ints, floats, strings, booleans and nulls, and check that the vectorised window is
still the operator that runs for homogeneous input.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import millstream as ms
from millstream._runtime._base import Runtime
from millstream._runtime._columnar import MixedTypes, to_frame
from millstream._runtime._cwindows import ColumnarSessionWindow, ColumnarSlicedWindow
from millstream._runtime._microbatch import MicroBatchJob
from millstream.errors import StepError
from millstream.testing import CollectSink, ManualClock, TestSource


def exact(rows: list[Any]) -> list[str]:
    """Rows as a sorted multiset of reprs: ``1``, ``1.0``, ``True`` and ``"1"`` all differ."""
    return sorted(repr(sorted(r.items())) for r in rows)


def _flow(recs: list[dict[str, Any]], window: str, chunk: int | None,
          aggs: dict[str, Any]) -> tuple[ms.Flow, CollectSink]:
    assigner = {"tumbling": ms.windows.tumbling(50), "sliding": ms.windows.sliding(60, every=20),
                "session": ms.windows.session(25)}[window]
    flow = ms.Flow("mixed")
    out = CollectSink()
    (flow.source(TestSource(recs, chunk=chunk), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
     .key_by("k").window(assigner).aggregate(**aggs).sink(out))
    return flow, out


def _microbatch(flow: ms.Flow, chunk: int) -> MicroBatchJob:
    job = MicroBatchJob(flow.plan(), Runtime(ManualClock()), "microbatch")
    job.open()
    while job.step(chunk)[1]:
        pass
    job.close()
    return job


@pytest.mark.parametrize("mode", ["native", "microbatch", "batch"])
@pytest.mark.parametrize("window", ["tumbling", "session"])
def test_one_string_key_leaves_the_integer_keys_integers(mode: str, window: str) -> None:
    recs = [{"id": 1, "k": 1, "ts": 10}, {"id": 2, "k": "x", "ts": 20}, {"id": 3, "k": 1, "ts": 30},
            {"id": 4, "k": "1", "ts": 31}]
    flow, out = _flow(recs, window, None, {"n": ms.agg.count(), "ids": ms.agg.sum("id")})
    flow.run(mode=mode)
    assert sorted((repr(r["k"]), r["n"], r["ids"]) for r in out.values) == [("'1'", 1, 4), ("'x'", 1, 2), ("1", 2, 4)]


@pytest.mark.parametrize("mode", ["native", "microbatch", "batch"])
def test_a_sum_over_a_string_fails_naming_the_record(mode: str) -> None:
    recs = [{"k": 1, "v": 5, "ts": 10}, {"k": 1, "v": "7", "ts": 20}, {"k": 2, "v": 1, "ts": 30}]
    flow, _out = _flow(recs, "tumbling", None, {"s": ms.agg.sum("v")})
    with pytest.raises(StepError) as err:
        flow.run(mode=mode)
    assert "'7'" in str(err.value), str(err.value)


def test_rows_to_columns_keeps_types_or_says_which_field() -> None:
    assert to_frame([{"a": 1, "b": "x"}, {"a": 2, "b": None}], None)["a"].to_list() == [1, 2]
    for values in ([1, "x"], [1, 2.5], [True, 1], [{"n": 1}, 5], ["x", 1.5], [False, 0]):
        recs = [{"a": v} for v in values]
        with pytest.raises(MixedTypes, match="'a'"):
            to_frame(recs, None)
        assert to_frame(recs, None, mixed="object")["a"].to_list() == values


MIXED = st.one_of(st.integers(-2, 2), st.sampled_from([1.0, 2.5, -0.0]), st.sampled_from(["1", "a", ""]),
                  st.booleans(), st.none())
# keys: equal values of two types (1, 1.0, True) are one key in every mode, but which of them names a
# session's result can differ (native: the first to arrive; columnar sessions: the earliest in time),
# so keys mix only values no other type equals
KEYS = st.one_of(st.integers(-2, 2), st.sampled_from([2.5, -0.5]), st.sampled_from(["1", "a", ""]), st.none())


@st.composite
def _mixed_records(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 30))
    out, high = [], 0
    for i in range(n):
        t = max(0, high + draw(st.integers(-20, 40)))
        high = max(high, t)
        out.append({"k": draw(KEYS), "v": draw(MIXED), "ts": t, "i": i})
    return out


@settings(max_examples=60, deadline=None)
@given(recs=_mixed_records(), window=st.sampled_from(["tumbling", "sliding", "session"]))
def test_random_type_mixtures_give_the_native_answer_in_every_mode_and_chunk_size(
        recs: list[dict[str, Any]], window: str) -> None:
    """Keys mixing ints, floats, strings and nulls ("1" and 1 two keys), values mixing those and booleans,
    counted; ints summed."""
    # first/last of a field whose type changes between batches still widen there (known gap): counted only
    aggs = {"n": ms.agg.count(), "nv": ms.agg.count("v"), "ids": ms.agg.sum("i"), "top": ms.agg.max("i")}
    flow, out = _flow(recs, window, None, aggs)
    flow.run(mode="native")
    native = exact(out.values)
    flow, out = _flow(recs, window, None, aggs)
    flow.run(mode="batch")
    assert exact(out.values) == native, "batch"
    for chunk in (1, 7, 4_096):
        flow, out = _flow(recs, window, chunk, aggs)
        _microbatch(flow, chunk)
        assert exact(out.values) == native, f"micro-batch, chunks of {chunk}"


@pytest.mark.parametrize("window", ["tumbling", "session"])
def test_homogeneous_input_still_runs_the_vectorised_window(window: str) -> None:
    recs = [{"k": i % 3, "v": i, "ts": i * 7, "i": i} for i in range(200)]
    flow, out = _flow(recs, window, 64, {"n": ms.agg.count(), "s": ms.agg.sum("v")})
    job = _microbatch(flow, 64)
    kind = ColumnarSessionWindow if window == "session" else ColumnarSlicedWindow
    ops = [op for op in job.ops if isinstance(op, kind)]
    assert ops and ops[0].delegate is None, [type(o).__name__ for o in job.ops]
    assert all(type(r["k"]) is int for r in out.values) and out.values
