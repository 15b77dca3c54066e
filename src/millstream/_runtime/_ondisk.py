"""Window and join operators whose state lives in an on-disk state backend (``state="lmdb://..."``).

The in-memory operators (:mod:`._windows`, :mod:`._joins`) keep their state in dicts: the fast
path, untouched. When the job's backend is on disk (``rt.state.on_disk``) the factories build the
subclasses here instead, which keep the same state in the backend's structures:

- a keyed map (``key -> value``): sessions of a key, count-window buffers, a join side's records;
- a namespaced map (``(namespace, key) -> value``): a slice's accumulators or records, scanned and
  dropped by namespace when a window fires or a slice expires, with no index of keys in memory;
- a timer queue (``(time, key)`` in time order): session ends, session cleanups, join expiry
  buckets, taken when the watermark reaches them.

What stays in memory is what there is one of per slice or window end, not per key: the slice
timers (:class:`._windows.SliceTimers`: window ends and slice expiries), the set of live slice
starts, a timer queue's least time per key group, the late counts. An operator's snapshot holds
those and a mark (:data:`._base.ON_DISK`); the backend checkpoints the rest with its own
incremental files. A snapshot taken in memory restores into these operators (its dicts are loaded
into the backend); one taken on disk does not restore into the in-memory operators (refused).

Firing reads a slice's entries in batches and sends the output downstream batch by batch, so a
window over every key of a large state never holds all of it, or all its output, in memory. The
answers are those of the in-memory operators; within one firing, the keys come in the store's
order (by key group and encoded key) rather than in the order they came.
"""

from __future__ import annotations

import heapq
import itertools
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Any

from millstream._plan import AggregateOp, JoinOp, Node, WindowOp
from millstream._state import check_key
from millstream.errors import PerformanceWarning

from ._base import ON_DISK, Runtime
from ._joins import PairJoinOperator, SessionWindowJoinOperator, SlicedWindowJoinOperator
from ._windows import CountWindowOperator, SessionWindowOperator, SlicedWindowOperator

_BATCH = 4096
_PLAIN = frozenset({str, int})
_order = itemgetter(0)


def _check(k: Any) -> None:
    if type(k) not in _PLAIN:
        check_key(k)


def _by_key(scans: list[Iterator[tuple[bytes, Any, Any]]]) -> Iterator[tuple[Any, list[tuple[int, Any]]]]:
    """Merge sorted scans (of several slices, or of both sides of a join) into
    ``(key, [(scan index, value), ...])`` per key, the values in scan order."""
    tagged = [_tag(i, scan) for i, scan in enumerate(scans)]
    cur: bytes | None = None
    key: Any = None
    vals: list[tuple[int, Any]] = []
    for o, i, k, v in heapq.merge(*tagged, key=_order):
        if o != cur:
            if cur is not None:
                yield key, vals
            cur, key, vals = o, k, []
        vals.append((i, v))
    if cur is not None:
        yield key, vals


def hands_over(node: Node, timed: bool, mode: str) -> bool:
    """Whether a step that micro-batch or batch mode would vectorise runs the native operator
    instead, because the job's state is on disk: the vectorised window, aggregate and join keep
    their state in memory (columns and frames), the native ones in the backend. Warns for the step."""
    from ._cagg import vectorisable_aggregate
    from ._cjoins import vectorisable_join
    from ._cwindows import vectorisable_window

    op = node.op
    if isinstance(op, WindowOp):
        vectorised = vectorisable_window(op, timed)
    elif isinstance(op, AggregateOp):
        vectorised = vectorisable_aggregate(op)
    elif isinstance(op, JoinOp):
        vectorised = vectorisable_join(op, timed)
    else:
        return False
    if vectorised:
        message = (f"step {node.name!r} runs per record in {mode} mode, not vectorised: the state is on disk "
                   "(state='lmdb://...'), which the per-record operator keeps there and the vectorised one "
                   "would keep in memory; use state='memory' for the vectorised operator when the state fits")
        filename, _, line = (node.location or "").rpartition(":")
        if filename and line.isdigit():
            warnings.warn_explicit(message, PerformanceWarning, filename, int(line), module="millstream")
        else:
            warnings.warn(message, PerformanceWarning, stacklevel=4)
    return vectorised


def _tag(i: int, scan: Iterator[tuple[bytes, Any, Any]]) -> Iterator[tuple[bytes, int, Any, Any]]:
    for o, k, v in scan:
        yield o, i, k, v


# -- windows ---------------------------------------------------------------------------------------


