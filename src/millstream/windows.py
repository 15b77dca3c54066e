"""Window assigners: small frozen values that say how events are grouped in time.

>>> from datetime import timedelta
>>> tumbling(timedelta(seconds=10)).size_ms
10000
>>> sliding(60_000, every=10_000).slice_ms
10000

Event-time windows are half-open ``[start, end)`` in integer milliseconds and
fire when the watermark passes ``end - 1``. Count windows fire every ``size``
events of a key and need no event time.

A *trigger* decides when a window fires instead (``window(..., trigger=...)``):
:func:`on_count`, :func:`on_event_time`, :func:`on_processing_time`,
:func:`every_event_time`, :func:`purging`, or a :class:`Trigger` of your own.
:func:`global_` puts all of a key's records in one window that only a trigger fires.

>>> on_count(3).describe()
'every 3 records'
>>> purging(on_count(3)).describe()
'every 3 records, purging'
>>> tumbling(10_000, offset=-2_000).offset_ms  # a negative offset counts back from the next boundary
8000
"""

from __future__ import annotations

import enum
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from millstream._time import MAX_WATERMARK, MIN_WATERMARK, Duration, format_duration, to_ms
from millstream.errors import ConfigError

__all__ = ["CONTINUE", "FIRE", "FIRE_AND_PURGE", "PURGE", "CountWindow", "GlobalWindow", "SessionWindow",
           "SlidingWindow", "Trigger", "TriggerContext", "TriggerResult", "TumblingWindow", "Window",
           "WindowAssigner", "count", "every_event_time", "global_", "on_count", "on_event_time",
           "on_processing_time", "purging", "session", "sliding", "tumbling"]


@dataclass(frozen=True)
class Window:
    """One window instance, handed to window ``process`` functions."""

    start: int
    end: int

    @property
    def max_timestamp(self) -> int:
        """The last millisecond inside the window (``end - 1``)."""
        return self.end - 1


#: The one window of :func:`global_` (``start`` and ``end`` are the ends of time).
GLOBAL_WINDOW = Window(MIN_WATERMARK, MAX_WATERMARK)


class WindowAssigner:
    """Base of the window kinds."""

    @property
    def event_time(self) -> bool:
        """Whether the windows are on event time (the stream needs a watermark)."""
        return True

    @property
    def needs_trigger_operator(self) -> bool:
        """Whether the windows run on the general (trigger-driven) window operator."""
        return False

    @property
    def merges(self) -> bool:
        """Whether a window's result is merged from partial accumulators (slices or sessions)."""
        return False

    def describe(self) -> str:  # pragma: no cover - overridden
        return type(self).__name__


@dataclass(frozen=True)
class TumblingWindow(WindowAssigner):
    size_ms: int
    offset_ms: int = 0
    #: None (every key's windows aligned), "key" (a stable offset per key), or ``fn(key) -> Duration``
    stagger: str | Callable[[Any], Duration] | None = None
    processing_time: bool = False

    def __post_init__(self) -> None:
        _check_positive(self.size_ms, "tumbling window size")
        if not -self.size_ms < self.offset_ms < self.size_ms:
            raise ConfigError(f"window offset must be in (-size, size), got {self.offset_ms} ms "
                              f"for size {self.size_ms} ms")
        object.__setattr__(self, "offset_ms", self.offset_ms % self.size_ms)
        if self.stagger is not None and self.stagger != "key" and not callable(self.stagger):
            raise ConfigError(f"stagger must be None, 'key' or a function of the key, got {self.stagger!r}")

    @property
    def event_time(self) -> bool:
        return not self.processing_time

    @property
    def needs_trigger_operator(self) -> bool:
        return self.processing_time or self.stagger is not None

    def offset_for(self, key: Any) -> int:
        """The offset of ``key``'s windows: the window's offset plus the key's stagger."""
        return (self.offset_ms + _stagger_ms(self.stagger, key, self.size_ms)) % self.size_ms

    @property
    def slide_ms(self) -> int:
        return self.size_ms

    @property
    def slice_ms(self) -> int:
        return self.size_ms

    def describe(self) -> str:
        off = f", offset {format_duration(self.offset_ms)}" if self.offset_ms else ""
        st = "" if self.stagger is None else ", staggered by key"
        pt = " (processing time)" if self.processing_time else ""
        return f"tumbling {format_duration(self.size_ms)}{off}{st}{pt}"


