"""Local parallelism: Nexmark q5, native mode, at parallelism 1 and 2 (issue 11, section 2).

    python benchmarks/parallel.py [--events 1000000] [--repeat 2] [--parallelism 1,2]

Each run is a fresh process (``python -c``), timed from outside: the whole-process time includes
interpreter start-up, imports and the workers' start, which is what a user waits for. Events come
from the Nexmark generator in worker 0 (sources are not split across workers yet). Prints events/s
over the whole process and the job's own time, and the peak resident memory of each worker.
Runs alternate (p1, p2, p1, p2, ...) so that the shared machine's noise falls on both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

RUN = """
import json, resource, sys, time
import millstream as ms
from millstream import nexmark

events, p = int(sys.argv[1]), int(sys.argv[2])

if __name__ == "__main__":
    sink = ms.testing.CollectSink()
    t = time.monotonic()
    result = nexmark.build("q5", nexmark.read(nexmark.NexmarkConfig(events=events)), sink).run(
        mode="native", parallelism=p)
    job_s = time.monotonic() - t
    print(json.dumps({"job_s": job_s, "rows": result.records_written,
                      "peaks": list(result.worker_peak_rss)
                      or [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]}))
"""


def run(events: int, p: int) -> dict[str, float]:
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-c", RUN, str(events), str(p)], check=True, capture_output=True, text=True)
    whole = time.monotonic() - t
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got["whole_s"] = whole
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--parallelism", default="1,2")
    args = ap.parse_args()
    ps = [int(x) for x in args.parallelism.split(",")]
    best: dict[int, dict[str, float]] = {}
    for _ in range(args.repeat):
        for p in ps:
            got = run(args.events, p)
            if p not in best or got["whole_s"] < best[p]["whole_s"]:
                best[p] = got
    rows = {p: best[p]["rows"] for p in ps}
    assert len(set(rows.values())) == 1, f"parallelism changed the answer: {rows}"
    print(f"Nexmark q5, native, {args.events:,} events from the generator, best of {args.repeat}")
    print("| parallelism | whole process s | events/s (whole) | job s | events/s (job) | peak RSS per worker MB |")
    print("|---|---|---|---|---|---|")
    for p in ps:
        b = best[p]
        peaks = ", ".join(f"{x / 2**20:.0f}" for x in b["peaks"])
        print(f"| {p} | {b['whole_s']:.2f} | {args.events / b['whole_s']:,.0f} | {b['job_s']:.2f} | "
              f"{args.events / b['job_s']:,.0f} | {peaks} |")
    if 1 in best:
        for p in ps:
            if p != 1:
                print(f"p{p} vs p1: whole process {best[1]['whole_s'] / best[p]['whole_s']:.2f}x, "
                      f"job {best[1]['job_s'] / best[p]['job_s']:.2f}x")


if __name__ == "__main__":
    main()
