"""Source and sink operators: reading, event-time assignment, the watermark, writing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from millstream._checkpoint._failpoints import failpoint
from millstream._eventtime import SourceWatermarks, WatermarkStrategy
from millstream._expr import Expr
from millstream._plan import Node, SinkOp, SourceOp
from millstream._time import MAX_WATERMARK, MIN_WATERMARK, format_ms, timestamp_to_ms
from millstream.connectors._base import DeadLetter, SinkWriter, SourceContext, SourceReader
from millstream.errors import MillstreamError

from ._base import Operator, Runtime
from ._codegen import Generated

log = logging.getLogger("millstream.eventtime")

#: Event times in this range, read as milliseconds, fall in January 1970 .. March 1973, while as seconds
#: they are 2001 .. 5138: far more likely seconds (a warning says how to declare them).
_SECONDS_LOW, _SECONDS_HIGH = 10**9, 10**11


def compile_extractor(strategy: WatermarkStrategy) -> Any:
    """A function ``(recs, floor) -> (times, max_time, behind)``; raises on the first bad timestamp.

    ``floor`` is the highest event time of the split before these records; ``behind`` lists the
    indexes of the records behind the watermark their split had reached just before them
    (``t < max(earlier times) - bound``): only those can be late, and only there can where a chunk
    ends change an answer (see :meth:`SourceOperator._emit_in_order`). The check costs one
    comparison per record, and one subtraction per new highest time (measured: +17 % on this
    function, about +4 % on a whole native pipeline).
    """
    bound = strategy.bound_ms
    env: dict[str, Any] = {"_conv": timestamp_to_ms, "_unit": strategy.unit, "_MIN": MIN_WATERMARK}
    g = Generated()
    g.add(0, "def _extract(recs, mx=_MIN):")
    g.add(1, f"out = []; oa = out.append; behind = []; lim = mx{f' - {bound}' if bound else ''}")
    g.add(1, "for r in recs:")
    if isinstance(strategy.timestamp, str):
        g.add(2, f"t = r[{strategy.timestamp!r}]")
    elif isinstance(strategy.timestamp, Expr):
        g.add(2, f"t = {strategy.timestamp.to_python(env)}")
    else:
        env["_tsfn"] = strategy.timestamp
        g.add(2, "t = _tsfn(r)")
    if strategy.unit == "ms":
        g.add(2, "if t.__class__ is not int: t = _conv(t)")
    else:
        g.add(2, "t = _conv(t, _unit)")
    g.add(2, f"if t > mx: mx = t; lim = t{f' - {bound}' if bound else ''}")
    g.add(2, "elif t < lim: behind.append(len(out))")
    g.add(2, "oa(t)")
    g.add(1, "return out, mx, behind")
    fn, _ = g.compile("timestamps", env, "_extract")
    return fn


class SourceOperator(Operator):
    """Polls a source reader, assigns event time, and advances the source's watermark (the minimum
    over the reader's splits, each with its own generator: :class:`SourceWatermarks`)."""

    def __init__(self, node: Node, rt: Runtime, dead_letter_write: Any = None) -> None:
        super().__init__(node, rt, 0)
        op = node.op
        assert isinstance(op, SourceOp)
        self.source = op.connector
        self.strategy = op.watermark
        self.extract = compile_extractor(op.watermark) if op.watermark else None
        #: at-most-once: dead letters of the chunk in hand, written once its read is recorded
        self._held_dead_letters: list[dict[str, Any]] = []
        self._write_dead_letter = dead_letter_write
        self.ctx = SourceContext(step=node.name, clock=rt.clock, policy=self.source.on_error,
                                 dead_letter_write=None if dead_letter_write is None else self._dead_letter,
                                 checkpointed=rt.checkpointed)
        self.reader: SourceReader | None = None
        self.gen: SourceWatermarks | None = None
        self.ended = False
        self._unit_checked = False
        self._wm_recorded = MIN_WATERMARK  # at-most-once: the watermark the last recorded read leads to
        self._next_idle_check = 0
        self.bad_timestamps = 0
        #: called after a chunk is read and before it is processed (at-most-once records positions)
        self.on_read: Callable[[], None] | None = None
        #: read columnar batches (``reader.poll_frame``) instead of rows: the micro-batch executor sets it
        self.frames = False

    def use_frames(self) -> bool:
        """Switch to columnar batches when the reader makes them and event time is a plain column or an
        expression in ms; returns whether it did."""
        reader, strategy = self.reader, self.strategy
        if reader is None or not reader.columnar:
            return False
        if strategy is not None and (strategy.unit != "ms" or (callable(strategy.timestamp)
                                     and not isinstance(strategy.timestamp, Expr))):
            return False
        self.frames = True
        return True

    def open(self) -> None:
        self.reader = self.source.open(self.ctx)
        if self.strategy is not None:
            self.gen = SourceWatermarks(self.strategy, self.rt.clock.now_ms())

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def position_of(self, index: int) -> str | None:
        return self.reader.position_of(index) if self.reader is not None else None

    def pump(self, max_records: int) -> int:
        """Read and push one chunk. Returns records read; -1 once the input has ended.

        Without checkpoints (guarantee ``"none"``) nothing else will tell the source that records are
        done with, so a chunk is acknowledged once it has been processed (a broker then does not hand
        the same records to the next run); with checkpoints the coordinator acknowledges."""
        n = self._pump(max_records)
        if n > 0 and not self.rt.checkpointed:
            assert self.reader is not None
            self.reader.acknowledge(self.reader.snapshot())
        return n

    def _pump(self, max_records: int) -> int:
        reader = self.reader
        assert reader is not None
        if self.frames:
            return self._pump_frame(reader, max_records)
        recs = reader.poll(max_records)
        if recs is None:
            self.end()
            return -1
        if not recs:
            return self._pump_empty(reader)
        n = len(recs)
        self.records_in += n
        self.rt.current_source = self
        self.rt.current_chunk = recs
        if self.extract is None:
            if self.on_read is not None:
                self._read_done()  # read, not yet processed
            self.emit(recs, None)
        else:
            self._emit_rows(reader, recs)
        # what the watermark fires derives from many chunks, not from this one
        self.rt.current_chunk = None
        self._after_chunk(reader)
        return n

    def _emit_rows(self, reader: SourceReader, recs: list[Any]) -> None:
        """Time a chunk of rows, then push it so that each record meets its split's watermark as of
        the records before it."""
        assert self.extract is not None and self.gen is not None
        split = reader.split()
        floor = self.gen.of(split, self.rt.clock.now_ms()).max_ts
        try:
            times, mx, behind = self.extract(recs, floor)
        except Exception:  # noqa: BLE001 - a bad timestamp: the source's error policy decides
            recs, times, mx = self._extract_slow(recs)
            behind = _behind(times, floor, self.gen.strategy.bound_ms)
        prefix = _highest_before(times, floor, behind)
        if floor == MIN_WATERMARK:
            self._check_unit(mx)
        self.gen.observe(split, mx, self.rt.clock.now_ms())
        if self.on_read is not None:
            self._read_done()  # read, not yet processed
        self._emit_in_order(reader, split, recs, times, behind, prefix)

    def _emit_in_order(self, reader: SourceReader, split: str | None, recs: Any, times: list[int] | None,
                       behind: list[int], prefix: list[int]) -> None:
        """Push ``recs`` (rows, or a frame with ``times`` None) as if one at a time: a record meets the
        watermark produced by the records before it in its split, whatever the chunk size or mode.

        Only a record at or behind its split's watermark (``behind``) can be late, so the chunk is cut
        just before each such record whose watermark is above the one operators have seen, and that
        watermark is sent first: the windows it closes fire, and the record is then judged late or not
        exactly as if it had come alone. Records within the bound never cut a chunk. ``prefix[i]``:
        the highest time of the split before record ``behind[i]``.
        """
        if not behind or reader.watermark() is not None:  # scripted watermarks come between polls
            self.emit(recs, times)
            return
        assert self.gen is not None
        bound = self.gen.strategy.bound_ms
        others = self.gen.current_without(split, reader.splits(), self.rt.clock.now_ms())
        start, sent = 0, self.wm
        for idx, high in zip(behind, prefix):
            wm = min(others, high - bound - 1)
            if wm <= sent:
                continue
            if idx > start:
                self.emit(recs[start:idx], times[start:idx] if times is not None else None)
                start = idx
            chunk, self.rt.current_chunk = self.rt.current_chunk, None  # what fires is not this record's
            self._send_watermark(wm)
            self.rt.current_chunk = chunk
            sent = wm
        if start == 0:
            self.emit(recs, times)
        elif start < len(recs):
            self.emit(recs[start:], times[start:] if times is not None else None)

    def _pump_frame(self, reader: Any, max_records: int) -> int:
        from ._columnar import TIME, to_rows

        df = reader.poll_frame(max_records)
        if df is None:
            self.end()
            return -1
        if isinstance(df, list):  # a chunk the reader could only make as rows
            if not df:
                return self._pump_empty(reader)
            if self.strategy is None:
                self.records_in += len(df)
                self.rt.current_source, self.rt.current_chunk = self, df
                if self.on_read is not None:
                    self._read_done()
                self.emit(df, None)
                self.rt.current_chunk = None
                return len(df)
            return self._push_rows(reader, df)
        gen = self.gen
        n: int = df.height
        # a source that left out rows the flow drops anyway (push-down) still read them, and
        # their event times still move the watermark (else lateness would differ from native)
        skipped: int = getattr(reader, "skipped", 0)
        self.records_in += skipped
        split = reader.split()
        floor = gen.of(split, self.rt.clock.now_ms()).max_ts if gen is not None else MIN_WATERMARK
        if skipped and gen is not None:
            # their times move the watermark once the chunk is through, not between the rows kept
            gen.observe(split, reader.max_time, self.rt.clock.now_ms())
        if n == 0:
            if skipped:
                self._after_chunk(reader)
                return skipped  # not idle: the source read this much
            return self._pump_empty(reader)
        self.records_in += n
        if self.strategy is not None:
            ts = self.strategy.timestamp
            import polars as pl

            expr = pl.col(ts) if isinstance(ts, str) else ts.to_polars()  # type: ignore[union-attr]
            try:
                t = df.select(expr.alias(TIME)).to_series()
                # integer milliseconds only: a datetime column (or anything else) takes the row
                # path, which converts or reports each value as natively
                t = t if t.dtype.is_integer() else None
                if t is not None:
                    t = t.cast(pl.Int64)
            except Exception:  # noqa: BLE001 - not an integer column: the row path reports each bad record
                t = None
            if t is None or t.null_count():
                rows_of = getattr(reader, "rows_of_frame", None)
                rows = rows_of(df) if rows_of is not None else to_rows(df)[0]
                self.records_in -= n
                return self._push_rows(reader, list(rows))
            assert gen is not None
            df = df.with_columns(t)
            if skipped:  # rows left out before these count too: the reader says how late each kept row is
                prev = pl.Series(reader.highest_before, dtype=pl.Int64).clip(lower_bound=floor)
            else:
                prev = t.cum_max().shift(1, fill_value=floor).clip(lower_bound=floor)
            late_mask = t < prev - self.strategy.bound_ms
            if floor == MIN_WATERMARK:
                self._check_unit(int(t.max()))
            gen.observe(split, int(t.max()), self.rt.clock.now_ms())
            if self.on_read is not None:
                self._read_done()
            if late_mask.any():
                idx = late_mask.arg_true()
                self._emit_in_order(reader, split, df, None, idx.to_list(), prev.gather(idx).to_list())
            else:
                self.emit(df, None)
        else:
            if self.on_read is not None:
                self._read_done()
            self.emit(df, None)
        self._after_chunk(reader)
        return n

    def _check_unit(self, high: int) -> None:
        """Warn once when event times in ms look like seconds since the epoch (they land in January 1970)."""
        if self._unit_checked or self.strategy is None or self.strategy.unit != "ms":
            return
        self._unit_checked = True
        if _SECONDS_LOW <= high < _SECONDS_HIGH:
            log.warning(
                "source %r: event times such as %d read as milliseconds are %s; if the field holds seconds since "
                "the epoch, say so: WatermarkStrategy.bounded(..., unit='s')", self.name, high, format_ms(high))

    def _pump_empty(self, reader: SourceReader) -> int:
        """Nothing to read now: splits (or the whole source) may go idle, which may move the watermark."""
        gen = self.gen
        if gen is not None:
            splits = reader.splits()
            if gen.check_idle(self.rt.clock.now_ms(), splits):
                for op, port in self.outs:
                    op.idle(port)
            elif splits is not None or gen.gens:
                self._after_chunk(reader)  # a split that went idle no longer holds the others back
                return 0
        self._scripted_watermark(reader)
        return 0

    def _push_rows(self, reader: Any, recs: list[Any]) -> int:
        """Push rows that came as a batch the columnar path cannot time (bad timestamps)."""
        n = len(recs)
        self.records_in += n
        self.rt.current_source = self
        self.rt.current_chunk = recs
        self._emit_rows(reader, recs)
        self.rt.current_chunk = None
        self._after_chunk(reader)
        return n

    def _after_chunk(self, reader: SourceReader) -> None:
        gen = self.gen
        if gen is not None and gen.strategy.idle_timeout_ms is not None:
            now = self.rt.clock.now_ms()
            if now >= self._next_idle_check:  # a silent split goes idle even while others deliver
                self._next_idle_check = now + max(1, gen.strategy.idle_timeout_ms // 4)
                splits = reader.splits()
                if splits is not None or gen.gens:
                    gen.check_idle(now, splits)
        scripted = reader.watermark()
        wm = scripted if scripted is not None else self._strategy_watermark(reader)
        if wm is not None and wm > self.wm:
            self._send_watermark(wm)

    def _strategy_watermark(self, reader: SourceReader) -> int | None:
        gen = self.gen
        if gen is None:
            return None
        return gen.current(reader.splits(), self.rt.clock.now_ms())

    def _scripted_watermark(self, reader: SourceReader) -> None:
        wm = reader.watermark()
        if wm is not None and wm > self.wm:
            self._send_watermark(wm)

    def _extract_slow(self, recs: list[Any]) -> tuple[list[Any], list[int], int]:
        assert self.extract is not None
        good: list[Any] = []
        times: list[int] = []
        mx = MIN_WATERMARK
        for i, r in enumerate(recs):
            try:
                (t,), _, _ = self.extract((r,))
            except Exception as exc:  # noqa: BLE001
                self.bad_timestamps += 1
                pos = self.position_of(i) or f"record {i} of a chunk"
                self.ctx.bad_record(f"cannot read its event time: {type(exc).__name__}: {exc}", position=pos, raw=r)
                continue
            good.append(r)
            times.append(t)
            if t > mx:
                mx = t
        return good, times, mx

    def _dead_letter(self, row: dict[str, Any]) -> None:
        if self.on_read is not None:
            # at-most-once: not before the read is recorded, else a crash in between would read the bad
            # record again after the restart and write it a second time
            self._held_dead_letters.append(row)
        else:
            assert self._write_dead_letter is not None
            self._write_dead_letter(row)

    def _read_done(self) -> None:
        """At-most-once: record how far this source has read (and the watermark that follows) before
        what was read is processed; then write the dead letters of what was read."""
        if self.on_read is not None:
            failpoint("source.read")
            self.on_read()
            self._wm_recorded = self.next_watermark()
            held, self._held_dead_letters = self._held_dead_letters, []
            if held:
                assert self._write_dead_letter is not None
                for row in held:
                    self._write_dead_letter(row)

    def _send_watermark(self, wm: int) -> None:
        if self.on_read is not None and wm > self._wm_recorded:
            # a watermark no read recorded (a split went idle): recorded first, so that a resume after a
            # crash moves time past what it fires instead of firing it again
            self._read_done()
        self.wm = wm
        for op, port in self.outs:
            op.watermark(port, wm)

    def end(self) -> None:
        self.ended = True
        if self.on_read is not None:
            self._read_done()  # at-most-once: the end of input (watermark +inf) is recorded before it fires
        self._send_watermark(MAX_WATERMARK)

    def current_watermark(self) -> int:
        return self.wm

    def next_watermark(self) -> int:
        """The watermark this source will reach once the chunk in hand is processed."""
        if self.ended:
            return MAX_WATERMARK
        if self.gen is not None and self.reader is not None and self.reader.watermark() is None:
            return max(self.wm, self._strategy_watermark(self.reader) or self.wm)
        return self.wm

    def advance_muted(self, wm: int, ops: list[Operator]) -> None:
        """Move this source's watermark to ``wm`` with every downstream output dropped."""
        if wm <= self.wm:
            return
        for op in ops:
            op.muted = True
        try:
            self._send_watermark(wm)
        finally:
            for op in ops:
                op.muted = False

    def snapshot(self) -> Any:
        assert self.reader is not None
        return {"position": self.reader.snapshot(), "max_ts": self.time_state(), "wm": self.wm}

    def restore(self, state: Any) -> None:
        assert self.reader is not None
        self.reader.restore(state["position"])
        self.restore_time_state(state["max_ts"])
        self.wm = state["wm"]

    def time_state(self) -> Any:
        """The event time seen so far, per split (None without a watermark strategy)."""
        return self.gen.state() if self.gen is not None else None

    def restore_time_state(self, state: Any, *, merge: bool = False) -> None:
        if self.gen is not None and state is not None:
            self.gen.restore(state, self.rt.clock.now_ms(), merge=merge)

    def metrics(self) -> dict[str, int]:
        figures = {"skipped": self.ctx.skipped, "dead_lettered": self.ctx.dead_lettered}
        if self.reader is not None:
            figures.update(self.reader.metrics())
        return figures


class SinkOperator(Operator):
    """Writes chunks to a sink writer; a columnar batch goes to ``writer.write_frame`` when the writer
    has one (event times as a polars Series), else as dict records."""

    columnar = True

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt, len(node.inputs))
        op = node.op
        assert isinstance(op, SinkOp)
        self.sink = op.connector
        self.writer: SinkWriter | None = None
        self.figures: dict[str, int] = {}

    def open(self) -> None:
        self.writer = self.sink.open(self.name)
        self.writer.begin(checkpointed=self.rt.checkpointed)

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        self.records_in += len(records)
        assert self.writer is not None
        if not isinstance(records, list):
            from ._columnar import TIME, to_rows

            write_frame = self.writer.write_frame
            if not self.writer.columnar:
                records, times = to_rows(records)
            else:
                t = records.get_column(TIME) if TIME in records.columns else None
                try:
                    write_frame(records.drop(TIME) if t is not None else records, t)
                except MillstreamError:
                    raise
                except Exception as exc:
                    raise self.rt.step_error(self.node, exc) from exc
                return
        try:
            self.writer.write(records, times)
        except MillstreamError:
            raise
        except Exception as exc:
            raise self.rt.step_error(self.node, exc, record=records[0] if records else None) from exc

    def metrics(self) -> dict[str, int]:
        """The writer's own figures (``retries``...), as sources' are shown; kept once it is closed."""
        if self.writer is not None:
            self.figures = dict(self.writer.metrics())
        return self.figures

    def close(self) -> None:
        if self.writer is not None:
            self.metrics()
            self.writer.close()
            self.writer = None


