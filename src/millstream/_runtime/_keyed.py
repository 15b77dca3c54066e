"""Keyed operators: running reduce and aggregate, and process functions with state and timers.

A process function's state lives in the job's state backend (``rt.state``): one keyed map
per state name, a dict with the in-memory backend, an on-disk store with ``lmdb://``.
TTL entries are ``(value, expires)`` in the map; their cleanup heaps and the timers stay
here and are snapshotted with the operator. Running ``aggregate``/``reduce`` keep their
state in a dict of the operator with the in-memory backend (snapshotted with the operator),
and in a keyed map of the backend when it is on disk (``rt.state.on_disk``: the backend's
files checkpoint it, the operator's snapshot says only that it is there).
"""


from __future__ import annotations

import heapq
import itertools
from typing import Any

from millstream._plan import AggregateOp, Node, ProcessOp, ReduceOp
from millstream._state import KeyedMap, check_key
from millstream.errors import MillstreamError
from millstream.state import ListStateSpec, MapStateSpec, StateSpec, ValueStateSpec

from ._aggcode import AggCode, compile_key, key_expr, key_items
from ._base import ON_DISK, Operator, Runtime, check_not_on_disk
from ._codegen import Generated, frame_local


class _GeneratedKeyed(Operator):
    """Shared error mapping for operators whose per-chunk loop is generated."""

    _filename = ""

    def _fail(self, exc: Exception) -> BaseException:
        tb = exc.__traceback__
        rec = frame_local(tb, self._filename, "r")
        key = frame_local(tb, self._filename, "k")
        t = frame_local(tb, self._filename, "t")
        return self.rt.step_error(self.node, exc, record=rec, key=key, has_key=True,
                                  event_time=t if isinstance(t, int) else None)


class AggregateOperator(_GeneratedKeyed):
    """Running aggregates per key: every record emits its key's updated row.

    With ``op.changelog`` a key's first record emits its row as an insert (``+I``), every
    later one the row before the update (``-U``, computed from the accumulator before the
    record is folded in) and the row after (``+U``), both at the record's event time.
    """

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, 1)
        op = node.op
        assert isinstance(op, AggregateOp)
        self.on_disk = rt.state.on_disk
        self.state: KeyedMap = rt.state.keyed_map(node.name, "acc") if self.on_disk else {}
        self.changelog = op.changelog
        code = AggCode(op.aggs, timed)
        env = code.env
        env["_PLAIN"], env["_check"] = _PLAIN_KEYS, check_key
        items = key_items(op.key) + code.result_items()
        g = Generated()
        g.add(0, "def _push(recs, times, st, tout):")
        g.add(1, "out = []; oa = out.append")
        if op.changelog and timed:
            g.add(1, "ta = tout.append")
        g.add(1, "for r, t in zip(recs, times):" if timed else "for r in recs:")
        g.add(2, f"k = {key_expr(op.key, env)}")
        if self.on_disk:  # a key the store cannot encode fails here, naming its record
            g.add(2, "if type(k) not in _PLAIN: _check(k)")
        g.add(2, "a = st.get(k)")
        if op.changelog:
            g.add(2, f"if a is None: a = st[k] = {code.init}; ch = '+I'")
            g.add(2, "else:")
            g.add(3, "oa({" + ", ".join([*items, "'_change': '-U'"]) + "}); ch = '+U'")
            if timed:
                g.add(3, "ta(t)")
        else:
            g.add(2, f"if a is None: a = st[k] = {code.init}")
        code.add_lines(g, 2)
        if self.on_disk:  # the accumulator changed in place: write it back
            g.add(2, "st[k] = a")
        if op.changelog:
            g.add(2, "oa({" + ", ".join([*items, "'_change': ch"]) + "})")
            if timed:
                g.add(2, "ta(t)")
        else:
            g.add(2, "oa({" + ", ".join(items) + "})")
        g.add(1, "return out")
        self._fn, self._filename = g.compile(f"aggregate:{node.name}", env, "_push")

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        tout: list[int] | None = [] if self.changelog and times is not None else None
        try:
            out = self._fn(records, times, self.state, tout)
        except Exception as exc:
            raise self._fail(exc) from exc
        self.emit(out, tout if self.changelog else times)

    def snapshot(self) -> Any:
        return {ON_DISK: True} if self.on_disk else {"state": self.state}

    def restore(self, state: Any) -> None:
        _restore_keyed(self, state)


