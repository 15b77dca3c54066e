"""The generator's parameters: one small frozen value, with Beam's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from millstream._time import timestamp_to_ms
from millstream.errors import ConfigError

__all__ = ["BASE_TIME_MS", "NexmarkConfig"]

#: Beam's ``NexmarkUtils.BASE_TIME``: 2015-07-15T00:00:00Z, in ms since the epoch.
BASE_TIME_MS = 1_436_918_400_000

# Constants of the reference generators (not parameters there either).
PROPORTION_DENOMINATOR = 50  # out of every 50 ids: 1 person, 3 auctions, 46 bids
PERSON_PROPORTION = 1
AUCTION_PROPORTION = 3
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
PERSON_ID_LEAD = 10
AUCTION_ID_LEAD = 10
HOT_BATCH = 100  # Beam's HOT_{AUCTION,BIDDER,SELLER}_RATIO: the size of a batch of ids with one hot member

_MAX_RATE = 2_000_000  # above it Beam's integer microsecond delay rounds to 0: event time stands still


def _check_int(name: str, value: Any, low: int, fix: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"NexmarkConfig.{name} must be an int >= {low}, not {value!r}{fix}")


@dataclass(frozen=True)
class NexmarkConfig:
    """How the Nexmark generator makes its events. The defaults are Apache Beam's.

    - ``events``: how many events a source emits (None: without end).
    - ``rate``: events per second *of event time*: event ``n`` happens at
      ``base_time + n * inter_event_delay_us // 1000`` ms. The delay is Beam's
      whole number of microseconds, ``(1_000_000 + rate // 2) // rate``, so the
      span of the data set is ``events / rate`` seconds. (Pacing against the
      wall clock is a separate choice: ``nexmark.read(..., rate=...)``.)
    - ``base_time``: the event time of event number 0, in ms since the epoch
      (a timezone-aware ``datetime`` is accepted and converted).
    - ``hot_auction_ratio``, ``hot_bidders_ratio``, ``hot_sellers_ratio``: a bid
      goes to the current hot auction with probability ``1 - 1/ratio`` (likewise
      for the hot bidder and an auction's hot seller); 1 turns the skew off.
    - ``num_active_people``, ``num_in_flight_auctions``: the windows of recent
      person and auction ids that random (not hot) choices draw from.
    - ``avg_person_bytes``, ``avg_auction_bytes``, ``avg_bid_bytes``: the
      ``extra`` padding brings the mean size of each kind near these.
    - ``out_of_order_group_size``: 1 emits in event-time order; ``g > 1``
      permutes the events inside each group of ``g`` (Beam's jitter).
    - ``first_event_id``, ``first_event_number``: Beam's id and time offsets
      (0 and 0; the Flink variant uses 1 and 1).

    >>> cfg = NexmarkConfig(events=1_000, rate=1_000)
    >>> cfg.inter_event_delay_us, cfg.span_ms
    (1000, 1000)
    """

    events: int | None = 100_000
    rate: int = 10_000
    base_time: int | datetime = BASE_TIME_MS
    hot_auction_ratio: int = 2
    hot_bidders_ratio: int = 4
    hot_sellers_ratio: int = 4
    num_active_people: int = 1_000
    num_in_flight_auctions: int = 100
    avg_person_bytes: int = 200
    avg_auction_bytes: int = 500
    avg_bid_bytes: int = 100
    out_of_order_group_size: int = 1
    first_event_id: int = 0
    first_event_number: int = 0

    def __post_init__(self) -> None:
        if self.events is not None:
            _check_int("events", self.events, 0, " (None: without end)")
        _check_int("rate", self.rate, 1, " (events per second of event time)")
        if self.rate > _MAX_RATE:
            raise ConfigError(
                f"NexmarkConfig.rate {self.rate:,} is too high: the inter-event delay is a whole number of "
                f"microseconds (as in Beam) and would round to 0, so event time would stand still. "
                f"Use a rate <= {_MAX_RATE:,}/s"
            )
        if isinstance(self.base_time, datetime):
            try:
                object.__setattr__(self, "base_time", timestamp_to_ms(self.base_time))
            except ValueError as exc:
                raise ConfigError(f"NexmarkConfig.base_time: {exc}") from None
        elif isinstance(self.base_time, bool) or not isinstance(self.base_time, int):
            raise ConfigError(
                f"NexmarkConfig.base_time must be an int of ms since the epoch or a timezone-aware datetime, "
                f"not {self.base_time!r}"
            )
        for name in ("hot_auction_ratio", "hot_bidders_ratio", "hot_sellers_ratio", "num_active_people",
                     "num_in_flight_auctions", "out_of_order_group_size"):
            _check_int(name, getattr(self, name), 1)
        for name in ("avg_person_bytes", "avg_auction_bytes", "avg_bid_bytes", "first_event_id",
                     "first_event_number"):
            _check_int(name, getattr(self, name), 0)
        if self.out_of_order_group_size % 953 == 0:
            raise ConfigError(
                "NexmarkConfig.out_of_order_group_size must not be a multiple of 953: the generator permutes "
                "a group by n * 953 % size, which is then no permutation"
            )

    # -- derived -------------------------------------------------------------------------------------
    @property
    def base_time_ms(self) -> int:
        """``base_time`` as int ms (it is always stored so after construction)."""
        base = self.base_time
        assert isinstance(base, int)
        return base

    @cached_property
    def inter_event_delay_us(self) -> int:
        """Microseconds of event time between consecutive events (Beam's ``rateToPeriodUs``)."""
        return (1_000_000 + self.rate // 2) // self.rate

    @property
    def span_ms(self) -> int | None:
        """Event time covered by ``events`` events, in ms (None when unbounded)."""
        if self.events is None:
            return None
        return self.events * self.inter_event_delay_us // 1000

    @cached_property
    def auction_horizon_events(self) -> int:
        """Events until ``num_in_flight_auctions`` more auctions exist: the scale of an auction's length."""
        return self.num_in_flight_auctions * PROPORTION_DENOMINATOR // AUCTION_PROPORTION

    # -- the time axis ---------------------------------------------------------------------------------
    def event_id(self, k: int) -> int:
        """The id of the ``k``-th event (from 0) a source of this config emits."""
        g = self.out_of_order_group_size
        n = self.first_event_number + k
        return self.first_event_id + (n // g) * g + (n * 953) % g

    def first_id(self) -> int:
        """The smallest id a source of this config emits."""
        return self.first_event_id + self.first_event_number

    def event_time(self, event_id: int) -> int:
        """The event time (ms since the epoch) of the event with ``event_id``."""
        return self.base_time_ms + ((event_id - self.first_event_id) * self.inter_event_delay_us) // 1000
