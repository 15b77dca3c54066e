"""Nexmark q0, q1, q2, q3, q5, q7, q8, q11 on Pathway, over millstream's JSON-lines events file.

Runs in a separate venv (Pathway is not a millstream dependency)::

    python -m venv /tmp/peers
    /tmp/peers/bin/pip install -r benchmarks/nexmark/peers/requirements.txt
    taskset -c 1 /tmp/peers/bin/python benchmarks/nexmark/peers/pathway_nexmark.py \\
        --query q5 --input /tmp/nexmark-1000000.jsonl --out /tmp/q5.jsonl

Prints one JSON line: {"peer", "query", "events", "seconds", "events_per_s", "peak_rss_mb", "rows_out"}.

What is timed: ``pw.run()``, i.e. reading and parsing the file (Pathway's
``pw.io.jsonlines.read`` in ``static`` mode, parsed by its Rust engine into a typed
schema), the query, and writing the result with ``pw.io.jsonlines.write`` (which
adds Pathway's ``time`` and ``diff`` columns to each row; the driver compares only
the query's columns). Not timed: interpreter start-up, imports, building the
graph, counting the input lines. One worker thread (``PATHWAY_THREADS=1`` unless
set; the driver also pins the process to one core).

Event time: the input is read as one static (bounded) table, so every window is
complete when it is computed and Pathway's temporal ``behavior`` (its form of a
watermark: ``cutoff``/``delay`` relative to the largest time seen) has nothing to
drop; none is set. Windows are Pathway's ``windowby`` over the integer ``dateTime``
(epoch ms) with ``origin=0``, i.e. aligned to the epoch as Flink's.

Plans:

- q0/q1/q2: ``filter`` + ``select``.
- q5: ``windowby(sliding(hop=2 s, duration=10 s), instance=auction)`` count, a
  ``groupby(window)`` max, and a join on (window, count == max): every auction at the
  maximum, ties included.
- q7: ``windowby(tumbling(10 s))`` max price, joined back to the bids on (window, price).
- q11: ``windowby(session(max_gap=10 s), instance=bidder)``; Pathway groups adjacent
  events with ``b - a < max_gap`` (millstream's rule); ``endtime = last + 10 s``.
- q3: ``join`` of filtered persons and auctions on seller = id.
- q8: persons and auctions grouped by (id, 10 s window) and joined.

Pathway reserves ``id`` for its row key: the events' ``id`` is read as ``pid``
(``json_field_paths``), and q3/q8 write their ``id`` column as ``id_``, renamed to
``id`` in the output file after the timed run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("PATHWAY_THREADS", "1")

import pathway as pw
from _common import AUCTION_SKIP, HOP_MS, WINDOW_MS, count_lines, parse_args, report, self_peak_rss_mb

PEER = "pathway"
QUERIES = ("q0", "q1", "q2", "q3", "q5", "q7", "q8", "q11")


def _opt(t):  # a column that only some event types have
    return pw.column_definition(dtype=t | None, default_value=None)


class Event(pw.Schema):
    type: str
    # bid
    auction: int | None = _opt(int)
    bidder: int | None = _opt(int)
    price: int | None = _opt(int)
    # all
    dateTime: int
    extra: str
    # person (and auction) "id": read into "pid", as Pathway's tables reserve ``id`` for the row key
    pid: int | None = _opt(int)
    name: str | None = _opt(str)
    emailAddress: str | None = _opt(str)
    creditCard: str | None = _opt(str)
    city: str | None = _opt(str)
    state: str | None = _opt(str)
    # auction
    itemName: str | None = _opt(str)
    description: str | None = _opt(str)
    initialBid: int | None = _opt(int)
    reserve: int | None = _opt(int)
    expires: int | None = _opt(int)
    seller: int | None = _opt(int)
    category: int | None = _opt(int)


def bids_of(events: pw.Table) -> pw.Table:
    return events.filter(events.type == "bid").select(
        auction=pw.unwrap(pw.this.auction), bidder=pw.unwrap(pw.this.bidder), price=pw.unwrap(pw.this.price),
        dateTime=pw.this.dateTime, extra=pw.this.extra)


def build(query: str, events: pw.Table) -> pw.Table:
    if query in ("q0", "q1", "q2"):
        bids = bids_of(events)
        if query == "q0":
            return bids
        if query == "q1":
            return bids.select(pw.this.auction, pw.this.bidder, price=pw.this.price * 0.908, dateTime=pw.this.dateTime,
                               extra=pw.this.extra)
        return bids.filter(bids.auction % AUCTION_SKIP == 0).select(pw.this.auction, pw.this.price)
    if query == "q5":
        bids = bids_of(events)
        counts = bids.windowby(
            bids.dateTime, window=pw.temporal.sliding(hop=HOP_MS, duration=WINDOW_MS, origin=0),
            instance=bids.auction,
        ).reduce(auction=pw.this._pw_instance, window_start=pw.this._pw_window_start,
                 window_end=pw.this._pw_window_end, num=pw.reducers.count())
        top = counts.groupby(counts.window_start).reduce(counts.window_start, maxn=pw.reducers.max(counts.num))
        return counts.join(top, counts.window_start == top.window_start, counts.num == top.maxn).select(
            counts.auction, counts.num, counts.window_start, counts.window_end)
    if query == "q7":
        bids = bids_of(events)
        top = bids.windowby(bids.dateTime, window=pw.temporal.tumbling(duration=WINDOW_MS, origin=0)).reduce(
            window_start=pw.this._pw_window_start, window_end=pw.this._pw_window_end,
            maxprice=pw.reducers.max(pw.this.price))
        keyed = bids.with_columns(window_start=bids.dateTime - bids.dateTime % WINDOW_MS)
        return keyed.join(top, keyed.window_start == top.window_start, keyed.price == top.maxprice).select(
            keyed.auction, keyed.price, keyed.bidder, keyed.dateTime, keyed.extra, top.window_end)
    if query == "q11":
        bids = bids_of(events)
        return bids.windowby(bids.dateTime, window=pw.temporal.session(max_gap=WINDOW_MS),
                             instance=bids.bidder).reduce(
            bidder=pw.this._pw_instance, bid_count=pw.reducers.count(), starttime=pw.this._pw_window_start,
            endtime=pw.this._pw_window_end + WINDOW_MS)
    if query == "q3":
        persons = events.filter((events.type == "person")
                                & ((events.state == "OR") | (events.state == "ID") | (events.state == "CA")))
        auctions = events.filter((events.type == "auction") & (events.category == 10))
        return auctions.join(persons, auctions.seller == persons.pid).select(
            name=persons.name, city=persons.city, state=persons.state, id_=auctions.pid)
    if query == "q8":
        persons = events.filter(events.type == "person").select(
            pid=pw.unwrap(pw.this.pid), name=pw.unwrap(pw.this.name),
            starttime=pw.this.dateTime - pw.this.dateTime % WINDOW_MS)
        p = persons.groupby(persons.pid, persons.name, persons.starttime).reduce(
            persons.pid, persons.name, persons.starttime)
        auctions = events.filter(events.type == "auction").select(
            seller=pw.unwrap(pw.this.seller), starttime=pw.this.dateTime - pw.this.dateTime % WINDOW_MS)
        a = auctions.groupby(auctions.seller, auctions.starttime).reduce(auctions.seller, auctions.starttime)
        return p.join(a, p.pid == a.seller, p.starttime == a.starttime).select(id_=p.pid, name=p.name,
                                                                                 starttime=p.starttime)
    raise SystemExit(f"no pathway plan for {query}")


def rename_id(path: str) -> None:
    """Pathway cannot name a column ``id`` (its row key); the spec's ``id`` is written as ``id_``
    and renamed here, after the timed run."""
    import json

    with open(path) as f:
        rows = [json.loads(line) for line in f]
    with open(path, "w") as f:
        for r in rows:
            r["id"] = r.pop("id_")
            f.write(json.dumps(r) + "\n")


def main() -> None:
    args = parse_args(PEER, QUERIES)
    n = count_lines(args.input)
    events = pw.io.jsonlines.read(args.input, schema=Event, mode="static", json_field_paths={"pid": "/id"})
    result = build(args.query, events)
    pw.io.jsonlines.write(result, args.out)
    t = time.perf_counter()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    seconds = time.perf_counter() - t
    if args.query in ("q3", "q8"):
        rename_id(args.out)
    rows = count_lines(args.out)
    report(PEER, args.query, n, seconds, rows, self_peak_rss_mb(), threads=int(os.environ["PATHWAY_THREADS"]))


if __name__ == "__main__":
    main()
