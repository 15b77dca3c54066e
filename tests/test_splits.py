"""Sources of several splits: one watermark generator per split, the source's watermark the minimum
over active splits; idle and ended splits; acknowledgement after checkpoints. Every mode."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import millstream as ms
from millstream._eventtime import SourceWatermarks
from millstream._time import MIN_WATERMARK
from millstream.testing import CollectSink, PartitionedTestSource, TestSource

pytestmark = pytest.mark.usefixtures("exec_mode")


def _windowed(src: ms.connectors.Source, size: int = 10) -> tuple[ms.Flow, CollectSink, CollectSink]:
    flow = ms.Flow("splits")
    s = flow.source(src, watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    w = s.key_by("k").window(ms.windows.tumbling(size)).aggregate(n=ms.agg.count())
    out, late = CollectSink(), CollectSink()
    w.sink(out)
    w.late().sink(late)
    return flow, out, late


def _expected(records: list[dict[str, int]], size: int = 10) -> Counter[tuple[str, int, int]]:
    return Counter((r["k"], r["ts"] // size * size, 1) for r in records)


def _counts(rows: list[dict[str, object]]) -> Counter[tuple[str, int, int]]:
    out: Counter[tuple[str, int, int]] = Counter()
    for r in rows:
        out[(r["k"], r["window_start"], 1)] += r["n"]  # type: ignore[index]
    return out


def test_a_lagging_split_does_not_make_in_order_records_late() -> None:
    p0 = [{"k": "a", "ts": t} for t in (1, 100, 200)]
    p1 = [{"k": "a", "ts": t} for t in (2, 5, 15, 150)]
    # p0 runs far ahead before p1 is read at all: one watermark per split keeps p1 on time
    src = PartitionedTestSource({"p0": p0, "p1": p1}, schedule=["p0", "p0", "p0", "p1"], chunk=1)
    flow, out, late = _windowed(src)
    flow.run()
    assert late.values == []
    assert _counts(out.values) == _expected(p0 + p1)


def test_the_same_records_as_one_split_are_late() -> None:
    """The control: read in the same order from one split, p1's records fall behind the watermark."""
    order = [{"k": "a", "ts": t} for t in (1, 100, 200, 2, 5, 15, 150)]
    flow, out, late = _windowed(TestSource(order, chunk=1))
    flow.run()
    assert sorted(r["ts"] for r in late.values) == [2, 5, 15, 150]


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n_splits=st.integers(1, 4), chunk=st.sampled_from([1, 3, 1000]))
def test_any_interleaving_of_in_order_splits_gives_the_oracle(data: st.DataObject, n_splits: int, chunk: int) -> None:
    parts = {}
    for i in range(n_splits):
        times = sorted(data.draw(st.lists(st.integers(0, 300), max_size=15), label=f"p{i}"))
        parts[f"p{i}"] = [{"k": "ab"[t % 2], "ts": t} for t in times]
    schedule = data.draw(st.lists(st.sampled_from(sorted(parts)), max_size=60), label="schedule")
    flow, out, late = _windowed(PartitionedTestSource(parts, schedule=schedule, chunk=chunk))
    flow.run()
    assert late.values == []
    assert _counts(out.values) == _expected([r for recs in parts.values() for r in recs])


def test_split_watermarks_hold_back_until_idle_and_forget_ended_splits() -> None:
    strategy = ms.WatermarkStrategy.bounded(0, timestamp="ts", idle_timeout=1_000)
    wms = SourceWatermarks(strategy, now_ms=0)
    wms.observe("p0", 100, now_ms=0)
    # p1 is assigned but has no record yet: it holds the watermark back
    assert wms.current(["p0", "p1"], now_ms=0) == MIN_WATERMARK
    assert not wms.check_idle(500, ["p0", "p1"])
    wms.observe("p0", 120, now_ms=900)
    assert wms.check_idle(1_200, ["p0", "p1"]) is False  # p1 idle now, p0 still active: the source is not
    assert wms.current(["p0", "p1"], now_ms=1_200) == 119
    # an ended split (left out of splits()) no longer counts
    wms.observe("p1", 50, now_ms=1_300)
    assert wms.current(["p0", "p1"], now_ms=1_300) == 49
    assert wms.current(["p0"], now_ms=1_300) == 119
    # every split idle: the source is idle, its watermark stays
    assert wms.check_idle(10_000, ["p0", "p1"]) is True
    assert wms.current(["p0", "p1"], now_ms=10_000) == 49


def test_split_watermark_state_round_trips_and_merges() -> None:
    strategy = ms.WatermarkStrategy.bounded(5, timestamp="ts")
    a = SourceWatermarks(strategy, now_ms=0)
    a.observe("p0", 10, 0)
    a.observe("p1", 30, 0)
    b = SourceWatermarks(strategy, now_ms=0)
    b.restore(a.state(), 0)
    assert b.state() == a.state() and b.current(["p0", "p1"]) == 10 - 5 - 1
    b.restore({"max_ts": None, "splits": {"p0": 5, "p1": 40}}, 0, merge=True)
    assert b.state()["splits"] == {"p0": 10, "p1": 40}
    legacy = SourceWatermarks(strategy, now_ms=0)
    legacy.restore(77, 0)  # a checkpoint from before splits existed: one max_ts
    assert legacy.current() == 77 - 5 - 1


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_acknowledged_only_what_a_checkpoint_holds(tmp_path: Path, guarantee: str) -> None:
    parts = {f"p{i}": [{"k": "a", "ts": t} for t in range(i, 400, 3)] for i in range(3)}
    src = PartitionedTestSource(parts, chunk=7)
    flow = ms.Flow("acks")
    out = ms.testing.TransactionalCollectSink()
    flow.source(src, watermark=ms.WatermarkStrategy.monotonous(timestamp="ts")).sink(out)
    flow.run(guarantee=guarantee, checkpoint_dir=tmp_path / "ck", checkpoint_interval=1)
    assert src.acknowledged, "the source was never told its records are safe"
    # acknowledgements only move forward, and the last one covers everything read
    for earlier, later in zip(src.acknowledged, src.acknowledged[1:]):
        assert all(later[s] >= earlier[s] for s in earlier)
    assert src.acknowledged[-1] == {s: len(recs) for s, recs in parts.items()}
    assert len(out.values) == sum(len(r) for r in parts.values())


