"""Sinks under checkpoints: the transactional file sink (two-phase commit of part files),
the plain file sink across restarts (at-least-once), the idempotent upsert sink and
the transactional collecting sink. The checkpoint coordinator is played by hand here:
``pre_commit`` at a checkpoint, ``commit`` once it is complete, ``recover`` on a restart,
and a "crash" is a writer dropped without ``close``."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import millstream as ms
from millstream.connectors import files, memory
from millstream.connectors._base import SinkWriter
from millstream.connectors._files_write import _CsvEncoder
from millstream.errors import ConfigError, JobError, StepError
from millstream.testing import CollectSink, TransactionalCollectSink

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

HAS_PYARROW = __import__("importlib").util.find_spec("pyarrow") is not None


def recs(*ns: int) -> list[dict[str, Any]]:
    return [{"n": n, "text": f"row {n}"} for n in ns]


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def visible(d: Path) -> list[str]:
    return [n for n in listing(d) if not n.startswith((".", "_"))]


def run_flow(records: list[Any], sink: ms.connectors.Sink) -> None:
    flow = ms.Flow("t")
    flow.source(memory.read(records)).sink(sink)
    flow.run()


def opened(sink: ms.connectors.Sink, restored: Sequence[Any] = ()) -> SinkWriter:
    """A writer of ``sink`` recovered from the transactions of ``restored`` (none: a fresh start)."""
    w = sink.open("sink")
    w.recover(list(restored))
    return w


def crash_after_checkpoint_1(sink: ms.connectors.Sink, first: list[Any], then: list[Any]) -> Any:
    """A writer of ``sink`` writes ``first``, seals checkpoint 1, writes ``then`` and flushes it, and the
    process dies (the writer is dropped without ``close``); checkpoint 1's transaction."""
    a = opened(sink)
    a.write(first, None)
    t1 = a.pre_commit(1)
    a.write(then, None)
    a.flush()
    del a
    return t1


# -- the transactional file sink -----------------------------------------------------------


def test_delivery_is_declared(tmp_path: Path) -> None:
    assert files.write(tmp_path / "out", transactional=True).delivery == "transactional"
    assert files.write(tmp_path / "out.jsonl").delivery == "none"
    assert memory.upsert("k").delivery == "idempotent"
    assert TransactionalCollectSink().delivery == "transactional"
    assert CollectSink().delivery == "none"


def test_output_appears_only_when_its_checkpoint_commits(tmp_path: Path) -> None:
    d = tmp_path / "out"
    w = opened(files.write(d, transactional=True))
    w.write(recs(1, 2), None)
    assert visible(d) == []
    assert len([n for n in listing(d) if n.endswith(".pending")]) == 1
    txn = w.pre_commit(1)
    assert txn["final"] == "part-00000001-0.jsonl" and txn["staged"].startswith(".")
    assert visible(d) == [] and files.read_committed(d) == []
    w.commit(txn)
    assert listing(d) == ["part-00000001-0.jsonl"]
    assert files.read_committed(d) == recs(1, 2)
    w.commit(txn)  # again, as after a crash between commit and its acknowledgement
    assert listing(d) == ["part-00000001-0.jsonl"]
    w.write(recs(3), None)
    t2 = w.pre_commit(2)
    w.commit(t2)
    w.close()
    assert listing(d) == ["part-00000001-0.jsonl", "part-00000002-0.jsonl"]
    assert files.read_committed(d) == recs(1, 2, 3)


def test_an_empty_checkpoint_makes_no_file_and_its_transaction_is_harmless(tmp_path: Path) -> None:
    d = tmp_path / "out"
    w = opened(files.write(d, transactional=True))
    w.write([], None)
    txn = w.pre_commit(1)
    assert txn == {"checkpoint": 1, "staged": None, "final": None}
    w.commit(txn)
    w.commit(None)
    w.close()
    assert listing(d) == []


def test_transactions_pickle_and_are_json(tmp_path: Path) -> None:
    w = opened(files.write(tmp_path / "out", transactional=True))
    w.write(recs(1), None)
    txn = w.pre_commit(7)
    assert pickle.loads(pickle.dumps(txn)) == txn
    assert json.loads(json.dumps(txn)) == txn
    w.close()


def crash_after_sealing_checkpoint_2(sink: ms.connectors.Sink) -> tuple[Any, Any]:
    """A writer of ``sink`` commits checkpoint 1 (record 1), seals checkpoint 2 (record 2), writes record 3,
    and the process dies before checkpoint 2 commits (no ``close``); the transactions of 1 and 2."""
    a = opened(sink)
    a.write(recs(1), None)
    t1 = a.pre_commit(1)
    a.commit(t1)
    a.write(recs(2), None)
    t2 = a.pre_commit(2)
    a.write(recs(3), None)  # written after checkpoint 2: must never become visible
    assert files.read_committed(sink.target()) == recs(1)
    del a
    return t1, t2


