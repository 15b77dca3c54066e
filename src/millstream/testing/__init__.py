"""A test kit for millstream users: scripted sources, collecting sinks, a manual clock.

>>> import millstream as ms
>>> from millstream.testing import TestSource, CollectSink, watermark
>>> flow = ms.Flow("t")
>>> src = TestSource([{"k": "a", "ts": 1}, {"k": "a", "ts": 5}, watermark(20), {"k": "a", "ts": 3}])
>>> out = CollectSink()
>>> w = (flow.source(src, watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
...        .key_by("k").window(ms.windows.tumbling(10)).aggregate(n=ms.agg.count()))
>>> w.sink(out)
>>> late = CollectSink()
>>> w.late().sink(late)
>>> _ = flow.run()
>>> out.values
[{'k': 'a', 'window_start': 0, 'window_end': 10, 'n': 2}]
>>> late.values
[{'k': 'a', 'ts': 3}]
"""

from __future__ import annotations

from millstream.testing._conformance import ConformanceError, SinkReport, SourceReport, check_sink, check_source
from millstream.testing._kit import (
    CollectSink,
    ManualClock,
    PartitionedTestSource,
    ProcessingTime,
    TestSource,
    TransactionalCollectSink,
    Watermark,
    advance_processing_time,
    run_collect,
    watermark,
)

__all__ = [
    "CollectSink",
    "ConformanceError",
    "ManualClock",
    "PartitionedTestSource",
    "ProcessingTime",
    "SinkReport",
    "SourceReport",
    "TestSource",
    "TransactionalCollectSink",
    "Watermark",
    "advance_processing_time",
    "check_sink",
    "check_source",
    "run_collect",
    "watermark",
]
