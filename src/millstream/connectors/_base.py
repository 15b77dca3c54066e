"""What a connector is: sources that read, sinks that write, and the bad-record policy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from millstream.errors import ConfigError, RecordError

if TYPE_CHECKING:
    from millstream._clock import Clock

__all__ = ["DeadLetter", "ErrorPolicy", "Sink", "SinkWriter", "Source", "SourceContext", "SourceReader",
           "dead_letter"]


@dataclass(frozen=True)
class DeadLetter:
    """Send bad records to ``sink`` as ``{"source", "position", "error", "raw"}`` rows."""

    sink: Sink


ErrorPolicy = Literal["fail", "skip"] | DeadLetter
"""What a source does with a malformed record: ``"fail"`` the job (default),
``"skip"`` it (counted), or send it to a dead-letter sink."""


def dead_letter(sink: Sink) -> DeadLetter:
    """Error policy that writes bad records to ``sink``."""
    if not isinstance(sink, Sink):
        raise ConfigError(f"dead_letter() takes a sink connector, not {sink!r}")
    return DeadLetter(sink)


def check_policy(policy: Any) -> ErrorPolicy:
    if policy in ("fail", "skip") or isinstance(policy, DeadLetter):
        return policy  # type: ignore[no-any-return]
    raise ConfigError(
        f"on_error must be 'fail', 'skip' or millstream.connectors.dead_letter(sink), not {policy!r}"
    )


class SourceContext:
    """Handed to a source reader when it opens: the clock and the bad-record policy."""

    def __init__(
        self,
        *,
        step: str,
        clock: Clock,
        policy: ErrorPolicy,
        dead_letter_write: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.step = step
        self.clock = clock
        self.policy = policy
        self.skipped = 0
        self.dead_lettered = 0
        self._dead_letter_write = dead_letter_write

    def bad_record(self, problem: str, *, position: str, raw: Any = None) -> None:
        """Report a malformed record. Raises :class:`RecordError` under the ``fail`` policy."""
        err = RecordError(problem, source=self.step, position=position, raw=raw)
        if self.policy == "fail":
            raise err
        if self.policy == "skip":
            self.skipped += 1
            return
        assert self._dead_letter_write is not None
        self.dead_lettered += 1
        self._dead_letter_write(
            {"source": self.step, "position": position, "error": problem, "raw": _printable(raw)}
        )


def _printable(raw: Any) -> Any:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return raw


class SourceReader(ABC):
    """A running source: the executor polls it for records."""

    @abstractmethod
    def poll(self, max_records: int) -> list[Any] | None:
        """Up to ``max_records`` records; ``[]`` when none are ready now; ``None`` once the input has ended."""

    def position_of(self, index: int) -> str | None:
        """Where record ``index`` of the last poll came from (e.g. ``events.jsonl:42``)."""
        return None

    def wait_hint(self) -> float | None:
        """Seconds until a record may be ready, when the reader knows (a rate-limited generator)."""
        return None

    def watermark(self) -> int | None:
        """A watermark the source itself knows (scripted test sources); None to use the strategy's."""
        return None

    def snapshot(self) -> Any:
        """The reader's position, for checkpoints."""
        return None

    def restore(self, position: Any) -> None:
        """Continue from a position taken by :meth:`snapshot`."""

    def close(self) -> None:
        """Release files and connections."""


class Source(ABC):
    """A declared input. ``open`` is called when the job runs, never while it is built."""

    #: Whether the input ends by itself.
    bounded: bool = True
    #: Whether the source can restart from a position taken by ``snapshot``.
    replayable: bool = False
    on_error: ErrorPolicy = "fail"

    @abstractmethod
    def open(self, ctx: SourceContext) -> SourceReader:
        """Start reading."""

    @abstractmethod
    def describe(self) -> str:
        """A short text for plans and progress, e.g. ``jsonl events.jsonl``."""

    def default_name(self) -> str:
        return "source"


class SinkWriter(ABC):
    """A running sink.

    Transactional sinks (``Sink.delivery == "transactional"``) take part in
    checkpoints with two-phase commit: at a checkpoint, :meth:`pre_commit` makes
    everything written since the previous one durable but invisible and returns a
    picklable transaction; once the checkpoint is complete, :meth:`commit` makes it
    visible. After a crash, :meth:`recover` gets the transactions of the checkpoint
    the job resumes from: it commits them (commit is idempotent) and discards any
    other pending output, so nothing written after that checkpoint stays visible.
    """

    @abstractmethod
    def write(self, records: list[Any], times: list[int] | None) -> None:
        """Write a chunk of records (``times`` their event times, when the stream has them)."""

    def flush(self) -> None:
        """Make written records durable/visible."""

    def begin(self, *, checkpointed: bool) -> None:
        """Called right after the writer opens. With ``checkpointed`` True, :meth:`recover`
        comes before any write, and a :meth:`close` before it (the job failed while starting)
        must leave every earlier output as it is."""

    def pre_commit(self, checkpoint_id: int) -> Any:
        """Checkpoint ``checkpoint_id`` is being taken: seal what was written since the last one.

        Returns a picklable transaction handle (stored in the checkpoint). The default
        flushes and returns None: fine for sinks that are not transactional.
        """
        self.flush()
        return None

    def commit(self, transaction: Any) -> None:
        """Make a pre-committed transaction visible. Must be idempotent: it may run again after a crash."""

    def recover(self, transactions: list[Any]) -> None:
        """Before writing anything after a restart: commit ``transactions`` (from the restored
        checkpoint) and discard every other pending, uncommitted output."""

    def close(self) -> None:
        """Flush and release resources."""
        self.flush()


class Sink(ABC):
    """A declared output.

    ``delivery`` says what the sink can promise under replay: ``"transactional"``
    (two-phase commit with checkpoints: exactly-once), ``"idempotent"`` (writing a
    record again replaces it, e.g. an upsert by key: exactly-once in effect), or
    ``"none"`` (a replay writes duplicates: at-least-once at best).
    """

    delivery: str = "none"

    @abstractmethod
    def open(self, step: str) -> SinkWriter:
        """Start writing."""

    @abstractmethod
    def describe(self) -> str:
        """A short text for plans and progress."""

    def default_name(self) -> str:
        return "sink"
