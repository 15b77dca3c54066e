"""Native-mode micro-benchmarks: events/s and peak memory, with a bare-Python baseline.

    python benchmarks/native.py [--events 2000000] [--repeat 3] [--only NAME] [--bytewax-python PY]

Each workload runs in a fresh subprocess (so peak RSS is its own), pinned to
one core when the OS allows. The same workload written as a plain Python loop
over the same records runs alongside, and the table shows the ratio. With
``--bytewax-python`` (a Python of a separate venv with bytewax installed), the
bytewax version of each workload it has runs in the same session
(``benchmarks/peers/bytewax_native.py``).
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

BYTEWAX_WORKLOADS = {"map_filter", "tumbling_count_1k_keys", "tumbling_count_1_key"}
WORKLOADS = ["map_filter", "tumbling_count_1k_keys", "tumbling_count_1_key", "sliding_sum_1k_keys",
             "session_count_1k_keys", "process_state_1k_keys"]


def make_records(n: int, keys: int) -> list[dict[str, Any]]:
    # bids-like records: 1 event per ms of event time, keys spread by a multiplicative hash
    return [{"auction": (i * 7919) % keys, "price": (i * 31) % 1000, "ts": i, "bidder": i % 9973} for i in range(n)]



def _count_sink() -> Any:
    import millstream as ms

    class Sink(ms.connectors.Sink):
        n = 0

        def open(self, step: str) -> ms.connectors.SinkWriter:
            sink = self

            class W(ms.connectors.SinkWriter):
                def write(self, records: list[Any], times: list[int] | None) -> None:
                    sink.n += len(records)

            return W()

        def describe(self) -> str:
            return "count"

    return Sink()


def millstream_flow(name: str, recs: list[dict[str, Any]]) -> tuple[Any, Any]:
    import millstream as ms

    flow = ms.Flow(name)
    sink = _count_sink()
    wm = ms.WatermarkStrategy.bounded(1_000, timestamp="ts")
    src = ms.connectors.memory.read(recs)
    if name == "map_filter":
        flow.source(src).map(lambda r: r["price"] * 0.908).filter(lambda p: p > 500).sink(sink)
    elif name.startswith("tumbling_count"):
        (flow.source(src, watermark=wm).key_by("auction").window(ms.windows.tumbling(10_000))
         .aggregate(n=ms.agg.count()).sink(sink))
    elif name == "sliding_sum_1k_keys":
        (flow.source(src, watermark=wm).key_by("auction").window(ms.windows.sliding(10_000, every=2_000))
         .aggregate(total=ms.agg.sum("price")).sink(sink))
    elif name == "session_count_1k_keys":
        (flow.source(src, watermark=wm).key_by("auction").window(ms.windows.session(5_000))
         .aggregate(n=ms.agg.count()).sink(sink))
    elif name == "process_state_1k_keys":
        def fn(ctx: Any, r: Any) -> None:
            st = ctx.state["n"]
            n = st.value() + 1
            st.update(n)
            if n % 100 == 0:
                ctx.emit(n)

        flow.source(src, watermark=wm).key_by("auction").process(fn, state={"n": ms.state.value(default=0)}).sink(sink)
    return flow, sink


def bare_loop(name: str, recs: list[dict[str, Any]]) -> int:
    """The same computation as a plain Python loop (no engine): the ceiling for per-record Python."""
    out = 0
    if name == "map_filter":
        for r in recs:
            p = r["price"] * 0.908
            if p > 500:
                out += 1
        return out
    if name.startswith("tumbling_count"):
        windows: dict[int, dict[Any, int]] = {}
        for r in recs:
            w = r["ts"] - r["ts"] % 10_000
            d = windows.get(w)
            if d is None:
                d = windows[w] = {}
            k = r["auction"]
            d[k] = d.get(k, 0) + 1
        return sum(len(d) for d in windows.values())
    if name == "sliding_sum_1k_keys":
        sl: dict[int, dict[Any, int]] = {}
        for r in recs:
            s = r["ts"] - r["ts"] % 2_000
            d = sl.get(s)
            if d is None:
                d = sl[s] = {}
            k = r["auction"]
            d[k] = d.get(k, 0) + r["price"]
        return len(sl)
    if name == "session_count_1k_keys":
        last: dict[Any, list[int]] = {}
        n = 0
        for r in recs:
            k = r["auction"]
            s = last.get(k)
            if s is None or r["ts"] >= s[1]:
                n += s is not None
                last[k] = [r["ts"], r["ts"] + 5_000, 1]
            else:
                s[1] = r["ts"] + 5_000
                s[2] += 1
        return n
    if name == "process_state_1k_keys":
        st: dict[Any, int] = {}
        for r in recs:
            k = r["auction"]
            st[k] = st.get(k, 0) + 1
            if st[k] % 100 == 0:
                out += 1
        return out
    raise ValueError(name)


def child(name: str, n: int, repeat: int, engine: str) -> dict[str, Any]:
    keys = 1 if name.endswith("_1_key") else 1_000
    recs = make_records(n, keys)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = float("inf")
    out = 0
    for _ in range(repeat):
        if engine == "millstream":
            flow, sink = millstream_flow(name, recs)
            t = time.perf_counter()
            flow.run(max_chunk=4096)
            dt = time.perf_counter() - t
            out = sink.n
        else:
            t = time.perf_counter()
            out = bare_loop(name, recs)
            dt = time.perf_counter() - t
        best = min(best, dt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"name": name, "engine": engine, "events": n, "seconds": best, "eps": n / best, "out": out,
            "peak_rss_mb": peak / 1024, "input_rss_mb": base_rss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", action="append")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--bytewax-python", help="python of a venv with bytewax, to run the peer in the same session")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.events, args.repeat, args.child[1])))
        return
    rows = []
    pin = ["taskset", "-c", "0"] if sys.platform.startswith("linux") and os.path.exists("/usr/bin/taskset") else []
    for name in args.only or WORKLOADS:
        res = {}
        for engine in ("millstream", "bare-python"):
            cmd = [*pin, sys.executable, __file__, "--child", name, engine, "--events", str(args.events),
                   "--repeat", str(args.repeat)]
            res[engine] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        m, b = res["millstream"], res["bare-python"]
        row = {"workload": name, "millstream_eps": round(m["eps"]), "bare_eps": round(b["eps"]),
               "ratio": m["eps"] / b["eps"], "peak_rss_mb": round(m["peak_rss_mb"]),
               "input_rss_mb": round(m["input_rss_mb"]), "outputs": m["out"]}
        peer = ""
        if args.bytewax_python and name in BYTEWAX_WORKLOADS:
            cmd = [*pin, args.bytewax_python, os.path.join(os.path.dirname(__file__), "peers", "bytewax_native.py"),
                   name, str(args.events)]
            bw = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            assert bw["out"] == m["out"], f"bytewax and millstream disagree on {name}: {bw['out']} vs {m['out']}"
            row["bytewax_eps"] = round(bw["eps"])
            peer = f"   bytewax {bw['eps']/1e6:5.2f} M ev/s (millstream {m['eps']/bw['eps']:.1f}x)"
        rows.append(row)
        print(f"{name:26s} {m['eps']/1e6:6.2f} M ev/s   bare loop {b['eps']/1e6:5.2f} M ev/s   "
              f"ratio {row['ratio']:4.2f}   peak RSS {row['peak_rss_mb']} MB (input alone {row['input_rss_mb']} MB)"
              f"   outputs {m['out']:,}{peer}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"events": args.events, "python": sys.version.split()[0], "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
