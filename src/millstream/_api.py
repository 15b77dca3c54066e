"""The dataflow API: Flow, Stream, KeyedStream. Building a flow runs nothing."""

from __future__ import annotations

import functools
import inspect as _inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from millstream import _plan as P
from millstream._eventtime import WatermarkStrategy
from millstream._expr import Expr, alias_name, col, condition_problem, lit
from millstream._location import callable_name, user_location
from millstream._time import Duration, to_ms
from millstream.agg import Aggregation
from millstream.connectors._base import Sink, Source
from millstream.connectors._lookup import LookupTable
from millstream.errors import ConfigError, FlowDefinitionError
from millstream.state import StateSpec
from millstream.windows import CountWindow, Trigger, Window, WindowAssigner

if TYPE_CHECKING:
    from millstream._control import JobHandle
    from millstream._run import RunConfig, RunResult

__all__ = ["CoGroupResult", "Flow", "JoinResult", "KeyedStream", "MatchStream", "Stream", "WindowResult",
           "WindowedStream"]

KeyLike = str | Expr | tuple[str | Expr, ...] | list[str | Expr] | Callable[[Any], Any]


class Flow:
    """A dataflow under construction. Add sources with :meth:`source`; run with :meth:`run`.

    >>> import millstream as ms
    >>> flow = ms.Flow("doubler")
    >>> out = ms.testing.CollectSink()
    >>> flow.source(ms.testing.TestSource([1, 2, 3])).map(lambda x: 2 * x).sink(out)
    >>> flow.run().ok
    True
    >>> out.values
    [2, 4, 6]
    """

    def __init__(self, name: str = "flow") -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a flow's name must be a non-empty str, not {name!r}")
        self.name = name
        self._nodes: list[P.Node] = []
        self._names: set[str] = set()

    # -- building --------------------------------------------------------------------
    def source(
        self, connector: Source, *, watermark: WatermarkStrategy | None = None, name: str | None = None
    ) -> Stream:
        """Add an input. ``watermark`` gives the stream event time (needed by time windows)."""
        loc = user_location()
        if not isinstance(connector, Source):
            raise FlowDefinitionError(
                f"source() takes a source connector, got {type(connector).__name__} {connector!r}",
                step=name or "source",
                location=loc,
                fix="pass e.g. millstream.connectors.files.read('events.jsonl') "
                "or millstream.testing.TestSource([...])",
            )
        if watermark is not None and not isinstance(watermark, WatermarkStrategy):
            raise FlowDefinitionError(
                f"watermark must be a WatermarkStrategy, not {watermark!r}",
                step=name or connector.default_name(),
                location=loc,
                fix="use millstream.WatermarkStrategy.bounded(timedelta(seconds=5), timestamp='ts')",
            )
        node = self._add(P.SourceOp(connector, watermark), (), name or connector.default_name(), loc,
                         timestamped=watermark is not None)
        return Stream(self, node)

    def _add(self, op: P.Op, inputs: tuple[int, ...], name: str, location: str | None, *, timestamped: bool) -> int:
        unique = name
        n = 2
        while unique in self._names:
            unique = f"{name}#{n}"
            n += 1
        self._names.add(unique)
        node = P.Node(len(self._nodes), unique, op, inputs, location, timestamped)
        self._nodes.append(node)
        return node.id

    def _node(self, node_id: int) -> P.Node:
        return self._nodes[node_id]

    # -- inspecting ------------------------------------------------------------------
    def plan(self) -> P.Plan:
        """The frozen logical plan; validates the flow as a whole."""
        plan = P.Plan(self.name, tuple(self._nodes))
        if not plan.sources:
            raise FlowDefinitionError(
                "the flow has no source", step=None, location=None, fix="add one with flow.source(...)"
            )
        if not plan.sinks:
            raise FlowDefinitionError(
                "the flow has no sink, so running it would compute nothing anyone can see",
                fix="end a stream with .sink(...), e.g. .sink(millstream.connectors.stdio.write())",
            )
        return plan

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, steps={len(self._nodes)})"

    # -- running ---------------------------------------------------------------------
    def run(self, mode: str | None = None, *, config: RunConfig | None = None, **options: Any) -> RunResult:
        """Run the flow to the end of its inputs (or until interrupted) and return a summary.

        Options are those of :class:`millstream.RunConfig` (``mode``, ``clock``,
        ``max_chunk``, ``on_progress``...), given either as a config object or as keywords.

        Ctrl-C (``KeyboardInterrupt``) stops the run at once, in the middle of a chunk, so without a
        savepoint: a run with the same ``checkpoint_dir`` resumes from the last periodic checkpoint.
        To stop at a chunk boundary with a savepoint, use :meth:`start` (``with flow.start(...) as
        job: job.wait()`` stops with one on Ctrl-C) or ``control=`` (a :class:`~millstream.JobControl`).
        """
        from millstream._run import run_plan

        return run_plan(self.plan(), _run_config(mode, config, options))

    def start(self, mode: str | None = None, *, config: RunConfig | None = None, **options: Any) -> JobHandle:
        """Start the flow in a background thread and return a :class:`~millstream.JobHandle` at once.

        Options are those of :meth:`run`. The handle tells the job's ``status()`` and ``metrics()``,
        stops it with ``stop(savepoint=True)`` (at its next chunk boundary; the savepoint needs a
        ``checkpoint_dir``) and waits for it with ``wait()``. It returns once the run is set up:
        an error in the options, the checkpoint directory or the savepoint is raised here.

        >>> import millstream as ms
        >>> flow = ms.Flow("doubler")
        >>> out = ms.testing.CollectSink()
        >>> flow.source(ms.testing.TestSource([1, 2, 3])).map(lambda x: 2 * x).sink(out)
        >>> with flow.start() as job:
        ...     result = job.wait()
        >>> job.status(), result.records_written, out.values
        ('finished', 3, [2, 4, 6])
        """
        from millstream._control import JobHandle

        handle = JobHandle(self.plan(), _run_config(mode, config, options))
        handle._start()
        return handle


def _run_config(mode: str | None, config: RunConfig | None, options: dict[str, Any]) -> RunConfig:
    from millstream._run import RunConfig

    cfg = config if config is not None else RunConfig()
    if mode is not None:
        options["mode"] = mode
    return cfg.replace(**options) if options else cfg


