"""Vectorised window aggregation for the micro-batch and batch executors.

The same design as the native sliced windows (one partial aggregate per key and
slice of width gcd(size, slide); a window is the merge of its slices when the
watermark passes its end), with the partials kept by slice: each slice a short stack
of Polars frames (one row per key), so that a batch costs one ``group_by`` of its own
rows and a watermark merges only the slices of the windows it fires.

Sessions keep their open sessions by key (:mod:`._cstate`: a dense index per key, the
sessions' partials as columns by slot, an index on session end): a batch becomes
sessions of its own, merged by a sort and a running maximum with the open sessions of
the keys it touches only; a watermark finds what it fires in the index on end.

State of both is a frame of rows with the key columns when snapshotted (the form a
key-group filter selects from); batches cost what they touch, not what is held.

Only what gives exactly the native answers is vectorised: built-in aggregations
(``count``, ``sum``, ``mean``, ``min``, ``max``, ``first``, ``last``) without
allowed lateness. Everything else runs on the native operators over rows.

The answers keep native mode's types, Python's arithmetic and comparisons on the values as they
came: while every key and aggregated field keeps one type (the common case) the typed partials give
them; a batch in which one changes (ints so far, a float now; ``1`` and ``True`` as keys; values of
several types in one batch) hands the state and the rest of the stream to the native operator
(:class:`._columnar.ColumnKinds`, ``StandInOperator.hand_over``).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np

from millstream._plan import KeySpec, Node, WindowOp
from millstream.agg import Aggregation
from millstream.errors import StepError
from millstream.windows import SessionWindow, SlidingWindow, TumblingWindow

from ._base import Operator, Port, Runtime
from ._columnar import (
    STATE_FIELDS,
    TIME,
    ColumnKinds,
    StandInOperator,
    as_frame,
    has_objects,
    is_frame,
    narrow_sums,
    native_error,
    odd_floats,
    polars,
    to_rows,
    unify,
    widen_sums,
    zero_sums,
)
from ._cstate import KEY as _KEY
from ._cstate import Columns, DueIndex, KeyIndex
from ._windows import SessionWindowOperator, SlicedWindowOperator

if TYPE_CHECKING:
    import polars as pl

    from ._cstate import Ints

_S = "__slice__"
_E = "__end__"
_START = "__start__"
_IDX = "__kidx__"  # a session's key, as its dense index


def vectorisable_window(op: WindowOp, timed: bool) -> bool:
    """Whether a window step has a vectorised implementation that gives the native answers."""
    if not timed or op.allowed_lateness_ms or op.reduce_fn is not None or op.process_fn is not None:
        return False
    if op.triggered:  # triggers, global, processing-time, staggered windows, gaps per record: native
        return False
    if not isinstance(op.assigner, TumblingWindow | SlidingWindow | SessionWindow):
        return False
    if op.key is not None and op.key.fn is not None:
        return False
    P = polars()
    return all(agg.columnar(P, "__a", TIME) is not None for _, agg in op.aggs)


class _Aggs:
    """Partial columns of the aggregations, how to merge them, and the results (each aggregation's
    columnar form: :meth:`millstream.agg.Aggregation.columnar`)."""

    def __init__(self, aggs: tuple[tuple[str, Aggregation], ...]) -> None:
        P = polars()
        self.partial: list[pl.Expr] = []  # over raw rows
        self.merge: list[pl.Expr] = []  # over partial rows
        self.result: list[pl.Expr] = []  # over merged partial rows
        self.columns: list[str] = []
        #: the fields summed (sum, mean): integers are summed as Int128 (see ``widen_sums``)
        self.summed: list[str] = []
        #: the results that read 0 where they saw no value (sums, see ``zero_sums``)
        self.zero: list[str] = []
        #: the fields read
        self.fields = sorted({agg.field for _, agg in aggs if agg.field is not None})
        #: each aggregation's native accumulator from its partial columns (``Columnar.to_acc``)
        self.spans: list[tuple[Any, list[int]]] = []
        for i, (name, agg) in enumerate(aggs):
            form = agg.columnar(P, f"__a{i}", TIME)
            assert form is not None, f"{agg.describe()} has no columnar form"
            first = len(self.columns)
            for col, partial, merge in form.parts:
                self._add(col, partial, merge)
            self.spans.append((form.to_acc, list(range(first, len(self.columns)))))
            self.result.append(form.result.alias(name))
            if form.summed is not None and form.summed not in self.summed:
                self.summed.append(form.summed)
            if form.zero_when_empty:
                self.zero.append(name)

    def _add(self, col: str, partial: pl.Expr, merge: pl.Expr) -> None:
        self.partial.append(partial.alias(col))
        self.merge.append(merge.alias(col))
        self.columns.append(col)

    def accs(self, partials: pl.DataFrame) -> list[list[Any]]:
        """The native accumulators of the rows of ``partials`` (which hold the partial columns)."""
        cols = [partials.get_column(c).to_list() for c in self.columns]
        return [[to_acc(*(row[j] for j in idx)) for to_acc, idx in self.spans] for row in zip(*cols, strict=True)]


class _ColumnarWindow(StandInOperator):
    """What both vectorised window kinds share: keys, late output, the output batch."""

    columnar = True

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt, 1)
        op = node.op
        assert isinstance(op, WindowOp)
        self.op = op
        self.pl = polars()
        self.aggs = _Aggs(op.aggs)
        key: KeySpec | None = op.key
        self.key_expr = None
        if key is None:
            self.keys: list[str] = []
            self.out_keys: list[pl.Expr] = []
        elif key.expr is not None:
            self.key_expr = key.expr.to_polars().alias(_KEY)
            self.keys = [_KEY]
            self.out_keys = [self.pl.col(_KEY).alias(key.name)]
        else:
            self.keys = list(key.fields)
            self.out_keys = [self.pl.col(f) for f in key.fields]
        self.late_outs: list[Port] = []
        self.late_count = 0
        #: the Python type of the keys and the fields aggregated so far (a change hands over)
        self.kinds = ColumnKinds()
        self.watched = [*self.keys, *self.aggs.fields]
        self.compared = [*self.keys, *sorted({a.field for _, a in op.aggs if a.kind in ("min", "max") and a.field})]
        self._rows: Any = None  # the rows of the batch in hand, when it came as rows

    def _native(self) -> Operator:
        from ._windows import make_window_operator

        twin = make_window_operator(self.node, self.rt, True)
        twin.outs = self.outs
        twin.late_outs = self.late_outs
        twin.wm = self.wm
        return twin

    @abstractmethod
    def _empty(self) -> bool:
        """Whether the operator holds no window state (it may still hand over to the native one)."""

    def _batch(self, port: int, records: Any, times: list[int] | None) -> pl.DataFrame | None:
        """The batch to work on, counted; None when the native stand-in has it (and took it)."""
        if self.delegate is not None:
            self._to_delegate(port, records, times)
            return None
        df = self._input(records, times)
        if df is not None:
            self.records_in += df.height
        return df

    def _input(self, records: Any, times: list[int] | None) -> pl.DataFrame | None:
        """The batch as columns; None when the native operator took it over: records that are not
        dicts, or a key or aggregated field whose Python type is not the one it had (see ColumnKinds)."""
        self._rows = None if is_frame(records) else records
        try:
            # a field of values of several types (1 and "x") is an Object column (see to_frame)
            df = as_frame(records, times, mixed="object")
        except Exception:  # noqa: BLE001 - not dicts: the native operator takes them, or names the record
            self.hand_over(0, records, times)
            return None
        if self.key_expr is not None:
            try:
                df = df.with_columns(self.key_expr)
            except Exception as exc:
                raise self._error(exc, df) from exc
        if not self.kinds.stable(df, self.watched) or odd_floats(df, self.compared):
            self.hand_over(0, records, times)
            return None
        return widen_sums(df, self.aggs.summed)

    def _keys_of(self, frame: pl.DataFrame) -> list[Any]:
        """The native operator's key of each row of ``frame`` (which holds the key columns)."""
        if not self.keys:
            return [None] * frame.height
        cols = [frame.get_column(k).to_list() for k in self.keys]
        return cols[0] if len(cols) == 1 else list(zip(*cols, strict=True))

    def _error(self, exc: Exception, df: pl.DataFrame) -> BaseException:
        """The error of a failing batch: the native operator's, which names the record, when it fails too."""
        rows, times = (self._rows, to_rows(df)[1]) if self._rows is not None else to_rows(df)
        return native_error(self, self._native(), exc, rows, times, has_key=self.op.key is not None)

    def _merge_error(self, exc: Exception) -> BaseException:
        """Partials that polars could not merge. (Partials of values of several types never meet: a key
        or field that changes type hands the window over to the native operator first.)"""
        return StepError(step=self.name, location=self.node.location, error=exc, has_key=self.op.key is not None)

    def _late(self, late: pl.DataFrame, mask: pl.Series | None = None) -> None:
        if late.height == 0:
            return
        self.late_count += late.height
        if self.muted:
            return
        out: Any = late.drop(_KEY) if _KEY in late.columns else late
        times = None
        if has_objects(out):
            out, times = to_rows(out)
        elif self._rows is not None and mask is not None:  # the records as they came
            idx = mask.arg_true().to_list()
            out = [self._rows[i] for i in idx]
            times = late.get_column(TIME).to_list()
        for op, port in self.late_outs:
            op.push(port, out, times)

    def _emit_results(self, merged: pl.DataFrame, start: pl.Expr, end: pl.Expr) -> None:
        """``merged`` has the keys, the merged partials and the window's start and end columns."""
        if merged.height == 0:
            return
        out = narrow_sums(merged.select(*self.out_keys, start.alias("window_start"), end.alias("window_end"),
                                        *self.aggs.result, (end - 1).alias(TIME)))
        if has_objects(out):  # keys of several types: rows, as no typed column can hold them
            self.emit(*to_rows(out))
            return
        self.emit(*zero_sums(out, self.aggs.zero))

    def _advance(self) -> None:
        before = self.wm
        super()._advance()
        if self.wm > before:
            for op, port in self.late_outs:
                op.watermark(port, self.wm)

    def _metrics(self) -> dict[str, int]:
        return {"late": self.late_count, "refired": 0}


