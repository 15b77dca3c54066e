"""A checkpoint moves between execution modes (issue 11, section 1).

A job fails after a mid-stream checkpoint taken in one mode and is run again in another: native →
micro-batch, micro-batch → native, micro-batch → batch. The vectorised operators of the columnar
modes keep columnar state (frames of rows with the key columns), the native ones dicts per key; a
native operator restored from a columnar snapshot takes it converted as a hand-over gives it, and a
vectorised operator restored from a native snapshot becomes its native twin's stand-in (per record
from there on, with a PerformanceWarning naming the step). What the transactional sinks committed
equals, exactly once, an uninterrupted run's output in the mode resumed in and a plain-Python oracle's.

Each flow reads JSON-lines files (paced, so that checkpoints come during the run): in the columnar
modes the source makes columnar batches, in native mode rows, and a position taken one way is resumed
the other. The checkpoint restored is checked to hold pending state of every keyed step in the form
of the mode that took it.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.test_parallel import _shm, clean  # noqa: F401 - the fixture: no process, nothing in /dev/shm left
from tests.test_rescale_columnar import HELD, JOIN, SHAPES, event, oracle_joins, oracle_windows, reference_runs, right
from tests.test_rescale_keyed import RATE, RUN, WM, N, _checkpoint, _failing, _outputs, _states

import millstream as ms
from millstream import agg, col
from millstream._checkpoint import _coordinator
from millstream.connectors._pace import paced
from millstream.errors import CheckpointError, JobError, PerformanceWarning

pytestmark = [pytest.mark.usefixtures("clean"),
              pytest.mark.filterwarnings("ignore::millstream.errors.PerformanceWarning")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The events as JSON-lines files, in id order (the order the oracle's running totals take)."""
    where = tmp_path_factory.mktemp("inputs")
    for name, fn in (("events", event), ("right", right)):
        (where / f"{name}.jsonl").write_text("".join(json.dumps(fn(i)) + "\n" for i in range(N)))
    return where


def _read(flow: ms.Flow, path: Path, name: str) -> ms.Stream:
    return flow.source(paced(ms.connectors.files.read(str(path)), RATE), name=name,
                       watermark=ms.WatermarkStrategy.bounded(WM, timestamp="ts"))


def _sink(stream: ms.Stream, out: Path, name: str) -> None:
    stream.sink(ms.connectors.files.write(str(out / name), transactional=True), name=f"{name}.out")


# -- the flows: the steps of tests/test_rescale_columnar.py, over files --------------------------------


def windows(inputs: Path, out: Path, marker: Path | None, ck: Path) -> ms.Flow:
    flow = ms.Flow("modes-windows")
    events = _read(flow, inputs / "events.jsonl", "events").map(_failing(marker, ck), name="fail_once")
    aggs = {"n": agg.count(), "ids": agg.sum("id")}
    _sink(events.key_by(col("id") % 17, name="g").window(ms.windows.tumbling(1_000), name="tumbling")
          .aggregate(**aggs), out, "tumbling")
    _sink(events.key_by(["key", "y"]).window(ms.windows.sliding(1_000, every=500), name="sliding").aggregate(**aggs),
          out, "sliding")
    _sink(events.key_by("key").window(ms.windows.session(420), name="session").aggregate(**aggs), out, "session")
    _sink(events.key_by("key").aggregate(name="running", n=agg.count(), ids=agg.sum("id")), out, "running")
    return flow


def joins(inputs: Path, out: Path, marker: Path | None, ck: Path) -> ms.Flow:
    flow = ms.Flow("modes-joins")
    left = _read(flow, inputs / "events.jsonl", "left").map(_failing(marker, ck), name="fail_once")
    other = _read(flow, inputs / "right.jsonl", "right")
    _sink(left.key_by("key").window_join(other.key_by("key"), ms.windows.tumbling(1_000), name="window"),
          out, "window")
    _sink(left.key_by("s").window_join(other.key_by("s"), ms.windows.sliding(1_000, every=500), name="sliding"),
          out, "sliding")
    _sink(left.key_by("key").interval_join(other.key_by("key"), lower=-300, upper=300, name="interval"),
          out, "interval")
    # with a TTL (no pair is that far apart in event time), so that every checkpoint does not copy every record
    _sink(left.key_by("id").join(other.key_by("id"), ttl=2_000, name="regular"), out, "regular")
    return flow


