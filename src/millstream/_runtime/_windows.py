"""Window operators: sliced time windows (tumbling, sliding), sessions, and count windows.

Tumbling and sliding windows share one design: each event updates exactly one
*slice* of width gcd(size, slide); a window is the merge of its slices when it
fires. The watermark fires windows (a timer per window end), so windows close
even when no further event of their key arrives.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from millstream._plan import KeySpec, Node, WindowOp
from millstream._time import MAX_WATERMARK, MIN_WATERMARK
from millstream.agg import Aggregation
from millstream.windows import (
    FIRE,
    GLOBAL_WINDOW,
    PURGE,
    CountWindow,
    GlobalWindow,
    SessionWindow,
    SlidingWindow,
    Trigger,
    TriggerResult,
    TumblingWindow,
    Window,
    _default_trigger,
)

from ._aggcode import AggCode, compile_key, key_expr, key_items
from ._base import Operator, Runtime, check_not_on_disk
from ._codegen import Generated, frame_local


@dataclass(frozen=True)
class _ReduceAgg(Aggregation):
    """A window reduce as an aggregation whose accumulator is the reduced record."""

    fn: Callable[[Any, Any], Any] | None = None
    kind: ClassVar[str] = "reduce"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "_NONE"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        env[f"{p}fn"] = self.fn
        env["_NONE"] = _NONE
        return [f"{slot} = {v} if {slot} is _NONE else {p}fn({slot}, {v})"]

    def merge(self, a: Any, b: Any) -> Any:
        if a is _NONE:
            return b
        if b is _NONE:
            return a
        assert self.fn is not None
        return self.fn(a, b)


@dataclass(frozen=True)
class _CollectAgg(Aggregation):
    """A window process function's accumulator: the records and their times."""

    kind: ClassVar[str] = "collect"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "[]"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        return [f"{slot}.append(({t}, {v}))"]

    def merge(self, a: Any, b: Any) -> Any:
        return a + b


_NONE = object()


class _Finisher:
    """Turns a window's accumulator into output records."""

    def __init__(self, op: WindowOp, code: AggCode) -> None:
        self.op = op
        env = code.env
        g = Generated()
        g.add(0, "def _row(k, ws, we, a):")
        items = [*key_items(op.key), "'window_start': ws", "'window_end': we"]
        if op.aggs:
            items += code.result_items()
        g.add(1, "return {" + ", ".join(items) + "}")
        g.add(0, "def _rows(items, ws, we):")
        g.add(1, "return [{" + ", ".join(items) + "} for k, a in items]")
        self.row, _ = g.compile("window-row", env, "_row")
        self.rows_fast = env["_rows"] if op.aggs else None

    def __call__(self, k: Any, ws: int | None, we: int | None, acc: list[Any]) -> list[Any]:
        op = self.op
        if op.aggs:
            return [self.row(k, ws, we, acc)]
        if op.reduce_fn is not None:
            v = acc[0]
            if isinstance(v, dict):
                return [{**v, "window_start": ws, "window_end": we}]
            row = self.row(k, ws, we, acc)
            row["value"] = v
            return [row]
        assert op.process_fn is not None
        timed = ws is not None and all(t is not None for t, _ in acc[0])
        items = sorted(acc[0], key=_first) if timed else acc[0]  # untimed or global: arrival order
        out = op.process_fn(k, Window(ws, we), [r for _, r in items])  # type: ignore[arg-type]
        if out is None:
            return []
        if isinstance(out, dict):
            return [out]
        return list(out)


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def window_aggs(op: WindowOp) -> tuple[tuple[str, Aggregation], ...]:
    if op.aggs:
        return op.aggs
    if op.reduce_fn is not None:
        return (("value", _ReduceAgg(None, fn=op.reduce_fn)),)
    return (("records", _CollectAgg(None)),)