def _check_fn(fn: Any, what: str, step: str, loc: str | None, nargs: int = 1) -> None:
    if isinstance(fn, Expr):
        raise FlowDefinitionError(
            f"{what} takes a function, not an expression ({fn!r})",
            step=step,
            location=loc,
            fix="expressions work in map, filter, with_columns, select, key_by and timestamp=; "
            f"here pass a function, e.g. .{what}(lambda event: ...)",
        )
    if not callable(fn):
        raise FlowDefinitionError(
            f"{what} needs a function, got {type(fn).__name__} {fn!r}",
            step=step,
            location=loc,
            fix=f"pass a function, e.g. .{what}(lambda event: ...)",
        )
    try:
        sig = _inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*([None] * nargs))
    except TypeError:
        raise FlowDefinitionError(
            f"{what} calls its function with {nargs} argument{'s' if nargs != 1 else ''}, "
            f"but {callable_name(fn)}{sig} cannot take that",
            step=step,
            location=loc,
            fix=f"give {callable_name(fn)} exactly {nargs} positional parameter{'s' if nargs != 1 else ''}",
        ) from None


def _field_of(key: Any) -> str | None:
    """The field a key names: a non-empty str, or ``col(name)`` alone."""
    if isinstance(key, str) and key:
        return key
    if isinstance(key, Expr) and key.equals(col(key.output_name)):
        return key.output_name
    return None


def _key_spec(key: Any, step: str, loc: str | None, name: str | None) -> P.KeySpec:
    field = _field_of(key)
    if field is not None:
        return P.KeySpec(fields=(field,), name=field)
    if isinstance(key, tuple | list) and key:
        fields = [_field_of(k) for k in key]
        if all(f is not None for f in fields):
            return P.KeySpec(fields=tuple(f for f in fields if f is not None), name="key")
    if isinstance(key, Expr):
        return P.KeySpec(expr=key, name=name or alias_name(key) or "key")
    if callable(key):
        _check_fn(key, "key_by", step, loc)
        return P.KeySpec(fn=key, name=name or "key")
    raise FlowDefinitionError(
        f"key_by takes a field name, a tuple of field names, an expression or a function, not {key!r}",
        step=step,
        location=loc,
        fix="e.g. .key_by('card'), .key_by(col('card').str.lower()) or .key_by(lambda tx: tx['card'])",
    )


def _fn_name(fn: Any) -> str:
    """How a step's function (or a misplaced expression) shows in its default name."""
    return _short(fn) if isinstance(fn, Expr) else callable_name(fn)


def _short(e: Expr) -> str:
    text = repr(e)
    return text if len(text) <= 40 else text[:37] + "..."


def _label(what: str, e: Expr) -> str:
    """A default step name for an expression step: short, from its repr."""
    return f"{what}:{_short(e)}"


def _columns(what: str, items: Iterable[tuple[str, Any]], step: str, loc: str | None
             ) -> tuple[tuple[str, Expr], ...]:
    out: dict[str, Expr] = {}
    for cname, value in items:
        if not isinstance(value, Expr):
            if callable(value):
                raise FlowDefinitionError(
                    f"{what}: column {cname!r} is a function ({callable_name(value)}), not an expression",
                    step=step,
                    location=loc,
                    fix=f"build it from col, lit and when, e.g. {cname}=col('price') * 2; for arbitrary Python "
                    f"use .map(lambda r: {{**r, {cname!r}: ...}})",
                )
            try:
                value = lit(value)
            except FlowDefinitionError as exc:
                raise FlowDefinitionError(f"{what}: column {cname!r}: {exc.problem}", step=step, location=loc,
                                          fix=exc.fix) from None
        if cname in out:
            raise FlowDefinitionError(
                f"{what} names column {cname!r} twice", step=step, location=loc,
                fix="give each column one expression; rename one with .alias('other_name')",
            )
        out[cname] = value
    if not out:
        raise FlowDefinitionError(
            f"{what}() needs at least one column", step=step, location=loc,
            fix=f"e.g. .{what}(total=col('price') * col('qty'))",
        )
    return tuple(out.items())


def _check_aggs(aggs: Mapping[str, Any], step: str, loc: str | None) -> tuple[tuple[str, Aggregation], ...]:
    if not aggs:
        raise FlowDefinitionError(
            "aggregate() needs at least one named aggregation",
            step=step,
            location=loc,
            fix="e.g. .aggregate(total=ms.agg.sum('amount'), n=ms.agg.count())",
        )
    out = []
    for name, agg in aggs.items():
        if not isinstance(agg, Aggregation):
            raise FlowDefinitionError(
                f"aggregation {name!r} is {agg!r}, not an aggregation",
                step=step,
                location=loc,
                fix=f"use one of millstream.agg, e.g. {name}=ms.agg.sum('amount')",
            )
        out.append((name, agg))
    return tuple(out)


