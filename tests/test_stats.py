"""millstream.stats: online statistics against plain-Python and numpy references, running and in windows."""

from __future__ import annotations

import math
import pickle
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import millstream as ms
from conftest import collect, stamped
from millstream.stats import HyperLogLog, QuantileSketch
from millstream.testing import ManualClock, TestSource, TransactionalCollectSink

pytestmark = pytest.mark.usefixtures("exec_mode")


# -- references -----------------------------------------------------------------------


def ew_reference(xs: list[float], alpha: float) -> tuple[float, float]:
    """Weighted mean and (biased) variance with the weights of pandas' ewm(adjust=False), not recursively."""
    n = len(xs) - 1
    w = [(1 - alpha) ** n] + [alpha * (1 - alpha) ** (n - i) for i in range(1, n + 1)]
    mean = sum(wi * x for wi, x in zip(w, xs))
    var = sum(wi * (x - mean) ** 2 for wi, x in zip(w, xs))
    return mean, var


def z_reference(xs: list[float], alpha: float, warmup: int) -> list[tuple[float | None, float]]:
    """For each value: its z-score against the values before it (None in the warmup or at zero variance), and
    that variance relative to the mean's scale (the recursion and the definition may round a zero variance
    differently, so tests skip those)."""
    out: list[tuple[float | None, float]] = []
    for i, x in enumerate(xs):
        if i < warmup:
            out.append((None, 1.0))
            continue
        mean, var = ew_reference(xs[:i], alpha)
        out.append(((x - mean) / math.sqrt(var) if var > 0 else None, var / (1.0 + mean * mean)))
    return out


def running(records: list[dict[str, Any]], **aggs: ms.agg.Aggregation) -> dict[Any, list[dict[str, Any]]]:
    """Run a keyed running aggregate over ``records`` (key field ``k``); the rows of each key, in order."""
    flow = ms.Flow("stats")
    out = collect(flow.source(TestSource(records, chunk=7)).key_by("k").aggregate(**aggs))
    flow.run()
    by_key: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in out.values:
        by_key[row["k"]].append(row)
    return by_key


class TickingClock(ManualClock):
    """Processing time that moves 5 ms each time it is read: periodic checkpoints happen, deterministically."""

    def now_ms(self) -> int:
        self.advance(5)
        return super().now_ms()


def series(seed: int, n: int, keys: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"k": rng.randrange(keys), "x": rng.gauss(50, 10)} for _ in range(n)]


# -- exponentially weighted statistics ------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.0])
def test_ewma_and_ewm_var_match_the_weighted_definition_per_key(alpha: float) -> None:
    records = series(1, 300)
    rows = running(records, m=ms.stats.ewma("x", alpha), v=ms.stats.ewm_var("x", alpha),
                   s=ms.stats.ewm_std("x", alpha))
    for k, got in rows.items():
        xs = [r["x"] for r in records if r["k"] == k]
        assert len(got) == len(xs)
        for i, row in enumerate(got):
            mean, var = ew_reference(xs[: i + 1], alpha)
            assert row["m"] == pytest.approx(mean, rel=1e-9, abs=1e-9)
            assert row["v"] == pytest.approx(var, rel=1e-7, abs=1e-9)
            assert row["s"] == pytest.approx(math.sqrt(var), rel=1e-7, abs=1e-9)


def test_none_values_are_skipped_and_statistics_start_empty() -> None:
    records = [{"k": "a", "x": None}, {"k": "a", "x": 4}, {"k": "a", "x": None}, {"k": "a", "x": 8}]
    rows = running(records, m=ms.stats.ewma("x", 0.5), v=ms.stats.ewm_var("x", 0.5),
                   z=ms.stats.zscore("x", 0.5, warmup=1), q=ms.stats.median("x"),
                   d=ms.stats.approx_distinct("x"))["a"]
    assert [r["m"] for r in rows] == [None, 4.0, 4.0, 6.0]
    assert [r["v"] for r in rows] == [None, 0.0, 0.0, 4.0]
    assert [r["z"] for r in rows] == [None, None, None, None]  # the deviation before 8 is 0
    assert rows[0]["q"] is None and rows[-1]["q"] == pytest.approx(4, rel=0.01)
    assert [r["d"] for r in rows] == [0, 1, 1, 2]


@given(xs=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40),
       alpha=st.floats(0.01, 1.0))
