"""Running a plan on N worker processes of this machine (worker 0 is the calling process)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import resource
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from millstream._clock import SystemClock
from millstream._physical import compile as compile_physical
from millstream._plan import Plan
from millstream._runtime._base import Runtime
from millstream._state import open_backend
from millstream.errors import CheckpointError, ConfigError, JobError, MillstreamError

from ._checkpoints import PAUSE, RESUME, Checkpoints, PartWriter, read_all_positions, start_positions
from ._exchange import Exchange, PipeTransport
from ._rescale import load_parts, snapshot_for
from ._worker import run_worker, worker_job, worker_main

if TYPE_CHECKING:
    from millstream._checkpoint import Coordinator
    from millstream._control import JobControl
    from millstream._run import RunConfig, RunResult

log = logging.getLogger("millstream.parallel")

#: how long a finished worker gets to exit, and a stopped one to go, before it is killed
_JOIN_S = 5.0


def check_config(cfg: RunConfig) -> None:
    """Refuse what parallelism > 1 cannot do yet, naming the fix (called by ``RunConfig``)."""
    n = cfg.parallelism
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"parallelism must be a positive int, not {n!r}")
    if n == 1:
        return
    fix = "run with parallelism=1 (--parallelism 1)"
    if cfg.state != "memory":
        raise ConfigError(f"parallelism > 1 keeps keyed state in memory for now, not {cfg.state!r}: run with "
                          f"state='memory', or {fix}")
    if cfg.clock is not None and not isinstance(cfg.clock, SystemClock):
        raise ConfigError(f"parallelism > 1 needs the system clock: a {type(cfg.clock).__name__} cannot be shared "
                          f"by worker processes. Drop clock=..., or {fix}")
    if cfg.metrics is not None or cfg.dashboard is not None or cfg.metrics_registry is not None:
        raise ConfigError(f"metrics and the dashboard follow one process for now: drop metrics/dashboard, or {fix}")


def _payload(physical: Any) -> bytes:
    """The physical plan as the workers get it: user functions (lambdas, local functions) by value."""
    import cloudpickle  # type: ignore[import-untyped]

    try:
        return bytes(cloudpickle.dumps(physical, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        raise ConfigError(f"the flow cannot be sent to worker processes: {type(exc).__name__}: {exc}. Every step's "
                          "function, key and connector must pickle (an open file or socket, a lock, a generator "
                          "cannot), or run with parallelism=1") from exc


#: threads a process may run and still fork safely: helpers that survive a fork or are not needed
#: in the child (jemalloc's background threads, polars' spill-file cleaner); OpenBLAS' threads carry
#: the process's own name and shut down around a fork by themselves
_FORK_SAFE_THREADS = frozenset({"jemalloc_bg_thd", "polars-ooc-clea"})


def _start_method() -> str:
    """How the workers are started, never by forking a process that runs threads:

    - ``fork`` when this process runs no Python thread but the calling one and no native thread
      but fork-safe helpers (the kernel's list, ``/proc/self/task``: a thread pool that polars,
      tokio or a user's library started means no): ``flow.run`` from a plain program, the CLI. A
      worker then starts in a few milliseconds with everything already imported;
    - ``forkserver`` otherwise (``flow.start()`` runs the job in a thread; polars has run a query
      in this process): workers are forked from a fresh single-threaded server with millstream
      imported there. The server starts once per program, and that first start costs an import of
      millstream (~0.5-1 s here); later workers start in ~20 ms.
    """
    if sys.platform != "linux" or threading.active_count() != 1:
        return "forkserver"
    try:
        with open("/proc/self/comm") as fh:
            me = fh.read().strip()
        names = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/comm") as fh:
                names.append(fh.read().strip())
    except OSError:
        return "forkserver"
    return "fork" if all(n == me or n in _FORK_SAFE_THREADS for n in names) else "forkserver"


def _context(method: str) -> Any:
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["millstream._parallel._worker"])
    return ctx


@contextlib.contextmanager
def _main_module_hidden(method: str) -> Iterator[None]:
    """While a worker is started by the forkserver: hide the program's main module from
    multiprocessing, which would otherwise run it again in the worker (a script without an
    ``if __name__ == "__main__":`` guard would start its job again there, and fail). A worker needs
    nothing from it: the physical plan comes pickled by value (:func:`_payload`), and the worker's
    function is millstream's."""
    main = sys.modules.get("__main__")
    if method != "forkserver" or main is None:
        yield
        return
    saved: dict[str, Any] = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def run_parallel(plan: Plan, cfg: RunConfig, control: JobControl) -> RunResult:
    """Run ``plan`` on ``cfg.parallelism`` workers: this process is worker 0, the others are started here,
    joined here, and stopped here when anything fails or the run is interrupted.

    With a checkpoint directory, worker 0 owns it (its lock and owner epoch), resumes from its latest
    checkpoint (taken at any parallelism: each worker gets the state of its key groups and the
    positions of its splits, :mod:`._rescale`), and takes checkpoints across the workers
    (:mod:`._checkpoints`); the job then restarts up to ``cfg.restarts`` times after a failure."""
    from millstream._checkpoint import Coordinator

    coordinator = None
    if cfg.checkpoint_dir is not None:
        coordinator = Coordinator(plan, os.fspath(cfg.checkpoint_dir), guarantee=cfg.effective_guarantee,
                                  interval_ms=cfg.checkpoint_interval_ms, retain=cfg.checkpoints_retained,
                                  clock=SystemClock(), mode=cfg.mode, key=cfg.checkpoint_key)
    try:
        if coordinator is not None and cfg.from_savepoint is not None:
            coordinator.adopt_savepoint(os.fspath(cfg.from_savepoint))
        restarts = 0
        while True:
            try:
                return _run_once(plan, cfg, control, coordinator, restarts)
            except JobError as exc:
                if coordinator is None or restarts >= cfg.restarts or control.stop_requested \
                        or isinstance(exc.__cause__, CheckpointError):
                    if restarts:
                        raise JobError(f"the job failed {restarts + 1} times; giving up. Last error:\n{exc}") from exc
                    raise
                restarts += 1
                log.warning("job failed (%s); restart %d of %d from the latest checkpoint", exc, restarts,
                            cfg.restarts)
                time.sleep(cfg.restart_delay_s)
    finally:
        if coordinator is not None:
            coordinator.close()  # the checkpoint directory's lock goes with the run


def _run_once(plan: Plan, cfg: RunConfig, control: JobControl, coordinator: Coordinator | None,
              restarts: int) -> RunResult:
    from millstream._run import RunResult, _close, _status

    n = cfg.parallelism
    physical = compile_physical(plan, cfg.mode, n, gather_sinks=True)
    started = time.monotonic()
    guarantee = cfg.effective_guarantee
    restores: list[bytes | None] = [None] * n
    loaded = None
    ckpt_cfg: dict[str, Any] | None = None
    resume: dict[str, Any] | None = None
    if coordinator is not None:
        t0 = time.perf_counter()
        loaded = coordinator.restore_point()
        owner = coordinator.store.owner
        assert owner is not None
        ckpt_cfg = {"root": coordinator.store.root, "epoch": owner.epoch, "token": owner.token,
                    "scope": owner.scope, "job": coordinator.store.job, "key": cfg.checkpoint_key,
                    "at_most_once": guarantee == "at-most-once"}
        if loaded is not None and loaded.finished:
            nowhere = Exchange(0, PipeTransport(0, {}, {}), 1)
            job0 = worker_job(physical, 0, Runtime(SystemClock(), open_backend(cfg.state)), nowhere)
            return _status(job0, plan.flow, cfg.mode, started, RunResult, guarantee=guarantee,  # type: ignore[no-any-return]
                           checkpoints=coordinator.stats, already_finished=True, restarts=restarts)
        snaps: list[dict[str, Any] | None] = [None] * n
        if loaded is not None:
            old_n, parts = load_parts(loaded.state, coordinator.store.shared_dir)
            snaps = [snapshot_for(physical, w, old_n, parts) for w in range(n)]
            log.info("resuming from checkpoint %d (taken at parallelism %d) at parallelism %d", loaded.id, old_n, n)
        if guarantee == "at-most-once":
            positions = _positions_to_resume(coordinator, loaded)
            if positions is not None:  # the first checkpoint of this run ends the muting (._checkpoints.resume_past)
                resume = {"positions": positions, "checkpoint": coordinator.next_id}
                snaps = [{**(snap or {}), RESUME: resume} for snap in snaps]
        restores = [None if snap is None else pickle.dumps(snap, protocol=pickle.HIGHEST_PROTOCOL) for snap in snaps]
        coordinator.stats.restore_ms = (time.perf_counter() - t0) * 1000
    payload = _payload(physical)
    trigger = cfg.trigger_interval_ms if cfg.mode == "microbatch" else 0
    workers: Workers
    if cfg.engine == "ray":
        from ._ray import RayWorkers

        workers = RayWorkers(n, plan.flow, cfg.ray_address)
    else:
        workers = LocalWorkers(n, plan.flow)
    done: dict[int, dict[str, Any]] = {}
    #: the workers that have stopped reading for a savepoint (:func:`_take_savepoint`)
    paused: set[int] = set()
    checkpoints: Checkpoints | None = None

    def alive() -> None:
        """Raise when another worker failed (its message) or died (how); hand on the parts of
        checkpoints the others made durable."""
        while ex.control:
            msg = ex.control.popleft()
            if msg[0] == "error":
                raise _WorkerFailed(msg[1], msg[2], msg[3])
            if msg[0] == "part":
                if msg[2] == PAUSE:
                    paused.add(msg[1])
                elif checkpoints is not None:
                    checkpoints.part(msg[1], msg[2], msg[3])
                continue
            done[msg[1]] = msg[2]
            if checkpoints is not None:
                checkpoints.abandon()
        for w in range(1, n):
            if w not in done and (how := workers.exited(w)) is not None:
                last_word(w, how)

    def last_word(w: int, how: str) -> None:
        """Worker ``w`` has exited: read what is left from it, up to its end (records it sent last stay
        in ``deferred``, in order, to be processed), and look there for its last message."""
        deadline = time.monotonic() + _JOIN_S
        while ex.transport.connected(w) and time.monotonic() < deadline:
            ex._take_in(0.05)
        for msg in ex.deferred:
            if msg[0] == "error" and msg[1] == w:
                raise _WorkerFailed(msg[1], msg[2], msg[3])
            if msg[0] == "done" and msg[1] == w:
                done[w] = msg[2]
                if checkpoints is not None:
                    checkpoints.abandon()
                return
        raise _WorkerFailed(w, None, f"worker {w} died ({how})")

    ex = workers.exchange(alive)
    rt = Runtime(cfg.clock or SystemClock(), open_backend(cfg.state), checkpointed=coordinator is not None)
    part_writer = PartWriter(**ckpt_cfg) if ckpt_cfg is not None else None

    def own_part(ckpt: int, part: dict[str, Any]) -> None:
        assert part_writer is not None and checkpoints is not None
        info = part_writer.write(ckpt, 0, part)
        checkpoints.part(0, ckpt, info)

    job = worker_job(physical, 0, rt, ex, checkpointed=coordinator is not None, on_part=own_part)
    interrupted = finished = False
    savepoint: str | None = None
    tick = None
    if cfg.on_progress is not None:
        callback, every, next_tick = cfg.on_progress, cfg.progress_interval_s, [time.monotonic()]

        def tick() -> None:
            if time.monotonic() >= next_tick[0]:
                next_tick[0] = time.monotonic() + every
                callback(_status(job, plan.flow, cfg.mode, started, guarantee=guarantee,
                                 checkpoints=coordinator.stats if coordinator is not None else None))

    try:
        workers.start(payload, restores, max_chunk=cfg.chunk, idle_sleep_s=cfg.idle_sleep_s, state=cfg.state,
                      ckpt=ckpt_cfg, trigger_interval_ms=trigger)
        ex.start()
        failed = True
        try:
            job.open()
            if coordinator is not None:
                if restores[0] is not None:
                    job.restore(pickle.loads(restores[0]))  # noqa: S301 - made above from a verified checkpoint
                txns = loaded.state["txns"] if loaded is not None else {}
                coordinator.recover_writers(job.writers(), txns, resumed=resume is not None)
                if part_writer is not None and part_writer.at_most_once:
                    job.record_reads(part_writer)

                def acknowledge(ckpt: int | None) -> None:
                    for w in range(1, n):  # a worker that has ended waits for the final word, taking these too
                        ex.put(w, ("ack", ckpt))
                    job.acknowledge(ckpt)

                checkpoints = Checkpoints(coordinator, n, ex.put, job.start, job.writers, acknowledge, job.sealed)
                if resume is not None:  # at-most-once, resumed: this first checkpoint unmutes the operators
                    assert coordinator.next_id == resume["checkpoint"]
                    checkpoints.start()
            ended = run_worker(job, ex, max_chunk=cfg.chunk, idle_sleep_s=cfg.idle_sleep_s,
                               stop=lambda: control.stop_requested, tick=tick, checkpoints=checkpoints,
                               trigger_interval_ms=trigger)
            interrupted = not ended
            if interrupted and checkpoints is not None and control.savepoint_requested:
                savepoint = _take_savepoint(checkpoints, ex, n, alive, paused, done)
            while ended and len(done) < n - 1:  # the others have ended too: wait for their figures
                ex.receive(0.05)
                alive()
            if ended and checkpoints is not None:
                checkpoints.finish()
            finished = ended
            failed = False
        finally:
            if part_writer is not None:
                part_writer.close()
            _close(job, quiet=failed)
    except KeyboardInterrupt:
        interrupted = True
    except _WorkerFailed as failure:
        raise failure.error(n) from None
    except MillstreamError as exc:
        if isinstance(exc, ConfigError):
            raise
        step = getattr(exc, "step", None)
        raise JobError(f"worker 0 of {n} failed{_in_step(step)}: {exc}") from exc
    finally:
        workers.stop(ex, finished)
    result: RunResult = _status(job, plan.flow, cfg.mode, started, RunResult, ok=not interrupted,
                                interrupted=interrupted, guarantee=guarantee,
                                checkpoints=coordinator.stats if coordinator is not None else None,
                                restarts=restarts, savepoint=savepoint)
    return _merge(result, done)


def _take_savepoint(checkpoints: Checkpoints, ex: Exchange, n: int, alive: Callable[[], None], paused: set[int],
                    done: dict[int, dict[str, Any]]) -> str | None:
    """A stop with a savepoint, on worker 0 once its loop has stopped: every worker stops reading its sources
    (``("ckpt", PAUSE)``, answered once it has), the checkpoint in flight completes, then a checkpoint
    commits everything produced before the pause, then the savepoint: a checkpoint marked so in its
    manifest, taken with nothing produced since the one before (its sinks' transactions are empty, so a
    run from it may write to a new output), its parts durable on every worker. Worker 0 meanwhile reads
    nothing either and fires no processing-time timer, and takes in and processes what the others send.
    Returns the savepoint's directory; None, with a warning, when a worker had ended (no checkpoint can
    complete then: a rerun resumes from the last one)."""
    co = checkpoints.co

    def settle(until: Callable[[], bool]) -> bool:
        """Take in and process what the others send until ``until()``; False once no checkpoint can complete."""
        while not checkpoints.closed:
            if until():
                return True
            ex.receive(0.01)
            alive()
            ex.flush()
        return False

    for w in range(1, n):
        ex.put(w, ("ckpt", PAUSE))
    ok = settle(lambda: len(paused | set(done)) >= n - 1 and checkpoints.inflight is None)
    for savepoint in (False, True):
        if not ok:
            break
        checkpoints.start(savepoint=savepoint)
        ok = settle(lambda: checkpoints.inflight is None)
    if not ok or checkpoints.last_savepoint is None:
        log.warning("stopped without a savepoint: a worker had ended, so no checkpoint could complete; a run with "
                    "the same checkpoint directory resumes from its last checkpoint (%s)",
                    co.stats.last_id or co.stats.restored_from or "none yet")
        return None
    path = co.store.path_of(checkpoints.last_savepoint)
    log.info("stopped with savepoint %s (%d workers)", path, n)
    return path


def _positions_to_resume(coordinator: Coordinator, loaded: Any) -> dict[str, Any] | None:
    """At-most-once: how far every run's workers (or one process) had read, merged and written as this
    run's base (:mod:`._checkpoints`); None when nothing was recorded (a fresh start, or a run from a
    savepoint in a new directory: nothing was read past it)."""
    store = coordinator.store
    fix = ("start over with a new (empty) checkpoint directory AND a new or emptied output (removing only some "
           "checkpoint files makes the job resume from an older point and repeat output)")
    cannot = ("At-most-once cannot tell how far the sources had read, so a resume could process records again; "
              "the job does not resume.")
    try:
        found = read_all_positions(store)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}\n  {cannot}\n  fix: {fix}") from None
    if found is None:
        if loaded is not None and not loaded.savepoint and loaded.manifest.get("guarantee") == "at-most-once":
            raise CheckpointError(f"checkpoint directory {store.root!r} has at-most-once checkpoints but no read "
                                  f"positions (positions-*.pkl deleted?).\n  {cannot}\n  fix: {fix}")
        return None
    merged, files = found
    owner = store.owner
    assert owner is not None
    start_positions(store, owner.epoch, merged, files)
    return merged