def test_crash_after_pre_commit_then_recover_with_that_transaction_commits_it(tmp_path: Path) -> None:
    d = tmp_path / "out"
    sink = files.write(d, transactional=True)
    _, t2 = crash_after_sealing_checkpoint_2(sink)  # checkpoint 2 was stored: the job resumes from it
    b = opened(sink, [t2])
    assert listing(d) == ["part-00000001-0.jsonl", "part-00000002-0.jsonl"]  # no .pending left
    assert files.read_committed(d) == recs(1, 2)
    b.write(recs(3), None)  # the replay
    b.commit(b.pre_commit(3))
    b.close()
    assert files.read_committed(d) == recs(1, 2, 3)


def test_crash_before_the_checkpoint_was_stored_drops_its_staged_output(tmp_path: Path) -> None:
    d = tmp_path / "out"
    sink = files.write(d, transactional=True)
    t1, _ = crash_after_sealing_checkpoint_2(sink)  # checkpoint 2 never completed: the job resumes from 1
    b = opened(sink, [t1])  # already committed: a no-op for it, and both staged files go
    assert listing(d) == ["part-00000001-0.jsonl"]
    b.recover([t1])  # a second failure during recovery, then recovery again
    assert listing(d) == ["part-00000001-0.jsonl"]
    b.write(recs(2, 3), None)
    b.commit(b.pre_commit(2))
    b.close()
    assert files.read_committed(d) == recs(1, 2, 3)


def test_crash_before_the_first_checkpoint_leaves_nothing(tmp_path: Path) -> None:
    d = tmp_path / "out"
    sink = files.write(d, transactional=True)
    a = opened(sink)
    a.write(recs(1, 2), None)
    del a
    opened(sink)
    assert listing(d) == []


def test_commit_of_a_lost_transaction_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "out"
    w = opened(files.write(d, transactional=True))
    w.write(recs(1), None)
    txn = w.pre_commit(1)
    os.unlink(d / txn["staged"])
    with pytest.raises(JobError, match="cannot commit checkpoint 1"):
        w.commit(txn)


def test_a_fresh_start_replaces_this_writers_output_and_nothing_else(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    keep = ["_SUCCESS", "notes.txt", "part-00000001-1.jsonl", "part-00000001-0.csv", ".part-1.abc.jsonl.pending"]
    for name in keep:
        (d / name).write_text("{}\n")
    (d / "part-00000003-0.jsonl").write_text('{"old": 1}\n')
    (d / ".part-0.abc.jsonl.pending").write_text('{"old": 2}\n')
    opened(files.write(d, transactional=True))
    assert listing(d) == sorted(keep)


def test_without_checkpoints_everything_is_committed_when_the_job_ends(tmp_path: Path) -> None:
    d = tmp_path / "out"
    run_flow(recs(1, 2, 3), files.write(d, transactional=True))
    assert listing(d) == ["part-00000000-0.jsonl"]
    assert files.read_committed(d) == recs(1, 2, 3)
    run_flow(recs(4), files.write(d, transactional=True))  # a second run replaces the output
    assert files.read_committed(d) == recs(4)
    run_flow([], files.write(d, transactional=True))
    assert listing(d) == []


def test_close_after_checkpoints_discards_what_no_checkpoint_covers(tmp_path: Path) -> None:
    d = tmp_path / "out"
    w = opened(files.write(d, transactional=True))
    w.write(recs(1), None)
    w.commit(w.pre_commit(1))
    w.write(recs(2), None)
    w.close()
    assert listing(d) == ["part-00000001-0.jsonl"]


def test_pending_files_are_never_read_as_output(tmp_path: Path) -> None:
    d = tmp_path / "out"
    w = opened(files.write(d, transactional=True))
    w.write(recs(1), None)
    w.commit(w.pre_commit(1))
    w.write(recs(2), None)
    w.pre_commit(2)
    w.write(recs(3), None)
    (d / "_SUCCESS").write_text("")
    assert files.read_committed(d) == recs(1)
    out = CollectSink()
    flow = ms.Flow("downstream")
    flow.source(files.read(d)).sink(out)
    flow.run()
    assert out.values == recs(1)
    w.close()


def test_a_failed_seal_stops_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = opened(files.write(tmp_path / "out", transactional=True))
    w.write(recs(1), None)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        w.pre_commit(1)
    monkeypatch.undo()
    with pytest.raises(JobError, match="must restart from its last checkpoint"):
        w.write(recs(2), None)
    with pytest.raises(JobError, match="must restart"):
        w.pre_commit(2)
    w.close()


@pytest.mark.parametrize("name,fmt", [("out", "jsonl"), ("out.csv", "csv"), ("out.txt", "lines"),
                                      ("out.jsonl.gz", "jsonl"), ("out.csv.gz", "csv"), ("out.parquet", "parquet")])
def test_every_format_commits_one_readable_file_per_checkpoint(tmp_path: Path, name: str, fmt: str) -> None:
    if fmt == "parquet" and not HAS_PYARROW:
        pytest.skip("needs pyarrow")
    d = tmp_path / name
    rows: list[Any] = ([f"line {i}" for i in range(6)] if fmt == "lines"
                       else [{"id": i, "text": f'a, "b"\nc{i}'} for i in range(6)])
    sink = files.write(d, transactional=True)
    ext = sink.options.extension
    w = opened(sink)
    for ck, chunk in enumerate([rows[:2], rows[2:5], [], rows[5:]], start=1):
        w.write(chunk, None)
        w.commit(w.pre_commit(ck))
    w.close()
    assert listing(d) == [f"part-0000000{ck}-0.{ext}" for ck in (1, 2, 4)]
    back = files.read_committed(d)
    if fmt == "csv":
        back = [{"id": int(r["id"]), "text": r["text"]} for r in back]
        opener: Any = gzip.open if name.endswith(".gz") else open
        with opener(d / f"part-00000002-0.{ext}", "rt", newline="") as fh:
            assert next(csv.reader(fh)) == ["id", "text"]  # every part has its header
    assert back == rows


def test_the_transactional_path_is_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        files.write(f, transactional=True)
    with pytest.raises(ConfigError, match="True or False"):
        files.write(tmp_path / "x", transactional="yes")  # type: ignore[arg-type]
    sink = files.write(tmp_path / "plain-name", transactional=True)
    assert sink.options.format == "jsonl" and sink.target() == str(tmp_path / "plain-name")
    assert "transactional" in sink.describe()
    # without transactional=True, a path without extension is still an error, and "dir/" gets part-0
    with pytest.raises(ConfigError, match="cannot tell the format"):
        files.write(tmp_path / "plain-name")


def test_read_committed_needs_a_directory_and_a_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not one"):
        files.read_committed(tmp_path / "missing")
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "a.jsonl").write_text('{"a": 1}\n')
    (d / "b.csv").write_text("b\n2\n")
    with pytest.raises(ConfigError, match="pass format="):
        files.read_committed(d)
    assert files.read_committed(d, format="csv") == [{"b": "2"}]


