"""A long faulted run through the real pipeline, watching what recovery could leak (issue 17).

    python samples/soak.py ../shared/media/car-detection.mp4 --laps 31 --sources 2 \\
        --faults error_rate=0.3,seed=3 [--model bm.onnx] [--device cuda]

The clip is looped `--laps` times into a temporary file (remuxed, no re-encode). Every second
it prints the process's RSS, threads, open fds and, with `--device cuda`, the GPU memory in use
(cudaMemGetInfo); at the end, each one's least-squares trend after a warm-up of a third of the
run, per replaced context too, and the contexts and CUDA sessions still alive after the run.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.api import run  # noqa: E402
from pipeline.config import build_config  # noqa: E402
from tests.clips import loop_clip  # noqa: E402
from tests.memory import growth_over, open_fds, rss_bytes  # noqa: E402


def gpu_used_mib() -> float | None:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    err, free, total = cudart.cudaMemGetInfo()
    return (total - free) / 2**20 if err == cudart.cudaError_t.cudaSuccess else None


def trend(values: list[float]) -> float:
    """Least-squares growth over evenly spaced samples (the values' units)."""
    return growth_over(list(enumerate(values)))


def sample(samples: list[dict], stop: threading.Event) -> None:
    start = time.monotonic()
    while not stop.wait(1.0):
        row = {"t": round(time.monotonic() - start), "rss_mib": rss_bytes() / 2**20,
               "threads": threading.active_count(), "fds": open_fds(), "gpu_mib": gpu_used_mib()}
        samples.append(row)
        print(" ".join(f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def report(samples: list[dict], rebuilds: int) -> None:
    steady = samples[len(samples) // 3 :]
    for key in ("rss_mib", "threads", "fds", "gpu_mib"):
        values = [row[key] for row in steady if row[key] is not None]
        if values:
            median = sorted(values)[len(values) // 2]
            grew = trend(values)
            print(f"{key}: {values[0]:.0f} -> {values[-1]:.0f}, trend {grew:+.1f} ({100 * grew / median:+.1f}% "
                  f"of the median) after a third of the run", flush=True)
    if rebuilds and steady:
        share = len(steady) / len(samples)
        per = trend([row["rss_mib"] for row in steady]) * 1024 / (rebuilds * share)
        print(f"RSS per replaced context: {per:+.1f} KiB ({rebuilds} rebuilds)", flush=True)
    gc.collect()
    names = ("OnnxRuntimeContext", "OnnxRuntimeCudaContext", "CudaSession", "FaultyContext")
    alive = {name: 0 for name in names}
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in alive:
            alive[name] += 1
    print(f"alive after the run: {alive}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("--laps", type=int, default=31)
    parser.add_argument("--sources", type=int, default=2)
    parser.add_argument("--faults", default="error_rate=0.3,seed=3", help="k=v,... as vidpipe run takes them")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-attempts", type=int, default=20)
    args = parser.parse_args()
    faults = {k: float(v) if "." in v else int(v) for k, v in (kv.split("=") for kv in args.faults.split(",") if kv)}
    with tempfile.TemporaryDirectory() as tmp:
        clip = loop_clip(args.clip, Path(tmp) / "soak.mp4", args.laps)
        model: dict = {"path": str(args.model)} if args.model else {}
        if args.device.startswith("cuda"):
            device_id = int(args.device.partition(":")[2] or 0)
            model["providers"] = [{"name": "CUDAExecutionProvider", "options": {"device_id": device_id}},
                                  "CPUExecutionProvider"]  # fmt: skip
        sources = [{"url": str(clip), "name": f"cam{i}"} for i in range(args.sources)]
        infer = {"max_attempts": args.max_attempts}
        config = build_config({"sources": sources, "model": model, "faults": faults, "infer": infer})
        samples: list[dict] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(samples, stop), daemon=True)
        sampler.start()
        summary = run(config)
        stop.set()
        sampler.join()
    print(f"frames {summary.frames} ok {summary.ok} balanced {summary.balanced} rebuilds "
          f"{summary.inference['rebuilds']} engine reloads {summary.inference['engine_reloads']}", flush=True)
    report(samples, summary.inference["rebuilds"])


if __name__ == "__main__":
    main()
