"""NATS JetStream: a durable pull consumer as a source, JetStream publish with message ids as a sink.

The public facade is :mod:`millstream.connectors.nats`. nats-py is asyncio: each reader and
writer runs its own event loop in a background thread (started when it opens, stopped and
joined when it closes) and the job's thread hands it coroutines.

The source's position is the stream sequence of the last message the job consumed. The
consumer acknowledges with ``AckPolicy.ALL``: one ack of the checkpoint's last message
acknowledges everything before it. JetStream only redelivers a message once its
``ack_wait`` has passed, so after a crash the messages the dead run had pulled would come
back late, behind newer ones; to read them again in order, a restart that finds unacked
messages recreates the durable consumer at the sequence after the restored position
(or after its ack floor without a checkpoint). Messages at or below the position are
dropped, so exactly-once holds with a transactional sink downstream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from millstream.connectors._base import Backoff, Delivery, Sink, SinkWriter, SourceContext, SourceReader, retry
from millstream.connectors._codec import decode_into, make_decoder
from millstream.connectors._options_source import OptionsSource, host_of
from millstream.errors import ConnectorError, ConnectorUnavailable

__all__ = ["NatsSink", "NatsSource", "ReadOptions", "WriteOptions"]

log = logging.getLogger("millstream.connectors.nats")
T = TypeVar("T")

METADATA = ("subject", "sequence", "timestamp", "headers")


def hosts(servers: tuple[str, ...]) -> str:
    return ",".join(host_of(s) for s in servers)


class _Loop:
    """An asyncio loop in a thread of its own; ``run`` waits for a coroutine from another thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


class _Conn:
    """A NATS connection on its own loop, with errors sorted into retryable and fatal."""

    def __init__(self, servers: tuple[str, ...], connector: str, backoff: Backoff,
                 on_retry: Callable[[int, BaseException], None]) -> None:
        self.servers = servers
        self.connector = connector
        self.address = hosts(servers)
        self.backoff = backoff
        self.on_retry = on_retry
        self.secrets = [s for s in (_password(u) for u in servers) if s]
        self.loop = _Loop(f"millstream-nats {connector}")
        self.nc: Any = None
        self.js: Any = None
        self.disconnects = 0
        try:
            self.call(self._connect, "connecting to")
        except BaseException:
            self.loop.stop()
            raise

    async def _connect(self) -> None:
        import nats

        async def quiet(exc: Exception) -> None:  # nats-py logs errors with their text by default
            log.debug("%s: %s", self.connector, self.scrub(f"{type(exc).__name__}: {exc}"))

        # a first connection that fails is retried by ``call`` with the backoff (logged, counted);
        # once connected, nats-py reconnects by itself for as long as it takes
        self.nc = await nats.connect(servers=list(self.servers), connect_timeout=5, allow_reconnect=True,
                                     max_reconnect_attempts=1, reconnect_time_wait=0.1, error_cb=quiet,
                                     disconnected_cb=self._disconnected, reconnected_cb=_nothing,
                                     closed_cb=_nothing)
        self.nc.options["max_reconnect_attempts"] = -1
        self.nc.options["reconnect_time_wait"] = 0.5
        self.js = self.nc.jetstream()

    async def _disconnected(self) -> None:
        self.disconnects += 1
        log.warning("%s: lost the connection to %s; reconnecting", self.connector, self.address)

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def error(self, exc: BaseException) -> ConnectorError:
        import nats.errors as ne
        import nats.js.errors as jse

        text = self.scrub(f"{type(exc).__name__}: {exc}".rstrip(": "))
        if isinstance(exc, ne.AuthorizationError) or "authorization" in text.lower():
            return ConnectorError(f"authentication failed ({text})", connector=self.connector, address=self.address,
                                  fix="check the user and password (nats://user:password@host:port) or token")
        if isinstance(exc, jse.ServiceUnavailableError | ne.NoServersError | ne.ConnectionClosedError |
                      ne.TimeoutError | ne.NoRespondersError | asyncio.TimeoutError | OSError):
            return ConnectorUnavailable(text, connector=self.connector, address=self.address)
        return ConnectorError(text, connector=self.connector, address=self.address)

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], what: str, timeout: float = 30) -> T:
        """Run ``make()`` on the loop, retrying what may pass with the backoff."""

        def attempt() -> T:
            try:
                return self.loop.run(make(), timeout)
            except ConnectorError:
                raise
            except Exception as exc:  # noqa: BLE001 - sorted into retryable and fatal
                raise self.error(exc) from None

        return retry(attempt, what=f"{self.connector} {what} {self.address}", backoff=self.backoff,
                     on_retry=self.on_retry)

    def close(self) -> None:
        nc, self.nc = self.nc, None
        try:
            if nc is not None and not nc.is_closed:
                self.loop.run(nc.close(), 10)
        except Exception as exc:  # noqa: BLE001 - closing: nothing left to save
            log.debug("%s: closing: %s", self.connector, self.scrub(str(exc)))
        finally:
            self.loop.stop()


