"""What a connector is: sources that read, sinks that write, and the bad-record policy.

The source model
================

A source is a set of **splits**: a Kafka partition, a Redis stream under a
consumer group, a JetStream consumer, a file. A reader hands out records one
split at a time (:meth:`SourceReader.poll` returns records of the split that
:meth:`SourceReader.split` names), and keeps one position per split in what
:meth:`SourceReader.snapshot` returns. The runtime runs one watermark generator
per split; the source's watermark is the minimum over its active splits
(:meth:`SourceReader.splits`), so records in order within each partition are
never late because another partition lags. Splits may come and go while the
job runs (partitions added to a topic, files appearing in a directory).

What a connector can do is **declared** on its class, never probed:

- :attr:`Source.replay`: how the source gets records back after a crash:
  ``"position"`` (it restarts from a position taken by ``snapshot``: files,
  Kafka offsets, the generator), ``"redelivery"`` (the system redelivers what was
  not acknowledged: Redis Streams, JetStream, MQTT, RabbitMQ, a replication slot)
  or ``"none"`` (stdin, a webhook).
- :attr:`SourceReader.columnar`: the reader makes columnar batches (``poll_frame``).
- :meth:`Source.logical_splits`: the source is a fixed set of splits, each a source of its
  own (None: it is one split, read whole by one worker). The count is the source's, never the
  job's parallelism: worker ``w`` of ``n`` reads the contiguous range :func:`split_range` gives it,
  so positions and watermarks are per split at every parallelism (see :class:`SplitSetSource`).
- :attr:`Sink.delivery`: ``"transactional"`` (two-phase commit with checkpoints),
  ``"idempotent"`` (a rewrite replaces: an upsert by key) or ``"none"``;
  :attr:`Sink.resumable`: the output can go on after a restart.
- :attr:`SinkWriter.columnar`: the writer takes columnar batches (``write_frame``).

**Acknowledgement.** :meth:`SourceReader.acknowledge` is called with a position
that ``snapshot`` returned once everything up to it is safe: under at-least-once
and exactly-once when the checkpoint holding that position is complete (commit
Kafka offsets to the group, XACK, JetStream ack, MQTT PUBACK, replication flush);
under at-most-once right after the records were read, before they are processed.
A redelivery source that resumes from a restored position drops the redelivered
records that position already covers, so exactly-once holds.

**Errors.** A connector raises :class:`~millstream.errors.ConnectorError` for
what cannot work (authentication, a missing topic: naming the connector, the
address and the fix), and :class:`~millstream.errors.ConnectorUnavailable` for
what may pass (broker down, timeout); :func:`retry` retries the latter with
backoff, logs each retry, and gives up after the budget. No secret (password,
token, SASL credentials) may appear in ``describe()``, an error, a log line or
a snapshot: :func:`redact_url` strips them from addresses.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from millstream._time import MIN_WATERMARK as _MIN
from millstream.errors import ConfigError, ConnectorError, ConnectorUnavailable, RecordError

if TYPE_CHECKING:
    from millstream._clock import Clock

__all__ = ["Backoff", "DeadLetter", "Delivery", "ErrorPolicy", "Replay", "Sink", "SinkWriter", "Source",
           "SourceContext", "SourceReader", "SplitSetSource", "dead_letter", "redact_url", "retry", "split_range"]

log = logging.getLogger("millstream.connectors")
T = TypeVar("T")

Replay = Literal["position", "redelivery", "none"]
"""How a source gets records back after a crash (see the module docstring)."""

Delivery = Literal["transactional", "idempotent", "none"]
"""What a sink promises when records are written again after a crash."""


@dataclass(frozen=True)
class DeadLetter:
    """Send bad records to ``sink`` as ``{"source", "position", "error", "raw"}`` rows."""

    sink: Sink


ErrorPolicy = Literal["fail", "skip"] | DeadLetter
"""What a source does with a malformed record: ``"fail"`` the job (default),
``"skip"`` it (counted), or send it to a dead-letter sink."""


def dead_letter(sink: Sink) -> DeadLetter:
    """Error policy that writes bad records to ``sink``."""
    if not isinstance(sink, Sink):
        raise ConfigError(f"dead_letter() takes a sink connector, not {sink!r}")
    return DeadLetter(sink)


def check_policy(policy: Any) -> ErrorPolicy:
    if policy in ("fail", "skip") or isinstance(policy, DeadLetter):
        return policy  # type: ignore[no-any-return]
    raise ConfigError(
        f"on_error must be 'fail', 'skip' or millstream.connectors.dead_letter(sink), not {policy!r}"
    )


class SourceContext:
    """Handed to a source reader when it opens: the clock, the bad-record policy, and whether the job
    takes checkpoints (``checkpointed``: without them nothing calls ``acknowledge``, so a redelivery
    source acknowledges what it handed out by itself once the next poll shows it was processed)."""

    def __init__(
        self,
        *,
        step: str,
        clock: Clock,
        policy: ErrorPolicy,
        dead_letter_write: Callable[[dict[str, Any]], None] | None = None,
        checkpointed: bool = False,
    ) -> None:
        self.step = step
        self.clock = clock
        self.policy = policy
        self.checkpointed = checkpointed
        self.skipped = 0
        self.dead_lettered = 0
        self._dead_letter_write = dead_letter_write

    def bad_record(self, problem: str, *, position: str, raw: Any = None) -> None:
        """Report a malformed record. Raises :class:`RecordError` under the ``fail`` policy."""
        err = RecordError(problem, source=self.step, position=position, raw=raw)
        if self.policy == "fail":
            raise err
        if self.policy == "skip":
            self.skipped += 1
            return
        assert self._dead_letter_write is not None
        self.dead_lettered += 1
        self._dead_letter_write(
            {"source": self.step, "position": position, "error": problem, "raw": _printable(raw)}
        )


def _printable(raw: Any) -> Any:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return raw


class SourceReader(ABC):
    """A running source: the executor polls it for records, one split at a time."""

    @property
    def columnar(self) -> bool:
        """Whether :meth:`poll_frame` makes columnar batches (polars DataFrames)."""
        return False

    @abstractmethod
    def poll(self, max_records: int) -> list[Any] | None:
        """Up to ``max_records`` records, all of one split (:meth:`split` names it); ``[]`` when none
        are ready now; ``None`` once the input has ended."""

    def poll_frame(self, max_records: int) -> Any:
        """Like :meth:`poll`, as a polars DataFrame when :attr:`columnar` (a reader may still return a
        list of rows for a chunk it can only make as rows). The default returns :meth:`poll`'s rows."""
        return self.poll(max_records)

    def split(self) -> str | None:
        """The split the records of the last poll came from; None when the source is one split."""
        return None

    def splits(self) -> Collection[str] | None:
        """The splits this reader is assigned now and that have not ended; None when the source is
        one split. An assigned split holds the source's watermark back until it has records or goes
        idle (the strategy's idle timeout); an ended split no longer counts."""
        return None

    def position_of(self, index: int) -> str | None:
        """Where record ``index`` of the last poll came from (e.g. ``events.jsonl:42``,
        ``orders[2]@1041``)."""
        return None

    def wait_hint(self) -> float | None:
        """Seconds until a record may be ready, when the reader knows (a rate-limited generator)."""
        return None

    def watermark(self) -> int | None:
        """A watermark the source itself knows (scripted test sources); None to use the strategy's."""
        return None

    def snapshot(self) -> Any:
        """The reader's position (one per split), for checkpoints. Picklable, without secrets."""
        return None

    def restore(self, position: Any) -> None:
        """Continue from a position taken by :meth:`snapshot`. A redelivery source drops the
        redelivered records that ``position`` already covers."""

    def acknowledge(self, position: Any) -> None:
        """Everything up to ``position`` (a value :meth:`snapshot` returned) is safe: acknowledge it to
        the system (commit offsets, XACK, ack). Called once the checkpoint holding ``position`` is
        complete, or under at-most-once right after the records were read. Must be idempotent."""

    def metrics(self) -> dict[str, int]:
        """Figures the reader counts itself (e.g. ``retries``, ``lag``), shown with the step's."""
        return {}

    def progress(self) -> tuple[int, int] | None:
        """How far through a bounded input the reader is, as ``(done, total)`` in a unit of its own
        (bytes of a file, events of a generator, offsets of a bounded topic), for the percentage and
        the ETA a run shows; None (the default) when the reader cannot tell or the input never ends.
        Called now and then from the thread that polls; must be cheap."""
        return None

    def close(self) -> None:
        """Release files and connections."""


