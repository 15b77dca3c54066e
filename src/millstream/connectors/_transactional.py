"""Two-phase commit for files: the output of each checkpoint is staged in a hidden
file and renamed into place once the checkpoint is complete.

The directory of a transactional file sink (writer ``0``) looks like this::

    part-00000003-0.jsonl            committed by checkpoint 3: visible
    part-00000007-0.jsonl            committed by checkpoint 7 (4 to 6 wrote nothing)
    .part-0.e2-5f1c2a9e0b7d.jsonl.pending   written since checkpoint 7 by owner epoch 2: invisible

A downstream reader takes the files whose names start with neither ``.`` nor
``_``, in name order (:func:`read_committed` does; so does
``files.read(directory)``, which never reads hidden files). The public facade is
:mod:`millstream.connectors.files`.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from millstream.connectors._base import SinkWriter, SourceContext
from millstream.connectors._files_common import check_format, check_path, format_of
from millstream.errors import ConfigError, JobError

__all__ = ["PartFile", "TwoPhaseFileWriter", "fsync_dir", "read_committed"]

log = logging.getLogger("millstream.connectors.files")


def fsync_dir(path: str) -> None:
    """Make the creation, renaming and removal of files in ``path`` durable (a no-op on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartFile(Protocol):
    """One staged file being written: records in, then sealed (durable) or discarded."""

    def write(self, records: list[Any]) -> None: ...

    def seal(self) -> None:
        """Flush, fsync and close: the file is complete and survives a crash."""
        ...

    def discard(self) -> None:
        """Close and delete."""
        ...


class TwoPhaseFileWriter(SinkWriter):
    """Writes a directory of part files with two-phase commit (``Sink.delivery == "transactional"``).

    - ``write``: records go to a hidden staged file, started with the first record
      after a checkpoint (a checkpoint with no records makes no file).
    - ``pre_commit(n)``: the staged file is sealed (fsync, directory fsync); the
      transaction ``{"checkpoint": n, "staged": ..., "final": "part-<n>-<writer>.<ext>"}``
      names it (``staged`` and ``final`` are None when nothing was written).
    - ``commit(txn)``: ``os.replace(staged, final)`` and a directory fsync. Run again
      after the rename, it finds the final file and does nothing.
    - ``recover(txns)``: commits ``txns``, then deletes every other staged file of
      this writer. With no transactions (a fresh start) it also deletes the part
      files this writer committed in an earlier run: the directory then holds
      this run's output only, as a plain file sink replaces its file.
    - ``close``: a writer that took part in checkpoints (``recover`` or
      ``pre_commit`` was called) discards what no checkpoint covers (replayed on
      restart); one that never did (a run without checkpoints) commits it all
      as ``part-00000000-<writer>.<ext>``.

    One transactional sink per directory: two writers with the same writer id in
    one directory would delete each other's staged files.

    Fencing (:meth:`set_fence`, called by the checkpoint coordinator): staged names carry the
    owner epoch of the checkpoint directory, and ``commit`` checks that this run still owns
    it right before the rename, so a paused run that another took over makes nothing visible.
    """

    def __init__(self, directory: str, *, ext: str, new_part: Callable[[str], PartFile], step: str,
                 writer_id: str = "0") -> None:
        self.dir = directory
        self.ext = ext
        self.new_part = new_part
        self.step = step
        self.writer_id = writer_id
        self._part: PartFile | None = None
        self._staged: str | None = None
        self._pending_records = 0
        self._started = False
        self._coordinated = False
        self._checkpointed = False
        self._broken: BaseException | None = None
        self._final_re = re.compile(rf"part-\d{{8,}}-{re.escape(writer_id)}\.{re.escape(ext)}")
        self._staged_prefix = f".part-{writer_id}."
        self._epoch = 0
        self._fence: Callable[[], None] | None = None

    def set_fence(self, epoch: int, check: Callable[[], None], scope: str = "") -> None:
        """Put ``epoch`` in staged names; call ``check`` (it raises when fenced) before every commit.
        (``scope``, the checkpoint directory's identity, is not needed: staged files live in the output.)"""
        self._epoch = epoch
        self._fence = check

    # -- names ---------------------------------------------------------------------------
    def final_name(self, checkpoint_id: int) -> str:
        """The committed name of checkpoint ``checkpoint_id``'s output (the same every time it is asked)."""
        return f"part-{checkpoint_id:08d}-{self.writer_id}.{self.ext}"

    def committed_beyond(self, checkpoint_id: int) -> list[str]:
        """The committed files of this writer whose checkpoint comes after ``checkpoint_id`` (the
        coordinator asks before a resume: output a restored checkpoint cannot account for)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if self._own_final(n) and int(n.split("-")[1]) > checkpoint_id)

    def _own_staged(self, name: str) -> bool:
        return name.startswith(self._staged_prefix) and name.endswith(".pending")

    def _own_final(self, name: str) -> bool:
        return self._final_re.fullmatch(name) is not None

    # -- the protocol --------------------------------------------------------------------
    def write(self, records: list[Any], times: list[int] | None) -> None:
        self._check()
        if not records:
            return
        self._start()
        if self._part is None:
            self._staged = f"{self._staged_prefix}e{self._epoch}-{uuid.uuid4().hex[:12]}.{self.ext}.pending"
            self._part = self.new_part(os.path.join(self.dir, self._staged))
            self._pending_records = 0
        self._part.write(records)
        self._pending_records += len(records)

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        self._check()
        self._start()
        self._coordinated = True
        part, staged = self._part, self._staged
        if part is None or staged is None:
            return {"checkpoint": checkpoint_id, "staged": None, "final": None}
        try:
            part.seal()
            fsync_dir(self.dir)
        except BaseException as exc:
            # the epoch's records are in neither this transaction nor the next: only a
            # restart from the last checkpoint (which replays them) may go on
            self._broken = exc
            raise
        self._part = self._staged = None
        try:
            size = os.path.getsize(os.path.join(self.dir, staged))
        except FileNotFoundError:
            if self._fence is not None:
                self._fence()  # removed by the run that took the directory over: say so
            raise JobError(f"sink {self.step!r}: its staged file {staged} vanished from {self.dir!r} "
                           "(was the directory changed by another run or by hand?)") from None
        return {"checkpoint": checkpoint_id, "staged": staged, "final": self.final_name(checkpoint_id),
                "bytes": size, "crc32": _crc32(os.path.join(self.dir, staged))}

    def commit(self, transaction: Any) -> None:
        self._commit(transaction, verify=False)  # right after pre_commit, which summed the file

    def _commit(self, transaction: Any, *, verify: bool) -> None:
        if transaction is None or transaction.get("staged") is None:
            return
        staged, final = transaction["staged"], transaction["final"]
        if self._fence is not None:
            self._fence()  # raises if another run took the directory over
        if verify:
            self._verify(transaction)
        try:
            os.replace(os.path.join(self.dir, staged), os.path.join(self.dir, final))
        except FileNotFoundError:
            try:
                size = os.path.getsize(os.path.join(self.dir, final))
            except FileNotFoundError:
                size = None
            expected = transaction.get("bytes")
            if size is not None and (expected is None or size == expected):
                return  # committed before: commit is idempotent
            if size is not None:
                raise JobError(
                    f"sink {self.step!r} cannot commit checkpoint {transaction.get('checkpoint')}: its staged file "
                    f"{staged} is gone and {final} in {self.dir!r} is not its output ({size} bytes, expected "
                    f"{expected}): did another run write to this directory?"
                ) from None
            raise JobError(
                f"sink {self.step!r} cannot commit checkpoint {transaction.get('checkpoint')}: neither its "
                f"staged file {staged} nor {final} is in {self.dir!r} (was the directory changed by hand?)"
            ) from None
        fsync_dir(self.dir)

    def recover(self, transactions: list[Any]) -> None:
        if self._part is not None:
            raise JobError(f"sink {self.step!r}: recover() must come before anything is written")
        self._coordinated = True
        os.makedirs(self.dir, exist_ok=True)
        for txn in transactions:
            self._commit(txn, verify=True)  # a file left between a crash and this resume may be damaged
        self._clean(committed_too=not transactions)
        self._started = True

    def _verify(self, transaction: Any) -> None:
        """A staged file about to be committed by a resume must be what its checkpoint sealed."""
        path = os.path.join(self.dir, transaction["staged"])
        expected_size, expected_crc = transaction.get("bytes"), transaction.get("crc32")
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            return  # committed before (or gone): the rename below tells which
        if (expected_size is not None and size != expected_size) or (
                expected_crc is not None and _crc32(path) != expected_crc):
            raise JobError(
                f"sink {self.step!r} cannot commit checkpoint {transaction.get('checkpoint')}: its staged file "
                f"{transaction['staged']} in {self.dir!r} is damaged ({size} bytes and a crc32 unlike what the "
                f"checkpoint sealed: {expected_size} bytes): committing it would lose or corrupt that "
                "checkpoint's output, which no replay from this checkpoint can produce again. Fix: put the "
                "file back from a backup if there is one; otherwise that output is lost: start over with a "
                "new checkpoint directory and a new output directory")

    def flush(self) -> None:
        """Nothing to do: staged output stays invisible until a checkpoint commits it."""

    def begin(self, *, checkpointed: bool) -> None:
        self._checkpointed = checkpointed

    def close(self) -> None:
        part = self._part
        if self._checkpointed and not self._coordinated:
            # the job failed before recover(): committed and pending output stay for the next start
            if part is not None:
                self._part = self._staged = None
                part.discard()
            return
        if part is None:
            if not self._coordinated and self._broken is None:
                self._start()  # a run without checkpoints that wrote nothing: an empty output
            return
        if self._coordinated or self._broken is not None:
            self._part = self._staged = None
            if self._pending_records:
                log.info("sink %r: %d records written after the last checkpoint are discarded "
                         "(a restart from that checkpoint writes them again)", self.step, self._pending_records)
            part.discard()
            return
        self.commit(self.pre_commit(0))

    # -- helpers -------------------------------------------------------------------------
    def _check(self) -> None:
        if self._broken is not None:
            raise JobError(f"sink {self.step!r} failed to seal its staged output ({self._broken}); "
                           "the job must restart from its last checkpoint")

    def _start(self) -> None:
        """On the first write or checkpoint of a run that did not recover: start from an empty output."""
        if self._started:
            return
        os.makedirs(self.dir, exist_ok=True)
        self._clean(committed_too=True)
        self._started = True

    def _clean(self, *, committed_too: bool) -> None:
        removed = False
        for name in os.listdir(self.dir):
            if self._own_staged(name) or (committed_too and self._own_final(name)):
                try:
                    os.unlink(os.path.join(self.dir, name))
                except FileNotFoundError:
                    continue
                removed = True
        if removed:
            fsync_dir(self.dir)


# -- reading what was committed ----------------------------------------------------------------


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def committed_files(directory: str, fmt: str) -> list[str]:
    """The committed files of ``fmt`` in ``directory``, in name order (hidden and ``_`` files left out)."""
    names = sorted(n for n in os.listdir(directory)
                   if not n.startswith((".", "_")) and format_of(n) == fmt
                   and os.path.isfile(os.path.join(directory, n)))
    return [os.path.join(directory, n) for n in names]


def read_committed(directory: str | os.PathLike[str], *, format: str | None = None) -> list[Any]:
    """Every record a downstream reader sees in ``directory`` now: the committed part
    files (names starting with neither ``.`` nor ``_``) read in name order, which is
    commit order. Meant for tests and output checks; a flow reads the same files
    with ``files.read(directory)``.
    """
    from millstream._clock import SystemClock
    from millstream.connectors._files_read import read

    d = check_path(directory)
    if not os.path.isdir(d):
        raise ConfigError(f"read_committed reads a directory, and {d!r} is not one")
    fmt = check_format(format) if format is not None else format_of(d)
    if fmt is None:
        found = {f for n in os.listdir(d) if not n.startswith((".", "_")) for f in (format_of(n),) if f}
        if not found:
            return []
        if len(found) > 1:
            raise ConfigError(f"cannot tell which files of {d!r} to read; pass format=")
        fmt = found.pop()
    out: list[Any] = []
    for path in committed_files(d, fmt):
        reader = read(path, format=fmt).open(SourceContext(step="read_committed", clock=SystemClock(),
                                                           policy="fail"))
        try:
            while (chunk := reader.poll(65_536)) is not None:
                out.extend(chunk)
        finally:
            reader.close()
    return out
