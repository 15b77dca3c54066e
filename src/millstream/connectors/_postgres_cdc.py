"""Change data capture from a PostgreSQL logical replication slot (``pgoutput``), as a changelog.

The public facade is :func:`millstream.connectors.postgres.read_changes`.

psycopg 3 has no replication protocol, so the reader polls with SQL. The job's slot
must keep its WAL until a checkpoint covers what was read, so it is only *advanced*
(``pg_replication_slot_advance``) in :meth:`ChangesReader.acknowledge`; the reader
itself consumes a **temporary copy** of it (``pg_copy_logical_replication_slot``; gone
when the session ends) with ``pg_logical_slot_get_binary_changes``, so each change is
decoded once, not once per poll as peeking the job's slot would.

Positions are LSNs: ``{"slot", "lsn", "partial"}`` where ``lsn`` is the end LSN of the
last transaction handed out whole and ``partial`` ``[end LSN, n]`` a transaction of
which the first ``n`` changes were handed out (a transaction larger than a poll). A
restored or reconnected reader drops the changes a position covers, so none is
handed out twice.

In a job without checkpoints nothing calls ``acknowledge``: the reader then advances
the slot itself, at each poll, past what the previous poll handed out (it was processed).

Changes become :mod:`millstream.changelog` records: an insert ``+I`` (the new row), an
update ``-U`` (the old row) then ``+U`` (the new row), a delete ``-D`` (the old row). The
old row is complete only with ``REPLICA IDENTITY FULL``; with the default identity
(the primary key) ``-U`` and ``-D`` carry the key columns only, which is all a consumer
that applies changes by key needs (an upsert sink, ``final_table(key=...)``).
"""

from __future__ import annotations

import logging
import os
import struct
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from millstream.changelog import CHANGE, DELETE, INSERT, UPDATE_AFTER, UPDATE_BEFORE
from millstream.connectors._base import (
    Backoff,
    ErrorPolicy,
    Source,
    SourceContext,
    SourceReader,
    retry,
)
from millstream.connectors._postgres import connect, describe_dsn, pg_message, scrub
from millstream.errors import ConnectorError, ConnectorUnavailable

if TYPE_CHECKING:
    import psycopg

__all__ = ["ChangesReader", "ChangesSource", "lsn_int", "lsn_text"]

log = logging.getLogger("millstream.connectors.postgres")

_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01 in ms since the Unix epoch
METADATA = ("table", "lsn", "xid", "commit_time")


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class ChangesSource(Source):
    """A logical replication slot as a changelog source. Build it with ``postgres.read_changes``."""

    replay = "redelivery"

    def __init__(self, *, dsn: str, slot: str, publication: str | None, tables: tuple[str, ...] | None,
                 create_slot: bool, bounded: bool, batch_size: int, poll_interval_s: float,
                 metadata: tuple[str, ...], on_error: ErrorPolicy, backoff: Backoff, name: str | None) -> None:
        self.dsn = dsn
        self.slot = slot
        self.publication = publication or f"{slot}_pub"
        self.tables = tables
        self.create_slot = create_slot
        self.bounded = bounded
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.metadata = metadata
        self.on_error = on_error
        self.backoff = backoff
        self.name = name

    def open(self, ctx: SourceContext) -> SourceReader:
        return ChangesReader(self, ctx)

    def describe(self) -> str:
        return f"postgres changes {self.slot}@{describe_dsn(self.dsn)} (publication {self.publication})"

    def default_name(self) -> str:
        return self.name or f"postgres:{self.slot}"


class _Relation:
    __slots__ = ("columns", "keys", "loaders", "name", "primary")

    def __init__(self, name: str, columns: list[str], keys: list[bool], loaders: list[Any],
                 primary: tuple[str, ...]) -> None:
        self.name = name
        self.columns = columns
        self.keys = keys          # the replica identity's columns (all of them under REPLICA IDENTITY FULL)
        self.loaders = loaders
        self.primary = primary    # the primary key (else the identity): a change of it is a delete + insert