class DiskSlicedWindowOperator(SlicedWindowOperator):
    """Tumbling and sliding windows with each slice's accumulators under ``(slice start, key)``."""

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, timed)
        self.store = rt.state.namespaced_map(node.name, "slices")
        self.live: set[int] = set()  # slice starts holding state: one int per slice

    def _ensure(self, s: int) -> None:
        if s not in self.live:
            self.live.add(s)
            self._new_slice(s)

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        assert times is not None
        keyf, add1, new = self.keyf, self.add1, self.new
        get, put = self.store.get, self.store.__setitem__
        wm, off, width, live = self.wm, self.offset, self.slice, self.live
        last_s = None
        r: Any = None
        t: int | None = None
        k: Any = None
        try:
            for r, t in zip(records, times, strict=True):
                if t <= wm:
                    self._slow(((r, t),))
                    continue
                k = keyf(r)
                if type(k) not in _PLAIN:
                    check_key(k)
                s = t - (t - off) % width
                if s != last_s:
                    if s not in live:
                        self._ensure(s)
                    last_s = s
                a = get((s, k))
                if a is None:
                    a = new()
                add1(a, r, t)
                put((s, k), a)
        except Exception as exc:
            raise self.rt.step_error(self.node, exc, record=r, key=k, has_key=self.op.key is not None,
                                     event_time=t) from exc
        self._flush()

    def _slow(self, items: Iterable[tuple[Any, int]]) -> None:
        wm = self.wm
        for r, t in items:
            s = t - (t - self.offset) % self.slice
            if self.timers.expiry(s) <= wm:
                self._to_late(r, t)
                continue
            k = None
            try:
                k = self.keyf(r)
                _check(k)
                self._ensure(s)
                a = self.store.get((s, k))
                if a is None:
                    a = self.new()
                self.add1(a, r, t)
                self.store[(s, k)] = a
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
            a = self.store.get((s, k)) if s in self.live else None
            if a is not None:
                try:
                    acc = a if acc is None else self.merge(acc, a)
                except Exception as exc:
                    raise self._merge_error(exc, k, e) from exc
        assert acc is not None
        return acc

    def on_watermark(self, wm: int) -> None:
        for e in self.timers.due(wm):
            self._fire(e)
        for s in self.timers.expired(wm):
            if s in self.live:
                self.live.discard(s)
                self.store.drop(s)
        self._flush()

    def _fire(self, e: int) -> None:
        ws = e - self.size
        slices = [s for s in range(ws, e, self.slice) if s in self.live]
        if not slices:
            return
        items: Iterator[tuple[Any, Any]] = (
            ((k, a) for _, k, a in self.store.scan(slices[0])) if len(slices) == 1 else self._merged(slices, e))
        while batch := list(itertools.islice(items, _BATCH)):
            self._emit_windows(batch, ws, e)
            self._flush()  # downstream now, a batch at a time

    def _merged(self, slices: list[int], e: int) -> Iterator[tuple[Any, Any]]:
        merge = self.merge
        for k, accs in _by_key([self.store.scan(s) for s in slices]):
            acc = accs[0][1]
            try:
                for _, a in accs[1:]:
                    acc = merge(acc, a)
            except Exception as exc:  # e.g. max over a str in one slice and a float in another
                raise self._merge_error(exc, k, e) from exc
            yield k, acc

    def snapshot(self) -> Any:
        return {ON_DISK: True, "live": sorted(self.live), **self.timers.snapshot(), "late": self.late_count}

    def restore(self, state: Any) -> None:
        if state.get(ON_DISK):
            self.live = set(state["live"])
        else:  # taken in memory: load its slices into the store
            self.live = set()
            for s, d in state["slices"].items():
                self.live.add(s)
                for k, acc in d.items():
                    self.store[(s, k)] = acc
        self.timers.restore(state)
        self.late_count = state["late"]


