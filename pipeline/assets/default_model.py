"""vidpipe's embedded default model: a hand-built colour-blob detector (no training).

It marks the pixels whose own channel beats the other two by a margin, pools them onto a
stride-4 grid of cells, and finds, for every cell, where its run of marked cells starts and
ends along its row and its column (to a fraction of a cell, from the coverage of the edge
cells). Widening each cell's row edges over its column run, and its column edges over its row
run, gives every cell of a convex blob the blob's box. The score peaks at the blob's centre
cell. The output is laid out like a YOLOv8 head ([B, 4 + C, N], no objectness) so it runs
through the same postprocess as real models. `python -m pipeline.assets.default_assets` regenerates it.

Height and width are dynamic: any multiple of ALIGN (a cell is STRIDE pixels and the scans
work in blocks of BLOCK cells) up to MAX_INPUT. The per-cell constants are built for the
largest grid and sliced to the input's grid in the graph; a larger input fails to broadcast
rather than giving wrong boxes. The nominal size (`imgsz` metadata) is 320x320, so vidpipe
runs a 16:9 source at 320x192 and the model's per-pixel work skips the letterbox bars.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASS_NAMES = ("red", "green", "blue")
INPUT_SIZE = 320  # nominal: the square vidpipe fits sources into
MAX_INPUT = 640
STRIDE = 4
BLOCK = 8  # cells per block in the two-level max scan; divides the grid
ALIGN = STRIDE * BLOCK  # input sides are multiples of it (the `stride` metadata)
MAX_GRID = MAX_INPUT // STRIDE
COLOUR_MARGIN = 0.3
MAX_SCORE = 0.95
# A run edge is packed as `rank + fraction` so one max scan finds the nearest edge and
# carries its sub-cell offset along; the factor keeps the fraction strictly below 1.
PACK = 0.999
# Above any edge coordinate in cells (up to MAX_GRID + 1), so values keyed by run rank never
# mix across runs.
RUN_KEY = 256.0


class _GraphBuilder:
    """Collects nodes and constants; every op gets a fresh output name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, value: float | list | np.ndarray, dtype: type = np.float32) -> str:
        name = f"const_{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs: object) -> str:
        output = output or f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attrs))
        return output

    def length(self, x: str, axis: int) -> str:
        """x's length along `axis`, a [1] int64 tensor."""
        return self.op("Shape", x, start=axis, end=axis + 1)

    def per_cell(self, values: np.ndarray, like: str, axis: int) -> str:
        """A constant that varies along `axis` only, cut to `like`'s length there, to broadcast
        against `like` ([B, C, rows, columns]). `values` cover the largest grid."""
        shape = [1, 1, 1, 1]
        shape[axis] = len(values)
        table = self.const(values.reshape(shape))
        axes = self.const([axis], np.int64)
        return self.op("Slice", table, self.const([0], np.int64), self.length(like, axis), axes)

    def shift(self, x: str, axis: int, step: int) -> str:
        """x moved `step` cells along `axis` (step 1: out[i] = x[i - 1]), zero-filled."""
        pads = [0] * 8
        pads[axis], pads[axis + 4] = step, -step  # a negative pad crops
        return self.op("Pad", x, self.const(pads, np.int64))

    def scan_max(self, x: str, axis: int, forward: bool) -> str:
        """Running max of `x` (>= 0) along `axis`: over the cells from the grid's start up to
        each cell (forward), or from each cell on to the grid's end."""
        # One MaxPool as wide as the grid costs as many compares per cell and dominated the run
        # time. Instead: the max over the last BLOCK cells, and the max over all whole blocks
        # before this cell's block; together they cover every cell up to this one. The block
        # pool is as wide as the largest grid's blocks; on a smaller grid it just sees fewer.
        blocks = MAX_GRID // BLOCK
        local = self.op("MaxPool", x, kernel_shape=_along_axis(BLOCK, axis),
                        pads=_one_sided(BLOCK - 1, axis, forward))  # fmt: skip
        per_block = self.op("MaxPool", x, kernel_shape=_along_axis(BLOCK, axis),
                            strides=_along_axis(BLOCK, axis))  # fmt: skip
        before = self.op("MaxPool", per_block, kernel_shape=_along_axis(blocks, axis),
                         pads=_one_sided(blocks - 1, axis, forward))  # fmt: skip
        before = self.shift(before, axis, 1 if forward else -1)
        repeat = [1] * 5
        repeat[axis + 1] = BLOCK
        spread = self.op("Expand", self.op("Unsqueeze", before, self.const([axis + 1], np.int64)),
                         self.const(repeat, np.int64))  # fmt: skip
        spread = self.op("Reshape", spread, self.op("Shape", x))
        return self.op("Max", local, spread)


