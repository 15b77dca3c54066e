"""Running a plan: options, the summary of a run, and the choice of executor."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
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
    from millstream._control import JobControl
    from millstream._metrics import MetricsRegistry

log = logging.getLogger("millstream.run")

__all__ = ["MODES", "JobStatus", "RunConfig", "RunResult", "StepStatus"]

#: Execution modes: record at a time, columnar micro-batches, and bounded batch.
MODES = ("native", "microbatch", "batch")

#: where the workers of a job at parallelism > 1 run: processes of this machine, or Ray actors
ENGINES = ("local", "ray")

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
    #: the directory of the savepoint taken when the run was stopped with one (``JobHandle.stop()``,
    #: Ctrl-C in the CLI, the dashboard); None otherwise
    savepoint: str | None = None
    #: the peak resident memory of each worker process, in bytes (parallelism > 1; worker 0 first)
    worker_peak_rss: tuple[int, ...] = ()

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
        if self.savepoint is not None:
            lines.append(f"  savepoint: {self.savepoint}")
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
    - ``dashboard``: serve the web dashboard at ``http://HOST:PORT/`` while the job runs (``"8080"``
      or ``"127.0.0.1:8080"``; loopback unless a host is given; needs ``millstream[dashboard]``).
      Any other address needs ``dashboard_token`` (generated and printed once when not given).
      ``dashboard_control``: let the dashboard stop the job (with a savepoint); off by default.
    - ``from_savepoint``: start from a savepoint (a ``chk-*`` directory a stop with a savepoint
      took, or a checkpoint directory: its newest savepoint) in a new ``checkpoint_dir``. The
      savepoint is copied there, verified, and the run goes on from it; running again with that
      ``checkpoint_dir`` resumes from its own newest checkpoint. Under exactly-once, write to a new
      output (or to the same one when the savepoint is the last thing its run committed).
    - ``control``: a :class:`millstream.JobControl` to stop the run from another thread
      (``control.request_stop(savepoint=True)``); one per run. ``flow.start()`` makes one.
    - ``parallelism``: worker processes on this machine (default 1: the whole job in this process).
      Above 1, this process is worker 0 (it writes the sinks, and reads the sources that do not
      split), sources of several splits are read by every worker, each its range, and keyed steps
      are spread over the workers by key group. In every mode (micro-batch workers send columnar
      batches to each other), in every guarantee (checkpoints across the workers; a job resumes
      from a checkpoint or a savepoint taken at any parallelism, in any mode); for now with state in
      memory and without metrics or the dashboard: those are refused with a ConfigError naming the
      fix (see docs/scaling.md).
    - ``engine``: where workers 1 .. N-1 of a job at parallelism > 1 run: ``"local"`` (default:
      processes of this machine) or ``"ray"`` (Ray actors, on one machine or a cluster: the same
      physical plan, answers and checkpoints; needs ``millstream[ray]``). ``ray_address``: the
      cluster to join (``ray.init(address=...)``); without it an existing connection is used, or
      Ray's own ``RAY_ADDRESS``, or a local Ray is started. The checkpoint directory must then be a
      path every Ray node mounts (see docs/scaling.md, "Ray").

    A stop with a savepoint takes effect at the next chunk boundary: the run takes a final
    checkpoint that is not marked finished, lets its sinks commit it, and returns a result with
    ``interrupted`` and ``savepoint`` set; a run with the same ``checkpoint_dir`` goes on from it.
    A ``KeyboardInterrupt`` in ``Flow.run`` stops at once, without a savepoint (a rerun resumes from
    the last periodic checkpoint): to stop with one on Ctrl-C, use ``with flow.start(...) as job:
    job.wait()`` or the CLI.
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
    dashboard: str | None = None
    dashboard_token: str | None = dataclasses.field(default=None, repr=False)
    dashboard_control: bool = False
    from_savepoint: str | os.PathLike[str] | None = None
    control: JobControl | None = dataclasses.field(default=None, repr=False, compare=False)
    parallelism: int = 1
    engine: str = "local"
    ray_address: str | None = None

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
        if self.dashboard is not None:
            from millstream._prometheus import parse_address

            try:
                parse_address(str(self.dashboard))
            except ConfigError:
                raise ConfigError(f"dashboard address {self.dashboard!r}: expected [HOST:]PORT, e.g. 8080 or "
                                  "127.0.0.1:8080") from None
        if self.from_savepoint is not None and self.checkpoint_dir is None:
            raise ConfigError("from_savepoint needs a checkpoint_dir (--checkpoint-dir) for the run's own "
                              "checkpoints: a new, empty directory")
        if self.control is not None:
            from millstream._control import JobControl

            if not isinstance(self.control, JobControl):
                raise ConfigError(f"control must be a millstream.JobControl, not {type(self.control).__name__}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.ray_address is not None and self.engine != "ray":
            raise ConfigError("ray_address goes with engine='ray' (--engine ray)")
        if self.parallelism != 1:  # what worker processes cannot do yet is refused here, naming the fix
            from millstream._parallel import check_config

            check_config(self)

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


#: RunConfig fields never shown (secrets, and objects that follow the run rather than describe it)
_NOT_SHOWN = ("checkpoint_key", "metrics_token", "dashboard_token", "metrics_registry", "control")


def public_config(cfg: RunConfig) -> dict[str, Any]:
    """The run's options as plain JSON values, without secrets: what the dashboard shows.

    Durations in ms, paths as text, callables and clocks by name; ``guarantee`` is the effective one.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name in _NOT_SHOWN or not f.repr:
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, timedelta):
            value = to_ms(value, f.name)
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        elif value is not None and not isinstance(value, str | int | float | bool):
            value = getattr(value, "__qualname__", None) or type(value).__name__
        out[f.name] = value
    out["guarantee"] = cfg.effective_guarantee
    return out


