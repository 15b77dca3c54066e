"""PostgreSQL sinks (append by COPY, upsert by key, two-phase commit) and lookup tables.

The public facade is :mod:`millstream.connectors.postgres`; the change-data-capture
source lives in ``_postgres_cdc``. Everything here imports psycopg lazily (the facade
checks that it is installed when a sink or table is declared).

The three sink modes write the same rows; they differ in when rows become visible and
what a replay after a crash does:

- ``append``: buffered rows go in with ``COPY ... FROM STDIN`` (text format, so the
  server converts to the column types), flushed every ``batch_size`` rows and at each
  checkpoint. A replay appends again (``delivery == "none"``).
- ``upsert``: a batch is deduplicated by key (the last change of a key wins), COPYed into
  a temporary stage and merged with ``INSERT ... ON CONFLICT (key) DO UPDATE``; a
  changelog's ``-D`` deletes its key. Writing a record again leaves the same row, so a
  replay changes nothing in the end (``delivery == "idempotent"``).
- ``transactional``: the rows of one checkpoint interval go in one transaction,
  ``PREPARE TRANSACTION``-ed at the checkpoint and ``COMMIT PREPARED`` once it is
  complete (``delivery == "transactional"``). The same transaction inserts its id into
  ``millstream_commits``, so a commit that finds no prepared transaction can tell
  "committed before" (the row is there) from "lost" (it is not).
"""

from __future__ import annotations

import datetime
import decimal
import logging
import operator
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from millstream.changelog import CHANGE, DELETE, UPDATE_BEFORE
from millstream.connectors._base import Backoff, Sink, SinkWriter, redact_url, retry
from millstream.connectors._lookup import LookupTableError
from millstream.errors import ConnectorError, ConnectorUnavailable, JobError

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresSink", "PostgresTable", "connect", "describe_dsn", "pg_message", "scrub"]

log = logging.getLogger("millstream.connectors.postgres")

COMMITS_TABLE = "millstream_commits"

# SQLSTATE classes/codes that no retry mends
_FATAL_CONNECT = ("28", "3D")  # invalid authorization, invalid catalog name (no such database)
_UNDEFINED_OBJECT = "42704"    # e.g. "prepared transaction with identifier ... does not exist"


# -- connections, secrets and names -----------------------------------------------------------


