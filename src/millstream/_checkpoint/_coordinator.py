"""The checkpoint coordinator of the native executor.

The native executor runs one chunk at a time, so between two source polls every
operator has processed everything it was given: a checkpoint taken there is
aligned by construction (alignment time 0). A checkpoint holds every operator's
state and timers, every source's position and watermark, and every sink's
pre-committed transaction; the sinks commit once it is durable.

Guarantees (``RunConfig.guarantee``):

- ``exactly-once``: restore state and positions, replay; transactional sinks
  discard what they staged after the checkpoint, so the committed output is
  the failure-free output.
- ``at-least-once``: the same restore and replay; non-transactional sinks may
  show records twice.
- ``at-most-once``: before a chunk is processed, how far each source has read is
  recorded; a restart restores state from the checkpoint but resumes reading
  after the last chunk read, so nothing is processed twice. Records read after
  the checkpoint whose effects were lost are counted (``lost``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from millstream._checkpoint._failpoints import failpoint
from millstream._checkpoint._owner import DirectoryOwner, FencedWriter
from millstream._checkpoint._store import COMMITTED, POSITIONS, CheckpointStore, LoadedCheckpoint
from millstream._clock import Clock
from millstream._plan import STATELESS, Node, Plan, SinkOp
from millstream._state import KEYED_STATE
from millstream.errors import CheckpointError

if TYPE_CHECKING:
    from millstream._runtime._native import NativeJob

log = logging.getLogger("millstream.checkpoint")


_START_OVER = ("start over with a new (empty) checkpoint directory AND a new or emptied output (removing "
               "only some checkpoint files makes the job resume from an older point and repeat output)")
_NO_POSITIONS = ("At-most-once cannot tell how far the sources had read, so a resume could process records "
                 "again; the job does not resume.")

#: A checkpoint taken by several workers says so under this key of its state (``_parallel/_rescale.py``).
_PARALLEL = "parallel"

#: The transaction an at-most-once resume hands to non-transactional sinks: continue, keep everything.
AT_MOST_ONCE_KEEP = {"keep": True}


def fingerprint(plan: Plan, *, sink_targets: bool = True, family: str = "") -> str:
    """Identity of a flow's shape: steps, kinds, wiring, and the details of steps that hold state.

    A stateless step's function may change between runs (a fix, a rename) without
    touching any checkpointed state; a stateful step's definition may not. The execution
    mode is not part of it: a checkpoint of any mode resumes in any other (a restored step
    takes the state in the form the mode that took it kept it: ``NativeJob.restore``).

    ``sink_targets=False``: a sink counts by its connector's type only, not by where it
    writes (its ``describe()``): a run started from a savepoint may write to a new output.
    ``family``: the suffix checkpoints of the columnar modes carried before they moved between
    modes (:func:`fingerprints`).
    """
    text = "\n".join(f"{n.id}|{n.name}|{n.kind}|{_detail(n, sink_targets)}|{n.inputs}" for n in plan.nodes)
    return hashlib.sha256(f"{plan.flow}{family}\n{text}".encode()).hexdigest()[:32]


#: the suffix micro-batch and batch mode's checkpoints had in their fingerprint while each executor
#: kept its own state format (then refused in native mode): still accepted, in every mode
_OLD_COLUMNAR = "|columnar"


def fingerprints(plan: Plan, *, sink_targets: bool = True) -> tuple[str, frozenset[str]]:
    """The flow's identity (what new checkpoints carry) and the older identities of the same flow that
    its checkpoints may carry: the columnar modes' of before (their content is what it is today)."""
    return (fingerprint(plan, sink_targets=sink_targets),
            frozenset({fingerprint(plan, sink_targets=sink_targets, family=_OLD_COLUMNAR)}))


def _detail(node: Node, sink_targets: bool) -> str:
    if isinstance(node.op, STATELESS):
        return ""
    if not sink_targets and isinstance(node.op, SinkOp):
        return f"sink:{type(node.op.connector).__module__}.{type(node.op.connector).__qualname__}"
    return node.op.describe()


