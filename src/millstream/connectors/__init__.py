"""Connectors: ``millstream.connectors.<system>.read(...)`` and ``.write(...)``.

Built in (no server needed): ``files`` (JSON lines, CSV, Parquet; bounded or
following), ``stdio``, ``memory``, ``generator``. Connector authors subclass
:class:`Source`/:class:`SourceReader` and :class:`Sink`/:class:`SinkWriter`.
"""

from __future__ import annotations

from millstream.connectors import (
    files,
    generator,
    memory,
    sqlite,  # lookup tables
    stdio,
)
from millstream.connectors._base import (
    DeadLetter,
    ErrorPolicy,
    Sink,
    SinkWriter,
    Source,
    SourceContext,
    SourceReader,
    dead_letter,
)
from millstream.connectors._lookup import LookupTable, LookupTableError

__all__ = [
    "DeadLetter",
    "ErrorPolicy",
    "LookupTable",
    "LookupTableError",
    "Sink",
    "SinkWriter",
    "Source",
    "SourceContext",
    "SourceReader",
    "dead_letter",
    "files",
    "generator",
    "memory",
    "sqlite",
    "stdio",
]
