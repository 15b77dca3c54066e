"""The native micro-benchmark workloads written for bytewax (run in a separate venv with bytewax installed).

    python benchmarks/peers/bytewax_native.py WORKLOAD EVENTS

Prints one JSON line: {"engine": "bytewax", "name", "events", "seconds", "eps", "out"}.
Same records as benchmarks/native.py (make_records), same results.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def make_records(n: int, keys: int) -> list[dict]:
    return [{"auction": (i * 7919) % keys, "price": (i * 31) % 1000, "ts": i, "bidder": i % 9973} for i in range(n)]


def build(name: str, recs: list[dict], out: list) -> Dataflow:
    flow = Dataflow(name)
    s = op.input("in", flow, TestingSource(recs, batch_size=4096))
    if name == "map_filter":
        m = op.map("map", s, lambda r: r["price"] * 0.908)
        f = op.filter("filter", m, lambda p: p > 500)
        op.output("out", f, TestingSink(out))
    elif name.startswith("tumbling_count"):
        clock = win.EventClock(lambda r: EPOCH + timedelta(milliseconds=r["ts"]),
                               wait_for_system_duration=timedelta(seconds=1))
        windower = win.TumblingWindower(length=timedelta(seconds=10), align_to=EPOCH)
        counts = win.count_window("count", s, clock, windower, lambda r: str(r["auction"]))
        op.output("out", counts.down, TestingSink(out))
    else:
        raise SystemExit(f"no bytewax version of {name}")
    return flow


def main() -> None:
    name, n = sys.argv[1], int(sys.argv[2])
    recs = make_records(n, 1 if name.endswith("_1_key") else 1_000)
    out: list = []
    flow = build(name, recs, out)
    t = time.perf_counter()
    run_main(flow)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"engine": "bytewax", "name": name, "events": n, "seconds": dt, "eps": n / dt, "out": len(out),
                      "peak_rss_mb": peak}))


if __name__ == "__main__":
    main()
