"""Fused chains of stateless steps: one generated loop per chain."""

from __future__ import annotations

from typing import Any

from millstream._expr import Expr, conjuncts
from millstream._plan import FilterOp, FlatMapOp, InspectOp, KeyByOp, MapOp, Node, SelectOp, WithColumnsOp

from ._base import Operator, Runtime
from ._codegen import Generated, frame_local, step_at


class ChainOperator(Operator):
    """map / filter / flat_map / inspect / with_columns / select steps fused into one loop.

    There is no call between steps, and none for an expression: its Python source
    is inlined (``if not (... r['price'] > 500): continue``). Each generated line
    belongs to its step, so an error names the step that raised.
    """

    def __init__(self, nodes: list[Node], rt: Runtime, timed: bool) -> None:
        super().__init__(nodes[-1], rt, len(nodes[0].inputs))
        self.steps = list(nodes)
        self.timed = timed
        self.passthrough = all(isinstance(n.op, KeyByOp) for n in nodes)
        env: dict[str, Any] = {}
        g = Generated()
        g.add(0, "def _chain(recs, times):")
        g.add(1, "out = []; _oa = out.append")
        if timed:
            g.add(1, "tout = []; _ta = tout.append")
            g.add(1, "for r0, t in zip(recs, times):")
        else:
            g.add(1, "for r0 in recs:")
        g.add(2, "r = r0")
        depth = 2
        for i, node in enumerate(nodes):
            op = node.op
            if isinstance(op, KeyByOp):
                continue  # one worker: keying happens in the keyed step itself
            if isinstance(op, WithColumnsOp | SelectOp):
                items = ", ".join(f"{n!r}: {e.to_python(env)}" for n, e in op.columns)
                g.add(depth, f"r = {{**r, {items}}}" if isinstance(op, WithColumnsOp) else f"r = {{{items}}}", node)
                continue
            if isinstance(op, MapOp | FilterOp) and isinstance(op.fn, Expr):
                if isinstance(op, MapOp):
                    g.add(depth, f"r = {op.fn.to_python(env)}", node)
                else:  # one test per conjunct: cheap, and null drops the record
                    for part in conjuncts(op.fn):
                        g.add(depth, f"if not {part.to_python(env, as_condition=True)}: continue", node)
                continue
            fn = f"_f{i}"
            env[fn] = op.fn  # type: ignore[attr-defined]
            if isinstance(op, MapOp):
                g.add(depth, f"r = {fn}(r)", node)
            elif isinstance(op, FilterOp):
                g.add(depth, f"if not {fn}(r): continue", node)
            elif isinstance(op, InspectOp):
                g.add(depth, f"{fn}(r)", node)
            elif isinstance(op, FlatMapOp):
                g.add(depth, f"for r in {fn}(r):", node)
                depth += 1
        g.add(depth, "_oa(r); _ta(t)" if timed else "_oa(r)")
        g.add(1, "return out, tout" if timed else "return out, None")
        self._line_step = g.line_step
        self._fn, self._filename = g.compile("chain:" + "+".join(n.name for n in nodes), env, "_chain")

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        if self.passthrough:
            self.emit(records, times)
            return
        try:
            out, tout = self._fn(records, times)
        except Exception as exc:
            tb = exc.__traceback__
            node = step_at(tb, self._filename, self._line_step) or self.steps[0]
            rec = frame_local(tb, self._filename, "r")
            origin = frame_local(tb, self._filename, "r0")
            t = frame_local(tb, self._filename, "t") if self.timed else None
            raise self.rt.step_error(node, exc, record=rec, origin=origin, event_time=t) from exc
        self.emit(out, tout)

    def describe(self) -> str:
        return " -> ".join(n.name for n in self.steps)
