"""``engine="ray"`` (issue 11, section 3): the same physical plan with workers 1 .. N-1 as Ray actors.

Ray binds the machine's network interface even when asked for loopback, so every flow here runs in
**one** subprocess inside a network namespace of its own with nothing but loopback
(``unshare -n``): nothing it starts can listen beyond it. That subprocess starts Ray once (2-7 s,
~800 MB), runs every scenario, records Ray's own processes, shuts Ray down and reports in JSON; the
tests below each check one scenario of that report, and that every process it recorded is gone.
Without ray or without ``unshare -n`` the tests are skipped with the reason, unless
``MILLSTREAM_REQUIRE_SERVICES=1`` (CI): then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from tests.integration.services import unavailable
from tests.test_parallel import _processes, _shm

import millstream as ms
from millstream.errors import ConfigError, MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]

# The scenarios, run in one process inside ``unshare -n`` (``sys.argv[1]``: where the report goes,
# ``sys.argv[2]``: a scratch directory). Each scenario's outcome (or its traceback) is one entry.
SCRIPT = r'''
import json, os, signal, sys, threading, time, traceback, warnings
from pathlib import Path

import millstream as ms
from millstream import agg, nexmark
from millstream._cli import main as cli
from millstream.errors import JobError
from tests.test_parallel import _rows, tumbling
from tests.test_parallel_checkpoints import RUN, _flow, _rows as committed, expected
from tests.test_nexmark_queries import OUT_OF_ORDER, check, oracle

report, scratch = {}, Path(sys.argv[2])
warnings.simplefilter("ignore", ms.errors.PerformanceWarning)


def scenario(fn):
    t = time.monotonic()
    try:
        report[fn.__name__] = {"ok": True, **(fn() or {})}
    except BaseException as exc:
        report[fn.__name__] = {"ok": False, "error": "".join(traceback.format_exception(exc))}
    report[fn.__name__]["seconds"] = round(time.monotonic() - t, 2)
    return fn


def actors():
    """This namespace's live worker actors (their process title names the class)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"_WorkerActor" in cmd:
            found.append(int(pid))
    return found


def no_actors_left():
    deadline = time.monotonic() + 20
    while actors() and time.monotonic() < deadline:
        time.sleep(0.1)
    return actors()


@scenario
def windows():
    flow, out = tumbling()
    assert flow.run(mode="native").ok
    want = _rows(out.values)
    got = {}
    for p, mode in ((3, "native"), (3, "microbatch"), (2, "batch")):
        flow, out = tumbling()
        result = flow.run(mode=mode, parallelism=p, engine="ray")
        assert result.ok and result.total("late") == 0 and len(result.worker_peak_rss) == p
        got[f"{mode}@{p}"] = _rows(out.values) == want and result.step("window").records_in == 3_000
    return {"same": got, "left": no_actors_left()}


@scenario
def nexmark_q5_q7():
    got = {}
    for q in ("q5", "q7"):
        want = oracle("out-of-order", q)
        for mode in ("native", "microbatch"):
            out = ms.testing.CollectSink()
            result = nexmark.build(q, nexmark.read(OUT_OF_ORDER, splits=4), out).run(
                mode=mode, parallelism=2, engine="ray")
            assert result.ok and result.total("late") == 0 and result.step("events").records_in == 50_000
            check(q, list(out.values), want)  # raises, naming rows, when DuckDB disagrees
            got[f"{q}/{mode}"] = True
    return {"checked": got}


def _resume(first, then, name):
    out, marker = scratch / name / "out", scratch / name / "failed"
    ck = marker.parent / "ck"
    marker.parent.mkdir(parents=True)
    try:
        _flow(30_000, out, fail_marker=marker, at=22_000).run(checkpoint_dir=str(ck), **first, **RUN)
    except JobError as exc:
        failed = "a failure after some checkpoints" in str(exc)
    else:
        failed = False
    partial = committed(out)
    result = _flow(30_000, out, fail_marker=marker, at=22_000).run(checkpoint_dir=str(ck), **then, **RUN)
    return {"failed": failed, "partial": 0 < sum(partial.values()) < sum(expected(30_000).values()),
            "once": all(n == 1 for n in partial.values()), "resumed": result.checkpoints.restored_from is not None,
            "oracle": result.ok and committed(out) == expected(30_000)}


@scenario
def ray_to_local():
    return _resume({"parallelism": 2, "engine": "ray"}, {"parallelism": 3}, "ray-to-local")


@scenario
def local_to_ray():
    return _resume({"parallelism": 2}, {"parallelism": 3, "engine": "ray"}, "local-to-ray")


