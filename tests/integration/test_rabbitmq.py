"""RabbitMQ connector against the shared broker (127.0.0.1:5672, guest/guest); one queue per test."""

from __future__ import annotations

import json
import logging
import pickle
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration import _ack_cases as acks
from tests.integration import services

import millstream as ms
from millstream.connectors._base import SourceContext
from millstream.errors import ConfigError, ConnectorError, MissingDependencyError, RecordError
from millstream.testing import ManualClock

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture
def channel() -> Iterator[Any]:
    services.need_module("pika", "rabbitmq")
    services.require("rabbitmq")
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    yield ch
    conn.close()


@pytest.fixture
def queue(channel: Any) -> Iterator[str]:
    name = services.unique("ms_q")
    channel.queue_declare(name, durable=False)
    yield name
    channel.queue_delete(name)


def ready(channel: Any, queue: str) -> int:
    """Messages ready in the queue (not delivered, or delivered and put back)."""
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def publish(channel: Any, queue: str, payloads: list[bytes], ids: bool = True) -> None:
    import pika

    for i, p in enumerate(payloads):
        channel.basic_publish("", queue, p, pika.BasicProperties(message_id=str(i) if ids else None))


@pytest.mark.parametrize("mode", ["native", "microbatch", "batch"])
def test_round_trip_through_flows(channel: Any, queue: str, mode: str) -> None:
    n = 3_000
    out_flow = ms.Flow("rmq-out")
    out_flow.source(ms.connectors.memory.read([{"i": i} for i in range(n)])).sink(
        ms.connectors.rabbitmq.write(routing_key=queue, message_id="i"))
    out_flow.run(mode=mode)  # returns once the broker confirmed every message
    assert ready(channel, queue) == n
    got = ms.connectors.memory.write()
    flow = ms.Flow("rmq-in")
    flow.source(ms.connectors.rabbitmq.read(queue, max_records=n, idle_stop=10,
                                            metadata=("routing_key", "message_id", "redelivered"))).sink(got)
    flow.run(mode=mode)
    assert sorted(r["i"] for r in got.values) == list(range(n))
    assert all(r["_message_id"] == str(r["i"]) and r["_routing_key"] == queue and not r["_redelivered"]
               for r in got.values)
    assert ready(channel, queue) == 0


def test_docs_example(channel: Any, tmp_path: Path) -> None:
    """The example of docs/connectors/rabbitmq.md (with queue names unique to this run)."""
    orders_q, alerts_q = services.unique("orders"), services.unique("big_orders")
    try:
        import tempfile

        import pika

        import millstream as ms
        from millstream.connectors import rabbitmq

        URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
        admin = pika.BlockingConnection(pika.URLParameters(URL)).channel()
        for q in (orders_q, alerts_q):
            admin.queue_declare(q, durable=True)

        # some orders, each with an AMQP message_id (the record's "id")
        shop = ms.Flow("shop")
        shop.source(ms.connectors.memory.read([{"id": i, "amount": i * 100} for i in range(10)])).sink(
            rabbitmq.write(routing_key=orders_q, message_id="id"))
        shop.run()  # returns once the broker confirmed every message

        # big orders to another queue; acknowledged after each checkpoint, redeliveries dropped by id
        flow = ms.Flow("big-orders")
        orders = flow.source(rabbitmq.read(orders_q, dedup_by="message_id", idle_stop=1.0))
        orders.filter(ms.col("amount") >= 700).sink(rabbitmq.write(routing_key=alerts_q, message_id="id"))
        flow.run(guarantee="at-least-once", checkpoint_dir=tempfile.mkdtemp())

        print(admin.queue_declare(alerts_q, passive=True).method.message_count)  # 3
        assert admin.queue_declare(alerts_q, passive=True).method.message_count == 3
        assert admin.queue_declare(orders_q, passive=True).method.message_count == 0
    finally:
        channel.queue_delete(orders_q)
        channel.queue_delete(alerts_q)
        admin.connection.close()


