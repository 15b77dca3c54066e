"""The conformance kit (millstream.testing.check_source / check_sink) on the built-in connectors,
and on broken connectors it must catch (a kit that cannot fail proves nothing)."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

import millstream as ms
from millstream.connectors import files, generator, memory
from millstream.connectors._base import SinkWriter, Source, SourceContext, SourceReader
from millstream.testing import (
    ConformanceError,
    PartitionedTestSource,
    TestSource,
    TransactionalCollectSink,
    check_sink,
    check_source,
)

ROWS = [{"i": i, "k": f"k{i % 7}", "v": i * 1.5} for i in range(500)]


def _jsonl(path: Path, rows: list[Any], bad_every: int = 0) -> int:
    bad = 0
    with open(path, "wb") as f:
        for n, r in enumerate(rows):
            if bad_every and n % bad_every == 0:
                f.write(b'{"broken": \n')
                bad += 1
            f.write(orjson.dumps(r) + b"\n")
    return bad


def test_memory_source_conforms() -> None:
    report = check_source(lambda: memory.read(ROWS), expected=ROWS)
    assert "replay from every cut" in report.checks and report.chunks > 2


def test_memory_frame_source_conforms() -> None:
    check_source(lambda: memory.read(pl.DataFrame(ROWS)), expected=ROWS)


def test_test_sources_conform() -> None:
    check_source(lambda: TestSource(ROWS, chunk=33), expected=ROWS)
    parts = {f"p{i}": ROWS[i::3] for i in range(3)}
    report = check_source(lambda: PartitionedTestSource(parts, chunk=17), expected=ROWS)
    assert report.splits == {"p0", "p1", "p2"}


def test_generator_source_conforms() -> None:
    check_source(lambda: generator.read(lambda i: {"i": i}, count=300), expected=[{"i": i} for i in range(300)])


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_file_sources_conform_with_bad_records(tmp_path: Path, fmt: str) -> None:
    good = tmp_path / f"good.{fmt}"
    bad = tmp_path / f"bad.{fmt}"
    if fmt == "jsonl":
        _jsonl(good, ROWS)
        n_bad = _jsonl(bad, ROWS, bad_every=50)
        expected: list[Any] = ROWS
    else:
        lines = ["i,k"] + [f"{r['i']},{r['k']}" for r in ROWS]
        good.write_text("\n".join(lines) + "\n")
        with_bad = [lines[0]] + [x for n, line in enumerate(lines[1:]) for x in ((line, "1,2,3") if n % 50 == 0
                                                                                else (line,))]
        bad.write_text("\n".join(with_bad) + "\n")
        n_bad = 10
        expected = [{"i": str(r["i"]), "k": r["k"]} for r in ROWS]
    check_source(lambda: files.read(good), expected=expected,
                 make_bad=lambda policy: files.read(bad, on_error=policy), bad_records=n_bad)


def test_transactional_collect_sink_conforms() -> None:
    report = check_sink(TransactionalCollectSink, lambda s: s.values, ROWS)  # type: ignore[attr-defined]
    assert "recover keeps the restored transaction and drops the rest" in report.checks


def test_transactional_file_sink_conforms(tmp_path: Path) -> None:
    dirs = (tmp_path / f"out{i}" for i in itertools.count())
    check_sink(lambda: files.write(next(dirs), transactional=True),
               lambda s: files.read_committed(s.target()) if Path(s.target()).exists() else [],  # type: ignore[attr-defined]
               ROWS)


def test_upsert_sink_conforms() -> None:
    report = check_sink(lambda: memory.upsert("i"), lambda s: list(s.table.values()), ROWS,  # type: ignore[attr-defined]
                        key=lambda r: r["i"])
    assert "a rewrite replaces" in report.checks


# -- broken connectors the kit must catch --------------------------------------------------------


class _Broken(Source):
    """A redelivery source over a shared queue, broken in one of several ways."""

    replay = "redelivery"

    def __init__(self, queue: list[Any], acked: list[int], how: str, secret: str = "") -> None:
        self.queue, self.acked, self.how, self.secret = queue, acked, how, secret

    def open(self, ctx: SourceContext) -> SourceReader:
        return _BrokenReader(self, ctx)

    def describe(self) -> str:
        return f"broken ({self.how}{' ' + self.secret if self.how == 'leaky-describe' else ''})"


class _BrokenReader(SourceReader):
    def __init__(self, src: _Broken, ctx: SourceContext) -> None:
        self.src, self.ctx = src, ctx
        self.pos = self.src.acked[0]
        self.floor = -1
        self.thread: threading.Thread | None = None
        if src.how == "leaks-thread":
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self.stop.wait, daemon=True)
            self.thread.start()

    def poll(self, max_records: int) -> list[Any] | None:
        if self.pos >= len(self.src.queue):
            return None
        out = []
        while self.pos < len(self.src.queue) and len(out) < max_records:
            if self.pos > self.floor or self.src.how == "no-dedupe":
                out.append(self.src.queue[self.pos])
            self.pos += 1
        if self.src.how == "auto-ack":
            self.src.acked[0] = self.pos
        return out

    def snapshot(self) -> Any:
        return {"pos": self.pos, "token": self.src.secret if self.src.how == "leaky-snapshot" else None}

    def restore(self, position: Any) -> None:
        self.floor = position["pos"] - 1  # redelivered records up to here are dropped

    def acknowledge(self, position: Any) -> None:
        self.src.acked[0] = max(self.src.acked[0], position["pos"])


@pytest.mark.parametrize(("how", "complaint"), [
    ("auto-ack", "acknowledged records by itself|replay must continue exactly there"),
    ("no-dedupe", "replay must continue exactly there"),
    ("leaky-describe", "secret appears in describe"),
    ("leaky-snapshot", "secret appears in the position"),
    ("leaks-thread", "threads still running after close"),
])
def test_the_kit_catches_broken_sources(how: str, complaint: str) -> None:
    queue = [{"i": i} for i in range(200)]
    acked = [0]
    with pytest.raises(ConformanceError, match=complaint):
        check_source(lambda: _Broken(queue, acked, how, secret="hunter2"), expected=queue, secrets=["hunter2"],
                     max_records=20, timeout_s=0.2)


def test_a_correct_redelivery_source_passes() -> None:
    queue = [{"i": i} for i in range(200)]
    acked = [0]
    report = check_source(lambda: _Broken(queue, acked, "fine"), expected=queue, max_records=20, timeout_s=0.2)
    assert "acknowledged only when told" in report.checks
    assert acked == [200]


class _ShowsEarly(TransactionalCollectSink):
    """A 'transactional' sink that makes records visible as they are written."""

    def open(self, step: str) -> SinkWriter:
        inner = super().open(step)
        sink = self

        class W(SinkWriter):
            def write(self, records: list[Any], times: list[int] | None) -> None:
                sink.values.extend(records)

            def pre_commit(self, checkpoint_id: int) -> Any:
                return inner.pre_commit(checkpoint_id)

        return W()


def test_the_kit_catches_a_sink_that_shows_uncommitted_output() -> None:
    with pytest.raises(ConformanceError, match="visible before commit"):
        check_sink(_ShowsEarly, lambda s: s.values, ROWS)  # type: ignore[attr-defined]


def test_the_kit_catches_an_idempotent_sink_that_duplicates() -> None:
    with pytest.raises(ConformanceError, match="hold each record once"):
        check_sink(lambda: _AppendCalledIdempotent(), lambda s: s.values, ROWS)  # type: ignore[attr-defined]


class _AppendCalledIdempotent(ms.testing.CollectSink):
    delivery = "idempotent"
