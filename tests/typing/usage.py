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


def run() -> int:
    result: ms.RunResult = build().run(config=ms.RunConfig(max_chunk=100))
    return result.records_read
