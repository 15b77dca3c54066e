"""What the tests of ``/metrics`` share (test_metrics, test_dashboard): the Prometheus text format
read back into samples, ``promtool check metrics``, an HTTP endpoint for the http sink to post to,
and whether this machine can bind a non-loopback address."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
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


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` that has (at least) ``labels``."""
    found = [v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= lab]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def promtool_accepts(text: str) -> None:
    """``promtool check metrics`` passes ``text`` (skipped without promtool, failed under CI)."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("MILLSTREAM_REQUIRE_SERVICES") == "1":
            pytest.fail("promtool is missing (apt-get install -y prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    check = subprocess.run([path, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def any_address_available() -> bool:
    """Whether a socket can bind 0.0.0.0 here."""
    try:
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
        return True
    except OSError:
        return False


class _Accept(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def http_endpoint() -> Iterator[int]:
    """A loopback HTTP server that answers every POST with 200 (for the http sink); its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
