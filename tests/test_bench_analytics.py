"""samples/bench_analytics.py --pipeline measures what it says: its model finds every object of its
clip at the bench model's cost, and its runs track them and time Analytics.step."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from pipeline.assets import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_analytics", REPO / "samples" / "bench_analytics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_detector_is_the_blob_detector_plus_every_layer_of_the_bench_model() -> None:
    bench = load_bench()
    model = bench.detector_model()
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "Conv" for n in bench.build().graph.node) > 0
    image = np.random.default_rng(0).random((1, 3, 320, 320), np.float32)
    image[:, 0, 100:140, 100:160] = 0.9  # a red box, so the output holds a detection
    ours = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    blobs = ort.InferenceSession(str(DEFAULT_MODEL), providers=["CPUExecutionProvider"])
    got, want = ours.run(None, {"images": image})[0], blobs.run(None, {"images": image})[0]
    assert want.max() > 0.5
    np.testing.assert_array_equal(got, want)


def test_a_pipeline_run_tracks_every_object_on_every_frame(tmp_path: Path) -> None:
    bench = load_bench()
    model, clip, config = tmp_path / "model.onnx", tmp_path / "clip.mp4", tmp_path / "analytics.yaml"
    onnx.save(bench.detector_model(), model)
    bench.write_clip(clip, 100, frames=12)
    config.write_text(json.dumps({"analytics": {"tracker": "bytetrack", **bench.GEOMETRY}}))
    run = bench.run_once(clip, model, config, tmp_path / "out.jsonl")
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    frames = [r for r in records if r["type"] == "frame"]
    assert len(frames) == 12 and all(r["status"] == "ok" for r in frames)
    assert [len(r["detections"]) for r in frames] == [100] * 12
    # Each whole box (24 pixels wide) has its own track from the first frame (a box cut by the
    # frame's edge can score below what ByteTrack needs to start a track).
    whole = [d["track_id"] for d in frames[0]["detections"] if d["xyxy"][2] - d["xyxy"][0] > 20]
    assert len(whole) >= 90 and len(set(whole)) == len(whole) and min(whole) >= 1
    assert {r["type"] for r in records} >= {"track_start", "zone_enter", "line_cross"}
    assert 0 < run["step_ms"] < run["cpu_ms"]
