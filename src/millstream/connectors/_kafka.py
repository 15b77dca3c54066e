"""The Kafka source: partitions as splits, offsets in checkpoints, committed to the group after them.

The public facade is :mod:`millstream.connectors.kafka`.

How it reads
============

- The consumer is **assigned** its partitions (``assign()`` with explicit offsets), never
  subscribed: no group join (a join takes seconds, and about half of ``session.timeout.ms`` on
  tansu), no rebalance that could move a partition away mid-checkpoint. The consumer group, when
  given, is used for what Flink's Kafka source uses it for: offsets are committed to it once the
  checkpoint that covers them is complete (:meth:`KafkaReader.acknowledge`), so lag monitoring works
  and ``start="committed"`` resumes from them. Offsets are never auto-committed.
- Each partition is a **split** ``topic[p]``; a poll returns records of one partition only.
  librdkafka hands out messages of several partitions in one fetch: the others are buffered per
  partition and handed out by later polls, round robin.
- New partitions of a topic appear as new splits while running (metadata is looked at every
  ``discovery_interval`` seconds), read from their beginning.
- **Logical splits** (:meth:`KafkaSource.logical_splits`): when the flow is compiled, the source
  becomes one split per partition (the *layout*: each topic's partition count, from a metadata
  request or the ``partitions=`` option), each a :class:`KafkaSource` of its own whose reader is
  assigned that partition only, so that worker ``w`` of ``n`` reads the partitions of its range.
  A partition beyond the layout (added to the topic later) is read by the split of partition
  ``p % count`` of its topic, found by the same discovery (see :class:`SplitOf`).
- **Bounded** reads stop each partition at its end offset at the start. That end is the high
  watermark of the partition's first fetch, or the offset where librdkafka reports the end of the
  partition (``enable.partition.eof``) if that comes first. ListOffsets(latest) is not used: tansu
  answers it wrongly (the last batch's base offset + 1).
- The position of a partition is the offset of the next record to hand out: records fetched
  but still buffered are not covered by it, so a restore reads them again.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import orjson

from millstream.connectors._base import Backoff, ErrorPolicy, Source, SourceContext, SourceReader, check_policy
from millstream.connectors._kafka_common import (
    RESERVED_READ,
    address_of,
    base_config,
    client,
    kafka_error,
    log,
    topic_partitions,
    with_retry,
)
from millstream.errors import ConfigError, ConnectorError, ConnectorUnavailable

DEFAULT_BACKOFF = Backoff()

__all__ = ["METADATA", "KafkaReader", "KafkaSource", "ReadOptions", "SplitOf", "partitions_of", "split_name"]

#: The metadata fields a record can carry, and the field each becomes.
METADATA = {"key": "_key", "timestamp": "_timestamp", "partition": "_partition", "offset": "_offset",
            "topic": "_topic", "headers": "_headers"}
FORMATS = ("json", "text", "bytes")
_OFFSET_BEGINNING = -2
#: most records fetched ahead of the partitions' turns
_BUFFER_CAP = 50_000
_OFFSET_END = -1

TP = tuple[str, int]


def split_name(tp: TP) -> str:
    return f"{tp[0]}[{tp[1]}]"


def _parse_split(name: str) -> TP:
    topic, _, rest = name.rpartition("[")
    if not topic or not rest.endswith("]"):
        raise ConfigError(f"not a Kafka split name: {name!r} (expected 'topic[partition]')")
    return topic, int(rest[:-1])


@dataclass(frozen=True)
class ReadOptions:
    """What :func:`millstream.connectors.kafka.read` was asked to do, validated."""

    topics: tuple[str, ...]
    bootstrap: str
    group: str | None = None
    start: str | int = "earliest"
    bounded: bool = False
    format: str = "json"
    deserializer: Callable[[bytes], Any] | None = None
    metadata: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict, hash=False, repr=False)
    backoff: Backoff = DEFAULT_BACKOFF
    discovery_interval_s: float = 5.0
    max_record_bytes: int | None = None
    #: the partition count of each topic, declared (``partitions=``); None: looked up when compiled
    partitions: tuple[tuple[str, int], ...] | None = None
    #: whether the partitions are logical splits (``partitions=`` given: counts or ``"auto"``); if not,
    #: the source is one split whose single consumer reads every partition
    split_partitions: bool = False

    def __post_init__(self) -> None:
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise ConfigError(f"topics must be a topic name or a list of them, not {self.topics!r}")
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise ConfigError(f"group must be a consumer group name or None, not {self.group!r}")
        if self.start == "committed" and self.group is None:
            raise ConfigError("start='committed' needs group=: the offsets committed to a consumer group")
        if not (self.start in ("earliest", "latest", "committed")
                or (isinstance(self.start, int) and not isinstance(self.start, bool) and self.start >= 0)):
            raise ConfigError("start must be 'earliest', 'latest', 'committed', a timestamp in ms or an aware "
                              f"datetime, not {self.start!r}")
        if not isinstance(self.bounded, bool):
            raise ConfigError(f"bounded must be True or False, not {self.bounded!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(map(repr, FORMATS))}, not {self.format!r}")
        if self.deserializer is not None and not callable(self.deserializer):
            raise ConfigError(f"deserializer must be a function bytes -> record, not {self.deserializer!r}")
        bad = [m for m in self.metadata if m not in METADATA]
        if bad:
            raise ConfigError(f"metadata can hold {', '.join(map(repr, METADATA))}; not {', '.join(map(repr, bad))}")
        if not isinstance(self.backoff, Backoff):
            raise ConfigError(f"backoff must be a millstream.connectors.Backoff, not {self.backoff!r}")
        if self.max_record_bytes is not None and (isinstance(self.max_record_bytes, bool)
                                                  or not isinstance(self.max_record_bytes, int)
                                                  or self.max_record_bytes < 1):
            raise ConfigError(f"max_record_bytes must be a positive int or None, not {self.max_record_bytes!r}")
        if self.discovery_interval_s <= 0:
            raise ConfigError(f"discovery_interval must be > 0 seconds, not {self.discovery_interval_s}")
        if self.partitions is not None:
            if not all(isinstance(t, str) for t, _ in self.partitions):
                raise ConfigError(f"partitions must name the topics, not {dict(self.partitions)!r}")
            counts = dict(self.partitions)
            bad_counts = [(t, n) for t, n in self.partitions
                          if isinstance(n, bool) or not isinstance(n, int) or n < 1]
            if sorted(counts) != sorted(self.topics) or bad_counts or len(counts) != len(self.partitions):
                raise ConfigError("partitions must be the partition count of the topic (an int >= 1, the same for "
                                  "every topic) or a dict giving one for each topic "
                                  f"({', '.join(map(repr, self.topics))}), not {dict(self.partitions)!r}")


def partitions_of(partitions: Any, topics: tuple[str, ...]) -> tuple[tuple[str, int], ...] | None:
    """The ``partitions=`` option as ``((topic, count), ...)`` in the order of ``topics`` (validated by
    :class:`ReadOptions`)."""
    if partitions is None:
        return None
    if isinstance(partitions, dict):
        return tuple((t, partitions[t]) for t in topics if t in partitions) + tuple(
            (t, n) for t, n in partitions.items() if t not in topics)
    return tuple((t, partitions) for t in topics)


def start_of(start: Any) -> str | int:
    if isinstance(start, datetime):
        if start.tzinfo is None:
            raise ConfigError(f"start={start!r} is a naive datetime; attach a timezone (e.g. tzinfo=UTC)")
        return int(start.timestamp() * 1000)
    return cast(str | int, start)


@dataclass(frozen=True)
class SplitOf:
    """Which partitions one logical split of a Kafka source reads.

    ``layout`` is each topic's partition count when the flow was compiled (or as declared with
    ``partitions=``); split ``index`` is partition ``home`` of that layout (splits are numbered topic
    by topic, partition by partition). A partition ``(t, q)`` with ``q`` at or beyond its topic's count
    (added to the topic later) belongs to the split of ``(t, q % count)``: the rule depends on the
    layout alone, so every worker agrees on it, and the split that reads it finds it by discovery."""

    index: int
    home: TP
    layout: tuple[tuple[str, int], ...]

    def owns(self, tp: TP) -> bool:
        count = dict(self.layout).get(tp[0])
        return count is not None and (tp[0], tp[1] % count if tp[1] >= count else tp[1]) == self.home


class KafkaSource(Source):
    """Reads Kafka topics; one split per partition (see the module docstring).

    A source made by :meth:`logical_splits` carries ``split`` (:class:`SplitOf`): its reader is assigned
    the partitions that split owns, and nothing else."""

    replay = "position"

    def __init__(self, options: ReadOptions, *, on_error: ErrorPolicy = "fail", name: str | None = None,
                 split: SplitOf | None = None) -> None:
        self.options = options
        self.on_error = check_policy(on_error)
        self.name = name
        self.bounded = options.bounded
        self.split = split
        #: the layout the first :meth:`logical_splits` found: every later compile of this source (the
        #: job's and each worker's) must number the splits alike
        self._layout: tuple[tuple[str, int], ...] | None = None

    def open(self, ctx: SourceContext) -> SourceReader:
        return KafkaReader(self.options, ctx, self.split)

    def logical_splits(self) -> list[Source] | None:
        """One split per partition of the layout: the counts declared with ``partitions=``, else those
        of a metadata request to the broker (retried with the source's ``backoff``; reading no record).
        The first answer is kept, so every compile of this source numbers its splits alike."""
        if self.split is not None or not self.options.split_partitions:
            return None
        layout = self.options.partitions or self._layout
        if layout is None:
            layout = self._layout = self._look_up_layout()
        return [KafkaSource(self.options, on_error=self.on_error, name=self.name, split=SplitOf(j, tp, layout))
                for j, tp in enumerate((t, p) for t, n in layout for p in range(n))]

    def _look_up_layout(self) -> tuple[tuple[str, int], ...]:
        o = self.options
        kafka = client("The Kafka source")
        from confluent_kafka.admin import AdminClient

        connector = f"kafka source {self.default_name()!r}"
        address = address_of(o.bootstrap)
        shared = {k: v for k, v in o.config.items() if k not in RESERVED_READ and k.startswith(ADMIN_SHARED_PREFIXES)}
        try:
            admin = AdminClient(base_config(o.bootstrap, shared))
        except (kafka.KafkaException, ValueError, TypeError) as exc:
            raise ConnectorError(f"making a client to read the topics' partitions: {exc}", connector=connector,
                                 address=address) from None
        timeout = min(5.0, max(0.5, o.backoff.budget_s))
        try:
            parts = with_retry(
                lambda: topic_partitions(admin, o.topics, connector=connector, address=address, timeout_s=timeout),
                what=f"{connector} reading the partitions of {', '.join(o.topics)} from {address}", backoff=o.backoff)
        except ConnectorError as exc:
            if not isinstance(exc.__cause__, ConnectorUnavailable):
                raise
            raise ConnectorError(
                f"{exc.problem} (the source's splits are its partitions, counted when the flow is compiled)",
                connector=connector, address=address,
                fix="check that the broker is up and reachable from this machine; or declare the partition "
                    "counts with kafka.read(..., partitions=N) to compile without asking the broker") from None
        layout = tuple((t, len(parts[t])) for t in o.topics)
        for t in o.topics:
            if parts[t] != list(range(len(parts[t]))):
                raise ConnectorError(f"topic {t!r} has partitions {parts[t]}, not 0..{len(parts[t]) - 1}",
                                     connector=connector, address=address)
        return layout

    def describe(self) -> str:
        o = self.options
        text = f"kafka {','.join(o.topics)}@{address_of(o.bootstrap)}"
        extra = [f"group {o.group}"] if o.group else []
        if o.bounded:
            extra.append("bounded")
        if self.split is not None:
            extra.append(f"partition {split_name(self.split.home)}")
        return text + (f" ({', '.join(extra)})" if extra else "")

    def default_name(self) -> str:
        return self.name or self.options.topics[0]


#: how long one offset commit to the consumer group may take before it counts as failed
COMMIT_TIMEOUT_S = 10.0
#: commits waiting for the broker beyond which a checkpoint's commit is skipped (the next one covers it)
MAX_COMMITS_IN_FLIGHT = 4
#: how long closing a Kafka source waits for its last offset commit to be confirmed
CLOSE_COMMIT_WAIT_S = 5.0
#: the options of ``config=`` the offset-committing admin client shares with the consumer (security, sockets)
ADMIN_SHARED_PREFIXES = ("security.", "sasl.", "ssl.", "socket.", "client.", "broker.", "reconnect.", "retry.",
                         "enable.ssl", "oauthbearer", "api.version", "metadata.", "connections.")


class KafkaReader(SourceReader):
    """A running Kafka source: one consumer, assigned every partition of its topics, or those of one
    logical split (``split``)."""

    def __init__(self, options: ReadOptions, ctx: SourceContext, split: SplitOf | None = None) -> None:
        self.o = options
        self.ctx = ctx
        self.split_of = split
        self.kafka = client("The Kafka source")
        self.connector = f"kafka source '{ctx.step}'"
        self.address = address_of(options.bootstrap)
        conf = base_config(options.bootstrap, {
            "group.id": options.group or f"millstream-{ctx.step}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "error_cb": self._on_error,
            **{k: v for k, v in options.config.items() if k not in RESERVED_READ},
        })
        self.consumer = self.kafka.Consumer(conf)
        self.buf: dict[TP, _Queue] = {}
        self.ready: collections.deque[TP] = collections.deque()  # partitions with buffered records, in turn
        self.next: dict[TP, int] = {}      # offset after the last record handed out (or skipped)
        self.end: dict[TP, int] = {}       # bounded: the end offset at the start
        self.ended: set[TP] = set()
        self.eof_at: dict[TP, int] = {}    # where librdkafka last reported the end of a partition
        self.base: dict[TP, int] = {}      # start offsets resolved to numbers ("latest", "committed")
        self.past_start: set[TP] = set()   # start=<timestamp>: partitions whose first record at it was seen
        self.assigned: list[TP] = []
        self.acked: dict[TP, int] = {}     # offsets handed to the group's commit (asynchronous)
        self.committed: dict[TP, int] = {} # offsets the broker confirmed
        self.commit_figures = {"commits": 0, "commit_failures": 0}
        self.commit_failing = False
        self.commits: list[tuple[list[Any], Any]] = []  # (offsets, future) of commits not confirmed yet
        self.admin: Any = None
        self.start_ts: int | None = options.start if isinstance(options.start, int) else None
        self.started = False
        self.restored: dict[str, Any] | None = None
        self.down_since: float | None = None
        self.retries = [0]
        self.last_metrics: dict[str, int] = {"retries": 0, "lag": 0, "partitions": 0}
        self.next_discovery = 0.0
        self.idle_polls = 0
        self.buffered = 0
        self.cur_split: str | None = None
        self.cur_offsets: list[int] | None = []
        self.cur_msgs: list[Any] = []
        self.frame_msgs: list[Any] | None = None
        self.schemas: dict[str, Any] = {}  # per topic: the columns of its last batch (flat ones)
        self.fast_json = options.format == "json" and options.deserializer is None and not options.metadata
        self.max_bytes = options.max_record_bytes

    # -- starting ---------------------------------------------------------------------------
    def _on_error(self, err: Any) -> None:
        name = err.name()
        if name in ("_ALL_BROKERS_DOWN", "_TRANSPORT", "_RESOLVE"):
            # a lost connection too: librdkafka reconnects by itself, and may do so before it would call
            # every broker down, so the job would wait without saying so; the next poll probes the broker
            # (a metadata request, at once when it is back) and retries, warning, while it cannot reach it
            if name != "_RESOLVE" and self.down_since is None:
                self.down_since = time.monotonic()
            log.debug("%s: %s", self.connector, err.str())
        else:
            log.warning("%s: %s", self.connector, err.str())

    def _what(self, doing: str) -> str:
        return f"{self.connector} {doing} {self.address}"

    def _start(self) -> None:
        timeout = min(5.0, max(0.5, self.o.backoff.budget_s))
        parts = with_retry(lambda: topic_partitions(self.consumer, self.o.topics, connector=self.connector,
                                                    address=self.address, timeout_s=timeout),
                           what=self._what("reading metadata from"), backoff=self.o.backoff, counter=self.retries)
        tps = self._mine([(t, p) for t in self.o.topics for p in parts[t]])
        restored = self.restored
        offsets: dict[TP, int] = {}
        if restored is not None:
            self._check_restored(restored)
            for name, off in restored["offsets"].items():
                if off is not None:
                    offsets[_parse_split(name)] = int(off)
            self.end = {_parse_split(n): int(e) for n, e in restored.get("end", {}).items()}
            self.ended = {_parse_split(n) for n in restored.get("ended", ())}
            # a partition the checkpoint does not know appeared since: read it from its beginning
            fresh = [tp for tp in tps if tp not in offsets and split_name(tp) not in restored["offsets"]]
            known = [tp for tp in tps if tp not in fresh]
            unset = [tp for tp in known if tp not in offsets]
            offsets.update(self._start_offsets(unset))
            offsets.update({tp: _OFFSET_BEGINNING for tp in fresh})
            if self.o.bounded:  # a bounded read ends at the partitions it had at its start
                tps = known
        else:
            offsets = self._start_offsets(tps)
        if restored is not None:
            done = {_parse_split(n): int(o) for n, o in restored["offsets"].items() if o is not None}
            self.past_start.update(done)
            self.next.update(done)
        self._assign([(tp, offsets[tp]) for tp in tps if tp not in self.ended])
        self.assigned = tps
        self.started = True
        self.next_discovery = time.monotonic() + self.o.discovery_interval_s

    def _mine(self, tps: list[TP]) -> list[TP]:
        """The partitions of ``tps`` this reader reads: all, or those its split owns. A split's own
        partition (of the layout) must exist."""
        sp = self.split_of
        if sp is None:
            return tps
        if sp.home not in tps:
            raise ConnectorError(
                f"partition {split_name(sp.home)} does not exist (the source was compiled with "
                f"{', '.join(f'{t}: {n}' for t, n in sp.layout)} partitions)", connector=self.connector,
                address=self.address, fix="declare the partition counts the topics have (kafka.read(..., "
                                          "partitions=...)), or leave partitions= out to look them up")
        return [tp for tp in tps if sp.owns(tp)]

    def _check_restored(self, restored: dict[str, Any]) -> None:
        """A split takes a checkpoint's offsets only for partitions it owns: another layout (the topic
        grew, with partitions read by the split of ``p % count``, and the job was compiled again) would
        otherwise read a partition twice, or skip it."""
        sp = self.split_of
        if sp is None:
            return
        names = set(restored["offsets"]) | set(restored.get("end", {})) | set(restored.get("ended", ()))
        alien = sorted(n for n in names if not sp.owns(_parse_split(n)))
        if alien:
            then = restored.get("layout")
            was = (f"partitions={dict(then)!r}" if then is not None else "the partition counts it was taken with")
            raise ConfigError(
                f"kafka source {self.ctx.step!r}: the checkpoint's split {sp.index} ({split_name(sp.home)} "
                f"now) holds the offsets of {', '.join(alien)}, which this run reads in another split: the "
                f"topics' partitions ({dict(sp.layout)!r} now) are not those the checkpoint's job was compiled "
                f"with. Resume with kafka.read(..., {was}), so that every partition keeps its split "
                "(partitions added since are read by the split of partition p % count)")

    def _assign(self, pairs: list[tuple[TP, int]]) -> None:
        if not pairs:
            return
        tps = [self.kafka.TopicPartition(t, p, off) for (t, p), off in pairs]
        try:
            if self.assigned:
                self.consumer.incremental_assign(tps)
            else:
                self.consumer.assign(tps)
        except self.kafka.KafkaException as exc:
            raise kafka_error(exc, connector=self.connector, address=self.address,
                              doing="assigning partitions") from None

    def _start_offsets(self, tps: list[TP]) -> dict[TP, int]:
        if not tps:
            return {}
        start = self.o.start
        if start == "earliest":
            return dict.fromkeys(tps, _OFFSET_BEGINNING)
        kafka = self.kafka
        if start == "latest":
            # resolved now (not OFFSET_END), so that a checkpoint taken before a partition's first record
            # keeps this offset: a restore must not skip what was produced in between
            def ends() -> dict[TP, int]:
                try:
                    return {tp: self.consumer.get_watermark_offsets(kafka.TopicPartition(*tp), timeout=10)[1]
                            for tp in tps}
                except kafka.KafkaException as exc:
                    raise kafka_error(exc, connector=self.connector, address=self.address,
                                      doing="looking up the end offsets") from None
            got_ends: dict[TP, int] = with_retry(ends, what=self._what("looking up end offsets at"),
                                                 backoff=self.o.backoff, counter=self.retries)
            self.base.update(got_ends)
            return got_ends
        if start == "committed":
            def committed() -> Any:
                try:
                    return self.consumer.committed([kafka.TopicPartition(t, p) for t, p in tps], timeout=10)
                except kafka.KafkaException as exc:
                    raise kafka_error(exc, connector=self.connector, address=self.address,
                                      doing=f"reading the offsets committed to group {self.o.group!r}") from None
            got = with_retry(committed, what=self._what("reading committed offsets from"), backoff=self.o.backoff,
                             counter=self.retries)
            resolved = {(x.topic, x.partition): (x.offset if x.offset >= 0 else _OFFSET_BEGINNING) for x in got}
            self.base.update({tp: o for tp, o in resolved.items() if o >= 0})
            return resolved

        def for_times() -> Any:
            try:
                return self.consumer.offsets_for_times(
                    [kafka.TopicPartition(t, p, int(start)) for t, p in tps], timeout=10)
            except kafka.KafkaException as exc:
                raise kafka_error(exc, connector=self.connector, address=self.address,
                                  doing="looking up offsets by timestamp") from None
        got = with_retry(for_times, what=self._what("looking up offsets at"), backoff=self.o.backoff,
                         counter=self.retries)
        return {(x.topic, x.partition): (x.offset if x.offset >= 0 else _OFFSET_END) for x in got}

    # -- reading ------------------------------------------------------------------------------
    def poll(self, max_records: int) -> list[Any] | None:
        msgs = self._next_chunk(max_records)
        if msgs is None:
            return None
        return self._decode(msgs) if msgs else []

    def _next_chunk(self, max_records: int) -> list[Any] | None:
        if not self.started:
            self._start()
        if self.down_since is not None:
            self._wait_for_broker()
        if not self.o.bounded and time.monotonic() >= self.next_discovery:
            self._discover()
        if (len(self.ready) < len(self.assigned) - len(self.ended) and self.buffered < _BUFFER_CAP
                and self.idle_polls < 3):
            # records of some partitions only are at hand: fetch what is queued for the others too, so
            # that partitions take turns (a backlog of one does not hold the others' watermarks back)
            self._fetch(max_records, wait=False)
        tp = self._pick()
        if tp is None:
            self._fetch(max_records)
            tp = self._pick()
        if tp is None:
            self.cur_split = None
            if self.o.bounded and all(t in self.ended for t in self.assigned):
                return None
            return []
        q = self.buf[tp]
        msgs = q.take(max_records)
        self.buffered -= len(msgs)
        if q:
            self.ready.append(tp)
        self.cur_split = split_name(tp)
        self.next[tp] = msgs[-1].offset() + 1
        self._check_end(tp)
        return msgs

    def _pick(self) -> TP | None:
        while self.ready:
            tp = self.ready.popleft()
            if self.buf.get(tp):
                return tp
        return None

    def _fetch(self, max_records: int, *, wait: bool = True) -> None:
        kafka = self.kafka
        timeout = 0.01 if wait and self.idle_polls >= 3 else 0.0
        try:
            msgs = self.consumer.consume(max(max_records, 1), timeout)
        except kafka.KafkaException as exc:
            raise kafka_error(exc, connector=self.connector, address=self.address, doing="fetching") from None
        if wait:
            self.idle_polls = 0 if msgs else self.idle_polls + 1
        Message = kafka.Message
        error_of = Message.error
        key = Message.partition if len(self.o.topics) == 1 else _topic_partition
        for _, grp in itertools.groupby(msgs, key=key):
            run = list(grp)
            if any(map(error_of, run)):
                for m in run:
                    self._add_one(m)
            else:
                self._add_run(run)

    def _add_run(self, run: list[Any]) -> None:
        """Buffer a run of records of one partition (no error among them)."""
        first = run[0]
        tp = (first.topic(), first.partition())
        self.down_since = None
        if self.o.bounded:
            end = self.end.get(tp)
            if end is None:
                _, high = self.consumer.get_watermark_offsets(self.kafka.TopicPartition(*tp), cached=True)
                end = self.end[tp] = high if high >= 0 else first.offset() + 1
            if run[-1].offset() >= end:
                run = [m for m in run if m.offset() < end]
        if self.start_ts is not None and tp not in self.past_start:
            # offsets_for_times may point before the first record at the timestamp (tansu answers with
            # the batch's base offset): records before it in the partition are passed over
            start_ts = self.start_ts
            i = next((i for i, m in enumerate(run) if m.timestamp()[1] >= start_ts), len(run))
            run = run[i:]
            if run:
                self.past_start.add(tp)
        if not run:
            return
        q = self.buf.get(tp)
        if q is None:
            q = self.buf[tp] = _Queue()
        if not q:
            self.ready.append(tp)
        q.add(run)
        self.buffered += len(run)

    def _add_one(self, m: Any) -> None:
        err = m.error()
        if err is None:
            self._add_run([m])
            return
        tp = (m.topic(), m.partition())
        if err.code() == self.kafka.KafkaError._PARTITION_EOF:
            self.eof_at[tp] = m.offset()
            if self.o.bounded and tp not in self.end:
                self.end[tp] = m.offset()
            self._check_end(tp)
            return
        self._fetch_error(err)

    def _fetch_error(self, err: Any) -> None:
        exc = kafka_error(self.kafka.KafkaException(err), connector=self.connector, address=self.address,
                          doing="fetching")
        if isinstance(exc, ConnectorUnavailable):
            if self.down_since is None:
                self.down_since = time.monotonic()
            return
        if err.code() == self.kafka.KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise ConnectorError(exc.problem, connector=self.connector, address=self.address,
                                 fix="the topic was deleted while the job read it; create it again or "
                                     "restore the job from a checkpoint of the new topic")
        raise exc

    def _check_end(self, tp: TP) -> None:
        """A bounded partition ends once everything before its end offset was handed out (or passed over)."""
        if not self.o.bounded or tp in self.ended or self.buf.get(tp):
            return
        end = self.end.get(tp)
        if end is not None and max(self.next.get(tp, -1), self.eof_at.get(tp, -1)) >= end:
            self.ended.add(tp)

    def _wait_for_broker(self) -> None:
        """All brokers are down: probe (a metadata request) with backoff until one answers."""
        def probe() -> None:
            try:
                self.consumer.list_topics(self.o.topics[0], timeout=min(2.0, self.o.backoff.max_s))
            except self.kafka.KafkaException as exc:
                raise kafka_error(exc, connector=self.connector, address=self.address,
                                  doing="reaching the broker") from None
            self.down_since = None

        with_retry(probe, what=self._what("reading"), backoff=self.o.backoff, counter=self.retries)

    def _discover(self) -> None:
        """Assign partitions added to the topics since the start (from their beginning)."""
        self.next_discovery = time.monotonic() + self.o.discovery_interval_s
        try:
            parts = topic_partitions(self.consumer, self.o.topics, connector=self.connector, address=self.address,
                                     timeout_s=1.0)
        except ConnectorUnavailable:
            return  # looked at again next time
        known = set(self.assigned)
        new = [tp for tp in self._mine([(t, p) for t in self.o.topics for p in parts[t]]) if tp not in known]
        if new:
            log.info("%s: new partitions %s", self.connector, ", ".join(map(split_name, new)))
            self._assign([(tp, _OFFSET_BEGINNING) for tp in new])
            self.assigned.extend(new)

    # -- decoding -----------------------------------------------------------------------------
    def _decode(self, msgs: list[Any]) -> list[Any]:
        self.cur_msgs = msgs
        if self.fast_json and (self.max_bytes is None or _longest(msgs) <= self.max_bytes):
            try:
                recs = list(map(orjson.loads, map(self.kafka.Message.value, msgs)))
            except (orjson.JSONDecodeError, TypeError):
                pass
            else:
                self.cur_offsets = None  # record i is message i
                return recs
        out: list[Any] = []
        offsets: list[int] = []
        for m in msgs:
            rec = self._record(m)
            if rec is not _BAD:
                out.append(rec)
                offsets.append(m.offset())
        self.cur_offsets = offsets
        return out

    def _record(self, m: Any) -> Any:
        o = self.o
        raw = m.value()
        pos = f"{self.cur_split}@{m.offset()}"
        if raw is None:
            self.ctx.bad_record("the message has no value (a tombstone?)", position=pos, raw=None)
            return _BAD
        if self.max_bytes is not None and len(raw) > self.max_bytes:
            self.ctx.bad_record(f"the value has {len(raw):,} bytes, more than max_record_bytes={self.max_bytes:,}",
                                position=pos, raw=raw[:1024])
            return _BAD
        value: Any
        if o.deserializer is not None:
            try:
                value = o.deserializer(raw)
            except Exception as exc:  # noqa: BLE001 - the user's deserializer: the error policy decides
                self.ctx.bad_record(f"the deserializer raised {type(exc).__name__}: {exc}", position=pos, raw=raw)
                return _BAD
            return self._with_metadata(m, value, pos, raw)
        try:
            if o.format == "json":
                value = orjson.loads(raw)
            elif o.format == "text":
                value = raw.decode("utf-8")
            else:
                value = raw
        except orjson.JSONDecodeError as exc:
            self.ctx.bad_record(f"not valid JSON: {exc}", position=pos, raw=raw)
            return _BAD
        except UnicodeDecodeError as exc:
            self.ctx.bad_record(f"not UTF-8 text: {exc}", position=pos, raw=raw)
            return _BAD
        return self._with_metadata(m, value, pos, raw)

    def _with_metadata(self, m: Any, value: Any, pos: str, raw: bytes) -> Any:
        o = self.o
        if not o.metadata:
            return value
        if type(value) is not dict:
            if o.format == "json" or o.deserializer is not None:
                self.ctx.bad_record(f"expected a JSON object (metadata={o.metadata!r} adds fields to it), got "
                                    f"{type(value).__name__}", position=pos, raw=raw)
                return _BAD
            value = {"value": value}
        for what in o.metadata:
            value[METADATA[what]] = _meta(m, what)
        return value

    # -- columnar batches ------------------------------------------------------------------------
    @property
    def columnar(self) -> bool:
        """JSON values without a deserializer decode straight into polars DataFrames."""
        return (self.o.format == "json" and self.o.deserializer is None and "headers" not in self.o.metadata
                and importlib.util.find_spec("polars") is not None)

    def poll_frame(self, max_records: int) -> Any:
        """Like :meth:`poll`, as one polars DataFrame decoded by polars from the fetched values in one
        call. A chunk polars cannot take as it is (a bad value, a value that is not an object, a value
        holding a newline, a key that is not UTF-8) comes as a list of rows, decoded and reported one
        record at a time as :meth:`poll` does."""
        msgs = self._next_chunk(max_records)
        if msgs is None:
            return None
        if not msgs:
            return []
        frame = self._frame(msgs)
        if frame is None:
            self.frame_msgs = None
            return self._decode(msgs)
        self.frame_msgs = msgs
        self.cur_msgs, self.cur_offsets = msgs, None
        return frame

    def _frame(self, msgs: list[Any]) -> Any:
        from millstream._coltypes import retyped_json
        from millstream.connectors._files_read import _ndjson_frame

        values = list(map(self.kafka.Message.value, msgs))
        if None in values or (self.max_bytes is not None and max(map(len, values)) > self.max_bytes):
            return None
        block = b"\n".join(values)
        if block.count(b"\n") != len(values) - 1:
            return None  # a value spans lines: the line reader would split it
        topic = msgs[0].topic()  # the partitions of a topic mostly share their columns
        schema = self.schemas.get(topic)
        df = _known_schema_frame(values, block, schema) if schema is not None else None
        if df is None:
            df = _ndjson_frame(values)
            if df is None or retyped_json(df, values):
                return None  # rows: polars' inference would change a value's type (1 -> "1"), native does not
            if df.width and all(str(t) in _CACHEABLE for t in df.schema.dtypes()):
                self.schemas[topic] = df.schema
        if not self.o.metadata:
            return df
        import polars as pl

        cols = []
        for what in self.o.metadata:
            name = METADATA[what]
            try:
                vals = [_meta(m, what, strict=True) for m in msgs]
            except UnicodeDecodeError:
                return None
            dtype = pl.String if what in ("key", "topic") else pl.Int64
            cols.append(pl.Series(name, vals, dtype=dtype))
        return df.with_columns(cols)

    def rows_of_frame(self, frame: Any) -> list[Any]:
        """The records of the last batch as :meth:`poll` would have made them."""
        if self.frame_msgs is None:
            return cast(list[Any], frame.to_dicts())
        return self._decode(self.frame_msgs)

    # -- the reader contract -----------------------------------------------------------------------
    def split(self) -> str | None:
        return self.cur_split

    def splits(self) -> list[str]:
        return [split_name(tp) for tp in self.assigned if tp not in self.ended]

    def position_of(self, index: int) -> str | None:
        if self.cur_offsets is None:
            self.cur_offsets = [m.offset() for m in self.cur_msgs]
        if self.cur_split is None or not 0 <= index < len(self.cur_offsets):
            return None
        return f"{self.cur_split}@{self.cur_offsets[index]}"

    def wait_hint(self) -> float | None:
        return 0.005 if self.idle_polls >= 3 else None

    def _position(self, tp: TP) -> int | None:
        if tp in self.next:
            return self.next[tp]
        q = self.buf.get(tp)
        if q:
            return int(q.first().offset())
        return self.base.get(tp)  # nothing handed out yet: where it started, if that is a number

    def snapshot(self) -> Any:
        if not self.started:
            return self.restored
        return {
            "topics": list(self.o.topics),
            "offsets": {split_name(tp): self._position(tp) for tp in self.assigned},
            "end": {split_name(tp): e for tp, e in self.end.items()},
            "ended": sorted(split_name(tp) for tp in self.ended),
            **({"layout": list(self.split_of.layout)} if self.split_of is not None else {}),
        }

    def restore(self, position: Any) -> None:
        if position is None:
            return
        if isinstance(position, dict) and position and all(isinstance(j, int) for j in position):
            raise ConfigError(
                "the checkpoint holds this Kafka source's position as logical splits (it was read with "
                "partitions=), and the source is now one split: it cannot be resumed that way. Run with "
                "the partitions= the checkpoint was taken with, or start over with a new checkpoint directory")
        if not isinstance(position, dict) or "offsets" not in position:
            raise ConfigError(f"not a position of a Kafka source: {str(position)[:200]}")
        if self.started:
            raise ConfigError("restore() must come before the first poll of a Kafka source")
        self.restored = position

    def acknowledge(self, position: Any) -> None:
        """Commit the offsets of ``position`` to the consumer group (none without ``group=``).

        The commit never waits for the broker, the way Flink's Kafka source commits on a completed
        checkpoint: the offsets in millstream's checkpoints are what a restart resumes from, and the
        group's offsets only show progress to Kafka tools (and serve ``start="committed"``). It goes
        through an admin client (an OffsetCommit for the group, as a consumer without a group
        membership sends), with a request timeout: a commit through the consumer can block, and keeps
        the consumer's ``close()`` waiting without bound, while the broker is unreachable (librdkafka
        retries it forever). Outcomes are collected on later calls: a failed commit is logged and
        counted (``commit_failures``), and the next checkpoint commits newer offsets, which cover it.
        """
        if self.o.group is None or not position or self.consumer is None:
            return
        self._collect_commits()
        kafka = self.kafka
        todo = []
        for name, off in position["offsets"].items():
            tp = _parse_split(name)
            if off is not None and off > self.acked.get(tp, -1):
                todo.append(kafka.TopicPartition(tp[0], tp[1], int(off)))
        if not todo or len(self.commits) >= MAX_COMMITS_IN_FLIGHT:
            return  # nothing new; or the broker is slow: a later checkpoint's offsets will cover these
        try:
            if self.admin is None:
                from confluent_kafka.admin import AdminClient

                shared = {k: v for k, v in self.o.config.items()
                          if k not in RESERVED_READ and k.startswith(ADMIN_SHARED_PREFIXES)}
                self.admin = AdminClient(base_config(self.o.bootstrap, shared))
            futures = self.admin.alter_consumer_group_offsets(
                [kafka.ConsumerGroupTopicPartitions(self.o.group, todo)], request_timeout=COMMIT_TIMEOUT_S)
        except (kafka.KafkaException, ValueError, TypeError) as exc:
            self._commit_failed(str(exc))
            return
        self.commits.append((todo, next(iter(futures.values()))))
        for x in todo:
            self.acked[(x.topic, x.partition)] = x.offset

    def _collect_commits(self) -> None:
        """The outcome of the commits that have one by now (never waits)."""
        if not self.commits:
            return
        waiting = []
        for todo, future in self.commits:
            if not future.done():
                waiting.append((todo, future))
                continue
            try:
                done = future.result()
                errors = [x.error for x in done.topic_partitions if x.error is not None]
            except Exception as exc:  # noqa: BLE001 - a KafkaException (timed out, broker gone, ...)
                errors = [exc]
            if errors:
                self._commit_failed(str(errors[0]))
                for x in todo:  # commit these again with the next checkpoint (newer offsets cover them)
                    tp = (x.topic, x.partition)
                    if self.acked.get(tp, -1) <= x.offset:
                        self.acked[tp] = self.committed.get(tp, -1)
                continue
            for x in todo:
                tp = (x.topic, x.partition)
                self.committed[tp] = max(self.committed.get(tp, -1), x.offset)
            self.commit_figures["commits"] += 1
            if self.commit_failing:
                self.commit_failing = False
                log.info("%s: offsets committed to group %r again", self.connector, self.o.group)
        self.commits = waiting

    def _commit_failed(self, why: str) -> None:
        self.commit_figures["commit_failures"] += 1
        if not self.commit_failing:  # once per spell of failures, not per checkpoint
            self.commit_failing = True
            log.warning("%s: could not commit offsets to group %r (%s); the job goes on (its checkpoints hold "
                        "the offsets it resumes from) and commits again with the next checkpoint",
                        self.connector, self.o.group, why)

    def metrics(self) -> dict[str, int]:
        if self.consumer is None:  # closed: the last figures (retries counted up to the end)
            return {**self.last_metrics, "retries": self.retries[0]}
        lag = 0
        for tp in self.assigned:
            try:
                _, high = self.consumer.get_watermark_offsets(self.kafka.TopicPartition(*tp), cached=True)
            except Exception:  # noqa: BLE001 - a figure, not worth failing for
                high = -1
            pos = self._position(tp)
            if high >= 0 and pos is not None:
                lag += max(0, high - pos)
        self.last_metrics = {"retries": self.retries[0], "lag": lag, "partitions": len(self.assigned)}
        if self.o.group is not None:
            self._collect_commits()
            self.last_metrics.update(self.commit_figures)
        return self.last_metrics

    def close(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        # the last checkpoint's commit: give it a moment to be confirmed (bounded: the broker may be gone)
        deadline = time.monotonic() + CLOSE_COMMIT_WAIT_S
        while self.commits and self.down_since is None and time.monotonic() < deadline:
            time.sleep(0.01)
            self._collect_commits()
        if self.commits:
            log.info("%s: %d offset commit(s) to group %r not confirmed at close", self.connector,
                     len(self.commits), self.o.group)
        self.commits, self.admin = [], None  # an admin client ends at once, whatever it still waits for
        self.consumer = None
        consumer.close()

    # -- progress of a bounded read (the terminal's percentage and ETA) ------------------------------
    def progress(self) -> tuple[int, int] | None:
        """``(offsets consumed, offsets to consume)`` over the partitions of a bounded read: per
        partition from where the read started (the offset ``start`` resolved to, else the partition's
        first offset as the broker last told it, else 0) to the end fixed at the start (:meth:`_add_run`,
        :meth:`_add_one`). None for an unbounded read, and until every partition's end is known (its
        first fetch answers it). Cheap: cached figures only, no request to the broker."""
        if not self.o.bounded or not self.started or self.consumer is None:
            return None
        done = total = 0
        for tp in self.assigned:
            end = self.end.get(tp)
            if end is None:
                return None
            start = self.base.get(tp)
            if start is None:
                try:
                    start, _ = self.consumer.get_watermark_offsets(self.kafka.TopicPartition(*tp), cached=True)
                except Exception:  # noqa: BLE001 - a figure, not worth failing for
                    start = -1
                start = max(start, 0)  # not known (a partition read to its end before a restart): offset 0
            start = min(start, end)
            at = end if tp in self.ended else self._position(tp)
            done += min(max((at if at is not None else start) - start, 0), end - start)
            total += end - start
        return done, total

_BAD = object()


#: the column types a cached schema may hold: polars refuses a JSON value of another type for these
#: (it would turn a number into a String or an int into a Float64 silently, so those are checked apart
#: or not cached)
_CACHEABLE = frozenset({"Int64", "Boolean", "String"})
_SPACED_KEY = re.compile(rb'"[ \t\r\n]+:')


def _known_schema_frame(values: list[bytes], block: bytes, schema: Any) -> Any:
    """The values as a DataFrame of ``schema`` (the columns of the topic's last batch), about four
    times faster than inferring the schema again; None unless the values fit it exactly as inference
    would have read them. With no escaped quote in the block, ``":`` ends a key and nothing else, so:
    a field outside the schema (which polars would drop) or a null shows as more keys than non-null
    cells; a String column's value that was not a JSON string (which polars would turn into text)
    shows as fewer ``":"`` than String cells; Int64 and Boolean columns refuse other types. The first
    value must have every column, in order, and every column a value, as inference would make them."""
    import polars as pl

    from millstream.connectors._files_common import suspect_json_lines

    if b'\\"' in block or _SPACED_KEY.search(block) is not None or suspect_json_lines(values, block):
        return None
    try:
        first = orjson.loads(values[0])
    except orjson.JSONDecodeError:
        return None
    if type(first) is not dict or list(first) != schema.names():
        return None  # inference takes the columns in the order they first appear
    try:
        df = pl.read_ndjson(io.BytesIO(block), schema=schema)
    except Exception:  # noqa: BLE001 - another type, or not JSON: schema inference (or rows) decide
        return None
    if df.height != len(values):
        return None
    nulls = df.null_count().row(0)
    if df.height in nulls:
        return None  # a field no value has: inference would not make its column
    if block.count(b'":') != df.height * df.width - sum(nulls):
        return None
    strings = sum(df.height - n for n, t in zip(nulls, df.schema.dtypes(), strict=True) if str(t) == "String")
    if strings and block.count(b'":"') + block.count(b'": "') != strings:
        return None
    return df


def _longest(msgs: list[Any]) -> int:
    try:
        return max(map(len, map(msgs[0].__class__.value, msgs)))
    except TypeError:  # a message without a value: the record path reports it
        return 0


def _topic_partition(m: Any) -> tuple[str, int]:
    return m.topic(), m.partition()


class _Queue:
    """The buffered records of one partition: runs (lists) of messages, taken from the front."""

    __slots__ = ("n", "runs")

    def __init__(self) -> None:
        self.runs: collections.deque[list[Any]] = collections.deque()
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add(self, run: list[Any]) -> None:
        self.runs.append(run)
        self.n += len(run)

    def first(self) -> Any:
        return self.runs[0][0]

    def take(self, k: int) -> list[Any]:
        runs = self.runs
        out: list[Any] = []
        while runs and len(out) < k:
            run = runs[0]
            need = k - len(out)
            if len(run) <= need:
                runs.popleft()
                if out:
                    out += run
                else:
                    out = run
            else:
                out += run[:need]
                runs[0] = run[need:]
        self.n -= len(out)
        return out


def _meta(m: Any, what: str, *, strict: bool = False) -> Any:
    if what == "key":
        k = m.key()
        if k is None:
            return None
        try:
            return k.decode("utf-8")
        except UnicodeDecodeError:
            if strict:
                raise
            return k
    if what == "timestamp":
        kind, ts = m.timestamp()
        return ts if kind else None
    if what == "partition":
        return m.partition()
    if what == "offset":
        return m.offset()
    if what == "topic":
        return m.topic()
    headers = m.headers() or ()
    out: dict[str, Any] = {}
    for k, v in headers:
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                pass
        out[k] = v
    return out

