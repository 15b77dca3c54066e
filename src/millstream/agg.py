"""Aggregations by field name, for windows and running aggregates.

>>> import millstream as ms
>>> ms.agg.sum("amount").describe()
'sum(amount)'

Each aggregation keeps a small accumulator per key (and window). The built-in
ones are compiled into the operator's loop, so they cost no Python call per
record. ``custom`` takes any create / add / merge / result functions.

``first`` and ``last`` pick by event time (ties by arrival), so any arrival
order gives the same answer. ``top_k`` gives the k largest values, largest
first; ``most_frequent`` the k most frequent values with their counts.

The semantics of each built-in live here once, in both forms: the per-record
accumulator (generated into the native loop) and the columnar form the micro-batch
and batch executors run (:meth:`Aggregation.columnar`): ``count(field)`` counts
non-null values; a ``sum`` of no values is 0; a ``mean`` of no values is None;
``min``/``max`` ignore nulls; ``first``/``last`` go by event time. The
differential tests check the two forms against each other on random input.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from millstream.errors import ConfigError

__all__ = [
    "Aggregation",
    "Columnar",
    "count",
    "count_distinct",
    "custom",
    "first",
    "last",
    "max",
    "mean",
    "min",
    "most_frequent",
    "sum",
    "top_k",
]

_builtin_min = min
_builtin_max = max


@dataclass(frozen=True)
class Columnar:
    """An aggregation as Polars expressions (see :meth:`Aggregation.columnar`).

    - ``parts``: (column, partial over a group of rows, merge of partials over groups of partials);
    - ``result``: the value, over merged partials;
    - ``running``: the running form, for aggregates without windows: (column, the value so far at
      each row of a key's rows in order, how a key's previous total combines with it: "sum", "min" or
      "max"); empty when there is none;
    - ``running_result``: the value, over the running columns;
    - ``summed``: the field whose integers are summed (as Int128, so that sums grow past 2**63);
    - ``zero_when_empty``: the result is null where no value was seen, and reads ``0`` there (an int,
      as natively, whatever the field's type: a float column cannot hold it, see
      :func:`millstream._runtime._columnar.zero_sums`);
    - ``to_acc``: the per-record accumulator (what :meth:`Aggregation.init_src` and ``add_src`` build)
      from the values of the ``parts`` columns in order (the ``running`` columns are the same ones):
      how a vectorised operator hands its state over to the per-record one.
    """

    parts: tuple[tuple[str, Any, Any], ...]
    result: Any
    running: tuple[tuple[str, Any, str], ...] = ()
    running_result: Any = None
    summed: str | None = None
    zero_when_empty: bool = False
    to_acc: Callable[..., Any] = field(default=lambda *values: values[0])


@dataclass(frozen=True)
class Aggregation(ABC):
    """Base of every aggregation. ``field`` is the record field it reads (None: the record)."""

    field: str | None = None
    kind: ClassVar[str] = "aggregation"

    # -- code generation: the accumulator lives in one slot ``a[i]`` ------------------
    @abstractmethod
    def init_src(self, env: dict[str, Any], p: str) -> str:
        """A Python expression that creates a fresh accumulator."""

    @abstractmethod
    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        """Lines that fold value ``v`` (event time ``t``; arrival order when untimed) into ``slot``."""

    # -- plain Python: merging slices/sessions, and reading the result -----------------
    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any:
        """A new accumulator holding both; ``a`` and ``b`` are left as they were."""

    def merge_src(self, a: str, b: str) -> str | None:
        """An expression merging accumulators ``a`` and ``b`` into a new one, or None to call :meth:`merge`."""
        return None

    def result(self, acc: Any) -> Any:
        return acc

    def needs_value(self) -> bool:
        return True

    @property
    def mergeable(self) -> bool:
        """Whether :meth:`merge` works (sliding and session windows merge partial results)."""
        return True

    def describe(self) -> str:
        return f"{self.kind}({self.field if self.field is not None else ''})"

    # -- the columnar form (micro-batch and batch) ---------------------------------------
    def columnar(self, pl: Any, p: str, time: str) -> Columnar | None:
        """This aggregation over a batch's columns, with partial columns named from ``p`` and
        ``time`` the event-time column; None when it has no columnar form (the native operator
        then runs over the batch's rows)."""
        return None


@dataclass(frozen=True)
class _Count(Aggregation):
    kind: ClassVar[str] = "count"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "0"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        if self.field is None:
            return [f"{slot} += 1"]
        return [f"if {v} is not None: {slot} += 1"]

    def needs_value(self) -> bool:
        return self.field is not None

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def merge_src(self, a: str, b: str) -> str | None:
        return f"{a} + {b}"

    def columnar(self, pl: Any, p: str, time: str) -> Columnar | None:
        v = None if self.field is None else pl.col(self.field)
        cum = pl.int_range(1, pl.len() + 1, dtype=pl.Int64) if v is None else v.is_not_null().cast(pl.Int64).cum_sum()
        return Columnar(((p, pl.len() if v is None else v.count(), pl.col(p).sum()),), pl.col(p),
                        ((p, cum, "sum"),), pl.col(p))


@dataclass(frozen=True)
class _Sum(Aggregation):
    kind: ClassVar[str] = "sum"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "0"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        return [f"if {v} is not None: {slot} += {v}"]

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def merge_src(self, a: str, b: str) -> str | None:
        return f"{a} + {b}"

    def columnar(self, pl: Any, p: str, time: str) -> Columnar | None:
        # a sum of no values is 0 (an int, whatever the field's type), as natively: the values are
        # counted, the result is null where there were none (see Columnar.zero_when_empty)
        v, n = pl.col(self.field), p + "n"
        value = pl.when(pl.col(n) > 0).then(pl.col(p))
        return Columnar(((p, v.sum(), pl.col(p).sum()), (n, v.count(), pl.col(n).sum())), value,
                        ((p, v.fill_null(0).cum_sum(), "sum"), (n, v.is_not_null().cast(pl.Int64).cum_sum(), "sum")),
                        value, summed=self.field, zero_when_empty=True, to_acc=_sum_acc)


@dataclass(frozen=True)
class _Mean(Aggregation):
    kind: ClassVar[str] = "mean"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "[0, 0]"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        return [f"if {v} is not None:", f"    {p}m = {slot}; {p}m[0] += {v}; {p}m[1] += 1"]

    def merge(self, a: Any, b: Any) -> Any:
        return [a[0] + b[0], a[1] + b[1]]

    def merge_src(self, a: str, b: str) -> str | None:
        return f"[{a}[0] + {b}[0], {a}[1] + {b}[1]]"

    def result(self, acc: Any) -> Any:
        return acc[0] / acc[1] if acc[1] else None

    def columnar(self, pl: Any, p: str, time: str) -> Columnar | None:
        v = pl.col(self.field)
        s, n = p + "s", p + "n"
        # no values: None; + 0.0 as natively the sum starts at the int 0 (-0.0 + 0.0 is 0.0, x + 0.0 is x)
        value = pl.when(pl.col(n) > 0).then(pl.col(s) / pl.col(n) + 0.0).otherwise(None)
        return Columnar(((s, v.fill_null(0).sum(), pl.col(s).sum()), (n, v.count(), pl.col(n).sum())), value,
                        ((s, v.fill_null(0).cum_sum(), "sum"), (n, v.is_not_null().cast(pl.Int64).cum_sum(), "sum")),
                        value, summed=self.field, to_acc=_mean_acc)


@dataclass(frozen=True)
class _Min(Aggregation):
    kind: ClassVar[str] = "min"
    _cmp: ClassVar[str] = "<"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "None"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        return [f"if {v} is not None and ({slot} is None or {v} {self._cmp} {slot}): {slot} = {v}"]

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return _builtin_min(a, b)

    def merge_src(self, a: str, b: str) -> str | None:
        return f"({b} if {a} is None else {a} if {b} is None or not ({b} {self._cmp} {a}) else {b})"

    def columnar(self, pl: Any, p: str, time: str) -> Columnar | None:
        v, k = pl.col(self.field), self.kind  # nulls are ignored
        cum = (v.cum_min() if k == "min" else v.cum_max()).forward_fill()
        return Columnar(((p, getattr(v, k)(), getattr(pl.col(p), k)()),), pl.col(p), ((p, cum, k),), pl.col(p))


@dataclass(frozen=True)
class _Max(_Min):
    kind: ClassVar[str] = "max"
    _cmp: ClassVar[str] = ">"

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return _builtin_max(a, b)


@dataclass(frozen=True)
class _First(Aggregation):
    """Accumulator: (event time, value) of the earliest event."""

    kind: ClassVar[str] = "first"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "None"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        return [f"if {slot} is None or {t} < {slot}[0]: {slot} = ({t}, {v})"]

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return b if b[0] < a[0] else a

    def result(self, acc: Any) -> Any:
        return None if acc is None else acc[1]

    def columnar(self, pl: Any, p: str, time: str) -> Columnar | None:
        # by event time, ties by arrival (a stable sort keeps arrival order)
        pick, v, t, pt = self.kind, pl.col(self.field), pl.col(time), pl.col(p + "t")
        return Columnar(
            ((p, getattr(v.sort_by(t, maintain_order=True), pick)(),
              getattr(pl.col(p).sort_by(pt, maintain_order=True), pick)()),
             (p + "t", getattr(t.sort_by(t, maintain_order=True), pick)(), pt.min() if pick == "first" else pt.max())),
            pl.col(p), to_acc=_first_acc)


@dataclass(frozen=True)
class _Last(_First):
    kind: ClassVar[str] = "last"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        return [f"if {slot} is None or {t} >= {slot}[0]: {slot} = ({t}, {v})"]

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return b if b[0] >= a[0] else a


def _sum_acc(s: Any, n: Any) -> Any:
    return 0 + s if n else 0  # natively a sum starts at the int 0 (so it is never -0.0)


def _mean_acc(s: Any, n: Any) -> Any:
    return [0 + s if n else 0, n or 0]


def _first_acc(v: Any, t: Any) -> Any:
    return None if t is None else (t, v)


@dataclass(frozen=True)
class _CountDistinct(Aggregation):
    kind: ClassVar[str] = "count_distinct"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "set()"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        return [f"if {v} is not None: {slot}.add({v})"]

    def merge(self, a: Any, b: Any) -> Any:
        return a | b

    def merge_src(self, a: str, b: str) -> str | None:
        return f"{a} | {b}"

    def result(self, acc: Any) -> Any:
        return len(acc)


@dataclass(frozen=True)
class _TopK(Aggregation):
    k: int = 1
    kind: ClassVar[str] = "top_k"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "[]"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        env["_heappush"] = heapq.heappush
        env["_heapreplace"] = heapq.heapreplace
        return [
            f"if {v} is not None:",
            f"    {p}h = {slot}",
            f"    if len({p}h) < {self.k}: _heappush({p}h, {v})",
            f"    elif {v} > {p}h[0]: _heapreplace({p}h, {v})",
        ]

    def merge(self, a: Any, b: Any) -> Any:
        merged = heapq.nlargest(self.k, a + b)
        heapq.heapify(merged)
        return merged

    def result(self, acc: Any) -> Any:
        return sorted(acc, reverse=True)

    def describe(self) -> str:
        return f"top_k({self.field}, {self.k})"


@dataclass(frozen=True)
class _MostFrequent(Aggregation):
    k: int = 1
    kind: ClassVar[str] = "most_frequent"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "{}"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        return [f"if {v} is not None:", f"    {p}d = {slot}; {p}d[{v}] = {p}d.get({v}, 0) + 1"]

    def merge(self, a: Any, b: Any) -> Any:
        out = dict(a)
        for key, n in b.items():
            out[key] = out.get(key, 0) + n
        return out

    def result(self, acc: Any) -> Any:
        ranked = sorted(acc.items(), key=lambda kv: (-kv[1], repr(kv[0])))
        return [[value, n] for value, n in ranked[: self.k]]

    def describe(self) -> str:
        return f"most_frequent({self.field}, {self.k})"


@dataclass(frozen=True)
class _Custom(Aggregation):
    create: Callable[[], Any] = field(default=lambda: None)
    add: Callable[[Any, Any], Any] = field(default=lambda acc, v: acc)
    merge_fn: Callable[[Any, Any], Any] | None = None
    result_fn: Callable[[Any], Any] | None = None
    name: str = "custom"
    kind: ClassVar[str] = "custom"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        env[f"{p}create"] = self.create
        return f"{p}create()"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        env[f"{p}add"] = self.add
        return [f"{slot} = {p}add({slot}, {v})"]

    @property
    def mergeable(self) -> bool:
        return self.merge_fn is not None

    def merge(self, a: Any, b: Any) -> Any:
        if self.merge_fn is None:
            raise ConfigError(
                f"custom aggregation {self.name!r} has no merge function; sliding and session windows need one"
            )
        return self.merge_fn(a, b)

    def result(self, acc: Any) -> Any:
        return acc if self.result_fn is None else self.result_fn(acc)

    def describe(self) -> str:
        return f"{self.name}({self.field if self.field is not None else ''})"


def _field(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} takes a field name (a non-empty str), not {name!r}")
    return name


def count(field: str | None = None) -> Aggregation:
    """Number of events; with a field, the number of events where it is not None."""
    return _Count(None if field is None else _field(field, "count"))


def sum(field: str) -> Aggregation:
    """Sum of a numeric field (None values are skipped)."""
    return _Sum(_field(field, "sum"))


def mean(field: str) -> Aggregation:
    """Arithmetic mean of a numeric field (None when no values)."""
    return _Mean(_field(field, "mean"))


def min(field: str) -> Aggregation:
    """Smallest value of a field."""
    return _Min(_field(field, "min"))


def max(field: str) -> Aggregation:
    """Largest value of a field."""
    return _Max(_field(field, "max"))


def first(field: str) -> Aggregation:
    """Value of the field in the event with the earliest event time."""
    return _First(_field(field, "first"))


def last(field: str) -> Aggregation:
    """Value of the field in the event with the latest event time."""
    return _Last(_field(field, "last"))


def count_distinct(field: str) -> Aggregation:
    """Number of distinct values of a field."""
    return _CountDistinct(_field(field, "count_distinct"))


def top_k(field: str, k: int) -> Aggregation:
    """The ``k`` largest values of a field, largest first."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ConfigError(f"top_k needs a positive int k, not {k!r}")
    return _TopK(_field(field, "top_k"), k)


def most_frequent(field: str, k: int) -> Aggregation:
    """The ``k`` most frequent values of a field as ``[value, count]`` pairs, most frequent first."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ConfigError(f"most_frequent needs a positive int k, not {k!r}")
    return _MostFrequent(_field(field, "most_frequent"), k)


def custom(
    create: Callable[[], Any],
    add: Callable[[Any, Any], Any],
    *,
    merge: Callable[[Any, Any], Any] | None = None,
    result: Callable[[Any], Any] | None = None,
    field: str | None = None,
    name: str | None = None,
) -> Aggregation:
    """A user-defined aggregation.

    ``create()`` makes an empty accumulator, ``add(acc, value)`` returns the
    accumulator with one more value (``value`` is ``record[field]``, or the
    whole record when no field is given), ``merge(a, b)`` combines two without
    changing either (needed by sliding and session windows), ``result(acc)``
    gives the output.
    """
    for what, fn in (("create", create), ("add", add)):
        if not callable(fn):
            raise ConfigError(f"custom aggregation: {what} must be callable, not {fn!r}")
    for what, opt in (("merge", merge), ("result", result)):
        if opt is not None and not callable(opt):
            raise ConfigError(f"custom aggregation: {what} must be callable, not {opt!r}")
    return _Custom(
        None if field is None else _field(field, "custom"),
        create=create,
        add=add,
        merge_fn=merge,
        result_fn=result,
        name=name or str(getattr(add, "__name__", "custom")),
    )
