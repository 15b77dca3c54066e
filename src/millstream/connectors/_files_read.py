"""File sources: JSON lines, CSV, text lines and Parquet; bounded or following like ``tail -F``.

The public facade is :mod:`millstream.connectors.files`. Line formats are read in
large binary blocks split with ``bytes.split``; a chunk of lines is parsed in one
tight loop and only a chunk that holds a bad line is parsed again line by line,
so that the bad line can be reported with its file and line number.
"""

from __future__ import annotations

import copy
import csv
import fnmatch
import gzip
import importlib.util
import io
import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any, Literal, cast

import orjson

from millstream._time import to_ms
from millstream.connectors._base import (
    ErrorPolicy,
    Source,
    SourceContext,
    SourceReader,
    check_policy,
    check_splits,
)
from millstream.connectors._files_common import (
    EXTENSIONS,
    FORMATS,
    MAX_CSV_RECORD_LINES,
    MAX_JSON_DEPTH,
    Tally,
    check_format,
    check_path,
    format_of,
    import_parquet,
    json_depth,
    need_pyarrow,
    step_name,
    suspect_json_lines,
    too_deep,
)
from millstream.connectors._jsondecode import ColumnarJSON
from millstream.errors import ConfigError, RecordError

__all__ = ["FileSource", "ReadOptions", "parse_json_lines", "parse_text_lines", "read"]

log = logging.getLogger("millstream.connectors.files")

_PATTERNS: dict[str, tuple[str, ...]] = {
    "jsonl": ("*.jsonl", "*.ndjson", "*.json", "*.jsonl.gz", "*.ndjson.gz", "*.json.gz"),
    "csv": ("*.csv", "*.csv.gz"),
    "lines": ("*.txt", "*.log", "*.txt.gz", "*.log.gz"),
    "parquet": ("*.parquet", "*.pq"),
}
_BLOCK = 1 << 20
_BOM = b"\xef\xbb\xbf"


def _seconds(value: float | timedelta, what: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a number of seconds or a timedelta, not {value!r}")
    return float(value)


_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off"})


def _to_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r} (expected true/false, yes/no, 1/0)")


# -- reading: declarations ----------------------------------------------------------


@dataclass(frozen=True)
class ReadOptions:
    """What :func:`read` was asked to do, validated. Frozen, so a source is a plain value."""

    path: str
    format: str
    follow: bool = False
    pattern: tuple[str, ...] = ()
    poll_interval_s: float = 0.2
    max_idle_ms: int | None = None
    csv_types: tuple[tuple[str, Callable[[str], Any]], ...] = ()
    delimiter: str = ","
    encoding: str = "utf-8"
    block_size: int = _BLOCK

    def __post_init__(self) -> None:
        check_format(self.format)
        if not isinstance(self.follow, bool):
            raise ConfigError(f"follow must be True or False, not {self.follow!r}")
        if self.poll_interval_s <= 0:
            raise ConfigError(f"poll_interval must be > 0 seconds, not {self.poll_interval_s}")
        if self.max_idle_ms is not None and self.max_idle_ms <= 0:
            raise ConfigError(f"max_idle must be > 0, not {self.max_idle_ms} ms")
        if self.max_idle_ms is not None and not self.follow:
            raise ConfigError("max_idle only applies to a following source; pass follow=True or drop max_idle")
        if self.csv_types and self.format != "csv":
            raise ConfigError(f"csv_types only applies to CSV input, and this source reads {self.format}")
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1:
            raise ConfigError(f"delimiter must be one character, not {self.delimiter!r}")
        if self.block_size < 1024:
            raise ConfigError(f"block_size must be at least 1024 bytes, not {self.block_size}")

    @property
    def patterns(self) -> tuple[str, ...]:
        """File name patterns that select the files of a directory."""
        return self.pattern or _PATTERNS[self.format]


class FileSource(Source):
    """Reads a file, or the files of a directory in name order; follows them when ``follow``.

    ``stop()`` ends a following source once it has read what its files hold now.

    With ``splits=n`` (> 1) it is ``n`` fixed logical splits (:meth:`logical_splits`): a directory's
    files dealt by a hash of their names, or one file of lines cut into byte ranges. A job with
    ``parallelism=p`` gives each worker a range of them; with ``splits=1`` (the default) it is one
    split, read whole on worker 0.
    """

    replay = "position"
    #: this source (a split of one) reads split ``part`` of ``parts`` (see :meth:`logical_splits`)
    part = 0
    parts = 1

    def __init__(self, options: ReadOptions, *, on_error: ErrorPolicy = "fail", name: str | None = None,
                 splits: int = 1) -> None:
        self.options = options
        self.on_error = check_policy(on_error)
        self.name = name
        self.bounded = not options.follow
        self.splits = check_splits(splits)
        self._stop = threading.Event()
        #: how ``splits`` cut the input (None: one split), found (or refused) now, while the flow is built
        self.split_by: Literal["files", "bytes"] | None = self._split_kind() if self.splits > 1 else None

    def stop(self) -> None:
        """End the input once what the files hold now has been read (thread-safe).

        Sticky: a stopped source stays stopped, so build a new one to read again. Its splits
        (:meth:`logical_splits`) share it: stopping the source stops them all.
        """
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def open(self, ctx: SourceContext) -> SourceReader:
        return _FileReader(self, ctx)

    def _split_kind(self) -> Literal["files", "bytes"]:
        """How ``splits`` cut the input: ``"files"`` for a directory (a path that is one, or ends with
        a separator), ``"bytes"`` for one uncompressed file of JSON lines or text; anything else is
        refused with a :class:`ConfigError` that says why and what to do instead."""
        o = self.options
        if os.path.isdir(o.path) or o.path.endswith(("/", os.sep)):
            return "files"
        where = f"source {self.default_name()!r}: files.read({o.path!r}, splits={self.splits})"
        fix = ("put the input in a directory of files and read the directory (its files are dealt to the "
               "splits by name), or drop splits=")
        if o.follow:
            raise ConfigError(f"{where} follows one file, which grows while it is read, so it cannot be cut into "
                              f"fixed byte ranges; {fix}")
        if o.path.endswith(".gz"):
            raise ConfigError(f"{where}: a compressed file can only be read from its start, so it cannot be cut "
                              f"into byte ranges; {fix}")
        if o.format == "csv":
            raise ConfigError(f"{where}: a CSV file cannot be cut into byte ranges (a quoted field may span lines, "
                              f"so a range cannot tell where its first record starts, and only the first range "
                              f"holds the header); {fix}")
        if o.format == "parquet":
            raise ConfigError(f"{where}: a Parquet file is not cut into splits; {fix}")
        return "bytes"

    def logical_splits(self) -> list[Source] | None:
        """``splits`` fixed splits (None for one), each a copy of this source reading its part:

        - a directory: split ``j`` reads the files whose name hashes to ``j``
          (``crc32(name) % splits``), in name order. A file's split depends on its name alone, so
          files added later (while following, or between a checkpoint and its resume) go to a split
          of their own without moving any other file: every split's position stays valid.
        - one uncompressed JSON-lines or text file: split ``j`` reads the lines that *start* in bytes
          ``[j * size // splits, (j + 1) * size // splits)`` (the last split reads to the end), so a
          line crossing a boundary is read once, by the split where it starts. The ranges are found
          when a split opens and kept in its checkpointed position.

        Whether the path is a directory was seen when the source was built; what a split reads is
        fixed when it opens.
        """
        if self.parts != 1 or self.split_by is None:
            return None
        out: list[Source] = []
        for j in range(self.splits):
            part = copy.copy(self)  # shares the stop event: stop() reaches every split
            part.part, part.parts = j, self.splits
            out.append(part)
        return out

    def owns(self, name: str) -> bool:
        """Whether this source reads the file ``name`` of its directory (always, unless it is a split by files)."""
        if self.parts == 1 or self.split_by != "files":
            return True
        return zlib.crc32(name.encode("utf-8", "surrogateescape")) % self.parts == self.part

    def describe(self) -> str:
        o = self.options
        text = f"{o.format} {o.path}"
        if o.pattern:
            text += f" ({', '.join(o.pattern)})"
        if self.parts > 1:
            p, n = self.part, self.parts
            what = f"the files whose name hashes to {p}" if self.split_by == "files" else \
                f"the lines starting in bytes {p}/{n} to {p + 1}/{n} of its size"
            text += f", split {p} of {n}: {what}"
        elif self.split_by is not None:
            how = "files by a hash of their names" if self.split_by == "files" else "by byte ranges"
            text += f", {self.splits} splits ({how})"
        return text + (", following" if o.follow else "")

    def default_name(self) -> str:
        return step_name(self.options.path, self.name)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_stop"] = self._stop.is_set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        stopped = state.pop("_stop")
        self.__dict__.update(state)
        self._stop = threading.Event()
        if stopped:
            self._stop.set()


