"""Checkpoints: an atomic, checksummed store, the coordinator, and failpoints for fault tests."""

from millstream._checkpoint._coordinator import CheckpointStats, Coordinator
from millstream._checkpoint._failpoints import failpoint
from millstream._checkpoint._store import CheckpointStore, LoadedCheckpoint

__all__ = ["CheckpointStats", "CheckpointStore", "Coordinator", "LoadedCheckpoint", "failpoint"]
