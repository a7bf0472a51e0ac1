"""Every common detector export decoded or refused by name, through `vidpipe run` on a real clip.

The car sits at (100,200)-(300,400) of a 640x640 model input; on car-detection.mp4 (768x432,
letterboxed by 5/6 with 140 px of padding above) it maps to [120, 72, 360, 312] in source pixels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from engines.errors import ModelError
from stages.labels import COCO_NAMES
from stages.layouts import MAX_CLASSES, AmbiguousLayout, detect_head
from tests.cli_run import vidpipe_run
from tests.models import (
    build_e2e_model,
    build_output_model,
    build_ultralytics_model,
    build_yolov5_model,
    build_yolov8_transposed_model,
)
from tests.pipeline.cli.test_cli import assert_one_error_line
from tests.stages.test_postprocess import RunModel, in_source_pixels

INPUT = (640, 640)
CAR = (2, 0.9, 100, 200, 300, 400)
CAR_DUPLICATE = (2, 0.6, 104, 204, 302, 402)  # NMS removes it where the export has not
TRUCK = (7, 0.8, 400, 250, 600, 380)
CAR_IN_SOURCE = [120, 72, 360, 312]
TRUCK_IN_SOURCE = [480, 132, 720, 288]
FRAMES = 3


def strict_json(line: str) -> dict:
    """JSON as most parsers read it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in {line[:80]}")

    return json.loads(line, parse_constant=refuse)


def run_on_car_clip(car_clip: Path, model: Path, out: Path, *args: str) -> list[dict]:
    proc = vidpipe_run(str(car_clip), "--model", str(model), "--max-frames", str(FRAMES),
                       "--out", str(out), *args)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [strict_json(line) for line in out.read_text().splitlines()]
    frames = [r for r in records if r["type"] == "frame"]
    assert [f["seq"] for f in frames] == list(range(FRAMES))
    summary = records[-1]
    assert summary["type"] == "summary" and summary["balanced"] is True and summary["frames"] == FRAMES
    return frames


def detections(frame: dict) -> list[tuple[str, int, float, list[float]]]:
    assert frame["status"] == "ok", frame
    return [(d["label"], d["class_id"], round(d["score"], 4), d["xyxy"]) for d in frame["detections"]]


def assert_found(frames: list[dict], *expected: tuple[str, int, float, list[int]]) -> None:
    for frame in frames:
        found = detections(frame)
        assert [f[:3] for f in found] == [e[:3] for e in expected]
        for (*_, xyxy), (*_, want) in zip(found, expected):
            np.testing.assert_allclose(xyxy, want, atol=0.01)


# 1. End-to-end (post-NMS) exports


@pytest.mark.parametrize(
    ("rows", "metadata"),
    [
        (25200, None),  # DeepStream-Yolo's YOLOv5 export: one row per anchor, no metadata
        (300, {"task": "detect", "end2end": "True", "names": str(dict(enumerate(COCO_NAMES)))}),  # YOLOv10/YOLO26
        (300, None),  # an RT-DETR-style head
    ],
    ids=["deepstream-yolo-25200x6", "yolov10-300x6", "rtdetr-style-300x6"],
)
def test_a_post_nms_export_reads_the_car_and_the_truck(
    tmp_path: Path, car_clip: Path, rows: int, metadata: dict | None
) -> None:
    model = build_e2e_model(tmp_path / "e2e.onnx", [CAR, TRUCK, CAR_DUPLICATE], rows, INPUT, metadata)

    frames = run_on_car_clip(car_clip, model, tmp_path / "out.jsonl")

    assert_found(frames, ("car", 2, 0.9, CAR_IN_SOURCE), ("truck", 7, 0.8, TRUCK_IN_SOURCE))


