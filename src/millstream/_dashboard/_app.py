"""The dashboard's web application (Starlette) and the guard in front of it.

Every request goes through :class:`Guard` first: the Host check (a loopback server answers only to
loopback names, so a page on another site cannot reach it by DNS rebinding), the token (bearer
header, or the cookie the page load with ``?token=`` set), and the security headers on every
response. POST requests (control) are further checked for control being enabled, the same origin
and a JSON body.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from millstream._dashboard import JobControl
from millstream._dashboard._views import config_view, graph_view, redact_text, snapshot_view
from millstream._prometheus import CONTENT_TYPE, is_loopback, render
from millstream.errors import MillstreamError

if TYPE_CHECKING:
    from millstream._metrics import MetricsRegistry
    from millstream._plan import Plan

__all__ = ["DashboardState", "Guard", "build_app"]

log = logging.getLogger("millstream.dashboard")

STATIC = Path(__file__).parent / "static"
#: The only files served: name -> content type (nothing else is read from disk).
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)
#: Warnings and errors of millstream's loggers kept for the page.
MESSAGES_KEPT = 200
#: Watermark lag and throughput points kept for the charts (one per snapshot the server took).
HISTORY_KEPT = 600


class _Messages(logging.Handler):
    """Warnings and errors of the ``millstream`` loggers, newest last, redacted."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.kept: deque[dict[str, Any]] = deque(maxlen=MESSAGES_KEPT)
        self.seq = 0
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = redact_text(record.getMessage())
        except Exception:  # noqa: BLE001 - a bad log call must not break the job
            text = str(record.msg)
        with self._guard:
            self.seq += 1
            self.kept.append({"seq": self.seq, "time": record.created, "level": record.levelname,
                              "logger": record.name, "message": text})

    def items(self) -> list[dict[str, Any]]:
        with self._guard:
            return list(self.kept)


