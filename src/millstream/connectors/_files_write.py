"""File sinks: JSON lines, CSV, text lines and Parquet, each optionally gzip-compressed.

The public facade is :mod:`millstream.connectors.files`.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, cast

import orjson

from millstream.connectors._base import Sink, SinkWriter
from millstream.connectors._files_common import (
    FORMATS,
    check_format,
    check_path,
    format_of,
    import_parquet,
    need_pyarrow,
    step_name,
)
from millstream.errors import ConfigError

__all__ = ["FileSink", "WriteOptions", "write"]

_WRITE_EXTENSION = {"jsonl": "jsonl", "csv": "csv", "lines": "txt", "parquet": "parquet"}
_JSON_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class WriteOptions:
    """What :func:`write` was asked to do, validated."""

    path: str
    format: str
    row_group_size: int = 65_536

    def __post_init__(self) -> None:
        check_format(self.format)
        if self.row_group_size <= 0:
            raise ConfigError(f"row_group_size must be > 0, not {self.row_group_size}")


class FileSink(Sink):
    """Writes records to one file (``part-0.<ext>`` inside a directory path)."""

    def __init__(self, options: WriteOptions, *, name: str | None = None) -> None:
        self.options = options
        self.name = name

    def target(self) -> str:
        """The file this sink writes (decided when it opens: a directory path gets ``part-0.<ext>``)."""
        p = self.options.path
        if p.endswith(("/", os.sep)) or os.path.isdir(p):
            return os.path.join(p, f"part-0.{_WRITE_EXTENSION[self.options.format]}")
        return p

    def open(self, step: str) -> SinkWriter:
        target = self.target()
        parent = os.path.dirname(target)
        if parent:
            os.makedirs(parent, exist_ok=True)
        fmt = self.options.format
        if fmt == "jsonl":
            return _JsonlWriter(target)
        if fmt == "lines":
            return _LinesWriter(target)
        if fmt == "csv":
            return _CsvWriter(target)
        return _ParquetWriter(target, self.options.row_group_size)

    def describe(self) -> str:
        return f"{self.options.format} {self.options.path}"

    def default_name(self) -> str:
        return step_name(self.options.path, self.name)


def write(path: str | os.PathLike[str], *, format: str | None = None,
          name: str | None = None, row_group_size: int = 65_536) -> FileSink:
    """A sink that writes records to the file ``path`` (replaced if it exists; parent directories made).

    ``format`` is inferred from the name as for :func:`read`: JSON lines (orjson;
    values JSON cannot hold are written as ``str``), CSV (the header is the first
    record's keys), text lines (``str(record)``) or Parquet (rows buffered and
    written ``row_group_size`` at a time). A name ending in ``.gz`` is compressed.
    A ``path`` ending in ``/``, or naming a directory, gets ``part-0.jsonl`` inside.
    """
    p = check_path(path)
    if format is not None:
        fmt = check_format(format)
    else:
        inferred = format_of(p)
        if inferred is None and (p.endswith(("/", os.sep)) or os.path.isdir(p)):
            inferred = "jsonl"
        if inferred is None:
            raise ConfigError(f"cannot tell the format to write {p!r} in from its name; "
                              f"pass format= one of {', '.join(map(repr, FORMATS))}")
        fmt = inferred
    if fmt == "parquet":
        need_pyarrow("Writing Parquet")
        if p.endswith(".gz"):
            raise ConfigError("Parquet compresses by itself; drop the .gz from the file name")
    return FileSink(WriteOptions(p, fmt, row_group_size), name=name)


def _open_binary(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "wb", compresslevel=6))
    return open(path, "wb", buffering=1 << 16)


def _open_text(path: str) -> IO[str]:
    if path.endswith(".gz"):
        return cast(IO[str], gzip.open(path, "wt", encoding="utf-8", newline=""))
    return open(path, "w", encoding="utf-8", newline="", buffering=1 << 16)


class _JsonlWriter(SinkWriter):
    def __init__(self, path: str) -> None:
        self.fh = _open_binary(path)

    def write(self, records: list[Any], times: list[int] | None) -> None:
        dumps = orjson.dumps
        try:
            data = b"".join([dumps(r, default=str, option=_JSON_OPTIONS) for r in records])
        except orjson.JSONEncodeError:
            for r in records:
                try:
                    dumps(r, default=str, option=_JSON_OPTIONS)
                except orjson.JSONEncodeError as exc:
                    raise ValueError(f"cannot write this record as JSON ({exc}): {r!r:.200}") from exc
            raise
        self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class _LinesWriter(SinkWriter):
    def __init__(self, path: str) -> None:
        self.fh = _open_text(path)

    def write(self, records: list[Any], times: list[int] | None) -> None:
        self.fh.write("".join([f"{r}\n" for r in records]))

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class _CsvWriter(SinkWriter):
    def __init__(self, path: str) -> None:
        self.fh = _open_text(path)
        self.writer: csv.DictWriter[str] | None = None

    def write(self, records: list[Any], times: list[int] | None) -> None:
        for r in records:
            if not isinstance(r, Mapping):
                raise TypeError(f"a CSV sink writes dict records (one column per key), "
                                f"got {type(r).__name__} {r!r:.200}")
        if self.writer is None:
            if not records:
                return
            self.writer = csv.DictWriter(self.fh, fieldnames=list(records[0]), extrasaction="raise",
                                         lineterminator="\n")
            self.writer.writeheader()
        try:
            self.writer.writerows(records)
        except ValueError as exc:
            raise ValueError(f"{exc}; the CSV header (from the first record) is "
                             f"{', '.join(map(str, self.writer.fieldnames))}") from exc

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class _ParquetWriter(SinkWriter):
    def __init__(self, path: str, row_group_size: int) -> None:
        self.pa, self.pq = import_parquet("Writing Parquet")
        self.path = path
        self.row_group_size = row_group_size
        self.rows: list[Any] = []
        self.writer: Any = None
        self.schema: Any = None

    def write(self, records: list[Any], times: list[int] | None) -> None:
        self.rows.extend(records)
        if len(self.rows) >= self.row_group_size:
            self._write_group()

    def _write_group(self) -> None:
        rows, self.rows = self.rows, []
        if not rows:
            return
        try:
            table = self.pa.Table.from_pylist(rows, schema=self.schema)
        except (self.pa.ArrowException, TypeError, ValueError) as exc:
            if self.schema is None:
                raise ValueError(f"cannot make a Parquet table of these records: {exc}") from exc
            raise ValueError(f"records do not fit the Parquet schema taken from the first rows "
                             f"({self.schema.to_string(show_schema_metadata=False)}): {exc}") from exc
        if self.writer is None:
            self.schema = table.schema
            self.writer = self.pq.ParquetWriter(self.path, self.schema)
        self.writer.write_table(table, row_group_size=self.row_group_size)

    def flush(self) -> None:
        self._write_group()

    def close(self) -> None:
        self._write_group()
        if self.writer is None:
            self.pq.write_table(self.pa.table({}), self.path)  # no records: an empty file, still readable
        else:
            self.writer.close()
            self.writer = None
