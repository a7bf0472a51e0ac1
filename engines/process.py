"""ProcessEngine: the Engine protocol over a real engine that runs in a supervised worker process.

Some faults cannot be fixed inside the process that has them: a CUDA illegal address
poisons every context and engine in it, and a driver segfault takes the process down.
So the real engine runs in a child process (engines/worker.py) and this side supervises
it: when the worker dies or reports a sticky error, a supervisor thread starts a new one,
with backoff, within a restart budget (`max_restarts` in `restart_window_s`). Contexts of
the lost worker fail with WorkerLost; `create_context()` waits for the new worker, and
past the budget raises WorkerBudgetExhausted.

Each context owns two shared-memory blocks (inputs, outputs) and a connection to its own
thread in the worker; only small messages cross the connection.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from engines.base import EngineEvent, EventHandler
from engines.errors import InferenceError, InferenceTimeout, ModelError, WorkerBudgetExhausted, WorkerLost
from engines.faults import FaultPlan
from engines.worker import close_when_free, layout, run_worker, view

log = logging.getLogger("vidpipe.worker")

# A new worker forks from a server process that has already imported numpy and the
# backend: ~10 ms instead of ~0.5 s with "spawn" on a loaded 2-core machine, and that is
# most of a restart. The server never touches the GPU, so, unlike a plain fork of the
# main process, no CUDA state is inherited.
_START_METHOD = "forkserver"
# The worker reports its own timeouts (ONNX Runtime cancels the run); this is the slack
# for that report to arrive before the call is given up on here.
_REPLY_GRACE_S = 0.01
_BACKOFF_S = 0.1
_BACKOFF_MAX_S = 5.0



@dataclass
class _Worker:
    process: BaseProcess
    control: Connection
    generation: int
    control_lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False


class ProcessEngine:
    """An Engine whose real engine is built by `factory` (picklable) in a worker process."""

    def __init__(
        self,
        factory: Callable[[], Any],
        preload: tuple[str, ...] = (),
        max_restarts: int = 5,
        restart_window_s: float = 60.0,
        start_timeout_s: float = 120.0,
        create_timeout_s: float = 30.0,
    ) -> None:
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.start_timeout_s = start_timeout_s
        self.create_timeout_s = create_timeout_s
        self.on_event: EventHandler | None = None
        self.restarts = 0
        self._factory = factory
        self._faults: FaultPlan | None = None
        self._mp = multiprocessing.get_context(_START_METHOD)
        self._mp.set_forkserver_preload(["engines.worker", *preload])
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._lost: str | None = None  # why the current worker is lost, until a new one is up
        self._failure: str | None = None  # the budget is spent: why
        self._recent: deque[float] = deque()  # start times of recent restarts, for the budget
        self._wake_r, self._wake_w = os.pipe()
        try:
            self._worker, (self.name, self.inputs, self.outputs, self.metadata) = self._start(1)
        except ModelError:
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="vidpipe-supervisor", daemon=True)
        self._supervisor.start()

    @property
    def pid(self) -> int | None:
        """The worker process's id (for operators and tests)."""
        return self._worker.process.pid

    @property
    def generation(self) -> int:
        """1 for the first worker, one more for each started since."""
        return self._worker.generation

    # ---- the Engine protocol -----------------------------------------------------------

    def create_context(self) -> ProcessContext:
        """A context in the current worker; waits while a restart is under way."""
        with self._cond:
            while self._lost is not None and self._failure is None and not self._closed.is_set():
                self._cond.wait()
            if self._failure is not None:
                raise WorkerBudgetExhausted(self._failure)
            if self._closed.is_set():
                raise InferenceError("the inference engine is closed")
            worker = self._worker
        return ProcessContext(self, worker)

    def reload(self) -> None:
        """Reload the engine in the worker from its file; if that fails, restart the worker."""
        with self._cond:
            worker, lost = self._worker, self._lost
        if lost is not None:
            return  # a restart is under way, and it loads the engine afresh
        try:
            with worker.control_lock:
                worker.control.send(("reload",))
                if worker.control.poll(self.start_timeout_s):
                    reply = worker.control.recv()
                else:
                    reply = ("failed", f"no answer within {self.start_timeout_s:.0f} s")
        except (EOFError, OSError):
            reply = ("failed", "the worker process died")
        if reply[0] != "reloaded":
            self.worker_lost(worker.generation, f"engine reload failed: {reply[1]}")
            raise ModelError(
                f"model {self.name}: reloading the engine failed ({reply[1]}); restarting the inference worker"
            )

    def inject_faults(self, plan: FaultPlan) -> None:
        """From now on, contexts in this worker and in every later one inject faults per `plan`."""
        self._faults = plan
        worker = self._worker
        try:
            with worker.control_lock:
                worker.control.send(("faults", self._plan_for(worker.generation)))
        except OSError:
            pass  # the worker is gone; its successor starts with the plan

    def close(self) -> None:
        with self._cond:
            if self._closed.is_set():
                return
            self._closed.set()
            self._cond.notify_all()
            os.write(self._wake_w, b"x")
        self._supervisor.join(timeout=10)
        _stop(self._worker)
        if not self._supervisor.is_alive():
            with self._cond:
                os.close(self._wake_r)
                os.close(self._wake_w)

    # ---- supervision -------------------------------------------------------------------

    def worker_lost(self, generation: int, why: str) -> None:
        """Called by a context that found its worker dead or poisoned: restart it (once per worker)."""
        with self._cond:
            if generation != self._worker.generation or self._lost is not None or self._closed.is_set():
                return
            self._lost = why
            os.write(self._wake_w, b"x")

    def _plan_for(self, generation: int) -> FaultPlan | None:
        plan = self._faults
        if plan is None or plan.seed is None:
            return plan
        # Each worker draws its own sequence: a restarted one must not repeat the fault that killed the last.
        return plan.model_copy(update={"seed": plan.seed + 1000 * (generation - 1)})

    def _start(self, generation: int) -> tuple[_Worker, tuple]:
        control, child_end = self._mp.Pipe()
        process = self._mp.Process(
            target=run_worker,
            args=(self._factory, self._plan_for(generation), child_end),
            name=f"vidpipe-infer-worker-{generation}",
            daemon=True,
        )
        try:
            process.start()
        except OSError as err:
            control.close()
            raise ModelError(f"inference worker: cannot start a process ({err})") from None
        finally:
            child_end.close()
        worker = _Worker(process, control, generation)
        try:
            if not control.poll(self.start_timeout_s):
                message = ("failed", f"not ready within {self.start_timeout_s:.0f} s")
            else:
                message = control.recv()
        except (EOFError, OSError):
            message = ("failed", f"the process exited during start-up ({_exit_status(process)})")
        if message[0] != "ready":
            _stop(worker)
            raise ModelError(f"inference worker: cannot start: {message[1]}")
        return worker, message[1:]

    def _supervise(self) -> None:
        try:
            while not self._closed.is_set():
                worker = self._worker
                ready = wait([worker.process.sentinel, self._wake_r])
                if self._wake_r in ready:
                    os.read(self._wake_r, 512)
                with self._cond:
                    if self._closed.is_set():
                        return
                    if self._lost is None and worker.process.sentinel in ready:
                        self._lost = "the worker process died"
                    why = self._lost
                if why is not None and not self._restart(worker, why):
                    return
        except Exception:  # a bug here must not leave contexts waiting for a worker forever
            log.exception("the inference worker supervisor failed")
            with self._cond:
                self._failure = "the inference worker supervisor failed (a bug; see the log)"
                self._cond.notify_all()

    def _restart(self, old: _Worker, why: str) -> bool:
        """Replace the lost worker; False when the budget is spent or the engine closed."""
        detected = time.monotonic()
        status = _stop(old)
        log.warning("inference worker %d lost: %s (%s)", old.generation, why, status)
        self._emit(EngineEvent.WORKER_LOST, generation=old.generation, reason=why, status=status)
        generation, last = old.generation, why
        while True:
            now = time.monotonic()
            while self._recent and self._recent[0] <= now - self.restart_window_s:
                self._recent.popleft()
            if len(self._recent) >= self.max_restarts:
                return self._exhausted(last)
            delay = min(_BACKOFF_S * 2 ** (len(self._recent) - 1), _BACKOFF_MAX_S) if self._recent else 0.0
            self._recent.append(now)
            if self._closed.wait(delay):
                return False
            generation += 1
            try:
                worker, _ = self._start(generation)
            except ModelError as err:
                last = str(err)
                log.warning("inference worker %d: %s", generation, last)
                self._emit(EngineEvent.WORKER_START_FAILED, generation=generation, error=last)
                continue
            restart_ms = round((time.monotonic() - detected) * 1000, 1)
            with self._cond:
                if self._closed.is_set():
                    _stop(worker)
                    return False
                self._worker, self._lost = worker, None
                self.restarts += 1
                self._cond.notify_all()
            log.warning(
                "inference worker %d started in %.0f ms (restart %d)", generation, restart_ms, self.restarts
            )
            self._emit(EngineEvent.WORKER_RESTARTED, generation=generation, restart_ms=restart_ms, reason=why)
            return True

    def _exhausted(self, last: str) -> bool:
        failure = (
            f"the inference worker needed {len(self._recent) + 1} restarts within {self.restart_window_s:g} s, "
            f"more than its restart budget of {self.max_restarts} (last failure: {last}); fix the cause "
            "(see the log), or raise infer.max_restarts or infer.restart_window_s"
        )
        with self._cond:
            self._failure = failure
            self._cond.notify_all()
        self._emit(
            EngineEvent.WORKER_BUDGET_EXHAUSTED, restarts=len(self._recent), window_s=self.restart_window_s, reason=last
        )
        return False

    def _emit(self, kind: EngineEvent, **details: Any) -> None:
        handler = self.on_event
        if handler is None:
            return
        try:
            handler(kind, details)
        except Exception:  # whoever listens must not break supervision
            log.exception("handling the %s event failed", kind)


def _exit_status(process: BaseProcess) -> str:
    process.join(timeout=1)
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _stop(worker: _Worker) -> str:
    """Kill the worker (a poisoned one may still run), release what referred to it; how it ended."""
    process = worker.process
    with worker.control_lock:
        if worker.stopped:
            return "stopped"
        worker.stopped = True
        process.kill()  # a no-op for one that already died: its own exit status stays
        worker.control.close()
    process.join(timeout=10)
    status = _exit_status(process)
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

    def __init__(self, engine: ProcessEngine, worker: _Worker) -> None:
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
