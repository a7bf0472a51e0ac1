"""Importing TensorRT (the full package or the lean runtime) and logging through vidpipe.

TensorRT is optional: nothing imports it until a TensorRT engine is asked for, and a
missing install is one clear ModelError instead of an ImportError traceback.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from typing import Any

from engines.errors import ModelError

log = logging.getLogger("vidpipe.tensorrt")


def import_tensorrt(builder: bool = False) -> tuple[ModuleType, bool]:
    """(module, is_lean): `tensorrt`, else the lean `tensorrt_lean` runtime unless building."""
    try:
        import tensorrt

        return tensorrt, False
    except ImportError:
        pass
    if builder:
        raise ModelError(
            "TensorRT is not installed: building engines needs the full tensorrt package "
            "(pip install tensorrt, with a matching CUDA); or use --backend onnxruntime"
        )
    try:
        import tensorrt_lean

        return tensorrt_lean, True
    except ImportError:
        raise ModelError(
            "TensorRT is not installed: the tensorrt backend needs it; install tensorrt "
            "(or tensorrt_lean for prebuilt version-compatible engines) or use --backend onnxruntime"
        ) from None


def major_version(trt: ModuleType) -> int:
    return int(trt.__version__.split(".")[0])


def make_logger(trt: ModuleType) -> Any:
    """A trt.ILogger that forwards to Python logging and keeps the errors for our messages.

    TensorRT calls it from its own threads, so it only appends under a lock.
    """

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self._lock = threading.Lock()

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                with self._lock:
                    self.errors.append(msg)
                log.error("%s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("%s", msg)
            else:
                log.debug("%s", msg)

        def last_error(self, default: str = "no error logged") -> str:
            with self._lock:
                return self.errors[-1] if self.errors else default

    return Logger()
