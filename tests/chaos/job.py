"""The job the chaos harness kills: a deterministic, replayable input through a keyed pipeline.

Parameters (``--set``): ``events`` (count), ``rate`` (events/s, so kills land mid-run),
``pipeline`` (``window`` | ``sliding`` | ``vwindow`` | ``vsliding`` | ``running`` | ``map``; the ``v`` ones
use built-in aggregations only, which the micro-batch executor vectorises), ``out`` (output path), ``transactional``.
Each result row carries checked aggregates (count, sum of ids, xor of id hashes) so that
loss or duplication inside an aggregate shows in the output.
"""

from __future__ import annotations

from typing import Any

import millstream as ms

KEYS = 17


def event(i: int) -> dict[str, Any]:
    # event time mostly increasing, up to 40 ms out of order; a pure function of i
    return {"id": i, "key": (i * 7919) % KEYS, "ts": i * 10 + (i * 2654435761) % 41}


def checked(name: str) -> ms.agg.Aggregation:
    """xor of a hash of each id: a duplicate or a loss changes it."""
    return ms.agg.custom(lambda: 0, lambda acc, i: acc ^ ((i * 0x9E3779B1) & 0xFFFFFFFF), merge=lambda a, b: a ^ b,
                         field="id", name=name)


def build(params: dict[str, Any]) -> ms.Flow:
    n = int(params.get("events", 20_000))
    rate = params.get("rate")
    flow = ms.Flow(f"chaos-{params.get('pipeline', 'window')}")
    src = flow.source(ms.connectors.generator.read(event, count=n, rate=rate, name="events"),
                      watermark=ms.WatermarkStrategy.bounded(50, timestamp="ts"))
    pipeline = params.get("pipeline", "window")
    if pipeline == "window":
        out = (src.key_by("key").window(ms.windows.tumbling(1_000))
               .aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"), x=checked("xor")))
    elif pipeline == "sliding":
        out = (src.key_by("key").window(ms.windows.sliding(1_000, every=250))
               .aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"), x=checked("xor")))
    elif pipeline in ("vwindow", "vsliding"):  # built-in aggregations only: vectorised in micro-batch mode
        assigner = ms.windows.tumbling(1_000) if pipeline == "vwindow" else ms.windows.sliding(1_000, every=250)
        out = (src.with_columns(key=ms.col("key"), id=ms.col("id")).key_by("key").window(assigner)
               .aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"), lo=ms.agg.min("id"), hi=ms.agg.max("id")))
    elif pipeline == "running":
        out = src.key_by("key").aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"))
    else:
        out = src.map(lambda e: {"id": e["id"], "key": e["key"], "double": 2 * e["id"]})
    path = str(params["out"])
    out.sink(ms.connectors.files.write(path, transactional=bool(params.get("transactional", False))))
    return flow