class DiskSessionWindowOperator(SessionWindowOperator):
    """Sessions per key in a keyed map (``[start, end, acc, armed]``: ``armed`` the time of the
    session's live timer); the timers and the cleanups (with allowed lateness) in timer queues."""

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, timed)
        self.store = rt.state.keyed_map(node.name, "sessions")
        self.due = rt.state.timer_queue(node.name, "timers")
        self.cleanup_q = rt.state.timer_queue(node.name, "cleanups")

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        assert times is not None
        wm, gap = self.wm, self.gap
        keyf, add1, get, put = self.keyf, self.add1, self.store.get, self.store.__setitem__
        for r, t in zip(records, times, strict=True):
            k = None
            try:
                k = keyf(r)
                if type(k) not in _PLAIN:
                    check_key(k)
                sessions = get(k)
                if sessions is not None and len(sessions) == 1:
                    sess = sessions[0]
                    if sess[0] <= t <= sess[1] and sess[1] > wm:
                        if t + gap > sess[1]:
                            sess[1] = t + gap
                        add1(sess[2], r, t)
                        put(k, sessions)
                        continue
                self._add_slow(k, r, t)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, key=k, has_key=self.op.key is not None,
                                         event_time=t) from exc
        self._flush()

    def _add_slow(self, k: Any, r: Any, t: int) -> None:
        wm, lateness = self.wm, self.lateness
        sessions = self.store.get(k) or []
        start, end = t, t + self.gap
        keep: list[list[Any]] = []
        touching: list[list[Any]] = []
        for sess in sessions:
            (touching if sess[0] <= end and start <= sess[1] else keep).append(sess)
        for sess in touching:
            start, end = min(start, sess[0]), max(end, sess[1])
        if end + lateness <= wm:
            self._to_late(r, t)
            return
        acc = touching[0][2] if touching else self.new()
        for sess in touching[1:]:
            acc = self.merge(acc, sess[2])
        self.add1(acc, r, t)
        merged = [start, end, acc, None]
        keep.append(merged)
        if end <= wm:  # within the allowed lateness of a fired session: fire again now
            self.refired += 1
            self._emit_window(k, start, end, acc)
            self.cleanup_q.add(end + lateness, k)
        else:
            merged[3] = end
            self.due.add(end, k)
        self.store[k] = keep

    def on_watermark(self, wm: int) -> None:
        store, lateness = self.store, self.lateness
        while due := self.due.pop_due(wm):
            for time, k, _ in due:
                sessions = store.get(k)
                if not sessions:
                    continue
                for sess in [s for s in sessions if s[3] == time]:  # else merged into another since
                    if sess[1] > wm:  # the session grew after this timer was set
                        sess[3] = sess[1]
                        self.due.add(sess[1], k)
                        continue
                    sess[3] = None
                    self._emit_window(k, sess[0], sess[1], sess[2])
                    if lateness:
                        self.cleanup_q.add(sess[1] + lateness, k)
                    else:
                        sessions.remove(sess)
                if sessions:
                    store[k] = sessions
                else:
                    del store[k]
            self._flush()
        while due := self.cleanup_q.pop_due(wm):
            for _, k, _ in due:
                sessions = store.get(k)
                if not sessions:
                    continue
                keep = [s for s in sessions if s[1] + lateness > wm]
                if not keep:
                    del store[k]
                elif len(keep) != len(sessions):
                    store[k] = keep
        self._flush()

    def snapshot(self) -> Any:
        return {ON_DISK: True, "late": self.late_count}

    def restore(self, state: Any) -> None:
        self.late_count = state["late"]
        if state.get(ON_DISK):
            return
        # taken in memory: sessions, their live timers (by timer id) and the cleanups into the store
        live = {(k, tid): end for end, tid, _, k in state["timers"]}
        for k, sessions in state["sessions"].items():
            out = []
            for start, end, acc, tid in sessions:
                armed = live.get((k, tid)) if tid is not None else None
                if armed is not None:
                    self.due.add(armed, k)
                out.append([start, end, acc, armed])
            self.store[k] = out
        for time, _, _, _, k in state["cleanups"]:
            self.cleanup_q.add(time, k)


class DiskCountWindowOperator(CountWindowOperator):
    """Count windows with each key's buffer and count in a keyed map."""

    def __init__(self, node: Node, rt: Runtime, timed: bool) -> None:
        super().__init__(node, rt, timed)
        self.store = rt.state.keyed_map(node.name, "buffers")

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        size, every = self.size, self.every
        ts: Any = times if times is not None else itertools.repeat(None)
        get, put = self.store.get, self.store.__setitem__
        k: Any = None
        for r, t in zip(records, ts):
            try:
                k = self.keyf(r)
                if type(k) not in _PLAIN:
                    check_key(k)
                entry = get(k)
                buf, n = (deque(maxlen=size), 0) if entry is None else entry
                buf.append((r, t))
                n += 1
                if n >= size and (n - size) % every == 0:
                    self._fire_count(k, buf, times is not None)
                put(k, (buf, n))
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, key=k, has_key=True, event_time=t) from exc
        self._flush()

    def snapshot(self) -> Any:
        return {ON_DISK: True}

    def restore(self, state: Any) -> None:
        if state.get(ON_DISK):
            return
        for k, buf in state["buffers"].items():
            self.store[k] = (deque(buf, maxlen=self.size), state["counts"][k])


