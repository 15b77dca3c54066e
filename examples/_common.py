"""Where the examples put what they make: ``$MILLSTREAM_EXAMPLES_OUT/<example>/`` (default: a
``millstream-examples`` directory in the system's temporary directory), so that they run from
any working directory and leave the checkout clean."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def out_dir(example: str, *, fresh: bool = True) -> Path:
    root = Path(os.environ.get("MILLSTREAM_EXAMPLES_OUT") or Path(tempfile.gettempdir()) / "millstream-examples")
    path = root / example
    if fresh and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
