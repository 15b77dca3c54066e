"""What ``millstream nexmark generate | run | bench`` do (the argument parsing is in ``millstream._cli``).

- ``generate`` writes the generator's events as JSON lines (``"type"`` plus the
  kind's camelCase fields, times as int epoch ms), or as JSON messages into a
  topic (``--out kafka://HOST:PORT/TOPIC?partitions=4``).
- ``run`` runs one query over the generator, a JSON-lines file or a topic
  (``--input kafka://...``), writing JSON lines, or to a topic or a table
  (``--out kafka://...``, ``--out postgresql://...?table=T``: see
  :mod:`millstream.connectors._urls`); an updating query (q4) writes its final
  table (the last row per key) to a file, its changelog to a topic or a table
  (an upsert by key applies it). ``pace`` releases any input at that many events
  per second of wall-clock time (event times are unchanged).
  With exactly-once, ``--out`` is a directory of committed part files (the
  transactional file sink) and a second run with the same checkpoint directory
  resumes.
- ``bench`` measures events per second per query and mode, over the in-process
  generator, events made into memory beforehand, a JSON-lines file and a Parquet
  file, with the bare sources (and the generator without the engine) as baselines.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from millstream._clock import SystemClock
from millstream._run import MODES, JobStatus, RunConfig, RunResult
from millstream.connectors import files, stdio
from millstream.connectors._base import Sink, SinkWriter, Source, SourceContext
from millstream.connectors._pace import check_rate, paced
from millstream.connectors._urls import file_path, is_url, sink_from_url, source_from_url
from millstream.errors import ConfigError
from millstream.nexmark._config import NexmarkConfig
from millstream.nexmark._queries import QUERIES, UPDATING, build, collapse
from millstream.nexmark._source import read
from millstream.testing import CollectSink

__all__ = ["INPUTS", "BenchRow", "DiscardSink", "RunSummary", "bench", "generate", "one_core", "run"]

_FINAL = "part-final-0.jsonl"  # the final table of an updating query, in an exactly-once --out directory


# -- generate ------------------------------------------------------------------------------------------


def generate(config: NexmarkConfig, out: str | os.PathLike[str] | None = None, *, stream: IO[bytes] | None = None
             ) -> int:
    """Write ``config``'s events as JSON lines to ``out`` (a file, replaced) or ``stream`` (default stdout),
    or into what the address ``out`` names (``kafka://HOST:PORT/TOPIC?partitions=4``: see
    :func:`~millstream.connectors._urls.sink_from_url`).

    Returns the number of events written.
    """
    if config.events is None:
        raise ConfigError("generate needs a number of events (--events N)")
    if out is not None and is_url(os.fspath(out)) and not os.fspath(out).startswith("file://"):
        return _generate_to(config, sink_from_url(os.fspath(out), name="events"))
    if out is not None and os.fspath(out).startswith("file://"):
        out = file_path(os.fspath(out))
    reader = read(config).open(SourceContext(step="generate", clock=SystemClock(), policy="fail"))
    target: IO[bytes]
    if out is not None:
        path = Path(out)
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        target = path.open("wb")
    else:
        target = stream if stream is not None else sys.stdout.buffer
    n = 0
    dumps = orjson.dumps
    nl = orjson.OPT_APPEND_NEWLINE
    try:
        while (chunk := reader.poll(16_384)) is not None:
            target.write(b"".join([dumps(e, option=nl) for e in chunk]))
            n += len(chunk)
    finally:
        reader.close()
        if out is not None:
            target.close()
        else:
            target.flush()
    return n


def _generate_to(config: NexmarkConfig, sink: Sink) -> int:
    """Write the events through ``sink``'s writer (a topic, a table), in order, then close it."""
    reader = read(config).open(SourceContext(step="generate", clock=SystemClock(), policy="fail"))
    writer = sink.open("generate")
    n = 0
    try:
        writer.begin(checkpointed=False)
        while (chunk := reader.poll(16_384)) is not None:
            writer.write(chunk, None)
            n += len(chunk)
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    finally:
        reader.close()
    return n


