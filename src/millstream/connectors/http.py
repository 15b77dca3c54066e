"""HTTP: a sink that POSTs batches of JSON, and a webhook source that takes POSTed JSON.

``write(url)`` sends records in batches (a JSON array, or NDJSON), retrying connection
errors, 5xx and 429 (honouring ``Retry-After``) with backoff; a 4xx fails the job with the
status and the start of the response body. Batches still buffered are sent at every
checkpoint. A replay after a restart sends records again (``delivery == "none"``:
at-least-once).

``webhook(port=...)`` runs an HTTP server on 127.0.0.1 (by default) that takes POSTed JSON
(one object, an array of them, or NDJSON) and answers 200 once all records of the request
are in its bounded buffer, 429 with ``Retry-After`` when the buffer is full (backpressure),
400 for bad JSON. A client that got a 2xx is done, and records still in memory at a crash
are lost: ``replay == "none"``, at-most-once. See docs/connectors/http.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from millstream.connectors._base import Backoff
from millstream.connectors._codec import check_stop
from millstream.connectors._http import HttpSink, WebhookSource, _httpx
from millstream.errors import ConfigError

DEFAULT_BACKOFF = Backoff()

__all__ = ["HttpSink", "WebhookSource", "webhook", "write"]


def write(
    url: str,
    *,
    batch_size: int = 500,
    headers: Mapping[str, str] | None = None,
    timeout: float | timedelta = 10.0,
    backoff: Backoff = DEFAULT_BACKOFF,
    method: str = "POST",
    ndjson: bool = False,
    serializer: Callable[[Any], Any] | None = None,
    name: str = "http",
) -> HttpSink:
    """POST records to ``url`` in batches of ``batch_size``.

    - ``headers``: sent with every request, e.g. ``{"Authorization": "Bearer ..."}``; their values
      never appear in plans, errors or logs.
    - ``timeout``: per request (seconds or a timedelta).
    - ``backoff``: retries of connection errors, timeouts, 5xx and 429 (a ``Retry-After`` is
      honoured when longer than the backoff's wait); the job fails once ``budget_s`` is spent.
    - ``method``: ``"POST"`` (default) or ``"PUT"``.
    - ``ndjson``: send one JSON document per line (``application/x-ndjson``) instead of an array.
    - ``serializer``: ``fn(record) -> JSON-able value`` applied to each record first.
    """
    _httpx()
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"http.write needs an http:// or https:// URL, not {url!r:.80}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive int, not {batch_size!r}")
    if method.upper() not in ("POST", "PUT", "PATCH"):
        raise ConfigError(f"method must be 'POST', 'PUT' or 'PATCH', not {method!r}")
    hdrs = dict(headers or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in hdrs.items()):
        raise ConfigError("headers must map header names to string values")
    t = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if t <= 0:
        raise ConfigError(f"timeout must be > 0, not {timeout!r}")
    if serializer is not None and not callable(serializer):
        raise ConfigError(f"serializer must be a function of the record, not {serializer!r}")
    return HttpSink(url, method=method.upper(), batch_size=batch_size, headers=hdrs, timeout_s=t, backoff=backoff,
                    ndjson=bool(ndjson), serializer=serializer, name=name)


def webhook(
    *,
    port: int,
    host: str = "127.0.0.1",
    path: str = "/",
    max_buffered: int = 10_000,
    max_body_bytes: int = 16 * 1024 * 1024,
    token: str | None = None,
    max_records: int | None = None,
    idle_stop: float | timedelta | None = None,
    name: str = "webhook",
) -> WebhookSource:
    """An HTTP endpoint on ``host:port`` taking POSTed JSON at ``path``; an unbounded source.

    - ``port``: the port to listen on; ``0`` picks a free one (``source.url`` tells which, once the
      job runs).
    - ``host``: ``127.0.0.1`` by default; listen on other interfaces only behind a proxy you trust.
    - ``max_buffered``: records held until the job reads them; a request that would overflow it is
      answered 429 with ``Retry-After: 1`` and none of its records is taken.
    - ``max_body_bytes``: larger requests are answered 413.
    - ``token``: when set, requests must carry ``Authorization: Bearer <token>`` (compared in
      constant time); others get 401.
    - ``max_records`` / ``idle_stop``: end the source after that many records or that long without
      one (tests, demos).

    Bad JSON is answered 400 with the reason and counted (``bad_requests`` in the step's figures):
    the sender knows, so nothing is dropped silently and the source's error policy is not involved.
    """
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise ConfigError(f"webhook port must be 0..65535, not {port!r}")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"webhook path must start with '/', not {path!r}")
    if not isinstance(max_buffered, int) or max_buffered <= 0:
        raise ConfigError(f"max_buffered must be a positive int, not {max_buffered!r}")
    if not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
        raise ConfigError(f"max_body_bytes must be a positive int, not {max_body_bytes!r}")
    if token is not None and (not isinstance(token, str) or not token):
        raise ConfigError("token must be a non-empty string")
    max_records, idle_s = check_stop(max_records, idle_stop)
    return WebhookSource(host=host, port=port, path=path, max_buffered=max_buffered, max_body_bytes=max_body_bytes,
                         token=token, max_records=max_records, idle_stop=idle_s, name=name)
