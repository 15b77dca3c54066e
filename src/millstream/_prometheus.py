"""``/metrics``: a :class:`MetricsSnapshot` in the Prometheus text exposition format (0.0.4), and the
small HTTP server that serves it.

Names follow Prometheus conventions (``millstream_`` prefix, base units: seconds and bytes,
``_total`` on counters) with Flink's vocabulary (records in/out, busy and backpressured time,
watermark, checkpoints). Every per-step series has the labels ``flow``, ``step`` and ``worker``
(``"0"`` until scale-out; sum over ``worker`` to aggregate: ``sum without (worker) (...)``);
there is never a ``job`` label, which scrapers rename. The watermark is a gauge in **seconds**
since the epoch (``millstream_watermark_seconds``), shown only for steps with event time and
a finite watermark. Labels hold flow and step names and figure names, never a connector's
options (so never a secret).

The exposition is a pure function (:func:`render`) and the token check is one
(:class:`TokenCheck`), so the dashboard's server can serve the same ``/metrics`` under the
same rule; :class:`MetricsServer` is the stdlib server a run uses when asked for metrics only.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import secrets
import sys
import threading
from typing import TYPE_CHECKING, Any

from millstream.errors import ConfigError

if TYPE_CHECKING:
    from millstream._metrics import MetricsRegistry, MetricsSnapshot

log = logging.getLogger("millstream.metrics")

__all__ = ["CONTENT_TYPE", "MetricsServer", "TokenCheck", "parse_address", "render", "serve_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_HOST = "127.0.0.1"
QUANTILES = (0.5, 0.95, 0.99)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class _Family:
    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name, self.kind, self.help = name, kind, help
        self.lines: list[str] = []

    def add(self, labels: dict[str, str], value: float, suffix: str = "") -> None:
        text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        self.lines.append(f"{self.name}{suffix}{{{text}}} {_num(value)}")


def _quantile(values: list[float], q: float) -> float:
    k = (len(values) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def render(snap: MetricsSnapshot) -> str:
    """The snapshot in the Prometheus text exposition format."""
    fams: dict[str, _Family] = {}

    def fam(name: str, kind: str, help: str) -> _Family:
        f = fams.get(name)
        if f is None:
            f = fams[name] = _Family(name, kind, help)
        return f

    flow = {"flow": snap.flow}
    fam("millstream_info", "gauge", "Always 1; the labels say which flow runs in which mode.").add(
        {**flow, "mode": snap.mode}, 1)
    fam("millstream_up", "gauge", "1 while the job runs, 0 once it has ended.").add(flow, int(snap.running))
    fam("millstream_uptime_seconds", "gauge", "Seconds since the run started.").add(flow, snap.uptime_s)
    fam("millstream_restarts_total", "counter", "Restarts of the job from its latest checkpoint after a failure.").add(
        flow, snap.restarts)
    for s in snap.steps:
        lab = {"flow": snap.flow, "step": s.step, "worker": s.worker}
        fam("millstream_records_in_total", "counter", "Records into the step (a source: records read).").add(
            lab, s.records_in)
        fam("millstream_records_out_total", "counter", "Records the step sent downstream.").add(lab, s.records_out)
        fam("millstream_busy_seconds_total", "counter",
            "Seconds the step spent working (sampled and scaled; rate() is Flink's busyTime per second).").add(
            lab, s.busy_s)
        fam("millstream_backpressured_seconds_total", "counter",
            "Seconds the step waited for the steps downstream to take its output (sampled and scaled).").add(
            lab, s.backpressured_s)
        if s.role == "source":
            fam("millstream_idle_seconds_total", "counter",
                "Seconds a source polled and found nothing to read (sampled and scaled).").add(lab, s.idle_s)
        if s.watermark_ms is not None:
            fam("millstream_watermark_seconds", "gauge",
                "The step's current event-time watermark, seconds since the epoch.").add(lab, s.watermark_ms / 1000)
            fam("millstream_watermark_lag_seconds", "gauge",
                "Processing time minus the step's watermark, in seconds.").add(
                lab, (snap.now_ms - s.watermark_ms) / 1000)
        for figure, name, help in (
            ("late", "millstream_late_records_total", "Records behind the watermark (to the late output or dropped)."),
            ("skipped", "millstream_skipped_records_total", "Bad records skipped by the source's error policy."),
            ("dead_lettered", "millstream_dead_lettered_records_total", "Bad records sent to the dead-letter sink."),
        ):
            value = getattr(s, figure)
            if value is not None:
                fam(name, "counter", help).add(lab, value)
        if s.retries is not None:
            fam("millstream_retries_total", "counter", "Retries of a connector's calls to its system.").add(
                lab, s.retries)
        if s.bytes_in is not None:
            fam("millstream_bytes_in_total", "counter", "Bytes a source read, where it counts them.").add(
                lab, s.bytes_in)
        if s.bytes_out is not None:
            fam("millstream_bytes_out_total", "counter", "Bytes a sink wrote, where it counts them.").add(
                lab, s.bytes_out)
        if s.source_lag is not None:
            fam("millstream_source_lag_records", "gauge",
                "Records the source has not read yet, where it knows (Kafka: consumer lag).").add(lab, s.source_lag)
        if s.state_entries is not None:
            fam("millstream_state_entries", "gauge", "Entries of the step's keyed state (in-memory backend).").add(
                lab, s.state_entries)
        for key, value in sorted(s.figures.items()):
            fam("millstream_step_figure", "gauge", "Another figure a step or its connector counts itself.").add(
                {**lab, "figure": key}, value)
        for values, name, help in (
            (s.event_latency_s, "millstream_event_time_latency_seconds",
             "Sampled at the sink: processing time minus the chunk's highest event time."),
            (s.ingestion_latency_s, "millstream_ingestion_time_latency_seconds",
             "Sampled at the sink: time since the source read the records that led to the write."),
        ):
            if s.role != "sink":
                continue
            f = fam(name, "summary", help)
            ordered = sorted(values)
            for q in QUANTILES:
                f.add({**lab, "quantile": str(q)}, _quantile(ordered, q) if ordered else math.nan)
            f.add(lab, sum(ordered), "_sum")
            f.add(lab, len(ordered), "_count")
    if snap.state_bytes is not None:
        fam("millstream_state_bytes", "gauge", "Bytes of keyed state on disk (on-disk backend).").add(
            flow, snap.state_bytes)
    ck = snap.checkpoints
    if ck is not None:
        fam("millstream_checkpoints_completed_total", "counter", "Checkpoints completed by this run.").add(
            flow, ck.completed)
        if ck.last_id is not None:
            fam("millstream_checkpoint_last_id", "gauge", "Id of the latest completed checkpoint.").add(
                flow, ck.last_id)
            fam("millstream_checkpoint_last_duration_seconds", "gauge",
                "How long the latest checkpoint took, from barrier to commit.").add(flow, ck.last_duration_s)
            fam("millstream_checkpoint_max_duration_seconds", "gauge", "The longest checkpoint of this run.").add(
                flow, ck.max_duration_s)
            fam("millstream_checkpoint_last_size_bytes", "gauge", "Bytes written by the latest checkpoint.").add(
                flow, ck.last_size_bytes)
            fam("millstream_checkpoint_last_alignment_seconds", "gauge",
                "Barrier alignment time of the latest checkpoint (0: taken between chunks, aligned).").add(
                flow, ck.last_alignment_s)
        if ck.restored_from is not None:
            fam("millstream_checkpoint_restored_id", "gauge", "Id of the checkpoint this run resumed from.").add(
                flow, ck.restored_from)
    out = []
    for f in fams.values():
        out.append(f"# HELP {f.name} {f.help}")
        out.append(f"# TYPE {f.name} {f.kind}")
        out.extend(f.lines)
    return "\n".join(out) + "\n"


# -- serving ----------------------------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[IPv6]:PORT``; the host defaults to 127.0.0.1."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigError(f"metrics address {text!r}: expected [HOST:]PORT, e.g. 9464 or 127.0.0.1:9464")
    return host or DEFAULT_HOST, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenCheck:
    """``Authorization: Bearer <token>``, compared in constant time. Without a token, everything passes."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def required(self) -> bool:
        return self._token is not None

    def allows(self, authorization: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        ok = hmac.compare_digest(given.strip().encode(), self._token)
        return ok and scheme.lower() == "bearer"

    def __repr__(self) -> str:
        return f"TokenCheck(required={self.required})"


class MetricsServer:
    """``GET /metrics`` of a registry, from a daemon thread (stdlib ``ThreadingHTTPServer``)."""

    def __init__(self, registry: MetricsRegistry, host: str, port: int, check: TokenCheck) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # only a run that serves pays for it

        self.registry = registry
        self.check = check
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "millstream"
            sys_version = ""

            def do_GET(self) -> None:
                if not server_self.check.allows(self.headers.get("Authorization")):
                    self._send(401, b"a token is needed: Authorization: Bearer <token>\n",
                               {"WWW-Authenticate": 'Bearer realm="millstream"'})
                    return
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = render(server_self.registry.snapshot()).encode()
                    self._send(200, body, {"Content-Type": CONTENT_TYPE})
                elif path == "/":
                    self._send(200, b"millstream: metrics at /metrics\n")
                else:
                    self._send(404, b"not found: try /metrics\n")

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                hdrs = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store",
                        "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", **(headers or {})}
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics request: " + format, *args)

        family = ThreadingHTTPServer.address_family
        if ":" in host:
            import socket

            family = socket.AF_INET6

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = family

        try:
            self.httpd = Server((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        bound = self.httpd.server_address
        self.host, self.port = host, int(bound[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/metrics"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="millstream-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def serve_metrics(registry: MetricsRegistry, address: str, token: str | None = None) -> MetricsServer:
    """Serve ``registry`` on ``address`` ([HOST:]PORT, loopback by default). Any other address needs a
    token: ``token``, or one generated here and printed once to stderr."""
    host, port = parse_address(address)
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
        print(f"millstream: metrics on {host}:{port} need a token; this run's token (shown once): {token}\n"
              f"  scrape with the header  Authorization: Bearer {token}", file=sys.stderr, flush=True)
    server = MetricsServer(registry, host, port, TokenCheck(token))
    registry.endpoint = server.url
    log.info("metrics served at %s%s", server.url, " (token required)" if token else "")
    return server
