"""Enrichment operators: the table (temporal) join and the lookup join.

**Table join** (``events.join_table(table)``): port 0 carries events, port 1 a changelog
whose records are versions of a row per key (upserts) or deletes. An event joins the
version of its key valid at the event's time: the latest version with ``time <= event
time`` (of versions at the same time, the one that came last). Events wait in a buffer
ordered by time until the watermark (the lesser of both inputs') passes them; then every
version they can see has come, so the answer is the same for every arrival order within
the watermark bounds. A key's versions are kept while a pending or future event can need
them: once the watermark passes, only the newest version at or below it (and those after)
stay, and a key whose newest such version is a delete is dropped. Records at or behind the
watermark when they come are late (the versions they need may be gone, or events already
answered without them): they are counted in ``late`` and join nothing.

**Lookup join** (``stream.lookup(table, key=...)``): each record joined with the row of an
external :class:`~millstream.connectors.LookupTable` under its key. A chunk is cut into
batches of ``batch_size`` records; the keys of a batch that the cache does not hold are
fetched with one ``fetch`` call, on a thread pool, up to ``max_in_flight`` batches ahead of
the batch being joined, and the output keeps the input's order. The cache (found rows and
misses, ``cache_ttl`` of processing time, least recently used keys evicted beyond
``cache_size``) is not state: a checkpoint holds nothing of it and a restored job refills it.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from millstream._expr import Expr
from millstream._plan import LookupOp, Node, TableJoinOp
from millstream.connectors._lookup import LookupTableError
from millstream.errors import FlowDefinitionError

from ._aggcode import compile_key
from ._base import Operator, Runtime
from ._codegen import Generated
from ._joins import default_pair

__all__ = ["LookupOperator", "TableJoinOperator"]


def _merge_or_keep(pair: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """The default output: the event and row merged, or the event unchanged when there is no row."""
    def out(event: Any, row: Any) -> Any:
        return event if row is None else pair(event, row)
    return out


def compile_condition(cond: Callable[[Any], Any] | Expr | str | None) -> Callable[[Any], bool]:
    """Whether a table record is a delete: a function, an expression, or a field whose value is truthy."""
    if cond is None:
        return lambda r: False
    if isinstance(cond, str):
        field = cond
        return lambda r: bool(r.get(field))
    if isinstance(cond, Expr):
        env: dict[str, Any] = {}
        g = Generated()
        g.add(0, "def _cond(r):")
        g.add(1, f"v = {cond.to_python(env, 'r')}")
        g.add(1, "return v is not None and bool(v)")
        fn, _ = g.compile("deletes", env, "_cond")
        return fn
    fn2 = cond
    return lambda r: bool(fn2(r))


# -- table (temporal) join ---------------------------------------------------------------------------


def _due(ts: list[int], rows: list[Any]) -> int | None:
    """The watermark from which a key's versions can be pruned: its oldest version's time if that
    is a delete, else the second oldest version's time; None if there is nothing to prune."""
    if rows[0] is None:
        return ts[0]
    return ts[1] if len(ts) > 1 else None


