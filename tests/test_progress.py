"""Live progress: the callback sees growing figures while a job runs, and the table shows them."""

from __future__ import annotations

import io

from rich.console import Console

import millstream as ms
from millstream._progress import LiveProgress, status_table
from millstream._time import MIN_WATERMARK
from millstream.testing import ManualClock


def test_progress_callback_sees_the_job_advance_and_the_table_renders() -> None:
    seen: list[ms.JobStatus] = []
    flow = ms.Flow("progress")
    src = ms.connectors.generator.read(lambda i: {"i": i, "ts": i * 10}, count=5_000, rate=1_000)
    (flow.source(src, watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
         .key_by(lambda r: r["i"] % 3).window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count())
         .sink(ms.testing.CollectSink()))
    result = flow.run(clock=ManualClock(), on_progress=seen.append, progress_interval_s=0.001)
    assert result.records_read == 5_000
    assert len(seen) >= 2
    reads = [s.records_read for s in seen]
    assert reads == sorted(reads) and reads[0] < 5_000
    marks = [s.watermark for s in seen]
    assert marks == sorted(marks) and marks[-1] > MIN_WATERMARK  # the watermark advances while it runs

    buf = io.StringIO()
    console = Console(file=buf, width=140, force_terminal=False)
    console.print(status_table(result))
    text = buf.getvalue()
    assert "progress" in text and "window" in text and "5,000" in text and "watermark" in text

    live = LiveProgress(Console(file=io.StringIO(), force_terminal=True, width=120))
    live(seen[0])
    live(seen[-1])
    live.stop()
