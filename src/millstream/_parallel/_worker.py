"""One worker: its operator instances of the physical plan, wired to the exchange, and its loop.

Worker 0 runs in the calling process (it writes the sinks, and reads the sources that cannot split,
where the physical plan puts them); workers 1 .. N-1 run :func:`serve` — in processes of their own
(:func:`worker_main`, over pipes) or in Ray actors (``._ray``, over actor calls). Each worker opens
its own part of every split source.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from millstream import _plan as P
from millstream._checkpoint._failpoints import failpoint
from millstream._clock import SystemClock
from millstream._physical import PhysicalPlan
from millstream._runtime._base import Operator, Runtime
from millstream._runtime._native import NativeJob, split_node
from millstream._runtime._sources import SinkOperator, SourceOperator
from millstream._state import open_backend
from millstream._time import MAX_WATERMARK, MIN_WATERMARK
from millstream.errors import MillstreamError

from ._checkpoints import PAUSE, RESUME, Checkpoints, Gate, PartWriter, resume_past, source_positions
from ._exchange import Exchange, ExchangeIn, ExchangeOut, PipeTransport


class WorkerJob(NativeJob):
    """The instances of worker ``worker`` of a physical plan (native mode), wired as the plan says:
    ``forward`` edges within the process, ``hash`` and ``global`` edges through the exchange.

    With ``checkpointed``, every instance's inputs go through a :class:`~._checkpoints.Gate` (aligned
    barriers), and :meth:`inject` starts this worker's part of a checkpoint; ``on_part(ckpt, part)``
    is called once every instance here has passed its barrier."""

    def __init__(self, physical: PhysicalPlan, worker: int, rt: Runtime, ex: Exchange, *,
                 checkpointed: bool = False,
                 on_part: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        # NativeJob's constructor compiles the plan at parallelism 1; this one takes the given physical plan
        self.plan = physical.plan
        self.mode = physical.mode
        self.rt = rt
        self.ops = []
        self.op_of = {}
        self.sources = []
        self.sinks = []
        self.dead_letters = []
        self.physical = physical
        self.worker = worker
        self.on_part = on_part
        #: the part of the checkpoint in flight, and the instances that have not passed its barrier yet
        self.part: dict[str, Any] | None = None
        self.unaligned: set[int] = set()
        #: the newest checkpoint started here
        self.started = 0
        #: transactions its sinks sealed at barriers, in order: ``(checkpoint, writer, transaction)``; a
        #: checkpoint abandoned after a sink sealed its part commits it with the next one (worker 0)
        self.sealed: list[tuple[int, str, Any]] = []
        #: its sources' positions at each checkpoint's barrier, acknowledged once that checkpoint is complete
        self.positions: dict[int, dict[str, Any]] = {}
        #: at-most-once: the sources record their read positions before each chunk (:meth:`record_reads`),
        #: and acknowledge what they read then, not at checkpoints
        self.at_most_once = False
        #: at-most-once, resumed past what an earlier run read: the checkpoint whose barrier unmutes each
        #: operator (:func:`~._checkpoints.resume_past`)
        self.resume_at: int | None = None
        self.gates: dict[int, Gate] = {}
        for pop in physical.operators:
            if worker >= pop.parallelism:
                continue  # no instance of it here
            first = pop.steps[0]
            if isinstance(first.op, P.STATELESS):
                op = self._add(self._make_chain(list(pop.steps), first.timestamped))
            elif pop.splits is not None:  # a split source: this worker reads its range of splits
                op = self._add(self._make(split_node(pop, worker)))
            else:
                op = self._add(self._make(first))
            for node in pop.steps:
                self.op_of[node.id] = op
            if checkpointed and op not in self.sources:
                self.gates[id(op)] = Gate(op, self.aligned, self.start, self._port(op, op))

        def into(down: Operator, port: int) -> Any:
            gate = self.gates.get(id(down))
            if gate is None:
                return self._port(down, down)  # the operator, or an adapter that turns batches into rows
            gate.ports.add(port)
            return gate

        for index, edge in enumerate(physical.edges):
            up, down = self.op_of.get(edge.source), self.op_of.get(edge.target)
            if edge.exchange:
                if up is not None:
                    self._outs(up, edge.late).append((ExchangeOut(physical, index, edge, ex, rt), edge.port))
                if down is not None:
                    senders = range(physical.operator(edge.source).parallelism)
                    ex.ins[index] = ExchangeIn(into(down, edge.port), edge.port, senders)
            elif down is not None:
                if up is None:
                    # an input with no instance on this worker (a stream read on worker 0 only, joined
                    # with one that runs everywhere): it is empty, and has ended
                    down.in_wms[edge.port] = MAX_WATERMARK
                else:
                    self._outs(up, edge.late).append((into(down, edge.port), edge.port))

    @staticmethod
    def _outs(up: Operator, late: bool) -> list[Any]:
        if late:
            assert hasattr(up, "late_outs")
            return up.late_outs  # type: ignore[no-any-return]
        return up.outs

    # -- checkpoints ------------------------------------------------------------------
    def restore(self, snap: dict[str, Any], directory: str | None = None,
                key_groups: Iterable[int] | None = None) -> None:
        """Restore as one process does, then tell every output the watermark each instance had reached:
        the exchanges of this run start from nothing, and an instance whose watermark does not move after
        the restore (one that had ended, say) would otherwise hold its receivers back for good.

        Under at-most-once (``snap`` holds :data:`~._checkpoints.RESUME`), the sources then go on past what
        any worker had read, with the operators muted up to the first checkpoint of this run."""
        snap = dict(snap)
        resume = snap.pop(RESUME, None)
        super().restore(snap, directory, key_groups)
        for op in self.ops:
            if op.wm > MIN_WATERMARK:
                out = op.wm - op.watermark_hold if op.wm < MAX_WATERMARK else op.wm
                for target, port in list(op.outs):
                    target.watermark(port, out)
        if resume is not None:
            resume_past(self, resume["positions"])
            self.resume_at = resume["checkpoint"]

    def record_reads(self, parts: PartWriter) -> None:
        """At-most-once: record this worker's read positions now, and from now on before every chunk its
        sources read is processed (then acknowledge them: nothing read is read again)."""
        self.at_most_once = True

        def record() -> None:
            positions = source_positions(self.sources)
            parts.record(self.worker, positions)
            failpoint("source.acknowledge")
            for src in self.sources:
                if src.reader is not None and src.name in positions:
                    src.reader.acknowledge(positions[src.name]["position"])

        record()
        for src in self.sources:
            src.on_read = record

    def start(self, ckpt: int) -> None:
        """Start this worker's part of checkpoint ``ckpt`` unless it has started (see :meth:`inject`)."""
        if ckpt > self.started:
            self.inject(ckpt)

    def inject(self, ckpt: int) -> None:
        """Start this worker's part of checkpoint ``ckpt`` (between rounds, or when its barrier first
        arrives here): every source passes the barrier now, and so does every instance that gets no
        input here."""
        self.started = ckpt
        self.part = {"job": {}, "maps": {}, "worker": self.worker}
        self.unaligned = {id(op) for op in self.ops}
        for src in self.sources:
            self.aligned(src, ckpt)
        for gate in list(self.gates.values()):
            if gate.last >= ckpt:
                continue  # aligned already: the sources' barrier reached it, its other inputs had ended
            if not gate.ports:
                gate.last = ckpt
                self.aligned(gate.op, ckpt)
            else:
                gate.ckpt = ckpt
                gate.check()  # every input may have ended

    def aligned(self, op: Operator, ckpt: int) -> None:
        """``op`` has passed checkpoint ``ckpt``'s barrier on every input: take its state, pre-commit
        what it writes, and pass the barrier on."""
        part = self.part
        assert part is not None
        # pickled now: the operator goes on (on what came after the barrier) before the part is written
        part["job"][op.name] = pickle.dumps({"state": op.snapshot(), "time": op.snapshot_time()},
                                            protocol=pickle.HIGHEST_PROTOCOL)
        maps = getattr(self.rt.state, "maps", None)
        if maps:
            prefix = op.name + "/"
            mine = {mid: m for mid, m in maps.items() if mid.startswith(prefix)}
            if mine:  # a copy as of now: the operator goes on changing them
                part["maps"].update(pickle.loads(pickle.dumps(mine, protocol=pickle.HIGHEST_PROTOCOL)))  # noqa: S301
        if op in self.sources and isinstance(op, SourceOperator) and op.reader is not None:
            self.positions.setdefault(ckpt, {})[op.name] = op.reader.snapshot()
        if self.resume_at is not None and ckpt >= self.resume_at:
            op.muted = False  # at-most-once: what reaches it from here on was never processed before
        if isinstance(op, SinkOperator):
            assert op.writer is not None
            self.sealed.append((ckpt, op.name, op.writer.pre_commit(ckpt)))
        for dl in self.dead_letters:
            if dl.step == op.name:
                self.sealed.append((ckpt, f"{dl.step}.dead-letter", dl.open().pre_commit(ckpt)))
        for target, port in [*op.outs, *getattr(op, "late_outs", ())]:
            target.barrier(port, ckpt)
        self.unaligned.discard(id(op))
        if not self.unaligned:
            self.part = None
            assert self.on_part is not None
            self.on_part(ckpt, part)

    def acknowledge(self, ckpt: int | None) -> None:
        """Checkpoint ``ckpt`` is complete: tell each source here that everything up to its position at that
        barrier is safe (commit offsets, XACK, ack). ``None``: the final checkpoint, written once every
        worker had ended: everything read is safe."""
        if ckpt is None:
            for src in self.sources:
                if src.reader is not None:
                    src.reader.acknowledge(src.reader.snapshot())
            return
        done = [k for k in self.positions if k <= ckpt]
        if not done:
            return
        positions = self.positions[max(done)]
        for k in done:
            del self.positions[k]
        if self.at_most_once:
            return  # acknowledged as read (record_reads): a checkpoint's positions are older
        for src in self.sources:
            if src.reader is not None and src.name in positions:
                src.reader.acknowledge(positions[src.name])

    def figures(self) -> list[tuple[str, int, int, dict[str, int]]]:
        """Each operator's counts, for worker 0 to add up."""
        return [(op.name, op.records_in, op.records_out, op.metrics()) for op in self.ops]


