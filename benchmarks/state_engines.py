"""Put/get microbenchmark of the embedded engines considered for the on-disk state backend.

    python benchmarks/state_engines.py [N]

Every engine stores pickled values under keys encoded as (key group, key) bytes, as the
backend does; puts are committed in batches of 10,000 (a write-back cache flushes so).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import zlib
from collections.abc import Callable

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
BATCH = 10_000


def enc(i: int) -> bytes:
    k = str(i).encode()
    return (zlib.crc32(k) % 128).to_bytes(2, "big") + k


def keys() -> list[bytes]:
    return [enc(i) for i in range(N)]


def bench_sqlite(d: str, ks: list[bytes], vals: list[bytes]) -> tuple[float, float, float]:
    db = sqlite3.connect(os.path.join(d, "s.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE s (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    t0 = time.perf_counter()
    for i in range(0, N, BATCH):
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO s VALUES (?, ?)", zip(ks[i:i + BATCH], vals[i:i + BATCH]))
        db.execute("COMMIT")
    put = time.perf_counter() - t0
    order = random.sample(ks, len(ks))
    t0 = time.perf_counter()
    q = "SELECT v FROM s WHERE k = ?"
    ex = db.execute
    for k in order:
        ex(q, (k,)).fetchone()
    get = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for _ in db.execute("SELECT k, v FROM s"))
    scan = time.perf_counter() - t0
    assert n == N
    db.close()
    return put, get, scan


def bench_rocks(d: str, ks: list[bytes], vals: list[bytes]) -> tuple[float, float, float]:
    from rocksdict import Options, Rdict, WriteBatch

    opts = Options(raw_mode=True)
    db = Rdict(os.path.join(d, "r"), opts)
    t0 = time.perf_counter()
    for i in range(0, N, BATCH):
        wb = WriteBatch(raw_mode=True)
        for k, v in zip(ks[i:i + BATCH], vals[i:i + BATCH]):
            wb.put(k, v)
        db.write(wb)
    put = time.perf_counter() - t0
    order = random.sample(ks, len(ks))
    t0 = time.perf_counter()
    g = db.get
    for k in order:
        g(k)
    get = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for _ in db.items())
    scan = time.perf_counter() - t0
    assert n == N
    db.close()
    return put, get, scan


def bench_lmdb(d: str, ks: list[bytes], vals: list[bytes]) -> tuple[float, float, float]:
    import lmdb

    env = lmdb.open(os.path.join(d, "l"), map_size=8 << 30, sync=False, writemap=True)
    t0 = time.perf_counter()
    for i in range(0, N, BATCH):
        with env.begin(write=True) as txn:
            p = txn.put
            for k, v in zip(ks[i:i + BATCH], vals[i:i + BATCH]):
                p(k, v)
    put = time.perf_counter() - t0
    order = random.sample(ks, len(ks))
    t0 = time.perf_counter()
    with env.begin() as txn:
        g = txn.get
        for k in order:
            g(k)
    get = time.perf_counter() - t0
    t0 = time.perf_counter()
    with env.begin() as txn:
        n = sum(1 for _ in txn.cursor())
    scan = time.perf_counter() - t0
    assert n == N
    env.close()
    return put, get, scan


def main() -> None:
    ks = keys()
    vals = [pickle.dumps({"n": i, "last": i * 7}, protocol=5) for i in range(N)]
    engines: dict[str, Callable[[str, list[bytes], list[bytes]], tuple[float, float, float]]] = {
        "sqlite": bench_sqlite, "rocksdict": bench_rocks, "lmdb": bench_lmdb}
    print(f"{N:,} keys, values ~{sum(map(len, vals)) // N} bytes, batches of {BATCH:,}")
    for name, fn in engines.items():
        d = tempfile.mkdtemp(prefix=f"bench-{name}-")
        try:
            put, get, scan = fn(d, ks, vals)
            size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
        finally:
            shutil.rmtree(d)
        print(f"{name:10s} put {N / put:>12,.0f}/s   random get {N / get:>12,.0f}/s   "
              f"scan {N / scan:>12,.0f}/s   disk {size / 1e6:,.0f} MB")


if __name__ == "__main__":
    main()
