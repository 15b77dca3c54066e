"""Running a plan: options, the summary of a run, and the choice of executor."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from millstream._checkpoint import CheckpointStats
from millstream._clock import Clock, SystemClock
from millstream._plan import Plan
from millstream._time import MIN_WATERMARK, format_ms, to_ms
from millstream.errors import CheckpointError, ConfigError, JobError, MillstreamError

if TYPE_CHECKING:
    from millstream._checkpoint import Coordinator
    from millstream._metrics import MetricsRegistry

log = logging.getLogger("millstream.run")

__all__ = ["MODES", "JobStatus", "RunConfig", "RunResult", "StepStatus"]

#: Execution modes: record at a time, columnar micro-batches, and bounded batch.
MODES = ("native", "microbatch", "batch")

#: Records read from a source at once, per mode, unless ``max_chunk`` says otherwise.
DEFAULT_CHUNK = {"native": 2048, "microbatch": 100_000, "batch": 1_000_000}


def default_mode() -> str:
    """``$MILLSTREAM_MODE`` when set (so a whole test suite or job can switch executor), else native."""
    return os.environ.get("MILLSTREAM_MODE") or "native"


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
    guarantee: str = "none"
    #: the checkpoints taken so far (None without a checkpoint directory)
    checkpoints: CheckpointStats | None = None
    #: ``(done, total)`` of the input, summed over the sources, when every source knows its own
    #: (:meth:`~millstream.connectors.SourceReader.progress`); None otherwise
    input_progress: tuple[int, int] | None = None

    @property
    def fraction(self) -> float | None:
        """How far through its input the job is (0 to 1), when the input's size is known."""
        if self.input_progress is None:
            return None
        done, total = self.input_progress
        return min(1.0, done / total) if total > 0 else 1.0

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
    guarantee: str = "none"
    checkpoints: CheckpointStats | None = None
    restarts: int = 0
    already_finished: bool = False

    def summary(self) -> str:
        lines = [
            f"flow {self.flow!r} ({self.mode}) {'interrupted' if self.interrupted else 'finished'} "
            f"in {self.elapsed_s:.2f}s: {self.records_read:,} records read, {self.records_written:,} written, "
            f"{self.rate:,.0f} records/s",
            f"  watermark: {format_ms(self.watermark)}",
        ]
        ck = self.checkpoints
        if ck is not None:
            restored = f", resumed from checkpoint {ck.restored_from}" if ck.restored_from is not None else ""
            lost = f", {ck.lost:,} records lost to the crash (at-most-once)" if ck.lost else ""
            lines.append(f"  {self.guarantee}: {ck.completed} checkpoints (last {ck.last_id}, "
                         f"{ck.last_size_bytes:,} bytes, {ck.last_duration_ms:.1f} ms){restored}{lost}"
                         + (f", {self.restarts} restarts" if self.restarts else ""))
        for s in self.steps:
            extra = "".join(f", {k} {v:,}" for k, v in s.extra.items() if v)
            name = " -> ".join(s.fused) if len(s.fused) > 1 else s.name
            lines.append(f"  {name} [{s.kind}]: in {s.records_in:,}, out {s.records_out:,}{extra}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RunConfig:
    """How to run a flow. Small and frozen: pass it to ``Flow.run(config=...)`` or use keywords.

    - ``mode``: ``"native"`` (record at a time, lowest latency), ``"microbatch"``
      (columnar epochs through Polars, highest throughput) or ``"batch"`` (bounded
      inputs, largest batches). Same plan, same answers. Default: ``$MILLSTREAM_MODE``
      or native.
    - ``max_chunk``: most records read from a source at once; in micro-batch mode the
      epoch size (default 2,048 native, 100,000 micro-batch, 1,000,000 batch). A live
      source returns what it has, so latency stays low.
    - ``trigger_interval``: micro-batch mode: when an epoch read less than a full batch
      (the sources are caught up), the next one starts this long (ms or timedelta)
      after it, so live input gathers into larger batches. 0 (default): at once.
    - ``clock``: processing time; ``millstream.testing.ManualClock`` in tests.
    - ``on_progress``: called with a :class:`JobStatus` every ``progress_interval_s``.
    - ``guarantee``: ``"none"`` (default without a checkpoint directory),
      ``"at-most-once"``, ``"at-least-once"`` (default with one) or ``"exactly-once"``;
      checked against the flow's connectors before anything runs.
    - ``checkpoint_dir``: where checkpoints go; a run with the same directory resumes
      from the latest complete checkpoint. ``checkpoint_interval`` (ms or timedelta),
      ``checkpoints_retained`` how many to keep.
    - ``restarts``: how many times a failed job restarts from its latest checkpoint
      before giving up (``restart_delay_s`` apart); a poison record fails the job
      after that many tries instead of looping forever.
    - ``state``: where process functions keep keyed state: ``"memory"`` (default) or
      ``"lmdb:///path/to/dir"`` (on disk, for state larger than memory; incremental
      checkpoints). Options as a query: ``?cache=100000&key_groups=128``.
    - ``checkpoint_key``: a secret (str or bytes); checkpoints are signed with HMAC-SHA256 and
      one without a valid signature is refused before anything in it is unpickled. Never
      written, logged or shown (the CLI reads ``$MILLSTREAM_CHECKPOINT_KEY``).
    - ``metrics``: serve Prometheus metrics at ``http://HOST:PORT/metrics`` while the job runs
      (``"9464"`` or ``"127.0.0.1:9464"``; loopback unless a host is given). Any other address
      needs ``metrics_token`` (checked as ``Authorization: Bearer <token>``); without one a token is
      generated and printed once. ``metrics_registry``: a :class:`millstream.metrics.MetricsRegistry`
      to follow the job with (made for you with ``metrics``): its ``snapshot()`` gives every figure.
    """

    mode: str = dataclasses.field(default_factory=default_mode)
    max_chunk: int | None = None
    trigger_interval: int | timedelta = 0
    clock: Clock | None = None
    on_progress: Callable[[JobStatus], None] | None = None
    progress_interval_s: float = 0.5
    idle_sleep_s: float = 0.002
    guarantee: str | None = None
    checkpoint_dir: str | os.PathLike[str] | None = None
    checkpoint_interval: int | timedelta = 1_000
    checkpoints_retained: int = 3
    restarts: int = 0
    restart_delay_s: float = 1.0
    state: str = "memory"
    checkpoint_key: str | bytes | None = dataclasses.field(default=None, repr=False)
    metrics: str | None = None
    metrics_token: str | None = dataclasses.field(default=None, repr=False)
    metrics_registry: MetricsRegistry | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def effective_guarantee(self) -> str:
        if self.guarantee is not None:
            return self.guarantee
        return "none" if self.checkpoint_dir is None else "at-least-once"

    @property
    def chunk(self) -> int:
        """The effective ``max_chunk`` of the mode."""
        return self.max_chunk if self.max_chunk is not None else DEFAULT_CHUNK[self.mode]

    @property
    def trigger_interval_ms(self) -> int:
        return to_ms(self.trigger_interval, "trigger_interval")

    @property
    def checkpoint_interval_ms(self) -> int:
        return to_ms(self.checkpoint_interval, "checkpoint_interval")

    def __post_init__(self) -> None:
        from millstream._guarantee import GUARANTEES

        if self.guarantee is not None and self.guarantee not in GUARANTEES:
            raise ConfigError(f"unknown guarantee {self.guarantee!r}; choose one of {', '.join(GUARANTEES)}")
        if self.effective_guarantee != "none" and self.checkpoint_dir is None:
            raise ConfigError(
                f"guarantee {self.guarantee!r} needs checkpoints: pass checkpoint_dir=... (--checkpoint-dir on the CLI)"
            )
        if self.checkpoint_dir is not None and self.effective_guarantee == "none":
            raise ConfigError(
                "checkpoint_dir is set but guarantee is 'none': choose a guarantee, or drop the directory"
            )
        if self.checkpoint_interval_ms <= 0:
            raise ConfigError(f"checkpoint_interval must be > 0, got {self.checkpoint_interval_ms} ms")
        if self.restarts < 0 or self.checkpoints_retained < 1:
            raise ConfigError("restarts must be >= 0 and checkpoints_retained >= 1")
        if self.restarts and self.checkpoint_dir is None:
            raise ConfigError("restarts need a checkpoint_dir: a restart without one would replay output from scratch")
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; this build runs: {', '.join(MODES)}")
        if self.max_chunk is not None and (isinstance(self.max_chunk, bool) or not isinstance(self.max_chunk, int)
                                           or self.max_chunk <= 0):
            raise ConfigError(f"max_chunk must be a positive int, not {self.max_chunk!r}")
        if self.trigger_interval_ms < 0:
            raise ConfigError("trigger_interval must be >= 0")
        if self.progress_interval_s <= 0:
            raise ConfigError("progress_interval_s must be > 0")
        from millstream._state import parse_state_url

        parse_state_url(self.state)
        if self.metrics is not None:
            from millstream._prometheus import parse_address

            parse_address(str(self.metrics))

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
    fractions: list[tuple[int, int]] | None = []
    for op in job.ops:
        if isinstance(op, SourceOperator):
            read += op.records_in
            wms.append(op.wm)
            known = op.reader.progress() if op.reader is not None and fractions is not None else None
            fractions = None if known is None or fractions is None else [*fractions, known]
        if isinstance(op, SinkOperator):
            written += op.records_in
        steps.append(StepStatus(op.name, op.node.kind, op.records_in, op.records_out, op.wm, op.metrics(),
                                tuple(n.name for n in op.steps)))
    wm = min(wms) if wms else MIN_WATERMARK
    if fractions and "input_progress" not in extra:
        # sources count in units of their own: scale each to the largest total before adding up
        scale = max(total for _, total in fractions) or 1
        extra["input_progress"] = (sum(done * scale // total if total else scale for done, total in fractions),
                                   scale * len(fractions))
    return cls(flow, mode, time.monotonic() - started, read, written, wm, tuple(steps), **extra)


def _close(job: Any, *, quiet: bool) -> None:
    """Close a job; after a failure, an error while closing is logged, not raised over the original."""
    try:
        job.close()
    except Exception:
        if not quiet:
            raise
        log.exception("error while closing the failed job (the original error follows)")


def run_plan(plan: Plan, cfg: RunConfig) -> RunResult:
    from millstream._checkpoint import Coordinator
    from millstream._guarantee import check_guarantee

    guarantee = cfg.effective_guarantee
    check_guarantee(plan, guarantee)
    clock = cfg.clock or SystemClock()
    registry = cfg.metrics_registry
    server = None
    if cfg.metrics is not None:
        from millstream._metrics import MetricsRegistry
        from millstream._prometheus import serve_metrics

        registry = registry if registry is not None else MetricsRegistry()
        server = serve_metrics(registry, str(cfg.metrics), cfg.metrics_token)
    coordinator = None
    if cfg.checkpoint_dir is not None:
        coordinator = Coordinator(plan, os.fspath(cfg.checkpoint_dir), guarantee=guarantee,
                                  interval_ms=cfg.checkpoint_interval_ms, retain=cfg.checkpoints_retained, clock=clock,
                                  mode=cfg.mode, key=cfg.checkpoint_key)
    try:
        return _run_loop(plan, cfg, coordinator, guarantee, clock, registry)
    finally:
        if registry is not None:
            registry.finish()
        if server is not None:
            server.close()
        if coordinator is not None:
            coordinator.close()  # the checkpoint directory's lock goes with the run


def _run_loop(plan: Plan, cfg: RunConfig, coordinator: Coordinator | None, guarantee: str,
              clock: Clock, registry: MetricsRegistry | None = None) -> RunResult:
    from millstream._runtime._base import Runtime
    from millstream._runtime._microbatch import MicroBatchJob
    from millstream._runtime._native import NativeJob, run_native
    from millstream._state import open_backend

    started = time.monotonic()
    interrupted = finished_before = False
    restarts = 0
    callback = cfg.on_progress
    if cfg.mode == "batch":
        unbounded = [n.name for n in plan.sources if not n.op.connector.bounded]  # type: ignore[attr-defined]
        if unbounded:
            raise ConfigError(f"batch mode runs bounded inputs only; source(s) {', '.join(unbounded)} never end: "
                              "run with mode='microbatch' (--mode microbatch) instead")
    while True:
        rt = Runtime(clock, open_backend(cfg.state), checkpointed=coordinator is not None)
        job = NativeJob(plan, rt) if cfg.mode == "native" else MicroBatchJob(plan, rt, cfg.mode)
        tick = None
        if registry is not None:
            registry.attach(job, flow=plan.flow, mode=cfg.mode, clock=clock, coordinator=coordinator,
                            restarts=restarts)
        if callback is not None or registry is not None:

            def tick(job: NativeJob = job, callback: Callable[[JobStatus], None] | None = callback) -> None:
                if registry is not None:
                    registry.refresh()  # figures only the job's thread may read (connectors', state sizes)
                if callback is None:
                    return
                stats = dataclasses.replace(coordinator.stats) if coordinator is not None else None
                callback(_status(job, plan.flow, cfg.mode, started, guarantee=guarantee, checkpoints=stats))

        failed = True
        try:
            job.open()
            if coordinator is not None:
                loaded = coordinator.recover(job)
                finished_before = loaded is not None and loaded.finished
            if not finished_before:
                run_native(job, max_chunk=cfg.chunk, idle_sleep_s=cfg.idle_sleep_s, on_tick=tick,
                           tick_interval_s=cfg.progress_interval_s, coordinator=coordinator,
                           trigger_interval_ms=cfg.trigger_interval_ms if cfg.mode == "microbatch" else 0)
                if coordinator is not None:
                    coordinator.checkpoint(job, finished=True)
            failed = False
            break
        except KeyboardInterrupt:
            interrupted = True
            break
        except (MillstreamError, OSError) as exc:
            if coordinator is None or restarts >= cfg.restarts or isinstance(exc, CheckpointError | ConfigError):
                if restarts:
                    raise JobError(f"the job failed {restarts + 1} times; giving up. Last error:\n{exc}") from exc
                raise
            restarts += 1
            log.warning("job failed (%s); restart %d of %d from the latest checkpoint", exc, restarts, cfg.restarts)
            clock.sleep(cfg.restart_delay_s)
        finally:
            _close(job, quiet=failed)
    result: RunResult = _status(job, plan.flow, cfg.mode, started, RunResult, ok=not interrupted,
                                interrupted=interrupted,
                                guarantee=guarantee, checkpoints=coordinator.stats if coordinator else None,
                                restarts=restarts,
                                already_finished=finished_before)
    return result
