"""Card fraud detection from a Kafka topic into PostgreSQL and a Kafka topic, exactly once.

    millstream run examples/kafka_fraud.py

The flow of ``fraud_detection.py`` (the same transactions, CEP patterns and anomaly score,
imported from it) over real systems:

- the transactions are produced first into the topic ``<name>_transactions`` (3 partitions,
  keyed by card, so each card's transactions stay in order; made afresh at every run, as the
  other examples make their own input) and read back partition by partition, with a watermark
  per partition, up to the end each partition had at the start;
- every alert is enriched with the card holder, looked up in the PostgreSQL table
  ``<name>_holders`` (made by the example);
- alerts are upserted into the PostgreSQL table ``<name>_alerts`` (key ``kind, card, ts``) and
  written to the topic ``<name>_alerts`` in Kafka transactions (keyed by card).

The run is exactly-once (checkpoints in the example's output directory, see ``_common.py``):
the upsert is idempotent and the topic is written in a transaction per checkpoint, so a crash
and a restart with the same checkpoint directory neither lose nor repeat an alert.

Where the systems are, from the environment:

- ``MILLSTREAM_KAFKA``: the Kafka bootstrap address (default ``127.0.0.1:9092``);
- ``MILLSTREAM_POSTGRES``: the database (default ``postgresql://postgres@127.0.0.1:5432/test``);
- ``MILLSTREAM_FRAUD_NAME``: the prefix of the topics and tables (default ``kafka_fraud``).

Building the flow (``millstream run``, also ``millstream plan``) makes the topics and tables
afresh. Needs ``pip install 'millstream[kafka,postgres]'``. Read the alerts back with e.g.
``psql -c 'SELECT * FROM kafka_fraud_alerts'``.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import millstream as ms
from millstream import col
from millstream.connectors import kafka, postgres

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import out_dir
from fraud_detection import HOME, IMPOSSIBLE_TRAVEL, TEST_THEN_LARGE, transactions

KAFKA = os.environ.get("MILLSTREAM_KAFKA", "127.0.0.1:9092")
POSTGRES = os.environ.get("MILLSTREAM_POSTGRES", postgres.DEFAULT_DSN)
NAME = os.environ.get("MILLSTREAM_FRAUD_NAME", "kafka_fraud")
TRANSACTIONS, ALERTS = f"{NAME}_transactions", f"{NAME}_alerts"
HOLDERS = f"{NAME}_holders"
OUT = out_dir("kafka_fraud")  # made afresh: the checkpoints of an earlier run are gone with its input

#: the alerts table: the fields of every kind of alert (a field an alert lacks is NULL)
COLUMNS = ("kind", "card", "ts", "amount", "z", "cities", "name", "home")


def prepare() -> None:
    """The input topic with the transactions in it, an empty alerts topic, the holders and alerts tables."""
    import psycopg

    for topic in (TRANSACTIONS, ALERTS):
        if topic_exists(topic):
            kafka.delete_topic(KAFKA, topic)
    kafka.create_topic(KAFKA, TRANSACTIONS, partitions=3)
    kafka.create_topic(KAFKA, ALERTS, partitions=1)
    produce = ms.Flow("produce-transactions")
    produce.source(ms.connectors.memory.read(transactions(), name="transactions")).sink(
        kafka.write(TRANSACTIONS, bootstrap=KAFKA, key="card"), name="to-kafka")
    produce.run(mode="native")
    with psycopg.connect(POSTGRES, autocommit=True) as db:
        db.execute(f"DROP TABLE IF EXISTS {HOLDERS}, {ALERTS}")
        db.execute(f"CREATE TABLE {HOLDERS} (card text PRIMARY KEY, name text, home text)")
        with db.cursor().copy(f"COPY {HOLDERS} (card, name, home) FROM STDIN") as copy:
            for c in range(200):
                copy.write_row((f"card-{c:04d}", f"Holder {c}", HOME[c % len(HOME)]))
        db.execute(f"CREATE TABLE {ALERTS} (kind text, card text, ts bigint, amount double precision, "
                   "z double precision, cities jsonb, name text, home text, PRIMARY KEY (kind, card, ts))")


def topic_exists(topic: str) -> bool:
    from confluent_kafka.admin import AdminClient

    return topic in AdminClient({"bootstrap.servers": KAFKA}).list_topics(timeout=10).topics


def build() -> ms.Flow:
    prepare()
    flow = ms.Flow("kafka-fraud")
    tx = flow.source(kafka.read(TRANSACTIONS, bootstrap=KAFKA, group=NAME, bounded=True, name="transactions"),
                     watermark=ms.WatermarkStrategy.bounded(timedelta(minutes=2), timestamp="ts"))
    by_card = tx.key_by("card")
    testing = by_card.match(TEST_THEN_LARGE, name="test-then-large", select=lambda m: {
        "kind": "test-then-large", "card": m.key, "ts": m["large"][0]["ts"], "amount": m["large"][0]["amount"]})
    travel = by_card.match(IMPOSSIBLE_TRAVEL, name="impossible-travel", select=lambda m: {
        "kind": "impossible-travel", "card": m.key, "ts": m["second"][0]["ts"],
        "amount": m["second"][0]["amount"], "cities": [m["first"][0]["city"], m["second"][0]["city"]]})
    scores = (by_card.aggregate(z=ms.stats.zscore("amount", alpha=0.1), amount=ms.agg.last("amount"),
                                ts=ms.agg.last("ts"), name="amount-score")
              .filter(col("z").is_not_null() & (col("z") > 12), name="anomalies")
              .select("card", "ts", "amount", kind=ms.lit("anomaly"), z=col("z").round(1)))
    alerts = (testing.union(travel, scores, name="alerts")
              .lookup(postgres.table(HOLDERS, dsn=POSTGRES, key="card"), key="card", how="left", name="holder"))
    alerts.sink(postgres.write(ALERTS, dsn=POSTGRES, mode="upsert", key=("kind", "card", "ts"), columns=COLUMNS),
                name="alerts-table")
    alerts.sink(kafka.write(ALERTS, bootstrap=KAFKA, key="card", transactional_id=NAME), name="alerts-topic")
    return flow


RUN = ms.RunConfig(guarantee="exactly-once", checkpoint_dir=str(OUT / "checkpoints"), checkpoint_interval=500)
