"""GPU figures for the closing note: raw ONNX Runtime IO-binding fps against vidpipe runs.

    python samples/bench_model.py bm.onnx
    python samples/gpu_bench.py bm.onnx ../shared/media/one-by-one-person-detection.mp4

Prints one line per measurement: raw ORT (CUDA provider, IO binding, input already on the
GPU, output left there) at batch 1/8/16; vidpipe with --device cuda at default flags on one
source and on 16 sources; with 5% injected errors; and the CPU provider on this host's cores
at the sized default against hand-set thread counts.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.api import run
from pipeline.config import build_config

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def raw_iobinding_fps(model: Path, batch: int, seconds: float = 3.0, graph: bool = False, sessions: int = 1) -> float:
    """Raw ORT fps at `batch`: input already on the GPU, output left there; `graph`: ORT's CUDA
    graph (captured at the first run, replayed after); `sessions` run at once from threads."""
    import threading

    options = {"cudnn_conv_algo_search": "HEURISTIC", **({"enable_cuda_graph": "1"} if graph else {})}
    runs = [0] * sessions

    def one(i: int, start: threading.Barrier) -> None:
        session = ort.InferenceSession(str(model), providers=[("CUDAExecutionProvider", options)])
        x = np.random.default_rng(0).random((batch, 3, 640, 640), dtype=np.float32)
        x = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        out = session.get_outputs()[0]
        shape = session.run(None, {session.get_inputs()[0].name: np.zeros((batch, 3, 640, 640), np.float32)})[0].shape
        y = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, "cuda", 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(session.get_inputs()[0].name, x)
        binding.bind_ortvalue_output(out.name, y)  # fixed addresses: what a CUDA graph needs
        for _ in range(3):
            session.run_with_iobinding(binding)
        start.wait()
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            session.run_with_iobinding(binding)
            runs[i] += 1
        binding.synchronize_outputs()

    barrier = threading.Barrier(sessions + 1)
    threads = [threading.Thread(target=one, args=(i, barrier)) for i in range(sessions)]
    for t in threads:
        t.start()
    barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return sum(runs) * batch / (time.perf_counter() - began)


class StageTimes:
    """Mean per-frame milliseconds of each stage (Result.timings), to see where a run's time goes."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def write(self, result) -> None:
        self.count += 1
        for name, ms in result.timings.items():
            self.sums[name] = self.sums.get(name, 0.0) + ms

    def means(self) -> dict[str, float]:
        return {k: round(v / max(1, self.count), 2) for k, v in self.sums.items()}


def vidpipe(label: str, clip: Path, path: Path, sources: int = 1, model: dict | None = None, **config) -> None:
    from engines.onnxruntime_cuda import PHASE_MS
    from pipeline.runtime.pipeline import RunHooks

    PHASE_MS.clear()
    start, cpu = time.perf_counter(), os.times()
    times = StageTimes()
    summary = run(build_config({"sources": [{"url": str(clip), "name": f"cam{i}"} for i in range(sources)],
                                "model": {"path": str(path), **(model or {})}, **config}),
                  hooks=RunHooks(on_result=times.write))
    inf = summary.inference
    print(f"{label}: {summary.ok}/{summary.frames} ok, {summary.fps:.0f} fps ok, p50 {summary.latency_p50_ms} ms, "
          f"p99 {summary.latency_p99_ms} ms, wall {time.perf_counter() - start:.1f} s, "
          f"first result {summary.first_result_s} s, "
          f"rebuild p99 {inf['rebuild_ms_p99']} ms, timeouts {inf['timeouts']}, abandoned {inf['abandoned']}, "
          f"reloads {inf['engine_reloads']}, mean batch {inf['mean_batch']}, stage ms {times.means()}, "
          f"CUDA call phases ms/batch {({k: round(v / max(1, inf['batches']), 2) for k, v in PHASE_MS.items()})}, "
          f"sizing {summary.sizing}, "
          f"CPU cores busy {(sum(os.times()[:2]) - sum(cpu[:2])) / (time.perf_counter() - start):.1f}, "
          f"gpu letterbox {inf.get('gpu_letterbox')} candidates {inf.get('gpu_candidates')}", flush=True)


