"""Poison messages in a Kafka topic, end to end (issue 9, section 4; RELIABILITY.md F8).

A 4-partition topic holds good records and, at fixed offsets of every partition, bad ones: invalid
JSON, bytes that are not UTF-8, JSON values that are not objects (the job asks for metadata, so
those are bad records), a tombstone (no value), an oversized value (beyond ``max_record_bytes``),
and records of the wrong types (an event time that is a word, or null). Each must follow the
source's error policy with ``topic[partition]@offset`` as its position: with a dead-letter sink,
exactly the injected records arrive there, each once, at their positions; with ``"skip"`` they
are counted; with ``"fail"`` the job stops naming one of them. The windows of the good records
equal a plain-Python computation. A checkpointed exactly-once run with a transactional dead-letter
sink, killed and restarted, still dead-letters each bad record exactly once.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration import services

import millstream as ms
from millstream.errors import RecordError
from millstream.testing import CollectSink

pytestmark = [pytest.mark.integration]
PARTITIONS, GOOD, KEYS, MAX_BYTES = 4, 150, 5, 2_048

#: (seq within the partition where it goes, what it is, the raw value)
BAD: list[tuple[int, str, Any]] = [
    (3, "invalid JSON", b'{"id": 1, "key": '),
    (17, "not UTF-8", b'\xff\xfe{"id": 2}'),
    (40, "an array", b"[1, 2, 3]"),
    (41, "a number", b"42"),
    (77, "a tombstone", None),
    (90, "oversized", json.dumps({"id": -1, "key": 0, "ts": 0, "pad": "x" * 3_000}).encode()),
    (120, "event time is a word", json.dumps({"id": -2, "key": 1, "ts": "yesterday"}).encode()),
    (133, "event time is null", json.dumps({"id": -3, "key": 2, "ts": None}).encode()),
]


def good(p: int, s: int) -> dict[str, Any]:
    i = p * 10_000 + s
    return {"id": i, "key": i % KEYS, "ts": s * 10}


def layout(p: int) -> list[tuple[bytes | None, dict[str, Any] | None]]:
    """Partition p in offset order: (raw value, the good record or None when bad)."""
    out: list[tuple[bytes | None, dict[str, Any] | None]] = []
    bad = {at: raw for at, _, raw in BAD}
    s = 0
    for offset in range(GOOD + len(BAD)):
        if offset in bad:
            out.append((bad[offset], None))
        else:
            r = good(p, s)
            s += 1
            out.append((json.dumps(r).encode(), r))
    return out


def expected_windows() -> Counter[str]:
    acc: dict[tuple[int, int], list[int]] = {}
    for p in range(PARTITIONS):
        for _raw, r in layout(p):
            if r is not None:
                a = acc.setdefault((r["key"], r["ts"] // 1_000 * 1_000), [0, 0])
                a[0] += 1
                a[1] += r["id"]
    return Counter(json.dumps({"key": k, "window_start": w, "n": a[0], "ids": a[1]}, sort_keys=True)
                   for (k, w), a in acc.items())


def windows(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps({f: r[f] for f in ("key", "window_start", "n", "ids")}, sort_keys=True) for r in rows)


@pytest.fixture(scope="module")
def poisoned(kafka_broker: services.Broker) -> Iterator[tuple[str, str, set[str]]]:
    """(bootstrap, topic, the positions of the bad records)."""
    services.need_module("confluent_kafka", "kafka")
    from confluent_kafka import Producer

    from millstream.connectors import kafka

    bs = kafka_broker.bootstrap
    topic = services.unique("poison")
    kafka.create_topic(bs, topic, partitions=PARTITIONS)
    prod = Producer({"bootstrap.servers": bs, "linger.ms": 5, "message.max.bytes": 100_000})
    positions = set()
    for p in range(PARTITIONS):
        for offset, (raw, r) in enumerate(layout(p)):
            prod.produce(topic, raw, partition=p)
            if r is None:
                positions.add(f"{topic}[{p}]@{offset}")
    assert prod.flush(30) == 0
    try:
        yield bs, topic, positions
    finally:
        kafka.delete_topic(bs, topic)


def _flow(bs: str, topic: str, policy: Any, out: Any) -> ms.Flow:
    from millstream.connectors import kafka

    flow = ms.Flow("poison")
    src = kafka.read(topic, bootstrap=bs, bounded=True, on_error=policy, metadata=("partition", "offset"),
                     max_record_bytes=MAX_BYTES)
    (flow.source(src, watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
     .key_by("key").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"))
     .sink(out))
    return flow


def test_poison_goes_to_the_dead_letter_sink(exec_mode: str, poisoned: tuple[str, str, set[str]]) -> None:
    bs, topic, positions = poisoned
    dead = ms.connectors.memory.write()
    out = CollectSink()
    result = _flow(bs, topic, ms.connectors.dead_letter(dead), out).run(mode=exec_mode)
    got = Counter(d["position"] for d in dead.values)
    assert set(got) == positions and max(got.values()) == 1, got  # every bad record, each once, nothing else
    assert len(dead.values) == len(BAD) * PARTITIONS
    assert result.steps[0].extra.get("dead_lettered") == len(BAD) * PARTITIONS
    assert all(d["error"] for d in dead.values)
    assert windows(out.values) == expected_windows()  # the good records, untouched


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_poison_skipped_is_counted(mode: str, poisoned: tuple[str, str, set[str]]) -> None:
    bs, topic, _positions = poisoned
    out = CollectSink()
    result = _flow(bs, topic, "skip", out).run(mode=mode)
    assert result.steps[0].extra.get("skipped") == len(BAD) * PARTITIONS
    assert windows(out.values) == expected_windows()


def test_poison_fails_naming_its_position(poisoned: tuple[str, str, set[str]]) -> None:
    bs, topic, positions = poisoned
    with pytest.raises(RecordError) as err:
        _flow(bs, topic, "fail", CollectSink()).run(mode="native")
    named = re.findall(rf"{re.escape(topic)}\[\d\]@\d+", str(err.value))
    assert named and named[0] in positions, str(err.value)


JOB = '''
import millstream as ms
from millstream.connectors import kafka

def build(params):
    flow = ms.Flow("poison-eo")
    src = kafka.read(params["topic"], bootstrap=params["bootstrap"], bounded=True, metadata=("partition", "offset"),
                     max_record_bytes=int(params["max_bytes"]),
                     on_error=ms.connectors.dead_letter(ms.connectors.files.write(params["dlq"], transactional=True)))
    seen = [0]
    def pace(r):
        seen[0] += 1
        if seen[0] % 5 == 0:  # seconds of sleeps in all: a kill always lands while the first run works
            import time; time.sleep(0.02)
        return r
    (flow.source(src, watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts")).map(pace)
     .key_by("key").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"))
     .sink(ms.connectors.files.write(params["out"], transactional=True)))
    return flow
'''


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_poison_under_kills_is_dead_lettered_exactly_once(mode: str, poisoned: tuple[str, str, set[str]],
                                                          tmp_path: Path) -> None:
    bs, topic, positions = poisoned
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
    import harness

    job = tmp_path / "job.py"
    job.write_text(JOB)
    dlq, out = tmp_path / "dlq", tmp_path / "out"
    cmd = [sys.executable, "-m", "millstream.cli", "run", str(job), "-q", "--progress", "off", "--mode", mode,
           "--guarantee", "exactly-once", "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-interval", "50",
           "--set", f"topic={topic}", "--set", f"bootstrap={bs}", "--set", f"dlq={dlq}", "--set", f"out={out}",
           "--set", f"max_bytes={MAX_BYTES}"]
    trial = harness.Trial("exactly-once", pipeline="poison", seed=7 if mode == "native" else 8, kills=2,
                          kill_window_s=(0.6, 1.4), mode=mode)

    def dead_positions() -> Counter[str]:
        return Counter(json.loads(r)["position"] for r in harness.read_rows(str(dlq)))

    def after_kill(anomalies: list[str]) -> None:
        seen = dead_positions()
        if any(n > 1 for n in seen.values()) or not set(seen) <= positions:
            anomalies.append(f"dead letters duplicated or foreign after a kill: {seen}")

    anomalies, _starts = harness.kill_until_done(trial, cmd, harness._env, after_kill, timeout_s=120)
    assert anomalies == [], anomalies
    assert sum(h["killed"] for h in trial.history) >= 1, trial.history
    seen = dead_positions()
    assert set(seen) == positions and max(seen.values()) == 1, seen
    assert windows([json.loads(r) for r in harness.read_rows(str(out))]) == expected_windows()


@pytest.mark.parametrize("mode", ["native", "microbatch", "batch"])
def test_a_wrong_typed_field_changes_no_other_record(mode: str, kafka_broker: services.Broker) -> None:
    """A record whose key is a string where the others' are integers is a valid record, keyed apart;
    the other records must keep their integer keys, in every mode."""
    from confluent_kafka import Producer

    from millstream.connectors import kafka

    bs = kafka_broker.bootstrap
    topic = services.unique("mixed")
    kafka.create_topic(bs, topic, partitions=1)
    try:
        prod = Producer({"bootstrap.servers": bs})
        for r in [{"id": 1, "key": 1, "ts": 10}, {"id": 2, "key": "x", "ts": 20}, {"id": 3, "key": 1, "ts": 30}]:
            prod.produce(topic, json.dumps(r).encode(), partition=0)
        assert prod.flush(30) == 0
        out = CollectSink()
        flow = ms.Flow("mixed")
        (flow.source(kafka.read(topic, bootstrap=bs, bounded=True),
                     watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
         .key_by("key").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count()).sink(out))
        flow.run(mode=mode)
        assert sorted((repr(r["key"]), r["n"]) for r in out.values) == [("'x'", 1), ("1", 2)], out.values
    finally:
        kafka.delete_topic(bs, topic)
