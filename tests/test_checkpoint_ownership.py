"""Issue 13, sections 1-3: a checkpoint directory has one owner (lock + fenced epoch), history cannot be
rewound silently, and every file a resume reads is verified (positions, signatures, disk full)."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import millstream as ms
from millstream._checkpoint import CheckpointStore
from millstream._checkpoint import _store as store_mod
from millstream._checkpoint._owner import LOCK, DirectoryOwner
from millstream.connectors import files
from millstream.connectors._transactional import TwoPhaseFileWriter
from millstream.errors import CheckpointError, CheckpointOwnershipError, JobError
from millstream.testing import ManualClock

STATE = {"job": {"x": 1}, "txns": {}, "read": {"src": 10}}
N = 3_000


class TickingClock(ManualClock):
    """Processing time that moves 5 ms each time it is read: periodic checkpoints, deterministically."""

    def now_ms(self) -> int:
        self.advance(5)
        return super().now_ms()


def events(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "k": i % 5, "ts": i * 10} for i in range(n)]


def identity(e: dict[str, Any]) -> dict[str, Any]:
    return e


def windowed(sink: ms.connectors.Sink, fail: Any = identity) -> ms.Flow:
    flow = ms.Flow("ownership")
    src = flow.source(ms.connectors.memory.read(events(N)), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
    (src.map(fail, name="maybe-fail").key_by("k").window(ms.windows.tumbling(1_000))
        .aggregate(n=ms.agg.count(), ids=ms.agg.sum("id")).sink(sink))
    return flow


def cfg(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {"checkpoint_dir": tmp_path / "ck", "checkpoint_interval": 100, "clock": TickingClock(), "max_chunk": 64,
            "mode": "native", "checkpoints_retained": 5, **kw}


def sink_for(tmp_path: Path, guarantee: str) -> ms.connectors.Sink:
    if guarantee == "exactly-once":
        return files.write(str(tmp_path / "out") + "/", transactional=True)
    return files.write(str(tmp_path / "out.jsonl"))


def output(tmp_path: Path, guarantee: str) -> Counter[str]:
    rows = (files.read_committed(tmp_path / "out") if guarantee == "exactly-once"
            else [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines() if x.strip()])
    return Counter(json.dumps(r, sort_keys=True) for r in rows)


def reference(tmp_path: Path) -> Counter[str]:
    ref = tmp_path / "ref.jsonl"
    windowed(files.write(str(ref))).run(mode="native")
    return Counter(json.dumps(json.loads(x), sort_keys=True) for x in ref.read_text().splitlines() if x.strip())


def crash_midway(tmp_path: Path, guarantee: str, **kw: Any) -> None:
    """Run until the input is two thirds read, then stop as a crash would (no final checkpoint)."""
    def crash(e: dict[str, Any]) -> dict[str, Any]:
        if e["id"] == 2_000:
            raise KeyboardInterrupt
        return e

    result = windowed(sink_for(tmp_path, guarantee), fail=crash).run(guarantee=guarantee, **cfg(tmp_path, **kw))
    assert result.interrupted and len(checkpoints(tmp_path)) >= 3


def resume(tmp_path: Path, guarantee: str, **kw: Any) -> ms.RunResult:
    return windowed(sink_for(tmp_path, guarantee)).run(guarantee=guarantee, **cfg(tmp_path, **kw))


def checkpoints(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "ck").glob("chk-*"))


# -- 1. one owner per checkpoint directory ----------------------------------------------------------------


def test_a_second_live_run_is_refused_naming_the_owner(tmp_path: Path) -> None:
    other = DirectoryOwner(str(tmp_path / "ck"))
    os.makedirs(other.root)
    other.acquire()
    try:
        with pytest.raises(CheckpointOwnershipError) as info:
            resume(tmp_path, "exactly-once")
        text = str(info.value)
        assert "in use by another run" in text and f"PID {os.getpid()}" in text
        assert socket.gethostname() in text and "since 20" in text and "owner epoch 1" in text
        assert not (tmp_path / "out").exists() or not files.read_committed(tmp_path / "out")
    finally:
        other.release()
    assert resume(tmp_path, "exactly-once").ok  # released: the directory is free again


def test_the_lock_is_held_for_the_whole_run_across_restarts_and_released_after(tmp_path: Path) -> None:
    seen: list[str] = []

    def probe(e: dict[str, Any]) -> dict[str, Any]:
        if e["id"] in (1_000, 2_500):
            try:
                DirectoryOwner(str(tmp_path / "ck")).acquire()
                seen.append("acquired")
            except CheckpointOwnershipError:
                seen.append("refused")
            if e["id"] == 1_000 and len(seen) == 1:
                raise ConnectionError("a transient failure: the run restarts in process")
        return e

    result = windowed(sink_for(tmp_path, "exactly-once"), fail=probe).run(
        guarantee="exactly-once", restarts=1, restart_delay_s=0, **cfg(tmp_path))
    assert result.restarts == 1 and seen == ["refused", "refused", "refused"]
    owner = DirectoryOwner(str(tmp_path / "ck"))
    owner.acquire()  # released at the end of the run
    owner.release()


def test_a_crashed_owner_never_blocks_a_restart(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    ck.mkdir()
    code = ("import os, signal, sys; from millstream._checkpoint._owner import DirectoryOwner; "
            "DirectoryOwner(sys.argv[1]).acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code, str(ck)], timeout=60)
    assert r.returncode == -signal.SIGKILL
    owner = DirectoryOwner(str(ck))
    owner.acquire()
    assert owner.epoch == 2  # the dead owner's epoch counts on
    owner.release()


def test_a_zombie_is_fenced_by_its_epoch_when_the_lock_cannot_be_relied_on(tmp_path: Path) -> None:
    root = str(tmp_path / "ck")
    zombie = DirectoryOwner(root)
    os.makedirs(root)
    zombie.acquire()
    store = CheckpointStore(root, job="j", owner=zombie)
    store.write(1, STATE, finished=False, meta={})
    out = tmp_path / "out"
    writer = TwoPhaseFileWriter(str(out), ext="jsonl", new_part=lambda p: _Part(p), step="out")
    writer.set_fence(zombie.epoch, zombie.check)
    writer.recover([])
    writer.write([{"a": 1}], None)
    txn = writer.pre_commit(2)
    assert f".e{zombie.epoch}-" in txn["staged"]  # the owner epoch is in the staged name

    os.remove(os.path.join(root, LOCK))  # the lock file removed by hand: a new run locks a new file
    new = DirectoryOwner(root)
    new.acquire()
    assert new.epoch == zombie.epoch + 1
    try:
        with pytest.raises(CheckpointOwnershipError, match="no longer owns .* took it over"):
            store.write(2, STATE, finished=False, meta={})
        assert store.ids() == [1]
        with pytest.raises(CheckpointOwnershipError):
            writer.commit(txn)
        assert not (out / txn["final"]).exists()
        with pytest.raises(CheckpointOwnershipError):
            store.write_positions({"src": {}})
        with pytest.raises(CheckpointOwnershipError):
            store.gc()
        CheckpointStore(root, job="j", owner=new).write(2, STATE, finished=False, meta={})  # the owner goes on
    finally:
        new.release()
        zombie.release()


def test_a_zombie_whose_files_were_cleaned_up_is_told_why(tmp_path: Path) -> None:
    root = str(tmp_path / "ck")
    os.makedirs(root)
    zombie = DirectoryOwner(root)
    zombie.acquire()
    out = tmp_path / "out"
    writer = TwoPhaseFileWriter(str(out), ext="jsonl", new_part=lambda p: _Part(p), step="out")
    writer.set_fence(zombie.epoch, zombie.check)
    writer.recover([])
    writer.write([{"a": 1}], None)
    os.remove(os.path.join(root, LOCK))
    new = DirectoryOwner(root)
    new.acquire()
    TwoPhaseFileWriter(str(out), ext="jsonl", new_part=lambda p: _Part(p), step="out").recover([])  # cleans up
    with pytest.raises(CheckpointOwnershipError, match="no longer owns"):
        writer.pre_commit(1)
    new.release()
    zombie.release()


class _Part:
    def __init__(self, path: str) -> None:
        self.path = path
        self.f = open(path, "w")  # noqa: SIM115

    def write(self, records: list[Any]) -> None:
        self.f.write("".join(json.dumps(r) + "\n" for r in records))

    def seal(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def discard(self) -> None:
        self.f.close()
        os.unlink(self.path)


def test_filesystems_without_locks_rely_on_the_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    root = str(tmp_path / "ck")
    os.makedirs(root)
    with caplog.at_level(logging.WARNING, logger="millstream"):
        a = DirectoryOwner(root)
        a.acquire()
    assert "file locks do not work here" in caplog.text
    b = DirectoryOwner(root)
    b.acquire()  # not refused (no lock), but a is fenced
    with pytest.raises(CheckpointOwnershipError):
        a.check()
    b.check()


def test_a_commit_never_takes_another_runs_file_for_its_own(tmp_path: Path) -> None:
    out = tmp_path / "out"
    writer = TwoPhaseFileWriter(str(out), ext="jsonl", new_part=lambda p: _Part(p), step="out")
    writer.recover([])
    writer.write([{"a": 1}], None)
    txn = writer.pre_commit(3)
    os.replace(out / txn["staged"], out / txn["final"])
    writer.commit(txn)  # committed before (same size): idempotent
    (out / txn["final"]).write_text('{"someone": "else", "wrote": "this"}\n')
    with pytest.raises(JobError, match="is not its output"):
        writer.commit(txn)


# -- 2. history cannot be rewound silently ----------------------------------------------------------------


def test_deleting_the_newest_checkpoint_is_refused_under_exactly_once(tmp_path: Path) -> None:
    crash_midway(tmp_path, "exactly-once")
    before = output(tmp_path, "exactly-once")
    newest = checkpoints(tmp_path)[-1]
    assert sum(1 for _ in (tmp_path / "out").glob(f"part-{newest.name[4:]}-*"))  # its output was committed
    for f in newest.iterdir():
        f.unlink()
    newest.rmdir()
    with pytest.raises(CheckpointError) as info:
        resume(tmp_path, "exactly-once")
    text = str(info.value)
    assert f"checkpoint {int(newest.name[4:])} may already be committed" in text
    assert "put the missing checkpoint folder(s) back" in text and "new (empty) checkpoint directory AND" in text
    assert output(tmp_path, "exactly-once") == before  # nothing changed
    # the advice works: a new checkpoint directory and a new output give the right answer
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    windowed(sink_for(fresh, "exactly-once")).run(guarantee="exactly-once", **cfg(fresh))
    assert output(fresh, "exactly-once") == reference(tmp_path)


def test_all_checkpoints_deleted_is_refused_under_exactly_once(tmp_path: Path) -> None:
    crash_midway(tmp_path, "exactly-once")
    for c in checkpoints(tmp_path):
        for f in c.iterdir():
            f.unlink()
        c.rmdir()
    with pytest.raises(CheckpointError, match="no checkpoint is left"):
        resume(tmp_path, "exactly-once")


def test_a_rewound_history_warns_under_at_least_once_and_never_reuses_an_id(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    crash_midway(tmp_path, "at-least-once")
    newest = checkpoints(tmp_path)[-1]
    deleted = int(newest.name[4:])
    for f in newest.iterdir():
        f.unlink()
    newest.rmdir()
    with caplog.at_level(logging.WARNING, logger="millstream"):
        result = resume(tmp_path, "at-least-once")
    assert f"output of checkpoint {deleted} may already be committed" in caplog.text
    assert "output after it is produced again (at-least-once allows that)" in caplog.text
    assert result.checkpoints is not None and result.checkpoints.restored_from == deleted - 1
    assert [h["id"] for h in result.checkpoints.history][0] > deleted
    assert set(output(tmp_path, "at-least-once")) == set(reference(tmp_path))


def test_a_rewound_history_under_at_most_once_says_nothing_is_produced_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    crash_midway(tmp_path, "at-most-once")
    newest = checkpoints(tmp_path)[-1]
    shutil.rmtree(newest)
    with caplog.at_level(logging.WARNING, logger="millstream"):
        resume(tmp_path, "at-most-once")
    assert "nothing is produced again, and the state after it is lost (at-most-once allows that)" in caplog.text
    assert "produced again (at-most-once" not in caplog.text
    ref = {(r["k"], r["window_start"]): r["n"] for r in map(json.loads, reference(tmp_path))}
    got = output(tmp_path, "at-most-once").elements()
    windows = [(r["k"], r["window_start"], r["n"]) for r in map(json.loads, got)]
    assert len({w[:2] for w in windows}) == len(windows)  # no window twice
    assert all(n <= ref[(k, s)] for k, s, n in windows)  # none holding more than it should (some hold less)


def test_deleting_committed_with_the_newest_checkpoints_is_refused_under_exactly_once(tmp_path: Path) -> None:
    # the COMMITTED record deleted as well: the resume used to read "nothing committed", replay from an older
    # checkpoint with exit 0, and leave a committed part file the replay did not reach (here: a longer
    # checkpoint interval, so fewer checkpoints) beside the replayed output: duplicated rows
    crash_midway(tmp_path, "exactly-once")
    before = output(tmp_path, "exactly-once")
    for c in checkpoints(tmp_path)[-2:]:
        shutil.rmtree(c)
    os.remove(tmp_path / "ck" / "COMMITTED")
    with pytest.raises(CheckpointError) as info:
        resume(tmp_path, "exactly-once", checkpoint_interval=1_000_000)
    text = " ".join(str(info.value).split())
    assert "COMMITTED is missing" in text and "put it back" in text and "exactly-once cannot resume" in text
    assert "new (empty) checkpoint directory AND a new or emptied output" in text
    assert output(tmp_path, "exactly-once") == before


def test_a_lost_committed_record_warns_under_at_least_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    crash_midway(tmp_path, "at-least-once")
    shutil.rmtree(checkpoints(tmp_path)[-1])
    os.remove(tmp_path / "ck" / "COMMITTED")
    with caplog.at_level(logging.WARNING, logger="millstream"):
        assert resume(tmp_path, "at-least-once").ok
    assert "COMMITTED is missing" in caplog.text
    assert set(output(tmp_path, "at-least-once")) == set(reference(tmp_path))


def test_a_crash_right_after_the_first_checkpoint_resumes(tmp_path: Path) -> None:
    # COMMITTED is written before the first checkpoint becomes visible: a crash between the two is not
    # mistaken for a lost record
    from millstream._checkpoint import _failpoints

    _failpoints.arm("ckpt.after_rename=raise#1")
    try:
        with pytest.raises(_failpoints.FailpointError):
            resume(tmp_path, "exactly-once")
    finally:
        _failpoints.arm("")
    assert [c.name for c in checkpoints(tmp_path)] == ["chk-00000001"]
    assert json.loads((tmp_path / "ck" / "COMMITTED").read_bytes().split(b"\n")[0])["checkpoint"] == 0
    assert resume(tmp_path, "exactly-once").ok
    assert output(tmp_path, "exactly-once") == reference(tmp_path)


def test_every_refusal_gives_safe_advice(tmp_path: Path) -> None:
    crash_midway(tmp_path, "exactly-once")
    state = checkpoints(tmp_path)[-1] / "state.pkl"
    state.write_bytes(state.read_bytes()[:-5])
    with pytest.raises(CheckpointError) as info:
        resume(tmp_path, "exactly-once")
    text = str(info.value)
    assert "remove the checkpoint directory" not in text
    assert "new (empty) checkpoint directory AND a new or emptied output" in text


# -- 3. every file a resume reads is verified ---------------------------------------------------------------


def test_at_most_once_refuses_to_resume_without_its_positions(tmp_path: Path) -> None:
    crash_midway(tmp_path, "at-most-once")
    before = output(tmp_path, "at-most-once")
    os.remove(tmp_path / "ck" / "positions.pkl")
    with pytest.raises(CheckpointError, match="no positions.pkl") as info:
        resume(tmp_path, "at-most-once")
    assert "put positions.pkl back" in str(info.value)
    assert output(tmp_path, "at-most-once") == before


def test_at_most_once_detects_every_damaged_positions_file(tmp_path: Path) -> None:
    crash_midway(tmp_path, "at-most-once")
    path = tmp_path / "ck" / "positions.pkl"
    good = path.read_bytes()
    rnd = random.Random(5)
    store = CheckpointStore(str(tmp_path / "ck"), job=json.loads(good.split(b"\n")[0])["job"])
    assert store.read_positions()
    head = good.split(b"\n")[0]
    record = len(head) + 1 + json.loads(head)["size"]  # rewritten in place: what follows is an older tail
    for _ in range(300):  # bit flips and truncations anywhere: always a CheckpointError, never a KeyError
        data = bytearray(good)
        if rnd.random() < 0.8:
            i = rnd.randrange(record)
            data[i] ^= 1 << rnd.randrange(8)
        else:
            del data[rnd.randrange(record):]
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match="positions.pkl"):
            store.read_positions()
    data = bytearray(good)
    data[record - 3] ^= 4
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged") as info:
        resume(tmp_path, "at-most-once")
    assert "does not resume" in str(info.value)


def test_at_most_once_refuses_positions_older_than_its_checkpoint(tmp_path: Path) -> None:
    # an older copy of positions.pkl (same directory, checksum fine) put back after a later crash: the resume
    # trusted it, read again from the checkpoint and emitted windows a second time with exit 0
    def crash_at(n: int) -> None:
        def crash(e: dict[str, Any]) -> dict[str, Any]:
            if e["id"] == n:
                raise KeyboardInterrupt
            return e

        windowed(sink_for(tmp_path, "at-most-once"), fail=crash).run(guarantee="at-most-once", **cfg(tmp_path))

    crash_at(1_000)
    old = (tmp_path / "ck" / "positions.pkl").read_bytes()
    crash_at(2_500)
    (tmp_path / "ck" / "positions.pkl").write_bytes(old)
    with pytest.raises(CheckpointError, match="older than the checkpoint being restored"):
        resume(tmp_path, "at-most-once")


def test_at_most_once_records_positions_from_the_start(tmp_path: Path) -> None:
    resume(tmp_path, "at-most-once")
    assert (tmp_path / "ck" / "positions.pkl").exists()
    assert output(tmp_path, "at-most-once") == reference(tmp_path)


def _no_space_on(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    class Full:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, attr: str) -> Any:
            return getattr(self.f, attr)

    def fake_open(path: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        f = real_open(path, mode, *args, **kw)
        return Full(f) if "w" in mode and os.path.basename(str(path)) == name else f

    monkeypatch.setattr(store_mod, "open", fake_open, raising=False)


def test_disk_full_while_writing_a_checkpoint_is_a_clear_error(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(str(tmp_path / "ck"), job="j")
    store.write(1, STATE, finished=False, meta={})
    _no_space_on("state.pkl", monkeypatch)
    with pytest.raises(CheckpointError) as info:
        store.write(2, STATE, finished=False, meta={})
    text = str(info.value)
    assert "no space left on the device" in text and "checkpoint 2" in text and store.root in text
    assert "previous checkpoint (1) is intact" in text and "free space" in text
    monkeypatch.undo()
    assert store.ids() == [1] and store.load(1).state == STATE
    assert not [n for n in os.listdir(store.root) if n.startswith(".tmp-")]


def test_disk_full_during_a_run_fails_cleanly_and_the_run_resumes_after(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = store_mod.CheckpointStore._write

    def fill_up(self: CheckpointStore, ckpt_id: int, *a: Any, **kw: Any) -> int:
        calls.append(ckpt_id)
        if len(calls) == 4:
            _no_space_on("MANIFEST.json", monkeypatch)
        return real(self, ckpt_id, *a, **kw)

    monkeypatch.setattr(store_mod.CheckpointStore, "_write", fill_up)
    with pytest.raises(CheckpointError, match="no space left") as info:
        resume(tmp_path, "exactly-once")
    assert f"checkpoint {calls[-1]}" in str(info.value)
    monkeypatch.undo()  # space freed
    result = resume(tmp_path, "exactly-once")
    assert result.checkpoints is not None and result.checkpoints.restored_from == calls[-2]
    assert output(tmp_path, "exactly-once") == reference(tmp_path)


KEY = "s3cret-checkpoint-key-do-not-leak"


def test_signed_checkpoints_are_verified_before_anything_is_unpickled(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path / "ck")
    signed = CheckpointStore(root, job="j", key=KEY)
    signed.write(1, STATE, finished=False, meta={})
    signed.write_positions({"src": {"read": 3}})
    assert signed.load(1).state == STATE and signed.read_positions() == {"src": {"read": 3}}
    for f in Path(root).rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes()
    assert KEY not in repr(signed) and KEY not in repr(ms.RunConfig(checkpoint_dir=root, checkpoint_key=KEY))

    # an unsigned checkpoint (or positions file) is refused when a key is set
    CheckpointStore(root, job="j").write(2, STATE, finished=False, meta={})
    CheckpointStore(root, job="j").write_positions({"src": {"read": 4}})

    def never(*a: Any, **kw: Any) -> Any:
        raise AssertionError("unpickled before verification")

    monkeypatch.setattr(store_mod.pickle, "loads", never)
    for store in (signed, CheckpointStore(root, job="j", key="another key")):
        with pytest.raises(CheckpointError) as info:
            store.load(2)
        assert "not signed" in str(info.value) and KEY not in str(info.value)
        with pytest.raises(CheckpointError, match="not signed"):
            store.read_positions()
    with pytest.raises(CheckpointError, match="signature check") as info:
        CheckpointStore(root, job="j", key="another key").load(1)
    assert KEY not in str(info.value)

    # tampering that keeps the checksums consistent is caught by the signature
    manifest_path = Path(root) / "chk-00000001" / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    evil = pickle.dumps({"job": {"x": "evil"}, "txns": {}, "read": {}})
    (Path(root) / "chk-00000001" / "state.pkl").write_bytes(evil)
    manifest["files"]["state.pkl"] = {"size": len(evil), "sha256": __import__("hashlib").sha256(evil).hexdigest()}
    manifest["checksum"] = store_mod._manifest_checksum(manifest)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="signature check"):
        signed.load(1)


def test_a_run_with_a_key_refuses_checkpoints_taken_without_it(tmp_path: Path) -> None:
    crash_midway(tmp_path, "exactly-once")
    with pytest.raises(CheckpointError, match="not signed") as info:
        resume(tmp_path, "exactly-once", checkpoint_key=KEY)
    assert KEY not in str(info.value)


# -- the CLI shows millstream's warnings, and reads the key from the environment --------------------------


JOB = str(Path(__file__).parent / "chaos" / "job.py")


def cli(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "millstream.cli", "run", JOB, "-q", "--progress", "off",
            "--set", "events=6000", "--set", "rate=30000", "--set", f"out={tmp_path / 'out.jsonl'}",
            "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-interval", "40", *extra]
    full = {**os.environ, **(env or {})}
    full.pop("MILLSTREAM_FAILPOINTS", None)
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=full)


def test_the_cli_shows_the_fallback_warning_and_uses_the_key(tmp_path: Path) -> None:
    env = {"MILLSTREAM_CHECKPOINT_KEY": KEY, "MILLSTREAM_FAILPOINTS": ""}
    first = cli(tmp_path, "--guarantee", "at-least-once", env=env)
    assert first.returncode == 0, first.stderr
    newest = sorted((tmp_path / "ck").glob("chk-*"))[-1]
    (newest / "MANIFEST.json").write_text("{}")
    again = cli(tmp_path, "--guarantee", "at-least-once", env=env)
    assert again.returncode == 0, again.stderr
    assert "millstream WARNING:" in again.stderr and "resuming from the older checkpoint" in again.stderr
    quiet = cli(tmp_path, "--guarantee", "at-least-once", "--log-level", "error", env=env)
    assert quiet.returncode == 0 and "WARNING" not in quiet.stderr
    wrong = cli(tmp_path, "--guarantee", "at-least-once", env={"MILLSTREAM_CHECKPOINT_KEY": "wrong"})
    assert wrong.returncode == 1 and "signature check" in wrong.stderr
    assert KEY not in wrong.stderr + again.stderr + first.stderr


def test_positions_rewritten_in_place_read_back_whatever_their_size(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "ck"), job="j")
    for n in (50, 3, 0, 80, 1):
        positions = {"src": {"position": list(range(n)), "read": n}}
        store.write_positions(positions)
        assert CheckpointStore(str(tmp_path / "ck"), job="j").read_positions() == positions
    store.close()


def test_nexmark_run_shows_millstream_logs_at_the_level_asked(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from millstream._cli import main

    args = ["nexmark", "run", "--query", "q1", "--events", "2000", "-q", "--out", str(tmp_path / "q1.jsonl"),
            "--guarantee", "at-least-once", "--checkpoint-dir", str(tmp_path / "ck")]
    assert main([*args, "--log-level", "debug"]) == 0
    assert "millstream DEBUG: checkpoint 1:" in capsys.readouterr().err
    assert not logging.getLogger("millstream").handlers[1:]  # the CLI's handler is removed again
    assert main(args) == 0
    assert "DEBUG" not in capsys.readouterr().err


# -- a directory's identity (SCOPE) is in what it writes: another directory's files are not taken for its own ------


def owned_store(root: Path, job: str = "job-1") -> CheckpointStore:
    root.mkdir(parents=True, exist_ok=True)
    owner = DirectoryOwner(str(root))
    owner.acquire()
    owner.release()  # the lock is not what these tests are about
    return CheckpointStore(str(root), job=job, owner=owner)


def test_a_checkpoint_copied_from_another_directory_of_the_same_job_is_refused(tmp_path: Path) -> None:
    # a twin run (the same command in another directory: the same job id) has checkpoints of the same ids;
    # one copied over this directory's used to load, with state that does not match this directory's output
    a, b = owned_store(tmp_path / "a"), owned_store(tmp_path / "b")
    assert a.owner is not None and b.owner is not None and a.owner.scope != b.owner.scope
    for store in (a, b):
        store.write(1, STATE, finished=False, meta={})
        store.write(2, STATE, finished=False, meta={})
        store.write_committed(2)
    shutil.rmtree(tmp_path / "a" / "chk-00000002")
    shutil.copytree(tmp_path / "b" / "chk-00000002", tmp_path / "a" / "chk-00000002")
    for store in (a, owned_store(tmp_path / "a")):  # the next run too: its SCOPE is not taken from the copy
        with pytest.raises(CheckpointError, match="written in another checkpoint directory"):
            store.load(2)
        assert store.load(1).state == STATE
    for name in ("COMMITTED", "positions.pkl"):
        if name == "positions.pkl":
            b.write_positions({"src": {"read": 1}})
        shutil.copyfile(tmp_path / "b" / name, tmp_path / "a" / name)
    with pytest.raises(CheckpointError, match="COMMITTED .* written in another checkpoint directory"):
        a.read_committed()
    with pytest.raises(CheckpointError, match="positions.pkl .* written in another checkpoint directory"):
        a.read_positions()


@pytest.mark.parametrize("damage", [b"", b"\xe5\x00garbage\n", b"0123456789ab\n", None])
def test_a_lost_or_damaged_scope_is_written_again_from_the_checkpoints(
        tmp_path: Path, damage: bytes | None, caplog: pytest.LogCaptureFixture) -> None:
    # a SCOPE file flipped to bytes outside ASCII failed every later run with a raw UnicodeDecodeError; a lost
    # one gave the directory a new identity, so that its own checkpoints looked foreign; one copied from another
    # directory (a valid scope every checkpoint and COMMITTED contradict) is the one that is wrong
    store = owned_store(tmp_path / "ck")
    assert store.owner is not None
    scope = store.owner.scope
    store.write(1, STATE, finished=False, meta={})
    store.write(2, STATE, finished=False, meta={})
    store.write_committed(2)
    path = tmp_path / "ck" / "SCOPE"
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="millstream"):
        again = owned_store(tmp_path / "ck")
    assert again.owner is not None and again.owner.scope == scope and path.read_text().strip() == scope
    assert "written again from checkpoint 2" in caplog.text
    assert again.load(1).state == again.load(2).state == STATE


def test_a_lost_scope_is_not_taken_from_a_checkpoint_copied_in(tmp_path: Path) -> None:
    a, b = owned_store(tmp_path / "a"), owned_store(tmp_path / "b")
    for store in (a, b):
        store.write(1, STATE, finished=False, meta={})
        store.write(2, STATE, finished=False, meta={})
    shutil.rmtree(tmp_path / "a" / "chk-00000002")
    shutil.copytree(tmp_path / "b" / "chk-00000002", tmp_path / "a" / "chk-00000002")
    (tmp_path / "a" / "SCOPE").unlink()
    again = owned_store(tmp_path / "a")  # the checkpoints disagree: neither is trusted
    for ckpt_id in (1, 2):
        with pytest.raises(CheckpointError, match="written in another checkpoint directory"):
            again.load(ckpt_id)


def test_a_lock_file_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ck" / LOCK).mkdir(parents=True)  # was: a raw IsADirectoryError from every run
    with pytest.raises(CheckpointError, match="(?s)cannot open the lock file .* remove"):
        resume(tmp_path, "exactly-once")
    (tmp_path / "ck" / LOCK).rmdir()
    assert resume(tmp_path, "exactly-once").ok


def test_a_run_through_another_spelling_of_its_directory_is_one_owner(tmp_path: Path) -> None:
    (tmp_path / "ck").mkdir()
    os.symlink(tmp_path / "ck", tmp_path / "link")
    first = DirectoryOwner(str(tmp_path / "ck"))
    first.acquire()
    try:
        with pytest.raises(CheckpointOwnershipError, match="in use by another run"):
            DirectoryOwner(str(tmp_path / "link")).acquire()
    finally:
        first.release()


@pytest.mark.parametrize("damage", ["truncated", "bit flipped"])
def test_a_damaged_staged_file_is_never_committed(tmp_path: Path, damage: str) -> None:
    # a crash after a checkpoint and before its sinks commit leaves its staged output for the resume to commit;
    # that file truncated meanwhile was committed as it was: rows lost, exit status 0
    from millstream._checkpoint import _failpoints

    _failpoints.arm("ckpt.before_commit=raise#3")
    try:
        with pytest.raises(_failpoints.FailpointError):
            resume(tmp_path, "exactly-once")
    finally:
        _failpoints.arm("")
    staged = sorted((tmp_path / "out").glob(".*.pending"))
    assert staged
    data = staged[-1].read_bytes()
    if damage == "truncated":
        staged[-1].write_bytes(data[:-3])
    else:
        at = len(data) // 2
        staged[-1].write_bytes(data[:at] + bytes([data[at] ^ 0x04]) + data[at + 1:])
    with pytest.raises(JobError, match="is damaged") as err:
        resume(tmp_path, "exactly-once")
    assert staged[-1].name in str(err.value) and "new checkpoint directory" in str(err.value)
    assert staged[-1].exists()  # nothing committed, nothing removed


def crash_at(tmp_path: Path, n: int) -> None:
    def crash(e: dict[str, Any]) -> dict[str, Any]:
        if e["id"] == n:
            raise KeyboardInterrupt
        return e

    windowed(sink_for(tmp_path, "exactly-once"), fail=crash).run(guarantee="exactly-once", **cfg(tmp_path))


def test_a_directory_restored_from_an_older_copy_is_refused_under_exactly_once(tmp_path: Path) -> None:
    # the copy is consistent in itself (COMMITTED, OWNER, SCOPE all old): only the output, whose part files
    # are named by checkpoint, shows checkpoints committed beyond the restored one (was: duplicated rows, exit 0)
    crash_at(tmp_path, 1_000)
    shutil.copytree(tmp_path / "ck", tmp_path / "ck.old")
    crash_at(tmp_path, 2_500)
    shutil.rmtree(tmp_path / "ck")
    shutil.copytree(tmp_path / "ck.old", tmp_path / "ck")
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    with pytest.raises(CheckpointError, match="hold output committed after checkpoint") as err:
        resume(tmp_path, "exactly-once", checkpoint_interval=1_000_000)
    assert "restored from an older copy" in str(err.value) and "fix:" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before  # nothing committed or removed


def test_a_directory_restored_from_an_older_copy_warns_under_at_least_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def run(fail: Any = identity) -> None:
        windowed(files.write(str(tmp_path / "out") + "/", transactional=True), fail=fail).run(
            guarantee="at-least-once", **cfg(tmp_path))

    def crash_at_id(n: int) -> Any:
        def crash(e: dict[str, Any]) -> dict[str, Any]:
            if e["id"] == n:
                raise KeyboardInterrupt
            return e
        return crash

    run(crash_at_id(1_000))  # stops as a crash would (no final checkpoint)
    shutil.copytree(tmp_path / "ck", tmp_path / "ck.old")
    run(crash_at_id(2_500))
    shutil.rmtree(tmp_path / "ck")
    shutil.copytree(tmp_path / "ck.old", tmp_path / "ck")
    caplog.set_level(logging.WARNING, logger="millstream")
    run()
    warned = [r.getMessage() for r in caplog.records if "hold output committed after checkpoint" in r.getMessage()]
    assert len(warned) == 1, warned
    got = Counter(json.dumps(r, sort_keys=True) for r in files.read_committed(tmp_path / "out"))
    assert not reference(tmp_path) - got  # nothing lost (output after the restored checkpoint repeats)


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_a_zombie_paused_in_its_recovery_leaves_the_new_owners_output_alone(
        tmp_path: Path, guarantee: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the first run pauses after restoring its state and before its sinks recover (a fresh start: they start an
    # empty output); its LOCK is deleted, a second run takes the directory over and finishes; the first wakes up.
    # It was fenced only at its first checkpoint, after its sinks had deleted the second run's committed part
    # files (or truncated its output file): both said the output stands, and a rerun said "already finished"
    from millstream._checkpoint import _coordinator

    real = _coordinator.failpoint

    def pause_here(name: str) -> None:
        real(name)
        if name == "recovery.restore":
            monkeypatch.setattr(_coordinator, "failpoint", real)
            os.remove(tmp_path / "ck" / LOCK)
            assert resume(tmp_path, guarantee).ok  # the second run, while the first "sleeps"

    monkeypatch.setattr(_coordinator, "failpoint", pause_here)
    with pytest.raises(CheckpointOwnershipError, match="no longer owns"):
        resume(tmp_path, guarantee)
    assert set(output(tmp_path, guarantee)) == set(reference(tmp_path))
