"""Prepare an ONNX model for a precision, on the CPU, before TensorRT sees it.

TensorRT 11 builds strongly typed networks only (and vidpipe asks TensorRT 10 for the
same), so reduced precision must be written into the ONNX itself:
- fp16: the float tensors and weights become float16 (onnxconverter-common), with the
  model's inputs and outputs kept float32 so callers feed and read the same arrays;
- int8: explicit QuantizeLinear/DequantizeLinear pairs from ONNX Runtime's static
  quantization, calibrated on real frames, in the form TensorRT accepts.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from engines.errors import ModelError

log = logging.getLogger("vidpipe.prepare")

PRECISIONS = ("fp32", "fp16", "int8")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# TensorRT's recommended Q/DQ placement: quantize the inputs of weighted layers and let it
# fuse the rest; the outputs (box coordinates, scores) stay in float.
QUANTIZED_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]


def load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except FileNotFoundError:
        raise ModelError(f"model {path} does not exist; check the path") from None
    except Exception as err:  # onnx raises DecodeError and friends
        raise ModelError(f"model {path} is not a readable ONNX file ({err}); re-export it") from None


def detect_precision(model: onnx.ModelProto) -> str:
    """fp32, fp16 or int8 (explicit Q/DQ), as a model's graph shows it."""
    graph = model.graph
    if any(node.op_type in QDQ_OPS for node in graph.node):
        return "int8"
    half = onnx.TensorProto.FLOAT16
    if any(t.data_type == half for t in graph.initializer) or any(
        node.op_type == "Cast" and any(a.name == "to" and a.i == half for a in node.attribute)
        for node in graph.node
    ):
        return "fp16"
    return "fp32"


def prepare_fp16(onnx_in: Path, onnx_out: Path) -> Path:
    """Convert float32 weights and activations to float16; inputs and outputs stay float32."""
    from onnxconverter_common import float16

    model = load(onnx_in)
    if detect_precision(model) != "fp32":
        raise ModelError(
            f"model {onnx_in} is already {detect_precision(model)}; convert its fp32 original instead"
        )
    _name_nodes(model)
    # The converter retypes tensors but not a Cast's `to`: casts to float stay float nodes.
    float_casts = [
        node.name
        for node in model.graph.node
        if node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)
    ]
    with warnings.catch_warnings(record=True) as caught:
        # One warning per tiny or huge weight clamped to fp16's range: count, don't flood.
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=float_casts)
    if caught:
        log.info("fp16: %d values of %s clamped to the fp16 range", len(caught), onnx_in)
    onnx.checker.check_model(converted)
    onnx.save(converted, str(onnx_out))
    return Path(onnx_out)


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes unique names: the converter names its casts after the nodes they feed."""
    taken = {node.name for node in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


class _Frames:
    """ONNX Runtime's CalibrationDataReader over an iterable of input batches."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches: Iterator[np.ndarray] = iter(batches)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        self.count += 1
        return {self.input_name: np.ascontiguousarray(batch, np.float32)}


def prepare_int8(onnx_in: Path, onnx_out: Path, calibration_batches: Iterable[np.ndarray]) -> Path:
    """Insert int8 Q/DQ nodes, ranges calibrated on `calibration_batches` (NCHW float32).

    Symmetric activations and weights (TensorRT needs zero points of 0), per-channel
    weights, biases left in float (TensorRT dequantizes int8, not the int32 ORT would use).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = load(onnx_in)
    if detect_precision(model) != "fp32":
        raise ModelError(
            f"model {onnx_in} is already {detect_precision(model)}; quantize its fp32 original instead"
        )
    if not any(node.op_type in QUANTIZED_OPS for node in model.graph.node):
        raise ModelError(
            f"model {onnx_in} has no Conv, Gemm or MatMul layer to quantize; build it as fp16 instead"
        )
    if len(model.graph.input) != 1:
        raise ModelError(f"model {onnx_in} has {len(model.graph.input)} inputs; vidpipe models take one image batch")
    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None:
        raise ModelError("int8 calibration got no frames; point --calib at a video or a folder of images")
    reader = _Frames(model.graph.input[0].name, itertools.chain([first], batches))
    with tempfile.TemporaryDirectory(prefix="vidpipe-int8-") as tmp:
        # Shape inference and constant folding first, as ONNX Runtime recommends, so
        # every tensor the quantizer looks at has a known shape.
        inferred = Path(tmp) / "inferred.onnx"
        quant_pre_process(str(onnx_in), str(inferred), skip_symbolic_shape=True)
        quantize_static(
            str(inferred),
            str(onnx_out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS,
            },
        )
    log.info("int8: calibrated %s on %d batches", onnx_in, reader.count)
    quantized = load(Path(onnx_out))
    # The pre-processing step declares every ONNX Runtime domain; keep the ones used.
    used = {node.domain for node in quantized.graph.node}
    kept = [o for o in quantized.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del quantized.opset_import[:]
    quantized.opset_import.extend(kept)
    onnx.checker.check_model(quantized)
    onnx.save(quantized, str(onnx_out))
    return Path(onnx_out)


def prepare(
    onnx_in: Path, onnx_out: Path, precision: str, calibration_batches: Iterable[np.ndarray] | None = None
) -> Path:
    """Write the model for `precision` to `onnx_out` (fp32 is copied unchanged)."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp16":
        return prepare_fp16(onnx_in, onnx_out)
    if precision == "int8":
        if calibration_batches is None:
            raise ModelError("int8 needs calibration frames; pass --calib VIDEO_OR_DIR")
        return prepare_int8(onnx_in, onnx_out, calibration_batches)
    load(onnx_in)
    shutil.copyfile(onnx_in, onnx_out)
    return Path(onnx_out)
