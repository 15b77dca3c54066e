"""The examples in examples/ run as their docstrings say (``millstream run examples/NAME.py``, from
any directory, no other argument), end by themselves, and find what they are meant to find."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = Path(__file__).resolve().parents[1] / "src"


def run_example(name: str, tmp_path: Path, *args: str, out: str = "out") -> Path:
    env = dict(os.environ, MILLSTREAM_EXAMPLES_OUT=str(tmp_path / out))
    env.pop("MILLSTREAM_MODE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-m", "millstream.cli", "run", str(EXAMPLES / f"{name}.py"),
                        "--progress", "off", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr
    return tmp_path / out / name


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_fraud_detection_finds_exactly_the_planted_frauds(tmp_path: Path) -> None:
    out = run_example("fraud_detection", tmp_path)
    alerts = rows(out / "alerts.jsonl")
    assert {(a["card"], a["kind"]) for a in alerts} == {
        ("card-0007", "test-then-large"), ("card-0007", "anomaly"), ("card-0042", "impossible-travel"),
        ("card-0113", "anomaly")}
    assert all(a["name"] == f"Holder {int(a['card'][-4:])}" for a in alerts)  # enriched from the SQLite table
    travel = [a for a in alerts if a["kind"] == "impossible-travel"]
    assert [a["cities"] for a in sorted(travel, key=lambda a: a["ts"])] == [["Berlin", "Tokyo"], ["Tokyo", "Berlin"]]


def test_trending_puts_the_viral_tag_on_top_while_it_is_viral(tmp_path: Path) -> None:
    out = run_example("trending", tmp_path)
    windows = rows(out / "trending.jsonl")
    t0, minute = 1_764_000_000_000, 60_000
    assert len(windows) == 69  # 60 one-minute steps of a 10-minute window over an hour, plus the partial ones
    for w in windows:
        viral_minutes = max(0, min(w["window_end"], t0 + 35 * minute) - max(w["window_start"], t0 + 25 * minute))
        tags = [tag for tag, _ in w["top"]]
        if viral_minutes >= 5 * minute:
            assert tags[0] == "#millstream", w
        if viral_minutes == 0:
            assert "#millstream" not in tags, w
        assert [n for _, n in w["top"]] == sorted((n for _, n in w["top"]), reverse=True)


def test_log_monitoring_alerts_each_burst_once_at_most_once(tmp_path: Path) -> None:
    out = run_example("log_monitoring", tmp_path)
    alerts = rows(out / "alerts.jsonl")
    t0 = 1_764_000_000_000
    assert Counter(a["service"] for a in alerts) == {"payments": 2, "search": 1}
    assert sorted(a["window_start"] - t0 for a in alerts if a["service"] == "payments") == [120_000, 150_000]
    assert (out / "checkpoints").is_dir()  # it ran with checkpoints, at-most-once (its RUN)


def test_billing_gives_the_same_invoice_in_batch_and_as_a_stream(tmp_path: Path) -> None:
    batch = rows(run_example("billing", tmp_path, out="batch") / "invoice_lines.jsonl")
    streamed = rows(run_example("billing", tmp_path, "--mode", "native", out="native") / "invoice_lines.jsonl")
    key = json.dumps
    assert Counter(map(key, batch)) == Counter(map(key, streamed))
    usage = rows(tmp_path / "batch" / "billing" / "usage.jsonl")
    prices = {"basic": 0.02, "pro": 0.015, "enterprise": 0.01}  # dollars per unit
    assert sum(r["units"] for r in batch) == sum(u["units"] for u in usage)
    assert sum(r["records"] for r in batch) == len(usage) == 30_000
    assert sum(r["cost"] for r in batch) == pytest.approx(sum(u["units"] * prices[u["plan"]] for u in usage), abs=1)
