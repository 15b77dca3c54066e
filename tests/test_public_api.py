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
