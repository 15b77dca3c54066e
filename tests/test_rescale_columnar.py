"""Rescale on restore for the vectorised operators (micro-batch and batch mode, exactly-once).

The same test as ``test_rescale_keyed`` (whose helpers it uses), for the state the micro-batch
executor's vectorised operators keep: frames of rows with the key columns (``_cwindows``, ``_cagg``,
``_cjoins``). A job fails at parallelism 2 after a mid-stream checkpoint, whose parts are checked to hold
the vectorised operators' own state (frames, not their native twins'), and resumes at 1 and at 3: what
every sink committed equals, exactly once, an uninterrupted run's output and a plain-Python oracle's.

Keys are read from one field, from several (their tuple is the key), and by expressions (computed
into a column of their own), so that every way a key sits in a state frame is split by key group.
Hand-made parts check what the splitters do with figures, types and native twins' states.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.test_parallel import _shm, clean  # noqa: F401 - the fixture: no process, nothing in /dev/shm left
from tests.test_rescale_keyed import (
    RUN,
    N,
    _by,
    _checkpoint,
    _failing,
    _lines,
    _outputs,
    _sessions,
    _sink,
    _source,
    _states,
)

import millstream as ms
from millstream import agg, col
from millstream._keygroups import groups_of, key_group, worker_of
from millstream._parallel._rescale import _keyed
from millstream._physical import compile as compile_physical
from millstream.errors import ConfigError, JobError

pytestmark = [pytest.mark.usefixtures("clean"),
              pytest.mark.filterwarnings("ignore::millstream.errors.PerformanceWarning")]

KEYS = 40  # i % 40 fixes i % 4: each key's records are in one of the source's 4 splits (running totals' order)


def event(i: int) -> dict[str, Any]:
    """Event ``i``: up to 40 ms out of order, inside the 50 ms bound; every field of one type."""
    return {"id": i, "key": f"k{i % KEYS}", "ts": i * 10 + (i * 2654435761) % 41, "y": i % 7, "s": f"s{(i // 3) % 50}"}


def right(j: int) -> dict[str, Any]:
    return {"id": j, "key": f"k{j % KEYS}", "ts": j * 10 + (j * 40503) % 37, "s": f"s{(j // 3) % 50}"}


# -- the flows: vectorised operators only, keyed every way -----------------------------------------


def windows(out: Path, marker: Path | None, ck: Path) -> ms.Flow:
    flow = ms.Flow("rescale-columnar-windows")
    events = _source(flow, event, "events").map(_failing(marker, ck), name="fail_once")
    aggs = {"n": agg.count(), "ids": agg.sum("id")}
    _sink(events.key_by(col("id") % 17, name="g").window(ms.windows.tumbling(1_000), name="tumbling")
          .aggregate(**aggs), out, "tumbling")
    _sink(events.key_by(["key", "y"]).window(ms.windows.sliding(1_000, every=500), name="sliding").aggregate(**aggs),
          out, "sliding")
    _sink(events.key_by("key").window(ms.windows.session(420), name="session").aggregate(**aggs), out, "session")
    _sink(events.key_by("key").aggregate(name="running", **aggs), out, "running")
    return flow


def joins(out: Path, marker: Path | None, ck: Path) -> ms.Flow:
    flow = ms.Flow("rescale-columnar-joins")
    left = _source(flow, event, "left").map(_failing(marker, ck), name="fail_once")
    other = _source(flow, right, "right")
    _sink(left.key_by("key").window_join(other.key_by("key"), ms.windows.tumbling(1_000), name="window"),
          out, "window")
    _sink(left.key_by("s").window_join(other.key_by("s"), ms.windows.sliding(1_000, every=500), name="sliding"),
          out, "sliding")
    _sink(left.key_by("key").interval_join(other.key_by("key"), lower=-300, upper=300, name="interval"),
          out, "interval")
    _sink(left.key_by("id").join(other.key_by("id"), name="regular"), out, "regular")
    return flow


# -- the oracles: plain Python -----------------------------------------------------------------------


def _agg_row(key: dict[str, Any], recs: list[dict[str, Any]], **window: Any) -> dict[str, Any]:
    return {**key, **window, "n": len(recs), "ids": sum(r["id"] for r in recs)}


def oracle_windows() -> dict[str, Counter[str]]:
    events = [event(i) for i in range(N)]
    tumbling, sliding, session, running = [], [], [], []
    for g, recs in _by([{**e, "g": e["id"] % 17} for e in events], "g").items():
        for s in sorted({r["ts"] // 1000 * 1000 for r in recs}):
            tumbling.append(_agg_row({"g": g}, [r for r in recs if s <= r["ts"] < s + 1000], window_start=s,
                                     window_end=s + 1000))
    for (k, y), recs in _by([{**e, "ky": (e["key"], e["y"])} for e in events], "ky").items():
        for s in sorted({r["ts"] // 500 * 500 - d for r in recs for d in (0, 500)}):
            w = [r for r in recs if s <= r["ts"] < s + 1000]
            if w:
                sliding.append(_agg_row({"key": k, "y": y}, w, window_start=s, window_end=s + 1000))
    for k, recs in _by(events, "key").items():
        for start, end, members in _sessions([(r["ts"], 420) for r in recs]):
            session.append(_agg_row({"key": k}, [recs[n] for n in members], window_start=start, window_end=end))
        arrival = sorted(recs, key=lambda r: r["id"])  # one split's order
        for n in range(1, len(arrival) + 1):
            running.append(_agg_row({"key": k}, arrival[:n]))
    return {"tumbling": _lines(tumbling), "sliding": _lines(sliding), "session": _lines(session),
            "running": _lines(running)}


def _pair(a: dict[str, Any], b: dict[str, Any], shared: set[str], **window: Any) -> dict[str, Any]:
    """The default output of a join: the left's fields, then the right's (``<name>_right`` for a name the
    left has, except a key field read under the same name on both sides)."""
    return {**a, **{(f"{f}_right" if f in a else f): v for f, v in b.items() if f not in shared}, **window}


def oracle_joins() -> dict[str, Counter[str]]:
    ls, rs = [event(i) for i in range(N)], [right(j) for j in range(N)]
    window, sliding, interval, regular = [], [], [], []
    rk = _by(rs, "key")
    for k, lefts in _by(ls, "key").items():
        for a in lefts:
            for b in rk.get(k, ()):
                if a["ts"] // 1000 == b["ts"] // 1000:
                    s = a["ts"] // 1000 * 1000
                    window.append(_pair(a, b, {"key"}, window_start=s, window_end=s + 1000))
                if a["ts"] - 300 <= b["ts"] <= a["ts"] + 300:
                    interval.append(_pair(a, b, {"key"}))
    rsk = _by(rs, "s")
    for k, lefts in _by(ls, "s").items():
        for a in lefts:
            for b in rsk.get(k, ()):
                for s in {a["ts"] // 500 * 500 - d for d in (0, 500)}:
                    if s <= b["ts"] < s + 1000:
                        sliding.append(_pair(a, b, {"s"}, window_start=s, window_end=s + 1000))
    regular = [_pair(a, b, {"id"}) for a, b in zip(ls, rs, strict=True)]
    return {"window": _lines(window), "sliding": _lines(sliding), "interval": _lines(interval),
            "regular": _lines(regular)}


def _rows(frame: Any) -> int:
    return 0 if frame is None else int(frame.height)


#: per flow and step: the checkpoint holds the vectorised operator's own state (frames: not its native
#: twin's, ``{"native": ...}``), with rows not yet emitted when it was taken
HELD: dict[str, dict[str, Callable[[list[Any]], bool]]] = {
    "windows": {
        "tumbling": lambda st: any(_rows(s["parts"]) and s["fired"] > -(2**62) for s in st),
        "sliding": lambda st: any(_rows(s["parts"]) for s in st),
        "session": lambda st: any(_rows(s["open"]) for s in st),
        "running": lambda st: all(_rows(s["totals"]) for s in st),
    },
    "joins": {
        "window": lambda st: any(s["sides"][0] and s["sides"][1] for s in st),
        "sliding": lambda st: any(s["sides"][0] and s["sides"][1] for s in st),
        "interval": lambda st: any(s["sides"][0] and s["sides"][1] for s in st),
        "regular": lambda st: any(s["sides"][0] and s["sides"][1] for s in st),
    },
}
SHAPES = {"tumbling": {"parts", "fired", "late", "kinds"}, "sliding": {"parts", "fired", "late", "kinds"},
          "session": {"open", "late", "kinds"}, "running": {"totals", "kinds"}}
JOIN = {"sides", "fired", "late", "kinds", "key_kinds"}
FLOWS: dict[str, tuple[Callable[[Path, Path | None, Path], ms.Flow], Callable[[], dict[str, Counter[str]]]]] = {
    "windows": (windows, oracle_windows),
    "joins": (joins, oracle_joins),
}


def reference_runs(tmp_path_factory: pytest.TempPathFactory, flows: dict[str, tuple[Any, Callable[[], Any]]],
                   run: Callable[[Any, Path, str], Any]) -> Callable[[str, str], dict[str, Counter[str]]]:
    """Per flow and mode, the output of an uninterrupted run in one process (``run(build, out, mode)``),
    checked against the flow's oracle; each made once."""
    done: dict[tuple[str, str], dict[str, Counter[str]]] = {}
    oracles: dict[str, dict[str, Counter[str]]] = {}

    def of(name: str, mode: str) -> dict[str, Counter[str]]:
        if (name, mode) not in done:
            build, oracle = flows[name]
            out = tmp_path_factory.mktemp(f"ref-{name}-{mode}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ms.errors.PerformanceWarning)
                assert run(build, out, mode).ok
            want = oracles.setdefault(name, oracle())
            got = _outputs(out, list(want))
            for sink in want:
                assert want[sink] and got[sink] == want[sink], f"{name}/{sink} ({mode}): not the oracle's"
            done[(name, mode)] = got
        return done[(name, mode)]

    return of


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], dict[str, Counter[str]]]:
    """Per flow and mode, the output of an uninterrupted run in one process (checked against the oracle)."""
    return reference_runs(tmp_path_factory, FLOWS, lambda build, out, mode: build(out, None, out / "ck").run(mode=mode))


