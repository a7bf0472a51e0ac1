"""Memory bounded by design (issue 18, 4): peak RSS does not grow with the video's length."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.clips import count_frames, loop_clip

# One run in its own process, so its peak RSS (ru_maxrss, KiB on Linux) is its own.
RUN = """
import json, resource, sys
from pipeline.api import run
from pipeline.config import build_config
summary = run(build_config({"sources": [{"url": sys.argv[1], "name": "cam"}], "infer": {"max_batch": 1}}))
print(json.dumps({"ok": summary.ok, "balanced": summary.balanced,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak_rss(clip: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN, str(clip)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_peak_rss_is_flat_with_video_length(car_clip: Path, tmp_path: Path) -> None:
    laps = 6
    long_clip = loop_clip(car_clip, tmp_path / "car-x6.mp4", laps)
    frames = count_frames(car_clip)
    assert count_frames(long_clip) == laps * frames
    short, long = peak_rss(car_clip), peak_rss(long_clip)
    assert (short["ok"], long["ok"]) == (frames, laps * frames) and short["balanced"] and long["balanced"]
    # Frames live in bounded queues and buffers are reused: six times the video, same peak.
    assert long["peak_kib"] <= 1.10 * short["peak_kib"], (short, long)


def test_a_finished_run_leaves_none_of_its_parts_behind(car_clip: Path) -> None:
    """A notebook runs pipeline.run again and again: each run's pipeline, pool and engine must
    be gone when it returns, not left in reference cycles for Python's next collection (on
    the H200 they held 200 MB)."""
    import gc

    from pipeline.api import run
    from pipeline.config import build_config

    gc.disable()  # only run() itself may collect: a collection in between would hide the cycles
    try:
        summary = run(build_config({"sources": [{"url": str(car_clip), "name": "cam"}], "max_frames": 40}))
        kinds = ("Pipeline", "ContextPool", "InferScheduler", "OnnxRuntimeEngine", "OnnxRuntimeContext")
        left = [type(o).__name__ for o in gc.get_objects() if type(o).__name__ in kinds]
    finally:
        gc.enable()
    assert summary.ok == 40 and left == []
