"""The Kafka sink: an idempotent producer, or Kafka transactions aligned with checkpoints.

The public facade is :mod:`millstream.connectors.kafka`.

Exactly-once (``transactional_id=`` given)
==========================================

One transactional producer per sink step, with the stable id ``<transactional_id>-<step>``:

- ``write``: the first record after a checkpoint begins a Kafka transaction; records are produced
  into it at once (so the broker has them early) **and kept in memory**. Every record carries a
  header ``millstream.txn: <tag>:<prev>``: a random 32-bit tag of its transaction and the tag of
  the transaction committed before it.
- ``pre_commit(n)``: flush (every record acknowledged by the broker, still invisible to
  ``read_committed`` readers); the handle stored in checkpoint ``n`` holds the transaction's tag
  and **its records** (key, value, partition, headers).
- ``commit(handle)``: ``send_offsets_to_transaction`` of the *marker* ``n * 2**32 + tag`` for the
  consumer group ``millstream-tx-<transactional id>``, then ``commit_transaction``: the marker and
  the records become visible together, atomically.
- ``recover(handles)``: ``init_transactions`` fences the crashed run's producer and aborts the
  transaction it left open. Then the marker tells whether the restored checkpoint's transaction
  committed (its checkpoint id ≤ the marker's): if not (the crash came after the checkpoint was
  durable, before the Kafka commit), its records are produced again from the handle in a new
  transaction and committed with the marker. librdkafka cannot resume another process's
  transaction, hence the copy in the checkpoint.
- A fresh start (no checkpoint) resets the marker's checkpoint id to 0, so a new checkpoint
  directory with the same transactional id starts over.

The cost: each checkpoint stores the interval's output (its serialized records), so checkpoints
grow with the output rate times the checkpoint interval, and records are visible only once their
checkpoint completes (end-to-end latency ≈ the checkpoint interval).

Telling committed records without broker help: the chain of tags (the marker's tag, its record's
``prev``, and so on) names every committed transaction; a record whose tag is not in the chain
belongs to an aborted one. :func:`committed_records` reads a topic that way, for brokers (tansu 0.6)
that show records of aborted transactions to ``read_committed`` readers.
"""

from __future__ import annotations

import io
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from millstream._expr import Expr
from millstream.connectors._base import Backoff, Sink, SinkWriter
from millstream.connectors._kafka_common import (
    RESERVED_WRITE,
    address_of,
    base_config,
    client,
    kafka_error,
    log,
    topic_partitions,
    with_retry,
)
from millstream.errors import ConfigError, ConnectorError, JobError

DEFAULT_BACKOFF = Backoff()

__all__ = ["HEADER", "KafkaSink", "WriteOptions", "committed_records", "json_values", "marker_group"]

#: The header every record of a transactional sink carries: ``<tag>:<prev tag>`` in hex.
HEADER = "millstream.txn"
FORMATS = ("json", "text", "bytes")
_MARK = 1 << 32
#: column types polars writes as JSON exactly as orjson writes the value ``to_dicts`` makes of them
#: (floats too: polars and orjson both write the shortest text that reads back as the same double,
#: NaN and infinities as null; tests/test_kafka_columnar.py checks it value by value)
_PLAIN = frozenset({"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float64", "String",
                    "Boolean", "Null"})
#: key column types whose polars text (a cast to String) is what :func:`_to_bytes` makes of the value
_TEXT_KEYS = frozenset({"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "String",
                        "Boolean"})


def marker_group(transactional_id: str) -> str:
    """The consumer group whose committed offset marks the last committed transaction."""
    return f"millstream-tx-{transactional_id}"