# every mode, flow and new parallelism, in pairs (4 runs, not the 8 of every combination: each takes
# ~12 s, and batch mode is the micro-batch executor with larger epochs)
@pytest.mark.parametrize(("mode", "flow", "then"), [("microbatch", "windows", 3), ("microbatch", "joins", 1),
                                                    ("batch", "windows", 1), ("batch", "joins", 3)])
def test_a_columnar_checkpoint_at_parallelism_2_resumes_at_another_with_the_same_output(
        mode: str, flow: str, then: int, tmp_path: Path,
        reference: Callable[[str, str], dict[str, Counter[str]]]) -> None:
    want = reference(flow, mode)
    build, _ = FLOWS[flow]
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with pytest.raises(JobError, match="boom"):
        build(out, marker, ck).run(mode=mode, parallelism=2, checkpoint_dir=str(ck), **RUN)
    ckpt, n, parts = _checkpoint(ck)
    assert ckpt > 0 and n == 2
    for step, held in HELD[flow].items():
        states = _states(parts, step)
        assert len(states) == 2, step
        for s in states:  # the vectorised operator's own state: the test cannot pass through the native one
            assert set(s) == (SHAPES[step] if flow == "windows" else JOIN), f"{step}: {s}"
        assert held(states), f"checkpoint {ckpt} holds no pending state of {step!r}"
    partial = _outputs(out, list(want))
    assert any(partial[s] != want[s] for s in want), "the failed run had committed everything already"
    result = build(out, marker, ck).run(mode=mode, parallelism=then, checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == ckpt
    got = _outputs(out, list(want))
    for sink in want:
        assert got[sink] == want[sink], sink


# -- a worker whose operator had handed over to its native twin, beside one whose had not -------------

HANDED = "k3"  # its records' "v" turn from ints to floats: its worker's operators hand over to native


def typed(i: int) -> dict[str, Any]:
    e = event(i)
    return {**e, "v": i + 0.5 if e["key"] == HANDED and i >= N // 8 else i}


def handed(out: Path, marker: Path | None, ck: Path) -> ms.Flow:
    flow = ms.Flow("rescale-columnar-handed")
    keyed = _source(flow, typed, "events").map(_failing(marker, ck), name="fail_once").key_by("key")
    aggs = {"n": agg.count(), "v": agg.sum("v")}
    _sink(keyed.aggregate(name="running", **aggs), out, "running")
    _sink(keyed.window(ms.windows.tumbling(1_000), name="tumbling").aggregate(**aggs), out, "tumbling")
    return flow


def oracle_handed() -> dict[str, Counter[str]]:
    running, tumbling = [], []
    for k, recs in _by([typed(i) for i in range(N)], "key").items():
        total: Any = 0
        for n, r in enumerate(sorted(recs, key=lambda r: r["id"]), 1):  # arrival order: one split's
            total += r["v"]
            running.append({"key": k, "n": n, "v": total})
        for s in sorted({r["ts"] // 1000 * 1000 for r in recs}):
            w = [r for r in recs if s <= r["ts"] < s + 1000]
            tumbling.append({"key": k, "window_start": s, "window_end": s + 1000, "n": len(w),
                             "v": sum(r["v"] for r in sorted(w, key=lambda r: r["id"]))})
    return {"running": _lines(running), "tumbling": _lines(tumbling)}


FLOWS["handed"] = (handed, oracle_handed)


@pytest.mark.parametrize("then", [1, 3])
def test_instances_of_which_one_had_handed_over_to_its_native_twin_merge_into_the_twin(
        then: int, tmp_path: Path, reference: Callable[[str, str], dict[str, Counter[str]]]) -> None:
    """One worker's operators took floats where ints had been (a key's field changed type): they handed
    their state over to their native twins, the other worker's kept theirs vectorised. Restored at
    another parallelism, an instance holding keys of both is the native twin, given both."""
    want = reference("handed", "microbatch")
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with pytest.raises(JobError, match="boom"):
        handed(out, marker, ck).run(mode="microbatch", parallelism=2, checkpoint_dir=str(ck), **RUN)
    ckpt, _, parts = _checkpoint(ck)
    for step in ("running", "tumbling"):
        states = _states(parts, step)
        assert sorted("native" in s for s in states) == [False, True], step
    result = handed(out, marker, ck).run(mode="microbatch", parallelism=then, checkpoint_dir=str(ck), **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == ckpt
    got = _outputs(out, list(want))
    for sink in want:
        assert got[sink] == want[sink], sink


# -- the splitters on hand-made parts ----------------------------------------------------------------


def _op(flow: str, step: str) -> Any:
    build, _ = FLOWS[flow]
    plan = compile_physical(build(Path("unused"), None, Path("unused")).plan(), "microbatch", 2, gather_sinks=True)
    return next(p.steps[0].op for p in plan.operators if p.steps[-1].name == step)


def _split(op: Any, states: list[Any], then: int) -> list[Any]:
    """The state of each of ``then`` new instances (max parallelism 128)."""
    return [_keyed("step", op, states, set(groups_of(w, then, 128)), 128, len(states)) for w in range(then)]


def _owner(key: Any, then: int) -> int:
    return worker_of(key_group(key, 128), then, 128)


def test_split_sliding_window_parts_by_a_key_of_two_fields() -> None:
    """Rows go where the tuple of their key columns' values goes (as natively); the late count whole to
    worker 0; the types seen united; fired: the least (equal here)."""
    import polars as pl

    op = _op("windows", "sliding")
    def part(keys: list[str], late: int) -> dict[str, Any]:
        return {"parts": pl.DataFrame({"key": keys, "y": [1] * len(keys), "__slice__": [500] * len(keys),
                                       "__a0": list(range(len(keys)))}),
                "fired": 400, "late": late, "kinds": {"key": "str", "y": "int"}}

    states = [part([f"k{i}" for i in range(0, 30, 2)], 3), part([f"k{i}" for i in range(1, 30, 2)], 4)]
    for then in (1, 3):
        new = _split(op, states, then)
        assert [s["late"] for s in new] == [7] + [0] * (then - 1)
        assert all(s["fired"] == 400 and s["kinds"] == {"key": "str", "y": "int"} for s in new)
        got = {(r["key"], w) for w, s in enumerate(new) for r in s["parts"].iter_rows(named=True)}
        assert got == {(f"k{i}", _owner((f"k{i}", 1), then)) for i in range(30)}
    assert states[0]["parts"].height == 15  # the parts are left as they were


def test_fired_is_the_least_and_uneven_sliding_windows_are_refused() -> None:
    """A tumbling window's row is held only while its one window has not fired: the least ``fired`` of
    the instances fires it once. A sliding window's slice outlives its first windows: merged from an
    instance that had fired further, they would fire again, so that is refused."""
    import polars as pl

    def part(op: Any, key: str, fired: int) -> dict[str, Any]:
        keys = {"g": [key]} if op.key.expr is not None else {"key": [key], "y": [1]}
        frame = pl.DataFrame(keys).rename({"g": "__key__"}) if "g" in keys else pl.DataFrame(keys)
        return {"parts": frame.with_columns(pl.lit(0).alias("__slice__")), "fired": fired, "late": 0, "kinds": {}}

    tumbling = _op("windows", "tumbling")
    new = _split(tumbling, [part(tumbling, "a", 300), part(tumbling, "b", 900)], 1)
    assert new[0]["fired"] == 300 and new[0]["parts"].height == 2
    sliding = _op("windows", "sliding")
    with pytest.raises(ConfigError, match=r"step 'step' \(window\).*different watermarks.*taken at \(2\)"):
        _split(sliding, [part(sliding, "a", 300), part(sliding, "b", 900)], 1)
    even = _split(sliding, [part(sliding, "a", 300), part(sliding, "b", 300)], 1)
    assert even[0]["fired"] == 300


def test_split_join_sides_by_their_expression_key_columns() -> None:
    """An expression key is computed into a column of each side's own (``__k0_0``, ``__k1_0``)."""
    import dataclasses

    import polars as pl

    from millstream._plan import KeySpec

    op = dataclasses.replace(_op("joins", "window"), left_key=KeySpec(expr=col("id") * 2),
                             right_key=KeySpec(expr=col("id") * 3))

    def part(ids: list[int]) -> dict[str, Any]:
        left = pl.DataFrame({"id": ids, "__k0_0": [i * 2 for i in ids]})
        rght = pl.DataFrame({"id": ids, "__k1_0": [i * 3 for i in ids]})
        return {"sides": [[left], [rght]], "fired": 0, "late": 1, "kinds": [{"id": "int"}, {"id": "int"}],
                "key_kinds": {"#key0": "int"}}

    new = _split(op, [part(list(range(0, 40, 2))), part(list(range(1, 40, 2)))], 3)
    for side, factor in ((0, 2), (1, 3)):
        got = {(r["id"], w) for w, s in enumerate(new) for f in s["sides"][side] for r in f.iter_rows(named=True)}
        assert got == {(i, _owner(i * factor, 3)) for i in range(40)}
    assert [s["late"] for s in new] == [2, 0, 0]


def test_instances_whose_columns_held_other_types_are_given_to_the_native_twin_apart() -> None:
    """Merged, a frame of int totals and one of float totals would make the ints floats: the restored
    instance is the native twin, given each instance's part on its own; a twin's state is split as the
    native operator's."""
    import polars as pl

    op = _op("windows", "running")
    ints = {"totals": pl.DataFrame({"key": ["a"], "__r0": [1]}), "kinds": {"key": "str", "id": "int"}}
    floats = {"totals": pl.DataFrame({"key": ["b"], "__r0": [1.5]}), "kinds": {"key": "str", "id": "float"}}
    (new,) = _split(op, [ints, floats], 1)
    assert new["native"] is None and [s["totals"]["key"].to_list() for s in new["columnar"]] == [["a"], ["b"]]
    twin = {"native": {"state": {"c": [2, 3], "a2": [1, 1]}}}
    parts = _split(op, [ints, twin], 3)
    for w, s in enumerate(parts):
        assert set(s["native"]["state"]) == {k for k in ("c", "a2") if _owner(k, 3) == w}
        held = [[] if c["totals"] is None else c["totals"]["key"].to_list() for c in s["columnar"]]
        assert held == [["a"] if _owner("a", 3) == w else []]
