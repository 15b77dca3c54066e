"""What the Kafka source and sink share: importing the client, client options, errors, topics.

The public facade is :mod:`millstream.connectors.kafka`; reading is in :mod:`._kafka`
and writing in :mod:`._kafka_write`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from millstream.connectors._base import Backoff, redact_options, redact_url, retry
from millstream.errors import ConfigError, ConnectorError, ConnectorUnavailable, MissingDependencyError

__all__ = ["address_of", "check_bootstrap", "check_config", "client", "create_topic", "delete_topic",
           "kafka_error", "topic_partitions"]

log = logging.getLogger("millstream.connectors.kafka")
#: librdkafka's own log lines go here (they name brokers, never credentials)
client_log = logging.getLogger("millstream.connectors.kafka.client")

#: Options millstream sets itself; a user's ``config`` may not override them (it would break a guarantee).
RESERVED_READ = ("enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers")
RESERVED_WRITE = ("transactional.id", "bootstrap.servers")

#: librdkafka error names that mean "the broker may come back": retried with backoff.
_TRANSIENT = {"_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_RESOLVE", "_WAIT_COORD", "_MSG_TIMED_OUT",
              "NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS",
              "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "REQUEST_TIMED_OUT", "NETWORK_EXCEPTION",
              "_NOENT", "_TIMED_OUT_QUEUE", "BROKER_NOT_AVAILABLE"}


def client(feature: str) -> Any:
    """The ``confluent_kafka`` module, or a :class:`MissingDependencyError` naming the ``kafka`` extra."""
    try:
        import confluent_kafka
    except ImportError:
        raise MissingDependencyError("confluent-kafka", "kafka", feature) from None
    return confluent_kafka


def check_bootstrap(bootstrap: Any) -> str:
    if isinstance(bootstrap, list | tuple):
        bootstrap = ",".join(map(str, bootstrap))
    if not isinstance(bootstrap, str) or not bootstrap.strip():
        raise ConfigError(f"bootstrap must be 'host:port' (or several, comma-separated), not {bootstrap!r}")
    return bootstrap.strip()


def check_config(config: Any, reserved: tuple[str, ...]) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise ConfigError(f"config must be a dict of librdkafka options such as {{'linger.ms': 5}}, not "
                          f"{type(config).__name__}")
    clash = sorted(set(config) & set(reserved))
    if clash:
        raise ConfigError(f"config may not set {', '.join(clash)}: the connector sets it (use the keyword "
                          "option of read()/write() instead where there is one)")
    return dict(config)


def address_of(bootstrap: str) -> str:
    """The bootstrap servers as safe to print (a ``user:password@`` in one is hidden)."""
    return ",".join(redact_url(f"kafka://{b}")[len("kafka://"):] if "@" in b else b for b in bootstrap.split(","))


def base_config(bootstrap: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": client_log, **config}


def kafka_error(exc: BaseException, *, connector: str, address: str, doing: str) -> ConnectorError:
    """A client exception as a ConnectorUnavailable (may pass) or a ConnectorError (will not)."""
    err = exc.args[0] if exc.args else None
    name = getattr(err, "name", lambda: "")() if err is not None and hasattr(err, "name") else ""
    text = err.str() if err is not None and hasattr(err, "str") else str(exc)
    retriable = bool(getattr(err, "retriable", lambda: False)()) if err is not None else False
    problem = f"{doing}: {name or type(exc).__name__}: {text}"
    if name in _TRANSIENT or retriable:
        return ConnectorUnavailable(problem, connector=connector, address=address,
                                    fix="check that the broker is up and reachable from this machine")
    if "AUTH" in name or "SASL" in name or "SSL" in name:
        return ConnectorError(problem, connector=connector, address=address,
                              fix="check the security options in config= (sasl.username, sasl.password, "
                                  "security.protocol, ssl.*)")
    return ConnectorError(problem, connector=connector, address=address)


def topic_partitions(cli: Any, topics: tuple[str, ...], *, connector: str, address: str,
                     timeout_s: float = 5.0) -> dict[str, list[int]]:
    """Partitions of each topic (metadata request); a missing topic is a ConnectorError saying how to
    create it; an unreachable broker a ConnectorUnavailable."""
    kafka = client("Kafka")
    try:
        md = cli.list_topics(timeout=timeout_s)
    except kafka.KafkaException as exc:
        raise kafka_error(exc, connector=connector, address=address, doing="reading topic metadata") from None
    out: dict[str, list[int]] = {}
    for t in topics:
        tm = md.topics.get(t)
        if tm is None or (tm.error is not None and tm.error.code() == kafka.KafkaError.UNKNOWN_TOPIC_OR_PART):
            raise ConnectorError(
                f"topic {t!r} does not exist", connector=connector, address=address,
                fix=f"create it first, e.g. millstream.connectors.kafka.create_topic({address!r}, {t!r}, "
                    "partitions=4) (or with kafka-topics.sh --create); on tansu give it explicit configs "
                    "such as {'cleanup.policy': 'delete'}")
        if tm.error is not None:
            raise kafka_error(kafka.KafkaException(tm.error), connector=connector, address=address,
                              doing=f"reading the metadata of topic {t!r}")
        out[t] = sorted(tm.partitions)
    return out


def create_topic(bootstrap: str, topic: str, *, partitions: int = 1, replication: int = 1,
                 config: Mapping[str, str] | None = None, exist_ok: bool = True,
                 admin_config: Mapping[str, Any] | None = None, timeout_s: float = 30.0) -> bool:
    """Create ``topic`` with ``partitions``; returns whether it was created (False: it existed).

    ``config`` defaults to ``{"cleanup.policy": "delete"}``: some brokers (tansu) describe a topic
    created without explicit configs as having none, which clients then trip over."""
    kafka = client("Creating a Kafka topic")
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    bootstrap = check_bootstrap(bootstrap)
    if not isinstance(partitions, int) or partitions < 1:
        raise ConfigError(f"partitions must be a positive int, not {partitions!r}")
    admin = AdminClient(base_config(bootstrap, check_config(admin_config, ("bootstrap.servers",))))
    cfg = dict(config) if config is not None else {"cleanup.policy": "delete"}
    fut = admin.create_topics([NewTopic(topic, partitions, replication, config=cfg)],
                              operation_timeout=timeout_s)[topic]
    try:
        fut.result(timeout_s)
    except kafka.KafkaException as exc:
        err = exc.args[0]
        if exist_ok and err.code() == kafka.KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise kafka_error(exc, connector="kafka admin", address=address_of(bootstrap),
                          doing=f"creating topic {topic!r}") from None
    return True


def add_partitions(bootstrap: str, topic: str, total: int, *, timeout_s: float = 30.0) -> None:
    """Grow ``topic`` to ``total`` partitions."""
    kafka = client("Adding Kafka partitions")
    from confluent_kafka.admin import AdminClient, NewPartitions  # type: ignore[attr-defined]

    admin = AdminClient(base_config(check_bootstrap(bootstrap), {}))
    try:
        admin.create_partitions([NewPartitions(topic, total)], operation_timeout=timeout_s)[topic].result(timeout_s)
    except kafka.KafkaException as exc:
        raise kafka_error(exc, connector="kafka admin", address=address_of(bootstrap),
                          doing=f"adding partitions to {topic!r}") from None


def delete_topic(bootstrap: str, topic: str, *, timeout_s: float = 30.0) -> None:
    """Delete ``topic`` (missing is fine)."""
    kafka = client("Deleting a Kafka topic")
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(base_config(check_bootstrap(bootstrap), {}))
    try:
        admin.delete_topics([topic], operation_timeout=timeout_s)[topic].result(timeout_s)
    except kafka.KafkaException as exc:
        if exc.args[0].code() != kafka.KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise kafka_error(exc, connector="kafka admin", address=address_of(bootstrap),
                              doing=f"deleting topic {topic!r}") from None


def with_retry(fn: Any, *, what: str, backoff: Backoff, counter: list[int] | None = None) -> Any:
    """:func:`retry` that counts retries in ``counter[0]``."""
    def on_retry(_attempt: int, _exc: BaseException) -> None:
        if counter is not None:
            counter[0] += 1
    return retry(fn, what=what, backoff=backoff, on_retry=on_retry)


def safe_options(config: dict[str, Any]) -> dict[str, Any]:
    return redact_options(config)
