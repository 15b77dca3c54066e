"""Join and enrichment throughput: interval join, table (temporal) join and lookup join.

    python benchmarks/joins.py [--n 200000] [--keys 10000] [--repeat 2] [--modes native,microbatch]

Figures: input events per second per mode (the best of ``--repeat`` runs, inputs in memory,
output to an in-memory sink), and the state the interval join holds per key (records and
pickled bytes, at its peak, stepping a native job).

* interval join: two streams of ``n`` events each over ``keys`` keys, one event per ms per
  side, ``right.t in [left.t - 50ms, left.t + 50ms]``, watermark bound 100 ms;
* table join: ``n`` events joined with a changelog of ``n / 10`` versions over the same keys;
* lookup join: ``n`` events whose keys (Zipf-like: a few users are most of the traffic) are
  looked up in a SQLite table of ``keys`` users, with the default cache, and with none
  (``cache_size=0``: one query per batch of 1,000 records).
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import Any

import millstream as ms
from millstream._runtime._base import Runtime
from millstream._runtime._native import NativeJob
from millstream.testing import CollectSink, ManualClock

WM = ms.WatermarkStrategy.bounded(100, timestamp="ts")


def sides(n: int, keys: int, seed: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rnd = random.Random(seed)
    lefts = [{"id": i, "k": rnd.randrange(keys), "ts": i} for i in range(n)]
    rights = [{"rid": i, "rk": rnd.randrange(keys), "ts": i} for i in range(n)]
    return lefts, rights


def interval_flow(lefts: list[Any], rights: list[Any], sink: ms.connectors.Sink) -> ms.Flow:
    flow = ms.Flow("interval")
    a = flow.source(ms.connectors.memory.read(lefts, name="left"), watermark=WM)
    b = flow.source(ms.connectors.memory.read(rights, name="right"), watermark=WM)
    a.key_by("k").interval_join(b.key_by("rk"), lower=-50, upper=50,
                                combine=lambda x, y: (x["id"], y["rid"])).sink(sink)
    return flow


def table_flow(events: list[Any], versions: list[Any], sink: ms.connectors.Sink) -> ms.Flow:
    flow = ms.Flow("table")
    a = flow.source(ms.connectors.memory.read(events, name="events"), watermark=WM)
    b = flow.source(ms.connectors.memory.read(versions, name="versions"), watermark=WM)
    a.key_by("k").join_table(b.key_by("rk"), combine=lambda e, v: (e["id"], v["rid"])).sink(sink)
    return flow


def lookup_flow(events: list[Any], path: str, sink: ms.connectors.Sink, **kw: Any) -> ms.Flow:
    flow = ms.Flow("lookup")
    users = ms.connectors.sqlite.table(path, "users", key="id", columns=["name", "tier"])
    flow.source(ms.connectors.memory.read(events, name="events")).lookup(
        users, key="user", combine=lambda e, u: (e["id"], u["tier"]), **kw).sink(sink)
    return flow


def best(build: Callable[[], ms.Flow], mode: str, events: int, repeat: int) -> tuple[float, int]:
    rate, out = 0.0, 0
    for _ in range(repeat):
        flow = build()
        started = time.perf_counter()
        result = flow.run(mode=mode)
        elapsed = time.perf_counter() - started
        rate = max(rate, events / elapsed)
        out = result.records_written
    return rate, out


def interval_state(lefts: list[Any], rights: list[Any]) -> tuple[int, int, int]:
    """Peak records held by the interval join, the keys holding them, and their pickled bytes."""
    flow = interval_flow(lefts, rights, CollectSink())
    job = NativeJob(flow.plan(), Runtime(ManualClock()))
    job.open()
    op: Any = next(o for o in job.ops if o.node.kind == "join")
    peak, peak_bytes, held_keys = 0, 0, 1
    while job.step(2_048)[1]:
        size = op.state_size()
        if size > peak:
            peak = size
            peak_bytes = len(pickle.dumps(op.sides))
            held_keys = max(1, len(set(op.sides[0]) | set(op.sides[1])))
    job.close()
    return peak, held_keys, peak_bytes


def make_users(path: str, keys: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, tier TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?)",
                       [(i, f"user{i}", ("gold", "silver", "basic")[i % 3]) for i in range(keys)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="events per input")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--modes", default="native,microbatch")
    args = ap.parse_args()
    modes = args.modes.split(",")
    n, keys = args.n, args.keys
    lefts, rights = sides(n, keys)
    versions = [{"rid": i, "rk": i % keys, "ts": i * 10} for i in range(n // 10)]
    rnd = random.Random(2)
    zipf = [min(keys - 1, int(rnd.paretovariate(1.2)) - 1) for _ in range(n)]
    events = [{"id": i, "user": u, "ts": i} for i, u in enumerate(zipf)]
    uniform = [{"id": i, "user": rnd.randrange(keys), "ts": i} for i in range(n)]
    tmp = tempfile.mkdtemp(prefix="millstream-bench-")
    db = os.path.join(tmp, "users.db")
    make_users(db, keys)

    cases: list[tuple[str, Callable[[], ms.Flow], int]] = [
        ("interval join (+-50 ms)", lambda: interval_flow(lefts, rights, CollectSink()), 2 * n),
        ("table join", lambda: table_flow(lefts, versions, CollectSink()), n + len(versions)),
        ("lookup join, sqlite, zipf, cached", lambda: lookup_flow(events, db, CollectSink()), n),
        ("lookup join, sqlite, zipf, no cache", lambda: lookup_flow(events, db, CollectSink(), cache_size=0), n),
        ("lookup join, sqlite, uniform, cached", lambda: lookup_flow(uniform, db, CollectSink()), n),
        ("lookup join, sqlite, uniform, no cache",
         lambda: lookup_flow(uniform, db, CollectSink(), cache_size=0), n),
    ]
    print(f"joins benchmark: n={n:,} events per input, {keys:,} keys, best of {args.repeat}")
    print(f"{'case':40s}" + "".join(f"{m:>16s}" for m in modes) + "   output records")
    for label, build, count in cases:
        figures, out = [], 0
        for mode in modes:
            rate, out = best(build, mode, count, args.repeat)
            figures.append(rate)
        print(f"{label:40s}" + "".join(f"{r / 1e6:13.3f} M/s" for r in figures) + f"   {out:,}")
    peak, held, size = interval_state(lefts, rights)
    print(f"interval join state at its peak: {peak:,} records over {held:,} keys: {peak / held:.2f} records "
          f"and {size / held:,.0f} pickled bytes per key ({size / max(1, peak):,.0f} bytes per record)")


if __name__ == "__main__":
    main()
