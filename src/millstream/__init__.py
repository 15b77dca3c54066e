"""millstream: stream processing for Python.

Write a dataflow once; run it record at a time with event-time semantics.

>>> import millstream as ms
>>> flow = ms.Flow("hello")
>>> out = ms.connectors.memory.write()
>>> flow.source(ms.connectors.memory.read(["a", "b"])).map(str.upper).sink(out)
>>> _ = flow.run()
>>> out.values
['A', 'B']
"""

from __future__ import annotations

import logging as _logging

from millstream import agg, cep, changelog, connectors, errors, nexmark, state, stats, testing, windows
from millstream._api import Flow, KeyedStream, Stream, WindowedStream, WindowResult
from millstream._control import JobControl, JobHandle
from millstream._eventtime import WatermarkStrategy
from millstream._expr import Expr, col, lit, when
from millstream._plan import Plan
from millstream._run import MODES, JobStatus, RunConfig, RunResult, StepStatus
from millstream._runtime._keyed import Context, TimerService
from millstream.errors import (
    ConfigError,
    FlowDefinitionError,
    JobError,
    MillstreamError,
    RecordError,
    StepError,
)
from millstream.windows import Window

__version__ = "0.1.0"

_logging.getLogger("millstream").addHandler(_logging.NullHandler())

__all__ = [
    "MODES",
    "ConfigError",
    "Context",
    "Expr",
    "Flow",
    "FlowDefinitionError",
    "JobControl",
    "JobError",
    "JobHandle",
    "JobStatus",
    "KeyedStream",
    "MillstreamError",
    "Plan",
    "RecordError",
    "RunConfig",
    "RunResult",
    "StepError",
    "StepStatus",
    "Stream",
    "TimerService",
    "WatermarkStrategy",
    "Window",
    "WindowResult",
    "WindowedStream",
    "__version__",
    "agg",
    "cep",
    "changelog",
    "col",
    "connectors",
    "errors",
    "lit",
    "nexmark",
    "state",
    "stats",
    "testing",
    "when",
    "windows",
]
