"""File sinks: JSON lines, CSV, text lines and Parquet, each optionally gzip-compressed;
one file (at-least-once across restarts) or a directory of part files committed with
checkpoints (exactly-once).

The public facade is :mod:`millstream.connectors.files`; the two-phase commit of
part files is in :mod:`._transactional`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson

from millstream._fs import writable_dir
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
from millstream.connectors._transactional import PartFile, TwoPhaseFileWriter, fsync_dir
from millstream.errors import ConfigError, JobError

__all__ = ["FileSink", "WriteOptions", "write"]

log = logging.getLogger("millstream.connectors.files")

_WRITE_EXTENSION = {"jsonl": "jsonl", "csv": "csv", "lines": "txt", "parquet": "parquet"}
_JSON_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class WriteOptions:
    """What :func:`write` was asked to do, validated."""

    path: str
    format: str
    row_group_size: int = 65_536
    transactional: bool = False

    def __post_init__(self) -> None:
        check_format(self.format)
        if self.row_group_size <= 0:
            raise ConfigError(f"row_group_size must be > 0, not {self.row_group_size}")

    @property
    def compressed(self) -> bool:
        return self.path.rstrip("/" + os.sep).endswith(".gz")

    @property
    def extension(self) -> str:
        """The extension of the files written: ``jsonl``, ``csv.gz``..."""
        return _WRITE_EXTENSION[self.format] + (".gz" if self.compressed else "")


class FileSink(Sink):
    """Writes records to one file (``part-0.<ext>`` inside a directory path), or, when
    ``transactional``, to part files of a directory committed with each checkpoint."""

    def __init__(self, options: WriteOptions, *, name: str | None = None) -> None:
        self.options = options
        self.name = name
        self.delivery = "transactional" if options.transactional else "none"

    @property
    def resumable(self) -> bool:
        """Whether a restart from a checkpoint can continue the output (a plain Parquet file cannot)."""
        return self.options.transactional or self.options.format != "parquet"

    def target(self) -> str:
        """Where this sink writes: the directory of a transactional sink, else the file
        (decided when it opens: a directory path gets ``part-0.<ext>``)."""
        p = self.options.path
        if self.options.transactional:
            return p
        if p.endswith(("/", os.sep)) or os.path.isdir(p):
            return os.path.join(p, f"part-0.{_WRITE_EXTENSION[self.options.format]}")
        return p

    def open(self, step: str) -> SinkWriter:
        o = self.options
        target = self.target()
        if o.transactional:
            if os.path.isfile(target):
                raise ConfigError(f"sink {step!r}: a transactional file sink writes a directory, "
                                  f"and {target!r} is a file")
            writable_dir(target, what=f"sink {step!r}: the output folder", error=ConfigError)
            return TwoPhaseFileWriter(target, ext=o.extension, new_part=self._part_maker(), step=step)
        parent = os.path.dirname(target)
        if parent:
            writable_dir(parent, what=f"sink {step!r}: the output folder", error=ConfigError)
        if o.format == "parquet":
            return _ParquetFileWriter(target, o.row_group_size, step)
        return _FileWriter(target, _encoder(o.format), step, compressed=target.endswith(".gz"))

    def _part_maker(self) -> Callable[[str], PartFile]:
        o = self.options
        if o.format == "parquet":
            schema: list[Any] = [None]  # the first part's schema, kept for the next parts

            def parquet_part(path: str) -> PartFile:
                return _ParquetPart(path, o.row_group_size, schema)

            return parquet_part
        encoder = _encoder(o.format)  # shared: a CSV header stays the same across parts

        def encoded_part(path: str) -> PartFile:
            return _EncodedPart(path, encoder, o.compressed)

        return encoded_part

    def describe(self) -> str:
        return f"{self.options.format} {self.options.path}" + (" (transactional)" if self.options.transactional
                                                               else "")

    def default_name(self) -> str:
        return step_name(self.options.path, self.name)


def write(path: str | os.PathLike[str], *, format: str | None = None, name: str | None = None,
          row_group_size: int = 65_536, transactional: bool = False) -> FileSink:
    """A sink that writes records to the file ``path`` (replaced if it exists; parent directories made).

    ``format`` is inferred from the name as for :func:`read`: JSON lines (orjson;
    values JSON cannot hold are written as ``str``), CSV (the header is the first
    record's keys), text lines (``str(record)``) or Parquet (rows buffered and
    written ``row_group_size`` at a time). A name ending in ``.gz`` is compressed.
    A ``path`` ending in ``/``, or naming a directory, gets ``part-0.jsonl`` inside.

    With checkpoints, the file is made durable (flush + fsync) at each checkpoint,
    and a restart from a checkpoint continues it: it appends, after cutting off a
    partly written last record. Records written after that checkpoint are written
    again, so the file may hold duplicates: at-least-once. A plain Parquet file is
    complete only once closed and cannot be continued after a crash.

    ``transactional=True`` gives exactly-once output: ``path`` is a directory (any
    name: ``out/``, ``out.parquet``...; the format from ``format=``, else the name,
    else JSON lines) that receives one part file per checkpoint,
    ``part-<checkpoint:08d>-0.<ext>``, which appears (an atomic rename) only once the
    checkpoint is complete. Until then the records wait in a hidden
    ``.part-0.<id>.<ext>.pending`` file; after a crash, staged files the restored
    checkpoint does not name are deleted. Readers should take only the files whose
    names start with neither ``.`` nor ``_`` (``files.read(path)`` and
    :func:`read_committed` do). Without checkpoints, all output appears when the
    job ends, as ``part-00000000-0.<ext>``. A fresh start (no checkpoint to resume)
    deletes the part files of an earlier run. Give each transactional sink a
    directory of its own.
    """
    p = check_path(path)
    if format is not None:
        fmt = check_format(format)
    else:
        inferred = format_of(p)
        if inferred is None and (transactional or p.endswith(("/", os.sep)) or os.path.isdir(p)):
            inferred = "jsonl"
        if inferred is None:
            raise ConfigError(f"cannot tell the format to write {p!r} in from its name; "
                              f"pass format= one of {', '.join(map(repr, FORMATS))}")
        fmt = inferred
    if not isinstance(transactional, bool):
        raise ConfigError(f"transactional must be True or False, not {transactional!r}")
    if transactional and os.path.isfile(p):
        raise ConfigError(f"a transactional file sink writes a directory of part files, and {p!r} is a file; "
                          "pass a directory path such as 'out/'")
    if fmt == "parquet":
        need_pyarrow("Writing Parquet")
        if p.rstrip("/" + os.sep).endswith(".gz"):
            raise ConfigError("Parquet compresses by itself; drop the .gz from the file name")
    return FileSink(WriteOptions(p, fmt, row_group_size, transactional), name=name)


# -- formats: records to bytes ----------------------------------------------------------------


class _Encoder(ABC):
    """Turns records into the bytes of one line format."""

    @abstractmethod
    def encode(self, records: list[Any], *, at_start: bool) -> bytes:
        """The bytes of ``records``; ``at_start`` when they begin a file (a CSV header goes first)."""

    def complete(self, data: bytes) -> int:
        """How many leading bytes of ``data`` (which starts at a record boundary) are whole records."""
        return data.rfind(b"\n") + 1

    def resume(self, path: str, compressed: bool) -> None:
        """Continue the file ``path``, which already holds records (a CSV sink reads its header)."""


class _JsonlEncoder(_Encoder):
    def encode(self, records: list[Any], *, at_start: bool) -> bytes:
        dumps = orjson.dumps
        try:
            return b"".join([dumps(r, default=str, option=_JSON_OPTIONS) for r in records])
        except orjson.JSONEncodeError:
            for r in records:
                try:
                    dumps(r, default=str, option=_JSON_OPTIONS)
                except orjson.JSONEncodeError as exc:
                    raise ValueError(f"cannot write this record as JSON ({exc}): {r!r:.200}") from exc
            raise


class _LinesEncoder(_Encoder):
    def encode(self, records: list[Any], *, at_start: bool) -> bytes:
        return "".join([f"{r}\n" for r in records]).encode()


class _CsvEncoder(_Encoder):
    """CSV rows of dict records; the header is the first record's keys."""

    def __init__(self) -> None:
        self.fieldnames: list[str] | None = None

    def encode(self, records: list[Any], *, at_start: bool) -> bytes:
        for r in records:
            if not isinstance(r, Mapping):
                raise TypeError(f"a CSV sink writes dict records (one column per key), "
                                f"got {type(r).__name__} {r!r:.200}")
        if not records:
            return b""
        if self.fieldnames is None:
            self.fieldnames = list(records[0])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fieldnames, extrasaction="raise", lineterminator="\n")
        if at_start:
            writer.writeheader()
        try:
            writer.writerows(records)
        except ValueError as exc:
            raise ValueError(f"{exc}; the CSV header (from the first record) is "
                             f"{', '.join(map(str, self.fieldnames))}") from exc
        return buf.getvalue().encode()

    def complete(self, data: bytes) -> int:
        # a row ends at a newline outside quotes: with an even number of quotes before it
        end = quotes = start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            quotes += data.count(b'"', start, nl)
            if quotes % 2 == 0:
                end = nl + 1
            start = nl + 1
        return end

    def resume(self, path: str, compressed: bool) -> None:
        opener: Callable[..., IO[str]] = gzip.open if compressed else open
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), None)
        if header:
            self.fieldnames = header


