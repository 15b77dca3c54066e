"""The terminal as a user meets it (issue 12, "The terminal").

- Progress when stderr is not a terminal (a job under nohup, systemd, CI): a plain line every
  ``--progress-interval`` seconds with records read and written, rate, watermark, checkpoints,
  late and skipped counts; the percentage and the ETA when the input's size is known.
- Ctrl-C (SIGINT) exits 130, SIGTERM 143 (128 + the signal's number, as a shell reports it), with
  a "run the same command again to resume" hint when the job has a checkpoint directory; the run
  again resumes, and under exactly-once its output equals an uninterrupted run's.
- The final summary on stdout, diagnostics (progress, warnings, errors) on stderr.
- On a terminal (a pty), the live table still renders.

The runs are subprocesses with stderr in a file; the tests wait for what they look for in it
(a progress line, a checkpoint), never for a guessed time.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests._cli_runs import Run, cli, cli_env

import millstream as ms
from millstream._cli import load_flow, main
from millstream._progress import LogProgress
from millstream._run import JobStatus
from millstream._time import MIN_WATERMARK
from millstream.connectors import files
from millstream.connectors._base import SourceContext
from millstream.nexmark import NexmarkConfig
from millstream.nexmark import read as nexmark_read
from millstream.testing import ManualClock

PROGRESS = re.compile(r"^\S+ millstream progress: .*$", re.M)
PERCENT = re.compile(r"\| (\d+\.\d)%")

JOB = '''
import time
import millstream as ms
from millstream.connectors import files


def slow(r):
    time.sleep(DELAY)
    return {"i": r["i"], "sq": r["i"] * r["i"], "ts": r["ts"]}


def build(params):
    global DELAY
    DELAY = params.get("delay", 0.0)
    flow = ms.Flow("squares")
    (flow.source(files.read(params["input"]), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
         .map(slow)
         .sink(files.write(params["out"], transactional=params.get("transactional", False))))
    return flow
'''


def _lines(text: str) -> list[str]:
    return PROGRESS.findall(text)


def _checkpoints(text: str) -> int:
    found = re.findall(r"\| checkpoints (\d+)", text)
    return int(found[-1]) if found else 0


def _write_input(path: Path, n: int) -> None:
    path.write_bytes(b"".join(orjson.dumps({"i": i, "ts": 1_000 * i}) + b"\n" for i in range(n)))


def _job(tmp: Path, n: int) -> tuple[Path, Path]:
    job, data = tmp / "job.py", tmp / "input.jsonl"
    job.write_text(JOB)
    _write_input(data, n)
    return job, data


def test_without_a_terminal_progress_is_logged_with_percentage_and_eta(tmp_path: Path) -> None:
    job, data = _job(tmp_path, 3_000)
    run = Run(tmp_path, "run", ["run", str(job), "--set", f"input={data}", "--set", f"out={tmp_path / 'out.jsonl'}",
                                "--set", "delay=0.0004", "--max-chunk", "100", "--progress-interval", "0.1"])
    # lines appear while the job runs, not only at the end
    run.wait_for("two progress lines", lambda err: len(_lines(err)) >= 2)
    assert run.proc.poll() is None
    assert run.finish() == 0, run.stderr
    lines = _lines(run.stderr)
    assert len(lines) >= 3, run.stderr
    for line in lines:
        for figure in ("squares native", "read ", "/s)", "written ", "watermark ", "late 0", "skipped 0"):
            assert figure in line, (figure, line)
    percents = [float(m) for line in lines for m in PERCENT.findall(line)]
    assert len(percents) == len(lines) and percents == sorted(percents) and 0 < percents[0] < 100
    assert any("ETA " in line for line in lines[1:])
    # the summary goes to stdout, where the results would be redirected; nothing else goes there
    assert "finished" in run.stdout and "3,000" in run.stdout and "millstream progress" not in run.stdout
    assert "finished" not in run.stderr


def test_progress_off_and_quiet_print_nothing_on_stderr(tmp_path: Path) -> None:
    job, data = _job(tmp_path, 1_000)
    common = ["run", str(job), "--set", f"input={data}", "--set", f"out={tmp_path / 'out.jsonl'}",
              "--set", "delay=0.0005", "--max-chunk", "100", "--progress-interval", "0.05"]
    off, quiet = Run(tmp_path, "off", [*common, "--progress", "off"]), Run(tmp_path, "quiet", [*common, "-q"])
    assert off.finish() == 0 and quiet.finish() == 0
    assert off.stderr == "" and quiet.stderr == "" and quiet.stdout == ""
    assert "finished" in off.stdout


def test_ctrl_c_exits_130_with_the_hint_and_the_same_command_resumes_exactly_once(tmp_path: Path) -> None:
    job, data = _job(tmp_path, 2_000)
    # the reference: the same job uninterrupted, in this process
    ref = tmp_path / "ref"
    load_flow(str(job), {"input": str(data), "out": f"{ref}/", "transactional": True}).run(
        guarantee="exactly-once", checkpoint_dir=tmp_path / "ref-ck")
    expected = files.read_committed(ref)
    assert len(expected) == 2_000

    out, ck = tmp_path / "out", tmp_path / "ck"
    args = ["run", str(job), "--set", f"input={data}", "--set", f"out={out}/", "--set", "transactional=true",
            "--set", "delay=0.0005", "--max-chunk", "50", "--guarantee", "exactly-once", "--checkpoint-dir", str(ck),
            "--checkpoint-interval", "50", "--progress-interval", "0.1"]
    first = Run(tmp_path, "first", args)
    first.wait_for("a checkpoint", lambda err: _checkpoints(err) >= 2)
    first.proc.send_signal(signal.SIGINT)
    assert first.finish() == 130, first.stderr
    assert "run the same command again to resume from checkpoint #" in first.stderr
    assert str(ck) in first.stderr and "Traceback" not in first.stderr
    assert "interrupted" in first.stdout  # the summary, on stdout
    done_before = len(files.read_committed(out))
    assert done_before < 2_000, "the job ended before it was interrupted; make it longer"

    again = Run(tmp_path, "again", args)
    assert again.finish() == 0, again.stderr
    assert "resumed from #" in again.stderr  # the progress lines say where it went on from
    assert "finished" in again.stdout and "resumed from" in " ".join(again.stdout.split())  # the table wraps
    assert sorted(files.read_committed(out), key=lambda r: r["i"]) == sorted(expected, key=lambda r: r["i"])


def _nexmark(*extra: str) -> list[str]:
    return ["nexmark", "run", "--query", "q5", "--events", "20000", "--event-rate", "2000", *extra]


def test_nexmark_run_shows_progress_exits_130_on_ctrl_c_and_resumes(tmp_path: Path) -> None:
    ref = tmp_path / "ref.jsonl"
    reference = Run(tmp_path, "ref", _nexmark("--out", str(ref), "-q"))  # uninterrupted, meanwhile
    out, ck = tmp_path / "out", tmp_path / "ck"
    args = _nexmark("--pace", "10000", "--guarantee", "exactly-once", "--checkpoint-dir", str(ck),
                    "--checkpoint-interval", "50", "--out", str(out), "--progress-interval", "0.1")
    first = Run(tmp_path, "first", args)
    first.wait_for("progress lines and a checkpoint", lambda err: len(_lines(err)) >= 2 and _checkpoints(err) >= 1)
    first.proc.send_signal(signal.SIGINT)
    assert first.finish() == 130, first.stderr
    lines = _lines(first.stderr)
    assert all("nexmark-q5 native" in line and "%" in line for line in lines), lines
    assert "run the same command again to resume from checkpoint #" in first.stderr
    assert "interrupted before the end of its input" in first.stdout  # the summary: --out, so on stdout

    again = Run(tmp_path, "again", args)
    assert again.finish() == 0, again.stderr
    assert "interrupted" not in again.stdout and "20,000 events" not in again.stdout  # it went on, not anew
    assert reference.finish() == 0, reference.stderr
    assert sorted(map(orjson.dumps, files.read_committed(out))) == sorted(ref.read_bytes().splitlines())


def test_sigterm_exits_143_and_says_a_new_run_starts_anew_without_checkpoints(tmp_path: Path) -> None:
    run = Run(tmp_path, "term", _nexmark("--pace", "10000", "--progress-interval", "0.1"))
    run.wait_for("a progress line", lambda err: len(_lines(err)) >= 1)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.stderr
    assert "without --checkpoint-dir a new run starts from the beginning" in run.stderr
    # no --out: the result rows own stdout, so the summary went to stderr
    assert "interrupted before the end of its input" in run.stderr
    assert all(line.startswith("{") for line in run.stdout.splitlines())


def test_on_a_terminal_the_live_table_renders(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    env = {**cli_env(), "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    with (tmp_path / "stdout").open("wb") as stdout:
        proc = subprocess.Popen(cli(*_nexmark("--events", "10000", "--pace", "10000", "--progress-interval", "0.1",
                                                 "--out", str(tmp_path / "o"))),
                                env=env, stdout=stdout, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65_536)
                except OSError:  # the other end closed: the run is over
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(30) == 0, seen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = seen.decode(errors="replace")
    assert "nexmark-q5 · native" in text and "watermark" in text and "read " in text  # the table and caption
    assert "│" in text or "┃" in text  # drawn as a table
    assert "\x1b[" in text  # redrawn in place
    assert "millstream progress:" not in text  # no log lines on a terminal
    assert "%" in text


# -- in-process ------------------------------------------------------------------------------------


def _ctx() -> SourceContext:
    return SourceContext(step="s", clock=ManualClock(), policy="fail")


def test_readers_say_how_far_through_a_bounded_input_they_are(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    _write_input(data, 1_000)
    size = data.stat().st_size
    reader = files.read(data).open(_ctx())
    seen = [reader.progress()]
    while reader.poll(100) is not None:
        seen.append(reader.progress())
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    done = [p[0] for p in seen if p is not None]
    assert done == sorted(done) and len(set(done)) > 5
    reader.close()
    assert files.read(tmp_path, follow=True).open(_ctx()).progress() is None  # a followed directory never ends

    gen = nexmark_read(NexmarkConfig(events=5_000)).open(_ctx())
    assert gen.progress() == (0, 5_000)
    gen.poll(1_000)
    assert gen.progress() == (1_000, 5_000)
    assert nexmark_read(NexmarkConfig(events=None)).open(_ctx()).progress() is None


def test_a_flow_run_reports_the_fraction_of_its_input(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    _write_input(data, 3_000)
    seen: list[JobStatus] = []
    flow = ms.Flow("f")
    flow.source(files.read(data), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts")).sink(
        ms.testing.CollectSink())
    result = flow.run(mode="native", max_chunk=200, on_progress=seen.append, progress_interval_s=1e-6)
    fractions = [s.fraction for s in seen]
    assert all(f is not None for f in fractions) and fractions == sorted(fractions)  # type: ignore[type-var]
    assert result.fraction == 1.0


def _status(elapsed: float, read: int, done: int | None) -> JobStatus:
    return JobStatus("f", "native", elapsed, read, read // 2, MIN_WATERMARK, (),
                     input_progress=None if done is None else (done, 100))


def test_log_lines_come_every_interval_with_the_current_rate_and_an_eta() -> None:
    buf = io.StringIO()
    log = LogProgress(buf, interval_s=10)
    for t in range(0, 31):  # a status every second, a line every ten
        log(_status(float(t), 1_000 * t, min(100, 2 * t)))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert "read 20,000 (1,000/s)" in lines[2] and "| 40.0% ETA 30s |" in lines[2]
    buf2 = io.StringIO()
    LogProgress(buf2)(_status(1.0, 10, None))
    assert "%" not in buf2.getvalue() and "ETA" not in buf2.getvalue()


def test_warnings_are_shown_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "flaky.py"
    job.write_text(f'''
import os
import millstream as ms

MARK = {str(tmp_path / "failed-once")!r}
RUN = ms.RunConfig(restart_delay_s=0.0)


def once(r: dict) -> dict:
    if not os.path.exists(MARK):
        open(MARK, "w").close()
        raise RuntimeError("a passing failure")
    return r


flow = ms.Flow("flaky")
flow.source(ms.connectors.memory.read([{{"i": 1}}, {{"i": 2}}])).map(once).sink(ms.testing.CollectSink())
''')
    code = main(["run", str(job), "--checkpoint-dir", str(tmp_path / "ck"), "--restarts", "1", "--progress", "off"])
    assert code == 0
    captured: Any = capsys.readouterr()
    assert "millstream WARNING" in captured.err and "restart 1 of 1" in captured.err
    assert re.search(r"^\d{4}-\d\d-\d\dT\S+Z millstream WARNING: ", captured.err, re.M)  # not a terminal: stamped
    assert "finished" in captured.out and "finished" not in captured.err
