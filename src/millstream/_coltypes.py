"""One type per value, in every mode: finding the columns polars retyped when it made a batch.

Native mode keeps each record as it came: ``{"key": 1}`` and ``{"key": "x"}`` are two records with
an int key and a str key. Polars gives a column one type, and when it infers that type from values of
several types it converts the others without a word: ``1`` and ``"x"`` become the String column
``["1", "x"]``, ``1`` and ``2.5`` the Float64 ``[1.0, 2.5]``, ``True`` and ``1`` the Int64 ``[1, 1]``,
and ``5`` next to an object becomes a null in a Struct column. Every other record of the batch would
then change type (a key ``1`` becoming ``"1"``), so the answers would depend on the mode and on what
else happened to be in the batch.

:func:`mixed_columns` finds those columns after the fact, cheaply enough for every batch: it does not
look at every value in Python, only at the values a conversion could have made, found by a
vectorised test on the column (a String that reads as a number, ``true``/``false``, an object or an
array; an integral Float64; an Int64 of 0 or 1; a null in a nested column); each of those is checked
against the original value (the record, or the JSON line decoded by orjson). A homogeneous batch
costs a few polars expressions; only suspicious values cost Python.

What the callers do with a mixed column is the rule of :func:`millstream._runtime._columnar.to_frame`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["COERCED", "mixed_columns", "retyped_json"]

#: a String value that a conversion of a number, a boolean, an object or an array could have made
#: (polars writes a number in decimal or exponent form, an object or an array as its JSON text)
COERCED = (r"^(?:[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|-inf|NaN|nan|true|false|"
           r"[\[{].*[\]}])$")


_FIRST: Any = None  # first bytes of a String value a conversion may have made (a numpy table)
_WORDS = [int.from_bytes(w, "big") for w in (b"inf", b"nan", b"NaN")]


def _suspects(df: Any, name: str) -> tuple[Any, tuple[type, ...]] | None:
    """(rows whose value a conversion may have made, the Python types the column holds without one),
    or None when no value of the column can come from a conversion. Numbers are looked at with numpy
    (no copy), strings by their first byte in the Arrow string view: a few microseconds a column."""
    import numpy as np
    import polars as pl

    s = df.get_column(name)
    dtype = s.dtype
    if dtype == pl.Null or dtype == pl.Boolean or s.null_count() == s.len():
        return None
    if dtype == pl.String:
        return _string_suspects(s), (str,)
    if dtype.is_float():
        a = s.fill_null(0.5).to_numpy() if s.null_count() else s.to_numpy()
        return np.flatnonzero(a == np.round(a)), (float,)  # an int made a float is integral
    if dtype.is_integer():
        lo, hi = s.min(), s.max()
        if lo > 1 or hi < 0:
            return None
        a = s.fill_null(2).to_numpy() if s.null_count() else s.to_numpy()
        return np.flatnonzero((a == 0) | (a == 1)), (int,)  # a bool made an int is 0 or 1
    if dtype.is_nested():
        return s.is_null().arg_true().to_numpy(), ()  # a scalar next to objects or lists becomes a null
    return np.arange(s.len()), ()  # dates, decimals, ...: look at every value


def _string_suspects(s: Any) -> Any:
    import numpy as np
    import polars as pl
    import pyarrow as pa

    global _FIRST
    if _FIRST is None:
        first = np.zeros(256, dtype=np.uint8)
        first[list(b"-+.0123456789[{")] = 1  # a number, an object, an array: any length
        first[list(b"tf")] = 2  # true, false: 4 or 5 bytes
        first[list(b"inN")] = 3  # inf, nan, NaN: 3 bytes
        _FIRST = first
    arr = s.to_arrow(compat_level=pl.CompatLevel.newest())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.string_view():  # not the layout read below: every value that looks converted
        return s.str.contains(COERCED).fill_null(False).arg_true().to_numpy()
    # a view is 16 bytes: the length (int32), then the value's first bytes
    views = np.frombuffer(arr.buffers()[1], dtype=np.uint8).reshape(-1, 16)[arr.offset:arr.offset + len(arr)]
    lengths = views[:, :4].copy().view(np.int32).ravel()
    kind = _FIRST[views[:, 4]]
    three = (kind == 3) & (lengths == 3)
    if three.any():  # exactly inf, nan or NaN
        b = views[:, 4:7].astype(np.uint32)
        word = (b[:, 0] << 16) | (b[:, 1] << 8) | b[:, 2]
        three &= np.isin(word, _WORDS)
    return np.flatnonzero(((kind == 1) & (lengths > 0)) | ((kind == 2) & ((lengths == 4) | (lengths == 5))) | three)


def _mixed(df: Any, value_of: Callable[[int, str], Any], exact: Callable[[str], tuple[type, ...] | None]) \
        -> Iterator[tuple[str, int]]:
    for name in df.columns:
        found = _suspects(df, name)
        if found is None:
            continue
        rows, types = found
        if not len(rows):
            continue
        wanted = types or exact(name)
        for i in rows.tolist():
            v = value_of(i, name)
            if v is None:
                continue
            if wanted is None:
                wanted = (type(v),)
            if type(v) not in wanted:
                yield name, i
                break


def mixed_columns(df: Any, records: list[Any]) -> dict[str, int]:
    """The columns of ``df`` (made by polars from the dict ``records``) holding values of more than
    one type among the records, each with the index of a record whose value polars converted (or
    whose type is not the column's first)."""
    first: dict[str, tuple[type, ...] | None] = {}

    def exact(name: str) -> tuple[type, ...] | None:
        # nested and other columns: the type of the first non-null value is the column's
        if name not in first:
            t = next((type(r[name]) for r in records if r.get(name) is not None), None)
            first[name] = (t,) if t is not None else None
        return first[name]

    return dict(_mixed(df, lambda i, name: records[i].get(name), exact))


def retyped_json(df: Any, lines: list[bytes]) -> dict[str, int]:
    """:func:`mixed_columns` for a DataFrame that polars inferred from JSON ``lines`` (one object per
    line, in order): each suspicious value is checked against its line decoded by orjson."""
    import orjson

    decoded: dict[int, Any] = {}

    def value_of(i: int, name: str) -> Any:
        if i not in decoded:
            decoded[i] = orjson.loads(lines[i])
        rec = decoded[i]
        return rec.get(name) if type(rec) is dict else None

    def exact(name: str) -> tuple[type, ...] | None:
        return None  # the first suspicious value's type; the others must share it

    return dict(_mixed(df, value_of, exact))
