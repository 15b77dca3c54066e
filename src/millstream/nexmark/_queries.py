"""The Nexmark queries as ordinary flows over the public API.

Each query is a function of the stream of tagged events (``{"type": "person" |
"auction" | "bid", ...}``, event time from ``dateTime``) that returns the stream
of its result rows, with the columns of :data:`COLUMNS`. Field-level work is
written with expressions, so that every executor can compile it; the joins are
the engine's window, interval and regular joins.

>>> import millstream as ms
>>> from millstream import nexmark
>>> out = ms.testing.CollectSink()
>>> flow = nexmark.build("q2", nexmark.read(nexmark.NexmarkConfig(events=10_000)), out)
>>> _ = flow.run()
>>> out.values[:2]
[{'auction': 1230, 'price': 1599}, {'auction': 1230, 'price': 129}]
>>> nexmark.COLUMNS["q2"]
('auction', 'price')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import millstream.agg as agg
import millstream.state as mstate
import millstream.windows as windows
from millstream._api import Flow, Stream
from millstream._eventtime import WatermarkStrategy
from millstream._expr import col
from millstream.connectors._base import Sink, Source
from millstream.errors import ConfigError
from millstream.nexmark._config import NexmarkConfig

__all__ = ["COLUMNS", "QUERIES", "UPDATING", "WATERMARK", "Query", "build", "collapse", "max_auction_ms", "query"]

#: The Flink DDL's watermark: event time from ``dateTime``, events up to 4 s out of order.
WATERMARK = WatermarkStrategy.bounded(4_000, timestamp="dateTime")

_WINDOW = 10_000  # the queries' window size (and q11's session gap), ms
_SLIDE = 2_000  # q5's hop
_AUCTION_SKIP = 123  # q2
_Q3_STATES = ("OR", "ID", "CA")
_Q3_CATEGORY = 10


# -- the queries ------------------------------------------------------------------------------------


def _of(events: Stream, kind: str, *fields: str) -> Stream:
    """The events of ``kind`` (the DDL's views), with just ``fields``: what a query needs, and no more state."""
    return events.filter(col("type") == kind, name=f"{kind}s").select(*fields, name=kind)


def q0(events: Stream, **_: Any) -> Stream:
    """Pass-through: every bid."""
    return _of(events, "bid", "auction", "bidder", "price", "dateTime", "extra")


def q1(events: Stream, **_: Any) -> Stream:
    """Currency conversion: every bid with ``price * 0.908`` (a float, as the Flink SQL's DOUBLE)."""
    return _of(events, "bid", "auction", "bidder", "price", "dateTime", "extra").with_columns(
        price=col("price") * 0.908, name="to-euro")


def q2(events: Stream, **_: Any) -> Stream:
    """Selection: the bids on every 123rd auction."""
    return (events.filter((col("type") == "bid") & (col("auction") % _AUCTION_SKIP == 0), name="bids-on-123th")
            .select("auction", "price", name="q2"))


def q3(events: Stream, **_: Any) -> Stream:
    """Local item suggestion: people in OR, ID or CA who sell in category 10 (a regular join)."""
    people = (events.filter((col("type") == "person") & col("state").is_in(list(_Q3_STATES)),
                            name="persons-or-id-ca")
              .select("id", "name", "city", "state", name="person"))
    sold = (events.filter((col("type") == "auction") & (col("category") == _Q3_CATEGORY), name="auctions-cat-10")
            .select("seller", auction=col("id"), name="auction"))
    joined = people.key_by("id").join(sold.key_by("seller"), name="seller-join")
    return joined.select("name", "city", "state", id=col("auction"), name="q3")


def q4(events: Stream, *, max_auction_ms: int | None = None, **_: Any) -> Stream:
    """Average price per category: the mean over auctions of each auction's highest bid within its lifetime.

    An updating result: each change of a category's average is emitted, so the
    last row of a category is its final value. With ``max_auction_ms`` (the
    longest an auction can last, see :func:`max_auction_ms`) the join of auctions
    and bids is an interval join whose state is bounded; without it, a regular
    join that keeps everything (exact for any input).
    """
    opened = _of(events, "auction", "id", "dateTime", "expires", "category")
    offers = _of(events, "bid", "auction", "price", "dateTime").select(
        "auction", "price", bid_time=col("dateTime"), name="bid-time")
    left, right = opened.key_by("id"), offers.key_by("auction")
    if max_auction_ms is None:
        pairs = left.join(right, name="auction-bids")
    else:
        pairs = left.interval_join(right, lower=0, upper=max_auction_ms, name="auction-bids")
    in_time = pairs.filter((col("bid_time") >= col("dateTime")) & (col("bid_time") <= col("expires")),
                           name="bid-in-lifetime")
    return (in_time.key_by("category")
            .process(_category_average, state={"best": mstate.map(), "total": mstate.value(default=(0, 0))},
                     name="category-average"))


def _category_average(ctx: Any, pair: dict[str, Any]) -> None:
    """Keyed by category: keep each auction's best price, and emit the category's new average on a change."""
    best = ctx.state["best"]
    auction, price = pair["id"], pair["price"]
    old = best.get(auction)
    if old is not None and old >= price:
        return
    best.put(auction, price)
    total, n = ctx.state["total"].value()
    total, n = (total + price, n + 1) if old is None else (total + price - old, n)
    ctx.state["total"].update((total, n))
    ctx.emit({"category": ctx.key, "avg": total / n})


def q5(events: Stream, **_: Any) -> Stream:
    """Hot items: per 10 s window sliding every 2 s, the auctions with the most bids (ties included).

    As in the SQL: bid counts per auction and window, the maximum count per
    window, and a join of the two on the window. Window results carry event time
    ``window_end - 1``, so both meet in the tumbling window of the hop that ends
    at their ``window_end``.
    """
    counts = (_of(events, "bid", "auction", "dateTime").key_by("auction")
              .window(windows.sliding(_WINDOW, every=_SLIDE), name="bids-per-auction")
              .aggregate(num=agg.count())
              .select("auction", "num", starts=col("window_start"), ends=col("window_end"), name="counts"))
    maxima = (counts.key_by("ends").window(windows.tumbling(_SLIDE), name="max-per-window")
              .aggregate(maxn=agg.max("num"))
              .select("ends", "maxn", name="maxima"))
    joined = counts.key_by("ends").window_join(maxima.key_by("ends"), windows.tumbling(_SLIDE), name="hot-join")
    return (joined.filter(col("num") >= col("maxn"), name="hottest")
            .select("auction", "num", window_start=col("starts"), window_end=col("ends"), name="q5"))


def q7(events: Stream, **_: Any) -> Stream:
    """Highest bid: per 10 s tumbling window, every bid at the window's highest price."""
    offers = _of(events, "bid", "auction", "bidder", "price", "dateTime", "extra")
    highest = (offers.window(windows.tumbling(_WINDOW), name="max-price")
               .aggregate(maxprice=agg.max("price"))
               .select("maxprice", name="highest"))
    joined = offers.key_by("price").window_join(highest.key_by("maxprice"), windows.tumbling(_WINDOW),
                                                name="price-join")
    return joined.select("auction", "price", "bidder", "dateTime", "extra", "window_end", name="q7")


def q8(events: Stream, **_: Any) -> Stream:
    """New users: people who registered and opened an auction in the same 10 s tumbling window."""
    people = _of(events, "person", "id", "name", "dateTime")
    sellers = (_of(events, "auction", "seller", "dateTime").key_by("seller")
               .window(windows.tumbling(_WINDOW), name="sellers-per-window")
               .aggregate(auctions=agg.count())
               .select("seller", name="sellers"))
    joined = people.key_by("id").window_join(sellers.key_by("seller"), windows.tumbling(_WINDOW),
                                             name="new-seller-join")
    return joined.select("id", "name", starttime=col("window_start"), name="q8")


def q11(events: Stream, **_: Any) -> Stream:
    """User sessions: bids per bidder per session (a 10 s gap closes one)."""
    return (_of(events, "bid", "bidder", "dateTime").key_by("bidder")
            .window(windows.session(_WINDOW), name="sessions")
            .aggregate(bid_count=agg.count())
            .select("bidder", "bid_count", starttime=col("window_start"), endtime=col("window_end"), name="q11"))


# -- the catalogue -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One Nexmark query: its function of the event stream, its output columns, its key if it updates."""

    name: str
    fn: Callable[..., Stream]
    columns: tuple[str, ...]
    #: for an updating result, the columns that identify a row of the final table (the last row per key wins)
    key: tuple[str, ...] | None = None

    @property
    def description(self) -> str:
        doc = self.fn.__doc__ or ""
        return doc.strip().splitlines()[0] if doc.strip() else self.name


QUERIES: dict[str, Query] = {q.name: q for q in (
    Query("q0", q0, ("auction", "bidder", "price", "dateTime", "extra")),
    Query("q1", q1, ("auction", "bidder", "price", "dateTime", "extra")),
    Query("q2", q2, ("auction", "price")),
    Query("q3", q3, ("name", "city", "state", "id")),
    Query("q4", q4, ("category", "avg"), key=("category",)),
    Query("q5", q5, ("auction", "num", "window_start", "window_end")),
    Query("q7", q7, ("auction", "price", "bidder", "dateTime", "extra", "window_end")),
    Query("q8", q8, ("id", "name", "starttime")),
    Query("q11", q11, ("bidder", "bid_count", "starttime", "endtime")),
)}

#: The output columns of each query.
COLUMNS: dict[str, tuple[str, ...]] = {name: q.columns for name, q in QUERIES.items()}

#: The updating queries and the key of their final table.
UPDATING: dict[str, tuple[str, ...]] = {name: q.key for name, q in QUERIES.items() if q.key is not None}


def collapse(rows: Iterable[dict[str, Any]], key: Sequence[str]) -> list[dict[str, Any]]:
    """The final table of an updating result: the last row of each key, in order of first appearance.

    >>> collapse([{"category": 10, "avg": 5.0}, {"category": 11, "avg": 1.0}, {"category": 10, "avg": 7.5}],
    ...          UPDATING["q4"])
    [{'category': 10, 'avg': 7.5}, {'category': 11, 'avg': 1.0}]
    """
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        last[tuple(r[k] for k in key)] = r
    return list(last.values())


def _lookup(name: Any) -> Query:
    q = QUERIES.get(name) if isinstance(name, str) else None
    if q is None:
        raise ConfigError(f"unknown Nexmark query {name!r}; choose one of {', '.join(QUERIES)}")
    return q


def max_auction_ms(config: NexmarkConfig) -> int:
    """The longest an auction made by ``config`` can last (``expires - dateTime``), in ms.

    An auction expires ``1 + next_long(2 * horizon)`` ms after it opens, where the
    horizon is the event time of ``num_in_flight_auctions * 50 // 3`` events, at
    most one ms more than that many inter-event delays.
    """
    horizon = -(-config.auction_horizon_events * config.inter_event_delay_us // 1000) + 1
    return 2 * horizon


def query(name: str, events: Stream, *, config: NexmarkConfig | None = None) -> Stream:
    """The result stream of query ``name`` over ``events``, a stream of tagged Nexmark events with event time.

    ``config`` (the generator's, when known) lets q4 bound its join state.
    """
    q = _lookup(name)
    if not events.has_event_time:
        raise ConfigError(f"Nexmark {name} needs event time: give the event source "
                          "watermark=millstream.nexmark.WATERMARK")
    return q.fn(events, max_auction_ms=None if config is None else max_auction_ms(config))


def build(name: str, source: Source, sink: Sink, *, config: NexmarkConfig | None = None,
          flow_name: str | None = None) -> Flow:
    """A flow running query ``name`` from ``source`` (tagged events: the generator, or JSON lines) into ``sink``.

    The source gets :data:`WATERMARK` (4 s of out-of-orderness, as the Flink DDL).
    ``config`` defaults to the source's, when it is the Nexmark generator.
    """
    _lookup(name)
    if config is None:
        config = getattr(source, "config", None) if isinstance(getattr(source, "config", None),
                                                                NexmarkConfig) else None
    flow = Flow(flow_name or f"nexmark-{name}")
    events = flow.source(source, watermark=WATERMARK, name="events")
    query(name, events, config=config).sink(sink, name="out")
    return flow
