"""In-memory connectors: a list as a source, a list as a sink.

>>> import millstream as ms
>>> flow = ms.Flow("memory")
>>> out = ms.connectors.memory.write()
>>> flow.source(ms.connectors.memory.read(range(5))).filter(lambda x: x % 2 == 0).sink(out)
>>> _ = flow.run()
>>> out.values
[0, 2, 4]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from millstream.connectors._base import ErrorPolicy, Source, SourceContext, SourceReader, check_policy
from millstream.testing._kit import CollectSink

__all__ = ["MemorySource", "read", "write"]


class MemorySource(Source):
    """A bounded, replayable source over a sequence of records (read in slices, no copy per record)."""

    replayable = True

    def __init__(self, records: Iterable[Any], *, name: str = "memory", on_error: ErrorPolicy = "fail") -> None:
        self.records = records if isinstance(records, list | tuple) else list(records)
        self.name = name
        self.on_error = check_policy(on_error)

    def open(self, ctx: SourceContext) -> SourceReader:
        return _MemoryReader(self)

    def describe(self) -> str:
        return f"memory ({len(self.records):,} records)"

    def default_name(self) -> str:
        return self.name


class _MemoryReader(SourceReader):
    def __init__(self, src: MemorySource) -> None:
        self.records = src.records
        self.name = src.name
        self.pos = 0
        self.chunk_start = 0

    def poll(self, max_records: int) -> list[Any] | None:
        if self.pos >= len(self.records):
            return None
        start = self.pos
        self.chunk_start = start
        self.pos = start + max_records
        chunk = self.records[start:self.pos]
        return chunk if isinstance(chunk, list) else list(chunk)

    def position_of(self, index: int) -> str | None:
        return f"{self.name}[{self.chunk_start + index}]"

    def snapshot(self) -> Any:
        return self.pos

    def restore(self, position: Any) -> None:
        self.pos = position


def read(records: Iterable[Any], *, name: str = "memory", on_error: ErrorPolicy = "fail") -> MemorySource:
    """A source over ``records`` (materialised once if not a list or tuple)."""
    return MemorySource(records, name=name, on_error=on_error)


def write(name: str = "collect") -> CollectSink:
    """A sink that keeps what reaches it in ``.values`` (and event times in ``.times``)."""
    return CollectSink(name)
