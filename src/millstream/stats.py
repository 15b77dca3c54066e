"""Online statistics: aggregations for running per-key analysis and for windows.

>>> import millstream as ms
>>> ms.stats.zscore("amount", alpha=0.1).describe()
'zscore(amount, alpha=0.1, warmup=10)'

Use them like :mod:`millstream.agg`: in ``KeyedStream.aggregate(...)`` every record
emits its key's updated statistics; in ``window(...).aggregate(...)`` one row per
window.

================================  ==========================================  =========
aggregation                       result                                      mergeable
================================  ==========================================  =========
``ewma(f, alpha)``                exponentially weighted mean                 no
``ewm_var(f, alpha)``             exponentially weighted variance             no
``ewm_std(f, alpha)``             its square root                             no
``zscore(f, alpha)``              z-score of the value against the EWMA       no
                                  mean and deviation *before* it
``anomaly(f, alpha, threshold)``  ``abs(zscore) > threshold``                 no
``quantile(f, q)``                approximate q-quantile (relative error)     yes
``median(f)``                     ``quantile(f, 0.5)``                        yes
``approx_distinct(f)``            approximate number of distinct values       yes
================================  ==========================================  =========

The exponentially weighted statistics fold values in the order they come (arrival
order), so they are not mergeable: sliding and session windows refuse them when the
flow is built; running aggregates and tumbling and count windows take them. With
``alpha`` the weight of the newest value, the mean after values ``x0..xn`` is
``m0 = x0``, ``mi = m(i-1) + alpha * (xi - m(i-1))`` (``pandas.Series.ewm(alpha=alpha,
adjust=False).mean()``), the variance the matching weighted (biased) variance.

``quantile`` is a DDSketch (Masson, Rim & Lee, 2019): values fall into logarithmic
buckets, so the answer is within ``relative_accuracy`` (default 1 %) of the exact
lower q-quantile of the values (``numpy.quantile(xs, q, method="lower")``), for any
data, in any order, merged or not. Its memory is one counter per occupied bucket:
at most ``ln(largest / smallest) / (2 * relative_accuracy)`` of them per sign
(about 1,000 for values from 0.001 to 10^6 at 1 %).

``approx_distinct`` counts exactly (a set of 64-bit hashes) up to ``2**precision / 16``
distinct values, then switches to a HyperLogLog of ``2**precision`` one-byte registers
(Flajolet et al., 2007) whose relative standard error is ``1.04 / sqrt(2**precision)``:
1.6 % at the default precision 12 (4 KiB per key). Values hash by their UTF-8 text
(``str``), their bytes (``bytes``) or their ``repr`` (anything else, so ``1`` and
``1.0`` count as two values), the same in every process.

None values are skipped by every statistic (``zscore`` and ``anomaly`` give None and
False for them).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from millstream.agg import Aggregation
from millstream.errors import ConfigError

__all__ = [
    "HyperLogLog",
    "QuantileSketch",
    "anomaly",
    "approx_distinct",
    "ewm_std",
    "ewm_var",
    "ewma",
    "median",
    "quantile",
    "zscore",
]


# -- exponentially weighted statistics ------------------------------------------------


class _Sequential(Aggregation):
    """An order-dependent statistic: cannot merge two partial accumulators."""

    @property
    def mergeable(self) -> bool:
        return False

    def merge(self, a: Any, b: Any) -> Any:
        raise ConfigError(
            f"{self.describe()} depends on the order of its values, so two partial results cannot be merged; "
            "use it in running aggregates, tumbling or count windows"
        )


@dataclass(frozen=True)
class _Ewma(_Sequential):
    """Accumulator: the mean so far (None before the first value)."""

    alpha: float = 0.1
    kind: ClassVar[str] = "ewma"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "None"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        step = f"{slot} + {self.alpha!r} * ({v} - {slot})"
        return [f"if {v} is not None: {slot} = {v} + 0.0 if {slot} is None else {step}"]

    def describe(self) -> str:
        return f"{self.kind}({self.field}, alpha={self.alpha!r})"


def _ew_lines(alpha: float, p: str, v: str) -> list[str]:
    """Fold ``v`` into ``{p}a = [n, mean, var, ...]`` (West's update for weighted mean and variance)."""
    return [
        f"if {p}a[0]:",
        f"    {p}d = {v} - {p}a[1]; {p}i = {alpha!r} * {p}d",
        f"    {p}a[1] += {p}i; {p}a[2] = {1.0 - alpha!r} * ({p}a[2] + {p}d * {p}i)",
        f"else: {p}a[1] = {v} + 0.0",
        f"{p}a[0] += 1",
    ]


@dataclass(frozen=True)
class _EwmVar(_Sequential):
    """Accumulator: ``[n, mean, variance]``."""

    alpha: float = 0.1
    kind: ClassVar[str] = "ewm_var"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "[0, 0.0, 0.0]"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        body = _ew_lines(self.alpha, p, v)
        return [f"if {v} is not None:", f"    {p}a = {slot}", *("    " + line for line in body)]

    def result(self, acc: Any) -> Any:
        return acc[2] if acc[0] else None

    def describe(self) -> str:
        return f"{self.kind}({self.field}, alpha={self.alpha!r})"


@dataclass(frozen=True)
class _EwmStd(_EwmVar):
    kind: ClassVar[str] = "ewm_std"

    def result(self, acc: Any) -> Any:
        return math.sqrt(acc[2]) if acc[0] else None


@dataclass(frozen=True)
class _ZScore(_Sequential):
    """Accumulator: ``[n, mean, variance, z of the last value]``; z is taken before the value is added."""

    alpha: float = 0.1
    warmup: int = 10
    kind: ClassVar[str] = "zscore"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        return "[0, 0.0, 0.0, None]"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        env["_sqrt"] = math.sqrt
        body = [
            f"{p}a[3] = ({v} - {p}a[1]) / _sqrt({p}a[2]) if {p}a[0] >= {self.warmup} and {p}a[2] > 0.0 else None",
            *_ew_lines(self.alpha, p, v),
        ]
        return [f"{p}a = {slot}", f"if {v} is None: {p}a[3] = None", "else:", *("    " + line for line in body)]

    def result(self, acc: Any) -> Any:
        return acc[3]

    def describe(self) -> str:
        return f"{self.kind}({self.field}, alpha={self.alpha!r}, warmup={self.warmup})"


@dataclass(frozen=True)
class _Anomaly(_ZScore):
    threshold: float = 3.0
    kind: ClassVar[str] = "anomaly"

    def result(self, acc: Any) -> Any:
        z = acc[3]
        return z is not None and abs(z) > self.threshold

    def describe(self) -> str:
        return (f"{self.kind}({self.field}, alpha={self.alpha!r}, warmup={self.warmup}, "
                f"threshold={self.threshold!r})")


# -- quantiles: DDSketch --------------------------------------------------------------


class QuantileSketch:
    """Counts of values in logarithmic buckets: bucket ``i`` holds ``(gamma**(i-1), gamma**i]``.

    Negative values count by their magnitude in a second set of buckets, zeros apart.
    Any value reported for a bucket (``2 * gamma**i / (gamma + 1)``) is within
    ``relative_accuracy`` of every value in it.

    >>> s = QuantileSketch(0.01)
    >>> for x in range(1, 101):
    ...     s.add(x)
    >>> round(s.quantile(0.5), 1), s.count
    (49.9, 100)
    """

    __slots__ = ("count", "gamma", "inv_log_gamma", "neg", "pos", "zeros")

    def __init__(self, relative_accuracy: float) -> None:
        self.gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self.inv_log_gamma = 1.0 / math.log(self.gamma)
        self.pos: dict[int, int] = {}
        self.neg: dict[int, int] = {}
        self.zeros = 0
        self.count = 0

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.gamma, self.inv_log_gamma, self.pos, self.neg, self.zeros, self.count)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.gamma, self.inv_log_gamma, self.pos, self.neg, self.zeros, self.count = state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantileSketch) and self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]

    def add(self, x: float) -> None:
        if x > 0:
            i = math.ceil(math.log(x) * self.inv_log_gamma)
            self.pos[i] = self.pos.get(i, 0) + 1
        elif x < 0:
            i = math.ceil(math.log(-x) * self.inv_log_gamma)
            self.neg[i] = self.neg.get(i, 0) + 1
        elif x == 0:
            self.zeros += 1
        else:
            raise ValueError(f"quantile of NaN: {x!r}")
        self.count += 1

    def merged(self, other: QuantileSketch) -> QuantileSketch:
        """A new sketch of both."""
        out = QuantileSketch.__new__(QuantileSketch)
        out.gamma, out.inv_log_gamma = self.gamma, self.inv_log_gamma
        out.pos, out.neg = dict(self.pos), dict(self.neg)
        for mine, theirs in ((out.pos, other.pos), (out.neg, other.neg)):
            for i, n in theirs.items():
                mine[i] = mine.get(i, 0) + n
        out.zeros = self.zeros + other.zeros
        out.count = self.count + other.count
        return out

    def quantile(self, q: float) -> float | None:
        """The value of rank ``floor(q * (count - 1))`` (0-based, ascending), within the relative accuracy."""
        if not self.count:
            return None
        rank = math.floor(q * (self.count - 1))
        seen = 0
        for i in sorted(self.neg, reverse=True):
            seen += self.neg[i]
            if seen > rank:
                return -self._value(i)
        seen += self.zeros
        if seen > rank:
            return 0.0
        for i in sorted(self.pos):
            seen += self.pos[i]
            if seen > rank:
                return self._value(i)
        raise AssertionError("unreachable: counts add up to count")  # pragma: no cover

    def _value(self, i: int) -> float:
        return 2.0 * self.gamma ** i / (self.gamma + 1.0)