Build = Callable[[Path, Path, Path | None, Path], ms.Flow]
FLOWS: dict[str, tuple[Build, Callable[[], dict[str, Counter[str]]]]] = {
    "windows": (windows, oracle_windows),
    "joins": (joins, oracle_joins),
}


def _any(states: list[Any], field: str) -> bool:
    return any(s[field] for s in states)


#: per flow and step: a native checkpoint holds the native operator's own state, with something pending
NATIVE_HELD: dict[str, dict[str, Callable[[list[Any]], bool]]] = {
    "windows": {
        "tumbling": lambda st: _any(st, "slices"),
        "sliding": lambda st: _any(st, "slices"),
        "session": lambda st: _any(st, "sessions"),
        "running": lambda st: _any(st, "state"),
    },
    "joins": {
        "window": lambda st: _any(st, "slices"),
        "sliding": lambda st: _any(st, "slices"),
        "interval": lambda st: any(s["sides"][0] and s["sides"][1] for s in st),
        "regular": lambda st: any(s["sides"][0] and s["sides"][1] for s in st),
    },
}


def _check_held(flow: str, mode: str, parts: list[dict[str, Any]], ckpt: int) -> None:
    """The checkpoint holds, for every keyed step, the state of ``mode``'s operator with something pending."""
    held = NATIVE_HELD[flow] if mode == "native" else HELD[flow]
    for step, pending in held.items():
        states = _states(parts, step)
        assert states, step
        for s in states:
            if mode == "native":
                assert "native" not in s and not (set(s) == JOIN or set(s) in SHAPES.values()), f"{step}: {s}"
            else:  # the vectorised operator's own state, not its native twin's
                assert set(s) == (SHAPES[step] if flow == "windows" else JOIN), f"{step}: {s}"
        assert pending(states), f"checkpoint {ckpt} holds no pending state of {step!r}"


@pytest.fixture(scope="module")
def reference(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], dict[str, Counter[str]]]:
    """Per flow and mode, the output of an uninterrupted run (checked against the oracle)."""
    return reference_runs(tmp_path_factory, FLOWS,
                          lambda build, out, mode: build(inputs, out, None, out / "ck").run(mode=mode))


def _fail(build: Build, inputs: Path, tmp_path: Path, mode: str, parallelism: int = 1) -> tuple[Path, Path, Path]:
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with pytest.raises(JobError, match="boom"):
        build(inputs, out, marker, ck).run(mode=mode, parallelism=parallelism, checkpoint_dir=str(ck), **RUN)
    return out, ck, marker


MOVES = [("native", "microbatch"), ("microbatch", "native"), ("microbatch", "batch")]


