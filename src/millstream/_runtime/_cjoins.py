"""Vectorised window joins for the micro-batch and batch executors.

The same slices as the native window join (each record in the one slice of width
gcd(size, slide) that holds its time); when the watermark passes a window's end,
its pairs are one Polars join of the two sides' records of its slices on the key.
The output is the native one: the left record's fields, the right's (a name the
left has too becomes ``<name>_right``, except a key field read under the same name
on both sides, kept once), ``window_start`` and ``window_end``, at ``window_end - 1``.

The records keep their types as in native mode: while every field of a side keeps one Python type
(and the key fields of both sides the same one) the kept frames hold them as they came; a batch in
which one changes (ints so far, a float now; values of several types in one batch), which a typed
frame would widen (``1`` read back as ``1.0``), hands the kept records and the rest of the stream to
the native operator (:class:`._columnar.ColumnKinds`, ``StandInOperator.hand_over``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from millstream._plan import JoinOp, KeySpec, Node
from millstream._time import MIN_WATERMARK
from millstream.windows import SlidingWindow, TumblingWindow

from ._base import Operator, Runtime
from ._columnar import STATE_FIELDS, TIME, ColumnKinds, StandInOperator, as_frame, odd_floats, polars, unify
from ._cstate import join_key_column
from ._joins import PairJoinOperator, SlicedWindowJoinOperator

if TYPE_CHECKING:
    import polars as pl

_S = "__slice__"
_E = "__end__"
_T2 = "__other_time__"


def vectorisable_join(op: JoinOp, timed: bool) -> bool:
    """Inner regular and interval joins, and tumbling or sliding window joins, on fields or
    expressions, with the default output."""
    if not (timed and op.how == "inner" and op.combine is None and op.left_key.fn is None
            and op.right_key.fn is None and _width(op.left_key) == _width(op.right_key)):
        return False
    return op.mode in ("regular", "interval") or (op.mode == "window"
                                                  and isinstance(op.assigner, TumblingWindow | SlidingWindow))


def make_columnar_join(node: Node, rt: Runtime) -> Operator:
    op = node.op
    assert isinstance(op, JoinOp)
    if op.mode == "regular":
        return ColumnarRegularJoin(node, rt)
    if op.mode == "interval":
        return ColumnarIntervalJoin(node, rt)
    return ColumnarWindowJoin(node, rt)


def _width(key: KeySpec) -> int:
    return len(key.fields) if key.fn is None and key.expr is None else 1


def _key_columns(op: JoinOp) -> tuple[list[list[str]], list[list[pl.Expr]]]:
    """Per side: the columns holding the key, and the expressions that make them (expression keys)."""
    cols: list[list[str]] = []
    exprs: list[list[pl.Expr]] = []
    for side, key in enumerate((op.left_key, op.right_key)):
        if key.expr is not None:
            cols.append([join_key_column(side)])
            exprs.append([key.expr.to_polars().alias(join_key_column(side))])
        else:
            cols.append(list(key.fields))
            exprs.append([])
    return cols, exprs


def pair_frames(left: pl.DataFrame, right: pl.DataFrame, key_cols: list[list[str]], shared: set[str],
                on: list[str]) -> pl.DataFrame:
    """Every pair of a left and a right row with equal keys (and equal ``on`` columns), as the native
    join makes them: the left's fields, then the right's; a right field the left has too is renamed
    ``<name>_right``, except a key field read under the same name on both sides (kept once)."""
    lk, rk = key_cols
    tmp = [f"__rk{i}" for i in range(len(rk))]
    right = right.rename(dict(zip(rk, tmp, strict=True)))
    # one type per key on both sides (a side whose keys are all null has none of its own)
    for a, b in zip(lk, tmp, strict=True):
        la, rb = left.schema[a], right.schema[b]
        if la != rb:
            left, right = (left.with_columns(left[a].cast(rb)), right) if la == polars().Null else \
                (left, right.with_columns(right[b].cast(la))) if rb == polars().Null else (left, right)
    out = left.join(right, left_on=[*lk, *on], right_on=[*tmp, *on], how="inner", nulls_equal=True,
                    coalesce=False, suffix="_right")
    renames: dict[str, str] = {}
    drop = [f"{c}_right" for c in on if f"{c}_right" in out.columns]
    for name, t in zip(rk, tmp, strict=True):
        if name.startswith("__k") or (name in lk and name in shared):
            drop.append(t)
        else:
            renames[t] = f"{name}_right" if name in left.columns else name
    drop += [c for c in lk if c.startswith("__k")]
    return out.drop(drop).rename(renames)


class ColumnarWindowJoin(StandInOperator):
    columnar = True
    state_fields = STATE_FIELDS["join"]

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt, 2)
        op = node.op
        assert isinstance(op, JoinOp) and isinstance(op.assigner, TumblingWindow | SlidingWindow)
        self.op = op
        self.pl = polars()
        a = op.assigner
        self.size, self.slide, self.offset, self.slice = a.size_ms, a.slide_ms, a.offset_ms, a.slice_ms
        self.shared = set(op.shared_fields)
        self.key_cols, self.key_exprs = _key_columns(op)
        self.sides: list[list[pl.DataFrame]] = [[], []]
        self.fired = MIN_WATERMARK
        self.late = 0
        self.late_outs: list[tuple[Operator, int]] = []
        self._watch()

    def _watch(self) -> None:
        """The Python type of every field of each side so far, and of the keys of both (a change hands over)."""
        self.kinds = [ColumnKinds(), ColumnKinds()]
        self.key_kinds = ColumnKinds()
        self.key_alias = [{c: f"#key{i}" for i, c in enumerate(cols)} for cols in self.key_cols]

    def _native(self) -> Operator:
        from ._joins import make_join_operator

        twin = make_join_operator(self.node, self.rt)
        twin.outs = self.outs
        twin.late_outs = self.late_outs  # type: ignore[attr-defined]
        twin.wm = self.wm
        twin.in_wms = self.in_wms
        return twin

    def _batch(self, port: int, records: Any, times: list[int] | None) -> pl.DataFrame | None:
        """The batch with its key columns, counted; None when the native stand-in has it: records that
        are not dicts, or a field whose Python type is not the one it had (see ColumnKinds) hand the
        join over to it, with the records kept."""
        if self.delegate is not None:
            self._to_delegate(port, records, times)
            return None
        try:
            df = as_frame(records, times, mixed="object")
        except Exception:  # noqa: BLE001 - not dicts: the native operator takes them, or names the record
            self.hand_over(port, records, times)
            return None
        if self.key_exprs[port]:
            df = df.with_columns(self.key_exprs[port])
        if not (self.kinds[port].stable(df) and self.key_kinds.stable(df, self.key_cols[port], self.key_alias[port])) \
                or odd_floats(df, self.key_cols[port]):  # NaN or -0.0 keys: Python's equality, natively
            self.hand_over(port, records, times)
            return None
        self.records_in += df.height
        return df

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        df = self._batch(port, records, times)
        if df is None:
            return
        pl = self.pl
        t = pl.col(TIME)
        df = df.with_columns((t - (t - self.offset) % self.slice).alias(_S))
        if self.wm > MIN_WATERMARK:
            s = pl.col(_S)
            late = (s - (s - self.offset) % self.slide + (self.size - 1)) <= self.wm
            n = df.height
            df = df.filter(~late)
            self.late += n - df.height
        if df.height:
            self.sides[port].append(df)

    def _on_watermark(self, wm: int) -> None:
        pl = self.pl
        prev, self.fired = self.fired, wm
        sides = []
        for i in (0, 1):
            frames = self.sides[i]
            whole = (frames[0] if len(frames) == 1 else pl.concat(unify(frames, self.key_cols[i]),
                                                                   how="diagonal_relaxed")) if frames else None
            sides.append(whole)
        if sides[0] is None or sides[1] is None:
            self._keep(sides, wm)
            return
        s = pl.col(_S)
        ls = s - (s - self.offset) % self.slide
        due = []
        for side in sides:
            assert side is not None
            frames = []
            for j in range(-(-self.size // self.slide)):
                e = ls - j * self.slide + self.size
                cond = (e > s) & (e - 1 <= wm)
                if prev > MIN_WATERMARK:
                    cond = cond & (e - 1 > prev)
                frames.append(side.filter(cond).with_columns(e.alias(_E)))
            due.append(pl.concat(frames).drop(_S, TIME))
        self._emit_pairs(due[0], due[1])
        self._keep(sides, wm)

    def _keep(self, sides: list[pl.DataFrame | None], wm: int) -> None:
        pl = self.pl
        s = pl.col(_S)
        for i, side in enumerate(sides):
            if side is None:
                self.sides[i] = []
                continue
            side = side.filter(s - (s - self.offset) % self.slide + (self.size - 1) > wm)
            self.sides[i] = [side] if side.height else []

    def _emit_pairs(self, left: pl.DataFrame, right: pl.DataFrame) -> None:
        if left.height == 0 or right.height == 0:
            return
        pl = self.pl
        out = pair_frames(left, right, self.key_cols, self.shared, on=[_E])
        if out.height == 0:
            return
        out = out.with_columns((pl.col(_E) - self.size).alias("window_start"), pl.col(_E).alias("window_end"),
                               (pl.col(_E) - 1).alias(TIME)).drop(_E)
        self.emit(out, None)

    def _advance(self) -> None:
        before = self.wm
        super()._advance()
        if self.wm > before:  # the late side output follows the step's watermark too
            for op, port in self.late_outs:
                op.watermark(port, self.wm)

    def _send_late(self, late: pl.DataFrame, port: int) -> None:
        """Late records of ``port`` to the late side output (an interval join's ``.late()``)."""
        if late.height == 0 or self.muted or not self.late_outs:
            return
        extra = [c for c in late.columns if c.startswith("__k")]
        out = late.drop(extra) if extra else late
        for op, p in self.late_outs:
            op.push(p, out, None)  # type: ignore[arg-type]  # a columnar port takes batches

    def _state(self) -> dict[str, Any]:
        return {"sides": self.sides, "fired": self.fired, "late": self.late,
                "kinds": [dict(k.seen) for k in self.kinds], "key_kinds": dict(self.key_kinds.seen)}

    def _kept(self, side: int) -> tuple[list[Any], list[int], list[Any]]:
        """The records ``side`` keeps, as they came: (records, times, slices or [])."""
        frames = self.sides[side]
        if not frames:
            return [], [], []
        pl = self.pl
        whole = frames[0] if len(frames) == 1 else pl.concat(unify(frames, self.key_cols[side]), how="diagonal_relaxed")
        extra = [c for c in whole.columns if c in (TIME, _S) or (c.startswith("__k") and c in self.key_cols[side])]
        slices = whole.get_column(_S).to_list() if _S in whole.columns else []
        return whole.drop(extra).to_dicts(), whole.get_column(TIME).to_list(), slices

    def _give(self, twin: Operator) -> None:
        assert isinstance(twin, SlicedWindowJoinOperator)
        for side in (0, 1):
            records, _, slices = self._kept(side)
            keyf = twin.keyfs[side]
            for s, r in zip(slices, records, strict=True):
                sl = twin.slices.get(s)
                if sl is None:
                    sl = twin.slices[s] = ({}, {})
                    twin.timers.add_slice(s, self.fired)  # the windows that have not fired
                sl[side].setdefault(keyf(r), []).append(r)
        twin.late += self.late

    def _load(self, state: dict[str, Any]) -> None:
        self.sides = state["sides"]
        self.fired = state["fired"]
        self.late = state["late"]
        for kinds, seen in zip(self.kinds, state.get("kinds", [{}, {}]), strict=True):
            kinds.seen = dict(seen)
        self.key_kinds.seen = dict(state.get("key_kinds", {}))

    def _metrics(self) -> dict[str, int]:
        return {"late": self.late}


class ColumnarRegularJoin(ColumnarWindowJoin):
    """The regular (unbounded) inner join, vectorised: a batch of one side joins everything the other
    side kept, then is kept itself. With a TTL, records at or before ``watermark - ttl - 1`` are late
    (counted, joined with nothing) and dropped from state, as natively."""

    def __init__(self, node: Node, rt: Runtime) -> None:
        Operator.__init__(self, node, rt, 2)
        op = node.op
        assert isinstance(op, JoinOp)
        self.op = op
        self.pl = polars()
        self.shared = set(op.shared_fields)
        self.key_cols, self.key_exprs = _key_columns(op)
        self.sides = [[], []]
        self.fired = MIN_WATERMARK
        self.late = 0
        self.late_outs = []
        self._watch()

    def _give(self, twin: Operator) -> None:
        assert isinstance(twin, PairJoinOperator)
        for side in (0, 1):
            records, times, _ = self._kept(side)
            keyf, store, buckets = twin.keyfs[side], twin.sides[side], twin.buckets[side]
            for t, r in zip(times, records, strict=True):
                k = keyf(r)
                store.setdefault(k, []).append((t, r))
                if twin.checked:
                    buckets.setdefault(t // twin.bucket_ms, set()).add(k)
        twin.heaps = [sorted(b) for b in twin.buckets]
        twin.late += self.late

    # -- the rules of the join kind: times at or before a cut (None: no cut) ------------------------
    def _late_cut(self, side: int) -> int | None:
        """A record of ``side`` at or before this time when it comes is late."""
        return self._dead(side)

    def _dead(self, side: int) -> int | None:
        """Kept records of ``side`` at or before this time can pair with nothing to come."""
        ttl = self.op.ttl_ms
        return None if ttl is None or self.wm <= MIN_WATERMARK else self.wm - ttl - 1

    def _pairs_kept(self, out: pl.DataFrame, port: int) -> pl.DataFrame:
        """The pairs that are the join's (all of them, for a regular join)."""
        return out

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        df = self._batch(port, records, times)
        if df is None:
            return
        pl = self.pl
        cut = self._late_cut(port)
        if cut is not None:
            n = df.height
            self._send_late(df.filter(pl.col(TIME) <= cut), port)
            df = df.filter(pl.col(TIME) > cut)
            self.late += n - df.height
        if df.height == 0:
            return
        other = self.sides[1 - port]
        if other:
            kept = other[0] if len(other) == 1 else pl.concat(unify(other, self.key_cols[1 - port]),
                                                               how="diagonal_relaxed")
            self.sides[1 - port] = [kept]
            dead = self._dead(1 - port)
            if dead is not None:
                kept = kept.filter(pl.col(TIME) > dead)
            if kept.height:
                kept = kept.rename({TIME: _T2})
                left, right = (df, kept) if port == 0 else (kept, df)
                out = self._pairs_kept(pair_frames(left, right, self.key_cols, self.shared, on=[]), port)
                if out.height:  # a pair is at the later of its two times
                    self.emit(out.with_columns(pl.max_horizontal(TIME, _T2).alias(TIME)).drop(_T2), None)
        dead = self._dead(port)
        if dead is not None:
            df = df.filter(pl.col(TIME) > dead)
        if df.height:
            self.sides[port].append(df)
            if len(self.sides[port]) >= 32:
                self.sides[port] = [pl.concat(unify(self.sides[port], self.key_cols[port]), how="diagonal_relaxed")]

    def _on_watermark(self, wm: int) -> None:
        pl = self.pl
        for i, frames in enumerate(self.sides):
            dead = self._dead(i)
            if dead is not None:
                kept = [f.filter(pl.col(TIME) > dead) for f in frames]
                self.sides[i] = [f for f in kept if f.height]


class ColumnarIntervalJoin(ColumnarRegularJoin):
    """The interval join, vectorised: pairs with ``left.t + lower <= right.t <= left.t + upper``; a record
    behind the watermark when it comes is late (one at the watermark joins, as in Flink); a kept record
    goes once nothing to come can pair with it (left: ``t < watermark - upper``; right:
    ``t < watermark + lower``)."""

    def _late_cut(self, side: int) -> int | None:
        return self.wm - 1 if self.wm > MIN_WATERMARK else None

    def _dead(self, side: int) -> int | None:
        if self.wm <= MIN_WATERMARK:
            return None
        return self.wm - self.op.upper_ms - 1 if side == 0 else self.wm + self.op.lower_ms - 1

    def _pairs_kept(self, out: pl.DataFrame, port: int) -> pl.DataFrame:
        pl = self.pl
        tl, tr = (pl.col(TIME), pl.col(_T2)) if port == 0 else (pl.col(_T2), pl.col(TIME))
        return out.filter((tr >= tl + self.op.lower_ms) & (tr <= tl + self.op.upper_ms))
