"""The RabbitMQ source and sink (pika 1.x, AMQP 0-9-1), behind :mod:`millstream.connectors.rabbitmq`."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from millstream.connectors._base import (
    Backoff,
    ErrorPolicy,
    Sink,
    SinkWriter,
    Source,
    SourceContext,
    SourceReader,
    check_policy,
    redact_url,
    retry,
)
from millstream.connectors._codec import StopCondition, decode_into, make_decoder, make_encoder
from millstream.errors import ConnectorError, ConnectorUnavailable, MissingDependencyError

log = logging.getLogger("millstream.connectors.rabbitmq")

#: How long a reader watches for the redelivery of a message it handed out before a crash or a lost
#: connection. The broker requeues a dead connection's deliveries once it notices (at once for a closed
#: socket, after the heartbeat timeout, 60 s by default, for a silent network failure).
REDELIVERY_WINDOW_S = 300.0

METADATA = ("routing_key", "exchange", "delivery_tag", "redelivered", "headers", "message_id", "timestamp")


def _pika() -> Any:
    try:
        import pika
    except ImportError:
        raise MissingDependencyError("pika", "rabbitmq", "the RabbitMQ connector") from None
    return pika


def _connect(url: str, what: str, backoff: Backoff, on_retry: Callable[[int, BaseException], None] | None
             ) -> Any:
    """A BlockingConnection to ``url``: unreachable brokers are retried, refused logins are fatal."""
    pika = _pika()
    from pika import exceptions as px

    address = redact_url(url)

    def attempt() -> Any:
        try:
            params = pika.URLParameters(url)
            params.connection_attempts = 1
            return pika.BlockingConnection(params)
        except (px.ProbableAuthenticationError, px.AuthenticationError, px.ProbableAccessDeniedError) as exc:
            raise ConnectorError(f"the broker refused the login ({type(exc).__name__})", connector=what,
                                 address=address, fix="check the user, password and virtual host in the URL"
                                 ) from None
        except px.AMQPConnectionError as exc:
            raise ConnectorUnavailable(f"cannot connect ({type(exc).__name__})", connector=what,
                                       address=address) from None
        except ValueError as exc:
            raise ConnectorError(f"bad AMQP URL: {type(exc).__name__}", connector=what, address=address,
                                 fix="use amqp://user:password@host:port/vhost") from None

    return retry(attempt, what=f"{what} connecting to {address}", backoff=backoff, on_retry=on_retry)


def _channel_error(exc: Any, what: str, address: str, queue: str | None = None) -> ConnectorError:
    code = getattr(exc, "reply_code", None)
    text = getattr(exc, "reply_text", str(exc))
    if code == 404:
        return ConnectorError(f"not found: {text}", connector=what, address=address,
                              fix=f"declare the queue {queue!r} (or the exchange) first" if queue
                              else "declare the exchange first, or publish to the default exchange ''")
    if code == 403:
        return ConnectorError(f"access refused: {text}", connector=what, address=address,
                              fix="grant the user permissions on the virtual host")
    return ConnectorError(f"the broker closed the channel: {code} {text}", connector=what, address=address)


# -- source --------------------------------------------------------------------------------------


class RabbitMQSource(Source):
    """Consume a queue with manual acknowledgement (see :func:`millstream.connectors.rabbitmq.read`)."""

    replay = "redelivery"

    @property
    def replays_exactly(self) -> bool:
        """Delivery tags restart with each channel: only message ids tell a redelivery from a new message."""
        return self.dedup_by is not None

    def __init__(self, queue: str, *, url: str, prefetch: int, format: str,
                 deserializer: Callable[[bytes], Any] | None, metadata: tuple[str, ...], on_error: ErrorPolicy,
                 dedup_by: str | None, max_records: int | None, idle_stop: float | None, backoff: Backoff,
                 name: str) -> None:
        self.queue = queue
        self._url = url
        self.prefetch = prefetch
        self.format, self.deserializer, self.metadata = format, deserializer, metadata
        self.on_error = check_policy(on_error)
        self.dedup_by = dedup_by
        self.max_records, self.idle_stop = max_records, idle_stop
        self.bounded = max_records is not None or idle_stop is not None
        self.backoff = backoff
        self.name = name

    @property
    def address(self) -> str:
        return redact_url(self._url)

    def open(self, ctx: SourceContext) -> SourceReader:
        return RabbitMQReader(self, ctx)

    def describe(self) -> str:
        p = self.address.split("://", 1)[-1]
        host = p.split("@", 1)[-1].split("/", 1)[0]
        dedup = f", dedup by {self.dedup_by}" if self.dedup_by else ""
        return f"rabbitmq {self.queue}@{host} (prefetch {self.prefetch}{dedup})"

    def default_name(self) -> str:
        return self.name


class RabbitMQReader(SourceReader):
    """Deliveries arrive through ``process_data_events`` into ``inbox``; ``poll`` decodes them.

    Positions: ``{"channel": n, "tag": t, "ids": [...]}``: delivery tag ``t`` on the ``n``-th channel
    of this reader was the last one handed out; ``ids`` (with ``dedup_by``) the message ids of the
    last ``prefetch`` deliveries handed out (the broker can only put back some of those), and of
    those a restore or a lost channel still waits for. ``acknowledge`` sends one
    ``basic_ack(multiple=True)`` up to ``t``, never twice for the same tag (RabbitMQ closes the
    channel on an unknown tag).
    """

    def __init__(self, src: RabbitMQSource, ctx: SourceContext) -> None:
        self.src = src
        self.ctx = ctx
        self.what = f"rabbitmq source '{ctx.step}'"
        self.decode = make_decoder(src.format, src.deserializer)
        self.inbox: deque[tuple[Any, Any, bytes]] = deque()
        self.figures = {"retries": 0, "reconnects": 0, "redelivered_dropped": 0, "stalled_on_prefetch": 0}
        self.generation = 0       # which channel the tags belong to
        self.last_tag = 0         # last delivery tag handed out (or dropped) on this channel
        self.acked_tag = 0        # last tag acknowledged on this channel
        self.prev_poll_tag = 0
        #: (tag, message id) of the last ``prefetch`` deliveries handed out, acknowledged or not: the broker
        #: holds at most ``prefetch`` unacknowledged, so if the channel dies (an ack may be lost with it) the
        #: ones it puts back are among these
        self.recent_ids: deque[tuple[int, Any]] = deque(maxlen=src.prefetch)
        #: ids a restored checkpoint (or a lost channel) handed out already -> when to forget them
        self.covered: dict[Any, float] = {}
        self.positions: list[str] = []
        self.stop = StopCondition(src.max_records, src.idle_stop)
        self.connection: Any = None
        self.channel: Any = None
        self._open()

    def _on_retry(self, attempt: int, exc: BaseException) -> None:
        self.figures["retries"] += 1

    def _open(self) -> None:
        from pika import exceptions as px

        self.connection = _connect(self.src._url, self.what, self.src.backoff, self._on_retry)
        try:
            ch = self.connection.channel()
            ch.basic_qos(prefetch_count=self.src.prefetch)
            ch.basic_consume(self.src.queue, self._on_message, auto_ack=False)
        except px.ChannelClosedByBroker as exc:
            self._close_connection()
            raise _channel_error(exc, self.what, self.src.address, self.src.queue) from None
        self.channel = ch
        self.generation += 1
        self.last_tag = self.acked_tag = self.prev_poll_tag = 0

    def _close_connection(self) -> None:
        try:
            if self.connection is not None and self.connection.is_open:
                self.connection.close()
        except Exception as exc:  # noqa: BLE001 - closing a broken connection
            log.debug("%s: closing: %s", self.what, type(exc).__name__)

    def _reconnect(self, exc: BaseException) -> None:
        """The connection died: the broker puts back every unacknowledged delivery (redelivered)."""
        log.warning("%s: connection lost (%s); reconnecting", self.what, type(exc).__name__)
        self.figures["reconnects"] += 1
        self._close_connection()
        self.inbox.clear()  # not handed out: they come back
        # handed out but not acknowledged: they come back too, and are dropped when ids allow it
        until = time.monotonic() + REDELIVERY_WINDOW_S
        self.covered.update((i, until) for _, i in self.recent_ids if i is not None)
        self.recent_ids.clear()
        self._open()

    def _on_message(self, ch: Any, method: Any, properties: Any, body: bytes) -> None:
        self.inbox.append((method, properties, body))

    def _pump(self) -> None:
        from pika import exceptions as px

        try:
            self.connection.process_data_events(time_limit=0)
        except px.ChannelClosedByBroker as exc:
            raise _channel_error(exc, self.what, self.src.address, self.src.queue) from None
        except (px.AMQPConnectionError, px.ChannelWrongStateError, px.StreamLostError, ConnectionError) as exc:
            self._reconnect(exc)

    def _message_id(self, properties: Any, value: Any) -> Any:
        key = self.src.dedup_by
        if key == "message_id":
            return properties.message_id
        return value.get(key) if isinstance(value, dict) else None

    def poll(self, max_records: int) -> list[Any] | None:
        if not self.ctx.checkpointed and self.prev_poll_tag > self.acked_tag:
            self._ack(self.prev_poll_tag)  # no checkpoints: the previous poll's records are processed
        n = self.stop.room(max_records)
        if len(self.inbox) < n:
            self._pump()
        out: list[Any] = []
        self.positions = []
        inbox, meta_fields, dedup = self.inbox, self.src.metadata, self.src.dedup_by
        queue = self.src.queue
        while inbox and len(out) < n:
            method, props, body = inbox.popleft()
            tag = method.delivery_tag
            self.last_tag = tag
            position = f"{queue}#{tag}" + (" (redelivered)" if method.redelivered else "")
            meta = None
            if meta_fields:
                meta = {}
                for m in meta_fields:
                    meta[f"_{m}"] = (
                        method.routing_key if m == "routing_key" else method.exchange if m == "exchange"
                        else tag if m == "delivery_tag" else bool(method.redelivered) if m == "redelivered"
                        else dict(props.headers or {}) if m == "headers" else props.message_id
                        if m == "message_id" else props.timestamp)
            before = len(out)
            if dedup is None:
                if decode_into(out, self.ctx, self.decode, body, position, meta):
                    self.positions.append(position)
                continue
            if dedup == "message_id" and method.redelivered and props.message_id in self.covered:
                del self.covered[props.message_id]
                self.figures["redelivered_dropped"] += 1
                self.recent_ids.append((tag, props.message_id))
                continue
            if not decode_into(out, self.ctx, self.decode, body, position, meta):
                continue
            mid = self._message_id(props, out[-1])
            if method.redelivered and mid is not None and mid in self.covered:
                del self.covered[mid]
                del out[before:]
                self.figures["redelivered_dropped"] += 1
            else:
                self.positions.append(position)
            self.recent_ids.append((tag, mid))
        self.prev_poll_tag = self.last_tag
        if not out and self.last_tag - self.acked_tag >= self.src.prefetch:
            self.figures["stalled_on_prefetch"] += 1  # the broker waits for acks: the next checkpoint
        self.stop.took(len(out))
        if not out and (n == 0 or (self.stop.active and not inbox and self.stop.ended())):
            return None
        return out

    def position_of(self, index: int) -> str | None:
        return self.positions[index] if 0 <= index < len(self.positions) else None

    def snapshot(self) -> Any:
        pos: dict[str, Any] = {"channel": self.generation, "tag": self.last_tag}
        if self.src.dedup_by is not None:
            # every recent id, acknowledged or not: an ack sent just before a crash may never have arrived
            pos["ids"] = [i for _, i in self.recent_ids if i is not None] + list(self.covered)
        pos["count"] = self.stop.count
        return pos

    def restore(self, position: Any) -> None:
        # a new connection: tags restart, and what the checkpoint handed out but did not acknowledge comes
        # back as redelivered; with ids, those are dropped (the checkpoint covers them)
        if isinstance(position, dict):
            until = time.monotonic() + REDELIVERY_WINDOW_S
            self.covered = dict.fromkeys(position.get("ids", ()), until)
            self.stop.count = int(position.get("count", 0))  # max_records counts over restarts

    def acknowledge(self, position: Any) -> None:
        if self.covered:  # forget ids whose redelivery would have come by now
            now = time.monotonic()
            self.covered = {i: t for i, t in self.covered.items() if t > now}
        if isinstance(position, dict) and position.get("channel") == self.generation:
            self._ack(int(position["tag"]))
        # a position of an earlier channel: its deliveries went back to the queue with the channel

    def _ack(self, tag: int) -> None:
        if tag <= self.acked_tag:
            return  # acknowledged already: a second multiple-ack of the same tag would close the channel
        from pika import exceptions as px

        try:
            self.channel.basic_ack(delivery_tag=tag, multiple=True)
        except (px.AMQPConnectionError, px.ChannelWrongStateError, px.StreamLostError, ConnectionError) as exc:
            self._reconnect(exc)
            return
        self.acked_tag = tag

    def metrics(self) -> dict[str, int]:
        return {**self.figures, "unacknowledged": self.last_tag - self.acked_tag, "buffered": len(self.inbox)}

    def close(self) -> None:
        if not self.ctx.checkpointed and self.prev_poll_tag > self.acked_tag:
            try:
                self._ack(self.prev_poll_tag)
            except Exception:  # noqa: BLE001 - closing anyway
                log.warning("%s: could not acknowledge on close", self.what)
        self._close_connection()  # what is not acknowledged goes back to the queue


# -- sink ----------------------------------------------------------------------------------------


class RabbitMQSink(Sink):
    """Publish with publisher confirms (see :func:`millstream.connectors.rabbitmq.write`)."""

    delivery = "none"

    def __init__(self, exchange: str, routing_key: str | Callable[[Any], str], *, url: str, confirms: bool,
                 mandatory: bool, persistent: bool, message_id: str | Callable[[Any], Any] | None, format: str,
                 serializer: Callable[[Any], bytes] | None, timeout_s: float, backoff: Backoff,
                 name: str) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self._url = url
        self.confirms = confirms
        self.mandatory = mandatory
        self.persistent = persistent
        self.message_id = message_id
        self.format, self.serializer = format, serializer
        self.timeout_s = timeout_s
        self.backoff = backoff
        self.name = name

    @property
    def address(self) -> str:
        return redact_url(self._url)

    def open(self, step: str) -> SinkWriter:
        return RabbitMQWriter(self, step)

    def describe(self) -> str:
        host = self.address.split("://", 1)[-1].split("@", 1)[-1].split("/", 1)[0]
        rk = self.routing_key if isinstance(self.routing_key, str) else "<per record>"
        ex = self.exchange or "(default)"
        return f"rabbitmq exchange {ex} key {rk}@{host}" + (" (confirms)" if self.confirms else "")

    def default_name(self) -> str:
        return self.name


#: Wait for confirms once this many publishes are outstanding.
MAX_UNCONFIRMED = 10_000


class RabbitMQWriter(SinkWriter):
    """Publishes without waiting; the broker's confirms (``Basic.Ack``, often ``multiple``) arrive
    while :meth:`flush` pumps the connection. pika's BlockingChannel only has one-at-a-time confirms
    (< 1 k messages/s), so confirm mode is switched on the channel underneath it (``_impl``)."""

    def __init__(self, sink: RabbitMQSink, step: str) -> None:
        pika = _pika()
        self.pika = pika
        self.sink = sink
        self.what = f"rabbitmq sink '{step}'"
        self.encode = make_encoder(sink.format, sink.serializer)
        self.props_static = dict(content_type="application/json" if sink.format == "json" and not sink.serializer
                                 else None, delivery_mode=2 if sink.persistent else 1)
        self.published = 0      # publish sequence numbers (1-based) since confirm.select
        self.confirmed_upto = 0  # every seq <= this is settled
        self.settled: set[int] = set()  # settled out of order (single acks above confirmed_upto)
        self.nacked = 0
        self.returned: list[str] = []
        self.connection = _connect(sink._url, self.what, sink.backoff, None)
        self.channel = self.connection.channel()
        if sink.confirms:
            ready: list[bool] = []
            impl = self.channel._impl
            impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: ready.append(True))
            impl.add_on_return_callback(self._on_return)
            deadline = time.monotonic() + sink.timeout_s
            while not ready and time.monotonic() < deadline:
                self.connection.process_data_events(time_limit=0.05)
            if not ready:
                raise ConnectorError("the broker did not turn on publisher confirms", connector=self.what,
                                     address=sink.address)

    def _on_confirm(self, frame: Any) -> None:
        m = frame.method
        tag, multiple = m.delivery_tag, m.multiple
        if isinstance(m, self.pika.spec.Basic.Nack):
            self.nacked += (tag - self.confirmed_upto) if multiple else 1
        if multiple:
            self.confirmed_upto = max(self.confirmed_upto, tag)
        else:
            self.settled.add(tag)
        s = self.settled
        while self.confirmed_upto + 1 in s:
            self.confirmed_upto += 1
            s.discard(self.confirmed_upto)
        if s and min(s) <= self.confirmed_upto:
            self.settled = {t for t in s if t > self.confirmed_upto}

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.returned.append(f"{method.reply_code} {method.reply_text} (exchange {method.exchange!r}, "
                             f"routing key {method.routing_key!r})")

    def write(self, records: list[Any], times: list[int] | None) -> None:
        from pika import exceptions as px

        sink, encode, pika = self.sink, self.encode, self.pika
        rk, mid, ex, mandatory = sink.routing_key, sink.message_id, sink.exchange, sink.mandatory
        publish = self.channel.basic_publish
        static = self.props_static
        plain = pika.BasicProperties(**static)
        try:
            for r in records:
                key = rk if isinstance(rk, str) else rk(r)
                if mid is None:
                    props = plain
                else:
                    value = r.get(mid) if isinstance(mid, str) else mid(r)
                    props = pika.BasicProperties(message_id=None if value is None else str(value), **static)
                publish(ex, key, encode(r), props, mandatory=mandatory)
                self.published += 1
        except px.ChannelClosedByBroker as exc:
            raise _channel_error(exc, self.what, sink.address) from None
        except (px.AMQPConnectionError, px.StreamLostError, ConnectionError) as exc:
            raise ConnectorUnavailable(f"connection lost while publishing ({type(exc).__name__})",
                                       connector=self.what, address=sink.address) from None
        if sink.confirms and self.published - self.confirmed_upto >= MAX_UNCONFIRMED:
            self._wait(self.published - MAX_UNCONFIRMED // 2)

    def _wait(self, upto: int) -> None:
        from pika import exceptions as px

        deadline = time.monotonic() + self.sink.timeout_s
        try:
            self.connection.process_data_events(time_limit=0)
            while self.confirmed_upto < upto:
                if time.monotonic() > deadline:
                    raise ConnectorError(
                        f"{upto - self.confirmed_upto} publishes not confirmed within {self.sink.timeout_s}s",
                        connector=self.what, address=self.sink.address,
                        fix="check the broker (a full disk or memory alarm blocks publishers)")
                self.connection.process_data_events(time_limit=0.01)
        except px.ChannelClosedByBroker as exc:
            raise _channel_error(exc, self.what, self.sink.address) from None
        except (px.AMQPConnectionError, px.StreamLostError, ConnectionError) as exc:
            raise ConnectorUnavailable(f"connection lost waiting for confirms ({type(exc).__name__})",
                                       connector=self.what, address=self.sink.address) from None
        self._check()

    def _check(self) -> None:
        if self.nacked:
            raise ConnectorError(f"the broker refused (nack) {self.nacked} messages", connector=self.what,
                                 address=self.sink.address, fix="check the broker's log and the queue's limits")
        if self.returned:
            raise ConnectorError(f"{len(self.returned)} messages could not be routed to any queue, e.g. "
                                 f"{self.returned[0]}", connector=self.what, address=self.sink.address,
                                 fix="declare and bind the queue, or check the routing key; or mandatory=False "
                                     "to drop unroutable messages")

    def flush(self) -> None:
        """Wait for the broker's confirms of everything published so far (at every checkpoint)."""
        if self.sink.confirms:
            self._wait(self.published)
        else:
            self.connection.process_data_events(time_limit=0)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            try:
                if self.connection.is_open:
                    self.connection.close()
            except Exception as exc:  # noqa: BLE001 - already broken
                log.debug("%s: closing: %s", self.what, type(exc).__name__)
