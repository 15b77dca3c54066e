"""Keyed-state backends with 1M keys: put/get through the keyed map, checkpoint size and time
(full, then incremental after 1% of keys changed), restore time; and a process-function flow.

    python benchmarks/state_backends.py [N]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Any

import millstream as ms
from millstream._state import open_backend

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000


def dir_size(path: str, names: list[str] | None = None) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in (names if names is not None else os.listdir(path)))


def backend_figures(spec: str, tmp: str) -> None:
    b = open_backend(spec)
    m = b.keyed_map("count", "n")
    t0 = time.perf_counter()
    for i in range(N):
        m[f"user-{i}"] = (i, 1_700_000_000_000 + i)  # a TTL-style entry
    put = time.perf_counter() - t0
    t0 = time.perf_counter()
    get = m.get
    for i in range(0, N, 7):
        get(f"user-{(i * 7919) % N}")
    get_s = time.perf_counter() - t0
    shared = os.path.join(tmp, "shared")
    os.makedirs(shared, exist_ok=True)
    t0 = time.perf_counter()
    h = b.snapshot(1, shared)
    full_s = time.perf_counter() - t0
    import pickle
    inline = len(pickle.dumps(h))
    full_bytes = inline + sum(f["size"] for f in h["files"].values())
    for i in range(0, N, 100):
        m[f"user-{i}"] = (-i, 0)
    t0 = time.perf_counter()
    h2 = b.snapshot(2, shared)
    incr_s = time.perf_counter() - t0
    incr_bytes = len(pickle.dumps(h2)) - sum(0 for _ in ()) if not h2["files"] else \
        sum(h2["files"][n]["size"] for n in h2.get("written", ())) + len(pickle.dumps(h2))
    b.close()
    fresh = open_backend(spec)
    fresh.keyed_map("count", "n")
    t0 = time.perf_counter()
    fresh.restore(h2, shared)
    restore_s = time.perf_counter() - t0
    assert len(fresh.keyed_map("count", "n")) == N
    fresh.close()
    print(f"{spec.split(':')[0]:7s} put {N / put:>10,.0f}/s  get {N / 7 / get_s:>10,.0f}/s  "
          f"full checkpoint {full_s:5.2f}s {full_bytes / 1e6:6.1f} MB  "
          f"incremental (1% changed) {incr_s:5.2f}s {incr_bytes / 1e6:6.1f} MB  restore {restore_s:5.2f}s")


def flow_figures(spec: str) -> None:
    events = [{"k": f"user-{(i * 7919) % N}", "v": i} for i in range(N)]

    def fn(ctx: ms.Context, r: dict[str, Any]) -> None:
        n = ctx.state["n"].value() + 1
        ctx.state["n"].update(n)
        if n > 1:
            ctx.emit(r)

    flow = ms.Flow("state-bench")
    flow.source(ms.testing.TestSource(events, chunk=2048)).key_by("k").process(
        fn, state={"n": ms.state.value(default=0)}).sink(ms.testing.CollectSink())
    t0 = time.perf_counter()
    flow.run(state=spec)
    s = time.perf_counter() - t0
    print(f"{spec.split(':')[0]:7s} process flow, {N:,} records over {N:,} keys: {N / s:,.0f} records/s")


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="state-bench-")
    try:
        for spec in ("memory", f"lmdb://{tmp}/live"):
            backend_figures(spec, os.path.join(tmp, spec[:4]))
        for spec in ("memory", f"lmdb://{tmp}/live", f"lmdb://{tmp}/live?cache=1000000"):
            flow_figures(spec)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
