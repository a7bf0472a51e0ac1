"""Real-world video through the whole pipeline: rotation, damage, truncation, timestamp jumps, --duration.

Each input is built here (PyAV), each value checked against an independent reading
(OpenCV, PyAV), and every run's ledger balances with every seq exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from pipeline.api import run
from pipeline.config import build_config
from pipeline.summary import RunSummary
from stages.decode import VideoDecoder
from stages.preprocess import Preprocess, i420_to_rgb
from stages.types import Frame
from tests.clips import block_clip, make_clip, overwrite_packet, red_box, remux, truncate
from tests.models import build_yolov8_model
from tests.sinks import CollectSink

NO_HURRY_MS = 60_000


def run_collect(config: dict[str, Any]) -> tuple[RunSummary, CollectSink]:
    sink = CollectSink()
    summary = run(build_config({"progress": False, "deadline_ms": NO_HURRY_MS, **config}), sinks=[sink])
    for name, ledger in summary.sources.items():
        assert ledger.balanced, name
        assert sink.seqs(name) == list(range(ledger.decoded)), name
    return summary, sink


def opencv_upright(path: Path) -> np.ndarray:
    """The first frame as OpenCV displays it (it applies the display matrix itself), RGB."""
    capture = cv2.VideoCapture(str(path))
    ok, image = capture.read()
    capture.release()
    assert ok
    return image[..., ::-1]


# ---- rotation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rotate, displayed", [(90, (240, 40, 300, 140)), (270, (60, 500, 120, 600)), (180, (500, 240, 600, 300))]
)
def test_rotated_video_is_decoded_as_displayed(tmp_path: Path, rotate: int, displayed: tuple) -> None:
    """`rotate=90` (clockwise, as `ffmpeg -metadata:s:v:0 rotate=90` writes it) on a 640x360 clip
    with a red block at coded [40,60,140,120] displays it at [240,40,300,140] of a 360x640
    picture; the block's place is checked against OpenCV's own upright reading."""
    clip = block_clip(tmp_path / f"r{rotate}.mp4", rotate)
    upright = opencv_upright(clip)
    assert red_box(upright) == pytest.approx(displayed, abs=2)
    frames = [f for f in VideoDecoder("cam", str(clip), 1.0) if isinstance(f, Frame)]
    assert len(frames) == 3
    height, width = upright.shape[:2]
    assert frames[0].source_size == (width, height)
    assert frames[0].image.shape == (height * 3 // 2, width)  # I420 planes, turned upright
    image = i420_to_rgb(frames[0].image, frames[0].source_size)
    assert image.shape == upright.shape
    assert red_box(image) == pytest.approx(red_box(upright), abs=2)
    # Shrunk to fit a model input, the picture stays upright and whole.
    small = Preprocess((320, 320))(frames[0]).tensor
    box = frames[0].letterbox
    expected = [v * 320 / max(width, height) + pad for v, pad in zip(red_box(upright), (box.pad_x, box.pad_y) * 2)]
    assert red_box(small) == pytest.approx(expected, abs=2)


def test_rotated_video_boxes_in_displayed_pixels_and_annotated_video_upright(tmp_path: Path) -> None:
    clip = block_clip(tmp_path / "portrait.mp4", 90)
    # Displayed 360x640 in a 320x320 input: ratio 0.5, content 180x320, pad_x 70. The model
    # finds the block where the upright picture has it: [240,40,300,140] -> [190,20,220,70].
    model = build_yolov8_model(tmp_path / "m.onnx", boxes=[(2, 0.9, 190, 20, 220, 70)])
    out = tmp_path / "annotated.mp4"
    summary, sink = run_collect(
        {"sources": [{"url": str(clip), "name": "cam"}], "model": {"path": str(model)}, "outputs": {"video": str(out)}}
    )
    assert summary.sources["cam"].ok == 3
    for result in sink.results:
        assert result.detections.xyxy.tolist() == [pytest.approx([240, 40, 300, 140], abs=0.5)]
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (360, 640)
        image = frame.to_ndarray(format="rgb24")
    # Below the status line drawn across the top: the block upright where OpenCV shows it.
    x1, y1, x2, y2 = red_box(image[70:])
    assert (x1, y1 + 70, x2, y2 + 70) == pytest.approx((240, 70, 300, 140), abs=3)


# ---- flushing and damage -------------------------------------------------------------------


def test_damage_near_the_end_loses_only_the_damaged_frame(tmp_path: Path) -> None:
    """Packet 98 of 100 overwritten: PyAV decodes 99 frames when it goes on past the error."""
    clip = overwrite_packet(make_clip(tmp_path / "c.mp4", frames=100), tmp_path / "d.mp4", 98, seed=1)
    with av.open(str(clip)) as container:
        independent = 0
        for packet in container.demux(video=0):
            try:
                independent += len(packet.decode())
            except av.error.FFmpegError:
                continue
    assert independent == 99
    summary, sink = run_collect({"sources": [{"url": str(clip), "name": "cam"}]})
    assert summary.sources["cam"].decoded == 99 and summary.sources["cam"].ok == 99
    counts = [e.details for e in sink.events if e.type == "decode_error" and "lost" in e.details]
    assert counts == [{"error": "damaged: 1 of 100 packets gave no frame, 0 frames concealed",
                       "packets": 100, "frames": 99, "lost": 1, "concealed": 0}]  # fmt: skip
    assert summary.error is None


@pytest.mark.parametrize("suffix", ["mkv", "ts"])  # MP4: tests/stages/test_decode.py
def test_truncated_file_in_any_container_is_reported(tmp_path: Path, car_clip: Path, suffix: str) -> None:
    full = remux(car_clip, tmp_path / f"car.{suffix}")
    cut = truncate(full, tmp_path / f"cut.{suffix}", 0.5)
    with av.open(str(cut)) as container:
        readable = sum(1 for _ in container.decode(video=0))
    summary, sink = run_collect({"sources": [{"url": str(cut), "name": "cam"}]})
    assert summary.sources["cam"].decoded == readable
    truncated = [e for e in sink.events if e.details.get("error") == "truncated"]
    assert len(truncated) == 1 and truncated[0].fatal is True
    assert truncated[0].details["packets"] < 377
    assert summary.error and "truncated" in summary.error and str(cut) in summary.error
    # The whole file, remuxed the same way, is not.
    summary, sink = run_collect({"sources": [{"url": str(full), "name": "cam"}], "max_frames": None})
    assert summary.sources["cam"].decoded == 377 and summary.error is None
    assert not [e for e in sink.events if e.type == "decode_error"]


def test_truncated_ts_at_a_packet_boundary_is_reported(tmp_path: Path, car_clip: Path) -> None:
    """Cut on a 188-byte boundary: only the last frame's concealed damage shows the cut."""
    full = remux(car_clip, tmp_path / "car.ts")
    data = full.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2 // 188 * 188])
    summary, sink = run_collect({"sources": [{"url": str(cut), "name": "cam"}]})
    assert [e.details["error"] for e in sink.events if e.fatal] == ["truncated"]
    assert summary.sources["cam"].decoded > 100


