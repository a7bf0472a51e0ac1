"""ONNX Runtime backend: one InferenceSession per model, cheap contexts over it.

A session is safe to run from several threads at once, so contexts share it (the
weights live once in memory) and each run gets its own RunOptions, which is what a
watchdog flips to cancel a run past its timeout.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.base import TensorSpec, input_shapes
from engines.errors import InferenceError, InferenceTimeout, ModelError
from engines.onnxruntime_cuda import CUDA, DEFAULT_CUDA_OPTIONS, CudaSession, OnnxRuntimeCudaContext, SessionPool
from engines.watchdog import shared_watchdog

# Errors only from here on: ONNX Runtime 1.31's CUDA build otherwise prints a warning per session
# about plugin execution-provider devices that vidpipe does not use.
ort.set_default_logger_severity(3)

_DTYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(bool)": np.dtype(np.bool_),
}


_shared_arena_lock = threading.Lock()
_shared_arena: list[bool] = []


def _register_shared_cpu_arena() -> None:
    """Register ONNX Runtime's process-wide CPU arena once (sessions opt in with
    `session.use_env_allocators`)."""
    with _shared_arena_lock:
        if _shared_arena:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's defaults
        _shared_arena.append(True)


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None) for d in arg.shape)
    return TensorSpec(arg.name, shape, _DTYPES.get(arg.type, np.dtype(np.float32)))


class OnnxRuntimeEngine:
    """`providers`: names, or (name, options) pairs, in order of preference. With the CUDA
    provider every context gets its own session and CUDA stream (engines/onnxruntime_cuda.py);
    otherwise contexts share this engine's session. Raises ModelError for a provider this
    ONNX Runtime lacks or one that did not load (never a silent CPU fallback)."""

    def __init__(
        self,
        path: Path,
        providers: list[str | tuple[str, dict]] | None = None,
        intra_op_threads: int = 1,
    ) -> None:
        self.name = Path(path).name
        providers = [p if isinstance(p, tuple) else (p, {}) for p in providers or ["CPUExecutionProvider"]]
        # ORT takes provider options as strings; the CUDA provider gets our first-call-friendly defaults.
        providers = [(name, {**(DEFAULT_CUDA_OPTIONS if name == CUDA else {}), **{k: str(v) for k, v in opts.items()}})
                     for name, opts in providers]
        names = [name for name, _ in providers]
        missing = [p for p in names if p not in ort.get_available_providers()]
        if missing:
            hint = (
                "; install onnxruntime-gpu (pip install -e '.[gpu]' in vidpipe's checkout)"
                if CUDA in missing
                else "; pick one of those providers"
            )
            raise ModelError(
                f"ONNX Runtime here has no {', '.join(missing)}; available: "
                f"{', '.join(ort.get_available_providers())}{hint}"
            )
        self.cuda_options = dict(providers[names.index(CUDA)][1]) if CUDA in names else None
        if not Path(path).is_file():
            raise ModelError(f"model {path}: no such file; check the path")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if providers == [("CPUExecutionProvider", {})]:
            # One CPU memory arena for the process, shared by every session: an engine reload
            # (after fresh contexts kept failing) made a new session with its own arena each
            # time, and RSS grew with every reload (issue 17). The arena itself stays: without
            # it, each run malloc'd its intermediates (2.8x slower calls, 20% more peak RSS).
            _register_shared_cpu_arena()
            options.add_session_config_entry("session.use_env_allocators", "1")
        self._path, self._options, self._providers = Path(path), options, providers
        self._session = self._open()
        self._warm: set = set()  # input shapes the session has run (OnnxRuntimeContext)
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        if self.cuda_options is not None:
            fallbacks = [p for p in self._providers if p[0] != CUDA]
            self._cuda_sessions = SessionPool(
                lambda: CudaSession(self._path, self._options, self.cuda_options, fallbacks)
            )
        self.providers = self._session.get_providers()
        if self.cuda_options is not None and CUDA not in self.providers:
            raise ModelError(
                f"model {path}: ONNX Runtime could not start its CUDA provider (no GPU, or CUDA/cuDNN "
                "libraries it cannot load); check nvidia-smi and the onnxruntime-gpu install, or run on the CPU"
            )

    def _open(self) -> ort.InferenceSession:
        try:
            # Providers are always explicit: onnxruntime 1.32 lists AzureExecutionProvider first.
            return ort.InferenceSession(str(self._path), self._options, providers=self._providers)
        except Exception as err:  # ORT raises its own exception types for every load failure
            message = str(err).splitlines()[0][:300]
            raise ModelError(
                f"model {self._path}: ONNX Runtime cannot load it ({message}); check it is a valid ONNX file"
            ) from None

    def reload(self) -> None:
        """A new session from the model file; contexts made before keep the old one until closed."""
        if not self._path.is_file():
            raise ModelError(f"model {self._path}: no such file any more; cannot reload the engine")
        self._session = self._open()
        self._warm = set()
        if self.cuda_options is not None:
            self._cuda_sessions.clear()

    def create_context(self) -> OnnxRuntimeContext | OnnxRuntimeCudaContext:
        outputs = [o.name for o in self.outputs]
        if self.cuda_options is None:
            return OnnxRuntimeContext(self._session, outputs, self._warm)
        return OnnxRuntimeCudaContext(self._cuda_sessions, self.inputs[0].name, outputs)

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
        if self.cuda_options is not None:
            self._cuda_sessions.clear()


class OnnxRuntimeContext:
    """A run over the engine's shared session. `warm`: the input shapes (engines.base.input_shapes)
    that session has run, shared by every context over it, so a new context warms only cold ones."""

    def __init__(self, session: ort.InferenceSession, output_names: list[str], warm: set | None = None) -> None:
        self._session = session
        self._output_names = output_names
        self._closed = False
        self._warm = set() if warm is None else warm

    def is_warm(self, inputs: dict[str, np.ndarray]) -> bool:
        return input_shapes(inputs) in self._warm

    def forget_warm(self) -> None:
        self._warm.clear()

    def infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        session = self._session
        if self._closed or session is None:
            raise InferenceError("context is closed")
        options = ort.RunOptions()
        options.log_severity_level = 4
        cancelled = []

        def cancel() -> None:
            cancelled.append(True)
            options.terminate = True

        watchdog = shared_watchdog()
        token = watchdog.arm(max(timeout, 0.0), cancel)
        try:
            values = session.run(self._output_names, inputs, options)
        except Exception as err:  # ORT raises plain RuntimeError subclasses for run failures
            if cancelled:
                raise InferenceTimeout(f"ONNX Runtime run cancelled after {timeout * 1000:.0f} ms") from None
            raise InferenceError(f"ONNX Runtime run failed: {str(err).splitlines()[0][:300]}") from None
        finally:
            watchdog.disarm(token)
        self._warm.add(input_shapes(inputs))
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        self._closed = True
        self._session = None  # an engine reload frees the old session once its contexts are closed
