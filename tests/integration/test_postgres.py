"""PostgreSQL connector against real servers: the shared one (127.0.0.1:5432, append, upsert, lookup)
and a private cluster started here (wal_level=logical and max_prepared_transactions=10: change
capture and the transactional sink), stopped by PID at the end of the module.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests._cli_runs import cli
from tests.integration import _ack_cases as acks
from tests.integration import services

import millstream as ms
from millstream import changelog, col
from millstream._clock import SystemClock
from millstream.connectors import SourceContext
from millstream.errors import (
    ConfigError,
    ConnectorError,
    FlowDefinitionError,
    GuaranteeError,
    JobError,
    MissingDependencyError,
)

SHARED_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_BIN = "/usr/lib/postgresql/15/bin"


# -- servers and tables ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared() -> str:
    services.need_module("psycopg", "postgres")
    services.require("postgres")
    return SHARED_DSN


@pytest.fixture(scope="module")
def private_pg() -> Iterator[str]:
    """A private cluster with logical decoding and prepared transactions, on a free loopback port."""
    services.need_module("psycopg", "postgres")
    if not (os.path.exists(f"{PG_BIN}/initdb") and shutil.which("runuser")):
        services.unavailable(f"PostgreSQL server binaries ({PG_BIN}/initdb) or runuser are not installed")
    base = tempfile.mkdtemp(prefix="ms-pg-")
    shutil.chown(base, "postgres")
    data, port = os.path.join(base, "data"), services.free_port()
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U",
                    "postgres"], check=True, capture_output=True)
    opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=10 "
            "-c max_wal_senders=4 -c fsync=off -c max_prepared_transactions=10")
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", data, "-l",
                    os.path.join(base, "log"), "-w", "start", "-o", opts], check=True, capture_output=True)
    pid = int(Path(data, "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        os.kill(pid, signal.SIGINT)  # fast shutdown of the postmaster we started
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        shutil.rmtree(base, ignore_errors=True)


class Db:
    """A connection and the tables/slots/publications a test made (dropped afterwards)."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.tables: list[str] = []
        self.slots: list[str] = []

    def table(self, prefix: str = "ms", ddl: str | None = None) -> str:
        name = services.unique(prefix)
        self.tables.append(name)
        if ddl is not None:
            self.conn.execute(f"CREATE TABLE {name} ({ddl})")
        return name

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, args or None).fetchall()

    def dicts(self, table: str, order: str) -> list[dict[str, Any]]:
        cur = self.conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def prepared(self, prefix: str = "millstream:") -> list[str]:
        return [r[0] for r in self.rows("SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, %s)", prefix)]

    def close(self) -> None:
        for gid in self.prepared():
            if any(t in gid for t in self.tables):
                self.conn.execute(f"ROLLBACK PREPARED '{gid}'")
        for slot in self.slots:
            self.conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                              "WHERE slot_name = %s AND NOT active", (slot,))
            self.conn.execute(f"DROP PUBLICATION IF EXISTS {slot}_pub")
        for t in self.tables:
            self.conn.execute(f"DROP TABLE IF EXISTS {t}")
        self.conn.close()


@pytest.fixture
def db(shared: str) -> Iterator[Db]:
    d = Db(shared)
    yield d
    d.close()


@pytest.fixture
def pdb(private_pg: str) -> Iterator[Db]:
    d = Db(private_pg)
    yield d
    d.close()


def event(i: int) -> dict[str, Any]:
    return {"id": i, "key": f"k{i % 7}", "v": (i * 37) % 101, "tags": {"i": i}}


def events(n: int) -> list[dict[str, Any]]:
    return [event(i) for i in range(n)]


# -- append and upsert, every execution mode ----------------------------------------------------


def test_append_round_trip(db: Db, exec_mode: str) -> None:
    name = db.table("ms_append", "id bigint, key text, v bigint, doubled double precision, tags jsonb")
    flow = ms.Flow("pg-append")
    (flow.source(ms.connectors.memory.read(events(3_000)))
     .filter(col("v") > 20)
     .with_columns(doubled=col("v") * 2.0)
     .sink(ms.connectors.postgres.write(name, batch_size=700)))
    flow.run()
    expected = [{**e, "doubled": e["v"] * 2.0} for e in events(3_000) if e["v"] > 20]
    assert db.dicts(name, "id") == [{k: e[k] for k in ("id", "key", "v", "doubled", "tags")} for e in expected]


def test_upsert_applies_a_changelog(db: Db, exec_mode: str) -> None:
    """A running aggregate's changelog into an upsert table: its rows equal the final counts."""
    name = db.table("ms_counts", "key text PRIMARY KEY, n bigint, total bigint")
    flow = ms.Flow("pg-upsert")
    (flow.source(ms.connectors.memory.read(events(2_000))).key_by("key")
     .aggregate(n=ms.agg.count(), total=ms.agg.sum("v"), changelog=True)
     .sink(ms.connectors.postgres.write(name, mode="upsert", key="key", batch_size=300)))
    flow.run()
    expected: dict[str, dict[str, Any]] = {}
    for e in events(2_000):
        row = expected.setdefault(e["key"], {"key": e["key"], "n": 0, "total": 0})
        row["n"] += 1
        row["total"] += e["v"]
    assert db.dicts(name, "key") == sorted(expected.values(), key=lambda r: r["key"])