def test_a_post_nms_export_that_cannot_be_told_from_yolov5_is_refused_naming_the_layout(
    tmp_path: Path, car_clip: Path
) -> None:
    # Nothing detected on the probe: [B, 25200, 6] of zeros fits a 1-class YOLOv5 head too.
    model = build_e2e_model(tmp_path / "quiet.onnx", [], 25200, INPUT)

    line = assert_one_error_line(vidpipe_run(str(car_clip), "--model", str(model)), "post-NMS", "--layout e2e")
    assert "--layout yolov5" in line

    frames = run_on_car_clip(car_clip, model, tmp_path / "out.jsonl", "--layout", "e2e")
    assert all(detections(frame) == [] for frame in frames)


def test_a_one_class_yolov5_head_of_the_same_shape_is_still_yolov5(tmp_path: Path) -> None:
    boxes = [(0, 0.81, 40, 80, 120, 220)]
    run = RunModel(build_yolov5_model(tmp_path / "v5.onnx", boxes, num_classes=1), (320, 320))
    assert run.output_shape == ("batch", 6300, 6)

    frame = run.postprocess()(run.frames()[0])

    assert run.layout == "yolov5"
    np.testing.assert_allclose(frame.detections.score, [0.81], rtol=1e-5)
    np.testing.assert_allclose(frame.detections.xyxy, in_source_pixels([0], run.letterbox), atol=1e-3)


def test_a_post_nms_class_id_beyond_the_names_fails_the_frame(tmp_path: Path, car_clip: Path) -> None:
    model = build_e2e_model(tmp_path / "e2e.onnx", [(93, 0.9, 100, 200, 300, 400)], 300, INPUT)
    out = tmp_path / "out.jsonl"

    proc = vidpipe_run(str(car_clip), "--model", str(model), "--max-frames", "2", "--out", str(out))

    assert proc.returncode == 4, proc.stderr  # frames failed: exit 4 (issue 11)
    frames = [r for r in map(strict_json, out.read_text().splitlines()) if r["type"] == "frame"]
    assert [(f["status"], f["reason"]) for f in frames] == [("failed", "postprocess")] * 2
    assert all("class id 93" in f["error"] and "--labels" in f["error"] for f in frames)


# 2. Transposed YOLOv8/YOLO11 heads


@pytest.mark.parametrize(
    "metadata",
    [{"task": "detect", "names": str(dict(enumerate(COCO_NAMES))), "author": "Ultralytics"}, None],
    ids=["ultralytics-metadata", "no-metadata"],
)
def test_a_transposed_yolov8_head_finds_the_car(tmp_path: Path, car_clip: Path, metadata) -> None:
    model = build_yolov8_transposed_model(tmp_path / "v8t.onnx", [CAR, CAR_DUPLICATE], 80, INPUT, metadata)

    frames = run_on_car_clip(car_clip, model, tmp_path / "out.jsonl")

    assert_found(frames, ("car", 2, 0.9, CAR_IN_SOURCE))


def test_a_transposed_head_that_could_be_yolox_is_refused_naming_both(tmp_path: Path, car_clip: Path):
    # No metadata, and nothing on the probe: [B, 8400, 84] fits both readings.
    model = build_yolov8_transposed_model(tmp_path / "quiet.onnx", [], 80, INPUT)

    line = assert_one_error_line(vidpipe_run(str(car_clip), "--model", str(model)), "['batch', 8400, 84]")

    assert "transposed yolov8" in line and "80 classes" in line
    assert "yolox" in line and "79 classes" in line
    assert "--layout yolov8 or --layout yolox" in line


def test_an_explicit_yolov8_layout_reads_either_orientation() -> None:
    assert detect_head((1, 8400, 84), INPUT, "yolov8").transposed is True
    assert detect_head(("batch", "anchors", 84), INPUT, "yolov8").num_classes == 80
    assert detect_head(("batch", 84, "anchors"), INPUT, "yolov8").transposed is False
    with pytest.raises(AmbiguousLayout):
        detect_head((1, 8400, 84), INPUT)


# 3. Ultralytics segment and pose exports


