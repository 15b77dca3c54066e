"""The pattern-matching engine: a pattern compiled to an automaton, run over partial matches.

**The automaton.** A pattern compiles (back to front, the last stage first) into states
with three kinds of edges, each guarded by a condition on the event and on the events the
partial match took so far:

- *take*: the partial match takes the event (for the stage the edge leaves) and moves on;
- *ignore*: the event passes the partial match by, which stays (or moves to a twin state
  that has lost its way out);
- *proceed*: move on without consuming the event, which the target state then sees.

A stage becomes one state per iteration it must or may take (``times(2, 4)``: two
mandatory, two optional ones) and, if it loops, a looping state with a twin for ignored
events. Contiguity decides the ignore edges: none for strict, "does not satisfy the stage"
for relaxed, always for non-deterministic relaxed. An optional stage adds a proceed edge
past itself. ``until`` takes the loop's events away once the condition holds. A greedy stage
blocks every edge of the state after it for events the stage itself could take. A group is
its sub-pattern compiled in place, once per iteration, a looping group wired back to its
own start. Negations become *stop* states: a partial match that reaches one on an event is
dropped with everything else it would have become on that event. ``not_next`` is a state
between two stages; ``not_followed_by`` a stop edge on the states that wait for the next
stage (on the looping states before it too: the forbidden event may not come during the
loop), and, at the end of a pattern, a *pending* state that becomes a match when its
``within`` deadline passes.

**The run.** Per key: a list of partial matches (state, events taken, first and previous
event time), plus the start state, which is always there. Every event is offered to every
partial match; the reachable edges (following proceed edges) say what it becomes. Partial
matches whose ``within`` deadline has passed are dropped first (timed out, or matches if
pending). Positions number a key's events in processing order (event time, then the
user's order, then arrival).

**Emitting matches.** With ``no_skip`` every match is emitted as soon as it is complete.
With any other skip strategy, a match is held back while a partial match that started
before it is still open: matches come out in order of their first events, and each one,
when it comes out, discards the held matches and the partial matches its strategy skips.

The engine is plain Python over picklable state (:class:`KeyState`: indices, tuples and
the user's events), driven by :mod:`._runner` from a process function's event-time timers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from millstream.cep import RELAXED, STRICT, Match, Pattern, Stage

Steps = tuple[tuple[int, int, int, Any], ...]  # (stage index, position, event time, event)
Cond = Callable[[Any, Any], bool] | None  # None: always true

TAKE, IGNORE, PROCEED = 0, 1, 2
NORMAL, FINAL, STOP, PENDING = 0, 1, 2, 3


class View(Mapping[str, list[Any]]):
    """What a condition sees as ``match``: the events taken so far, by stage name."""

    __slots__ = ("_index", "_steps")

    def __init__(self, index: dict[str, int], steps: Steps) -> None:
        self._index = index
        self._steps = steps

    def __getitem__(self, name: str) -> list[Any]:
        i = self._index.get(name)
        if i is None:
            raise KeyError(f"the pattern has no stage {name!r} (stages: {', '.join(self._index)})")
        return [s[3] for s in self._steps if s[0] == i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


# -- conditions ---------------------------------------------------------------------------


def _never(e: Any, v: Any) -> bool:
    return False


def _both(a: Cond, b: Cond) -> Cond:
    if a is None:
        return b
    if b is None:
        return a
    return lambda e, v: a(e, v) and b(e, v)


def _negate(a: Cond) -> Cond:
    if a is None:
        return _never
    return lambda e, v: not a(e, v)


def _compile_condition(conditions: tuple[tuple[str, Callable[..., Any], int], ...]) -> Cond:
    """One test ``fn(event, view)`` (None: always true)."""
    if not conditions:
        return None
    fns: list[tuple[str, Callable[[Any, Any], Any]]] = []
    for how, fn, n in conditions:
        fns.append((how, fn if n == 2 else _one_arg(fn)))
    if len(fns) == 1:
        only = fns[0][1]
        return lambda e, v: bool(only(e, v))

    def test(e: Any, v: Any) -> bool:
        ok = False
        for i, (how, f) in enumerate(fns):
            if i == 0:
                ok = bool(f(e, v))
            elif how == "and":
                ok = ok and bool(f(e, v))
            else:
                ok = ok or bool(f(e, v))
        return ok
    return test


def _one_arg(fn: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda e, v: fn(e)


# -- the automaton ------------------------------------------------------------------------


class NState:
    """A state: its edges ``(action, target, condition)`` and the stage its take edges record."""

    __slots__ = ("edges", "kind", "sid", "stage", "window")

    def __init__(self, sid: int, kind: int, stage: int, window: int | None = None) -> None:
        self.sid = sid
        self.kind = kind
        self.stage = stage
        self.window = window  # a partial match resting here times out this long after its previous event
        self.edges: list[tuple[int, NState, Cond]] = []

    def add(self, action: int, target: NState, cond: Cond) -> None:
        self.edges.append((action, target, cond))


class _Compiler:
    """Builds the automaton of a pattern, from its last stage back to its first.

    ``seq``/``i`` is the stage being compiled within the current (sub-)pattern, ``following``
    the stage after it, ``group`` the group stage whose sub-pattern is being compiled.
    """

    def __init__(self, pattern: Pattern, index: dict[str, int]) -> None:
        self.index = index
        self.states: list[NState] = []
        self.stops: dict[str, NState] = {}
        self.originals: dict[int, NState] = {}  # greedy + until: the unblocked copy of a sink
        self.first_of_loop: dict[int, bool] = {}
        self.took: set[int] = set()  # stages that have a take state already
        self.seq: tuple[Stage, ...] = pattern.stages
        self.i = len(self.seq) - 1
        self.following: Stage | None = None
        self.group: Stage | None = None
        self.within = pattern.within_ms
        self.final = self.new(FINAL)
        self.start = self.convert(self.middle(self.final))

    # -- helpers ----------------------------------------------------------------------
    @property
    def cur(self) -> Stage:
        return self.seq[self.i]

    def new(self, kind: int = NORMAL, stage: Stage | None = None, take: bool = False) -> NState:
        """A state; ``take``: one that waits for an event of ``stage`` (not a twin that lost its
        way out), which the stage's ``within(..., since="previous")`` bound applies to. As in
        Flink, on a quantified stage the bound skips the state built first (the loop, or the
        one waiting for the last event of ``times``)."""
        idx = self.index.get(stage.name, -1) if stage is not None and stage.group is None else -1
        window = None
        if take and stage is not None and stage.within_prev is not None:
            quantified = stage.hi != 1 or stage.lo != 1
            if not quantified or id(stage) in self.took:
                window = stage.within_prev
            self.took.add(id(stage))
        st = NState(len(self.states), kind, idx, window)
        self.states.append(st)
        return st

    def head_of_group(self) -> bool:
        return self.group is not None and self.i == 0

    def set_first_of_loop(self, value: bool) -> None:
        if self.cur.group is not None:
            self.first_of_loop[id(self.cur)] = value

    def group_first_of_loop(self) -> bool:
        return self.group is None or self.first_of_loop.get(id(self.group), True)

    def group_until(self) -> Cond:
        return _compile_condition(self.group.until) if self.group is not None and self.group.until else None

    def with_until(self, cond: Cond, until: Cond, take: bool = True) -> Cond:
        """``cond`` and not ``until`` (an ignore edge that does not exist stays absent)."""
        if until is None or (not take and cond is _never):
            return cond
        return _both(_negate(until), cond)

    def true(self) -> Cond:
        return self.with_until(None, self.group_until(), True)

    def take_cond(self, stage: Stage) -> Cond:
        return self.with_until(_compile_condition(stage.conditions), self.group_until(), True)

    def _ignore(self, stage: Stage, how: str) -> Cond:
        """An ignore edge's condition for contiguity ``how`` (``_never``: strict, no edge)."""
        if how == STRICT:
            return _never
        cond = _negate(_compile_condition(stage.conditions)) if how == RELAXED else None
        until = self.group_until()
        return cond if until is None else _both(_negate(until), cond)

    def ignore_cond(self, stage: Stage) -> Cond:
        """The condition of the ignore edge before a stage's first event (``_never``: no edge)."""
        how = stage.contiguity
        if self.head_of_group() and self.group is not None:
            how = self.group.contiguity if self.group_first_of_loop() else self.group.inner
        return self._ignore(stage, how)

    def inner_ignore_cond(self, stage: Stage) -> Cond:
        how = self.group.inner if self.head_of_group() and self.group is not None else stage.inner
        return self._ignore(stage, how)

    def is_optional(self, stage: Stage) -> bool:
        if self.head_of_group() and self.group is not None:
            return (self.group_first_of_loop() and self.group.optional) or stage.optional
        return stage.optional

    def stop(self, stage: Stage) -> NState:
        st = self.stops.get(stage.name)
        if st is None:
            st = self.new(STOP)
            st.add(TAKE, st, self.take_cond(stage))
            self.stops[stage.name] = st
        return st

    def current_nots(self) -> list[Stage]:
        """The ``not_followed_by`` stages before the current one (looking past optional stages)."""
        out = []
        j = self.i
        while j > 0 and (self.seq[j - 1].optional or self.seq[j - 1].kind == "not_followed_by"):
            j -= 1
            if self.seq[j].kind == "not_followed_by":
                out.append(self.seq[j])
        return out

    def add_stops(self, state: NState) -> None:
        for neg in self.current_nots():
            state.add(PROCEED, self.stop(neg), self.take_cond(neg))

    def add_stop_to_loop(self, state: NState) -> None:
        f = self.following
        if f is not None and f.kind == "not_followed_by":
            state.add(PROCEED, self.stop(f), self.take_cond(f))

    def copy(self, state: NState) -> NState:
        twin = self.new(state.kind)
        twin.stage, twin.window = state.stage, state.window
        for action, target, cond in state.edges:
            twin.add(action, twin if target is state else target, cond)
        return twin

    def copy_without_nots(self, sink: NState) -> NState:
        """Taking an event in an optional stage ends the negations before it: a copy of
        ``sink`` without the stop edges of those negations."""
        nots = self.current_nots()
        if not nots or not self.cur.optional:
            return sink
        names = {id(self.stop(n)) for n in nots}
        twin = self.new(sink.kind)
        twin.stage, twin.window = sink.stage, sink.window
        for action, target, cond in sink.edges:
            if action == PROCEED:
                if target.kind == STOP:
                    if id(target) in names:
                        continue
                else:
                    target = self.copy_without_nots(target)
                twin.add(action, target, cond)
            else:
                twin.add(action, twin if target is sink else target, cond)
        return twin

    @staticmethod
    def block_greedy(state: NState, take: Cond) -> None:
        """A greedy stage before ``state``: none of its edges fire for an event the stage could take."""
        state.edges = [(a, t, _both(c, _negate(take))) for a, t, c in state.edges]

    # -- stages ------------------------------------------------------------------------
    def middle(self, sink: NState) -> NState:
        while self.i > 0:
            cur = self.cur
            if cur.kind == "not_followed_by":
                if (self.within is not None or cur.within_prev is not None) and sink.kind == FINAL:
                    pending = self.new(PENDING)
                    pending.window = cur.within_prev
                    cond = self.take_cond(cur)
                    pending.add(PROCEED, self.stop(cur), cond)
                    pending.add(IGNORE, pending, _negate(cond))
                    sink = pending
            elif cur.kind == "not_next":
                nn = self.new()
                nn.window = cur.within_prev
                cond = self.take_cond(cur)
                if sink.kind == FINAL:
                    nn.add(IGNORE, sink, _negate(cond))
                else:
                    nn.add(PROCEED, sink, _negate(cond))
                nn.add(PROCEED, self.stop(cur), cond)
                sink = nn
            else:
                sink = self.convert(sink)
            self.following = cur
            self.i -= 1
        return sink

    def convert(self, sink: NState) -> NState:
        cur = self.cur
        if cur.hi is None:  # looping
            self.set_first_of_loop(False)
            loop = self.looping(self.copy_without_nots(sink))
            self.set_first_of_loop(True)
            last = self.times(loop, sink, cur.lo, cur.lo)
        elif cur.hi != 1 or cur.lo != 1:
            last = self.times(sink, sink, cur.lo, cur.hi)
        else:
            last = self.singleton(sink, sink, self.take_cond(cur), self.ignore_cond(cur), self.is_optional(cur))
        self.add_stops(last)
        return last

    def times(self, sink: NState, proceed: NState, lo: int, hi: int) -> NState:
        cur = self.cur
        self.set_first_of_loop(False)
        until = _compile_condition(cur.until) if cur.until else None
        inner = self.inner_ignore_cond(cur)
        inner = _both(_negate(until), inner) if until is not None and inner is not _never else inner
        take = self.with_until(self.take_cond(cur), until, True)
        if cur.greedy and lo != hi:
            if until is not None:
                self.originals[sink.sid] = self.copy(sink)
            self.block_greedy(sink, take)
        last = sink
        for _ in range(lo, hi):
            last = self.singleton(last, proceed, take, inner, True)
            self.add_stop_to_loop(last)
        for _ in range(lo - 1):
            last = self.singleton(last, None, take, inner, False)
            self.add_stop_to_loop(last)
        self.set_first_of_loop(True)
        return self.singleton(last, proceed, take, self.ignore_cond(cur), self.is_optional(cur))

    def singleton(self, sink: NState, proceed: NState | None, take: Cond, ignore: Cond,
                  optional: bool) -> NState:
        cur = self.cur
        if cur.group is not None:
            return self.group_states(cur, sink, proceed, optional)
        st = self.new(NORMAL, cur, take=True)
        target = self.copy_without_nots(sink)
        st.add(TAKE, target, take)
        go = self.true()
        # the head of a group skips itself only when it is optional itself; a group's own
        # optional way round it is added when the group is done
        if optional and (not self.head_of_group() or cur.optional) and proceed is not None:
            until = _compile_condition(cur.until) if cur.until else None
            if cur.greedy and until is not None:
                original = self.originals.get(proceed.sid)
                if original is not None:
                    st.add(PROCEED, original, _both(go, until))
                st.add(PROCEED, proceed, _both(go, _negate(until)))
            else:
                st.add(PROCEED, proceed, go)
        if ignore is not _never:
            if optional:
                twin = self.new(NORMAL, cur)
                twin.add(TAKE, target, take)
                twin.add(IGNORE, twin, ignore)
                self.add_stops(twin)
            else:
                twin = st
            st.add(IGNORE, twin, ignore)
        return st

    def _enter(self, group: Stage) -> tuple[Any, ...]:
        saved = (self.seq, self.i, self.following, self.group)
        self.group = group
        assert group.group is not None
        self.seq = group.group.stages
        self.i = len(self.seq) - 1
        self.following = None
        return saved

    def _leave(self, saved: tuple[Any, ...]) -> None:
        self.seq, self.i, self.following, self.group = saved

    def group_states(self, group: Stage, sink: NState, proceed: NState | None, optional: bool) -> NState:
        go = self.true()
        saved = self._enter(group)
        last = self.convert(self.middle(sink))
        if optional and proceed is not None:
            last.add(PROCEED, proceed, go)
        self._leave(saved)
        return last

    def looping(self, sink: NState) -> NState:
        cur = self.cur
        if cur.group is not None:
            go = self.true()
            dummy = self.new()
            saved = self._enter(cur)
            last = self.convert(self.middle(dummy))
            last.add(PROCEED, sink, go)
            dummy.add(PROCEED, last, go)
            self._leave(saved)
            return last
        until = _compile_condition(cur.until) if cur.until else None
        ignore = self.inner_ignore_cond(cur)
        if until is not None and ignore is not _never:
            ignore = _both(_negate(until), ignore)
        take = self.with_until(self.take_cond(cur), until, True)
        go = self.true()
        loop = self.new(NORMAL, cur, take=True)
        if cur.greedy:
            if until is not None:
                twin = self.copy(sink)
                loop.add(PROCEED, twin, _both(go, until))
                self.originals[sink.sid] = twin
            loop.add(PROCEED, sink, _both(go, _negate(until)) if until is not None else go)
            self.block_greedy(sink, self.take_cond(cur))
        else:
            loop.add(PROCEED, sink, go)
        loop.add(TAKE, loop, take)
        self.add_stop_to_loop(loop)
        if ignore is not _never:
            twin = self.new(NORMAL, cur)
            twin.add(TAKE, loop, take)
            twin.add(IGNORE, twin, ignore)
            loop.add(IGNORE, twin, ignore)
            self.add_stop_to_loop(twin)
        return loop


