"""Backpressure: a slow sink slows the source down; nothing queues up without bound in between."""

from __future__ import annotations

import time
from typing import Any

import pytest

import millstream as ms
from millstream.connectors._base import Sink, SinkWriter, Source, SourceContext, SourceReader

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")


class Ledger:
    """What the source has handed out and what each sink has received, checked at every poll."""

    def __init__(self, n_sinks: int, per_record: tuple[int, ...] | None = None) -> None:
        self.read = 0
        self.received = [0] * n_sinks
        self.per_record = per_record or (1,) * n_sinks  # sink records per source record
        self.polls = 0
        self.max_ahead = 0

    def note_poll(self, got: int) -> None:
        self.polls += 1
        self.read += got
        behind = min(got // per for got, per in zip(self.received, self.per_record))
        self.max_ahead = max(self.max_ahead, self.read - behind)


class CountingSource(Source):
    def __init__(self, n: int, ledger: Ledger) -> None:
        self.n = n
        self.ledger = ledger

    def open(self, ctx: SourceContext) -> SourceReader:
        return _CountingReader(self)

    def describe(self) -> str:
        return f"counting ({self.n})"


class _CountingReader(SourceReader):
    def __init__(self, src: CountingSource) -> None:
        self.src = src
        self.pos = 0

    def poll(self, max_records: int) -> list[Any] | None:
        if self.pos >= self.src.n:
            return None
        end = min(self.src.n, self.pos + max_records)
        out = [{"k": i % 5, "i": i} for i in range(self.pos, end)]
        self.pos = end
        self.src.ledger.note_poll(len(out))
        return out


class SlowSink(Sink):
    def __init__(self, ledger: Ledger, index: int, delay_s: float = 0.0005) -> None:
        self.ledger = ledger
        self.index = index
        self.delay_s = delay_s
        self.values: list[Any] = []

    def open(self, step: str) -> SinkWriter:
        return _SlowWriter(self)

    def describe(self) -> str:
        return "slow"


class _SlowWriter(SinkWriter):
    def __init__(self, sink: SlowSink) -> None:
        self.sink = sink

    def write(self, records: list[Any], times: list[int] | None) -> None:
        time.sleep(self.sink.delay_s)
        self.sink.values.extend(records)
        self.sink.ledger.received[self.sink.index] += len(records)


@pytest.mark.parametrize("max_chunk", [1, 16, 100])
def test_the_source_never_runs_more_than_a_chunk_ahead_of_a_slow_sink(max_chunk: int) -> None:
    n = 600
    ledger = Ledger(1)
    flow = ms.Flow("slow")
    src = flow.source(CountingSource(n, ledger))
    (src.map(lambda r: {**r, "sq": r["i"] ** 2}).filter(lambda r: True).key_by("k")
        .aggregate(n=ms.agg.count()).sink(SlowSink(ledger, 0)))
    res = flow.run(max_chunk=max_chunk)
    assert ledger.received == [n]
    assert ledger.max_ahead <= max_chunk
    assert ledger.polls >= n // max_chunk
    assert res.records_written == n


def test_with_fan_out_the_slowest_sink_sets_the_pace() -> None:
    n, chunk = 400, 25
    ledger = Ledger(2, per_record=(1, 2))
    flow = ms.Flow("fan")
    src = flow.source(CountingSource(n, ledger))
    src.sink(SlowSink(ledger, 0, delay_s=0))
    src.flat_map(lambda r: [r, r]).sink(SlowSink(ledger, 1, delay_s=0.002))
    flow.run(max_chunk=chunk)
    assert ledger.received == [n, 2 * n]
    assert ledger.max_ahead <= chunk
