"""The Kafka connector against a real Kafka-protocol broker (a private tansu, see conftest.py).

tansu 0.6 limits met here (SERVICES.md): ListOffsets(latest) is wrong (bounded reads use partition
EOF and the first fetch's high watermark instead), offsets_for_times answers a batch's base offset
(the reader passes over earlier records itself), records of aborted transactions are visible to
read_committed readers (exactly-once is checked with the marker-and-tag verifier,
``kafka.committed_records``), and it forgets everything when it stops (a broker outage is made with
a loopback proxy that drops connections, not by restarting the broker).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration import services
from tests.integration.services import Proxy

import millstream as ms
from millstream.connectors import SourceContext
from millstream.errors import ConnectorError, MissingDependencyError, RecordError
from millstream.testing import CollectSink

pytestmark = [pytest.mark.integration]
REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture
def kafka() -> Any:
    services.need_module("confluent_kafka", "kafka")
    from millstream.connectors import kafka

    return kafka


@pytest.fixture
def bs(kafka_broker: services.Broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def topics(bs: str, kafka: Any) -> Iterator[Any]:
    """``make(partitions)`` creates a topic unique to the test; all are deleted after it."""
    made: list[str] = []

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = services.unique(prefix)
        kafka.create_topic(bs, name, partitions=partitions)
        made.append(name)
        return name

    yield make
    for t in made:
        kafka.delete_topic(bs, t)


def produce(bs: str, topic: str, values: list[Any], *, partition: int | None = None, key: Any = None,
            timestamps: list[int] | None = None) -> None:
    """Produce raw messages (bytes/str values as they are, anything else as JSON) with the bare client."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bs, "linger.ms": 5})
    for i, v in enumerate(values):
        raw = v if isinstance(v, bytes | None) else (v.encode() if isinstance(v, str) else json.dumps(v).encode())
        kw: dict[str, Any] = {}
        if partition is not None:
            kw["partition"] = partition
        if timestamps is not None:
            kw["timestamp"] = timestamps[i]
        p.produce(topic, raw, key=key(v) if callable(key) else key, **kw)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def committed(bs: str, group: str, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bs, "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [x.offset for x in got]
    finally:
        c.close()


def canon(rows: list[Any]) -> Counter[str]:
    return Counter(json.dumps(r, sort_keys=True) for r in rows)


def ctx(step: str = "k", policy: Any = "fail") -> SourceContext:
    from millstream._clock import SystemClock

    return SourceContext(step=step, clock=SystemClock(), policy=policy)


def read_all(reader: Any, *, want: int | None = None, timeout: float = 15.0) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = reader.poll(500)
        if got is None:
            break
        out += got
        if want is not None and len(out) >= want:
            break
        if not got:
            time.sleep(0.005)
    return out


# -- round trips ----------------------------------------------------------------------------------


def test_nexmark_round_trip(exec_mode: str, bs: str, kafka: Any, topics: Any) -> None:
    """Nexmark events produced by a flow into a 4-partition topic read back equal, in every mode
    (micro-batch decodes each fetch into one polars frame)."""
    from millstream import nexmark

    topic = topics(4, "nexmark")
    config = nexmark.NexmarkConfig(events=6_000)
    produced = CollectSink()
    flow = ms.Flow("produce")
    events = flow.source(nexmark.read(config, kind="bid"))
    events.sink(produced)
    events.sink(kafka.write(topic, bootstrap=bs, key="auction"))
    flow.run(mode="native")
    assert len(produced.values) > 5_000

    out = CollectSink()
    flow = ms.Flow("consume")
    (flow.source(kafka.read(topic, bootstrap=bs, bounded=True), watermark=nexmark.WATERMARK)
     .filter(ms.col("price") >= 0).sink(out))
    result = flow.run()
    assert canon(out.values) == canon(produced.values)
    assert result.records_read == len(produced.values)
    # the same auction went to one partition (keys partitioned by murmur2)
    flow = ms.Flow("partitions")
    seen = CollectSink()
    flow.source(kafka.read(topic, bootstrap=bs, bounded=True, metadata=("partition", "key"))).sink(seen)
    flow.run()
    where: dict[str, set[int]] = {}
    for r in seen.values:
        where.setdefault(r["_key"], set()).add(r["_partition"])
    assert all(len(ps) == 1 for ps in where.values())
    assert len({p for ps in where.values() for p in ps}) == 4


@pytest.mark.parametrize(("floats", "key"), [(False, "i"), (True, "k"), (True, "x")])  # int, str, float keys
def test_columnar_writes_the_same_bytes(floats: bool, key: str, bs: str, kafka: Any, topics: Any) -> None:
    """Micro-batch mode hands the sink polars frames, written in one call per batch: the messages are
    byte for byte those native mode writes (escapes, unicode, nulls; floats read and computed, as
    Nexmark q1's ``price * 0.908``; nested lists and objects; a float key)."""
    src = topics(2, "colin")
    rows = [{"i": i, "k": f"k{i % 5}", "s": ["a\"b", "tab\t", "é😀", "\x01", None][i % 5], "b": i % 3 == 0}
            for i in range(2_000)]
    if floats:
        rows = [{**r, "x": r["i"] / 3, "big": r["i"] * 1e15, "l": [r["i"] / 7, None],
                 "o": {"p": r["i"] * 0.1, "q": "é"}} for r in rows]
    produce(bs, src, rows, key=lambda r: r["k"].encode())
    got: dict[str, Counter[tuple[bytes | None, bytes]]] = {}
    for mode in ("native", "microbatch"):
        dst = topics(2, f"colout{mode}")
        flow = ms.Flow("col")
        stream = flow.source(kafka.read(src, bootstrap=bs, bounded=True))
        if floats:
            stream = stream.with_columns(euro=ms.col("i") * 0.908, tiny=ms.col("x") * 1e-9)
        stream.sink(kafka.write(dst, bootstrap=bs, key=key))
        flow.run(mode=mode)
        raw = CollectSink()
        flow = ms.Flow("raw")
        flow.source(kafka.read(dst, bootstrap=bs, bounded=True, format="bytes", metadata=("key",))).sink(raw)
        flow.run(mode="native")
        got[mode] = Counter((r["_key"].encode() if isinstance(r["_key"], str) else r["_key"], r["value"])
                            for r in raw.values)
    assert sum(got["native"].values()) == len(rows)
    assert got["microbatch"] == got["native"]


def test_conformance(bs: str, kafka: Any, topics: Any) -> None:
    """The conformance kit: splits, replay from every cut, bad-record policy, no secret, resources."""
    topic = topics(3, "conf")
    rows = [{"i": i, "k": i % 5} for i in range(300)]
    produce(bs, topic, rows, key=lambda r: str(r["k"]).encode())
    bad_topic = topics(1, "confbad")
    produce(bs, bad_topic, rows[:100] + [b"{not json"] + rows[100:200] + [None] + rows[200:])  # type: ignore[operator]
    secret = "s3cr3t-pw-" + services.unique("x")
    report = ms.testing.check_source(
        lambda: kafka.read(topic, bootstrap=bs, bounded=True, config={"sasl.password": secret}),
        expected=rows, secrets=[secret],
        make_bad=lambda policy: kafka.read(bad_topic, bootstrap=bs, bounded=True, on_error=policy), bad_records=2)
    assert "replay from every cut" in report.checks


def test_sink_conformance(bs: str, kafka: Any, topics: Any) -> None:
    made: list[str] = []

    def make() -> Any:
        t = topics(2, "sinkconf")
        made.append(t)
        return kafka.write(t, bootstrap=bs, transactional_id=services.unique("tx"), key="k")

    def read_back(sink: Any) -> list[Any]:
        o = sink.options
        msgs = kafka.committed_records(bs, o.topic, f"{o.transactional_id}-conformance")
        return [json.loads(m.value()) for m in msgs]

    report = ms.testing.check_sink(make, read_back, [{"k": str(i % 3), "i": i} for i in range(30)])
    assert "recover keeps the restored transaction and drops the rest" in report.checks


# -- event time -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_per_partition_watermarks(mode: str, bs: str, kafka: Any, topics: Any) -> None:
    """Partition 0 runs far ahead of partition 1; records in order within each partition are never
    late (the source's watermark is the minimum over its partitions)."""
    topic = topics(2, "wm")
    ahead = [{"ts": 100_000 + i * 10, "p": 0} for i in range(2_000)]
    behind = [{"ts": i * 10, "p": 1} for i in range(2_000)]
    produce(bs, topic, ahead, partition=0)
    produce(bs, topic, behind, partition=1)
    out = CollectSink()
    flow = ms.Flow("wm")
    (flow.source(kafka.read(topic, bootstrap=bs, bounded=True),
                 watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
     .key_by("p").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count()).sink(out))
    flow.run(mode=mode, max_chunk=100)
    assert sum(r["n"] for r in out.values) == 4_000


def test_metadata_and_start_at_timestamp(bs: str, kafka: Any, topics: Any) -> None:
    topic = topics(1, "ts")
    produce(bs, topic, [{"i": i} for i in range(10)], key=b"k", timestamps=[1_000 + i for i in range(10)])
    out = CollectSink()
    flow = ms.Flow("ts")
    flow.source(kafka.read(topic, bootstrap=bs, bounded=True, start=1_004,
                           metadata=("key", "timestamp", "offset", "partition", "topic", "headers"))).sink(out)
    flow.run()
    assert [r["i"] for r in out.values] == [4, 5, 6, 7, 8, 9]
    assert out.values[0] == {"i": 4, "_key": "k", "_timestamp": 1_004, "_offset": 4, "_partition": 0,
                             "_topic": topic, "_headers": {}}


# -- positions and acknowledgement ------------------------------------------------------------------


def test_acknowledge_commits_only_what_it_is_given(bs: str, kafka: Any, topics: Any) -> None:
    topic = topics(2, "ack")
    produce(bs, topic, [{"i": i} for i in range(100)], partition=0)
    produce(bs, topic, [{"i": i} for i in range(50)], partition=1)
    group = services.unique("g")
    reader = kafka.read(topic, bootstrap=bs, group=group).open(ctx())
    try:
        got = read_all(reader, want=60)
        pos = reader.snapshot()
        assert committed(bs, group, topic, 2) == [-1001, -1001]  # nothing before acknowledge()
        reader.acknowledge(pos)
        reader.acknowledge(pos)  # idempotent: nothing new to commit
        # the commit is asynchronous (it never holds the job): wait for the broker's answer
        deadline = time.monotonic() + 20
        while reader.metrics().get("commits", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reader.metrics()["commits"] == 1 and reader.metrics()["commit_failures"] == 0, reader.metrics()
        want = [pos["offsets"][f"{topic}[0]"], pos["offsets"][f"{topic}[1]"]]
        assert committed(bs, group, topic, 2) == [w if w is not None else -1001 for w in want]
        assert sum(w or 0 for w in want) == len(got)
    finally:
        reader.close()
    # start="committed" resumes there
    reader = kafka.read(topic, bootstrap=bs, group=group, start="committed", bounded=True).open(ctx())
    try:
        rest = read_all(reader)
    finally:
        reader.close()
    assert len(got) + len(rest) == 150


_FAIL_ONCE = "kafka-fail-once"


def test_checkpoint_resume_at_least_once(bs: str, kafka: Any, topics: Any, tmp_path: Path) -> None:
    """A checkpointed run that fails part-way, run again, continues from its checkpoint: nothing is
    lost, and the group's offsets never go past what a completed checkpoint covers."""
    topic = topics(2, "resume")
    n = 4_000
    produce(bs, topic, [{"i": i} for i in range(n)], key=lambda r: str(r["i"]).encode())
    group = services.unique("g")
    out_path = tmp_path / "out.jsonl"
    flag = tmp_path / "fail"
    flag.write_text("1")
    seen = [0]
    at_failure: list[list[int]] = []

    def maybe_fail(r: dict[str, Any]) -> dict[str, Any]:
        seen[0] += 1
        if seen[0] % 200 == 0:
            time.sleep(0.01)  # let checkpoints happen
        if seen[0] == 2_500 and flag.exists():
            flag.unlink()
            at_failure.append(committed(bs, group, topic, 2))
            raise RuntimeError("boom")
        return r

    def build() -> ms.Flow:
        flow = ms.Flow("resume")
        (flow.source(kafka.read(topic, bootstrap=bs, group=group, bounded=True)).map(maybe_fail)
         .sink(ms.connectors.files.write(out_path)))
        return flow

    with pytest.raises(Exception, match="boom"):
        build().run(mode="native", checkpoint_dir=str(tmp_path / "ck"), checkpoint_interval=20, max_chunk=100)
    acked = at_failure[0]
    assert 0 < sum(max(a, 0) for a in acked) < 2_500  # committed by checkpoints, behind the records processed
    seen[0] = 0
    res = build().run(mode="native", checkpoint_dir=str(tmp_path / "ck"), checkpoint_interval=20, max_chunk=100)
    assert res.checkpoints is not None and res.checkpoints.restored_from is not None
    got = [json.loads(line)["i"] for line in out_path.read_text().splitlines()]
    assert set(got) == set(range(n))  # nothing lost (at-least-once: some may repeat)
    assert sum(committed(bs, group, topic, 2)) == n  # the final checkpoint acknowledged everything


# -- bad records ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_bad_records(mode: str, bs: str, kafka: Any, topics: Any) -> None:
    topic = topics(1, "bad")
    produce(bs, topic, [{"i": 0}, b"{oops", {"i": 1}, None, b"[1, 2]", {"i": 2}], partition=0)

    def run(policy: Any, metadata: tuple[str, ...] = ("offset",)) -> tuple[CollectSink, Any]:
        out = CollectSink()
        flow = ms.Flow("bad")
        flow.source(kafka.read(topic, bootstrap=bs, bounded=True, on_error=policy, metadata=metadata)).sink(out)
        return out, flow.run(mode=mode)

    with pytest.raises(RecordError, match=rf"{topic}\[0\]@1"):
        run("fail")
    out, res = run("skip")
    assert [r["i"] for r in out.values] == [0, 1, 2]
    assert res.steps[0].extra.get("skipped") == 3  # invalid JSON, a tombstone, an array with metadata
    dead = ms.connectors.memory.write()
    out, _ = run(ms.connectors.dead_letter(dead))
    assert [d["position"] for d in dead.values] == [f"{topic}[0]@1", f"{topic}[0]@3", f"{topic}[0]@4"]
    assert dead.values[0]["raw"] == "{oops"
    # without metadata a JSON array is a record like any other
    out, _ = run("skip", ())
    assert [1, 2] in out.values


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_oversized_records(mode: str, bs: str, kafka: Any, topics: Any) -> None:
    topic = topics(1, "big")
    produce(bs, topic, [{"i": 0}, {"i": 1, "pad": "x" * 5_000}, {"i": 2}], partition=0)
    dead = ms.connectors.memory.write()
    out = CollectSink()
    flow = ms.Flow("big")
    flow.source(kafka.read(topic, bootstrap=bs, bounded=True, max_record_bytes=1_000,
                           on_error=ms.connectors.dead_letter(dead))).sink(out)
    flow.run(mode=mode)
    assert [r["i"] for r in out.values] == [0, 2]
    assert dead.values[0]["position"] == f"{topic}[0]@1" and "max_record_bytes" in dead.values[0]["error"]
    assert len(dead.values[0]["raw"]) == 1_024


def test_text_and_deserializer(bs: str, kafka: Any, topics: Any) -> None:
    topic = topics(1, "text")
    produce(bs, topic, [b"hello", b"\xff\xfe", b"world"], partition=0)
    out = CollectSink()
    flow = ms.Flow("text")
    flow.source(kafka.read(topic, bootstrap=bs, bounded=True, format="text", on_error="skip",
                           metadata=("offset",))).sink(out)
    flow.run()
    assert out.values == [{"value": "hello", "_offset": 0}, {"value": "world", "_offset": 2}]

    def upper(b: bytes) -> str:
        return b.decode("ascii").upper()

    dead = ms.connectors.memory.write()
    out = CollectSink()
    flow = ms.Flow("deser")
    flow.source(kafka.read(topic, bootstrap=bs, bounded=True, deserializer=upper,
                           on_error=ms.connectors.dead_letter(dead))).sink(out)
    flow.run()
    assert out.values == ["HELLO", "WORLD"]
    assert "deserializer raised UnicodeDecodeError" in dead.values[0]["error"]


# -- errors, secrets, options ------------------------------------------------------------------------------


def test_missing_topic_says_how_to_create_it(bs: str, kafka: Any) -> None:
    flow = ms.Flow("missing")
    flow.source(kafka.read("no_such_topic_here", bootstrap=bs)).sink(CollectSink())
    with pytest.raises(ConnectorError, match="does not exist") as err:
        flow.run()
    assert "create_topic" in str(err.value) and "cleanup.policy" in str(err.value)
    with pytest.raises(ConnectorError, match="does not exist"):
        kafka.write("no_such_topic_here", bootstrap=bs).open("s")


def test_bad_options_fail_when_built(kafka: Any) -> None:
    with pytest.raises(ms.errors.ConfigError, match="start"):
        kafka.read("t", bootstrap="127.0.0.1:1", start="yesterday")
    with pytest.raises(ms.errors.ConfigError, match="group="):
        kafka.read("t", bootstrap="127.0.0.1:1", start="committed")
    with pytest.raises(ms.errors.ConfigError, match="metadata"):
        kafka.read("t", bootstrap="127.0.0.1:1", metadata=("nope",))
    with pytest.raises(ms.errors.ConfigError, match="enable.auto.commit"):
        kafka.read("t", bootstrap="127.0.0.1:1", config={"enable.auto.commit": True})
    with pytest.raises(ms.errors.ConfigError, match="transactional_id"):
        kafka.write("t", bootstrap="127.0.0.1:1", transactional_id="has space")
    with pytest.raises(ms.errors.ConfigError, match="bootstrap"):
        kafka.write("t", bootstrap="")


def test_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch, kafka: Any) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(MissingDependencyError, match=r"millstream\[kafka\]"):
        kafka.read("t", bootstrap="127.0.0.1:9092")
    with pytest.raises(MissingDependencyError, match=r"millstream\[kafka\]"):
        kafka.write("t", bootstrap="127.0.0.1:9092")


def test_secrets_never_appear(bs: str, kafka: Any, topics: Any, tmp_path: Path,
                              caplog: pytest.LogCaptureFixture) -> None:
    secret = "pw-" + services.unique("hunter2")
    topic = topics(1, "secret")
    produce(bs, topic, [{"i": i} for i in range(10)])
    caplog.set_level(logging.DEBUG)
    src = kafka.read(topic, bootstrap=bs, bounded=True, config={"sasl.password": secret})
    sink_topic = topics(1, "secretout")
    sink = kafka.write(sink_topic, bootstrap=bs, config={"sasl.password": secret}, transactional_id="sec")
    assert secret not in src.describe() + repr(src) + sink.describe() + repr(sink) + repr(src.options)
    flow = ms.Flow("secret")
    flow.source(src).sink(sink)
    flow.run(guarantee="exactly-once", checkpoint_dir=str(tmp_path / "ck"), checkpoint_interval=10)
    for f in (tmp_path / "ck").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    reader = src.open(ctx())
    try:
        read_all(reader)
        assert secret.encode() not in pickle.dumps(reader.snapshot())
    finally:
        reader.close()
    # a broker that rejects the credentials (tansu speaks no SASL): the error carries no secret
    bad = kafka.read(topic, bootstrap=bs, backoff=ms.connectors.Backoff(initial_s=0.1, max_s=0.2, budget_s=1.0),
                     config={"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                             "sasl.username": "me", "sasl.password": secret})
    flow = ms.Flow("auth")
    flow.source(bad).sink(CollectSink())
    with pytest.raises(ConnectorError) as err:
        flow.run()
    assert secret not in str(err.value)
    assert secret not in caplog.text


# -- broker outage -----------------------------------------------------------------------------------------


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[str, str, Proxy]]:
    """A private tansu that advertises a proxy's port: (bootstrap through the proxy, direct, proxy)."""
    services.need_module("confluent_kafka", "kafka")
    with services.tansu_behind_proxy(str(tmp_path)) as got:
        yield got


def test_broker_outage_is_retried_then_resumes(proxied: tuple[str, str, Proxy], kafka: Any) -> None:
    via, _direct, proxy = proxied
    topic = services.unique("outage")
    kafka.create_topic(via, topic, partitions=2)
    produce(via, topic, [{"i": i} for i in range(500)])
    reader = kafka.read(topic, bootstrap=via, backoff=ms.connectors.Backoff(0.1, 0.5, 30)).open(ctx())
    try:
        assert len(read_all(reader, want=500)) == 500
        proxy.drop()
        threading.Timer(2.0, proxy.restore).start()
        t0 = time.monotonic()
        while reader.metrics()["retries"] == 0 and time.monotonic() - t0 < 10:
            assert reader.poll(100) == []
            time.sleep(0.01)
        assert reader.metrics()["retries"] > 0  # it noticed, and waited with backoff
        assert time.monotonic() - t0 >= 1.5
        produce(via, topic, [{"i": i} for i in range(500, 800)])
        got = read_all(reader, want=300)
        assert sorted(r["i"] for r in got) == list(range(500, 800))  # nothing lost, nothing repeated
    finally:
        reader.close()


def test_broker_gone_for_good_fails_clearly(proxied: tuple[str, str, Proxy], kafka: Any) -> None:
    via, _direct, proxy = proxied
    topic = services.unique("gone")
    kafka.create_topic(via, topic, partitions=1)
    produce(via, topic, [{"i": 1}])
    flow = ms.Flow("gone")
    src = kafka.read(topic, bootstrap=via, backoff=ms.connectors.Backoff(0.1, 0.3, 1.5))
    flow.source(src).map(lambda r: (proxy.drop(), r)[1]).sink(CollectSink())
    t0 = time.monotonic()
    with pytest.raises(ConnectorError, match="still failing") as err:
        flow.run()
    assert time.monotonic() - t0 < 15
    assert "raise the retry budget" in str(err.value) or "reachable" in str(err.value)


# -- partitions added while running --------------------------------------------------------------------------


def test_new_partitions_become_splits(bs: str, kafka: Any, topics: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions that appear in a topic's metadata while the job runs become new splits, read from
    their beginning. tansu 0.6 cannot add partitions (no CreatePartitions; and librdkafka crashes when
    a topic is deleted and made again under a running consumer), so the reader is shown a 3-partition
    topic as having 1 partition until the test "adds" the other two."""
    from millstream.connectors import _kafka

    topic = topics(3, "grow")
    shown = [1]
    real = _kafka.topic_partitions

    def view(cli: Any, names: tuple[str, ...], **kw: Any) -> dict[str, list[int]]:
        return {t: ps[: shown[0]] for t, ps in real(cli, names, **kw).items()}

    monkeypatch.setattr(_kafka, "topic_partitions", view)
    produce(bs, topic, [{"i": i} for i in range(10)], partition=0)
    produce(bs, topic, [{"i": 100}], partition=2)
    reader = kafka.read(topic, bootstrap=bs, discovery_interval=0.2).open(ctx())
    try:
        assert len(read_all(reader, want=10)) == 10
        assert list(reader.splits()) == [f"{topic}[0]"]
        assert read_all(reader, timeout=0.5) == []  # partition 2 is not assigned yet
        shown[0] = 3
        got = read_all(reader, want=1, timeout=10)
        assert got == [{"i": 100}] and reader.split() == f"{topic}[2]"
        assert sorted(reader.splits()) == [f"{topic}[0]", f"{topic}[1]", f"{topic}[2]"]
        produce(bs, topic, [{"i": 101}], partition=1)
        assert read_all(reader, want=1, timeout=10) == [{"i": 101}]
    finally:
        reader.close()


def test_adding_partitions(bs: str, kafka: Any, topics: Any) -> None:
    topic = topics(1, "add")
    try:
        kafka.add_partitions(bs, topic, 2)
    except ConnectorError as exc:
        if "CreatePartitions" in exc.problem:
            pytest.skip("broker limit (tansu 0.6): no CreatePartitions; discovery is shown by "
                        "test_new_partitions_become_splits")
        raise


# -- exactly-once -----------------------------------------------------------------------------------------------


def test_read_committed_hides_aborted_transactions(bs: str, topics: Any) -> None:
    """What a Kafka broker does for exactly-once readers; tansu 0.6 does not (the kill tests below
    prove exactly-once with the marker-and-tag verifier instead)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = topics(1, "abort")
    p = Producer({"bootstrap.servers": bs, "transactional.id": services.unique("ab")})
    p.init_transactions(10)
    p.begin_transaction()
    p.produce(topic, b'{"aborted": true}')
    p.flush()
    p.abort_transaction(10)
    p.begin_transaction()
    p.produce(topic, b'{"committed": true}')
    p.commit_transaction(10)
    c = Consumer({"bootstrap.servers": bs, "group.id": "x", "isolation.level": "read_committed",
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, 0, -2)])
    values = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            break
        values.append(json.loads(m.value()))
    c.close()
    if {"aborted": True} in values:
        pytest.skip("broker limit (tansu 0.6): records of aborted transactions are visible to read_committed "
                    "readers; exactly-once output is checked with kafka.committed_records instead")
    assert values == [{"committed": True}]


def test_fenced_producer_cannot_commit(bs: str, topics: Any) -> None:
    """A run that was taken over (its transactional id initialised by the next run) must not commit.
    Kafka fails the zombie's commit; tansu 0.6 lets it time out. millstream does not rely on either:
    the checkpoint coordinator checks that the run still owns its checkpoint directory before every
    sink commit (tests/test_checkpoint_ownership.py)."""
    from confluent_kafka import KafkaException, Producer

    topic = topics(1, "fence")
    txid = services.unique("fence")
    zombie = Producer({"bootstrap.servers": bs, "transactional.id": txid})
    zombie.init_transactions(10)
    zombie.begin_transaction()
    zombie.produce(topic, b'{"zombie": true}')
    zombie.flush(10)
    Producer({"bootstrap.servers": bs, "transactional.id": txid}).init_transactions(10)
    try:
        zombie.commit_transaction(2)
    except KafkaException as exc:
        err = exc.args[0]
        if err.name() == "_TIMED_OUT":
            pytest.skip("broker limit (tansu 0.6): a fenced producer's commit times out instead of failing; "
                        "millstream fences a taken-over run by its checkpoint directory instead")
        assert err.fatal() or err.name() in ("_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"), err
    else:
        pytest.fail("a fenced producer committed its transaction")


def test_a_lost_transaction_marker_refuses_to_guess(bs: str, kafka: Any, topics: Any) -> None:
    """Kafka drops a group's committed offsets offsets.retention.minutes (7 days by default) after the
    last commit: a job stopped that long finds no transaction marker on restore. Whether the restored
    checkpoint's transaction was committed is then unknown, so the sink refuses (producing it again
    could duplicate it) and says why. A transactional id never used before is what an expired group
    looks like to the sink."""
    topic = topics(1, "marker")
    first = kafka.write(topic, bootstrap=bs, transactional_id=services.unique("tx")).open("s")
    try:
        first.recover([])  # a fresh start commits a marker
        first.begin(checkpointed=True)
        first.write([{"i": i} for i in range(5)], None)
        handle = first.pre_commit(1)  # the checkpoint holds the transaction; the run dies before Kafka's commit
    finally:
        first.abandon()
    assert handle and handle["tag"] is not None
    expired = kafka.write(topic, bootstrap=bs, transactional_id=services.unique("tx")).open("s")
    try:
        with pytest.raises(ConnectorError, match="transaction marker") as err:
            expired.recover([handle])
        assert "offsets.retention.minutes" in str(err.value)
        expired.recover([])  # a fresh start (a new checkpoint directory) needs no marker
    finally:
        expired.close()


def test_the_marker_tells_output_committed_beyond_a_checkpoint(bs: str, kafka: Any, topics: Any) -> None:
    """A checkpoint directory restored from an older copy: the marker names a later checkpoint's
    transaction, which the coordinator refuses under exactly-once (committed_beyond)."""
    topic, txid = topics(1, "beyond"), services.unique("tx")
    w = kafka.write(topic, bootstrap=bs, transactional_id=txid).open("s")
    try:
        w.recover([])
        for ck in (1, 2):
            w.begin(checkpointed=True)
            w.write([{"ck": ck}], None)
            w.commit(w.pre_commit(ck))
    finally:
        w.close()
    again = kafka.write(topic, bootstrap=bs, transactional_id=txid).open("s")
    try:
        assert again.committed_beyond(2) == []
        (said,) = again.committed_beyond(1)
        assert "checkpoint 2" in said and "millstream-tx-" in said
    finally:
        again.abandon()


def test_start_latest(bs: str, kafka: Any, topics: Any) -> None:
    topic = topics(1, "latest")
    produce(bs, topic, [{"old": i} for i in range(5)])
    reader = kafka.read(topic, bootstrap=bs, start="latest").open(ctx())
    try:
        before = read_all(reader, timeout=1.5)
        produce(bs, topic, [{"new": i} for i in range(3)])
        got = read_all(reader, want=3, timeout=10)
    finally:
        reader.close()
    if before:
        assert before == [{"old": i} for i in range(1, 5)]
        pytest.skip("broker limit (tansu 0.6): ListOffsets(latest) answers the last batch's base offset + 1, so "
                    "'latest' starts inside the last batch")
    assert got == [{"new": i} for i in range(3)]


JOB = '''
import millstream as ms
from millstream.connectors import kafka

def build(params):
    flow = ms.Flow("kafka-eo")
    src = flow.source(kafka.read(params["input"], bootstrap=params["bootstrap"], bounded=True, group=params["group"]),
                      watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
    slow = float(params.get("slow", 0))
    def pace(r):
        if slow and r["id"] % 100 == 0:
            import time; time.sleep(slow)
        return r
    armed = []
    def arm(row):
        # a failpoint armed once the first result is written: the checkpoint it fires at has output
        if params.get("arm") and not armed:
            from millstream._checkpoint._failpoints import arm as arm_failpoint
            arm_failpoint(params["arm"])
            armed.append(True)
        return row
    (src.map(pace).key_by("key").window(ms.windows.tumbling(1_000))
        .aggregate(n=ms.agg.count(), ids=ms.agg.sum("id")).map(arm)
        .sink(kafka.write(params["output"], bootstrap=params["bootstrap"], key="key",
                          transactional_id=params["txid"])))
    return flow
'''


def _expected_windows(n: int, keys: int) -> Counter[str]:
    acc: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        k, ts = i % keys, i * 7
        w = ts // 1_000 * 1_000
        a = acc.setdefault((k, w), [0, 0])
        a[0] += 1
        a[1] += i
    return Counter(json.dumps({"key": k, "window_start": w, "window_end": w + 1_000, "n": a[0], "ids": a[1]},
                              sort_keys=True) for (k, w), a in acc.items())


def _run_job(tmp: Path, params: dict[str, Any], ckpt: Path, failpoints: str | None = None,
             kill_after: float | None = None, timeout: float = 120) -> int:
    env = dict(os.environ)
    env.pop("MILLSTREAM_FAILPOINTS", None)
    if failpoints:
        env["MILLSTREAM_FAILPOINTS"] = failpoints
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(REPO, "src"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "millstream.cli", "run", str(tmp / "job.py"), "-q", "--progress", "off",
           "--mode", params.get("mode", "native"), "--guarantee", "exactly-once", "--checkpoint-dir", str(ckpt),
           "--checkpoint-interval", "40", "--max-chunk", "100"]
    for k, v in params.items():
        if k != "mode":
            cmd += ["--set", f"{k}={v}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
    return proc.returncode


@pytest.mark.parametrize("fault", ["ckpt.before_commit=kill", "sink.commit=kill", "random"])
def test_kill_exactly_once(fault: str, bs: str, kafka: Any, topics: Any, tmp_path: Path) -> None:
    """Kafka (4 partitions) -> keyed windows -> Kafka transactional sink, killed at a failpoint (the
    first checkpoint with output durable, its Kafka transaction not committed) or at a random moment
    (in micro-batch mode), then restarted
    until it finishes: the committed output equals the windows computed here, each once."""
    n, keys = 6_000, 7
    src = topics(4, "eoin")
    dst = topics(2, "eoout")
    produce(bs, src, [{"id": i, "key": i % keys, "ts": i * 7} for i in range(n)], key=lambda r: str(r["key"]).encode())
    (tmp_path / "job.py").write_text(JOB)
    txid = services.unique("eo")
    params = {"input": src, "output": dst, "bootstrap": bs, "group": services.unique("g"), "txid": txid,
              "slow": "0.03" if fault == "random" else "0.004",
              "mode": "microbatch" if fault == "random" else "native"}
    ckpt = tmp_path / "ck"
    rnd = random.Random(fault)
    codes = []
    for start in range(8):
        if fault == "random":
            code = _run_job(tmp_path, params, ckpt, kill_after=rnd.uniform(1.2, 2.2) if start < 2 else None)
        else:
            code = _run_job(tmp_path, {**params, "arm": fault if start == 0 else ""}, ckpt)
        codes.append(code)
        if code == 0:
            break
    assert codes[0] == -signal.SIGKILL and codes[-1] == 0, codes
    msgs = kafka.committed_records(bs, dst, f"{txid}-{dst}")
    got = Counter(json.dumps(json.loads(m.value()), sort_keys=True) for m in msgs)
    assert got == _expected_windows(n, keys)
    if fault != "random":
        # the crash came after a checkpoint with output was durable and its transaction flushed, before the Kafka
        # commit: that attempt stays in the log (aborted, and shown by tansu), and recovery produced
        # its records again and committed them; the verifier counted the second copy only
        every = CollectSink()
        flow = ms.Flow("all")
        flow.source(kafka.read(dst, bootstrap=bs, bounded=True, config={"isolation.level": "read_uncommitted"})
                    ).sink(every)
        flow.run(mode="native")
        assert len(every.values) > len(msgs), (codes, len(every.values))
    # the group's offsets were committed by the last checkpoint: the whole input
    assert sum(committed(bs, params["group"], src, 4)) == n


# -- the example of docs/connectors/kafka.md --------------------------------------------------------------------


def test_docs_example(bs: str, kafka: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (Path(REPO) / "docs" / "connectors" / "kafka.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'BOOTSTRAP = "127.0.0.1:9092"' in code
    code = code.replace('BOOTSTRAP = "127.0.0.1:9092"', f"BOOTSTRAP = {bs!r}")
    monkeypatch.chdir(tmp_path)
    kafka.create_topic(bs, "payments", partitions=4)
    try:
        payments = [{"card": f"c{i % 3}", "amount": i, "ts": i * 1_000} for i in range(300)]
        produce(bs, "payments", payments, key=lambda r: r["card"].encode())
        exec(compile(code, "docs/connectors/kafka.md", "exec"), {})  # noqa: S102 - our own docs
        msgs = kafka.committed_records(bs, "card-totals", "card-totals-card-totals")
        got = sorted((json.loads(m.value())["card"], json.loads(m.value())["window_start"],
                      json.loads(m.value())["total"]) for m in msgs)
        want: dict[tuple[str, int], int] = {}
        for p in payments:
            k = (p["card"], p["ts"] // 60_000 * 60_000)
            want[k] = want.get(k, 0) + p["amount"]
        assert got == sorted((c, w, t) for (c, w), t in want.items())
    finally:
        kafka.delete_topic(bs, "payments")
        kafka.delete_topic(bs, "card-totals")


def test_known_schema_frames_equal_inferred_ones() -> None:
    """Micro-batch mode reads a split's batches with the columns of its previous batch when they fit
    exactly; when it does, the frame equals the one schema inference makes (values, types, column
    order), whatever the batch holds (no broker needed)."""
    pytest.importorskip("polars")
    from millstream.connectors._files_read import _ndjson_frame
    from millstream.connectors._kafka import _CACHEABLE, _known_schema_frame

    rnd = random.Random(7)
    pool: list[Any] = [1, -5, 2**40, "x", "5", 'a":"b', "", True, False, None, 1.5, 2.0, [1, 2], {"n": 1}]
    fast = 0
    for _ in range(1_500):
        fields = rnd.sample(["a", "b", "c", "d"], rnd.randint(1, 3))
        kinds = {f: rnd.choice([1, "s", True]) for f in fields}

        def value(f: str) -> Any:
            if rnd.random() < 0.05:
                return rnd.choice(pool)
            k = kinds[f]
            return rnd.randint(-9, 9) if k == 1 else (rnd.choice(["u", "v", "w x"]) if k == "s" else rnd.random() < .5)

        def batch() -> list[bytes]:
            out = []
            for _ in range(rnd.randint(1, 6)):
                rec = {f: value(f) for f in fields if rnd.random() > 0.1}
                if rnd.random() < 0.05:
                    rec["extra"] = 1
                dumps = json.dumps if rnd.random() < 0.3 else (lambda r: json.dumps(r, separators=(",", ":")))
                out.append(dumps(rec).encode())
            return out

        prev = _ndjson_frame(batch())
        if prev is None or not prev.width or not all(str(t) in _CACHEABLE for t in prev.schema.dtypes()):
            continue
        values = batch()
        got = _known_schema_frame(values, b"\n".join(values), prev.schema)
        if got is None:
            continue
        fast += 1
        want = _ndjson_frame(values)
        assert want is not None and got.equals(want) and got.schema == want.schema, (values, got, want)
    assert fast > 100  # the fast path was taken often enough to mean something


def test_bounded_read_reports_progress_in_offsets(bs: str, kafka: Any, topics: Any) -> None:
    """``progress()`` of a bounded read (the terminal's percentage and ETA): offsets consumed over
    offsets to consume, rising to the total at the end; None for an unbounded read."""
    from millstream._clock import SystemClock

    topic = topics(2, "progress")
    produce(bs, topic, [{"i": i} for i in range(600)], partition=0)
    produce(bs, topic, [{"i": i} for i in range(400)], partition=1)
    ctx = SourceContext(step="s", clock=SystemClock(), policy="fail")
    unbounded = kafka.read(topic, bootstrap=bs).open(ctx)
    try:
        unbounded.poll(10)
        assert unbounded.progress() is None
    finally:
        unbounded.close()
    reader = kafka.read(topic, bootstrap=bs, bounded=True).open(ctx)
    seen: list[tuple[int, int]] = []
    n = 0
    try:
        while (got := reader.poll(100)) is not None:
            n += len(got)
            p = reader.progress()
            if p is not None:
                seen.append(p)
                assert p[1] == 1_000 and 0 <= p[0] <= n  # never ahead of what was handed out
        assert reader.progress() == (1_000, 1_000)
    finally:
        reader.close()
    assert n == 1_000
    assert any(0 < d < 1_000 for d, _ in seen)  # partway through
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
