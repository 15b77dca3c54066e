"""Key groups of polars columns (numpy), behind :func:`millstream._keygroups.key_groups`: imported
only when a column's groups are asked, so that a native job never loads numpy or polars for them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from millstream._state._keys import encode_key

Groups = npt.NDArray[np.int64]

# -- the same groups for a column ---------------------------------------------------------------
#
# A value's group is the CRC-32 of its canonical encoding (see _state/_keys.py): ``s`` + UTF-8 for a
# str, ``i`` + decimal digits for an int (and a bool, and an integral float), ``f`` + 8 big-endian
# bytes for another float, ``N`` for None, ``b`` + the bytes for bytes; a tuple is ``t`` then, per
# item, its encoding's length (4 bytes, big-endian) and the encoding. A column is turned into those
# encodings in parts (rows of one form), and the CRC runs over all rows at once, one byte position
# at a time: the same table-driven CRC-32 as zlib's.


def _crc_table() -> npt.NDArray[np.uint32]:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_TABLE = _crc_table()
_FF = np.uint32(0xFF)
_EIGHT = np.uint32(8)
_INIT = np.uint32(0xFFFFFFFF)  # zlib's CRC-32 starts and ends inverted

Crc = npt.NDArray[np.uint32]
Bytes = npt.NDArray[np.uint8]
Offsets = npt.NDArray[np.int64]


def _crc_bytes(crc: Crc, data: Bytes, offsets: Offsets) -> Crc:
    """Continue each row's (inverted) CRC with its bytes ``data[offsets[i]:offsets[i + 1]]``."""
    lengths = offsets[1:] - offsets[:-1]
    if len(lengths) == 0 or int(lengths.max()) == 0:
        return crc
    order = np.argsort(-lengths, kind="stable")  # longest first: the rows still going are a prefix
    starts = offsets[:-1][order]
    longest_first = lengths[order]
    c = crc[order]
    # rows[j]: how many rows have more than j bytes
    rows = np.searchsorted(-longest_first, -np.arange(int(longest_first[0])), side="left")
    for j, k in enumerate(rows.tolist()):
        head = c[:k]
        c[:k] = _TABLE[(head ^ data[starts[:k] + j]) & _FF] ^ (head >> _EIGHT)
    out = np.empty_like(crc)
    out[order] = c
    return out


def _crc_fixed(crc: Crc, rows: Bytes) -> Crc:
    """Continue each row's CRC with the bytes of its row of the 2-d array ``rows``."""
    for j in range(rows.shape[1]):
        crc = _TABLE[(crc ^ rows[:, j]) & _FF] ^ (crc >> _EIGHT)
    return crc


class _Part:
    """The encodings of some rows of a column (``rows`` None: all of them): an optional one-byte
    ``tag`` then each row's bytes ``data[offsets[i]:offsets[i + 1]]``."""

    __slots__ = ("data", "offsets", "rows", "tag")

    def __init__(self, rows: npt.NDArray[np.int64] | None, tag: bytes, data: Bytes, offsets: Offsets) -> None:
        self.rows, self.tag, self.data, self.offsets = rows, tag, data, offsets

    def lengths(self) -> npt.NDArray[np.int64]:
        return self.offsets[1:] - self.offsets[:-1] + len(self.tag)

    def update(self, crc: Crc) -> Crc:
        if self.tag:
            crc = _crc_fixed(crc, np.frombuffer(self.tag, dtype=np.uint8).reshape(1, -1).repeat(len(crc), 0))
        return _crc_bytes(crc, self.data, self.offsets)