def test_upsert_creates_the_table_and_keeps_the_last_record_per_key(db: Db, exec_mode: str) -> None:
    name = db.table("ms_latest")
    flow = ms.Flow("pg-latest")
    flow.source(ms.connectors.memory.read(events(1_000))).sink(
        ms.connectors.postgres.write(name, mode="upsert", key=("key",), create=True))
    flow.run()
    latest = {e["key"]: e for e in events(1_000)}
    assert db.dicts(name, "key") == sorted(latest.values(), key=lambda r: r["key"])
    assert db.rows("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
                   "AND attnum > 0 ORDER BY attnum", name) == [("text",), ("bigint",), ("bigint",), ("jsonb",)]


def test_upsert_deduplicates_a_batch_by_key(db: Db) -> None:
    """ON CONFLICT cannot touch a row twice in one statement: a batch is deduplicated, last change wins."""
    name = db.table("ms_dedup", "a text, b bigint, v text, PRIMARY KEY (a, b)")
    writer = ms.connectors.postgres.write(name, mode="upsert", key=("a", "b")).open("dedup")
    writer.write([{"a": "x", "b": 1, "v": "first"}, {"a": "y", "b": 1, "v": "only"},
                  {"a": "x", "b": 1, "v": "second"}, {"a": "z", "b": 2, "v": "gone"},
                  {"a": "z", "b": 2, "v": "gone", "_change": "-D"}, {"a": "w", "b": 3, "v": "old", "_change": "-D"},
                  {"a": "w", "b": 3, "v": "back", "_change": "+I"}, {"a": "y", "b": 1, "v": "only", "_change": "-U"},
                  {"a": "x", "b": 1, "v": "last", "_change": "+U"}], None)
    writer.flush()
    assert db.dicts(name, "a") == [{"a": "w", "b": 3, "v": "back"}, {"a": "x", "b": 1, "v": "last"},
                                   {"a": "y", "b": 1, "v": "only"}]
    writer.write([{"a": "w", "b": 3, "v": "back", "_change": "-D"}, {"a": "y", "b": 1, "v": "new"}], None)
    writer.close()
    assert db.dicts(name, "a") == [{"a": "x", "b": 1, "v": "last"}, {"a": "y", "b": 1, "v": "new"}]


def test_upsert_takes_its_columns_from_a_record_that_is_not_a_retraction(db: Db) -> None:
    """Regression (found by the change-capture kill test): a restart whose first batch starts with a
    key-only -U/-D must not make the key the only column written."""
    name = db.table("ms_cols_from", "id int PRIMARY KEY, name text, n bigint")
    db.conn.execute(f"INSERT INTO {name} VALUES (1, 'a', 1), (2, 'b', 2)")
    writer = ms.connectors.postgres.write(name, mode="upsert", key="id").open("s")
    writer.write([{"id": 2, "_change": "-D"}], None)
    writer.flush()  # deletes only: the columns are not known yet
    writer.write([{"id": 1, "_change": "-U"}, {"id": 1, "name": "a", "n": 5, "_change": "+U"},
                  {"id": 3, "name": "c", "n": 3, "_change": "+I"}], None)
    writer.close()
    assert db.dicts(name, "id") == [{"id": 1, "name": "a", "n": 5}, {"id": 3, "name": "c", "n": 3}]


def test_append_refuses_a_changelog_retraction(db: Db) -> None:
    name = db.table("ms_cl", "k text, n bigint")
    flow = ms.Flow("pg-append-changelog")
    (flow.source(ms.connectors.memory.read([{"k": "a"}, {"k": "a"}])).key_by("k")
     .aggregate(n=ms.agg.count(), changelog=True).sink(ms.connectors.postgres.write(name)))
    with pytest.raises(ConnectorError, match="mode='upsert'"):
        flow.run()


def test_options_are_checked_when_declared(shared: str) -> None:
    pg = ms.connectors.postgres
    with pytest.raises(ConfigError, match="mode"):
        pg.write("t", mode="merge")
    with pytest.raises(ConfigError, match="needs key"):
        pg.write("t", mode="upsert")
    with pytest.raises(ConfigError, match="only used by mode='upsert'"):
        pg.write("t", mode="transactional", key="id")
    with pytest.raises(ConfigError, match="batch_size"):
        pg.write("t", batch_size=0)
    with pytest.raises(ConfigError, match="metadata"):
        pg.read_changes(slot="s", metadata=("offset",))
    flow = ms.Flow("weak")
    flow.source(ms.connectors.memory.read([{"id": 1}])).sink(pg.write("t"))
    with pytest.raises(GuaranteeError, match="delivery 'none'"):
        flow.run(guarantee="exactly-once", checkpoint_dir=tempfile.mkdtemp())


def test_missing_table_and_columns_name_the_fix(db: Db) -> None:
    missing = services.unique("ms_nope")
    with pytest.raises(ConnectorError, match="does not exist") as err:
        ms.connectors.postgres.write(missing).open("s")
    assert "create=True" in str(err.value)
    name = db.table("ms_cols", "id bigint")
    writer = ms.connectors.postgres.write(name).open("s")
    writer.write([{"id": 1, "extra": 2}], None)
    with pytest.raises(ConnectorError, match="no column 'extra'"):
        writer.flush()
    writer.close()
    name = db.table("ms_nokey", "id bigint, v text")
    writer = ms.connectors.postgres.write(name, mode="upsert", key="id").open("s")
    writer.write([{"id": 1, "v": "a"}], None)
    with pytest.raises(ConnectorError, match="PRIMARY KEY"):
        writer.flush()
    writer.close()