@dataclass(frozen=True)
class SlidingWindow(WindowAssigner):
    size_ms: int
    slide_ms: int
    offset_ms: int = 0
    processing_time: bool = False

    def __post_init__(self) -> None:
        _check_positive(self.size_ms, "sliding window size")
        _check_positive(self.slide_ms, "sliding window step ('every')")
        if self.slide_ms > self.size_ms:
            raise ConfigError(
                f"a sliding window's step ({self.slide_ms} ms) is larger than its size ({self.size_ms} ms): "
                "events between windows would be dropped; use a step <= size"
            )
        if not -self.slide_ms < self.offset_ms < self.slide_ms:
            raise ConfigError(f"window offset must be in (-every, every), got {self.offset_ms} ms")
        object.__setattr__(self, "offset_ms", self.offset_ms % self.slide_ms)

    @property
    def event_time(self) -> bool:
        return not self.processing_time

    @property
    def needs_trigger_operator(self) -> bool:
        return self.processing_time

    @property
    def slice_ms(self) -> int:
        """Each event updates one slice of this width; a window merges size/slice slices."""
        return math.gcd(self.size_ms, self.slide_ms)

    @property
    def merges(self) -> bool:
        return self.slice_ms != self.size_ms

    def describe(self) -> str:
        off = f", offset {format_duration(self.offset_ms)}" if self.offset_ms else ""
        pt = " (processing time)" if self.processing_time else ""
        return f"sliding {format_duration(self.size_ms)} every {format_duration(self.slide_ms)}{off}{pt}"


@dataclass(frozen=True)
class SessionWindow(WindowAssigner):
    gap_ms: int
    #: the gap of each record's own session, ``fn(record) -> Duration`` (then ``gap_ms`` is 0)
    gap_fn: Callable[[Any], Duration] | None = None

    def __post_init__(self) -> None:
        if self.gap_fn is None:
            _check_positive(self.gap_ms, "session gap")
        elif not callable(self.gap_fn):
            raise ConfigError(f"session gap_fn must be a function of the record, got {self.gap_fn!r}")

    @property
    def merges(self) -> bool:
        return True

    @property
    def needs_trigger_operator(self) -> bool:
        return self.gap_fn is not None

    def gap_of(self, record: Any) -> int:
        """The gap of ``record``'s own session."""
        if self.gap_fn is None:
            return self.gap_ms
        gap = to_ms(self.gap_fn(record), "session gap (from gap_fn)")
        if gap <= 0:
            raise ValueError(f"session gap_fn returned {gap} ms for {record!r:.100}: a gap must be > 0")
        return gap

    def describe(self) -> str:
        if self.gap_fn is not None:
            return f"session gap per record ({getattr(self.gap_fn, '__name__', 'gap_fn')})"
        return f"session gap {format_duration(self.gap_ms)}"


@dataclass(frozen=True)
class GlobalWindow(WindowAssigner):
    """All of a key's records in one window, fired by a trigger only."""

    @property
    def event_time(self) -> bool:
        return False

    @property
    def needs_trigger_operator(self) -> bool:
        return True

    def describe(self) -> str:
        return "global"


