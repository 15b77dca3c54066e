"""Nexmark q0, q1, q2, q3, q5, q7, q8, q11 on bytewax, over millstream's JSON-lines events file.

Runs in a separate venv (bytewax is not a millstream dependency)::

    python -m venv /tmp/peers
    /tmp/peers/bin/pip install -r benchmarks/nexmark/peers/requirements.txt
    taskset -c 1 /tmp/peers/bin/python benchmarks/nexmark/peers/bytewax_nexmark.py \\
        --query q5 --input /tmp/nexmark-1000000.jsonl --out /tmp/q5.jsonl

Prints one JSON line: {"peer", "query", "events", "seconds", "events_per_s", "peak_rss_mb", "rows_out"}.

What is timed: ``run_main(flow)`` with one worker, i.e. reading the file line by line
(bytewax's ``FileSource``), parsing every line with orjson (stdlib json when orjson
is missing; the result line says which), the query, and writing the output rows as
JSON lines. Not timed: interpreter start-up, imports, building the dataflow, and
counting the input lines.

Event time is ``dateTime`` through bytewax's ``EventClock`` with
``wait_for_system_duration = 4 s``: bytewax's watermark is the largest event time
seen minus 4 s plus the system time elapsed since then, which on a replay
running much faster than event time is the 4 s bounded-out-of-orderness
watermark. End of input closes every window.

Plans (one worker, so keyed steps do not spread over cores):

- q0/q1/q2: ``filter_map`` (parse, keep bids, project) into the sink.
- q5: one ``fold_window`` over ``SlidingWindower(10 s, every 2 s, aligned to the
  epoch)`` keyed by a single key, the accumulator a dict auction -> count; at close
  every auction at the window's maximum count is emitted (ties included).
- q7: ``fold_window`` over ``TumblingWindower(10 s)`` keyed by a single key, the
  accumulator (max price, bids at that price).
- q11: ``fold_window`` over ``SessionWindower`` keyed by bidder, accumulating
  (count, first, last); ``endtime = last + 10 s``. bytewax merges events *at most*
  ``gap`` apart; millstream and the oracle split at exactly ``gap`` (events less
  than 10 s apart share a session), so the gap given to bytewax is 10 s - 1 ms
  (times are whole ms, so the two are the same rule).
- q3: persons (state OR/ID/CA) and auctions (category 10) keyed by person id into
  one ``stateful_flat_map`` that keeps the person and buffers auctions that arrive
  before their seller (an unbounded regular inner join, append-only, as Flink's).
- q8: ``join_window`` of persons (by id) and auctions (by seller) over
  ``TumblingWindower(10 s)``; emitted at window close when both sides are there.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bytewax.operators as op
import bytewax.operators.windowing as win
from _common import HOP_MS, WATERMARK_MS, WINDOW_MS, count_lines, parse_args, report, self_peak_rss_mb
from bytewax.connectors.files import FileSource
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

try:
    import orjson

    loads = orjson.loads

    def dumps(obj: object) -> str:
        return orjson.dumps(obj).decode()

    JSON = "orjson"
except ImportError:  # pragma: no cover
    import json

    loads = json.loads
    dumps = json.dumps
    JSON = "json"

PEER = "bytewax"
QUERIES = ("q0", "q1", "q2", "q3", "q5", "q7", "q8", "q11")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BATCH = 4096


class _LinesPartition(StatelessSinkPartition):
    def __init__(self, path: str) -> None:
        self.f = open(path, "w")  # noqa: SIM115
        self.n = 0

    def write_batch(self, items: list) -> None:
        self.n += len(items)
        self.f.write("".join(dumps(item) + "\n" for item in items))

    def close(self) -> None:
        self.f.close()
        COUNT[0] = self.n


COUNT = [0]


class LinesSink(DynamicSink):
    """Each item (a dict) as one JSON line of one file (one worker)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LinesPartition:
        return _LinesPartition(self.path)


def _ts(row: dict) -> datetime:
    return EPOCH + timedelta(milliseconds=row["dateTime"])


def _clock() -> win.EventClock:
    return win.EventClock(_ts, wait_for_system_duration=timedelta(milliseconds=WATERMARK_MS))


def _kind(kind: str):
    def parse(line: str) -> dict | None:
        row = loads(line)
        return row if row["type"] == kind else None

    return parse


def _bids(flow: Dataflow, path: str):
    lines = op.input("in", flow, FileSource(path, batch_size=BATCH))
    return op.filter_map("bids", lines, _kind("bid"))


def _window_ms(window_id: int, size: int, every: int) -> tuple[int, int]:
    start = window_id * every
    return start, start + size


