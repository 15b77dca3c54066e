"""Rescale on restore for every keyed operator (native mode, exactly-once).

Each flow runs keyed operators of one family side by side, each into a transactional file sink. A run
at parallelism 2 fails once after a checkpoint (taken mid-stream: its keyed state is checked to hold
records, pending timers and, for the outer join, rows emitted without a partner), and is run again at
parallelism 1 and 3 from that checkpoint. What every sink committed must equal, exactly once, what an
uninterrupted run writes and what a plain-Python computation of the same operator gives.

The inputs are pure functions of the record number, out of order within the watermark's bound (so no
record is late). Keys are strings and ints spread over many key groups. Where an operator's answer
depends on the arrival order of a key's records (count windows, count triggers, predict), each key's
records come from one split of the source, so that order is the split's in every run.
"""

from __future__ import annotations

import bisect
import heapq
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.test_parallel import _shm, clean  # noqa: F401 - the fixture: no process, nothing in /dev/shm left

import millstream as ms
from millstream import agg, cep
from millstream._checkpoint._store import CheckpointStore
from millstream._parallel._rescale import load_parts, snapshot_for
from millstream._physical import compile as compile_physical
from millstream.errors import ConfigError, JobError

pytestmark = pytest.mark.usefixtures("clean")

N = 16_000  # events of each source
RATE = 40_000  # a second, so that checkpoints come during the run
FAIL_AT = N // 2
KEYS = 40  # i % 40 fixes i % 4: each key's records are in one of the source's 4 splits
RUN: dict[str, Any] = {"guarantee": "exactly-once", "checkpoint_interval": 1, "max_chunk": 200}
WM = 50


def event(i: int) -> dict[str, Any]:
    """Event ``i``: up to 40 ms out of order, inside the 50 ms bound."""
    return {"id": i, "key": f"k{i % KEYS}", "ts": i * 10 + (i * 2654435761) % 41, "y": i % 7,
            "s": f"s{(i // 3) % 50}", "o": i if i % 7 != 3 else f"L{i}"}


def right(j: int) -> dict[str, Any]:
    """The right side of the joins: same keys, other times; the outer join's keys partly its own."""
    return {"id": j, "key": f"k{j % KEYS}", "ts": j * 10 + (j * 40503) % 37, "s": f"s{(j // 3) % 50}",
            "o": j if j % 11 != 5 else f"R{j}"}


TABLE_N = N // 4


def version(j: int) -> dict[str, Any]:
    """A version of a table row: every 40 ms (as far as the events in event time), some deletes."""
    return {"key": f"k{(j * 3) % KEYS}", "ver": j, "ts": j * 40 + (j * 7) % 37, "deleted": j % 9 == 8}


# -- the flows ---------------------------------------------------------------------------------------