class DashboardState:
    """What the routes read: the registry (snapshots taken on demand, shared between clients for
    a moment), the plan's graph, the configuration, the job control and the kept messages."""

    def __init__(self, *, registry: MetricsRegistry, plan: Plan, config: Mapping[str, object],
                 control: JobControl | None, allow_control: bool, interval_s: float) -> None:
        self.registry = registry
        self.graph = graph_view(plan)
        self.config = config_view(config)
        self.control = control
        self.allow_control = allow_control
        self.interval_s = interval_s
        self.closing = threading.Event()
        self.messages = _Messages()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_KEPT)
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, Any]] | None = None

    def status(self, running: bool | None = None) -> str:
        if self.control is not None:
            try:
                return str(self.control.status())
            except Exception:
                log.debug("job control status failed", exc_info=True)
        if running is None:
            running = self.registry.running
        return "running" if running else "finished"

    def savepoint_path(self) -> str | None:
        if self.control is None:
            return None
        try:
            path = self.control.savepoint_path()
        except Exception:  # noqa: BLE001
            return None
        return redact_text(str(path)) if path is not None else None

    def metrics(self) -> dict[str, Any]:
        """The latest snapshot as JSON values, taken now unless one is younger than half an interval."""
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last[0] < self.interval_s / 2:
                return self._last[1]
            view = snapshot_view(self.registry.snapshot())
            view["status"] = self.status(view["running"])
            view["savepoint_path"] = self.savepoint_path()
            view["messages"] = self.messages.items()
            point = {"t": view["taken_at"],
                     "lag_s": {s["step"] + "@" + s["worker"]: s["watermark_lag_s"] for s in view["steps"]
                               if s["watermark_lag_s"] is not None},
                     "rate": {s["step"] + "@" + s["worker"]: s["records_out_per_s"] if s["role"] == "source"
                              else s["records_in_per_s"] for s in view["steps"] if s["role"] != "operator"}}
            self.history.append(point)
            self._last = (now, view)
            return view

    def sample_until_closed(self) -> None:
        """Take a snapshot every interval until the dashboard closes, so that the charts' history
        covers the whole run, not only the time someone had the page open."""
        while not self.closing.wait(self.interval_s):
            try:
                self.metrics()
            except Exception:  # a failed sample must not end the sampling
                log.debug("dashboard sample failed", exc_info=True)

    def job(self) -> dict[str, Any]:
        return {
            "flow": self.graph["flow"], "graph": self.graph, "config": self.config, "status": self.status(),
            "control": self.allow_control and self.control is not None,
            "control_reason": None if self.allow_control and self.control is not None else (
                "control actions are off for this job" if not self.allow_control
                else "this run has no job control attached"),
            "savepoint_path": self.savepoint_path(), "interval_s": self.interval_s,
            "history": list(self.history),
        }


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def build_app(state: DashboardState) -> Starlette:
    page = (STATIC / "index.html").read_bytes()
    assets = {name: (STATIC / name).read_bytes() for name in ASSETS}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return Response(b"not found\n", 404, media_type="text/plain; charset=utf-8")
        return Response(assets[name], media_type=ASSETS[name])

    async def job(request: Request) -> Response:
        return _json(await run_in_threadpool(state.job))

    async def metrics_json(request: Request) -> Response:
        return _json(await run_in_threadpool(state.metrics))

    async def prometheus(request: Request) -> Response:
        text = await run_in_threadpool(lambda: render(state.registry.snapshot()))
        return Response(text.encode(), media_type=CONTENT_TYPE)

    async def events(request: Request) -> Response:
        async def stream() -> Any:
            yield b"retry: 2000\n\n"
            n = 0
            loop = asyncio.get_running_loop()
            while not state.closing.is_set():
                view = await run_in_threadpool(state.metrics)
                n += 1
                yield b"id: %d\nevent: metrics\ndata: %s\n\n" % (n, orjson.dumps(view))
                until = loop.time() + state.interval_s
                while not state.closing.is_set() and loop.time() < until:
                    await asyncio.sleep(min(0.1, max(0.0, until - loop.time())))

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    async def stop(request: Request) -> Response:
        if not state.allow_control:
            return _error(403, "control actions are off for this dashboard (enable them when starting the job)")
        if not _same_origin(request):
            return _error(403, "cross-origin request refused")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, 'send JSON: {"savepoint": true}')
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return _error(400, 'the body is not JSON; expected {"savepoint": true}')
        savepoint = body.get("savepoint", False) if isinstance(body, dict) else None
        if not isinstance(savepoint, bool):
            return _error(400, 'expected {"savepoint": true} or {"savepoint": false}')
        control = state.control
        if control is None:
            return _error(409, "this run has no job control attached")
        status = state.status()
        if status != "running":
            return _error(409, f"the job is {status}, not running")
        try:
            await run_in_threadpool(control.request_stop, savepoint)
        except MillstreamError as exc:  # e.g. a savepoint asked of a job without a checkpoint directory
            return _error(409, str(exc))
        log.warning("stop%s requested from the dashboard", " with a savepoint" if savepoint else "")
        return _json({"status": state.status(), "savepoint": savepoint}, 202)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/job", job, methods=["GET"]),
        Route("/api/metrics", metrics_json, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/stop", stop, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def _same_origin(request: Request) -> bool:
    """A browser's POST names its origin; it must be this server's. Clients that send neither
    ``Origin`` nor ``Sec-Fetch-Site`` (curl, scripts) are not browsers a page could misuse."""
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if origin is not None:  # nothing secret here: a plain comparison (compare_digest fails on non-ASCII)
        return origin.lower() == f"{request.url.scheme}://{host}".lower()
    site = request.headers.get("sec-fetch-site")
    return site is None or site in ("same-origin", "none")


def _host_name(host_header: str) -> str:
    """The host name of a ``Host`` header, without the port, lower case (names are case-insensitive)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0].lower()
    return (host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header).lower()


class Guard:
    """ASGI middleware: Host check, token check, security headers on every response."""

    def __init__(self, app: ASGIApp, *, token: str | None, loopback: bool, cookie: str) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self.loopback = loopback
        self.cookie = cookie

    def _matches(self, given: str | None) -> bool:
        if self._token is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self._token)

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(given.strip()):
            return True
        jar = SimpleCookie()
        try:
            jar.load(request.headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no token
            return False
        morsel = jar.get(self.cookie)
        return morsel is not None and self._matches(morsel.value)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # no route takes one; refused here, before the app, so that nothing skips the checks below
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan (off in the server this guard runs in)
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                message = {**message, "headers": headers + list(SECURITY_HEADERS)}
            await send(message)

        request = Request(scope)
        if self.loopback and not is_loopback(_host_name(request.headers.get("host", ""))):
            # a loopback dashboard answers only to loopback names: no DNS rebinding
            await _plain(421, "this dashboard answers only to 127.0.0.1 / localhost\n")(
                scope, receive, send_with_headers)
            return
        if self._authorized(request):
            await self.app(scope, receive, send_with_headers)
            return
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["method"] == "GET" and scope["path"] == "/" and self._matches((query.get("token") or [""])[0]):
            # the first page load: the token moves from the address into a cookie, out of the history
            assert self._token is not None
            response = Response(b"", 303, headers={"Location": "/"})
            response.set_cookie(self.cookie, self._token.decode(), httponly=True, samesite="strict", path="/")
            await response(scope, receive, send_with_headers)
            return
        await _plain(401, "this dashboard needs its token: open /?token=<token> once, or send the header "
                          "Authorization: Bearer <token>\n",
                     {"WWW-Authenticate": 'Bearer realm="millstream"'})(scope, receive, send_with_headers)


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> Callable[[Scope, Receive, Send],
                                                                                      Awaitable[None]]:
    return Response(text.encode(), status, headers=headers, media_type="text/plain; charset=utf-8")
