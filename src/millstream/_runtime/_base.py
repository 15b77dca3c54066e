"""The physical operator contract shared by the native executor's operators."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from millstream._clock import Clock
from millstream._plan import Node
from millstream._state import MemoryBackend, StateBackend
from millstream._time import MAX_WATERMARK, MIN_WATERMARK
from millstream.errors import CheckpointError, MillstreamError, StepError

from ._codegen import index_of

if TYPE_CHECKING:
    from ._sources import SourceOperator


class Runtime:
    """What operators share while a job runs: the clock, the keyed-state backend, the record being processed."""

    def __init__(self, clock: Clock, state: StateBackend | None = None, *, checkpointed: bool = False) -> None:
        self.clock = clock
        self.state = state if state is not None else MemoryBackend()
        #: whether checkpoints are taken: sink writers are told when they open
        self.checkpointed = checkpointed
        self.current_source: SourceOperator | None = None
        self.current_chunk: list[Any] | None = None

    def position_of(self, record: Any) -> str | None:
        """Where ``record`` came from, when it is (or derives from) the source chunk in flight."""
        src, chunk = self.current_source, self.current_chunk
        if src is None or chunk is None:
            return None
        i = index_of(record, chunk) if record is not None else None
        if i is not None:
            return src.position_of(i)
        if not chunk:
            return None
        first, last = src.position_of(0), src.position_of(len(chunk) - 1)
        if first is None:
            return f"a record derived from source {src.name!r}"
        return f"a record derived from source {src.name!r}, chunk {first} .. {last}"

    def step_error(
        self,
        node: Node,
        exc: BaseException,
        *,
        record: Any = None,
        origin: Any = None,
        key: Any = None,
        has_key: bool = False,
        event_time: int | None = None,
    ) -> BaseException:
        """The error to raise for ``exc`` in a user function of ``node``."""
        if isinstance(exc, MillstreamError):
            return exc
        return StepError(
            step=node.name,
            location=node.location,
            error=exc,
            key=key,
            has_key=has_key,
            event_time=event_time,
            position=self.position_of(origin if origin is not None else record),
            record=record,
        )


Port = tuple["Operator", int]

#: the field of an operator's snapshot saying that its state is in the on-disk state backend
#: (checkpointed by the backend's own files), so the snapshot holds only what is not
ON_DISK = "on_disk"


def check_not_on_disk(node: Node, state: Any) -> None:
    """Refuse a snapshot taken with ``node``'s state on disk when this run keeps it in memory."""
    if isinstance(state, dict) and state.get(ON_DISK):
        raise CheckpointError(
            f"step {node.name!r}: the checkpoint holds its state in the on-disk state backend (the run that "
            "took it had state='lmdb://...'), and this run keeps it in memory; resume with an on-disk "
            "state URL (a checkpoint taken in memory can be resumed on disk, not the other way round)"
        )


class Operator:
    """A physical operator: receives chunks and watermarks, emits chunks and watermarks.

    ``push(port, records, times)`` gets a chunk (``times`` None on streams without
    event time); ``watermark(port, wm)`` an input's watermark. The operator's own
    watermark is the least of its inputs'; when it advances, ``on_watermark``
    fires timers and the watermark goes downstream.
    """

    #: whether the operator takes columnar batches (micro-batch and batch modes) as well as lists
    columnar = False

    def __init__(self, node: Node, rt: Runtime, n_inputs: int) -> None:
        self.node = node
        self.name = node.name
        self.rt = rt
        self.outs: list[Port] = []
        self.in_wms = [MIN_WATERMARK] * n_inputs
        self.in_idle = [False] * n_inputs
        self.wm = MIN_WATERMARK
        self.records_in = 0
        self.records_out = 0
        self.steps: list[Node] = [node]
        #: while True, output is dropped (at-most-once recovery replays time, not output)
        self.muted = False
        #: how far behind its input's watermark the step's output watermark stays (see _hold_of)
        self.watermark_hold = _hold_of(node)

    # -- data ------------------------------------------------------------------------
    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        raise MillstreamError(f"operator {self.name!r} takes no input")

    def emit(self, records: Any, times: list[int] | None) -> None:
        """Send a chunk downstream (in the columnar modes ``records`` may be a batch)."""
        n = len(records)
        if not n or self.muted:
            return
        self.records_out += n
        for op, port in self.outs:
            op.push(port, records, times)

    # -- time ------------------------------------------------------------------------
    def watermark(self, port: int, wm: int) -> None:
        if wm > self.in_wms[port]:
            self.in_wms[port] = wm
        self.in_idle[port] = False
        self._advance()

    def idle(self, port: int) -> None:
        self.in_idle[port] = True
        self._advance()

    def _advance(self) -> None:
        active = [w for w, idle in zip(self.in_wms, self.in_idle, strict=True) if not idle]
        if not active:
            return
        new = min(active)
        if new > self.wm:
            self.wm = new
            self.on_watermark(new)
            out = new - self.watermark_hold if new < MAX_WATERMARK else new
            for op, port in self.outs:
                op.watermark(port, out)

    def on_watermark(self, wm: int) -> None:
        """Fire what the new watermark makes due."""

    def on_processing_time(self, now_ms: int) -> None:
        """Fire processing-time timers that are due."""

    def next_processing_timer(self) -> int | None:
        return None

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        """Acquire resources when the job starts."""

    def close(self) -> None:
        """Release resources when the job ends (also after a failure)."""

    def snapshot(self) -> Any:
        """The operator's state, as plain picklable Python values."""
        return None

    def restore(self, state: Any) -> None:
        """Load state taken by :meth:`snapshot` before the job starts."""

    def snapshot_time(self) -> Any:
        """The watermarks of the operator and its inputs: without them a restored step would
        take records behind the watermark for on-time ones."""
        return {"wm": self.wm, "inputs": list(self.in_wms), "idle": list(self.in_idle)}

    def restore_time(self, time: Any) -> None:
        self.wm = time["wm"]
        self.in_wms = list(time["inputs"])
        self.in_idle = list(time["idle"])

    def metrics(self) -> dict[str, int]:
        return {}


class PassThrough(Operator):
    """Forwards chunks unchanged: unions and the late side output."""

    columnar = True

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        self.emit(records, times)


def _hold_of(node: Node) -> int:
    """1 for a session window step, else 0.

    A session fires once the watermark has passed its end (``wm >= end``: an event exactly at ``end``
    still joins it), one millisecond after a time window with that end would, and its result carries
    Flink's window time ``end - 1``. Sent on at the watermark that fired it, the result would be
    behind the watermark downstream steps have seen, and late there (a tumbling window ending at
    ``end`` fires at ``end - 1``). The step's output watermark therefore stays one millisecond behind
    its input's, in every mode: a result at ``end - 1`` is never behind it.
    """
    from millstream._plan import WindowOp
    from millstream.windows import SessionWindow

    op = node.op
    return 1 if isinstance(op, WindowOp) and isinstance(op.assigner, SessionWindow) else 0
