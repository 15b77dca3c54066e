"""The web dashboard of a running job: the operator graph coloured by busy and backpressured time,
per-step figures, watermark lag over time, checkpoints, warnings, the configuration, and stop
buttons. Needs the extra ``millstream[dashboard]`` (Starlette and uvicorn).

:func:`serve_dashboard` starts it on a daemon thread (uvicorn with its own event loop) and returns a
:class:`DashboardServer`. The server reads ``registry.snapshot()`` every interval on a thread of
its own, which keeps the charts' history (the last 600 samples) whether or not a page is open, and
when a page or a client asks (at most every half interval, shared between clients); it never touches
the job itself; stopping goes through the :class:`JobControl` the run hands in.

Routes: ``GET /`` (the page), ``GET /static/<file>``, ``GET /api/job`` (graph, configuration,
status), ``GET /api/metrics`` (a snapshot), ``GET /api/events`` (server-sent events: a snapshot
every interval), ``POST /api/stop`` (``{"savepoint": true}``) and ``GET /metrics`` (Prometheus text,
the same as :mod:`millstream._prometheus` renders).

Security: bound to loopback by default, and then it answers only to loopback host names. On any
other address every request needs the token (given, or generated and printed once to stderr):
``Authorization: Bearer <token>``, or ``/?token=<token>`` once in a browser, which moves it into an
HttpOnly, SameSite=Strict cookie. A token given on loopback is enforced too. ``POST /api/stop`` is
refused unless ``allow_control``, and from another origin. Every response forbids framing, sniffing,
referrers and caching, under a content security policy that allows only the server's own files.
"""

from __future__ import annotations

import logging
import secrets
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from millstream._prometheus import is_loopback, parse_address
from millstream.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from millstream._metrics import MetricsRegistry
    from millstream._plan import Plan

__all__ = ["DashboardServer", "JobControl", "serve_dashboard"]

log = logging.getLogger("millstream.dashboard")

#: Seconds between the snapshots the event stream sends.
INTERVAL_S = 1.0
STARTUP_TIMEOUT_S = 10.0


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise MissingDependencyError(module, "dashboard", "the web dashboard") from None


class JobControl(Protocol):
    """What the dashboard may ask of a running job (implemented by the run; a fake in tests)."""

    def status(self) -> str:
        """``"running"``, ``"stopping"``, ``"finished"``, ``"stopped"`` or ``"failed"``."""
        ...

    def request_stop(self, savepoint: bool) -> None:
        """Ask the job to stop at its next chunk boundary (with a final checkpoint if ``savepoint``);
        returns at once."""
        ...

    def savepoint_path(self) -> str | None:
        """Where the savepoint went, once taken."""
        ...


class DashboardServer:
    """A running dashboard: ``url`` to open, ``token`` when one is needed, :meth:`close` to stop it."""

    def __init__(self, *, url: str, token: str | None, server: Any, thread: threading.Thread,
                 sock: socket.socket, state: Any, sampler: threading.Thread | None = None) -> None:
        self.url = url
        self.token = token
        self._server = server
        self._thread = thread
        self._sock = sock
        self._state = state
        self._sampler = sampler
        self._closed = False
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def close(self) -> None:
        """Stop serving (open event streams end within a tenth of a second) and join the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._state.closing.set()
        if self._sampler is not None:
            self._sampler.join(timeout=10)
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        logging.getLogger("millstream").removeHandler(self._state.messages)
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DashboardServer({self.url!r}, token={'required' if self.token else 'none'})"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def serve_dashboard(address: str, *, registry: MetricsRegistry, plan: Plan, config: Mapping[str, object],
                    control: JobControl | None = None, token: str | None = None, allow_control: bool = False,
                    interval_s: float = INTERVAL_S) -> DashboardServer:
    """Serve the dashboard of the job ``registry`` follows on ``address`` (``PORT`` or ``HOST:PORT``,
    ``0`` for a free port; loopback unless a host is given). Returns once it accepts connections.

    On a non-loopback address a token is needed: ``token``, or one generated here and printed once
    to stderr. ``config`` is shown redacted; ``control`` with ``allow_control`` enables the stop buttons.
    """
    _need("starlette")
    _need("uvicorn")
    import uvicorn

    from millstream._dashboard._app import DashboardState, Guard, build_app

    if interval_s <= 0:
        raise ConfigError(f"interval_s must be > 0, not {interval_s!r}")
    try:
        host, port = parse_address(address)
    except ConfigError:
        raise ConfigError(f"dashboard address {address!r}: expected [HOST:]PORT, e.g. 8081 or 127.0.0.1:8081 "
                          "(0: any free port)") from None
    loopback = is_loopback(host)
    if token == "":
        raise ConfigError("the dashboard token must not be empty")
    generated = token is None and not loopback
    if generated:
        token = secrets.token_urlsafe(24)
    sock = _bind(host, port)
    bound_port = int(sock.getsockname()[1])
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}/"

    state = DashboardState(registry=registry, plan=plan, config=config, control=control,
                           allow_control=allow_control, interval_s=interval_s)
    app = Guard(build_app(state), token=token, loopback=loopback, cookie=f"millstream_dashboard_{bound_port}")
    cfg = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                         loop="asyncio", server_header=False, proxy_headers=False, timeout_graceful_shutdown=2,
                         timeout_keep_alive=5)
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="millstream-dashboard",
                              daemon=True)
    sampler = threading.Thread(target=state.sample_until_closed, name="millstream-dashboard-history",
                               daemon=True)
    logging.getLogger("millstream").addHandler(state.messages)
    thread.start()
    sampler.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    dash = DashboardServer(url=url, token=token, server=server, thread=thread, sock=sock, state=state,
                           sampler=sampler)
    if not server.started:
        dash.close()
        raise ConfigError(f"the dashboard on {url} did not start within {STARTUP_TIMEOUT_S:.0f} s")
    if generated:
        print(f"millstream: the dashboard on {url} needs a token; this run's token (shown once): {token}\n"
              f"  open {url}?token={token}", file=sys.stderr, flush=True)
    log.info("dashboard at %s%s", url, " (token required)" if token else "")
    return dash
