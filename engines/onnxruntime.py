"""ONNX Runtime backend: one InferenceSession per model, cheap contexts over it.

A session is safe to run from several threads at once, so contexts share it (the
weights live once in memory) and each run gets its own RunOptions, which is what a
watchdog flips to cancel a run past its timeout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.base import TensorSpec
from engines.errors import InferenceError, InferenceTimeout, ModelError
from engines.watchdog import shared_watchdog

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


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None) for d in arg.shape)
    return TensorSpec(arg.name, shape, _DTYPES.get(arg.type, np.dtype(np.float32)))


class OnnxRuntimeEngine:
    def __init__(
        self,
        path: Path,
        providers: list[str] | None = None,
        intra_op_threads: int = 1,
    ) -> None:
        self.name = Path(path).name
        providers = providers or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise ModelError(
                f"ONNX Runtime here has no {', '.join(missing)}; available: "
                f"{', '.join(ort.get_available_providers())}; pick one of those providers"
            )
        if not Path(path).is_file():
            raise ModelError(f"model {path}: no such file; check the path")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._path, self._options, self._providers = Path(path), options, providers
        self._session = self._open()
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.providers = self._session.get_providers()

    def _open(self) -> ort.InferenceSession:
        try:
            # Providers are always explicit: onnxruntime 1.32 lists AzureExecutionProvider first.
            return ort.InferenceSession(str(self._path), self._options, providers=self._providers)
        except Exception as err:  # ORT raises its own exception types for every load failure
            message = str(err).splitlines()[0][:300]
            raise ModelError(f"model {self._path}: ONNX Runtime cannot load it ({message}); check it is a valid ONNX file") from None

    def reload(self) -> None:
        """A new session from the model file; contexts made before keep the old one until closed."""
        if not self._path.is_file():
            raise ModelError(f"model {self._path}: no such file any more; cannot reload the engine")
        self._session = self._open()

    def create_context(self) -> OnnxRuntimeContext:
        return OnnxRuntimeContext(self._session, [o.name for o in self.outputs])

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]


class OnnxRuntimeContext:
    def __init__(self, session: ort.InferenceSession, output_names: list[str]) -> None:
        self._session = session
        self._output_names = output_names
        self._closed = False

    def infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        if self._closed:
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
            values = self._session.run(self._output_names, inputs, options)
        except Exception as err:  # ORT raises plain RuntimeError subclasses for run failures
            if cancelled:
                raise InferenceTimeout(f"ONNX Runtime run cancelled after {timeout * 1000:.0f} ms") from None
            raise InferenceError(f"ONNX Runtime run failed: {str(err).splitlines()[0][:300]}") from None
        finally:
            watchdog.disarm(token)
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        self._closed = True