def _in_step(step: str | None) -> str:
    return f" in step {step!r}" if step else ""


class _WorkerFailed(Exception):
    def __init__(self, worker: int, step: str | None, text: str) -> None:
        super().__init__(text)
        self.worker, self.step, self.text = worker, step, text

    def error(self, n: int) -> JobError:
        return JobError(f"worker {self.worker} of {n} failed{_in_step(self.step)}: {self.text}")


class Workers(ABC):
    """Where workers 1 .. N-1 run, and how worker 0 reaches them: :class:`LocalWorkers` (processes of
    this machine, over pipes) or ``._ray.RayWorkers`` (Ray actors). Worker 0 is the calling process
    either way."""

    @abstractmethod
    def exchange(self, alive: Callable[[], None]) -> Exchange:
        """Worker 0's exchange (``alive`` is called while it waits)."""

    @abstractmethod
    def start(self, payload: bytes, restores: list[bytes | None], **common: Any) -> None:
        """Start workers 1 .. N-1 on ``payload`` (the pickled physical plan), worker ``w`` from
        ``restores[w]``; ``common``: :func:`._worker.serve`'s options."""

    @abstractmethod
    def exited(self, w: int) -> str | None:
        """How worker ``w`` ended (``"exit code -9"``), or None while it runs."""

    @abstractmethod
    def stop(self, ex: Exchange, finished: bool) -> None:
        """Join every worker (``finished``: they end by themselves; otherwise, after a failure or an
        interruption, they are stopped), and close worker 0's exchange."""


