"""State of the columnar (micro-batch) keyed operators against native mode, with many keys and small batches.

    python benchmarks/columnar_state.py [--scale 1.0] [--batch 2000] [--repeat 1] [--only NAME] [--rows]

Three workloads, each run natively and in micro-batch mode on the same records, in a fresh
subprocess per run (so peak RSS is its own), pinned to one core with one polars thread:

* ``running``: ``key_by("k").aggregate(total=sum("v"), n=count(), hi=max("v"))``, a running
  aggregate (one output row per record) over 1,600,000 events and 800,000 keys;
* ``session``: ``key_by("k").window(session(gap=10 min)).aggregate(total=sum("v"), n=count())``
  over 800,000 events (one per ms) and 400,000 keys: every key's session stays open for the
  whole run, so the open state is 400,000 sessions;
* ``tumbling``: ``key_by("k").window(tumbling(10 min)).aggregate(total=sum("v"), n=count())`` over
  1,000,000 events (one per ms) and 200,000 keys: a window holds up to 190,000 keys while it fills;
* ``sliding``: ``key_by("k").window(sliding(60 s, every 10 s)).aggregate(total=sum("v"), n=count())``
  over 1,000,000 events (one per ms) and 200,000 keys (about 60,000 keys and 300,000 key-slices
  live at a time; its time goes mostly into the 6,000,000 results).

Both modes read ``--batch`` records at a time (``max_chunk``). Native mode reads dict records,
micro-batch mode the same records as a polars DataFrame built from columns (columnar input;
``--rows``: dicts too). Peak RSS is the process's, with the input's own size beside it.
The sink counts output rows and sums ``total`` over them (dict records natively, the result
batches as they are in micro-batch mode), and the two modes must agree.
``--scale`` multiplies the number of events and keys.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

#: name: (events, keys, what it is)
WORKLOADS = {
    "running": (1_600_000, 800_000, "running aggregate (sum, count, max)"),
    "session": (800_000, 400_000, "session window, gap 10 min (sum, count)"),
    "tumbling": (1_000_000, 200_000, "tumbling window 10 min (sum, count)"),
    "sliding": (1_000_000, 200_000, "sliding window 60 s / 10 s (sum, count)"),
}


def make_records(n: int, keys: int) -> list[dict[str, Any]]:
    # one event per ms of event time, keys spread by a multiplicative hash (every key is hit)
    return [{"k": (i * 7919) % keys, "v": (i * 31) % 1000, "ts": i} for i in range(n)]


def _sink() -> Any:
    import millstream as ms

    class Sink(ms.connectors.Sink):
        n = 0
        total = 0

        def open(self, step: str) -> ms.connectors.SinkWriter:
            sink = self

            class W(ms.connectors.SinkWriter):
                columnar = True  # micro-batch results come as they are, not as dicts

                def write(self, records: Any, times: list[int] | None) -> None:
                    sink.n += len(records)
                    sink.total += sum(r["total"] for r in records)

                def write_frame(self, frame: Any, times: Any) -> None:
                    sink.n += frame.height
                    sink.total += int(frame.get_column("total").sum())

            return W()

        def describe(self) -> str:
            return "count"

    return Sink()


def flow_of(name: str, data: Any) -> tuple[Any, Any]:
    import millstream as ms
    from millstream import agg

    flow = ms.Flow(name)
    sink = _sink()
    wm = ms.WatermarkStrategy.bounded(0, timestamp="ts")
    src = flow.source(ms.connectors.memory.read(data, name="events"), watermark=wm).key_by("k")
    if name == "running":
        out = src.aggregate(total=agg.sum("v"), n=agg.count(), hi=agg.max("v"))
    elif name == "session":
        out = src.window(ms.windows.session(gap=600_000)).aggregate(total=agg.sum("v"), n=agg.count())
    elif name == "tumbling":
        out = src.window(ms.windows.tumbling(600_000)).aggregate(total=agg.sum("v"), n=agg.count())
    elif name == "sliding":
        out = src.window(ms.windows.sliding(size=60_000, every=10_000)).aggregate(total=agg.sum("v"), n=agg.count())
    else:
        raise ValueError(name)
    out.sink(sink)
    return flow, sink


def child(name: str, mode: str, scale: float, batch: int, repeat: int, rows: bool) -> dict[str, Any]:
    events, keys, _ = WORKLOADS[name]
    n, k = int(events * scale), max(1, int(keys * scale))
    if mode != "native" and not rows:  # the same records as columns, never as dicts (peak RSS is the job's)
        import numpy as np
        import polars as pl

        i = np.arange(n, dtype=np.int64)
        recs: Any = pl.DataFrame({"k": (i * 7919) % k, "v": (i * 31) % 1000, "ts": i})
    else:
        recs = make_records(n, k)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best, out, total = float("inf"), 0, 0
    for _ in range(repeat):
        flow, sink = flow_of(name, recs)
        t = time.perf_counter()
        flow.run(mode=mode, max_chunk=batch)
        best = min(best, time.perf_counter() - t)
        out, total = sink.n, sink.total
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"name": name, "mode": mode, "events": n, "keys": k, "seconds": best, "eps": n / best, "out": out,
            "total": total, "peak_rss_mb": peak / 1024, "input_rss_mb": base_rss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--only", action="append", choices=list(WORKLOADS))
    ap.add_argument("--rows", action="store_true", help="micro-batch reads dict records too")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.scale, args.batch, args.repeat, args.rows)))
        return
    pin = ["taskset", "-c", "1"] if sys.platform.startswith("linux") and os.path.exists("/usr/bin/taskset") else []
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    rows = []
    for name in args.only or list(WORKLOADS):
        res = {}
        for mode in ("native", "microbatch"):
            cmd = [*pin, sys.executable, __file__, "--child", name, mode, "--scale", str(args.scale),
                   "--batch", str(args.batch), "--repeat", str(args.repeat), *(["--rows"] if args.rows else [])]
            res[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                                  env=env).stdout.splitlines()[-1])
        nat, mb = res["native"], res["microbatch"]
        assert (nat["out"], nat["total"]) == (mb["out"], mb["total"]), f"the modes disagree on {name}: {nat} {mb}"
        row = {"workload": name, "events": nat["events"], "keys": nat["keys"], "batch": args.batch,
               "outputs": nat["out"], "ratio": mb["seconds"] / nat["seconds"],
               **{f"{m}_{f}": round(res[m][f], 3) for m in res for f in ("seconds", "eps", "peak_rss_mb")}}
        rows.append(row)
        print(f"{name:8s} {nat['events']:>9,} events {nat['keys']:>8,} keys  "
              f"native {nat['seconds']:7.2f} s {nat['eps'] / 1e6:5.2f} M ev/s {nat['peak_rss_mb']:6.0f} MB  |  "
              f"micro-batch {mb['seconds']:7.2f} s {mb['eps'] / 1e6:5.2f} M ev/s {mb['peak_rss_mb']:6.0f} MB  |  "
              f"micro/native {row['ratio']:5.2f}x time  (input alone {nat['input_rss_mb']:.0f} / "
              f"{mb['input_rss_mb']:.0f} MB; {nat['out']:,} outputs)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": sys.version.split()[0], "scale": args.scale, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
