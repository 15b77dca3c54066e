"""At-most-once and savepoints at parallelism > 1 (issue 11, "Checkpoints across workers ... in every
guarantee").

- **Savepoints.** A job at parallelism 2 stopped with a savepoint (every worker stops reading, a
  checkpoint commits what was made, then the savepoint: an aligned checkpoint whose manifest says so,
  a part per worker) resumes from it at 2 and at 3, in its own directory or from ``from_savepoint`` in
  a new one with a new output; a savepoint of one process starts a run of workers. The output put
  together is the plain-Python oracle's, exactly once, and the run says it restored that savepoint.
- **At-most-once.** Every worker records its sources' read positions before each chunk (a file of its
  own); a job SIGKILLed whole at parallelism 2 and run again at 2, 1 or 3 goes on past what any worker
  had read, with what its restored state fires up to the watermark reached before the kill muted:
  nothing is emitted twice (records may be missing), in native and micro-batch mode.
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
from pathlib import Path
from typing import Any

import pytest
from tests.test_parallel import clean  # noqa: F401 - the fixture: no process, nothing in /dev/shm left
from tests.test_parallel_checkpoints import ROOT, _env, _flow, _rows, expected

import millstream as ms
from millstream._checkpoint._store import CheckpointStore

pytestmark = pytest.mark.usefixtures("clean")

RUN = {"guarantee": "exactly-once", "checkpoint_interval": 20, "max_chunk": 200}


def _run_and_stop_with_savepoint(flow: ms.Flow, out: Path, **options: Any) -> ms.RunResult:
    """Run ``flow`` in a thread (``flow.start`` keeps metrics, which a job of workers does not yet) and,
    once some output is committed (a checkpoint completed mid-run), stop it with a savepoint."""
    control = ms.JobControl()
    results: list[ms.RunResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(flow.run(control=control, **options))
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread below
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 60
    while not _rows(out) and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    control.request_stop(savepoint=True)
    runner.join(60)
    assert not runner.is_alive(), "the job did not stop"
    if errors:
        raise errors[0]
    result = results[0]
    assert result.interrupted, "the job ended before the stop: make it longer"
    assert result.savepoint is not None and control.savepoint_path() == result.savepoint
    return result


def _savepoint_id(result: ms.RunResult) -> int:
    assert result.savepoint is not None
    manifest = json.loads((Path(result.savepoint) / "MANIFEST.json").read_text())
    assert manifest["savepoint"] is True
    return int(manifest["id"])


def _exactly(out: Path, *more: Path) -> Counter[tuple[int, int, int, int]]:
    total = _rows(out)
    for path in more:
        total += _rows(path)
    return total


@pytest.mark.parametrize(("then", "mode"), [(2, "native"), (3, "native"), (3, "microbatch")])
def test_a_savepoint_of_two_workers_resumes_at_two_and_three(then: int, mode: str, tmp_path: Path) -> None:
    """Stopped with a savepoint at parallelism 2 (a part per worker, marked savepoint), the job resumes from
    it in the same directory at ``then`` workers with the oracle's output, exactly once."""
    out, ck, n = tmp_path / "out", tmp_path / "ck", 20_000
    stopped = _run_and_stop_with_savepoint(_flow(n, out, rate=10_000), out, mode=mode, parallelism=2,
                                           checkpoint_dir=str(ck), **RUN)
    sp = _savepoint_id(stopped)
    manifest = json.loads((Path(str(stopped.savepoint)) / "MANIFEST.json").read_text())
    assert manifest["parallelism"] == 2
    assert sorted(name.split("-w")[1][0] for name in manifest["shared"] if name.startswith("part-")) == ["0", "1"]
    assert stopped.checkpoints is not None and stopped.checkpoints.history[-1].get("savepoint") is True
    before = _rows(out)
    assert before and all(c == 1 for c in before.values()) and set(before) <= set(expected(n))
    assert sum(before.values()) < sum(expected(n).values())  # stopped mid-run
    result = _flow(n, out, rate=10_000).run(mode, parallelism=then, checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == sp
    assert _rows(out) == expected(n)


def test_from_a_savepoint_of_two_workers_into_a_new_directory_and_output_at_three(tmp_path: Path) -> None:
    """``from_savepoint`` starts a run of 3 workers in a new checkpoint directory, writing a new output: the
    two outputs together are the oracle's, exactly once."""
    out, ck, out2, ck2, n = tmp_path / "out", tmp_path / "ck", tmp_path / "out2", tmp_path / "ck2", 20_000
    stopped = _run_and_stop_with_savepoint(_flow(n, out, rate=10_000), out, parallelism=2, checkpoint_dir=str(ck),
                                           **RUN)
    sp = _savepoint_id(stopped)
    result = _flow(n, out2, rate=10_000).run(parallelism=3, checkpoint_dir=str(ck2), from_savepoint=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == sp
    assert _rows(out2) and _exactly(out, out2) == expected(n)


def test_a_savepoint_of_one_process_starts_a_run_of_workers(tmp_path: Path) -> None:
    """A savepoint taken by one process starts a job at parallelism 2 (its state split by key group, its
    splits' positions to their workers): the two outputs together are the oracle's, exactly once."""
    out, ck, out2, ck2, n = tmp_path / "out", tmp_path / "ck", tmp_path / "out2", tmp_path / "ck2", 20_000
    stopped = _run_and_stop_with_savepoint(_flow(n, out, rate=10_000), out, parallelism=1, checkpoint_dir=str(ck),
                                           **RUN)
    sp = _savepoint_id(stopped)
    result = _flow(n, out2, rate=10_000).run(parallelism=2, checkpoint_dir=str(ck2),
                                              from_savepoint=stopped.savepoint, **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == sp
    assert _rows(out2) and _exactly(out, out2) == expected(n)


def test_a_savepoint_of_workers_resumes_in_one_process(tmp_path: Path) -> None:
    """And back: the savepoint of 2 workers resumes in one process (its parts merged)."""
    out, ck, n = tmp_path / "out", tmp_path / "ck", 20_000
    sp = _savepoint_id(_run_and_stop_with_savepoint(_flow(n, out, rate=10_000), out, parallelism=2,
                                                    checkpoint_dir=str(ck), **RUN))
    result = _flow(n, out, rate=10_000).run(parallelism=1, checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == sp
    assert _rows(out) == expected(n)


def test_sigterm_to_the_cli_stops_two_workers_with_a_savepoint(tmp_path: Path) -> None:
    """``millstream run --parallelism 2`` with a checkpoint directory, sent SIGTERM mid-run: it exits 143
    with a savepoint of both workers in the directory, and the rerun goes on from it to the oracle's output."""
    from tests.test_parallel_checkpoints import JOB as EXACTLY_ONCE_JOB
    from tests.test_parallel_checkpoints import _cmd as exactly_once_cmd

    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent(EXACTLY_ONCE_JOB))
    out, ck, events = tmp_path / "out", tmp_path / "ck", 60_000
    proc = subprocess.Popen(exactly_once_cmd(job, out, ck, 2, events), env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not _rows(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()[-3000:]
    store = CheckpointStore(str(ck), job=_job_of(ck), read_only=True)
    sp = store.newest_savepoint()
    assert sp is not None and store.verify(sp)[0]["parallelism"] == 2
    assert sum(_rows(out).values()) < sum(expected(events).values())
    again = subprocess.run(exactly_once_cmd(job, out, ck, 2, events), env=_env(), cwd=ROOT, capture_output=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert _rows(out) == expected(events)  # exactly once: a start from scratch would write the first part twice


# -- at-most-once: SIGKILL of the whole job ------------------------------------------------------------


JOB = '''
from typing import Any
import millstream as ms
from tests.test_parallel_checkpoints import event


def build(params: dict[str, Any]) -> ms.Flow:
    flow = ms.Flow("amo")
    src = flow.source(ms.connectors.generator.read(event, count=int(params["events"]), rate=float(params["rate"]),
                                                   splits=4, name="events"),
                      watermark=ms.WatermarkStrategy.bounded(50, timestamp="ts"))
    (src.key_by("key").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"))
     .sink(ms.connectors.files.write(str(params["out"]))))
    return flow
'''


def _cmd(job: Path, out: Path, ck: Path, parallelism: int, events: int, mode: str) -> list[str]:
    return [sys.executable, "-m", "millstream.cli", "run", str(job), "-q", "--progress", "off",
            "--set", f"events={events}", "--set", "rate=40000", "--set", f"out={out}", "--mode", mode,
            "--guarantee", "at-most-once", "--checkpoint-dir", str(ck), "--checkpoint-interval", "50",
            "--parallelism", str(parallelism)]


def _windows(out: Path) -> Counter[tuple[int, int]]:
    """How many times each (key, window) was written (a torn last line, cut by the kill, left out)."""
    seen: Counter[tuple[int, int]] = Counter()
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            seen[(r["key"], r["window_start"])] += 1
    return seen


def _rows_of(out: Path) -> dict[tuple[int, int], tuple[int, int]]:
    rows = {}
    for line in out.read_text().splitlines():
        r = json.loads(line)
        rows[(r["key"], r["window_start"])] = (r["n"], r["ids"])
    return rows


def _positions_files(ck: Path) -> dict[str, dict[str, Any]]:
    store = CheckpointStore(str(ck), job=_job_of(ck), read_only=True)
    return {p.name: store.read_positions(p.name) or {} for p in sorted(ck.glob("positions-e*-w*.pkl"))}


def _job_of(ck: Path) -> str:
    manifest = next(ck.glob("chk-*/MANIFEST.json"))
    return str(json.loads(manifest.read_text())["job"])


@pytest.mark.parametrize(("mode", "resume_at", "seed"), [
    ("native", 2, 1), ("native", 1, 2), ("native", 3, 3), ("microbatch", 2, 4), ("microbatch", 3, 5)])
def test_an_at_most_once_job_killed_at_parallelism_2_emits_nothing_twice(mode: str, resume_at: int, seed: int,
                                                                         tmp_path: Path) -> None:
    """The whole job is SIGKILLed at a random moment after its first checkpoint at parallelism 2, with
    every worker's read positions recorded; run again at ``resume_at`` it goes on past what was read:
    no window is written twice (before or after the resume), none is foreign, none holds more than the
    oracle's records (it may hold fewer: at-most-once loses what was read and not yet checkpointed)."""
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent(JOB))
    out, ck = tmp_path / "out.jsonl", tmp_path / "ck"
    events, want = 60_000, expected(60_000)
    oracle = {(k, w): (c, s) for k, w, c, s in want}
    rnd = random.Random(seed)
    proc = subprocess.Popen(_cmd(job, out, ck, 2, events, mode), env=_env(), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = False
    try:
        deadline = time.monotonic() + 60
        while not any(ck.glob("chk-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.wait(timeout=rnd.uniform(0.1, 0.6))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        killed = True
    _, err = proc.communicate(timeout=60)
    assert killed, f"the job ended before the kill: {err.decode()[-2000:]}"
    # every worker recorded its splits' positions: worker 0 and worker 1, two splits each
    recorded = _positions_files(ck)
    assert sorted(name.rsplit("-", 1)[1] for name in recorded) == ["w0.pkl", "w1.pkl"], recorded.keys()
    assert all(len(p) == 1 for p in recorded.values())  # the one source step
    splits = [set(next(iter(p.values()))["position"]) for p in recorded.values()]
    assert splits[0].isdisjoint(splits[1]) and splits[0] | splits[1] == {0, 1, 2, 3}
    seen = _windows(out)
    assert seen and all(c == 1 for c in seen.values()), "a window written twice before the kill"
    again = subprocess.run(_cmd(job, out, ck, resume_at, events, mode), env=_env(), cwd=ROOT, capture_output=True,
                           timeout=180)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    # it resumed past what was read: the workers' files merged into the new run's base (one process: its file)
    assert any(ck.glob("positions-e*-base.pkl")) if resume_at > 1 else (ck / "positions.pkl").exists()
    seen = _windows(out)
    twice = [w for w, c in seen.items() if c > 1]
    assert not twice, f"{len(twice)} windows written twice, e.g. {twice[:5]}"
    rows = _rows_of(out)
    assert set(rows) <= set(oracle)
    assert all(rows[w][0] <= oracle[w][0] for w in rows)
    # what was read after the resume is all there: the last windows are whole, and at least half the run
    # is (how much at-most-once loses depends on the moment of the kill: the windows open then and the
    # chunk in flight; 16 % of the windows were lost in a clean-clone CI run, so 90 % was a guess that
    # failed, not a guarantee; half guards against a resume that skips most of the input)
    assert len(rows) >= 0.5 * len(oracle)
    last = max(w for _, w in oracle)
    assert all(rows.get(k_w) == oracle[k_w] for k_w in oracle if k_w[1] == last)


def test_read_positions_merge_split_by_split_newest_run_last_and_idle_splits_bound_nothing(tmp_path: Path) -> None:
    """The merge a resume starts from: every run's worker files, older owner epochs first (a run's base
    before its workers' files), each split taking the newest entry; the source's watermark is the least
    of its busy splits', so a split that was idle (left out downstream) does not pull the resumed
    watermark below what its receivers had reached."""
    from millstream._parallel._checkpoints import positions_name, read_all_positions

    store = CheckpointStore(str(tmp_path), job="j")

    def entry(at: dict[int, int], wm: int, idle: bool = False) -> dict[str, Any]:
        return {"src": {"position": {j: {"at": a, "skip": 0} for j, a in at.items()}, "wm": wm,
                        "wm_of": dict.fromkeys(at, None if idle else wm), "max_ts": None}}

    for epoch, worker, positions in [(1, 0, entry({0: 5, 1: 5}, 100)), (1, 1, entry({2: 7, 3: 7}, 40, idle=True)),
                                     (2, None, entry({0: 5, 1: 5, 2: 7, 3: 7}, 40)), (2, 0, entry({0: 9}, 150))]:
        writer = store.sibling()
        writer.write_positions(positions, positions_name(epoch, worker))
        writer.close()
    found = read_all_positions(store)
    assert found is not None
    merged, files = found
    src = merged["src"]
    assert {j: p["at"] for j, p in src["position"].items()} == {0: 9, 1: 5, 2: 7, 3: 7}
    # the base of run 2 said 40 for splits 2 and 3 (busy then); run 1's idle worker said nothing: 40 holds
    assert src["wm_of"] == {0: 150, 1: 40, 2: 40, 3: 40} and src["wm"] == 40
    assert len(files) == 4
    # without the base: the idle splits bound nothing, the source's watermark is its busy splits' least
    (tmp_path / positions_name(2, None)).unlink()
    found = read_all_positions(store)
    assert found is not None
    assert found[0]["src"]["wm_of"] == {0: 150, 1: 100, 2: None, 3: None} and found[0]["src"]["wm"] == 100
