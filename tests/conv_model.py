"""A small convolutional detector with fixed, seeded weights, built as ONNX for tests.

Real Conv layers with real (random but reproducible) weights give the fp16 converter and
the int8 quantizer something to convert; the head decodes boxes the YOLOv8 way, so the
output is [B, 4 + C, N] and vidpipe's Postprocess reads it like any exported detector.
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

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int, bias: float | np.ndarray = 0.0) -> str:
        fan_in = c_in * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (c_out, c_in, k, k)).astype(np.float32)
        b = (np.zeros(c_out, np.float32) + bias).astype(np.float32)
        pad = k // 2
        return self.op(
            "Conv",
            [x, self.const(w, "w"), self.const(b, "b")],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
        )

    def conv_relu(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1) -> str:
        return self.op("Relu", [self.conv(x, c_in, c_out, k, stride)])


def _decode(g: _Graph, raw: str, stride: int, width: int, height: int) -> str:
    """[B, 4+C, h, w] head output -> [B, 4+C, h*w] boxes (cx, cy, w, h) in pixels + scores."""
    h, w = height // stride, width // stride
    flat = g.op("Reshape", [raw, g.const(np.array([0, 4 + NUM_CLASSES, h * w], np.int64))])
    xy, wh, cls = (
        g.op("Slice", [flat, g.const(np.array([a], np.int64)), g.const(np.array([b], np.int64)),
                       g.const(np.array([1], np.int64))])
        for a, b in ((0, 2), (2, 4), (4, 4 + NUM_CLASSES))
    )
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5])[None]  # [1, 2, h*w]
    centre = g.op("Mul", [g.op("Add", [g.op("Tanh", [xy]), g.const(grid)]), g.const(np.float32(stride))])
    size = g.op(
        "Mul",
        [g.op("Add", [g.op("Mul", [g.op("Sigmoid", [wh]), g.const(np.float32(3.0))]), g.const(np.float32(1.0))]),
         g.const(np.float32(2 * stride))],
    )
    return g.op("Concat", [centre, size, g.op("Sigmoid", [cls])], axis=1)


def build_conv_detector(seed: int = 7, class_bias: float = -1.5) -> onnx.ModelProto:
    width, height = INPUT_SIZE
    g = _Graph(seed)
    x = "images"
    x = g.conv_relu(x, 3, 16, stride=2)     # 160
    x = g.conv_relu(x, 16, 32, stride=2)    # 80
    p3 = g.conv_relu(x, 32, 48, stride=2)   # 40, stride 8
    p4 = g.conv_relu(p3, 48, 64, stride=2)  # 20, stride 16
    p5 = g.conv_relu(p4, 64, 64, stride=2)  # 10, stride 32
    levels = []
    for feature, channels, stride in ((p3, 48, 8), (p4, 64, 16), (p5, 64, 32)):
        hidden = g.conv_relu(feature, channels, 32)
        bias = np.array([0, 0, 0, 0] + [class_bias] * NUM_CLASSES, np.float32)
        raw = g.conv(hidden, 32, 4 + NUM_CLASSES, k=1, stride=1, bias=bias)
        levels.append(_decode(g, raw, stride, width, height))
    out = g.op("Concat", levels, axis=2)
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
