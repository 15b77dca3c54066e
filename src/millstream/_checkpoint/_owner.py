"""One owner per checkpoint directory: an OS lock, plus an owner epoch that fences a zombie.

Files in the checkpoint directory::

    LOCK     flock()ed by the owning run for its whole life; the kernel drops the lock when the
             process dies, so a crashed owner never blocks a restart
    OWNER    JSON: the owner epoch (incremented by each new owner), a random token, host, PID
             and start time; replaced atomically (temp file, fsync, rename, directory fsync)

A second live run on the directory finds the lock taken and is refused, naming the owner.
The lock alone is not enough: the lock file may be deleted by hand (a new run then locks a
new file), or the filesystem may not implement locks (some network filesystems). So every
step that makes something visible (the rename of a checkpoint into place, the read
positions of at-most-once, each sink's commit, garbage collection) first checks that OWNER
still holds this run's token: a paused run that wakes up after another took over stops
with :class:`~millstream.errors.CheckpointOwnershipError` before it commits anything.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from millstream.errors import CheckpointError, CheckpointOwnershipError

log = logging.getLogger("millstream.checkpoint")

LOCK = "LOCK"
OWNER = "OWNER"
SCOPE = "SCOPE"
_SCOPE_RE = re.compile(r"[0-9a-f]{12}")


def fsync_dir(path: str) -> None:
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes) -> None:
    """Write ``path`` whole or not at all: temp file, fsync, rename, directory fsync."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(path))


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "an unknown run (its OWNER file is missing or unreadable)"
    since = info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, int | float) else "?"
    return f"PID {info.get('pid')} on host {info.get('host')!r}, since {when} (owner epoch {info.get('epoch')})"


