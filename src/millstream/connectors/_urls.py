"""Addresses the command line takes where it takes files: ``source_from_url`` and ``sink_from_url``.

One place maps a URL to a connector, so every command reads and writes the same addresses:

``kafka://HOST:PORT[,HOST:PORT...]/TOPIC``
    A source reads ``TOPIC`` partition by partition, from the earliest offsets, and (by
    default) stops at the end each partition had at the start; a checkpoint's offsets win.
    Options: ``group`` (offsets of completed checkpoints are committed to it), ``start``
    (``earliest``, ``latest``, ``committed`` or a timestamp in ms), ``bounded`` (``true``/
    ``false``), ``format`` (``json``, ``text``, ``bytes``), ``metadata`` (comma-separated:
    ``timestamp,partition,...``). A sink writes to ``TOPIC``; options ``partitions`` (create the
    topic with that many partitions when it does not exist, with explicit configs), ``key`` (the
    field that keys each message), ``format``, ``transactional_id`` (used under exactly-once;
    default ``millstream-<topic>``). Any option with a dot (``security.protocol``,
    ``sasl.mechanism``...) goes to librdkafka; with ``partitions`` and no ``key``, messages go to
    the partitions in turn (equal shares, the same every run); ``user:password@`` sets ``sasl.username`` and
    ``sasl.password``.
``postgresql://USER[:PASSWORD]@HOST:PORT/DB?table=T`` (or ``postgres://``)
    A sink writes rows into table ``T``. Options: ``table`` (required), ``mode`` (``append``,
    ``upsert``, ``transactional``; default ``upsert`` when ``key`` is given, else ``append``),
    ``key`` (comma-separated key columns of an upsert), ``columns`` (comma-separated),
    ``create`` (create a missing table, default ``true``), ``batch_size``, ``transaction_id``.
    Any other option (``sslmode``...) stays in the connection string.
A path, or ``file://PATH``
    A file (format from its extension: ``.jsonl``, ``.csv``, ``.parquet``...).

Secrets (a password, ``sasl.password``, ``token``...) never appear in an error or a
description: every message shows the address through :func:`redact_url`.
"""

from __future__ import annotations

import itertools
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

from millstream.connectors._base import Sink, Source, redact_url
from millstream.errors import ConfigError

__all__ = ["SCHEMES", "file_path", "is_url", "sink_from_url", "source_from_url"]

#: what each scheme is, for the error that lists them
SCHEMES: dict[str, str] = {
    "kafka": "kafka://HOST:PORT/TOPIC (a source or a sink)",
    "postgresql": "postgresql://USER@HOST:PORT/DB?table=NAME (a sink; also postgres://)",
    "file": "file:///PATH or a plain path (a source or a sink)",
}
_ALIASES = {"postgres": "postgresql"}

_KAFKA_READ = ("group", "start", "bounded", "format", "metadata")
_KAFKA_WRITE = ("partitions", "key", "format", "transactional_id")
_PG_WRITE = ("table", "mode", "key", "columns", "create", "batch_size", "transaction_id")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(text: str) -> bool:
    """Whether ``text`` is a ``scheme://`` address rather than a path."""
    return bool(_SCHEME.match(text))


def _scheme(url: str) -> str:
    m = _SCHEME.match(url)
    if not m:
        return "file"
    scheme = m.group(1).lower()
    scheme = _ALIASES.get(scheme, scheme)
    if scheme not in SCHEMES:
        known = "; ".join(SCHEMES.values())
        raise ConfigError(f"unknown address scheme {m.group(1)!r} in {redact_url(url)}: millstream takes {known}")
    return scheme


def _split(url: str) -> tuple[urllib.parse.SplitResult, dict[str, str]]:
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # a port that is not a number fails here
    except ValueError as exc:
        raise ConfigError(f"bad address {redact_url(url)}: {exc}") from None
    options: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key in options:
            raise ConfigError(f"option {key!r} is given twice in {redact_url(url)}")
        options[key] = value
    return parts, options


def _bool(options: dict[str, str], key: str, default: bool, url: str) -> bool:
    value = options.get(key)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"option {key}={value!r} in {redact_url(url)} must be true or false")


