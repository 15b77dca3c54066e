"""MQTT (paho-mqtt 2.x, MQTT 5): subscribe to topics, publish records.

``read(...)`` subscribes at QoS 0 or 1. At QoS 1 with a persistent session (a fixed
``client_id`` and ``clean_start=False``, the defaults) the PUBACK of each message is sent
only in ``acknowledge``, once the checkpoint covering it is complete; after a crash the
broker redelivers what was not acknowledged (``replay == "redelivery"``). QoS 0, or a clean
session, cannot replay (``replay == "none"``: at-most-once only).

``write(...)`` publishes at QoS 1 (or 0) and waits for the PUBACKs at each checkpoint:
at-least-once (``delivery == "none"``: a replay publishes again).

What MQTT QoS 1 cannot do, and this connector cannot either: keep order across a
redelivery, avoid duplicates without help (exactly-once needs an idempotent or
transactional sink downstream), hold more than 65,535 unacknowledged messages (16-bit
packet ids), or keep what the broker's queue limit (``max_queued_messages``) drops. See
docs/connectors/mqtt.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from millstream.connectors._base import ErrorPolicy, check_policy
from millstream.connectors._codec import check_format, check_metadata, check_stop
from millstream.connectors._mqtt import METADATA, MqttSink, MqttSource, _paho
from millstream.errors import ConfigError

__all__ = ["MqttSink", "MqttSource", "read", "write"]


def _check_common(host: str, port: int, qos: int, keepalive: int) -> None:
    if not isinstance(host, str) or not host:
        raise ConfigError(f"mqtt host must be a host name, not {host!r}")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"mqtt port must be 1..65535, not {port!r}")
    if qos not in (0, 1):
        raise ConfigError(f"mqtt qos must be 0 or 1, not {qos!r} (QoS 2 is not supported)",)
    if keepalive <= 0:
        raise ConfigError(f"keepalive must be > 0 seconds, not {keepalive!r}")


def read(
    topics: str | Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 1883,
    qos: int = 1,
    client_id: str | None = None,
    clean_start: bool = False,
    session_expiry: int | timedelta = 86_400,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
    format: str = "json",
    deserializer: Callable[[bytes], Any] | None = None,
    metadata: Sequence[str] | None = None,
    on_error: ErrorPolicy = "fail",
    max_records: int | None = None,
    idle_stop: float | timedelta | None = None,
    name: str = "mqtt",
    connect_timeout: float = 10.0,
) -> MqttSource:
    """Subscribe to ``topics`` (filters with ``+``/``#`` allowed) on an MQTT broker.

    - ``qos``: 1 (default: acknowledged after checkpoints, redelivered after a crash) or 0.
    - ``client_id``: the session's name on the broker. Required with ``qos=1`` and
      ``clean_start=False``: the broker keeps the subscription and the unacknowledged
      messages under it (for ``session_expiry`` seconds after a disconnect, default a day).
      Use one id per job; two running clients with the same id take the session from each other.
    - ``clean_start``: start a new session (drops what the broker kept): no replay.
    - ``username``/``password``: never shown in plans, errors or logs.
    - ``format``: ``"json"`` (default: records are decoded values), ``"text"`` or ``"bytes"``;
      or ``deserializer=fn(bytes) -> record``.
    - ``metadata``: any of ``("topic", "qos", "retain", "dup", "mid")``, added to each record as
      ``_topic``, ``_qos``, ... (payloads must then be JSON objects; anything else is a bad record).
    - ``on_error``: what to do with a payload that cannot be decoded: ``"fail"``, ``"skip"`` or
      ``dead_letter(sink)``; its position is ``topic#packet-id``.
    - ``max_records`` / ``idle_stop``: end the (otherwise endless) source after that many records,
      or after that long without a message: for tests, backfills and batch mode.
      ``max_records`` counts over restarts from checkpoints; a job that ended this way is finished
      (run again with the same checkpoint directory, it does nothing).
    """
    _paho()
    topics = (topics,) if isinstance(topics, str) else tuple(topics)
    if not topics or not all(isinstance(t, str) and t for t in topics):
        raise ConfigError(f"mqtt.read needs one or more topic filters, got {topics!r}")
    _check_common(host, port, qos, keepalive)
    check_format(format, deserializer)
    meta = check_metadata(metadata, METADATA)
    max_records, idle_s = check_stop(max_records, idle_stop)
    expiry = int(session_expiry.total_seconds()) if isinstance(session_expiry, timedelta) else session_expiry
    if not isinstance(expiry, int) or expiry <= 0:
        raise ConfigError(f"session_expiry must be a positive number of seconds, not {session_expiry!r}")
    if client_id is None:
        if qos == 1 and not clean_start:
            raise ConfigError(
                "mqtt.read at qos=1 keeps a session on the broker and needs a fixed client_id naming it",
                )
        client_id = ""
    if password is not None and username is None:
        raise ConfigError("mqtt.read: a password needs a username")
    return MqttSource(topics, host=host, port=port, qos=qos, client_id=client_id, clean_start=clean_start,
                      username=username, password=password, keepalive=keepalive, session_expiry=expiry,
                      format=format, deserializer=deserializer, metadata=meta, on_error=check_policy(on_error),
                      max_records=max_records, idle_stop=idle_s, name=name, connect_timeout=connect_timeout)


def write(
    topic: str | Callable[[Any], str],
    *,
    host: str = "127.0.0.1",
    port: int = 1883,
    qos: int = 1,
    retain: bool = False,
    client_id: str | None = None,
    username: str | None = None,
    password: str | None = None,
    format: str = "json",
    serializer: Callable[[Any], bytes] | None = None,
    keepalive: int = 60,
    timeout: float | timedelta = 30.0,
    name: str = "mqtt",
) -> MqttSink:
    """Publish each record to ``topic`` (a topic name, or a function of the record giving one).

    - ``qos``: 1 (default): the writer waits for the broker's PUBACKs at every checkpoint and at the
      end, failing the job if they do not come within ``timeout``; 0: fire and forget.
    - ``retain``: publish as retained messages.
    - ``format``: ``"json"`` (default), ``"text"``, ``"bytes"``; or ``serializer=fn(record) -> bytes``.
    """
    _paho()
    if not (isinstance(topic, str) and topic and "+" not in topic and "#" not in topic) and not callable(topic):
        raise ConfigError(f"mqtt.write needs a topic name (no wildcards) or a function of the record, not {topic!r}")
    _check_common(host, port, qos, keepalive)
    check_format(format, serializer, "serializer")
    t = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if t <= 0:
        raise ConfigError(f"timeout must be > 0, not {timeout!r}")
    return MqttSink(topic, host=host, port=port, qos=qos, retain=bool(retain), client_id=client_id,
                    username=username, password=password, format=format, serializer=serializer,
                    keepalive=keepalive, timeout_s=t, name=name)
