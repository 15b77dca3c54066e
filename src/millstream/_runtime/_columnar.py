"""Columnar batches for the micro-batch and batch executors.

A batch is a Polars DataFrame of dict records. When the stream has event time,
the records' times ride along in the column :data:`TIME`, so filtering or
selecting rows keeps them aligned; that column is never shown to user code.
Conversion between rows and batches happens only where the plan says so: at an
operator that has no columnar implementation (its input is turned into rows) and
at the first columnar operator after one (its input is turned into a batch).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from millstream._expr import Expr, conjuncts
from millstream._plan import FilterOp, KeyByOp, MapBatchesOp, Node, SelectOp, WithColumnsOp
from millstream.errors import MillstreamError, PerformanceWarning, StepError

from ._base import Operator, Runtime

if TYPE_CHECKING:
    import polars as pl

#: The hidden column that carries event time inside a batch.
TIME = "__millstream_time__"


def polars() -> Any:
    try:
        import polars as pl
    except ImportError as exc:  # pragma: no cover - polars is a dependency
        from millstream.errors import ConfigError

        raise ConfigError("the micro-batch and batch modes need Polars: pip install polars") from exc
    return pl


def is_frame(records: Any) -> bool:
    return type(records).__name__ == "DataFrame" and hasattr(records, "height")


def to_rows(df: pl.DataFrame) -> tuple[list[Any], list[int] | None]:
    """A batch as (dict records, event times or None)."""
    if TIME in df.columns:
        return df.drop(TIME).to_dicts(), df.get_column(TIME).to_list()
    return df.to_dicts(), None


class MixedTypes(TypeError):
    """Dict records whose field holds values of more than one type (``1`` and ``"x"``, ``1`` and ``2.5``,
    ``True`` and ``1``, an object and a number): one typed column would change some of them."""

    def __init__(self, field: str, record: Any) -> None:
        super().__init__(f"field {field!r} holds values of more than one type in this batch (e.g. {record!r}); "
                         f"a typed column would change them")
        self.field = field
        self.record = record


def to_frame(records: list[Any], times: list[int] | None, *, mixed: str = "raise") -> pl.DataFrame:
    """Dict records (and their times) as a batch. Raises TypeError for records that are not dicts.

    Every value keeps its type, as in native mode (issue 10, section 2). Polars, inferring one type
    per column, would turn ``[1, "x"]`` into ``["1", "x"]``, ``[1, 2.5]`` into ``[1.0, 2.5]`` and
    ``[True, 1]`` into ``[1, 1]``, changing the *other* records of the batch; such columns are found
    after the fact (:func:`millstream._coltypes.mixed_columns`, a few vectorised tests a column, so a
    homogeneous batch keeps its speed) and then:

    - ``mixed="raise"`` (stateless steps): :class:`MixedTypes`; the caller runs the batch on rows
      through the per-record reference operator, which gives the native answer or the native error;
    - ``mixed="object"`` (keyed windows): the column becomes a polars ``Object`` column holding the
      Python values unchanged. Grouping on it uses Python's hash and equality, exactly as native mode's
      dict of keys: ``1`` and ``"1"`` are two keys (``1``, ``1.0`` and ``True`` one, as in native).
      Arithmetic, ``sum``, ``min``/``max`` and comparisons refuse an ``Object`` column, so an
      aggregation over it fails and the operator reports the native operator's error for the rows
      (the record, its key and position), as native mode fails on them.
    """
    P = polars()
    if records and not isinstance(records[0], dict):
        raise TypeError(f"a columnar step needs dict records, got {type(records[0]).__name__}")
    from millstream._coltypes import mixed_columns

    try:
        df: pl.DataFrame = P.DataFrame(records, infer_schema_length=None)
        odd = mixed_columns(df, records)
    except Exception:  # polars refused to put values of two types in one column
        if mixed == "raise":
            raise
        df, odd = None, {}  # type: ignore[assignment]
    if odd and mixed == "raise":
        field, i = next(iter(odd.items()))
        raise MixedTypes(field, records[i])
    if df is None or odd:
        df = _object_frame(records, set(odd) if df is not None else None)
    if times is not None:
        df = df.with_columns(P.Series(TIME, times, dtype=P.Int64))
    return df


def _object_frame(records: list[Any], mixed: set[str] | None) -> pl.DataFrame:
    """The records as columns, the ``mixed`` ones (None: any that a strict column refuses) as Object."""
    P = polars()
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
    cols = []
    for n in names:
        values = [r.get(n) for r in records]
        if mixed is None or n not in mixed:
            try:
                cols.append(P.Series(n, values, strict=True))
                continue
            except Exception:  # noqa: BLE001, S110 - two types: an Object column below
                pass
        cols.append(P.Series(n, values, dtype=P.Object))
    out: pl.DataFrame = P.DataFrame(cols)
    return out


def as_frame(records: Any, times: list[int] | None, *, mixed: str = "raise") -> pl.DataFrame:
    return records if is_frame(records) else to_frame(records, times, mixed=mixed)


def has_objects(df: pl.DataFrame) -> bool:
    """Whether ``df`` holds a column of Python values (see :func:`to_frame`)."""
    P = polars()
    return any(t == P.Object for t in df.schema.dtypes())


def as_objects(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """``df`` with column ``name`` as Python values in an Object column (polars has no such cast)."""
    P = polars()
    return df.with_columns(P.Series(name, df.get_column(name).to_list(), dtype=P.Object))


class RowPort:
    """Feeds an operator that works on rows: batches are turned into dict records on the way in."""

    def __init__(self, op: Operator) -> None:
        self.op = op

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        if is_frame(records):
            records, times = to_rows(records)
        self.op.push(port, records, times)

    def watermark(self, port: int, wm: int) -> None:
        self.op.watermark(port, wm)

    def idle(self, port: int) -> None:
        self.op.idle(port)


def columnar_step(node: Node) -> bool:
    """Whether a stateless step has a vectorised implementation."""
    op = node.op
    if isinstance(op, WithColumnsOp | SelectOp | KeyByOp | MapBatchesOp):
        return True
    return isinstance(op, FilterOp) and isinstance(op.fn, Expr)


def warn_row_functions(nodes: list[Node], mode: str) -> None:
    """Warn once per step that a Python function runs per row in a columnar mode."""
    from millstream._plan import FlatMapOp, MapOp

    for node in nodes:
        op = node.op
        if not isinstance(op, MapOp | FilterOp | FlatMapOp) or isinstance(op.fn, Expr):
            continue
        faster = {"map": "with_columns(field=ms.col(...) * 2) or select(...) with expressions",
                  "filter": "filter(ms.col(...) > ...) with an expression",
                  "flat_map": "map_batches(fn) over a polars DataFrame"}[op.kind]
        step_warning(node, f"step {node.name!r} calls a Python function once per row in {mode} mode, much slower "
                           f"than a vectorised step: write it as {faster}, or transform whole batches with "
                           f"map_batches(fn: polars.DataFrame -> polars.DataFrame)", stacklevel=5)


def step_warning(node: Node, message: str, *, stacklevel: int) -> None:
    """A :class:`PerformanceWarning` about ``node``, shown at the user's line that made the step (else
    ``stacklevel`` frames up from the caller)."""
    filename, _, line = (node.location or "").rpartition(":")
    if filename and line.isdigit():
        warnings.warn_explicit(message, PerformanceWarning, filename, int(line), module="millstream")
    else:
        warnings.warn(message, PerformanceWarning, stacklevel=stacklevel)


class ColumnarChainOperator(Operator):
    """Expression steps (with_columns, select, filter, key_by) and map_batches over whole batches."""

    columnar = True

    def __init__(self, nodes: list[Node], rt: Runtime, timed: bool) -> None:
        super().__init__(nodes[-1], rt, len(nodes[0].inputs))
        self.steps = list(nodes)
        self.timed = timed
        pl = polars()
        self._pl = pl
        # each stage: (node, kind, payload)
        self.stages: list[tuple[Node, str, Any]] = []
        for node in nodes:
            op = node.op
            if isinstance(op, KeyByOp):
                continue
            if isinstance(op, WithColumnsOp):
                self.stages.append((node, "with", [e.to_polars().alias(n) for n, e in op.columns]))
            elif isinstance(op, SelectOp):
                exprs = [e.to_polars().alias(n) for n, e in op.columns]
                if timed:
                    exprs.append(pl.col(TIME))
                self.stages.append((node, "select", exprs))
            elif isinstance(op, FilterOp):
                assert isinstance(op.fn, Expr)
                cond = [part.to_polars(as_condition=True) for part in conjuncts(op.fn)]
                self.stages.append((node, "filter", cond))
            elif isinstance(op, MapBatchesOp):
                self.stages.append((node, "batches", op.fn))
        self.passthrough = not self.stages
        # the per-record reference implementation: it takes over a batch that Polars cannot
        # represent or compute (records that are not dicts, mixed types, a failing expression),
        # which gives the native answer, or the native error naming the record
        self.twin: Operator | None = None
        if not any(kind == "batches" for _, kind, _ in self.stages):
            from ._chain import ChainOperator

            self.twin = ChainOperator(nodes, rt, timed)
            self.twin.outs = self.outs

    def push(self, port: int, records: Any, times: list[int] | None) -> None:
        if self.passthrough:
            self.records_in += len(records)
            self.emit(records, times)
            return
        try:
            df = as_frame(records, times)
        except Exception as exc:  # noqa: BLE001 - not representable as columns: run on rows
            self._on_rows(port, records, times, exc)
            return
        self.records_in += df.height
        for node, kind, payload in self.stages:
            try:
                if kind == "with":
                    df = df.with_columns(payload)
                elif kind == "select":
                    df = df.select(payload)
                elif kind == "filter":
                    df = df.filter(*payload)
                else:
                    df = self._map_batches(node, payload, df)
            except MillstreamError:
                raise
            except Exception as exc:
                if self.twin is None:
                    raise self._error(node, exc, df) from exc
                self.records_in -= len(records)
                self._on_rows(port, records, times, exc)
                return
            if df.height == 0:
                return
        self.emit(df, None)

    def _on_rows(self, port: int, records: Any, times: list[int] | None, exc: Exception) -> None:
        if self.twin is None:
            raise self.rt.step_error(self.steps[0], exc, record=records[0] if len(records) else None) from exc
        if is_frame(records):
            records, times = to_rows(records)
        self.records_in += len(records)
        self.twin.muted = self.muted
        before = self.twin.records_out
        self.twin.push(port, records, times)
        self.records_out += self.twin.records_out - before

    def _map_batches(self, node: Node, fn: Any, df: pl.DataFrame) -> pl.DataFrame:
        t = df.get_column(TIME) if TIME in df.columns else None
        out: pl.DataFrame = fn(df.drop(TIME) if t is not None else df)
        if not isinstance(out, self._pl.DataFrame):
            raise TypeError(f"map_batches must return a polars DataFrame, got {type(out).__name__}")
        if t is not None:
            if out.height != t.len():
                raise ValueError(
                    f"map_batches on a stream with event time must return one row per input row "
                    f"(got {out.height} for {t.len()}); drop rows with filter(...) first"
                )
            out = out.with_columns(t)
        return out

    def _error(self, node: Node, exc: Exception, df: pl.DataFrame) -> BaseException:
        first = to_rows(df.head(1))[0] if df.height else []
        return StepError(step=node.name, location=node.location, error=exc, key=None, has_key=False,
                         event_time=None, position=None, record=first[0] if first else None)

    def describe(self) -> str:
        return " -> ".join(n.name for n in self.steps)


class RowsOut(ColumnarChainOperator):
    """``map_batches`` in native mode: each chunk becomes a batch for the call, the result rows again."""

    columnar = False

    def emit(self, records: Any, times: list[int] | None) -> None:
        if is_frame(records):
            records, times = to_rows(records)
        super().emit(records, times)


def native_error(op: Operator, twin: Operator, exc: Exception, rows: list[Any], times: list[int] | None,
                 *, has_key: bool) -> BaseException:
    """The error to raise when a vectorised operator fails on a batch: the native operator's own
    error for the same rows (it names the record, key and time) when it fails too, else the
    Polars error under the step's name."""
    twin.muted = True
    try:
        twin.push(0, rows, times)
    except MillstreamError as native:
        return native
    except Exception:  # noqa: BLE001, S110 - the native operator failed otherwise: report the Polars error
        pass
    return StepError(step=op.name, location=op.node.location, error=exc, has_key=has_key)


