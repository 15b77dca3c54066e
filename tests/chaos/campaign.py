"""Long chaos campaigns, run by hand (figures go to docs/reliability.md).

    python tests/chaos/campaign.py --guarantee exactly-once --trials 500 --kills 2 [--jobs 2]
    python tests/chaos/campaign.py --failpoints --rounds 5          # every failpoint x guarantee, 5 times
    python tests/chaos/campaign.py --corruptions --trials 300       # corrupt checkpoints: 100 % must be detected
    python tests/chaos/campaign.py --pauses --rounds 10             # F9: SIGSTOP + a second run + SIGCONT
    python tests/chaos/campaign.py --rewinds --trials 100           # newest checkpoint deleted after a kill

Each trial prints one JSON line (seed, fault schedule, anomalies); the last line sums
them up. A trial with an anomaly is a bug: replay it from its seed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
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


if __name__ == "__main__":
    main()
