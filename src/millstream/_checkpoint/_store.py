"""A directory of checkpoints, each written atomically and verified by checksums.

Layout::

    CHECKPOINT_DIR/
      chk-00000007/          a complete checkpoint: MANIFEST.json + state.pkl
      chk-00000008/
      .tmp-chk-00000009/     one being written (never loaded; removed on the next start)
      positions.pkl          at-most-once only: how far the sources have read (a checksummed
                             JSON header line, then the pickle)
      positions-e<E>-w<W>.pkl  the same, of worker W of a job at parallelism > 1 (owner epoch E), and
      positions-e<E>-base.pkl  what that run started from (``millstream._parallel._checkpoints``)
      COMMITTED              the newest checkpoint whose output the sinks may have committed
                             (checksummed JSON): a resume from an older one is detected; written
                             (as 0) before the first checkpoint, so its loss is detected too
      ORIGIN                 a directory started from a savepoint: which one (checksummed JSON), so
                             that running the same command again resumes instead of refusing
      LOCK, OWNER            the run that owns the directory (see ``_owner.py``)
      SCOPE                  the directory's identity (random, written once): in the names of what
                             transactional sinks prepare outside it (PostgreSQL transaction ids)
      shared/                files of the keyed-state backend that several checkpoints may refer to
                             (incremental snapshots); each manifest lists those it needs

A checkpoint is written into a temporary directory (state file written, fsynced;
manifest written, fsynced), then renamed into place and the parent directory
fsynced. The manifest carries the size and SHA-256 of every file and a checksum
of itself; a checkpoint whose manifest or files do not check out is never loaded.
Files in ``shared/`` a checkpoint refers to are listed in its manifest (``"shared"``,
with size and SHA-256) and verified the same way; garbage collection removes the
shared files no retained checkpoint refers to.

With a key (``RunConfig.checkpoint_key``), the manifest, the positions file and the
COMMITTED record also carry an HMAC-SHA256 signature, verified before anything is
unpickled; without a valid one they are refused. The key itself is never written.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from typing import Any

from millstream._checkpoint._failpoints import failpoint
from millstream._checkpoint._owner import SCOPE, DirectoryOwner, write_atomically
from millstream._fs import writable_dir
from millstream.errors import CheckpointError

FORMAT = 1
_PREFIX = "chk-"
_TMP = ".tmp-"
SHARED = "shared"
POSITIONS = "positions.pkl"
COMMITTED = "COMMITTED"
ORIGIN = "ORIGIN"
MANIFEST = "MANIFEST.json"
#: a manifest key: COMMITTED existed when this checkpoint was made visible, so a directory holding it and no
#: COMMITTED lost that record (deleted, or restored without it) and cannot tell how far output was committed
_HAS_COMMITTED = "committed_record"
#: a manifest key: how many times read positions had been written when the checkpoint was taken
_POSITIONS_SEQ = "positions_seq"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class LoadedCheckpoint:
    id: int
    path: str
    manifest: dict[str, Any]
    state: dict[str, Any]

    @property
    def finished(self) -> bool:
        return bool(self.manifest.get("finished"))

    @property
    def savepoint(self) -> bool:
        return bool(self.manifest.get("savepoint"))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k not in ("checksum", "signature")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _sign(key: bytes, checksum: str) -> str:
    return hmac.new(key, checksum.encode(), hashlib.sha256).hexdigest()


def _signature_problem(key: bytes | None, doc: dict[str, Any], checksum: str) -> str | None:
    """Why ``doc`` (whose body has ``checksum``) fails the key's signature check, or None."""
    if key is None:
        return None
    sig = doc.get("signature")
    if not isinstance(sig, str):
        return ("is not signed, but a checkpoint key is set (written without the key, or altered); "
                "it is not loaded")
    if not hmac.compare_digest(sig, _sign(key, checksum)):
        return ("fails its signature check with the checkpoint key (written with another key, or altered); "
                "it is not loaded")
    return None


def _key_bytes(key: str | bytes | None) -> bytes | None:
    if key is None:
        return None
    out = key.encode() if isinstance(key, str) else bytes(key)
    if not out:
        raise CheckpointError("the checkpoint key is empty")
    return out


