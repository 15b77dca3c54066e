"""Pattern detection (complex event processing) over keyed event-time streams.

Build a :class:`Pattern` with :func:`begin`, then match it on a keyed stream with
:meth:`millstream.KeyedStream.match`::

    small_then_large = (
        cep.begin("small").where(lambda tx: tx["amount"] < 10)
           .followed_by("large").where(lambda tx, match: tx["amount"] > 100 * match["small"][0]["amount"])
           .within(timedelta(minutes=5))
    )
    alerts = transactions.key_by("card").match(small_then_large)

A pattern is a sequence of named stages. Each stage takes one or more events
(``times``, ``one_or_more``, ``optional``) that satisfy its conditions; a
condition is ``fn(event)`` or ``fn(event, match)``, where ``match[name]`` lists
the events already taken for stage ``name``. How a stage follows the previous one:

- ``next``: strict contiguity, the very next event of the key;
- ``followed_by``: relaxed, the first later event that satisfies the stage
  (events that do not are skipped; a matching one cannot be skipped);
- ``followed_by_any``: non-deterministic relaxed, any later event.

A stage may also be a *group*: pass a pattern instead of a name, and the quantifiers
after it apply to the sub-pattern as a whole. ``until(condition)`` stops a looping
stage; ``greedy()`` keeps the next stage from taking or skipping an event the looping
stage could take.

Negations ``not_next`` / ``not_followed_by`` forbid an event between two stages (during
a loop before them too, or, with ``within``, after the last stage). ``within`` bounds a
match from its first to its last event, or (``since="previous"``) between consecutive
events. The after-match skip strategy (``begin(name, skip=...)``) says which other partial
matches survive an emitted match; with one, matches come out in order of their first
events. The semantics are Flink CEP's. See docs/cep.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from millstream._location import callable_name, user_location
from millstream._time import Duration, to_ms
from millstream.errors import ConfigError, FlowDefinitionError

__all__ = [
    "Match",
    "Pattern",
    "SkipStrategy",
    "Stage",
    "begin",
    "no_skip",
    "skip_past_last_event",
    "skip_to_first",
    "skip_to_last",
    "skip_to_next",
]

Condition = Callable[..., Any]

# how a stage follows the previous one (and, for looping stages, how iterations follow each other)
STRICT, RELAXED, ANY = "strict", "relaxed", "any"
_CONTIGUITY = {"begin": RELAXED, "next": STRICT, "followed_by": RELAXED, "followed_by_any": ANY,
               "not_next": STRICT, "not_followed_by": RELAXED}


# -- after-match skip strategies --------------------------------------------------------


@dataclass(frozen=True)
class SkipStrategy:
    """Which partial matches survive an emitted match ``m``.

    A strategy names a resume point ``r`` in ``m``; the partial matches that started
    at or after ``m``'s first event and before ``r`` are dropped:

    - ``no_skip``: none (every match is emitted);
    - ``skip_to_next``: ``r`` = the event after ``m``'s first one (drops those that started with ``m``);
    - ``skip_past_last_event``: ``r`` = the event after ``m``'s last one;
    - ``skip_to_first(name)`` / ``skip_to_last(name)``: ``r`` = the first / last event of
      stage ``name`` in ``m`` (nothing is dropped when ``m`` has none).
    """

    kind: str = "no_skip"
    name: str | None = None

    def describe(self) -> str:
        return f"{self.kind}({self.name!r})" if self.name is not None else self.kind


def no_skip() -> SkipStrategy:
    """Emit every match; drop no partial match (the default)."""
    return SkipStrategy("no_skip")


def skip_to_next() -> SkipStrategy:
    """After a match, drop the other partial matches that started with the same event."""
    return SkipStrategy("skip_to_next")


def skip_past_last_event() -> SkipStrategy:
    """After a match, drop the partial matches that started within it: matches do not overlap."""
    return SkipStrategy("skip_past_last_event")


def skip_to_first(name: str) -> SkipStrategy:
    """After a match, drop the partial matches that started before its first event of stage ``name``."""
    _check_name(name, "skip_to_first", user_location())
    return SkipStrategy("skip_to_first", name)


def skip_to_last(name: str) -> SkipStrategy:
    """After a match, drop the partial matches that started before its last event of stage ``name``."""
    _check_name(name, "skip_to_last", user_location())
    return SkipStrategy("skip_to_last", name)


# -- the pattern -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One stage of a pattern (a frozen value; build it with the :class:`Pattern` methods).

    A stage takes events that satisfy its conditions, or, when ``group`` is set, whole
    matches of that sub-pattern (its quantifiers then apply to the group as a whole).
    """

    name: str
    kind: str  # begin | next | followed_by | followed_by_any | not_next | not_followed_by
    conditions: tuple[tuple[str, Condition, int], ...] = ()  # ("and" | "or", fn, number of parameters)
    lo: int = 1
    hi: int | None = 1  # None: unbounded
    optional: bool = False
    greedy: bool = False
    inner: str = RELAXED  # contiguity between the iterations of a looping stage
    until: tuple[tuple[str, Condition, int], ...] = ()  # stop condition of a looping stage
    group: Pattern | None = None  # a sub-pattern quantified as a whole
    within_prev: int | None = None  # ms: each event of the stage comes sooner than this after the one before

    @property
    def negated(self) -> bool:
        return self.kind.startswith("not_")

    @property
    def contiguity(self) -> str:
        return _CONTIGUITY[self.kind]

    @property
    def looping(self) -> bool:
        return self.hi is None or self.hi > 1

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the stages that take events here (a group's inner stages)."""
        if self.group is not None:
            return self.group.names
        return () if self.negated else (self.name,)

    def describe(self) -> str:
        q = ""
        if (self.lo, self.hi) != (1, 1):
            q = f"{{{self.lo},{'' if self.hi is None else self.hi}}}"
        if self.optional:
            q += "?"
        if self.greedy:
            q += "(greedy)"
        if self.until:
            q += "(until)"
        if self.within_prev is not None:
            q += f"(within {self.within_prev}ms of the previous event)"
        what = f"[{self.group.describe()}]" if self.group is not None else repr(self.name)
        return f"{self.kind}({what}){q}"


def _check_name(name: Any, what: str, loc: str | None) -> None:
    if not isinstance(name, str) or not name:
        raise FlowDefinitionError(f"{what}() takes a stage name, a non-empty str, not {name!r}", step="pattern",
                                  location=loc, fix=f"e.g. .{what}('large')")


def _nparams(fn: Any, what: str, loc: str | None) -> int:
    """1 or 2: how many arguments a condition takes (``event`` or ``event, match``)."""
    from millstream._expr import Expr

    if isinstance(fn, Expr) or not callable(fn):
        raise FlowDefinitionError(
            f"{what}() takes a function of (event) or (event, match), not {fn!r}",
            step="pattern", location=loc,
            fix=f"e.g. .{what}(lambda tx: tx['amount'] < 10) or "
            f".{what}(lambda tx, match: tx['amount'] > match['small'][0]['amount'])",
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 2
    for n in (2, 1):
        try:
            sig.bind(*([None] * n))
            return n
        except TypeError:
            continue
    raise FlowDefinitionError(
        f"{what}() calls its condition with (event) or (event, match), but {callable_name(fn)}{sig} cannot take that",
        step="pattern", location=loc, fix="give the condition one parameter (event) or two (event, match)",
    )


class Pattern:
    """An immutable sequence of stages: every method returns a new pattern.

    Conditions and quantifiers apply to the stage added last (a group stage counts as one).
    """

    __slots__ = ("_skip", "_stages", "_within")

    def __init__(self, stages: tuple[Stage, ...], within_ms: int | None = None,
                 skip: SkipStrategy = SkipStrategy()) -> None:
        self._stages = stages
        self._within = within_ms
        self._skip = skip

    # -- reading ---------------------------------------------------------------------
    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    @property
    def within_ms(self) -> int | None:
        """The bound from a match's first event to its last one (``within(..., since="first")``)."""
        return self._within

    @property
    def timed(self) -> bool:
        """Whether partial matches have a deadline: a ``within`` bound, from the first event or
        (on some stage) from the previous one."""
        return self._within is not None or any(
            s.within_prev is not None or (s.group is not None and s.group.timed) for s in self._stages)

    @property
    def skip(self) -> SkipStrategy:
        return self._skip

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the stages that take events, in order (a group's stages in its place)."""
        return tuple(n for s in self._stages for n in s.names)

    def _all_names(self) -> tuple[str, ...]:
        out: list[str] = []
        for s in self._stages:
            out.extend(s.group._all_names() if s.group is not None else (s.name,))
        return tuple(out)

    def describe(self) -> str:
        text = " ".join(s.describe() for s in self._stages)
        if self._within is not None:
            text += f" within {self._within}ms"
        if self._skip.kind != "no_skip":
            text += f" skip {self._skip.describe()}"
        return text

    def __repr__(self) -> str:
        return f"Pattern({self.describe()})"

    def _copy(self, stages: tuple[Stage, ...]) -> Pattern:
        return Pattern(stages, self._within, self._skip)

    # -- stages ----------------------------------------------------------------------
    def _add(self, kind: str, name: Any, loc: str | None) -> Pattern:
        if isinstance(name, Pattern):
            return self._add_group(kind, name, loc)
        _check_name(name, kind, loc)
        if name in self._all_names():
            raise FlowDefinitionError(f"the pattern already has a stage named {name!r}", step="pattern",
                                      location=loc, fix="give every stage its own name")
        if kind.startswith("not_") and self._stages and self._stages[-1].optional:
            raise FlowDefinitionError(
                f"the negation {name!r} follows the optional stage {self._stages[-1].name!r}: a path that "
                "skips it would put the negation right after the stage before",
                step="pattern", location=loc,
                fix="write two patterns, one with and one without the optional stage",
            )
        return self._copy((*self._stages, Stage(name, kind)))

    def _add_group(self, kind: str, group: Pattern, loc: str | None) -> Pattern:
        if kind.startswith("not_"):
            raise FlowDefinitionError(f"{kind}() takes a stage name, not a pattern: a negation cannot be a group",
                                      step="pattern", location=loc, fix=f"e.g. .{kind}('cancel')")
        if group.within_ms is not None or group.skip.kind != "no_skip":
            raise FlowDefinitionError(
                "a group's sub-pattern has its own within() or skip strategy, which only the whole pattern can have",
                step="pattern", location=loc, fix="put within()/skip= on the outer pattern",
            )
        if group.stages[-1].negated:
            raise FlowDefinitionError(
                f"the group ends with the negation {group.stages[-1].name!r}, which nothing in the group follows",
                step="pattern", location=loc, fix="end the group with a stage that takes events",
            )
        clash = set(group._all_names()) & set(self._all_names())
        if clash:
            raise FlowDefinitionError(f"the pattern already has a stage named {sorted(clash)[0]!r}",
                                      step="pattern", location=loc, fix="give every stage its own name")
        name = "(" + " ".join(group.names) + ")"
        return self._copy((*self._stages, Stage(name, kind, group=group)))

    def next(self, name: str | Pattern) -> Pattern:
        """A stage that takes the very next event of the key (strict contiguity).

        ``name`` may be a pattern: a group, whose quantifiers apply to the sub-pattern as a whole."""
        return self._add("next", name, user_location())

    def followed_by(self, name: str | Pattern) -> Pattern:
        """A stage (or group) that takes the first later event satisfying it (relaxed contiguity)."""
        return self._add("followed_by", name, user_location())

    def followed_by_any(self, name: str | Pattern) -> Pattern:
        """A stage (or group) that takes any later event satisfying it (non-deterministic relaxed contiguity)."""
        return self._add("followed_by_any", name, user_location())

    def not_next(self, name: str) -> Pattern:
        """The event right after the previous stage must not satisfy this stage's conditions."""
        return self._add("not_next", name, user_location())

    def not_followed_by(self, name: str) -> Pattern:
        """No event between the previous stage and the next one (or, last, before the
        ``within`` deadline) may satisfy this stage's conditions; after a looping stage this
        holds from the loop's first event on."""
        return self._add("not_followed_by", name, user_location())

    # -- conditions ------------------------------------------------------------------
    def _with_last(self, stage: Stage) -> Pattern:
        return self._copy((*self._stages[:-1], stage))

    def _no_group(self, what: str, loc: str | None) -> Stage:
        last = self._stages[-1]
        if last.group is not None:
            raise FlowDefinitionError(f"{what}() on the group {last.name}: a group has no conditions of its own",
                                      step="pattern", location=loc,
                                      fix="put the condition on a stage inside the group")
        return last

    def where(self, condition: Condition) -> Pattern:
        """Events of the last stage must also satisfy ``condition(event)`` or ``condition(event, match)``."""
        loc = user_location()
        n = _nparams(condition, "where", loc)
        last = self._no_group("where", loc)
        return self._with_last(replace(last, conditions=(*last.conditions, ("and", condition, n))))

    def or_where(self, condition: Condition) -> Pattern:
        """Events of the last stage satisfy its conditions so far *or* ``condition``."""
        loc = user_location()
        n = _nparams(condition, "or_where", loc)
        last = self._no_group("or_where", loc)
        if not last.conditions:
            raise FlowDefinitionError(f"or_where() on stage {last.name!r}, which has no condition yet",
                                      step="pattern", location=loc, fix="start with .where(...)")
        return self._with_last(replace(last, conditions=(*last.conditions, ("or", condition, n))))

    def until(self, condition: Condition) -> Pattern:
        """Stop the last (looping) stage at the first event satisfying ``condition``: no event is
        taken into the loop from then on (that event may still start the next stage)."""
        loc = user_location()
        n = _nparams(condition, "until", loc)
        last = self._stages[-1]
        if last.negated or last.hi is not None:
            raise FlowDefinitionError(
                f"until() on stage {last.name!r}, which is not looping: it applies to one_or_more()/times_or_more()",
                step="pattern", location=loc, fix="quantify the stage first, e.g. .one_or_more().until(...)",
            )
        if last.until:
            raise FlowDefinitionError(f"stage {last.name!r} already has an until() condition", step="pattern",
                                      location=loc, fix="combine both in one condition")
        return self._with_last(replace(last, until=(("and", condition, n),)))

    # -- quantifiers -----------------------------------------------------------------
    def _quantify(self, what: str, loc: str | None, **changes: Any) -> Pattern:
        last = self._stages[-1]
        if last.negated:
            raise FlowDefinitionError(
                f"{what}() on the negation {last.name!r}: a negation takes no events, so it has no quantifier",
                step="pattern", location=loc, fix=f"put .{what}() on a stage added with begin/next/followed_by",
            )
        new = replace(last, **changes)
        if what in ("greedy", "consecutive", "allow_combinations") and not last.looping:
            raise FlowDefinitionError(
                f"{what}() on stage {last.name!r}, which takes one event: it applies to looping stages",
                step="pattern", location=loc, fix=f"quantify the stage first, e.g. .one_or_more().{what}()",
            )
        return self._with_last(new)

    def times(self, lo: int, hi: int | None = -1, *, within: Duration | None = None) -> Pattern:
        """The last stage takes exactly ``lo`` events, or from ``lo`` to ``hi`` (``hi=None``: no limit).

        ``times(0, hi)`` is ``times(1, hi).optional()``; ``within=d`` is
        ``.within(d, since="previous")`` on this stage."""
        loc = user_location()
        upper = lo if hi == -1 else hi
        bad = (not isinstance(lo, int) or isinstance(lo, bool) or lo < (0 if hi != -1 else 1)
               or (upper is not None and (not isinstance(upper, int) or isinstance(upper, bool)
                                          or upper < max(lo, 1))))
        if bad:
            raise FlowDefinitionError(
                f"times({lo!r}{'' if hi == -1 else f', {hi!r}'}): counts must be ints with 1 <= lo <= hi",
                step="pattern", location=loc,
                fix="e.g. .times(3), .times(2, 4), .times(2, None) (two or more); for zero use .optional()",
            )
        if lo == 0:
            out = self._quantify("times", loc, lo=1, hi=upper, optional=True)
        else:
            out = self._quantify("times", loc, lo=lo, hi=upper)
        return self._quantify_within(out, within, "times", loc)

    def one_or_more(self, *, within: Duration | None = None) -> Pattern:
        """The last stage takes one or more events (``within=d``: each less than ``d`` after the one before)."""
        loc = user_location()
        return self._quantify_within(self._quantify("one_or_more", loc, lo=1, hi=None), within, "one_or_more", loc)

    def times_or_more(self, n: int, *, within: Duration | None = None) -> Pattern:
        """The last stage takes ``n`` or more events (``within=d``: each less than ``d`` after the one before)."""
        loc = user_location()
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise FlowDefinitionError(f"times_or_more({n!r}): n must be an int >= 1", step="pattern",
                                      location=loc, fix="e.g. .times_or_more(2)")
        return self._quantify_within(self._quantify("times_or_more", loc, lo=n, hi=None), within, "times_or_more",
                                     loc)

    def optional(self) -> Pattern:
        """The last stage may also take no event at all."""
        return self._quantify("optional", user_location(), optional=True)

    def greedy(self) -> Pattern:
        """The last (looping) stage takes every event it can: while an event satisfies it, the
        stage after it can neither take nor skip that event (Flink's greedy)."""
        return self._quantify("greedy", user_location(), greedy=True)

    def consecutive(self) -> Pattern:
        """The iterations of the last (looping) stage are strictly contiguous."""
        return self._quantify("consecutive", user_location(), inner=STRICT)

    def allow_combinations(self) -> Pattern:
        """The iterations of the last (looping) stage may skip matching events (any combination)."""
        return self._quantify("allow_combinations", user_location(), inner=ANY)

    # -- time ------------------------------------------------------------------------
    def within(self, duration: Duration, since: str = "first") -> Pattern:
        """Bound a match in time.

        ``since="first"`` (the default): a match's last event comes less than ``duration``
        after its first one (set twice, the smaller bound holds). ``since="previous"``: each
        event of the stage added last comes less than ``duration`` after the match's event
        before it (Flink's ``PREVIOUS_AND_CURRENT``); set it on every stage it should bound.
        """
        loc = user_location()
        if since not in ("first", "previous"):
            raise FlowDefinitionError(f"within(since={since!r}): since is 'first' or 'previous'", step="pattern",
                                      location=loc, fix="e.g. .within(timedelta(minutes=5), since='previous')")
        ms = _duration(duration, "within", loc)
        if since == "first":
            return Pattern(self._stages, ms if self._within is None else min(ms, self._within), self._skip)
        return self._stage_window(ms, "within", loc)

    def _stage_window(self, ms: int, what: str, loc: str | None) -> Pattern:
        last = self._stages[-1]
        if last.group is not None:
            raise FlowDefinitionError(
                f"{what}(...) from the previous event on the group {last.name}: it bounds one stage's events",
                step="pattern", location=loc, fix="put it on the stages inside the group",
            )
        return self._with_last(replace(last, within_prev=ms))

    def _quantify_within(self, p: Pattern, within: Duration | None, what: str, loc: str | None) -> Pattern:
        return p if within is None else p._stage_window(_duration(within, what, loc), what, loc)


def _duration(duration: Duration, what: str, loc: str | None) -> int:
    try:
        ms = to_ms(duration, what)
    except ConfigError as exc:
        raise FlowDefinitionError(str(exc), step="pattern", location=loc,
                                  fix=f"pass {what}(timedelta(minutes=5)) or an int of milliseconds") from None
    if ms <= 0:
        raise FlowDefinitionError(f"{what}() must be > 0, got {ms} ms", step="pattern", location=loc,
                                  fix="e.g. .within(timedelta(minutes=5))")
    return ms


def begin(name: str | Pattern, *, skip: SkipStrategy | None = None) -> Pattern:
    """Start a pattern with a stage called ``name`` (or a group: a sub-pattern quantified as a
    whole); ``skip`` is the after-match skip strategy."""
    loc = user_location()
    if not isinstance(name, Pattern):
        _check_name(name, "begin", loc)
    if skip is not None and not isinstance(skip, SkipStrategy):
        raise FlowDefinitionError(f"begin(skip=...) takes a skip strategy, not {skip!r}", step="pattern",
                                  location=loc, fix="e.g. skip=cep.skip_past_last_event()")
    p = Pattern((), None, skip or SkipStrategy())._add("begin", name, loc)
    return p


# -- results -----------------------------------------------------------------------------


class Match(Mapping[str, list[Any]]):
    """A match (or a timed-out partial match): ``match[name]`` lists the events of stage ``name``.

    ``key`` is the key, ``start`` / ``end`` the event times of its first and last
    events; a timed-out partial match has ``timed_out`` true and the ``deadline``
    it missed (first event time + ``within``).
    """

    __slots__ = ("_events", "_names", "deadline", "key", "timed_out")

    def __init__(self, names: tuple[str, ...], steps: tuple[tuple[int, int, int, Any], ...], key: Any,
                 deadline: int | None = None) -> None:
        self._names = names
        self._events = steps  # (stage index, position, event time, event)
        self.key = key
        self.timed_out = deadline is not None
        self.deadline = deadline

    @property
    def start(self) -> int:
        return self._events[0][2]

    @property
    def end(self) -> int:
        return self._events[-1][2]

    def events(self) -> list[Any]:
        """Every event of the match, in event-time order."""
        return [s[3] for s in self._events]

    def __getitem__(self, name: str) -> list[Any]:
        try:
            i = self._names.index(name)
        except ValueError:
            raise KeyError(f"the pattern has no stage {name!r} (stages: {', '.join(self._names)})") from None
        return [s[3] for s in self._events if s[0] == i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def to_dict(self) -> dict[str, Any]:
        """``{stage name: [events], ..., "key", "start", "end"}`` (and ``"deadline"`` if timed out).

        Stage names come first: a field ``key``, ``start``, ``end`` or ``deadline`` is left
        out when a stage has that name (read it from the :class:`Match` with ``select=``).
        """
        out: dict[str, Any] = {n: [] for n in self._names}
        names = self._names
        for s in self._events:
            out[names[s[0]]].append(s[3])
        meta = {"key": self.key, "start": self.start, "end": self.end}
        if self.deadline is not None:
            meta["deadline"] = self.deadline
        for field, value in meta.items():
            if field not in out:
                out[field] = value
        return out

    def __repr__(self) -> str:
        kind = "TimedOutMatch" if self.timed_out else "Match"
        parts = ", ".join(f"{n}={self[n]!r}" for n in self._names)
        return f"{kind}(key={self.key!r}, {parts})"
