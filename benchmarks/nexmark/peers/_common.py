"""What the three peer scripts share: the command line, the result line, peak RSS.

Standard library only (the peers run in their own venv, without millstream).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys

#: The Nexmark output columns of each query (docs/NEXMARK.md), in order.
COLUMNS = {
    "q0": ("auction", "bidder", "price", "dateTime", "extra"),
    "q1": ("auction", "bidder", "price", "dateTime", "extra"),
    "q2": ("auction", "price"),
    "q3": ("name", "city", "state", "id"),
    "q5": ("auction", "num", "window_start", "window_end"),
    "q7": ("auction", "price", "bidder", "dateTime", "extra", "window_end"),
    "q8": ("id", "name", "starttime"),
    "q11": ("bidder", "bid_count", "starttime", "endtime"),
}

WATERMARK_MS = 4_000  # the Flink DDL's bounded out-of-orderness
WINDOW_MS = 10_000  # q5, q7, q8 window size; q11 session gap
HOP_MS = 2_000  # q5 slide
AUCTION_SKIP = 123  # q2


def parse_args(peer: str, queries: tuple[str, ...]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"Nexmark queries on {peer}, over a JSON-lines events file")
    parser.add_argument("--query", required=True, choices=queries)
    parser.add_argument("--input", required=True, help="events as JSON lines (millstream's generator)")
    parser.add_argument("--out", required=True, help="output rows as JSON lines")
    return parser.parse_args()


def count_lines(path: str) -> int:
    """The number of events in the file (counted before the timed part)."""
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            n += chunk.count(b"\n")
    return n


def self_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def descendants_peak_rss_mb() -> float:
    """Peak RSS (VmHWM) of the live child processes (Spark's JVM), summed."""
    total = 0.0
    try:
        import psutil
    except ImportError:
        return 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            with open(f"/proc/{child.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def report(peer: str, query: str, events: int, seconds: float, rows_out: int, peak_rss_mb: float,
           **extra: object) -> None:
    print(json.dumps({"peer": peer, "query": query, "events": events, "seconds": round(seconds, 4),
                      "events_per_s": round(events / seconds, 1) if seconds > 0 else None,
                      "peak_rss_mb": round(peak_rss_mb, 1), "rows_out": rows_out, **extra}))
    sys.stdout.flush()


def pin_note() -> str:
    """The CPUs this process may run on (to record taskset pinning)."""
    try:
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return "?"
