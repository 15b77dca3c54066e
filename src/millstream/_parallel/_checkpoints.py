"""Checkpoints across workers: aligned barriers, a part per worker, completed by worker 0.

How a checkpoint ``k`` is taken (every mode and guarantee):

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

**Savepoints.** A stop with a savepoint (``._runner._take_savepoint``) first tells every worker to stop
reading its sources (:data:`PAUSE`, answered once it has), lets the checkpoint in flight complete, then
takes a checkpoint that commits what was made before the stop, then the savepoint: a checkpoint as
above whose manifest says ``savepoint`` (with the flow's shape, as one process's), taken with nothing
made since, so its sinks' transactions are empty and a run from it may write to a new output.

**At-most-once.** Each worker records its sources' read positions before every chunk is processed, in
a file of its own (see "read positions on every worker" below); a resume goes on past what any worker
had read, muted up to the watermarks reached before (:func:`resume_past`).

**Ownership.** Only worker 0 holds the directory's lock and owner epoch (``_owner.py``). Workers
check, before writing a part, that the directory's OWNER still holds the run's token, and put the
owner epoch in the part's name: a worker of a run that lost the directory (paused, then resumed
after another run took over) may at worst leave a file nobody refers to (the new owner's garbage
collection removes it); it can never replace a part the new owner's checkpoints refer to, and
nothing it writes becomes visible, because only a manifest written by the owner (after its own
check) refers to parts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from millstream._checkpoint._failpoints import failpoint
from millstream._checkpoint._owner import DirectoryOwner
from millstream._checkpoint._store import POSITIONS, CheckpointStore
from millstream._state._backend import write_file
from millstream._time import MAX_WATERMARK

from ._rescale import PARALLEL

if TYPE_CHECKING:
    from millstream._checkpoint import Coordinator
    from millstream._runtime._base import Operator

log = logging.getLogger("millstream.checkpoint")

#: a savepoint's pause, sent as checkpoint 0 (checkpoint ids start at 1, and the exchange's control
#: messages are checkpoints, parts, acknowledgements, ends and failures): ``("ckpt", PAUSE)`` tells a
#: worker to stop reading its sources; it answers ``("part", worker, PAUSE, None)`` once it has
PAUSE = 0
#: the key of a worker's restore snapshot that says how it resumes under at-most-once: the merged read
#: positions (:func:`read_all_positions`) and the checkpoint whose barrier ends its muting
RESUME = "at-most-once resume"


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
    """Writes a worker's files into the checkpoint directory, fenced by the owner's token: its parts
    of checkpoints, and under at-most-once its read positions (:meth:`record`)."""

    def __init__(self, root: str, epoch: int, token: str, *, scope: str = "", job: str = "",
                 key: str | bytes | None = None, at_most_once: bool = False) -> None:
        self.root = root
        self.shared = os.path.join(root, "shared")
        self.owner = DirectoryOwner(root)
        self.owner.epoch, self.owner.token, self.owner.scope = epoch, token, scope
        self.job, self.key = job, key
        #: sources record their read positions before every chunk (:meth:`record`)
        self.at_most_once = at_most_once
        self._positions: CheckpointStore | None = None

    def write(self, ckpt: int, worker: int, part: dict[str, Any]) -> dict[str, Any]:
        """Write ``part`` durably; its name, size and SHA-256."""
        self.owner.check()  # a run that lost the directory writes nothing more
        data = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
        os.makedirs(self.shared, exist_ok=True)
        name = part_name(ckpt, worker, self.owner.epoch)
        info = write_file(self.shared, name, data)
        return {"name": name, **info}

    def record(self, worker: int, positions: dict[str, Any]) -> None:
        """At-most-once: worker ``worker``'s sources' read positions (:func:`source_positions`), durable
        before what they read is processed (checksummed, signed with the checkpoint key, fenced: the
        store's positions record, in a file of this worker and this run's owner epoch)."""
        if self._positions is None:
            self._positions = CheckpointStore(self.root, job=self.job, key=self.key, owner=self.owner)
        self._positions.write_positions(positions, positions_name(self.owner.epoch, worker))

    def close(self) -> None:
        if self._positions is not None:
            self._positions.close()


# -- at-most-once: read positions on every worker -----------------------------------------------------
#
# Under at-most-once every worker records its sources' read positions before each chunk is processed,
# in a file of its own, ``positions-e<owner epoch>-w<worker>.pkl`` (one worker reads a split, so each
# split is in one file of a run). A resume merges every such file in the directory, older runs first
# (``positions-e<epoch>-base.pkl``, the merge a run started from, before its workers' files): per split
# the newest run's entry wins, so a split's position follows it to whichever worker reads it after a
# rescale. The merge is written as the new run's base before its workers start, and the files of older
# runs are removed after.

_POSITIONS_FILE = re.compile(r"positions-e(\d+)-(w\d+|base)\.pkl")


def positions_name(epoch: int, worker: int | None) -> str:
    """A worker's positions file in a run of owner epoch ``epoch`` (None: the run's base, the merge it started from)."""
    return f"positions-e{epoch}-{'base' if worker is None else f'w{worker}'}.pkl"


def source_positions(sources: list[Any]) -> dict[str, Any]:
    """What a worker records of its sources: per source step, its position and event times, and the
    watermark it reaches once the chunk in hand is processed, per split for a split source (a rescale
    gives each split to another worker, with its watermark)."""
    from millstream.connectors._base import SplitSetReader

    out: dict[str, Any] = {}
    for src in sources:
        reader = src.reader
        if reader is None:
            continue
        position, wm = reader.snapshot(), src.next_watermark()
        # an idle instance holds no receiver back (they leave it out): its splits' watermark is no bound
        gen = getattr(src, "gen", None)
        idle = gen is not None and gen.idle
        wm_of = dict.fromkeys(position, None if idle else wm) if isinstance(reader, SplitSetReader) else None
        out[src.name] = {"position": position, "wm": wm, "wm_of": wm_of, "max_ts": src.time_state()}
    return out


def _least_busy(wm_of: dict[Any, int | None], default: int) -> int:
    """The least watermark of the splits that were not idle (``default`` when every one was)."""
    return min((wm for wm in wm_of.values() if wm is not None), default=default)


def merge_positions(into: dict[str, Any], newer: dict[str, Any]) -> None:
    """Merge ``newer`` (a later file's positions) into ``into``: split by split for a split source, whole
    otherwise; event times: the highest of each split's."""
    for name, entry in newer.items():
        have = into.get(name)
        if entry["wm_of"] is None or have is None or have["wm_of"] is None:
            into[name] = have = {**entry, "position": _copy(entry["position"]), "wm_of": _copy(entry["wm_of"])}
        else:
            have["position"].update(entry["position"])
            have["wm_of"].update(entry["wm_of"])
            have["max_ts"] = _later_times(have["max_ts"], entry["max_ts"])
        if have["wm_of"] is not None:  # the source's: the least of its busy splits' (idle splits hold nothing)
            have["wm"] = _least_busy(have["wm_of"], have["wm"])


def _copy(d: Any) -> Any:
    return dict(d) if isinstance(d, dict) else d


def _later_times(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return b if a is None else a
    splits = dict(a["splits"])
    for split, t in b["splits"].items():
        if t is not None and (splits.get(split) is None or t > splits[split]):
            splits[split] = t
    singles = [t for t in (a["max_ts"], b["max_ts"]) if t is not None]
    return {"max_ts": min(singles) if singles else None, "splits": splits}


def read_all_positions(store: CheckpointStore, *, workers_only: bool = False
                       ) -> tuple[dict[str, Any], list[str]] | None:
    """Every run's recorded positions in the directory, merged (see above), and the files read; None when
    there are none (``workers_only``: when no worker's file is there). A one process's ``positions.pkl``
    counts as a run's too, by the owner epoch it was written under (0 when it says none: the oldest).
    :class:`~millstream.errors.CheckpointError` when one is damaged."""
    found = []
    for name in os.listdir(store.root):
        m = _POSITIONS_FILE.fullmatch(name)
        if m is not None:
            found.append(((int(m[1]), m[2] != "base"), name))
    if not found and workers_only:
        return None
    entries = []
    for (epoch, worker), name in found:
        got = store.read_positions_of(name)
        if got is not None:
            entries.append(((epoch, worker), got[1]))
    one = store.read_positions_of(POSITIONS)
    if one is not None:
        entries.append(((one[0], True), {name: _of_one_process(e) for name, e in one[1].items()}))
    if not entries:
        return None
    merged: dict[str, Any] = {}
    for _, positions in sorted(entries, key=lambda e: e[0]):
        merge_positions(merged, positions)
    return merged, [name for _, name in found]


def _of_one_process(entry: dict[str, Any]) -> dict[str, Any]:
    """A source's entry of one process's positions file as a worker's (split by split when its
    position is a split set's)."""
    position, wm = entry["position"], entry["wm"]
    split = isinstance(position, dict) and bool(position) and all(
        isinstance(j, int) and isinstance(p, dict) and "at" in p for j, p in position.items())
    return {"position": position, "wm": wm, "wm_of": dict.fromkeys(position, wm) if split else None,
            "max_ts": entry["max_ts"]}


def start_positions(store: CheckpointStore, epoch: int, merged: dict[str, Any], files: list[str]) -> None:
    """Write ``merged`` as this run's base (durable), then remove the files of older runs it holds."""
    base = store.sibling()  # the run's own store counts the one process's positions writes: not these
    base.write_positions(merged, positions_name(epoch, None))
    base.close()
    for name in files:
        m = _POSITIONS_FILE.fullmatch(name)
        if m is not None and int(m[1]) < epoch:
            store.check_owner()
            with contextlib.suppress(OSError):
                os.remove(os.path.join(store.root, name))


def resume_past(job: Any, positions: dict[str, Any]) -> None:
    """At-most-once, on a worker after its restore: each source goes on after what any worker of an
    earlier run had read of its splits (read positions, event times), and its watermark moves to the one
    recorded, with every other operator here muted (what it fires up to there fired before, or was lost).
    The operators stay muted until the first checkpoint's barrier passes them (:class:`WorkerJob`): the
    watermarks that reach them from other workers first fire nothing either."""
    from millstream.connectors._base import SplitSetReader

    for op in job.ops:
        if op not in job.sources:
            op.muted = True
    for src in job.sources:
        p = positions.get(src.name)
        if p is None or src.reader is None:
            continue
        if p["wm_of"] is None:
            if isinstance(src.reader, SplitSetReader):
                continue  # recorded as one split: left as restored
            src.reader.restore(p["position"])
            wm = p["wm"]
        else:
            if not isinstance(src.reader, SplitSetReader):
                continue
            mine = {j: pos for j, pos in p["position"].items() if j in src.reader.readers}
            if not mine:
                continue
            src.reader.restore(mine)
            # its splits' least, those that were idle left out; all idle: the source's (what its receivers
            # had reached, over the other instances): records of those splits behind it are late now
            wm = _least_busy({j: p["wm_of"][j] for j in mine}, p["wm"])
        src.restore_time_state(p["max_ts"], merge=True)
        if wm > src.wm:
            src._send_watermark(wm)


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
        #: the checkpoint in flight is a savepoint (:meth:`start`), and the last savepoint completed
        self.savepoint = False
        self.last_savepoint: int | None = None

    def due(self, now_ms: int) -> bool:
        return self.inflight is None and not self.closed and self.co.due(now_ms)

    def start(self, *, savepoint: bool = False) -> None:
        """Send checkpoint ``k``'s barrier to every worker, and inject it here. ``savepoint``: its manifest
        says it is one (taken by :func:`~._runner.take_savepoint` once the sources have stopped reading)."""
        k = self.co.next_id
        self.co.next_id += 1
        self.inflight, self.parts, self.txns, self.started = k, {}, {}, time.perf_counter()
        self.savepoint = savepoint
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
        self.inflight, self.savepoint = None, False
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
        meta: dict[str, Any] = {"guarantee": co.guarantee, "parallelism": self.n}
        if self.savepoint:
            meta.update(savepoint=True, shape=co.shape)
        size = store.write(ckpt, state, finished=False, meta=meta, shared=shared)
        size += sum(p["size"] for p in self.parts.values())
        self._commit(ckpt, self.txns)
        failpoint("source.acknowledge")
        self.acknowledge(ckpt)
        store.gc()
        self._record(ckpt, size, finished=False)
        if self.savepoint:
            self.last_savepoint = ckpt
        self.inflight, self.savepoint = None, False

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
        co.stats.record(ckpt, ms, size, finished=finished, parallelism=self.n,
                        **({"savepoint": True} if self.savepoint else {}))
        co.next_due = co.clock.now_ms() + co.interval_ms
        log.debug("checkpoint %d of %d workers: %d bytes in %.1f ms", ckpt, self.n, size, ms)
