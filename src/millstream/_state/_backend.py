"""The state backend interface, snapshot handles, and the in-memory backend.

A backend holds the keyed maps of one job (one worker): one map per (operator,
state name). Its snapshot is organised by key group: ``handle["groups"]`` maps a
key group to the data of every map in that group, so a restore can take any subset
of key groups (a later parallel executor gives each worker a range of them).

A handle is a small picklable dict that goes into the checkpoint's ``state.pkl``::

    {"format": 1, "backend": "memory" | "lmdb", "max_key_groups": 128,
     "encoding": "objects" | "raw",          # what a group's payload holds (below)
     "groups": {kg: ("inline", bytes) | ("file", relative path)},
     "files": {relative path: {"size": n, "sha256": hex}}}

A group's payload unpickles to ``{map id: entries}``; with ``"objects"`` the entries
are a ``{key: value}`` dict, with ``"raw"`` a list of ``(encoded key, pickled value)``
pairs sorted by key. Files live in a directory shared by the checkpoints (the
coordinator's), so an incremental snapshot can refer to files an older one wrote.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

from millstream._state._keys import DEFAULT_KEY_GROUPS, decode_key, encode_key, key_group
from millstream.errors import CheckpointError

FORMAT = 1
_STR_SEED = zlib.crc32(b"s")
Handle = dict[str, Any]
#: A keyed map: a dict (memory) or a dict-like view of an on-disk store.
KeyedMap = MutableMapping[Any, Any]


def map_id(operator: str, state: str) -> str:
    return f"{operator}/{state}"


class StateBackend(ABC):
    """Keyed maps per (operator, state name), snapshots by key group, restores of any key groups."""

    name = "abstract"
    #: whether the state lives on disk: the built-in window, join and running-aggregate operators
    #: then keep theirs in the backend too (:mod:`millstream._runtime._ondisk`), not in dicts
    on_disk = False

    def __init__(self, max_key_groups: int = DEFAULT_KEY_GROUPS) -> None:
        self.max_key_groups = max_key_groups

    @abstractmethod
    def keyed_map(self, operator: str, state: str) -> KeyedMap:
        """The map of ``state`` of ``operator`` (the same object on every call)."""

    def namespaced_map(self, operator: str, state: str) -> Any:
        """A map of ``(namespace, key)`` entries whose namespaces are scanned and dropped whole
        (a window's slices), key groups by the key (on-disk backends only: the operators keep their
        state themselves on the others, so asking one is a programming error)."""
        raise TypeError(f"the {self.name} backend has no namespaced maps: operators keep their state themselves")

    def timer_queue(self, operator: str, state: str) -> Any:
        """``(time, key)`` entries taken in time order, key groups by the key (on-disk backends only, as
        :meth:`namespaced_map`)."""
        raise TypeError(f"the {self.name} backend has no timer queues: operators keep their timers themselves")

    @abstractmethod
    def snapshot(self, checkpoint_id: int, directory: str | None = None) -> Handle:
        """Snapshot every map. Files go to ``directory`` (None: everything inline in the handle)."""

    @abstractmethod
    def restore(self, handle: Handle, directory: str | None = None,
                key_groups: Iterable[int] | None = None) -> None:
        """Replace every map's content with the snapshot's (only ``key_groups``, if given)."""

    def close(self) -> None:
        """Release files and memory; the backend is not used afterwards."""

    def describe(self) -> str:
        return self.name


# -- handles --------------------------------------------------------------------------


def check_handle(handle: Handle, max_key_groups: int) -> None:
    if handle.get("format") != FORMAT:
        raise CheckpointError(f"unknown keyed-state snapshot format {handle.get('format')!r}")
    if handle["max_key_groups"] != max_key_groups:
        raise CheckpointError(
            f"the checkpoint's keyed state has {handle['max_key_groups']} key groups, this run {max_key_groups}: "
            "key groups cannot change between runs (use the same ?key_groups= in the state URL)"
        )


def wanted(handle: Handle, key_groups: Iterable[int] | None) -> list[int]:
    groups = sorted(handle["groups"])
    if key_groups is None:
        return groups
    keep = set(key_groups)
    return [kg for kg in groups if kg in keep]


def read_group(handle: Handle, kg: int, directory: str | None) -> dict[str, Any]:
    """The payload of key group ``kg``: ``{map id: entries}``."""
    how, ref = handle["groups"][kg]
    if how == "inline":
        data = ref
    else:
        if directory is None:
            raise CheckpointError(f"key group {kg} of the keyed state is in a file ({ref}) but no directory was given")
        try:
            with open(os.path.join(directory, ref), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CheckpointError(f"keyed state file {ref} is missing from {directory}") from None
    return pickle.loads(data)  # type: ignore[no-any-return]  # noqa: S301 - our own checksummed file


def as_objects(entries: Any, encoding: str) -> Iterator[tuple[Any, Any]]:
    if encoding == "objects":
        return iter(entries.items())
    return ((decode_key(k[2:]), pickle.loads(v)) for k, v in entries)  # noqa: S301 - k: group + key


def as_raw(entries: Any, encoding: str, max_key_groups: int) -> list[tuple[bytes, bytes]]:
    """Entries as sorted (group-prefixed encoded key, pickled value) pairs."""
    if encoding == "raw":
        return list(entries)
    out = []
    for k, v in entries.items():
        e = encode_key(k)
        out.append((group_prefix(e, max_key_groups) + e, pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)))
    out.sort()
    return out


def group_prefix(encoded: bytes, max_key_groups: int) -> bytes:
    return (zlib.crc32(encoded) % max_key_groups).to_bytes(2, "big")


def write_file(directory: str, name: str, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``directory/name`` atomically and durably; its size and SHA-256."""
    path = os.path.join(directory, name)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# -- in memory ------------------------------------------------------------------------


