"""Issue 10 §6: a mistake in a job file is shown at the user's line, not as a traceback through the
CLI's internals; ``--debug`` shows the whole traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    "typo": ('import millstream as ms\nflow = ms.Flow("x")\nflow.source(ms.connectors.memory.read([1]))'
             '.mapp(lambda r: r)\n', 3, "did you mean 'map'?"),
    "syntax": ('import millstream as ms\nflow = ms.Flow("x"\n', 2, "SyntaxError"),
    "build": ("import millstream as ms\ndef build(params):\n    return 1 / 0\n", 3, "ZeroDivisionError"),
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "millstream.cli", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_job_file_is_shown_at_its_line(tmp_path: Path, case: str) -> None:
    text, line, what = CASES[case]
    job = tmp_path / "job.py"
    job.write_text(text)
    r = _run("run", str(job))
    said = " ".join(r.stderr.split())
    assert r.returncode == 2, r.stderr
    assert f"job.py:{line}" in said and what in said, r.stderr
    assert "Traceback" not in r.stderr and "_cli.py" not in r.stderr
    assert "--debug" in said
    r = _run("run", str(job), "--debug")
    assert "Traceback" in r.stderr and f"job.py:{line}" in " ".join(r.stderr.split())
