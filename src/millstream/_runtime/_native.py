"""The native executor: record-at-a-time over the plan, stateless chains fused."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from millstream import _plan as P
from millstream._physical import compile as compile_physical
from millstream._state import KEYED_STATE
from millstream.connectors._base import DeadLetter, SinkWriter

from ._base import Operator, PassThrough, Runtime
from ._chain import ChainOperator
from ._enrich import LookupOperator, TableJoinOperator
from ._joins import make_join_operator
from ._keyed import AggregateOperator, ProcessOperator, ReduceOperator
from ._sources import DeadLetterWriter, SinkOperator, SourceOperator
from ._windows import make_window_operator

if TYPE_CHECKING:
    from millstream._checkpoint import Coordinator
    from millstream._control import JobControl


class NativeJob:
    """A compiled plan, ready to run on one worker."""

    #: the executor mode this job runs in (for messages)
    mode = "native"

    def __init__(self, plan: P.Plan, rt: Runtime) -> None:
        self.plan = plan
        self.rt = rt
        self.ops: list[Operator] = []
        self.op_of: dict[int, Operator] = {}
        self.sources: list[SourceOperator] = []
        self.sinks: list[SinkOperator] = []
        self.dead_letters: list[DeadLetterWriter] = []
        #: the physical plan at parallelism 1: which steps make one operator, and the edges between them
        self.physical = compile_physical(plan, self.mode, 1)
        for pop in self.physical.operators:
            first = pop.steps[0]
            if isinstance(first.op, P.STATELESS):
                op = self._add(self._make_chain(list(pop.steps), first.timestamped))
            elif pop.splits is not None:  # a source of several splits: read as splits, aligned
                op = self._add(self._make(split_node(pop, 0)))
            else:
                op = self._add(self._make(first))
            for node in pop.steps:
                self.op_of[node.id] = op
        for edge in self.physical.edges:
            up, op = self.op_of[edge.source], self.op_of[edge.target]
            target = self._port(up, op)
            if edge.late:
                assert hasattr(up, "late_outs")
                up.late_outs.append((target, edge.port))
            else:
                up.outs.append((target, edge.port))

    def _make_chain(self, nodes: list[P.Node], timed: bool) -> Operator:
        if any(isinstance(n.op, P.MapBatchesOp) for n in nodes):
            from ._columnar import RowsOut

            return RowsOut(nodes, self.rt, timed)
        return ChainOperator(nodes, self.rt, timed)

    def _port(self, up: Operator, op: Operator) -> Any:
        """What ``up`` pushes into to reach ``op`` (an adapter where the data has to change form)."""
        return op

    def _add(self, op: Operator) -> Operator:
        self.ops.append(op)
        return op

    def _make(self, node: P.Node) -> Operator:
        op = node.op
        ts = self._timed(node)
        if isinstance(op, P.SourceOp):
            dl = None
            if isinstance(op.connector.on_error, DeadLetter):
                dl = DeadLetterWriter(op.connector.on_error, node.name, self.rt.checkpointed)
                self.dead_letters.append(dl)
            src = SourceOperator(node, self.rt, dl)
            self.sources.append(src)
            return src
        if isinstance(op, P.SinkOp):
            sink = SinkOperator(node, self.rt)
            self.sinks.append(sink)
            return sink
        if isinstance(op, P.UnionOp | P.LateOp):
            return PassThrough(node, self.rt, len(node.inputs))
        if isinstance(op, P.AggregateOp):
            return AggregateOperator(node, self.rt, ts)
        if isinstance(op, P.ReduceOp):
            return ReduceOperator(node, self.rt, ts)
        if isinstance(op, P.ProcessOp):
            return ProcessOperator(node, self.rt, ts)
        if isinstance(op, P.WindowOp):
            return make_window_operator(node, self.rt, ts)
        if isinstance(op, P.JoinOp):
            return make_join_operator(node, self.rt)
        if isinstance(op, P.TableJoinOp):  # enrichment
            return TableJoinOperator(node, self.rt)
        if isinstance(op, P.LookupOp):  # enrichment
            return LookupOperator(node, self.rt)
        raise AssertionError(f"no native operator for {op.kind}")

    def _timed(self, node: P.Node) -> bool:
        return all(self.plan.node(i).timestamped for i in node.inputs) if node.inputs else node.timestamped

    # -- running ---------------------------------------------------------------------
    def open(self) -> None:
        # sinks first, so that sources never push into an unopened writer
        for op in reversed(self.ops):
            op.open()

    def close(self) -> None:
        errors: list[BaseException] = []
        closers = [op.close for op in self.ops] + [dl.close for dl in self.dead_letters] + [self.rt.state.close]
        for close in closers:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - close everything, report the first
                errors.append(exc)
        if errors:
            raise errors[0]

    def writers(self) -> list[tuple[str, SinkWriter, str]]:
        """Every sink writer that takes part in checkpoints, with its sink's ``delivery``:
        the sinks', then the dead-letter sinks'."""
        out: list[tuple[str, SinkWriter, str]] = []
        for sink in self.sinks:
            assert sink.writer is not None
            out.append((sink.name, sink.writer, sink.sink.delivery))
        out.extend((f"{dl.step}.dead-letter", dl.open(), dl.policy.sink.delivery) for dl in self.dead_letters)
        return out

    def step(self, max_chunk: int) -> tuple[int, bool]:
        """One round over the sources. Returns (records read, any source still active)."""
        n = 0
        active = False
        for src in self.sources:
            if src.ended:
                continue
            got = src.pump(max_chunk)
            if got > 0:
                n += got
            if not src.ended:
                active = True
        return n, active

    def fire_processing_time(self, now: int) -> None:
        for op in self.ops:
            op.on_processing_time(now)

    def next_wakeup(self) -> float | None:
        hints = [h for s in self.sources if not s.ended and s.reader is not None
                 for h in (s.reader.wait_hint(),) if h is not None]
        return min(hints) if hints else None

    def snapshot(self, checkpoint_id: int = 0, directory: str | None = None) -> dict[str, Any]:
        """Every operator's state and watermarks, and every source's position (taken between chunks).

        Keyed state is the backend's snapshot handle, under :data:`KEYED_STATE`; files it writes go to
        ``directory`` (None: inline in the handle).
        """
        snap: dict[str, Any] = {op.name: {"state": op.snapshot(), "time": op.snapshot_time()} for op in self.ops}
        snap[KEYED_STATE] = self.rt.state.snapshot(checkpoint_id, directory)
        return snap

    def restore(self, snap: dict[str, Any], directory: str | None = None,
                key_groups: Iterable[int] | None = None) -> None:
        """Load a snapshot taken by a job of this flow in any execution mode.

        A keyed step's state is in the form of the operator that took it: a native operator's, or (micro-
        batch and batch mode) a vectorised operator's, or its native twin's once the twin had taken over.
        A native operator given a vectorised operator's state takes it converted (:func:`._columnar.
        native_state`, the conversion a hand-over mid-run makes); a vectorised operator given a native
        one's becomes its native twin's stand-in (``StandInOperator.restore``). Stateless steps that
        the two modes chain differently find no entry of their own and take their watermarks from
        their inputs as the run goes."""
        handle = snap.get(KEYED_STATE)
        if handle is not None:
            self.rt.state.restore(handle, directory, key_groups)
        for op in self.ops:
            entry = snap.get(op.name)
            if entry is None:
                continue
            op.restore_time(entry["time"])
            state = entry["state"]
            if state is None:
                continue
            if not op.columnar and isinstance(op.node.op, P.WindowOp | P.AggregateOp | P.JoinOp):
                from ._columnar import is_stand_in_state, native_state

                if is_stand_in_state(state):  # taken in micro-batch or batch mode
                    state = native_state(op.node, state, entry["time"], self.rt.clock, self._timed(op.node))
            op.restore(state)


def split_node(pop: Any, worker: int) -> P.Node:
    """The source step of a split source operator as instance ``worker`` reads it: its splits."""
    first: P.Node = pop.steps[0]
    assert isinstance(first.op, P.SourceOp)
    return dataclasses.replace(first, op=dataclasses.replace(first.op, connector=pop.part(worker)))


def run_native(job: NativeJob, *, max_chunk: int, idle_sleep_s: float, on_tick: Any, tick_interval_s: float,
               coordinator: Coordinator | None = None, trigger_interval_ms: int = 0,
               control: JobControl | None = None) -> bool:
    """Run ``job`` until its inputs end (returns True) or ``control`` asks it to stop (returns False,
    at the end of a round). Checkpoints are taken between rounds, when nothing is in flight.

    A round reads up to ``max_chunk`` records per source (in micro-batch mode: one epoch). With
    ``trigger_interval_ms``, a round that read less than a full chunk is followed by a wait until
    that long after it started, so that a live input gathers into larger epochs. The stop switch
    is read once per round: a record costs nothing more.
    """
    clock = job.rt.clock
    next_tick = time.monotonic() + tick_interval_s
    has_proc_timers = any(type(op).on_processing_time is not Operator.on_processing_time for op in job.ops)
    while True:
        round_start = clock.now_ms()
        n, active = job.step(max_chunk)
        if has_proc_timers:
            job.fire_processing_time(clock.now_ms())
        if active and control is not None and control.stop_requested:
            return False  # between rounds: nothing in flight, a savepoint may be taken now
        if coordinator is not None and active and coordinator.due(clock.now_ms()):
            coordinator.checkpoint(job)
        if on_tick is not None and time.monotonic() >= next_tick:
            on_tick()
            next_tick = time.monotonic() + tick_interval_s
        if not active:
            break
        if trigger_interval_ms and 0 < n < max_chunk:
            clock.sleep(max(0, round_start + trigger_interval_ms - clock.now_ms()) / 1000)
            continue
        if n == 0:
            hint = job.next_wakeup()
            wait = idle_sleep_s if hint is None else max(0.0, min(hint, idle_sleep_s * 20))
            if has_proc_timers:
                nxt = min((t for op in job.ops for t in (op.next_processing_timer(),) if t is not None),
                          default=None)
                if nxt is not None:
                    wait = min(wait, max(0.0, (nxt - clock.now_ms()) / 1000))
            clock.sleep(wait)
    if has_proc_timers:
        job.fire_processing_time(clock.now_ms())
    return True