def build(query: str, path: str, out: str) -> Dataflow:
    flow = Dataflow(f"nexmark-{query}")
    sink = LinesSink(out)
    if query in ("q0", "q1", "q2"):
        lines = op.input("in", flow, FileSource(path, batch_size=BATCH))
        if query == "q0":
            def f(line: str) -> dict | None:
                b = loads(line)
                if b["type"] != "bid":
                    return None
                return {"auction": b["auction"], "bidder": b["bidder"], "price": b["price"],
                        "dateTime": b["dateTime"], "extra": b["extra"]}
        elif query == "q1":
            def f(line: str) -> dict | None:
                b = loads(line)
                if b["type"] != "bid":
                    return None
                return {"auction": b["auction"], "bidder": b["bidder"], "price": b["price"] * 0.908,
                        "dateTime": b["dateTime"], "extra": b["extra"]}
        else:
            def f(line: str) -> dict | None:
                b = loads(line)
                if b["type"] != "bid":
                    return None
                return {"auction": b["auction"], "price": b["price"]} if b["auction"] % 123 == 0 else None
        op.output("out", op.filter_map("query", lines, f), sink)
        return flow

    if query == "q5":
        bids = op.key_on("all", _bids(flow, path), lambda _b: "all")

        def add(acc: dict, b: dict) -> dict:
            a = b["auction"]
            acc[a] = acc.get(a, 0) + 1
            return acc

        def merge(x: dict, y: dict) -> dict:
            for a, c in y.items():
                x[a] = x.get(a, 0) + c
            return x

        counts = win.fold_window(
            "count", bids, _clock(),
            win.SlidingWindower(length=timedelta(milliseconds=WINDOW_MS), offset=timedelta(milliseconds=HOP_MS),
                                align_to=EPOCH),
            dict, add, merge)

        def hot(key_wid_acc):
            _key, (wid, acc) = key_wid_acc
            start, end = _window_ms(wid, WINDOW_MS, HOP_MS)
            top = max(acc.values())
            return [{"auction": a, "num": c, "window_start": start, "window_end": end}
                    for a, c in acc.items() if c == top]

        op.output("out", op.flat_map("hot", counts.down, hot), sink)
        return flow

    if query == "q7":
        bids = op.key_on("all", _bids(flow, path), lambda _b: "all")

        def add(acc: list, b: dict) -> list:
            p = b["price"]
            if p > acc[0]:
                acc[0] = p
                acc[1] = [b]
            elif p == acc[0]:
                acc[1].append(b)
            return acc

        def merge(x: list, y: list) -> list:  # tumbling windows never merge
            raise AssertionError("no merge in tumbling windows")

        top = win.fold_window(
            "max", bids, _clock(),
            win.TumblingWindower(length=timedelta(milliseconds=WINDOW_MS), align_to=EPOCH),
            lambda: [-1, []], add, merge)

        def rows(key_wid_acc):
            _key, (wid, (_p, winners)) = key_wid_acc
            end = (wid + 1) * WINDOW_MS
            return [{"auction": b["auction"], "price": b["price"], "bidder": b["bidder"],
                     "dateTime": b["dateTime"], "extra": b["extra"], "window_end": end} for b in winners]

        op.output("out", op.flat_map("rows", top.down, rows), sink)
        return flow

    if query == "q11":
        bids = op.key_on("bidder", _bids(flow, path), lambda b: str(b["bidder"]))

        def add(acc: list, b: dict) -> list:
            t = b["dateTime"]
            acc[0] += 1
            if t < acc[1]:
                acc[1] = t
            if t > acc[2]:
                acc[2] = t
            return acc

        def merge(x: list, y: list) -> list:
            return [x[0] + y[0], min(x[1], y[1]), max(x[2], y[2])]

        sessions = win.fold_window(
            "sessions", bids, _clock(), win.SessionWindower(gap=timedelta(milliseconds=WINDOW_MS - 1)),
            lambda: [0, 1 << 62, -(1 << 62)], add, merge)

        def row(key_wid_acc):
            bidder, (_wid, (n, first, last)) = key_wid_acc
            return {"bidder": int(bidder), "bid_count": n, "starttime": first, "endtime": last + WINDOW_MS}

        op.output("out", op.map("row", sessions.down, row), sink)
        return flow

    lines = op.input("in", flow, FileSource(path, batch_size=BATCH))

    def parse_pa(line: str):
        r = loads(line)
        return None if r["type"] == "bid" else r

    rows = op.filter_map("persons_auctions", lines, parse_pa)
    if query == "q3":
        def keep(r: dict) -> bool:
            if r["type"] == "person":
                return r["state"] in ("OR", "ID", "CA")
            return r["category"] == 10

        keyed = op.key_on("by_person", op.filter("where", rows, keep),
                          lambda r: str(r["id"] if r["type"] == "person" else r["seller"]))

        def join(state, r):
            # state: [person or None, auctions waiting for their seller]
            if state is None:
                state = [None, []]
            if r["type"] == "person":
                state[0] = r
                out = [{"name": r["name"], "city": r["city"], "state": r["state"], "id": a} for a in state[1]]
                state[1] = []
                return state, out
            p = state[0]
            if p is None:
                state[1].append(r["id"])
                return state, []
            return state, [{"name": p["name"], "city": p["city"], "state": p["state"], "id": r["id"]}]

        joined = op.stateful_flat_map("join", keyed, join)
        op.output("out", op.key_rm("unkey", joined), sink)
        return flow

    if query == "q8":
        persons = op.key_on("person_id", op.filter("persons", rows, lambda r: r["type"] == "person"),
                            lambda r: str(r["id"]))
        auctions = op.key_on("seller", op.filter("auctions", rows, lambda r: r["type"] == "auction"),
                             lambda r: str(r["seller"]))
        joined = win.join_window(
            "join", _clock(), win.TumblingWindower(length=timedelta(milliseconds=WINDOW_MS), align_to=EPOCH),
            persons, auctions)

        def row(key_wid_pair):
            pid, (wid, (p, a)) = key_wid_pair
            if p is None or a is None:
                return None
            return {"id": int(pid), "name": p["name"], "starttime": wid * WINDOW_MS}

        op.output("out", op.filter_map("row", joined.down, row), sink)
        return flow
    raise SystemExit(f"no bytewax plan for {query}")


def main() -> None:
    args = parse_args(PEER, QUERIES)
    events = count_lines(args.input)
    flow = build(args.query, args.input, args.out)
    t = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - t
    report(PEER, args.query, events, seconds, COUNT[0], self_peak_rss_mb(), json=JSON, workers=1)


if __name__ == "__main__":
    main()
