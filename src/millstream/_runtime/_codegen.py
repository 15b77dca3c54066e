"""Compile generated loops, keeping their source for tracebacks and error mapping."""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

_counter = itertools.count()


class Generated:
    """Source lines under construction, with a step attached to each line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.line_step: dict[int, Any] = {}

    def add(self, indent: int, text: str, step: Any = None) -> None:
        self.lines.append("    " * indent + text)
        if step is not None:
            self.line_step[len(self.lines)] = step

    def compile(self, name: str, env: dict[str, Any], fn_name: str) -> tuple[Callable[..., Any], str]:
        filename = f"<millstream:{name}:{next(_counter)}>"
        source = "\n".join(self.lines) + "\n"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        code = compile(source, filename, "exec")
        exec(code, env)  # noqa: S102 - our own generated source
        return env[fn_name], filename


def step_at(tb: TracebackType | None, filename: str, line_step: dict[int, Any]) -> Any:
    """The step whose generated line was running when the exception was raised."""
    step = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            step = line_step.get(tb.tb_lineno, step)
        tb = tb.tb_next
    return step


def frame_local(tb: TracebackType | None, filename: str, name: str) -> Any:
    """A local variable of the generated frame at the moment it raised."""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            return tb.tb_frame.f_locals.get(name)
        tb = tb.tb_next
    return None


def index_of(obj: Any, seq: Sequence[Any]) -> int | None:
    for i, x in enumerate(seq):
        if x is obj:
            return i
    return None


def field_src(field: str) -> str:
    return f"[{field!r}]"
