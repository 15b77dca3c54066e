"""Pattern detection throughput: a 3-step pattern over keyed events, native and micro-batch.

    python benchmarks/cep.py [N] [KEYS]

The pattern is "a login, then a failed payment, then a large payment, within 10 s" per
user: ``begin("login").followed_by("failed").followed_by("large").within(10_000)``. Events
come in time order with a watermark bound of 1 s (so they are buffered and matched in
event-time order). Prints events/s per mode (best of three) and the state a key holds
(events buffered or in partial matches, and pickled bytes) in the middle of the stream.
"""

from __future__ import annotations

import pickle
import random
import sys
import time
from typing import Any

import millstream as ms
from millstream import cep
from millstream._cep._nfa import Engine, KeyState

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
KEYS = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000


def events(n: int, keys: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    kinds = ["login", "browse", "browse", "pay", "pay", "fail"]
    return [{"user": rng.randrange(keys), "kind": rng.choice(kinds), "amount": rng.randrange(1_000), "ts": i * 5}
            for i in range(n)]


PATTERN = (cep.begin("login").where(lambda e: e["kind"] == "login")
           .followed_by("failed").where(lambda e: e["kind"] == "fail")
           .followed_by("large").where(lambda e, m: e["kind"] == "pay" and e["amount"] > 900)
           .within(10_000))


def run(data: list[dict[str, Any]], mode: str) -> tuple[float, int]:
    best = float("inf")
    found = 0
    for _ in range(3):
        flow = ms.Flow("cep-bench")
        out = ms.testing.CollectSink()
        (flow.source(ms.connectors.memory.read(data), watermark=ms.WatermarkStrategy.bounded(1_000, timestamp="ts"))
             .key_by("user").match(PATTERN, select=lambda m: m.key).sink(out))
        t0 = time.perf_counter()
        flow.run(mode)
        best = min(best, time.perf_counter() - t0)
        found = len(out.values)
    return len(data) / best, found


def state_per_key(data: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean events held and pickled bytes per key after half the stream."""
    engine = Engine(PATTERN, timeouts=False)
    states: dict[Any, KeyState] = {}
    for e in data[: len(data) // 2]:
        ks = states.setdefault(e["user"], KeyState())
        engine.on_event(ks, e["user"], e, e["ts"], lambda kind, m, at: None)
    held = sum(ks.size() for ks in states.values()) / len(states)
    size = sum(len(pickle.dumps(ks, protocol=pickle.HIGHEST_PROTOCOL)) for ks in states.values()) / len(states)
    return held, size


def main() -> None:
    data = events(N, KEYS)
    print(f"cep: 3-step pattern within 10 s, {N:,} events, {KEYS:,} keys")
    for mode in ("native", "microbatch"):
        rate, found = run(data, mode)
        print(f"  {mode:<11} {rate:>10,.0f} events/s   {found:,} matches")
    held, size = state_per_key(data)
    print(f"  state per key mid-stream: {held:.1f} events held, {size:,.0f} bytes pickled")


if __name__ == "__main__":
    main()
