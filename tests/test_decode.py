"""Decode: real files through PyAV into Frames, checked against PyAV's own reading."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.types import Frame, SourceEvent
from stages.decode import VideoDecoder
from stages.errors import SourceError
from tests.clips import count_frames, frame_times, video_packets
from tests.conftest import VFR_FPS, VFR_STEPS

DEADLINE_S = 2.0
FIT_TO = (320, 320)


def decode(
    path: Path, fit_to: tuple[int, int] | None = FIT_TO
) -> tuple[list[Frame], list[SourceEvent]]:
    frames, events = [], []
    for item in VideoDecoder("cam", str(path), DEADLINE_S, fit_to=fit_to):
        (frames if isinstance(item, Frame) else events).append(item)
    return frames, events


def pyav_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


@pytest.mark.parametrize(
    "clip, source_size, image_size",
    [
        ("car_clip", (768, 432), (320, 180)),
        ("person_clip", (768, 432), (320, 180)),
        ("odd_clip", (641, 359), (320, 179)),
        ("vfr_clip", (320, 240), (320, 240)),
        ("tiny_clip", (320, 240), (320, 240)),
    ],
)
def test_every_frame_decoded_in_order(
    request: pytest.FixtureRequest,
    clip: str,
    source_size: tuple[int, int],
    image_size: tuple[int, int],
) -> None:
    path = request.getfixturevalue(clip)
    frames, events = decode(path)

    assert events == []
    assert len(frames) == count_frames(path)
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert {f.source for f in frames} == {"cam"}
    assert [f.pts for f in frames] == frame_times(path)
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))
    assert all(f.deadline == f.decoded_at + DEADLINE_S for f in frames)
    assert all(b.decoded_at >= a.decoded_at for a, b in zip(frames, frames[1:]))
    assert pyav_size(path) == source_size
    assert {f.source_size for f in frames} == {source_size}
    width, height = image_size
    assert {f.image.shape for f in frames} == {(height, width, 3)}
    assert {f.image.dtype for f in frames} == {np.dtype(np.uint8)}


def test_vfr_clip_keeps_its_uneven_timestamps(vfr_clip: Path) -> None:
    frames, _ = decode(vfr_clip)
    steps = [VFR_STEPS[i % len(VFR_STEPS)] / (VFR_FPS * 100) for i in range(len(frames) - 1)]
    np.testing.assert_allclose([f.pts for f in frames], np.cumsum([0.0, *steps]), atol=1e-3)


def test_full_size_frames_are_pyav_rgb(tiny_clip: Path) -> None:
    frames, _ = decode(tiny_clip, fit_to=None)
    with av.open(str(tiny_clip)) as container:
        expected = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == len(expected)
    for frame, image in zip(frames, expected):
        np.testing.assert_array_equal(frame.image, image)


@pytest.mark.parametrize("clip, fit_to", [("tiny_clip", None), ("odd_clip", FIT_TO)])
def test_channels_are_rgb(
    request: pytest.FixtureRequest, clip: str, fit_to: tuple[int, int] | None
) -> None:
    """make_clip paints red rising left to right, green rising top to bottom, blue flat."""
    image = decode(request.getfixturevalue(clip), fit_to)[0][0].image.astype(np.float32)
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    assert red[:, -20:].mean() - red[:, :20].mean() > 150
    assert green[-20:].mean() - green[:20].mean() > 150
    assert blue.std() < 5


def test_a_larger_fit_never_upscales(tiny_clip: Path) -> None:
    frames, _ = decode(tiny_clip, fit_to=(1280, 1280))
    assert {f.image.shape for f in frames} == {(240, 320, 3)}


@pytest.mark.parametrize("clip, size", [("car_clip", (320, 180)), ("odd_clip", (320, 179))])
def test_downscale_keeps_the_picture(
    request: pytest.FixtureRequest, clip: str, size: tuple[int, int]
) -> None:
    """The downscaled image is the whole frame shrunk, not a crop or another frame."""
    path = request.getfixturevalue(clip)
    decoder = VideoDecoder("cam", str(path), DEADLINE_S, fit_to=FIT_TO)
    small = next(iter(decoder)).image.astype(np.int16)
    decoder.close()
    with av.open(str(path)) as container:
        full = next(container.decode(video=0)).to_ndarray(format="rgb24")
    shrunk = cv2.resize(full, size, interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(small - shrunk).mean() < 3


def test_truncated_file_yields_what_it_holds_then_a_fatal_event(truncated_car_clip: Path) -> None:
    items = list(VideoDecoder("cam", str(truncated_car_clip), DEADLINE_S, fit_to=FIT_TO))
    frames = [i for i in items if isinstance(i, Frame)]
    expected = count_frames(truncated_car_clip)

    assert 100 < expected < 377
    assert len(frames) == expected
    assert [f.seq for f in frames] == list(range(expected))
    event = items[-1]
    assert isinstance(event, SourceEvent)
    assert [i for i in items if isinstance(i, SourceEvent)] == [event]
    assert event.type == "decode_error"
    assert event.source == "cam"
    assert event.after_seq == expected - 1
    assert event.details["error"] == "truncated"
    assert event.details["fatal"] is True
    assert event.details["declared"] == 377
    assert event.details["packets"] == len(video_packets(truncated_car_clip))


def test_damaged_packets_are_reported_and_decoding_goes_on(corrupt_car_clip: Path) -> None:
    """Each damaged packet becomes one non-fatal decode_error event, and the end of the file one
    event with the counts; every other packet a frame."""
    frames, events = decode(corrupt_car_clip)

    assert len(video_packets(corrupt_car_clip)) == 377
    assert len(frames) == 377 - 3
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))
    assert [e.type for e in events] == ["decode_error"] * 4
    assert not any(e.details.get("fatal") for e in events)
    # The damage is in the middle of the file; the events say so.
    assert all(170 <= e.after_seq <= 200 for e in events[:3])
    assert all(e.details["error"] for e in events)
    counts = events[-1].details
    assert (counts["packets"], counts["frames"], counts["lost"]) == (377, 374, 3)
    assert events[-1].after_seq == 373
    with pytest.raises(av.error.InvalidDataError):
        count_frames(corrupt_car_clip)  # a plain PyAV loop stops at the damage


@pytest.fixture
def empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    return path


@pytest.fixture
def missing(tmp_path: Path) -> Path:
    return tmp_path / "nowhere" / "missing.mp4"


@pytest.mark.parametrize(
    "source, says",
    [
        ("not_video", "not a video"),
        ("empty_file", "not a video"),
        ("missing", "no such file"),
        ("clip_dir", "is a directory"),
    ],
)
def test_unreadable_sources_raise_one_line_naming_the_path(
    request: pytest.FixtureRequest, source: str, says: str
) -> None:
    path = request.getfixturevalue(source)
    with pytest.raises(SourceError) as raised:
        VideoDecoder("cam", str(path), DEADLINE_S)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert says in message
