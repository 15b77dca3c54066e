"""Files: JSON lines, CSV, text lines and Parquet; read bounded or followed like ``tail -F``.

>>> import millstream as ms, pathlib, shutil, tempfile
>>> from millstream.connectors import files
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "in.jsonl").write_text('{"n": 1}\\n{"n": 2}\\n')
>>> flow = ms.Flow("tenfold")
>>> flow.source(files.read(d / "in.jsonl")).map(lambda r: {"n": r["n"] * 10}).sink(files.write(d / "out.jsonl"))
>>> _ = flow.run()
>>> (d / "out.jsonl").read_text()
'{"n":10}\\n{"n":20}\\n'
>>> shutil.rmtree(d)

The format comes from the file name (``.jsonl``/``.ndjson``/``.json``, ``.csv``,
``.txt``/``.log``, ``.parquet``; line formats may end in ``.gz``) or from ``format=``.
A malformed line goes to the source's ``on_error`` policy with its file and line
(``events.jsonl:42``); blank lines are ignored. Sources are replayable: their
position is a byte offset and line number per file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from millstream.connectors._base import ErrorPolicy
from millstream.connectors._files_common import FORMATS
from millstream.connectors._files_read import FileSource, ReadOptions, make_source
from millstream.connectors._files_write import FileSink, WriteOptions, make_sink

__all__ = ["FORMATS", "FileSink", "FileSource", "ReadOptions", "WriteOptions", "read", "write"]


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
    block_size: int = 1 << 20,
) -> FileSource:
    """A source that reads the file ``path``, or the files of the directory ``path`` in name order.

    - ``format``: ``"jsonl"`` (one JSON object per line, parsed with orjson),
      ``"csv"`` (a header line, then rows as dicts of strings), ``"lines"`` (each
      line a ``str``) or ``"parquet"`` (rows as dicts; needs ``millstream[parquet]``).
      Inferred from the file name when None; ``.gz`` files are decompressed.
    - ``pattern``: which files of a directory to read (a glob or a tuple of globs);
      by default those with the format's extensions. Hidden files are never read.
    - ``follow``: keep reading forever, like ``tail -F``: lines appended to the
      files and new files in the directory are read; a last line is read only once
      it ends with a newline; a rotated or truncated file is read from its start.
      ``poll_interval`` (seconds) is how often the directory is looked at again;
      ``max_idle`` (ms or timedelta) ends the input after that long without news,
      and :meth:`FileSource.stop` ends it from another thread.
    - ``on_error``: what to do with a bad line (not JSON, not an object, a CSV row
      with the wrong number of fields, a failed ``csv_types`` conversion):
      ``"fail"``, ``"skip"`` (counted) or ``millstream.connectors.dead_letter(sink)``.
    - ``csv_types``: column -> function applied to its text, e.g. ``{"amount": float}``;
      an empty field becomes None, and ``bool`` accepts true/false, yes/no, 1/0.

    Positions (``position_of``) are ``path:line`` (1-based; for CSV the line the row
    starts on) and ``path#row N`` (0-based) for Parquet.
    """
    return make_source(path, format=format, follow=follow, on_error=on_error, name=name,
                       poll_interval=poll_interval, max_idle=max_idle, pattern=pattern, csv_types=csv_types,
                       delimiter=delimiter, encoding=encoding, block_size=block_size)


def write(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    name: str | None = None,
    row_group_size: int = 65_536,
) -> FileSink:
    """A sink that writes records to the file ``path`` (replaced if it exists; parent directories made).

    ``format`` is inferred from the name as for :func:`read`: JSON lines (orjson;
    values JSON cannot hold are written as ``str``), CSV (the header is the first
    record's keys), text lines (``str(record)``) or Parquet (rows buffered and
    written ``row_group_size`` at a time). A name ending in ``.gz`` is compressed.
    A ``path`` ending in ``/``, or naming a directory, gets ``part-0.jsonl`` inside.
    """
    return make_sink(path, format=format, name=name, row_group_size=row_group_size)