class DirectoryOwner:
    """This run's ownership of a checkpoint directory."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.epoch = 0
        self.token = ""
        #: this directory's identity, the same for every run on it (see :meth:`_scope`): transactional
        #: sinks put it in what they name outside the directory (PostgreSQL prepared transactions), so
        #: that two jobs with different directories never take each other's for their own
        self.scope = ""
        self._fd: int | None = None

    @property
    def owner_path(self) -> str:
        return os.path.join(self.root, OWNER)

    def read(self) -> dict[str, Any] | None:
        """The owner recorded on disk (None if the file is missing or unreadable)."""
        try:
            with open(self.owner_path, "rb") as f:
                info = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict):
            return None
        body = {k: v for k, v in info.items() if k != "checksum"}
        if info.get("checksum") != hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest():
            return None
        return info

    def acquire(self) -> None:
        """Lock the directory and become its owner with a new epoch, or refuse clearly."""
        self._lock()
        try:
            self.scope = self._scope()
            prev = self.read()
            prev_epoch = prev.get("epoch") if prev else None
            if isinstance(prev_epoch, int):
                self.epoch = prev_epoch + 1
            elif os.path.exists(self.owner_path):
                # unreadable: any new value fences its writer; milliseconds stay above any counter
                self.epoch = int(time.time() * 1000)
            else:
                self.epoch = 1
            self.token = uuid.uuid4().hex
            info: dict[str, Any] = {"epoch": self.epoch, "token": self.token, "host": socket.gethostname(),
                                    "pid": os.getpid(), "since": round(time.time(), 3)}
            info["checksum"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
            write_atomically(self.owner_path, json.dumps(info, sort_keys=True).encode())
        except OSError as exc:
            self.release()
            raise CheckpointError(f"cannot record the owner of checkpoint directory {self.root!r}: {exc}") from exc
        except BaseException:
            self.release()
            raise

    def _lock(self) -> None:
        if sys.platform == "win32":
            return  # no flock: the epoch check alone fences
        import fcntl

        path = os.path.join(self.root, LOCK)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(
                f"cannot open the lock file {path!r} of checkpoint directory {self.root!r}: {exc.strerror}. "
                f"It is an empty file that the owning run locks.\n  fix: if no run uses the directory, remove "
                f"{path!r} (whatever it is) and run again; it is created anew"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointOwnershipError(
                    f"checkpoint directory {self.root!r} is in use by another run: {_describe(self.read())}. "
                    "Two runs on one directory would commit over each other's output.\n"
                    "  fix: wait for that run to end, or stop it; a run that crashed holds no lock. "
                    "To run a second copy of the job, give it its own checkpoint directory and output."
                ) from None
            log.warning("checkpoint directory %s: file locks do not work here (%s); relying on the owner "
                        "epoch check alone to fence other runs", self.root, exc)
            return
        self._fd = fd

    def _scope(self) -> str:
        """The directory's identity: random, written once (under the lock) to ``SCOPE`` and never again.

        Checkpoint manifests carry it too: a ``SCOPE`` file that is lost or damaged is written again from
        the checkpoints when they all name the same one (and ``COMMITTED`` too), so the directory keeps its
        identity and its checkpoints stay loadable; otherwise a new random one (then none of them loads)."""
        path = os.path.join(self.root, SCOPE)
        found = self._scope_of_checkpoints()
        try:
            with open(path, "rb") as f:
                scope = f.read().decode("ascii", "replace").strip()
            if _SCOPE_RE.fullmatch(scope):
                if found is None or found[0] == scope or not found[2]:
                    return scope
                problem = f"names another directory ({scope!r}) than every checkpoint and record here do"
            else:
                problem = f"is unreadable ({scope[:40]!r})"
        except FileNotFoundError:
            problem = "is missing"
        if found is not None and found[2]:
            log.warning("checkpoint directory %s: %s %s; written again from checkpoint %d, which names it",
                        self.root, SCOPE, problem, found[1])
            scope = found[0]
        elif found is not None:  # the checkpoints disagree (one copied in from elsewhere?): trust none of them
            log.warning("checkpoint directory %s: %s %s, and its checkpoints name different directories; writing "
                        "a new one (no checkpoint here will load)", self.root, SCOPE, problem)
            scope = uuid.uuid4().hex[:12]
        else:
            if problem != "is missing":
                log.warning("checkpoint directory %s: %s %s; writing a new one", self.root, SCOPE, problem)
            scope = uuid.uuid4().hex[:12]
        write_atomically(path, scope.encode() + b"\n")
        return scope

    def _scope_of_checkpoints(self) -> tuple[str, int, bool] | None:
        """The scope the newest checkpoint's manifest names, that checkpoint's id, and whether every manifest
        and the COMMITTED record that name a scope name that one (None: no checkpoint names one)."""
        try:
            names = sorted((n for n in os.listdir(self.root) if re.fullmatch(r"chk-\d+", n)), reverse=True)
        except OSError:
            return None
        named: list[tuple[str, int]] = []
        for name in names:
            try:
                with open(os.path.join(self.root, name, "MANIFEST.json"), "rb") as f:
                    doc = json.loads(f.read())
            except (OSError, ValueError):
                continue
            scope = doc.get("scope") if isinstance(doc, dict) else None
            if isinstance(scope, str) and _SCOPE_RE.fullmatch(scope):
                named.append((scope, int(name[4:])))
        if not named:
            return None
        seen = {scope for scope, _ in named}
        try:
            with open(os.path.join(self.root, "COMMITTED"), "rb") as f:
                head = json.loads(f.readline())
            if isinstance(head, dict) and isinstance(head.get("scope"), str):
                seen.add(head["scope"])
        except (OSError, ValueError):
            pass
        return named[0][0], named[0][1], len(seen) == 1

    def check(self) -> None:
        """Raise :class:`CheckpointOwnershipError` unless this run still owns the directory."""
        if not self.token:
            return
        info = self.read()
        if info is not None and info.get("token") == self.token:
            return
        raise CheckpointOwnershipError(
            f"this run (owner epoch {self.epoch}, PID {os.getpid()}) no longer owns checkpoint directory "
            f"{self.root!r}: {_describe(info)} took it over (was this run paused, or its LOCK file removed?). "
            "It stops without committing anything more; the other run's checkpoints and output stand."
        )

    def release(self) -> None:
        """Drop the lock (OWNER stays: the next owner's epoch counts on from it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@runtime_checkable
class FencedWriter(Protocol):
    """A sink writer that checks ownership itself right before it makes output visible, and puts the
    owner epoch in the names of what it stages (so two owners' files never collide)."""

    def set_fence(self, epoch: int, check: Callable[[], None], scope: str = "") -> None: ...
