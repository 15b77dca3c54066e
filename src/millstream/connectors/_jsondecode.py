"""JSON lines straight into a polars DataFrame, typed exactly as the row decoder (orjson) types them.

The micro-batch file source hands a chunk of lines to :class:`ColumnarJSON` as the block of bytes
it read (:meth:`ColumnarJSON.frame_block`: never split into lines, nor joined again). Once a schema
is known (every field of one type: int, str or bool, never null; taken from the first 1,000
lines, or from a chunk decoded by rows), chunks are parsed by ``polars.read_ndjson`` with that schema given, which is
several times faster than letting polars infer one, and then *proved* to be what orjson
would have made, without decoding them again:

- polars refuses, with an error, a value of another type in an ``Int64`` or ``Boolean``
  column, an integer beyond 64 bits, a line that is not an object, invalid UTF-8 and raw
  control characters in strings;
- a ``String`` column takes anything, turning ``5`` into ``"5"``: every string value that
  such a coercion could have made (one that looks like a number, ``true``/``false``, or an
  object or array in JSON; found by a look at the first byte of each value, then a pattern)
  has its line checked with orjson (rare in most data);
- what polars passes over without a word (a field not in the schema, a repeated key, an
  explicit ``null``, whitespace, an escape such as ``\\u00e9`` or ``\\/`` that is not the
  shortest form, a lone surrogate, which polars makes a NUL) makes the text longer than the
  compact JSON of the frame. The chunk's length in bytes must equal exactly the length of
  the frame's rows written as compact JSON, computed in columns (string bytes, digits of the
  integers, key lengths by presence), with the escapes ``\\"`` and ``\\\\`` taken from
  the numbers of backslashes and quotes in the text (see :meth:`ColumnarJSON._decode` for
  why that cannot hide a departure). This holds only when each line *is* that text.

A chunk that fails any check is decoded by rows as in native mode (the caller does it), so
micro-batch never retypes a value: mixed types, floats, nulls, nested values, blank and bad
lines all take the row path, which learns the schema again. After a failure the columnar
attempt is skipped for a few chunks (more after each failure in a row), so input that never
fits costs little more than the row decoder alone.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["ColumnarJSON"]

# a String value a coercion of a non-string JSON value by polars could have made
# (polars writes a coerced number in decimal or exponent form, an object or array as JSON text)
_COERCED = r"^(?:-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|[\[{].*[\]}])$"
_MAX_BACKOFF = 64
_SAMPLE = 1_000


class ColumnarJSON:
    """Per-source state: the schema learned from the row decoder, and counters for tests and figures."""

    def __init__(self) -> None:
        #: field -> "int" | "str" | "bool", learned from a chunk decoded by rows; None: none yet
        self.schema: dict[str, str] | None = None
        self._pl_schema: Any = None
        self._stats: Any = None  # the polars expressions of the length check
        self._empty: Any = None
        self._skip = 0  # chunks to leave to the row decoder before trying columns again
        #: whether the records of the chunk the row decoder makes next should be passed to :meth:`learn`
        self.wants_records = True
        self._backoff = 1
        #: chunks decoded into columns / chunks left to the row decoder
        self.columnar_chunks = 0
        self.row_chunks = 0

    # -- learning ----------------------------------------------------------------------------
    def learn(self, recs: list[Any]) -> None:
        """Learn the schema from ``recs``, the records of a whole chunk the row decoder made with no
        bad or blank line; forget it when they do not have one the columnar path can prove."""
        schema = _schema_of(recs)
        self.wants_records = False
        if schema is None or schema == self.schema:
            # no schema, or the one that just failed (escapes, nulls, ...): back off
            self._fail()
        if schema != self.schema:
            self.schema = schema
            self._pl_schema = self._stats = None

    def _learn_sample(self, block: bytes, n: int) -> None:
        """A schema to try from the first lines of a chunk (the whole chunk must still prove it)."""
        lines = block.split(b"\n", _SAMPLE)[:min(n, _SAMPLE)]
        try:
            recs = list(map(orjson.loads, lines))
        except orjson.JSONDecodeError:
            return
        if all(type(r) is dict for r in recs):
            self.schema = _schema_of(recs)
            self._pl_schema = self._stats = None

    def _fail(self) -> None:
        self._skip = self._backoff
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)

    # -- decoding ----------------------------------------------------------------------------
    def frame(self, lines: list[bytes]) -> Any:
        """``lines`` (no newline in any) as :meth:`frame_block` takes them."""
        return self.frame_block(b"".join(line + b"\n" for line in lines), len(lines))

    def frame_block(self, block: bytes, n: int) -> Any:
        """The ``n`` lines of ``block``, each ending with a newline (the bytes of the file as they
        are: nothing split or joined), as a polars DataFrame typed as orjson types them, or None:
        then decode them by rows (and pass the records to :meth:`learn`)."""
        self.wants_records = False
        if self._skip:
            self._skip -= 1
            self.row_chunks += 1
            return None
        if self.schema is None and n:
            self._learn_sample(block, n)
        if self.schema is None or not n:
            self.row_chunks += 1
            self.wants_records = bool(n)
            return None
        df = self._decode(block, n)
        if df is None:
            self.row_chunks += 1
            self.wants_records = True  # the records may show the schema has changed
            return None
        self._backoff = 1
        self.columnar_chunks += 1
        return df

    def _decode(self, block: bytes, n: int) -> Any:
        import numpy as np
        import polars as pl

        self._prepare()
        try:
            df = pl.read_ndjson(block, schema=self._pl_schema)
        except Exception:  # noqa: BLE001 - anything polars refuses is for the row decoder to judge
            return None
        if df.height != n:  # blank lines, which polars passes over
            return None
        stats = df.select(self._stats).row(0, named=True)
        arr = np.frombuffer(block, dtype=np.uint8)
        if not self._coercions_are_strings(df, _Lines(block, arr)):
            return None
        text = len(block) - n  # the lines without their newlines
        schema = self.schema or {}
        counts = [stats[f"_n_{c}"] for c in schema]
        present = sum(counts)
        strings = sum(k for c, k in zip(schema, counts, strict=True) if schema[c] == "str")
        # rows with no field at all ("{}") have no comma less than fields; count them only if any may exist
        nonempty = n if n in counts else n - df.select(self._empty).item()
        # the compact JSON of the frame, its strings without their escapes
        compact = 2 * n + present - nonempty + stats["_bytes"] + self._int_digits(df)
        # The escapes: compact JSON writes a decoded " as \" and a decoded \ as \\. In such text the
        # backslashes number 2 per decoded \ plus 1 per decoded ", and the quotes 2 per key and per
        # string plus 1 per decoded ". Taking the escapes from these counts (in the text, not the frame)
        # cannot hide a departure: every other escape, field or byte adds more to the length than
        # to half the counts, so the equation holds only for compact JSON with no other escape.
        backslashes = int(np.count_nonzero(arr == 92))
        quoted = int(np.count_nonzero(arr == 34)) - 2 * present - 2 * strings
        if quoted < 0 or 2 * text != 2 * compact + backslashes + quoted:
            return None
        return df

    def _int_digits(self, df: Any) -> int:
        """The characters of the integers of ``df`` written in JSON, but one per non-null value (in
        the byte terms): one more per power of ten reached, one per minus sign."""
        import numpy as np

        ints = [c for c, t in (self.schema or {}).items() if t == "int"]
        if not ints:
            return 0
        total = 0
        for c in ints:
            a = df[c].fill_null(0).to_numpy()  # no copy when there is no null
            total += int(np.count_nonzero(a < 0))
            a = np.abs(a)  # -2**63 stays negative: it counts as one character, so its line cannot match
            top, p = int(a.max()), 10
            while p <= top:
                total += int(np.count_nonzero(a >= p))
                p *= 10
        return total

    def _coercions_are_strings(self, df: Any, lines: _Lines) -> bool:
        """Whether each String value that may be a coerced number, boolean, object or array is a
        string in its line, equal to what polars made of it (its line decoded by orjson)."""
        loads = orjson.loads
        for c, rows in _maybe_coerced(df, [c for c, t in (self.schema or {}).items() if t == "str"]):
            for i, v in zip(rows.to_list(), df[c].gather(rows).to_list(), strict=True):
                try:
                    rec = loads(lines[i])
                except orjson.JSONDecodeError:
                    return False
                if type(rec.get(c)) is not str or rec[c] != v:
                    return False
        return True

    def _prepare(self) -> None:
        """The polars schema and the expressions of the checks, made once per schema."""
        if self._pl_schema is not None:
            return
        import polars as pl

        schema = self.schema or {}
        types = {"int": pl.Int64, "str": pl.String, "bool": pl.Boolean}
        self._pl_schema = {c: types[t] for c, t in schema.items()}
        # the compact JSON of a row: "{" "}", per present field its key, ":" and value, and commas
        byte_terms = []
        counts = []
        for c, t in schema.items():
            col = pl.col(c)
            key = len(orjson.dumps(c)) + 1  # "key":
            n = col.is_not_null().sum()
            counts.append(n.alias(f"_n_{c}"))
            if t == "int":
                value = n  # one digit each; :meth:`_int_digits` adds the others and the signs
            elif t == "bool":
                value = 4 * n + (~col).sum()
            else:
                value = col.str.len_bytes().sum() + 2 * n
            byte_terms.append(value.cast(pl.Int64) + key * n.cast(pl.Int64))
        self._empty = pl.all_horizontal(pl.all().is_null()).sum() if schema else pl.len()
        self._stats = [
            *counts,
            pl.sum_horizontal(byte_terms).alias("_bytes") if byte_terms else pl.lit(0).alias("_bytes"),
        ]


class _Lines:
    """Line ``i`` of a block of newline-terminated lines, found only when asked for (the line ends
    are searched for once, by numpy)."""

    def __init__(self, block: bytes, arr: Any) -> None:
        self.block = block
        self.arr = arr
        self.ends: Any = None

    def __getitem__(self, i: int) -> bytes:
        if self.ends is None:
            import numpy as np

            self.ends = np.flatnonzero(self.arr == 10)
        start = int(self.ends[i - 1]) + 1 if i else 0
        return self.block[start:int(self.ends[i])]


_FIRST: Any = None  # first bytes a value polars coerced into a string may start with (a numpy table)


def _maybe_coerced(df: Any, columns: list[str]) -> Any:
    """``(column, rows)`` for each String column with values polars may have made by coercion: a
    quick look at each value's first byte (in its Arrow string view), then the pattern on those."""
    import numpy as np
    import polars as pl
    import pyarrow as pa

    global _FIRST
    if _FIRST is None:
        first = np.zeros(256, dtype=np.uint8)
        first[list(b"-0123456789[{")] = 2  # a number, an object, an array: any length
        first[list(b"tf")] = 1  # "true", "false": 4 or 5 bytes
        _FIRST = first
    for c in columns:
        arr = df[c].to_arrow(compat_level=pl.CompatLevel.newest())
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if arr.type != pa.string_view():  # not the layout looked at below: check every value
            rows = df[c].str.contains(_COERCED).arg_true()
        else:
            # a view is 16 bytes: the length (int32), then the value's first bytes
            views = np.frombuffer(arr.buffers()[1], dtype=np.uint8).reshape(-1, 16)[arr.offset:arr.offset + len(arr)]
            lengths = views[:, :4].copy().view(np.int32).ravel()
            kind = _FIRST[views[:, 4]]
            maybe = np.flatnonzero(((kind == 2) & (lengths > 0)) | ((kind == 1) & ((lengths == 4) | (lengths == 5))))
            if not len(maybe):
                continue
            idx = pl.Series(maybe, dtype=pl.UInt32)
            rows = idx.filter(df[c].gather(idx).str.contains(_COERCED).fill_null(False))
        if len(rows):
            yield c, rows


def _schema_of(recs: list[Any]) -> dict[str, str] | None:
    """The fields of ``recs`` with their one type each (int, str or bool), or None when some field
    holds null, a float, an object, an array or values of two types."""
    if not recs:
        return None
    kinds: dict[str, type] = {}
    for r in recs:
        for k, v in r.items():
            t = type(v)
            if kinds.setdefault(k, t) is not t:
                return None
    names = {int: "int", str: "str", bool: "bool"}
    schema = {}
    for k, t in kinds.items():
        if orjson.dumps(k) != b'"' + k.encode() + b'"':
            return None  # a key JSON writes with escapes: the counts of the length check assume none
        name = names.get(t)
        if name is None:
            return None
        schema[k] = name
    return schema  # an integer beyond 64 bits: polars refuses it, and the chunk goes by rows