def read(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    follow: bool = False,
    on_error: ErrorPolicy = "fail",
    name: str | None = None,
    poll_interval: float | timedelta = 0.2,
    max_idle: int | timedelta | None = None,
    pattern: str | tuple[str, ...] | None = None,
    csv_types: Mapping[str, Callable[[str], Any]] | None = None,
    delimiter: str = ",",
    encoding: str = "utf-8",
    block_size: int = _BLOCK,
    splits: int = 1,
) -> FileSource:
    """A source that reads the file ``path``, or the files of the directory ``path`` in name order.

    - ``format``: ``"jsonl"`` (one JSON object per line, parsed with orjson),
      ``"csv"`` (a header line, then rows as dicts of strings), ``"lines"`` (each
      line a ``str``) or ``"parquet"`` (rows as dicts; needs ``millstream[parquet]``).
      Inferred from the file name when None; ``.gz`` files are decompressed.
      In the micro-batch and batch modes JSON lines and Parquet are read as columnar
      batches (polars): a batch has every field of its lines, null where a line has
      none. JSON lines are typed exactly as in native mode: a chunk of lines the columnar
      decoder cannot prove it types as orjson does (a field mixing types, floats, nulls,
      nested values, escapes other than ``\\"`` and ``\\\\``, whitespace between tokens)
      is decoded line by line into dicts instead (see :mod:`._jsondecode`).
    - ``pattern``: which files of a directory to read (a glob or a tuple of globs);
      by default those with the format's extensions. Hidden files are never read.
    - ``follow``: keep reading forever, like ``tail -F``: lines appended to the
      files and new files in the directory are read; a last line is read only once
      it ends with a newline; a rotated or truncated file is read from its start.
      ``poll_interval`` (seconds) is how often the directory is looked at again;
      ``max_idle`` (ms or timedelta) ends the input after that long without news,
      and :meth:`FileSource.stop` ends it from another thread.
    - ``on_error``: what to do with a bad line (not JSON, not an object, nested deeper
      than ``MAX_JSON_DEPTH`` (254) levels, a CSV row with the wrong number of fields
      or a syntax error, a failed ``csv_types`` conversion), the same in every mode:
      ``"fail"``, ``"skip"`` (counted) or ``millstream.connectors.dead_letter(sink)``.
      A CSV record may span at most ``MAX_CSV_RECORD_LINES`` (1,000) lines; when one
      that spans lines cannot be parsed (an unterminated quote), its first line is the
      bad record and reading goes on at the next line. Blank lines of JSON lines and
      CSV are not records: passed over in every mode, and counted (``blank_lines``).
    - ``csv_types``: column -> function applied to its text, e.g. ``{"amount": float}``;
      an empty field becomes None, and ``bool`` accepts true/false, yes/no, 1/0.
    - ``splits``: read the input as this many fixed logical splits, so that a job with
      ``parallelism`` > 1 reads it on several workers (see :meth:`FileSource.logical_splits`): a
      directory's files by a hash of their names (any format, following too), or one uncompressed
      JSON-lines or text file by byte ranges. Each split has its own position and watermark; a
      checkpoint resumes only with the same ``splits``. A CSV, Parquet or compressed file, or a
      followed file, cannot be cut and is refused.

    Positions (``position_of``) are ``path:line`` (1-based; for CSV the line the row
    starts on) and ``path#row N`` (0-based) for Parquet.
    """
    p = check_path(path)
    fmt = check_format(format) if format is not None else _infer_read_format(p)
    if fmt == "parquet":
        need_pyarrow("Reading Parquet")
    if isinstance(pattern, str):
        pattern = (pattern,)
    if pattern is not None and (not pattern or not all(isinstance(x, str) and x for x in pattern)):
        raise ConfigError(f"pattern must be a glob such as '*.jsonl' (or a tuple of them), not {pattern!r}")
    types: list[tuple[str, Callable[[str], Any]]] = []
    for col, fn in (csv_types or {}).items():
        if not isinstance(col, str) or not callable(fn):
            raise ConfigError(f"csv_types maps column names to functions such as float, not {col!r}: {fn!r}")
        types.append((col, _to_bool if fn is bool else fn))
    options = ReadOptions(
        path=p,
        format=fmt,
        follow=follow,
        pattern=tuple(pattern or ()),
        poll_interval_s=_seconds(poll_interval, "poll_interval"),
        max_idle_ms=None if max_idle is None else to_ms(max_idle, "max_idle"),
        csv_types=tuple(types),
        delimiter=delimiter,
        encoding=encoding,
        block_size=block_size,
    )
    return FileSource(options, on_error=on_error, name=name, splits=splits)