@dataclass(frozen=True)
class _Quantile(Aggregation):
    q: float = 0.5
    relative_accuracy: float = 0.01
    kind: ClassVar[str] = "quantile"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        env["_QuantileSketch"] = QuantileSketch
        return f"_QuantileSketch({self.relative_accuracy!r})"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        return [f"if {v} is not None: {slot}.add({v})"]

    def merge(self, a: Any, b: Any) -> Any:
        return a.merged(b)

    def result(self, acc: Any) -> Any:
        return acc.quantile(self.q)

    def describe(self) -> str:
        return f"{self.kind}({self.field}, q={self.q!r}, relative_accuracy={self.relative_accuracy!r})"


# -- distinct counts: exact small sets, then HyperLogLog ------------------------------

_MASK64 = (1 << 64) - 1


def _hash64(value: Any) -> int:
    """A 64-bit hash that is the same in every process (``hash`` of a str is not)."""
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes):
        data = b"\x00b" + value
    else:
        data = b"\x00r" + repr(value).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class HyperLogLog:
    """Distinct count: exact up to ``2**precision // 16`` values, a HyperLogLog beyond.

    >>> h = HyperLogLog(12)
    >>> for i in range(100):
    ...     h.add(i % 30)
    >>> h.estimate()
    30
    """

    __slots__ = ("p", "registers", "small", "zeros", "zsum")

    def __init__(self, precision: int = 12) -> None:
        self.p = precision
        self.small: set[int] | None = set()
        self.registers: bytearray | None = None
        self.zsum = 0  # sum over registers of 2**(64 - register): exact
        self.zeros = 0

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.p, self.small, self.registers, self.zsum, self.zeros)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.p, self.small, self.registers, self.zsum, self.zeros = state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HyperLogLog) and self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]

    def add(self, value: Any) -> None:
        self.add_hash(_hash64(value))

    def add_hash(self, h: int) -> None:
        small = self.small
        if small is not None:
            small.add(h)
            if len(small) > (1 << self.p) >> 4:
                self._densify()
            return
        self._set(h)

    def _densify(self) -> None:
        m = 1 << self.p
        self.registers = bytearray(m)
        self.zsum = m << 64
        self.zeros = m
        hashes, self.small = self.small or set(), None
        for h in hashes:
            self._set(h)

    def _set(self, h: int) -> None:
        regs = self.registers
        assert regs is not None
        width = 64 - self.p
        idx = h >> width
        rho = width - (h & ((1 << width) - 1)).bit_length() + 1
        old = regs[idx]
        if rho > old:
            regs[idx] = rho
            self.zsum += (1 << (64 - rho)) - (1 << (64 - old))
            if old == 0:
                self.zeros -= 1

    def merged(self, other: HyperLogLog) -> HyperLogLog:
        """A new counter of both (same precision)."""
        if other.p != self.p:
            raise ValueError(f"cannot merge HyperLogLogs of precision {self.p} and {other.p}")
        out = HyperLogLog(self.p)
        if self.small is not None and other.small is not None:
            out.small = self.small | other.small
            if len(out.small) > (1 << self.p) >> 4:
                out._densify()
            return out
        dense, other_ = (self, other) if self.registers is not None else (other, self)
        assert dense.registers is not None
        out.small = None
        if other_.registers is None:
            out.registers, out.zsum, out.zeros = bytearray(dense.registers), dense.zsum, dense.zeros
            for h in other_.small or ():
                out._set(h)
            return out
        regs = bytearray(map(max, dense.registers, other_.registers))
        out.registers = regs
        out.zsum = sum(1 << (64 - r) for r in regs)
        out.zeros = regs.count(0)
        return out

    def estimate(self) -> int:
        if self.small is not None:
            return len(self.small)
        m = 1 << self.p
        alpha = 0.7213 / (1.0 + 1.079 / m)
        raw = alpha * m * m * (1 << 64) / self.zsum
        if raw <= 2.5 * m and self.zeros:
            raw = m * math.log(m / self.zeros)  # linear counting for the small range
        return round(raw)


