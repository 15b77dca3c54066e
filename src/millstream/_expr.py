"""Expressions: field-level work that millstream compiles instead of calling.

An expression is a small frozen tree over the fields of a dict record. The native
executor inlines it into its generated loops as plain Python source (no call per
record), the micro-batch and batch executors turn it into a Polars expression.

>>> from millstream import col, lit, when
>>> price = col("price") * 0.908
>>> price
col("price") * 0.908
>>> price.compile()({"price": 1000})
908.0
>>> (col("price") > 500).compile()({"price": None}) is None
True
>>> when(col("n") > 2).then("many").otherwise("few").compile()({"n": 3})
'many'

Nulls behave as in SQL and Polars: ``None`` in gives ``None`` out for arithmetic,
comparisons, casts and the ``str``/``dt`` functions; ``&`` and ``|`` are Kleene
logic (``False & None`` is ``False``, ``True | None`` is ``True``); a filter keeps
a record only when its condition is ``True``; ``when`` treats a ``None`` condition
as not met. ``is_null``, ``fill_null`` and ``otherwise`` handle nulls explicitly.

A field that is missing from a record is an error (``KeyError``), not a null.
Python semantics rule the native executor: ``/`` by zero raises, ``//`` and ``%``
floor, ``round`` rounds half to even. The Polars translation agrees on these
except that Polars gives ``inf``/``NaN``/null where Python raises, casts a bool
to ``"true"`` rather than ``"True"``, and may round a float that is not exactly
representable (``2.675``) the other way. ``//`` and ``%`` by a float floor the rounded
quotient in Polars, where Python floors the exact one (``-4.0 // (4 / 3)`` is ``-3.0`` in
Polars, ``-4.0`` in Python). Dividing by a constant is exact in both (the Polars
translation divides by a column, as Polars' own division by a scalar is not correctly
rounded).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from millstream._location import user_location
from millstream._time import Duration, to_ms
from millstream.errors import FlowDefinitionError, MissingDependencyError

if TYPE_CHECKING:
    import polars as pl

__all__ = ["DtNamespace", "Expr", "StrNamespace", "Then", "When", "alias_name", "col", "condition_problem",
           "conjuncts", "lit", "when"]

_SCALARS = (type(None), bool, int, float, str, bytes)
_CASTS: dict[type, str] = {int: "int", float: "float", str: "str", bool: "bool"}
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_DAY_MS = 86_400_000


def _error(problem: str, fix: str) -> FlowDefinitionError:
    return FlowDefinitionError(problem, location=user_location(), fix=fix)


def _q(text: str) -> str:
    """A string literal in double quotes, as in ``col("price")``."""
    r = repr(text)
    if r.startswith("'") and '"' not in text:
        return '"' + r[1:-1].replace("\\'", "'") + '"'
    return r


def _polars() -> Any:
    try:
        import polars
    except ImportError:
        raise MissingDependencyError("polars", "polars", "Vectorised expressions") from None
    return polars


class _Src:
    """Code generation state: the namespace the code runs in and the record variable."""

    def __init__(self, env: dict[str, Any], var: str) -> None:
        self.env = env
        self.var = var

    def fresh(self, prefix: str) -> str:
        n = self.env.get("_x_n", 0)
        self.env["_x_n"] = n + 1
        return f"{prefix}{n}"

    def tmp(self) -> str:
        """A local variable name for a walrus temporary."""
        return self.fresh("_xt")

    def const(self, value: Any) -> str:
        name = self.fresh("_xc")
        self.env[name] = value
        return name

    def helper(self, name: str, value: Any) -> str:
        self.env[name] = value
        return name


class _AlwaysNull(Exception):
    """A null literal makes a whole strict subtree null."""


def _recv(code: str) -> str:
    """``code`` made safe to call a method on (``5.lower()`` is a syntax error)."""
    return f"({code})" if code[:1].isdigit() or code[:1] == "-" else code


# -- the base class ---------------------------------------------------------------------


class Expr(ABC):
    """A millstream expression. Build one with :func:`col`, :func:`lit` and :func:`when`.

    Operators ``+ - * / // % **``, unary ``-``, comparisons and ``& | ~`` build
    bigger expressions; plain values on either side become :func:`lit`. An
    expression is immutable and hashable by structure: :meth:`equals` compares two
    of them (``==`` builds a comparison expression instead).

    >>> e = (col("a") + 1) * 2
    >>> e
    (col("a") + 1) * 2
    >>> e.compile()({"a": 4})
    10
    >>> e.equals((col("a") + 1) * 2), e.equals(col("a") * 2)
    (True, False)
    """

    __slots__ = ()
    _strict: ClassVar[bool] = False  # null in -> null out, and never null otherwise

    # -- structure ---------------------------------------------------------------------
    def _children(self) -> tuple[Expr, ...]:
        return tuple(v for f in dataclasses.fields(self) for v in _exprs_in(getattr(self, f.name)))  # type: ignore[arg-type]

    def _key(self) -> tuple[Any, ...]:
        return (type(self).__name__, *(_key_of(getattr(self, f.name)) for f in dataclasses.fields(self)))  # type: ignore[arg-type]

    def equals(self, other: object) -> bool:
        """Whether ``other`` is the same expression (same structure, same literals)."""
        return isinstance(other, Expr) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __bool__(self) -> bool:
        raise TypeError(
            f"the truth value of an expression is unknown until it runs: {self!r}. "
            "Combine conditions with &, | and ~ (not and/or/not), and pass the expression to a step, "
            "e.g. .filter(col('a') > 1)"
        )

    def _nullable(self) -> bool:
        return True

    def _dtype(self) -> str:
        """What the value is, as far as is known when building: "bool", "other" or "any"."""
        return "any"

    # -- code generation ---------------------------------------------------------------
    def _body(self, s: _Src, args: list[str]) -> str:
        """The code of a strict node given its children's code (never null); non-strict nodes
        override :meth:`_value` instead and never reach here."""
        raise TypeError(f"{type(self).__name__} is not a strict expression node")

    def _value(self, s: _Src) -> str:
        if not self._strict:
            raise TypeError(f"{type(self).__name__} must generate its own code (it is not strict)")
        parts = _strict_parts(self, s)
        if parts is None:
            return "None"
        checks, body = parts
        if not checks:
            return body
        return f"(None if {' or '.join(f'({t} := {v}) is None' for t, v in checks)} else {body})"

    def _pred(self, s: _Src) -> str:
        """Code that is truthy exactly when the value is truthy (null is false)."""
        if not self._strict:
            return self._value(s)
        parts = _strict_parts(self, s)
        if parts is None:
            return "False"
        checks, body = parts
        return "(" + " and ".join([*(f"({t} := {v}) is not None" for t, v in checks), body]) + ")"

    def to_python(self, env: dict[str, Any], var: str = "r", *, as_condition: bool = False) -> str:
        """The expression as Python source over the record variable ``var``.

        Constants and helpers it needs are added to ``env`` (the globals the code
        will run with); temporaries are locals named ``_xt<n>``. With
        ``as_condition`` the code is truthy exactly when the value is true (null
        counts as false), which is cheaper for filters.

        >>> env = {}
        >>> (col("price") * 0.908).to_python(env)
        "(None if (_xt0 := r['price']) is None else (_xt0 * 0.908))"
        """
        s = _Src(env, var)
        return self._pred(s) if as_condition else self._value(s)

    def compile(self) -> Callable[[Any], Any]:
        """The expression as a function of one record.

        >>> (col("a") * col("b")).compile()({"a": 2, "b": 3})
        6
        """
        from millstream._runtime._codegen import Generated

        env: dict[str, Any] = {}
        g = Generated()
        g.add(0, "def _expr(r):")
        g.add(1, f"return {self.to_python(env)}")
        fn, _ = g.compile(f"expr:{self!r}"[:80], env, "_expr")
        return fn

    def to_polars(self, *, as_condition: bool = False) -> pl.Expr:
        """The same expression for Polars (needs the ``polars`` extra).

        With ``as_condition`` the result is a Boolean Polars expression, as a
        filter needs (a null literal has no type of its own in Polars).

        >>> import polars as pl
        >>> pl.DataFrame({"price": [1000, None]}).select((col("price") * 0.908).to_polars())["price"].to_list()
        [908.0, None]
        """
        polars = _polars()
        out: pl.Expr = self._to_pl(polars)
        if as_condition:
            out = out.cast(polars.Boolean)  # a no-op on Boolean values
        return out

    def _to_pl(self, pl: Any) -> Any:
        if not isinstance(self, _Lit) and _always_null(self):
            # Polars cannot negate, lower-case... an untyped null
            return pl.lit(None, dtype=pl.Boolean) if self._dtype() == "bool" else pl.lit(None)
        return self._pl(pl)

    @abstractmethod
    def _pl(self, pl: Any) -> Any:
        """The Polars expression of this node."""

    # -- repr --------------------------------------------------------------------------
    def __repr__(self) -> str:
        return self._repr()

    @abstractmethod
    def _repr(self) -> str:
        """The node as millstream expression source."""

    def _precedence(self) -> int:
        """Python's precedence of the operator at the top of the repr (9: an atom or a call)."""
        return 9

    def _operand(self, prec: int, *, tight: bool = False, bare: bool = True) -> str:
        """The repr as an operand of an operator of precedence ``prec``; ``tight``: parenthesize
        at equal precedence too; ``bare``: a literal as its plain value."""
        if isinstance(self, _Lit) and bare:
            text, p = self._bare(), self._bare_prec()
        else:
            text, p = self._repr(), self._precedence()
        return f"({text})" if p < prec or (tight and p == prec) else text

    def _receiver(self) -> str:
        """The repr as the receiver of a method call."""
        return self._operand(9, bare=False)

    @property
    def output_name(self) -> str:
        """The column name the expression gets in ``select``: its alias, else its first field.

        >>> (col("price") * 2).output_name, col("price").alias("p").output_name
        ('price', 'p')
        """
        for c in self._children():
            return c.output_name
        return "literal"

    # -- arithmetic --------------------------------------------------------------------
    def __add__(self, other: Any) -> Expr:
        return _Binary("+", self, _into(other))

    def __radd__(self, other: Any) -> Expr:
        return _Binary("+", _into(other), self)

    def __sub__(self, other: Any) -> Expr:
        return _Binary("-", self, _into(other))

    def __rsub__(self, other: Any) -> Expr:
        return _Binary("-", _into(other), self)

    def __mul__(self, other: Any) -> Expr:
        return _Binary("*", self, _into(other))

    def __rmul__(self, other: Any) -> Expr:
        return _Binary("*", _into(other), self)

    def __truediv__(self, other: Any) -> Expr:
        return _Binary("/", self, _into(other))

    def __rtruediv__(self, other: Any) -> Expr:
        return _Binary("/", _into(other), self)

    def __floordiv__(self, other: Any) -> Expr:
        return _Binary("//", self, _into(other))

    def __rfloordiv__(self, other: Any) -> Expr:
        return _Binary("//", _into(other), self)

    def __mod__(self, other: Any) -> Expr:
        return _Binary("%", self, _into(other))

    def __rmod__(self, other: Any) -> Expr:
        return _Binary("%", _into(other), self)

    def __pow__(self, other: Any) -> Expr:
        return _Binary("**", self, _into(other))

    def __rpow__(self, other: Any) -> Expr:
        return _Binary("**", _into(other), self)

    def __neg__(self) -> Expr:
        return _Fn("neg", self)

    def __pos__(self) -> Expr:
        return self

    def __abs__(self) -> Expr:
        return _Fn("abs", self)

    def abs(self) -> Expr:
        """The absolute value."""
        return _Fn("abs", self)

    def round(self, decimals: int = 0) -> Expr:
        """Rounded to ``decimals`` places, half to even (Python's ``round(x, decimals)``)."""
        if not isinstance(decimals, int) or isinstance(decimals, bool) or decimals < 0:
            raise _error(f"round() takes a number of decimals (an int >= 0), not {decimals!r}",
                         "e.g. col('x').round(2)")
        return _Fn("round", self, (decimals,))

    def __round__(self, ndigits: int | None = None) -> Expr:
        return self.round(ndigits or 0)

    # -- comparisons -------------------------------------------------------------------
    def __eq__(self, other: Any) -> Expr:  # type: ignore[override]
        return _Compare("==", self, _into(other))

    def __ne__(self, other: Any) -> Expr:  # type: ignore[override]
        return _Compare("!=", self, _into(other))

    def __lt__(self, other: Any) -> Expr:
        return _Compare("<", self, _into(other))

    def __le__(self, other: Any) -> Expr:
        return _Compare("<=", self, _into(other))

    def __gt__(self, other: Any) -> Expr:
        return _Compare(">", self, _into(other))

    def __ge__(self, other: Any) -> Expr:
        return _Compare(">=", self, _into(other))

    def is_in(self, values: Iterable[Any]) -> Expr:
        """True when the value is one of ``values`` (null stays null)."""
        if isinstance(values, str | bytes | Expr) or not isinstance(values, Iterable):
            raise _error(f"is_in() takes a list of values, not {values!r}", "e.g. col('country').is_in(['DE', 'FR'])")
        vals = tuple(values)
        for v in vals:
            _check_scalar(v, "is_in")
        return _Fn("is_in", self, (vals,))

    # -- booleans ----------------------------------------------------------------------
    def __and__(self, other: Any) -> Expr:
        return _Logic("&", _cond(self, "&"), _cond(_into(other), "&"))

    def __rand__(self, other: Any) -> Expr:
        return _Logic("&", _cond(_into(other), "&"), _cond(self, "&"))

    def __or__(self, other: Any) -> Expr:
        return _Logic("|", _cond(self, "|"), _cond(_into(other), "|"))

    def __ror__(self, other: Any) -> Expr:
        return _Logic("|", _cond(_into(other), "|"), _cond(self, "|"))

    def __invert__(self) -> Expr:
        return _Fn("not", _cond(self, "~"))

    def and_(self, *others: Any) -> Expr:
        """All of this and ``others`` (Kleene logic: ``False & None`` is ``False``)."""
        out: Expr = self
        for o in others:
            out = out & o
        return out

    def or_(self, *others: Any) -> Expr:
        """Any of this and ``others`` (Kleene logic: ``True | None`` is ``True``)."""
        out: Expr = self
        for o in others:
            out = out | o
        return out

    def not_(self) -> Expr:
        """Logical not (null stays null); the same as ``~``."""
        return ~self

    # -- nulls, casts, names -----------------------------------------------------------
    def is_null(self) -> Expr:
        """True when the value is None."""
        return _IsNull(self, False)

    def is_not_null(self) -> Expr:
        """True when the value is not None."""
        return _IsNull(self, True)

    def fill_null(self, value: Any) -> Expr:
        """The value, or ``value`` where it is None."""
        return _FillNull(self, _into(value))

    def cast(self, to: type) -> Expr:
        """Converted with ``int``, ``float``, ``str`` or ``bool`` (null stays null)."""
        if to not in _CASTS:
            raise _error(f"cast() converts to int, float, str or bool, not {to!r}", "e.g. col('n').cast(float)")
        return _Fn("cast", self, (_CASTS[to],))

    def alias(self, name: str) -> Expr:
        """The same expression, named ``name`` (its column name in ``select``)."""
        if not isinstance(name, str) or not name:
            raise _error(f"alias() takes a non-empty str, not {name!r}", "e.g. (col('a') * 2).alias('double')")
        return _Alias(self, name)

    def field(self, name: str) -> Expr:
        """Field ``name`` of a nested dict value (null when the value is null)."""
        if not isinstance(name, str) or not name:
            raise _error(f"field() takes a field name, not {name!r}", "e.g. col('user').field('id')")
        return _Field(self, name)

    @property
    def str(self) -> StrNamespace:
        """String functions: ``col("name").str.lower()``."""
        return StrNamespace(self)

    @property
    def dt(self) -> DtNamespace:
        """Date and time functions of an int timestamp (milliseconds since the epoch, UTC)."""
        return DtNamespace(self)