class DeadLetterWriter:
    """Opens a dead-letter sink lazily and writes bad records to it one chunk at a time."""

    def __init__(self, policy: DeadLetter, step: str, checkpointed: bool = False) -> None:
        self.policy = policy
        self.step = step
        self.checkpointed = checkpointed
        self.writer: SinkWriter | None = None

    def open(self) -> SinkWriter:
        if self.writer is None:
            self.writer = self.policy.sink.open(f"{self.step}.dead-letter")
            self.writer.begin(checkpointed=self.checkpointed)
        return self.writer

    def __call__(self, row: dict[str, Any]) -> None:
        self.open().write([row], None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _behind(times: list[int], floor: int, bound: int) -> list[int]:
    """The indexes :func:`compile_extractor` finds, for times it could not take (the slow path)."""
    out = []
    mx = floor
    for i, t in enumerate(times):
        if t > mx:
            mx = t
        elif t < mx - bound:
            out.append(i)
    return out


def _highest_before(times: list[int], floor: int, indexes: list[int]) -> list[int]:
    """For each of ``indexes`` (ascending), the highest of ``floor`` and the times before it."""
    out = []
    high, j = floor, 0
    for i in indexes:
        if i > j:
            high = max(high, max(times[j:i]))
            j = i
        out.append(high)
    return out
