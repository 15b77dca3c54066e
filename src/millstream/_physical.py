"""The physical plan: which operator instances run on which worker, and how data moves between them.

``compile(plan, mode, parallelism)`` turns the logical plan into a :class:`PhysicalPlan`:

- **operators**: maximal chains of stateless steps are fused into one operator (as the executors
  fuse them: a generated per-record loop in native mode, one polars pipeline over a batch in the
  columnar modes); every other step is an operator of its own.
- **instances**: instance ``i`` of an operator runs on worker ``i`` and is named ``step#i``. A
  keyed operator has ``parallelism`` instances, instance ``w`` owning the key groups
  :func:`millstream._keygroups.groups_of` gives it. A source of several logical splits
  (:meth:`~millstream.connectors.Source.logical_splits`, a count fixed by the source) has
  ``parallelism`` instances, instance ``w`` reading the contiguous range of splits
  :func:`~millstream.connectors._base.split_range` gives it; one of a single split has one
  instance, on worker 0, reading all of it. A window over the whole stream has one. Any other
  operator runs where its input runs: as many instances as its widest input (so a stateless chain
  after a split source runs on every worker, on the records read there, and the first keyed step
  after it is a ``hash`` exchange).
- **edges**, each with its partitioning: ``forward`` (instance ``w`` to instance ``w``: no data
  crosses workers), ``hash`` (to the instance owning the record's key group: an exchange, wherever
  a keyed operator reads a stream not already partitioned by its key), ``global`` (every instance
  to the single instance of a window over the whole stream); and the data form that travels on it,
  ``rows`` (lists of records) or ``columns`` (polars batches), with the conversion the consumer makes.
- **stages**: the operators connected by forward edges; exchanges run between stages.

The plan is a value: ``explain()`` prints it, ``to_dict()`` serves it as JSON. At parallelism 1
every instance is on worker 0 and a ``hash`` edge moves nothing, but the plan has the same shape:
the exchanges are where they will be at any parallelism.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from millstream import _plan as P
from millstream._keygroups import DEFAULT_MAX_PARALLELISM, check_parallelism, groups_of, worker_of
from millstream.connectors._base import DeadLetter, Source, SplitSetSource, split_range
from millstream.errors import ConfigError

__all__ = ["Edge", "Instance", "Operator", "PhysicalPlan", "chain_steps", "compile"]

Form = Literal["rows", "columns", "mixed"]
Partitioning = Literal["forward", "hash", "global"]


@dataclass(frozen=True)
class Instance:
    """One running copy of an operator, on one worker."""

    operator: str
    worker: int
    #: the key groups whose state it holds (keyed operators), else None
    key_groups: range | None

    @property
    def label(self) -> str:
        return f"{self.operator}#{self.worker}"


@dataclass(frozen=True)
class Operator:
    """One operator of the executor: a step, or a chain of fused stateless steps."""

    steps: tuple[P.Node, ...]
    #: the form it computes on: ``rows`` (per record) or ``columns`` (vectorised over a batch)
    form: Form
    #: the form it sends downstream
    output: Form
    parallelism: int
    #: the key its state is partitioned by (keyed operators), else None
    key: P.KeySpec | None
    max_parallelism: int
    #: a source of several logical splits: the splits (instance ``w`` reads :meth:`split_numbers` ``(w)``)
    splits: tuple[Source, ...] | None = None

    def split_numbers(self, worker: int) -> range:
        """The logical splits instance ``worker`` reads (a split source only)."""
        assert self.splits is not None
        return split_range(worker, self.parallelism, len(self.splits))

    def part(self, worker: int) -> SplitSetSource:
        """What instance ``worker`` of a split source opens: its splits, aligned by the step's watermark
        strategy (see :class:`~millstream.connectors._base.SplitSetSource`)."""
        assert self.splits is not None
        op = self.steps[0].op
        assert isinstance(op, P.SourceOp)
        numbers = self.split_numbers(worker)
        return SplitSetSource(op.connector, [self.splits[j] for j in numbers], numbers, op.watermark)

    @property
    def id(self) -> int:
        """The id of its first step."""
        return self.steps[0].id

    @property
    def name(self) -> str:
        return self.steps[0].name if len(self.steps) == 1 else " -> ".join(n.name for n in self.steps)

    @property
    def kind(self) -> str:
        return self.steps[0].kind if len(self.steps) == 1 else "chain"

    @property
    def instances(self) -> tuple[Instance, ...]:
        keyed = self.key is not None
        return tuple(
            Instance(self.name, w, groups_of(w, self.parallelism, self.max_parallelism) if keyed else None)
            for w in range(self.parallelism)
        )

    def describe(self) -> str:
        if len(self.steps) == 1:
            return f"{self.kind} {self.steps[0].op.describe()}".rstrip()
        return "chain " + " -> ".join(f"{n.kind}" + (f" {n.op.describe()}" if n.op.describe() else "")
                                      for n in self.steps)


@dataclass(frozen=True)
class Edge:
    """Data from one operator to another (``port``: which input of the target)."""

    source: int
    target: int
    port: int
    partitioning: Partitioning
    #: the key a ``hash`` edge routes by (read from each record), else None
    key: P.KeySpec | None
    #: what travels: lists of records or polars batches
    form: Form
    #: the form the target turns it into on arrival (None: it takes it as it comes)
    convert: Form | None = None
    #: the late side output of a window
    late: bool = False

    @property
    def exchange(self) -> bool:
        """Whether records may cross workers on this edge."""
        return self.partitioning != "forward"


@dataclass(frozen=True)
class PhysicalPlan:
    """A logical plan compiled for a mode and a parallelism. ``print(pp.explain())`` shows it."""

    plan: P.Plan
    mode: str
    parallelism: int
    max_parallelism: int
    operators: tuple[Operator, ...]
    edges: tuple[Edge, ...]
    #: operator ids per stage (operators linked by forward edges), in plan order
    stages: tuple[tuple[int, ...], ...]

    def operator(self, op_id: int) -> Operator:
        for op in self.operators:
            if op.id == op_id:
                return op
        raise KeyError(op_id)

    def operator_of(self, node_id: int) -> Operator:
        """The operator that runs step ``node_id``."""
        for op in self.operators:
            if any(n.id == node_id for n in op.steps):
                return op
        raise KeyError(node_id)

    def owner(self, key_group: int) -> int:
        """The worker whose keyed instances hold ``key_group``."""
        return worker_of(key_group, self.parallelism, self.max_parallelism)

    @property
    def exchanges(self) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.exchange)

    def explain(self) -> str:
        """A text view: the stages with their operators and instances, then the edges."""
        lines = [f"flow {self.plan.flow!r}: physical plan, {self.mode} mode, parallelism {self.parallelism}, "
                 f"max parallelism {self.max_parallelism} (key groups)"]
        for i, stage in enumerate(self.stages):
            ops = [self.operator(o) for o in stage]
            width = max(op.parallelism for op in ops)
            lines.append(f"stage {i}: {_workers(width)}")
            for op in ops:
                lines.append(f"  {op.name}: {op.describe()}")
                lines.append(f"    {_instances(op)}; {_form(op)}")
                if op.splits:
                    lines.extend(f"      {i.label} reads {op.part(i.worker).describe()}" for i in op.instances)
        lines.append("edges:")
        for e in self.edges:
            src, dst = self.operator(e.source), self.operator(e.target)
            how = e.partitioning if e.key is None else f"hash by {e.key.describe()}"
            port = f" (input {e.port})" if len(dst.steps[0].inputs) > 1 else ""
            late = " (late side output)" if e.late else ""
            conv = f", to {e.convert} on arrival" if e.convert is not None else ""
            lines.append(f"  {src.name} -> {dst.name}{port}{late}: {how}, {e.form}{conv}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()

    def to_dict(self) -> dict[str, Any]:
        return {
            "flow": self.plan.flow,
            "mode": self.mode,
            "parallelism": self.parallelism,
            "max_parallelism": self.max_parallelism,
            "operators": [
                {"id": op.id, "name": op.name, "kind": op.kind, "steps": [n.id for n in op.steps],
                 "form": op.form, "output": op.output, "parallelism": op.parallelism,
                 "key": op.key.describe() if op.key is not None else None,
                 "instances": [{"label": i.label, "worker": i.worker,
                                "key_groups": [i.key_groups.start, i.key_groups.stop] if i.key_groups else None,
                                **({"reads": op.part(i.worker).describe(),
                                    "splits": list(op.split_numbers(i.worker))} if op.splits else {})}
                               for i in op.instances]}
                for op in self.operators
            ],
            "edges": [
                {"from": e.source, "to": e.target, "port": e.port, "partitioning": e.partitioning,
                 "key": e.key.describe() if e.key is not None else None, "form": e.form,
                 "convert": e.convert, "late": e.late}
                for e in self.edges
            ],
            "stages": [list(s) for s in self.stages],
        }


def _workers(n: int) -> str:
    return "worker 0" if n == 1 else f"workers 0-{n - 1}"


def _instances(op: Operator) -> str:
    if op.key is None:
        text = ", ".join(i.label for i in op.instances)
        if op.splits:
            return text + f" (split: {len(op.splits)} logical splits, each instance reads a range of them)"
        return text + (" (reads every split)" if op.kind == "source" else "")
    return "keyed by " + op.key.describe() + ": " + ", ".join(
        f"{i.label} groups {_range(i.key_groups)}" for i in op.instances)


def _range(r: range | None) -> str:
    assert r is not None
    return f"{r.start}-{r.stop - 1}" if len(r) > 1 else str(r.start)


def _form(op: Operator) -> str:
    return f"on {op.form}" if op.form == op.output else f"on {op.form}, sends {op.output}"


# -- which steps are fused -------------------------------------------------------------------------


def row_fusable(node: P.Node) -> bool:
    """Whether the native executor fuses a stateless step into a generated per-record loop."""
    return not isinstance(node.op, P.MapBatchesOp)


def chain_steps(plan: P.Plan, group: Callable[[P.Node], bool] = row_fusable) -> dict[int, list[P.Node]]:
    """Stateless steps grouped into maximal chains (head id -> steps): a step joins the chain of
    its only input when it is that input's only consumer and both run the same way (``group``: in
    native mode, per record or over a DataFrame; in the columnar modes, vectorised or per row).
    A ``key_by`` joins any chain: it only marks where a key is read."""
    head_of: dict[int, int] = {}
    chains: dict[int, list[P.Node]] = {}
    kind: dict[int, bool | None] = {}  # chain head -> its group (None: only key_by steps so far)
    for node in plan.nodes:
        if not isinstance(node.op, P.STATELESS):
            continue
        g = None if isinstance(node.op, P.KeyByOp) else group(node)
        if len(node.inputs) == 1:
            up = plan.node(node.inputs[0])
            if (isinstance(up.op, P.STATELESS) and plan.consumers(up.id) == (node.id,)
                    and (g is None or kind[head_of[up.id]] in (None, g))):
                if g is not None:
                    kind[head_of[up.id]] = g
                head = head_of[up.id]
                head_of[node.id] = head
                chains[head].append(node)
                continue
        head_of[node.id] = node.id
        chains[node.id] = [node]
        kind[node.id] = g
    return chains


# -- compiling -------------------------------------------------------------------------------------


def _timed(plan: P.Plan, node: P.Node) -> bool:
    return all(plan.node(i).timestamped for i in node.inputs) if node.inputs else node.timestamped


def _state_key(op: P.Op, port: int) -> P.KeySpec | None:
    """The key a step's state on input ``port`` is partitioned by (None: not keyed)."""
    if isinstance(op, P.AggregateOp | P.ReduceOp | P.ProcessOp):
        return op.key
    if isinstance(op, P.WindowOp):
        return op.key
    if isinstance(op, P.JoinOp):
        return op.left_key if port == 0 else op.right_key
    if isinstance(op, P.TableJoinOp):
        return op.left_key if port == 0 else op.table_key
    return None


