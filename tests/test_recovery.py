"""Checkpointed runs in process: resume, finished jobs, restarts, poison records, corrupt checkpoints."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import millstream as ms
from millstream.errors import CheckpointError, ConfigError, GuaranteeError, JobError
from millstream.testing import CollectSink, ManualClock, TestSource, TransactionalCollectSink

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")


def events(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "k": i % 5, "ts": i * 10} for i in range(n)]


def identity(e: dict[str, Any]) -> dict[str, Any]:
    return e


def windowed(sink: ms.connectors.Sink, n: int = 3_000, fail: Any = identity) -> ms.Flow:
    flow = ms.Flow("recovery")
    src = flow.source(ms.connectors.memory.read(events(n)), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
    src = src.map(fail, name="maybe-fail")
    (src.key_by("k").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"))
        .sink(sink))
    return flow


def reference(n: int = 3_000) -> Counter[str]:
    sink = ms.testing.CollectSink()
    windowed(sink, n).run()
    return Counter(repr(sorted(r.items())) for r in sink.values)


def as_counter(values: list[Any]) -> Counter[str]:
    return Counter(repr(sorted(r.items())) for r in values)


class TickingClock(ManualClock):
    """Processing time that moves 5 ms each time it is read: periodic checkpoints happen, deterministically."""

    def now_ms(self) -> int:
        self.advance(5)
        return super().now_ms()


def run_cfg(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {"checkpoint_dir": tmp_path / "ck", "checkpoint_interval": 100, "clock": TickingClock(), "max_chunk": 64,
            **kw}


def test_a_finished_job_run_again_does_nothing(tmp_path: Path) -> None:
    sink = TransactionalCollectSink()
    first = windowed(sink).run(guarantee="exactly-once", **run_cfg(tmp_path))
    assert as_counter(sink.values) == reference()
    assert first.checkpoints is not None and first.checkpoints.completed >= 2
    again = windowed(sink).run(guarantee="exactly-once", **run_cfg(tmp_path))
    assert again.already_finished
    assert as_counter(sink.values) == reference()  # nothing twice


def test_a_transient_failure_restarts_from_the_checkpoint_exactly_once(tmp_path: Path) -> None:
    failed = []

    def flaky(e: dict[str, Any]) -> dict[str, Any]:
        if e["id"] == 2_222 and not failed:
            failed.append(e["id"])
            raise ConnectionError("the enrichment service blinked")
        return e

    sink = TransactionalCollectSink()
    result = windowed(sink, fail=flaky).run(guarantee="exactly-once", restarts=2, restart_delay_s=0,
                                            **run_cfg(tmp_path))
    assert failed == [2_222] and result.restarts == 1
    assert result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert as_counter(sink.values) == reference()


def test_a_poison_record_fails_after_the_restart_budget_instead_of_looping(tmp_path: Path) -> None:
    seen = Counter[int]()

    def poison(e: dict[str, Any]) -> dict[str, Any]:
        if e["id"] == 1_500:
            seen[e["id"]] += 1
            raise ValueError("cannot parse this one")
        return e

    with pytest.raises(JobError, match="failed 3 times") as info:
        windowed(TransactionalCollectSink(), fail=poison).run(guarantee="exactly-once", restarts=2,
                                                              restart_delay_s=0, **run_cfg(tmp_path))
    assert seen[1_500] == 3
    assert isinstance(info.value.__cause__, ms.StepError)


def _checkpoints(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "ck").glob("chk-*"))


def _crash_midway(tmp_path: Path, guarantee: str) -> ms.testing.CollectSink:
    """Run until the input is half read, then stop as a crash would (no final checkpoint)."""
    def crash(e: dict[str, Any]) -> dict[str, Any]:
        if e["id"] == 2_000:
            raise KeyboardInterrupt  # stops the run without the final checkpoint
        return e

    sink = TransactionalCollectSink() if guarantee == "exactly-once" else ms.testing.CollectSink()
    result = windowed(sink, fail=crash).run(guarantee=guarantee, **run_cfg(tmp_path, checkpoints_retained=5))
    assert result.interrupted and len(_checkpoints(tmp_path)) >= 2
    return sink


def test_a_corrupt_latest_checkpoint_fails_loudly_under_exactly_once(tmp_path: Path) -> None:
    _crash_midway(tmp_path, "exactly-once")
    latest = _checkpoints(tmp_path)[-1] / "state.pkl"
    latest.write_bytes(latest.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="checksum"):
        windowed(TransactionalCollectSink()).run(guarantee="exactly-once", **run_cfg(tmp_path))


def test_at_least_once_falls_back_to_an_older_checkpoint(tmp_path: Path) -> None:
    _crash_midway(tmp_path, "at-least-once")
    latest = _checkpoints(tmp_path)[-1]
    os.remove(latest / "MANIFEST.json")
    sink = ms.testing.CollectSink()
    result = windowed(sink).run(guarantee="at-least-once", **run_cfg(tmp_path))
    assert result.checkpoints is not None
    assert result.checkpoints.restored_from is not None and result.checkpoints.restored_from < int(latest.name[4:])
    expected = reference()
    assert set(as_counter(sink.values)) <= set(expected)  # nothing foreign; earlier windows were output before


def test_resume_continues_where_the_checkpoint_left_off(tmp_path: Path) -> None:
    sink = _crash_midway(tmp_path, "exactly-once")  # the same sink object: it stands for the external system
    committed_before = len(sink.values)
    result = windowed(sink).run(guarantee="exactly-once", **run_cfg(tmp_path))
    assert result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert result.records_read < 3_000  # replayed from the checkpoint, not from the start
    assert 0 < committed_before < len(sink.values)
    assert as_counter(sink.values) == reference()


def test_guarantees_are_checked_before_running(tmp_path: Path) -> None:
    with pytest.raises(GuaranteeError, match="collect"):
        windowed(ms.testing.CollectSink()).run(guarantee="exactly-once", **run_cfg(tmp_path))
    assert not (tmp_path / "ck").exists() or not _checkpoints(tmp_path)


@pytest.mark.parametrize(("kw", "message"), [
    ({"guarantee": "exactly-once"}, "needs checkpoints"),
    ({"guarantee": "twice"}, "unknown guarantee"),
    ({"restarts": 2}, "restarts need a checkpoint_dir"),
    ({"checkpoint_dir": "x", "guarantee": "none"}, "guarantee is 'none'"),
])
def test_bad_run_options(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ms.RunConfig(**kw)


def test_checkpoint_dir_alone_means_at_least_once(tmp_path: Path) -> None:
    assert ms.RunConfig(checkpoint_dir=str(tmp_path)).effective_guarantee == "at-least-once"


def test_an_error_while_closing_a_failed_job_does_not_hide_the_original(tmp_path: Path) -> None:
    class BadClose(ms.connectors.Sink):
        def open(self, step: str) -> ms.connectors.SinkWriter:
            class W(ms.connectors.SinkWriter):
                def write(self, records: list[Any], times: list[int] | None) -> None:
                    pass

                def close(self) -> None:
                    raise OSError("disk went away while closing")

            return W()

        def describe(self) -> str:
            return "bad-close"

    def boom(e: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("the real problem")

    with pytest.raises(ms.StepError, match="the real problem"):
        windowed(BadClose(), fail=boom).run()


@pytest.mark.parametrize("transactional", [True, False])
def test_a_run_that_fails_while_starting_leaves_earlier_committed_output_alone(tmp_path: Path,
                                                                                transactional: bool) -> None:
    """A corrupt checkpoint (or any failure before the sinks recover) must not wipe durable output."""
    out = tmp_path / ("out" if transactional else "out.jsonl")
    guarantee = "exactly-once" if transactional else "at-least-once"

    def build() -> ms.Flow:
        return windowed(ms.connectors.files.write(out, transactional=transactional))

    build().run(guarantee=guarantee, **run_cfg(tmp_path))
    before = ms.connectors.files.read_committed(out) if transactional else out.read_text()
    assert before
    for chk in _checkpoints(tmp_path):
        (chk / "MANIFEST.json").write_text("{}")  # every checkpoint corrupt: the restart must refuse
    with pytest.raises(CheckpointError):
        build().run(guarantee=guarantee, **run_cfg(tmp_path))
    after = ms.connectors.files.read_committed(out) if transactional else out.read_text()
    assert after == before


def test_at_most_once_does_not_fire_windows_again_after_a_crash_at_the_end(tmp_path: Path) -> None:
    """Crash in the final checkpoint, after end of input fired every window: the restart emits nothing twice."""
    from millstream._checkpoint import _failpoints as fp

    out = tmp_path / "out.jsonl"
    fp.arm("ckpt.before_rename=raise#1")  # the only checkpoint is the final one, and it fails
    try:
        with pytest.raises(fp.FailpointError):
            windowed(ms.connectors.files.write(out)).run(
                guarantee="at-most-once", **run_cfg(tmp_path, checkpoint_interval=10**9))
    finally:
        fp.arm("")
    assert out.read_text()  # every window fired (and was written) before the crash
    result = windowed(ms.connectors.files.write(out)).run(
        guarantee="at-most-once", **run_cfg(tmp_path, checkpoint_interval=10**9))
    assert result.checkpoints is not None and result.checkpoints.lost == 3_000
    import json
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    windows = Counter((r["k"], r["window_start"]) for r in rows)
    assert max(windows.values()) == 1
    assert as_counter(rows) <= reference()


def test_a_changed_stateful_step_cannot_resume_from_old_checkpoints(tmp_path: Path) -> None:
    """Window state saved for one aggregation must not be read back by another; a stateless fix may resume."""
    sink = TransactionalCollectSink()  # one object: it stands for the external system across runs
    windowed(sink).run(guarantee="exactly-once", **run_cfg(tmp_path))

    changed = ms.Flow("recovery")
    (changed.source(ms.connectors.memory.read(events(100)), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
        .map(identity, name="maybe-fail")
        .key_by("k").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count(), ids=ms.agg.max("id"))
        .sink(TransactionalCollectSink()))
    with pytest.raises(CheckpointError, match="another flow"):
        changed.run(guarantee="exactly-once", **run_cfg(tmp_path))

    def renamed_but_same(e: dict[str, Any]) -> dict[str, Any]:
        return e

    assert windowed(sink, fail=renamed_but_same).run(guarantee="exactly-once", **run_cfg(tmp_path)).already_finished
    assert as_counter(sink.values) == reference()


@pytest.mark.native_only("takes its checkpoint in one mode and resumes it in another")
def test_a_checkpoint_resumes_in_any_mode(tmp_path: Any) -> None:
    """One flow's checkpoint directory goes on in every mode (tests/test_checkpoint_modes.py resumes
    mid-stream checkpoints); another flow's is still refused."""
    from millstream.errors import CheckpointError

    def flow(name: str = "modes") -> ms.Flow:
        f = ms.Flow(name)
        (f.source(TestSource([{"k": i % 3, "ts": i} for i in range(60)], chunk=5),
                  watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
         .key_by("k").window(ms.windows.tumbling(10)).aggregate(n=ms.agg.count()).sink(CollectSink()))
        return f
    ck = str(tmp_path / "ck")
    flow().run(mode="native", guarantee="at-least-once", checkpoint_dir=ck, checkpoint_interval=1)
    for mode in ("microbatch", "batch", "native"):
        result = flow().run(mode=mode, guarantee="at-least-once", checkpoint_dir=ck, checkpoint_interval=1)
        assert result.already_finished
    with pytest.raises(CheckpointError, match="another flow"):
        flow("other").run(mode="microbatch", guarantee="at-least-once", checkpoint_dir=ck, checkpoint_interval=1)


def test_at_least_once_does_not_fall_back_past_what_a_redelivery_source_acknowledged(tmp_path: Path) -> None:
    """A damaged newest checkpoint: at-least-once may resume from an older one for sources that replay
    from a position, never for one that replays by redelivery (what it acknowledged is gone)."""
    from millstream.testing import advance_processing_time

    class Redelivered(TestSource):
        replay = "redelivery"

    script: list[Any] = []
    for t in range(40):
        script += [{"k": "a", "ts": t}, advance_processing_time(10)]  # a checkpoint every few records
    for cls, refused in ((TestSource, False), (Redelivered, True)):
        ck = tmp_path / cls.__name__
        flow = ms.Flow("fallback")
        flow.source(cls(script)).sink(CollectSink())
        flow.run(guarantee="at-least-once", checkpoint_dir=ck, checkpoint_interval=20, clock=ManualClock())
        checkpoints = sorted(ck.glob("chk-*"))
        assert len(checkpoints) >= 2
        (checkpoints[-1] / "state.pkl").write_bytes(b"damaged")
        again = lambda: flow.run(guarantee="at-least-once", checkpoint_dir=ck, checkpoint_interval=20,  # noqa: E731
                                 clock=ManualClock())
        if refused:
            with pytest.raises(CheckpointError, match="replay by redelivery"):
                again()
        else:
            again()
