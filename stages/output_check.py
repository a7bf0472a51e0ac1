"""What a model's raw outputs must look like before anything trusts them.

Run on every batch a context returns (pipeline/scheduler.py): a context whose outputs fail
is treated like one that raised — replaced, and the batch retried — so corrupt numbers from
a broken context or bad device memory never reach a result. The generic part (every value
finite) lives in InferStage.output_problem; this adds what the output layout tells.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Scores come out of a sigmoid or softmax: 0..1, give or take float rounding.
SCORE_SLACK = 1e-3

OutputCheck = Callable[[dict[str, np.ndarray], int], "str | None"]


def score_view(output: np.ndarray, layout: str) -> np.ndarray:
    """The scores of an output [rows, ...] of `layout`: yolov8 [B, 4+C, N] rows 4:, yolov5 and
    yolox [B, N, 5+C] columns 4: (objectness and class probabilities), e2e [B, N, 6] column 4."""
    if layout == "yolov8":
        return output[:, 4:, :]
    if layout == "e2e":
        return output[..., 4]
    return output[..., 4:]


# A detector fires on a few of its candidates; one firing on most of them is broken.
MAX_FIRING = 0.5


def size_view(output: np.ndarray, layout: str) -> np.ndarray | None:
    """Box widths and heights (yolov8 rows 2:4, yolov5/yolox columns 2:4); None for e2e corners."""
    if layout == "yolov8":
        return output[:, 2:4, :]
    if layout == "e2e":
        return None
    return output[..., 2:4]


def layout_check(output_name: str, layout: str, conf: float) -> OutputCheck:
    """A check for the detector output named `output_name`: scores within 0..1, box sizes not
    negative (x2 >= x1 once decoded), and a plausible count — no frame where more than half
    of the candidates score at least `conf` (a broken context answering 1.0 everywhere)."""

    def check(outputs: dict[str, np.ndarray], rows: int) -> str | None:
        output = outputs.get(output_name)
        if output is None:
            return f"output '{output_name}' is missing"
        output = output[:rows]
        scores = score_view(output, layout)
        if scores.size and (scores.min() < -SCORE_SLACK or scores.max() > 1 + SCORE_SLACK):
            return f"scores of '{output_name}' span {scores.min():.3g}..{scores.max():.3g}, outside 0..1"
        if layout == "e2e":
            firing = scores >= conf
            corners = output[..., :4]
            if (firing & ((corners[..., 2] < corners[..., 0]) | (corners[..., 3] < corners[..., 1]))).any():
                return f"'{output_name}' holds boxes with x2 < x1 or y2 < y1"
            return None
        firing = scores.max(axis=1) >= conf if layout == "yolov8" else scores.max(axis=-1) >= conf  # [rows, N]
        share = firing.mean(axis=-1).max() if firing.size else 0.0
        if share > MAX_FIRING:
            return f"'{output_name}' fires on {share:.0%} of its candidates at conf {conf}"
        sizes = size_view(output, layout)  # [rows, 2, N] or [rows, N, 2]
        small = sizes.min(axis=1) if layout == "yolov8" else sizes.min(axis=-1)
        if (small[firing] < 0).any():
            return f"'{output_name}' holds boxes of negative size (x2 < x1 once decoded)"
        return None

    return check
