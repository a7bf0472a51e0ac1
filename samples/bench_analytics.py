"""Tracking and analytics cost per frame, at 10 and 100 objects per frame, against inference's.

    python samples/bench_analytics.py                     # each part alone, CPU time
    python samples/bench_analytics.py --pipeline [ROUNDS] # whole runs of `vidpipe run`, with and without

Alone: objects move in straight lines across a 1280x720 frame with a zone and a line; each
frame's detections go through `Analytics.step` (ByteTrack, zones, lines) in seq order, as
the publisher does. Inference is one 640x640 call of the detector-sized model of
samples/bench_model.py on ONNX Runtime's CPU provider (one thread, as the pipeline's default).
Each figure is the best of 3 passes, in CPU time of this process (both sides run on one
thread, and CPU time leaves out most of what other processes on a busy machine cost);
"tracking alone" is the same with no zones or lines.

Pipeline: `vidpipe run` over a 640x360 clip of 10 or 100 coloured boxes moving in lanes,
with a model that finds them (the embedded colour-blob detector) and costs what the
detector-sized model costs (the bench model's layers run beside it on the same input,
scaled to 640x640, and add zero to its output). Each round runs every clip with and without
tracking + the zone and the line, in alternating order; each run is a fresh process. Per run:
wall-clock fps, the process's CPU time per frame, and the CPU time the publisher spent in
`Analytics.step` (tracking, zones, lines). Figures are medians over rounds with min..max.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.assets import DEFAULT_MODEL  # noqa: E402
from pipeline.config import AnalyticsConfig  # noqa: E402
from samples.bench_model import build  # noqa: E402
from stages.analytics import Analytics  # noqa: E402
from stages.types import Detections, Result, Status  # noqa: E402

WIDTH, HEIGHT, FRAMES = 1280, 720, 300
GEOMETRY = {
    "zones": [{"name": "z", "polygon": [[0.2, 0.2], [0.6, 0.2], [0.6, 0.8], [0.2, 0.8]], "units": "fraction"}],
    "lines": [{"name": "l", "start": [0.5, 0], "end": [0.5, 1], "units": "fraction"}],
}


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
    config = AnalyticsConfig.model_validate({"tracker": "bytetrack", **(GEOMETRY if geometry else {})})
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


# ---- the whole pipeline ------------------------------------------------------------------


def detector_model() -> onnx.ModelProto:
    """The colour-blob detector at the bench model's cost: the bench model's layers run on the
    input scaled to 640x640 and add zero (their sum times 0) to the detector's output."""
    model = onnx.load(str(DEFAULT_MODEL))
    bench = onnx.compose.add_prefix(build(), "bench/")
    graph, out = model.graph, model.graph.output[0].name
    for node in graph.node:
        node.output[:] = ["blobs" if name == out else name for name in node.output]
    graph.node.extend([
        # 640x640 whatever rectangle the run letterboxes to (the detector's sides are dynamic).
        helper.make_node("Shape", ["images"], ["bench/batch_channels"], start=0, end=2),
        helper.make_node("Concat", ["bench/batch_channels", "bench/size"], ["bench/sizes"], axis=0),
        helper.make_node("Resize", ["images", "", "", "bench/sizes"], ["bench/images"], mode="nearest"),
        *bench.graph.node,
        helper.make_node("ReduceSum", ["bench/output0"], ["bench/sum"], keepdims=0),
        helper.make_node("Mul", ["bench/sum", "bench/zero"], ["bench/nothing"]),
        helper.make_node("Add", ["blobs", "bench/nothing"], [out]),
    ])  # fmt: skip
    graph.initializer.extend([
        *bench.graph.initializer,
        numpy_helper.from_array(np.array([640, 640], np.int64), "bench/size"),
        numpy_helper.from_array(np.array(0, np.float32), "bench/zero"),
    ])  # fmt: skip
    return model


