"""What each worker restores from a checkpoint, at the parallelism it was taken at or at another.

A checkpoint holds **parts**: one per worker of the run that took it (a checkpoint of one process is
one part). A part is what :meth:`~millstream._runtime._native.NativeJob.snapshot` gives, per
operator instance of that worker (``{step: {"state", "time"}}``, each pickled when the instance passed
the barrier), plus the keyed maps of the state
backend (``{map id: {key: value}}``). :func:`snapshot_for` makes, for worker ``w`` of a physical plan
of any parallelism, the snapshot its :class:`~millstream._parallel._worker.WorkerJob` restores:

- **at the same parallelism** each worker takes its own part, whatever its operators hold;
- **at another** (rescale), each operator instance is made from the parts that hold it:

  - a source of several splits: the positions (and event times, and aligned readers' highest
    times) of every split, from every part (each split is in one part); the instance keeps those of
    its own splits (:class:`~millstream.connectors._base.SplitSetReader`);
  - a keyed step: the entries of the keys of its key groups, from every part, with what follows
    those keys (their timers, TTL cleanups, expiry buckets, pending events). Each state shape has
    its splitter (``_SHAPES``, chosen by the step's operator and its snapshot's fields): running
    aggregates and reduce; tumbling, sliding, session and count windows and windows with triggers
    or allowed lateness; process functions and what is built on them (pattern matching, predict);
    regular, outer, interval and window joins (an outer join's rows emitted without a partner
    too, so that the partner that comes later retracts them); table joins (the table's versions
    of a key are where its events are: both inputs are partitioned by the join key). Timers by
    window end are united (a window end with no key left here fires nothing); heap entries
    numbered per instance are numbered afresh; a step's count of late records goes whole to the
    new worker 0, so that the new instances' counts add up to the old ones';
  - the keyed maps of the state backend: those of its key groups;
  - a step with one instance in both runs (a source of one split, a window over the whole stream, a
    sink): its one part, on worker 0;
  - a stateless step that ran on several workers (after a split source): the least of their
    watermarks.

  - a vectorised keyed step (micro-batch and batch mode: ``_COLUMNAR``): the rows of its state
    frames whose key columns hold a key of its key groups (the key's fields, their tuple when
    several, or the column an expression key is computed into; grouped over the columns at once by
    :func:`~millstream._keygroups.key_groups`), from every part, as one frame: running totals, the
    partials of tumbling and sliding windows by slice, open sessions, a join's kept records per side.
    The types each column was seen holding are united; the watermark up to which windows have fired
    is the least of the instances' (``_fired`` says why, and when that is refused). An instance
    whose operator had handed over to its native twin holds the twin's state: split as the native
    operator's; when some instances had handed over and others not, or a column held one type on
    one instance and another on another, the new instance restores as the native twin, given the
    native part and each vectorised part on its own (``_vectorised``).

  What is split is the state in the form the run that took the checkpoint kept it, whatever mode the
  new run executes in: a native step of the new run converts a vectorised operator's state as a
  hand-over does (:meth:`~millstream._runtime._native.NativeJob.restore`), a vectorised step given a
  native operator's state becomes its native twin's stand-in (``StandInOperator.restore``).

  The watermarks of an instance made from several are the least of theirs (a restored step then
  never takes a record behind the watermark of its new inputs for an on-time one). A step whose
  state is of no known shape (a state kept outside the keyed operators) is refused, naming it:
  resume such a job at the parallelism its checkpoint was taken at.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from millstream import _plan as P
from millstream._keygroups import groups_of, key_group
from millstream._physical import PhysicalPlan
from millstream._runtime._columnar import STATE_FIELDS, is_stand_in_state
from millstream._state import KEYED_STATE
from millstream._state._backend import FORMAT, read_group
from millstream._time import MAX_WATERMARK
from millstream.errors import CheckpointError, ConfigError
from millstream.windows import SlidingWindow

if TYPE_CHECKING:
    import polars as pl

#: a checkpoint's state says it was taken by workers under this key
PARALLEL = "parallel"


def load_parts(state: dict[str, Any], shared_dir: str) -> tuple[int, list[dict[str, Any]]]:
    """``(parallelism, parts)`` of a loaded checkpoint's state: a parallel checkpoint's part files (in the
    store's shared directory, verified by their checksums when the checkpoint was loaded), or the one
    part of a checkpoint of one process."""
    info = state.get(PARALLEL)
    if info is not None and not info["parts"]:  # a final checkpoint: nothing to restore
        return info["parallelism"], [{"job": {}, "maps": {}} for _ in range(info["parallelism"])]
    if info is None:
        snap = dict(state["job"])
        handle = snap.pop(KEYED_STATE, None)
        maps: dict[str, dict[Any, Any]] = {}
        if handle is not None:
            for kg in handle["groups"]:
                for mid, entries in read_group(handle, kg, shared_dir).items():
                    if handle["encoding"] != "objects":
                        raise CheckpointError("this checkpoint's keyed state is on disk (LMDB): a job of several "
                                              "workers keeps it in memory for now; resume it in one process")
                    maps.setdefault(mid, {}).update(entries)
        return 1, [{"job": snap, "maps": maps}]
    parts = []
    for w in range(info["parallelism"]):
        name = info["parts"][w]
        with open(os.path.join(shared_dir, name), "rb") as f:
            part = pickle.loads(f.read())  # noqa: S301 - checksummed in the manifest, verified on load
        part["job"] = decode(part["job"])
        parts.append(part)
    return info["parallelism"], parts


def decode(job: dict[str, Any]) -> dict[str, Any]:
    """A part's instances, each pickled when it passed the barrier."""
    return {name: pickle.loads(entry) if isinstance(entry, bytes) else entry  # noqa: S301 - our own part
            for name, entry in job.items()}


def snapshot_for(physical: PhysicalPlan, worker: int, old_n: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The snapshot worker ``worker`` of ``physical`` restores (see the module docstring)."""
    n, m = physical.parallelism, physical.max_parallelism
    groups = set(groups_of(worker, n, m))
    snap: dict[str, Any] = {}
    same = old_n == n
    for pop in physical.operators:
        if worker >= pop.parallelism:
            continue
        name = pop.steps[-1].name
        if same:
            entry = parts[worker]["job"].get(name)
            if entry is not None:
                snap[name] = entry
            continue
        entries = [p["job"][name] for p in parts if name in p["job"]]
        if not entries:
            continue
        if pop.splits is not None:
            snap[name] = {"state": _sources([e["state"] for e in entries]),
                          "time": _least([e["time"] for e in entries])}
        elif pop.key is None:
            if len(entries) == 1:
                snap[name] = entries[0]  # one instance in both runs: on worker 0
            elif any(e["state"] is not None for e in entries):
                raise ConfigError(f"step {name!r} keeps state that is not split by key: resume at the parallelism the "
                                  f"checkpoint was taken at ({old_n})")
            else:  # a stateless step that ran on several workers (after a split source): its least watermarks
                snap[name] = {"state": None, "time": _least([e["time"] for e in entries])}
        else:
            state = _keyed(name, pop.steps[0].op, [e["state"] for e in entries], groups, m, old_n)
            snap[name] = {"state": state, "time": _least([e["time"] for e in entries])}
    snap[KEYED_STATE] = _handle([p.get("maps", {}) for p in parts], groups, m)
    return snap


def _least(times: list[Any]) -> Any:
    """The watermarks of an instance made of several: the least of each."""
    if len(times) == 1:
        return times[0]
    ports = max(len(t["inputs"]) for t in times)
    return {"wm": min(t["wm"] for t in times),
            "inputs": [min((t["inputs"][i] for t in times if i < len(t["inputs"])), default=MAX_WATERMARK)
                       for i in range(ports)],
            "idle": [False] * ports}


def _sources(states: list[Any]) -> Any:
    """A split source's state from several instances': every split's position and highest times."""
    position: dict[Any, Any] = {}
    splits: dict[Any, Any] = {}
    single = []
    for st in states:
        position.update(st["position"])
        mx = st["max_ts"]
        if mx is not None:
            for split, t in mx["splits"].items():  # an instance may carry an older time of a split not its own
                if t is not None and (splits.get(split) is None or t > splits[split]):
                    splits[split] = t
            single.append(mx["max_ts"])
    max_ts = None if not single else {"max_ts": min(single), "splits": splits}
    return {"position": position, "max_ts": max_ts, "wm": min(st["wm"] for st in states)}


# -- keyed steps: one splitter per state shape ------------------------------------------------------

Mine = Callable[[Any], bool]
#: a splitter: the instances' states (in worker order) -> the state of the instance owning the keys ``mine``
#: says are its own; ``first`` says whether that instance is the one that takes the step's counters
Splitter = Callable[[list[Any], Mine, bool], Any]


@dataclass(frozen=True)
class _Shape:
    """A keyed step's state shape: the operators that keep it, the fields of their snapshot, and how
    to split it."""

    what: str
    ops: type | tuple[type, ...]
    fields: frozenset[str]
    split: Splitter
    #: fields an older (or a plainer) snapshot may lack
    optional: frozenset[str] = frozenset()
    #: what else the state must be (None: its fields say enough)
    test: Callable[[dict[str, Any]], bool] | None = None

    def fits(self, op: P.Op, state: Any) -> bool:
        return (isinstance(op, self.ops) and isinstance(state, dict)
                and self.fields <= state.keys() <= self.fields | self.optional
                and (self.test is None or self.test(state)))


def _by_key(dicts: Iterable[dict[Any, Any]], mine: Mine) -> dict[Any, Any]:
    """The entries of ``mine``'s keys of several key -> value maps (each key is in one of them)."""
    return {k: v for d in dicts for k, v in d.items() if mine(k)}


def _keys_last(entries: Iterable[Any], mine: Mine) -> list[Any]:
    """The timer or cleanup entries (tuples ending with their key) of ``mine``'s keys."""
    return [e for e in entries if mine(e[-1])]


def _count(states: list[Any], field: str, first: bool) -> int:
    """A step's counter (records found late) over its old instances, all on the first new instance,
    so that the new instances' counts add up to the old ones' (none is lost, none counted twice)."""
    return sum(s[field] for s in states) if first else 0


def _renumber(entries: list[list[Any]], seq: int) -> tuple[list[Any], dict[tuple[int, int], int]]:
    """Heap entries of several instances (``entries[i]``: instance ``i``'s, each with a sequence number
    at ``seq``) as one heap's: numbered afresh in their order (time, then instance, then number), so
    that no two tie on their time and number and the heap never compares what follows (keys of
    types that do not compare). Also gives old (instance, number) -> new number."""
    order = sorted(((i, e) for i, es in enumerate(entries) for e in es), key=lambda ie: (ie[1][0], ie[0], ie[1][seq]))
    out: list[Any] = []
    new: dict[tuple[int, int], int] = {}
    for n, (i, e) in enumerate(order):
        new[(i, e[seq])] = n
        out.append((*e[:seq], n, *e[seq + 1:]))
    return out, new


def _running(states: list[Any], mine: Mine, first: bool) -> Any:
    """Running aggregate and reduce: ``{"state": {key: accumulator}}``."""
    return {"state": _by_key((s["state"] for s in states), mine)}


def _slices(states: list[Any], mine: Mine, first: bool, pick: Callable[[Any, Mine], Any]) -> dict[str, Any]:
    """Sliced windows and window joins: the slices (``pick`` keeps a slice's entries of ``mine``'s keys,
    None when none is left) and the timers of every window end and slice, united: a window end whose
    keys all went elsewhere fires nothing here, a slice's cleanup drops what is left of it."""
    slices: dict[int, Any] = {}
    for s in states:
        for sl, entries in s["slices"].items():
            keep = pick(entries, mine)
            if keep is not None:
                have = slices.get(sl)
                slices[sl] = keep if have is None else _merge_slice(have, keep)
    return {"slices": slices, "fire": sorted({e for s in states for e in s["fire"]}),
            "cleanup": sorted({tuple(c) for s in states for c in s["cleanup"]}),
            "late": _count(states, "late", first)}


def _merge_slice(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {**a, **b}
    return ({**a[0], **b[0]}, {**a[1], **b[1]})  # a window join's (left, right)


def _window_slice(accs: dict[Any, Any], mine: Mine) -> Any:
    keep = {k: v for k, v in accs.items() if mine(k)}
    return keep or None


def _join_slice(sides: tuple[dict[Any, Any], dict[Any, Any]], mine: Mine) -> Any:
    keep = ({k: v for k, v in sides[0].items() if mine(k)}, {k: v for k, v in sides[1].items() if mine(k)})
    return keep if keep[0] or keep[1] else None


def _sliced_window(states: list[Any], mine: Mine, first: bool) -> Any:
    """Tumbling and sliding windows: ``{"slices": {slice: {key: acc}}, "fire", "cleanup", "late"}``."""
    return _slices(states, mine, first, _window_slice)


def _sliced_join(states: list[Any], mine: Mine, first: bool) -> Any:
    """Tumbling and sliding window joins: ``{"slices": {slice: ({key: lefts}, {key: rights})}, ...}``."""
    return _slices(states, mine, first, _join_slice)


def _sessions(states: list[Any], mine: Mine, timer_at: int, cleanups: bool) -> dict[str, Any]:
    """Sessions (of the session window and the session window join): ``{key: [session, ...]}``, each
    session holding the number of its live timer at ``timer_at``; ``timers`` ``(end, number, start,
    key)`` and (windows) ``cleanups`` ``(time, number, start, end, key)``. Numbers are per instance:
    they are renumbered together, and the sessions' with them."""
    keys = [{k: v for k, v in s["sessions"].items() if mine(k)} for s in states]
    timers, new = _renumber([_keys_last(s["timers"], mine) for s in states], 1)
    out: dict[str, Any] = {"timers": timers}
    if cleanups:
        out["cleanups"], _ = _renumber([_keys_last(s["cleanups"], mine) for s in states], 1)
        base = len(timers)  # the cleanups' numbers only order them: after the timers', apart from them
        out["cleanups"] = [(c[0], c[1] + base, *c[2:]) for c in out["cleanups"]]
    sessions: dict[Any, list[list[Any]]] = {}
    for i, d in enumerate(keys):
        for k, lst in d.items():
            sessions[k] = [[*sess[:timer_at], None if sess[timer_at] is None else new.get((i, sess[timer_at])),
                            *sess[timer_at + 1:]] for sess in lst]
    out["sessions"] = sessions
    return out


def _session_window(states: list[Any], mine: Mine, first: bool) -> Any:
    """Session windows: sessions ``[start, end, acc, timer]``, their timers and cleanups."""
    return {**_sessions(states, mine, 3, cleanups=True), "late": _count(states, "late", first)}


def _session_join(states: list[Any], mine: Mine, first: bool) -> Any:
    """Session window joins: sessions ``[start, end, lefts, rights, timer]`` and their timers."""
    return {**_sessions(states, mine, 4, cleanups=False), "late": _count(states, "late", first)}


def _count_window(states: list[Any], mine: Mine, first: bool) -> Any:
    """Count windows: each key's last records and how many it has had."""
    return {"buffers": _by_key((s["buffers"] for s in states), mine),
            "counts": _by_key((s["counts"] for s in states), mine)}


def _triggered_window(states: list[Any], mine: Mine, first: bool) -> Any:
    """Windows with triggers (and global, processing-time, staggered, per-record-gap session windows):
    ``{"wins": {key: {window: entry}}, "timers": [(domain, time, key, window)] in firing order, "late"}``.
    An entry holds its trigger's state and its own timers; the timers of several instances, each in
    firing order, fire in that order when restored (equal times of different keys in either order)."""
    timers = sorted((t for s in states for t in s["timers"] if mine(t[2])), key=lambda t: (t[0], t[1]))
    return {"wins": _by_key((s["wins"] for s in states), mine), "timers": timers,
            "late": _count(states, "late", first)}


def _process(states: list[Any], mine: Mine, first: bool) -> Any:
    """Process functions (and what is built on them: pattern matching, predict): timers ``(time, key)``
    and TTL cleanups ``(time, number, state name, key)``; the keyed state itself is the state backend's
    (:func:`_handle`)."""
    cleanup, _ = _renumber([_keys_last(s["cleanup"], mine) for s in states], 1)
    proc_cleanup, _ = _renumber([_keys_last(s["proc_cleanup"], mine) for s in states], 1)
    return {"event_timers": [t for s in states for t in s["event_timers"] if mine(t[-1])],
            "proc_timers": [t for s in states for t in s["proc_timers"] if mine(t[-1])],
            "cleanup": cleanup, "proc_cleanup": proc_cleanup}


def _pair_join(states: list[Any], mine: Mine, first: bool) -> Any:
    """Regular (inner and outer) and interval joins: per side ``{key: [(t, record)]}``, the time
    buckets of their expiry ``{bucket: {key}}`` and (outer) ``{key: [(t, record, padded row)]}`` of
    the records emitted without a partner, so that the partner that comes after the restore retracts
    the padded row wherever it runs."""
    out: dict[str, Any] = {"sides": [_by_key((s["sides"][side] for s in states), mine) for side in (0, 1)]}
    buckets: list[dict[int, set[Any]]] = [{}, {}]
    for s in states:
        for side in (0, 1):
            for b, keys in s["buckets"][side].items():
                keep = {k for k in keys if mine(k)}
                if keep:
                    buckets[side].setdefault(b, set()).update(keep)
    out["buckets"] = buckets
    if any("unmatched" in s for s in states):
        out["unmatched"] = [_by_key((s.get("unmatched", ({}, {}))[side] for s in states), mine) for side in (0, 1)]
    out["late"] = _count(states, "late", first)
    return out


def _table_join(states: list[Any], mine: Mine, first: bool) -> Any:
    """Table joins: the table's versions per key ``{key: (times, rows)}``, when each key's are pruned
    ``{key: watermark}``, and the events waiting for the watermark ``(t, number, key, event)``. The
    table input is partitioned by the table's key as the events are by theirs (the physical plan's
    ``hash`` edge on each port), so a key's versions are with its events: nothing is broadcast."""
    pending, _ = _renumber([[p for p in s["pending"] if mine(p[2])] for s in states], 1)
    return {"versions": _by_key((s["versions"] for s in states), mine),
            "due": _by_key((s["due"] for s in states), mine), "pending": pending,
            "late": _count(states, "late", first)}


_SHAPES = (
    _Shape("running aggregate or reduce", (P.AggregateOp, P.ReduceOp), frozenset({"state"}), _running,
           test=lambda s: isinstance(s["state"], dict)),  # not the columnar operators' frame
    _Shape("tumbling or sliding window", P.WindowOp, frozenset({"slices", "fire", "cleanup", "late"}),
           _sliced_window),
    _Shape("session window", P.WindowOp, frozenset({"sessions", "timers", "cleanups", "late"}), _session_window),
    _Shape("count window", P.WindowOp, frozenset({"buffers", "counts"}), _count_window),
    _Shape("window with a trigger", P.WindowOp, frozenset({"wins", "timers", "late"}), _triggered_window),
    _Shape("process function", P.ProcessOp, frozenset({"event_timers", "proc_timers", "cleanup", "proc_cleanup"}),
           _process),
    _Shape("regular or interval join", P.JoinOp, frozenset({"sides", "buckets", "late"}), _pair_join,
           frozenset({"unmatched"})),
    _Shape("tumbling or sliding window join", P.JoinOp, frozenset({"slices", "fire", "cleanup", "late"}),
           _sliced_join),
    _Shape("session window join", P.JoinOp, frozenset({"sessions", "timers", "late"}), _session_join),
    _Shape("table join", P.TableJoinOp, frozenset({"versions", "due", "pending", "late"}), _table_join),
)


def _keyed(name: str, op: P.Op, states: list[Any], groups: set[int], m: int, old_n: int) -> Any:
    """A keyed step's state for the key groups ``groups``, from its instances' states (see ``_SHAPES``;
    a vectorised operator's: ``_COLUMNAR``)."""
    if all(s is None for s in states):
        return None
    present = [s for s in states if s is not None]
    mine = _Mine(groups, m)
    if any(is_stand_in_state(s) for s in present):
        return _vectorised(name, op, present, mine, 0 in groups, old_n)
    return _native(name, op, present, mine, 0 in groups, old_n)


def _native(name: str, op: P.Op, states: list[Any], mine: Mine, first: bool, old_n: int) -> Any:
    shape = next((sh for sh in _SHAPES if all(sh.fits(op, s) for s in states)), None)
    if shape is None:
        _refuse(name, op, states[0], old_n)
    return shape.split(states, mine, first)


def _refuse(name: str, op: P.Op, state: Any, old_n: int) -> NoReturn:
    fields = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise ConfigError(f"step {name!r} ({op.kind}): its checkpointed state (fields {fields}) is of no shape "
                      f"that can be split by key group, so its checkpoint cannot move to another parallelism. "
                      f"Resume at the parallelism it was taken at ({old_n})")


class _Mine:
    """The keys of a new instance: those of its key groups (``mine(key)``), and the rows of a state frame
    whose key columns hold one of them (:meth:`rows`)."""

    def __init__(self, groups: set[int], m: int) -> None:
        self.groups, self.m = groups, m

    def __call__(self, key: Any) -> bool:
        return key_group(key, self.m) in self.groups

    def rows(self, frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
        """The rows of ``frame`` whose key (the column ``keys[0]``, or the tuple of the columns ``keys``,
        as natively) is in this instance's key groups."""
        import numpy as np

        from millstream._keygroups import key_groups

        if frame.height == 0:
            return frame
        cols = [frame.get_column(k) for k in keys]
        try:
            kg = key_groups(cols[0] if len(cols) == 1 else cols, self.m)
        except Exception:  # noqa: BLE001 - columns key_groups does not read (Python objects): key by key
            values = cols[0].to_list() if len(cols) == 1 else list(zip(*(c.to_list() for c in cols), strict=True))
            kg = np.fromiter((key_group(k, self.m) for k in values), dtype=np.int64, count=len(values))
        mask = np.isin(kg, np.fromiter(self.groups, dtype=np.int64, count=len(self.groups)))
        return frame.filter(mask) if not mask.all() else frame



# -- the vectorised operators (micro-batch and batch mode) --------------------------------------------


class _Uneven(Exception):
    """Instances whose rows go to one new instance had fired a sliding window's windows up to different
    watermarks."""


@dataclass(frozen=True)
class _Columnar:
    """A vectorised keyed operator's state shape (its ``_state()``): frames of rows with the key columns
    (:func:`~millstream._runtime._cstate.state_key_columns`), per-instance figures and the Python types
    seen per column (``kinds``)."""

    what: str
    ops: type | tuple[type, ...]
    fields: frozenset[str]
    split: Callable[[P.Op, list[dict[str, Any]], _Mine, bool], dict[str, Any]]
    #: the state's kinds (the types seen per column), one dict per what is watched apart
    kinds: Callable[[dict[str, Any]], list[dict[str, str]]] = lambda s: [s["kinds"]]

    def fits(self, op: P.Op, state: Any) -> bool:
        return isinstance(op, self.ops) and isinstance(state, dict) and state.keys() == self.fields


def _frames(frames: Iterable[pl.DataFrame | None], keys: list[str]) -> pl.DataFrame | None:
    """Frames (of rows of distinct keys) as one; None when no row is left."""
    have = [f for f in frames if f is not None and f.height]
    if len(have) <= 1:
        return have[0] if have else None
    from millstream._runtime._columnar import polars, unify

    out: pl.DataFrame = polars().concat(unify(have, keys, objects=True), how="diagonal_relaxed")
    return out


def _united(kinds: Iterable[dict[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k in kinds:
        out.update(k)
    return out


def _agree(kinds: Iterable[dict[str, str]]) -> bool:
    """Whether no column was seen holding one Python type by one instance and another by another."""
    seen: dict[str, str] = {}
    return all(seen.setdefault(col, kind) == kind for k in kinds for col, kind in k.items())


def _fired(states: list[dict[str, Any]], holders: list[dict[str, Any]], sliding: bool) -> int:
    """The watermark up to which the merged instance has fired its windows. Each instance fired its own
    windows up to its own watermark; restored, the instance's watermark is the least of theirs
    (``_least``), so its ``fired`` is that least too: a window ending after it fires once the
    watermark passes its end, for every key held. For tumbling windows that is right for every row: a
    row is held only while its one window has not fired (its instance drops it when it fires). A slice
    of a sliding window is held until its *last* window fires, so a key's earlier windows fired by an
    instance that was further would fire again: refused (aligned checkpoints never do this: every
    instance of a step has had the same watermarks when it passes the barrier)."""
    least: int = min(s["fired"] for s in states)
    if sliding and any(s["fired"] != least for s in holders):
        raise _Uneven
    return least


def state_key_columns(op: P.Op) -> list[list[str]]:
    from millstream._runtime._cstate import state_key_columns as of  # numpy: only for a vectorised step

    return of(op)


def _c_running(op: P.Op, states: list[dict[str, Any]], mine: _Mine, first: bool) -> dict[str, Any]:
    """The vectorised running aggregate: ``{"totals": frame[keys..., totals...], "kinds"}``."""
    keys = state_key_columns(op)[0]
    return {"totals": _frames((mine.rows(s["totals"], keys) for s in states if s["totals"] is not None), keys),
            "kinds": _united(s["kinds"] for s in states)}


def _c_sliced(op: P.Op, states: list[dict[str, Any]], mine: _Mine, first: bool) -> dict[str, Any]:
    """Vectorised tumbling and sliding windows: ``{"parts": frame[keys..., slice, partials...], "fired",
    "late", "kinds"}``."""
    assert isinstance(op, P.WindowOp)
    keys = state_key_columns(op)[0]
    kept = [(s, mine.rows(s["parts"], keys)) for s in states if s["parts"] is not None]
    holders = [s for s, f in kept if f.height]
    a = op.assigner
    sliding = isinstance(a, SlidingWindow) and a.slice_ms != a.size_ms
    return {"parts": _frames((f for _, f in kept), keys), "fired": _fired(states, holders, sliding),
            "late": _count(states, "late", first), "kinds": _united(s["kinds"] for s in states)}


def _c_sessions(op: P.Op, states: list[dict[str, Any]], mine: _Mine, first: bool) -> dict[str, Any]:
    """Vectorised session windows: the open sessions ``{"open": frame[keys..., start, end, partials...],
    "late", "kinds"}`` (each fires once the watermark passes its end, wherever it is)."""
    keys = state_key_columns(op)[0]
    return {"open": _frames((mine.rows(s["open"], keys) for s in states if s["open"] is not None), keys),
            "late": _count(states, "late", first), "kinds": _united(s["kinds"] for s in states)}


def _c_join(op: P.Op, states: list[dict[str, Any]], mine: _Mine, first: bool) -> dict[str, Any]:
    """Vectorised window, regular and interval joins: each side's kept records ``{"sides": [[frame],
    [frame]], "fired", "late", "kinds": [left's, right's], "key_kinds"}`` (a side's key columns are its
    own: its key's fields, or the column its expression key is computed into)."""
    assert isinstance(op, P.JoinOp)
    keys = state_key_columns(op)
    sides: list[list[pl.DataFrame]] = []
    holders: list[dict[str, Any]] = []
    for side in (0, 1):
        kept = [(s, mine.rows(f, keys[side])) for s in states for f in s["sides"][side]]
        holders += [s for s, f in kept if f.height]
        whole = _frames((f for _, f in kept), keys[side])
        sides.append([] if whole is None else [whole])
    a = op.assigner
    sliding = op.mode == "window" and isinstance(a, SlidingWindow) and a.slice_ms != a.size_ms
    return {"sides": sides, "fired": _fired(states, holders, sliding), "late": _count(states, "late", first),
            "kinds": [_united(s["kinds"][side] for s in states) for side in (0, 1)],
            "key_kinds": _united(s["key_kinds"] for s in states)}


_COLUMNAR = (
    _Columnar("vectorised running aggregate", P.AggregateOp, STATE_FIELDS["running aggregate"], _c_running),
    _Columnar("vectorised tumbling or sliding window", P.WindowOp, STATE_FIELDS["sliced window"], _c_sliced),
    _Columnar("vectorised session window", P.WindowOp, STATE_FIELDS["session window"], _c_sessions),
    _Columnar("vectorised join", P.JoinOp, STATE_FIELDS["join"], _c_join, lambda s: [*s["kinds"], s["key_kinds"]]),
)


def _vectorised(name: str, op: P.Op, states: list[Any], mine: _Mine, first: bool, old_n: int) -> Any:
    """A vectorised operator's state for the keys ``mine``, from its instances' states, in the form
    :meth:`~millstream._runtime._columnar.StandInOperator.restore` takes:

    - the vectorised state, split and merged (``_COLUMNAR``), when every instance kept its state
      vectorised, each column holding the Python type it held on every other instance;
    - ``{"native": state}`` when every instance had handed over to its native twin: the native state,
      split as the native operator's is (``_SHAPES``);
    - otherwise ``{"native": state or None, "columnar": [states]}``: some instances had handed over, or a
      column held ints on one and floats on another (merged, their typed frames would change values):
      the restored instance is the native twin, which takes the native part and, as a hand-over gives
      it, each vectorised instance's part on its own."""
    natives = [s["native"] for s in states if "native" in s and s["native"] is not None]
    cols = [s for s in states if "native" not in s]
    cols += [c for s in states if "native" in s for c in s.get("columnar", ())]
    shape = next((sh for sh in _COLUMNAR if all(sh.fits(op, s) for s in cols)), None)
    if cols and shape is None:
        _refuse(name, op, next(s for s in cols if not any(sh.fits(op, s) for sh in _COLUMNAR)), old_n)
    try:
        if shape is not None and not natives and all(_agree(k) for k in zip(*map(shape.kinds, cols), strict=True)):
            return shape.split(op, cols, mine, first)
        native = _native(name, op, natives, mine, first, old_n) if natives else None
        return {"native": native, "columnar": [] if shape is None else [shape.split(op, [c], mine, first)
                                                                        for c in cols]}
    except _Uneven:
        raise ConfigError(f"step {name!r} ({op.kind}): its instances had fired its sliding windows up to different "
                          f"watermarks when the checkpoint was taken, so its windows cannot be merged without firing "
                          f"some twice. Resume at the parallelism it was taken at ({old_n})") from None


def _handle(maps_of_parts: list[dict[str, dict[Any, Any]]], groups: set[int], m: int) -> dict[str, Any]:
    """A keyed-state handle (memory backend, inline) of the entries of ``groups``."""
    buckets: dict[int, dict[str, dict[Any, Any]]] = {}
    for maps in maps_of_parts:
        for mid, entries in maps.items():
            for k, v in entries.items():
                kg = key_group(k, m)
                if kg in groups:
                    buckets.setdefault(kg, {}).setdefault(mid, {})[k] = v
    return {"format": FORMAT, "backend": "memory", "max_key_groups": m, "encoding": "objects",
            "groups": {kg: ("inline", pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL)) for kg, b in buckets.items()},
            "files": {}}
