"""Random SIGKILLs of jobs on real services (CI): Kafka -> windows -> PostgreSQL upsert / Kafka
transactional sink / transactional files, Redis Streams -> windows -> files (tests/chaos/services.py).

Eight trials, each killed up to three times at random moments (at least once) and restarted until
done, over the pipelines, the guarantees and both executors: a dozen kills or more. The committed
output is checked against windows computed in plain Python from the same deterministic input.
Long campaigns (>= 200 kills per pipeline): tests/chaos/campaign_services.py, figures in
docs/reliability.md.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import services as chaos  # noqa: E402

pytestmark = [pytest.mark.integration]
PER_PARTITION = 300

TRIALS = [("pg", "exactly-once", "native"), ("kafka", "exactly-once", "microbatch"),
          ("files", "exactly-once", "native"), ("redis", "exactly-once", "microbatch"),
          ("pg", "at-least-once", "microbatch"), ("kafka", "at-most-once", "native"),
          ("redis", "at-least-once", "native"), ("files", "at-most-once", "microbatch")]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Counter[str]]]:
    with chaos.services(PER_PARTITION, str(tmp_path_factory.mktemp("tansu"))) as e:
        yield e, chaos.oracle(PER_PARTITION)


@pytest.mark.parametrize(("pipeline", "guarantee", "mode"), TRIALS)
def test_random_kills_on_services(env: tuple[Any, Counter[str]], tmp_path: Path, pipeline: str, guarantee: str,
                                  mode: str) -> None:
    services, expected = env
    trial = chaos.trial(pipeline, guarantee, mode=mode, seed=TRIALS.index((pipeline, guarantee, mode)), kills=3,
                        per_partition=PER_PARTITION, rate=400, kill_window_s=(0.4, 1.2), interval_ms=50)  # >= 3 s paced
    result = chaos.run_trial(trial, services, expected, tmp_path)
    print(f"{pipeline} {guarantee} {mode}: {result['kills']} kills at {result['schedule']} s, {result['seconds']} s")
    assert result["anomalies"] == [], result
    assert result["kills"] >= 1, f"the job ended before the random kill: {result}"
