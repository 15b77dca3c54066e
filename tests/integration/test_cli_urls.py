"""The command line takes addresses where it takes files (issue 9 §2): ``millstream nexmark`` over a
real Kafka-protocol broker (a private tansu, conftest.py) and the shared PostgreSQL.

Nexmark events produced into a 4-partition topic by ``nexmark generate --out kafka://...`` and read
back by ``nexmark run --input kafka://...`` give what DuckDB computes from the generator's events
(the oracle of tests/test_nexmark_queries.py), in native and micro-batch mode; results written to
``--out kafka://`` and ``--out postgresql://`` come back equal; ``--pace`` (old name ``--rate``)
paces a file input; bad addresses fail clearly, without their password.

tansu 0.6 shows records of aborted transactions to read_committed readers, so the exactly-once
``--out kafka://`` output is read back with ``kafka.committed_records`` (the marker and tag chain).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.integration import services

import millstream as ms
from millstream import nexmark
from millstream._cli import main
from millstream.connectors._pace import paced
from millstream.connectors._urls import sink_from_url, source_from_url
from millstream.errors import ConfigError
from millstream.nexmark import NexmarkConfig
from millstream.testing import CollectSink

pytestmark = [pytest.mark.integration]

duckdb = pytest.importorskip("duckdb")

# 30 s of event time, out of order inside groups of 500 (0.5 s, within the 4 s bound)
CONFIG = NexmarkConfig(events=30_000, rate=1_000, out_of_order_group_size=500)
GEN = ["--events", "30000", "--event-rate", "1000", "--out-of-order", "500"]
PG = "postgresql://postgres@127.0.0.1:5432/test"
REPO = Path(__file__).resolve().parents[2]


def oracle(q: str) -> list[dict[str, Any]]:
    """What DuckDB computes for ``q`` from the generator's events (SQL of test_nexmark_queries)."""
    from tests.test_nexmark_queries import SQL

    con = duckdb.connect()
    for view, make in (("person", nexmark.persons_batch), ("auction", nexmark.auctions_batch),
                       ("bid", nexmark.bids_batch)):
        con.register(view, make(0, CONFIG.events, CONFIG))
    rel = con.sql(SQL[q])
    rows = [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]
    con.close()
    return rows


_oracles: dict[str, list[dict[str, Any]]] = {}


def check(q: str, got: list[dict[str, Any]]) -> None:
    from tests.test_nexmark_queries import check as check_rows

    if q not in _oracles:
        _oracles[q] = oracle(q)
    assert _oracles[q], f"the oracle has no rows for {q}"
    check_rows(q, got, _oracles[q])


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def kafka_mod() -> Any:
    services.need_module("confluent_kafka", "kafka")
    from millstream.connectors import kafka

    return kafka


@pytest.fixture(scope="module")
def events_topic(kafka_broker: services.Broker, kafka_mod: Any) -> Iterator[str]:
    """The Nexmark events, produced into a 4-partition topic with the CLI; its kafka:// address."""
    bs = kafka_broker.bootstrap
    topic = services.unique("nexmark")
    assert main(["nexmark", "generate", *GEN, "--out", f"kafka://{bs}/{topic}?partitions=4"]) == 0
    try:
        yield f"kafka://{bs}/{topic}"
    finally:
        kafka_mod.delete_topic(bs, topic)


@pytest.fixture
def made_topics(kafka_broker: services.Broker, kafka_mod: Any) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for t in made:
        kafka_mod.delete_topic(kafka_broker.bootstrap, t)


def test_generate_fills_four_partitions(events_topic: str, kafka_mod: Any, kafka_broker: services.Broker) -> None:
    topic = events_topic.rsplit("/", 1)[1]
    seen = CollectSink()
    flow = ms.Flow("read-back")
    flow.source(kafka_mod.read(topic, bootstrap=kafka_broker.bootstrap, bounded=True,
                               metadata=("partition",))).sink(seen)
    flow.run()
    parts = Counter(r.pop("_partition") for r in seen.values)
    assert parts == {0: 7_500, 1: 7_500, 2: 7_500, 3: 7_500}  # keyless: the partitions in turn
    want = [nexmark.event(i, CONFIG) for i in range(CONFIG.events)]
    assert Counter(orjson.dumps(r) for r in seen.values) == Counter(orjson.dumps(r) for r in want)


@pytest.mark.parametrize("mode", ["native", "microbatch"])
@pytest.mark.parametrize("q", ["q1", "q5", "q7"])
def test_run_from_a_topic_matches_duckdb(q: str, mode: str, events_topic: str, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["nexmark", "run", "--query", q, "--mode", mode, "--input", events_topic, "--out", str(out),
                 "-q"]) == 0
    check(q, jsonl(out))


