"""Window, join and running-aggregate state on the on-disk (LMDB) state backend (issue 11).

Every built-in stateful operator gives the plain-Python oracle's answers (and the in-memory run's)
with ``state="lmdb://..."``, natively and in micro-batch mode (where the vectorised operators hand
over to the native ones); the state is really in the store (the operators' dicts stay empty, the
backend's maps hold the keys, Python's heap stays small); checkpoints restore exactly once.
"""

from __future__ import annotations

import random
import tracemalloc
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import millstream as ms
from conftest import canon
from millstream import agg, windows
from millstream._runtime._base import Runtime
from millstream._runtime._native import NativeJob
from millstream._runtime._ondisk import (
    DiskPairJoinOperator,
    DiskSessionWindowOperator,
    DiskSlicedWindowJoinOperator,
    DiskSlicedWindowOperator,
)
from millstream._state import open_backend
from millstream.errors import CheckpointError, PerformanceWarning
from millstream.testing import CollectSink, ManualClock, TransactionalCollectSink
from test_recovery import TickingClock

pytest.importorskip("lmdb")

BOUND = 40
Event = dict[str, Any]


def events(n: int, keys: int, seed: int, prefix: str = "", key: str = "k", step: int = 5) -> list[Event]:
    """Events in an arrival order within ``BOUND`` of their watermark: none is late."""
    rnd = random.Random(seed)
    evs = [{"id": f"{prefix}{i}", key: f"k{rnd.randrange(keys)}", "v": rnd.randrange(100), "ts": i * step}
           for i in range(n)]
    jitter = [rnd.randrange(BOUND) for _ in evs]
    return [evs[i] for i in sorted(range(n), key=lambda i: (evs[i]["ts"] + jitter[i], i))]


def lmdb(tmp_path: Path, cache: int = 16) -> str:
    return f"lmdb://{tmp_path / 'live'}?cache={cache}"  # a tiny cache: nearly every access goes to the store


EVS = events(1_500, 30, seed=1)
LEFT = events(700, 20, seed=2, prefix="L")
RIGHT = events(700, 20, seed=3, prefix="R", key="rk")


# -- plain-Python oracles ------------------------------------------------------------------------


def by_key(evs: list[Event], key: str = "k") -> dict[Any, list[Event]]:
    out: dict[Any, list[Event]] = defaultdict(list)
    for e in evs:
        out[e[key]].append(e)
    return out


def sliding_oracle(size: int, every: int) -> list[Any]:
    wins: dict[tuple[str, int], list[int]] = defaultdict(list)
    for e in EVS:
        s = e["ts"] - e["ts"] % every
        while s > e["ts"] - size:
            wins[(e["k"], s)].append(e["v"])
            s -= every
    return [{"k": k, "window_start": s, "window_end": s + size, "n": len(vs), "total": sum(vs)}
            for (k, s), vs in wins.items()]


def session_oracle(gap: int) -> list[Any]:
    out = []
    for k, evs in by_key(EVS).items():
        evs = sorted(evs, key=lambda e: e["ts"])
        run = [evs[0]]
        for e in evs[1:] + [None]:  # type: ignore[list-item]
            if e is not None and e["ts"] - run[-1]["ts"] <= gap:
                run.append(e)
                continue
            out.append({"k": k, "window_start": run[0]["ts"], "window_end": run[-1]["ts"] + gap, "n": len(run),
                        "total": sum(x["v"] for x in run)})
            if e is not None:
                run = [e]
    return out


def count_oracle(n: int) -> list[Any]:
    out = []
    for k, evs in by_key(EVS).items():
        for i in range(0, len(evs) - n + 1, n):
            w = evs[i:i + n]
            out.append({"k": k, "window_start": min(e["ts"] for e in w), "window_end": max(e["ts"] for e in w) + 1,
                        "n": n, "total": sum(e["v"] for e in w)})
    return out


def running_oracle() -> list[Any]:
    out = []
    for k, evs in by_key(EVS).items():
        total = 0
        for i, e in enumerate(evs):
            total += e["v"]
            out.append({"k": k, "n": i + 1, "total": total})
    return out