class Source(ABC):
    """A declared input. ``open`` is called when the job runs, never while it is built."""

    #: Whether the input ends by itself.
    bounded: bool = True
    #: How the source gets records back after a crash: ``"position"``, ``"redelivery"`` or ``"none"``.
    replay: Replay = "none"
    on_error: ErrorPolicy = "fail"

    @property
    def replayable(self) -> bool:
        """Whether records can come back after a crash (by position or by redelivery)."""
        return self.replay != "none"

    @property
    def replays_exactly(self) -> bool:
        """Whether a replay gives each record once: from a position, or by redelivery with the
        redelivered records the restored position covers dropped. A redelivery source that cannot
        tell a redelivered record from a new one (e.g. a queue without message ids) says False,
        and exactly-once is refused for it while the flow is built."""
        return self.replay != "none"

    @abstractmethod
    def open(self, ctx: SourceContext) -> SourceReader:
        """Start reading."""

    @abstractmethod
    def describe(self) -> str:
        """A short text for plans and progress, e.g. ``jsonl events.jsonl``. Never a secret."""

    def default_name(self) -> str:
        return "source"

    def logical_splits(self) -> list[Source] | None:
        """The source's fixed logical splits, each a source reading a disjoint part of the input
        (their union is the whole); None (the default) when the source is one split.

        The count is the source's own (a Kafka topic's partitions, ``memory.read(..., splits=4)``),
        never the job's parallelism: a job with ``parallelism=n`` gives worker ``w`` the contiguous
        range :func:`split_range` ``(w, n, count)`` of them, and a job of one process reads them all.
        Each split has its own position and its own watermark generator, so the watermark a record
        meets, and whether it is late, does not depend on the parallelism. Called when the flow is
        compiled, before anything is opened: it must not read the input. A split is not split again.
        """
        return None


