"""Annotated video: one output frame per input frame, at the source's size, rate and times,
failed frames still written and marked."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from engines.errors import ConfigError
from pipeline.api import run
from pipeline.config import build_config
from tests.clips import count_frames, frame_times

NO_HURRY_MS = 60_000


def video_facts(path: Path) -> tuple[int, int, object]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height, stream.average_rate


def left_edge_is_red(image: np.ndarray) -> bool:
    """The FAILED border: the middle of the left edge is red (RGB)."""
    r, g, b = (int(v) for v in image[image.shape[0] // 2, 1])
    return r > 180 and g < 80 and b < 80


def test_every_frame_is_written_failed_ones_marked(tmp_path: Path, car_clip: Path) -> None:
    video, out = tmp_path / "cars.mp4", tmp_path / "cars.jsonl"
    summary = run(build_config({
        "sources": [{"url": str(car_clip), "name": "cars"}],
        "faults": {"error_rate": 0.3, "seed": 11},
        "infer": {"max_attempts": 1},
        "deadline_ms": NO_HURRY_MS,
        "outputs": {"video": str(video), "jsonl": str(out)},
        "progress": False,
    }))  # fmt: skip

    failed = {r["seq"] for r in map(json.loads, out.read_text().splitlines()) if r.get("status") == "failed"}
    assert 0 < len(failed) < 377 and summary.balanced
    assert count_frames(video) == count_frames(car_clip) == 377
    assert video_facts(video) == video_facts(car_clip)
    assert frame_times(video) == frame_times(car_clip)
    with av.open(str(video)) as container:
        red = [left_edge_is_red(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert {seq for seq, marked in enumerate(red) if marked} == failed
    assert summary.outputs["video"] == {"path": str(video), "frames": 377}


def test_a_directory_gets_one_file_per_source_at_its_own_size(
    tmp_path: Path, odd_clip: Path, tiny_clip: Path
) -> None:
    videos = tmp_path / "annotated"
    run(build_config({
        "sources": [{"url": str(odd_clip), "name": "odd"}, {"url": str(tiny_clip), "name": "tiny"}],
        "deadline_ms": NO_HURRY_MS,
        "outputs": {"video": str(videos)},
        "progress": False,
    }))  # fmt: skip

    assert sorted(p.name for p in videos.iterdir()) == ["odd.mp4", "tiny.mp4"]
    assert count_frames(videos / "odd.mp4") == count_frames(odd_clip) == 31
    assert count_frames(videos / "tiny.mp4") == count_frames(tiny_clip) == 16
    assert video_facts(videos / "odd.mp4") == video_facts(odd_clip)  # 641x359 kept (4:4:4)


def test_packets_the_decoder_rejects_are_skipped_in_step(tmp_path: Path, corrupt_car_clip: Path) -> None:
    video = tmp_path / "corrupt.mp4"
    summary = run(build_config({
        "sources": [{"url": str(corrupt_car_clip), "name": "cars"}],
        "deadline_ms": NO_HURRY_MS,
        "outputs": {"video": str(video)},
        "progress": False,
    }))  # fmt: skip

    decoded = summary.sources["cars"].decoded
    assert decoded < 377
    assert count_frames(video) == decoded


def test_one_file_for_several_sources_is_a_config_error(tmp_path: Path, tiny_clip: Path) -> None:
    message = r"outputs.video = '.*out.mp4': one file cannot hold 2 sources; give a directory"
    with pytest.raises(ConfigError, match=message):
        build_config({
            "sources": [{"url": str(tiny_clip), "name": "a"}, {"url": str(tiny_clip), "name": "b"}],
            "outputs": {"video": str(tmp_path / "out.mp4")},
        })  # fmt: skip


def test_a_live_source_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="outputs.video: rtsp://127.0.0.1:9/stream1 is a live stream"):
        build_config({
            "sources": [{"url": "rtsp://127.0.0.1:9/stream1", "name": "gate"}],
            "outputs": {"video": str(tmp_path / "gate.mp4")},
        })  # fmt: skip
