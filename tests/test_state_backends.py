"""Keyed-state backends: one conformance suite for every backend, key groups, incremental
snapshots, checkpoint files (checksums, GC) and recovery with the on-disk backend."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import millstream as ms
from millstream._runtime._keyed import ProcessOperator
from millstream._state import (
    DEFAULT_KEY_GROUPS,
    MemoryBackend,
    StateBackend,
    decode_key,
    encode_key,
    key_group,
    open_backend,
    split_key_groups,
)
from millstream.errors import CheckpointError, ConfigError
from millstream.testing import ManualClock, TestSource, TransactionalCollectSink
from test_recovery import TickingClock

pytest.importorskip("lmdb")

BACKENDS = ["memory", "lmdb"]


def url(kind: str, tmp_path: Path, **opts: int) -> str:
    query = "&".join(f"{k}={v}" for k, v in opts.items())
    if kind == "memory":
        return "memory" if not query else f"memory://?{query}"
    return f"lmdb://{tmp_path / 'live'}" + (f"?{query}" if query else "")


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend(kind: str, tmp_path: Path) -> Iterator[StateBackend]:
    b = open_backend(url(kind, tmp_path, cache=64))  # a small cache: the on-disk path is exercised
    yield b
    b.close()


def contents(b: StateBackend, op: str = "op", state: str = "s") -> dict[Any, Any]:
    return dict(b.keyed_map(op, state).items())


# -- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "card-17", "é\udc80", 0, -5, 2**80, 2.5, float("inf"), None, b"\x00x",
                                 ("a", 1), ("a", ("b", None)), ()])
def test_keys_round_trip_through_their_encoding(key: Any) -> None:
    assert decode_key(encode_key(key)) == key
    assert 0 <= key_group(key) < DEFAULT_KEY_GROUPS


def test_equal_keys_share_encoding_and_group_as_in_a_dict() -> None:
    assert encode_key(1) == encode_key(1.0) == encode_key(True)
    assert encode_key(0) == encode_key(-0.0)
    assert encode_key("1") != encode_key(1)


def test_key_groups_are_stable_across_processes() -> None:
    # fixed values: crc32 of the canonical encoding, never Python's salted hash
    assert [key_group(k) for k in ("a", "card-17", 42, ("x", 1))] == [
        key_group("a"), 104, key_group(42), key_group(("x", 1))]
    import subprocess
    import sys
    code = "from millstream._state import key_group; print([key_group(k) for k in ('a', 'b', ('c', 3), 7.5)])"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert outs == {f"{[key_group(k) for k in ('a', 'b', ('c', 3), 7.5)]}\n"}


def test_split_key_groups_covers_every_group_once() -> None:
    parts = split_key_groups(128, 3)
    assert sorted(g for r in parts for g in r) == list(range(128))


# -- conformance -----------------------------------------------------------------------------


def test_get_set_delete_contains_len_iterate(backend: StateBackend) -> None:
    m = backend.keyed_map("op", "s")
    assert m.get("a") is None and "a" not in m and len(m) == 0
    for i in range(500):
        m[f"k{i}"] = {"n": i}
    m[("t", 1)] = [1, 2]
    assert m.get("k7") == {"n": 7} and m["k499"] == {"n": 499} and ("t", 1) in m
    del m["k7"]
    assert m.pop("k8") == {"n": 8} and m.pop("k8", "gone") == "gone"
    with pytest.raises(KeyError):
        del m["k7"]
    with pytest.raises(KeyError):
        m["nope"]
    m["k9"] = "changed"
    expected = {f"k{i}": {"n": i} for i in range(500) if i not in (7, 8)} | {("t", 1): [1, 2], "k9": "changed"}
    assert len(m) == len(expected) and set(m) == set(expected) and dict(m.items()) == expected
    other = backend.keyed_map("op", "other")
    assert len(other) == 0 and backend.keyed_map("op", "s") is m


def test_snapshot_restore_round_trip(kind: str, backend: StateBackend, tmp_path: Path) -> None:
    a, b = backend.keyed_map("op", "a"), backend.keyed_map("op2", "b")
    for i in range(1_000):
        a[i] = i * 2
        b[("k", i)] = [i]
    handle = backend.snapshot(1, str(tmp_path / "shared"))
    handle = pickle.loads(pickle.dumps(handle))
    a[5] = "after"
    fresh = open_backend(url(kind, tmp_path / "second"))
    try:
        fresh.keyed_map("op", "a")
        fresh.restore(handle, str(tmp_path / "shared"))
        assert contents(fresh, "op", "a") == {i: i * 2 for i in range(1_000)}
        assert contents(fresh, "op2", "b") == {("k", i): [i] for i in range(1_000)}
    finally:
        fresh.close()
    backend.restore(handle, str(tmp_path / "shared"))  # restore replaces what is there
    assert backend.keyed_map("op", "a")[5] == 10


@pytest.mark.parametrize("inline", [False, True])
def test_a_restore_with_two_workers_splits_the_key_groups(kind: str, backend: StateBackend, tmp_path: Path,
                                                          inline: bool) -> None:
    m = backend.keyed_map("op", "s")
    for i in range(2_000):
        m[f"user-{i}"] = i
    directory = None if inline else str(tmp_path / "shared")
    handle = backend.snapshot(1, directory)
    workers = [open_backend(url(kind, tmp_path / f"w{w}")) for w in range(2)]
    try:
        parts = []
        for w, groups in zip(workers, split_key_groups(DEFAULT_KEY_GROUPS, 2)):
            w.restore(handle, directory, key_groups=groups)
            part = contents(w)
            assert all(key_group(k) in groups for k in part)
            parts.append(part)
        assert parts[0].keys().isdisjoint(parts[1].keys())
        assert parts[0] | parts[1] == {f"user-{i}": i for i in range(2_000)}
        assert 800 < len(parts[0]) < 1_200
    finally:
        for w in workers:
            w.close()


def test_a_snapshot_restores_into_the_other_backend(tmp_path: Path) -> None:
    mem, disk = MemoryBackend(), open_backend(url("lmdb", tmp_path))
    try:
        for src, dst in ((mem, disk), (disk, mem)):
            src.keyed_map("op", "s").update({i: str(i) for i in range(300)})
            h = src.snapshot(1, str(tmp_path / "shared"))
            dst.restore(h, str(tmp_path / "shared"))
            assert contents(dst) == {i: str(i) for i in range(300)}
    finally:
        disk.close()


def test_key_groups_must_match_between_snapshot_and_restore(kind: str, tmp_path: Path) -> None:
    b = open_backend(url(kind, tmp_path, key_groups=64))
    try:
        b.keyed_map("op", "s")["x"] = 1
        h = b.snapshot(1, None)
    finally:
        b.close()
    other = open_backend(url(kind, tmp_path / "o"))
    try:
        with pytest.raises(CheckpointError, match="key groups"):
            other.restore(h)
    finally:
        other.close()


def test_incremental_snapshots_write_only_changed_key_groups(tmp_path: Path) -> None:
    b = open_backend(url("lmdb", tmp_path, cache=100))
    shared = tmp_path / "shared"
    try:
        m = b.keyed_map("op", "s")
        for i in range(5_000):
            m[i] = i
        first = b.snapshot(1, str(shared))
        assert len(first["groups"]) == DEFAULT_KEY_GROUPS and len(first["written"]) == DEFAULT_KEY_GROUPS
        touched = [k for k in range(5_000) if key_group(k) in (3, 77)]
        for k in touched:
            m[k] = -k
        second = b.snapshot(2, str(shared))
        assert sorted(second["written"]) == ["kg-0003-c00000002.pkl", "kg-0077-c00000002.pkl"]
        written_bytes = sum(second["files"][n]["size"] for n in second["written"])
        assert written_bytes * 20 < sum(f["size"] for f in second["files"].values())
        unchanged = [kg for kg in second["groups"] if kg not in (3, 77)]
        assert all(second["groups"][kg] == first["groups"][kg] for kg in unchanged)
        third = b.snapshot(3, str(shared))  # nothing changed: nothing written
        assert third["written"] == [] and third["groups"] == second["groups"]
        fresh = open_backend(url("lmdb", tmp_path / "r"))
        try:
            fresh.restore(second, str(shared))
            assert contents(fresh) == {k: (-k if k in set(touched) else k) for k in range(5_000)}
            # after a restore, snapshots stay incremental
            fresh.keyed_map("op", "s")[touched[0]] = "x"
            assert len(fresh.snapshot(4, str(shared))["written"]) == 1
        finally:
            fresh.close()
    finally:
        b.close()


def test_deleting_the_last_key_of_a_group_drops_the_group(tmp_path: Path) -> None:
    b = open_backend(url("lmdb", tmp_path))
    try:
        m = b.keyed_map("op", "s")
        m["only"] = 1
        b.snapshot(1, str(tmp_path / "sh"))
        del m["only"]
        assert b.snapshot(2, str(tmp_path / "sh"))["groups"] == {}
    finally:
        b.close()


@pytest.mark.parametrize("spec", ["mongodb://x", "lmdb://", "lmdb:///x?cache=no", "lmdb:///x?colour=1", 7])
def test_bad_state_urls_are_config_errors(spec: Any) -> None:
    with pytest.raises(ConfigError):
        ms.RunConfig(state=spec)


def test_cli_takes_a_state_url(tmp_path: Path) -> None:
    from millstream._cli import _parser

    args = _parser().parse_args(["run", "job.py", "--state", f"lmdb://{tmp_path}"])
    assert args.state == f"lmdb://{tmp_path}"


# -- through process functions ----------------------------------------------------------------


def counting(flow: ms.Flow, events: list[dict[str, Any]], ttl: int | None = None) -> ms.testing.CollectSink:
    spec = ms.state.value(default=0) if ttl is None else ms.state.value(default=0, ttl=ttl)

    def fn(ctx: ms.Context, r: dict[str, Any]) -> None:
        n = ctx.state["n"].value() + 1
        ctx.state["n"].update(n)
        ctx.state["seen"].add(r["id"] % 7)
        ctx.state["last"].put("id", r["id"])
        ctx.emit((ctx.key, n, len(ctx.state["seen"].get()), ctx.state["last"].get("id")))

    sink = ms.testing.CollectSink()
    src = flow.source(TestSource(events, chunk=500), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
    src.key_by("k").process(fn, state={"n": spec, "seen": ms.state.list(), "last": ms.state.map()},
                            name="count").sink(sink)
    return sink


def test_state_ttl_through_the_process_operator(kind: str, tmp_path: Path) -> None:
    events = [{"id": i, "k": f"k{i % 3}", "ts": i * 10} for i in range(60)]
    flow = ms.Flow("ttl")
    sink = counting(flow, events, ttl=25)
    flow.run(state=url(kind, tmp_path, cache=2), clock=ManualClock())
    # event time moves 30 ms between records of one key: the count expires every time
    assert [v[1] for v in sink.values] == [1] * 60


def test_ttl_cleanup_empties_the_backend(kind: str, tmp_path: Path) -> None:
    events = [{"id": i, "k": f"k{i % 50}", "ts": i} for i in range(200)]
    flow = ms.Flow("ttl")
    counting(flow, events, ttl=5)
    from millstream._runtime._base import Runtime
    from millstream._runtime._native import NativeJob

    job = NativeJob(flow.plan(), Runtime(ManualClock(), open_backend(url(kind, tmp_path))))
    job.open()
    while job.step(2048)[1]:
        pass
    op = next(o for o in job.ops if isinstance(o, ProcessOperator))
    assert len(op.stores["n"]) == 0  # the end of input moved the watermark past every expiry
    job.close()


def test_unsupported_keys_fail_naming_the_step(kind: str, tmp_path: Path) -> None:
    flow = ms.Flow("bad-key")
    events = [{"id": 1, "k": ["a", "list"], "ts": 1}]
    counting(flow, events)
    with pytest.raises(ms.StepError, match="count") as info:
        flow.run(state=url(kind, tmp_path))
    assert "keys must be str, int" in str(info.value)


def test_200k_keys_on_disk_give_the_in_memory_output(tmp_path: Path) -> None:
    events = [{"id": i, "k": f"user-{(i * 7919) % 200_000}", "ts": i} for i in range(260_000)]
    outs = []
    for spec in ("memory", url("lmdb", tmp_path, cache=20_000)):
        flow = ms.Flow("big")
        sink = counting(flow, events)
        flow.run(state=spec)
        outs.append(sink.values)
    assert len(outs[0]) == 260_000 and outs[0] == outs[1]
    assert not list((tmp_path / "live").iterdir())  # the scratch store is removed at the end


# -- checkpoints and recovery -------------------------------------------------------------------


def keyed_flow(sink: Any, n: int = 4_000, crash_at: int | None = None) -> ms.Flow:
    flow = ms.Flow("keyed-recovery")
    events = [{"id": i, "k": f"k{i % 300}", "ts": i * 10} for i in range(n)]

    def crash(e: dict[str, Any]) -> dict[str, Any]:
        if e["id"] == crash_at:
            raise KeyboardInterrupt  # stops the run as a crash would: no final checkpoint
        return e

    def fn(ctx: ms.Context, r: dict[str, Any]) -> None:
        total = ctx.state["total"].value() + r["id"]
        ctx.state["total"].update(total)
        ctx.emit({"k": ctx.key, "id": r["id"], "total": total})

    src = flow.source(ms.connectors.memory.read(events), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
    (src.map(crash, name="maybe-crash").key_by("k")
        .process(fn, state={"total": ms.state.value(default=0)}, name="totals").sink(sink))
    return flow


def as_counter(values: list[Any]) -> Counter[str]:
    return Counter(repr(sorted(v.items())) for v in values)


def run_cfg(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {"checkpoint_dir": tmp_path / "ck", "checkpoint_interval": 100, "clock": TickingClock(),
            "max_chunk": 64, "state": url("lmdb", tmp_path, cache=100), "guarantee": "exactly-once", **kw}


def shared_files(tmp_path: Path) -> set[str]:
    return set(os.listdir(tmp_path / "ck" / "shared"))


def test_recovery_after_a_crash_with_the_on_disk_backend(tmp_path: Path) -> None:
    expected = ms.testing.CollectSink()
    keyed_flow(expected).run()
    sink = TransactionalCollectSink()
    first = keyed_flow(sink, crash_at=2_500).run(**run_cfg(tmp_path, checkpoints_retained=2))
    assert first.interrupted and first.checkpoints is not None and first.checkpoints.completed >= 3
    ckpts = sorted((tmp_path / "ck").glob("chk-*"))
    assert len(ckpts) == 2
    # every shared file is referenced by a retained checkpoint, and covered by its checksums
    import json
    referenced = set().union(*(json.loads((c / "MANIFEST.json").read_text())["shared"] for c in ckpts))
    assert shared_files(tmp_path) == referenced
    result = keyed_flow(sink).run(**run_cfg(tmp_path))
    assert result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert result.records_read < 4_000
    assert as_counter(sink.values) == as_counter(expected.values)
    # old files are collected as checkpoints are
    latest = sorted((tmp_path / "ck").glob("chk-*"))
    referenced = set().union(*(json.loads((c / "MANIFEST.json").read_text())["shared"] for c in latest))
    assert shared_files(tmp_path) == referenced


def test_a_corrupt_shared_state_file_is_detected(tmp_path: Path) -> None:
    sink = TransactionalCollectSink()
    keyed_flow(sink, crash_at=2_500).run(**run_cfg(tmp_path))
    victim = sorted((tmp_path / "ck" / "shared").iterdir())[-1]
    victim.write_bytes(victim.read_bytes()[:-3] + b"xyz")
    with pytest.raises(CheckpointError, match="shared state file .* fails its checksum"):
        keyed_flow(TransactionalCollectSink()).run(**run_cfg(tmp_path))


def test_a_job_can_resume_with_the_other_backend(tmp_path: Path) -> None:
    expected = ms.testing.CollectSink()
    keyed_flow(expected).run()
    sink = TransactionalCollectSink()
    keyed_flow(sink, crash_at=2_500).run(**run_cfg(tmp_path))
    keyed_flow(sink).run(**run_cfg(tmp_path, state="memory"))
    assert as_counter(sink.values) == as_counter(expected.values)
