"""Keyed state of the columnar operators, updated in place so that a batch costs what it touches.

Three small structures that the vectorised running aggregate and session windows share:

- :class:`KeyIndex`: each key its dense index (a ``dict`` of the keys' Python values, so that two
  values are one key exactly when they are one key in native mode's dict: ``1``, ``1.0`` and
  ``True`` are one key, ``1`` and ``"1"`` two), and the key's values as columns, by index;
- :class:`Columns`: columns of values by slot (a key's running totals, an open session's partial
  aggregates), read (``gather``) and written (``scatter``) at the slots a batch touches, in place;
- :class:`DueIndex`: slots by the time they fall due (a session's end), so that a watermark finds
  what it fires without looking at the rest.

A snapshot of an operator built on them is one frame of rows with the key columns (what a key-group
filter selects from, :func:`millstream._keygroups.key_groups`); loading it rebuilds the structures.
:func:`state_key_columns` names the key columns of every vectorised operator's state frames (what
:mod:`millstream._parallel._rescale` splits them by).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from millstream._plan import JoinOp, KeySpec, Op

from ._columnar import polars

if TYPE_CHECKING:
    import numpy.typing as npt
    import polars as pl

    Ints = npt.NDArray[np.int64]


#: the column a key read by an expression is computed into (vectorised windows and running aggregates)
KEY = "__key__"


def join_key_column(side: int) -> str:
    """The column a vectorised join computes side ``side``'s expression key into."""
    return f"__k{side}_0"


def state_key_columns(op: Op) -> list[list[str]]:
    """The columns that hold the key in a vectorised keyed operator's state frames, per input (a join's
    per side): the key's fields (the tuple of them when several, as natively), or the column an
    expression key is computed into. (A key read by a Python function is never vectorised.)"""
    if isinstance(op, JoinOp):
        return [_key_columns(key, join_key_column(side)) for side, key in enumerate((op.left_key, op.right_key))]
    key = getattr(op, "key", None)
    assert isinstance(key, KeySpec), f"{op.kind} is not keyed"
    return [_key_columns(key, KEY)]


def _key_columns(key: KeySpec, expr_column: str) -> list[str]:
    assert key.fn is None, "a key read by a function is not vectorised"
    return [expr_column] if key.expr is not None else list(key.fields)


def _object_array(values: list[Any]) -> Any:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # element by element: a list value must stay one element
        out[i] = v
    return out


class Columns:
    """Named columns of ``capacity`` values each, null until written. Typed values live in polars
    Series (written in place by ``scatter``); a column that must hold Python values of several types
    (a polars ``Object`` column, see :func:`._columnar.to_frame`) lives in a numpy object array.

    Values of another type than their column's take the type both fit in, as a concatenation would
    (partial aggregates); with ``exact`` (key columns) the column holds Python values instead, so that
    no value changes (``1`` and ``"1"`` stay two keys)."""

    def __init__(self, *, exact: bool = False) -> None:
        self.exact = exact
        self.pl = polars()
        self.cols: dict[str, Any] = {}
        self.capacity = 0

    def reserve(self, n: int) -> None:
        """Room for slots ``0 .. n - 1`` (grown by doubling, so growth costs O(1) a slot)."""
        if n <= self.capacity:
            return
        cap = max(n, 2 * self.capacity, 1024)
        more = cap - self.capacity
        P = self.pl
        for name, col in self.cols.items():
            if isinstance(col, np.ndarray):
                self.cols[name] = np.concatenate([col, np.full(more, None, dtype=object)])
            else:
                self.cols[name] = col.append(P.repeat(None, more, dtype=col.dtype, eager=True)).rechunk()
        self.capacity = cap

    def gather(self, idx: Ints, names: list[str]) -> pl.DataFrame:
        """The values at slots ``idx`` (a column not written yet: nulls)."""
        P = self.pl
        out = []
        for name in names:
            col = self.cols.get(name)
            if col is None:
                out.append(P.repeat(None, len(idx), dtype=P.Null, eager=True).alias(name))
            elif isinstance(col, np.ndarray):
                out.append(P.Series(name, col[idx].tolist(), dtype=P.Object))
            else:
                out.append(col.gather(idx))
        frame: pl.DataFrame = P.DataFrame(out, height=len(idx))
        return frame

    def scatter(self, idx: Ints, values: pl.DataFrame) -> None:
        """Write row ``i`` of ``values`` at slot ``idx[i]`` (``idx`` unique, within the capacity). A value
        of another type than its column's takes the type both fit in, as a concatenation would."""
        P = self.pl
        for name in values.columns:
            new = values.get_column(name)
            col = self.cols.get(name)
            if col is None:
                col = self.cols[name] = (np.full(self.capacity, None, dtype=object) if new.dtype == P.Object
                                         else P.repeat(None, self.capacity, dtype=new.dtype, eager=True).alias(name))
            if not isinstance(col, np.ndarray) and new.dtype != col.dtype:
                col, new = self._fit(name, col, new)
            if isinstance(col, np.ndarray):
                for i, v in zip(idx.tolist(), new.to_list(), strict=True):
                    col[i] = v
            elif len(idx) and col.dtype != P.Null:  # a column of nulls only stays one
                col.scatter(idx, new)

    def _fit(self, name: str, col: pl.Series, new: pl.Series) -> tuple[Any, pl.Series]:
        P = self.pl
        if new.dtype == P.Null:
            return col, new.cast(col.dtype)
        if new.dtype != P.Object and (col.dtype == P.Null or col.null_count() == col.len()):
            # no value yet (a column made from a batch of nulls only): it takes the values' type, as a
            # common type would change them (booleans after a column of null Int64 would read 0 and 1)
            col = self.cols[name] = col.cast(new.dtype)
            return col, new
        if new.dtype == P.Object or self.exact:
            arr = self.cols[name] = _object_array(col.to_list())
            return arr, new
        both = P.concat([col.head(0).to_frame(), new.head(0).to_frame()], how="vertical_relaxed").dtypes[0]
        col = self.cols[name] = col.cast(both)
        return col, new.cast(both)


