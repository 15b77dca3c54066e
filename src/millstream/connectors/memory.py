"""In-memory connectors: a list as a source, a list as a sink, a keyed table as a sink.

>>> import millstream as ms
>>> flow = ms.Flow("memory")
>>> out = ms.connectors.memory.write()
>>> flow.source(ms.connectors.memory.read(range(5))).filter(lambda x: x % 2 == 0).sink(out)
>>> _ = flow.run()
>>> out.values
[0, 2, 4]

:func:`upsert` keeps the latest record per key: writing a record again replaces it,
so a replay after a restart changes nothing (``delivery == "idempotent"``), the
model of an idempotent sink:

>>> table = ms.connectors.memory.upsert(key="k")
>>> flow = ms.Flow("latest")
>>> flow.source(ms.connectors.memory.read([{"k": "a", "n": 1}, {"k": "b", "n": 2}, {"k": "a", "n": 3}])).sink(table)
>>> _ = flow.run()
>>> table.table
{'a': {'k': 'a', 'n': 3}, 'b': {'k': 'b', 'n': 2}}

It also applies a changelog (see :mod:`millstream.changelog`): a ``-D`` record deletes its
key, a ``-U`` is skipped (the ``+U`` that follows replaces the row), ``+I`` and ``+U``
store the row without its ``"_change"`` field:

>>> table = ms.connectors.memory.upsert(key="k")
>>> flow = ms.Flow("counts")
>>> words = flow.source(ms.connectors.memory.read([{"k": "a"}, {"k": "b"}, {"k": "a"}]))
>>> words.key_by("k").aggregate(n=ms.agg.count(), changelog=True).sink(table)
>>> _ = flow.run()
>>> table.table
{'a': {'k': 'a', 'n': 2}, 'b': {'k': 'b', 'n': 1}}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from millstream._location import callable_name
from millstream.changelog import CHANGE, DELETE, UPDATE_BEFORE, change_of, strip
from millstream.connectors._base import (
    ErrorPolicy,
    Sink,
    SinkWriter,
    Source,
    SourceContext,
    SourceReader,
    check_policy,
    check_splits,
    stride_parts,
)
from millstream.errors import ConfigError
from millstream.testing._kit import CollectSink

__all__ = ["MemorySource", "UpsertSink", "read", "upsert", "write"]


class MemorySource(Source):
    """A bounded, replayable source over a sequence of records (read in slices, no copy per record).

    With ``splits=s`` (> 1) it is ``s`` logical splits by stride: split ``j`` holds records ``j, j + s,
    j + 2s, ...``, each with its own position and watermark, at every parallelism (see
    :meth:`~millstream.connectors.Source.logical_splits`)."""

    replay = "position"
    #: this source (a split of one) reads records ``part, part + parts, ...`` (see :meth:`logical_splits`)
    part = 0
    parts = 1

    def __init__(self, records: Iterable[Any], *, name: str = "memory", on_error: ErrorPolicy = "fail",
                 splits: int = 1) -> None:
        self.splits = check_splits(splits)
        self.frame: Any = None
        if _is_polars_frame(records):  # a DataFrame: batches of it as they are, or its rows as dicts
            self.frame = records
            self.records: Any = _FrameRows(records)
        else:
            self.records = records if isinstance(records, list | tuple) else list(records)
        self.name = name
        self.on_error = check_policy(on_error)

    def open(self, ctx: SourceContext) -> SourceReader:
        return _MemoryReader(self)

    def logical_splits(self) -> list[Source] | None:
        """``splits`` splits by stride over the same records (nothing copied); None for one."""
        return stride_parts(self, self.splits)

    def describe(self) -> str:
        if self.parts > 1:
            p, n = self.part, self.parts
            return f"memory ({len(self.records):,} records, split {p} of {n}: records {p}, {p + n}, ...)"
        return f"memory ({len(self.records):,} records{f', {self.splits} splits' if self.splits > 1 else ''})"

    def default_name(self) -> str:
        return self.name


def _is_polars_frame(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and type(obj).__module__.startswith("polars")


class _FrameRows:
    """The rows of a polars DataFrame as dicts, a slice at a time."""

    def __init__(self, frame: Any) -> None:
        self.frame = frame

    def __len__(self) -> int:
        return int(self.frame.height)

    def __getitem__(self, sl: slice) -> list[Any]:
        return list(self.frame[sl].to_dicts())


class _MemoryReader(SourceReader):
    """Reads ``records[part::parts]`` a slice at a time; positions count the part's records."""

    def __init__(self, src: MemorySource) -> None:
        self.records = src.records
        self.frame = src.frame
        self.name = src.name
        self.part, self.parts = src.part, src.parts
        #: how many records this reader reads
        self.size = max(0, -(-(len(self.records) - self.part) // self.parts))
        self.pos = 0
        self.chunk_start = 0

    @property
    def columnar(self) -> bool:
        return self.frame is not None

    def poll_frame(self, max_records: int) -> Any:
        """The next slice of the DataFrame as it is (no copy; every ``parts``-th row of it for a part)."""
        if self.pos >= self.size:
            return None
        start = self.chunk_start = self.pos
        self.pos = start + max_records
        if self.parts == 1:
            return self.frame.slice(start, max_records)
        first = self.part + start * self.parts
        return self.frame.slice(first, max_records * self.parts).gather_every(self.parts)

    def poll(self, max_records: int) -> list[Any] | None:
        if self.pos >= self.size:
            return None
        start = self.pos
        self.chunk_start = start
        self.pos = start + max_records
        if self.parts == 1:
            chunk = self.records[start:self.pos]
        else:
            first = self.part + start * self.parts
            chunk = self.records[first:first + max_records * self.parts][::self.parts]
        return chunk if isinstance(chunk, list) else list(chunk)

    def position_of(self, index: int) -> str | None:
        return f"{self.name}[{self.part + (self.chunk_start + index) * self.parts}]"

    def snapshot(self) -> Any:
        return self.pos

    def restore(self, position: Any) -> None:
        self.pos = position


def read(records: Iterable[Any], *, name: str = "memory", on_error: ErrorPolicy = "fail",
         splits: int = 1) -> MemorySource:
    """A source over ``records`` (materialised once if not a list or tuple).

    ``splits``: how many logical splits the records make, by stride (split ``j``: records ``j, j +
    splits, ...``), each with its own position and watermark; a job with ``parallelism=n`` reads them
    on its ``n`` workers. Default 1: one split, read by one worker.

    ``records`` may be a polars DataFrame: the micro-batch and batch executors take
    slices of it as they are, the native one its rows as dicts.

    >>> import polars as pl
    >>> import millstream as ms
    >>> flow = ms.Flow("frame")
    >>> out = ms.connectors.memory.write()
    >>> src = ms.connectors.memory.read(pl.DataFrame({"id": [1, 2, 3], "v": [10, 20, 30]}))
    >>> flow.source(src).filter(ms.col("v") > 15).sink(out)
    >>> _ = flow.run(mode="microbatch")
    >>> out.values
    [{'id': 2, 'v': 20}, {'id': 3, 'v': 30}]
    """
    return MemorySource(records, name=name, on_error=on_error, splits=splits)


def write(name: str = "collect") -> CollectSink:
    """A sink that keeps what reaches it in ``.values`` (and event times in ``.times``)."""
    return CollectSink(name)


class UpsertSink(Sink):
    """An in-memory table: ``table`` maps each key to the last record written with it.

    A changelog is applied (see :mod:`millstream.changelog`): ``-D`` deletes the key,
    ``-U`` is skipped (its ``+U`` follows), ``+I``/``+U`` store the row without the
    ``"_change"`` field; records without it are stored as they are.

    Idempotent: writing a record again (a replay after a restart) leaves the same table;
    for a changelog, as long as the upsert key identifies the changelog's rows (each
    change then sets or deletes one key, and the last change of a key decides).
    """

    delivery = "idempotent"

    def __init__(self, key: str | tuple[str, ...] | Callable[[Any], Any], *, name: str = "upsert") -> None:
        if not (callable(key) or (isinstance(key, str) and key)
                or (isinstance(key, tuple) and key and all(isinstance(k, str) and k for k in key))):
            raise ConfigError(f"upsert key must be a field name, a tuple of field names or a function, not {key!r}")
        self.key = key
        self.name = name
        self.table: dict[Any, Any] = {}
        self.writes = 0

    def key_of(self, record: Any) -> Any:
        """The key ``record`` is stored under."""
        key = self.key
        if callable(key):
            return key(record)
        if not isinstance(record, Mapping):
            raise TypeError(f"upsert by field {key!r} needs dict records, got {type(record).__name__} {record!r:.200}")
        try:
            return record[key] if isinstance(key, str) else tuple(record[k] for k in key)
        except KeyError as exc:
            raise KeyError(f"record has no field {exc.args[0]!r} to key the upsert by: {record!r:.200}") from None

    def open(self, step: str) -> SinkWriter:
        return _UpsertWriter(self)

    def describe(self) -> str:
        k = self.key
        what = k if isinstance(k, str) else ", ".join(k) if isinstance(k, tuple) else callable_name(k)
        return f"upsert by {what} (in memory)"

    def default_name(self) -> str:
        return self.name


class _UpsertWriter(SinkWriter):
    def __init__(self, sink: UpsertSink) -> None:
        self.sink = sink

    def write(self, records: list[Any], times: list[int] | None) -> None:
        table, key_of = self.sink.table, self.sink.key_of
        for r in records:
            if isinstance(r, dict) and CHANGE in r:
                kind = change_of(r)
                if kind == UPDATE_BEFORE:
                    continue
                row = strip(r)
                if kind == DELETE:
                    table.pop(key_of(row), None)
                else:
                    table[key_of(row)] = row
            else:
                table[key_of(r)] = r
        self.sink.writes += len(records)


def upsert(key: str | tuple[str, ...] | Callable[[Any], Any], *, name: str = "upsert") -> UpsertSink:
    """A sink that keeps the last record per ``key`` (a field, a tuple of fields or a function) in ``.table``."""
    return UpsertSink(key, name=name)
