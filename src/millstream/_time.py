"""Integer event time: milliseconds since the epoch, converted once at the edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from millstream.errors import ConfigError

#: A watermark no event can be at or below: the start of time.
MIN_WATERMARK: int = -(2**63)
#: The watermark of an input that has ended: every window fires.
MAX_WATERMARK: int = 2**63 - 1

Duration = timedelta | int
"""A length of time: a ``timedelta``, or an ``int`` number of milliseconds."""

_UNIT_FACTOR = {"ms": 1, "s": 1000, "us": 0.001, "ns": 0.000001}


def to_ms(value: Duration, what: str = "duration") -> int:
    """Convert a duration (timedelta or int milliseconds) to integer milliseconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a timedelta or an int of milliseconds, not a bool")
    if isinstance(value, timedelta):
        return (value.days * 86_400_000) + (value.seconds * 1000) + (value.microseconds // 1000)
    if isinstance(value, int):
        return value
    raise ConfigError(
        f"{what} must be a datetime.timedelta or an int number of milliseconds, "
        f"not {type(value).__name__} {value!r}"
    )


def timestamp_to_ms(value: Any, unit: str = "ms") -> int:
    """Convert one event timestamp to integer milliseconds since the epoch.

    Accepts an int or float in ``unit``, a timezone-aware ``datetime``, or an
    ISO 8601 string with a timezone. Naive datetimes are refused: their meaning
    depends on the machine.
    """
    if value.__class__ is int:
        return value if unit == "ms" else int(value * _UNIT_FACTOR[unit])
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value!r} has no timezone; attach one (e.g. tzinfo=UTC) so event time is unambiguous"
            )
        return _aware_ms(value)
    if isinstance(value, bool) or value is None:
        raise ValueError(f"event timestamp must be a number, datetime or ISO string, not {value!r}")
    if isinstance(value, int | float):
        return int(value * _UNIT_FACTOR[unit])
    if isinstance(value, str):
        try:
            return int(value) if unit == "ms" else int(int(value) * _UNIT_FACTOR[unit])
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"event timestamp {value!r} is neither a number nor an ISO 8601 datetime") from None
        return timestamp_to_ms(dt)
    raise ValueError(f"event timestamp must be a number, datetime or ISO string, not {type(value).__name__}")


def _aware_ms(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def format_ms(ms: int) -> str:
    """Render an event time or watermark for people (UTC, ISO 8601)."""
    if ms >= MAX_WATERMARK:
        return "+inf (end of input)"
    if ms <= MIN_WATERMARK:
        return "-inf (no watermark yet)"
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return str(ms)


def format_duration(ms: int) -> str:
    if ms % 3_600_000 == 0 and ms:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0 and ms:
        return f"{ms // 60_000}min"
    if ms % 1000 == 0 and ms:
        return f"{ms // 1000}s"
    return f"{ms}ms"
