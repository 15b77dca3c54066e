"""Delivery guarantees: which ones exist, and whether a plan's connectors can give one.

A guarantee is only as strong as its weakest connector:

- ``"none"``: nothing is checked (and no checkpoint is needed).
- ``"at-most-once"``: nothing is replayed, so any source will do; the sinks must be
  able to continue their output after a restart.
- ``"at-least-once"``: after a crash the sources replay from the last checkpoint,
  so every source must replay (``Source.replay`` is ``"position"`` or
  ``"redelivery"``); sinks may repeat records, but must be able to continue their
  output.
- ``"exactly-once"``: replayable sources, and every sink (dead-letter sinks of
  the sources' ``on_error`` policies too) ``transactional`` (two-phase commit with
  checkpoints) or ``idempotent`` (a rewrite replaces).

:func:`check_guarantee` is called while the flow is built (before anything runs)
and raises a :class:`~millstream.errors.GuaranteeError` naming the weak link: its
step, the user's line that added it, and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from millstream._plan import Plan, SinkOp, SourceOp
from millstream.connectors._base import DeadLetter, Sink
from millstream.errors import ConfigError, GuaranteeError

__all__ = ["GUARANTEES", "check_guarantee", "weak_links"]

#: The delivery guarantees, weakest first.
GUARANTEES: tuple[str, ...] = ("none", "at-most-once", "at-least-once", "exactly-once")

_EXACT_DELIVERY = ("transactional", "idempotent")
_REPLAYABLE = ("use a replayable source (files, memory, generator, nexmark, testing.TestSource; or a broker that "
               "replays by position or redelivery: kafka, redis, nats, rabbitmq, mqtt at QoS 1, postgres.read_changes)")
_EXACT_SINK = ("use a sink that commits with checkpoints or overwrites by key: "
               "files.write(dir, transactional=True), memory.upsert(key=...), testing.TransactionalCollectSink(), "
               "kafka.write(..., transactional_id=...), postgres.write(..., mode='upsert' or 'transactional')")


@dataclass(frozen=True)
class WeakLink:
    """A connector that cannot give the guarantee asked for: what, where and how to fix it."""

    problem: str
    step: str
    location: str | None
    fix: str

    def error(self) -> GuaranteeError:
        return GuaranteeError(self.problem, step=self.step, location=self.location, fix=self.fix)


def check_guarantee(plan: Plan, guarantee: str) -> None:
    """Raise a :class:`GuaranteeError` naming the first connector of ``plan`` that cannot
    give ``guarantee`` (the message counts the others), or a :class:`ConfigError` if
    ``guarantee`` is not one of :data:`GUARANTEES`."""
    links = weak_links(plan, guarantee)
    if not links:
        return
    first = links[0]
    if len(links) > 1:
        others = ", ".join(f"{w.step!r}{f' at {w.location}' if w.location else ''}" for w in links[1:])
        more = "another weak link" if len(links) == 2 else f"{len(links) - 1} more weak links"
        first = WeakLink(f"{first.problem}; {more}: {others}", first.step, first.location, first.fix)
    raise first.error()


def weak_links(plan: Plan, guarantee: str) -> list[WeakLink]:
    """Every connector of ``plan`` that cannot give ``guarantee``, sources first, in plan order."""
    if guarantee not in GUARANTEES:
        raise ConfigError(f"guarantee must be one of {', '.join(map(repr, GUARANTEES))}, not {guarantee!r}")
    if guarantee == "none":
        return []
    links: list[WeakLink] = []
    sinks: list[tuple[Sink, str, str | None]] = []
    for node in plan.nodes:
        if isinstance(node.op, SinkOp):
            sinks.append((node.op.connector, node.name, node.location))
        if not isinstance(node.op, SourceOp):
            continue
        src = node.op.connector
        if guarantee in ("at-least-once", "exactly-once") and not src.replayable:
            links.append(WeakLink(
                f"{guarantee} needs sources that can replay from a checkpoint, and {src.describe()} cannot",
                node.name, node.location,
                f"{_REPLAYABLE}, or ask for guarantee='at-most-once'"))
        elif guarantee == "exactly-once" and not src.replays_exactly:
            links.append(WeakLink(
                f"exactly-once needs sources that give each record once after a restart, and {src.describe()} "
                "cannot tell a redelivered record from a new one",
                node.name, node.location,
                "give the source a way to recognise redeliveries (rabbitmq.read(..., dedup_by='message_id' or a "
                "field)), or ask for guarantee='at-least-once'"))
        if isinstance(src.on_error, DeadLetter):
            sinks.append((src.on_error.sink, f"{node.name}.dead-letter", node.location))
    for sink, step, location in sinks:
        if guarantee == "exactly-once" and sink.delivery not in _EXACT_DELIVERY:
            weaker = "'at-least-once' (a restart may repeat records)"
            links.append(WeakLink(
                f"exactly-once needs sinks that commit with checkpoints or overwrite by key, and "
                f"{sink.describe()} (delivery {sink.delivery!r}) would repeat records after a restart",
                step, location, f"{_EXACT_SINK}; or ask for guarantee={weaker}"))
        elif not sink.resumable:
            links.append(WeakLink(
                f"{guarantee} needs sinks that can go on after a restart, and {sink.describe()} cannot "
                f"(a Parquet file is whole only once it is closed)",
                step, location,
                "write a directory of part files committed with each checkpoint: "
                "files.write(dir, format='parquet', transactional=True)"))
    return links
