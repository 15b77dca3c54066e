"""examples/kafka_fraud.py against a real broker (a private tansu) and the shared PostgreSQL: its alerts,
in the PostgreSQL table and in the alerts topic, are those of examples/fraud_detection.py on the same input.

tansu 0.6 shows records of aborted transactions to read_committed readers, so the topic is read with
``kafka.committed_records`` (the marker and tag chain of the transactional sink).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.integration import services

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
PG = "postgresql://postgres@127.0.0.1:5432/test"


def run_example(name: str, env: dict[str, str]) -> None:
    full = {**os.environ, **env}
    full.pop("MILLSTREAM_FAILPOINTS", None)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), full.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "millstream.cli", "run", str(REPO / "examples" / name), "-q"],
                          env=full, capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert done.returncode == 0, done.stderr


def canon(rows: list[dict[str, Any]]) -> Counter[str]:
    """Alerts as a multiset, fields without a value left out (a table has a NULL where a record has none)."""
    return Counter(json.dumps({k: v for k, v in r.items() if v is not None}, sort_keys=True) for r in rows)


def test_kafka_fraud_raises_the_alerts_of_the_file_example(kafka_broker: services.Broker, tmp_path: Path) -> None:
    services.need_module("confluent_kafka", "kafka")
    services.need_module("psycopg", "postgres")
    services.require("postgres")
    import psycopg
    from psycopg.rows import dict_row

    from millstream.connectors import kafka

    name = services.unique("fraud")
    out = str(tmp_path / "examples")
    try:
        run_example("fraud_detection.py", {"MILLSTREAM_EXAMPLES_OUT": out})
        want = [orjson.loads(line) for line in (tmp_path / "examples" / "fraud_detection" / "alerts.jsonl")
                .read_bytes().splitlines()]
        assert {(a["card"], a["kind"]) for a in want} >= {("card-0007", "test-then-large"),
                                                           ("card-0042", "impossible-travel")}
        env = {"MILLSTREAM_KAFKA": kafka_broker.bootstrap, "MILLSTREAM_POSTGRES": PG,
               "MILLSTREAM_FRAUD_NAME": name, "MILLSTREAM_EXAMPLES_OUT": out}
        run_example("kafka_fraud.py", env)
        with psycopg.connect(PG, row_factory=dict_row) as db:
            table = db.execute(f"SELECT * FROM {name}_alerts").fetchall()
        assert canon(table) == canon(want)
        msgs = kafka.committed_records(kafka_broker.bootstrap, f"{name}_alerts", f"{name}-alerts-topic")
        assert canon([orjson.loads(m.value()) for m in msgs]) == canon(want)
        assert {m.key().decode() for m in msgs} == {a["card"] for a in want}
        # the input went through Kafka: 3 partitions, each card's transactions in one of them
        from confluent_kafka.admin import AdminClient

        meta = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10)
        assert len(meta.topics[f"{name}_transactions"].partitions) == 3
        # a second run makes its input afresh and gives the same alerts (the upsert replaces)
        run_example("kafka_fraud.py", env)
        with psycopg.connect(PG, row_factory=dict_row) as db:
            assert canon(db.execute(f"SELECT * FROM {name}_alerts").fetchall()) == canon(want)
    finally:
        with psycopg.connect(PG, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {name}_alerts, {name}_holders")
        for topic in (f"{name}_transactions", f"{name}_alerts"):
            try:
                kafka.delete_topic(kafka_broker.bootstrap, topic)
            except Exception:  # noqa: BLE001 - cleanup of a topic the example may not have made
                pass
