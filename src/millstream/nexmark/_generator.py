"""The Nexmark generator: each event a pure function of its id, row by row or in columns.

Like Apache Beam's generator, every event draws from its own
``java.util.Random(event_id)``, so any event can be made again on demand and
two runs with the same :class:`NexmarkConfig` give the same events, bit for
bit. :func:`event` is the reference, one dict per id, in plain Python. The
``*_batch`` functions compute the same values for a range of ids at once: one
``java.util.Random`` per lane of a numpy array, all lanes stepping together
(the lanes that draw more or less, after a rejected ``nextInt`` draw or for a
longer string, step on their own). Tests check the two against each other.

>>> from millstream.nexmark import NexmarkConfig, event
>>> event(4)
{'type': 'bid', 'auction': 1000, 'bidder': 1001, 'price': ..., 'dateTime': 1436918400000, 'extra': '...'}
>>> event(4) == event(4)
True
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from millstream._runtime._codegen import Generated
from millstream.errors import ConfigError, MissingDependencyError
from millstream.nexmark._config import (
    AUCTION_ID_LEAD,
    AUCTION_PROPORTION,
    FIRST_AUCTION_ID,
    FIRST_CATEGORY_ID,
    FIRST_PERSON_ID,
    HOT_BATCH,
    NUM_CATEGORIES,
    PERSON_ID_LEAD,
    PERSON_PROPORTION,
    PROPORTION_DENOMINATOR,
    NexmarkConfig,
)
from millstream.nexmark._model import FIELDS, KINDS, Auction, Bid, Kind, Person, arrow_schema

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["JavaRandom", "auctions_batch", "bids_batch", "event", "kind_of", "persons_batch"]

DEFAULT_CONFIG = NexmarkConfig()

_FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter")
_LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris")
_CITIES = ("Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent",
           "Cheyenne")
_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
_FULL_NAMES = tuple(f"{first} {last}" for first in _FIRST_NAMES for last in _LAST_NAMES)
_MIN_STRING = 3  # shortest random string (before trimming)
_AUCTION_FIXED_SIZE = 8 + 8 + 8 + 8 + 8  # the numeric fields Beam counts towards an auction's size
_BID_SIZE = 8 + 8 + 8 + 8

# java.util.Random: a 48-bit linear congruential generator
_MULT = 0x5DEECE66D
_ADD = 0xB
_MASK = (1 << 48) - 1
_INT_LIMIT = 1 << 31  # 2**31: a Java int is below it
_INT_MAX = _INT_LIMIT - 1
_DOUBLE_UNIT = 1.0 / (1 << 53)


class JavaRandom:
    """``java.util.Random``, bit for bit (the methods Nexmark uses).

    >>> r = JavaRandom(42)
    >>> [r.next_int(10) for _ in range(5)]
    [0, 3, 8, 4, 0]
    """

    __slots__ = ("seed",)

    def __init__(self, seed: int) -> None:
        self.seed = (seed ^ _MULT) & _MASK

    def next(self, bits: int) -> int:
        """``next(bits)``: the top ``bits`` of the new state, as a Java int (signed when ``bits == 32``)."""
        self.seed = s = (self.seed * _MULT + _ADD) & _MASK
        v = s >> (48 - bits)
        return v - (1 << 32) if bits == 32 and v >= _INT_LIMIT else v

    def next_int(self, bound: int) -> int:
        """``nextInt(bound)``: uniform in ``[0, bound)`` (power-of-two path, rejection otherwise)."""
        self.seed = s = (self.seed * _MULT + _ADD) & _MASK
        r = s >> 17
        m = bound - 1
        if bound & m == 0:
            return (bound * r) >> 31
        v = r % bound
        while r - v + m > _INT_MAX:  # Java: u - r + m < 0, an int overflow
            self.seed = s = (s * _MULT + _ADD) & _MASK
            r = s >> 17
            v = r % bound
        return v

    def next_long(self) -> int:
        """``nextLong()``: a signed 64-bit value."""
        v = (self.next(32) << 32) + self.next(32)
        return (v + (1 << 63)) % (1 << 64) - (1 << 63)

    def next_double(self) -> float:
        """``nextDouble()``: uniform in ``[0, 1)`` with 53 random bits."""
        return ((self.next(26) << 27) + self.next(27)) * _DOUBLE_UNIT


# -- helpers shared by both generators ----------------------------------------------------------------


def _round_half_up(x: float) -> int:
    """Java's ``Math.round(double)``: exactly ``floor(x + 1/2)`` (no rounding error in the addition)."""
    f = math.floor(x)
    return f + 1 if x - f >= 0.5 else f


def _price(d: float) -> int:
    """Beam's ``nextPrice`` from its ``nextDouble``: log-uniform cents from 100 to 10**8."""
    return _round_half_up(math.pow(10.0, d * 6.0) * 100.0)


