"""Steering a running job: stop it, with or without a savepoint, from any thread.

Two objects:

- :class:`JobControl` is shared by the run loop, a :class:`JobHandle`, the CLI's Ctrl-C handler and
  the dashboard. Its protocol is three methods (``status``, ``request_stop``, ``savepoint_path``);
  the run loop reads one attribute of it once per round of source polls (a chunk, or an epoch in
  micro-batch and batch mode), never per record. Measured (callgrind, ``benchmarks/native.py``
  map_filter, 100 k and 300 k records, ``PYTHONHASHSEED=0``, the same tree with and without the
  switch read): +0.15 % instructions per record, the size of the difference between two runs of
  one variant; +0.04 % for the whole program.
- :class:`JobHandle` is what ``flow.start(...)`` returns: the job runs in a background thread and
  the handle watches it (``status``, ``metrics``), stops it (``stop``) and waits for it (``wait``).

A stop takes effect at the next chunk boundary, where every operator has processed what it was
given. With a savepoint, the run then takes a final checkpoint that is not marked finished, lets the
sinks commit it, and ends as *interrupted*; running again with the same checkpoint directory goes on
from it, and ``from_savepoint=PATH`` starts a run with another checkpoint directory from it.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

from millstream.errors import ConfigError

if TYPE_CHECKING:
    from millstream._metrics import MetricsRegistry, MetricsSnapshot
    from millstream._plan import Plan
    from millstream._run import RunConfig, RunResult

__all__ = ["STATUSES", "JobControl", "JobHandle"]

#: What :meth:`JobControl.status` says: not yet ended ("running", "stopping": a stop was asked for
#: and the job has not yet reached its next chunk boundary or finished its savepoint), or ended
#: ("finished": the end of its input; "stopped": by a stop or an interruption; "failed": an error).
STATUSES = ("running", "stopping", "finished", "stopped", "failed")

_NO_CHECKPOINTS = ("a savepoint needs checkpoints, and this job has no checkpoint_dir (--checkpoint-dir); "
                   "stop it without one (savepoint=False), or run it with a checkpoint directory")


class JobControl:
    """The stop switch and status of one run, shared by the run loop and whoever steers it.

    Thread-safe. One control follows one run: ``flow.run(control=ctl)`` (or ``RunConfig.control``)
    attaches it; :meth:`request_stop` may be called from any thread (also before the run has
    started, or after it ended, when it does nothing).

    >>> import threading, millstream as ms
    >>> ctl = ms.JobControl()
    >>> ctl.status()
    'running'
    >>> ctl.request_stop(savepoint=False)
    >>> ctl.status()
    'stopping'
    """

    def __init__(self) -> None:
        # reentrant: the CLI asks for a stop from a signal handler, which runs in the main thread,
        # possibly in the middle of attach() or end() called by the run in that same thread
        self._lock = threading.RLock()
        #: set first thing in end(): a stop asked from then on does nothing
        self._ending = False
        #: read by the run loop once per round: True once a stop was asked for (never reset)
        self.stop_requested = False
        self._savepoint_requested = False
        self._status = "running"
        self._savepoint: str | None = None
        #: whether the attached run takes checkpoints (None until a run attaches)
        self._checkpointed: bool | None = None
        self._attached = False
        self._ended = threading.Event()
        #: where the run's dashboard is served, once it is up
        self.dashboard_url: str | None = None

    def __repr__(self) -> str:
        return f"JobControl(status={self.status()!r}, savepoint={self._savepoint!r})"

    # -- the protocol (the run loop, a handle, Ctrl-C and the dashboard) ----------------------
    def status(self) -> str:
        """One of :data:`STATUSES`: "running", "stopping", "finished", "stopped" or "failed"."""
        return self._status

    def request_stop(self, savepoint: bool) -> None:
        """Ask the job to stop at its next chunk boundary; returns at once (the run ends later).

        With ``savepoint``, the job takes a final checkpoint first and its sinks commit it: running
        again with the same checkpoint directory (or ``from_savepoint=``) goes on from there. A job
        without a checkpoint directory cannot take one: :class:`~millstream.errors.ConfigError`.
        Asking again adds nothing, except that a savepoint asked by any request is taken; after the
        run ended it does nothing.
        """
        with self._lock:
            if self._ending:
                return
            if savepoint and self._checkpointed is False:
                raise ConfigError(_NO_CHECKPOINTS)
            self._savepoint_requested = self._savepoint_requested or bool(savepoint)
            self.stop_requested = True
            self._status = "stopping"

    def savepoint_path(self) -> str | None:
        """The directory of the savepoint the run took when it stopped (None: none, or not yet)."""
        return self._savepoint

    # -- more for those who steer ---------------------------------------------------------------
    @property
    def savepoints_enabled(self) -> bool | None:
        """Whether a stop can take a savepoint (the run has a checkpoint directory); None before a
        run has attached."""
        return self._checkpointed

    @property
    def savepoint_requested(self) -> bool:
        return self._savepoint_requested

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Block until the run has ended (True), or ``timeout`` seconds passed (False)."""
        return self._ended.wait(timeout)

    # -- called by the run (run_plan) ---------------------------------------------------------------
    def attach(self, *, checkpointed: bool) -> None:
        """The run starts under this control. A savepoint asked for before, without checkpoints, is
        a :class:`~millstream.errors.ConfigError` now."""
        with self._lock:
            if self._attached:
                raise ConfigError("this JobControl already followed a run; give each run its own")
            self._attached = True
            self._checkpointed = checkpointed
            if self._savepoint_requested and not checkpointed:
                self._ending = True
                self._status = "failed"
                self._ended.set()
                raise ConfigError(_NO_CHECKPOINTS)

    def end(self, status: str, savepoint: str | None = None) -> None:
        """The run has ended with ``status`` ("finished", "stopped" or "failed")."""
        assert status in STATUSES[2:], status
        with self._lock:
            self._ending = True  # first: a signal handler landing in here asks for nothing now
            self._savepoint = savepoint
            self._status = status
            self._ended.set()


