"""`vidpipe bench`: each stage alone and the whole pipeline, measured in one run.

Stage-alone figures use the same file, model and settings as the pipeline run, so
their ratios hold on a shared machine where absolute times do not. Memory stays
bounded: stages alone hold at most BENCH_FRAMES frames (uint8 after preprocessing),
and pipeline runs respect --max-frames like `vidpipe run`. Compared figures (decode
against raw decode, with faults against without) take turns and are repeated; their
median, min and max are printed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
from rich.console import Console
from rich.table import Table

from pipeline.api import run
from pipeline.config import RunConfig
from pipeline.runtime.assemble import load_sized_model, size_for_model
from pipeline.runtime.model import Model, open_isolated_engine
from pipeline.runtime.sizing import CPU_MAX_BATCH
from stages.decode import VideoDecoder
from stages.preprocess import Preprocess
from stages.types import Frame


def _fps(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _timed(fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    count = fn()
    return _fps(count, time.perf_counter() - start)


BENCH_FRAMES = 120  # stage-alone runs hold this many frames at most (--max-frames lowers it)
REPEATS = 3  # interleaved repeats of each compared measurement


def raw_decode_fps(path: str, limit: int) -> float:
    """Decoding alone, frames left in FFmpeg's buffers: the first `limit` frames."""

    def decode() -> int:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            return sum(1 for _, _ in zip(range(limit), container.decode(stream)))

    return _timed(decode)


def decode_frames(
    path: str, model: Model, deadline_s: float, limit: int, keep: bool = True
) -> tuple[list[Frame], float]:
    """The first `limit` frames as the pipeline decodes them: copied out as I420 planes (and
    converted to yuv420p BT.601 first where the source is not), and the fps. Scaling and RGB
    conversion are preprocessing's, measured there. `keep=False` times decoding as the
    pipeline and raw decoding run it, each frame let go once passed on: keeping 120 fresh
    full-size frames would time the page faults of new memory instead."""
    frames: list[Frame] = []

    def decode() -> int:
        decoder = VideoDecoder("bench", path, deadline_s)
        count = 0
        for item in decoder:
            if isinstance(item, Frame):
                count += 1
                if keep:
                    frames.append(item)
                if count >= limit:
                    break
        decoder.close()
        return count

    return frames, _timed(decode)


def decode_ratio(path: str, model: Model, deadline_s: float, limit: int) -> tuple[float, float, list[float]]:
    """Raw decode fps, decode-with-conversion fps (medians) and their per-round ratios,
    taking turns so a busy machine slows both alike."""
    raw, converted, ratios = [], [], []
    measures = [lambda: raw.append(raw_decode_fps(path, limit)),
                lambda: converted.append(decode_frames(path, model, deadline_s, limit, keep=False)[1])]
    for i in range(REPEATS):
        for measure in measures if i % 2 == 0 else measures[::-1]:
            measure()
        ratios.append(converted[-1] / raw[-1])
    return statistics.median(raw), statistics.median(converted), ratios


def preprocess_all(pre: Preprocess, frames: list[Frame], keep: bool) -> int:
    """Letterbox every frame. Timed without keeping the tensors: holding hundreds of fresh ones
    would time page faults, which the pipeline (a few tensors in flight, memory reused) never pays."""
    for frame in frames:
        pre(frame)
        if not keep:
            frame.tensor = None
    return len(frames)


