"""Defaults sized to the host: what a run uses when the config leaves a knob on auto.

Every value here can be set by flag or config; a field left unset (None) is sized from the
CPUs this process may use (`os.sched_getaffinity`, so a container's or taskset's limit counts)
and from the device the engine runs on:

- ONNX Runtime threads per context = usable CPUs // contexts (at least 1). With one thread
  per context on a 16-core host, inference used 2 of 16 cores (19 fps); with the cores split
  between the contexts it used them all (51 fps) — measured on the lent GPU machine's CPU.
- Largest batch on the CPU: measured. The contexts start at batch 1, and the first one's
  warm-up also times calls at batches 2 and 4 (`CPU_CANDIDATE_BATCHES`); the fastest call per
  batch, plus what the pipeline spends per batch besides the call (`BATCH_OVERHEAD_S`), gives a
  time per frame, and a larger batch is chosen only when its time per frame is at least 15%
  below batch 1's (`choose_batch`). With a detector-sized model it seldom is (issue 18: batch 1
  was 1.09x faster than 4 with 320 MB less); with a model as small as the default, the
  pipeline's own cost per batch makes batching pay. A chosen batch B > 1 runs as that one shape (a partial batch
  is padded to B), so a context still warms one shape, as at batch 1. The summary's `sizing`
  reports the choice (`batch_rule`) and the figures behind it (`batch_ms_per_frame`). On a GPU:
  16, where throughput keeps rising with the batch
  (MEASUREMENTS.md: 274 fps at 1, 2,773 at 16 with IO binding). `vidpipe bench`, which does not
  warm contexts this way, uses batch 1 on the CPU.
- Batch shapes: every size up to the largest batch on the CPU (padding costs compute there);
  powers of two and the largest on a GPU (each shape is warmed and tuned once per context).
- Preprocess workers (they scale and colour-convert each frame's planes): one per source, at
  least 2, at most the usable CPUs; 2 when a GPU engine letterboxes on the device (they then
  only compute each frame's geometry, and every idle thread still competes for the GIL).
  Postprocess workers: one per four CPUs, at least 1, at most one per source.
- ONNX Runtime threads on a GPU: 1 per context (the CUDA provider runs the model on the
  device; more CPU threads only spin).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

from pipeline.config import OnnxRuntimeModelConfig, RunConfig, TensorRTModelConfig

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
CPU_MAX_BATCH = 1  # the CPU's batch where none was measured (vidpipe bench)
GPU_MAX_BATCH = 16
CPU_CANDIDATE_BATCHES = (2, 4)  # measured once against batch 1 on the CPU when the batch is left on auto
BATCH_GAIN = 0.15  # a larger batch must cut the time per frame by this much to be chosen
# What a batch costs the pipeline besides its inference call alone (taking it from the queue,
# stacking, the output check, splitting, the handoffs between threads and the contention they
# meet), seconds. Measured on the 2-core machine with the default model on the car clip (4
# interleaved rounds): a whole run took 1.55-1.76 s at batch 1 and 1.33-1.58 s at batch 4,
# though alone a call costs 1.6 ms a frame at batch 1 and 2.0 ms at 4; in the run a batch-1
# call took 4.5-5.5 ms (p50).
BATCH_OVERHEAD_S = 0.0015


def usable_cpus() -> int:
    """CPUs this process may run on (affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def on_gpu(config: RunConfig) -> bool:
    model = config.model
    return isinstance(model, TensorRTModelConfig) or any(p in GPU_PROVIDERS for p in model.provider_names)


def batch_shapes(max_batch: int, gpu: bool) -> tuple[int, ...]:
    """The batch sizes a run pads its batches to (see module docstring)."""
    if not gpu and max_batch <= 8:
        return tuple(range(1, max_batch + 1))
    shapes = {1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch}
    return tuple(sorted(shapes | {max_batch}))


def choose_batch(call_s: dict[int, float], gain: float = BATCH_GAIN, overhead_s: float = BATCH_OVERHEAD_S) -> int:
    """The batch to run at, from measured seconds per call at each batch size.

    The batch with the lowest time per frame ((call time + `overhead_s`, what the pipeline
    spends per batch besides the call) / batch) among those at least `gain` (a fraction) below
    batch 1's; 1 when none is, or batch 1 was not measured.
    """
    if not call_s.get(1, 0) > 0:
        return 1
    base = call_s[1] + overhead_s
    per_frame = {
        batch: (seconds + overhead_s) / batch for batch, seconds in call_s.items() if batch > 1 and seconds > 0
    }
    better = {batch: t for batch, t in per_frame.items() if t <= (1 - gain) * base}
    return min(better, key=lambda batch: (better[batch], batch)) if better else 1


@dataclass(frozen=True)
class Sizing:
    """What this run uses, after auto values were sized; in the summary as `sizing`."""

    cpus: int
    device: str
    contexts: int
    intra_op_threads: int
    max_batch: int
    batch_shapes: tuple[int, ...]
    preprocess_workers: int
    postprocess_workers: int
    # How max_batch was set: "config" (flag or config), "gpu" (the GPU default), "measure" (CPU:
    # to be chosen from the warm-up's calls, see `measured`), "measured" (chosen), "model" (the
    # model's fixed batch).
    batch_rule: str = "config"
    batch_candidates: tuple[int, ...] = ()  # batches measured against batch 1 (rule "measure")
    batch_ms_per_frame: dict[str, float] = field(default_factory=dict)  # per batch size, when measured
    input_size: tuple[int, int] | None = None  # the model's input (width, height) this run letterboxes to

    def describe(self) -> str:
        return (
            f"{self.cpus} CPUs, {self.device}: "
            + (f"input {self.input_size[0]}x{self.input_size[1]}, " if self.input_size else "")
            + f"{self.contexts} contexts x {self.intra_op_threads} "
            f"ONNX Runtime threads, {self._batch_words()}, "
            f"{self.preprocess_workers} preprocess / {self.postprocess_workers} postprocess workers"
        )

    def _batch_words(self) -> str:
        if self.batch_rule == "measure":
            return f"batch measured at start (1 against {', '.join(map(str, self.batch_candidates))})"
        return f"batch up to {self.max_batch} (shapes {list(self.batch_shapes)}, {self.batch_rule})"

    def measured(self, call_s: dict[int, float]) -> Sizing:
        """This sizing with the batch chosen from `call_s` (fastest seconds per call by batch
        size, from the warm-up); only while `batch_rule` is "measure", else unchanged."""
        if self.batch_rule != "measure":
            return self
        if 1 not in call_s:  # a model with a fixed batch: it runs at that batch
            fixed = max(call_s, default=1)
            return replace(self, max_batch=fixed, batch_shapes=(fixed,), batch_rule="model", batch_candidates=())
        batch = choose_batch(call_s)
        return replace(
            self,
            max_batch=batch,
            batch_shapes=(batch,),
            batch_rule="measured",
            batch_ms_per_frame={str(b): round(s / b * 1000, 3) for b, s in sorted(call_s.items())},
        )

    def as_dict(self) -> dict:
        shapes, candidates = list(self.batch_shapes), list(self.batch_candidates)
        return {**asdict(self), "batch_shapes": shapes, "batch_candidates": candidates}


def engine_threads(config: RunConfig) -> int:
    """ONNX Runtime threads per context: the config's, else sized to the host (module docstring)."""
    model = config.model
    if isinstance(model, OnnxRuntimeModelConfig) and model.intra_op_threads is not None:
        return model.intra_op_threads
    return 1 if on_gpu(config) else max(1, usable_cpus() // config.infer.contexts)


def size_engine(config: RunConfig) -> RunConfig:
    """The config with what must be sized before the model loads filled in: the engine's ONNX
    Runtime threads, fixed when it is built. `size_run` sizes the rest once the model is known
    (pipeline/runtime/assemble.py does both)."""
    model = config.model
    if not isinstance(model, OnnxRuntimeModelConfig):
        return config
    return config.model_copy(update={"model": model.model_copy(update={"intra_op_threads": engine_threads(config)})})


def size_run(config: RunConfig, sources: int, letterbox_on_gpu: bool = False) -> tuple[RunConfig, Sizing]:
    """The config with every auto value filled in, and what was chosen. `letterbox_on_gpu`:
    the engine letterboxes on the device (stages/gpu_preprocess.py)."""
    cpus = usable_cpus()
    gpu = on_gpu(config)
    infer, model, queues = config.infer, config.model, config.queues
    contexts = infer.contexts
    ort = isinstance(model, OnnxRuntimeModelConfig)
    threads = engine_threads(config)
    rule = "config" if infer.max_batch or infer.batch_shapes else ("gpu" if gpu else "measure")
    max_batch = infer.max_batch or (GPU_MAX_BATCH if gpu else CPU_MAX_BATCH)
    shapes = tuple(sorted(set(infer.batch_shapes))) if infer.batch_shapes else batch_shapes(max_batch, gpu)
    if shapes[-1] < max_batch:
        shapes = (*shapes, max_batch)
    workers = max(1, min(cpus // 4, sources))
    pre_workers = 2 if letterbox_on_gpu else max(2, min(sources, cpus))
    sizing = Sizing(
        cpus=cpus,
        device="gpu" if gpu else "cpu",
        contexts=contexts,
        intra_op_threads=threads,
        max_batch=max_batch,
        batch_shapes=shapes,
        batch_rule=rule,
        batch_candidates=CPU_CANDIDATE_BATCHES if rule == "measure" else (),
        preprocess_workers=queues.preprocess_workers or pre_workers,
        postprocess_workers=queues.postprocess_workers or workers,
    )
    sized = config.model_copy(
        update={
            "model": model.model_copy(update={"intra_op_threads": threads}) if ort else model,
            "infer": infer if rule == "measure" else infer.model_copy(  # measure: left on auto
                update={"max_batch": max_batch, "batch_shapes": list(shapes)}
            ),
            "queues": queues.model_copy(
                update={
                    "preprocess_workers": sizing.preprocess_workers,
                    "postprocess_workers": sizing.postprocess_workers,
                }
            ),
        }
    )
    return sized, sizing
