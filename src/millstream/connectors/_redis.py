"""Redis Streams: a consumer-group source (XREADGROUP, XACK after checkpoints) and an XADD sink.

The public facade is :mod:`millstream.connectors.redis`.

How the source keeps exactly-once with a redelivery system: each stream is a split;
the position of a split is the id of the last entry handed to the job. Entry ids grow
within a stream, so on a restart the entries this consumer left pending (read, never
XACKed) are read first (``XREADGROUP ... 0``) and those the restored position already
covers are dropped; the rest are processed again. ``acknowledge(position)`` XACKs every
entry read up to the position's id, never past it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from millstream.connectors._base import (
    Backoff,
    Delivery,
    Sink,
    SinkWriter,
    SourceContext,
    SourceReader,
    redact_url,
    retry,
)
from millstream.connectors._codec import decode_into, make_decoder
from millstream.connectors._options_source import OptionsSource, host_of
from millstream.errors import ConnectorError, ConnectorUnavailable

__all__ = ["ReadOptions", "RedisSink", "RedisSource", "WriteOptions"]

log = logging.getLogger("millstream.connectors.redis")

METADATA = ("stream", "id", "timestamp")
_ACK_BATCH = 10_000


def entry_key(entry_id: str) -> tuple[int, int]:
    """An entry id ``"<ms>-<seq>"`` as a tuple that orders like Redis does."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# -- decoding ---------------------------------------------------------------------------------------


# -- errors -----------------------------------------------------------------------------------------


def translate(exc: Exception, connector: str, address: str) -> ConnectorError:
    """A redis-py error as a retryable :class:`ConnectorUnavailable` or a fatal :class:`ConnectorError`.

    redis-py puts the server's reply in the message, never the password, but the text is
    still passed through :func:`redact_url`'s address only, never the URL itself."""
    import redis.exceptions as rex

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError) or "NOAUTH" in str(exc) \
            or "WRONGPASS" in str(exc):
        return ConnectorError(f"authentication failed ({text})", connector=connector, address=address,
                              fix="check the user and password in the URL (redis://user:password@host:port/db)")
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | rex.BusyLoadingError | OSError):
        return ConnectorUnavailable(text, connector=connector, address=address)
    return ConnectorError(text, connector=connector, address=address)


def connect(url: str, connector: str, backoff: Backoff, on_retry: Callable[[int, BaseException], None]) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    address = redact_url(url)

    def attempt() -> Any:
        try:
            # no retries inside redis-py: a read resent after a lost reply must be known to the reader
            # (its entries were delivered; they are read again from the pending list), and every retry
            # is logged and counted by :func:`retry`
            client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30,
                                          retry=Retry(NoBackoff(), 0))
            client.ping()
            return client
        except Exception as exc:  # noqa: BLE001 - sorted into retryable and fatal
            raise translate(exc, connector, address) from None

    return retry(attempt, what=f"{connector} connecting to {address}", backoff=backoff, on_retry=on_retry)


# -- the source -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadOptions:
    streams: tuple[str, ...]
    url: str
    group: str
    consumer: str | None
    start: str
    bounded: bool
    count: int
    block_ms: int
    field: str | None
    format: str
    deserializer: Callable[[bytes], Any] | None
    metadata: tuple[str, ...]
    backoff: Backoff = dataclasses.field(default_factory=Backoff)


class RedisSource(OptionsSource[ReadOptions]):
    """Reads Redis streams as a consumer group; one split per stream."""

    replay = "redelivery"

    def open(self, ctx: SourceContext) -> SourceReader:
        return _RedisReader(self.options, ctx)

    def describe(self) -> str:
        o = self.options
        text = f"redis {','.join(o.streams)}@{host_of(o.url)} (group {o.group})"
        return text + (", bounded" if o.bounded else "")

    def default_name(self) -> str:
        return self.name or self.options.streams[0]


