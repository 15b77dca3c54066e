"""The stdio connector (stdin through a subprocess, stdout) and the generator connector."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import millstream as ms
from millstream.connectors import SourceContext, generator, stdio
from millstream.errors import ConfigError, RecordError, StepError
from millstream.testing import CollectSink, ManualClock

# every test runs in every execution mode (native, microbatch, batch): see conftest.exec_mode
pytestmark = pytest.mark.usefixtures("exec_mode")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_python(code: str, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], input=stdin, capture_output=True,
                          timeout=120, env=env, check=False)


def ctx_for(clock: Any = None, policy: Any = "fail") -> SourceContext:
    return SourceContext(step="src", clock=clock or ManualClock(), policy=policy)


# -- stdin -----------------------------------------------------------------------------------------

PIPE_FLOW = """
    import sys
    import millstream as ms
    flow = ms.Flow("pipe")
    (flow.source(ms.connectors.stdio.read(on_error=sys.argv[1] if len(sys.argv) > 1 else "fail"))
         .map(lambda r: {"id": r["id"], "double": r["v"] * 2})
         .sink(ms.connectors.stdio.write()))
    result = flow.run()
    print(result.total("skipped"), file=sys.stderr)
"""


def test_stdin_to_stdout_through_a_subprocess() -> None:
    lines = b"".join(json.dumps({"id": i, "v": i}).encode() + b"\n" for i in range(5000))
    r = run_python(PIPE_FLOW, lines + b'\n{"id": 5000, "v": 1}')  # a blank line; no final newline
    assert r.returncode == 0, r.stderr.decode()
    out = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert out == [{"id": i, "double": 2 * i} for i in range(5000)] + [{"id": 5000, "double": 2}]


def test_stdin_bad_line_fails_with_its_position() -> None:
    r = run_python(PIPE_FLOW, b'{"id": 1, "v": 1}\n{"id": 2, "v": 2}\nnot json\n')
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "RecordError" in err and "stdin:3" in err


@pytest.mark.native_only("asserts the exact stderr, which in columnar modes carries a PerformanceWarning")
def test_stdin_bad_line_skipped_is_counted() -> None:
    r = run_python(PIPE_FLOW, b'{"id": 1, "v": 1}\n[]\n{"id": 3, "v": 3}\n', "skip")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines() == ['{"id":1,"double":2}', '{"id":3,"double":6}']
    assert r.stderr.decode().strip() == "1"


def test_stdin_lines_format_and_repr_output() -> None:
    code = """
        import millstream as ms
        flow = ms.Flow("lines")
        flow.source(ms.connectors.stdio.read(format="lines")).map(str.upper).sink(ms.connectors.stdio.write(format="repr"))
        flow.run()
    """
    r = run_python(code, "ab\r\n\ncé".encode())
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines() == ["'AB'", "''", "'CÉ'"]


def test_stdin_reader_never_blocks_the_flow() -> None:
    rfd, wfd = os.pipe()
    with os.fdopen(rfd, "rb") as rstream, os.fdopen(wfd, "wb", buffering=0) as wstream:
        reader = stdio.read(stream=rstream).open(ctx_for())
        t0 = time.monotonic()
        assert reader.poll(10) == []  # nothing written yet: returns at once
        assert time.monotonic() - t0 < 0.5
        wstream.write(b'{"a": 1}\n{"a": 2}\n{"a"')
        got: list[Any] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += reader.poll(10) or []
        assert got == [{"a": 1}, {"a": 2}]
        assert reader.position_of(1) == "stdin:2"
        wstream.write(b': 3}\n')
        wstream.close()
        rest: list[Any] = []
        while (chunk := reader.poll(10)) is not None:
            rest += chunk
        assert rest == [{"a": 3}]
        reader.close()


def test_stdin_bounded_queue_limits_what_is_buffered() -> None:
    data = b"".join(b'{"i": %d}\n' % i for i in range(200_000))
    src = stdio.read(stream=io.BytesIO(data))
    reader = src.open(ctx_for())
    time.sleep(0.2)
    assert reader.q.qsize() <= src.queue_chunks  # type: ignore[attr-defined]
    n = 0
    while (chunk := reader.poll(4096)) is not None:
        n += len(chunk)
    assert n == 200_000


def test_stdin_replaced_by_text_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("text"))
    with pytest.raises(ConfigError, match="not a binary stream"):
        stdio.read().open(ctx_for())


def test_stdio_config_errors() -> None:
    with pytest.raises(ConfigError, match="format must be one of"):
        stdio.read(format="csv")
    with pytest.raises(ConfigError, match="format must be one of"):
        stdio.write(format="xml")


# -- stdout --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "expected"), [
    ("jsonl", '{"a":1,"when":"2026-01-01"}\n"x"\n'),
    ("repr", "{'a': 1, 'when': '2026-01-01'}\n'x'\n"),
    ("lines", "{'a': 1, 'when': '2026-01-01'}\nx\n"),
])
def test_stdout_formats(fmt: str, expected: str) -> None:
    buf = io.StringIO()
    flow = ms.Flow("out")
    flow.source(ms.connectors.memory.read([{"a": 1, "when": "2026-01-01"}, "x"])).sink(stdio.write(format=fmt,
                                                                                                 stream=buf))
    flow.run()
    assert buf.getvalue() == expected


def test_stdout_default_is_sys_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    print("before")
    flow = ms.Flow("out")
    flow.source(ms.connectors.memory.read([{"b": [1, 2]}])).sink(stdio.write())
    flow.run()
    assert capsys.readouterr().out == 'before\n{"b":[1,2]}\n'


# -- generator -----------------------------------------------------------------------------------


def test_generator_count() -> None:
    flow = ms.Flow("gen")
    out = CollectSink()
    src = generator.read(lambda i: {"i": i}, count=10_000)
    assert src.bounded and src.replayable
    flow.source(src).sink(out)
    result = flow.run()
    assert out.values == [{"i": i} for i in range(10_000)]
    assert result.records_read == 10_000
    empty = CollectSink()
    flow = ms.Flow("none")
    flow.source(generator.read(lambda i: i, count=0)).sink(empty)
    flow.run()
    assert empty.values == []


def test_generator_rate_with_a_manual_clock_is_exact() -> None:
    clock = ManualClock(start_ms=5_000)
    out = CollectSink()
    flow = ms.Flow("rate")
    flow.source(generator.read(lambda i: {"i": i, "at": clock.now_ms()}, count=25, rate=10)).sink(out)
    flow.run(clock=clock)
    assert [r["at"] for r in out.values] == [5_000 + 100 * i for i in range(25)]
    assert clock.now_ms() == 5_000 + 2_400


def test_generator_rate_reader_hints_and_burst() -> None:
    clock = ManualClock()
    reader = generator.read(lambda i: i, rate=4).open(ctx_for(clock))
    assert reader.poll(100) == [0]
    assert reader.poll(100) == []
    assert reader.wait_hint() == 0.25
    clock.advance(100)
    assert reader.wait_hint() == 0.15
    clock.advance(150)
    assert reader.wait_hint() == 0.0
    assert reader.poll(100) == [1]
    clock.advance(60_000)  # a long stall: at most one second's worth comes at once
    assert reader.poll(100) == [2, 3, 4, 5]
    assert reader.poll(100) == []
    assert reader.position_of(0) is not None


def test_generator_fractional_rate_and_batch() -> None:
    clock = ManualClock()
    reader = generator.read(lambda i: i, rate=0.5, count=3).open(ctx_for(clock))
    assert reader.poll(10) == [0]
    assert reader.wait_hint() == 2.0
    clock.advance(2_000)
    assert reader.poll(10) == [1]
    clock.advance(2_000)
    assert reader.poll(10) == [2]
    assert reader.poll(10) is None
    assert reader.wait_hint() is None
    batched = generator.read(lambda i: i, count=10, batch=4).open(ctx_for())
    assert [batched.poll(100), batched.poll(3)] == [[0, 1, 2, 3], [4, 5, 6]]
    assert batched.position_of(2) == "generator[6]"


def test_generator_unbounded_snapshot_and_restore() -> None:
    src = generator.read(lambda i: i * 10)
    assert not src.bounded
    reader = src.open(ctx_for())
    assert reader.poll(5) == [0, 10, 20, 30, 40]
    pos = reader.snapshot()
    assert pos == 5
    fresh = src.open(ctx_for())
    fresh.restore(pos)
    assert fresh.poll(3) == [50, 60, 70]
    with pytest.raises(ConfigError, match="not a position"):
        fresh.restore("x")


def test_generator_errors_name_the_function_and_index() -> None:
    def flaky(i: int) -> int:
        if i == 7:
            raise ValueError("seven")
        return i

    flow = ms.Flow("bad")
    flow.source(generator.read(flaky, count=20, name="numbers")).sink(CollectSink())
    with pytest.raises(StepError) as err:
        flow.run()
    text = str(err.value)
    assert "numbers[7]" in text and "ValueError: seven" in text
    assert "test_connectors_stdio_generator.py" in text


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"count": -1}, "count must be"),
    ({"rate": 0}, "rate must be"),
    ({"rate": float("inf")}, "rate must be"),
    ({"batch": 0}, "batch must be"),
    ({"burst": 0}, "burst must be"),
])
def test_generator_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        generator.read(lambda i: i, **kwargs)
    with pytest.raises(ConfigError, match="needs a function"):
        generator.read(42)  # type: ignore[arg-type]


def test_sequence_with_event_time_windows() -> None:
    src = generator.sequence(100, start_ms=1_000_000, interval=timedelta(milliseconds=250))
    flow = ms.Flow("seq")
    out = CollectSink()
    (flow.source(src, watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
         .window(ms.windows.tumbling(timedelta(seconds=5))).aggregate(n=ms.agg.count()).sink(out))
    flow.run()
    assert [w["n"] for w in out.values] == [20] * 5
    assert out.values[0]["window_start"] == 1_000_000
    assert "sequence" in src.describe() or "SequenceRecords" in src.describe()


def test_generator_bad_timestamp_is_a_bad_record_with_its_index() -> None:
    flow = ms.Flow("ts")
    flow.source(generator.read(lambda i: {"ts": "soon" if i == 3 else i}, count=5),
                watermark=ms.WatermarkStrategy.monotonous(timestamp="ts")).sink(CollectSink())
    with pytest.raises(RecordError, match=r"generator\[3\]"):
        flow.run()
