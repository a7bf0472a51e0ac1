"""The GIL switch interval a run sizes (pipeline/runtime/sizing.py) holds while it runs, and
Python's own comes back after."""

from __future__ import annotations

import sys

from pipeline.api import run
from pipeline.config import build_config
from pipeline.runtime.pipeline import RunHooks


def test_the_run_uses_its_switch_interval_and_restores_the_processs() -> None:
    before = sys.getswitchinterval()
    seen: set[float] = set()
    config = build_config({"max_frames": 20, "infer": {"switch_interval_ms": 1.5}})
    summary = run(config, hooks=RunHooks(on_result=lambda result: seen.add(sys.getswitchinterval())))
    assert summary.ok == summary.frames == 20
    assert seen == {0.0015} and summary.sizing["switch_interval_ms"] == 1.5
    assert sys.getswitchinterval() == before
