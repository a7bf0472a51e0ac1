"""The config's `model:` section: settings every backend shares, and each backend's own, as a
pydantic discriminated union on `backend` (onnxruntime when absent).

pipeline/runtime/model.py turns a validated section into an engine spec (engines/spec.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from pipeline.config.sections import MAX_THREADS, StrictModel


class ProviderConfig(StrictModel):
    """One ONNX Runtime execution provider with its options (ORT's provider_options)."""

    name: str = Field(description="e.g. CUDAExecutionProvider")
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)


class ModelCommon(StrictModel):
    """What every backend takes: the model file, how to read its output, and the thresholds."""

    path: Path | None = Field(None, description="ONNX model; the embedded default when absent.")
    layout: Literal["auto", "yolov8", "yolov5", "yolox", "e2e"] = "auto"
    imgsz: int | None = Field(
        None,
        ge=32,
        le=4096,
        description="A square model input of this size for a model with dynamic height and width; "
        "none: the smallest stride-aligned rectangle that fits the sources at the model's nominal size.",
    )
    labels: Path | None = Field(None, description="Class names, one per line.")
    conf: float = Field(0.25, ge=0.0, le=1.0)
    iou: float = Field(0.45, ge=0.0, le=1.0)
    classes: list[str] | None = Field(None, description="Keep only these labels.")
    gpu_letterbox: bool = Field(
        True, description="GPU engines letterbox on the GPU from the decoded planes (CuPy); false: on the CPU."
    )
    gpu_candidates: bool = Field(
        True,
        description="With gpu_letterbox, a YOLOv8/YOLO11 head's scores become candidate rows on the GPU "
        "(stages/gpu_candidates.py), so 1/14 of the output crosses to the host; false: the whole output.",
    )

    @model_validator(mode="before")
    @classmethod
    def _unset_is_absent(cls, data: Any) -> Any:
        """Another backend's setting left at null (configs/default.yaml lists them all) is as
        good as absent; one that is set stays, and fails as not this backend's."""
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items() if v is not None or k in cls.model_fields or k not in _BACKEND_FIELDS}


class OnnxRuntimeModelConfig(ModelCommon):
    """`backend: onnxruntime` (the default): ONNX Runtime with these execution providers."""

    backend: Literal["onnxruntime"] = "onnxruntime"
    intra_op_threads: int | None = Field(
        None, ge=0, le=MAX_THREADS,
        description="ONNX Runtime threads per inference; none: usable CPUs / contexts (pipeline/runtime/sizing.py).",
    )  # fmt: skip
    providers: list[str | ProviderConfig] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference: names, or {name, options}.",
    )

    @property
    def provider_names(self) -> list[str]:
        return [p if isinstance(p, str) else p.name for p in self.providers]


class TensorRTModelConfig(ModelCommon):
    """`backend: tensorrt`: an engine file, or an ONNX model built into the engine cache."""

    backend: Literal["tensorrt"]
    precision: Literal["fp32", "fp16", "int8"] | None = Field(
        None, description="TensorRT: the precision to build at; none: the ONNX model's own."
    )
    engine_cache: Path | None = Field(None, description="TensorRT engine cache (default ~/.cache/vidpipe/engines).")


_BACKEND_FIELDS = set(OnnxRuntimeModelConfig.model_fields) | set(TensorRTModelConfig.model_fields)


def backend(data: Any) -> str | None:
    """The tag of a `model:` section (a mapping or a validated section): its `backend`, onnxruntime
    when absent. Named after the field it reads: a bad tag's error names it (config/messages.py)."""
    if isinstance(data, dict):
        return data.get("backend", "onnxruntime")
    return dict(data).get("backend") if isinstance(data, BaseModel) else None


ModelConfig = Annotated[
    Annotated[OnnxRuntimeModelConfig, Tag("onnxruntime")] | Annotated[TensorRTModelConfig, Tag("tensorrt")],
    Discriminator(backend),
]
