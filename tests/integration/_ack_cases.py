"""What the tests of the connectors that commit or acknowledge with checkpoints share (NATS
JetStream and Redis Streams; MQTT and RabbitMQ; PostgreSQL's sinks and change capture): a map that
crashes the job, the committed output, jobs in a subprocess, and the loop that kills them (at
failpoints, at random) until one finishes.

Each helper asserts what it runs for (the job crashed, the run finished, the output is a subset
of the reference); what a connector keeps on its broker (a consumer's ack floor, a pending entries
list, a queue's ready count) stays in that connector's tests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests._cli_runs import cli, cli_env
from tests.integration import services

import millstream as ms


def rows(out: Path) -> list[dict[str, Any]]:
    """The committed rows of a transactional files sink (none while ``out`` does not exist yet)."""
    return [json.loads(line) for f in sorted(out.glob("*")) if f.is_file() and f.name[0] not in "._"
            for line in f.read_text().splitlines() if line.strip()]


class Crash:
    """A map that fails the job once it has seen ``at`` records (``None``: never)."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.seen = 0

    def __call__(self, rec: Any) -> Any:
        self.seen += 1
        if self.at is not None and self.seen > self.at:
            raise RuntimeError("crash")
        return rec


# -- in this process -------------------------------------------------------------------------------


def run_exactly_once(name: str, src: Any, out: Path, ckpt: Path | str, crash_at: int | None = None) -> Any:
    """``src`` -> :class:`Crash` -> transactional files in ``out``, exactly-once with a checkpoint every
    millisecond and chunks of 100; the job's result (with ``crash_at``, it raises "crash" first)."""
    flow = ms.Flow(name)
    flow.source(src).map(Crash(crash_at)).sink(ms.connectors.files.write(str(out), transactional=True))
    return flow.run(mode="native", guarantee="exactly-once", checkpoint_dir=str(ckpt), checkpoint_interval=1,
                    max_chunk=100)


def crash_before_a_checkpoint(src: Any, sink: Any, guarantee: str, ckpt: Path, at: int = 500) -> None:
    """Run ``src`` -> :class:`Crash` (``at``) -> ``sink`` under ``guarantee`` with checkpoints too far apart
    for one to complete, in chunks of 100: the job must fail at record ``at`` + 1."""
    flow = ms.Flow(guarantee)
    flow.source(src).map(Crash(at)).sink(sink)
    with pytest.raises(Exception, match="crash"):
        flow.run(mode="native", guarantee=guarantee, checkpoint_dir=str(ckpt), checkpoint_interval=600_000,
                 max_chunk=100)


def fail_at_the_third_acknowledge(run: Callable[[], Any]) -> None:
    """``run()`` with the third acknowledgement failing: checkpoint 3's output is committed, its
    messages are not acknowledged. The run must fail at the failpoint."""
    from millstream._checkpoint._failpoints import arm

    arm("source.acknowledge=raise#3")
    try:
        with pytest.raises(Exception, match="failpoint"):
            run()
    finally:
        arm("")


def read_while_publishing(src: Any, mode: str, publish: Callable[[list[Any]], None]) -> list[int]:
    """Run an unbounded ``src`` in a thread while ``publish`` sends records 0..199 and then -1, at
    which the job ends by failing; the sorted values of ``i`` the job saw."""
    seen: list[int] = []

    def note(rec: Any) -> Any:
        seen.append(rec["i"])
        return rec

    def stopper(rec: Any) -> Any:  # the job ends by failing at the last message
        if rec["i"] == -1:
            raise RuntimeError("enough")
        return rec

    def run() -> None:
        try:
            flow.run(mode=mode)
        except Exception:  # noqa: BLE001, S110 - the test ends the job by failing it
            pass

    flow = ms.Flow("follow")
    flow.source(src).map(note).map(stopper).sink(ms.connectors.memory.write())
    job = threading.Thread(target=run, daemon=True)
    job.start()
    publish([{"i": i} for i in range(200)] + [{"i": -1}])
    job.join(20)
    assert not job.is_alive(), "the job did not end at the last message"
    return sorted(seen)


def run_while_cutting(src: Any, proxy: services.Proxy, cutter: Callable[[threading.Event], None], tmp_path: Path,
                      *, pause_s: float, chunk: int) -> Any:
    """``src`` (connected through ``proxy``) -> a pause of ``pause_s`` every 100th ``i`` -> transactional
    files in ``tmp_path / "out"``, exactly-once with a checkpoint every 20 ms, while ``cutter(stop)``
    breaks connections in a thread; the job's result. The proxy is closed afterwards."""

    def slow(rec: Any) -> Any:
        if rec["i"] % 100 == 0:
            time.sleep(pause_s)
        return rec

    flow = ms.Flow("cut")
    flow.source(src).map(slow).sink(ms.connectors.files.write(str(tmp_path / "out"), transactional=True))
    stop = threading.Event()
    thread = threading.Thread(target=cutter, args=(stop,), daemon=True)
    thread.start()
    try:
        return flow.run(mode="native", guarantee="exactly-once", checkpoint_dir=str(tmp_path / "ckpt"),
                        checkpoint_interval=20, max_chunk=chunk)
    finally:
        stop.set()
        thread.join()
        proxy.close()