@dataclass(frozen=True)
class WriteOptions:
    """What :func:`millstream.connectors.kafka.write` was asked to do, validated."""

    topic: str
    bootstrap: str
    key: str | Expr | Callable[[Any], Any] | None = None
    partition: int | Callable[[Any], int] | None = None
    format: str = "json"
    serializer: Callable[[Any], bytes] | None = None
    config: dict[str, Any] = field(default_factory=dict, hash=False, repr=False)
    transactional_id: str | None = None
    backoff: Backoff = DEFAULT_BACKOFF

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not self.topic:
            raise ConfigError(f"topic must be a topic name, not {self.topic!r}")
        if not (self.key is None or isinstance(self.key, str | Expr) or callable(self.key)):
            raise ConfigError(f"key must be a field name, an expression, a function or None, not {self.key!r}")
        if not (self.partition is None or callable(self.partition)
                or (isinstance(self.partition, int) and not isinstance(self.partition, bool) and self.partition >= 0)):
            raise ConfigError(f"partition must be a partition number, a function record -> int or None, "
                              f"not {self.partition!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(map(repr, FORMATS))}, not {self.format!r}")
        if self.serializer is not None and not callable(self.serializer):
            raise ConfigError(f"serializer must be a function record -> bytes, not {self.serializer!r}")
        if self.transactional_id is not None and (not isinstance(self.transactional_id, str)
                                                  or not re.fullmatch(r"[A-Za-z0-9._-]+", self.transactional_id)):
            raise ConfigError("transactional_id must be a non-empty name of letters, digits, '.', '_' and '-', "
                              f"not {self.transactional_id!r}")


class KafkaSink(Sink):
    """Writes records to a Kafka topic (see the module docstring for exactly-once)."""

    def __init__(self, options: WriteOptions, *, name: str | None = None) -> None:
        self.options = options
        self.name = name
        self.delivery = "transactional" if options.transactional_id else "none"

    def open(self, step: str) -> SinkWriter:
        return KafkaWriter(self.options, step)

    def describe(self) -> str:
        o = self.options
        text = f"kafka {o.topic}@{address_of(o.bootstrap)}"
        return text + (f" (transactional {o.transactional_id})" if o.transactional_id else "")

    def default_name(self) -> str:
        return self.name or self.options.topic


def _to_bytes(v: Any) -> bytes | None:
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    if type(v) is int:
        return str(v).encode()
    return orjson.dumps(v)


def _categorical_types() -> tuple[type, ...]:
    import polars as pl

    return (pl.Categorical, pl.Enum)


def _json_dtype(dtype: Any) -> Any:
    """``dtype`` with what polars would write otherwise than orjson writes ``to_dicts``' values made
    into a type it writes the same (Float32 -> Float64: ``to_dicts`` widens each value to a double,
    whose shortest text is not the float's; categories -> String), or None when some part of it has
    no such type (dates and times, durations, decimals, binary, 128-bit integers, objects)."""
    import polars as pl

    name = str(dtype)
    if name in _PLAIN:
        return dtype
    if dtype == pl.Float32:
        return pl.Float64
    if isinstance(dtype, _categorical_types()):
        return pl.String
    if isinstance(dtype, pl.List):
        inner = _json_dtype(dtype.inner)
        return None if inner is None else pl.List(inner)
    if isinstance(dtype, pl.Array):
        inner = _json_dtype(dtype.inner)
        return None if inner is None else pl.Array(inner, dtype.size)
    if isinstance(dtype, pl.Struct):
        if not dtype.fields:
            return None
        fields = [(f.name, _json_dtype(f.dtype)) for f in dtype.fields]
        if any(t is None for _, t in fields):
            return None
        return pl.Struct(dict(fields))
    return None


def json_values(frame: Any) -> list[bytes] | None:
    """The rows of a polars DataFrame as JSON values, byte for byte ``orjson.dumps`` of the records
    ``frame.to_dicts()`` makes (so the same as native mode writes for the same records), made by one
    ``write_ndjson``; None when a column's type has no such form (then write the rows with orjson)."""
    schema = frame.schema
    wanted = {}
    for name, dtype in schema.items():
        t = _json_dtype(dtype)
        if t is None:
            return None
        if t != dtype:
            wanted[name] = t
    if wanted:
        frame = frame.cast(wanted)
    buf = io.BytesIO()
    frame.write_ndjson(buf)
    values = buf.getvalue().split(b"\n")  # a newline in a string is written \n: one line per row
    if values and not values[-1]:
        values.pop()
    return values if len(values) == frame.height else None