def test_ack_only_after_checkpoint(channel: Any, queue: str, tmp_path: Path) -> None:
    """A job that read everything but completed no checkpoint acknowledged nothing: killed, its
    deliveries go back to the queue; the rerun processes each once."""
    n = 500
    publish(channel, queue, [json.dumps({"i": i}).encode() for i in range(n)])
    marker = tmp_path / "read-all"
    script = _job_script(tmp_path, queue, n, interval_ms=600_000, marker=marker)
    ck, out = tmp_path / "ck", tmp_path / "out"

    def all_delivered_none_acknowledged() -> None:  # the broker holds them
        assert ready(channel, queue) == 0

    acks.kill_once_all_is_read(script, marker, ck, out, while_held=all_delivered_none_acknowledged)
    deadline = time.monotonic() + 5
    while ready(channel, queue) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready(channel, queue) == n  # the broker put every unacknowledged delivery back
    acks.run_to_the_end(script, ck, out)
    assert acks.committed_ids(out) == list(range(n))
    assert ready(channel, queue) == 0


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_kill_between_commit_and_acknowledge(mode: str, channel: Any, queue: str, tmp_path: Path) -> None:
    """Killed after a checkpoint committed its output, before the ack: the redelivered messages of
    that checkpoint are dropped by message id (dedup_by), so nothing is doubled."""
    n = 1_000
    publish(channel, queue, [json.dumps({"i": i}).encode() for i in range(n)])
    script = _job_script(tmp_path, queue, n, interval_ms=30, slow_s=0.001, mode=mode)
    acks.kill_at_the_third_acknowledge_then_resume(script, tmp_path / "ck", tmp_path / "out", n)


def test_sigkill_exactly_once(channel: Any, queue: str, tmp_path: Path) -> None:
    """SIGKILL at random moments, restart until done: exactly once with dedup_by + a transactional sink."""
    n = 3_000
    publish(channel, queue, [json.dumps({"i": i}).encode() for i in range(n)])
    script = _job_script(tmp_path, queue, n, interval_ms=40, slow_s=0.002)  # >= 6 s of sleeps in all
    acks.sigkill_until_done(script, tmp_path / "ck", tmp_path / "out", n)
    assert ready(channel, queue) == 0


def _job_script(tmp: Path, queue: str, n: int, **how: Any) -> str:
    """The job of :func:`acks.script_job` reading ``queue``, deduplicated by message id (``how``: its keywords)."""
    source = f"ms.connectors.rabbitmq.read({queue!r}, max_records={n}, dedup_by='message_id')"
    return acks.script_job(tmp, "rmq-kill", source, n, **how)


def test_connection_lost_mid_run_exactly_once(channel: Any, queue: str, tmp_path: Path) -> None:
    """The connection dies twice while the job runs (a proxy cuts it): the reader reconnects, the
    broker requeues what was not acknowledged, and the reader drops by message id what it had
    handed out already, so each message counts once."""
    n = 3_000
    publish(channel, queue, [json.dumps({"i": i}).encode() for i in range(n)])
    proxy = services.Proxy(0, 5672)
    # the broker notices a cut connection whose socket it was blocked writing to only by missed heartbeats
    # (after 30 s by default): a 1 s heartbeat brings the requeue of its deliveries within a few seconds
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F?heartbeat=1"
    src = ms.connectors.rabbitmq.read(queue, url=url, max_records=n, dedup_by="message_id", prefetch=500)
    extra, got = acks.run_cutting_at(src, proxy, (700, 1_900), tmp_path / "ck")
    assert got == list(range(n)), (extra, len(got), len(set(got)))
    # both cuts forced a reconnect (the job needed the messages after them); whether the broker's requeued
    # copies came back before the job ended, to be dropped, depends on timing: the output above is the check
    assert extra["reconnects"] == 2
    # a dead connection's deliveries the broker put back only after the job ended are copies of
    # processed messages (redelivered), never new ones
    time.sleep(0.5)
    while True:
        method, _, _ = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        assert method.redelivered


# -- policies, errors, secrets ------------------------------------------------------------------------


def test_bad_records_under_each_policy(channel: Any, queue: str) -> None:
    def run(on_error: Any) -> list[Any]:
        publish(channel, queue, [b'{"i": 1}', b"{not json", b'{"i": 3}'])
        got = ms.connectors.memory.write()
        flow = ms.Flow("bad")
        flow.source(ms.connectors.rabbitmq.read(queue, on_error=on_error, max_records=2, idle_stop=3)).sink(got)
        flow.run()
        return got.values

    with pytest.raises(RecordError) as info:
        run("fail")
    assert info.value.position.startswith(f"{queue}#2")
    channel.queue_purge(queue)
    assert run("skip") == [{"i": 1}, {"i": 3}]
    dead = ms.connectors.memory.write()
    assert run(ms.connectors.dead_letter(dead)) == [{"i": 1}, {"i": 3}]
    assert [d["raw"] for d in dead.values] == ["{not json"]
    assert ready(channel, queue) == 0  # a bad message is acknowledged with the rest


