"""Long chaos campaigns, run by hand (figures go to docs/reliability.md).

    python tests/chaos/campaign.py --guarantee exactly-once --trials 500 --kills 2 [--jobs 2]
    python tests/chaos/campaign.py --failpoints --rounds 5          # every failpoint x guarantee, 5 times
    python tests/chaos/campaign.py --corruptions --trials 300       # corrupt checkpoints: 100 % must be detected
    python tests/chaos/campaign.py --pauses --rounds 10             # F9: SIGSTOP + a second run + SIGCONT
    python tests/chaos/campaign.py --rewinds --trials 100           # newest checkpoint deleted after a kill
    python tests/chaos/campaign.py --owners --trials 60             # Nexmark CLI: two owners, paused at random
    python tests/chaos/campaign.py --history --trials 60            # Nexmark CLI: a rewound directory
    python tests/chaos/campaign.py --damage --trials 60             # Nexmark CLI: damaged files a resume reads
    python tests/chaos/campaign.py --hostile --trials 200           # hostile JSON/CSV lines, every mode and chunk

Each trial prints one JSON line (seed, fault schedule, anomalies); the last line sums
them up. A trial with an anomaly is a bug: replay it from its seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

from millstream._checkpoint._failpoints import POINTS  # noqa: E402

GUARANTEES = ["exactly-once", "at-least-once", "at-most-once"]
PIPELINES = {"exactly-once": ["window", "sliding", "vwindow", "vsliding", "running"],
             "at-least-once": ["window", "sliding", "vwindow", "vsliding", "running"],
             "at-most-once": ["window", "vwindow", "map"]}


def _one(trial: harness.Trial, refs: dict[str, Counter[str]]) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="millstream-chaos-"))
    try:
        t0 = time.time()
        res = harness.run_trial(trial, work, refs[trial.pipeline])
        res["seconds"] = round(time.time() - t0, 2)
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def corruption_trial(seed: int, refs_dir: Path) -> dict[str, object]:
    """Crash a job midway, corrupt its newest checkpoint, restart: the restart must refuse it (exit 1)."""
    rnd = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="millstream-corrupt-"))
    try:
        trial = harness.Trial("exactly-once", events=12_000, rate=30_000, seed=seed, kills=1)
        proc = subprocess.Popen(harness._cmd(trial, str(work / "out"), str(work / "ckpt"), "exactly-once"),
                                env=harness._env(None), stderr=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(rnd.uniform(0.7, 1.0))
        proc.kill()
        proc.wait()
        ckpts = sorted((work / "ckpt").glob("chk-*"))
        if not ckpts:
            return {"seed": seed, "skipped": "no checkpoint before the kill"}
        target = ckpts[-1]
        victim = rnd.choice(["state.pkl", "MANIFEST.json"])
        path = target / victim
        kind = rnd.choice(["bitflip", "truncate", "delete", "zero"])
        data = bytearray(path.read_bytes())
        if kind == "bitflip":
            i = rnd.randrange(len(data))
            data[i] ^= 1 << rnd.randrange(8)
            path.write_bytes(bytes(data))
        elif kind == "truncate":
            path.write_bytes(bytes(data[: rnd.randrange(len(data))]))
        elif kind == "zero":
            path.write_bytes(b"")
        else:
            path.unlink()
        r = subprocess.run(harness._cmd(trial, str(work / "out"), str(work / "ckpt"), "exactly-once"),
                           env=harness._env(None), capture_output=True, text=True, timeout=120)
        detected = r.returncode == 1 and "checkpoint" in r.stderr
        return {"seed": seed, "file": victim, "corruption": kind, "detected": detected,
                "anomalies": [] if detected else [f"not detected: exit {r.returncode}"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guarantee", choices=GUARANTEES, action="append")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--events", type=int, default=12_000)
    ap.add_argument("--jobs", type=int, default=2, help="trials run side by side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--failpoints", action="store_true", help="every failpoint x guarantee instead of random kills")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--corruptions", action="store_true")
    ap.add_argument("--pauses", action="store_true",
                    help="F9: pause the job inside the checkpoint path, start a second run, resume the first")
    ap.add_argument("--rewinds", action="store_true", help="delete the newest checkpoint after a kill")
    ap.add_argument("--owners", action="store_true",
                    help="issue 13 (Nexmark CLI): pause the first run at a random time or failpoint, a second run on "
                         "its directory (another --out, a symlink, no LOCK, SIGKILLed), resume the first")
    ap.add_argument("--history", action="store_true",
                    help="issue 13 (Nexmark CLI): delete checkpoints, COMMITTED, SCOPE, OWNER, LOCK; an older copy")
    ap.add_argument("--damage", action="store_true",
                    help="issue 13 (Nexmark CLI): damage one file a resume reads (also with a checkpoint key)")
    ap.add_argument("--only", metavar="FILE", help="--damage: damage only files of this name (e.g. positions.pkl)")
    ap.add_argument("--hostile", action="store_true",
                    help="hostile JSON-lines and CSV files: native, micro-batch and batch at chunks 1, 7, 4096 agree "
                         "record for record, and good + skipped + dead-lettered = records")
    ap.add_argument("--mode", choices=["native", "microbatch", "batch"], default="native",
                    help="executor of the killed jobs (the reference runs natively)")
    args = ap.parse_args()

    if args.corruptions:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda s: corruption_trial(s, Path()), range(args.seed, args.seed + args.trials)))
        for r in results:
            print(json.dumps(r))
        done = [r for r in results if "detected" in r]
        print(json.dumps({"corruptions": len(done), "detected": sum(bool(r["detected"]) for r in done)}))
        return

    guarantees = args.guarantee or GUARANTEES
    if args.owners or args.history or args.damage or args.hostile:
        _issue13(args, guarantees)
        return
    if args.pauses or args.rewinds:
        _special(args, guarantees)
        return
    trials = []
    rnd = random.Random(args.seed)
    for g in guarantees:
        if args.failpoints:
            for _ in range(args.rounds):
                for point in POINTS:
                    start = 2 if point == "recovery.restore" else 1
                    nth = f"#{rnd.randint(1, 6)}" if point not in ("ckpt.gc", "recovery.restore") else ""
                    trials.append(harness.Trial(g, rnd.choice(PIPELINES[g]), args.events, 30_000, rnd.randrange(10**9),
                                                failpoint=f"{point}=kill{nth}", failpoint_start=start,
                                                kill_window_s=(0.3, 0.6), mode=args.mode))
        else:
            for _ in range(args.trials):
                trials.append(harness.Trial(g, rnd.choice(PIPELINES[g]), args.events, 30_000, rnd.randrange(10**9),
                                            kills=args.kills, kill_window_s=(0.3, 0.9), mode=args.mode))
    refs: dict[str, Counter[str]] = {}
    ref_dir = Path(tempfile.mkdtemp(prefix="millstream-ref-"))
    for p in {t.pipeline for t in trials}:
        refs[p] = harness.reference(harness.Trial("at-least-once", p, args.events), ref_dir)
        (ref_dir / "ref.jsonl").unlink()
    totals: Counter[str] = Counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        for res in pool.map(lambda t: _one(t, refs), trials):
            print(json.dumps(res), flush=True)
            key = str(res["guarantee"])
            totals[f"{key}:trials"] += 1
            totals[f"{key}:kills"] += int(res["kills"])  # type: ignore[call-overload]
            totals[f"{key}:anomalies"] += len(res["anomalies"])  # type: ignore[arg-type]
    print(json.dumps(dict(totals)))


def _special(args: argparse.Namespace, guarantees: list[str]) -> None:
    """Pause (F9) or rewind trials; each prints a JSON line, the last line sums them up."""
    rnd = random.Random(args.seed)
    jobs = []
    points = ["ckpt.begin", "ckpt.before_rename", "ckpt.after_rename", "ckpt.before_commit", "sink.commit",
              "ckpt.after_commit"]
    for i in range(args.rounds if args.pauses else args.trials):
        for g in guarantees:
            if args.pauses:
                # without the lock, only transactional (exactly-once) output can be fenced
                drop = g == "exactly-once" and rnd.random() < 0.5
                jobs.append(("pause", g, f"{rnd.choice(points)}#{rnd.randint(1, 4)}", drop, rnd.randrange(10**9)))
            else:
                jobs.append(("rewind", g, "", False, args.seed + i))

    def one(job: tuple[str, str, str, bool, int]) -> dict[str, object]:
        kind, g, stop_at, drop, seed = job
        work = Path(tempfile.mkdtemp(prefix="millstream-chaos-"))
        try:
            pipeline = "window" if g != "at-least-once" else rnd.choice(["window", "running"])
            trial = harness.Trial(g, pipeline, args.events, 30_000, seed)
            expected = harness.reference(harness.Trial(g, pipeline, args.events), work)
            if kind == "pause":
                return harness.pause_trial(trial, work, expected, stop_at=stop_at, drop_lock=drop)
            return harness.rewind_trial(trial, work, expected, seed=seed)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    totals: Counter[str] = Counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        for res in pool.map(one, jobs):
            print(json.dumps(res), flush=True)
            totals["trials"] += 1
            totals["anomalies"] += len(res["anomalies"])  # type: ignore[arg-type]
            totals[str(res.get("result", "skipped" if "skipped" in res else "ok"))] += 1
    print(json.dumps(dict(totals)))


# -- issue 13, with schedules the suite does not use: the Nexmark CLI, paused at random times too ---------------

QUERIES = ["q5", "q7", "q11", "q3"]
STOP_POINTS = ["ckpt.begin", "ckpt.mid_state", "ckpt.state_synced", "ckpt.mid_manifest", "ckpt.before_rename",
               "ckpt.after_rename", "ckpt.before_commit", "sink.commit", "ckpt.after_commit", "source.acknowledge",
               "ckpt.gc", "recovery.restore"]
_REFS: dict[tuple[str, int, int], Counter[str]] = {}


def _reference(nx: harness.Nexmark, work: Path) -> Counter[str]:
    key = (nx.query, nx.events, nx.event_rate)
    if key not in _REFS:
        _REFS[key] = harness.nexmark_reference(nx, work)
    return _REFS[key]


def _nexmark(rnd: random.Random, guarantees: list[str]) -> harness.Nexmark:
    return harness.Nexmark(query=rnd.choice(QUERIES), mode=rnd.choice(["native", "microbatch"]),
                           guarantee=rnd.choice(guarantees), interval_ms=rnd.choice([50, 100, 200, 500, 1000, 2000]),
                           max_chunk=rnd.choice([64, 256, 1024]))


def _clear(code: int | None, err: str) -> bool:
    """A refusal a user can act on: exit 1, a message, no traceback."""
    return code == 1 and "Traceback" not in err and bool(err.strip())


def _finish(nx: harness.Nexmark, out: str, ckpt: str, outcome: dict[str, object], *, starts: int = 4) -> None:
    """Run the command again until it exits 0 (or refuses clearly); record how it ended and check its output."""
    anomalies: list[str] = outcome.setdefault("anomalies", [])  # type: ignore[assignment]
    for _ in range(starts):
        r = subprocess.run(nx.cmd(out, ckpt), env=harness._env(None), capture_output=True, text=True, timeout=300)
        if r.returncode == 0:
            outcome["end"] = "oracle"
            break
        if not _clear(r.returncode, r.stderr):
            anomalies.append(f"rerun: exit {r.returncode}: {harness.flat(r.stderr)[-1500:]}")
            return
        outcome["end"] = "refused"
        outcome["refusal"] = harness.flat(r.stderr)[-600:]
        return


def owners_trial(seed: int, guarantees: list[str]) -> dict[str, object]:
    """Two owners: pause the first run (SIGSTOP at a random time, or itself at a failpoint), start a second on the
    same checkpoint directory (maybe another --out, maybe through a symlink, maybe with the LOCK file gone, maybe
    SIGKILLed while the first is paused), resume the first; then run the first's command again until done.
    Never two runs exit 0 on one directory, never a wrong output with exit status 0."""
    rnd = random.Random(seed)
    nx = _nexmark(rnd, guarantees)
    work = Path(tempfile.mkdtemp(prefix="millstream-owners-"))
    outcome: dict[str, object] = {"scenario": "owners", "seed": seed, **dataclasses.asdict(nx)}
    anomalies: list[str] = []
    outcome["anomalies"] = anomalies
    first = None
    try:
        expected = _reference(nx, work)
        ckpt, out = str(work / "ckpt"), nx.out_path(work)
        os.makedirs(ckpt)
        other_spelling = rnd.random() < 0.3
        if other_spelling:
            os.symlink(ckpt, work / "link")
        out2 = nx.out_path(work, "out2") if rnd.random() < 0.3 else out
        stop = rnd.choice(["time"] * 2 + STOP_POINTS)
        drop_lock = rnd.random() < 0.3
        kill_second = rnd.random() < 0.3
        fp = None if stop == "time" else f"{stop}=stop#{rnd.randint(1, 4)}"
        outcome.update(stop=fp or "time", other_spelling=other_spelling, other_out=out2 != out, drop_lock=drop_lock,
                       kill_second=kill_second)
        err1 = open(work / "err1", "w+")  # noqa: SIM115 - closed with the trial's directory
        first = subprocess.Popen(nx.cmd(out, ckpt), env=harness._env(fp), stdout=subprocess.DEVNULL, stderr=err1,
                                 start_new_session=True)
        if fp is None:
            time.sleep(rnd.uniform(0.2, 2.5))
            os.killpg(first.pid, signal.SIGSTOP)
            _, status = os.waitpid(first.pid, os.WUNTRACED)
        else:
            _, status = os.waitpid(first.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            first.returncode = os.waitstatus_to_exitcode(status)
            outcome["skipped"] = f"the first run ended before its pause (exit {first.returncode})"
            return outcome
        if drop_lock:
            os.remove(os.path.join(ckpt, "LOCK"))
        second_ckpt = str(work / "link") if other_spelling else ckpt
        second = subprocess.Popen(nx.cmd(out2, second_ckpt), env=harness._env(None), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        if kill_second:
            try:
                second.wait(timeout=rnd.uniform(0.2, 2.0))
            except subprocess.TimeoutExpired:
                os.killpg(second.pid, signal.SIGKILL)
        _, err2 = second.communicate(timeout=300)
        os.killpg(first.pid, signal.SIGCONT)
        first.wait(timeout=300)
        err1.seek(0)
        e1, e2 = harness.flat(err1.read()), harness.flat(err2)
        err1.close()
        outcome.update(first_exit=first.returncode, second_exit=second.returncode)
        for name, code, e in (("first", first.returncode, e1), ("second", second.returncode, e2)):
            if code not in (0, -signal.SIGKILL) and not _clear(code, e):
                anomalies.append(f"{name} run: exit {code}: {e[-1500:]}")
            elif code == 1:
                outcome[f"{name}_said"] = e[-300:]
        if first.returncode == 0 and second.returncode == 0:
            anomalies.append("both runs exited 0 on one checkpoint directory")
        if first.returncode != 0 or second.returncode != 0:
            _finish(nx, out, ckpt, outcome)
        # refused: what is committed so far must still be right (no duplicates, nothing foreign)
        anomalies += [f"{out}: {a}" for a in harness.check_output(nx.guarantee, Counter(harness.read_rows(out)),
                                                                   expected, query=nx.query,
                                                                   final=outcome.get("end") != "refused")]
        if out2 != out and os.path.exists(out2) and second.returncode == 0:
            anomalies += [f"{out2}: {a}" for a in harness.check_output(nx.guarantee, Counter(harness.read_rows(out2)),
                                                                        expected, query=nx.query)]
        outcome["rows"] = len(harness.read_rows(out)) if os.path.exists(out) else 0
        return outcome
    finally:
        if first is not None and first.returncode is None:
            os.killpg(first.pid, signal.SIGKILL)
            os.killpg(first.pid, signal.SIGCONT)
            first.wait()
        shutil.rmtree(work, ignore_errors=True)


REWINDS = ["delete_newest", "delete_two_newest", "delete_middle", "delete_committed", "delete_committed_and_newest",
           "delete_scope", "delete_owner", "delete_lock", "old_copy", "old_copy_merged", "older_over_newest",
           "older_positions"]
#: the mutations after which output committed beyond the checkpoint left may exist (a rewound history)
REWOUND = {"delete_newest", "delete_two_newest", "delete_committed_and_newest", "old_copy", "old_copy_merged"}


def _crash(nx: harness.Nexmark, out: str, ckpt: str, rnd: random.Random) -> int:
    """Run ``nx`` once and kill it: after the k-th commit (a failpoint), or at a random moment. Its exit code."""
    if rnd.random() < 0.5:
        r = subprocess.run(nx.cmd(out, ckpt), env=harness._env(f"ckpt.after_commit=kill#{rnd.randint(2, 8)}"),
                           capture_output=True, text=True, timeout=300)
        return r.returncode
    p = subprocess.Popen(nx.cmd(out, ckpt), env=harness._env(None), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        p.wait(timeout=rnd.uniform(0.8, 2.8))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return p.returncode


def _rewind(kind: str, ckpt: Path, old: Path) -> str | None:
    ids = sorted(ckpt.glob("chk-*"))
    if kind == "delete_newest" and ids:
        shutil.rmtree(ids[-1])
    elif kind == "delete_two_newest" and len(ids) >= 2:
        shutil.rmtree(ids[-1])
        shutil.rmtree(ids[-2])
    elif kind == "delete_middle" and len(ids) >= 3:
        shutil.rmtree(ids[len(ids) // 2])
    elif kind == "delete_committed" and (ckpt / "COMMITTED").exists():
        (ckpt / "COMMITTED").unlink()
    elif kind == "delete_committed_and_newest" and ids and (ckpt / "COMMITTED").exists():
        (ckpt / "COMMITTED").unlink()
        shutil.rmtree(ids[-1])
    elif kind in ("delete_scope", "delete_owner", "delete_lock") and (ckpt / kind[7:].upper()).exists():
        (ckpt / kind[7:].upper()).unlink()
    elif kind == "old_copy" and old.exists():
        shutil.rmtree(ckpt)
        shutil.copytree(old, ckpt, symlinks=True)
    elif kind == "old_copy_merged" and old.exists():
        shutil.copytree(old, ckpt, symlinks=True, dirs_exist_ok=True)
    elif kind == "older_positions" and (old / "positions.pkl").exists() and (ckpt / "positions.pkl").exists():
        shutil.copyfile(old / "positions.pkl", ckpt / "positions.pkl")
    elif kind == "older_over_newest" and len(ids) >= 2:
        shutil.rmtree(ids[-1])
        shutil.copytree(ids[-2], ids[-1])
    else:
        return None
    return kind


def history_trial(seed: int, guarantees: list[str]) -> dict[str, object]:
    """A rewound directory: crash a run (maybe twice, keeping a copy of the directory between), change its history
    (delete checkpoints, COMMITTED, SCOPE, OWNER, LOCK; an older copy of the directory over it), run again.
    Exactly-once: the oracle's output or a clear refusal; at-least-once: no loss, and a visible warning when
    output committed beyond the checkpoint left may exist; at-most-once: no duplicates."""
    rnd = random.Random(seed)
    nx = _nexmark(rnd, guarantees)
    nx.interval_ms = rnd.choice([50, 100, 200, 500])
    kind = rnd.choice(REWINDS)
    work = Path(tempfile.mkdtemp(prefix="millstream-history-"))
    outcome: dict[str, object] = {"scenario": "history", "seed": seed, "rewind": kind, **dataclasses.asdict(nx)}
    anomalies: list[str] = []
    outcome["anomalies"] = anomalies
    try:
        expected = _reference(nx, work)
        ckpt, out, old = work / "ckpt", nx.out_path(work), work / "ckpt.old"
        codes = [_crash(nx, out, str(ckpt), rnd)]
        if kind.startswith("old_copy") or kind == "older_positions":
            if ckpt.exists():
                shutil.copytree(ckpt, old, symlinks=True)
            codes.append(_crash(nx, out, str(ckpt), rnd))
        outcome["crash_exits"] = codes
        if codes[-1] != -signal.SIGKILL or _rewind(kind, ckpt, old) is None:
            outcome["skipped"] = f"exits {codes}: nothing to rewind"
            return outcome
        r = subprocess.run(nx.cmd(out, str(ckpt)), env=harness._env(None), capture_output=True, text=True,
                           timeout=300)
        err = harness.flat(r.stderr)
        outcome["exit"] = r.returncode
        outcome["said"] = err[-600:]
        if r.returncode != 0:
            if not _clear(r.returncode, err):
                anomalies.append(f"exit {r.returncode}: {err[-1500:]}")
            elif nx.guarantee == "at-least-once" and kind in REWOUND:
                anomalies.append(f"at-least-once refused a rewind instead of warning: {err[-800:]}")
            outcome["end"] = "refused"
            return outcome
        outcome["end"] = "oracle"
        outcome["warned"] = "warning" in err.lower() or "may already be committed" in err
        anomalies += harness.check_output(nx.guarantee, Counter(harness.read_rows(out)), expected,
                                              query=nx.query)
        return outcome
    finally:
        shutil.rmtree(work, ignore_errors=True)


DAMAGES = ["delete", "truncate", "zero", "bitflip", "other_checkpoint", "twin_directory", "a_directory",
           "twin_folder", "folder_a_file"]


def _targets(ckpt: Path, out: str) -> list[Path]:
    """Every file a resume reads: the newest two checkpoints' files, the records at the top, staged sink files."""
    files = [p for c in sorted(ckpt.glob("chk-*"))[-2:] for p in sorted(c.iterdir())]
    files += [ckpt / n for n in ("positions.pkl", "COMMITTED", "OWNER", "SCOPE", "ORIGIN") if (ckpt / n).exists()]
    files += sorted((ckpt / "shared").glob("*")) if (ckpt / "shared").is_dir() else []
    if os.path.isdir(out):
        files += sorted(Path(out).glob(".*.pending"))
    return files