@settings(max_examples=30, deadline=None)
def test_zscore_is_test_then_train_against_the_earlier_values(xs: list[float], alpha: float) -> None:
    warmup = 3
    rows = running([{"k": 0, "x": x} for x in xs], z=ms.stats.zscore("x", alpha, warmup=warmup),
                   a=ms.stats.anomaly("x", alpha, threshold=2.0, warmup=warmup))[0]
    expected = z_reference(xs, alpha, warmup)
    for row, (z, scale) in zip(rows, expected, strict=True):
        if scale < 1e-9:
            continue
        if z is None:
            assert row["z"] is None and row["a"] is False
            continue
        assert row["z"] == pytest.approx(z, rel=1e-6, abs=1e-6)
        if abs(abs(z) - 2.0) > 1e-6:
            assert row["a"] == (abs(z) > 2.0)


def test_anomaly_flags_a_spike_after_the_warmup_only() -> None:
    rng = random.Random(7)
    xs = [100 + rng.uniform(-1, 1) for _ in range(200)]
    xs[3] = 1_000.0  # inside the warmup: no flag
    xs[150] = 130.0  # 30 sigma-ish away
    rows = running([{"k": "card", "x": x} for x in xs],
                   flag=ms.stats.anomaly("x", alpha=0.05, threshold=4.0), z=ms.stats.zscore("x", alpha=0.05))["card"]
    flagged = [i for i, r in enumerate(rows) if r["flag"]]
    assert flagged == [150]
    assert rows[3]["z"] is None and rows[19]["z"] is None and rows[20]["z"] is not None  # warmup 1 / 0.05


def test_sequential_statistics_work_in_tumbling_windows_in_arrival_order() -> None:
    records = [{"k": i % 2, "x": float((i * 37) % 11), "ts": i * 10} for i in range(100)]
    flow = ms.Flow("ew-windows")
    out = collect(stamped(flow, records).key_by("k").window(ms.windows.tumbling(200)).aggregate(
        m=ms.stats.ewma("x", 0.2), v=ms.stats.ewm_var("x", 0.2), n=ms.agg.count()))
    flow.run()
    assert len(out.values) == 10
    for row in out.values:
        xs = [r["x"] for r in records if r["k"] == row["k"] and row["window_start"] <= r["ts"] < row["window_end"]]
        mean, var = ew_reference(xs, 0.2)
        assert row["n"] == len(xs)
        assert row["m"] == pytest.approx(mean) and row["v"] == pytest.approx(var, abs=1e-9)


@pytest.mark.parametrize("agg", [ms.stats.ewma("x"), ms.stats.ewm_var("x"), ms.stats.zscore("x"),
                                 ms.stats.anomaly("x")])
def test_sequential_statistics_are_refused_by_merging_windows_when_built(agg: ms.agg.Aggregation) -> None:
    assert not agg.mergeable
    flow = ms.Flow("refused")
    keyed = stamped(flow, [{"k": 1, "x": 1.0, "ts": 0}]).key_by("k")
    with pytest.raises(ms.FlowDefinitionError, match="merge") as info:
        keyed.window(ms.windows.sliding(size=100, every=10)).aggregate(s=agg)
    assert info.value.location is not None and "test_stats.py" in info.value.location
    with pytest.raises(ms.FlowDefinitionError, match="merge"):
        keyed.window(ms.windows.session(gap=100)).aggregate(s=agg)


# -- quantiles ------------------------------------------------------------------------


def within(got: float, exact: float, rel: float) -> bool:
    return abs(got - exact) <= rel * abs(exact) + 1e-12


@pytest.mark.parametrize("dist", ["lognormal", "normal", "uniform_int", "with_zeros"])
@pytest.mark.parametrize("rel", [0.01, 0.05])
def test_quantile_sketch_is_within_its_relative_accuracy_of_numpy(dist: str, rel: float) -> None:
    rng = np.random.default_rng(42)
    xs = {
        "lognormal": rng.lognormal(3, 2, 20_000),
        "normal": rng.normal(0, 100, 20_000),  # negative and positive
        "uniform_int": rng.integers(0, 1_000, 20_000).astype(float),
        "with_zeros": np.where(rng.random(20_000) < 0.3, 0.0, rng.exponential(5, 20_000)),
    }[dist]
    s = QuantileSketch(rel)
    for x in xs.tolist():
        s.add(x)
    for q in (0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0):
        exact = float(np.quantile(xs, q, method="lower"))
        got = s.quantile(q)
        assert got is not None and within(got, exact, rel), (q, got, exact)
    assert len(s.pos) + len(s.neg) < 2_000