def _extra_params(current: int, average: int) -> tuple[int, int] | None:
    """``(minimum size, 2 * delta)`` of ``nextExtra``; None when the record is already large enough."""
    if current > average:
        return None
    d = average - current
    delta = _round_half_up(d * 0.2)
    return d - delta, 2 * delta


def last_base0_person_id(event_id: int) -> int:
    """The newest person id (from 0) at ``event_id``: the person made by it, when it is a person."""
    epoch, offset = divmod(event_id, PROPORTION_DENOMINATOR)
    return epoch * PERSON_PROPORTION + min(offset, PERSON_PROPORTION - 1)


def last_base0_auction_id(event_id: int) -> int:
    """The newest auction id (from 0) at ``event_id``: the auction made by it, when it is an auction."""
    epoch, offset = divmod(event_id, PROPORTION_DENOMINATOR)
    if offset < PERSON_PROPORTION:
        epoch -= 1
        offset = AUCTION_PROPORTION - 1
    elif offset >= PERSON_PROPORTION + AUCTION_PROPORTION:
        offset = AUCTION_PROPORTION - 1
    else:
        offset -= PERSON_PROPORTION
    return epoch * AUCTION_PROPORTION + offset


def kind_of(event_id: int) -> Kind:
    """The kind of the event with ``event_id``: of every 50 ids, 1 person, 3 auctions, 46 bids.

    >>> [kind_of(i) for i in (0, 1, 3, 4, 49, 50)]
    ['person', 'auction', 'auction', 'bid', 'bid', 'person']
    """
    rem = event_id % PROPORTION_DENOMINATOR
    if rem < PERSON_PROPORTION:
        return "person"
    if rem < PERSON_PROPORTION + AUCTION_PROPORTION:
        return "auction"
    return "bid"


# -- the row generator (the reference) ----------------------------------------------------------------