def _damage(rnd: random.Random, path: Path, how: str, ckpt: Path, twin: Path) -> str | None:
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate" and data:
        path.write_bytes(data[: rnd.randrange(len(data))])
    elif how == "zero":
        path.write_bytes(b"")
    elif how == "bitflip" and data:
        b = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        path.write_bytes(bytes(b))
    elif how == "other_checkpoint" and path.parent.name.startswith("chk-"):
        others = [c / path.name for c in ckpt.glob("chk-*") if c != path.parent and (c / path.name).exists()]
        if not others:
            return None
        src = rnd.choice(others)
        shutil.copyfile(src, path)
        return f"{how}:{src.parent.name}"
    elif how == "twin_directory":
        rel = path.relative_to(ckpt) if path.is_relative_to(ckpt) else None
        cands = ([twin / rel] if rel is not None and (twin / rel).exists() else []) or (
            [c / path.name for c in sorted(twin.glob("chk-*"))] if path.parent.name.startswith("chk-") else [])
        cands = [c for c in cands if c.exists()]
        if not cands:
            return None
        src = rnd.choice(cands)
        shutil.copyfile(src, path)
        return f"{how}:{src.relative_to(twin)}"
    elif how == "a_directory":  # something else in the file's place
        path.unlink()
        path.mkdir()
    elif how in ("twin_folder", "folder_a_file") and path.parent.name.startswith("chk-"):
        folder = path.parent
        shutil.rmtree(folder)
        if how == "folder_a_file":
            folder.write_bytes(b"x")
            return how
        twins = sorted(twin.glob("chk-*"))
        if not twins:
            folder.mkdir()  # an empty checkpoint folder
            return "empty_folder"
        src = twin / folder.name if (twin / folder.name).exists() else rnd.choice(twins)
        shutil.copytree(src, folder)
        return f"{how}:{src.name}"
    else:
        return None
    return how


