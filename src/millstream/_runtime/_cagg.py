"""Vectorised running aggregates (``KeyedStream.aggregate``) for the micro-batch and batch executors.

Every record emits its key's updated row, as natively: within a batch the rows are
cumulative aggregates over each key's records in arrival order (``cum_sum`` and
friends ``over`` the key), offset by the key's totals before the batch.

The totals are columns indexed by the key's dense index (:mod:`._cstate`): a batch reads
(``gather``) and writes (``scatter``) the totals of its own keys only, so it costs what it
touches, whatever the number of keys held. A snapshot is one frame, a row per key (its key
columns and totals), the form a key-group filter selects from.

The rows keep native mode's types: while the keys and the fields aggregated keep one Python type
each the typed totals give them; a batch in which one changes (a running ``max`` over ``3`` and then
``2.5`` is ``3`` natively, ``3.0`` in a Float64 total) hands the totals and the rest of the stream to
the native operator (:class:`._columnar.ColumnKinds`, ``StandInOperator.hand_over``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from millstream._plan import AggregateOp, Node
from millstream.errors import MillstreamError

from ._base import Operator, Runtime
from ._columnar import (
    STATE_FIELDS,
    TIME,
    ColumnKinds,
    StandInOperator,
    as_frame,
    narrow_sums,
    native_error,
    odd_floats,
    polars,
    to_rows,
    widen_sums,
    zero_sums,
)
from ._cstate import KEY as _KEY
from ._cstate import Columns, KeyIndex

if TYPE_CHECKING:
    import polars as pl

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
    state_fields = STATE_FIELDS["running aggregate"]

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
        self.zero: list[str] = []  # the results that read 0 where they saw no value (see ``zero_sums``)
        self.spans: list[tuple[Any, list[int]]] = []  # each aggregation's native accumulator from its totals
        for i, (name, agg) in enumerate(op.aggs):  # each aggregation's running form (agg.Columnar)
            form = agg.columnar(P, f"__r{i}", TIME)
            assert form is not None and form.running, f"{agg.describe()} has no running columnar form"
            first = len(self.totals)
            for col, cum, how in form.running:
                self._total(col, cum.over(over), how)
            self.spans.append((form.to_acc, list(range(first, len(self.totals)))))
            self.results.append(form.running_result.alias(name))
            if form.summed is not None and form.summed not in self.summed:
                self.summed.append(form.summed)
            if form.zero_when_empty:
                self.zero.append(name)
        #: the Python type of the keys and the fields aggregated so far (a change hands over)
        self.kinds = ColumnKinds()
        self.watched = [*self.keys, *self.fields]
        self.compared = [*self.keys, *sorted({a.field for _, a in op.aggs if a.kind in ("min", "max") and a.field})]

    _how: dict[str, str]

    @property
    def _typed(self) -> dict[str | None, Any]:
        P = self.P
        return {"bool": P.Boolean, "float": P.Float64, "str": P.String, "int": P.Int64}

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
            self._to_delegate(port, records, times)
            return
        P = self.P
        rows = None if not isinstance(records, list) else records
        try:
            # a field of values of several types is an Object column (see to_frame): if it is a key
            # or a field aggregated, the native operator takes the batch on (below)
            df = as_frame(records, times, mixed="object")
        except Exception:  # noqa: BLE001 - records that are not dicts: the native operator names them
            self.hand_over(port, records, times)
            return
        if df.height == 0:
            return
        try:
            if self.key_expr is not None:
                df = df.with_columns(self.key_expr)
        except Exception as exc:
            raise self._error(exc, rows, records, times) from exc
        if not self.kinds.stable(df, self.watched) or odd_floats(df, self.compared):
            self.hand_over(port, records, times)
            return
        self.records_in += df.height
        try:
            # a value column with no values at all (dtype Null) has no cumulative min or max
            # (typed as the field's values were so far, so that the totals keep their type)
            nulls = [P.col(f).cast(self._typed.get(self.kinds.seen.get(f), P.Int64)) for f in self.fields
                     if f in df.columns and df.schema[f] == P.Null]
            if nulls:
                df = df.with_columns(nulls)
            df = widen_sums(df, self.summed)
            known = bool(self.state.cols)
            idx = self.index.lookup(df)
            self.state.reserve(self.index.capacity)
            df = df.with_columns(P.Series(_IDX, idx)).with_columns(self.cum)
            if known:  # the keys' totals before the batch (null for a new key) combine with the batch's
                prev = self.state.gather(idx, self.totals)
                # totals of no value yet (made from nulls only) take the type of the batch's
                lone = [P.col(c).cast(df.schema[c]) for c, t in prev.schema.items()
                        if t != df.schema[c] and prev.get_column(c).null_count() == prev.height]
                if lone:
                    prev = prev.with_columns(lone)
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
        self.emit(*zero_sums(out, self.zero))

    def _error(self, exc: Exception, rows: Any, records: Any, times: list[int] | None) -> BaseException:
        if rows is None:
            rows, times = to_rows(records)
        return native_error(self, self._native(), exc, rows, times, has_key=True)

    def _state(self) -> dict[str, Any]:
        """One row per key: its key columns and totals (None before the first record)."""
        kinds = dict(self.kinds.seen)  # the types the totals were made of
        if not len(self.index):
            return {"totals": None, "kinds": kinds}
        idx = self.index.live()
        return {"totals": self.index.frame(idx).hstack(self.state.gather(idx, self.totals)), "kinds": kinds}

    def _give(self, twin: Operator) -> None:
        from ._keyed import AggregateOperator

        assert isinstance(twin, AggregateOperator)
        if not len(self.index):
            return
        idx = self.index.live()
        totals = self.state.gather(idx, self.totals)
        cols = [totals.get_column(c).to_list() for c in self.totals]
        keys = self.index.pykeys[idx].tolist() if self.keys else [None] * len(idx)
        for k, row in zip(keys, zip(*cols, strict=True), strict=True):
            twin.state[k] = [to_acc(*(row[j] for j in span)) for to_acc, span in self.spans]

    def _load(self, state: dict[str, Any]) -> None:
        self.index, self.state = KeyIndex(self.keys), Columns()
        self.kinds.seen = dict(state.get("kinds", {}))
        frame = state["totals"]
        if frame is not None and frame.height:
            idx = self.index.lookup(frame)
            self.state.reserve(self.index.capacity)
            self.state.scatter(idx, frame.select(self.totals))