def run_plan(plan: Plan, cfg: RunConfig, *, on_ready: Callable[[], None] | None = None) -> RunResult:
    """Run ``plan`` to its end, or until its control asks it to stop.

    ``on_ready`` is called once the run is set up (checkpoint directory owned, savepoint adopted,
    servers up), right before the job starts; ``flow.start()`` returns then.
    """
    from millstream._control import JobControl

    control = cfg.control if cfg.control is not None else JobControl()
    control.attach(checkpointed=cfg.checkpoint_dir is not None)
    savepoint: str | None = None
    status = "failed"
    try:
        result = _run_plan(plan, cfg, control, on_ready)
        status = "stopped" if result.interrupted else "finished"
        savepoint = result.savepoint
        return result
    finally:
        control.end(status, savepoint)


def _serve_dashboard(plan: Plan, cfg: RunConfig, registry: MetricsRegistry, control: JobControl) -> Any:
    try:
        from millstream._dashboard import serve_dashboard
    except ImportError as exc:
        raise ConfigError(f"the dashboard cannot start ({exc}); install it with: pip install 'millstream[dashboard]'"
                          ) from exc
    assert cfg.dashboard is not None
    server = serve_dashboard(str(cfg.dashboard), registry=registry, plan=plan, config=public_config(cfg),
                             control=control, token=cfg.dashboard_token, allow_control=cfg.dashboard_control)
    control.dashboard_url = server.url
    if server.token is None or cfg.dashboard_token is not None:  # a generated token is printed with the URL
        print(f"millstream: dashboard of flow {plan.flow!r} at {server.url}", file=sys.stderr, flush=True)
    return server


