"""Local parallelism: Nexmark q5, q7 and a stateless map -> filter, in a mode (native unless ``--mode``
says otherwise), at parallelism 1 and 2 (issue 11, section 2); with ``--engine local,ray``, the workers
as local processes against Ray actors (section 3). With ``--input FILE``, the events are read from a
JSON-lines file (its byte ranges as the splits) instead of made by the generator: the issue's
micro-batch figure is ``--mode microbatch --input events.jsonl --events 2000000 --splits 2``.

    python benchmarks/parallel.py [--events 1000000] [--repeat 3] [--parallelism 1,2] [--queries q5,q7,stateless]
                                  [--splits 4] [--checkpoints at-least-once|exactly-once] [--interval 1000]
                                  [--mode native|microbatch|batch] [--input events.jsonl]
                                  [--engine local|ray|local,ray]

``--engine ray`` runs workers 1 .. N-1 as Ray actors on a local Ray that each run starts (``ray.init()``,
timed apart and printed: it is not the job's; the events/s compared between engines are the job's own
time, and the whole process's). Ray binds the machine's network interface: on a shared machine, run the
benchmark in a network namespace with loopback only,
``unshare -n sh -c 'ip link set lo up && python benchmarks/parallel.py --engine local,ray ...'``.

Each run is a fresh process (``python -c``), timed from outside: the whole-process time includes
interpreter start-up, imports and the workers' start, which is what a user waits for. Events come
from the Nexmark generator in ``--splits`` logical splits by event number (each worker makes the
events of its range of splits; the splits are the same at every parallelism).

With ``--checkpoints G``, every configuration also runs with checkpoints (guarantee G, every
``--interval`` ms, into a fresh directory; exactly-once writes to a transactional file sink in it,
at-least-once to memory as without), runs alternating with and without, and the overhead of
checkpointing is printed: whole-process time with against without, and the checkpoints' count,
last size and longest duration.
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

query, events, p, splits, guarantee, interval = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                                   sys.argv[5], int(sys.argv[6]))
engine, mode, path = sys.argv[7], sys.argv[8], sys.argv[9]


def tenths(r):
    return {**r, "price": r["price"] * 0.908}


def wanted(r):
    return r["auction"] % 123 == 0


if __name__ == "__main__":
    import tempfile

    tmp = tempfile.mkdtemp(prefix="millstream-bench-")
    sink = (ms.connectors.files.write(tmp + "/out", transactional=True) if guarantee == "exactly-once"
            else ms.testing.CollectSink())
    if path != "-":  # a JSON-lines file of tagged events, its byte ranges as the splits
        source = ms.connectors.files.read(path, format="jsonl", name="events", splits=splits)
    else:
        source = nexmark.read(nexmark.NexmarkConfig(events=events), kind="bid" if query == "stateless" else "all",
                              splits=splits)
    if query == "stateless":  # per record Python functions: the chain runs where the events are made
        flow = ms.Flow("stateless")
        flow.source(source, watermark=nexmark.WATERMARK).map(tenths).filter(wanted).sink(sink)
    else:
        flow = nexmark.build(query, source, sink)
    ray_init_s = 0.0
    if engine == "ray":  # Ray's start is not the job's: timed apart
        import logging, os, ray

        t = time.monotonic()
        ray.init(num_cpus=max(p, os.cpu_count() or 1), include_dashboard=False, logging_level=logging.WARNING)
        ray_init_s = time.monotonic() - t
    t, cpu0, kids = time.monotonic(), time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    checkpoints = {} if guarantee == "none" else {"guarantee": guarantee, "checkpoint_dir": tmp + "/ck",
                                                  "checkpoint_interval": interval}
    result = flow.run(mode=mode, parallelism=p, engine=engine, **checkpoints)
    job_s = time.monotonic() - t
    if engine == "ray":
        ray.shutdown()
    ck = result.checkpoints
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers: forked by this process, joined by it
    print(json.dumps({"job_s": job_s, "ray_init_s": ray_init_s, "rows": result.records_written,
                      "w0_cpu_s": time.process_time() - cpu0,
                      "ckpts": ck.completed if ck else 0, "ckpt_bytes": ck.last_size_bytes if ck else 0,
                      "ckpt_max_ms": ck.max_duration_ms if ck else 0.0,
                      "others_cpu_s": after.ru_utime + after.ru_stime - kids.ru_utime - kids.ru_stime,
                      "peaks": list(result.worker_peak_rss)
                      or [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]}))
"""


