"""The engine behind :mod:`millstream.cep`: a pattern compiled to partial-match lists per key,
run inside a keyed process step (state and event-time timers of the existing machinery)."""

from ._runner import LATE, MATCH, TIMEOUT, build_runner, unwrapper

__all__ = ["LATE", "MATCH", "TIMEOUT", "build_runner", "unwrapper"]
