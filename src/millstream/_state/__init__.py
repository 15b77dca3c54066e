"""Keyed state backends: where process functions keep their state, and how it is snapshotted.

- ``state="memory"`` (default): :class:`MemoryBackend`, dicts; full snapshots inline in the checkpoint.
- ``state="lmdb:///path"``: :class:`LmdbBackend`, an embedded on-disk store (LMDB) behind an LRU
  write-back cache, for state larger than memory; incremental snapshots (only key groups changed
  since the previous checkpoint are written, as files the checkpoints share).
  Options as a query: ``lmdb:///path?cache=100000&key_groups=128``.

Keys are assigned to key groups (``key_group(key) = crc32(canonical encoding) % max_key_groups``),
and every snapshot is organised by key group, so a restore can take any subset of them.

With the in-memory backend, windows, joins and running ``aggregate``/``reduce`` keep their
state in dicts of their operators (the fast path), snapshotted with the operators. With an
on-disk backend (``StateBackend.on_disk``) they keep it in the backend too, in keyed maps,
namespaced maps (a window's slices, scanned and dropped by namespace) and timer queues
(:mod:`millstream._runtime._ondisk`), checkpointed by the backend's files. Windows with a
trigger (global, processing-time, custom triggers) keep theirs in memory whatever the backend.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from millstream._state._backend import KeyedMap, MemoryBackend, StateBackend
from millstream._state._keys import DEFAULT_KEY_GROUPS, check_key, decode_key, encode_key, key_group, split_key_groups
from millstream.errors import ConfigError

__all__ = [
    "DEFAULT_KEY_GROUPS",
    "KEYED_STATE",
    "SCHEMES",
    "KeyedMap",
    "MemoryBackend",
    "StateBackend",
    "check_key",
    "decode_key",
    "encode_key",
    "key_group",
    "open_backend",
    "parse_state_url",
    "split_key_groups",
]

SCHEMES = ("memory", "lmdb")
#: Where a job snapshot keeps the state backend's handle (no step can have this name).
KEYED_STATE = "\x00keyed-state"


def parse_state_url(url: str) -> tuple[str, str, dict[str, int]]:
    """``(scheme, path, options)`` of a state URL; :class:`ConfigError` when it is not one."""
    if not isinstance(url, str):
        raise ConfigError(f"state must be a URL string such as 'memory' or 'lmdb:///path', not {url!r}")
    if url in ("memory", "memory://"):
        return "memory", "", {}
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown state backend {url!r}; use 'memory' (default) or 'lmdb:///path/to/dir'")
    path = parts.netloc + parts.path
    if scheme == "lmdb" and not path:
        raise ConfigError(f"state {url!r} names no directory: use 'lmdb:///path/to/dir'")
    options: dict[str, int] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in ("cache", "key_groups"):
            raise ConfigError(f"unknown state option {name!r} in {url!r}; known: cache, key_groups")
        try:
            options[name] = int(value)
        except ValueError:
            raise ConfigError(f"state option {name}={value!r} in {url!r} must be an int") from None
        if options[name] <= 0 or (name == "key_groups" and options[name] > 32768):
            raise ConfigError(f"state option {name}={value} in {url!r} is out of range")
    return scheme, path, options


def open_backend(url: str = "memory") -> StateBackend:
    """A new backend for one job attempt, from its URL."""
    scheme, path, options = parse_state_url(url)
    groups = options.get("key_groups", DEFAULT_KEY_GROUPS)
    if scheme == "memory":
        return MemoryBackend(groups)
    from millstream._state._lmdb import LmdbBackend

    return LmdbBackend(path, groups, cache_size=options.get("cache", 100_000))
