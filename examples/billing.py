"""Billing as a batch job: the same flow code over a bounded file of usage records.

    millstream run examples/billing.py

A month of metered usage (deterministic) is written to ``usage.jsonl``; the flow prices
each record by its plan, sums the cost per customer and calendar day (a tumbling window of
one day; prices and sums in integer tenths of a cent, so that the lines are exact) and
writes one invoice line per customer-day to ``invoice_lines.jsonl``. The
example's ``RUN`` picks batch mode (one pass, the largest batches); the very same flow runs
as a stream with ``--mode native`` or ``--mode microbatch`` and gives the same lines (the
tests check that).
"""

from __future__ import annotations

import json
import random
import sys
from datetime import timedelta
from pathlib import Path

import millstream as ms
from millstream import col, when

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import out_dir

OUT = out_dir("billing")
DAY = 86_400_000
T0 = 1_761_955_200_000  # 2025-11-01T00:00:00Z
#: per unit, in tenths of a cent: money is summed in integers, so every mode and order gives the same cents
PRICES = {"basic": 20, "pro": 15, "enterprise": 10}


def write_usage() -> Path:
    rnd = random.Random(11)
    path = OUT / "usage.jsonl"
    with path.open("w") as f:
        for _i in range(30_000):
            customer = f"cust-{rnd.randrange(40):03d}"
            plan = list(PRICES)[int(customer[-3:]) % 3]
            f.write(json.dumps({"customer": customer, "plan": plan, "units": rnd.randrange(1, 500),
                                "ts": T0 + rnd.randrange(30 * DAY)}) + "\n")
    return path


RUN = ms.RunConfig(mode="batch")

flow = ms.Flow("billing")
(flow.source(ms.connectors.files.read(write_usage()),
             watermark=ms.WatermarkStrategy.bounded(timedelta(days=31), timestamp="ts"))
     .with_columns(price=when(col("plan") == "basic").then(PRICES["basic"])
                   .when(col("plan") == "pro").then(PRICES["pro"]).otherwise(PRICES["enterprise"]))
     .with_columns(cost=col("units") * col("price"))
     .key_by("customer")
     .window(ms.windows.tumbling(timedelta(days=1)), name="per-day")
     .aggregate(units=ms.agg.sum("units"), cost=ms.agg.sum("cost"), records=ms.agg.count())
     .select("customer", day=col("window_start"), units=col("units"), cost=col("cost") / 1000,
             records=col("records"))
     .sink(ms.connectors.files.write(OUT / "invoice_lines.jsonl")))