def _along_axis(size: int, axis: int) -> list[int]:
    """A pool's 2-D kernel or strides: `size` along `axis` (2: rows, 3: columns), else 1."""
    return [size if a == axis else 1 for a in (2, 3)]


def _one_sided(width: int, axis: int, before: bool) -> list[int]:
    """Pool pads of `width` cells on one side of `axis`, so a window looks only one way."""
    pads = [0, 0, 0, 0]
    pads[(axis - 2) + (0 if before else 2)] = width
    return pads


def _colour_masks(g: _GraphBuilder, images: str) -> tuple[str, str]:
    """Per-class cell coverage fraction and the binary cell mask, both [B, 3, rows, columns]."""
    r, gr, b = (
        g.op("Slice", images, g.const([c], np.int64), g.const([c + 1], np.int64),
             g.const([1], np.int64))
        for c in range(3)
    )  # fmt: skip
    excess = g.op(
        "Concat",
        g.op("Sub", r, g.op("Max", gr, b)),
        g.op("Sub", gr, g.op("Max", r, b)),
        g.op("Sub", b, g.op("Max", r, gr)),
        axis=1,
    )
    pixels = g.op("Cast", g.op("Greater", excess, g.const(COLOUR_MARGIN)), to=TensorProto.FLOAT)
    frac = g.op("AveragePool", pixels, kernel_shape=[STRIDE, STRIDE], strides=[STRIDE, STRIDE])
    mask = g.op("Cast", g.op("GreaterOrEqual", frac, g.const(0.5)), to=TensorProto.FLOAT)
    return frac, mask


@dataclass(frozen=True)
class _Runs:
    """Per cell, the run of mask cells through it along one axis: its edges in cells, and
    ranks that tell runs apart (start ranks grow along the axis, end ranks against it)."""

    start: str
    end: str
    start_rank: str
    end_rank: str


def _runs(g: _GraphBuilder, frac: str, mask: str, axis: int) -> _Runs:
    """Where each cell's run along `axis` starts and ends, sub-cell accurate."""
    cells = g.op("Cast", g.length(mask, axis), to=TensorProto.FLOAT)
    index = g.per_cell(np.arange(MAX_GRID, dtype=np.float32), mask, axis)
    one = g.const(1.0)

    # A run starts where the previous cell is outside the mask. The edge lies inside the start
    # cell when that is partly covered, or inside the previous cell when that one is.
    prev_mask, prev_frac = g.shift(mask, axis, +1), g.shift(frac, axis, +1)
    is_start = g.op("Mul", mask, g.op("Sub", one, prev_mask))
    start_offset = g.op("Sub", g.op("Sub", one, frac), prev_frac)
    start_rank, offset = _nearest_edge(g, is_start, start_offset, g.op("Add", index, one), axis, forward=True)
    start = g.op("Add", g.op("Sub", start_rank, one), offset)

    next_mask, next_frac = g.shift(mask, axis, -1), g.shift(frac, axis, -1)
    is_end = g.op("Mul", mask, g.op("Sub", one, next_mask))
    end_offset = g.op("Sub", next_frac, g.op("Sub", one, frac))
    end_rank, offset = _nearest_edge(g, is_end, end_offset, g.op("Sub", cells, index), axis, forward=False)
    end = g.op("Add", g.op("Sub", g.op("Add", cells, one), end_rank), offset)
    return _Runs(start, end, start_rank, end_rank)


def _nearest_edge(g: _GraphBuilder, is_edge: str, offset: str, rank: str, axis: int, forward: bool) -> tuple[str, str]:
    """The rank and offset (-0.5..0.5 cells) of the nearest edge cell behind (or ahead of)
    each cell. Ranks are positive and grow towards the cell, so the nearest edge is the max."""
    shifted = g.op("Mul", g.op("Add", offset, g.const(0.5)), g.const(PACK))
    packed = g.op("Mul", is_edge, g.op("Add", rank, shifted))
    nearest = g.scan_max(packed, axis, forward)
    whole = g.op("Floor", nearest)
    part = g.op("Div", g.op("Sub", nearest, whole), g.const(PACK))
    return whole, g.op("Sub", part, g.const(0.5))


def _run_max(g: _GraphBuilder, value: str, mask: str, runs: _Runs, axis: int) -> str:
    """The max of `value` (0 <= value < RUN_KEY) over each cell's run along `axis`."""
    # Keying values by their run's rank makes the cell's own run win the max over everything
    # behind (or ahead of) it; other runs' keys are lower and cells outside any run are 0.
    key = g.const(RUN_KEY)
    found = []
    for rank, forward in ((runs.start_rank, True), (runs.end_rank, False)):
        offset = g.op("Mul", rank, key)
        packed = g.op("Mul", mask, g.op("Add", offset, value))
        found.append(g.op("Sub", g.scan_max(packed, axis, forward), offset))
    return g.op("Max", *found)


