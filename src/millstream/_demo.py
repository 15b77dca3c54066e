"""The built-in demo: card fraud detection over a synthetic transaction stream."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import millstream as ms

CITIES = ["Lisbon", "Porto", "Madrid", "Paris", "Berlin", "Warsaw", "Oslo", "Rome"]
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SPEND_LIMIT = 3_000.0
Z_ALERT = 5.0


_MASK = 2**64 - 1


def _unit(i: int, salt: int) -> float:
    """A uniform number in [0, 1) that is a pure function of (i, salt) (splitmix64)."""
    x = (i * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return ((x ^ (x >> 31)) >> 11) / 9007199254740992.0


STOLEN_CARDS = tuple(range(13, 500, 97))  # card numbers that get stolen once each
THEFT_EVENTS = 2_000  # a theft lasts this many events (~8 minutes of event time)


def _theft(i: int) -> int | None:
    """The stolen card (if any) whose theft burst event ``i`` falls in."""
    k, offset = divmod(i - 20_000, 25_000)
    if 0 <= k < len(STOLEN_CARDS) and offset < THEFT_EVENTS and _unit(i, 8) < 0.02:
        return STOLEN_CARDS[k]
    return None


def transaction(i: int, *, cards: int = 500, every_ms: int = 250) -> dict[str, Any]:
    """Transaction ``i``: a pure function of ``i`` (same input every run, in any mode).

    Most spending is small and regular (log-normal, in the card's home city).
    Every 25,000 events from event 20,000 one card is stolen: for ~2,000 events
    it makes large purchases and cash withdrawals in a far city.
    """
    stolen = _theft(i)
    card_no = int(_unit(i, 1) * cards) if stolen is None else stolen
    card = f"card-{card_no:04d}"
    ts = START_MS + i * every_ms + int(_unit(i, 2) * 4_000) - 2_000  # up to 2 s out of order
    home = CITIES[card_no % len(CITIES)]
    if stolen is not None:
        city = CITIES[(CITIES.index(home) + 3) % len(CITIES)]
        amount = round(400 + _unit(i, 6) * 1_100, 2)
        kind = "atm" if _unit(i, 7) < 0.5 else "pos"
    else:
        city = home
        normal = math.sqrt(-2.0 * math.log(1.0 - _unit(i, 4))) * math.cos(2 * math.pi * _unit(i, 5))
        amount = round(math.exp(3.2 + 0.6 * normal), 2)
        kind = "atm" if _unit(i, 3) < 0.1 else "pos"
    return {"id": i, "card": card, "ts": ts, "amount": amount, "city": city, "kind": kind}


def _anomaly(ctx: ms.Context, tx: dict[str, Any]) -> None:
    """Per-card EWMA mean and variance of log(amount); emits transactions far above the card's usual.

    Spending is roughly log-normal, so the score is taken on the logarithm, where
    a z-score means what it says.
    """
    state = ctx.state["stats"]
    n, mean, var = state.value()
    x = math.log(max(tx["amount"], 0.01))
    z = 0.0 if n < 20 or var <= 0 else (x - mean) / math.sqrt(var)
    alpha = 0.05
    if n == 0:
        mean, var = x, 0.0
    elif z <= Z_ALERT:  # learn from normal spending only, so a theft cannot teach the model
        diff = x - mean
        mean += alpha * diff
        var = (1 - alpha) * (var + alpha * diff * diff)
    state.update((n + 1, mean, var))
    if z > Z_ALERT:
        ctx.emit({"card": tx["card"], "id": tx["id"], "ts": tx["ts"], "amount": tx["amount"], "z": round(z, 2),
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