def test_out_kafka_exactly_once_round_trip(events_topic: str, kafka_mod: Any, kafka_broker: services.Broker,
                                           made_topics: list[str], tmp_path: Path) -> None:
    bs = kafka_broker.bootstrap
    topic = services.unique("q5out")
    made_topics.append(topic)
    assert main(["nexmark", "run", "--query", "q5", "--input", events_topic, "--guarantee", "exactly-once",
                 "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-interval", "100",
                 "--out", f"kafka://{bs}/{topic}?partitions=2&key=auction", "-q"]) == 0
    msgs = kafka_mod.committed_records(bs, topic, f"millstream-{topic}-out")
    check("q5", [orjson.loads(m.value()) for m in msgs])
    # the same output read back with the CLI's own kafka:// source
    seen = CollectSink()
    flow = ms.Flow("read-back")
    flow.source(source_from_url(f"kafka://{bs}/{topic}")).sink(seen)
    flow.run()
    check("q5", seen.values)


def test_out_kafka_at_least_once_round_trip(events_topic: str, kafka_broker: services.Broker,
                                            made_topics: list[str], tmp_path: Path) -> None:
    bs = kafka_broker.bootstrap
    topic = services.unique("q7out")
    made_topics.append(topic)
    assert main(["nexmark", "run", "--query", "q7", "--mode", "microbatch", "--input", events_topic,
                 "--out", f"kafka://{bs}/{topic}?partitions=1", "-q"]) == 0
    back = tmp_path / "back.jsonl"
    # a topic of results read back by the CLI's source into a file: the q7 rows again
    seen = CollectSink()
    flow = ms.Flow("read-back")
    flow.source(source_from_url(f"kafka://{bs}/{topic}")).sink(ms.connectors.files.write(back))
    flow.source(source_from_url(f"kafka://{bs}/{topic}"), name="again").sink(seen, name="seen")
    flow.run()
    check("q7", jsonl(back))
    assert len(seen.values) == len(jsonl(back))


@pytest.fixture
def pg_tables() -> Iterator[list[str]]:
    services.require("postgres")
    services.need_module("psycopg", "postgres")
    made: list[str] = []
    yield made
    import psycopg

    with psycopg.connect(PG, autocommit=True) as db:
        for t in made:
            db.execute(f'DROP TABLE IF EXISTS "{t}"')