@dataclass
class CheckpointStats:
    """Figures of the checkpoints of one run."""

    completed: int = 0
    last_id: int | None = None
    last_duration_ms: float = 0.0
    max_duration_ms: float = 0.0
    last_size_bytes: int = 0
    alignment_ms: float = 0.0
    restored_from: int | None = None
    restore_ms: float = 0.0
    lost: int = 0
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def record(self, ckpt_id: int, ms: float, size: int, *, finished: bool, **extra: Any) -> None:
        """Count a completed checkpoint: ``ms`` to take it, ``size`` bytes (``extra`` goes into its history)."""
        self.completed += 1
        self.last_id = ckpt_id
        self.last_duration_ms = ms
        self.max_duration_ms = max(self.max_duration_ms, ms)
        self.last_size_bytes = size
        self.history.append({"id": ckpt_id, "ms": round(ms, 3), "bytes": size, "finished": finished, **extra})


class Coordinator:
    """Takes checkpoints of a :class:`NativeJob` and restores it after a crash."""

    def __init__(self, plan: Plan, directory: str, *, guarantee: str, interval_ms: int, retain: int,
                 clock: Clock, mode: str = "native", key: str | bytes | None = None) -> None:
        job, older = fingerprints(plan)
        self.store = CheckpointStore(directory, job=job, also=older, retain=retain, key=key,
                                     owner=DirectoryOwner(os.path.abspath(directory)))
        #: the flow's identity with its sinks' targets left out (and the older forms of it): what a
        #: savepoint must match
        self.shape, self._old_shapes = fingerprints(plan, sink_targets=False)
        #: the execution mode of this run (checkpoints of every mode resume in it: the fingerprint leaves it out)
        self.mode = mode
        self.guarantee = guarantee
        self.interval_ms = interval_ms
        self.clock = clock
        self.next_id = max(self.store.ids(), default=0) + 1
        self.next_due = clock.now_ms() + interval_ms
        self.stats = CheckpointStats()
        self._read_base: dict[str, int] = {}
        #: sources that replay by redelivery: what a checkpoint acknowledged never comes back, so an
        #: older checkpoint cannot stand in for a damaged newer one
        self._redelivered = [n.name for n in plan.sources
                             if n.op.connector.replay == "redelivery"]  # type: ignore[attr-defined]
        assert self.store.owner is not None
        self.store.owner.acquire()  # refused if another live run holds the directory; held until close()

    def close(self) -> None:
        """Give up the checkpoint directory (the end of the run)."""
        self.store.close()
        if self.store.owner is not None:
            self.store.owner.release()

    # -- a run started from a savepoint -------------------------------------------------------
    def adopt_savepoint(self, path: str) -> None:
        """Start this run's (new) checkpoint directory from the savepoint at ``path``.

        The savepoint (a ``chk-*`` directory, or a checkpoint directory's newest savepoint) is copied
        here under its own id, verified, and becomes the checkpoint :meth:`recover` restores; the
        copy is recorded in ``ORIGIN`` first, so that running the same command again (after a crash
        or a stop) resumes from this directory's own newest checkpoint instead of starting over.

        Refused: a directory that already holds another run's checkpoints, and a savepoint of this
        very directory that later checkpoints have gone past (a rewind: under exactly-once it would
        commit output again; give the run a new directory instead).
        """
        store = self.store
        root, sp_id = store.locate_savepoint(path)
        source = store.other(root, job=store.job_of(root, sp_id))
        where = source.path_of(sp_id)
        if os.path.realpath(root) == os.path.realpath(store.root):
            newest = max(store.ids(), default=None)
            if newest == sp_id and store.read_committed() <= sp_id:
                return  # the newest checkpoint here: a plain resume
            raise CheckpointError(
                f"savepoint {sp_id} ({where}) is in the checkpoint directory of this run, whose checkpoints "
                f"have gone past it (newest {newest}, output committed up to checkpoint {store.read_committed()}): "
                "going back to it there would rewrite that history (under exactly-once: commit its output "
                "again).\n  fix: to go on from the newest checkpoint, drop from_savepoint (--from-savepoint); "
                "to start again from the savepoint, give this run a new checkpoint directory"
                + (" and a new output" if self.guarantee == "exactly-once" else ""))
        manifest, _ = source.verify(sp_id)
        if not manifest.get("savepoint"):
            raise CheckpointError(
                f"{where} is a checkpoint, not a savepoint: its output may not all be committed.\n  fix: resume "
                f"from it by running with its checkpoint directory {root!r} itself; or stop that run with a "
                "savepoint and start from that")
        if manifest.get("shape") != self.shape and manifest.get("shape") not in self._old_shapes:
            raise CheckpointError(
                f"savepoint {where} belongs to another flow (or another version of this one). From a savepoint "
                "a run may write to other outputs, in any execution mode, but its steps, their state and its "
                "sources must be the same.\n  fix: start it with the flow that took it")
        origin = {"path": os.path.realpath(where), "checkpoint": sp_id, "manifest": manifest["checksum"]}
        try:
            later = source.read_committed()
        except CheckpointError:
            later = 0
        recorded = store.read_origin()
        if recorded is not None:
            if (recorded.get("checkpoint"), recorded.get("manifest")) != (sp_id, manifest["checksum"]):
                raise CheckpointError(
                    f"checkpoint directory {store.root!r} was started from another savepoint "
                    f"({recorded.get('path')!r}), not from {where!r}.\n  fix: run with that savepoint, or "
                    "without from_savepoint to resume this directory; or give this run a new directory")
            if store.ids():
                log.info("checkpoint directory %s was started from savepoint %s; resuming from its own newest "
                         "checkpoint", store.root, where)
                return
        elif store.ids() or store.read_committed():
            raise CheckpointError(
                f"checkpoint directory {store.root!r} already holds checkpoints of a run; a run from a savepoint "
                "starts in a new (empty) one.\n  fix: give it a new --checkpoint-dir; or drop from_savepoint "
                "to resume the run of this directory")
        if later > sp_id and store.owns(source.job) and self.guarantee != "at-least-once":
            # the same flow with the same sink targets: this run would write to the output that run
            # went on committing, and what came after the savepoint would be there twice
            raise CheckpointError(
                f"savepoint {where}: the run it came from went on and committed the output of checkpoints up "
                f"to {later} into the same output this run writes to; going on from the savepoint there would "
                f"write the output after it a second time, which {self.guarantee} forbids.\n  fix: write to a new "
                "output (from a savepoint a run may change its sinks' targets); or resume that run from its own "
                f"checkpoint directory {root!r}")
        if recorded is None:
            store.write_origin(origin)
        if later > sp_id:
            log.warning("savepoint %s: the run it came from went on and committed the output of checkpoints up to "
                        "%d; if this run writes to that same output, the output after the savepoint appears twice "
                        "(write to a new output)", where, later)
        store.import_checkpoint(source, sp_id)
        store.write_committed(sp_id)  # its output is committed (in the output of the run that took it)
        self.next_id = max(self.next_id, sp_id + 1)
        log.info("started checkpoint directory %s from savepoint %s", store.root, where)

    # -- recovery ---------------------------------------------------------------------
    def _latest(self) -> LoadedCheckpoint | None:
        ids = self.store.ids()
        if not ids:
            return None
        try:
            return self.store.load(ids[-1])
        except CheckpointError as exc:
            if self.guarantee != "at-least-once":
                raise CheckpointError(
                    f"{exc}\n  the job cannot resume safely: an older checkpoint would replay output its sinks "
                    f"may already have committed, which {self.guarantee} forbids.\n  fix: {_START_OVER}"
                ) from None
            if self._redelivered:
                raise CheckpointError(
                    f"{exc}\n  the job cannot resume safely: source(s) {', '.join(map(repr, self._redelivered))} "
                    "replay by redelivery and acknowledged what this checkpoint held, so resuming from an older "
                    f"one would lose those records.\n  fix: {_START_OVER}") from None
            for older in reversed(ids[:-1]):
                try:
                    loaded = self.store.load(older)
                except CheckpointError:
                    continue
                log.warning("%s; resuming from the older checkpoint %d (at-least-once allows replay)", exc, older)
                return loaded
            raise

    def restore_point(self) -> LoadedCheckpoint | None:
        """The checkpoint a run resumes from (the latest complete one, verified), after the history
        checks; None to start from the beginning. Sets the figures and the next id."""
        self.store.check_owner()
        loaded = self._latest()
        self._check_history(loaded)
        failpoint("recovery.restore")
        if loaded is not None:
            self.stats.restored_from = loaded.id
            self.next_id = max(self.next_id, loaded.id + 1)
        return loaded

    def recover_writers(self, writers: list[tuple[str, Any, str]], txns: dict[str, Any], *,
                        resumed: bool = False) -> None:
        """Fence the writers with this run's owner epoch, then hand each the transactions of the restored
        checkpoint (committed again if pending) so it discards every other pending output. ``resumed``
        (at-most-once, the sources going on past what they had read): a writer without transactions keeps
        everything it had written, as :meth:`recover` does."""
        owner = self.store.owner
        for _, writer, _ in writers:
            if owner is not None and isinstance(writer, FencedWriter):
                writer.set_fence(owner.epoch, self.store.check_owner, owner.scope)
        self._check_output(writers)
        self.store.check_owner()  # paused since the last check (a run took over)? then leave the output alone
        for name, writer, delivery in writers:
            if self.guarantee == "at-most-once" and resumed and delivery == "none":
                writer.recover([AT_MOST_ONCE_KEEP])  # nothing is replayed: keep every record already written
                continue
            t = txns.get(name)
            # a checkpoint of several workers keeps a list per writer (what an abandoned checkpoint sealed
            # first); one of one process, one transaction
            writer.recover([] if t is None else list(t) if isinstance(t, list) else [t])

    def recover(self, job: NativeJob) -> LoadedCheckpoint | None:
        """Restore ``job`` (opened, not yet run) from the latest complete checkpoint, if any.

        A checkpoint taken by several workers (``parallelism`` > 1) is restored too: its parts are
        merged into this one process's state (:mod:`millstream._parallel._rescale`)."""
        t0 = time.perf_counter()
        self._job = job
        loaded = self.restore_point()
        txns: dict[str, list[Any]] = {}
        if loaded is not None:
            if _PARALLEL in loaded.state:
                from millstream._parallel._rescale import load_parts, snapshot_for

                old_n, parts = load_parts(loaded.state, self.store.shared_dir)
                job.restore(snapshot_for(job.physical, 0, old_n, parts))
                txns = {name: list(ts) for name, ts in loaded.state["txns"].items()}
            else:
                job.restore(loaded.state["job"], self.store.shared_dir)
                txns = {name: [t] for name, t in loaded.state["txns"].items() if t is not None}
            self._read_base = dict(loaded.state["read"])
        resumed = loaded is not None
        if self.guarantee == "at-most-once":
            # a savepoint was taken at a chunk boundary with nothing read past it: a run started from
            # one in a new directory (no read positions there) has nothing to skip
            resumed = self._skip_ahead(job, expected=loaded is not None and not loaded.savepoint
                                       and loaded.manifest.get("guarantee") == "at-most-once") or resumed
        owner = self.store.owner
        for _, writer, _ in job.writers():
            if owner is not None and isinstance(writer, FencedWriter):
                writer.set_fence(owner.epoch, self.store.check_owner, owner.scope)
        self._check_output(job.writers())
        self.store.check_owner()  # paused since the last check (a run took over)? then leave the output alone
        for name, writer, delivery in job.writers():
            if self.guarantee == "at-most-once" and resumed and delivery == "none":
                # nothing is replayed: keep every record already written (no cut back to the checkpoint)
                writer.recover([AT_MOST_ONCE_KEEP])
            else:
                writer.recover(txns.get(name, []))
        if self.guarantee == "at-most-once":
            # recorded from the start, so a checkpoint never exists without positions beside it
            self.store.write_positions(self._positions())
            for src in job.sources:
                src.on_read = self._record_positions
        self.stats.restore_ms = (time.perf_counter() - t0) * 1000
        self.next_due = self.clock.now_ms() + self.interval_ms
        return loaded

    def _check_history(self, loaded: LoadedCheckpoint | None) -> None:
        """Refuse (exactly-once) or warn when committed output goes beyond the checkpoint being restored."""
        try:
            committed = self.store.read_committed()
        except CheckpointError as exc:
            if self.guarantee != "at-least-once":
                raise CheckpointError(f"{exc}\n  the job cannot tell which output is already committed, so "
                                      f"{self.guarantee} cannot resume safely.\n  fix: {_START_OVER}") from None
            log.warning("%s; going on (at-least-once allows output to repeat)", exc)
            committed = 0
        restored = loaded.id if loaded is not None else 0
        self.next_id = max(self.next_id, committed + 1)  # ids (and part-file names) are never reused
        self._rewound = committed > restored
        if committed <= restored:
            return
        what = (f"the newest checkpoint left is {restored}" if loaded is not None
                else "no checkpoint is left")
        problem = (f"checkpoint directory {self.store.root!r}: the output of checkpoint {committed} may already "
                   f"be committed (recorded in {COMMITTED}), but {what}: were checkpoint folders deleted, or "
                   "the directory restored from an older copy?")
        if self.guarantee == "exactly-once":
            raise CheckpointError(
                f"{problem}\n  Resuming would produce the output after checkpoint {restored} again (duplicates), "
                f"which exactly-once forbids.\n  fix: put the missing checkpoint folder(s) back; or {_START_OVER}")
        where = f"checkpoint {restored}" if loaded is not None else "the start"
        if self.guarantee == "at-most-once":
            # the sources go on after what they had read (positions.pkl): nothing is read again, and what
            # the state held after the restored checkpoint is lost
            log.warning("%s Resuming from %s with the sources past what they had read: nothing is produced "
                        "again, and the state after it is lost (at-most-once allows that).", problem, where)
        else:
            log.warning("%s Resuming from %s: output after it is produced again (%s allows that).", problem,
                        where, self.guarantee)

    def _check_output(self, writers: Iterable[tuple[str, Any, str]]) -> None:
        """What the sinks committed may show a history the checkpoint directory no longer does: a
        directory restored whole from an older copy has an older COMMITTED too, but a sink that names
        its output by checkpoint (``committed_beyond``) still holds the later checkpoints' output.
        Refused under exactly-once, warned about under at-least-once (once: a rewind COMMITTED already
        showed is not told twice)."""
        restored = self.stats.restored_from
        if restored is None or self.guarantee == "at-most-once":
            return
        ahead: list[str] = []
        for name, writer, _ in writers:
            beyond = getattr(writer, "committed_beyond", None)
            found = beyond(restored) if beyond is not None else []
            if found:
                shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
                ahead.append(f"sink {name!r}: {shown}")
        if not ahead:
            return
        problem = (f"checkpoint directory {self.store.root!r}: the sinks hold output committed after checkpoint "
                   f"{restored}, the one being restored ({'; '.join(ahead)}): was the checkpoint directory "
                   "restored from an older copy, or pointed at another run's output?")
        if self.guarantee == "exactly-once":
            raise CheckpointError(
                f"{problem}\n  Resuming would produce the output after checkpoint {restored} again (duplicates), "
                f"which exactly-once forbids.\n  fix: put the newer checkpoint directory back; or {_START_OVER}")
        if not getattr(self, "_rewound", False):
            log.warning("%s Resuming from checkpoint %d: output after it is produced again (%s allows that).",
                        problem, restored, self.guarantee)

    def _skip_ahead(self, job: NativeJob, *, expected: bool = False) -> bool:
        """At-most-once: resume every source after the last chunk it read, counting what is lost.

        Returns whether the job had read anything before (a resume, not a fresh start). ``expected``:
        the restored checkpoint was taken under at-most-once, so read positions must be there.
        """
        from millstream._parallel._checkpoints import read_all_positions

        try:
            positions = self.store.read_positions()
            # what workers of a job at parallelism > 1 recorded: merged with this file, the newest run last
            workers = read_all_positions(self.store, workers_only=True)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}\n  {_NO_POSITIONS}\n  fix: {_START_OVER}") from None
        if workers is not None:
            for src in job.sources:
                p = workers[0].get(src.name)
                if p is None or src.reader is None:
                    continue
                src.reader.restore(p["position"])  # every split: one process reads them all
                src.restore_time_state(p["max_ts"], merge=True)
                src.advance_muted(p["wm"], job.ops)  # the least of its splits' (min over the workers')
            return True
        if not positions:
            if expected:
                raise CheckpointError(
                    f"checkpoint directory {self.store.root!r} has at-most-once checkpoints but no {POSITIONS} "
                    f"(deleted?).\n  {_NO_POSITIONS}\n  fix: put {POSITIONS} back; or {_START_OVER}")
            return False
        for src in job.sources:
            p = positions.get(src.name)
            if p is None or src.reader is None:
                continue
            read_at_checkpoint = self._read_base.get(src.name, 0)
            if p["read"] > read_at_checkpoint:
                src.reader.restore(p["position"])
                self.stats.lost += p["read"] - read_at_checkpoint
                self._read_base[src.name] = p["read"]
                src.restore_time_state(p["max_ts"], merge=True)
            # windows and timers up to the watermark reached before the crash fired then (or were lost
            # with their input): move time there without emitting them again, even if nothing new was read
            src.advance_muted(p["wm"], job.ops)
        return True

    def _positions(self) -> dict[str, Any]:
        return {
            s.name: {"position": s.reader.snapshot(), "read": self._read_base.get(s.name, 0) + s.records_in,
                     "wm": s.next_watermark(), "max_ts": s.time_state()}
            for s in self._job.sources if s.reader is not None
        }

    def _record_positions(self) -> None:
        """At-most-once: called after a source read a chunk and before the chunk is processed."""
        positions = self._positions()
        self.store.write_positions(positions)
        self._acknowledge(self._job, {name: p["position"] for name, p in positions.items()})

    @staticmethod
    def _acknowledge(job: NativeJob, positions: dict[str, Any]) -> None:
        """Tell each source that everything up to its position is safe (commit offsets, XACK, ack)."""
        failpoint("source.acknowledge")
        for src in job.sources:
            if src.reader is not None and src.name in positions:
                src.reader.acknowledge(positions[src.name])

    # -- checkpoints ------------------------------------------------------------------
    def due(self, now_ms: int) -> bool:
        return now_ms >= self.next_due

    def savepoint(self, job: NativeJob) -> str:
        """Take a savepoint now (between chunks, the job being stopped); returns its directory.

        A savepoint is a checkpoint that is not marked finished, marked ``"savepoint": true`` in its
        manifest, and holds no pending output: a checkpoint first commits everything written so far,
        then the savepoint itself is taken with nothing written since, so its transactions are empty.
        That is what lets a run started from it (``from_savepoint``) write to a new output: there is
        nothing of the old output left to commit. Garbage collection keeps the newest savepoint.
        """
        self.checkpoint(job)
        return self.checkpoint(job, savepoint=True)

    def checkpoint(self, job: NativeJob, *, finished: bool = False, savepoint: bool = False) -> str:
        """Take a checkpoint now (between chunks), then let the sinks commit; returns its directory."""
        ckpt_id = self.next_id
        t0 = time.perf_counter()
        failpoint("ckpt.begin")
        writers = job.writers()
        txns = {name: writer.pre_commit(ckpt_id) for name, writer, _ in writers}
        snap = job.snapshot(ckpt_id, self.store.shared_dir)
        keyed = snap[KEYED_STATE]
        state = {
            "job": snap,
            "txns": txns,
            "read": {s.name: self._read_base.get(s.name, 0) + s.records_in for s in job.sources},
        }
        meta: dict[str, Any] = {"guarantee": self.guarantee}
        if savepoint:
            meta["savepoint"] = True
            meta["shape"] = self.shape
        size = self.store.write(ckpt_id, state, finished=finished, meta=meta, shared=keyed["files"])
        size += sum(keyed["files"][name]["size"] for name in keyed.get("written", ()))
        self.next_id += 1
        self.store.write_committed(ckpt_id)  # before any output of it is visible: a rewind is detected
        failpoint("ckpt.before_commit")
        for name, writer, _ in writers:
            failpoint("sink.commit")
            self.store.check_owner()  # a run another took over commits nothing
            writer.commit(txns[name])
        failpoint("ckpt.after_commit")
        if self.guarantee != "at-most-once":  # at-most-once acknowledged each chunk as it was read
            self._acknowledge(job, {s.name: snap[s.name]["state"]["position"] for s in job.sources})
        self.store.gc()
        ms = (time.perf_counter() - t0) * 1000
        self.stats.record(ckpt_id, ms, size, finished=finished, **({"savepoint": True} if savepoint else {}))
        self.next_due = self.clock.now_ms() + self.interval_ms
        log.debug("%s %d: %d bytes in %.1f ms", "savepoint" if savepoint else "checkpoint", ckpt_id, size, ms)
        return self.store.path_of(ckpt_id)