def _tamper(path: Path) -> str:
    """Alter a manifest and recompute its checksum as someone without the key would: only the signature can tell."""
    from millstream._checkpoint._store import _manifest_checksum

    m = json.loads(path.read_bytes())
    m["finished"] = not m.get("finished")
    m.pop("signature", None)
    m["checksum"] = _manifest_checksum(m)
    path.write_bytes(json.dumps(m, sort_keys=True, indent=1).encode())
    return "tampered"


def damage_trial(seed: int, guarantees: list[str], only: str | None = None) -> dict[str, object]:
    """Damaged files: crash a run (and a twin run of the same command in another directory), damage one file a
    resume reads (delete, truncate, flip bits, another checkpoint's copy, the twin directory's copy; with
    MILLSTREAM_CHECKPOINT_KEY set, a re-checksummed manifest too), run again: the oracle's output or a clear
    refusal, never a traceback, never a wrong output with exit status 0."""
    rnd = random.Random(seed)
    nx = _nexmark(rnd, guarantees)
    nx.interval_ms = rnd.choice([50, 100, 200, 500])
    keyed = rnd.random() < 0.3
    work = Path(tempfile.mkdtemp(prefix="millstream-damage-"))
    outcome: dict[str, object] = {"scenario": "damage", "seed": seed, "key": keyed, **dataclasses.asdict(nx)}
    anomalies: list[str] = []
    outcome["anomalies"] = anomalies
    env_key = {"MILLSTREAM_CHECKPOINT_KEY": f"k{seed}"} if keyed else {}

    def env(fp: str | None) -> dict[str, str]:
        return {**harness._env(fp), **env_key}

    try:
        expected = _reference(nx, work)
        (work / "a").mkdir()
        (work / "b").mkdir()
        out = "out" if nx.guarantee == "exactly-once" else "out.jsonl"
        codes = []
        for d in ("b", "a"):  # relative paths: the twin is the same job, to the byte
            fp = rnd.choice([f"{p}=kill#{rnd.randint(2, 8)}" for p in ("ckpt.after_commit", "ckpt.before_commit",
                                                                        "sink.commit")] + [None])
            with open(work / f"err-{d}", "w+") as err_f:
                p = subprocess.Popen(nx.cmd(out, "ckpt"), env=env(fp), cwd=work / d, stdout=subprocess.DEVNULL,
                                     stderr=err_f, start_new_session=True)
                try:
                    p.wait(timeout=300 if fp else rnd.uniform(0.8, 2.8))
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                err_f.seek(0)
                if p.returncode not in (0, -signal.SIGKILL):
                    anomalies.append(f"crash run {d}: exit {p.returncode}: {harness.flat(err_f.read())[-1500:]}")
            codes.append(p.returncode)
        outcome["crash_exits"] = codes
        ckpt, twin = work / "a" / "ckpt", work / "b" / "ckpt"
        targets = [t for t in _targets(ckpt, str(work / "a" / out)) if only is None or t.name == only]
        if codes[-1] != -signal.SIGKILL or not targets:
            outcome["skipped"] = f"exits {codes}"
            return outcome
        target = rnd.choice(targets)
        chks = sorted(ckpt.glob("chk-*"))
        if keyed and only is None and rnd.random() < 0.5 and chks and (chks[-1] / "MANIFEST.json").exists():
            target = chks[-1] / "MANIFEST.json"
            done: str | None = _tamper(target)
        else:
            done = None
            for how in rnd.sample(DAMAGES, len(DAMAGES)):
                done = _damage(rnd, target, how, ckpt, twin)
                if done:
                    break
        outcome["file"] = str(target.relative_to(work / "a"))
        outcome["damage"] = done
        r = subprocess.run(nx.cmd(out, "ckpt"), env=env(None), cwd=work / "a", capture_output=True, text=True,
                           timeout=300)
        err = harness.flat(r.stderr)
        outcome["exit"] = r.returncode
        outcome["said"] = err[-500:]
        if r.returncode != 0:
            if not _clear(r.returncode, err):
                anomalies.append(f"exit {r.returncode}: {err[-1500:]}")
            outcome["end"] = "refused"
            return outcome
        outcome["end"] = "oracle"
        anomalies += harness.check_output(nx.guarantee, Counter(harness.read_rows(str(work / "a" / out))), expected,
                                              query=nx.query)
        return outcome
    finally:
        shutil.rmtree(work, ignore_errors=True)