def _encoder(fmt: str) -> _Encoder:
    if fmt == "jsonl":
        return _JsonlEncoder()
    if fmt == "csv":
        return _CsvEncoder()
    return _LinesEncoder()


# -- bytes to a file ------------------------------------------------------------------------


class _ByteFile:
    """A file written in bytes, gzip-compressed if asked; :meth:`sync` ends the gzip
    member so that the file is whole (readable, continuable) at that point."""

    def __init__(self, path: str, *, compressed: bool, append: bool) -> None:
        self.raw: IO[bytes] = open(path, "ab" if append else "wb", buffering=1 << 16)  # noqa: SIM115
        self.compressed = compressed
        self.member: gzip.GzipFile | None = None
        self.empty = os.fstat(self.raw.fileno()).st_size == 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.compressed:
            if self.member is None:
                self.member = gzip.GzipFile(fileobj=self.raw, mode="wb", compresslevel=6)
            self.member.write(data)
        else:
            self.raw.write(data)
        self.empty = False

    def flush(self) -> None:
        if self.member is not None:
            self.member.flush()
        self.raw.flush()

    def sync(self) -> int:
        """Make everything written durable; returns the size of the file."""
        if self.member is not None:
            self.member.close()  # the gzip trailer; the file itself stays open
            self.member = None
        self.raw.flush()
        os.fsync(self.raw.fileno())
        return os.fstat(self.raw.fileno()).st_size

    def close(self) -> None:
        if self.compressed and self.empty:
            gzip.GzipFile(fileobj=self.raw, mode="wb").close()  # no records: still a valid .gz file
        if self.member is not None:
            self.member.close()
            self.member = None
        self.raw.close()


