"""PostgreSQL: table sinks (append, upsert, two-phase commit), lookup tables and change data capture.

Needs psycopg 3 (``pip install 'millstream[postgres]'``). Guide: docs/connectors/postgres.md.

- :func:`write`: rows into a table, by ``COPY``; ``mode="append"`` (at-least-once),
  ``"upsert"`` by key (idempotent: exactly-once in effect, applies changelogs) or
  ``"transactional"`` (``PREPARE TRANSACTION`` at each checkpoint, ``COMMIT PREPARED``
  once it is complete: exactly-once).
- :func:`table`: a table or query to look rows up in with ``Stream.lookup``.
- :func:`read_changes`: inserts, updates and deletes of tables, read from a logical
  replication slot, as changelog records (``"_change"``: ``+I``/``-U``/``+U``/``-D``).

Passwords in ``dsn`` never appear in plans, errors, logs or checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from millstream.connectors._base import Backoff, ErrorPolicy, check_policy
from millstream.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from millstream.connectors._postgres import PostgresSink, PostgresTable
    from millstream.connectors._postgres_cdc import ChangesSource

__all__ = ["DEFAULT_DSN", "read_changes", "table", "write"]

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MODES = ("append", "upsert", "transactional")


def _need_psycopg(feature: str) -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise MissingDependencyError("psycopg", "postgres", feature) from None


def _name(value: Any, option: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"postgres {option} must be a non-empty name, not {value!r}")
    return value


def _names(value: Any, option: str, *, empty: bool = False) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, Sequence) else None
    if names is None or (not names and not empty) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"postgres {option} must be a column name or a tuple of names, not {value!r}")
    return names


def _dsn(dsn: Any) -> str:
    if not isinstance(dsn, str) or not dsn.strip():
        raise ConfigError("postgres dsn must be a connection string, e.g. 'postgresql://user@host:5432/db' "
                          "or 'host=... dbname=...'")
    return dsn


def _positive(value: Any, option: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"postgres {option} must be a positive integer, not {value!r}")
    return value


def write(table: str, *, dsn: str = DEFAULT_DSN, mode: str = "append", key: str | Sequence[str] | None = None,
          columns: Sequence[str] | None = None, create: bool = False, batch_size: int = 10_000,
          transaction_id: str | None = None, backoff: Backoff | None = None,
          name: str | None = None) -> PostgresSink:
    """A sink writing dict records as rows of ``table`` (``"name"`` or ``"schema.name"``).

    Options:

    - ``mode``: ``"append"`` (``COPY``; a replay after a crash appends again: at-least-once),
      ``"upsert"`` (needs ``key``; staged ``COPY`` + ``INSERT ... ON CONFLICT (key) DO UPDATE``;
      a batch is deduplicated by key first, the last record of a key winning; a changelog is
      applied: ``-D`` deletes its key, ``-U`` is skipped; idempotent, so exactly-once in effect)
      or ``"transactional"`` (appends; the rows of each checkpoint interval in one transaction,
      prepared at the checkpoint and committed once it is complete: exactly-once; needs
      ``max_prepared_transactions > 0`` on the server).
    - ``key``: the upsert key, a column or a tuple of columns; the table needs a primary key
      or unique index on exactly those columns.
    - ``columns``: the columns written (default: the first record's fields, without ``"_change"``;
      a field a record lacks is written as NULL, fields not listed are ignored).
    - ``create``: create the table if it does not exist, with column types guessed from the
      first record (bigint, double precision, boolean, text, jsonb for dicts and lists, ...) and
      ``key`` as its primary key.
    - ``batch_size``: rows buffered before a write (rows are also written at each checkpoint
      and at the end).
    - ``transaction_id``: names this sink's prepared transactions (``millstream:<id>:<checkpoint>:<epoch>``);
      default ``<table>.<step>``. Two jobs writing the same table from steps of the same name need
      different ids: recovery rolls back every prepared transaction of its id.
    - ``backoff``: how connection failures are retried (:class:`~millstream.connectors.Backoff`).

    Values are sent in COPY's text format, so the server converts them to the column types;
    dicts (and anything written to a json/jsonb column) are sent as JSON.
    """
    _need_psycopg("postgres.write")
    from millstream.connectors._postgres import PostgresSink

    if mode not in MODES:
        raise ConfigError(f"postgres.write mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    keys = _names(key, "key")
    if mode == "upsert" and not keys:
        raise ConfigError("postgres.write(mode='upsert') needs key=... (the column or columns rows are replaced by)")
    if mode != "upsert" and keys:
        fix = ("an exactly-once upsert is mode='upsert' itself (idempotent)" if mode == "transactional"
               else "use mode='upsert' to replace rows by key")
        raise ConfigError(f"postgres.write key= is only used by mode='upsert', not {mode!r}: {fix}")
    cols = _names(columns, "columns")
    if cols is not None and keys is not None and (missing := [k for k in keys if k not in cols]):
        raise ConfigError(f"postgres.write columns= must include the key column(s) {', '.join(missing)}")
    if transaction_id is not None:
        _name(transaction_id, "transaction_id")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise ConfigError(f"postgres backoff must be a millstream.connectors.Backoff, not {backoff!r}")
    return PostgresSink(_name(table, "table"), dsn=_dsn(dsn), mode=mode, key=keys, columns=cols,
                        create=bool(create), batch_size=_positive(batch_size, "batch_size"),
                        transaction_id=transaction_id, backoff=backoff or Backoff(), name=name)


def table(query_or_table: str, *, dsn: str = DEFAULT_DSN, key: str,
          columns: Sequence[str] | None = None) -> PostgresTable:
    """A table (``"name"``, ``"schema.name"``) or a query (``"SELECT ..."``) to look rows up in
    by column ``key``, for ``Stream.lookup`` (which caches: ``cache_ttl=``, ``cache_size=``).

    ``columns`` picks the columns each row carries (default: all, the key included). Each
    fetch is one ``SELECT ... WHERE key = ANY(%s)`` for a batch of keys. The table is checked
    when the job starts (a missing table or column fails it with the fix).
    """
    _need_psycopg("postgres.table")
    from millstream.connectors._postgres import PostgresTable

    if not isinstance(key, str) or not key:
        raise ConfigError(f"postgres.table key must be a column name, not {key!r}")
    return PostgresTable(_name(query_or_table, "table"), dsn=_dsn(dsn), key=key, columns=_names(columns, "columns"))


def read_changes(*, dsn: str = DEFAULT_DSN, slot: str, publication: str | None = None,
                 tables: str | Sequence[str] | None = None, create_slot: bool = True, bounded: bool = False,
                 batch_size: int = 10_000, poll_interval_s: float = 0.2, metadata: Sequence[str] = (),
                 on_error: ErrorPolicy = "fail", backoff: Backoff | None = None,
                 name: str | None = None) -> ChangesSource:
    """A change-data-capture source: the inserts, updates and deletes of tables as a changelog.

    Reads the logical replication slot ``slot`` (plugin ``pgoutput``; created when missing
    unless ``create_slot=False``) through ``publication`` (created ``FOR TABLE tables`` when
    missing; default name ``<slot>_pub``). The server needs ``wal_level = logical``.

    Each change becomes a record of the row's columns and ``"_change"``: an insert ``+I``, an
    update ``-U`` (old row) and ``+U`` (new row), a delete ``-D`` (old row). Old rows are
    complete only with ``ALTER TABLE ... REPLICA IDENTITY FULL``; otherwise they carry the
    key columns. ``metadata`` adds ``"table"`` (``_table``), ``"lsn"`` (``_lsn``, the commit's
    end LSN), ``"xid"`` (``_xid``) and ``"commit_time"`` (``_timestamp``, ms since the epoch).

    Replay by redelivery: the slot is advanced only when a checkpoint covering the changes
    is complete (so the server keeps their WAL until then); a restart reads again from the
    slot and drops what the restored position covers. ``bounded=True`` stops at the WAL
    position of the start. A ``TRUNCATE`` (when the publication publishes it) is a bad
    record under ``on_error``.
    """
    _need_psycopg("postgres.read_changes")
    from millstream.connectors._postgres_cdc import METADATA, ChangesSource

    meta = _names(metadata, "metadata", empty=True) or ()
    if unknown := [m for m in meta if m not in METADATA]:
        raise ConfigError(f"postgres.read_changes metadata {unknown!r}: choose from {', '.join(METADATA)}")
    tabs = _names(tables, "tables")
    if publication is not None:
        _name(publication, "publication")
    if not isinstance(poll_interval_s, int | float) or poll_interval_s <= 0:
        raise ConfigError(f"postgres.read_changes poll_interval_s must be > 0, not {poll_interval_s!r}")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise ConfigError(f"postgres backoff must be a millstream.connectors.Backoff, not {backoff!r}")
    return ChangesSource(dsn=_dsn(dsn), slot=_name(slot, "slot"), publication=publication, tables=tabs,
                         create_slot=bool(create_slot), bounded=bool(bounded),
                         batch_size=_positive(batch_size, "batch_size"), poll_interval_s=float(poll_interval_s),
                         metadata=meta, on_error=check_policy(on_error), backoff=backoff or Backoff(), name=name)
