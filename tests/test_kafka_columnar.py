"""The Kafka sink's columnar values (micro-batch mode): ``json_values(frame)`` must be, byte for byte,
``orjson.dumps`` of each record ``frame.to_dicts()`` makes, which is what native mode writes for the
same records; and it must take every column type the pipelines produce (floats included), so that
micro-batch does not fall back to writing record by record. No broker needed: the end-to-end check
through a topic is tests/integration/test_kafka.py::test_columnar_writes_the_same_bytes."""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pl = pytest.importorskip("polars")
np = pytest.importorskip("numpy")

from millstream.connectors._kafka_write import json_values  # noqa: E402


def orjson_rows(frame: Any) -> list[bytes]:
    return [orjson.dumps(r) for r in frame.to_dicts()]


def test_floats_take_the_columnar_path_and_match_orjson_for_any_double() -> None:
    rng = np.random.default_rng(7)
    doubles = rng.integers(0, 2**64, size=200_000, dtype=np.uint64).view(np.float64)
    special = [0.0, -0.0, 1.0, 0.1, 1e16, 1e15, 1e-5, 1e-7, 5e-324, 1.7976931348623157e308, math.nan, math.inf,
               -math.inf, 123.456, 0.908 * 12345, 1e21, 1e22, 2.5e-308, None]
    decimals = rng.integers(100, 10**8, size=100_000) * 0.908  # Nexmark q1's price
    for values in (doubles, special, decimals):
        frame = pl.DataFrame({"x": values}, schema={"x": pl.Float64})
        got = json_values(frame)
        assert got is not None, "a float column must not fall back to records"
        assert got == orjson_rows(frame)


def test_float32_is_written_as_the_double_to_dicts_makes() -> None:
    rng = np.random.default_rng(8)
    f32 = rng.integers(0, 2**32, size=100_000, dtype=np.uint32).view(np.float32)
    frame = pl.DataFrame({"x": f32, "l": [[v] for v in f32[:100_000].tolist()]},
                         schema={"x": pl.Float32, "l": pl.List(pl.Float32)})
    got = json_values(frame)
    assert got is not None
    assert got == orjson_rows(frame)


def test_q1_row_is_written_as_native_writes_it() -> None:
    """Nexmark q1's output row, made by an expression in micro-batch and by the same arithmetic per
    record in native mode: the same bytes."""
    rng = np.random.default_rng(9)
    n = 10_000
    bids = pl.DataFrame({"auction": rng.integers(1000, 9999, n), "bidder": rng.integers(1000, 9999, n),
                         "price": rng.integers(100, 10**8, n), "dateTime": rng.integers(10**12, 2 * 10**12, n),
                         "extra": [f"x{i}\"\\é" for i in range(n)]})
    frame = bids.with_columns(pl.col("price") * 0.908)
    native = [orjson.dumps({**r, "price": r["price"] * 0.908}) for r in bids.to_dicts()]
    assert json_values(frame) == native


def test_strings_keys_nested_values_and_nulls() -> None:
    strs = ["", "a\"b", "c\\d", "tab\t", "nl\n", "cr\r", "\x00\x01\x1f\x7f", "é€😀", "\u2028\u2029\ufeff", "/", None]
    frame = pl.DataFrame({
        "s": strs,
        'k"e\\y\n é': list(range(len(strs))),
        "b": [True, False, None] * 3 + [True, None],
        "n": [None] * len(strs),
        "u": [2**64 - 1, 0] + [None] * (len(strs) - 2),
        "i": [-2**63, 2**63 - 1] + [None] * (len(strs) - 2),
        "l": [[1, None], [], None] * 3 + [[2], None],
        "st": [{"a": 1.5, "b": "x\"y"}, {"a": None, "b": None}, None] * 3 + [{"a": -0.0, "b": "\u2028"}, None],
        "ls": [[{"a": [1.25, None]}], None, []] * 3 + [[{"a": None}], None],
        "c": pl.Series(["p", "q", None] * 3 + ["p", None], dtype=pl.Categorical),
        "e": pl.Series(["p", "q", None] * 3 + ["p", None], dtype=pl.Enum(["p", "q"])),
    }, schema_overrides={"u": pl.UInt64, "n": pl.Null})
    frame = frame.with_columns(arr=pl.Series([[i, -i] for i in range(len(strs))], dtype=pl.Array(pl.Int64, 2)))
    got = json_values(frame)
    assert got is not None
    assert got == orjson_rows(frame)


def test_types_orjson_writes_otherwise_fall_back() -> None:
    frame = pl.DataFrame({"t": [1]}).with_columns(pl.from_epoch(pl.col("t"), "ms").alias("dt"))
    assert json_values(frame) is None
    assert json_values(pl.DataFrame({"b": [b"x"]})) is None
    assert json_values(pl.DataFrame({"d": pl.Series(["1.5"]).cast(pl.Decimal(10, 2))})) is None


@st.composite
def frames(draw: Any) -> Any:
    ncols = draw(st.integers(1, 4))
    nrows = draw(st.integers(1, 8))
    columns = {}
    for c in range(ncols):
        dtype = draw(st.sampled_from(list(_SCALAR_VALUES)))
        kind = draw(st.sampled_from(["plain", "list", "struct"]))
        values = []
        for _ in range(nrows):
            if draw(st.booleans()) and draw(st.booleans()):
                values.append(None)
                continue
            one = draw(st.sampled_from(_SCALAR_VALUES[dtype]))(draw)
            values.append([one, None] if kind == "list" else {"v": one, "w": one} if kind == "struct" else one)
        t = pl.List(dtype) if kind == "list" else pl.Struct({"v": dtype, "w": dtype}) if kind == "struct" else dtype
        columns[f"c{c}\"\\{draw(st.text(max_size=2))}"] = pl.Series(values, dtype=t)
    return pl.DataFrame(columns)


def _ints(lo: int, hi: int) -> Any:
    return lambda draw: draw(st.integers(lo, hi))


_SCALAR_VALUES: dict[Any, list[Any]] = {
    pl.Int64: [_ints(-2**63, 2**63 - 1)],
    pl.UInt32: [_ints(0, 2**32 - 1)],
    pl.Float64: [lambda draw: draw(st.floats()),
                 lambda draw: struct.unpack("<d", draw(st.binary(min_size=8, max_size=8)))[0]],
    pl.Float32: [lambda draw: draw(st.floats(width=32))],
    pl.String: [lambda draw: draw(st.text(st.characters(exclude_categories=("Cs",))))],
    pl.Boolean: [lambda draw: draw(st.booleans())],
}


@settings(max_examples=300, deadline=None)
@given(frames())
def test_property_any_frame_of_these_types_is_written_as_orjson_writes_its_records(frame: Any) -> None:
    got = json_values(frame)
    assert got is not None
    assert got == orjson_rows(frame)
