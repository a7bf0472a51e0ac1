"""What a person sees while a run goes: progress bars for files, a status table for cameras."""

from __future__ import annotations

import time

from rich.console import Console

from pipeline.observability.report import RunDisplay
from stages.types import SourceEvent
from tests.redis_server import frame_result


def rendered(display: RunDisplay) -> str:
    console = Console(width=120, record=True, force_terminal=False)
    console.print(display._render())
    return console.export_text()


def test_files_get_a_progress_bar_and_live_sources_a_status_table() -> None:
    display = RunDisplay({"clip": 20}, ["gate", "dock"], Console(force_terminal=False))
    for seq in range(10):  # every 7th result failed (deadline)
        display.write_result(frame_result("clip", seq))
        display.write_result(frame_result("gate", seq))
    display.write_event(SourceEvent("dock", "outage_start", -1, time.time(), {"error": "stalled"}))

    text = rendered(display)

    assert "clip" in text and "10/20" in text and "fps" in text
    header, gate, dock = (line.split() for line in text.splitlines()[1:4])
    assert header == ["source", "state", "fps", "lag", "ok", "failed", "last", "failure", "outages"]
    assert gate[0:2] == ["gate", "live"] and gate[5:8] == ["9", "1", "deadline"] and gate[-1] == "0"
    assert dock[0:2] == ["dock", "outage"] and dock[-1] == "1"
