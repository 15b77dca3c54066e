"""Delivery guarantees checked against the connectors when the flow is built: the error
names the weak link (step, the user's line) and says how to fix it."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import millstream as ms
from millstream._guarantee import GUARANTEES, check_guarantee, weak_links
from millstream.connectors import dead_letter, files, generator, memory, stdio
from millstream.errors import ConfigError, FlowDefinitionError, GuaranteeError
from millstream.testing import CollectSink, TestSource, TransactionalCollectSink

HAS_PYARROW = __import__("importlib").util.find_spec("pyarrow") is not None


def here() -> str:
    """``file:line`` of the caller, as the plan records the user's line."""
    import inspect

    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return f"{Path(__file__).name}:{frame.f_back.f_lineno}"


def build(source: ms.connectors.Source, sink: ms.connectors.Sink) -> tuple[ms.Flow, str, str]:
    """A flow ``source -> map -> sink``; returns it and the lines that added the source and the sink."""
    flow = ms.Flow("g")
    s = flow.source(source, name="src"); src_line = here()  # noqa: E702
    s.map(lambda r: r).sink(sink, name="out"); sink_line = here()  # noqa: E702
    return flow, src_line, sink_line


def stdin_source() -> ms.connectors.Source:
    return stdio.read(stream=io.BytesIO(b""))


REPLAYABLE: dict[str, Callable[[Path], ms.connectors.Source]] = {
    "memory": lambda d: memory.read([1]),
    "test source": lambda d: TestSource([1]),
    "files": lambda d: files.read(d / "in.jsonl"),
    "generator": lambda d: generator.read(lambda i: i, count=1),
    "nexmark": lambda d: ms.nexmark.read(),
}

EXACT_SINKS: dict[str, Callable[[Path], ms.connectors.Sink]] = {
    "transactional files": lambda d: files.write(d / "out", transactional=True),
    "upsert": lambda d: memory.upsert("k"),
    "transactional collect": lambda d: TransactionalCollectSink(),
}

PLAIN_SINKS: dict[str, Callable[[Path], ms.connectors.Sink]] = {
    "file": lambda d: files.write(d / "out.jsonl"),
    "collect": lambda d: CollectSink(),
    "stdout": lambda d: stdio.write(stream=io.StringIO()),
}


def test_the_guarantees() -> None:
    assert GUARANTEES == ("none", "at-most-once", "at-least-once", "exactly-once")


def test_an_unknown_guarantee_lists_the_valid_ones() -> None:
    flow, _, _ = build(memory.read([1]), CollectSink())
    with pytest.raises(ConfigError, match="'none', 'at-most-once', 'at-least-once', 'exactly-once', not 'exactly'"):
        check_guarantee(flow.plan(), "exactly")


def test_guarantee_error_is_a_flow_definition_error() -> None:
    assert issubclass(GuaranteeError, FlowDefinitionError)
    assert issubclass(GuaranteeError, ValueError)


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("source", sorted(REPLAYABLE))
@pytest.mark.parametrize("sink", sorted(EXACT_SINKS))
def test_replayable_sources_and_exact_sinks_give_every_guarantee(
        tmp_path: Path, guarantee: str, source: str, sink: str) -> None:
    flow, _, _ = build(REPLAYABLE[source](tmp_path), EXACT_SINKS[sink](tmp_path))
    check_guarantee(flow.plan(), guarantee)


@pytest.mark.parametrize("source", sorted(REPLAYABLE))
def test_replayable_sources_say_so(tmp_path: Path, source: str) -> None:
    assert REPLAYABLE[source](tmp_path).replayable
    assert not stdin_source().replayable


@pytest.mark.parametrize("guarantee", ["none", "at-most-once"])
@pytest.mark.parametrize("sink", sorted(PLAIN_SINKS))
def test_at_most_once_takes_any_source_and_any_sink(tmp_path: Path, guarantee: str, sink: str) -> None:
    flow, _, _ = build(stdin_source(), PLAIN_SINKS[sink](tmp_path))
    check_guarantee(flow.plan(), guarantee)


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_a_source_that_cannot_replay_is_the_weak_link(tmp_path: Path, guarantee: str) -> None:
    flow, src_line, _ = build(stdin_source(), EXACT_SINKS["transactional files"](tmp_path))
    with pytest.raises(GuaranteeError) as info:
        check_guarantee(flow.plan(), guarantee)
    err = info.value
    assert err.step == "src"
    assert err.location is not None and err.location.endswith(src_line)
    assert f"{guarantee} needs sources that can replay" in err.problem and "standard input" in err.problem
    assert err.fix is not None and "replayable source (files, memory, generator, nexmark" in err.fix
    assert "at-most-once" in err.fix
    assert str(err).startswith(f"step 'src' at {err.location}: ")
    assert "\n  fix: " in str(err)


