"""The conformance kit for connector authors: one set of checks every connector passes.

:func:`check_source` and :func:`check_sink` drive a connector the way the runtime does (open,
poll, snapshot, restore, acknowledge, pre-commit, commit, recover, close) and assert what the
source model promises (see ``millstream.connectors._base``):

- declared capabilities are valid, ``describe()`` is a short text without secrets;
- every poll returns records of one split, named by ``split()``; positions pickle and carry no secret;
- **replay**: a reader restored from the position after chunk *k* reads exactly the records after
  it (for redelivery sources: the redelivered records the position covers are dropped);
- **acknowledgement only when told**: a redelivery source that was never acknowledged gives its
  records again; once acknowledged up to the end, a new reader gets none of them;
- **the bad-record policy**: ``fail`` names the position, ``skip`` counts, nothing is lost;
- **resources released on close**: no open file descriptor or thread left behind;
- sinks: what was written is read back once; a transactional sink shows nothing before its commit,
  commits idempotently and recovers the restored checkpoint's transaction while discarding others;
  an idempotent sink written twice holds each record once.

Each check raises :class:`ConformanceError` saying which promise broke and how.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from millstream._clock import SystemClock
from millstream.connectors._base import Sink, Source, SourceContext, SourceReader
from millstream.errors import MillstreamError, RecordError

__all__ = ["ConformanceError", "SinkReport", "SourceReport", "check_sink", "check_source"]

_REPLAY = ("position", "redelivery", "none")
_DELIVERY = ("transactional", "idempotent", "none")


class ConformanceError(MillstreamError, AssertionError):
    """A connector breaks a promise of the source model."""


@dataclass
class SourceReport:
    """What :func:`check_source` read and checked."""

    records: list[Any] = field(default_factory=list)
    chunks: int = 0
    splits: set[str] = field(default_factory=set)
    checks: list[str] = field(default_factory=list)


@dataclass
class SinkReport:
    """What :func:`check_sink` wrote and checked."""

    checks: list[str] = field(default_factory=list)


def _fail(what: str) -> None:
    raise ConformanceError(what)


def _canon(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((str(k), _canon(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return tuple(_canon(x) for x in v)
    if isinstance(v, bytearray):
        return bytes(v)
    return v


def _multiset(records: Sequence[Any]) -> Counter[Any]:
    return Counter(_canon(r) for r in records)


def _fds() -> set[str]:
    try:
        return set(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: nothing to compare
        return set()


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class _Resources:
    """Open file descriptors and threads before a check, compared after everything closed."""

    def __init__(self) -> None:
        self.fds = _fds()
        self.threads = {t.ident for t in threading.enumerate()}

    def check(self, who: str, settle_s: float = 3.0) -> None:
        deadline = time.monotonic() + settle_s
        while True:
            extra_threads = [t.name for t in threading.enumerate() if t.ident not in self.threads and t.is_alive()]
            extra_fds = _fds() - self.fds
            if not extra_threads and not extra_fds:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if extra_threads:
            _fail(f"{who}: threads still running after close: {extra_threads}")
        # a descriptor may be reused by something else meanwhile: name what it points to
        targets = []
        for fd in sorted(extra_fds):
            try:
                targets.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
            except OSError:
                continue
        if targets:
            _fail(f"{who}: file descriptors left open after close: {targets}")


def _context(src: Source, policy: Any = None) -> SourceContext:
    # as in a checkpointed job: the runtime, not the source, decides when records are acknowledged
    return SourceContext(step="conformance", clock=SystemClock(), policy=policy or src.on_error, checkpointed=True)


@dataclass
class _Read:
    chunks: list[tuple[str | None, list[Any], Any]]  # (split, records, snapshot after the chunk)

    @property
    def records(self) -> list[Any]:
        return [r for _, recs, _ in self.chunks for r in recs]


def _read(reader: SourceReader, *, limit: int | None, timeout_s: float, max_records: int, secrets: Sequence[str],
          who: str, snapshots: bool = True) -> _Read:
    """Poll until the input ends, ``limit`` records were read, or ``timeout_s`` passed without a record."""
    out = _Read([])
    n = 0
    last = time.monotonic()
    while limit is None or n < limit:
        recs: Any = reader.poll(max_records if limit is None else min(max_records, limit - n))
        if recs is None:
            break
        if not isinstance(recs, list):
            _fail(f"{who}: poll() must return a list of records, [] or None, not {type(recs).__name__}")
        if not recs:
            if time.monotonic() - last > timeout_s:
                break
            time.sleep(0.01)
            continue
        last = time.monotonic()
        split = reader.split()
        snap = None
        if snapshots:
            snap = reader.snapshot()
            try:
                blob = pickle.dumps(snap)
            except Exception as exc:  # noqa: BLE001 - any pickling failure breaks checkpoints
                _fail(f"{who}: snapshot() must be picklable (it goes into checkpoints): {exc}")
            for s in secrets:
                if s.encode() in blob:
                    _fail(f"{who}: a secret appears in the position that snapshot() returns")
            snap = pickle.loads(blob)  # noqa: S301 - our own bytes: the checkpoint round trip
        out.chunks.append((split, recs, snap))
        n += len(recs)
    return out


def check_source(make: Callable[[], Source], *, expected: Sequence[Any] | None = None, limit: int | None = None,
                 timeout_s: float = 5.0, max_records: int = 64, secrets: Sequence[str] = (),
                 make_bad: Callable[[Any], Source] | None = None, bad_records: int = 0,
                 resumes_from_acknowledged: bool | None = None) -> SourceReport:
    """Check a source connector against the source model.

    ``make()`` returns a new :class:`Source` over the same input each call (the same topic, stream
    or file); a bounded source ends by itself, an unbounded one is read until ``limit`` records or
    ``timeout_s`` without one. ``expected``: the records it must give (as a multiset). ``secrets``:
    strings that must never appear in ``describe()``, positions, errors or log lines.
    ``make_bad(policy)``: a source over an input with ``bad_records`` malformed records, built with
    ``on_error=policy``. ``resumes_from_acknowledged`` (default: for redelivery sources): a new
    reader starts after what was acknowledged, so the kit checks that nothing is acknowledged
    unless :meth:`~SourceReader.acknowledge` was called, and that everything acknowledged stays so.

    >>> from millstream.connectors import memory
    >>> report = check_source(lambda: memory.read([{"i": i} for i in range(100)]),
    ...                       expected=[{"i": i} for i in range(100)])
    >>> report.checks
    ['capabilities', 'first read', 'expected records', 'replay from every cut', 'resources released']
    """
    report = SourceReport()
    logs = _LogCapture()
    logging.getLogger("millstream").addHandler(logs)
    resources = _Resources()
    try:
        _check_source(make, report, expected=expected, limit=limit, timeout_s=timeout_s, max_records=max_records,
                      secrets=secrets, make_bad=make_bad, bad_records=bad_records,
                      resumes_from_acknowledged=resumes_from_acknowledged)
    finally:
        logging.getLogger("millstream").removeHandler(logs)
    for line in logs.lines:
        for s in secrets:
            if s in line:
                _fail(f"a secret appears in a log line: {line.replace(s, '***')!r}")
    resources.check("source")
    report.checks.append("resources released")
    return report


def _check_source(make: Callable[[], Source], report: SourceReport, *, expected: Sequence[Any] | None,
                  limit: int | None, timeout_s: float, max_records: int, secrets: Sequence[str],
                  make_bad: Callable[[Any], Source] | None, bad_records: int,
                  resumes_from_acknowledged: bool | None) -> None:
    src = make()
    who = f"source {src.describe()!r}"
    replay: Any = src.replay
    if replay not in _REPLAY:
        _fail(f"{who}: replay must be one of {_REPLAY}, not {replay!r}")
    bounded: Any = src.bounded
    if not isinstance(bounded, bool):
        _fail(f"{who}: bounded must be a bool")
    text = src.describe()
    if not isinstance(text, str) or not text.strip():
        _fail(f"{type(src).__name__}.describe() must return a short non-empty text")
    for s in secrets:
        if s in text or s in repr(src):
            _fail(f"{type(src).__name__}: a secret appears in describe() or repr()")
    report.checks.append("capabilities")
    if limit is None and expected is not None and not src.bounded:
        limit = len(expected)

    reader = src.open(_context(src))
    try:
        first = _read(reader, limit=limit, timeout_s=timeout_s, max_records=max_records, secrets=secrets, who=who)
    finally:
        reader.close()
    report.records = first.records
    report.chunks = len(first.chunks)
    report.splits = {s for s, _, _ in first.chunks if s is not None}
    if any(s is None for s, _, _ in first.chunks) and report.splits:
        _fail(f"{who}: split() returned None for some polls and a split name for others")
    report.checks.append("first read")
    if expected is not None:
        got, want = _multiset(first.records), _multiset(expected)
        if got != want:
            missing = list((want - got).elements())[:3]
            extra = list((got - want).elements())[:3]
            _fail(f"{who}: read {len(first.records)} records, expected {len(expected)}; "
                  f"missing e.g. {missing}, unexpected e.g. {extra}")
        report.checks.append("expected records")

    if src.replay != "none" and len(first.chunks) < 2:
        _fail(f"{who}: read {len(first.chunks)} chunk(s): replay cannot be checked; give the kit more records or a "
              "smaller max_records")
    if src.replay != "none":
        cuts = sorted({0, len(first.chunks) // 2, len(first.chunks) - 2})
        for k in cuts:
            position = first.chunks[k][2]
            after = [r for _, recs, _ in first.chunks[k + 1:] for r in recs]
            again = make().open(_context(src))
            try:
                again.restore(position)
                rest = _read(again, limit=len(after) if limit is not None else None, timeout_s=timeout_s,
                             max_records=max_records, secrets=secrets, who=who, snapshots=False).records
                if limit is not None and len(rest) >= len(after):
                    # an unbounded source: nothing more may come than what followed the cut
                    extra = _read(again, limit=None, timeout_s=min(timeout_s, 1.0), max_records=max_records,
                                  secrets=secrets, who=who, snapshots=False).records
                    rest += extra
            finally:
                again.close()
            if _multiset(rest) != _multiset(after):
                _fail(f"{who}: restored from the position after chunk {k}, it read {len(rest)} records where "
                      f"{len(after)} followed that position in the first read (replay must continue exactly there)")
        report.checks.append("replay from every cut")

    if resumes_from_acknowledged is None:
        resumes_from_acknowledged = src.replay == "redelivery"
    if resumes_from_acknowledged:
        _check_acknowledgement(make, src, first, who=who, limit=limit, timeout_s=timeout_s,
                               max_records=max_records, secrets=secrets)
        report.checks.append("acknowledged only when told")

    if make_bad is not None:
        _check_bad_records(make_bad, expected, bad_records, who=who, limit=limit, timeout_s=timeout_s,
                           max_records=max_records, secrets=secrets)
        report.checks.append("bad-record policy")


def _check_acknowledgement(make: Callable[[], Source], src: Source, first: _Read, *, who: str, limit: int | None,
                           timeout_s: float, max_records: int, secrets: Sequence[str]) -> None:
    total = len(first.records)
    # the first read acknowledged nothing: a new reader gets every record again
    reader = make().open(_context(src))
    try:
        again = _read(reader, limit=limit, timeout_s=timeout_s, max_records=max_records, secrets=secrets, who=who)
        if len(again.records) < total:
            _fail(f"{who}: a new reader got {len(again.records)} of {total} records that were never acknowledged: "
                  "the source acknowledged records by itself (auto-ack/auto-commit); acknowledge only in "
                  "acknowledge(position)")
        # acknowledge up to a cut in the middle (twice: it must be idempotent): exactly the rest comes again
        cut = len(again.chunks) // 2 - 1 if len(again.chunks) >= 2 else len(again.chunks) - 1
        rest: list[Any] = []
        if cut >= 0:
            reader.acknowledge(again.chunks[cut][2])
            reader.acknowledge(again.chunks[cut][2])
            rest = [r for _, recs, _ in again.chunks[cut + 1:] for r in recs]
    finally:
        reader.close()
    reader = make().open(_context(src))
    try:
        after = _read(reader, limit=len(rest) if limit is not None else None, timeout_s=min(timeout_s, 1.5),
                      max_records=max_records, secrets=secrets, who=who)
        if _multiset(after.records) != _multiset(rest):
            _fail(f"{who}: acknowledged up to a position in the middle, a new reader got {len(after.records)} "
                  f"records where {len(rest)} followed that position (acknowledge must cover exactly up to it)")
        if after.chunks:
            reader.acknowledge(after.chunks[-1][2])
    finally:
        reader.close()
    reader = make().open(_context(src))
    try:
        last = _read(reader, limit=None, timeout_s=min(timeout_s, 1.5), max_records=max_records, secrets=secrets,
                     who=who, snapshots=False)
    finally:
        reader.close()
    if last.records:
        _fail(f"{who}: {len(last.records)} records came again after everything was acknowledged")


def _check_bad_records(make_bad: Callable[[Any], Source], expected: Sequence[Any] | None, bad: int, *, who: str,
                       limit: int | None, timeout_s: float, max_records: int, secrets: Sequence[str]) -> None:
    src = make_bad("skip")
    ctx = _context(src, "skip")
    reader = src.open(ctx)
    try:
        got = _read(reader, limit=limit, timeout_s=timeout_s, max_records=max_records, secrets=secrets, who=who,
                    snapshots=False).records
    finally:
        reader.close()
    if ctx.skipped != bad:
        _fail(f"{who}: on_error='skip' counted {ctx.skipped} bad records, expected {bad}")
    if expected is not None and _multiset(got) != _multiset(expected):
        _fail(f"{who}: with bad records skipped it read {len(got)} good records, expected {len(expected)}")
    src = make_bad("fail")
    reader = src.open(_context(src, "fail"))
    try:
        _read(reader, limit=limit, timeout_s=timeout_s, max_records=max_records, secrets=secrets, who=who,
              snapshots=False)
    except RecordError as exc:
        if not exc.position:
            _fail(f"{who}: a bad record's error must name its position")
        for s in secrets:
            if s in str(exc):
                _fail(f"{who}: a secret appears in a bad record's error")
    else:
        if bad:
            _fail(f"{who}: on_error='fail' read {bad} bad records without failing")
    finally:
        reader.close()


# -- sinks -------------------------------------------------------------------------------------------


def check_sink(make: Callable[[], Sink], read_back: Callable[[Sink], Sequence[Any]], records: Sequence[Any], *,
               secrets: Sequence[str] = (), key: Callable[[Any], Any] | None = None) -> SinkReport:
    """Check a sink connector against the sink model.

    ``make()`` returns a new :class:`Sink` writing to a fresh, empty target each call;
    ``read_back(sink)`` returns what a downstream reader sees there now (committed output only);
    ``records`` are written in three parts. ``key`` (idempotent sinks): what identifies a record.

    >>> from millstream.testing import TransactionalCollectSink
    >>> check_sink(TransactionalCollectSink, lambda s: s.values, [{"i": i} for i in range(9)]).checks
    ['capabilities', 'write and read back', 'nothing visible before commit', 'commit is idempotent', \
'recover keeps the restored transaction and drops the rest', 'recover after the commit keeps it once', \
'resources released']
    """
    report = SinkReport()
    resources = _Resources()
    sink = make()
    who = f"sink {sink.describe()!r}"
    if sink.delivery not in _DELIVERY:
        _fail(f"{who}: delivery must be one of {_DELIVERY}, not {sink.delivery!r}")
    for s in secrets:
        if s in sink.describe() or s in repr(sink):
            _fail(f"{type(sink).__name__}: a secret appears in describe() or repr()")
    report.checks.append("capabilities")
    records = list(records)
    third = max(1, len(records) // 3)
    a, b, c = records[:third], records[third:2 * third], records[2 * third:]

    # a plain run: begin, write, checkpoint, commit, close
    w = sink.open("conformance")
    w.begin(checkpointed=False)
    w.write(list(records), None)
    w.commit(w.pre_commit(1))
    w.close()
    if _multiset(read_back(sink)) != _multiset(records):
        _fail(f"{who}: wrote {len(records)} records and read back {len(read_back(sink))}")
    report.checks.append("write and read back")

    if sink.delivery == "transactional":
        _check_transactions(make, read_back, a, b, c, who=who, report=report)
    elif sink.delivery == "idempotent":
        sink = make()
        for _ in range(2):  # a replay writes the same records again
            w = sink.open("conformance")
            w.begin(checkpointed=True)
            w.recover([])
            w.write(list(records), None)
            w.commit(w.pre_commit(1))
            w.close()
        got = read_back(sink)
        k = key or _canon
        if Counter(k(r) for r in got) != Counter(k(r) for r in records):
            _fail(f"{who}: an idempotent sink written twice must hold each record once; it holds {len(got)} rows "
                  f"for {len(records)} records")
        report.checks.append("a rewrite replaces")
    resources.check(who)
    report.checks.append("resources released")
    return report


def _check_transactions(make: Callable[[], Sink], read_back: Callable[[Sink], Sequence[Any]], a: list[Any],
                        b: list[Any], c: list[Any], *, who: str, report: SinkReport) -> None:
    sink = make()
    w = sink.open("conformance")
    w.begin(checkpointed=True)
    w.recover([])
    w.write(a, None)
    t1 = w.pre_commit(1)
    if read_back(sink):
        _fail(f"{who}: pre-committed records are visible before commit (a transactional sink shows output "
              "only once its checkpoint is complete)")
    report.checks.append("nothing visible before commit")
    w.commit(t1)
    w.commit(t1)
    if _multiset(read_back(sink)) != _multiset(a):
        _fail(f"{who}: after committing the same transaction twice it shows {len(read_back(sink))} records, "
              f"expected {len(a)} (commit must be idempotent)")
    report.checks.append("commit is idempotent")
    w.write(b, None)
    t2 = w.pre_commit(2)  # the checkpoint is durable, then the job dies before the commit
    w.write(c, None)
    w.pre_commit(3)  # a later checkpoint that never completed
    w.abandon()
    w2 = sink.open("conformance")
    w2.begin(checkpointed=True)
    w2.recover([pickle.loads(pickle.dumps(t2))])  # noqa: S301 - the checkpoint round trip of our own handle
    w2.close()
    if _multiset(read_back(sink)) != _multiset(a + b):
        _fail(f"{who}: recovering checkpoint 2 must show the records of checkpoints 1 and 2 once and drop the "
              f"rest; it shows {len(read_back(sink))} records, expected {len(a) + len(b)}")
    report.checks.append("recover keeps the restored transaction and drops the rest")
    # the job dies after the commit and before anything else: recovery gets the committed transaction again
    sink = make()
    w = sink.open("conformance")
    w.begin(checkpointed=True)
    w.recover([])
    w.write(a, None)
    t1 = w.pre_commit(1)
    w.commit(t1)
    w.abandon()
    w2 = sink.open("conformance")
    w2.begin(checkpointed=True)
    w2.recover([pickle.loads(pickle.dumps(t1))])  # noqa: S301 - the checkpoint round trip of our own handle
    w2.close()
    if _multiset(read_back(sink)) != _multiset(a):
        _fail(f"{who}: recovering a checkpoint whose transaction was already committed must leave its records "
              f"once; it shows {len(read_back(sink))} records, expected {len(a)}")
    report.checks.append("recover after the commit keeps it once")
