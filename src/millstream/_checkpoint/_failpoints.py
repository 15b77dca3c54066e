"""Named failpoints in the checkpoint and commit path, armed by ``MILLSTREAM_FAILPOINTS``.

``MILLSTREAM_FAILPOINTS="ckpt.after_rename=kill,sink.commit=raise:0.5,ckpt.begin=kill#3"``:
``kill`` sends SIGKILL to this process, ``raise`` raises :class:`FailpointError`, ``stop``
sends SIGSTOP (the process pauses there until SIGCONT, then goes on: a "zombie" for fencing tests);
``:p`` fires with probability p, ``#n`` fires on the n-th time the point is reached.
Unarmed, a failpoint costs one dict lookup.
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass

from millstream.errors import JobError

ENV = "MILLSTREAM_FAILPOINTS"

#: The failpoints, in the order a checkpoint reaches them (RELIABILITY.md F2, P1-P12).
POINTS = (
    "ckpt.begin",             # P1  barrier injected, nothing written
    "ckpt.mid_state",         # P2  while writing operator state (partial temp file)
    "ckpt.state_written",     # P3  state written, not fsynced
    "ckpt.state_synced",      # P4  fsynced, manifest not written
    "ckpt.mid_manifest",      # P5  torn manifest
    "ckpt.before_rename",     # P6  manifest written, before the atomic rename
    "ckpt.after_rename",      # P7  after rename, before the directory fsync
    "ckpt.before_commit",     # P8  checkpoint complete, before the sinks commit
    "sink.commit",            # P9  during the sinks' commit (between sinks / inside one)
    "ckpt.after_commit",      # P10 after the commit
    "source.acknowledge",     # P10b sinks committed, sources not yet told (a redelivery source replays)
    "recovery.restore",       # P11 while restoring
    "ckpt.gc",                # P12 while removing old checkpoints
)


class FailpointError(JobError):
    """Raised by a failpoint armed with ``raise``."""


@dataclass
class _Arm:
    action: str
    probability: float = 1.0
    nth: int | None = None
    hits: int = 0


def _parse(spec: str) -> dict[str, _Arm]:
    arms: dict[str, _Arm] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, how = part.partition("=")
        how = how or "kill"
        nth = None
        prob = 1.0
        if "#" in how:
            how, _, n = how.partition("#")
            nth = int(n)
        if ":" in how:
            how, _, p = how.partition(":")
            prob = float(p)
        if how not in ("kill", "raise", "stop"):
            raise ValueError(f"{ENV}: unknown action {how!r} for {name!r} (use kill, raise or stop)")
        arms[name.strip()] = _Arm(how, prob, nth)
    return arms


_ARMED: dict[str, _Arm] = _parse(os.environ.get(ENV, ""))


def arm(spec: str) -> None:
    """Arm failpoints from a spec string (tests; the environment variable is read at import)."""
    _ARMED.clear()
    _ARMED.update(_parse(spec))


def failpoint(name: str) -> None:
    """Fire the failpoint ``name`` if it is armed."""
    if not _ARMED:
        return
    a = _ARMED.get(name)
    if a is None:
        return
    a.hits += 1
    if a.nth is not None and a.hits != a.nth:
        return
    if a.probability < 1.0 and random.random() >= a.probability:
        return
    if a.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if a.action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    raise FailpointError(f"failpoint {name} fired")