async def _nothing() -> None:
    return None


def _password(url: str) -> str | None:
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return parts.password
    if parts.username and not parts.password:  # nats://TOKEN@host
        return parts.username
    return None


def _seq_and_ts(reply: str) -> tuple[int, int]:
    """Stream sequence and timestamp (ms) from a JetStream ack subject."""
    t = reply.split(".")
    if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>
        return int(t[5]), int(t[7]) // 1_000_000
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>[.<token>]
    return int(t[7]), int(t[9]) // 1_000_000


# -- the source -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadOptions:
    stream: str
    servers: tuple[str, ...]
    durable: str
    subject: str | None
    start: str | int
    bounded: bool
    batch: int
    fetch_timeout_s: float
    ack_wait_s: float
    format: str
    deserializer: Callable[[bytes], Any] | None
    metadata: tuple[str, ...]
    backoff: Backoff = dataclasses.field(default_factory=Backoff)


class NatsSource(OptionsSource[ReadOptions]):
    """Reads a JetStream stream through a durable pull consumer."""

    replay = "redelivery"

    def open(self, ctx: SourceContext) -> SourceReader:
        return _NatsReader(self.options, ctx)

    def describe(self) -> str:
        o = self.options
        what = o.stream + (f" ({o.subject})" if o.subject else "")
        return f"nats {what}@{hosts(o.servers)} (durable {o.durable})" + (", bounded" if o.bounded else "")

    def default_name(self) -> str:
        return self.name or self.options.stream


