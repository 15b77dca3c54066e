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
        fused: set[int] = set()
        for i, node in enumerate(nodes):
            op = node.op
            if isinstance(op, KeyByOp) or node.id in fused:
                continue  # one worker: keying happens in the keyed step itself
            if isinstance(op, SelectOp):
                columns, owners = _fuse_select(op.columns, nodes, i)
                fused.update(n.id for n in owners if n is not node)
                # one dict literal, one line per field, each line owned by the step that wrote the field,
                # so that an error still names the right step
                g.add(depth, "r = {", node)
                for (n, e), owner in zip(columns, owners, strict=True):
                    g.add(depth + 1, f"{n!r}: {e.to_python(env)},", owner)
                g.add(depth, "}", node)
                continue
            if isinstance(op, WithColumnsOp):
                items = ", ".join(f"{n!r}: {e.to_python(env)}" for n, e in op.columns)
                g.add(depth, f"r = {{**r, {items}}}", node)
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


def _fuse_select(columns: tuple[tuple[str, Expr], ...], nodes: list[Node], i: int
                 ) -> tuple[tuple[tuple[str, Expr], ...], list[Node]]:
    """A select and the ``with_columns`` steps right after it as one dict literal, when each of
    those reads only fields the select passes through unchanged (then reading them from the
    incoming record gives the same values). Returns the columns and the step that wrote each."""
    from millstream._expr import _Col, _unalias, columns_of

    out = list(columns)
    owners = [nodes[i]] * len(out)
    passthrough = set()
    for n, e in columns:
        inner = _unalias(e)
        if isinstance(inner, _Col) and inner.name == n:
            passthrough.add(n)
    for node in nodes[i + 1:]:
        op = node.op
        if not isinstance(op, WithColumnsOp):
            break
        if not all(columns_of(e) <= passthrough for _, e in op.columns):
            break
        names = [n for n, _ in out]
        for name, e in op.columns:
            if name in names:
                out[names.index(name)] = (name, e)
                owners[names.index(name)] = node
            else:
                out.append((name, e))
                owners.append(node)
                names.append(name)
            passthrough.discard(name)
    return tuple(out), owners
