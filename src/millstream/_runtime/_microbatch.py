"""The micro-batch and batch executors: the same plan over columnar epochs.

A micro-batch job is compiled from the plan like a native one, with vectorised
operators where the plan allows them:

- chains of expression steps (``with_columns``, ``select``, ``filter`` with an
  expression, ``key_by``) and ``map_batches`` run on whole Polars DataFrames;
- windowed aggregations with built-in aggregations run as ``group_by`` over slices
  and sessions (see :mod:`._cwindows`), window joins as Polars joins (:mod:`._cjoins`);
- every other step (Python functions, process functions, reduce, custom
  aggregations, count windows, allowed lateness, interval, outer and table joins) runs the native operator
  over the rows of the batch, so its answers are the native ones by construction;
- a vectorised keyed operator keeps typed state, exact while its keys and fields keep one
  Python type each; a batch in which one changes type hands the state and the rest of the
  stream to the native operator (:class:`._columnar.ColumnKinds`), so values keep native
  mode's types (``max`` of ``3`` and ``2.5`` is ``3``, not ``3.0``).

Each round over the sources reads up to ``max_chunk`` records per source: that is
one epoch. The watermark advances once per epoch, windows fire on it, and
checkpoints are taken between epochs. Batch mode is the same executor over
bounded inputs with the largest batches.
"""

from __future__ import annotations

from typing import Any

from millstream import _plan as P
from millstream._expr import Expr, columns_of, conjuncts, equality_of

from ._base import Operator, Runtime
from ._cagg import ColumnarAggregate, vectorisable_aggregate
from ._chain import ChainOperator
from ._cjoins import make_columnar_join, vectorisable_join
from ._columnar import ColumnarChainOperator, RowPort, columnar_step, warn_row_functions
from ._cwindows import make_columnar_window, vectorisable_window
from ._native import NativeJob
from ._ondisk import hands_over


class MicroBatchJob(NativeJob):
    """A compiled plan with columnar operators where they give the native answers."""

    mode = "microbatch"

    def __init__(self, plan: P.Plan, rt: Runtime, mode: str = "microbatch") -> None:
        self.mode = mode
        super().__init__(plan, rt)

    def _make_chain(self, nodes: list[P.Node], timed: bool) -> Operator:
        if all(columnar_step(n) for n in nodes):
            return ColumnarChainOperator(nodes, self.rt, timed)
        warn_row_functions(nodes, self.mode)
        return ChainOperator(nodes, self.rt, timed)

    def _make(self, node: P.Node) -> Operator:
        op = node.op
        if self.rt.state.on_disk and hands_over(node, self._timed(node), self.mode):  # state on disk: native
            return super()._make(node)
        if isinstance(op, P.WindowOp) and vectorisable_window(op, self._timed(node)):
            return make_columnar_window(node, self.rt)
        if isinstance(op, P.AggregateOp) and vectorisable_aggregate(op):
            return ColumnarAggregate(node, self.rt, self._timed(node))
        if isinstance(op, P.JoinOp) and vectorisable_join(op, self._timed(node)):
            return make_columnar_join(node, self.rt)
        return super()._make(node)

    def open(self) -> None:
        super().open()
        for src in self.sources:  # sources that make columnar batches hand them over as they are
            if src.use_frames():
                push_down = getattr(src.reader, "push_down", None)
                if push_down is not None:
                    columns, equals = pushdown(self.plan, src.node)
                    push_down(columns, equals)

    def _port(self, up: Operator, op: Operator) -> Any:
        return op if op.columnar else RowPort(op)


# -- what a columnar source need not make --------------------------------------------------------