def _failing(marker: Path | None, ck: Path) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The job fails once, at an event from ``FAIL_AT`` on, once two checkpoints have completed since
    the first event from ``N // 4`` on was read: the second of them was taken mid-stream, with state
    in every keyed step. Until then each such event waits 2 ms, so that slow checkpoints (a loaded
    machine) still come before the input ends."""
    def fail_once(e: dict[str, Any]) -> dict[str, Any]:
        if marker is None or e["id"] < N // 4 or marker.exists():
            return e
        quarter = marker.with_suffix(".quarter")
        if not quarter.exists():
            try:
                with open(quarter, "x") as f:
                    f.write("\n".join(p.name for p in ck.glob("chk-*")))
            except FileExistsError:  # the other worker's
                pass
            return e
        if e["id"] >= FAIL_AT:
            before = set(quarter.read_text().split())
            if len({p.name for p in ck.glob("chk-*")} - before) >= 2:
                marker.touch()
                raise RuntimeError("boom")
            time.sleep(0.002)
        return e
    return fail_once


def _source(flow: ms.Flow, fn: Callable[[int], Any], name: str, count: int = N, rate: float = RATE,
            splits: int = 4) -> ms.Stream:
    return flow.source(ms.connectors.generator.read(fn, count=count, rate=rate, splits=splits, name=name),
                       watermark=ms.WatermarkStrategy.bounded(WM, timestamp="ts"))


def _sink(stream: ms.Stream, out: Path, name: str) -> None:
    stream.sink(ms.connectors.files.write(str(out / name), transactional=True), name=f"{name}.out")


def _ids(left: Any, right: Any) -> dict[str, Any]:
    return {"l": None if left is None else left["id"], "r": None if right is None else right["id"]}


def joins(out: Path, marker: Path | None, ck: Path) -> ms.Flow:
    flow = ms.Flow("rescale-joins")
    left = _source(flow, event, "left").map(_failing(marker, ck), name="fail_once")
    other = _source(flow, right, "right")
    _sink(left.key_by("key").interval_join(other.key_by("key"), lower=-450, upper=450, combine=_ids,
                                           name="interval"), out, "interval")
    _sink(left.key_by("key").window_join(other.key_by("key"), ms.windows.tumbling(1_000), combine=_ids,
                                         name="window"), out, "window")
    _sink(left.key_by("s").window_join(other.key_by("s"), ms.windows.session(500), name="session"),
          out, "session")
    _sink(left.key_by("o").join(other.key_by("o"), how="full", ttl=1_000, combine=_ids, name="outer"),
          out, "outer")
    return flow


def _gap(e: dict[str, Any]) -> int:
    return 300 if e["id"] % 2 else 450


def windows(out: Path, marker: Path | None, ck: Path) -> ms.Flow:
    flow = ms.Flow("rescale-windows")
    keyed = _source(flow, event, "events").map(_failing(marker, ck), name="fail_once").key_by("key")
    aggs = {"n": agg.count(), "ids": agg.sum("id")}
    _sink(keyed.window(ms.windows.count(5, every=3), name="count").aggregate(**aggs), out, "count")
    _sink(keyed.window(ms.windows.tumbling(1_000), allowed_lateness=500, trigger=ms.windows.on_event_time(),
                       name="triggered").aggregate(**aggs), out, "triggered")
    _sink(keyed.window(ms.windows.global_(), trigger=ms.windows.purging(ms.windows.on_count(4)),
                       name="global").aggregate(**aggs), out, "global")
    _sink(keyed.window(ms.windows.session(gap_fn=_gap), name="gaps").aggregate(**aggs), out, "gaps")
    _sink(keyed.window(ms.windows.sliding(1_000, every=500), allowed_lateness=300,
                       name="sliding").aggregate(**aggs), out, "sliding")
    return flow


class SumModel:
    """An online model that predicts the sum of the targets it has learnt (ints: exact in every run)."""

    def __init__(self) -> None:
        self.total = 0

    def predict_one(self, x: dict[str, Any]) -> int:
        return self.total

    def learn_one(self, x: dict[str, Any], y: int) -> None:
        self.total += y


def _pair(m: Any) -> dict[str, Any]:
    return {"key": m.key, "a": m["a"][0]["id"], "b": m["b"][0]["id"]}


def _versioned(e: Any, row: Any) -> dict[str, Any]:
    return {"id": e["id"], "ver": None if row is None else row["ver"]}


def enrich(out: Path, marker: Path | None, ck: Path) -> ms.Flow:
    flow = ms.Flow("rescale-enrich")
    keyed = _source(flow, event, "events").map(_failing(marker, ck), name="fail_once").key_by("key")
    pattern = cep.begin("a").where(lambda e: e["id"] % 3 == 0).next("b").where(lambda e: e["id"] % 3 != 0)
    _sink(keyed.match(pattern, select=_pair, name="cep"), out, "cep")
    _sink(keyed.predict(SumModel, features=["id"], target="y", name="predict"), out, "predict")
    table = _source(flow, version, "versions", count=TABLE_N, rate=RATE / 4, splits=2).key_by("key")
    _sink(keyed.join_table(table, deletes="deleted", how="left", combine=_versioned, name="table"), out, "table")
    return flow


# -- the oracles: plain Python -----------------------------------------------------------------------


def _by(rows: list[dict[str, Any]], field: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["ts"]):
        out.setdefault(r[field], []).append(r)
    return out


def _lines(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps(r, sort_keys=True) for r in rows)


def _sessions(times: list[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """Closed intervals ``[t, t + gap]`` that touch merged: ``(start, end, indexes)``, by start."""
    out: list[tuple[int, int, list[int]]] = []
    for n, (t, gap) in sorted(enumerate(times), key=lambda x: x[1][0]):
        if out and t <= out[-1][1]:
            s, e, members = out[-1]
            out[-1] = (s, max(e, t + gap), [*members, n])
        else:
            out.append((t, t + gap, [n]))
    return out


def oracle_joins() -> dict[str, Counter[str]]:
    ls, rs = [event(i) for i in range(N)], [right(j) for j in range(N)]
    lk, rk = _by(ls, "key"), _by(rs, "key")
    interval, window = [], []
    for k, lefts in lk.items():
        for a in lefts:
            for b in rk.get(k, ()):
                if a["ts"] - 450 <= b["ts"] <= a["ts"] + 450:
                    interval.append(_ids(a, b))
                if a["ts"] // 1000 == b["ts"] // 1000:
                    window.append(_ids(a, b))
    session = []
    ls_, rs_ = _by(ls, "s"), _by(rs, "s")
    for k in ls_.keys() | rs_.keys():
        recs = [(0, r) for r in ls_.get(k, ())] + [(1, r) for r in rs_.get(k, ())]
        for start, end, members in _sessions([(r["ts"], 500) for _, r in recs]):
            for a in (recs[n][1] for n in members if recs[n][0] == 0):
                for b in (recs[n][1] for n in members if recs[n][0] == 1):
                    pair = {**a, **b, **{f"{f}_right": b[f] for f in a.keys() & b.keys() - {"s"}}}
                    session.append({**pair, **{f: a[f] for f in a.keys() & b.keys()}, "window_start": start,
                                    "window_end": end})
    lo, ro = {r["o"]: r for r in ls}, {r["o"]: r for r in rs}  # each outer key once a side
    outer = [_ids(lo.get(k), ro.get(k)) for k in lo.keys() | ro.keys()]
    return {"interval": _lines(interval), "window": _lines(window), "session": _lines(session),
            "outer": _lines(outer)}


def _window_rows(key: str, start: Any, end: Any, recs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"key": key, "window_start": start, "window_end": end, "n": len(recs), "ids": sum(r["id"] for r in recs)}


def oracle_windows() -> dict[str, Counter[str]]:
    by_key = _by([event(i) for i in range(N)], "key")
    count, triggered, glob, gaps, sliding = [], [], [], [], []
    for k, recs in by_key.items():
        arrival = sorted(recs, key=lambda r: r["id"])  # one split's order
        for n in range(5, len(arrival) + 1):
            if (n - 5) % 3 == 0:
                w = arrival[n - 5:n]
                count.append(_window_rows(k, min(r["ts"] for r in w), max(r["ts"] for r in w) + 1, w))
        for n in range(4, len(arrival) + 1, 4):
            glob.append(_window_rows(k, None, None, arrival[n - 4:n]))
        starts = sorted({r["ts"] // 1000 * 1000 for r in recs})
        for s in starts:
            triggered.append(_window_rows(k, s, s + 1000, [r for r in recs if s <= r["ts"] < s + 1000]))
        for s in sorted({r["ts"] // 500 * 500 - d for r in recs for d in (0, 500)}):
            w = [r for r in recs if s <= r["ts"] < s + 1000]
            if w:
                sliding.append(_window_rows(k, s, s + 1000, w))
        for start, end, members in _sessions([(r["ts"], _gap(r)) for r in recs]):
            gaps.append(_window_rows(k, start, end, [recs[n] for n in members]))
    return {"count": _lines(count), "triggered": _lines(triggered), "global": _lines(glob), "gaps": _lines(gaps),
            "sliding": _lines(sliding)}


def oracle_enrich() -> dict[str, Counter[str]]:
    events = [event(i) for i in range(N)]
    by_key = _by(events, "key")
    matches, predicted = [], []
    for k, recs in by_key.items():
        for a, b in zip(recs, recs[1:], strict=False):  # event-time order
            if a["id"] % 3 == 0 and b["id"] % 3 != 0:
                matches.append({"key": k, "a": a["id"], "b": b["id"]})
        total = 0
        for r in sorted(recs, key=lambda r: r["id"]):  # arrival order: one split's
            predicted.append({**r, "prediction": total})
            total += r["y"]
    versions: dict[str, tuple[list[int], list[Any]]] = {}
    for v in sorted((version(j) for j in range(TABLE_N)), key=lambda v: v["ts"]):
        ts, rows = versions.setdefault(v["key"], ([], []))
        ts.append(v["ts"])
        rows.append(None if v["deleted"] else v)
    table = []
    for e in events:
        ts, rows = versions.get(e["key"], ([], []))
        i = bisect.bisect_right(ts, e["ts"]) - 1
        table.append(_versioned(e, rows[i] if i >= 0 else None))
    return {"cep": _lines(matches), "predict": _lines(predicted), "table": _lines(table)}


# -- running and reading -----------------------------------------------------------------------------


def _committed(path: Path) -> Counter[str]:
    """A transactional sink's committed lines, canonical (staged files start with . or _)."""
    return Counter(json.dumps(json.loads(line), sort_keys=True)
                   for f in sorted(path.glob("*")) if f.is_file() and f.name[0] not in "._"
                   for line in f.read_text().splitlines())


