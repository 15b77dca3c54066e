"""The HTTP sink (httpx) and the webhook source (stdlib ThreadingHTTPServer), behind
:mod:`millstream.connectors.http`."""

from __future__ import annotations

import email.utils
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from millstream.connectors._base import (
    Backoff,
    Sink,
    SinkWriter,
    Source,
    SourceContext,
    SourceReader,
    redact_url,
)
from millstream.connectors._codec import StopCondition
from millstream.errors import ConnectorError, MissingDependencyError

log = logging.getLogger("millstream.connectors.http")

_SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token")


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise MissingDependencyError("httpx", "http", "the HTTP sink") from None
    return httpx


def is_secret_header(name: str) -> bool:
    n = name.lower()
    return n in _SECRET_HEADERS or any(s in n for s in ("token", "secret", "password", "key"))


# -- sink ----------------------------------------------------------------------------------------


class HttpSink(Sink):
    """POST batches of records as JSON (see :func:`millstream.connectors.http.write`)."""

    delivery = "none"

    def __init__(self, url: str, *, method: str, batch_size: int, headers: Mapping[str, str], timeout_s: float,
                 backoff: Backoff, ndjson: bool, serializer: Callable[[Any], Any] | None, name: str) -> None:
        self._url = url
        self.method = method
        self.batch_size = batch_size
        self._headers = dict(headers)
        self.timeout_s = timeout_s
        self.backoff = backoff
        self.ndjson = ndjson
        self.serializer = serializer
        self.name = name

    @property
    def address(self) -> str:
        return redact_url(self._url)

    def open(self, step: str) -> SinkWriter:
        return HttpWriter(self, step)

    def describe(self) -> str:
        fmt = "NDJSON" if self.ndjson else "JSON arrays"
        return f"http {self.method} {self.address} ({fmt} of {self.batch_size:,})"

    def default_name(self) -> str:
        return self.name


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _RedactUrls(logging.Filter):
    """httpx logs every request's full URL at INFO: strip passwords and secret query options."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact_url(str(a)) if type(a).__name__ == "URL" else a for a in record.args)
        return True


_REDACT = _RedactUrls()


class HttpWriter(SinkWriter):
    def __init__(self, sink: HttpSink, step: str) -> None:
        httpx = _httpx()
        httpx_log = logging.getLogger("httpx")
        if _REDACT not in httpx_log.filters:
            httpx_log.addFilter(_REDACT)
        self.httpx = httpx
        self.sink = sink
        self.what = f"http sink '{step}'"
        self.batch: list[Any] = []
        self.figures = {"requests": 0, "retries": 0, "records": 0}
        import orjson

        self.dumps = orjson.dumps
        content_type = "application/x-ndjson" if sink.ndjson else "application/json"
        self.client = httpx.Client(headers={"content-type": content_type, **sink._headers},
                                   timeout=sink.timeout_s, follow_redirects=False)

    def write(self, records: list[Any], times: list[int] | None) -> None:
        ser = self.sink.serializer
        self.batch.extend(records if ser is None else map(ser, records))
        size = self.sink.batch_size
        while len(self.batch) >= size:
            chunk, self.batch = self.batch[:size], self.batch[size:]
            self._send(chunk)

    def flush(self) -> None:
        """Send what is batched (at every checkpoint and at the end)."""
        if self.batch:
            chunk, self.batch = self.batch, []
            self._send(chunk)

    def _body(self, chunk: list[Any]) -> bytes:
        dumps = self.dumps
        if self.sink.ndjson:
            return b"".join(dumps(r) + b"\n" for r in chunk)
        return dumps(chunk)

    def _send(self, chunk: list[Any]) -> None:
        sink, httpx = self.sink, self.httpx
        body = self._body(chunk)
        backoff = sink.backoff
        started = time.monotonic()
        wait = backoff.initial_s
        attempt = 0
        while True:
            problem: str
            hint: float | None = None
            try:
                resp = self.client.request(sink.method, sink._url, content=body)
            except httpx.HTTPError as exc:  # connection refused, timeouts, broken connections
                problem = f"{type(exc).__name__}"
            else:
                self.figures["requests"] += 1
                status = resp.status_code
                if 200 <= status < 300:
                    self.figures["records"] += len(chunk)
                    return
                snippet = resp.content[:300].decode("utf-8", "replace")
                for name, value in sink._headers.items():  # a server may echo credentials back
                    if is_secret_header(name) and value:
                        snippet = snippet.replace(value, "***").replace(value.split(" ")[-1], "***")
                if status == 429 or status >= 500:
                    problem = f"HTTP {status}: {snippet[:120]}"
                    hint = _retry_after(resp.headers.get("retry-after"))
                else:
                    raise ConnectorError(
                        f"the server answered HTTP {status} to a batch of {len(chunk)} records: {snippet!r}",
                        connector=self.what, address=sink.address,
                        fix="check the URL, the credentials and what the endpoint accepts (a 4xx is not retried)")
            attempt += 1
            delay = max(wait, hint or 0.0)
            spent = time.monotonic() - started
            if spent + delay > backoff.budget_s:
                raise ConnectorError(
                    f"still failing after {attempt} tries over {spent:.1f}s: {problem}", connector=self.what,
                    address=sink.address,
                    fix="check that the endpoint is up, or raise the retry budget (backoff=Backoff(budget_s=...))")
            self.figures["retries"] += 1
            log.warning("%s at %s: %s; retry %d in %.2fs", self.what, sink.address, problem, attempt, delay)
            time.sleep(delay)
            wait = min(wait * 2, backoff.max_s)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.client.close()


# -- webhook source ------------------------------------------------------------------------------


class WebhookSource(Source):
    """An HTTP endpoint that takes POSTed JSON (see :func:`millstream.connectors.http.webhook`)."""

    replay = "none"

    def __init__(self, *, host: str, port: int, path: str, max_buffered: int, max_body_bytes: int,
                 token: str | None, max_records: int | None, idle_stop: float | None, name: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.max_buffered = max_buffered
        self.max_body_bytes = max_body_bytes
        self._token = token
        self.max_records, self.idle_stop = max_records, idle_stop
        self.bounded = max_records is not None or idle_stop is not None
        self.name = name
        #: the port actually bound (``port=0`` picks a free one), once the source is open
        self.bound_port: int | None = None

    @property
    def url(self) -> str:
        """The endpoint's URL (with the bound port once open)."""
        return f"http://{self.host}:{self.bound_port or self.port}{self.path}"

    def open(self, ctx: SourceContext) -> SourceReader:
        return WebhookReader(self, ctx)

    def describe(self) -> str:
        auth = ", bearer token" if self._token else ""
        return f"webhook POST {self.url} (buffer {self.max_buffered:,}{auth})"

    def default_name(self) -> str:
        return self.name


