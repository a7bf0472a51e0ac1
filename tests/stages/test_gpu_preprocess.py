"""GPU preprocessing: its numpy reference against the CPU path (here), the kernel against
the reference (on a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.assets.sample_clip import SAMPLE_CLIP
from pipeline.config import build_config
from pipeline.runtime.model import load_model
from stages.decode import VideoDecoder
from stages.gpu_preprocess import planes_shape, reference
from stages.preprocess import PAD_VALUE, Preprocess, fit_size, stack
from stages.types import Frame
from tests.gpu import cuda_skip_reason


def first_frames(path: Path, count: int, every: int = 1) -> list[Frame]:
    decoder = VideoDecoder("cam", str(path), 1.0)
    frames = [f for f in decoder if isinstance(f, Frame) and f.seq % every == 0 and f.seq < count * every]
    decoder.close()
    return frames


@pytest.mark.parametrize("clip", ["car_clip", "odd_clip", "tiny_clip"])
@pytest.mark.parametrize("input_size", [(320, 320), (640, 384)])
def test_reference_pixels_match_the_cpu_path(
    request: pytest.FixtureRequest, clip: str, input_size: tuple[int, int]
) -> None:
    frames = first_frames(request.getfixturevalue(clip), 3)
    cpu = stack([Preprocess(input_size)(f) for f in frames])
    for frame, expected in zip(frames, cpu, strict=True):
        assert frame.image.shape == planes_shape(frame.source_size)
        got, box = reference(frame.image, input_size, frame.source_size)
        assert box == frame.letterbox
        assert got.shape == expected.shape and got.dtype == np.float32
        (left, top), (nw, nh) = (int(box.pad_x), int(box.pad_y)), fit_size(frame.source_size, input_size)
        inside = np.zeros((input_size[1], input_size[0]), bool)
        inside[top : top + nh, left : left + nw] = True
        for image in (got, expected):  # the same grey border, not shifted
            np.testing.assert_allclose(image[:, ~inside], PAD_VALUE / 255, atol=1e-6)
        difference = np.abs(got - expected)
        # 4:2:0 halves the chroma of the 4:4:4 odd clip: both paths blur its sharp colour edges.
        assert difference.mean() < 0.01
        assert np.percentile(difference, 99) < 0.08


def test_reference_boxes_are_within_one_input_pixel_of_the_cpu_path() -> None:
    """The embedded default model on its sample clip: the same objects, every box edge within
    one model-input pixel (2 source pixels here). The model's boxes come from thresholded
    colour margins, so a level or two of colour difference moves an edge by part of a cell;
    on the car and person clips it finds only unstable colour blobs, so those clips are
    compared pixel by pixel (above) rather than by box."""
    model = load_model(build_config({"sources": [{"url": str(SAMPLE_CLIP)}]}).model)
    context = model.engine.create_context()
    frames = first_frames(SAMPLE_CLIP, 20, every=6)
    matched = 0
    try:
        for frame in frames:
            cpu = model.bindings.inputs([Preprocess(model.input_size)(frame)])
            gpu = {model.bindings.input_name: reference(frame.image, model.input_size, frame.source_size)[0][None]}
            found = []
            for inputs in (cpu, gpu):
                frame.outputs = {k: v[0] for k, v in context.infer(inputs, 60.0).items()}
                found.append(model.postprocess(frame).detections)
            a, b = found
            assert len(a) == len(b)
            pixel = 1 / frame.letterbox.ratio
            for box, class_id in zip(a.xyxy, a.class_id):
                distance = np.abs(b.xyxy - box).max(axis=1)
                nearest = int(distance.argmin())
                assert b.class_id[nearest] == class_id
                assert distance[nearest] <= pixel + 1e-3
                matched += 1
    finally:
        context.close()
        model.engine.close()
    assert matched > 20


@pytest.mark.gpu
@pytest.mark.parametrize("source_size", [(768, 432), (641, 359), (160, 90)], ids=["down", "odd", "up"])
def test_kernel_matches_the_reference(source_size: tuple[int, int]) -> None:
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    cupy = pytest.importorskip("cupy", reason="needs CuPy (pip install cupy-cuda13x)")
    from stages.gpu_preprocess import GpuLetterbox

    input_size, batch = (640, 384), 3
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, planes_shape(source_size), np.uint8) for _ in range(batch)]
    stream = cupy.cuda.Stream(non_blocking=True)
    out = cupy.full((batch + 1, 3, input_size[1], input_size[0]), -1.0, cupy.float32)
    letterbox = GpuLetterbox(input_size, source_size)
    letterbox.run(upload(frames, stream.ptr), out.data.ptr, batch, stream.ptr)
    stream.synchronize()
    got = out.get()
    for i, planes in enumerate(frames):
        expected, box = reference(planes, input_size, source_size)
        assert box == letterbox.letterbox
        np.testing.assert_allclose(got[i], expected, atol=1e-4)
    assert (got[batch] == -1).all()  # nothing written past the batch

    # The same from a device pointer, into part of a buffer (an offset out_ptr).
    device = upload(frames[:1], stream.ptr)
    letterbox.run(device.data.ptr, out[batch:].data.ptr, 1, stream.ptr)
    stream.synchronize()
    np.testing.assert_allclose(out[batch].get(), reference(frames[0], input_size, source_size)[0], atol=1e-4)


def upload(frames: list[np.ndarray], stream: int):
    """Host I420 planes of one size -> a CuPy uint8 array (batch, rows, columns), copied on
    `stream`. The pipeline stages planes in its context's pinned memory instead
    (stages/bindings.py); the kernel test only needs them on the device."""
    import cupy

    device = cupy.empty((len(frames), *frames[0].shape), cupy.uint8)
    device.set(np.stack(frames), stream=cupy.cuda.ExternalStream(int(stream)))
    return device
