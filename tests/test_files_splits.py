"""``files.read(..., splits=N)``: the file source as N fixed logical splits.

A directory's files are dealt to the splits by a hash of their names, one uncompressed JSON-lines
or text file is cut into byte ranges (a line is read by the split where it starts). Every test
checks against a plain read or a plain-Python oracle: the same records once each, the same windows
and late records at every parallelism and in micro-batch mode, positions and checkpoints per split.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests.test_parallel import _shm, clean  # noqa: F401 - the fixture: no process, nothing in /dev/shm left
from tests.test_parallel_checkpoints import expected

import millstream as ms
from millstream import agg
from millstream.connectors import files
from millstream.connectors._base import SplitSetSource
from millstream.errors import ConfigError, JobError, MillstreamError, RecordError

pytestmark = pytest.mark.usefixtures("clean")
KEYS = 11
BOUND = 50


def event(i: int) -> dict[str, Any]:
    """Event ``i``: up to 40 ms out of order (inside the 50 ms bound), lines of varied length."""
    return {"id": i, "key": (i * 7919) % KEYS, "ts": i * 10 + (i * 2654435761) % 41, "pad": "x" * (i * 13 % 29)}


def line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":")) + "\n"  # compact: the columnar decoder takes it


def write_file(path: Path, n: int, start: int = 0) -> Path:
    path.write_text("".join(line(event(i)) for i in range(start, start + n)))
    return path


def write_dir(path: Path, n: int, files_: int) -> Path:
    path.mkdir()
    per = -(-n // files_)
    for f in range(files_):
        write_file(path / f"part-{f:03d}.jsonl", max(0, min(per, n - f * per)), f * per)
    return path


def ids(values: list[Any]) -> Counter[int]:
    return Counter(v["id"] for v in values)


def read_all(source: files.FileSource, **run: Any) -> list[Any]:
    flow, out = ms.Flow("read"), ms.testing.CollectSink()
    flow.source(source).sink(out)
    result = flow.run(**run)
    assert result.ok
    return out.values


def oracle(n: int) -> Counter[tuple[int, int, int, int]]:
    """Tumbling 1 s windows of the first ``n`` events in plain Python: (key, start, count, sum of ids)."""
    return expected(n, event)


def windows(source: files.FileSource, **run: Any) -> Counter[tuple[int, int, int, int]]:
    flow, out = ms.Flow("windows"), ms.testing.CollectSink()
    (flow.source(source, watermark=ms.WatermarkStrategy.bounded(BOUND, timestamp="ts"))
     .key_by("key").window(ms.windows.tumbling(1_000)).aggregate(n=agg.count(), ids=agg.sum("id")).sink(out))
    result = flow.run(**run)
    assert result.ok and result.total("late") == 0
    return Counter((r["key"], r["window_start"], r["n"], r["ids"]) for r in out.values)


# -- the same records, once each ---------------------------------------------------------------


@pytest.mark.parametrize("splits", [2, 3, 4])
def test_one_file_in_splits_gives_every_record_once_at_every_parallelism(tmp_path: Path, splits: int) -> None:
    p = write_file(tmp_path / "ev.jsonl", 2_000)
    want = ids(read_all(files.read(p)))
    assert want == Counter(range(2_000))
    for parallelism in (1, 2, 3):
        got = read_all(files.read(p, splits=splits), parallelism=parallelism, mode="native", max_chunk=97)
        assert ids(got) == want, (splits, parallelism)


@pytest.mark.parametrize("splits", [2, 3, 4])
def test_a_directory_in_splits_gives_every_record_once_at_every_parallelism(tmp_path: Path, splits: int) -> None:
    d = write_dir(tmp_path / "in", 1_500, 7)
    want = ids(read_all(files.read(d)))
    assert want == Counter(range(1_500))
    for parallelism in (1, 2, 3):
        assert ids(read_all(files.read(d, splits=splits), parallelism=parallelism, mode="native")) == want


def test_a_directory_of_csv_files_splits_by_file_each_with_its_header(tmp_path: Path) -> None:
    d = tmp_path / "csv"
    d.mkdir()
    for f in range(5):
        (d / f"t{f}.csv").write_text("id,name\n" + "".join(f"{f * 10 + i},n{i}\n" for i in range(10)))
    got = read_all(files.read(d, splits=3, csv_types={"id": int}))
    assert sorted(r["id"] for r in got) == list(range(50)) and {tuple(r) for r in got} == {("id", "name")}


def test_the_splits_of_a_directory_are_its_files_by_a_hash_of_their_names(tmp_path: Path) -> None:
    d = write_dir(tmp_path / "in", 100, 10)
    parts = files.read(d, splits=3).logical_splits()
    assert parts is not None and len(parts) == 3
    owners = {name: [j for j, s in enumerate(parts) if s.owns(name)] for name in sorted(p.name for p in d.iterdir())}
    assert all(len(o) == 1 for o in owners.values())  # each file in exactly one split
    # a file's split depends on its name alone: the same in a source of another directory
    other = files.read(tmp_path, splits=3, format="jsonl").logical_splits()
    assert other is not None
    assert all(other[o[0]].owns(name) for name, o in owners.items())


# -- byte ranges --------------------------------------------------------------------------------


def _split_ids(p: Path, splits: int) -> list[list[int]]:
    """The ids each split of ``p`` reads, split by split (each split read alone)."""
    parts = files.read(p, splits=splits).logical_splits()
    assert parts is not None
    return [sorted(r["id"] for r in read_all(part)) for part in parts]  # type: ignore[arg-type]


def test_a_line_crossing_a_byte_boundary_is_read_once_by_the_split_where_it_starts(tmp_path: Path) -> None:
    p = tmp_path / "long.jsonl"
    lines = [line({"id": i, "pad": "y" * 90}) for i in range(5)]  # 5 lines of ~110 bytes
    p.write_text("".join(lines))
    size = p.stat().st_size
    got = _split_ids(p, 4)
    starts = [sum(map(len, lines[:i])) for i in range(5)]
    want = [[i for i, s in enumerate(starts) if size * j // 4 <= s < size * (j + 1) // 4] for j in range(4)]
    assert got == want and sorted(sum(got, [])) == list(range(5))


def test_a_boundary_at_a_line_start_gives_that_line_to_the_later_split(tmp_path: Path) -> None:
    p = tmp_path / "even.jsonl"
    p.write_text("".join(line({"id": i, "p": "z" * 8}) for i in range(8)))  # 8 lines of 24 bytes
    assert p.stat().st_size == 192
    assert _split_ids(p, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]  # boundaries at bytes 48, 96, 144: line starts


def test_more_splits_than_lines_or_files_leaves_some_empty(tmp_path: Path) -> None:
    p = write_file(tmp_path / "two.jsonl", 2)
    got = _split_ids(p, 5)
    assert sorted(sum(got, [])) == [0, 1] and sum(1 for g in got if not g) == 3
    for parallelism in (1, 3):
        assert ids(read_all(files.read(p, splits=5), parallelism=parallelism, mode="native")) == Counter([0, 1])
    d = write_dir(tmp_path / "few", 20, 2)
    assert ids(read_all(files.read(d, splits=6), parallelism=2, mode="native")) == Counter(range(20))
    (tmp_path / "empty").mkdir()
    assert read_all(files.read(tmp_path / "empty", splits=3, format="jsonl")) == []


def test_text_lines_split_by_bytes(tmp_path: Path) -> None:
    p = tmp_path / "log.txt"
    p.write_text("".join(f"line {i} {'w' * (i % 17)}\n" for i in range(500)))
    got = read_all(files.read(p, splits=3), parallelism=2, mode="native")
    assert sorted(got) == sorted(p.read_text().splitlines())


def test_a_malformed_line_in_a_later_split_names_the_file_and_its_line(tmp_path: Path) -> None:
    p = write_file(tmp_path / "ev.jsonl", 300)
    text = p.read_text().splitlines(keepends=True)
    text[250] = '{"id": 250, oops\n'  # in the last of 3 splits
    p.write_text("".join(text))
    with pytest.raises(RecordError) as err:
        read_all(files.read(p, splits=3))
    assert err.value.position == f"{p}:251" and f"{p}:251" in str(err.value)
    got = read_all(files.read(p, splits=3, on_error="skip"))
    assert ids(got) == Counter(i for i in range(300) if i != 250)


# -- event time: the same windows and late records at every parallelism and in every mode --------


def test_windows_over_splits_are_the_oracles_at_every_parallelism(tmp_path: Path) -> None:
    p = write_file(tmp_path / "ev.jsonl", 3_000)
    d = write_dir(tmp_path / "dir", 3_000, 8)
    want = oracle(3_000)
    assert windows(files.read(p)) == want
    for parallelism in (1, 2, 3):
        assert windows(files.read(p, splits=3), parallelism=parallelism, mode="native", max_chunk=100) == want
        assert windows(files.read(d, splits=4), parallelism=parallelism, mode="native", max_chunk=100) == want
    assert windows(files.read(p, splits=3), mode="microbatch", max_chunk=100) == want
    assert windows(files.read(d, splits=4), mode="microbatch") == want


def _late_events(n: int) -> list[dict[str, Any]]:
    """In order but for every 37th event, 2 s behind (beyond the 50 ms bound: may be late)."""
    return [{"id": i, "key": i % KEYS, "ts": i * 10 - (2_000 if i % 37 == 36 else 0) + 5_000} for i in range(n)]


def _late_run(p: Path, splits: int, **run: Any) -> tuple[Counter[str], Counter[str]]:
    flow, out, late = ms.Flow("late"), ms.testing.CollectSink(), ms.testing.CollectSink("late")
    counts = (flow.source(files.read(p, splits=splits), watermark=ms.WatermarkStrategy.bounded(BOUND, timestamp="ts"))
              .key_by("key").window(ms.windows.tumbling(500)).aggregate(n=agg.count()))
    counts.sink(out)
    counts.late().sink(late)
    assert flow.run(**run).ok

    def rows(values: list[Any]) -> Counter[str]:
        return Counter(json.dumps(v, sort_keys=True) for v in values)

    return rows(out.values), rows(late.values)


def test_late_records_are_the_same_at_every_parallelism_and_in_micro_batch(tmp_path: Path) -> None:
    p = tmp_path / "late.jsonl"
    p.write_text("".join(line(e) for e in _late_events(3_000)))
    want = _late_run(p, 3, mode="native", max_chunk=64)
    assert sum(want[1].values()) > 10  # some are late, and which depends on the split's watermark alone
    for parallelism in (2, 3):
        assert _late_run(p, 3, parallelism=parallelism, mode="native", max_chunk=64) == want
    for chunk in (64, 1_000):
        assert _late_run(p, 3, mode="microbatch", max_chunk=chunk) == want
    for parallelism in (2, 3):
        assert _late_run(p, 3, parallelism=parallelism, mode="microbatch", max_chunk=64) == want


def test_micro_batch_reads_the_splits_as_columnar_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In micro-batch mode the split set hands out the splits' polars batches (cut for alignment where
    rows would be), not rows."""
    import polars as pl

    from millstream.connectors._base import SplitSetReader

    seen: Counter[str] = Counter()
    poll_frame = SplitSetReader.poll_frame

    def counted(self: SplitSetReader, n: int) -> Any:
        out = poll_frame(self, n)
        seen["frame" if isinstance(out, pl.DataFrame) else "rows" if out else "other"] += 1
        return out

    monkeypatch.setattr(SplitSetReader, "poll_frame", counted)
    p = tmp_path / "late.jsonl"
    p.write_text("".join(line(e) for e in _late_events(3_000)))
    _late_run(p, 3, mode="microbatch", max_chunk=200)
    assert seen["frame"] > 10 and seen["frame"] > seen["rows"]