class _WindowBase(Operator):
    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, 1)
        op = node.op
        assert isinstance(op, WindowOp)
        self.op = op
        self.timed = timed
        self.lateness = op.allowed_lateness_ms
        self.code = AggCode(window_aggs(op), timed)
        self.finish = _Finisher(op, self.code)
        self.add1 = self.code.compile_add1()
        self.new = self.code.compile_new()
        self.merge = self.code.compile_merge()
        self.keyf = compile_key(op.key)
        self.late_outs: list[tuple[Operator, int]] = []
        self.late_count = 0
        self.refired = 0
        self._out: list[Any] = []
        self._tout: list[int] = []
        self._late: list[Any] = []
        self._late_t: list[int] = []

    def _emit_windows(self, items: Any, ws: int, we: int) -> None:
        """Emit the results of one window for many keys: ``items`` are (key, accumulator) pairs."""
        fast = self.finish.rows_fast
        if fast is not None:
            try:
                rows = fast(items, ws, we)
            except Exception:  # noqa: BLE001 - redo one key at a time to name the failing key
                rows = None
            if rows is not None:
                self._out.extend(rows)
                self._tout.extend([we - 1] * len(rows))
                return
        for k, acc in items:
            self._emit_window(k, ws, we, acc)

    def _emit_window(self, k: Any, ws: int, we: int, acc: list[Any]) -> None:
        try:
            rows = self.finish(k, ws, we, acc)
        except Exception as exc:
            raise self.rt.step_error(self.node, exc, key=k, has_key=self.op.key is not None,
                                     event_time=we - 1) from exc
        self._out.extend(rows)
        self._tout.extend([we - 1] * len(rows))

    def _advance(self) -> None:
        before = self.wm
        super()._advance()
        if self.wm > before:  # the late side output follows the step's watermark too
            for op, port in self.late_outs:
                op.watermark(port, self.wm)

    def _to_late(self, r: Any, t: int) -> None:
        self.late_count += 1
        self._late.append(r)
        self._late_t.append(t)

    def _flush(self) -> None:
        if self._out:
            out, tout = self._out, self._tout
            self._out, self._tout = [], []
            self.emit(out, tout if self.timed else None)
        if self._late:
            late, late_t = self._late, self._late_t
            self._late, self._late_t = [], []
            if self.muted:
                return
            for op, port in self.late_outs:
                op.push(port, late, late_t)

    def _fail(self, exc: Exception, filename: str) -> BaseException:
        tb = exc.__traceback__
        t = frame_local(tb, filename, "t")
        return self.rt.step_error(self.node, exc, record=frame_local(tb, filename, "r"),
                                  key=frame_local(tb, filename, "k"), has_key=self.op.key is not None,
                                  event_time=t if isinstance(t, int) else None)

    def metrics(self) -> dict[str, int]:
        return {"late": self.late_count, "refired": self.refired}


class SliceTimers:
    """When windows over slices fire and when slices can go: shared by the sliced windows and the
    window joins. Windows are ``[start, start + size)`` every ``slide`` from ``offset``; a window
    fires once the watermark reaches ``end - 1``, a slice goes once its last window is
    ``lateness`` past that."""

    def __init__(self, size: int, slide: int, offset: int, lateness: int = 0) -> None:
        self.size, self.slide, self.offset, self.lateness = size, slide, offset, lateness
        self.fire_heap: list[int] = []
        self.fire_set: set[int] = set()
        self.cleanup_heap: list[tuple[int, int]] = []

    def last_start(self, s: int) -> int:
        """The start of the last window that holds slice ``s``."""
        return s - (s - self.offset) % self.slide

    def ends(self, s: int) -> list[int]:
        """The ends of the windows that hold slice ``s``."""
        ws = self.last_start(s)
        ends = []
        while ws + self.size > s:
            ends.append(ws + self.size)
            ws -= self.slide
        return ends

    def expiry(self, s: int) -> int:
        """The watermark at which slice ``s`` is of no more use."""
        return self.last_start(s) + self.size - 1 + self.lateness

    def add_slice(self, s: int, wm: int) -> None:
        """A new slice: arm the windows holding it that have not fired, and its cleanup."""
        for e in self.ends(s):
            if e - 1 > wm and e not in self.fire_set:
                self.fire_set.add(e)
                heapq.heappush(self.fire_heap, e)
        heapq.heappush(self.cleanup_heap, (self.expiry(s), s))

    def due(self, wm: int) -> list[int]:
        """The ends of the windows the watermark ``wm`` fires, in order (taken off the timers)."""
        heap, out = self.fire_heap, []
        while heap and heap[0] - 1 <= wm:
            e = heapq.heappop(heap)
            self.fire_set.discard(e)
            out.append(e)
        return out

    def expired(self, wm: int) -> list[int]:
        """The slices that can go at watermark ``wm`` (taken off the timers)."""
        cleanup, out = self.cleanup_heap, []
        while cleanup and cleanup[0][0] <= wm:
            out.append(heapq.heappop(cleanup)[1])
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"fire": sorted(self.fire_set), "cleanup": list(self.cleanup_heap)}

    def restore(self, state: dict[str, Any]) -> None:
        self.fire_set = set(state["fire"])
        self.fire_heap = sorted(self.fire_set)
        self.cleanup_heap = sorted(state["cleanup"])


