"""Savepoints (issue 12, "Job control"): stop a job at a chunk boundary with a final checkpoint its
sinks commit, then go on from it in the same checkpoint directory or, with ``from_savepoint``, in a
new one; the output put together equals an uninterrupted run's.

The stop lands mid-run without any timing: a step blocks on a gate at a chosen record, the test
asks for the stop while it is blocked, then opens the gate; the job stops at the end of that round.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import millstream as ms
from millstream import col
from millstream.connectors import files
from millstream.errors import CheckpointError, ConfigError
from millstream.testing import TestSource

N = 3_000
MODES = ["native", "microbatch", "batch"]


class Gate:
    """A step that blocks at its ``at``-th record until released (never, with ``at=0``)."""

    def __init__(self, at: int = 0) -> None:
        self.at = at
        self.seen = 0
        self.reached = threading.Event()
        self.released = threading.Event()

    def __call__(self, r: dict[str, Any]) -> dict[str, Any]:
        self.seen += 1
        if self.seen == self.at:
            self.reached.set()
            assert self.released.wait(30), "the test never opened the gate"
        return r

    def stop_here(self, job: ms.JobHandle, *, savepoint: bool = True) -> ms.RunResult:
        """Wait until the job is at the gate, ask it to stop, open the gate, and wait for its end."""
        assert self.reached.wait(30), f"the job never reached record {self.at} (status {job.status()})"
        job.control.request_stop(savepoint)
        assert job.status() == "stopping"
        self.released.set()
        return job.wait(30)


def records(n: int = N) -> list[dict[str, Any]]:
    return [{"i": i, "k": i % 7, "ts": 10 * i} for i in range(n)]


def build(out: Path, gate: Gate, *, transactional: bool = True) -> ms.Flow:
    """Raw records and per-key tumbling windows (state, timers, watermarks) into two file sinks."""
    flow = ms.Flow("savepoints")
    src = flow.source(TestSource(records(), chunk=50), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    rows = src.map(gate, name="gate")
    suffix = "/" if transactional else ".jsonl"
    rows.sink(files.write(f"{out}/raw{suffix}", transactional=transactional), name="raw")
    (rows.key_by(col("k")).window(ms.windows.tumbling(1_000))
         .aggregate(n=ms.agg.count(), total=ms.agg.sum("i"))
         .sink(files.write(f"{out}/windows{suffix}", transactional=transactional), name="windows"))
    return flow


def committed(out: Path, name: str) -> list[Any]:
    return files.read_committed(out / name) if (out / name).is_dir() else []


def plain(out: Path, name: str) -> list[Any]:
    path = out / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def key(r: Any) -> str:
    return json.dumps(r, sort_keys=True)


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Counter[str]]]:
    """The uninterrupted run's output, per mode and sink."""
    out: dict[str, dict[str, Counter[str]]] = {}
    for mode in MODES:
        d = tmp_path_factory.mktemp(f"ref-{mode}")
        build(d / "out", Gate()).run(mode, guarantee="exactly-once", checkpoint_dir=d / "ck", max_chunk=100)
        out[mode] = {name: Counter(map(key, committed(d / "out", name))) for name in ("raw", "windows")}
        assert sum(out[mode]["raw"].values()) == N
    return out


def _run(mode: str, out: Path, ck: Path, gate: Gate, **options: Any) -> ms.JobHandle:
    return build(out, gate).start(mode, guarantee="exactly-once", checkpoint_dir=ck, max_chunk=100,
                                  checkpoint_interval=20, **options)


def _savepoint_manifest(path: str) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(Path(path, "MANIFEST.json").read_text())
    return manifest


@pytest.mark.parametrize("mode", MODES)
def test_stop_with_a_savepoint_then_resume_in_the_same_directory_is_exactly_once(
        tmp_path: Path, mode: str, expected: dict[str, dict[str, Counter[str]]]) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    gate = Gate(at=1_000)
    job = _run(mode, out, ck, gate)
    first = gate.stop_here(job)
    assert job.status() == "stopped" and first.interrupted and not first.ok
    assert first.savepoint is not None and job.savepoint == first.savepoint
    manifest = _savepoint_manifest(first.savepoint)
    assert manifest["savepoint"] is True and manifest["finished"] is False
    # the sinks committed the savepoint: the output is there, a prefix of the whole
    raw_before = committed(out, "raw")
    assert 1_000 <= len(raw_before) < N, "the stop did not land mid-run"
    assert first.records_read == len(raw_before)
    assert first.checkpoints is not None and first.checkpoints.last_id == manifest["id"]

    second = _run(mode, out, ck, Gate()).wait(30)
    assert second.ok and not second.interrupted and second.savepoint is None
    assert second.checkpoints is not None and second.checkpoints.restored_from == manifest["id"]
    for name in ("raw", "windows"):
        assert Counter(map(key, committed(out, name))) == expected[mode][name], name


