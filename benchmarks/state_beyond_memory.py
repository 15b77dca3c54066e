"""State larger than memory (issue 11, section 4): does a keyed job whose state is several times the
memory it is given complete on the LMDB backend?

    python benchmarks/state_beyond_memory.py [--keys 1500000] [--limit-mb 400] [--backends lmdb,memory]
                                             [--jobs process,window,aggregate,join]

Jobs over ``keys`` users, two events each (``2 * keys`` events from the generator, event time in
milliseconds), each keeping every user's three largest 200-byte payloads (or records) until the end,
so the state holds every key at once:

- ``process``: a process function with keyed value state (emits a row per event);
- ``window``: one tumbling window that closes only at the end of the input, aggregated with ``count``
  and ``top_k(payload, 3)`` (emits a row per user at the end);
- ``aggregate``: the running aggregate ``count`` and ``top_k(payload, 3)`` per user (a row per event);
- ``join``: a tumbling window join (one window closing at the end) of the events with a second
  stream of one event per user (``keys`` more events; a row per pair at the end, two per user).

Since issue 11's on-disk operators, windows, joins and running aggregates keep their state in the
LMDB backend when ``state`` is ``lmdb://`` (before, only process functions did).

Output rows go to a sink that counts them.

Each backend runs in a fresh process inside a memory cgroup (v1 ``memory.limit_in_bytes`` with swap
capped to the same, or v2 ``memory.max`` with ``memory.swap.max = 0``) of ``limit-mb``. Printed per
run: exit status (``-9``: killed by the kernel's OOM killer), rows out, seconds, the cgroup's peak
usage (v1: ``memory.max_usage_in_bytes``; v2: ``memory.peak``), the process's peak resident memory,
and the largest size the LMDB store reached on disk (sampled every 0.2 s by the job's process).
Needs root (to make a cgroup); the machine's page cache of the LMDB file counts against the limit
and is reclaimed like any other file cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = r"""
import json, os, resource, sys, threading, time
import millstream as ms
from millstream import agg, windows
from millstream.connectors import Sink, SinkWriter, generator

keys, backend, state_dir, payload, job = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
FILL = "x" * payload


def event(i):
    k = i % keys
    return {"user": f"u{k:09d}", "ts": i, "payload": f"{i:012d}" + FILL[12:]}


class Counted(SinkWriter):
    rows = 0

    def write(self, records, times):
        Counted.rows += len(records)

    def flush(self):
        pass


class CountSink(Sink):
    def open(self, step):
        return Counted()

    def describe(self):
        return "count"


largest = [0]
done = threading.Event()


def watch():
    while not done.wait(0.2):
        size = 0
        for root, _, files in os.walk(state_dir):
            for f in files:
                try:
                    size += os.path.getsize(os.path.join(root, f))
                except OSError:
                    pass
        largest[0] = max(largest[0], size)


threading.Thread(target=watch, daemon=True).start()
def top3(ctx, r):
    top = ctx.state["top"].value()
    top = sorted([*top, r["payload"]], reverse=True)[:3]
    ctx.state["top"].update(top)
    ctx.emit({"user": ctx.key, "n": len(top)})


flow = ms.Flow("state-beyond-memory")
keyed = (flow.source(generator.read(event, count=2 * keys), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
         .key_by("user"))
if job == "window":
    keyed.window(windows.tumbling(10**15)).aggregate(n=agg.count(), top=agg.top_k("payload", 3)).sink(CountSink())
elif job == "aggregate":
    keyed.aggregate(n=agg.count(), top=agg.top_k("payload", 3)).sink(CountSink())
elif job == "join":
    other = (flow.source(generator.read(lambda i: {"user": f"u{i:09d}", "ts": 2 * i, "tag": i}, count=keys),
                         watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"), name="users")
             .key_by("user"))
    keyed.window_join(other, windows.tumbling(10**15)).sink(CountSink())
else:  # the same state kept by a process function in keyed value state
    keyed.process(top3, state={"top": ms.state.value(default=())}).sink(CountSink())
state = "memory" if backend == "memory" else f"lmdb://{state_dir}?cache=20000"
t = time.monotonic()
flow.run(mode="native", state=state)
seconds = time.monotonic() - t
done.set()
print(json.dumps({"rows": Counted.rows, "seconds": seconds, "state_disk_bytes": largest[0],
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _cgroup(limit: int, tag: str) -> tuple[Path, str]:
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        group = v1 / f"millstream-bench-{os.getpid()}-{tag}"
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
        if (group / "memory.memsw.limit_in_bytes").exists():
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
        return group, "v1"
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists():
        group = v2 / f"millstream-bench-{os.getpid()}-{tag}"
        group.mkdir()
        (group / "memory.max").write_text(str(limit))
        if (group / "memory.swap.max").exists():
            (group / "memory.swap.max").write_text("0")
        return group, "v2"
    sys.exit("no writable memory cgroup (v1 /sys/fs/cgroup/memory or v2 /sys/fs/cgroup): run as root on Linux")


def run(job: str, backend: str, keys: int, limit_mb: int, payload: int) -> dict[str, object]:
    group, version = _cgroup(limit_mb * 2**20, f"{job}-{backend}")
    state_dir = tempfile.mkdtemp(prefix="ms-state-")
    procs = group / "cgroup.procs"
    try:
        t = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", RUN, str(keys), backend, state_dir, str(payload), job],
            preexec_fn=lambda: procs.write_text(str(os.getpid())), capture_output=True, text=True,
            env={**os.environ, "POLARS_MAX_THREADS": "1"})
        wall = time.monotonic() - t
        peak_file = "memory.max_usage_in_bytes" if version == "v1" else "memory.peak"
        peak = int((group / peak_file).read_text()) if (group / peak_file).exists() else None
        out: dict[str, object] = {"job": job, "backend": backend, "exit": proc.returncode, "wall_s": round(wall, 1),
                                  "cgroup_peak_mb": None if peak is None else round(peak / 2**20)}
        if proc.returncode == 0:
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            out.update(rows=got["rows"], job_s=round(got["seconds"], 1),
                       peak_rss_mb=round(got["peak_rss"] / 2**20),
                       state_disk_mb=round(got["state_disk_bytes"] / 2**20))
        else:
            out["stderr_tail"] = proc.stderr.strip().splitlines()[-3:]
        return out
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_500_000)
    ap.add_argument("--limit-mb", type=int, default=400)
    ap.add_argument("--payload", type=int, default=200)
    ap.add_argument("--backends", default="lmdb,memory")
    ap.add_argument("--jobs", default="process,window,aggregate,join")
    args = ap.parse_args()
    print(f"keys {args.keys:,}, events {2 * args.keys:,}, payload {args.payload} B, "
          f"memory limit {args.limit_mb} MB", flush=True)
    for job in args.jobs.split(","):
        for backend in args.backends.split(","):
            print(json.dumps(run(job, backend, args.keys, args.limit_mb, args.payload)), flush=True)


if __name__ == "__main__":
    main()