# -- transactional: prepared transactions on the private cluster ---------------------------------


def test_transactional_needs_prepared_transactions(db: Db) -> None:
    if db.rows("SHOW max_prepared_transactions")[0][0] != "0":
        pytest.skip("the shared server allows prepared transactions; this checks the error where it does not")
    name = db.table("ms_tx", "id bigint")
    with pytest.raises(ConnectorError, match="max_prepared_transactions") as err:
        ms.connectors.postgres.write(name, mode="transactional").open("s")
    assert "mode='upsert'" in str(err.value)


def test_transactional_exactly_once(pdb: Db, exec_mode: str) -> None:
    name = pdb.table("ms_txn", "id bigint, key text, v bigint, tags jsonb")
    flow = ms.Flow("pg-txn")
    flow.source(ms.connectors.generator.read(event, count=2_000, batch=200)).sink(
        ms.connectors.postgres.write(name, dsn=pdb.dsn, mode="transactional", batch_size=250))
    result = flow.run(guarantee="exactly-once", checkpoint_dir=tempfile.mkdtemp(), checkpoint_interval=1)
    assert result is not None
    assert pdb.dicts(name, "id") == events(2_000)
    assert pdb.prepared(f"millstream:{name}.") == []
    assert pdb.rows("SELECT count(*) > 0 FROM millstream_commits WHERE starts_with(sink, %s)",
                    f"millstream:{name}.")[0][0]


def test_transactional_recovery_commits_the_restored_and_rolls_back_the_rest(pdb: Db) -> None:
    name = pdb.table("ms_rec", "id bigint")
    sink = ms.connectors.postgres.write(name, dsn=pdb.dsn, mode="transactional")
    w = sink.open("s")
    w.begin(checkpointed=True)
    w.recover([])
    w.write([{"id": 1}, {"id": 2}], None)
    t1 = w.pre_commit(1)
    w.write([{"id": 3}], None)
    t2 = w.pre_commit(2)
    w.write([{"id": 4}], None)  # open, never prepared
    w.abandon()  # a crash: the prepared transactions stay on the server
    assert sorted(pdb.prepared(w.gid_prefix)) == sorted([t1["gid"], t2["gid"]])
    assert pdb.rows(f"SELECT count(*) FROM {name}") == [(0,)]

    again = sink.open("s")
    again.begin(checkpointed=True)
    again.recover([t1])  # the job resumes from checkpoint 1: its transaction commits, checkpoint 2's goes
    assert pdb.rows(f"SELECT id FROM {name} ORDER BY id") == [(1,), (2,)]
    assert pdb.prepared(w.gid_prefix) == []
    again.commit(t1)  # idempotent: committed before (recorded in millstream_commits)
    with pytest.raises(JobError, match="neither prepared nor recorded"):
        again.commit(t2)  # rolled back: it is lost, and the commit says so
    again.close()


def test_committed_beyond_names_later_checkpoints(pdb: Db) -> None:
    """What the coordinator asks before a resume: a checkpoint directory restored from an older copy
    finds transactions committed after the restored checkpoint (refused under exactly-once)."""
    name = pdb.table("ms_beyond", "id bigint")
    sink = ms.connectors.postgres.write(name, dsn=pdb.dsn, mode="transactional")
    w = sink.open("s")
    w.set_fence(1, lambda: None, "cccccccccccc")
    w.begin(checkpointed=True)
    w.recover([])
    for ck in (1, 2, 3):
        w.write([{"id": ck}], None)
        w.commit(w.pre_commit(ck))
    assert w.committed_beyond(3) == []
    said = w.committed_beyond(1)
    assert [("checkpoint 2" in x, "checkpoint 3" in x) for x in said] == [(True, False), (False, True)]
    w.close()


def test_two_jobs_on_one_table_never_roll_back_each_others_transactions(pdb: Db) -> None:
    """Two copies of a job (same table, same step name), each with its own checkpoint directory: the
    directory's identity (scope) is in the transaction ids, so one copy's recovery does not take the
    other's prepared transaction for a stray of its own and roll it back."""
    name = pdb.table("ms_two", "id bigint")
    sink = ms.connectors.postgres.write(name, dsn=pdb.dsn, mode="transactional")

    def writer(scope: str) -> Any:
        w = sink.open("s")
        w.set_fence(1, lambda: None, scope)
        w.begin(checkpointed=True)
        return w

    a = writer("aaaaaaaaaaaa")
    a.recover([])
    a.write([{"id": 1}], None)
    t1 = a.pre_commit(1)
    a.abandon()  # copy A crashed after preparing checkpoint 1's transaction
    b = writer("bbbbbbbbbbbb")
    b.recover([])  # copy B starts: A's prepared transaction is not one of its own
    b.write([{"id": 2}], None)
    b.commit(b.pre_commit(1))
    b.close()
    assert pdb.prepared(a.gid_prefix) == [t1["gid"]]
    again = writer("aaaaaaaaaaaa")
    again.recover([t1])  # A resumes from checkpoint 1 and commits its transaction
    again.close()
    assert pdb.rows(f"SELECT id FROM {name} ORDER BY id") == [(1,), (2,)]


