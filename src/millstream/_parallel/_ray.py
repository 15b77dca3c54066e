"""Workers 1 .. N-1 as Ray actors (``engine="ray"``): the same physical plan, the same exchange, another
transport.

The calling process stays **worker 0**, exactly as with local workers: it owns the checkpoint
directory, reads the sources of one split, writes every sink (so in-memory sinks, files and a
transactional sink with one writer work unchanged), runs the checkpoint coordinator and answers
Ctrl-C. Workers 1 .. N-1 are actors (:class:`_WorkerActor`, one CPU each, spread over the cluster's
nodes), each running :func:`._worker.serve` — the code a local worker process runs — in a thread of
its own, over an :class:`~._exchange.Exchange` whose :class:`~._exchange.Transport` is this module's:

- **to an actor** (from worker 0 or another actor): ``deliver`` calls, numbered per receiver, at most
  :data:`~._exchange.CAPACITY` unfinished per receiver. A call finishes once the receiver holds fewer
  than ``CAPACITY`` messages of that sender, so a slow receiver holds its senders back
  (backpressure), and a sender whose channel is full takes in what reaches it meanwhile, as over a
  pipe. An async actor may run two calls of one caller out of order: the receiver puts each sender's
  messages back in order by their numbers.
- **to worker 0**: an actor cannot call the driver, so it keeps what it sends worker 0 in a queue of at
  most ``CAPACITY`` messages, and worker 0 takes them with ``take`` calls, one in flight per actor (so
  they come in order). A ``take`` that fails says the actor died.

Ray is joined at ``ray_address`` (``ray.init(address=...)``), else through an existing connection or
Ray's own ``RAY_ADDRESS``, else a local Ray is started (``ray.init()``, one CPU per worker at least)
and kept for the rest of the program (a second run starts in milliseconds; Ray stops it when the
program ends, or ``ray.shutdown()`` does). Actors are killed when the run ends, fails or is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from typing import Any

from millstream.errors import JobError, MissingDependencyError

from ._exchange import CAPACITY, TAKE, Exchange, Transport
from ._runner import _JOIN_S, Workers
from ._worker import report_failure, serve

log = logging.getLogger("millstream.parallel")

#: how long worker 0's call for an actor's messages waits there before it returns empty
_POLL_S = 0.2
#: how long the actors get to be placed on the cluster and started
_START_S = 120.0


def ray_module() -> Any:
    """``ray``, or a MissingDependencyError naming the extra."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "ray", "engine='ray' (--engine ray)") from None
    return ray


def connect(address: str | None, n: int) -> None:
    """Join Ray: at ``address``; else the connection this program has, or Ray's ``RAY_ADDRESS``; else
    start a local Ray with a CPU per worker at least (workers ask for one CPU each)."""
    ray = ray_module()
    if ray.is_initialized():
        return
    if address is not None or os.environ.get("RAY_ADDRESS"):
        log.info("joining the Ray cluster at %s", address or os.environ.get("RAY_ADDRESS"))
        ray.init(address=address, logging_level=logging.WARNING)
        return
    log.info("starting a local Ray (it stays up for the rest of the program)")
    ray.init(num_cpus=max(n, os.cpu_count() or 1), include_dashboard=False, logging_level=logging.WARNING)