class _FileWriter(SinkWriter):
    """One file in a line format. Replaced on a fresh start; after a restart from a
    checkpoint (``recover`` with that checkpoint's transactions) it is continued."""

    def __init__(self, path: str, encoder: _Encoder, step: str, *, compressed: bool) -> None:
        self.path = path
        self.encoder = encoder
        self.step = step
        self.compressed = compressed
        self.append = False
        self.file: _ByteFile | None = None
        self.dir_synced = False
        self.checkpointed = False
        self.recovered = False

    def begin(self, *, checkpointed: bool) -> None:
        self.checkpointed = checkpointed

    def _file(self) -> _ByteFile:
        if self.file is None:
            self.file = _ByteFile(self.path, compressed=self.compressed, append=self.append)
        return self.file

    def write(self, records: list[Any], times: list[int] | None) -> None:
        f = self._file()
        f.write(self.encoder.encode(records, at_start=f.empty))

    @property
    def columnar(self) -> bool:
        return True

    def write_frame(self, frame: Any, times: Any) -> None:
        """A columnar batch (micro-batch mode): JSON lines written by polars, other formats as rows."""
        if isinstance(self.encoder, _JsonlEncoder):
            self._file().write(frame.write_ndjson().encode())
        else:
            self.write(frame.to_dicts(), None)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        size = self._file().sync()
        if not self.dir_synced:
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            self.dir_synced = True
        return {"checkpoint": checkpoint_id, "file": os.path.basename(self.path), "bytes": size}

    def recover(self, transactions: list[Any]) -> None:
        """A fresh start (no transactions) replaces the file; a restart continues it.

        The file is cut back to its last whole record (a gzip file: to its size at
        the checkpoint, as its last member is unfinished); every record written
        after the checkpoint stays (at-least-once: the replay writes it again).
        """
        if self.file is not None:
            raise JobError(f"sink {self.step!r}: recover() must come before anything is written")
        self.recovered = True
        self.append = bool(transactions)
        if not self.append or not os.path.exists(self.path):
            return
        marks = [t["bytes"] for t in transactions if isinstance(t, dict) and isinstance(t.get("bytes"), int)]
        if marks:
            self._cut(max(marks))
        elif not self.compressed:
            # at-most-once keeps every record written before the crash, but not a torn last one: the
            # next record would be appended to it, leaving a line that is neither (a kill mid-write)
            self._cut_torn_tail()
        if os.path.getsize(self.path):
            self.encoder.resume(self.path, self.compressed)

    def _cut(self, mark: int) -> None:
        size = os.path.getsize(self.path)
        if size < mark:
            log.warning("sink %r: %s is shorter (%d bytes) than at the checkpoint (%d bytes); appending to it",
                        self.step, self.path, size, mark)
            return
        with open(self.path, "r+b") as fh:
            if self.compressed:
                end = mark  # what follows is a gzip member the crash left unfinished
            else:
                fh.seek(mark)
                end = mark + self.encoder.complete(fh.read())
            if end < size:
                fh.truncate(end)
                os.fsync(fh.fileno())

    def _cut_torn_tail(self) -> None:
        """Cut the file back to its last whole record, reading it in blocks (it may be large)."""
        size = end = offset = 0
        with open(self.path, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            block = b""
            while chunk := fh.read(1 << 20):
                block += chunk
                whole = self.encoder.complete(block)  # the block starts at a record boundary
                if whole:
                    offset += whole
                    end = offset
                    block = block[whole:]
            if end < size:
                log.warning("sink %r: %s ends with a record cut short by the crash (%d bytes): removed",
                            self.step, self.path, size - end)
                fh.truncate(end)
                os.fsync(fh.fileno())

    def close(self) -> None:
        if self.checkpointed and not self.recovered:
            return  # the job failed before recover(): the file keeps what earlier checkpoints made durable
        self._file().close()  # a run that wrote nothing leaves an empty file


# -- Parquet ----------------------------------------------------------------------------------


class _ParquetRows:
    """Rows buffered and written to one Parquet file ``row_group_size`` at a time."""

    def __init__(self, path: str, row_group_size: int, schema: Any = None) -> None:
        self.pa, self.pq = import_parquet("Writing Parquet")
        self.path = path
        self.row_group_size = row_group_size
        self.rows: list[Any] = []
        self.writer: Any = None
        self.schema: Any = schema

    def write(self, records: list[Any]) -> None:
        self.rows.extend(records)
        if len(self.rows) >= self.row_group_size:
            self.write_group()

    def write_group(self) -> None:
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

    def close(self) -> None:
        self.write_group()
        if self.writer is None:
            self.pq.write_table(self.pa.table({}), self.path)  # no records: an empty file, still readable
        else:
            self.writer.close()
            self.writer = None


class _ParquetFileWriter(SinkWriter):
    """One Parquet file. It is whole only once closed, so a restart cannot continue it."""

    def __init__(self, path: str, row_group_size: int, step: str) -> None:
        self.out = _ParquetRows(path, row_group_size)
        self.step = step

    def write(self, records: list[Any], times: list[int] | None) -> None:
        self.out.write(records)

    def flush(self) -> None:
        self.out.write_group()

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        self.out.write_group()
        return {"checkpoint": checkpoint_id, "file": os.path.basename(self.out.path)}

    def recover(self, transactions: list[Any]) -> None:
        if transactions:
            raise JobError(
                f"sink {self.step!r}: a Parquet file is readable only once it is closed, so {self.out.path!r} "
                "cannot be continued after a restart\n  fix: write a directory of Parquet part files "
                "committed with each checkpoint: files.write(dir, format='parquet', transactional=True)"
            )

    def close(self) -> None:
        self.out.close()


# -- part files of a transactional sink -------------------------------------------------------


class _EncodedPart:
    def __init__(self, path: str, encoder: _Encoder, compressed: bool) -> None:
        self.path = path
        self.encoder = encoder
        self.file = _ByteFile(path, compressed=compressed, append=False)

    def write(self, records: list[Any]) -> None:
        self.file.write(self.encoder.encode(records, at_start=self.file.empty))

    def seal(self) -> None:
        self.file.sync()
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):  # removed by a run that took the directory over
            os.unlink(self.path)


class _ParquetPart:
    def __init__(self, path: str, row_group_size: int, schema: list[Any]) -> None:
        self.out = _ParquetRows(path, row_group_size, schema[0])
        self.schema = schema

    def write(self, records: list[Any]) -> None:
        self.out.write(records)
        self.schema[0] = self.out.schema

    def seal(self) -> None:
        self.out.close()
        self.schema[0] = self.out.schema
        with open(self.out.path, "rb") as fh:
            os.fsync(fh.fileno())

    def discard(self) -> None:
        try:
            self.out.close()
        finally:
            with contextlib.suppress(FileNotFoundError):  # removed by a run that took the directory over
                os.unlink(self.out.path)
