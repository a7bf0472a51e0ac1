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


def layout_check(output_name: str, layout: str) -> OutputCheck:
    """A check for the detector output named `output_name`: scores within 0..1."""

    def check(outputs: dict[str, np.ndarray], rows: int) -> str | None:
        output = outputs.get(output_name)
        if output is None:
            return f"output '{output_name}' is missing"
        scores = score_view(output[:rows], layout)
        if scores.size and (scores.min() < -SCORE_SLACK or scores.max() > 1 + SCORE_SLACK):
            return f"scores of '{output_name}' span {scores.min():.3g}..{scores.max():.3g}, outside 0..1"
        return None

    return check
