"""Write a detector-sized ONNX model for `vidpipe bench`: YOLOv8 layout, about 5 GFLOPs at 640x640.

Its weights are random and its class scores are held near zero, so it finds nothing; it
exists to measure the pipeline when inference costs what a real CPU detector costs
(YOLOv8n is 8.7 GFLOPs), which the tiny embedded default does not.

    python samples/bench_model.py bench-model.onnx
    python samples/bench_model.py bench-dynamic.onnx --dynamic   # dynamic height and width
    vidpipe bench ../shared/media/car-detection.mp4 --model bench-model.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STAGES = [(16, 1), (32, 2), (64, 2), (128, 2), (256, 2)]  # (channels, extra 3x3 convs), each after a stride-2 conv
CLASSES = 80


def build(size: int = 640, seed: int = 0, dynamic: bool = False) -> onnx.ModelProto:
    """`dynamic`: height and width dynamic, as `yolo export ... dynamic=True` writes them,
    with Ultralytics' `imgsz` and `stride` metadata."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x: str, c_in: int, c_out: int, k: int, stride: int, name: str, bias: float = 0.0, act: bool = True) -> str:
        w = (rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2 / (c_in * k * k))).astype(np.float32)
        b = np.full(c_out, bias, np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
        out = f"{name}.out"
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out],
                                      kernel_shape=[k, k], strides=[stride] * 2, pads=[k // 2] * 4))
        if act:
            nodes.append(helper.make_node("Relu", [out], [f"{name}.act"]))
            return f"{name}.act"
        return out

    x, c_in, taps = "images", 3, []
    for i, (c, extra) in enumerate(STAGES):
        x = conv(x, c_in, c, 3, 2, f"down{i}")
        for j in range(extra):
            x = conv(x, c, c, 3, 1, f"s{i}c{j}")
        c_in = c
        if i >= 2:
            taps.append((x, c))
    heads = []
    for i, (tap, c) in enumerate(taps):
        h = conv(tap, c, 4 + CLASSES, 1, 1, f"head{i}", bias=-20.0, act=False)
        shape = numpy_helper.from_array(np.array([0, 4 + CLASSES, -1], np.int64), f"head{i}.shape")
        inits.append(shape)
        nodes.append(helper.make_node("Reshape", [h, f"head{i}.shape"], [f"head{i}.flat"]))
        heads.append(f"head{i}.flat")
    nodes.append(helper.make_node("Concat", heads, ["raw"], axis=2))
    nodes.append(helper.make_node("Sigmoid", ["raw"], ["output0"]))
    cells = sum((size // s) ** 2 for s in (8, 16, 32))
    height, width, anchors = ("height", "width", "anchors") if dynamic else (size, size, cells)
    graph = helper.make_graph(
        nodes,
        "bench-detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + CLASSES, anchors])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    if dynamic:
        helper.set_model_props(model, {"imgsz": str([size, size]), "stride": "32"})
    return model


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--dynamic"]
    out = Path(args[0] if args else "bench-model.onnx")
    onnx.save(build(dynamic="--dynamic" in sys.argv), out)
    print(f"wrote {out}")
