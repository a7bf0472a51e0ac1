"""Preprocess: the letterbox geometry, I420 planes to RGB in several threads, and fixed-batch stacking."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest

from stages.decode import VideoDecoder
from stages.preprocess import Preprocess, letterbox, letterbox_image, stack
from stages.types import Frame

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


@pytest.mark.parametrize("clip", ["car_clip", "odd_clip", "tiny_clip"])
@pytest.mark.parametrize("input_size", [(320, 320), (640, 384)], ids=["down", "up-or-same"])
def test_letterbox_of_planes_matches_letterbox_of_pyav_rgb(
    request: pytest.FixtureRequest, clip: str, input_size: tuple[int, int]
) -> None:
    """The planes, scaled and converted in preprocess, show what PyAV's full-size RGB shows."""
    path: Path = request.getfixturevalue(clip)
    stage = Preprocess(input_size)
    with av.open(str(path)) as container:
        rgbs = [f.to_ndarray(format="rgb24") for f, _ in zip(container.decode(video=0), range(5))]
    for frame, rgb in zip(first_frames(path), rgbs, strict=True):
        expected, box = letterbox_image(rgb, input_size)
        frame = stage(frame)
        assert frame.letterbox == box
        assert frame.tensor.dtype == np.uint8 and frame.tensor.shape == (input_size[1], input_size[0], 3)
        difference = np.abs(frame.tensor.astype(np.float32) - expected) / 255
        # 4:2:0 halves the chroma resolution of the 4:4:4 odd clip: its sharp colour edges differ.
        assert difference.mean() < 0.01
        assert np.percentile(difference, 99) < 0.08


def test_preprocess_from_several_threads_gives_what_one_thread_gives(car_clip: Path, odd_clip: Path) -> None:
    """Workers share one Preprocess; frames of two source sizes interleave across them."""
    frames = [f for pair in zip(first_frames(car_clip, 12), first_frames(odd_clip, 12)) for f in pair]
    stage = Preprocess((320, 192))
    alone = [stage(Frame(**{**f.__dict__, "timings": {}})).tensor for f in frames]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(stage, frames))
    for frame, tensor in zip(together, alone, strict=True):
        np.testing.assert_array_equal(frame.tensor, tensor)


def first_frames(path: Path, count: int = 5) -> list[Frame]:
    decoder = VideoDecoder("cam", str(path), 1.0)
    frames = []
    for item in decoder:
        frames.append(item)
        if len(frames) == count:
            break
    decoder.close()
    return frames


def frame_with_tensor(value: int) -> Frame:
    """A frame as preprocess leaves it: a uint8 (H, W, 3) letterboxed image."""
    return Frame(
        source="cam", seq=0, time_s=0.0, decoded_at=0.0, deadline=1.0, wall_time=0.0,
        image=np.zeros((6, 4), np.uint8), source_size=(4, 4),
        tensor=np.full((8, 6, 3), value, np.uint8),
    )  # fmt: skip


def test_stack_makes_nchw_float_and_pads_a_fixed_batch_with_zeros() -> None:
    frames = [frame_with_tensor(v) for v in (51, 102, 255)]
    frames[0].tensor[2, 3] = (255, 0, 0)  # one red pixel: channels land in their planes
    batch = stack(frames, batch_size=4)
    assert batch.shape == (4, 3, 8, 6)
    assert batch.dtype == np.float32
    for i, frame in enumerate(frames):
        np.testing.assert_allclose(batch[i], frame.tensor.transpose(2, 0, 1) / 255, atol=1e-6)
    assert batch[0, :, 2, 3].tolist() == [1.0, 0.0, 0.0]
    assert not batch[3].any()


def test_stack_without_a_fixed_batch_keeps_the_count() -> None:
    frames = [frame_with_tensor(v) for v in (51, 102)]
    assert stack(frames).shape == (2, 3, 8, 6)
    assert stack(frames, batch_size=2).shape == (2, 3, 8, 6)


def test_stack_writes_into_the_given_buffer() -> None:
    """A reused buffer: a smaller batch after a larger one leaves no stale frame behind."""
    out = np.full((4, 3, 8, 6), 7.0, np.float32)
    batch = stack([frame_with_tensor(v) for v in (51, 102, 153)], out=out)
    assert np.shares_memory(batch, out)
    batch = stack([frame_with_tensor(255)], batch_size=2, out=out[:2])
    assert np.shares_memory(batch, out) and batch.shape == (2, 3, 8, 6)
    assert (batch[0] == 1.0).all() and not batch[1].any()


def test_preprocess_keeps_uint8_in_the_frame(odd_clip: Path) -> None:
    """What waits in the queue after preprocess is bytes: a quarter of the float tensor."""
    frame = Preprocess((320, 192))(first_frames(odd_clip, count=1)[0])
    assert frame.tensor.dtype == np.uint8 and frame.tensor.shape == (192, 320, 3)
    assert (frame.letterbox.pad_x, frame.letterbox.pad_y) == (0, 6)
