"""Join operators: two inputs (port 0 the left stream, port 1 the right), keyed state per side.

Three kinds, all on event time:

* **regular** — every pair with equal keys, whichever side came first. Each side's records
  are kept per key as a list of ``(t, record)``; with a TTL a record is dropped once it is
  more than ``ttl`` behind the watermark (``t < watermark - ttl``), and a record already that
  far behind when it comes is *late*.
* **interval** — pairs with ``left.t + lower <= right.t <= left.t + upper``. A left record is
  kept while a right record at or ahead of the watermark could still pair with it
  (``t + upper >= watermark``), a right one while ``t - lower >= watermark``. A record behind the
  watermark when it comes (``t < watermark``) is *late*, as in Flink: some of its partners may
  be gone. A record exactly at the watermark is joined (as in Flink), with every partner.
  Late records go to the step's late side output (``.late()``) and are counted.
* **window** — pairs in the same tumbling, sliding or session window, emitted when the
  watermark passes the window's end, at event time ``window_end - 1``. Tumbling and sliding
  windows keep each record once, in a slice of width gcd(size, slide), like the window
  operators; sessions are formed from both sides' records of a key. A record whose windows
  have all fired when it comes is *late*.

A regular join may be **outer** (``how`` "left", "right" or "full"): its output is then a
changelog (:mod:`millstream.changelog`). A record of an outer side that finds no living
partner is emitted padded (``+I``) and remembered per key as *unmatched* (with the padded
row, so that its retraction is the very same row); when a partner of its key comes while it
is still alive, the padded row is retracted (``-D``, at the later of the two times) before
the pairs are inserted (``+I``). An unmatched record that expires by the TTL is forgotten
without a retraction. Whether a record ever pairs is decided exactly as for the inner join,
so the final table is exact whenever the inner join's pairs are.

Late records join nothing; they are counted in ``metrics()["late"]`` (the run's ``late``
figure). Which records are late depends on how far the watermark had moved when they came,
so the results of joins are exact (the same for every arrival order and chunking) whenever
each input arrives within its watermark's bound, which is what the property tests check.

Every check against the watermark is exact at the moment a record is processed; dropping
expired state is lazier (by time buckets of a quarter of the retention, one heap entry per
bucket rather than per record), which costs memory, never answers.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

from millstream._plan import JoinOp, Node
from millstream._state import check_key
from millstream.changelog import CHANGE, DELETE, INSERT
from millstream.windows import SessionWindow, SlidingWindow, TumblingWindow

from ._aggcode import compile_key, key_expr
from ._base import Operator, Runtime, check_not_on_disk
from ._codegen import Generated, frame_local
from ._windows import SliceTimers

__all__ = ["default_pair", "make_join_operator"]


def default_pair(shared: tuple[str, ...]) -> Callable[[Any, Any], dict[str, Any]]:
    """The default output of a join: ``{**left, **right}``, a right field whose name the left
    record has too renamed ``<name>_right`` (the renamed fields come last, in the right record's
    order), except the ``shared`` key fields (equal on both sides), which keep the left's value."""
    shared_set = frozenset(shared)
    renamed: dict[str, str] = {}

    def pair(left: Any, right: Any) -> dict[str, Any]:
        try:
            common = left.keys() & right.keys()
        except AttributeError:
            common = None
        if common is None or not (isinstance(left, dict) and isinstance(right, dict)):
            raise TypeError(
                f"a join without combine= merges two dict records, got {type(left).__name__} and "
                f"{type(right).__name__}; pass combine=lambda left, right: ... to build the output"
            )
        out = {**left, **right}
        if common:
            for f in (common if len(common) == 1 else [f for f in right if f in common]):
                if f not in shared_set:
                    name = renamed.get(f)
                    if name is None:
                        name = renamed[f] = f"{f}_right"
                    out[name] = right[f]
                out[f] = left[f]
        return out

    return pair


def _padder(combine: Callable[[Any, Any], Any] | None, side: int) -> Callable[[Any], Any]:
    """The output row of a record of ``side`` without a partner: ``combine`` with None for the
    other side, by default (a copy of) the record alone."""
    if combine is not None:
        return (lambda r: combine(r, None)) if side == 0 else (lambda r: combine(None, r))

    def alone(r: Any) -> Any:
        if not isinstance(r, dict):
            raise TypeError(f"an outer join without combine= pads dict records, got {type(r).__name__}; "
                            "pass combine=lambda left, right: ... (one of them None when unmatched)")
        return r

    return alone


