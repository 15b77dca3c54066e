"""The metrics registry and ``/metrics``: figures equal the job's own counts, the text format passes
``promtool check metrics``, an exposed endpoint needs its token, and no connector secret leaks."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import millstream as ms
from millstream.connectors import Source, SourceContext, SourceReader
from millstream.errors import ConfigError
from millstream.metrics import MetricsRegistry, TokenCheck, prometheus_text

T0 = 1_760_000_000_000  # event times: ms since the epoch
MODES = ["native", "microbatch"]


def _records(n: int) -> list[dict[str, Any]]:
    # every 50th record is 5 s behind: later than the 1 s bound, so the window counts it late
    return [{"k": i % 7, "v": i, "ts": T0 + i * 10 - (5_000 if i % 50 == 49 else 0)} for i in range(n)]


def _flow(source: Any, sink: Any, name: str = "metered") -> ms.Flow:
    flow = ms.Flow(name)
    wm = ms.WatermarkStrategy.bounded(1_000, timestamp="ts")
    (flow.source(source, watermark=wm)
     .filter(ms.col("v") % 3 != 0)
     .key_by("k").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count())
     .sink(sink))
    return flow


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``name{labels} value`` lines as {(name, labels): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    found = [v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= lab]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


# -- the registry against the job's own counts ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_registry_equals_the_jobs_counts(mode: str) -> None:
    reg = MetricsRegistry()
    sink = ms.connectors.memory.write()
    result = _flow(ms.connectors.memory.read(_records(20_000)), sink).run(mode=mode, metrics_registry=reg,
                                                                          max_chunk=500)
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


class GateSource(Source):
    """Reads ``records``, stops after ``hold`` of them until ``release`` is set (a job to scrape)."""

    def __init__(self, records: list[Any], hold: int) -> None:
        self.records, self.hold = records, hold
        self.release = threading.Event()
        self.holding = threading.Event()

    def open(self, ctx: SourceContext) -> SourceReader:
        return _GateReader(self)

    def describe(self) -> str:
        return "gate"

    def default_name(self) -> str:
        return "gate"


class _GateReader(SourceReader):
    def __init__(self, src: GateSource) -> None:
        self.src, self.i = src, 0

    def poll(self, max_records: int) -> list[Any] | None:
        src = self.src
        if self.i >= len(src.records):
            return None
        if self.i >= src.hold and not src.release.is_set():
            src.holding.set()
            return []
        end = min(len(src.records), self.i + max_records, src.hold if self.i < src.hold else len(src.records))
        chunk = src.records[self.i:end]
        self.i = end
        return chunk


def _get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("MILLSTREAM_REQUIRE_SERVICES") == "1":
            pytest.fail("promtool is missing (apt-get install -y prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


class _Collector(BaseHTTPRequestHandler):
    """An HTTP endpoint the http sink posts to."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("mode", MODES)
def test_scrape_a_running_job(mode: str) -> None:
    target = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    secret_pw, secret_token = "pw-4dd81c2e-never-shown", "tok-93f0b7aa-never-shown"
    sink = ms.connectors.http.write(f"http://user:{secret_pw}@127.0.0.1:{target.server_address[1]}/in",
                                    headers={"Authorization": f"Bearer {secret_token}"}, batch_size=50)
    gate = GateSource(_records(3_000), hold=2_000)
    reg = MetricsRegistry()
    flow = _flow(gate, sink, name='scraped "flow"\nwith odd name')
    box: dict[str, Any] = {}

    def run() -> None:
        box["result"] = flow.run(mode=mode, metrics="127.0.0.1:0", metrics_registry=reg, max_chunk=250,
                                 progress_interval_s=0.02)

    th = threading.Thread(target=run)
    th.start()
    try:
        assert gate.holding.wait(20), "the job never read its first records"
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
        check = subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        gate.release.set()
        th.join(30)
        target.shutdown()
        target.server_close()
    result = box["result"]
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


def _any_address_available() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _any_address_available(), reason="cannot bind 0.0.0.0 here")
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
