"""MQTT connector against a private Mosquitto (started by PID on a free loopback port).

The shared broker (127.0.0.1:1883) keeps at most 1,000 queued QoS 1 messages per client and
drops the rest (see /work/shared/SERVICES.md): delivery tests use a private broker with
``max_queued_messages 0`` and ``max_inflight_messages 0``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration import _ack_cases as acks
from tests.integration import services

import millstream as ms
from millstream.connectors._base import SourceContext
from millstream.errors import ConfigError, ConnectorError, GuaranteeError, MissingDependencyError, RecordError
from millstream.testing import ManualClock


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    services.need_module("paho.mqtt", "mqtt")
    binary = services.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        services.unavailable("mosquitto is not installed (apt-get install mosquitto)")
    assert binary is not None
    d = tmp_path_factory.mktemp("mosquitto")
    port = services.free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\n")
    log = open(d / "mosquitto.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        services.wait_port("127.0.0.1", port, 10, proc)
        yield "127.0.0.1", port
    finally:
        services.stop(proc)
        log.close()


def _client(port: int, client_id: str = "", clean_start: bool = True, expiry: int = 0) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry
    c.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
    c.loop_start()
    return c


def make_session(port: int, client_id: str, topic: str) -> None:
    """Create the persistent session (subscribed at QoS 1) so that messages queue for it."""
    c = _client(port, client_id, clean_start=True, expiry=3600)
    c.subscribe(topic, qos=1)[1]
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


def drop_session(port: int, client_id: str) -> None:
    c = _client(port, client_id, clean_start=True, expiry=0)
    time.sleep(0.05)
    c.disconnect()
    c.loop_stop()


def publish(port: int, topic: str, payloads: list[bytes]) -> None:
    c = _client(port)
    infos = [c.publish(topic, p, qos=1) for p in payloads]
    for i in infos:
        i.wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def session(broker: tuple[str, int]) -> Iterator[tuple[int, str, str]]:
    """A fresh topic and a persistent session subscribed to it; removed afterwards."""
    port = broker[1]
    topic = services.unique("ms/t")
    client_id = services.unique("cid")
    make_session(port, client_id, topic)
    yield port, topic, client_id
    drop_session(port, client_id)


@pytest.mark.parametrize("mode", ["native", "microbatch", "batch"])
def test_round_trip_through_flows(session: tuple[int, str, str], mode: str) -> None:
    port, topic, cid = session
    n = 2_000
    out_flow = ms.Flow("mqtt-out")
    out_flow.source(ms.connectors.memory.read([{"i": i} for i in range(n)])).sink(
        ms.connectors.mqtt.write(topic, port=port))
    out_flow.run(mode=mode)  # returns once every PUBACK came
    got = ms.connectors.memory.write()
    flow = ms.Flow("mqtt-in")
    flow.source(ms.connectors.mqtt.read(topic, port=port, client_id=cid, max_records=n, idle_stop=10,
                                        metadata=("topic", "qos"))).sink(got)
    flow.run(mode=mode)
    assert sorted(r["i"] for r in got.values) == list(range(n))
    assert {(r["_topic"], r["_qos"]) for r in got.values} == {(topic, 1)}


def test_docs_example(broker: tuple[str, int]) -> None:
    """The example of docs/connectors/mqtt.md, on the private broker (its port, a unique topic and id)."""
    port = broker[1]
    prefix, cid = services.unique("sensors"), services.unique("hot-rooms")
    try:
        import tempfile

        import millstream as ms
        from millstream.connectors import mqtt

        out, ck = tempfile.mkdtemp(), tempfile.mkdtemp()

        def job() -> ms.Flow:
            flow = ms.Flow("hot-rooms")
            readings = flow.source(mqtt.read(f"{prefix}/+/temp", client_id=cid, metadata=("topic",),
                                             idle_stop=2.0, port=port))
            readings.filter(ms.col("t") > 22).sink(ms.connectors.files.write(out, transactional=True))
            return flow

        job().run()  # nothing published yet: this run only subscribes, and the session stays on the broker

        publisher = ms.Flow("publish")
        publisher.source(ms.connectors.memory.read([{"room": "kitchen", "t": 20 + i} for i in range(5)])).sink(
            mqtt.write(lambda r: f"{prefix}/{r['room']}/temp", port=port))
        publisher.run()  # returns once the broker acknowledged every message (QoS 1)

        job().run(guarantee="exactly-once", checkpoint_dir=ck)
        rows = ms.connectors.files.read_committed(out)
        assert sorted(r["t"] for r in rows) == [23, 24]
        assert {r["_topic"] for r in rows} == {f"{prefix}/kitchen/temp"}
    finally:
        # what the docs say removes the session: one run with clean_start=True
        gone = ms.Flow("forget")
        gone.source(ms.connectors.mqtt.read(f"{prefix}/+/temp", client_id=cid, clean_start=True, idle_stop=0.2,
                                            port=port)).sink(ms.connectors.memory.write())
        gone.run()


def test_no_puback_before_checkpoint_then_resume(session: tuple[int, str, str], tmp_path: Path) -> None:
    """A job reads every message but no checkpoint completes before it is killed: nothing was
    acknowledged, so the broker redelivers everything, and a rerun produces all of it once."""
    port, topic, cid = session
    n = 300
    publish(port, topic, [json.dumps({"i": i}).encode() for i in range(n)])
    marker = tmp_path / "read-all"
    script = _job_script(tmp_path, port, topic, cid, n, interval_ms=600_000, marker=marker)
    ck, out = tmp_path / "ck", tmp_path / "out"
    acks.kill_once_all_is_read(script, marker, ck, out)
    assert ms.connectors.files.read_committed(out) == []
    # rerun, without a kill: the broker redelivers what was never acknowledged
    acks.run_to_the_end(script, ck, out)
    assert acks.committed_ids(out) == list(range(n))


@pytest.mark.streaming("kills a job reading a live session")
def test_sigkill_exactly_once(session: tuple[int, str, str], tmp_path: Path) -> None:
    """SIGKILL a checkpointing job at random moments: redelivery + dedup of what the restored
    checkpoint covers + a transactional sink give each message exactly once."""
    port, topic, cid = session
    n = 3_000
    publish(port, topic, [json.dumps({"i": i}).encode() for i in range(n)])
    script = _job_script(tmp_path, port, topic, cid, n, interval_ms=40, slow_s=0.002)  # >= 6 s of sleeps in all
    acks.sigkill_until_done(script, tmp_path / "ck", tmp_path / "out", n)


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_kill_between_commit_and_acknowledge(mode: str, session: tuple[int, str, str], tmp_path: Path) -> None:
    """Killed after a checkpoint committed its output but before the PUBACKs went out: the broker
    redelivers that checkpoint's messages, and the reader drops them (their packet ids and
    fingerprints are in the restored position), so nothing is doubled."""
    port, topic, cid = session
    n = 1_000
    publish(port, topic, [json.dumps({"i": i}).encode() for i in range(n)])
    script = _job_script(tmp_path, port, topic, cid, n, interval_ms=30, slow_s=0.001, mode=mode)
    acks.kill_at_the_third_acknowledge_then_resume(script, tmp_path / "ck", tmp_path / "out", n)


def _job_script(tmp: Path, port: int, topic: str, cid: str, n: int, **how: Any) -> str:
    """The job of :func:`acks.script_job` reading the session ``cid`` (``how``: its keywords)."""
    source = f"ms.connectors.mqtt.read({topic!r}, port={port}, client_id={cid!r}, max_records={n})"
    return acks.script_job(tmp, "mqtt-kill", source, n, **how)


def test_connection_lost_mid_run_exactly_once(session: tuple[int, str, str], tmp_path: Path) -> None:
    """The connection dies twice while the job runs (a proxy cuts it): paho reconnects to the same
    session, the broker resends what had no PUBACK, and the reader drops what it had handed out
    already (pending, or acknowledged just before the cut), so each message counts once."""
    port, topic, cid = session
    n = 2_000
    publish(port, topic, [json.dumps({"i": i}).encode() for i in range(n)])
    proxy = services.Proxy(0, port)

    def reconnected() -> None:
        # hold this record until paho has reconnected through the proxy, so that the reconnect happens
        # while the job still runs (else a fast job can end first and nothing is shown)
        deadline = time.monotonic() + 15
        while not proxy.conns and time.monotonic() < deadline:
            time.sleep(0.01)

    src = ms.connectors.mqtt.read(topic, port=proxy.port, client_id=cid, max_records=n)
    extra, got = acks.run_cutting_at(src, proxy, (500, 1_300), tmp_path / "ck", after_cut=reconnected)
    dups = sorted(k for k, c in Counter(got).items() if c > 1)
    assert got == list(range(n)), (extra, len(got), dups[:20], sorted(set(range(n)) - set(got))[:20])
    # the reader reconnected to the same session (whether the broker's resends were ones already handed
    # out, and so dropped, depends on timing: the exactly-once output above is the property)
    assert extra["reconnects"] >= 1 and extra["session_lost"] == 0


# -- policies, guarantees, secrets -------------------------------------------------------------------


def test_bad_records_under_each_policy(session: tuple[int, str, str]) -> None:
    port, topic, cid = session
    payloads = [b'{"i": 1}', b"{not json", b'{"i": 3}']

    def run(on_error: Any) -> list[Any]:
        publish(port, topic, payloads)
        got = ms.connectors.memory.write()
        flow = ms.Flow("bad")
        flow.source(ms.connectors.mqtt.read(topic, port=port, client_id=cid, on_error=on_error, max_records=2,
                                            idle_stop=3)).sink(got)
        flow.run()
        return got.values

    with pytest.raises(RecordError) as info:
        run("fail")
    assert topic in info.value.position and "#" in info.value.position
    drop_session(port, cid)  # the failed job left the rest of the messages unacknowledged
    make_session(port, cid, topic)
    assert run("skip") == [{"i": 1}, {"i": 3}]
    dead = ms.connectors.memory.write()
    assert run(ms.connectors.dead_letter(dead)) == [{"i": 1}, {"i": 3}]
    assert [(d["raw"], d["position"].split("#")[0]) for d in dead.values] == [("{not json", topic)]


def test_qos0_cannot_replay(broker: tuple[str, int]) -> None:
    src = ms.connectors.mqtt.read("x/y", port=broker[1], qos=0)
    assert src.replay == "none"
    assert ms.connectors.mqtt.read("x/y", port=broker[1], client_id="c", clean_start=True).replay == "none"
    assert ms.connectors.mqtt.read("x/y", port=broker[1], client_id="c").replay == "redelivery"
    flow = ms.Flow("q0")
    flow.source(src).sink(ms.connectors.memory.write())
    with pytest.raises(GuaranteeError, match="mqtt"):
        flow.run(guarantee="at-least-once", checkpoint_dir="/nonexistent-not-used")


def test_options_checked_when_declared() -> None:
    with pytest.raises(ConfigError, match="client_id"):
        ms.connectors.mqtt.read("a/b")
    with pytest.raises(ConfigError, match="qos"):
        ms.connectors.mqtt.read("a/b", client_id="c", qos=2)
    with pytest.raises(ConfigError, match="metadata"):
        ms.connectors.mqtt.read("a/b", client_id="c", metadata=("partition",))
    with pytest.raises(ConfigError, match="wildcards"):
        ms.connectors.mqtt.write("a/#")


def test_secrets_never_leak(session: tuple[int, str, str], caplog: pytest.LogCaptureFixture) -> None:
    port, topic, cid = session
    secret = "hunter2-mqtt-Secret"
    caplog.set_level(logging.DEBUG)
    src = ms.connectors.mqtt.read(topic, port=port, client_id=cid, username="me", password=secret, max_records=1)
    sink = ms.connectors.mqtt.write(topic, port=port, username="me", password=secret)
    assert secret not in src.describe() and secret not in sink.describe()
    publish(port, topic, [b'{"a": 1}'])
    reader = src.open(SourceContext(step="s", clock=ManualClock(), policy="fail", checkpointed=True))
    try:
        deadline = time.monotonic() + 5
        while not reader.poll(10) and time.monotonic() < deadline:
            time.sleep(0.02)
        snap = reader.snapshot()
        reader.acknowledge(snap)
        assert secret.encode() not in pickle.dumps(snap)
    finally:
        reader.close()
    dead = ms.connectors.mqtt.read(topic, port=services.free_port(), client_id=cid, username="me", password=secret)
    with pytest.raises(ConnectorError) as info:
        dead.open(SourceContext(step="s", clock=ManualClock(), policy="fail"))
    assert secret not in str(info.value)
    assert secret not in caplog.text


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "paho", None)
    monkeypatch.setitem(sys.modules, "paho.mqtt", None)
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)
    with pytest.raises(MissingDependencyError, match=r"millstream\[mqtt\]"):
        ms.connectors.mqtt.read("a/b", client_id="c")
    with pytest.raises(MissingDependencyError, match=r"millstream\[mqtt\]"):
        ms.connectors.mqtt.write("a/b")


def test_unchecked_run_acknowledges_as_it_goes(session: tuple[int, str, str]) -> None:
    """Without checkpoints nothing calls acknowledge: the reader acks what the job processed, so a
    second run does not see the messages again."""
    port, topic, cid = session
    publish(port, topic, [json.dumps({"i": i}).encode() for i in range(50)])
    for expected in (50, 0):
        got = ms.connectors.memory.write()
        flow = ms.Flow("plain")
        flow.source(ms.connectors.mqtt.read(topic, port=port, client_id=cid, idle_stop=1.0)).sink(got)
        flow.run()
        assert len(got.values) == expected