def _conninfo(dsn: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return dict(conninfo_to_dict(dsn))
    except Exception:  # noqa: BLE001 - a malformed DSN: say so without echoing it
        return {}


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` of a DSN (URL or ``key=value``), never its password."""
    if "://" in dsn:
        red = redact_url(dsn)
        return red.split("://", 1)[1].split("?", 1)[0].replace(":***@", "@")
    info = _conninfo(dsn)
    user = info.get("user", "")
    host = info.get("host") or info.get("hostaddr") or "localhost"
    port = info.get("port", "5432")
    return f"{user + '@' if user else ''}{host}:{port}/{info.get('dbname', '')}"


def scrub(text: str, dsn: str) -> str:
    """``text`` with the DSN's password (and the DSN itself) replaced: safe for errors and logs."""
    password = _conninfo(dsn).get("password")
    if dsn and dsn in text:
        text = text.replace(dsn, describe_dsn(dsn))
    if password:
        text = text.replace(str(password), "***")
    return text


def pg_message(exc: BaseException) -> str:
    """The server's one-line message of a psycopg error (without the LINE/caret context)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return str(primary)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", None) or "")


def connect(dsn: str, *, what: str, backoff: Backoff, autocommit: bool = True,
            on_retry: Callable[[int, BaseException], None] | None = None) -> psycopg.Connection[Any]:
    """A connection to ``dsn``, retrying while the server is unreachable; a fatal problem
    (authentication, no such database) raises :class:`ConnectorError` at once."""
    import psycopg

    address = describe_dsn(dsn)

    def attempt() -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10)
        except psycopg.OperationalError as exc:
            msg = scrub(str(exc).strip(), dsn)
            if _sqlstate(exc)[:2] in _FATAL_CONNECT or "authentication" in msg or "does not exist" in msg:
                raise ConnectorError(f"cannot connect: {msg}", connector=what, address=address,
                                     fix="check the user, password and database name in dsn=") from None
            raise ConnectorUnavailable(f"cannot connect: {msg}", connector=what, address=address) from None

    return retry(attempt, what=f"{what} connecting to {address}", backoff=backoff, on_retry=on_retry)


def _ident(name: str) -> Any:
    """A possibly schema-qualified name (``schema.table``) as a quoted SQL identifier."""
    from psycopg import sql

    return sql.Identifier(*name.split(".", 1))


def _cols(names: Sequence[str]) -> Any:
    from psycopg import sql

    return sql.SQL(", ").join(map(sql.Identifier, names))


def _pg_type(value: Any) -> str:
    """The column type ``create=True`` gives a field, from its first value."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, decimal.Decimal):
        return "numeric"
    if isinstance(value, dict | list | tuple):
        return "jsonb"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytea"
    if isinstance(value, datetime.datetime):
        return "timestamptz" if value.tzinfo is not None else "timestamp"
    if isinstance(value, datetime.date):
        return "date"
    return "text"


_JSON_TYPES = ("json", "jsonb")


# -- the sink ------------------------------------------------------------------------------------


class PostgresSink(Sink):
    """Rows into a PostgreSQL table. Build it with ``millstream.connectors.postgres.write``."""

    def __init__(self, table: str, *, dsn: str, mode: str, key: tuple[str, ...] | None,
                 columns: tuple[str, ...] | None, create: bool, batch_size: int, transaction_id: str | None,
                 backoff: Backoff, name: str | None) -> None:
        self.table = table
        self.dsn = dsn
        self.mode = mode
        self.key = key
        self.columns = columns
        self.create = create
        self.batch_size = batch_size
        self.transaction_id = transaction_id
        self.backoff = backoff
        self.name = name
        self.delivery = {"append": "none", "upsert": "idempotent", "transactional": "transactional"}[mode]  # type: ignore[assignment]

    def open(self, step: str) -> SinkWriter:
        return PostgresWriter(self, step)

    def describe(self) -> str:
        how = f"upsert by {', '.join(self.key)}" if self.mode == "upsert" and self.key else self.mode
        return f"postgres {self.table}@{describe_dsn(self.dsn)} ({how})"

    def default_name(self) -> str:
        return self.name or f"postgres:{self.table}"


class PostgresWriter(SinkWriter):
    """One connection; rows buffered and written in batches (see the module docstring)."""

    def __init__(self, sink: PostgresSink, step: str) -> None:
        self.sink = sink
        self.step = step
        self.what = f"postgres sink {step!r}"
        self.address = describe_dsn(sink.dsn)
        self.buffer: list[Any] = []
        self.columns: tuple[str, ...] | None = sink.columns
        self.retries = 0
        self.rows_written = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._types: dict[str, str] = {}      # the table's columns and their types (empty: not there yet)
        self._prepared: dict[str, Any] = {}   # SQL by name, made once the columns are known
        self._json: tuple[int, ...] = ()      # positions of json/jsonb columns among self.columns
        self._row: Callable[[Any], Any] | None = None
        self._key: Callable[[Any], Any] | None = None
        # transactional
        self._in_txn = False
        self._txn_rows = 0
        self._checkpointed = False
        self._coordinated = False
        self._epoch = 0
        self._fence: Callable[[], None] | None = None
        self._sink_id = re.sub(r"[^A-Za-z0-9_.-]", "_", sink.transaction_id or f"{sink.table}.{step}")[:120]
        self.gid_prefix = f"millstream:{self._sink_id}:"
        self._open()

    # -- connection and table ------------------------------------------------------------------
    def _on_retry(self, attempt: int, exc: BaseException) -> None:
        self.retries += 1

    def _connect(self) -> psycopg.Connection[Any]:
        from psycopg.types.json import JsonbDumper

        conn = connect(self.sink.dsn, what=self.what, backoff=self.sink.backoff, on_retry=self._on_retry)
        conn.adapters.register_dumper(dict, JsonbDumper)
        return conn

    def _error(self, problem: str, fix: str | None = None) -> ConnectorError:
        return ConnectorError(scrub(problem, self.sink.dsn), connector=self.what, address=self.address, fix=fix)

    def _open(self) -> None:
        self._conn = self._connect()
        try:
            if self.sink.mode == "transactional":
                self._check_prepared_transactions()
                self._create_commits_table()
            self._load_table()
            if not self._types and not self.sink.create:
                raise self._error(f"table {self.sink.table!r} does not exist",
                                  fix="create it first, or pass create=True to make it from the first record's fields")
        except BaseException:
            self.abandon()
            raise

    @property
    def conn(self) -> psycopg.Connection[Any]:
        assert self._conn is not None
        return self._conn

    def _check_prepared_transactions(self) -> None:
        n = int(self.conn.execute("SELECT current_setting('max_prepared_transactions')::int").fetchone()[0])  # type: ignore[index]
        if n == 0:
            raise self._error(
                "mode='transactional' needs prepared transactions, and this server has max_prepared_transactions = 0",
                fix="set max_prepared_transactions (at least the number of transactional sinks, e.g. 10) in "
                    "postgresql.conf and restart the server; or use mode='upsert' with key=... (idempotent: "
                    "exactly-once in effect, no prepared transactions)")

    def _create_commits_table(self) -> None:
        import psycopg

        try:
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {COMMITS_TABLE} (gid text PRIMARY KEY, sink text NOT NULL, "
                "checkpoint bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT now())")
        except psycopg.errors.UniqueViolation:
            pass  # created at the same moment by another writer

    def _load_table(self) -> None:
        rows = self.conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (self._regclass_name(),)).fetchall()
        self._types = {name: typ for name, typ in rows}

    def _regclass_name(self) -> str:
        from psycopg import sql

        return _ident(self.sink.table).as_string(self.conn) if "." in self.sink.table \
            else sql.Identifier(self.sink.table).as_string(self.conn)

    def _resolve(self, first: Any) -> None:
        """At the first flush: the columns (from the first record unless given), the table (made when
        ``create``), and checks that the columns and the key exist."""
        from psycopg import sql

        if not isinstance(first, Mapping):
            raise self._error(f"rows must be dicts, got {type(first).__name__} {first!r:.100}",
                              fix="map each record to a dict of column values before the sink")
        cols = self.columns or tuple(k for k in first if k != CHANGE)
        key = self.sink.key or ()
        if self.sink.mode == "upsert":
            cols = tuple(dict.fromkeys((*key, *cols)))
        self.columns = cols
        if not self._types:
            defs = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_pg_type(first.get(c)))) for c in cols]
            if key:
                defs.append(sql.SQL("PRIMARY KEY ({})").format(_cols(key)))
            self.conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                _ident(self.sink.table), sql.SQL(", ").join(defs)))
            self._load_table()
        missing = [c for c in cols if c not in self._types]
        if missing:
            raise self._error(
                f"table {self.sink.table!r} has no column {', '.join(map(repr, missing))} "
                f"(columns: {', '.join(self._types)})",
                fix="add the columns, pass columns=(...) naming existing ones, or map records to the table's columns")
        if self.sink.mode == "upsert" and self._key is None:
            self._resolve_key()
        self._json = tuple(i for i, c in enumerate(cols) if self._types[c] in _JSON_TYPES)
        getter = operator.itemgetter(*cols)
        self._row = (lambda r: (getter(r),)) if len(cols) == 1 else getter
        self._prepare_sql(cols, key)

    def _resolve_key(self) -> None:
        """Upsert: check the key's unique index and prepare the deletes (they need the key only)."""
        from psycopg import sql

        key = self.sink.key or ()
        self._check_unique(key)
        p = self._prepared
        gone = sql.Identifier(f"ms_gone_{uuid.uuid4().hex[:8]}")
        table = _ident(self.sink.table)
        p["gone"] = sql.SQL("CREATE TEMP TABLE {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA").format(
            gone, _cols(key), table)
        p["copy_gone"] = sql.SQL("COPY {} ({}) FROM STDIN").format(gone, _cols(key))
        p["delete"] = sql.SQL("DELETE FROM {} t USING {} g WHERE {}").format(
            table, gone, sql.SQL(" AND ").join(
                sql.SQL("t.{} = g.{}").format(sql.Identifier(k), sql.Identifier(k)) for k in key))
        self.conn.execute(p["gone"])
        kg = operator.itemgetter(*key)
        self._key = (lambda r: (kg(r),)) if len(key) == 1 else kg

    def _check_unique(self, key: tuple[str, ...]) -> None:
        rows = self.conn.execute(
            "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indpred IS NULL GROUP BY i.indexrelid",
            (self._regclass_name(),)).fetchall()
        if not any(sorted(r[0]) == sorted(key) for r in rows):
            raise self._error(
                f"upsert by ({', '.join(key)}) needs a primary key or unique index on exactly those columns of "
                f"{self.sink.table!r}, and it has none",
                fix=f"ALTER TABLE {self.sink.table} ADD PRIMARY KEY ({', '.join(key)}); or pass create=True to a "
                    "table that does not exist yet")

    def _prepare_sql(self, cols: tuple[str, ...], key: tuple[str, ...]) -> None:
        from psycopg import sql

        table = _ident(self.sink.table)
        p = self._prepared
        p["copy"] = sql.SQL("COPY {} ({}) FROM STDIN").format(table, _cols(cols))
        if self.sink.mode != "upsert":
            return
        stage = sql.Identifier(f"ms_stage_{uuid.uuid4().hex[:8]}")
        p["stage"] = sql.SQL("CREATE TEMP TABLE {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA").format(
            stage, _cols(cols), table)
        p["copy_stage"] = sql.SQL("COPY {} ({}) FROM STDIN").format(stage, _cols(cols))
        rest = [c for c in cols if c not in key]
        action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in rest)) \
            if rest else sql.SQL("DO NOTHING")
        p["merge"] = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
            table, _cols(cols), _cols(cols), stage, _cols(key), action)
        self.conn.execute(p["stage"])

    # -- writing -------------------------------------------------------------------------------
    def write(self, records: list[Any], times: list[int] | None) -> None:
        self.buffer.extend(records)
        if len(self.buffer) >= self.sink.batch_size:
            self.flush()

    def _tuples(self, rows: list[Any]) -> list[Any]:
        """Rows as tuples in column order (a missing field is NULL); JSON columns wrapped."""
        assert self._row is not None and self.columns is not None
        get = self._row
        try:
            out = [get(r) for r in rows]
        except (KeyError, TypeError):
            cols = self.columns
            for r in rows:
                if not isinstance(r, Mapping):
                    raise self._error(f"rows must be dicts, got {type(r).__name__} {r!r:.100}",
                                      fix="map each record to a dict of column values before the sink") from None
            out = [tuple(r.get(c) for c in cols) for r in rows]
        if self._json:
            from psycopg.types.json import Jsonb

            js = self._json
            out = [tuple(Jsonb(v) if i in js and v is not None else v for i, v in enumerate(t)) for t in out]
        return out

    def _copy(self, statement: Any, tuples: list[Any]) -> None:
        with self.conn.cursor() as cur, cur.copy(statement) as cp:
            for t in tuples:
                cp.write_row(t)

    def flush(self) -> None:
        """Write the buffered rows (append and upsert: visible now; transactional: in the open transaction)."""
        if not self.buffer:
            return
        rows, self.buffer = self.buffer, []
        if self._row is None:
            # the columns come from a record that is not a retraction: a changelog's -U/-D may carry the key only
            first = next((r for r in rows if not (isinstance(r, Mapping) and r.get(CHANGE) in _RETRACT)), None)
            if first is not None or self.sink.mode != "upsert":
                self._resolve(rows[0] if first is None else first)
            elif not self._types:
                return  # deletes only, into a table create=True has not made yet: nothing to delete
            elif self._key is None:
                self._resolve_key()
        if self.sink.mode == "transactional":
            self._write_in_txn(rows)
            return
        self._with_retry(lambda: self._upsert(rows) if self.sink.mode == "upsert" else self._append(rows),
                         f"writing {len(rows)} rows to {self.sink.table}")
        self.rows_written += len(rows)

    def _append(self, rows: list[Any]) -> None:
        self._refuse_retractions(rows)
        tuples = self._tuples(rows)
        with self.conn.transaction():
            self._copy(self._prepared["copy"], tuples)

    def _refuse_retractions(self, rows: list[Any]) -> None:
        """Append and transactional modes add rows: a changelog's -U/-D would be added as rows, unless the
        table keeps the change kind (``columns`` names ``_change``)."""
        if self.columns is not None and CHANGE not in self.columns and _retracts(rows):
            raise self._error(f"mode={self.sink.mode!r} got a changelog retraction (a '-U' or '-D' record), which "
                              "it would add as a row", fix="write a changelog with mode='upsert' and key=(...), or "
                              "keep the change kind in a column: columns=(..., '_change')")

    def _upsert(self, rows: list[Any]) -> None:
        """Dedupe by key (the last change of a key wins, ``-U`` skipped), then one transaction:
        COPY into the stages, merge, delete."""
        key_of = self._key
        assert key_of is not None
        try:
            if not _retracts(rows):  # inserts only: deduplicated in one pass in C
                upserts = list(dict(zip(map(key_of, rows), rows, strict=True)).values())
                deletes: list[Any] = []
            else:
                latest: dict[Any, Any] = {}
                for r in rows:
                    kind = r.get(CHANGE)
                    if kind == UPDATE_BEFORE:
                        continue
                    latest[key_of(r)] = (kind == DELETE, r)
                upserts = [r for gone, r in latest.values() if not gone]
                deletes = [key_of(r) for gone, r in latest.values() if gone]
        except (KeyError, TypeError, AttributeError):
            bad = next((r for r in rows if not isinstance(r, Mapping) or any(k not in r for k in self.sink.key or ())),
                       rows[0])
            raise self._error(f"a row has no value for the upsert key ({', '.join(self.sink.key or ())}): {bad!r:.200}",
                              fix="every record needs the key fields") from None
        tuples = self._tuples(upserts) if upserts else []
        with self.conn.transaction():
            if tuples:
                self._copy(self._prepared["copy_stage"], tuples)
                self.conn.execute(self._prepared["merge"])
            if deletes:
                self._copy(self._prepared["copy_gone"], deletes)
                self.conn.execute(self._prepared["delete"])

    def _with_retry(self, fn: Callable[[], None], doing: str) -> None:
        """Run ``fn``; when the connection is lost, reconnect and run it again (append and upsert only)."""
        import psycopg

        def attempt() -> None:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
                for temporary in ("stage", "gone"):  # temporary tables die with their session
                    if temporary in self._prepared:
                        self.conn.execute(self._prepared[temporary])
            try:
                fn()
            except psycopg.OperationalError as exc:
                if self._conn is not None and not self._conn.closed:
                    raise self._error(f"{doing}: {pg_message(exc)}") from None
                raise ConnectorUnavailable(scrub(f"{doing}: {pg_message(exc)}", self.sink.dsn), connector=self.what,
                                           address=self.address) from None
            except psycopg.Error as exc:
                raise self._error(f"{doing}: {pg_message(exc)}") from None

        retry(attempt, what=f"{self.what} {doing}", backoff=self.sink.backoff, on_retry=self._on_retry)

    # -- transactional ---------------------------------------------------------------------------
    def set_fence(self, epoch: int, check: Callable[[], None], scope: str = "") -> None:
        """Put the checkpoint directory's owner epoch in transaction ids; ``check`` before each commit.

        Without ``transaction_id=``, transaction ids also carry ``scope``, the checkpoint directory's
        identity: two jobs writing one table from steps of the same name (two copies of a job file,
        each with its own directory) then never roll back or count each other's prepared transactions
        on recovery. With ``transaction_id=``, the user's id is the whole prefix (as before)."""
        self._epoch = epoch
        self._fence = check
        if scope and self.sink.transaction_id is None:
            self.gid_prefix = f"millstream:{self._sink_id}@{scope}:"

    def begin(self, *, checkpointed: bool) -> None:
        self._checkpointed = checkpointed

    def _write_in_txn(self, rows: list[Any]) -> None:
        import psycopg

        self._refuse_retractions(rows)
        tuples = self._tuples(rows)
        try:
            if not self._in_txn:
                self.conn.execute("BEGIN")
                self._in_txn = True
            self._copy(self._prepared["copy"], tuples)
        except psycopg.Error as exc:
            # the open transaction is gone with its rows: only a restart from the last checkpoint replays them
            self._in_txn = False
            raise self._error(f"writing {len(rows)} rows to {self.sink.table} in the checkpoint's transaction: "
                              f"{pg_message(exc)}",
                              fix="the job restarts from its last checkpoint (restarts=...) and writes them again"
                              ) from None
        self._txn_rows += len(rows)

    def gid(self, checkpoint_id: int) -> str:
        return f"{self.gid_prefix}{checkpoint_id}:{self._epoch}"

    def pre_commit(self, checkpoint_id: int) -> Any:
        import psycopg

        if self.sink.mode != "transactional":
            self.flush()
            return None
        self._coordinated = True
        self.flush()
        if not self._in_txn:
            return {"checkpoint": checkpoint_id, "gid": None}
        gid = self.gid(checkpoint_id)
        try:
            self.conn.execute(f"INSERT INTO {COMMITS_TABLE} (gid, sink, checkpoint) VALUES (%s, %s, %s)",  # noqa: S608
                              (gid, self.gid_prefix, checkpoint_id))
            self.conn.execute(f"DELETE FROM {COMMITS_TABLE} WHERE sink = %s AND checkpoint < %s",  # noqa: S608
                              (self.gid_prefix, checkpoint_id - 100))
            self.conn.execute("PREPARE TRANSACTION %s" % _literal(gid))  # noqa: UP031 - utility statement: no parameters
        except psycopg.Error as exc:
            self._in_txn = False
            raise self._error(f"preparing the transaction of checkpoint {checkpoint_id}: {pg_message(exc)}") from None
        self._in_txn = False
        rows, self._txn_rows = self._txn_rows, 0
        return {"checkpoint": checkpoint_id, "gid": gid, "rows": rows}

    def commit(self, transaction: Any) -> None:
        if not transaction or transaction.get("gid") is None:
            return
        if self._fence is not None:
            self._fence()  # raises if another run took the checkpoint directory over
        gid = transaction["gid"]
        self._finish_prepared(gid, "COMMIT")

    def _finish_prepared(self, gid: str, how: str) -> None:
        import psycopg

        def attempt() -> None:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                self.conn.execute(f"{how} PREPARED {_literal(gid)}")
            except psycopg.OperationalError as exc:
                if self._conn is not None and not self._conn.closed:
                    raise self._error(f"{how} PREPARED {gid}: {pg_message(exc)}") from None
                raise ConnectorUnavailable(scrub(f"{how} PREPARED {gid}: {pg_message(exc)}", self.sink.dsn),
                                           connector=self.what, address=self.address) from None
            except psycopg.Error as exc:
                if _sqlstate(exc) != _UNDEFINED_OBJECT:
                    raise self._error(f"{how} PREPARED {gid}: {pg_message(exc)}") from None
                if how == "ROLLBACK":
                    return
                found = self.conn.execute(f"SELECT 1 FROM {COMMITS_TABLE} WHERE gid = %s", (gid,)).fetchone()  # noqa: S608
                if found is None:
                    raise JobError(
                        f"{self.what}: cannot commit transaction {gid!r}: it is neither prepared nor recorded as "
                        f"committed in {COMMITS_TABLE} of {self.address} (was it rolled back by hand, or the "
                        "database restored from an older copy?); the checkpoint's rows are lost") from None
                log.debug("%s: transaction %s was committed before", self.what, gid)

        retry(attempt, what=f"{self.what} {how.lower()} {gid}", backoff=self.sink.backoff, on_retry=self._on_retry)

    def prepared(self) -> list[str]:
        """This sink's prepared transactions on the server (gids), oldest first."""
        rows = self.conn.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, %s) "
            "ORDER BY prepared", (self.gid_prefix,)).fetchall()
        return [r[0] for r in rows]

    def committed_beyond(self, checkpoint_id: int) -> list[str]:
        """The transactions committed after checkpoint ``checkpoint_id`` (recorded in the commits
        table; the coordinator asks before a resume: output the restored checkpoint cannot account for)."""
        if self.sink.mode != "transactional":
            return []
        rows = self.conn.execute(
            f"SELECT checkpoint FROM {COMMITS_TABLE} WHERE sink = %s AND checkpoint > %s ORDER BY checkpoint",  # noqa: S608
            (self.gid_prefix, checkpoint_id)).fetchall()
        return [f"the transaction of checkpoint {r[0]} ({COMMITS_TABLE} at {self.address})" for r in rows]

    def recover(self, transactions: list[Any]) -> None:
        if self.sink.mode != "transactional":
            return
        self._coordinated = True
        keep = set()
        for txn in transactions:
            if txn and txn.get("gid"):
                self.commit(txn)
                keep.add(txn["gid"])
        for gid in self.prepared():
            if gid not in keep:
                log.info("%s: rolling back %s, prepared by a run that did not complete its checkpoint",
                         self.what, gid)
                self._finish_prepared(gid, "ROLLBACK")

    def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if self.sink.mode != "transactional":
                self.flush()
            elif self._checkpointed or self._coordinated:
                # rows after the last checkpoint are replayed by the restart: never make them visible here
                self.buffer = []
                if self._in_txn and not conn.closed:
                    conn.execute("ROLLBACK")
                    if self._txn_rows:
                        log.info("%s: %d rows written after the last checkpoint are rolled back (a restart from "
                                 "that checkpoint writes them again)", self.what, self._txn_rows)
                self._in_txn = False
            else:  # a run without checkpoints: everything it wrote, in one transaction
                self.flush()
                if self._in_txn:
                    conn.execute("COMMIT")
                    self._in_txn = False
        finally:
            self._conn = None
            conn.close()

    def abandon(self) -> None:
        """Drop the connection as a crash would: the open transaction dies with it, prepared ones stay."""
        conn, self._conn = self._conn, None
        self.buffer = []
        self._in_txn = False
        if conn is not None:
            conn.close()

    def metrics(self) -> dict[str, int]:
        return {"retries": self.retries, "rows_written": self.rows_written}


_change_of = operator.methodcaller("get", CHANGE)
_RETRACT = (UPDATE_BEFORE, DELETE)


def _retracts(rows: list[Any]) -> bool:
    """Whether a ``-U`` or ``-D`` is among ``rows`` (one pass in C: appends must stay as fast as COPY)."""
    try:
        kinds = set(map(_change_of, rows))
    except (AttributeError, TypeError):  # not dicts: reported when the rows are made tuples
        return False
    return UPDATE_BEFORE in kinds or DELETE in kinds


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- lookup tables -------------------------------------------------------------------------------


class PostgresTable:
    """A table or query of a PostgreSQL database, read by key. Build it with
    ``millstream.connectors.postgres.table``.

    Each thread that fetches gets its own connection (autocommit, so every fetch sees the
    latest committed rows); ``close()`` closes them all.
    """

    def __init__(self, source: str, *, dsn: str, key: str, columns: Sequence[str] | None = None,
                 backoff: Backoff | None = None) -> None:
        self.source = source
        self.dsn = dsn
        self.key = key
        self.columns = tuple(columns) if columns is not None else None
        self.backoff = backoff or Backoff(budget_s=30.0)
        self.is_query = bool(re.match(r"\s*(select|with|values|table)\b", source, re.IGNORECASE))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[Any] = []
        self._generation = 0
        self._sql: Any = None
        self._names: tuple[str, ...] = ()

    def _identity(self) -> tuple[Any, ...]:
        return (self.source, self.dsn, self.key, self.columns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PostgresTable) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "dsn": self.dsn, "key": self.key, "columns": self.columns,
                "backoff": self.backoff}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"], dsn=state["dsn"], key=state["key"], columns=state["columns"],  # type: ignore[misc]
                      backoff=state["backoff"])

    def __repr__(self) -> str:
        return f"postgres.table({self._what()!r}, dsn={describe_dsn(self.dsn)!r}, key={self.key!r})"

    def _what(self) -> str:
        return "(query)" if self.is_query else self.source

    def describe(self) -> str:
        return f"postgres {describe_dsn(self.dsn)} {self._what()}.{self.key}"

    def _connect(self) -> Any:
        conn = connect(self.dsn, what=f"postgres table {self._what()}", backoff=self.backoff)
        with self._lock:
            self._conns.append(conn)
        return conn

    def _conn(self) -> Any:
        local = self._local
        if getattr(local, "generation", None) != self._generation or getattr(local, "conn", None) is None \
                or local.conn.closed:
            local.conn = self._connect()
            local.generation = self._generation
        return local.conn

    def _from(self) -> Any:
        from psycopg import sql

        if self.is_query:
            return sql.SQL("({}) AS q").format(sql.SQL(self.source.strip().rstrip(";")))
        return _ident(self.source)

    def open(self) -> None:
        """Check that the table (or query) and its columns exist and prepare the query."""
        import psycopg
        from psycopg import sql

        conn = self._conn()
        try:
            cur = conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(self._from()))
        except psycopg.Error as exc:
            what = "query" if self.is_query else "table"
            raise LookupTableError(
                f"postgres {describe_dsn(self.dsn)}: cannot read {what} {self._what()!r}: "
                f"{scrub(pg_message(exc), self.dsn)}",
                fix="pass an existing table (schema.table) or a SELECT query to postgres.table(...)") from None
        existing = [d.name for d in cur.description or ()]
        wanted = (self.key, *(self.columns or ()))
        missing = [c for c in wanted if c not in existing]
        if missing:
            raise LookupTableError(
                f"postgres {self._what()!r} has no column {', '.join(map(repr, missing))} "
                f"(columns: {', '.join(existing)})", fix="name existing columns in key=... and columns=...")
        names = self.columns if self.columns is not None else tuple(existing)
        if self.key not in names:
            names = (self.key, *names)
        self._names = names
        self._key_index = names.index(self.key)
        self._sql = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s)").format(
            _cols(names), self._from(), sql.Identifier(self.key))

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            self._generation += 1
        for conn in conns:
            conn.close()

    def fetch(self, keys: Sequence[Any]) -> Mapping[Any, Any]:
        """The rows of those of ``keys`` the table holds, by key (one query per call)."""
        import psycopg

        if self._sql is None:
            self.open()
        names, ki = self._names, self._key_index
        try:
            rows = self._conn().execute(self._sql, (list(keys),)).fetchall()
        except psycopg.OperationalError:
            self._local.conn = None  # reconnect once: a server restart or a dropped idle connection
            rows = self._conn().execute(self._sql, (list(keys),)).fetchall()
        return {row[ki]: dict(zip(names, row, strict=True)) for row in rows}