def test_a_checkpoint_directory_keeps_its_scope(tmp_path: Path) -> None:
    from millstream._checkpoint._owner import DirectoryOwner

    first = DirectoryOwner(str(tmp_path))
    first.acquire()
    first.release()
    second = DirectoryOwner(str(tmp_path))
    second.acquire()
    second.release()
    other = DirectoryOwner(str(tmp_path / "other"))
    (tmp_path / "other").mkdir()
    other.acquire()
    other.release()
    assert len(first.scope) == 12 and first.scope == second.scope != other.scope


def test_transactional_run_without_checkpoints_commits_at_the_end(pdb: Db) -> None:
    name = pdb.table("ms_plain", "id bigint")
    flow = ms.Flow("pg-plain")
    flow.source(ms.connectors.memory.read([{"id": i} for i in range(10)])).sink(
        ms.connectors.postgres.write(name, dsn=pdb.dsn, mode="transactional"))
    flow.run()
    assert pdb.rows(f"SELECT count(*) FROM {name}") == [(10,)]


JOB = textwrap.dedent('''
    import millstream as ms

    def event(i):
        return {"id": i, "key": i % 13, "ts": i * 10}

    def build(params):
        flow = ms.Flow("pg-chaos")
        src = flow.source(ms.connectors.generator.read(event, count=int(params["events"]), rate=params["rate"],
                                                       name="events"),
                          watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
        (src.key_by("key").window(ms.windows.tumbling(500)).aggregate(n=ms.agg.count(), ids=ms.agg.sum("id"))
         .sink(ms.connectors.postgres.write(params["table"], dsn=params["dsn"], mode=params["sink"], create=True,
                                            batch_size=100, **({"key": ("key", "window_start")}
                                                               if params["sink"] == "upsert" else {}))))
        return flow
''')


