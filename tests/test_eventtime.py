"""Event time at the edges: timestamp conversion, watermark generation, idle sources, unions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

import millstream as ms
from millstream._eventtime import WatermarkGenerator
from millstream._time import MAX_WATERMARK, MIN_WATERMARK, format_ms, timestamp_to_ms, to_ms
from millstream.testing import CollectSink, ManualClock, TestSource, advance_processing_time, watermark

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")


def test_durations_convert_to_integer_ms() -> None:
    assert to_ms(timedelta(minutes=1, milliseconds=5)) == 60_005
    assert to_ms(250) == 250
    with pytest.raises(ms.ConfigError):
        to_ms(1.5)  # type: ignore[arg-type]
    with pytest.raises(ms.ConfigError):
        to_ms(True)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (1_700_000_000_123, "ms", 1_700_000_000_123),
        (1_700_000_000, "s", 1_700_000_000_000),
        (1_700_000_000.5, "s", 1_700_000_000_500),
        (1_700_000_000_123_456, "us", 1_700_000_000_123),
        (datetime(2026, 1, 1, tzinfo=UTC), "ms", 1_767_225_600_000),
        (datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), "ms", 1_767_225_600_000),
        ("2026-01-01T00:00:00+00:00", "ms", 1_767_225_600_000),
        ("2026-01-01T00:00:00.250Z", "ms", 1_767_225_600_250),
        ("1767225600000", "ms", 1_767_225_600_000),
    ],
)
def test_timestamps_convert_once_to_ms(value: object, unit: str, expected: int) -> None:
    assert timestamp_to_ms(value, unit) == expected


@pytest.mark.parametrize("bad", [datetime(2026, 1, 1), None, "yesterday", True, [1]])
def test_bad_timestamps_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        timestamp_to_ms(bad)


def test_format_ms_for_people() -> None:
    assert format_ms(1_767_225_600_000) == "2026-01-01T00:00:00.000+00:00"
    assert "end of input" in format_ms(MAX_WATERMARK)
    assert "no watermark" in format_ms(MIN_WATERMARK)


def test_bounded_watermark_is_max_minus_bound_minus_one() -> None:
    gen = WatermarkGenerator(ms.WatermarkStrategy.bounded(100, timestamp="ts"), now_ms=0)
    assert gen.current() == MIN_WATERMARK
    gen.observe(1_000, 0)
    gen.observe(900, 0)
    assert gen.current() == 899


def test_strategy_validation() -> None:
    with pytest.raises(ms.ConfigError):
        ms.WatermarkStrategy.bounded(-1, timestamp="ts")
    with pytest.raises(ms.ConfigError):
        ms.WatermarkStrategy.bounded(0, timestamp=3)  # type: ignore[arg-type]
    with pytest.raises(ms.ConfigError):
        ms.WatermarkStrategy.bounded(0, timestamp="ts", unit="fortnights")
    s = ms.WatermarkStrategy.monotonous(timestamp="ts").with_idleness(timedelta(seconds=2))
    assert s.idle_timeout_ms == 2_000 and s.bound_ms == 0


def test_timestamps_in_seconds_and_iso_strings_drive_windows() -> None:
    flow = ms.Flow("units")
    out = CollectSink()
    events = [{"t": "2026-01-01T00:00:01Z"}, {"t": "2026-01-01T00:00:09Z"}, {"t": "2026-01-01T00:00:11Z"}]
    (flow.source(TestSource(events), watermark=ms.WatermarkStrategy.monotonous(timestamp="t"))
         .window(ms.windows.tumbling(timedelta(seconds=10))).aggregate(n=ms.agg.count()).sink(out))
    flow.run()
    base = 1_767_225_600_000
    assert out.values == [
        {"window_start": base, "window_end": base + 10_000, "n": 2},
        {"window_start": base + 10_000, "window_end": base + 20_000, "n": 1},
    ]
    assert out.times == [base + 9_999, base + 19_999]

    flow = ms.Flow("seconds")
    out = CollectSink()
    (flow.source(TestSource([{"t": 1}, {"t": 2}, {"t": 65}]),
                 watermark=ms.WatermarkStrategy.monotonous(timestamp="t", unit="s"))
         .window(ms.windows.tumbling(timedelta(minutes=1))).aggregate(n=ms.agg.count()).sink(out))
    flow.run()
    assert [r["n"] for r in out.values] == [2, 1]


def test_timestamp_function_instead_of_field() -> None:
    flow = ms.Flow("fn")
    out = CollectSink()
    (flow.source(TestSource([(5, "a"), (15, "b")]), watermark=ms.WatermarkStrategy.monotonous(timestamp=lambda r: r[0]))
         .window(ms.windows.tumbling(10)).aggregate(n=ms.agg.count()).sink(out))
    flow.run()
    assert [(r["window_start"], r["n"]) for r in out.values] == [(0, 1), (10, 1)]


def test_union_watermark_is_the_minimum_of_its_inputs() -> None:
    """A window must not fire while a slower input may still send events for it."""
    flow = ms.Flow("union")
    fast = TestSource([{"ts": 1}, {"ts": 100}, watermark(100)], name="fast")
    slow = TestSource([{"ts": 2}, watermark(5), {"ts": 8}, watermark(200)], name="slow")
    wm = ms.WatermarkStrategy.monotonous(timestamp="ts")
    out, late = CollectSink(), CollectSink()
    w = (flow.source(fast, watermark=wm).union(flow.source(slow, watermark=wm))
         .window(ms.windows.tumbling(10)).aggregate(n=ms.agg.count()))
    w.sink(out)
    w.late().sink(late)
    flow.run(max_chunk=1)
    assert late.values == []
    assert sorted((r["window_start"], r["n"]) for r in out.values) == [(0, 3), (100, 1)]


@pytest.mark.streaming("an idle live source")
def test_idle_source_stops_holding_back_the_watermark() -> None:
    """Without idleness a silent input holds every window; with it, windows fire on the busy input's time."""

    class Silent(ms.connectors.Source):
        """An unbounded source that never produces (like a quiet Kafka partition)."""

        bounded = False

        def open(self, ctx: ms.connectors.SourceContext) -> ms.connectors.SourceReader:
            flow_done = self.done

            class R(ms.connectors.SourceReader):
                def poll(self, max_records: int) -> list[object] | None:
                    return None if flow_done() else []

            return R()

        def describe(self) -> str:
            return "silent"

        def __init__(self, done: object) -> None:
            self.done = done

    def run(idle: timedelta | None) -> list[dict[str, object]]:
        flow = ms.Flow("idle")
        out = CollectSink()
        busy_script = [{"ts": t} for t in range(0, 50, 5)]
        busy_script += [advance_processing_time(5_000)] * 3 + [{"ts": 60}, advance_processing_time(5_000)]
        busy = TestSource(busy_script, name="busy")
        strategy = ms.WatermarkStrategy.monotonous(timestamp="ts")
        quiet_strategy = strategy.with_idleness(idle) if idle is not None else strategy
        seen_when_busy_ended: list[int] = []

        def done() -> bool:
            return bool(seen_when_busy_ended)

        (flow.source(busy, watermark=strategy)
             .union(flow.source(Silent(done), watermark=quiet_strategy, name="quiet"))
             .window(ms.windows.tumbling(10)).aggregate(n=ms.agg.count())
             .inspect(lambda r: None).sink(out))
        # stop the silent source once the busy one has ended, by watching its output
        clock = ManualClock()

        def on_progress(st: ms.JobStatus) -> None:
            if st.step("busy").records_out >= 11:
                seen_when_busy_ended.append(len(out.values))

        flow.run(clock=clock, on_progress=on_progress, progress_interval_s=0.001)
        return [dict(r) for r in out.values[: seen_when_busy_ended[0]]] if seen_when_busy_ended else []

    assert run(None) == []  # nothing fires while the quiet input holds the watermark at -inf
    fired = run(timedelta(seconds=10))
    assert [(r["window_start"], r["n"]) for r in fired][:5] == [(0, 2), (10, 2), (20, 2), (30, 2), (40, 2)]