class KafkaWriter(SinkWriter):
    """A running Kafka sink."""

    def __init__(self, options: WriteOptions, step: str) -> None:
        self.o = options
        self.step = step
        self.kafka = client("The Kafka sink")
        self.connector = f"kafka sink '{step}'"
        self.address = address_of(options.bootstrap)
        self.retries = [0]
        self.errors: list[Any] = []
        self.txid = f"{options.transactional_id}-{re.sub(r'[^A-Za-z0-9._-]', '_', step)}" \
            if options.transactional_id else None
        conf = base_config(options.bootstrap, {
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",  # as the Java client: the same key goes to the same partition
            "on_delivery": self._on_delivery,
            **{k: v for k, v in options.config.items() if k not in RESERVED_WRITE},
        })
        if self.txid:
            conf["transactional.id"] = self.txid
        self.producer = self.kafka.Producer(conf)
        with_retry(lambda: topic_partitions(self.producer, (options.topic,), connector=self.connector,
                                            address=self.address),
                   what=f"{self.connector} reaching {self.address}", backoff=options.backoff, counter=self.retries)
        self.keyfn = self._key_function(options.key)
        self.serialize = self._serializer()
        self.marker = None
        if self.txid:
            self.marker = self.kafka.Consumer(base_config(options.bootstrap, {
                "group.id": marker_group(self.txid), "enable.auto.commit": False,
                **{k: v for k, v in options.config.items()
                   if k.startswith(("security.", "sasl.", "ssl.", "client."))}}))
        self.initialized = False
        self.open_tag: int | None = None     # the transaction in progress
        self.prev_tag = 0                    # the tag of the last committed transaction
        self.pending: list[tuple[bytes | None, bytes | None, int | None]] = []
        self.precommitted: dict[str, Any] | None = None
        self.checkpointed = False
        self.coordinated = False
        self.written = 0
        #: columnar batches written record by record (a column type :func:`json_values` cannot write)
        self.row_frames = 0

    # -- helpers ------------------------------------------------------------------------------
    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None and len(self.errors) < 10:
            self.errors.append(err)

    def _check_errors(self) -> None:
        if self.errors:
            err = self.errors[0]
            self.errors.clear()
            raise kafka_error(self.kafka.KafkaException(err), connector=self.connector, address=self.address,
                              doing=f"producing to {self.o.topic!r}")

    @staticmethod
    def _key_function(key: Any) -> Callable[[Any], bytes | None] | None:
        if key is None:
            return None
        if isinstance(key, str):
            name = key
            return lambda r: _to_bytes(r[name])
        fn = key.compile() if isinstance(key, Expr) else key
        return lambda r: _to_bytes(fn(r))

    def _serializer(self) -> Callable[[Any], bytes]:
        if self.o.serializer is not None:
            user = self.o.serializer

            def ser(r: Any) -> bytes:
                out = user(r)
                if not isinstance(out, bytes | bytearray):
                    raise TypeError(f"the serializer returned {type(out).__name__}, not bytes")
                return bytes(out)
            return ser
        if self.o.format == "json":
            return orjson.dumps
        if self.o.format == "text":
            return lambda r: (r if isinstance(r, str) else str(r)).encode()

        def raw(r: Any) -> bytes:
            if not isinstance(r, bytes | bytearray):
                raise TypeError(f"format='bytes' writes bytes records, got {type(r).__name__}")
            return bytes(r)
        return raw

    def _txn(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self.kafka.KafkaException as exc:
            raise kafka_error(exc, connector=self.connector, address=self.address, doing=what) from None

    def _init(self) -> None:
        if self.initialized:
            return

        def init() -> None:
            self._txn(f"starting transactions (transactional.id {self.txid!r})",
                      lambda: self.producer.init_transactions(30))
        with_retry(init, what=f"{self.connector} initialising transactions at {self.address}",
                   backoff=self.o.backoff, counter=self.retries)
        self.initialized = True

    def _read_marker(self) -> int | None:
        """The marker committed last, or None when the group holds none (never committed, or expired)."""
        marker = self.marker
        assert marker is not None
        tp = self.kafka.TopicPartition(self.o.topic, 0)
        got = self._txn("reading the transaction marker", lambda: marker.committed([tp], timeout=10))
        offset = int(got[0].offset)
        return offset if offset >= 0 else None

    def _produce(self, value: bytes, key: bytes | None, partition: int | None, headers: Any) -> None:
        produce = self.producer.produce
        topic = self.o.topic
        while True:
            try:
                if partition is None:
                    produce(topic, value, key, headers=headers)
                else:
                    produce(topic, value, key, partition, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _begin(self) -> None:
        self._init()
        self._txn("beginning a transaction", self.producer.begin_transaction)
        self.open_tag = random.getrandbits(32) or 1
        self.pending = []

    def _header(self) -> list[tuple[str, bytes]]:
        return [(HEADER, f"{self.open_tag:08x}:{self.prev_tag:08x}".encode())]

    # -- the protocol ---------------------------------------------------------------------------
    def write(self, records: list[Any], times: list[int] | None) -> None:
        if not records:
            return
        self._check_errors()
        keyfn, ser, part = self.keyfn, self.serialize, self.o.partition
        txn = self.txid is not None
        if txn and self.open_tag is None:
            self._begin()
        headers = self._header() if txn else None
        pending = self.pending
        for r in records:
            value = ser(r)
            key = keyfn(r) if keyfn is not None else None
            p = part(r) if callable(part) else part
            self._produce(value, key, p, headers)
            if txn:
                pending.append((value, key, p))
        self.written += len(records)
        self.producer.poll(0)

    @property
    def columnar(self) -> bool:
        """JSON values without a serializer, keyed by a field or not at all, partitioned by the key or a
        fixed partition: polars writes a batch's values in one call (the same bytes as orjson; see
        :func:`json_values` for the column types it takes)."""
        o = self.o
        return (o.format == "json" and o.serializer is None and (o.key is None or isinstance(o.key, str))
                and not callable(o.partition))

    def write_frame(self, frame: Any, times: Any) -> None:
        if not frame.height:
            return
        key = self.o.key
        values = json_values(frame) if not isinstance(key, str) or key in frame.columns else None
        if values is None:
            self.row_frames += 1
            super().write_frame(frame, times)  # times, decimals, binary: orjson, record by record
            return
        keys = None
        if isinstance(key, str):
            column = frame.get_column(key)
            if str(column.dtype) in _TEXT_KEYS or isinstance(column.dtype, _categorical_types()):
                import polars as pl

                # polars' text of an integer, string or boolean is what _to_bytes makes of it
                texts = column.cast(pl.String).to_list()
                keys = [None if t is None else t.encode() for t in texts]
            else:
                keys = list(map(_to_bytes, column.to_list()))
        self._write_values(values, keys)

    def _write_values(self, values: list[bytes], keys: list[bytes | None] | None) -> None:
        self._check_errors()
        txn = self.txid is not None
        if txn and self.open_tag is None:
            self._begin()
        headers = self._header() if txn else None
        p = self.o.partition
        assert p is None or isinstance(p, int)
        produce = self._produce
        if keys is None:
            for v in values:
                produce(v, None, p, headers)
        else:
            for v, k in zip(values, keys, strict=True):
                produce(v, k, p, headers)
        if txn:
            self.pending.extend(zip(values, keys or [None] * len(values), [p] * len(values), strict=True))
        self.written += len(values)
        self.producer.poll(0)

    def flush(self) -> None:
        started = time.monotonic()
        deadline = started + self.o.backoff.budget_s + 30
        waiting = False
        while self.producer.flush(1.0) > 0:
            self._check_errors()
            if not waiting:  # librdkafka retries by itself: say that it is waiting (once a flush), and count it
                waiting = True
                self.retries[0] += 1
                log.warning("%s: %d records not yet delivered to %s after %.1fs; waiting for the broker (up to "
                            "%.0fs)", self.connector, len(self.producer), self.address, time.monotonic() - started,
                            deadline - started)
            if time.monotonic() > deadline:
                raise ConnectorError(f"could not deliver {len(self.producer)} records in time",
                                     connector=self.connector, address=self.address,
                                     fix="check that the broker is up and reachable")
        self._check_errors()

    def begin(self, *, checkpointed: bool) -> None:
        self.checkpointed = checkpointed

    def pre_commit(self, checkpoint_id: int) -> Any:
        self.coordinated = True
        if self.txid is None:
            self.flush()
            return None
        if self.open_tag is None:
            return {"checkpoint": checkpoint_id, "tag": None}
        self.flush()
        handle = {"checkpoint": checkpoint_id, "tag": self.open_tag, "prev": self.prev_tag,
                  "topic": self.o.topic, "records": list(self.pending)}
        self.precommitted = handle
        return handle

    def commit(self, transaction: Any) -> None:
        if self.txid is None or not transaction or transaction.get("tag") is None:
            return
        if transaction["tag"] != self.open_tag:
            return  # committed already (commit is idempotent); recover() handles a restored one
        self._commit(transaction["checkpoint"], transaction["tag"])

    def _commit(self, checkpoint_id: int, tag: int) -> None:
        marker = self.marker
        assert marker is not None
        tp = self.kafka.TopicPartition(self.o.topic, 0, checkpoint_id * _MARK + tag)
        self._txn("committing the transaction marker", lambda: self.producer.send_offsets_to_transaction(
            [tp], marker.consumer_group_metadata(), 30))
        self._txn("committing a transaction", lambda: self.producer.commit_transaction(60))
        self.prev_tag = tag
        self.open_tag = None
        self.pending = []
        self.precommitted = None

    def committed_beyond(self, checkpoint_id: int) -> list[str]:
        """The transaction committed after checkpoint ``checkpoint_id``, if the marker names one (the
        coordinator asks before a resume: output the restored checkpoint cannot account for)."""
        if self.txid is None or self.marker is None:
            return []
        found = with_retry(self._read_marker, what=f"{self.connector} reading its transaction marker at "
                           f"{self.address}", backoff=self.o.backoff, counter=self.retries)
        if found is None or found // _MARK <= checkpoint_id:
            return []
        return [f"the transaction of checkpoint {found // _MARK} in topic {self.o.topic!r} "
                f"(the marker of consumer group {marker_group(self.txid)!r})"]

    def recover(self, transactions: list[Any]) -> None:
        self.coordinated = True
        if self.txid is None:
            return
        self._init()  # fences the crashed run's producer and aborts what it left open
        found = with_retry(self._read_marker, what=f"{self.connector} reading its transaction marker at "
                           f"{self.address}", backoff=self.o.backoff, counter=self.retries)
        pending = [t for t in transactions if t and t.get("tag") is not None]
        if found is None and pending:
            # Every run commits a marker before its first checkpoint, so a restore that finds none cannot
            # tell whether the restored checkpoint's transaction reached Kafka: producing it again could
            # duplicate it, skipping it could lose it. Refuse rather than guess.
            group = marker_group(self.txid)
            raise ConnectorError(
                f"the transaction marker of consumer group {group!r} is gone, so whether checkpoint "
                f"{max(t['checkpoint'] for t in pending)}'s transaction was committed cannot be told",
                connector=self.connector, address=self.address,
                fix="Kafka drops a group's offsets offsets.retention.minutes (7 days by default) after its "
                    "last commit, so a job stopped that long loses its marker; the group may also have been "
                    "deleted, or the sink now points at another cluster or transactional id. Check the "
                    f"topic {self.o.topic!r} for the checkpoint's records (kafka.committed_records), then "
                    "start with a new checkpoint directory; raise offsets.retention.minutes on the broker "
                    "above the longest stop you expect")
        marker = found or 0
        self.prev_tag = marker % _MARK
        if not transactions:
            # a fresh start: this job has committed nothing yet (the tag chain goes on)
            self._begin()
            self._commit(0, self.prev_tag)
            self.prev_tag = marker % _MARK
            return
        for txn in transactions:
            if not txn or txn.get("tag") is None:
                continue
            if txn["checkpoint"] <= marker // _MARK:
                continue  # committed before the crash
            log.info("%s: checkpoint %d's transaction was not committed before the crash: producing its %d "
                     "records again", self.connector, txn["checkpoint"], len(txn["records"]))
            self._begin()
            headers = self._header()
            for value, key, p in txn["records"]:
                self._produce(value, key, p, headers)
            self.flush()
            self._commit(txn["checkpoint"], self.open_tag or 0)

    def close(self) -> None:
        producer = self.producer
        if producer is None:
            return
        try:
            if self.txid is not None and self.open_tag is not None:
                if self.coordinated or self.checkpointed:
                    n = len(self.pending)
                    self._txn("aborting a transaction", lambda: producer.abort_transaction(30))
                    self.open_tag = None
                    if n:
                        log.info("%s: %d records written after the last checkpoint are discarded (a restart from "
                                 "that checkpoint writes them again)", self.connector, n)
                else:  # a run without checkpoints: everything written is the output
                    self.flush()
                    self._commit(0, self.open_tag)
            else:
                self.flush()
        finally:
            self.producer = None
            producer.close()
            if self.marker is not None:
                self.marker.close()
                self.marker = None

    def abandon(self) -> None:
        """Drop the producer without flushing or committing (as a crash would: what it queued is purged;
        the open transaction is aborted, as the next run's ``init_transactions`` would)."""
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.purge()
            producer.close()
        if self.marker is not None:
            self.marker.close()
            self.marker = None

    def metrics(self) -> dict[str, int]:
        return {"retries": self.retries[0], "written": self.written}


def committed_records(bootstrap: str, topic: str, transactional_id: str, *, config: dict[str, Any] | None = None,
                      timeout_s: float = 30.0) -> list[Any]:
    """The messages of ``topic`` written by committed transactions of the transactional sink with
    ``transactional_id`` (the full id, ``<prefix>-<step>``), found from the marker and the tag chain
    alone, not from the broker's transaction markers. Messages (confluent-kafka ``Message`` objects)
    in partition then offset order. For checks and tests: it reads the whole topic."""
    kafka = client("Reading committed Kafka records")
    conf = base_config(bootstrap, {"group.id": marker_group(transactional_id), "enable.auto.commit": False,
                                   "enable.partition.eof": True, **(config or {})})
    consumer = kafka.Consumer(conf)
    try:
        parts = topic_partitions(consumer, (topic,), connector="kafka check", address=address_of(bootstrap))[topic]
        got = consumer.committed([kafka.TopicPartition(topic, 0)], timeout=10)
        head = max(0, got[0].offset) % _MARK
        consumer.assign([kafka.TopicPartition(topic, p, -2) for p in parts])
        msgs: list[Any] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(parts):
            if time.monotonic() > deadline:
                raise JobError(f"reading {topic!r} took more than {timeout_s}s")
            for m in consumer.consume(10_000, 0.2):
                if m.error():
                    if m.error().code() == kafka.KafkaError._PARTITION_EOF:
                        done.add(m.partition())
                    continue
                msgs.append(m)
        prev: dict[int, int] = {}
        tags: list[int | None] = []
        for m in msgs:
            h = dict(m.headers() or ()).get(HEADER)
            if h is None:
                tags.append(None)
                continue
            tag_s, _, prev_s = h.decode().partition(":")
            tag = int(tag_s, 16)
            prev[tag] = int(prev_s, 16)
            tags.append(tag)
        chain: set[int] = set()
        t = head
        while t and t not in chain:
            chain.add(t)
            t = prev.get(t, 0)
        out = [m for m, tag in zip(msgs, tags, strict=True) if tag in chain]
        out.sort(key=lambda m: (m.partition(), m.offset()))
        return out
    finally:
        consumer.close()
