"""The MQTT source and sink (paho-mqtt 2.x), behind :mod:`millstream.connectors.mqtt`.

Also the small payload codec the message connectors share (MQTT, RabbitMQ, HTTP):
:func:`make_decoder`, :func:`make_encoder`, :func:`with_metadata`.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from millstream.connectors._base import (
    ErrorPolicy,
    Sink,
    SinkWriter,
    Source,
    SourceContext,
    SourceReader,
    check_policy,
)
from millstream.connectors._codec import (  # the codec the message connectors share
    StopCondition,
    decode_into,
    make_decoder,
    make_encoder,
)
from millstream.errors import ConnectorError, ConnectorUnavailable, MissingDependencyError

log = logging.getLogger("millstream.connectors.mqtt")

def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise MissingDependencyError("paho-mqtt", "mqtt", "the MQTT connector") from None
    return mqtt


# -- source --------------------------------------------------------------------------------------

METADATA = ("topic", "qos", "retain", "dup", "mid")


class MqttSource(Source):
    """Subscribe to MQTT topics (see :func:`millstream.connectors.mqtt.read`)."""

    def __init__(self, topics: Sequence[str], *, host: str, port: int, qos: int, client_id: str,
                 clean_start: bool, username: str | None, password: str | None, keepalive: int,
                 session_expiry: int, format: str, deserializer: Callable[[bytes], Any] | None,
                 metadata: tuple[str, ...], on_error: ErrorPolicy, max_records: int | None,
                 idle_stop: float | None, name: str, connect_timeout: float) -> None:
        self.topics = tuple(topics)
        self.host, self.port, self.qos = host, port, qos
        self.client_id = client_id
        self.clean_start = clean_start
        self.username = username
        self._password = password
        self.keepalive = keepalive
        self.session_expiry = session_expiry
        self.format, self.deserializer, self.metadata = format, deserializer, metadata
        self.on_error = check_policy(on_error)
        self.max_records, self.idle_stop = max_records, idle_stop
        self.bounded = max_records is not None or idle_stop is not None
        self.replay = "redelivery" if qos == 1 and not clean_start else "none"
        self.name = name
        self.connect_timeout = connect_timeout

    def open(self, ctx: SourceContext) -> SourceReader:
        return MqttReader(self, ctx)

    def describe(self) -> str:
        session = "clean session" if self.clean_start else f"session {self.client_id}"
        return f"mqtt {','.join(self.topics)}@{self.host}:{self.port} (qos {self.qos}, {session})"

    def default_name(self) -> str:
        return self.name


def _fingerprint(topic: str, payload: bytes) -> str:
    return hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=8).hexdigest()


class _Connected:
    """Put into the inbox when a connection comes up, so that the reader sees it in arrival order
    (behind every message of the connections before it)."""

    __slots__ = ("session_present",)

    def __init__(self, session_present: bool) -> None:
        self.session_present = session_present


class MqttReader(SourceReader):
    """Messages arrive on paho's network thread into a bounded queue; ``poll`` decodes them.

    QoS 1 with manual acknowledgement: each handed-out message waits in ``pending`` (its sequence
    number, packet id and a fingerprint of topic + payload) until :meth:`acknowledge` sends its
    PUBACK, in the order the messages came. A redelivered message (DUP flag) whose packet id and
    fingerprint match one still pending, acknowledged lately, or covered by the restored checkpoint
    is dropped: it was handed out already.

    What is known about a connection (its number, whether the broker kept the session) is applied
    in arrival order: the inbox can still hold messages of older connections when a new one comes up,
    and their resends must be recognised against what was known when they came.
    """

    def __init__(self, src: MqttSource, ctx: SourceContext) -> None:
        self.src = src
        self.ctx = ctx
        self.decode = make_decoder(src.format, src.deserializer)
        self.manual = src.qos == 1
        self.inbox: queue.Queue[Any] = queue.Queue(maxsize=100_000)
        self.pending: deque[tuple[int, int, str]] = deque()  # (seq, mid, fingerprint), in arrival order
        self.pending_ids: set[tuple[int, str]] = set()       # the (mid, fingerprint) pairs in ``pending``
        self.covered: set[tuple[int, str]] = set()           # from a restored checkpoint
        #: acknowledged lately, with the connection the PUBACK went out on: a resend (DUP) of one of
        #: them was handed out already (acknowledge it again if the PUBACK went out on an older connection)
        self.acked_at: OrderedDict[tuple[int, str], int] = OrderedDict()
        self.conn_gen = 0         # the connection paho has now (counted in on_connect)
        self.covered_gen = 0      # the connection after which covered messages are resent
        self.session_gen = 0      # the first connection of the broker's current session
        self.read_gen = 0         # the connection of the last message ``poll`` took (arrival order)
        self.read_gen_new = False  # whether a first-time (not DUP) message came on ``read_gen`` yet
        self.seq = 0              # messages handed out (and covered redeliveries dropped)
        self.acked_seq = 0
        self.prev_poll_seq = 0    # unchecked runs: what the previous poll handed out
        self.positions: list[str] = []
        self.figures = {"retries": 0, "redelivered_dropped": 0, "reconnects": 0, "session_lost": 0}
        self.stop = StopCondition(src.max_records, src.idle_stop)
        self.error: BaseException | None = None
        self._connected = threading.Event()
        self._first = True
        self._lock = threading.Lock()
        self.client = self._connect()

    # -- connection ---------------------------------------------------------------------------
    def _what(self) -> str:
        return f"mqtt source '{self.ctx.step}'"

    def _connect(self) -> Any:
        mqtt = _paho()
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        src = self.src
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=src.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=self.manual)
        if src.username is not None:
            client.username_pw_set(src.username, src._password)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(0.1, 5)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if src.clean_start else src.session_expiry
        try:
            client.connect(src.host, src.port, keepalive=src.keepalive, clean_start=src.clean_start,
                           properties=props)
        except OSError as exc:
            raise ConnectorError(f"cannot connect: {exc}", connector=self._what(),
                                 address=f"{src.host}:{src.port}",
                                 fix="check that the MQTT broker runs and listens there") from None
        client.loop_start()
        if not self._connected.wait(src.connect_timeout):
            client.loop_stop()
            if self.error is not None:
                raise self.error
            raise ConnectorUnavailable(f"no CONNACK within {src.connect_timeout}s", connector=self._what(),
                                       address=f"{src.host}:{src.port}")
        return client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            fix = ("check username and password" if reason.value in (0x86, 0x87)
                   else "check the broker's configuration")
            self.error = ConnectorError(f"the broker refused the connection: {reason}", connector=self._what(),
                                        address=f"{self.src.host}:{self.src.port}", fix=fix)
            client.disconnect()
            self._connected.set()
            return
        present = bool(flags.session_present)
        with self._lock:
            if not present and (self.pending or self.covered):
                # the broker forgot the session: packet ids of the old one mean nothing now (a PUBACK
                # for one would acknowledge a message of the new session), and what was handed out can
                # no longer come back
                if not self._first or self.covered:
                    log.warning("%s: the broker did not keep the session of %r; %d unacknowledged messages "
                                "will not be redelivered", self._what(), self.src.client_id, len(self.pending))
                    self.figures["session_lost"] += 1
                self.pending.clear()
                self.pending_ids.clear()
                self.covered.clear()
            self.conn_gen += 1
            if not self._first:
                self.figures["reconnects"] += 1
            if not present:
                self.session_gen = self.conn_gen
            self._first = False
            gen = self.conn_gen
        self.inbox.put((gen, _Connected(present)))  # ahead of this connection's messages
        client.subscribe([(t, self.src.qos) for t in self.src.topics])
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.figures["retries"] += 1
            log.warning("%s: disconnected (%s); paho reconnects", self._what(), reason)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.inbox.put((self.conn_gen, msg))  # blocks paho's network thread when full: TCP backpressure

    # -- reading ------------------------------------------------------------------------------
    def _reached(self, gen: int, connected: _Connected) -> None:
        """``poll`` reached connection ``gen``: every message of the older ones is behind it."""
        with self._lock:
            self.read_gen, self.read_gen_new = gen, False
            if not connected.session_present:
                # resends of the old session can no longer come: forget what was acknowledged on it
                for k in [k for k, g in self.acked_at.items() if g < gen]:
                    del self.acked_at[k]

    def _first_new(self, gen: int) -> None:
        """The first message of connection ``gen`` that is not a resend: on a connection, the broker
        resends everything it sent before and got no PUBACK for, ahead of anything new. A PUBACK sent
        on an older connection whose message was not resent by now reached the broker."""
        self.read_gen_new = True
        for k in [k for k, g in self.acked_at.items() if g < gen]:
            del self.acked_at[k]

    def _track(self, gen: int, mid: int, fp: str, dup: bool) -> bool:
        """Book one QoS 1 message; False when it is a resend of one handed out already."""
        with self._lock:
            current = gen >= self.session_gen  # of the broker's current session (else: nothing to PUBACK)
            key = (mid, fp)
            if dup and key in self.covered:
                # handed out before a crash or a lost connection, and covered by a checkpoint
                # (or already acknowledged): drop it, and acknowledge it again on this session
                self.covered.discard(key)
                self.figures["redelivered_dropped"] += 1
                if current:
                    self.seq += 1
                    self.pending.append((self.seq, mid, fp))
                    self.pending_ids.add(key)
                return False
            if dup and key in self.pending_ids:
                # resent after a reconnect while still waiting for its checkpoint: its pending
                # entry sends the one PUBACK (a second one could acknowledge a new message)
                self.figures["redelivered_dropped"] += 1
                return False
            acked_on = self.acked_at.get(key) if dup else None
            if acked_on is not None:
                # handed out and acknowledged already; resent because the connection died
                self.figures["redelivered_dropped"] += 1
                if acked_on < gen and current:  # that PUBACK was lost with the old connection
                    del self.acked_at[key]
                    self.seq += 1
                    self.pending.append((self.seq, mid, fp))
                    self.pending_ids.add(key)
                return False
            if not dup:
                if gen == self.read_gen and not self.read_gen_new:
                    self._first_new(gen)
                if self.covered and gen >= self.covered_gen:
                    # on a (re)connection the broker resends what was in flight before anything new:
                    # the covered ids still missing were acknowledged and will not come back
                    self.covered.clear()
            if current:
                self.seq += 1
                self.pending.append((self.seq, mid, fp))
                self.pending_ids.add(key)
            return True

    def poll(self, max_records: int) -> list[Any] | None:
        if self.error is not None:
            raise self.error
        if not self.ctx.checkpointed and self.manual and self.prev_poll_seq > self.acked_seq:
            self._ack_upto(self.prev_poll_seq)  # no checkpoints: the previous poll's records are processed
        n = self.stop.room(max_records)
        out: list[Any] = []
        self.positions = []
        meta_fields = self.src.metadata
        inbox = self.inbox
        while len(out) < n:
            try:
                gen, msg = inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(msg, _Connected):
                self._reached(gen, msg)
                continue
            mid, topic, payload = msg.mid, msg.topic, msg.payload
            if self.manual and msg.qos == 1 and not self._track(gen, mid, _fingerprint(topic, payload),
                                                                bool(msg.dup)):
                continue
            position = f"{topic}#{mid}" if mid else topic
            meta = None
            if meta_fields:
                meta = {}
                for m in meta_fields:
                    meta[f"_{m}"] = (topic if m == "topic" else msg.qos if m == "qos" else bool(msg.retain)
                                     if m == "retain" else bool(msg.dup) if m == "dup" else mid)
            if decode_into(out, self.ctx, self.decode, payload, position, meta):
                self.positions.append(position)
        self.prev_poll_seq = self.seq
        self.stop.took(len(out))
        if not out and self.stop.active and self.stop.ended():
            return None
        if not out and n == 0:
            return None
        return out

    def position_of(self, index: int) -> str | None:
        return self.positions[index] if 0 <= index < len(self.positions) else None

    def snapshot(self) -> Any:
        with self._lock:
            unacked = [(m, f) for s, m, f in self.pending]
        return {"seq": self.seq, "unacked": unacked + sorted(self.covered), "count": self.stop.count}

    def restore(self, position: Any) -> None:
        # packet ids handed out before the checkpoint and maybe not acknowledged: if they come back
        # (DUP) they are dropped; the broker redelivers only what it did not get a PUBACK for
        with self._lock:
            self.covered = {(int(m), str(f)) for m, f in position.get("unacked", ())}
            self.covered_gen = self.conn_gen
        self.stop.count = int(position.get("count", 0))  # max_records counts over restarts

    def acknowledge(self, position: Any) -> None:
        if self.manual and isinstance(position, dict):
            self._ack_upto(int(position["seq"]))

    def _ack_upto(self, seq: int) -> None:
        with self._lock:
            pending, acked_at, gen = self.pending, self.acked_at, self.conn_gen
            while pending and pending[0][0] <= seq:
                _, mid, fp = pending.popleft()
                self.pending_ids.discard((mid, fp))
                self.client.ack(mid, 1)
                acked_at[(mid, fp)] = gen
                acked_at.move_to_end((mid, fp))
            while len(acked_at) > 2 * 65_535:
                acked_at.popitem(last=False)
            self.acked_seq = max(self.acked_seq, seq)

    def metrics(self) -> dict[str, int]:
        return {**self.figures, "unacknowledged": len(self.pending), "buffered": self.inbox.qsize()}

    def close(self) -> None:
        if not self.ctx.checkpointed and self.manual:
            self._ack_upto(self.prev_poll_seq)
        client = self.client
        try:
            client.disconnect()  # keeps the session (and what was not acknowledged) on the broker
        finally:
            client.loop_stop()


# -- sink ----------------------------------------------------------------------------------------


class MqttSink(Sink):
    """Publish records at QoS 0/1 (see :func:`millstream.connectors.mqtt.write`)."""

    delivery = "none"

    def __init__(self, topic: str | Callable[[Any], str], *, host: str, port: int, qos: int, retain: bool,
                 client_id: str | None, username: str | None, password: str | None, format: str,
                 serializer: Callable[[Any], bytes] | None, keepalive: int, timeout_s: float,
                 name: str) -> None:
        self.topic = topic
        self.host, self.port, self.qos, self.retain = host, port, qos, retain
        self.client_id = client_id
        self.username = username
        self._password = password
        self.format, self.serializer = format, serializer
        self.keepalive = keepalive
        self.timeout_s = timeout_s
        self.name = name

    def open(self, step: str) -> SinkWriter:
        return MqttWriter(self, step)

    def describe(self) -> str:
        topic = self.topic if isinstance(self.topic, str) else "<topic per record>"
        return f"mqtt {topic}@{self.host}:{self.port} (qos {self.qos})"

    def default_name(self) -> str:
        return self.name


#: Wait for PUBACKs before this many QoS 1 messages are in flight (packet ids are 16-bit).
MAX_IN_FLIGHT = 50_000


class MqttWriter(SinkWriter):
    def __init__(self, sink: MqttSink, step: str) -> None:
        mqtt = _paho()
        from paho.mqtt.enums import CallbackAPIVersion

        self.sink = sink
        self.what = f"mqtt sink '{step}'"
        self.encode = make_encoder(sink.format, sink.serializer)
        self.infos: list[Any] = []
        self._refused: str | None = None
        self._ready = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=sink.client_id or "", protocol=mqtt.MQTTv5)
        if sink.username is not None:
            client.username_pw_set(sink.username, sink._password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        try:
            client.connect(sink.host, sink.port, keepalive=sink.keepalive)
        except OSError as exc:
            raise ConnectorError(f"cannot connect: {exc}", connector=self.what, address=f"{sink.host}:{sink.port}",
                                 fix="check that the MQTT broker runs and listens there") from None
        client.loop_start()
        if not self._ready.wait(sink.timeout_s) or self._refused:
            client.loop_stop()
            raise ConnectorError(self._refused or f"no CONNACK within {sink.timeout_s}s", connector=self.what,
                                 address=f"{sink.host}:{sink.port}", fix="check the broker and the credentials")
        self.client = client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = f"the broker refused the connection: {reason}"
        self._ready.set()

    def write(self, records: list[Any], times: list[int] | None) -> None:
        sink, encode, publish = self.sink, self.encode, self.client.publish
        topic = sink.topic
        qos, retain = sink.qos, sink.retain
        infos = self.infos
        for r in records:
            t = topic if isinstance(topic, str) else topic(r)
            info = publish(t, encode(r), qos=qos, retain=retain)
            if info.rc != 0 and info.rc != 4:  # 4: queued while reconnecting (paho publishes it later)
                raise ConnectorUnavailable(f"publish failed (paho rc {info.rc})", connector=self.what,
                                           address=f"{sink.host}:{sink.port}")
            if qos:
                infos.append(info)
        if len(infos) >= MAX_IN_FLIGHT:
            self.flush()

    def flush(self) -> None:
        """Wait until the broker acknowledged (PUBACK) every QoS 1 message published so far."""
        deadline = time.monotonic() + self.sink.timeout_s
        for info in self.infos:
            while not info.is_published():
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sum(1 for i in self.infos if not i.is_published())
                    raise ConnectorError(
                        f"{missing} messages not acknowledged by the broker within {self.sink.timeout_s}s",
                        connector=self.what, address=f"{self.sink.host}:{self.sink.port}",
                        fix="check the broker; under at-least-once the job replays from its last checkpoint")
                info.wait_for_publish(min(left, 0.5))
        self.infos.clear()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.client.disconnect()
            self.client.loop_stop()
