"""What a person sees: a progress bar while files run, and the summary table at the end."""

from __future__ import annotations

import sys
import threading

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.summary import RunSummary
from pipeline.types import Result


class ProgressDisplay:
    """A rich progress bar per source; off when stdout is not a terminal."""

    def __init__(self, totals: dict[str, int | None], console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[fps]:>6.1f} fps"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._tasks = {name: self._progress.add_task(name, total=total, fps=0.0) for name, total in totals.items()}
        self._lock = threading.Lock()

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, result: Result) -> None:
        with self._lock:
            task_id = self._tasks[result.source]
            self._progress.advance(task_id)
            task = self._progress.tasks[task_id]
            self._progress.update(task_id, fps=task.speed or 0.0)


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    console = console or Console(file=sys.stdout)
    table = Table(title="vidpipe run", show_lines=False)
    for column in ("source", "decoded", "ok", "failed", "ledger"):
        table.add_column(column, justify="right" if column != "source" else "left")
    for name, book in summary.sources.items():
        failed = ", ".join(f"{r} {n}" for r, n in sorted(book.failed.items())) or "0"
        table.add_row(name, str(book.decoded), str(book.ok), failed, "balanced" if book.balanced else "UNBALANCED")
    console.print(table)
    inf = summary.inference
    failed = ", ".join(f"{r} {n}" for r, n in sorted(summary.failed.items())) or "none"
    lines = [
        f"frames {summary.frames}  ok {summary.ok}  failed: {failed}",
        f"{summary.fps:.1f} fps over {summary.elapsed_s:.1f} s  latency p50 {_ms(summary.latency_p50_ms)}  p99 {_ms(summary.latency_p99_ms)}",
        f"retries {inf.get('retries', 0)}  rebuilds {inf.get('rebuilds', 0)} (p50 {_ms(inf.get('rebuild_ms_p50'))}, "
        f"p99 {_ms(inf.get('rebuild_ms_p99'))})  recovery p50 {_ms(inf.get('recovery_ms_p50'))} "
        f"p99 {_ms(inf.get('recovery_ms_p99'))}  abandoned {inf.get('abandoned', 0)}  "
        f"deadline misses {inf.get('deadline_misses', 0)}  probe failures {inf.get('probe_failures', 0)}",
    ]
    for name, info in summary.outputs.items():
        lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    for line in lines:
        console.print(line, highlight=False)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
