"""The three record layouts of Nexmark: Person, Auction, Bid.

In native mode a record is a plain ``dict`` with the field names of the
specification (camelCase, as in the Flink DDL and the JSON-lines contract);
event times (``dateTime``, ``expires``) are int milliseconds since the epoch and
prices are int cents. The :class:`~typing.TypedDict` classes below only describe
those dicts for type checkers. Columnar batches use the same names and the
Arrow types of :func:`arrow_schema` (``int64`` for every number and time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict

from millstream.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["FIELDS", "KINDS", "Auction", "Bid", "Kind", "Person", "arrow_schema"]

Kind = Literal["person", "auction", "bid"]
"""The kind of an event: the ``"type"`` of an event row."""

#: The kinds, in the order of their event type numbers (0, 1, 2).
KINDS: tuple[Kind, ...] = ("person", "auction", "bid")


class Person(TypedDict):
    """A person registers (event type 0)."""

    id: int
    name: str
    emailAddress: str
    creditCard: str
    city: str
    state: str
    dateTime: int
    extra: str


class Auction(TypedDict):
    """An auction opens (event type 1). ``expires`` is when it closes; prices are cents."""

    id: int
    itemName: str
    description: str
    initialBid: int
    reserve: int
    dateTime: int
    expires: int
    seller: int
    category: int
    extra: str


class Bid(TypedDict):
    """A bid on an auction (event type 2), in the Beam layout (no ``channel``/``url``)."""

    auction: int
    bidder: int
    price: int
    dateTime: int
    extra: str


#: The field names of each kind, in schema order.
FIELDS: dict[Kind, tuple[str, ...]] = {
    "person": tuple(Person.__annotations__),
    "auction": tuple(Auction.__annotations__),
    "bid": tuple(Bid.__annotations__),
}

_STRING_FIELDS = frozenset({"name", "emailAddress", "creditCard", "city", "state", "extra", "itemName",
                            "description"})


def check_kind(kind: Any, *, allow_all: bool = False) -> str:
    choices = ("all", *KINDS) if allow_all else KINDS
    if kind not in choices:
        raise ConfigError(f"kind must be one of {', '.join(map(repr, choices))}, not {kind!r}")
    return str(kind)


def arrow_schema(kind: Kind) -> pa.Schema:
    """The Arrow schema of a columnar batch of ``kind`` (needs pyarrow).

    >>> arrow_schema("bid").names
    ['auction', 'bidder', 'price', 'dateTime', 'extra']
    """
    check_kind(kind)
    try:
        import pyarrow as pa
    except ImportError:
        raise MissingDependencyError("pyarrow", "nexmark", "Columnar Nexmark batches") from None
    return pa.schema([(name, pa.string() if name in _STRING_FIELDS else pa.int64()) for name in FIELDS[kind]])