def test_a_segment_export_decodes_the_box_rows_only(tmp_path: Path, car_clip: Path) -> None:
    model = build_ultralytics_model(tmp_path / "seg.onnx", "segment", [CAR, TRUCK], INPUT)

    frames = run_on_car_clip(car_clip, model, tmp_path / "out.jsonl")

    # Without reading `task`, the mask coefficients (300 each) would win as "class 80".
    assert_found(frames, ("car", 2, 0.9, CAR_IN_SOURCE), ("truck", 7, 0.8, TRUCK_IN_SOURCE))


def test_a_pose_export_decodes_the_box_rows_only(tmp_path: Path, car_clip: Path) -> None:
    model = build_ultralytics_model(tmp_path / "pose.onnx", "pose", [(0, 0.9, 100, 200, 300, 400)], INPUT)

    frames = run_on_car_clip(car_clip, model, tmp_path / "out.jsonl")

    # Without reading `task`, the keypoints (300 each) would be published as scores of 300.
    assert_found(frames, ("person", 0, 0.9, CAR_IN_SOURCE))


@pytest.mark.parametrize("task", ["obb", "classify"])
def test_other_ultralytics_tasks_are_refused_naming_the_task(task: str) -> None:
    with pytest.raises(ModelError) as error:
        detect_head((1, 85, 8400), INPUT, "auto", {"task": task})
    assert f"Ultralytics '{task}' export" in str(error.value) and "detect, segment or pose" in str(error.value)


# 4. What a decoder emits is checked before it is published


def yolov8_output(box: tuple[float, float, float, float], score: float) -> np.ndarray:
    output = np.zeros((84, 2100), np.float32)
    output[:4, 40] = box
    output[4 + 2, 40] = score
    return output


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (yolov8_output((100, 100, math.nan, math.nan), 0.9), "NaN or infinite box"),
        (yolov8_output((100, 100, math.inf, 50), 0.9), "NaN or infinite box"),
        (yolov8_output((100, 100, 50, 50), math.nan), "class score values that are NaN"),
        (yolov8_output((100, 100, 50, 50), 5.6), "(e.g. 5.6)"),
    ],
    ids=["nan-box", "inf-box", "nan-score", "score-above-1"],
)
def test_a_decoded_value_that_is_not_a_detection_fails_the_frame(
    tmp_path: Path, car_clip: Path, output: np.ndarray, message: str
) -> None:
    # The model goes wrong on video frames only: a model wrong on the probe too is refused at start.
    model = build_output_model(tmp_path / "bad.onnx", output, probe=np.zeros_like(output))
    out, video = tmp_path / "out.jsonl", tmp_path / "out.mp4"

    proc = vidpipe_run(str(car_clip), "--model", str(model), "--max-frames", "2", "--out", str(out),
                       "--video", str(video))  # fmt: skip

    assert proc.returncode == 4, proc.stderr  # frames failed: exit 4 (issue 11)
    records = [strict_json(line) for line in out.read_text().splitlines()]
    frames = [r for r in records if r["type"] == "frame"]
    assert [(f["status"], f["reason"], f["detections"]) for f in frames] == [("failed", "postprocess", [])] * 2
    assert all(message in f["error"] for f in frames)
    summary = records[-1]
    assert summary["balanced"] is True and summary["failed"] == {"postprocess": 2}


# Issue 17, item 12: bounds


@pytest.mark.parametrize(
    ("shape", "layout"), [(("batch", 4 + 2**40, "anchors"), "auto"), ((1, 25200, 5 + 2**40), "yolov5")]
)
def test_a_model_declaring_an_enormous_class_dimension_is_refused(shape: tuple, layout: str) -> None:
    with pytest.raises(ModelError) as error:
        detect_head(shape, INPUT, layout)
    assert f"declares {2**40} classes" in str(error.value)
    assert str(MAX_CLASSES) in str(error.value)
    detect_head(("batch", 4 + MAX_CLASSES, "anchors"), INPUT)  # the bound itself is accepted
