"""Connectors: ``millstream.connectors.<system>.read(...)`` and ``.write(...)``.

Built in (no server needed): ``files`` (JSON lines, CSV, Parquet; bounded or
following), ``stdio``, ``memory``, ``generator``, ``sqlite`` (lookup tables).
For the systems where streams live, each with a pip extra that installs its
client (``pip install 'millstream[kafka]'``): ``kafka``, ``redis`` (Streams),
``nats`` (JetStream), ``mqtt``, ``postgres``, ``rabbitmq``, ``http``. These are
imported when first used; a missing client raises a
:class:`~millstream.errors.MissingDependencyError` naming the extra when the
source or sink is declared. Connector authors subclass :class:`Source`/:class:`SourceReader`
and :class:`Sink`/:class:`SinkWriter` (the source model is described in
``millstream.connectors._base``) and check them with ``millstream.testing``'s
conformance kit.
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
    Backoff,
    DeadLetter,
    Delivery,
    ErrorPolicy,
    Replay,
    Sink,
    SinkWriter,
    Source,
    SourceContext,
    SourceReader,
    dead_letter,
    redact_url,
    retry,
)
from millstream.connectors._lookup import LookupTable, LookupTableError

#: Connectors to external systems, imported on first use (their clients are optional extras).
_LAZY = ("http", "kafka", "mqtt", "nats", "postgres", "rabbitmq", "redis")

__all__ = [
    "Backoff",
    "DeadLetter",
    "Delivery",
    "ErrorPolicy",
    "LookupTable",
    "LookupTableError",
    "Replay",
    "Sink",
    "SinkWriter",
    "Source",
    "SourceContext",
    "SourceReader",
    "dead_letter",
    "files",
    "generator",
    "memory",
    "redact_url",
    "retry",
    "sqlite",
    "stdio",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

