"""The main process's side of one inference worker: its handle, stopping it, and the contexts in it.

A ProcessContext owns two shared-memory blocks (inputs, outputs) and a connection to its own
thread in the worker (engines/worker.py); only small messages cross the connection. When it
finds its worker dead or poisoned it tells its ProcessEngine (engines/process.py), which
restarts the worker, and raises WorkerLost.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing import reduction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from typing import Protocol

import numpy as np

from engines.errors import InferenceError, InferenceTimeout, WorkerLost
from engines.worker import close_when_free, layout, view

# The worker reports its own timeouts (ONNX Runtime cancels the run); this is the slack
# for that report to arrive before the call is given up on here.
_REPLY_GRACE_S = 0.01


class Supervisor(Protocol):
    """What a ProcessContext needs of the engine that supervises its worker (the ProcessEngine,
    engines/process.py): the worker now serving, how long a context may take to open, and
    where to report a worker found dead or poisoned."""

    @property
    def generation(self) -> int:
        """The generation of the worker now serving (1 for the first, one more per restart)."""
        ...

    create_timeout_s: float  # seconds a context may take to open in the worker

    def worker_lost(self, generation: int, why: str) -> None:
        """Worker `generation` is dead or poisoned (`why`, in words): restart it."""
        ...


@dataclass
class Worker:
    """One worker process: its control connection (shared by the supervisor and the contexts, under
    `control_lock`) and its generation (1 for the first, one more per restart)."""

    process: BaseProcess
    control: Connection
    generation: int
    control_lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False


def exit_status(process: BaseProcess) -> str:
    """How a (dying) process ended, in words: "exit code 1", "killed by SIGKILL", "still running"."""
    process.join(timeout=1)
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def stop(worker: Worker) -> str:
    """Kill the worker (a poisoned one may still run), release what referred to it; how it ended."""
    process = worker.process
    with worker.control_lock:
        if worker.stopped:
            return "stopped"
        worker.stopped = True
        process.kill()  # a no-op for one that already died: its own exit status stays
        worker.control.close()
    process.join(timeout=10)
    status = exit_status(process)
    if process.exitcode is not None:
        process.close()
    return status


class _Block:
    """A shared-memory block created, grown and unlinked by this process."""

    def __init__(self) -> None:
        self.shm: SharedMemory | None = None

    def fit(self, size: int) -> SharedMemory:
        if self.shm is None or self.shm.size < size:
            self.release()
            self.shm = SharedMemory(create=True, size=max(size, 1))
        return self.shm

    def release(self) -> None:
        if self.shm is None:
            return
        self.shm.unlink()
        close_when_free(self.shm)
        self.shm = None


class ProcessContext:
    """A context in the worker process: a connection to its thread there, and two blocks."""

    def __init__(self, engine: Supervisor, worker: Worker) -> None:
        self._engine = engine
        self._generation = worker.generation
        self._inputs, self._outputs = _Block(), _Block()
        self._handed: dict[str, np.ndarray] = {}
        self._usable = True
        self._conn, theirs = multiprocessing.Pipe()
        try:
            try:
                with worker.control_lock:
                    worker.control.send(("open",))
                    reduction.send_handle(worker.control, theirs.fileno(), worker.process.pid)
            except OSError:
                raise self._lost("the worker process died") from None
            finally:
                theirs.close()
            self._check(self._wait(engine.create_timeout_s, "create a context"))
        except BaseException:
            self.close()
            raise

    def infer(self, inputs: dict[str, np.ndarray], timeout: float) -> dict[str, np.ndarray]:
        if not self._usable:
            raise InferenceError("this context was given up on after an earlier timeout")
        if self._generation != self._engine.generation:
            raise self._lost("its worker process was replaced")
        placed, size = layout((name, value.shape, value.dtype) for name, value in inputs.items())
        block = self._inputs.fit(size)
        for entry, value in zip(placed, inputs.values()):
            written_in_place = value is self._handed.get(entry[0]) and entry[1] == 0
            if not written_in_place:
                view(block, entry)[...] = value
        self._handed.clear()
        out = self._outputs.shm
        self._send(("infer", block.name, placed, out.name if out else "", out.size if out else 0, timeout))
        reply = self._wait(timeout + _REPLY_GRACE_S, "answer")
        if reply[0] == "grow":
            out = self._outputs.fit(reply[1])
            self._send(("out", out.name, out.size))
            reply = self._wait(timeout + _REPLY_GRACE_S, "answer")
        self._check(reply)
        out = self._outputs.shm
        return {entry[0]: view(out, entry).copy() for entry in reply[1]}

    def input_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Where the caller can build input `name` for the next call, saving infer() a copy.

        For a model with one input (vidpipe's image models): the buffer is the block's start.
        """
        placed, size = layout([(name, shape, dtype)])
        buffer = self._handed[name] = view(self._inputs.fit(size), placed[0])
        return buffer

    def close(self) -> None:
        self._usable = False
        self._handed.clear()
        self._conn.close()
        self._inputs.release()
        self._outputs.release()

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except OSError:
            raise self._lost("the worker process died") from None

    def _wait(self, timeout: float, what: str) -> tuple:
        try:
            if self._conn.poll(max(timeout, 0.0)):
                return self._conn.recv()
        except (EOFError, OSError):
            raise self._lost("the worker process died") from None
        self._usable = False  # its answer may still come; this context cannot tell it from the next
        raise InferenceTimeout(f"the inference worker did not {what} within {timeout * 1000:.0f} ms")

    def _check(self, reply: tuple) -> None:
        if reply[0] in ("ok", "opened"):
            return
        _, kind, message = reply
        if kind == "sticky":
            raise self._lost(f"sticky error: {message}")
        if kind == "timeout":
            raise InferenceTimeout(message)
        raise InferenceError(message)

    def _lost(self, why: str) -> WorkerLost:
        self._engine.worker_lost(self._generation, why)
        return WorkerLost(f"inference worker {self._generation}: {why}; it is being restarted")