# -- joins -----------------------------------------------------------------------------------------


class DiskPairJoinOperator(PairJoinOperator):
    """Regular and interval joins: each side's records per key in a keyed map, its expiry buckets
    in a timer queue (``(bucket, key)``), an outer side's unmatched records in a keyed map."""

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        st, name = rt.state, node.name
        self.sides = [st.keyed_map(name, "left"), st.keyed_map(name, "right")]  # type: ignore[list-item]
        self.expiry = [st.timer_queue(name, "expire-left"), st.timer_queue(name, "expire-right")]
        if self.outer[0] or self.outer[1]:
            self.unmatched = [st.keyed_map(name, "unmatched-left"),  # type: ignore[list-item]
                              st.keyed_map(name, "unmatched-right")]  # type: ignore[list-item]
        self._push = [self._compile(side, disk=True) for side in (0, 1)]

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        assert times is not None
        fn, filename = self._push[port]
        other = 1 - port
        wm = self.wm
        dead_mine, dead_other = (self._dead(port, wm), self._dead(other, wm)) if self.checked else (0, 0)
        if self.outer[0] or self.outer[1]:
            self._push_outer(port, records, times, dead_mine, dead_other)
            self._flush()
            return
        try:
            self.late += fn(records, times, wm, self.sides[port], self.sides[other], dead_mine, dead_other,
                            self.expiry[port], None, self._out, self._tout, self._late_r, self._late_t)
        except Exception as exc:
            self._out, self._tout = [], []
            raise self._fail(exc, filename) from exc
        self._flush()

    def on_watermark(self, wm: int) -> None:
        if not self.checked:
            return
        bw = self.bucket_ms
        for side in (0, 1):
            dead = self._dead(side, wm)
            store, unmatched = self.sides[side], self.unmatched[side]
            # buckets every time of which is dead: (b + 1) * bw - 1 <= dead
            while due := self.expiry[side].pop_due((dead + 1) // bw - 1):
                for _, k, _ in due:
                    lst = store.get(k)
                    if lst is not None:
                        keep = [x for x in lst if x[0] > dead]
                        if not keep:
                            del store[k]
                        elif len(keep) != len(lst):
                            store[k] = keep
                    pads = unmatched.get(k)
                    if pads is not None:  # expired without a partner: the padded row stays
                        alive = [x for x in pads if x[0] > dead]
                        if not alive:
                            del unmatched[k]
                        elif len(alive) != len(pads):
                            unmatched[k] = alive

    def state_size(self) -> int:
        return sum(len(v) for side in self.sides for _, v in side.items())

    def snapshot(self) -> Any:
        return {ON_DISK: True, "late": self.late}

    def restore(self, state: Any) -> None:
        self.late = state["late"]
        if state.get(ON_DISK):
            return
        for side in (0, 1):
            for k, lst in state["sides"][side].items():
                self.sides[side][k] = lst
            for b, keys in state["buckets"][side].items():
                for k in keys:
                    self.expiry[side].add(b, k)
            for k, pads in state.get("unmatched", [{}, {}])[side].items():
                self.unmatched[side][k] = pads


class DiskSlicedWindowJoinOperator(SlicedWindowJoinOperator):
    """Tumbling and sliding window joins: each side's records under ``(slice start, key)``; a window's
    pairs found by merging the two sides' scans of its slices by key."""

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        self.stores = [rt.state.namespaced_map(node.name, "left"), rt.state.namespaced_map(node.name, "right")]
        self.live: set[int] = set()

    def _add(self, side: int, s: int, k: Any, r: Any) -> None:
        if s not in self.live:
            self.live.add(s)
            self._new_slice(s)
        store = self.stores[side]
        lst = store.get((s, k))
        if lst is None:
            store[(s, k)] = [r]
        else:
            lst.append(r)
            store[(s, k)] = lst

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        assert times is not None
        keyf, wm, off, width = self.keyfs[port], self.wm, self.offset, self.slice
        slow = []
        for r, t in zip(records, times, strict=True):
            if t <= wm:
                slow.append((r, t))
                continue
            try:
                k = keyf(r)
                _check(k)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, has_key=False, event_time=t) from exc
            self._add(port, t - (t - off) % width, k, r)
        if slow:
            self._slow(port, slow)

    def _slow(self, side: int, items: list[tuple[Any, int]]) -> None:
        keyf, wm = self.keyfs[side], self.wm
        for r, t in items:
            s = t - (t - self.offset) % self.slice
            if self.timers.expiry(s) <= wm:
                self.late += 1
                continue
            try:
                k = keyf(r)
                _check(k)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, has_key=False, event_time=t) from exc
            self._add(side, s, k, r)

    def on_watermark(self, wm: int) -> None:
        for e in self.timers.due(wm):
            self._fire(e)
        for s in self.timers.expired(wm):
            if s in self.live:
                self.live.discard(s)
                for store in self.stores:
                    store.drop(s)
        self._flush()

    def _fire(self, e: int) -> None:
        ws = e - self.size
        slices = [s for s in range(ws, e, self.slice) if s in self.live]
        if not slices:
            return
        n = len(slices)
        scans = [self.stores[side].scan(s) for side in (0, 1) for s in slices]
        for k, vals in _by_key(scans):
            lefts = [r for i, recs in vals if i < n for r in recs]
            rights = [r for i, recs in vals if i >= n for r in recs]
            self._emit_pairs(k, lefts, rights, ws, e)
            if len(self._out) >= _BATCH:
                self._flush()

    def snapshot(self) -> Any:
        return {ON_DISK: True, "live": sorted(self.live), **self.timers.snapshot(), "late": self.late}

    def restore(self, state: Any) -> None:
        if state.get(ON_DISK):
            self.live = set(state["live"])
        else:
            self.live = set()
            for s, sides in state["slices"].items():
                self.live.add(s)
                for side in (0, 1):
                    for k, recs in sides[side].items():
                        self.stores[side][(s, k)] = recs
        self.timers.restore(state)
        self.late = state["late"]