def pushdown(plan: P.Plan, source: P.Node) -> tuple[frozenset[str] | None, dict[str, frozenset[Any]]]:
    """The fields the flow reads from ``source`` (None: all of them, as far as the plan shows) and,
    per field, the values every consumer keeps first (``filter(col(f) == v)`` right after the
    source, on every branch). A source may leave the rest out; the filters stay in the plan."""
    need = _needed_after(plan, source.id)
    op = source.op
    assert isinstance(op, P.SourceOp)
    if need is not None and op.watermark is not None:
        ts = op.watermark.timestamp
        if isinstance(ts, str):
            need = need | {ts}
        elif isinstance(ts, Expr):
            need = need | columns_of(ts)
        else:
            need = None
    return (frozenset(need) if need is not None else None), _leading_equalities(plan, source.id)


def needed_by_step(plan: P.Plan, node: P.Node) -> frozenset[str] | None:
    """The input fields step ``node`` and what follows it read (None: any of them, as far as the plan
    shows): what an exchange into it must carry. Beyond the stateless steps :func:`pushdown` looks
    at, a window or running aggregate of built-in aggregations reads its key's fields and the
    aggregated fields only (not when its late records go on: they leave whole)."""
    op = node.op
    if isinstance(op, P.WindowOp | P.AggregateOp):
        if isinstance(op, P.WindowOp) and (op.function != "aggregate" or op.triggered):
            return None
        if any(isinstance(plan.node(c).op, P.LateOp) for c in plan.consumers(node.id)):
            return None
        need: set[str] = set()
        key = op.key
        if key is not None:
            if key.fn is not None:
                return None
            need |= columns_of(key.expr) if key.expr is not None else set(key.fields)
        for _, a in op.aggs:
            if type(a).__module__ != "millstream.agg" or type(a).__name__ == "_Custom":
                return None  # a user's aggregation may read the whole record
            if a.field is not None:
                need.add(a.field)
        return frozenset(need)
    got = _needed_by(plan, node)
    return None if got is None else frozenset(got)


def _needed_after(plan: P.Plan, node_id: int) -> set[str] | None:
    need: set[str] = set()
    for c in plan.consumers(node_id):
        got = _needed_by(plan, plan.node(c))
        if got is None:
            return None
        need |= got
    return need


def _needed_by(plan: P.Plan, node: P.Node) -> set[str] | None:
    """The input fields ``node`` and what follows it read (None: any of them)."""
    op = node.op
    if isinstance(op, P.SelectOp):
        return set().union(*(columns_of(e) for _, e in op.columns))
    if isinstance(op, P.FilterOp) and isinstance(op.fn, Expr):
        down = _needed_after(plan, node.id)
        return None if down is None else down | columns_of(op.fn)
    if isinstance(op, P.WithColumnsOp):
        down = _needed_after(plan, node.id)
        if down is None:
            return None
        return (down - {n for n, _ in op.columns}) | set().union(*(columns_of(e) for _, e in op.columns))
    if isinstance(op, P.KeyByOp) and op.key.fn is None:
        down = _needed_after(plan, node.id)
        if down is None:
            return None
        return down | (columns_of(op.key.expr) if op.key.expr is not None else set(op.key.fields))
    return None


def _leading_equalities(plan: P.Plan, node_id: int) -> dict[str, frozenset[Any]]:
    branches: list[dict[str, Any]] = []
    for c in plan.consumers(node_id):
        found: dict[str, Any] = {}
        node = plan.node(c)
        while isinstance(node.op, P.FilterOp | P.KeyByOp):
            if isinstance(node.op, P.FilterOp):
                if not isinstance(node.op.fn, Expr):
                    break
                for part in conjuncts(node.op.fn):
                    eq = equality_of(part)
                    if eq is not None and isinstance(eq[1], str | int) and eq[0] not in found:
                        found[eq[0]] = eq[1]
            nxt = plan.consumers(node.id)
            if len(nxt) != 1:
                break
            node = plan.node(nxt[0])
        branches.append(found)
    if not branches:
        return {}
    fields = set.intersection(*(set(b) for b in branches))
    return {f: frozenset(b[f] for b in branches) for f in fields}