@given(a=st.lists(st.floats(-1e9, 1e9, allow_nan=False), max_size=60),
       b=st.lists(st.floats(-1e9, 1e9, allow_nan=False), max_size=60),
       q=st.floats(0, 1))
@settings(max_examples=60, deadline=None)
def test_quantile_sketches_merge_exactly_and_stay_within_the_bound(a: list[float], b: list[float], q: float) -> None:
    sa, sb, both = QuantileSketch(0.02), QuantileSketch(0.02), QuantileSketch(0.02)
    for x in a:
        sa.add(x)
        both.add(x)
    for x in b:
        sb.add(x)
        both.add(x)
    merged = sa.merged(sb)
    assert merged == both  # order-independent: the same buckets whatever the order or split
    assert sa.count == len(a)  # merging left the parts alone
    if a or b:
        exact = float(np.quantile(np.array(a + b), q, method="lower"))
        got = merged.quantile(q)
        assert got is not None and within(got, exact, 0.02 * (1 + 1e-12))
    assert pickle.loads(pickle.dumps(merged)) == merged


def test_running_quantile_per_key_matches_numpy() -> None:
    records = series(3, 600)
    rows = running(records, p90=ms.stats.quantile("x", 0.9), med=ms.stats.median("x", relative_accuracy=0.005))
    for k, got in rows.items():
        xs = [r["x"] for r in records if r["k"] == k]
        for i in (0, 10, 99, len(xs) - 1):
            assert within(got[i]["p90"], float(np.quantile(xs[: i + 1], 0.9, method="lower")), 0.01)
            assert within(got[i]["med"], float(np.quantile(xs[: i + 1], 0.5, method="lower")), 0.005)


@pytest.mark.parametrize("assigner", [ms.windows.tumbling(1_000), ms.windows.sliding(size=1_000, every=250),
                                      ms.windows.session(gap=40)])
def test_mergeable_statistics_in_every_kind_of_window(assigner: Any) -> None:
    rng = random.Random(11)
    t = 0
    records = []
    for _ in range(1_500):
        t += rng.choice([1, 2, 3, 50])
        records.append({"k": rng.randrange(3), "x": rng.expovariate(0.01), "u": rng.randrange(60), "ts": t})
    flow = ms.Flow("mergeable")
    out = collect(stamped(flow, records).key_by("k").window(assigner).aggregate(
        p99=ms.stats.quantile("x", 0.99), d=ms.stats.approx_distinct("u"), n=ms.agg.count(),
        exact=ms.agg.count_distinct("u")))
    flow.run()
    assert out.values
    for row in out.values:
        xs = [r["x"] for r in records if r["k"] == row["k"] and row["window_start"] <= r["ts"] < row["window_end"]]
        assert row["n"] == len(xs)
        assert within(row["p99"], float(np.quantile(xs, 0.99, method="lower")), 0.01)
        assert row["d"] == row["exact"]  # at most 60 values: the counter is still exact


# -- distinct counts ------------------------------------------------------------------


@pytest.mark.parametrize("n", [100, 300, 5_000, 100_000])
def test_approx_distinct_relative_error(n: int) -> None:
    h = HyperLogLog(12)
    for i in range(n):
        h.add(f"user-{i}")
        h.add(f"user-{i // 2}")  # repeats do not count
    est = h.estimate()
    if n <= 4096 // 16:
        assert est == n  # exact while small
    else:
        assert abs(est - n) / n < 4 * 1.04 / math.sqrt(4096), (n, est)  # four standard errors


def test_approx_distinct_error_over_many_sets_is_near_the_standard_error() -> None:
    errors = []
    for seed in range(20):
        h = HyperLogLog(10)
        for i in range(20_000):
            h.add((seed, i))
        errors.append(h.estimate() / 20_000 - 1)
    rms = math.sqrt(sum(e * e for e in errors) / len(errors))
    assert rms < 2 * 1.04 / math.sqrt(1024)
    assert abs(sum(errors) / len(errors)) < 1.04 / math.sqrt(1024)  # not biased


