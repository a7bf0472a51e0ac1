"""The embedded default: the hand-built detector finds the objects of the sample clip."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import Fail

from pipeline.assets import DEFAULT_MODEL
from pipeline.assets.default_model import CLASS_NAMES, build_default_model
from pipeline.assets.sample_clip import SAMPLE_CLIP, make_sample_clip, scene_objects

INPUT_WIDTH = 320  # the clip's 640x360 at half size: 320x180, letterboxed to the input's height
CONF, NMS_IOU = 0.25, 0.45
MIN_SIZE, MATCH_IOU = 16, 0.7
EVERY = 4  # frames scored; the rest only counted, to keep the test short


@dataclass
class Clip:
    frame_count: int
    sizes: set[tuple[int, ...]]
    frames: dict[int, np.ndarray]  # every EVERY-th frame, RGB


def decode(path: Path) -> Clip:
    clip = Clip(0, set(), {})
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            clip.frame_count += 1
            clip.sizes.add((frame.height, frame.width))
            if index % EVERY == 0:
                clip.frames[index] = frame.to_ndarray(format="rgb24")
    return clip


def letterbox(image: np.ndarray, pad: int) -> np.ndarray:
    resized = cv2.resize(image, (INPUT_WIDTH, 180), interpolation=cv2.INTER_AREA)
    padded = cv2.copyMakeBorder(resized, pad, pad, 0, 0, cv2.BORDER_CONSTANT, value=(114,) * 3)
    return padded.transpose(2, 0, 1).astype(np.float32) / 255


def detect(output: np.ndarray, pad: int) -> list[tuple[int, np.ndarray]]:
    """YOLOv8 [4 + C, N] -> (class_id, xyxy in source pixels) after class-aware NMS."""
    scores = output[4:]
    class_id, score = scores.argmax(axis=0), scores.max(axis=0)
    keep = score > CONF
    cx, cy, w, h = output[:4, keep]
    xywh = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1).astype(np.float64)
    kept = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, score[keep], class_id[keep], CONF, NMS_IOU), np.int64).reshape(-1)
    detections = []
    for i in kept:
        x, y, w, h = xywh[i]
        xyxy = np.array([x, y - pad, x + w, y + h - pad]) * 2
        detections.append((int(class_id[keep][i]), xyxy))
    return detections


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(DEFAULT_MODEL), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def clip() -> Clip:
    return decode(SAMPLE_CLIP)


def test_model_builds_the_same_bytes_every_time(tmp_path: Path) -> None:
    build_default_model(tmp_path / "a.onnx")
    build_default_model(tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert (tmp_path / "a.onnx").read_bytes() == DEFAULT_MODEL.read_bytes()


@pytest.mark.parametrize("batch, height, width", [(1, 320, 320), (4, 320, 320), (2, 192, 320), (1, 640, 96)])
def test_model_runs_any_batch_and_aligned_size(
    session: ort.InferenceSession, batch: int, height: int, width: int
) -> None:
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    images = np.full((batch, 3, height, width), 114 / 255, np.float32)
    (output,) = session.run(["output0"], {"images": images})
    assert output.shape == (batch, 4 + len(CLASS_NAMES), len(CLASS_NAMES) * (height // 4) * (width // 4))
    assert output[:, 4:].max() == 0  # plain padding holds no object


@pytest.mark.parametrize(
    "height, width, error",
    [(320, 672, "broadcast an axis"), (200, 320, "cannot be reshaped")],
    ids=["above-640", "unaligned"],
)
def test_model_fails_rather_than_guess_at_a_size_it_cannot_scan(
    session: ort.InferenceSession, height: int, width: int, error: str
) -> None:
    with pytest.raises(Fail, match=error):
        session.run(["output0"], {"images": np.zeros((1, 3, height, width), np.float32)})


def test_model_names_its_classes_and_sizes(session: ort.InferenceSession) -> None:
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["names"] == "{0: 'red', 1: 'green', 2: 'blue'}"
    assert ast.literal_eval(meta["names"]) == dict(enumerate(CLASS_NAMES))
    assert (meta["imgsz"], meta["stride"]) == ("[320, 320]", "32")  # nominal size; sides in multiples of 32


def test_the_clip_is_8_seconds_of_640x360(clip: Clip) -> None:
    assert clip.frame_count == 200
    assert clip.sizes == {(360, 640)}


@pytest.mark.parametrize("height", [320, 192], ids=["square", "rect"])
def test_detector_finds_the_clip_objects(session: ort.InferenceSession, clip: Clip, height: int) -> None:
    """At the square the clip is letterboxed into, and at the 320x192 vidpipe runs it at."""
    pad = (height - 180) // 2
    batch = np.stack([letterbox(frame, pad) for frame in clip.frames.values()])
    (outputs,) = session.run(["output0"], {"images": batch})
    assert outputs.shape[2] == len(CLASS_NAMES) * (height // 4) * (INPUT_WIDTH // 4)

    found, sized, detections, unmatched = 0, 0, 0, 0
    for index, output in zip(clip.frames, outputs):
        truth = [(c, np.array(xyxy)) for c, *xyxy in scene_objects(index)]
        boxes = detect(output, pad)
        detections += len(boxes)
        for class_id, xyxy in truth:
            if min(xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]) >= MIN_SIZE:
                sized += 1
                found += any(c == class_id and iou(b, xyxy) >= MATCH_IOU for c, b in boxes)
        # A detection of any real object, however small or hidden, is no false positive.
        unmatched += sum(not any(c == t and iou(b, xyxy) >= 0.5 for t, xyxy in truth) for c, b in boxes)
    assert sized > 150
    assert found / sized >= 0.95, f"matched {found} of {sized} objects"
    assert unmatched / detections <= 0.05, f"{unmatched} of {detections} detections are wrong"


def test_the_clip_regenerates_the_same(tmp_path: Path, clip: Clip) -> None:
    make_sample_clip(tmp_path / "sample.mp4")
    again = decode(tmp_path / "sample.mp4")
    assert again.frame_count == clip.frame_count
    # Pixels, not bytes: another libx264 build may encode the same frames differently.
    for index, frame in clip.frames.items():
        difference = np.abs(again.frames[index].astype(np.int16) - frame).mean()
        assert difference < 1.0, f"frame {index} differs by {difference:.2f} levels on average"
