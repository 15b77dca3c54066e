"""Edge cases where columns and records differ, found by review: each flow gives the native answer
in every mode (or, where columns cannot, a clear error)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
import pytest

import millstream as ms
from conftest import canon
from millstream import nexmark
from millstream.testing import CollectSink, TestSource

pytestmark = pytest.mark.usefixtures("exec_mode")


def _src(flow: ms.Flow, rows: list[dict[str, Any]], chunk: int | None = None, name: str = "test-source") -> ms.Stream:
    return flow.source(TestSource(rows, chunk=chunk, name=name),
                       watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))


def _native(build: Any) -> list[Any]:
    out = CollectSink()
    build(out).run(mode="native")
    return canon(out.values)


def _same_as_native(build: Any) -> None:
    out = CollectSink()
    build(out).run()
    assert canon(out.values) == _native(build)


def test_null_keys_join_as_natively() -> None:
    def build(out: CollectSink) -> ms.Flow:
        flow = ms.Flow("nulls")
        left = _src(flow, [{"k": None, "ts": 1, "a": 1}], name="l")
        right = _src(flow, [{"k": "a", "ts": 1, "b": 1}, {"k": None, "ts": 2, "b": 2}], chunk=1, name="r")
        left.key_by("k").window_join(right.key_by("k"), ms.windows.tumbling(10)).sink(out)
        return flow
    _same_as_native(build)


def test_sums_and_running_extremes_of_batches_without_values() -> None:
    rows = [{"k": "a", "ts": 1, "v": None}, {"k": "a", "ts": 2, "v": 3}, {"k": "a", "ts": 12, "v": None}]

    def windows(out: CollectSink) -> ms.Flow:
        flow = ms.Flow("sums")
        (_src(flow, rows, chunk=1).key_by("k").window(ms.windows.tumbling(10))
         .aggregate(s=ms.agg.sum("v"), m=ms.agg.mean("v")).sink(out))
        return flow

    def running(out: CollectSink) -> ms.Flow:
        flow = ms.Flow("running")
        (_src(flow, rows, chunk=1).key_by("k")
         .aggregate(lo=ms.agg.min("v"), hi=ms.agg.max("v"), s=ms.agg.sum("v"), n=ms.agg.count("v")).sink(out))
        return flow
    _same_as_native(windows)
    _same_as_native(running)


def test_datetime_event_times_are_milliseconds_in_every_mode() -> None:
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    frame = pl.DataFrame({"k": ["a", "a", "a"], "ts": [t0, t0 + dt.timedelta(milliseconds=400),
                                                        t0 + dt.timedelta(seconds=2)]})

    def build(out: CollectSink) -> ms.Flow:
        flow = ms.Flow("datetimes")
        (flow.source(ms.connectors.memory.read(frame), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
         .key_by("k").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count()).sink(out))
        return flow
    _same_as_native(build)
    assert canon([{"k": "a", "window_start": 1_704_067_200_000, "window_end": 1_704_067_201_000, "n": 2}])[0] \
        in _native(build)


def test_a_key_field_with_two_types_is_two_keys_in_every_mode() -> None:
    """The running aggregate finds keys by their Python values, as natively: ``1`` and ``"1"`` are two
    keys in every mode (the columnar one used to refuse a key column that changed type)."""
    flow = ms.Flow("types")
    out = CollectSink()
    _src(flow, [{"k": 1, "ts": 1}, {"k": "1", "ts": 2}, {"k": 1, "ts": 3}], chunk=1).key_by("k").aggregate(
        n=ms.agg.count()).sink(out)
    flow.run()
    assert sorted(out.values, key=repr) == sorted([{"k": 1, "n": 1}, {"k": "1", "n": 1}, {"k": 1, "n": 2}], key=repr)


def test_push_down_keeps_the_watermark_of_every_event() -> None:
    """The generator leaves out the kinds a flow drops, but their times still move the watermark, so
    the same records are late as natively."""
    def build(out: CollectSink) -> ms.Flow:
        flow = ms.Flow("late-persons")
        events = flow.source(nexmark.read(nexmark.NexmarkConfig(events=3_000, out_of_order_group_size=500)),
                             watermark=ms.WatermarkStrategy.bounded(0, timestamp="dateTime"))
        w = (events.filter(ms.col("type") == "person").select("id", "dateTime").key_by("id")
             .window(ms.windows.tumbling(1)).aggregate(n=ms.agg.count()))
        w.sink(out)
        w.late().sink(out)
        return flow
    out = CollectSink()
    build(out).run(max_chunk=10)
    native = CollectSink()
    build(native).run(mode="native", max_chunk=10)
    assert canon(out.values) == canon(native.values)
