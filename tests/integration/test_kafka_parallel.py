"""Kafka partitions as logical splits, read by the workers that own them (issue 11 §2), against a
private tansu (see conftest.py; skipped without it, failed under MILLSTREAM_REQUIRE_SERVICES=1).

tansu 0.6 limits met here (SERVICES.md): ListOffsets(latest) is wrong, so bounded reads end at partition
EOF and the first fetch's high watermark; it cannot add partitions (no CreatePartitions), so a topic
"growing" is shown by declaring fewer partitions than it has (``partitions=``) or by a reader shown
part of the metadata; a consumer-group join takes about half of ``session.timeout.ms`` (the source
never joins: it assigns).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration import services
from tests.integration.test_kafka import committed, ctx, read_all
from tests.test_parallel import _descendants, _shm

import millstream as ms
from millstream.errors import ConfigError, ConnectorError
from millstream.testing import CollectSink

pytestmark = [pytest.mark.integration]

PARTITIONS = 4
N = 8_000
KEYS = 13
BOUND = 500
#: partition p's event times start p * AHEAD ms later: a watermark mixed over partitions would make the
#: records of the partitions behind late
AHEAD = 5_000


@pytest.fixture(scope="module")
def kafka() -> Any:
    services.need_module("confluent_kafka", "kafka")
    from millstream.connectors import kafka

    return kafka


@pytest.fixture(scope="module")
def bs(kafka_broker: services.Broker) -> str:
    return kafka_broker.bootstrap


def _record(i: int) -> dict[str, Any]:
    p = i % PARTITIONS
    return {"i": i, "k": f"c{i % KEYS}", "v": i % 7, "ts": p * AHEAD + (i // PARTITIONS) * 10}


def _produce(bs: str, topic: str, records: list[dict[str, Any]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bs, "linger.ms": 5})
    for r in records:
        producer.produce(topic, json.dumps(r).encode(), key=r["k"].encode(), partition=r["i"] % PARTITIONS)
    producer.flush()


@pytest.fixture(scope="module")
def keyed(bs: str, kafka: Any) -> Iterator[str]:
    """A 4-partition topic of N keyed records, in event-time order within each partition (partition p
    ahead of partition p - 1 by AHEAD ms)."""
    topic = services.unique("par")
    kafka.create_topic(bs, topic, partitions=PARTITIONS)
    _produce(bs, topic, [_record(i) for i in range(N)])
    yield topic
    kafka.delete_topic(bs, topic)


@pytest.fixture
def clean() -> Iterator[None]:
    """No worker process and nothing in /dev/shm left behind (the session's tansu is not a worker)."""
    before, before_shm = _descendants(os.getpid()), _shm()
    yield
    deadline = time.monotonic() + 5
    while _descendants(os.getpid()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _descendants(os.getpid()) - before == set()
    assert _shm() - before_shm == set()


def _windows(records: list[dict[str, Any]]) -> Counter[str]:
    """The plain-Python oracle: count and sum of v per key and 1 s tumbling window."""
    acc: dict[tuple[str, int], list[int]] = {}
    for r in records:
        a = acc.setdefault((r["k"], r["ts"] // 1_000 * 1_000), [0, 0])
        a[0] += 1
        a[1] += r["v"]
    return Counter(json.dumps([k, s, n, t]) for (k, s), (n, t) in acc.items())


def _rows(values: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps([r["k"], r["window_start"], r["n"], r["total"]]) for r in values)


def _flow(kafka: Any, bs: str, topic: str, **read: Any) -> tuple[ms.Flow, CollectSink, CollectSink, CollectSink]:
    """Keyed 1 s windows over the topic, their late records, and (partition, offset, pid) of every record."""
    flow, out, late, where = ms.Flow("kp"), CollectSink(), CollectSink("late"), CollectSink("where")
    src = flow.source(kafka.read(topic, bootstrap=bs, bounded=True, metadata=("partition", "offset"),
                                 **{"partitions": "auto", **read}),
                      watermark=ms.WatermarkStrategy.bounded(BOUND, timestamp="ts"))
    src.map(lambda r: {"p": r["_partition"], "o": r["_offset"], "pid": os.getpid()}).sink(where)
    counts = src.key_by("k").window(ms.windows.tumbling(1_000)).aggregate(n=ms.agg.count(), total=ms.agg.sum("v"))
    counts.sink(out)
    counts.late().sink(late)
    return flow, out, late, where


def _pids(where: CollectSink) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for r in where.values:
        out.setdefault(r["p"], set()).add(r["pid"])
    return out


# -- splits and workers -----------------------------------------------------------------------------


def test_the_partitions_are_the_splits(kafka: Any, bs: str, keyed: str) -> None:
    """A metadata request when the flow is compiled gives one split per partition (no record read);
    ``partitions=`` declares them without the broker."""
    assert kafka.read(keyed, bootstrap=bs).logical_splits() is None  # by default one split, one consumer
    splits = kafka.read(keyed, bootstrap=bs, partitions="auto").logical_splits()
    assert [s.split.home for s in splits] == [(keyed, p) for p in range(PARTITIONS)]
    assert [s.describe().endswith(f"partition {keyed}[{p}])") for p, s in enumerate(splits)] == [True] * PARTITIONS
    assert all(s.logical_splits() is None for s in splits)  # a split is not split again
    nowhere = f"127.0.0.1:{services.free_port()}"
    declared = kafka.read(["a", "b"], bootstrap=nowhere, partitions={"a": 2, "b": 3}).logical_splits()
    assert [s.split.home for s in declared] == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]
    with pytest.raises(ConnectorError, match=r"partitions=N"):
        kafka.read("a", bootstrap=nowhere, backoff=ms.connectors.Backoff(budget_s=0.3),
                   partitions="auto").logical_splits()
    with pytest.raises(ConfigError, match="partition count"):
        kafka.read(["a", "b"], bootstrap=nowhere, partitions={"a": 2})


def test_partitions_are_read_by_the_workers_that_own_them(kafka: Any, bs: str, keyed: str, clean: None) -> None:
    """Keyed windows over a 4-partition topic at parallelism 1, 2 and 3 equal a plain-Python computation,
    and each partition is read in the process of the worker whose split range holds it (worker 0 is
    this process): p2 reads partitions 0-1 here and 2-3 in worker 1; p3 reads 0-1, 2, 3."""
    want = _windows([_record(i) for i in range(N)])
    expect = {1: [[0, 1, 2, 3]], 2: [[0, 1], [2, 3]], 3: [[0, 1], [2], [3]]}
    for p, groups in expect.items():
        flow, out, late, where = _flow(kafka, bs, keyed)
        result = flow.run(mode="native", parallelism=p)
        assert result.ok and late.values == [] and result.total("late") == 0
        assert _rows(out.values) == want, p
        assert sorted((r["p"], r["o"]) for r in where.values) == sorted(
            (i % PARTITIONS, i // PARTITIONS) for i in range(N))  # each record once
        pids = _pids(where)
        assert all(len(v) == 1 for v in pids.values()), pids
        by_worker = [{pids[q].copy().pop() for q in g} for g in groups]
        assert all(len(s) == 1 for s in by_worker), (p, pids)
        workers = [s.pop() for s in by_worker]
        assert workers[0] == os.getpid() and len(set(workers)) == p, (p, pids)


def test_lateness_per_partition_is_the_same_at_p1_and_p2(kafka: Any, bs: str, clean: None) -> None:
    """Partition p runs p * 5 s ahead of partition 0 (in order within each), and a few records of each
    partition are 3 s behind their partition's time (beyond the 500 ms bound): exactly those are late,
    at parallelism 1 and 2 alike (each partition has its own watermark; splits and workers aligned)."""
    topic = services.unique("late")
    kafka.create_topic(bs, topic, partitions=PARTITIONS)
    try:
        records = [_record(i) for i in range(N // 2)]
        behind = set(range(400, N // 2, 53))
        for i in behind:
            records[i] = {**records[i], "ts": records[i]["ts"] - 3_000}
        _produce(bs, topic, records)
        on_time = [r for i, r in enumerate(records) if i not in behind]
        got = {}
        for p in (1, 2):
            flow, out, late, _ = _flow(kafka, bs, topic)
            assert flow.run(mode="native", parallelism=p).ok
            got[p] = (_rows(out.values), sorted(r["i"] for r in late.values))
        assert got[1][1] == sorted(behind)
        assert got[1][0] == _windows(on_time)
        assert got[2] == got[1]
    finally:
        kafka.delete_topic(bs, topic)


# -- checkpoints, rescaling, the consumer group -------------------------------------------------------------


def _resume_flow(kafka: Any, bs: str, topic: str, group: str, out_path: Path, seen_dir: Path, flag: Path,
                 fail_at: int) -> ms.Flow:
    seen = [0]
    main = os.getpid()

    def step(r: dict[str, Any]) -> dict[str, Any]:
        seen[0] += 1
        if seen[0] % 200 == 0:
            time.sleep(0.01)  # let checkpoints happen
        # worker 1 fails (worker 0, this process, started first and has read more by then)
        if seen[0] == fail_at and os.getpid() != main and flag.exists():
            flag.unlink()
            raise RuntimeError("boom")
        with open(seen_dir / f"{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps([r["_partition"], r["_offset"]]) + "\n")
        return {"i": r["i"], "p": r["_partition"]}

    flow = ms.Flow("resume")
    (flow.source(kafka.read(topic, bootstrap=bs, group=group, bounded=True, metadata=("partition", "offset"),
                            partitions="auto"))
     .map(step).sink(ms.connectors.files.write(out_path)))
    return flow


def test_a_checkpoint_at_p2_resumes_at_p3_losing_nothing(kafka: Any, bs: str, keyed: str, tmp_path: Path,
                                                         clean: None) -> None:
    """At-least-once: a job at parallelism 2 fails part-way (in worker 1); run again at parallelism 3 it
    resumes every partition at its checkpointed offset (read from there to the end once, not from the
    start), and nothing is lost."""
    group = services.unique("g")
    out_path, ck, flag = tmp_path / "out.jsonl", str(tmp_path / "ck"), tmp_path / "fail"
    first, second = tmp_path / "seen1", tmp_path / "seen2"
    first.mkdir()
    second.mkdir()
    flag.write_text("1")
    with pytest.raises(Exception, match="boom"):
        _resume_flow(kafka, bs, keyed, group, out_path, first, flag, 1_500).run(
            mode="native", parallelism=2, checkpoint_dir=ck, checkpoint_interval=20, max_chunk=100,
            guarantee="at-least-once")
    res = _resume_flow(kafka, bs, keyed, group, out_path, second, flag, 1_500).run(
        mode="native", parallelism=3, checkpoint_dir=ck, checkpoint_interval=20, max_chunk=100,
        guarantee="at-least-once")
    assert res.ok and res.checkpoints is not None and res.checkpoints.restored_from is not None
    got = [json.loads(line)["i"] for line in out_path.read_text().splitlines()]
    assert set(got) == set(range(N))  # nothing lost
    reread: dict[int, list[int]] = {}
    for f in second.iterdir():
        for line in f.read_text().splitlines():
            p, o = json.loads(line)
            reread.setdefault(p, []).append(o)
    per = N // PARTITIONS
    assert sorted(reread) == list(range(PARTITIONS))
    for p, offsets in reread.items():  # each partition from its checkpointed offset on, once, to its end
        start = min(offsets)
        assert start > 0 and sorted(offsets) == list(range(start, per)), (p, start, len(offsets))
    assert res.records_read == sum(len(o) for o in reread.values()) < N
    assert len({f.name for f in second.iterdir()}) == 3  # three processes read at p3
    # worker 0's partitions: offsets of completed checkpoints committed to the group, never past the end
    # (the rest, and the final checkpoint's, is test_every_worker_commits_its_partitions_to_the_group)
    ends = committed(bs, group, keyed, PARTITIONS)
    assert all(0 < e <= per for e in ends[:2]), ends


def test_every_worker_commits_its_partitions_to_the_group(kafka: Any, bs: str, keyed: str, tmp_path: Path,
                                                          clean: None) -> None:
    group = services.unique("g")
    flow = ms.Flow("commit")
    flow.source(kafka.read(keyed, bootstrap=bs, group=group, bounded=True, partitions="auto")).sink(CollectSink())
    assert flow.run(mode="native", parallelism=2, guarantee="at-least-once", checkpoint_dir=str(tmp_path)).ok
    assert committed(bs, group, keyed, PARTITIONS) == [N // PARTITIONS] * PARTITIONS


# -- partitions beyond the layout (added to the topic later) ---------------------------------------------


def test_a_split_reads_the_partitions_added_beyond_the_layout(kafka: Any, bs: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions beyond the layout belong to the split of partition ``p % count``, which finds them by
    discovery while it runs (tansu cannot add partitions: its reader is shown a 4-partition topic as
    having 2 partitions, then 4)."""
    from millstream.connectors import _kafka

    topic = services.unique("grow")
    kafka.create_topic(bs, topic, partitions=4)
    try:
        for p in range(4):
            from tests.integration.test_kafka import produce

            produce(bs, topic, [{"p": p, "j": j} for j in range(5)], partition=p)
        shown = [2]
        real = _kafka.topic_partitions

        def view(cli: Any, names: tuple[str, ...], **kw: Any) -> dict[str, list[int]]:
            return {t: ps[: shown[0]] for t, ps in real(cli, names, **kw).items()}

        monkeypatch.setattr(_kafka, "topic_partitions", view)
        splits = kafka.read(topic, bootstrap=bs, discovery_interval=0.2, partitions="auto").logical_splits()
        assert len(splits) == 2  # the layout the metadata showed when compiled
        reader = splits[1].open(ctx())
        try:
            assert sorted(r["p"] for r in read_all(reader, want=5)) == [1] * 5
            assert read_all(reader, timeout=0.5) == []
            shown[0] = 4  # partitions 2 and 3 appear: 3 % 2 == 1 is this split's
            assert sorted(r["p"] for r in read_all(reader, want=5, timeout=10)) == [3] * 5
            assert sorted(reader.snapshot()["offsets"]) == [f"{topic}[1]", f"{topic}[3]"]
        finally:
            reader.close()
    finally:
        kafka.delete_topic(bs, topic)


def test_a_checkpoint_of_another_layout_is_refused_naming_the_fix(kafka: Any, bs: str, keyed: str,
                                                                  tmp_path: Path, clean: None) -> None:
    """A job compiled with 2 partitions (partitions 2 and 3 read by splits 0 and 1, as partitions added
    later would be) fails after a checkpoint; compiled again with the topic's 4, split 0's offsets name
    partition 2, now a split of its own: the restore is refused naming ``partitions={...: 2}``, and with
    that the job resumes and loses nothing."""
    group = services.unique("g")
    out_path, ck, flag = tmp_path / "out.jsonl", str(tmp_path / "ck"), tmp_path / "fail"
    seen = tmp_path / "seen"
    seen.mkdir()
    flag.write_text("1")

    main = os.getpid()

    def run(**read: Any) -> Any:
        flow = ms.Flow("resume")
        seen_n = [0]

        def step(r: dict[str, Any]) -> dict[str, Any]:
            seen_n[0] += 1
            if seen_n[0] % 200 == 0:
                time.sleep(0.01)  # let checkpoints happen before worker 1 fails
            if seen_n[0] == 1_500 and os.getpid() != main and flag.exists():
                flag.unlink()
                raise RuntimeError("boom")
            return {"i": r["i"]}

        (flow.source(kafka.read(keyed, bootstrap=bs, group=group, bounded=True, **read)).map(step)
         .sink(ms.connectors.files.write(out_path)))
        return flow.run(mode="native", parallelism=2, checkpoint_dir=ck, checkpoint_interval=20, max_chunk=100,
                        guarantee="at-least-once")

    with pytest.raises(Exception, match="boom"):
        run(partitions=2)
    with pytest.raises(Exception, match=r"partitions=\{'" + keyed + r"': 2\}") as info:
        run(partitions="auto")
    assert "holds the offsets of" in str(info.value)
    assert run(partitions=2).ok
    got = [json.loads(line)["i"] for line in out_path.read_text().splitlines()]
    assert set(got) == set(range(N))


def test_a_checkpoint_resumes_only_with_the_split_layout_it_was_taken_with(kafka: Any, bs: str, keyed: str,
                                                                            tmp_path: Path) -> None:
    """Read as one split (the default) or as partitions (partitions=), a source's position has another
    shape: a checkpoint of one is refused by the other, naming the fix, instead of starting over."""
    def run(ck: Path, fail: bool, **read: Any) -> Any:
        seen = [0]

        def step(r: dict[str, Any]) -> dict[str, Any]:
            seen[0] += 1
            if fail and seen[0] == 3_000:
                raise RuntimeError("boom")
            return r

        flow = ms.Flow("layout")
        flow.source(kafka.read(keyed, bootstrap=bs, bounded=True, **read)).map(step).sink(CollectSink())
        return flow.run(mode="native", checkpoint_dir=str(ck), checkpoint_interval=1, max_chunk=100,
                        guarantee="at-least-once")

    for first, then, match in (({}, {"partitions": "auto"}, "as one split"),
                               ({"partitions": "auto"}, {}, "as logical splits")):
        ck = tmp_path / f"ck{len(first)}"
        with pytest.raises(Exception, match="boom"):
            run(ck, True, **first)
        with pytest.raises(ConfigError, match=match):
            run(ck, False, **then)
        assert run(ck, False, **first).ok