def parse_body(body: bytes, content_type: str) -> list[Any]:
    """One JSON value (an array gives its items), or NDJSON (one value per line). Raises ValueError."""
    import orjson

    text = body.strip()
    if not text:
        raise ValueError("empty body")
    if "ndjson" not in content_type and "jsonl" not in content_type:
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if b"\n" not in text:
                raise ValueError(f"invalid JSON: {exc}") from None
        else:
            return value if isinstance(value, list) else [value]
    out = []
    for n, line in enumerate(text.split(b"\n"), 1):
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON on line {n}: {exc}") from None
    return out


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the request log would show paths; stay quiet
        pass

    def _answer(self, status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        reader = self.server.reader
        src = reader.src
        length = self.headers.get("Content-Length")
        if self.path.split("?", 1)[0] != src.path:
            self._drain(length)
            return self._answer(404, {"error": f"no webhook at this path; POST to {src.path}"})
        if src._token is not None:
            given = self.headers.get("Authorization", "")
            expected = f"Bearer {src._token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                reader.count("unauthorized")
                self._drain(length)
                return self._answer(401, {"error": "missing or wrong bearer token"},
                                    {"WWW-Authenticate": "Bearer"})
        if length is None or not length.isdigit():
            self.close_connection = True
            return self._answer(411, {"error": "a Content-Length header is needed"})
        n = int(length)
        if n > src.max_body_bytes:
            reader.count("rejected")
            self.close_connection = True
            return self._answer(413, {"error": f"body of {n} bytes is over the limit of {src.max_body_bytes}"})
        body = self.rfile.read(n)
        try:
            records = parse_body(body, self.headers.get("Content-Type", ""))
        except ValueError as exc:
            reader.count("bad_requests")
            return self._answer(400, {"error": str(exc)})
        status, answer = reader.offer(records)
        if status == 429:
            return self._answer(429, answer, {"Retry-After": "1"})
        return self._answer(status, answer)

    def _drain(self, length: str | None) -> None:
        if length and length.isdigit() and int(length) <= self.server.reader.src.max_body_bytes:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def do_GET(self) -> None:
        self._answer(405, {"error": "POST JSON to this endpoint"}, {"Allow": "POST"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    reader: WebhookReader


class WebhookReader(SourceReader):
    """The server's threads put whole requests into ``buffer`` (all records of a request or none);
    ``poll`` takes them out."""

    def __init__(self, src: WebhookSource, ctx: SourceContext) -> None:
        self.src = src
        self.ctx = ctx
        self.buffer: deque[Any] = deque()
        self.lock = threading.Lock()
        self.figures = {"accepted": 0, "requests": 0, "bad_requests": 0, "rejected": 0, "backpressure": 0,
                        "unauthorized": 0}
        self.stop = StopCondition(src.max_records, src.idle_stop)
        try:
            self.server = _Server((src.host, src.port), _Handler)
        except OSError as exc:
            raise ConnectorError(f"cannot listen: {exc}", connector=f"webhook source '{ctx.step}'",
                                 address=f"{src.host}:{src.port}",
                                 fix="choose a free port (port=0 picks one; see source.url)") from None
        self.server.reader = self
        src.bound_port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name=f"webhook-{ctx.step}", daemon=True)
        self.thread.start()
        log.info("webhook source '%s' listening on %s", ctx.step, src.url)

    def count(self, what: str) -> None:
        with self.lock:
            self.figures[what] += 1

    def offer(self, records: list[Any]) -> tuple[int, dict[str, Any]]:
        """Take every record of a request into the buffer, or none (full: 429 with Retry-After)."""
        n = len(records)
        with self.lock:
            self.figures["requests"] += 1
            if n > self.src.max_buffered:
                self.figures["rejected"] += 1
                return 413, {"error": f"{n} records in one request; at most {self.src.max_buffered}"}
            if len(self.buffer) + n > self.src.max_buffered:
                self.figures["backpressure"] += 1
                return 429, {"error": "buffer full, retry later"}
            self.buffer.extend(records)
            self.figures["accepted"] += n
        return 200, {"accepted": n}

    def poll(self, max_records: int) -> list[Any] | None:
        n = self.stop.room(max_records)
        with self.lock:
            buf = self.buffer
            k = min(n, len(buf))
            out = [buf.popleft() for _ in range(k)]
        self.stop.took(len(out))
        if not out and (n == 0 or (self.stop.active and self.stop.ended())):
            return None
        return out

    def metrics(self) -> dict[str, int]:
        with self.lock:
            return {**self.figures, "buffered": len(self.buffer)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