def _window_rows(n: int) -> Counter[tuple[int, int, int, int]]:
    out: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        acc = out.setdefault((i % 13, (i * 10) // 500 * 500), [0, 0])
        acc[0] += 1
        acc[1] += i
    return Counter((k, ws, c, s) for (k, ws), (c, s) in out.items())


@pytest.mark.parametrize(("sink", "mode"), [("transactional", "native"), ("upsert", "microbatch")])
def test_kill_and_restart_is_exactly_once(pdb: Db, tmp_path: Path, sink: str, mode: str) -> None:
    """SIGKILL the job at checkpoint/commit failpoints and at a random moment; restart until done.

    At every kill the table holds no duplicate and no foreign row; at the end it equals the
    Python-computed windows; prepared transactions the crashes left are resolved."""
    name = pdb.table("ms_chaos")
    job = tmp_path / "job.py"
    job.write_text(JOB)
    n, rnd = 4_000, random.Random(int(os.environ.get("MILLSTREAM_SEED", "7")))
    cmd = cli("run", str(job), "-q", "--progress", "off", "--mode", mode, "--set", f"sink={sink}",
              "--guarantee", "exactly-once", "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-interval", "100",
              "--set", f"events={n}", "--set", "rate=2000", "--set", f"table={name}", "--set", f"dsn={pdb.dsn}")
    # the transactional sink at the points of two-phase commit; the idempotent upsert at a random moment
    schedule = ["ckpt.before_commit=kill#3", "sink.commit=kill#2", "random", None] if sink == "transactional" \
        else ["random", None]
    expected = _window_rows(n)
    left_prepared: list[str] = []

    def no_duplicate_nor_foreign_row(fault: str) -> None:
        exists = pdb.rows("SELECT to_regclass(%s) IS NOT NULL", name)[0][0]
        seen = Counter(pdb.rows(f"SELECT key, window_start, n, ids FROM {name}") if exists else [])
        assert not [r for r, c in seen.items() if c > expected[r]], f"duplicates or foreign rows after {fault}"
        left_prepared.extend(pdb.prepared(f"millstream:{name}."))

    fired = acks.run_through_faults(cmd, schedule * 2, wait_s=(2.0, 3.0), rnd=rnd,
                                    after_kill=no_duplicate_nor_foreign_row)
    assert Counter(pdb.rows(f"SELECT key, window_start, n, ids FROM {name}")) == expected
    if sink == "transactional":
        assert fired[:2] == schedule[:2], f"the failpoints did not fire: {fired}"
        assert left_prepared, "a kill at ckpt.before_commit leaves a prepared transaction behind"
    assert pdb.prepared(f"millstream:{name}.") == []


# -- change data capture -------------------------------------------------------------------------


def _source_changes(db: Db, table: str) -> None:
    c = db.conn
    c.execute(f"INSERT INTO {table} SELECT i, 'n' || i, i FROM generate_series(1, 300) i")
    c.execute(f"UPDATE {table} SET n = n * 10, name = name || '!' WHERE id % 3 = 0")
    c.execute(f"DELETE FROM {table} WHERE id % 5 = 0")
    with c.transaction():
        c.execute(f"INSERT INTO {table} VALUES (1000, 'late', NULL)")
        c.execute(f"UPDATE {table} SET id = 2000 WHERE id = 1")  # a key change: -D of id 1, +I of id 2000


def _cdc_setup(db: Db, prefix: str, *, full: bool = False) -> tuple[str, str]:
    table = db.table(prefix, "id int PRIMARY KEY, name text, n bigint")
    if full:
        db.conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    slot = services.unique("ms_slot")
    db.slots.append(slot)
    db.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    db.conn.execute(f"CREATE PUBLICATION {slot}_pub FOR TABLE {table}")
    return table, slot


def test_change_capture_final_table_equals_the_source(pdb: Db, exec_mode: str) -> None:
    table, slot = _cdc_setup(pdb, "ms_src")
    copy = pdb.table("ms_copy", "id int PRIMARY KEY, name text, n bigint")
    start = _slot_lsn(pdb, slot)
    _source_changes(pdb, table)
    end = pdb.rows("SELECT pg_current_wal_lsn()::text")[0][0]
    flow = ms.Flow("pg-cdc")
    changes = flow.source(ms.connectors.postgres.read_changes(dsn=pdb.dsn, slot=slot, bounded=True, batch_size=50))
    out = ms.connectors.memory.write()
    changes.sink(out)
    changes.sink(ms.connectors.postgres.write(copy, dsn=pdb.dsn, mode="upsert", key="id"))
    flow.run()
    source = pdb.dicts(table, "id")
    assert sorted(changelog.final_table(out.values, key="id"), key=lambda r: r["id"]) == source
    assert pdb.dicts(copy, "id") == source
    kinds = Counter(r["_change"] for r in out.values)
    assert kinds == {"+I": 302, "-U": 100, "+U": 100, "-D": 61}
    assert {"id": 1, "_change": "-D"} in out.values  # the default identity: the old key only
    assert {"id": 3, "_change": "-U"} in out.values
    # no checkpoints, so nothing acknowledges: the reader advanced the slot itself past what it handed out
    assert pdb.rows("SELECT confirmed_flush_lsn > %s::pg_lsn AND confirmed_flush_lsn <= %s::pg_lsn "
                    "FROM pg_replication_slots WHERE slot_name = %s", start, end, slot)[0][0]


def test_change_capture_full_identity_gives_whole_old_rows(pdb: Db) -> None:
    table, slot = _cdc_setup(pdb, "ms_full", full=True)
    pdb.conn.execute(f"INSERT INTO {table} VALUES (1, 'a', 1), (2, 'b', 2)")
    pdb.conn.execute(f"UPDATE {table} SET n = 5 WHERE id = 1")
    pdb.conn.execute(f"DELETE FROM {table} WHERE id = 2")
    flow = ms.Flow("pg-cdc-full")
    out = ms.connectors.memory.write()
    flow.source(ms.connectors.postgres.read_changes(dsn=pdb.dsn, slot=slot, bounded=True,
                                                    metadata=("table", "xid", "commit_time"))).sink(out)
    flow.run()
    plain = [{k: v for k, v in r.items() if not k.startswith("_") or k == "_change"} for r in out.values]
    assert plain == [{"id": 1, "name": "a", "n": 1, "_change": "+I"}, {"id": 2, "name": "b", "n": 2, "_change": "+I"},
                     {"id": 1, "name": "a", "n": 1, "_change": "-U"}, {"id": 1, "name": "a", "n": 5, "_change": "+U"},
                     {"id": 2, "name": "b", "n": 2, "_change": "-D"}]
    assert changelog.final_table(plain) == pdb.dicts(table, "id")  # a multiset changelog, old rows whole
    assert {r["_table"] for r in out.values} == {table}
    assert all(abs(r["_timestamp"] - time.time() * 1000) < 600_000 and r["_xid"] > 0 for r in out.values)


def _slot_lsn(db: Db, slot: str) -> str:
    return str(db.rows("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", slot)[0][0])


def test_change_capture_acknowledges_only_after_the_checkpoint(pdb: Db) -> None:
    table, slot = _cdc_setup(pdb, "ms_ack")
    before = _slot_lsn(pdb, slot)
    pdb.conn.execute(f"INSERT INTO {table} SELECT i, 'x', i FROM generate_series(1, 250) i")
    src = ms.connectors.postgres.read_changes(dsn=pdb.dsn, slot=slot, batch_size=10)
    reader = src.open(SourceContext(step="cdc", clock=SystemClock(), policy="fail", checkpointed=True))
    got: list[Any] = []
    while len(got) < 250:
        got += reader.poll(100) or []
    position = reader.snapshot()
    assert _slot_lsn(pdb, slot) == before, "read but not acknowledged: the slot keeps its position"
    reader.acknowledge(position)
    reader.acknowledge(position)  # idempotent
    assert _slot_lsn(pdb, slot) == position["lsn"]
    assert reader.poll(100) == []
    reader.close()


def test_change_capture_resumes_from_its_checkpoint(pdb: Db, tmp_path: Path) -> None:
    """A checkpointed run fails right before acknowledging its first checkpoint; the next run restores
    it: the redelivered changes the checkpoint covers are dropped, nothing is lost."""
    from millstream._checkpoint import _failpoints

    table, slot = _cdc_setup(pdb, "ms_resume")
    start = _slot_lsn(pdb, slot)
    for i in range(1, 101):  # one transaction each: the reader hands them out 10 at a time
        pdb.conn.execute(f"INSERT INTO {table} VALUES ({i}, 'a', {i})")

    def run(out: Any) -> None:
        flow = ms.Flow("pg-cdc-resume")
        flow.source(ms.connectors.postgres.read_changes(dsn=pdb.dsn, slot=slot, bounded=True, batch_size=10)).sink(out)
        flow.run(guarantee="at-least-once", checkpoint_dir=str(tmp_path / "ck"), checkpoint_interval=1)

    first = ms.connectors.memory.write()
    _failpoints.arm("source.acknowledge=raise#1")
    try:
        with pytest.raises(JobError, match="failpoint"):
            run(first)
    finally:
        _failpoints.arm("")
    assert _slot_lsn(pdb, slot) == start, "the checkpoint completed but was never acknowledged"
    for i in range(101, 151):
        pdb.conn.execute(f"INSERT INTO {table} VALUES ({i}, 'b', {i})")
    second = ms.connectors.memory.write()
    run(second)
    ids = [r["id"] for r in second.values]
    assert ids and 1 < ids[0] <= len(first.values) + 1, "the changes of the restored checkpoint were dropped"
    assert ids == list(range(ids[0], 151))
    assert [r["id"] for r in first.values][:ids[0] - 1] == list(range(1, ids[0]))
    assert _slot_lsn(pdb, slot) != start


def test_change_capture_positions_inside_a_large_transaction(pdb: Db) -> None:
    """A transaction bigger than a poll: the position says how much of it was handed out."""
    table, slot = _cdc_setup(pdb, "ms_big")
    pdb.conn.execute(f"INSERT INTO {table} SELECT i, 'x', i FROM generate_series(1, 100) i")
    ctx = SourceContext(step="cdc", clock=SystemClock(), policy="fail", checkpointed=True)
    src = ms.connectors.postgres.read_changes(dsn=pdb.dsn, slot=slot, bounded=True)
    reader = src.open(ctx)
    first = reader.poll(30) or []
    position = reader.snapshot()
    assert position["partial"] is not None and position["partial"][1] == 30
    reader.close()
    again = src.open(ctx)
    again.restore(pickle.loads(pickle.dumps(position)))
    rest: list[Any] = []
    while (chunk := again.poll(25)) is not None:
        rest += chunk
    again.close()
    assert [r["id"] for r in first + rest] == list(range(1, 101))


def test_change_capture_bad_records_follow_the_policy(pdb: Db) -> None:
    """A value Python cannot hold (a date of 'infinity') is a bad record at the slot's LSN."""
    table, slot = _cdc_setup(pdb, "ms_bad")
    other = services.unique("ms_slot")  # a second slot on the same publication, for the skip policy
    pdb.slots.append(other)
    pdb.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (other,))
    pdb.conn.execute(f"ALTER TABLE {table} ADD COLUMN d date")
    pdb.conn.execute(f"INSERT INTO {table} VALUES (1, 'a', 1, '2024-01-01'), (2, 'b', 2, 'infinity'), "
                     "(3, 'c', 3, NULL)")

    def run(policy: Any, slot_name: str) -> list[Any]:
        flow = ms.Flow("pg-cdc-bad")
        out = ms.connectors.memory.write()
        flow.source(ms.connectors.postgres.read_changes(dsn=pdb.dsn, slot=slot_name, publication=f"{slot}_pub",
                                                        bounded=True, on_error=policy)).sink(out)
        flow.run(guarantee="at-least-once", checkpoint_dir=tempfile.mkdtemp())
        return list(out.values)

    with pytest.raises(ms.errors.RecordError, match=rf"{slot}@\d+/[0-9A-F]+: .*cannot be converted"):
        run("fail", slot)
    letters = ms.connectors.memory.write()
    assert [r["id"] for r in run(ms.connectors.dead_letter(letters), slot)] == [1, 3]
    assert len(letters.values) == 1 and "infinity" in letters.values[0]["raw"]
    assert [r["id"] for r in run("skip", other)] == [1, 3]


def test_change_capture_needs_logical_decoding(db: Db) -> None:
    if db.rows("SHOW wal_level")[0][0] == "logical":
        pytest.skip("the shared server has wal_level=logical")
    reader_src = ms.connectors.postgres.read_changes(dsn=db.dsn, slot=services.unique("s"), tables="x")
    with pytest.raises(ConnectorError, match="wal_level = logical"):
        reader_src.open(SourceContext(step="cdc", clock=SystemClock(), policy="fail"))


CDC_JOB = textwrap.dedent('''
    import millstream as ms

    def build(params):
        flow = ms.Flow("pg-cdc-chaos")
        changes = flow.source(ms.connectors.postgres.read_changes(dsn=params["dsn"], slot=params["slot"],
                                                                  bounded=True, batch_size=20,
                                                                  metadata=("lsn",) if params["sink"] != "upsert"
                                                                  else ()))
        changes.sink(ms.connectors.postgres.write(params["table"], dsn=params["dsn"], mode=params["sink"],
                                                  **({"key": "id"} if params["sink"] == "upsert"
                                                     else {"columns": ("id", "name", "n", "_change", "_lsn")})))
        return flow
''')


@pytest.mark.slow  # ~10 s each: pytest tests/integration/test_postgres.py -m slow
@pytest.mark.parametrize("sink", ["upsert", "transactional"])
def test_change_capture_kill_and_restart(pdb: Db, tmp_path: Path, sink: str) -> None:
    """Source table → slot → job → copy, the job SIGKILLed between the sinks' commit and the slot's
    acknowledgement and at random moments: the copy ends equal to the source table; with the
    transactional sink the raw changelog is applied exactly once (checked with a multiset copy)."""
    table, slot = _cdc_setup(pdb, "ms_chaos_src")
    for i in range(1, 1201):  # many small transactions: the job takes many checkpoints
        pdb.conn.execute(f"INSERT INTO {table} VALUES ({i}, 'n{i}', {i})")
        if i % 4 == 0:
            pdb.conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id = {i - 2}")
        if i % 9 == 0:
            pdb.conn.execute(f"DELETE FROM {table} WHERE id = {i - 5}")
    if sink == "upsert":
        copy = pdb.table("ms_chaos_copy", "id int PRIMARY KEY, name text, n bigint")
    else:  # every change as a row: exactly-once means each appears once
        copy = pdb.table("ms_chaos_log", "id int, name text, n bigint, _change text, _lsn pg_lsn")
    job = tmp_path / "cdc_job.py"
    job.write_text(CDC_JOB)
    cmd = cli("run", str(job), "-q", "--progress", "off",
              "--guarantee", "exactly-once", "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-interval", "20",
              "--set", f"dsn={pdb.dsn}", "--set", f"slot={slot}", "--set", f"table={copy}", "--set", f"sink={sink}")
    acks.run_through_faults(cmd, ["source.acknowledge=kill#3", "random", "random", "ckpt.before_commit=kill#2",
                                  None, None], wait_s=(1.8, 2.6), rnd=random.Random(11))
    source = pdb.dicts(table, "id")
    if sink == "upsert":
        assert pdb.dicts(copy, "id") == source
    else:
        # the order of the changes of an id: by commit LSN, and -U before +U within a transaction
        log = [{k: v for k, v in r.items() if k != "_lsn"} for r in pdb.dicts(copy, "id, _lsn, _change DESC")]
        assert Counter(r["_change"] for r in log) == {"+I": 1200, "-U": 300, "+U": 300, "-D": 133}
        assert sorted(changelog.final_table(log, key="id"), key=lambda r: r["id"]) == source
        assert len(log) == len({(r["id"], r["_change"], r["n"]) for r in log}), "a change was applied twice"


# -- a lost connection -----------------------------------------------------------------------------


def test_sink_reconnects_when_its_connection_is_cut(db: Db, caplog: pytest.LogCaptureFixture) -> None:
    name = db.table("ms_cut", "id bigint PRIMARY KEY, v text")
    writer = ms.connectors.postgres.write(name, mode="upsert", key="id",
                                          backoff=ms.connectors.Backoff(0.05, 0.2, 10)).open("s")
    writer.write([{"id": i, "v": "a"} for i in range(100)], None)
    writer.flush()
    db.conn.execute("SELECT pg_terminate_backend(%s)", (writer.conn.info.backend_pid,))  # type: ignore[attr-defined]
    writer.write([{"id": i, "v": "b"} for i in range(50, 150)], None)
    with caplog.at_level(logging.WARNING, logger="millstream"):
        writer.flush()
    writer.close()
    assert writer.metrics()["retries"] >= 1 and "retry 1" in caplog.text
    assert db.rows(f"SELECT v, count(*) FROM {name} GROUP BY v ORDER BY v") == [("a", 50), ("b", 100)]


def test_change_reader_reconnects_without_loss_or_repeats(pdb: Db) -> None:
    table, slot = _cdc_setup(pdb, "ms_cut_src")
    for i in range(1, 61):
        pdb.conn.execute(f"INSERT INTO {table} VALUES ({i}, 'x', {i})")
    src = ms.connectors.postgres.read_changes(dsn=pdb.dsn, slot=slot, bounded=True, batch_size=10,
                                              backoff=ms.connectors.Backoff(0.05, 0.2, 10))
    reader = src.open(SourceContext(step="cdc", clock=SystemClock(), policy="fail", checkpointed=True))
    got = reader.poll(5) or []  # half of the first fetch: the rest is handed out from memory after the cut
    pdb.conn.execute("SELECT pg_terminate_backend(%s)", (reader.conn.info.backend_pid,))  # type: ignore[attr-defined]
    while (chunk := reader.poll(7)) is not None:
        got += chunk
    assert reader.metrics()["retries"] >= 1
    reader.close()
    assert [r["id"] for r in got] == list(range(1, 61))


# -- lookup ---------------------------------------------------------------------------------------


def test_lookup_table_and_query(db: Db, exec_mode: str) -> None:
    users = db.table("ms_users", "id bigint PRIMARY KEY, name text, tier text")
    db.conn.execute(f"INSERT INTO {users} SELECT i, 'user' || i, CASE WHEN i % 2 = 0 THEN 'gold' END "
                    "FROM generate_series(0, 40) i")
    orders = [{"order": i, "user": i % 50} for i in range(300)]
    flow = ms.Flow("pg-lookup")
    src = flow.source(ms.connectors.memory.read(orders))
    by_table = ms.connectors.memory.write()
    src.lookup(ms.connectors.postgres.table(users, dsn=db.dsn, key="id", columns=("name",)), key="user",
               batch_size=64).sink(by_table)
    by_query = ms.connectors.memory.write()
    gold = ms.connectors.postgres.table(f"SELECT id AS user, tier FROM {users} WHERE tier = 'gold'", dsn=db.dsn,
                                        key="user")
    src.lookup(gold, key="user", how="left", cache_ttl=60_000).sink(by_query)
    flow.run()
    assert sorted(by_table.values, key=lambda r: r["order"]) == [
        {**o, "id": o["user"], "name": f"user{o['user']}"} for o in orders if o["user"] <= 40]
    assert sorted(by_query.values, key=lambda r: r["order"]) == [
        {**o, "tier": "gold"} if o["user"] <= 40 and o["user"] % 2 == 0 else o for o in orders]


def test_lookup_missing_table_fails_when_the_job_starts(db: Db) -> None:
    flow = ms.Flow("pg-lookup-missing")
    flow.source(ms.connectors.memory.read([{"u": 1}])).lookup(
        ms.connectors.postgres.table(services.unique("ms_none"), dsn=db.dsn, key="id"), key="u").sink(
        ms.connectors.memory.write())
    with pytest.raises(FlowDefinitionError, match="cannot read table .* does not exist"):
        flow.run()


# -- secrets and the missing extra ----------------------------------------------------------------


def test_password_never_leaks(db: Db, pdb: Db, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-Pw-91"
    dsn = f"postgresql://postgres:{secret}@127.0.0.1:5432/test"  # trust auth: the password is ignored
    caplog.set_level(logging.DEBUG, logger="millstream")
    texts: list[str] = []
    sink = ms.connectors.postgres.write(services.unique("ms_secret"), dsn=dsn)
    texts.append(sink.describe())
    with pytest.raises(ConnectorError) as err:
        sink.open("s")
    texts.append(str(err.value))
    lookup = ms.connectors.postgres.table("pg_class", dsn=dsn, key="oid")
    texts += [lookup.describe(), repr(lookup)]
    cdc = ms.connectors.postgres.read_changes(dsn=dsn, slot="s")
    texts.append(cdc.describe())
    with pytest.raises(ConnectorError) as err:
        cdc.open(SourceContext(step="cdc", clock=SystemClock(), policy="fail"))
    texts.append(str(err.value))
    down = f"postgresql://postgres:{secret}@127.0.0.1:{services.free_port()}/test"
    unreachable = ms.connectors.postgres.write("t", dsn=down, backoff=ms.connectors.Backoff(0.05, 0.05, 0.2))
    with pytest.raises(ConnectorError) as err:
        unreachable.open("s")
    texts.append(str(err.value))
    flow = ms.Flow("pg-secret")
    flow.source(ms.connectors.memory.read([{"id": 1}])).sink(ms.connectors.postgres.write("t", dsn=dsn))
    texts.append(str(flow.plan()))
    # change capture on the private cluster (trust auth too): the position in checkpoints
    _, slot = _cdc_setup(pdb, "ms_secret")
    private = pdb.dsn.replace("postgres@", f"postgres:{secret}@")
    reader = ms.connectors.postgres.read_changes(dsn=private, slot=slot).open(
        SourceContext(step="cdc", clock=SystemClock(), policy="fail"))
    reader.poll(10)
    snapshot = pickle.dumps(reader.snapshot())
    reader.close()
    assert "127.0.0.1:5432/test" in texts[0]
    for text in [*texts, caplog.text]:
        assert secret not in text
    assert secret.encode() not in snapshot


def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    for declare in (lambda: ms.connectors.postgres.write("t"), lambda: ms.connectors.postgres.table("t", key="k"),
                    lambda: ms.connectors.postgres.read_changes(slot="s")):
        with pytest.raises(MissingDependencyError, match=r"millstream\[postgres\]"):
            declare()


# -- the conformance kit ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["append", "upsert", "transactional"])
def test_sink_conformance(shared: str, private_pg: str, mode: str) -> None:
    d = Db(private_pg if mode == "transactional" else shared)
    try:
        def make() -> Any:
            name = d.table("ms_conf", "k text" + (" PRIMARY KEY" if mode == "upsert" else "") + ", i bigint")
            kw: dict[str, Any] = {"key": "k"} if mode == "upsert" else {}
            return ms.connectors.postgres.write(name, dsn=d.dsn, mode=mode, **kw)

        def read_back(sink: Any) -> list[Any]:
            return d.dicts(sink.table, "k, i")

        records = [{"k": f"k{i}", "i": i} for i in range(30)]
        report = ms.testing.check_sink(make, read_back, records, key=lambda r: r["k"])
        assert "resources released" in report.checks
    finally:
        d.close()


# -- the example of docs/connectors/postgres.md ----------------------------------------------------


def test_docs_example(shared: str) -> None:
    import psycopg

    from millstream.connectors import postgres

    table = services.unique("clicks_per_user")
    DSN = shared  # noqa: N806 - as in the docs
    with psycopg.connect(DSN, autocommit=True) as db:
        db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute(f"CREATE TABLE {table} (user_id text PRIMARY KEY, clicks bigint, last_page text)")
    try:
        clicks = [{"user_id": f"u{i % 3}", "page": f"/p{i}"} for i in range(10)]
        flow = ms.Flow("clicks")
        (flow.source(ms.connectors.memory.read(clicks))
             .key_by("user_id")
             .aggregate(clicks=ms.agg.count(), last_page=ms.agg.last("page"), changelog=True)
             .sink(postgres.write(table, dsn=DSN, mode="upsert", key="user_id")))
        flow.run(guarantee="exactly-once", checkpoint_dir=tempfile.mkdtemp())
        with psycopg.connect(DSN) as db:
            assert db.execute(f"SELECT * FROM {table} ORDER BY user_id").fetchall() == [
                ("u0", 4, "/p9"), ("u1", 3, "/p7"), ("u2", 3, "/p8")]
    finally:
        with psycopg.connect(DSN, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {table}")
