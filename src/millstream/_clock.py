"""Processing time: the wall clock, or a manual one for tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Processing time, integer milliseconds since the epoch."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait (a manual clock advances instead)."""
        ...


class SystemClock:
    """The machine's clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)
