"""Local parallelism: Nexmark q5, q7 and a stateless map -> filter, native mode, at parallelism 1 and 2
(issue 11, section 2).

    python benchmarks/parallel.py [--events 1000000] [--repeat 3] [--parallelism 1,2] [--queries q5,q7,stateless]

Each run is a fresh process (``python -c``), timed from outside: the whole-process time includes
interpreter start-up, imports and the workers' start, which is what a user waits for. Events come
from the Nexmark generator, split across the workers by event number (each worker makes its part).
Every run is printed (not only the best): whole-process seconds and events/s, the job's own time,
the CPU seconds of every process of the run (the job's and its workers', which it joins), the CPU
seconds of the job itself on worker 0 and on the other workers (when the workers are forked from the
job's process; workers from the forkserver are not its children and count 0), the peak resident
memory of each worker, and the machine's 1-minute load average just before the run (this
machine is shared: a load near or above its core count means another process was busy).
Runs alternate (p1, p2, p1, p2, ...) so that the shared machine's noise falls on both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

RUN = """
import json, resource, sys, time
import millstream as ms
from millstream import col, nexmark

query, events, p = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def tenths(r):
    return {**r, "price": r["price"] * 0.908}


def wanted(r):
    return r["auction"] % 123 == 0


if __name__ == "__main__":
    sink = ms.testing.CollectSink()
    source = nexmark.read(nexmark.NexmarkConfig(events=events), kind="bid" if query == "stateless" else "all")
    if query == "stateless":  # per record Python functions: the chain runs where the events are made
        flow = ms.Flow("stateless")
        flow.source(source, watermark=nexmark.WATERMARK).map(tenths).filter(wanted).sink(sink)
    else:
        flow = nexmark.build(query, source, sink)
    t, cpu0, kids = time.monotonic(), time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = flow.run(mode="native", parallelism=p)
    job_s = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers: forked by this process, joined by it
    print(json.dumps({"job_s": job_s, "rows": len(sink.values), "w0_cpu_s": time.process_time() - cpu0,
                      "others_cpu_s": after.ru_utime + after.ru_stime - kids.ru_utime - kids.ru_stime,
                      "peaks": list(result.worker_peak_rss)
                      or [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]}))
"""


def run(query: str, events: int, p: int) -> dict[str, float]:
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-c", RUN, query, str(events), str(p)], check=True,
                         capture_output=True, text=True)
    whole = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got["whole_s"] = whole
    got["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    got["load"] = load
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--parallelism", default="1,2")
    ap.add_argument("--queries", default="q5,q7,stateless")
    args = ap.parse_args()
    ps = [int(x) for x in args.parallelism.split(",")]
    print(f"native mode, {args.events:,} Nexmark events from the generator, {os.cpu_count()} CPUs, "
          f"{args.repeat} runs each, alternating\n")
    for query in args.queries.split(","):
        runs: dict[int, list[dict[str, float]]] = {p: [] for p in ps}
        for _ in range(args.repeat):
            for p in ps:
                runs[p].append(run(query, args.events, p))
        rows = {p: {r["rows"] for r in runs[p]} for p in ps}
        assert len(set().union(*rows.values())) == 1, f"parallelism changed the answer: {rows}"
        print(f"{query}:")
        print("| parallelism | run | load before | whole process s | events/s (whole) | job s | events/s (job) "
              "| CPU s (all processes) | job CPU s: worker 0 / the others | peak RSS per worker MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for p in ps:
            for i, b in enumerate(runs[p], 1):
                peaks = ", ".join(f"{x / 2**20:.0f}" for x in b["peaks"])
                print(f"| {p} | {i} | {b['load']:.1f} | {b['whole_s']:.2f} | {args.events / b['whole_s']:,.0f} | "
                      f"{b['job_s']:.2f} | {args.events / b['job_s']:,.0f} | {b['cpu_s']:.2f} | "
                      f"{b['w0_cpu_s']:.2f} / {b['others_cpu_s']:.2f} | {peaks} |")
        if 1 in runs:
            for p in ps:
                if p == 1:
                    continue
                best = min(r["whole_s"] for r in runs[1]) / min(r["whole_s"] for r in runs[p])
                med = statistics.median(r["whole_s"] for r in runs[1]) / statistics.median(
                    r["whole_s"] for r in runs[p])
                pairs = ", ".join(f"{a['whole_s'] / b['whole_s']:.2f}x" for a, b in zip(runs[1], runs[p], strict=True))
                print(f"{query} p{p} vs p1, whole process: best {best:.2f}x, median {med:.2f}x; "
                      f"run by run {pairs}")
        print()


if __name__ == "__main__":
    main()