@dataclass(frozen=True)
class CountWindow(WindowAssigner):
    size: int
    every: int

    @property
    def event_time(self) -> bool:
        return False

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ConfigError(f"count window size must be a positive int, got {self.size!r}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or not 0 < self.every <= self.size:
            raise ConfigError(f"count window 'every' must be an int in [1, size], got {self.every!r}")

    def describe(self) -> str:
        return f"count {self.size}" + (f" every {self.every}" if self.every != self.size else "")


def _check_positive(ms: int, what: str) -> None:
    if ms <= 0:
        raise ConfigError(f"{what} must be > 0, got {ms} ms")


def _stagger_ms(stagger: str | Callable[[Any], Duration] | None, key: Any, size: int) -> int:
    """The stagger of ``key``'s windows: 0 when aligned, a stable hash of the key with ``"key"``."""
    if stagger is None:
        return 0
    if stagger == "key":
        return zlib.crc32(repr(key).encode()) % size
    assert callable(stagger)
    return to_ms(stagger(key), "window stagger")


def tumbling(size: Duration, *, offset: Duration = 0, stagger: str | Callable[[Any], Duration] | None = None,
             processing_time: bool = False) -> TumblingWindow:
    """Fixed, non-overlapping windows ``[offset + k*size, offset + (k+1)*size)``.

    ``offset`` may be negative (``-2h`` and ``22h`` give the same day windows). ``stagger="key"``
    shifts each key's windows by a stable hash of the key in ``[0, size)`` (the same in every run,
    mode and process), so that the windows of many keys do not all fire at one instant;
    ``stagger=fn`` takes the shift from ``fn(key)``. ``processing_time=True`` windows on the
    runtime clock when each record arrives (no event time needed).
    """
    return TumblingWindow(to_ms(size, "window size"), to_ms(offset, "window offset"), stagger, processing_time)


def sliding(size: Duration, *, every: Duration, offset: Duration = 0, processing_time: bool = False
            ) -> SlidingWindow:
    """Overlapping windows of ``size`` starting every ``every``; an event is in size/every windows.

    ``offset`` may be negative; ``processing_time=True`` windows on the runtime clock.
    """
    return SlidingWindow(to_ms(size, "window size"), to_ms(every, "window step"), to_ms(offset, "window offset"),
                         processing_time)


def session(gap: Duration | None = None, *, gap_fn: Callable[[Any], Duration] | None = None) -> SessionWindow:
    """Per-key sessions ``[first event, last event + gap)``: events at most ``gap`` apart share a session.

    As in Flink and Kafka Streams, sessions that merely touch merge: an event exactly ``gap``
    after the last one still belongs to its session. To keep the result independent of arrival
    order, a session fires once the watermark has passed its end (``watermark >= end``, one
    millisecond later than a time window with the same end), so an event at ``end`` that is
    not late always finds the session still open. ``gap_fn(record)`` gives each record's own gap
    (a record at ``t`` opens ``[t, t + gap_fn(record))``), instead of one ``gap``.
    """
    if (gap is None) == (gap_fn is None):
        raise ConfigError("session() takes a gap or a gap_fn (a function of the record), exactly one")
    if gap_fn is not None:
        return SessionWindow(0, gap_fn)
    assert gap is not None
    return SessionWindow(to_ms(gap, "session gap"))


def global_() -> GlobalWindow:
    """One window per key holding all its records, fired only by a trigger (``window(..., trigger=...)``).

    Without a trigger it fires at the end of a bounded input (as :func:`on_event_time` would).
    """
    return GlobalWindow()


def count(size: int, *, every: int | None = None) -> CountWindow:
    """Every ``size`` events of a key (sliding by ``every`` events if given).

    Count windows fire only when full; a key's last, partial window does not fire.
    """
    return CountWindow(size, size if every is None else every)


# -- triggers ---------------------------------------------------------------------------------


class TriggerResult(enum.IntFlag):
    """What a trigger asks of its window: nothing, emit it, empty it, or both."""

    CONTINUE = 0
    FIRE = 1
    PURGE = 2
    FIRE_AND_PURGE = 3


CONTINUE = TriggerResult.CONTINUE
FIRE = TriggerResult.FIRE
PURGE = TriggerResult.PURGE
FIRE_AND_PURGE = TriggerResult.FIRE_AND_PURGE


class TriggerContext(Protocol):
    """What a trigger sees of its window: the key, the clocks, its own state and its timers.

    ``state`` is a dict kept per key and window (checkpointed with the window); timers are per
    key and window and call back ``on_event_time`` / ``on_processing_time`` once due.
    """

    key: Any
    state: dict[str, Any]
    #: when merging windows (sessions): the states of the windows merged into this one
    merged_states: list[dict[str, Any]]

    @property
    def watermark(self) -> int:
        """The operator's current event-time watermark."""
        ...

    @property
    def processing_time(self) -> int:
        """The runtime clock now, in ms."""
        ...

    def due(self, window: Window) -> int:
        """The watermark at which ``window`` is complete (``end - 1``; a session's ``end``)."""
        ...

    def register_event_time_timer(self, time: int) -> None: ...

    def register_processing_time_timer(self, time: int) -> None: ...

    def delete_event_time_timer(self, time: int) -> None: ...

    def delete_processing_time_timer(self, time: int) -> None: ...


class Trigger:
    """When a window fires. Subclass it and override what you need; every method returns a
    :class:`TriggerResult` (``CONTINUE`` by default). Keep the trigger object itself
    stateless: what it counts goes in ``ctx.state``, which is checkpointed with the window.

    - ``on_element(record, timestamp, window, ctx)``: a record was added to ``window``;
    - ``on_event_time(time, window, ctx)``: an event-time timer of the window came due;
    - ``on_processing_time(time, window, ctx)``: a processing-time timer came due;
    - ``on_merge(window, ctx)``: sessions merged into ``window`` (their states in ``ctx.merged_states``).

    The window's contents and timers are dropped when it expires (its end plus the allowed
    lateness for event time; its end for processing time; never for :func:`global_`).
    """

    def on_element(self, record: Any, timestamp: int | None, window: Window, ctx: TriggerContext
                   ) -> TriggerResult:
        return CONTINUE

    def on_event_time(self, time: int, window: Window, ctx: TriggerContext) -> TriggerResult:
        return CONTINUE

    def on_processing_time(self, time: int, window: Window, ctx: TriggerContext) -> TriggerResult:
        return CONTINUE

    def on_merge(self, window: Window, ctx: TriggerContext) -> None:
        """Sessions were merged into ``window``; the default re-registers nothing."""

    def describe(self) -> str:
        return type(self).__name__


class _EventTime(Trigger):
    def on_element(self, record: Any, timestamp: int | None, window: Window, ctx: TriggerContext
                   ) -> TriggerResult:
        due = ctx.due(window)
        if due <= ctx.watermark:
            return FIRE  # a record within the allowed lateness: fire again now
        ctx.register_event_time_timer(due)
        return CONTINUE

    def on_event_time(self, time: int, window: Window, ctx: TriggerContext) -> TriggerResult:
        return FIRE if time == ctx.due(window) else CONTINUE

    def on_merge(self, window: Window, ctx: TriggerContext) -> None:
        due = ctx.due(window)
        if due > ctx.watermark:
            ctx.register_event_time_timer(due)

    def describe(self) -> str:
        return "at the end of the window (event time)"


class _ProcessingTime(Trigger):
    def on_element(self, record: Any, timestamp: int | None, window: Window, ctx: TriggerContext
                   ) -> TriggerResult:
        ctx.register_processing_time_timer(window.max_timestamp)
        return CONTINUE

    def on_processing_time(self, time: int, window: Window, ctx: TriggerContext) -> TriggerResult:
        return FIRE

    def on_merge(self, window: Window, ctx: TriggerContext) -> None:
        ctx.register_processing_time_timer(window.max_timestamp)

    def describe(self) -> str:
        return "at the end of the window (processing time)"


@dataclass(frozen=True)
class _Count(Trigger):
    n: int

    def on_element(self, record: Any, timestamp: int | None, window: Window, ctx: TriggerContext
                   ) -> TriggerResult:
        c = ctx.state.get("count", 0) + 1
        if c >= self.n:
            ctx.state["count"] = 0
            return FIRE
        ctx.state["count"] = c
        return CONTINUE

    def on_merge(self, window: Window, ctx: TriggerContext) -> None:
        ctx.state["count"] = sum(s.get("count", 0) for s in ctx.merged_states)

    def describe(self) -> str:
        return f"every {self.n} records"


@dataclass(frozen=True)
class _EveryEventTime(Trigger):
    """Fires every ``interval_ms`` of event time (aligned to multiples of it) and at the window's end."""

    interval_ms: int

    def _next(self, time: int, window: Window, ctx: TriggerContext) -> None:
        nxt = min(time + self.interval_ms, ctx.due(window))
        ctx.state["next"] = nxt
        ctx.register_event_time_timer(nxt)

    def on_element(self, record: Any, timestamp: int | None, window: Window, ctx: TriggerContext
                   ) -> TriggerResult:
        due = ctx.due(window)
        if due <= ctx.watermark:
            return FIRE
        ctx.register_event_time_timer(due)
        if "next" not in ctx.state and timestamp is not None:
            self._next(timestamp - timestamp % self.interval_ms, window, ctx)
        return CONTINUE

    def on_event_time(self, time: int, window: Window, ctx: TriggerContext) -> TriggerResult:
        if time == ctx.due(window):
            return FIRE
        if ctx.state.get("next") == time:
            del ctx.state["next"]
            if ctx.watermark >= MAX_WATERMARK:
                return CONTINUE  # the end of input: only the window's own end fires, once
            self._next(time, window, ctx)
            return FIRE
        return CONTINUE

    def on_merge(self, window: Window, ctx: TriggerContext) -> None:
        nexts = [s["next"] for s in ctx.merged_states if "next" in s]
        if nexts:
            ctx.state["next"] = min(nexts)
            ctx.register_event_time_timer(min(nexts))
        due = ctx.due(window)
        if due > ctx.watermark:
            ctx.register_event_time_timer(due)

    def describe(self) -> str:
        return f"every {format_duration(self.interval_ms)} of event time"


@dataclass(frozen=True)
class _Purging(Trigger):
    inner: Trigger

    def on_element(self, record: Any, timestamp: int | None, window: Window, ctx: TriggerContext
                   ) -> TriggerResult:
        return _purge(self.inner.on_element(record, timestamp, window, ctx))

    def on_event_time(self, time: int, window: Window, ctx: TriggerContext) -> TriggerResult:
        return _purge(self.inner.on_event_time(time, window, ctx))

    def on_processing_time(self, time: int, window: Window, ctx: TriggerContext) -> TriggerResult:
        return _purge(self.inner.on_processing_time(time, window, ctx))

    def on_merge(self, window: Window, ctx: TriggerContext) -> None:
        self.inner.on_merge(window, ctx)

    def describe(self) -> str:
        return f"{self.inner.describe()}, purging"


def _purge(result: TriggerResult) -> TriggerResult:
    return FIRE_AND_PURGE if result & FIRE else result


def on_count(n: int) -> Trigger:
    """Fire a window every ``n`` records added to it (the records stay unless :func:`purging`)."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ConfigError(f"on_count(n): n must be a positive int, got {n!r}")
    return _Count(n)


def on_event_time() -> Trigger:
    """Fire when the watermark passes the window's end (the default of event-time windows);
    a record that comes within the allowed lateness fires the window again at once."""
    return _EventTime()


def on_processing_time() -> Trigger:
    """Fire when the runtime clock reaches the window's end - 1 (the default of processing-time windows)."""
    return _ProcessingTime()


def every_event_time(interval: Duration) -> Trigger:
    """Fire every ``interval`` of event time while the window is open, and at its end.

    The firing times are aligned to multiples of ``interval``, from the window's first record.
    At the end of a bounded input only the window's end fires (a global window's end is then).
    """
    ms = to_ms(interval, "trigger interval")
    _check_positive(ms, "trigger interval")
    return _EveryEventTime(ms)


def purging(trigger: Trigger) -> Trigger:
    """``trigger``, but every time it fires the window is emptied too (fire-and-purge)."""
    if not isinstance(trigger, Trigger):
        raise ConfigError(f"purging() takes a trigger, not {trigger!r}")
    return _Purging(trigger)


def _default_trigger(assigner: WindowAssigner) -> Trigger:
    """The trigger a window fires by when none is given."""
    if isinstance(assigner, TumblingWindow | SlidingWindow) and assigner.processing_time:
        return _ProcessingTime()
    return _EventTime()