# -- run -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """What a ``nexmark run`` did."""

    query: str
    mode: str
    events: int
    rows_out: int
    seconds: float
    #: rows of the final table, for an updating query
    final_rows: int | None = None
    already_finished: bool = False
    #: stopped by Ctrl-C or SIGTERM before the input ended (an updating query's final table is then
    #: not written: it would not be final)
    interrupted: bool = False
    #: the run's own figures (checkpoints, steps)
    result: RunResult | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        final = f" (final table: {self.final_rows:,} rows)" if self.final_rows is not None else ""
        done = "; it had already finished, nothing to do" if self.already_finished else ""
        stop = "; interrupted before the end of its input" if self.interrupted else ""
        return (f"nexmark {self.query} ({self.mode}): {self.events:,} events, {self.rows_out:,} rows out{final}, "
                f"{self.seconds:.2f} s, {self.events_per_s:,.0f} events/s{done}{stop}")


def source_for(*, config: NexmarkConfig | None = None, input: str | None = None, rate: float | None = None,
               splits: int = 1) -> Source:
    """The event source of a run: the address ``input`` (a JSON-lines file of tagged events, a topic:
    see :func:`~millstream.connectors._urls.source_from_url`) or the generator; paced at ``rate``
    events per second of wall-clock time when given (event times are unchanged). ``splits``: the
    logical splits of the generator or of the file (a topic's are its partitions)."""
    if rate is not None:
        check_rate(rate, "--pace")
    if input is not None:
        if is_url(input) and not input.startswith("file://"):
            if splits != 1:
                raise ConfigError(f"--splits is for the generator and a JSON-lines file; {input!r} is split as "
                                  "its address says (a topic by its partitions: kafka://...?partitions=auto)")
            source = source_from_url(input, name="events")
        else:
            source = files.read(file_path(input), format="jsonl", name="events", splits=splits)
        return paced(source, rate) if rate is not None else source
    return read(config or NexmarkConfig(), rate=rate, name="events", splits=splits)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def _write_atomically(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run(query: str, *, mode: str = "native", config: NexmarkConfig | None = None, input: str | None = None,
        rate: float | None = None, out: str | None = None, guarantee: str | None = None,
        checkpoint_dir: str | None = None, checkpoint_interval: int = 1_000, max_chunk: int | None = None,
        state: str = "memory", stdout: IO[Any] | None = None, checkpoint_key: str | bytes | None = None,
        on_progress: Callable[[JobStatus], None] | None = None, progress_interval_s: float = 0.5,
        metrics: str | None = None, metrics_token: str | None = None, splits: int | None = None,
        **options: Any) -> RunSummary:
    """Run ``query`` once, from the generator (``config``) or ``input`` (a JSON-lines file or an address
    such as ``kafka://HOST:PORT/TOPIC``), paced at ``rate`` events per second of wall-clock time.

    Output rows go to ``out`` as JSON lines (stdout when None), or to the topic or table an address
    names (``kafka://...``, ``postgresql://...?table=T``; an updating query's changelog as it is:
    give a postgresql:// output ``mode=upsert&key=...`` to keep its final table). With exactly-once,
    ``out`` is a directory of committed part files. ``checkpoint_key`` signs the checkpoints
    (see ``RunConfig.checkpoint_key``). An updating query's output is
    its final table: the changelog goes to ``<out>.changelog`` and is collapsed
    into ``out`` when the run ends (not when it is interrupted: the summary says
    ``interrupted``, and a run with the same checkpoint directory goes on).
    ``splits``: the logical splits of the generator or the file (default: the run's parallelism), read
    by the workers of a run at ``parallelism`` > 1, each its range of them.
    ``on_progress`` is called with the job's figures every ``progress_interval_s``. ``metrics``
    ([HOST:]PORT) serves Prometheus metrics while it runs (see ``RunConfig.metrics``). Other
    ``options`` are :class:`~millstream.RunConfig`'s (``control``, ``from_savepoint``, ``dashboard``,
    ``engine`` and ``ray_address``...).
    """
    if query not in QUERIES:
        raise ConfigError(f"unknown Nexmark query {query!r}; choose one of {', '.join(QUERIES)}")
    cfg = RunConfig(mode=mode, max_chunk=max_chunk, guarantee=guarantee, checkpoint_dir=checkpoint_dir,
                    checkpoint_interval=checkpoint_interval, state=state, checkpoint_key=checkpoint_key,
                    on_progress=on_progress, progress_interval_s=progress_interval_s, metrics=metrics,
                    metrics_token=metrics_token).replace(**{k: v for k, v in options.items() if v is not None})
    transactional = cfg.effective_guarantee == "exactly-once"
    key = UPDATING.get(query)
    source = source_for(config=config, input=input, rate=rate,
                        splits=splits if splits is not None else cfg.parallelism)
    collected: CollectSink | None = None
    changelog: Path | None = None
    sink: Sink
    if out is not None and is_url(out) and not out.startswith("file://"):
        sink = sink_from_url(out, name="out", transactional=transactional)
        key = None  # the changelog goes to the topic or table as it is
    elif out is None:
        if transactional:
            raise ConfigError("exactly-once needs --out: standard output cannot take back what it printed")
        if key is not None:
            sink = collected = CollectSink(name="out")
        else:
            sink = stdio.write(name="out", stream=stdout)
    else:
        out = file_path(out)
        target = out.rstrip("/" + os.sep) or out
        if transactional and os.path.isfile(target):
            raise ConfigError(f"with exactly-once, --out is a directory of committed part files, and {out!r} "
                              "is a file")
        if key is not None:
            changelog = Path(target + ".changelog")
            sink = files.write(str(changelog) + ("/" if transactional else ""), format="jsonl",
                               transactional=transactional, name="out")
            final = Path(target) / _FINAL if transactional else Path(target)
            if final.exists():
                final.unlink()  # written again when the run ends
        else:
            sink = files.write(target + "/" if transactional else target, format="jsonl",
                               transactional=transactional, name="out")
    flow = build(query, source, sink, config=config if input is None else None)
    started = time.monotonic()
    result: RunResult = flow.run(config=cfg)
    final_rows = None
    if key is not None and not result.interrupted:
        if collected is not None:
            table = collapse(collected.values, key)
            target_stream = stdout if stdout is not None else sys.stdout
            target_stream.write("".join(orjson.dumps(r).decode() + "\n" for r in table))
            target_stream.flush()
        else:
            assert changelog is not None and out is not None
            rows = (files.read_committed(changelog) if transactional else _read_jsonl(changelog))
            table = collapse(rows, key)
            target = out.rstrip("/" + os.sep) or out
            _write_atomically(Path(target) / _FINAL if transactional else Path(target), table)
        final_rows = len(table)
    return RunSummary(query, mode, result.records_read, result.records_written, time.monotonic() - started,
                      final_rows, result.already_finished, result.interrupted, result)


# -- bench ---------------------------------------------------------------------------------------------


class DiscardSink(Sink):
    """A sink that counts its records and keeps none (the Flink suite's ``blackhole``)."""

    delivery = "idempotent"

    def __init__(self, name: str = "blackhole") -> None:
        self.name = name
        self.count = 0

    def open(self, step: str) -> SinkWriter:
        return _DiscardWriter(self)

    def describe(self) -> str:
        return "discard (count only)"

    def default_name(self) -> str:
        return self.name


class _DiscardWriter(SinkWriter):
    def __init__(self, sink: DiscardSink) -> None:
        self.sink = sink

    def write(self, records: list[Any], times: list[int] | None) -> None:
        self.sink.count += len(records)

    columnar = True

    def write_frame(self, frame: Any, times: Any) -> None:
        self.sink.count += frame.height


@dataclass(frozen=True)
class BenchRow:
    """One measurement: a query (or ``"source"``, the bare input) over one input in one mode."""

    query: str
    input: str
    mode: str
    events: int
    rows: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_s": round(self.events_per_s, 1)}


def _measure(query: str, source: Source, mode: str, config: NexmarkConfig | None, label: str) -> BenchRow:
    from millstream._api import Flow

    sink = DiscardSink()
    if query == "source":
        flow = Flow("nexmark-source")
        flow.source(source, name="events").sink(sink, name="out")
    else:
        flow = build(query, source, sink, config=config)
    started = time.perf_counter()
    result = flow.run(mode=mode)
    seconds = time.perf_counter() - started
    return BenchRow(query, label, mode, result.records_read, sink.count, seconds)


#: What each bench input is, and how each mode reads it.
INPUTS: dict[str, str] = {
    "generator": "the in-process Nexmark generator: columnar batches (poll_frame) in micro-batch and batch, "
                 "dict rows in native",
    "memory": "the events made once before the timing: a polars DataFrame sliced as it is in micro-batch and "
              "batch; for native, the generator's dict rows made once into a list (no conversion timed)",
    "jsonl": "a JSON-lines file made before the timing: parsed by polars in micro-batch and batch, by orjson "
             "into dicts in native",
    "parquet": "a Parquet file made before the timing: Arrow batches as they are in micro-batch and batch, "
               "rows as dicts (to_pylist) in native",
}

_BARE = "bare"  # the generator alone, polled in a plain loop without the engine


def one_core(cpu: int | None = None) -> dict[str, Any]:
    """Make this process's figures one-core: pin it to one CPU and give polars one thread.

    ``cpu`` defaults to the last CPU this process may use. Sets ``POLARS_MAX_THREADS=1``,
    which polars reads when it is first imported; the pinning alone also gives it one
    thread (it sizes its pool by the CPUs it may use). Returns what was done, with the
    size of polars' thread pool.
    """
    os.environ["POLARS_MAX_THREADS"] = "1"
    info: dict[str, Any] = {"cpu": None, "polars_threads": None}
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        target = allowed[-1] if cpu is None else cpu
        if target not in allowed:
            raise ConfigError(f"cpu {target} is not one this process may run on ({allowed})")
        os.sched_setaffinity(0, {target})
        info["cpu"] = target
    try:
        import polars as pl

        info["polars_threads"] = pl.thread_pool_size()
    except ImportError:
        pass
    return info


def _context() -> SourceContext:
    return SourceContext(step="bench", clock=SystemClock(), policy="fail")


def _events_frame(config: NexmarkConfig, chunk: int = 100_000) -> Any:
    """All the events of ``config`` as one polars DataFrame, made in columns."""
    import polars as pl

    reader: Any = read(config, name="events").open(_context())  # a _NexmarkReader: it has poll_frame
    try:
        if not reader.columnar:
            raise ConfigError("the memory and parquet bench inputs need numpy, pyarrow and polars")
        parts = []
        while (frame := reader.poll_frame(chunk)) is not None:
            parts.append(frame)
    finally:
        reader.close()
    return pl.concat(parts, how="diagonal").rechunk()


def _events_rows(config: NexmarkConfig, chunk: int = 16_384) -> list[Any]:
    """All the events of ``config`` as the generator's dict rows (each kind's fields only)."""
    reader = read(config, name="events").open(_context())
    rows: list[Any] = []
    try:
        while (got := reader.poll(chunk)) is not None:
            rows += got
    finally:
        reader.close()
    return rows


def _bare(config: NexmarkConfig, mode: str) -> BenchRow:
    """The generator alone, without the engine: ``poll`` (rows) for native, ``poll_frame`` for the others."""
    from millstream._run import DEFAULT_CHUNK

    chunk = DEFAULT_CHUNK[mode]
    started = time.perf_counter()
    reader: Any = read(config, name="events").open(_context())
    n = 0
    try:
        if mode == "native" or not reader.columnar:
            while (rows := reader.poll(chunk)) is not None:
                n += len(rows)
        else:
            while (frame := reader.poll_frame(chunk)) is not None:
                n += frame.height
    finally:
        reader.close()
    seconds = time.perf_counter() - started
    return BenchRow(_BARE, "generator", mode, n, n, seconds)


def bench(*, events: int = 1_000_000, event_rate: int = 10_000, queries: Sequence[str] | None = None,
          modes: Sequence[str] | None = None, input: str | None = None, inputs: Sequence[str] = ("generator", "jsonl"),
          repeat: int = 1, on_row: Any = None, on_note: Any = None) -> list[BenchRow]:
    """Events per second of each query in each mode, from each input (see :data:`INPUTS`).

    ``input`` is an existing JSON-lines file of events for the ``jsonl`` input (by
    default one is made from the same config, in a temporary directory); the
    ``memory`` and ``parquet`` inputs are made from the same config before anything
    is timed. The bare sources (query ``"source"``: the input read into a sink that
    counts, through the engine) are the baselines; for the generator, ``"bare"`` is
    the generator polled in a plain loop without the engine. Each input and mode is
    warmed up by one untimed run of its source. Each figure is the best of ``repeat``
    runs. ``on_row(row)`` is called after each measurement, ``on_note(text)`` with
    what is being prepared.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ConfigError(f"repeat must be an int >= 1, not {repeat!r}")
    queries = list(queries) if queries is not None else list(QUERIES)
    modes = list(modes) if modes is not None else list(MODES)
    for q in queries:
        if q not in QUERIES and q != "source":
            raise ConfigError(f"unknown Nexmark query {q!r}; choose among {', '.join(QUERIES)}")
    for m in modes:
        if m not in MODES:
            raise ConfigError(f"unknown mode {m!r}; this build runs: {', '.join(MODES)}")
    for i in inputs:
        if i not in INPUTS:
            raise ConfigError(f"unknown bench input {i!r}; choose among {', '.join(INPUTS)}")
    config = NexmarkConfig(events=events, rate=event_rate)
    rows: list[BenchRow] = []

    def note(text: str) -> None:
        if on_note is not None:
            on_note(text)

    def record(row: BenchRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    with tempfile.TemporaryDirectory(prefix="millstream-nexmark-") as tmp:
        path = input
        if "jsonl" in inputs and path is None:
            note(f"writing {events:,} events as JSON lines")
            path = os.path.join(tmp, "events.jsonl")
            generate(config, path)
        frame: Any = None
        parquet: str | None = None
        if "memory" in inputs or "parquet" in inputs:
            note(f"making {events:,} events into a polars DataFrame")
            frame = _events_frame(config)
            if "parquet" in inputs:
                parquet = os.path.join(tmp, "events.parquet")
                note("writing them as Parquet")
                frame.write_parquet(parquet)
        dict_rows: Any = None
        if "memory" in inputs and "native" in modes:
            note(f"making {events:,} events into a list of dict rows (the native mode's memory input)")
            dict_rows = _events_rows(config)
        if "memory" not in inputs:
            frame = None

        def source(kind: str, mode: str) -> tuple[Source, NexmarkConfig | None]:
            if kind == "generator":
                return read(config, name="events"), config
            if kind == "memory":
                from millstream.connectors import memory

                return memory.read(dict_rows if mode == "native" else frame, name="events"), config
            if kind == "jsonl":
                assert path is not None
                return files.read(path, format="jsonl", name="events"), None
            assert parquet is not None
            return files.read(parquet, format="parquet", name="events"), None

        def measure(q: str, kind: str, mode: str) -> BenchRow:
            src, cfg = source(kind, mode)
            return _measure(q, src, mode, cfg, kind)

        for kind in inputs:
            for mode in modes:
                measure("source", kind, mode)  # warm-up: imports, code generation, the page cache
                if kind == "generator":
                    record(min((_bare(config, mode) for _ in range(repeat)), key=lambda r: r.seconds))
                for q in ["source", *[q for q in queries if q != "source"]]:
                    record(min((measure(q, kind, mode) for _ in range(repeat)), key=lambda r: r.seconds))
            if kind == "memory":
                frame = dict_rows = None
    return rows


def bench_table(rows: Sequence[BenchRow], *, title: str) -> Any:
    """The measurements as a rich table: one line per query and input, one column per mode."""
    from rich.table import Table

    modes = list(dict.fromkeys(r.mode for r in rows))
    table = Table(title=title)
    table.add_column("query")
    table.add_column("input")
    table.add_column("rows out", justify="right")
    for m in modes:
        table.add_column(f"{m} events/s", justify="right")
    lines: dict[tuple[str, str], dict[str, BenchRow]] = {}
    for r in rows:
        lines.setdefault((r.query, r.input), {})[r.mode] = r
    for (q, inp), by_mode in lines.items():
        first = next(iter(by_mode.values()))
        label = {"source": "(source only)", _BARE: "(generator, no engine)"}.get(q, q)
        table.add_row(label, inp, f"{first.rows:,}",
                      *[f"{by_mode[m].events_per_s:,.0f}" if m in by_mode else "-" for m in modes])
    return table


def write_bench_json(path: str, rows: Sequence[BenchRow], *, events: int, event_rate: int,
                     extra: dict[str, Any] | None = None) -> None:
    import platform

    doc = {
        "benchmark": "nexmark",
        "events": events,
        "event_rate": event_rate,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "inputs": {i: INPUTS[i] for i in dict.fromkeys(r.input for r in rows)},
        **(extra or {}),
        "results": [r.to_dict() for r in rows if r.query != _BARE],
        #: the generator polled in a plain loop, without the engine (rows for native, frames otherwise)
        "generator_no_engine": [r.to_dict() for r in rows if r.query == _BARE],
    }
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