def infer_fps(model: Model, frames: list[Frame], contexts: int, batch: int) -> float:
    """The contexts at full speed over pre-made batches, one thread each, as the scheduler runs them."""
    batch = model.bindings.max_batch(batch)
    batches = [frames[i : i + batch] for i in range(0, len(frames), batch)]
    todo = iter(batches)
    lock = threading.Lock()

    def work() -> None:
        context = model.engine.create_context()
        while True:
            with lock:
                chunk = next(todo, None)
            if chunk is None:
                break
            model.bindings.split(chunk, context.infer(model.bindings.inputs(chunk, context), 60.0))
        context.close()

    def all_contexts() -> int:
        threads = [threading.Thread(target=work) for _ in range(contexts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(frames)

    return _timed(all_contexts)


def isolation_overhead(config: RunConfig, model: Model, frames: list[Frame], rounds: int = 200) -> dict[str, float]:
    """Per-batch time in-process and through the worker process, one context each, taking
    turns over the same batches so a busy machine slows both alike. A batch is what the
    scheduler does: stack the frames (into the worker's shared memory when it runs there)
    and infer."""
    batch = model.bindings.max_batch(config.infer.max_batch or CPU_MAX_BATCH)
    batches = [frames[i : i + batch] for i in range(0, len(frames) - batch + 1, batch)]
    worker = open_isolated_engine(config.model, config.infer)
    contexts = {"in-process": model.engine.create_context(), "worker process": worker.create_context()}
    times: dict[str, list[float]] = {name: [] for name in contexts}

    def one(name: str, chunk: list[Frame]) -> None:
        context = contexts[name]
        start = time.perf_counter()
        context.infer(model.bindings.inputs(chunk, context), 60.0)
        times[name].append(time.perf_counter() - start)

    try:
        for i in range(rounds + 10):
            order = list(contexts) if i % 2 else list(contexts)[::-1]
            for name in order:
                one(name, batches[i % len(batches)])
    finally:
        for context in contexts.values():
            context.close()
        worker.close()
    local, remote = (1000 * statistics.median(t[10:]) for t in times.values())
    return {
        f"batch {batch} ms in-process (median)": local,
        f"batch {batch} ms in the worker process (median)": remote,
        "worker overhead per batch %": 100 * (remote - local) / local,
    }


STAGE_FIGURES = (
    "decode fps (to I420 planes)", "preprocess fps (to RGB, letterbox)", "inference fps", "postprocess fps"
)


def stages_alone(config: RunConfig, path: Path, model: Model) -> dict[str, float]:
    """Each stage's fps on its own, on the first BENCH_FRAMES frames (or --max-frames). The
    frames and tensors it holds for that are released when it returns."""
    limit = min(config.max_frames or BENCH_FRAMES, BENCH_FRAMES)
    deadline_s = config.deadline_ms / 1000
    raw, decode, ratios = decode_ratio(str(path), model, deadline_s, limit)
    frames, _ = decode_frames(str(path), model, deadline_s, limit)
    pre = Preprocess(model.input_size)
    preprocess = _timed(lambda: preprocess_all(pre, frames, keep=False))
    preprocess_all(pre, frames, keep=True)
    infer = infer_fps(model, frames, config.infer.contexts, config.infer.max_batch or CPU_MAX_BATCH)
    postprocess = _timed(lambda: sum(1 for f in frames if model.postprocess(f)))
    figures = {"raw decode fps": raw, **dict(zip(STAGE_FIGURES, (decode, preprocess, infer, postprocess)))}
    figures.update(_spread("decode / raw decode", ratios))
    if config.infer.isolation == "process":
        figures.update(isolation_overhead(config, model, frames))
    return figures


def _spread(name: str, values: list[float]) -> dict[str, float]:
    return {f"{name} (median)": statistics.median(values), f"{name} (min)": min(values), f"{name} (max)": max(values)}


def bench(config: RunConfig, path: Path, faults: dict | None) -> dict[str, float | None]:
    """Stages alone, then whole-pipeline runs. With `faults`, runs with and without them take
    turns (clean, faulty, faulty, clean, ...) REPEATS times each, so neither is the cold one;
    fps counts frames that ended ok."""
    config, model = load_sized_model(config, [_source_size(path)], bare=True)
    config, _ = size_for_model(config, len(config.sources), model)
    alone = stages_alone(config, path, model)
    input_size, batch = model.input_size, model.bindings.max_batch(config.infer.max_batch or CPU_MAX_BATCH)
    model.engine.close()
    del model
    gc.collect()
    base = config.model_copy(update={"sources": [config.sources[0]], "progress": False})
    faulty_config = base.model_copy(update={"faults": base.faults.model_copy(update=faults or {})})
    clean, faulty = [], []
    for i in range(REPEATS if faults else 1):
        order = [(base, clean), (faulty_config, faulty)] if faults else [(base, clean)]
        for run_config, runs in order if i % 2 == 0 else order[::-1]:
            runs.append(run(run_config))
            gc.collect()
    slowest = min(alone[k] for k in STAGE_FIGURES)
    clean_fps = statistics.median(s.fps for s in clean)
    figures: dict[str, float | None] = {"input width": input_size[0], "input height": input_size[1], **alone}
    figures["frames per pipeline run"] = clean[0].frames
    figures["pipeline runs"] = len(clean) + len(faulty)
    figures["pipeline fps (ok frames)"] = clean_fps
    figures["pipeline fps (processed)"] = statistics.median(s.processed_fps for s in clean)
    figures["first result s"] = statistics.median(s.first_result_s or 0.0 for s in clean)
    figures["pipeline / slowest stage"] = clean_fps / slowest
    if faults:
        inf = faulty[-1].inference
        figures["pipeline fps with faults (ok frames)"] = statistics.median(s.fps for s in faulty)
        figures["pipeline fps with faults (processed)"] = statistics.median(s.processed_fps for s in faulty)
        figures.update(_spread("with faults / without", [f.fps / c.fps for f, c in zip(faulty, clean) if c.fps]))
        figures["ok with faults"] = sum(s.ok for s in faulty) / max(1, sum(s.frames for s in faulty))
        for key in ("rebuild_ms_p50", "rebuild_ms_p99", "recovery_ms_p50", "recovery_ms_p99",
                    "recovery_overhead_ms_p50", "recovery_overhead_ms_p99"):
            figures[key.replace("_ms_", " ms ").replace("_", " ")] = getattr(inf, key)
        if inf.worker_restarts:
            figures["worker restarts"] = inf.worker_restarts
            figures["worker restart ms p50"] = inf.worker_restart_ms_p50
            figures["worker restart ms p99"] = inf.worker_restart_ms_p99
        infer = alone["inference fps"]
        figures["inference ms per batch (mean)"] = 1000 / infer * batch if infer else None
    return figures


def _source_size(path: Path) -> tuple[int, int]:
    decoder = VideoDecoder("bench", str(path), 1.0)
    decoder.close()
    return decoder.info.width, decoder.info.height


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.cli.run import add_run_arguments

    add_run_arguments(parser)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.api import source_configs
    from pipeline.cli.run import config_from_args
    from pipeline.config import parse_key_values

    faults_text, args.faults = args.faults, None
    config = config_from_args(args)
    source = source_configs(config)[0]
    config = config.model_copy(update={"sources": [source]})
    faults = None
    if faults_text:
        pairs = parse_key_values(faults_text, "--faults").items()
        faults = {k: float(v) if k != "seed" else int(v) for k, v in pairs}
    figures = bench(config, Path(source.url), faults)
    table = Table(title=f"vidpipe bench: {Path(source.url).name}, model {config.model.path or 'default'}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, "-" if value is None else f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}")
    Console().print(table)
    return 0


__all__ = ["add_bench_arguments", "cmd_bench", "bench"]


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add `vidpipe bench` to the command line (pipeline/cli/main.py calls it)."""
    parser = sub.add_parser(name, help=help)
    add_bench_arguments(parser)
    parser.set_defaults(func=cmd_bench)