def reduce_oracle() -> list[Any]:
    out = []
    for evs in by_key(EVS).values():
        acc = None
        for e in evs:
            acc = e if acc is None else {**acc, "v": acc["v"] + e["v"]}
            out.append(acc)
    return out


def window_join_oracle(size: int, every: int) -> list[Any]:
    out = []
    for a in LEFT:
        for b in RIGHT:
            if a["k"] != b["rk"]:
                continue
            s = a["ts"] - a["ts"] % every
            while s > a["ts"] - size:
                if s <= b["ts"] < s + size:
                    out.append((a["id"], b["id"], s))
                s -= every
    return out


def interval_oracle(lower: int, upper: int) -> list[Any]:
    return [(a["id"], b["id"]) for a in LEFT for b in RIGHT
            if a["k"] == b["rk"] and a["ts"] + lower <= b["ts"] <= a["ts"] + upper]


def session_join_oracle(gap: int) -> list[Any]:
    union = [{**e, "side": 0} for e in LEFT] + [{**e, "k": e["rk"], "side": 1} for e in RIGHT]
    out = []
    for evs in by_key(union).values():
        evs = sorted(evs, key=lambda e: e["ts"])
        run = [evs[0]]
        for e in evs[1:] + [None]:  # type: ignore[list-item]
            if e is not None and e["ts"] - run[-1]["ts"] <= gap:
                run.append(e)
                continue
            ws, we = run[0]["ts"], run[-1]["ts"] + gap
            out += [(a["id"], b["id"], ws, we) for a in run if a["side"] == 0 for b in run if b["side"] == 1]
            if e is not None:
                run = [e]
    return out


# -- the flows -----------------------------------------------------------------------------------


def src(flow: ms.Flow, evs: list[Event], name: str = "events") -> ms.Stream:
    return flow.source(ms.connectors.memory.read(evs), watermark=ms.WatermarkStrategy.bounded(BOUND, timestamp="ts"),
                       name=name)


def one(assigner: Any) -> Callable[[ms.Flow], ms.Stream]:
    return lambda flow: src(flow, EVS).key_by("k").window(assigner).aggregate(n=agg.count(), total=agg.sum("v"))


def two(join: Callable[[ms.KeyedStream, ms.KeyedStream], ms.Stream]) -> Callable[[ms.Flow], ms.Stream]:
    return lambda flow: join(src(flow, LEFT, "left").key_by("k"), src(flow, RIGHT, "right").key_by("rk"))


def ids(a: Event, b: Event) -> tuple[str, str]:
    return (a["id"], b["id"])


def wids(row: dict[str, Any]) -> tuple[str, str, int]:
    return (row["id"], row["id_right"], row["window_start"])


CASES: dict[str, tuple[Callable[[ms.Flow], ms.Stream], Callable[[], list[Any]], Callable[[Any], Any]]] = {
    "tumbling": (one(windows.tumbling(100)), lambda: sliding_oracle(100, 100), lambda r: r),
    "sliding": (one(windows.sliding(300, every=100)), lambda: sliding_oracle(300, 100), lambda r: r),
    "session": (one(windows.session(12)), lambda: session_oracle(12), lambda r: r),
    "count": (one(windows.count(4)), lambda: count_oracle(4), lambda r: r),
    "aggregate": (lambda flow: src(flow, EVS).key_by("k").aggregate(n=agg.count(), total=agg.sum("v")),
                  running_oracle, lambda r: r),
    "reduce": (lambda flow: src(flow, EVS).key_by("k").reduce(lambda a, b: {**a, "v": a["v"] + b["v"]}),
               reduce_oracle, lambda r: r),
    "window-join-tumbling": (two(lambda a, b: a.window_join(b, windows.tumbling(50))),
                             lambda: window_join_oracle(50, 50), wids),
    "window-join-sliding": (two(lambda a, b: a.window_join(b, windows.sliding(100, every=50))),
                            lambda: window_join_oracle(100, 50), wids),
    "window-join-session": (two(lambda a, b: a.window_join(
        b, windows.session(8), combine=lambda x, y: (x["id"], y["id"], 0, 0))),
        lambda: session_join_oracle(8), lambda r: r),
    "interval-join": (two(lambda a, b: a.interval_join(b, lower=-30, upper=20, combine=ids)),
                      lambda: interval_oracle(-30, 20), lambda r: r),
}


