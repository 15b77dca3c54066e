"""The broker goes away mid-run, end to end through ``flow.run`` (issue 9, section 4).

A loopback proxy (services.Proxy) stands between the job and the broker (a private tansu that
advertises the proxy's port; the shared Redis). The test drops it while the job runs: every
connection is cut and new ones are refused. Then either it comes back after a while, and the job
must retry (a warning in the log, a ``retries`` figure in the run's result) and finish with every
record exactly once; or it never comes back, and the job must fail with a ConnectorError that says
it is still failing after the retry budget, within that budget. (tansu forgets everything when it
stops, so an outage is made with the proxy, not by restarting the broker.)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration import services
from tests.integration.services import Proxy

import millstream as ms
from millstream.connectors import Backoff
from millstream.errors import ConnectorError
from millstream.testing import CollectSink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
N = 4_000


def _retries(result: Any) -> int:
    return sum(int(s.extra.get("retries", 0) or 0) for s in result.steps)


def _dropper(proxy: Proxy, at: int, back_after: float | None) -> Any:
    """A map that cuts the connection when the ``at``-th record passes, and restores it ``back_after`` s later."""
    seen = [0]

    def step(r: Any) -> Any:
        seen[0] += 1
        if seen[0] == at:
            proxy.drop()
            if back_after is not None:
                threading.Timer(back_after, proxy.restore).start()
        return r

    return step


def _retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "retry" in r.getMessage()]


# -- Kafka ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def kafka_proxied(tmp_path: Path) -> Iterator[tuple[str, Proxy, str]]:
    """(bootstrap through the proxy, proxy, a 4-partition topic holding N records ``{"i": i}``)."""
    services.need_module("confluent_kafka", "kafka")
    from confluent_kafka import Producer

    from millstream.connectors import kafka

    with services.tansu_behind_proxy(str(tmp_path)) as (via, _direct, proxy):
        topic = services.unique("outage")
        kafka.create_topic(via, topic, partitions=4)
        _fill(Producer({"bootstrap.servers": via, "linger.ms": 5}), topic)
        yield via, proxy, topic


def _fill(producer: Any, topic: str) -> None:
    for i in range(N):
        producer.produce(topic, json.dumps({"i": i}).encode(), partition=i % 4)
    assert producer.flush(30) == 0


# small fetches, so that the reader still needs the broker after the drop
SMALL_FETCH = {"max.partition.fetch.bytes": 1_024, "fetch.max.bytes": 4_096, "message.max.bytes": 4_096,
               "queued.max.messages.kbytes": 4}


# A consumer group too: the cut may meet a checkpoint's offset commit, which must not hold the job
# (test_kafka_offset_commit_never_blocks_the_job).
@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_kafka_outage_is_retried_and_resumes(kafka_proxied: tuple[str, Proxy, str], mode: str, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    from millstream.connectors import kafka

    via, proxy, topic = kafka_proxied
    caplog.set_level(logging.WARNING)
    out = CollectSink()
    flow = ms.Flow("kafka-outage")
    src = kafka.read(topic, bootstrap=via, bounded=True, config=SMALL_FETCH, backoff=Backoff(0.1, 0.5, 30),
                     group=services.unique("g"))
    flow.source(src).map(_dropper(proxy, 500, 2.0)).sink(out)
    t0 = time.monotonic()
    result = flow.run(mode=mode, guarantee="at-least-once", checkpoint_dir=str(tmp_path / "ck"), max_chunk=100,
                      checkpoint_interval=100)
    assert time.monotonic() - t0 >= 1.5  # it waited for the broker
    assert sorted(r["i"] for r in out.values) == list(range(N))  # nothing lost, nothing repeated
    assert _retries(result) > 0, result.summary()
    assert _retry_warnings(caplog), [r.getMessage() for r in caplog.records]


def test_kafka_gone_for_good_fails_after_the_budget(kafka_proxied: tuple[str, Proxy, str]) -> None:
    from confluent_kafka import Producer

    from millstream.connectors import kafka

    via, proxy, _ = kafka_proxied
    # A fetch returns at least one whole message batch whatever its size limits: with the fixture's
    # batches (linger 5 ms, about one per partition) the reader could hold every record before the
    # drop, never need the broker again and finish cleanly (1 run in ~25). Batches of 20 records and
    # a drop at the first record leave most of the topic on the broker.
    topic = services.unique("gone")
    kafka.create_topic(via, topic, partitions=4)
    _fill(Producer({"bootstrap.servers": via, "linger.ms": 5, "batch.num.messages": 20}), topic)
    flow = ms.Flow("kafka-gone")
    flow.source(kafka.read(topic, bootstrap=via, bounded=True, config=SMALL_FETCH,
                           backoff=Backoff(0.1, 0.3, 1.5))).map(_dropper(proxy, 1, None)).sink(CollectSink())
    t0 = time.monotonic()
    with pytest.raises(ConnectorError, match="still failing") as err:
        flow.run()
    assert time.monotonic() - t0 < 20
    text = str(err.value)
    assert "kafka" in text.lower() and via in text, text
    assert "retry budget" in text or "reachable" in text, text


def test_kafka_offset_commit_never_blocks_the_job(kafka_proxied: tuple[str, Proxy, str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The broker goes away just before a checkpoint's offsets are committed to the consumer group.
    The commit is asynchronous, as in Flink's Kafka source (millstream's checkpoints hold the offsets
    a restart resumes from): acknowledging returns at once, the failure is logged and counted, closing
    during the outage is bounded, and once the broker is back the next acknowledgement commits."""
    from confluent_kafka import Consumer, TopicPartition

    from millstream._clock import SystemClock
    from millstream.connectors import SourceContext, kafka

    via, proxy, topic = kafka_proxied
    caplog.set_level(logging.WARNING)
    group = services.unique("g")

    def open_reader() -> Any:
        return kafka.read(topic, bootstrap=via, bounded=True, group=group, config={"session.timeout.ms": 6_000},
                          backoff=Backoff(0.1, 0.3, 30)).open(SourceContext(step="k", clock=SystemClock(),
                                                                            policy="fail"))

    def read(reader: Any, n: int) -> int:
        got = 0
        deadline = time.monotonic() + 30
        while got < n and time.monotonic() < deadline:
            got += len(reader.poll(100) or [])
        return got

    reader = open_reader()
    try:
        assert read(reader, 100) >= 100
        position = reader.snapshot()
        proxy.drop()
        t0 = time.monotonic()
        reader.acknowledge(position)  # returns at once: nothing waits for the broker
        assert time.monotonic() - t0 < 0.5
    finally:
        t0 = time.monotonic()
        reader.close()  # bounded while the broker is gone
        assert time.monotonic() - t0 < 10
    proxy.restore()
    # back: a new reader (as after a restart) commits what it acknowledges, and the group shows it
    reader = open_reader()
    try:
        assert read(reader, 200) >= 200
        position = reader.snapshot()
        reader.acknowledge(position)
        deadline = time.monotonic() + 30
        while reader.metrics().get("commits", 0) == 0 and time.monotonic() < deadline:
            reader.poll(1)
        assert reader.metrics()["commits"] >= 1, reader.metrics()
    finally:
        reader.close()
    offsets = {name: off for name, off in position["offsets"].items() if off is not None}
    check = Consumer({"bootstrap.servers": via, "group.id": group, "enable.auto.commit": False})
    try:
        got = check.committed([TopicPartition(topic, int(name.rpartition("[")[2][:-1])) for name in offsets],
                              timeout=20)
    finally:
        check.close()
    assert sum(tp.offset for tp in got if tp.offset >= 0) == sum(offsets.values()), (got, offsets)


