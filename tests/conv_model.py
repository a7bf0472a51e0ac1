"""A small convolutional colour-blob detector with fixed, seeded weights, built as ONNX.

No COCO model is available offline, and a network of purely random weights detects noise:
its scores hover at the threshold, so any rounding flips them and an agreement test says
nothing. This one is a real network of Conv+Relu layers whose weights are part designed,
part seeded-random: the first layer measures how far each colour channel beats the other
two, the strided layers average those maps (plus random channels), and each head level
runs a centre-surround filter, so a coloured object (the red car in car-detection.mp4)
lights up while asphalt does not. Every layer has real float weights for the fp16
converter and the int8 quantizer to work on; the head decodes boxes the YOLOv8 way,
[B, 4 + C, N], so vidpipe's Postprocess reads it like any exported detector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NUM_CLASSES = 3
NAMES = ["red", "green", "blue"]
INPUT_SIZE = (320, 320)  # width, height
STRIDES = (8, 16, 32)
COLOUR_MARGIN = 0.08  # how far a channel must beat the mean of the other two
# Class logit = GAIN * (centre-surround + MEAN_WEIGHT * mean colour margin) + BIAS. Kept
# moderate on purpose: a logit far past ~8 saturates an fp16 sigmoid to exactly 1.0, and
# ties then decide NMS by index instead of by score.
CLASS_GAIN = 3.0
MEAN_WEIGHT = 0.2
CLASS_BIAS = -1.5


class _Graph:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def const(self, value: np.ndarray, kind: str = "c") -> str:
        name = self.name(kind)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def random_weights(self, c_out: int, c_in: int, k: int, scale: float = 1.0) -> np.ndarray:
        return self.rng.normal(0.0, scale * np.sqrt(2.0 / (c_in * k * k)), (c_out, c_in, k, k)).astype(np.float32)

    def conv(self, x: str, w: np.ndarray, b: np.ndarray, stride: int = 1, relu: bool = True) -> str:
        k = w.shape[-1]
        y = self.op(
            "Conv",
            [x, self.const(w.astype(np.float32), "w"), self.const(b.astype(np.float32), "b")],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[k // 2] * 4,
        )
        return self.op("Relu", [y]) if relu else y


def _colour_layer(g: _Graph, c_out: int) -> tuple[np.ndarray, np.ndarray]:
    """3x3 stride-2 conv: channels 0..2 measure how far R, G, B beat the other two."""
    w = g.random_weights(c_out, 3, 3, scale=0.5)
    for c in range(NUM_CLASSES):
        opponent = np.full(3, -0.5, np.float32)
        opponent[c] = 1.0
        w[c] = opponent[:, None, None] / 9 + g.rng.normal(0, 0.005, (3, 3, 3))
    b = np.zeros(c_out, np.float32)
    b[:NUM_CLASSES] = -COLOUR_MARGIN
    return w, b


def _pool_layer(g: _Graph, c_in: int, c_out: int) -> tuple[np.ndarray, np.ndarray]:
    """3x3 stride-2 conv: channels 0..2 average their own colour map, the rest are random."""
    w = g.random_weights(c_out, c_in, 3, scale=0.5)
    w[:NUM_CLASSES] = g.rng.normal(0, 0.002, (NUM_CLASSES, c_in, 3, 3))
    for c in range(NUM_CLASSES):
        w[c, c] += np.float32(1 / 9) * 2  # x2 keeps the map's scale through the stride
    return w, np.zeros(c_out, np.float32)


def _head(g: _Graph, x: str, c_in: int, stride: int) -> str:
    """Centre-surround on each colour map (peaks at a blob of this level's size), then 1x1."""
    hidden = 32
    w = g.random_weights(hidden, c_in, 3, scale=0.3)
    w[: 2 * NUM_CLASSES] = g.rng.normal(0, 0.002, (2 * NUM_CLASSES, c_in, 3, 3))
    for c in range(NUM_CLASSES):
        w[c, c] += -1 / 8
        w[c, c, 1, 1] += 1 + 1 / 8
        w[NUM_CLASSES + c, c, 1, 1] += 1
    h = g.conv(x, w, np.zeros(hidden, np.float32))
    w = g.random_weights(4 + NUM_CLASSES, hidden, 1, scale=0.2)
    b = np.zeros(4 + NUM_CLASSES, np.float32)
    for c in range(NUM_CLASSES):
        w[4 + c] *= 0.05
        w[4 + c, c] += CLASS_GAIN
        w[4 + c, NUM_CLASSES + c] += CLASS_GAIN * MEAN_WEIGHT
        b[4 + c] = CLASS_BIAS
    return _decode(g, g.conv(h, w, b, relu=False), stride)


def _decode(g: _Graph, raw: str, stride: int) -> str:
    """[B, 4+C, h, w] head output -> [B, 4+C, h*w]: boxes (cx, cy, w, h) in pixels, scores."""
    width, height = INPUT_SIZE
    h, w = height // stride, width // stride
    flat = g.op("Reshape", [raw, g.const(np.array([0, 4 + NUM_CLASSES, h * w], np.int64))])
    one = g.const(np.array([1], np.int64))
    xy, wh, cls = (
        g.op("Slice", [flat, g.const(np.array([a], np.int64)), g.const(np.array([b], np.int64)), one])
        for a, b in ((0, 2), (2, 4), (4, 4 + NUM_CLASSES))
    )
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5])[None]  # [1, 2, h*w]
    centre = g.op("Mul", [g.op("Add", [g.op("Tanh", [xy]), g.const(grid)]), g.const(np.float32(stride))])
    size = g.op(
        "Mul", [g.op("Add", [g.op("Sigmoid", [wh]), g.const(np.float32(1.25))]), g.const(np.float32(2 * stride))]
    )
    return g.op("Concat", [centre, size, g.op("Sigmoid", [cls])], axis=1)