def _frames_and_rows(records: list[dict[str, Any]], splits: int, chunk: int) -> tuple[list[Any], list[Any]]:
    """The chunks (split, ids) a split set hands out from ``records`` as rows and as batches."""
    import polars as pl

    from millstream._clock import SystemClock
    from millstream.connectors._base import SourceContext

    strategy = ms.WatermarkStrategy.bounded(BOUND, timestamp="ts")
    out = []
    for frames in (False, True):
        src = ms.connectors.memory.read(pl.DataFrame(records) if frames else records, splits=splits)
        parts = src.logical_splits()
        assert parts is not None
        reader = SplitSetSource(src, parts, range(splits), strategy).open(
            SourceContext(step="s", clock=SystemClock(), policy="fail"))
        assert reader.columnar is frames
        got = []
        while (chunk_ := reader.poll_frame(chunk) if frames else reader.poll(chunk)) is not None:
            if len(chunk_):
                rows = chunk_.to_dicts() if frames else chunk_
                got.append((reader.split(), [r["id"] for r in rows]))
        out.append(got)
    return out[0], out[1]


@pytest.mark.parametrize("chunk", [1, 7, 500])
def test_a_split_set_cuts_batches_exactly_where_it_cuts_rows(chunk: int) -> None:
    """The alignment rule, on polars times, hands out the same records in the same chunks as on rows."""
    records = _late_events(600)
    rows, frames = _frames_and_rows(records, 3, chunk)
    assert rows == frames
    assert sorted(i for _, c in rows for i in c) == list(range(600))


