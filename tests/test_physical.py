"""The physical plan: operators and their instances per worker, exchanges exactly where a key
changes, the data form on every edge, and ``millstream plan --parallelism``."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

import millstream as ms
from millstream import cep, col
from millstream._clock import SystemClock
from millstream._keygroups import groups_of
from millstream._physical import PhysicalPlan, compile
from millstream._runtime._base import Runtime
from millstream._runtime._microbatch import MicroBatchJob
from millstream._runtime._native import NativeJob
from millstream.connectors import memory
from millstream.errors import ConfigError

WM = ms.WatermarkStrategy.bounded(timedelta(seconds=1), timestamp="ts")
MINUTE = timedelta(minutes=1)


def keyed_window() -> ms.Flow:
    f = ms.Flow("fraud")
    tx = f.source(memory.read([], splits=4), name="tx", watermark=WM)
    (tx.filter(col("amount") > 0, name="positive").key_by("card")
       .window(ms.windows.tumbling(MINUTE), name="spend").aggregate(total=ms.agg.sum("amount"))
       .filter(col("total") > 5000, name="big")
       .sink(memory.write(), name="alerts"))
    return f


def join() -> ms.Flow:
    f = ms.Flow("join")
    orders = f.source(memory.read([], splits=3), name="orders", watermark=WM)
    payments = f.source(memory.read([]), name="payments", watermark=WM)
    paid = orders.key_by("id").join(payments.key_by("order"), name="paid")
    paid.map(lambda r: r, name="tidy").sink(memory.write(), name="out")
    return f


def pattern() -> ms.Flow:
    f = ms.Flow("cep")
    events = f.source(memory.read([]), name="events", watermark=WM)
    p = (cep.begin("a").where(lambda e: e["v"] == 0).next("b").where(lambda e: e["v"] == 1)
         .within(timedelta(seconds=10)))
    m = events.key_by("user").match(p, name="m", timeouts=True)
    m.sink(memory.write(), name="matches")
    m.timeouts().sink(memory.write(), name="expired")
    return f


def stateless() -> ms.Flow:
    f = ms.Flow("stateless")
    (f.source(memory.read([], splits=2), name="in")
      .map(lambda r: r, name="m1").filter(col("x") > 1, name="f1").with_columns(y=col("x") * 2, name="w")
      .sink(memory.write(), name="out"))
    return f


def rekeyed() -> ms.Flow:
    f = ms.Flow("rekey")
    s = f.source(memory.read([]), name="in", watermark=WM)
    per_a = s.key_by("a").window(ms.windows.tumbling(MINUTE), name="per_a").aggregate(n=ms.agg.count())
    per_a.filter(col("n") > 1, name="some").key_by("a").reduce(lambda x, y: y, name="same_key") \
        .sink(memory.write(), name="o1")
    per_a.key_by("n").reduce(lambda x, y: y, name="new_key").sink(memory.write(), name="o2")
    per_a.window(ms.windows.tumbling(MINUTE), name="total").aggregate(n=ms.agg.count()) \
        .sink(memory.write(), name="o3")
    return f


def partitioning(pp: PhysicalPlan) -> dict[tuple[str, str], str]:
    """(from, to) -> partitioning, by the last step of the source operator and the first of the target."""
    return {(pp.operator(e.source).steps[-1].name, pp.operator(e.target).steps[0].name):
            e.partitioning + (f" {e.key.describe()}" if e.key is not None else "") for e in pp.edges}


MODES = ("native", "microbatch", "batch")
both = pytest.mark.parametrize("n", [1, 3])
modes = pytest.mark.parametrize("mode", MODES)


def check_ownership(pp: PhysicalPlan) -> None:
    """Every keyed operator has one instance per worker and every key group exactly one owner."""
    for op in pp.operators:
        if op.key is None:
            continue
        assert op.parallelism == pp.parallelism
        owned = [g for inst in op.instances for g in inst.key_groups or ()]
        assert sorted(owned) == list(range(pp.max_parallelism))
        for inst in op.instances:
            assert inst.key_groups == groups_of(inst.worker, pp.parallelism, pp.max_parallelism)
            assert all(pp.owner(g) == inst.worker for g in inst.key_groups)


@both
@modes
def test_keyed_window_exchanges_once_where_the_key_is_read(n: int, mode: str) -> None:
    pp = compile(keyed_window().plan(), mode, n)
    assert partitioning(pp) == {
        ("tx", "positive"): "forward",
        ("key_by:card", "spend"): "hash card",
        ("spend", "big"): "forward",
        ("big", "alerts"): "forward",
    }
    # the memory source splits: read, filtered and keyed on every worker, then one exchange
    assert [op.parallelism for op in pp.operators] == [n, n, n, n, n]
    assert len(pp.stages) == 2
    check_ownership(pp)


@both
@modes
def test_join_exchanges_both_inputs_by_their_keys(n: int, mode: str) -> None:
    pp = compile(join().plan(), mode, n)
    assert partitioning(pp) == {
        ("orders", "key_by:id"): "forward",
        ("payments", "key_by:order"): "forward",
        ("key_by:id", "paid"): "hash id",
        ("key_by:order", "paid"): "hash order",
        ("paid", "tidy"): "forward",
        ("tidy", "out"): "forward",
    }
    assert [e.port for e in pp.edges if e.exchange] == [0, 1]
    check_ownership(pp)


@both
@modes
def test_cep_exchanges_into_the_nfa_only(n: int, mode: str) -> None:
    # the match and timeout steps read the key the NFA attached: already partitioned by it
    pp = compile(pattern().plan(), mode, n)
    assert partitioning(pp) == {
        ("events", "key_by:user"): "forward",
        ("key_by:user", "m.nfa"): "hash user",
        ("m.nfa", "m"): "forward",
        ("m", "matches"): "forward",
        ("m.nfa", "m.timeouts"): "forward",
        ("m.timeouts", "expired"): "forward",
    }
    assert {op.name: op.parallelism for op in pp.operators if op.key is not None} == {
        "m.nfa": n, "m": n, "m.timeouts": n}
    check_ownership(pp)


@both
@modes
def test_stateless_chain_has_no_exchange_and_runs_where_its_source_is_read(n: int, mode: str) -> None:
    pp = compile(stateless().plan(), mode, n)
    assert not pp.exchanges
    assert all(op.parallelism == n for op in pp.operators) and len(pp.stages) == 1
    steps = [[s.name for s in op.steps] for op in pp.operators]
    if mode == "native":  # one generated loop per record
        assert steps == [["in"], ["m1", "f1", "w"], ["out"]]
        assert {e.form for e in pp.edges} == {"rows"} and all(e.convert is None for e in pp.edges)
    else:  # the Python map runs per row, the expressions over the batch
        assert steps == [["in"], ["m1"], ["f1", "w"], ["out"]]
        assert [(e.form, e.convert) for e in pp.edges] == [("columns", "rows"), ("rows", "columns"),
                                                             ("columns", None)]


@both
def test_same_key_stays_forward_new_key_and_whole_stream_window_exchange(n: int) -> None:
    pp = compile(rekeyed().plan(), "native", n)
    got = partitioning(pp)
    assert got[("key_by:a", "per_a")] == "hash a"
    assert got[("key_by:a#2", "same_key")] == "forward"  # the window's rows carry their key field a
    assert got[("key_by:n", "new_key")] == "hash n"
    assert got[("per_a", "total")] == ("global" if n > 1 else "forward")
    assert pp.operator_of(next(x.id for x in pp.plan.nodes if x.name == "total")).parallelism == 1
    check_ownership(pp)


def test_explain_keyed_window_at_parallelism_3() -> None:
    pp = compile(keyed_window().plan(), "microbatch", 3)
    assert pp.explain() == """\