def _int(options: dict[str, str], key: str, url: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"option {key}={value!r} in {redact_url(url)} must be a positive integer")
    return n


def _list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _check_options(options: dict[str, str], known: tuple[str, ...], what: str, url: str, *,
                   dotted: bool = False) -> None:
    unknown = [k for k in options if k not in known and not (dotted and "." in k)]
    if unknown:
        more = " and librdkafka options (with a dot, e.g. security.protocol)" if dotted else ""
        raise ConfigError(f"unknown option {', '.join(map(repr, unknown))} for {what} {redact_url(url)}: "
                          f"it takes {', '.join(known)}{more}")


# -- kafka ---------------------------------------------------------------------------------------


def _kafka_parts(url: str) -> tuple[str, str, dict[str, str], dict[str, Any]]:
    """(bootstrap, topic, millstream options, librdkafka config)"""
    parts, options = _split(url)
    netloc = parts.netloc
    config: dict[str, Any] = {}
    if "@" in netloc:
        creds, netloc = netloc.rsplit("@", 1)
        user, _, password = creds.partition(":")
        config["sasl.username"] = urllib.parse.unquote(user)
        if password:
            config["sasl.password"] = urllib.parse.unquote(password)
        config.setdefault("security.protocol", "SASL_PLAINTEXT")
        config.setdefault("sasl.mechanism", "PLAIN")
    if not netloc:
        raise ConfigError(f"bad address {redact_url(url)}: kafka:// needs HOST:PORT, e.g. "
                          "kafka://127.0.0.1:9092/events")
    for host in netloc.split(","):
        h, _, port = host.rpartition(":")
        if not h or not port.isdigit():
            raise ConfigError(f"bad address {redact_url(url)}: {host!r} is not HOST:PORT")
    topic = urllib.parse.unquote(parts.path.lstrip("/"))
    if not topic or "/" in topic:
        raise ConfigError(f"bad address {redact_url(url)}: kafka:// needs one topic after the address, e.g. "
                          "kafka://127.0.0.1:9092/events")
    for k in [k for k in options if "." in k]:
        config[k] = options.pop(k)
    return netloc, topic, options, config


def _kafka_source(url: str, name: str | None, bounded: bool) -> Source:
    from millstream.connectors import kafka

    bootstrap, topic, options, config = _kafka_parts(url)
    _check_options(options, _KAFKA_READ, "a kafka source", url, dotted=True)
    start: Any = options.get("start", "earliest")
    if start.isdigit():
        start = int(start)
    return kafka.read(topic, bootstrap=bootstrap, group=options.get("group"), start=start,
                      bounded=_bool(options, "bounded", bounded, url), format=options.get("format", "json"),
                      metadata=_list(options.get("metadata")) or (), config=config or None, name=name)


def _kafka_sink(url: str, name: str | None, transactional: bool) -> Sink:
    from millstream.connectors import kafka

    bootstrap, topic, options, config = _kafka_parts(url)
    _check_options(options, _KAFKA_WRITE, "a kafka sink", url, dotted=True)
    partitions = _int(options, "partitions", url)
    txid = options.get("transactional_id") or (f"millstream-{re.sub(r'[^A-Za-z0-9._-]', '_', topic)}"
                                               if transactional else None)
    key = options.get("key") or None
    spread: Callable[[Any], int] | None = None
    if partitions is not None:
        admin = {k: v for k, v in config.items() if k.startswith(("security.", "sasl.", "ssl."))}
        kafka.create_topic(bootstrap, topic, partitions=partitions, admin_config=admin or None)
        if key is None:  # messages in turn over the topic's partitions: equal shares, the same every run
            spread = _round_robin(_partition_count(bootstrap, topic, admin) or partitions)
    return kafka.write(topic, bootstrap=bootstrap, key=key, partition=spread, format=options.get("format", "json"),
                       config=config or None, transactional_id=txid if transactional else None, name=name)


def _partition_count(bootstrap: str, topic: str, admin: dict[str, Any]) -> int | None:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap, **admin}).list_topics(topic, timeout=10)
    found = meta.topics.get(topic)
    return len(found.partitions) if found is not None and found.partitions else None


