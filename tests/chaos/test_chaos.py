"""The CI chaos campaign: every failpoint x every guarantee on a windowed job, plus random kills.

Each trial kills the job (SIGKILL at a named point of the checkpoint/commit path, or at a
random moment), restarts it until the bounded input is done, and checks the guarantee's
invariants against a failure-free run (see harness.py). Long campaigns: tests/chaos/campaign.py.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

from millstream._checkpoint._failpoints import POINTS  # noqa: E402

GUARANTEES = ["exactly-once", "at-least-once", "at-most-once"]
_REFERENCE: dict[tuple[str, str], Counter[str]] = {}


def _expected(trial: harness.Trial, tmp: Path) -> Counter[str]:
    key = (trial.pipeline, str(trial.events))  # the reference runs natively: every mode must match it
    if key not in _REFERENCE:
        _REFERENCE[key] = harness.reference(trial, tmp)
    return _REFERENCE[key]


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_failpoint(tmp_path: Path, guarantee: str, point: str) -> None:
    # recovery.restore fires while restoring, so kill once at random first; ckpt.gc needs old checkpoints
    start = 2 if point == "recovery.restore" else 1
    nth = "#4" if point in ("ckpt.begin", "ckpt.before_commit", "sink.commit", "ckpt.after_commit",
                           "ckpt.after_rename") else ""
    trial = harness.Trial(guarantee, pipeline="window", events=12_000, rate=30_000, seed=hash(point) % 1000,
                          failpoint=f"{point}=kill{nth}", failpoint_start=start, kill_window_s=(0.3, 0.6))
    result = harness.run_trial(trial, tmp_path, _expected(trial, tmp_path))
    assert result["anomalies"] == [], result
    assert result["failpoint_fired"], f"{point} never fired: {result}"


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("seed", range(12))
def test_random_kills(tmp_path: Path, guarantee: str, seed: int) -> None:
    """12 trials per guarantee, each killed at least once (up to twice) at a random moment: >= 36 random
    kills per CI run, on top of a kill at each named failpoint; long campaigns: tests/chaos/campaign.py."""
    pipeline = ["window", "sliding", "running" if guarantee != "at-most-once" else "map"][seed % 3]
    trial = harness.Trial(guarantee, pipeline=pipeline, events=20_000, rate=30_000, seed=seed, kills=2,
                          kill_window_s=(0.3, 0.7))
    result = harness.run_trial(trial, tmp_path, _expected(trial, tmp_path))
    assert result["anomalies"] == [], result
    assert result["kills"] >= 1, f"the job ended before the random kill: {result}"


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("seed", range(4))
def test_random_kills_in_micro_batch_mode(tmp_path: Path, guarantee: str, seed: int) -> None:
    """The micro-batch executor checkpoints at epoch boundaries: the same invariants under random kills,
    against the native reference, with vectorised window state (vwindow, vsliding) in the checkpoints."""
    pipeline = ["vwindow", "vsliding", "vwindow", "running" if guarantee != "at-most-once" else "map"][seed]
    trial = harness.Trial(guarantee, pipeline=pipeline, events=20_000, rate=30_000, seed=100 + seed, kills=2,
                          kill_window_s=(0.3, 0.7), mode="microbatch")
    result = harness.run_trial(trial, tmp_path, _expected(harness.Trial(guarantee, pipeline=pipeline,
                                                                        events=20_000), tmp_path))
    assert result["anomalies"] == [], result
    assert result["kills"] >= 1, f"the job ended before the random kill: {result}"


PAUSES = [("exactly-once", "ckpt.before_rename#3", False), ("exactly-once", "ckpt.before_rename#3", True),
          ("exactly-once", "ckpt.before_commit#3", False), ("exactly-once", "ckpt.before_commit#3", True),
          ("exactly-once", "sink.commit#3", True), ("at-least-once", "ckpt.before_commit#3", False),
          ("at-most-once", "ckpt.before_commit#3", False)]


@pytest.mark.parametrize(("guarantee", "stop_at", "drop_lock"), PAUSES)
def test_a_paused_run_and_a_second_run_on_one_directory(tmp_path: Path, guarantee: str, stop_at: str,
                                                        drop_lock: bool) -> None:
    """F9: SIGSTOP inside the checkpoint path, a second run of the same command, SIGCONT. The second is
    refused while the first holds the lock; with the LOCK file gone, the first is fenced by its epoch."""
    trial = harness.Trial(guarantee, pipeline="window", events=12_000, rate=30_000)
    result = harness.pause_trial(trial, tmp_path, _expected(trial, tmp_path), stop_at=stop_at, drop_lock=drop_lock)
    assert result["anomalies"] == [], result
    assert result.get("result") == ("first fenced" if drop_lock else "second refused"), result


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("seed", range(2))
def test_deleting_the_newest_checkpoint_after_a_kill(tmp_path: Path, guarantee: str, seed: int) -> None:
    """History cannot be rewound silently: exactly-once refuses, the others warn and keep their guarantee.
    Killed after the 2nd or 3rd committed checkpoint (the campaign draws from 2..5: a run of 12,000
    events may commit only 3 on a machine whose disk is busy, and then there is nothing to rewind)."""
    pipeline = "window" if guarantee != "at-least-once" else "running"
    trial = harness.Trial(guarantee, pipeline=pipeline, events=12_000, rate=30_000)
    result = harness.rewind_trial(trial, tmp_path, _expected(trial, tmp_path), seed=seed, kill_after=2 + seed)
    assert result["anomalies"] == [], result
    assert "skipped" not in result, result