def _infer_read_format(path: str) -> str:
    fmt = format_of(path)
    if fmt is not None:
        return fmt
    if os.path.isdir(path):
        found = {f for n in os.listdir(path) if not n.startswith(".") for f in (format_of(n),) if f is not None}
        if len(found) == 1:
            return found.pop()
        what = f"files of {len(found)} formats ({', '.join(sorted(found))})" if found else "no file of a known format"
        raise ConfigError(
            f"cannot tell which files of directory {path!r} to read: it holds {what}; "
            f"pass format= one of {', '.join(map(repr, FORMATS))}"
        )
    raise ConfigError(
        f"cannot tell the format of {path!r} from its name; pass format= one of {', '.join(map(repr, FORMATS))} "
        "(known extensions: " + ", ".join(sorted(EXTENSIONS)) + ", each optionally .gz)"
    )


# -- reading: parsing chunks of lines --------------------------------------------------

#: the integers a record may hold, as for JSON lines (orjson reads and writes these and no others)
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1


def parse_json_lines(
    lines: list[bytes], first_line: int, where: str, ctx: SourceContext, tally: Tally | None = None
) -> tuple[list[Any], list[int] | None]:
    """Parse JSON lines into dicts: ``(records, line numbers)``.

    The line numbers are None when record ``i`` is line ``first_line + i`` (no
    blank or bad line in the chunk). Bad lines go to ``ctx.bad_record``: not JSON (a lone
    surrogate escape included), not an object, or nested deeper than :data:`MAX_JSON_DEPTH`.
    Blank lines are not records: they are passed over, and counted in ``tally``.
    """
    loads = orjson.loads
    try:
        recs = list(map(loads, lines))
    except orjson.JSONDecodeError:
        pass
    else:
        if (not recs or set(map(type, recs)) == {dict}) and not any(
                too_deep(lines[i]) for i in suspect_json_lines(lines, surrogates=False)):
            return recs, None
    out: list[Any] = []
    nums: list[int] = []
    n = first_line - 1
    for raw in lines:
        n += 1
        try:
            value = loads(raw)
        except orjson.JSONDecodeError as exc:
            if raw.strip():
                ctx.bad_record(f"not valid JSON: {exc}", position=f"{where}:{n}", raw=raw)
            elif tally is not None:
                tally.blank_lines += 1
            continue
        if type(value) is not dict:
            ctx.bad_record(f"expected a JSON object, got {_json_kind(value)}", position=f"{where}:{n}", raw=raw)
            continue
        if too_deep(raw):
            ctx.bad_record(f"nested deeper than {MAX_JSON_DEPTH} levels, more than a JSON sink can write",
                           position=f"{where}:{n}", raw=raw)
            continue
        out.append(value)
        nums.append(n)
    return out, nums


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def parse_text_lines(
    lines: list[bytes], first_line: int, where: str, ctx: SourceContext, encoding: str = "utf-8"
) -> tuple[list[Any], list[int] | None]:
    """Decode lines of text (a trailing ``\\r`` removed): ``(records, line numbers)`` as :func:`parse_json_lines`."""
    if not lines:
        return [], None
    try:
        text = b"\n".join(lines).decode(encoding)
    except UnicodeDecodeError:
        pass
    else:
        out = text.split("\n")
        if "\r" in text:
            out = [s[:-1] if s.endswith("\r") else s for s in out]
        return out, None
    recs: list[Any] = []
    nums: list[int] = []
    n = first_line - 1
    for raw in lines:
        n += 1
        try:
            s = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            ctx.bad_record(f"not valid {encoding}: {exc}", position=f"{where}:{n}", raw=raw)
            continue
        recs.append(s[:-1] if s.endswith("\r") else s)
        nums.append(n)
    return recs, nums


# -- reading: cursors over one file ---------------------------------------------------------


class _BadFile(Exception):
    """A file that cannot be read further (corrupt compression, unreadable Parquet)."""


class _NeedMore(Exception):
    """The CSV feed ran out of complete lines in the middle of a record."""


class _TooLong(Exception):
    """A CSV record spans more than :data:`MAX_CSV_RECORD_LINES` lines (an unterminated quote)."""


