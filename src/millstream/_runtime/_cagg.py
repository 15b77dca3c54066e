"""Vectorised running aggregates (``KeyedStream.aggregate``) for the micro-batch and batch executors.

Every record emits its key's updated row, as natively: within a batch the rows are
cumulative aggregates over each key's records in arrival order (``cum_sum`` and
friends ``over`` the key), offset by the key's totals before the batch.

The totals are columns indexed by the key's dense index (:mod:`._cstate`): a batch reads
(``gather``) and writes (``scatter``) the totals of its own keys only, so it costs what it
touches, whatever the number of keys held. A snapshot is one frame, a row per key (its key
columns and totals), the form a key-group filter selects from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from millstream._plan import AggregateOp, Node
from millstream.errors import MillstreamError

from ._base import Operator, Runtime
from ._columnar import (
    TIME,
    StandInOperator,
    as_frame,
    narrow_sums,
    native_error,
    polars,
    to_rows,
    widen_sums,
)
from ._cstate import Columns, KeyIndex

if TYPE_CHECKING:
    import polars as pl

_KEY = "__key__"
_IDX = "__kidx__"  # a row's key, as its dense index


def vectorisable_aggregate(op: AggregateOp) -> bool:
    """Running aggregates whose aggregations all have a running columnar form; a changelog
    aggregate runs per record."""
    if op.changelog or op.key.fn is not None:
        return False
    P = polars()
    return all((form := agg.columnar(P, "__r", TIME)) is not None and form.running for _, agg in op.aggs)


class ColumnarAggregate(StandInOperator):
    columnar = True

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, 1)
        op = node.op
        assert isinstance(op, AggregateOp)
        self.op = op
        self.timed = timed
        P = polars()
        self.P = P
        key = op.key
        if key.expr is not None:
            self.key_expr: pl.Expr | None = key.expr.to_polars().alias(_KEY)
            self.keys = [_KEY]
            self.out_keys = [P.col(_KEY).alias(key.name)]
        else:
            self.key_expr = None
            self.keys = list(key.fields)
            self.out_keys = [P.col(f) for f in key.fields]
        self.index = KeyIndex(self.keys)
        self.state = Columns()  # the totals, by key index
        over = _IDX
        self.cum: list[pl.Expr] = []  # per row: totals of the key's rows so far in the batch
        self.totals: list[str] = []
        self.results: list[pl.Expr] = []
        self.fields = sorted({agg.field for _, agg in op.aggs if agg.field is not None})
        #: the fields summed (sum, mean): integers are summed as Int128 (see ``widen_sums``)
        self.summed: list[str] = []
        for i, (name, agg) in enumerate(op.aggs):  # each aggregation's running form (agg.Columnar)
            form = agg.columnar(P, f"__r{i}", TIME)
            assert form is not None and form.running, f"{agg.describe()} has no running columnar form"
            for col, cum, how in form.running:
                self._total(col, cum.over(over), how)
            self.results.append(form.running_result.alias(name))
            if form.summed is not None and form.summed not in self.summed:
                self.summed.append(form.summed)

    _how: dict[str, str]

    def _total(self, col: str, cum: pl.Expr, how: str) -> None:
        if not hasattr(self, "_how"):
            self._how = {}
        self.cum.append(cum.alias(col))
        self.totals.append(col)
        self._how[col] = how

    def _combine(self, col: str) -> pl.Expr:
        P = self.P
        prev, now = P.col(col + "_prev"), P.col(col)
        how = self._how[col]
        if how == "sum":
            out: pl.Expr = P.when(prev.is_null()).then(now).otherwise(prev + now).alias(col)
            return out
        fn = P.min_horizontal if how == "min" else P.max_horizontal
        out = fn(prev, now).alias(col)
        return out

    def _native(self) -> Operator:
        from ._keyed import AggregateOperator

        twin = AggregateOperator(self.node, self.rt, self.timed)
        twin.outs = self.outs
        return twin

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        if self.delegate is not None:
            self.delegate.push(port, records, times)
            return
        P = self.P
        rows = None if not isinstance(records, list) else records
        try:
            df = as_frame(records, times)
        except Exception as exc:
            if len(self.index):
                # e.g. a field holding values of two types in this batch: the native operator's own
                # error for these rows names the record and key (or, where native would take them, a
                # clear error naming the field)
                raise self._error(exc, rows, records, times) from exc
            self.delegate = self._native()
            self.delegate.push(port, records, times)
            return
        self.records_in += df.height
        if df.height == 0:
            return
        try:
            if self.key_expr is not None:
                df = df.with_columns(self.key_expr)
            # a value column with no values at all (dtype Null) has no cumulative min or max
            nulls = [P.col(f).cast(P.Int64) for f in self.fields if f in df.columns and df.schema[f] == P.Null]
            if nulls:
                df = df.with_columns(nulls)
            df = widen_sums(df, self.summed)
            known = bool(self.state.cols)
            idx = self.index.lookup(df)
            self.state.reserve(self.index.capacity)
            df = df.with_columns(P.Series(_IDX, idx)).with_columns(self.cum)
            if known:  # the keys' totals before the batch (null for a new key) combine with the batch's
                prev = self.state.gather(idx, self.totals)
                df = df.hstack(prev.rename({c: c + "_prev" for c in self.totals}))
                df = df.with_columns([self._combine(c) for c in self.totals])
            last = df.select(_IDX, *self.totals).unique(subset=_IDX, keep="last")
            self.state.scatter(last.get_column(_IDX).to_numpy(), last.drop(_IDX))
            out = narrow_sums(df.select(*self.out_keys, *self.results,
                                        *([P.col(TIME)] if TIME in df.columns else [])))
        except MillstreamError:
            raise
        except Exception as exc:
            raise self._error(exc, rows, records, times) from exc
        self.emit(out, None)

    def _error(self, exc: Exception, rows: Any, records: Any, times: list[int] | None) -> BaseException:
        if rows is None:
            rows, times = to_rows(records)
        return native_error(self, self._native(), exc, rows, times, has_key=True)

    def _state(self) -> dict[str, Any]:
        """One row per key: its key columns and totals (None before the first record)."""
        if not len(self.index):
            return {"totals": None}
        idx = self.index.live()
        return {"totals": self.index.frame(idx).hstack(self.state.gather(idx, self.totals))}

    def _load(self, state: dict[str, Any]) -> None:
        self.index, self.state = KeyIndex(self.keys), Columns()
        frame = state["totals"]
        if frame is not None and frame.height:
            idx = self.index.lookup(frame)
            self.state.reserve(self.index.capacity)
            self.state.scatter(idx, frame.select(self.totals))
