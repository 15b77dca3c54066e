"""Standard input and output: JSON lines or text lines in, JSON lines, text or ``repr`` out.

>>> import millstream as ms
>>> flow = ms.Flow("echo")
>>> flow.source(ms.connectors.memory.read([{"a": 1}, {"a": 2}])).sink(ms.connectors.stdio.write())
>>> _ = flow.run()
{"a":1}
{"a":2}

Reading never blocks the flow: a background thread reads standard input into
a small bounded queue, and each poll takes what is ready.
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import IO, Any

import orjson

from millstream.connectors._base import ErrorPolicy, Sink, SinkWriter, Source, SourceContext, SourceReader, check_policy
from millstream.connectors._files_common import Tally
from millstream.connectors._files_read import parse_json_lines, parse_text_lines
from millstream.errors import ConfigError, JobError

__all__ = ["StdinSource", "StdoutSink", "read", "write"]

_READ_FORMATS = ("jsonl", "lines")
_WRITE_FORMATS = ("jsonl", "lines", "repr")
_JSON_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_END = object()


class StdinSource(Source):
    """Lines of standard input (or of ``stream``), as JSON objects or as text. Ends at end of input."""

    def __init__(self, *, format: str = "jsonl", on_error: ErrorPolicy = "fail",
                 name: str = "stdin", stream: IO[bytes] | None = None, queue_chunks: int = 16) -> None:
        if format not in _READ_FORMATS:
            raise ConfigError(f"stdio.read() format must be one of {', '.join(map(repr, _READ_FORMATS))}, "
                              f"not {format!r}")
        if isinstance(queue_chunks, bool) or not isinstance(queue_chunks, int) or queue_chunks < 1:
            raise ConfigError(f"queue_chunks must be an int >= 1, not {queue_chunks!r}")
        self.format = format
        self.on_error = check_policy(on_error)
        self.name = name
        self.stream = stream
        self.queue_chunks = queue_chunks

    def open(self, ctx: SourceContext) -> SourceReader:
        stream = self.stream if self.stream is not None else getattr(sys.stdin, "buffer", None)
        if stream is None:
            raise ConfigError(f"source {ctx.step!r}: standard input is closed or not a binary stream "
                              f"({sys.stdin!r}); pass stdio.read(stream=...) a binary stream")
        return _StdinReader(self, ctx, stream)

    def describe(self) -> str:
        return f"{self.format} from standard input"

    def default_name(self) -> str:
        return self.name


class _StdinReader(SourceReader):
    def __init__(self, src: StdinSource, ctx: SourceContext, stream: IO[bytes]) -> None:
        self.src = src
        self.ctx = ctx
        self.where = src.name
        self.q: queue.Queue[Any] = queue.Queue(maxsize=src.queue_chunks)
        self.pending: list[bytes] = []
        self.line = 0  # lines handed out so far
        self.ended = False
        self.closing = threading.Event()
        self.first_line = 1
        self.nums: list[int] | None = None
        self.tally = Tally()
        self.thread = threading.Thread(target=self._pump, args=(stream,), name="millstream-stdin", daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.closing.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self, stream: IO[bytes]) -> None:
        """Background thread: blocks on the stream, hands complete lines over in chunks."""
        read = getattr(stream, "read1", None) or stream.read
        carry = b""
        try:
            while not self.closing.is_set():
                block = read(1 << 16)
                if not block:
                    break
                parts = (carry + block).split(b"\n") if carry else block.split(b"\n")
                carry = parts.pop()
                if parts and not self._put(parts):
                    return
            if carry:
                self._put([carry])
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the flow, which raises it
            self._put(exc)

    def poll(self, max_records: int) -> list[Any] | None:
        lines = self.pending
        while len(lines) < max_records and not self.ended:
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self.ended = True
            elif isinstance(item, BaseException):
                raise JobError(f"source {self.ctx.step!r}: reading standard input failed: {item}") from item
            else:
                lines = lines + item if lines else item
        if not lines:
            self.pending = []
            return None if self.ended else []
        chunk, self.pending = lines[:max_records], lines[max_records:]
        first = self.line + 1
        self.line += len(chunk)
        if self.src.format == "jsonl":
            recs, self.nums = parse_json_lines(chunk, first, self.where, self.ctx, self.tally)
        else:
            recs, self.nums = parse_text_lines(chunk, first, self.where, self.ctx)
        self.first_line = first
        return recs

    def metrics(self) -> dict[str, int]:
        return self.tally.metrics()

    def position_of(self, index: int) -> str | None:
        if self.nums is None:
            return f"{self.where}:{self.first_line + index}"
        return f"{self.where}:{self.nums[index]}" if 0 <= index < len(self.nums) else None

    def close(self) -> None:
        self.closing.set()


class StdoutSink(Sink):
    """Writes records to standard output (or ``stream``), one per line."""

    def __init__(self, *, format: str = "jsonl", name: str = "stdout", stream: IO[Any] | None = None) -> None:
        if format not in _WRITE_FORMATS:
            raise ConfigError(f"stdio.write() format must be one of {', '.join(map(repr, _WRITE_FORMATS))}, "
                              f"not {format!r}")
        self.format = format
        self.name = name
        self.stream = stream

    def open(self, step: str) -> SinkWriter:
        return _StdoutWriter(self.format, self.stream if self.stream is not None else sys.stdout)

    def describe(self) -> str:
        return f"{self.format} to standard output"

    def default_name(self) -> str:
        return self.name


class _StdoutWriter(SinkWriter):
    def __init__(self, fmt: str, stream: IO[Any]) -> None:
        self.format = fmt
        self.stream = stream
        # bytes straight to the binary buffer when there is one (after what was printed before)
        self.buffer: IO[bytes] | None = getattr(stream, "buffer", None)
        if self.buffer is not None:
            stream.flush()

    def write(self, records: list[Any], times: list[int] | None) -> None:
        if self.format == "jsonl":
            dumps = orjson.dumps
            data = b"".join([dumps(r, default=str, option=_JSON_OPTIONS) for r in records])
            if self.buffer is not None:
                self.buffer.write(data)
            else:
                self.stream.write(data.decode("utf-8"))
            return
        text = "".join([f"{r!r}\n" for r in records] if self.format == "repr" else [f"{r}\n" for r in records])
        if self.buffer is not None:
            self.buffer.write(text.encode("utf-8"))
        else:
            self.stream.write(text)

    def flush(self) -> None:
        if self.buffer is not None:
            self.buffer.flush()
        self.stream.flush()

    def close(self) -> None:
        self.flush()


def read(*, format: str = "jsonl", on_error: ErrorPolicy = "fail", name: str = "stdin",
         stream: IO[bytes] | None = None) -> StdinSource:
    """A source of the lines of standard input: JSON objects (``format="jsonl"``) or ``str`` (``"lines"``).

    The input ends at end of file. Bad JSON lines (as for files: not JSON, a lone
    surrogate escape included, not an object, or nested deeper than 254 levels) go
    to ``on_error`` with their position (``stdin:7``); blank lines are not records
    in ``jsonl`` (passed over, counted as ``blank_lines``). ``stream``
    reads another binary stream instead (e.g. a pipe). Not replayable.
    """
    return StdinSource(format=format, on_error=on_error, name=name, stream=stream)


def write(*, format: str = "jsonl", name: str = "stdout", stream: IO[Any] | None = None) -> StdoutSink:
    """A sink that prints records to standard output, one per line.

    ``format``: ``"jsonl"`` (orjson; values JSON cannot hold written as ``str``),
    ``"lines"`` (``str(record)``) or ``"repr"``. ``stream`` writes to another text stream.
    """
    return StdoutSink(format=format, name=name, stream=stream)