#: The fields of each vectorised keyed operator's own snapshot (``StandInOperator._state``): frames of
#: rows with the key columns, figures, and the Python types seen per column (``kinds``). How a
#: snapshot is told from the native operator's (whose fields differ: :func:`is_own_state`) and how
#: :mod:`millstream._parallel._rescale` picks its splitter.
STATE_FIELDS = {
    "running aggregate": frozenset({"totals", "kinds"}),
    "sliced window": frozenset({"parts", "fired", "late", "kinds"}),
    "session window": frozenset({"open", "late", "kinds"}),
    "join": frozenset({"sides", "fired", "late", "kinds", "key_kinds"}),
}


#: fields of :data:`STATE_FIELDS` that snapshots taken before the operators watched types lack
_LATER_FIELDS = frozenset({"kinds", "key_kinds"})


def is_own_state(state: Any, fields: frozenset[str] | None = None) -> bool:
    """Whether ``state`` is a vectorised operator's own snapshot (of ``fields``; None: of any of
    :data:`STATE_FIELDS`), possibly an older one without the types seen."""
    if not isinstance(state, dict):
        return False
    keys = state.keys()
    return any(f - _LATER_FIELDS <= keys <= f for f in (STATE_FIELDS.values() if fields is None else (fields,)))


def is_stand_in_state(state: Any) -> bool:
    """Whether ``state`` was taken by a vectorised operator (micro-batch or batch mode): its own snapshot,
    or its native twin's once the twin had taken over (``{"native": ...}``), or a rescaled mix of both
    (``{"native": ..., "columnar": [...]}``). Never the native operators' own snapshots (no field of
    theirs is ``native``, and none has exactly the fields of :data:`STATE_FIELDS`)."""
    if not isinstance(state, dict):
        return False
    return ("native" in state and state.keys() <= {"native", "columnar"}) or is_own_state(state)


