"""Running jobs for the dashboard's tests: a source the test lets through in steps, a job on a thread with a
metrics registry, and a fake of the job control the dashboard drives (the real one is the run's)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import millstream as ms
from millstream.connectors import Source, SourceContext, SourceReader
from millstream.metrics import MetricsRegistry

T0 = 1_760_000_000_000  # event times: ms since the epoch


def records(n: int) -> list[dict[str, Any]]:
    # every 50th record is 5 s behind: later than the 1 s bound, so the window counts it late
    return [{"k": i % 7, "v": i, "ts": T0 + i * 10 - (5_000 if i % 50 == 49 else 0)} for i in range(n)]


class Gate(Source):
    """Reads ``records`` up to ``allowed`` of them; ``allow(n)`` lets more through, ``held`` is set while it waits."""

    def __init__(self, recs: list[Any], allowed: int) -> None:
        self.records = recs
        self._allowed = allowed
        self._lock = threading.Lock()
        self.held = threading.Event()

    def allow(self, n: int) -> None:
        with self._lock:
            self._allowed = n
            self.held.clear()

    def allowed(self) -> int:
        with self._lock:
            return self._allowed

    def open(self, ctx: SourceContext) -> SourceReader:
        return _GateReader(self)

    def describe(self) -> str:
        return "gate"

    def default_name(self) -> str:
        return "gate"


class _GateReader(SourceReader):
    def __init__(self, src: Gate) -> None:
        self.src, self.i = src, 0

    def poll(self, max_records: int) -> list[Any] | None:
        src = self.src
        if self.i >= len(src.records):
            return None
        limit = min(len(src.records), src.allowed())
        if self.i >= limit:
            src.held.set()
            return []
        end = min(limit, self.i + max_records)
        chunk = src.records[self.i:end]
        self.i = end
        return chunk


def windowed_flow(source: Any, sink: Any, name: str = "watched") -> ms.Flow:
    flow = ms.Flow(name)
    wm = ms.WatermarkStrategy.bounded(1_000, timestamp="ts")
    (flow.source(source, watermark=wm)
     .filter(ms.col("v") % 3 != 0)
     .key_by("k").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count())
     .sink(sink))
    return flow


@dataclass
class RunningJob:
    flow: ms.Flow
    gate: Gate
    registry: MetricsRegistry
    thread: threading.Thread
    box: dict[str, Any] = field(default_factory=dict)

    @property
    def plan(self) -> Any:
        return self.flow.plan()

    def finish(self) -> Any:
        """Let every record through and wait for the run's result."""
        self.gate.allow(len(self.gate.records))
        self.thread.join(30)
        assert not self.thread.is_alive(), "the job did not finish"
        if "error" in self.box:
            raise self.box["error"]
        return self.box["result"]


@contextmanager
def running_job(n: int = 3_000, first: int = 2_000, *, sink: Any = None, name: str = "watched",
                mode: str = "native", metrics: str | None = None) -> Iterator[RunningJob]:
    """A windowed job on a thread that has read ``first`` of ``n`` records and waits for more (``metrics``:
    where the run serves ``/metrics``, none by default)."""
    gate = Gate(records(n), first)
    flow = windowed_flow(gate, sink if sink is not None else ms.connectors.memory.write(), name)
    reg = MetricsRegistry()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = flow.run(mode=mode, metrics=metrics, metrics_registry=reg, max_chunk=250,
                                     progress_interval_s=0.02)
        except Exception as exc:  # noqa: BLE001 - the test re-raises it
            box["error"] = exc

    th = threading.Thread(target=run, name="dashboard-test-job", daemon=True)
    th.start()
    job = RunningJob(flow, gate, reg, th, box)
    try:
        assert gate.held.wait(20), "the job never read its first records"
        yield job
    finally:
        gate.allow(n)
        th.join(30)


class FakeControl:
    """The job control protocol, recording what the dashboard asked."""

    def __init__(self, status: str = "running") -> None:
        self._status = status
        self.stops: list[bool] = []
        self._savepoint: str | None = None
        self.asked = threading.Event()

    def status(self) -> str:
        return self._status

    def request_stop(self, savepoint: bool) -> None:
        self.stops.append(savepoint)
        self._status = "stopping"
        if savepoint:
            self._savepoint = "/tmp/ck/chk-000007"
        self.asked.set()

    def savepoint_path(self) -> str | None:
        return self._savepoint

    def stopped(self) -> None:
        self._status = "stopped"
