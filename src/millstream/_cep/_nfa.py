"""The pattern-matching engine: partial-match lists per key, advanced one event at a time.

A partial match holds the events it took (``steps``: ``(stage, position, time, event)``),
its current stage and count there, and the *targets* it may still reach with a later
event: another iteration of its stage (``CONT``), the first event of a later stage ``j``
(skipping optional stages in between), or completion once a trailing negation has held
(``FINAL``). Every event a partial match does not take is in its *gap*, and may rule
targets out: strict contiguity forbids any gap, relaxed contiguity a gap event that
satisfies the target stage, a negation a gap event that satisfies it, a greedy stage an
exit while a gap event could still extend it. A partial match with no target left is
dropped. Positions number a key's events in processing order (event time, then arrival).

The engine is plain Python over picklable state (:class:`KeyState`), driven by
:mod:`._runner` from a process function's event-time timers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from millstream.cep import ANY, RELAXED, STRICT, Match, Pattern, Stage

CONT = -1
FINAL = -2

Steps = tuple[tuple[int, int, int, Any], ...]


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


class Partial:
    """One partial match (mutable: its gap and targets change as events pass it by)."""

    __slots__ = ("count", "done", "gap", "stage", "start_pos", "start_ts", "steps", "targets")

    def __init__(self, stage: int, count: int, steps: Steps, targets: tuple[int, ...], done: bool) -> None:
        self.stage = stage
        self.count = count
        self.steps = steps
        self.start_ts = steps[0][2]
        self.start_pos = steps[0][1]
        self.gap = 0
        self.targets = targets
        self.done = done  # emitted as a match already: not a timeout when it expires


class KeyState:
    """Everything the engine keeps for one key: buffered events and partial matches."""

    __slots__ = ("buffer", "partials", "pos", "seq")

    def __init__(self) -> None:
        self.buffer: list[tuple[int, int, Any]] = []  # (time, arrival, event), sorted
        self.partials: list[Partial] = []
        self.seq = 0  # arrivals
        self.pos = 0  # events processed

    def size(self) -> int:
        """Events held (buffered, or in partial matches, counted once per partial match)."""
        return len(self.buffer) + sum(len(p.steps) for p in self.partials)


def _compile_condition(conditions: tuple[tuple[str, Callable[..., Any], int], ...]
                       ) -> tuple[Callable[[Any, Any], bool] | None, bool]:
    """One test ``fn(event, view)`` (None: always true) and whether it reads the view."""
    if not conditions:
        return None, False
    needs = any(n == 2 for _, _, n in conditions)
    fns: list[tuple[str, Callable[[Any, Any], Any]]] = []
    for how, fn, n in conditions:
        fns.append((how, fn if n == 2 else _one_arg(fn)))
    if len(fns) == 1:
        only = fns[0][1]
        return (lambda e, v: bool(only(e, v))), needs

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
    return test, needs


def _one_arg(fn: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda e, v: fn(e)


class CStage:
    """A compiled positive stage."""

    __slots__ = ("contiguity", "greedy", "hi", "inner", "lo", "name", "negs", "optional", "test")

    def __init__(self, stage: Stage, negs: list[tuple[str, Callable[[Any, Any], bool]]]) -> None:
        self.name = stage.name
        test, _ = _compile_condition(stage.conditions)
        self.test: Callable[[Any, Any], bool] = test or (lambda e, v: True)
        self.lo = stage.lo
        self.hi = stage.hi
        self.optional = stage.optional
        self.greedy = stage.greedy
        self.inner = stage.inner
        self.contiguity = stage.contiguity
        self.negs = negs  # negations before this stage: ("not_next" | "not_followed_by", test)


class Engine:
    """A compiled pattern. ``out`` callbacks get ``(kind, Match, emit time)``, kind "match" or "timeout"."""

    def __init__(self, pattern: Pattern, *, timeouts: bool) -> None:
        self.pattern = pattern
        self.names = pattern.names
        self.index = {n: i for i, n in enumerate(self.names)}
        stages: list[CStage] = []
        negs: list[tuple[str, Callable[[Any, Any], bool]]] = []
        for s in pattern.stages:
            if s.negated:
                test, _ = _compile_condition(s.conditions)
                negs.append((s.kind, test or (lambda e, v: True)))
            else:
                stages.append(CStage(s, negs))
                negs = []
        self.stages = stages
        self.end_negs = negs
        self.end_next_only = bool(negs) and all(k == "not_next" for k, _ in negs)
        n = len(stages)
        # exits[i]: later stages an event may enter from stage i (the ones between are optional)
        self.exits: list[tuple[int, ...]] = []
        self.final_ok: list[bool] = []
        for i in range(n):
            ex = []
            for j in range(i + 1, n):
                ex.append(j)
                if not stages[j].optional:
                    break
            self.exits.append(tuple(ex))
            self.final_ok.append(all(stages[j].optional for j in range(i + 1, n)))
        self.starts = tuple(j for j in range(n) if all(stages[k].optional for k in range(j)))
        self.within = pattern.within_ms
        self.timeouts = timeouts
        skip = pattern.skip
        self.skip_kind = skip.kind
        self.skip_stage = self.index.get(skip.name) if skip.name is not None else None

    # -- partial matches ---------------------------------------------------------------
    def _targets(self, stage: int, count: int) -> tuple[int, ...]:
        st = self.stages[stage]
        t: list[int] = []
        if st.hi is None or count < st.hi:
            t.append(CONT)
        if count >= st.lo:
            t.extend(self.exits[stage])
            if self.end_negs and self.final_ok[stage]:
                t.append(FINAL)
        return tuple(t)

    def _take(self, p: Partial | None, stage: int, event: Any, ts: int, pos: int,
              new: list[Partial], done: list[Partial]) -> None:
        step = (stage, pos, ts, event)
        if p is None:
            steps: Steps = (step,)
            count = 1
        else:
            steps = (*p.steps, step)
            count = p.count + 1 if p.stage == stage else 1
        complete = count >= self.stages[stage].lo and self.final_ok[stage] and not self.end_negs
        q = Partial(stage, count, steps, self._targets(stage, count), complete)
        if complete:
            done.append(q)
        if q.targets:
            new.append(q)

    def _advance(self, p: Partial, event: Any, ts: int, pos: int, new: list[Partial],
                 done: list[Partial]) -> None:
        i = p.stage
        st = self.stages[i]
        view = View(self.index, p.steps)
        targets = p.targets
        cont_take = False
        if CONT in targets and st.test(event, view):
            cont_take = True
            self._take(p, i, event, ts, pos, new, done)
        block = cont_take and st.greedy  # greedy: no exit while this event can extend the stage
        first = p.gap == 0
        keep: list[int] = []
        for t in targets:
            if t == CONT:
                if st.inner == ANY or (st.inner == RELAXED and not cont_take):
                    keep.append(t)
                continue
            if t == FINAL:
                failed = False
                for kind, neg in self.end_negs:
                    if (first or kind != "not_next") and neg(event, view):
                        failed = True
                        break
                if failed:
                    continue
                if first and self.end_next_only:
                    # the event right after the match does not match the negation: complete now
                    p.done = True
                    done.append(p)
                    continue
                keep.append(t)
                continue
            sj = self.stages[t]
            negfail = nextfail = False
            for kind, neg in sj.negs:
                if kind == "not_next":
                    if first and neg(event, view):
                        negfail = nextfail = True
                elif neg(event, view):
                    negfail = True
            hit = sj.test(event, view)
            if hit and not block and not nextfail:
                self._take(p, t, event, ts, pos, new, done)
            if block or negfail or sj.contiguity == STRICT or (sj.contiguity == RELAXED and hit):
                continue
            keep.append(t)
        if keep:
            p.targets = tuple(keep)
            p.gap += 1
            new.append(p)

    # -- driving -------------------------------------------------------------------------
    def on_event(self, ks: KeyState, key: Any, event: Any, ts: int,
                 emit: Callable[[str, Match, int], None]) -> None:
        """Process the key's next event in time order (expire first what it is too late for)."""
        if self.within is not None and ks.partials:
            self.expire(ks, key, ts, emit)
        pos = ks.pos
        ks.pos += 1
        new: list[Partial] = []
        done: list[Partial] = []
        for p in ks.partials:
            self._advance(p, event, ts, pos, new, done)
        empty = View(self.index, ())
        for j in self.starts:
            if self.stages[j].test(event, empty):
                self._take(None, j, event, ts, pos, new, done)
        ks.partials = new
        if done:
            self._complete(ks, key, done, ts, emit)

    def expire(self, ks: KeyState, key: Any, limit: int, emit: Callable[[str, Match, int], None]) -> None:
        """Expire the partial matches whose deadline (first event + within) is at or before ``limit``."""
        within = self.within
        if within is None:
            return
        expired = [p for p in ks.partials if p.start_ts + within <= limit]
        if not expired:
            return
        gone = {id(p) for p in expired}
        ks.partials = [p for p in ks.partials if id(p) not in gone]
        expired.sort(key=lambda p: p.start_ts)
        cuts: list[tuple[int, int]] = []
        i = 0
        while i < len(expired):  # deadline by deadline
            deadline = expired[i].start_ts + within
            group = []
            while i < len(expired) and expired[i].start_ts + within == deadline:
                if not _cut(cuts, expired[i].start_pos):
                    group.append(expired[i])
                i += 1
            complete = [p for p in group if FINAL in p.targets]
            if complete:
                cuts.extend(self._complete(ks, key, complete, deadline - 1, emit))
            if self.timeouts:
                for p in group:
                    if FINAL in p.targets or p.done or _cut(cuts, p.start_pos):
                        continue
                    emit("timeout", Match(self.names, p.steps, key, deadline), deadline - 1)

    def _complete(self, ks: KeyState, key: Any, done: list[Partial], at: int,
                  emit: Callable[[str, Match, int], None]) -> list[tuple[int, int]]:
        """Emit completed matches in order (start, positions), applying the skip strategy."""
        done.sort(key=lambda p: tuple(s[1] for s in p.steps))
        cuts: list[tuple[int, int]] = []
        skip = self.skip_kind
        for p in done:
            if cuts and _cut(cuts, p.start_pos):
                continue
            emit("match", Match(self.names, p.steps, key), at)
            if skip == "no_skip":
                continue
            lo = p.start_pos
            if skip == "skip_to_next":
                hi = lo + 1
            elif skip == "skip_past_last_event":
                hi = p.steps[-1][1] + 1
            else:
                at_stage = [s[1] for s in p.steps if s[0] == self.skip_stage]
                hi = lo if not at_stage else at_stage[0] if skip == "skip_to_first" else at_stage[-1]
            if hi > lo:
                cuts.append((lo, hi))
        if cuts:
            ks.partials = [p for p in ks.partials if not _cut(cuts, p.start_pos)]
        return cuts

    def next_deadline(self, ks: KeyState) -> int | None:
        if self.within is None or not ks.partials:
            return None
        return min(p.start_ts for p in ks.partials) + self.within


def _cut(cuts: list[tuple[int, int]], pos: int) -> bool:
    return any(lo <= pos < hi for lo, hi in cuts)
