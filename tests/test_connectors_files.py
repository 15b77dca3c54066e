"""The files connector: formats, bad records, event time, following, snapshot/restore, sinks."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millstream as ms
from millstream.connectors import SourceContext, files
from millstream.errors import ConfigError, MissingDependencyError, RecordError
from millstream.testing import CollectSink, ManualClock

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

# -- helpers -------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[Any], *, end: str = "\n") -> None:
    path.write_text("\n".join(json.dumps(r) for r in records) + end)


def run_source(src: ms.connectors.Source, **run: Any) -> tuple[list[Any], ms.RunResult]:
    flow = ms.Flow("read")
    out = CollectSink()
    flow.source(src).sink(out)
    result = flow.run(**run)
    return out.values, result


def open_reader(src: files.FileSource, clock: Any = None, dead: list[Any] | None = None
                ) -> tuple[ms.connectors.SourceReader, SourceContext]:
    ctx = SourceContext(step="src", clock=clock or ManualClock(), policy=src.on_error,
                        dead_letter_write=dead.append if dead is not None else None)
    return src.open(ctx), ctx


def drain(reader: ms.connectors.SourceReader, max_records: int = 1000, *, polls: int | None = None) -> list[Any]:
    """Poll until the reader ends (or returns [] / ``polls`` chunks were taken)."""
    out: list[Any] = []
    n = 0
    while polls is None or n < polls:
        chunk = reader.poll(max_records)
        if not chunk:
            break
        out.extend(chunk)
        n += 1
    return out


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


RECORDS = [{"id": i, "k": f"k{i % 3}", "v": i * 1.5} for i in range(50)]


# -- formats, bounded ---------------------------------------------------------------------------


def test_jsonl_bounded_through_a_flow(tmp_path: Path) -> None:
    p = tmp_path / "events.jsonl"
    write_jsonl(p, RECORDS)
    src = files.read(p)
    assert src.bounded and src.replayable
    values, result = run_source(src)
    assert values == RECORDS
    assert result.records_read == len(RECORDS)


@pytest.mark.parametrize("suffix", [".ndjson", ".json", ".jsonl.gz"])
def test_other_json_names_and_gzip(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"events{suffix}"
    text = "".join(json.dumps(r) + "\n" for r in RECORDS)
    if suffix.endswith(".gz"):
        with gzip.open(p, "wt") as f:
            f.write(text)
    else:
        p.write_text(text)
    assert run_source(files.read(p))[0] == RECORDS


def test_last_line_without_newline_is_read_when_bounded(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    write_jsonl(p, RECORDS[:3], end="")
    assert run_source(files.read(p))[0] == RECORDS[:3]


def test_blank_lines_crlf_and_a_byte_order_mark_are_fine(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n   \n{"a": 2}\n\n')
    values, result = run_source(files.read(p, on_error="skip"))
    assert values == [{"a": 1}, {"a": 2}]
    assert result.total("skipped") == 0
    reader, _ = open_reader(files.read(p))
    assert reader.poll(1) == [{"a": 1}]
    fresh, _ = open_reader(files.read(p))
    fresh.restore(reader.snapshot())
    assert drain(fresh) == [{"a": 2}]


def test_csv_values_are_strings_unless_typed(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("id,name,amount,ok\n1,ann,2.5,true\n2,\"bob, jr\",,no\n")
    assert run_source(files.read(p))[0] == [
        {"id": "1", "name": "ann", "amount": "2.5", "ok": "true"},
        {"id": "2", "name": "bob, jr", "amount": "", "ok": "no"},
    ]
    typed = files.read(p, csv_types={"id": int, "amount": float, "ok": bool})
    assert run_source(typed)[0] == [
        {"id": 1, "name": "ann", "amount": 2.5, "ok": True},
        {"id": 2, "name": "bob, jr", "amount": None, "ok": False},
    ]


def test_csv_quoted_newlines_bom_crlf_and_gzip(tmp_path: Path) -> None:
    rows = [{"id": str(i), "text": f"line one {i}\nline two, \"quoted\""} for i in range(300)]
    p = tmp_path / "t.csv.gz"
    with gzip.open(p, "wt", newline="", encoding="utf-8-sig") as f:
        w = csv.DictWriter(f, ["id", "text"], lineterminator="\r\n")
        w.writeheader()
        w.writerows(rows)
    # small blocks: records straddle block boundaries
    src = files.read(p, block_size=1024)
    values = run_source(src)[0]
    assert values == rows
    reader, _ = open_reader(files.read(p, block_size=1024))
    first = reader.poll(2)
    assert first == rows[:2]
    # each record spans two physical lines; the header is line 1
    assert [reader.position_of(0), reader.position_of(1)] == [f"{p}:2", f"{p}:4"]


def test_lines_format(tmp_path: Path) -> None:
    p = tmp_path / "app.log"
    p.write_bytes(b"first\r\n\nthird \xc3\xa9\nlast")
    assert run_source(files.read(p))[0] == ["first", "", "third \u00e9", "last"]


def test_parquet_rows_as_dicts_and_positions(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": i, "name": f"n{i}", "ts": datetime(2026, 1, 1, 0, 0, i % 60, tzinfo=UTC)} for i in range(1000)]
    p = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p, row_group_size=300)
    assert run_source(files.read(p))[0] == rows
    reader, _ = open_reader(files.read(p))
    chunk = reader.poll(10)
    assert chunk == rows[:10]
    assert reader.position_of(3) == f"{p}#row 3"


def test_directory_reads_matching_files_in_name_order(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    write_jsonl(d / "b.jsonl", [{"f": "b"}])
    write_jsonl(d / "a.jsonl", [{"f": "a"}, {"f": "a2"}])
    with gzip.open(d / "c.jsonl.gz", "wt") as f:
        f.write('{"f": "c"}\n')
    write_jsonl(d / ".hidden.jsonl", [{"f": "hidden"}])
    (d / "notes.txt").write_text("not json\n")
    assert [r["f"] for r in run_source(files.read(d, format="jsonl"))[0]] == ["a", "a2", "b", "c"]
    assert [r["f"] for r in run_source(files.read(d, format="jsonl", pattern="b*"))[0]] == ["b"]


def test_format_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot tell the format"):
        files.read(tmp_path / "data.bin")
    with pytest.raises(ConfigError, match="format must be one of"):
        files.read(tmp_path / "x.jsonl", format="xml")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_text("{}\n")
    (mixed / "b.csv").write_text("a\n1\n")
    with pytest.raises(ConfigError, match="pass format="):
        files.read(mixed)
    assert run_source(files.read(mixed, format="csv"))[0] == [{"a": "1"}]
    with pytest.raises(ConfigError, match="csv_types only applies"):
        files.read(tmp_path / "x.jsonl", csv_types={"a": int})
    with pytest.raises(ConfigError, match="max_idle only applies"):
        files.read(tmp_path / "x.jsonl", max_idle=10)


def test_missing_file_fails_when_the_flow_runs(tmp_path: Path) -> None:
    src = files.read(tmp_path / "nope.jsonl")  # building touches nothing
    with pytest.raises(ConfigError, match="no such file"):
        run_source(src)


def test_missing_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"millstream\[parquet\]") as err:
        files.read(tmp_path / "t.parquet")
    assert "Reading Parquet" in str(err.value)
    with pytest.raises(MissingDependencyError, match="Writing Parquet"):
        files.write(tmp_path / "t.parquet")


def test_describe_and_default_name(tmp_path: Path) -> None:
    src = files.read(tmp_path / "events.jsonl", follow=True)
    assert src.describe() == f"jsonl {tmp_path / 'events.jsonl'}, following"
    assert src.default_name() == "events.jsonl"
    assert not src.bounded
    assert files.read(tmp_path / "e.jsonl", name="clicks").default_name() == "clicks"


# -- event time ------------------------------------------------------------------------------


def _events(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    base = 1_767_225_600_000
    return [{"k": f"k{rnd.randrange(5)}", "ts": base + i * 37 + rnd.randrange(-400, 400), "v": rnd.randrange(100)}
            for i in range(n)]


def _expected_windows(events: list[dict[str, Any]], size: int) -> list[tuple[str, int, int, int]]:
    n: Counter[tuple[str, int]] = Counter()
    total: defaultdict[tuple[str, int], int] = defaultdict(int)
    for e in events:
        start = e["ts"] - e["ts"] % size
        n[(e["k"], start)] += 1
        total[(e["k"], start)] += e["v"]
    return sorted((k, s, n[(k, s)], total[(k, s)]) for (k, s) in n)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_event_time_tumbling_window_matches_plain_python(tmp_path: Path, fmt: str) -> None:
    events = _events(3000)
    if fmt == "jsonl":
        p = tmp_path / "ev.jsonl"
        write_jsonl(p, events)
        src = files.read(p)
    else:
        p = tmp_path / "ev.csv"
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, ["k", "ts", "v"])
            w.writeheader()
            w.writerows(events)
        src = files.read(p, csv_types={"ts": int, "v": int})
    flow = ms.Flow("windows")
    out = CollectSink()
    (flow.source(src, watermark=ms.WatermarkStrategy.bounded(1_000, timestamp="ts"))
         .key_by("k").window(ms.windows.tumbling(5_000))
         .aggregate(n=ms.agg.count(), total=ms.agg.sum("v")).sink(out))
    result = flow.run()
    got = sorted((w["k"], w["window_start"], w["n"], w["total"]) for w in out.values)
    assert got == _expected_windows(events, 5_000)
    assert result.total("late") == 0


# -- bad records ---------------------------------------------------------------------------------

BAD_JSONL = b"\n".join([
    b'{"id": 1}',
    b'{"id": 2',           # line 2: not JSON
    b'',                   # blank: ignored
    b'[1, 2]',             # line 4: not an object
    b'{"id": 3}',
    b'"text"',             # line 6: not an object
    b'{"id": 4}',
]) + b"\n"


def test_bad_json_fails_naming_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(BAD_JSONL)
    with pytest.raises(RecordError) as err:
        run_source(files.read(p))
    assert f"{p}:2" in str(err.value)
    assert err.value.position == f"{p}:2"
    assert err.value.raw == b'{"id": 2'
    p.write_bytes(b'{"id": 1}\n[1, 2]\n')
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: expected a JSON object, got an array"):
        run_source(files.read(p))


def test_bad_records_skipped_are_counted_and_nothing_is_lost(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(BAD_JSONL)
    values, result = run_source(files.read(p, on_error="skip"))
    assert [r["id"] for r in values] == [1, 3, 4]
    assert result.total("skipped") == 3
    non_blank = [line for line in BAD_JSONL.split(b"\n") if line.strip()]
    assert len(values) + result.total("skipped") == len(non_blank)


def test_positions_skip_the_bad_lines(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(BAD_JSONL)
    reader, ctx = open_reader(files.read(p, on_error="skip"))
    assert reader.poll(100) == [{"id": 1}, {"id": 3}, {"id": 4}]
    assert [reader.position_of(i) for i in range(3)] == [f"{p}:1", f"{p}:5", f"{p}:7"]
    assert ctx.skipped == 3
    assert reader.poll(100) is None


def test_bad_records_go_to_a_dead_letter_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(BAD_JSONL)
    dlq = tmp_path / "dlq" / "bad.jsonl"
    values, result = run_source(files.read(p, on_error=ms.connectors.dead_letter(files.write(dlq)), name="in"))
    dead = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert [d["position"] for d in dead] == [f"{p}:2", f"{p}:4", f"{p}:6"]
    assert dead[0]["raw"] == '{"id": 2' and dead[0]["source"] == "in" and "not valid JSON" in dead[0]["error"]
    assert result.total("dead_lettered") == 3
    assert len(values) + len(dead) == 6


def test_bad_csv_rows(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("id,amount\n1,2.5\n2\n3,abc\n4,1.0,extra\n5,\"unterminated\n")
    with pytest.raises(RecordError, match=r"bad\.csv:3: expected 2 fields \(id, amount\), got 1"):
        run_source(files.read(p))
    dead: list[Any] = []
    reader, ctx = open_reader(files.read(p, csv_types={"amount": float}, on_error=ms.connectors.dead_letter(
        files.write(tmp_path / "unused.jsonl"))), dead=dead)
    assert drain(reader) == [{"id": "1", "amount": 2.5}]
    assert [d["position"] for d in dead] == [f"{p}:3", f"{p}:4", f"{p}:5", f"{p}:6"]
    assert "column 'amount': cannot convert 'abc' with float" in dead[1]["error"]
    assert dead[1]["raw"] == "3,abc"


def test_csv_header_problems(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="csv_types names column.*'c'"):
        run_source(files.read(p, csv_types={"c": int}))
    p.write_text("a,a\n1,2\n")
    with pytest.raises(RecordError, match="repeats column"):
        run_source(files.read(p, on_error="skip"))


def test_a_damaged_gzip_file_is_a_bad_record(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in RECORDS))
    p.write_bytes(data[: len(data) // 2])
    values, result = run_source(files.read(p, on_error="skip"))
    assert result.total("skipped") == 1
    assert values == RECORDS[: len(values)]
    with pytest.raises(RecordError, match="gzip"):
        run_source(files.read(p))


def test_bad_event_time_uses_the_file_position(tmp_path: Path) -> None:
    p = tmp_path / "ts.jsonl"
    write_jsonl(p, [{"ts": 1}, {"ts": "soon"}, {"ts": 3}])
    flow = ms.Flow("ts")
    out = CollectSink()
    flow.source(files.read(p, on_error="skip"), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts")).sink(out)
    result = flow.run()
    assert [r["ts"] for r in out.values] == [1, 3]
    assert result.total("skipped") == 1
    flow = ms.Flow("ts")
    flow.source(files.read(p), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts")).sink(CollectSink())
    with pytest.raises(RecordError, match=r"ts\.jsonl:2"):
        flow.run()


# -- following ---------------------------------------------------------------------------------


@pytest.mark.streaming("follows a growing directory")
def test_follow_a_directory_in_a_running_flow(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"n": 1}])
    src = files.read(d, follow=True, poll_interval=0.01)
    flow = ms.Flow("follow")
    out = CollectSink()
    flow.source(src).sink(out)
    results: list[ms.RunResult] = []
    t = threading.Thread(target=lambda: results.append(flow.run()), daemon=True)
    t.start()
    try:
        wait_until(lambda: len(out.values) == 1)
        with (d / "a.jsonl").open("a") as f:
            f.write('{"n": 2}\n{"n": ')
        wait_until(lambda: len(out.values) == 2)
        time.sleep(0.1)
        assert len(out.values) == 2  # the incomplete line waits
        with (d / "a.jsonl").open("a") as f:
            f.write("3}\n")
        wait_until(lambda: len(out.values) == 3)
        write_jsonl(d / "b.jsonl", [{"n": 4}, {"n": 5}])
        wait_until(lambda: len(out.values) == 5)
        with (d / "a.jsonl").open("a") as f:
            f.write('{"n": 6}\n')
        wait_until(lambda: len(out.values) == 6)
    finally:
        src.stop()
        t.join(10)
    assert not t.is_alive()
    assert [r["n"] for r in out.values] == [1, 2, 3, 4, 5, 6]
    assert results and results[0].ok


def test_follow_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    p = tmp_path / "later.jsonl"
    clock = ManualClock()
    reader, _ = open_reader(files.read(p, follow=True, poll_interval=0.1), clock)
    assert reader.poll(10) == []
    assert reader.wait_hint() == 0.1
    write_jsonl(p, [{"a": 1}])
    assert reader.poll(10) == []  # the directory is looked at again after the poll interval
    clock.advance(100)
    assert reader.poll(10) == [{"a": 1}]
    assert reader.position_of(0) == f"{p}:1"


@pytest.mark.streaming("follows a growing directory")
def test_follow_ends_after_max_idle_with_a_manual_clock(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    write_jsonl(p, RECORDS[:5])
    clock = ManualClock()
    values, result = run_source(files.read(p, follow=True, max_idle=2_000), clock=clock)
    assert values == RECORDS[:5]
    assert 2_000 <= clock.now_ms() < 2_200


def test_follow_partial_lines_truncation_and_rotation(tmp_path: Path) -> None:
    p = tmp_path / "app.jsonl"
    p.write_text('{"n": 1}\n{"n": 2')
    clock = ManualClock()
    reader, _ = open_reader(files.read(p, follow=True, poll_interval=0.05), clock)
    assert reader.poll(10) == [{"n": 1}]
    assert reader.poll(10) == []
    with p.open("a") as f:
        f.write('}\n{"n": 3}\n')
    assert reader.poll(10) == [{"n": 2}, {"n": 3}]
    assert reader.position_of(1) == f"{p}:3"
    # truncated (copytruncate rotation): read again from the start
    p.write_text('{"n": 10}\n')
    clock.advance(50)
    assert drain(reader) == [{"n": 10}]
    # renamed away, then a new file: the old one's unterminated last line is read, then the new file
    with p.open("a") as f:
        f.write('{"n": 11}\n{"n": 12}')
    assert drain(reader) == [{"n": 11}]
    p.rename(tmp_path / "app.jsonl.1")
    write_jsonl(p, [{"n": 20}])
    clock.advance(50)
    assert drain(reader) == [{"n": 12}]
    clock.advance(50)
    assert drain(reader) == [{"n": 20}]
    assert reader.position_of(0) == f"{p}:1"


def test_stop_ends_a_following_source_after_what_is_there(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    clock = ManualClock()
    src = files.read(d, format="jsonl", follow=True)
    reader, _ = open_reader(src, clock)
    assert reader.poll(10) == []
    write_jsonl(d / "x.jsonl", [{"a": 1}])
    src.stop()
    assert reader.poll(10) == [{"a": 1}]
    assert reader.poll(10) is None


def test_following_waits_for_a_gzip_file_to_settle(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    clock = ManualClock()
    reader, _ = open_reader(files.read(d, format="jsonl", follow=True, poll_interval=0.05), clock)
    with gzip.open(d / "a.jsonl.gz", "wt") as f:
        f.write('{"a": 1}\n{"a": 2}')
    assert reader.poll(10) == []  # seen once: maybe still being written
    clock.advance(50)
    assert reader.poll(10) == [{"a": 1}, {"a": 2}]  # whole files: the last line counts
    clock.advance(50)
    assert reader.poll(10) == []
    assert reader.snapshot()["done"] == ["a.jsonl.gz"]


# -- snapshot and restore ------------------------------------------------------------------------


def test_snapshot_and_restore_mid_file_gives_exactly_the_rest(tmp_path: Path) -> None:
    p = tmp_path / "e.jsonl"
    recs = [{"i": i, "pad": "x" * (i % 37)} for i in range(5000)]
    write_jsonl(p, recs)
    src = files.read(p, block_size=4096)
    reader, _ = open_reader(src)
    head = drain(reader, 300, polls=4)
    pos = reader.snapshot()
    assert pos["files"][str(p)]["line"] == 1200
    assert json.loads(json.dumps(pos)) == pos  # a plain value, checkpointable as JSON
    reader.close()
    again, _ = open_reader(files.read(p))
    again.restore(pos)
    rest = drain(again)
    assert head + rest == recs
    assert again.position_of(0) is not None


def test_restore_through_the_source_operator_contract(tmp_path: Path) -> None:
    """open() then restore() before the first poll, as the executor does."""
    p = tmp_path / "e.csv"
    p.write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(100)))
    reader, _ = open_reader(files.read(p, csv_types={"a": int, "b": int}))
    first = drain(reader, 30, polls=1)
    pos = reader.snapshot()
    assert pos["files"][str(p)]["header"] == ["a", "b"]
    fresh, _ = open_reader(files.read(p, csv_types={"a": int, "b": int}))
    fresh.restore(pos)
    rest = fresh.poll(5)
    assert rest is not None
    assert fresh.position_of(0) == f"{p}:32"
    rest += drain(fresh)
    assert first + rest == [{"a": i, "b": i * 2} for i in range(100)]


def test_snapshot_of_a_directory_names_the_done_files(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for name in "abc":
        write_jsonl(d / f"{name}.jsonl", [{"f": name, "i": i} for i in range(10)])
    reader, _ = open_reader(files.read(d))
    got = drain(reader, 6, polls=3)  # a: 6 + 4, b: 6
    pos = reader.snapshot()
    assert pos["done"] == ["a.jsonl"]
    assert pos["files"] == {"b.jsonl": {"offset": (d / "b.jsonl").read_bytes().index(b'{"f": "b", "i": 6'),
                                        "line": 6}}
    fresh, _ = open_reader(files.read(d))
    fresh.restore(pos)
    rest = drain(fresh)
    assert got + rest == [{"f": f, "i": i} for f in "abc" for i in range(10)]


@pytest.mark.parametrize("name", ["t.parquet", "t.jsonl.gz"])
def test_restore_parquet_and_gzip(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    recs = [{"i": i, "s": str(i)} for i in range(1000)]
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(recs), p, row_group_size=128)
    else:
        with gzip.open(p, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
    reader, _ = open_reader(files.read(p))
    head = drain(reader, 100, polls=3)
    pos = reader.snapshot()
    fresh, _ = open_reader(files.read(p))
    fresh.restore(pos)
    assert head + drain(fresh, 77) == recs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(0, 60), min_size=0, max_size=120),
    block=st.integers(1024, 3000),
    chunk=st.integers(1, 50),
    cut=st.integers(0, 10),
    final_newline=st.booleans(),
)
def test_any_blocking_and_restore_point_reads_each_record_once(
    tmp_path: Path, sizes: list[int], block: int, chunk: int, cut: int, final_newline: bool
) -> None:
    p = tmp_path / "prop.jsonl"
    recs = [{"i": i, "s": "é" * n} for i, n in enumerate(sizes)]
    write_jsonl(p, recs, end="\n" if final_newline else "")
    if not recs:
        p.write_text("")
    reader, _ = open_reader(files.read(p, block_size=block))
    head = drain(reader, chunk, polls=cut)
    pos = reader.snapshot()
    fresh, _ = open_reader(files.read(p, block_size=block))
    fresh.restore(pos)
    assert head + drain(fresh, chunk) == recs


# -- sinks ---------------------------------------------------------------------------------------


def _write(sink: ms.connectors.Sink, records: list[Any]) -> None:
    flow = ms.Flow("write")
    flow.source(ms.connectors.memory.read(records)).sink(sink)
    flow.run()


@pytest.mark.native_only("in columnar modes a JSON-lines batch has all its lines' fields (null where one has none)")
def test_jsonl_sink_round_trips_and_writes_unknown_types_as_text(tmp_path: Path) -> None:
    p = tmp_path / "deep" / "er" / "out.jsonl"
    when = datetime(2026, 1, 1, tzinfo=UTC)
    _write(files.write(p), [*RECORDS, {"when": when, "path": Path("a/b"), 1: "int key"}])
    back = run_source(files.read(p))[0]
    assert back[:-1] == RECORDS
    assert back[-1] == {"when": "2026-01-01T00:00:00+00:00", "path": "a/b", "1": "int key"}


@pytest.mark.parametrize("name", ["out.csv", "out.csv.gz", "out.jsonl.gz"])
def test_csv_and_gzip_sinks_round_trip(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    rows = [{"id": i, "text": f"a, \"b\"\nc{i}"} for i in range(20)]
    _write(files.write(p), rows)
    src = files.read(p, csv_types={"id": int}) if "csv" in name else files.read(p)
    assert run_source(src)[0] == rows


def test_csv_sink_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ms.StepError, match="dict records"):
        _write(files.write(tmp_path / "a.csv"), [1, 2])
    with pytest.raises(ms.StepError, match="header .* is a, b"):
        _write(files.write(tmp_path / "b.csv"), [{"a": 1, "b": 2}, {"a": 1, "c": 3}])


def test_parquet_sink_round_trips_in_row_groups(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    p = tmp_path / "out.parquet"
    rows = [{"id": i, "name": f"n{i}", "v": i / 4} for i in range(1000)]
    _write(files.write(p, row_group_size=300), rows)
    assert pq.ParquetFile(p).metadata.num_row_groups == 4
    assert run_source(files.read(p))[0] == rows
    empty = tmp_path / "empty.parquet"
    _write(files.write(empty), [])
    assert run_source(files.read(empty))[0] == []


def test_lines_sink(tmp_path: Path) -> None:
    p = tmp_path / "out.txt"
    _write(files.write(p), ["a", 1, {"b": 2}])
    assert p.read_text() == "a\n1\n{'b': 2}\n"


def test_a_directory_path_gets_part_0(tmp_path: Path) -> None:
    d = tmp_path / "alerts"
    sink = files.write(f"{d}/")
    _write(sink, RECORDS[:2])
    assert sorted(os.listdir(d)) == ["part-0.jsonl"]
    assert run_source(files.read(d))[0] == RECORDS[:2]
    d2 = tmp_path / "exists"
    d2.mkdir()
    _write(files.write(d2, format="csv"), [{"a": 1}])
    assert (d2 / "part-0.csv").read_bytes() == b"a\n1\n"
    with pytest.raises(ConfigError, match="cannot tell the format"):
        files.write(tmp_path / "out.bin")


def test_sink_flush_makes_records_visible(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    writer = files.write(p).open("sink")
    writer.write([{"a": 1}], None)
    writer.flush()
    assert p.read_text() == '{"a":1}\n'
    writer.close()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_at_most_once_resume_drops_a_torn_last_record_and_keeps_the_rest(tmp_path: Path, fmt: str) -> None:
    # a kill mid-write leaves part of a record at the end; at-most-once keeps what was written (nothing is
    # replayed) and appends: the torn part must go, or the next record is glued to it (a chaos trial found
    # '{"key":4,...,"ids":5745,"{"key":9,...}' in an at-most-once output)
    from millstream._checkpoint._coordinator import AT_MOST_ONCE_KEEP

    path = tmp_path / f"out.{fmt}"
    first = files.write(str(path)).open("s")
    first.recover([])
    first.write([{"a": i, "b": f"x\ny{i}" if fmt == "csv" else i} for i in range(3)], None)
    first.close()
    whole = path.read_bytes()
    torn = b'{"a": 3, "b' if fmt == "jsonl" else b'3,"x\ny'  # a CSV quote left open across a newline
    path.write_bytes(whole + torn)
    again = files.write(str(path)).open("s")
    again.recover([AT_MOST_ONCE_KEEP])
    again.write([{"a": 4, "b": "x\ny4" if fmt == "csv" else 4}], None)
    again.close()
    if fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows == [{"a": i, "b": i} for i in (0, 1, 2, 4)]
    else:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert rows == [{"a": str(i), "b": f"x\ny{i}"} for i in (0, 1, 2, 4)]
