"""Nexmark, the standard streaming benchmark: an online auction's people, auctions and bids.

The generator follows Apache Beam's: each event is a pure function of its id
(its own ``java.util.Random(id)``), out of every 50 ids 1 is a person, 3 are
auctions and 46 are bids, a few "hot" auctions, bidders and sellers get most
of the traffic, and event time advances with the configured rate from
2015-07-15T00:00:00Z. Rows are plain dicts with the specification's field
names; times are int ms since the epoch, prices int cents.

>>> import millstream as ms
>>> from millstream import nexmark
>>> config = nexmark.NexmarkConfig(events=1_000)
>>> flow = ms.Flow("bids")
>>> out = ms.testing.CollectSink()
>>> flow.source(nexmark.read(config, kind="bid"), watermark=nexmark.WATERMARK).sink(out)
>>> _ = flow.run()
>>> len(out.values), sorted(out.values[0])
(920, ['auction', 'bidder', 'dateTime', 'extra', 'price'])
>>> nexmark.event(0)["type"], nexmark.event(1)["type"], nexmark.event(4)["type"]
('person', 'auction', 'bid')

The queries q0, q1, q2, q3, q4, q5, q7, q8 and q11 are ordinary flows:
``query(name, events)`` gives the result stream of a stream of tagged events,
``build(name, source, sink)`` a whole flow, ``COLUMNS[name]`` its output columns.

For batch work and oracles, ``bids_batch``, ``auctions_batch`` and
``persons_batch`` make the same events as Arrow tables, many at once (numpy
and pyarrow needed).
"""

from __future__ import annotations

from millstream.nexmark._config import BASE_TIME_MS, NexmarkConfig
from millstream.nexmark._generator import auctions_batch, bids_batch, event, kind_of, persons_batch
from millstream.nexmark._model import FIELDS, KINDS, Auction, Bid, Kind, Person, arrow_schema
from millstream.nexmark._queries import (
    COLUMNS,
    QUERIES,
    UPDATING,
    WATERMARK,
    Query,
    build,
    collapse,
    max_auction_ms,
    q0,
    q1,
    q2,
    q3,
    q4,
    q5,
    q7,
    q8,
    q11,
    query,
)
from millstream.nexmark._source import NexmarkSource, read

__all__ = [
    "BASE_TIME_MS",
    "COLUMNS",
    "FIELDS",
    "KINDS",
    "QUERIES",
    "UPDATING",
    "WATERMARK",
    "Auction",
    "Bid",
    "Kind",
    "NexmarkConfig",
    "NexmarkSource",
    "Person",
    "Query",
    "arrow_schema",
    "auctions_batch",
    "bids_batch",
    "build",
    "collapse",
    "event",
    "kind_of",
    "max_auction_ms",
    "persons_batch",
    "q0",
    "q1",
    "q2",
    "q3",
    "q4",
    "q5",
    "q7",
    "q8",
    "q11",
    "query",
    "read",
]
