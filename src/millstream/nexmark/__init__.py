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

For batch work and oracles, ``bids_batch``, ``auctions_batch`` and
``persons_batch`` make the same events as Arrow tables, many at once (numpy
and pyarrow needed).
"""

from __future__ import annotations

from millstream._eventtime import WatermarkStrategy
from millstream.nexmark._config import BASE_TIME_MS, NexmarkConfig
from millstream.nexmark._generator import auctions_batch, bids_batch, event, kind_of, persons_batch
from millstream.nexmark._model import FIELDS, KINDS, Auction, Bid, Kind, Person, arrow_schema
from millstream.nexmark._source import NexmarkSource, read

#: The Flink DDL's watermark: event time from ``dateTime``, events up to 4 s out of order.
WATERMARK = WatermarkStrategy.bounded(4_000, timestamp="dateTime")

__all__ = [
    "BASE_TIME_MS",
    "FIELDS",
    "KINDS",
    "WATERMARK",
    "Auction",
    "Bid",
    "Kind",
    "NexmarkConfig",
    "NexmarkSource",
    "Person",
    "arrow_schema",
    "auctions_batch",
    "bids_batch",
    "event",
    "kind_of",
    "persons_batch",
    "read",
]