class MemoryBackend(StateBackend):
    """Keyed state in dicts (the default): the fastest, bounded by memory.

    A map is a plain dict, so a state access costs one dict operation. A snapshot
    groups the entries by key group (one pass, computing each key's group) and
    pickles each group inline into the handle; it is always a full snapshot.
    """

    name = "memory"

    def __init__(self, max_key_groups: int = DEFAULT_KEY_GROUPS) -> None:
        super().__init__(max_key_groups)
        self.maps: dict[str, dict[Any, Any]] = {}

    def keyed_map(self, operator: str, state: str) -> dict[Any, Any]:
        return self.maps.setdefault(map_id(operator, state), {})

    def snapshot(self, checkpoint_id: int, directory: str | None = None) -> Handle:
        n = self.max_key_groups
        buckets: dict[int, dict[str, dict[Any, Any]]] = {}
        crc32, s_seed = zlib.crc32, _STR_SEED
        for mid, m in self.maps.items():
            for k, v in m.items():
                # the common str key without building its encoding (same result as key_group)
                kg = crc32(k.encode("utf-8", "surrogatepass"), s_seed) % n if type(k) is str else key_group(k, n)
                b = buckets.get(kg)
                if b is None:
                    b = buckets[kg] = {}
                d = b.get(mid)
                if d is None:
                    d = b[mid] = {}
                d[k] = v
        groups = {kg: ("inline", pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL)) for kg, b in buckets.items()}
        return {"format": FORMAT, "backend": self.name, "max_key_groups": n, "encoding": "objects",
                "groups": groups, "files": {}}

    def restore(self, handle: Handle, directory: str | None = None,
                key_groups: Iterable[int] | None = None) -> None:
        check_handle(handle, self.max_key_groups)
        for m in self.maps.values():
            m.clear()
        encoding = handle["encoding"]
        for kg in wanted(handle, key_groups):
            for mid, entries in read_group(handle, kg, directory).items():
                m = self.maps.setdefault(mid, {})
                if encoding == "objects":
                    m.update(entries)
                else:
                    m.update(as_objects(entries, encoding))

    def close(self) -> None:
        self.maps = {}
