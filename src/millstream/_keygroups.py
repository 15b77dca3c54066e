"""Key groups: which group a key belongs to, and which worker owns which groups.

Flink's model. Every key belongs to one of ``max_parallelism`` **key groups**; keyed state
is kept and checkpointed by key group, and each of ``n`` workers owns one contiguous range
of groups. A job can therefore restart with any parallelism up to ``max_parallelism``: each
worker restores the groups of its new range. ``max_parallelism`` is fixed for the life of a
job's state (128 unless the state URL's ``key_groups`` option says otherwise).

The group of a key is ``crc32(encode_key(key)) % max_parallelism``
(:func:`millstream._state.encode_key`), defined once, there, because the state backends
already file keys under it. It never uses Python's ``hash`` (salted per process for str), so
it is the same in every process, run and machine, and keys that are one key in a dict
(``1``, ``1.0``, ``True``) share a group. :func:`key_groups` gives the same groups for a
polars column (micro-batch mode) as :func:`key_group` gives for each value (native mode),
computing the CRC over the canonical encodings with numpy.

Ownership follows Flink's ``KeyGroupRangeAssignment``: group ``g`` belongs to worker
``g * n // max_parallelism``, so worker ``w`` owns the groups from ``ceil(w * m / n)`` up to
``ceil((w + 1) * m / n)``, ranges that differ in size by at most one.

>>> key_group("card-17"), worker_of(key_group("card-17"), 3), groups_of(1, 3)
(104, 2, range(43, 86))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from millstream._state._keys import DEFAULT_KEY_GROUPS, key_group
from millstream.errors import ConfigError

if TYPE_CHECKING:  # numpy and polars are imported when a column's groups are asked (native jobs never do)
    import numpy as np
    import numpy.typing as npt
    import polars as pl

    Groups = npt.NDArray[np.int64]

__all__ = [
    "DEFAULT_MAX_PARALLELISM",
    "check_parallelism",
    "groups_of",
    "key_group",
    "key_groups",
    "worker_of",
    "workers_of",
]

#: Key groups of a job unless told otherwise: the most workers its state can ever be split over.
DEFAULT_MAX_PARALLELISM = DEFAULT_KEY_GROUPS

#: Flink's upper bound (key groups are stored in two bytes by the on-disk backend).
_LIMIT = 32768

def check_parallelism(n: int, max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> None:
    """Raise :class:`~millstream.errors.ConfigError` (a ValueError) unless ``1 <= n <= max_parallelism <= 32768``."""
    if not 1 <= max_parallelism <= _LIMIT:
        raise ConfigError(f"max_parallelism must be between 1 and {_LIMIT}, got {max_parallelism}")
    if not 1 <= n <= max_parallelism:
        raise ConfigError(
            f"parallelism must be between 1 and max_parallelism ({max_parallelism}), got {n}: "
            "every worker needs at least one key group"
        )


def groups_of(worker: int, n: int, max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> range:
    """The contiguous range of key groups worker ``worker`` of ``n`` owns."""
    check_parallelism(n, max_parallelism)
    if not 0 <= worker < n:
        raise ValueError(f"worker must be between 0 and {n - 1}, got {worker}")
    # ceil(w * m / n) .. ceil((w + 1) * m / n): exactly the groups g with g * n // m == w
    return range(-(-worker * max_parallelism // n), -(-(worker + 1) * max_parallelism // n))


def worker_of(group: int, n: int, max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> int:
    """The worker of ``n`` that owns key group ``group``."""
    check_parallelism(n, max_parallelism)
    if not 0 <= group < max_parallelism:
        raise ValueError(f"key group must be between 0 and {max_parallelism - 1}, got {group}")
    return group * n // max_parallelism


def workers_of(groups: Groups, n: int, max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> Groups:
    """:func:`worker_of` for an array of key groups."""
    check_parallelism(n, max_parallelism)
    return groups * n // max_parallelism


def key_groups(key: pl.Series | Sequence[pl.Series], max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> Groups:
    """The key group of every row: of the column's value for one column, of the tuple of the
    columns' values for a sequence of columns (as a key of several fields is in native mode).

    Equal to ``[key_group(v, max_parallelism) for v in column]`` (or over the rows' tuples).
    A value that native mode cannot give a group raises the same :class:`TypeError`.
    """
    from millstream._keygroups_columns import key_groups as of_columns

    check_parallelism(1, max_parallelism)
    return of_columns(key, max_parallelism)
