"""The public surface: curated facades, complete __all__, typed (py.typed + mypy strict)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import millstream

PUBLIC_MODULES = ["millstream", "millstream.agg", "millstream.windows", "millstream.state", "millstream.errors",
                  "millstream.testing", "millstream.connectors", "millstream.connectors.memory",
                  "millstream.connectors.files", "millstream.connectors.stdio", "millstream.connectors.generator",
                  "millstream.connectors.kafka", "millstream.connectors.redis", "millstream.connectors.nats",
                  "millstream.connectors.mqtt", "millstream.connectors.postgres", "millstream.connectors.rabbitmq",
                  "millstream.connectors.http", "millstream.nexmark", "millstream.metrics", "millstream.cep",
                  "millstream.changelog", "millstream.stats"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_complete_and_importable(name: str) -> None:
    mod = importlib.import_module(name)
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    for attr in exported:
        assert hasattr(mod, attr), f"{name}.__all__ names {attr!r}, which does not exist"
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and getattr(v, "__module__", name) == name
              and callable(v)}
    missing = public - set(exported)
    assert not missing, f"{name} defines public {sorted(missing)} but does not export them"


def test_exceptions_form_one_tree_and_subclass_builtins() -> None:
    from millstream import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.MillstreamError)
    assert issubclass(errors.FlowDefinitionError, ValueError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.StepError, RuntimeError)


def test_package_is_typed() -> None:
    assert (Path(millstream.__file__).parent / "py.typed").exists()


@pytest.mark.skipif(shutil.which("mypy") is None and importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pip install -e '.[dev]')")
def test_typed_usage_passes_mypy_strict() -> None:
    usage = Path(__file__).parent / "typing" / "usage.py"
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(usage)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_native_job_loads_neither_polars_nor_numpy() -> None:
    """Job processes start often (restarts, kill tests, CLI runs): a native job must not pay for the
    columnar libraries' import (~0.2 s), which only the micro-batch and batch executors need."""
    import subprocess
    import sys

    code = ("import sys, millstream as ms\n"
            "f = ms.Flow('n')\n"
            "f.source(ms.connectors.memory.read([{'k': i % 3, 'v': i} for i in range(10)])).key_by('k')"
            ".aggregate(s=ms.agg.sum('v')).sink(ms.connectors.memory.write())\n"
            "f.run(mode='native')\n"
            "print(sorted(m for m in ('polars', 'numpy', 'pyarrow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
