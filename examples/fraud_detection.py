"""Card fraud detection: patterns (CEP), enrichment with a card-holder table, an anomaly score.

    millstream run examples/fraud_detection.py

Over a day of synthetic card transactions (a few hundred cards, deterministic) with three
frauds planted in it, the flow raises:

- ``test-then-large``: a small "test" transaction (under 2.00) followed by a large one (over
  500.00) on the same card within 5 minutes, the classic card-testing pattern;
- ``impossible-travel``: two transactions of a card in cities further apart than a plane
  flies in the time between them (over 900 km/h);
- ``anomaly``: an amount more than 12 EWM standard deviations from the card's usual spend.

Every alert is enriched with the card holder's name and home city, looked up in a SQLite
table the example creates. Alerts go to ``alerts.jsonl`` in the example's output directory
(see ``_common.py``).
"""

from __future__ import annotations

import math
import random
import sqlite3
import sys
from datetime import timedelta
from pathlib import Path

import millstream as ms
from millstream import cep, col

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import out_dir

OUT = out_dir("fraud_detection")
CITIES = {"Paris": (48.86, 2.35), "Lyon": (45.76, 4.84), "Berlin": (52.52, 13.40), "Madrid": (40.42, -3.70),
          "Tokyo": (35.68, 139.69), "New York": (40.71, -74.01)}
HOME = ["Paris", "Lyon", "Berlin", "Madrid"]
T0 = 1_764_000_000_000  # event time of the first transaction (ms)
MINUTE = 60_000
#: the planted frauds, as (card, kind) of the alerts they raise
PLANTED = {("card-0007", "test-then-large"), ("card-0007", "anomaly"), ("card-0042", "impossible-travel"),
           ("card-0113", "anomaly")}


def transactions() -> list[dict[str, object]]:
    rnd = random.Random(20261125)
    txs = []
    for c in range(200):
        card = f"card-{c:04d}"
        home = HOME[c % len(HOME)]
        t = T0 + rnd.randrange(60) * MINUTE
        for _ in range(30):
            t += rnd.randrange(20, 90) * MINUTE
            txs.append({"card": card, "amount": round(rnd.uniform(20, 120), 2), "city": home, "ts": t})
    # card-testing: 1.00, then 950.00 three minutes later
    txs += [{"card": "card-0007", "amount": 1.0, "city": "Madrid", "ts": T0 + 600 * MINUTE},
            {"card": "card-0007", "amount": 950.0, "city": "Madrid", "ts": T0 + 603 * MINUTE}]
    # at home in Berlin, then in Tokyo 40 minutes later (and back home: flagged too)
    txs += [{"card": "card-0042", "amount": 80.0, "city": "Tokyo", "ts": T0 + 940 * MINUTE}]
    # one huge amount on a card that spends 20..120
    txs.append({"card": "card-0113", "amount": 4_800.0, "city": "Lyon", "ts": T0 + 1_500 * MINUTE})
    txs.sort(key=lambda r: r["ts"])  # type: ignore[arg-type, return-value]
    # a little out of order, within the watermark's bound of 2 minutes
    for i in range(0, len(txs) - 1, 7):
        if txs[i + 1]["ts"] - txs[i]["ts"] < 2 * MINUTE:  # type: ignore[operator]
            txs[i], txs[i + 1] = txs[i + 1], txs[i]
    return txs


def holders_table() -> str:
    path = OUT / "holders.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE holders (card TEXT PRIMARY KEY, name TEXT, home TEXT)")
        db.executemany("INSERT INTO holders VALUES (?, ?, ?)",
                       [(f"card-{c:04d}", f"Holder {c}", HOME[c % len(HOME)]) for c in range(200)])
    return str(path)


def km(a: str, b: str) -> float:
    (la1, lo1), (la2, lo2) = CITIES[a], CITIES[b]
    p1, p2, dl = math.radians(la1), math.radians(la2), math.radians(lo2 - lo1)
    return 6371 * math.acos(min(1.0, math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)))


def too_fast(tx: dict[str, object], match: cep.Match) -> bool:
    first = match["first"][0]
    hours = max(1, tx["ts"] - first["ts"]) / 3_600_000  # type: ignore[operator]
    return km(first["city"], tx["city"]) / hours > 900  # type: ignore[arg-type]


TEST_THEN_LARGE = (cep.begin("test").where(lambda tx: tx["amount"] < 2)
                   .followed_by("large").where(lambda tx: tx["amount"] > 500)
                   .within(timedelta(minutes=5)))
IMPOSSIBLE_TRAVEL = (cep.begin("first")
                     .next("second").where(too_fast)
                     .within(timedelta(hours=12)))

flow = ms.Flow("fraud-detection")
tx = flow.source(ms.connectors.memory.read(transactions(), name="transactions"),
                 watermark=ms.WatermarkStrategy.bounded(timedelta(minutes=2), timestamp="ts"))
by_card = tx.key_by("card")
testing = by_card.match(TEST_THEN_LARGE, name="test-then-large", select=lambda m: {
    "kind": "test-then-large", "card": m.key, "ts": m["large"][0]["ts"], "amount": m["large"][0]["amount"]})
travel = by_card.match(IMPOSSIBLE_TRAVEL, name="impossible-travel", select=lambda m: {
    "kind": "impossible-travel", "card": m.key, "ts": m["second"][0]["ts"],
    "amount": m["second"][0]["amount"], "cities": [m["first"][0]["city"], m["second"][0]["city"]]})
scores = (by_card.aggregate(z=ms.stats.zscore("amount", alpha=0.1), amount=ms.agg.last("amount"), ts=ms.agg.last("ts"),
                            name="amount-score")
          .filter(col("z").is_not_null() & (col("z") > 12), name="anomalies")
          .select("card", "ts", "amount", kind=ms.lit("anomaly"), z=col("z").round(1)))
alerts = (testing.union(travel, scores, name="alerts")
          .lookup(ms.connectors.sqlite.table(holders_table(), "holders", key="card"), key="card", how="left",
                  name="holder"))
alerts.sink(ms.connectors.files.write(OUT / "alerts.jsonl"))
