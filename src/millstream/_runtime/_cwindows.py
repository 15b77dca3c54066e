"""Vectorised window aggregation for the micro-batch and batch executors.

The same design as the native sliced windows (one partial aggregate per key and
slice of width gcd(size, slide); a window is the merge of its slices when the
watermark passes its end), with the partials kept in a Polars DataFrame: a batch
costs one ``group_by`` and a watermark one merge, whatever the number of keys.

Sessions keep one row per open session; a batch becomes one-event sessions that
are merged with the open ones by a sort and a running maximum per key.

Only what gives exactly the native answers is vectorised: built-in aggregations
(``count``, ``sum``, ``mean``, ``min``, ``max``, ``first``, ``last``) without
allowed lateness. Everything else runs on the native operators over rows.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from millstream._plan import KeySpec, Node, WindowOp
from millstream.agg import Aggregation
from millstream.errors import StepError
from millstream.windows import SessionWindow, SlidingWindow, TumblingWindow

from ._base import Operator, Port, Runtime
from ._columnar import (
    TIME,
    StandInOperator,
    as_frame,
    has_objects,
    is_frame,
    narrow_sums,
    native_error,
    polars,
    to_rows,
    unify,
    widen_sums,
)

if TYPE_CHECKING:
    import polars as pl

_S = "__slice__"
_E = "__end__"
_START = "__start__"
_KEY = "__key__"


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
        for i, (name, agg) in enumerate(aggs):
            form = agg.columnar(P, f"__a{i}", TIME)
            assert form is not None, f"{agg.describe()} has no columnar form"
            for col, partial, merge in form.parts:
                self._add(col, partial, merge)
            self.result.append(form.result.alias(name))
            if form.summed is not None and form.summed not in self.summed:
                self.summed.append(form.summed)

    def _add(self, col: str, partial: pl.Expr, merge: pl.Expr) -> None:
        self.partial.append(partial.alias(col))
        self.merge.append(merge.alias(col))
        self.columns.append(col)


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
        #: the native operator, once it has taken over (a stream of records that are not dicts)
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
            self.delegate.push(port, records, times)
            return None
        df = self._input(records, times)
        if df is not None:
            self.records_in += df.height
        return df

    def _input(self, records: Any, times: list[int] | None) -> pl.DataFrame | None:
        """The batch as columns; None when the native operator took it (records that are not dicts)."""
        self._rows = None if is_frame(records) else records
        try:
            # a field of values of several types (1 and "x") is an Object column: the window groups
            # by Python equality, as native mode does (see to_frame)
            df = as_frame(records, times, mixed="object")
        except Exception:
            if not self._empty():
                raise
            self.delegate = self._native()
            self.delegate.push(0, records, times)
            return None
        if self.key_expr is not None:
            try:
                df = df.with_columns(self.key_expr)
            except Exception as exc:
                raise self._error(exc, df) from exc
        return widen_sums(df, self.aggs.summed)

    def _error(self, exc: Exception, df: pl.DataFrame) -> BaseException:
        """The error of a failing batch: the native operator's, which names the record, when it fails too."""
        rows, times = (self._rows, to_rows(df)[1]) if self._rows is not None else to_rows(df)
        err = native_error(self, self._native(), exc, rows, times, has_key=self.op.key is not None)
        if has_objects(df) and isinstance(err, StepError) and err.error is exc:
            return self._mixed_error(exc, df)  # native mode takes these values (ints and floats, say)
        return err

    def _mixed_error(self, exc: Exception, df: pl.DataFrame) -> BaseException:
        """A batch whose field holds values of several types that native mode aggregates (ints and
        floats) and a column cannot without changing some of them: a clear error, never a retyped answer."""
        fields = [n for n, t in df.schema.items() if t == self.pl.Object]
        if not fields:
            return StepError(step=self.name, location=self.node.location, error=exc,
                             has_key=self.op.key is not None)
        return StepError(step=self.name, location=self.node.location, has_key=self.op.key is not None,
                         error=TypeError(
                             f"{', '.join(map(repr, fields))} hold values of more than one type (ints and floats, "
                             f"say), which the columnar window cannot aggregate as native mode does without "
                             f"changing the others' types; cast the field with an expression (e.g. "
                             f"with_columns(x=col('x').cast(float))) or run in native mode ({exc})"))

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
        self.emit(out, None)

    def _advance(self) -> None:
        before = self.wm
        super()._advance()
        if self.wm > before:
            for op, port in self.late_outs:
                op.watermark(port, self.wm)

    def _metrics(self) -> dict[str, int]:
        return {"late": self.late_count, "refired": 0}