class SlicedWindowOperator(_WindowBase):
    """Tumbling and sliding event-time windows over slices."""

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, timed)
        a = self.op.assigner
        assert isinstance(a, TumblingWindow | SlidingWindow)
        self.size = a.size_ms
        self.slide = a.slide_ms
        self.offset = a.offset_ms
        self.slice = a.slice_ms
        self.slices: dict[int, dict[Any, list[Any]]] = {}
        self.timers = SliceTimers(self.size, self.slide, self.offset, self.lateness)
        code = self.code
        env = code.env
        env["_new_slice"] = self._new_slice
        env["_slow"] = self._slow
        g = Generated()
        g.add(0, "def _push(recs, times, wm, slices):")
        g.add(1, "last_s = None; d = None")
        g.add(1, "for r, t in zip(recs, times):")
        g.add(2, "if t <= wm:")
        # in its place among the chunk's records, so that the answer (down to which of two equal keys,
        # 1 and 1.0, names a window) does not depend on where chunks begin
        g.add(3, "_slow(((r, t),)); continue")
        g.add(2, f"k = {key_expr(self.op.key, env)}")
        g.add(2, f"s = t - (t - {self.offset}) % {self.slice}")
        g.add(2, "if s != last_s:")
        g.add(3, "d = slices.get(s)")
        g.add(3, "if d is None: d = slices[s] = {}; _new_slice(s)")
        g.add(3, "last_s = s")
        g.add(2, "a = d.get(k)")
        g.add(2, f"if a is None: a = d[k] = {code.init}")
        code.add_lines(g, 2)
        self._push, self._filename = g.compile(f"window:{node.name}", env, "_push")

    def _new_slice(self, s: int) -> None:
        self.timers.add_slice(s, self.wm)

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        assert times is not None
        try:
            self._push(records, times, self.wm, self.slices)
        except Exception as exc:
            raise self._fail(exc, self._filename) from exc
        self._flush()

    def _slow(self, items: Iterable[tuple[Any, int]]) -> None:
        """Records at or behind the watermark: late, or re-firing windows within the allowed lateness."""
        wm = self.wm
        for r, t in items:
            s = t - (t - self.offset) % self.slice
            if self.timers.expiry(s) <= wm:
                self._to_late(r, t)
                continue
            k = None
            try:
                k = self.keyf(r)
                d = self.slices.get(s)
                if d is None:
                    d = self.slices[s] = {}
                    self._new_slice(s)
                a = d.get(k)
                if a is None:
                    a = d[k] = self.new()
                self.add1(a, r, t)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, key=k, has_key=self.op.key is not None,
                                         event_time=t) from exc
            for e in self.timers.ends(s):
                if e - 1 <= wm < e - 1 + self.lateness:
                    self.refired += 1
                    self._emit_window(k, e - self.size, e, self._merged_for_key(k, e))

    def _merged_for_key(self, k: Any, e: int) -> list[Any]:
        acc: list[Any] | None = None
        for s in range(e - self.size, e, self.slice):
            d = self.slices.get(s)
            if d is not None and k in d:
                try:
                    acc = d[k] if acc is None else self.merge(acc, d[k])
                except Exception as exc:
                    raise self._merge_error(exc, k, e) from exc
        assert acc is not None
        return acc

    def _merge_error(self, exc: Exception, k: Any, e: int) -> BaseException:
        """Slices of one window that cannot be merged (values of types that do not compare): the step,
        the key and the window, since no one record is to blame."""
        err = self.rt.step_error(self.node, exc, key=k, has_key=self.op.key is not None, event_time=e - 1)
        if hasattr(err, "add_note"):
            err.add_note(f"merging the slices of window [{e - self.size}, {e}) of this key: its records hold "
                         "values of types that cannot be combined")
        return err

    def on_watermark(self, wm: int) -> None:
        for e in self.timers.due(wm):
            self._fire(e)
        for s in self.timers.expired(wm):
            self.slices.pop(s, None)
        self._flush()

    def _fire(self, e: int) -> None:
        ws = e - self.size
        if self.slice == self.size:
            d = self.slices.get(ws)
            if d:
                self._emit_windows(d.items(), ws, e)
            return
        merged: dict[Any, list[Any]] = {}
        merge = self.merge
        for s in range(ws, e, self.slice):
            d = self.slices.get(s)
            if not d:
                continue
            if not merged:
                merged = dict(d)
                continue
            k = None
            try:
                for k, acc in d.items():
                    prev = merged.get(k)
                    merged[k] = acc if prev is None else merge(prev, acc)
            except Exception as exc:  # e.g. max over a str in one slice and a float in another
                raise self._merge_error(exc, k, e) from exc
        if merged:
            self._emit_windows(merged.items(), ws, e)

    def snapshot(self) -> Any:
        return {"slices": self.slices, **self.timers.snapshot(), "late": self.late_count}

    def restore(self, state: Any) -> None:
        check_not_on_disk(self.node, state)
        self.slices = state["slices"]
        self.timers.restore(state)
        self.late_count = state["late"]


