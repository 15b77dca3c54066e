"""The micro-batch and batch modes at parallelism > 1 (issue 11, section 2): checkpoints across workers.

The vectorised operators run on every worker, columnar batches cross the exchange as batches, and a
checkpoint holds each worker's part of their (columnar) state. The answers and the Nexmark oracle at
parallelism 1-3 in every mode are in ``test_parallel``; here, a job that fails after some checkpoints
resumes from the latest with its committed output exactly the independent computation's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from tests.test_parallel import _shm, clean  # noqa: F401 - the fixture: no process, nothing in /dev/shm left
from tests.test_parallel_checkpoints import RUN, _flow, _rows, expected

import millstream as ms
from millstream.errors import JobError

pytestmark = pytest.mark.usefixtures("clean")


@pytest.mark.parametrize("mode", ["microbatch", "batch"])
def test_a_failed_columnar_job_resumes_from_its_checkpoint_exactly_once(mode: str, tmp_path: Path) -> None:
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ms.errors.PerformanceWarning)  # the failing step is a Python function
        with pytest.raises(JobError, match="a failure after some checkpoints"):
            _flow(30_000, out, fail_marker=marker, at=22_000).run(parallelism=2, checkpoint_dir=str(ck), mode=mode,
                                                                  **RUN)
        committed = _rows(out)
        assert all(n == 1 for n in committed.values())
        result = _flow(30_000, out, fail_marker=marker, at=22_000).run(parallelism=2, checkpoint_dir=str(ck),
                                                                       mode=mode, **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from is not None
    assert _rows(out) == expected(30_000)


def test_a_micro_batch_checkpoint_resumes_in_native_mode(tmp_path: Path) -> None:
    """A checkpoint taken by micro-batch workers (the vectorised windows' columnar state) resumes in native
    mode, each native window taking its worker's part converted: exactly once, the oracle's output (more
    moves between modes: ``tests/test_checkpoint_modes.py``)."""
    out, ck, marker = tmp_path / "out", tmp_path / "ck", tmp_path / "failed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ms.errors.PerformanceWarning)
        with pytest.raises(JobError, match="a failure after some checkpoints"):
            _flow(30_000, out, fail_marker=marker, at=22_000).run(parallelism=2, checkpoint_dir=str(ck),
                                                                  mode="microbatch", **RUN)
    committed = _rows(out)
    assert committed and all(n == 1 for n in committed.values())
    latest = max(int(p.name.split("-")[1]) for p in ck.glob("chk-*"))
    result = _flow(30_000, out, fail_marker=marker, at=22_000).run(parallelism=2, checkpoint_dir=str(ck), mode="native",
                                                                   **RUN)
    assert result.ok and result.checkpoints is not None and result.checkpoints.restored_from == latest
    assert _rows(out) == expected(30_000)


@pytest.mark.parametrize("mode", ["native", "microbatch"])
def test_nexmark_run_from_a_file_on_two_workers_matches_the_oracle(mode: str, tmp_path: Path) -> None:
    """``millstream nexmark run --parallelism 2`` over a JSON-lines file (its byte ranges as 3 logical
    splits): DuckDB's answer, q5 (keyed windows) and q7 (a window over the whole stream)."""
    pytest.importorskip("duckdb")
    import orjson
    from tests.test_nexmark_queries import OUT_OF_ORDER, check, oracle

    from millstream._cli import main
    from millstream.nexmark import _cli as nx

    events = tmp_path / "events.jsonl"
    nx.generate(OUT_OF_ORDER, str(events))
    for query in ("q5", "q7"):
        out = tmp_path / f"{query}.jsonl"
        assert main(["nexmark", "run", "--query", query, "--mode", mode, "--input", str(events), "--parallelism", "2",
                     "--splits", "3", "--out", str(out), "-q"]) == 0
        check(query, [orjson.loads(line) for line in out.read_bytes().splitlines()], oracle("out-of-order", query))


def test_nexmark_run_refuses_splits_for_a_topic() -> None:
    from millstream.nexmark import _cli as nx

    with pytest.raises(ms.errors.ConfigError, match="--splits is for the generator and a JSON-lines file"):
        nx.source_for(input="kafka://127.0.0.1:9/t", splits=2)
