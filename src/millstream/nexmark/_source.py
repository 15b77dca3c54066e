"""The Nexmark source: the generator's events as row dicts, replayable from any position."""

from __future__ import annotations

import bisect
import math
from typing import Any, cast

from millstream._time import MIN_WATERMARK
from millstream.connectors._base import Source, SourceContext, SourceReader, check_splits, stride_parts
from millstream.errors import ConfigError
from millstream.nexmark._config import NexmarkConfig
from millstream.nexmark._generator import (
    ROW_MAKERS,
    _times,
    frame_of,
    have_numpy,
    kind_codes,
    kind_of,
    need_numpy,
    rows_of,
    tagged,
)
from millstream.nexmark._model import KINDS, Kind, check_kind

__all__ = ["NexmarkSource", "read"]

_BLOCK = 16_384  # events made at once (in columns, when numpy is there); fewer when paced slowly


class NexmarkSource(Source):
    """Nexmark events: all kinds (each row tagged with ``"type"``) or one kind (untagged rows).

    The position is the number of events emitted so far (of all kinds): a
    restore regenerates exactly the events that followed it.

    With ``splits=s``, the source is ``s`` logical splits by stride: split ``j`` makes event numbers
    ``j, j + s, j + 2s, ...`` (each event is a pure function of its number, so the splits together
    make the events one split makes, with the same ids and times), each with its own position and
    watermark at every parallelism; a job with ``parallelism=n`` reads them on its ``n`` workers.
    """

    replay = "position"
    #: this source (a split of one) makes event numbers ``part, part + parts, ...`` (see :meth:`logical_splits`)
    part = 0
    parts = 1

    def __init__(self, config: NexmarkConfig | None = None, *, kind: str = "all", rate: float | None = None,
                 burst: int | None = None, name: str | None = None, splits: int = 1) -> None:
        self.splits = check_splits(splits)
        if config is None:
            config = NexmarkConfig()
        if not isinstance(config, NexmarkConfig):
            raise ConfigError(f"nexmark.read() takes a NexmarkConfig, not {config!r}")
        check_kind(kind, allow_all=True)
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)
                                 or not math.isfinite(rate) or rate <= 0):
            raise ConfigError(f"rate must be a number of events per second > 0, or None (as fast as possible), "
                              f"not {rate!r}")
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
            raise ConfigError(f"burst must be an int >= 1, not {burst!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"name must be a non-empty str, not {name!r}")
        self.config = config
        self.kind = kind
        #: the one kind read, or None for all of them
        self.only: Kind | None = None if kind == "all" else cast(Kind, kind)
        self.rate = rate
        #: most events released at once after a stall (default: one second's worth)
        self.burst = burst if burst is not None else (max(1, math.ceil(rate)) if rate is not None else None)
        self.name = name or ("nexmark" if kind == "all" else f"nexmark-{kind}")
        self.bounded = config.events is not None

    def open(self, ctx: SourceContext) -> SourceReader:
        return _NexmarkReader(self, ctx)

    def logical_splits(self) -> list[Source] | None:
        """``splits`` splits by stride over the event numbers (each paced at ``rate / splits`` when
        paced); None for one."""
        return stride_parts(self, self.splits)

    @property
    def local_events(self) -> int | None:
        """How many events (of all kinds) this source or part makes; None when unbounded."""
        total = self.config.events
        if total is None:
            return None
        return max(0, -(-(total - self.part) // self.parts))

    def describe(self) -> str:
        cfg = self.config
        count = "unbounded" if cfg.events is None else f"{cfg.events:,}"
        what = f"{count} events" if self.only is None else f"{self.only}s of {count} events"
        paced = f", paced at {self.rate:,g}/s" if self.rate is not None else ""
        if self.parts > 1:
            p, n = self.part, self.parts
            paced += f"; split {p} of {n}: events {p}, {p + n}, {p + 2 * n}, ..."
        elif self.splits > 1:
            paced += f"; {self.splits} splits"
        return f"nexmark {what} ({cfg.rate:,} events/s of event time{paced})"

    def default_name(self) -> str:
        return self.name


class _NexmarkReader(SourceReader):
    """Makes events a block at a time into a buffer, and releases them by position."""

    def __init__(self, src: NexmarkSource, ctx: SourceContext) -> None:
        self.src = src
        self.cfg = src.config
        #: positions count this part's events: position k is event number ``part + k * parts``
        self.part, self.parts = src.part, src.parts
        self.total = src.local_events
        self.clock = ctx.clock
        self.only = src.only
        self._numpy = have_numpy()
        self.block = _BLOCK if src.rate is None else max(256, min(_BLOCK, int(src.rate) // 20))
        self.k = 0  # events (of all kinds) emitted so far: the position
        self.emitted: list[int] = []  # positions of the last poll's records
        self._reset(0)

    def _reset(self, k: int) -> None:
        self.k = k
        self.made = k  # the next position to make
        self.rows: list[Any] = []  # made, not yet emitted: rows[i] is at position positions[i]
        self.positions: list[int] = []
        self.next = 0
        # the token bucket of the pacing, in thousandths of an event, so that integer rates stay exact
        self.credit: float = 1000
        self.last = self.clock.now_ms()

    # -- making ---------------------------------------------------------------------------------------
    def _make(self) -> None:
        start = self.made
        stop = start + self.block
        if self.total is not None:
            stop = min(stop, self.total)
        if self._numpy:
            self.rows, self.positions = self._make_columnar(start, stop)
        else:
            self.rows, self.positions = self._make_rows(start, stop)
        self.next = 0
        self.made = stop

    def _number(self, k: int) -> int:
        """The event number at position ``k``."""
        return self.part + k * self.parts

    def _numbers(self, np: Any, start: int, stop: int) -> Any:
        """The event numbers of positions ``start .. stop - 1``, as Beam numbers them (numpy)."""
        return self.cfg.first_event_number + self.part + np.arange(start, stop, dtype=np.int64) * self.parts

    def _make_rows(self, start: int, stop: int) -> tuple[list[Any], list[int]]:
        cfg = self.cfg
        event_id = cfg.event_id
        kind = self.only
        part, parts = self.part, self.parts
        if kind is None:
            return [tagged(event_id(part + k * parts), cfg) for k in range(start, stop)], list(range(start, stop))
        make = ROW_MAKERS[kind]
        rows, positions = [], []
        for k in range(start, stop):
            i = event_id(part + k * parts)
            if kind_of(i) == kind:
                rows.append(make(i, cfg))
                positions.append(k)
        return rows, positions

    def _make_columnar(self, start: int, stop: int) -> tuple[list[Any], list[int]]:
        np = need_numpy()
        cfg = self.cfg
        g = cfg.out_of_order_group_size
        n = self._numbers(np, start, stop)
        ids = cfg.first_event_id + (n // g) * g + (n * 953) % g
        codes = kind_codes(np, ids)
        if self.only is not None:
            at = np.flatnonzero(codes == KINDS.index(self.only))
            return rows_of(self.only, ids[at], cfg, tag=False), (at + start).tolist()
        per_kind = [iter(rows_of(kind, ids[codes == c], cfg, tag=True)).__next__ for c, kind in enumerate(KINDS)]
        return [per_kind[c]() for c in codes.tolist()], list(range(start, stop))

    # -- releasing ------------------------------------------------------------------------------------
    def _accrue(self) -> None:
        rate, burst = self.src.rate, self.src.burst
        assert rate is not None and burst is not None
        now = self.clock.now_ms()
        if now > self.last:
            self.credit = min(burst * 1000, self.credit + (now - self.last) * rate)
            self.last = now

    def poll(self, max_records: int) -> list[Any] | None:
        total = self.total
        start = self.k
        if total is not None and start >= total:
            return None
        if max_records <= 0:
            return []
        limit = total if total is not None else math.inf  # the positions below it may be released now
        if self.src.rate is not None:
            self._accrue()
            allowed = int(self.credit // 1000)
            if allowed <= 0:
                return []
            limit = min(limit, start + allowed)
        out: list[Any] = []
        emitted: list[int] = []
        while len(out) < max_records:
            if self.next >= len(self.rows):
                if self.made >= limit:
                    break
                self._make()
                continue
            stop = min(bisect.bisect_left(self.positions, limit, self.next), self.next + max_records - len(out))
            if stop == self.next:
                break
            out += self.rows[self.next:stop]
            emitted += self.positions[self.next:stop]
            self.next = stop
        self.emitted = emitted
        if len(out) == max_records:
            self.k = emitted[-1] + 1
        else:  # every position below the limit is used up (the kinds left out emit nothing)
            self.k = int(limit)
        if self.src.rate is not None:
            self.credit -= (self.k - start) * 1000
        return out

    #: set by :meth:`push_down`: the columns the flow reads (None: all) and the kinds it keeps
    _columns: frozenset[str] | None = None
    _kinds: frozenset[str] | None = None
    #: events of the last :meth:`poll_frame` left out by the push-down (counted as read), and the
    #: latest event time of that poll's events, left out or not (it moves the watermark)
    skipped = 0
    max_time = 0

    def push_down(self, columns: frozenset[str] | None, equals: dict[str, frozenset[Any]]) -> None:
        """The flow reads only ``columns`` and keeps only rows whose ``type`` is in ``equals["type"]``:
        :meth:`poll_frame` makes no more (the flow's own filter stays, so this only saves work)."""
        self._columns = columns
        kinds = equals.get("type")
        if kinds is not None and self.only is None:
            self._kinds = frozenset(k for k in KINDS if k in kinds)

    @property
    def columnar(self) -> bool:
        """Whether :meth:`poll_frame` works: unpaced, with numpy, pyarrow and polars."""
        if not self._numpy or self.src.rate is not None:
            return False
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in ("pyarrow", "polars"))

    def poll_frame(self, max_records: int) -> Any:
        """Up to ``max_records`` events as one polars DataFrame, made in columns; None at the end.

        The same events, in the same order, as :meth:`poll` gives as rows; ``kind="all"``
        has every kind's columns (null where a kind has no such field).
        """
        import polars as pl

        np = need_numpy()
        cfg = self.cfg
        total = self.total
        start = self.k
        if total is not None and start >= total:
            return None
        stop = start + max(1, max_records) if total is None else min(total, start + max(1, max_records))
        g = cfg.out_of_order_group_size
        n = self._numbers(np, start, stop)
        ids = cfg.first_event_id + (n // g) * g + (n * 953) % g
        codes = kind_codes(np, ids)
        self.k = stop
        cols = self._columns
        self.skipped = 0
        if self.only is not None:
            at = np.flatnonzero(codes == KINDS.index(self.only))
            self.emitted = (at + start).tolist()
            return frame_of(self.only, ids[at], cfg, cols) if len(at) else pl.DataFrame()
        parts = []
        kept = []
        for c, kind in enumerate(KINDS):
            if self._kinds is not None and kind not in self._kinds:
                continue
            at = np.flatnonzero(codes == c)
            if len(at):
                kept.append(at)
                parts.append(frame_of(kind, ids[at], cfg, cols).with_columns(
                    pl.lit(kind).alias("type"), pl.Series("__pos__", at)))
        if not parts:
            self.emitted = []
            self.skipped = stop - start
            self.max_time = int(_times(cfg, ids).max())
            return pl.DataFrame()
        self.skipped = (stop - start) - sum(len(at) for at in kept)
        if self.skipped:  # the latest event time of the whole chunk, kept rows or not
            times = _times(cfg, ids)
            self.max_time = int(times.max())
            # for each kept row, the latest time of every event before it, left out or not: the
            # watermark that row meets is the same as natively, where every event goes through
            before = np.maximum.accumulate(times)
            self.highest_before = np.concatenate(([MIN_WATERMARK], before[:-1]))[np.sort(np.concatenate(kept))]
        df = pl.concat(parts, how="diagonal")
        if len(parts) > 1:
            df = df.sort("__pos__")
        self.emitted = (np.sort(np.concatenate(kept)) + start).tolist() if self._kinds is not None else \
            list(range(start, stop))
        df = df.drop("__pos__")
        return df.select("type", *[c for c in df.columns if c != "type"])

    def position_of(self, index: int) -> str | None:
        if 0 <= index < len(self.emitted):
            return f"{self.src.name}[event {self.cfg.event_id(self._number(self.emitted[index]))}]"
        return None

    def wait_hint(self) -> float | None:
        rate = self.src.rate
        total = self.total
        if rate is None or (total is not None and self.k >= total):
            return None
        self._accrue()
        if self.credit >= 1000:
            return 0.0
        return math.ceil((1000 - self.credit) / rate) / 1000

    def progress(self) -> tuple[int, int] | None:
        """Events emitted (of all kinds) and the number of events to make; None when unbounded."""
        total = self.total
        return None if total is None else (min(self.k, total), total)

    def snapshot(self) -> Any:
        return self.k

    def restore(self, position: Any) -> None:
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ConfigError(f"not a position of a nexmark source: {position!r}")
        self._reset(position)


def read(config: NexmarkConfig | None = None, *, kind: str = "all", rate: float | None = None,
         burst: int | None = None, name: str | None = None, splits: int = 1) -> NexmarkSource:
    """A source of Nexmark events made by ``config`` (default: :class:`NexmarkConfig` ``()``).

    ``kind="all"`` gives every event as ``{"type": "person" | "auction" | "bid", ...fields}``;
    ``kind="person"``, ``"auction"`` or ``"bid"`` gives only that kind, as rows
    with just its fields (the ``person``/``auction``/``bid`` views of the Flink DDL).
    Event time is the ``dateTime`` field (int ms): pair the source with e.g.
    :data:`millstream.nexmark.WATERMARK`.

    ``rate`` paces the source against the run's clock: that many events per
    second, counting every kind (also those ``kind`` leaves out), so that with
    ``rate == config.rate`` events come out when their event time is due (as
    Beam's rate-limited generator). ``burst`` caps how many are released at once
    after a stall (default: one second's worth). Without ``rate``, as fast as
    the flow takes them.

    The source's position is the number of events emitted: restoring it makes
    exactly the same events again (each is a pure function of its id).

    ``splits``: the source's fixed number of logical splits, by stride over the event numbers, each
    with its own position and watermark; a job with ``parallelism=n`` reads them on its ``n``
    workers (default 1: read whole by one worker).
    """
    return NexmarkSource(config, kind=kind, rate=rate, burst=burst, name=name, splits=splits)
