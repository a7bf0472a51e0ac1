"""Turn the model section of a config into an engine and the stages around it."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from engines.base import CudaEngine, Engine, FaultInjectable
from engines.errors import InferenceError, ModelError
from engines.faults import FaultyEngine
from engines.spec import EngineSpec, OnnxRuntimeSpec, TensorRTSpec, build_engine
from pipeline.assets import DEFAULT_MODEL
from pipeline.config import FaultConfig, InferConfig, ModelConfig, TensorRTModelConfig
from stages import gpu_candidates
from stages.bindings import TensorBindings
from stages.labels import load_names
from stages.layouts import detect_head
from stages.output_check import layout_check
from stages.postprocess import Postprocess
from stages.preprocess import STRIDE, run_input_size

log = logging.getLogger("vidpipe.model")

DEFAULT_IMGSZ = 640  # Ultralytics' default export size, for a dynamic model that does not say


def engine_spec(config: ModelConfig) -> EngineSpec:
    """The config's model section as an engine spec: plain values that engines/ builds, here or
    in a worker process (engines/spec.py)."""
    path = config.path or DEFAULT_MODEL
    if isinstance(config, TensorRTModelConfig):
        return TensorRTSpec(path, config.precision, config.engine_cache)
    threads = 1 if config.intra_op_threads is None else config.intra_op_threads  # runtime/assemble.py sizes it first
    providers = tuple(p if isinstance(p, str) else (p.name, dict(p.options)) for p in config.providers)
    return OnnxRuntimeSpec(path, providers, threads)


def open_engine(config: ModelConfig) -> Engine:
    """The engine in this process. Raises ModelError."""
    return build_engine(engine_spec(config))


def open_isolated_engine(config: ModelConfig, infer: InferConfig) -> Engine:
    """The engine in a supervised worker process, which builds it from the same spec."""
    from engines.process import ProcessEngine

    return ProcessEngine(
        engine_spec(config),
        max_restarts=infer.max_restarts,
        restart_window_s=infer.restart_window_s,
    )


@dataclass
class Model:
    """An engine, its tensor bindings, the postprocess stage and the probe reference."""

    engine: Engine
    bindings: TensorBindings
    postprocess: Postprocess
    reference: dict[str, np.ndarray]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.bindings.input_size


def reference_outputs(engine: Engine, bindings: TensorBindings, timeout: float = 60.0) -> dict[str, np.ndarray]:
    """Run the probe once on a fresh context: proves the model runs and records what healthy looks like."""
    context = engine.create_context()
    try:
        return context.infer(bindings.probe_inputs(), timeout)
    except InferenceError as err:
        raise ModelError(
            f"model {engine.name}: a test inference failed ({err}); check the model runs on this backend"
        ) from None
    finally:
        context.close()


def load_model(
    config: ModelConfig,
    faults: FaultConfig | None = None,
    infer: InferConfig | None = None,
    source_sizes: list[tuple[int, int]] | None = None,
) -> Model:
    """The engine, its bindings and postprocess. `source_sizes` ((width, height) of each source) choose the
    rectangle a model with dynamic height and width runs at (stages/preprocess.run_input_size)."""
    isolated = infer is not None and infer.isolation == "process"
    engine = open_isolated_engine(config, infer) if isolated else open_engine(config)
    try:
        bindings = TensorBindings(engine, _wanted_size(engine, config.imgsz, source_sizes or []))
        reference = reference_outputs(engine, bindings)
        output = engine.outputs[0]
        # The probe's output has the real shape: a dynamic model's anchor count follows its input size.
        shape = (output.shape[0], *reference[output.name].shape[1:])
        # Where the shape fits two layouts, the values of this real output tell them apart.
        sample = np.asarray(reference[output.name])[0]
        head = detect_head(shape, bindings.input_size, config.layout, engine.metadata, sample)
        names = load_names(engine.metadata, config.labels, head.num_classes)
        post = Postprocess(
            shape,
            bindings.input_size,
            names,
            layout=head,
            conf=config.conf,
            iou=config.iou,
            classes=config.classes,
        )
        bindings.check = layout_check(output.name, head, config.conf)
        bindings.gpu_planes = config.gpu_letterbox and _letterboxes_on_gpu(engine)
        if bindings.gpu_planes and config.gpu_candidates and gpu_candidates.applies(head, len(engine.outputs)):
            if gpu_candidates.available():
                bindings.gpu_candidates = gpu_candidates.GpuCandidates(output.name, head)
    except ModelError as err:
        engine.close()
        message = str(err)
        raise ModelError(message if message.startswith("model ") else f"model {engine.name}: {message}") from None
    except Exception:
        engine.close()
        raise
    if faults is not None and faults.active:
        # After the reference: faults must not spoil what healthy looks like.
        if isinstance(engine, FaultInjectable):
            engine.inject_faults(faults)  # in the worker, where a crash or a poisoned process belongs
        else:
            engine = FaultyEngine(engine, faults)
    return Model(engine, bindings, post, reference)


def _letterboxes_on_gpu(engine: Engine) -> bool:
    """A CUDA engine in this process letterboxes on the GPU when CuPy can compile the kernel."""
    if not isinstance(engine, CudaEngine) or engine.cuda_options is None:
        return False  # CPU engines, and engines in a worker process (their inputs cross as host memory)
    from stages import gpu_preprocess

    return gpu_preprocess.available()


def _wanted_size(engine: Engine, imgsz: int | None, source_sizes: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The (width, height) asked of the model: --imgsz as a square, else for a model with dynamic
    height and width the rectangle fitting the sources at its nominal size (its `imgsz` metadata,
    as Ultralytics writes it, else 640); None lets a fixed-size model use its own."""
    shape = engine.inputs[0].shape if engine.inputs else ()
    fixed = len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int)
    if fixed:
        return None if imgsz is None else (imgsz, imgsz)  # TensorBindings rejects a size the model is not
    stride = engine.metadata.get("stride", "")
    stride = int(stride) if stride.isdigit() and int(stride) > 0 else STRIDE
    if imgsz is None:
        return run_input_size(source_sizes, _nominal_size(engine.metadata.get("imgsz")), stride)
    largest = engine.metadata.get("max_imgsz", "")
    if largest.isdigit() and imgsz > int(largest):
        raise ModelError(
            f"model {engine.name}: --imgsz {imgsz} is above the {largest} it runs at most; "
            f"give --imgsz {largest} or less"
        )
    size = run_input_size([], (imgsz, imgsz), stride, rect=False)
    if size != (imgsz, imgsz):
        log.warning("--imgsz %d is not a multiple of the model's stride %d: running at %d", imgsz, stride, size[0])
    return size


def _nominal_size(imgsz: str | None) -> tuple[int, int]:
    """(width, height) from Ultralytics' `imgsz` metadata ("[640, 640]", height first), else 640x640."""
    numbers = [int(n) for n in re.findall(r"\d+", imgsz or "")]
    if len(numbers) == 2:
        return numbers[1], numbers[0]
    return (numbers[0], numbers[0]) if len(numbers) == 1 else (DEFAULT_IMGSZ, DEFAULT_IMGSZ)
