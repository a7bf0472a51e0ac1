"""`vidpipe bench`: bounded by --max-frames, interleaved repeats, fps of ok frames."""

from __future__ import annotations

from pathlib import Path

from pipeline.cli.bench import REPEATS, bench
from pipeline.config import build_config
from tests.cli_run import vidpipe


def test_bench_respects_max_frames_and_repeats_with_and_without_faults(car_clip: Path) -> None:
    config = build_config({"sources": [{"url": str(car_clip)}], "max_frames": 12, "progress": False})
    figures = bench(config, car_clip, {"error_rate": 0.3, "seed": 1})

    assert figures["frames per pipeline run"] == 12
    assert figures["pipeline runs"] == 2 * REPEATS
    assert figures["input width"] == 320
    for name in ("decode / raw decode", "with faults / without"):
        assert figures[f"{name} (min)"] <= figures[f"{name} (median)"] <= figures[f"{name} (max)"]
    # Retries within the default deadline save every frame here: ok and processed agree.
    assert 0 < figures["pipeline fps with faults (ok frames)"] <= figures["pipeline fps with faults (processed)"]
    assert figures["first result s"] > 0


def test_bench_command_prints_the_table(car_clip: Path) -> None:
    done = vidpipe("bench", str(car_clip), "--max-frames", "8", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "decode / raw decode (median)" in done.stdout
    assert "pipeline fps (ok frames)" in done.stdout
