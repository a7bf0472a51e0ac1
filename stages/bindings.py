"""Tensor bindings: frames -> the model's input tensor, and its output tensors -> per-frame outputs.

Not a stage (it does not turn one frame into the next): the scheduler calls it around each
batch it runs. "Bindings" is TensorRT's and ONNX Runtime's word for the same job. Which
context runs a batch, and what happens when it fails, is the scheduler's business
(pipeline/runtime/scheduler.py); this module only knows the model's tensors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from engines.base import Context, DeviceFill, DeviceFills, DeviceReduce, Engine, InputBuffers, TensorSpec
from engines.errors import ModelError
from stages.preprocess import stack
from stages.types import Frame


class TensorBindings:
    """Binds frames to the model's one image input, [batch, 3, height, width] float32, and
    splits the output tensors (first axis: batch row) back onto the frames.

    `input_size` (width, height) is the size a model with dynamic height and width runs at
    (see stages/preprocess.run_input_size); a model with a fixed size runs at its own, and
    a different `input_size` is a ModelError.
    """

    def __init__(self, engine: Engine, input_size: tuple[int, int] | None = None) -> None:
        if len(engine.inputs) != 1:
            names = ", ".join(i.name for i in engine.inputs)
            raise ModelError(
                f"model {engine.name}: has {len(engine.inputs)} inputs ({names}); "
                "vidpipe needs one image input [batch, 3, height, width]"
            )
        spec = engine.inputs[0]
        shape = spec.shape
        if len(shape) != 4 or shape[1] != 3:
            raise ModelError(
                f"model {engine.name}: input '{spec.name}' has shape {list(shape)}, not an image "
                "tensor [batch, 3, height, width]"
            )
        if spec.dtype != np.float32:
            raise ModelError(
                f"model {engine.name}: input '{spec.name}' is {spec.dtype}, vidpipe feeds float32; "
                "export the model with float32 inputs (fp16 inside is fine)"
            )
        if not engine.outputs:
            raise ModelError(f"model {engine.name}: has no outputs")
        self.input_name = spec.name
        self.input_size = _input_size(engine.name, spec, input_size)  # (width, height)
        self.fixed_batch = spec.batch_dim if not isinstance(shape[0], str) else None
        self._buffers = threading.local()
        # Letterbox on the GPU from I420 planes (stages/gpu_preprocess.py), set by
        # pipeline/runtime/model.py for GPU engines when CuPy is there; the CPU then only
        # sets each frame's Letterbox.
        self.gpu_planes = False
        self._gpu_letterboxes: dict[tuple[int, int], object] = {}
        # The detector output reduced to candidate rows on the GPU (stages/gpu_candidates.py),
        # set by pipeline/runtime/model.py with gpu_planes when the head allows it.
        self.gpu_candidates = None
        # The output layout's own sanity check (scores in 0..1, ...), set by pipeline/runtime/model.py.
        self.check: Callable[[dict[str, np.ndarray], int], str | None] | None = None

    def max_batch(self, wanted: int) -> int:
        return min(wanted, self.fixed_batch) if self.fixed_batch else wanted

    def batch_shapes(self, wanted: tuple[int, ...]) -> tuple[int, ...]:
        """The batch sizes this model will run at: `wanted` (ascending), or the model's own
        fixed batch. Every batch is padded up to one of them, so each is warmed once and
        measured on its own (pipeline/runtime/context_pool.py)."""
        if self.fixed_batch:
            return (self.fixed_batch,)
        return tuple(sorted(set(wanted)))

    @staticmethod
    def shape_for(count: int, shapes: tuple[int, ...]) -> int:
        """The smallest batch shape that holds `count` frames."""
        return next(s for s in shapes if s >= count)

    def inputs(
        self, frames: list[Frame], context: Context | None = None, batch: int | None = None
    ) -> dict[str, np.ndarray]:
        """The batch tensor [batch, 3, H, W], zero-padded past len(frames) (the padding's
        outputs never reach a result: `split` reads only the frames' rows), written straight
        into `context`'s own buffer when it offers one (an optional
        `InputBuffers` context (engines/base.py), e.g. shared memory)."""
        batch = self.fixed_batch or batch or len(frames)
        if self.gpu_planes and isinstance(context, DeviceFills) and context.accepts_device_fill:
            return {self.input_name: self._planes_fill(frames, batch)}
        if not isinstance(context, InputBuffers):
            return {self.input_name: stack(frames, batch, out=self._buffer(batch))}
        w, h = self.input_size
        buffer = context.input_buffer(self.input_name, (batch, 3, h, w), np.dtype(np.float32))
        return {self.input_name: stack(frames, batch, out=buffer)}

    def _planes_fill(self, frames: list[Frame], batch: int) -> DeviceFill:
        """The batch as a DeviceFill: the frames' I420 planes, staged back to back in the
        context's pinned memory, are copied and letterboxed on the context's stream
        (stages/gpu_preprocess.py); padding rows are zeroed there too. With `gpu_candidates`
        set, the detector output comes back as candidate rows (stages/gpu_candidates.py)."""
        from stages import gpu_preprocess

        w, h = self.input_size
        row_bytes = 3 * h * w * 4
        runs: list[tuple[int, int, tuple[int, int], int]] = []  # (first row, staged offset, size, count)
        offset = 0
        for i, frame in enumerate(frames):
            if runs and runs[-1][2] == frame.source_size:
                first, start, size, count = runs[-1]
                runs[-1] = (first, start, size, count + 1)
            else:
                runs.append((i, offset, frame.source_size, 1))
            offset += frame.image.nbytes

        def stage(host: np.ndarray) -> None:
            # One numpy call for the whole batch: with decode and postprocess threads busy, every
            # call that drops the GIL waits up to a switch interval to get it back.
            np.concatenate([frame.image.reshape(-1) for frame in frames], out=host[:offset])

        def fill(stream: int, staged_ptr: int, out_ptr: int) -> None:
            for first, start, size, count in runs:
                letterbox = self._gpu_letterboxes.get(size)
                if letterbox is None:
                    letterbox = self._gpu_letterboxes[size] = gpu_preprocess.GpuLetterbox(self.input_size, size)
                letterbox.run(staged_ptr + start, out_ptr + first * row_bytes, count, stream)
            if batch > len(frames):
                gpu_preprocess.zero(out_ptr + len(frames) * row_bytes, (batch - len(frames)) * row_bytes, stream)

        candidates = self.gpu_candidates
        reduce = None
        if candidates is not None:
            reduce = DeviceReduce(candidates.output, candidates.name, candidates.shape, candidates.run)
        return DeviceFill((batch, 3, h, w), np.dtype(np.float32), offset, stage, fill, reduce)

    def _buffer(self, count: int) -> np.ndarray:
        """This thread's float32 batch buffer, grown to the largest batch it has seen.

        One per scheduler worker thread: a context's call has returned (or been given up,
        its outputs unused) before its thread stacks the next batch into the same memory."""
        w, h = self.input_size
        count = self.fixed_batch or count
        buffer: np.ndarray | None = getattr(self._buffers, "array", None)
        if buffer is None or len(buffer) < count:
            buffer = self._buffers.array = np.empty((count, 3, h, w), np.float32)
        return buffer[:count]

    def probe_inputs(self, batch: int | None = None) -> dict[str, np.ndarray]:
        """A fixed input whose outputs, recorded at start-up, tell a healthy context: one
        random image repeated `batch` times (every row must give the same outputs)."""
        w, h = self.input_size
        image = np.random.default_rng(20240611).random((1, 3, h, w), dtype=np.float32)
        return {self.input_name: np.repeat(image, self.fixed_batch or batch or 1, axis=0)}

    def output_problem(self, outputs: dict[str, np.ndarray], rows: int) -> str | None:
        """Why the first `rows` rows of a context's outputs cannot be trusted, or None.

        Every value must be finite; `check` (set from the model's output layout, see
        stages/postprocess.py) adds what the layout knows, e.g. scores within 0..1."""
        for name, value in outputs.items():
            head = value[:rows]
            if head.dtype.kind == "f" and not np.isfinite(head).all():
                return f"output '{name}' holds NaN or infinite values"
        return self.check(outputs, rows) if self.check is not None else None

    @staticmethod
    def split(frames: list[Frame], outputs: dict[str, np.ndarray]) -> None:
        """Row i of every output tensor becomes `frames[i].outputs[name]` (padding rows are dropped)."""
        for i, frame in enumerate(frames):
            frame.outputs = {name: value[i] for name, value in outputs.items()}


def _input_size(model: str, spec: TensorSpec, wanted: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height): the model's fixed size, or `wanted` when height and width are dynamic."""
    height, width = spec.shape[2:]
    fixed = isinstance(height, int) and isinstance(width, int)
    if fixed and wanted is not None and wanted != (width, height):
        raise ModelError(
            f"model {model}: input '{spec.name}' is fixed at {width}x{height}, not {wanted[0]}x{wanted[1]}; "
            "drop --imgsz, or export the model with dynamic=True"
        )
    if fixed:
        return int(width), int(height)
    if isinstance(height, int) or isinstance(width, int):
        raise ModelError(
            f"model {model}: input '{spec.name}' has shape {list(spec.shape)}: only one of height and "
            "width is dynamic; export the model with a fixed imgsz or with dynamic=True"
        )
    if wanted is None:
        raise ModelError(f"model {model}: input '{spec.name}' has a dynamic height and width; give --imgsz")
    return wanted
