"""The Engine/Context protocol every backend implements.

An Engine is loaded once per model and shared; a Context is cheap and owns the
per-request state. After a Context raises, the caller discards it.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, shape (a str or None for a dynamic dim) and dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    @property
    def batch_dim(self) -> int | None:
        """The fixed batch size, or None when the batch dimension is dynamic."""
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) and first > 0 else None


@dataclass(frozen=True)
class DeviceFill:
    """An input a GPU context fills on its own stream instead of copying it from the host.

    `fill(stream, device_ptr)` enqueues, on the CUDA stream handle `stream`, the work that
    writes a C-contiguous `shape` x `dtype` tensor at `device_ptr` (e.g. letterboxing uploaded
    I420 planes, stages/gpu_preprocess.py), and returns without waiting. Only contexts whose
    `accepts_device_fill` is True take one.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    fill: Callable[[int, int], None]


class Context(Protocol):
    def infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        """Run one batch. Raises InferenceError on failure, InferenceTimeout past `timeout` seconds."""
        ...

    def close(self) -> None: ...


class Engine(Protocol):
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str]

    def create_context(self) -> Context: ...

    def close(self) -> None: ...
