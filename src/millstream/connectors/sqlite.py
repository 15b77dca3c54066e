"""SQLite tables for lookup joins (the standard library's ``sqlite3``; nothing to install).

>>> import sqlite3, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "users.db")
>>> with sqlite3.connect(path) as db:
...     _ = db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
...     _ = db.executemany("INSERT INTO users VALUES (?, ?)", [(1, "ana"), (2, "bo")])
>>> users = table(path, "users", key="id")
>>> users.open()
>>> users.fetch([1, 3])
{1: {'id': 1, 'name': 'ana'}}
>>> users.close()
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from millstream.connectors._lookup import LookupTable, LookupTableError

__all__ = ["SqliteTable", "table"]

#: keys per ``SELECT ... WHERE key IN (...)``: below SQLite's limit on bound parameters
_MAX_PARAMS = 900


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteTable:
    """One table of a SQLite database, read by key. Build it with :func:`table`.

    Each thread that fetches gets its own read-only connection; ``close()`` closes them all.
    Rows are dicts of the selected columns (every column by default).
    """

    def __init__(self, path: str | os.PathLike[str], table: str, *, key: str,
                 columns: Sequence[str] | None = None) -> None:
        self.path = os.fspath(path)
        self.table = table
        self.key = key
        self.columns = tuple(columns) if columns is not None else None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._generation = 0
        self._sql: str | None = None
        self._names: tuple[str, ...] = ()
        self._key_index = 0

    # -- value semantics: plans compare and pickle their steps ----------------------------------
    def _identity(self) -> tuple[Any, ...]:
        return (self.path, self.table, self.key, self.columns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SqliteTable) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "table": self.table, "key": self.key, "columns": self.columns}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["table"], key=state["key"], columns=state["columns"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"sqlite.table({self.path!r}, {self.table!r}, key={self.key!r})"

    def describe(self) -> str:
        return f"sqlite {self.path}:{self.table}.{self.key}"

    # -- lifecycle -------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if not os.path.exists(self.path):
            raise LookupTableError(f"SQLite database {self.path!r} does not exist",
                                   fix="create it first, or pass the path of an existing database")
        uri = "file:" + os.path.abspath(self.path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        with self._lock:
            self._conns.append(conn)
        return conn

    def open(self) -> None:
        """Check that the table and its columns exist and prepare the query."""
        conn = self._conn()
        rows = conn.execute(f"PRAGMA table_info({_ident(self.table)})").fetchall()
        existing = [r[1] for r in rows]
        if not existing:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                                 "ORDER BY name")]
            raise LookupTableError(
                f"SQLite database {self.path!r} has no table {self.table!r} (tables: {', '.join(tables) or 'none'})",
                fix="pass the name of one of its tables to millstream.connectors.sqlite.table(path, table, key=...)")
        wanted = (self.key, *(self.columns or ()))
        missing = [c for c in wanted if c not in existing]
        if missing:
            raise LookupTableError(
                f"table {self.table!r} of {self.path!r} has no column {', '.join(map(repr, missing))} "
                f"(columns: {', '.join(existing)})",
                fix="name existing columns in key=... and columns=...")
        names = self.columns if self.columns is not None else tuple(existing)
        if self.key not in names:
            names = (self.key, *names)
        self._names = names
        self._key_index = names.index(self.key)
        # identifiers quoted by _ident, checked against the table's columns above; keys are bound parameters
        self._sql = (f"SELECT {', '.join(map(_ident, names))} FROM {_ident(self.table)} "  # noqa: S608
                     f"WHERE {_ident(self.key)} IN ")

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "generation", None) != self._generation or getattr(local, "conn", None) is None:
            local.conn = self._connect()
            local.generation = self._generation
        conn: sqlite3.Connection = local.conn
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            self._generation += 1
        for conn in conns:
            conn.close()

    # -- reading ---------------------------------------------------------------------------------
    def fetch(self, keys: Sequence[Any]) -> Mapping[Any, Any]:
        """The rows of those of ``keys`` the table holds, by key (one query per 900 keys)."""
        if self._sql is None:
            self.open()
        sql, names, ki = self._sql, self._names, self._key_index
        assert sql is not None
        conn = self._conn()
        out: dict[Any, Any] = {}
        for i in range(0, len(keys), _MAX_PARAMS):
            part = keys[i:i + _MAX_PARAMS]
            for row in conn.execute(sql + "(" + ",".join("?" * len(part)) + ")", tuple(part)):
                out[row[ki]] = dict(zip(names, row, strict=True))
        return out


def table(path: str | os.PathLike[str], table: str, *, key: str, columns: Sequence[str] | None = None) -> SqliteTable:
    """A SQLite table to look rows up in by column ``key`` (read only).

    ``columns`` picks the columns each row carries (default: all, the key included).
    The database is opened when the job starts, which fails with a clear error if the
    file, the table or a column is missing.
    """
    t = SqliteTable(path, table, key=key, columns=columns)
    assert isinstance(t, LookupTable)
    return t
