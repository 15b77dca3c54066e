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

Negations ``not_next`` / ``not_followed_by`` forbid an event between two stages
(or, with ``within``, after the last one). ``within`` bounds a match from its first
to its last event. The after-match skip strategy (``begin(name, skip=...)``) says
which other partial matches survive an emitted match. See docs/cep.md.
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
    "begin",
    "no_skip",
    "skip_past_last_event",
    "skip_to_first",
    "skip_to_last",
    "skip_to_next",
]

#: names a stage cannot take: the default match record uses them
RESERVED = frozenset({"key", "start", "end", "deadline"})

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
    """One named stage of a pattern (a frozen value; build it with the :class:`Pattern` methods)."""

    name: str
    kind: str  # begin | next | followed_by | followed_by_any | not_next | not_followed_by
    conditions: tuple[tuple[str, Condition, int], ...] = ()  # ("and" | "or", fn, number of parameters)
    lo: int = 1
    hi: int | None = 1  # None: unbounded
    optional: bool = False
    greedy: bool = False
    inner: str = RELAXED  # contiguity between the iterations of a looping stage

    @property
    def negated(self) -> bool:
        return self.kind.startswith("not_")

    @property
    def contiguity(self) -> str:
        return _CONTIGUITY[self.kind]

    @property
    def looping(self) -> bool:
        return self.hi is None or self.hi > 1

    def describe(self) -> str:
        q = ""
        if (self.lo, self.hi) != (1, 1):
            q = f"{{{self.lo},{'' if self.hi is None else self.hi}}}"
        if self.optional:
            q += "?"
        if self.greedy:
            q += "(greedy)"
        return f"{self.kind}({self.name!r}){q}"


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

    Conditions and quantifiers apply to the stage added last.
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
        return self._within

    @property
    def skip(self) -> SkipStrategy:
        return self._skip

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the stages that take events, in order."""
        return tuple(s.name for s in self._stages if not s.negated)

    def describe(self) -> str:
        text = " ".join(s.describe() for s in self._stages)
        if self._within is not None:
            text += f" within {self._within}ms"
        if self._skip.kind != "no_skip":
            text += f" skip {self._skip.describe()}"
        return text

    def __repr__(self) -> str:
        return f"Pattern({self.describe()})"

    # -- stages ----------------------------------------------------------------------
    def _add(self, kind: str, name: Any, loc: str | None) -> Pattern:
        _check_name(name, kind, loc)
        if name in RESERVED:
            raise FlowDefinitionError(
                f"stage name {name!r} is reserved: the match record has a field of that name",
                step="pattern", location=loc, fix=f"call the stage something else, e.g. {name + '_event'!r}",
            )
        if any(s.name == name for s in self._stages):
            raise FlowDefinitionError(f"the pattern already has a stage named {name!r}", step="pattern",
                                      location=loc, fix="give every stage its own name")
        return Pattern((*self._stages, Stage(name, kind)), self._within, self._skip)

    def next(self, name: str) -> Pattern:
        """A stage that takes the very next event of the key (strict contiguity)."""
        return self._add("next", name, user_location())

    def followed_by(self, name: str) -> Pattern:
        """A stage that takes the first later event satisfying it (relaxed contiguity)."""
        return self._add("followed_by", name, user_location())

    def followed_by_any(self, name: str) -> Pattern:
        """A stage that takes any later event satisfying it (non-deterministic relaxed contiguity)."""
        return self._add("followed_by_any", name, user_location())

    def not_next(self, name: str) -> Pattern:
        """The event right after the previous stage must not satisfy this stage's conditions."""
        return self._add("not_next", name, user_location())

    def not_followed_by(self, name: str) -> Pattern:
        """No event between the previous stage and the next one (or, last, before the
        ``within`` deadline) may satisfy this stage's conditions."""
        return self._add("not_followed_by", name, user_location())

    # -- conditions ------------------------------------------------------------------
    def _with_last(self, stage: Stage) -> Pattern:
        return Pattern((*self._stages[:-1], stage), self._within, self._skip)

    def where(self, condition: Condition) -> Pattern:
        """Events of the last stage must also satisfy ``condition(event)`` or ``condition(event, match)``."""
        loc = user_location()
        n = _nparams(condition, "where", loc)
        last = self._stages[-1]
        return self._with_last(replace(last, conditions=(*last.conditions, ("and", condition, n))))

    def or_where(self, condition: Condition) -> Pattern:
        """Events of the last stage satisfy its conditions so far *or* ``condition``."""
        loc = user_location()
        n = _nparams(condition, "or_where", loc)
        last = self._stages[-1]
        if not last.conditions:
            raise FlowDefinitionError(f"or_where() on stage {last.name!r}, which has no condition yet",
                                      step="pattern", location=loc, fix="start with .where(...)")
        return self._with_last(replace(last, conditions=(*last.conditions, ("or", condition, n))))

    # -- quantifiers -----------------------------------------------------------------
    def _quantify(self, what: str, loc: str | None, **changes: Any) -> Pattern:
        last = self._stages[-1]
        if last.negated:
            raise FlowDefinitionError(
                f"{what}() on the negation {last.name!r}: a negation takes no events, so it has no quantifier",
                step="pattern", location=loc, fix=f"put .{what}() on a stage added with begin/next/followed_by",
            )
        new = replace(last, **changes)
        if new.optional and len(self._stages) >= 2 and self._stages[-2].negated:
            raise FlowDefinitionError(
                f"stage {last.name!r} follows the negation {self._stages[-2].name!r}, so it cannot be optional",
                step="pattern", location=loc,
                fix="make the stage after a negation mandatory, or move the negation",
            )
        if what in ("greedy", "consecutive", "allow_combinations") and not last.looping:
            raise FlowDefinitionError(
                f"{what}() on stage {last.name!r}, which takes one event: it applies to looping stages",
                step="pattern", location=loc, fix=f"quantify the stage first, e.g. .one_or_more().{what}()",
            )
        return self._with_last(new)

    def times(self, lo: int, hi: int | None = -1) -> Pattern:
        """The last stage takes exactly ``lo`` events, or from ``lo`` to ``hi`` (``hi=None``: no limit)."""
        loc = user_location()
        upper = lo if hi == -1 else hi
        bad = (not isinstance(lo, int) or isinstance(lo, bool) or lo < 1
               or (upper is not None and (not isinstance(upper, int) or isinstance(upper, bool) or upper < lo)))
        if bad:
            raise FlowDefinitionError(
                f"times({lo!r}{'' if hi == -1 else f', {hi!r}'}): counts must be ints with 1 <= lo <= hi",
                step="pattern", location=loc,
                fix="e.g. .times(3), .times(2, 4), .times(2, None) (two or more); for zero use .optional()",
            )
        return self._quantify("times", loc, lo=lo, hi=upper)

    def one_or_more(self) -> Pattern:
        """The last stage takes one or more events."""
        return self._quantify("one_or_more", user_location(), lo=1, hi=None)

    def times_or_more(self, n: int) -> Pattern:
        """The last stage takes ``n`` or more events."""
        loc = user_location()
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise FlowDefinitionError(f"times_or_more({n!r}): n must be an int >= 1", step="pattern",
                                      location=loc, fix="e.g. .times_or_more(2)")
        return self._quantify("times_or_more", loc, lo=n, hi=None)

    def optional(self) -> Pattern:
        """The last stage may also take no event at all."""
        return self._quantify("optional", user_location(), optional=True)

    def greedy(self) -> Pattern:
        """The last (looping) stage takes every event it can before the next stage may start."""
        return self._quantify("greedy", user_location(), greedy=True)

    def consecutive(self) -> Pattern:
        """The iterations of the last (looping) stage are strictly contiguous."""
        return self._quantify("consecutive", user_location(), inner=STRICT)

    def allow_combinations(self) -> Pattern:
        """The iterations of the last (looping) stage may skip matching events (any combination)."""
        return self._quantify("allow_combinations", user_location(), inner=ANY)

    # -- time ------------------------------------------------------------------------
    def within(self, duration: Duration) -> Pattern:
        """A match's last event must come less than ``duration`` after its first one."""
        loc = user_location()
        try:
            ms = to_ms(duration, "within")
        except ConfigError as exc:
            raise FlowDefinitionError(str(exc), step="pattern", location=loc,
                                      fix="pass within(timedelta(minutes=5)) or an int of milliseconds") from None
        if ms <= 0:
            raise FlowDefinitionError(f"within() must be > 0, got {ms} ms", step="pattern", location=loc,
                                      fix="e.g. .within(timedelta(minutes=5))")
        return Pattern(self._stages, ms, self._skip)


def begin(name: str, *, skip: SkipStrategy | None = None) -> Pattern:
    """Start a pattern with a stage called ``name``; ``skip`` is the after-match skip strategy."""
    loc = user_location()
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
        """``{stage name: [events], ..., "key", "start", "end"}`` (and ``"deadline"`` if timed out)."""
        out: dict[str, Any] = {n: [] for n in self._names}
        names = self._names
        for s in self._events:
            out[names[s[0]]].append(s[3])
        out["key"] = self.key
        out["start"] = self.start
        out["end"] = self.end
        if self.deadline is not None:
            out["deadline"] = self.deadline
        return out

    def __repr__(self) -> str:
        kind = "TimedOutMatch" if self.timed_out else "Match"
        parts = ", ".join(f"{n}={self[n]!r}" for n in self._names)
        return f"{kind}(key={self.key!r}, {parts})"
