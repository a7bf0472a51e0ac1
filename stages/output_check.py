"""What a model's raw outputs must look like before anything trusts them.

Run on every batch a context returns (pipeline/runtime/scheduler.py): a context whose outputs fail
is treated like one that raised — replaced, and the batch retried — so corrupt numbers from
a broken context or bad device memory never reach a result. The generic part (every value
finite) lives in TensorBindings.output_problem; this adds what the output layout tells.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stages.layouts import CANDIDATES, Head

# Scores come out of a sigmoid or softmax: 0..1, give or take float rounding.
SCORE_SLACK = 1e-3
# A detector fires on a few of its candidates; one firing on most of them is broken.
MAX_FIRING = 0.5

OutputCheck = Callable[[dict[str, np.ndarray], int], "str | None"]


def candidates(output: np.ndarray, head: Head) -> np.ndarray:
    """[rows, N, K]: one row of values per candidate, whatever the head's orientation."""
    return output.transpose(0, 2, 1) if head.layout == "yolov8" and not head.transposed else output


def scores_of(rows: np.ndarray, head: Head) -> np.ndarray:
    """[rows, N, S] scores: yolov8 its C class scores, yolov5/yolox objectness and C class
    probabilities, e2e its one score (mask coefficients and keypoints are left out)."""
    if head.layout == "e2e":
        return rows[..., 4:5]
    end = 4 + (head.num_classes or 0) + (0 if head.layout == "yolov8" else 1)
    return rows[..., 4:end]


def layout_check(output_name: str, head: Head, conf: float) -> OutputCheck:
    """A check for the detector output named `output_name` read as `head`: scores within 0..1;
    boxes that would be published (scoring at least `conf`) of positive size, x2 >= x1 once
    decoded; and a plausible count — no frame where more than half of the candidates score at
    least `conf` (a broken context answering 1.0 everywhere)."""

    def check(outputs: dict[str, np.ndarray], count: int) -> str | None:
        if CANDIDATES in outputs:  # reduced on the GPU (stages/gpu_candidates.py): rows of x1, y1, x2, y2
            rows = outputs[CANDIDATES][:count]
            return _problem(output_name, conf, rows[..., 4:5], _unordered(rows), share=True)
        output = outputs.get(output_name)
        if output is None:
            return f"output '{output_name}' is missing"
        rows = candidates(output[:count], head)
        raw = head.layout != "e2e"  # centre and size, before NMS
        bad = rows[..., 2:4].min(axis=-1) < 0 if raw else _unordered(rows)  # width or height below 0
        return _problem(output_name, conf, scores_of(rows, head), bad, share=raw)

    return check


def _unordered(rows: np.ndarray) -> np.ndarray:
    """[rows, N]: the (x1, y1, x2, y2) boxes with x2 < x1 or y2 < y1."""
    return (rows[..., 2] < rows[..., 0]) | (rows[..., 3] < rows[..., 1])


def _problem(name: str, conf: float, scores: np.ndarray, bad: np.ndarray, share: bool) -> str | None:
    """What is wrong with `scores` [rows, N, S] and boxes flagged `bad` [rows, N]: scores outside
    0..1; with `share`, a frame where more than MAX_FIRING of the candidates fire at `conf`; a
    bad box among those firing."""
    if scores.size and (scores.min() < -SCORE_SLACK or scores.max() > 1 + SCORE_SLACK):
        return f"scores of '{name}' span {scores.min():.3g}..{scores.max():.3g}, outside 0..1"
    firing = scores.max(axis=-1) >= conf  # [rows, N]
    fired = float(firing.mean(axis=-1).max()) if firing.size else 0.0
    if share and fired > MAX_FIRING:
        return f"'{name}' fires on {fired:.0%} of its candidates at conf {conf}"
    if (bad & firing).any():
        return f"'{name}' holds boxes with x2 < x1 or y2 < y1"
    return None