def worker_job(physical: PhysicalPlan, worker: int, rt: Runtime, ex: Exchange, *, checkpointed: bool = False,
               on_part: Callable[[int, dict[str, Any]], None] | None = None) -> WorkerJob:
    """Worker ``worker``'s job of ``physical``: its operators as the plan's mode makes them (per record in
    native mode; vectorised where the plan allows in the micro-batch and batch modes)."""
    cls = WorkerJob if physical.mode == "native" else _columnar_worker_job()
    return cls(physical, worker, rt, ex, checkpointed=checkpointed, on_part=on_part)


def _columnar_worker_job() -> type[WorkerJob]:
    """:class:`WorkerJob` with the micro-batch executor's operators (imported here: they load polars,
    which a native job never needs)."""
    global _COLUMNAR
    if _COLUMNAR is None:
        from millstream._runtime._microbatch import MicroBatchJob

        class ColumnarWorkerJob(WorkerJob, MicroBatchJob):
            """A worker of a micro-batch or batch job: the micro-batch operators (``_make``, ``_make_chain``,
            ``_port``, ``open``) wired as :class:`WorkerJob` wires them."""

        _COLUMNAR = ColumnarWorkerJob
    return _COLUMNAR


_COLUMNAR: type[WorkerJob] | None = None


def run_worker(job: WorkerJob, ex: Exchange, *, max_chunk: int, idle_sleep_s: float,
               stop: Callable[[], bool] | None = None, tick: Callable[[], None] | None = None,
               checkpoints: Checkpoints | None = None, trigger_interval_ms: int = 0) -> bool:
    """Run until this worker's sources and every exchange into it have ended (True), or ``stop()``
    (False). A round takes what has arrived, starts a checkpoint when one is due (worker 0:
    ``checkpoints``) or asked for (the others: a ``ckpt`` message), reads a chunk from each source
    (in micro-batch mode: this worker's epoch), fires processing-time timers and sends what it made.
    With ``trigger_interval_ms`` (micro-batch mode), a round that read less than a full chunk is
    followed by that long after it started, taking in what arrives meanwhile, so that a live input
    gathers into larger epochs (as in one process).

    A worker other than 0 told to pause (``("ckpt", PAUSE)``: a savepoint follows) reads its sources
    no more and fires no processing-time timer: it takes in, processes and passes on what reaches it,
    and takes its part of checkpoints, until it is stopped."""
    clock = job.rt.clock
    has_proc = any(type(op).on_processing_time is not Operator.on_processing_time for op in job.ops)
    sources_ended = not job.sources
    paused = False
    while True:
        round_start = clock.now_ms()
        got = ex.receive(0.0)
        if checkpoints is not None:
            if checkpoints.due(clock.now_ms()):
                checkpoints.start()
        elif ex.me != 0:
            while ex.control:
                msg = ex.control.popleft()
                if msg[0] == "ckpt" and msg[1] == PAUSE:
                    paused = True
                    ex.put(0, ("part", ex.me, PAUSE, None))
                elif msg[0] == "ckpt":
                    job.start(msg[1])
                elif msg[0] == "ack":
                    job.acknowledge(msg[1])
        n = 0
        if not sources_ended and not paused:
            n, active = job.step(max_chunk)
            sources_ended = not active
        if has_proc and not paused:
            job.fire_processing_time(clock.now_ms())
        ex.flush()
        if tick is not None:
            tick()
        if sources_ended and ex.inputs_ended:
            break
        if stop is not None and stop():
            return False
        ex.check()
        if paused:
            if got == 0:
                ex.receive(0.01)
            continue
        if trigger_interval_ms and 0 < n < max_chunk:
            deadline = round_start + trigger_interval_ms
            while (left := deadline - clock.now_ms()) > 0:
                ex.receive(left / 1000)
            continue
        if n <= 0 and got == 0:
            wait = idle_sleep_s if not sources_ended else 0.05
            if not sources_ended:
                hint = job.next_wakeup()
                wait = idle_sleep_s if hint is None else max(0.0, min(hint, idle_sleep_s * 20))
            if has_proc:
                nxt = min((t for op in job.ops for t in (op.next_processing_timer(),) if t is not None), default=None)
                if nxt is not None:
                    wait = min(wait, max(0.0, (nxt - clock.now_ms()) / 1000))
            ex.receive(wait)
    if has_proc:
        job.fire_processing_time(clock.now_ms())
    ex.flush()
    return True