class SessionWindowOperator(_WindowBase):
    """Per-key sessions that merge when an event bridges or touches them (events at most a gap apart).

    A session fires once the watermark has passed its end (``watermark >= end``): an event
    exactly at ``end`` would still join it, so firing earlier would make the result depend on
    arrival order.

    A session is ``[start, end, acc, timer]``: ``end`` is exclusive (last event +
    gap) and ``timer`` the id of its live timer. A session that grows keeps its
    timer; when the timer comes due it is re-armed at the session's new end, so
    the common case (an event inside the key's open session) costs no heap push.
    """

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, timed)
        a = self.op.assigner
        assert isinstance(a, SessionWindow)
        self.gap = a.gap_ms
        self.sessions: dict[Any, list[list[Any]]] = {}
        self.timers: list[tuple[int, int, int, Any]] = []  # (due end, timer id, start, key)
        self.cleanups: list[tuple[int, int, int, int, Any]] = []  # (time, seq, start, end, key)
        self._seq = itertools.count()

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        assert times is not None
        wm, gap = self.wm, self.gap
        keyf, add1, get = self.keyf, self.add1, self.sessions.get
        for r, t in zip(records, times, strict=True):
            k = None
            try:
                k = keyf(r)
                sessions = get(k)
                if sessions is not None and len(sessions) == 1:
                    sess = sessions[0]
                    if sess[0] <= t <= sess[1] and sess[1] > wm:
                        # inside the key's only open session: grow it in place, its timer re-arms lazily
                        if t + gap > sess[1]:
                            sess[1] = t + gap
                        add1(sess[2], r, t)
                        continue
                self._add_slow(k, r, t)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, key=k, has_key=self.op.key is not None,
                                         event_time=t) from exc
        self._flush()

    def _add_slow(self, k: Any, r: Any, t: int) -> None:
        """Create or merge sessions for one record; re-fire or send late as the watermark says."""
        wm, lateness = self.wm, self.lateness
        sessions = self.sessions.get(k, [])  # a late record of a new key leaves no entry
        start, end = t, t + self.gap
        keep = []
        touching = []
        for sess in sessions:
            if sess[0] <= end and start <= sess[1]:  # overlap or touch: events at most gap apart
                touching.append(sess)
            else:
                keep.append(sess)
        for sess in touching:
            start = min(start, sess[0])
            end = max(end, sess[1])
        if end + lateness <= wm:
            self._to_late(r, t)
            return
        acc = touching[0][2] if touching else self.new()
        for sess in touching[1:]:
            acc = self.merge(acc, sess[2])
        self.add1(acc, r, t)
        merged = [start, end, acc, None]
        keep.append(merged)
        self.sessions[k] = keep
        if end <= wm:  # within the allowed lateness of a fired session: fire again now
            self.refired += 1
            self._emit_window(k, start, end, acc)
            heapq.heappush(self.cleanups, (end + lateness, next(self._seq), start, end, k))
        else:
            self._arm(merged, k)

    def _arm(self, sess: list[Any], k: Any) -> None:
        timer = next(self._seq)
        sess[3] = timer
        heapq.heappush(self.timers, (sess[1], timer, sess[0], k))

    def _find(self, k: Any, start: int, end: int | None = None, timer: int | None = None) -> list[Any] | None:
        for sess in self.sessions.get(k, ()):
            if sess[0] == start and (end is None or sess[1] == end) and (timer is None or sess[3] == timer):
                return sess
        return None

    def _remove(self, k: Any, sess: list[Any]) -> None:
        lst = self.sessions[k]
        lst.remove(sess)
        if not lst:
            del self.sessions[k]

    def on_watermark(self, wm: int) -> None:
        timers = self.timers
        while timers and timers[0][0] <= wm:
            _, timer, start, k = heapq.heappop(timers)
            sess = self._find(k, start, timer=timer)
            if sess is None:
                continue  # merged into another session since
            if sess[1] > wm:
                self._arm(sess, k)  # the session grew after this timer was set
                continue
            sess[3] = None
            self._emit_window(k, sess[0], sess[1], sess[2])
            if self.lateness:
                heapq.heappush(self.cleanups, (sess[1] + self.lateness, next(self._seq), start, sess[1], k))
            else:
                self._remove(k, sess)
        while self.cleanups and self.cleanups[0][0] <= wm:
            _, _, start, end, k = heapq.heappop(self.cleanups)
            sess = self._find(k, start, end)
            if sess is not None and sess[1] + self.lateness <= wm:
                self._remove(k, sess)
        self._flush()

    def snapshot(self) -> Any:
        return {"sessions": self.sessions, "timers": list(self.timers), "cleanups": list(self.cleanups),
                "late": self.late_count}

    def restore(self, state: Any) -> None:
        check_not_on_disk(self.node, state)
        self.sessions = state["sessions"]
        self.timers = list(state["timers"])
        self.cleanups = list(state["cleanups"])
        heapq.heapify(self.timers)
        heapq.heapify(self.cleanups)
        self.late_count = state["late"]
        self._seq = itertools.count(max([e[1] for e in self.timers + self.cleanups], default=0) + 1)


