"""Cost of checkpoints and of recovery.

    python benchmarks/checkpoint.py [--events 2000000] [--keys 1000000]

1. Throughput of a keyed 10 s tumbling count (1,000 keys) with no checkpoints, at-least-once
   and exactly-once at a 1 s checkpoint interval (ratios from one run).
2. A running aggregate over ``--keys`` distinct keys: checkpoint size and time, and the time to
   restore the job from it (load + verify checksums + unpickle + restore operators).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from typing import Any

import millstream as ms
from millstream._checkpoint import Coordinator
from millstream._clock import SystemClock
from millstream._runtime._base import Runtime
from millstream._runtime._native import NativeJob, run_native


class CountingTxnSink(ms.connectors.Sink):
    """Counts records; two-phase commit with nothing to stage (measures the engine's checkpoint cost)."""

    delivery = "transactional"

    def __init__(self) -> None:
        self.n = 0

    def open(self, step: str) -> ms.connectors.SinkWriter:
        sink = self

        class W(ms.connectors.SinkWriter):
            def write(self, records: list[Any], times: list[int] | None) -> None:
                sink.n += len(records)

            def pre_commit(self, checkpoint_id: int) -> Any:
                return checkpoint_id

        return W()

    def describe(self) -> str:
        return "count"


def window_flow(recs: list[dict[str, Any]]) -> tuple[ms.Flow, CountingTxnSink]:
    flow = ms.Flow("ckpt-bench")
    sink = CountingTxnSink()
    (flow.source(ms.connectors.memory.read(recs), watermark=ms.WatermarkStrategy.bounded(1_000, timestamp="ts"))
         .key_by("auction").window(ms.windows.tumbling(10_000)).aggregate(n=ms.agg.count()).sink(sink))
    return flow, sink


def throughput(n: int, repeat: int) -> None:
    recs = [{"auction": (i * 7919) % 1000, "ts": i} for i in range(n)]
    rows = {}
    for label, kw in (("no checkpoints", {}), ("at-least-once, 1 s", {"guarantee": "at-least-once"}),
                      ("exactly-once, 1 s", {"guarantee": "exactly-once"})):
        best = float("inf")
        ckpts = 0
        for _ in range(repeat):
            d = tempfile.mkdtemp()
            flow, _sink = window_flow(recs)
            opts: dict[str, Any] = {"max_chunk": 4096}
            if kw:
                opts.update(kw, checkpoint_dir=d, checkpoint_interval=1_000)
            t = time.perf_counter()
            r = flow.run(**opts)
            best = min(best, time.perf_counter() - t)
            ckpts = r.checkpoints.completed if r.checkpoints else 0
            shutil.rmtree(d)
        rows[label] = n / best
        print(f"{label:22s} {n / best / 1e6:6.2f} M events/s  ({ckpts} checkpoints)"
              + (f"  cost {100 * (1 - rows[label] / rows['no checkpoints']):5.1f} %" if kw else ""), flush=True)


def recovery(keys: int) -> None:
    recs = [{"k": i, "v": 1} for i in range(keys)]
    flow = ms.Flow("recovery-bench")
    flow.source(ms.connectors.memory.read(recs)).key_by("k").aggregate(n=ms.agg.count()).sink(CountingTxnSink())
    plan = flow.plan()
    d = tempfile.mkdtemp()
    clock = SystemClock()
    coord = Coordinator(plan, d, guarantee="exactly-once", interval_ms=10**9, retain=2, clock=clock)
    job = NativeJob(plan, Runtime(clock))
    job.open()
    coord.recover(job)
    run_native(job, max_chunk=8192, idle_sleep_s=0.001, on_tick=None, tick_interval_s=1.0)
    t = time.perf_counter()
    coord.checkpoint(job)
    print(f"checkpoint of {keys:,} keys: {coord.stats.last_size_bytes / 1e6:.1f} MB in {time.perf_counter() - t:.2f} s")
    job.close()
    job2 = NativeJob(plan, Runtime(clock))
    job2.open()
    coord2 = Coordinator(plan, d, guarantee="exactly-once", interval_ms=10**9, retain=2, clock=clock)
    t = time.perf_counter()
    coord2.recover(job2)
    print(f"recovery of {keys:,} keys: {time.perf_counter() - t:.2f} s (restored from checkpoint "
          f"{coord2.stats.restored_from})")
    job2.close()
    shutil.rmtree(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    throughput(args.events, args.repeat)
    recovery(args.keys)


if __name__ == "__main__":
    main()
