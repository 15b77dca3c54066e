"""Keyed state, declared up front and injected at run time.

A ``process`` step declares its state by name::

    keyed.process(fn, state={"seen": ms.state.value(default=0), "recent": ms.state.list(ttl=60_000)})

and reads it through the context: ``ctx.state["seen"].value()``. State is
scoped to the key of the record (or timer) being processed, survives across
records, and is part of every checkpoint.

TTL: with ``ttl_time="event"`` (the default) an entry written by an event at
time ``t`` is invisible to events at ``t + ttl`` or later and is removed once
the watermark passes ``t + ttl``, which gives the same answers in every
execution mode. ``ttl_time="processing"`` measures the TTL on the wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from millstream._time import Duration, to_ms
from millstream.errors import ConfigError

__all__ = ["ListState", "ListStateSpec", "MapState", "MapStateSpec", "StateSpec", "ValueState", "ValueStateSpec",
           "list", "map", "value"]

_list = list


@dataclass(frozen=True)
class StateSpec:
    """Declaration of one named piece of keyed state."""

    ttl_ms: int | None = None
    ttl_time: str = "event"
    kind: ClassVar[str] = "state"

    def __post_init__(self) -> None:
        if self.ttl_ms is not None and self.ttl_ms <= 0:
            raise ConfigError(f"state TTL must be > 0, got {self.ttl_ms} ms")
        if self.ttl_time not in ("event", "processing"):
            raise ConfigError(f"ttl_time must be 'event' or 'processing', not {self.ttl_time!r}")

    def describe(self) -> str:
        ttl = f", ttl={self.ttl_ms}ms ({self.ttl_time} time)" if self.ttl_ms is not None else ""
        return f"{self.kind}{ttl}"


@dataclass(frozen=True)
class ValueStateSpec(StateSpec):
    default: Any = None
    kind: ClassVar[str] = "value"


@dataclass(frozen=True)
class ListStateSpec(StateSpec):
    kind: ClassVar[str] = "list"


@dataclass(frozen=True)
class MapStateSpec(StateSpec):
    kind: ClassVar[str] = "map"


def _ttl(ttl: Duration | None) -> int | None:
    return None if ttl is None else to_ms(ttl, "state TTL")


def value(*, default: Any = None, ttl: Duration | None = None, ttl_time: str = "event") -> ValueStateSpec:
    """One value per key; ``default`` is returned while nothing is stored (it is not copied: use immutables)."""
    return ValueStateSpec(_ttl(ttl), ttl_time, default)


def list(*, ttl: Duration | None = None, ttl_time: str = "event") -> ListStateSpec:
    """An append-only list per key."""
    return ListStateSpec(_ttl(ttl), ttl_time)


def map(*, ttl: Duration | None = None, ttl_time: str = "event") -> MapStateSpec:
    """A dictionary per key."""
    return MapStateSpec(_ttl(ttl), ttl_time)


# -- the handles a process function sees (the runtime implements them) -----------------


class ValueState(Protocol):
    """Handle to a value state, scoped to the current key."""

    def value(self) -> Any:
        """The stored value, or the declared default."""
        ...

    def update(self, value: Any) -> None:
        """Store ``value`` for the current key."""
        ...

    def clear(self) -> None:
        """Forget the value for the current key."""
        ...


class ListState(Protocol):
    """Handle to a list state, scoped to the current key."""

    def get(self) -> _list[Any]:
        """A copy of the stored list (empty if none)."""
        ...

    def add(self, value: Any) -> None: ...

    def update(self, values: _list[Any]) -> None: ...

    def clear(self) -> None: ...


class MapState(Protocol):
    """Handle to a map state, scoped to the current key."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def put(self, key: Any, value: Any) -> None: ...

    def remove(self, key: Any) -> None: ...

    def contains(self, key: Any) -> bool: ...

    def items(self) -> _list[tuple[Any, Any]]: ...

    def clear(self) -> None: ...