class _Split:
    """One stream: reading the pending list first, then new entries."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.key = stream.encode()
        self.pending_cursor: bytes | None = b"0"   # None once the pending list is read
        self.last: str | None = None                 # last entry handed to the job (the position)
        self.covered: tuple[int, int] | None = None  # restored: entries up to here are done
        self.end: tuple[int, int] | None = None      # bounded: the last entry at start
        self.ended = False
        # read, not yet XACKed: the ids of each chunk with the key of its last entry (positions fall
        # between chunks, so an acknowledgement takes whole chunks)
        self.unacked: deque[tuple[tuple[int, int], list[bytes]]] = deque()


class _RedisReader(SourceReader):
    def __init__(self, options: ReadOptions, ctx: SourceContext) -> None:
        self.o = options
        self.ctx = ctx
        self.connector = f"redis source '{ctx.step}'"
        self.address = redact_url(options.url)
        self.consumer = (options.consumer or f"millstream-{ctx.step}").encode()
        self.group = options.group.encode()
        self.decode = make_decoder(options.format, options.deserializer)
        self.splits_ = {s: _Split(s) for s in options.streams}
        self.buffer: dict[str, list[tuple[bytes, dict[bytes, bytes] | None]]] = {}
        self.current: str | None = None
        self.chunk_ids: list[bytes] = []
        self.fld = options.field.encode() if options.field is not None else None
        self.retries = 0
        self.dropped = 0
        self.claim_from: bytes | None = None
        self.client: Any = connect(options.url, self.connector, options.backoff, self._on_retry)
        for sp in self.splits_.values():
            self._create_group(sp)
            if options.bounded:
                last = self._call(partial(self.client.xrevrange, sp.key, count=1))
                if last:
                    sp.end = entry_key(last[0][0].decode())
                else:
                    sp.ended = True

    # -- plumbing
    def _on_retry(self, attempt: int, exc: BaseException) -> None:
        self.retries += 1

    def _call(self, fn: Callable[[], Any], what: str = "reading") -> Any:
        def attempt() -> Any:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001
                raise translate(exc, self.connector, self.address) from None

        return retry(attempt, what=f"{self.connector} {what} {self.address}", backoff=self.o.backoff,
                     on_retry=self._on_retry)

    def _create_group(self, sp: _Split) -> None:
        import redis.exceptions as rex

        def create() -> None:
            try:
                self.client.xgroup_create(sp.key, self.group, id=self.o.start, mkstream=True)
            except rex.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        self._call(create, "creating the consumer group at")

    # -- the source model
    def split(self) -> str | None:
        return self.current

    def splits(self) -> list[str]:
        return [s for s, sp in self.splits_.items() if not sp.ended]

    def position_of(self, index: int) -> str | None:
        if self.current is None or index >= len(self.chunk_ids):
            return None
        return f"{self.current}@{self.chunk_ids[index].decode()}"

    def snapshot(self) -> Any:
        return {"consumer": self.consumer.decode(), "group": self.o.group,
                "last": {s: sp.last for s, sp in self.splits_.items() if sp.last is not None}}

    def restore(self, position: Any) -> None:
        if not position:
            return
        for stream, last in position.get("last", {}).items():
            sp = self.splits_.get(stream)
            if sp is not None and last is not None:
                sp.last = last
                sp.covered = entry_key(last)
                if sp.end is not None and sp.covered >= sp.end:
                    sp.ended = sp.pending_cursor is None
        old = position.get("consumer")
        if old and old.encode() != self.consumer:
            self.claim_from = old.encode()

    def acknowledge(self, position: Any) -> None:
        if not position:
            return
        for stream, last in position.get("last", {}).items():
            sp = self.splits_.get(stream)
            if sp is None or last is None:
                continue
            upto = entry_key(last)
            ids: list[bytes] = []
            while sp.unacked and sp.unacked[0][0] <= upto:
                ids += sp.unacked.popleft()[1]
            for i in range(0, len(ids), _ACK_BATCH):
                batch = ids[i:i + _ACK_BATCH]
                self._call(partial(self.client.xack, sp.key, self.group, *batch), "acknowledging at")

    def metrics(self) -> dict[str, int]:
        return {"retries": self.retries, "redelivered_dropped": self.dropped,
                "unacked": sum(len(c[1]) for sp in self.splits_.values() for c in sp.unacked)}

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    # -- reading
    def _claim(self) -> None:
        """The consumer name changed since the checkpoint: take over the old consumer's pending entries."""
        old, self.claim_from = self.claim_from, None
        assert old is not None
        for sp in self.splits_.values():
            while True:
                rows = self._call(partial(
                    self.client.xpending_range, sp.key, self.group, min="-", max="+", count=1000, consumername=old))
                if not rows:
                    break
                ids = [r["message_id"] for r in rows]
                self._call(partial(self.client.xclaim, sp.key, self.group, self.consumer, 0, ids, justid=True),
                           "claiming pending entries at")
            log.info("%s: took over the pending entries of consumer %r", self.connector, old.decode())

    def _fetch(self, max_records: int) -> None:
        if self.claim_from is not None:
            self._claim()
        count = max(1, min(max_records, self.o.count))
        for sp in self.splits_.values():  # the pending lists first, one stream at a time
            if sp.pending_cursor is None or sp.ended:
                continue
            got = self._call(partial(
                self.client.xreadgroup, self.group, self.consumer, {sp.key: sp.pending_cursor}, count=count))
            entries = got[0][1] if got else []
            if not entries:
                sp.pending_cursor = None
                if sp.end is not None and sp.covered is not None and sp.covered >= sp.end:
                    sp.ended = True
                continue
            sp.pending_cursor = entries[-1][0]
            self.buffer[sp.stream] = entries
            return
        active = {sp.key: b">" for sp in self.splits_.values() if not sp.ended}
        if not active:
            return
        block = None if self.o.bounded else self.o.block_ms
        retries = self.retries
        got = self._call(lambda: self.client.xreadgroup(self.group, self.consumer, active, count=count, block=block))
        if self.retries != retries:
            # a read whose reply was lost still delivered its entries to this consumer: read them from the
            # pending list, in order, before anything newer (else a later position would cover them)
            for sp in self.splits_.values():
                if sp.key in active:
                    sp.pending_cursor = (sp.last or "0").encode()
            return
        seen = set()
        for key, entries in got or ():
            stream = key.decode()
            seen.add(stream)
            if entries:
                self.buffer[stream] = entries
        if self.o.bounded:  # a stream with nothing left to deliver has ended
            for sp in self.splits_.values():
                if sp.key in active and sp.stream not in seen:
                    sp.ended = True

    def poll(self, max_records: int) -> list[Any] | None:
        if not self.buffer:
            if self.o.bounded and not self.splits():
                return None
            self._fetch(max_records)
            if not self.buffer:
                if self.o.bounded and not self.splits():
                    return None
                return []
        stream = next(iter(self.buffer))
        entries = self.buffer[stream]
        take, rest = entries[:max_records], entries[max_records:]
        if rest:
            self.buffer[stream] = rest
        else:
            del self.buffer[stream]
        return self._records(self.splits_[stream], take)

    def _records(self, sp: _Split, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> list[Any]:
        self.current = sp.stream
        if sp.end is not None and entry_key(entries[-1][0].decode()) > sp.end:
            # bounded: entries past the end seen at start stay pending for a later run
            entries = [e for e in entries if entry_key(e[0].decode()) <= sp.end]
            sp.ended = True
            if not entries:
                self.chunk_ids = []
                return []
        last_id = entries[-1][0]
        last_key = entry_key(last_id.decode())
        sp.unacked.append((last_key, [e[0] for e in entries]))
        if sp.covered is not None and entry_key(entries[0][0].decode()) <= sp.covered:
            kept = [e for e in entries if entry_key(e[0].decode()) > sp.covered]  # the checkpoint has the rest
            self.dropped += len(entries) - len(kept)
            entries = kept
        sp.last = last_id.decode()
        if sp.end is not None and last_key >= sp.end and sp.pending_cursor is None:
            sp.ended = True
        self.chunk_ids = ids = [e[0] for e in entries]
        fld, meta = self.fld, self.o.metadata
        if fld is not None:
            try:  # the common case in one tight loop; a chunk with a bad entry is read again one by one
                decode = self.decode
                recs = [decode(f[fld]) for _, f in entries]  # type: ignore[index]
                if not meta:
                    return recs
                if all(type(r) is dict for r in recs):
                    self._add_metadata(sp, recs, ids)
                    return recs
            except Exception:  # noqa: BLE001, S110
                pass
        out: list[Any] = []
        ids.clear()
        for raw_id, fields in entries:
            if self._add(out, sp, raw_id, fields):
                ids.append(raw_id)
        return out

    def _add_metadata(self, sp: _Split, recs: list[dict[str, Any]], ids: list[bytes]) -> None:
        meta = self.o.metadata
        stream, want_id, want_ts = sp.stream if "stream" in meta else None, "id" in meta, "timestamp" in meta
        for rec, raw_id in zip(recs, ids, strict=True):
            if stream is not None:
                rec["_stream"] = stream
            if want_id or want_ts:
                eid = raw_id.decode()
                if want_id:
                    rec["_id"] = eid
                if want_ts:
                    rec["_timestamp"] = int(eid.partition("-")[0])

    def _add(self, out: list[Any], sp: _Split, raw_id: bytes, fields: dict[bytes, bytes] | None) -> bool:
        """Append the entry's record to ``out``; a bad entry goes to the error policy (False)."""
        eid = raw_id.decode()
        where = f"{sp.stream}@{eid}"
        fld, meta = self.fld, self.o.metadata
        if fields is None:  # deleted from the stream (XDEL, MAXLEN) while pending
            self.ctx.bad_record("the entry was deleted from the stream while pending", position=where)
            return False
        extra: dict[str, Any] | None = None
        if meta:
            extra = {}
            if "stream" in meta:
                extra["_stream"] = sp.stream
            if "id" in meta:
                extra["_id"] = eid
            if "timestamp" in meta:
                extra["_timestamp"] = int(eid.partition("-")[0])
        if fld is None:  # the entry's fields are the record
            rec = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()}
            out.append(rec | extra if extra else rec)
            return True
        payload = fields.get(fld)
        if payload is None:
            self.ctx.bad_record(f"the entry has no field {self.o.field!r} (fields: "
                                f"{', '.join(f.decode('utf-8', 'replace') for f in fields)})",
                                position=where, raw=fields)
            return False
        return decode_into(out, self.ctx, self.decode, payload, where, extra)