def write_clip(path: Path, objects: int, frames: int, size: tuple[int, int] = (640, 360)) -> None:
    """`objects` 24x16 boxes in 10 lanes, red, green and blue by lane, each lane at its own speed,
    wrapping at the frame's edges (so tracks end and start); 25 fps H.264."""
    import av

    width, height = size
    per_lane = objects // 10
    road = (100 + np.random.default_rng(1).normal(0, 8, (height, width, 1))).clip(0, 255).astype(np.uint8).repeat(3, 2)
    colours = np.array([(210, 40, 36), (36, 194, 46), (36, 61, 219)], np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "23", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = road.copy()
            for lane in range(10):
                y, speed = 18 + 36 * lane, (1.5 + 0.3 * lane) * (1 if lane % 2 else -1)
                for k in range(per_lane):
                    x = round((k * width / per_lane + 20 * lane + speed * index) % width)
                    image[y - 8 : y + 8, max(x - 12, 0) : x + 12] = colours[lane % 3]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def child(argv: list[str]) -> None:
    """One `vidpipe run` in this process; prints its CPU and wall-clock time from the first result
    published to the end (start-up, model loading and the first inference left out) and the CPU
    time spent in Analytics.step."""
    from pipeline.cli.main import main
    from pipeline.runtime.publisher import Publisher

    spent, first = [0.0], []
    step, emit = Analytics.step, Publisher._emit

    def first_result(self: Publisher, result: Result) -> None:
        if not first:
            first.extend([time.process_time(), time.perf_counter()])
        emit(self, result)

    def timed(self: Analytics, result: Result):  # the publisher's thread: its CPU time is the step's
        start = time.thread_time()
        try:
            return step(self, result)
        finally:
            spent[0] += time.thread_time() - start

    Analytics.step, Publisher._emit = timed, first_result
    code = main(argv)
    cpu_s, wall_s = time.process_time() - first[0], time.perf_counter() - first[1]
    print(json.dumps({"code": code, "cpu_s": cpu_s, "wall_s": wall_s, "step_s": spent[0]}))


def run_once(clip: Path, model: Path, config: Path | None, out: Path) -> dict:
    argv = ["run", str(clip), "--model", str(model), "--quiet", "--out", str(out)]
    argv += ["--config", str(config)] if config else []
    done = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, check=True)
    run = json.loads(done.stdout.strip().splitlines()[-1])
    summary = json.loads(out.read_text().splitlines()[-1])
    if run["code"] != 0 or summary["ok"] != summary["frames"]:
        raise SystemExit(f"run failed: {run} {summary.get('error')}")
    frames = summary["frames"] - 1  # the times run from the first result's release
    return {
        "fps": frames / run["wall_s"],
        "cpu_ms": 1000 * run["cpu_s"] / frames,
        "step_ms": 1000 * run["step_s"] / summary["frames"],
    }


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}..{fmt.format(max(values))})"


def pipeline_bench(rounds: int, frames: int = 250) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = folder / "model.onnx"
        onnx.save(detector_model(), model)
        config = folder / "analytics.yaml"
        config.write_text(json.dumps({"analytics": {"tracker": "bytetrack", **GEOMETRY}}))  # JSON is YAML
        runs: dict[tuple[int, bool], list[dict]] = {}
        for n in (10, 100):
            write_clip(folder / f"{n}.mp4", n, frames)
        for r in range(rounds):
            for n in (10, 100):
                for tracked in (False, True) if r % 2 == 0 else (True, False):
                    run = run_once(folder / f"{n}.mp4", model, config if tracked else None, folder / "out.jsonl")
                    runs.setdefault((n, tracked), []).append(run)
    print(f"vidpipe run, {frames} frames, {rounds} rounds; median (min..max)")
    for n in (10, 100):
        plain, tracked = runs[(n, False)], runs[(n, True)]
        fps = [t["fps"] / p["fps"] for p, t in zip(plain, tracked)]
        cpu = [t["cpu_ms"] / p["cpu_ms"] for p, t in zip(plain, tracked)]
        share = [100 * t["step_ms"] / t["cpu_ms"] for t in tracked]
        print(f"{n:3d} objects: fps without {spread([p['fps'] for p in plain])}, "
              f"with {spread([t['fps'] for t in tracked])}; "
              f"with/without: fps x{spread(fps, '{:.2f}')}, CPU per frame x{spread(cpu, '{:.2f}')}")  # fmt: skip
        print(f"             CPU per frame with {spread([t['cpu_ms'] for t in tracked])} ms, of which Analytics.step "
              f"{spread([t['step_ms'] for t in tracked], '{:.2f}')} ms = "
              f"{spread(share)}% of the pipeline's CPU time")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    elif sys.argv[1:2] == ["--pipeline"]:
        pipeline_bench(int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    else:
        infer = inference_ms()
        print(f"inference (bench model, 640x640, 1 thread): {infer:.2f} ms/frame")
        for n in (10, 100):
            cost, tracks = analytics_ms(n), analytics_ms(n, geometry=False)
            for what, ms in (("tracking + zones + lines", cost), ("tracking alone (--track)", tracks)):
                print(f"{what}, {n:3d} objects:   {ms:.2f} ms/frame = {100 * ms / infer:.1f}% of inference")