# ---- timestamps, pacing and --duration -----------------------------------------------------


@pytest.fixture
def jumping_ts(tmp_path: Path) -> Path:
    """`cat a.ts b.ts`, b made with `-output_ts_offset 21000`: 100 frames, 4 s at 25 fps."""
    clip = make_clip(tmp_path / "a.mp4", frames=50, fps=25)
    a = remux(clip, tmp_path / "a.ts")
    b = remux(clip, tmp_path / "b.ts", ts_offset=21000)
    joined = tmp_path / "ab.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    return joined


def test_realtime_resets_its_clock_at_a_timestamp_jump(jumping_ts: Path) -> None:
    start = time.monotonic()
    summary, sink = run_collect({"sources": [{"url": str(jumping_ts), "name": "cam"}], "realtime": True})
    elapsed = time.monotonic() - start
    assert summary.sources["cam"].ok == 100
    jumps = [e for e in sink.events if e.type == "timestamp_jump"]
    assert len(jumps) == 1 and jumps[0].after_seq == 49 and jumps[0].details["jump_s"] > 20_000
    assert 3.0 < elapsed < 30  # paced (4 s of video), not paused for 5.8 hours


def test_realtime_paces_a_stream_without_timestamps_at_its_nominal_rate(tmp_path: Path) -> None:
    raw = remux(make_clip(tmp_path / "a.mp4", frames=50, fps=25), tmp_path / "a.h264", format="h264")
    with av.open(str(raw)) as container:
        assert {f.time for f in container.decode(video=0)} == {None}
    start = time.monotonic()
    summary, _ = run_collect({"sources": [{"url": str(raw), "name": "cam"}], "realtime": True})
    assert summary.sources["cam"].ok == 50
    assert time.monotonic() - start > 1.6  # 50 frames at 25 fps: 2 s; unpaced it takes a fraction


@pytest.mark.parametrize("realtime", [False, True])
def test_duration_is_seconds_of_video_for_a_file(car_clip: Path, realtime: bool) -> None:
    """--duration 2 on the 12.5 fps car clip: the frames of its first 2 s, paced or not."""
    sources = [{"url": str(car_clip), "name": "cam"}]
    summary, sink = run_collect({"sources": sources, "duration_s": 2.0, "realtime": realtime})
    assert summary.sources["cam"].decoded == 25
    assert [r.time_s for r in sink.results][-1] == pytest.approx(1.92)
    assert sink.events[-1].details["reason"] == "duration"
