"""Directories millstream writes into: made, or refused with the path, the reason and the fix."""

from __future__ import annotations

import os

from millstream.errors import MillstreamError


def writable_dir(path: str, *, what: str, error: type[MillstreamError]) -> str:
    """Make ``path`` (and its parents) if needed and check that files can be created in it; raise
    ``error`` naming ``what`` (e.g. ``"the checkpoint directory"``), the path, the reason and the fix
    when not — before any input is read, never at the first write."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        blocker = _first_blocker(path)
        detail = f" ({blocker!r} is a file, not a folder)" if blocker else ""
        raise error(f"{what} {path!r} cannot be created: {reason}{detail}\n"
                    "  fix: choose a path in a folder you can write to, or create the folder first") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise error(f"{what} {path!r} is not writable by this user\n"
                    "  fix: change its permissions, or choose another path")
    return path


def _first_blocker(path: str) -> str | None:
    """The first existing ancestor of ``path`` that is not a directory (why makedirs failed), if any."""
    p = os.path.abspath(path)
    parts: list[str] = []
    while p and p != os.path.dirname(p):
        parts.append(p)
        p = os.path.dirname(p)
    for candidate in reversed(parts):
        if os.path.exists(candidate) and not os.path.isdir(candidate):
            return candidate
    return None
