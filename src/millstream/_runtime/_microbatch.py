"""The micro-batch and batch executors: the same plan over columnar epochs.

A micro-batch job is compiled from the plan like a native one, with vectorised
operators where the plan allows them:

- chains of expression steps (``with_columns``, ``select``, ``filter`` with an
  expression, ``key_by``) and ``map_batches`` run on whole Polars DataFrames;
- windowed aggregations with built-in aggregations run as ``group_by`` over slices
  and sessions (see :mod:`._cwindows`), window joins as Polars joins (:mod:`._cjoins`);
- every other step (Python functions, process functions, reduce, custom
  aggregations, count windows, allowed lateness, regular and interval joins) runs the native operator
  over the rows of the batch, so its answers are the native ones by construction.

Each round over the sources reads up to ``max_chunk`` records per source: that is
one epoch. The watermark advances once per epoch, windows fire on it, and
checkpoints are taken between epochs. Batch mode is the same executor over
bounded inputs with the largest batches.
"""

from __future__ import annotations

from typing import Any

from millstream import _plan as P

from ._base import Operator, Runtime
from ._cagg import ColumnarAggregate, vectorisable_aggregate
from ._chain import ChainOperator
from ._cjoins import ColumnarWindowJoin, vectorisable_join
from ._columnar import ColumnarChainOperator, RowPort, columnar_step, warn_row_functions
from ._cwindows import make_columnar_window, vectorisable_window
from ._native import NativeJob


class MicroBatchJob(NativeJob):
    """A compiled plan with columnar operators where they give the native answers."""

    mode = "microbatch"

    def __init__(self, plan: P.Plan, rt: Runtime, mode: str = "microbatch") -> None:
        self.mode = mode
        super().__init__(plan, rt)

    def _chain_group(self, node: P.Node) -> bool:
        return columnar_step(node)

    def _make_chain(self, nodes: list[P.Node], timed: bool) -> Operator:
        if all(columnar_step(n) for n in nodes):
            return ColumnarChainOperator(nodes, self.rt, timed)
        warn_row_functions(nodes, self.mode)
        return ChainOperator(nodes, self.rt, timed)

    def _make(self, node: P.Node) -> Operator:
        op = node.op
        if isinstance(op, P.WindowOp) and vectorisable_window(op, self._timed(node)):
            return make_columnar_window(node, self.rt)
        if isinstance(op, P.AggregateOp) and vectorisable_aggregate(op):
            return ColumnarAggregate(node, self.rt, self._timed(node))
        if isinstance(op, P.JoinOp) and vectorisable_join(op, self._timed(node)):
            return ColumnarWindowJoin(node, self.rt)
        return super()._make(node)

    def open(self) -> None:
        super().open()
        for src in self.sources:  # sources that make columnar batches hand them over as they are
            src.use_frames()

    def _port(self, up: Operator, op: Operator) -> Any:
        return op if op.columnar else RowPort(op)