class _LineCursor:
    """The complete lines of one file, read in large blocks.

    ``offset`` and ``line`` are the byte offset and the number of lines before
    the next line not yet handed out; ``read_pos`` how many bytes were read.
    """

    def __init__(self, name: str, path: str, offset: int, line: int, *, block: int, whole: bool) -> None:
        self.name = name
        self.path = path
        self.gz = path.endswith(".gz")
        raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self.ino = os.fstat(raw.fileno()).st_ino
        self.fh: IO[bytes] = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")) if self.gz else raw
        self._raw = raw
        if offset:
            self.fh.seek(offset)
        self.offset = offset
        self.line = line
        self.read_pos = offset
        self.block = block
        #: whether the file is read to its end at once (then an unterminated last line counts)
        self.whole = whole
        #: the file was renamed away or deleted while followed (its path may name a new file)
        self.rotated = False
        self.final = False
        self.lines: list[bytes] = []
        self.li = 0
        self.carry = b""
        self.header: list[str] | None = None
        #: the byte where reading stops (a line start: the end of a byte-range part), else None
        self.end: int | None = None
        #: keep what is read as raw blocks of whole lines (:meth:`take_block`), not split into lines
        self.raw_mode = False
        self.raw: list[bytes] = []  # blocks of whole lines, each ending with a newline
        self.raw_counts: list[int] = []  # the lines of each block
        self.raw_lines = 0  # the lines in ``raw``

    def close(self) -> None:
        try:
            self.fh.close()
        finally:
            self._raw.close()

    def available(self) -> int:
        return len(self.lines) - self.li + self.raw_lines

    def fill(self) -> int:
        """Read one block; the number of bytes read (0: nothing new now)."""
        if self.final:
            return 0
        try:
            size = self.block if self.end is None else max(0, min(self.block, self.end - self.read_pos))
            block = self.fh.read(size) if size else b""
        except (EOFError, OSError, zlib.error) as exc:
            if not self.gz:
                raise
            self.final = True
            raise _BadFile(f"the gzip stream is damaged after byte {self.read_pos:,}: {exc}") from exc
        if not block:
            if self.whole:
                self.final = True
                if self.carry:
                    if self.raw_mode:  # an unterminated last line (read_pos bounds the offset)
                        self.raw.append(self.carry + b"\n")
                        self.raw_counts.append(1)
                        self.raw_lines += 1
                    else:
                        self._append([self.carry])
                    self.carry = b""
            return 0
        if self.read_pos == 0 and block.startswith(_BOM):
            block = block[len(_BOM):]  # a UTF-8 byte order mark is not part of the first line
            self.offset = self.read_pos = len(_BOM)
        self.read_pos += len(block)
        data = self.carry + block if self.carry else block
        if self.raw_mode:
            end = data.rfind(b"\n") + 1
            self.carry = data[end:]
            if end:
                whole = data[:end] if end < len(data) else data
                count = whole.count(b"\n")
                self.raw.append(whole)
                self.raw_counts.append(count)
                self.raw_lines += count
            return len(block)
        parts = data.split(b"\n")
        self.carry = parts.pop()
        self._append(parts)
        return len(block)

    def _append(self, parts: list[bytes]) -> None:
        # extend in place: gathering a large chunk block by block must not copy what is gathered
        if self.li >= len(self.lines):
            self.lines = parts
        else:
            if self.li:
                self.lines = self.lines[self.li:]
            self.lines.extend(parts)
        self.li = 0

    def ensure(self, n: int) -> int:
        """Read until ``n`` lines are available or nothing more is; the number available."""
        while self.available() < n and self.fill():
            pass
        return self.available()

    def _split_raw(self) -> None:
        """Blocks kept raw become lines (after the lines not yet taken)."""
        if self.raw:
            data = b"".join(self.raw)
            self.raw, self.raw_counts, self.raw_lines = [], [], 0
            self._append(data[:-1].split(b"\n"))

    def take_block(self, n: int) -> tuple[bytes, int, int]:
        """Up to ``n`` lines as they are in the file, in one block of bytes, each line ending with a
        newline (an unterminated last line gets one): ``(block, lines, number of the first)``. The
        block is read as it is, never split into lines (:meth:`take` does that)."""
        if self.li < len(self.lines):  # lines split before (by take) come first
            self.raw.insert(0, b"\n".join(self.lines[self.li:]) + b"\n")
            self.raw_counts.insert(0, len(self.lines) - self.li)
            self.raw_lines += len(self.lines) - self.li
            self.lines, self.li = [], 0
        raw, counts = self.raw, self.raw_counts
        parts: list[bytes] = []
        k = 0
        while raw and k < n:
            if k + counts[0] <= n:
                parts.append(raw.pop(0))
                k += counts.pop(0)
                continue
            part, cut = raw[0], -1
            for _ in range(n - k):  # the end of this block's (n - k)th line
                cut = part.find(b"\n", cut + 1)
            parts.append(part[:cut + 1])
            raw[0] = part[cut + 1:]
            counts[0] -= n - k
            k = n
        self.raw_lines -= k
        block = parts[0] if len(parts) == 1 else b"".join(parts)
        first = self.line + 1
        self.line += k
        # an unterminated last line has no newline to count; read_pos bounds it
        self.offset = min(self.offset + len(block), self.read_pos)
        return block, k, first

    def take(self, n: int) -> tuple[list[bytes], int]:
        """Up to ``n`` lines and the (1-based) number of the first."""
        self._split_raw()
        li = self.li
        chunk = self.lines[li:li + n]
        k = len(chunk)
        first = self.line + 1
        self.li = li + k
        self.line += k
        # an unterminated last line has no newline to count; read_pos bounds it
        self.offset = min(self.offset + sum(map(len, chunk)) + k, self.read_pos)
        return chunk, first

    def mark(self) -> tuple[int, int, int]:
        return self.li, self.line, self.offset

    def rewind(self, mark: tuple[int, int, int]) -> None:
        self.li, self.line, self.offset = mark

    def skip(self) -> None:
        """Pass over the next line (it is available)."""
        raw = self.lines[self.li]
        self.li += 1
        self.line += 1
        self.offset = min(self.offset + len(raw) + 1, self.read_pos)


