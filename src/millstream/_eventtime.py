"""Watermark strategies (declarations) and the watermark generators that run them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from millstream._expr import Expr
from millstream._time import MAX_WATERMARK, MIN_WATERMARK, Duration, to_ms
from millstream.errors import ConfigError

__all__ = ["TimestampSpec", "WatermarkStrategy"]

TimestampSpec = str | Expr | Callable[[Any], Any]
"""How to read an event's time: a field name, an expression such as ``col("ts")``, or a function of the record."""


@dataclass(frozen=True)
class WatermarkStrategy:
    """How a source assigns event time and advances its watermark.

    Build one with :meth:`bounded` or :meth:`monotonous`; add idleness handling
    with :meth:`with_idleness`. The watermark is ``max event time seen - bound - 1``:
    an event whose time is within ``bound`` of the latest event is never late.

    >>> WatermarkStrategy.bounded(5_000, timestamp="ts").bound_ms
    5000
    """

    timestamp: TimestampSpec
    bound_ms: int = 0
    idle_timeout_ms: int | None = None
    unit: str = "ms"

    def __post_init__(self) -> None:
        if not (isinstance(self.timestamp, str | Expr) or callable(self.timestamp)):
            raise ConfigError(
                f"timestamp must be a field name, an expression or a function of the record, "
                f"not {self.timestamp!r}"
            )
        if self.bound_ms < 0:
            raise ConfigError(f"the out-of-orderness bound must be >= 0, got {self.bound_ms} ms")
        if self.idle_timeout_ms is not None and self.idle_timeout_ms <= 0:
            raise ConfigError(f"the idle timeout must be > 0, got {self.idle_timeout_ms} ms")
        if self.unit not in ("ms", "s", "us", "ns"):
            raise ConfigError(f"unit must be one of 'ms', 's', 'us', 'ns', not {self.unit!r}")

    @classmethod
    def bounded(
        cls,
        max_out_of_orderness: Duration,
        *,
        timestamp: TimestampSpec,
        unit: str = "ms",
        idle_timeout: Duration | None = None,
    ) -> WatermarkStrategy:
        """Events may arrive up to ``max_out_of_orderness`` behind the latest one seen."""
        return cls(
            timestamp=timestamp,
            bound_ms=to_ms(max_out_of_orderness, "max_out_of_orderness"),
            idle_timeout_ms=None if idle_timeout is None else to_ms(idle_timeout, "idle_timeout"),
            unit=unit,
        )

    @classmethod
    def monotonous(
        cls, *, timestamp: TimestampSpec, unit: str = "ms", idle_timeout: Duration | None = None
    ) -> WatermarkStrategy:
        """Event time never goes back: any event older than the latest is late."""
        return cls.bounded(0, timestamp=timestamp, unit=unit, idle_timeout=idle_timeout)

    def with_idleness(self, timeout: Duration) -> WatermarkStrategy:
        """Treat the source as idle (left out of the watermark) after ``timeout`` of processing time with no data."""
        return replace(self, idle_timeout_ms=to_ms(timeout, "idle timeout"))

    def describe(self) -> str:
        if isinstance(self.timestamp, str | Expr):
            ts = str(self.timestamp)
        else:
            ts = getattr(self.timestamp, "__name__", "fn")
        text = f"timestamp={ts!s}, bound={self.bound_ms}ms"
        if self.unit != "ms":
            text += f", unit={self.unit}"
        if self.idle_timeout_ms is not None:
            text += f", idle after {self.idle_timeout_ms}ms"
        return text


class WatermarkGenerator:
    """Runtime state of one source's watermark: the max event time and idleness."""

    __slots__ = ("bound", "idle", "idle_timeout", "last_active", "max_ts")

    def __init__(self, strategy: WatermarkStrategy, now_ms: int) -> None:
        self.bound = strategy.bound_ms
        self.idle_timeout = strategy.idle_timeout_ms
        self.max_ts = MIN_WATERMARK
        self.last_active = now_ms
        self.idle = False

    def observe(self, max_ts: int, now_ms: int) -> None:
        if max_ts > self.max_ts:
            self.max_ts = max_ts
        self.last_active = now_ms
        self.idle = False

    def current(self) -> int:
        if self.max_ts == MIN_WATERMARK:
            return MIN_WATERMARK
        return self.max_ts - self.bound - 1

    def check_idle(self, now_ms: int) -> bool:
        """True when the source has just become idle."""
        if self.idle_timeout is None or self.idle:
            return False
        if now_ms - self.last_active >= self.idle_timeout:
            self.idle = True
            return True
        return False


