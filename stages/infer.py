"""The infer stage: frames -> model inputs, and model outputs -> per-frame outputs.

Which context runs a batch, and what happens when it fails, is the scheduler's
business (pipeline/scheduler.py); this module only knows the model's tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engines.base import Context, Engine
from engines.errors import ModelError
from pipeline.types import Frame
from stages.preprocess import stack

# A context's own input memory (e.g. a worker's shared-memory block): (name, shape, dtype) -> array.
InputBuffer = Callable[[str, tuple[int, ...], np.dtype], np.ndarray]


class InferStage:
    def __init__(self, engine: Engine) -> None:
        if len(engine.inputs) != 1:
            names = ", ".join(i.name for i in engine.inputs)
            raise ModelError(
                f"model {engine.name}: has {len(engine.inputs)} inputs ({names}); "
                "vidpipe needs one image input [batch, 3, height, width]"
            )
        spec = engine.inputs[0]
        shape = spec.shape
        if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) for d in shape[2:]):
            raise ModelError(
                f"model {engine.name}: input '{spec.name}' has shape {list(shape)}, not an image "
                "tensor [batch, 3, height, width] with a fixed size; export the model with a fixed imgsz"
            )
        if spec.dtype != np.float32:
            raise ModelError(
                f"model {engine.name}: input '{spec.name}' is {spec.dtype}, vidpipe feeds float32; "
                "export the model with float32 inputs (fp16 inside is fine)"
            )
        if not engine.outputs:
            raise ModelError(f"model {engine.name}: has no outputs")
        self.input_name = spec.name
        self.input_size = (int(shape[3]), int(shape[2]))  # (width, height)
        self.fixed_batch = spec.batch_dim if not isinstance(shape[0], str) else None

    def max_batch(self, wanted: int) -> int:
        return min(wanted, self.fixed_batch) if self.fixed_batch else wanted

    def inputs(self, frames: list[Frame], context: Context | None = None) -> dict[str, np.ndarray]:
        """The batch tensor, written straight into `context`'s own buffer when it offers one
        (an optional `input_buffer(name, shape, dtype)` method, e.g. shared memory)."""
        into: InputBuffer | None = getattr(context, "input_buffer", None)
        if into is None:
            return {self.input_name: stack(frames, self.fixed_batch)}
        w, h = self.input_size
        buffer = into(self.input_name, (self.fixed_batch or len(frames), 3, h, w), np.dtype(np.float32))
        return {self.input_name: stack(frames, self.fixed_batch, out=buffer)}

    def probe_inputs(self) -> dict[str, np.ndarray]:
        """A fixed input whose outputs, recorded at start-up, tell a healthy context."""
        w, h = self.input_size
        rng = np.random.default_rng(20240611)
        return {self.input_name: rng.random((self.fixed_batch or 1, 3, h, w), dtype=np.float32)}

    @staticmethod
    def split(frames: list[Frame], outputs: dict[str, np.ndarray]) -> None:
        for i, frame in enumerate(frames):
            frame.outputs = {name: value[i] for name, value in outputs.items()}
