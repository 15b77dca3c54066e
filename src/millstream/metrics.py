"""A running job's figures: the registry the runtime fills, and their Prometheus form.

>>> import millstream as ms
>>> from millstream.metrics import MetricsRegistry
>>> reg = MetricsRegistry()
>>> flow = ms.Flow("m")
>>> _ = flow.source(ms.connectors.memory.read([1, 2, 3])).map(lambda x: x * 2).sink(ms.connectors.memory.write())
>>> _ = flow.run(mode="native", metrics_registry=reg)
>>> reg.snapshot().records("collect", "in")
3

``flow.run(metrics="127.0.0.1:9464")`` (``millstream run job.py --metrics 9464``) serves the same
figures at ``/metrics`` in the Prometheus text format (:func:`prometheus_text`): per step (labels
``flow``, ``step``, ``worker``) ``millstream_records_in_total``, ``millstream_records_out_total``,
``millstream_busy_seconds_total``, ``millstream_backpressured_seconds_total``,
``millstream_idle_seconds_total`` (sources), ``millstream_watermark_seconds``,
``millstream_watermark_lag_seconds``, ``millstream_late_records_total``,
``millstream_skipped_records_total``, ``millstream_dead_lettered_records_total``,
``millstream_retries_total``, ``millstream_source_lag_records``, ``millstream_state_entries``,
``millstream_event_time_latency_seconds`` and ``millstream_ingestion_time_latency_seconds``
(summaries, sinks), ``millstream_step_figure{figure=...}``; per flow ``millstream_info``,
``millstream_up``, ``millstream_uptime_seconds``, ``millstream_restarts_total``,
``millstream_state_bytes``, ``millstream_checkpoints_completed_total``,
``millstream_checkpoint_last_id``, ``millstream_checkpoint_last_duration_seconds``,
``millstream_checkpoint_max_duration_seconds``, ``millstream_checkpoint_last_size_bytes``,
``millstream_checkpoint_last_alignment_seconds``, ``millstream_checkpoint_restored_id``.
"""

from __future__ import annotations

from millstream._metrics import CheckpointFigures, MetricsRegistry, MetricsSnapshot, StepMetrics, StepRates
from millstream._prometheus import TokenCheck
from millstream._prometheus import render as prometheus_text

__all__ = ["CheckpointFigures", "MetricsRegistry", "MetricsSnapshot", "StepMetrics", "StepRates", "TokenCheck",
           "prometheus_text"]