@pytest.mark.parametrize("mode", MODES)
def test_from_savepoint_into_a_new_directory_and_a_new_output(
        tmp_path: Path, mode: str, expected: dict[str, dict[str, Counter[str]]]) -> None:
    gate = Gate(at=700)
    first = gate.stop_here(_run(mode, tmp_path / "out1", tmp_path / "ck1", gate))
    assert first.savepoint is not None
    # the savepoint by its chk-* directory in native mode, by its checkpoint directory otherwise
    where = first.savepoint if mode == "native" else str(tmp_path / "ck1")
    second = _run(mode, tmp_path / "out2", tmp_path / "ck2", Gate(), from_savepoint=where).wait(30)
    assert second.ok and second.checkpoints is not None
    assert second.checkpoints.restored_from == _savepoint_manifest(first.savepoint)["id"]
    for name in ("raw", "windows"):
        together = committed(tmp_path / "out1", name) + committed(tmp_path / "out2", name)
        assert Counter(map(key, together)) == expected[mode][name], name
    # the copy in the new directory is the savepoint, byte for byte
    copy = tmp_path / "ck2" / Path(first.savepoint).name
    assert (copy / "state.pkl").read_bytes() == Path(first.savepoint, "state.pkl").read_bytes()

    # the same command again resumes the new directory (finished: nothing to do), not from the savepoint
    again = _run(mode, tmp_path / "out2", tmp_path / "ck2", Gate(), from_savepoint=where).wait(30)
    assert again.already_finished
    for name in ("raw", "windows"):
        together = committed(tmp_path / "out1", name) + committed(tmp_path / "out2", name)
        assert Counter(map(key, together)) == expected[mode][name], name


@pytest.mark.parametrize(("first_mode", "then"), [("native", "microbatch"), ("microbatch", "native")])
def test_from_savepoint_in_another_mode(
        tmp_path: Path, first_mode: str, then: str, expected: dict[str, dict[str, Counter[str]]]) -> None:
    """A savepoint goes on in another execution mode (the window's state converted, or run per record
    from a native savepoint in micro-batch mode): the two outputs together are an uninterrupted run's."""
    gate = Gate(at=700)
    first = gate.stop_here(_run(first_mode, tmp_path / "out1", tmp_path / "ck1", gate))
    assert first.savepoint is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ms.errors.PerformanceWarning)
        second = _run(then, tmp_path / "out2", tmp_path / "ck2", Gate(), from_savepoint=first.savepoint).wait(30)
    assert second.ok and second.checkpoints is not None
    assert second.checkpoints.restored_from == _savepoint_manifest(first.savepoint)["id"]
    for name in ("raw", "windows"):
        together = committed(tmp_path / "out1", name) + committed(tmp_path / "out2", name)
        assert Counter(map(key, together)) == expected[then][name], name