# -- helpers shared by the nodes ---------------------------------------------------------


def _exprs_in(value: Any) -> Iterable[Expr]:
    if isinstance(value, Expr):
        yield value
    elif isinstance(value, tuple):
        for v in value:
            yield from _exprs_in(v)


def _key_of(value: Any) -> Any:
    if isinstance(value, Expr):
        return value._key()
    if isinstance(value, tuple):
        return tuple(_key_of(v) for v in value)
    return (type(value).__name__, value)


def _check_scalar(value: Any, where: str) -> None:
    if not isinstance(value, _SCALARS):
        what = "an expression or a plain value" if where == "an expression" else "plain values"
        raise _error(
            f"{where} takes {what} (None, bool, int, float, str, bytes), not {type(value).__name__} {value!r}",
            "build values with col, lit and when; for arbitrary Python use a function, "
            "e.g. .map(lambda r: ...)",
        )


def _into(value: Any) -> Expr:
    """An expression from an expression or a plain value."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, When):
        raise _error("when(...) is missing its .then(...)", "write when(condition).then(value).otherwise(other)")
    _check_scalar(value, "an expression")
    return _Lit(value)


def _cond(e: Expr, where: str) -> Expr:
    if e._dtype() == "other":
        raise _error(
            f"{where} combines conditions, but {e!r} is not a condition (true or false)",
            "compare it first, e.g. (col('a') > 0) & (col('b') == 'x')",
        )
    return e


def _same_dtype(exprs: list[Expr]) -> str:
    """The dtype of a value that is one of ``exprs`` (a null literal fits any)."""
    kinds = {e._dtype() for e in exprs if not (isinstance(e, _Lit) and e.value is None)}
    return kinds.pop() if len(kinds) == 1 else "any"


def _infix(op: str, left: Expr, right: Expr, prec: int) -> str:
    """``left op right``; ``**`` groups to the right, comparisons do not chain."""
    both_lit = isinstance(left, _Lit) and isinstance(right, _Lit)
    lt = left._operand(prec, tight=op == "**" or prec == 1, bare=not both_lit)
    rt = right._operand(prec, tight=op != "**")
    return f"{lt} {op} {rt}"


def _always_null(e: Expr) -> bool:
    """Whether null literals make ``e`` null whatever the record."""
    e = _unalias(e)
    if isinstance(e, _Lit):
        return e.value is None
    if e._strict:
        return any(_always_null(c) for c in e._children())
    if isinstance(e, _FillNull):
        return _always_null(e.arg) and _always_null(e.fill)
    if isinstance(e, _Case):
        return all(_always_null(c) or _always_null(v) for c, v in e.branches) and (
            e.default is None or _always_null(e.default))
    return False


def _unalias(e: Expr) -> Expr:
    while isinstance(e, _Alias):
        e = e.arg
    return e


def _strict_parts(e: Expr, s: _Src) -> tuple[list[tuple[str, str]], str] | None:
    """A strict subtree as null checks and a body: it is null exactly when a checked leaf is.

    Each check is (temporary, code of a nullable leaf); the body uses the
    temporaries. None when a literal null makes the whole subtree null.
    """
    seen: dict[Any, str] = {}
    checks: list[tuple[str, str]] = []

    def walk(x: Expr) -> str:
        x = _unalias(x)
        if x._strict:
            return x._body(s, [walk(c) for c in x._children()])
        if isinstance(x, _Lit) and x.value is None:
            raise _AlwaysNull
        if not x._nullable():
            return x._value(s)
        k = x._key()
        t = seen.get(k)
        if t is None:
            t = seen[k] = s.tmp()
            checks.append((t, x._value(s)))
        return t

    try:
        body = walk(e)
    except _AlwaysNull:
        return None
    return checks, body


def columns_of(e: Expr) -> set[str]:
    """The fields an expression reads."""
    if isinstance(e, _Col):
        return {e.name}
    out: set[str] = set()
    for f in dataclasses.fields(e):  # type: ignore[arg-type]
        v = getattr(e, f.name)
        for item in (v if isinstance(v, tuple | list) else (v,)):
            if isinstance(item, Expr):
                out |= columns_of(item)
            elif isinstance(item, tuple):
                out |= {c for x in item if isinstance(x, Expr) for c in columns_of(x)}
    return out


def equality_of(e: Expr) -> tuple[str, Any] | None:
    """``(field, value)`` when ``e`` is ``col(field) == lit(value)`` (either way round)."""
    e = _unalias(e)
    if isinstance(e, _Compare) and e.op == "==":
        a, b = _unalias(e.left), _unalias(e.right)
        if isinstance(a, _Col) and isinstance(b, _Lit):
            return a.name, b.value
        if isinstance(b, _Col) and isinstance(a, _Lit):
            return b.name, a.value
    return None


def conjuncts(e: Expr) -> list[Expr]:
    """The parts of a top-level ``a & b & ...`` (a filter checks them one by one)."""
    e = _unalias(e)
    if isinstance(e, _Logic) and e.op == "&":
        return conjuncts(e.left) + conjuncts(e.right)
    return [e]


def alias_name(e: Expr) -> str | None:
    """The name given with ``.alias(...)``, or None."""
    return e.name if isinstance(e, _Alias) else None


def condition_problem(e: Expr) -> str | None:
    """Why ``e`` cannot be a filter's condition, or None."""
    if e._dtype() == "other":
        return f"{e!r} is not a condition (true or false)"
    return None


