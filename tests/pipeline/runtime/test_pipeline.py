"""The whole CPU pipeline through `pipeline.api.run`: real videos, real ONNX models, JSONL out.

decode -> preprocess -> infer (onnxruntime) -> postprocess -> publish, checked on what a
subscriber of the JSONL file sees: one line per frame, in seq order, events in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.api import run
from pipeline.assets.default_model import CLASS_NAMES
from pipeline.assets.sample_clip import scene_objects
from pipeline.config import build_config
from pipeline.summary import RunSummary
from stages.labels import COCO_NAMES
from tests.clips import count_frames
from tests.conftest import ODD_SIZE
from tests.models import (
    CANDIDATES,
    KEPT,
    build_fixed_batch_model,
    build_yolov5_model,
    build_yolov8_model,
    build_yolox_model,
)

BUILDERS = {"yolov8": build_yolov8_model, "yolov5": build_yolov5_model, "yolox": build_yolox_model}
# Generous: these tests check what happens to every frame, not how fast (deadlines have their own).
NO_HURRY_MS = 60_000


def run_to_jsonl(tmp_path: Path, config: dict[str, Any]) -> tuple[RunSummary, list[dict]]:
    out = tmp_path / "results.jsonl"
    summary = run(build_config({"outputs": {"jsonl": str(out)}, "progress": False, **config}))
    return summary, [json.loads(line) for line in out.read_text().splitlines()]


def frames_of(records: list[dict], source: str) -> list[dict]:
    return [r for r in records if r["type"] == "frame" and r["source"] == source]


def expected_detections(indices: list[int], source_size: tuple[int, int]) -> list[dict]:
    """The test model's boxes mapped from the 320x320 input back to source pixels.

    Letterbox arithmetic: ratio = min(320 / w, 320 / h); the content is round(w * ratio) x
    round(h * ratio), centred (pads floored); source = (model - pad) / ratio, clipped.
    """
    width, height = source_size
    ratio = min(320 / width, 320 / height)
    pad_x = (320 - round(width * ratio)) // 2
    pad_y = (320 - round(height * ratio)) // 2
    out = []
    for i in indices:
        class_id, score, x1, y1, x2, y2 = CANDIDATES[i]
        xs = [min(max((x - pad_x) / ratio, 0), width) for x in (x1, x2)]
        ys = [min(max((y - pad_y) / ratio, 0), height) for y in (y1, y2)]
        out.append({"label": COCO_NAMES[class_id], "class_id": class_id, "score": score,
                    "xyxy": [xs[0], ys[0], xs[1], ys[1]]})  # fmt: skip
    return out


def assert_detections(got: list[dict], expected: list[dict]) -> None:
    assert [d["label"] for d in got] == [d["label"] for d in expected]
    assert [d["class_id"] for d in got] == [d["class_id"] for d in expected]
    np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in expected], atol=1e-3)
    np.testing.assert_allclose([d["xyxy"] for d in got], [d["xyxy"] for d in expected], atol=0.05)


def test_car_clip_every_frame_once_in_order(tmp_path: Path, car_clip: Path) -> None:
    summary, records = run_to_jsonl(
        tmp_path, {"sources": [{"url": str(car_clip)}], "deadline_ms": NO_HURRY_MS}
    )

    ledger = summary.sources["car-detection"]
    assert list(summary.sources) == ["car-detection"]
    assert (ledger.decoded, ledger.ok, ledger.failed) == (377, 377, {})
    assert summary.balanced and summary.error is None

    frames = frames_of(records, "car-detection")
    assert [r["seq"] for r in frames] == list(range(377))
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in frames)
    assert all(b["pts"] > a["pts"] for a, b in zip(frames, frames[1:]))
    assert all({"preprocess", "infer", "postprocess"} <= set(r["timings"]) for r in frames)

    assert [r["type"] for r in records[-2:]] == ["source_end", "summary"]
    end, last = records[-2], records[-1]
    assert (end["source"], end["after_seq"], end["frames"]) == ("car-detection", 376, 377)
    assert last["balanced"] is True
    assert last["sources"]["car-detection"] == {
        "decoded": 377,
        "ok": 377,
        "failed": {},
        "balanced": True,
    }
    assert len(records) == 377 + 2 == last["outputs"]["jsonl"]["lines"]


def test_two_sources_each_with_own_seq_and_ledger(
    tmp_path: Path, car_clip: Path, odd_clip: Path
) -> None:
    sources = [{"url": str(car_clip)}, {"url": str(odd_clip), "name": "odd"}]
    summary, records = run_to_jsonl(tmp_path, {"sources": sources, "deadline_ms": NO_HURRY_MS})

    counts = {"car-detection": 377, "odd": count_frames(odd_clip)}
    assert summary.balanced
    for name, count in counts.items():
        ledger = summary.sources[name]
        assert (ledger.decoded, ledger.ok, ledger.failed_total) == (count, count, 0)
        assert [r["seq"] for r in frames_of(records, name)] == list(range(count))
        ends = [r for r in records if r["type"] == "source_end" and r["source"] == name]
        assert [(e["after_seq"], e["frames"]) for e in ends] == [(count - 1, count)]
        assert records[-1]["sources"][name]["balanced"] is True
    assert records[-1]["type"] == "summary"
    assert len(records) == sum(counts.values()) + len(counts) + 1


@pytest.mark.parametrize("layout", list(BUILDERS))
def test_layout_boxes_land_on_source_pixels(tmp_path: Path, odd_clip: Path, layout: str) -> None:
    """decode -> letterbox -> onnxruntime -> YOLO decode + NMS -> source pixels -> JSONL."""
    model = BUILDERS[layout](tmp_path / f"{layout}.onnx")
    config = {
        "sources": [{"url": str(odd_clip)}],
        "model": {"path": str(model)},
        "deadline_ms": NO_HURRY_MS,
    }
    summary, records = run_to_jsonl(tmp_path, config)

    count = count_frames(odd_clip)
    frames = frames_of(records, "odd")
    assert summary.balanced and summary.sources["odd"].ok == count
    assert [r["seq"] for r in frames] == list(range(count))
    expected = expected_detections(KEPT, ODD_SIZE)
    for record in frames:
        assert record["status"] == "ok"
        assert_detections(record["detections"], expected)


def test_fixed_batch_model_is_capped_and_padded(tmp_path: Path, odd_clip: Path) -> None:
    """A batch-2 model with max_batch 4: batches never exceed 2, and the odd frame count
    forces at least one single-frame batch, which only runs if padded to 2."""
    model = build_fixed_batch_model(tmp_path / "fixed.onnx", batch=2)
    config = {
        "sources": [{"url": str(odd_clip)}],
        "model": {"path": str(model)},
        "infer": {"max_batch": 4},
        "deadline_ms": NO_HURRY_MS,
    }
    summary, records = run_to_jsonl(tmp_path, config)

    count = count_frames(odd_clip)
    assert count % 2 == 1
    assert summary.balanced and summary.sources["odd"].ok == count
    assert summary.inference["mean_batch"] <= 2
    assert summary.inference["batches"] >= (count + 1) // 2
    expected = expected_detections(KEPT, ODD_SIZE)
    for record in frames_of(records, "odd"):
        assert_detections(record["detections"], expected)


def test_classes_keep_only_those_labels(tmp_path: Path, odd_clip: Path) -> None:
    model = build_yolov8_model(tmp_path / "yolov8.onnx")
    config = {
        "sources": [{"url": str(odd_clip)}],
        "model": {"path": str(model), "classes": ["dog", "bicycle"]},
        "deadline_ms": NO_HURRY_MS,
    }
    summary, records = run_to_jsonl(tmp_path, config)

    frames = frames_of(records, "odd")
    assert summary.balanced and len(frames) == count_frames(odd_clip)
    dog, bicycle = 3, 5  # indices into CANDIDATES
    expected = expected_detections([dog, bicycle], ODD_SIZE)
    for record in frames:
        assert_detections(record["detections"], expected)


def test_an_unpaced_file_never_fails_a_frame_for_its_deadline(tmp_path: Path, odd_clip: Path) -> None:
    # Unpaced: the deadline starts when a frame enters a batch and bounds only retries, so
    # even an impossible one fails nothing in a fault-free run.
    summary, records = run_to_jsonl(tmp_path, {"sources": [{"url": str(odd_clip)}], "deadline_ms": 0.01})
    frames = frames_of(records, "odd")
    assert [r["seq"] for r in frames] == list(range(count_frames(odd_clip)))
    assert all(r["status"] == "ok" for r in frames)
    assert summary.inference["timeouts"] == summary.inference["abandoned"] == 0


def test_impossible_deadline_fails_every_frame_visibly(tmp_path: Path, odd_clip: Path) -> None:
    # Paced (--realtime): the deadline is a latency promise from decode, which no frame can keep.
    summary, records = run_to_jsonl(
        tmp_path, {"sources": [{"url": str(odd_clip)}], "deadline_ms": 0.01, "realtime": True}
    )

    count = count_frames(odd_clip)
    frames = frames_of(records, "odd")
    assert [r["seq"] for r in frames] == list(range(count))
    assert all(r["status"] == "failed" and r["reason"] == "deadline" for r in frames)
    assert all(r["detections"] == [] for r in frames)
    ledger = summary.sources["odd"]
    assert (ledger.decoded, ledger.ok, ledger.failed) == (count, 0, {"deadline": count})
    assert summary.balanced
    assert records[-1]["balanced"] is True and records[-1]["failed"] == {"deadline": count}


def test_damaged_packets_are_published_in_place(tmp_path: Path, corrupt_car_clip: Path) -> None:
    config = {"sources": [{"url": str(corrupt_car_clip)}], "deadline_ms": NO_HURRY_MS}
    summary, records = run_to_jsonl(tmp_path, config)

    assert summary.balanced and summary.error is None
    assert summary.sources["car-corrupt"].ok == 377 - 3
    errors = [i for i, r in enumerate(records) if r["type"] == "decode_error"]
    assert len(errors) == 3 + 1  # one per damaged packet, then the end of file's counts
    counts = records[errors.pop()]
    assert (counts["packets"], counts["frames"], counts["lost"], counts["after_seq"]) == (377, 374, 3, 373)
    for i in errors:
        event = records[i]
        assert event["source"] == "car-corrupt" and not event.get("fatal")
        # In place: right after the frame it follows, before the next one.
        frame_before = next(r for r in reversed(records[:i]) if r["type"] == "frame")
        frame_after = next(r for r in records[i:] if r["type"] == "frame")
        assert frame_before["seq"] == event["after_seq"]
        assert frame_after["seq"] == event["after_seq"] + 1


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_default_model_finds_the_sample_clip_objects(tmp_path: Path) -> None:
    """No source, no model: the bundled sample and the embedded detector, scored against
    the scene's ground truth as test_default_assets does, but through the whole pipeline."""
    names = list(CLASS_NAMES)

    summary, records = run_to_jsonl(tmp_path, {"deadline_ms": NO_HURRY_MS})

    frames = frames_of(records, "sample")
    assert summary.balanced and summary.sources["sample"].ok == 200
    assert [r["seq"] for r in frames] == list(range(200))
    found = sized = detections = unmatched = 0
    for record in frames:
        truth = [(c, list(xyxy)) for c, *xyxy in scene_objects(record["seq"])]
        boxes = [(names.index(d["label"]), d["xyxy"]) for d in record["detections"]]
        detections += len(boxes)
        for class_id, xyxy in truth:
            if min(xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]) >= 16:
                sized += 1
                found += any(c == class_id and iou(b, xyxy) >= 0.7 for c, b in boxes)
        unmatched += sum(
            not any(c == t and iou(b, xyxy) >= 0.5 for t, xyxy in truth) for c, b in boxes
        )
    assert sized > 500
    assert found / sized >= 0.95, f"matched {found} of {sized} objects"
    assert unmatched <= 0.05 * detections, f"{unmatched} of {detections} detections match nothing"
