"""Candidate rows made on the GPU: their numpy reference gives postprocess exactly what the raw
head output gives (here), and the kernel computes the reference (on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from stages.bindings import TensorBindings
from stages.gpu_candidates import applies, reference
from stages.layouts import CANDIDATES, Head
from stages.output_check import layout_check
from stages.postprocess import Postprocess
from stages.types import Frame, Letterbox
from tests.gpu import cuda_skip_reason

CLASSES, ANCHORS, INPUT = 80, 8400, (640, 640)
HEAD = Head("yolov8", CLASSES)


def head_output(seed: int, batch: int = 3) -> np.ndarray:
    """[batch, 4+C, N] like a trained YOLOv8 head: low scores everywhere, a few dozen confident
    candidates in clusters (so NMS has work), boxes of a few to a few hundred pixels."""
    rng = np.random.default_rng(seed)
    out = np.empty((batch, 4 + CLASSES, ANCHORS), np.float32)
    out[:, 0:2] = rng.uniform(0, 640, (batch, 2, ANCHORS))
    out[:, 2:4] = rng.uniform(4, 300, (batch, 2, ANCHORS))
    out[:, 4:] = rng.uniform(0, 0.2, (batch, CLASSES, ANCHORS))
    for b in range(batch):
        hot = rng.choice(ANCHORS, 60, replace=False)
        centres = rng.uniform(50, 590, (12, 2))
        out[b, 0:2, hot] = centres[np.arange(60) % 12] + rng.normal(0, 3, (60, 2))
        out[b, 4 + rng.integers(0, CLASSES, 60), hot] = rng.uniform(0.3, 1.0, 60)
    return out


def detections(post: Postprocess, outputs: dict[str, np.ndarray]):
    box = Letterbox(ratio=0.5, pad_x=0.0, pad_y=140.0, source_size=(1280, 720))
    frame = Frame("cam", 0, 0.0, 0.0, 0.0, 0.0, np.zeros((1, 1), np.uint8), box.source_size, letterbox=box)
    frame.outputs = outputs
    return post(frame).detections


@pytest.mark.parametrize("transposed", [False, True], ids=["[B,4+C,N]", "[B,N,4+C]"])
def test_candidate_rows_give_postprocess_what_the_raw_output_gives(transposed: bool) -> None:
    raw = head_output(seed=3)
    head = Head("yolov8", CLASSES, transposed=transposed)
    if transposed:
        raw = np.ascontiguousarray(raw.transpose(0, 2, 1))
    rows = reference(raw, head)
    assert rows.shape == (3, ANCHORS, 6) and rows.dtype == np.float32
    post = Postprocess(raw.shape, INPUT, [f"c{i}" for i in range(CLASSES)], layout=head)
    found = 0
    for b in range(len(raw)):
        want = detections(post, {"output0": raw[b]})
        got = detections(post, {CANDIDATES: rows[b]})
        assert list(got.class_id) == list(want.class_id) and got.labels == want.labels
        np.testing.assert_allclose(got.score, want.score, rtol=0, atol=0)
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=1e-3)  # source pixels
        found += len(want)
    assert found >= 20  # the comparison saw real detections, after NMS


def test_a_non_finite_score_anywhere_in_a_candidate_reaches_the_check() -> None:
    raw = head_output(seed=4, batch=2)
    raw[1, 4 + 17, 123] = np.nan  # not the best class: a max would hide it
    rows = reference(raw, HEAD)
    assert np.isnan(rows[1, 123, 4]) and np.isfinite(rows[0]).all()
    bindings = TensorBindings.__new__(TensorBindings)
    bindings.check = layout_check("output0", HEAD, 0.25)
    assert bindings.output_problem({CANDIDATES: rows}, 1) is None
    assert "NaN" in bindings.output_problem({CANDIDATES: rows}, 2)


def test_the_output_check_reads_candidate_rows() -> None:
    check = layout_check("output0", HEAD, 0.25)
    rows = reference(head_output(seed=5), HEAD)
    assert check({CANDIDATES: rows}, 3) is None
    corrupt = rows * np.float32(0.5) + np.float32(1)  # the `corrupt` fault's numbers (engines/faults.py)
    assert "outside 0..1" in check({CANDIDATES: corrupt}, 3)
    firing = rows.copy()
    firing[0, :, 4] = 0.9  # a broken context answering high everywhere
    assert "fires on" in check({CANDIDATES: firing}, 3)
    flipped = rows.copy()
    hot = flipped[2, :, 4] > 0.25
    flipped[2, hot, 0], flipped[2, hot, 2] = flipped[2, hot, 2], flipped[2, hot, 0].copy()
    assert "x2 < x1" in check({CANDIDATES: flipped}, 3)
    assert check({CANDIDATES: flipped}, 2) is None  # only the frames in the batch count


def test_only_a_plain_detect_head_is_reduced() -> None:
    assert applies(HEAD, 1) and applies(Head("yolov8", 3, transposed=True), 1)
    assert not applies(HEAD, 2)  # e.g. a segment model's mask prototypes
    assert not applies(Head("yolov8", CLASSES, extra=32), 1)
    assert not applies(Head("yolov5", CLASSES), 1) and not applies(Head("e2e", None), 1)


@pytest.mark.gpu
@pytest.mark.parametrize("transposed", [False, True], ids=["[B,4+C,N]", "[B,N,4+C]"])
def test_kernel_matches_the_reference(transposed: bool) -> None:
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    cupy = pytest.importorskip("cupy", reason="needs CuPy (pip install cupy-cuda13x)")
    from stages.gpu_candidates import GpuCandidates

    raw = head_output(seed=6, batch=4)
    raw[2, 4 + 5, 77] = np.inf
    head = Head("yolov8", CLASSES, transposed=transposed)
    if transposed:
        raw = np.ascontiguousarray(raw.transpose(0, 2, 1))
    reduce = GpuCandidates("output0", head)
    shape = reduce.shape(raw.shape)
    stream = cupy.cuda.Stream(non_blocking=True)
    device = cupy.asarray(raw)
    out = cupy.full((shape[0] + 1, *shape[1:]), -7.0, cupy.float32)
    reduce.run(stream.ptr, device.data.ptr, raw.shape, out.data.ptr)
    stream.synchronize()
    got, want = out.get(), reference(raw, head)
    np.testing.assert_allclose(got[:-1], want, rtol=1e-6, atol=1e-4, equal_nan=True)
    assert np.isnan(got[2, 77, 4]) and (got[-1] == -7).all()  # nothing written past the batch