class ChangesReader(SourceReader):
    def __init__(self, src: ChangesSource, ctx: SourceContext) -> None:
        self.src = src
        self.ctx = ctx
        self.what = f"postgres source {ctx.step!r}"
        self.address = describe_dsn(src.dsn)
        self.retries = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._tmp: str | None = None
        self._pending: deque[tuple[dict[str, Any], int, int]] = deque()  # (record, txn end LSN, index in txn)
        self._relations: dict[int, _Relation] = {}
        self._primary: dict[int, tuple[str, ...]] = {}
        self._chunk: list[tuple[int, int]] = []
        self._ended = False
        self._idle = False
        self._opts = ("proto_version", "1", "publication_names", src.publication)
        self.end_lsn: int | None = None
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # -- connection, publication and slot ----------------------------------------------------------
    def _on_retry(self, attempt: int, exc: BaseException) -> None:
        self.retries += 1

    def _error(self, problem: str, fix: str | None = None) -> ConnectorError:
        return ConnectorError(scrub(problem, self.src.dsn), connector=self.what, address=self.address, fix=fix)

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.src.dsn, what=self.what, backoff=self.src.backoff, on_retry=self._on_retry)
            self._tmp = None  # a temporary slot dies with its session
            self._pending.clear()
        return self._conn

    def _setup(self) -> None:
        from psycopg import sql

        src, conn = self.src, self.conn
        level = conn.execute("SELECT current_setting('wal_level')").fetchone()[0]  # type: ignore[index]
        if level != "logical":
            raise self._error(f"change capture needs wal_level = logical, and this server has {level!r}",
                              fix="set wal_level = logical (and max_replication_slots >= 2 per reader) in "
                                  "postgresql.conf and restart the server")
        has_pub = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (src.publication,)).fetchone()
        if has_pub is None:
            if not src.tables:
                raise self._error(f"publication {src.publication!r} does not exist",
                                  fix="create it (CREATE PUBLICATION name FOR TABLE ...), or pass tables=(...) "
                                      "to have it created")
            tables = sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in src.tables)
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete')")
                         .format(sql.Identifier(src.publication), tables))
        row = conn.execute("SELECT plugin, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                           (src.slot,)).fetchone()
        if row is None:
            if not src.create_slot:
                raise self._error(f"replication slot {src.slot!r} does not exist",
                                  fix="create it (SELECT pg_create_logical_replication_slot(name, 'pgoutput')) "
                                      "or pass create_slot=True")
            row = conn.execute("SELECT 'pgoutput', lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                               (src.slot,)).fetchone()
            log.info("%s: created replication slot %s at %s", self.what, src.slot, row[1] if row else "?")
        assert row is not None
        if row[0] != "pgoutput":
            raise self._error(f"replication slot {src.slot!r} uses the plugin {row[0]!r}; this source reads pgoutput",
                              fix="use a slot created with pg_create_logical_replication_slot(name, 'pgoutput')")
        self.acked = lsn_int(row[1])
        self.done = self.acked       # end LSN of the last transaction handed out whole
        self.partial: tuple[int, int] | None = None
        if src.bounded:
            self.end_lsn = lsn_int(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]

    def _temporary_slot(self) -> str:
        """The session's temporary copy of the job's slot, moved to what was handed out already."""
        if self._tmp is not None:
            return self._tmp
        conn = self.conn
        tmp = f"{self.src.slot[:30]}_ms_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        try:
            conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s, true)", (self.src.slot, tmp))
        except Exception as exc:
            if getattr(exc, "sqlstate", None) is None:
                raise
            raise self._error(f"cannot copy replication slot {self.src.slot!r}: {pg_message(exc)}",
                              fix="check that the slot exists and max_replication_slots leaves room for one "
                                  "temporary slot per reader") from None
        start = lsn_int(conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                     "WHERE slot_name = %s", (tmp,)).fetchone()[0])  # type: ignore[index]
        if self.done > start:
            conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (tmp, lsn_text(self.done)))
        elif self.done < start:
            # restored from an older checkpoint than the one last acknowledged (at-least-once falls back to
            # one when the newest is unreadable): the slot no longer holds the changes in between
            log.warning("%s: resuming at %s, but slot %s was acknowledged up to %s: the changes in between are "
                        "not read again", self.what, lsn_text(self.done), self.src.slot, lsn_text(start))
            self.done, self.partial = start, None
        self._tmp = tmp
        self._pending.clear()
        return tmp

    # -- reading -----------------------------------------------------------------------------------
    def poll(self, max_records: int) -> list[Any] | None:
        if not self.ctx.checkpointed and self.done > self.acked:
            # no checkpoint will acknowledge: what the last poll handed out was processed, so it is safe
            self.acknowledge(self.snapshot())
        if self._ended:
            return None
        self._idle = False
        if not self._pending:
            got = retry(self._fetch, what=f"{self.what} reading slot {self.src.slot}", backoff=self.src.backoff,
                        on_retry=self._on_retry)
            if not got and not self._pending:
                if self.end_lsn is not None:
                    self._ended = True
                    return None
                self._idle = True
                return []
        out: list[Any] = []
        chunk: list[tuple[int, int]] = []
        pending = self._pending
        while pending and len(out) < max_records:
            record, end, idx = pending.popleft()
            out.append(record)
            chunk.append((end, idx))
            if not pending or pending[0][1] != end:
                self.done, self.partial = end, None
            else:
                self.partial = (end, idx + 1)
        self._chunk = chunk
        return out

    def _fetch(self) -> int:
        """One call of ``pg_logical_slot_get_binary_changes`` (whole transactions); returns the rows."""
        import psycopg

        try:
            self.conn  # noqa: B018 - reconnects (and forgets the temporary slot) if the session is gone
            tmp = self._temporary_slot()
            upto = lsn_text(self.end_lsn) if self.end_lsn is not None else None
            rows = self.conn.execute(
                "SELECT lsn::text, data FROM pg_logical_slot_get_binary_changes(%s, %s::pg_lsn, %s, "
                "%s, %s, %s, %s)", (tmp, upto, self.src.batch_size, *self._opts)).fetchall()
        except psycopg.OperationalError as exc:
            if self._conn is not None and not self._conn.closed:
                raise self._error(f"reading slot {self.src.slot}: {pg_message(exc)}") from None
            raise ConnectorUnavailable(scrub(f"reading slot {self.src.slot}: {pg_message(exc)}", self.src.dsn),
                                       connector=self.what, address=self.address) from None
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) == "42704" and self._tmp is not None and self._tmp in str(exc):
                # the temporary slot went with a session that ended under us: start a new one
                self._tmp = None
                self._pending.clear()
                raise ConnectorUnavailable(f"reading slot {self.src.slot}: the session ended",
                                           connector=self.what, address=self.address) from None
            raise self._error(f"reading slot {self.src.slot}: {pg_message(exc)}") from None
        self._decode(rows)
        return len(rows)

    def _decode(self, rows: list[tuple[str, bytes]]) -> None:
        import psycopg

        txn: list[dict[str, Any]] = []
        meta = self.src.metadata
        xid = 0
        commit_ms = 0
        last_end = 0
        for lsn, data in rows:
            data = bytes(data)
            tag = data[:1]
            if tag == b"B":
                _final, ts, xid = struct.unpack_from(">qqI", data, 1)
                commit_ms = ts // 1000 + _PG_EPOCH_MS
                txn = []
            elif tag == b"C":
                _flags, _commit, end, _ts = struct.unpack_from(">bqqq", data, 1)
                self._add(txn, end, lsn_text(end) if "lsn" in meta else None, xid, commit_ms)
                txn = []
                last_end = max(last_end, end)
            elif tag == b"R":
                self._relation(data)
            elif tag in (b"I", b"U", b"D"):
                try:
                    txn.extend(self._change(tag, data, lsn))
                except (ValueError, ArithmeticError, psycopg.DataError) as exc:  # a value Python cannot hold
                    rel = self._relations.get(struct.unpack_from(">I", data, 1)[0])
                    self.ctx.bad_record(f"a change of {rel.name if rel else 'a table'} has a value that cannot be "
                                        f"converted: {pg_message(exc)}", position=f"{self.src.slot}@{lsn}", raw=data)
            elif tag == b"T":
                self.ctx.bad_record("a TRUNCATE cannot be expressed as a changelog (its rows are not in the WAL)",
                                    position=f"{self.src.slot}@{lsn}", raw=None)
            # O (origin), Y (type), M (message): nothing to hand out
        if not self._pending and self.partial is None and last_end > self.done:
            self.done = last_end  # transactions without changes to hand out: the position moves past them

    def _add(self, txn: list[dict[str, Any]], end: int, lsn: str | None, xid: int, commit_ms: int) -> None:
        if end <= self.done:
            return  # covered by the position handed out (or restored) already
        skip = self.partial[1] if self.partial is not None and self.partial[0] == end else 0
        meta = self.src.metadata
        for i, record in enumerate(txn):
            if i < skip:
                continue
            if meta:
                if "lsn" in meta:
                    record["_lsn"] = lsn
                if "xid" in meta:
                    record["_xid"] = xid
                if "commit_time" in meta:
                    record["_timestamp"] = commit_ms
            self._pending.append((record, end, i))

    def _relation(self, data: bytes) -> None:
        from psycopg.adapt import Transformer
        from psycopg.pq import Format

        (relid,) = struct.unpack_from(">I", data, 1)
        pos = 5
        ns, pos = _cstring(data, pos)
        name, pos = _cstring(data, pos)
        pos += 1  # replica identity
        (ncols,) = struct.unpack_from(">h", data, pos)
        pos += 2
        tx = Transformer(self.conn)
        columns, keys, loaders = [], [], []
        for _ in range(ncols):
            flags = data[pos]
            col, pos = _cstring(data, pos + 1)
            oid, _typmod = struct.unpack_from(">Ii", data, pos)
            pos += 8
            columns.append(col)
            keys.append(bool(flags & 1))
            loaders.append(tx.get_loader(oid, Format.TEXT))
        primary = self._primary.get(relid)
        if primary is None:
            row = self.conn.execute(
                "SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary", (relid,)).fetchone()
            primary = self._primary[relid] = tuple(row[0]) if row and row[0] else tuple(
                c for c, k in zip(columns, keys, strict=True) if k)
        self._relations[relid] = _Relation(name if ns == "public" else f"{ns}.{name}", columns, keys, loaders,
                                           primary)

    def _tuple(self, rel: _Relation, data: bytes, pos: int, *, keys_only: bool = False,
               old: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
        (n,) = struct.unpack_from(">h", data, pos)
        pos += 2
        row: dict[str, Any] = {}
        for i in range(n):
            kind = data[pos:pos + 1]
            pos += 1
            col = rel.columns[i]
            if kind == b"t":
                (size,) = struct.unpack_from(">i", data, pos)
                pos += 4
                row[col] = rel.loaders[i].load(data[pos:pos + size])
                pos += size
            elif kind == b"n":
                if not keys_only or rel.keys[i]:
                    row[col] = None
            elif kind == b"u" and old is not None and col in old:  # unchanged TOASTed value: from the old row
                row[col] = old[col]
        return row, pos

    def _change(self, tag: bytes, data: bytes, lsn: str) -> list[dict[str, Any]]:
        (relid,) = struct.unpack_from(">I", data, 1)
        rel = self._relations.get(relid)
        if rel is None:
            self.ctx.bad_record(f"a change of relation {relid} whose description was not sent",
                                position=f"{self.src.slot}@{lsn}", raw=data)
            return []
        pos = 5
        out: list[dict[str, Any]] = []
        table = {"_table": rel.name} if "table" in self.src.metadata else {}
        old: dict[str, Any] | None = None
        if tag != b"I" and data[pos:pos + 1] in (b"K", b"O"):
            keys_only = data[pos:pos + 1] == b"K"
            old, pos = self._tuple(rel, data, pos + 1, keys_only=keys_only)
            if keys_only:
                old = {c: old[c] for c, k in zip(rel.columns, rel.keys, strict=True) if k and c in old}
        if tag == b"D":
            return [{**(old or {}), **table, CHANGE: DELETE}]
        pos += 1  # 'N'
        new, pos = self._tuple(rel, data, pos, old=old)
        if tag == b"I":
            return [{**new, **table, CHANGE: INSERT}]
        if old is not None and any(k in old and old[k] != new.get(k) for k in rel.primary):
            # the key changed: for a consumer that applies changes by key, the old key's row is gone
            return [{**old, **table, CHANGE: DELETE}, {**new, **table, CHANGE: INSERT}]
        before = old if old is not None else {c: new[c] for c, k in zip(rel.columns, rel.keys, strict=True)
                                               if k and c in new}
        out.append({**before, **table, CHANGE: UPDATE_BEFORE})
        out.append({**new, **table, CHANGE: UPDATE_AFTER})
        return out

    # -- positions -------------------------------------------------------------------------------
    def position_of(self, index: int) -> str | None:
        if 0 <= index < len(self._chunk):
            end, i = self._chunk[index]
            return f"{self.src.slot}@{lsn_text(end)}#{i}"
        return None

    def wait_hint(self) -> float | None:
        return self.src.poll_interval_s if self._idle else None

    def snapshot(self) -> Any:
        return {"slot": self.src.slot, "lsn": lsn_text(self.done),
                "partial": [lsn_text(self.partial[0]), self.partial[1]] if self.partial else None}

    def restore(self, position: Any) -> None:
        if not position:
            return
        self.done = max(lsn_int(position["lsn"]), 0)
        p = position.get("partial")
        self.partial = (lsn_int(p[0]), int(p[1])) if p else None
        self._ended = False
        if self._tmp is not None and self._conn is not None and not self._conn.closed:
            self._conn.execute("SELECT pg_drop_replication_slot(%s)", (self._tmp,))
        self._tmp = None
        self._pending.clear()

    def acknowledge(self, position: Any) -> None:
        """Advance the job's slot to the end of the last whole transaction ``position`` covers."""
        if not position:
            return
        lsn = lsn_int(position["lsn"])
        if lsn <= self.acked:
            return

        def attempt() -> None:
            import psycopg

            try:
                row = self.conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                        "WHERE slot_name = %s", (self.src.slot,)).fetchone()
                if row is None:
                    raise self._error(f"replication slot {self.src.slot!r} was dropped while the job ran")
                if lsn > lsn_int(row[0]):
                    self.conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                                      (self.src.slot, lsn_text(lsn)))
            except psycopg.OperationalError as exc:
                raise ConnectorUnavailable(scrub(f"advancing slot {self.src.slot}: {pg_message(exc)}", self.src.dsn),
                                           connector=self.what, address=self.address) from None

        retry(attempt, what=f"{self.what} acknowledging {lsn_text(lsn)}", backoff=self.src.backoff,
              on_retry=self._on_retry)
        self.acked = lsn

    def metrics(self) -> dict[str, int]:
        return {"retries": self.retries}

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # the temporary slot goes with the session


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode(), end + 1
