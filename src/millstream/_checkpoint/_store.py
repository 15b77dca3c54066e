"""A directory of checkpoints, each written atomically and verified by checksums.

Layout::

    CHECKPOINT_DIR/
      chk-00000007/          a complete checkpoint: MANIFEST.json + state.pkl
      chk-00000008/
      .tmp-chk-00000009/     one being written (never loaded; removed on the next start)
      positions.pkl          at-most-once only: how far the sources have read
      shared/                files of the keyed-state backend that several checkpoints may refer to
                             (incremental snapshots); each manifest lists those it needs

A checkpoint is written into a temporary directory (state file written, fsynced;
manifest written, fsynced), then renamed into place and the parent directory
fsynced. The manifest carries the size and SHA-256 of every file and a checksum
of itself; a checkpoint whose manifest or files do not check out is never loaded.
Files in ``shared/`` a checkpoint refers to are listed in its manifest (``"shared"``,
with size and SHA-256) and verified the same way; garbage collection removes the
shared files no retained checkpoint refers to.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from typing import Any

from millstream._checkpoint._failpoints import failpoint
from millstream.errors import CheckpointError

FORMAT = 1
_PREFIX = "chk-"
_TMP = ".tmp-"
SHARED = "shared"


@dataclass(frozen=True)
class LoadedCheckpoint:
    id: int
    path: str
    manifest: dict[str, Any]
    state: dict[str, Any]

    @property
    def finished(self) -> bool:
        return bool(self.manifest.get("finished"))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class CheckpointStore:
    """Checkpoints of one job in a local directory."""

    def __init__(self, root: str, *, job: str, retain: int = 3) -> None:
        self.root = os.path.abspath(root)
        self.job = job
        self.retain = max(1, retain)
        os.makedirs(self.root, exist_ok=True)

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

    # -- writing ------------------------------------------------------------------------
    def write(self, ckpt_id: int, state: dict[str, Any], *, finished: bool, meta: dict[str, Any],
              shared: dict[str, dict[str, Any]] | None = None) -> int:
        """Write checkpoint ``ckpt_id`` atomically. Returns its size in bytes.

        ``shared``: files in :attr:`shared_dir` the checkpoint needs (name -> size and sha256),
        already written and fsynced by their writer.
        """
        final = self._dir(ckpt_id)
        tmp = os.path.join(self.root, f"{_TMP}{_PREFIX}{ckpt_id:08d}")
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
        manifest["checksum"] = _manifest_checksum(manifest)
        text = json.dumps(manifest, sort_keys=True, indent=1).encode()
        with open(os.path.join(tmp, "MANIFEST.json"), "wb") as f:
            f.write(text[: len(text) // 2])
            failpoint("ckpt.mid_manifest")
            f.write(text[len(text) // 2:])
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        failpoint("ckpt.before_rename")
        os.rename(tmp, final)
        failpoint("ckpt.after_rename")
        _fsync_dir(self.root)
        return len(data) + len(text)

    def gc(self) -> None:
        """Keep the newest ``retain`` complete checkpoints; remove older ones and leftovers."""
        ids = self.ids()
        for old in ids[: -self.retain]:
            failpoint("ckpt.gc")
            shutil.rmtree(self._dir(old), ignore_errors=True)
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
            try:
                with open(os.path.join(self._dir(ckpt_id), "MANIFEST.json"), "rb") as f:
                    manifest = json.loads(f.read())
            except (OSError, ValueError):
                continue  # a checkpoint without a readable manifest can never be loaded
            if isinstance(manifest, dict):
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
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{where}: MANIFEST.json is not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("checksum") != _manifest_checksum(manifest):
            raise CheckpointError(f"{where}: MANIFEST.json fails its checksum (torn or altered)")
        if manifest.get("format") != FORMAT:
            raise CheckpointError(f"{where}: unknown checkpoint format {manifest.get('format')!r}")
        if manifest.get("id") != ckpt_id:
            raise CheckpointError(f"{where}: manifest says it is checkpoint {manifest.get('id')!r}")
        if manifest.get("job") != self.job:
            raise CheckpointError(
                f"{where} belongs to another flow (or another version of this one, or was taken in "
                "another execution mode: native and micro-batch/batch keep state differently). "
                "Resume in the mode that took it, or use a new checkpoint directory."
            )
        info = manifest["files"]["state.pkl"]
        try:
            with open(os.path.join(path, "state.pkl"), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CheckpointError(f"{where}: state.pkl is missing") from None
        if len(data) != info["size"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise CheckpointError(f"{where}: state.pkl fails its checksum (expected {info['size']} bytes)")
        for name, info in manifest.get("shared", {}).items():
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
        if size != info["size"] or h.hexdigest() != info["sha256"]:
            raise CheckpointError(f"{where}: shared state file {name} fails its checksum "
                                  f"(expected {info['size']} bytes)")

    def load(self, ckpt_id: int) -> LoadedCheckpoint:
        manifest, data = self.verify(ckpt_id)
        try:
            state = pickle.loads(data)  # noqa: S301 - our own checksummed file
        except Exception as exc:
            raise CheckpointError(f"checkpoint {ckpt_id}: state cannot be read back ({exc})") from exc
        return LoadedCheckpoint(ckpt_id, self._dir(ckpt_id), manifest, state)

    # -- at-most-once read positions --------------------------------------------------
    def write_positions(self, positions: dict[str, Any]) -> None:
        path = os.path.join(self.root, "positions.pkl")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(pickle.dumps(positions, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, path)

    def read_positions(self) -> dict[str, Any] | None:
        path = os.path.join(self.root, "positions.pkl")
        try:
            with open(path, "rb") as f:
                return pickle.loads(f.read())  # type: ignore[no-any-return]  # noqa: S301
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - a torn positions file: fall back to the checkpoint's
            return None
