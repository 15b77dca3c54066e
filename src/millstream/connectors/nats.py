"""NATS JetStream: read a stream through a durable pull consumer, publish with message ids.

Needs ``pip install 'millstream[nats]'`` (nats-py). See docs/connectors/nats.md.

- :func:`read`: a durable pull consumer with ``AckPolicy.ALL``, acknowledged only once the
  checkpoint that holds the messages is complete; after a crash the unacknowledged messages are
  read again and those the restored checkpoint covers are dropped (``replay = "redelivery"``),
  so exactly-once holds with a transactional sink downstream.
- :func:`write`: JetStream publish, acknowledged by the stream; with ``msg_id`` each message
  carries a ``Nats-Msg-Id`` header and the stream drops a repeated id within its duplicate window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from millstream.connectors._base import Backoff, ErrorPolicy
from millstream.connectors._codec import check_format
from millstream.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from millstream.connectors._nats import NatsSink, NatsSource

__all__ = ["read", "write"]

_DEFAULT_SERVERS = "nats://127.0.0.1:4222"


def _need_nats(feature: str) -> None:
    try:
        import nats  # noqa: F401
    except ImportError:
        raise MissingDependencyError("nats-py", "nats", feature) from None


def _servers(servers: Any) -> tuple[str, ...]:
    items = (servers,) if isinstance(servers, str) else tuple(servers) if isinstance(servers, list | tuple) else ()
    if not items or not all(isinstance(s, str) and s.startswith(("nats://", "tls://", "ws://", "wss://"))
                            for s in items):
        raise ConfigError("servers must be a NATS URL such as 'nats://127.0.0.1:4222' or a list of them "
                          "(nats://user:password@host:port with credentials)")
    return items


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds or a timedelta, not {value!r}")
    return float(value)


def read(
    stream: str,
    *,
    durable: str,
    servers: str | Sequence[str] = _DEFAULT_SERVERS,
    subject: str | None = None,
    start: str | int = "first",
    bounded: bool = False,
    batch: int = 1000,
    fetch_timeout: float | timedelta = 0.2,
    ack_wait: float | timedelta = 300.0,
    format: str = "json",
    deserializer: Callable[[bytes], Any] | None = None,
    metadata: Sequence[str] = (),
    on_error: ErrorPolicy = "fail",
    backoff: Backoff | None = None,
    name: str | None = None,
) -> NatsSource:
    """A source that reads the JetStream ``stream`` through the durable pull consumer ``durable``.

    - ``servers``: a NATS URL or a list (``nats://user:password@host:port``; the password or token
      never appears in plans, errors, logs or checkpoints).
    - ``durable``: the consumer's name. Created when missing (``AckPolicy.ALL``, explicit acks,
      no limit on unacknowledged messages); a consumer with other settings, or with messages a
      crashed run left unacknowledged, is recreated at the sequence after the checkpoint (or after
      its acknowledged floor), so those messages are read again at once, in order.
    - ``subject``: only messages of this subject (a filter; wildcards allowed); all by default.
    - ``start``: where a new consumer starts: ``"first"`` (the stream's first message), ``"new"``
      (messages published from now on) or a stream sequence number.
    - ``bounded``: stop at the stream's last sequence at start (batch mode, tests, replays).
    - ``batch``: messages per pull; ``fetch_timeout``: seconds a pull waits when none are there.
    - ``ack_wait``: seconds JetStream waits for an ack before it redelivers (default 300). Messages
      are acknowledged only at checkpoints, so this **must exceed the checkpoint interval** (plus
      the time a checkpoint takes); otherwise messages come back while the job runs (they are
      dropped as already read, but cost a second delivery).
    - ``format``: ``"json"`` (dicts, via orjson; the default), ``"text"`` or ``"bytes"``;
      ``deserializer``: a function of the payload bytes instead.
    - ``metadata``: any of ``"subject"``, ``"sequence"``, ``"timestamp"``, ``"headers"``, added as
      ``_subject``, ``_sequence`` (stream sequence), ``_timestamp`` (ms, when the stream stored it)
      and ``_headers`` (a dict). With metadata a payload that is not a JSON object is a bad record.
    - ``on_error``: ``"fail"``, ``"skip"`` or ``dead_letter(sink)`` for a payload that cannot be
      decoded; the position is ``<stream>@<sequence>``.
    - ``backoff``: retries while NATS is unreachable.

    Without a guarantee (no checkpoints) nothing is acknowledged: the next run reads the same
    messages again. Under at-most-once each chunk is acknowledged as it is read.
    """
    _need_nats("millstream.connectors.nats.read")
    from millstream.connectors._nats import METADATA, NatsSource, ReadOptions

    if not isinstance(stream, str) or not stream or any(c in stream for c in " .*>"):
        raise ConfigError(f"stream must name a JetStream stream (no spaces, dots or wildcards), not {stream!r}")
    if not isinstance(durable, str) or not durable or any(c in durable for c in " .*>"):
        raise ConfigError(f"durable must name the consumer (no spaces, dots or wildcards), not {durable!r}")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise ConfigError(f"subject must be a subject filter or None, not {subject!r}")
    if not (start in ("first", "new") or (isinstance(start, int) and not isinstance(start, bool) and start >= 1)):
        raise ConfigError(f"start must be 'first', 'new' or a stream sequence >= 1, not {start!r}")
    if not isinstance(bounded, bool):
        raise ConfigError(f"bounded must be True or False, not {bounded!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be an integer >= 1, not {batch!r}")
    check_format(format, deserializer)
    if deserializer is not None and not callable(deserializer):
        raise ConfigError(f"deserializer must be a function of the payload bytes, not {deserializer!r}")
    meta = (metadata,) if isinstance(metadata, str) else tuple(metadata)
    bad = [m for m in meta if m not in METADATA]
    if bad:
        raise ConfigError(f"nats metadata can be {', '.join(map(repr, METADATA))}; {bad[0]!r} is not one of them")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise ConfigError(f"backoff must be a millstream.connectors.Backoff, not {backoff!r}")
    options = ReadOptions(
        stream=stream, servers=_servers(servers), durable=durable, subject=subject, start=start, bounded=bounded,
        batch=batch, fetch_timeout_s=_seconds(fetch_timeout, "fetch_timeout"),
        ack_wait_s=_seconds(ack_wait, "ack_wait"), format=format, deserializer=deserializer, metadata=meta,
        backoff=backoff or Backoff())
    return NatsSource(options, on_error=on_error, name=name)


def write(
    subject: str,
    *,
    servers: str | Sequence[str] = _DEFAULT_SERVERS,
    msg_id: str | Callable[[Any], Any] | None = None,
    serializer: Callable[[Any], bytes | str] | None = None,
    max_pending: int = 20_000,
    backoff: Backoff | None = None,
    name: str | None = None,
) -> NatsSink:
    """A sink that publishes each record to ``subject``, which a JetStream stream must take.

    - ``servers``: as for :func:`read`.
    - ``msg_id``: a field of the record, or a function of it, whose value becomes the message's
      ``Nats-Msg-Id`` header. The stream drops a message whose id it already stored within its
      ``duplicate_window`` (default two minutes), so the records a restart writes again are not
      stored twice — **provided the restart comes within that window** and the id is a pure
      function of the record. Then ``delivery`` is ``"idempotent"``; without ``msg_id`` it is
      ``"none"`` (a replay publishes duplicates: at-least-once).
    - ``serializer``: record -> bytes or str (default: JSON via orjson).
    - ``max_pending``: publishes in flight before the writer waits for the stream's acks; every
      publish is acknowledged by the stream at each checkpoint and on close.
    """
    _need_nats("millstream.connectors.nats.write")
    from millstream.connectors._nats import NatsSink, WriteOptions

    if not isinstance(subject, str) or not subject or any(c in subject for c in " *>"):
        raise ConfigError(f"subject must be a NATS subject without wildcards, not {subject!r}")
    if msg_id is not None and not (callable(msg_id) or (isinstance(msg_id, str) and msg_id)):
        raise ConfigError(f"msg_id must name a field of the records or be a function of the record, not {msg_id!r}")
    if serializer is not None and not callable(serializer):
        raise ConfigError(f"serializer must be a function of the record returning bytes or str, not {serializer!r}")
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        raise ConfigError(f"max_pending must be an integer >= 1, not {max_pending!r}")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise ConfigError(f"backoff must be a millstream.connectors.Backoff, not {backoff!r}")
    options = WriteOptions(subject=subject, servers=_servers(servers), msg_id=msg_id, serializer=serializer,
                           max_pending=max_pending, backoff=backoff or Backoff())
    return NatsSink(options, name=name)