def _run_plan(plan: Plan, cfg: RunConfig, control: JobControl, on_ready: Callable[[], None] | None) -> RunResult:
    from millstream._checkpoint import Coordinator
    from millstream._guarantee import check_guarantee

    guarantee = cfg.effective_guarantee
    check_guarantee(plan, guarantee)
    if cfg.mode == "batch":
        unbounded = [n.name for n in plan.sources if not n.op.connector.bounded]  # type: ignore[attr-defined]
        if unbounded:
            raise ConfigError(f"batch mode runs bounded inputs only; source(s) {', '.join(unbounded)} never end: "
                              "run with mode='microbatch' (--mode microbatch) instead")
    if cfg.parallelism > 1:  # worker processes on this machine: millstream._parallel
        from millstream._parallel import run_parallel

        if on_ready is not None:
            on_ready()
        return run_parallel(plan, cfg, control)
    clock = cfg.clock or SystemClock()
    registry = cfg.metrics_registry
    servers: list[Any] = []
    coordinator = None
    try:
        if cfg.metrics is not None or cfg.dashboard is not None:
            from millstream._metrics import MetricsRegistry

            registry = registry if registry is not None else MetricsRegistry()
        if cfg.metrics is not None:
            from millstream._prometheus import serve_metrics

            assert registry is not None
            servers.append(serve_metrics(registry, str(cfg.metrics), cfg.metrics_token))
        if cfg.checkpoint_dir is not None:
            coordinator = Coordinator(plan, os.fspath(cfg.checkpoint_dir), guarantee=guarantee,
                                      interval_ms=cfg.checkpoint_interval_ms, retain=cfg.checkpoints_retained,
                                      clock=clock, mode=cfg.mode, key=cfg.checkpoint_key)
            if cfg.from_savepoint is not None:
                coordinator.adopt_savepoint(os.fspath(cfg.from_savepoint))
        if cfg.dashboard is not None:
            assert registry is not None
            servers.append(_serve_dashboard(plan, cfg, registry, control))
        if on_ready is not None:
            on_ready()
        return _run_loop(plan, cfg, coordinator, guarantee, clock, registry, control)
    finally:
        if registry is not None:
            registry.finish()
        for server in reversed(servers):
            server.close()
        if coordinator is not None:
            coordinator.close()  # the checkpoint directory's lock goes with the run


def _run_loop(plan: Plan, cfg: RunConfig, coordinator: Coordinator | None, guarantee: str,
              clock: Clock, registry: MetricsRegistry | None, control: JobControl) -> RunResult:
    from millstream._runtime._base import Runtime
    from millstream._runtime._native import NativeJob, run_native
    from millstream._state import open_backend

    started = time.monotonic()
    interrupted = finished_before = False
    savepoint: str | None = None
    restarts = 0
    callback = cfg.on_progress
    while True:
        rt = Runtime(clock, open_backend(cfg.state), checkpointed=coordinator is not None)
        if cfg.mode == "native":
            job = NativeJob(plan, rt)
        else:  # imported here: the vectorised operators load polars and numpy, which a native job never needs
            from millstream._runtime._microbatch import MicroBatchJob

            job = MicroBatchJob(plan, rt, cfg.mode)
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
                ended = run_native(job, max_chunk=cfg.chunk, idle_sleep_s=cfg.idle_sleep_s, on_tick=tick,
                                   tick_interval_s=cfg.progress_interval_s, coordinator=coordinator,
                                   trigger_interval_ms=cfg.trigger_interval_ms if cfg.mode == "microbatch" else 0,
                                   control=control)
                if not ended:  # stopped at a chunk boundary, as its control asked
                    interrupted = True
                    if control.savepoint_requested and coordinator is not None:
                        savepoint = coordinator.savepoint(job)
                        log.info("stopped with savepoint %s", savepoint)
                elif coordinator is not None:
                    coordinator.checkpoint(job, finished=True)
            failed = False
            break
        except KeyboardInterrupt:
            interrupted = True
            break
        except (MillstreamError, OSError) as exc:
            if (coordinator is None or restarts >= cfg.restarts or isinstance(exc, CheckpointError | ConfigError)
                    or control.stop_requested):
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
                                already_finished=finished_before, savepoint=savepoint)
    return result