class DiskSessionWindowJoinOperator(SessionWindowJoinOperator):
    """Session window joins: sessions per key in a keyed map (``[start, end, lefts, rights, armed]``),
    their timers in a timer queue."""

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        self.store = rt.state.keyed_map(node.name, "sessions")
        self.due = rt.state.timer_queue(node.name, "timers")

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        assert times is not None
        keyf, wm, gap = self.keyfs[port], self.wm, self.gap
        get, put = self.store.get, self.store.__setitem__
        for r, t in zip(records, times, strict=True):
            try:
                k = keyf(r)
                _check(k)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, has_key=False, event_time=t) from exc
            sessions = get(k)
            if sessions is not None and len(sessions) == 1:
                sess = sessions[0]
                if sess[0] <= t <= sess[1] and sess[1] > wm:
                    if t + gap > sess[1]:
                        sess[1] = t + gap
                    sess[2 + port].append(r)
                    put(k, sessions)
                    continue
            self._add_slow(k, port, r, t)

    def _add_slow(self, k: Any, side: int, r: Any, t: int) -> None:
        start, end = t, t + self.gap
        keep: list[list[Any]] = []
        touching: list[list[Any]] = []
        for sess in self.store.get(k) or ():
            (touching if sess[0] <= end and start <= sess[1] else keep).append(sess)
        for sess in touching:
            start, end = min(start, sess[0]), max(end, sess[1])
        if end <= self.wm:
            self.late += 1
            return
        lefts: list[Any] = []
        rights: list[Any] = []
        for sess in touching:
            lefts.extend(sess[2])
            rights.extend(sess[3])
        (lefts if side == 0 else rights).append(r)
        keep.append([start, end, lefts, rights, end])
        self.due.add(end, k)
        self.store[k] = keep

    def on_watermark(self, wm: int) -> None:
        store = self.store
        while due := self.due.pop_due(wm):
            for time, k, _ in due:
                sessions = store.get(k)
                if not sessions:
                    continue
                for sess in [s for s in sessions if s[4] == time]:
                    if sess[1] > wm:
                        sess[4] = sess[1]
                        self.due.add(sess[1], k)
                        continue
                    sessions.remove(sess)
                    self._emit_pairs(k, sess[2], sess[3], sess[0], sess[1])
                if sessions:
                    store[k] = sessions
                else:
                    del store[k]
            self._flush()
        self._flush()

    def snapshot(self) -> Any:
        return {ON_DISK: True, "late": self.late}

    def restore(self, state: Any) -> None:
        self.late = state["late"]
        if state.get(ON_DISK):
            return
        live = {(k, tid): end for end, tid, _, k in state["timers"]}
        for k, sessions in state["sessions"].items():
            out = []
            for start, end, lefts, rights, tid in sessions:
                armed = live.get((k, tid))
                if armed is not None:
                    self.due.add(armed, k)
                out.append([start, end, lefts, rights, armed])
            self.store[k] = out