flow 'fraud': physical plan, microbatch mode, parallelism 3, max parallelism 128 (key groups)
stage 0: workers 0-2
  tx: source memory (0 records, 4 splits) [watermark: timestamp=ts, bound=1000ms]
    tx#0, tx#1, tx#2 (split: 4 logical splits, each instance reads a range of them); on columns
      tx#0 reads memory (0 records, 4 splits), splits 0-1
      tx#1 reads memory (0 records, 4 splits), split 2
      tx#2 reads memory (0 records, 4 splits), split 3
  positive -> key_by:card: chain filter col("amount") > 0 -> key_by card
    positive -> key_by:card#0, positive -> key_by:card#1, positive -> key_by:card#2; on columns
stage 1: workers 0-2
  spend: window by card, tumbling 1min: total=sum(amount)
    keyed by card: spend#0 groups 0-42, spend#1 groups 43-85, spend#2 groups 86-127; on columns
  big: filter col("total") > 5000
    big#0, big#1, big#2; on columns
  alerts: sink collect (in memory)
    alerts#0, alerts#1, alerts#2; on columns
edges:
  tx -> positive -> key_by:card: forward, columns
  positive -> key_by:card -> spend: hash by card, columns
  spend -> big: forward, columns
  big -> alerts: forward, columns"""


def test_to_dict_is_json() -> None:
    d = json.loads(json.dumps(compile(join().plan(), "batch", 2).to_dict()))
    assert d["parallelism"] == 2 and d["max_parallelism"] == 128
    paid = next(o for o in d["operators"] if o["name"] == "paid")
    assert [i["key_groups"] for i in paid["instances"]] == [[0, 64], [64, 128]]
    orders = next(o for o in d["operators"] if o["name"] == "orders")
    assert [i["reads"] for i in orders["instances"]] == [
        "memory (0 records, 3 splits), splits 0-1", "memory (0 records, 3 splits), split 2"]
    assert [i["splits"] for i in orders["instances"]] == [[0, 1], [2]]
    assert sorted(e["partitioning"] for e in d["edges"]) == ["forward"] * 4 + ["hash"] * 2


@pytest.mark.parametrize("flow", [keyed_window, join, pattern, stateless, rekeyed])
@modes
def test_executors_build_the_operators_the_plan_lists(flow: object, mode: str) -> None:
    plan = flow().plan()  # type: ignore[operator]
    job = NativeJob(plan, Runtime(SystemClock())) if mode == "native" else MicroBatchJob(
        plan, Runtime(SystemClock()), mode)
    pp = compile(plan, mode, 1)
    assert [op.name for op in job.ops] == [op.steps[-1].name for op in pp.operators]
    for op in pp.operators:
        if op.kind != "source" and op.kind != "sink":
            assert bool(job.op_of[op.id].columnar) == (op.form == "columns") or op.kind in ("union", "late")


class Whole(ms.connectors.Source):
    """A source that cannot be split (the default)."""

    def open(self, ctx: ms.connectors.SourceContext) -> ms.connectors.SourceReader:
        raise AssertionError("compiling opens nothing")

    def describe(self) -> str:
        return "whole"


class BadSplits(Whole):
    def logical_splits(self) -> list[ms.connectors.Source] | None:
        return []


def _from(source: ms.connectors.Source) -> ms.Flow:
    f = ms.Flow("one")
    (f.source(source, name="in", watermark=WM).filter(col("x") > 1, name="f").key_by("k")
     .window(ms.windows.tumbling(MINUTE), name="w").aggregate(n=ms.agg.count()).sink(memory.write(), name="out"))
    return f


@modes
def test_a_source_that_cannot_split_is_read_whole_on_worker_0(mode: str) -> None:
    pp = compile(_from(Whole()).plan(), mode, 3)
    assert [op.parallelism for op in pp.operators] == [1, 1, 3, 3]
    assert partitioning(pp)[("key_by:k", "w")] == "hash k"
    assert "in#0 (reads every split)" in pp.explain()
    # bad records going to a dead-letter sink: its writer is on worker 0, so the source is not split
    dead = memory.read([], on_error=ms.connectors.dead_letter(memory.write()))
    assert compile(_from(dead).plan(), mode, 3).operators[0].parallelism == 1


def test_logical_splits_must_be_sources_or_none() -> None:
    with pytest.raises(ConfigError, match=r"source 'in': BadSplits.logical_splits\(\) must return a non-empty list"):
        compile(_from(BadSplits()).plan(), "native", 2)


def test_the_splits_of_a_source_do_not_depend_on_the_parallelism() -> None:
    """A source's logical splits are its own: every parallelism reads the same splits, each worker a
    contiguous range (more workers than splits: some read none)."""
    f = ms.Flow("fixed")
    f.source(memory.read(list(range(10)), splits=5), name="in").sink(memory.write(), name="out")
    for n in (1, 2, 3, 7):
        src = compile(f.plan(), "native", n).operators[0]
        assert src.splits is not None and len(src.splits) == 5 and src.parallelism == n
        ranges = [list(src.split_numbers(w)) for w in range(n)]
        assert sum(ranges, []) == [0, 1, 2, 3, 4]
        assert all(r == list(range(r[0], r[-1] + 1)) for r in ranges if r)


def test_bad_parallelism_and_mode_are_refused() -> None:
    plan = stateless().plan()
    with pytest.raises(ConfigError, match="between 1 and max_parallelism"):
        compile(plan, "native", 4, max_parallelism=3)
    with pytest.raises(ConfigError, match="mode"):
        compile(plan, "fast", 1)


JOBS = Path(__file__).parent / "jobs"


def test_cli_plan_parallelism() -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "import sys; from millstream._cli import main; "
                               "sys.exit(main(sys.argv[1:]))", *args], capture_output=True, text=True, timeout=60)

    job = (str(JOBS / "wordcount.py"), "--set", "out=never-written.jsonl")  # building opens nothing
    r = cli("plan", *job, "--parallelism", "3", "--mode", "microbatch")
    assert r.returncode == 0, r.stderr
    assert "physical plan, microbatch mode, parallelism 3" in r.stdout
    assert "groups 0-42" in r.stdout and "hash by word" in r.stdout
    r = cli("plan", *job, "--parallelism", "2", "--format", "json")
    assert json.loads(r.stdout)["parallelism"] == 2
    r = cli("plan", *job, "--parallelism", "0")
    assert r.returncode == 2 and "parallelism must be between 1" in r.stderr
