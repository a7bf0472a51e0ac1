"""What a person sees: progress bars for files, a status table for live sources, the summary."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.summary import InferenceSnapshot, RunSummary
from stages.redact import redact
from stages.types import EventType, Result, SourceEvent, Status

FPS_WINDOW_S = 2.0


@dataclass
class _LiveStats:
    arrivals: deque[float] = field(default_factory=deque)
    ok: int = 0
    failed: int = 0
    last_reason: str = ""
    last_wall_time: float | None = None
    outages: int = 0
    connected: bool = True

    def fps(self, now: float) -> float:
        while self.arrivals and now - self.arrivals[0] > FPS_WINDOW_S:
            self.arrivals.popleft()
        return len(self.arrivals) / FPS_WINDOW_S


class RunDisplay:
    """A progress bar per file source (frames, fps, ETA) and a status table of live sources
    (fps, lag, failures, outages). It is a Sink: it sees results and events as published."""

    def __init__(self, files: dict[str, int | None], live: list[str], console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[fps]:>6.1f} fps"),
            TimeRemainingColumn(),
            console=console,
        )
        # Names and messages are shown as text, never read as rich markup ("[/x]" would end a style).
        self._tasks = {
            name: self._progress.add_task(escape(name), total=total, fps=0.0) for name, total in files.items()
        }
        self._stats = {name: _LiveStats() for name in live}
        self._lock = threading.Lock()
        self._live = Live(console=console, transient=True, refresh_per_second=4, get_renderable=self._render)

    def __enter__(self) -> RunDisplay:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def write_result(self, result: Result) -> None:
        with self._lock:
            if result.source in self._tasks:
                task_id = self._tasks[result.source]
                self._progress.advance(task_id)
                self._progress.update(task_id, fps=self._progress.tasks[task_id].speed or 0.0)
                return
            stats = self._stats[result.source]
            stats.arrivals.append(time.monotonic())
            stats.last_wall_time = result.wall_time
            if result.status is Status.OK:
                stats.ok += 1
            else:
                stats.failed += 1
                stats.last_reason = result.reason.value if result.reason else "unknown"

    def write_event(self, event: SourceEvent) -> None:
        with self._lock:
            stats = self._stats.get(event.source)
            if stats is None:
                return
            if event.type == EventType.OUTAGE_START:
                stats.outages += 1
                stats.connected = False
            elif event.type == EventType.OUTAGE_END:
                stats.connected = True

    def write_summary(self, summary: RunSummary) -> None:
        pass

    def close(self) -> None:
        pass

    def _render(self) -> Group:
        with self._lock:
            parts = [self._progress] if self._tasks else []
            if self._stats:
                parts.append(self._live_table())
            return Group(*parts)

    def _live_table(self) -> Table:
        table = Table(box=None, padding=(0, 2))
        for column in ("source", "state", "fps", "lag", "ok", "failed", "last failure", "outages"):
            table.add_column(column, justify="left" if column in ("source", "state", "last failure") else "right")
        now, wall = time.monotonic(), time.time()
        for name, s in self._stats.items():
            lag = f"{(wall - s.last_wall_time) * 1000:.0f} ms" if s.last_wall_time else "-"
            state = "[green]live[/]" if s.connected else "[red]outage[/]"
            table.add_row(escape(name), state, f"{s.fps(now):.1f}", lag, str(s.ok), str(s.failed),
                          escape(s.last_reason or "-"), str(s.outages))  # fmt: skip
        return table


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    console = console or Console(file=sys.stdout)
    table = Table(title="vidpipe run", show_lines=False)
    for column in ("source", "decoded", "ok", "failed", "ledger"):
        table.add_column(column, justify="right" if column != "source" else "left")
    for name, book in summary.sources.items():
        failed = ", ".join(f"{r} {n}" for r, n in sorted(book.failed.items())) or "0"
        table.add_row(escape(name), str(book.decoded), str(book.ok), escape(failed),
                      "balanced" if book.balanced else "UNBALANCED")  # fmt: skip
    console.print(table)
    failed = ", ".join(f"{r} {n}" for r, n in sorted(summary.failed.items())) or "none"
    lines = [
        f"frames {summary.frames}  ok {summary.ok}  failed: {failed}",
        f"{summary.fps:.1f} fps ok ({summary.processed_fps:.1f} processed) over {summary.elapsed_s:.1f} s  "
        f"first result after {_s(summary.first_result_s)}  "
        f"latency p50 {_ms(summary.latency_p50_ms)}  p99 {_ms(summary.latency_p99_ms)}",
        *_inference_lines(summary.inference),
    ]
    if summary.events:
        lines.append("source events: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.events.items())))
    if summary.interrupted:
        lines.append("interrupted: frames in flight were finished or reported as failed/shutdown")
    for name, info in summary.outputs.items():
        lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    for line in lines:
        console.print(redact(line), highlight=False, markup=False, soft_wrap=not console.is_terminal)


def _inference_lines(inference: InferenceSnapshot | None) -> list[str]:
    """Recovery figures of the scheduler; a run stopped before it started (None) shows 0 and -."""
    inf = inference or InferenceSnapshot()
    reload_total = inf.reload_ms_total if inference is not None else None
    restart_total = inf.worker_restart_ms_total if inference is not None else None
    return [
        f"retries {inf.retries}  rebuilds {inf.rebuilds} (p50 {_ms(inf.rebuild_ms_p50)}, "
        f"p99 {_ms(inf.rebuild_ms_p99)})  recovery p50 {_ms(inf.recovery_ms_p50)} "
        f"p99 {_ms(inf.recovery_ms_p99)}  abandoned {inf.abandoned}  "
        f"deadline misses {inf.deadline_misses}  probe failures {inf.probe_failures}"
        f"{f'  suspect results {inf.suspect_frames}' if inf.suspect_frames else ''}",
        f"engine reloads {inf.engine_reloads} ({_ms(reload_total)} in all)  "
        f"worker restarts {inf.worker_restarts} (p50 {_ms(inf.worker_restart_ms_p50)}, "
        f"p99 {_ms(inf.worker_restart_ms_p99)}, {_ms(restart_total)} in all)",
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"
