"""The services the integration tests use are there (in CI a missing one fails the run)."""

from __future__ import annotations

import pytest
from tests.integration import services


@pytest.mark.parametrize("service", sorted(services.SHARED))
def test_shared_service_is_reachable(service: str) -> None:
    host, port = services.require(service)
    assert services.reachable(host, port)


def test_private_kafka_broker_round_trip(kafka_broker: services.Broker) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = services.unique("svc")
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"cleanup.policy": "delete"})])[topic].result(10)
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    p.produce(topic, b"hello")
    assert p.flush(10) == 0
    c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": topic, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, 0, 0)])
    got = []
    for _ in range(50):
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            break
        got.append(m.value())
    c.close()
    assert got == [b"hello"]
