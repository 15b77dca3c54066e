"""Generated input: ``fn(i)`` for ``i = 0, 1, 2, ...``, as fast as possible or at a steady rate.

>>> import millstream as ms
>>> from millstream.connectors import generator
>>> flow = ms.Flow("squares")
>>> out = ms.testing.CollectSink()
>>> flow.source(generator.read(lambda i: i * i, count=5)).sink(out)
>>> _ = flow.run()
>>> out.values
[0, 1, 4, 9, 16]

With ``rate``, records are released against the run's clock (a token bucket),
so ``run(clock=ms.testing.ManualClock())`` makes a rate-limited test exact and instant.
The position is the next ``i``: with a deterministic ``fn`` the source is replayable.

With ``splits=s``, the source is ``s`` logical splits by stride: split ``j`` makes ``fn(i)`` for
``i = j, j + s, j + 2s, ...`` (at ``rate / s`` when paced), each with its own position and
watermark, at every parallelism; a job with ``parallelism=n`` reads them on its ``n`` workers:

>>> for split in generator.read(lambda i: i, count=5, splits=2).logical_splits():
...     print(split.describe())
generator <lambda> (5 records, split 0 of 2: i = 0, 2, 4, ...)
generator <lambda> (5 records, split 1 of 2: i = 1, 3, 5, ...)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from millstream._location import callable_location, callable_name
from millstream._time import Duration, to_ms
from millstream.connectors._base import Source, SourceContext, SourceReader, check_splits, stride_parts
from millstream.errors import ConfigError, StepError

__all__ = ["GeneratorSource", "SequenceRecords", "read", "sequence"]


class GeneratorSource(Source):
    """``fn(i)`` for ``i`` in ``0 .. count-1`` (forever when ``count`` is None), at most ``rate`` per second."""

    replay = "position"
    #: this source (a split of one) makes ``i = part, part + parts, ...`` (see :meth:`logical_splits`)
    part = 0
    parts = 1

    def __init__(self, fn: Callable[[int], Any], *, count: int | None = None, rate: float | None = None,
                 burst: int | None = None, batch: int | None = None, name: str = "generator",
                 splits: int = 1) -> None:
        self.splits = check_splits(splits)
        if not callable(fn):
            raise ConfigError(f"generator.read() needs a function of the index i, got {type(fn).__name__} {fn!r}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ConfigError(f"count must be an int >= 0 or None (unbounded), not {count!r}")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)
                                 or not math.isfinite(rate) or rate <= 0):
            raise ConfigError(f"rate must be a number of records per second > 0, or None (as fast as possible), "
                              f"not {rate!r}")
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
            raise ConfigError(f"burst must be an int >= 1, not {burst!r}")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ConfigError(f"batch must be an int >= 1, not {batch!r}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name must be a non-empty str, not {name!r}")
        self.fn = fn
        self.count = count
        self.rate = rate
        #: most records released at once after a stall (default: one second's worth)
        self.burst = burst if burst is not None else (max(1, math.ceil(rate)) if rate is not None else None)
        self.batch = batch
        self.name = name
        self.bounded = count is not None

    def open(self, ctx: SourceContext) -> SourceReader:
        return _GeneratorReader(self, ctx)

    def logical_splits(self) -> list[Source] | None:
        """``splits`` splits by stride: split ``j`` makes ``i = j, j + splits, ...`` (``rate / splits`` each
        when paced); None for one."""
        return stride_parts(self, self.splits)

    @property
    def local_count(self) -> int | None:
        """How many records this source (or part) makes: ``count`` for the whole, its share for a part."""
        if self.count is None:
            return None
        return max(0, -(-(self.count - self.part) // self.parts))

    def describe(self) -> str:
        count = "unbounded" if self.count is None else f"{self.count:,} records"
        rate = f", {self.rate:,g}/s" if self.rate is not None else ""
        if self.parts > 1:
            p, n = self.part, self.parts
            rate += f", split {p} of {n}: i = {p}, {p + n}, {p + 2 * n}, ..."
        elif self.splits > 1:
            rate += f", {self.splits} splits"
        return f"generator {callable_name(self.fn)} ({count}{rate})"

    def default_name(self) -> str:
        return self.name


class _GeneratorReader(SourceReader):
    def __init__(self, src: GeneratorSource, ctx: SourceContext) -> None:
        self.src = src
        self.ctx = ctx
        self.clock = ctx.clock
        self.i = 0
        self.chunk_start = 0
        self._start_bucket()

    def _start_bucket(self) -> None:
        # credit in thousandths of a record, so that integer rates stay exact: one is due at once
        self.credit: float = 1000
        self.last = self.clock.now_ms()

    def _accrue(self) -> None:
        rate = self.src.rate
        assert rate is not None and self.src.burst is not None
        now = self.clock.now_ms()
        if now > self.last:
            self.credit = min(self.src.burst * 1000, self.credit + (now - self.last) * rate)
            self.last = now

    def poll(self, max_records: int) -> list[Any] | None:
        src = self.src
        start = self.i  # counts this part's records; record j of the part is fn(part + j * parts)
        n = max_records if src.batch is None else min(max_records, src.batch)
        count = src.local_count
        if count is not None:
            if start >= count:
                return None
            n = min(n, count - start)
        if src.rate is not None:
            self._accrue()
            n = min(n, int(self.credit // 1000))
            if n <= 0:
                return []
            self.credit -= n * 1000
        fn = src.fn
        out: list[Any] = []
        append = out.append
        step, first = src.parts, src.part + start * src.parts
        i = first
        try:
            for i in range(first, first + n * step, step):
                append(fn(i))
        except Exception as exc:
            self.i = start + (i - first) // step
            raise StepError(step=self.ctx.step, location=callable_location(fn), error=exc,
                            position=f"{src.name}[{i}]") from exc
        self.chunk_start = start
        self.i = start + n
        return out

    def position_of(self, index: int) -> str | None:
        src = self.src
        return f"{src.name}[{src.part + (self.chunk_start + index) * src.parts}]"

    def wait_hint(self) -> float | None:
        src = self.src
        count = src.local_count
        if src.rate is None or (count is not None and self.i >= count):
            return None
        self._accrue()
        if self.credit >= 1000:
            return 0.0
        return math.ceil((1000 - self.credit) / src.rate) / 1000

    def snapshot(self) -> Any:
        return self.i

    def restore(self, position: Any) -> None:
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ConfigError(f"not a position of a generator source: {position!r}")
        self.i = position
        self._start_bucket()


def read(fn: Callable[[int], Any], *, count: int | None = None, rate: float | None = None,
         name: str = "generator", batch: int | None = None, burst: int | None = None,
         splits: int = 1) -> GeneratorSource:
    """A source of ``fn(0), fn(1), ...``: ``count`` records (None: without end).

    ``rate`` limits it to that many records per second of the run's clock (a
    token bucket holding at most ``burst`` records, by default one second's
    worth); without it records come as fast as the flow takes them. ``batch``
    caps how many records one poll makes. ``fn`` should be a pure function of
    ``i``: the source's position is the next ``i``, and a restore replays from it.
    An exception in ``fn`` fails the job with a :class:`~millstream.errors.StepError`
    naming ``fn`` and ``i``. ``splits``: the source's fixed number of logical splits (see the module's
    docstring); default 1.
    """
    return GeneratorSource(fn, count=count, rate=rate, burst=burst, batch=batch, name=name, splits=splits)


@dataclass(frozen=True)
class SequenceRecords:
    """The record function of :func:`sequence`: ``{"id": i, "ts": start_ms + i * interval_ms}``."""

    start_ms: int = 0
    interval_ms: int = 1000

    def __call__(self, i: int) -> dict[str, int]:
        return {"id": i, "ts": self.start_ms + i * self.interval_ms}


def sequence(count: int | None = None, *, rate: float | None = None, start_ms: int = 0, interval: Duration = 1000,
             name: str = "sequence", batch: int | None = None, splits: int = 1) -> GeneratorSource:
    """A source of ``{"id": i, "ts": start_ms + i * interval}`` records (``interval`` in ms or a timedelta).

    >>> from millstream.connectors import generator
    >>> generator.SequenceRecords(start_ms=1_000, interval_ms=10)(3)
    {'id': 3, 'ts': 1030}
    """
    if isinstance(start_ms, bool) or not isinstance(start_ms, int):
        raise ConfigError(f"start_ms must be an int of milliseconds since the epoch, not {start_ms!r}")
    return read(SequenceRecords(start_ms, to_ms(interval, "interval")), count=count, rate=rate, name=name, batch=batch,
                splits=splits)
