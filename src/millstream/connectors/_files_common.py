"""What file sources and sinks share: the formats, telling a format from a file name,
checking a path and the optional import of pyarrow.

The public facade is :mod:`millstream.connectors.files`; reading is in
:mod:`._files_read` and writing in :mod:`._files_write`.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal, cast

from millstream.errors import ConfigError, MissingDependencyError

__all__ = ["EXTENSIONS", "FORMATS", "Format", "check_format", "check_path", "format_of",
           "import_parquet", "need_pyarrow", "step_name"]

Format = Literal["jsonl", "csv", "lines", "parquet"]
#: The formats files can be read and written in.
FORMATS: tuple[str, ...] = ("jsonl", "csv", "lines", "parquet")

#: File name extension -> format (a ``.gz`` after it is looked through).
EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv",
    ".txt": "lines", ".log": "lines",
    ".parquet": "parquet", ".pq": "parquet",
}


def format_of(path: str) -> str | None:
    """The format a file name suggests (``.gz`` looked through), or None."""
    name = path.lower().rstrip("/" + os.sep)
    if name.endswith(".gz"):
        name = name[:-3]
    return EXTENSIONS.get(os.path.splitext(name)[1])


def check_format(fmt: Any) -> str:
    """``fmt`` if it is one of :data:`FORMATS`, else a :class:`ConfigError`."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(map(repr, FORMATS))}, not {fmt!r}")
    return cast(str, fmt)


def check_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a non-empty ``str``, else a :class:`ConfigError`."""
    p = os.fspath(path)
    if not isinstance(p, str) or not p:
        raise ConfigError(f"path must be a non-empty str or path, not {path!r}")
    return p


def step_name(path: str, name: str | None) -> str:
    """A step name for a source or sink of ``path``: ``name`` if given, else the file or directory name."""
    if name:
        return name
    return os.path.basename(path.rstrip("/" + os.sep)) or "files"


def need_pyarrow(feature: str) -> None:
    """Fail now, naming the ``parquet`` extra, when pyarrow is not installed."""
    if importlib.util.find_spec("pyarrow") is None:
        raise MissingDependencyError("pyarrow", "parquet", feature)


def import_parquet(feature: str) -> Any:
    """``(pyarrow, pyarrow.parquet)``, or a :class:`MissingDependencyError` naming the ``parquet`` extra."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow", "parquet", feature) from None
    return pa, pq
