"""Decode: real files through PyAV into Frames, checked against PyAV's own reading."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from engines.errors import SourceError
from stages.decode import VideoDecoder
from stages.preprocess import i420_to_rgb
from stages.types import Frame, SourceEvent
from tests.clips import count_frames, frame_times, make_clip, video_packets

DEADLINE_S = 2.0


def decode(path: Path) -> tuple[list[Frame], list[SourceEvent]]:
    frames, events = [], []
    for item in VideoDecoder("cam", str(path), DEADLINE_S):
        (frames if isinstance(item, Frame) else events).append(item)
    return frames, events


def pyav_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


@pytest.mark.parametrize(
    "clip, source_size, planes_shape",
    [
        ("car_clip", (768, 432), (648, 768)),
        ("person_clip", (768, 432), (648, 768)),
        ("odd_clip", (641, 359), (540, 642)),  # padded to 642x360, then 360 * 3 // 2 rows
        ("vfr_clip", (320, 240), (360, 320)),
        ("tiny_clip", (320, 240), (360, 320)),
    ],
)
def test_every_frame_decoded_in_order(
    request: pytest.FixtureRequest,
    clip: str,
    source_size: tuple[int, int],
    planes_shape: tuple[int, int],
) -> None:
    path = request.getfixturevalue(clip)
    frames, events = decode(path)

    assert events == []
    assert len(frames) == count_frames(path)
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert {f.source for f in frames} == {"cam"}
    assert [f.time_s for f in frames] == frame_times(path)
    assert all(b.time_s > a.time_s for a, b in zip(frames, frames[1:]))
    assert all(f.deadline == f.decoded_at + DEADLINE_S for f in frames)
    assert all(b.decoded_at >= a.decoded_at for a, b in zip(frames, frames[1:]))
    assert pyav_size(path) == source_size
    assert {f.source_size for f in frames} == {source_size}
    assert {f.image.shape for f in frames} == {planes_shape}
    assert {f.image.dtype for f in frames} == {np.dtype(np.uint8)}


def pyav_frames(path: Path, count: int) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return [frame for frame, _ in zip(container.decode(video=0), range(count))]


@pytest.mark.parametrize("clip", ["tiny_clip", "car_clip"])
def test_frames_are_pyav_yuv420p_planes(request: pytest.FixtureRequest, clip: str) -> None:
    """yuv420p BT.601 sources (most video) are copied out untouched."""
    path = request.getfixturevalue(clip)
    frames = decode(path)[0][:8]
    for frame, expected in zip(frames, pyav_frames(path, 8), strict=True):
        np.testing.assert_array_equal(frame.image, expected.to_ndarray(format="yuv420p"))


def test_odd_sizes_repeat_the_last_luma_column_and_row(odd_clip: Path) -> None:
    """641x359 (4:4:4 in the file): PyAV refuses yuv420p arrays of odd sizes, so decode pads."""
    frame = decode(odd_clip)[0][0]
    converted = pyav_frames(odd_clip, 1)[0].reformat(format="yuv420p")
    y, u, v = (
        np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in converted.planes
    )
    assert (y.shape, u.shape) == ((359, 641), (180, 321))
    planes = frame.image
    np.testing.assert_array_equal(planes[:359, :641], y)
    np.testing.assert_array_equal(planes[:359, 641], y[:, 640])
    np.testing.assert_array_equal(planes[359, :641], y[358])
    chroma = planes[360:].reshape(2, 180, 321)
    np.testing.assert_array_equal(chroma[0], u)
    np.testing.assert_array_equal(chroma[1], v)


@pytest.mark.parametrize("clip", ["tiny_clip", "odd_clip"])
def test_channels_are_rgb(request: pytest.FixtureRequest, clip: str) -> None:
    """make_clip paints red rising left to right, green rising top to bottom, blue flat."""
    frame = decode(request.getfixturevalue(clip))[0][0]
    image = i420_to_rgb(frame.image, frame.source_size).astype(np.float32)
    assert image.shape == (frame.source_size[1], frame.source_size[0], 3)
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    assert red[:, -20:].mean() - red[:, :20].mean() > 150
    assert green[-20:].mean() - green[:20].mean() > 150
    assert blue.std() < 5


@pytest.mark.parametrize("pix_fmt", ["yuvj420p", "yuv420p10le", "yuv422p"])
def test_other_pixel_formats_become_limited_range_i420(tmp_path: Path, pix_fmt: str) -> None:
    """Full range (JPEG), 10-bit and 4:2:2 come out as the same picture PyAV's RGB shows."""
    path = make_clip(tmp_path / f"{pix_fmt}.mp4", frames=3, pix_fmt=pix_fmt)
    frame = decode(path)[0][0]
    expected = pyav_frames(path, 1)[0]
    assert expected.format.name == pix_fmt
    assert frame.image.shape == (360, 320)
    luma = frame.image[:240]
    assert 16 <= luma.min() and luma.max() <= 235  # limited range, whatever the source's
    rgb = i420_to_rgb(frame.image, frame.source_size).astype(np.int16)
    assert np.abs(rgb - expected.to_ndarray(format="rgb24")).mean() < 2


def test_truncated_file_yields_what_it_holds_then_a_fatal_event(truncated_car_clip: Path) -> None:
    items = list(VideoDecoder("cam", str(truncated_car_clip), DEADLINE_S))
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
    assert event.fatal is True
    assert event.details["declared"] == 377
    assert event.details["packets"] == len(video_packets(truncated_car_clip))


def test_damaged_packets_are_reported_and_decoding_goes_on(corrupt_car_clip: Path) -> None:
    """Each damaged packet becomes one non-fatal decode_error event, and the end of the file one
    event with the counts; every other packet a frame."""
    frames, events = decode(corrupt_car_clip)

    assert len(video_packets(corrupt_car_clip)) == 377
    assert len(frames) == 377 - 3
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert all(b.time_s > a.time_s for a, b in zip(frames, frames[1:]))
    assert [e.type for e in events] == ["decode_error"] * 4
    assert not any(e.fatal for e in events)
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
