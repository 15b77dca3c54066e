"""The contract of an external table that a lookup join reads: ``fetch(keys) -> {key: row}``.

A lookup join (``stream.lookup(table, key=...)``) asks its table for the rows of a batch
of keys at once; keys the table does not hold are simply absent from the answer. ``fetch``
may be called from several threads at once (the join keeps a few batches in flight), so
an implementation opens one connection per thread or guards a shared one.

Two optional hooks: ``open()`` is called when the job starts (check the table exists and
raise :class:`LookupTableError` if not) and ``close()`` when it ends; ``describe()`` gives
the text shown in the plan. An optional attribute ``key`` names the rows' key field: a record
looked up by a field of the same name keeps one copy of it in the default output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from millstream.errors import ConfigError

__all__ = ["LookupTable", "LookupTableError"]


@runtime_checkable
class LookupTable(Protocol):
    """An external keyed table: ``fetch(keys)`` returns the rows of those of ``keys`` it holds."""

    def fetch(self, keys: Sequence[Any]) -> Mapping[Any, Any]:
        """The row of each key found, by key; keys not found are left out."""
        ...


class LookupTableError(ConfigError):
    """The table cannot be read as declared: no such database, table or column.

    ``fix`` says how to mend it; the lookup step that uses the table adds its name and line.
    """

    def __init__(self, problem: str, *, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem + (f"\n  fix: {fix}" if fix else ""))
