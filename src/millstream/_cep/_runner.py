"""A pattern as a keyed process function: events are buffered per key in state, and run
through the engine in event-time order once the watermark passes them (an event-time timer
per buffered time, one per ``within`` deadline).

The step emits tagged tuples ``(tag, key, payload)``: matches, timed-out partial matches and
late events; thin process steps after it (:func:`unwrapper`) split them into streams.
"""

from __future__ import annotations

import bisect
import functools
import inspect
from collections.abc import Callable
from typing import Any

from millstream.cep import Match, Pattern
from millstream.errors import FlowDefinitionError

from ._nfa import Engine, KeyState

MATCH, TIMEOUT, LATE = 0, 1, 2
_TAGS = {"match": MATCH, "timeout": TIMEOUT}


def _time(item: tuple[Any, ...]) -> int:
    return int(item[0])


def _order(item: tuple[Any, ...]) -> tuple[int, int]:
    return item[0], item[1]


def _orderer(order_by: Callable[..., Any] | None) -> Callable[[list[Any]], list[Any]] | None:
    """How to order the events of one time: by a key ``order_by(event)``, or with a comparator
    ``order_by(a, b)`` (negative, zero, positive, as Flink's ``CEP.pattern(..., comparator)``);
    ties keep their arrival order."""
    if order_by is None:
        return None
    try:
        two = len([p for p in inspect.signature(order_by).parameters.values()
                   if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) == 2
    except (TypeError, ValueError):
        two = False
    fn = order_by
    if two:
        key = functools.cmp_to_key(fn)
        return lambda events: sorted(events, key=key)
    return lambda events: sorted(events, key=fn)


class Runner:
    """``on_record`` and ``on_timer`` of the pattern's process step."""

    def __init__(self, engine: Engine, select: Callable[[Match], Any] | None,
                 order_by: Callable[[Any], Any] | None = None) -> None:
        self.engine = engine
        self.select = select
        self.order = _orderer(order_by)
        self.__name__ = self.__qualname__ = f"match[{engine.pattern.describe()}]"

    def on_record(self, ctx: Any, record: Any) -> None:
        ts = ctx.timestamp
        if ts <= ctx.watermark:  # its turn in event-time order has passed
            ctx.emit((LATE, ctx.key, record))
            return
        st = ctx.state["cep"]
        ks = st.value()
        if ks is None:
            ks = KeyState()
        item = (ts, ks.seq, record)
        ks.seq += 1
        buf = ks.buffer
        if not buf or _order(buf[-1]) <= _order(item):
            buf.append(item)
        else:
            bisect.insort(buf, item, key=_order)
        st.update(ks)
        ctx.timers.register_event_time(ts)

    def on_timer(self, ctx: Any, ts: int) -> None:
        st = ctx.state["cep"]
        ks: KeyState | None = st.value()
        if ks is None:
            return
        wm = ctx.watermark
        key = ctx.key
        engine = self.engine
        select = self.select

        def emit(kind: str, match: Match, at: int) -> None:
            if kind == "match":
                ctx.emit((MATCH, key, match.to_dict() if select is None else select(match)), timestamp=at)
            else:
                ctx.emit((TIMEOUT, key, match.to_dict()), timestamp=at)

        buf = ks.buffer
        n = bisect.bisect_right(buf, wm, key=_time)
        if n:
            due = buf[:n]
            if self.order is None:
                for t, _, event in due:
                    engine.on_event(ks, key, event, t, emit)
            else:
                i = 0
                while i < n:  # one event time at a time, in the user's order
                    j = i
                    while j < n and due[j][0] == due[i][0]:
                        j += 1
                    events = [e for _, _, e in due[i:j]]
                    for event in self.order(events) if j - i > 1 else events:
                        engine.on_event(ks, key, event, due[i][0], emit)
                    i = j
            del buf[:n]
        engine.expire(ks, key, wm + 1, emit)  # deadlines d with d - 1 <= wm
        if ks.empty():
            st.clear()
            return
        st.update(ks)
        deadline = engine.next_deadline(ks)
        if deadline is not None and deadline - 1 > wm:
            ctx.timers.register_event_time(deadline - 1)


def build_runner(pattern: Any, *, select: Any, timeouts: bool, step: str, loc: str | None,
                 order_by: Any = None) -> Runner:
    """Check a pattern as a whole and compile it; errors name the match step."""
    if not isinstance(pattern, Pattern):
        raise FlowDefinitionError(
            f"match() takes a pattern, not {pattern!r}", step=step, location=loc,
            fix="build one with millstream.cep: cep.begin('a').where(...).followed_by('b').where(...)",
        )
    last = pattern.stages[-1]
    if last.kind == "not_followed_by" and pattern.within_ms is None and last.within_prev is None:
        raise FlowDefinitionError(
            f"the pattern ends with the negation {pattern.stages[-1].name!r}, so a match is only known when "
            "its time is up, but the pattern has no within()",
            step=step, location=loc, fix="add .within(timedelta(...)) to the pattern",
        )
    skip = pattern.skip
    if skip.name is not None and skip.name not in pattern.names:
        raise FlowDefinitionError(
            f"the skip strategy {skip.describe()} names no stage that takes events "
            f"(stages: {', '.join(pattern.names)})",
            step=step, location=loc, fix=f"use one of: {', '.join(repr(n) for n in pattern.names)}",
        )
    if timeouts and not pattern.timed:
        raise FlowDefinitionError(
            "match(timeouts=True): a partial match times out at its within() deadline, but the pattern has none",
            step=step, location=loc, fix="add .within(timedelta(...)) to the pattern, or drop timeouts=True",
        )
    if select is not None and not callable(select):
        raise FlowDefinitionError(
            f"match(select=...) takes a function of the match, not {select!r}", step=step, location=loc,
            fix="e.g. select=lambda m: {'card': m.key, 'small': m['small'][0]['amount']}",
        )
    if order_by is not None and not callable(order_by):
        raise FlowDefinitionError(
            f"match(order_by=...) takes a function of the event, not {order_by!r}", step=step, location=loc,
            fix="e.g. order_by=lambda e: e['seq'], a key for events with equal times (or a comparator of two)",
        )
    return Runner(Engine(pattern, timeouts=timeouts), select, order_by)


class Unwrap:
    """The process function of a split step: passes on the payloads of one tag."""

    def __init__(self, tag: int, what: str) -> None:
        self.tag = tag
        self.__name__ = self.__qualname__ = what

    def __call__(self, ctx: Any, item: Any) -> None:
        if item[0] == self.tag:
            ctx.emit(item[2])


def tagged_key(item: Any) -> Any:
    """The key of a tagged output of the pattern step."""
    return item[1]


def unwrapper(tag: int) -> Unwrap:
    return Unwrap(tag, {MATCH: "matches", TIMEOUT: "timeouts", LATE: "late"}[tag])
