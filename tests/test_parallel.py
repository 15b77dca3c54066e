"""Local parallelism (issue 11, section 2): N worker processes give the answers of one.

Sources of several logical splits (memory, the generator, Nexmark with ``splits=``) are read by
every worker, each its range of splits; the records meet the keyed steps through the exchange.
Workers are forked from the test's process (or from one forkserver per session), so a run at
parallelism 2 or 3 costs tens of milliseconds more than at 1. Inputs are small on purpose.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import millstream as ms
from millstream import agg, col, nexmark
from millstream._keygroups import key_group, worker_of
from millstream._physical import compile as compile_physical
from millstream.errors import ConfigError, JobError

ROOT = Path(__file__).resolve().parents[1]
WM = ms.WatermarkStrategy.bounded(timedelta(milliseconds=500), timestamp=col("ts"))


# -- the process table and /dev/shm ----------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), from /proc."""
    out: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        out[int(entry)] = (ppid, cmd)
    return out


def _descendants(root: int, helpers: bool = False) -> set[int]:
    """The processes below ``root``, except (unless ``helpers``) multiprocessing's own long-lived helpers
    (the forkserver and the resource tracker live as long as the process that started them: they are
    no job's workers)."""
    procs = _processes()
    found: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in procs.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    def helper(pid: int) -> bool:  # a worker forked by the forkserver has its command line: not a helper
        return (any(h in procs[pid][1] for h in ("forkserver", "resource_tracker"))
                and "forkserver" not in procs.get(procs[pid][0], (0, ""))[1])

    return {p for p in found if helpers or not helper(p)}


def _shm() -> set[str]:
    """What multiprocessing could leave in /dev/shm (named semaphores, shared memory blocks)."""
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return set()
    return {n for n in names if n.startswith(("sem.mp", "psm_", "mp-", "wnsm_"))}