@dataclass(frozen=True)
class _ApproxDistinct(Aggregation):
    precision: int = 12
    kind: ClassVar[str] = "approx_distinct"

    def init_src(self, env: dict[str, Any], p: str) -> str:
        env["_HyperLogLog"] = HyperLogLog
        return f"_HyperLogLog({self.precision})"

    def add_src(self, env: dict[str, Any], p: str, slot: str, v: str, t: str) -> list[str]:
        return [f"if {v} is not None: {slot}.add({v})"]

    def merge(self, a: Any, b: Any) -> Any:
        return a.merged(b)

    def result(self, acc: Any) -> Any:
        return acc.estimate()

    def describe(self) -> str:
        return f"{self.kind}({self.field}, precision={self.precision})"


# -- the public constructors -----------------------------------------------------------


def _field(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"ms.stats.{what} takes a field name (a non-empty str), not {name!r}")
    return name


def _unit(value: Any, what: str, name: str, *, closed: bool) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (
        0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0)
    if not ok or math.isnan(value):
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ConfigError(f"ms.stats.{what}: {name} must be a number in {interval}, not {value!r}")
    return float(value)


def _alpha(alpha: Any, what: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < alpha <= 1.0:
        raise ConfigError(f"ms.stats.{what}: alpha (the weight of the newest value) must be a number in (0, 1], "
                          f"not {alpha!r}")
    return float(alpha)


def _warmup(warmup: Any, alpha: float, what: str) -> int:
    if warmup is None:
        return math.ceil(1.0 / alpha - 1e-9)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ConfigError(f"ms.stats.{what}: warmup must be an int >= 1, not {warmup!r}")
    return warmup


def ewma(field: str, alpha: float = 0.1) -> Aggregation:
    """Exponentially weighted moving average: ``m = m + alpha * (x - m)``, starting at the first value."""
    return _Ewma(_field(field, "ewma"), _alpha(alpha, "ewma"))


def ewm_var(field: str, alpha: float = 0.1) -> Aggregation:
    """Exponentially weighted variance (biased; 0.0 after one value) about the EWMA."""
    return _EwmVar(_field(field, "ewm_var"), _alpha(alpha, "ewm_var"))


def ewm_std(field: str, alpha: float = 0.1) -> Aggregation:
    """Exponentially weighted standard deviation: the square root of :func:`ewm_var`."""
    return _EwmStd(_field(field, "ewm_std"), _alpha(alpha, "ewm_std"))


def zscore(field: str, alpha: float = 0.1, *, warmup: int | None = None) -> Aggregation:
    """How many EWM standard deviations the value lies from the EWMA of the values before it.

    Test-then-train: the value is scored against the statistics of the earlier values,
    then folded in. None until ``warmup`` values have been seen (default
    ``ceil(1 / alpha)``, the EWMA's span) and while their deviation is 0.
    """
    a = _alpha(alpha, "zscore")
    return _ZScore(_field(field, "zscore"), a, _warmup(warmup, a, "zscore"))


def anomaly(field: str, alpha: float = 0.1, *, threshold: float = 3.0, warmup: int | None = None) -> Aggregation:
    """True when ``abs(zscore(field, alpha, warmup=warmup)) > threshold``, else False."""
    a = _alpha(alpha, "anomaly")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold > 0:
        raise ConfigError(f"ms.stats.anomaly: threshold must be a positive number of deviations, not {threshold!r}")
    return _Anomaly(_field(field, "anomaly"), a, _warmup(warmup, a, "anomaly"), float(threshold))


def quantile(field: str, q: float, *, relative_accuracy: float = 0.01) -> Aggregation:
    """The approximate ``q``-quantile (0 <= q <= 1): within ``relative_accuracy`` of the exact lower quantile."""
    return _Quantile(_field(field, "quantile"), _unit(q, "quantile", "q", closed=True),
                     _unit(relative_accuracy, "quantile", "relative_accuracy", closed=False))


def median(field: str, *, relative_accuracy: float = 0.01) -> Aggregation:
    """The approximate median: :func:`quantile` with ``q=0.5``."""
    return _Quantile(_field(field, "median"), 0.5, _unit(relative_accuracy, "median", "relative_accuracy",
                                                         closed=False))


def approx_distinct(field: str, *, precision: int = 12) -> Aggregation:
    """Approximate number of distinct values: exact while small, then a HyperLogLog with ``2**precision`` registers.

    ``precision`` 4..18; the relative standard error is ``1.04 / sqrt(2**precision)``.
    """
    if isinstance(precision, bool) or not isinstance(precision, int) or not 4 <= precision <= 18:
        raise ConfigError(f"ms.stats.approx_distinct: precision must be an int from 4 to 18, not {precision!r}")
    return _ApproxDistinct(_field(field, "approx_distinct"), precision)
