from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from millstream._time import MAX_WATERMARK, MIN_WATERMARK, Duration, to_ms
from millstream.changelog import final_table
from millstream.connectors._base import ErrorPolicy, Sink, SinkWriter, Source, SourceContext, SourceReader, check_policy
from millstream.errors import ConfigError, JobError

if TYPE_CHECKING:
    from millstream._api import Flow, Stream


@dataclass(frozen=True)
class Watermark:
    """A scripted watermark advance inside a :class:`TestSource` script."""

    timestamp: int


@dataclass(frozen=True)
class ProcessingTime:
    """A scripted advance of the :class:`ManualClock` inside a :class:`TestSource` script."""

    advance_ms: int


def watermark(timestamp: int) -> Watermark:
    """Script item: the source's watermark moves to ``timestamp`` (ms)."""
    return Watermark(timestamp)


def advance_processing_time(by: Duration) -> ProcessingTime:
    """Script item: the manual clock moves forward by ``by`` (needs ``clock=ManualClock()`` in run)."""
    return ProcessingTime(to_ms(by, "processing time advance"))


class ManualClock:
    """A processing-time clock that moves only when told (``sleep`` advances it too)."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        return self._now

    def advance(self, by: Duration) -> None:
        with self._lock:
            self._now += to_ms(by, "clock advance")

    def set(self, now_ms: int) -> None:
        with self._lock:
            if now_ms < self._now:
                raise ConfigError("a clock does not go back")
            self._now = now_ms

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            self._now += max(1, int(seconds * 1000))


class TestSource(Source):
    """A bounded, replayable source that plays a script of records and markers.

    Script items are records, :func:`watermark` markers (then the source's
    watermark follows the script, not the strategy's bound) and
    :func:`advance_processing_time` markers (they move a :class:`ManualClock`).
    ``chunk`` bounds how many records one poll returns, to exercise chunking.
    """

    __test__ = False  # not a pytest test class
    replay = "position"

    def __init__(self, script: Iterable[Any], *, chunk: int | None = None, name: str = "test-source",
                 on_error: ErrorPolicy = "fail") -> None:
        self.script: tuple[Any, ...] = tuple(script)
        self.chunk = chunk
        self.name = name
        self.on_error = check_policy(on_error)

    def open(self, ctx: SourceContext) -> SourceReader:
        return _ScriptReader(self, ctx)

    def describe(self) -> str:
        n = sum(1 for x in self.script if not isinstance(x, Watermark | ProcessingTime))
        return f"test source ({n} records)"

    def default_name(self) -> str:
        return self.name


class _ScriptReader(SourceReader):
    def __init__(self, src: TestSource, ctx: SourceContext) -> None:
        self.src = src
        self.ctx = ctx
        self.pos = 0
        self.chunk_start = 0
        self.chunk_index: list[int] = []
        self.wm: int | None = None
        self.scripted = any(isinstance(x, Watermark) for x in src.script)

    def poll(self, max_records: int) -> list[Any] | None:
        script = self.src.script
        if self.pos >= len(script):
            if self.scripted:
                self.wm = MAX_WATERMARK
            return None
        limit = min(max_records, self.src.chunk or max_records)
        out: list[Any] = []
        self.chunk_index = []
        while self.pos < len(script) and len(out) < limit:
            item = script[self.pos]
            if isinstance(item, Watermark):
                if out:
                    break  # records first; the watermark comes with the next poll
                self.wm = item.timestamp if self.wm is None else max(self.wm, item.timestamp)
                self.pos += 1
                return []
            if isinstance(item, ProcessingTime):
                if out:
                    break
                clock = self.ctx.clock
                if not isinstance(clock, ManualClock):
                    raise ConfigError("advance_processing_time in a TestSource needs run(clock=ManualClock())")
                clock.advance(item.advance_ms)
                self.pos += 1
                return []
            out.append(item)
            self.chunk_index.append(self.pos)
            self.pos += 1
        return out

    def position_of(self, index: int) -> str | None:
        return f"{self.src.name}[{self.chunk_index[index]}]" if index < len(self.chunk_index) else None

    def wait_hint(self) -> float | None:
        # the rest of the script is ready now: the executor must not wait (and move a manual clock)
        return 0.0 if self.pos < len(self.src.script) else None

    def watermark(self) -> int | None:
        if self.wm is None and self.scripted:
            return MIN_WATERMARK  # scripted watermarks only: the strategy's bound does not apply
        return self.wm

    def snapshot(self) -> Any:
        return {"pos": self.pos, "wm": self.wm}

    def restore(self, position: Any) -> None:
        self.pos = position["pos"]
        self.wm = position["wm"]


class CollectSink(Sink):
    """Collects what reaches it: ``values`` (records), ``times`` (their event times), ``items`` (pairs)."""

    def __init__(self, name: str = "collect") -> None:
        self.name = name
        self.values: list[Any] = []
        self.times: list[int | None] = []
        self.chunks = 0

    @property
    def items(self) -> list[tuple[Any, int | None]]:
        return list(zip(self.values, self.times, strict=True))

    def clear(self) -> None:
        self.values.clear()
        self.times.clear()

    def table(self, key: str | tuple[str, ...] | Callable[[Any], Any] | None = None) -> list[Any]:
        """The final table of the collected changelog (see :func:`millstream.changelog.final_table`):
        the changes applied in order, as a multiset of rows, or one row per ``key`` when given.

        >>> import millstream as ms
        >>> out = ms.testing.CollectSink()
        >>> flow = ms.Flow("counts")
        >>> words = flow.source(ms.testing.TestSource([{"w": "a"}, {"w": "b"}, {"w": "a"}]))
        >>> words.key_by("w").aggregate(n=ms.agg.count(), changelog=True).sink(out)
        >>> _ = flow.run()
        >>> len(out.values)
        4
        >>> out.table(key="w")
        [{'w': 'a', 'n': 2}, {'w': 'b', 'n': 1}]
        """
        return final_table(self.values, key)

    def open(self, step: str) -> SinkWriter:
        return _CollectWriter(self)

    def describe(self) -> str:
        return "collect (in memory)"

    def default_name(self) -> str:
        return self.name


class _CollectWriter(SinkWriter):
    def __init__(self, sink: CollectSink) -> None:
        self.sink = sink

    def write(self, records: list[Any], times: list[int] | None) -> None:
        self.sink.chunks += 1
        self.sink.values.extend(records)
        self.sink.times.extend(times if times is not None else [None] * len(records))


class TransactionalCollectSink(CollectSink):
    """A :class:`CollectSink` that takes part in checkpoints with two-phase commit
    (``delivery == "transactional"``), to test exactly-once in memory.

    ``values``/``times``/``items`` hold committed records only; ``pending`` what
    was pre-committed but not committed yet. Records written after the last
    pre-commit are the writer's own until the next one. ``recover`` commits the
    restored checkpoint's transactions and drops everything else pending; with no
    transactions (a fresh start) it also clears what earlier runs committed. A run
    without checkpoints (no ``recover`` or ``pre_commit`` call) commits everything
    when its writer closes.
    """

    delivery = "transactional"

    def __init__(self, name: str = "collect") -> None:
        super().__init__(name)
        self.staged: dict[str, list[tuple[Any, int | None]]] = {}
        self.committed: set[str] = set()

    @property
    def pending(self) -> list[Any]:
        """Records pre-committed, waiting for their commit."""
        return [v for rows in self.staged.values() for v, _ in rows]

    def clear(self) -> None:
        super().clear()
        self.staged.clear()
        self.committed.clear()

    def open(self, step: str) -> SinkWriter:
        return _TransactionalCollectWriter(self, step)

    def describe(self) -> str:
        return "collect (in memory, transactional)"


class _TransactionalCollectWriter(SinkWriter):
    def __init__(self, sink: TransactionalCollectSink, step: str) -> None:
        self.sink = sink
        self.step = step
        self.buffer: list[tuple[Any, int | None]] = []
        self.coordinated = False

    def write(self, records: list[Any], times: list[int] | None) -> None:
        self.sink.chunks += 1
        self.buffer.extend(zip(records, times if times is not None else [None] * len(records), strict=True))

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        self.coordinated = True
        txn = uuid.uuid4().hex
        self.sink.staged[txn] = self.buffer
        self.buffer = []
        return {"checkpoint": checkpoint_id, "txn": txn}

    def commit(self, transaction: Any) -> None:
        if transaction is None:
            return
        txn = transaction["txn"]
        rows = self.sink.staged.pop(txn, None)
        if rows is None:
            if txn in self.sink.committed:
                return  # committed before: commit is idempotent
            raise JobError(f"sink {self.step!r} has no pending transaction of checkpoint "
                           f"{transaction.get('checkpoint')}")
        self.sink.committed.add(txn)
        for value, ts in rows:
            self.sink.values.append(value)
            self.sink.times.append(ts)

    def recover(self, transactions: list[Any]) -> None:
        self.coordinated = True
        self.buffer = []
        if not transactions:
            self.sink.clear()
            return
        for txn in transactions:
            self.commit(txn)
        self.sink.staged.clear()

    def close(self) -> None:
        if not self.coordinated and self.buffer:
            self.commit(self.pre_commit(0))
        self.buffer = []


def run_collect(flow: Flow, stream: Stream, **run_options: Any) -> list[Any]:
    """Sink ``stream`` into a fresh :class:`CollectSink`, run ``flow`` to the end, return the records."""
    sink = CollectSink()
    stream.sink(sink)
    flow.run(**run_options)
    return sink.values




class PartitionedTestSource(Source):
    """A bounded, replayable source of several splits (like a topic's partitions), for testing
    per-split watermarks and connectors' split handling.

    ``partitions`` maps a split name to its records. ``schedule`` says which split each poll reads
    (one chunk of at most ``chunk`` records per entry; default round-robin); once the schedule is
    spent the remaining records are read round-robin. A split leaves ``splits()`` when its records
    are all read, except the ``idle`` ones: assigned, never any record, they hold the watermark
    back until the strategy's idle timeout (use a :class:`ManualClock`).

    >>> import millstream as ms
    >>> from millstream.testing import PartitionedTestSource, CollectSink
    >>> src = PartitionedTestSource({"p0": [{"ts": 1}, {"ts": 50}], "p1": [{"ts": 2}, {"ts": 9}]},
    ...                             schedule=["p0", "p0", "p1", "p1"], chunk=1)
    >>> flow = ms.Flow("splits")
    >>> s = flow.source(src, watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    >>> out, late = CollectSink(), CollectSink()
    >>> w = s.key_by(lambda r: "k").window(ms.windows.tumbling(10)).aggregate(n=ms.agg.count())
    >>> w.sink(out); w.late().sink(late)
    >>> _ = flow.run()
    >>> [r["n"] for r in out.values], late.values    # p1 lags behind p0, yet none of its records is late
    ([3, 1], [])
    """

    __test__ = False
    replay = "position"

    def __init__(self, partitions: dict[str, Iterable[Any]], *, schedule: Iterable[str] = (),
                 chunk: int | None = None, idle: Iterable[str] = (), name: str = "partitioned-test-source",
                 on_error: ErrorPolicy = "fail") -> None:
        self.partitions = {str(k): tuple(v) for k, v in partitions.items()}
        self.schedule = tuple(schedule)
        self.idle = tuple(idle)
        unknown = [s for s in (*self.schedule, *self.idle) if s not in self.partitions and s not in self.idle]
        if unknown:
            raise ConfigError(f"schedule names unknown splits {unknown}; splits: {sorted(self.partitions)}")
        self.chunk = chunk
        self.name = name
        self.on_error = check_policy(on_error)
        #: the positions acknowledged so far, in order (what a broker would have been told)
        self.acknowledged: list[dict[str, int]] = []

    def open(self, ctx: SourceContext) -> SourceReader:
        return _PartitionedReader(self)

    def describe(self) -> str:
        n = sum(len(v) for v in self.partitions.values())
        return f"partitioned test source ({len(self.partitions)} splits, {n} records)"

    def default_name(self) -> str:
        return self.name


class _PartitionedReader(SourceReader):
    def __init__(self, src: PartitionedTestSource) -> None:
        self.src = src
        self.offsets = dict.fromkeys(src.partitions, 0)
        self.polls = 0
        self.current: str | None = None
        self.first = 0

    def _next_split(self) -> str | None:
        live = [s for s, recs in self.src.partitions.items() if self.offsets[s] < len(recs)]
        if not live:
            return None
        if self.polls < len(self.src.schedule):
            s = self.src.schedule[self.polls]
            if s in live:
                return s
        return live[self.polls % len(live)]

    def poll(self, max_records: int) -> list[Any] | None:
        split = self._next_split()
        self.polls += 1
        if split is None:
            return None
        recs = self.src.partitions[split]
        start = self.offsets[split]
        stop = min(len(recs), start + min(max_records, self.src.chunk or max_records))
        self.offsets[split] = stop
        self.current, self.first = split, start
        return list(recs[start:stop])

    def split(self) -> str | None:
        return self.current

    def splits(self) -> list[str]:
        return [s for s, recs in self.src.partitions.items() if self.offsets[s] < len(recs)] + list(self.src.idle)

    def position_of(self, index: int) -> str | None:
        return f"{self.current}@{self.first + index}"

    def snapshot(self) -> Any:
        return {"offsets": dict(self.offsets), "polls": self.polls}

    def restore(self, position: Any) -> None:
        self.offsets = dict(position["offsets"])
        self.polls = position["polls"]

    def acknowledge(self, position: Any) -> None:
        if not self.src.acknowledged or self.src.acknowledged[-1] != position["offsets"]:
            self.src.acknowledged.append(dict(position["offsets"]))