@pytest.mark.parametrize("sink", sorted(PLAIN_SINKS))
def test_at_least_once_takes_sinks_that_may_repeat(tmp_path: Path, sink: str) -> None:
    flow, _, _ = build(memory.read([1]), PLAIN_SINKS[sink](tmp_path))
    check_guarantee(flow.plan(), "at-least-once")


@pytest.mark.parametrize("sink", sorted(PLAIN_SINKS))
def test_exactly_once_rejects_a_sink_that_would_repeat(tmp_path: Path, sink: str) -> None:
    connector = PLAIN_SINKS[sink](tmp_path)
    flow, _, sink_line = build(memory.read([1]), connector)
    with pytest.raises(GuaranteeError) as info:
        check_guarantee(flow.plan(), "exactly-once")
    err = info.value
    assert err.step == "out"
    assert err.location is not None and err.location.endswith(sink_line)
    assert connector.describe() in err.problem and "delivery 'none'" in err.problem
    assert err.fix is not None and "files.write(dir, transactional=True)" in err.fix
    assert "memory.upsert(key=...)" in err.fix and "at-least-once" in err.fix


@pytest.mark.parametrize("guarantee", ["at-most-once", "at-least-once"])
@pytest.mark.skipif(not HAS_PYARROW, reason="needs pyarrow")
def test_a_plain_parquet_file_cannot_survive_a_restart(tmp_path: Path, guarantee: str) -> None:
    flow, _, sink_line = build(memory.read([1]), files.write(tmp_path / "out.parquet"))
    with pytest.raises(GuaranteeError, match="can go on after a restart") as info:
        check_guarantee(flow.plan(), guarantee)
    assert info.value.location is not None and info.value.location.endswith(sink_line)
    assert info.value.fix is not None and "transactional=True" in info.value.fix
    check_guarantee(flow.plan(), "none")
    ok, _, _ = build(memory.read([1]), files.write(tmp_path / "out.parquet", transactional=True))
    check_guarantee(ok.plan(), "exactly-once")


def test_a_dead_letter_sink_is_checked_too(tmp_path: Path) -> None:
    flow, src_line, _ = build(memory.read([1], on_error=dead_letter(files.write(tmp_path / "bad.jsonl"))),
                              files.write(tmp_path / "out", transactional=True))
    check_guarantee(flow.plan(), "at-least-once")
    with pytest.raises(GuaranteeError) as info:
        check_guarantee(flow.plan(), "exactly-once")
    err = info.value
    assert err.step == "src.dead-letter"
    assert err.location is not None and err.location.endswith(src_line)
    assert "bad.jsonl" in err.problem
    ok, _, _ = build(memory.read([1], on_error=dead_letter(files.write(tmp_path / "bad", transactional=True))),
                     files.write(tmp_path / "out", transactional=True))
    check_guarantee(ok.plan(), "exactly-once")


def test_every_weak_link_is_counted_and_the_first_named() -> None:
    flow = ms.Flow("many")
    a = flow.source(stdin_source(), name="a")
    b = flow.source(memory.read([1]), name="b")
    a.union(b).sink(CollectSink(), name="c1")
    b.sink(CollectSink(), name="c2")
    links = weak_links(flow.plan(), "exactly-once")
    assert [w.step for w in links] == ["a", "c1", "c2"]
    with pytest.raises(GuaranteeError, match=r"2 more weak links: 'c1' at \S+:\d+, 'c2' at ") as info:
        check_guarantee(flow.plan(), "exactly-once")
    assert info.value.step == "a"
    assert [w.step for w in weak_links(flow.plan(), "at-least-once")] == ["a"]
    assert weak_links(flow.plan(), "at-most-once") == []


def test_two_weak_links() -> None:
    flow = ms.Flow("two")
    s = flow.source(memory.read([1]), name="m")
    s.sink(CollectSink(), name="c1")
    s.sink(CollectSink(), name="c2")
    with pytest.raises(GuaranteeError, match=re.escape("; another weak link: 'c2' at ")) as info:
        check_guarantee(flow.plan(), "exactly-once")
    assert info.value.step == "c1"


def test_exactly_once_refuses_a_redelivery_source_that_cannot_drop_redeliveries(tmp_path: Path) -> None:
    from millstream.connectors import Source, SourceReader
    from millstream.errors import GuaranteeError

    class Queue(Source):
        replay = "redelivery"

        @property
        def replays_exactly(self) -> bool:
            return False

        def open(self, ctx: object) -> SourceReader:  # type: ignore[override]
            raise AssertionError("not run")

        def describe(self) -> str:
            return "queue without message ids"

    flow = ms.Flow("q")
    flow.source(Queue()).sink(ms.testing.TransactionalCollectSink())
    with pytest.raises(GuaranteeError, match="cannot tell a redelivered record from a new one") as err:
        flow.run(guarantee="exactly-once", checkpoint_dir=tmp_path / "ck")
    assert "dedup_by" in str(err.value)
    # at-least-once allows duplicates: the same source is fine there (the check passes while building)
    from millstream._guarantee import weak_links

    assert weak_links(flow.plan(), "at-least-once") == []