def build_conv_detector(seed: int = 7) -> onnx.ModelProto:
    """Five strided Conv+Relu layers and a three-level head: 3 -> 16 -> 32 -> 48 -> 64 -> 64."""
    width, height = INPUT_SIZE
    g = _Graph(seed)
    x = g.conv("images", *_colour_layer(g, 16), stride=2)  # 160x160
    x = g.conv(x, *_pool_layer(g, 16, 32), stride=2)        # 80x80
    p3 = g.conv(x, *_pool_layer(g, 32, 48), stride=2)       # 40x40, stride 8
    p4 = g.conv(p3, *_pool_layer(g, 48, 64), stride=2)      # 20x20, stride 16
    p5 = g.conv(p4, *_pool_layer(g, 64, 64), stride=2)      # 10x10, stride 32
    levels = [_head(g, p3, 48, 8), _head(g, p4, 64, 16), _head(g, p5, 64, 32)]
    g.op("Concat", levels, axis=2)
    g.nodes[-1].output[0] = "output0"
    n = sum((height // s) * (width // s) for s in STRIDES)
    graph = helper.make_graph(
        g.nodes,
        "conv_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + NUM_CLASSES, n])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="vidpipe-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_conv_detector(path: Path, **kwargs: object) -> Path:
    onnx.save(build_conv_detector(**kwargs), str(path))
    return path


def prepared_conv_models(directory: Path, calibration_clip: Path) -> dict[str, Path]:
    """The conv detector at fp32 and prepared for fp16 and int8 (calibrated on `calibration_clip`)."""
    from engines.prepare import prepare_fp16, prepare_int8
    from pipeline.cli.calibration import calibration_batches

    fp32 = save_conv_detector(directory / "conv.onnx")
    return {
        "fp32": fp32,
        "fp16": prepare_fp16(fp32, directory / "conv-fp16.onnx"),
        "int8": prepare_int8(fp32, directory / "conv-int8.onnx", calibration_batches(calibration_clip, INPUT_SIZE)),
    }