def _table(path: Path) -> Counter[str]:
    """The final table of a changelog sink: inserts less deletes, each row counted (never below zero)."""
    table: Counter[str] = Counter()
    for line in (line for f in sorted(path.glob("*")) if f.is_file() and f.name[0] not in "._"
                 for line in f.read_text().splitlines()):
        r = json.loads(line)
        change = r.pop("_change")
        row = json.dumps(r, sort_keys=True)
        if change in ("+I", "+U"):
            table[row] += 1
        else:
            assert table[row] > 0, f"{change} of a row not in the table: {row}"
            table[row] -= 1
    return +table


CHANGELOGS = {"outer"}


def _outputs(out: Path, sinks: list[str]) -> dict[str, Counter[str]]:
    return {s: (_table if s in CHANGELOGS else _committed)(out / s) for s in sinks}


def _checkpoint(ck: Path) -> tuple[int, int, list[dict[str, Any]]]:
    """The latest complete checkpoint of ``ck``: its id, parallelism and parts."""
    manifest = next(ck.glob("chk-*/MANIFEST.json"))
    store = CheckpointStore(str(ck), job=str(json.loads(manifest.read_text())["job"]), read_only=True)
    ckpt = max(store.ids())
    loaded = store.load(ckpt)
    n, parts = load_parts(loaded.state, store.shared_dir)
    return ckpt, n, parts


