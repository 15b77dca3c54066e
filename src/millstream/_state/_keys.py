"""Key groups: a stable, canonical encoding of keys and the group each key belongs to.

A key's group is ``crc32(encode(key)) % max_key_groups``: the same in every process
and every run (Python's ``hash`` of a str is salted per process, so it cannot be used).
Keys that compare equal in a dict encode the same: ``True``, ``1`` and ``1.0`` are
one key, as they are in a dict (they decode as the int ``1``).

Supported keys: ``str``, ``int``, ``float``, ``bool``, ``None``, ``bytes`` and
tuples of these (nested). Anything else raises :class:`TypeError` at first use.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

#: Key groups of a job unless the state URL says otherwise. A job can later run with any
#: parallelism up to this number: each worker restores a range of key groups.
DEFAULT_KEY_GROUPS = 128

_SIMPLE = frozenset({str, int, float, bool, type(None), bytes})
_DOUBLE = struct.Struct(">d")
_LEN = struct.Struct(">I")


def key_error(key: Any) -> TypeError:
    return TypeError(
        f"a key of type {type(key).__name__} ({key!r:.80}) cannot be stored in keyed state: keys must be "
        "str, int, float, bool, None, bytes or tuples of these (their encoding is stable across processes, "
        "which key groups need). Key by a field of that type, or by a tuple of fields."
    )


def check_key(key: Any) -> None:
    """Raise :class:`TypeError` unless ``key`` can be given a key group."""
    t = type(key)
    if t in _SIMPLE:
        return
    if t is tuple:
        for item in key:
            check_key(item)
        return
    raise key_error(key)


def encode_key(key: Any) -> bytes:
    """The canonical bytes of ``key``: equal keys (as a dict sees them) give equal bytes."""
    t = type(key)
    if t is str:
        return b"s" + str.encode(key, "utf-8", "surrogatepass")
    if t is int or t is bool:
        return b"i" + str(int(key)).encode()
    if t is float:
        if math.isfinite(key) and key.is_integer():
            return b"i" + str(int(key)).encode()
        return b"f" + _DOUBLE.pack(key)
    if t is tuple:
        parts = [b"t"]
        for item in key:
            e = encode_key(item)
            parts.append(_LEN.pack(len(e)))
            parts.append(e)
        return b"".join(parts)
    if key is None:
        return b"N"
    if t is bytes:
        return b"b" + bytes(key)
    raise key_error(key)


def decode_key(data: bytes) -> Any:
    """The key that :func:`encode_key` turned into ``data``."""
    tag = data[:1]
    if tag == b"s":
        return data[1:].decode("utf-8", "surrogatepass")
    if tag == b"i":
        return int(data[1:])
    if tag == b"f":
        return _DOUBLE.unpack(data[1:])[0]
    if tag == b"N":
        return None
    if tag == b"b":
        return bytes(data[1:])
    if tag == b"t":
        items = []
        i = 1
        while i < len(data):
            (n,) = _LEN.unpack_from(data, i)
            items.append(decode_key(data[i + 4:i + 4 + n]))
            i += 4 + n
        return tuple(items)
    raise ValueError(f"not an encoded key: {data[:20]!r}")


def key_group(key: Any, max_key_groups: int = DEFAULT_KEY_GROUPS) -> int:
    """The key group of ``key``: stable across processes, runs and machines.

    >>> key_group("card-17"), key_group(("card-17", 3)), key_group(1) == key_group(1.0) == key_group(True)
    (104, 48, True)
    """
    return zlib.crc32(encode_key(key)) % max_key_groups


def split_key_groups(max_key_groups: int, workers: int) -> list[range]:
    """Contiguous ranges of key groups, one per worker, as even as possible (the ranges of
    :func:`millstream._keygroups.groups_of`, Flink's assignment)."""
    from millstream._keygroups import groups_of

    return [groups_of(w, workers, max_key_groups) for w in range(workers)]