def _round_robin(n: int) -> Callable[[Any], int]:
    turn = itertools.count()
    return lambda _record: next(turn) % n


# -- postgresql ----------------------------------------------------------------------------------


def _postgres_sink(url: str, name: str | None, transactional: bool) -> Sink:
    from millstream.connectors import postgres

    parts, options = _split(url)
    mine = {k: v for k, v in options.items() if k in _PG_WRITE}
    rest = [(k, v) for k, v in options.items() if k not in _PG_WRITE]
    table = mine.get("table")
    if not table:
        raise ConfigError(f"a postgresql:// output needs ?table=NAME (the table rows are written to), in "
                          f"{redact_url(url)}; it also takes {', '.join(k for k in _PG_WRITE if k != 'table')}")
    if not parts.hostname or not parts.path.strip("/"):
        raise ConfigError(f"bad address {redact_url(url)}: postgresql:// needs USER@HOST:PORT/DATABASE")
    key = _list(mine.get("key"))
    mode = mine.get("mode") or ("upsert" if key else "append")
    dsn = urllib.parse.urlunsplit(("postgresql", parts.netloc, parts.path, urllib.parse.urlencode(rest), ""))
    batch = _int(mine, "batch_size", url)
    return postgres.write(table, dsn=dsn, mode=mode, key=key, columns=_list(mine.get("columns")),
                          create=_bool(mine, "create", True, url), batch_size=batch or 10_000,
                          transaction_id=mine.get("transaction_id"), name=name)


# -- files ---------------------------------------------------------------------------------------


def file_path(url: str) -> str:
    """The path of a plain path or a ``file://`` address."""
    if not is_url(url):
        return url
    parts, options = _split(url)
    if options or parts.netloc not in ("", "localhost"):
        raise ConfigError(f"bad address {redact_url(url)}: file:// takes a path (file:///tmp/events.jsonl), "
                          "without a host or options")
    return urllib.parse.unquote(parts.path)


def _file_source(url: str, name: str | None, bounded: bool) -> Source:
    from millstream.connectors import files

    return files.read(file_path(url), name=name)


def _file_sink(url: str, name: str | None, transactional: bool) -> Sink:
    from millstream.connectors import files

    path = file_path(url)
    return files.write(path.rstrip("/") + "/" if transactional else path, transactional=transactional, name=name)


# -- the mapping ---------------------------------------------------------------------------------


def _postgres_source(url: str, name: str | None, bounded: bool) -> Source:
    raise ConfigError(f"{redact_url(url)} is a table to write to, not an input: a postgresql:// address is "
                      "an output (--out); read a table's changes with postgres.read_changes in a job file")


_SOURCES: dict[str, Callable[[str, str | None, bool], Source]] = {
    "kafka": _kafka_source, "postgresql": _postgres_source, "file": _file_source}
_SINKS: dict[str, Callable[[str, str | None, bool], Sink]] = {
    "kafka": _kafka_sink, "postgresql": _postgres_sink, "file": _file_sink}


def source_from_url(url: str, *, name: str | None = None, bounded: bool = True) -> Source:
    """The source an address names (see the module docstring for the schemes and options).

    ``bounded`` is what a ``kafka://`` source does without a ``bounded=`` option: stop at the end
    each partition had at the start (True, for runs that end), or keep reading.
    """
    if not isinstance(url, str) or not url:
        raise ConfigError(f"an input address must be a path or a URL, not {url!r}")
    return _SOURCES[_scheme(url)](url, name, bounded)


def sink_from_url(url: str, *, name: str | None = None, transactional: bool = False) -> Sink:
    """The sink an address names (see the module docstring for the schemes and options).

    ``transactional``: the run is exactly-once, so a ``kafka://`` sink writes in transactions
    (``transactional_id`` from the address, default ``millstream-<topic>``) and a file sink is a
    directory of committed part files; a ``postgresql://`` sink is exactly-once with
    ``mode=upsert`` (idempotent) or ``mode=transactional``.
    """
    if not isinstance(url, str) or not url:
        raise ConfigError(f"an output address must be a path or a URL, not {url!r}")
    return _SINKS[_scheme(url)](url, name, transactional)
