"""Expressions: every operator against plain Python, SQL null semantics, repr, agreement with
Polars (tables and random expression trees), use inside real flows, inlining and error mapping."""

from __future__ import annotations

import datetime as dt
import linecache
import math
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millstream as ms
import millstream._expr as X
from conftest import collect, finish, start
from millstream import col, lit, when
from millstream._runtime._chain import ChainOperator
from millstream.testing import CollectSink, TestSource

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

pl = pytest.importorskip("polars")

_SOURCE = Path(__file__).read_text().splitlines()


def line_of(tag: str) -> str:
    hits = [i + 1 for i, text in enumerate(_SOURCE) if text.rstrip().endswith(f"# <{tag}>")]
    assert len(hits) == 1, tag
    return f"test_expr.py:{hits[0]}"


TS = 1_700_000_123_456  # 2023-11-14 22:15:23.456 UTC, a Tuesday
REC = {"a": 7, "b": -3, "x": 2.5, "s": "  Hello World ", "p": True, "q": False, "ts": TS, "u": {"id": 9}}

# (expression, the same computation in plain Python)
CASES: list[tuple[Any, Any]] = [
    (col("a"), lambda r: r["a"]),
    (lit(5), lambda r: 5),
    (col("a") + col("b"), lambda r: r["a"] + r["b"]),
    (col("a") - 1, lambda r: r["a"] - 1),
    (10 - col("a"), lambda r: 10 - r["a"]),
    (col("a") * col("x"), lambda r: r["a"] * r["x"]),
    (col("a") / col("b"), lambda r: r["a"] / r["b"]),
    (col("a") // col("b"), lambda r: r["a"] // r["b"]),
    (col("a") % col("b"), lambda r: r["a"] % r["b"]),
    (col("a") ** 2, lambda r: r["a"] ** 2),
    (2 ** col("a"), lambda r: 2 ** r["a"]),
    (-col("b"), lambda r: -r["b"]),
    (+col("b"), lambda r: r["b"]),
    (col("b").abs(), lambda r: abs(r["b"])),
    (abs(col("b")), lambda r: abs(r["b"])),
    ((col("x") * 1.2345).round(2), lambda r: round(r["x"] * 1.2345, 2)),
    (round(col("x")), lambda r: round(r["x"], 0)),
    (col("a") == 7, lambda r: r["a"] == 7),
    (col("a") != 7, lambda r: r["a"] != 7),
    (col("a") < col("b"), lambda r: r["a"] < r["b"]),
    (col("a") <= 7, lambda r: r["a"] <= 7),
    (col("a") > 6.5, lambda r: r["a"] > 6.5),
    (col("a") >= 8, lambda r: r["a"] >= 8),
    (1 < col("a"), lambda r: 1 < r["a"]),  # noqa: SIM300 - the reflected operator
    (col("p") & col("q"), lambda r: r["p"] and r["q"]),
    (col("p") | col("q"), lambda r: r["p"] or r["q"]),
    (~col("p"), lambda r: not r["p"]),
    (col("p").and_(col("a") > 1, col("x") < 3), lambda r: r["p"] and r["a"] > 1 and r["x"] < 3),
    (col("q").or_(col("a") > 100, col("b") < 0), lambda r: r["q"] or r["a"] > 100 or r["b"] < 0),
    ((col("a") > 1).not_(), lambda r: not r["a"] > 1),
    (True & col("p"), lambda r: r["p"]),
    (False | col("p"), lambda r: r["p"]),
    (col("a").is_in([1, 7]), lambda r: r["a"] in (1, 7)),
    (col("s").is_in(("x",)), lambda r: r["s"] in ("x",)),
    (col("a").is_null(), lambda r: r["a"] is None),
    (col("a").is_not_null(), lambda r: r["a"] is not None),
    (col("a").fill_null(0), lambda r: r["a"]),
    (col("x").cast(int), lambda r: int(r["x"])),
    (col("a").cast(float), lambda r: float(r["a"])),
    (col("a").cast(str), lambda r: str(r["a"])),
    (col("b").cast(bool), lambda r: bool(r["b"])),
    (col("s").str.lower(), lambda r: r["s"].lower()),
    (col("s").str.upper(), lambda r: r["s"].upper()),
    (col("s").str.strip(), lambda r: r["s"].strip()),
    (col("s").str.len(), lambda r: len(r["s"])),
    (col("s").str.contains("World"), lambda r: "World" in r["s"]),
    (col("s").str.strip().str.starts_with("He"), lambda r: r["s"].strip().startswith("He")),
    (col("s").str.ends_with(" "), lambda r: r["s"].endswith(" ")),
    (col("s").str.replace("o", "0"), lambda r: r["s"].replace("o", "0")),
    (col("s").str.slice(2, 5), lambda r: r["s"][2:7]),
    (col("s").str.slice(-6), lambda r: r["s"][-6:]),
    (col("s").str.slice(-6, 3), lambda r: r["s"][-6:-3]),
    (col("ts").dt.year(), lambda r: 2023),
    (col("ts").dt.month(), lambda r: 11),
    (col("ts").dt.day(), lambda r: 14),
    (col("ts").dt.hour(), lambda r: 22),
    (col("ts").dt.minute(), lambda r: 15),
    (col("ts").dt.second(), lambda r: 23),
    (col("ts").dt.weekday(), lambda r: 2),
    (col("ts").dt.truncate(dt.timedelta(hours=1)), lambda r: r["ts"] - r["ts"] % 3_600_000),
    (col("ts").dt.truncate(60_000), lambda r: r["ts"] // 60_000 * 60_000),
    (when(col("a") > 5).then("big").otherwise("small"), lambda r: "big" if r["a"] > 5 else "small"),
    (when(col("a") > 50).then(1).when(col("b") < 0).then(2).otherwise(3), lambda r: 2),
    (when(col("a") > 50).then(1), lambda r: None),
    (col("u").field("id"), lambda r: r["u"]["id"]),
    ((col("a") * 2).alias("double"), lambda r: r["a"] * 2),
    (((col("a") + col("b")) * col("x") - 1) / 2, lambda r: ((r["a"] + r["b"]) * r["x"] - 1) / 2),
    (col("s").str.strip().str.lower().str.len() + col("a"), lambda r: len(r["s"].strip().lower()) + r["a"]),
]


@pytest.mark.parametrize(("expr", "expected"), CASES, ids=[repr(e) for e, _ in CASES])
def test_every_operator_and_function_computes_what_python_does(expr: ms.Expr, expected: Any) -> None:
    got = expr.compile()(REC)
    want = expected(REC)
    assert got == want and type(got) is type(want), (got, want)


def test_datetime_parts_agree_with_the_datetime_module() -> None:
    for ms_ in (0, -1, 86_399_999, 951_782_400_000, TS, 4_102_444_799_999, -2_208_988_800_001):
        d = dt.datetime.fromtimestamp(ms_ / 1000, tz=dt.UTC)
        parts = {p: getattr(col("t").dt, p)().compile()({"t": ms_}) for p in
                 ("year", "month", "day", "hour", "minute", "second", "weekday")}
        assert parts == {"year": d.year, "month": d.month, "day": d.day, "hour": d.hour, "minute": d.minute,
                         "second": d.second, "weekday": d.isoweekday()}, ms_


# -- nulls ------------------------------------------------------------------------------

NULL = {"a": None, "b": 2, "x": None, "s": None, "p": None, "t": True, "f": False, "ts": None}


@pytest.mark.parametrize("expr", [
    col("a") + 1, 1 - col("a"), col("a") * col("b"), col("a") / col("b"), col("a") // 2, col("a") % 2,
    col("a") ** 2, -col("a"), col("a").abs(), col("x").round(1), col("a") == 1, col("a") != 1, col("a") < 1,
    col("a") >= col("b"), ~col("p"), col("a").is_in([1, None]), col("a").cast(str), col("s").str.lower(),
    col("s").str.len(), col("s").str.contains("x"), col("s").str.slice(1), col("ts").dt.year(),
    col("ts").dt.truncate(1000), lit(None) + col("b"), col("b") * lit(None), (col("b") + 1) * col("a"),
    col("u").field("id") if False else col("a").field("id"), when(col("t")).then(col("a")),
    when(col("f")).then(1), when(col("p")).then(1),
], ids=repr)
def test_null_in_gives_null_out(expr: ms.Expr) -> None:
    assert expr.compile()({**NULL, "u": None}) is None


KLEENE = [(True, True), (True, False), (True, None), (False, True), (False, False), (False, None),
          (None, True), (None, False), (None, None)]


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


@pytest.mark.parametrize(("a", "b"), KLEENE)
def test_and_or_not_are_kleene_logic(a: bool | None, b: bool | None) -> None:
    r = {"a": a, "b": b}
    assert (col("a") & col("b")).compile()(r) is _and(a, b)
    assert (col("a") | col("b")).compile()(r) is _or(a, b)
    assert (~col("a")).compile()(r) is (None if a is None else not a)
    # through comparisons, which can be null themselves
    c = {"a": None if a is None else int(a), "b": None if b is None else int(b)}
    assert ((col("a") == 1) & (col("b") == 1)).compile()(c) is _and(a, b)
    assert ((col("a") == 1) | (col("b") == 1)).compile()(c) is _or(a, b)


def test_null_handling_functions() -> None:
    f = (col("a").fill_null(col("b") * 10) + 1).compile()
    assert (f({"a": None, "b": 2}), f({"a": 1, "b": 2}), f({"a": None, "b": None})) == (21, 2, None)
    assert (col("a") / col("b")).is_null().compile()({"a": None, "b": 0}) is True  # null: nothing divided
    assert (col("a") + 1).is_not_null().compile()({"a": 1}) is True
    assert lit(None).is_null().compile()({}) is True
    assert (col("a") + lit(None)).fill_null(0).compile()({"a": 1}) == 0
    assert when(col("a") > 1).then("yes").otherwise(None).compile()({"a": None}) is None


def test_a_missing_field_is_an_error_not_a_null() -> None:
    with pytest.raises(KeyError):
        (col("missing") + 1).compile()({"a": 1})


def test_filter_drops_records_whose_condition_is_null() -> None:
    rows = [{"v": 1}, {"v": None}, {"v": 9}, {"v": 5}]
    flow = ms.Flow("f")
    kept = collect(flow.source(TestSource(rows)).filter(col("v") > 2))
    dropped = collect(flow.source(TestSource(rows), name="again").filter(~(col("v") > 2)))
    flow.run()
    assert kept.values == [{"v": 9}, {"v": 5}]
    assert dropped.values == [{"v": 1}]  # null > 2 is null, and so is its negation


# -- repr, equality, hashing, pickling --------------------------------------------------


@pytest.mark.parametrize(("expr", "text"), [
    (col("price") * 0.908, 'col("price") * 0.908'),
    ((col("a") + 1) * 2, '(col("a") + 1) * 2'),
    (col("a") - (col("b") - 1), 'col("a") - (col("b") - 1)'),
    (col("a") - col("b") - 1, 'col("a") - col("b") - 1'),
    (col("a") ** col("b") ** 2, 'col("a") ** col("b") ** 2'),
    ((col("a") ** col("b")) ** 2, '(col("a") ** col("b")) ** 2'),
    (-col("a") ** 2, '-col("a") ** 2'),
    ((-col("a")) ** 2, '(-col("a")) ** 2'),
    (lit(-2) ** col("a"), '(-2) ** col("a")'),
    (lit(1) + lit(2), "lit(1) + 2"),
    (lit("x"), 'lit("x")'),
    (col("it's"), "col(\"it's\")"),
    ((col("a") > 1) & (col("b") < 2) | ~col("c"), '(col("a") > 1) & (col("b") < 2) | ~col("c")'),
    ((col("a") > 1) & ((col("b") < 2) | col("c")), '(col("a") > 1) & ((col("b") < 2) | col("c"))'),
    ((col("a") + 1).abs().round(2), '(col("a") + 1).abs().round(2)'),
    (col("n").cast(float), 'col("n").cast(float)'),
    (col("s").str.lower().str.contains("x"), 'col("s").str.lower().str.contains("x")'),
    (col("s").str.slice(1, 2), 'col("s").str.slice(1, 2)'),
    (col("s").is_in(["a", "b"]), 'col("s").is_in(["a", "b"])'),
    (col("ts").dt.truncate(dt.timedelta(minutes=1)), 'col("ts").dt.truncate(60000)'),
    (col("a").fill_null(0).is_null(), 'col("a").fill_null(0).is_null()'),
    (col("u").field("id").alias("uid"), 'col("u").field("id").alias("uid")'),
    (when(col("a") > 1).then("x").when(col("b")).then(col("c")).otherwise(None),
     'when(col("a") > 1).then("x").when(col("b")).then(col("c")).otherwise(None)'),
])
def test_repr_reads_like_the_code_that_built_it(expr: ms.Expr, text: str) -> None:
    assert repr(expr) == text
    assert eval(text, vars(X)).equals(expr)  # and it builds the same expression


def test_equality_hashing_and_pickling_are_structural() -> None:
    a, b = (col("a") + 1) * 2, (col("a") + 1) * 2
    assert a is not b and a.equals(b) and hash(a) == hash(b)
    assert not a.equals(col("a") * 2) and not lit(1).equals(lit(True)) and not lit(1).equals(lit(1.0))
    assert isinstance(a == b, ms.Expr)  # == builds a comparison...
    assert a == b and not (a != b)  # noqa: SIM202 - ...whose truth, alone, is structural equality
    assert {a: "x"}[b] == "x" and b in [col("z"), a]
    assert pickle.loads(pickle.dumps(a)).equals(a)
    assert ms.Flow("x") is not None
    from millstream import _plan as P

    assert P.FilterOp(col("p") > 1) == P.FilterOp(col("p") > 1)
    assert P.FilterOp(col("p") > 1) != P.FilterOp(col("p") > 2)


def test_an_expression_has_no_truth_value_of_its_own() -> None:
    with pytest.raises(TypeError, match="truth value"):
        bool(col("a") > 1)
    with pytest.raises(TypeError, match="truth value"):
        if col("a") & col("b"):
            pass


def test_expressions_are_frozen() -> None:
    e = col("a")
    with pytest.raises(AttributeError):
        e.name = "b"  # type: ignore[attr-defined]


def test_output_names_follow_polars() -> None:
    exprs = (col("a"), col("a") * 2, 2 * col("a"), lit(1), col("a").alias("z"), col("u").field("id"),
             when(col("a")).then(col("b")).otherwise(0))
    names = ["a", "a", "literal", "literal", "z", "id", "b"]  # the leftmost operand names it
    assert [e.output_name for e in exprs] == names
    df = pl.DataFrame({"a": [True], "b": [2], "u": [{"id": 1}]})
    assert [df.select(e.to_polars()).columns[0] for e in exprs] == names


# -- to_python ---------------------------------------------------------------------------


def test_to_python_is_source_over_r_with_helpers_in_env() -> None:
    env: dict[str, Any] = {}
    src = (col("price") > 500).to_python(env)
    assert src == "(None if (_xt0 := r['price']) is None else (_xt0 > 500))"
    assert (col("price") > 500).to_python(env, "rec", as_condition=True) == \
        "((_xt1 := rec['price']) is not None and (_xt1 > 500))"
    src = col("c").is_in(["DE", "FR"]).to_python(env)
    consts = [k for k in env if k.startswith("_xc")]
    assert consts and env[consts[0]] == frozenset({"DE", "FR"})
    assert eval(f"(lambda r: {src})", env)({"c": "FR"}) is True
    # a column read once per expression, however often it is used
    assert (col("a") * col("a") + col("a")).to_python({}).count("r['a']") == 1


def test_non_finite_and_odd_literals_are_constants() -> None:
    assert (col("x") < math.inf).compile()({"x": 1e308}) is True
    assert (col("x") * lit(-0.0)).compile()({"x": 1.0}) == 0.0
    assert (col("b") + b"!").compile()({"b": b"hi"}) == b"hi!"


# -- agreement with Polars ---------------------------------------------------------------

SCHEMA = {"a": pl.Int64, "b": pl.Int64, "x": pl.Float64, "s": pl.String, "p": pl.Boolean, "q": pl.Boolean,
          "ts": pl.Int64}


def _same(py: Any, po: Any) -> bool:
    if py is None or po is None:
        return py is None and po is None
    if isinstance(py, bool) or isinstance(po, bool):
        return py == po and isinstance(py, bool) and isinstance(po, bool)
    if isinstance(py, float) or isinstance(po, float):
        return math.isclose(py, po, rel_tol=1e-9, abs_tol=1e-9)
    return bool(py == po)


def _agree(expr: ms.Expr, rows: list[dict[str, Any]]) -> None:
    fn = expr.compile()
    native = [fn(r) for r in rows]
    df = pl.DataFrame(rows, schema=SCHEMA)
    try:
        polars = df.with_columns(expr.to_polars().alias("__out"))["__out"].to_list()
    except pl.exceptions.InvalidOperationError as exc:
        if "doesn't match the DataFrame height" not in str(exc):
            raise
        # a Polars bug: an expression it folds to a scalar (e.g. a when/then over all-null columns
        # compared with a literal) is not broadcast to the frame. The columnar executor hands such a
        # batch to the per-record path: check that a micro-batch flow still gives the native answer.
        flow = ms.Flow("fallback")
        out = collect(flow.source(ms.connectors.memory.read(df)).map(expr))
        flow.run(mode="microbatch")
        polars = out.values
    bad = [(r, a, b) for r, a, b in zip(rows, native, polars) if not _same(a, b)]
    assert not bad, f"{expr!r}: first disagreement (record, native, polars): {bad[0]}"


TABLE_ROWS = [
    {"a": 7, "b": 3, "x": 2.5, "s": "  Hello ", "p": True, "q": None, "ts": TS},
    {"a": -7, "b": -3, "x": -0.5, "s": "abc", "p": False, "q": True, "ts": 0},
    {"a": None, "b": 2, "x": None, "s": None, "p": None, "q": False, "ts": None},
    {"a": 0, "b": None, "x": 1e6, "s": "", "p": True, "q": True, "ts": -1},
    {"a": 12, "b": 5, "x": 3.75, "s": "World x", "p": None, "q": None, "ts": 951_782_400_000},
]

AGREEMENT = [
    col("a") + col("b"), col("a") - col("x"), col("a") * col("b"), col("a") / (col("b").abs() + 1),
    col("a") // (col("b").abs() + 1), col("a") % (col("b").abs() + 1), col("x") // 0.5, col("x") % 0.75,
    col("b") ** 2, col("x") ** 2, -col("a"), col("x").abs(), col("x").round(1), (col("a") * 0.25).round(0),
    col("a") == col("b"), col("a") != 7, col("a") < col("x"), col("x") <= 2.5, col("s") > "b", col("a") >= 0,
    col("p") & col("q"), col("p") | col("q"), ~col("p"), (col("a") > 0) & col("p") | ~col("q"),
    col("a").is_in([7, 12]), col("s").is_in(["abc", ""]), col("a").is_null(), col("x").is_not_null(),
    col("a").fill_null(col("b")), col("p").fill_null(False), col("x").cast(int), col("a").cast(float),
    col("a").cast(str), col("a").cast(bool), col("s").str.lower(), col("s").str.upper(), col("s").str.strip(),
    col("s").str.len(), col("s").str.contains("l"), col("s").str.starts_with("a"), col("s").str.ends_with(" "),
    col("s").str.replace("l", "L"), col("s").str.slice(1, 2), col("s").str.slice(-2), col("s").str.slice(-4, 2),
    col("ts").dt.year(), col("ts").dt.month(), col("ts").dt.day(), col("ts").dt.hour(), col("ts").dt.minute(),
    col("ts").dt.second(), col("ts").dt.weekday(), col("ts").dt.truncate(3_600_000),
    when(col("a") > 5).then("big").when(col("p")).then("flag").otherwise("small"), when(col("q")).then(col("a")),
    lit(None) + col("a"), (lit(None) * 2).abs(), ~lit(None), when(lit(None)).then(1).otherwise(2),
    lit(None).str.lower(), lit(3) * 2, (col("a") * 2).alias("d"),
]


@pytest.mark.parametrize("expr", AGREEMENT, ids=repr)
def test_to_polars_agrees_with_to_python(expr: ms.Expr) -> None:
    _agree(expr, TABLE_ROWS)


def test_to_polars_of_a_nested_field() -> None:
    df = pl.DataFrame({"u": [{"id": 1}, None, {"id": None}]})
    rows = df.to_dicts()
    e = col("u").field("id") + 1
    assert df.select(e.to_polars())["id"].to_list() == [e.compile()(r) for r in rows] == [2, None, None]


def test_to_polars_without_polars_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "polars", None)
    with pytest.raises(ms.errors.MissingDependencyError, match=r"millstream\[polars\]") as err:
        col("a").to_polars()
    assert isinstance(err.value, ImportError)


# random records (with nulls) and random typed expression trees over them
_ints = st.none() | st.integers(-100, 100)
_floats = st.none() | st.floats(-1000, 1000, allow_nan=False, allow_infinity=False)
_strs = st.none() | st.text(alphabet="aAbB x-", max_size=6)
_bools = st.none() | st.booleans()
_rows = st.lists(st.fixed_dictionaries({
    "a": _ints, "b": _ints, "x": _floats, "s": _strs, "p": _bools, "q": _bools,
    "ts": st.none() | st.integers(-10**12, 4 * 10**12)}), min_size=1, max_size=8)


def _num_tree(bools: Any) -> Any:
    leaves = st.sampled_from([col("a"), col("b"), col("x")]) | st.integers(-5, 5).map(lit) | st.just(lit(None))
    def grow(ch: Any) -> Any:
        return st.one_of(
            st.tuples(ch, ch).map(lambda t: t[0] + t[1]),
            st.tuples(ch, ch).map(lambda t: t[0] - t[1]),
            st.tuples(ch, ch).map(lambda t: t[0] * t[1]),
            st.tuples(ch, ch).map(lambda t: t[0] / (t[1].abs() + 1)),
            # integer divisors: by a float, Polars floors the rounded quotient (-4.0 // (4 / 3) is -3.0,
            # Python's exact floor -4.0): a documented difference, see millstream._expr
            st.tuples(ch, ch).map(lambda t: t[0] // (t[1].abs() + 1).cast(int)),
            st.tuples(ch, ch).map(lambda t: t[0] % (t[1].abs() + 1).cast(int)),
            ch.map(lambda e: -e), ch.map(abs), ch.map(lambda e: e.fill_null(1)),
            st.tuples(bools, ch, ch).map(lambda t: when(t[0]).then(t[1]).otherwise(t[2])),
            st.sampled_from(["hour", "weekday", "day"]).map(lambda p: getattr(col("ts").dt, p)()),
            st.sampled_from([col("s").str.len(), col("x").cast(int), col("a").cast(float)]),
        )
    return st.recursive(leaves, grow, max_leaves=5)


def _str_tree() -> Any:
    leaves = st.sampled_from([col("s"), lit("aB "), col("a").cast(str)])
    def grow(ch: Any) -> Any:
        return st.one_of(
            ch.map(lambda e: e.str.lower()), ch.map(lambda e: e.str.upper()), ch.map(lambda e: e.str.strip()),
            ch.map(lambda e: e.str.replace("a", "xy")), ch.map(lambda e: e.fill_null("-")),
            st.tuples(ch, st.integers(-4, 4), st.none() | st.integers(0, 4)).map(
                lambda t: t[0].str.slice(t[1], t[2])),
            st.tuples(ch, ch).map(lambda t: t[0] + t[1]),
        )
    return st.recursive(leaves, grow, max_leaves=4)


def _bool_tree() -> Any:
    nums = st.deferred(lambda: _num_tree(bools))
    strs = _str_tree()
    cmp = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
    ops = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
           "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
    leaves = st.one_of(
        st.sampled_from([col("p"), col("q"), lit(True), lit(False), lit(None)]),
        st.tuples(nums, cmp, nums).map(lambda t: ops[t[1]](t[0], t[2])),
        st.tuples(strs, cmp, strs).map(lambda t: ops[t[1]](t[0], t[2])),
        st.tuples(strs, st.sampled_from(["a", "B", " "])).map(lambda t: t[0].str.contains(t[1])),
        st.tuples(strs, st.sampled_from(["a", "x"])).map(lambda t: t[0].str.starts_with(t[1])),
        nums.map(lambda e: e.is_in([0, 1, 2])), nums.map(lambda e: e.is_null()),
    )
    def grow(ch: Any) -> Any:
        return st.one_of(st.tuples(ch, ch).map(lambda t: t[0] & t[1]), st.tuples(ch, ch).map(lambda t: t[0] | t[1]),
                         ch.map(lambda e: ~e), ch.map(lambda e: e.fill_null(True)))
    bools: Any = st.recursive(leaves, grow, max_leaves=4)
    return bools


_BOOLS = _bool_tree()
_EXPRS = st.one_of(_BOOLS, _num_tree(_BOOLS), _str_tree())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=_EXPRS, rows=_rows)
def test_random_expressions_agree_with_polars_on_random_records(expr: ms.Expr, rows: list[dict[str, Any]]) -> None:
    _agree(expr, rows)


@settings(max_examples=200, deadline=None)
@given(rows=_rows, cond=_BOOLS)
def test_a_filter_keeps_what_polars_keeps(rows: list[dict[str, Any]], cond: ms.Expr) -> None:
    flow = ms.Flow("f")
    out = collect(flow.source(TestSource(rows)).filter(cond))
    flow.run()
    assert out.values == pl.DataFrame(rows, schema=SCHEMA).filter(cond.to_polars(as_condition=True)).to_dicts()


# -- inside flows ------------------------------------------------------------------------

TX = [{"card": c, "amount": a, "ts": t} for c, a, t in [
    ("A1", 120.0, 1_000), ("b2", 40.0, 2_000), ("a1", 900.0, 3_500), ("B2", None, 4_000), ("c3", 10.0, 9_999),
    ("A1", 300.0, 10_000), ("b2", 700.0, 12_000), ("C3", 5.0, 19_000)]]


def _source(flow: ms.Flow, rows: list[Any] = TX, **kw: Any) -> ms.Stream:
    return flow.source(TestSource(rows, **kw), watermark=ms.WatermarkStrategy.bounded(0, timestamp=col("ts")))


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_filter_map_with_columns_select_in_one_chain(chunk: int | None) -> None:
    flow = ms.Flow("x")
    s = _source(flow, chunk=chunk).with_columns(card=col("card").str.upper(), eur=(col("amount") * 0.9).round(2))
    big = collect(s.filter((col("eur") > 100) & col("card").str.starts_with("A")).select("card", "eur"))
    flags = collect(s.map(when(col("eur") > 500).then("high").when(col("eur").is_null()).then("?").otherwise("ok")))
    flow.run()
    assert big.items == [({"card": "A1", "eur": 108.0}, 1_000), ({"card": "A1", "eur": 810.0}, 3_500),
                         ({"card": "A1", "eur": 270.0}, 10_000)]
    assert flags.values == ["ok", "ok", "high", "?", "ok", "ok", "high", "ok"]


def test_with_columns_reads_the_incoming_record_and_select_builds_a_new_one() -> None:
    flow = ms.Flow("x")
    rows = [{"a": 1, "b": 10}]
    wc = collect(flow.source(TestSource(rows)).with_columns(a=col("b"), b=col("a"), c=5, d=None))
    sel = collect(flow.source(TestSource(rows), name="s2")
                  .select("b", (col("a") * 2).alias("a2"), col("a") + col("b"), k=lit("x")))
    flow.run()
    assert wc.values == [{"a": 10, "b": 1, "c": 5, "d": None}]
    assert rows == [{"a": 1, "b": 10}]  # the input record is not modified
    assert sel.values == [{"b": 10, "a2": 2, "a": 11, "k": "x"}]


def test_positional_with_columns_and_a_field_called_name() -> None:
    flow = ms.Flow("x")
    out = collect(flow.source(TestSource([{"first": "ada"}]))
                  .with_columns(col("first").str.upper().alias("name"), name="upper-name"))
    res = flow.run()
    assert out.values == [{"first": "ada", "name": "ADA"}]
    assert res.step("upper-name").fused == ("upper-name",)


def test_keyed_tumbling_window_keyed_by_col_and_timestamp_by_expression() -> None:
    flow = ms.Flow("w")
    out = collect(_source(flow).key_by(col("card")).window(ms.windows.tumbling(10_000))
                  .aggregate(total=ms.agg.sum("amount"), n=ms.agg.count())
                  .filter(col("total") > 100))
    flow.run()
    assert out.items == [
        ({"card": "A1", "window_start": 0, "window_end": 10_000, "total": 120.0, "n": 1}, 9_999),
        ({"card": "a1", "window_start": 0, "window_end": 10_000, "total": 900.0, "n": 1}, 9_999),
        ({"card": "A1", "window_start": 10_000, "window_end": 20_000, "total": 300.0, "n": 1}, 19_999),
        ({"card": "b2", "window_start": 10_000, "window_end": 20_000, "total": 700.0, "n": 1}, 19_999),
    ]


def test_key_by_an_expression_names_its_key_column() -> None:
    flow = ms.Flow("k")
    low = col("card").str.lower()
    by_default = collect(_source(flow).key_by(low).window(ms.windows.tumbling(10_000)).aggregate(n=ms.agg.count()))
    by_alias = collect(_source(flow, name="s2").key_by(low.alias("c")).aggregate(n=ms.agg.count()))
    by_name = collect(_source(flow, name="s3").key_by(low, name="cc").reduce(lambda a, b: b))
    both = collect(_source(flow, name="s4").key_by((col("card"), "ts")).aggregate(n=ms.agg.count()))
    flow.run()
    assert [(r["key"], r["window_start"], r["n"]) for r in by_default.values] == [
        ("a1", 0, 2), ("b2", 0, 2), ("c3", 0, 1), ("a1", 10_000, 1), ("b2", 10_000, 1), ("c3", 10_000, 1)]
    assert by_alias.values[-1] == {"c": "c3", "n": 2}
    assert by_name.values == TX  # a reduce emits its records; the key just partitions
    assert both.values[0] == {"card": "A1", "ts": 1_000, "n": 1}


def test_a_null_key_is_a_key_like_any_other() -> None:
    flow = ms.Flow("k")
    out = collect(_source(flow).key_by((col("amount") > 100).alias("big")).aggregate(n=ms.agg.count()))
    flow.run()
    assert {r["big"]: r["n"] for r in out.values} == {False: 3, True: 4, None: 1}


def test_an_expression_timestamp_is_inlined_and_converted() -> None:
    flow = ms.Flow("t")
    rows = [{"sec": 1}, {"sec": 12}, {"sec": 25}]
    wm = ms.WatermarkStrategy.monotonous(timestamp=col("sec") * 1000)
    out = collect(flow.source(TestSource(rows), watermark=wm).window(ms.windows.tumbling(10_000))
                  .aggregate(n=ms.agg.count()))
    flow.run()
    assert [(r["window_start"], r["n"]) for r in out.values] == [(0, 1), (10_000, 1), (20_000, 1)]
    assert "col(\"sec\") * 1000" in wm.describe()


def test_a_null_timestamp_follows_the_sources_error_policy() -> None:
    flow = ms.Flow("t")
    rows = [{"ts": 1}, {"ts": None}, {"ts": 3}]
    out = collect(flow.source(TestSource(rows, on_error="skip"),
                              watermark=ms.WatermarkStrategy.monotonous(timestamp=col("ts"))))
    res = flow.run()
    assert out.values == [{"ts": 1}, {"ts": 3}]
    assert res.step("test-source").extra.get("skipped") == 1


def test_plan_shows_expressions() -> None:
    flow = ms.Flow("p")
    s = flow.source(TestSource([{"a": 1}]), name="in").filter(col("a") > 1).map(col("a") * 2, name="dbl")
    s.sink(CollectSink())
    text = str(flow.plan())
    assert 'filter:col("a") > 1: filter col("a") > 1 <- in' in text
    assert 'dbl: map col("a") * 2' in text


def test_expressions_are_inlined_into_the_fused_loop() -> None:
    flow = ms.Flow("inline")
    (flow.source(TestSource([{"price": 600}, {"price": 100}]))
     .filter(col("price") > 500, name="big").map(col("price") * 0.908, name="eur").sink(CollectSink()))
    job = start(flow)
    [chain] = [op for op in job.ops if isinstance(op, ChainOperator)]
    src = "".join(linecache.getlines(chain._filename))
    assert "if not ((_xt0 := r['price']) is not None and (_xt0 > 500)): continue" in src
    assert "r = (None if (_xt1 := r['price']) is None else (_xt1 * 0.908))" in src
    assert "_f0" not in src and src.count("(r)") == 1  # no call of a function or closure, just _oa(r)
    finish(job)


# -- errors ------------------------------------------------------------------------------


@pytest.mark.native_only("Polars divides by zero to inf/null where Python raises (see millstream._expr)")
def test_an_expression_that_raises_names_its_step_and_record() -> None:
    flow = ms.Flow("e")
    rows = [{"a": 1, "b": 2, "ts": 5}, {"a": 1, "b": 0, "ts": 6}]
    collect(_source(flow, rows).with_columns(c=col("a") + 1, name="plus")
            .map(col("a") / col("b"), name="ratio")  # <ratio>
            .map(lambda x: x, name="after"))
    with pytest.raises(ms.StepError) as err:
        flow.run()
    e = err.value
    assert (e.step, e.position, e.event_time, e.record) == ("ratio", "test-source[1]", 6, {**rows[1], "c": 2})
    assert e.location is not None and e.location.endswith(line_of("ratio"))
    assert isinstance(e.__cause__, ZeroDivisionError)


def test_a_failing_filter_or_select_expression_names_its_step() -> None:
    flow = ms.Flow("e")
    collect(flow.source(TestSource([{"a": "x"}, {"a": 2}])).filter(col("a") > 1, name="cmp"))
    with pytest.raises(ms.StepError) as err:
        flow.run()
    assert err.value.step == "cmp" and isinstance(err.value.__cause__, TypeError)
    flow = ms.Flow("e")
    collect(flow.source(TestSource([{"a": 1}])).map(lambda r: r, name="m").select("a", "b", name="pick"))
    with pytest.raises(ms.StepError) as err:
        flow.run()
    assert err.value.step == "pick" and isinstance(err.value.__cause__, KeyError)


@pytest.mark.native_only("Polars divides by zero to inf/null where Python raises (see millstream._expr)")
def test_a_failing_key_expression_names_the_keyed_step() -> None:
    flow = ms.Flow("e")
    collect(_source(flow, [{"k": 1, "ts": 1}, {"k": 0, "ts": 2}]).key_by(10 // col("k"))
            .window(ms.windows.tumbling(10), name="win").aggregate(n=ms.agg.count()))
    with pytest.raises(ms.StepError) as err:
        flow.run()
    assert err.value.step == "win" and isinstance(err.value.__cause__, ZeroDivisionError)
    assert err.value.position == "test-source[1]"


def _check(err: pytest.ExceptionInfo[ms.FlowDefinitionError], tag: str, step: str | None, *words: str) -> None:
    e = err.value
    assert e.step == step
    assert e.location is not None and e.location.endswith(line_of(tag)), e.location
    assert e.fix
    for w in words:
        assert w in str(e), (w, str(e))


def test_building_a_bad_expression_fails_where_it_is_written() -> None:
    with pytest.raises(ms.FlowDefinitionError) as err:
        col(3)  # type: ignore[arg-type]  # <col-3>
    _check(err, "col-3", None, "col() takes a field name", "not 3", "col('price')")
    with pytest.raises(ms.FlowDefinitionError) as err:
        col("a") + [1]  # <list>
    _check(err, "list", None, "list [1]")
    with pytest.raises(ms.FlowDefinitionError) as err:
        lit(object())  # <obj>
    _check(err, "obj", None, "object")
    with pytest.raises(ms.FlowDefinitionError) as err:
        col("s").str.contains(5)  # type: ignore[arg-type]  # <contains>
    _check(err, "contains", None, "str.contains() takes a str")
    with pytest.raises(ms.FlowDefinitionError) as err:
        col("a").cast(list)  # <cast>
    _check(err, "cast", None, "int, float, str or bool")
    with pytest.raises(ms.FlowDefinitionError) as err:
        (col("a") + 1) & (col("b") > 1)  # <and>
    _check(err, "and", None, "is not a condition")
    with pytest.raises(ms.FlowDefinitionError) as err:
        when(col("a") * 2)  # <when>
    _check(err, "when", None, "when() takes a condition")
    with pytest.raises(ms.FlowDefinitionError) as err:
        col("a") + when(col("p"))  # <then>
    _check(err, "then", None, "missing its .then")
    for bad in (lambda: col("a").round(-1), lambda: col("a").round("x"), lambda: col("a").is_in("ab"),
                lambda: col("a").is_in([[1]]), lambda: col("s").str.slice(0, -1), lambda: col("a").alias(""),
                lambda: col("ts").dt.truncate(0), lambda: col("ts").dt.truncate("x"),
                lambda: col("s").str.replace("", "x"), lambda: col("a").field(1)):
        with pytest.raises(ms.FlowDefinitionError):
            bad()


def test_expressions_in_the_wrong_place_fail_while_building() -> None:
    flow = ms.Flow("e")
    s = flow.source(TestSource([{"a": 1}]))
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.filter(col("a") * 2)  # <filter-num>
    _check(err, "filter-num", 'filter:col("a") * 2', "is not a condition", "col('price') * 0.908 > 500")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.flat_map(col("a"))  # type: ignore[arg-type]  # <flat>
    _check(err, "flat", "flat_map", "flat_map takes a function, not an expression")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.inspect(col("a"), name="look")  # type: ignore[arg-type]  # <inspect>
    _check(err, "inspect", "look", "not an expression")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.key_by("a").reduce(col("a"))  # type: ignore[arg-type]  # <reduce>
    _check(err, "reduce", 'reduce:col("a")', "not an expression")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.map(3)  # type: ignore[arg-type]  # <map-3>
    _check(err, "map-3", "map", "needs a function or an expression", "int 3")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.with_columns()  # <empty>
    _check(err, "empty", "with_columns:", "at least one column")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.with_columns(x=lambda r: 1)  # <fn-col>
    _check(err, "fn-col", "with_columns:x", "is a function", ".map(lambda r:")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.with_columns(x=[1])  # <list-col>
    _check(err, "list-col", "with_columns:x", "column 'x'", "list [1]")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.with_columns(name=col("a"))  # <name>
    _check(err, "name", "with_columns", "names the step", "alias('name')")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.select("a", col("b").alias("a"))  # <dup>
    _check(err, "dup", "select:a,a", "names column 'a' twice")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.select(3)  # type: ignore[arg-type]  # <sel-3>
    _check(err, "sel-3", "select", "field names and expressions")
    with pytest.raises(ms.FlowDefinitionError) as err:
        s.key_by([col("a") + 1])  # <key>
    _check(err, "key", "key_by:fields", "key_by takes")
    with pytest.raises(ms.ConfigError):
        ms.WatermarkStrategy.bounded(0, timestamp=3)  # type: ignore[arg-type]
