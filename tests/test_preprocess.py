"""Preprocess: the letterbox geometry, decode's early downscale, and fixed-batch stacking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.types import Frame
from stages.decode import VideoDecoder
from stages.preprocess import Preprocess, letterbox, stack

PAD = 114 / 255


def white(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), 255, np.uint8)


@pytest.mark.parametrize(
    "source_size, input_size, ratio, content, offset",
    [
        # (width, height) of the content and its (left, top) inside the input.
        ((641, 359), (320, 320), 320 / 641, (320, 179), (0, 70)),
        ((359, 641), (320, 320), 320 / 641, (179, 320), (70, 0)),
        ((641, 359), (320, 256), 320 / 641, (320, 179), (0, 38)),
        ((160, 90), (320, 320), 2.0, (320, 180), (0, 70)),
        ((320, 320), (320, 320), 1.0, (320, 320), (0, 0)),
    ],
    ids=["landscape", "portrait", "wide-input", "upscale", "exact"],
)
def test_letterbox_geometry(
    source_size: tuple[int, int],
    input_size: tuple[int, int],
    ratio: float,
    content: tuple[int, int],
    offset: tuple[int, int],
) -> None:
    tensor, box = letterbox(white(*source_size), input_size)
    (iw, ih), (cw, ch), (left, top) = input_size, content, offset

    assert tensor.shape == (3, ih, iw)
    assert tensor.dtype == np.float32
    assert tensor.flags.c_contiguous
    assert box.ratio == pytest.approx(ratio)
    assert (box.pad_x, box.pad_y) == (left, top)
    assert box.source_size == source_size
    inside = np.zeros((ih, iw), bool)
    inside[top : top + ch, left : left + cw] = True
    np.testing.assert_allclose(tensor[:, inside], 1.0, atol=1e-6)
    np.testing.assert_allclose(tensor[:, ~inside], PAD, atol=1e-6)


def test_letterbox_content_is_the_image_in_chw_0_to_1() -> None:
    image = np.random.default_rng(1).integers(0, 256, (179, 320, 3), np.uint8)
    tensor, box = letterbox(image, (320, 320), source_size=(641, 359))

    assert box.ratio == pytest.approx(320 / 641)
    assert (box.pad_x, box.pad_y) == (0, 70)
    assert box.source_size == (641, 359)
    np.testing.assert_allclose(tensor[:, 70:249], image.transpose(2, 0, 1) / 255, atol=1e-6)
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0


@pytest.mark.parametrize("clip", ["car_clip", "odd_clip"])
def test_downscaled_by_decode_matches_full_size(request: pytest.FixtureRequest, clip: str) -> None:
    path: Path = request.getfixturevalue(clip)
    small = first_frames(path, fit_to=(320, 320))
    full = first_frames(path, fit_to=None)
    stage = Preprocess((320, 320))
    for a, b in zip(small, full):
        assert a.image.shape[1] == 320 and b.image.shape[1] > 320
        a, b = stage(a), stage(b)
        assert a.letterbox == b.letterbox
        difference = np.abs(a.tensor - b.tensor)
        assert difference.mean() < 0.005
        assert difference.max() < 0.06


def first_frames(path: Path, fit_to: tuple[int, int] | None, count: int = 5) -> list[Frame]:
    decoder = VideoDecoder("cam", str(path), 1.0, fit_to=fit_to)
    frames = []
    for item in decoder:
        frames.append(item)
        if len(frames) == count:
            break
    decoder.close()
    return frames


def frame_with_tensor(value: float) -> Frame:
    return Frame(
        source="cam", seq=0, pts=0.0, decoded_at=0.0, deadline=1.0, wall_time=0.0,
        image=np.zeros((4, 4, 3), np.uint8), source_size=(4, 4),
        tensor=np.full((3, 8, 8), value, np.float32),
    )  # fmt: skip


def test_stack_pads_a_fixed_batch_with_zeros() -> None:
    frames = [frame_with_tensor(v) for v in (0.25, 0.5, 0.75)]
    batch = stack(frames, batch_size=4)
    assert batch.shape == (4, 3, 8, 8)
    assert batch.dtype == np.float32
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(batch[i], frame.tensor)
    assert not batch[3].any()


def test_stack_without_a_fixed_batch_keeps_the_count() -> None:
    frames = [frame_with_tensor(v) for v in (0.25, 0.5)]
    assert stack(frames).shape == (2, 3, 8, 8)
    assert stack(frames, batch_size=2).shape == (2, 3, 8, 8)
