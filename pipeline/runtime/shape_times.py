"""Measured call times per batch shape, and the timeouts derived from them.

`ShapeTimes` holds what healthy calls take, per batch shape, measured on this machine under
its present load. A call is hung only when it runs `hang_factor` times longer than the
slowest recent healthy call of its shape (and at least `hang_floor_s`); until a shape has
steady samples, its measured first call stands in. So a slow model, a busy machine or a
first call is never mistaken for a hang, and a fault-free run abandons no context.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from typing import Any


class ShapeTimes:
    """Measured call times per batch shape (seconds), and the timeouts derived from them."""

    WINDOW = 256  # recent healthy calls per shape that set its hang timeout
    MIN_STEADY = 8  # fewer steady samples than this: the first call stands in

    def __init__(self, factor: float, floor_s: float, cap_s: float) -> None:
        self.factor, self.floor_s, self.cap_s = factor, floor_s, cap_s
        self._lock = threading.Lock()
        self._first: dict[int, float] = {}
        self._fastest_first: dict[int, float] = {}
        self._steady: dict[int, deque[float]] = {}

    def first_call(self, shape: int, seconds: float) -> None:
        with self._lock:
            self._first[shape] = max(self._first.get(shape, 0.0), seconds)
            self._fastest_first[shape] = min(self._fastest_first.get(shape, seconds), seconds)

    def timed(self, shape: int) -> bool:
        """Whether a first call of this shape has been measured."""
        with self._lock:
            return shape in self._first

    def fastest_first_calls(self) -> dict[int, float]:
        """The fastest warm-up call measured per batch shape (seconds): what a call of that
        shape costs at best here, for choosing the batch (pipeline/runtime/sizing.py)."""
        with self._lock:
            return dict(self._fastest_first)

    def steady(self, shape: int, seconds: float) -> None:
        with self._lock:
            self._steady.setdefault(shape, deque(maxlen=self.WINDOW)).append(seconds)

    def typical(self, shape: int) -> float:
        """The median healthy call of this shape (0 before any was measured)."""
        with self._lock:
            samples = self._steady.get(shape)
            if samples:
                return statistics.median(samples)
            return self._first.get(shape, 0.0)

    def _base(self, shape: int) -> float | None:
        samples = self._steady.get(shape)
        if samples and len(samples) >= self.MIN_STEADY:
            return max(samples)
        if shape in self._first:
            return self._first[shape]
        return max(self._first.values()) if self._first else None

    def hang_timeout(self, shape: int) -> float:
        """How long a call of this shape may run before it counts as hung."""
        with self._lock:
            base = self._base(shape)
        return self.cap_s if base is None else self._hang_after(base)

    def _hang_after(self, base: float) -> float:
        """`factor` times a measured call (seconds), at least the floor, at most the cap."""
        return min(self.cap_s, max(self.floor_s, self.factor * base))

    def warmup_timeout(self, shape: int) -> float:
        """How long a new context's first call of this shape may take: generous (a first call
        on a GPU tunes kernels), derived from first calls already measured, and bounded."""
        with self._lock:
            first = self._first.get(shape) or (max(self._first.values()) if self._first else None)
        if first is None:
            return self.cap_s
        return min(self.cap_s, max(1.0, self.floor_s, 2 * self.factor * first))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            shapes = sorted(set(self._first) | set(self._steady))
            out = {}
            for shape in shapes:
                samples = list(self._steady.get(shape, ()))
                base = self._base(shape)
                out[str(shape)] = {
                    "first_call_ms": round(self._first.get(shape, 0.0) * 1000, 2),
                    "p50_ms": round(statistics.median(samples) * 1000, 2) if samples else None,
                    "max_ms": round(max(samples) * 1000, 2) if samples else None,
                    "hang_after_ms": round(self._hang_after(base) * 1000, 1) if base is not None else None,
                }
            return out
