"""The ``millstream`` command line in a subprocess, for the tests that drive it as a user does
(Ctrl-C, SIGTERM, progress with or without a terminal, jobs killed and run again).

A run gets this checkout's ``src`` first on its path and none of the variables that would change
it from outside (armed failpoints, a default mode).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MILLSTREAM_FAILPOINTS", "MILLSTREAM_MODE"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def cli(*args: str) -> list[str]:
    """The command line of ``millstream ARGS``."""
    return [sys.executable, "-m", "millstream.cli", *args]


class Run:
    """``millstream ARGS`` in the background, stdout and stderr in files (not a terminal)."""

    def __init__(self, tmp: Path, tag: str, args: list[str]) -> None:
        self.out_path, self.err_path = tmp / f"{tag}.stdout", tmp / f"{tag}.stderr"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(cli(*args), env=cli_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    def wait_for(self, what: str, found: Callable[[str], bool], timeout: float = 60) -> None:
        """Wait until ``found(stderr so far)``; fail if the run ends or the time is up first."""
        deadline = time.monotonic() + timeout
        while not found(self.stderr):
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (status {self.proc.returncode}) before {what}:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no {what} after {timeout} s:\n{self.stderr}")
            time.sleep(0.01)

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
