"""Live progress in the terminal (rich), and the final summary."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from millstream._run import JobStatus, RunResult
from millstream._time import format_ms


def status_table(st: JobStatus, *, title: str | None = None) -> Table:
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
    t.caption = (f"read {st.records_read:,} · {st.rate:,.0f}/s · written {st.records_written:,} · "
                 f"watermark {format_ms(st.watermark)}")
    ck = getattr(st, "checkpoints", None)
    if ck is not None:
        restored = f" · resumed from {ck.restored_from}" if ck.restored_from is not None else ""
        lost = f" · {ck.lost:,} lost to a crash" if ck.lost else ""
        t.caption += (f"\n{st.guarantee}: {ck.completed} checkpoints · last #{ck.last_id} "  # type: ignore[attr-defined]
                      f"{ck.last_size_bytes:,} B in {ck.last_duration_ms:.1f} ms (max {ck.max_duration_ms:.1f} ms)"
                      f" · alignment {ck.alignment_ms:.0f} ms{restored}{lost}")
    return t


class LiveProgress:
    """Shows a job's figures while it runs; use as ``on_progress``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None

    def __call__(self, st: JobStatus) -> None:
        table = status_table(st)
        if self.live is None:
            self.live = Live(table, console=self.console, refresh_per_second=4, transient=True)
            self.live.start()
        else:
            self.live.update(table)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def print_summary(console: Console, result: RunResult) -> None:
    verdict = "interrupted" if result.interrupted else "finished"
    console.print(status_table(result, title=f"{result.flow} · {result.mode} · {verdict} in {result.elapsed_s:,.2f}s"))
