"""The metrics registry and ``/metrics``: figures equal the job's own counts, the text format passes
``promtool check metrics``, an exposed endpoint needs its token, and no connector secret leaks."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tests._metrics_checks import any_address_available, http_endpoint, parse, promtool_accepts, value
from tests.e2e.jobs import T0, records, running_job, windowed_flow

import millstream as ms
from millstream.errors import ConfigError
from millstream.metrics import MetricsRegistry, TokenCheck, prometheus_text

MODES = ["native", "microbatch"]


# -- the registry against the job's own counts ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_registry_equals_the_jobs_counts(mode: str) -> None:
    reg = MetricsRegistry()
    sink = ms.connectors.memory.write()
    flow = windowed_flow(ms.connectors.memory.read(records(20_000)), sink, "metered")
    result = flow.run(mode=mode, metrics_registry=reg, max_chunk=500)
    snap = reg.snapshot()
    assert not snap.running and snap.flow == "metered" and snap.mode == mode
    assert {s.worker for s in snap.steps} == {"0"}
    for st in result.steps:
        (m,) = snap.step(st.name)
        assert (m.records_in, m.records_out) == (st.records_in, st.records_out), st.name
    assert snap.records("memory", "out") == result.records_read == 20_000
    assert snap.records("collect", "in") == result.records_written == len(sink.values) > 0
    late = result.total("late")
    assert late > 0 and snap.total("late") == late
    # sampled timing: every step measured, nothing negative; the sink saw latency samples
    assert all(s.busy_s >= 0 and s.backpressured_s >= 0 for s in snap.steps)
    assert sum(s.busy_s for s in snap.steps) > 0
    (collect,) = snap.step("collect")
    assert collect.role == "sink" and collect.ingestion_latency_s and collect.event_latency_s
    samples = parse(prometheus_text(snap))
    assert value(samples, "millstream_records_in_total", step="collect", worker="0") == result.records_written
    assert value(samples, "millstream_records_out_total", step="memory", flow="metered") == 20_000
    assert value(samples, "millstream_late_records_total", step="window") == late


def test_state_entries_and_checkpoint_figures(tmp_path: Path) -> None:
    reg = MetricsRegistry()
    flow = ms.Flow("counting")

    def count(ctx: Any, r: Any) -> None:
        st = ctx.state["n"]
        st.update(st.value() + 1)
        ctx.emit(r)

    (flow.source(ms.connectors.memory.read([{"k": i % 5} for i in range(1_000)]))
     .key_by("k").process(count, state={"n": ms.state.value(default=0)}).sink(ms.connectors.memory.write()))
    flow.run(mode="native", metrics_registry=reg, checkpoint_dir=tmp_path / "ck", checkpoint_interval=1)
    snap = reg.snapshot()
    (proc,) = [s for s in snap.steps if s.kind == "process"]
    assert proc.state_entries == 5
    ck = snap.checkpoints
    assert ck is not None and ck.completed >= 1 and ck.last_id is not None and ck.last_size_bytes > 0
    samples = parse(prometheus_text(snap))
    assert value(samples, "millstream_checkpoints_completed_total") == ck.completed
    assert value(samples, "millstream_checkpoint_last_id") == ck.last_id
    assert value(samples, "millstream_state_entries", step=proc.step) == 5


def test_counters_never_go_down_across_a_restart(tmp_path: Path) -> None:
    failed: list[int] = []

    def once(r: int) -> int:
        if r == 750 and not failed:
            failed.append(r)
            raise ValueError("boom, once")
        return r

    reg = MetricsRegistry()
    flow = ms.Flow("restarting")
    flow.source(ms.connectors.memory.read(range(1_000))).map(once).sink(ms.connectors.memory.write())
    result = flow.run(mode="native", metrics_registry=reg, checkpoint_dir=tmp_path / "ck", checkpoint_interval=1,
                      restarts=1, restart_delay_s=0, max_chunk=100)
    snap = reg.snapshot()
    assert result.restarts == snap.restarts == 1
    # the failed attempt read 800 records (chunks of 100, the 8th failed); the last one's are added to them
    assert snap.records("memory", "out") == 800 + result.records_read
    assert value(parse(prometheus_text(snap)), "millstream_restarts_total", flow="restarting") == 1


# -- a running job, scraped -----------------------------------------------------------------------


def _get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


@pytest.mark.parametrize("mode", MODES)
def test_scrape_a_running_job(mode: str) -> None:
    secret_pw, secret_token = "pw-4dd81c2e-never-shown", "tok-93f0b7aa-never-shown"
    with http_endpoint() as port:
        sink = ms.connectors.http.write(f"http://user:{secret_pw}@127.0.0.1:{port}/in",
                                        headers={"Authorization": f"Bearer {secret_token}"}, batch_size=50)
        with running_job(sink=sink, name='scraped "flow"\nwith odd name', mode=mode, metrics="127.0.0.1:0") as job:
            reg = job.registry
            deadline = time.monotonic() + 10
            while reg.endpoint is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert reg.endpoint is not None and reg.endpoint.startswith("http://127.0.0.1:")
            time.sleep(0.1)  # a progress tick: connectors' figures refreshed
            status, text, headers = _get(reg.endpoint)
            assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert headers["Cache-Control"] == "no-store"
            samples = parse(text)
            assert value(samples, "millstream_records_in_total", step="gate", worker="0") == 2_000
            assert value(samples, "millstream_up") == 1
            wm = value(samples, "millstream_watermark_seconds", step="gate")
            assert T0 / 1000 < wm < T0 / 1000 + 30
            assert value(samples, "millstream_watermark_lag_seconds", step="gate") > 0
            assert 'job="' not in text and "exported_job" not in text
            assert secret_pw not in text and secret_token not in text and "user:" not in text
            promtool_accepts(text)
            result = job.finish()
    assert result.records_read == 3_000
    final = parse(prometheus_text(reg.snapshot()))
    assert value(final, "millstream_records_in_total", step="http") == result.records_written
    with pytest.raises(urllib.error.URLError):  # the server went with the run
        urllib.request.urlopen(reg.endpoint, timeout=2)


# -- exposure: the token ----------------------------------------------------------------------------


def _finished_registry() -> MetricsRegistry:
    reg = MetricsRegistry()
    flow = ms.Flow("tiny")
    flow.source(ms.connectors.memory.read([1, 2, 3])).sink(ms.connectors.memory.write())
    flow.run(mode="native", metrics_registry=reg)
    return reg


@pytest.mark.skipif(not any_address_available(), reason="cannot bind 0.0.0.0 here")
def test_a_non_loopback_bind_needs_the_token(capsys: pytest.CaptureFixture[str]) -> None:
    from millstream._prometheus import serve_metrics

    reg = _finished_registry()
    server = serve_metrics(reg, "0.0.0.0:0")  # no token given: one is made and printed once
    try:
        err = capsys.readouterr().err
        m = re.search(r"Authorization: Bearer (\S+)", err)
        assert m, err
        token = m.group(1)
        url = f"http://127.0.0.1:{server.port}/metrics"
        assert _get(url)[0] == 401
        status, _, headers = _get(url, "wrong-" + token)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert _get(url, token[:-1])[0] == 401
        status, text, _ = _get(url, token)
        assert status == 200 and "millstream_records_in_total" in text
        assert token not in text
    finally:
        server.close()
    given = serve_metrics(reg, "0.0.0.0:0", token="s3cret-given")
    try:
        assert "s3cret-given" not in capsys.readouterr().err
        url = f"http://127.0.0.1:{given.port}/metrics"
        assert _get(url)[0] == 401
        assert _get(url, "s3cret-given")[0] == 200
    finally:
        given.close()


def test_loopback_needs_no_token_and_the_check_is_strict() -> None:
    from millstream._prometheus import parse_address, serve_metrics

    server = serve_metrics(_finished_registry(), "127.0.0.1:0")
    try:
        assert _get(f"http://127.0.0.1:{server.port}/metrics")[0] == 200
        assert _get(f"http://127.0.0.1:{server.port}/nope")[0] == 404
    finally:
        server.close()
    check = TokenCheck("abc")
    assert check.allows("Bearer abc") and check.allows("bearer abc")
    assert not check.allows(None) and not check.allows("Basic abc") and not check.allows("Bearer abcd")
    assert "abc" not in repr(check)
    assert parse_address("9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("127.0.0.1", 9464)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    with pytest.raises(ConfigError, match=r"\[HOST:\]PORT"):
        ms.RunConfig(metrics="localhost:http")


def test_cli_run_with_metrics(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("import millstream as ms\nflow = ms.Flow('cli')\n"
                   "flow.source(ms.connectors.memory.read(range(10))).sink(ms.connectors.memory.write())\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok = subprocess.run([sys.executable, "-m", "millstream.cli", "run", str(job), "--metrics", str(port)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "millstream.cli", "run", str(job), "--metrics", "nowhere"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "[HOST:]PORT" in bad.stdout + bad.stderr
