"""Stateless steps: map, filter, flat_map, inspect, union, key_by, fan-out, and their fusion."""

from __future__ import annotations

from typing import Any

import pytest

import millstream as ms
from conftest import collect, finish, stamped, start
from millstream.testing import CollectSink, TestSource

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

RECORDS = [{"k": i % 3, "ts": 10 * i, "v": i} for i in range(20)]


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_map_filter_flat_map_inspect(chunk: int | None) -> None:
    seen: list[Any] = []
    flow = ms.Flow("s")
    out = collect(stamped(flow, RECORDS, chunk=chunk)
                  .map(lambda r: {**r, "v2": r["v"] * 2})
                  .filter(lambda r: r["v"] % 2 == 0)
                  .flat_map(lambda r: [r["v2"]] * (r["v"] % 3))
                  .inspect(seen.append)
                  .map(lambda x: x + 1))
    flow.run()
    expected = [(2 * r["v"] + 1, r["ts"]) for r in RECORDS if r["v"] % 2 == 0 for _ in range(r["v"] % 3)]
    assert out.items == expected
    assert seen == [x - 1 for x, _ in expected]


def test_inspect_prints_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    flow = ms.Flow("p")
    out = collect(flow.source(TestSource(["a", "b"])).inspect())
    flow.run()
    assert capsys.readouterr().out == "a\nb\n"
    assert out.values == ["a", "b"]


def test_flat_map_of_generators_and_empty_results() -> None:
    flow = ms.Flow("fm")
    out = collect(flow.source(TestSource([0, 1, 2, 3])).flat_map(lambda n: (i for i in range(n)))
                  .flat_map(lambda i: [] if i == 1 else [i, -i]).filter(lambda x: x != 0))
    flow.run()
    # 0 -> nothing; 1 -> 0 -> [0, 0]; 2 -> 0, 1 -> [0, 0], []; 3 -> 0, 1, 2 -> [0, 0], [], [2, -2]
    assert out.values == [2, -2]


def test_steps_without_event_time_pass_no_times() -> None:
    flow = ms.Flow("u")
    out = collect(flow.source(TestSource([1, 2])).map(str))
    flow.run()
    assert out.items == [("1", None), ("2", None)]


def test_a_chain_of_stateless_steps_is_fused_into_one_operator() -> None:
    flow = ms.Flow("fuse")
    out = collect(flow.source(TestSource(list(range(10))))
                  .map(lambda x: x + 1, name="inc").filter(lambda x: x % 2 == 0, name="even")
                  .flat_map(lambda x: [x, x], name="twice").map(str, name="text"))
    res = flow.run()
    assert out.values == [str(x) for x in range(2, 11, 2) for _ in range(2)]
    chain = res.step("inc")
    assert chain.fused == ("inc", "even", "twice", "text")
    assert res.step("text") is chain
    assert (chain.records_in, chain.records_out) == (10, 10)
    assert [s.kind for s in res.steps] == ["source", "map", "sink"]


def test_key_by_fuses_into_the_chain_before_the_keyed_step() -> None:
    flow = ms.Flow("kb")
    out = collect(flow.source(TestSource(RECORDS)).map(lambda r: r, name="same").key_by("k")
                  .aggregate(n=ms.agg.count()))
    res = flow.run()
    assert res.step("same").fused == ("same", "key_by:k")
    assert out.values[-3:] == [{"k": 2, "n": 6}, {"k": 0, "n": 7}, {"k": 1, "n": 7}]


def test_fan_out_feeds_both_consumers_and_stops_fusion() -> None:
    flow = ms.Flow("fan")
    base = flow.source(TestSource(list(range(6)))).map(lambda x: x * 10, name="tens")
    evens = collect(base.filter(lambda x: x % 20 == 0, name="evens"))
    words = collect(base.map(str, name="words").map(lambda s: s + "!", name="bang"))
    counts = collect(base.key_by(lambda x: x % 20, name="parity").aggregate(n=ms.agg.count()))
    res = flow.run()
    assert evens.values == [0, 20, 40]
    assert words.values == ["0!", "10!", "20!", "30!", "40!", "50!"]
    assert counts.values[-1] == {"parity": 10, "n": 3}
    assert res.step("tens").fused == ("tens",)
    assert res.step("words").fused == ("words", "bang")


