"""Where in the user's code a step was defined, so errors can point at it."""

from __future__ import annotations

import os
import sys
from types import FrameType

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def user_location() -> str | None:
    """``file:line`` of the innermost caller outside the millstream package."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PKG_DIR + os.sep) and not filename.startswith("<frozen"):
            try:
                shown = os.path.relpath(filename)
            except ValueError:
                shown = filename
            if shown.startswith(".." + os.sep + ".."):
                shown = filename
            return f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def callable_name(fn: object) -> str:
    """A short, readable name for a user function."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        name = type(fn).__name__
    return str(name).replace("<locals>.", "")


def callable_location(fn: object) -> str | None:
    code = getattr(fn, "__code__", None)
    if code is None:
        code = getattr(getattr(type(fn), "__call__", None), "__code__", None)  # noqa: B004
    if code is None:
        return None
    try:
        shown = os.path.relpath(code.co_filename)
    except ValueError:
        shown = code.co_filename
    return f"{shown}:{code.co_firstlineno}"
