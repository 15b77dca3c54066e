"""Kill a job at random moments or at named failpoints, restart it until done, check the guarantee.

One *trial*: run the job in a subprocess with a checkpoint directory; SIGKILL it (a
random delay, or a failpoint armed through MILLSTREAM_FAILPOINTS); run the same
command again until it exits 0; then compare the committed output with a
failure-free reference run of the same job:

- exactly-once: committed output == reference, as multisets; at every kill, the
  committed output so far holds no duplicates and nothing foreign (no un-publishing);
- at-least-once: every reference row present, nothing foreign;
- at-most-once: no row more often than in the reference, nothing foreign.

Every trial returns a dict with its seed and fault schedule, so a failure can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOB = str(Path(__file__).with_name("job.py"))
REPO = str(Path(__file__).resolve().parents[2])


@dataclass
class Trial:
    guarantee: str
    pipeline: str = "window"
    events: int = 20_000
    rate: int | None = 40_000
    seed: int = 0
    failpoint: str | None = None       # e.g. "ckpt.after_rename=kill#2"
    failpoint_start: int = 1           # which start of the job arms the failpoint (2: kill during recovery)
    kills: int = 1                     # random kills (when no failpoint)
    kill_window_s: tuple[float, float] = (0.3, 1.2)
    interval_ms: int = 50
    mode: str = "native"
    history: list[dict[str, Any]] = field(default_factory=list)


def _cmd(trial: Trial, out: str, ckpt: str | None, guarantee: str) -> list[str]:
    args = [sys.executable, "-m", "millstream.cli", "run", JOB, "-q", "--progress", "off", "--mode", trial.mode,
            "--set", f"events={trial.events}", "--set", f"pipeline={trial.pipeline}", "--set", f"out={out}"]
    if trial.rate:
        args += ["--set", f"rate={trial.rate}"]
    if guarantee == "exactly-once":
        args += ["--set", "transactional=true"]
    if ckpt is not None:
        args += ["--guarantee", guarantee, "--checkpoint-dir", ckpt,
                 "--checkpoint-interval", str(trial.interval_ms)]
    return args


def _env(failpoints: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MILLSTREAM_FAILPOINTS", None)
    if failpoints:
        env["MILLSTREAM_FAILPOINTS"] = failpoints
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(REPO, "src"), env.get("PYTHONPATH")]))
    return env


def read_rows(out: str, *, torn_tail: bool = False) -> list[str]:
    """The committed output as canonical JSON strings (a directory: files not starting with . or _).

    ``torn_tail``: the output is read between a kill and the restart, when a plain file may end in
    the part of a line the killed run was writing (the restart cuts it off): an unterminated last
    line is left out then. Anywhere else, and in the final output, it fails the check."""
    p = Path(out)
    files = [p] if p.is_file() else sorted(f for f in p.glob("*") if f.is_file() and f.name[0] not in "._") \
        if p.exists() else []
    rows = []
    for f in files:
        text = f.read_text()
        lines = text.split("\n")
        if torn_tail and lines and lines[-1]:
            lines.pop()  # no newline at the end: a line cut short by the kill
        for line in lines:
            if line.strip():
                rows.append(json.dumps(json.loads(line), sort_keys=True))
    return rows


def reference(trial: Trial, workdir: Path) -> Counter[str]:
    out = str(workdir / "ref.jsonl")
    t = Trial(trial.guarantee, trial.pipeline, trial.events, None)
    r = subprocess.run(_cmd(t, out, None, "none"), env=_env(None), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{r.stderr}")
    return Counter(read_rows(out))


def run_trial(trial: Trial, workdir: Path, expected: Counter[str], max_starts: int = 30) -> dict[str, Any]:
    out = str(workdir / ("out" if trial.guarantee == "exactly-once" else "out.jsonl"))
    ckpt = str(workdir / "ckpt")
    cmd = _cmd(trial, out, ckpt, trial.guarantee)
    anomalies, starts = kill_until_done(
        trial, cmd, _env,
        lambda found: _check_visible(trial.guarantee, Counter(read_rows(out, torn_tail=True)), expected, found,
                                     during=True),
        max_starts=max_starts)
    final = Counter(read_rows(out))
    if not anomalies:
        _check_visible(trial.guarantee, final, expected, anomalies, during=False)
    return {"guarantee": trial.guarantee, "mode": trial.mode, "pipeline": trial.pipeline, "seed": trial.seed,
            "failpoint": trial.failpoint, "starts": starts, "kills": sum(h["exit"] == -9 for h in trial.history),
            "failpoint_fired": any(h["failpoint"] and h["exit"] == -9 and not h["killed"] for h in trial.history),
            "anomalies": anomalies, "output_rows": sum(final.values()), "expected_rows": sum(expected.values())}


def kill_until_done(trial: Trial, cmd: list[str], env: Callable[[str | None], dict[str, str]],
                    after_kill: Callable[[list[str]], None], *, max_starts: int = 30,
                    timeout_s: float = 300) -> tuple[list[str], int]:
    """Run ``cmd`` (environment ``env(failpoints)``) until it exits 0: SIGKILL its process group
    ``trial.kills`` times at random moments (``trial.kill_window_s`` after a start; seeded by
    ``trial.seed``), or let ``trial.failpoint`` kill it; ``after_kill(anomalies)`` checks the visible
    output after each kill. Every start goes to ``trial.history``. Returns (anomalies, starts)."""
    rnd = random.Random(trial.seed)
    kills_left = trial.kills if trial.failpoint is None else trial.failpoint_start - 1
    failpoint = trial.failpoint
    anomalies: list[str] = []
    starts = 0
    while True:
        starts += 1
        if starts > max_starts:
            anomalies.append(f"no progress after {max_starts} starts (liveness)")
            break
        armed = failpoint if starts >= trial.failpoint_start else None
        proc = subprocess.Popen(cmd, env=env(armed), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        killed_by_us = False
        if kills_left > 0:
            delay = rnd.uniform(*trial.kill_window_s)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_by_us = True
                kills_left -= 1
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            anomalies.append(f"a run hung for {timeout_s:.0f} s")
            break
        code = proc.returncode
        trial.history.append({"start": starts, "exit": code, "killed": killed_by_us, "failpoint": armed,
                              "t": time.time()})
        if code == -signal.SIGKILL and armed and not killed_by_us:
            failpoint = None  # crashed exactly once at its point; restart clean
        if code == 0:
            break
        if code != -signal.SIGKILL:
            anomalies.append(f"exit code {code}: {err.strip()[-2000:]}")
            break
        after_kill(anomalies)
    return anomalies, starts


def _check_windows_at_most_once(seen: Counter[str], expected: Counter[str], anomalies: list[str]) -> None:
    """At-most-once on windows: a window may miss records lost to a crash, but is never emitted twice
    and never holds more than the reference."""
    ref = {}
    for row in expected:
        r = json.loads(row)
        ref[(r["key"], r["window_start"])] = r["n"]
    per_window: Counter[tuple[Any, Any]] = Counter()
    for row, n in seen.items():
        r = json.loads(row)
        w = (r.get("key"), r.get("window_start"))
        per_window[w] += n
        if w not in ref or r["n"] > ref[w]:
            anomalies.append(f"window row not explained by the input: {row}")
            return
    dup = [w for w, n in per_window.items() if n > 1]
    if dup:
        anomalies.append(f"{len(dup)} windows emitted more than once under at-most-once, e.g. {dup[0]}")


def _check_visible(guarantee: str, seen: Counter[str], expected: Counter[str], anomalies: list[str],
                   *, during: bool) -> None:
    if guarantee == "at-most-once" and any('"window_start"' in r for r in expected):
        _check_windows_at_most_once(seen, expected, anomalies)
        return
    foreign = [r for r in seen if r not in expected]
    when = "during the run" if during else "at the end"
    if foreign:
        anomalies.append(f"{len(foreign)} fabricated or corrupted rows {when}, e.g. {foreign[0]}")
    if guarantee in ("exactly-once", "at-most-once"):
        dup = [r for r, n in seen.items() if n > expected[r]]
        if dup:
            anomalies.append(f"{len(dup)} duplicated rows {when} under {guarantee}, e.g. {dup[0]}")
    if during:
        return
    if guarantee in ("exactly-once", "at-least-once"):
        lost = [r for r in expected if seen[r] == 0]
        if lost:
            anomalies.append(f"{len(lost)} rows lost under {guarantee}, e.g. {lost[0]}")


def pause_trial(trial: Trial, workdir: Path, expected: Counter[str], *, stop_at: str,
                drop_lock: bool) -> dict[str, Any]:
    """F9, a paused "zombie": the first run pauses itself (SIGSTOP at the failpoint ``stop_at``, e.g.
    ``ckpt.before_commit#3``), a second run of the same command starts, then the first is resumed.

    ``drop_lock``: the LOCK file is removed while the first is paused, as on a filesystem whose locks
    cannot be relied on. Allowed outcomes: the second run is refused clearly (exit 1, naming the owner)
    and the first finishes; or the second finishes and the first, fenced by the owner epoch, stops
    (exit 1) without committing anything. Never: both exit 0, or any wrong committed output.
    """
    out = str(workdir / ("out" if trial.guarantee == "exactly-once" else "out.jsonl"))
    ckpt = str(workdir / "ckpt")
    cmd = _cmd(trial, out, ckpt, trial.guarantee)
    anomalies: list[str] = []
    first = subprocess.Popen(cmd, env=_env(f"{stop_at.replace('#', '=stop#', 1)}" if "#" in stop_at
                                           else f"{stop_at}=stop"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    outcome: dict[str, Any] = {"guarantee": trial.guarantee, "stop_at": stop_at, "drop_lock": drop_lock}
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # returns once it stopped itself (or ended)
        if not os.WIFSTOPPED(status):
            first.returncode = os.waitstatus_to_exitcode(status)
            return {**outcome, "skipped": f"the first run never reached {stop_at} (exit {first.returncode})",
                    "anomalies": []}
        if drop_lock:
            os.remove(os.path.join(ckpt, "LOCK"))
        second = subprocess.run(cmd, env=_env(None), capture_output=True, text=True, timeout=300)
        during = Counter(read_rows(out))
        os.killpg(first.pid, signal.SIGCONT)
        _, err1 = first.communicate(timeout=300)
    finally:
        if first.returncode is None:
            os.killpg(first.pid, signal.SIGKILL)
            os.killpg(first.pid, signal.SIGCONT)
            first.communicate()
    outcome.update(first_exit=first.returncode, second_exit=second.returncode)
    err1, err2 = " ".join(err1.split()), " ".join(second.stderr.split())  # the console wraps long lines
    if second.returncode == 1 and "in use by another run" in err2 and not drop_lock:
        outcome["result"] = "second refused"
        if first.returncode != 0:
            anomalies.append(f"the first run failed after the second was refused: {err1.strip()[-1000:]}")
    elif second.returncode == 0:
        outcome["result"] = "first fenced"
        if first.returncode == 0:
            anomalies.append("both runs exited 0 on one checkpoint directory")
        elif first.returncode != 1 or "no longer owns" not in err1:
            anomalies.append(f"the paused run was not fenced clearly (exit {first.returncode}): {err1[-1000:]}")
        _check_visible(trial.guarantee, during, expected, anomalies, during=True)
    else:
        anomalies.append(f"unexpected: second run exit {second.returncode}: {err2[-1000:]}")
    if not anomalies:
        if outcome["result"] == "first fenced":  # what the zombie left is cleaned by the next start
            again = subprocess.run(cmd, env=_env(None), capture_output=True, text=True, timeout=300)
            if again.returncode != 0:
                anomalies.append(f"the run after the zombie failed: {again.stderr.strip()[-1000:]}")
        _check_visible(trial.guarantee, Counter(read_rows(out)), expected, anomalies, during=False)
    return {**outcome, "anomalies": anomalies}


def rewind_trial(trial: Trial, workdir: Path, expected: Counter[str], *, seed: int,
                 kill_after: int | None = None) -> dict[str, Any]:
    """Kill a run right after its k-th checkpoint committed (``kill_after``, else k random in 2..5),
    delete its newest checkpoint folder, restart.

    Exactly-once must refuse (exit 1, saying the committed output goes beyond the checkpoint left);
    the others warn and finish within their guarantee. A run that ends before its k-th commit is
    reported ``skipped`` (on a machine whose disk is busy, fsyncs make commits few).
    """
    rnd = random.Random(seed)
    out = str(workdir / ("out" if trial.guarantee == "exactly-once" else "out.jsonl"))
    ckpt = Path(workdir / "ckpt")
    cmd = _cmd(trial, out, str(ckpt), trial.guarantee)
    k = kill_after if kill_after is not None else rnd.randint(2, 5)
    proc = subprocess.run(cmd, env=_env(f"ckpt.after_commit=kill#{k}"), capture_output=True,
                          text=True, timeout=300)
    ckpts = sorted(ckpt.glob("chk-*"))
    if proc.returncode != -signal.SIGKILL or not ckpts:
        return {"seed": seed, "skipped": f"exit {proc.returncode}, {len(ckpts)} checkpoints", "anomalies": []}
    for f in ckpts[-1].iterdir():
        f.unlink()
    ckpts[-1].rmdir()
    r = subprocess.run(cmd, env=_env(None), capture_output=True, text=True, timeout=300)
    err = " ".join(r.stderr.split())  # the console wraps long lines
    anomalies: list[str] = []
    if trial.guarantee == "exactly-once":
        if r.returncode != 1 or "may already be committed" not in err:
            anomalies.append(f"a rewound history was not refused: exit {r.returncode}: {err[-1000:]}")
        _check_visible(trial.guarantee, Counter(read_rows(out)), expected, anomalies, during=True)
    else:
        if r.returncode != 0 or "may already be committed" not in err:
            anomalies.append(f"no warning, or a failure: exit {r.returncode}: {err[-1000:]}")
        _check_visible(trial.guarantee, Counter(read_rows(out)), expected, anomalies, during=False)
    return {"seed": seed, "guarantee": trial.guarantee, "deleted": ckpts[-1].name, "anomalies": anomalies}


# -- Nexmark through the CLI (`millstream nexmark run`): issue 13's scenarios with other schedules -------------


@dataclass
class Nexmark:
    """One `millstream nexmark run` command: the query, its input and how it is checkpointed."""

    query: str = "q5"
    mode: str = "native"
    guarantee: str = "exactly-once"
    events: int = 30_000
    event_rate: int = 1_000        # events per second of event time: windows fire during the run
    pace: int | None = 10_000      # events per second of wall-clock time: a run lasts events / pace s
    interval_ms: int = 200
    max_chunk: int = 256

    def cmd(self, out: str, ckpt: str | None) -> list[str]:
        args = [sys.executable, "-m", "millstream.cli", "nexmark", "run", "--query", self.query, "--mode", self.mode,
                "--events", str(self.events), "--event-rate", str(self.event_rate), "--max-chunk", str(self.max_chunk),
                "--out", out, "-q", "--progress", "off"]
        if self.pace:
            args += ["--pace", str(self.pace)]
        if ckpt is not None:
            args += ["--guarantee", self.guarantee, "--checkpoint-dir", ckpt,
                     "--checkpoint-interval", str(self.interval_ms)]
        return args

    def out_path(self, workdir: Path, name: str = "out") -> str:
        return str(workdir / (name if self.guarantee == "exactly-once" else f"{name}.jsonl"))


def nexmark_reference(nx: Nexmark, workdir: Path) -> Counter[str]:
    """The failure-free output of ``nx`` (no checkpoints, not paced)."""
    out = str(workdir / f"ref-{nx.query}.jsonl")
    ref = Nexmark(nx.query, "native", "none", nx.events, nx.event_rate, None)
    r = subprocess.run(ref.cmd(out, None), env=_env(None), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{r.stderr}")
    return Counter(read_rows(out))


#: what names one result row of a Nexmark query (a window, a session, a joined pair): under at-most-once a
#: result may hold less than the reference's (records lost to a crash), but never comes twice
RESULT_OF = {"q3": ("name", "city", "state", "id"), "q5": ("auction", "window_start"), "q7": ("window_end",),
             "q11": ("bidder", "starttime")}


def check_output(guarantee: str, seen: Counter[str], expected: Counter[str], *, final: bool = True,
                 query: str | None = None) -> list[str]:
    """The invariants of ``guarantee`` on an output (``final``: the input was drained)."""
    anomalies: list[str] = []
    if guarantee == "at-most-once" and query in RESULT_OF:
        fields = RESULT_OF[query]
        ids: Counter[tuple[Any, ...]] = Counter()
        for row, n in seen.items():
            r = json.loads(row)
            ids[tuple(r.get(f) for f in fields)] += n
        twice = [i for i, n in ids.items() if n > 1]
        if twice:
            anomalies.append(f"{len(twice)} results emitted more than once under at-most-once, e.g. {twice[0]}")
        return anomalies
    _check_visible(guarantee, seen, expected, anomalies, during=not final)
    return anomalies


def flat(text: str) -> str:
    return " ".join(text.split())  # the console wraps long lines
