"""The dashboard's server against a real running job: JSON shapes equal the job's own counts, the event
stream delivers snapshots, ``/metrics`` is the Prometheus renderer's text, every response carries the
security headers, the token and the Host check refuse what they must, control needs ``allow_control``
and the same origin, and no secret reaches a response."""

from __future__ import annotations

import logging
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests._metrics_checks import any_address_available, http_endpoint, parse, promtool_accepts
from tests.e2e.jobs import T0, FakeControl, RunningJob, running_job
from tests.integration.services import need_module

import millstream as ms
from millstream._plan import Plan
from millstream.errors import ConfigError, MissingDependencyError

need_module("httpx", "dev")
need_module("starlette", "dashboard")
need_module("uvicorn", "dashboard")

import httpx  # noqa: E402

from millstream._dashboard import DashboardServer, serve_dashboard  # noqa: E402
from millstream._dashboard._views import config_view, graph_view, redact_text  # noqa: E402
from millstream._prometheus import render  # noqa: E402

HEADERS = {
    "content-security-policy": "default-src 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def check_headers(r: httpx.Response) -> None:
    for name, expected in HEADERS.items():
        assert expected in r.headers.get(name, ""), f"{r.request.url.path}: {name}: {r.headers.get(name)!r}"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "unsafe-inline" not in r.headers["content-security-policy"]


@pytest.fixture
def job() -> Iterator[RunningJob]:
    with running_job() as j:
        yield j


@pytest.fixture
def served(job: RunningJob) -> Iterator[DashboardServer]:
    d = serve_dashboard("0", registry=job.registry, plan=job.plan, config={"mode": "native", "max_chunk": 250},
                        interval_s=0.2)
    try:
        yield d
    finally:
        d.close()


def sse_events(url: str, count: int, headers: dict[str, str] | None = None, timeout: float = 20,
               until: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """The first ``count`` events of the stream at ``url`` (fewer if ``until`` says so of one)."""
    import orjson

    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        check_headers(r)
        for line in r.iter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                    if len(events) >= count or (until is not None and until(current)):
                        break
                current = {}
                continue
            key, _, value = line.partition(":")
            current[key] = orjson.loads(value) if key == "data" else value.strip()
    return events


# -- pure views ------------------------------------------------------------------------------------


def test_the_graph_is_laid_out_by_topological_depth() -> None:
    flow = ms.Flow("branches")
    src = flow.source(ms.connectors.memory.read([1, 2, 3]))
    a = src.map(lambda x: x + 1, name="a")
    b = src.filter(lambda x: x > 1, name="b")
    a.union(b).sink(ms.connectors.memory.write(), name="out")
    g = graph_view(flow.plan())
    by = {n["name"]: n for n in g["nodes"]}
    assert len(g["nodes"]) == len(flow.plan().nodes)
    assert by["memory"]["depth"] == 0 and by["a"]["depth"] == by["b"]["depth"] == 1
    assert by["out"]["depth"] == max(n["depth"] for n in g["nodes"]) == g["depth"] - 1
    assert {by["a"]["row"], by["b"]["row"]} == {0, 1} and g["rows"] == 2
    assert {(e["from"], e["to"]) for e in g["edges"]} == {(i, n.id) for n in flow.plan().nodes for i in n.inputs}


def test_config_and_text_are_redacted() -> None:
    view = config_view({
        "mode": "native", "checkpoint_key": "k-secret", "metrics_token": "t-secret", "checkpoint_dir": "/ck",
        "input": "kafka://me:pw-secret@broker:9092/topic?sasl.password=sasl-secret",
        "options": {"password": "opt-secret", "host": "db"}, "restarts": 0, "interval": 1.5, "none": None,
    })
    text = repr(view)
    for secret in ("k-secret", "t-secret", "pw-secret", "sasl-secret", "opt-secret"):
        assert secret not in text
    assert view["mode"] == "native" and view["checkpoint_dir"] == "/ck" and view["restarts"] == 0
    assert view["options"] == {"password": "***", "host": "db"} and view["none"] is None
    assert redact_text("to http://u:p@h/x and back") == "to http://u:***@h/x and back"


def test_missing_starlette_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(MissingDependencyError, match=r"millstream\[dashboard\]"):
        serve_dashboard("0", registry=ms.metrics.MetricsRegistry(), plan=Plan("x", ()), config={})


def test_a_bad_address_or_a_taken_port_is_a_config_error(job: RunningJob) -> None:
    with pytest.raises(ConfigError, match=r"dashboard address .*HOST:\]PORT"):
        serve_dashboard("localhost:http", registry=job.registry, plan=job.plan, config={})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(ConfigError, match="cannot serve the dashboard"):
            serve_dashboard(str(s.getsockname()[1]), registry=job.registry, plan=job.plan, config={})


# -- a running job, served -------------------------------------------------------------------------


def test_the_page_assets_and_api_of_a_running_job(job: RunningJob, served: DashboardServer) -> None:
    assert served.url.startswith("http://127.0.0.1:") and served.url.endswith("/") and served.token is None
    with httpx.Client(base_url=served.url, timeout=10) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<script" in page.text and "/static/dashboard.js" in page.text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), "an inline script"
        assert not re.search(r"<[^>]+\son\w+=", page.text), "an inline event handler"
        assert " style=" not in page.text
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"),
                           ("favicon.svg", "image/svg+xml")):
            r = c.get(f"/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and r.content
            check_headers(r)
        for missing in ("/static/../__init__.py", "/static/index.html", "/static/nope.js", "/nope"):
            r = c.get(missing)
            assert r.status_code == 404
            check_headers(r)

        info = c.get("/api/job").json()
        plan = job.plan
        assert info["flow"] == "watched" and info["status"] == "running" and info["control"] is False
        assert [n["name"] for n in info["graph"]["nodes"]] == [n.name for n in plan.nodes]
        assert {n["kind"] for n in info["graph"]["nodes"]} == {n.kind for n in plan.nodes}
        assert len(info["graph"]["edges"]) == sum(len(n.inputs) for n in plan.nodes)
        assert info["config"] == {"mode": "native", "max_chunk": 250}

        m = c.get("/api/metrics").json()
        assert m["flow"] == "watched" and m["mode"] == "native" and m["running"] and m["status"] == "running"
        steps = {s["step"]: s for s in m["steps"]}
        gate = steps["gate"]
        assert gate["role"] == "source" and gate["records_out"] == 2_000 and gate["worker"] == "0"
        assert T0 < gate["watermark_ms"] < T0 + 30_000 and gate["watermark_lag_s"] > 0
        assert steps["collect"]["role"] == "sink"
        assert steps["window"]["late"] == job.registry.snapshot().total("late") > 0
        for s in m["steps"]:
            assert 0 <= s["busy"] <= 1 and 0 <= s["backpressured"] <= 1
            assert s["records_in_per_s"] >= 0
        assert set(m) >= {"taken_at", "now_ms", "uptime_s", "restarts", "checkpoints", "totals", "messages"}
        for path in ("/", "/api/job", "/api/metrics", "/metrics"):
            check_headers(c.get(path))
    result = job.finish()
    with httpx.Client(base_url=served.url, timeout=10) as c:
        m = c.get("/api/metrics").json()
        assert not m["running"] and m["status"] == "finished"
        steps = {s["step"]: s for s in m["steps"]}
        for st in result.steps:
            assert (steps[st.name]["records_in"], steps[st.name]["records_out"]) == (st.records_in, st.records_out)


def test_the_event_stream_delivers_snapshots_as_the_job_moves(job: RunningJob, served: DashboardServer) -> None:
    first = sse_events(served.url + "api/events", 2)
    assert [e["event"] for e in first] == ["metrics", "metrics"] and first[0]["id"] == "1" and first[1]["id"] == "2"
    assert first[1]["data"]["taken_at"] > first[0]["data"]["taken_at"]
    assert {s["step"]: s["records_out"] for s in first[0]["data"]["steps"]}["gate"] == 2_000
    job.finish()
    # a snapshot is shared between clients for half an interval: the end shows within a few events
    events = sse_events(served.url + "api/events", 5, until=lambda e: e["data"]["status"] == "finished")
    last = events[-1]
    assert last["data"]["status"] == "finished" and len(events) <= 3
    assert {s["step"]: s["records_out"] for s in last["data"]["steps"]}["gate"] == 3_000
    # what the charts start from: the points of the snapshots taken so far
    history = httpx.get(served.url + "api/job").json()["history"]
    assert len(history) >= 3 and all("gate@0" in p["lag_s"] for p in history[:2])  # +inf at the end: none


def test_metrics_is_the_prometheus_renderers_text(job: RunningJob, served: DashboardServer) -> None:
    r = httpx.get(served.url + "metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    live = parse(r.text)
    assert live[("millstream_records_in_total", frozenset({("flow", "watched"), ("step", "gate"),
                                                           ("worker", "0")}))] == 2_000
    promtool_accepts(r.text)
    job.finish()
    served_text = httpx.get(served.url + "metrics", timeout=10).text
    rendered = render(job.registry.snapshot())
    assert [ln for ln in served_text.splitlines() if ln.startswith("#")] == [
        ln for ln in rendered.splitlines() if ln.startswith("#")]
    a, b = parse(served_text), parse(rendered)
    assert a.keys() == b.keys()
    assert {k: v for k, v in a.items() if k[0] != "millstream_uptime_seconds"} == {
        k: v for k, v in b.items() if k[0] != "millstream_uptime_seconds"}


def test_the_history_builds_while_nobody_watches(job: RunningJob) -> None:
    with serve_dashboard("0", registry=job.registry, plan=job.plan, config={}, interval_s=0.05) as d:
        deadline = time.monotonic() + 20
        while len(d._state.history) < 4 and time.monotonic() < deadline:  # no request is made meanwhile
            time.sleep(0.05)
        history = httpx.get(d.url + "api/job", timeout=10).json()["history"]
    assert len(history) >= 4, history
    assert [p["t"] for p in history] == sorted(p["t"] for p in history)
    assert any(p["rate"] for p in history)


def test_close_ends_the_streams_and_is_idempotent(job: RunningJob) -> None:
    d = serve_dashboard("0", registry=job.registry, plan=job.plan, config={}, interval_s=0.1)
    port = d.port
    got: list[str] = []
    with httpx.stream("GET", d.url + "api/events", timeout=10) as r:
        it = r.iter_lines()
        while not any(line.startswith("event:") for line in got):
            got.append(next(it))
        t0 = time.monotonic()
        d.close()
        for line in it:  # the stream ends by itself once the server closes
            got.append(line)
    assert time.monotonic() - t0 < 8
    d.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


# -- security --------------------------------------------------------------------------------------


def test_a_token_given_on_loopback_is_enforced(job: RunningJob) -> None:
    token = "tok-" + "x" * 20
    with serve_dashboard("127.0.0.1:0", registry=job.registry, plan=job.plan, config={}, token=token,
                         interval_s=0.2) as d:
        assert d.token == token
        with httpx.Client(base_url=d.url, timeout=10) as c:
            for path in ("/", "/static/dashboard.js", "/api/job", "/api/metrics", "/api/events", "/metrics"):
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"},
                                {"Authorization": f"Bearer {token[:-1]}"}, {"Cookie": "millstream_dashboard=x"}):
                    r = c.get(path, headers=headers)
                    assert r.status_code == 401, (path, headers)
                    assert r.headers["www-authenticate"].startswith("Bearer")
                    assert token not in r.text
                    check_headers(r)
            assert c.get("/?token=wrong").status_code == 401
            assert c.get("/api/metrics?token=" + token).status_code == 401  # the query only on the page load
            bearer = {"Authorization": f"Bearer {token}"}
            for path in ("/", "/static/dashboard.js", "/api/job", "/api/metrics", "/metrics"):
                assert c.get(path, headers=bearer).status_code == 200, path
            assert len(sse_events(d.url + "api/events", 2, headers=bearer)) == 2
            assert c.post("/api/stop", json={"savepoint": True}).status_code == 401

            # the browser's way: ?token= once, then an HttpOnly SameSite=Strict cookie, the address cleaned
            r = c.get("/?token=" + token)
            assert r.status_code == 303 and r.headers["location"] == "/"
            cookie = r.headers["set-cookie"]
            assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
            name = cookie.split("=", 1)[0]
            assert name == f"millstream_dashboard_{d.port}"
            for path in ("/", "/api/job", "/api/metrics", "/metrics"):
                assert c.get(path).status_code == 200, path  # the client kept the cookie
            assert c.get("/api/job").json()["flow"] == "watched"


@pytest.mark.skipif(not any_address_available(), reason="cannot bind 0.0.0.0 here")
def test_a_non_loopback_bind_generates_a_token_and_needs_it(job: RunningJob,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with serve_dashboard("0.0.0.0:0", registry=job.registry, plan=job.plan, config={}) as d:
        err = capsys.readouterr().err
        assert d.token and err.count(d.token) == 2  # printed once: the token and the address to open
        assert f"?token={d.token}" in err
        url = f"http://127.0.0.1:{d.port}/"
        for path in ("", "static/dashboard.css", "api/job", "api/metrics", "api/events", "metrics"):
            assert httpx.get(url + path, timeout=10).status_code == 401, path
        r = httpx.get(url + "metrics", headers={"Authorization": f"Bearer {d.token}"}, timeout=10)
        assert r.status_code == 200 and "millstream_records_in_total" in r.text and d.token not in r.text
        # any Host is fine when a token guards the server
        assert httpx.get(url + "api/job", headers={"Authorization": f"Bearer {d.token}", "Host": "dash.example"},
                         timeout=10).status_code == 200
    assert capsys.readouterr().err.count(d.token) == 0  # never again


def test_a_loopback_dashboard_answers_only_to_loopback_names(served: DashboardServer) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 must get nothing."""
    for host in ("evil.example", f"evil.example:{served.port}", "10.0.0.1"):
        r = httpx.get(served.url + "api/metrics", headers={"Host": host}, timeout=10)
        assert r.status_code == 421 and "steps" not in r.text
        check_headers(r)
    for host in (f"localhost:{served.port}", f"127.0.0.1:{served.port}"):
        assert httpx.get(served.url + "api/job", headers={"Host": host}, timeout=10).status_code == 200



def test_host_names_are_case_insensitive(served: DashboardServer) -> None:
    for host in (f"LOCALHOST:{served.port}", f"LocalHost:{served.port}"):
        assert httpx.get(served.url + "api/job", headers={"Host": host}, timeout=10).status_code == 200


def test_an_origin_with_bytes_outside_ascii_is_refused_not_a_server_error(job: RunningJob) -> None:
    control = FakeControl()
    with serve_dashboard("0", registry=job.registry, plan=job.plan, config={}, control=control,
                         allow_control=True) as d:
        headers = [(b"Origin", "http://\xe9vil.example".encode("latin-1")), (b"Content-Type", b"application/json")]
        r = httpx.post(d.url + "api/stop", content=b'{"savepoint": true}', headers=headers, timeout=10)
        assert r.status_code == 403, r.text
        check_headers(r)
        assert control.stops == []


def test_the_guard_refuses_every_other_kind_of_connection() -> None:
    """A websocket (served once uvicorn finds a websocket library) goes through the guard too: closed
    before the app sees it, token or not."""
    import asyncio

    from millstream._dashboard._app import Guard

    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for token, loopback in (("t0ken", False), (None, True)):
        guard = Guard(app, token=token, loopback=loopback, cookie="c")
        scope = {"type": "websocket", "path": "/api/events", "headers": [(b"host", b"127.0.0.1")],
                 "query_string": b"", "scheme": "ws", "server": ("127.0.0.1", 1)}
        asyncio.run(guard(scope, receive, send))
    assert seen == [] and [m["type"] for m in sent] == ["websocket.close", "websocket.close"]

def test_control_is_refused_without_allow_control(job: RunningJob) -> None:
    control = FakeControl()
    with serve_dashboard("0", registry=job.registry, plan=job.plan, config={}, control=control) as d:
        origin = d.url.rstrip("/")
        r = httpx.post(d.url + "api/stop", json={"savepoint": True}, headers={"Origin": origin}, timeout=10)
        assert r.status_code == 403 and "off" in r.json()["error"]
        check_headers(r)
        assert control.stops == []
        info = httpx.get(d.url + "api/job", timeout=10).json()
        assert info["control"] is False and "off" in info["control_reason"]
        assert httpx.get(d.url + "api/stop", timeout=10).status_code == 405


def test_stop_with_a_savepoint_through_the_api(job: RunningJob) -> None:
    control = FakeControl()
    with serve_dashboard("0", registry=job.registry, plan=job.plan, config={}, control=control,
                         allow_control=True) as d:
        url, origin = d.url + "api/stop", d.url.rstrip("/")
        assert httpx.get(d.url + "api/job", timeout=10).json()["control"] is True
        # another site's page posting here, a form post, a body that is not the expected JSON
        for headers, body, code in (
            ({"Origin": "http://evil.example"}, b'{"savepoint": true}', 403),
            ({"Origin": "null"}, b'{"savepoint": true}', 403),
            ({"Sec-Fetch-Site": "cross-site"}, b'{"savepoint": true}', 403),
            ({"Origin": origin, "Content-Type": "application/x-www-form-urlencoded"}, b"savepoint=true", 415),
            ({"Origin": origin, "Content-Type": "text/plain"}, b'{"savepoint": true}', 415),
            ({"Origin": origin, "Content-Type": "application/json"}, b"{not json", 400),
            ({"Origin": origin, "Content-Type": "application/json"}, b'{"savepoint": "yes"}', 400),
        ):
            r = httpx.post(url, content=body, headers=headers, timeout=10)
            assert r.status_code == code, (headers, body, r.text)
        assert control.stops == []
        r = httpx.post(url, json={"savepoint": True}, headers={"Origin": origin}, timeout=10)
        assert r.status_code == 202 and r.json() == {"status": "stopping", "savepoint": True}
        check_headers(r)
        assert control.stops == [True]
        again = httpx.post(url, json={"savepoint": False}, headers={"Origin": origin}, timeout=10)
        assert again.status_code == 409 and "stopping" in again.json()["error"]
        control.stopped()
        m = httpx.get(d.url + "api/metrics", timeout=10).json()
        info = httpx.get(d.url + "api/job", timeout=10).json()
        assert info["status"] == "stopped" and info["savepoint_path"] == "/tmp/ck/chk-000007"
        assert m["status"] in ("stopping", "stopped")  # a snapshot may be shared for half an interval
        assert any("stop with a savepoint requested" in msg["message"] for msg in m["messages"])


def test_a_savepoint_asked_of_a_job_without_checkpoints_is_a_clear_409(job: RunningJob) -> None:
    """The real job control refuses a savepoint without a checkpoint directory: the page gets the
    reason (409), not a server error, and a plain stop still works."""
    from millstream._control import JobControl

    control = JobControl()
    control.attach(checkpointed=False)
    with serve_dashboard("0", registry=job.registry, plan=job.plan, config={}, control=control,
                         allow_control=True) as d:
        url, origin = d.url + "api/stop", d.url.rstrip("/")
        r = httpx.post(url, json={"savepoint": True}, headers={"Origin": origin}, timeout=10)
        assert r.status_code == 409 and "checkpoint" in r.json()["error"], r.text
        check_headers(r)
        r = httpx.post(url, json={"savepoint": False}, headers={"Origin": origin}, timeout=10)
        assert r.status_code == 202, r.text
        assert control.stop_requested


def test_no_secret_reaches_any_response() -> None:
    secret_pw, secret_token = "pw-5a1c-never-shown", "tok-77e2-never-shown"
    with http_endpoint() as port:
        address = f"http://user:{secret_pw}@127.0.0.1:{port}/in"
        sink = ms.connectors.http.write(address, headers={"Authorization": f"Bearer {secret_token}"})
        with running_job(sink=sink) as j:
            config = {"mode": "native", "output": f"{address}?token={secret_token}",
                      "checkpoint_key": secret_token, "headers": {"Authorization": secret_token}}
            with serve_dashboard("0", registry=j.registry, plan=j.plan, config=config, interval_s=0.2) as d:
                logging.getLogger("millstream.test").warning("could not reach http://user:%s@host/ today", secret_pw)
                texts = [httpx.get(d.url + p, timeout=10).text for p in ("", "api/job", "api/metrics", "metrics")]
                texts += [repr(e) for e in sse_events(d.url + "api/events", 1)]
                joined = "\n".join(texts)
                assert secret_pw not in joined and secret_token not in joined
                assert "could not reach http://user:***@host/" in joined  # the warning is shown, redacted
                assert "http" in {s["step"] for s in httpx.get(d.url + "api/metrics", timeout=10).json()["steps"]}
            j.finish()


def test_the_package_serves_its_assets() -> None:
    """``pip install`` ships the page: the files are package data of millstream._dashboard."""
    import importlib.resources
    import tomllib

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["millstream._dashboard"]
    static = importlib.resources.files("millstream._dashboard") / "static"
    names = sorted(p.name for p in static.iterdir())  # type: ignore[attr-defined]
    assert {"index.html", "dashboard.js", "dashboard.css", "favicon.svg"} <= set(names)
    for name in names:
        assert any(Path("static", name).match(p) for p in patterns), name
    assert "dashboard" in tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
