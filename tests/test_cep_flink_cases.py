"""Flink CEP's published test cases (pattern, input, expected matches), in millstream's API.

Each case names the Flink test it comes from (``flink-libraries/flink-cep``,
``org.apache.flink.cep.nfa.*ITCase``). Flink's tests feed an NFA directly, one event after
another; here every case runs as a flow (a test source with a watermark, ``key_by``,
``match``) in every execution mode, each event at its own event time in input order, or
at the time the Flink test gives it where ``within`` makes time matter. Matches are compared
as multisets of event sequences, as Flink's ``comparePatterns`` does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import millstream as ms
from millstream import cep
from millstream.testing import CollectSink, TestSource

pytestmark = pytest.mark.usefixtures("exec_mode")

Event = dict[str, Any]


def ev(label: str, price: float = 0.0, name: str | None = None) -> Event:
    """A Flink test ``Event``: its name is the label without the trailing digits (``a1`` is an ``a``)."""
    return {"label": label, "name": name if name is not None else label.rstrip("0123456789"), "price": price}


def named(n: str) -> Callable[[Event], bool]:
    return lambda e: e["name"] == n


def has(n: str) -> Callable[[Event], bool]:
    return lambda e: n in e["name"]


def run(pattern: cep.Pattern, events: list[Event], times: list[int] | None = None) -> Counter[tuple[str, ...]]:
    stamped = [{**e, "k": 0, "ts": i if times is None else times[i]} for i, e in enumerate(events)]
    flow = ms.Flow("flink-case")
    out = CollectSink()
    (flow.source(TestSource(stamped), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
         .key_by("k").match(pattern, select=lambda m: tuple(e["label"] for e in m.events())).sink(out))
    flow.run()
    return Counter(out.values)


def want(*matches: str) -> Counter[tuple[str, ...]]:
    return Counter(tuple(m.split()) for m in matches)


Case = Callable[[], tuple[Counter[tuple[str, ...]], Counter[tuple[str, ...]]]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


# -- NFAITCase ----------------------------------------------------------------------------

ABCDE = [ev("a"), ev("b"), ev("c"), ev("d"), ev("e")]


@case
def no_condition_nfa() -> Any:
    return run(cep.begin("start").followed_by("end"), ABCDE), want("a b", "b c", "c d", "d e")


@case
def any_with_no_condition_nfa() -> Any:
    return run(cep.begin("start").followed_by_any("end"), ABCDE), want(
        "a b", "a c", "a d", "a e", "b c", "b d", "b e", "c d", "c e", "d e")


@case
def simple_pattern_nfa() -> Any:
    p = (cep.begin("start").where(named("start")).followed_by("middle").where(lambda e: e.get("volume", 0) > 5.0)
         .followed_by("end").where(named("end")))
    events = [ev("s1", name="start"), ev("x1", name="foobar"), {**ev("x2", name="barfoo"), "volume": 5.0},
              {**ev("m", name="foo"), "volume": 10.0}, ev("s2", name="start"), ev("e", name="end")]
    return run(p, events), want("s1 m e")


@case
def strict_continuity_with_results() -> Any:
    p = cep.begin("middle").where(named("a")).next("end").where(named("b"))
    return run(p, [ev("a"), ev("b")]), want("a b")


@case
def strict_continuity_no_results() -> Any:
    p = cep.begin("middle").where(named("a")).next("end").where(named("b"))
    return run(p, [ev("a"), ev("c"), ev("b")]), want()


@case
def simple_pattern_with_time_window_nfa() -> Any:
    p = (cep.begin("start").where(named("start")).followed_by("middle").where(named("middle"))
         .followed_by("end").where(named("end")).within(10))
    events = [ev("s1", name="start"), ev("s2", name="start"), ev("m", name="middle"), ev("x", name="foobar"),
              ev("e1", name="end"), ev("e2", name="end")]
    return run(p, events, times=[1, 2, 3, 4, 11, 13]), want("s2 m e1")


@case
def branching_pattern() -> Any:
    p = (cep.begin("start").where(named("start")).followed_by_any("middle-first").where(lambda e: e["volume"] > 5.0)
         .followed_by_any("middle-second").where(named("next-one")).followed_by_any("end").where(named("end")))
    events = [{**ev("s", name="start"), "volume": 0.0}, {**ev("m1", name="foo1"), "volume": 10.0},
              {**ev("m2", name="foo2"), "volume": 10.0}, {**ev("m3", name="foo3"), "volume": 10.0},
              {**ev("n1", name="next-one"), "volume": 2.0}, {**ev("n2", name="next-one"), "volume": 2.0},
              {**ev("e", name="end"), "volume": 0.0}]
    return run(p, events), want("s m1 n1 e", "s m2 n1 e", "s m3 n1 e", "s m1 n2 e", "s m2 n2 e", "s m3 n2 e")


@case
def eager_zero_or_more_same_element() -> Any:
    p = (cep.begin("start").where(named("c")).followed_by("middle").where(named("a")).one_or_more().optional()
         .followed_by("end1").where(named("b")))
    events = [ev("c"), ev("a1"), ev("a1'", name="a"), ev("a1\"", name="a"), ev("a2"), ev("d"), ev("a3"),
              ev("a3'", name="a"), ev("b")]
    return run(p, events), want(
        "c a1 a1' a1\" a2 a3 a3' b", "c a1 a1' a1\" a2 a3 b", "c a1 a1' a1\" a2 b", "c a1 a1' a1\" b",
        "c a1 a1' b", "c a1 b", "c b")


@case
def multiple_takes_version_collision() -> Any:
    p = (cep.begin("start").where(named("c")).followed_by("middle1").where(named("a")).one_or_more()
         .allow_combinations().followed_by("middle2").where(named("a")).one_or_more().allow_combinations()
         .followed_by("end").where(named("b")))
    events = [ev("c"), ev("m1", name="a"), ev("m2", name="a"), ev("m3", name="a"), ev("m4", name="a"),
              ev("m5", name="a"), ev("b")]
    return run(p, events), want(
        *["c m1 m2 m3 m4 m5 b"] * 4,
        "c m1 m2 m3 m4 b", "c m1 m2 m4 m5 b", "c m1 m2 m3 m4 b", "c m1 m2 m3 m5 b", "c m1 m3 m4 m5 b",
        "c m1 m3 m4 m5 b", "c m1 m2 m3 m4 b", "c m1 m2 m3 m5 b", "c m1 m2 m4 m5 b",
        "c m1 m2 m3 b", "c m1 m3 m4 b", "c m1 m4 m5 b", "c m1 m2 m3 b", "c m1 m2 m4 b", "c m1 m2 m5 b",
        "c m1 m2 b")


@case
def zero_or_more_same_element() -> Any:
    p = (cep.begin("start").where(named("c")).followed_by_any("middle").where(named("a")).one_or_more().optional()
         .allow_combinations().followed_by_any("end1").where(named("b")))
    events = [ev("c"), ev("a1"), ev("a1'", name="a"), ev("a2"), ev("d"), ev("a3"), ev("a3'", name="a"), ev("b")]
    return run(p, events), want(
        "c a1 a1' a2 a3 a3' b",
        "c a1 a1' a2 a3 b", "c a1 a1' a2 a3' b", "c a1 a1' a3 a3' b", "c a1 a2 a3 a3' b", "c a1' a2 a3 a3' b",
        "c a1 a1' a2 b", "c a1 a1' a3 b", "c a1 a1' a3' b", "c a1 a2 a3 b", "c a1 a2 a3' b", "c a1 a3 a3' b",
        "c a2 a3 a3' b", "c a1' a2 a3 b", "c a1' a2 a3' b", "c a1' a3 a3' b",
        "c a1 a1' b", "c a1 a2 b", "c a1 a3 b", "c a1 a3' b", "c a1' a2 b", "c a1' a3 b", "c a1' a3' b",
        "c a2 a3 b", "c a2 a3' b", "c a3 a3' b",
        "c a1 b", "c a1' b", "c a2 b", "c a3 b", "c a3' b", "c b")


@case
def simple_pattern_with_same_element() -> Any:
    p = (cep.begin("start").where(named("c")).followed_by_any("middle").where(named("a"))
         .followed_by("end1").where(named("b")))
    return run(p, [ev("c"), ev("a1"), ev("a1'", name="a"), ev("b")]), want("c a1 b", "c a1' b")


@case
def end_with_looping_with_same_element() -> Any:
    p = cep.begin("start").where(named("c")).followed_by_any("middle").where(named("a")).one_or_more().optional()
    events = [ev("c"), ev("a1"), ev("a1'", name="a"), ev("a1\"", name="a"), ev("b")]
    return run(p, events), want("c", "c a1", "c a1'", "c a1\"", "c a1 a1'", "c a1' a1\"", "c a1 a1' a1\"")


@case
def repeating_pattern_with_same_element() -> Any:
    p = (cep.begin("start").where(named("c")).followed_by("middle1").where(named("a")).one_or_more().optional()
         .followed_by("middle2").where(named("b")).optional().followed_by("end").where(named("a")))
    events = [ev("c"), ev("a1"), ev("a1'", name="a"), ev("a2"), ev("d"), ev("b"), ev("a3")]
    return run(p, events), want(
        "c a1", "c a1 a1'", "c b a3", "c a1 a1' a2", "c a1 b a3", "c a1 a1' a2 a3", "c a1 a1' b a3",
        "c a1 a1' a2 b a3")


# -- IterativeConditionsITCase -------------------------------------------------------------

S1, S2, S3, S4 = (ev(f"s{i}", float(i), "start") for i in range(1, 5))
M1, M2, M3, M4 = ({**ev(n, p, f"foo{n[1]}"), "volume": 10.0} for n, p in [("m1", 1.0), ("m2", 2.0), ("m3", 3.0),
                                                                             ("m4", 1.0)])
NEXT_ONE, END = ev("n", 1.0, "next-one"), ev("e", 1.0, "end")


def _foo_sum_below_5(e: Event, m: Any) -> bool:
    return str(e["name"]).startswith("foo") and sum(x["price"] for x in m["middle"]) + e["price"] < 5.0


def _iterative_branching(eager: bool) -> Any:
    p = cep.begin("start").where(named("start")).followed_by("middle").where(_foo_sum_below_5).one_or_more()
    p = (p if eager else p.allow_combinations()).followed_by("end").where(named("end"))
    return run(p, [S1, M1, M2, S2, M3, M4, NEXT_ONE, END])


@case
def iterative_with_branching_pattern_eager() -> Any:
    return _iterative_branching(True), want("s1 m1 m2 m4 e", "s1 m1 m2 e", "s1 m1 e", "s2 m3 m4 e", "s2 m3 e")


@case
def iterative_with_branching_pattern_combinations() -> Any:
    return _iterative_branching(False), want("s1 m1 m2 m4 e", "s1 m1 m2 e", "s1 m1 m3 e", "s2 m3 m4 e",
                                             "s1 m1 m4 e", "s1 m1 e", "s2 m3 e")


def _start_sum_below_5(e: Event, m: Any) -> bool:
    return e["name"] == "start" and sum(x["price"] for x in m["start"]) + e["price"] < 5.0


def _iterative_looping_start(eager: bool) -> Any:
    p = cep.begin("start").where(_start_sum_below_5).one_or_more()
    p = (p.optional() if eager else p.allow_combinations().optional()).followed_by("end").where(named("end"))
    return run(p, [S1, S2, S3, END])


@case
def iterative_with_looping_starting_eager() -> Any:
    return _iterative_looping_start(True), want("s1 s2 e", "s1 e", "s2 e", "s3 e", "e")


@case
def iterative_with_looping_starting_combination() -> Any:
    return _iterative_looping_start(False), want("s1 s2 e", "s1 s3 e", "s1 e", "s2 e", "s3 e", "e")


def _end_after_starts_of_2(e: Event, m: Any) -> bool:
    return e["name"] == "end" and sum(x["price"] for x in m["start"]) >= 2.0


@case
def iterative_with_prev_pattern_dependency() -> Any:
    p = cep.begin("start").where(named("start")).one_or_more().followed_by("end").where(_end_after_starts_of_2)
    return run(p, [S1, S2, END]), want("s1 s2 e", "s2 e")


@case
def iterative_with_abac_pattern() -> Any:
    p = (cep.begin("start").where(named("start")).followed_by_any("middle1").where(lambda e: "volume" in e)
         .followed_by("middle2").where(lambda e, m: e["name"] == "start"
                                       and sum(x["price"] for x in m["middle2"]) + e["price"] <= 5.0)
         .one_or_more().followed_by("end").where(named("end")))
    return run(p, [S1, M1, S2, S3, M2, S4, M3, M4, END]), want(
        "s1 m1 s2 s3 e", "s1 m1 s2 e", "s1 m2 s4 e", "s2 m2 s4 e", "s3 m2 s4 e")  # Flink lists them sorted


@case
def iterative_with_prev_pattern_dependency_after_branching() -> Any:
    p = (cep.begin("start").where(named("start")).one_or_more().followed_by_any("middle1")
         .where(lambda e: "volume" in e).followed_by_any("end").where(_end_after_starts_of_2))
    return run(p, [S1, S2, M1, S3, M2, END]), want(
        "s1 s2 m1 e", "s2 m1 e", "s1 s2 m2 e", "s1 s2 s3 m2 e", "s2 s3 m2 e", "s2 m2 e", "s3 m2 e")


# -- NotPatternITCase ----------------------------------------------------------------------


@case
def not_next() -> Any:
    p = (cep.begin("start").where(named("a")).not_next("notPattern").where(named("b"))
         .followed_by_any("middle").where(named("c")).followed_by("end").where(named("d")))
    return run(p, [ev("a1"), ev("c1"), ev("b1"), ev("c2"), ev("d")]), want("a1 c1 d", "a1 c2 d")


@case
def not_next_no_matches() -> Any:
    p = (cep.begin("start").where(named("a")).not_next("notPattern").where(named("b"))
         .followed_by("middle").where(named("c")).followed_by("end").where(named("d")))
    return run(p, [ev("a1"), ev("b1"), ev("c1"), ev("c2"), ev("d")]), want()


@case
def not_next_no_matches_at_the_end() -> Any:
    p = (cep.begin("start").where(named("a")).followed_by_any("middle").where(named("c"))
         .followed_by_any("end").where(named("d")).not_next("notPattern").where(named("b")))
    return run(p, [ev("a1"), ev("c1"), ev("c2"), ev("d"), ev("b1")]), want()


@case
def not_followed_by() -> Any:
    p = (cep.begin("start").where(named("a")).not_followed_by("notPattern").where(named("b"))
         .followed_by_any("middle").where(named("c")).followed_by("end").where(named("d")))
    return run(p, [ev("a1"), ev("c1"), ev("b1"), ev("c2"), ev("d")]), want("a1 c1 d")


@case
def not_followed_by_before_optional() -> Any:
    p = (cep.begin("start").where(named("a")).not_followed_by("notPattern").where(named("b"))
         .followed_by_any("middle").where(named("c")).optional().followed_by("end").where(named("d")))
    return run(p, [ev("a1"), ev("c1"), ev("b1"), ev("c2"), ev("d")]), want("a1 c1 d")


@case
def times_with_not_followed_by() -> Any:
    p = (cep.begin("start").where(named("a")).followed_by_any("middle").where(named("b")).times(2)
         .not_followed_by("notPattern").where(named("c")).followed_by("end").where(named("d")))
    return run(p, [ev("a1"), ev("b1"), ev("c"), ev("b2"), ev("d")]), want()


@case
def ignore_state_of_times_with_not_followed_by() -> Any:
    p = (cep.begin("start").where(named("a")).not_followed_by("notPattern").where(named("b"))
         .followed_by_any("middle").where(named("c")).times(2).optional().followed_by("end").where(named("d")))
    return run(p, [ev("a1"), ev("d1"), ev("e"), ev("b1"), ev("c1"), ev("c2"), ev("d2")]), want("a1 d1")


@case
def times_with_not_followed_by_after() -> Any:
    p = (cep.begin("start").where(named("a")).followed_by_any("middle").where(named("b")).times(2)
         .not_followed_by("notPattern").where(named("c")).followed_by("end").where(named("d")))
    return run(p, [ev("a1"), ev("d1"), ev("e"), ev("b1"), ev("b2"), ev("c1"), ev("d2")]), want()


@case
def not_followed_by_before_optional_at_the_end() -> Any:
    p = (cep.begin("start").where(named("a")).not_followed_by("notPattern").where(named("b"))
         .followed_by_any("end").where(named("c")).optional())
    return run(p, [ev("a1"), ev("c1"), ev("b1"), ev("c2")]), want("a1 c1", "a1")


@case
def not_followed_by_before_optional_times() -> Any:
    p = (cep.begin("start").where(named("a")).not_followed_by("notPattern").where(named("b"))
         .followed_by_any("middle").where(named("c")).times(2).optional().followed_by("end").where(named("d")))
    return run(p, [ev("a1"), ev("c1"), ev("b1"), ev("c2"), ev("d")]), want("a1 c1 c2 d")


@case
def not_followed_by_with_branching_at_start() -> Any:
    p = (cep.begin("start").where(named("a")).not_followed_by("notPattern").where(named("b"))
         .followed_by("middle").where(named("c")).followed_by("end").where(named("d")))
    return run(p, [ev("a1"), ev("b1"), ev("c1"), ev("a2"), ev("c2"), ev("d")]), want("a2 c2 d")


NOT_DATA = {n: ev(n) for n in ["a1", "b1", "b2", "b3", "c1", "b4", "b5", "b6", "d1"]}


def _not_next_after_one_or_more(any_: bool) -> Any:
    p = cep.begin("a").where(named("a"))
    p = p.followed_by_any("b*") if any_ else p.followed_by("b*")
    p = (p.where(named("b")).one_or_more().not_next("not c").where(named("c")).followed_by("d").where(named("d")))
    return run(p, [NOT_DATA[n] for n in ["a1", "b1", "c1", "b2", "d1"]])


@case
def not_next_after_one_or_more_skip_till_next() -> Any:
    return _not_next_after_one_or_more(False), want()


@case
def not_next_after_one_or_more_skip_till_any() -> Any:
    return _not_next_after_one_or_more(True), want("a1 b2 d1")


def _not_followed_by_after_one_or_more(eager: bool, any_: bool) -> Any:
    p = cep.begin("a").where(named("a"))
    p = (p.followed_by_any("b*") if any_ else p.followed_by("b*")).where(named("b")).one_or_more()
    p = p if eager else p.allow_combinations()
    p = p.not_followed_by("not c").where(named("c")).followed_by("d").where(named("d"))
    return run(p, [NOT_DATA[n] for n in ["a1", "b1", "b2", "b3", "c1", "b4", "b5", "b6", "d1"]])


@case
def not_followed_by_next_after_one_or_more_eager() -> Any:
    return _not_followed_by_after_one_or_more(True, False), want()


@case
def not_followed_by_any_after_one_or_more_eager() -> Any:
    return _not_followed_by_after_one_or_more(True, True), want(
        "a1 b4 b5 b6 d1", "a1 b4 b5 d1", "a1 b4 d1", "a1 b5 b6 d1", "a1 b5 d1", "a1 b6 d1")


@case
def not_followed_by_next_after_one_or_more_combinations() -> Any:
    return _not_followed_by_after_one_or_more(False, False), want()


@case
def not_followed_by_any_after_one_or_more_combinations() -> Any:
    return _not_followed_by_after_one_or_more(False, True), want(
        "a1 b4 b5 b6 d1", "a1 b4 b5 d1", "a1 b4 b6 d1", "a1 b4 d1", "a1 b5 b6 d1", "a1 b5 d1", "a1 b6 d1")


def _not_followed_by_before(eager: bool, any_: bool, optional: bool) -> Any:
    p = cep.begin("a").where(named("a")).not_followed_by("not c").where(named("c"))
    p = (p.followed_by_any("b*") if any_ else p.followed_by("b*")).where(named("b")).one_or_more()
    p = p.optional() if optional else p
    p = (p if eager else p.allow_combinations()).followed_by("d").where(named("d"))
    return run(p, [NOT_DATA[n] for n in ["a1", "b1", "c1", "b4", "b5", "b6", "d1"]])


EAGER_BEFORE = ("a1 b1 b4 b5 b6 d1", "a1 b1 b4 b5 d1", "a1 b1 b4 d1", "a1 b1 d1")
COMBINATIONS_BEFORE = ("a1 b1 b4 b5 b6 d1", "a1 b1 b4 b6 d1", "a1 b1 b4 b5 d1", "a1 b1 b4 d1",
                       "a1 b1 b5 b6 d1", "a1 b1 b5 d1", "a1 b1 b6 d1", "a1 b1 d1")


@case
def not_followed_by_any_before_one_or_more_eager() -> Any:
    return _not_followed_by_before(True, True, False), want(*EAGER_BEFORE)


@case
def not_followed_by_any_before_one_or_more_combinations() -> Any:
    return _not_followed_by_before(False, True, False), want(*COMBINATIONS_BEFORE)


@case
def not_followed_by_before_one_or_more_eager() -> Any:
    return _not_followed_by_before(True, False, False), want(*EAGER_BEFORE)


@case
def not_followed_by_before_one_or_more_combinations() -> Any:
    return _not_followed_by_before(False, False, False), want(*COMBINATIONS_BEFORE)


@case
def not_followed_by_before_zero_or_more_eager_skip_till_next() -> Any:
    return _not_followed_by_before(True, False, True), want(*EAGER_BEFORE)


@case
def not_followed_by_before_zero_or_more_combinations_skip_till_next() -> Any:
    return _not_followed_by_before(False, False, True), want(*COMBINATIONS_BEFORE)


@case
def not_followed_by_before_zero_or_more_eager_skip_till_any() -> Any:
    return _not_followed_by_before(True, True, True), want(*EAGER_BEFORE)


@case
def not_followed_by_before_zero_or_more_combinations_skip_till_any() -> Any:
    return _not_followed_by_before(False, True, True), want(*COMBINATIONS_BEFORE)


def _not_followed_by_within_at_end(since: str) -> Any:
    p = cep.begin("a").where(named("a")).not_followed_by("b").where(named("b")).within(3, since=since)
    events = [ev("a1"), ev("b1"), ev("a2"), ev("c"), ev("b2"), ev("a3"), ev("b3")]
    return run(p, events, times=[1, 2, 4, 5, 10, 11, 13])


@case
def not_followed_by_within_first_and_last_at_end() -> Any:
    return _not_followed_by_within_at_end("first"), want("a2")


@case
def not_followed_by_within_previous_and_current_at_end() -> Any:
    return _not_followed_by_within_at_end("previous"), want("a2")


@case
def not_follow_by_before_times_within() -> Any:
    p = (cep.begin("a").where(named("a")).not_followed_by("b").where(named("b"))
         .followed_by("c").where(named("c")).times(0, 2).within(3))
    events = [ev("a1"), ev("b1"), ev("a2"), ev("c1"), ev("c2"), ev("a3"), ev("c3"), ev("c4")]
    return run(p, events, times=[1, 2, 10, 11, 12, 20, 21, 24]), want("a1", "a2", "a2 c1", "a2 c1 c2", "a3", "a3 c3")


@case
def not_followed_by_within_at_end_after_match() -> Any:
    p = (cep.begin("a", skip=cep.skip_past_last_event()).where(named("a")).one_or_more().allow_combinations()
         .followed_by("c").where(named("c")).not_followed_by("b").where(named("b")).within(5))
    events = [ev("a1"), ev("a2"), ev("a3"), ev("c1"), ev("c2")]
    return run(p, events, times=[1, 2, 3, 4, 10]), want("a1 a2 a3 c1")


# -- GreedyITCase --------------------------------------------------------------------------


def _c_a_d(quantify: Callable[[cep.Pattern], cep.Pattern], events: list[Event]) -> Any:
    p = quantify(cep.begin("start").where(named("c")).followed_by("middle").where(named("a")))
    return run(p.followed_by("end").where(named("d")), events)


C_AAA_D = [ev("c"), ev("a1"), ev("a2"), ev("a3"), ev("d")]
C_DUMMIES = [ev("c"), ev("x1", name="dummy"), ev("a1"), ev("x2", name="dummy"), ev("a2"), ev("x3", name="dummy"),
             ev("a3"), ev("d")]


@case
def greedy_zero_or_more() -> Any:
    return _c_a_d(lambda p: p.one_or_more().optional().greedy(), C_AAA_D), want("c a1 a2 a3 d")


@case
def greedy_zero_or_more_in_between() -> Any:
    return _c_a_d(lambda p: p.one_or_more().optional().greedy(), C_DUMMIES), want("c a1 a2 a3 d")


@case
def greedy_zero_or_more_with_dummy_events_after_quantifier() -> Any:
    events = [ev("c"), ev("a1"), ev("a2"), ev("x", name="dummy"), ev("d")]
    return _c_a_d(lambda p: p.one_or_more().optional().greedy(), events), want("c a1 a2 d")


@case
def greedy_zero_or_more_with_dummy_events_before_quantifier() -> Any:
    events = [ev("c"), ev("x", name="dummy"), ev("d")]
    return _c_a_d(lambda p: p.one_or_more().optional().greedy(), events), want("c d")


def _price_above_3(e: Event) -> bool:
    return bool(e["price"] > 3.0)


@case
def greedy_until_zero_or_more_with_dummy_events_after_quantifier() -> Any:
    events = [ev("c", 1.0), ev("a1", 2.0), ev("a2", 3.0), ev("a3", 3.0), ev("a4", 4.0), ev("d", 3.0)]
    return (_c_a_d(lambda p: p.one_or_more().optional().greedy().until(_price_above_3), events),
            want("c a1 a2 a3 d"))


@case
def greedy_until_with_dummy_events_before_quantifier() -> Any:
    events = [ev("c", 1.0), ev("a0", 4.0), ev("a1", 2.0), ev("a2", 3.0), ev("a3", 3.0), ev("d", 3.0)]
    return _c_a_d(lambda p: p.one_or_more().optional().greedy().until(_price_above_3), events), want("c d")


@case
def greedy_one_or_more() -> Any:
    return _c_a_d(lambda p: p.one_or_more().greedy(), C_AAA_D), want("c a1 a2 a3 d")


@case
def greedy_one_or_more_in_between() -> Any:
    return _c_a_d(lambda p: p.one_or_more().greedy(), C_DUMMIES), want("c a1 a2 a3 d")


@case
def greedy_one_or_more_with_dummy_events_after_quantifier() -> Any:
    events = [ev("c"), ev("a1"), ev("a2"), ev("x", name="dummy"), ev("d")]
    return _c_a_d(lambda p: p.one_or_more().greedy(), events), want("c a1 a2 d")


@case
def greedy_one_or_more_with_dummy_events_before_quantifier() -> Any:
    events = [ev("c"), ev("x", name="dummy"), ev("d")]
    return _c_a_d(lambda p: p.one_or_more().greedy(), events), want()


@case
def greedy_until_one_or_more_with_dummy_events_after_quantifier() -> Any:
    events = [ev("c", 1.0), ev("a1", 2.0), ev("a2", 3.0), ev("a3", 3.0), ev("a4", 4.0), ev("d", 3.0)]
    return _c_a_d(lambda p: p.one_or_more().greedy().until(_price_above_3), events), want("c a1 a2 a3 d")


@case
def greedy_until_one_or_more_with_dummy_events_before_quantifier() -> Any:
    events = [ev("c", 1.0), ev("a0", 4.0), ev("a1", 2.0), ev("a2", 3.0), ev("a3", 3.0), ev("d", 3.0)]
    return _c_a_d(lambda p: p.one_or_more().greedy().until(_price_above_3), events), want()


@case
def greedy_zero_or_more_before_group_pattern() -> Any:
    group = cep.begin("middle1").where(named("d")).followed_by("middle2").where(named("e"))
    p = (cep.begin("start").where(named("c")).followed_by("middle").where(named("a")).one_or_more().optional()
         .greedy().followed_by(group).times(2).followed_by("end").where(named("f")))
    events = [ev("c"), ev("a1"), ev("a2"), ev("x", name="dummy"), ev("a3"), ev("d1"), ev("e1"), ev("d2"), ev("e2"),
              ev("f")]
    return run(p, events), want("c a1 a2 a3 d1 e1 d2 e2 f")


@case
def end_with_zero_or_more_greedy() -> Any:
    p = cep.begin("start").where(named("c")).followed_by("end").where(named("a")).one_or_more().optional().greedy()
    events = [ev("c"), ev("a1"), ev("a2"), ev("x", name="dummy"), ev("a3")]
    return run(p, events), want("c", "c a1", "c a1 a2", "c a1 a2 a3")


@case
def end_with_zero_or_more_consecutive_greedy() -> Any:
    p = (cep.begin("start").where(named("c")).followed_by("end").where(named("a")).one_or_more().optional()
         .consecutive().greedy())
    events = [ev("c"), ev("a1"), ev("a2"), ev("x", name="dummy"), ev("a3")]
    return run(p, events), want("c", "c a1", "c a1 a2")


@case
def end_with_greedy_times_range() -> Any:
    p = cep.begin("start").where(named("c")).followed_by("end").where(named("a")).times(2, 5).greedy()
    events = [ev("c"), ev("a1"), ev("a2"), ev("a3"), ev("a4"), ev("x", name="dummy")]
    return run(p, events), want("c a1 a2", "c a1 a2 a3", "c a1 a2 a3 a4")


@case
def greedy_times_range() -> Any:
    events = [ev("c"), ev("a1"), ev("a2"), ev("a3"), ev("a4"), ev("d")]
    return _c_a_d(lambda p: p.times(2, 5).greedy(), events), want("c a1 a2 a3 a4 d")


# -- TimesOrMoreITCase (each case with no bound and with 3 ms between a loop's events) -------

CONSECUTIVE = [ev("c"), ev("f1", name="f"), ev("m1", name="a"), ev("f2", name="f"), ev("m2", name="a"),
               ev("m3", name="a"), ev("end", name="b")]
CONSECUTIVE_TIMES = [1, 2, 3, 4, 5, 6, 7]


def _c_a2_b(within: int | None, any_: bool, quantify: Callable[[cep.Pattern], cep.Pattern],
            events: list[Event], times: list[int]) -> Any:
    p = cep.begin("start").where(named("c"))
    p = (p.followed_by_any("middle") if any_ else p.followed_by("middle")).where(named("a")).times_or_more(
        2, within=within)
    return run(quantify(p).followed_by("end1").where(named("b")), events, times=times)


@case
def times_or_more() -> Any:
    events = [ev("c"), ev("m1", name="a"), ev("m2", name="a"), ev("m3", name="a"), ev("end", name="b")]
    expected = want("c m1 m2 m3 end", "c m1 m2 end", "c m1 m3 end")
    got = [_c_a2_b(w, False, lambda p: p.allow_combinations(), events, [1, 2, 3, 4, 6]) for w in (None, 3)]
    return Counter(got[0]) + Counter(got[1]), expected + expected


@case
def times_or_more_non_strict() -> Any:
    no_bound = _c_a2_b(None, True, lambda p: p.allow_combinations(), CONSECUTIVE, CONSECUTIVE_TIMES)
    bound = _c_a2_b(3, True, lambda p: p.allow_combinations(), CONSECUTIVE, CONSECUTIVE_TIMES)
    return (no_bound, bound), (want("c m1 m2 m3 end", "c m1 m2 end", "c m1 m3 end", "c m2 m3 end"),
                               want("c m1 m2 m3 end", "c m1 m2 end"))


@case
def times_or_more_strict_optional() -> Any:
    got = [_c_a2_b(w, True, lambda p: p.consecutive().optional(), CONSECUTIVE, CONSECUTIVE_TIMES) for w in (None, 3)]
    return got, [want("c m2 m3 end", "c end")] * 2


@case
def times_or_more_non_strict_optional() -> Any:
    events = [ev("c"), ev("f1", name="f"), ev("end", name="b")]
    got = [_c_a2_b(w, False, lambda p: p.optional(), events, [1, 2, 7]) for w in (None, 3)]
    return got, [want("c end")] * 2


# -- TimesRangeITCase ---------------------------------------------------------------------


def _c_range_b(how: str, quantify: Callable[[cep.Pattern], cep.Pattern], events: list[Event],
               times: list[int]) -> Any:
    p = cep.begin("start").where(named("c"))
    p = {"next": p.next, "followed_by": p.followed_by, "followed_by_any": p.followed_by_any}[how]("middle")
    return run(quantify(p.where(named("a"))).followed_by("end1").where(named("b")), events, times=times)


C_AAA_B = [ev("c"), ev("m1", name="a"), ev("m2", name="a"), ev("m3", name="a"), ev("end", name="b")]


@case
def times_range() -> Any:
    return (_c_range_b("next", lambda p: p.times(1, 3).allow_combinations(), C_AAA_B, [1, 2, 3, 4, 6]),
            want("c m1 m2 m3 end", "c m1 m2 end", "c m1 m3 end", "c m1 end"))


@case
def times_range_from_zero() -> Any:
    return (_c_range_b("next", lambda p: p.times(0, 2).allow_combinations(), C_AAA_B, [1, 2, 3, 4, 6]),
            want("c m1 m2 end", "c m1 m3 end", "c m1 end", "c end"))


@case
def times_range_non_strict() -> Any:
    return (_c_range_b("followed_by_any", lambda p: p.times(1, 3).allow_combinations(), CONSECUTIVE,
                       CONSECUTIVE_TIMES),
            want("c m1 m2 m3 end", "c m1 m2 end", "c m1 m3 end", "c m2 m3 end", "c m1 end", "c m2 end", "c m3 end"))


@case
def times_range_strict() -> Any:
    return (_c_range_b("followed_by_any", lambda p: p.times(0, 3).consecutive(), CONSECUTIVE, CONSECUTIVE_TIMES),
            want("c m2 m3 end", "c m1 end", "c m2 end", "c m3 end", "c end"))


@case
def times_range_strict_optional() -> Any:
    return (_c_range_b("followed_by_any", lambda p: p.times(1, 3).consecutive().optional(), CONSECUTIVE,
                       CONSECUTIVE_TIMES),
            want("c m2 m3 end", "c m1 end", "c m2 end", "c m3 end", "c end"))


@case
def times_range_strict_optional_1() -> Any:
    return (_c_range_b("next", lambda p: p.times(1, 3).consecutive().optional(), C_AAA_B, [1, 3, 5, 6, 7]),
            want("c m1 m2 m3 end", "c m1 m2 end", "c m1 end", "c end"))


@case
def times_range_non_strict_optional_1() -> Any:
    return (_c_range_b("followed_by", lambda p: p.times(1, 3).optional(), [ev("c"), ev("f", name="f"),
                       ev("end", name="b")], [1, 2, 7]), want("c end"))


# -- UntilConditionITCase ------------------------------------------------------------------


def _price_is_5(e: Event) -> bool:
    return bool(e["price"] == 5.0)


def _until(quantify: Callable[[cep.Pattern], cep.Pattern], events: list[Event], any_: bool = False,
           end: bool = True) -> Any:
    p = cep.begin("start").where(named("c"))
    p = quantify((p.followed_by_any("middle") if any_ else p.followed_by("middle")).where(named("a")))
    return run(p.followed_by("end").where(_price_is_5) if end else p, events)


UNTIL_EVENTS = [ev("c", 1.0), ev("a1", 2.0), ev("a2", 3.0), ev("brk", 5.0, "a"), ev("ign", 6.0, "a")]
UNTIL_EVENTS_3 = [ev("c", 1.0), ev("a1", 2.0), ev("a2", 3.0), ev("a3", 4.0), ev("brk", 5.0, "a"), ev("ign", 6.0, "a")]


@case
def until_condition_followed_by_one_or_more() -> Any:
    return _until(lambda p: p.one_or_more().until(_price_is_5), UNTIL_EVENTS), want("c a1 a2 brk", "c a1 brk")


@case
def until_condition_followed_by_one_or_more_combinations() -> Any:
    return (_until(lambda p: p.one_or_more().allow_combinations().until(_price_is_5), UNTIL_EVENTS_3),
            want("c a1 a2 a3 brk", "c a1 a2 brk", "c a1 a3 brk", "c a1 brk"))


@case
def until_condition_followed_by_one_or_more_consecutive() -> Any:
    return (_until(lambda p: p.one_or_more().consecutive().until(_price_is_5), UNTIL_EVENTS),
            want("c a1 a2 brk", "c a1 brk"))


@case
def until_condition_followed_by_zero_or_more() -> Any:
    return (_until(lambda p: p.one_or_more().optional().until(_price_is_5), UNTIL_EVENTS),
            want("c a1 a2 brk", "c a1 brk", "c brk"))


@case
def until_condition_followed_by_zero_or_more_combinations() -> Any:
    return (_until(lambda p: p.one_or_more().optional().allow_combinations().until(_price_is_5), UNTIL_EVENTS_3),
            want("c a1 a2 a3 brk", "c a1 a2 brk", "c a1 a3 brk", "c a1 brk", "c brk"))


@case
def until_condition_followed_by_zero_or_more_consecutive() -> Any:
    return (_until(lambda p: p.one_or_more().optional().consecutive().until(_price_is_5), UNTIL_EVENTS),
            want("c a1 a2 brk", "c a1 brk", "c brk"))


UNTIL_ANY_EVENTS = [ev("c", 1.0), ev("a1", 2.0), ev("a2", 3.0), ev("brk", 5.0, "a"), ev("a3", 6.0)]


@case
def until_condition_followed_by_any_one_or_more() -> Any:
    return (_until(lambda p: p.one_or_more().until(_price_is_5), UNTIL_ANY_EVENTS, any_=True, end=False),
            want("c a1 a2", "c a1", "c a2", "c a3"))


@case
def until_condition_followed_by_any_zero_or_more() -> Any:
    return (_until(lambda p: p.one_or_more().optional().until(_price_is_5), UNTIL_ANY_EVENTS, any_=True, end=False),
            want("c a1 a2", "c a1", "c a2", "c a3", "c"))


UNTIL_EMPTY_WHERE = [ev("c", 1.0), ev("a1", 2.0), ev("a2", 3.0), ev("d", 1.0), ev("brk", 5.0, "a"), ev("ign", 6.0, "a")]


@case
def until_condition_with_empty_where() -> Any:
    p = cep.begin("start").where(named("c")).followed_by("middle").one_or_more().until(_price_is_5)
    return run(p, UNTIL_EMPTY_WHERE), want("c a1 a2 d", "c a1 a2", "c a1")


def _middle_sum_is_6(e: Event, m: Any) -> bool:
    return sum(x["price"] for x in m["middle"]) == 6.0


@case
def iterative_until_condition_one_or_more() -> Any:
    p = cep.begin("start").where(named("c")).followed_by("middle").one_or_more().until(_middle_sum_is_6)
    return run(p, UNTIL_EMPTY_WHERE), want("c a1 a2 d", "c a1 a2", "c a1")


@case
def iterative_until_condition_zero_or_more() -> Any:
    p = cep.begin("start").where(named("c")).followed_by("middle").one_or_more().optional().until(_middle_sum_is_6)
    return run(p, UNTIL_EMPTY_WHERE), want("c a1 a2 d", "c a1 a2", "c a1", "c")


# -- GroupITCase ---------------------------------------------------------------------------


def _ab() -> cep.Pattern:
    return cep.begin("middle1").where(named("a")).followed_by("middle2").where(named("b"))


def _c_group_d(quantify: Callable[[cep.Pattern], cep.Pattern], events: list[Event]) -> Any:
    p = quantify(cep.begin("start").where(named("c")).followed_by(_ab()))
    return run(p.followed_by("end").where(named("d")), events)


C_ABAB_D = [ev("c"), ev("a1"), ev("b1"), ev("a2"), ev("b2"), ev("d")]


@case
def group_followed_by_times() -> Any:
    return _c_group_d(lambda p: p.times(2), C_ABAB_D), want("c a1 b1 a2 b2 d")


@case
def group_followed_by_optional() -> Any:
    events = [ev("c"), ev("a1"), ev("a2"), ev("b"), ev("d")]
    return _c_group_d(lambda p: p.optional(), events), want("c d", "c a1 b d")


@case
def followed_by_group_times_optional() -> Any:
    return _c_group_d(lambda p: p.times(2).optional(), [ev("c"), ev("a"), ev("d")]), want("c d")


@case
def group_followed_by_one_or_more() -> Any:
    return _c_group_d(lambda p: p.one_or_more(), C_ABAB_D), want("c a1 b1 d", "c a1 b1 a2 b2 d")


@case
def group_followed_by_zero_or_more() -> Any:
    return _c_group_d(lambda p: p.one_or_more().optional(), C_ABAB_D), want("c d", "c a1 b1 d", "c a1 b1 a2 b2 d")


C_ABABAB_D = [ev("c"), ev("a1"), ev("b1"), ev("a2"), ev("b2"), ev("a3"), ev("b3"), ev("d")]


def _c_any_group_d(quantify: Callable[[cep.Pattern], cep.Pattern]) -> Any:
    p = quantify(cep.begin("start").where(named("c")).followed_by_any(_ab()))
    return run(p.followed_by("end").where(named("d")), C_ABABAB_D)


@case
def group_followed_by_any_times_combinations() -> Any:
    return (_c_any_group_d(lambda p: p.times(2).allow_combinations()),
            want("c a1 b1 a2 b2 d", "c a1 b1 a3 b3 d", "c a2 b2 a3 b3 d"))


@case
def group_followed_by_any_times_optional() -> Any:
    return _c_any_group_d(lambda p: p.times(2).optional()), want("c d", "c a1 b1 a2 b2 d", "c a2 b2 a3 b3 d")


@case
def group_followed_by_any_one_or_more() -> Any:
    return _c_any_group_d(lambda p: p.one_or_more()), want(
        "c a1 b1 d", "c a2 b2 d", "c a3 b3 d", "c a1 b1 a2 b2 d", "c a2 b2 a3 b3 d", "c a1 b1 a2 b2 a3 b3 d")


@case
def group_next_zero_or_more() -> Any:
    p = (cep.begin("start").where(named("c")).next(_ab()).one_or_more().optional().consecutive()
         .followed_by("end").where(named("d")))
    return run(p, C_ABABAB_D), want("c d", "c a1 b1 d", "c a1 b1 a2 b2 d", "c a1 b1 a2 b2 a3 b3 d")


GROUP_NEG_EVENTS = [ev("c"), ev("a1"), ev("b1"), ev("d"), ev("a2"), ev("b2"), ev("e")]


@case
def group_not_followed_by() -> Any:
    p = (cep.begin("start").where(named("c")).followed_by_any(_ab()).not_followed_by("notPattern").where(named("d"))
         .followed_by("end").where(named("e")))
    return run(p, GROUP_NEG_EVENTS), want("c a2 b2 e")


@case
def group_not_next() -> Any:
    p = (cep.begin("start").where(named("c")).followed_by_any(_ab()).not_next("notPattern").where(named("d"))
         .followed_by("end").where(named("e")))
    return run(p, GROUP_NEG_EVENTS), want("c a2 b2 e")


def _bc() -> cep.Pattern:
    return cep.begin("middle2").where(named("b")).followed_by("middle3").where(named("c"))


@case
def group_nest() -> Any:
    inner = cep.begin("middle1").where(named("a")).followed_by(_bc()).one_or_more().optional()
    p = cep.begin("start").where(named("d")).followed_by(inner).optional().followed_by("end").where(named("e"))
    events = [ev("d"), ev("a1"), ev("b1"), ev("c1"), ev("b2"), ev("c2"), ev("e")]
    return run(p, events), want("d e", "d a1 e", "d a1 b1 c1 e", "d a1 b1 c1 b2 c2 e")


NEST_TIMES = ["d", "a1", "b1", "c1", "b2", "c2", "b3", "c3", "a2", "b4", "c4", "b5", "c5", "b6", "c6", "e"]


@case
def group_nest_times() -> Any:
    inner = cep.begin("middle1").where(named("a")).followed_by(_bc()).times(3)
    p = cep.begin("start").where(named("d")).followed_by_any(inner).times(0, 2).followed_by("end").where(named("e"))
    return run(p, [ev(n) for n in NEST_TIMES]), want(
        "d e", "d a1 b1 c1 b2 c2 b3 c3 e", "d a2 b4 c4 b5 c5 b6 c6 e",
        "d a1 b1 c1 b2 c2 b3 c3 a2 b4 c4 b5 c5 b6 c6 e")


@case
def group_nest_times_consecutive() -> Any:
    inner = cep.begin("middle1").where(named("a")).followed_by(_bc()).times(3).consecutive()
    p = (cep.begin("start").where(named("d")).followed_by_any(inner).times(0, 2).consecutive()
         .followed_by("end").where(named("e")))
    names = [*NEST_TIMES[:11], "breaking", *NEST_TIMES[11:]]
    return run(p, [ev(n) for n in names]), want("d e", "d a1 b1 c1 b2 c2 b3 c3 e")


@case
def group_begin() -> Any:
    p = cep.begin(_ab()).times(1, 2).followed_by("end").where(named("d"))
    events = [ev("a1"), ev("b1"), ev("a2"), ev("b2"), ev("d")]
    return run(p, events), want("a1 b1 d", "a2 b2 d", "a1 b1 a2 b2 d")


@case
def group_followed_by_one_or_more_with_until_condition() -> Any:
    return _c_group_d(lambda p: p.one_or_more().until(named("d")), C_ABAB_D), want("c a1 b1 d", "c a1 b1 a2 b2 d")


@case
def group_starts_with_optional_pattern() -> Any:
    group = cep.begin("middle1").where(named("b")).optional().next("middle2").where(named("c"))
    p = cep.begin("start").where(named("a")).next(group).next("d").where(named("d"))
    return run(p, [ev("a"), ev("c"), ev("d")]), want("a c d")


@case
def followed_by_optional_group_pattern() -> Any:
    group = cep.begin("middle1").where(named("b")).next("middle2").where(named("c"))
    p = cep.begin("start").where(named("a")).followed_by(group).optional().next("d").where(named("d"))
    return run(p, [ev("a"), ev("d1"), ev("d2")]), want("a d1")


# -- AfterMatchSkipITCase ------------------------------------------------------------------


A6 = [ev(f"a{i}") for i in range(1, 7)]


@case
def no_skip() -> Any:
    p = cep.begin("start", skip=cep.no_skip()).where(named("a")).times(3)
    return run(p, A6), want("a1 a2 a3", "a2 a3 a4", "a3 a4 a5", "a4 a5 a6")


@case
def skip_past_last() -> Any:
    p = cep.begin("start", skip=cep.skip_past_last_event()).where(named("a")).times(3)
    return run(p, A6), want("a1 a2 a3", "a4 a5 a6")


def _two_followed_by_any(skip: cep.SkipStrategy) -> Any:
    p = cep.begin("start", skip=skip).where(named("a")).followed_by_any("end").where(named("b"))
    return run(p, [ev("a1"), ev("b1"), ev("a2"), ev("b2")])


@case
def no_skip_with_followed_by_any() -> Any:
    return _two_followed_by_any(cep.no_skip()), want("a1 b1", "a1 b2", "a2 b2")


@case
def skip_to_next_with_followed_by_any() -> Any:
    return _two_followed_by_any(cep.skip_to_next()), want("a1 b1", "a2 b2")


def _quantifier_at_end(skip: cep.SkipStrategy) -> Any:
    p = cep.begin("start", skip=skip).where(named("a")).next("end").where(named("b")).one_or_more()
    return run(p, [ev("a1"), ev("b1"), ev("b2"), ev("b3")])


@case
def no_skip_with_quantifier_at_the_end() -> Any:
    return _quantifier_at_end(cep.no_skip()), want("a1 b1 b2 b3", "a1 b1 b2", "a1 b1")


@case
def skip_to_next_with_quantifier_at_the_end() -> Any:
    return _quantifier_at_end(cep.skip_to_next()), want("a1 b1")


def _ab_times(skip: cep.SkipStrategy, n: int) -> Any:
    p = (cep.begin("start", skip=skip).where(has("a")).times(2).next("end").where(has("b")).times(2))
    return run(p, [ev(f"ab{i}", name="ab") for i in range(1, n + 1)])


@case
def skip_to_first() -> Any:
    return _ab_times(cep.skip_to_first("end"), 6), want("ab1 ab2 ab3 ab4", "ab3 ab4 ab5 ab6")


@case
def skip_to_last() -> Any:
    return _ab_times(cep.skip_to_last("end"), 7), want("ab1 ab2 ab3 ab4", "ab4 ab5 ab6 ab7")


@case
def skip_past_last_2() -> Any:
    p = (cep.begin("a", skip=cep.skip_past_last_event()).where(has("a")).followed_by_any("b").where(has("b"))
         .followed_by_any("c").where(has("c")).followed_by("d").where(has("d")))
    events = [ev(n, name=n) for n in ["a1", "a2", "b1", "b2", "c1", "c2", "d1", "d2"]]
    return run(p, events), want("a1 b1 c1 d1")


@case
def skip_past_last_3() -> Any:
    p = cep.begin("a", skip=cep.skip_past_last_event()).where(has("a")).next("b").where(has("b"))
    return run(p, [ev(n, name=n) for n in ["a1", "c", "a2", "b2"]]), want("a2 b2")


@case
def skip_to_first_with_optional_match() -> Any:
    p = (cep.begin("x", skip=cep.skip_to_first("b")).where(has("x")).one_or_more().optional()
         .next("b").where(has("b")).next("c").where(has("c")))
    return run(p, [ev(n, name=n) for n in ["ab1", "c1", "ab2", "c2"]]), want("ab1 c1", "ab2 c2")


@case
def skip_to_first_at_start_position() -> Any:
    p = cep.begin("b", skip=cep.skip_to_first("b")).where(has("b")).next("c").where(has("c"))
    return run(p, [ev(n, name=n) for n in ["ab1", "c1", "ab2", "c2"]]), want("ab1 c1", "ab2 c2")


def _a_then_consecutive_bs(skip: cep.SkipStrategy) -> Any:
    p = cep.begin("a", skip=skip).where(has("a")).next("b").where(has("b")).one_or_more().consecutive()
    return run(p, [ev(n, name=n) for n in ["a1", "b1", "a2", "b2", "b3", "a3", "b4"]])


@case
def skip_to_first_with_one_or_more() -> Any:
    return _a_then_consecutive_bs(cep.skip_to_first("b")), want("a1 b1", "a2 b2", "a3 b4")


@case
def skip_to_last_with_one_or_more() -> Any:
    return _a_then_consecutive_bs(cep.skip_to_last("b")), want("a1 b1", "a2 b2", "a3 b4")


def _missed_skip_to(skip: cep.SkipStrategy) -> Any:
    p = (cep.begin("a", skip=skip).where(has("a")).next("b").where(has("b")).one_or_more().optional().consecutive()
         .next("c").where(has("c")))
    return run(p, [ev("a"), ev("c")])


@case
def skip_to_first_non_existent_position_without_exception() -> Any:
    return _missed_skip_to(cep.skip_to_first("b")), want("a c")


@case
def skip_to_last_non_existent_position_without_exception() -> Any:
    return _missed_skip_to(cep.skip_to_last("b")), want("a c")


def _a_plus_then_b(skip: cep.SkipStrategy) -> Any:
    p = (cep.begin("a", skip=skip).where(has("a")).one_or_more().consecutive().greedy()
         .next("b").where(has("b")))
    return run(p, [ev(n, name=n) for n in ["a1", "a2", "a3", "b1"]])


@case
def skip_past_last_with_one_or_more_at_beginning() -> Any:
    return _a_plus_then_b(cep.skip_past_last_event()), want("a1 a2 a3 b1")


@case
def skip_to_last_with_one_or_more_at_beginning() -> Any:
    return _a_plus_then_b(cep.skip_to_last("a")), want("a1 a2 a3 b1", "a3 b1")


@case
def skip_to_first_with_one_or_more_at_beginning() -> Any:
    return _a_plus_then_b(cep.skip_to_first("a")), want("a1 a2 a3 b1", "a2 a3 b1", "a3 b1")


@case
def no_skip_with_one_or_more_at_beginning() -> Any:
    return _a_plus_then_b(cep.no_skip()), want("a1 a2 a3 b1", "a2 a3 b1", "a3 b1")


@case
def skip_to_first_discarding() -> Any:
    p = (cep.begin("a or c", skip=cep.skip_to_first("c*")).where(lambda e: "a" in e["name"] or "c" in e["name"])
         .followed_by("b or c").where(lambda e: "b" in e["name"] or "c" in e["name"])
         .followed_by("c*").where(has("c")).one_or_more().greedy()
         .followed_by("d").where(has("d")))
    events = [ev(n, name=n) for n in ["a", "b", "c1", "c2", "c3", "d"]]
    return run(p, events), want("a b c1 c2 c3 d", "c1 c2 c3 d")


@case
def skip_before_other_already_completed() -> Any:
    p = (cep.begin("a", skip=cep.skip_to_first("c")).where(has("a")).followed_by("c").where(has("c"))
         .followed_by("b").where(lambda e, m: "b" in e["name"] and m["a"][0]["price"] == e["price"]))
    events = [ev("a1", 0.0, "a1"), ev("c1", 0.0, "c1"), ev("a2", 1.0, "a2"), ev("c2", 0.0, "c2"),
              ev("b1", 1.0, "b1"), ev("b2", 0.0, "b2")]
    return run(p, events), want("a1 c1 b2", "a2 c2 b1")


@case
def shared_buffer_is_properly_cleared() -> Any:
    p = cep.begin("start", skip=cep.skip_past_last_event()).where(lambda e: True).times(2)
    return run(p, [ev(f"a{i}") for i in range(4)]), want("a0 a1", "a2 a3")


def test_simple_pattern_with_timeout_handling() -> None:
    """NFAITCase.testSimplePatternWithTimeoutHandling: the timed-out partial matches, each with
    its deadline (first event + within, as in Flink's current NFA)."""
    p = (cep.begin("start").where(named("start")).followed_by_any("middle").where(named("middle"))
         .followed_by_any("end").where(named("end")).within(10))
    events = [ev("s1", name="start"), ev("s2", name="start"), ev("m", name="middle"), ev("x", name="foobar"),
              ev("e1", name="end"), ev("e2", name="end")]
    stamped = [{**e, "k": 0, "ts": t} for e, t in zip(events, [1, 2, 3, 4, 11, 13], strict=True)]
    flow = ms.Flow("timeouts")
    found = (flow.source(TestSource(stamped), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
                 .key_by("k").match(p, timeouts=True))
    out, tos = CollectSink(), CollectSink()
    found.sink(out)
    found.timeouts().sink(tos)
    flow.run()
    assert [[e["label"] for e in m["start"] + m["middle"] + m["end"]] for m in out.values] == [["s2", "m", "e1"]]
    got = sorted((tuple(e["label"] for e in m["start"] + m["middle"]), m["deadline"]) for m in tos.values)
    assert got == [(("s1",), 11), (("s1", "m"), 11), (("s2",), 12), (("s2", "m"), 12)]


@pytest.mark.parametrize("name", list(CASES))
def test_flink_case(name: str) -> None:
    got, expected = CASES[name]()
    assert got == expected, f"{name}: got {got}, want {expected}"


def test_enough_cases_are_transcribed() -> None:
    assert len(CASES) >= 40
