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
  - a keyed step (window, running aggregate, reduce, process function): the entries of the keys of
    its key groups, from every part, and the timers of those keys; windows' timers by window end
    are united (a window end with no key left here fires nothing);
  - the keyed maps of the state backend: those of its key groups;
  - a step with one instance in both runs (a source of one split, a window over the whole stream, a
    sink): its one part, on worker 0;
  - a stateless step that ran on several workers (after a split source): the least of their
    watermarks.

  The watermarks of an instance made from several are the least of theirs (a restored step then
  never takes a record behind the watermark of its new inputs for an on-time one). A step whose
  state cannot be split by key yet (joins, CEP, count and trigger windows, table joins) is refused,
  naming it: resume such a job at the parallelism its checkpoint was taken at.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from millstream import _plan as P
from millstream._keygroups import groups_of, key_group
from millstream._physical import PhysicalPlan
from millstream._state import KEYED_STATE
from millstream._state._backend import FORMAT, read_group
from millstream._time import MAX_WATERMARK
from millstream.errors import CheckpointError, ConfigError

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


def _keyed(name: str, op: P.Op, states: list[Any], groups: set[int], m: int, old_n: int) -> Any:
    """A keyed step's state for the key groups ``groups``, from its instances' states."""
    if all(s is None for s in states):
        return None
    first = states[0]
    shape = set(first) if isinstance(first, dict) else None

    def mine(k: Any) -> bool:
        return key_group(k, m) in groups

    if not isinstance(op, P.AggregateOp | P.ReduceOp | P.WindowOp | P.ProcessOp):
        shape = None  # joins, CEP, table joins: refused below
    if shape == {"state"} and all(isinstance(s["state"], dict) for s in states):  # running aggregate, reduce
        return {"state": {k: v for s in states for k, v in s["state"].items() if mine(k)}}
    if shape == {"slices", "fire", "cleanup", "late"}:  # tumbling and sliding windows
        slices: dict[int, dict[Any, Any]] = {}
        for s in states:
            for sl, accs in s["slices"].items():
                keep = {k: v for k, v in accs.items() if mine(k)}
                if keep:
                    slices.setdefault(sl, {}).update(keep)
        return {"slices": slices, "fire": sorted({e for s in states for e in s["fire"]}),
                "cleanup": sorted({tuple(c) if isinstance(c, list) else c for s in states for c in s["cleanup"]}),
                "late": 0}
    if shape == {"sessions", "timers", "cleanups", "late"}:  # session windows
        return {"sessions": {k: v for s in states for k, v in s["sessions"].items() if mine(k)},
                "timers": [t for s in states for t in s["timers"] if mine(t[-1])],
                "cleanups": [c for s in states for c in s["cleanups"] if mine(c[-1])], "late": 0}
    if shape == {"event_timers", "proc_timers", "cleanup", "proc_cleanup"}:  # process functions
        return {"event_timers": [t for s in states for t in s["event_timers"] if mine(t[-1])],
                "proc_timers": [t for s in states for t in s["proc_timers"] if mine(t[-1])],
                "cleanup": [c for s in states for c in s["cleanup"] if mine(c[-1])],
                "proc_cleanup": [c for s in states for c in s["proc_cleanup"] if mine(c[-1])]}
    raise ConfigError(f"step {name!r}: its state cannot be split by key group yet (joins, CEP, count and trigger "
                      f"windows, table joins), so its checkpoint cannot move to another parallelism. Resume at the "
                      f"parallelism it was taken at ({old_n})")


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