def stand_in_for(node: Node, rt: Runtime, timed: bool) -> StandInOperator:
    """The vectorised operator of a keyed step whose checkpointed state says it ran vectorised."""
    from millstream._plan import AggregateOp, JoinOp, WindowOp

    op = node.op
    if isinstance(op, WindowOp):
        from ._cwindows import make_columnar_window

        out = make_columnar_window(node, rt)
    elif isinstance(op, AggregateOp):
        from ._cagg import ColumnarAggregate

        out = ColumnarAggregate(node, rt, timed)
    elif isinstance(op, JoinOp):
        from ._cjoins import make_columnar_join

        out = make_columnar_join(node, rt)
    else:
        raise AssertionError(f"no vectorised operator for {op.kind}")
    assert isinstance(out, StandInOperator)
    return out


def native_state(node: Node, state: Any, time: Any, clock: Any, timed: bool) -> Any:
    """A checkpoint of a step taken by its vectorised operator (micro-batch or batch mode), as the native
    operator's snapshot (for a native run): the vectorised operator loads it and gives it to a fresh
    native twin exactly as it hands over mid-run (:meth:`StandInOperator.fill`), and the twin's snapshot
    is what the run's own operator restores. The twin keeps its state in memory (a run with state on
    disk loads that snapshot into its backend, as it loads any snapshot taken in memory)."""
    scratch = Runtime(clock)  # in memory whatever the run's backend: the twin is only a go-between
    stand_in = stand_in_for(node, scratch, timed)
    stand_in.restore_time(time)
    twin = stand_in._native()
    stand_in.fill(twin, state)
    return twin.snapshot()