class _Pusher:
    """Messages pushed into other workers' actors (see the module docstring): ``deliver`` calls numbered
    per receiver, at most :data:`CAPACITY` unfinished per receiver."""

    def __init__(self, me: int, handles: dict[int, Any], *, check: bool = True) -> None:
        self.me = me
        self.handles = handles
        #: whether a finished call's error is raised (worker 0; in an actor, Ray warns of any ``ray.get``)
        self.check = check
        self.numbers: dict[int, int] = {}
        self.calls: dict[int, list[Any]] = {}

    def offer(self, dest: int, data: bytes) -> bool:
        calls = self.calls.setdefault(dest, [])
        if len(calls) >= CAPACITY:
            ray = ray_module()
            ready, calls[:] = ray.wait(calls, num_returns=len(calls), timeout=0)
            try:
                if self.check:
                    ray.get(ready)
            except ray.exceptions.RayActorError:
                pass  # the receiver is gone: worker 0 learns it from its take, and fails the job
            if len(calls) >= CAPACITY:
                return False
        number = self.numbers.get(dest, 0)
        calls.append(self.handles[dest].deliver.remote(self.me, number, data))
        self.numbers[dest] = number + 1
        return True

    def drain(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` seconds for the calls in flight to finish."""
        calls = [c for cs in self.calls.values() for c in cs]
        if calls:
            ray_module().wait(calls, num_returns=len(calls), timeout=wait_s)


class _InOrder:
    """Each sender's messages back in the order they were numbered."""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}
        self.early: dict[int, dict[int, bytes]] = {}

    def put(self, got: list[tuple[int, int, bytes]]) -> list[bytes]:
        out = []
        for sender, number, data in got:
            nxt = self.next.get(sender, 0)
            if number != nxt:
                self.early.setdefault(sender, {})[number] = data
                continue
            out.append(data)
            nxt += 1
            early = self.early.get(sender)
            while early and nxt in early:
                out.append(early.pop(nxt))
                nxt += 1
            self.next[sender] = nxt
        return out


class _ActorTransport(Transport):
    """An actor's transport, used by its worker's thread: pushes to the other actors, queues what goes to
    worker 0 for its ``take`` calls, and takes what ``deliver`` calls brought."""

    def __init__(self, actor: _WorkerActor, me: int, handles: dict[int, Any]) -> None:
        self.actor = actor
        self.pusher = _Pusher(me, {w: h for w, h in handles.items() if w != me}, check=False)
        self.order = _InOrder()

    def offer(self, dest: int, data: bytes) -> bool:
        if dest != 0:
            return self.pusher.offer(dest, data)
        actor = self.actor
        if len(actor.outbox) >= CAPACITY:
            return False
        actor.outbox.append(data)
        actor.loop.call_soon_threadsafe(actor.out_ready.set)
        return True

    def take(self, timeout: float) -> list[bytes]:
        actor = self.actor
        with actor.arrived:
            if not actor.inbox and timeout > 0:
                actor.arrived.wait(timeout)
            got = list(actor.inbox)
            actor.inbox.clear()
        if not got:
            return []
        actor.loop.call_soon_threadsafe(actor.taken, Counter(sender for sender, _, _ in got))
        return self.order.put(got)

    def close(self, wait_s: float) -> None:
        self.pusher.drain(wait_s)


class _WorkerActor:
    """Worker ``w`` (1 .. N-1) as a Ray actor. Its methods are coroutines on the actor's event loop
    (``deliver`` waiting for room costs no thread); the worker itself runs in a thread of its own
    (:meth:`start`)."""

    def __init__(self) -> None:
        #: (sender, number, message) brought by ``deliver``, for the worker's thread
        self.inbox: deque[tuple[int, int, bytes]] = deque()
        self.arrived = threading.Condition()
        #: messages for worker 0, taken by its ``take`` calls
        self.outbox: deque[bytes] = deque()
        self.thread: threading.Thread | None = None
        # the loop's own (another actor may deliver before this one's start has run):
        #: messages of each sender in the inbox, and an event set when a sender's room grows
        self.held: Counter[int] = Counter()
        self.room: dict[int, asyncio.Event] = {}
        self.out_ready = asyncio.Event()

    async def start(self, worker: int, n: int, handles: dict[int, Any], payload: bytes, restore: bytes | None,
                    common: dict[str, Any], where: dict[str, Any]) -> int:
        """Start the worker's thread; returns this actor's process id."""
        self.loop = asyncio.get_running_loop()
        _adopt(where)
        ex = Exchange(worker, _ActorTransport(self, worker, handles), n)
        self.thread = threading.Thread(target=self._run, args=(worker, ex, payload, restore, common),
                                       name=f"millstream-worker-{worker}", daemon=True)
        self.thread.start()
        return os.getpid()

    @staticmethod
    def _run(worker: int, ex: Exchange, payload: bytes, restore: bytes | None, common: dict[str, Any]) -> None:
        try:
            serve(worker, ex, payload, restore=restore, **common)
        except BaseException as exc:  # noqa: BLE001 - everything a worker meets goes to worker 0
            report_failure(worker, ex, exc)
            return
        ex.close(30)

    async def deliver(self, sender: int, number: int, data: bytes) -> None:
        """A message from ``sender``: returns once it is in the inbox, which holds at most :data:`CAPACITY`
        of each sender's (the caller waits meanwhile: backpressure)."""
        while self.held[sender] >= CAPACITY:
            room = self.room.setdefault(sender, asyncio.Event())
            room.clear()
            await room.wait()
        self.held[sender] += 1
        with self.arrived:
            self.inbox.append((sender, number, data))
            self.arrived.notify()

    def taken(self, counts: Counter[int]) -> None:
        """(On the loop.) The worker's thread took these messages of each sender: room for more."""
        for sender, k in counts.items():
            self.held[sender] -= k
            if sender in self.room:
                self.room[sender].set()

    async def take(self, wait_s: float) -> list[bytes]:
        """What this worker sent worker 0, in order (up to :data:`TAKE` messages), waiting up to ``wait_s``
        for something."""
        if not self.outbox:
            self.out_ready.clear()
            try:
                await asyncio.wait_for(self.out_ready.wait(), wait_s)
            except TimeoutError:
                pass
        out: list[bytes] = []
        while self.outbox and len(out) < TAKE:
            out.append(self.outbox.popleft())
        return out

    async def join(self, wait_s: float) -> bool:
        """Whether the worker's thread ended (waiting up to ``wait_s`` for it)."""
        deadline = time.monotonic() + wait_s
        while self.thread is not None and self.thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.thread is None or not self.thread.is_alive()


def _adopt(where: dict[str, Any]) -> None:
    """Work where worker 0 works, as far as this node has it: its working directory (relative paths in
    the plan mean the same) and its import path (the modules of the job's functions)."""
    cwd = where["cwd"]
    for entry in where["path"]:
        entry = entry or cwd
        if entry not in sys.path and os.path.isdir(entry):
            sys.path.append(entry)
    if os.path.isdir(cwd):
        os.chdir(cwd)


_ACTOR: Any = None


def _actor_class() -> Any:
    global _ACTOR
    if _ACTOR is None:
        _ACTOR = ray_module().remote(_WorkerActor)
    return _ACTOR


class _DriverTransport(Transport):
    """Worker 0's transport (the calling process): pushes to the actors, and takes what each holds for
    it with ``take`` calls, one in flight per actor. ``gone``: actors whose call failed, and how."""

    def __init__(self, handles: dict[int, Any]) -> None:
        self.handles = handles
        self.pusher = _Pusher(0, handles)  # both share ``handles``: the actors are made after this
        self.polls: dict[Any, int] = {}
        self.gone: dict[int, str] = {}

    def start(self) -> None:
        for w, handle in self.handles.items():
            self.polls[handle.take.remote(_POLL_S)] = w

    def offer(self, dest: int, data: bytes) -> bool:
        return self.pusher.offer(dest, data)

    def take(self, timeout: float) -> list[bytes]:
        if not self.polls:
            if timeout > 0:
                time.sleep(timeout)
            return []
        ray = ray_module()
        ready, _ = ray.wait(list(self.polls), num_returns=1, timeout=timeout)
        if not ready:
            return []
        if len(self.polls) > 1:
            ready, _ = ray.wait(list(self.polls), num_returns=len(self.polls), timeout=0)
        out: list[bytes] = []
        for call in ready:
            w = self.polls.pop(call)
            try:
                out.extend(ray.get(call))
            except Exception as exc:  # noqa: BLE001 - the actor died (or Ray lost it): worker 0 reports it
                self.gone[w] = _death(exc)
                continue
            self.polls[self.handles[w].take.remote(_POLL_S)] = w
        return out

    def connected(self, sender: int) -> bool:
        return sender not in self.gone

    def close(self, wait_s: float) -> None:
        self.polls.clear()


def _death(exc: BaseException) -> str:
    """How an actor ended, from the error its call raised: its first line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"its Ray actor died: {type(exc).__name__}" + (f": {first[:300]}" if first else "")


class RayWorkers(Workers):
    """Workers 1 .. N-1 as Ray actors (see the module docstring)."""

    def __init__(self, n: int, flow: str, address: str | None) -> None:
        try:
            connect(address, n)
        except MissingDependencyError:
            raise
        except Exception as exc:
            raise JobError(f"cannot join Ray{f' at {address}' if address else ''}: {type(exc).__name__}: {exc}"
                           ) from exc
        self.n, self.flow = n, flow
        #: the actors, made by :meth:`start` (so that nothing is left when the run fails before it)
        self.handles: dict[int, Any] = {}
        self.transport = _DriverTransport(self.handles)

    def exchange(self, alive: Any) -> Exchange:
        return Exchange(0, self.transport, self.n, alive=alive)

    def start(self, payload: bytes, restores: list[bytes | None], **common: Any) -> None:
        ray = ray_module()
        cls = _actor_class()
        self.handles.update({w: cls.options(num_cpus=1, max_restarts=0, scheduling_strategy="SPREAD").remote()
                             for w in range(1, self.n)})  # the transport's too
        where = {"path": list(sys.path), "cwd": os.getcwd()}
        plan = ray.put(payload)  # once, for every actor
        calls = [h.start.remote(w, self.n, self.handles, plan, restores[w], common, where)
                 for w, h in self.handles.items()]
        try:
            pids = ray.get(calls, timeout=_START_S)
        except ray.exceptions.GetTimeoutError:
            cpus = ray.cluster_resources().get("CPU", 0)
            raise JobError(f"Ray did not start the {self.n - 1} worker actors of flow {self.flow!r} within "
                           f"{_START_S:.0f} s: each asks for 1 CPU, and the cluster has {cpus:g} in all. Add "
                           "nodes, or lower the parallelism") from None
        except Exception as exc:
            raise JobError(f"Ray could not start the worker actors of flow {self.flow!r}: {exc}") from exc
        log.info("workers 1-%d of flow %r run as Ray actors (pids %s)", self.n - 1, self.flow, pids)

    def exited(self, w: int) -> str | None:
        return self.transport.gone.get(w)

    def stop(self, ex: Exchange, finished: bool) -> None:
        """Finished: wait for the actors' threads to end (their sources acknowledge the final checkpoint);
        then, and at once after a failure or an interruption, kill every actor."""
        ray = ray_module()
        if finished:
            try:
                ray.get([h.join.remote(_JOIN_S) for h in self.handles.values()], timeout=_JOIN_S + 5)
            except Exception:  # noqa: BLE001 - an actor gone or slow: it is killed below all the same
                log.warning("a worker actor did not end by itself; killing it")
        for handle in self.handles.values():
            try:
                ray.kill(handle, no_restart=True)
            except Exception:
                log.debug("worker actor gone already", exc_info=True)
        ex.close(0.5)
