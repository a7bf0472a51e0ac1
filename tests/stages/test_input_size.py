"""Model input sizes: dynamic height and width (`yolo export ... dynamic=True`), the
stride-aligned rectangle a run picks for its sources, --imgsz, and boxes mapped back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engines.errors import ModelError
from pipeline.api import run
from pipeline.config import OnnxRuntimeModelConfig, build_config
from pipeline.runtime.model import load_model
from stages.labels import COCO_NAMES
from stages.preprocess import rect_size, run_input_size
from tests.cli_run import vidpipe
from tests.clips import count_frames
from tests.conftest import ODD_SIZE
from tests.models import CANDIDATES, KEPT, build_dynamic_yolov8_model, build_yolov8_model


@pytest.mark.parametrize(
    "source, nominal, expected",
    [
        ((768, 432), (640, 640), (640, 384)),  # Ultralytics' own example
        ((1280, 720), (640, 640), (640, 384)),
        ((641, 359), (320, 320), (320, 192)),
        ((720, 1280), (640, 640), (384, 640)),
        ((640, 640), (640, 640), (640, 640)),
    ],
)
def test_rect_size_is_the_smallest_stride_aligned_fit(
    source: tuple[int, int], nominal: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert rect_size(source, nominal) == expected


def test_one_shape_per_run_rectangle_when_shared_else_square() -> None:
    assert run_input_size([(1280, 720), (1920, 1080)], (640, 640)) == (640, 384)
    assert run_input_size([(1280, 720), (720, 1280)], (640, 640)) == (640, 640)
    assert run_input_size([(1280, 720)], (640, 640), rect=False) == (640, 640)
    assert run_input_size([], (600, 600)) == (608, 608)  # rounded up to the stride


def expected_boxes(input_size: tuple[int, int], source_size: tuple[int, int]) -> list[list[float]]:
    """CANDIDATES (model pixels) back to source pixels by the letterbox arithmetic: ratio =
    min(iw / w, ih / h), pads floored and centred, source = (model - pad) / ratio, clipped."""
    (iw, ih), (w, h) = input_size, source_size
    ratio = min(iw / w, ih / h)
    pad_x, pad_y = (iw - round(w * ratio)) // 2, (ih - round(h * ratio)) // 2
    out = []
    for i in KEPT:
        _, _, x1, y1, x2, y2 = CANDIDATES[i]
        xs = [min(max((x - pad_x) / ratio, 0), w) for x in (x1, x2)]
        ys = [min(max((y - pad_y) / ratio, 0), h) for y in (y1, y2)]
        out.append([xs[0], ys[0], xs[1], ys[1]])
    return out


@pytest.mark.parametrize("imgsz, input_size", [(None, (320, 192)), (320, (320, 320))], ids=["rect", "square"])
def test_dynamic_model_boxes_map_back_exactly(
    tmp_path: Path, odd_clip: Path, imgsz: int | None, input_size: tuple[int, int]
) -> None:
    """641x359 video, a dynamic model exported at 320: the run letterboxes to 320x192 (or the
    square with --imgsz), the model's anchor count follows, and boxes land on source pixels."""
    path = build_dynamic_yolov8_model(tmp_path / "dynamic.onnx", imgsz=320)
    model = load_model(OnnxRuntimeModelConfig(path=path, imgsz=imgsz), source_sizes=[ODD_SIZE])
    width, height = input_size
    assert model.input_size == input_size
    assert model.reference["output0"].shape == (1, 84, width * height * 21 // 1024)
    model.engine.close()

    out = tmp_path / "results.jsonl"
    model_config = {"path": str(path)} | ({"imgsz": imgsz} if imgsz else {})
    config = {"sources": [{"url": str(odd_clip)}], "model": model_config, "deadline_ms": 60_000}
    summary = run(build_config({"outputs": {"jsonl": str(out)}, "progress": False, **config}))
    frames = [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "frame"]

    assert summary.balanced and summary.ok == count_frames(odd_clip) == len(frames)
    expected = expected_boxes(input_size, ODD_SIZE)
    for record in frames:
        detections = record["detections"]
        assert [d["label"] for d in detections] == [COCO_NAMES[CANDIDATES[i][0]] for i in KEPT]
        np.testing.assert_allclose([d["xyxy"] for d in detections], expected, atol=0.01)


def test_the_rectangle_and_the_square_give_different_source_boxes() -> None:
    """The geometry differs between the two shapes, so the test above tells them apart."""
    rect, square = expected_boxes((320, 192), ODD_SIZE), expected_boxes((320, 320), ODD_SIZE)
    assert np.abs(np.array(rect) - np.array(square)).max() > 50


def test_fixed_model_rejects_another_imgsz(tmp_path: Path) -> None:
    path = build_yolov8_model(tmp_path / "fixed.onnx")
    with pytest.raises(ModelError, match=r"fixed at 320x320, not 640x640; drop --imgsz"):
        load_model(OnnxRuntimeModelConfig(path=path, imgsz=640))


def test_an_imgsz_above_what_the_default_model_runs_at_is_one_line_and_exit_2() -> None:
    proc = vidpipe("run", "--imgsz", "704", "--max-frames", "3", "--quiet", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "vidpipe: error: model default.onnx: --imgsz 704 is above the 640 it runs at most; give --imgsz 640 or less"
    )


def test_an_imgsz_off_the_stride_is_rounded_up_said_and_reported(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = vidpipe("run", "--imgsz", "100", "--max-frames", "3", "--quiet", "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--imgsz 100 is not a multiple of the model's stride 32: running at 128" in proc.stderr
    summary = json.loads(out.read_text().splitlines()[-1])
    assert summary["sizing"]["input_size"] == [128, 128]