class CheckpointStore:
    """Checkpoints of one job in a local directory."""

    def __init__(self, root: str, *, job: str, retain: int = 3, key: str | bytes | None = None,
                 owner: DirectoryOwner | None = None, read_only: bool = False,
                 also: frozenset[str] = frozenset()) -> None:
        self.root = os.path.abspath(root)
        #: the job id this store writes; ``also``: older ids of the same flow it reads too
        self.job = job
        self.also = also
        self.retain = max(1, retain)
        self._key = _key_bytes(key)
        self.owner = owner
        self._positions_fd: int | None = None
        self._positions_size = 0
        #: the positions file this store writes (:meth:`write_positions`)
        self._positions_name = POSITIONS
        #: how many times read positions were written in this directory (the file says it too): a checkpoint
        #: records the count it was taken at, so a positions file older than the restored checkpoint is seen
        self._positions_seq = 0
        self._restored_positions_seq = 0
        if not read_only:
            writable_dir(self.root, what="the checkpoint directory", error=CheckpointError)

    def other(self, root: str, *, job: str | None = None) -> CheckpointStore:
        """Another directory's checkpoints (of this job, or of ``job``), read with the same key (never
        written)."""
        other = CheckpointStore(root, job=self.job if job is None else job, read_only=True,
                                also=self.also if job is None else frozenset())
        other._key = self._key
        return other

    def sibling(self, owner: DirectoryOwner | None = None) -> CheckpointStore:
        """A store of this directory that writes as this one does (its key; its owner, or ``owner``), with
        a count of positions writes of its own: for a positions file besides this store's."""
        twin = CheckpointStore(self.root, job=self.job, retain=self.retain, owner=owner or self.owner,
                               also=self.also)
        twin._key = self._key
        return twin

    def owns(self, job: Any) -> bool:
        """Whether ``job`` (a manifest's or a record's) is this store's flow: its id or an older one."""
        return job == self.job or job in self.also

    def job_of(self, root: str, ckpt_id: int) -> str:
        """The job id a checkpoint of another directory says it has (unverified: verify with it)."""
        manifest = self.other(root)._manifest_unverified(ckpt_id)
        job = manifest.get("job") if manifest is not None else None
        return job if isinstance(job, str) else self.job

    def close(self) -> None:
        fd, self._positions_fd = self._positions_fd, None
        if fd is not None:
            os.close(fd)

    def __repr__(self) -> str:
        return f"CheckpointStore({self.root!r}, job={self.job!r}, signed={self._key is not None})"

    @property
    def scope(self) -> str:
        """The directory's identity (``SCOPE``), once its owner is known ("" before, or without an owner)."""
        return self.owner.scope if self.owner is not None else ""

    def _other_scope(self, where: str, doc: dict[str, Any]) -> str | None:
        """Why ``doc`` (a manifest or a record's header) is not of this directory, or None."""
        theirs = doc.get("scope")
        if theirs is None or not self.scope or theirs == self.scope:
            return None  # written before scopes were recorded, or read without an owner
        return (f"{where} was written in another checkpoint directory (its scope is {theirs!r}, this one's "
                f"{SCOPE} is {self.scope!r}): copied from another run's directory? Another run's checkpoints do "
                "not match the output this directory's runs committed; it is not loaded")

    def check_owner(self) -> None:
        """Raise :class:`~millstream.errors.CheckpointOwnershipError` if another run took the directory over."""
        if self.owner is not None:
            self.owner.check()

    def _no_space(self, exc: OSError, what: str) -> CheckpointError:
        newest = max(self.ids(), default=None)
        kept = (f"the previous checkpoint ({newest}) is intact and a restart resumes from it"
                if newest is not None else "no earlier checkpoint exists")
        return CheckpointError(
            f"no space left on the device ({exc.strerror}) while writing {what} under {self.root!r}; {kept}.\n"
            "  fix: free space on that filesystem (or raise its quota): the checkpoint needs about the size of "
            "the job's state plus its pending output; then run the job again."
        )

    @property
    def shared_dir(self) -> str:
        """Where state backends put files that checkpoints share (created on first use)."""
        return os.path.join(self.root, SHARED)

    # -- listing ------------------------------------------------------------------------
    def ids(self) -> list[int]:
        out = []
        for name in os.listdir(self.root):
            if name.startswith(_PREFIX):
                try:
                    out.append(int(name[len(_PREFIX):]))
                except ValueError:
                    continue
        return sorted(out)

    def _dir(self, ckpt_id: int) -> str:
        return os.path.join(self.root, f"{_PREFIX}{ckpt_id:08d}")

    def path_of(self, ckpt_id: int) -> str:
        """The directory of checkpoint ``ckpt_id``."""
        return self._dir(ckpt_id)

    def _manifest_unverified(self, ckpt_id: int) -> dict[str, Any] | None:
        """A checkpoint's manifest as written, unchecked (None if unreadable): for housekeeping only."""
        try:
            with open(os.path.join(self._dir(ckpt_id), MANIFEST), "rb") as f:
                manifest = json.loads(f.read())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def newest_savepoint(self) -> int | None:
        """The id of the newest checkpoint whose manifest says it is a savepoint (unverified)."""
        for ckpt_id in reversed(self.ids()):
            manifest = self._manifest_unverified(ckpt_id)
            if manifest is not None and manifest.get("savepoint"):
                return ckpt_id
        return None

    # -- writing ------------------------------------------------------------------------
    def write(self, ckpt_id: int, state: dict[str, Any], *, finished: bool, meta: dict[str, Any],
              shared: dict[str, dict[str, Any]] | None = None) -> int:
        """Write checkpoint ``ckpt_id`` atomically. Returns its size in bytes.

        ``shared``: files in :attr:`shared_dir` the checkpoint needs (name -> size and sha256),
        already written and fsynced by their writer.
        """
        epoch = self.owner.epoch if self.owner is not None else 0
        tmp = os.path.join(self.root, f"{_TMP}{_PREFIX}{ckpt_id:08d}-e{epoch}")
        try:
            return self._write(ckpt_id, tmp, state, finished=finished, meta=meta, shared=shared)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in _NO_SPACE:
                raise self._no_space(exc, f"checkpoint {ckpt_id} ({tmp})") from None
            self.check_owner()  # a run that took the directory over removed what this one was writing
            raise

    def _write(self, ckpt_id: int, tmp: str, state: dict[str, Any], *, finished: bool, meta: dict[str, Any],
               shared: dict[str, dict[str, Any]] | None) -> int:
        final = self._dir(ckpt_id)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        state_path = os.path.join(tmp, "state.pkl")
        with open(state_path, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            failpoint("ckpt.mid_state")
            f.write(data[half:])
            f.flush()
            failpoint("ckpt.state_written")
            os.fsync(f.fileno())
        failpoint("ckpt.state_synced")
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "id": ckpt_id,
            "job": self.job,
            "created_ms": int(time.time() * 1000),
            "finished": finished,
            "files": {"state.pkl": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}},
            **meta,
        }
        if shared:
            _fsync_dir(self.shared_dir)
            manifest["shared"] = {name: {"size": f["size"], "sha256": f["sha256"]} for name, f in shared.items()}
        manifest[_HAS_COMMITTED] = True
        if self.scope:
            manifest["scope"] = self.scope
        if self._positions_seq:
            manifest[_POSITIONS_SEQ] = self._positions_seq
        text = self._sealed(manifest)
        with open(os.path.join(tmp, "MANIFEST.json"), "wb") as f:
            f.write(text[: len(text) // 2])
            failpoint("ckpt.mid_manifest")
            f.write(text[len(text) // 2:])
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        failpoint("ckpt.before_rename")
        self.check_owner()  # a run that another took over must not make its checkpoint visible
        self._ensure_committed()
        if os.path.exists(final):
            raise CheckpointError(f"checkpoint {ckpt_id} already exists in {self.root!r}: checkpoint ids must "
                                  "never be reused (was the directory changed by another run or by hand?)")
        os.rename(tmp, final)
        failpoint("ckpt.after_rename")
        _fsync_dir(self.root)
        return len(data) + len(text)

    def _sealed(self, manifest: dict[str, Any]) -> bytes:
        """``manifest`` with its checksum (and signature, with a key), as the bytes written."""
        manifest["checksum"] = _manifest_checksum(manifest)
        if self._key is not None:
            manifest["signature"] = _sign(self._key, manifest["checksum"])
        return json.dumps(manifest, sort_keys=True, indent=1).encode()

    def gc(self) -> None:
        """Keep the newest ``retain`` complete checkpoints and the newest savepoint; remove older ones
        and leftovers."""
        self.check_owner()
        ids = self.ids()
        old = ids[: -self.retain]
        if old:
            keep = self.newest_savepoint()
            old = [i for i in old if i != keep]
        for ckpt_id in old:
            failpoint("ckpt.gc")
            shutil.rmtree(self._dir(ckpt_id), ignore_errors=True)
        for name in os.listdir(self.root):
            if name.startswith(_TMP):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        self._gc_shared()

    def _gc_shared(self) -> None:
        """Remove the shared files no remaining checkpoint refers to."""
        try:
            names = os.listdir(self.shared_dir)
        except FileNotFoundError:
            return
        keep: set[str] = set()
        for ckpt_id in self.ids():
            manifest = self._manifest_unverified(ckpt_id)
            if manifest is not None:  # a checkpoint without a readable manifest can never be loaded
                keep.update(manifest.get("shared", {}))
        for name in names:
            if name not in keep:
                failpoint("ckpt.gc")
                try:
                    os.remove(os.path.join(self.shared_dir, name))
                except OSError:
                    continue

    # -- reading ------------------------------------------------------------------------
    def verify(self, ckpt_id: int) -> tuple[dict[str, Any], bytes]:
        """The manifest and state bytes of a checkpoint; :class:`CheckpointError` if anything is off."""
        path = self._dir(ckpt_id)
        where = f"checkpoint {ckpt_id} ({path})"
        try:
            with open(os.path.join(path, "MANIFEST.json"), "rb") as f:
                manifest = json.loads(f.read())
        except FileNotFoundError:
            raise CheckpointError(f"{where} has no MANIFEST.json") from None
        except OSError as exc:  # not a directory, MANIFEST.json not a file, ...
            raise CheckpointError(f"{where}: MANIFEST.json cannot be read ({exc.strerror})") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{where}: MANIFEST.json is not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("checksum") != _manifest_checksum(manifest):
            raise CheckpointError(f"{where}: MANIFEST.json fails its checksum (torn or altered)")
        problem = _signature_problem(self._key, manifest, manifest["checksum"])
        if problem is not None:
            raise CheckpointError(f"{where}: MANIFEST.json {problem}")
        if manifest.get("format") != FORMAT:
            raise CheckpointError(f"{where}: unknown checkpoint format {manifest.get('format')!r}")
        if manifest.get("id") != ckpt_id:
            raise CheckpointError(f"{where}: manifest says it is checkpoint {manifest.get('id')!r}")
        problem = self._other_scope(f"{where}: MANIFEST.json", manifest)
        if problem is not None:
            raise CheckpointError(problem)
        if not self.owns(manifest.get("job")):
            raise CheckpointError(
                f"{where} belongs to another flow (or another version of this one: its steps, their state "
                "or its sources differ). Resume it with the flow that took it (in any execution mode), or "
                "use a new checkpoint directory."
            )
        info = manifest.get("files", {}).get("state.pkl") if isinstance(manifest.get("files"), dict) else None
        shared = manifest.get("shared", {})
        if not (isinstance(info, dict) and isinstance(info.get("size"), int) and isinstance(shared, dict)
                and all(isinstance(f, dict) and isinstance(f.get("size"), int) for f in shared.values())):
            raise CheckpointError(f"{where}: MANIFEST.json does not list its files as a checkpoint's does (altered?)")
        try:
            with open(os.path.join(path, "state.pkl"), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CheckpointError(f"{where}: state.pkl is missing") from None
        except OSError as exc:
            raise CheckpointError(f"{where}: state.pkl cannot be read ({exc.strerror})") from None
        if len(data) != info["size"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise CheckpointError(f"{where}: state.pkl fails its checksum (expected {info['size']} bytes)")
        for name, info in shared.items():
            self._verify_shared(where, name, info)
        return manifest, data

    def _verify_shared(self, where: str, name: str, info: dict[str, Any]) -> None:
        h = hashlib.sha256()
        size = 0
        try:
            with open(os.path.join(self.shared_dir, name), "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise CheckpointError(f"{where}: shared state file {name} is missing") from None
        except OSError as exc:
            raise CheckpointError(f"{where}: shared state file {name} cannot be read ({exc.strerror})") from None
        if size != info["size"] or h.hexdigest() != info["sha256"]:
            raise CheckpointError(f"{where}: shared state file {name} fails its checksum "
                                  f"(expected {info['size']} bytes)")

    def load(self, ckpt_id: int) -> LoadedCheckpoint:
        manifest, data = self.verify(ckpt_id)
        try:
            state = pickle.loads(data)  # noqa: S301 - our own checksummed file
        except Exception as exc:
            raise CheckpointError(f"checkpoint {ckpt_id}: state cannot be read back ({exc})") from exc
        seq = manifest.get(_POSITIONS_SEQ)
        self._restored_positions_seq = seq if isinstance(seq, int) else 0
        return LoadedCheckpoint(ckpt_id, self._dir(ckpt_id), manifest, state)

    # -- small checksummed records: at-most-once read positions, the committed mark ------------
    def _header(self, kind: str, payload: bytes, extra: dict[str, Any]) -> dict[str, Any]:
        head: dict[str, Any] = {"format": FORMAT, "kind": kind, "job": self.job, "size": len(payload),
                                "sha256": hashlib.sha256(payload).hexdigest(), **extra}
        if self.scope:
            head["scope"] = self.scope
        head["checksum"] = _manifest_checksum(head)
        if self._key is not None:
            head["signature"] = _sign(self._key, head["checksum"])
        return head

    def _read_record(self, name: str, kind: str) -> tuple[dict[str, Any], bytes] | None:
        """Header and payload of a record file, verified (None if missing); CheckpointError if damaged."""
        path = os.path.join(self.root, name)
        where = f"{name} in {self.root!r}"
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a directory in its place, no permission, ...
            raise CheckpointError(f"{where} cannot be read ({exc.strerror})") from None
        line, sep, payload = data.partition(b"\n")
        try:
            head = json.loads(line) if sep else None
        except (ValueError, UnicodeDecodeError):
            head = None
        if not isinstance(head, dict) or head.get("checksum") != _manifest_checksum(head) \
                or head.get("kind") != kind or head.get("format") != FORMAT or not isinstance(head.get("size"), int):
            raise CheckpointError(f"{where} is damaged (its header fails its checksum: torn or altered)")
        payload = payload[: head["size"]]  # a record rewritten in place may leave a longer one's tail
        problem = _signature_problem(self._key, head, head["checksum"])
        if problem is not None:
            raise CheckpointError(f"{where} {problem}")
        if len(payload) != head.get("size") or hashlib.sha256(payload).hexdigest() != head.get("sha256"):
            raise CheckpointError(f"{where} is damaged (fails its checksum: torn or altered)")
        if not self.owns(head.get("job")):
            raise CheckpointError(f"{where} belongs to another flow (or another version of this one)")
        problem = self._other_scope(where, head)
        if problem is not None:
            raise CheckpointError(problem)
        return head, payload

    def _write_record(self, name: str, kind: str, payload: bytes, extra: dict[str, Any]) -> None:
        head = self._header(kind, payload, extra)
        try:
            write_atomically(os.path.join(self.root, name), json.dumps(head, sort_keys=True).encode() + b"\n"
                             + payload)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise self._no_space(exc, name) from None
            path = os.path.join(self.root, name)
            raise CheckpointError(f"cannot write {name} in {self.root!r} ({exc.strerror}).\n  fix: if {path!r} is "
                                  "not a file (a directory in its place?), or not writable, put that right and run "
                                  "again") from None

    def write_positions(self, positions: dict[str, Any], name: str = POSITIONS) -> None:
        """At-most-once: record how far the sources have read (checksummed, durable, fenced).

        Called before every chunk is processed, so it is cheap: the file is created atomically,
        then rewritten in place with one ``pwrite`` (a process kill cannot tear it; a power loss
        that does is detected by the checksum) and one ``fdatasync``, no rename, no directory sync.
        ``name``: the file (a worker of a job at parallelism > 1 writes one of its own, named by the
        run's owner epoch and the worker: ``millstream._parallel._checkpoints``); one store writes one.
        """
        self.check_owner()
        if name != self._positions_name:
            self.close()
            self._positions_name = name
        payload = pickle.dumps(positions, protocol=pickle.HIGHEST_PROTOCOL)
        self._positions_seq += 1
        # the owner epoch of the run that wrote it: which of several positions files is the newest
        extra = {"seq": self._positions_seq, "epoch": self.owner.epoch if self.owner is not None else 0}
        fd = self._positions_fd
        if fd is None or not hasattr(os, "pwrite"):
            self._write_record(name, "positions", payload, extra)
            self._reopen_positions()
            return
        data = json.dumps(self._header("positions", payload, extra), sort_keys=True).encode() + b"\n" + payload
        if len(data) > self._positions_size:  # never extend in place: a short write must not tear it
            self._write_record(name, "positions", payload, extra)
            self._reopen_positions()
            return
        try:
            if os.pwrite(fd, data, 0) != len(data):
                raise OSError(errno.EIO, "short write")
            getattr(os, "fdatasync", os.fsync)(fd)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise self._no_space(exc, name) from None
            raise

    def _reopen_positions(self) -> None:
        self.close()
        if hasattr(os, "pwrite"):
            path = os.path.join(self.root, self._positions_name)
            self._positions_fd = os.open(path, os.O_WRONLY)
            self._positions_size = os.fstat(self._positions_fd).st_size

    def read_positions(self, name: str = POSITIONS) -> dict[str, Any] | None:
        """The recorded read positions, None if there are none; :class:`CheckpointError` if damaged.

        ``name``: another positions file than the one process's (a worker's, which counts its writes
        apart: its count is not compared with the restored checkpoint's)."""
        got = self.read_positions_of(name)
        return None if got is None else got[1]

    def read_positions_of(self, name: str = POSITIONS) -> tuple[int, dict[str, Any]] | None:
        """:meth:`read_positions` with the owner epoch of the run that wrote them (0: not recorded)."""
        rec = self._read_record(name, "positions")
        if rec is None:
            return None
        epoch = rec[0].get("epoch", 0)
        seq = rec[0].get("seq", 0)
        if name == POSITIONS:
            if not isinstance(seq, int) or seq < self._restored_positions_seq:
                raise CheckpointError(
                    f"{POSITIONS} in {self.root!r} is older than the checkpoint being restored (it was written "
                    "before that checkpoint was taken: restored from an older copy?), so it understates how far "
                    "the sources had read")
            self._positions_seq = max(self._positions_seq, seq)
        try:
            positions = pickle.loads(rec[1])  # noqa: S301 - checksummed (and signed with a key) above
        except Exception as exc:
            raise CheckpointError(f"{name} in {self.root!r} cannot be read back ({exc})") from exc
        if not isinstance(positions, dict):
            raise CheckpointError(f"{name} in {self.root!r} does not hold read positions")
        return (epoch if isinstance(epoch, int) else 0), positions

    def write_committed(self, ckpt_id: int) -> None:
        """Record that the sinks may commit the output of checkpoints up to ``ckpt_id`` (before they do)."""
        self._write_record(COMMITTED, "committed", b"", {"checkpoint": ckpt_id})

    def _ensure_committed(self) -> None:
        """Before the first checkpoint becomes visible: a COMMITTED record saying nothing is committed yet.

        From then on the directory always holds one, and its checkpoints say so (``committed_record`` in
        their manifests): a COMMITTED that goes missing later is detected, not read as "nothing committed"."""
        if not os.path.exists(os.path.join(self.root, COMMITTED)):
            self.write_committed(0)

    def read_committed(self) -> int:
        """The newest checkpoint whose output the sinks may have committed (0: none recorded).

        :class:`CheckpointError` if the record is damaged, or missing while a checkpoint made after it
        exists (the record was deleted: how far output was committed is unknown)."""
        rec = self._read_record(COMMITTED, "committed")
        if rec is None:
            witness = next((i for i in reversed(self.ids())
                            if (self._manifest_unverified(i) or {}).get(_HAS_COMMITTED)), None)
            if witness is not None:
                raise CheckpointError(
                    f"{COMMITTED} is missing from {self.root!r}, but checkpoint {witness} was taken while it existed "
                    f"(deleted, or the directory copied without it?): how far the sinks committed output is "
                    f"unknown (if you have the file, put it back)")
            return 0
        n = rec[0].get("checkpoint")
        if not isinstance(n, int):
            raise CheckpointError(f"{COMMITTED} in {self.root!r} is damaged (no checkpoint id)")
        return n

    # -- savepoints: a run started from one in another directory ------------------------------------
    def locate_savepoint(self, path: str) -> tuple[str, int]:
        """``(checkpoint directory, id)`` of the savepoint ``path`` names: a ``chk-*`` directory, or a
        checkpoint directory (its newest savepoint). :class:`CheckpointError` when there is none."""
        path = os.path.abspath(path)
        name = os.path.basename(path.rstrip(os.sep))
        if name.startswith(_PREFIX) and os.path.isdir(path):
            try:
                return os.path.dirname(path.rstrip(os.sep)), int(name[len(_PREFIX):])
            except ValueError:
                pass
        if not os.path.isdir(path):
            raise CheckpointError(f"savepoint {path!r} does not exist\n  fix: give the directory a stop with a "
                                  "savepoint printed (…/chk-NNNNNNNN), or the checkpoint directory that holds it")
        found = self.other(path).newest_savepoint()
        if found is None:
            raise CheckpointError(f"{path!r} holds no savepoint (a checkpoint whose manifest says savepoint)\n"
                                  "  fix: stop the job with a savepoint first (JobHandle.stop(), Ctrl-C in the CLI, "
                                  "the dashboard); to resume from a plain checkpoint, run with that checkpoint "
                                  "directory itself")
        return path, found

    def import_checkpoint(self, source: CheckpointStore, ckpt_id: int) -> None:
        """Copy checkpoint ``ckpt_id`` of ``source`` (another directory) here under the same id.

        Verified twice: the source by its checksums (and signature) before copying, the copy by
        reading it back whole. Written as a checkpoint is (temporary directory, fsyncs, rename), so
        a crash leaves either no copy or a whole one; its shared state files are copied first. The
        state is copied byte for byte; the manifest takes this store's job id (the flow may write
        to other outputs) and says where it came from (``"copied_from"``).
        """
        manifest, data = source.verify(ckpt_id)
        manifest = {k: v for k, v in manifest.items() if k not in ("checksum", "signature")}
        manifest["job"] = self.job
        manifest["copied_from"] = source.path_of(ckpt_id)
        manifest[_HAS_COMMITTED] = True
        manifest.pop(_POSITIONS_SEQ, None)  # the count of the directory it came from
        manifest.pop("scope", None)
        if self.scope:
            manifest["scope"] = self.scope
        final = self._dir(ckpt_id)
        if os.path.exists(final):
            raise CheckpointError(f"checkpoint {ckpt_id} already exists in {self.root!r}; not copied over")
        tmp = os.path.join(self.root, f"{_TMP}{_PREFIX}{ckpt_id:08d}-import")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            shared = manifest.get("shared", {})
            if shared:
                os.makedirs(self.shared_dir, exist_ok=True)
                for name in shared:
                    _copy_durably(os.path.join(source.shared_dir, name), os.path.join(self.shared_dir, name))
                _fsync_dir(self.shared_dir)
            for name, payload in (("state.pkl", data), (MANIFEST, self._sealed(manifest))):
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            self.check_owner()
            self._ensure_committed()
            os.rename(tmp, final)
            _fsync_dir(self.root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in _NO_SPACE:
                raise self._no_space(exc, f"the copy of savepoint {ckpt_id}") from None
            raise CheckpointError(f"cannot copy checkpoint {ckpt_id} of {source.root!r} into {self.root!r}: "
                                  f"{exc}") from exc
        try:
            self.verify(ckpt_id)
        except CheckpointError:
            shutil.rmtree(final, ignore_errors=True)
            raise

    def write_origin(self, origin: dict[str, Any]) -> None:
        """Record which savepoint this directory was started from (before the copy of it is made)."""
        self._write_record(ORIGIN, "origin", b"", {"origin": origin})

    def read_origin(self) -> dict[str, Any] | None:
        """The savepoint this directory was started from (None: it was not)."""
        rec = self._read_record(ORIGIN, "origin")
        if rec is None:
            return None
        origin = rec[0].get("origin")
        if not isinstance(origin, dict):
            raise CheckpointError(f"{ORIGIN} in {self.root!r} is damaged (no origin)")
        return origin


def _copy_durably(src: str, dst: str) -> None:
    """Copy a file and fsync it (the caller verifies checksums after)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
