"""The built-in demo: card fraud detection over a synthetic transaction stream."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import millstream as ms

CITIES = ["Lisbon", "Porto", "Madrid", "Paris", "Berlin", "Warsaw", "Oslo", "Rome"]
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SPEND_LIMIT = 3_000.0


def transaction(i: int, *, cards: int = 500, every_ms: int = 250) -> dict[str, Any]:
    """Transaction ``i``: a pure function of ``i`` (same input every run, in any mode).

    Most spending is small and regular; a few cards are stolen: a burst of large
    purchases, and cash withdrawals in two cities minutes apart.
    """
    rnd = random.Random(i * 2654435761 % 2**32)
    card = f"card-{rnd.randrange(cards):04d}"
    ts = START_MS + i * every_ms + rnd.randrange(-2_000, 2_000)  # up to 2 s out of order
    home = CITIES[int(card[-4:]) % len(CITIES)]
    kind = "atm" if rnd.random() < 0.1 else "pos"
    amount = round(rnd.lognormvariate(3.2, 0.6), 2)
    city = home
    if int(card[-4:]) % 97 == 13 and (i // 400) % 5 == 2:  # a stolen card: large purchases, far away
        amount = round(rnd.uniform(400, 1_500), 2)
        city = CITIES[(CITIES.index(home) + 3) % len(CITIES)]
        kind = "atm" if rnd.random() < 0.5 else "pos"
    return {"id": i, "card": card, "ts": ts, "amount": amount, "city": city, "kind": kind}


def _anomaly(ctx: ms.Context, tx: dict[str, Any]) -> None:
    """Per-card EWMA mean and variance of the amount; emits a z-score and a flag."""
    state = ctx.state["stats"]
    n, mean, var = state.value()
    x = tx["amount"]
    z = 0.0 if n < 10 or var <= 0 else (x - mean) / math.sqrt(var)
    alpha = 0.1
    if n == 0:
        mean, var = x, 0.0
    else:
        diff = x - mean
        mean += alpha * diff
        var = (1 - alpha) * (var + alpha * diff * diff)
    state.update((n + 1, mean, var))
    if z > 4.0:
        ctx.emit({"card": tx["card"], "id": tx["id"], "ts": tx["ts"], "amount": x, "z": round(z, 2),
                  "reason": "amount far above this card's usual spending"})


def _impossible_travel(ctx: ms.Context, tx: dict[str, Any]) -> None:
    """Cash withdrawals in two cities less than 30 minutes apart."""
    if tx["kind"] != "atm":
        return
    last = ctx.state["last_atm"]
    prev = last.value()
    if prev is not None and prev["city"] != tx["city"] and abs(tx["ts"] - prev["ts"]) < 30 * 60_000:
        ctx.emit({"card": tx["card"], "id": tx["id"], "ts": tx["ts"], "cities": [prev["city"], tx["city"]],
                  "minutes_apart": round(abs(tx["ts"] - prev["ts"]) / 60_000, 1),
                  "reason": "ATM withdrawals in two cities within 30 minutes"})
    if prev is None or tx["ts"] >= prev["ts"]:
        last.update({"city": tx["city"], "ts": tx["ts"]})


def build(params: dict[str, Any] | None = None) -> ms.Flow:
    """The fraud-detection flow; ``params``: events, rate, out (directory)."""
    p = {"events": 200_000, "rate": None, "out": "millstream-demo-output", **(params or {})}
    out = Path(str(p["out"]))
    flow = ms.Flow("card-fraud-demo")
    tx = flow.source(
        ms.connectors.generator.read(transaction, count=int(p["events"]), rate=p["rate"], name="transactions"),
        watermark=ms.WatermarkStrategy.bounded(timedelta(seconds=5), timestamp="ts"),
    )
    by_card = tx.key_by("card")
    spend = by_card.window(ms.windows.sliding(timedelta(minutes=10), every=timedelta(minutes=1))).aggregate(
        total=ms.agg.sum("amount"), n=ms.agg.count(), cities=ms.agg.count_distinct("city"),
        biggest=ms.agg.max("amount"),
    )
    spend.filter(lambda w: w["total"] > SPEND_LIMIT, name="over-limit").sink(
        ms.connectors.files.write(out / "spend_alerts.jsonl"), name="spend-alerts")
    by_card.process(_anomaly, state={"stats": ms.state.value(default=(0, 0.0, 0.0), ttl=timedelta(days=30))},
                    name="anomaly-score").sink(ms.connectors.files.write(out / "anomalies.jsonl"), name="anomalies")
    by_card.process(_impossible_travel, state={"last_atm": ms.state.value(ttl=timedelta(hours=1))},
                    name="impossible-travel").sink(ms.connectors.files.write(out / "travel_alerts.jsonl"),
                                                   name="travel-alerts")
    spend.late().sink(ms.connectors.files.write(out / "late.jsonl"), name="late-events")
    return flow