def _marked(row: Any, kind: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise TypeError(f"an outer join emits a changelog of dict records, but the output was "
                        f"{type(row).__name__} {row!r:.100}; make combine return a dict")
    return {**row, CHANGE: kind}  # a copy: combine may hand back a record that is in state


class _JoinBase(Operator):
    """Shared by the join operators: the output pairing, error mapping, the late count."""

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt, 2)
        op = node.op
        assert isinstance(op, JoinOp)
        self.op = op
        self.pair: Callable[[Any, Any], Any] = op.combine if op.combine is not None else default_pair(op.shared_fields)
        self.keyfs = [compile_key(op.left_key), compile_key(op.right_key)]
        self.late = 0
        self._out: list[Any] = []
        self._tout: list[int] = []
        #: the late side output (``.late()`` of an interval join) and the late records in hand
        self.late_outs: list[tuple[Operator, int]] = []
        self._late_r: list[Any] = []
        self._late_t: list[int] = []

    def _flush(self) -> None:
        if self._out:
            out, tout = self._out, self._tout
            self._out, self._tout = [], []
            self.emit(out, tout)
        if self._late_r:
            late, late_t = self._late_r, self._late_t
            self._late_r, self._late_t = [], []
            if not self.muted:
                for op, port in self.late_outs:
                    op.push(port, late, late_t)

    def _advance(self) -> None:
        before = self.wm
        super()._advance()
        if self.wm > before:  # the late side output follows the step's watermark too
            for op, port in self.late_outs:
                op.watermark(port, self.wm)

    def _fail(self, exc: Exception, filename: str) -> BaseException:
        tb = exc.__traceback__
        t = frame_local(tb, filename, "t")
        return self.rt.step_error(self.node, exc, record=frame_local(tb, filename, "r"),
                                  key=frame_local(tb, filename, "k"), has_key=True,
                                  event_time=t if isinstance(t, int) else None)

    def metrics(self) -> dict[str, int]:
        return {"late": self.late}


# -- regular and interval joins: per-key lists of (t, record) on both sides ------------------------


