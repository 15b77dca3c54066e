"""The columnar operators' incremental state, in small: what ``benchmarks/columnar_state.py`` runs at
scale (many keys, small batches), against the native operator, with a restore mid-stream.

The vectorised running aggregate, sliced windows and sessions update their state in place at the keys
a batch touches (``_runtime/_cstate.py``). Each case runs natively in one go, and in micro-batch mode
stopped after some batches, snapshotted, and resumed in a fresh job from the pickled snapshot; the
snapshot is pickled only after the first job has run on to the end, so a state written in place after
the snapshot would show.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.test_vectorised_kernels import canon

import millstream as ms
from millstream._runtime._base import Runtime
from millstream._runtime._cagg import ColumnarAggregate
from millstream._runtime._columnar import StandInOperator
from millstream._runtime._cstate import DueIndex
from millstream._runtime._cwindows import ColumnarSessionWindow, ColumnarSlicedWindow
from millstream._runtime._microbatch import MicroBatchJob
from millstream.testing import CollectSink, ManualClock, TestSource

KINDS = {"running": ColumnarAggregate, "tumbling": ColumnarSlicedWindow, "sliding": ColumnarSlicedWindow,
         "session": ColumnarSessionWindow}


@st.composite
def _events(draw: st.DrawFn) -> list[dict[str, Any]]:
    keys = draw(st.integers(1, 60))
    n = draw(st.integers(1, 150))
    out, high = [], 0
    for i in range(n):
        late = not draw(st.integers(0, 9))
        t = max(0, high - draw(st.integers(50, 300)) if late else high + draw(st.integers(-20, 30)))
        high = max(high, t)
        out.append({"k": draw(st.integers(0, keys - 1)), "v": draw(st.one_of(st.none(), st.integers(-50, 50))),
                    "ts": t, "i": i})
    return out


def _build(kind: str, records: list[dict[str, Any]], chunk: int) -> tuple[ms.Flow, list[CollectSink]]:
    flow = ms.Flow(kind)
    src = flow.source(TestSource(records, chunk=chunk),
                      watermark=ms.WatermarkStrategy.bounded(25, timestamp="ts")).key_by("k")
    aggs = {"n": ms.agg.count(), "total": ms.agg.sum("v"), "lo": ms.agg.min("v"), "avg": ms.agg.mean("v")}
    out, late = CollectSink(), CollectSink()
    if kind == "running":
        src.aggregate(**aggs).sink(out)
        return flow, [out]
    window = {"tumbling": ms.windows.tumbling(40), "sliding": ms.windows.sliding(60, every=20),
              "session": ms.windows.session(15)}[kind]
    w = src.window(window).aggregate(**aggs, first=ms.agg.first("i"), last=ms.agg.last("i"))
    w.sink(out)
    w.late().sink(late)
    return flow, [out, late]


def _job(flow: ms.Flow) -> MicroBatchJob:
    job = MicroBatchJob(flow.plan(), Runtime(ManualClock()), "microbatch")
    job.open()
    return job


def _vectorised(job: MicroBatchJob, kind: str) -> None:
    ops = [op for op in job.ops if isinstance(op, KINDS[kind])]
    assert ops and all(isinstance(op, StandInOperator) and op.delegate is None for op in ops)


@settings(max_examples=30, deadline=None)
@given(records=_events(), kind=st.sampled_from(sorted(KINDS)), chunk=st.integers(1, 7), cut=st.integers(0, 30))
def test_micro_batch_state_restored_mid_stream_gives_the_native_answer(records: list[dict[str, Any]], kind: str,
                                                                       chunk: int, cut: int) -> None:
    flow, outs = _build(kind, records, chunk)
    flow.run(mode="native")
    native = [canon(o.values) for o in outs]

    flow1, outs1 = _build(kind, records, chunk)
    job = _job(flow1)
    for _ in range(cut):
        job.step(chunk)
    snap = job.snapshot()
    before = [list(o.values) for o in outs1]
    _vectorised(job, kind)
    while job.step(chunk)[1]:  # the first job runs on: its later updates must not reach the snapshot
        pass
    job.close()
    blob = pickle.dumps(snap)

    flow2, outs2 = _build(kind, records, chunk)
    job2 = _job(flow2)
    job2.restore(pickle.loads(blob))
    while job2.step(chunk)[1]:
        pass
    _vectorised(job2, kind)  # a micro-batch snapshot restores into the vectorised operator
    job2.close()
    assert [canon(a + b.values) for a, b in zip(before, outs2, strict=True)] == native


def test_sessions_extended_batch_after_batch_keep_the_native_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session extended by every batch leaves a stale entry in the due index each time; with a small
    slack the index is rebuilt many times over, and what fires is still what native mode fires."""
    monkeypatch.setattr(ColumnarSessionWindow, "slack", 2)
    rebuilt = []
    rebuild = DueIndex.rebuild
    monkeypatch.setattr(DueIndex, "rebuild", lambda self, *a: (rebuilt.append(1), rebuild(self, *a)))
    records = [{"k": i % 3, "v": i, "ts": 4 * i + (i // 100) * 100, "i": i} for i in range(300)]
    flow, outs = _build("session", records, 2)
    flow.run(mode="native")
    native = [canon(o.values) for o in outs]
    flow2, outs2 = _build("session", records, 2)
    job = _job(flow2)
    while job.step(2)[1]:
        pass
    job.close()
    assert len(rebuilt) > 10
    assert [canon(o.values) for o in outs2] == native


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_restored_state_remembers_the_types_it_was_made_of(kind: str) -> None:
    """Ints before the snapshot, floats after it: the restored operator knows its totals hold ints, so
    the floats hand it over to the native operator, which keeps each value's type (a Float64 total would
    read ``3.0`` where native mode has ``3``)."""
    records = [{"k": i % 2, "v": i if i < 10 else i + 0.5, "ts": 3 * i, "i": i} for i in range(20)]
    flow, outs = _build(kind, records, 5)
    flow.run(mode="native")
    native = [canon(o.values) for o in outs]
    flow1, outs1 = _build(kind, records, 5)
    job = _job(flow1)
    job.step(5)
    job.step(5)  # the ints
    snap = pickle.loads(pickle.dumps(job.snapshot()))
    before = [list(o.values) for o in outs1]
    job.close()
    flow2, outs2 = _build(kind, records, 5)
    job2 = _job(flow2)
    job2.restore(snap)
    while job2.step(5)[1]:
        pass
    job2.close()
    ops = [op for op in job2.ops if isinstance(op, KINDS[kind])]
    assert ops and all(isinstance(op, StandInOperator) and op.delegate is not None for op in ops)
    assert [canon(a + b.values) for a, b in zip(before, outs2, strict=True)] == native
