"""The command line: run, plan, demo, parameters, and how failures are reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from millstream._cli import load_flow, main

JOBS = Path(__file__).parent / "jobs"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "millstream.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_run_prints_a_summary_and_exits_0() -> None:
    r = cli("run", str(JOBS / "plain.py"))
    assert r.returncode == 0, r.stderr
    assert "plain" in r.stdout and "finished" in r.stdout  # the summary goes to stdout (issue 12)
    assert "10" in r.stdout  # records read


def test_set_parameters_reach_build(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    flow = load_flow(str(JOBS / "wordcount.py"), {"words": "x y x", "spacing": 20_000, "out": str(out)})
    assert flow.name == "wordcount"
    args = ["run", str(JOBS / "wordcount.py"), "--set", "words=x y x", "--set", "spacing=20000", "--set", f"out={out}"]
    assert main([*args, "-q"]) == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["word"], r["window_start"]) for r in results) == [("x", 0), ("x", 40_000), ("y", 20_000)]


def test_set_on_a_file_without_build_is_an_error() -> None:
    r = cli("run", str(JOBS / "plain.py"), "--set", "x=1")
    assert r.returncode == 2
    assert "build(params)" in r.stderr


def test_plan_text_mermaid_json() -> None:
    r = cli("plan", str(JOBS / "plain.py"))
    assert r.returncode == 0, r.stderr
    assert "flow 'plain'" in r.stdout and "filter" in r.stdout and "plain.py:" in r.stdout
    r = cli("plan", str(JOBS / "plain.py"), "--format", "mermaid")
    assert r.stdout.startswith("flowchart LR")
    r = cli("plan", str(JOBS / "plain.py"), "--format", "json")
    steps = json.loads(r.stdout)["steps"]
    assert [s["kind"] for s in steps] == ["source", "filter", "sink"]


def test_a_flow_built_wrong_exits_2_naming_file_line_and_fix() -> None:
    r = cli("run", str(JOBS / "broken_build.py"))
    assert r.returncode == 2
    assert "broken_build.py:4" in r.stderr
    assert "fix:" in r.stderr and "watermark" in r.stderr


def test_a_failing_user_function_exits_1_naming_step_record_and_user_line() -> None:
    r = cli("run", str(JOBS / "failing.py"))
    assert r.returncode == 1
    assert "map:risky" in r.stderr
    assert "ZeroDivisionError" in r.stderr
    assert "input[1]" in r.stderr
    assert "failing.py:5" in r.stderr  # the user's line inside risky()


def test_missing_job_file() -> None:
    r = cli("run", "no/such/job.py")
    assert r.returncode == 2
    assert "does not exist" in r.stderr


def test_demo_runs_and_says_where_its_output_went(tmp_path: Path) -> None:
    r = cli("demo", "--events", "50000", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert str((tmp_path / "out").resolve()) in r.stderr.replace("\n", "")
    files = {p.name for p in (tmp_path / "out").glob("*.jsonl")}
    assert {"spend_alerts.jsonl", "anomalies.jsonl", "travel_alerts.jsonl", "late.jsonl"} <= files
    from millstream._demo import STOLEN_CARDS

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / "out" / name).read_text().splitlines()]

    stolen = {f"card-{n:04d}" for n in STOLEN_CARDS[:2]}  # 50,000 events hold the first two thefts
    travel, spend, anomalies = rows("travel_alerts.jsonl"), rows("spend_alerts.jsonl"), rows("anomalies.jsonl")
    assert all(a["cities"][0] != a["cities"][1] for a in travel)
    assert all(a["total"] > 3000 for a in spend)
    for name, alerts in (("travel", travel), ("spend", spend), ("anomaly", anomalies)):
        assert {a["card"] for a in alerts} == stolen, f"{name} alerts must find exactly the stolen cards"


def test_version() -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("millstream ")
