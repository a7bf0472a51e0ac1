"""The inference worker process: the real engine, served to the main process over shared memory.

engines/process.py starts `run_worker` in a child process. The child builds the engine
itself from an engine spec (engines/spec.py: plain values, no `pipeline` import), so a
crash or a poisoned CUDA context stays in it, reports the engine's tensors,
then serves two kinds of connection:

- the control connection: "open" (a new context; its own connection follows as a file
  descriptor), "reload" (the engine, from its file) and "faults" (inject from now on);
- one connection per context, served by its own thread, so contexts run concurrently
  as they do in-process.

Tensors never travel through a connection: the main process writes the inputs into a
shared-memory block, the worker writes the outputs into another, and the messages carry
only block names, offsets, shapes and dtypes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from multiprocessing import reduction
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from engines.base import Context, Engine, Reloadable
from engines.errors import InferenceError, InferenceTimeout, StickyInferenceError
from engines.fault_plan import FaultPlan
from engines.faults import FaultyContext, FaultyEngine
from engines.spec import ENGINE_SPECS, EngineSpec, build_engine

# Each tensor starts on a cache line, so the worker's reads and writes stay aligned.
_ALIGN = 64

Layout = list[tuple[str, int, tuple[int, ...], str]]  # (name, offset, shape, dtype.str)


def layout(tensors: Iterable[tuple[str, tuple[int, ...], np.dtype]]) -> tuple[Layout, int]:
    """Where each tensor goes in a block, and the block size they need."""
    placed: Layout = []
    offset = 0
    for name, shape, dtype in tensors:
        dtype = np.dtype(dtype)
        placed.append((name, offset, tuple(int(d) for d in shape), dtype.str))
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        offset += -(-size // _ALIGN) * _ALIGN
    return placed, offset


def view(block: SharedMemory, entry: tuple[str, int, tuple[int, ...], str]) -> np.ndarray:
    _, offset, shape, dtype = entry
    return np.ndarray(shape, np.dtype(dtype), buffer=block.buf, offset=offset)


_lingering: list[SharedMemory] = []
_lingering_lock = threading.Lock()


def close_when_free(block: SharedMemory) -> None:
    """Close a block now, or once the last array viewing it is gone (an exception's frame,
    a caller's batch), so neither its mapping nor its file descriptor outlives its use."""
    with _lingering_lock:
        _lingering.append(block)
        waiting = []
        for candidate in _lingering:
            try:
                candidate.close()
            except BufferError:
                waiting.append(candidate)
        _lingering[:] = waiting


class _Host:
    """The engine in this process, with the fault plan the main process asked for."""

    def __init__(self, inner: Engine, plan: FaultPlan | None) -> None:
        self.inner = inner
        self.engine: Engine = inner
        if plan is not None:
            self.inject(plan)

    def inject(self, plan: FaultPlan) -> None:
        self.engine = FaultyEngine(self.inner, plan)

    def reload(self) -> tuple:
        if not isinstance(self.engine, Reloadable):
            return ("failed", f"engine {self.inner.name} cannot be reloaded in place")
        try:
            self.engine.reload()
        except Exception as err:  # a reload that fails for any reason escalates to a restart
            return ("failed", str(err) or type(err).__name__)
        return ("reloaded",)


class _Attached:
    """The shared-memory blocks one context uses, attached by name, re-attached when replaced."""

    def __init__(self) -> None:
        self._blocks: dict[str, SharedMemory] = {}

    def get(self, role: str, name: str) -> SharedMemory:
        block = self._blocks.get(role)
        if block is None or block.name != name:
            if block is not None:
                close_when_free(block)
            block = self._blocks[role] = SharedMemory(name)
        return block

    def close(self) -> None:
        for block in self._blocks.values():
            close_when_free(block)
        self._blocks.clear()


def _error(err: Exception) -> tuple:
    if isinstance(err, StickyInferenceError):
        return ("error", "sticky", str(err))
    if isinstance(err, InferenceTimeout):
        return ("error", "timeout", str(err))
    if isinstance(err, InferenceError):
        return ("error", "error", str(err))
    return ("error", "error", f"inference worker: {type(err).__name__}: {err}")


def _serve(conn: Connection, host: _Host) -> None:
    """One context: requests in order, until the main process closes the connection. Faults
    injected while it is open apply to it from its next request, as to contexts opened later."""
    try:
        context = host.engine.create_context()
    except Exception as err:  # the main process decides what a failed creation means
        _send(conn, _error(err))
        conn.close()
        return
    blocks = _Attached()
    engine = host.engine
    try:
        if _send(conn, ("opened",)):
            while True:
                request = conn.recv()
                if host.engine is not engine and isinstance(host.engine, FaultyEngine):
                    engine = host.engine
                    context = FaultyContext(context.inner if isinstance(context, FaultyContext) else context, engine)
                if not _send(conn, _infer(conn, context, blocks, request)):
                    break
    except (EOFError, OSError):
        pass  # the main process closed this context
    finally:
        context.close()
        blocks.close()
        conn.close()


def _infer(conn: Connection, context: Context, blocks: _Attached, request: tuple) -> tuple:
    _, in_name, in_layout, out_name, out_size, timeout = request
    try:
        block = blocks.get("in", in_name)
        inputs = {entry[0]: view(block, entry) for entry in in_layout}
        outputs = context.infer(inputs, timeout)
        del inputs, block
    except Exception as err:  # every failure goes back as a message; the worker lives on
        return _error(err)
    placed, needed = layout((name, value.shape, value.dtype) for name, value in outputs.items())
    if needed > out_size or not out_name:
        # The main process makes a larger block and names it; the outputs wait here.
        if not _send(conn, ("grow", needed)):
            raise EOFError
        _, out_name, out_size = conn.recv()
    block = blocks.get("out", out_name)
    for entry, value in zip(placed, outputs.values()):
        view(block, entry)[...] = value
    return ("ok", placed)


def _send(conn: Connection, message: tuple) -> bool:
    try:
        conn.send(message)
    except OSError:
        return False
    return True


def run_worker(spec: EngineSpec | Callable[[], Engine], plan: FaultPlan | None, control: Connection) -> None:
    """The worker process's main: build the engine (`build_engine(spec)`, or `spec()` for a
    test's or custom backend's factory), say so, then serve until the main process goes."""
    # Ctrl-C reaches the whole process group; the main process decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = build_engine(spec) if isinstance(spec, ENGINE_SPECS) else spec()
    except Exception as err:  # a model that cannot load: the main process reports it
        _send(control, ("failed", str(err) or type(err).__name__))
        return
    host = _Host(engine, plan)
    if not _send(control, ("ready", engine.name, engine.inputs, engine.outputs, engine.metadata)):
        return  # the main process gave up on this worker
    while True:
        try:
            message = control.recv()
        except (EOFError, OSError):
            return
        if message[0] == "open":
            conn = Connection(reduction.recv_handle(control))
            threading.Thread(target=_serve, args=(conn, host), name="vidpipe-worker-ctx", daemon=True).start()
        elif message[0] == "reload":
            if not _send(control, host.reload()):
                return
        elif message[0] == "faults":
            host.inject(message[1])
