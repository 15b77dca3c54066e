"""The checkpoint store: atomic writes, retention, and detection of every kind of corruption (F4)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from millstream._checkpoint import CheckpointStore
from millstream._checkpoint import _failpoints as fp
from millstream.errors import CheckpointError

STATE = {"job": {"window": {"slices": {0: {"a": [3]}}}}, "txns": {}, "read": {"src": 10}}


def store(tmp_path: Path, job: str = "job-1", retain: int = 3) -> CheckpointStore:
    return CheckpointStore(str(tmp_path / "ck"), job=job, retain=retain)


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    s = store(tmp_path)
    size = s.write(1, STATE, finished=False, meta={"guarantee": "exactly-once"})
    assert size > 0 and s.ids() == [1]
    loaded = s.load(1)
    assert loaded.state == STATE and not loaded.finished
    assert loaded.manifest["guarantee"] == "exactly-once"


def test_retention_keeps_the_newest_and_removes_leftovers(tmp_path: Path) -> None:
    s = store(tmp_path, retain=2)
    for i in range(1, 6):
        s.write(i, STATE, finished=False, meta={})
        s.gc()
    os.makedirs(os.path.join(s.root, ".tmp-chk-00000009"))
    s.gc()
    assert s.ids() == [4, 5]
    assert not [n for n in os.listdir(s.root) if n.startswith(".tmp-")]


def _state_file(s: CheckpointStore, i: int) -> str:
    return os.path.join(s.root, f"chk-{i:08d}", "state.pkl")


def _manifest(s: CheckpointStore, i: int) -> str:
    return os.path.join(s.root, f"chk-{i:08d}", "MANIFEST.json")


def _flip_bit(path: str, rnd: random.Random) -> None:
    data = bytearray(Path(path).read_bytes())
    i = rnd.randrange(len(data))
    data[i] ^= 1 << rnd.randrange(8)
    Path(path).write_bytes(bytes(data))


CORRUPTIONS = {
    "flip a bit in the state": lambda s, r: _flip_bit(_state_file(s, 1), r),
    "flip a bit in the manifest": lambda s, r: _flip_bit(_manifest(s, 1), r),
    "truncate the state to 0": lambda s, r: Path(_state_file(s, 1)).write_bytes(b""),
    "truncate the state at random": lambda s, r: Path(_state_file(s, 1)).write_bytes(
        Path(_state_file(s, 1)).read_bytes()[: r.randrange(1, os.path.getsize(_state_file(s, 1)))]),
    "truncate the manifest at random": lambda s, r: Path(_manifest(s, 1)).write_bytes(
        Path(_manifest(s, 1)).read_bytes()[: r.randrange(0, os.path.getsize(_manifest(s, 1)))]),
    "delete the manifest": lambda s, r: os.remove(_manifest(s, 1)),
    "delete the state": lambda s, r: os.remove(_state_file(s, 1)),
    "append garbage to the state": lambda s, r: Path(_state_file(s, 1)).write_bytes(
        Path(_state_file(s, 1)).read_bytes() + b"x"),
    "a stale manifest from another checkpoint": lambda s, r: (s.write(2, {"other": 1}, finished=False, meta={}),
                                                            os.replace(_manifest(s, 2), _manifest(s, 1))),
    "a manifest edited by hand": lambda s, r: Path(_manifest(s, 1)).write_text(
        json.dumps({**json.loads(Path(_manifest(s, 1)).read_text()), "finished": True})),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@pytest.mark.parametrize("seed", range(5))
def test_every_corruption_is_detected(tmp_path: Path, kind: str, seed: int) -> None:
    s = store(tmp_path)
    s.write(1, STATE, finished=False, meta={})
    CORRUPTIONS[kind](s, random.Random(seed))
    with pytest.raises(CheckpointError):
        s.load(1)


def test_checkpoint_of_another_flow_is_refused(tmp_path: Path) -> None:
    store(tmp_path, job="job-1").write(1, STATE, finished=False, meta={})
    with pytest.raises(CheckpointError, match="another flow"):
        store(tmp_path, job="job-2").load(1)


@pytest.mark.parametrize("point", ["ckpt.mid_state", "ckpt.state_written", "ckpt.state_synced",
                                   "ckpt.mid_manifest", "ckpt.before_rename"])
def test_a_write_interrupted_before_the_rename_leaves_no_checkpoint(tmp_path: Path, point: str) -> None:
    s = store(tmp_path)
    s.write(1, STATE, finished=False, meta={})
    fp.arm(f"{point}=raise")
    try:
        with pytest.raises(fp.FailpointError):
            s.write(2, {"newer": True}, finished=False, meta={})
    finally:
        fp.arm("")
    assert s.ids() == [1]
    assert s.load(1).state == STATE
    s.gc()
    assert not [n for n in os.listdir(s.root) if n.startswith(".tmp-")]


def test_failpoint_spec_parsing() -> None:
    arms = fp._parse("ckpt.begin=kill#3, sink.commit=raise:0.5,ckpt.gc")
    assert arms["ckpt.begin"].action == "kill" and arms["ckpt.begin"].nth == 3
    assert arms["sink.commit"].probability == 0.5 and arms["sink.commit"].action == "raise"
    assert arms["ckpt.gc"].action == "kill"
    with pytest.raises(ValueError):
        fp._parse("ckpt.begin=explode")


# -- a file a resume reads replaced by something else: a CheckpointError, never a raw OSError or KeyError ---------


def test_a_record_replaced_by_a_directory_is_a_checkpoint_error(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.write_committed(1)
    s.write_positions({"src": {"read": 1}})
    for name, read in (("COMMITTED", s.read_committed), ("positions.pkl", s.read_positions)):
        os.remove(tmp_path / "ck" / name)
        os.mkdir(tmp_path / "ck" / name)
        with pytest.raises(CheckpointError, match=f"{name} in .* cannot be read"):
            read()


def test_a_record_that_cannot_be_written_is_a_checkpoint_error(tmp_path: Path) -> None:
    # at-least-once goes on past an unreadable COMMITTED (a directory in its place), then failed its first
    # checkpoint with a raw IsADirectoryError
    s = store(tmp_path)
    os.mkdir(tmp_path / "ck" / "COMMITTED")
    with pytest.raises(CheckpointError, match="(?s)cannot write COMMITTED .*Is a directory.*fix:"):
        s.write_committed(1)


def test_a_checkpoint_folder_replaced_by_a_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.write(1, {"x": 1}, finished=False, meta={})
    path = s.path_of(1)
    shutil.rmtree(path)
    Path(path).write_text("x")
    with pytest.raises(CheckpointError, match="MANIFEST.json cannot be read"):
        s.load(1)


@pytest.mark.parametrize("change", ["no files", "files not a dict", "shared not a dict", "size not an int"])
def test_a_manifest_checksummed_again_after_an_edit_is_refused_clearly(tmp_path: Path, change: str) -> None:
    # without a key, an edited manifest with a recomputed checksum passes the checksum: its shape is checked
    # before it is used (was: a raw KeyError/AttributeError)
    from millstream._checkpoint._store import _manifest_checksum

    s = store(tmp_path)
    s.write(1, {"x": 1}, finished=False, meta={})
    path = Path(s.path_of(1)) / "MANIFEST.json"
    m = json.loads(path.read_bytes())
    if change == "no files":
        del m["files"]
    elif change == "files not a dict":
        m["files"] = ["state.pkl"]
    elif change == "shared not a dict":
        m["shared"] = ["x"]
    else:
        m["files"]["state.pkl"]["size"] = "12"
    m["checksum"] = _manifest_checksum(m)
    path.write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="does not list its files"):
        s.load(1)