# -- the plain file sink across restarts (at-least-once) ------------------------------------


def test_plain_sink_pre_commit_makes_the_file_durable_and_reports_its_size(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    w = opened(files.write(p))
    w.write(recs(1), None)
    txn = w.pre_commit(1)
    assert txn == {"checkpoint": 1, "file": "out.jsonl", "bytes": p.stat().st_size}
    assert p.stat().st_size > 0
    w.close()


def test_plain_sink_restart_appends_after_cutting_a_torn_record(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    t1 = crash_after_checkpoint_1(files.write(p), recs(1), recs(2))
    with open(p, "ab") as fh:
        fh.write(b'{"n": 3, "te')  # the crash tore the last record
    b = opened(files.write(p), [t1])
    b.write(recs(2, 3), None)  # the replay since checkpoint 1
    b.close()
    assert files.read_committed(tmp_path, format="jsonl") == recs(1, 2, 2, 3)  # duplicates, never corruption


def test_plain_sink_fresh_start_replaces_the_file(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    p.write_text('{"old": 1}\n')
    w = opened(files.write(p))
    w.write(recs(1), None)
    w.close()
    assert p.read_text() == '{"n":1,"text":"row 1"}\n'


def test_plain_gzip_sink_restart_drops_the_unfinished_member(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl.gz"
    # record 2 is on disk, but its gzip member is not finished: unreadable after the crash
    t1 = crash_after_checkpoint_1(files.write(p), recs(1), recs(2))
    b = opened(files.write(p), [t1])
    b.write(recs(2), None)
    t2 = b.pre_commit(2)
    b.write(recs(3), None)
    b.close()
    assert t2["bytes"] < p.stat().st_size
    with gzip.open(p, "rt") as fh:
        assert [json.loads(line) for line in fh] == recs(1, 2, 3)


def test_plain_csv_sink_restart_keeps_one_header_and_cuts_a_torn_quoted_row(tmp_path: Path) -> None:
    p = tmp_path / "out.csv"
    rows = [{"id": i, "text": f'x "{i}"\ny'} for i in range(4)]
    t1 = crash_after_checkpoint_1(files.write(p), rows[:2], rows[2:3])
    with open(p, "ab") as fh:
        fh.write(b'3,"x ""3""\n')  # torn inside a quoted field, right after its newline
    b = opened(files.write(p), [t1])
    b.write(rows[2:], None)
    b.close()
    back = [{"id": int(r["id"]), "text": r["text"]} for r in files.read_committed(tmp_path, format="csv")]
    assert back == [*rows[:3], *rows[2:]]
    c = opened(files.write(p), [t1])
    with pytest.raises(ValueError, match="header .* is id, text"):
        c.write([{"other": 1}], None)
    c.close()


@pytest.mark.skipif(not HAS_PYARROW, reason="needs pyarrow")
def test_a_plain_parquet_file_cannot_be_continued(tmp_path: Path) -> None:
    sink = files.write(tmp_path / "out.parquet")
    assert not sink.resumable
    assert files.write(tmp_path / "dir.parquet", transactional=True).resumable
    a = opened(sink)
    a.write(recs(1), None)
    t1 = a.pre_commit(1)
    del a
    b = sink.open("sink")
    with pytest.raises(JobError, match="transactional=True"):
        b.recover([t1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet='ab,"\n ', max_size=8), min_size=1, max_size=6))
def test_csv_cut_point_is_always_a_row_boundary(texts: list[str]) -> None:
    enc = _CsvEncoder()
    rows = [{"t": t, "u": i} for i, t in enumerate(texts)]
    data = enc.encode(rows, at_start=False)
    ends = {0}
    for i in range(1, len(rows) + 1):
        ends.add(len(enc.encode(rows[:i], at_start=False)))
    for cut in range(len(data) + 1):
        end = enc.complete(data[:cut])
        assert end in ends and end <= cut
        assert end == max(e for e in ends if e <= cut)
        parsed = list(csv.DictReader(io.StringIO(data[:end].decode()), fieldnames=["t", "u"]))
        assert [r["t"] for r in parsed] == texts[:len(parsed)]


# -- the idempotent upsert sink ---------------------------------------------------------


def test_upsert_keeps_the_last_record_per_key_and_a_replay_changes_nothing() -> None:
    rows = [{"k": "a", "n": 1}, {"k": "b", "n": 2}, {"k": "a", "n": 3}]
    sink = memory.upsert("k")
    run_flow(rows, sink)
    expected = {"a": {"k": "a", "n": 3}, "b": {"k": "b", "n": 2}}
    assert sink.table == expected
    w = sink.open("upsert")
    w.write(rows[1:], None)  # a replay after a restart
    assert sink.table == expected
    assert sink.writes == 5


def test_upsert_by_fields_or_function() -> None:
    rows = [{"a": 1, "b": 2, "n": 1}, {"a": 1, "b": 3, "n": 2}, {"a": 1, "b": 2, "n": 3}]
    by_fields = memory.upsert(("a", "b"))
    run_flow(rows, by_fields)
    assert by_fields.table == {(1, 2): rows[2], (1, 3): rows[1]}
    by_fn = memory.upsert(lambda r: r["a"])
    run_flow(rows, by_fn)
    assert by_fn.table == {1: rows[2]}
    assert "a, b" in by_fields.describe() and "lambda" in by_fn.describe()


def test_upsert_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="upsert key"):
        memory.upsert(3)  # type: ignore[arg-type]
    with pytest.raises(StepError, match="no field 'k'"):
        run_flow([{"x": 1}], memory.upsert("k"))
    with pytest.raises(StepError, match="needs dict records"):
        run_flow([1], memory.upsert("k"))


# -- the transactional collecting sink ------------------------------------------------------


def test_transactional_collect_sink_two_phase_commit() -> None:
    sink = TransactionalCollectSink()
    a = sink.open("out")
    a.recover([])
    a.write([1, 2], [10, 20])
    t1 = a.pre_commit(1)
    assert sink.values == [] and sink.pending == [1, 2]
    a.commit(t1)
    a.commit(t1)
    assert sink.items == [(1, 10), (2, 20)] and sink.pending == []
    a.write([3], None)
    t2 = a.pre_commit(2)
    a.write([4], None)
    del a  # crash before commit of checkpoint 2
    b = sink.open("out")
    b.recover([t2])
    assert sink.values == [1, 2, 3] and sink.pending == []
    b.write([4], None)
    b.close()  # after checkpoints: not covered by one, so dropped
    assert sink.values == [1, 2, 3]
    c = sink.open("out")
    c.recover([])  # a fresh start
    assert sink.values == []
    with pytest.raises(JobError, match="no pending transaction"):
        c.commit({"checkpoint": 9, "txn": "nope"})


def test_transactional_collect_sink_without_checkpoints_shows_all_at_the_end() -> None:
    sink = TransactionalCollectSink()
    run_flow([1, 2, 3], sink)
    assert sink.values == [1, 2, 3]
