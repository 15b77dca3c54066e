"""Pacing any source at a wall-clock rate: ``paced(source, rate)``.

The wrapper releases at most ``rate`` records per second of the run's clock (a token bucket
holding at most ``burst`` records, one second's worth by default) and changes nothing else:
the records, their order, their splits, positions, acknowledgements, bad records and event
times are the wrapped source's. Only *when* records come out changes, so a demo or a crash
test can run a file or a topic at a chosen speed with the same results.

The Nexmark generator paces itself (``nexmark.read(rate=...)``, counting the kinds it leaves
out too); this wrapper is for every other source.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from millstream.connectors._base import Source, SourceContext, SourceReader
from millstream.errors import ConfigError

__all__ = ["PacedSource", "check_rate", "paced"]


def check_rate(rate: Any, option: str = "rate") -> float:
    """``rate`` as a float > 0, or a ConfigError naming ``option``."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
        raise ConfigError(f"{option} must be a number of records per second > 0, not {rate!r}")
    return float(rate)


class PacedSource(Source):
    """``source`` released at most ``rate`` records per second of wall-clock (the run's clock) time."""

    def __init__(self, source: Source, rate: float, *, burst: int | None = None) -> None:
        if not isinstance(source, Source):
            raise ConfigError(f"paced() takes a source connector, not {source!r}")
        self.source = source
        self.rate = check_rate(rate)
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
            raise ConfigError(f"burst must be an int >= 1, not {burst!r}")
        #: most records released at once after a stall (default: one second's worth)
        self.burst = burst if burst is not None else max(1, math.ceil(self.rate))
        # what the engine reads from a source is the wrapped source's
        self.bounded = source.bounded
        self.replay = source.replay
        self.on_error = source.on_error

    def open(self, ctx: SourceContext) -> SourceReader:
        return _PacedReader(self, self.source.open(ctx), ctx)

    def describe(self) -> str:
        return f"{self.source.describe()}, paced at {self.rate:,g}/s"

    def default_name(self) -> str:
        return self.source.default_name()

    def __getattr__(self, name: str) -> Any:
        # e.g. the Nexmark source's ``config``; only reached for attributes this class lacks
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)


class _PacedReader(SourceReader):
    """A token bucket in thousandths of a record (integer rates stay exact) in front of a reader."""

    def __init__(self, src: PacedSource, inner: SourceReader, ctx: SourceContext) -> None:
        self.src = src
        self.inner = inner
        self.clock = ctx.clock
        self.credit = 1000.0  # the first record goes at once
        self.last = self.clock.now_ms()
        self.ended = False

    def _accrue(self) -> int:
        now = self.clock.now_ms()
        if now > self.last:
            self.credit = min(self.src.burst * 1000.0, self.credit + (now - self.last) * self.src.rate)
            self.last = now
        return int(self.credit // 1000)

    def _take(self, n: int) -> None:
        self.credit -= n * 1000

    @property
    def columnar(self) -> bool:
        return self.inner.columnar

    def poll(self, max_records: int) -> list[Any] | None:
        allowed = self._accrue()
        if allowed <= 0 and max_records > 0:
            return []
        got = self.inner.poll(min(max_records, allowed))
        if got is None:
            self.ended = True
            return None
        self._take(len(got))
        return got

    def poll_frame(self, max_records: int) -> Any:
        allowed = self._accrue()
        if allowed <= 0 and max_records > 0:
            return []
        got = self.inner.poll_frame(min(max_records, allowed))
        if got is None:
            self.ended = True
            return None
        self._take(got.height if hasattr(got, "height") else len(got))
        return got

    def wait_hint(self) -> float | None:
        if self.ended:
            return None
        if self._accrue() > 0:
            inner = self.inner.wait_hint()
            return inner
        return math.ceil((1000 - self.credit) / self.src.rate) / 1000

    # everything else is the wrapped reader's
    def split(self) -> str | None:
        return self.inner.split()

    def splits(self) -> Collection[str] | None:
        return self.inner.splits()

    def position_of(self, index: int) -> str | None:
        return self.inner.position_of(index)

    def watermark(self) -> int | None:
        return self.inner.watermark()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def restore(self, position: Any) -> None:
        self.inner.restore(position)

    def acknowledge(self, position: Any) -> None:
        self.inner.acknowledge(position)

    def metrics(self) -> dict[str, int]:
        return self.inner.metrics()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # optional reader hooks the runtime looks up (push_down, skipped, max_time...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def paced(source: Source, rate: float, *, burst: int | None = None) -> PacedSource:
    """``source`` released at most ``rate`` records per second of the run's clock.

    Records, splits, positions and event times are unchanged (only when records come out
    changes); ``burst`` caps how many go at once after a stall (default: one second's worth).
    """
    return PacedSource(source, rate, burst=burst)
