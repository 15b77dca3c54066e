"""Window assigners: small frozen values that say how events are grouped in time.

>>> from datetime import timedelta
>>> tumbling(timedelta(seconds=10)).size_ms
10000
>>> sliding(60_000, every=10_000).slice_ms
10000

Event-time windows are half-open ``[start, end)`` in integer milliseconds and
fire when the watermark passes ``end - 1``. Count windows fire every ``size``
events of a key and need no event time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from millstream._time import Duration, format_duration, to_ms
from millstream.errors import ConfigError

__all__ = ["CountWindow", "SessionWindow", "SlidingWindow", "TumblingWindow", "Window", "WindowAssigner",
           "count", "session", "sliding", "tumbling"]


@dataclass(frozen=True)
class Window:
    """One window instance, handed to window ``process`` functions."""

    start: int
    end: int


class WindowAssigner:
    """Base of the window kinds."""

    event_time: bool = True

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

    def __post_init__(self) -> None:
        _check_positive(self.size_ms, "tumbling window size")
        if not 0 <= self.offset_ms < self.size_ms:
            raise ConfigError(f"window offset must be in [0, size), got {self.offset_ms} ms for size {self.size_ms} ms")

    @property
    def slide_ms(self) -> int:
        return self.size_ms

    @property
    def slice_ms(self) -> int:
        return self.size_ms

    def describe(self) -> str:
        off = f", offset {format_duration(self.offset_ms)}" if self.offset_ms else ""
        return f"tumbling {format_duration(self.size_ms)}{off}"


@dataclass(frozen=True)
class SlidingWindow(WindowAssigner):
    size_ms: int
    slide_ms: int
    offset_ms: int = 0

    def __post_init__(self) -> None:
        _check_positive(self.size_ms, "sliding window size")
        _check_positive(self.slide_ms, "sliding window step ('every')")
        if self.slide_ms > self.size_ms:
            raise ConfigError(
                f"a sliding window's step ({self.slide_ms} ms) is larger than its size ({self.size_ms} ms): "
                "events between windows would be dropped; use a step <= size"
            )
        if not 0 <= self.offset_ms < self.slide_ms:
            raise ConfigError(f"window offset must be in [0, every), got {self.offset_ms} ms")

    @property
    def slice_ms(self) -> int:
        """Each event updates one slice of this width; a window merges size/slice slices."""
        return math.gcd(self.size_ms, self.slide_ms)

    @property
    def merges(self) -> bool:
        return self.slice_ms != self.size_ms

    def describe(self) -> str:
        off = f", offset {format_duration(self.offset_ms)}" if self.offset_ms else ""
        return f"sliding {format_duration(self.size_ms)} every {format_duration(self.slide_ms)}{off}"


@dataclass(frozen=True)
class SessionWindow(WindowAssigner):
    gap_ms: int

    def __post_init__(self) -> None:
        _check_positive(self.gap_ms, "session gap")

    @property
    def merges(self) -> bool:
        return True

    def describe(self) -> str:
        return f"session gap {format_duration(self.gap_ms)}"


@dataclass(frozen=True)
class CountWindow(WindowAssigner):
    size: int
    every: int
    event_time = False

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


def tumbling(size: Duration, *, offset: Duration = 0) -> TumblingWindow:
    """Fixed, non-overlapping windows ``[offset + k*size, offset + (k+1)*size)``."""
    return TumblingWindow(to_ms(size, "window size"), to_ms(offset, "window offset"))


def sliding(size: Duration, *, every: Duration, offset: Duration = 0) -> SlidingWindow:
    """Overlapping windows of ``size`` starting every ``every``; an event is in size/every windows."""
    return SlidingWindow(to_ms(size, "window size"), to_ms(every, "window step"), to_ms(offset, "window offset"))


def session(gap: Duration) -> SessionWindow:
    """Per-key sessions ``[first event, last event + gap)``: events less than ``gap`` apart share a session.

    Sessions merge when their windows overlap. Flink also merges sessions that merely touch,
    which makes its result depend on arrival order; here an event exactly ``gap`` after the
    last one always starts a new session.
    """
    return SessionWindow(to_ms(gap, "session gap"))


def count(size: int, *, every: int | None = None) -> CountWindow:
    """Every ``size`` events of a key (sliding by ``every`` events if given).

    Count windows fire only when full; a key's last, partial window does not fire.
    """
    return CountWindow(size, size if every is None else every)