def run(build: Callable[[ms.Flow], ms.Stream], state: str, mode: str = "native", **kw: Any) -> tuple[list[Any], Any]:
    flow = ms.Flow("on-disk")
    sink = CollectSink()
    build(flow).sink(sink)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerformanceWarning)
        result = flow.run(state=state, mode=mode, max_chunk=kw.pop("max_chunk", 53), **kw)
    return sink.values, result


@pytest.mark.parametrize("mode", ["native", "microbatch"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_stateful_operator_on_disk_gives_the_oracles_answers(case: str, mode: str, tmp_path: Path) -> None:
    build, oracle, shape = CASES[case]
    on_disk, result = run(build, lmdb(tmp_path), mode)
    in_memory, _ = run(build, "memory", mode)
    expected = oracle()
    if case == "window-join-session":  # the session's bounds are not in combine's output: compare pairs
        expected = [(a, b, 0, 0) for a, b, _, _ in expected]
    assert len(expected) > 50
    assert canon(shape(r) for r in on_disk) == canon(expected)
    assert canon(on_disk) == canon(in_memory)
    assert result.total("late") == 0
    assert not list((tmp_path / "live").iterdir())  # the scratch store is removed at the end


def late_events() -> list[Event]:
    """Events, some of which come after their window fired: within the allowed lateness, or later."""
    evs = events(600, 10, seed=5)
    rnd = random.Random(6)
    for i in range(40, 600, 37):
        evs.insert(i, {"id": f"late{i}", "k": f"k{rnd.randrange(10)}", "v": 1,
                       "ts": max(0, evs[i]["ts"] - rnd.randrange(60, 400))})
    return evs


@pytest.mark.parametrize("assigner", [windows.tumbling(100), windows.sliding(200, every=50), windows.session(15)],
                         ids=["tumbling", "sliding", "session"])
def test_late_records_and_allowed_lateness_on_disk_as_in_memory(assigner: Any, tmp_path: Path) -> None:
    evs = late_events()

    def build(flow: ms.Flow) -> ms.Stream:
        w = src(flow, evs).key_by("k").window(assigner, allowed_lateness=150).aggregate(
            n=agg.count(), total=agg.sum("v"))
        w.late().map(lambda r: {"late": r["id"]}).sink(late_sink[0])
        return w

    outs = []
    for state in ("memory", lmdb(tmp_path)):
        late_sink = [CollectSink()]
        rows, result = run(build, state)
        outs.append((canon(rows), canon(late_sink[0].values), result.total("late"), result.total("refired")))
    assert outs[0] == outs[1]
    assert outs[0][2] > 0 and outs[0][3] > 0  # some were late, some windows fired again


@pytest.mark.parametrize("how", ["left", "full"])
def test_outer_and_ttl_joins_on_disk_as_in_memory(how: str, tmp_path: Path) -> None:
    def build(flow: ms.Flow) -> ms.Stream:
        return two(lambda a, b: a.join(b, how=how, ttl=60, combine=lambda x, y: {
            "l": x and x["id"], "r": y and y["id"]}))(flow)

    on_disk, _ = run(build, lmdb(tmp_path))
    in_memory, _ = run(build, "memory")
    assert len(in_memory) > 100 and canon(on_disk) == canon(in_memory)


def test_the_vectorised_operators_hand_over_to_the_native_ones_and_say_why(tmp_path: Path) -> None:
    flow = ms.Flow("hand-over")
    src(flow, EVS).key_by("k").window(windows.tumbling(100)).aggregate(n=agg.count()).sink(CollectSink())
    with pytest.warns(PerformanceWarning, match="runs per record in microbatch mode.*the state is on disk"):
        flow.run(state=lmdb(tmp_path), mode="microbatch")


# -- the state is on disk ------------------------------------------------------------------------


def start_on_disk(flow: ms.Flow, url: str) -> NativeJob:
    job = NativeJob(flow.plan(), Runtime(ManualClock(), open_backend(url)))
    job.open()
    return job


def test_window_and_join_state_is_in_the_store_not_in_the_operators(tmp_path: Path) -> None:
    flow = ms.Flow("where")
    keyed = src(flow, EVS).key_by("k")
    keyed.window(windows.tumbling(10**9), name="win").aggregate(n=agg.count()).sink(CollectSink())
    keyed.window(windows.session(10**6), name="sess").aggregate(n=agg.count()).sink(CollectSink())
    two(lambda a, b: a.window_join(b, windows.tumbling(10**9), name="wj"))(flow).sink(CollectSink())
    two(lambda a, b: a.interval_join(b, lower=-10**6, upper=10**6, name="ij"))(flow).sink(CollectSink())
    job = start_on_disk(flow, lmdb(tmp_path))
    for _ in range(5):  # 500 records of each input: none has ended
        job.step(100)
    ops = {op.name: op for op in job.ops}
    win, sess, wj, ij = ops["win"], ops["sess"], ops["wj"], ops["ij"]
    assert isinstance(win, DiskSlicedWindowOperator) and isinstance(sess, DiskSessionWindowOperator)
    assert isinstance(wj, DiskSlicedWindowJoinOperator) and isinstance(ij, DiskPairJoinOperator)
    # the in-memory structures stay empty; what is in memory is one int per slice
    assert win.slices == {} and win.live == {0}
    assert sess.sessions == {} and sess.timers == []
    assert wj.slices == {} and all(not b for b in ij.buckets)
    maps = job.rt.state.maps  # type: ignore[attr-defined]
    seen = {e["k"] for e in EVS[:500]}
    assert {k for (_, k), _ in maps["win/slices"].items()} == seen
    assert sum(acc[0] for _, acc in maps["win/slices"].items()) == 500
    assert {k for k, _ in maps["sess/sessions"].items()} == seen
    assert len(maps["sess/timers"]) == len(seen)  # one timer per session, in the store
    assert len(maps["wj/left"]) == len(maps["ij/left"]) == len({e["k"] for e in LEFT[:500]})
    assert len(maps["ij/expire-left"]) > 0  # expiry buckets by key, in the store
    assert all(len(m.cache) <= 16 for m in maps.values())  # the rest is in the memory-mapped file
    while job.step(2048)[1]:
        pass
    assert win.live == set() and len(maps["win/slices"]) == 0 and len(maps["sess/sessions"]) == 0
    job.close()


def test_a_large_window_state_stays_out_of_the_python_heap(tmp_path: Path) -> None:
    """40,000 keys of ~1.2 kB accumulators in one window: ~50 MB in dicts, a few MB on disk."""
    n = 40_000
    pad = "x" * 400

    def event(i: int) -> Event:  # made as the source reads it: the payloads are allocated in the run
        return {"k": f"user-{i % n}", "p": f"{i:08d}{pad}", "ts": i}

    class Count(ms.connectors.Sink):
        rows = 0

        def open(self, step: Any) -> Any:
            sink = self

            class W(ms.connectors.SinkWriter):
                def write(self, records: Any, times: Any) -> None:
                    sink.rows += len(records)

                def flush(self) -> None:
                    pass

            return W()

        def describe(self) -> str:
            return "count"

    peaks = {}
    for state in ("memory", lmdb(tmp_path, cache=1_000)):
        flow = ms.Flow("big")
        sink = Count()
        (flow.source(ms.connectors.generator.read(event, count=2 * n),
                     watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
         .key_by("k").window(windows.tumbling(10**9)).aggregate(top=agg.top_k("p", 3)).sink(sink))
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        flow.run(state=state, max_chunk=1_000)
        peaks[state[:4]] = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert sink.rows == n
    assert peaks["memo"] > 40 * 2**20, peaks
    assert peaks["lmdb"] < peaks["memo"] / 4, peaks


# -- checkpoints ---------------------------------------------------------------------------------


def crashing(build: Callable[[ms.Flow], ms.Stream], crash_at: str | None) -> Callable[[ms.Flow], ms.Stream]:
    """``build`` with its sources' records passing a step that stops the run, as a crash would."""
    def wrapped(flow: ms.Flow) -> ms.Stream:
        real = flow.source

        def source(connector: Any, **kw: Any) -> ms.Stream:
            def crash(e: Event) -> Event:
                if e["id"] == crash_at:
                    raise KeyboardInterrupt  # no final checkpoint
                return e
            return real(connector, **kw).map(crash, name=f"crash-{kw.get('name', 'events')}")
        flow.source = source  # type: ignore[method-assign]
        return build(flow)
    return wrapped


def run_ckpt(build: Callable[[ms.Flow], ms.Stream], sink: Any, state: str, tmp_path: Path) -> Any:
    flow = ms.Flow("on-disk-recovery")
    build(flow).sink(sink)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerformanceWarning)
        return flow.run(state=state, checkpoint_dir=tmp_path / "ck", checkpoint_interval=100, clock=TickingClock(),
                        max_chunk=32, guarantee="exactly-once")


@pytest.mark.parametrize("mode", ["native", "microbatch"])
@pytest.mark.parametrize("case", ["tumbling", "sliding", "session", "count", "aggregate", "window-join-tumbling",
                                  "window-join-session", "interval-join"])
def test_recovery_after_a_failure_with_state_on_disk_is_exactly_once(case: str, mode: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILLSTREAM_MODE", mode)
    build, oracle, shape = CASES[case]
    expected = oracle()
    if case == "window-join-session":
        expected = [(a, b, 0, 0) for a, b, _, _ in expected]
    sink = TransactionalCollectSink()
    crash_at = "L500" if case.endswith("join") or "join-" in case else "1100"
    first = run_ckpt(crashing(build, crash_at), sink, lmdb(tmp_path), tmp_path)
    assert first.interrupted and first.checkpoints.completed >= 2
    assert list((tmp_path / "ck" / "shared").iterdir())  # the backend's own incremental files
    second = run_ckpt(crashing(build, None), sink, lmdb(tmp_path), tmp_path)
    assert second.checkpoints.restored_from is not None
    assert canon(shape(r) for r in sink.values) == canon(expected)


def test_a_checkpoint_taken_in_memory_resumes_on_disk(tmp_path: Path) -> None:
    build, oracle, shape = CASES["session"]
    sink = TransactionalCollectSink()
    run_ckpt(crashing(build, "1100"), sink, "memory", tmp_path)
    second = run_ckpt(crashing(build, None), sink, lmdb(tmp_path), tmp_path)
    assert second.checkpoints.restored_from is not None
    assert canon(sink.values) == canon(oracle())


def test_a_checkpoint_taken_on_disk_is_refused_in_memory_naming_the_step(tmp_path: Path) -> None:
    build, _, _ = CASES["tumbling"]
    run_ckpt(crashing(build, "1100"), TransactionalCollectSink(), lmdb(tmp_path), tmp_path)
    with pytest.raises(CheckpointError, match="step 'window.*on-disk state backend"):
        run_ckpt(crashing(build, None), TransactionalCollectSink(), "memory", tmp_path)


def test_counts_of_the_fired_output_match_between_backends_for_many_keys(tmp_path: Path) -> None:
    """More keys than the cache and firing batches: every window's every key fires once."""
    evs = [{"id": str(i), "k": i % 9_000, "v": 1, "ts": i} for i in range(27_000)]

    def build(flow: ms.Flow) -> ms.Stream:
        return src(flow, evs).key_by("k").window(windows.sliding(20_000, every=10_000)).aggregate(n=agg.count())

    rows, _ = run(build, lmdb(tmp_path, cache=500), max_chunk=2_000)
    expected: Counter[tuple[int, int, int]] = Counter()
    for e in evs:
        for ws in (e["ts"] - e["ts"] % 10_000, e["ts"] - e["ts"] % 10_000 - 10_000):
            expected[(e["k"], ws, ws + 20_000)] += 1
    assert Counter({(r["k"], r["window_start"], r["window_end"]): r["n"] for r in rows}) == expected
    assert len(rows) == len(expected) > 4 * 4096
