"""HTTP sink and webhook source, against real HTTP servers on loopback (a small flaky server here,
and the webhook source itself)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tests.integration import services

import millstream as ms
from millstream.connectors import Backoff
from millstream.connectors._base import SourceContext
from millstream.errors import ConnectorError, GuaranteeError, MissingDependencyError
from millstream.testing import ManualClock

SECRET = "Bearer hunter2-http-SECRET"


class Flaky(ThreadingHTTPServer):
    """Answers the scripted statuses first (e.g. 503, 429), then 200; keeps what it accepted."""

    daemon_threads = True

    def __init__(self, script: list[tuple[int, dict[str, str], bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _FlakyHandler)
        self.script = list(script)
        self.accepted: list[Any] = []
        self.requests = 0
        self.auth: set[str] = set()
        self.times: list[float] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _FlakyHandler(BaseHTTPRequestHandler):
    server: Flaky
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv = self.server
        with srv.lock:
            srv.requests += 1
            srv.times.append(time.monotonic())
            srv.auth.add(self.headers.get("Authorization", ""))
            status, headers, answer = srv.script.pop(0) if srv.script else (200, {}, b"ok")
            if status == 200:
                ctype = self.headers.get("Content-Type", "")
                if "ndjson" in ctype:
                    srv.accepted.extend(json.loads(line) for line in body.splitlines() if line)
                else:
                    srv.accepted.extend(json.loads(body))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def flaky(request: pytest.FixtureRequest) -> Iterator[Flaky]:
    services.need_module("httpx", "http")
    script = getattr(request, "param", [])
    srv = Flaky(script)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


@pytest.mark.parametrize("flaky", [[(503, {}, b"busy"), (429, {"Retry-After": "0.3"}, b"slow down"),
                                    (502, {}, b"bad gateway")]], indirect=True)
def test_sink_retries_5xx_and_429_honouring_retry_after(flaky: Flaky, exec_mode: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    n = 1_234
    flow = ms.Flow("post")
    flow.source(ms.connectors.memory.read([{"i": i} for i in range(n)])).sink(
        ms.connectors.http.write(flaky.url, batch_size=500, headers={"Authorization": SECRET},
                                 backoff=Backoff(initial_s=0.01, max_s=0.05, budget_s=10)))
    flow.run()
    assert sorted(r["i"] for r in flaky.accepted) == list(range(n))
    assert flaky.requests == 3 + 3  # three refused tries, then three batches (500, 500, 234)
    assert flaky.times[2] - flaky.times[1] >= 0.29  # Retry-After: 0.3 beat the 10 ms backoff
    assert flaky.auth == {SECRET}
    assert "HTTP 503" in caplog.text and SECRET not in caplog.text


@pytest.mark.parametrize("flaky", [[(403, {}, b'{"error": "token expired for client 42", "got": "'
                                    + SECRET.encode() + b'"}')]], indirect=True)
def test_sink_fails_clearly_on_4xx(flaky: Flaky, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    flow = ms.Flow("post")
    sink = ms.connectors.http.write(flaky.url + "?api_key=k3y-SECRET", headers={"Authorization": SECRET})
    flow.source(ms.connectors.memory.read([{"i": 1}])).sink(sink)
    with pytest.raises(ConnectorError) as info:
        flow.run()
    text = str(info.value)
    assert "HTTP 403" in text and "token expired for client 42" in text
    assert flaky.requests == 1  # a 4xx is not retried
    for secret in (SECRET, "hunter2", "k3y-SECRET"):
        assert secret not in text and secret not in caplog.text and secret not in sink.describe()


def test_sink_gives_up_after_the_budget() -> None:
    services.need_module("httpx", "http")
    url = f"http://127.0.0.1:{services.free_port()}/"
    flow = ms.Flow("down")
    flow.source(ms.connectors.memory.read([{"i": 1}])).sink(
        ms.connectors.http.write(url, backoff=Backoff(initial_s=0.02, max_s=0.05, budget_s=0.3)))
    t0 = time.monotonic()
    with pytest.raises(ConnectorError, match="still failing after"):
        flow.run()
    assert time.monotonic() - t0 < 5


def test_ndjson_and_flush_at_checkpoint(flaky: Flaky, tmp_path: Any) -> None:
    """Batches still buffered are sent at every checkpoint (pre_commit), not only when full."""
    flow = ms.Flow("nd")
    flow.source(ms.connectors.memory.read([{"i": i} for i in range(7)])).sink(
        ms.connectors.http.write(flaky.url, batch_size=1000, ndjson=True))
    flow.run(guarantee="at-least-once", checkpoint_dir=tmp_path / "ck")
    assert [r["i"] for r in flaky.accepted] == list(range(7))


# -- webhook source ---------------------------------------------------------------------------------


def _post_when_up(src: Any, bodies: list[tuple[bytes, dict[str, str]]], answers: list[int]) -> threading.Thread:
    import httpx

    def run() -> None:
        deadline = time.monotonic() + 10
        while src.bound_port is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with httpx.Client() as c:
            for body, headers in bodies:
                answers.append(c.post(src.url, content=body, headers=headers).status_code)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("mode", ["native", "microbatch", "batch"])
def test_webhook_round_trip(mode: str) -> None:
    """One object, an array, NDJSON: 2xx once taken; the job ends after max_records."""
    services.need_module("httpx", "http")
    src = ms.connectors.http.webhook(port=0, max_records=6, idle_stop=10)
    got = ms.connectors.memory.write()
    flow = ms.Flow("hook")
    flow.source(src).sink(got)
    answers: list[int] = []
    t = _post_when_up(src, [(b'{"i": 0}', {}), (b'[{"i": 1}, {"i": 2}]', {"Content-Type": "application/json"}),
                            (b'{"i": 3}\n{"i": 4}\n{"i": 5}\n', {"Content-Type": "application/x-ndjson"})], answers)
    flow.run(mode=mode)
    t.join(5)
    assert answers == [200, 200, 200]
    assert sorted(r["i"] for r in got.values) == list(range(6))


def test_webhook_backpressure_bad_json_and_token(caplog: pytest.LogCaptureFixture) -> None:
    import httpx

    caplog.set_level(logging.DEBUG)
    token = "hunter2-webhook-TOKEN"
    src = ms.connectors.http.webhook(port=0, max_buffered=5, token=token)
    assert token not in src.describe()
    reader = src.open(SourceContext(step="hook", clock=ManualClock(), policy="fail"))
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client() as c:
            assert c.post(src.url, json=[{"i": i} for i in range(4)], headers=auth).status_code == 200
            full = c.post(src.url, json=[{"i": 4}, {"i": 5}], headers=auth)  # 4 + 2 > 5: none taken
            assert full.status_code == 429 and full.headers["Retry-After"] == "1"
            bad = c.post(src.url, content=b'{"i": ', headers=auth)
            assert bad.status_code == 400 and "invalid JSON" in bad.json()["error"]
            assert c.post(src.url, json={"i": 9}).status_code == 401
            wrong = c.post(src.url, json={"i": 9}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and token not in wrong.text
            assert c.post(src.url + "x", json={"i": 9}, headers=auth).status_code == 404
            assert [r["i"] for r in reader.poll(100) or []] == [0, 1, 2, 3]
            assert c.post(src.url, json=[{"i": 4}, {"i": 5}], headers=auth).status_code == 200  # room again
            assert [r["i"] for r in reader.poll(100) or []] == [4, 5]
        m = reader.metrics()
        assert (m["accepted"], m["backpressure"], m["bad_requests"], m["unauthorized"]) == (6, 1, 1, 2)
    finally:
        reader.close()
    assert token not in caplog.text
    assert not services.reachable("127.0.0.1", src.bound_port or 0)  # the server is closed


def test_webhook_cannot_replay() -> None:
    src = ms.connectors.http.webhook(port=0)
    assert src.replay == "none" and not src.bounded
    flow = ms.Flow("hook")
    flow.source(src).sink(ms.connectors.memory.write())
    with pytest.raises(GuaranteeError, match="webhook"):
        flow.run(guarantee="at-least-once", checkpoint_dir="unused-ck")


def test_webhook_to_http_sink_docs_example() -> None:
    """The example of docs/connectors/http.md: a webhook in, alerts POSTed out (to a second webhook),
    on free ports instead of 8080/8081."""
    services.need_module("httpx", "http")
    in_port, out_port = services.free_port(), services.free_port()

    import threading

    import httpx

    import millstream as ms
    from millstream.connectors import http

    # a receiver for the alerts: another webhook, in a job of its own
    alerts = ms.connectors.memory.write()
    receiver = ms.Flow("alert-receiver")
    receiver.source(http.webhook(port=out_port, max_records=2)).sink(alerts)
    receiving = threading.Thread(target=receiver.run)
    receiving.start()

    flow = ms.Flow("thresholds")
    readings = flow.source(http.webhook(port=in_port, token="s3cret", max_records=4))
    readings.filter(ms.col("temp") > 30).sink(http.write(f"http://127.0.0.1:{out_port}/", batch_size=100))

    def device() -> None:  # posts four readings once the endpoint is up
        for _ in range(200):
            try:
                httpx.post(f"http://127.0.0.1:{in_port}/", json=[{"temp": t} for t in (20, 31, 25, 40)],
                           headers={"Authorization": "Bearer s3cret"})
                return
            except httpx.ConnectError:
                time.sleep(0.05)

    threading.Thread(target=device).start()
    flow.run()
    receiving.join()
    print(sorted(r["temp"] for r in alerts.values))  # [31, 40]
    assert sorted(r["temp"] for r in alerts.values) == [31, 40]


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingDependencyError, match=r"millstream\[http\]"):
        ms.connectors.http.write("http://127.0.0.1:1/")
