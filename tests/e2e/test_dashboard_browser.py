"""The dashboard in headless Chromium: the page of a running job draws its graph (one node per step) and
updates as the job moves, without a single content-security-policy complaint; the token is refused and
accepted the way a browser gives it; the stop buttons; and, with the run's job control, stop with a
savepoint from the page, resume, and get the same output as an uninterrupted run."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.jobs import FakeControl, running_job
from tests.integration.services import need_module

import millstream as ms

need_module("starlette", "dashboard")
need_module("uvicorn", "dashboard")

from millstream._dashboard import serve_dashboard  # noqa: E402


def updates_at_least(page: Any, n: int) -> None:
    # a function, not an expression: the page's content security policy forbids eval
    page.wait_for_function(f"() => Number(document.body.dataset.updates || 0) >= {n}")


def cell(page: Any, step: str, cls: str) -> str:
    return str(page.locator(f'#steps tbody tr[data-step="{step}"] td.{cls}').inner_text())


def test_the_page_of_a_running_job(page: Any, tmp_path: Path) -> None:
    with running_job() as job, serve_dashboard("0", registry=job.registry, plan=job.plan,
                                               config={"mode": "native", "max_chunk": 250}, interval_s=0.25) as d:
        response = page.goto(d.url)
        assert response.status == 200
        page.wait_for_selector("body[data-ready='1']")
        updates_at_least(page, 2)
        # the graph: one node per step of the plan, an edge per input, laid out left to right
        nodes = page.locator("#graph .node")
        assert nodes.count() == len(job.plan.nodes)
        assert [nodes.nth(i).get_attribute("data-step") for i in range(nodes.count())] == [
            n.name for n in job.plan.nodes]
        assert page.locator("#graph path.edge").count() == sum(len(n.inputs) for n in job.plan.nodes)
        xs = [float(re.findall(r"[\d.]+", nodes.nth(i).get_attribute("transform"))[0]) for i in range(nodes.count())]
        assert xs == sorted(xs) and xs[0] < xs[-1]
        fills = [nodes.nth(i).locator("rect.box").get_attribute("fill") for i in range(nodes.count())]
        assert all(f and f.startswith("hsl(") for f in fills)
        assert page.title() == "watched · millstream"
        assert cell(page, "gate", "records-out") == "2,000"
        assert page.locator("#status").inner_text().startswith("running")
        assert page.locator("#config dd").first.inner_text() == "native"
        # the job moves on: the figures follow without a reload
        job.gate.allow(2_600)
        page.wait_for_function(
            """() => document.querySelector('#steps tbody tr[data-step="gate"] td.records-out')?.textContent
                     === '2,600'""")
        job.finish()
        page.wait_for_function("() => document.body.dataset.status === 'finished'")
        assert cell(page, "gate", "records-out") == "3,000"
        assert page.locator("#lag-chart path.series").count() >= 1
        assert page.locator("#rate-chart path.series").count() >= 1
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    assert page.problems.other_than() == []  # no CSP violation, no script error


def test_the_token_is_refused_and_accepted_in_the_browser(page: Any, context: Any) -> None:
    token = "browser-token-" + "z" * 16
    with running_job() as job, serve_dashboard("0", registry=job.registry, plan=job.plan, config={},
                                               token=token, interval_s=0.25) as d:
        refused = page.goto(d.url)
        assert refused.status == 401
        assert "needs its token" in page.locator("body").inner_text()
        assert page.locator("#graph").count() == 0
        wrong = page.goto(d.url + "?token=not-" + token)
        assert wrong.status == 401
        accepted = page.goto(d.url + "?token=" + token)
        assert accepted.status == 200
        assert page.url == d.url  # redirected: the token left the address bar and the history
        page.wait_for_selector("body[data-ready='1']")
        updates_at_least(page, 2)  # the event stream and the API passed on the cookie
        assert page.locator("#graph .node").count() == len(job.plan.nodes)
        (cookie,) = [c for c in context.cookies() if c["name"] == f"millstream_dashboard_{d.port}"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("() => document.cookie") == ""  # not readable by scripts
    # the page's own fetches were accepted; only the deliberate refusals show as failed loads
    assert page.problems.other_than("401") == []


def test_the_stop_buttons(page: Any) -> None:
    control = FakeControl()
    with running_job() as job:
        with serve_dashboard("0", registry=job.registry, plan=job.plan, config={}, control=control,
                             interval_s=0.25) as d:
            page.goto(d.url)
            updates_at_least(page, 1)
            assert page.locator("#stop-savepoint").is_disabled() and page.locator("#stop").is_disabled()
            assert "off" in page.locator("#control-note").inner_text()
        with serve_dashboard("0", registry=job.registry, plan=job.plan, config={}, control=control,
                             allow_control=True, interval_s=0.25) as d:
            page.goto(d.url)
            updates_at_least(page, 1)
            button = page.locator("#stop-savepoint")
            assert button.is_enabled()
            button.click()
            assert control.asked.wait(20)
            assert control.stops == [True]
            page.wait_for_function("() => document.body.dataset.status === 'stopping'")
            assert page.locator("#stop-savepoint").is_disabled()
            control.stopped()
            page.wait_for_function("() => document.body.dataset.status === 'stopped'")
            assert "/tmp/ck/chk-000007" in page.locator("#status").inner_text()
    assert page.problems.other_than() == []


# -- with the run's job control ---------------------------------------------------------------------


def _paced_flow(out: Path, n: int, rate: float) -> ms.Flow:
    flow = ms.Flow("savepointed")
    src = flow.source(ms.connectors.generator.sequence(n, rate=rate, interval=10),
                      watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
    (src.key_by(ms.col("id") % 5).window(ms.windows.tumbling(1_000))
        .aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"))
        .sink(ms.connectors.files.write(out, transactional=True)))
    return flow


def _as_counter(rows: list[Any]) -> Counter[str]:
    return Counter(repr(sorted(r.items())) for r in rows)


def test_stop_with_a_savepoint_from_the_page_and_resume(page: Any, tmp_path: Path) -> None:
    if not hasattr(ms.Flow, "start"):
        pytest.skip("needs job control")
    n, rate = 1_500, 500.0  # three seconds of input: the stop lands mid-run
    reference_out = tmp_path / "reference"
    _paced_flow(reference_out, n, rate=1e9).run(mode="native")
    expected = _as_counter(ms.connectors.files.read_committed(reference_out))

    out, ck = tmp_path / "out", tmp_path / "ck"
    handle = _paced_flow(out, n, rate).start(mode="native", guarantee="exactly-once", checkpoint_dir=ck,
                                             dashboard="0", dashboard_control=True)
    try:
        url = handle.dashboard_url
        token = getattr(handle, "dashboard_token", None)
        page.goto(url + (f"?token={token}" if token else ""))
        updates_at_least(page, 1)
        page.wait_for_function(
            """() => Number((document.querySelector('#steps tbody tr[data-step="sequence"] td.records-out')
                             ?.textContent || '0').replace(/,/g, '')) >= 200""")
        page.locator("#stop-savepoint").click()
        page.wait_for_function("() => ['stopping', 'stopped'].includes(document.body.dataset.status)")
        result = handle.wait()
    finally:
        status = handle.status() if callable(handle.status) else handle.status
        if status == "running":
            handle.stop(savepoint=False)
        handle.wait()
    assert 0 < result.records_read < n, "the job ended before the stop (pace it slower)"
    assert result.savepoint, "the stop took no savepoint"
    resumed = _paced_flow(out, n, rate).run(  # the same flow: the checkpoint's fingerprint
        mode="native", guarantee="exactly-once", checkpoint_dir=ck)
    assert 0 < resumed.records_read < n  # it resumed from the savepoint, not from the start
    assert _as_counter(ms.connectors.files.read_committed(out)) == expected