def _binary_part(rows: npt.NDArray[np.int64] | None, tag: bytes, s: pl.Series) -> _Part:
    """The bytes of a String or Binary column without nulls, after ``tag``."""
    import pyarrow as pa

    arr = s.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_binary())
    _, off, data = arr.buffers()
    offsets = np.frombuffer(off, dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    values = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return _Part(rows, tag, values, offsets)


def _fixed_part(rows: npt.NDArray[np.int64] | None, encoded: bytes, n: int) -> _Part:
    """The same encoding for ``n`` rows (None, a bool)."""
    return _Part(rows, encoded, np.zeros(0, np.uint8), np.zeros(n + 1, np.int64))


def _python_part(rows: npt.NDArray[np.int64] | None, values: Sequence[Any]) -> _Part:
    """Encodings made one value at a time (mixed or unusual columns): raises as native mode does."""
    encoded = [encode_key(v) for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return _Part(rows, b"", np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)


def _with_nulls(s: pl.Series, tag: bytes, text: pl.Series | None = None) -> list[_Part]:
    """``tag`` + the bytes of ``text`` (default: ``s``) where ``s`` is set, ``N`` where it is null."""
    text = s if text is None else text
    nulls = s.null_count()
    if nulls == 0:
        return [_binary_part(None, tag, text)]
    null = s.is_null().to_numpy()
    parts = [_fixed_part(np.flatnonzero(null), b"N", nulls)]
    if nulls < len(s):
        keep = np.flatnonzero(~null)
        parts.append(_binary_part(keep, tag, text.filter(~s.is_null())))
    return parts


def _parts(s: pl.Series) -> list[_Part]:
    """The canonical encodings of a column's values, in parts."""
    dtype = s.dtype
    if dtype == pl.Null:
        return [_fixed_part(None, b"N", len(s))]
    if dtype == pl.Boolean:
        s = s.cast(pl.Int8)
        dtype = s.dtype
    if dtype.is_integer():
        return _with_nulls(s, b"i", s.cast(pl.String))
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return _with_nulls(s, b"s", s.cast(pl.String))
    if dtype == pl.Binary:
        return _with_nulls(s, b"b")
    if dtype.is_float():
        return _float_parts(s.cast(pl.Float64))
    return [_python_part(None, s.to_list())]


def _float_parts(s: pl.Series) -> list[_Part]:
    null = s.is_null().to_numpy()
    x = s.fill_null(0.0).to_numpy().astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(x) & (np.floor(x) == x)
    small = integral & (np.abs(x) < 2.0**63) & ~null
    parts: list[_Part] = []
    idx = np.flatnonzero(small)
    if len(idx):  # an integral float is the int it equals
        parts.append(_binary_part(idx, b"i", pl.Series(x[idx]).cast(pl.Int64).cast(pl.String)))
    idx = np.flatnonzero(~integral & ~null)
    if len(idx):  # b"f" + the double, big-endian
        data = np.ascontiguousarray(x[idx].astype(">f8")).view(np.uint8)
        parts.append(_Part(idx, b"f", data, np.arange(0, 8 * len(idx) + 1, 8, dtype=np.int64)))
    idx = np.flatnonzero((integral & ~small) | null)
    if len(idx):  # beyond 2**63, and nulls: one value at a time
        parts.append(_python_part(idx, [None if null[i] else float(x[i]) for i in idx.tolist()]))
    return parts


def _apply(crc: Crc, parts: list[_Part], with_lengths: bool) -> Crc:
    if with_lengths:  # a tuple item: its encoding's length first
        lengths = np.empty(len(crc), dtype=np.int64)
        for part in parts:
            if part.rows is None:
                lengths[:] = part.lengths()
            else:
                lengths[part.rows] = part.lengths()
        crc = _crc_fixed(crc, lengths.astype(">u4").view(np.uint8).reshape(-1, 4))
    for part in parts:
        if part.rows is None:
            crc = part.update(crc)
        else:
            crc[part.rows] = part.update(crc[part.rows])
    return crc


_TUPLE = np.frombuffer(b"t", dtype=np.uint8).reshape(1, 1)


def key_groups(key: pl.Series | Sequence[pl.Series], max_parallelism: int) -> Groups:
    """See :func:`millstream._keygroups.key_groups` (``max_parallelism`` checked there)."""
    columns = [key] if isinstance(key, pl.Series) else list(key)
    single = isinstance(key, pl.Series)
    n = len(columns[0]) if columns else 0
    crc = np.full(n, _INIT, dtype=np.uint32)
    if not single:
        crc = _crc_fixed(crc, np.broadcast_to(_TUPLE, (n, 1)))
    for c in columns:
        if len(c) != n:
            raise ValueError(f"key columns differ in length: {n} and {len(c)}")
        crc = _apply(crc, _parts(c), with_lengths=not single)
    return ((crc ^ _INIT).astype(np.int64)) % max_parallelism