def _keyed(op: P.Op) -> bool:
    return isinstance(op, P.AggregateOp | P.ReduceOp | P.ProcessOp | P.JoinOp | P.TableJoinOp) or (
        isinstance(op, P.WindowOp) and op.key is not None)


def _fields_kept(node: P.Node, fields: tuple[str, ...]) -> bool:
    """Whether a stateless step passes ``fields`` on with their values unchanged."""
    from millstream._expr import col

    op = node.op
    if isinstance(op, P.FilterOp | P.InspectOp | P.KeyByOp):
        return True
    if isinstance(op, P.WithColumnsOp):
        return not {n for n, _ in op.columns} & set(fields)
    if isinstance(op, P.SelectOp):
        kept = {n for n, e in op.columns if e.equals(col(n))}
        return set(fields) <= kept
    return False


def _output_key(node: P.Node) -> P.KeySpec | None:
    """The fields a keyed step's output records carry its key in (they stay partitioned by it)."""
    op = node.op
    key: P.KeySpec | None = None
    if isinstance(op, P.AggregateOp) or (isinstance(op, P.WindowOp) and op.function == "aggregate"):
        key = op.key
    elif isinstance(op, P.JoinOp) and op.how == "inner" and op.combine is None:
        key = op.left_key  # the merged record keeps the left's key fields
    if key is None:
        return None
    return P.KeySpec(fields=key.output_fields)


