"""The README's first example runs as printed (it makes its own input) in every mode."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("exec_mode")


def test_the_first_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    env: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), env)  # noqa: S102 - our own README
    result = env["flow"].run()  # type: ignore[attr-defined]
    assert result.records_read == 10_000
    assert (tmp_path / "alerts.jsonl").exists()