def _states(parts: list[dict[str, Any]], step: str) -> list[Any]:
    return [p["job"][step]["state"] for p in parts if step in p["job"]]


def _maps(parts: list[dict[str, Any]], step: str) -> dict[Any, Any]:
    return {k: v for p in parts for mid, entries in p.get("maps", {}).items() if mid.startswith(step + "/")
            for k, v in entries.items()}


#: per flow: what its checkpoint must hold for the test to mean anything (state not yet emitted and
#: timers not yet fired when it was taken)
HELD: dict[str, dict[str, Callable[[list[Any], list[dict[str, Any]]], bool]]] = {
    "joins": {
        "interval": lambda st, _: any(s["sides"][0] and s["sides"][1] and s["buckets"][0] for s in st),
        "window": lambda st, _: any(s["slices"] and s["fire"] for s in st),
        "session": lambda st, _: any(s["sessions"] and s["timers"] for s in st),
        "outer": lambda st, _: (any(s["unmatched"][0] for s in st) and any(s["unmatched"][1] for s in st)
                                and any(s["sides"][0] for s in st)),
    },
    "windows": {
        "count": lambda st, _: any(s["buffers"] for s in st),
        "triggered": lambda st, _: any(s["wins"] and s["timers"] for s in st),
        "global": lambda st, _: any(s["wins"] for s in st),
        "gaps": lambda st, _: any(s["wins"] and s["timers"] for s in st),
        "sliding": lambda st, _: any(s["slices"] and s["fire"] and s["cleanup"] for s in st),
    },
    "enrich": {
        "cep.nfa": lambda st, parts: any(s["event_timers"] for s in st) and bool(_maps(parts, "cep.nfa")),
        "predict": lambda st, parts: bool(_maps(parts, "predict")),
        "table": lambda st, _: any(s["versions"] and s["pending"] for s in st),
    },
}
FLOWS: dict[str, tuple[Callable[[Path, Path | None, Path], ms.Flow], Callable[[], dict[str, Counter[str]]]]] = {
    "joins": (joins, oracle_joins),
    "windows": (windows, oracle_windows),
    "enrich": (enrich, oracle_enrich),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Counter[str]]]:
    """Per flow, the output of an uninterrupted run in one process (checked against the oracle once)."""
    done: dict[str, dict[str, Counter[str]]] = {}

    def of(name: str) -> dict[str, Counter[str]]:
        if name not in done:
            build, oracle = FLOWS[name]
            out = tmp_path_factory.mktemp(f"ref-{name}")
            assert build(out, None, out / "ck").run().ok
            want = oracle()
            got = _outputs(out, list(want))
            for sink in want:
                assert want[sink] and got[sink] == want[sink], f"{name}/{sink}: not the oracle's"
            done[name] = got
        return done[name]

    return of


