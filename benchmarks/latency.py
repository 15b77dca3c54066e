"""Latency from event creation to sink at a steady input rate, native and micro-batch.

    python benchmarks/latency.py [--rate 50000] [--seconds 10] [--warmup 1] [--trigger 100]
                                 [--runs native,microbatch,native-generator] [--one-core] [--json PATH]

The flow is source -> map -> sink. The map is ``with_columns(euro=col("price") * 0.908)``
(an expression, so that both executors compile it: inlined in native, a polars
expression in micro-batch). The sink records, per record, ``now - created`` with
``time.perf_counter_ns()`` (one clock, one process).

Two sources:

- ``paced`` (the default): a small source written with the public connector API.
  Record ``i`` is *due* at ``t0 + i / rate``; a poll returns every record that is
  due and ``wait_hint`` is the time to the next one (sub-millisecond), so the
  records come at a steady rate. Its creation time is its due time: the latency
  includes the wait until the engine polls the source (in micro-batch mode, until
  the next trigger). It also makes columnar batches (``poll_frame``), as the
  Nexmark generator does, so micro-batch runs columnar.
- ``generator`` (the ``native-generator`` run): ``ms.connectors.generator.read(fn,
  rate=...)``, the built-in paced source. Its token bucket counts in whole
  milliseconds of the run's clock (the system clock), so records are released a
  millisecond's worth at a time; creation time is again the due time, ``i / rate``
  after the millisecond the bucket started in (stamped with ``time.time_ns()``).

Each record also carries the moment the source made it (``made``), so the table
shows the time spent inside the engine (made -> sink) next to the end-to-end figure
(due -> sink). The first ``--warmup`` seconds are left out (imports, code generation).
The share of records seen at the sink before their due time is reported too: it
must be 0, or the due times are wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import millstream as ms
from millstream.connectors import Sink, SinkWriter, Source, SourceContext, SourceReader

RUNS = {
    "native": ("native", "paced"),
    "microbatch": ("microbatch", "paced"),
    "native-generator": ("native", "generator"),
}


# -- the paced source -------------------------------------------------------------------------------


class PacedSource(Source):
    """``count`` records at ``rate`` per second; record ``i`` is due ``i / rate`` s after the first poll."""

    bounded = True

    def __init__(self, rate: float, count: int) -> None:
        self.rate = rate
        self.count = count
        self.period_ns = 1e9 / rate

    def open(self, ctx: SourceContext) -> SourceReader:
        return PacedReader(self)

    def describe(self) -> str:
        return f"paced ({self.count:,} records at {self.rate:,g}/s)"

    def default_name(self) -> str:
        return "paced"


class PacedReader(SourceReader):
    def __init__(self, src: PacedSource) -> None:
        self.src = src
        self.i = 0
        self.t0: int | None = None

    def _due(self, max_records: int) -> tuple[int, int, int] | None:
        """(first, stop, now): the records due now, at most ``max_records``; None at the end."""
        src = self.src
        if self.i >= src.count:
            return None
        now = time.perf_counter_ns()
        if self.t0 is None:
            self.t0 = now
        due = int((now - self.t0) / src.period_ns) + 1
        first = self.i
        stop = min(src.count, due, first + max_records)
        self.i = max(first, stop)
        return first, self.i, now

    def poll(self, max_records: int) -> list[Any] | None:
        got = self._due(max_records)
        if got is None:
            return None
        first, stop, now = got
        assert self.t0 is not None
        t0, period = self.t0, self.src.period_ns
        return [{"i": i, "price": i % 1000, "due": t0 + int(i * period), "made": now} for i in range(first, stop)]

    @property
    def columnar(self) -> bool:
        return True

    def poll_frame(self, max_records: int) -> Any:
        import polars as pl

        got = self._due(max_records)
        if got is None:
            return None
        first, stop, now = got
        assert self.t0 is not None
        i = np.arange(first, stop, dtype=np.int64)
        return pl.DataFrame({"i": i, "price": i % 1000,
                             "due": self.t0 + (i * self.src.period_ns).astype(np.int64),
                             "made": np.full(len(i), now, dtype=np.int64)})

    def wait_hint(self) -> float | None:
        if self.i >= self.src.count or self.t0 is None:
            return None
        return max(0.0, (self.t0 + self.i * self.src.period_ns - time.perf_counter_ns()) / 1e9)

    def position_of(self, index: int) -> str | None:
        return None

    def snapshot(self) -> Any:
        return self.i

    def restore(self, position: Any) -> None:
        self.i = position


class _Stamped:
    """The record function of the generator connector, stamping times with ``time.time_ns()``.

    The connector's token bucket starts at the run clock's whole millisecond when the
    reader opens (``clock.now_ms()``, the system clock) and releases record ``i`` once
    ``i / rate`` seconds have passed since then, a millisecond's worth at a time. So
    record ``i`` is due at ``floor_ms(first call) + i / rate`` (the first poll comes
    right after the open; were they a millisecond apart, the figures would be up to
    that much too low).
    """

    def __init__(self, rate: float) -> None:
        self.period_ns = 1e9 / rate
        self.t0: int | None = None

    def __call__(self, i: int) -> dict[str, int]:
        now = time.time_ns()
        if self.t0 is None:
            self.t0 = now - now % 1_000_000
        return {"i": i, "price": i % 1000, "due": self.t0 + int(i * self.period_ns), "made": now}


# -- the sink ---------------------------------------------------------------------------------------


class LatencySink(Sink):
    """Keeps, per record, now - due and now - made (ns), and its index."""

    def __init__(self, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        #: the clock the records' times come from
        self.clock = clock
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def open(self, step: str) -> SinkWriter:
        return _LatencyWriter(self)

    def describe(self) -> str:
        return "latency recorder"

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        return tuple(np.concatenate([p[k] for p in self.parts]) for k in range(3))  # type: ignore[return-value]


class _LatencyWriter(SinkWriter):
    def __init__(self, sink: LatencySink) -> None:
        self.sink = sink

    def write(self, records: list[Any], times: list[int] | None) -> None:
        now = self.sink.clock()
        idx = np.fromiter((r["i"] for r in records), dtype=np.int64, count=len(records))
        due = np.fromiter((r["due"] for r in records), dtype=np.int64, count=len(records))
        made = np.fromiter((r["made"] for r in records), dtype=np.int64, count=len(records))
        self.sink.parts.append((idx, now - due, now - made))

    def write_frame(self, frame: Any, times: Any) -> None:
        now = self.sink.clock()
        self.sink.parts.append((frame["i"].to_numpy(), now - frame["due"].to_numpy(),
                                now - frame["made"].to_numpy()))


# -- running ----------------------------------------------------------------------------------------


def run_one(name: str, *, rate: float, seconds: float, warmup: float, trigger_ms: int) -> dict[str, Any]:
    mode, kind = RUNS[name]
    count = int(rate * (seconds + warmup))
    source: Source = (PacedSource(rate, count) if kind == "paced"
                      else ms.connectors.generator.read(_Stamped(rate), count=count, rate=rate))
    sink = LatencySink(time.perf_counter_ns if kind == "paced" else time.time_ns)
    flow = ms.Flow(f"latency-{name}")
    flow.source(source, name="events").with_columns(euro=ms.col("price") * 0.908, name="map").sink(sink, name="out")
    config = ms.RunConfig(mode=mode, trigger_interval=trigger_ms if mode == "microbatch" else 0)
    started = time.perf_counter()
    result = flow.run(config=config)
    wall = time.perf_counter() - started
    idx, e2e, engine = sink.arrays()
    keep = idx >= int(rate * warmup)
    e2e, engine = e2e[keep] / 1000, engine[keep] / 1000  # µs
    early = float((e2e < 0).mean()) if len(e2e) else 0.0
    assert result.records_written == count == len(idx), (result.records_written, count, len(idx))

    def pct(a: np.ndarray) -> dict[str, float]:
        if not len(a):
            return {}
        p50, p95, p99 = np.percentile(a, [50, 95, 99])
        return {"p50_us": round(float(p50), 1), "p95_us": round(float(p95), 1), "p99_us": round(float(p99), 1),
                "max_us": round(float(a.max()), 1)}

    return {"run": name, "mode": mode, "source": kind, "trigger_interval_ms": trigger_ms if mode == "microbatch"
            else None, "rate": rate, "achieved_rate": round(count / wall), "records_measured": int(keep.sum()),
            "writes": len(sink.parts), "early_share": early, "due_to_sink": pct(e2e), "made_to_sink": pct(engine)}


def _fmt(us: float) -> str:
    return f"{us / 1000:,.2f} ms" if us >= 1000 else f"{us:,.0f} µs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=50_000, help="records per second (default 50,000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (default 10)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds left out at the start (default 1)")
    ap.add_argument("--trigger", type=int, default=100, help="micro-batch trigger interval, ms (default 100)")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated among {', '.join(RUNS)}")
    ap.add_argument("--one-core", action="store_true", help="pin to one CPU (the last allowed), POLARS_MAX_THREADS=1")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON here")
    args = ap.parse_args()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for r in runs:
        if r not in RUNS:
            ap.error(f"unknown run {r!r}; choose among {', '.join(RUNS)}")
    cpu = None
    if args.one_core:
        if "polars" in sys.modules:
            print("note: polars was imported before pinning; its thread pool may be larger than one", file=sys.stderr)
        os.environ["POLARS_MAX_THREADS"] = "1"
        cpu = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {cpu})
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = []
    for name in runs:
        res = run_one(name, rate=args.rate, seconds=args.seconds, warmup=args.warmup, trigger_ms=args.trigger)
        results.append(res)
        d, m = res["due_to_sink"], res["made_to_sink"]
        print(f"{name:17s} {res['achieved_rate']:>8,}/s  due->sink p50 {_fmt(d['p50_us'])}  p95 {_fmt(d['p95_us'])}  "
              f"p99 {_fmt(d['p99_us'])}  max {_fmt(d['max_us'])}   made->sink p50 {_fmt(m['p50_us'])}  "
              f"p99 {_fmt(m['p99_us'])}  ({res['writes']:,} sink writes, {res['early_share']:.1%} early)", flush=True)
    load_after = [round(x, 2) for x in os.getloadavg()]
    print()
    print("| run | mode | source | rate (achieved) | p50 | p95 | p99 | max | made->sink p50 / p99 |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        d, m = r["due_to_sink"], r["made_to_sink"]
        mode = r["mode"] + (f", trigger {r['trigger_interval_ms']} ms" if r["trigger_interval_ms"] else "")
        print(f"| {r['run']} | {mode} | {r['source']} | {r['achieved_rate']:,}/s | {_fmt(d['p50_us'])} | "
              f"{_fmt(d['p95_us'])} | {_fmt(d['p99_us'])} | {_fmt(d['max_us'])} | "
              f"{_fmt(m['p50_us'])} / {_fmt(m['p99_us'])} |")
    print(f"\nload average (1, 5, 15 min): before {load_before}, after {load_after}")
    if args.json:
        doc = {"benchmark": "latency", "command": " ".join(["python", "benchmarks/latency.py", *sys.argv[1:]]),
               "rate": args.rate, "seconds": args.seconds, "warmup": args.warmup, "one_core_cpu": cpu,
               "python": platform.python_version(), "load_before": load_before, "load_after": load_after,
               "results": results}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
