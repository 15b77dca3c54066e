"""Ctrl-C in the CLI (issue 12, "Job control"): the first SIGINT stops the job at its next chunk
boundary with a savepoint and exits 130 with the "run the same command again to resume" hint; the
same command resumes from it, and ``--from-savepoint`` starts another directory from it; a second
Ctrl-C aborts at once.

The job is held at a chosen record by a gate (it waits there for a file the test creates), so
the signal always lands mid-run; the test waits for files and messages, never for a guessed time.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from tests._cli_runs import Run

from millstream._cli import load_flow
from millstream.connectors import files

N = 2_000

JOB = '''
import os
import time
import millstream as ms
from millstream.connectors import files


class Gate:
    """At record ``at``: say so (a file), then wait until the test says go on (another file)."""

    def __init__(self, at, reached, release):
        self.at, self.reached, self.release = at, reached, release

    def __call__(self, r):
        if r["i"] == self.at:
            open(self.reached, "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(self.release) and time.monotonic() < deadline:
                time.sleep(0.005)
        return r


def build(params):
    flow = ms.Flow("gated")
    gate = Gate(params.get("at", -1), params.get("reached", ""), params.get("release", ""))
    src = flow.source(ms.testing.TestSource([{"i": i, "k": i % 5, "ts": 10 * i} for i in range(N)], chunk=50),
                      watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    rows = src.map(gate)
    rows.sink(files.write(params["out"] + "/raw/", transactional=True), name="raw")
    (rows.key_by("k").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count())
         .sink(files.write(params["out"] + "/windows/", transactional=True), name="windows"))
    return flow
'''.replace("N)", f"{N})")


def _args(job: Path, out: Path, ck: Path, *extra: str) -> list[str]:
    return ["run", str(job), "--set", f"out={out}", "--guarantee", "exactly-once", "--checkpoint-dir", str(ck),
            "--max-chunk", "100", "--progress", "off", *extra]


def _job(tmp: Path) -> Path:
    job = tmp / "job.py"
    job.write_text(JOB)
    return job


def _signalled_at_the_gate(tmp: Path, tag: str, at: int, sig: signal.Signals, message: str) -> tuple[Run, Path]:
    """The job (output ``tmp/out``, checkpoints ``tmp/ck``) held at record ``at``, sent ``sig`` there, and
    saying ``message``; the run, and the file whose creation lets the job go on."""
    reached, release = tmp / f"reached-{at}", tmp / f"release-{at}"
    gate = ["--set", f"at={at}", "--set", f"reached={reached}", "--set", f"release={release}"]
    run = Run(tmp, tag, _args(tmp / "job.py", tmp / "out", tmp / "ck", *gate))
    run.wait_for("the gate", lambda _: reached.exists())
    run.proc.send_signal(sig)
    run.wait_for("the stop message", lambda err: message in err)
    return run, release


def _output(out: Path) -> dict[str, list[str]]:
    return {name: sorted(json.dumps(r, sort_keys=True) for r in files.read_committed(out / name))
            if (out / name).is_dir() else [] for name in ("raw", "windows")}


def test_ctrl_c_takes_a_savepoint_exits_130_and_both_ways_of_going_on_complete_the_output(tmp_path: Path) -> None:
    job = _job(tmp_path)
    ref = tmp_path / "ref"
    load_flow(str(job), {"out": str(ref)}).run(guarantee="exactly-once", checkpoint_dir=tmp_path / "ref-ck")
    expected = _output(ref)
    assert len(expected["raw"]) == N

    out, ck = tmp_path / "out", tmp_path / "ck"
    first, release = _signalled_at_the_gate(tmp_path, "first", 900, signal.SIGINT, "taking a savepoint")
    release.touch()
    assert first.finish() == 130, first.stderr
    err = first.stderr
    assert "run the same command again to resume from checkpoint #" in err and "Traceback" not in err
    savepoint = next(line.split()[1].rstrip(":") for line in err.splitlines() if line.strip().startswith("savepoint "))
    manifest = json.loads(Path(savepoint, "MANIFEST.json").read_text())
    assert manifest["savepoint"] is True and manifest["finished"] is False
    assert f"--from-savepoint {savepoint}" in " ".join(err.split())
    before = _output(out)
    assert 900 <= len(before["raw"]) < N  # committed by the savepoint, up to the chunk boundary

    # another directory and output from the savepoint...
    out2 = tmp_path / "out2"
    fork = Run(tmp_path, "fork", _args(job, out2, tmp_path / "ck2", "--from-savepoint", savepoint))
    # ...and the same command again, side by side: the savepoint's directory is only read by the fork
    again = Run(tmp_path, "again", _args(job, out, ck))
    assert fork.finish() == 0, fork.stderr
    assert again.finish() == 0, again.stderr
    assert _output(out) == expected
    rest = _output(out2)
    assert {name: sorted(before[name] + rest[name]) for name in before} == expected


def test_a_second_ctrl_c_aborts_at_once_without_a_savepoint(tmp_path: Path) -> None:
    job, out, ck = _job(tmp_path), tmp_path / "out", tmp_path / "ck"
    # never released: only the second Ctrl-C gets it out
    run, _ = _signalled_at_the_gate(tmp_path, "run", 500, signal.SIGINT, "Ctrl-C again aborts at once")
    assert run.proc.poll() is None  # held at the gate: the stop waits for the chunk boundary
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(timeout=30) == 130, run.stderr
    assert "everything before it is committed" not in run.stderr and "Traceback" not in run.stderr
    for chk in ck.glob("chk-*"):
        assert not json.loads((chk / "MANIFEST.json").read_text()).get("savepoint")
    # the same command goes on from the last periodic checkpoint (or the start)
    again = Run(tmp_path, "again", _args(job, out, ck))
    assert again.finish() == 0, again.stderr
    assert len(_output(out)["raw"]) == N


def test_sigterm_takes_a_savepoint_and_exits_143(tmp_path: Path) -> None:
    _job(tmp_path)
    run, release = _signalled_at_the_gate(tmp_path, "run", 300, signal.SIGTERM, "SIGTERM: taking a savepoint")
    assert "(a second SIGTERM or Ctrl-C aborts at once)" in run.stderr
    release.touch()
    assert run.finish() == 143, run.stderr
    assert "run the same command again to resume from checkpoint #" in run.stderr
    assert 300 <= len(_output(tmp_path / "out")["raw"]) < N


def test_dashboard_options_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from millstream._cli import main

    job = _job(tmp_path)
    base = ["run", str(job), "--set", f"out={tmp_path / 'out'}", "--progress", "off", "-q"]
    assert main([*base, "--dashboard-control"]) == 2
    assert "go with --dashboard" in capsys.readouterr().err
    assert main([*base, "--dashboard", "not-an-address"]) == 2
    assert "dashboard address 'not-an-address'" in " ".join(capsys.readouterr().err.split())
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    assert main([*base, "--dashboard", "127.0.0.1:0", "--dashboard-control"]) == 0
    err = capsys.readouterr().err
    assert err.count("dashboard of flow 'gated' at http://127.0.0.1:") == 1, err
