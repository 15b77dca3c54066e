"""Progress while a job runs, and the final summary.

Two ways to show progress, both used as ``on_progress``:

- :class:`LiveProgress`: a live table (rich) on an interactive terminal, redrawn in place.
- :class:`LogProgress`: one plain line every ``interval_s`` seconds, for a log file (a job under
  nohup, systemd or CI, where stderr is not a terminal)::

    2026-12-07T12:50:50Z millstream progress: q5 native 12.0s | read 120,345 (10,028/s) | written 1,234 |
    45.2% ETA 14s | watermark 2026-... | checkpoints 11 (last #11) | late 0 | skipped 0

Both show how far through its input the job is, and when it should be done, when every
source knows its input's size (:meth:`~millstream.connectors.SourceReader.progress`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from millstream._run import JobStatus, RunResult
from millstream._time import format_ms

#: seconds between two progress lines in a log, unless told otherwise (``--progress-interval``)
LOG_INTERVAL_S = 10.0


def format_seconds(s: float) -> str:
    """``42s``, ``3m05s``, ``2h01m``."""
    s = max(0, round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class _Eta:
    """Time left, from how fast the fraction done grew since the first figures of this run (a
    resumed run starts part of the way through, so the elapsed time since the start would mislead)."""

    def __init__(self) -> None:
        self.first: tuple[float, float] | None = None

    def __call__(self, st: JobStatus) -> str:
        f = st.fraction
        if f is None:
            return ""
        text = f"{f:.1%}"
        if self.first is None:
            self.first = (st.elapsed_s, f)
            return text
        t0, f0 = self.first
        if f >= 1.0:
            return text
        if f > f0 and st.elapsed_s > t0:
            text += f" ETA {format_seconds((1.0 - f) * (st.elapsed_s - t0) / (f - f0))}"
        return text


def _checkpoints(st: JobStatus) -> str:
    ck = st.checkpoints
    if ck is None:
        return ""
    last = f" (last #{ck.last_id})" if ck.last_id is not None else ""
    resumed = f", resumed from #{ck.restored_from}" if ck.restored_from is not None else ""
    return f"checkpoints {ck.completed}{last}{resumed}"


def status_table(st: JobStatus, *, title: str | None = None, eta: str = "") -> Table:
    t = Table(title=title or f"{st.flow} · {st.mode} · {st.elapsed_s:,.1f}s", title_justify="left", expand=False)
    t.add_column("step")
    t.add_column("kind")
    t.add_column("in", justify="right")
    t.add_column("out", justify="right")
    t.add_column("notes")
    for s in st.steps:
        name = " → ".join(s.fused) if len(s.fused) > 1 else s.name
        notes = ", ".join(f"{k} {v:,}" for k, v in s.extra.items() if v)
        t.add_row(name, s.kind, f"{s.records_in:,}", f"{s.records_out:,}", notes)
    done = f"{eta} · " if eta else ""
    t.caption = (f"{done}read {st.records_read:,} · {st.rate:,.0f}/s · written {st.records_written:,} · "
                 f"watermark {format_ms(st.watermark)}")
    ck = st.checkpoints
    if ck is not None:
        restored = f" · resumed from {ck.restored_from}" if ck.restored_from is not None else ""
        lost = f" · {ck.lost:,} lost to a crash" if ck.lost else ""
        t.caption += (f"\n{st.guarantee}: {ck.completed} checkpoints · last #{ck.last_id} "
                      f"{ck.last_size_bytes:,} B in {ck.last_duration_ms:.1f} ms (max {ck.max_duration_ms:.1f} ms)"
                      f" · alignment {ck.alignment_ms:.0f} ms{restored}{lost}")
    return t


class LiveProgress:
    """Shows a job's figures in a live table while it runs (an interactive terminal); use as
    ``on_progress``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        self.eta = _Eta()

    def __call__(self, st: JobStatus) -> None:
        table = status_table(st, eta=self.eta(st))
        if self.live is None:
            self.live = Live(table, console=self.console, refresh_per_second=4, transient=True)
            self.live.start()
        else:
            self.live.update(table)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class LogProgress:
    """Writes one plain line of a job's figures to ``stream`` every ``interval_s`` seconds (called more
    often, it skips); use as ``on_progress`` where the output is a log rather than a terminal."""

    def __init__(self, stream: TextIO, interval_s: float = LOG_INTERVAL_S) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self.eta = _Eta()
        self.last: tuple[float, int] | None = None  # (elapsed, records read) at the last line
        self.next_at = 0.0

    def __call__(self, st: JobStatus) -> None:
        eta = self.eta(st)  # sees every status, so its first figures are the run's first
        if st.elapsed_s < self.next_at:
            return
        self.next_at = st.elapsed_s + self.interval_s
        self.stream.write(self.line(st, eta) + "\n")
        self.stream.flush()

    def line(self, st: JobStatus, eta: str = "") -> str:
        # the rate since the previous line (since the start for the first): what the job does now
        t0, n0 = self.last or (0.0, 0)
        dt = st.elapsed_s - t0
        rate = (st.records_read - n0) / dt if dt > 0 else 0.0
        self.last = (st.elapsed_s, st.records_read)
        parts = [f"{st.flow} {st.mode} {st.elapsed_s:,.1f}s",
                 f"read {st.records_read:,} ({rate:,.0f}/s)", f"written {st.records_written:,}"]
        if eta:
            parts.append(eta)
        parts.append(f"watermark {format_ms(st.watermark)}")
        if st.checkpoints is not None:
            parts.append(_checkpoints(st))
        parts += [f"late {st.total('late'):,}", f"skipped {st.total('skipped'):,}"]
        dead = st.total("dead_lettered")
        if dead:
            parts.append(f"dead-lettered {dead:,}")
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{stamp} millstream progress: " + " | ".join(parts)


def print_summary(console: Console, result: RunResult) -> None:
    verdict = "interrupted" if result.interrupted else "finished"
    console.print(status_table(result, title=f"{result.flow} · {result.mode} · {verdict} in {result.elapsed_s:,.2f}s"))


def resume_hint(result_interrupted: bool, checkpoint_dir: str | None, last_id: int | None) -> str | None:
    """What to tell a user whose run was interrupted: how to go on from where it stopped."""
    if not result_interrupted:
        return None
    if checkpoint_dir is None:
        return "interrupted; without --checkpoint-dir a new run starts from the beginning"
    at = (f"from checkpoint #{last_id}" if last_id is not None
          else "(no checkpoint was complete yet, so from the beginning)")
    return f"interrupted; run the same command again to resume {at} in {checkpoint_dir}"