# -- leaves ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class _Col(Expr):
    name: str

    def _value(self, s: _Src) -> str:
        return f"{s.var}[{self.name!r}]"

    def _pl(self, pl: Any) -> Any:
        return pl.col(self.name)

    def _repr(self) -> str:
        return f"col({_q(self.name)})"

    @property
    def output_name(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False, repr=False)
class _Lit(Expr):
    value: Any

    def _key(self) -> tuple[Any, ...]:
        v = self.value
        if isinstance(v, float) and math.isnan(v):
            return ("_Lit", "float", "nan")
        return ("_Lit", type(v).__name__, v)

    def _nullable(self) -> bool:
        return self.value is None

    def _dtype(self) -> str:
        v = self.value
        return "bool" if isinstance(v, bool) else "any" if v is None else "other"

    def _value(self, s: _Src) -> str:
        v = self.value
        if v is None or isinstance(v, bool | int | str | bytes) or (isinstance(v, float) and math.isfinite(v)):
            code = repr(v)
            return f"({code})" if code.startswith("-") else code
        return s.const(v)

    def _pl(self, pl: Any) -> Any:
        return pl.lit(self.value)

    def _bare(self) -> str:
        return _q(self.value) if isinstance(self.value, str) else repr(self.value)

    def _bare_prec(self) -> int:
        return 7 if isinstance(self.value, int | float) and not isinstance(self.value, bool) and self.value < 0 else 9

    def _repr(self) -> str:
        return f"lit({self._bare()})"