class LocalWorkers(Workers):
    """Workers 1 .. N-1 as processes of this machine: forked from this one when it runs no thread
    (see :func:`_start_method`), else from a forkserver; one pipe per ordered pair of workers."""

    def __init__(self, n: int, flow: str) -> None:
        self.n, self.flow = n, flow
        self.method = _start_method()
        self.ctx = _context(self.method)
        # pipes[(a, b)]: worker a writes, worker b reads
        self.pipes: dict[tuple[int, int], tuple[Connection, Connection]] = {
            (a, b): self.ctx.Pipe(duplex=False)[::-1] for a in range(n) for b in range(n) if a != b}
        self.procs: list[Any] = []

    def _ends(self, w: int) -> tuple[dict[int, Connection], dict[int, Connection]]:
        """Worker ``w``'s pipe ends: what it reads, by sender, and what it writes, by receiver."""
        return ({a: r for (a, b), (_, r) in self.pipes.items() if b == w},
                {b: wr for (a, b), (wr, _) in self.pipes.items() if a == w})

    def exchange(self, alive: Callable[[], None]) -> Exchange:
        return Exchange(0, PipeTransport(0, *self._ends(0)), self.n, alive=alive)

    def start(self, payload: bytes, restores: list[bytes | None], **common: Any) -> None:
        method = self.method
        if method == "fork":  # what the parent holds unflushed would be written by the children too
            sys.stdout.flush()
            sys.stderr.flush()
        for w in range(1, self.n):
            readers, writers = self._ends(w)
            # a forked worker inherits every pipe end: it closes those that are not its own
            own = {id(c) for c in (*readers.values(), *writers.values())}
            others = [c for ends in self.pipes.values() for c in ends if id(c) not in own] if method == "fork" else []
            proc = self.ctx.Process(target=worker_main, name=f"millstream-{self.flow}-worker-{w}", daemon=True,
                                    args=(w, self.n, payload, readers, writers, common["max_chunk"],
                                          common["idle_sleep_s"], common["state"], others, common["ckpt"],
                                          restores[w], common["trigger_interval_ms"]))
            with _main_module_hidden(method):
                proc.start()
            self.procs.append(proc)
        for (a, b), (wr, r) in self.pipes.items():  # the workers' ends are theirs now
            if a != 0:
                wr.close()
            if b != 0:
                r.close()

    def exited(self, w: int) -> str | None:
        if w > len(self.procs):
            return None
        code = self.procs[w - 1].exitcode
        return None if code is None else f"exit code {code}"

    def stop(self, ex: Exchange, finished: bool) -> None:
        """After a failure or an interruption the workers are terminated, then killed; every pipe end this
        process holds is closed."""
        procs = self.procs
        deadline = time.monotonic() + _JOIN_S
        for proc in procs:
            if not finished and proc.exitcode is None:
                proc.terminate()
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.terminate()
                proc.join(1.0)
            if proc.exitcode is None:
                log.warning("worker %s did not stop; killing it", proc.name)
                proc.kill()
                proc.join()
            proc.close()
        ex.close(0.5)
        for wr, r in self.pipes.values():
            wr.close()
            r.close()


def _merge(result: RunResult, done: dict[int, dict[str, Any]]) -> RunResult:
    """Add the other workers' figures to worker 0's, step by step."""
    import dataclasses

    steps = []
    for s in result.steps:
        rin, rout, extra = s.records_in, s.records_out, dict(s.extra)
        for figures in done.values():
            for name, i, o, more in figures["steps"]:
                if name == s.name:
                    rin, rout = rin + i, rout + o
                    for k, v in more.items():
                        extra[k] = extra.get(k, 0) + v
        steps.append(dataclasses.replace(s, records_in=rin, records_out=rout, extra=extra))
    peaks = {0: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    peaks.update({w: f["peak_rss"] for w, f in done.items()})
    log.info("peak memory per worker: %s", peaks)
    # records read: every worker's source instances (worker 0's alone before), as the step figures add up
    read = sum(s.records_in for s in steps if s.kind == "source")
    return dataclasses.replace(result, steps=tuple(steps), records_read=read,
                               worker_peak_rss=tuple(peaks[w] for w in sorted(peaks)))