def _run_min(g: _GraphBuilder, value: str, mask: str, runs: _Runs, axis: int) -> str:
    """The min of `value` (a coordinate across `axis`, 0..the grid's cells there) over each
    cell's run along `axis`."""
    cells = g.op("Cast", g.length(value, 5 - axis), to=TensorProto.FLOAT)
    flip = g.op("Add", cells, g.const(1.0))
    return g.op("Sub", flip, _run_max(g, g.op("Sub", flip, value), mask, runs, axis))


def _off_centre(g: _GraphBuilder, start: str, end: str, axis: int) -> str:
    """How far each cell's centre lies from the centre of its box, in cells."""
    cell_centre = g.per_cell(np.arange(MAX_GRID, dtype=np.float32) + 0.5, start, axis)
    box_centre = g.op("Mul", g.op("Add", start, end), g.const(0.5))
    return g.op("Abs", g.op("Sub", box_centre, cell_centre))


def _score(g: _GraphBuilder, mask: str, x1: str, y1: str, x2: str, y2: str) -> str:
    """Peaks at the blob's centre cell and falls off towards its rim, as a trained head's does,
    and fades out for blobs under two cells across, which the grid cannot measure."""
    spread = g.op("Add", _off_centre(g, x1, x2, axis=3), _off_centre(g, y1, y2, axis=2))
    zero, one = g.const(0.0), g.const(1.0)
    fade = g.op(
        "Mul",
        g.op("Clip", g.op("Sub", g.op("Sub", x2, x1), one), zero, one),
        g.op("Clip", g.op("Sub", g.op("Sub", y2, y1), one), zero, one),
    )
    peak = g.op("Mul", g.op("Mul", mask, fade), g.const(MAX_SCORE))
    return g.op("Div", peak, g.op("Add", spread, one))


def _yolov8_output(g: _GraphBuilder, boxes: list[str], score: str) -> str:
    """[B, 4 + C, C * rows * columns]: the anchors of class c carry its boxes and score row 4 + c."""
    classes = len(CLASS_NAMES)
    rows = g.op("Concat", *(g.op("Unsqueeze", b, g.const([1], np.int64)) for b in boxes), axis=1)
    rows = g.op("Reshape", rows, g.const([0, 4, -1], np.int64))
    per_class = g.op("Reshape", score, g.const([0, 1, classes, -1], np.int64))
    eye = np.eye(classes, dtype=np.float32).reshape(1, classes, classes, 1)
    scores = g.op("Reshape", g.op("Mul", per_class, g.const(eye)),
                  g.const([0, classes, -1], np.int64))  # fmt: skip
    return g.op("Concat", rows, scores, axis=1, output="output0")


def _build_graph() -> onnx.GraphProto:
    g = _GraphBuilder()
    frac, mask = _colour_masks(g, "images")
    rows, cols = _runs(g, frac, mask, axis=3), _runs(g, frac, mask, axis=2)
    # Each edge's extreme over the crossing run gives every cell of a convex blob the blob's
    # whole box; a small disc's rim cells would otherwise propose thin slivers that NMS keeps.
    x1, x2 = _run_min(g, rows.start, mask, cols, 2), _run_max(g, rows.end, mask, cols, 2)
    y1, y2 = _run_min(g, cols.start, mask, rows, 3), _run_max(g, cols.end, mask, rows, 3)
    stride, half = g.const(float(STRIDE)), g.const(STRIDE / 2)
    boxes = [
        g.op("Mul", g.op("Add", x1, x2), half),
        g.op("Mul", g.op("Add", y1, y2), half),
        g.op("Mul", g.op("Sub", x2, x1), stride),
        g.op("Mul", g.op("Sub", y2, y1), stride),
    ]
    _yolov8_output(g, boxes, _score(g, mask, x1, y1, x2, y2))

    classes = len(CLASS_NAMES)
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + classes, "anchors"])
    return helper.make_graph(g.nodes, "vidpipe_colour_blobs", [images], [output], g.initializers)


def build_default_model(path: Path) -> None:
    """Write the colour-blob detector to `path` (deterministic bytes)."""
    model = helper.make_model(
        _build_graph(),
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="vidpipe",
        ir_version=9,
    )
    names = {i: name for i, name in enumerate(CLASS_NAMES)}
    helper.set_model_props(model, {
        "description": "vidpipe's hand-built colour-blob detector (red, green, blue; no training)",
        "task": "detect",
        "imgsz": str([INPUT_SIZE, INPUT_SIZE]),
        "stride": str(ALIGN),
        "max_imgsz": str(MAX_INPUT),  # vidpipe's own key: the largest side the tables cover
        "names": str(names),
    })  # fmt: skip
    onnx.checker.check_model(model, full_check=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(model.SerializeToString())