class ColumnarSlicedWindow(_ColumnarWindow):
    """Tumbling and sliding windows over slices, vectorised, with the partials held by slice.

    Each slice holds a stack of partial frames (one row per key, arrival order kept), merged as a
    binary counter merges (a row is regrouped O(log n) times, never with the rest of the state); a
    watermark merges the slices of the windows it fires, and drops the slices no window needs."""

    state_fields = STATE_FIELDS["sliced window"]

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        a = self.op.assigner
        assert isinstance(a, TumblingWindow | SlidingWindow)
        self.size, self.slide, self.offset, self.slice = a.size_ms, a.slide_ms, a.offset_ms, a.slice_ms
        self.slices: dict[int, list[pl.DataFrame]] = {}  # slice start -> partial frames [keys, slice, partials]
        self.group = [*self.keys, _S]

    def _last_start(self, s: int) -> int:
        """The start of the last window that holds slice ``s``."""
        return s - (s - self.offset) % self.slide

    def _empty(self) -> bool:
        return not self.slices

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        df = self._batch(port, records, times)
        if df is None:
            return
        pl = self.pl
        t = pl.col(TIME)
        s = t - (t - self.offset) % self.slice
        df = df.with_columns(s.alias(_S))
        if self.wm > -(2**62) and df.height:
            ls = pl.col(_S) - (pl.col(_S) - self.offset) % self.slide
            mask = df.select((ls + (self.size - 1) <= self.wm).alias("l")).to_series()
            if mask.any():
                self._late(df.filter(mask).drop(_S), mask)
                df = df.filter(~mask)
        if df.height == 0:
            return
        try:
            part = df.group_by(self.group, maintain_order=True).agg(self.aggs.partial)
        except Exception as exc:
            raise self._error(exc, df.drop(_S)) from exc
        col = part.get_column(_S)
        if col.min() == col.max():
            self._put(int(col[0]), part)
        else:
            for (start,), frame in part.partition_by(_S, as_dict=True, maintain_order=True).items():
                self._put(int(start), frame)

    def _put(self, start: int, frame: pl.DataFrame) -> None:
        stack = self.slices.setdefault(start, [])
        stack.append(frame)
        while len(stack) >= 2 and stack[-2].height <= stack[-1].height:
            b, a = stack.pop(), stack.pop()
            stack.append(self._combine([a, b]))

    def _concat(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        if len(frames) == 1:
            return frames[0]
        try:
            frames = unify(frames, self.keys, objects=True)
        except TypeError as exc:
            raise StepError(step=self.name, location=self.node.location, error=exc, has_key=True) from exc
        both: pl.DataFrame = self.pl.concat(frames, how="diagonal_relaxed")
        return both

    def _combine(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        """Partial frames as one, merged per key and slice (the older first, so ties keep arrival order)."""
        both = self._concat(frames)
        try:
            merged: pl.DataFrame = both.group_by(self.group, maintain_order=True).agg(self.aggs.merge)
        except Exception as exc:
            raise self._merge_error(exc) from exc
        return merged

    def _slice(self, start: int) -> pl.DataFrame:
        stack = self.slices[start]
        if len(stack) > 1:
            stack[:] = [self._combine(stack)]
        return stack[0]

    def _on_watermark(self, wm: int) -> None:
        prev = self._fired_to
        self._fired_to = wm
        if not self.slices:
            return
        pl = self.pl
        size, slide = self.size, self.slide
        live = sorted(s for s in self.slices if s <= wm)
        if self.slice == size:  # tumbling: a window is one slice
            due = [self._slice(s) for s in live if prev < s + size - 1 <= wm]
            if due:
                self._emit_results(self._concat(due), pl.col(_S), pl.col(_S) + size)
        else:
            due = []
            for s in live:
                ls = self._last_start(s)
                for j in range(-(-size // slide)):
                    e = ls - j * slide + size
                    if e > s and prev < e - 1 <= wm:
                        due.append(self._slice(s).with_columns(pl.lit(e, dtype=pl.Int64).alias(_E)))
            if due:
                both = self._concat(due)
                try:
                    merged = both.group_by([*self.keys, _E], maintain_order=True).agg(self.aggs.merge)
                except Exception as exc:
                    raise self._merge_error(exc) from exc
                self._emit_results(merged, pl.col(_E) - size, pl.col(_E))
        for s in live:  # slices whose last window has fired
            if self._last_start(s) + size - 1 <= wm:
                del self.slices[s]

    _fired_to = -(2**63)

    def _state(self) -> dict[str, Any]:
        """The partials as one frame ``[keys..., slice, partials...]`` (None: none)."""
        frames = [self._slice(s) for s in sorted(self.slices)]
        parts = self._concat(frames) if frames else None
        return {"parts": parts, "fired": self._fired_to, "late": self.late_count, "kinds": dict(self.kinds.seen)}

    def _give(self, twin: Operator) -> None:
        assert isinstance(twin, SlicedWindowOperator)
        for s in sorted(self.slices):
            frame = self._slice(s)
            twin.slices.setdefault(s, {}).update(zip(self._keys_of(frame), self.aggs.accs(frame), strict=True))
            twin.timers.add_slice(s, self._fired_to)  # the windows that have not fired
        twin.late_count += self.late_count

    def _load(self, state: dict[str, Any]) -> None:
        self.slices = {}
        parts = state["parts"]
        if parts is not None and parts.height:
            for (start,), frame in parts.partition_by(_S, as_dict=True, maintain_order=True).items():
                self.slices[int(start)] = [frame]
        self._fired_to = state["fired"]
        self.late_count = state["late"]
        self.kinds.seen = dict(state.get("kinds", {}))


class ColumnarSessionWindow(_ColumnarWindow):
    """Per-key sessions, vectorised, with the open sessions held by key (see the module docstring).

    An open session is a slot: its key's dense index (``owner``, -1 for a free slot), ``start``, ``end``
    (its last event + gap) and its partial aggregates (``parts``, columns by slot). A key's slots are a
    chain (``head`` by key, ``nxt`` by slot), and :class:`DueIndex` holds the slots by end. A batch
    becomes sessions of its own, which are merged with the open sessions of the keys it touches only;
    a watermark takes the sessions it fires from the due index."""

    state_fields = STATE_FIELDS["session window"]
    #: stale entries the due index may hold beyond twice the open sessions before it is rebuilt
    slack = 4096

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        a = self.op.assigner
        assert isinstance(a, SessionWindow)
        self.gap = a.gap_ms
        self._reset()

    def _reset(self) -> None:
        self.index = KeyIndex(self.keys)
        self.parts = Columns()
        self.due = DueIndex()
        empty = np.empty(0, dtype=np.int64)
        self.owner, self.start, self.end, self.nxt, self.head = empty, empty, empty, empty, empty
        self.free: list[Any] = []  # arrays of free slots
        self.top = 0  # slots below are open or free
        self.n_open = 0  # open sessions

    def _empty(self) -> bool:
        return self.n_open == 0

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        df = self._batch(port, records, times)
        if df is None or df.height == 0:
            return
        pl = self.pl
        wm = self.wm
        t = pl.col(TIME)
        # rows whose own session ends at or behind the watermark are late unless they merge with a
        # live session; decide those one at a time, in arrival order, as the native operator does
        risky = df.select(((t + self.gap) <= wm).alias("r")).to_series()
        if not risky.any():
            self._add(df)
            return
        idx = risky.arg_true().to_list()
        start = 0
        for i in idx:
            if i > start:
                self._add(df.slice(start, i - start))
            self._add_risky(df.slice(i, 1))
            start = i + 1
        if start < df.height:
            self._add(df.slice(start))

    def _sessions_of(self, df: pl.DataFrame) -> pl.DataFrame:
        """The sessions of a batch on its own: rows of a key at most ``gap`` apart merge."""
        pl = self.pl
        t = pl.col(TIME)
        keys = self.keys
        seq = df.with_row_index("__arr__")
        seq = seq.sort([*_order(seq, keys), TIME, "__arr__"])
        prev = t.shift(1)
        if keys:
            prev = prev.over(keys)
        brk = prev.is_null() | (t > prev + self.gap)
        seq = seq.with_columns(brk.cast(pl.Int64).cum_sum().alias("__sess__")).sort("__arr__")
        try:
            return seq.group_by([*keys, "__sess__"], maintain_order=True).agg(
                t.min().alias(_START), (t.max() + self.gap).alias(_E), *self.aggs.partial).drop("__sess__")
        except Exception as exc:
            raise self._error(exc, df) from exc

    def _add(self, df: pl.DataFrame) -> None:
        new = self._sessions_of(df)
        try:
            kidx = self.index.lookup(new)
        except Exception as exc:  # a key native mode cannot hold either (a list, say)
            raise self._error(exc, df) from exc
        new = new.select(_START, _E, *self.aggs.columns).with_columns(self.pl.Series(_IDX, kidx))
        if len(self.head) < self.index.capacity:
            self.head = _grown(self.head, self.index.capacity)
        old = self._slots_of(np.unique(kidx))
        if len(old):  # the keys' open sessions and the batch's, merged where they touch
            frames = [self._sessions_at(old), new]
            try:
                frames = unify(frames, [], objects=True)
            except TypeError as exc:
                raise StepError(step=self.name, location=self.node.location, error=exc, has_key=True) from exc
            new = self._merge_sessions(self.pl.concat(frames, how="diagonal_relaxed"))
            self._free(old)
        self._store(new)

    def _merge_sessions(self, allv: pl.DataFrame) -> pl.DataFrame:
        """Sessions of a key that touch, merged; the open ones come first, so ties keep arrival order."""
        pl = self.pl
        k = pl.col(_IDX)
        allv = allv.with_row_index("__arr__").sort([_IDX, _START, "__arr__"])
        prev_end = pl.col(_E).cum_max().shift(1).over(_IDX)
        brk = (k != k.shift(1)).fill_null(True) | (pl.col(_START) > prev_end)  # sessions that touch merge
        allv = allv.with_columns(brk.cast(pl.Int64).cum_sum().alias("__sess__"))
        try:
            grouped = allv.sort("__arr__").group_by([_IDX, "__sess__"], maintain_order=True).agg(
                pl.col(_START).min(), pl.col(_E).max(), *self.aggs.merge)
        except Exception as exc:
            raise self._merge_error(exc) from exc
        return grouped.drop("__sess__")

    # -- the open sessions, by slot -----------------------------------------------------------------------
    def _slots_of(self, keys: Ints) -> Ints:
        """The open sessions of ``keys`` (dense indexes)."""
        found = []
        cur = self.head[keys]
        cur = cur[cur >= 0]
        while len(cur):
            found.append(cur)
            cur = self.nxt[cur]
            cur = cur[cur >= 0]
        return np.concatenate(found) if found else np.empty(0, dtype=np.int64)

    def _sessions_at(self, slots: Ints) -> pl.DataFrame:
        """Sessions as rows ``[start, end, partials..., key index]``."""
        pl = self.pl
        return self.parts.gather(slots, self.aggs.columns).with_columns(
            pl.Series(_START, self.start[slots]), pl.Series(_E, self.end[slots]),
            pl.Series(_IDX, self.owner[slots])).select(_START, _E, *self.aggs.columns, _IDX)

    def _store(self, rows: pl.DataFrame) -> None:
        """Open the sessions ``rows`` (all the open sessions of their keys)."""
        n = rows.height
        slots = self._reuse(n)
        if len(slots) < n:
            more = np.arange(self.top, self.top + n - len(slots), dtype=np.int64)
            self.top += len(more)
            slots = np.concatenate([slots, more])
            if self.top > len(self.owner):
                cap = max(self.top, 2 * len(self.owner), 1024)
                self.owner = _grown(self.owner, cap)
                self.start, self.end, self.nxt = (_grown(a, cap, 0) for a in (self.start, self.end, self.nxt))
                self.parts.reserve(cap)
        k = rows.get_column(_IDX).to_numpy()
        s = rows.get_column(_START).to_numpy()
        e = rows.get_column(_E).to_numpy()
        self.owner[slots], self.start[slots], self.end[slots] = k, s, e
        self.parts.scatter(slots, rows.select(self.aggs.columns))
        self._link(k, s, slots)
        self.due.add(e, slots)
        self.n_open += n
        if self.due.entries > 2 * self.n_open + self.slack:  # mostly ends that moved on: index the open ones again
            live = np.flatnonzero(self.owner[:self.top] >= 0)
            self.due.rebuild(self.end[live], live)

    def _link(self, keys: Ints, starts: Ints, slots: Ints) -> None:
        """Chain the slots of each key (all of its open sessions), by start."""
        order = np.lexsort((starts, keys))
        k, sl = keys[order], slots[order]
        last = np.ones(len(k), dtype=bool)
        last[:-1] = k[1:] != k[:-1]
        self.nxt[sl] = np.where(last, -1, np.roll(sl, -1))
        first = np.ones(len(k), dtype=bool)
        first[1:] = last[:-1]
        self.head[k[first]] = sl[first]

    def _reuse(self, n: int) -> Ints:
        """Up to ``n`` free slots, taken from the free list."""
        got: list[Ints] = []
        while n and self.free:
            last = self.free[-1]
            take = last[-n:]
            got.append(take)
            n -= len(take)
            if len(take) == len(last):
                self.free.pop()
            else:
                self.free[-1] = last[:-len(take)]
        return np.concatenate(got) if got else np.empty(0, dtype=np.int64)

    def _free(self, slots: Ints) -> None:
        self.owner[slots] = -1
        self.free.append(slots)
        self.n_open -= len(slots)

    def _add_risky(self, row: pl.DataFrame) -> None:
        """One record that is late unless it merges into a session that is still open."""
        t = row.get_column(TIME)[0]
        start, end = t, t + self.gap
        try:
            k = self.index.find(row)
        except Exception as exc:
            raise self._error(exc, row) from exc
        if k[0] >= 0 and len(self.head) > k[0]:
            slots = self._slots_of(k)
            touching = slots[(self.start[slots] <= end) & (self.end[slots] >= start)]
            if len(touching):
                start = min(start, int(self.start[touching].min()))
                end = max(end, int(self.end[touching].max()))
        if end <= self.wm:
            self._late(row, None)
            return
        self._add(row)

    def _on_watermark(self, wm: int) -> None:
        ends, slots = self.due.pop(wm)  # a session fires once the watermark has passed its end
        if not len(slots):
            return
        slots = np.unique(slots[(self.owner[slots] >= 0) & (self.end[slots] == ends)])
        if not len(slots):
            return
        slots = slots[np.lexsort((self.start[slots], self.end[slots]))]  # in the order they end
        keys = self.owner[slots]
        fired = self._sessions_at(slots)
        if self.keys:
            fired = self.index.frame(keys).hstack(fired)
        touched = np.unique(keys)
        chained = self._slots_of(touched)
        self._free(slots)
        self.head[touched] = -1
        rest = chained[self.owner[chained] >= 0]
        if len(rest):
            self._link(self.owner[rest], self.start[rest], rest)
        gone = np.setdiff1d(touched, self.owner[rest])
        self.index.release(gone)  # keys without an open session leave the index, as natively
        self._emit_results(fired, self.pl.col(_START), self.pl.col(_E))

    def _state(self) -> dict[str, Any]:
        """The open sessions as rows ``[keys..., start, end, partials...]`` (None: none)."""
        kinds = dict(self.kinds.seen)
        if not self.n_open:
            return {"open": None, "late": self.late_count, "kinds": kinds}
        live = np.flatnonzero(self.owner[:self.top] >= 0)
        rows = self._sessions_at(live).drop(_IDX)
        if self.keys:
            rows = self.index.frame(self.owner[live]).hstack(rows)
        return {"open": rows, "late": self.late_count, "kinds": kinds}

    def _give(self, twin: Operator) -> None:
        assert isinstance(twin, SessionWindowOperator)
        twin.late_count += self.late_count
        if not self.n_open:
            return
        live = np.flatnonzero(self.owner[:self.top] >= 0)
        accs = self.aggs.accs(self._sessions_at(live))
        for slot, acc in zip(live.tolist(), accs, strict=True):
            k = self.index.pykeys[self.owner[slot]] if self.keys else None
            sess = [int(self.start[slot]), int(self.end[slot]), acc, None]
            twin.sessions.setdefault(k, []).append(sess)
            twin._arm(sess, k)  # its timer, as the native operator arms it

    def _load(self, state: dict[str, Any]) -> None:
        self._reset()
        self.late_count = state["late"]
        self.kinds.seen = dict(state.get("kinds", {}))
        rows = state["open"]
        if rows is None or rows.height == 0:
            return
        kidx = self.index.lookup(rows)
        self.head = _grown(self.head, self.index.capacity)
        self._store(rows.select(_START, _E, *self.aggs.columns).with_columns(self.pl.Series(_IDX, kidx)))


def _grown(a: Ints, n: int, fill: int = -1) -> Ints:
    """``a`` with room for ``n`` values (doubling), the new ones ``fill``."""
    if len(a) >= n:
        return a
    return np.concatenate([a, np.full(max(n, 2 * len(a), 1024) - len(a), fill, dtype=np.int64)])


def _order(df: pl.DataFrame, keys: list[str]) -> list[Any]:
    """What to sort ``df`` by to bring each key's rows together: the keys, or, when a key column holds
    Python values (which polars cannot sort), the first row index of each key (rows need ``__arr__``)."""
    pl = polars()
    if not any(df.schema[k] == pl.Object for k in keys):
        return list(keys)
    return [pl.col("__arr__").min().over(keys)]


def make_columnar_window(node: Node, rt: Runtime) -> Operator:
    op = node.op
    assert isinstance(op, WindowOp)
    if isinstance(op.assigner, SessionWindow):
        return ColumnarSessionWindow(node, rt)
    return ColumnarSlicedWindow(node, rt)