class TableJoinOperator(Operator):
    """Events (port 0) joined with the version of their key's row (port 1) valid at their time."""

    def __init__(self, node: Node, rt: Runtime) -> None:
        super().__init__(node, rt, 2)
        op = node.op
        assert isinstance(op, TableJoinOp)
        self.op = op
        self.inner = op.how == "inner"
        self.keyfs = [compile_key(op.left_key), compile_key(op.table_key)]
        self.is_delete = compile_condition(op.deletes)
        pair = op.combine if op.combine is not None else default_pair(op.shared_fields)
        self.out = pair if op.combine is not None else _merge_or_keep(pair)
        #: key -> (version times ascending, rows; None for a delete)
        self.versions: dict[Any, tuple[list[int], list[Any]]] = {}
        #: key -> the watermark at which its versions can be pruned (see _due), and a heap of them
        self.due: dict[Any, int] = {}
        self.due_heap: list[tuple[int, int, Any]] = []
        #: events waiting for the watermark: (t, seq, key, record)
        self.pending: list[tuple[int, int, Any, Any]] = []
        self._seq = itertools.count()
        self.late = 0

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        self.records_in += len(records)
        assert times is not None
        keyf, wm = self.keyfs[port], self.wm
        r: Any = None
        t = 0
        try:
            if port == 0:
                pending, seq = self.pending, self._seq
                for r, t in zip(records, times, strict=True):
                    if t <= wm:
                        self.late += 1
                        continue
                    heapq.heappush(pending, (t, next(seq), keyf(r), r))
                return
            versions, is_delete, schedule = self.versions, self.is_delete, self._schedule
            for r, t in zip(records, times, strict=True):
                if t <= wm:
                    self.late += 1
                    continue
                k = keyf(r)
                row = None if is_delete(r) else r
                v = versions.get(k)
                if v is None:
                    versions[k] = ([t], [row])
                    if row is None:
                        schedule(k, t)
                    continue
                ts, rows = v
                if t >= ts[-1]:
                    ts.append(t)
                    rows.append(row)
                else:
                    i = bisect.bisect_right(ts, t)
                    ts.insert(i, t)
                    rows.insert(i, row)
                due = _due(ts, rows)
                if due is not None:
                    schedule(k, due)
        except Exception as exc:
            raise self.rt.step_error(self.node, exc, record=r, has_key=False, event_time=t) from exc

    def on_watermark(self, wm: int) -> None:
        pending = self.pending
        if pending and pending[0][0] <= wm:
            out: list[Any] = []
            tout: list[int] = []
            versions, inner, make = self.versions, self.inner, self.out
            t, k, r = 0, None, None
            try:
                while pending and pending[0][0] <= wm:
                    t, _, k, r = heapq.heappop(pending)
                    v = versions.get(k)
                    row = None
                    if v is not None:
                        i = bisect.bisect_right(v[0], t) - 1
                        if i >= 0:
                            row = v[1][i]
                    if row is None and inner:
                        continue
                    out.append(make(r, row))
                    tout.append(t)
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=r, key=k, has_key=True, event_time=t) from exc
            self.emit(out, tout)
        self._prune(wm)

    def _schedule(self, k: Any, due: int) -> None:
        """Prune ``k`` when the watermark reaches ``due`` (unless it is due sooner already)."""
        current = self.due.get(k)
        if current is None or due < current:
            self.due[k] = due
            heapq.heappush(self.due_heap, (due, next(self._seq), k))

    def _prune(self, wm: int) -> None:
        """Keep, per key, the newest version at or below ``wm`` and those after it."""
        heap, due_of, versions = self.due_heap, self.due, self.versions
        while heap and heap[0][0] <= wm:
            due, _, k = heapq.heappop(heap)
            if due_of.get(k) != due:
                continue  # superseded by an earlier due time
            del due_of[k]
            ts, rows = versions[k]
            i = bisect.bisect_right(ts, wm) - 1
            if rows[i] is None:  # deleted as of the watermark: like never having had a row
                i += 1
            if i:
                del ts[:i]
                del rows[:i]
            if not ts:
                del versions[k]
                continue
            nxt = _due(ts, rows)
            if nxt is not None:  # always after wm: what is left is the newest version <= wm and later ones
                due_of[k] = nxt
                heapq.heappush(heap, (nxt, next(self._seq), k))

    def state_size(self) -> int:
        """Versions and pending events held."""
        return sum(len(v[0]) for v in self.versions.values()) + len(self.pending)

    def snapshot(self) -> Any:
        return {"versions": self.versions, "due": self.due, "pending": self.pending, "late": self.late}

    def restore(self, state: Any) -> None:
        self.versions = state["versions"]
        self.due = state["due"]
        self.pending = state["pending"]
        heapq.heapify(self.pending)
        self._seq = itertools.count(max((p[1] for p in self.pending), default=-1) + 1)
        self.due_heap = [(due, next(self._seq), k) for k, due in self.due.items()]
        heapq.heapify(self.due_heap)
        self.late = state["late"]

    def metrics(self) -> dict[str, int]:
        return {"late": self.late}


# -- lookup join ---------------------------------------------------------------------------------------


_MISS = object()


