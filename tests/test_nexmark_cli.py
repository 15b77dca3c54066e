"""``millstream nexmark generate | run | bench``: determinism, output columns, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from millstream import nexmark
from millstream._cli import main
from millstream._run import MODES
from millstream.connectors import files
from millstream.nexmark import NexmarkConfig

REPO = Path(__file__).resolve().parents[1]


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def canon(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps(r, sort_keys=True) for r in rows)


def test_generate_is_deterministic(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["nexmark", "generate", "--events", "3000", "--rate", "1000", "--out", str(a)]) == 0
    assert main(["nexmark", "generate", "--events", "3000", "--rate", "1000", "--out", str(b)]) == 0
    capsysbinary.readouterr()
    assert main(["nexmark", "generate", "--events", "3000", "--rate", "1000"]) == 0
    stdout = capsysbinary.readouterr().out
    assert a.read_bytes() == b.read_bytes() == stdout
    events = rows_of(a)
    config = NexmarkConfig(events=3000, rate=1000)
    assert len(events) == 3000
    assert events[:60] == [nexmark.event(i, config) for i in range(60)]
    assert Counter(e["type"] for e in events) == {"person": 60, "auction": 180, "bid": 2760}
    auction = next(e for e in events if e["type"] == "auction")
    assert list(auction) == ["type", *nexmark.FIELDS["auction"]]
    assert isinstance(auction["dateTime"], int) and isinstance(auction["expires"], int)
    assert auction["dateTime"] == nexmark.BASE_TIME_MS + 1  # event 1, at 1 ms per event


def test_generate_out_of_order(tmp_path: Path) -> None:
    out = tmp_path / "e.jsonl"
    assert main(["nexmark", "generate", "--events", "2000", "--rate", "1000", "--out-of-order", "100",
                 "--out", str(out)]) == 0
    times = [e["dateTime"] for e in rows_of(out)]
    assert times != sorted(times)
    assert max(a - b for a, b in zip(times, times[1:], strict=False)) < 100


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("query", list(nexmark.QUERIES))
def test_run_writes_the_columns(query: str, mode: str, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["nexmark", "run", "--query", query, "--mode", mode, "--events", "12000", "--event-rate", "1000",
                 "--out", str(out), "-q"]) == 0
    rows = rows_of(out)
    assert rows, query
    assert all(tuple(r) == nexmark.COLUMNS[query] for r in rows)
    if query == "q4":  # the final table: one row per category
        assert sorted(r["category"] for r in rows) == [10, 11, 12, 13, 14]


def test_run_from_a_file_equals_the_generator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    assert main(["nexmark", "generate", "--events", "15000", "--rate", "1000", "--out", str(events)]) == 0
    for q in ("q2", "q4", "q11"):
        a, b = tmp_path / f"{q}-gen.jsonl", tmp_path / f"{q}-file.jsonl"
        assert main(["nexmark", "run", "--query", q, "--events", "15000", "--event-rate", "1000",
                     "--out", str(a)]) == 0
        assert main(["nexmark", "run", "--query", q, "--input", str(events), "--out", str(b)]) == 0
        assert canon(rows_of(a)) == canon(rows_of(b)), q
    out = capsys.readouterr().out  # with --out, the summary goes to stdout (issue 12)
    assert "nexmark q11 (native): 15,000 events" in out and "events/s" in out


def test_run_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nexmark", "run", "--query", "q4", "--events", "5000", "--event-rate", "1000", "-q"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [tuple(r) for r in rows] == [("category", "avg")] * 5


def test_run_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --rate (--pace) paces any input now (tests/integration/test_cli_urls.py); it must be > 0
    assert main(["nexmark", "run", "--query", "q0", "--input", str(tmp_path / "x.jsonl"), "--rate", "0"]) == 2
    assert "--pace must be a number of records per second > 0" in capsys.readouterr().err
    assert main(["nexmark", "run", "--query", "q0", "--events", "10", "--guarantee", "exactly-once",
                 "--checkpoint-dir", str(tmp_path / "ck")]) == 2
    assert "exactly-once needs --out" in capsys.readouterr().err


def test_exactly_once_run_resumes(tmp_path: Path) -> None:
    args = ["nexmark", "run", "--query", "q4", "--events", "8000", "--event-rate", "1000",
            "--guarantee", "exactly-once", "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-interval", "50",
            "--out", str(tmp_path / "out"), "-q"]
    assert main(args) == 0
    first = files.read_committed(tmp_path / "out")
    assert [tuple(r) for r in first] == [("category", "avg")] * 5
    assert main(args) == 0  # already finished: the same table again
    assert files.read_committed(tmp_path / "out") == first


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MILLSTREAM_FAILPOINTS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "millstream.cli", "nexmark", "run", *args]


@pytest.mark.parametrize("query", ["q5", "q4"])
def test_exactly_once_resume_after_sigkill_gives_the_same_output(query: str, tmp_path: Path) -> None:
    common = ["--query", query, "--events", "24000", "--event-rate", "2000", "-q"]
    ref = tmp_path / "ref.jsonl"
    done = subprocess.run(_cli(*common, "--out", str(ref)), env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out, ck = tmp_path / "out", tmp_path / "ck"
    paced = [*common, "--rate", "12000", "--guarantee", "exactly-once", "--checkpoint-dir", str(ck),
             "--checkpoint-interval", "50", "--out", str(out)]
    proc = subprocess.Popen(_cli(*paced), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(ck.glob("chk-*/MANIFEST.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)  # a few more checkpoints and output, then the kill, about a quarter into the input
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert list(ck.glob("chk-*/MANIFEST.json")), "no checkpoint was taken before the kill"
    resumed = subprocess.run(_cli(*paced), env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert canon(files.read_committed(out)) == canon(rows_of(ref))


def test_bench_measures_every_query_mode_and_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "bench.json"
    assert main(["nexmark", "bench", "--events", "3000", "--event-rate", "1000", "--queries", "q0,q5",
                 "--json", str(report)]) == 0
    doc = json.loads(report.read_text())
    got = {(r["query"], r["input"], r["mode"]) for r in doc["results"]}
    assert got == {(q, i, m) for q in ("source", "q0", "q5") for i in ("generator", "jsonl") for m in MODES}
    for r in doc["results"]:
        assert r["events"] == 3000 and r["events_per_s"] > 0
        assert r["rows"] == {"source": 3000, "q0": 2760}.get(r["query"], r["rows"])
    assert "events/s" in capsys.readouterr().out


def test_bench_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nexmark", "bench", "--events", "100", "--queries", "q6"]) == 2
    assert "unknown Nexmark query 'q6'" in capsys.readouterr().err


def test_bench_memory_and_parquet_inputs(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    assert main(["nexmark", "bench", "--events", "3000", "--event-rate", "1000", "--queries", "q0,q5,q11",
                 "--inputs", "generator,memory,parquet", "--json", str(report)]) == 0
    doc = json.loads(report.read_text())
    got = {(r["query"], r["input"], r["mode"]) for r in doc["results"]}
    assert got == {(q, i, m) for q in ("source", "q0", "q5", "q11") for i in ("generator", "memory", "parquet")
                   for m in MODES}
    assert set(doc["inputs"]) == {"generator", "memory", "parquet"}
    assert "dict rows" in doc["inputs"]["memory"]
    assert {(r["input"], r["mode"]) for r in doc["generator_no_engine"]} == {("generator", m) for m in MODES}
    rows: dict[str, set[int]] = {}
    for r in [*doc["results"], *doc["generator_no_engine"]]:
        assert r["events"] == 3000 and r["events_per_s"] > 0
        rows.setdefault(r["query"], set()).add(r["rows"])
    # every input and every mode reads the same events and gives the same number of rows
    assert rows["source"] == rows["bare"] == {3000}
    assert rows["q0"] == {2760}
    assert len(rows["q5"]) == 1 and len(rows["q11"]) == 1
    assert "load_before" in doc and "one_core" not in doc


def test_bench_one_core_pins_the_process(tmp_path: Path) -> None:
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity here")
    report = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "millstream.cli", "nexmark", "bench", "--events", "1000", "--queries", "q2",
           "--modes", "microbatch", "--inputs", "memory", "--one-core", "--json", str(report)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(report.read_text())
    assert doc["one_core"]["cpu"] in os.sched_getaffinity(0)
    assert doc["one_core"]["polars_threads"] == 1
    assert "--one-core" in doc["command"]
    assert "one core: pinned to CPU" in done.stderr


def test_bench_rejects_an_unknown_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nexmark", "bench", "--events", "100", "--inputs", "kafka"]) == 2
    assert "unknown bench input 'kafka'" in capsys.readouterr().err