def _same_partitioning(have: P.KeySpec | None, want: P.KeySpec) -> bool:
    if have is None:
        return False
    if want.fn is None and want.expr is None and have.fn is None and have.expr is None:
        return have.fields == want.fields
    return False


def _columnar_forms(plan: P.Plan, node: P.Node) -> bool:
    """Whether a stateful step runs vectorised in the columnar modes (as the micro-batch executor decides)."""
    from millstream._runtime._cagg import vectorisable_aggregate
    from millstream._runtime._cjoins import vectorisable_join
    from millstream._runtime._cwindows import vectorisable_window

    op, timed = node.op, _timed(plan, node)
    if isinstance(op, P.WindowOp):
        return vectorisable_window(op, timed)
    if isinstance(op, P.AggregateOp):
        return vectorisable_aggregate(op)
    if isinstance(op, P.JoinOp):
        return vectorisable_join(op, timed)
    return False


def compile(plan: P.Plan, mode: str = "native", parallelism: int = 1,
            max_parallelism: int = DEFAULT_MAX_PARALLELISM, *, gather_sinks: bool = False) -> PhysicalPlan:
    """The physical plan of ``plan`` in ``mode`` (native, microbatch or batch) on ``parallelism`` workers.

    ``gather_sinks``: every sink has one instance, on worker 0, and its inputs reach it by ``global``
    edges (what the local worker processes run today: one writer per sink, in the calling process).
    """
    from millstream._run import MODES

    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    check_parallelism(parallelism, max_parallelism)
    columnar = mode != "native"
    if columnar:
        from millstream._runtime._columnar import columnar_step

        chains = chain_steps(plan, columnar_step)
    else:
        chains = chain_steps(plan)
    head: dict[int, int] = {n.id: h for h, nodes in chains.items() for n in nodes}

    ops: dict[int, Operator] = {}
    parts: dict[int, P.KeySpec | None] = {}  # operator id -> the key its output is partitioned by
    edges: list[Edge] = []
    for node in plan.nodes:
        if node.id in head and head[node.id] != node.id:
            continue
        steps = tuple(chains[node.id]) if node.id in head else (node,)
        first = steps[0]
        inputs = [(port, ops[head.get(i, i)]) for port, i in enumerate(first.inputs)]
        op = first.op
        # the form it computes on and sends
        form: Form
        output: Form
        if not columnar:
            form = output = "rows"
        elif isinstance(op, P.SourceOp):
            form = output = "columns"
        elif isinstance(op, P.STATELESS):
            form = output = "columns" if all(columnar_step(n) for n in steps) else "rows"
        elif isinstance(op, P.SinkOp):
            form = output = "mixed" if len({u.output for _, u in inputs}) > 1 else inputs[0][1].output
        elif isinstance(op, P.UnionOp | P.LateOp):
            forms = {u.output for _, u in inputs}
            form = output = forms.pop() if len(forms) == 1 else "mixed"
        else:
            form = output = "columns" if _columnar_forms(plan, first) else "rows"
        # how many instances, and the edges in
        keyed = _keyed(op)
        gathered = _gathered(op, gather_sinks)
        splits = _source_splits(first) if isinstance(op, P.SourceOp) else None
        if splits is not None:
            width = parallelism
        elif isinstance(op, P.SourceOp) or gathered:
            width = 1
        elif keyed:
            width = parallelism
        else:
            width = max(u.parallelism for _, u in inputs)
        key = _state_key(op, 0) if keyed else None
        for port, up in inputs:
            want = _state_key(op, port) if keyed else None
            late = isinstance(op, P.LateOp)
            if want is not None and not (want.from_upstream or _same_partitioning(parts[up.id], want)):
                how: Partitioning = "hash"
            elif gathered and up.parallelism > 1:
                how = "global"
            else:
                how, want = "forward", None
            travels = up.output
            # a consumer of one form turns the other into it (sinks, unions: take either)
            convert: Form | None = form if travels != form and form != "mixed" else None
            edges.append(Edge(up.id, first.id, port, how, want, travels, convert, late))
        ops[first.id] = Operator(steps, form, output, width, key, max_parallelism, splits)
        # the key the output stays partitioned by
        part: P.KeySpec | None
        if keyed:
            part = _output_key(first)
        elif isinstance(op, P.LateOp):
            window = plan.node(first.inputs[0]).op
            part = window.key if isinstance(window, P.WindowOp) else None
        elif isinstance(op, P.STATELESS):
            part = parts[inputs[0][1].id]
            if part is not None and not (part.fn is None and part.expr is None
                                         and all(_fields_kept(n, part.fields) for n in steps)):
                part = None
        else:
            part = None
        parts[first.id] = part
    operators = tuple(ops.values())
    return PhysicalPlan(plan, mode, parallelism, max_parallelism, operators, tuple(edges),
                        _stages(operators, edges))