class StandInOperator(Operator, ABC):
    """A vectorised operator that can hand over to its native twin (``_native()``) for the rest of the
    run: for a stream of records that are not dicts, and for a batch whose columns a typed state would
    change (:class:`ColumnKinds`: a field holding ints so far and floats now, values of several types
    in one batch). The twin takes the state as its own (:meth:`_give`), so the answers are the native
    ones from the first record on. Once the twin has taken over, batches, watermarks, snapshots and
    figures are the twin's; a snapshot holding a twin restores one."""

    columnar = True
    delegate: Operator | None = None
    #: the fields of this operator's own snapshot (:meth:`_state`): one of :data:`STATE_FIELDS`
    state_fields: frozenset[str]

    @abstractmethod
    def _native(self) -> Operator:
        """A fresh native operator of the same step, emitting to the same outputs."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """The vectorised state, for a snapshot."""

    @abstractmethod
    def _load(self, state: dict[str, Any]) -> None:
        """Load what :meth:`_state` gave."""

    @abstractmethod
    def _give(self, twin: Operator) -> None:
        """Put the vectorised state into the native ``twin``, as the native operator would hold it, in
        addition to what the twin holds (keys it has not: a twin may take several instances' states)."""

    def _on_watermark(self, wm: int) -> None:
        """Fire what the watermark makes due (vectorised)."""

    def _metrics(self) -> dict[str, int]:
        return {}

    def hand_over(self, port: int, records: Any, times: list[int] | None) -> None:
        """The native twin takes over with this operator's state, beginning with this batch."""
        twin = self._native()
        self._give(twin)
        self.delegate = twin
        self._to_delegate(port, records, times)

    def _to_delegate(self, port: int, records: Any, times: list[int] | None) -> None:
        twin = self.delegate
        assert twin is not None
        if is_frame(records):  # from a columnar step before this one
            records, times = to_rows(records)
        before_in, before_out = twin.records_in, twin.records_out
        twin.muted = self.muted
        twin.push(port, records, times)
        self.records_in += twin.records_in - before_in
        self.records_out += twin.records_out - before_out

    def on_watermark(self, wm: int) -> None:
        if self.delegate is not None:
            before = self.delegate.records_out
            self.delegate.wm = wm
            self.delegate.on_watermark(wm)
            self.records_out += self.delegate.records_out - before
        else:
            self._on_watermark(wm)

    def snapshot(self) -> Any:
        return {"native": self.delegate.snapshot()} if self.delegate is not None else self._state()

    def restore(self, state: Any) -> None:
        """Load a snapshot of this step in any form :meth:`fill` takes. Its own vectorised state
        (:meth:`_state`'s) keeps the operator vectorised; any other form makes it the native twin's
        stand-in, the twin holding that state: ``{"native": ...}`` (the twin had taken over), a rescaled
        checkpoint's ``{"native": state or None, "columnar": [vectorised states]}``
        (:mod:`millstream._parallel._rescale`), or the native operator's own snapshot (a checkpoint taken
        in native mode: the step then runs per record for the rest of the run, with a
        :class:`~millstream.errors.PerformanceWarning` naming it)."""
        if is_own_state(state, self.state_fields):
            self.delegate = None
            self._load(state)
            return
        twin = self._native()
        self.fill(twin, state)
        self.delegate = twin
        if "native" not in state:
            step_warning(self.node, (
                f"step {self.name!r} runs per record from here on, not vectorised: it was restored from a "
                "checkpoint taken in native mode, whose state (the per-record operator's, per key) is handed "
                "to the per-record operator as it is; a run started from a checkpoint taken in micro-batch or "
                "batch mode, or from the start, vectorises it"), stacklevel=5)

    def fill(self, twin: Operator, state: Any) -> None:
        """Put a snapshot of this step, in whichever form an executor took it, into the native ``twin``
        (a fresh one; what a rescaled state holds is added): the vectorised state (:meth:`_state`'s) as a
        hand-over gives it (:meth:`_give`), ``{"native": ...}`` and the native operator's own snapshot
        as they are, and a rescaled ``{"native": state or None, "columnar": [vectorised states]}`` both
        ways, the native part first. One conversion for a hand-over mid-run, a restore into this
        operator, and a restore into the native operator (native mode, :func:`native_state`). Leaves
        this operator's own vectorised state as the last part loaded (a scratch operator's, or one
        about to become a stand-in)."""
        if is_own_state(state, self.state_fields):
            self._load(state)
            self._give(twin)
            return
        if not is_stand_in_state(state):  # the native operator's own snapshot (native mode)
            twin.restore(state)
            return
        if state["native"] is not None:
            twin.restore(state["native"])
        for part in state.get("columnar", ()):
            self._load(part)
            self._give(twin)  # adds to what the twin holds (keys are in one part each)

    def metrics(self) -> dict[str, int]:
        return self.delegate.metrics() if self.delegate is not None else self._metrics()


def py_kind(dtype: Any) -> str | None:
    """The Python type a column of ``dtype`` gives its values (None: a column of nulls only, which any
    type fits; ``"object"``: Python values of possibly several types)."""
    pl = polars()
    if dtype == pl.Null:
        return None
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.String:
        return "str"
    if dtype == pl.Object:
        return "object"
    return str(dtype.base_type())


class ColumnKinds:
    """The Python type each watched column of a stream has held so far (issue 10 section 2).

    A vectorised operator's state is typed: partials of ints in one batch and floats in the next would
    become floats (``max`` of ``3`` and ``2.5`` read ``3.0``, natively ``3``), and equal keys of two
    types (``1`` and ``1.0``, ``True`` and ``1``) one typed key. Native mode keeps every value as it
    came and applies Python's own arithmetic and comparisons to it. So an operator checks each batch:
    :meth:`stable` is False when a watched column holds another Python type than in the batches before
    (a column of nulls fits any), or values of several types in this batch (an Object column); the
    operator then hands its state and the batch to its native twin. A stream whose fields keep one
    type each, the common case, costs a dtype look-up per column and batch."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def stable(self, df: pl.DataFrame, names: Iterable[str] | None = None,
               alias: dict[str, str] | None = None) -> bool:
        """Whether ``df``'s columns ``names`` (None: all) hold the types they held so far (recorded
        for columns new to the stream), each column under its ``alias`` name if it has one."""
        schema = df.schema
        for name in (schema if names is None else names):
            dtype = schema.get(name)
            if dtype is None:
                continue
            kind = py_kind(dtype)
            if kind is None:
                continue
            if kind == "object" or self.seen.setdefault(alias.get(name, name) if alias else name, kind) != kind:
                return False
        return True


def odd_floats(df: pl.DataFrame, names: Iterable[str]) -> bool:
    """Whether a float column among ``names`` (keys, fields compared by ``min``/``max``) holds a NaN or
    a ``-0.0``: values on which Python's comparisons differ from polars' (natively ``max`` keeps the
    first of ``0.0`` and ``-0.0`` and never replaces a NaN seen first; NaN keys are one key only when
    they are one object; ``-0.0`` and ``0.0`` one key named as it first came). A vectorised keyed
    operator hands such a batch over to the native operator. (Sums need no hand-over: natively a sum
    starts at the int 0, so it is never ``-0.0``, and :func:`zero_sums` adds ``0.0`` to float sums.)"""
    import numpy as np

    schema = df.schema
    for name in names:
        dtype = schema.get(name)
        if dtype is None or not dtype.is_float():
            continue
        s = df.get_column(name)
        a = (s.drop_nulls() if s.null_count() else s).to_numpy()  # no copy without nulls
        if np.isnan(a).any():
            return True
        zeros = a == 0
        if zeros.any() and np.signbit(a[zeros]).any():
            return True
    return False


def zero_sums(df: pl.DataFrame, names: list[str]) -> tuple[Any, list[int] | None]:
    """Results (``df``, and None for its times) with the sums ``names`` of no values as ``0``.

    Natively a sum starts at the int ``0``, so a sum of no values is ``0`` whatever the field's type;
    a typed result holds null there (``Columnar.zero_when_empty``). An integer column is filled with
    ``0``; a float column cannot hold an int, so a batch with such a sum goes out as dict records
    (with their times) with ``0`` put back. A float sum gets ``+ 0.0``, as the int 0 it starts from
    natively turns a ``-0.0`` into ``0.0`` (and leaves every other value as it is)."""
    if not names:
        return df, None
    pl = polars()
    schema = df.schema
    fill = [pl.col(n).fill_null(0) for n in names if not schema[n].is_float() and schema[n] != pl.Object]
    fill += [pl.col(n) + 0.0 for n in names if schema[n].is_float()]
    if fill:
        df = df.with_columns(fill)
    odd = [n for n in names if schema[n].is_float() and df.get_column(n).null_count()]
    if not odd:
        return df, None
    rows, times = to_rows(df)
    for r in rows:
        for n in odd:
            if r[n] is None:
                r[n] = 0
    return rows, times


def unify(frames: list[pl.DataFrame], keys: list[str], *, objects: bool = False) -> list[pl.DataFrame]:
    """Frames to concatenate or join, with one type per column: a column that is all null (dtype
    Null) takes the type the others have. A key field whose records hold different types (ints
    in one batch, strings in another): natively ``1`` and ``"1"`` are two keys; without ``objects``
    it is an error. With ``objects`` (an operator that groups by Object columns, see :func:`to_frame`)
    such key columns, and any column that is Object in one frame, become Object columns of the values
    as they are. Other columns take polars' common type: the operators that keep typed state hand a
    stream whose field changes type over to the native operator first (:class:`ColumnKinds`), so that
    common type is the type every frame has."""
    pl = polars()
    target: dict[str, Any] = {}
    for f in frames:
        for name, dtype in f.schema.items():
            if dtype == pl.Null:
                continue
            seen = target.setdefault(name, dtype)
            if seen == dtype or seen == pl.Object:
                continue
            if objects and (name in keys or dtype == pl.Object):
                target[name] = pl.Object
            elif name in keys and not (seen.is_numeric() and dtype.is_numeric()):
                raise TypeError(
                    f"key field {name!r} holds {seen} values and {dtype} values; in the columnar modes a "
                    f"field has one type: cast it with an expression (e.g. key_by(col({name!r}).cast(str))) "
                    f"or run in native mode")
    out = []
    for f in frames:
        for n, d in f.schema.items():
            if n in target and target[n] == pl.Object and d != pl.Object:
                f = as_objects(f, n)
        casts = [pl.col(n).cast(target[n]) for n, d in f.schema.items()
                 if d == pl.Null and n in target and target[n] != pl.Object]
        out.append(f.with_columns(casts) if casts else f)
    return out


def widen_sums(df: pl.DataFrame, fields: Iterable[str]) -> pl.DataFrame:
    """``df`` with the integer columns among ``fields`` (what is summed) as Int128, so that sums grow
    past 2**63 as Python's ints do instead of wrapping (a sum of int64 values would need 2**64 of them
    to leave Int128). :func:`narrow_sums` turns results that fit back into Int64."""
    pl = polars()
    wide = [pl.col(f).cast(pl.Int128) for f in fields
            if f in df.columns and df.schema[f].is_integer() and df.schema[f] != pl.Int128]
    return df.with_columns(wide) if wide else df


def narrow_sums(df: pl.DataFrame) -> pl.DataFrame:
    """Int128 result columns as Int64 where every value fits (most sinks and Arrow have no Int128)."""
    pl = polars()
    lo, hi = -(2**63), 2**63 - 1
    fit = [c for c, t in df.schema.items() if t == pl.Int128
           and df.select((pl.col(c).min() >= lo) & (pl.col(c).max() <= hi)).item() is not False]
    return df.with_columns(pl.col(c).cast(pl.Int64) for c in fit) if fit else df
