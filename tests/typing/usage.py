"""Type-checked (not run) usage of the public API: mypy must accept it in strict mode."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import millstream as ms


def build() -> ms.Flow:
    flow = ms.Flow("typed")
    src: ms.Stream = flow.source(
        ms.connectors.memory.read([{"k": "a", "ts": 1, "v": 2}]),
        watermark=ms.WatermarkStrategy.bounded(timedelta(seconds=1), timestamp="ts"),
    )
    keyed: ms.KeyedStream = src.key_by("k")
    windowed: ms.WindowResult = keyed.window(ms.windows.sliding(10_000, every=5_000)).aggregate(
        n=ms.agg.count(), total=ms.agg.sum("v")
    )
    late: ms.Stream = windowed.late()
    late.sink(ms.connectors.memory.write())

    def fn(ctx: ms.Context, event: dict[str, Any]) -> None:
        seen = ctx.state["seen"]
        seen.update(seen.value() + 1)
        ctx.timers.register_event_time(ctx.watermark + 1)
        ctx.emit(event)

    keyed.process(fn, state={"seen": ms.state.value(default=0)}).sink(ms.testing.CollectSink())
    windowed.sink(ms.testing.CollectSink())
    return flow


def with_expressions() -> ms.Flow:
    flow = ms.Flow("typed-expressions")
    src = flow.source(
        ms.connectors.memory.read([{"card": "a", "ts": 1, "amount": 2.0}]),
        watermark=ms.WatermarkStrategy.bounded(0, timestamp=ms.col("ts")),
    )
    eur: ms.Expr = (ms.col("amount") * 0.908).round(2)
    size: ms.Expr = ms.when(eur > 500).then("big").when(eur.is_null()).then(None).otherwise("small")
    rows = (src.with_columns(eur=eur, card=ms.col("card").str.lower())
            .filter((ms.col("eur") > 1) & ~ms.col("card").is_in(["x"]))
            .select("card", size.alias("size"), hour=ms.col("ts").dt.hour()))
    rows.map(ms.col("card") + ms.lit("!")).sink(ms.testing.CollectSink())
    rows.key_by(ms.col("card")).window(ms.windows.tumbling(10)).aggregate(n=ms.agg.count()).sink(
        ms.testing.CollectSink())
    return flow


def run() -> int:
    result: ms.RunResult = build().run(config=ms.RunConfig(max_chunk=100))
    return result.records_read
