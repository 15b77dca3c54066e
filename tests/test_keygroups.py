"""Key groups: stable, the same for a record and a column, and every group owned by one worker."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millstream._keygroups import (
    DEFAULT_MAX_PARALLELISM,
    check_parallelism,
    groups_of,
    key_group,
    key_groups,
    worker_of,
    workers_of,
)
from millstream._state import split_key_groups

# -- ownership ---------------------------------------------------------------------------------

sizes = st.integers(1, 4096).flatmap(lambda m: st.tuples(st.integers(1, m), st.just(m)))


@given(sizes)
def test_every_group_has_exactly_one_owner(nm: tuple[int, int]) -> None:
    n, m = nm
    owner = [-1] * m
    for w in range(n):
        for g in groups_of(w, n, m):
            assert owner[g] == -1, f"group {g} owned by {owner[g]} and {w}"
            owner[g] = w
    assert owner == [worker_of(g, n, m) for g in range(m)]
    assert list(workers_of(np.arange(m), n, m)) == owner


@given(sizes)
def test_ranges_are_contiguous_in_worker_order_and_balanced(nm: tuple[int, int]) -> None:
    n, m = nm
    ranges = [groups_of(w, n, m) for w in range(n)]
    assert ranges[0].start == 0 and ranges[-1].stop == m
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:], strict=False))
    assert all(r.step == 1 for r in ranges)
    sizes_ = [len(r) for r in ranges]
    assert min(sizes_) >= 1 and max(sizes_) - min(sizes_) <= 1


def test_ranges_are_flinks() -> None:
    # KeyGroupRangeAssignment: group g -> operator g * n // m; 128 groups over 3: 43, 43, 42
    assert [groups_of(w, 3, 128) for w in range(3)] == [range(0, 43), range(43, 86), range(86, 128)]
    assert worker_of(42, 3, 128) == 0 and worker_of(43, 3, 128) == 1
    assert split_key_groups(128, 3) == [groups_of(w, 3, 128) for w in range(3)]
    assert groups_of(0, 1) == range(DEFAULT_MAX_PARALLELISM)


@pytest.mark.parametrize(("n", "m"), [(0, 128), (129, 128), (1, 0), (1, 40_000)])
def test_parallelism_out_of_range_is_refused(n: int, m: int) -> None:
    with pytest.raises(ValueError, match="parallelism"):
        check_parallelism(n, m)


# -- hashing -----------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.floats(-1e6, 1e6).map(float.__floor__).map(float),  # integral floats: the int's group
    st.text(max_size=30), st.binary(max_size=20),
)
keys = st.one_of(scalars, st.tuples(scalars, scalars), st.tuples(st.text(max_size=5), st.tuples(scalars)))


@given(keys)
def test_group_is_in_range_and_equal_keys_share_it(key: Any) -> None:
    g = key_group(key)
    assert 0 <= g < DEFAULT_MAX_PARALLELISM
    if isinstance(key, float) and key.is_integer():
        assert key_group(int(key)) == g
    assert key_group(1) == key_group(1.0) == key_group(True)


def _column_agrees(values: list[Any], dtype: Any, m: int) -> None:
    s = pl.Series(values, dtype=dtype, strict=False)
    native = [key_group(v, m) for v in s.to_list()]
    assert key_groups(s, m).tolist() == native


@settings(max_examples=60)
@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=40), st.integers(1, 32768))
def test_int_column_agrees_with_each_record(values: list[int | None], m: int) -> None:
    _column_agrees(values, pl.Int64, m)


@settings(max_examples=60)
@given(st.lists(st.one_of(st.none(), st.floats(), st.integers(-(2**53), 2**53).map(float),
                          st.sampled_from([1e300, -0.0, 2.0**63, -(2.0**63)])), max_size=40))
def test_float_column_agrees_with_each_record(values: list[float | None]) -> None:
    _column_agrees(values, pl.Float64, 128)


@settings(max_examples=60)
@given(st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=40))
def test_string_column_agrees_with_each_record(values: list[str | None]) -> None:
    _column_agrees(values, pl.String, 128)
    _column_agrees(values, pl.Categorical, 128)


@settings(max_examples=30)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=20),
       st.lists(st.one_of(st.none(), st.booleans()), max_size=20))
def test_binary_and_bool_columns_agree_with_each_record(blobs: list[bytes | None], flags: list[bool | None]) -> None:
    _column_agrees(blobs, pl.Binary, 128)
    _column_agrees(flags, pl.Boolean, 128)


@settings(max_examples=60)
@given(st.lists(st.tuples(st.one_of(st.none(), st.text(max_size=10)),
                          st.one_of(st.none(), st.integers(-1000, 1000)),
                          st.one_of(st.none(), st.floats(-10, 10))), max_size=30))
def test_several_key_columns_agree_with_the_record_tuple(rows: list[tuple[Any, Any, Any]]) -> None:
    cols = [pl.Series([r[i] for r in rows], dtype=t) for i, t in enumerate((pl.String, pl.Int64, pl.Float64))]
    native = [key_group(tuple(v.item() if isinstance(v, np.generic) else v for v in r)) for r in rows]
    assert key_groups(cols).tolist() == native


def test_mixed_object_column_goes_value_by_value_and_refuses_what_native_refuses() -> None:
    values = [1, "1", None, (1, 2.5), b"x"]
    assert key_groups(pl.Series(values, dtype=pl.Object)).tolist() == [key_group(v) for v in values]
    import datetime

    with pytest.raises(TypeError, match="cannot be stored in keyed state"):
        key_groups(pl.Series([datetime.date(2024, 1, 1)], dtype=pl.Object))


def test_a_column_of_sliced_chunks_agrees() -> None:
    s = pl.concat([pl.Series(["a", "bb", None]), pl.Series(["ccc", "d"])], rechunk=False).slice(1, 3)
    assert key_groups(s).tolist() == [key_group(v) for v in s.to_list()]


def test_sequential_keys_spread_evenly() -> None:
    counts = np.bincount(key_groups(pl.Series(range(128_000))), minlength=128)
    assert counts.min() > 0.9 * 1000 and counts.max() < 1.1 * 1000
    counts = np.bincount(key_groups(pl.Series([f"user-{i}" for i in range(128_000)])), minlength=128)
    assert counts.min() > 0.9 * 1000 and counts.max() < 1.1 * 1000


SAMPLE = ("a", "card-17", 42, -7, 2.5, 3.0, None, True, b"\x00", ("x", 1), ("y", (None, 2.5)))


def test_groups_are_fixed_values_the_same_in_every_process() -> None:
    # the values themselves are part of the checkpoint format: a change here moves every key's state
    expected = [key_group(k) for k in SAMPLE]
    assert expected[1] == 104
    code = (
        "import polars as pl\n"
        "from millstream._keygroups import key_group, key_groups\n"
        f"keys = {SAMPLE!r}\n"
        "print([key_group(k) for k in keys], key_groups(pl.Series(['a', 'card-17'])).tolist(),"
        " key_groups(pl.Series([42, -7])).tolist())\n"
    )
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert outs == {f"{expected} {expected[0:2]} {expected[2:4]}\n"}