# -- checkpoints --------------------------------------------------------------------------------


def _committed(out: Path) -> Counter[int]:
    got: Counter[int] = Counter()
    for f in sorted(out.glob("*")) if out.exists() else []:
        if f.is_file() and f.name[0] not in "._":
            got.update(json.loads(x)["id"] for x in f.read_text().splitlines())
    return got


def _resume_flow(src: files.FileSource, out: Path, marker: Path, ck: Path) -> ms.Flow:
    """Reads slowly until a checkpoint is complete, then fails once (on whichever worker comes first)."""
    flow = ms.Flow("resume")

    def pace(e: dict[str, Any]) -> dict[str, Any]:
        if not marker.exists():
            if len(list(ck.glob("chk-*/MANIFEST.json"))) >= 3:
                marker.touch()
                raise RuntimeError("a failure after a checkpoint")
            time.sleep(0.005)
        return e

    flow.source(src, name="events").map(pace, name="pace").sink(files.write(out, transactional=True), name="out")
    return flow


RUN = {"guarantee": "exactly-once", "checkpoint_interval": 1, "max_chunk": 50}


@pytest.mark.parametrize(("kind", "first", "then", "mode"), [
    ("file", 2, 2, "native"), ("file", 2, 1, "native"), ("file", 2, 3, "native"), ("dir", 2, 3, "native"),
    ("dir", 1, 2, "native"), ("file", 1, 1, "microbatch")])
