"""The file source alone: ``files.read(path)`` into a sink that counts and discards (columnar batches
taken as they are), through ``flow.run(mode)``; prints records/s and the CPU seconds of the process.

    POLARS_MAX_THREADS=1 taskset -c 1 python benchmarks/files_read.py FILE [native|microbatch|batch] [LABEL]
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import millstream as ms
from millstream.connectors import files
from millstream.connectors._base import Sink, SinkWriter


class _Count(SinkWriter):
    n = 0

    def write(self, records: list[Any], times: list[int] | None) -> None:
        _Count.n += len(records)

    @property
    def columnar(self) -> bool:
        return True

    def write_frame(self, frame: Any, times: Any) -> None:
        _Count.n += frame.height


class _CountSink(Sink):
    def open(self, step: str) -> SinkWriter:
        return _Count()

    def describe(self) -> str:
        return "count"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    path = sys.argv[1]
    mode = sys.argv[2] if len(sys.argv) > 2 else "microbatch"
    label = sys.argv[3] if len(sys.argv) > 3 else ""
    flow = ms.Flow("read")
    flow.source(files.read(path)).sink(_CountSink())
    c0, t0 = _cpu(), time.perf_counter()
    flow.run(mode=mode)
    dt, cpu = time.perf_counter() - t0, _cpu() - c0
    print(f"{label} {mode} records={_Count.n} {_Count.n / dt / 1e6:.3f} M/s wall {dt:.2f}s cpu {cpu:.2f}s", flush=True)


if __name__ == "__main__":
    main()
