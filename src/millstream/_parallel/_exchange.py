"""The exchange: records, watermarks and end of input between workers.

Every ordered pair of workers has a **channel**, provided by a :class:`Transport` — the one seam
between what the exchange means and how bytes travel: :class:`PipeTransport` for worker processes of
this machine (a ``multiprocessing`` pipe per channel, file descriptors, no shared memory, fed by a
thread of the sender from a bounded queue of pickled messages), and ``._ray``'s for Ray actors
(``deliver`` calls with at most :data:`CAPACITY` in flight per channel; worker 0 takes what the
actors hold for it). What one worker sends another travels as a *message* ``(sender, items)``, the
items in the order they were made, so that on each channel data and watermarks keep their order
(every transport delivers a channel's messages in order, each once). An item is one of

- ``("d", edge, records, times)``: a chunk of records (a pickled list, never one record a message,
  at most :data:`BATCH` records);
- ``("w", edge, wm)``: the sender's instance of the edge's source operator reached watermark ``wm``
  (``MAX_WATERMARK``: it has ended, nothing more comes on that edge from that sender);
- ``("i", edge)``: that instance's input went idle.

- ``("b", edge, checkpoint)``: the sender's instance of the edge's source operator passed the
  barrier of a checkpoint (aligned barriers: see :class:`ExchangeIn` and ``_checkpoints``).

Control messages from a worker to worker 0 are ``("error", worker, step, text)``,
``("done", worker, figures)`` and ``("part", worker, checkpoint, file)`` (its part of a checkpoint is
durable); worker 0 sends ``("ckpt", checkpoint)`` to start one and ``("ack", checkpoint)`` once it is
complete (``None``: the final one), for the workers' sources to acknowledge what it holds.

**Backpressure.** A channel holds at most :data:`CAPACITY` messages besides what the pipe itself
buffers; a sender whose channel is full waits. While it waits it keeps taking in every message that
reaches *it* (checking every millisecond) and sets them aside (they are processed at its next turn):
two workers that send to each other therefore never wait on each other for long, and a worker never
processes input in the middle of sending. (Taking in one message per pipe every 20 ms, as the first
version did, made two busy workers wait on each other for ~45 % of a Nexmark q5 run.) A receiver
takes every message ready on a pipe at once (up to :data:`TAKE`), not one a round.

**Routing.** A ``hash`` edge reads each record's key with generated code and remembers the worker of
each key seen (equal keys share a key group, so a dict can); a key not seen yet gets its key group.

**Watermarks.** :class:`ExchangeIn` holds, per input port reached by an exchange, the watermark of
each sender; the port's watermark is the minimum over the senders that are not idle, and when every
sender is idle the port is marked idle (the operator's own idle marking, ``Operator.idle``), so
an idle channel does not hold time back.
"""

from __future__ import annotations

import os
import pickle
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from itertools import compress
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from millstream._keygroups import key_group
from millstream._runtime._aggcode import compile_key, key_expr
from millstream._runtime._codegen import Generated
from millstream._runtime._columnar import TIME, is_frame, to_rows
from millstream._time import MAX_WATERMARK, MIN_WATERMARK

if TYPE_CHECKING:
    from millstream._physical import Edge, PhysicalPlan
    from millstream._runtime._base import Runtime

#: most records in one message (a bigger push is cut into several)
BATCH = 2048
#: the column a batch's rows carry their worker in, while it is split
_DEST = "__millstream_dest__"
#: most rows of a columnar batch in one message
FRAME_ROWS = 1 << 16
#: messages a channel holds (besides the pipe's own buffer) before its sender waits
CAPACITY = 8
#: most messages taken from one pipe at a time
TAKE = 4 * CAPACITY
#: messages that are not data: a worker's failure and its end (to worker 0), a checkpoint to take (from
#: worker 0) and a worker's part of a checkpoint, durable (to worker 0)
CONTROL = ("error", "done", "ckpt", "part", "ack")
#: keys whose worker an exchange remembers (forgotten all at once beyond that)
_ROUTES = 1 << 16