class CountWindowOperator(_WindowBase):
    """Every ``size`` events of a key (sliding by ``every``); fires only when full."""

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, timed)
        a = self.op.assigner
        assert isinstance(a, CountWindow)
        self.size = a.size
        self.every = a.every
        self.buffers: dict[Any, deque[tuple[Any, Any]]] = {}
        self.counts: dict[Any, int] = {}

    def _fire_count(self, k: Any, buf: Any, timed: bool) -> None:
        """The window of key ``k``'s last ``size`` records (``buf``) is full: aggregate it and emit; a
        tumbling count window (``every == size``) starts over. Shared with the on-disk operator."""
        acc = self.new()
        for rr, tt in buf:
            self.add1(acc, rr, tt)
        if timed:
            ws, we = min(tt for _, tt in buf), max(tt for _, tt in buf) + 1
        else:
            ws = we = None
        rows = self.finish(k, ws, we, acc)
        self._out.extend(rows)
        if timed:
            self._tout.extend([we - 1] * len(rows))
        if self.every == self.size:
            buf.clear()

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        size, every = self.size, self.every
        ts: Any = times if times is not None else itertools.repeat(None)
        k: Any = None
        for r, t in zip(records, ts):
            try:
                k = self.keyf(r)
                buf = self.buffers.get(k)
                if buf is None:
                    buf = self.buffers[k] = deque(maxlen=size)
                buf.append((r, t))
                n = self.counts.get(k, 0) + 1
                self.counts[k] = n
                if n >= size and (n - size) % every == 0:
                    self._fire_count(k, buf, times is not None)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, key=k, has_key=True, event_time=t) from exc
        self._flush()

    def snapshot(self) -> Any:
        return {"buffers": {k: list(v) for k, v in self.buffers.items()}, "counts": self.counts}

    def restore(self, state: Any) -> None:
        check_not_on_disk(self.node, state)
        self.buffers = {k: deque(v, maxlen=self.size) for k, v in state["buffers"].items()}
        self.counts = state["counts"]


