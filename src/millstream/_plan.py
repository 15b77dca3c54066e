"""The logical plan: a frozen, inspectable graph of steps that every executor runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from millstream._eventtime import WatermarkStrategy
from millstream._expr import Expr, col
from millstream._location import callable_name
from millstream._time import format_duration
from millstream.agg import Aggregation
from millstream.connectors._base import Sink, Source
from millstream.state import StateSpec
from millstream.windows import Trigger, WindowAssigner

__all__ = ["KeySpec", "Node", "Plan"]


@dataclass(frozen=True)
class KeySpec:
    """How a record's key is read: one field, several fields, a function or an expression."""

    fields: tuple[str, ...] = ()
    fn: Callable[[Any], Any] | None = None
    name: str = "key"
    expr: Expr | None = None
    #: the key a keyed step upstream attached to each record (CEP's match and side-output steps read
    #: the NFA's): the records already come partitioned by it, so the physical plan needs no exchange
    from_upstream: bool = False

    def describe(self) -> str:
        if self.fn is not None:
            return callable_name(self.fn)
        if self.expr is not None:
            return repr(self.expr)
        return ", ".join(self.fields)

    @property
    def output_fields(self) -> tuple[str, ...]:
        """The columns a keyed result carries its key in."""
        return self.fields if self.fn is None and self.expr is None else (self.name,)


# -- operators: one frozen dataclass per kind ------------------------------------------


@dataclass(frozen=True)
class Op:
    kind = "op"

    def describe(self) -> str:
        return ""


@dataclass(frozen=True)
class SourceOp(Op):
    connector: Source
    watermark: WatermarkStrategy | None
    kind = "source"

    def describe(self) -> str:
        wm = f" [watermark: {self.watermark.describe()}]" if self.watermark else ""
        return self.connector.describe() + wm


@dataclass(frozen=True)
class FnOp(Op):
    """A step of one user function of the record; map and filter also take an expression."""

    fn: Callable[..., Any] | Expr

    def describe(self) -> str:
        return repr(self.fn) if isinstance(self.fn, Expr) else callable_name(self.fn)


@dataclass(frozen=True)
class MapOp(FnOp):
    """One output per record: ``fn(record)``, or the value of an expression."""

    kind = "map"


@dataclass(frozen=True)
class FilterOp(FnOp):
    """The records for which ``fn(record)`` is true, or an expression's condition is (null is not)."""

    kind = "filter"


@dataclass(frozen=True)
class FlatMapOp(FnOp):
    kind = "flat_map"


@dataclass(frozen=True)
class InspectOp(FnOp):
    kind = "inspect"


@dataclass(frozen=True)
class MapBatchesOp(FnOp):
    """A function of a whole batch: ``fn(polars.DataFrame) -> polars.DataFrame``.

    In native mode each chunk of dict records becomes a DataFrame for the call.
    """

    kind = "map_batches"


def _describe_columns(columns: tuple[tuple[str, Expr], ...]) -> str:
    return ", ".join(name if e.equals(col(name)) else f"{name}={e!r}" for name, e in columns)


@dataclass(frozen=True)
class WithColumnsOp(Op):
    """A copy of each dict record with fields added or replaced: ``{**r, name: expr, ...}``.

    Every expression reads the incoming record.
    """

    columns: tuple[tuple[str, Expr], ...]
    kind = "with_columns"

    def describe(self) -> str:
        return _describe_columns(self.columns)


@dataclass(frozen=True)
class SelectOp(Op):
    """A new dict record of just these fields: ``{name: expr, ...}``."""

    columns: tuple[tuple[str, Expr], ...]
    kind = "select"

    def describe(self) -> str:
        return _describe_columns(self.columns)


@dataclass(frozen=True)
class KeyByOp(Op):
    key: KeySpec
    kind = "key_by"

    def describe(self) -> str:
        return self.key.describe()


@dataclass(frozen=True)
class UnionOp(Op):
    kind = "union"


@dataclass(frozen=True)
class ReduceOp(Op):
    """Running reduce per key: emits the new reduced value for every record."""

    key: KeySpec
    fn: Callable[[Any, Any], Any]
    kind = "reduce"

    def describe(self) -> str:
        return f"by {self.key.describe()}: {callable_name(self.fn)}"


def _describe_aggs(aggs: tuple[tuple[str, Aggregation], ...]) -> str:
    return ", ".join(f"{name}={agg.describe()}" for name, agg in aggs)


@dataclass(frozen=True)
class AggregateOp(Op):
    """Running aggregate per key: emits the updated row for every record.

    With ``changelog`` the output is a changelog (see :mod:`millstream.changelog`): a key's
    first row ``+I``, then for each update its previous row ``-U`` and its new row ``+U``.
    """

    key: KeySpec
    aggs: tuple[tuple[str, Aggregation], ...]
    changelog: bool = False
    kind = "aggregate"

    def describe(self) -> str:
        text = f"by {self.key.describe()}: {_describe_aggs(self.aggs)}"
        return text + (" (changelog)" if self.changelog else "")