def test_kafka_sink_outage_is_retried(kafka_proxied: tuple[str, Proxy, str], tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    from millstream.connectors import kafka

    via, proxy, _topic = kafka_proxied
    caplog.set_level(logging.WARNING)
    target = services.unique("outage_out")
    kafka.create_topic(via, target, partitions=2)
    flow = ms.Flow("kafka-sink-outage")
    flow.source(ms.connectors.memory.read([{"i": i} for i in range(N)])).map(_dropper(proxy, 1_500, 2.0)).sink(
        kafka.write(target, bootstrap=via, key="i", backoff=Backoff(0.1, 0.5, 30)))
    t0 = time.monotonic()
    result = flow.run(guarantee="at-least-once", checkpoint_dir=str(tmp_path / "ck"), checkpoint_interval=100)
    assert time.monotonic() - t0 >= 1.5
    back = CollectSink()
    check = ms.Flow("check")
    check.source(kafka.read(target, bootstrap=via, bounded=True)).sink(back)
    check.run()
    assert sorted(set(r["i"] for r in back.values)) == list(range(N))  # nothing lost
    assert result.steps[-1].extra.get("retries", 0) > 0, result.summary()  # the flush waited, and said so
    assert [r for r in caplog.records if "not yet delivered" in r.getMessage()], caplog.records


# -- Redis ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def redis_proxied() -> Iterator[tuple[str, Proxy, str, Any]]:
    """(URL through a proxy in front of the shared Redis, proxy, a stream holding N entries, client)."""
    services.need_module("redis", "redis")
    import redis as redis_client

    host, port = services.require("redis")
    direct = redis_client.Redis(host=host, port=port)
    stream = services.unique("outage")
    pipe = direct.pipeline(transaction=False)
    for i in range(N):
        pipe.xadd(stream, {"data": json.dumps({"i": i})})
    pipe.execute()
    proxy = Proxy(services.free_port(), port)
    try:
        yield f"redis://127.0.0.1:{proxy.server.getsockname()[1]}/0", proxy, stream, direct
    finally:
        proxy.close()
        direct.delete(stream)
        direct.close()


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_redis_outage_is_retried_and_resumes(redis_proxied: tuple[str, Proxy, str, Any], mode: str, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    from millstream.connectors import redis

    url, proxy, stream, direct = redis_proxied
    caplog.set_level(logging.WARNING)
    out = CollectSink()
    flow = ms.Flow("redis-outage")
    group = services.unique("g")
    src = redis.read(stream, group=group, start="0", bounded=True, count=100, url=url, backoff=Backoff(0.1, 0.5, 30))
    flow.source(src).map(_dropper(proxy, 500, 2.0)).sink(out)
    t0 = time.monotonic()
    result = flow.run(mode=mode, guarantee="at-least-once", checkpoint_dir=str(tmp_path / "ck"), max_chunk=100,
                      checkpoint_interval=100)
    assert time.monotonic() - t0 >= 1.5
    assert sorted(r["i"] for r in out.values) == list(range(N))  # nothing lost, nothing repeated
    assert _retries(result) > 0, result.summary()
    assert _retry_warnings(caplog), [r.getMessage() for r in caplog.records]
    assert direct.xpending(stream, group)["pending"] == 0  # the last checkpoint acknowledged everything


def test_redis_sink_outage_is_retried(redis_proxied: tuple[str, Proxy, str, Any], caplog: pytest.LogCaptureFixture
                                      ) -> None:
    from millstream.connectors import redis

    url, proxy, _stream, direct = redis_proxied
    caplog.set_level(logging.WARNING)
    target = services.unique("outage_out")
    flow = ms.Flow("redis-sink-outage")
    flow.source(ms.connectors.memory.read([{"i": i} for i in range(N)])).map(_dropper(proxy, 1_500, 1.5)).sink(
        redis.write(target, url=url, batch=100, backoff=Backoff(0.1, 0.5, 30)))
    try:
        result = flow.run()
        got = [json.loads(f[b"data"]) for _id, f in direct.xrange(target)]
        assert sorted(r["i"] for r in got) == list(range(N))  # nothing lost (a resent batch could repeat)
        assert _retries(result) > 0, result.summary()
        assert _retry_warnings(caplog)
    finally:
        direct.delete(target)


def test_redis_gone_for_good_fails_after_the_budget(redis_proxied: tuple[str, Proxy, str, Any]) -> None:
    from millstream.connectors import redis

    url, proxy, stream, _direct = redis_proxied
    flow = ms.Flow("redis-gone")
    flow.source(redis.read(stream, group=services.unique("g"), start="0", bounded=True, count=100, url=url,
                           backoff=Backoff(0.1, 0.3, 1.5))).map(_dropper(proxy, 500, None)).sink(CollectSink())
    t0 = time.monotonic()
    with pytest.raises(ConnectorError, match="still failing") as err:
        flow.run()
    assert time.monotonic() - t0 < 20
    text = str(err.value)
    assert "redis" in text.lower() and f"127.0.0.1:{proxy.server.getsockname()[1]}" in text, text
