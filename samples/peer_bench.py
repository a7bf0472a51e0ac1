"""vidpipe against its peers on one model and one video: ratios, not absolute times.

    python samples/peer_bench.py ../shared/media/car-detection.mp4 [--model m.onnx] [--repeats 3]
        [--ultralytics-python /tmp/ulv/bin/python]

Contenders, each in its own process (so each one's peak RSS is its own), taking turns in a
rotating order, `--repeats` rounds:
- vidpipe: `pipeline.run` with default flags, results to a JSONL file;
- naive: the loop most people write: cv2.VideoCapture -> letterbox (square, at the model's
  size: its fixed input, else its nominal `imgsz` metadata, else 640) -> ONNX Runtime one
  frame at a time (default session options) -> YOLO decode and NMS (vidpipe's Postprocess,
  so the two do the same work there) -> one JSON line per frame;
- ultralytics: its streaming predictor on the same ONNX file, default settings, when
  `ultralytics` is installed here or `--ultralytics-python` names an interpreter that has it
  (a separate venv, so Ultralytics and its torch stay out of vidpipe's). That interpreter runs
  this same script as the worker, with YOLO_OFFLINE=1 so Ultralytics skips its online checks.

fps is frames with a result per second of the whole run, model loading included. Printed:
each contender's median fps, first-result time and peak RSS, then vidpipe / peer ratios
per round as median [min-max]. This machine's absolute figures are noise; the ratios of
interleaved runs are what to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent


def run_vidpipe(video: str, model: str, max_frames: int | None, out: Path) -> dict:
    from pipeline.api import run
    from pipeline.config import build_config

    config = {"sources": [{"url": video}], "model": {"path": model}, "progress": False,
              "outputs": {"jsonl": str(out)}} | ({"max_frames": max_frames} if max_frames else {})  # fmt: skip
    summary = run(build_config(config))
    return {"frames": summary.ok, "first_result_s": summary.first_result_s}


def run_naive(video: str, model: str, max_frames: int | None, out: Path, started: float) -> dict:
    import cv2
    import numpy as np
    import onnxruntime as ort

    from stages.labels import load_names
    from stages.layouts import detect_head
    from stages.postprocess import Postprocess
    from stages.preprocess import letterbox
    from stages.types import Frame

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    spec, meta = session.get_inputs()[0], session.get_modelmeta().custom_metadata_map
    nominal = [int(n) for n in re.findall(r"\d+", meta.get("imgsz", ""))] or [640]  # "[h, w]", as Ultralytics writes it
    h, w = (d if isinstance(d, int) else n for d, n in zip(spec.shape[2:], (nominal * 2)[-2:]))
    post, frames, first = None, 0, None
    capture = cv2.VideoCapture(video)
    with out.open("w") as sink:
        while max_frames is None or frames < max_frames:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            tensor, box = letterbox(rgb, (w, h))
            output = session.run(None, {spec.name: tensor[None]})[0]
            if post is None:
                head = detect_head(output.shape, (w, h), "auto", meta, output[0])
                post = Postprocess(output.shape, (w, h), load_names(meta, None, head.num_classes), layout=head)
            frame = Frame("naive", frames, None, 0.0, 0.0, 0.0, rgb, (rgb.shape[1], rgb.shape[0]),
                          letterbox=box, outputs={"output0": output[0]})  # fmt: skip
            detections = post(frame).detections
            sink.write(json.dumps({"seq": frames, "xyxy": np.round(detections.xyxy, 1).tolist(),
                                   "labels": list(detections.labels)}) + "\n")  # fmt: skip
            frames += 1
            first = first or time.monotonic() - started
    return {"frames": frames, "first_result_s": first}


def run_ultralytics(video: str, model: str, max_frames: int | None, out: Path, started: float) -> dict:
    from ultralytics import YOLO

    frames, first = 0, None
    with out.open("w") as sink:
        for result in YOLO(model, task="detect").predict(video, stream=True, verbose=False):
            sink.write(json.dumps({"seq": frames, "xyxy": result.boxes.xyxy.tolist()}) + "\n")
            frames += 1
            first = first or time.monotonic() - started
            if max_frames is not None and frames >= max_frames:
                break
    return {"frames": frames, "first_result_s": first}


def worker(name: str, video: str, model: str, max_frames: int | None) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.jsonl"
        if name == "vidpipe":
            figures = run_vidpipe(video, model, max_frames, out)
        elif name == "naive":
            figures = run_naive(video, model, max_frames, out, started)
        else:
            figures = run_ultralytics(video, model, max_frames, out, started)
    figures["seconds"] = time.monotonic() - started
    print(json.dumps(figures))


def measure(name: str, video: str, model: str, max_frames: int | None, python: str = sys.executable) -> dict:
    """One contender in a child process of `python`: its figures and its own peak RSS (MiB)."""
    command = [python, __file__, video, "--model", model, "--worker", name]
    if max_frames:
        command += ["--max-frames", str(max_frames)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if python == sys.executable else {**os.environ, "YOLO_OFFLINE": "1"}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT, env=env)
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{name} failed (status {status}); run it alone with --worker {name} to see why")
    figures = json.loads(stdout.decode().strip().splitlines()[-1])
    figures["fps"] = figures["frames"] / figures["seconds"]
    figures["rss_mib"] = usage.ru_maxrss / 1024
    return figures


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def fail(message: str) -> NoReturn:
    """One line on stderr and exit 2: the flag named and the fix."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video")
    parser.add_argument("--model", help="an ONNX model (default: vidpipe's embedded one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--ultralytics-python", metavar="PYTHON",
                        help="a Python interpreter with ultralytics installed (say a separate venv's bin/python): "
                             "the ultralytics contender runs under it")  # fmt: skip
    parser.add_argument("--worker", choices=["vidpipe", "naive", "ultralytics"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(ROOT))
        from pipeline.assets import DEFAULT_MODEL

        args.model = str(DEFAULT_MODEL)
    if args.worker:
        worker(args.worker, args.video, args.model, args.max_frames)
        return
    names = ["vidpipe", "naive"]
    pythons = dict.fromkeys(names, sys.executable)
    if args.ultralytics_python:
        pythons["ultralytics"] = args.ultralytics_python
        check = [args.ultralytics_python, "-c", "import ultralytics"]
        try:
            probe = subprocess.run(check, capture_output=True, env={**os.environ, "YOLO_OFFLINE": "1"})
        except OSError as error:
            fail(f"--ultralytics-python {args.ultralytics_python}: cannot run it ({error.strerror}); "
                 "name a Python interpreter, e.g. a venv's bin/python")  # fmt: skip
        if probe.returncode != 0:
            fail(f"--ultralytics-python {args.ultralytics_python}: cannot import ultralytics; "
                 "install it there (pip install ultralytics)")  # fmt: skip
        names.append("ultralytics")
    else:
        try:
            import ultralytics  # noqa: F401

            names.append("ultralytics")
            pythons["ultralytics"] = sys.executable
        except ImportError:
            print("ultralytics not installed: comparing vidpipe with the naive loop only "
                  "(--ultralytics-python names an interpreter that has it)")  # fmt: skip
    rounds: list[dict[str, dict]] = []
    for i in range(args.repeats):
        order = names[i % len(names) :] + names[: i % len(names)]
        rounds.append({name: measure(name, args.video, args.model, args.max_frames, pythons[name]) for name in order})
    for name in names:
        runs = [r[name] for r in rounds]
        print(f"{name:12} fps {spread([r['fps'] for r in runs])}  first result s "
              f"{spread([r['first_result_s'] or 0.0 for r in runs])}  "
              f"peak RSS MiB {spread([r['rss_mib'] for r in runs])}")  # fmt: skip
    for peer in names[1:]:
        fps = [r["vidpipe"]["fps"] / r[peer]["fps"] for r in rounds]
        rss = [r["vidpipe"]["rss_mib"] / r[peer]["rss_mib"] for r in rounds]
        print(f"vidpipe / {peer}: fps {spread(fps)}  peak RSS {spread(rss)}  ({args.repeats} interleaved rounds)")


if __name__ == "__main__":
    main()