class _NatsReader(SourceReader):
    def __init__(self, options: ReadOptions, ctx: SourceContext) -> None:
        self.o = options
        self.ctx = ctx
        self.connector = f"nats source '{ctx.step}'"
        self.decode = make_decoder(options.format, options.deserializer)
        self.retries = 0
        self.dropped = 0
        self.recreated = 0
        self.unconfirmed = 0
        self.last: int | None = None        # stream sequence of the last message consumed (the position)
        self.covered: int | None = None     # restored: messages up to here are done
        self.end: int | None = None         # bounded: the stream's last sequence at start
        self.ended = False
        self.sub: Any = None
        self.seen_disconnects = 0
        self.acks: deque[tuple[int, str]] = deque()  # (sequence, ack subject) of each chunk's last message
        self.chunk_seqs: list[int] = []
        self.conn = _Conn(options.servers, self.connector, options.backoff, self._on_retry)
        try:
            info = self.conn.call(self._stream_info, "looking up the stream at")
            self.retention = str(getattr(info.config.retention, "value", info.config.retention) or "limits")
            if options.bounded:
                self.end = int(info.state.last_seq)
                if info.state.messages == 0:
                    self.ended = True
        except BaseException:
            self.conn.close()
            raise

    def _on_retry(self, attempt: int, exc: BaseException) -> None:
        self.retries += 1

    async def _stream_info(self) -> Any:
        import nats.js.errors as jse

        try:
            return await self.conn.js.stream_info(self.o.stream)
        except jse.NotFoundError:
            raise ConnectorError(f"JetStream has no stream {self.o.stream!r}", connector=self.connector,
                                 address=self.conn.address,
                                 fix="create the stream first (nats stream add, or JetStreamManager.add_stream)"
                                 ) from None

    # -- the consumer
    async def _bind(self, force: bool = False) -> None:
        """Bind to the durable consumer, (re)creating it where the restart needs (see the module docstring)."""
        import nats.js.api as api
        import nats.js.errors as jse

        js, o = self.conn.js, self.o
        try:
            ci = await js.consumer_info(o.stream, o.durable)
        except jse.NotFoundError:
            ci = None
        start: int | None = None
        resume = self.last  # the restored position, or what this run has read
        if ci is not None:
            cfg = ci.config
            floor = int(ci.ack_floor.stream_seq)
            mismatch = cfg.ack_policy != api.AckPolicy.ALL or (cfg.filter_subject or None) != o.subject \
                or cfg.ack_wait != o.ack_wait_s
            behind = resume is not None and resume < floor  # acknowledged past the checkpoint we resume from
            if force:
                why = "the connection dropped: messages in flight may be lost, and acking a later one would skip them"
            elif mismatch:
                why = "its configuration changed"
            elif ci.num_ack_pending:
                why = f"{ci.num_ack_pending} messages a previous run pulled are unacknowledged"
            elif behind:
                why = f"its ack floor {floor} is past the checkpoint's sequence {resume}"
            else:
                why = ""
            if why and self.retention == "interest":
                raise ConnectorError(
                    f"durable consumer {o.durable!r} must be recreated ({why}), which an interest-retention "
                    "stream answers by deleting the messages", connector=self.connector, address=self.conn.address,
                    fix=f"use limits (the default) or work-queue retention for stream {o.stream!r}")
            if why:
                start = (resume if resume is not None else floor) + 1
                log.info("%s: recreating durable consumer %r at stream sequence %d: %s", self.connector,
                         o.durable, start, why)
                await js.delete_consumer(o.stream, o.durable)
                self.recreated += 1
                self.acks.clear()  # their ack subjects name the old consumer; the new one starts past them
                ci = None
        elif resume is not None:
            start = resume + 1
        if ci is None:
            if start is not None:
                policy: dict[str, Any] = {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": start}
            elif o.start == "new":
                policy = {"deliver_policy": api.DeliverPolicy.NEW}
            elif isinstance(o.start, int):
                policy = {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": o.start}
            else:
                policy = {"deliver_policy": api.DeliverPolicy.ALL}
            await js.add_consumer(o.stream, api.ConsumerConfig(
                durable_name=o.durable, ack_policy=api.AckPolicy.ALL, ack_wait=o.ack_wait_s,
                filter_subject=o.subject, max_ack_pending=-1, max_deliver=-1, **policy))
        if self.sub is not None:
            await self.sub.unsubscribe()
        self.seen_disconnects = self.conn.disconnects
        await self._subscribe()

    # -- pulling: pull requests answered into an inbox of our own, gathered by a callback (nats-py's
    #    fetch() awaits each message with a timeout, which costs several times more)
    async def _subscribe(self) -> None:
        self.inbox = self.conn.nc.new_inbox()
        self.box: deque[Any] = deque()
        self.arrived = asyncio.Event()
        self.outstanding = 0          # messages the open pull request may still bring
        self.request_until = 0.0      # when it expires (a lost request is forgotten then)
        self.drained = False          # the last request ended with "no messages" / "timeout"
        self.sub = await self.conn.nc.subscribe(self.inbox, cb=self._arrive, pending_msgs_limit=-1,
                                                pending_bytes_limit=-1)
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.o.stream}.{self.o.durable}"

    async def _arrive(self, msg: Any) -> None:
        headers = msg.headers
        if headers and not msg.data and "Status" in headers:
            if headers["Status"] == "100":  # idle heartbeat
                return
            self.outstanding = 0  # 404 no messages, 408 request expired, 409 a limit or the consumer went
            self.drained = headers["Status"] in ("404", "408")
            self.arrived.set()
            return
        self.box.append(msg)
        self.outstanding -= 1
        self.arrived.set()

    async def _pull(self, n: int) -> list[Any]:
        loop = asyncio.get_running_loop()
        box = self.box
        if not box:
            if self.outstanding <= 0 or loop.time() > self.request_until:
                batch = self.o.batch
                wait = self.o.fetch_timeout_s
                if self.drained and self.end is None:  # caught up: a long poll that answers as messages come
                    expires = max(wait * 10, 1.0)
                    request = {"batch": batch, "expires": int(expires * 1e9)}
                else:
                    expires = 5.0
                    request = {"batch": batch, "no_wait": True}
                self.outstanding, self.drained = batch, False
                self.request_until = loop.time() + expires + 1.0
                self.arrived.clear()
                await self.conn.nc.publish(self.next_subject, orjson.dumps(request), reply=self.inbox)
            self.arrived.clear()
            if not box and (self.outstanding > 0 or not self.drained):
                try:
                    await asyncio.wait_for(self.arrived.wait(), self.o.fetch_timeout_s)
                except TimeoutError:
                    pass
        take = min(n, len(box))
        return [box.popleft() for _ in range(take)]

    async def _num_pending(self) -> int:
        ci = await self.conn.js.consumer_info(self.o.stream, self.o.durable)
        return int(ci.num_pending)

    # -- the source model
    def snapshot(self) -> Any:
        return {"stream": self.o.stream, "durable": self.o.durable, "sequence": self.last}

    def restore(self, position: Any) -> None:
        if position and position.get("sequence") is not None:
            self.last = self.covered = int(position["sequence"])
            if self.end is not None and self.covered >= self.end:
                self.ended = True

    def position_of(self, index: int) -> str | None:
        if index >= len(self.chunk_seqs):
            return None
        return f"{self.o.stream}@{self.chunk_seqs[index]}"

    def acknowledge(self, position: Any) -> None:
        if not position or position.get("sequence") is None:
            return
        upto = int(position["sequence"])
        reply = None
        while self.acks and self.acks[0][0] <= upto:
            reply = self.acks.popleft()[1]
        if reply is None:
            return
        nc = self.conn.nc
        try:  # AckPolicy.ALL: this acknowledges every message up to it
            self.conn.loop.run(nc.request(reply, b"+ACK", timeout=2), 10)
        except Exception as exc:  # noqa: BLE001 - a lost ack costs a redelivery, never a record
            # the next checkpoint's ack covers these messages too; if none comes, a restart recreates the
            # consumer past the checkpoint (see _bind), and redeliveries before that are dropped as read
            self.unconfirmed += 1
            log.warning("%s: the ack up to sequence %d was not confirmed (%s); the next one covers it",
                        self.connector, upto, self.conn.scrub(f"{type(exc).__name__}: {exc}"))

    def metrics(self) -> dict[str, int]:
        return {"retries": self.retries, "redelivered_dropped": self.dropped, "consumer_recreated": self.recreated,
                "acks_unconfirmed": self.unconfirmed}

    def close(self) -> None:
        self.conn.close()

    def poll(self, max_records: int) -> list[Any] | None:
        if self.ended:
            return None
        if self.sub is None:
            self.conn.call(self._bind, "binding the durable consumer at")
        elif self.conn.disconnects != self.seen_disconnects:
            self.conn.call(lambda: self._bind(force=True), "binding the durable consumer again at")
        n = max(1, min(max_records, self.o.batch))
        msgs = self.conn.call(lambda: self._pull(n), "pulling from")
        if not msgs:
            if self.end is not None and self.drained and self.outstanding <= 0 \
                    and self.conn.call(self._num_pending, "asking the consumer at") == 0:
                self.ended = True
                return None
            return []
        return self._records(msgs)

    def _records(self, msgs: list[Any]) -> list[Any]:
        out: list[Any] = []
        seqs = self.chunk_seqs = []
        meta = self.o.metadata
        decode = self.decode
        end = self.end
        last = self.last
        last_reply = None
        for m in msgs:
            seq, ts = _seq_and_ts(m.reply)
            if end is not None and seq > end:  # bounded: past the end seen at start (left unacked)
                self.ended = True
                break
            if last is not None and seq <= last:
                # redelivered: the restored checkpoint holds it, or this run read it and its ack_wait passed
                # before a checkpoint acknowledged it (messages come in order apart from redeliveries, since
                # a restart recreates a consumer that has unacknowledged messages)
                self.dropped += 1
                continue
            last = self.last = seq
            last_reply = m.reply
            extra: dict[str, Any] | None = None
            if meta:
                extra = {}
                if "subject" in meta:
                    extra["_subject"] = m.subject
                if "sequence" in meta:
                    extra["_sequence"] = seq
                if "timestamp" in meta:
                    extra["_timestamp"] = ts
                if "headers" in meta:
                    extra["_headers"] = dict(m.headers) if m.headers else {}
            if decode_into(out, self.ctx, decode, m.data, f"{self.o.stream}@{seq}", extra):
                seqs.append(seq)
        if last_reply is not None:
            assert self.last is not None
            self.acks.append((self.last, last_reply))
            if end is not None and self.last >= end:
                self.ended = True
        return out


# -- the sink ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteOptions:
    subject: str
    servers: tuple[str, ...]
    msg_id: str | Callable[[Any], Any] | None
    serializer: Callable[[Any], bytes | str] | None
    max_pending: int
    backoff: Backoff = dataclasses.field(default_factory=Backoff)


class NatsSink(Sink):
    """Publishes records to a JetStream subject, with a ``Nats-Msg-Id`` header when ``msg_id`` is given."""

    def __init__(self, options: WriteOptions, *, name: str | None = None) -> None:
        self.options = options
        self.name = name
        # the stream deduplicates a message id it saw within its duplicate window: see docs/connectors/nats.md
        self.delivery: Delivery = "idempotent" if options.msg_id is not None else "none"

    def open(self, step: str) -> SinkWriter:
        return _NatsWriter(self.options, step)

    def describe(self) -> str:
        return f"nats {self.options.subject}@{hosts(self.options.servers)}"

    def default_name(self) -> str:
        return self.name or self.options.subject


class _NatsWriter(SinkWriter):
    """Publishes with a reply subject per message under one inbox of its own; a callback counts the
    stream's acks (nats-py's publish_async makes a future per message, which costs three times more).
    Messages not acknowledged in time are published again, with the same message id."""

    def __init__(self, options: WriteOptions, step: str) -> None:
        self.o = options
        self.connector = f"nats sink '{step}'"
        self.retries = 0
        self.duplicates = 0
        self.written = 0
        self.republished = 0
        ser = options.serializer
        self.serialize: Callable[[Any], Any] = ser if ser is not None else orjson.dumps
        mid = options.msg_id
        self.msg_id: Callable[[Any], Any] | None = (lambda r: r[mid]) if isinstance(mid, str) else mid
        self.batch: list[tuple[bytes, str | None]] = []
        self.unacked: dict[str, tuple[bytes, str | None]] = {}  # reply subject -> message, until the stream acks
        self.failure: str | None = None
        self.counter = 0
        self.conn = _Conn(options.servers, self.connector, options.backoff, self._on_retry)
        try:
            self.window_s = self.conn.call(self._check_stream, "looking up the stream at")
            self.conn.loop.run(self._subscribe(), 30)
        except BaseException:
            self.conn.close()
            raise

    def _on_retry(self, attempt: int, exc: BaseException) -> None:
        self.retries += 1

    async def _check_stream(self) -> float | None:
        import nats.js.errors as jse

        js = self.conn.js
        try:
            name = await js.find_stream_name_by_subject(self.o.subject)
        except jse.NotFoundError:
            raise ConnectorError(f"no JetStream stream takes subject {self.o.subject!r}", connector=self.connector,
                                 address=self.conn.address,
                                 fix="create a stream whose subjects include it (nats stream add)") from None
        info = await js.stream_info(name)
        window = info.config.duplicate_window
        if self.o.msg_id is not None:
            log.info("%s: stream %r deduplicates message ids for %ss", self.connector, name, window)
        return float(window) if window is not None else None

    async def _subscribe(self) -> None:
        self.prefix = self.conn.nc.new_inbox()
        self.settled = asyncio.Event()
        self.room = asyncio.Event()
        await self.conn.nc.subscribe(self.prefix + ".*", cb=self._ack, pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def _ack(self, msg: Any) -> None:
        if self.unacked.pop(msg.subject, None) is None:
            return  # an ack of a message published again: counted once
        headers = msg.headers
        if headers and "Status" in headers and not msg.data:  # 503: no stream takes the subject
            self.failure = f"status {headers['Status']} {headers.get('Description', '')}".strip()
        else:
            try:
                ack = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                ack = {"error": {"description": msg.data[:200].decode("utf-8", "replace")}}
            if "error" in ack:
                self.failure = str(ack["error"].get("description", ack["error"]))
            else:
                self.written += 1
                if ack.get("duplicate"):
                    self.duplicates += 1
        if len(self.unacked) < self.o.max_pending:
            self.room.set()
        if not self.unacked:
            self.settled.set()

    def write(self, records: list[Any], times: list[int] | None) -> None:
        ser, mid = self.serialize, self.msg_id
        batch = self.batch
        for r in records:
            payload = ser(r)
            if isinstance(payload, str):
                payload = payload.encode()
            if mid is None:
                batch.append((payload, None))
                continue
            try:
                ident = mid(r)
            except Exception as exc:  # noqa: BLE001
                raise ConnectorError(f"cannot take the message id of a record: {type(exc).__name__}: {exc}",
                                     connector=self.connector, address=self.conn.address,
                                     fix="give every record the msg_id field, or pass msg_id=callable") from None
            batch.append((payload, str(ident)))
        if len(batch) >= 1000:
            self._send()

    async def _publish(self, messages: list[tuple[bytes, str | None]]) -> None:
        nc, subject, prefix, unacked = self.conn.nc, self.o.subject, self.prefix, self.unacked
        for payload, ident in messages:
            while len(unacked) >= self.o.max_pending:
                self.room.clear()
                await asyncio.wait_for(self.room.wait(), 30)
            self.counter += 1
            reply = f"{prefix}.{self.counter}"
            unacked[reply] = (payload, ident)
            self.settled.clear()
            await nc.publish(subject, payload, reply=reply,
                             headers={"Nats-Msg-Id": ident} if ident is not None else None)

    def _send(self) -> None:
        batch, self.batch = self.batch, []
        if batch:
            self.conn.call(lambda: self._publish(batch), "publishing to", timeout=120)
        self._check()

    def _check(self) -> None:
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise ConnectorError(f"JetStream refused a message: {self.conn.scrub(failure)}",
                                 connector=self.connector, address=self.conn.address)

    async def _wait_settled(self, timeout: float) -> bool:
        if not self.unacked:
            return True
        try:
            await asyncio.wait_for(self.settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _settle(self) -> None:
        """Wait for the stream's acks of everything published; what is not acknowledged in time (a lost
        connection) is published again with the same message id, within the backoff budget."""

        def attempt() -> None:
            if self.conn.loop.run(self._wait_settled(10.0), 30):
                return
            again = list(self.unacked.values())
            self.unacked.clear()
            self.republished += len(again)
            self.conn.loop.run(self._publish(again), 120)
            raise ConnectorUnavailable(f"{len(again)} messages not acknowledged by the stream in time, sent again",
                                       connector=self.connector, address=self.conn.address)

        retry(attempt, what=f"{self.connector} waiting for acks from {self.conn.address}", backoff=self.o.backoff,
              on_retry=self._on_retry)
        self._check()

    def flush(self) -> None:
        if self.conn.nc is None:
            return
        self._send()
        self._settle()

    def metrics(self) -> dict[str, int]:
        return {"retries": self.retries, "duplicates": self.duplicates, "republished": self.republished}

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.conn.close()