class PairJoinOperator(_JoinBase):
    """Regular and interval joins. A record of side ``s`` is alive while ``t > dead(s, watermark)``."""

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        op = self.op
        self.interval = op.mode == "interval"
        self.checked = self.interval or op.ttl_ms is not None  # False: nothing expires, nothing is late
        retention = (op.upper_ms - op.lower_ms) if self.interval else (op.ttl_ms or 0)
        self.bucket_ms = max(1, retention // 4)
        self.sides: list[dict[Any, list[tuple[int, Any]]]] = [{}, {}]
        #: per side: time bucket -> keys with records in it, and a heap of the buckets
        self.buckets: list[dict[int, set[Any]]] = [{}, {}]
        self.heaps: list[list[int]] = [[], []]
        self.outer = op.outer if op.mode == "regular" else (False, False)
        #: per outer side: key -> [(t, record, padded row)] of records emitted padded, no partner yet
        self.unmatched: list[dict[Any, list[tuple[int, Any, Any]]]] = [{}, {}]
        self._pads = [_padder(op.combine, side) for side in (0, 1)]
        self._push = [self._compile(side) for side in (0, 1)]

    def _dead(self, side: int, wm: int) -> int:
        """Records of ``side`` at or before this time can pair with nothing that may still come."""
        op = self.op
        if self.interval:  # a record at the watermark still pairs: keep partners up to it
            return wm - op.upper_ms - 1 if side == 0 else wm + op.lower_ms - 1
        assert op.ttl_ms is not None
        return wm - op.ttl_ms - 1

    def _compile(self, side: int, disk: bool = False) -> tuple[Callable[..., int], str]:
        """The loop of one side. ``disk``: the state is in the on-disk backend (:mod:`._ondisk`):
        a key's list is written back after each append, ``buckets`` is the side's expiry queue."""
        op = self.op
        env: dict[str, Any] = {"_pair": self.pair, "_heappush": heapq.heappush, "_PLAIN": frozenset({str, int}),
                               "_check": check_key}
        g = Generated()
        g.add(0, "def _push(recs, times, wm, mine, other, dead_mine, dead_other, buckets, heap, out, tout, lr, lt):")
        g.add(1, "late = 0; oa = out.append; ta = tout.append; last_b = None; bset = None")
        g.add(1, "for r, t in zip(recs, times):")
        if self.checked:
            # interval: behind the watermark (partners may be gone); regular: past the TTL
            g.add(2, "if t < wm:" if self.interval else "if t <= dead_mine:")
            g.add(3, "late += 1; lr.append(r); lt.append(t); continue")
        g.add(2, f"k = {key_expr(op.left_key if side == 0 else op.right_key, env)}")
        depth = 2
        if self.interval:  # kept only while a record of the other side ahead of the watermark could pair
            g.add(2, "if t > dead_mine:")
            depth = 3
        if disk:  # a key the store cannot encode fails here, naming its record
            g.add(depth, "if type(k) not in _PLAIN: _check(k)")
        g.add(depth, "lst = mine.get(k)")
        g.add(depth, "if lst is None: mine[k] = [(t, r)]")
        g.add(depth, "else: lst.append((t, r)); mine[k] = lst" if disk else "else: lst.append((t, r))")
        if self.checked and disk:
            g.add(depth, f"buckets.add(t // {self.bucket_ms}, k)")
        elif self.checked:
            g.add(depth, f"b = t // {self.bucket_ms}")
            g.add(depth, "if b != last_b:")
            g.add(depth + 1, "bset = buckets.get(b)")
            g.add(depth + 1, "if bset is None: bset = buckets[b] = set(); _heappush(heap, b)")
            g.add(depth + 1, "last_b = b")
            g.add(depth, "bset.add(k)")
        g.add(2, "os = other.get(k)")
        g.add(2, "if os:")
        pair = "_pair(r, r2)" if side == 0 else "_pair(r2, r)"
        if self.interval:
            lo, hi = (op.lower_ms, op.upper_ms) if side == 0 else (-op.upper_ms, -op.lower_ms)
            # t >= wm, so every record of the other side in range is alive: no expiry check needed
            g.add(3, f"lo = t + {lo}; hi = t + {hi}")
            g.add(3, "for t2, r2 in os:")
            g.add(4, "if lo <= t2 <= hi:")
            g.add(5, f"oa({pair}); ta(t if t > t2 else t2)")
        elif self.checked:
            g.add(3, "for t2, r2 in os:")
            g.add(4, "if t2 > dead_other:")
            g.add(5, f"oa({pair}); ta(t if t > t2 else t2)")
        else:
            g.add(3, "for t2, r2 in os:")
            g.add(4, f"oa({pair}); ta(t if t > t2 else t2)")
        g.add(1, "return late")
        return g.compile(f"join:{self.name}:{'right' if side else 'left'}", env, "_push")

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
                            self.buckets[port], self.heaps[port], self._out, self._tout, self._late_r, self._late_t)
        except Exception as exc:
            self._out, self._tout = [], []
            raise self._fail(exc, filename) from exc
        self._flush()

    def _push_outer(self, side: int, records: list[Any], times: list[int], dead_mine: int,
                    dead_other: int) -> None:
        """An outer regular join, record by record: pairs, padded rows and their retractions."""
        other = 1 - side
        keyf, pair, pad = self.keyfs[side], self.pair, self._pads[side]
        mine, theirs = self.sides[side], self.sides[other]
        unmatched_mine, unmatched_theirs = self.unmatched[side], self.unmatched[other]
        outer_mine, outer_theirs = self.outer[side], self.outer[other]
        checked, bucket_ms = self.checked, self.bucket_ms
        buckets, heap = self.buckets[side], self.heaps[side]
        out, tout = self._out, self._tout
        disk = self.rt.state.on_disk  # the state in the on-disk backend (._ondisk): write lists back
        k: Any
        for r, t in zip(records, times, strict=True):
            k = None
            try:
                if checked and t <= dead_mine:
                    self.late += 1
                    self._late_r.append(r)
                    self._late_t.append(t)
                    continue
                k = keyf(r)
                lst = mine.get(k)
                if lst is None:
                    mine[k] = [(t, r)]
                else:
                    lst.append((t, r))
                    if disk:
                        mine[k] = lst
                if checked and disk:
                    self.expiry[side].add(t // bucket_ms, k)  # type: ignore[attr-defined]
                elif checked:
                    b = t // bucket_ms
                    bset = buckets.get(b)
                    if bset is None:
                        bset = buckets[b] = set()
                        heapq.heappush(heap, b)
                    bset.add(k)
                partners = [(t2, r2) for t2, r2 in theirs.get(k, ()) if not checked or t2 > dead_other]
                if not partners:
                    if outer_mine:
                        row = _marked(pad(r), INSERT)
                        pads = unmatched_mine.get(k)
                        if pads is None:
                            unmatched_mine[k] = [(t, r, row)]
                        else:
                            pads.append((t, r, row))
                            if disk:
                                unmatched_mine[k] = pads
                        out.append(row)
                        tout.append(t)
                    continue
                if outer_theirs:
                    for t2, _, row in unmatched_theirs.pop(k, ()):
                        if not checked or t2 > dead_other:  # an expired one stays: nothing retracted
                            out.append({**row, CHANGE: DELETE})
                            tout.append(t if t > t2 else t2)
                for t2, r2 in partners:
                    out.append(_marked(pair(r, r2) if side == 0 else pair(r2, r), INSERT))
                    tout.append(t if t > t2 else t2)
            except Exception as exc:
                self._out, self._tout = [], []
                raise self.rt.step_error(self.node, exc, record=r, key=k, has_key=k is not None,
                                         event_time=t) from exc

    def on_watermark(self, wm: int) -> None:
        if not self.checked:
            return
        bw = self.bucket_ms
        for side in (0, 1):
            dead = self._dead(side, wm)
            heap, buckets, store = self.heaps[side], self.buckets[side], self.sides[side]
            unmatched = self.unmatched[side]
            while heap and (heap[0] + 1) * bw - 1 <= dead:  # every time in the bucket is dead
                for k in buckets.pop(heapq.heappop(heap), ()):
                    lst = store.get(k)
                    if lst is None:
                        continue
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
        """Records held in state, both sides."""
        return sum(len(v) for side in self.sides for v in side.values())

    def snapshot(self) -> Any:
        snap = {"sides": self.sides, "buckets": self.buckets, "late": self.late}
        if self.outer[0] or self.outer[1]:
            snap["unmatched"] = self.unmatched
        return snap

    def restore(self, state: Any) -> None:
        check_not_on_disk(self.node, state)
        self.sides = state["sides"]
        self.buckets = state["buckets"]
        self.heaps = [sorted(b) for b in self.buckets]
        self.late = state["late"]
        self.unmatched = state.get("unmatched", [{}, {}])


# -- window joins --------------------------------------------------------------------------------


class _WindowJoinBase(_JoinBase):
    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        combine = self.op.combine
        merge = self.pair
        if combine is not None:
            self.wpair: Callable[[Any, Any, int, int], Any] = lambda left, right, ws, we: combine(left, right)
        else:
            def wpair(left: Any, right: Any, ws: int, we: int) -> Any:
                out = merge(left, right)
                out["window_start"] = ws
                out["window_end"] = we
                return out
            self.wpair = wpair

    def _emit_pairs(self, k: Any, lefts: list[Any], rights: list[Any], ws: int, we: int) -> None:
        if not lefts or not rights:
            return
        wpair, out = self.wpair, self._out
        n = len(out)
        left = right = None
        try:
            for left in lefts:
                for right in rights:
                    out.append(wpair(left, right, ws, we))
        except Exception as exc:
            raise self.rt.step_error(self.node, exc, record=(left, right), key=k, has_key=True,
                                     event_time=we - 1) from exc
        self._tout.extend([we - 1] * (len(out) - n))


class SlicedWindowJoinOperator(_WindowJoinBase):
    """Tumbling and sliding window joins: each record goes to one slice; a window's pairs are
    those of the records of its slices, per key, when it fires."""

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        a = self.op.assigner
        assert isinstance(a, TumblingWindow | SlidingWindow)
        self.size, self.slide, self.offset, self.slice = a.size_ms, a.slide_ms, a.offset_ms, a.slice_ms
        #: slice start -> (left key -> records, right key -> records): a side's keys are looked up
        #: in the other side's only when a window fires, from the side with fewer keys
        self.slices: dict[int, tuple[dict[Any, list[Any]], dict[Any, list[Any]]]] = {}
        self.timers = SliceTimers(self.size, self.slide, self.offset)
        self._push = [self._compile(side) for side in (0, 1)]

    def _compile(self, side: int) -> tuple[Callable[..., Any], str]:
        op = self.op
        env: dict[str, Any] = {"_new_slice": self._new_slice}
        g = Generated()
        g.add(0, "def _push(recs, times, wm, slices):")
        g.add(1, "last_s = None; d = None; slow = None")
        g.add(1, "for r, t in zip(recs, times):")
        g.add(2, "if t <= wm:")
        g.add(3, "if slow is None: slow = []")
        g.add(3, "slow.append((r, t)); continue")
        g.add(2, f"k = {key_expr(op.left_key if side == 0 else op.right_key, env)}")
        g.add(2, f"s = t - (t - {self.offset}) % {self.slice}")
        g.add(2, "if s != last_s:")
        g.add(3, "sl = slices.get(s)")
        g.add(3, "if sl is None: sl = slices[s] = ({}, {}); _new_slice(s)")
        g.add(3, f"d = sl[{side}]; dget = d.get")
        g.add(3, "last_s = s")
        g.add(2, "e = dget(k)")
        g.add(2, "if e is None: d[k] = [r]")
        g.add(2, "else: e.append(r)")
        g.add(1, "return slow")
        return g.compile(f"window_join:{self.name}:{'right' if side else 'left'}", env, "_push")

    def _new_slice(self, s: int) -> None:
        self.timers.add_slice(s, self.wm)

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        assert times is not None
        fn, filename = self._push[port]
        try:
            slow = fn(records, times, self.wm, self.slices)
        except Exception as exc:
            raise self._fail(exc, filename) from exc
        if slow:
            self._slow(port, slow)

    def _slow(self, side: int, items: list[tuple[Any, int]]) -> None:
        """Records at or behind the watermark: into the windows that have not fired, else late."""
        keyf = self.keyfs[side]
        wm = self.wm
        for r, t in items:
            s = t - (t - self.offset) % self.slice
            if self.timers.expiry(s) <= wm:
                self.late += 1
                continue
            try:
                k = keyf(r)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, has_key=False, event_time=t) from exc
            sl = self.slices.get(s)
            if sl is None:
                sl = self.slices[s] = ({}, {})
                self._new_slice(s)
            e = sl[side].get(k)
            if e is None:
                sl[side][k] = [r]
            else:
                e.append(r)

    def on_watermark(self, wm: int) -> None:
        for e in self.timers.due(wm):
            self._fire(e)
        for s in self.timers.expired(wm):
            self.slices.pop(s, None)
        self._flush()

    def _fire(self, e: int) -> None:
        ws = e - self.size
        if self.slice == self.size:
            sides = self.slices.get(ws)
            if sides is None:
                return
        else:
            merged: tuple[dict[Any, list[Any]], dict[Any, list[Any]]] = ({}, {})
            for s in range(ws, e, self.slice):
                sl = self.slices.get(s)
                if sl is None:
                    continue
                for side in (0, 1):
                    into = merged[side]
                    for k, recs in sl[side].items():
                        m = into.get(k)
                        if m is None:
                            into[k] = list(recs)
                        else:
                            m.extend(recs)
            sides = merged
        lefts, rights = sides
        if len(lefts) <= len(rights):
            for k, ls in lefts.items():
                rs = rights.get(k)
                if rs is not None:
                    self._emit_pairs(k, ls, rs, ws, e)
        else:
            for k, rs in rights.items():
                found = lefts.get(k)
                if found is not None:
                    self._emit_pairs(k, found, rs, ws, e)

    def snapshot(self) -> Any:
        return {"slices": self.slices, **self.timers.snapshot(), "late": self.late}

    def restore(self, state: Any) -> None:
        check_not_on_disk(self.node, state)
        self.slices = state["slices"]
        self.timers.restore(state)
        self.late = state["late"]


