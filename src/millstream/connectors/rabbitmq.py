"""RabbitMQ (pika, AMQP 0-9-1): consume a queue, publish with confirms.

``read(queue)`` consumes with manual acknowledgement: one ``basic_ack(multiple=True)`` per
completed checkpoint, up to the last delivery the checkpoint covers. When the connection
dies, RabbitMQ puts every unacknowledged delivery back in the queue (``replay ==
"redelivery"``): at-least-once. A redelivery cannot be told from a new message by its
delivery tag (tags restart with each channel), so exactly-once needs ``dedup_by=`` (the
AMQP ``message_id`` property, or a field of the record) or an idempotent sink.

``write(exchange, routing_key)`` publishes with publisher confirms, waited for in batches
at each checkpoint: at-least-once (``delivery == "none"``). See docs/connectors/rabbitmq.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from millstream.connectors._base import Backoff, ErrorPolicy, check_policy
from millstream.connectors._codec import check_format, check_metadata, check_stop
from millstream.connectors._rabbitmq import METADATA, RabbitMQSink, RabbitMQSource, _pika
from millstream.errors import ConfigError

DEFAULT_BACKOFF = Backoff()

__all__ = ["RabbitMQSink", "RabbitMQSource", "read", "write"]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _check_url(url: str) -> None:
    if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
        raise ConfigError("rabbitmq url must look like amqp://user:password@host:5672/vhost "
                          "(amqps:// for TLS)")


def read(
    queue: str,
    *,
    url: str = DEFAULT_URL,
    prefetch: int = 10_000,
    format: str = "json",
    deserializer: Callable[[bytes], Any] | None = None,
    metadata: Sequence[str] | None = None,
    dedup_by: str | None = None,
    on_error: ErrorPolicy = "fail",
    max_records: int | None = None,
    idle_stop: float | timedelta | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    name: str = "rabbitmq",
) -> RabbitMQSource:
    """Consume ``queue`` (which must exist) with manual acknowledgement after checkpoints.

    - ``url``: ``amqp://user:password@host:port/vhost`` (``%2F`` is the default vhost ``/``);
      the password never appears in plans, errors or logs.
    - ``prefetch``: most unacknowledged deliveries the broker sends ahead (default 10,000, at most
      65,535). Nothing is acknowledged before a checkpoint completes, so a checkpointed job reads
      at most ``prefetch`` messages per checkpoint interval (1,000 with 1 s checkpoints would cap
      it at 1 k/s); the step's ``stalled_on_prefetch`` figure counts polls that waited for it.
    - ``format``/``deserializer``: ``"json"`` (default), ``"text"``, ``"bytes"`` or ``fn(bytes)``.
    - ``metadata``: any of ``("routing_key", "exchange", "delivery_tag", "redelivered", "headers",
      "message_id", "timestamp")``, added as ``_routing_key`` etc. (payloads must be JSON objects).
    - ``dedup_by``: ``"message_id"`` (the AMQP property) or a record field: a redelivered message
      whose id a restored checkpoint already covers is dropped (exactly-once with a
      transactional sink). Without it, a crash between a checkpoint and its acknowledgement
      repeats that checkpoint's last deliveries.
    - ``on_error``: ``"fail"``, ``"skip"`` or ``dead_letter(sink)`` for undecodable payloads
      (position ``queue#delivery-tag``); a bad message is acknowledged with its checkpoint.
    - ``max_records`` / ``idle_stop``: end the source after that many records, or that long
      (seconds or a timedelta) without a message: for tests and draining a queue.
      ``max_records`` counts over restarts from checkpoints; a job that ended this way is finished
      (run again with the same checkpoint directory, it does nothing).
    """
    _pika()
    if not isinstance(queue, str) or not queue:
        raise ConfigError(f"rabbitmq.read needs a queue name, not {queue!r}")
    _check_url(url)
    if not isinstance(prefetch, int) or not 0 < prefetch <= 65535:
        raise ConfigError(f"prefetch must be 1..65535, not {prefetch!r}")
    check_format(format, deserializer)
    meta = check_metadata(metadata, METADATA)
    if dedup_by is not None and (not isinstance(dedup_by, str) or not dedup_by):
        raise ConfigError(f"dedup_by must be 'message_id' or a field name, not {dedup_by!r}")
    max_records, idle_s = check_stop(max_records, idle_stop)
    return RabbitMQSource(queue, url=url, prefetch=prefetch, format=format, deserializer=deserializer,
                          metadata=meta, on_error=check_policy(on_error), dedup_by=dedup_by,
                          max_records=max_records, idle_stop=idle_s, backoff=backoff, name=name)


def write(
    exchange: str = "",
    routing_key: str | Callable[[Any], str] = "",
    *,
    url: str = DEFAULT_URL,
    confirms: bool = True,
    mandatory: bool = True,
    persistent: bool = True,
    message_id: str | Callable[[Any], Any] | None = None,
    format: str = "json",
    serializer: Callable[[Any], bytes] | None = None,
    timeout: float | timedelta = 30.0,
    backoff: Backoff = DEFAULT_BACKOFF,
    name: str = "rabbitmq",
) -> RabbitMQSink:
    """Publish each record to ``exchange`` (``""``: the default exchange, routing by queue name)
    with ``routing_key`` (a string, or a function of the record).

    - ``confirms`` (default True): publisher confirms, waited for at every checkpoint and at the
      end (batched: the writer does not wait per message); a nack or a timeout fails the job.
    - ``mandatory`` (default True): a message no queue is bound for fails the job instead of
      vanishing.
    - ``persistent``: delivery mode 2 (kept on disk by durable queues).
    - ``message_id``: a field name or a function of the record: sets the AMQP ``message_id``
      property, so that a reader with ``dedup_by="message_id"`` can drop redeliveries.
    """
    _pika()
    if not isinstance(exchange, str):
        raise ConfigError(f"exchange must be a name ('' for the default exchange), not {exchange!r}")
    if not (isinstance(routing_key, str) or callable(routing_key)):
        raise ConfigError(f"routing_key must be a string or a function of the record, not {routing_key!r}")
    if exchange == "" and routing_key == "":
        raise ConfigError("rabbitmq.write to the default exchange needs routing_key=<queue name>")
    _check_url(url)
    check_format(format, serializer, "serializer")
    if message_id is not None and not (isinstance(message_id, str) or callable(message_id)):
        raise ConfigError(f"message_id must be a field name or a function, not {message_id!r}")
    t = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if t <= 0:
        raise ConfigError(f"timeout must be > 0, not {timeout!r}")
    return RabbitMQSink(exchange, routing_key, url=url, confirms=bool(confirms), mandatory=bool(mandatory),
                        persistent=bool(persistent), message_id=message_id, format=format, serializer=serializer,
                        timeout_s=t, backoff=backoff, name=name)