def worker_main(worker: int, n: int, payload: bytes, readers: dict[int, Connection],
                writers: dict[int, Connection], max_chunk: int, idle_sleep_s: float, state: str,
                others: list[Connection], ckpt: dict[str, Any] | None = None, restore: bytes | None = None,
                trigger_interval_ms: int = 0) -> None:
    """The body of worker process ``worker`` (1 .. N-1). ``others``: pipe ends that are not this
    worker's, inherited when it was forked from the job's process: closed at once, so that a pipe
    ends when the one worker writing it does. ``ckpt``: where and as which owner it writes its parts
    of checkpoints (None: no checkpoints); ``restore``: the state it starts from (pickled)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the job's process's to handle: it stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked from the job's process: not its handler
    for conn in others:
        conn.close()
    # the forkserver this worker was forked from: it ends when the job's process does, and then the
    # worker is re-parented (nobody would read what it makes)
    ex = Exchange(worker, PipeTransport(worker, readers, writers), n, parent_pid=os.getppid())
    ex.start()
    try:
        serve(worker, ex, payload, max_chunk=max_chunk, idle_sleep_s=idle_sleep_s, state=state, ckpt=ckpt,
              restore=restore, trigger_interval_ms=trigger_interval_ms)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - everything a worker meets goes to worker 0
        report_failure(worker, ex, exc)
        ex.close(5)
        sys.stdout.flush()
        os._exit(1)
    ex.close(30)


def serve(worker: int, ex: Exchange, payload: bytes, *, max_chunk: int, idle_sleep_s: float, state: str,
          ckpt: dict[str, Any] | None, restore: bytes | None, trigger_interval_ms: int) -> None:
    """Worker ``worker`` (1 .. N-1) from the pickled physical plan to its end, over ``ex`` (a started
    exchange, whatever its transport: a worker process's pipes, a Ray actor's calls): build its
    instances, restore them, run them, report its figures to worker 0 and, with checkpoints, wait for
    the final one before acknowledging what its sources read. Raises what fails it."""
    physical = pickle.loads(payload)  # noqa: S301 - the plan this job's process sent
    rt = Runtime(SystemClock(), open_backend(state), checkpointed=ckpt is not None)
    parts = PartWriter(**ckpt) if ckpt is not None else None

    def on_part(ckpt_id: int, part: dict[str, Any]) -> None:
        assert parts is not None
        ex.put(0, ("part", worker, ckpt_id, parts.write(ckpt_id, worker, part)))

    job = worker_job(physical, worker, rt, ex, checkpointed=ckpt is not None, on_part=on_part)
    failed = True
    try:
        job.open()
        if restore is not None:
            job.restore(pickle.loads(restore))  # noqa: S301 - made by the job's process
        if parts is not None and parts.at_most_once:
            job.record_reads(parts)
        if job.resume_at is not None:  # at-most-once, resumed: the first checkpoint unmutes the operators
            job.start(job.resume_at)
        run_worker(job, ex, max_chunk=max_chunk, idle_sleep_s=idle_sleep_s,
                   trigger_interval_ms=trigger_interval_ms)
        failed = False
        if ckpt is not None:  # the final checkpoint: acknowledged once worker 0 has written it
            ex.put(0, ("done", worker, _figures(job)))
            _await_final(job, ex)
    finally:
        if parts is not None:
            parts.close()
        try:
            job.close()
        except Exception:
            if not failed:
                raise
    if ckpt is None:
        ex.put(0, ("done", worker, _figures(job)))


def report_failure(worker: int, ex: Exchange, exc: BaseException) -> None:
    """Tell worker 0 why this worker failed (its step, and the error or its traceback), if it can within
    a few seconds: worker 0 may be gone, and a worker that dies unheard is reported by how it ended."""
    step = getattr(exc, "step", None)
    text = str(exc) if isinstance(exc, MillstreamError) else "".join(traceback.format_exception(exc)).rstrip()
    try:
        ex.put_last(0, ("error", worker, step, text), timeout=5)
    except Exception:  # noqa: BLE001,S110 - worker 0 may be gone; how the worker ended still tells
        pass


def _figures(job: WorkerJob) -> dict[str, Any]:
    return {"steps": job.figures(), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _await_final(job: WorkerJob, ex: Exchange) -> None:
    """Wait for worker 0's word that the final checkpoint is written (``("ack", None)``), then acknowledge
    everything this worker's sources read. Worker 0 stops this worker if it fails first; a worker whose
    job process is gone exits (``ex.check``)."""
    while True:
        ex.receive(0.05)
        while ex.control:
            msg = ex.control.popleft()
            if msg[0] == "ack":
                job.acknowledge(msg[1])
                if msg[1] is None:
                    return
        ex.check()
