"""Kafka: read topics partition by partition, write with an idempotent producer or with transactions.

Needs ``pip install 'millstream[kafka]'`` (confluent-kafka). A sketch (docs/connectors/kafka.md
has a runnable example and the guarantees in full)::

    import millstream as ms
    from millstream.connectors import kafka

    flow = ms.Flow("orders")
    orders = flow.source(kafka.read("orders", bootstrap="127.0.0.1:9092", group="fraud",
                                    metadata=("timestamp",)),
                         watermark=ms.WatermarkStrategy.bounded(5_000, timestamp="_timestamp"))
    orders.filter(ms.col("amount") > 1_000).sink(
        kafka.write("alerts", bootstrap="127.0.0.1:9092", key="card", transactional_id="fraud"))
    flow.run(guarantee="exactly-once", checkpoint_dir="ck/")

Each partition is a split (``orders[3]``) with its own watermark; positions are offsets,
kept in checkpoints and committed to ``group`` once the checkpoint is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal

from millstream._expr import Expr
from millstream.connectors._base import Backoff, ErrorPolicy
from millstream.connectors._kafka import (
    DEFAULT_BACKOFF,
    METADATA,
    KafkaSource,
    ReadOptions,
    SplitOf,
    partitions_of,
    start_of,
)
from millstream.connectors._kafka_common import (
    RESERVED_READ,
    RESERVED_WRITE,
    add_partitions,
    check_bootstrap,
    check_config,
    client,
    create_topic,
    delete_topic,
)
from millstream.connectors._kafka_write import HEADER, KafkaSink, WriteOptions, committed_records, marker_group
from millstream.errors import ConfigError

__all__ = ["HEADER", "METADATA", "KafkaSink", "KafkaSource", "ReadOptions", "SplitOf", "WriteOptions", "add_partitions",
           "committed_records", "create_topic", "delete_topic", "marker_group", "read", "write"]


def read(
    topics: str | list[str] | tuple[str, ...],
    *,
    bootstrap: str,
    group: str | None = None,
    start: str | int | datetime = "earliest",
    bounded: bool = False,
    format: str = "json",
    deserializer: Callable[[bytes], Any] | None = None,
    metadata: tuple[str, ...] | list[str] = (),
    config: Mapping[str, Any] | None = None,
    on_error: ErrorPolicy = "fail",
    backoff: Backoff = DEFAULT_BACKOFF,
    discovery_interval: float = 5.0,
    max_record_bytes: int | None = None,
    partitions: int | Mapping[str, int] | Literal["auto"] | None = None,
    name: str | None = None,
) -> KafkaSource:
    """A source that reads one or more Kafka topics; each partition is a split ``topic[p]``.

    - ``bootstrap``: ``"host:port"`` (several comma-separated).
    - ``group``: a consumer group. The offsets of each completed checkpoint are committed to it
      (under at-most-once: as soon as a chunk is read), so lag tools see the job's progress and
      ``start="committed"`` resumes there. Partitions are *assigned*, never subscribed: no group
      join, no rebalance. Without a group nothing is committed.
    - ``start``: where a job without a checkpoint starts: ``"earliest"``, ``"latest"``,
      ``"committed"`` (the group's offsets; earliest where it has none), or a timestamp (ms since
      the epoch, or an aware datetime: the first record at or after it). A checkpoint's offsets
      always win.
    - ``bounded``: stop each partition at its end offset at the start (for batch mode, tests and
      replays); partitions added later are not read.
    - ``format``: ``"json"`` (records are the decoded values, default), ``"text"`` (str) or
      ``"bytes"``; or ``deserializer=callable(bytes) -> record``.
    - ``metadata``: any of ``"key"``, ``"timestamp"``, ``"partition"``, ``"offset"``, ``"topic"``,
      ``"headers"``, added to each record as ``_key`` (str, or bytes when not UTF-8), ``_timestamp``
      (int ms), ``_partition``, ``_offset``, ``_topic``, ``_headers`` (dict). A JSON value must then be
      an object (anything else is a bad record); text and bytes values go in a ``value`` field.
    - ``config``: more librdkafka consumer options (``security.protocol``, ``sasl.*``,
      ``fetch.max.bytes``...); never shown in plans, errors or logs.
    - ``on_error``: what to do with a bad record (not JSON, not UTF-8, no value, a deserializer that
      raises): ``"fail"``, ``"skip"`` (counted) or ``dead_letter(sink)``; its position is
      ``topic[p]@offset``.
    - ``backoff``: how long an unreachable broker is retried before the job fails.
    - ``discovery_interval``: seconds between looks for new partitions (unbounded reads).
    - ``max_record_bytes``: a value longer than this is a bad record (its first KiB is what the
      dead-letter sink gets); None: no limit beyond the broker's.
    - ``partitions``: read the partitions as logical splits, so that ``flow.run(parallelism=n)`` gives
      each worker a contiguous range of them: the topic's partition count (an int, the same for every
      topic, or a dict of one per topic), or ``"auto"`` to look the counts up (a metadata request) when
      the flow is compiled. Declared counts compile without the broker and keep the layout of a
      checkpoint when the topics have grown since (partitions beyond the count are read by the split
      of partition ``p % count``). Each split has a consumer of its own. Without it (the default) the
      source is one split: one consumer reads every partition, in one worker. See "Parallelism" in
      docs/connectors/kafka.md.

    A missing topic fails at the start with a :class:`~millstream.errors.ConnectorError` that says how
    to create it (:func:`create_topic`).
    """
    client("The Kafka source")
    names: Any = topics
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, list | tuple):
        raise ConfigError(f"topics must be a topic name or a list of them, not {topics!r}")
    meta: Any = metadata
    if isinstance(meta, str):
        meta = (meta,)
    if partitions is not None and partitions != "auto" and not isinstance(partitions, int | Mapping):
        raise ConfigError(f"partitions must be an int, a dict of topic -> int or 'auto', not {partitions!r}")
    split_partitions = partitions is not None
    if partitions == "auto":
        partitions = None
    if isinstance(discovery_interval, bool) or not isinstance(discovery_interval, int | float):
        raise ConfigError(f"discovery_interval must be a number of seconds, not {discovery_interval!r}")
    options = ReadOptions(
        topics=tuple(names), bootstrap=check_bootstrap(bootstrap), group=group, start=start_of(start),
        bounded=bounded, format=format, deserializer=deserializer, metadata=tuple(meta),
        config=check_config(config, RESERVED_READ), backoff=backoff, discovery_interval_s=float(discovery_interval),
        max_record_bytes=max_record_bytes,
        partitions=partitions_of(dict(partitions) if isinstance(partitions, Mapping) else partitions, tuple(names)),
        split_partitions=split_partitions)
    return KafkaSource(options, on_error=on_error, name=name)


def write(
    topic: str,
    *,
    bootstrap: str,
    key: str | Expr | Callable[[Any], Any] | None = None,
    partition: int | Callable[[Any], int] | None = None,
    format: str = "json",
    serializer: Callable[[Any], bytes] | None = None,
    config: Mapping[str, Any] | None = None,
    transactional_id: str | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    name: str | None = None,
) -> KafkaSink:
    """A sink that produces records to ``topic``.

    - ``key``: the message key: a field name, an expression (``ms.col("card")``), a function of the
      record, or None. str keys are UTF-8, bytes as they are, anything else JSON. Keys are
      partitioned with murmur2, as the Java client does.
    - ``partition``: a fixed partition, or a function of the record; by default the key decides.
    - ``format``: ``"json"`` (default), ``"text"`` or ``"bytes"``; or ``serializer=callable(record) -> bytes``.
    - ``config``: more librdkafka producer options (``linger.ms``, ``compression.type``, ``sasl.*``...).
    - ``transactional_id``: exactly-once. The sink then writes each checkpoint interval's records in
      one Kafka transaction (transactional id ``<transactional_id>-<step>``), committed once the
      checkpoint is complete; readers must use ``isolation.level=read_committed``. The checkpoint
      keeps the interval's records so that a crash between the checkpoint and the Kafka commit loses
      nothing (see docs/connectors/kafka.md for the cost).

    Without ``transactional_id`` the producer is idempotent (no duplicates from its own retries) and
    flushed at every checkpoint: at-least-once (a restart repeats what was written since the last
    checkpoint).
    """
    client("The Kafka sink")
    options = WriteOptions(
        topic=topic, bootstrap=check_bootstrap(bootstrap), key=key, partition=partition, format=format,
        serializer=serializer, config=check_config(config, RESERVED_WRITE), transactional_id=transactional_id,
        backoff=backoff)
    return KafkaSink(options, name=name)