@scenario
def restart_budget():
    out, marker = scratch / "budget" / "out", scratch / "budget" / "failed"
    marker.parent.mkdir(parents=True)
    result = _flow(30_000, out, fail_marker=marker, at=22_000).run(
        parallelism=2, engine="ray", checkpoint_dir=str(marker.parent / "ck"), restarts=1, restart_delay_s=0.0,
        **RUN)
    return {"restarts": result.restarts, "oracle": result.ok and committed(out) == expected(30_000),
            "failed_once": marker.exists(), "left": no_actors_left()}


def failure_on_ray(flow):
    """The JobError's message of ``flow`` run on two workers on Ray (None: it did not fail)."""
    try:
        flow.run(parallelism=2, engine="ray")
    except JobError as exc:
        return str(exc)
    return None


@scenario
def killed_actor():
    me = os.getpid()

    def die(r):
        if os.getpid() != me and r["n"] > 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return r

    flow = ms.Flow("dies")
    src = flow.source(ms.connectors.memory.read([{"k": i % 50, "ts": i} for i in range(20_000)], splits=2),
                      watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    src.key_by("k").window(ms.windows.tumbling(100)).aggregate(n=agg.count()).map(die, name="die").sink(
        ms.testing.CollectSink())
    return {"message": failure_on_ray(flow), "left": no_actors_left()}


@scenario
def raising_actor():
    me = os.getpid()

    def explode(r):
        if os.getpid() != me:
            raise ZeroDivisionError("on an actor")
        return r

    flow = ms.Flow("raises")
    src = flow.source(ms.connectors.memory.read([{"k": i % 50, "ts": i} for i in range(5_000)], splits=2),
                      watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    src.map(explode, name="explode").key_by("k").window(ms.windows.tumbling(100)).aggregate(n=agg.count()).sink(
        ms.testing.CollectSink())
    return {"message": failure_on_ray(flow), "left": no_actors_left()}


@scenario
def stopped():
    flow = ms.Flow("endless")
    src = flow.source(ms.connectors.generator.read(lambda i: {"k": i % 101, "ts": i}, splits=2),
                      watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
    src.key_by("k").window(ms.windows.tumbling(1000)).aggregate(n=agg.count()).sink(ms.testing.CollectSink())
    control = ms.JobControl()
    seen = []
    timer = threading.Timer(3.0, lambda: (seen.append(actors()), control.request_stop(savepoint=False)))
    timer.start()
    result = flow.run(parallelism=2, engine="ray", control=control)
    return {"interrupted": result.interrupted, "running_before": len(seen[0]), "left": no_actors_left()}


@scenario
def cli():
    job, out = scratch / "job.py", scratch / "cli-out.jsonl"
    job.write_text(
        "import millstream as ms\n"
        "flow = ms.Flow('cli')\n"
        "src = flow.source(ms.connectors.memory.read([{'k': i % 5, 'ts': i} for i in range(1000)], splits=2),\n"
        "                  watermark=ms.WatermarkStrategy.monotonous(timestamp='ts'))\n"
        f"src.key_by('k').window(ms.windows.tumbling(100)).aggregate(n=ms.agg.count()).sink(\n"
        f"    ms.connectors.files.write({str(out)!r}))\n")
    code = cli(["run", str(job), "--parallelism", "2", "--engine", "ray", "-q"])
    lines = len(out.read_text().splitlines())
    nx = scratch / "q5.jsonl"
    code_nx = cli(["nexmark", "run", "--query", "q5", "--events", "20000", "--parallelism", "2", "--engine", "ray",
                   "--out", str(nx), "-q"])
    return {"code": code, "lines": lines, "code_nexmark": code_nx, "nexmark_rows": len(nx.read_text().splitlines())}


import ray

me = os.getpid()
ray_pids = []
for pid in os.listdir("/proc"):  # Ray's own processes (GCS, raylet, agents, workers): below this one
    if not pid.isdigit():
        continue
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        continue
    parent = int(stat[stat.rindex(")") + 2:].split()[1])
    ray_pids.append((int(pid), parent))
below, frontier = set(), [me]
while frontier:
    p = frontier.pop()
    for pid, parent in ray_pids:
        if parent == p and pid not in below:
            below.add(pid)
            frontier.append(pid)
report["ray_processes"] = sorted(below)
ray.shutdown()
Path(sys.argv[1]).write_text(json.dumps(report))
'''


def _unshare_works() -> str | None:
    """Why ``unshare -n`` cannot run the scenarios here, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8) to run Ray in a network namespace with loopback only"
    try:
        run = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -n failed: {exc}"
    if run.returncode != 0:
        return f"unshare -n is not permitted here ({run.stderr.decode().strip()}): Ray would bind the network"
    return None


@pytest.fixture(scope="module")
def report() -> Any:
    """Run every scenario once, in one ``unshare -n`` subprocess with one Ray; its report."""
    try:
        import ray  # noqa: F401
    except ImportError:
        unavailable("ray is not installed (pip install 'millstream[ray]')")
    why = _unshare_works()
    if why is not None:
        unavailable(why)
    scratch = Path(tempfile.mkdtemp(prefix="msray-"))  # short: Ray's socket paths live under it
    try:
        script, out = scratch / "scenarios.py", scratch / "report.json"
        script.write_text(SCRIPT)
        shm_before = _shm()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
               "RAY_TMPDIR": str(scratch / "ray")}
        env.pop("RAY_ADDRESS", None)
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, str(script),
               str(out), str(scratch)]
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0 and out.exists(), \
            f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
        result = json.loads(out.read_text())
        # nothing the scenarios started is left: Ray's processes (GCS, raylet, agents, workers) and /dev/shm
        deadline = time.monotonic() + 15
        while set(result["ray_processes"]) & set(_processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        result["left_running"] = sorted(set(result["ray_processes"]) & set(_processes()))
        result["left_shm"] = sorted(_shm() - shm_before)
        yield result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ok(report: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = report[name]
    assert entry["ok"], entry.get("error")
    return entry


def test_a_keyed_window_gives_the_answers_of_one_process_on_ray(report: dict[str, Any]) -> None:
    entry = _ok(report, "windows")
    assert entry["same"] == {"native@3": True, "microbatch@3": True, "batch@2": True}
    assert entry["left"] == []


def test_nexmark_q5_and_q7_on_ray_match_the_oracle(report: dict[str, Any]) -> None:
    entry = _ok(report, "nexmark_q5_q7")
    assert entry["checked"] == {"q5/native": True, "q5/microbatch": True, "q7/native": True, "q7/microbatch": True}


@pytest.mark.parametrize("name", ["ray_to_local", "local_to_ray"])
def test_a_checkpoint_taken_on_one_engine_resumes_on_the_other(report: dict[str, Any], name: str) -> None:
    """Exactly-once, failing once after some checkpoints at parallelism 2, resumed at 3 on the other engine:
    the committed output is the oracle's, nothing twice."""
    entry = _ok(report, name)
    assert entry == {**entry, "failed": True, "partial": True, "once": True, "resumed": True, "oracle": True}


def test_the_restart_budget_works_on_ray(report: dict[str, Any]) -> None:
    entry = _ok(report, "restart_budget")
    assert entry["restarts"] == 1 and entry["failed_once"] and entry["oracle"]
    assert entry["left"] == []


def test_a_killed_worker_actor_fails_the_job_naming_it(report: dict[str, Any]) -> None:
    entry = _ok(report, "killed_actor")
    assert entry["message"] is not None and entry["message"].startswith(
        "worker 1 of 2 failed: worker 1 died (its Ray actor died: "), entry["message"]
    assert entry["left"] == []


def test_a_function_raising_in_an_actor_fails_the_job_naming_worker_and_step(report: dict[str, Any]) -> None:
    entry = _ok(report, "raising_actor")
    assert entry["message"] is not None and entry["message"].startswith(
        "worker 1 of 2 failed in step 'explode': "), entry["message"]
    assert "ZeroDivisionError" in entry["message"] and entry["left"] == []


def test_a_stop_stops_the_actors(report: dict[str, Any]) -> None:
    entry = _ok(report, "stopped")
    assert entry["interrupted"] and entry["running_before"] == 1 and entry["left"] == []


def test_the_cli_takes_engine_ray(report: dict[str, Any]) -> None:
    entry = _ok(report, "cli")
    assert entry["code"] == 0 and entry["lines"] == 50
    assert entry["code_nexmark"] == 0 and entry["nexmark_rows"] > 0


def test_nothing_is_left_running_after_ray_shutdown(report: dict[str, Any]) -> None:
    assert report["ray_processes"], "Ray's processes were found"
    assert report["left_running"] == []
    assert report["left_shm"] == []


# -- without Ray ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"engine": "dask"}, r"unknown engine 'dask'; choose one of local, ray"),
    ({"ray_address": "10.0.0.1:6379"}, r"ray_address goes with engine='ray'"),
])
def test_engine_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ms.RunConfig(parallelism=2, **options)


def test_the_cli_refuses_a_ray_address_without_engine_ray(tmp_path: Path) -> None:
    from millstream._cli import _engine_options, _parser

    args = _parser().parse_args(["run", "job.py", "--ray-address", "auto"])
    with pytest.raises(ConfigError, match="--ray-address goes with --engine ray"):
        _engine_options(args)


def test_without_ray_installed_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    flow = ms.Flow("f")
    flow.source(ms.connectors.memory.read([{"k": 1, "ts": 1}], splits=2)).key_by("k").reduce(
        lambda a, b: a).sink(ms.testing.CollectSink())
    with pytest.raises(MissingDependencyError, match=r"pip install 'millstream\[ray\]'"):
        flow.run(parallelism=2, engine="ray")


def test_the_ray_test_script_is_valid_python() -> None:
    compile(textwrap.dedent(SCRIPT), "scenarios.py", "exec")