@pytest.mark.parametrize("then", [1, 3])
@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_a_checkpoint_at_parallelism_2_resumes_at_another_with_every_keyed_operators_output(
        flow: str, then: int, tmp_path: Path, reference: Callable[[str], dict[str, Counter[str]]]) -> None:
    want = reference(flow)
    build, _ = FLOWS[flow]
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with pytest.raises(JobError, match="boom"):
        build(out, marker, ck).run(parallelism=2, checkpoint_dir=str(ck), **RUN)
    ckpt, n, parts = _checkpoint(ck)
    assert ckpt > 0 and n == 2
    for step, held in HELD[flow].items():
        states = _states(parts, step)
        assert len(states) == 2 and held(states, parts), f"checkpoint {ckpt} holds no pending state of {step!r}"
    partial = _outputs(out, list(want))
    assert any(partial[s] != want[s] for s in want), "the failed run had committed everything already"
    result = build(out, marker, ck).run(parallelism=then, checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == ckpt
    got = _outputs(out, list(want))
    for sink in want:
        assert got[sink] == want[sink], sink


# -- the splitters on hand-made parts ----------------------------------------------------------------


def _plan_of(then: int) -> Any:
    """A keyed session window (step ``sessions``) after a source of two splits, compiled for ``then`` workers."""
    flow = ms.Flow("hand-made")
    src = _source(flow, event, "events", count=10, splits=2)
    src.key_by("key").window(ms.windows.session(100), name="sessions").aggregate(n=agg.count()).sink(
        ms.testing.CollectSink(), name="out")
    return compile_physical(flow.plan(), "native", then, gather_sinks=True)


def _part(state: Any) -> dict[str, Any]:
    wm = {"wm": 500, "inputs": [500], "idle": [False]}
    return {"maps": {}, "job": {"sessions": {"state": state, "time": wm}}}


def test_split_sessions_keep_their_timers_numbered_afresh_and_the_late_count_once() -> None:
    """Two instances' session timers tie on (end, number) and their keys (an int, a str) do not compare:
    merged, they are numbered afresh (each session's timer with them), so the heap never compares keys.
    The late records counted by the old instances go, all of them, to the new worker 0."""
    def session_state(key: Any, late: int) -> dict[str, Any]:
        return {"sessions": {key: [[1_000, 1_100, [1], 0]]}, "timers": [(1_100, 0, 1_000, key)],
                "cleanups": [(1_300, 1, 900, 1_000, key)], "late": late}

    parts = [_part(session_state(7, late=3)), _part(session_state("k7", late=4))]
    snaps = [snapshot_for(_plan_of(3), w, 2, parts)["sessions"]["state"] for w in range(3)]
    assert [s["late"] for s in snaps] == [7, 0, 0]
    one = snapshot_for(_plan_of(1), 0, 2, parts)["sessions"]["state"]
    assert one["late"] == 7 and sorted(map(str, one["sessions"])) == ["7", "k7"]
    heapq.heapify(one["timers"])  # no TypeError: no two entries tie before their keys
    heapq.heapify(one["cleanups"])
    for _, number, start, key in one["timers"]:
        assert [s[3] for s in one["sessions"][key] if s[0] == start] == [number]
    numbers = [t[1] for t in one["timers"]] + [c[1] for c in one["cleanups"]]
    assert len(set(numbers)) == len(numbers)
    assert parts[0]["job"]["sessions"]["state"]["sessions"][7][0][3] == 0  # the parts are left as they were
    together = [k for s in snaps for k in s["sessions"]]
    assert sorted(map(str, together)) == ["7", "k7"]  # each key on one new worker, with its timers
    assert all({t[-1] for t in s["timers"]} == set(s["sessions"]) for s in snaps)


def test_a_keyed_state_of_no_known_shape_is_refused_naming_the_step() -> None:
    parts = [_part({"something": {}}), _part({"something": {}})]
    with pytest.raises(ConfigError, match=r"step 'sessions' \(window\).*\['something'\].*taken at \(2\)"):
        snapshot_for(_plan_of(3), 0, 2, parts)
    assert snapshot_for(_plan_of(2), 1, 2, parts)["sessions"]["state"] == {"something": {}}  # same parallelism
