"""Pattern detection (millstream.cep) against an independent brute-force matcher.

The brute force enumerates the labelled subsequences of each key's time-ordered events and
checks the documented rules on whole gaps (not incrementally, as the engine does):
conditions on the event and the events matched before it, contiguity, negations, greedy
stages, ``within``, when a match is known (its emit time), the skip strategies and
timed-out partial matches.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import millstream as ms
from conftest import collect, stamped
from millstream import cep
from millstream.cep import Pattern, Stage
from millstream.errors import FlowDefinitionError
from millstream.testing import CollectSink, ManualClock, TransactionalCollectSink, watermark

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

Event = dict[str, Any]


# -- the brute force ------------------------------------------------------------------------


def _cond(stage: Stage) -> Callable[[Event, dict[str, list[Event]]], bool]:
    def test(e: Event, m: dict[str, list[Event]]) -> bool:
        ok = True
        for i, (how, fn, n) in enumerate(stage.conditions):
            v = bool(fn(e, m) if n == 2 else fn(e))
            ok = v if i == 0 else (ok and v) if how == "and" else (ok or v)
        return ok
    return test


class Brute:
    """All the matches (and timed-out partial matches) of ``pattern`` in one key's events."""

    def __init__(self, pattern: Pattern, events: list[Event]) -> None:
        self.p = pattern
        self.ev = events
        self.pos: list[Stage] = []
        self.negs: list[list[tuple[str, Any]]] = []
        pending: list[tuple[str, Any]] = []
        for s in pattern.stages:
            if s.negated:
                pending.append((s.kind, _cond(s)))
            else:
                self.pos.append(s)
                self.negs.append(pending)
                pending = []
        self.end_negs = pending
        self.conds = [_cond(s) for s in self.pos]
        self.names = [s.name for s in self.pos]
        self.W = pattern.within_ms

    def view(self, seq: list[tuple[int, int]]) -> dict[str, list[Event]]:
        m: dict[str, list[Event]] = {n: [] for n in self.names}
        for s, q in seq:
            m[self.names[s]].append(self.ev[q])
        return m

    def count(self, seq: list[tuple[int, int]], stage: int) -> int:
        return sum(1 for s, _ in seq if s == stage)

    def gap_ok(self, rule: str, cond: Any, gap: list[int], m: Any) -> bool:
        if rule == "strict":
            return not gap
        if rule == "relaxed":
            return not any(cond(self.ev[g], m) for g in gap)
        return True

    def extends(self, seq: list[tuple[int, int]], a: int, g: int, m: Any) -> bool:
        """Could event ``g`` be the next iteration of stage ``a`` (the last one of ``seq``)?"""
        st_ = self.pos[a]
        c = self.count(seq, a)
        if st_.hi is not None and c >= st_.hi:
            return False
        p = seq[-1][1]
        return self.conds[a](self.ev[g], m) and self.gap_ok(st_.inner, self.conds[a], list(range(p + 1, g)), m)

    def step_ok(self, seq: list[tuple[int, int]], b: int, q: int) -> bool:
        """Whether ``seq`` may take event ``q`` for stage ``b`` next."""
        m = self.view(seq)
        if not seq:
            return all(self.pos[k].optional for k in range(b)) and self.conds[b](self.ev[q], m)
        if self.W is not None and self.ev[q]["ts"] - self.ev[seq[0][1]]["ts"] >= self.W:
            return False
        a, p = seq[-1]
        gap = list(range(p + 1, q))
        if b == a:
            hi = self.pos[a].hi
            return ((hi is None or self.count(seq, a) < hi) and self.conds[b](self.ev[q], m)
                    and self.gap_ok(self.pos[a].inner, self.conds[a], gap, m))
        if b < a or self.count(seq, a) < self.pos[a].lo or not all(self.pos[k].optional for k in range(a + 1, b)):
            return False
        if not self.conds[b](self.ev[q], m):
            return False
        if not self.gap_ok(self.pos[b].contiguity, self.conds[b], gap, m):
            return False
        for kind, neg in self.negs[b]:
            if kind == "not_next" and neg(self.ev[p + 1], m):
                return False
            if kind == "not_followed_by" and any(neg(self.ev[g], m) for g in gap):
                return False
        return not (self.pos[a].greedy and any(self.extends(seq, a, g, m) for g in [*gap, q]))

    def prefixes(self) -> list[list[tuple[int, int]]]:
        out: list[list[tuple[int, int]]] = []

        def grow(seq: list[tuple[int, int]]) -> None:
            out.append(seq)
            start = seq[-1][1] + 1 if seq else 0
            lo_stage = seq[-1][0] if seq else 0
            for q in range(start, len(self.ev)):
                for b in range(lo_stage, len(self.pos)):
                    if self.step_ok(seq, b, q):
                        grow([*seq, (b, q)])
        grow([])
        return out[1:]

    def complete(self, seq: list[tuple[int, int]]) -> bool:
        a = seq[-1][0]
        return self.count(seq, a) >= self.pos[a].lo and all(self.pos[k].optional for k in range(a + 1, len(self.pos)))

    def after(self, seq: list[tuple[int, int]]) -> list[int]:
        """The events after ``seq``'s last one and before its deadline."""
        assert self.W is not None
        deadline = self.ev[seq[0][1]]["ts"] + self.W
        return [g for g in range(seq[-1][1] + 1, len(self.ev)) if self.ev[g]["ts"] < deadline]

    def results(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(matches, timeouts): (order, emit time, seq) with the skip strategy applied to matches."""
        found = []
        timeouts = []
        for seq in self.prefixes():
            m = self.view(seq)
            positions = tuple(q for _, q in seq)
            deadline = None if self.W is None else self.ev[seq[0][1]]["ts"] + self.W
            if self.complete(seq) and not self.end_negs:
                q = seq[-1][1]
                found.append(((self.ev[q]["ts"], 1, q, positions), self.ev[q]["ts"], seq))
                continue
            gap = self.after(seq) if deadline is not None else []
            if self.complete(seq):
                final = True
                for kind, neg in self.end_negs:
                    if kind == "not_next" and gap and neg(self.ev[gap[0]], m):
                        final = False
                    if kind == "not_followed_by" and any(neg(self.ev[g], m) for g in gap):
                        final = False
                only_next = all(k == "not_next" for k, _ in self.end_negs)
                if final and only_next and gap:
                    g = gap[0]
                    found.append(((self.ev[g]["ts"], 1, g, positions), self.ev[g]["ts"], seq))
                    continue
                if final:
                    assert deadline is not None
                    found.append(((deadline, 0, 0, positions), deadline - 1, seq))
                    continue
            if deadline is not None and self.alive(seq, gap, m):
                timeouts.append((deadline - 1, seq))
        found.sort(key=lambda f: f[0])
        return self.skip(found), timeouts

    def alive(self, seq: list[tuple[int, int]], gap: list[int], m: Any) -> bool:
        """Whether a partial match could still go on after the events of ``gap`` (a timeout)."""
        a = seq[-1][0]
        st_ = self.pos[a]
        c = self.count(seq, a)
        if (st_.hi is None or c < st_.hi) and self.gap_ok(st_.inner, self.conds[a], gap, m):
            return True
        if c < st_.lo:
            return False
        for b in range(a + 1, len(self.pos)):
            ok = self.gap_ok(self.pos[b].contiguity, self.conds[b], gap, m)
            for kind, neg in self.negs[b]:
                if kind == "not_next" and gap and neg(self.ev[gap[0]], m):
                    ok = False
                if kind == "not_followed_by" and any(neg(self.ev[g], m) for g in gap):
                    ok = False
            if st_.greedy and any(self.extends(seq, a, g, m) for g in gap):
                ok = False
            if ok:
                return True
            if not self.pos[b].optional:
                break
        return False

    def skip(self, found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        kind, name = self.p.skip.kind, self.p.skip.name
        cuts: list[tuple[int, int]] = []
        out = []
        for order, at, seq in found:
            start = seq[0][1]
            if any(lo <= start < hi for lo, hi in cuts):
                continue
            out.append((at, seq))
            if kind == "skip_to_next":
                cuts.append((start, start + 1))
            elif kind == "skip_past_last_event":
                cuts.append((start, seq[-1][1] + 1))
            elif kind in ("skip_to_first", "skip_to_last"):
                marks = [q for s, q in seq if self.names[s] == name]
                if marks:
                    cuts.append((start, marks[0] if kind == "skip_to_first" else marks[-1]))
        return out


def ids(m: Any) -> tuple[Any, ...]:
    """A match as ``(key, ((stage, (event ids...)), ...))``: what the tests compare."""
    return (m["key"], tuple((n, tuple(e["id"] for e in m[n])) for n in sorted(m) if n not in
                            ("key", "start", "end", "deadline")))


def expected(pattern: Pattern, events: list[Event]) -> tuple[Counter[Any], Counter[Any]]:
    by_key: dict[Any, list[Event]] = {}
    for e in sorted(events, key=lambda e: e["ts"]):  # stable: equal times keep their arrival order
        by_key.setdefault(e["k"], []).append(e)
    matches: Counter[Any] = Counter()
    timeouts: Counter[Any] = Counter()
    for k, evs in by_key.items():
        b = Brute(pattern, evs)
        found, tos = b.results()
        for at, seq in found:
            view = b.view(seq)
            matches[(ids({**view, "key": k}), at)] += 1
        for at, seq in tos:
            view = b.view(seq)
            timeouts[(ids({**view, "key": k}), at)] += 1
    return matches, timeouts


def run(pattern: Pattern, events: list[Event], *, bound: int = 0, chunk: int | None = None,
        timeouts: bool = False) -> tuple[Counter[Any], Counter[Any]]:
    flow = ms.Flow("cep")
    found = stamped(flow, events, bound=bound, chunk=chunk).key_by("k").match(pattern, timeouts=timeouts)
    out = collect(found)
    late = collect(found.late())
    tos = collect(found.timeouts()) if timeouts else CollectSink()
    flow.run()
    assert late.values == []
    return Counter((ids(m), t) for m, t in out.items), Counter((ids(m), t) for m, t in tos.items)


def random_events(rng: random.Random, n: int, keys: int = 2, values: int = 4, spread: int = 3) -> list[Event]:
    """Events of a few keys with small values; distinct times within a key."""
    out = []
    t = 0
    for i in range(n):
        t += rng.randint(1, spread)
        out.append({"id": i, "k": rng.randrange(keys), "v": rng.randrange(values), "ts": t})
    return out


# -- the patterns under test: every construct ----------------------------------------------

def v_in(*vals: int) -> Callable[[Event], bool]:
    return lambda e: e["v"] in vals


PATTERNS: dict[str, Pattern] = {
    "next": cep.begin("a").where(v_in(0)).next("b").where(v_in(1)),
    "followed_by": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1, 2)),
    "followed_by_any": cep.begin("a").where(v_in(0)).followed_by_any("b").where(v_in(1, 2)),
    "three_steps": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).next("c").where(v_in(2)),
    "iterative": cep.begin("a").where(v_in(0, 1)).followed_by_any("b")
                    .where(lambda e, m: e["v"] > m["a"][0]["v"]),
    "or_where": cep.begin("a").where(v_in(0)).or_where(v_in(3)).followed_by("b").where(v_in(1)),
    "times": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1, 2)).times(2),
    "times_range": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1, 2)).times(1, 3)
                      .followed_by("c").where(v_in(3)),
    "one_or_more": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).one_or_more()
                      .followed_by("c").where(v_in(2)),
    "one_or_more_last": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1, 2)).one_or_more(),
    "consecutive": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).one_or_more().consecutive()
                      .followed_by("c").where(v_in(2)),
    "combinations": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).times(1, 2).allow_combinations()
                       .followed_by("c").where(v_in(2)),
    "greedy": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1, 2)).one_or_more().greedy()
                 .followed_by("c").where(v_in(2, 3)),
    "optional_middle": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).optional()
                          .followed_by("c").where(v_in(2)),
    "optional_first": cep.begin("a").where(v_in(3)).optional().next("b").where(v_in(0)),
    "optional_last": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).optional(),
    "within": cep.begin("a").where(v_in(0)).followed_by_any("b").where(v_in(1)).within(5),
    "not_next": cep.begin("a").where(v_in(0)).not_next("n").where(v_in(3)).followed_by("b").where(v_in(1)),
    "not_followed_by": cep.begin("a").where(v_in(0)).not_followed_by("n").where(v_in(3))
                          .followed_by_any("b").where(v_in(1)),
    "not_followed_by_last": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1))
                               .not_followed_by("n").where(v_in(3)).within(8),
    "loop_within": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).times(2, None)
                      .followed_by("c").where(v_in(2)).within(20),
    "not_next_last": cep.begin("a").where(v_in(0)).not_next("n").where(v_in(1)).within(6),
}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_every_construct_matches_the_brute_force(name: str) -> None:
    rng = random.Random(name)
    pattern = PATTERNS[name]
    trials = 0
    for trial in range(6):
        events = random_events(rng, 24 + 4 * trial)
        want, _ = expected(pattern, events)
        got, _ = run(pattern, events, chunk=rng.choice([None, 1, 5]))
        assert got == want, f"{name} trial {trial}"
        trials += bool(want)
    assert trials >= 3, "the random inputs should give matches"


def test_the_fraud_pattern_finds_a_small_then_a_large_transaction_within_five_minutes() -> None:
    small_then_large = (cep.begin("small").where(lambda tx: tx["amount"] < 10)
                        .followed_by("large").where(lambda tx: tx["amount"] > 500).within(5 * 60_000))
    txs = [{"card": "A", "amount": 3, "ts": 0}, {"card": "B", "amount": 2, "ts": 1_000},
           {"card": "A", "amount": 900, "ts": 60_000}, {"card": "B", "amount": 700, "ts": 301_000}]
    flow = ms.Flow("fraud")
    out = collect(stamped(flow, txs, ts="ts").key_by("card").match(
        small_then_large, select=lambda m: (m.key, m["small"][0]["amount"], m["large"][0]["amount"], m.end)))
    flow.run()
    assert out.items == [(("A", 3, 900, 60_000), 60_000)]


# -- skip strategies ------------------------------------------------------------------------

SKIPS = {
    "no_skip": cep.no_skip(),
    "skip_to_next": cep.skip_to_next(),
    "skip_past_last_event": cep.skip_past_last_event(),
    "skip_to_first": cep.skip_to_first("b"),
    "skip_to_last": cep.skip_to_last("b"),
}


def _loop_pattern(skip: cep.SkipStrategy) -> Pattern:
    return (cep.begin("a", skip=skip).where(v_in(0, 1)).followed_by_any("b").where(v_in(1, 2)).one_or_more()
            .followed_by("c").where(v_in(2, 3)))


@pytest.mark.parametrize("skip", list(SKIPS))
def test_skip_strategies_match_the_brute_force(skip: str) -> None:
    rng = random.Random(skip)
    for trial in range(6):
        events = random_events(rng, 20)
        for pattern in (_loop_pattern(SKIPS[skip]),
                        cep.begin("b", skip=SKIPS[skip]).where(v_in(1, 2)).times(2, 3).followed_by("c").where(v_in(3))):
            want, _ = expected(pattern, events)
            got, _ = run(pattern, events, chunk=rng.choice([None, 3]))
            assert got == want, f"{skip} trial {trial}"


def test_skip_strategies_on_the_textbook_example() -> None:
    """Greedy ``b+ c`` over b1 b2 b3 c: which matches each strategy keeps."""
    events = [{"id": i, "k": 0, "v": v, "ts": i} for i, v in enumerate([1, 1, 1, 2])]

    def found(skip: cep.SkipStrategy) -> list[tuple[int, ...]]:
        pattern = (cep.begin("b", skip=skip).where(v_in(1)).one_or_more().greedy()
                   .followed_by("c").where(v_in(2)))
        got, _ = run(pattern, events)
        return sorted(dict(m[1])["b"] for m, _ in got.elements())

    assert found(cep.no_skip()) == [(0, 1, 2), (1, 2), (2,)]
    assert found(cep.skip_to_next()) == [(0, 1, 2), (1, 2), (2,)]
    assert found(cep.skip_past_last_event()) == [(0, 1, 2)]
    assert found(cep.skip_to_first("b")) == [(0, 1, 2), (1, 2), (2,)]
    assert found(cep.skip_to_last("b")) == [(0, 1, 2), (2,)]


# -- timeouts --------------------------------------------------------------------------------

TIMED = ["within", "not_followed_by_last", "loop_within"]


@pytest.mark.parametrize("name", TIMED)
def test_timed_out_partial_matches_match_the_brute_force(name: str) -> None:
    rng = random.Random(name + "timeouts")
    pattern = PATTERNS[name]
    seen = 0
    for _ in range(5):
        events = random_events(rng, 24)
        want, want_to = expected(pattern, events)
        got, got_to = run(pattern, events, chunk=rng.choice([None, 2]), timeouts=True)
        assert (got, got_to) == (want, want_to)
        seen += sum(want_to.values())
    assert seen


def test_timeouts_carry_the_deadline_and_come_at_its_event_time() -> None:
    pattern = cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).within(10)
    flow = ms.Flow("t")
    events = [{"id": 0, "k": 0, "v": 0, "ts": 5}, {"id": 1, "k": 0, "v": 2, "ts": 12}, watermark(14),
              {"id": 2, "k": 0, "v": 1, "ts": 15}]
    found = stamped(flow, events).key_by("k").match(pattern, timeouts=True)
    tos = collect(found.timeouts())
    out = collect(found)
    flow.run()
    assert out.values == []
    assert tos.items == [({"a": [events[0]], "b": [], "key": 0, "start": 5, "end": 5, "deadline": 15}, 14)]


# -- event-time order: any arrival order within the bound gives the same matches ------------

BOUND = 6


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), name=st.sampled_from(["three_steps", "greedy", "not_followed_by_last",
                                                          "optional_middle", "within"]))
def test_any_arrival_order_within_the_bound_gives_the_same_matches(seed: int, name: str) -> None:
    rng = random.Random(seed)
    events = random_events(rng, 30, keys=3)
    # arrival order: sorted by time plus a jitter of at most the bound, so nothing comes late
    shuffled = sorted(events, key=lambda e: e["ts"] + rng.randint(0, BOUND))
    pattern = PATTERNS[name]
    timeouts = pattern.within_ms is not None
    want = expected(pattern, events)
    assert run(pattern, shuffled, bound=BOUND, chunk=rng.choice([None, 1, 4]), timeouts=timeouts) == (
        want if timeouts else (want[0], Counter()))


def test_events_behind_the_watermark_go_to_the_late_side_output() -> None:
    pattern = cep.begin("a").where(v_in(0)).next("b").where(v_in(1))
    events = [{"id": 0, "k": 0, "v": 0, "ts": 10}, {"id": 1, "k": 0, "v": 5, "ts": 20},
              {"id": 2, "k": 0, "v": 1, "ts": 11}]
    flow = ms.Flow("late")
    found = stamped(flow, events, bound=5, chunk=1).key_by("k").match(pattern)
    out, late = collect(found), collect(found.late())
    flow.run()
    assert out.values == [] and late.items == [(events[2], 11)]


# -- checkpoints ------------------------------------------------------------------------------


class TickingClock(ManualClock):
    """Processing time that moves 5 ms each time it is read: periodic checkpoints happen, deterministically."""

    def now_ms(self) -> int:
        self.advance(5)
        return super().now_ms()


CK_EVENTS = random_events(random.Random(7), 1_200, keys=4)
CK_PATTERN = (cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).one_or_more()
              .followed_by("c").where(v_in(2)).within(40))


def _ck_flow(sink: ms.connectors.Sink, crash_at: int | None = None) -> ms.Flow:
    def crash(e: Event) -> Event:
        if e["id"] == crash_at:
            raise KeyboardInterrupt  # stops the run without a final checkpoint
        return e

    flow = ms.Flow("cep-recovery")
    src = flow.source(ms.connectors.memory.read(CK_EVENTS), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
    src.map(crash, name="maybe-crash").key_by("k").match(CK_PATTERN, select=lambda m: ids(m.to_dict())).sink(sink)
    return flow


def test_a_run_resumed_from_a_checkpoint_mid_stream_gives_every_match_once(tmp_path: Path) -> None:
    cfg = {"checkpoint_dir": tmp_path / "ck", "checkpoint_interval": 100, "clock": TickingClock(), "max_chunk": 64}
    sink = TransactionalCollectSink()
    first = _ck_flow(sink, crash_at=700).run(guarantee="exactly-once", **cfg)
    assert first.interrupted and sorted((tmp_path / "ck").glob("chk-*"))
    before = len(sink.values)
    result = _ck_flow(sink).run(guarantee="exactly-once", **cfg)
    assert result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert result.records_read < len(CK_EVENTS)  # resumed, not replayed from the start
    want, _ = expected(CK_PATTERN, CK_EVENTS)
    assert 0 < before < len(sink.values)
    assert Counter(sink.values) == Counter(m for m, _ in want.elements())


def test_the_engine_state_survives_a_snapshot_and_restore() -> None:
    import pickle

    from millstream._cep._nfa import Engine, KeyState

    pattern = PATTERNS["greedy"]
    events = sorted(random_events(random.Random(3), 40, keys=1), key=lambda e: e["ts"])
    engine = Engine(pattern, timeouts=False)

    def feed(ks: KeyState, evs: list[Event], out: list[Any]) -> None:
        for e in evs:
            engine.on_event(ks, 0, e, e["ts"], lambda kind, m, at: out.append((ids(m.to_dict()), at)))

    whole: list[Any] = []
    feed(KeyState(), events, whole)
    half: list[Any] = []
    ks = KeyState()
    feed(ks, events[:20], half)
    ks = pickle.loads(pickle.dumps(ks))
    feed(ks, events[20:], half)
    assert half == whole and whole


# -- build-time errors -------------------------------------------------------------------------


def _stream() -> ms.KeyedStream:
    flow = ms.Flow("errors")
    return stamped(flow, [{"k": 0, "ts": 1}]).key_by("k")


def _raises(fn: Callable[[], Any], problem: str, fix: str) -> FlowDefinitionError:
    with pytest.raises(FlowDefinitionError) as info:
        fn()
    err = info.value
    assert problem in err.problem and fix in (err.fix or "")
    assert err.location is not None and err.location.startswith("tests/test_cep.py:") or "test_cep.py" in str(
        err.location)
    return err


def test_bad_patterns_fail_when_built_naming_the_step_the_line_and_the_fix() -> None:
    a = cep.begin("a")
    _raises(lambda: cep.begin(""), "stage name", "e.g.")
    _raises(lambda: a.followed_by("a"), "already has a stage named 'a'", "own name")
    _raises(lambda: a.next("key"), "reserved", "something else")
    _raises(lambda: a.where(42), "takes a function", "lambda tx")
    _raises(lambda: a.where(ms.col("v") > 1), "takes a function", "lambda tx")
    _raises(lambda: a.where(lambda x, y, z: True), "cannot take that", "one parameter")
    _raises(lambda: a.or_where(lambda e: True), "no condition yet", ".where(")
    _raises(lambda: a.times(0), "1 <= lo <= hi", "optional()")
    _raises(lambda: a.times(3, 2), "1 <= lo <= hi", "times(2, 4)")
    _raises(lambda: a.greedy(), "takes one event", "one_or_more()")
    _raises(lambda: a.not_next("n").one_or_more(), "a negation takes no events", "begin/next")
    _raises(lambda: a.not_next("n").next("b").optional(), "cannot be optional", "mandatory")
    _raises(lambda: a.within(0), "must be > 0", "timedelta")
    _raises(lambda: a.within("soon"), "within", "timedelta")
    _raises(lambda: cep.begin("a", skip="past"), "skip strategy", "skip_past_last_event")  # type: ignore[arg-type]


def test_bad_match_steps_fail_when_built() -> None:
    err = _raises(lambda: _stream().match("a then b"), "takes a pattern", "cep.begin")
    assert err.step == "match"
    _raises(lambda: _stream().match(cep.begin("a").not_followed_by("n")), "has no within()", ".within(")
    _raises(lambda: _stream().match(cep.begin("a").one_or_more().greedy()), "the last stage", "drop .greedy()")
    _raises(lambda: _stream().match(cep.begin("a", skip=cep.skip_to_last("zz"))), "names no stage", "'a'")
    _raises(lambda: _stream().match(cep.begin("a"), timeouts=True), "has none", "within(")
    _raises(lambda: _stream().match(cep.begin("a"), select=3), "select", "lambda m")
    err = _raises(lambda: _stream().match(cep.begin("a"), name="fraud").timeouts(), "timeouts=True", "timeouts=True")
    assert err.step == "fraud"
    flow = ms.Flow("untimed")
    _raises(lambda: flow.source(ms.testing.TestSource([1])).key_by(lambda x: x).match(cep.begin("a")),
            "needs event time", "watermark")
