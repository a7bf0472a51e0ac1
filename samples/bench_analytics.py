"""Tracking and analytics cost per frame, at 10 and 100 objects per frame, against inference's.

    python samples/bench_analytics.py

Objects move in straight lines across a 1280x720 frame with a zone and a line; each frame's
detections go through `Analytics.step` (ByteTrack, zones, lines) in seq order, as the
publisher does. Inference is one 640x640 call of the detector-sized model of
samples/bench_model.py on ONNX Runtime's CPU provider (one thread, as the pipeline's default).
Each figure is the best of 3 passes, in CPU time of this process (both sides run on one
thread, and CPU time leaves out most of what other processes on a busy machine cost);
"tracking alone" is the same with no zones or lines.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import AnalyticsConfig  # noqa: E402
from stages.types import Detections, Result, Status  # noqa: E402
from samples.bench_model import build  # noqa: E402
from stages.analytics import Analytics  # noqa: E402

WIDTH, HEIGHT, FRAMES = 1280, 720, 300


def results(objects: int, rng: np.random.Generator) -> list[Result]:
    start = rng.uniform((0, 0), (WIDTH, HEIGHT), (objects, 2))
    speed = rng.uniform(-4, 4, (objects, 2))
    out = []
    for seq in range(FRAMES):
        centre = (start + speed * seq) % (WIDTH, HEIGHT)
        xyxy = np.hstack([centre - 15, centre + 15]).astype(np.float32)
        det = Detections(xyxy, np.full(objects, 0.9, np.float32), np.zeros(objects, np.int32), ("car",) * objects)
        out.append(Result("bench", seq, seq / 25, Status.OK, None, None, 1, det, {}, 0.0, 0.0))
    return out


def analytics_ms(objects: int, geometry: bool = True, repeats: int = 3) -> float:
    """The best of `repeats` passes over the clip (a busy machine only ever adds time)."""
    config = AnalyticsConfig.model_validate({
        "tracker": "bytetrack",
        "zones": [{"name": "z", "polygon": [[0.2, 0.2], [0.6, 0.2], [0.6, 0.8], [0.2, 0.8]], "units": "fraction"}],
        "lines": [{"name": "l", "start": [0.5, 0], "end": [0.5, 1], "units": "fraction"}],
    } if geometry else {"tracker": "bytetrack"})  # fmt: skip
    frames = results(objects, np.random.default_rng(0))
    best = float("inf")
    for _ in range(repeats):
        analytics = Analytics(config, {"bench": (WIDTH, HEIGHT)})
        start = time.process_time()
        for result in frames:
            analytics.step(result)
        best = min(best, (time.process_time() - start) * 1000 / FRAMES)
    return best


def inference_ms(runs: int = 20, repeats: int = 3) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(build().SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, 640, 640), np.float32)
    session.run(None, {name: x})
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(runs):
            session.run(None, {name: x})
        best = min(best, (time.process_time() - start) * 1000 / runs)
    return best


if __name__ == "__main__":
    infer = inference_ms()
    print(f"inference (bench model, 640x640, 1 thread): {infer:.2f} ms/frame")
    for n in (10, 100):
        cost, tracks = analytics_ms(n), analytics_ms(n, geometry=False)
        print(f"tracking + zones + lines, {n:3d} objects:   {cost:.2f} ms/frame = {100 * cost / infer:.1f}% of inference")
        print(f"tracking alone (--track), {n:3d} objects:   {tracks:.2f} ms/frame = {100 * tracks / infer:.1f}% of inference")
