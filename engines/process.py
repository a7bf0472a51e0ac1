"""ProcessEngine: the Engine protocol over a real engine that runs in a supervised worker process.

Some faults cannot be fixed inside the process that has them: a CUDA illegal address
poisons every context and engine in it, and a driver segfault takes the process down.
So the real engine runs in a child process (engines/worker.py) and this side supervises
it: when the worker dies or reports a sticky error, a supervisor thread starts a new one,
with backoff, within a restart budget (`max_restarts` in `restart_window_s`). Contexts of
the lost worker fail with WorkerLost; `create_context()` waits for the new worker, and
past the budget raises WorkerBudgetExhausted.

The worker builds its engine from an engine spec (engines/spec.py): plain values, so the
worker imports only `engines` and the backend, never `pipeline` or `stages`. Each context
(engines/process_context.py) owns two shared-memory blocks and a connection to its own
thread in the worker; only small messages cross the connection.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from engines.base import Engine, EngineEvent, EventHandler
from engines.errors import InferenceError, ModelError, WorkerBudgetExhausted
from engines.fault_plan import FaultPlan
from engines.process_context import ProcessContext, Worker, exit_status, stop
from engines.spec import ENGINE_SPECS, EngineSpec
from engines.worker import run_worker

log = logging.getLogger("vidpipe.worker")

# A new worker forks from a server process that has already imported numpy and the
# backend: ~10 ms instead of ~0.5 s with "spawn" on a loaded 2-core machine, and that is
# most of a restart. The server never touches the GPU, so, unlike a plain fork of the
# main process, no CUDA state is inherited.
_START_METHOD = "forkserver"
_BACKOFF_S = 0.1
_BACKOFF_MAX_S = 5.0


class ProcessEngine:
    """An Engine whose real engine is built in a supervised worker process from `spec`.

    `spec`: an EngineSpec (engines/spec.py), which the worker builds with `build_engine`;
    or, for tests and custom backends, any picklable callable returning an Engine.
    `preload`: more modules for the workers' fork server to import once (a spec names its own).
    Raises ModelError when the first worker cannot start or build its engine.
    """

    def __init__(
        self,
        spec: EngineSpec | Callable[[], Engine],
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
        self._spec = spec
        self._faults: FaultPlan | None = None
        self._mp = multiprocessing.get_context(_START_METHOD)
        own = spec.preload if isinstance(spec, ENGINE_SPECS) else ()
        self._mp.set_forkserver_preload(["engines.worker", *own, *preload])
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
        stop(self._worker)
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

    def _start(self, generation: int) -> tuple[Worker, tuple]:
        control, child_end = self._mp.Pipe()
        process = self._mp.Process(
            target=run_worker,
            args=(self._spec, self._plan_for(generation), child_end),
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
        worker = Worker(process, control, generation)
        try:
            if not control.poll(self.start_timeout_s):
                message = ("failed", f"not ready within {self.start_timeout_s:.0f} s")
            else:
                message = control.recv()
        except (EOFError, OSError):
            message = ("failed", f"the process exited during start-up ({exit_status(process)})")
        if message[0] != "ready":
            stop(worker)
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

    def _restart(self, old: Worker, why: str) -> bool:
        """Replace the lost worker; False when the budget is spent or the engine closed."""
        detected = time.monotonic()
        status = stop(old)
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
                    stop(worker)
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