@dataclass(frozen=True)
class WindowOp(Op):
    """Windowed aggregation, reduce or process; ``key`` None for a window over the whole stream."""

    key: KeySpec | None
    assigner: WindowAssigner
    allowed_lateness_ms: int
    aggs: tuple[tuple[str, Aggregation], ...] = ()
    reduce_fn: Callable[[Any, Any], Any] | None = None
    process_fn: Callable[..., Any] | None = None
    #: when windows fire (None: the assigner's default, at the window's end)
    trigger: Trigger | None = None
    kind = "window"

    @property
    def triggered(self) -> bool:
        """Whether the step runs on the general, trigger-driven window operator."""
        return self.trigger is not None or self.assigner.needs_trigger_operator

    @property
    def function(self) -> str:
        if self.reduce_fn is not None:
            return "reduce"
        if self.process_fn is not None:
            return "process"
        return "aggregate"

    def describe(self) -> str:
        by = f"by {self.key.describe()}, " if self.key is not None else "all, "
        late = f", allowed lateness {self.allowed_lateness_ms}ms" if self.allowed_lateness_ms else ""
        if self.trigger is not None:
            late += f", fires {self.trigger.describe()}"
        if self.reduce_fn is not None:
            what = f"reduce {callable_name(self.reduce_fn)}"
        elif self.process_fn is not None:
            what = f"process {callable_name(self.process_fn)}"
        else:
            what = _describe_aggs(self.aggs)
        return f"{by}{self.assigner.describe()}{late}: {what}"


@dataclass(frozen=True)
class LateOp(Op):
    """The late side output of a window step."""

    kind = "late"


@dataclass(frozen=True)
class ProcessOp(Op):
    """Keyed process function with declared state and timers."""

    key: KeySpec
    fn: Callable[..., Any]
    on_timer: Callable[..., Any] | None
    state: tuple[tuple[str, StateSpec], ...]
    kind = "process"

    def describe(self) -> str:
        st = ", ".join(f"{n}: {s.describe()}" for n, s in self.state)
        timer = f", on_timer {callable_name(self.on_timer)}" if self.on_timer else ""
        return f"by {self.key.describe()}: {callable_name(self.fn)}{timer}" + (f" (state {st})" if st else "")


# -- joins (two inputs: node.inputs == (left, right)) -----------------------------------

@dataclass(frozen=True)
class JoinOp(Op):
    """Pairs of left and right records with equal keys; the node's inputs are ``(left, right)``.

    ``mode`` says which pairs: ``"regular"`` every pair (state kept ``ttl_ms`` behind the
    watermark, or forever when None), ``"window"`` pairs in the same window of ``assigner``,
    ``"interval"`` pairs with ``left.t + lower_ms <= right.t <= left.t + upper_ms``.
    ``combine(left, right)`` makes the output record; None merges the two dicts, renaming a
    right field that collides with a left one (other than a shared key field) to ``<name>_right``.

    ``how`` is ``"inner"`` for every mode; a regular join may also be ``"left"``, ``"right"``
    or ``"full"``: the output is then a changelog (:mod:`millstream.changelog`) in which a
    record of an outer side without a partner is inserted padded (``combine(left, None)`` or
    ``combine(None, right)``, by default the record alone) and deleted when its first
    partner comes. Inner joins stay append-only (their records carry no change kind).
    """

    left_key: KeySpec
    right_key: KeySpec
    mode: str
    how: str = "inner"
    ttl_ms: int | None = None
    assigner: WindowAssigner | None = None
    lower_ms: int = 0
    upper_ms: int = 0
    combine: Callable[[Any, Any], Any] | None = None
    kind = "join"

    @property
    def outer(self) -> tuple[bool, bool]:
        """Whether the left and the right side keep their records without a partner."""
        return (self.how in ("left", "full"), self.how in ("right", "full"))

    @property
    def shared_fields(self) -> tuple[str, ...]:
        """Key fields read under the same name on both sides: the output keeps the left's value."""
        if any(k.fn is not None or k.expr is not None for k in (self.left_key, self.right_key)):
            return ()
        return tuple(f for f, g in zip(self.left_key.fields, self.right_key.fields, strict=False) if f == g)

    def describe(self) -> str:
        text = f"{self.how} on {self.left_key.describe()} = {self.right_key.describe()}"
        if self.mode == "window":
            assert self.assigner is not None
            text += f", window {self.assigner.describe()}"
        elif self.mode == "interval":
            text += f", right.t in [left.t{self.lower_ms:+d}ms, left.t{self.upper_ms:+d}ms]"
        elif self.ttl_ms is not None:
            text += f", ttl {format_duration(self.ttl_ms) if self.ttl_ms else '0ms'}"
        return text + (f": {callable_name(self.combine)}" if self.combine is not None else "")


# -- end of joins -----------------------------------------------------------------------


# -- enrichment: table (temporal) joins and lookup joins ---------------------------------


def _describe_condition(cond: Callable[[Any], Any] | Expr | str | None) -> str:
    if cond is None:
        return "never"
    if isinstance(cond, str):
        return f"field {cond!r} set"
    return repr(cond) if isinstance(cond, Expr) else callable_name(cond)