def main() -> None:
    model, clip = Path(sys.argv[1]), Path(sys.argv[2])
    what = sys.argv[3] if len(sys.argv) > 3 else "all"
    gpu = {"providers": [{"name": "CUDAExecutionProvider", "options": {"device_id": 0}}, "CPUExecutionProvider"]}
    if what in ("all", "raw"):
        for batch in (1, 8, 16, 32):
            print(f"raw ORT IO binding b{batch}: {raw_iobinding_fps(model, batch):.0f} fps", flush=True)
        for graph in (True, False):
            try:
                fps = raw_iobinding_fps(model, 16, graph=graph)
                print(f"raw ORT IO binding b16, CUDA graph {graph}: {fps:.0f} fps", flush=True)
            except Exception as err:  # ORT refuses a graph when a node falls back to the CPU
                print(f"raw ORT IO binding b16, CUDA graph {graph}: failed: {str(err)[:200]}", flush=True)
        fps = raw_iobinding_fps(model, 16, sessions=4)
        print(f"raw ORT IO binding b16, 4 sessions at once: {fps:.0f} fps", flush=True)
    if what in ("all", "gpu"):
        sixteen = {"sources": 16, "model": gpu, "max_frames": 600}
        vidpipe("gpu 1 source defaults", clip, model, model=gpu)
        vidpipe("gpu 16 sources defaults", clip, model, **sixteen)
        whole = {**sixteen, "model": {**gpu, "gpu_candidates": False}}
        vidpipe("gpu 16 sources, whole outputs to the host", clip, model, **whole)
        vidpipe("gpu 16 sources, CPU letterbox", clip, model, **{**sixteen, "model": {**gpu, "gpu_letterbox": False}})
        vidpipe("gpu 16 sources 4 contexts", clip, model, **sixteen, infer={"contexts": 4})
        vidpipe("gpu 16 sources nvdec", clip, model, **sixteen, decode="nvdec")
        vidpipe("gpu 16 sources realtime", clip, model, sources=16, model=gpu, realtime=True, duration_s=10)
    if what in ("all", "gpu", "faults"):
        sixteen = {"sources": 16, "model": gpu, "max_frames": 600}
        for _ in range(2):  # interleaved: neither runs cold
            vidpipe("gpu 16 sources clean", clip, model, **sixteen)
            vidpipe("gpu 16 sources 5% errors", clip, model, **sixteen, faults={"error_rate": 0.05, "seed": 1})
    if what.startswith("procs"):  # procsN: 16 sources split over N processes at once, one GIL each
        processes = int(what[5:] or 2)
        import json
        import subprocess

        children = [subprocess.Popen([sys.executable, __file__, str(model), str(clip), f"child{16 // processes}"],
                                     stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        figures = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
        ok, wall = sum(f["ok"] for f in figures), max(f["wall"] for f in figures)
        print(f"gpu 16 sources over {processes} processes: {ok} ok, {ok / wall:.0f} fps ok in aggregate "
              f"(each: {[round(f['fps']) for f in figures]} fps)", flush=True)
    if what.startswith("child"):
        import json

        summary = run(build_config({"sources": [{"url": str(clip), "name": f"cam{i}"} for i in range(int(what[5:]))],
                                    "model": {"path": str(model), **gpu}, "max_frames": 600}))
        print(json.dumps({"ok": summary.ok, "wall": summary.elapsed_s, "fps": summary.fps}), flush=True)
    if what in ("all", "cpu"):
        vidpipe("cpu defaults", clip, model, max_frames=200)
        for contexts, threads in ((2, 8), (4, 4), (1, 16)):
            vidpipe(f"cpu {contexts}x{threads}", clip, model, max_frames=200,
                    infer={"contexts": contexts}, model={"intra_op_threads": threads})


if __name__ == "__main__":
    main()