class SourceWatermarks:
    """The watermark of one source: a generator per split, the minimum over the active ones.

    A reader that is one split (``split()`` is None) uses one generator. A reader of several
    splits gets one per split; an assigned split with no records yet holds the watermark back
    until it has records or goes idle; idle and ended splits are left out; when every split is
    idle, the source is idle (downstream operators leave it out) and its watermark stays.
    """

    __slots__ = ("gens", "idle", "single", "strategy")

    def __init__(self, strategy: WatermarkStrategy, now_ms: int) -> None:
        self.strategy = strategy
        self.single = WatermarkGenerator(strategy, now_ms)
        self.gens: dict[str, WatermarkGenerator] = {}
        self.idle = False

    def of(self, split: str | None, now_ms: int) -> WatermarkGenerator:
        """The generator of ``split`` (created when the split is new)."""
        if split is None:
            return self.single
        gen = self.gens.get(split)
        if gen is None:
            gen = self.gens[split] = WatermarkGenerator(self.strategy, now_ms)
        return gen

    def observe(self, split: str | None, max_ts: int, now_ms: int) -> None:
        self.of(split, now_ms).observe(max_ts, now_ms)
        self.idle = False

    def _active(self, active: Any, now_ms: int) -> list[WatermarkGenerator]:
        if active is None:
            return list(self.gens.values()) if self.gens else [self.single]
        return [self.of(s, now_ms) for s in active]

    def current(self, active: Any = None, now_ms: int = 0) -> int:
        """The source's watermark; ``active`` the reader's ``splits()`` (None: every split seen)."""
        if active is None and not self.gens:
            return self.single.current()
        gens = self._active(active, now_ms)
        busy = [g.current() for g in gens if not g.idle]
        if busy:
            return min(busy)
        # every split idle: the source is idle (downstream leaves it out) and its own time stays
        return min((g.current() for g in gens), default=self.single.current())

    def current_without(self, split: str | None, active: Any = None, now_ms: int = 0) -> int:
        """The minimum watermark of the active splits other than ``split`` (the highest possible
        watermark when there are none): what holds the source back besides ``split`` itself."""
        if split is None or (active is None and not self.gens):
            return MAX_WATERMARK
        gens = [g for s, g in ((s, self.of(s, now_ms)) for s in (active if active is not None else self.gens))
                if s != split and not g.idle]
        return min((g.current() for g in gens), default=MAX_WATERMARK)

    def check_idle(self, now_ms: int, active: Any = None) -> bool:
        """Mark splits idle after the strategy's timeout; True when the whole source has just become idle."""
        if active is None and not self.gens:
            return self.single.check_idle(now_ms)
        gens = self._active(active, now_ms)
        for g in gens:
            g.check_idle(now_ms)
        if gens and all(g.idle for g in gens) and not self.idle:
            self.idle = True
            return True
        return False

    @property
    def max_ts(self) -> int:
        """The highest event time seen over all splits."""
        return max([self.single.max_ts, *(g.max_ts for g in self.gens.values())])

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the highest event time per split."""
        return {"max_ts": self.single.max_ts, "splits": {s: g.max_ts for s, g in self.gens.items()}}

    def restore(self, state: Any, now_ms: int, *, merge: bool = False) -> None:
        """Take back :meth:`state` (an int: the state of a checkpoint before splits existed).
        With ``merge``, keep the later of each split's time and the restored one."""
        if not isinstance(state, dict):
            state = {"max_ts": state, "splits": {}}
        pairs = [(self.single, state["max_ts"])] + [(self.of(s, now_ms), t) for s, t in state["splits"].items()]
        for gen, t in pairs:
            if t is None:
                continue
            gen.max_ts = max(gen.max_ts, t) if merge else t