@dataclass(frozen=True)
class TableJoinOp(Op):
    """Each event joined with the version of its key's table row valid at the event's time.

    The node's inputs are ``(events, table)``. The table input is a changelog: each record
    is the new version of its key's row (an upsert) from its event time on, or a delete
    when ``deletes`` says so (a function of the record, an expression, or a field name
    whose value is truthy). ``how`` is ``"inner"`` or ``"left"`` (an event without a row
    is kept: ``combine(event, None)``, by default the event unchanged).
    """

    left_key: KeySpec
    table_key: KeySpec
    how: str = "inner"
    deletes: Callable[[Any], Any] | Expr | str | None = None
    combine: Callable[[Any, Any], Any] | None = None
    kind = "table_join"

    @property
    def shared_fields(self) -> tuple[str, ...]:
        """Key fields read under the same name on both sides: the output keeps the event's value."""
        if any(k.fn is not None or k.expr is not None for k in (self.left_key, self.table_key)):
            return ()
        return tuple(f for f, g in zip(self.left_key.fields, self.table_key.fields, strict=False) if f == g)

    def describe(self) -> str:
        text = f"{self.how} on {self.left_key.describe()} = {self.table_key.describe()} as of event time"
        if self.deletes is not None:
            text += f", deletes: {_describe_condition(self.deletes)}"
        return text + (f": {callable_name(self.combine)}" if self.combine is not None else "")


@dataclass(frozen=True)
class LookupOp(Op):
    """Each record joined with the row of an external table (a ``LookupTable``) under its key.

    Keys missing from the cache are fetched in batches of up to ``batch_size`` records,
    ``max_in_flight`` batches at once; found rows and misses are cached for ``cache_ttl_ms``
    of processing time (None: for the whole run), at most ``cache_size`` keys (least recently
    used go first). The cache is not state: a restored job refills it.
    """

    table: Any
    key: KeySpec
    how: str = "inner"
    cache_ttl_ms: int | None = None
    cache_size: int = 100_000
    batch_size: int = 1_000
    max_in_flight: int = 4
    combine: Callable[[Any, Any], Any] | None = None
    kind = "lookup"

    def describe(self) -> str:
        # cache settings are left out: the describe text is part of the checkpoint fingerprint,
        # and tuning the cache must not stop a job from resuming
        table = self.table.describe() if hasattr(self.table, "describe") else repr(self.table)
        text = f"{self.how} {table} on {self.key.describe()}"
        return text + (f": {callable_name(self.combine)}" if self.combine is not None else "")


# -- end of enrichment ------------------------------------------------------------------


@dataclass(frozen=True)
class SinkOp(Op):
    connector: Sink
    kind = "sink"

    def describe(self) -> str:
        return self.connector.describe()


STATELESS = (MapOp, FilterOp, FlatMapOp, InspectOp, WithColumnsOp, SelectOp, KeyByOp, MapBatchesOp)


@dataclass(frozen=True)
class Node:
    """One step: an operator, its inputs (node ids), its unique name and where it was defined."""

    id: int
    name: str
    op: Op
    inputs: tuple[int, ...]
    location: str | None
    timestamped: bool

    @property
    def kind(self) -> str:
        return self.op.kind


@dataclass(frozen=True)
class Plan:
    """The frozen logical plan of a flow. ``print(plan)`` shows it; ``to_mermaid()`` draws it."""

    flow: str
    nodes: tuple[Node, ...]
    _consumers: Mapping[int, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        consumers: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                consumers[i].append(n.id)
        object.__setattr__(self, "_consumers", {k: tuple(v) for k, v in consumers.items()})

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def consumers(self, node_id: int) -> tuple[int, ...]:
        return self._consumers[node_id]

    @property
    def sources(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if isinstance(n.op, SourceOp))

    @property
    def sinks(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if isinstance(n.op, SinkOp))

    def render(self) -> str:
        """A text view: one line per step, with its inputs."""
        lines = [f"flow {self.flow!r}: {len(self.nodes)} steps"]
        for n in self.nodes:
            src = ""
            if n.inputs:
                src = " <- " + ", ".join(self.nodes[i].name for i in n.inputs)
            ts = "" if n.timestamped else " (no event time)"
            loc = f"  @ {n.location}" if n.location else ""
            lines.append(f"  [{n.id}] {n.name}: {n.kind} {n.op.describe()}{src}{ts}{loc}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def to_mermaid(self) -> str:
        """The plan as a Mermaid flowchart (paste into any Markdown that renders Mermaid)."""
        lines = ["flowchart LR"]
        for n in self.nodes:
            label = f"{n.name}<br/>{n.kind}".replace('"', "'")
            lines.append(f'  n{n.id}["{label}"]')
        for n in self.nodes:
            for i in n.inputs:
                edge = "-. late .->" if n.kind == "late" else "-->"
                lines.append(f"  n{i} {edge} n{n.id}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "steps": [
                {"id": n.id, "name": n.name, "kind": n.kind, "detail": n.op.describe(), "inputs": list(n.inputs),
                 "location": n.location, "event_time": n.timestamped}
                for n in self.nodes
            ],
        }
