"""Checkpoints across workers: aligned barriers, a part per worker, completed by worker 0.

How a checkpoint ``k`` is taken (native mode, at-least-once and exactly-once):

1. Worker 0's :class:`Checkpoints` decides it is due and sends ``("ckpt", k)`` to every worker; each
   worker, at its next round (between two chunks of its sources), **injects** the barrier: every
   source instance on it records its position (each split's) and passes the barrier downstream.
2. An operator instance's inputs are wrapped in a :class:`Gate`: an input that has passed the
   barrier is held (what comes after it waits) until every input has; then the instance is
   **aligned**: its state (and, for a process function, its keyed maps) is taken, a sink on worker 0
   pre-commits its transaction, and the barrier goes on to every output, in order with the data. An
   exchange input has the barrier once every sender has sent it (``ExchangeIn``); a sender or an
   input that has ended counts as passed.
3. When every instance on a worker is aligned, the worker writes its **part** (a pickle of its
   instances' states, its splits' positions and its keyed maps) to the checkpoint directory's
   ``shared/`` folder, ``part-<k>-w<worker>-e<owner epoch>.pkl``, written to a temporary file,
   fsynced and renamed, and tells worker 0 its size and SHA-256.
4. Worker 0 **completes** the checkpoint once every part is durable: the manifest (``chk-<k>``, via
   :class:`~millstream._checkpoint._store.CheckpointStore`) lists every part with its size and
   checksum (so a missing or damaged part makes the checkpoint unloadable, never half-loaded), then
   ``COMMITTED``, then the sinks (all on worker 0) commit what they sealed at their barriers (and what
   they sealed for an abandoned checkpoint before it, in order), then every worker's sources
   acknowledge their positions at the barrier (``("ack", k)``: Kafka offsets committed to the group,
   XACK, ...), then old checkpoints and unreferenced parts are removed.

Processing goes on while a checkpoint is taken; one checkpoint is in flight at a time. A worker
that ends before a checkpoint's barrier reaches it (its inputs ended) abandons that checkpoint; the
run's last checkpoint is then the final one worker 0 writes once every worker has ended.

**Ownership.** Only worker 0 holds the directory's lock and owner epoch (``_owner.py``). Workers
check, before writing a part, that the directory's OWNER still holds the run's token, and put the
owner epoch in the part's name: a worker of a run that lost the directory (paused, then resumed
after another run took over) may at worst leave a file nobody refers to (the new owner's garbage
collection removes it); it can never replace a part the new owner's checkpoints refer to, and
nothing it writes becomes visible, because only a manifest written by the owner (after its own
check) refers to parts.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from millstream._checkpoint._failpoints import failpoint
from millstream._checkpoint._owner import DirectoryOwner
from millstream._state._backend import write_file
from millstream._time import MAX_WATERMARK

from ._rescale import PARALLEL

if TYPE_CHECKING:
    from millstream._checkpoint import Coordinator
    from millstream._runtime._base import Operator

log = logging.getLogger("millstream.checkpoint")


class Gate:
    """The inputs of one operator instance, as checkpoint barriers see them: stands where the
    operator would in its upstreams' outputs (see the module docstring, step 2)."""

    #: the operator contract's flag: it takes what its operator takes (``into`` adapts the form)
    columnar = True

    def __init__(self, op: Operator, aligned: Callable[[Operator, int], None],
                 started: Callable[[int], None], into: Any = None) -> None:
        self.op = op
        #: where what passes goes: the operator, or an adapter that changes the data's form for it
        #: (a row operator fed columnar batches, in the micro-batch modes)
        self.into = op if into is None else into
        self.aligned = aligned
        #: called with a checkpoint's id when its barrier arrives: it may come before the message that
        #: starts the checkpoint on this worker (when every other input of the barrier has ended)
        self.started = started
        #: the input ports that get input on this worker
        self.ports: set[int] = set()
        self.passed: set[int] = set()
        self.ckpt: int | None = None
        #: the last checkpoint this instance passed (a barrier of it coming again is ignored)
        self.last = -1
        self.held: list[tuple[Any, ...]] = []

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        if port in self.passed:
            self.held.append(("d", port, records, times))
        else:
            self.into.push(port, records, times)

    def watermark(self, port: int, wm: int) -> None:
        if port in self.passed:
            self.held.append(("w", port, wm))
        else:
            self.op.watermark(port, wm)
            if self.ckpt is not None and wm >= MAX_WATERMARK:
                self.check()

    def idle(self, port: int) -> None:
        if port in self.passed:
            self.held.append(("i", port))
        else:
            self.op.idle(port)

    def barrier(self, port: int, ckpt: int) -> None:
        if ckpt <= self.last:
            return  # aligned already (its other inputs had ended)
        self.started(ckpt)
        if ckpt <= self.last:
            return
        self.passed.add(port)
        self.ckpt = ckpt
        self.check()

    def check(self) -> None:
        """Once every input has passed the barrier (or ended): aligned; then what was held goes on."""
        ckpt = self.ckpt
        if ckpt is None:
            return
        if ckpt <= self.last:
            self.ckpt = None
            return
        if not all(p in self.passed or self.op.in_wms[p] >= MAX_WATERMARK for p in self.ports):
            return
        self.ckpt = None
        self.passed = set()
        self.last = ckpt
        self.aligned(self.op, ckpt)
        held, self.held = self.held, []
        for item in held:
            if self.passed:  # the next checkpoint's barrier came among what was held
                self.held.append(item)
                continue
            kind = item[0]
            if kind == "d":
                self.into.push(item[1], item[2], item[3])
            elif kind == "w":
                self.op.watermark(item[1], item[2])
            else:
                self.op.idle(item[1])