@pytest.fixture
def clean() -> Any:
    """The test leaves no worker process and nothing in /dev/shm behind."""
    before_shm = _shm()
    # servers other tests started for the session (a Kafka broker, a private PostgreSQL) are children too
    before = _descendants(os.getpid())
    yield
    deadline = time.monotonic() + 5
    while _descendants(os.getpid()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _descendants(os.getpid()) - before == set()
    assert _shm() - before_shm == set()


# -- flows -------------------------------------------------------------------------------------


def _events(n: int = 3_000, keys: int = 23, seed: int = 7, step: int = 7) -> list[dict[str, Any]]:
    """Out of order by up to 300 ms, inside the watermark's 500 ms bound: nothing is late."""
    rng = random.Random(seed)
    return [{"k": f"k{rng.randrange(keys)}", "v": rng.randrange(100), "ts": i * step + rng.randrange(300)}
            for i in range(n)]


def tumbling() -> tuple[ms.Flow, Any]:
    flow, out = ms.Flow("tumbling"), ms.testing.CollectSink()
    src = flow.source(ms.connectors.memory.read(_events(), splits=4), watermark=WM)
    (src.key_by("k").window(ms.windows.tumbling(timedelta(seconds=1)))
     .aggregate(total=agg.sum("v"), n=agg.count()).sink(out))
    return flow, out


def session() -> tuple[ms.Flow, Any]:
    flow, out = ms.Flow("session"), ms.testing.CollectSink()
    sparse = _events(1_500, step=60)  # a key's events ~1.4 s apart: sessions of one and of several
    src = flow.source(ms.connectors.memory.read(sparse, splits=3), watermark=WM)
    src.key_by("k").window(ms.windows.session(timedelta(milliseconds=1_500))).aggregate(
        n=agg.count(), top=agg.max("v")).sink(out)
    return flow, out


def join() -> tuple[ms.Flow, Any]:
    flow, out = ms.Flow("join"), ms.testing.CollectSink()
    left = flow.source(ms.connectors.memory.read(_events(1_500, seed=1), name="left", splits=5), watermark=WM)
    right = flow.source(ms.connectors.memory.read(
        [{"id": e["k"], "w": e["v"], "ts": e["ts"]} for e in _events(600, seed=2)], name="right"), watermark=WM)
    left.key_by("k").window_join(right.key_by("id"), ms.windows.tumbling(timedelta(seconds=2))).sink(out)
    return flow, out


def _count(ctx: ms.Context, r: dict[str, Any]) -> None:
    # by second of event time: what a timer reports does not depend on how the records of two
    # workers interleave (a running total read at the timer would: records of the next second may
    # or may not have come before the watermark passed)
    seen, second = ctx.state["seen"], r["ts"] // 1000
    seen.put(second, seen.get(second, 0) + r["v"])
    ctx.timers.register_event_time(second * 1000 + 999)


def _report(ctx: ms.Context, ts: int) -> None:
    seen = ctx.state["seen"]
    ctx.emit({"k": ctx.key, "at": ts, "seen": seen.get(ts // 1000)})
    seen.remove(ts // 1000)


def process() -> tuple[ms.Flow, Any]:
    flow, out = ms.Flow("process"), ms.testing.CollectSink()
    src = flow.source(ms.connectors.memory.read(_events(), splits=2), watermark=WM)
    src.key_by("k").process(_count, on_timer=_report, state={"seen": ms.state.map()}).sink(out)
    return flow, out


def _event(i: int) -> dict[str, Any]:
    """Record ``i`` of the generator: out of order by up to 300 ms, inside the 500 ms bound."""
    return {"k": f"k{i * 7919 % 31}", "v": i % 97, "ts": i * 5 + (i * 104_729) % 300}


def generated() -> tuple[ms.Flow, Any]:
    flow, out = ms.Flow("generated"), ms.testing.CollectSink()
    src = flow.source(ms.connectors.generator.read(_event, count=4_000, splits=4), watermark=WM)
    (src.filter(col("v") > 3).with_columns(w=col("v") * 2).key_by("k")
     .window(ms.windows.sliding(timedelta(seconds=2), every=timedelta(seconds=1)))
     .aggregate(total=agg.sum("w"), n=agg.count()).sink(out))
    return flow, out


def _rows(values: list[Any]) -> Counter[Any]:
    return Counter(tuple(sorted(v.items())) for v in values)


@pytest.mark.parametrize("mode", ["native", "microbatch", "batch"])
@pytest.mark.parametrize("build", [tumbling, session, join, process, generated], ids=lambda b: b.__name__)
def test_the_same_answers_at_parallelism_1_2_and_3(build: Callable[[], tuple[ms.Flow, Any]], mode: str,
                                                   clean: Any) -> None:
    """In every mode and at every parallelism, the answers of native mode in one process."""
    flow, out = build()
    assert flow.run(mode="native").ok
    want = _rows(out.values)
    assert want, "the flow computes something"
    for p in (1, 2, 3):
        flow, out = build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ms.errors.PerformanceWarning)  # Python functions per row
            result = flow.run(mode=mode, parallelism=p)
        assert result.ok and result.total("late") == 0
        assert _rows(out.values) == want, (mode, p)
        assert result.records_written == len(out.values)
        if p > 1:
            assert len(result.worker_peak_rss) == p


def test_workers_started_by_the_forkserver_give_the_same_answers(monkeypatch: Any, clean: Any) -> None:
    """A program running threads has its workers forked from the forkserver (a plain one forks them
    itself): the same answers either way, and nothing left behind."""
    import threading

    from millstream._parallel import _runner

    flow, out = generated()
    flow.run(mode="native", parallelism=1)
    want = _rows(out.values)
    methods: list[str] = []
    decide = _runner._start_method
    monkeypatch.setattr(_runner, "_start_method", lambda: methods.append(decide()) or methods[-1])
    flow, out = generated()
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(flow.run(mode="native", parallelism=2)))
    runner.start()  # this thread and the job's: the workers come from the forkserver
    runner.join(60)
    assert methods == ["forkserver"] and results[0].ok and _rows(out.values) == want
    monkeypatch.setattr(_runner, "_start_method", lambda: "fork")
    flow, out = generated()
    assert flow.run(mode="native", parallelism=3).ok and _rows(out.values) == want


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(tmp_path: Path, clean: Any) -> None:
    """A plain script (no ``if __name__ == "__main__":``) whose process runs polars' thread pool, so that
    its workers come from the forkserver: multiprocessing would run the script again in each worker (which
    would start the job again there, and fail); millstream's workers need nothing from it."""
    script, out = tmp_path / "job.py", tmp_path / "out.jsonl"
    script.write_text(textwrap.dedent(f"""
        import polars as pl
        import millstream as ms
        from millstream._parallel import _runner

        pl.DataFrame({{"a": list(range(100_000))}}).sort("a")  # polars' threads run: no fork from here
        assert _runner._start_method() == "forkserver"
        print("started", flush=True)
        flow = ms.Flow("script")
        src = flow.source(ms.connectors.memory.read([{{"k": i % 5, "ts": i}} for i in range(1000)], splits=2),
                          watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
        src.key_by("k").window(ms.windows.tumbling(100)).aggregate(n=ms.agg.count()).sink(
            ms.connectors.files.write({str(out)!r}))
        assert flow.run(mode="microbatch", parallelism=2).ok
    """))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("started") == 1
    assert len(out.read_text().splitlines()) == 50


def test_workers_are_forked_only_from_a_process_without_thread_pools() -> None:
    script = textwrap.dedent("""
        import millstream, polars as pl
        from millstream._parallel._runner import _start_method
        print(_start_method())
        pl.DataFrame({"a": [1, 2] * 1000}).group_by("a").len()  # polars starts its thread pool
        print(_start_method())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.stdout.split() == ["fork", "forkserver"], out.stderr


def test_keyed_steps_are_spread_over_the_workers(clean: Any) -> None:
    flow, out = tumbling()
    result = flow.run(mode="native", parallelism=3)
    window = result.step("window")
    assert window.records_in == 3_000  # the three workers' counts, added up
    assert result.step("collect").records_in == len(out.values)


def test_split_sources_are_read_on_every_worker(clean: Any) -> None:
    flow, out = generated()
    pp = compile_physical(flow.plan(), "native", 3, gather_sinks=True)
    source = pp.operator_of(flow.plan().nodes[0].id)
    assert source.parallelism == 3 and source.splits is not None
    chain = pp.operator_of(flow.plan().nodes[1].id)
    assert chain.parallelism == 3  # the stateless steps run where the records are read
    kinds = [(pp.operator(e.source).kind, e.partitioning) for e in pp.edges]
    assert kinds == [("source", "forward"), ("chain", "hash"), ("window", "global")]
    text = pp.explain()
    assert "generator#0, generator#1, generator#2 (split: 4 logical splits, each instance reads a range" in text
    assert "generator#0 reads generator _event (4,000 records, 4 splits), splits 0-1" in text
    assert "generator#2 reads generator _event (4,000 records, 4 splits), split 3" in text
    assert [list(source.split_numbers(w)) for w in range(3)] == [[0, 1], [2], [3]]
    # the splits are the source's, whatever the parallelism
    assert len(compile_physical(flow.plan(), "native", 2).operator_of(flow.plan().nodes[0].id).splits or ()) == 4
    result = flow.run(mode="native", parallelism=3)
    assert result.step("generator").records_in == 4_000  # the three instances, added up
    assert result.records_read == 4_000
    assert result.step("window").records_in == sum(1 for i in range(4_000) if _event(i)["v"] > 3)


@pytest.mark.parametrize("mode", ["native", "microbatch", "batch"])
@pytest.mark.parametrize("query", list(nexmark.QUERIES))
def test_nexmark_matches_the_oracle_at_parallelism_1_2_and_3(query: str, mode: str, clean: Any) -> None:
    """Every query, in every mode, at parallelism 1, 2 and 3: DuckDB's answer over the same events
    (20,000 of them, 20 s of event time, up to 2.5 s out of order, inside the 4 s bound)."""
    pytest.importorskip("duckdb")
    from tests.test_nexmark_queries import check, oracle_for

    config = nexmark.NexmarkConfig(events=20_000, rate=1_000, out_of_order_group_size=2_500)
    want = oracle_for(config, query)
    assert len(want) >= 2  # something to compare
    for p in (1, 2, 3):
        out = ms.testing.CollectSink()
        result = nexmark.build(query, nexmark.read(config, splits=4), out).run(mode=mode, parallelism=p)
        assert result.ok and result.total("late") == 0
        assert result.step("events").records_in == 20_000
        check(query, list(out.values), want)


def test_the_workers_of_a_micro_batch_job_run_the_vectorised_operators(monkeypatch: Any, clean: Any) -> None:
    """At parallelism > 1 the columnar modes run the vectorised kernels (not the per-record operators):
    worker 0's job is looked at (the others are built from the same physical plan by the same code), and
    the columnar batches cross the exchange as batches."""
    from millstream._parallel import _exchange, _worker
    from millstream._runtime._cwindows import ColumnarSlicedWindow

    jobs: list[Any] = []
    make = _worker.worker_job

    def spy(*args: Any, **kwargs: Any) -> Any:
        job = make(*args, **kwargs)
        jobs.append(job)
        return job

    frames = [0]
    columns: set[str] = set()
    send = _exchange.ExchangeOut._send

    def count(self: Any, dest: int, records: Any, times: Any) -> None:
        if _exchange.is_frame(records) and self.node.kind == "window":
            frames[0] += 1
            columns.update(records.columns)
        send(self, dest, records, times)

    monkeypatch.setattr(_worker, "worker_job", spy)
    monkeypatch.setattr("millstream._parallel._runner.worker_job", spy)
    monkeypatch.setattr(_exchange.ExchangeOut, "_send", count)
    flow, out = generated()
    assert flow.run(mode="microbatch", parallelism=2).ok
    (job,) = jobs
    window = job.op_of[next(n.id for n in flow.plan().nodes if n.kind == "window")]
    assert isinstance(window, ColumnarSlicedWindow) and window.delegate is None and window.records_in > 0
    assert frames[0] > 0
    # the window reads its key and the summed field: the batches leave the other fields behind
    assert columns == {"k", "w", _exchange.TIME}
    assert _rows(out.values) == _rows(_native(generated))


def _native(build: Callable[[], tuple[ms.Flow, Any]]) -> list[Any]:
    flow, out = build()
    assert flow.run(mode="native").ok
    return list(out.values)


def _write_lines(path: Path, events: list[dict[str, Any]]) -> None:
    import json

    path.write_text("".join(json.dumps(e) + "\n" for e in events))


@pytest.mark.parametrize("layout", ["directory", "one-file"])
def test_files_are_read_whole_on_worker_0(layout: str, tmp_path: Path, clean: Any) -> None:
    """A file source has no logical splits (yet): worker 0 reads it, the keyed steps are spread."""
    events = _events(4_000)
    if layout == "directory":  # five files: by file
        path = tmp_path / "in"
        path.mkdir()
        for i in range(5):
            _write_lines(path / f"part-{i}.jsonl", events[i * 800:(i + 1) * 800])
    else:  # one file: by byte range, each part from a line start to a line start
        path = tmp_path / "in.jsonl"
        _write_lines(path, events)
    results = {}
    for p in (1, 2, 3):
        flow, out = ms.Flow("files"), ms.testing.CollectSink()
        src = flow.source(ms.connectors.files.read(path, block_size=4096), watermark=WM, name="in")
        (src.key_by("k").window(ms.windows.tumbling(timedelta(seconds=1)))
         .aggregate(total=agg.sum("v"), n=agg.count()).sink(out))
        if p > 1:
            assert compile_physical(flow.plan(), "native", p).operator_of(flow.plan().nodes[0].id).parallelism == 1
        result = flow.run(mode="native", parallelism=p)
        assert result.ok and result.total("late") == 0
        assert result.step("in").records_in == 4_000
        results[p] = _rows(out.values)
    assert results[1] and results[2] == results[1] and results[3] == results[1]


def _late_flow(events: list[dict[str, Any]], *, splits: int = 4, window: Any = None,
               bound: int = 500) -> tuple[ms.Flow, Any, Any]:
    flow, out, late = ms.Flow("late"), ms.testing.CollectSink(), ms.testing.CollectSink("late")
    src = flow.source(ms.connectors.memory.read(events, splits=splits),
                      watermark=ms.WatermarkStrategy.bounded(bound, timestamp="ts"))
    # the filter keeps every record (in the columnar modes it makes batches, which then cross the exchange)
    counts = (src.filter(col("v") >= 0).key_by("k").window(window or ms.windows.tumbling(timedelta(seconds=1)))
              .aggregate(n=agg.count(), total=agg.sum("v")))
    counts.sink(out)
    counts.late().sink(late)
    return flow, out, late


def test_out_of_order_input_within_the_bound_is_late_nowhere(clean: Any) -> None:
    """Each split has its own watermark, and a keyed step's is the least over its senders: a record
    within the bound is on time at every parallelism, as in one process."""
    events = _events(3_000, step=3)  # up to 300 ms out of order, records 3 ms apart: heavily shuffled
    got = {}
    for p in (1, 2, 3):
        flow, out, late = _late_flow(events)
        result = flow.run(mode="native", parallelism=p)
        assert result.total("late") == 0 and late.values == []
        got[p] = _rows(out.values)
    assert got[2] == got[1] and got[3] == got[1]


def _late_run(events: list[dict[str, Any]], p: int, *, chunk: int | None = None, mode: str = "native", **how: Any
              ) -> tuple[Counter[Any], Counter[Any]]:
    flow, out, late = _late_flow(events, **how)
    result = flow.run(mode=mode, parallelism=p, max_chunk=chunk)
    assert result.ok
    if not isinstance(how.get("window"), ms.windows.SlidingWindow):  # a record is in one window, or late
        assert sum(r["n"] for r in out.values) + len(late.values) == len(events)
    return _rows(out.values), _rows(late.values)


def test_beyond_the_bound_the_same_records_are_late_at_every_parallelism(clean: Any) -> None:
    """Beyond the bound, a record meets the watermark of its own split (splits aligned within a
    worker, senders aligned at the exchange): late at parallelism 2 and 3 exactly when in one process,
    and every window the same; in micro-batch mode too, the late records whole (the batches into the
    window carry only the fields it reads unless its late records go on)."""
    events = _events(3_000)
    for i in range(100, 3_000, 37):  # 3 s behind: beyond the 500 ms bound
        events[i] = {**events[i], "ts": max(0, events[i]["ts"] - 3_000)}
    flow, out, late = _late_flow(events)
    assert flow.run(mode="native").ok  # the plain single-process run
    want = (_rows(out.values), _rows(late.values))
    assert want[1]
    for mode in ("native", "microbatch"):
        for p in (1, 2, 3):
            assert _late_run(events, p, mode=mode) == want, (mode, p)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), splits=st.integers(2, 5), window=st.sampled_from(["tumbling", "sliding", "session"]),
       chunk=st.sampled_from([1, 5, 2048]))
def test_late_records_and_windows_do_not_depend_on_parallelism_or_chunking(
        data: st.DataObject, splits: int, window: str, chunk: int, clean: Any) -> None:
    """The differential property: random input with records far behind, any number of splits; the
    single-process run (chunks of 2,048), and runs at parallelism 1, 2 and 3 in chunks of 1, 5 or 2,048,
    give the same windows and the same late records."""
    n = data.draw(st.integers(1, 120), label="n")
    times = data.draw(st.lists(st.integers(0, 3_000), min_size=n, max_size=n), label="times")
    behind = data.draw(st.lists(st.integers(0, n - 1), max_size=max(1, n // 4)), label="behind")
    for i in behind:
        times[i] = max(0, times[i] - data.draw(st.integers(100, 2_000)))
    events = [{"k": "abc"[i % 3], "ts": t, "v": i} for i, t in enumerate(times)]
    assigner = {"tumbling": ms.windows.tumbling(100), "sliding": ms.windows.sliding(100, every=40),
                "session": ms.windows.session(30)}[window]
    want = _late_run(events, 1, splits=splits, window=assigner, bound=50)
    for p in (1, 2, 3):
        assert _late_run(events, p, chunk=chunk, splits=splits, window=assigner, bound=50) == want, p


# -- failures ----------------------------------------------------------------------------------


def _key_on(worker: int, n: int) -> str:
    """A key whose group worker ``worker`` of ``n`` owns."""
    return next(k for k in (f"key-{i}" for i in range(10_000)) if worker_of(key_group(k), n) == worker)


def test_a_failing_function_in_a_worker_fails_the_job_naming_worker_and_step(clean: Any) -> None:
    bad = _key_on(1, 2)

    def explode(r: dict[str, Any]) -> dict[str, Any]:
        if r["k"] == bad:
            raise ZeroDivisionError("no good")
        return r

    events = [{"k": k, "v": 1, "ts": i} for i in range(400) for k in (_key_on(0, 2), bad)]
    flow = ms.Flow("fails")
    src = flow.source(ms.connectors.memory.read(events), watermark=WM)
    (src.key_by("k").window(ms.windows.tumbling(100)).aggregate(n=agg.count())
     .map(explode, name="explode").sink(ms.testing.CollectSink()))
    with pytest.raises(JobError, match=r"worker 1 of 2 failed in step 'explode': .*ZeroDivisionError: no good"):
        flow.run(mode="native", parallelism=2)


def test_a_key_without_a_key_group_fails_the_job_naming_step_and_record(clean: Any) -> None:
    flow = ms.Flow("bad-key")
    src = flow.source(ms.connectors.memory.read([{"k": [1, i], "ts": i} for i in range(10)]), watermark=WM)
    src.key_by("k").window(ms.windows.tumbling(100)).aggregate(n=agg.count()).sink(ms.testing.CollectSink())
    with pytest.raises(JobError, match=r"failed in step 'window': .*a key of type list \(\[1, \d\]\) cannot be stored"):
        flow.run(mode="native", parallelism=2)


def test_a_worker_that_dies_fails_the_job(clean: Any) -> None:
    me = os.getpid()
    victim = _key_on(1, 2)

    def die(r: dict[str, Any]) -> dict[str, Any]:
        if r["k"] == victim and os.getpid() != me:
            os.kill(os.getpid(), signal.SIGKILL)
        return r

    events = [{"k": k, "v": 1, "ts": i} for i in range(400) for k in (_key_on(0, 2), victim)]
    flow = ms.Flow("dies")
    src = flow.source(ms.connectors.memory.read(events), watermark=WM)
    (src.key_by("k").window(ms.windows.tumbling(100)).aggregate(n=agg.count())
     .map(die, name="die").sink(ms.testing.CollectSink()))
    with pytest.raises(JobError, match=r"worker 1 of 2 failed: worker 1 died \(exit code -9\)"):
        flow.run(mode="native", parallelism=2)


def test_a_failure_on_worker_0_stops_the_others(clean: Any) -> None:
    def explode(r: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("bad record")

    flow = ms.Flow("fails-at-0")
    src = flow.source(ms.connectors.memory.read(_events()), watermark=WM)
    src.map(explode, name="first").key_by("k").window(ms.windows.tumbling(100)).aggregate(n=agg.count()).sink(
        ms.testing.CollectSink())
    with pytest.raises(JobError, match=r"worker 0 of 2 failed in step 'first': .*ValueError: bad record") as info:
        flow.run(mode="native", parallelism=2)
    assert isinstance(info.value.__cause__, ms.errors.StepError)


JOB = """
import millstream as ms

def event(i):
    return {{"k": i % 101, "ts": i}}

flow = ms.Flow("endless")
src = flow.source(ms.connectors.generator.read(event),  # no end
                  watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
src.key_by("k").window(ms.windows.tumbling(1000)).aggregate(n=ms.agg.count()).sink(
    ms.connectors.files.write({out!r}))
"""


def test_ctrl_c_stops_every_worker(tmp_path: Path, clean: Any) -> None:
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent(JOB.format(out=str(tmp_path / "out.jsonl"))))
    cmd = [sys.executable, "-c", "import sys; from millstream.cli import main; sys.exit(main())",
           "run", str(job), "--parallelism", "2", "-q"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _descendants(proc.pid):
            time.sleep(0.05)
        time.sleep(0.3)
        below = _descendants(proc.pid, helpers=True)  # the worker, the forkserver, the resource tracker
        assert _descendants(proc.pid), "the job started its worker"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()
    deadline = time.monotonic() + 5
    while below & set(_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert below & set(_processes()) == set()


# -- what is refused, and how ------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"state": "lmdb:///tmp/x"}, r"keeps keyed state in memory for now"),
    ({"clock": ms.testing.ManualClock()}, r"needs the system clock"),
    ({"parallelism": 0}, r"parallelism must be a positive int"),
])
def test_what_parallelism_cannot_do_yet_is_refused_naming_the_fix(options: dict[str, Any], message: str) -> None:
    flow, _ = tumbling()
    with pytest.raises(ConfigError, match=message):
        flow.run(**{"parallelism": 2, **options})


def test_the_cli_takes_parallelism(tmp_path: Path, clean: Any) -> None:
    from millstream._cli import main

    job = tmp_path / "job.py"
    out = tmp_path / "out.jsonl"
    job.write_text(textwrap.dedent(f"""
        import millstream as ms
        flow = ms.Flow("cli")
        src = flow.source(ms.connectors.memory.read([{{"k": i % 5, "ts": i}} for i in range(1000)]),
                          watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
        src.key_by("k").window(ms.windows.tumbling(100)).aggregate(n=ms.agg.count()).sink(
            ms.connectors.files.write({str(out)!r}))
    """))
    assert main(["run", str(job), "--parallelism", "2", "-q"]) == 0
    assert len(out.read_text().splitlines()) == 50
    out.unlink()
    assert main(["run", str(job), "--parallelism", "2", "--mode", "microbatch", "-q"]) == 0
    assert len(out.read_text().splitlines()) == 50