# -- the sink ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteOptions:
    stream: str
    url: str
    maxlen: int | None
    approximate: bool
    id_field: str | None
    field: str
    serializer: Callable[[Any], bytes | str] | None
    batch: int
    backoff: Backoff = dataclasses.field(default_factory=Backoff)


class RedisSink(Sink):
    """Appends records to a Redis stream with XADD, pipelined."""

    def __init__(self, options: WriteOptions, *, name: str | None = None) -> None:
        self.options = options
        self.name = name
        # an explicit, increasing entry id makes a rewrite detectable: Redis refuses an id at or below
        # the stream's top, and the writer skips it when that very entry is there (see the docs)
        self.delivery: Delivery = "idempotent" if options.id_field is not None else "none"

    def open(self, step: str) -> SinkWriter:
        return _RedisWriter(self.options, step)

    def describe(self) -> str:
        o = self.options
        return f"redis {o.stream}@{host_of(o.url)}" + (f" (maxlen {o.maxlen})" if o.maxlen else "")

    def default_name(self) -> str:
        return self.name or self.options.stream


class _RedisWriter(SinkWriter):
    def __init__(self, options: WriteOptions, step: str) -> None:
        self.o = options
        self.connector = f"redis sink '{step}'"
        self.address = redact_url(options.url)
        self.retries = 0
        self.skipped = 0
        self.key = options.stream.encode()
        self.fld = options.field.encode()
        ser = options.serializer
        self.serialize: Callable[[Any], Any] = ser if ser is not None else orjson.dumps
        self.pending: list[tuple[bytes | str, Any]] = []
        self.client: Any = connect(options.url, self.connector, options.backoff, self._on_retry)

    def _on_retry(self, attempt: int, exc: BaseException) -> None:
        self.retries += 1

    def write(self, records: list[Any], times: list[int] | None) -> None:
        ser = self.serialize
        idf = self.o.id_field
        for r in records:
            if idf is None:
                self.pending.append(("*", ser(r)))
            else:
                try:
                    eid = r[idf]
                except (KeyError, TypeError, IndexError):
                    raise ConnectorError(f"the record has no id field {idf!r}: {str(r)[:200]}",
                                         connector=self.connector, address=self.address,
                                         fix="give every record the id field, or drop id_field") from None
                self.pending.append((str(eid), ser(r)))
        if len(self.pending) >= self.o.batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending or self.client is None:
            return
        entries, self.pending = self.pending, []
        self._send(entries)

    def _send(self, entries: list[tuple[bytes | str, Any]]) -> None:
        import redis.exceptions as rex

        o = self.o

        def attempt() -> list[Any]:
            try:
                pipe = self.client.pipeline(transaction=False)
                command, key, fld = pipe.execute_command, self.key, self.fld
                if o.maxlen is None:
                    for eid, payload in entries:
                        command("XADD", key, eid, fld, payload)
                else:
                    cap = ("MAXLEN", "~" if o.approximate else "=", o.maxlen)
                    for eid, payload in entries:
                        command("XADD", key, *cap, eid, fld, payload)
                return list(pipe.execute(raise_on_error=False))
            except Exception as exc:  # noqa: BLE001
                raise translate(exc, self.connector, self.address) from None

        results = retry(attempt, what=f"{self.connector} writing to {self.address}", backoff=o.backoff,
                        on_retry=self._on_retry)
        refused = []
        for (eid, _), res in zip(entries, results, strict=True):
            if isinstance(res, rex.ResponseError):
                if "equal or smaller" in str(res) and o.id_field is not None:
                    refused.append(eid)
                    continue
                raise translate(res, self.connector, self.address)
            if isinstance(res, Exception):
                raise translate(res, self.connector, self.address)
        if refused:
            self._check_rewrites(refused)

    def _check_rewrites(self, ids: list[bytes | str]) -> None:
        """Ids at or below the stream's top: written before (a replay) when that entry exists, else an error."""
        pipe = self.client.pipeline(transaction=False)
        for eid in ids:
            pipe.xrange(self.key, min=eid, max=eid, count=1)
        for eid, found in zip(ids, pipe.execute(), strict=True):
            if not found:
                raise ConnectorError(
                    f"entry id {eid!r} is not above the stream's last id, and no entry has it: ids must grow",
                    connector=self.connector, address=self.address,
                    fix=f"make {self.o.id_field!r} increase in output order, or drop id_field to let Redis "
                        "choose the ids")
            self.skipped += 1

    def metrics(self) -> dict[str, int]:
        return {"retries": self.retries, "rewrites_skipped": self.skipped}

    def close(self) -> None:
        try:
            self.flush()
        finally:
            client, self.client = self.client, None
            if client is not None:
                client.close()
