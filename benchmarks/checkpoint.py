"""Cost of checkpoints and of recovery.

    python benchmarks/checkpoint.py [--events 2000000] [--keys 1000000] [--q5-events 4000000]

1. Throughput of a keyed 10 s tumbling count (1,000 keys) with no checkpoints, at-least-once
   and exactly-once at a 1 s checkpoint interval (ratios from one run).
2. A running aggregate over ``--keys`` distinct keys: checkpoint size and time, and the time to
   restore the job from it (load + verify checksums + unpickle + restore operators), natively and
   in micro-batch mode (where the running totals are a Polars DataFrame).
3. Nexmark q5 with no checkpoints and exactly-once at a 1 s interval, native and micro-batch, over
   events generated beforehand (native: dict rows; micro-batch: a Polars DataFrame, ``--q5-events``
   times 5, so that each run lasts several checkpoint intervals). Run it on one core:
   ``POLARS_MAX_THREADS=1 taskset -c 1 python benchmarks/checkpoint.py``.
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


def recovery(keys: int, mode: str) -> None:
    from millstream._runtime._microbatch import MicroBatchJob

    recs = [{"k": i, "v": 1} for i in range(keys)]
    flow = ms.Flow("recovery-bench")
    flow.source(ms.connectors.memory.read(recs)).key_by("k").aggregate(n=ms.agg.count()).sink(CountingTxnSink())
    plan = flow.plan()
    d = tempfile.mkdtemp()
    clock = SystemClock()

    def make() -> NativeJob:
        return NativeJob(plan, Runtime(clock)) if mode == "native" else MicroBatchJob(plan, Runtime(clock))

    coord = Coordinator(plan, d, guarantee="exactly-once", interval_ms=10**9, retain=2, clock=clock)
    job = make()
    job.open()
    coord.recover(job)
    run_native(job, max_chunk=8192 if mode == "native" else 100_000, idle_sleep_s=0.001, on_tick=None,
               tick_interval_s=1.0)
    t = time.perf_counter()
    coord.checkpoint(job)
    print(f"{mode}: checkpoint of {keys:,} keys: {coord.stats.last_size_bytes / 1e6:.1f} MB in "
          f"{time.perf_counter() - t:.2f} s")
    job.close()
    job2 = make()
    job2.open()
    coord2 = Coordinator(plan, d, guarantee="exactly-once", interval_ms=10**9, retain=2, clock=clock)
    t = time.perf_counter()
    coord2.recover(job2)
    print(f"{mode}: recovery of {keys:,} keys: {time.perf_counter() - t:.2f} s (restored from checkpoint "
          f"{coord2.stats.restored_from})")
    job2.close()
    shutil.rmtree(d)


def nexmark_q5(events: int, repeat: int) -> None:
    import polars as pl

    from millstream import nexmark
    from millstream.nexmark._cli import DiscardSink

    reader = nexmark.read(nexmark.NexmarkConfig(events=events)).open(
        ms.connectors.SourceContext(step="gen", clock=SystemClock(), policy="fail"))
    parts = []
    while (part := reader.poll_frame(500_000)) is not None:  # type: ignore[attr-defined]
        parts.append(part)
    base = pl.concat(parts, how="diagonal")
    span = int(base["dateTime"].max()) - int(base["dateTime"].min()) + 1
    # micro-batch gets 5 copies, one after the other in event time, to run as long as native does
    frame = pl.concat([base.with_columns(pl.col("dateTime") + k * span, pl.col("expires") + k * span)
                       for k in range(5)])
    rows = [{k: v for k, v in r.items() if v is not None} for r in base.to_dicts()]
    for mode, data, n in (("native", rows, len(rows)), ("microbatch", frame, frame.height)):
        figures = {}
        for label in ("no checkpoints", "exactly-once, 1 s"):
            best = float("inf")
            ckpts = 0
            for _ in range(repeat):
                d = tempfile.mkdtemp()
                flow = nexmark.build("q5", ms.connectors.memory.read(data), DiscardSink())
                opts: dict[str, Any] = {"mode": mode}
                if label != "no checkpoints":
                    opts.update(guarantee="exactly-once", checkpoint_dir=d, checkpoint_interval=1_000)
                t = time.perf_counter()
                r = flow.run(**opts)
                best = min(best, time.perf_counter() - t)
                ckpts = r.checkpoints.completed if r.checkpoints else 0
                shutil.rmtree(d)
            figures[label] = n / best
            cost = (f"  cost {100 * (1 - figures[label] / figures['no checkpoints']):5.1f} %"
                    if label != "no checkpoints" else "")
            print(f"q5 {mode:10s} {label:18s} {n / best / 1e6:6.2f} M events/s over {n:,} events "
                  f"({best:.1f} s, {ckpts} checkpoints){cost}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--q5-events", type=int, default=4_000_000)
    args = ap.parse_args()
    throughput(args.events, args.repeat)
    recovery(args.keys, "native")
    recovery(args.keys, "microbatch")
    nexmark_q5(args.q5_events, args.repeat)


if __name__ == "__main__":
    main()