_EVENT, _PROC = 0, 1


class _TriggerCtx:
    """The :class:`~millstream.windows.TriggerContext` of one operator, pointed at a key and window per call."""

    def __init__(self, op: TriggeredWindowOperator) -> None:
        self._op = op
        self.key: Any = None
        self.wkey: tuple[int, int] = (0, 0)
        self.state: dict[str, Any] = {}
        self.merged_states: list[dict[str, Any]] = []

    @property
    def watermark(self) -> int:
        return self._op.wm

    @property
    def processing_time(self) -> int:
        return self._op.rt.clock.now_ms()

    def due(self, window: Window) -> int:
        return window.end if self._op.merging else window.end - 1

    def register_event_time_timer(self, time: int) -> None:
        self._op.add_timer(_EVENT, time, self.key, self.wkey)

    def register_processing_time_timer(self, time: int) -> None:
        self._op.add_timer(_PROC, time, self.key, self.wkey)

    def delete_event_time_timer(self, time: int) -> None:
        self._op.delete_timer(_EVENT, time, self.key, self.wkey)

    def delete_processing_time_timer(self, time: int) -> None:
        self._op.delete_timer(_PROC, time, self.key, self.wkey)


class TriggeredWindowOperator(_WindowBase):
    """The general window operator: windows per key, each with its contents, its trigger's state and
    its timers, fired by a trigger (by default at the window's end).

    It runs global windows, processing-time windows, staggered windows, sessions with a gap per
    record, and every window given a trigger. A window is an entry
    ``[accumulator, trigger state, records since the last purge, highest event time, timers]``
    under its ``(start, end)``. An event-time window expires (contents, trigger state and timers
    dropped) when the watermark reaches its due time plus the allowed lateness; a record whose
    windows have all expired is late. A processing-time window expires at its end - 1 on the
    clock, and every window left fires at the end of a bounded input.
    """

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, timed)
        a = self.op.assigner
        self.assigner = a
        self.trigger: Trigger = self.op.trigger or _default_trigger(a)
        self.merging = isinstance(a, SessionWindow)
        self.is_global = isinstance(a, GlobalWindow)
        self.proc = isinstance(a, TumblingWindow | SlidingWindow) and a.processing_time
        self.event = a.event_time
        self.wins: dict[Any, dict[tuple[int, int], list[Any]]] = {}
        self.timer_set: set[tuple[int, int, Any, tuple[int, int]]] = set()
        self.heaps: tuple[list[Any], list[Any]] = ([], [])
        self._seq = itertools.count()
        self._firing: set[Any] | None = None
        self.ctx = _TriggerCtx(self)

    # -- timers ------------------------------------------------------------------------------------
    def add_timer(self, domain: int, time: int, k: Any, wkey: tuple[int, int]) -> None:
        tk = (domain, time, k, wkey)
        if tk in self.timer_set or (self._firing is not None and tk in self._firing):
            return
        entry = self.wins.get(k, {}).get(wkey)
        if entry is None:
            return
        self.timer_set.add(tk)
        entry[4].add((domain, time))
        heapq.heappush(self.heaps[domain], (time, next(self._seq), k, wkey))

    def delete_timer(self, domain: int, time: int, k: Any, wkey: tuple[int, int]) -> None:
        self.timer_set.discard((domain, time, k, wkey))
        entry = self.wins.get(k, {}).get(wkey)
        if entry is not None:
            entry[4].discard((domain, time))

    def _cleanup_time(self, wkey: tuple[int, int]) -> int | None:
        if self.is_global:
            return None
        if self.proc:
            return wkey[1] - 1
        return (wkey[1] if self.merging else wkey[1] - 1) + self.lateness

    def _fire_timers(self, domain: int, upto: int) -> None:
        heap = self.heaps[domain]
        fired: set[Any] = set()
        self._firing = fired
        try:
            while heap and heap[0][0] <= upto:
                time, _, k, wkey = heapq.heappop(heap)
                tk = (domain, time, k, wkey)
                if tk not in self.timer_set:
                    continue
                self.timer_set.discard(tk)
                fired.add(tk)
                entry = self.wins.get(k, {}).get(wkey)
                if entry is None:
                    continue
                entry[4].discard((domain, time))
                win = self._window(wkey)
                self._point(k, wkey, entry)
                try:
                    if domain == _EVENT:
                        res = self.trigger.on_event_time(time, win, self.ctx)
                    else:
                        res = self.trigger.on_processing_time(time, win, self.ctx)
                    self._act(res, k, wkey, entry)
                except Exception as exc:
                    raise self.rt.step_error(self.node, exc, key=k, has_key=self.op.key is not None,
                                             event_time=time if domain == _EVENT else None) from exc
                if (domain == _PROC) == self.proc and time == self._cleanup_time(wkey):
                    self._clear(k, wkey)
        finally:
            self._firing = None

    # -- windows -----------------------------------------------------------------------------------
    def _window(self, wkey: tuple[int, int]) -> Window:
        return GLOBAL_WINDOW if self.is_global else Window(*wkey)

    def _point(self, k: Any, wkey: tuple[int, int], entry: list[Any]) -> None:
        ctx = self.ctx
        ctx.key, ctx.wkey, ctx.state = k, wkey, entry[1]

    def _new_entry(self, k: Any, wkey: tuple[int, int]) -> list[Any]:
        entry = [self.new(), {}, 0, MIN_WATERMARK, set()]
        self.wins.setdefault(k, {})[wkey] = entry
        return entry

    def _clear(self, k: Any, wkey: tuple[int, int]) -> None:
        d = self.wins.get(k)
        if d is None:
            return
        entry = d.pop(wkey, None)
        if not d:
            del self.wins[k]
        if entry is not None:
            for domain, time in entry[4]:
                self.timer_set.discard((domain, time, k, wkey))

    def _act(self, res: TriggerResult, k: Any, wkey: tuple[int, int], entry: list[Any]) -> None:
        if res & FIRE and entry[2] > 0:
            ws, we = (None, None) if self.is_global else wkey
            rows = self.finish(k, ws, we, entry[0])
            self._out.extend(rows)
            if self.timed:
                t = entry[3] if (self.is_global or self.proc) else wkey[1] - 1
                self._tout.extend([t] * len(rows))
        if res & PURGE:
            entry[0], entry[2], entry[3] = self.new(), 0, MIN_WATERMARK

    def _assign(self, k: Any, r: Any, t: int | None, now: int) -> list[tuple[int, int]]:
        a = self.assigner
        if isinstance(a, GlobalWindow):
            return [(GLOBAL_WINDOW.start, GLOBAL_WINDOW.end)]
        if isinstance(a, TumblingWindow):
            at = now if a.processing_time else t
            assert at is not None
            off = a.offset_for(k) if a.stagger is not None else a.offset_ms
            s = at - (at - off) % a.size_ms
            return [(s, s + a.size_ms)]
        assert isinstance(a, SlidingWindow)
        at = now if a.processing_time else t
        assert at is not None
        s = at - (at - a.offset_ms) % a.slide_ms
        out = []
        while s > at - a.size_ms:
            out.append((s, s + a.size_ms))
            s -= a.slide_ms
        return out

    def _late_window(self, wkey: tuple[int, int]) -> bool:
        if not self.event or self.is_global:
            return False
        due = wkey[1] if self.merging else wkey[1] - 1
        return due + self.lateness <= self.wm

    def _add(self, k: Any, wkey: tuple[int, int], entry: list[Any], r: Any, t: int | None) -> None:
        self.add1(entry[0], r, t)
        entry[2] += 1
        if t is not None and t > entry[3]:
            entry[3] = t
        self._point(k, wkey, entry)
        res = self.trigger.on_element(r, t, self._window(wkey), self.ctx)
        self._act(res, k, wkey, entry)
        cleanup = self._cleanup_time(wkey)
        if cleanup is not None and k in self.wins and wkey in self.wins[k]:
            self.add_timer(_PROC if self.proc else _EVENT, cleanup, k, wkey)

    def _add_session(self, k: Any, r: Any, t: int) -> bool:
        a = self.assigner
        assert isinstance(a, SessionWindow)
        start, end = t, t + a.gap_of(r)
        d = self.wins.get(k, {})
        touching = [w for w in d if w[0] <= end and start <= w[1]]  # sessions that touch merge
        for w in touching:
            start, end = min(start, w[0]), max(end, w[1])
        wkey = (start, end)
        if self._late_window(wkey):
            return False
        if touching == [wkey]:
            entry = d[wkey]
        elif not touching:
            entry = self._new_entry(k, wkey)
        else:
            olds = [d[w] for w in touching]
            for w in touching:
                self._clear(k, w)
            entry = self._new_entry(k, wkey)
            acc = olds[0][0]
            for o in olds[1:]:
                acc = self.merge(acc, o[0])
            entry[0] = acc
            entry[2] = sum(o[2] for o in olds)
            entry[3] = max(o[3] for o in olds)
            self._point(k, wkey, entry)
            self.ctx.merged_states = [o[1] for o in olds]
            self.trigger.on_merge(self._window(wkey), self.ctx)
            self.ctx.merged_states = []
        self._add(k, wkey, entry, r, t)
        return True

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        now = self.rt.clock.now_ms() if self.proc else 0
        ts: Any = times if times is not None else itertools.repeat(None)
        keyf = self.keyf
        for r, t in zip(records, ts):
            k = None
            try:
                k = keyf(r)
                if self.merging:
                    if not self._add_session(k, r, t):
                        self._to_late(r, t)
                    continue
                added = False
                for wkey in self._assign(k, r, t, now):
                    if self._late_window(wkey):
                        continue
                    added = True
                    entry = self.wins.get(k, {}).get(wkey)
                    if entry is None:
                        entry = self._new_entry(k, wkey)
                    self._add(k, wkey, entry, r, t)
                if not added:
                    self._to_late(r, t)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, key=k, has_key=self.op.key is not None,
                                         event_time=t) from exc
        self._flush()

    def on_watermark(self, wm: int) -> None:
        self._fire_timers(_EVENT, wm)
        if wm >= MAX_WATERMARK and self.proc:  # the end of a bounded input fires every window
            self._fire_timers(_PROC, MAX_WATERMARK)
        self._flush()

    def on_processing_time(self, now_ms: int) -> None:
        self._fire_timers(_PROC, now_ms)
        self._flush()

    def next_processing_timer(self) -> int | None:
        heap = self.heaps[_PROC]
        return heap[0][0] if heap else None

    def snapshot(self) -> Any:
        # the live timers in firing order, so that a restored job fires equal times in the same order
        timers = [(domain, time, k, wkey) for domain in (_EVENT, _PROC)
                  for time, _, k, wkey in sorted(self.heaps[domain], key=_time_seq)
                  if (domain, time, k, wkey) in self.timer_set]
        return {"wins": self.wins, "timers": list(dict.fromkeys(timers)), "late": self.late_count}

    def restore(self, state: Any) -> None:
        self.wins = state["wins"]
        self.timer_set = set(state["timers"])
        self.heaps = ([], [])
        for domain, time, k, wkey in state["timers"]:
            self.heaps[domain].append((time, next(self._seq), k, wkey))
        for h in self.heaps:
            heapq.heapify(h)
        self.late_count = state["late"]


def _time_seq(entry: tuple[int, int, Any, Any]) -> tuple[int, int]:
    return entry[0], entry[1]


def make_window_operator(node: Node, rt: Runtime, timed: bool) -> _WindowBase:
    op = node.op
    assert isinstance(op, WindowOp)
    if op.triggered:  # in memory whatever the backend (its timers are per key and window)
        return TriggeredWindowOperator(node, rt, timed)
    if rt.state.on_disk:  # the state in the on-disk backend
        from . import _ondisk

        if isinstance(op.assigner, TumblingWindow | SlidingWindow):
            return _ondisk.DiskSlicedWindowOperator(node, rt, timed)
        if isinstance(op.assigner, SessionWindow):
            return _ondisk.DiskSessionWindowOperator(node, rt, timed)
        return _ondisk.DiskCountWindowOperator(node, rt, timed)
    if isinstance(op.assigner, TumblingWindow | SlidingWindow):
        return SlicedWindowOperator(node, rt, timed)
    if isinstance(op.assigner, SessionWindow):
        return SessionWindowOperator(node, rt, timed)
    return CountWindowOperator(node, rt, timed)


__all__ = ["KeySpec", "SliceTimers", "TriggeredWindowOperator", "make_window_operator"]
