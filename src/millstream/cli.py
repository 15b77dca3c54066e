"""The ``millstream`` command. See ``millstream --help``."""

from __future__ import annotations

from millstream._cli import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