def test_fan_out_straight_from_a_source() -> None:
    flow = ms.Flow("fan")
    src = flow.source(TestSource([1, 2, 3], chunk=2))
    a, b = collect(src), collect(src.map(lambda x: -x))
    flow.run()
    assert a.values == [1, 2, 3]
    assert b.values == [-1, -2, -3]


def test_union_merges_streams() -> None:
    flow = ms.Flow("u")
    a = flow.source(TestSource([1, 2, 3], name="a"))
    b = flow.source(TestSource([10, 20], name="b")).map(lambda x: x + 1)
    c = flow.source(TestSource([100], name="c"))
    out = collect(a.union(b, c).map(lambda x: x * 2))
    flow.run()
    assert sorted(out.values) == [2, 4, 6, 22, 42, 200]


def test_union_of_a_stream_with_itself_repeats_each_record() -> None:
    flow = ms.Flow("u")
    a = flow.source(TestSource([1, 2]))
    out = collect(a.union(a))
    flow.run()
    assert sorted(out.values) == [1, 1, 2, 2]


def test_the_watermark_of_a_union_is_the_least_of_its_inputs() -> None:
    flow = ms.Flow("u")
    fast = stamped(flow, [{"k": "x", "ts": t} for t in (1, 100, 200)], chunk=1, name="fast")
    slow = stamped(flow, [{"k": "x", "ts": t} for t in (2, 5, 9, 300)], chunk=1, name="slow")
    out = collect(fast.union(slow).key_by("k").window(ms.windows.tumbling(10)).aggregate(n=ms.agg.count()))
    job = start(flow)
    for _ in range(3):  # fast is at 200, slow at 9: [0, 10) must wait for slow
        job.step(1)
    assert out.values == []
    job.step(1)  # slow reaches 300 and fast ends: the union's watermark is 299
    assert out.values[0] == {"k": "x", "window_start": 0, "window_end": 10, "n": 4}
    assert len(out.values) == 3
    finish(job)
    assert [r["window_start"] for r in out.values] == [0, 100, 200, 300]


def test_keyed_stream_keeps_stateless_methods() -> None:
    flow = ms.Flow("k")
    out = collect(flow.source(TestSource(RECORDS[:4])).key_by("k").map(lambda r: r["v"]))
    flow.run()
    assert out.values == [0, 1, 2, 3]


def test_select_then_with_columns_fuse_only_where_the_values_are_the_same() -> None:
    """A select and the with_columns after it become one dict literal only when the latter read
    fields the select passes through; a renamed or computed field keeps its own step."""
    rows = [{"a": 1, "b": 2, "c": 3}, {"a": 4, "b": 0, "c": 6}]
    flow = ms.Flow("fuse")
    out = CollectSink()
    (flow.source(TestSource(rows)).select("a", "b", x=ms.col("c") + 1)
         .with_columns(b=ms.col("b") * 10, y=ms.col("a") + ms.col("b"))  # fused: reads a, b (passed through)
         .with_columns(z=ms.col("x") * 2, a=ms.col("b"))  # reads x (computed) and b (rewritten): not fused
         .sink(out))
    flow.run()
    assert out.values == [{"a": 20, "b": 20, "x": 4, "y": 3, "z": 8}, {"a": 0, "b": 0, "x": 7, "y": 4, "z": 14}]
    flow = ms.Flow("fuse-error")
    (flow.source(TestSource(rows)).select("a", "b", name="pick")
         .with_columns(r=ms.col("a") // ms.col("b"), name="ratio").sink(CollectSink()))
    with pytest.raises(ms.StepError) as err:
        flow.run(mode="native")
    assert err.value.step == "ratio"