class KeyIndex:
    """Dense indexes of the keys of key columns ``names`` (none: one key, index 0), reused once released."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.ids: dict[Any, int] = {}
        self.values = Columns(exact=True)  # the key columns, by index
        self.pykeys: Any = np.empty(0, dtype=object)  # the dict's key, by index (to release it)
        self.free: list[int] = []
        self.top = 0  # indexes below are in use or free

    def __len__(self) -> int:
        return len(self.ids) if self.names else min(self.top, 1)

    @property
    def capacity(self) -> int:
        return self.top

    def _keys(self, df: pl.DataFrame) -> list[Any]:
        cols = [df.get_column(n).to_list() for n in self.names]
        return cols[0] if len(cols) == 1 else list(zip(*cols, strict=True))

    def find(self, df: pl.DataFrame) -> Ints:
        """The index of each row's key, -1 for a key not in the index."""
        if not self.names:
            return np.full(df.height, 0 if self.top else -1, dtype=np.int64)
        get = self.ids.get
        return np.fromiter((get(k, -1) for k in self._keys(df)), dtype=np.int64, count=df.height)

    def lookup(self, df: pl.DataFrame) -> Ints:
        """The index of each row's key, adding the keys not in the index yet."""
        if not self.names:
            self.top = 1
            return np.zeros(df.height, dtype=np.int64)
        keys = self._keys(df)
        get = self.ids.get
        out = [get(k, -1) for k in keys]
        if -1 not in out:
            return np.array(out, dtype=np.int64)
        rows, added = [], []
        for i, k in enumerate(keys):
            if out[i] == -1:
                j = get(k, -1)
                if j == -1:
                    j = self._add(k)
                    rows.append(i)
                    added.append(j)
                out[i] = j
        new = np.array(added, dtype=np.int64)
        self.values.reserve(self.top)
        self.values.scatter(new, df.select(self.names)[rows])
        return np.array(out, dtype=np.int64)

    def _add(self, key: Any) -> int:
        if self.free:
            j = self.free.pop()
        else:
            j = self.top
            self.top += 1
            if j >= len(self.pykeys):
                self.pykeys = np.concatenate([self.pykeys, np.full(max(1024, j), None, dtype=object)])
        self.ids[key] = j
        self.pykeys[j] = key
        return j

    def release(self, idx: Ints) -> None:
        """Forget the keys at ``idx`` (their state is gone); their indexes are reused."""
        if not self.names:
            return
        for j in idx.tolist():
            del self.ids[self.pykeys[j]]
            self.pykeys[j] = None
            self.free.append(j)

    def live(self) -> Ints:
        """The indexes in use, in the order the keys came."""
        if not self.names:
            return np.arange(min(self.top, 1), dtype=np.int64)
        return np.fromiter(self.ids.values(), dtype=np.int64, count=len(self.ids))

    def frame(self, idx: Ints) -> pl.DataFrame:
        """The key columns of the keys at ``idx``."""
        return self.values.gather(idx, self.names)


class DueIndex:
    """Slots by the time they fall due: sorted runs of (time, slot), merged as a binary counter
    merges (a slot is re-sorted O(log n) times), from which a watermark takes the prefix that is due.
    An entry may be stale (its slot was freed, or is due at another time now): the caller checks what
    it gets back against its state, and rebuilds the index when the stale entries are many."""

    def __init__(self) -> None:
        self.runs: list[tuple[Ints, Ints]] = []
        self.entries = 0

    def add(self, times: Ints, slots: Ints) -> None:
        if not len(times):
            return
        order = np.argsort(times, kind="stable")
        self.runs.append((times[order], slots[order]))
        self.entries += len(times)
        runs = self.runs
        while len(runs) >= 2 and len(runs[-2][0]) <= 2 * len(runs[-1][0]):
            (t2, s2), (t1, s1) = runs.pop(), runs.pop()
            t, s = np.concatenate([t1, t2]), np.concatenate([s1, s2])
            order = np.argsort(t, kind="stable")
            runs.append((t[order], s[order]))

    def pop(self, upto: int) -> tuple[Ints, Ints]:
        """The entries due at or before ``upto``, taken out of the index."""
        times, slots, keep = [], [], []
        for t, s in self.runs:
            n = int(np.searchsorted(t, upto, side="right"))
            if n:
                times.append(t[:n])
                slots.append(s[:n])
            if n < len(t):
                keep.append((t[n:], s[n:]))
        self.runs = keep
        if not times:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        t, s = np.concatenate(times), np.concatenate(slots)
        self.entries -= len(t)
        return t, s

    def rebuild(self, times: Ints, slots: Ints) -> None:
        self.runs, self.entries = [], 0
        self.add(times, slots)