def pg_rows(table: str, q: str) -> list[dict[str, Any]]:
    """The table's rows, columns in the query's order (the table may have them in another)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(PG, row_factory=dict_row) as db:
        rows = db.execute(f'SELECT * FROM "{table}"').fetchall()
    assert all(sorted(r) == sorted(nexmark.COLUMNS[q]) for r in rows)
    return [{c: r[c] for c in nexmark.COLUMNS[q]} for r in rows]


def test_out_postgresql_upsert_and_append(events_topic: str, pg_tables: list[str], tmp_path: Path) -> None:
    q4, q5 = services.unique("q4_out"), services.unique("q5_out")
    pg_tables += [q4, q5]
    # q4 updates its table: an upsert by category keeps the final table (the changelog applied)
    assert main(["nexmark", "run", "--query", "q4", "--input", events_topic, "--guarantee", "exactly-once",
                 "--checkpoint-dir", str(tmp_path / "ck4"),
                 "--out", f"{PG}?table={q4}&mode=upsert&key=category", "-q"]) == 0
    check("q4", pg_rows(q4, "q4"))
    # q5 appends (the table is created from the first row); key columns make it an upsert by default
    assert main(["nexmark", "run", "--query", "q5", "--mode", "microbatch", "--input", events_topic,
                 "--out", f"{PG}?table={q5}&key=auction,window_start", "-q"]) == 0
    check("q5", pg_rows(q5, "q5"))


def test_bad_addresses_fail_clearly(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    secret = "pw-" + services.unique("s")
    cases = [
        (["nexmark", "run", "--query", "q1", "--input", f"redis://me:{secret}@127.0.0.1:6379/x"],
         ["unknown address scheme 'redis'", "kafka://HOST:PORT/TOPIC", "postgresql://"]),
        (["nexmark", "generate", "--events", "10", "--out", f"nats://me:{secret}@127.0.0.1:4222/x"],
         ["unknown address scheme 'nats'"]),
        (["nexmark", "run", "--query", "q1", "--input", f"kafka://me:{secret}@127.0.0.1:notaport/t"],
         ["bad address kafka://me:***@127.0.0.1:notaport/t"]),
        (["nexmark", "run", "--query", "q1", "--input", "kafka://127.0.0.1:9092"],
         ["kafka:// needs one topic"]),
        (["nexmark", "run", "--query", "q1", "--input", "kafka://127.0.0.1:9092/t?partition=3"],
         ["unknown option 'partition'", "group, start, bounded"]),
        (["nexmark", "run", "--query", "q1", "--events", "10", "--out", f"postgresql://me:{secret}@127.0.0.1/test"],
         ["needs ?table=NAME", "postgresql://me:***@127.0.0.1/test"]),
        (["nexmark", "run", "--query", "q1", "--input", f"postgresql://me:{secret}@127.0.0.1/test?table=t"],
         ["not an input"]),
        (["nexmark", "run", "--query", "q1", "--events", "10", "--out",
          f"postgresql://127.0.0.1/test?table=t&mode=upsert&create=maybe&password={secret}"],
         ["create='maybe'", "password=***"]),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = " ".join(capsys.readouterr().err.split())
        for text in expected:
            assert text in err, (argv, err)
        assert secret not in err
    # the mapping itself, and what it makes, never hold the password
    sink = sink_from_url(f"kafka://me:{secret}@127.0.0.1:9/t")
    assert secret not in sink.describe() and secret not in repr(sink.options)
    with pytest.raises(ConfigError, match="unknown address scheme 'ftp'"):
        source_from_url(f"ftp://me:{secret}@host/x")


def test_pace_paces_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    assert main(["nexmark", "generate", "--events", "2000", "--event-rate", "1000", "--out", str(events)]) == 0
    fast, slow = tmp_path / "fast.jsonl", tmp_path / "slow.jsonl"
    started = time.monotonic()
    assert main(["nexmark", "run", "--query", "q1", "--input", str(events), "--out", str(fast), "-q"]) == 0
    unpaced = time.monotonic() - started
    for flag, mode, out in (("--pace", "native", slow), ("--rate", "microbatch", tmp_path / "slow2.jsonl")):
        started = time.monotonic()
        assert main(["nexmark", "run", "--query", "q1", "--mode", mode, "--input", str(events), flag, "4000",
                     "--out", str(out), "-q"]) == 0
        elapsed = time.monotonic() - started
        # 2,000 events at 4,000/s, the first second's worth (the burst) at once: >= 0.25 s of pacing
        assert elapsed >= 0.4, (flag, mode, elapsed, unpaced)
        assert elapsed < 30
        # the same rows (event times are unchanged by the pacing)
        assert Counter(json.dumps(r, sort_keys=True) for r in jsonl(out)) == \
            Counter(json.dumps(r, sort_keys=True) for r in jsonl(fast))


def test_paced_source_keeps_positions_and_describes(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    path.write_text("".join(json.dumps({"i": i, "t": i}) + "\n" for i in range(300)))
    src = paced(ms.connectors.files.read(path), 1_000, burst=100)
    assert src.bounded and src.replay == "position" and "paced at 1,000/s" in src.describe()
    out = CollectSink()
    flow = ms.Flow("paced")
    flow.source(src, watermark=ms.WatermarkStrategy.bounded(0, timestamp="t")).sink(out)
    started = time.monotonic()
    flow.run()
    assert time.monotonic() - started >= 0.15  # 300 records at 1,000/s, 100 at once: >= 0.2 s
    assert [r["i"] for r in out.values] == list(range(300))
    # its reader's snapshot is the file reader's (a checkpoint restores the same position)
    from millstream._clock import SystemClock
    from millstream.connectors import SourceContext

    reader = src.open(SourceContext(step="s", clock=SystemClock(), policy="fail"))
    got: list[Any] = []
    while len(got) < 50:
        got += reader.poll(50) or []
    pos = reader.snapshot()
    pickle.dumps(pos)
    reader.close()
    again = src.open(SourceContext(step="s", clock=SystemClock(), policy="fail"))
    again.restore(pos)
    rest: list[Any] = []
    while (chunk := again.poll(1_000)) is not None:
        rest += chunk
    again.close()
    assert [r["i"] for r in got + rest] == list(range(300))
    with pytest.raises(ConfigError, match="rate must be"):
        paced(ms.connectors.files.read(path), 0)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "millstream.cli", "nexmark", "run", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MILLSTREAM_FAILPOINTS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def test_paced_topic_killed_and_resumed_is_exactly_once(events_topic: str, kafka_mod: Any,
                                                         kafka_broker: services.Broker, made_topics: list[str],
                                                         tmp_path: Path) -> None:
    """A crash test at a chosen speed: the topic read at --pace 15,000/s, SIGKILLed after a checkpoint,
    run again with the same checkpoint directory: the committed q5 output is the oracle's."""
    bs = kafka_broker.bootstrap
    topic = services.unique("q5crash")
    made_topics.append(topic)
    ck = tmp_path / "ck"
    args = _cli("--query", "q5", "--input", events_topic, "--pace", "15000", "--guarantee", "exactly-once",
                "--checkpoint-dir", str(ck), "--checkpoint-interval", "100", "--out",
                f"kafka://{bs}/{topic}?partitions=1", "-q")
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(ck.glob("chk-*/MANIFEST.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.2)
    assert proc.poll() is None, "the paced run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    resumed = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    msgs = kafka_mod.committed_records(bs, topic, f"millstream-{topic}-out")
    check("q5", [orjson.loads(m.value()) for m in msgs])


def test_a_checkpoint_says_where_a_topic_read_resumes(events_topic: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["nexmark", "run", "--query", "q7", "--input", events_topic, "--guarantee", "exactly-once",
            "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(out)]
    assert main(args) == 0
    first = ms.connectors.files.read_committed(out)
    check("q7", first)
    assert main(args) == 0  # the checkpoint holds the end offsets: nothing is read again
    said = capsys.readouterr()
    assert "already finished" in " ".join((said.out + said.err).split())  # the summary goes to stdout
    assert ms.connectors.files.read_committed(out) == first
