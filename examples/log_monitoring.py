"""Log monitoring at at-most-once: error bursts per service, alerting fast and never twice.

    millstream run examples/log_monitoring.py

Reads a JSON-lines log the example writes (a few services over 10 minutes, with a burst of
errors from ``payments`` and a smaller one from ``search``), counts ERROR lines per service
in 30-second windows and writes an alert for every window with 5 or more. Monitoring
prefers speed to completeness, so the job runs **at-most-once** (the example's ``RUN``):
read positions are recorded before records are processed, so after a crash nothing is
alerted twice, and what was lost is counted. Alerts go to ``alerts.jsonl``.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import timedelta
from pathlib import Path

import millstream as ms
from millstream import col

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import out_dir

OUT = out_dir("log_monitoring")
T0 = 1_764_000_000_000
SERVICES = ["payments", "search", "auth", "catalog"]
#: (service, start ms, end ms, errors per second) of the planted bursts
BURSTS = [("payments", 120_000, 180_000, 2.0), ("search", 400_000, 430_000, 0.5)]


def write_log() -> Path:
    rnd = random.Random(3)
    path = OUT / "app.log.jsonl"
    lines = []
    for i in range(12_000):
        t = i * 50
        service = SERVICES[i % len(SERVICES)]
        level = "ERROR" if rnd.random() < 0.002 else ("WARN" if rnd.random() < 0.05 else "INFO")
        for name, start, end, rate in BURSTS:
            if name == service and start <= t < end and rnd.random() < rate * 0.05 * len(SERVICES):
                level = "ERROR"
        lines.append(json.dumps({"ts": T0 + t, "service": service, "level": level, "msg": f"request {i}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


RUN = ms.RunConfig(guarantee="at-most-once", checkpoint_dir=str(OUT / "checkpoints"), checkpoint_interval=500)

flow = ms.Flow("log-monitoring")
(flow.source(ms.connectors.files.read(write_log()),
             watermark=ms.WatermarkStrategy.bounded(timedelta(seconds=2), timestamp="ts"))
     .filter(col("level") == "ERROR", name="errors")
     .key_by("service")
     .window(ms.windows.tumbling(timedelta(seconds=30)), name="per-30s")
     .aggregate(errors=ms.agg.count())
     .filter(col("errors") >= 5, name="bursts")
     .sink(ms.connectors.files.write(OUT / "alerts.jsonl")))