def _byte_range(path: str, part: int, parts: int) -> tuple[int, int, int]:
    """Part ``part`` of ``parts`` of a file of lines: ``(start, end, lines before start)``, where the
    part holds the lines that start in bytes ``[part * size // parts, (part + 1) * size // parts)``,
    so that the parts hold every line once. Reads the bytes before ``start`` to number its lines."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:

        def line_start(at: int) -> int:
            """The first line start at or after byte ``at``."""
            if at <= 0:
                return 0
            fh.seek(at - 1)
            pos = at - 1
            while block := fh.read(1 << 16):
                i = block.find(b"\n")
                if i >= 0:
                    return pos + i + 1
                pos += len(block)
            return max(size, pos)

        start = line_start(size * part // parts)
        end = line_start(size * (part + 1) // parts) if part + 1 < parts else max(size, start)
        lines = 0
        fh.seek(0)
        left = start
        while left > 0 and (block := fh.read(min(left, 1 << 20))):
            lines += block.count(b"\n")
            left -= len(block)
    return start, end, lines


class _CsvFeed:
    """Decoded lines for ``csv.reader``, one at a time, from a cursor."""

    def __init__(self, cur: _LineCursor, encoding: str) -> None:
        self.cur = cur
        self.encoding = encoding
        self.taken: list[bytes] = []  # the raw lines of the record being parsed

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        cur = self.cur
        if cur.li >= len(cur.lines):
            if cur.final:
                raise StopIteration
            raise _NeedMore
        if len(self.taken) >= MAX_CSV_RECORD_LINES:
            raise _TooLong
        raw = cur.lines[cur.li]
        cur.li += 1
        cur.line += 1
        cur.offset = min(cur.offset + len(raw) + 1, cur.read_pos)
        self.taken.append(raw)
        return raw.decode(self.encoding) + "\n"


def _split_block(block: bytes) -> list[bytes]:
    """The lines of a block of newline-terminated lines."""
    lines = block.split(b"\n")
    lines.pop()  # after the last newline
    return lines


def _columns_frame(recs: list[Any], columns: tuple[str, ...]) -> Any:
    """Parsed records as a polars DataFrame of just ``columns`` (a record without a field gives
    null); None when a field mixes types polars cannot hold in one column (then rows go on)."""
    import polars as pl

    if not recs or not all(type(r) is dict for r in recs[:1]):
        return None
    try:
        return pl.DataFrame([pl.Series(c, [r.get(c) for r in recs], strict=True) for c in columns])
    except Exception:  # noqa: BLE001 - mixed types: the records go on as rows
        return None


#: A chunk of JSON lines with a record nested deeper than this is decoded by rows (orjson), not by
#: polars: polars' cost per line grows steeply with depth (~0.1 ms at 16 levels, ~400 ms at 254).
_COLUMNAR_MAX_DEPTH = 16


def _ndjson_frame(lines: list[bytes]) -> Any:
    # Not the reader's path any more (polars' inference retypes mixed fields; the reader uses
    # ._jsondecode): kept for the depth rules pinned by tests/test_hostile_input.py.
    """JSON lines as a polars DataFrame, or None when polars cannot read them as they are, or
    would read them otherwise than :func:`parse_json_lines` (then the row parser takes the chunk,
    as in the native mode): polars turns a lone surrogate escape into NUL and accepts any depth,
    so the lines that may hold either are checked with the row decoder's rules first; and it reads
    an integer beyond 64 bits exactly where orjson makes it a float."""
    import polars as pl

    block = b"\n".join(lines)
    for i in suspect_json_lines(lines, block, deeper_than=_COLUMNAR_MAX_DEPTH):
        raw = lines[i]
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if json_depth(raw) > _COLUMNAR_MAX_DEPTH:
            return None
    try:
        df = pl.read_ndjson(io.BytesIO(block), infer_schema_length=None)
    except Exception:  # noqa: BLE001 - the row parser reports what is wrong, line by line
        return None
    if df.height != len(lines) or any("Int128" in str(t) for t in df.schema.dtypes()):
        return None
    return df


class _ParquetCursor:
    """The rows of one Parquet file, read by record batch."""

    def __init__(self, name: str, path: str, row: int) -> None:
        _, pq = import_parquet("Reading Parquet")
        self.name = name
        self.path = path
        try:
            self.pf = pq.ParquetFile(path)
            meta = self.pf.metadata
            group, skip = 0, row
            while group < meta.num_row_groups and skip >= meta.row_group(group).num_rows:
                skip -= meta.row_group(group).num_rows
                group += 1
            self.batches = self.pf.iter_batches(batch_size=65_536, row_groups=list(range(group, meta.num_row_groups)))
        except Exception as exc:  # pyarrow raises several kinds; all mean an unreadable file
            raise _BadFile(f"cannot read this Parquet file: {type(exc).__name__}: {exc}") from exc
        self.skip = skip
        self.row = row
        self.rows: list[Any] = []
        self.ri = 0
        self.final = False

    def _next_batch(self) -> Any:
        """The next Arrow record batch, or None (then ``final``) at the end of the file."""
        try:
            batch = next(self.batches, None)
        except Exception as exc:
            self.final = True
            raise _BadFile(f"cannot read row {self.row} on: {type(exc).__name__}: {exc}") from exc
        if batch is None:
            self.final = True
        return batch

    def take(self, n: int) -> tuple[list[Any], int]:
        while self.ri >= len(self.rows):
            batch = self._next_batch()
            if batch is None:
                return [], self.row
            rows = batch.to_pylist()
            if self.skip:
                rows, self.skip = rows[self.skip:], max(0, self.skip - len(rows))
            self.rows, self.ri = rows, 0
        out = self.rows[self.ri:self.ri + n]
        first = self.row
        self.ri += len(out)
        self.row += len(out)
        return out, first

    def take_frame(self, n: int) -> tuple[Any, int]:
        """Like :meth:`take`, as a polars DataFrame."""
        import polars as pl

        if self.ri < len(self.rows):  # rows taken by take() before: finish them as rows
            return self.take(n)
        if self._frame is None or self._fi >= self._frame.height:
            batch = self._next_batch()
            if batch is None:
                return [], self.row
            self._frame = pl.from_arrow(batch)
            self._fi = min(self.skip, self._frame.height)
            self.skip = max(0, self.skip - self._frame.height)
            if self._fi >= self._frame.height:
                return pl.DataFrame(), self.row
        out = self._frame.slice(self._fi, n)
        first = self.row
        self._fi += out.height
        self.row += out.height
        return out, first

    _frame: Any = None
    _fi = 0

    def close(self) -> None:
        self.pf.close()


_Cursor = _LineCursor | _ParquetCursor


@dataclass
class _Tail:
    """Where reading a file stopped while another file was read (or after a restore)."""

    offset: int = 0
    line: int = 0
    header: list[str] | None = None
    seen: int = -1  # bytes of the file seen so far; the file has news when it is bigger
    ino: int | None = None


class _FileReader(SourceReader):
    def __init__(self, src: FileSource, ctx: SourceContext) -> None:
        self.src = src
        self.o = src.options
        self.ctx = ctx
        self.clock = ctx.clock
        self.follow = self.o.follow
        self.is_dir: bool | None = None
        self.done: set[str] = set()
        self.tails: dict[str, _Tail] = {}
        self.settling: dict[str, tuple[int, int]] = {}
        self.queue: list[str] | None = None  # files still to read (bounded: the listing; following: the news)
        self.cur: _Cursor | None = None
        self.finished = False
        self.idle = False
        self.last_data = self.clock.now_ms()
        self.next_scan = self.last_data
        self.interval_ms = max(1, round(self.o.poll_interval_s * 1000))
        self.chunk_where = ""
        self.chunk_first = 0
        self.chunk_nums: list[int] | None = None
        self.chunk_rows = False
        self.csv_feed: _CsvFeed | None = None
        self.csv_reader: Any = None
        self.tally = Tally()
        #: a byte-range part: its first byte, its end, and the lines before it (found when it opens)
        self.range: tuple[int, int, int] | None = None

    # -- files -------------------------------------------------------------------------
    def _resolve(self) -> None:
        if self.is_dir is not None:
            return
        root = self.o.path
        if os.path.isdir(root):
            self.is_dir = True
        elif os.path.exists(root):
            self.is_dir = False
        elif self.follow:
            self.is_dir = root.endswith(("/", os.sep))  # not there yet: wait for it
        else:
            raise ConfigError(f"source {self.ctx.step!r}: no such file or directory: {root!r}")

    def _path(self, name: str) -> str:
        return os.path.join(self.o.path, name) if self.is_dir else self.o.path

    def _list(self) -> list[str]:
        if not self.is_dir:
            return [self.o.path] if os.path.isfile(self.o.path) else []
        try:
            entries = list(os.scandir(self.o.path))
        except FileNotFoundError:
            return []
        pats = self.o.patterns
        names = sorted(e.name for e in entries
                       if not e.name.startswith(".") and e.is_file() and any(fnmatch.fnmatch(e.name, p) for p in pats))
        if self.src.parts > 1:
            return [n for n in names if self.src.owns(n)]
        return names

    def _whole(self, name: str) -> bool:
        """Files read to their end at once, never tailed: bounded input, compressed files, Parquet."""
        return not self.follow or name.endswith(".gz") or self.o.format == "parquet"

    def _open(self, name: str) -> bool:
        """Make ``name`` the current file; False if it cannot be read (reported) or is gone (following)."""
        tail = self.tails.pop(name, None) or _Tail()
        path = self._path(name)
        try:
            if self.o.format == "parquet":
                self.cur = _ParquetCursor(name, path, tail.offset)
            else:
                whole = self._whole(name)
                if self.src.parts > 1 and self.src.split_by == "bytes":
                    if self.range is None:
                        self.range = _byte_range(path, self.src.part, self.src.parts)
                    if not tail.offset:
                        tail = _Tail(self.range[0], self.range[2])
                cur = _LineCursor(name, path, tail.offset, tail.line, block=self.o.block_size, whole=whole)
                if self.range is not None and self.src.part + 1 < self.src.parts:
                    cur.end = self.range[1]  # the last part reads to the end, as one reader would
                if tail.ino is not None and cur.ino != tail.ino and tail.offset:
                    log.warning("%s was replaced; reading the new file from its start", path)
                    cur.close()
                    cur = _LineCursor(name, path, 0, 0, block=self.o.block_size, whole=whole)
                    tail = _Tail()
                cur.header = tail.header
                self.cur = cur
        except FileNotFoundError:
            if self.follow:
                return False
            raise ConfigError(f"source {self.ctx.step!r}: {path!r} disappeared before it was read") from None
        except _BadFile as exc:
            self.done.add(name)
            self.ctx.bad_record(str(exc), position=path, raw=None)
            return False
        self.csv_reader = None
        return True

    def _close_current(self, *, done: bool) -> None:
        """Close the current file: ``done`` (read to its end for good) or tailed (remember where)."""
        cur = self.cur
        assert cur is not None
        self.cur = None
        self.csv_reader = None
        cur.close()
        if done:
            self.done.add(cur.name)
        elif isinstance(cur, _LineCursor) and not cur.rotated:
            self.tails[cur.name] = _Tail(cur.offset, cur.line, cur.header, cur.read_pos, cur.ino)

    # -- polling -----------------------------------------------------------------------
    def poll(self, max_records: int) -> list[Any] | None:
        if self.finished:
            return None
        self._resolve()
        recs = self._poll_follow(max_records) if self.follow else self._poll_bounded(max_records)
        if recs is not None and len(recs):
            self.idle = False
            self.last_data = self.clock.now_ms()
        return recs

    @property
    def columnar(self) -> bool:
        """Whether :meth:`poll_frame` makes columnar batches: JSON lines and Parquet, with polars."""
        return self.o.format in ("jsonl", "parquet") and importlib.util.find_spec("polars") is not None

    def poll_frame(self, max_records: int) -> Any:
        """Like :meth:`poll`, as one polars DataFrame (JSON lines parsed by polars, Parquet batches as
        they are). A chunk polars cannot take as it is (a malformed or blank line, mixed types) comes
        as a list of rows, parsed and reported one record at a time as :meth:`poll` does."""
        self._frames = True
        try:
            return self.poll(max_records)
        finally:
            self._frames = False

    _frames = False
    _json: ColumnarJSON | None = None
    _frame_lines: tuple[bytes, int, str] | None = None  # the block of the last frame
    _columns: tuple[str, ...] | None = None

    def push_down(self, columns: frozenset[str] | None, equals: dict[str, frozenset[Any]]) -> None:
        """The flow reads only ``columns`` (None: any): JSON lines are then parsed with orjson and
        only those fields become columns, which is faster than polars' reader for wide records."""
        self._columns = tuple(sorted(columns)) if columns is not None else None

    def rows_of_frame(self, frame: Any) -> list[Any]:
        """The records of the last batch as :meth:`poll` would have made them (polars reads a field
        whose lines mix numbers and strings as strings; the row parser keeps each value's type)."""
        if self._frame_lines is None or self.o.format != "jsonl":
            return cast(list[Any], frame.to_dicts())
        block, first, path = self._frame_lines
        recs, nums = parse_json_lines(_split_block(block), first, path, self.ctx, self.tally)
        self._chunk(path, first, nums)
        return recs

    def _poll_bounded(self, max_records: int) -> list[Any] | None:
        while True:
            if self.cur is None:
                if self.queue is None:
                    self.queue = [n for n in self._list() if n not in self.done]
                if not self.queue:
                    self.finished = True
                    return None
                self._open(self.queue.pop(0))
                continue
            recs = self._drain(max_records)
            if recs is not None and len(recs):
                return recs

    def _poll_follow(self, max_records: int) -> list[Any] | None:
        while True:
            if self.cur is not None:
                recs = self._drain(max_records)
                if recs is not None and len(recs):
                    return recs
            if self.queue:
                name = self.queue.pop(0)
                if name not in self.done:
                    if self.cur is not None:
                        self._close_current(done=False)
                    self._open(name)
                continue
            now = self.clock.now_ms()
            stopping = self.src.stopped
            if now >= self.next_scan or stopping:
                self.next_scan = now + self.interval_ms
                if self.cur is not None:
                    self._check_current()
                    if isinstance(self.cur, _LineCursor) and self.cur.available():  # a rotated file's last line
                        continue
                self.queue = self._changed()
                if self.queue:
                    continue
                if stopping:
                    self.finished = True
                    return None
            if self.o.max_idle_ms is not None and now - self.last_data >= self.o.max_idle_ms:
                self.finished = True
                return None
            self.idle = True
            return []

    def _drain(self, max_records: int) -> list[Any]:
        """Records of the current file; [] once it has nothing more now (then a whole file is closed as done)."""
        cur = self.cur
        assert cur is not None
        while True:
            before = cur.row if isinstance(cur, _ParquetCursor) else cur.line
            recs = self._read(cur, max_records)
            if recs is not None and len(recs):
                return recs
            if (cur.row if isinstance(cur, _ParquetCursor) else cur.line) == before:
                break  # no progress: nothing more now
        if isinstance(cur, _LineCursor) and cur.rotated:
            self._close_current(done=False)
        elif isinstance(cur, _ParquetCursor) or cur.whole:
            self._close_current(done=True)
        return []

    def _check_current(self) -> None:
        """The followed file was rotated, deleted or truncated: finish or reopen it."""
        cur = self.cur
        assert cur is not None
        if not isinstance(cur, _LineCursor) or cur.whole:
            return
        try:
            st = os.stat(cur.path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino == cur.ino:
            if st.st_size < cur.read_pos:
                log.warning("%s was truncated; reading it again from its start", cur.path)
                self._close_current(done=False)
                self.tails[cur.name] = _Tail()
            return
        # renamed away or deleted: the old file is complete, its unterminated last line too
        log.info("%s was rotated or removed; reading the rest of the old file", cur.path)
        cur.whole = cur.rotated = True
        while cur.fill():
            pass
        if not cur.available():
            self._close_current(done=False)

    def _changed(self) -> list[str]:
        """Files (other than the open one) with something new, in name order."""
        out = []
        cur_name = self.cur.name if self.cur is not None else None
        stopping = self.src.stopped
        for name in self._list():
            if name in self.done or name == cur_name:
                continue
            try:
                st = os.stat(self._path(name))
            except FileNotFoundError:
                continue
            if self._whole(name):
                # a compressed or Parquet file is read once it has stopped changing
                sig = (st.st_size, st.st_mtime_ns)
                if self.settling.get(name) != sig and not stopping:
                    self.settling[name] = sig
                    continue
                self.settling.pop(name, None)
                out.append(name)
                continue
            tail = self.tails.get(name)
            if tail is None:
                out.append(name)
            elif st.st_size < tail.offset:
                log.warning("%s was truncated; reading it again from its start", self._path(name))
                self.tails[name] = _Tail()
                out.append(name)
            elif st.st_size != tail.seen or (tail.ino is not None and st.st_ino != tail.ino):
                out.append(name)
        return out

    def _read(self, cur: _Cursor, n: int) -> list[Any]:
        try:
            if isinstance(cur, _ParquetCursor):
                rows, first = cur.take_frame(n) if self._frames else cur.take(n)
                self._chunk(cur.path, first, None, rows=True)
                return cast(list[Any], rows)
            if self.o.format == "csv":
                return self._read_csv(cur, n)
            if self.o.format == "jsonl" and self._frames:
                cur.raw_mode = True  # the columnar decoder takes the bytes as they were read
                if not cur.ensure(n):
                    return []
                block, k, first = cur.take_block(n)
                return self._json_frame(block, k, first, cur.path)
            if not cur.ensure(n):
                return []
            lines, first = cur.take(n)
            if self.o.format == "jsonl":
                recs, nums = parse_json_lines(lines, first, cur.path, self.ctx, self.tally)
            else:
                recs, nums = parse_text_lines(lines, first, cur.path, self.ctx, self.o.encoding)
            self._chunk(cur.path, first, nums)
            return recs
        except _BadFile as exc:
            if isinstance(cur, _ParquetCursor):
                where = f"{cur.path}#row {cur.row}"
            else:
                where = f"{cur.path}:{cur.line + 1}"
                cur.lines, cur.li, cur.carry = [], 0, b""
                cur.raw, cur.raw_counts, cur.raw_lines = [], [], 0
            self.ctx.bad_record(str(exc), position=where, raw=None)
            return []

    def _json_frame(self, block: bytes, n: int, first: int, path: str) -> list[Any]:
        """A chunk of JSON lines for :meth:`poll_frame` (``n`` lines from line ``first``, as read: each
        ends with a newline): a polars DataFrame when the columnar decoder can prove it typed as the
        row decoder would (see :mod:`._jsondecode`), else the records."""
        dec = self._json
        if dec is None:
            dec = self._json = ColumnarJSON()
        frame = dec.frame_block(block, n)
        if frame is not None:
            self._chunk(path, first, None)
            if self._columns is not None:  # the flow reads only these fields
                missing = [c for c in self._columns if c not in frame.columns]
                if missing:
                    import polars as pl

                    frame = frame.with_columns(pl.lit(None).alias(c) for c in missing)
                frame = frame.select(self._columns)
            self._frame_lines = (block, first, path)
            return cast(list[Any], frame)  # a DataFrame: poll_frame's caller knows
        lines = _split_block(block)
        recs, nums = parse_json_lines(lines, first, path, self.ctx, self.tally)
        self._chunk(path, first, nums)
        if dec.wants_records and nums is None:
            dec.learn(recs)
        if self._columns is not None:
            # the flow reads only these fields: one column per field, strictly typed
            columns = _columns_frame(recs, self._columns)
            if columns is not None:
                self._frame_lines = None
                return cast(list[Any], columns)
        return recs

    def _chunk(self, where: str, first: int, nums: list[int] | None, *, rows: bool = False) -> None:
        self.chunk_where = where
        self.chunk_first = first
        self.chunk_nums = nums
        self.chunk_rows = rows

    def _read_csv(self, cur: _LineCursor, n: int) -> list[Any]:
        feed, reader = self.csv_feed, self.csv_reader
        if reader is None or feed is None or feed.cur is not cur:
            feed = self.csv_feed = _CsvFeed(cur, self.o.encoding)
            reader = self.csv_reader = csv.reader(feed, delimiter=self.o.delimiter, strict=True)
        types = self.o.csv_types
        path = cur.path
        out: list[Any] = []
        nums: list[int] = []
        cur.ensure(n)
        while len(out) < n:
            mark = cur.mark()
            feed.taken = []
            try:
                row = next(reader)
            except _NeedMore:  # a record not complete in what was read so far
                cur.rewind(mark)
                if cur.fill() or cur.final:
                    continue
                break
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError, _TooLong) as exc:
                self._bad_csv(cur, mark, exc)
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                self.tally.blank_lines += 1  # a blank line: not a record
                continue
            line_no = mark[1] + 1
            header = cur.header
            if header is None:
                self._csv_header(cur, row, line_no)
                continue
            if len(row) != len(header):
                self.ctx.bad_record(f"expected {len(header)} fields ({', '.join(header)}), got {len(row)}",
                                    position=f"{path}:{line_no}", raw=b"\n".join(feed.taken))
                continue
            rec = dict(zip(header, row))
            if types and not self._convert(rec, types, path, line_no, feed.taken):
                continue
            out.append(rec)
            nums.append(line_no)
        self._chunk(path, 0, nums)
        return out

    def _bad_csv(self, cur: _LineCursor, mark: tuple[int, int, int], exc: Exception) -> None:
        """Report the record that starts at ``mark`` and cannot be parsed. When it spans lines (a
        quote that opens and does not close as it should), only its first line is taken as bad:
        reading goes on at the next line, so one stray quote cannot swallow the good rows after it."""
        taken = self.csv_feed.taken if self.csv_feed is not None else []
        first = mark[1] + 1
        if isinstance(exc, _TooLong):
            problem = (f"a quoted field is still open after {MAX_CSV_RECORD_LINES:,} lines "
                       f"(lines {first}-{first + len(taken) - 1}): an unterminated quote?")
        elif len(taken) > 1:
            problem = f"{exc} (in the record that spans lines {first}-{first + len(taken) - 1})"
        else:
            problem = str(exc)
        if len(taken) > 1:
            problem += f"; line {first} is taken as the bad record and reading goes on at line {first + 1}"
            cur.rewind(mark)
            cur.skip()
        self.ctx.bad_record(f"not valid CSV: {problem}", position=f"{cur.path}:{first}", raw=taken[0] if taken
                            else None)

    def _csv_header(self, cur: _LineCursor, row: list[str], line_no: int) -> None:
        dupes = sorted({c for c in row if row.count(c) > 1})
        if dupes:
            raise RecordError(f"the CSV header repeats column(s) {', '.join(map(repr, dupes))}, so rows would "
                              "lose fields; rename the columns", source=self.ctx.step,
                              position=f"{cur.path}:{line_no}", raw=row)
        missing = [c for c, _ in self.o.csv_types if c not in row]
        if missing:
            raise ConfigError(f"source {self.ctx.step!r}: csv_types names column(s) {', '.join(map(repr, missing))} "
                              f"that {cur.path} does not have; its header is: {', '.join(row)}")
        cur.header = row

    def _convert(self, rec: dict[str, Any], types: tuple[tuple[str, Callable[[str], Any]], ...], path: str,
                 line_no: int, raw: list[bytes]) -> bool:
        for col, fn in types:
            value = rec[col]
            if value == "":
                rec[col] = None  # an empty field is a missing value, not a failed conversion
                continue
            try:
                rec[col] = out = fn(value)
            except Exception as exc:  # noqa: BLE001 - any failure of the user's converter is a bad record
                name = getattr(fn, "__name__", repr(fn))
                self.ctx.bad_record(f"column {col!r}: cannot convert {value!r} with {name}: {exc}",
                                    position=f"{path}:{line_no}", raw=b"\n".join(raw))
                return False
            if type(out) is int and not _MIN_INT <= out <= _MAX_INT:
                # what a JSON-lines source refuses too: no JSON sink could write it (the job would fail)
                self.ctx.bad_record(f"column {col!r}: {value!r} is an integer beyond 64 bits, more than a JSON "
                                    "sink can write", position=f"{path}:{line_no}", raw=b"\n".join(raw))
                return False
        return True

    # -- the reader contract ------------------------------------------------------------
    def position_of(self, index: int) -> str | None:
        nums = self.chunk_nums
        if nums is None:
            n = self.chunk_first + index
        elif 0 <= index < len(nums):
            n = nums[index]
        else:
            return None
        return f"{self.chunk_where}#row {n}" if self.chunk_rows else f"{self.chunk_where}:{n}"

    def wait_hint(self) -> float | None:
        return self.o.poll_interval_s if self.idle else None

    def metrics(self) -> dict[str, int]:
        return self.tally.metrics()

    _sizes: dict[str, int] | None = None  # bytes of each file of a bounded input, listed once

    def progress(self) -> tuple[int, int] | None:
        """Bytes read and bytes in all, over the files a bounded input listed at its first call (a
        compressed file counts its compressed bytes read; Parquet its rows read, scaled to its size)."""
        if self.follow:
            return None
        if self.src.parts > 1 and self.src.split_by == "bytes":  # a byte-range split: its own bytes
            if self.range is None:
                return 0, 0  # not opened yet: its range is found when it opens
            start, end, _ = self.range
            if self.finished:
                return end - start, end - start
            pos = self.cur.offset if isinstance(self.cur, _LineCursor) else start
            return min(max(0, pos - start), end - start), end - start
        if self._sizes is None:
            try:
                self._resolve()
                self._sizes = {n: os.path.getsize(self._path(n)) for n in self._list()}
            except (OSError, ConfigError):
                return None
        sizes = self._sizes
        total = sum(sizes.values())
        if self.finished:
            return total, total
        done = sum(sizes.get(n, 0) for n in self.done)
        at = {n: t.offset for n, t in self.tails.items() if self.o.format != "parquet" and n not in self.done}
        cur = self.cur
        if isinstance(cur, _ParquetCursor):
            rows = cur.pf.metadata.num_rows
            at[cur.name] = sizes.get(cur.name, 0) * cur.row // rows if rows else 0
        elif cur is not None:
            at[cur.name] = cur._raw.tell() if cur.gz else cur.offset
        done += sum(min(v, sizes.get(n, 0)) for n, v in at.items() if n not in self.done)
        return min(done, total), total

    def snapshot(self) -> Any:
        files: dict[str, dict[str, Any]] = {}
        for name, tail in self.tails.items():
            files[name] = {"offset": tail.offset, "line": tail.line}
            if tail.header is not None:
                files[name]["header"] = list(tail.header)
        cur = self.cur
        if isinstance(cur, _ParquetCursor):
            files[cur.name] = {"offset": cur.row, "line": cur.row}
        elif cur is not None:
            files[cur.name] = {"offset": cur.offset, "line": cur.line}
            if cur.header is not None:
                files[cur.name]["header"] = list(cur.header)
        out: dict[str, Any] = {"path": self.o.path, "done": sorted(self.done), "files": files}
        if self.src.parts > 1:
            out["split"] = [self.src.part, self.src.parts]
            if self.range is not None:
                out["range"] = list(self.range)
        return out

    def restore(self, position: Any) -> None:
        if isinstance(position, dict) and position and all(isinstance(j, int) for j in position):
            raise ConfigError(f"source {self.ctx.step!r}: the checkpoint holds {len(position)} split(s) of "
                              f"{self.o.path!r} (files.read(..., splits=N)), and this run reads it as one split: "
                              "resume with the splits= the checkpoint was taken with, or start over with a new "
                              "checkpoint directory")
        if not isinstance(position, dict) or "files" not in position:
            raise ConfigError(f"not a position of a file source: {position!r}")
        split = position.get("split", [0, 1])
        if split != [self.src.part, self.src.parts]:
            was = f"split {split[0]} of splits={split[1]}" if split[1] > 1 else "one split (splits=1)"
            now = f"split {self.src.part} of splits={self.src.parts}" if self.src.parts > 1 else \
                "one split (splits=1)"
            raise ConfigError(f"source {self.ctx.step!r}: the checkpoint holds the position of {was} of "
                              f"{self.o.path!r}, and this run reads {now}: resume with the splits= the checkpoint "
                              "was taken with, or start over with a new checkpoint directory")
        if position.get("range") is not None:  # the byte range the split had when the checkpoint was taken
            self.range = cast(tuple[int, int, int], tuple(position["range"]))
        if self.cur is not None:
            self.cur.close()
            self.cur = None
        self.csv_reader = None
        self.queue = None
        self.finished = False
        self.next_scan = self.clock.now_ms()
        self.done = set(position.get("done", ()))
        self.tails = {
            name: _Tail(int(p["offset"]), int(p["line"]), p.get("header"))
            for name, p in position["files"].items()
        }

    def close(self) -> None:
        if self.cur is not None:
            self.cur.close()
            self.cur = None