# -- hostile lines: every mode and chunk size takes a file the same way -------------------------------------------


def _nested(depth: int, kind: str) -> bytes:
    if kind == "[":
        return b'{"id": 0, "d": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    return b'{"id": 0, "d": ' + b'{"a": ' * (depth - 2) + b"1" + b"}" * (depth - 2) + b"}"


def hostile_json_lines() -> list[bytes]:
    """JSON lines a reader may take differently from mode to mode (each one is a record, a blank or a bad one)."""
    from millstream.connectors._files_common import MAX_JSON_DEPTH as D

    return [_nested(d, k) for d in (D - 1, D, D + 1, D + 2) for k in "[{"] + [
        b'{"s": "[[[[' + b"[" * 300 + b'"}',
        # lone and paired surrogate escapes, escaped backslashes before them
        b'{"s": "x\\ud800y"}', b'{"s": "\\udfff"}', b'{"s": "\\uD800"}', b'{"s": "\\ud83d\\ude00"}',
        b'{"s": "\\\\ud800"}',
        b'{"s": "\\ud800\\ud800"}', b'{"s": "\\udc00\\ud800"}', b'{"\\ud800": 1}', b'{"\\ud83d\\ude00": 1}',
        b'{"s": "\\uDBFF\\uDFFF"}', b'{"s": "a\\\\\\ud800"}',
        # raw bytes that are not UTF-8 (a lone byte, a cut sequence, overlong, an encoded surrogate, beyond U+10FFFF)
        b'{"s": "\xff"}', b'{"s": "\xc3"}', b'{"s": "\xc0\xaf"}', b'{"s": "\xed\xa0\x80"}', b"\xff\xfe",
        b'{"s": "\xf4\x90\x80\x80"}', b'{"\xe9": 1}',
        # NUL and control bytes, byte order marks, carriage returns
        b'{"s": "a\x00b"}', b"\x00", b'{"s": "\\u0000"}', b'{"a": 1}\x00', b'\x00{"a": 1}', b'{"s": "\x01"}',
        b'\xef\xbb\xbf{"a": 1}', b'{"a": "\xef\xbb\xbf"}', b'{"a": 1}\xef\xbb\xbf', b'{"a": 1}\r', b'{"a": 2}\r\r',
        b'\r{"a": 3}',
        # integers around 64 bits, floats beyond a double
        b'{"n": 18446744073709551616}', b'{"n": -9223372036854775809}', b'{"n": 9223372036854775807}',
        b'{"n": -9223372036854775808}', b'{"n": 18446744073709551615}', b'{"n": 100000000000000000000000000000}',
        b'{"f": 1e400}', b'{"f": -1e400}', b'{"f": 1e-400}', b'{"f": NaN}', b'{"f": Infinity}', b'{"f": -0.0}',
        b'{"id": 1.0}', b'{"id": true}', b'{"id": "1"}', b'{"id": null}', b'{"id": []}',
        # duplicate keys
        b'{"a": 1, "a": 2}', b'{"a": 1, "a": "x"}', b'{"id": 1, "id": null}',
        # blank and whitespace-only lines (U+00A0 and U+3000 are not blank: bad records)
        b"", b" ", b"\t", b"\r", b"\x0b", b"\x0c", b" \t \r", b"\xc2\xa0", b"\xe3\x80\x80",
        # not one object
        b"[1]", b"3", b'"s"', b"null", b"{", b"}", b'{"a": 1} x', b'{"a":1}{"b":2}', b"{}", b'{"":1}',
    ]


def hostile_csv_lines() -> list[bytes]:
    """CSV records (header ``c,n``, ``n`` an int) a reader may take differently, quotes left open at each place."""
    return [b'"abc,1', b'x,"abc', b'"a""b,1', b'"ab"c,1', b'a"b,1', b'"a\nb",2', b'"a\r\nb",2', b'"\n",3', b'x,"1\n2"',
            b'"unterminated', b'"', b'""', b'"",1', b",", b",1", b"1,", b"a,1,2", b"a", b"\x00,1", b"a\x00b,1",
            b"\xff,1", b"\xc3,1", b"\xef\xbb\xbfa,1", b"a,1\r", b"\r", b" ", b"\t", b" , ",
            b"a,99999999999999999999999", b"a,-9223372036854775809", b"a,18446744073709551615",
            b"a, 5", b"a,1e3", b'a,"5\n"', b'"a,b",1',
            b"\xc2\xa0,1"]


def hostile_trial(seed: int, guarantees: list[str] | None = None) -> dict[str, object]:
    """A file of good and hostile lines (JSON lines or CSV, LF or CRLF, maybe a BOM, maybe no final newline) read
    natively, in micro-batches and as a batch with chunks of 1, 7 and 4,096 records, bad records dead-lettered:
    every run gives the same records and the same dead letters, and (JSON lines, where a line is a record)
    good + skipped + dead-lettered = the non-blank lines, the blank ones counted."""
    import millstream as ms
    from millstream.connectors import dead_letter, files
    from millstream.testing import CollectSink

    rnd = random.Random(seed)
    fmt = rnd.choice(["jsonl", "csv"])
    hostile = hostile_json_lines() if fmt == "jsonl" else hostile_csv_lines()
    lines = []
    for i in range(rnd.randint(1, 40)):
        if rnd.random() < 0.4:
            lines.append(rnd.choice(hostile))
        else:
            lines.append(json.dumps({"id": i, "s": f"s{i}"}).encode() if fmt == "jsonl" else f"s{i},{i}".encode())
    eol = b"\r\n" if rnd.random() < 0.2 else b"\n"
    body = eol.join(lines) + rnd.choice([eol, b""])
    data = (b"" if fmt == "jsonl" else b"c,n" + eol) + body
    if rnd.random() < 0.1:
        data = b"\xef\xbb\xbf" + data
    work = Path(tempfile.mkdtemp(prefix="millstream-hostile-"))
    outcome: dict[str, object] = {"scenario": "hostile", "seed": seed, "format": fmt, "lines": len(lines)}
    anomalies: list[str] = []
    outcome["anomalies"] = anomalies
    try:
        path = work / f"in.{fmt}"
        path.write_bytes(data)
        kw = {"csv_types": {"n": int}} if fmt == "csv" else {}
        seen = {}
        for mode in ("native", "microbatch", "batch"):
            for chunk in (1, 7, 4096):
                flow = ms.Flow("hostile")
                out, dlq = CollectSink(), CollectSink()
                flow.source(files.read(path, format=fmt, on_error=dead_letter(dlq), **kw)).sink(out)
                try:
                    res = flow.run(mode=mode, max_chunk=chunk)
                except Exception as exc:  # noqa: BLE001 - the job asked to dead-letter bad records: never fails
                    anomalies.append(f"{mode}/{chunk}: {type(exc).__name__}: {str(exc)[:500]}")
                    continue
                rows = sorted(json.dumps({k: v for k, v in r.items() if v is not None}, sort_keys=True, default=repr)
                              for r in out.values)
                letters = sorted((d["position"], repr(d["raw"])) for d in dlq.values)
                total = len(out.values) + res.total("skipped") + res.total("dead_lettered")
                seen[(mode, chunk)] = (rows, letters, res.total("blank_lines"), total)
        first = next(iter(seen.values()), None)
        for (mode, chunk), got in seen.items():
            if got != first:
                assert first is not None
                rows_diff = sorted(set(got[0]) ^ set(first[0]))[:2]
                letters_diff = sorted(set(got[1]) ^ set(first[1]))[:2]
                anomalies.append(f"{mode}/{chunk} differs from native/1: good {len(got[0])}/{len(first[0])}, "
                                 f"dead letters {len(got[1])}/{len(first[1])}, blank {got[2]}/{first[2]}; rows "
                                 f"{rows_diff} letters {letters_diff}")
        if fmt == "jsonl" and first is not None:
            text = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a leading BOM is not a line's
            split = text.split(b"\n")
            if split and split[-1] == b"":
                split.pop()
            records = sum(1 for x in split if x.strip())
            if first[3] != records or first[2] != len(split) - records:
                anomalies.append(f"{first[3]} good + skipped + dead-lettered and {first[2]} blank lines for "
                                 f"{records} records and {len(split) - records} blank lines")
        outcome["good"] = len(first[0]) if first else None
        outcome["dead_lettered"] = len(first[1]) if first else None
        outcome["end"] = "agree"
        return outcome
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _issue13(args: argparse.Namespace, guarantees: list[str]) -> None:
    """Owners, history, damage or hostile trials, one at a time (each runs up to three processes itself)."""
    trial = (owners_trial if args.owners else history_trial if args.history else damage_trial if args.damage
             else hostile_trial)
    totals: Counter[str] = Counter()
    for seed in range(args.seed, args.seed + args.trials):
        res = damage_trial(seed, guarantees, args.only) if args.damage else trial(seed, guarantees)
        print(json.dumps(res), flush=True)
        totals["trials"] += 1
        if "skipped" in res:
            totals["skipped"] += 1
        elif res["anomalies"]:
            totals["anomalies"] += 1
        else:
            totals[str(res.get("end", "ok"))] += 1
    print(json.dumps(dict(totals)))


if __name__ == "__main__":
    main()