def split_range(worker: int, parallelism: int, count: int) -> range:
    """The logical splits worker ``worker`` of ``parallelism`` reads, of ``count``: a contiguous range,
    assigned as key groups are (ranges differ in size by at most one; a worker may get none)."""
    return range(-(-worker * count // parallelism), -(-(worker + 1) * count // parallelism))


def stride_parts(source: Any, n: int) -> list[Source] | None:
    """:meth:`Source.logical_splits` for a source that makes or holds its records by index: ``n``
    copies, split ``j`` taking ``j, j + n, ...`` (the source reads its ``part`` and ``parts``). A paced
    source (``rate``, ``burst``) gives each split ``rate / n``. One split, or a split already: None."""
    import copy
    import math

    if source.parts != 1 or n <= 1:
        return None
    out: list[Source] = []
    for w in range(n):
        part = copy.copy(source)
        part.part, part.parts = w, n
        if getattr(source, "rate", None) is not None:
            part.rate = source.rate / n
            part.burst = max(1, math.ceil(source.burst / n))
        out.append(part)
    return out


def check_splits(splits: Any) -> int:
    """The ``splits=`` option of a source that splits by index: an int >= 1."""
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ConfigError(f"splits must be an int >= 1 (the source's fixed number of splits), not {splits!r}")
    return splits


class SplitSetSource(Source):
    """Some of a source's logical splits, read by one source step (all of them in a job of one
    process; worker ``w``'s range at parallelism ``n``): what the executor opens in place of a source
    whose :meth:`Source.logical_splits` is not None.

    Its reader hands out one split at a time, names it (``split()`` is the split's number, so the
    source step runs one watermark generator per split), and keeps one position per split
    (``snapshot()`` is ``{number: position}``; ``restore`` takes the positions of the splits it reads
    from any such dict, so a checkpoint of another parallelism restores here). With the source's
    watermark ``strategy`` it also **aligns** its splits: a record behind its own split's watermark
    (its time below that split's highest earlier time minus the bound) is handed out only once every
    other split it reads has reached that watermark. The source's watermark (the least over its
    splits) is then exactly that split's when the record is judged, as in any run of any
    parallelism: whether a record is late depends on its split alone. (Between workers the exchange
    does the same: :mod:`millstream._parallel._exchange`.)
    """

    def __init__(self, source: Source, splits: Any, numbers: range, strategy: Any = None) -> None:
        self.source = source
        self.splits = list(splits)
        self.numbers = numbers
        self.strategy = strategy
        self.replay = source.replay
        self.bounded = source.bounded
        self.on_error = source.on_error

    @property
    def replays_exactly(self) -> bool:
        return self.source.replays_exactly

    def open(self, ctx: SourceContext) -> SourceReader:
        return SplitSetReader([s.open(ctx) for s in self.splits], list(self.numbers), self.strategy)

    def describe(self) -> str:
        n = self.numbers
        which = f"split {n.start}" if len(n) == 1 else f"splits {n.start}-{n.stop - 1}" if n else "no split"
        return f"{self.source.describe()}, {which}"

    def default_name(self) -> str:
        return self.source.default_name()


class SplitSetReader(SourceReader):
    """The reader of a :class:`SplitSetSource` (see there).

    It may hold records a split's reader gave it and that it has not handed out yet (a chunk cut for
    alignment): a split's position is therefore the position of its reader before the records held
    plus how many of them were handed out (``{"at": position, "skip": n}``), so that a restore reads
    the held records again.

    **Columnar batches.** When every split's reader is :attr:`~SourceReader.columnar`, so is this
    one: :meth:`poll_frame` takes batches from the splits' ``poll_frame`` and hands them out split by
    split, cut for alignment exactly where :meth:`poll` cuts rows. The event times it needs are
    computed on the batch (the strategy's column or expression, in polars); a batch whose times are
    not integer milliseconds without nulls (which the source step times row by row) is turned into
    the rows its split's reader would have made (``rows_of_frame``) and aligned as rows. So a record
    meets the same watermark in every mode. :meth:`push_down` gives every split's reader the columns
    the flow reads, but not the values it keeps: a reader that left rows out would move its split's
    watermark by records it does not hand out, which this reader could not align.
    """

    def __init__(self, readers: list[SourceReader], numbers: list[int], strategy: Any) -> None:
        self.readers = dict(zip(numbers, readers, strict=True))
        self.active = list(numbers)
        #: per split: the records read and not yet handed out (a list of rows, or a polars DataFrame
        #: from ``poll_frame``), how many of its reader's last poll were handed out before them, and
        #: its reader's position before that poll
        self.held: dict[int, Any] = {j: [] for j in numbers}
        self.taken: dict[int, int] = dict.fromkeys(numbers, 0)
        self.before: dict[int, Any] = {}
        self.skip: dict[int, int] = {}
        #: per split: what its reader's last poll gave, whole (``rows_of_frame`` of a part of it)
        self.whole: dict[int, Any] = {}
        #: per split: the event times of the DataFrame held (alignment only)
        self.held_times: dict[int, Any] = {}
        #: the highest event time of the records handed out, per split (alignment only)
        self.high: dict[int, int] = {}
        self.strategy = strategy
        self.extract: Any = None
        self.bound = 0
        if strategy is not None and len(numbers) > 1:
            from millstream._runtime._sources import compile_extractor

            self.extract = compile_extractor(strategy)
            self.bound = strategy.bound_ms
        self.last: int | None = None
        self.base = 0
        self.turn = 0
        self._frames = False

    @property
    def columnar(self) -> bool:
        return bool(self.readers) and all(r.columnar for r in self.readers.values())

    def split(self) -> str | None:
        return None if self.last is None else str(self.last)

    def splits(self) -> Collection[str] | None:
        return [str(j) for j in self.active]

    def _fill(self, j: int, max_records: int) -> bool:
        """Read split ``j``'s next records unless some are held; False once it has ended."""
        while not len(self.held[j]):
            reader = self.readers[j]
            before = reader.snapshot()
            recs = reader.poll_frame(max_records) if self._frames else reader.poll(max_records)
            if recs is None:
                self.active.remove(j)
                return False
            self.before[j], self.taken[j], self.whole[j] = before, 0, recs
            skip = self.skip.pop(j, 0)
            if skip:  # restored inside a chunk: what was handed out before the checkpoint is done with
                if skip < len(recs):
                    self.held[j], self.taken[j] = recs[skip:], skip
                    self._time_frame(j)
                else:
                    self.skip[j] = skip - len(recs)
                continue
            self.held[j] = recs
            if not len(recs):
                break
            self._time_frame(j)
        return True

    def _time_frame(self, j: int) -> None:
        """A DataFrame held for alignment: its event times, or (when it has no integer times without
        nulls, which the source step would time row by row) its rows instead."""
        held = self.held[j]
        if self.extract is None or isinstance(held, list):
            return
        import polars as pl

        ts = self.strategy.timestamp
        try:
            expr = pl.col(ts) if isinstance(ts, str) else ts.to_polars()
            t = held.select(expr.alias("__t")).to_series()
        except Exception:  # noqa: BLE001 - not a column polars can compute: timed as rows
            t = None
        if t is not None and t.dtype.is_integer() and not t.null_count():
            self.held_times[j] = t.cast(pl.Int64)
            return
        self.whole[j] = rows = self._rows_of(j, self.whole[j])
        self.held[j] = rows[self.taken[j]:] if self.taken[j] else rows

    def _rows_of(self, j: int, frame: Any) -> list[Any]:
        """The rows split ``j``'s reader would make of ``frame`` (the whole of its last poll)."""
        rows_of = getattr(self.readers[j], "rows_of_frame", None)
        if rows_of is not None:
            return list(rows_of(frame))
        return list(frame.to_dicts())

    def _wm(self, j: int) -> int:
        high = self.high.get(j)
        return _MIN if high is None else high - self.bound - 1

    def _ready(self, j: int) -> int:
        """How many of split ``j``'s held records can go now: up to the first one behind the split's
        watermark while another split's watermark is below that."""
        recs = self.held[j]
        if self.extract is None or len(self.active) < 2:
            return len(recs)
        others = min(self._wm(o) for o in self.active if o != j)
        high = self.high.get(j, _MIN)
        if not isinstance(recs, list):  # a DataFrame: the same rule, on its times
            t = self.held_times[j]
            prev = t.cum_max().shift(1, fill_value=high).clip(lower_bound=high)  # the highest time before each
            stop = ((t + self.bound < prev) & (prev > others + self.bound + 1)).arg_true()
            return int(stop[0]) if len(stop) else len(recs)
        try:
            times, _, _ = self.extract(recs, high)
        except Exception:  # noqa: BLE001 - a bad timestamp: the source step's error policy decides
            return len(recs)
        for i, t in enumerate(times):
            if t > high:
                high = t
            elif high != _MIN and t < high - self.bound and others < high - self.bound - 1:
                return i
        return len(recs)

    def poll(self, max_records: int) -> list[Any] | None:
        # every split first reads what it can (so that the splits that ended are known), then they take
        # turns: the first whose next records may go now gives them
        for j in list(self.active):
            self._fill(j, max_records)
        if not self.active:
            return None
        order = self.active[self.turn % len(self.active):] + self.active[:self.turn % len(self.active)]
        blocked: list[tuple[int, int]] = []
        for j in order:
            if not len(self.held[j]):
                continue  # nothing ready now
            n = self._ready(j)
            if n > 0:
                self.turn = self.active.index(j) + 1
                return self._take(j, n)
            blocked.append((self._wm(j), j))
        if blocked and len(blocked) == len(self.active):
            # every split waits at a record behind its own watermark: the one with the least watermark
            # can go (every other split is at or above it)
            return self._take(min(blocked)[1], 1)
        return []

    def poll_frame(self, max_records: int) -> Any:
        """Like :meth:`poll`, with the splits' columnar batches (see the class docstring): a polars
        DataFrame, or a list of rows for a chunk a split's reader made as rows."""
        self._frames = True
        try:
            return self.poll(max_records)
        finally:
            self._frames = False

    def push_down(self, columns: frozenset[str] | None, equals: dict[str, frozenset[Any]]) -> None:
        """The flow reads only ``columns``: each split's reader may leave the other fields out. The
        values the flow keeps (``equals``) are not passed on (see the class docstring)."""
        for r in self.readers.values():
            push = getattr(r, "push_down", None)
            if push is not None:
                push(columns, {})

    def rows_of_frame(self, frame: Any) -> list[Any]:
        """The rows of the batch last handed out, as its split's reader would have made them."""
        j = self.last
        if j is None:
            return list(frame.to_dicts())
        whole = self.whole.get(j)
        if whole is frame:
            return self._rows_of(j, frame)
        if whole is None or isinstance(whole, list):
            return list(frame.to_dicts())
        return self._rows_of(j, whole)[self.base:self.base + len(frame)]

    def _take(self, j: int, n: int) -> list[Any]:
        """Hand out split ``j``'s next ``n`` held records (a list, or a DataFrame under :meth:`poll_frame`)."""
        recs = self.held[j]
        out, self.held[j] = (recs, []) if n >= len(recs) else (recs[:n], recs[n:])
        self.last, self.base = j, self.taken[j]
        self.taken[j] += len(out)
        if self.extract is None:
            return cast(list[Any], out)
        if not isinstance(out, list):
            t = self.held_times.pop(j)
            if n < len(recs):
                t, self.held_times[j] = t[:n], t[n:]
            self.high[j] = max(self.high.get(j, _MIN), int(t.max()))
            return cast(list[Any], out)  # a DataFrame: poll_frame's caller knows
        try:
            _, high, _ = self.extract(out, self.high.get(j, _MIN))
            self.high[j] = high
        except Exception:  # noqa: BLE001,S110 - reported by the source step
            pass
        return out

    def position_of(self, index: int) -> str | None:
        return None if self.last is None else self.readers[self.last].position_of(self.base + index)

    def wait_hint(self) -> float | None:
        hints = [h for j in self.active for h in (self.readers[j].wait_hint(),) if h is not None]
        return min(hints) if hints else None

    def snapshot(self) -> Any:
        out: dict[int, Any] = {}
        for j, r in self.readers.items():
            if len(self.held[j]):
                out[j] = {"at": self.before[j], "skip": self.taken[j]}
            else:
                out[j] = {"at": r.snapshot(), "skip": self.skip.get(j, 0)}
            out[j]["high"] = self.high.get(j)
        return out

    def restore(self, position: Any) -> None:
        if not isinstance(position, dict) or not all(
                isinstance(j, int) and isinstance(p, dict) and "at" in p for j, p in position.items()):
            # taken while the source was read as one split (e.g. a Kafka source without partitions=):
            # read as splits now, nothing of it would be restored and the sources would start over
            raise ConfigError(
                "the checkpoint holds this source's position as one split, and the source is now read as "
                "logical splits: it cannot be resumed that way. Run with the source as it was when the "
                "checkpoint was taken (e.g. kafka.read without partitions=), or start over with a new "
                "checkpoint directory")
        for j, r in self.readers.items():
            if j in position:
                r.restore(position[j]["at"])
                self.held[j], self.taken[j] = [], 0
                self.held_times.pop(j, None)
                if position[j]["skip"]:
                    self.skip[j] = position[j]["skip"]
                if position[j].get("high") is not None:
                    self.high[j] = position[j]["high"]

    def acknowledge(self, position: Any) -> None:
        for j, r in self.readers.items():
            if j in position:
                r.acknowledge(position[j]["at"])

    def metrics(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.readers.values():
            for k, v in r.metrics().items():
                out[k] = out.get(k, 0) + v
        return out

    def progress(self) -> tuple[int, int] | None:
        done = total = 0
        for r in self.readers.values():
            p = r.progress()
            if p is None:
                return None
            done, total = done + p[0], total + p[1]
        return done, total

    def close(self) -> None:
        for r in self.readers.values():
            r.close()


class SinkWriter(ABC):
    """A running sink.

    Transactional sinks (``Sink.delivery == "transactional"``) take part in
    checkpoints with two-phase commit: at a checkpoint, :meth:`pre_commit` makes
    everything written since the previous one durable but invisible and returns a
    picklable transaction; once the checkpoint is complete, :meth:`commit` makes it
    visible. After a crash, :meth:`recover` gets the transactions of the checkpoint
    the job resumes from: it commits them (commit is idempotent) and discards any
    other pending output, so nothing written after that checkpoint stays visible.
    """

    @property
    def columnar(self) -> bool:
        """Whether the writer takes columnar batches: :meth:`write_frame` gets polars DataFrames."""
        return False

    @abstractmethod
    def write(self, records: list[Any], times: list[int] | None) -> None:
        """Write a chunk of records (``times`` their event times, when the stream has them)."""

    def write_frame(self, frame: Any, times: Any) -> None:
        """Write a polars DataFrame (``times`` a Series of event times, or None). Called only when
        :attr:`columnar`; the default writes the frame's rows."""
        self.write(frame.to_dicts(), None if times is None else times.to_list())

    def flush(self) -> None:
        """Make written records durable/visible."""

    def begin(self, *, checkpointed: bool) -> None:
        """Called right after the writer opens. With ``checkpointed`` True, :meth:`recover`
        comes before any write, and a :meth:`close` before it (the job failed while starting)
        must leave every earlier output as it is."""

    def pre_commit(self, checkpoint_id: int) -> Any:
        """Checkpoint ``checkpoint_id`` is being taken: seal what was written since the last one.

        Returns a picklable transaction handle (stored in the checkpoint). The default
        flushes and returns None: fine for sinks that are not transactional.
        """
        self.flush()
        return None

    def commit(self, transaction: Any) -> None:
        """Make a pre-committed transaction visible. Must be idempotent: it may run again after a crash."""

    def recover(self, transactions: list[Any]) -> None:
        """Before writing anything after a restart: commit ``transactions`` (from the restored
        checkpoint) and discard every other pending, uncommitted output."""

    def close(self) -> None:
        """Flush and release resources."""
        self.flush()

    def metrics(self) -> dict[str, int]:
        """Figures the writer counts itself (e.g. ``retries``), shown with the step's."""
        return {}

    def abandon(self) -> None:
        """Release connections without flushing or committing anything, as a crash would (the
        conformance kit uses it to simulate one in process). Default: nothing to release."""


class Sink(ABC):
    """A declared output.

    ``delivery`` says what the sink can promise under replay: ``"transactional"``
    (two-phase commit with checkpoints: exactly-once), ``"idempotent"`` (writing a
    record again replaces it, e.g. an upsert by key: exactly-once in effect), or
    ``"none"`` (a replay writes duplicates: at-least-once at best).
    """

    delivery: Delivery = "none"
    @property
    def resumable(self) -> bool:
        """Whether the output can go on after a restart (a single Parquet file cannot: it is whole
        only once closed)."""
        return True

    @abstractmethod
    def open(self, step: str) -> SinkWriter:
        """Start writing."""

    @abstractmethod
    def describe(self) -> str:
        """A short text for plans and progress."""

    def default_name(self) -> str:
        return "sink"


# -- errors, retries and secrets ---------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """How a connector retries what may pass (:class:`~millstream.errors.ConnectorUnavailable`):
    waits start at ``initial_s``, double up to ``max_s``, and the connector gives up once
    ``budget_s`` have passed since the first failure (then the job fails, or restarts
    from its checkpoint when ``restarts`` allow)."""

    initial_s: float = 0.1
    max_s: float = 5.0
    budget_s: float = 60.0

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s) or self.budget_s < 0:
            raise ConfigError(f"Backoff needs 0 < initial_s <= max_s and budget_s >= 0, got {self}")


def retry(fn: Callable[[], T], *, what: str, backoff: Backoff, sleep: Callable[[float], None] = time.sleep,
          on_retry: Callable[[int, BaseException], None] | None = None) -> T:
    """Call ``fn`` until it returns, retrying :class:`ConnectorUnavailable` with ``backoff``.

    ``what`` names the connector and the operation for the log (``"kafka source 'orders'
    reading 127.0.0.1:9092"``). Each retry logs a warning and calls ``on_retry(attempt, error)``;
    once the budget is spent the last error is raised as a :class:`ConnectorError` that says so.
    """
    attempt = 0
    started = time.monotonic()
    wait = backoff.initial_s
    while True:
        try:
            return fn()
        except ConnectorUnavailable as exc:
            attempt += 1
            spent = time.monotonic() - started
            if spent + wait > backoff.budget_s:
                raise ConnectorError(
                    f"{what}: still failing after {attempt} tries over {spent:.1f}s: {exc.problem}",
                    connector=exc.connector, address=exc.address,
                    fix=exc.fix or "check that the system is up and reachable, or raise the retry budget "
                                   "(backoff=Backoff(budget_s=...))") from exc
            log.warning("%s: %s; retry %d in %.2fs", what, exc.problem, attempt, wait)
            if on_retry is not None:
                on_retry(attempt, exc)
            sleep(wait)
            wait = min(wait * 2, backoff.max_s)


_SECRET_KEYS = ("password", "passwd", "pass", "token", "secret", "sasl.password", "sasl_password", "api_key",
                "apikey", "access_key", "secret_key", "ssl.key.password", "credentials")


def redact_url(url: str) -> str:
    """``url`` without its password and secret query options: safe to print.

    >>> redact_url("postgresql://me:hunter2@db:5432/app?sslmode=require&password=x")
    'postgresql://me:***@db:5432/app?sslmode=require&password=***'
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<address not shown>"
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in creds else f"{user}@{host}"
    query = "&".join(
        f"{k}=***" if k.lower() in _SECRET_KEYS else (f"{k}={v}" if v or "=" in pair else k)
        for pair in parts.query.split("&") if pair
        for k, _, v in (pair.partition("="),)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_options(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of a client's options with every secret replaced by ``***`` (for plans and errors)."""
    return {k: ("***" if any(s in k.lower() for s in _SECRET_KEYS) else v) for k, v in options.items()}