_LETTERS = tuple(chr(ord("a") + i) for i in range(26))
# nextExactString turns each 32-bit draw into 6 letters 'a' + rnd % 26, rnd /= 26, with Java's truncating
# division: a negative draw gives letters at or below 'a'. Two letters at a time from a table of 26**2 pairs.
_PAIRS_POS = tuple(chr(97 + i % 26) + chr(97 + i // 26) for i in range(676))
_PAIRS_NEG = tuple(chr(97 - i % 26) + chr(97 - i // 26) for i in range(676))


def _long_below(rng: JavaRandom, n: int) -> int:
    """Beam's ``LongGenerator.nextLong(random, n)``: in ``[0, n)``."""
    if n < _INT_MAX:
        return rng.next_int(n)
    return abs(rng.next_long()) % n  # = Math.abs(nextLong() % n), Java's remainder keeping the sign


def _string(rng: JavaRandom, max_length: int) -> str:
    """Beam's ``nextString``: 3 to ``max_length - 1`` letters or spaces (1 in 13), trimmed."""
    n = _MIN_STRING + rng.next_int(max_length - _MIN_STRING)
    next_int = rng.next_int
    letters = _LETTERS
    return "".join([" " if next_int(13) == 0 else letters[next_int(26)] for _ in range(n)]).strip(" ")


def _exact_string(rng: JavaRandom, length: int) -> str:
    """Beam's ``nextExactString``: ``length`` characters, six from each 32-bit draw."""
    parts: list[str] = []
    append = parts.append
    seed = rng.seed
    for _ in range((length + 5) // 6):
        seed = (seed * _MULT + _ADD) & _MASK  # rng.next(32), inlined: this loop is the row generator's hot spot
        rnd = seed >> 16
        table = _PAIRS_POS
        if rnd >= _INT_LIMIT:  # a negative Java int
            rnd = (1 << 32) - rnd
            table = _PAIRS_NEG
        append(table[rnd % 676])
        append(table[rnd // 676 % 676])
        append(table[rnd // 456_976 % 676])
    rng.seed = seed
    text = "".join(parts)
    return text if len(text) == length else text[:length]


def _extra(rng: JavaRandom, current: int, average: int) -> str:
    """Beam's ``nextExtra``: padding so that records average ``average`` bytes."""
    params = _extra_params(current, average)
    if params is None:
        return ""
    low, spread = params
    return _exact_string(rng, low + (rng.next_int(spread) if spread else 0))


def _base0_person_id(rng: JavaRandom, event_id: int, cfg: NexmarkConfig) -> int:
    """A random recent person id (from 0), up to ``PERSON_ID_LEAD`` ids ahead of the newest."""
    num = last_base0_person_id(event_id) + 1
    active = min(num, cfg.num_active_people)
    return num - active + _long_below(rng, active + PERSON_ID_LEAD)


def _base0_auction_id(rng: JavaRandom, event_id: int, cfg: NexmarkConfig) -> int:
    """A random auction id (from 0) among those likely in flight, plus a few ahead."""
    hi = last_base0_auction_id(event_id)
    lo = max(hi - cfg.num_in_flight_auctions, 0)
    return lo + _long_below(rng, hi - lo + 1 + AUCTION_ID_LEAD)


def person(event_id: int, cfg: NexmarkConfig) -> Person:
    """The person of ``event_id`` (whatever its kind: callers pick person ids)."""
    rng = JavaRandom(event_id)
    name = _FIRST_NAMES[rng.next_int(11)] + " " + _LAST_NAMES[rng.next_int(9)]
    email = _string(rng, 7) + "@" + _string(rng, 5) + ".com"
    card = " ".join([f"{rng.next_int(10_000):04d}" for _ in range(4)])
    city = _CITIES[rng.next_int(10)]
    state = _STATES[rng.next_int(6)]
    size = 8 + len(name) + len(email) + len(card) + len(city) + len(state)
    return {
        "id": last_base0_person_id(event_id) + FIRST_PERSON_ID,
        "name": name,
        "emailAddress": email,
        "creditCard": card,
        "city": city,
        "state": state,
        "dateTime": cfg.event_time(event_id),
        "extra": _extra(rng, size, cfg.avg_person_bytes),
    }


def auction(event_id: int, cfg: NexmarkConfig) -> Auction:
    """The auction of ``event_id``."""
    rng = JavaRandom(event_id)
    if rng.next_int(cfg.hot_sellers_ratio) > 0:
        seller = (last_base0_person_id(event_id) // HOT_BATCH) * HOT_BATCH  # the first of the batch
    else:
        seller = _base0_person_id(rng, event_id, cfg)
    category = FIRST_CATEGORY_ID + rng.next_int(NUM_CATEGORIES)
    initial = _price(rng.next_double())
    now = cfg.event_time(event_id)
    horizon = cfg.event_time(event_id + cfg.auction_horizon_events) - now
    expires = now + 1 + _long_below(rng, max(2 * horizon, 1))
    name = _string(rng, 20)
    description = _string(rng, 100)
    reserve = initial + _price(rng.next_double())
    return {
        "id": last_base0_auction_id(event_id) + FIRST_AUCTION_ID,
        "itemName": name,
        "description": description,
        "initialBid": initial,
        "reserve": reserve,
        "dateTime": now,
        "expires": expires,
        "seller": seller + FIRST_PERSON_ID,
        "category": category,
        "extra": _extra(rng, 8 + len(name) + len(description) + _AUCTION_FIXED_SIZE, cfg.avg_auction_bytes),
    }


def bid(event_id: int, cfg: NexmarkConfig) -> Bid:
    """The bid of ``event_id``."""
    rng = JavaRandom(event_id)
    if rng.next_int(cfg.hot_auction_ratio) > 0:
        auction_id = (last_base0_auction_id(event_id) // HOT_BATCH) * HOT_BATCH
    else:
        auction_id = _base0_auction_id(rng, event_id, cfg)
    if rng.next_int(cfg.hot_bidders_ratio) > 0:
        # the second person of the batch, so that hot bidders are not hot sellers
        bidder = (last_base0_person_id(event_id) // HOT_BATCH) * HOT_BATCH + 1
    else:
        bidder = _base0_person_id(rng, event_id, cfg)
    price = _price(rng.next_double())
    return {
        "auction": auction_id + FIRST_AUCTION_ID,
        "bidder": bidder + FIRST_PERSON_ID,
        "price": price,
        "dateTime": cfg.event_time(event_id),
        "extra": _extra(rng, _BID_SIZE, cfg.avg_bid_bytes),
    }


ROW_MAKERS: dict[Kind, Callable[[int, NexmarkConfig], Any]] = {"person": person, "auction": auction, "bid": bid}


def event(event_id: int, config: NexmarkConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """The event with ``event_id``: ``{"type": "person" | "auction" | "bid", <that kind's fields>}``.

    A pure function of the id and the config. The fields are those of
    :class:`Person`, :class:`Auction` or :class:`Bid`; times are int ms.
    """
    if isinstance(event_id, bool) or not isinstance(event_id, int) or event_id < config.first_event_id:
        raise ConfigError(f"an event id is an int >= first_event_id ({config.first_event_id}), not {event_id!r}")
    return tagged(event_id, config)


def tagged(event_id: int, cfg: NexmarkConfig) -> dict[str, Any]:
    """:func:`event` without the argument checks."""
    rem = event_id % PROPORTION_DENOMINATOR
    if rem >= PERSON_PROPORTION + AUCTION_PROPORTION:
        return {"type": "bid", **bid(event_id, cfg)}
    if rem < PERSON_PROPORTION:
        return {"type": "person", **person(event_id, cfg)}
    return {"type": "auction", **auction(event_id, cfg)}


# -- the columnar generator ---------------------------------------------------------------------------
#
# A chunk of events of one kind is made as numpy columns (``_Columns``): int64 arrays, strings as
# character matrices (``_Chars``) and strings picked from a fixed list (``_Pick``). They become an Arrow
# record batch (``*_batch``) or Python row dicts (the source) without passing through each other.

_LANES_PER_CHUNK = 1 << 14  # events made at once by *_batch: the character matrices stay in the cache


def need_numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise MissingDependencyError("numpy", "nexmark", "The columnar Nexmark generator") from None
    return numpy


def have_numpy() -> bool:
    return importlib.util.find_spec("numpy") is not None


def _need_pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise MissingDependencyError("pyarrow", "nexmark", "Columnar Nexmark batches") from None
    return pyarrow


class _Chars:
    """Strings as a character matrix, one row per lane: string ``j`` is ``rows[j, start[j]:end[j]]``.

    ``start`` is None when every string starts at column 0. Characters outside
    the strings are never read (they may be anything).
    """

    __slots__ = ("end", "rows", "start")

    def __init__(self, rows: Any, start: Any, end: Any) -> None:
        self.rows = rows
        self.start = start
        self.end = end

    @property
    def lengths(self) -> Any:
        return self.end if self.start is None else self.end - self.start

    def to_list(self) -> list[str]:
        n, width = self.rows.shape
        text = self.rows.tobytes().decode("latin-1")  # one char per byte; the strings themselves are ASCII
        base = range(0, n * width, width)
        ends = [b + e for b, e in zip(base, self.end.tolist(), strict=True)]
        if self.start is None:
            return [text[b:e] for b, e in zip(base, ends, strict=True)]
        return [text[b + s:e] for b, s, e in zip(base, self.start.tolist(), ends, strict=True)]

    def to_arrow(self) -> pa.Array:
        np = need_numpy()
        pa = _need_pyarrow()
        pos = np.arange(self.rows.shape[1])[None, :]
        keep = pos < self.end[:, None]
        if self.start is not None:
            keep &= pos >= self.start[:, None]
        offsets = np.zeros(len(self.end) + 1, np.int32)
        np.cumsum(self.lengths, out=offsets[1:])
        return pa.StringArray.from_buffers(len(self.end), pa.py_buffer(offsets), pa.py_buffer(self.rows[keep]))


class _Pick:
    """Strings picked from a fixed list: string ``j`` is ``choices[index[j]]``."""

    __slots__ = ("choices", "index")

    def __init__(self, choices: tuple[str, ...], index: Any) -> None:
        self.choices = choices
        self.index = index

    def to_list(self) -> list[str]:
        choices = self.choices
        return [choices[i] for i in self.index.tolist()]

    def to_arrow(self) -> pa.Array:
        pa = _need_pyarrow()
        return pa.array(self.choices).take(pa.array(self.index))


_Columns = dict[str, Any]  # field name -> int64 array | _Chars | _Pick, in schema order


def _transpose(np: Any, matrix: Any) -> Any:
    """A contiguous copy of ``matrix.T``, a few rows at a time (much faster than at once for wide matrices)."""
    height = matrix.shape[0]
    out = np.empty((matrix.shape[1], height), matrix.dtype)
    for i in range(0, height, 8):
        out[:, i:i + 8] = matrix[i:i + 8].T
    return out


class _Lanes:
    """Many ``java.util.Random`` at once: lane ``j`` is ``Random(ids[j])``.

    The methods draw for every lane, or with ``lanes`` (indices) for those
    lanes only, and return int64 arrays with one value per drawing lane. Each
    lane sees the same sequence of draws as the row generator's ``JavaRandom``.
    """

    def __init__(self, ids: Any) -> None:
        np = self.np = need_numpy()
        self.n = len(ids)
        self.seed = (ids.astype(np.uint64) ^ np.uint64(_MULT)) & np.uint64(_MASK)

    def _stepped(self) -> Any:
        """The next state of every lane, not yet kept."""
        np = self.np
        s = self.seed * np.uint64(_MULT)  # wraps at 2**64, which keeps the low 48 bits right
        s += np.uint64(_ADD)
        s &= np.uint64(_MASK)
        return s

    def next(self, bits: int, lanes: Any = None) -> Any:
        np = self.np
        if lanes is None:
            s = self.seed = self._stepped()
        else:
            s = (self.seed[lanes] * np.uint64(_MULT) + np.uint64(_ADD)) & np.uint64(_MASK)
            self.seed[lanes] = s
        v = s >> np.uint64(48 - bits)
        if bits == 32:
            return v.astype(np.uint32).view(np.int32).astype(np.int64)
        return v.astype(np.int64)

    @staticmethod
    def _limit(bound: Any) -> Any:
        """``nextInt(bound)`` rejects a 31-bit draw at or above this (the last, partial block of 2**31)."""
        return _INT_LIMIT - _INT_LIMIT % bound

    def _redraw(self, seed: Any, v: Any, bound: Any, bad: Any) -> Any:
        """Draw again for the lanes ``bad`` of ``seed`` (an array or a view), which ``nextInt`` rejected."""
        np = self.np
        while bad.size:
            b = bound if isinstance(bound, int) else bound[bad]
            s = (seed[bad] * np.uint64(_MULT) + np.uint64(_ADD)) & np.uint64(_MASK)
            seed[bad] = s
            u = (s >> np.uint64(17)).view(np.int64)
            v[bad] = u % b
            bad = bad[u >= self._limit(b)]
        return v

    def next_int(self, bound: Any, lanes: Any = None) -> Any:
        """``nextInt(bound)``; ``bound`` one int, or an array with one per drawing lane."""
        np = self.np
        r = self.next(31, lanes)
        if isinstance(bound, int):
            if bound & (bound - 1) == 0:
                return (r * bound) >> 31
            v = r % bound
        else:
            v = np.where((bound & (bound - 1)) == 0, (r * bound) >> 31, r % bound)
        bad = r >= self._limit(bound)
        if not bad.any():
            return v
        if lanes is None:
            return self._redraw(self.seed, v, bound, np.flatnonzero(bad))
        seed = self.seed[lanes]
        v = self._redraw(seed, v, bound, np.flatnonzero(bad))
        self.seed[lanes] = seed
        return v

    def string(self, max_length: int) -> _Chars:
        """Beam's ``nextString(max_length)`` for every lane.

        The lanes are sorted by length (longest first), so that the lanes still
        drawing at position ``p`` are a prefix: each step works on a slice.
        """
        np = self.np
        mult, add, mask, shift = np.uint64(_MULT), np.uint64(_ADD), np.uint64(_MASK), np.uint64(17)
        limit13, limit26 = self._limit(13), self._limit(26)
        length = _MIN_STRING + self.next_int(max_length - _MIN_STRING)
        order = np.argsort(-length, kind="stable")
        seed = self.seed[order]
        width = max_length - 1
        drawing = np.searchsorted(-length[order], -np.arange(width), side="left")  # lanes with length > p
        cols = np.full((width, self.n), 32, np.uint8)
        for p in range(width):
            m = int(drawing[p])
            if m == 0:
                break
            s = seed[:m]
            s *= mult
            s += add
            s &= mask
            r = (s >> shift).view(np.int64)
            v = r % 13
            if (r >= limit13).any():
                v = self._redraw(s, v, 13, np.flatnonzero(r >= limit13))
            letter = v != 0  # else a space
            t = s * mult
            t += add
            t &= mask
            np.copyto(s, t, where=letter)
            r = (t >> shift).view(np.int64)
            c = r % 26
            if ((r >= limit26) & letter).any():
                c = self._redraw(s, c, 26, np.flatnonzero((r >= limit26) & letter))
            c += 97
            np.copyto(cols[p, :m], c, where=letter, casting="unsafe")
        self.seed[order] = seed
        rows = np.empty((self.n, width), np.uint8)
        rows[order] = _transpose(np, cols)
        # trim the spaces at both ends (past its length a lane holds spaces too)
        solid = rows != 32
        some = solid.any(axis=1)
        start = np.where(some, solid.argmax(axis=1), 0)
        end = np.where(some, width - solid[:, ::-1].argmax(axis=1), 0)
        return _Chars(rows, start, end)

    def last_exact_string(self, length: Any) -> _Chars:
        """Beam's ``nextExactString(length)`` for every lane, as the lanes' last draws.

        The lanes that need fewer draws step along with the others: nothing is
        drawn after the padding, so their states no longer matter.
        """
        np = self.np
        n = self.n
        most = int(((length + 5) // 6).max(initial=0))
        rows = np.empty((n, 6 * most), np.uint8)
        block = np.empty((6, n), np.uint8)  # the 6 characters of one draw, lane by lane
        s = self.seed
        x = np.empty(n, np.float64)
        q = np.empty(n, np.float64)
        for j in range(most):
            s *= np.uint64(_MULT)
            s += np.uint64(_ADD)
            s &= np.uint64(_MASK)
            x[:] = (s >> np.uint64(16)).astype(np.uint32).view(np.int32)
            for t in range(6):
                # Java: 'a' + rnd % 26, then rnd /= 26, both rounding towards zero; in float64 this is exact
                np.multiply(x, 1 / 26, out=q)
                np.trunc(q, out=q)
                x -= 26 * q
                x += 97
                block[t] = x
                x, q = q, x
            rows[:, 6 * j:6 * j + 6] = block.T  # a narrow transpose stays in the cache
        return _Chars(rows, None, length)

    def next_double(self, lanes: Any = None) -> Any:
        hi = self.next(26, lanes)
        lo = self.next(27, lanes)
        return ((hi << 27) + lo) * _DOUBLE_UNIT

    def long_below(self, n: Any, lanes: Any = None) -> Any:
        """Beam's ``LongGenerator.nextLong(random, n)`` for each drawing lane."""
        np = self.np
        small = n < _INT_MAX
        if small.all():
            return self.next_int(n, lanes)
        out = np.empty(len(n), np.int64)
        where = np.arange(self.n) if lanes is None else lanes
        s = np.flatnonzero(small)
        out[s] = self.next_int(n[s], where[s])
        b = np.flatnonzero(~small)
        hi = self.next(32, where[b])
        lo = self.next(32, where[b])
        with np.errstate(over="ignore"):
            v = (hi << 32) + lo  # wraps like a Java long
        out[b] = np.abs(np.fmod(v, n[b]))
        return out

    def price(self) -> Any:
        """Beam's ``nextPrice`` for every lane."""
        np = self.np
        d = self.next_double()
        x = np.power(10.0, d * 6.0) * 100.0
        f = np.floor(x)
        frac = x - f
        out = (f + (frac >= 0.5)).astype(np.int64)
        # numpy's power may differ from C's pow (used by the row generator) in the last bit: where that could
        # change the rounding, take the row generator's value
        for j in np.flatnonzero(np.abs(frac - 0.5) <= x * 2.0**-40).tolist():
            out[j] = _price(float(d[j]))
        return out

    def last_extra(self, current: Any, average: int) -> _Chars:
        """Beam's ``nextExtra(current, average)`` for every lane, as the lanes' last draws."""
        np = self.np
        d = average - current
        x = d * 0.2
        delta = np.floor(x)
        delta = (delta + (x - delta >= 0.5)).astype(np.int64)  # Math.round, as _round_half_up
        size = np.where(current > average, 0, d - delta)
        drawing = np.flatnonzero((current <= average) & (delta > 0))
        size[drawing] += self.next_int(2 * delta[drawing], drawing)
        return self.last_exact_string(size)


def _concat(np: Any, pieces: list[_Chars | str]) -> _Chars:
    """Join strings lane by lane: each piece is a ``_Chars`` or a constant."""
    n = next(len(p.end) for p in pieces if isinstance(p, _Chars))
    lengths = [p.lengths if isinstance(p, _Chars) else np.full(n, len(p), np.int64) for p in pieces]
    total = np.sum(lengths, axis=0)
    rows = np.zeros((n, int(total.max(initial=0))), np.uint8)
    at = np.zeros(n, np.int64)
    lanes = np.arange(n)
    for piece, length in zip(pieces, lengths, strict=True):
        if isinstance(piece, str):
            for c, byte in enumerate(piece.encode("ascii")):
                rows[lanes, at + c] = byte
        else:
            start = np.zeros(n, np.int64) if piece.start is None else piece.start
            for c in range(int(length.max(initial=0))):
                has = np.flatnonzero(length > c)
                rows[has, at[has] + c] = piece.rows[has, start[has] + c]
        at += length
    return _Chars(rows, None, total)


def _last_person(np: Any, ids: Any) -> Any:
    epoch, offset = np.divmod(ids, PROPORTION_DENOMINATOR)
    return epoch * PERSON_PROPORTION + np.minimum(offset, PERSON_PROPORTION - 1)


def _last_auction(np: Any, ids: Any) -> Any:
    epoch, offset = np.divmod(ids, PROPORTION_DENOMINATOR)
    before = offset < PERSON_PROPORTION
    after = offset >= PERSON_PROPORTION + AUCTION_PROPORTION
    offset = np.where(before | after, AUCTION_PROPORTION - 1, offset - PERSON_PROPORTION)
    return (epoch - before) * AUCTION_PROPORTION + offset


def _times(cfg: NexmarkConfig, ids: Any) -> Any:
    return cfg.base_time_ms + ((ids - cfg.first_event_id) * cfg.inter_event_delay_us) // 1000


def _random_person(np: Any, rng: _Lanes, ids: Any, lanes: Any, cfg: NexmarkConfig) -> Any:
    num = _last_person(np, ids[lanes]) + 1
    active = np.minimum(num, cfg.num_active_people)
    return num - active + rng.long_below(active + PERSON_ID_LEAD, lanes)


_NAME_LENGTHS = tuple(len(x) for x in _FULL_NAMES)
_CITY_LENGTHS = tuple(len(x) for x in _CITIES)


def _person_columns(np: Any, ids: Any, cfg: NexmarkConfig, extra: bool = True) -> _Columns:
    rng = _Lanes(ids)
    n = len(ids)
    name = rng.next_int(len(_FIRST_NAMES)) * len(_LAST_NAMES)
    name += rng.next_int(len(_LAST_NAMES))
    email = _concat(np, [rng.string(7), "@", rng.string(5), ".com"])
    card = np.full((n, 19), 32, np.uint8)  # "dddd dddd dddd dddd"
    for group in range(4):
        number = rng.next_int(10_000)
        for digit in range(4):
            card[:, 5 * group + 3 - digit] = 48 + number // 10**digit % 10
    city = rng.next_int(len(_CITIES))
    state = rng.next_int(len(_STATES))
    size = 8 + np.array(_NAME_LENGTHS)[name] + email.lengths + 19 + np.array(_CITY_LENGTHS)[city] + 2
    return {
        "id": _last_person(np, ids) + FIRST_PERSON_ID,
        "name": _Pick(_FULL_NAMES, name),
        "emailAddress": email,
        "creditCard": _Chars(card, None, np.full(n, 19, np.int64)),
        "city": _Pick(_CITIES, city),
        "state": _Pick(_STATES, state),
        "dateTime": _times(cfg, ids),
        "extra": rng.last_extra(size, cfg.avg_person_bytes) if extra else None,
    }


def _auction_columns(np: Any, ids: Any, cfg: NexmarkConfig, extra: bool = True) -> _Columns:
    rng = _Lanes(ids)
    hot = rng.next_int(cfg.hot_sellers_ratio) > 0
    seller = (_last_person(np, ids) // HOT_BATCH) * HOT_BATCH
    cold = np.flatnonzero(~hot)
    seller[cold] = _random_person(np, rng, ids, cold, cfg)
    category = FIRST_CATEGORY_ID + rng.next_int(NUM_CATEGORIES)
    initial = rng.price()
    now = _times(cfg, ids)
    horizon = _times(cfg, ids + cfg.auction_horizon_events) - now
    expires = now + 1 + rng.long_below(np.maximum(2 * horizon, 1))
    name = rng.string(20)
    description = rng.string(100)
    reserve = initial + rng.price()
    size = 8 + name.lengths + description.lengths + _AUCTION_FIXED_SIZE
    return {
        "id": _last_auction(np, ids) + FIRST_AUCTION_ID,
        "itemName": name,
        "description": description,
        "initialBid": initial,
        "reserve": reserve,
        "dateTime": now,
        "expires": expires,
        "seller": seller + FIRST_PERSON_ID,
        "category": category,
        "extra": rng.last_extra(size, cfg.avg_auction_bytes) if extra else None,
    }


def _bid_columns(np: Any, ids: Any, cfg: NexmarkConfig, extra: bool = True) -> _Columns:
    rng = _Lanes(ids)
    hot = rng.next_int(cfg.hot_auction_ratio) > 0
    last_auction = _last_auction(np, ids)
    auction_id = (last_auction // HOT_BATCH) * HOT_BATCH
    cold = np.flatnonzero(~hot)
    hi = last_auction[cold]
    lo = np.maximum(hi - cfg.num_in_flight_auctions, 0)
    auction_id[cold] = lo + rng.long_below(hi - lo + 1 + AUCTION_ID_LEAD, cold)
    hot = rng.next_int(cfg.hot_bidders_ratio) > 0
    bidder = (_last_person(np, ids) // HOT_BATCH) * HOT_BATCH + 1
    cold = np.flatnonzero(~hot)
    bidder[cold] = _random_person(np, rng, ids, cold, cfg)
    price = rng.price()
    return {
        "auction": auction_id + FIRST_AUCTION_ID,
        "bidder": bidder + FIRST_PERSON_ID,
        "price": price,
        "dateTime": _times(cfg, ids),
        "extra": rng.last_extra(np.full(len(ids), _BID_SIZE, np.int64), cfg.avg_bid_bytes) if extra else None,
    }


# ``extra`` is each kind's last draw: a maker told not to make it (extra=False) leaves None there
_COLUMN_MAKERS: dict[Kind, Callable[..., _Columns]] = {
    "person": _person_columns, "auction": _auction_columns, "bid": _bid_columns,
}


def kind_codes(np: Any, ids: Any) -> Any:
    """0, 1 or 2 (person, auction, bid) for each id."""
    rem = ids % PROPORTION_DENOMINATOR
    return (rem >= PERSON_PROPORTION).astype(np.int8) + (rem >= PERSON_PROPORTION + AUCTION_PROPORTION)


@functools.cache
def _row_builder(kind: Kind, tag: bool) -> Callable[..., list[dict[str, Any]]]:
    """A function of the column lists that makes the row dicts (a dict display is much faster than dict(zip))."""
    fields = FIELDS[kind]
    columns = ", ".join(f"c{i}" for i in range(len(fields)))
    values = ", ".join(f"v{i}" for i in range(len(fields)))
    items = ", ".join(f"{name!r}: v{i}" for i, name in enumerate(fields))
    if tag:
        items = f"'type': {kind!r}, {items}"
    code = Generated()
    code.add(0, f"def _rows({columns}):")
    code.add(1, f"return [{{{items}}} for {values} in zip({columns})]")
    fn, _ = code.compile(f"nexmark-{kind}-rows", {}, "_rows")
    return fn


def rows_of(kind: Kind, ids: Any, cfg: NexmarkConfig, *, tag: bool) -> list[dict[str, Any]]:
    """The row dicts of events ``ids`` (an int64 array, all of ``kind``), made in columns.

    With ``tag``, each row starts with ``"type": kind``, as :func:`event` gives it.
    """
    np = need_numpy()
    if not len(ids):
        return []
    columns = _COLUMN_MAKERS[kind](np, ids, cfg)
    lists = [col.tolist() if isinstance(col, np.ndarray) else col.to_list() for col in columns.values()]
    return _row_builder(kind, tag)(*lists)


def frame_of(kind: Kind, ids: Any, cfg: NexmarkConfig, columns: frozenset[str] | None = None) -> Any:
    """The events ``ids`` (an int64 array, all of ``kind``) as a polars DataFrame, made in columns.

    With ``columns``, only those of the kind's fields (a projection): the others are not
    turned into Arrow, and ``extra`` (the padding, the last draw) is not even drawn.
    """
    import polars as pl

    np = need_numpy()
    pa = _need_pyarrow()
    made = _COLUMN_MAKERS[kind](np, ids, cfg, extra=columns is None or "extra" in columns)
    schema = arrow_schema(kind)
    names = [n for n in made if columns is None or n in columns]
    arrays = [made[n] for n in names]
    arrays = [pa.array(c) if isinstance(c, np.ndarray) else c.to_arrow() for c in arrays]
    if not names:
        return pl.DataFrame({"__n__": np.zeros(len(ids), np.int8)}).drop("__n__")  # rows, no columns
    return pl.from_arrow(pa.RecordBatch.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in names])))


_SHARE = {"person": PERSON_PROPORTION, "auction": AUCTION_PROPORTION,
          "bid": PROPORTION_DENOMINATOR - PERSON_PROPORTION - AUCTION_PROPORTION}


def batch(kind: Kind, start: int, stop: int, config: NexmarkConfig = DEFAULT_CONFIG) -> pa.Table:
    """The events of ``kind`` with ids in ``[start, stop)``, as an Arrow table (see :func:`bids_batch`)."""
    for what, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{what} must be an int event id, not {value!r}")
    if start < config.first_event_id:
        raise ConfigError(f"start must be an event id >= first_event_id ({config.first_event_id}), not {start}")
    np = need_numpy()
    pa = _need_pyarrow()
    schema = arrow_schema(kind)
    code = KINDS.index(kind)
    step = max(PROPORTION_DENOMINATOR, _LANES_PER_CHUNK * PROPORTION_DENOMINATOR // _SHARE[kind])
    batches = []
    for lo in range(start, max(start, stop), step):
        ids = np.arange(lo, min(lo + step, stop), dtype=np.int64)
        ids = ids[kind_codes(np, ids) == code]
        if len(ids):
            columns = _COLUMN_MAKERS[kind](np, ids, config)
            arrays = [pa.array(c) if isinstance(c, np.ndarray) else c.to_arrow() for c in columns.values()]
            batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return pa.Table.from_batches(batches, schema=schema)


def persons_batch(start: int, stop: int, config: NexmarkConfig = DEFAULT_CONFIG) -> pa.Table:
    """The people among the events ``start <= id < stop``, as an Arrow table (see :func:`bids_batch`)."""
    return batch("person", start, stop, config)


def auctions_batch(start: int, stop: int, config: NexmarkConfig = DEFAULT_CONFIG) -> pa.Table:
    """The auctions among the events ``start <= id < stop``, as an Arrow table (see :func:`bids_batch`)."""
    return batch("auction", start, stop, config)


def bids_batch(start: int, stop: int, config: NexmarkConfig = DEFAULT_CONFIG) -> pa.Table:
    """The bids among the events ``start <= id < stop``, as an Arrow table, in id order.

    The rows are exactly those :func:`event` gives for the same ids (without
    ``"type"``), computed with numpy many at a time; numbers and times are
    ``int64``, text is ``string``. Needs numpy and pyarrow. For polars, use
    ``polars.from_arrow(table)`` (no copy).

    >>> from millstream.nexmark import bids_batch, event
    >>> table = bids_batch(0, 100)
    >>> table.num_rows
    92
    >>> first = {k: v for k, v in event(4).items() if k != "type"}
    >>> table.slice(0, 1).to_pylist() == [first]
    True
    """
    return batch("bid", start, stop, config)