def run(query: str, events: int, p: int, splits: int = 4, guarantee: str = "none",
        interval: int = 1000, engine: str = "local", mode: str = "native", path: str | None = None
        ) -> dict[str, float]:
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-c", RUN, query, str(events), str(p), str(splits), guarantee,
                          str(interval), engine, mode, path or "-"], check=True, capture_output=True, text=True)
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
    ap.add_argument("--splits", type=int, default=4, help="the Nexmark source's logical splits")
    ap.add_argument("--checkpoints", default=None, choices=["at-least-once", "exactly-once"],
                    help="also run with checkpoints of this guarantee, and print their overhead")
    ap.add_argument("--interval", type=int, default=1000, help="checkpoint interval, ms")
    ap.add_argument("--mode", default="native", choices=["native", "microbatch", "batch"])
    ap.add_argument("--input", default=None, metavar="FILE",
                    help="read a JSON-lines file of Nexmark events (made with --events events if it is not there), "
                    "its byte ranges as --splits splits, instead of the generator")
    ap.add_argument("--engine", default="local",
                    help="local, ray or local,ray: where workers 1..N-1 run (Ray: actors; parallelism 1 runs local)")
    args = ap.parse_args()
    engines = args.engine.split(",")
    if engines != ["local"]:
        engine_main(args, [int(x) for x in args.parallelism.split(",")], engines)
        return
    ps = [int(x) for x in args.parallelism.split(",")]
    gs = ["none"] + ([args.checkpoints] if args.checkpoints else [])
    if args.input is not None:
        if "stateless" in args.queries.split(","):
            ap.error("the stateless query reads bids from the generator: leave it out with --input")
        if not os.path.exists(args.input):
            subprocess.run([sys.executable, "-m", "millstream.cli", "nexmark", "generate", "--events",
                            str(args.events), "--out", args.input], check=True, capture_output=True)
        with open(args.input, "rb") as f:
            args.events = sum(1 for _ in f)
    what = f"a JSON-lines file ({args.input})" if args.input else "the generator"
    print(f"{args.mode} mode, {args.events:,} Nexmark events from {what} in {args.splits} splits, "
          f"{os.cpu_count()} CPUs, {args.repeat} runs each, alternating"
          + (f"; checkpoints: {args.checkpoints} every {args.interval} ms" if args.checkpoints else "") + "\n")
    for query in args.queries.split(","):
        runs: dict[tuple[int, str], list[dict[str, float]]] = {(p, g): [] for p in ps for g in gs}
        for _ in range(args.repeat):
            for p in ps:
                for g in gs:
                    runs[(p, g)].append(run(query, args.events, p, args.splits, g, args.interval, mode=args.mode,
                                            path=args.input))
        rows = {k: {r["rows"] for r in v} for k, v in runs.items()}
        assert len(set().union(*rows.values())) == 1, f"parallelism or checkpoints changed the answer: {rows}"
        print(f"{query}:")
        print("| parallelism | checkpoints | run | load before | whole process s | events/s (whole) | job s "
              "| CPU s (all processes) | job CPU s: worker 0 / the others | peak RSS per worker MB "
              "| checkpoints taken, last size, longest |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for (p, g), bs in runs.items():
            for i, b in enumerate(bs, 1):
                peaks = ", ".join(f"{x / 2**20:.0f}" for x in b["peaks"])
                ck = (f"{b['ckpts']}, {b['ckpt_bytes'] / 1024:,.0f} KiB, {b['ckpt_max_ms']:.0f} ms"
                      if g != "none" else "")
                print(f"| {p} | {g} | {i} | {b['load']:.1f} | {b['whole_s']:.2f} | {args.events / b['whole_s']:,.0f} | "
                      f"{b['job_s']:.2f} | {b['cpu_s']:.2f} | {b['w0_cpu_s']:.2f} / {b['others_cpu_s']:.2f} | "
                      f"{peaks} | {ck} |")
        for p in ps:
            if p != 1 and (1, "none") in runs:
                best = min(r["whole_s"] for r in runs[(1, "none")]) / min(r["whole_s"] for r in runs[(p, "none")])
                med = statistics.median(r["whole_s"] for r in runs[(1, "none")]) / statistics.median(
                    r["whole_s"] for r in runs[(p, "none")])
                pairs = ", ".join(f"{a['whole_s'] / b['whole_s']:.2f}x"
                                  for a, b in zip(runs[(1, "none")], runs[(p, "none")], strict=True))
                print(f"{query} p{p} vs p1, whole process: best {best:.2f}x, median {med:.2f}x; run by run {pairs}")
            if args.checkpoints:
                without, with_ = runs[(p, "none")], runs[(p, args.checkpoints)]
                best = min(r["whole_s"] for r in with_) / min(r["whole_s"] for r in without)
                med = statistics.median(r["whole_s"] for r in with_) / statistics.median(r["whole_s"] for r in without)
                pairs = ", ".join(f"{b['whole_s'] / a['whole_s']:.2f}x" for a, b in zip(without, with_, strict=True))
                print(f"{query} p{p} with {args.checkpoints} checkpoints every {args.interval} ms against without, "
                      f"whole process: best {best:.2f}x, median {med:.2f}x; run by run {pairs}")
        print()


def engine_main(args: argparse.Namespace, ps: list[int], engines: list[str]) -> None:
    """Each query at each parallelism above 1 on each engine, runs alternating; events/s of the job's own
    time and of the whole process, and Ray against local processes."""
    ps = [p for p in ps if p > 1] or [2]
    print(f"native mode, {args.events:,} Nexmark events from the generator in {args.splits} splits, "
          f"{os.cpu_count()} CPUs, {args.repeat} runs each, alternating; engines: {', '.join(engines)} "
          "(Ray: a local Ray started by each run, its start timed apart)\n")
    for query in args.queries.split(","):
        runs: dict[tuple[int, str], list[dict[str, float]]] = {(p, e): [] for p in ps for e in engines}
        for _ in range(args.repeat):
            for p in ps:
                for e in engines:
                    runs[(p, e)].append(run(query, args.events, p, args.splits, engine=e))
        rows = {k: {r["rows"] for r in v} for k, v in runs.items()}
        assert len(set().union(*rows.values())) == 1, f"the engine changed the answer: {rows}"
        print(f"{query}:")
        print("| parallelism | engine | run | load before | job s | events/s (job) | whole process s "
              "| events/s (whole) | Ray start s | peak RSS per worker MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for (p, e), bs in runs.items():
            for i, b in enumerate(bs, 1):
                peaks = ", ".join(f"{x / 2**20:.0f}" for x in b["peaks"])
                print(f"| {p} | {e} | {i} | {b['load']:.1f} | {b['job_s']:.2f} | {args.events / b['job_s']:,.0f} | "
                      f"{b['whole_s']:.2f} | {args.events / b['whole_s']:,.0f} | {b['ray_init_s']:.2f} | {peaks} |")
        if "local" in engines and "ray" in engines:
            for p in ps:
                local, ray = runs[(p, "local")], runs[(p, "ray")]
                for what in ("job_s", "whole_s"):
                    best = min(r[what] for r in local) / min(r[what] for r in ray)
                    med = statistics.median(r[what] for r in local) / statistics.median(r[what] for r in ray)
                    pairs = ", ".join(f"{a[what] / b[what]:.2f}x" for a, b in zip(local, ray, strict=True))
                    print(f"{query} p{p} Ray against local processes, events/s ({what[:-2]}): best {best:.2f}x, "
                          f"median {med:.2f}x; run by run {pairs}")
        print()


if __name__ == "__main__":
    main()
