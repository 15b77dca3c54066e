"""Random SIGKILL campaigns on real services: the job, the services it reads and writes, the oracle.

Pipelines (``--set pipeline=...``), all keyed tumbling windows over a deterministic input:

- ``pg``: Kafka (4 partitions) -> windows -> PostgreSQL upsert (``postgres.write(mode="upsert")``);
- ``kafka``: Kafka -> windows -> Kafka; exactly-once through the transactional sink
  (``transactional_id=``, read back with ``kafka.committed_records``: tansu 0.6 shows records of
  aborted transactions to read_committed readers), otherwise the idempotent producer (read whole);
- ``files``: Kafka -> windows -> the transactional file sink (``files.write(dir, transactional=True)``);
- ``redis``: Redis Streams (4 streams, one split each) -> windows -> file sink (transactional under
  exactly-once, a plain JSON-lines file otherwise).

The input is produced before the runs: record ``seq`` of partition (or stream) ``p`` is
:func:`record` ``(p, seq)``, a pure function. The oracle (:func:`oracle`) computes the windows in
plain Python from the same function, independently of millstream. Each trial runs the job as a
subprocess, SIGKILLs its process group 1-3 times at random moments and restarts it until it exits 0
(``harness.kill_until_done``), then checks the guarantee on the committed output as
``harness._check_visible`` does for the file pipelines: exactly-once equal to the oracle (and, after
every kill, no duplicate and nothing foreign), at-least-once nothing lost, at-most-once no window
twice and none holding more than the oracle.

This file is also the job: ``python -m millstream.cli run tests/chaos/services.py --set ...``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import millstream as ms

HERE = Path(__file__).resolve().parent
REPO = str(HERE.parents[1])
JOB = str(Path(__file__).resolve())
PARTITIONS = 4
KEYS = 13
WINDOW_MS = 1_000
FIELDS = ("key", "window_start", "window_end", "n", "ids", "x")
PIPELINES = ("pg", "kafka", "files", "redis")


# -- the input and the oracle ------------------------------------------------------------------------------------


def record(p: int, seq: int) -> dict[str, Any]:
    """Record ``seq`` of partition ``p``: event time rising 10 ms a record, up to 40 ms out of order."""
    i = p * 1_000_000 + seq
    return {"id": i, "key": (i * 7919 + p) % KEYS, "ts": seq * 10 + (seq * 2654435761 + p) % 41}


def mix(i: int) -> int:
    return (i * 0x9E3779B1) & 0xFFFFFFFF


def oracle(per_partition: int) -> Counter[str]:
    """The windows, computed here in plain Python: (count, sum of ids, xor of id hashes) per key and window."""
    acc: dict[tuple[int, int], list[int]] = {}
    for p in range(PARTITIONS):
        for s in range(per_partition):
            r = record(p, s)
            w = r["ts"] // WINDOW_MS * WINDOW_MS
            a = acc.setdefault((r["key"], w), [0, 0, 0])
            a[0] += 1
            a[1] += r["id"]
            a[2] ^= mix(r["id"])
    return Counter(canon({"key": k, "window_start": w, "window_end": w + WINDOW_MS, "n": a[0], "ids": a[1],
                          "x": a[2]}) for (k, w), a in acc.items())


def canon(row: dict[str, Any]) -> str:
    return json.dumps({f: row.get(f) for f in FIELDS}, sort_keys=True)


# -- the job -------------------------------------------------------------------------------------------------------


def build(params: dict[str, Any]) -> ms.Flow:
    pipeline = str(params["pipeline"])
    guarantee = str(params.get("guarantee", "exactly-once"))
    rate = float(params.get("rate", 0) or 0)
    flow = ms.Flow(f"chaos-{pipeline}")
    watermark = ms.WatermarkStrategy.bounded(50, timestamp="ts")
    if pipeline == "redis":
        from millstream.connectors import redis

        src = flow.source(redis.read(str(params["input"]).split(","), group=str(params["group"]), start="0",
                                     bounded=True, count=200, url=str(params["url"])), watermark=watermark)
    else:
        from millstream.connectors import kafka

        src = flow.source(kafka.read(str(params["input"]), bootstrap=str(params["bootstrap"]), bounded=True,
                                     group=str(params["group"])), watermark=watermark)
    seen = [0]

    def pace(r: dict[str, Any]) -> dict[str, Any]:  # so that random kills land mid-run
        seen[0] += 1
        if rate and seen[0] % 50 == 0:
            time.sleep(50 / rate)
        return r

    xor = ms.agg.custom(lambda: 0, lambda acc, i: acc ^ mix(i), merge=lambda a, b: a ^ b, field="id", name="x")
    out = (src.map(pace).key_by("key").window(ms.windows.tumbling(WINDOW_MS))
           .aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"), x=xor))
    target = str(params["output"])
    if pipeline == "pg":
        from millstream.connectors import postgres

        out.sink(postgres.write(target, dsn=str(params["dsn"]), mode="upsert", key=("key", "window_start"),
                                columns=FIELDS))
    elif pipeline == "kafka":
        from millstream.connectors import kafka

        txid = str(params["txid"]) if guarantee == "exactly-once" else None
        out.sink(kafka.write(target, bootstrap=str(params["bootstrap"]), key="key", transactional_id=txid))
    else:
        transactional = pipeline == "files" or guarantee == "exactly-once"
        out.sink(ms.connectors.files.write(target, transactional=transactional))
    return flow


# -- the services --------------------------------------------------------------------------------------------------


def _svc() -> Any:
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from tests.integration import services

    return services


def _harness() -> Any:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import harness

    return harness


class Services:
    """Where the input lives (one Kafka topic of 4 partitions, 4 Redis streams) for one campaign.
    (Plain classes here, no dataclasses: the job loader runs this file without registering a module.)"""

    def __init__(self, *, bootstrap: str, redis_url: str, dsn: str, topic: str, streams: list[str],
                 per_partition: int) -> None:
        self.bootstrap, self.redis_url, self.dsn = bootstrap, redis_url, dsn
        self.topic, self.streams, self.per_partition = topic, streams, per_partition


def produce_input(env: Services) -> None:
    """Write the deterministic input: record(p, seq) into partition p of the topic and into stream p."""
    from confluent_kafka import Producer

    from millstream.connectors import kafka

    kafka.create_topic(env.bootstrap, env.topic, partitions=PARTITIONS)
    prod = Producer({"bootstrap.servers": env.bootstrap, "linger.ms": 5})
    for p in range(PARTITIONS):
        for s in range(env.per_partition):
            prod.produce(env.topic, json.dumps(record(p, s)).encode(), partition=p)
        prod.poll(0)
    assert prod.flush(30) == 0
    import redis as redis_client

    r = redis_client.Redis.from_url(env.redis_url)
    try:
        for p, stream in enumerate(env.streams):
            pipe = r.pipeline(transaction=False)
            for s in range(env.per_partition):
                pipe.xadd(stream, {"data": json.dumps(record(p, s))})
            pipe.execute()
    finally:
        r.close()


@contextmanager
def services(per_partition: int, log_dir: str | None = None) -> Iterator[Services]:
    """A private tansu, the shared Redis and PostgreSQL, the input produced; everything made is removed after."""
    svc = _svc()
    svc.need_module("confluent_kafka", "kafka")
    svc.need_module("redis", "redis")
    svc.need_module("psycopg", "postgres")
    rhost, rport = svc.require("redis")
    phost, pport = svc.require("postgres")
    with svc.tansu(log_dir) as broker:
        env = Services(bootstrap=broker.bootstrap, redis_url=f"redis://{rhost}:{rport}/0",
                       dsn=f"postgresql://postgres@{phost}:{pport}/test", topic=svc.unique("chaos_in"),
                       streams=[svc.unique(f"chaos_in{p}") for p in range(PARTITIONS)], per_partition=per_partition)
        try:
            produce_input(env)
            yield env
        finally:
            import redis as redis_client

            r = redis_client.Redis.from_url(env.redis_url)
            try:
                r.delete(*env.streams)
            finally:
                r.close()


def _pg(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)
        return list(cur.fetchall()) if cur.description else []


def read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` (read_uncommitted), with partition EOF as the end (tansu's
    ListOffsets(latest) is wrong)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-check", "enable.auto.commit": False,
                  "enable.partition.eof": True, "isolation.level": "read_uncommitted"})
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, -2) for p in parts])
        out: list[dict[str, Any]] = []
        done: set[int] = set()
        deadline = time.monotonic() + 30
        while len(done) < len(parts) and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        done.add(m.partition())
                    continue
                out.append(json.loads(m.value()))
        return out
    finally:
        c.close()


class Target:
    """The output of one trial: where the job writes, how to read it back."""

    def __init__(self, pipeline: str, guarantee: str, env: Services, name: str, group: str) -> None:
        self.pipeline, self.guarantee, self.env, self.name, self.group = pipeline, guarantee, env, name, group

    def params(self) -> dict[str, str]:
        e = self.env
        p = {"pipeline": self.pipeline, "guarantee": self.guarantee, "group": self.group, "output": self.name}
        if self.pipeline == "redis":
            p.update(input=",".join(e.streams), url=e.redis_url)
        else:
            p.update(input=e.topic, bootstrap=e.bootstrap)
        if self.pipeline == "pg":
            p["dsn"] = e.dsn
        if self.pipeline == "kafka":
            p["txid"] = self.group
        return p

    def rows(self) -> Counter[str]:
        if self.pipeline == "pg":
            got = _pg(self.env.dsn, f"SELECT {', '.join(FIELDS)} FROM {self.name}")
            return Counter(canon(dict(zip(FIELDS, r, strict=True))) for r in got)
        if self.pipeline == "kafka":
            if self.guarantee == "exactly-once":
                from millstream.connectors import kafka

                msgs = kafka.committed_records(self.env.bootstrap, self.name, f"{self.group}-{self.name}")
                return Counter(canon(json.loads(m.value())) for m in msgs)
            return Counter(canon(r) for r in read_topic(self.env.bootstrap, self.name))
        return Counter(canon(json.loads(r)) for r in _harness().read_rows(self.name))


@contextmanager
def target(env: Services, pipeline: str, guarantee: str, work: Path) -> Iterator[Target]:
    svc = _svc()
    group = svc.unique(f"chaos_{pipeline}")
    if pipeline == "pg":
        name = group
        _pg(env.dsn, f"CREATE TABLE {name} (key bigint, window_start bigint, window_end bigint, n bigint, "
                     f"ids bigint, x bigint, PRIMARY KEY (key, window_start))")
    elif pipeline == "kafka":
        from millstream.connectors import kafka

        name = group
        kafka.create_topic(env.bootstrap, name, partitions=2)
    else:
        transactional = pipeline == "files" or guarantee == "exactly-once"
        name = str(work / ("out" if transactional else "out.jsonl"))
    try:
        yield Target(pipeline, guarantee, env, name, group)
    finally:
        if pipeline == "pg":
            _pg(env.dsn, f"DROP TABLE IF EXISTS {name}")
        elif pipeline == "kafka":
            from millstream.connectors import kafka

            kafka.delete_topic(env.bootstrap, name)


# -- one trial -----------------------------------------------------------------------------------------------------


def command(trial: Any, params: dict[str, str], ckpt: str) -> list[str]:
    args = [sys.executable, "-m", "millstream.cli", "run", JOB, "-q", "--progress", "off", "--mode", trial.mode,
            "--guarantee", trial.guarantee, "--checkpoint-dir", ckpt, "--checkpoint-interval", str(trial.interval_ms)]
    for k, v in {**params, "rate": str(trial.rate or 0)}.items():
        args += ["--set", f"{k}={v}"]
    return args


def run_trial(trial: Any, env: Services, expected: Counter[str], workdir: Path) -> dict[str, Any]:
    """One trial (a harness.Trial whose ``pipeline`` is one of PIPELINES): kill, restart until done, check."""
    h = _harness()
    workdir.mkdir(parents=True, exist_ok=True)
    t0, wall0 = time.monotonic(), time.time()
    with target(env, trial.pipeline, trial.guarantee, workdir) as out:
        cmd = command(trial, out.params(), str(workdir / "ckpt"))

        def after_kill(anomalies: list[str]) -> None:
            h._check_visible(trial.guarantee, out.rows(), expected, anomalies, during=True)

        anomalies, starts = h.kill_until_done(trial, cmd, h._env, after_kill, timeout_s=180)
        final = out.rows()
    if not anomalies:
        h._check_visible(trial.guarantee, final, expected, anomalies, during=False)
    shutil.rmtree(workdir / "ckpt", ignore_errors=True)
    return {"pipeline": trial.pipeline, "guarantee": trial.guarantee, "mode": trial.mode, "seed": trial.seed,
            "starts": starts, "kills": sum(x["exit"] == -9 for x in trial.history),
            "schedule": [round(x["t"] - wall0, 2) for x in trial.history if x["killed"]],
            "anomalies": anomalies, "output_rows": sum(final.values()), "expected_rows": sum(expected.values()),
            "seconds": round(time.monotonic() - t0, 2)}


def trial(pipeline: str, guarantee: str, *, mode: str, seed: int, kills: int, per_partition: int,
          rate: int, kill_window_s: tuple[float, float], interval_ms: int = 100) -> Any:
    h = _harness()
    return h.Trial(guarantee, pipeline=pipeline, events=per_partition * PARTITIONS, rate=rate, seed=seed,
                   kills=kills, kill_window_s=kill_window_s, interval_ms=interval_ms, mode=mode)