def run_cutting_at(src: Any, proxy: services.Proxy, at: tuple[int, ...], ckpt: Path,
                   after_cut: Callable[[], None] | None = None) -> tuple[dict[str, Any], list[int]]:
    """``src`` (connected through ``proxy``) -> a map that cuts every connection of the proxy at the
    records counted in ``at`` (then calls ``after_cut``) -> a transactional collecting sink, exactly-once
    with a checkpoint every 20 ms and chunks of 100. The source's figures and the sorted values of
    ``i`` the sink committed; the proxy is closed afterwards."""
    seen = [0]

    def cut(r: Any) -> Any:
        seen[0] += 1
        if seen[0] in at:
            proxy.cut()
            if after_cut is not None:
                after_cut()
        return r

    out = ms.testing.TransactionalCollectSink()
    flow = ms.Flow("cut")
    flow.source(src).map(cut).sink(out)
    try:
        result = flow.run(guarantee="exactly-once", checkpoint_dir=ckpt, checkpoint_interval=20, max_chunk=100)
    finally:
        proxy.close()
    return next(s.extra for s in result.steps if s.kind == "source"), sorted(r["i"] for r in out.values)


# -- jobs in a subprocess, killed --------------------------------------------------------------------


def run_through_faults(cmd: list[str], faults: list[str | None], *, wait_s: tuple[float, float],
                       rnd: random.Random, after_kill: Callable[[str], None] | None = None) -> list[str]:
    """Start ``cmd`` once per fault, in order, until a run finishes. A fault is a failpoint spec armed in
    that run's environment (``"sink.commit=kill#2"``), ``"random"`` (SIGKILL the run if it still works
    a random ``wait_s`` after its start) or None (let it run). A run must end by success or by SIGKILL
    (else the test fails with its stderr); ``after_kill(fault)`` follows each kill. The faults that
    killed a run, in order."""
    killed: list[str] = []
    for start, fault in enumerate(faults):
        env = cli_env()
        if fault is not None and fault != "random":
            env["MILLSTREAM_FAILPOINTS"] = fault
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        if fault == "random":
            try:
                proc.wait(timeout=rnd.uniform(*wait_s))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            return killed
        assert proc.returncode == -signal.SIGKILL, f"start {start} ({fault}) failed:\n{err[-3000:]}"
        killed.append(str(fault))
        if after_kill is not None:
            after_kill(str(fault))
    pytest.fail(f"the job did not finish after {len(faults)} starts")


def random_kills(kills: int, starts: int = 12) -> list[str | None]:
    """The faults of :func:`run_through_faults` that kill the first ``kills`` runs at random moments."""
    return ["random"] * kills + [None] * (starts - kills)


def events(n: int) -> list[dict[str, int]]:
    """``n`` events over 17 keys with event times a little out of order (up to 40 ms)."""
    return [{"id": i, "key": (i * 7919) % 17, "ts": i * 10 + (i * 2654435761) % 41} for i in range(n)]


def windowed_job(name: str, source: str, every: int) -> str:
    """A job module for ``millstream run``: ``source`` (an expression over ``params``) -> keyed 1 s
    windows of :func:`events` -> files in ``params["out"]``, transactional when asked; the runs to be
    killed sleep 20 ms every ``every`` records, so that a kill 0.3-1.5 s after a start lands while the
    first run works whatever the machine's speed."""
    return textwrap.dedent('''
        import time
        import millstream as ms

        def build(params):
            every = EVERY if params.get("transactional") in (True, "true") else 10**9

            def slow(rec):
                if rec["id"] % every == 0:
                    time.sleep(0.02)
                return rec

            flow = ms.Flow(NAME)
            src = flow.source(SOURCE, watermark=ms.WatermarkStrategy.bounded(50, timestamp="ts"))
            (src.map(slow).key_by("key").window(ms.windows.tumbling(1_000))
                .aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"))
                .sink(ms.connectors.files.write(params["out"], format="jsonl",
                                                transactional=params.get("transactional") in (True, "true"))))
            return flow
    ''').replace("EVERY", str(every)).replace("NAME", repr(name)).replace("SOURCE", source)


def _cli(tmp_path: Path, params: dict[str, str], out: Path, ckpt: str | None) -> list[str]:
    args = cli("run", str(tmp_path / "job.py"), "-q", "--progress", "off", "--mode", "native", "--set", f"out={out}")
    for k, v in params.items():
        args += ["--set", f"{k}={v}"]
    if ckpt is not None:
        args += ["--set", "transactional=true", "--guarantee", "exactly-once", "--checkpoint-dir", ckpt,
                 "--checkpoint-interval", "50"]
    return args