def test_at_most_once_acknowledges_before_processing(tmp_path: Path) -> None:
    parts = {"p0": [{"k": "a", "ts": t} for t in range(50)], "p1": [{"k": "a", "ts": t} for t in range(50)]}
    src = PartitionedTestSource(parts, chunk=10)
    seen_when_acked: list[int] = []
    out = CollectSink()
    flow = ms.Flow("amo")
    flow.source(src, watermark=ms.WatermarkStrategy.monotonous(timestamp="ts")).inspect(
        lambda r: seen_when_acked.append(sum(src.acknowledged[-1].values()) if src.acknowledged else 0)).sink(out)
    flow.run(guarantee="at-most-once", checkpoint_dir=tmp_path / "ck")
    # every record was processed after the chunk holding it had been acknowledged
    assert len(out.values) == 100
    assert all(acked >= i + 1 for i, acked in enumerate(seen_when_acked))


def test_without_checkpoints_each_chunk_is_acknowledged_once_processed() -> None:
    parts = {"p0": [{"k": "a", "ts": t} for t in range(30)], "p1": [{"k": "a", "ts": t} for t in range(20)]}
    src = PartitionedTestSource(parts, chunk=8)
    seen: list[int] = []
    flow = ms.Flow("none")
    flow.source(src).inspect(lambda r: seen.append(sum(src.acknowledged[-1].values()) if src.acknowledged else 0)) \
        .sink(CollectSink())
    flow.run()
    assert src.acknowledged[-1] == {"p0": 30, "p1": 20}
    # a record is processed before its chunk is acknowledged (never the other way round)
    assert all(acked <= i for i, acked in enumerate(seen))


class _Ticking(ms.connectors.Source):
    """Split "a" delivers one record per poll while split "b" stays silent; each poll moves the
    manual clock by 50 ms, so "b" goes idle while "a" still delivers."""

    replay = "position"

    def __init__(self, n: int) -> None:
        self.n = n
        self.polls = 0

    def open(self, ctx: ms.connectors.SourceContext) -> ms.connectors.SourceReader:
        src = self

        class R(ms.connectors.SourceReader):
            def __init__(self) -> None:
                self.i = 0

            def poll(self, max_records: int) -> list[dict[str, int]] | None:
                if self.i >= src.n:
                    return None
                src.polls += 1
                ctx.clock.advance(50)  # type: ignore[attr-defined]
                self.i += 1
                return [{"k": 1, "ts": self.i * 10}]

            def split(self) -> str:
                return "a"

            def splits(self) -> list[str]:
                return ["a", "b"]

            def snapshot(self) -> int:
                return self.i

            def restore(self, position: int) -> None:
                self.i = position

        return R()

    def describe(self) -> str:
        return "ticking"


def test_a_silent_split_goes_idle_while_another_delivers() -> None:
    src = _Ticking(200)
    fired_at: list[int] = []
    flow = ms.Flow("idle")
    (flow.source(src, watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts", idle_timeout=100))
     .key_by("k").window(ms.windows.tumbling(100)).aggregate(n=ms.agg.count())
     .inspect(lambda r: fired_at.append(src.polls)).sink(CollectSink()))
    flow.run(clock=ms.testing.ManualClock(), mode="native")
    # windows fire while the input goes on (split "b" idle after ~100 ms), not all at its end
    assert fired_at and fired_at[0] < 50


def test_at_most_once_records_a_watermark_that_idleness_moved(tmp_path: Path) -> None:
    """A window fired because a split went idle is not fired again after a crash under at-most-once."""
    seen: list[dict[str, int]] = []

    class Crash(Exception):
        pass

    crash = [True]

    def out(r: dict[str, int]) -> dict[str, int]:
        seen.append(r)
        if crash[0]:
            raise Crash("killed right after the first window came out")
        return r

    def run() -> None:
        flow = ms.Flow("amo-idle")
        # "b" goes idle only after "a" is past the first window's end: the idleness itself fires it,
        # after checkpoints (one per round) that hold its records
        (flow.source(_Ticking(60), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts", idle_timeout=600))
         .key_by("k").window(ms.windows.tumbling(100)).aggregate(n=ms.agg.count()).map(out).sink(CollectSink()))
        flow.run(clock=ms.testing.ManualClock(), mode="native", guarantee="at-most-once",
                 checkpoint_dir=tmp_path / "ck", checkpoint_interval=1)

    with pytest.raises(ms.errors.StepError):
        run()
    crash[0] = False
    run()
    starts = [r["window_start"] for r in seen]
    assert len(starts) == len(set(starts)), f"a window came out twice under at-most-once: {starts}"