def _source_splits(node: P.Node) -> tuple[Source, ...] | None:
    """The logical splits of a source step; None when it is one split, read whole on worker 0, and
    when its bad records go to a dead-letter sink (that writer is on worker 0)."""
    op = node.op
    assert isinstance(op, P.SourceOp)
    connector = op.connector
    if isinstance(connector.on_error, DeadLetter):
        return None
    splits = connector.logical_splits()
    if splits is None:
        return None
    if not isinstance(splits, list | tuple) or not splits or not all(isinstance(s, Source) for s in splits):
        raise ConfigError(f"source {node.name!r}: {type(connector).__name__}.logical_splits() must return a "
                          f"non-empty list of sources or None, got {splits!r:.200}")
    return tuple(splits)


def _gathered(op: P.Op, gather_sinks: bool) -> bool:
    """Whether the step has one instance fed by every worker: a window over the whole stream, and
    (``gather_sinks``) a sink."""
    return (isinstance(op, P.WindowOp) and op.key is None) or (gather_sinks and isinstance(op, P.SinkOp))


def _stages(operators: tuple[Operator, ...], edges: list[Edge]) -> tuple[tuple[int, ...], ...]:
    """Operators joined by forward edges, each group in plan order, groups by their first operator."""
    parent = {op.id: op.id for op in operators}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for e in edges:
        if not e.exchange:
            a, b = find(e.source), find(e.target)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for op in operators:
        groups.setdefault(find(op.id), []).append(op.id)
    return tuple(tuple(g) for g in groups.values())