def part_name(ckpt: int, worker: int, epoch: int) -> str:
    return f"part-{ckpt:08d}-w{worker}-e{epoch}.pkl"


class PartWriter:
    """Writes a worker's parts into the checkpoint directory, fenced by the owner's token."""

    def __init__(self, root: str, epoch: int, token: str) -> None:
        self.root = root
        self.shared = os.path.join(root, "shared")
        self.owner = DirectoryOwner(root)
        self.owner.epoch, self.owner.token = epoch, token

    def write(self, ckpt: int, worker: int, part: dict[str, Any]) -> dict[str, Any]:
        """Write ``part`` durably; its name, size and SHA-256."""
        self.owner.check()  # a run that lost the directory writes nothing more
        data = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
        os.makedirs(self.shared, exist_ok=True)
        name = part_name(ckpt, worker, self.owner.epoch)
        info = write_file(self.shared, name, data)
        return {"name": name, **info}


class Checkpoints:
    """Worker 0's side: starts checkpoints, gathers the workers' parts, completes them.

    The store, the directory's ownership, recovery's history checks and the figures are the
    :class:`~millstream._checkpoint.Coordinator`'s; this class only adds what several workers need.
    """

    def __init__(self, coordinator: Coordinator, n: int, send: Callable[[int, tuple[Any, ...]], None],
                 inject: Callable[[int], None], writers: Callable[[], list[Any]],
                 acknowledge: Callable[[int | None], None], sealed: list[tuple[int, str, Any]]) -> None:
        self.co = coordinator
        self.n = n
        self.send = send
        self.inject = inject
        self.writers = writers
        self.acknowledge = acknowledge
        #: the sinks' sealed transactions (worker 0's job appends them at its sinks' barriers)
        self.sealed = sealed
        self.inflight: int | None = None
        self.parts: dict[int, dict[str, Any]] = {}
        self.txns: dict[str, list[Any]] = {}
        self.started = 0.0
        #: no more checkpoints: a worker has ended
        self.closed = False

    def due(self, now_ms: int) -> bool:
        return self.inflight is None and not self.closed and self.co.due(now_ms)

    def start(self) -> None:
        """Send checkpoint ``k``'s barrier to every worker, and inject it here."""
        k = self.co.next_id
        self.co.next_id += 1
        self.inflight, self.parts, self.txns, self.started = k, {}, {}, time.perf_counter()
        for w in range(1, self.n):
            self.send(w, ("ckpt", k))
        self.inject(k)

    def part(self, worker: int, ckpt: int, info: dict[str, Any]) -> None:
        """Worker ``worker``'s part of checkpoint ``ckpt`` is durable."""
        if ckpt != self.inflight:
            return  # an abandoned checkpoint
        self.parts[worker] = info
        if len(self.parts) == self.n:
            self._complete(ckpt)

    def abandon(self) -> None:
        """A worker ended: the checkpoint in flight cannot complete, and no other starts."""
        if self.inflight is not None:
            log.info("checkpoint %d abandoned: a worker ended before its barrier reached it", self.inflight)
        self.inflight = None
        self.closed = True

    def _take_sealed(self, upto: int) -> dict[str, list[Any]]:
        """The transactions sealed up to checkpoint ``upto`` (those of abandoned checkpoints first), per
        writer, in order; taken off the list."""
        out: dict[str, list[Any]] = {}
        keep = []
        for ckpt, name, txn in self.sealed:
            if ckpt <= upto:
                out.setdefault(name, []).append(txn)
            else:
                keep.append((ckpt, name, txn))
        self.sealed[:] = keep
        return out

    def _complete(self, ckpt: int) -> None:
        co, store = self.co, self.co.store
        parts = {w: self.parts[w]["name"] for w in range(self.n)}
        shared = {p["name"]: {"size": p["size"], "sha256": p["sha256"]} for p in self.parts.values()}
        self.txns = self._take_sealed(ckpt)
        state = {PARALLEL: {"parallelism": self.n, "parts": parts}, "txns": self.txns, "read": {}}
        size = store.write(ckpt, state, finished=False, meta={"guarantee": co.guarantee, "parallelism": self.n},
                           shared=shared)
        size += sum(p["size"] for p in self.parts.values())
        self._commit(ckpt, self.txns)
        failpoint("source.acknowledge")
        self.acknowledge(ckpt)
        store.gc()
        self._record(ckpt, size, finished=False)
        self.inflight = None

    def finish(self) -> None:
        """The final checkpoint, once every worker has ended: the sinks' last output, nothing to restore."""
        co, store = self.co, self.co.store
        ckpt = co.next_id
        co.next_id += 1
        t0 = time.perf_counter()
        self.started = t0
        self.sealed.extend((ckpt, name, writer.pre_commit(ckpt)) for name, writer, _ in self.writers())
        txns = self._take_sealed(ckpt)
        state = {PARALLEL: {"parallelism": self.n, "parts": {}}, "txns": txns, "read": {}}
        size = store.write(ckpt, state, finished=True, meta={"guarantee": co.guarantee, "parallelism": self.n})
        self._commit(ckpt, txns)
        failpoint("source.acknowledge")
        self.acknowledge(None)
        store.gc()
        self._record(ckpt, size, finished=True)

    def _commit(self, ckpt: int, txns: dict[str, list[Any]]) -> None:
        store = self.co.store
        store.write_committed(ckpt)  # before any output of it is visible: a rewind is detected
        for name, writer, _ in self.writers():
            for txn in txns.get(name, ()):
                store.check_owner()  # a run another took over commits nothing
                writer.commit(txn)

    def _record(self, ckpt: int, size: int, *, finished: bool) -> None:
        co = self.co
        ms = (time.perf_counter() - self.started) * 1000
        co.stats.record(ckpt, ms, size, finished=finished, parallelism=self.n)
        co.next_due = co.clock.now_ms() + co.interval_ms
        log.debug("checkpoint %d of %d workers: %d bytes in %.1f ms", ckpt, self.n, size, ms)
