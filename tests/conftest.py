"""Shared helpers for the behavioural tests: stamped test sources, canonical results, a stepped job."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import settings

import millstream as ms
from millstream._runtime._base import Runtime
from millstream._runtime._native import NativeJob
from millstream.testing import CollectSink, ManualClock, TestSource

# Property tests explore new random examples on every local run; in CI (CI=true) they replay a
# fixed set, so a red CI always means the change broke something. Found failures are fixed, not skipped.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(params=ms.MODES)
def exec_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per execution mode: every ``Flow.run`` without an explicit mode uses it.

    Behavioural test modules apply it to all their tests (``pytestmark``); the same flow must
    give the same answers natively, in micro-batches and in batch. A test about one executor's
    internals says so with ``@pytest.mark.native_only("why")``.
    """
    mode: str = request.param
    marker = request.node.get_closest_marker("native_only")
    if marker is not None and mode != "native":
        pytest.skip(f"native executor only: {marker.args[0]}")
    marker = request.node.get_closest_marker("streaming")
    if marker is not None and mode == "batch":
        pytest.skip(f"batch mode runs bounded inputs only: {marker.args[0]}")
    monkeypatch.setenv("MILLSTREAM_MODE", mode)
    return mode


def stamped(flow: ms.Flow, script: Iterable[Any], *, bound: int = 0, chunk: int | None = None,
            ts: str = "ts", name: str = "test-source") -> ms.Stream:
    """A TestSource with a bounded-out-of-orderness watermark on field ``ts``."""
    return flow.source(TestSource(script, chunk=chunk, name=name),
                       watermark=ms.WatermarkStrategy.bounded(bound, timestamp=ts))


def collect(stream: ms.Stream) -> CollectSink:
    sink = CollectSink()
    stream.sink(sink)
    return sink


def canon(rows: Iterable[Any]) -> list[Any]:
    """Rows as a sorted list of hashable, comparable tuples: compare results as multisets."""
    def one(v: Any) -> Any:
        if isinstance(v, dict):
            return tuple(sorted((k, one(x)) for k, x in v.items()))
        if isinstance(v, list | tuple):
            return tuple(one(x) for x in v)
        return v
    return sorted((one(r) for r in rows), key=repr)


def start(flow: ms.Flow, clock: Any = None) -> NativeJob:
    """Compile and open ``flow`` as a native job, to be driven with ``job.step(...)``."""
    job = NativeJob(flow.plan(), Runtime(clock or ManualClock()))
    job.open()
    return job


def finish(job: NativeJob, max_chunk: int = 2048) -> None:
    """Step ``job`` until its sources end, then close it."""
    while job.step(max_chunk)[1]:
        pass
    job.close()
