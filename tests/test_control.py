"""Job control from Python (issue 12): ``flow.start()`` and its :class:`JobHandle`, the
:class:`JobControl` a run shares with whoever steers it, and the dashboard's wiring to both.

Jobs are held mid-run by a gate (a step that blocks at a chosen record until the test opens it), so
every check waits on a condition, never on a guessed time.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import millstream as ms
from millstream._run import public_config
from millstream.errors import CheckpointOwnershipError, ConfigError, StepError
from millstream.testing import CollectSink, TestSource, TransactionalCollectSink

N = 2_000


class Gate:
    """A step that blocks at its ``at``-th record until released (never, with ``at=0``)."""

    def __init__(self, at: int = 0) -> None:
        self.at = at
        self.seen = 0
        self.reached = threading.Event()
        self.released = threading.Event()

    def __call__(self, r: Any) -> Any:
        self.seen += 1
        if self.seen == self.at:
            self.reached.set()
            assert self.released.wait(30), "the test never opened the gate"
        return r

    def wait(self) -> None:
        assert self.reached.wait(30), f"the job never reached record {self.at}"


def gated(gate: Gate, sink: ms.connectors.Sink | None = None, name: str = "control") -> tuple[ms.Flow, Any]:
    out = sink if sink is not None else CollectSink()
    flow = ms.Flow(name)
    flow.source(TestSource(list(range(N)), chunk=50), name="numbers").map(gate, name="gate").sink(out, name="out")
    return flow, out


def test_start_status_metrics_wait() -> None:
    gate = Gate(at=500)
    flow, out = gated(gate)
    job = flow.start()
    assert isinstance(job, ms.JobHandle) and job.flow == "control"
    gate.wait()
    assert job.status() == "running"
    snap = job.metrics()  # a registry was made for the job
    assert snap.flow == "control" and snap.running and snap.records("numbers") >= 500
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.01)
    gate.released.set()
    result = job.wait(30)
    assert job.status() == "finished" and result.ok and not result.interrupted
    assert result.records_written == N and out.values == list(range(N))
    assert job.savepoint is None and result.savepoint is None and job.dashboard_url is None
    assert job.metrics().records("out") == N and not job.metrics().running
    assert job.stop() is result  # stopping an ended job returns its result


def test_stop_without_a_savepoint_ends_at_a_chunk_boundary() -> None:
    gate = Gate(at=777)
    flow, out = gated(gate)
    job = flow.start(max_chunk=100)
    gate.wait()
    stopping = threading.Thread(target=job.stop, kwargs={"savepoint": False})
    stopping.start()
    while job.status() == "running":  # stop() asks at once, then waits for the job
        threading.Event().wait(0.001)
    assert job.status() == "stopping"
    gate.released.set()
    stopping.join(30)
    result = job.wait()
    assert job.status() == "stopped" and result.interrupted and result.savepoint is None
    # the round of the gated record was processed whole (records 750..799 come in one chunk of 50)
    assert out.values == list(range(800)) and result.records_read == 800


def test_the_handle_as_a_context_manager_stops_with_a_savepoint(tmp_path: Path) -> None:
    gate = Gate(at=400)
    flow, out = gated(gate, TransactionalCollectSink())
    with (pytest.raises(RuntimeError, match="the caller's own error"),
          flow.start(guarantee="exactly-once", checkpoint_dir=tmp_path / "ck") as job):
        gate.wait()
        gate.released.set()
        raise RuntimeError("the caller's own error")
    assert job.status() == "stopped" and job.savepoint is not None
    assert Path(job.savepoint).parent == tmp_path / "ck"
    assert out.values == list(range(len(out.values))) and 400 <= len(out.values) < N  # committed
    rest = flow.run(guarantee="exactly-once", checkpoint_dir=tmp_path / "ck")
    assert rest.ok and out.values == list(range(N))


def test_wait_raises_the_jobs_error_and_the_status_is_failed() -> None:
    def boom(r: int) -> int:
        if r == 123:
            raise ValueError("bad record")
        return r

    flow = ms.Flow("boom")
    flow.source(TestSource(list(range(N)))).map(boom).sink(CollectSink())
    job = flow.start()
    with pytest.raises(StepError, match="bad record"):
        job.wait(30)
    assert job.status() == "failed"
    with pytest.raises(StepError):
        job.stop(savepoint=False)


def test_start_raises_what_stops_the_run_from_being_set_up(tmp_path: Path) -> None:
    gate = Gate(at=100)
    flow, _ = gated(gate)
    first = flow.start(checkpoint_dir=tmp_path / "ck")
    try:
        with pytest.raises(CheckpointOwnershipError, match="in use by another run"):
            gated(Gate())[0].start(checkpoint_dir=tmp_path / "ck")
        with pytest.raises(ConfigError, match="unknown run option"):
            flow.start(nonsense=1)
    finally:
        gate.released.set()
        first.stop(savepoint=False, timeout=30)


def test_a_control_stops_flow_run_from_another_thread() -> None:
    gate = Gate(at=300)
    flow, out = gated(gate)
    control = ms.JobControl()
    assert control.status() == "running" and control.savepoint_path() is None

    def steer() -> None:
        gate.wait()
        control.request_stop(savepoint=False)
        gate.released.set()

    helper = threading.Thread(target=steer)
    helper.start()
    result = flow.run(control=control)
    helper.join()
    assert result.interrupted and control.status() == "stopped" and len(out.values) < N
    control.request_stop(savepoint=True)  # after the end: nothing happens
    with pytest.raises(ConfigError, match="already followed a run"):
        flow.run(control=control)


def test_a_savepoint_asked_of_a_job_without_checkpoints_is_a_config_error() -> None:
    control = ms.JobControl()
    control.request_stop(savepoint=True)  # before the run: recorded, checked when the run starts
    flow, _ = gated(Gate())
    with pytest.raises(ConfigError, match="a savepoint needs checkpoints"):
        flow.run(control=control)
    assert control.status() == "failed"


def test_dashboard_options_are_checked_when_the_config_is_built() -> None:
    with pytest.raises(ConfigError, match="dashboard address 'no-port'"):
        ms.RunConfig(dashboard="no-port")
    cfg = ms.RunConfig(dashboard="127.0.0.1:0", dashboard_token="s3cret-dash", dashboard_control=True,
                       checkpoint_dir="ck", checkpoint_key="s3cret-key", metrics="0", metrics_token="s3cret-m",
                       checkpoint_interval=ms.RunConfig().checkpoint_interval, control=ms.JobControl())
    assert "s3cret" not in repr(cfg)
    shown = public_config(cfg)
    assert "s3cret" not in json.dumps(shown)
    assert shown["guarantee"] == "at-least-once" and shown["dashboard"] == "127.0.0.1:0"
    assert shown["checkpoint_dir"] == "ck" and shown["dashboard_control"] is True
    assert not {"checkpoint_key", "metrics_token", "dashboard_token", "control", "metrics_registry"} & set(shown)


def test_the_dashboard_serves_the_running_job_and_stops_it_with_a_savepoint(tmp_path: Path) -> None:
    pytest.importorskip("millstream._dashboard")
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    gate = Gate(at=600)
    flow, out = gated(gate, TransactionalCollectSink())
    job = flow.start(guarantee="exactly-once", checkpoint_dir=tmp_path / "ck", checkpoint_key="s3cret-key",
                     dashboard="0", dashboard_control=True)
    try:
        url = job.dashboard_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        gate.wait()
        with urllib.request.urlopen(url + "api/job", timeout=10) as resp:
            body = resp.read().decode()
        info = json.loads(body)
        assert info["status"] == "running" and info["config"]["guarantee"] == "exactly-once"
        assert "s3cret" not in body
        stop = urllib.request.Request(url + "api/stop", data=b'{"savepoint": true}', method="POST",
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(stop, timeout=10) as resp:
            assert resp.status == 202
        assert job.status() == "stopping"
    finally:
        gate.released.set()
    result = job.wait(30)
    assert job.status() == "stopped" and result.savepoint is not None and job.savepoint == result.savepoint
    assert len(out.values) == result.records_written < N
    with pytest.raises(OSError):  # closed with the run
        urllib.request.urlopen(url + "api/job", timeout=5)


class _EndedFlag(threading.Event):
    """The run's ``ended`` flag, with a Ctrl-C landing just before it is set: the CLI's signal handler
    runs in the main thread, between two bytecodes of ``JobControl.end`` (which holds the lock)."""

    def __init__(self, control: ms.JobControl) -> None:
        super().__init__()
        self.control = control
        self.fired = False

    def set(self) -> None:
        if not self.fired:
            self.fired = True
            self.control.request_stop(savepoint=True)  # what the CLI's on_signal does
        super().set()


def test_a_stop_asked_by_a_signal_handler_while_the_run_ends_neither_deadlocks_nor_changes_the_status() -> None:
    control = ms.JobControl()
    control.attach(checkpointed=True)
    control._ended = _EndedFlag(control)
    ender = threading.Thread(target=control.end, args=("finished",), daemon=True)
    ender.start()
    ender.join(5)
    assert not ender.is_alive(), "JobControl.end deadlocked on a stop asked from a signal handler"
    assert control.ended and control.status() == "finished"


def test_ctrl_c_while_start_waits_for_the_setup_stops_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt in ``flow.start()`` (the setup is slow: a savepoint copied, servers) must
    not leave the job running in a thread nobody has a handle of, which keeps the program alive.

    The Ctrl-C is raised by the wait itself (a real SIGINT reaches a waiting main thread only when
    the wait ends under pytest-timeout, which would make the test depend on timing)."""
    import millstream._control as control_mod
    import millstream._run as run_mod

    setting_up = threading.Event()
    release = threading.Event()

    def slow_setup(*args: Any, **kwargs: Any) -> Any:
        setting_up.set()
        assert release.wait(30)

        class NoServer:
            def close(self) -> None:
                pass

        return NoServer()

    class CtrlCWhileWaiting(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            assert setting_up.wait(30)
            threading.Timer(0.3, release.set).start()  # the setup ends a moment later
            raise KeyboardInterrupt

    original = control_mod.JobHandle._start

    def start(self: control_mod.JobHandle) -> None:
        self._ready = CtrlCWhileWaiting()
        original(self)

    monkeypatch.setattr(run_mod, "_serve_dashboard", slow_setup)
    monkeypatch.setattr(control_mod.JobHandle, "_start", start)
    flow, out = gated(Gate())
    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt):
        flow.start(dashboard="0", max_chunk=50)
    release.set()
    left = [t for t in set(threading.enumerate()) - before if t.name.startswith("millstream-job-") and t.is_alive()]
    assert not left, "the job goes on running after start() was interrupted"
    assert len(out.values) < N, "the job ran to its end after start() was interrupted"


def test_leaving_the_with_block_by_an_error_keeps_the_jobs_own_failure_in_sight() -> None:
    """The body raised, and the job failed too: the body's error goes on, with the job's named on it."""
    gate = Gate(at=300)

    def boom(r: int) -> int:
        gate(r)
        if r == 400:
            raise ValueError("the job's own failure")
        return r

    flow = ms.Flow("both-fail")
    flow.source(TestSource(list(range(N)), chunk=50)).map(boom, name="boom").sink(CollectSink())
    with pytest.raises(RuntimeError, match="the caller's own error") as err, flow.start() as job:
        gate.wait()
        gate.released.set()
        job._thread.join(30)  # the job has failed by now
        raise RuntimeError("the caller's own error")
    assert job.status() == "failed"
    assert any("the job's own failure" in note for note in getattr(err.value, "__notes__", []))