class ColumnarSlicedWindow(_ColumnarWindow):
    """Tumbling and sliding windows over slices, vectorised."""

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        a = self.op.assigner
        assert isinstance(a, TumblingWindow | SlidingWindow)
        self.size, self.slide, self.offset, self.slice = a.size_ms, a.slide_ms, a.offset_ms, a.slice_ms
        self.parts: pl.DataFrame | None = None  # one row per key and slice
        self.pending: list[pl.DataFrame] = []
        self.group = [*self.keys, _S]

    def _last_start(self, s: pl.Expr) -> pl.Expr:
        return s - (s - self.offset) % self.slide

    def _empty(self) -> bool:
        return self.parts is None and not self.pending

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        df = self._batch(port, records, times)
        if df is None:
            return
        pl = self.pl
        t = pl.col(TIME)
        s = t - (t - self.offset) % self.slice
        df = df.with_columns(s.alias(_S))
        if self.wm > -(2**62) and df.height:
            late = (self._last_start(pl.col(_S)) + (self.size - 1)) <= self.wm
            mask = df.select(late.alias("l")).to_series()
            if mask.any():
                self._late(df.filter(mask).drop(_S), mask)
                df = df.filter(~mask)
        if df.height == 0:
            return
        try:
            part = df.group_by(self.group, maintain_order=True).agg(self.aggs.partial)
        except Exception as exc:
            raise self._error(exc, df.drop(_S)) from exc
        self.pending.append(part)
        if len(self.pending) >= 32:
            self._merge()

    def _merge(self) -> None:
        if not self.pending:
            return
        frames = ([self.parts] if self.parts is not None else []) + self.pending
        self.pending = []
        pl = self.pl
        try:
            frames = unify(frames, self.keys, objects=True)
        except TypeError as exc:
            raise StepError(step=self.name, location=self.node.location, error=exc, has_key=True) from exc
        both = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
        if len(frames) > 1:
            try:
                both = both.group_by(self.group, maintain_order=True).agg(self.aggs.merge)
            except Exception as exc:
                raise self._mixed_error(exc, both) from exc
        self.parts = both

    def _on_watermark(self, wm: int) -> None:
        prev = self._fired_to
        self._fired_to = wm
        self._merge()
        parts = self.parts
        if parts is None or parts.height == 0:
            return
        pl = self.pl
        s = pl.col(_S)
        ls = self._last_start(s)
        size, slide = self.size, self.slide
        lo = prev + 2 - size if prev > -(2**62) else None
        cand = parts.filter(s <= wm) if lo is None else parts.filter((s <= wm) & (s >= lo))
        if cand.height:
            if self.slice == size:  # tumbling: a window is one slice
                due = cand.filter((s + (size - 1) > prev) & (s + (size - 1) <= wm))
                self._emit_results(due, s, s + size)
            else:
                frames = []
                for j in range(-(-size // slide)):
                    e = ls - j * slide + size
                    frames.append(cand.filter((e > s) & (e - 1 > prev) & (e - 1 <= wm)).with_columns(e.alias(_E)))
                due = pl.concat(frames)
                if due.height:
                    merged = due.group_by([*self.keys, _E], maintain_order=True).agg(self.aggs.merge)
                    self._emit_results(merged, pl.col(_E) - size, pl.col(_E))
        self.parts = parts.filter(ls + (size - 1) > wm)

    _fired_to = -(2**63)

    def _state(self) -> dict[str, Any]:
        self._merge()
        return {"parts": self.parts, "fired": self._fired_to, "late": self.late_count}

    def _load(self, state: dict[str, Any]) -> None:
        self.parts = state["parts"]
        self._fired_to = state["fired"]
        self.late_count = state["late"]


class ColumnarSessionWindow(_ColumnarWindow):
    """Per-key sessions, vectorised: open sessions are rows ``[keys, start, end, partials]``."""

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        a = self.op.assigner
        assert isinstance(a, SessionWindow)
        self.gap = a.gap_ms
        self.open_: pl.DataFrame | None = None

    def _empty(self) -> bool:
        return self.open_ is None or self.open_.height == 0

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
        self.open_ = self._merge_sessions(new)

    def _merge_sessions(self, new: pl.DataFrame) -> pl.DataFrame:
        pl = self.pl
        frames = [self.open_, new] if self.open_ is not None else [new]
        try:
            frames = unify(frames, self.keys, objects=True)
        except TypeError as exc:
            raise StepError(step=self.name, location=self.node.location, error=exc, has_key=True) from exc
        allv = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
        keys = self.keys
        # stable sort by key and start, keeping arrival order among equal starts
        allv = allv.with_row_index("__arr__")
        allv = allv.sort([*_order(allv, keys), _START, "__arr__"])
        prev_end = pl.col(_E).cum_max().shift(1)
        if keys:
            prev_end = prev_end.over(keys)
            first = pl.int_range(pl.len()).over(keys) == 0
        else:
            first = pl.int_range(pl.len()) == 0
        brk = first | (pl.col(_START) > prev_end)  # sessions that touch merge
        allv = allv.with_columns(brk.cast(pl.Int64).cum_sum().alias("__sess__"))
        try:
            grouped = allv.sort("__arr__").group_by([*keys, "__sess__"], maintain_order=True).agg(
                pl.col(_START).min(), pl.col(_E).max(), *self.aggs.merge)
        except Exception as exc:
            raise self._mixed_error(exc, allv) from exc
        return grouped.drop("__sess__")

    def _add_risky(self, row: pl.DataFrame) -> None:
        """One record that is late unless it merges into a session that is still open."""
        pl = self.pl
        t = row.get_column(TIME)[0]
        start, end = t, t + self.gap
        if self.open_ is not None and self.open_.height:
            cond = (pl.col(_START) <= end) & (pl.col(_E) >= start)
            for k in self.keys:
                v = row.get_column(k)[0]
                if self.open_.schema[k] == pl.Object or row.schema[k] == pl.Object:  # Python equality
                    same = [v is None if x is None else x == v for x in self.open_.get_column(k).to_list()]
                    cond = cond & pl.Series(same, dtype=pl.Boolean)
                else:
                    cond = cond & (pl.col(k).is_null() if v is None else pl.col(k) == v)
            touching = self.open_.filter(cond)
            if touching.height:
                start = min(start, touching.get_column(_START).min())
                end = max(end, touching.get_column(_E).max())
        if end <= self.wm:
            self._late(row, None)
            return
        self._add(row)

    def _on_watermark(self, wm: int) -> None:
        s = self.open_
        if s is None or s.height == 0:
            return
        pl = self.pl
        due = pl.col(_E) <= wm  # a session fires once the watermark has passed its end
        fired = s.filter(due)
        self.open_ = s.filter(~due)
        self._emit_results(fired, pl.col(_START), pl.col(_E))

    def _state(self) -> dict[str, Any]:
        return {"open": self.open_, "late": self.late_count}

    def _load(self, state: dict[str, Any]) -> None:
        self.open_ = state["open"]
        self.late_count = state["late"]


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
