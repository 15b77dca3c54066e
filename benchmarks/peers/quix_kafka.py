"""Quix Streams peer of ``benchmarks/connectors.py``: Nexmark q1 and a q5-like query, Kafka -> Kafka.

    /tmp/peers-quix/bin/python benchmarks/peers/quix_kafka.py --bootstrap 127.0.0.1:PORT \\
        --input IN --output OUT --query q1|q5 --guarantee at-least-once|exactly-once \\
        --events N --group G --state-dir DIR [--commit-interval 1.0]

Runs in its own venv (``pip install -r benchmarks/peers/requirements-quix.txt``: quixstreams
3.28.1). The input topic holds Nexmark events as JSON, keyed by the auction id for bids (the id
for persons and auctions), so Quix needs no repartition topic for its windows (which is generous
to Quix: millstream's ``key_by`` needs no broker round trip either way).

What it computes:

- **q1**: every bid with ``price * 0.908`` and the fields ``auction, bidder, price, dateTime,
  extra`` (the same rows as millstream's q1), to ``--output``.
- **q5**: Quix Streams has no join of a window's per-key counts with the window's maximum, so
  this is the **first half of q5 only**: the number of bids per auction in hopping windows of
  10 s every 2 s (event time from ``dateTime``, a 4 s grace period like Nexmark's watermark),
  emitted once per window when it closes (``.final(closing_strategy="partition")``: a window
  closes when the partition's event time passes its end + grace, as millstream's watermark
  does; with Quix's default ``"key"`` a window closes only when the same auction gets a later
  bid, and on Nexmark almost none ever does): rows ``auction, num, window_start, window_end``.
  It does not keep only each window's hottest auctions (millstream's q5 does: a second windowed
  aggregation and a window join on top of these counts). Its state lives in RocksDB with a
  changelog topic, as Quix Streams runs by default. Windows still open at the end of the input
  are not emitted (Quix has no end-of-input watermark).

Timing: from the first message processed to the return of ``app.run()`` after the last of
``--events`` input messages (the final commit included). The consumer-group join before the
first message (~3 s on tansu) is left out, which favours Quix. Prints one JSON line:
``{"seconds", "events", "rss_mb", "startup_s"}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--query", choices=("q1", "q5"), required=True)
    p.add_argument("--guarantee", choices=("at-least-once", "exactly-once"), required=True)
    p.add_argument("--events", type=int, required=True, help="input messages to process before stopping")
    p.add_argument("--group", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--commit-interval", type=float, default=1.0)
    a = p.parse_args(argv)

    from quixstreams import Application

    t_start = time.perf_counter()
    seen = 0
    first: list[float] = []
    apps: list[Any] = []

    def processed(topic: str, partition: int, offset: int) -> None:
        nonlocal seen
        if not first:
            first.append(time.perf_counter())
        seen += 1
        if seen >= a.events:
            apps[0].stop()

    app = Application(
        broker_address=a.bootstrap, consumer_group=a.group, auto_offset_reset="earliest",
        commit_interval=a.commit_interval, processing_guarantee=a.guarantee, state_dir=a.state_dir,
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        loglevel="WARNING", on_message_processed=processed,
    )
    apps.append(app)

    def ts(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
        return int(value["dateTime"])

    src = app.topic(a.input, key_deserializer="str", value_deserializer="json", timestamp_extractor=ts)
    out = app.topic(a.output, key_serializer="str", value_serializer="json")
    sdf = app.dataframe(src)
    sdf = sdf.filter(lambda v: v["type"] == "bid")
    if a.query == "q1":
        sdf = sdf.apply(lambda v: {"auction": v["auction"], "bidder": v["bidder"], "price": v["price"] * 0.908,
                                   "dateTime": v["dateTime"], "extra": v["extra"]})
    else:
        sdf = (sdf.hopping_window(duration_ms=10_000, step_ms=2_000, grace_ms=4_000).count()
               .final(closing_strategy="partition"))
        sdf = sdf.apply(lambda v, key, timestamp, headers: {"auction": int(key), "num": v["value"],
                                                            "window_start": v["start"], "window_end": v["end"]},
                        metadata=True)
    sdf.to_topic(out)
    app.run()
    t_end = time.perf_counter()
    if not first:
        print(json.dumps({"error": "no message processed"}))
        return 1
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/status") as f:  # VmHWM: ru_maxrss carries the forking parent's peak across exec
        rss_mb = next((int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:")), rss_mb)
    print(json.dumps({"seconds": t_end - first[0], "events": seen, "rss_mb": rss_mb,
                      "startup_s": first[0] - t_start}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