class Transport(ABC):
    """How one worker's messages reach the others: **the exchange's one seam** between the
    message logic (:class:`Exchange`, :class:`ExchangeIn`, :class:`ExchangeOut`) and the way bytes
    travel. Two implementations: :class:`PipeTransport` (worker processes of this machine) and
    ``millstream._parallel._ray``'s (Ray actors, on one machine or several).

    What every transport guarantees the exchange: the messages one worker sends another arrive in the
    order they were sent, each once; :meth:`offer` never blocks, and refuses a message while the
    channel to its receiver holds :data:`CAPACITY` messages (the sender then takes in what reaches it
    and offers again: backpressure without deadlock); :meth:`take` hands over what has arrived."""

    def start(self) -> None:
        """Start moving messages (threads, calls in flight): after the other workers are started."""

    @abstractmethod
    def offer(self, dest: int, data: bytes) -> bool:
        """Send ``data`` to worker ``dest`` unless its channel is full (False: offer it again later)."""

    @abstractmethod
    def take(self, timeout: float) -> list[bytes]:
        """What has arrived (each sender's messages in order), waiting up to ``timeout`` seconds for
        something when nothing has."""

    def connected(self, sender: int) -> bool:
        """Whether more may come from ``sender`` (False once its end is closed, or it is gone)."""
        return True

    def close(self, wait_s: float) -> None:
        """Let what was offered go out (up to ``wait_s`` seconds), then release everything."""


class Channel:
    """The sending end of a pipe to one worker, with a thread that writes what is put into it."""

    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=CAPACITY)
        #: why the thread stopped writing (the receiver is gone), else None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._feed, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _feed(self) -> None:
        while True:
            data = self.queue.get()
            if data is None:
                return
            try:
                self.conn.send_bytes(data)
            except (OSError, ValueError) as exc:  # the receiver is gone, or the pipe closed
                self.error = exc
                return

    def put(self, data: bytes, *, block: bool = True, timeout: float | None = None) -> None:
        """Raises ``queue.Full`` when the channel is full (``block=False``) or still full after ``timeout``."""
        self.queue.put(data, block=block, timeout=timeout)

    def close(self, wait_s: float) -> None:
        """Let the thread write what it holds (up to ``wait_s`` seconds), then close the pipe."""
        if self.thread.ident is not None:  # started
            try:
                self.queue.put(None, timeout=wait_s)
            except queue.Full:
                pass
            self.thread.join(wait_s)
        self.conn.close()


class PipeTransport(Transport):
    """One pipe per ordered pair of workers of this machine: ``readers[sender]`` is read here, and
    ``writers[dest]`` written by a :class:`Channel` thread from a queue of at most :data:`CAPACITY`
    messages. A receiver takes every message ready on a pipe at once (up to :data:`TAKE`)."""

    def __init__(self, me: int, readers: dict[int, Connection], writers: dict[int, Connection]) -> None:
        self.readers = dict(readers)
        self.channels = {w: Channel(c, f"millstream-worker-{me}-to-{w}") for w, c in writers.items()}

    def start(self) -> None:
        for channel in self.channels.values():
            channel.start()

    def offer(self, dest: int, data: bytes) -> bool:
        try:
            self.channels[dest].put(data, block=False)
        except queue.Full:
            return False
        return True

    def take(self, timeout: float) -> list[bytes]:
        if not self.readers:
            if timeout > 0:
                time.sleep(timeout)
            return []
        out: list[bytes] = []
        sender_of = {id(c): s for s, c in self.readers.items()}
        for conn in wait(list(self.readers.values()), timeout):
            assert isinstance(conn, Connection)
            for _ in range(TAKE):
                try:
                    data = conn.recv_bytes()
                except (EOFError, OSError):
                    del self.readers[sender_of[id(conn)]]  # its sender ended (or died: worker 0 finds out which)
                    break
                out.append(data)
                if not conn.poll():
                    break
        return out

    def connected(self, sender: int) -> bool:
        return sender in self.readers

    def close(self, wait_s: float) -> None:
        for channel in self.channels.values():
            channel.close(wait_s)
        for conn in self.readers.values():
            conn.close()


