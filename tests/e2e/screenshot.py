"""The screenshot in docs/operations.md: the dashboard of a real running job, taken in headless Chromium.

    python -m tests.e2e.screenshot docs/img/dashboard.png

The job is Nexmark q5 (hot items) over the generator, with a deliberately slow map in front of it so that it
runs about 20 seconds and the graph shows a bottleneck; checkpoints every second fill the checkpoint history.
Not a test: the browser tests write their screenshots to a temporary directory.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

import millstream as ms
from millstream import nexmark
from millstream._dashboard import serve_dashboard
from millstream.metrics import MetricsRegistry

EVENTS = 50_000
RATE = 2_500  # events per second, of event time and of wall-clock time: the input is live
SHOT_AFTER_S = 12.0


def slow_enrich(event: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.0004)  # a costly lookup per event: the bottleneck the graph should show
    return event


def main(out: str) -> None:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="millstream-shot-"))
    flow = ms.Flow("nexmark-q5-hot-items")
    config = nexmark.NexmarkConfig(events=EVENTS, rate=RATE, base_time=int(time.time() * 1000))
    events = flow.source(nexmark.read(config, rate=RATE), watermark=nexmark.WATERMARK, name="events")
    enriched = events.map(slow_enrich, name="enrich")
    nexmark.query("q5", enriched).sink(ms.connectors.files.write(work / "q5", transactional=True), name="hot-items")
    reg = MetricsRegistry()
    options: dict[str, Any] = {"mode": "native", "guarantee": "exactly-once", "checkpoint_dir": str(work / "ck"),
                               "checkpoint_interval": 1_000}
    box: dict[str, Any] = {}
    th = threading.Thread(target=lambda: box.setdefault("result", flow.run(metrics_registry=reg, **options)))
    th.start()
    with serve_dashboard("0", registry=reg, plan=flow.plan(), config={**options, "restarts": 0}) as d, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1200})
        page.goto(d.url)
        page.wait_for_function("() => Number(document.body.dataset.updates || 0) >= 3", timeout=30_000)
        time.sleep(max(0.0, SHOT_AFTER_S - reg.snapshot().uptime_s))  # a few checkpoints and a chart with history
        page.screenshot(path=out, full_page=True)
        browser.close()
        print(f"wrote {out} ({Path(out).stat().st_size:,} bytes) of {d.url}")
    th.join()
    print(f"the job read {box['result'].records_read:,} events in {reg.snapshot().uptime_s:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/img/dashboard.png")
