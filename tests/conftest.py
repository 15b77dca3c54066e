"""Shared helpers for the behavioural tests: stamped test sources, canonical results, a stepped job."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

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