def kill_exactly_once(tmp_path: Path, job: str, ref: dict[str, str], eo: dict[str, str]) -> None:
    """Run ``job`` (see :func:`windowed_job`) once to the end without checkpoints (with ``ref`` params),
    then exactly-once (with ``eo`` params), SIGKILLed at random up to twice and restarted until it
    finishes: after each kill the committed output is within the reference, at the end it equals it."""
    (tmp_path / "job.py").write_text(job)
    ref_out = tmp_path / "ref.jsonl"
    done = subprocess.run(_cli(tmp_path, ref, ref_out, None), env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    expected = Counter(json.dumps(json.loads(line), sort_keys=True) for line in ref_out.read_text().splitlines())
    assert sum(expected.values()) > 0

    out, ckpt = tmp_path / "out", str(tmp_path / "ckpt")

    def within_the_reference(fault: str) -> None:
        seen = Counter(json.dumps(v, sort_keys=True) for v in rows(out))
        assert not (seen - expected), "output not in the reference (a duplicate or a wrong window)"

    kills = len(run_through_faults(_cli(tmp_path, eo, out, ckpt), random_kills(2), wait_s=(0.3, 1.5),
                                   rnd=random.Random(os.getpid()), after_kill=within_the_reference))
    got = Counter(json.dumps(v, sort_keys=True) for v in rows(out))
    assert kills >= 1, "the job ended before any kill: make it slower"
    assert got == expected, f"after {kills} kills: {sum(got.values())} rows, expected {sum(expected.values())}"


# -- a job script per run: source -> map -> transactional files (MQTT, RabbitMQ) -------------------------


def script_job(tmp: Path, name: str, source: str, n: int, *, interval_ms: int, marker: Path | None = None,
               slow_s: float = 0.0, mode: str = "native") -> str:
    """Write ``tmp/job.py``, run as ``python job.py CKPT OUT``: ``source`` (an expression) -> a step
    sleeping ``slow_s`` a record -> transactional files, exactly-once with a checkpoint every
    ``interval_ms`` and chunks of 100. With ``marker``, the first run makes the file once it has seen
    ``n`` records and then holds until it is killed. Its path."""
    path = tmp / "job.py"
    path.write_text(textwrap.dedent(f"""
        import os, sys, time
        import millstream as ms
        ck, out = sys.argv[1], sys.argv[2]
        seen = [0]
        # the run that makes the marker holds there until it is killed: it must not get to end and
        # take its final checkpoint first (that would acknowledge everything)
        hold = {str(marker)!r} != "None" and not os.path.exists({str(marker)!r})
        def step(r):
            seen[0] += 1
            if {slow_s!r}:
                time.sleep({slow_s!r})
            if hold and seen[0] >= {n}:
                open({str(marker)!r}, "w").close()
                time.sleep(120)
            return r
        flow = ms.Flow({name!r})
        flow.source({source}).map(step).sink(ms.connectors.files.write(out, transactional=True))
        flow.run(guarantee="exactly-once", checkpoint_dir=ck, checkpoint_interval={interval_ms}, max_chunk=100,
                 mode={mode!r})
    """))
    return str(path)


def committed_ids(out: Path) -> list[int]:
    """The sorted values of ``i`` committed in ``out``."""
    return sorted(r["i"] for r in ms.connectors.files.read_committed(out))


def run_to_the_end(script: str, ck: Path, out: Path) -> None:
    subprocess.run([sys.executable, script, str(ck), str(out)], env=cli_env(), check=True, timeout=60)


def kill_once_all_is_read(script: str, marker: Path, ck: Path, out: Path,
                          while_held: Callable[[], None] | None = None) -> None:
    """Start the job (made with ``marker``), wait until it has read every message, call ``while_held``
    and SIGKILL it: no checkpoint completed, so nothing was acknowledged."""
    proc = subprocess.Popen([sys.executable, script, str(ck), str(out)], env=cli_env())
    try:
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert marker.exists(), "the job did not read the messages"
        if while_held is not None:
            while_held()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def kill_at_the_third_acknowledge_then_resume(script: str, ck: Path, out: Path, n: int) -> None:
    """Killed after checkpoint 3 committed its output, before its acknowledgement went out; the rerun
    must give each of the ``n`` messages exactly once (the redelivered ones of that checkpoint dropped)."""
    failing = cli_env()
    failing["MILLSTREAM_FAILPOINTS"] = "source.acknowledge=kill#3"
    first = subprocess.run([sys.executable, script, str(ck), str(out)], env=failing, timeout=60)
    assert first.returncode == -signal.SIGKILL
    committed = len(ms.connectors.files.read_committed(out))
    assert 0 < committed < n
    run_to_the_end(script, ck, out)
    ids = committed_ids(out)
    assert ids == list(range(n)), (committed, len(ids), len(set(ids)))


def sigkill_until_done(script: str, ck: Path, out: Path, n: int) -> None:
    """SIGKILL the job up to three times 0.6-1.6 s after its start, restarting it until it finishes: at
    least one kill, and each of the ``n`` messages committed exactly once."""
    kills = len(run_through_faults([sys.executable, script, str(ck), str(out)], random_kills(3), wait_s=(0.6, 1.6),
                                   rnd=random.Random(os.getpid())))
    ids = committed_ids(out)
    assert kills >= 1, "the job ended before any kill: make it slower"
    assert ids == list(range(n)), (kills, len(ids), len(set(ids)))