class JobHandle:
    """A job running in a background thread, as ``flow.start(...)`` returns it.

    - :meth:`status`: "running", "stopping", "finished", "stopped" or "failed";
    - :meth:`metrics`: every figure of the job now (a :class:`~millstream.metrics.MetricsSnapshot`);
    - :meth:`stop`: stop at the next chunk boundary, with a savepoint by default, and wait;
    - :meth:`wait`: wait for the end and get the :class:`~millstream.RunResult` (or the job's error);
    - :attr:`savepoint`, :attr:`dashboard_url`.

    As a context manager, leaving the ``with`` block stops the job (with a savepoint when it has a
    checkpoint directory) unless it has ended::

        with flow.start(checkpoint_dir="ck/") as job:
            job.wait()          # Ctrl-C here: the job stops with a savepoint; run again to resume

    The job's thread is not a daemon: a program whose main code ends while the job runs waits for
    the job, as it would for :meth:`~millstream.Flow.run`.
    """

    def __init__(self, plan: Plan, cfg: RunConfig) -> None:
        from millstream._metrics import MetricsRegistry

        control = cfg.control if cfg.control is not None else JobControl()
        registry = cfg.metrics_registry if cfg.metrics_registry is not None else MetricsRegistry()
        self._cfg = cfg.replace(control=control, metrics_registry=registry)
        self._plan = plan
        self._control = control
        self._registry: MetricsRegistry = registry
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"millstream-job-{plan.flow}")
        self._ready = threading.Event()
        self._set_up = False

    def _start(self) -> None:
        """Start the job's thread; return once the run is set up (checkpoint directory, restore
        point, servers), or raise what stopped it from being set up."""
        try:
            self._thread.start()  # waits for the thread to say it started: a Ctrl-C may land there too
            self._ready.wait()
        except BaseException:
            # Ctrl-C while the run is set up: nobody will have a handle, so the job must not go on
            # (its thread is not a daemon: it would keep the program alive). A stop asked before the
            # run attaches is taken at its first chunk boundary.
            self._control.request_stop(savepoint=False)
            try:
                self._thread.join()
            except RuntimeError:  # interrupted before the thread was started: nothing runs
                pass
            raise
        if not self._set_up:
            self._thread.join()
            assert self._error is not None
            raise self._error

    def _on_ready(self) -> None:
        self._set_up = True
        self._ready.set()

    def _main(self) -> None:
        from millstream._run import run_plan

        try:
            self._result = run_plan(self._plan, self._cfg, on_ready=self._on_ready)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
            self._error = exc
        finally:
            self._ready.set()

    def __repr__(self) -> str:
        return f"JobHandle({self._plan.flow!r}, status={self.status()!r})"

    @property
    def flow(self) -> str:
        """The name of the flow."""
        return self._plan.flow

    @property
    def control(self) -> JobControl:
        """The :class:`JobControl` the job runs under (what the dashboard and Ctrl-C use too)."""
        return self._control

    def status(self) -> str:
        """"running", "stopping", "finished", "stopped" or "failed"."""
        return self._control.status()

    def metrics(self) -> MetricsSnapshot:
        """Every figure of the job now: records in and out per step, rates, watermarks, checkpoints."""
        return self._registry.snapshot()

    @property
    def savepoint(self) -> str | None:
        """The directory of the savepoint taken when the job stopped (None: none, or not yet)."""
        return self._control.savepoint_path()

    @property
    def dashboard_url(self) -> str | None:
        """Where the job's dashboard is served (``RunConfig.dashboard``), None without one."""
        return self._control.dashboard_url

    def stop(self, savepoint: bool = True, timeout: float | None = None) -> RunResult:
        """Stop the job at its next chunk boundary and wait for it; returns its result.

        With ``savepoint`` (the default), the job takes a final checkpoint that its sinks commit;
        running again with the same ``checkpoint_dir`` (or ``from_savepoint=handle.savepoint``) goes
        on from it. A job without a checkpoint directory cannot take one
        (:class:`~millstream.errors.ConfigError`: stop it with ``savepoint=False``). A job that has
        ended already just returns its result. ``timeout``: seconds to wait at most
        (:class:`TimeoutError` after them; the job still stops).
        """
        self._control.request_stop(savepoint)
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> RunResult:
        """Wait until the job ends and return its :class:`~millstream.RunResult`; the job's own
        exception is raised here if it failed. :class:`TimeoutError` after ``timeout`` seconds."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"flow {self._plan.flow!r} still {self.status()} after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def __enter__(self) -> JobHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread.is_alive():
            self._control.request_stop(savepoint=bool(self._control.savepoints_enabled))
        self._thread.join()
        if self._error is None:
            return
        if exc is None:
            raise self._error
        if self._error is not exc:  # the block's own error goes on; the job's is not lost with it
            exc.add_note(f"and flow {self._plan.flow!r} failed too: {type(self._error).__name__}: {self._error}")
