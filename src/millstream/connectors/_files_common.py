"""What file sources and sinks share: the formats, telling a format from a file name,
checking a path and the optional import of pyarrow.

The public facade is :mod:`millstream.connectors.files`; reading is in
:mod:`._files_read` and writing in :mod:`._files_write`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal, cast

from millstream.errors import ConfigError, MissingDependencyError

__all__ = ["EXTENSIONS", "FORMATS", "MAX_CSV_RECORD_LINES", "MAX_JSON_DEPTH", "Format", "Tally", "check_format",
           "check_path", "format_of", "import_parquet", "json_depth", "need_pyarrow", "step_name",
           "suspect_json_lines", "too_deep"]

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


# -- hostile input: limits every mode applies the same way ----------------------------------


@dataclass
class Tally:
    """What a line reader passed over without it being a record or a bad record (a figure of
    the source step, the same in every mode)."""

    #: empty or whitespace-only lines of JSON lines and CSV: not records
    blank_lines: int = 0

    def metrics(self) -> dict[str, int]:
        return {"blank_lines": self.blank_lines}


#: The deepest a JSON record may nest (the record's own object is level 1). A deeper record is a
#: bad record under the source's ``on_error`` policy, in every mode: orjson, which every JSON sink
#: writes with, refuses more than 254 levels, so a source must not accept what no sink can write.
MAX_JSON_DEPTH = 254

#: The most lines one CSV record may span (a quoted field may hold newlines). A record still open
#: after that many lines (an unterminated quote) is a bad record reported at the line it starts on,
#: and reading goes on at the next line, so one stray quote cannot swallow the rest of a file.
MAX_CSV_RECORD_LINES = 1_000

# A valid JSON text nested d levels deep is at least 2*d bytes long, and holds d opening brackets.
_DEEP_LEN = 2 * (MAX_JSON_DEPTH + 1)
# a block with all but its newlines and opening brackets deleted, the brackets as "[": a line with
# more than MAX_JSON_DEPTH of them (the only kind that may be too deep) is a run of "[" that long
_OPENERS_ONLY = (bytes.maketrans(b"{", b"["), bytes(b for b in range(256) if b not in b"[{\n"))
# a \uD800-\uDFFF escape: a surrogate, which is valid JSON text only as a high+low pair
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def json_depth(raw: bytes) -> int:
    """How deep the JSON text ``raw`` nests (``{}`` is 1, ``{"a": []}`` is 2); brackets in strings
    do not count."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def too_deep(raw: bytes) -> bool:
    """Whether the JSON text ``raw`` nests deeper than :data:`MAX_JSON_DEPTH` (cheap for most lines)."""
    return (len(raw) >= _DEEP_LEN and raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH
            and json_depth(raw) > MAX_JSON_DEPTH)


def suspect_json_lines(lines: list[bytes], block: bytes | None = None, *, surrogates: bool = True,
                       deeper_than: int = MAX_JSON_DEPTH) -> list[int]:
    """Indices of the ``lines`` that may nest deeper than ``deeper_than`` levels or (``surrogates``)
    hold a ``\\uD800``-``\\uDFFF`` escape: the only lines a decoder other than orjson may take
    differently, to be checked one by one. ``block`` is ``b"\\n".join(lines)`` when the caller has
    it. Vectorised: scans of the block by C code, and a Python step per suspect line only."""
    if not lines or (block is None and not surrogates and max(map(len, lines)) < 2 * (deeper_than + 1)):
        return []
    if block is None:
        block = b"\n".join(lines)
    found: set[int] = set()
    openers = block.translate(*_OPENERS_ONLY)  # newlines kept: line numbers are the same
    many = b"[" * (deeper_than + 1)
    _lines_holding(openers, lambda text, pos: max(text.find(many, pos), -1), found)
    if surrogates and 92 in block:  # a backslash: there may be escapes
        def surrogate(text: bytes, pos: int) -> int:
            m = _SURROGATE.search(text, pos)
            return -1 if m is None else m.start()
        _lines_holding(block, surrogate, found)
    return sorted(found)


def _lines_holding(text: bytes, find: Any, found: set[int]) -> None:
    """Add to ``found`` the numbers (0-based) of the lines of ``text`` where ``find(text, pos)``
    (the offset of the next match from ``pos``, or -1) finds something."""
    pos, line, at = 0, 0, 0  # search from ``pos``; byte ``at`` starts line number ``line``
    while (start := find(text, pos)) >= 0:
        line += text.count(b"\n", at, start)
        at = text.rfind(b"\n", at, start) + 1
        found.add(line)
        end = text.find(b"\n", start)
        if end < 0:
            break
        pos = end + 1
