"""A source declared by one frozen options value, and the host its description shows.

The NATS JetStream and Redis Streams sources are built this way (Kafka's source has the same
shape): the facade checks the arguments into a ``ReadOptions`` dataclass, the source keeps it with
the error policy and a name, and its reader gets the options when the job opens it.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from millstream.connectors._base import ErrorPolicy, Source, check_policy, redact_url


class _Options(Protocol):
    @property
    def bounded(self) -> bool: ...


OptionsT = TypeVar("OptionsT", bound=_Options)


class OptionsSource(Source, Generic[OptionsT]):
    """A source whose ``options`` say everything it reads; it ends by itself when they are ``bounded``."""

    def __init__(self, options: OptionsT, *, on_error: ErrorPolicy = "fail", name: str | None = None) -> None:
        self.options = options
        self.on_error = check_policy(on_error)
        self.name = name
        self.bounded = options.bounded


def host_of(url: str) -> str:
    """What a description shows of ``url``: ``host:port`` and any path, never the scheme or credentials."""
    return redact_url(url).split("://", 1)[-1].split("@")[-1]
