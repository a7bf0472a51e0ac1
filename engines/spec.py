"""What to build an engine from, as plain picklable values, and `build_engine` that builds it.

An engine spec names the model file and one backend's settings, nothing else: no config
objects, no callables. So the inference worker process (engines/worker.py) can receive one,
rebuild the same engine after every restart, and never import `pipeline` or `stages`.
pipeline/runtime/model.py turns the config's `model:` section into a spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.base import Engine

# One ONNX Runtime execution provider: its name, or (name, provider options).
Provider = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class OnnxRuntimeSpec:
    """An ONNX Runtime engine (engines/onnxruntime.py): the .onnx file, execution providers in
    order of preference (names, or (name, options) pairs as ORT's provider_options), and the
    threads each inference may use (intra-op threads, >= 0; 0: ORT's own choice)."""

    path: Path
    providers: tuple[Provider, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 1

    # Modules a worker process imports to build this engine, loaded once by its fork server.
    preload: tuple[str, ...] = field(default=("numpy", "onnxruntime", "engines.onnxruntime"), repr=False)


@dataclass(frozen=True)
class TensorRTSpec:
    """A TensorRT engine (engines/tensorrt.py): an .engine/.plan file as is, or an ONNX model
    found in or built into `engine_cache` (None: ~/.cache/vidpipe/engines) at `precision`
    ("fp32", "fp16", "int8"; None: the model's own)."""

    path: Path
    precision: str | None = None
    engine_cache: Path | None = None

    preload: tuple[str, ...] = field(default=("numpy",), repr=False)  # TensorRT is imported on build


EngineSpec = OnnxRuntimeSpec | TensorRTSpec
ENGINE_SPECS = (OnnxRuntimeSpec, TensorRTSpec)


def build_engine(spec: EngineSpec) -> Engine:
    """Load the engine `spec` describes, in this process. Raises ModelError when it cannot
    (no such file, a provider this ONNX Runtime lacks, a TensorRT build that fails)."""
    if isinstance(spec, TensorRTSpec):
        from engines.tensorrt import open_tensorrt_engine  # lazy: TensorRT is optional

        return open_tensorrt_engine(spec.path, spec.precision, spec.engine_cache)
    if isinstance(spec, OnnxRuntimeSpec):
        from engines.onnxruntime import OnnxRuntimeEngine  # lazy: importing ONNX Runtime takes a while

        return OnnxRuntimeEngine(spec.path, providers=list(spec.providers), intra_op_threads=spec.intra_op_threads)
    raise TypeError(f"not an engine spec: {spec!r}")
