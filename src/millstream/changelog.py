"""Changelogs: how an updating result says what changed.

Most steps only ever add records. A few produce results that change as input comes:
an outer regular join (``KeyedStream.join(how="left" | "right" | "full")``) first emits a
row without its partner and later takes it back, and ``KeyedStream.aggregate(...,
changelog=True)`` replaces its key's row on every record. Their output is a *changelog*:
plain dict records, each carrying its change kind under the reserved field ``"_change"``
(the row kinds of Flink):

====== =================================================================
``+I`` insert: the row is now part of the result
``-U`` update before: the key's previous row, about to be replaced (a ``+U`` follows)
``+U`` update after: the key's new row
``-D`` delete: the row (equal to one inserted before) is no longer part of the result
====== =================================================================

A record without the field is an insert, so an append-only stream is a changelog too.
The records stay plain dicts, so ``map``, ``filter`` and sinks work on them as on any
other record (a step that builds new dicts must carry ``"_change"`` over to keep it).

Applying a changelog in order gives the result as a table: :func:`final_table`, or
``CollectSink.table()`` in tests, or the ``millstream.connectors.memory.upsert`` sink,
which keeps one row per key (``-D`` deletes the key, ``-U`` is skipped because its ``+U``
follows, ``+I``/``+U`` replace the key's row).

>>> from millstream import changelog
>>> log = [{"k": "a", "n": 1, "_change": "+I"},
...        {"k": "a", "n": 1, "_change": "-U"}, {"k": "a", "n": 2, "_change": "+U"},
...        {"k": "b", "n": 5, "_change": "+I"}, {"k": "b", "n": 5, "_change": "-D"}]
>>> changelog.final_table(log)
[{'k': 'a', 'n': 2}]
>>> changelog.final_table(log, key="k")
[{'k': 'a', 'n': 2}]
>>> [changelog.is_retraction(r) for r in log]
[False, True, False, False, True]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

__all__ = [
    "CHANGE",
    "DELETE",
    "INSERT",
    "KINDS",
    "UPDATE_AFTER",
    "UPDATE_BEFORE",
    "change_of",
    "final_table",
    "is_retraction",
    "strip",
    "with_change",
]

#: the reserved field that holds a record's change kind
CHANGE: Final = "_change"
INSERT: Final = "+I"
UPDATE_BEFORE: Final = "-U"
UPDATE_AFTER: Final = "+U"
DELETE: Final = "-D"
KINDS: Final = (INSERT, UPDATE_BEFORE, UPDATE_AFTER, DELETE)
_RETRACTIONS = frozenset({UPDATE_BEFORE, DELETE})

Key = str | tuple[str, ...] | Callable[[Any], Any]


def change_of(record: Any) -> str:
    """The change kind of ``record``: its ``"_change"`` field, ``"+I"`` when it has none."""
    if isinstance(record, Mapping):
        kind = record.get(CHANGE, INSERT)
        if kind not in KINDS:
            raise ValueError(f"{CHANGE!r} must be one of {', '.join(KINDS)}, not {kind!r}, in {record!r:.200}")
        return str(kind)
    return INSERT


def is_retraction(record: Any) -> bool:
    """Whether ``record`` takes a row back (``-U`` or ``-D``)."""
    return isinstance(record, Mapping) and record.get(CHANGE) in _RETRACTIONS


def with_change(record: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A copy of ``record`` marked with change kind ``kind``."""
    return {**record, CHANGE: kind}


def strip(record: Any) -> Any:
    """``record`` without its change kind (records that have none are returned as they are)."""
    if isinstance(record, Mapping) and CHANGE in record:
        return {k: v for k, v in record.items() if k != CHANGE}
    return record


def _freeze(v: Any) -> Any:
    if isinstance(v, Mapping):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, set | frozenset):
        return frozenset(_freeze(x) for x in v)
    return v


def _key_reader(key: Key) -> Callable[[Any], Any]:
    if callable(key):
        return key
    if isinstance(key, str):
        return lambda r: r[key]
    fields = tuple(key)
    return lambda r: tuple(r[f] for f in fields)


def final_table(records: Iterable[Any], key: Key | None = None) -> list[Any]:
    """The table a changelog describes: its changes applied in order, rows without ``"_change"``.

    Without ``key`` the table is a multiset of rows: an insert (``+I``/``+U``, or a record
    without a kind) adds its row, a retraction (``-U``/``-D``) removes one row equal to it
    (a :class:`ValueError` if there is none: the changelog is broken). With ``key`` (a
    field, a tuple of fields or a function of the row) the table holds one row per key,
    as the ``upsert`` sink keeps it: an insert replaces the key's row, ``-D`` deletes it,
    ``-U`` is skipped (the ``+U`` that follows replaces the row). Rows come in the order
    their key (or, without one, their value) was inserted.
    """
    if key is not None:
        read = _key_reader(key)
        table: dict[Any, Any] = {}
        for r in records:
            row = strip(r)
            k = read(row)
            kind = change_of(r)
            if kind == DELETE:
                table.pop(k, None)
            elif kind != UPDATE_BEFORE:  # skipped: the +U that follows replaces the row in place
                table[k] = row
        return list(table.values())
    rows: dict[Any, list[Any]] = {}
    for r in records:
        row = strip(r)
        ident = _freeze(row)
        if is_retraction(r):
            same = rows.get(ident)
            if not same:
                raise ValueError(f"a retraction of a row that is not in the table: {r!r:.200}")
            same.pop()
            if not same:
                del rows[ident]
        else:
            change_of(r)
            rows.setdefault(ident, []).append(row)
    return [row for same in rows.values() for row in same]