class ReduceOperator(_GeneratedKeyed):
    """Running reduce per key: every record emits ``fn(previous, record)``."""

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, 1)
        op = node.op
        assert isinstance(op, ReduceOp)
        self.on_disk = rt.state.on_disk
        self.state: KeyedMap = rt.state.keyed_map(node.name, "acc") if self.on_disk else {}
        env: dict[str, Any] = {"_fn": op.fn, "_MISSING": _MISSING, "_PLAIN": _PLAIN_KEYS, "_check": check_key}
        g = Generated()
        g.add(0, "def _push(recs, times, st):")
        g.add(1, "out = []; oa = out.append")
        g.add(1, "for r, t in zip(recs, times):" if timed else "for r in recs:")
        g.add(2, f"k = {key_expr(op.key, env)}")
        if self.on_disk:
            g.add(2, "if type(k) not in _PLAIN: _check(k)")
        g.add(2, "a = st.get(k, _MISSING)")
        g.add(2, "a = r if a is _MISSING else _fn(a, r)")
        g.add(2, "st[k] = a")
        g.add(2, "oa(a)")
        g.add(1, "return out")
        self._fn, self._filename = g.compile(f"reduce:{node.name}", env, "_push")

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        try:
            out = self._fn(records, times, self.state)
        except Exception as exc:
            raise self._fail(exc) from exc
        self.emit(out, times)

    def snapshot(self) -> Any:
        return {ON_DISK: True} if self.on_disk else {"state": self.state}

    def restore(self, state: Any) -> None:
        _restore_keyed(self, state)


def _restore_keyed(op: AggregateOperator | ReduceOperator, state: Any) -> None:
    """A running aggregate's or reduce's state: on disk the backend has restored it already (a
    snapshot taken in memory is loaded into the backend's map); in memory, the snapshot's dict."""
    if not op.on_disk:
        check_not_on_disk(op.node, state)
        op.state = state["state"]
    elif not state.get(ON_DISK):
        op.state.clear()
        op.state.update(state["state"])


_MISSING = object()
#: key types that need no check before they reach the state backend (tuples are checked per item)
_PLAIN_KEYS = frozenset({str, int})


# -- process functions ----------------------------------------------------------------


class TimerService:
    """Event-time and processing-time timers of the current key (``ctx.timers``)."""

    __slots__ = ("_op",)

    def __init__(self, op: ProcessOperator) -> None:
        self._op = op

    def register_event_time(self, timestamp: int) -> None:
        """Call ``on_timer`` once the watermark reaches ``timestamp`` (ms)."""
        self._op._register(self._op.event_timers, self._op.event_set, timestamp)

    def register_processing_time(self, timestamp: int) -> None:
        """Call ``on_timer`` once the clock reaches ``timestamp`` (ms since the epoch)."""
        self._op._register(self._op.proc_timers, self._op.proc_set, timestamp)

    def delete_event_time(self, timestamp: int) -> None:
        self._op.event_set.discard((timestamp, self._op.ctx.key))

    def delete_processing_time(self, timestamp: int) -> None:
        self._op.proc_set.discard((timestamp, self._op.ctx.key))

    def current_watermark(self) -> int:
        return self._op.wm

    def current_processing_time(self) -> int:
        return self._op.rt.clock.now_ms()


class Context:
    """What a process function sees: the key, the time, its state, timers, and ``emit``.

    ``timestamp`` is the event time of the record (or the time of the timer that
    fired); ``time_domain`` is ``"record"``, ``"event"`` (an event-time timer) or
    ``"processing"`` (a processing-time timer).
    """

    __slots__ = ("_op", "key", "state", "time_domain", "timers", "timestamp")

    def __init__(self, op: ProcessOperator) -> None:
        self._op = op
        self.key: Any = None
        self.timestamp: int | None = None
        self.time_domain = "record"
        self.state: dict[str, Any] = {}
        self.timers = TimerService(op)

    @property
    def watermark(self) -> int:
        """The step's current event-time watermark."""
        return self._op.wm

    def emit(self, value: Any, *, timestamp: int | None = None) -> None:
        """Send ``value`` downstream at event time ``timestamp``.

        The default is the current ``ctx.timestamp``: the record's event time, or
        the time of the timer that fired. A processing-time timer's time is wall
        clock time; give ``timestamp=`` when its output feeds event-time windows.
        """
        op = self._op
        op.out.append(value)
        if op.timed:
            ts = self.timestamp if timestamp is None else timestamp
            op.tout.append(op.wm if ts is None else ts)