def test_a_checkpoint_resumes_every_split_exactly_once_at_any_parallelism(
        tmp_path: Path, kind: str, first: int, then: int, mode: str) -> None:
    src = write_file(tmp_path / "ev.jsonl", 2_000) if kind == "file" else write_dir(tmp_path / "in", 2_000, 9)
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with pytest.raises(JobError, match="a failure after a checkpoint"):
        _resume_flow(files.read(src, splits=3), out, marker, ck).run(
            parallelism=first, checkpoint_dir=str(ck), mode=mode, **RUN)
    before = _committed(out)
    assert before and sum(before.values()) < 2_000 and set(before.values()) == {1}
    result = _resume_flow(files.read(src, splits=3), out, marker, ck).run(
        parallelism=then, checkpoint_dir=str(ck), mode=mode, **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert _committed(out) == Counter(range(2_000))


def test_files_added_to_a_directory_before_the_resume_are_read_once(tmp_path: Path) -> None:
    """A file's split depends on its name alone: files added while the job was down go to their own
    splits, and nothing already read is read again."""
    d = write_dir(tmp_path / "in", 1_000, 5)
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with pytest.raises(JobError, match="a failure after a checkpoint"):
        _resume_flow(files.read(d, splits=3), out, marker, ck).run(checkpoint_dir=str(ck), **RUN)
    for f in range(4):
        write_file(d / f"added-{f}.jsonl", 50, 1_000 + 50 * f)
    assert _resume_flow(files.read(d, splits=3), out, marker, ck).run(checkpoint_dir=str(ck), **RUN).ok
    assert _committed(out) == Counter(range(1_200))


def test_a_checkpoint_resumes_only_with_the_splits_it_was_taken_with(tmp_path: Path) -> None:
    p = write_file(tmp_path / "ev.jsonl", 1_000)
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with pytest.raises(JobError):
        _resume_flow(files.read(p, splits=2), out, marker, ck).run(checkpoint_dir=str(ck), **RUN)
    for splits in (1, 3):  # the source's description, and so the flow, changed: refused before anything runs
        with pytest.raises(MillstreamError, match="belongs to another flow"):
            _resume_flow(files.read(p, splits=splits), out, marker, ck).run(checkpoint_dir=str(ck), **RUN)


def test_a_split_refuses_the_position_of_another_layout(tmp_path: Path) -> None:
    from millstream._clock import SystemClock
    from millstream.connectors._base import SourceContext

    p = write_file(tmp_path / "ev.jsonl", 100)
    ctx = SourceContext(step="events", clock=SystemClock(), policy="fail")
    two, three = files.read(p, splits=2).logical_splits(), files.read(p, splits=3).logical_splits()
    assert two is not None and three is not None
    r = two[1].open(ctx)
    assert r.poll(10)
    position = r.snapshot()
    assert position["split"] == [1, 2] and len(position["range"]) == 3
    with pytest.raises(ConfigError, match=r"split 1 of splits=2 .* this run reads split 1 of splits=3"):
        three[1].open(ctx).restore(position)
    with pytest.raises(ConfigError, match="this run reads one split"):
        files.read(p).open(ctx).restore(position)
    with pytest.raises(ConfigError, match="holds 2 split"):
        files.read(p).open(ctx).restore({0: {"at": position}, 1: {"at": position}})


# -- following a directory ------------------------------------------------------------------------


def test_a_followed_directory_in_splits_reads_every_file_once(tmp_path: Path) -> None:
    d = write_dir(tmp_path / "in", 600, 6)
    src = files.read(d, splits=3, follow=True, max_idle=300, poll_interval=0.05)
    assert ids(read_all(src)) == Counter(range(600))


# -- refusals -----------------------------------------------------------------------------------


def test_what_cannot_be_cut_is_refused_while_the_flow_is_built(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("a\n1\n")
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"a":1}\n'))
    p = write_file(tmp_path / "ev.jsonl", 3)
    with pytest.raises(ConfigError, match=r"source 't.csv': files.read\(.*splits=2\): a CSV file cannot be cut"
                                          r".* read the directory"):
        files.read(csv, splits=2)
    with pytest.raises(ConfigError, match="a compressed file can only be read from its start.*drop splits="):
        files.read(gz, splits=3)
    with pytest.raises(ConfigError, match="follows one file, which grows"):
        files.read(p, splits=2, follow=True)
    pytest.importorskip("pyarrow")
    pq = tmp_path / "t.parquet"
    pq.write_bytes(b"")
    with pytest.raises(ConfigError, match="a Parquet file is not cut into splits"):
        files.read(pq, splits=2)
    for bad in (0, -1, True, "2", 1.5):
        with pytest.raises(ConfigError, match="splits must be an int >= 1"):
            files.read(p, splits=bad)  # type: ignore[arg-type]


def test_splits_1_is_the_source_as_before(tmp_path: Path) -> None:
    p = write_file(tmp_path / "ev.jsonl", 10)
    one = files.read(p)
    assert one.logical_splits() is None and files.read(p, splits=1).describe() == one.describe()
    assert one.describe() == f"jsonl {p}"
    three = files.read(p, splits=3)
    assert three.describe() == f"jsonl {p}, 3 splits (by byte ranges)"
    flow = ms.Flow("explain")
    flow.source(three, name="events").sink(ms.testing.CollectSink())
    from millstream._physical import compile as compile_plan

    text = compile_plan(flow.plan(), "native", 2).explain()
    assert "events#0 reads" in text and "split 0 of 3" not in text and "splits 0-1" in text and "split 2" in text


def test_progress_of_a_split_set_counts_each_split_once(tmp_path: Path) -> None:
    from millstream._clock import SystemClock
    from millstream.connectors._base import SourceContext

    p = write_file(tmp_path / "ev.jsonl", 500)
    size = p.stat().st_size
    for path in (p, write_dir(tmp_path / "in", 500, 4)):
        src = files.read(path, splits=3)
        parts = src.logical_splits()
        assert parts is not None
        reader = SplitSetSource(src, parts, range(3)).open(SourceContext(step="s", clock=SystemClock(), policy="fail"))
        while reader.poll(100) is not None:
            done, total = reader.progress() or (0, 0)
            assert 0 <= done <= total == (size if path == p else sum(f.stat().st_size for f in path.iterdir()))
        assert reader.progress() == (total, total)
