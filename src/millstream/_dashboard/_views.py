"""What the dashboard shows, as plain JSON-ready values: the plan laid out as a graph, a metrics
snapshot, the run configuration with every secret redacted. Pure functions, no server."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from millstream.connectors._base import _SECRET_KEYS, redact_url

if TYPE_CHECKING:
    from millstream._metrics import MetricsSnapshot, StepMetrics
    from millstream._plan import Plan

__all__ = ["config_view", "graph_view", "redact_text", "snapshot_view"]

#: Latency quantiles shown per sink.
QUANTILES = (0.5, 0.95, 0.99)

_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_MORE_SECRET_KEYS = ("key", "token", "secret", "password", "credential", "auth")


def redact_text(text: str) -> str:
    """``text`` with the password and secret query options of every URL in it replaced by ``***``.

    >>> redact_text("reads redis://me:hunter2@cache:6379/0?password=x and more")
    'reads redis://me:***@cache:6379/0?password=*** and more'
    """
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def _secret_key(key: str) -> bool:
    k = key.lower()
    return any(s in k for s in _SECRET_KEYS) or any(k.endswith(s) or k.startswith(s) for s in _MORE_SECRET_KEYS)


def _redact_value(key: str, value: Any) -> Any:
    if _secret_key(key) and value not in (None, False, "", 0):
        return "***"
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(key, v) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return redact_text(str(value))


def config_view(config: Mapping[str, object]) -> dict[str, Any]:
    """The run configuration, JSON-ready, with secrets redacted again (the caller already should have).

    >>> config_view({"mode": "native", "checkpoint_key": "s3cr3t", "out": "kafka://u:pw@k:9092/t"})
    {'mode': 'native', 'checkpoint_key': '***', 'out': 'kafka://u:***@k:9092/t'}
    """
    return {str(k): _redact_value(str(k), v) for k, v in config.items()}


def graph_view(plan: Plan) -> dict[str, Any]:
    """The plan as nodes placed on a grid: ``depth`` (column: longest path from a source) and ``row``.

    Rows are ordered by the mean row of each node's inputs (one barycentre pass), so edges mostly
    run straight; the page draws the grid left to right.
    """
    depth: dict[int, int] = {}
    for n in plan.nodes:  # node ids are in topological order: inputs come first
        depth[n.id] = 1 + max((depth[i] for i in n.inputs), default=-1)
    columns: dict[int, list[int]] = {}
    for n in plan.nodes:
        columns.setdefault(depth[n.id], []).append(n.id)
    row: dict[int, float] = {}
    for d in sorted(columns):
        ids = columns[d]

        def weight(i: int) -> tuple[float, int]:
            ins = plan.node(i).inputs
            return (sum(row[j] for j in ins) / len(ins) if ins else float(i), i)

        for r, i in enumerate(sorted(ids, key=weight)):
            row[i] = float(r)
    nodes = []
    for n in plan.nodes:
        nodes.append({
            "id": n.id, "name": n.name, "kind": n.kind, "detail": redact_text(n.op.describe()),
            "inputs": list(n.inputs), "depth": depth[n.id], "row": int(row[n.id]),
            "location": n.location, "event_time": n.timestamped,
        })
    return {
        "flow": plan.flow,
        "nodes": nodes,
        "edges": [{"from": i, "to": n.id} for n in plan.nodes for i in n.inputs],
        "depth": max(depth.values(), default=0) + 1,
        "rows": max((len(c) for c in columns.values()), default=0),
    }


def _quantiles(values: tuple[float, ...]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    out = {}
    for q in QUANTILES:
        k = (len(ordered) - 1) * q
        lo = math.floor(k)
        hi = min(lo + 1, len(ordered) - 1)
        out[f"p{round(q * 100)}"] = ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
    return out


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _step_view(snap: MetricsSnapshot, s: StepMetrics) -> dict[str, Any]:
    r = snap.rates.get((s.worker, s.step))
    return {
        "worker": s.worker, "step": s.step, "kind": s.kind, "fused": list(s.fused), "role": s.role,
        "records_in": s.records_in, "records_out": s.records_out,
        "records_in_per_s": _finite(r.records_in_per_s) if r else None,
        "records_out_per_s": _finite(r.records_out_per_s) if r else None,
        #: 0..1 of each second: busy (near 1: the bottleneck), waiting on the steps downstream
        "busy": _finite(min(1.0, r.busy_per_s)) if r else None,
        "backpressured": _finite(min(1.0, r.backpressured_per_s)) if r else None,
        "busy_s": s.busy_s, "backpressured_s": s.backpressured_s, "idle_s": s.idle_s,
        "watermark_ms": s.watermark_ms,
        "watermark_lag_s": (snap.now_ms - s.watermark_ms) / 1000 if s.watermark_ms is not None else None,
        "ended": s.ended, "late": s.late, "skipped": s.skipped, "dead_lettered": s.dead_lettered,
        "bytes_in": s.bytes_in, "bytes_out": s.bytes_out, "state_entries": s.state_entries,
        "source_lag": s.source_lag, "retries": s.retries, "figures": dict(s.figures),
        "event_latency_s": _quantiles(s.event_latency_s),
        "ingestion_latency_s": _quantiles(s.ingestion_latency_s),
    }


def snapshot_view(snap: MetricsSnapshot) -> dict[str, Any]:
    """A metrics snapshot as JSON-ready values (what ``/api/metrics`` and each event carry)."""
    ck = snap.checkpoints
    checkpoints = None
    if ck is not None:
        checkpoints = {
            "completed": ck.completed, "last_id": ck.last_id, "last_duration_s": ck.last_duration_s,
            "max_duration_s": ck.max_duration_s, "last_size_bytes": ck.last_size_bytes,
            "last_alignment_s": ck.last_alignment_s, "restored_from": ck.restored_from,
            "history": [{"id": h.get("id"), "duration_s": float(h.get("ms", 0.0)) / 1000,
                         "size_bytes": h.get("bytes"), "finished": h.get("finished")} for h in ck.history],
        }
    return {
        "flow": snap.flow, "mode": snap.mode, "taken_at": snap.taken_at, "now_ms": snap.now_ms,
        "uptime_s": snap.uptime_s, "running": snap.running, "restarts": snap.restarts,
        "steps": [_step_view(snap, s) for s in snap.steps],
        "checkpoints": checkpoints, "state_bytes": snap.state_bytes,
        "totals": {k: snap.total(k) for k in ("late", "skipped", "dead_lettered", "retries")},
    }