# -- partial matches ----------------------------------------------------------------------


class Partial:
    """One partial match: its state, the events it took, its first and previous event time."""

    __slots__ = ("prev_ts", "start_pos", "start_ts", "state", "steps")

    def __init__(self, state: int, steps: Steps, start_ts: int, start_pos: int, prev_ts: int) -> None:
        self.state = state
        self.steps = steps
        self.start_ts = start_ts
        self.start_pos = start_pos
        self.prev_ts = prev_ts

    def order(self) -> tuple[int, tuple[int, ...]]:
        return self.start_pos, tuple(s[1] for s in self.steps)


class KeyState:
    """Everything the engine keeps for one key: buffered events, partial matches, held matches."""

    __slots__ = ("buffer", "held", "partials", "pos", "seq")

    def __init__(self) -> None:
        self.buffer: list[tuple[int, int, Any]] = []  # (time, arrival, event), sorted
        self.partials: list[Partial] = []
        self.held: list[Partial] = []  # complete matches waiting for earlier partial matches
        self.seq = 0  # arrivals
        self.pos = 0  # events processed

    def size(self) -> int:
        """Events held (buffered, or in partial matches, counted once per partial match)."""
        return len(self.buffer) + sum(len(p.steps) for p in self.partials) + sum(len(p.steps) for p in self.held)

    def empty(self) -> bool:
        return not self.buffer and not self.partials and not self.held


