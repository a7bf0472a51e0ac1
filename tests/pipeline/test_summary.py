"""The summary's percentiles: numpy's default (linear) interpolation, without numpy."""

from __future__ import annotations

import numpy as np

from pipeline.summary import percentile


def test_percentile_matches_numpys_linear_default() -> None:
    rng = np.random.default_rng(0)
    for count in (1, 2, 7, 100, 1001):
        values = rng.exponential(20.0, count).tolist()
        for q in (0, 1, 50, 90, 99, 99.9, 100):
            assert percentile(values, q) == round(float(np.percentile(values, q)), 3), (count, q)
    assert percentile((3.0, 1.0, 2.0), 50) == 2.0
    assert percentile([], 50) is None