@given(a=st.lists(st.integers(0, 3_000), max_size=600), b=st.lists(st.integers(0, 3_000), max_size=600))
@settings(max_examples=40, deadline=None)
def test_hyperloglogs_merge_like_the_union(a: list[int], b: list[int]) -> None:
    ha, hb, both = HyperLogLog(8), HyperLogLog(8), HyperLogLog(8)
    for x in a:
        ha.add(x)
        both.add(x)
    for x in b:
        hb.add(x)
        both.add(x)
    merged = ha.merged(hb)
    assert merged.estimate() == both.estimate()
    assert merged.registers == both.registers and merged.small == both.small
    assert pickle.loads(pickle.dumps(merged)) == merged


def test_distinct_values_hash_the_same_in_every_process() -> None:
    import subprocess
    import sys

    from millstream.stats import _hash64

    code = "from millstream.stats import _hash64; print(_hash64('user-1'), _hash64(('a', 1)))"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out == [str(_hash64("user-1")), str(_hash64(("a", 1)))]
    assert _hash64(1) != _hash64("1") and _hash64(1) != _hash64(1.0)


def test_running_approx_distinct_per_key() -> None:
    rng = random.Random(5)
    records = [{"k": rng.randrange(2), "u": rng.randrange(5_000)} for _ in range(20_000)]
    rows = running(records, d=ms.stats.approx_distinct("u"), exact=ms.agg.count_distinct("u"))
    for got in rows.values():
        for row in got[::500] + got[-1:]:
            assert abs(row["d"] - row["exact"]) <= 0.05 * row["exact"]


# -- checks when built ----------------------------------------------------------------


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ms.stats.ewma("x", alpha=0), "alpha"),
    (lambda: ms.stats.ewma("x", alpha=1.5), "alpha"),
    (lambda: ms.stats.ewm_var("", 0.1), "field name"),
    (lambda: ms.stats.zscore("x", warmup=0), "warmup"),
    (lambda: ms.stats.anomaly("x", threshold=-1), "threshold"),
    (lambda: ms.stats.quantile("x", q=1.5), "q must be"),
    (lambda: ms.stats.quantile("x", q=0.5, relative_accuracy=1), "relative_accuracy"),
    (lambda: ms.stats.approx_distinct("x", precision=30), "precision"),
    (lambda: ms.stats.approx_distinct(3), "field name"),  # type: ignore[arg-type]
])
def test_bad_parameters_are_config_errors(make: Any, message: str) -> None:
    with pytest.raises(ms.ConfigError, match=message):
        make()


def test_statistics_describe_themselves_in_the_plan() -> None:
    flow = ms.Flow("describe")
    collect(flow.source(TestSource([{"k": 1, "x": 1}])).key_by("k").aggregate(
        z=ms.stats.zscore("x", 0.25), q=ms.stats.quantile("x", 0.99), d=ms.stats.approx_distinct("x")))
    text = str(flow.plan())
    assert "zscore(x, alpha=0.25, warmup=4)" in text
    assert "quantile(x, q=0.99, relative_accuracy=0.01)" in text and "approx_distinct(x, precision=12)" in text


def test_statistics_state_survives_a_crash_and_resume(tmp_path: Path) -> None:
    records = [{"k": i % 4, "x": float((i * 7919) % 101), "ts": i} for i in range(2_000)]

    def build(sink: Any, crash_at: int | None) -> ms.Flow:
        def maybe_crash(r: dict[str, Any]) -> dict[str, Any]:
            if r["ts"] == crash_at:
                raise KeyboardInterrupt
            return r

        flow = ms.Flow("stats-recovery")
        src = flow.source(ms.connectors.memory.read(records), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
        src.map(maybe_crash, name="maybe-crash").key_by("k").aggregate(
            z=ms.stats.zscore("x", 0.1), q=ms.stats.quantile("x", 0.5), d=ms.stats.approx_distinct("x"),
            name="stats").sink(sink)
        return flow

    reference = TransactionalCollectSink()
    build(reference, None).run()
    sink = TransactionalCollectSink()
    cfg = {"checkpoint_dir": tmp_path / "ck", "checkpoint_interval": 100, "clock": TickingClock(), "max_chunk": 64,
           "guarantee": "exactly-once"}
    first = build(sink, 1_234).run(**cfg)
    assert first.interrupted
    again = build(sink, None).run(**cfg)
    assert again.checkpoints is not None and again.checkpoints.restored_from is not None
    assert sorted(map(repr, sink.values)) == sorted(map(repr, reference.values))