class SessionWindowJoinOperator(_WindowJoinBase):
    """Session window joins: a key's sessions are formed from the records of both sides.

    A session is ``[start, end, lefts, rights, timer]`` (``end`` exclusive: last record + gap).
    As in the session window operator, a session that grows keeps its timer, re-armed at the
    new end when it comes due, so a record inside its key's open session costs no heap push.
    """

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt)
        a = self.op.assigner
        assert isinstance(a, SessionWindow)
        self.gap = a.gap_ms
        self.sessions: dict[Any, list[list[Any]]] = {}
        self.timers: list[tuple[int, int, int, Any]] = []  # (due end, timer id, start, key)
        self._seq = itertools.count()

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        assert times is not None
        keyf = self.keyfs[port]
        wm, gap, get = self.wm, self.gap, self.sessions.get
        for r, t in zip(records, times, strict=True):
            try:
                k = keyf(r)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, has_key=False, event_time=t) from exc
            sessions = get(k)
            if sessions is not None and len(sessions) == 1:
                sess = sessions[0]
                if sess[0] <= t <= sess[1] and sess[1] > wm:
                    if t + gap > sess[1]:
                        sess[1] = t + gap
                    sess[2 + port].append(r)
                    continue
            self._add_slow(k, port, r, t)

    def _add_slow(self, k: Any, side: int, r: Any, t: int) -> None:
        start, end = t, t + self.gap
        keep: list[list[Any]] = []
        touching: list[list[Any]] = []
        for sess in self.sessions.get(k, ()):
            (touching if sess[0] <= end and start <= sess[1] else keep).append(sess)  # touching merge
        for sess in touching:
            start, end = min(start, sess[0]), max(end, sess[1])
        if end <= self.wm:  # open sessions all end after the watermark: this one touches none
            self.late += 1
            return
        lefts: list[Any] = []
        rights: list[Any] = []
        for sess in touching:
            lefts.extend(sess[2])
            rights.extend(sess[3])
        (lefts if side == 0 else rights).append(r)
        merged: list[Any] = [start, end, lefts, rights, None]
        keep.append(merged)
        self.sessions[k] = keep
        self._arm(merged, k)

    def _arm(self, sess: list[Any], k: Any) -> None:
        timer = next(self._seq)
        sess[4] = timer
        heapq.heappush(self.timers, (sess[1], timer, sess[0], k))

    def on_watermark(self, wm: int) -> None:
        timers = self.timers
        while timers and timers[0][0] <= wm:  # a session fires once the watermark passed its end
            _, timer, start, k = heapq.heappop(timers)
            lst = self.sessions.get(k, [])
            sess = next((s for s in lst if s[0] == start and s[4] == timer), None)
            if sess is None:
                continue  # merged into another session since
            if sess[1] > wm:
                self._arm(sess, k)  # the session grew after this timer was set
                continue
            lst.remove(sess)
            if not lst:
                del self.sessions[k]
            self._emit_pairs(k, sess[2], sess[3], sess[0], sess[1])
        self._flush()

    def snapshot(self) -> Any:
        return {"sessions": self.sessions, "timers": list(self.timers), "late": self.late}

    def restore(self, state: Any) -> None:
        check_not_on_disk(self.node, state)
        self.sessions = state["sessions"]
        self.timers = sorted(state["timers"])
        self.late = state["late"]
        self._seq = itertools.count(max((e[1] for e in self.timers), default=0) + 1)


def make_join_operator(node: Node, rt: Runtime) -> Operator:
    op = node.op
    assert isinstance(op, JoinOp)
    if rt.state.on_disk:  # the state in the on-disk backend
        from . import _ondisk

        if op.mode in ("regular", "interval"):
            return _ondisk.DiskPairJoinOperator(node, rt)
        if isinstance(op.assigner, SessionWindow):
            return _ondisk.DiskSessionWindowJoinOperator(node, rt)
        return _ondisk.DiskSlicedWindowJoinOperator(node, rt)
    if op.mode in ("regular", "interval"):
        return PairJoinOperator(node, rt)
    if isinstance(op.assigner, SessionWindow):
        return SessionWindowJoinOperator(node, rt)
    return SlicedWindowJoinOperator(node, rt)