Emit = Callable[[str, Match, int], None]


class Engine:
    """A compiled pattern. ``emit`` callbacks get ``(kind, Match, emit time)``, kind "match" or "timeout"."""

    def __init__(self, pattern: Pattern, *, timeouts: bool) -> None:
        self.pattern = pattern
        self.names = pattern.names
        self.index = {n: i for i, n in enumerate(self.names)}
        compiled = _Compiler(pattern, self.index)
        self.states = compiled.states
        self.start = compiled.start
        self.within = pattern.within_ms
        self.timed = pattern.timed
        self.timeouts = timeouts
        skip = pattern.skip
        self.skip_kind = skip.kind
        self.skip_stage = self.index.get(skip.name) if skip.name is not None else None

    # -- one event -----------------------------------------------------------------------
    def _edges(self, state: NState, event: Any, view: View) -> list[tuple[int, NState, NState]]:
        out: list[tuple[int, NState, NState]] = []
        todo = [state]
        while todo:
            s = todo.pop()
            for action, target, cond in s.edges:
                if cond is None or cond(event, view):
                    if action == PROCEED:
                        todo.append(target)
                    else:
                        out.append((action, s, target))
        return out

    def _final_after(self, state: NState, event: Any, view: View) -> bool:
        todo = [state]
        while todo:
            s = todo.pop()
            for action, target, cond in s.edges:
                if action == PROCEED and (cond is None or cond(event, view)):
                    if target.kind == FINAL:
                        return True
                    todo.append(target)
        return False

    def _step(self, p: Partial | None, event: Any, ts: int, pos: int) -> list[Partial]:
        state = self.start if p is None else self.states[p.state]
        view = View(self.index, () if p is None else p.steps)
        out: list[Partial] = []
        for action, src, target in self._edges(state, event, view):
            if action == IGNORE:
                if p is not None:
                    out.append(Partial(target.sid, p.steps, p.start_ts, p.start_pos, p.prev_ts))
                continue
            step = (src.stage, pos, ts, event)
            if p is None:
                q = Partial(target.sid, (step,), ts, pos, ts)
            else:
                q = Partial(target.sid, (*p.steps, step), p.start_ts, p.start_pos, ts)
            out.append(q)
            if self._final_after(target, event, view):
                out.append(Partial(FINAL_SID, q.steps, q.start_ts, q.start_pos, ts))
        return out

    def on_event(self, ks: KeyState, key: Any, event: Any, ts: int, emit: Emit) -> None:
        """Process the key's next event in order (what it is too late for expires first)."""
        if ks.partials and self.timed:
            self.expire(ks, key, ts, emit)
        pos = ks.pos
        ks.pos += 1
        new: list[Partial] = []
        found: list[Partial] = []
        states = self.states
        for p in ks.partials:
            self._advance(p, event, ts, pos, new, found, states)
        self._advance(None, event, ts, pos, new, found, states)  # the start state, always there
        ks.partials = new
        if found or ks.held:
            self._emit_matches(ks, key, found, ts, emit)

    def _advance(self, p: Partial | None, event: Any, ts: int, pos: int, new: list[Partial],
                 found: list[Partial], states: list[NState]) -> None:
        """What ``p`` becomes on ``event``: complete matches go to ``found``, the rest to ``new``,
        unless a negation stopped it (then nothing it would have become survives)."""
        keep: list[Partial] = []
        stopped = False
        for q in self._step(p, event, ts, pos):
            kind = states[q.state].kind
            if kind == FINAL:
                found.append(q)  # a match it completed stands (as in Flink)
            elif kind == STOP:
                stopped = True
            else:
                keep.append(q)
        if not stopped:
            new.extend(keep)

    # -- time ----------------------------------------------------------------------------
    def _deadline(self, p: Partial) -> float:
        """When ``p`` times out (inf: never): ``within`` after its first event, or its state's
        window after its previous event, whichever comes first."""
        d = p.start_ts + self.within if self.within is not None else INF
        w = self.states[p.state].window
        return d if w is None else min(d, p.prev_ts + w)

    def expire(self, ks: KeyState, key: Any, limit: int, emit: Emit) -> None:
        """Time out the partial matches whose deadline is at or before ``limit``, deadline by
        deadline (pending ones become matches), so the result does not depend on how far
        the watermark jumps."""
        if not self.timed:
            return
        while ks.partials:
            first = min(map(self._deadline, ks.partials))
            if first > limit:
                return
            deadline = int(first)
            gone = [p for p in ks.partials if self._deadline(p) == deadline]
            ks.partials = [p for p in ks.partials if self._deadline(p) != deadline]
            found = [p for p in gone if self.states[p.state].kind == PENDING]
            if self.timeouts:
                seen: set[tuple[int, ...]] = set()
                for p in sorted(gone, key=Partial.order):
                    positions = tuple(s[1] for s in p.steps)
                    if self.states[p.state].kind != PENDING and positions not in seen:
                        seen.add(positions)  # one timeout per partial match, whatever states it was in
                        emit("timeout", Match(self.names, p.steps, key, deadline), deadline - 1)
            if found or ks.held:
                self._emit_matches(ks, key, found, deadline - 1, emit)

    def next_deadline(self, ks: KeyState) -> int | None:
        if not self.timed or not ks.partials:
            return None
        first = min(self._deadline(p) for p in ks.partials)
        return None if first == INF else int(first)

    # -- matches -------------------------------------------------------------------------
    def _emit_matches(self, ks: KeyState, key: Any, found: list[Partial], at: int, emit: Emit) -> None:
        if self.skip_kind == "no_skip":
            for p in sorted(found, key=Partial.order):
                emit("match", Match(self.names, p.steps, key), at)
            return
        ks.held.extend(found)
        while ks.held:
            first = min(ks.held, key=Partial.order)
            if ks.partials and min(p.start_pos for p in ks.partials) < first.start_pos:
                return  # an earlier partial match is still open: its matches come first
            ks.held.remove(first)
            self._prune(ks, first)
            emit("match", Match(self.names, first.steps, key), at)

    def _prune(self, ks: KeyState, m: Partial) -> None:
        """Drop the partial and held matches that ``m``'s skip strategy skips."""
        skip = self.skip_kind
        positions = [s[1] for s in m.steps]
        if skip == "skip_to_next":
            last_dropped = positions[0]
        elif skip == "skip_past_last_event":
            last_dropped = positions[-1]
        else:
            marks = [s[1] for s in m.steps if s[0] == self.skip_stage]
            if not marks:
                return
            last_dropped = (marks[0] if skip == "skip_to_first" else marks[-1]) - 1
        ks.partials = [p for p in ks.partials if p.start_pos > last_dropped]
        ks.held = [p for p in ks.held if p.start_pos > last_dropped]


FINAL_SID = 0  # the compiler creates the final state first
INF = float("inf")