class _Handle:
    __slots__ = ("_event", "_name", "_op", "_store", "_ttl")

    def __init__(self, op: ProcessOperator, name: str, spec: StateSpec) -> None:
        self._op = op
        self._name = name
        self._store: KeyedMap = op.stores[name]
        self._ttl = spec.ttl_ms
        self._event = spec.ttl_time == "event"

    def _now(self) -> int:
        if self._event:  # event time: the record's (or event timer's) time; else the watermark
            ctx = self._op.ctx
            ts = ctx.timestamp
            return ts if ts is not None and ctx.time_domain != "processing" else self._op.wm
        return self._op.rt.clock.now_ms()

    def _get(self) -> Any:
        key = self._op.ctx.key
        entry = self._store.get(key, _MISSING)
        if entry is _MISSING or self._ttl is None:
            return entry
        value, expires = entry
        if self._now() >= expires:
            if not self._event:
                del self._store[key]
            return _MISSING
        return value

    def _set(self, value: Any) -> None:
        key = self._op.ctx.key
        if self._ttl is None:
            self._store[key] = value
            return
        expires = self._now() + self._ttl
        self._store[key] = (value, expires)
        self._op._schedule_cleanup(expires, self._name, key, self._event)

    def clear(self) -> None:
        self._store.pop(self._op.ctx.key, None)


class _ValueHandle(_Handle):
    __slots__ = ("_default",)

    def __init__(self, op: ProcessOperator, name: str, spec: ValueStateSpec) -> None:
        super().__init__(op, name, spec)
        self._default = spec.default

    def value(self) -> Any:
        v = self._get()
        return self._default if v is _MISSING else v

    def update(self, value: Any) -> None:
        self._set(value)


class _ListHandle(_Handle):
    def get(self) -> list[Any]:
        v = self._get()
        return [] if v is _MISSING else list(v)

    def add(self, value: Any) -> None:
        v = self._get()
        self._set([value] if v is _MISSING else [*v, value] if self._ttl is not None else _append(v, value))

    def update(self, values: list[Any]) -> None:
        self._set(list(values))


def _append(lst: list[Any], value: Any) -> list[Any]:
    lst.append(value)
    return lst


class _MapHandle(_Handle):
    def _dict(self) -> dict[Any, Any]:
        v = self._get()
        return {} if v is _MISSING else v

    def get(self, key: Any, default: Any = None) -> Any:
        return self._dict().get(key, default)

    def put(self, key: Any, value: Any) -> None:
        d = dict(self._dict()) if self._ttl is not None else self._dict()
        d[key] = value
        self._set(d)

    def remove(self, key: Any) -> None:
        d = self._dict()
        if key in d:
            d = dict(d)
            del d[key]
            self._set(d) if d else self.clear()

    def contains(self, key: Any) -> bool:
        return key in self._dict()

    def items(self) -> list[tuple[Any, Any]]:
        return list(self._dict().items())