@pytest.mark.parametrize("flow", sorted(FLOWS))
@pytest.mark.parametrize(("first", "then"), MOVES)
def test_a_checkpoint_taken_in_one_mode_resumes_in_another_exactly_once(
        first: str, then: str, flow: str, inputs: Path, tmp_path: Path,
        reference: Callable[[str, str], dict[str, Counter[str]]]) -> None:
    want = reference(flow, then)
    build, _ = FLOWS[flow]
    out, ck, marker = _fail(build, inputs, tmp_path, first)
    ckpt, n, parts = _checkpoint(ck)
    assert ckpt > 0 and n == 1
    _check_held(flow, first, parts, ckpt)
    partial = _outputs(out, list(want))
    assert any(partial[s] != want[s] for s in want), "the failed run had committed everything already"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PerformanceWarning)
        result = build(inputs, out, marker, ck).run(mode=then, checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == ckpt
    got = _outputs(out, list(want))
    for sink in want:
        assert got[sink] == want[sink], sink
    per_record = {str(w.message).split("'")[1] for w in caught
                  if "restored from a checkpoint taken in native mode" in str(w.message)}
    # from native state a vectorised step runs per record (named); from columnar state none does
    assert per_record == (set(NATIVE_HELD[flow]) if first == "native" else set())


@pytest.mark.parametrize(("first", "then", "parallelism"),
                         [("microbatch", "native", 2), ("microbatch", "native", 1), ("native", "microbatch", 2)])
def test_a_checkpoint_of_two_workers_resumes_in_another_mode(
        first: str, then: str, parallelism: int, inputs: Path, tmp_path: Path,
        reference: Callable[[str, str], dict[str, Counter[str]]]) -> None:
    """Taken at parallelism 2, each worker's part in its mode's form; resumed in the other mode at 2 (each
    worker restores its own part) or at 1 (the parts split by key group and merged, then converted)."""
    want = reference("windows", then)
    out, ck, marker = _fail(windows, inputs, tmp_path, first, parallelism=2)
    ckpt, n, parts = _checkpoint(ck)
    assert ckpt > 0 and n == 2
    _check_held("windows", first, parts, ckpt)
    result = windows(inputs, out, marker, ck).run(mode=then, parallelism=parallelism, checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == ckpt
    got = _outputs(out, list(want))
    for sink in want:
        assert got[sink] == want[sink], sink


@pytest.mark.parametrize("then", ["native", "microbatch"])
def test_a_micro_batch_checkpoint_resumes_with_state_on_disk(
        then: str, inputs: Path, tmp_path: Path, reference: Callable[[str, str], dict[str, Counter[str]]]) -> None:
    """The vectorised operators' state, taken in memory, goes into the on-disk backend of a native run, and of
    a micro-batch run (whose windows and aggregates then run their native operators): converted to the
    native operators' in-memory snapshot first, which a run on disk loads into its backend."""
    pytest.importorskip("lmdb")
    want = reference("windows", then)
    out, ck, marker = _fail(windows, inputs, tmp_path, "microbatch")
    ckpt, _, parts = _checkpoint(ck)
    _check_held("windows", "microbatch", parts, ckpt)
    result = windows(inputs, out, marker, ck).run(mode=then, checkpoint_dir=str(ck), state=f"lmdb://{tmp_path}/state",
                                                  **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == ckpt
    got = _outputs(out, list(want))
    for sink in want:
        assert got[sink] == want[sink], sink


# -- the flow's identity -----------------------------------------------------------------------------


def test_a_checkpoint_of_before_this_change_resumes_in_its_own_mode(
        inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reference: Callable[[str, str], dict[str, Counter[str]]]) -> None:
    """Checkpoint directories written while micro-batch checkpoints carried their own fingerprint (the
    flow's with ``|columnar``) still resume."""
    want = reference("windows", "microbatch")
    with monkeypatch.context() as m:
        def old(plan: Any, *, sink_targets: bool = True) -> tuple[str, frozenset[str]]:
            return _coordinator.fingerprint(plan, sink_targets=sink_targets, family="|columnar"), frozenset()

        m.setattr(_coordinator, "fingerprints", old)
        out, ck, marker = _fail(windows, inputs, tmp_path, "microbatch")
        plan = windows(inputs, out, marker, ck).plan()
        assert json.loads(next(ck.glob("chk-*/MANIFEST.json")).read_text())["job"] == old(plan)[0]
    ckpt, _, _ = _checkpoint(ck)
    result = windows(inputs, out, marker, ck).run(mode="microbatch", checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == ckpt
    got = _outputs(out, list(want))
    for sink in want:
        assert got[sink] == want[sink], sink


def test_a_checkpoint_of_another_flow_is_still_refused(inputs: Path, tmp_path: Path) -> None:
    out, ck, marker = _fail(windows, inputs, tmp_path, "microbatch")
    with pytest.raises(CheckpointError, match="belongs to another flow"):
        joins(inputs, out, marker, ck).run(mode="native", checkpoint_dir=str(ck), **RUN)