class Stream:
    """A stream of records inside a :class:`Flow`. Every method adds a step and returns the new stream."""

    def __init__(self, flow: Flow, node_id: int) -> None:
        self._flow = flow
        self._id = node_id

    @property
    def flow(self) -> Flow:
        return self._flow

    @property
    def name(self) -> str:
        """The unique name of the step that produces this stream."""
        return self._flow._node(self._id).name

    @property
    def has_event_time(self) -> bool:
        return self._flow._node(self._id).timestamped

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def _then(self, op: P.Op, name: str, loc: str | None, *, timestamped: bool | None = None) -> int:
        ts = self.has_event_time if timestamped is None else timestamped
        return self._flow._add(op, (self._id,), name, loc, timestamped=ts)

    def _fn_step(self, cls: type[P.FnOp], what: str, fn: Any, name: str | None) -> Stream:
        loc = user_location()
        if isinstance(fn, Expr) and cls in (P.MapOp, P.FilterOp):
            step = name or _label(what, fn)
            problem = condition_problem(fn) if cls is P.FilterOp else None
            if problem is not None:
                raise FlowDefinitionError(
                    f"filter keeps the records for which its condition is true, but {problem}",
                    step=step,
                    location=loc,
                    fix="compare it, e.g. .filter(col('price') * 0.908 > 500)",
                )
            return Stream(self._flow, self._then(cls(fn), step, loc))
        step = name or f"{what}:{callable_name(fn)}" if callable(fn) else (name or what)
        if not callable(fn) and not isinstance(fn, Expr) and cls in (P.MapOp, P.FilterOp):
            raise FlowDefinitionError(
                f"{what} needs a function or an expression, got {type(fn).__name__} {fn!r}",
                step=step,
                location=loc,
                fix=f"pass an expression or a function, e.g. .{what}(col('price') > 500) "
                f"or .{what}(lambda event: ...)",
            )
        _check_fn(fn, what, step, loc)
        return Stream(self._flow, self._then(cls(fn), step, loc))

    def map(self, fn: Callable[[Any], Any] | Expr, *, name: str | None = None) -> Stream:
        """One output record per input record: ``fn(record)``, or the value of an expression."""
        return self._fn_step(P.MapOp, "map", fn, name)

    def filter(self, fn: Callable[[Any], bool] | Expr, *, name: str | None = None) -> Stream:
        """Keep the records for which ``fn(record)`` is true, or an expression is (null is not)."""
        return self._fn_step(P.FilterOp, "filter", fn, name)

    def with_columns(self, *columns: Expr, name: str | None = None, **exprs: Expr | Any) -> Stream:
        """Each dict record copied with fields added or replaced: ``{**record, field: expr, ...}``.

        Keywords name their field; positional expressions are named by
        :attr:`Expr.output_name` (their ``alias``, else their first field). Every
        expression reads the incoming record; plain values are constants. ``name``
        names the step: a field called ``name`` goes in positionally,
        ``.with_columns(col("first").alias("name"))``.
        """
        return self._columns_step("with_columns", P.WithColumnsOp, columns, name, exprs, user_location())

    def select(self, *columns: str | Expr, name: str | None = None, **exprs: Expr | Any) -> Stream:
        """A new dict record of just the given fields: field names, expressions (named by
        :attr:`Expr.output_name`, e.g. their ``alias``) and ``field=expr`` keywords."""
        return self._columns_step("select", P.SelectOp, columns, name, exprs, user_location())

    def _columns_step(self, what: str, cls: type[P.WithColumnsOp | P.SelectOp], columns: tuple[Any, ...],
                      name: Any, exprs: dict[str, Any], loc: str | None) -> Stream:
        if name is not None and not isinstance(name, str):
            raise FlowDefinitionError(
                f"{what}(name=...) names the step, so it takes a str, not {name!r}",
                step=what, location=loc,
                fix=f"put a field called 'name' in positionally: .{what}(col('first').alias('name'))",
            )
        items: list[tuple[str, Any]] = []
        for c in columns:
            if isinstance(c, str) and c and what == "select":
                items.append((c, col(c)))
            elif isinstance(c, Expr):
                items.append((c.output_name, c))
            else:
                example = "'card', " if what == "select" else ""
                raise FlowDefinitionError(
                    f"{what} takes {'field names and ' if what == 'select' else ''}expressions, not {c!r}",
                    step=name or what,
                    location=loc,
                    fix=f"e.g. .{what}({example}col('amount').alias('eur'), usd=col('amount') * 1.1)",
                )
        items.extend(exprs.items())
        step = name or f"{what}:" + ",".join(n for n, _ in items)
        cols = _columns(what, items, step, loc)
        return Stream(self._flow, self._then(cls(cols), step, loc))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], *, name: str | None = None) -> Stream:
        """Zero or more output records per input record: each item of ``fn(record)``."""
        return self._fn_step(P.FlatMapOp, "flat_map", fn, name)

    def inspect(self, fn: Callable[[Any], Any] = print, *, name: str | None = None) -> Stream:
        """Call ``fn(record)`` for its side effect (default: print) and pass the record on."""
        return self._fn_step(P.InspectOp, "inspect", fn, name)

    def map_batches(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Stream:
        """Transform whole batches at once: ``fn(polars.DataFrame) -> polars.DataFrame``.

        The vectorised escape hatch for work expressions cannot say. In micro-batch
        and batch mode ``fn`` gets each batch as it is; in native mode each chunk of
        dict records becomes a DataFrame for the call. On a stream with event time
        ``fn`` must return one row per input row (row ``i`` keeps the event time of
        input row ``i``); drop rows with :meth:`filter`.
        """
        return self._fn_step(P.MapBatchesOp, "map_batches", fn, name)

    def key_by(self, key: KeyLike, *, name: str | None = None) -> KeyedStream:
        """Partition by key: a field name, a tuple of field names, an expression or a function of the record.

        Keyed results carry the key in the field(s) it was read from (``col("card")``
        counts as the field ``card``), or in ``name`` for another expression (default:
        its alias, else ``"key"``) or a function (default ``"key"``).
        """
        loc = user_location()
        field = _field_of(key)
        if field is not None:
            step = f"key_by:{field}"
        elif isinstance(key, Expr):
            step = _label("key_by", key)
        else:
            step = f"key_by:{callable_name(key) if callable(key) else 'fields'}"
        spec = _key_spec(key, step, loc, name)
        node = self._then(P.KeyByOp(spec), step, loc)
        return KeyedStream(self._flow, node, spec)

    def union(self, *others: Stream, name: str | None = None) -> Stream:
        """Merge this stream with others; the watermark is the smallest of theirs."""
        loc = user_location()
        step = name or "union"
        for o in others:
            if not isinstance(o, Stream):
                raise FlowDefinitionError(f"union() takes streams, got {o!r}", step=step, location=loc,
                                          fix="pass streams of the same flow: a.union(b, c)")
            if o._flow is not self._flow:
                raise FlowDefinitionError("union() of streams from two different flows", step=step, location=loc,
                                          fix="build both streams from the same Flow")
        if not others:
            raise FlowDefinitionError("union() needs at least one other stream", step=step, location=loc,
                                      fix="a.union(b)")
        streams = (self, *others)
        stamped = [s.has_event_time for s in streams]
        if any(stamped) and not all(stamped):
            missing = ", ".join(s.name for s in streams if not s.has_event_time)
            raise FlowDefinitionError(
                f"union() of streams with and without event time (no event time: {missing})",
                step=step,
                location=loc,
                fix="give every source in the union a watermark=WatermarkStrategy...(timestamp=...)",
            )
        node = self._flow._add(P.UnionOp(), tuple(s._id for s in streams), step, loc, timestamped=all(stamped))
        return Stream(self._flow, node)

    def window(self, assigner: WindowAssigner, *, allowed_lateness: Duration = 0, trigger: Trigger | None = None,
               name: str | None = None) -> WindowedStream:
        """Window the whole stream (not per key): one result per window.

        ``trigger`` decides when a window fires (see :mod:`millstream.windows`); by default at its end.
        """
        return _windowed(self, None, assigner, allowed_lateness, name, user_location(), trigger)

    def sink(self, connector: Sink, *, name: str | None = None) -> None:
        """Write the stream to an output."""
        loc = user_location()
        if not isinstance(connector, Sink):
            raise FlowDefinitionError(
                f"sink() takes a sink connector, got {type(connector).__name__} {connector!r}",
                step=name or "sink",
                location=loc,
                fix="pass e.g. millstream.connectors.files.write('out.jsonl') or millstream.testing.CollectSink()",
            )
        self._then(P.SinkOp(connector), name or connector.default_name(), loc)

    # -- enrichment: lookup join ---------------------------------------------------------
    def lookup(self, table: LookupTable, key: KeyLike, *, cache_ttl: Duration | None = None,
               cache_size: int = 100_000, batch_size: int = 1_000, max_in_flight: int = 4, how: str = "inner",
               combine: Callable[[Any, Any], Any] | None = None, name: str | None = None) -> Stream:
        """Join each record with the row of an external table under its ``key`` (a field, an
        expression or a function of the record), e.g. ``ms.connectors.sqlite.table(path, "users", key="id")``.

        Keys the cache does not hold are fetched in batches of up to ``batch_size`` records,
        one ``table.fetch(keys)`` per batch, ``max_in_flight`` batches at once on a thread
        pool; the output keeps the input's order and event times. Found rows and misses are
        cached for ``cache_ttl`` of processing time (None: for the whole run), at most
        ``cache_size`` keys (0: no cache). The output is ``combine(record, row)``, by
        default the two dicts merged (a row field whose name the record has too is renamed
        ``<name>_right``, except the key itself when it has the same name on both sides).
        ``how="left"`` keeps a record without a row: ``combine(record, None)``, by default
        the record unchanged. The cache is not checkpointed: a restored job refills it.
        """
        loc = user_location()
        step = name or "lookup"
        op = _lookup_op(self, table, key, step, loc, cache_ttl=cache_ttl, cache_size=cache_size,
                        batch_size=batch_size, max_in_flight=max_in_flight, how=how, combine=combine)
        return Stream(self._flow, self._then(op, step, loc))

    # -- end of enrichment ----------------------------------------------------------------

    # -- predict: online models (millstream._predict) -----------------------------------
    def predict(self, model: Any, *, features: list[str] | tuple[str, ...] | Callable[[Any], Any],
                target: str | Callable[[Any], Any] | None = None, learn: bool = True,
                output: str = "prediction", name: str | None = None) -> Stream:
        """One online model for the whole stream, test-then-train: see :meth:`KeyedStream.predict`."""
        from millstream._predict import global_key, predict_op

        loc = user_location()
        step = name or f"predict:{output}"
        key = P.KeySpec(fn=global_key, name="key")
        op = predict_op(key, model, features=features, target=target, learn=learn, output=output, step=step, loc=loc)
        return Stream(self._flow, self._then(op, step, loc))

    # -- end of predict -------------------------------------------------------------------


class KeyedStream(Stream):
    """A stream partitioned by key: running aggregates, windows and process functions per key."""

    def __init__(self, flow: Flow, node_id: int, key: P.KeySpec) -> None:
        super().__init__(flow, node_id)
        self._key = key

    @property
    def key(self) -> P.KeySpec:
        return self._key

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> Stream:
        """Running reduce: for each record, emit ``fn(previous result, record)`` of its key."""
        loc = user_location()
        step = name or f"reduce:{_fn_name(fn)}"
        _check_fn(fn, "reduce", step, loc, nargs=2)
        return Stream(self._flow, self._then(P.ReduceOp(self._key, fn), step, loc))

    def aggregate(self, *, name: str | None = None, changelog: bool = False, **aggs: Aggregation) -> Stream:
        """Running aggregates per key; each record emits its key's updated row.

        With ``changelog=True`` the output is a changelog (see :mod:`millstream.changelog`):
        a key's first row is an insert (``"_change": "+I"``), and every later record emits
        the key's previous row (``"-U"``) then its new one (``"+U"``), so applying the
        output in order leaves one row per key, the same as a group-by over all the input.
        """
        loc = user_location()
        step = name or "aggregate"
        if not isinstance(changelog, bool):
            raise FlowDefinitionError(
                f"aggregate(changelog={changelog!r}): changelog is True or False",
                step=step, location=loc,
                fix="pass changelog=True for -U/+U updates, or leave it out for the plain updated rows",
            )
        op = P.AggregateOp(self._key, _check_aggs(aggs, step, loc), changelog=changelog)
        return Stream(self._flow, self._then(op, step, loc))

    def window(self, assigner: WindowAssigner, *, allowed_lateness: Duration = 0, trigger: Trigger | None = None,
               name: str | None = None) -> WindowedStream:
        """Group each key's records into windows; finish with aggregate, reduce or process.

        ``trigger`` decides when a window fires (see :mod:`millstream.windows`); by default at its end.
        """
        return _windowed(self, self._key, assigner, allowed_lateness, name, user_location(), trigger)

    def co_group(self, other: KeyedStream, assigner: WindowAssigner,
                 fn: Callable[[Any, Window, list[Any], list[Any]], Iterable[Any] | None], *,
                 allowed_lateness: Duration = 0, trigger: Trigger | None = None,
                 name: str | None = None) -> CoGroupResult:
        """Per key and window, call ``fn(key, window, lefts, rights)`` with both streams' records of
        that window (either list may be empty, never both); emit each item it returns.

        Any window kind and trigger of :meth:`window` works; records of each side are in event-time
        order. It is a window over the union of the two sides, so a record is late exactly when it
        would be in ``window``; :meth:`CoGroupResult.late` gives such records of both sides.
        """
        step = name or f"co_group:{_fn_name(fn)}"
        loc = user_location()
        if not isinstance(other, KeyedStream) or other._flow is not self._flow:
            raise FlowDefinitionError(
                f"co_group() takes a keyed stream of the same flow, not {other!r}",
                step=step, location=loc, fix="key it first: left.key_by('id').co_group(right.key_by('id'), ...)",
            )
        _check_fn(fn, "co_group", step, loc, nargs=4)
        lkey, rkey = _key_reader(self._key), _key_reader(other._key)
        left = self.map(functools.partial(_tag, 0), name=f"{step}.left")
        right = other.map(functools.partial(_tag, 1), name=f"{step}.right")
        both = left.union(right, name=f"{step}.union")
        keyed = both.key_by(functools.partial(_tagged_key, lkey, rkey), name=f"{step}.key")
        windowed = _windowed(keyed, keyed._key, assigner, allowed_lateness, step, loc, trigger)
        res = windowed.process(functools.partial(_co_group_call, fn))
        return CoGroupResult(self._flow, res._id)

    def process(
        self,
        fn: Callable[[Any, Any], Any],
        *,
        on_timer: Callable[[Any, int], Any] | None = None,
        state: Mapping[str, StateSpec] | None = None,
        name: str | None = None,
    ) -> Stream:
        """A process function per record: ``fn(ctx, record)``; ``on_timer(ctx, timestamp)`` for timers.

        ``ctx`` carries ``key``, ``timestamp``, ``state[name]`` (declared in
        ``state``), ``timers`` and ``emit(value)``.
        """
        loc = user_location()
        step = name or f"process:{_fn_name(fn)}"
        _check_fn(fn, "process", step, loc, nargs=2)
        if on_timer is not None:
            _check_fn(on_timer, "process(on_timer=...)", step, loc, nargs=2)
        specs: list[tuple[str, StateSpec]] = []
        for sname, spec in (state or {}).items():
            if not isinstance(spec, StateSpec):
                raise FlowDefinitionError(
                    f"state {sname!r} is declared as {spec!r}, not a state spec",
                    step=step, location=loc,
                    fix=f"declare it with millstream.state, e.g. state={{{sname!r}: ms.state.value(default=0)}}",
                )
            if spec.ttl_ms is not None and spec.ttl_time == "event" and not self.has_event_time:
                raise FlowDefinitionError(
                    f"state {sname!r} has an event-time TTL, but the stream has no event time",
                    step=step, location=loc,
                    fix="give the source a watermark=WatermarkStrategy...(timestamp=...), "
                    "or use ttl_time='processing'",
                )
            specs.append((sname, spec))
        op = P.ProcessOp(self._key, fn, on_timer, tuple(specs))
        return Stream(self._flow, self._then(op, step, loc))

    # -- predict: online models per key (millstream._predict) ---------------------------
    def predict(self, model: Any, *, features: list[str] | tuple[str, ...] | Callable[[Any], Any],
                target: str | Callable[[Any], Any] | None = None, learn: bool = True,
                output: str = "prediction", name: str | None = None) -> Stream:
        """An online model per key, test-then-train: each record comes out with the model's answer.

        ``model`` is a river estimator (each key gets its own ``model.clone()``) or a
        factory of no arguments (a class, or ``lambda: MyModel(...)``, called once per key).
        ``features`` are field names, or a function record -> dict of features. For each
        dict record the step emits ``{**record, output: answer}`` where the answer comes
        from ``predict_one`` (``output="prediction"``), ``predict_proba_one`` (``"proba"``)
        or ``score_one`` (``"score"``, anomaly detectors); *then*, with ``learn=True``, the
        model learns the record: ``learn_one(x, y)`` with ``y`` the ``target`` field (or
        ``target(record)``; records whose target is None are only predicted), or
        ``learn_one(x)`` without a target. Models live in keyed state: they are part of
        every checkpoint (they must pickle). The factory is called once while the flow is
        built, to check the model has the methods asked for.
        """
        from millstream._predict import predict_op

        loc = user_location()
        step = name or f"predict:{output}"
        op = predict_op(self._key, model, features=features, target=target, learn=learn, output=output,
                        step=step, loc=loc)
        return Stream(self._flow, self._then(op, step, loc))

    # -- end of predict -------------------------------------------------------------------

    # -- pattern detection (cep) ------------------------------------------------------
    def match(self, pattern: Any, *, select: Callable[[Any], Any] | None = None, timeouts: bool = False,
              order_by: Callable[[Any], Any] | None = None, name: str | None = None) -> MatchStream:
        """The matches of a :mod:`millstream.cep` pattern in each key's events, in event-time order.

        Events are buffered per key and matched in event-time order once the watermark
        passes them (events at the same time: by ``order_by(event)`` if given, then in arrival
        order), so any arrival order within
        the watermark's bound gives the same matches; an event at or behind the watermark
        when it comes is late and goes to :meth:`MatchStream.late`. A match is emitted at the
        event time it is recognised (its last event's, or its ``within`` deadline - 1 for a
        pattern ending in a negation) as ``select(match)`` (a :class:`millstream.cep.Match`),
        by default ``{stage name: [events], ..., "key", "start", "end"}``. With
        ``timeouts=True``, partial matches whose ``within`` deadline passes go to
        :meth:`MatchStream.timeouts`.
        """
        from millstream._cep import MATCH, build_runner, unwrapper
        from millstream.state import value as _value_state

        loc = user_location()
        step = name or "match"
        if not self.has_event_time:
            raise FlowDefinitionError(
                "match() needs event time: patterns are matched in event-time order", step=step, location=loc,
                fix="give the source a watermark, e.g. flow.source(..., "
                "watermark=ms.WatermarkStrategy.bounded(timedelta(seconds=5), timestamp='ts'))",
            )
        runner = build_runner(pattern, select=select, timeouts=bool(timeouts), step=step, loc=loc,
                              order_by=order_by)
        op = P.ProcessOp(self._key, runner.on_record, runner.on_timer, (("cep", _value_state()),))
        nfa = self._then(op, f"{step}.nfa", loc)
        key = P.KeySpec(fn=_cep_key, name=self._key.name, from_upstream=True)
        out = self._flow._add(P.ProcessOp(key, unwrapper(MATCH), None, ()), (nfa,), step, loc, timestamped=True)
        return MatchStream(self._flow, out, nfa, key, bool(timeouts))

    # -- joins -----------------------------------------------------------------------
    def join(self, other: KeyedStream, *, how: str = "inner", ttl: Duration | None = None,
             combine: Callable[[Any, Any], Any] | None = None, name: str | None = None) -> Stream:
        """Every pair of a record of this stream and one of ``other`` with equal keys, whichever came first.

        Both sides are kept in state per key: forever, or with ``ttl`` until their event
        time is more than ``ttl`` behind the watermark (a record already that far behind
        when it comes is late: it joins nothing and is counted in the step's ``late``
        figure). The output's event time is the later of the two records'. The output
        record is ``combine(left, right)``, by default the two dicts merged, a right
        field whose name the left record has too renamed ``<name>_right`` (shared key
        fields keep the left's value).

        ``how="inner"`` (the default) is append-only. ``how="left"``, ``"right"`` or
        ``"full"`` also keep the records of the left, the right or both sides that have
        no partner, and the output is a changelog (see :mod:`millstream.changelog`): every
        record carries ``"_change"``. A record of an outer side with no partner yet is
        inserted padded (``"+I"``): ``combine(left, None)`` / ``combine(None, right)``, by
        default the record alone (the other side's fields are absent, not None). When its
        first partner comes, the padded row is deleted (``"-D"``, the same row) and the
        pairs are inserted (``"+I"``). A padded row whose record expires by ``ttl``
        stays: expiry retracts nothing. Late records join nothing and are not padded
        either. ``combine`` must return dict records for an outer join.
        """
        loc = user_location()
        step = name or "join"
        _check_join(self, other, "join", step, loc, combine)
        if how not in _JOIN_HOWS:
            raise FlowDefinitionError(
                f"join(how={how!r}): a regular join is 'inner', 'left', 'right' or 'full'",
                step=step, location=loc,
                fix="pass how='inner' (the default; append-only), or how='left', 'right' or 'full' "
                "for an outer join whose output is a changelog (see millstream.changelog)"
                + (" (how='full' is the full outer join)" if how in ("outer", "full_outer", "full outer") else ""),
            )
        ttl_ms = None
        if ttl is not None:
            ttl_ms = _join_ms(ttl, "ttl", step, loc)
        op = P.JoinOp(self._key, other._key, "regular", how=how, ttl_ms=ttl_ms, combine=combine)
        return _join_node(self, other, op, step, loc)

    def window_join(self, other: KeyedStream, assigner: WindowAssigner, *,
                    combine: Callable[[Any, Any], Any] | None = None, name: str | None = None) -> Stream:
        """Pairs of records with equal keys that fall in the same window (tumbling, sliding or session).

        A window's pairs are emitted when the watermark passes its end, at event time
        ``window_end - 1``; without ``combine`` each carries ``window_start`` and
        ``window_end``. A record whose windows have all fired when it comes is late:
        it joins nothing and is counted in the step's ``late`` figure. Sessions are
        formed from the records of both sides of a key.
        """
        loc = user_location()
        step = name or "window_join"
        _check_join(self, other, "window_join", step, loc, combine)
        if not isinstance(assigner, WindowAssigner) or not assigner.event_time:
            raise FlowDefinitionError(
                f"window_join() takes an event-time window assigner, not {assigner!r}",
                step=step, location=loc,
                fix="use millstream.windows.tumbling(...), sliding(...) or session(...); "
                "count windows have no common boundary for two streams",
            )
        if assigner.needs_trigger_operator:
            raise FlowDefinitionError(
                f"window_join() over {assigner.describe()} windows is not supported",
                step=step, location=loc,
                fix="join over aligned tumbling, sliding or fixed-gap session windows, or use co_group(...), "
                "which takes every window kind and trigger",
            )
        op = P.JoinOp(self._key, other._key, "window", assigner=assigner, combine=combine)
        return _join_node(self, other, op, step, loc)

    def interval_join(self, other: KeyedStream, *, lower: Duration, upper: Duration,
                      lower_inclusive: bool = True, upper_inclusive: bool = True,
                      combine: Callable[[Any, Any], Any] | None = None, name: str | None = None) -> JoinResult:
        """Pairs with equal keys whose right event time lies in ``[left.t + lower, left.t + upper]``.

        Bounds are inclusive unless ``lower_inclusive``/``upper_inclusive`` say otherwise, and
        may be negative. A record stays in state while a record of the other side at or ahead
        of the watermark could still pair with it. As in Flink, a record exactly at the
        watermark is joined; one behind it when it comes is late: it joins nothing, is counted
        in the step's ``late`` figure and goes to :meth:`JoinResult.late`. The output's event
        time is the later of the two records'.
        """
        loc = user_location()
        step = name or "interval_join"
        _check_join(self, other, "interval_join", step, loc, combine)
        lo, hi = _join_ms(lower, "lower", step, loc, signed=True), _join_ms(upper, "upper", step, loc, signed=True)
        lo += 0 if lower_inclusive else 1
        hi -= 0 if upper_inclusive else 1
        if lo > hi:
            raise FlowDefinitionError(
                f"interval_join(lower={lo}ms, upper={hi}ms): lower is above upper, so no pair can match",
                step=step, location=loc, fix="pass lower <= upper, e.g. lower=-timedelta(minutes=5), upper=0",
            )
        op = P.JoinOp(self._key, other._key, "interval", lower_ms=lo, upper_ms=hi, combine=combine)
        node = self._flow._add(op, (self._id, other._id), step, loc, timestamped=True)
        return JoinResult(self._flow, node)

    # -- enrichment: table (temporal) join ------------------------------------------------
    def join_table(self, table: KeyedStream, *, deletes: Callable[[Any], Any] | Expr | str | None = None,
                   how: str = "inner", combine: Callable[[Any, Any], Any] | None = None,
                   name: str | None = None) -> Stream:
        """Join each event with its key's row of a table kept from a changelog, as of the event's time.

        ``table``'s records are versions of a row per key: each replaces its key's row from
        its event time on, or deletes it when ``deletes`` says so (a function of the record,
        an expression, or the name of a field whose value is truthy). An event joins the
        latest version with time <= its own (of versions at the same time, the last to
        come) and is emitted at its own event time once the watermark passes it, so input
        out of order within the watermark bounds gives the same answer. Records at or
        behind the watermark when they come are late: they join nothing and are counted in
        the step's ``late`` figure. The output is ``combine(event, row)``, by default the
        two dicts merged (a row field whose name the event has too is renamed
        ``<name>_right``; shared key fields keep the event's value). ``how="left"`` keeps an
        event without a row: ``combine(event, None)``, by default the event unchanged
        (the table's fields are absent).
        """
        loc = user_location()
        step = name or "join_table"
        _check_join(self, table, "join_table", step, loc, combine)
        _check_how(how, "join_table", step, loc)
        if deletes is not None and not (isinstance(deletes, Expr) or (isinstance(deletes, str) and deletes)):
            _check_fn(deletes, "join_table(deletes=...)", step, loc)
        op = P.TableJoinOp(self._key, table._key, how=how, deletes=deletes, combine=combine)
        node = self._flow._add(op, (self._id, table._id), step, loc, timestamped=True)
        return Stream(self._flow, node)

    # -- end of enrichment (table join) ----------------------------------------------------


_JOIN_HOWS = ("inner", "left", "right", "full")


def _join_ms(value: Any, what: str, step: str, loc: str | None, *, signed: bool = False) -> int:
    try:
        ms = to_ms(value, what)
    except ConfigError as exc:
        raise FlowDefinitionError(str(exc), step=step, location=loc,
                                  fix=f"pass {what}=timedelta(...) or an int of milliseconds") from None
    if ms < 0 and not signed:
        raise FlowDefinitionError(f"{what} must be >= 0, got {ms} ms", step=step, location=loc,
                                  fix=f"pass a positive {what}, e.g. {what}=timedelta(hours=1)")
    return ms


def _check_join(left: KeyedStream, right: Any, what: str, step: str, loc: str | None, combine: Any) -> None:
    if not isinstance(right, KeyedStream):
        raise FlowDefinitionError(
            f"{what}() joins two keyed streams, but the other side is {right!r}",
            step=step, location=loc, fix=f"key it first: left.key_by('id').{what}(right.key_by('seller'), ...)",
        )
    if right._flow is not left._flow:
        raise FlowDefinitionError(f"{what}() of streams from two different flows", step=step, location=loc,
                                  fix="build both streams from the same Flow")
    missing = [s.name for s in (left, right) if not s.has_event_time]
    if missing:
        raise FlowDefinitionError(
            f"{what}() needs event time on both inputs; no event time: {', '.join(missing)}",
            step=step, location=loc,
            fix="give each source a watermark, e.g. flow.source(..., "
            "watermark=ms.WatermarkStrategy.bounded(timedelta(seconds=5), timestamp='ts'))",
        )
    lk, rk = left._key, right._key
    plain = all(k.fn is None and k.expr is None for k in (lk, rk))
    if plain and len(lk.fields) != len(rk.fields):
        raise FlowDefinitionError(
            f"{what}() keys of different widths never match: ({lk.describe()}) and ({rk.describe()})",
            step=step, location=loc, fix="key both sides by the same number of fields",
        )
    if combine is not None:
        if isinstance(combine, Expr) or not callable(combine):
            raise FlowDefinitionError(
                f"{what}(combine=...) takes a function of (left, right), not {combine!r}",
                step=step, location=loc, fix=f"e.g. .{what}(..., combine=lambda l, r: {{**l, 'seller': r['name']}})",
            )
        _check_fn(combine, "combine", step, loc, nargs=2)


def _join_node(left: KeyedStream, right: KeyedStream, op: P.JoinOp, step: str, loc: str | None) -> Stream:
    node = left._flow._add(op, (left._id, right._id), step, loc, timestamped=True)
    return Stream(left._flow, node)

# -- end of joins -----------------------------------------------------------------------


# -- enrichment helpers: table and lookup joins ------------------------------------------


def _check_how(how: Any, what: str, step: str, loc: str | None) -> None:
    if how not in ("inner", "left"):
        raise FlowDefinitionError(
            f"{what}(how={how!r}): an enrichment join is 'inner' (records without a row are dropped) "
            "or 'left' (they are kept)",
            step=step, location=loc, fix="pass how='inner' (the default) or how='left'",
        )


def _positive(value: Any, what: str, step: str, loc: str | None, *, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise FlowDefinitionError(
            f"lookup({what}={value!r}): {what} must be an int >= {0 if zero else 1}",
            step=step, location=loc, fix=f"pass e.g. {what}={1_000 if 'size' in what else 4}",
        )
    return value


def _lookup_op(stream: Stream, table: Any, key: Any, step: str, loc: str | None, *, cache_ttl: Any,
               cache_size: Any, batch_size: Any, max_in_flight: Any, how: Any, combine: Any) -> P.LookupOp:
    if not isinstance(table, LookupTable):
        raise FlowDefinitionError(
            f"lookup() takes a lookup table (an object with fetch(keys) -> {{key: row}}), not {table!r}",
            step=step, location=loc,
            fix="pass e.g. millstream.connectors.sqlite.table('users.db', 'users', key='id')",
        )
    if key is None:
        raise FlowDefinitionError("lookup() needs key=: what to look up in the table", step=step, location=loc,
                                  fix="pass the field holding the table's key, e.g. key='user_id'")
    spec = _key_spec(key, step, loc, None)
    _check_how(how, "lookup", step, loc)
    ttl_ms = None if cache_ttl is None else _join_ms(cache_ttl, "cache_ttl", step, loc)
    if combine is not None:
        if isinstance(combine, Expr) or not callable(combine):
            raise FlowDefinitionError(
                f"lookup(combine=...) takes a function of (record, row), not {combine!r}",
                step=step, location=loc, fix="e.g. combine=lambda event, user: {**event, 'name': user['name']}",
            )
        _check_fn(combine, "combine", step, loc, nargs=2)
    return P.LookupOp(table, spec, how=how, cache_ttl_ms=ttl_ms,
                      cache_size=_positive(cache_size, "cache_size", step, loc, zero=True),
                      batch_size=_positive(batch_size, "batch_size", step, loc),
                      max_in_flight=_positive(max_in_flight, "max_in_flight", step, loc), combine=combine)


# -- end of enrichment helpers -----------------------------------------------------------


# -- pattern detection (cep) --------------------------------------------------------------


def _cep_key(item: Any) -> Any:
    return item[1]


class MatchStream(Stream):
    """The matches of a pattern; :meth:`timeouts` and :meth:`late` give its side outputs."""

    def __init__(self, flow: Flow, node_id: int, nfa: int, key: P.KeySpec, timeouts: bool) -> None:
        super().__init__(flow, node_id)
        self._nfa = nfa
        self._tkey = key
        self._timeouts = timeouts

    def _side(self, tag: int, what: str, name: str | None, loc: str | None) -> Stream:
        from millstream._cep import unwrapper

        op = P.ProcessOp(self._tkey, unwrapper(tag), None, ())
        node = self._flow._add(op, (self._nfa,), name or f"{self.name}.{what}", loc, timestamped=True)
        return Stream(self._flow, node)

    def timeouts(self, *, name: str | None = None) -> Stream:
        """Partial matches whose ``within`` deadline passed, as ``{stage: [events], ..., "key",
        "start", "end", "deadline"}``, at event time ``deadline - 1`` (needs ``match(timeouts=True)``)."""
        from millstream._cep import TIMEOUT

        loc = user_location()
        if not self._timeouts:
            raise FlowDefinitionError(
                "timeouts() of a match step built without timeouts=True", step=self.name, location=loc,
                fix="pass timeouts=True to match(...)",
            )
        return self._side(TIMEOUT, "timeouts", name, loc)

    def late(self, *, name: str | None = None) -> Stream:
        """Events that came at or behind the watermark, too late for their turn: as they came."""
        from millstream._cep import LATE

        return self._side(LATE, "late", name, user_location())

# -- end of pattern detection (cep) --------------------------------------------------------


def _tag(side: int, r: Any) -> dict[str, Any]:
    return {"side": side, "record": r}


def _key_reader(spec: P.KeySpec) -> Callable[[Any], Any]:
    from millstream._runtime._aggcode import compile_key

    return compile_key(spec)


def _tagged_key(lkey: Callable[[Any], Any], rkey: Callable[[Any], Any], x: dict[str, Any]) -> Any:
    return (rkey if x["side"] else lkey)(x["record"])


def _co_group_call(fn: Callable[..., Any], key: Any, window: Window, records: list[Any]) -> Any:
    lefts = [x["record"] for x in records if not x["side"]]
    rights = [x["record"] for x in records if x["side"]]
    return fn(key, window, lefts, rights)


def _untag(x: dict[str, Any]) -> Any:
    return x["record"]


def _windowed(stream: Stream, key: P.KeySpec | None, assigner: Any, allowed_lateness: Duration,
              name: str | None, loc: str | None, trigger: Any = None) -> WindowedStream:
    step = name or "window"
    if trigger is not None and not isinstance(trigger, Trigger):
        raise FlowDefinitionError(
            f"window(trigger=...) takes a trigger, not {trigger!r}", step=step, location=loc,
            fix="use millstream.windows.on_count(n), on_event_time(), on_processing_time(), purging(...) "
            "or a subclass of millstream.windows.Trigger",
        )
    if trigger is not None and isinstance(assigner, CountWindow):
        raise FlowDefinitionError("count windows fire when full and take no trigger", step=step, location=loc,
                                  fix="use windows.global_() with trigger=windows.purging(windows.on_count(n))")
    if not isinstance(assigner, WindowAssigner):
        raise FlowDefinitionError(
            f"window() takes a window assigner, not {assigner!r}",
            step=step, location=loc,
            fix="use one of millstream.windows: tumbling(...), sliding(...), session(...), count(...)",
        )
    if assigner.event_time and not stream.has_event_time:
        raise FlowDefinitionError(
            f"an event-time window ({assigner.describe()}) on a stream without event time",
            step=step, location=loc,
            fix="give the source a watermark, e.g. flow.source(..., "
            "watermark=ms.WatermarkStrategy.bounded(timedelta(seconds=5), timestamp='ts'))",
        )
    lateness = to_ms(allowed_lateness, "allowed_lateness")
    if lateness < 0:
        raise FlowDefinitionError(f"allowed_lateness must be >= 0, got {lateness} ms", step=step, location=loc,
                                  fix="pass 0 (the default) or a positive duration")
    if lateness and not assigner.event_time:
        raise FlowDefinitionError(f"{assigner.describe()} windows have no lateness: count windows and processing-time "
                                  "windows do not use event time", step=step, location=loc,
                                  fix="drop allowed_lateness")
    return WindowedStream(stream, key, assigner, lateness, name, loc, trigger)


class WindowedStream:
    """A keyed (or whole) stream grouped into windows. Finish it with aggregate, reduce or process."""

    def __init__(self, stream: Stream, key: P.KeySpec | None, assigner: WindowAssigner, lateness: int,
                 name: str | None, loc: str | None, trigger: Trigger | None = None) -> None:
        self._trigger = trigger
        self._stream = stream
        self._key = key
        self._assigner = assigner
        self._lateness = lateness
        self._name = name
        self._loc = loc

    def _finish(self, op: P.WindowOp, default: str) -> WindowResult:
        step = self._name or default
        ts = self._stream.has_event_time
        node = self._stream._then(op, step, self._loc, timestamped=ts)
        return WindowResult(self._stream.flow, node)

    def aggregate(self, **aggs: Aggregation) -> WindowResult:
        """One row per key and window: the key field(s), ``window_start``, ``window_end`` and each aggregation."""
        step = self._name or "window"
        loc = user_location()  # errors in the arguments point at this call
        checked = _check_aggs(aggs, step, loc)
        if self._assigner.merges:
            for name, agg in checked:
                if not agg.mergeable:
                    custom = agg.kind == "custom"
                    raise FlowDefinitionError(
                        f"aggregation {name}={agg.describe()} "
                        + ("has no merge function" if custom
                           else "cannot merge partial results (it depends on the order of the values)")
                        + f", but {self._assigner.describe()} windows merge partial results",
                        step=step, location=loc,
                        fix="pass merge=lambda a, b: ... (combining two accumulators) to ms.agg.custom(...)"
                        if custom else "use it in a tumbling or count window, or as a running "
                        "aggregate (key_by(...).aggregate(...))",
                    )
        op = P.WindowOp(self._key, self._assigner, self._lateness, aggs=checked, trigger=self._trigger)
        return self._finish(op, "window")

    def reduce(self, fn: Callable[[Any, Any], Any]) -> WindowResult:
        """Fold each window's records with ``fn(a, b)`` (associative and commutative).

        A dict result gets ``window_start``/``window_end`` added; another value is
        emitted as ``{key..., "window_start", "window_end", "value"}``.
        """
        step = self._name or f"window:{_fn_name(fn)}"
        _check_fn(fn, "reduce", step, user_location(), nargs=2)
        return self._finish(P.WindowOp(self._key, self._assigner, self._lateness, reduce_fn=fn,
                                       trigger=self._trigger), step)

    def process(self, fn: Callable[[Any, Any, list[Any]], Iterable[Any] | None]) -> WindowResult:
        """Call ``fn(key, window, records)`` once per window; emit each item it returns.

        ``records`` are sorted by event time; ``window`` has ``start`` and ``end``.
        """
        step = self._name or f"window:{_fn_name(fn)}"
        _check_fn(fn, "process", step, user_location(), nargs=3)
        return self._finish(P.WindowOp(self._key, self._assigner, self._lateness, process_fn=fn,
                                       trigger=self._trigger), step)


class WindowResult(Stream):
    """The results of a window step; :meth:`late` gives its late side output."""

    def late(self, *, name: str | None = None) -> Stream:
        """Records too late for their windows (after the allowed lateness), as they came."""
        loc = user_location()
        node = self._then(P.LateOp(), name or f"{self.name}.late", loc)
        return Stream(self._flow, node)


class CoGroupResult(Stream):
    """The results of :meth:`KeyedStream.co_group`; :meth:`late` gives the records too late for their windows."""

    def late(self, *, name: str | None = None) -> Stream:
        """Records of either side too late for their windows (after the allowed lateness), as they came."""
        loc = user_location()
        node = self._then(P.LateOp(), f"{self.name}.late.tagged", loc)
        return Stream(self._flow, node).map(_untag, name=name or f"{self.name}.late")


class JoinResult(Stream):
    """The pairs of an interval join; :meth:`late` gives its late side output."""

    def late(self, *, name: str | None = None) -> Stream:
        """Records of either side that came behind the watermark (they joined nothing), as they came."""
        loc = user_location()
        node = self._then(P.LateOp(), name or f"{self.name}.late", loc)
        return Stream(self._flow, node)
