"""The payload codec the message connectors share: formats, decoders and encoders, metadata names,
when a streaming source ends by itself, and bad payloads sent to the source's error policy."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import orjson

from millstream.connectors._base import SourceContext
from millstream.errors import ConfigError

FORMATS = ("json", "text", "bytes")

def check_format(format: str, deserializer: Any, what: str = "deserializer") -> None:
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(map(repr, FORMATS))}, not {format!r}")
    if deserializer is not None and not callable(deserializer):
        raise ConfigError(f"{what} must be a function taking bytes, not {deserializer!r}")


def make_decoder(format: str, deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """bytes -> record; raises ValueError (or whatever a user deserializer raises) on a bad payload."""
    if deserializer is not None:
        return deserializer
    if format == "bytes":
        return bytes
    if format == "text":
        return _utf8
    return orjson.loads


def _utf8(payload: bytes) -> str:
    return payload.decode("utf-8")


def _decoding(decode: Callable[[bytes], Any]) -> str:
    """What a decoder does, for the message of a payload it cannot decode."""
    if decode is orjson.loads:
        return "the payload as JSON"
    if decode is _utf8:
        return "the payload as UTF-8 text"
    return f"the payload with {getattr(decode, '__qualname__', None) or type(decode).__name__}"


def make_encoder(format: str, serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    """record -> bytes for a sink."""
    if serializer is not None:
        return serializer
    if format == "bytes":
        return lambda r: bytes(r)
    if format == "text":
        return lambda r: str(r).encode("utf-8")
    return lambda r: orjson.dumps(r, option=orjson.OPT_NON_STR_KEYS)


def check_metadata(metadata: Sequence[str] | None, allowed: Sequence[str], system: str = "") -> tuple[str, ...]:
    """The metadata fields asked for, each one the system has (``allowed``)."""
    if metadata is None:
        return ()
    if isinstance(metadata, str):
        metadata = (metadata,)
    bad = [m for m in metadata if m not in allowed]
    if bad:
        who = f"{system} " if system else ""
        raise ConfigError(f"{who}metadata {bad!r} unknown; choose from {', '.join(map(repr, allowed))}")
    return tuple(metadata)


def duration_s(value: float | timedelta | None, what: str) -> float | None:
    if value is None:
        return None
    s = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if s <= 0:
        raise ConfigError(f"{what} must be > 0 seconds, got {value!r}")
    return s


def check_stop(max_records: int | None, idle_stop: float | timedelta | None) -> tuple[int | None, float | None]:
    if max_records is not None and (not isinstance(max_records, int) or max_records <= 0):
        raise ConfigError(f"max_records must be a positive int, got {max_records!r}")
    return max_records, duration_s(idle_stop, "idle_stop")


class StopCondition:
    """When a streaming source ends by itself: ``max_records`` read, or nothing for ``idle_stop`` s."""

    def __init__(self, max_records: int | None, idle_stop: float | None) -> None:
        self.max_records = max_records
        self.idle_stop = idle_stop
        self.count = 0
        self.last = time.monotonic()

    @property
    def active(self) -> bool:
        return self.max_records is not None or self.idle_stop is not None

    def room(self, n: int) -> int:
        return n if self.max_records is None else max(0, min(n, self.max_records - self.count))

    def took(self, n: int) -> None:
        self.count += n
        if n:
            self.last = time.monotonic()

    def ended(self) -> bool:
        if self.max_records is not None and self.count >= self.max_records:
            return True
        return self.idle_stop is not None and time.monotonic() - self.last >= self.idle_stop


def decode_into(out: list[Any], ctx: SourceContext, decode: Callable[[bytes], Any], payload: bytes,
                position: str, meta: dict[str, Any] | None) -> bool:
    """Decode ``payload`` and append the record to ``out``; a bad payload goes to the error policy."""
    try:
        value = decode(payload)
    except Exception as exc:  # noqa: BLE001 - any deserializer failure is a bad record
        ctx.bad_record(f"cannot decode {_decoding(decode)}: {type(exc).__name__}: {exc}", position=position,
                       raw=payload)
        return False
    if meta:
        if not isinstance(value, dict):
            ctx.bad_record(f"metadata needs a JSON object payload, got {type(value).__name__}",
                           position=position, raw=payload)
            return False
        value.update(meta)
    out.append(value)
    return True
