"""Running a plan: options, the summary of a run, and the choice of executor."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from millstream._clock import Clock, SystemClock
from millstream._plan import Plan
from millstream._time import MIN_WATERMARK, format_ms
from millstream.errors import ConfigError

__all__ = ["MODES", "JobStatus", "RunConfig", "RunResult", "StepStatus"]

#: Execution modes this build can run.
MODES = ("native",)


@dataclass(frozen=True)
class StepStatus:
    """Figures of one step (a fused chain reports under its last step, listing all)."""

    name: str
    kind: str
    records_in: int
    records_out: int
    watermark: int
    extra: dict[str, int] = field(default_factory=dict)
    fused: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a running (or finished) job's figures."""

    flow: str
    mode: str
    elapsed_s: float
    records_read: int
    records_written: int
    watermark: int
    steps: tuple[StepStatus, ...]

    @property
    def rate(self) -> float:
        """Records read per second since the start."""
        return self.records_read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def step(self, name: str) -> StepStatus:
        for s in self.steps:
            if s.name == name or name in s.fused:
                return s
        raise KeyError(name)

    def total(self, figure: str) -> int:
        """Sum of an extra figure (``late``, ``skipped``, ``dead_lettered``...) over all steps."""
        return sum(s.extra.get(figure, 0) for s in self.steps)


@dataclass(frozen=True)
class RunResult(JobStatus):
    """What ``Flow.run`` returns when the job has ended."""

    ok: bool = True
    interrupted: bool = False

    def summary(self) -> str:
        lines = [
            f"flow {self.flow!r} ({self.mode}) {'interrupted' if self.interrupted else 'finished'} "
            f"in {self.elapsed_s:.2f}s: {self.records_read:,} records read, {self.records_written:,} written, "
            f"{self.rate:,.0f} records/s",
            f"  watermark: {format_ms(self.watermark)}",
        ]
        for s in self.steps:
            extra = "".join(f", {k} {v:,}" for k, v in s.extra.items() if v)
            name = " -> ".join(s.fused) if len(s.fused) > 1 else s.name
            lines.append(f"  {name} [{s.kind}]: in {s.records_in:,}, out {s.records_out:,}{extra}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RunConfig:
    """How to run a flow. Small and frozen: pass it to ``Flow.run(config=...)`` or use keywords.

    - ``mode``: ``"native"`` (record at a time).
    - ``max_chunk``: most records read from a source at once (latency stays low:
      a live source returns what it has).
    - ``clock``: processing time; ``millstream.testing.ManualClock`` in tests.
    - ``on_progress``: called with a :class:`JobStatus` every ``progress_interval_s``.
    """

    mode: str = "native"
    max_chunk: int = 2048
    clock: Clock | None = None
    on_progress: Callable[[JobStatus], None] | None = None
    progress_interval_s: float = 0.5
    idle_sleep_s: float = 0.002

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; this build runs: {', '.join(MODES)}")
        if isinstance(self.max_chunk, bool) or not isinstance(self.max_chunk, int) or self.max_chunk <= 0:
            raise ConfigError(f"max_chunk must be a positive int, not {self.max_chunk!r}")
        if self.progress_interval_s <= 0:
            raise ConfigError("progress_interval_s must be > 0")

    def replace(self, **changes: Any) -> RunConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown run option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)


def _status(job: Any, flow: str, mode: str, started: float, cls: type = JobStatus, **extra: Any) -> Any:
    from millstream._runtime._sources import SinkOperator, SourceOperator

    steps = []
    read = written = 0
    wms = []
    for op in job.ops:
        if isinstance(op, SourceOperator):
            read += op.records_in
            wms.append(op.wm)
        if isinstance(op, SinkOperator):
            written += op.records_in
        steps.append(StepStatus(op.name, op.node.kind, op.records_in, op.records_out, op.wm, op.metrics(),
                                tuple(n.name for n in op.steps)))
    wm = min(wms) if wms else MIN_WATERMARK
    return cls(flow, mode, time.monotonic() - started, read, written, wm, tuple(steps), **extra)


def run_plan(plan: Plan, cfg: RunConfig) -> RunResult:
    from millstream._runtime._base import Runtime
    from millstream._runtime._native import NativeJob, run_native

    rt = Runtime(cfg.clock or SystemClock())
    job = NativeJob(plan, rt)
    started = time.monotonic()
    tick = None
    if cfg.on_progress is not None:
        callback = cfg.on_progress

        def tick() -> None:
            callback(_status(job, plan.flow, cfg.mode, started))

    interrupted = False
    job.open()
    try:
        run_native(job, max_chunk=cfg.max_chunk, idle_sleep_s=cfg.idle_sleep_s, on_tick=tick,
                   tick_interval_s=cfg.progress_interval_s)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        job.close()
    result: RunResult = _status(job, plan.flow, cfg.mode, started, RunResult, ok=not interrupted,
                                interrupted=interrupted)
    return result