class LookupOperator(Operator):
    """Records joined with the rows of an external table, batched, cached and fetched ahead."""

    def __init__(self, node: Node, rt: Runtime, n_inputs: int = 1) -> None:
        super().__init__(node, rt, n_inputs)
        op = node.op
        assert isinstance(op, LookupOp)
        self.op = op
        self.table = op.table
        self.keyf = compile_key(op.key)
        self.inner = op.how == "inner"
        table_key = getattr(op.table, "key", None)
        shared = op.key.fields if (len(op.key.fields) == 1 and not op.key.fn and not op.key.expr
                                   and op.key.fields[0] == table_key) else ()
        pair = op.combine if op.combine is not None else default_pair(shared)
        self.out = pair if op.combine is not None else _merge_or_keep(pair)
        #: key -> (row or _MISS, expiry in processing time or None)
        self.cache: OrderedDict[Any, tuple[Any, int | None]] = OrderedDict()
        self.pool: ThreadPoolExecutor | None = None
        self.hits = self.misses = self.queries = self.not_found = 0

    def open(self) -> None:
        opener = getattr(self.table, "open", None)
        if opener is not None:
            try:
                opener()
            except LookupTableError as exc:
                raise FlowDefinitionError(exc.problem, step=self.name, location=self.node.location,
                                          fix=exc.fix) from exc
        if self.op.max_in_flight > 1:
            self.pool = ThreadPoolExecutor(self.op.max_in_flight, thread_name_prefix=f"lookup:{self.name}")

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        closer = getattr(self.table, "close", None)
        if closer is not None:
            closer()

    def _fetch(self, keys: list[Any]) -> Any:
        return self.table.fetch(keys)

    def push(self, port: int, records: list[Any], times: list[int] | None) -> None:
        n = len(records)
        self.records_in += n
        if not n:
            return
        keyf = self.keyf
        r: Any = None
        try:
            keys = [keyf(r) for r in records]
        except Exception as exc:
            raise self.rt.step_error(self.node, exc, record=r, has_key=False) from exc
        op = self.op
        now = self.rt.clock.now_ms()
        cache, size = self.cache, op.cache_size
        found: dict[Any, Any] = {}  # this chunk's answers: the cache may evict them before use
        # plan the batches: the keys each must fetch (each missing key once per chunk)
        step = op.batch_size
        batches: list[list[Any]] = []
        hits = 0
        try:
            for s in range(0, n, step):
                want: list[Any] = []
                for k in keys[s:s + step]:
                    if k in found:
                        continue
                    entry = cache.get(k) if size else None
                    if entry is not None and (entry[1] is None or entry[1] > now):
                        cache.move_to_end(k)
                        found[k] = entry[0]
                        hits += 1
                    else:
                        found[k] = _MISS  # claimed by this batch; replaced by its answer
                        want.append(k)
                batches.append(want)
        except TypeError as exc:  # an unhashable key
            raise self.rt.step_error(self.node, exc, record=records[len(batches) * step], has_key=False) from exc
        self.hits += hits
        futures: list[Future[Any] | None] = []
        pool = self.pool
        ahead = op.max_in_flight

        def submit(i: int) -> None:
            want = batches[i]
            if not want or pool is None:
                futures.append(None)
            else:
                futures.append(pool.submit(self._fetch, want))

        for i in range(min(ahead, len(batches))):
            submit(i)
        out: list[Any] = []
        tout: list[int] | None = [] if times is not None else None
        make, inner = self.out, self.inner
        ttl = op.cache_ttl_ms
        expiry = None if ttl is None else now + ttl
        for i, want in enumerate(batches):
            if want:
                self.queries += 1
                self.misses += len(want)
                fut = futures[i]
                try:
                    got = fut.result() if fut is not None else self._fetch(want)
                except Exception as exc:
                    raise self.rt.step_error(self.node, exc, record=records[i * step],
                                             key=want[0] if len(want) == 1 else tuple(want[:5]),
                                             has_key=True) from exc
                for k in want:
                    row = got.get(k, _MISS)
                    found[k] = row
                    if size:
                        cache[k] = (row, expiry)
                        cache.move_to_end(k)
                if size:
                    while len(cache) > size:
                        cache.popitem(last=False)
            if i + ahead < len(batches):
                submit(i + ahead)  # keep the pipeline full while this batch is joined
            s = i * step
            rec = None
            try:
                for j in range(s, min(s + step, n)):
                    row = found[keys[j]]
                    rec = records[j]
                    if row is _MISS:
                        self.not_found += 1
                        if inner:
                            continue
                        row = None
                    out.append(make(rec, row))
                    if tout is not None:
                        assert times is not None
                        tout.append(times[j])
            except Exception as exc:
                raise self.rt.step_error(self.node, exc, record=rec, key=keys[j], has_key=True,
                                         event_time=times[j] if times is not None else None) from exc
        self.emit(out, tout)

    def metrics(self) -> dict[str, int]:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "queries": self.queries,
                "not_found": self.not_found}
