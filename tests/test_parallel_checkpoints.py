"""Checkpoints across worker processes, and rescaling on restore (issue 11, section 2).

A job at parallelism N takes aligned checkpoints (every worker writes its part, worker 0 completes the
checkpoint once all are durable); it resumes from its latest checkpoint at any parallelism, each
worker taking the key groups of its range and the positions of its splits. Checked against an
independent plain-Python computation of the same windows, after failures, SIGKILLs of the whole job
and of a single worker.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.test_parallel import _shm, clean  # noqa: F401 - the fixture: no process, nothing in /dev/shm left

import millstream as ms
from millstream import agg
from millstream._checkpoint._owner import DirectoryOwner
from millstream._checkpoint._store import CheckpointStore
from millstream.errors import CheckpointOwnershipError, JobError

pytestmark = pytest.mark.usefixtures("clean")
ROOT = Path(__file__).resolve().parents[1]
KEYS = 23


def event(i: int) -> dict[str, Any]:
    """Record ``i``: up to 40 ms out of order, inside the 50 ms bound (a pure function of ``i``)."""
    return {"id": i, "key": (i * 7919) % KEYS, "ts": i * 10 + (i * 2654435761) % 41}


def expected(n: int, make: Callable[[int], dict[str, Any]] = event) -> Counter[tuple[int, int, int, int]]:
    """The tumbling 1 s windows of the first ``n`` events (``make(i)``: event ``i``), computed in plain
    Python: (key, start, count, sum of ids)."""
    acc: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        e = make(i)
        a = acc.setdefault((e["key"], e["ts"] // 1000 * 1000), [0, 0])
        a[0] += 1
        a[1] += i
    return Counter((k, w, c, s) for (k, w), (c, s) in acc.items())


def _rows(path: Path) -> Counter[tuple[int, int, int, int]]:
    """The committed output of a transactional file sink (a directory; staged files start with . or _)."""
    out: Counter[tuple[int, int, int, int]] = Counter()
    for f in sorted(path.glob("*")) if path.exists() else []:
        if f.is_file() and f.name[0] not in "._":
            for line in f.read_text().splitlines():
                r = json.loads(line)
                out[(r["key"], r["window_start"], r["n"], r["ids"])] += 1
    return out


def _flow(n: int, out: Path, *, fail_marker: Path | None = None, at: int = 0, rate: float = 50_000) -> ms.Flow:
    """The generator in 4 splits (paced: ``rate`` events a second, so that checkpoints come during the run),
    keyed windows, a transactional file sink. With ``fail_marker``: the job fails once, at the first event
    from ``at`` on read once a checkpoint has committed output (on whichever worker reads it); until
    then each event from ``at`` on waits 2 ms, so that on a loaded machine too the failure comes after
    a checkpoint with output and before the end (a checkpoint taken before any window fired commits
    nothing: the rerun would then start over, and the test would show nothing of a resume)."""
    flow = ms.Flow("pc")
    src = flow.source(ms.connectors.generator.read(event, count=n, rate=rate, splits=4, name="events"),
                      watermark=ms.WatermarkStrategy.bounded(50, timestamp="ts"))
    if fail_marker is not None:
        marker = str(fail_marker)

        def fail_once(e: dict[str, Any]) -> dict[str, Any]:
            if e["id"] >= at and not os.path.exists(marker):
                if any(f.name[0] not in "._" for f in out.glob("*")):
                    Path(marker).touch()
                    raise RuntimeError("a failure after some checkpoints")
                time.sleep(0.002)
            return e

        src = src.map(fail_once, name="fail_once")
    (src.key_by("key").window(ms.windows.tumbling(1_000)).aggregate(n=agg.count(), ids=agg.sum("id"))
     .sink(ms.connectors.files.write(str(out), transactional=True), name="out"))
    return flow


RUN = {"guarantee": "exactly-once", "checkpoint_interval": 1, "max_chunk": 200}


def test_a_checkpoint_holds_every_workers_part_and_completes(tmp_path: Path) -> None:
    """Every checkpoint's manifest lists one part per worker (size and checksum), each readable; the
    job's output is the oracle's."""
    out, ck = tmp_path / "out", tmp_path / "ck"
    result = _flow(20_000, out).run(parallelism=3, checkpoint_dir=str(ck), checkpoints_retained=100, **RUN)
    assert result.ok and _rows(out) == expected(20_000)
    assert result.checkpoints is not None and result.checkpoints.completed >= 3
    store = CheckpointStore(str(ck), job=_job_of(ck), read_only=True)
    ids = store.ids()
    with_parts = 0
    for i in ids:
        manifest, _ = store.verify(i)  # every file, parts included, checks out
        parts = [name for name in manifest.get("shared", {}) if name.startswith("part-")]
        assert manifest["parallelism"] == 3
        if manifest["finished"]:
            assert parts == []  # the final checkpoint: nothing left to restore
        else:
            assert sorted(p.split("-w")[1][0] for p in parts) == ["0", "1", "2"]
            with_parts += 1
    assert with_parts >= 2


def _job_of(ck: Path) -> str:
    manifest = next(ck.glob("chk-*/MANIFEST.json"))
    return str(json.loads(manifest.read_text())["job"])


@pytest.mark.parametrize(("first", "then"), [(2, 1), (2, 3), (3, 2)])
def test_a_failed_job_resumes_at_another_parallelism_with_the_same_output(
        first: int, then: int, tmp_path: Path) -> None:
    """A job fails after some checkpoints at one parallelism and is run again at another: the rerun
    resumes from the latest checkpoint (each worker the key groups of its new range, the positions of
    its new splits) and the committed output is the oracle's, exactly once."""
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with pytest.raises(JobError, match="a failure after some checkpoints"):
        _flow(30_000, out, fail_marker=marker, at=22_000).run(parallelism=first, checkpoint_dir=str(ck), **RUN)
    committed = _rows(out)
    assert committed and sum(committed.values()) < sum(expected(30_000).values())
    assert all(n == 1 for n in committed.values())
    result = _flow(30_000, out, fail_marker=marker, at=22_000).run(parallelism=then, checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert _rows(out) == expected(30_000)


def test_the_restart_budget_restarts_the_job_from_its_last_checkpoint(tmp_path: Path) -> None:
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    result = _flow(30_000, out, fail_marker=marker, at=22_000).run(
        parallelism=2, checkpoint_dir=str(ck), restarts=1, restart_delay_s=0.0, **RUN)
    assert result.ok and result.restarts == 1 and marker.exists()
    assert result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert _rows(out) == expected(30_000)


def test_a_checkpoint_of_one_process_resumes_on_several(tmp_path: Path) -> None:
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with pytest.raises(ms.errors.StepError):
        _flow(30_000, out, fail_marker=marker, at=22_000).run(checkpoint_dir=str(ck), **RUN)
    result = _flow(30_000, out, fail_marker=marker, at=22_000).run(parallelism=3, checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert _rows(out) == expected(30_000)


def _count(ctx: ms.Context, e: dict[str, Any]) -> None:
    # per key and second of event time: what a timer reports does not depend on how workers interleave
    seen, second = ctx.state["seen"], e["ts"] // 1000
    seen.put(second, seen.get(second, 0) + 1)
    ctx.timers.register_event_time(second * 1000 + 999)


def _report(ctx: ms.Context, ts: int) -> None:
    ctx.emit({"key": ctx.key, "at": ts, "seen": ctx.state["seen"].get(ts // 1000)})
    ctx.state["seen"].remove(ts // 1000)


def _stateful(out: Path, marker: Path | None, ck: Path) -> ms.Flow:
    """Sessions and a process function with keyed state and event-time timers, after a failure point;
    each into a transactional file sink."""
    flow = ms.Flow("stateful")
    src = flow.source(ms.connectors.generator.read(event, count=30_000, rate=50_000, splits=3, name="events"),
                      watermark=ms.WatermarkStrategy.bounded(50, timestamp="ts"))
    if marker is not None:
        def fail_once(e: dict[str, Any]) -> dict[str, Any]:
            if e["id"] >= 20_000 and not marker.exists() and any(ck.glob("chk-*")):
                marker.touch()
                raise RuntimeError("boom")
            return e

        src = src.map(fail_once)
    keyed = src.key_by("key")
    keyed.window(ms.windows.session(250)).aggregate(n=agg.count(), ids=agg.sum("id")).sink(
        ms.connectors.files.write(str(out / "sessions"), transactional=True), name="sessions")
    keyed.process(_count, on_timer=_report, state={"seen": ms.state.map()}).sink(
        ms.connectors.files.write(str(out / "reports"), transactional=True), name="reports")
    return flow


def _committed(path: Path) -> Counter[str]:
    return Counter(line for f in sorted(path.glob("*")) if f.is_file() and f.name[0] not in "._"
                   for line in f.read_text().splitlines())


@pytest.mark.parametrize(("first", "then"), [(2, 3), (3, 1)])
def test_sessions_and_process_function_state_move_to_another_parallelism(first: int, then: int,
                                                                          tmp_path: Path) -> None:
    """Session windows (sessions and their timers, by key) and a process function (keyed maps in the
    state backend, event-time timers) rescale: a run failed at one parallelism and resumed at another
    commits, exactly once, what an uninterrupted run of one process writes."""
    _stateful(tmp_path / "ref", None, tmp_path).run()
    ck, marker, out = tmp_path / "ck", tmp_path / "failed", tmp_path / "out"
    with pytest.raises(JobError, match="boom"):
        _stateful(out, marker, ck).run(parallelism=first, checkpoint_dir=str(ck), **RUN)
    result = _stateful(out, marker, ck).run(parallelism=then, checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from is not None
    for sink in ("sessions", "reports"):
        want = _committed(tmp_path / "ref" / sink)
        assert want and _committed(out / sink) == want, sink


def test_rescale_takes_the_least_watermark_of_a_stateless_step_and_the_newest_time_of_each_split() -> None:
    """Found by a random-kill loop: at a checkpoint, one worker's splits had ended (its chain after the
    source had watermark +inf) and the other's had not; resumed in one process, the chain took worker 0's
    +inf and the last windows never fired. A stateless step made of several instances takes the least of
    their watermarks; a split's event time, the newest any part holds; a final checkpoint restores
    nothing."""
    from millstream._parallel._rescale import load_parts, snapshot_for
    from millstream._physical import compile as compile_physical
    from millstream._time import MAX_WATERMARK

    flow = _flow(100, Path("/nonexistent/out"))
    pp = compile_physical(flow.plan(), "native", 1)
    chain = next(op.steps[-1].name for op in pp.operators if op.kind == "chain" or op.kind == "key_by")

    def part(wm: int, splits: dict[int, Any], times: dict[str, int]) -> dict[str, Any]:
        time_ = {"wm": wm, "inputs": [wm], "idle": [False]}
        return {"maps": {}, "job": {
            "events": {"state": {"position": splits, "max_ts": {"max_ts": -1, "splits": times}, "wm": wm},
                       "time": {"wm": wm, "inputs": [], "idle": []}},
            chain: {"state": None, "time": time_}}}

    ended = part(MAX_WATERMARK, {0: {"at": 25, "skip": 0}, 1: {"at": 25, "skip": 0}}, {"0": 990, "1": 995, "2": 10})
    going = part(577, {2: {"at": 14, "skip": 0}, 3: {"at": 14, "skip": 0}}, {"2": 620, "3": 630, "0": 500})
    snap = snapshot_for(pp, 0, 2, [ended, going])
    assert snap[chain]["time"]["wm"] == 577
    assert snap["events"]["state"]["wm"] == 577
    assert snap["events"]["state"]["max_ts"]["splits"] == {"0": 990, "1": 995, "2": 620, "3": 630}
    assert sorted(snap["events"]["state"]["position"]) == [0, 1, 2, 3]
    n, parts = load_parts({"parallel": {"parallelism": 3, "parts": {}}, "txns": {}, "read": {}}, "/nonexistent")
    assert n == 3 and parts == [{"job": {}, "maps": {}}] * 3


class _AckSplit(ms.connectors.Source):
    """Split ``split`` of ``splits`` of ``count`` numbered records; its reader appends each acknowledgement
    (``split position pid``) to a file: the readers run in the workers' processes."""

    replay = "position"

    def __init__(self, count: int, log: str, split: int = 0, splits: int = 1) -> None:
        self.count, self.log, self.split, self.splits = count, log, split, splits

    def logical_splits(self) -> list[ms.connectors.Source] | None:
        if self.splits == 1:
            return None
        return [_AckSplit(self.count, self.log, j, 1) for j in range(self.splits)]

    def open(self, ctx: ms.connectors.SourceContext) -> ms.connectors.SourceReader:
        return _AckReader(self)

    def describe(self) -> str:
        return f"acks {self.split}"


class _AckReader(ms.connectors.SourceReader):
    def __init__(self, src: _AckSplit) -> None:
        self.src, self.i = src, 0
        self.mine = list(range(src.split, src.count, 4))

    def poll(self, max_records: int) -> list[Any] | None:
        if self.i >= len(self.mine):
            return None
        out = [{"id": n, "key": n % 7, "ts": n} for n in self.mine[self.i:self.i + min(max_records, 50)]]
        self.i += len(out)
        return out

    def snapshot(self) -> Any:
        return self.i

    def restore(self, position: Any) -> None:
        self.i = position

    def acknowledge(self, position: Any) -> None:
        with open(self.src.log, "a") as f:
            f.write(f"{self.src.split} {position} {os.getpid()}\n")


def test_every_worker_acknowledges_its_splits_after_each_checkpoint_and_at_the_end(tmp_path: Path) -> None:
    """A source's splits acknowledge what a complete checkpoint holds in whichever worker reads them
    (Kafka commits offsets to the group, a redelivery source acks): after checkpoints, and once the final
    checkpoint is written, everything read."""
    log = tmp_path / "acks"
    flow = ms.Flow("acks")
    src = flow.source(_AckSplit(8_000, str(log), splits=4), watermark=ms.WatermarkStrategy.bounded(10, timestamp="ts"))
    src.key_by("key").window(ms.windows.tumbling(100)).aggregate(n=agg.count()).sink(ms.testing.CollectSink())
    result = flow.run(parallelism=2, checkpoint_dir=str(tmp_path / "ck"), guarantee="at-least-once",
                      checkpoint_interval=1, max_chunk=50)
    assert result.ok
    acks = [tuple(int(x) for x in line.split()) for line in log.read_text().splitlines()]
    final = {split: max(pos for s, pos, _ in acks if s == split) for split in range(4)}
    assert final == dict.fromkeys(range(4), 2_000)  # every split: all it read
    assert len({pid for _, _, pid in acks}) == 2  # in both workers' processes
    for split in range(4):  # never backwards
        mine = [pos for s, pos, _ in acks if s == split]
        assert mine == sorted(mine)


def test_a_worker_of_a_run_that_lost_the_directory_writes_no_part(tmp_path: Path) -> None:
    from millstream._parallel._checkpoints import PartWriter

    first = DirectoryOwner(str(tmp_path))
    first.acquire()
    writer = PartWriter(str(tmp_path), first.epoch, first.token)
    assert writer.write(1, 1, {"job": {}})["name"] == f"part-00000001-w1-e{first.epoch}.pkl"
    first.release()
    second = DirectoryOwner(str(tmp_path))
    second.acquire()  # another run took the directory over
    try:
        with pytest.raises(CheckpointOwnershipError):
            writer.write(2, 1, {"job": {}})
        assert not (tmp_path / "shared" / f"part-00000002-w1-e{first.epoch}.pkl").exists()
    finally:
        second.release()


# -- SIGKILL: the whole job, and one worker ------------------------------------------------------


JOB = '''
import os
from typing import Any
import millstream as ms
from tests.test_parallel_checkpoints import event


def build(params: dict[str, Any]) -> ms.Flow:
    flow = ms.Flow("pc")
    src = flow.source(ms.connectors.generator.read(event, count=int(params["events"]), rate=float(params["rate"]),
                                                   splits=4, name="events"),
                      watermark=ms.WatermarkStrategy.bounded(50, timestamp="ts"))
    victim = params.get("victim")
    if victim:
        marker = str(params["marker"])
        me = os.getpid()

        def kill_a_worker(e: dict[str, Any]) -> dict[str, Any]:
            # on a worker process (not the job's), once, after some checkpoints: SIGKILL itself
            if e["id"] >= int(victim) and os.getpid() != me and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), 9)
            return e

        src = src.map(kill_a_worker)
    (src.key_by("key").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"))
     .sink(ms.connectors.files.write(str(params["out"]), transactional=True)))
    return flow
'''


def _cmd(job: Path, out: Path, ck: Path, parallelism: int, events: int, **extra: Any) -> list[str]:
    args = [sys.executable, "-m", "millstream.cli", "run", str(job), "-q", "--progress", "off",
            "--set", f"events={events}", "--set", "rate=40000", "--set", f"out={out}",
            "--guarantee", "exactly-once", "--checkpoint-dir", str(ck), "--checkpoint-interval", "50",
            "--parallelism", str(parallelism)]
    for k, v in extra.items():
        args += ["--set", f"{k}={v}"]
    return args


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


@pytest.mark.parametrize(("seed", "resume_at"), [(1, 1), (2, 3)])
def test_an_exactly_once_job_killed_at_parallelism_2_resumes_at_another(seed: int, resume_at: int,
                                                                        tmp_path: Path) -> None:
    """The whole job (worker 0 and its workers: the process group) is SIGKILLed at a random moment at
    parallelism 2, then run again at parallelism 1 or 3 until it finishes: the committed output is the
    plain-Python computation's, and at the kill it held no duplicate and nothing foreign."""
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent(JOB))
    out, ck = tmp_path / "out", tmp_path / "ck"
    events, want = 60_000, expected(60_000)  # 1.5 s at 40,000 a second: the kill lands mid-run
    rnd = random.Random(seed)
    proc = subprocess.Popen(_cmd(job, out, ck, 2, events), env=_env(), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = False
    try:
        deadline = time.monotonic() + 60
        while not any(ck.glob("chk-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for the first checkpoint: the kill comes after it, at a random moment
        proc.wait(timeout=rnd.uniform(0.0, 0.6))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        killed = True
    _, err = proc.communicate(timeout=60)
    assert killed, f"the job ended before the kill: {err.decode()[-2000:]}"
    seen = _rows(out)
    assert all(n == 1 for n in seen.values()) and set(seen) <= set(want)  # no duplicate, nothing foreign
    again = subprocess.run(_cmd(job, out, ck, resume_at, events), env=_env(), cwd=ROOT, capture_output=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert _rows(out) == want


def test_a_worker_killed_alone_fails_the_job_cleanly_and_the_rerun_resumes(tmp_path: Path) -> None:
    """One worker process SIGKILLs itself mid-run: the job fails with an error naming it, leaves no
    process and nothing in /dev/shm behind; run again, it resumes from its last checkpoint and the
    output is the oracle's."""
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent(JOB))
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "killed"
    shm = _shm()
    events = 30_000
    first = subprocess.Popen(_cmd(job, out, ck, 2, events, victim=20_000, marker=marker), env=_env(), cwd=ROOT,
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = first.communicate(timeout=120)
    assert marker.exists() and first.returncode != 0
    assert re_search(r"worker \d of 2 failed: worker \d died \(exit code -9\)", err.decode())
    deadline = time.monotonic() + 5
    while _group_alive(first.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(first.pid), "no process of the job is left"
    assert _shm() - shm == set()
    assert _rows(out) and set(_rows(out)) <= set(expected(events))
    again = subprocess.run(_cmd(job, out, ck, 2, events, victim=20_000, marker=marker), env=_env(), cwd=ROOT,
                           capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert _rows(out) == expected(events)
    status = CheckpointStore(str(ck), job=_job_of(ck), read_only=True)
    assert status.ids()


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def _group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still running (zombies aside)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.mark.skipif(not os.environ.get("MILLSTREAM_PARALLEL_KILL_TRIALS"),
                    reason="a campaign, run by hand: MILLSTREAM_PARALLEL_KILL_TRIALS=40 pytest "
                           "tests/test_parallel_checkpoints.py -k campaign")
def test_campaign_of_random_kills_at_random_parallelisms(tmp_path: Path) -> None:
    """Trials of 1-3 SIGKILLs of the whole job, each start at a random parallelism (1, 2 or 3),
    exactly-once; after every kill the committed output holds no duplicate and nothing foreign, and at
    the end it is the oracle's. ``MILLSTREAM_PARALLEL_KILL_SEED`` (default 0) picks the first seed,
    ``MILLSTREAM_PARALLEL_KILL_WINDOW`` (``lo,hi`` seconds after a start, default ``0.3,2.0``) when kills
    land. Every anomaly is reported with its seed and the schedule of starts."""
    trials = int(os.environ["MILLSTREAM_PARALLEL_KILL_TRIALS"])
    first = int(os.environ.get("MILLSTREAM_PARALLEL_KILL_SEED", "0"))
    lo, hi = (float(x) for x in os.environ.get("MILLSTREAM_PARALLEL_KILL_WINDOW", "0.3,2.0").split(","))
    events = 60_000
    want = expected(events)
    failures = []
    for seed in range(first, first + trials):
        rnd = random.Random(seed)
        d = tmp_path / f"trial-{seed}"
        d.mkdir()
        job, out, ck = d / "job.py", d / "out", d / "ck"
        job.write_text(textwrap.dedent(JOB))
        kills, history, anomalies = rnd.randint(1, 3), [], []
        while not anomalies:
            p = rnd.choice([1, 2, 3])
            proc = subprocess.Popen(_cmd(job, out, ck, p, events), env=_env(), cwd=ROOT, start_new_session=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            killed = False
            if kills > 0:
                try:
                    proc.wait(timeout=rnd.uniform(lo, hi))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed, kills = True, kills - 1
            _, err = proc.communicate(timeout=120)
            history.append((p, proc.returncode, killed))
            seen = _rows(out)
            if any(n > 1 for n in seen.values()) or not set(seen) <= set(want):
                anomalies.append("a duplicate or a foreign row committed")
            if proc.returncode == 0:
                break
            if proc.returncode != -signal.SIGKILL:
                anomalies.append(f"exit code {proc.returncode}: {err.decode()[-1500:]}")
            elif len(history) > 10:
                anomalies.append("no progress after 10 starts")
        if not anomalies and _rows(out) != want:
            anomalies.append("the final output is not the oracle's")
        if anomalies:
            failures.append(f"seed {seed}, starts (parallelism, exit, killed) {history}: {anomalies}")
    assert not failures, "\n".join(failures)
