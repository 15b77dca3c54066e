"""The one exception tree of millstream.

Every error millstream raises on purpose derives from :class:`MillstreamError`,
and also from the builtin exception that fits it best, so that ``except
ValueError`` keeps working for code that does not know millstream::

    MillstreamError
    ├── FlowDefinitionError (ValueError)     a flow is built wrong; raised while building
    │   └── GuaranteeError                   the connectors cannot give the asked guarantee
    ├── ConfigError (ValueError)             a bad option to run(), the CLI or a connector
    ├── MissingDependencyError (ImportError) an optional extra is not installed
    ├── RecordError (ValueError)             a malformed input record (source + position)
    └── JobError (RuntimeError)              a running job failed
        ├── StepError                        a user function raised inside a step
        ├── CheckpointError                  a checkpoint is corrupt, partial or from another flow
        │   └── CheckpointOwnershipError     another run owns the checkpoint directory, or took it over
        └── ConnectorError                   a connector cannot use its system (fatal: auth, missing topic)
            └── ConnectorUnavailable (ConnectionError)  the system may come back (down, timeout): retried

Warnings: :class:`PerformanceWarning` (a UserWarning, in the tree too) says that a step will run
much slower than it could, and how to write it faster.

Errors raised while building name the step, the user's file and line, and the fix.
Errors raised while running name the step, the key, the event time and the
position of the record in its source.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "CheckpointOwnershipError",
    "ConfigError",
    "ConnectorError",
    "ConnectorUnavailable",
    "FlowDefinitionError",
    "GuaranteeError",
    "JobError",
    "MillstreamError",
    "MissingDependencyError",
    "PerformanceWarning",
    "RecordError",
    "StepError",
]


class MillstreamError(Exception):
    """Base class of every error millstream raises on purpose."""


class FlowDefinitionError(MillstreamError, ValueError):
    """A flow was built wrong. Raised while the flow is built, before anything runs.

    ``step`` is the name of the step, ``location`` the ``file:line`` of the user's
    code that added it, ``fix`` a sentence that says how to mend it.
    """

    def __init__(
        self, problem: str, *, step: str | None = None, location: str | None = None, fix: str | None = None
    ) -> None:
        self.problem = problem
        self.step = step
        self.location = location
        self.fix = fix
        parts = []
        if step is not None:
            parts.append(f"step {step!r}")
        if location is not None:
            parts.append(f"at {location}")
        head = (" ".join(parts) + ": ") if parts else ""
        msg = head + problem
        if fix:
            msg += f"\n  fix: {fix}"
        super().__init__(msg)


class GuaranteeError(FlowDefinitionError):
    """The delivery guarantee asked for cannot be given by the flow's connectors."""


class ConfigError(MillstreamError, ValueError):
    """A bad option: to ``run()``, to the CLI, or to a connector."""


class MissingDependencyError(MillstreamError, ImportError):
    """An optional dependency is missing; the message names the pip extra to install."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the Python package {package!r}, which is not installed.\n"
            f"  fix: pip install 'millstream[{extra}]'"
        )


class RecordError(MillstreamError, ValueError):
    """A malformed input record. ``source`` and ``position`` say where it came from."""

    def __init__(self, problem: str, *, source: str, position: str, raw: Any = None) -> None:
        self.problem = problem
        self.source = source
        self.position = position
        self.raw = raw
        super().__init__(f"bad record in source {source!r} at {position}: {problem}")


class JobError(MillstreamError, RuntimeError):
    """A running job failed."""


class StepError(JobError):
    """A user function raised while a step processed a record.

    The original exception is ``__cause__``. ``step``, ``location`` (where the
    step was defined), ``key``, ``event_time`` (ms since the epoch, or None) and
    ``position`` (where the record came from, e.g. ``events.jsonl:42``) say
    which record it was.
    """

    def __init__(
        self,
        *,
        step: str,
        location: str | None,
        error: BaseException,
        key: Any = None,
        has_key: bool = False,
        event_time: int | None = None,
        position: str | None = None,
        record: Any = None,
    ) -> None:
        self.step = step
        self.location = location
        self.error = error
        self.key = key
        self.event_time = event_time
        self.position = position
        self.record = record
        where = f" (defined at {location})" if location else ""
        lines = [f"step {step!r}{where} raised {type(error).__name__}: {error}"]
        if position is not None:
            lines.append(f"  record from: {position}")
        if has_key:
            lines.append(f"  key: {key!r}")
        if event_time is not None:
            from millstream._time import format_ms

            lines.append(f"  event time: {event_time} ({format_ms(event_time)})")
        if record is not None:
            text = repr(record)
            lines.append(f"  record: {text[:300]}{'...' if len(text) > 300 else ''}")
            hint = _missing_field_hint(error, record)
            if hint:
                lines.append(f"  hint: {hint}")
        super().__init__("\n".join(lines))


def _missing_field_hint(error: BaseException, record: Any) -> str | None:
    """For a KeyError on a dict record: the field names that come close to the one asked for."""
    if not (isinstance(error, KeyError) and isinstance(record, dict) and error.args):
        return None
    missing = error.args[0]
    if not isinstance(missing, str) or missing in record:
        return None
    import difflib

    names = [k for k in record if isinstance(k, str)]
    close = difflib.get_close_matches(missing, names, n=3, cutoff=0.6)
    fields = ", ".join(map(repr, names[:20])) + (", ..." if len(names) > 20 else "")
    if close:
        return f"the record has no field {missing!r}; did you mean {' or '.join(map(repr, close))}? (fields: {fields})"
    return f"the record has no field {missing!r} (fields: {fields})"


class CheckpointError(JobError):
    """A checkpoint cannot be used: corrupt, partial, or written by another flow."""


class CheckpointOwnershipError(CheckpointError):
    """A checkpoint directory has one owner: another live run holds it, or took it over (this run is fenced)."""


class ConnectorError(JobError):
    """A connector cannot use its system: authentication failed, a topic or table is missing, the
    broker refused a request. ``connector`` names it (``"kafka source 'orders'"``), ``address`` says
    where (secrets removed), ``fix`` how to mend it. Raised as is, it is fatal: the job fails (or
    restarts from its checkpoint when ``restarts`` allow)."""

    retryable = False

    def __init__(self, problem: str, *, connector: str, address: str | None = None, fix: str | None = None) -> None:
        self.problem = problem
        self.connector = connector
        self.address = address
        self.fix = fix
        where = f" at {address}" if address else ""
        msg = f"{connector}{where}: {problem}"
        if fix:
            msg += f"\n  fix: {fix}"
        super().__init__(msg)


class ConnectorUnavailable(ConnectorError, ConnectionError):
    """The system may come back: the broker is down, a request timed out, the connection dropped.
    Connectors retry it with backoff (:func:`millstream.connectors.retry`) and say so in the log."""

    retryable = True


class PerformanceWarning(MillstreamError, UserWarning):
    """A step runs much slower than it could (e.g. a Python function per row in micro-batch mode)."""