def test_at_least_once_every_record_is_there_after_a_savepoint(tmp_path: Path) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    gate = Gate(at=1_200)
    job = build(out, gate, transactional=False).start(guarantee="at-least-once", checkpoint_dir=ck, max_chunk=100)
    first = gate.stop_here(job)
    assert first.savepoint is not None and 0 < len(plain(out, "raw")) < N
    build(out, Gate(), transactional=False).run(guarantee="at-least-once", checkpoint_dir=ck, max_chunk=100)
    assert {r["i"] for r in plain(out, "raw")} == set(range(N))
    windows = {(r["k"], r["window_start"]) for r in plain(out, "windows")}
    assert windows == {(i % 7, (10 * i) // 1_000 * 1_000) for i in range(N)}


def test_an_old_savepoint_into_the_same_directory_after_later_commits_is_refused(tmp_path: Path) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    gate = Gate(at=900)
    first = gate.stop_here(_run("native", out, ck, gate))
    assert first.savepoint is not None
    _run("native", out, ck, Gate()).wait(30)  # went on past the savepoint, committing more output
    with pytest.raises(CheckpointError, match="gone past it") as err:
        _run("native", out, ck, Gate(), from_savepoint=first.savepoint)
    assert "new checkpoint directory and a new output" in str(err.value)
    # the newest checkpoint of a directory, named as a savepoint, is a plain resume
    assert len(committed(out, "raw")) == N


def test_retention_keeps_the_newest_savepoint(tmp_path: Path) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    gate = Gate(at=600)
    first = gate.stop_here(build(out, gate).start(guarantee="exactly-once", checkpoint_dir=ck, max_chunk=100,
                                                  checkpoints_retained=1))
    assert first.savepoint is not None
    sp = Path(first.savepoint).name
    second = build(out, Gate()).run(guarantee="exactly-once", checkpoint_dir=ck, max_chunk=100,
                                    checkpoints_retained=1, checkpoint_interval=1)
    assert second.checkpoints is not None and second.checkpoints.completed >= 1
    left = sorted(p.name for p in ck.iterdir() if p.name.startswith("chk-"))
    assert left == [sp, f"chk-{second.checkpoints.last_id:08d}"]
    # and it still serves as one: a new directory starts from it
    again = build(tmp_path / "out2", Gate()).run(guarantee="exactly-once", checkpoint_dir=tmp_path / "ck2",
                                                 max_chunk=100, from_savepoint=ck / sp)
    assert again.checkpoints is not None and again.checkpoints.restored_from == int(sp[4:])
    assert len(committed(out, "raw")) == N and len(committed(tmp_path / "out2", "raw")) == N - first.records_read


def test_from_savepoint_refusals(tmp_path: Path) -> None:
    out, ck = tmp_path / "out", tmp_path / "ck"
    gate = Gate(at=500)
    first = gate.stop_here(_run("native", out, ck, gate))
    assert first.savepoint is not None
    plain_checkpoint = min(p for p in ck.iterdir() if p.name.startswith("chk-"))
    assert not _savepoint_manifest(str(plain_checkpoint)).get("savepoint")
    with pytest.raises(CheckpointError, match="is a checkpoint, not a savepoint"):
        _run("native", tmp_path / "o2", tmp_path / "ck2", Gate(), from_savepoint=plain_checkpoint)
    with pytest.raises(CheckpointError, match="does not exist"):
        _run("native", tmp_path / "o3", tmp_path / "ck3", Gate(), from_savepoint=tmp_path / "nowhere")
    # a directory that holds another run's checkpoints
    build(tmp_path / "o4", Gate()).run(guarantee="exactly-once", checkpoint_dir=tmp_path / "ck4")
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        _run("native", tmp_path / "o4", tmp_path / "ck4", Gate(), from_savepoint=first.savepoint)
    with pytest.raises(ConfigError, match="from_savepoint needs a checkpoint_dir"):
        ms.RunConfig(from_savepoint=first.savepoint)
    # none of these took the savepoint's directory or changed it
    assert sorted(os.listdir(first.savepoint)) == ["MANIFEST.json", "state.pkl"]


def test_a_savepoint_needs_a_checkpoint_directory(tmp_path: Path) -> None:
    gate = Gate(at=300)
    flow = ms.Flow("no-checkpoints")
    out = ms.testing.CollectSink()
    flow.source(TestSource(records(), chunk=50)).map(gate).sink(out)
    job = flow.start(max_chunk=100)
    assert gate.reached.wait(30)
    with pytest.raises(ConfigError, match="a savepoint needs checkpoints"):
        job.stop()
    assert job.status() == "running"
    job.control.request_stop(savepoint=False)
    gate.released.set()
    result = job.wait(30)
    assert result.interrupted and result.savepoint is None and job.status() == "stopped"
    assert len(out.values) == result.records_written < N


def test_from_savepoint_into_the_output_its_run_went_on_writing_is_refused_under_exactly_once(
        tmp_path: Path) -> None:
    """The run that took the savepoint went on (same directory) and committed more output: a new run
    from the savepoint that writes to that same output would write what came after it a second time."""
    out, ck = tmp_path / "out", tmp_path / "ck"
    gate = Gate(at=800)
    first = gate.stop_here(_run("native", out, ck, gate))
    assert first.savepoint is not None
    _run("native", out, ck, Gate()).wait(30)  # went on past the savepoint, committing more output
    assert len(committed(out, "raw")) == N
    with pytest.raises(CheckpointError, match="same output") as err:
        _run("native", out, tmp_path / "ck2", Gate(), from_savepoint=first.savepoint)
    assert "new output" in str(err.value)
    assert len(committed(out, "raw")) == N  # nothing written twice
    assert not (tmp_path / "ck2" / Path(first.savepoint).name).exists()  # nor copied
    # to a new output it goes on from the savepoint
    again = _run("native", tmp_path / "out2", tmp_path / "ck3", Gate(), from_savepoint=first.savepoint).wait(30)
    assert again.ok and len(committed(tmp_path / "out2", "raw")) == N - first.records_read
