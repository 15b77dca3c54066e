"""Social-network trending: hashtags counted in sliding windows, the top 3 per window.

    millstream run examples/trending.py

An hour of synthetic posts (deterministic), each with a few hashtags from a long tail; for
ten minutes in the middle, ``#millstream`` goes viral. Hashtags are counted in 10-minute
windows sliding every minute, and each window's 3 most frequent tags go to
``trending.jsonl`` (one row per window: ``window_start``, ``window_end``, ``top``).
"""

from __future__ import annotations

import random
import sys
from datetime import timedelta
from pathlib import Path

import millstream as ms
from millstream import col

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import out_dir

OUT = out_dir("trending")
T0 = 1_764_000_000_000
MINUTE = 60_000
TAGS = [f"#topic{i}" for i in range(40)]
VIRAL = ("#millstream", 25 * MINUTE, 35 * MINUTE)  # the tag, and when it is everywhere


def posts() -> list[dict[str, object]]:
    rnd = random.Random(7)
    out = []
    for i in range(12_000):
        t = i * 300  # one post every 0.3 s
        tags = [*rnd.sample(TAGS[:8], 1), rnd.choice(TAGS)]
        if VIRAL[1] <= t < VIRAL[2] and rnd.random() < 0.8:
            tags.append(VIRAL[0])
        out.append({"user": f"u{rnd.randrange(500)}", "tags": " ".join(tags), "ts": T0 + t})
    return out


flow = ms.Flow("trending")
(flow.source(ms.connectors.memory.read(posts(), name="posts"),
             watermark=ms.WatermarkStrategy.bounded(timedelta(seconds=10), timestamp="ts"))
     .flat_map(lambda post: [{"tag": tag, "ts": post["ts"]} for tag in str(post["tags"]).split()], name="hashtags")
     .window(ms.windows.sliding(timedelta(minutes=10), every=timedelta(minutes=1)), name="per-window")
     .aggregate(top=ms.agg.most_frequent("tag", 3), posts=ms.agg.count())
     .select("window_start", "window_end", "posts", top=col("top"))
     .sink(ms.connectors.files.write(OUT / "trending.jsonl")))
