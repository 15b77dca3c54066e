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
    """All the matches (and timed-out partial matches) of ``pattern`` in one key's events.

    The rules, on whole gaps (``p`` is the last event a partial match took, ``q`` the next):

    - iterations of a stage follow its inner contiguity, a stage's first event its own;
    - ``not_followed_by`` right after stage ``a``: no event from ``a``'s first event
      (exclusive) to the next stage's first event (inclusive) satisfies it, so a forbidden
      event during a loop ends the partial match; at the end of a pattern, none before
      the deadline either (the match is known at the deadline);
    - ``not_next`` right after stage ``a``: the event right after any event of ``a`` at
      which ``a`` could end (count >= lo) does not satisfy it (the partial match ends there
      otherwise); at the end of a pattern, the match is known at that next event;
    - greedy stage ``g``: the event right after ``g``'s last event (or after the stage
      before, if ``g`` took none) does not satisfy ``g`` when the match leaves ``g`` there;
      if the stage after ``g`` is mandatory and takes the match's next event, no event up to
      that one satisfies ``g`` either; and a match cannot end right at an event ``g`` takes;
    - ``within``: from the first event, and (``since="previous"``) between consecutive events;
    - skip strategies other than ``no_skip`` hold a complete match back while a partial
      match that started before it is open, and release matches in order of their start.
    """

    def __init__(self, pattern: Pattern, events: list[Event]) -> None:
        self.p = pattern
        self.ev = events
        self.pos: list[Stage] = []
        self.after_neg: list[list[tuple[str, Any]]] = []  # negations right after each positive stage
        for s in pattern.stages:
            if s.negated:
                self.after_neg[-1].append((s.kind, _cond(s)))
            else:
                self.pos.append(s)
                self.after_neg.append([])
        self.end_negs = self.after_neg[-1]
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

    def bounded(self, stage: int, k: int) -> int | None:
        """The previous-event bound on the ``k``-th event of ``stage``. As in Flink it covers a
        single stage's event, the first ``lo`` events of a looping stage and all but the last
        one of ``times(lo, hi)``."""
        if stage >= len(self.pos):
            return None
        st_ = self.pos[stage]
        limit = 1 if (st_.lo, st_.hi) == (1, 1) else st_.lo if st_.hi is None else st_.hi - 1
        return st_.within_prev if k <= limit else None

    def deadline(self, seq: list[tuple[int, int]]) -> int | None:
        """The first-event bound, or the previous-event bound of the state the partial match
        waits in: for its last stage's next event while that stage can take more, else for the
        next stage's first event. (That is where it waits when a strict stage follows a stage
        with a previous-event bound, the shapes tested here.)"""
        d = None if self.W is None else self.ev[seq[0][1]]["ts"] + self.W
        a = seq[-1][0]
        hi = self.pos[a].hi
        k = self.count(seq, a)
        w = self.bounded(a, k + 1) if hi is None or k < hi else self.bounded(a + 1, 1)
        if w is not None:
            e = self.ev[seq[-1][1]]["ts"] + w
            d = e if d is None else min(d, e)
        return d

    def nots_ok(self, seq: list[tuple[int, int]], upto: int, m: Any) -> bool:
        """The negations after ``seq``'s last stage hold for the events up to ``upto`` (inclusive)."""
        a, p = seq[-1]
        first = next(q for s, q in seq if s == a)
        for kind, neg in self.after_neg[a]:
            if kind == "not_followed_by" and any(neg(self.ev[g], m) for g in range(first + 1, upto + 1)):
                return False
            if kind == "not_next":
                lo = self.pos[a].lo
                for i, (s, q) in enumerate(seq):
                    c = self.count(seq[:i + 1], a) if s == a else 0
                    if s == a and c >= lo and q + 1 <= upto and neg(self.ev[q + 1], self.view(seq[:i + 1])):
                        return False
        return True

    def greedy_ok(self, seq: list[tuple[int, int]], b: int, q: int, m: Any) -> bool:
        """Leaving stage ``seq[-1][0]`` (and the optional ones after it) for stage ``b`` at ``q``."""
        a, p = seq[-1]
        x = p + 1
        for g in range(a, b):
            if not self.pos[g].greedy:
                continue
            d = g + 1
            upto = q if (b == d and not self.pos[d].optional) else x
            if any(self.conds[g](self.ev[e], m) for e in range(x, upto + 1)):
                return False
        return True

    def step_ok(self, seq: list[tuple[int, int]], b: int, q: int) -> bool:
        """Whether ``seq`` may take event ``q`` for stage ``b`` next."""
        m = self.view(seq)
        if not seq:
            return all(self.pos[k].optional for k in range(b)) and self.conds[b](self.ev[q], m)
        d = self.deadline(seq)
        if d is not None and self.ev[q]["ts"] >= d:
            return False
        a, p = seq[-1]
        gap = list(range(p + 1, q))
        if not self.nots_ok(seq, q, m):
            return False
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
        return self.greedy_ok(seq, b, q, m)

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
        a, q = seq[-1]
        if self.count(seq, a) < self.pos[a].lo or not all(self.pos[k].optional for k in range(a + 1, len(self.pos))):
            return False
        before = self.view(seq[:-1])  # a greedy stage blocks ending at an event it could take
        return not any(self.pos[g].greedy and self.conds[g](self.ev[q], before) for g in range(a, len(self.pos) - 1))

    def after(self, seq: list[tuple[int, int]]) -> list[int]:
        """The events after ``seq``'s last one and before its deadline."""
        deadline = self.deadline(seq)
        assert deadline is not None
        return [g for g in range(seq[-1][1] + 1, len(self.ev)) if self.ev[g]["ts"] < deadline]

    def moment(self, g: int) -> tuple[int, int, int]:
        return self.ev[g]["ts"], 1, g

    def results(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(matches, timeouts): (emit time, seq) with the skip strategy applied to matches."""
        found = []  # (moment it is complete, seq)
        timeouts = []
        self.open: list[tuple[list[tuple[int, int]], Any]] = []  # partial matches: (seq, until which moment)
        pend = self.end_negs and all(k == "not_followed_by" for k, _ in self.end_negs)
        for seq in self.prefixes():
            m = self.view(seq)
            deadline = self.deadline(seq)
            end: Any = (deadline, 0, -1) if deadline is not None else (float("inf"), 0, 0)
            if self.complete(seq) and not self.end_negs:
                found.append((self.moment(seq[-1][1]), seq))
            gap = self.after(seq) if deadline is not None else list(range(seq[-1][1] + 1, len(self.ev)))
            if self.complete(seq) and self.end_negs:
                if pend:
                    if deadline is not None and self.nots_ok(seq, gap[-1] if gap else seq[-1][1], m):
                        found.append(((deadline, 0, -1), seq))
                        self.open.append((seq, (deadline, 0, -1)))
                        continue
                elif gap and self.nots_ok(seq, gap[0], m):
                    found.append((self.moment(gap[0]), seq))
            dies = self.dies(seq, gap, m)
            if dies is not None:
                end = self.moment(dies)
            if not self.alive(seq, [], m):
                end = self.moment(seq[-1][1])
            self.open.append((seq, end))
            if deadline is not None and dies is None and self.alive(seq, gap, m):
                timeouts.append((deadline - 1, seq))
        return self.skip(found), timeouts

    def dies(self, seq: list[tuple[int, int]], gap: list[int], m: Any) -> int | None:
        """The first event of ``gap`` after which ``seq`` cannot go on (None: it can go on after all of them)."""
        for i in range(len(gap)):
            if not self.alive(seq, gap[:i + 1], m):
                return gap[i]
        return None

    def alive(self, seq: list[tuple[int, int]], gap: list[int], m: Any) -> bool:
        """Whether a partial match could still go on after the events of ``gap``."""
        a = seq[-1][0]
        st_ = self.pos[a]
        c = self.count(seq, a)
        if gap and not self.nots_ok(seq, gap[-1], m):
            return False
        if (st_.hi is None or c < st_.hi) and self.gap_ok(st_.inner, self.conds[a], gap, m):
            return True
        if c < st_.lo:
            return False
        if self.end_negs and all(self.pos[k].optional for k in range(a + 1, len(self.pos))) and not gap:
            return True  # waiting for the event that tells whether the negation holds
        for b in range(a + 1, len(self.pos)):
            ok = self.gap_ok(self.pos[b].contiguity, self.conds[b], gap, m)
            if gap and not self.greedy_ok(seq, b, gap[-1], m):
                ok = False
            if ok:
                return True
            if not self.pos[b].optional:
                break
        return False

    def skip(self, found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        kind, name = self.p.skip.kind, self.p.skip.name
        order = sorted(found, key=lambda f: (f[0], [q for _, q in f[1]]))
        if kind == "no_skip":
            return [(self.at(mo), seq) for mo, seq in order]
        moments = sorted({mo for mo, _ in found} | {end for _, end in self.open if end[0] != float("inf")}
                         | {self.moment(g) for g in range(len(self.ev))})
        held: list[list[tuple[int, int]]] = []
        dropped = -1  # partial and held matches that started at or before this position are gone
        out = []
        for mo in moments:
            held.extend(seq for when, seq in order if when == mo and seq[0][1] > dropped)
            last = mo[2] if mo[1] == 1 else max((g for g in range(len(self.ev)) if self.ev[g]["ts"] < mo[0]),
                                                default=-1)
            opened = [seq[0][1] for seq, end in self.open
                      if seq[-1][1] <= last and end > mo and seq[0][1] > dropped]
            while held:
                first = min(held, key=lambda seq: [q for _, q in seq])
                if opened and min(opened) < first[0][1]:
                    break
                held.remove(first)
                out.append((self.at(mo), first))
                positions = [q for _, q in first]
                if kind == "skip_to_next":
                    dropped = max(dropped, positions[0])
                elif kind == "skip_past_last_event":
                    dropped = max(dropped, positions[-1])
                else:
                    marks = [q for s, q in first if self.names[s] == name]
                    if marks:
                        dropped = max(dropped, (marks[0] if kind == "skip_to_first" else marks[-1]) - 1)
                held = [seq for seq in held if seq[0][1] > dropped]
                opened = [o for o in opened if o > dropped]
        return out

    def at(self, mo: tuple[int, int, int]) -> int:
        return mo[0] if mo[1] == 1 else mo[0] - 1


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
    # Flink's greedy: the stage after a greedy one can neither take nor skip an event the greedy stage could take
    "greedy_optional": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).one_or_more().optional()
                          .greedy().followed_by("c").where(v_in(2)),
    "greedy_overlap": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1, 2)).one_or_more().optional()
                         .greedy().followed_by("c").where(v_in(2, 3)),
    "greedy_times": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).times(1, 3).greedy()
                       .followed_by("c").where(v_in(1, 2)),
    # a negation after a looping stage holds during the loop
    "loop_not_followed_by": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).one_or_more()
                               .not_followed_by("n").where(v_in(3)).followed_by("c").where(v_in(2)),
    "loop_not_next": cep.begin("a").where(v_in(0)).followed_by_any("b").where(v_in(1)).one_or_more()
                        .not_next("n").where(v_in(3)).followed_by("c").where(v_in(2)),
    "times_not_followed_by": cep.begin("a").where(v_in(0)).followed_by_any("b").where(v_in(1, 2)).times(2)
                                .not_followed_by("n").where(v_in(3)).followed_by("c").where(v_in(2)),
    "negation_before_optional": cep.begin("a").where(v_in(0)).not_followed_by("n").where(v_in(3))
                                   .followed_by_any("b").where(v_in(1)).optional().followed_by("c").where(v_in(2)),
    "within_previous": cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1, 2)).times_or_more(2, within=4)
                          .next("c").where(v_in(2, 3)).within(5, since="previous"),
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
    """Greedy consecutive ``b+`` then ``next c`` over b1 b2 b3 c: which matches each strategy keeps."""
    events = [{"id": i, "k": 0, "v": v, "ts": i} for i, v in enumerate([1, 1, 1, 2])]

    def found(skip: cep.SkipStrategy) -> list[tuple[int, ...]]:
        pattern = (cep.begin("b", skip=skip).where(v_in(1)).one_or_more().consecutive().greedy()
                   .next("c").where(v_in(2)))
        got, _ = run(pattern, events)
        return sorted(dict(m[1])["b"] for m, _ in got.elements())

    assert found(cep.no_skip()) == [(0, 1, 2), (1, 2), (2,)]
    assert found(cep.skip_to_next()) == [(0, 1, 2), (1, 2), (2,)]
    assert found(cep.skip_past_last_event()) == [(0, 1, 2)]
    assert found(cep.skip_to_first("b")) == [(0, 1, 2), (1, 2), (2,)]
    assert found(cep.skip_to_last("b")) == [(0, 1, 2), (2,)]


def test_a_match_waits_for_the_partial_matches_that_started_before_it() -> None:
    """With a skip strategy, matches come out in order of their first events: a1 b1 is
    complete first but waits for a0's partial match, and a0's match then discards it."""
    w = [1, 2, 0, 2, 1]
    events = [{"id": i, "k": 0, "v": v, "w": w[i], "ts": i} for i, v in enumerate([0, 0, 3, 1, 1])]

    def pattern(skip: cep.SkipStrategy) -> Pattern:
        return (cep.begin("a", skip=skip).where(v_in(0)).followed_by("b")
                .where(lambda e, m: e["v"] == 1 and e["w"] == m["a"][0]["w"]))

    for skip, want in [(cep.no_skip(), [((0,), 4), ((1,), 3)]), (cep.skip_to_next(), [((0,), 4), ((1,), 4)]),
                       (cep.skip_past_last_event(), [((0,), 4)])]:
        got, _ = run(pattern(skip), events)
        assert sorted((dict(m[1])["a"], at) for m, at in got.elements()) == want, skip
        assert got == expected(pattern(skip), events)[0]


# -- timeouts --------------------------------------------------------------------------------

TIMED = ["within", "not_followed_by_last", "loop_within", "within_previous"]


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
    timeouts = pattern.timed
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


SNAPSHOT_PATTERNS = {
    "greedy": PATTERNS["greedy"],
    "held_back": cep.begin("a", skip=cep.skip_past_last_event()).where(v_in(0, 1)).followed_by_any("b")
                    .where(v_in(1, 2)).one_or_more().followed_by("c").where(v_in(2, 3)).within(12),
    "group_until": cep.begin("a").where(v_in(0)).followed_by(cep.begin("x").where(v_in(1)).followed_by("y")
                                                              .where(v_in(2))).one_or_more().until(v_in(3)),
    "within_previous": PATTERNS["within_previous"],
}


@pytest.mark.parametrize("name", list(SNAPSHOT_PATTERNS))
def test_the_engine_state_survives_a_snapshot_and_restore(name: str) -> None:
    import pickle

    from millstream._cep._nfa import Engine, KeyState

    pattern = SNAPSHOT_PATTERNS[name]
    events = sorted(random_events(random.Random(3), 60, keys=1), key=lambda e: e["ts"])
    engine = Engine(pattern, timeouts=True)

    def feed(ks: KeyState, evs: list[Event], out: list[Any]) -> None:
        for e in evs:
            engine.on_event(ks, 0, e, e["ts"], lambda kind, m, at: out.append((kind, ids(m.to_dict()), at)))

    whole: list[Any] = []
    feed(KeyState(), events, whole)
    half: list[Any] = []
    ks = KeyState()
    feed(ks, events[:30], half)
    ks = pickle.loads(pickle.dumps(ks))
    feed(ks, events[30:], half)
    assert half == whole and whole


# -- new in the pattern API: until, groups, within since the previous event, order_by, names ---


def test_until_stops_a_loop_and_the_stopping_event_may_start_the_next_stage() -> None:
    events = [{"id": i, "k": 0, "v": v, "ts": i} for i, v in enumerate([0, 1, 1, 3, 1, 2])]
    pattern = (cep.begin("a").where(v_in(0)).followed_by("b").where(v_in(1)).one_or_more().until(v_in(3))
               .followed_by("c").where(v_in(2, 3)))
    got, _ = run(pattern, events)
    assert sorted(dict(m[1])["b"] + dict(m[1])["c"] for m, _ in got.elements()) == [(1, 2, 3), (1, 3)]


def test_a_group_is_quantified_as_a_whole_and_its_stages_are_the_match_s() -> None:
    events = [{"id": i, "k": 0, "v": v, "ts": i} for i, v in enumerate([0, 1, 2, 1, 2, 3])]
    pair = cep.begin("x").where(v_in(1)).next("y").where(v_in(2))
    pattern = cep.begin("a").where(v_in(0)).followed_by(pair).one_or_more().consecutive().followed_by("z") \
        .where(v_in(3))
    assert pattern.names == ("a", "x", "y", "z")
    got, _ = run(pattern, events)
    assert sorted(m for m, _ in got.elements()) == [
        (0, (("a", (0,)), ("x", (1,)), ("y", (2,)), ("z", (5,)))),
        (0, (("a", (0,)), ("x", (1, 3)), ("y", (2, 4)), ("z", (5,))))]


def test_within_since_the_previous_event_bounds_the_gap_before_a_stage_s_event() -> None:
    pattern = (cep.begin("a").where(v_in(0)).followed_by_any("b").where(v_in(1)).within(4, since="previous")
               .followed_by("c").where(v_in(2)).within(4, since="previous"))

    def events(c_at: int) -> list[Event]:
        return [{"id": i, "k": 0, "v": v, "ts": t} for i, (v, t) in enumerate([(0, 0), (1, 3), (2, c_at), (1, 9)])]

    got, tos = run(pattern, events(6), timeouts=True)
    assert sorted(m for m, _ in got.elements()) == [(0, (("a", (0,)), ("b", (1,)), ("c", (2,))))]
    assert ((0, (("a", (0,)), ("b", ()), ("c", ()))), 3) in tos  # no second b within 4 of a: deadline 4
    got, tos = run(pattern, events(7), timeouts=True)
    assert got == Counter()
    assert ((0, (("a", (0,)), ("b", (1,)), ("c", ()))), 6) in tos  # c came 4 after b: deadline 7
    got, _ = run(pattern.within(7), events(6))
    assert len(got) == 1
    got, _ = run(pattern.within(7).within(9), events(6))  # the smaller first-event bound holds
    assert len(got) == 1
    got, _ = run(pattern.within(6), events(6))
    assert got == Counter()


def _by_n(a: Event, b: Event) -> int:
    return int(a["n"] - b["n"])


@pytest.mark.parametrize("seed", range(4))
def test_order_by_orders_events_with_equal_times_whatever_their_arrival(seed: int) -> None:
    rng = random.Random(seed)
    # runs of events at equal times; "n" numbers the events of a key in the order the user means
    events = [{"id": i, "k": i % 2, "n": i, "v": rng.randrange(3), "ts": i // 6} for i in range(36)]
    pattern = cep.begin("a").where(v_in(0)).next("b").where(v_in(1)).followed_by("c").where(v_in(2))
    want, _ = expected(pattern, events)  # the brute force takes equal times in list order, which is "n"
    shuffled = events[:]
    rng.shuffle(shuffled)
    shuffled.sort(key=lambda e: e["ts"])  # in time order, but any order within a time
    flow = ms.Flow("order-by")
    out = collect(stamped(flow, shuffled, chunk=rng.choice([None, 1, 5])).key_by("k")
                  .match(pattern, order_by=(lambda e: e["n"]) if seed % 2 else _by_n))  # a key or a comparator
    flow.run()
    assert Counter((ids(m), t) for m, t in out.items) == want and want


def test_stages_may_be_called_start_end_key_or_deadline() -> None:
    pattern = (cep.begin("start").where(v_in(0)).followed_by("key").where(v_in(1)).followed_by("end")
               .where(v_in(2)).followed_by("deadline").where(v_in(3)).within(50))
    events = [{"id": i, "k": 7, "v": v, "ts": 10 + i} for i, v in enumerate([0, 1, 2, 3, 0, 1])]
    flow = ms.Flow("names")
    found = stamped(flow, events).key_by("k").match(pattern, timeouts=True)
    out, meta, tos = collect(found), collect(stamped(flow, events, name="again").key_by("k").match(
        pattern, select=lambda m: (m.key, m.start, m.end, [e["id"] for e in m["end"]]))), collect(found.timeouts())
    flow.run()
    assert [{n: [e["id"] for e in m[n]] for n in m} for m in out.values] == [
        {"start": [0], "key": [1], "end": [2], "deadline": [3]}]
    assert meta.values == [(7, 10, 13, [2])]
    assert [{n: [e["id"] for e in m[n]] for n in ("start", "key")} for m in tos.values] == [{"start": [4], "key": [5]}]


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
    _raises(lambda: a.followed_by(cep.begin("b").followed_by("a")), "already has a stage named 'a'", "own name")
    _raises(lambda: a.where(42), "takes a function", "lambda tx")
    _raises(lambda: a.where(ms.col("v") > 1), "takes a function", "lambda tx")
    _raises(lambda: a.where(lambda x, y, z: True), "cannot take that", "one parameter")
    _raises(lambda: a.or_where(lambda e: True), "no condition yet", ".where(")
    _raises(lambda: a.times(0), "1 <= lo <= hi", "optional()")
    _raises(lambda: a.times(3, 2), "1 <= lo <= hi", "times(2, 4)")
    _raises(lambda: a.greedy(), "takes one event", "one_or_more()")
    _raises(lambda: a.not_next("n").one_or_more(), "a negation takes no events", "begin/next")
    _raises(lambda: a.next("b").optional().not_next("n"), "follows the optional stage", "two patterns")
    _raises(lambda: a.followed_by("b").until(lambda e: True), "not looping", "one_or_more().until")
    _raises(lambda: a.one_or_more().until(lambda e: True).until(lambda e: True), "already has", "combine")
    _raises(lambda: a.followed_by(cep.begin("b")).where(lambda e: True), "a group has no conditions", "inside")
    _raises(lambda: a.followed_by(cep.begin("b").within(5)), "its own within()", "outer pattern")
    _raises(lambda: a.not_next(cep.begin("b")), "cannot be a group", "not_next('cancel')")  # type: ignore[arg-type]
    _raises(lambda: a.within(5, since="last"), "since", "previous")
    _raises(lambda: a.within(0), "must be > 0", "timedelta")
    _raises(lambda: a.within("soon"), "within", "timedelta")
    _raises(lambda: cep.begin("a", skip="past"), "skip strategy", "skip_past_last_event")  # type: ignore[arg-type]


def test_bad_match_steps_fail_when_built() -> None:
    err = _raises(lambda: _stream().match("a then b"), "takes a pattern", "cep.begin")
    assert err.step == "match"
    _raises(lambda: _stream().match(cep.begin("a").not_followed_by("n")), "has no within()", ".within(")
    _raises(lambda: _stream().match(cep.begin("a", skip=cep.skip_to_last("zz"))), "names no stage", "'a'")
    _raises(lambda: _stream().match(cep.begin("a"), timeouts=True), "has none", "within(")
    _raises(lambda: _stream().match(cep.begin("a"), select=3), "select", "lambda m")
    _raises(lambda: _stream().match(cep.begin("a"), order_by=3), "order_by", "lambda e")
    err = _raises(lambda: _stream().match(cep.begin("a"), name="fraud").timeouts(), "timeouts=True", "timeouts=True")
    assert err.step == "fraud"
    flow = ms.Flow("untimed")
    _raises(lambda: flow.source(ms.testing.TestSource([1])).key_by(lambda x: x).match(cep.begin("a")),
            "needs event time", "watermark")
