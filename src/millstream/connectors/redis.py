"""Redis Streams: read streams as a consumer group, append records with XADD.

Needs ``pip install 'millstream[redis]'`` (redis-py with hiredis). See docs/connectors/redis.md.

- :func:`read`: one split per stream; ``XREADGROUP`` under a consumer group (created with
  ``MKSTREAM`` if missing); entries are acknowledged (``XACK``) only once the checkpoint that
  holds them is complete; after a crash the entries this consumer left pending are read again
  first, and those the restored checkpoint already covers are dropped (``replay = "redelivery"``),
  so exactly-once holds with a transactional sink downstream.
- :func:`write`: ``XADD`` pipelined, optionally capped with ``MAXLEN``. Without ``id_field`` a replay
  after a crash appends duplicates (``delivery = "none"``); with an increasing ``id_field`` a rewrite
  is recognised and skipped (``delivery = "idempotent"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from millstream.connectors._base import Backoff, ErrorPolicy
from millstream.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from millstream.connectors._redis import RedisSink, RedisSource

__all__ = ["read", "write"]

_DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _need_redis(feature: str) -> None:
    try:
        import redis  # noqa: F401
    except ImportError:
        raise MissingDependencyError("redis", "redis", feature) from None


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("url must be a Redis URL such as 'redis://127.0.0.1:6379/0' "
                          "(rediss:// for TLS, redis://user:password@host:port/db with a password)")
    return url


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


def read(
    streams: str | Sequence[str],
    *,
    group: str,
    url: str = _DEFAULT_URL,
    consumer: str | None = None,
    start: str = "$",
    bounded: bool = False,
    count: int = 1000,
    block: int = 100,
    field: str | None = "data",
    format: str = "json",
    deserializer: Callable[[bytes], Any] | None = None,
    metadata: Sequence[str] = (),
    on_error: ErrorPolicy = "fail",
    backoff: Backoff | None = None,
    name: str | None = None,
) -> RedisSource:
    """A source that reads Redis ``streams`` (a name or several) as consumer group ``group``.

    - ``url``: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS). The password
      never appears in plans, errors, logs or checkpoints.
    - ``group``: the consumer group, created (``XGROUP CREATE ... MKSTREAM``) when missing, at
      ``start``: ``"$"`` (only entries added from now on, the default), ``"0"`` (everything the
      stream holds) or an entry id. An existing group keeps its own position.
    - ``consumer``: this reader's name in the group (default ``millstream-<step>``). Keep it stable:
      after a crash the entries left pending under that name are read again first; a checkpoint
      taken under another name has its entries claimed (``XCLAIM``) from the old name.
    - ``bounded``: stop at the last entry each stream held at start (for batch mode, tests and
      replays); otherwise read forever.
    - ``count``: entries per ``XREADGROUP``; ``block``: milliseconds a read waits for new entries
      when none are there (unbounded only).
    - ``field``: the entry field that holds the payload (``"data"``, what :func:`write` writes);
      ``None`` makes each record the entry's fields as a dict of strings (``format`` is not used).
    - ``format``: ``"json"`` (dicts, via orjson; the default), ``"text"`` (str) or ``"bytes"``;
      ``deserializer``: a function of the payload bytes instead.
    - ``metadata``: any of ``"stream"``, ``"id"``, ``"timestamp"``, added as ``_stream``, ``_id`` and
      ``_timestamp`` (the id's millisecond part: the time Redis added the entry, usable as event
      time). With metadata a payload that is not a JSON object is a bad record.
    - ``on_error``: what to do with an entry that cannot be decoded (or lacks ``field``): ``"fail"``,
      ``"skip"`` or ``dead_letter(sink)``; the position is ``<stream>@<entry id>``.
    - ``backoff``: retries while Redis is unreachable (:class:`~millstream.connectors.Backoff`).

    Acknowledgement happens only in checkpoints (``XACK`` of every entry up to the checkpoint's
    position), or as read under at-most-once. Without a guarantee (no checkpoints) nothing is
    acknowledged: entries stay pending and the next run under the same consumer reads them again.
    """
    _need_redis("millstream.connectors.redis.read")
    from millstream.connectors._codec import check_format, check_metadata
    from millstream.connectors._redis import ReadOptions, RedisSource

    names = (streams,) if isinstance(streams, str) else tuple(streams)
    if not names or not all(isinstance(s, str) and s for s in names):
        raise ConfigError(f"streams must be a stream name or a list of them, not {streams!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"streams names a stream twice: {list(names)}")
    if not isinstance(group, str) or not group:
        raise ConfigError("group must name the consumer group, e.g. group='millstream'")
    if consumer is not None and (not isinstance(consumer, str) or not consumer):
        raise ConfigError(f"consumer must be a non-empty name or None, not {consumer!r}")
    if not isinstance(start, str) or not (start in ("$", "0") or _is_entry_id(start)):
        raise ConfigError(f"start must be '$' (new entries), '0' (from the beginning) or an entry id "
                          f"like '1700000000000-0', not {start!r}")
    if not isinstance(bounded, bool):
        raise ConfigError(f"bounded must be True or False, not {bounded!r}")
    if field is not None and (not isinstance(field, str) or not field):
        raise ConfigError(f"field must name the entry field holding the payload, or be None, not {field!r}")
    check_format(format, deserializer)
    if backoff is not None and not isinstance(backoff, Backoff):
        raise ConfigError(f"backoff must be a millstream.connectors.Backoff, not {backoff!r}")
    options = ReadOptions(
        streams=names, url=_check_url(url), group=group, consumer=consumer, start=start, bounded=bounded,
        count=_check_int(count, "count", 1), block_ms=_check_int(block, "block", 1), field=field, format=format,
        deserializer=deserializer, metadata=check_metadata(metadata, ("stream", "id", "timestamp"), "redis"),
        backoff=backoff or Backoff())
    return RedisSource(options, on_error=on_error, name=name)


def _is_entry_id(text: str) -> bool:
    ms, _, seq = text.partition("-")
    return ms.isdigit() and (seq == "" or seq.isdigit())


def write(
    stream: str,
    *,
    url: str = _DEFAULT_URL,
    maxlen: int | None = None,
    approximate: bool = True,
    id_field: str | None = None,
    field: str = "data",
    serializer: Callable[[Any], bytes | str] | None = None,
    batch: int = 1000,
    backoff: Backoff | None = None,
    name: str | None = None,
) -> RedisSink:
    """A sink that appends each record to the Redis stream ``stream`` (``XADD``, pipelined).

    - ``url``: as for :func:`read`.
    - ``maxlen``: cap the stream's length (``MAXLEN``; ``approximate=True`` uses ``~``, which is
      much cheaper and may keep a few more).
    - ``field``: the entry field that holds the serialized record (default ``"data"``).
    - ``serializer``: record -> bytes or str (default: JSON via orjson).
    - ``batch``: entries sent in one pipeline; what is buffered is sent at each checkpoint and on close.
    - ``id_field``: take each entry id from this field of the record (``"<ms>-<seq>"`` or an integer
      ms, increasing in output order). Redis refuses an id at or below the stream's last one; the
      sink then checks that an entry with that id is there (a replay after a crash wrote it before)
      and skips it, counted, or fails when there is none (ids that do not increase). This makes
      the sink ``"idempotent"``: exactly-once in effect. Without it ``delivery`` is ``"none"``: a
      replay appends the records since the last checkpoint again (at-least-once).
    """
    _need_redis("millstream.connectors.redis.write")
    from millstream.connectors._redis import RedisSink, WriteOptions

    if not isinstance(stream, str) or not stream:
        raise ConfigError(f"stream must name a Redis stream, not {stream!r}")
    if maxlen is not None:
        _check_int(maxlen, "maxlen", 1)
    if not isinstance(approximate, bool):
        raise ConfigError(f"approximate must be True or False, not {approximate!r}")
    if id_field is not None and (not isinstance(id_field, str) or not id_field):
        raise ConfigError(f"id_field must name a field of the records, or be None, not {id_field!r}")
    if not isinstance(field, str) or not field:
        raise ConfigError(f"field must name the entry field to write, not {field!r}")
    if serializer is not None and not callable(serializer):
        raise ConfigError(f"serializer must be a function of the record returning bytes or str, not {serializer!r}")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise ConfigError(f"backoff must be a millstream.connectors.Backoff, not {backoff!r}")
    options = WriteOptions(stream=stream, url=_check_url(url), maxlen=maxlen, approximate=approximate,
                           id_field=id_field, field=field, serializer=serializer,
                           batch=_check_int(batch, "batch", 1), backoff=backoff or Backoff())
    return RedisSink(options, name=name)