def test_missing_queue_and_unroutable_fail_clearly(channel: Any) -> None:
    missing = services.unique("missing")
    flow = ms.Flow("missing")
    flow.source(ms.connectors.rabbitmq.read(missing, idle_stop=1)).sink(ms.connectors.memory.write())
    with pytest.raises(ConnectorError, match=f"declare the queue '{missing}'"):
        flow.run()
    flow = ms.Flow("unroutable")
    flow.source(ms.connectors.memory.read([{"a": 1}])).sink(ms.connectors.rabbitmq.write(routing_key=missing))
    with pytest.raises(ConnectorError, match="could not be routed"):
        flow.run()


def test_secrets_never_leak(channel: Any, queue: str, caplog: pytest.LogCaptureFixture) -> None:
    secret = "hunter2-Rabbit-secret"
    caplog.set_level(logging.DEBUG)
    bad_url = f"amqp://guest:{secret}@127.0.0.1:5672/%2F"
    src = ms.connectors.rabbitmq.read(queue, url=bad_url, backoff=ms.connectors.Backoff(budget_s=0.5))
    sink = ms.connectors.rabbitmq.write(routing_key=queue, url=bad_url)
    assert secret not in src.describe() and secret not in sink.describe()
    with pytest.raises(ConnectorError) as info:  # wrong password: refused, not retried
        src.open(SourceContext(step="s", clock=ManualClock(), policy="fail"))
    assert "refused the login" in str(info.value) and secret not in str(info.value)
    down = ms.connectors.rabbitmq.read(queue, url=f"amqp://guest:{secret}@127.0.0.1:{services.free_port()}/%2F",
                                       backoff=ms.connectors.Backoff(initial_s=0.05, budget_s=0.3))
    with pytest.raises(ConnectorError) as info:  # nothing listens: retried, then fails
        down.open(SourceContext(step="s", clock=ManualClock(), policy="fail"))
    assert "tries" in str(info.value) and secret not in str(info.value)
    publish(channel, queue, [b'{"a": 1}'])
    reader = ms.connectors.rabbitmq.read(queue, dedup_by="message_id").open(
        SourceContext(step="s", clock=ManualClock(), policy="fail", checkpointed=True))
    try:
        deadline = time.monotonic() + 5
        while not reader.poll(10) and time.monotonic() < deadline:
            time.sleep(0.02)
        snap = reader.snapshot()
        assert b"guest" not in pickle.dumps(snap)
        reader.acknowledge(snap)
        reader.acknowledge(snap)  # idempotent: a second multiple-ack of the same tag would close the channel
        assert reader.poll(10) == []
    finally:
        reader.close()
    assert secret not in caplog.text


def test_options_checked_when_declared() -> None:
    with pytest.raises(ConfigError, match="routing_key"):
        ms.connectors.rabbitmq.write()
    with pytest.raises(ConfigError, match="prefetch"):
        ms.connectors.rabbitmq.read("q", prefetch=0)
    with pytest.raises(ConfigError, match="amqp://"):
        ms.connectors.rabbitmq.read("q", url="http://x")


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pika", None)
    with pytest.raises(MissingDependencyError, match=r"millstream\[rabbitmq\]"):
        ms.connectors.rabbitmq.read("q")
    with pytest.raises(MissingDependencyError, match=r"millstream\[rabbitmq\]"):
        ms.connectors.rabbitmq.write(routing_key="q")


def test_unchecked_run_acknowledges_as_it_goes(channel: Any, queue: str) -> None:
    """Without checkpoints the reader acknowledges what the job processed (prefetch would stall it
    otherwise): 3 x prefetch messages go through and the queue ends empty."""
    publish(channel, queue, [json.dumps({"i": i}).encode() for i in range(300)])
    got = ms.connectors.memory.write()
    flow = ms.Flow("plain")
    flow.source(ms.connectors.rabbitmq.read(queue, prefetch=100, idle_stop=1.0)).sink(got)
    flow.run()
    assert len(got.values) == 300 and ready(channel, queue) == 0