# -- strict operators --------------------------------------------------------------------

_BIN_PREC = {"+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "%": 6, "**": 8}


@dataclass(frozen=True, eq=False, repr=False)
class _Binary(Expr):
    op: str
    left: Expr
    right: Expr
    _strict: ClassVar[bool] = True

    def _precedence(self) -> int:
        return _BIN_PREC[self.op]

    def _nullable(self) -> bool:
        return self.left._nullable() or self.right._nullable()

    def _dtype(self) -> str:
        return "other"

    def _body(self, s: _Src, args: list[str]) -> str:
        return f"({args[0]} {self.op} {args[1]})"

    def _pl(self, pl: Any) -> Any:
        a, b = self.left._to_pl(pl), self.right._to_pl(pl)
        match self.op:
            case "+":
                return a + b
            case "-":
                return a - b
            case "*":
                return a * b
            case "/":
                if isinstance(self.right, _Lit) and isinstance(self.right.value, int | float) \
                        and not isinstance(self.right.value, bool) and self.right.value != 0:
                    # Polars divides by a constant as a multiplication by its reciprocal, which is not
                    # correctly rounded (160200 / 1000 == 160.20000000000002); a column divides exactly
                    b = pl.int_range(pl.len()) * 0 + b
                return a / b
            case "//":
                return a // b
            case "%":
                return a % b
        return a.pow(b)

    def _repr(self) -> str:
        return _infix(self.op, self.left, self.right, self._precedence())


@dataclass(frozen=True, eq=False, repr=False)
class _Compare(Expr):
    op: str
    left: Expr
    right: Expr
    _strict: ClassVar[bool] = True

    def _precedence(self) -> int:
        return 1

    def __bool__(self) -> bool:
        # `a == b` in a boolean context (dataclass equality, `in`, dict keys) compares structure
        if self.op == "==":
            return self.left.equals(self.right)
        if self.op == "!=":
            return not self.left.equals(self.right)
        return Expr.__bool__(self)

    def _nullable(self) -> bool:
        return self.left._nullable() or self.right._nullable()

    def _dtype(self) -> str:
        return "bool"

    def _body(self, s: _Src, args: list[str]) -> str:
        return f"({args[0]} {self.op} {args[1]})"

    def _pl(self, pl: Any) -> Any:
        a, b = self.left._to_pl(pl), self.right._to_pl(pl)
        match self.op:
            case "==":
                return a == b
            case "!=":
                return a != b
            case "<":
                return a < b
            case "<=":
                return a <= b
            case ">":
                return a > b
        return a >= b

    def _repr(self) -> str:
        return _infix(self.op, self.left, self.right, 1)


@dataclass(frozen=True)
class _FnDef:
    """One strict function: Python code of its argument, the Polars version, and its repr."""

    py: Callable[[_Src, str, tuple[Any, ...]], str]
    pl: Callable[[Any, Any, tuple[Any, ...]], Any]
    method: str  # repr: receiver + method
    dtype: str = "other"


def _slice_py(s: _Src, a: str, p: tuple[Any, ...]) -> str:
    offset, length = p
    if length is None or (offset < 0 <= offset + length):
        return f"{_recv(a)}[{offset}:]"
    return f"{_recv(a)}[{offset}:{offset + length}]"


def _date_part(part: str) -> Callable[[_Src, str, tuple[Any, ...]], str]:
    def py(s: _Src, a: str, p: tuple[Any, ...]) -> str:
        s.helper("_xh_date", _dt.date.fromordinal)
        return f"_xh_date({_EPOCH_ORDINAL} + {a} // {_DAY_MS}).{part}"
    return py


def _epoch(pl: Any, e: Any, part: str) -> Any:
    # Polars gives small integer types (Int8 hours); Python ints do not overflow, Int64 rarely does
    return getattr(pl.from_epoch(e, time_unit="ms").dt, part)().cast(pl.Int64)


def _round_pl(pl: Any, e: Any, p: tuple[Any, ...]) -> Any:
    try:
        return e.round(p[0], mode="half_to_even")
    except TypeError:  # an older polars without modes
        return e.round(p[0])


def _is_in_pl(pl: Any, e: Any, p: tuple[Any, ...]) -> Any:
    values = [v for v in p[0] if v is not None]  # a null never matches a non-null value
    if not values:
        return pl.when(e.is_not_null()).then(pl.lit(False))
    if len(values) <= 16:  # comparisons find a common type (1 matches 1.0), as Python's `in` does
        return pl.any_horizontal([e == pl.lit(v) for v in values])
    return e.is_in(values)  # Polars >= 2 wants the values of the column's type


def _cast_pl(pl: Any, e: Any, p: tuple[Any, ...]) -> Any:
    dtype = {"int": pl.Int64, "float": pl.Float64, "str": pl.String, "bool": pl.Boolean}[p[0]]
    return e.cast(dtype, strict=True)


_FNS: dict[str, _FnDef] = {
    "neg": _FnDef(lambda s, a, p: f"(-{a})", lambda pl, e, p: -e, "-"),
    "not": _FnDef(lambda s, a, p: f"(not {a})", lambda pl, e, p: ~e, "~", "bool"),
    "abs": _FnDef(lambda s, a, p: f"abs({a})", lambda pl, e, p: e.abs(), "abs"),
    "round": _FnDef(lambda s, a, p: f"round({a}, {p[0]})", _round_pl, "round"),
    "cast": _FnDef(lambda s, a, p: f"{p[0]}({a})", _cast_pl, "cast"),
    "is_in": _FnDef(lambda s, a, p: f"({a} in {_members(s, p[0])})", _is_in_pl, "is_in", "bool"),
    "str.lower": _FnDef(lambda s, a, p: f"{_recv(a)}.lower()", lambda pl, e, p: e.str.to_lowercase(), "str.lower"),
    "str.upper": _FnDef(lambda s, a, p: f"{_recv(a)}.upper()", lambda pl, e, p: e.str.to_uppercase(), "str.upper"),
    "str.strip": _FnDef(lambda s, a, p: f"{_recv(a)}.strip()", lambda pl, e, p: e.str.strip_chars(), "str.strip"),
    "str.len": _FnDef(lambda s, a, p: f"len({a})", lambda pl, e, p: e.str.len_chars().cast(pl.Int64), "str.len"),
    "str.contains": _FnDef(lambda s, a, p: f"({p[0]!r} in {a})",
                           lambda pl, e, p: e.str.contains(p[0], literal=True), "str.contains", "bool"),
    "str.starts_with": _FnDef(lambda s, a, p: f"{_recv(a)}.startswith({p[0]!r})",
                              lambda pl, e, p: e.str.starts_with(p[0]), "str.starts_with", "bool"),
    "str.ends_with": _FnDef(lambda s, a, p: f"{_recv(a)}.endswith({p[0]!r})",
                            lambda pl, e, p: e.str.ends_with(p[0]), "str.ends_with", "bool"),
    "str.replace": _FnDef(lambda s, a, p: f"{_recv(a)}.replace({p[0]!r}, {p[1]!r})",
                          lambda pl, e, p: e.str.replace_all(p[0], p[1], literal=True), "str.replace"),
    "str.slice": _FnDef(_slice_py, lambda pl, e, p: e.str.slice(p[0], p[1]), "str.slice"),
    "dt.year": _FnDef(_date_part("year"), lambda pl, e, p: _epoch(pl, e, "year"), "dt.year"),
    "dt.month": _FnDef(_date_part("month"), lambda pl, e, p: _epoch(pl, e, "month"), "dt.month"),
    "dt.day": _FnDef(_date_part("day"), lambda pl, e, p: _epoch(pl, e, "day"), "dt.day"),
    "dt.hour": _FnDef(lambda s, a, p: f"({a} // 3600000 % 24)", lambda pl, e, p: _epoch(pl, e, "hour"), "dt.hour"),
    "dt.minute": _FnDef(lambda s, a, p: f"({a} // 60000 % 60)", lambda pl, e, p: _epoch(pl, e, "minute"),
                        "dt.minute"),
    "dt.second": _FnDef(lambda s, a, p: f"({a} // 1000 % 60)", lambda pl, e, p: _epoch(pl, e, "second"),
                        "dt.second"),
    "dt.weekday": _FnDef(lambda s, a, p: f"(({a} // {_DAY_MS} + 3) % 7 + 1)",
                         lambda pl, e, p: _epoch(pl, e, "weekday"), "dt.weekday"),
    "dt.truncate": _FnDef(lambda s, a, p: f"({a} // {p[0]} * {p[0]})", lambda pl, e, p: (e // p[0]) * p[0],
                          "dt.truncate"),
}


def _members(s: _Src, values: tuple[Any, ...]) -> str:
    try:
        return s.const(frozenset(values))
    except TypeError:  # unhashable members: a tuple works too
        return s.const(values)


def _arg_repr(v: Any) -> str:
    if isinstance(v, str):
        return _q(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(_arg_repr(x) for x in v) + "]"
    return repr(v)


@dataclass(frozen=True, eq=False, repr=False)
class _Fn(Expr):
    fn: str
    arg: Expr
    params: tuple[Any, ...] = ()
    _strict: ClassVar[bool] = True

    def _precedence(self) -> int:
        return 7 if self.fn in ("neg", "not") else 9

    def _nullable(self) -> bool:
        return self.arg._nullable()

    def _dtype(self) -> str:
        if self.fn == "cast":
            return "bool" if self.params[0] == "bool" else "other"
        return _FNS[self.fn].dtype

    def _body(self, s: _Src, args: list[str]) -> str:
        return _FNS[self.fn].py(s, args[0], self.params)

    def _pl(self, pl: Any) -> Any:
        return _FNS[self.fn].pl(pl, self.arg._to_pl(pl), self.params)

    def _repr(self) -> str:
        method = _FNS[self.fn].method
        if self.fn in ("neg", "not"):
            return method + self.arg._operand(7, bare=False)
        if self.fn == "cast":
            return f"{self.arg._receiver()}.cast({self.params[0]})"
        params = self.params[:1] if self.fn == "str.slice" and self.params[1] is None else self.params
        return f"{self.arg._receiver()}.{method}({', '.join(_arg_repr(p) for p in params)})"


# -- operators that handle nulls themselves ---------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class _Logic(Expr):
    """Kleene ``&`` / ``|``: the result is known from one side when that side decides it."""

    op: str
    left: Expr
    right: Expr

    def _precedence(self) -> int:
        return 3 if self.op == "&" else 2

    def _nullable(self) -> bool:
        return self.left._nullable() or self.right._nullable()

    def _dtype(self) -> str:
        return "bool"

    def _value(self, s: _Src) -> str:
        if not self._nullable():
            joined = f" {'and' if self.op == '&' else 'or'} "
            return f"(True if {self.left._pred(s)}{joined}{self.right._pred(s)} else False)"
        a, b = s.tmp(), s.tmp()
        va, vb = self.left._value(s), self.right._value(s)
        if self.op == "&":
            return (f"(False if not ({a} := {va}) and {a} is not None else "
                    f"(False if not ({b} := {vb}) and {b} is not None else "
                    f"(None if {a} is None or {b} is None else True)))")
        return (f"(True if ({a} := {va}) else (True if ({b} := {vb}) else "
                f"(None if {a} is None or {b} is None else False)))")

    def _pred(self, s: _Src) -> str:
        return f"({self.left._pred(s)} {'and' if self.op == '&' else 'or'} {self.right._pred(s)})"

    def _pl(self, pl: Any) -> Any:
        a, b = (pl.lit(None, dtype=pl.Boolean) if _always_null(x) else x._to_pl(pl) for x in (self.left, self.right))
        return a & b if self.op == "&" else a | b

    def _repr(self) -> str:
        return _infix(self.op, self.left, self.right, self._precedence())


@dataclass(frozen=True, eq=False, repr=False)
class _IsNull(Expr):
    arg: Expr
    negate: bool

    def _nullable(self) -> bool:
        return False

    def _dtype(self) -> str:
        return "bool"

    def _value(self, s: _Src) -> str:
        inner = _unalias(self.arg)
        if inner._strict:
            # a strict subtree is null exactly when a leaf is: check those, skip the work
            parts = _strict_parts(inner, s)
            if parts is None:
                return "False" if self.negate else "True"
            checks, _ = parts
            if not checks:
                return "True" if self.negate else "False"
            test = " or ".join(f"({t} := {v}) is None" for t, v in checks)
            return f"(not ({test}))" if self.negate else f"({test})"
        if not self.arg._nullable():
            return "True" if self.negate else "False"
        return f"({self.arg._value(s)} is {'not ' if self.negate else ''}None)"

    def _pl(self, pl: Any) -> Any:
        e = self.arg._to_pl(pl)
        return e.is_not_null() if self.negate else e.is_null()

    def _repr(self) -> str:
        return f"{self.arg._receiver()}.is_{'not_' if self.negate else ''}null()"


@dataclass(frozen=True, eq=False, repr=False)
class _FillNull(Expr):
    arg: Expr
    fill: Expr

    def _nullable(self) -> bool:
        return self.arg._nullable() and self.fill._nullable()

    def _dtype(self) -> str:
        return _same_dtype([self.arg, self.fill])

    def _value(self, s: _Src) -> str:
        fill = self.fill._value(s)
        inner = _unalias(self.arg)
        if inner._strict:
            parts = _strict_parts(inner, s)
            if parts is None:
                return fill
            checks, body = parts
            if not checks:
                return body
            return f"({fill} if {' or '.join(f'({t} := {v}) is None' for t, v in checks)} else {body})"
        if not self.arg._nullable():
            return self.arg._value(s)
        t = s.tmp()
        return f"({fill} if ({t} := {self.arg._value(s)}) is None else {t})"

    def _pl(self, pl: Any) -> Any:
        return self.arg._to_pl(pl).fill_null(self.fill._to_pl(pl))

    def _repr(self) -> str:
        return f"{self.arg._receiver()}.fill_null({self.fill._operand(0)})"


@dataclass(frozen=True, eq=False, repr=False)
class _Field(Expr):
    arg: Expr
    name: str

    def _value(self, s: _Src) -> str:
        if not self.arg._nullable():
            return f"{_recv(self.arg._value(s))}[{self.name!r}]"
        t = s.tmp()
        return f"(None if ({t} := {self.arg._value(s)}) is None else {t}[{self.name!r}])"

    def _pl(self, pl: Any) -> Any:
        return self.arg._to_pl(pl).struct.field(self.name)

    def _repr(self) -> str:
        return f"{self.arg._receiver()}.field({_q(self.name)})"

    @property
    def output_name(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False, repr=False)
class _Alias(Expr):
    arg: Expr
    name: str

    def _nullable(self) -> bool:
        return self.arg._nullable()

    def _dtype(self) -> str:
        return self.arg._dtype()

    def _value(self, s: _Src) -> str:
        return self.arg._value(s)

    def _pred(self, s: _Src) -> str:
        return self.arg._pred(s)

    def _pl(self, pl: Any) -> Any:
        return self.arg._to_pl(pl).alias(self.name)

    def _repr(self) -> str:
        return f"{self.arg._receiver()}.alias({_q(self.name)})"

    @property
    def output_name(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False, repr=False)
class _Case(Expr):
    """``when(c1).then(v1)...otherwise(d)``: the first branch whose condition is true."""

    branches: tuple[tuple[Expr, Expr], ...]
    default: Expr | None

    def _nullable(self) -> bool:
        if self.default is None or self.default._nullable():
            return True
        return any(v._nullable() for _, v in self.branches)

    def _dtype(self) -> str:
        return _same_dtype([v for _, v in self.branches] + ([self.default] if self.default is not None else []))

    def _value(self, s: _Src) -> str:
        code = self.default._value(s) if self.default is not None else "None"
        for cond, val in reversed(self.branches):
            code = f"({val._value(s)} if {cond._pred(s)} else {code})"
        return code

    def _pl(self, pl: Any) -> Any:
        default = self.default._to_pl(pl) if self.default is not None else pl.lit(None)
        branches = [(c, v) for c, v in self.branches if not _always_null(c)]  # never true
        if not branches:
            return default
        (c0, v0), *rest = branches
        out = pl.when(c0._to_pl(pl)).then(v0._to_pl(pl))
        for c, v in rest:
            out = out.when(c._to_pl(pl)).then(v._to_pl(pl))
        return out.otherwise(default)

    def _repr(self) -> str:
        text = "".join(f".when({c._operand(0)}).then({v._operand(0)})" for c, v in self.branches)[1:]
        if self.default is not None:
            text += f".otherwise({self.default._operand(0)})"
        return text

    @property
    def output_name(self) -> str:
        return self.branches[0][1].output_name


@dataclass(frozen=True, eq=False, repr=False)
class Then(_Case):
    """``when(...).then(...)``: an expression (null where no condition holds) that can go on."""

    def when(self, condition: Any) -> When:
        """Another branch, tried when the earlier ones are not true."""
        return When(self.branches, condition)

    def otherwise(self, value: Any) -> Expr:
        """The value where no condition is true."""
        return _Case(self.branches, _into(value))


class When:
    """``when(condition)``, waiting for its ``.then(value)``."""

    __slots__ = ("_branches", "_cond")

    def __init__(self, branches: tuple[tuple[Expr, Expr], ...], condition: Any) -> None:
        cond = _into(condition)
        if cond._dtype() == "other":
            raise _error(f"when() takes a condition, but {cond!r} is not one (true or false)",
                         "compare it, e.g. when(col('n') > 2).then('many')")
        self._branches = branches
        self._cond = cond

    def then(self, value: Any) -> Then:
        """The value where the condition is true."""
        return Then((*self._branches, (self._cond, _into(value))), None)

    def __repr__(self) -> str:
        prior = "".join(f".when({c._operand(0)}).then({v._operand(0)})" for c, v in self._branches)[1:]
        return (prior + "." if prior else "") + f"when({self._cond._operand(0)})"


# -- namespaces --------------------------------------------------------------------------


def _str_arg(value: Any, what: str, example: str) -> str:
    if not isinstance(value, str):
        raise _error(f"{what} takes a str, not {value!r}", f"e.g. {example}")
    return value


class StrNamespace:
    """String functions of an expression (null stays null)."""

    __slots__ = ("_e",)

    def __init__(self, e: Expr) -> None:
        self._e = e

    def lower(self) -> Expr:
        """Lower case."""
        return _Fn("str.lower", self._e)

    def upper(self) -> Expr:
        """Upper case."""
        return _Fn("str.upper", self._e)

    def strip(self) -> Expr:
        """Without leading and trailing whitespace."""
        return _Fn("str.strip", self._e)

    def len(self) -> Expr:
        """The number of characters."""
        return _Fn("str.len", self._e)

    def contains(self, substring: str) -> Expr:
        """True when ``substring`` occurs (plain text, not a pattern)."""
        return _Fn("str.contains", self._e, (_str_arg(substring, "str.contains()", "col('s').str.contains('x')"),))

    def starts_with(self, prefix: str) -> Expr:
        """True when the string starts with ``prefix``."""
        return _Fn("str.starts_with", self._e,
                   (_str_arg(prefix, "str.starts_with()", "col('s').str.starts_with('x')"),))

    def ends_with(self, suffix: str) -> Expr:
        """True when the string ends with ``suffix``."""
        return _Fn("str.ends_with", self._e, (_str_arg(suffix, "str.ends_with()", "col('s').str.ends_with('x')"),))

    def replace(self, old: str, new: str) -> Expr:
        """Every occurrence of ``old`` replaced by ``new`` (plain text)."""
        example = "col('s').str.replace('-', '_')"
        old = _str_arg(old, "str.replace()", example)
        if not old:
            raise _error("str.replace() needs a non-empty text to replace", f"e.g. {example}")
        return _Fn("str.replace", self._e, (old, _str_arg(new, "str.replace()", example)))

    def slice(self, offset: int, length: int | None = None) -> Expr:
        """``length`` characters from ``offset`` (negative: from the end); to the end without ``length``."""
        ok = isinstance(offset, int) and not isinstance(offset, bool) and (
            length is None or (isinstance(length, int) and not isinstance(length, bool) and length >= 0))
        if not ok:
            raise _error(f"str.slice() takes an int offset and a length >= 0, not {offset!r}, {length!r}",
                         "e.g. col('s').str.slice(0, 3)")
        return _Fn("str.slice", self._e, (offset, length))


class DtNamespace:
    """Date and time parts of an int timestamp in milliseconds since the epoch (UTC)."""

    __slots__ = ("_e",)

    def __init__(self, e: Expr) -> None:
        self._e = e

    def year(self) -> Expr:
        return _Fn("dt.year", self._e)

    def month(self) -> Expr:
        """1 to 12."""
        return _Fn("dt.month", self._e)

    def day(self) -> Expr:
        """Day of the month, 1 to 31."""
        return _Fn("dt.day", self._e)

    def hour(self) -> Expr:
        return _Fn("dt.hour", self._e)

    def minute(self) -> Expr:
        return _Fn("dt.minute", self._e)

    def second(self) -> Expr:
        return _Fn("dt.second", self._e)

    def weekday(self) -> Expr:
        """ISO day of the week: Monday 1 to Sunday 7."""
        return _Fn("dt.weekday", self._e)

    def truncate(self, every: Duration) -> Expr:
        """Rounded down to a multiple of ``every`` (ms or ``timedelta``): the start of its bucket."""
        try:
            ms = to_ms(every, "truncate()")
        except ValueError as exc:
            raise _error(str(exc), "e.g. col('ts').dt.truncate(timedelta(minutes=1))") from None
        if ms <= 0:
            raise _error(f"truncate() needs a positive duration, got {ms} ms",
                         "e.g. col('ts').dt.truncate(timedelta(minutes=1))")
        return _Fn("dt.truncate", self._e, (ms,))


# -- constructors ------------------------------------------------------------------------


def col(name: str) -> Expr:
    """The field ``name`` of the record.

    >>> col("price").compile()({"price": 3})
    3
    """
    if not isinstance(name, str) or not name:
        raise _error(f"col() takes a field name (a non-empty str), not {name!r}", "e.g. col('price')")
    return _Col(name)


def lit(value: Any) -> Expr:
    """A constant: None, a bool, int, float, str or bytes.

    >>> (lit(2) * col("x")).compile()({"x": 21})
    42
    """
    return _into(value)


def when(condition: Any) -> When:
    """Start a conditional: ``when(cond).then(x).when(cond2).then(y).otherwise(z)``.

    A condition that is false or null moves on to the next branch; without
    ``otherwise`` the result is null where no condition holds.

    >>> size = when(col("n") >= 10).then("big").when(col("n") >= 3).then("medium").otherwise("small")
    >>> size
    when(col("n") >= 10).then("big").when(col("n") >= 3).then("medium").otherwise("small")
    >>> [size.compile()({"n": n}) for n in (1, 5, 50, None)]
    ['small', 'medium', 'big', 'small']
    """
    return When((), condition)