class Exchange:
    """One worker's end of the exchange: what it sends (gathered per receiver, one message a round)
    and what it takes in, over a :class:`Transport`. The transport runs from :meth:`start` on (worker 0
    starts it once the other workers are started: nothing is forked from a process running threads)."""

    def __init__(self, me: int, transport: Transport, n: int, *, parent_pid: int | None = None,
                 alive: Callable[[], None] | None = None) -> None:
        self.me = me
        self.transport = transport
        #: items waiting to be sent, per receiver, and the records among them
        self.pending: list[list[tuple[Any, ...]]] = [[] for _ in range(n)]
        self.pending_records = [0] * n
        #: messages taken in while waiting to send: processed first at the next turn
        self.deferred: deque[tuple[Any, ...]] = deque()
        #: the port each exchange edge reaches on this worker, by edge index
        self.ins: dict[int, ExchangeIn] = {}
        #: control messages (worker 0 only): what the runner looks at
        self.control: deque[tuple[Any, ...]] = deque()
        self.parent_pid = parent_pid
        #: called while waiting (worker 0: raises when another worker failed or died)
        self.alive = alive

    def start(self) -> None:
        self.transport.start()

    # -- sending ---------------------------------------------------------------------
    def queue(self, dest: int, item: tuple[Any, ...], records: int = 0) -> None:
        self.pending[dest].append(item)
        self.pending_records[dest] += records
        if self.pending_records[dest] >= BATCH:
            self.flush_to(dest)

    def flush(self) -> None:
        """Send every pending item (one message per receiver)."""
        for dest, items in enumerate(self.pending):
            if items:
                self.flush_to(dest)

    def flush_to(self, dest: int) -> None:
        items = self.pending[dest]
        self.pending[dest] = []
        self.pending_records[dest] = 0
        self.put(dest, (self.me, items))

    def put(self, dest: int, message: tuple[Any, ...]) -> None:
        """Send ``message`` to worker ``dest``; while its channel is full, take in what arrives here."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        transport = self.transport
        while not transport.offer(dest, data):
            # the receiver may be waiting to send to us: take in everything that has come (so its
            # channel drains), waiting at most a millisecond for it, then try again
            self._take_in(0.001)
            self.check()

    def put_last(self, dest: int, message: tuple[Any, ...], timeout: float) -> bool:
        """Send ``message`` (a failure's report) without processing anything that arrives meanwhile: the
        worker is going. False when the channel stayed full for ``timeout`` seconds."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        deadline = time.monotonic() + timeout
        while not self.transport.offer(dest, data):
            if time.monotonic() >= deadline:
                return False
            self.transport.take(0.001)  # dropped: this worker processes nothing more
        return True

    def close(self, wait_s: float) -> None:
        self.transport.close(wait_s)

    def check(self) -> None:
        """Stop when the job cannot go on: worker 0 learnt of a failure, a worker's parent is gone."""
        if self.alive is not None:
            self.alive()
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            raise SystemExit(3)  # the job's process is gone: nobody reads what this worker makes

    # -- receiving -------------------------------------------------------------------
    def _take_in(self, timeout: float) -> int:
        """Move what has arrived into ``deferred`` (waiting up to ``timeout`` for something), so that a
        sender's channel drains at once."""
        got = self.transport.take(timeout)
        for data in got:
            self.deferred.append(pickle.loads(data))  # noqa: S301 - a message from a worker of this job
        return len(got)

    def receive(self, wait_s: float) -> int:
        """Process what has arrived (what was taken in while sending first); wait up to ``wait_s``
        for something when nothing has. Returns the messages processed."""
        if not self.deferred:
            deadline = time.monotonic() + wait_s
            while not self._take_in(max(0.0, min(0.05, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    return 0
                self.check()
        n = 0
        while self.deferred:
            self._handle(self.deferred.popleft())
            n += 1
        return n

    def _handle(self, msg: tuple[Any, ...]) -> None:
        if msg[0] in CONTROL:
            self.control.append(msg)
            return
        sender, items = msg
        for item in items:
            port = self.ins[item[1]]
            kind = item[0]
            if kind == "d":
                port.push(sender, item[2], item[3])
            elif kind == "w":
                port.watermark(sender, item[2])
            elif kind == "b":
                port.barrier(sender, item[2])
            else:
                port.idle(sender)

    @property
    def inputs_ended(self) -> bool:
        """Whether every sender of every exchange into this worker has ended."""
        return all(i.ended for i in self.ins.values())


class ExchangeIn:
    """Where an exchange edge enters an operator instance: the watermark of the port is the least
    of its senders' (idle senders aside).

    **Alignment.** A chunk holding a record at or behind its sender's watermark ``W`` (one that a
    watermark could make late) waits, with everything its sender sends after it, until every other
    sender's watermark has reached ``W``: the port's watermark is then exactly ``W`` when the record is
    judged, whatever the timing of the workers. With sources whose splits are aligned the same way
    (:class:`~millstream.connectors._base.SplitSetSource`), ``W`` is the watermark of the record's
    own split, so whether a record is late depends on its split alone, at every parallelism.
    Records ahead of their sender's watermark (all of them, within a watermark's bound) never wait.

    **Barriers.** A sender's checkpoint barrier stops that sender (what it sends after the barrier
    waits) until every sender has sent it (or has ended); then the port has the barrier
    (``target.barrier``) and the senders go on. While a barrier is on its way (a sender stopped, or a
    barrier waiting behind a chunk), chunks do not wait for watermarks: a checkpoint's alignment must
    not wait on a watermark that the checkpoint itself holds back. So a record beyond the bound that
    meets a checkpoint may be judged against a lower watermark than an uninterrupted run would.
    """

    def __init__(self, target: Any, port: int, senders: range) -> None:
        self.target = target
        self.port = port
        self.wms = {s: MIN_WATERMARK for s in senders}
        self.idles = {s: False for s in senders}
        self.sent = MIN_WATERMARK
        #: per sender, what it sent after a chunk that waits or after its barrier, in order
        self.waiting: dict[int, deque[tuple[Any, ...]]] = {}
        #: senders stopped at the barrier of checkpoint ``ckpt``
        self.stopped: set[int] = set()
        self.ckpt: int | None = None
        #: the last checkpoint whose barrier this port had (a sender that had ended sends it late)
        self.last = -1
        #: barriers waiting in ``waiting``
        self.barriers_queued = 0

    # -- what senders send -------------------------------------------------------------------
    def push(self, sender: int, records: Any, times: list[int] | None) -> None:
        if sender in self.waiting or sender in self.stopped or self._blocked(sender, _earliest(records, times)):
            self._wait(sender, ("d", records, times))
        else:
            self.target.push(self.port, records, times)

    def watermark(self, sender: int, wm: int) -> None:
        if sender in self.waiting or sender in self.stopped:
            self._wait(sender, ("w", wm))
            return
        self._apply(sender, ("w", wm))
        if self.waiting or self.stopped:
            self._release()

    def idle(self, sender: int) -> None:
        if sender in self.waiting or sender in self.stopped:
            self._wait(sender, ("i",))
            return
        self._apply(sender, ("i",))
        if self.waiting or self.stopped:
            self._release()

    def barrier(self, sender: int, ckpt: int) -> None:
        if ckpt <= self.last and sender not in self.waiting:
            return  # the port had it already: this sender had ended, and counted as passed
        if sender in self.waiting or sender in self.stopped:
            self._wait(sender, ("b", ckpt))
            self.barriers_queued += 1
            self._release()  # what waits for a watermark goes on now
            return
        self._stop(sender, ckpt)
        self._release()

    # -- inside ----------------------------------------------------------------------------
    def _wait(self, sender: int, item: tuple[Any, ...]) -> None:
        q = self.waiting.get(sender)
        if q is None:
            q = self.waiting[sender] = deque()
        q.append(item)

    def _stop(self, sender: int, ckpt: int) -> None:
        if ckpt <= self.last:
            return
        self.stopped.add(sender)
        self.ckpt = ckpt

    def _apply(self, sender: int, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "d":
            self.target.push(self.port, item[1], item[2])
        elif kind == "w":
            if item[1] > self.wms[sender]:
                self.wms[sender] = item[1]
            self.idles[sender] = False
            self._advance()
        else:
            self.idles[sender] = True
            self._advance()

    def _blocked(self, sender: int, earliest: int | None) -> bool:
        """Whether a chunk of ``sender`` whose earliest event time is ``earliest`` must wait (see the class
        docstring)."""
        if earliest is None or len(self.wms) < 2 or self.stopped or self.barriers_queued:
            return False
        w = self.wms[sender]
        if w == MIN_WATERMARK or earliest > w:
            return False
        return any(v < w for s, v in self.wms.items() if s != sender and not self.idles[s])

    def _release(self) -> None:
        """Hand on what waits, sender by sender, as far as each can go now; complete a barrier once
        every sender has sent it."""
        moved = True
        while moved:
            moved = False
            for sender in list(self.waiting):
                if sender in self.stopped:
                    continue
                items = self.waiting[sender]
                while items:
                    item = items[0]
                    if item[0] == "d" and self._blocked(sender, _earliest(item[1], item[2])):
                        break
                    items.popleft()
                    moved = True
                    if item[0] == "b":
                        self.barriers_queued -= 1
                        self._stop(sender, item[1])
                        break
                    self._apply(sender, item)
                if not items:
                    del self.waiting[sender]
            if self.ckpt is not None and all(s in self.stopped or w >= MAX_WATERMARK for s, w in self.wms.items()):
                ckpt, self.ckpt = self.ckpt, None
                self.stopped.clear()
                self.last = ckpt
                self.target.barrier(self.port, ckpt)
                moved = True

    def _advance(self) -> None:
        active = [w for s, w in self.wms.items() if not self.idles[s]]
        if not active:
            self.target.idle(self.port)
            return
        low = min(active)
        if low > self.sent:
            self.sent = low
            self.target.watermark(self.port, low)

    @property
    def ended(self) -> bool:
        return not self.waiting and not self.stopped and all(w >= MAX_WATERMARK for w in self.wms.values())


def _earliest(records: Any, times: list[int] | None) -> int | None:
    """The earliest event time of a chunk: of its times, or of the time column of a columnar batch
    (None: not timed, or empty)."""
    if times is not None:
        return min(times) if times else None
    if is_frame(records) and TIME in records.columns and records.height:
        low = records.get_column(TIME).min()
        return None if low is None else int(low)
    return None


def _compile_dests(key: Any) -> Callable[[list[Any], Callable[[Any], int | None], Callable[[Any], int]], list[int]]:
    """``dests(records, known, miss)``: the worker of each record, its key read inline (generated code):
    ``known(key)`` (a dict's ``get``) for a key seen before, else ``miss(key)``."""
    env: dict[str, Any] = {}
    g = Generated()
    g.add(0, "def _dests(records, known, miss):")
    g.add(1, f"return [d if (d := known(k := {key_expr(key, env)})) is not None else miss(k) for r in records]")
    fn, _ = g.compile("route", env, "_dests")
    return fn


class ExchangeOut:
    """Stands where an operator's downstream would be on an exchange edge: routes each record to the
    worker that owns its key group (``hash``) or to worker 0 (``global``), and sends the upstream
    instance's watermark to every instance of the target."""

    #: the operator contract's flag: it takes chunks of rows and columnar batches (the micro-batch modes),
    #: and sends each in the form it came in
    columnar = True

    def __init__(self, pp: PhysicalPlan, index: int, edge: Edge, ex: Exchange, rt: Runtime) -> None:
        self.index = index
        self.ex = ex
        self.rt = rt
        self.node = pp.plan.node(edge.target)
        target = pp.operator(edge.target)
        self.receivers = range(target.parallelism)
        m = pp.max_parallelism
        self.max_parallelism = m
        #: key group -> worker
        self.owner = [pp.owner(g) for g in range(m)] if edge.partitioning == "hash" else None
        self.key = compile_key(edge.key) if edge.partitioning == "hash" else None
        self.dests = _compile_dests(edge.key) if edge.partitioning == "hash" else None
        #: key -> worker, for the keys seen (equal keys share a key group, so a dict can remember it)
        self.route: dict[Any, int] = {}
        self.key_spec = edge.key
        #: key group -> worker as a numpy array (columnar batches), made at the first batch
        self.owner_array: Any = None
        #: the columns a batch keeps on its way (the target and what follows it read no other), or None:
        #: all of them (rows always travel whole)
        self.columns: frozenset[str] | None = None
        if pp.mode != "native":
            from millstream._runtime._microbatch import needed_by_step

            need = needed_by_step(pp.plan, self.node)
            if need is not None:
                self.columns = need | {TIME}

    def _miss(self, key: Any) -> int:
        """The worker of a key not seen yet (remembered)."""
        assert self.owner is not None
        d = self.route[key] = self.owner[key_group(key, self.max_parallelism)]
        return d

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        if is_frame(records):
            if records.height:
                self._push_frame(records)
            return
        if not records:
            return
        if self.owner is None:  # global: all to worker 0
            self._send(0, records, times)
            return
        assert self.dests is not None
        route = self.route
        if len(route) > _ROUTES:
            route.clear()
        try:
            dests = self.dests(records, route.get, self._miss)
        except Exception:  # noqa: BLE001 - a key that cannot be read or routed: the slow path names the record
            dests = self._dests_one_by_one(records)
        for d in range(len(self.receivers)):
            if len(self.receivers) == 1 or d in dests:
                mine = [x == d for x in dests]
                self._send(d, list(compress(records, mine)), None if times is None else list(compress(times, mine)))

    def _push_frame(self, df: Any) -> None:
        """Route a columnar batch: split by the worker of each row's key group, computed over the key's
        columns at once (:func:`~millstream._keygroups.key_groups`, the groups :func:`key_group` gives
        each value). A key read by a function or an expression, and a column whose values native mode
        cannot give a group, go the way of rows (their key read per record, a failure naming it)."""
        if self.columns is not None and not self.columns.issuperset(df.columns):
            df = df.select([c for c in df.columns if c in self.columns])
        if self.owner is None or len(self.receivers) == 1:  # global (all to worker 0), or one receiver
            self._send(0, df, None)
            return
        dests = self._frame_dests(df)
        if dests is None:
            records, times = to_rows(df)
            self.push(0, records, times)
            return
        import polars as pl

        first = int(dests[0])
        if (dests == first).all():
            self._send(first, df, None)
            return
        parts = df.with_columns(pl.Series(_DEST, dests)).partition_by(_DEST, as_dict=True, include_key=False,
                                                                        maintain_order=True)
        for (d,), part in sorted(parts.items()):
            self._send(int(d), part, None)

    def _frame_dests(self, df: Any) -> Any:
        """The worker of each row of ``df`` (a numpy array), or None when the key is not plain columns of it."""
        key = self.key_spec
        assert key is not None
        if key.fn is not None or key.expr is not None or not all(f in df.columns for f in key.fields):
            return None
        if self.owner_array is None:
            import numpy as np

            self.owner_array = np.asarray(self.owner, dtype=np.int64)
        from millstream._keygroups import key_groups

        try:
            cols = [df.get_column(f) for f in key.fields]
            groups = key_groups(cols[0] if len(cols) == 1 else cols, self.max_parallelism)
        except Exception:  # noqa: BLE001 - values native mode would route one by one (or name the record that fails)
            return None
        return self.owner_array[groups]

    def _dests_one_by_one(self, records: list[Any]) -> list[int]:
        """Each record's worker, record by record; the first that fails fails the step, naming it."""
        assert self.key is not None and self.owner is not None
        keyf, owner, m = self.key, self.owner, self.max_parallelism
        out = []
        for r in records:
            try:
                out.append(owner[key_group(keyf(r), m)])
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r) from exc
        return out

    def _send(self, dest: int, records: Any, times: list[int] | None) -> None:
        ex = self.ex
        if dest == ex.me:
            ex.ins[self.index].push(ex.me, records, times)
            return
        if is_frame(records):  # a batch travels whole (pickled as Arrow IPC by polars), cut at FRAME_ROWS
            for start in range(0, records.height, FRAME_ROWS):
                part = records.slice(start, FRAME_ROWS) if records.height > FRAME_ROWS else records
                ex.queue(dest, ("d", self.index, part, None), part.height)
            return
        for start in range(0, len(records), BATCH):
            part = records[start:start + BATCH] if len(records) > BATCH else records
            tpart = None if times is None else (times[start:start + BATCH] if len(records) > BATCH else times)
            ex.queue(dest, ("d", self.index, part, tpart), len(part))

    def watermark(self, port: int, wm: int) -> None:
        ex = self.ex
        for dest in self.receivers:
            if dest == ex.me:
                ex.ins[self.index].watermark(ex.me, wm)
                continue
            items = ex.pending[dest]
            if items and items[-1][0] == "w" and items[-1][1] == self.index:
                items[-1] = ("w", self.index, wm)  # a newer watermark replaces one not yet sent
            else:
                ex.queue(dest, ("w", self.index, wm))

    def idle(self, port: int) -> None:
        ex = self.ex
        for dest in self.receivers:
            if dest == ex.me:
                ex.ins[self.index].idle(ex.me)
            else:
                ex.queue(dest, ("i", self.index))

    def barrier(self, port: int, ckpt: int) -> None:
        """The upstream instance passed checkpoint ``ckpt``'s barrier: every instance of the target gets it,
        after what was sent before it."""
        ex = self.ex
        for dest in self.receivers:
            if dest == ex.me:
                ex.ins[self.index].barrier(ex.me, ckpt)
            else:
                ex.queue(dest, ("b", self.index, ckpt))