class ProcessOperator(Operator):
    """Runs ``fn(ctx, record)`` per record and ``on_timer(ctx, ts)`` per timer, per key."""

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, 1)
        op = node.op
        assert isinstance(op, ProcessOp)
        self.fn = op.fn
        self.on_timer = op.on_timer
        self.timed = timed
        self.key = compile_key(op.key)
        self.out: list[Any] = []
        self.tout: list[int] = []
        self.event_timers: list[tuple[int, int, Any]] = []
        self.event_set: set[tuple[int, Any]] = set()
        self.proc_timers: list[tuple[int, int, Any]] = []
        self.proc_set: set[tuple[int, Any]] = set()
        self.cleanup: list[tuple[int, int, str, Any]] = []
        self.proc_cleanup: list[tuple[int, int, str, Any]] = []
        self._seq = itertools.count()
        self.specs = dict(op.state)
        self.stores: dict[str, KeyedMap] = {name: rt.state.keyed_map(node.name, name) for name in self.specs}
        self.ctx = Context(self)
        self._bind_handles()

    def _bind_handles(self) -> None:
        handles: dict[str, Any] = {}
        for name, spec in self.specs.items():
            if isinstance(spec, ValueStateSpec):
                handles[name] = _ValueHandle(self, name, spec)
            elif isinstance(spec, ListStateSpec):
                handles[name] = _ListHandle(self, name, spec)
            elif isinstance(spec, MapStateSpec):
                handles[name] = _MapHandle(self, name, spec)
        self.ctx.state = handles

    def _register(self, heap: list[tuple[int, int, Any]], live: set[tuple[int, Any]], ts: int) -> None:
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise MillstreamError(f"timer time must be an int of milliseconds, not {ts!r}")
        entry = (ts, self.ctx.key)
        if entry not in live:
            live.add(entry)
            heapq.heappush(heap, (ts, next(self._seq), self.ctx.key))

    def _schedule_cleanup(self, expires: int, name: str, key: Any, event: bool) -> None:
        heapq.heappush(self.cleanup if event else self.proc_cleanup, (expires, next(self._seq), name, key))

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        ctx = self.ctx
        ctx.time_domain = "record"
        fn = self.fn
        keyf = self.key
        r: Any = None
        t: int | None = None
        k: Any = None
        try:
            if times is None:
                ctx.timestamp = None  # a timer may have set it
                for r in records:
                    ctx.key = k = keyf(r)
                    if type(k) not in _PLAIN_KEYS:
                        check_key(k)
                    fn(ctx, r)
            else:
                for r, t in zip(records, times, strict=True):
                    ctx.key = k = keyf(r)
                    if type(k) not in _PLAIN_KEYS:
                        check_key(k)
                    ctx.timestamp = t
                    fn(ctx, r)
        except Exception as exc:
            raise self.rt.step_error(self.node, exc, record=r, key=k, has_key=True, event_time=t) from exc
        self._flush()

    def _flush(self) -> None:
        if self.out:
            out, tout = self.out, self.tout
            self.out, self.tout = [], []
            self.emit(out, tout if self.timed else None)

    def _fire(self, heap: list[tuple[int, int, Any]], live: set[tuple[int, Any]], upto: int, domain: str) -> None:
        ctx = self.ctx
        while heap and heap[0][0] <= upto:
            ts, _, key = heapq.heappop(heap)
            if (ts, key) not in live:
                continue
            live.discard((ts, key))
            if self.on_timer is None:
                continue
            ctx.key = key
            ctx.timestamp = ts
            ctx.time_domain = domain
            try:
                self.on_timer(ctx, ts)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, key=key, has_key=True, event_time=ts) from exc

    def _expire(self, heap: list[tuple[int, int, str, Any]], upto: int) -> None:
        while heap and heap[0][0] <= upto:
            _, _, name, key = heapq.heappop(heap)
            store = self.stores[name]
            entry = store.get(key)
            if entry is not None and entry[1] <= upto:
                del store[key]

    def on_watermark(self, wm: int) -> None:
        self._fire(self.event_timers, self.event_set, wm, "event")
        self._expire(self.cleanup, wm)
        self._flush()

    def on_processing_time(self, now_ms: int) -> None:
        self._fire(self.proc_timers, self.proc_set, now_ms, "processing")
        self._expire(self.proc_cleanup, now_ms)
        self._flush()

    def next_processing_timer(self) -> int | None:
        nxt = [h[0][0] for h in (self.proc_timers, self.proc_cleanup) if h]
        return min(nxt) if nxt else None

    def snapshot(self) -> Any:
        # the stores are the state backend's: the job snapshots them once, by key group
        return {
            "event_timers": list(self.event_set),
            "proc_timers": list(self.proc_set),
            "cleanup": self.cleanup,
            "proc_cleanup": self.proc_cleanup,
        }

    def restore(self, state: Any) -> None:
        for name, entries in state.get("stores", {}).items():  # a checkpoint from before state backends
            store = self.stores.get(name)
            if store is not None:
                store.clear()
                store.update(entries)
        self.cleanup = list(state["cleanup"])
        self.proc_cleanup = list(state["proc_cleanup"])
        # new heap entries must not tie with restored ones on (time, seq) and compare names and keys
        self._seq = itertools.count(max((e[1] for e in self.cleanup + self.proc_cleanup), default=-1) + 1)
        for heap, live, items in ((self.event_timers, self.event_set, state["event_timers"]),
                                  (self.proc_timers, self.proc_set, state["proc_timers"])):
            for ts, key in items:
                live.add((ts, key))
                heapq.heappush(heap, (ts, next(self._seq), key))
        self._bind_handles()
