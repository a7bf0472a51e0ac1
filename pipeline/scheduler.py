"""The infer scheduler: a pool of contexts over one engine, one worker thread each.

Workers batch frames earliest-deadline-first, and when a context fails or hangs they
swap in a warm spare and retry the batch while its deadlines allow. Every frame leaves
through `on_done` or `on_failed`; none is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from engines.base import Context, Engine
from engines.errors import (
    InferenceError,
    InferenceTimeout,
    ModelError,
    StickyInferenceError,
    WorkerBudgetExhausted,
    WorkerLost,
)
from pipeline.ladder import EscalationLadder
from pipeline.queues import Closed, FrameQueue
from pipeline.types import Frame, Reason
from stages.infer import InferStage

log = logging.getLogger("vidpipe.scheduler")


@dataclass(frozen=True)
class SchedulerSettings:
    contexts: int = 2
    max_batch: int = 4
    max_delay_s: float = 0.005
    max_attempts: int = 5
    health_interval_s: float = 5.0
    probe_tolerance: float = 1e-3
    create_timeout_s: float = 30.0
    create_attempts: int = 8
    spares: int = 1
    # Slack for a backend to report its own timeout before the context is abandoned.
    call_grace_s: float = 0.02
    # Escalation: this many fresh contexts failing in a row (no first batch succeeding between
    # them) within the window reload the engine. At 5, a 20% error rate alone almost never does.
    reload_after: int = 5
    reload_window_s: float = 30.0


# The least time a call leaves before its deadline for a retry on a spare context.
RETRY_ROOM_S = 0.05


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


class InferStats:
    """Counters of the inference stage, safe to update from every worker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = 0
        self.frames = 0
        self.retries = 0
        self.rebuilds = 0
        self.errors = 0
        self.timeouts = 0
        self.abandoned = 0
        self.abandoned_live = 0
        self.deadline_misses = 0
        self.inference_failures = 0
        self.probes = 0
        self.probe_failures = 0
        self.create_failures = 0
        self.sticky_errors = 0
        self.engine_reloads = 0
        self.engine_reload_failures = 0
        self.worker_restarts = 0
        self.worker_start_failures = 0
        self.worker_budget_exhausted = False
        self.reload_ms: deque[float] = deque(maxlen=100_000)
        self.restart_ms: deque[float] = deque(maxlen=100_000)
        self.rebuild_ms: deque[float] = deque(maxlen=100_000)
        self.recovery_ms: deque[float] = deque(maxlen=100_000)
        self.recovery_overhead_ms: deque[float] = deque(maxlen=100_000)
        self.infer_ms: deque[float] = deque(maxlen=100_000)
        self.batch_sizes: dict[int, int] = {}  # frames in a batch -> batches of that size

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def escalation(self, kind: str, details: dict) -> None:
        """Count an escalation event (engine reload, worker restart, ...) by its kind."""
        with self.lock:
            if kind == "engine_reloaded":
                self.engine_reloads += 1
                self.reload_ms.append(details["reload_ms"])
            elif kind == "engine_reload_failed":
                self.engine_reload_failures += 1
            elif kind == "worker_restarted":
                self.worker_restarts += 1
                self.restart_ms.append(details["restart_ms"])
            elif kind == "worker_start_failed":
                self.worker_start_failures += 1
            elif kind == "worker_budget_exhausted":
                self.worker_budget_exhausted = True

    def snapshot(self) -> dict[str, float | int | None]:
        with self.lock:
            rebuild, recovery = list(self.rebuild_ms), list(self.recovery_ms)
            restart = list(self.restart_ms)
            return {
                "batches": self.batches,
                "mean_batch": round(self.frames / self.batches, 2) if self.batches else None,
                "retries": self.retries,
                "rebuilds": self.rebuilds,
                "rebuild_ms_p50": percentile(rebuild, 50),
                "rebuild_ms_p99": percentile(rebuild, 99),
                "rebuild_ms_total": round(sum(rebuild), 1),
                "recovery_ms_p50": percentile(recovery, 50),
                "recovery_ms_p99": percentile(recovery, 99),
                "recovery_overhead_ms_p50": percentile(list(self.recovery_overhead_ms), 50),
                "recovery_overhead_ms_p99": percentile(list(self.recovery_overhead_ms), 99),
                "errors": self.errors,
                "timeouts": self.timeouts,
                "abandoned": self.abandoned,
                "abandoned_live": self.abandoned_live,
                "deadline_misses": self.deadline_misses,
                "inference_failures": self.inference_failures,
                "probes": self.probes,
                "probe_failures": self.probe_failures,
                "create_failures": self.create_failures,
                "sticky_errors": self.sticky_errors,
                "engine_reloads": self.engine_reloads,
                "engine_reload_failures": self.engine_reload_failures,
                "reload_ms_total": round(sum(self.reload_ms), 1),
                "worker_restarts": self.worker_restarts,
                "worker_restart_ms_p50": percentile(restart, 50),
                "worker_restart_ms_p99": percentile(restart, 99),
                "worker_restart_ms_total": round(sum(restart), 1),
                "worker_start_failures": self.worker_start_failures,
                "worker_budget_exhausted": self.worker_budget_exhausted,
            }


class Abandoned(InferenceTimeout):
    """The context did not answer in time and cannot be cancelled: it is left to the reaper."""


class Slot:
    """A context and the one thread that calls it, so a hung call never holds a worker."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.fresh = True  # no batch has succeeded on it yet
        self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidpipe-ctx")
        self._pending = None

    def call(self, inputs: dict[str, np.ndarray], timeout: float, grace: float) -> dict[str, np.ndarray]:
        self._pending = self._calls.submit(self.context.infer, inputs, timeout)
        try:
            return self._pending.result(timeout=max(timeout, 0.0) + grace)
        except FutureTimeout:
            raise Abandoned(f"no answer within {timeout * 1000:.0f} ms; context abandoned") from None

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the call in flight (if any) has returned."""
        if self._pending is None or self._pending.done():
            callback()
        else:
            self._pending.add_done_callback(lambda _: callback())

    def close(self) -> None:
        self._calls.shutdown(wait=False)
        try:
            self.context.close()
        except Exception:  # a broken context may fail to close; it is gone either way
            log.debug("closing a context failed", exc_info=True)


class ContextPool:
    """Creates, warms and checks contexts; keeps one warm spare ready for swaps."""

    def __init__(
        self,
        engine: Engine,
        stage: InferStage,
        reference: dict[str, np.ndarray],
        settings: SchedulerSettings,
        stats: InferStats,
    ) -> None:
        self.engine = engine
        self.stage = stage
        self.reference = reference
        self.settings = settings
        self.stats = stats
        self._probe = stage.probe_inputs()
        self.warmup_s = 0.0  # running estimate of a new context's first inference
        self.ladder = EscalationLadder(
            engine, stats.escalation, settings.reload_after, settings.reload_window_s, self.flush_spares
        )
        self._spares: list[Slot] = []
        self._lock = threading.Lock()
        self._want_spare = threading.Event()
        self._want_spare.set()  # spares are warm before the first failure needs one
        self._closed = threading.Event()
        self._spare_thread = threading.Thread(target=self._keep_spare, name="vidpipe-spare", daemon=True)
        self._spare_thread.start()

    def healthy(self, outputs: dict[str, np.ndarray]) -> bool:
        tol = self.settings.probe_tolerance
        for name, ref in self.reference.items():
            got = outputs.get(name)
            if got is None or got.shape != ref.shape:
                return False
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            if not np.allclose(got, ref, rtol=tol, atol=tol * max(scale, 1.0)):
                return False
        return True

    def probe(self, slot: Slot, timeout: float) -> bool:
        """Run the probe input through `slot`; False on error, timeout or wrong output."""
        try:
            return self.healthy(slot.call(self._probe, timeout, self.settings.call_grace_s))
        except InferenceError:
            return False

    def _create_once(self) -> Slot:
        slot = Slot(self.engine.create_context())
        # The first inference doubles as warm-up (slow on some backends) and health check.
        start = time.monotonic()
        try:
            outputs = slot.call(self._probe, self._warmup_timeout(), self.settings.call_grace_s)
            took = time.monotonic() - start
            self.warmup_s = 0.8 * self.warmup_s + 0.2 * took if self.warmup_s else took
            if not self.healthy(outputs):
                raise InferenceError("a new context failed its warm-up probe")
        except InferenceError as err:
            self.discard(slot, abandoned=isinstance(err, Abandoned))
            if not isinstance(err, StickyInferenceError):
                self.ladder.fresh_failed()
            raise
        # A context that passed its warm-up breaks a run of failures: the engine still works.
        self.ladder.fresh_ok()
        return slot

    def _warmup_timeout(self) -> float:
        """The first context gets the full creation timeout (a first inference can take a
        second on some backends); after that a warm-up ten times slower than usual is a hang,
        not worth waiting for while the spares run out and workers create contexts themselves."""
        if not self.warmup_s:
            return self.settings.create_timeout_s
        return min(self.settings.create_timeout_s, max(0.2, 10 * self.warmup_s))

    def create(self) -> Slot:
        last: Exception | None = None
        failures = 0
        while failures < self.settings.create_attempts:
            try:
                return self._create_once()
            except WorkerLost as err:
                last = err  # the supervisor restarts the worker within its own budget; try its successor
            except (InferenceError, ModelError) as err:
                last = err
                failures += 1
                self.stats.add(create_failures=1)
        sticky = isinstance(last, StickyInferenceError)
        hint = "; run with --isolation process so a worker restart can recover" if sticky else ""
        raise ModelError(
            f"model {self.engine.name}: cannot create a working inference context "
            f"({self.settings.create_attempts} tries, last: {last}); check the model and backend{hint}"
        )

    def flush_spares(self) -> None:
        """Drop the warm spares (after a sticky error they are as poisoned as the context that raised it)."""
        with self._lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.close()
        self._want_spare.set()

    def take(self) -> Slot:
        """A ready context: a warm spare when there is one, else a new one made now."""
        with self._lock:
            slot = self._spares.pop() if self._spares else None
        self._want_spare.set()
        return slot if slot is not None else self.create()

    def discard(self, slot: Slot, abandoned: bool = False) -> None:
        if not abandoned:
            slot.close()
            return
        self.stats.add(abandoned=1, abandoned_live=1)

        def reap() -> None:
            slot.close()
            self.stats.add(abandoned_live=-1)

        slot.when_idle(reap)

    def _keep_spare(self) -> None:
        while not self._closed.is_set():
            self._want_spare.wait(0.5)
            if self._closed.is_set():
                break
            with self._lock:
                if len(self._spares) >= self.settings.spares:
                    self._want_spare.clear()
                    continue
            try:
                slot = self._create_once()
            except WorkerBudgetExhausted:
                return  # the workers run will stop; nothing to keep spare for
            except WorkerLost:
                continue
            except (InferenceError, ModelError):
                self.stats.add(create_failures=1)
                time.sleep(0.05)
                continue
            with self._lock:
                if len(self._spares) < self.settings.spares and not self._closed.is_set():
                    self._spares.append(slot)
                    slot = None
            if slot is not None:
                slot.close()

    def close(self) -> None:
        self._closed.set()
        self._want_spare.set()
        self._spare_thread.join(timeout=5)
        with self._lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.close()


class InferScheduler:
    def __init__(
        self,
        pool: ContextPool,
        queue: FrameQueue,
        on_done: Callable[[list[Frame]], None],
        on_failed: Callable[[Frame, Reason, str | None], None],
        on_fatal: Callable[[Exception], None],
    ) -> None:
        self.pool = pool
        self.stage = pool.stage
        self.settings = pool.settings
        self.stats = pool.stats
        self.queue = queue
        self.on_done = on_done
        self.on_failed = on_failed
        self.on_fatal = on_fatal
        self.max_batch = self.stage.max_batch(self.settings.max_batch)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._infer_s = 0.0  # running estimate of one inference, to stop batching in time
        self.healthy_contexts = 0

    def start(self) -> None:
        """Create the contexts now (a model that cannot run fails here, before any frame)."""
        slots = [self.pool.create() for _ in range(self.settings.contexts)]
        self.healthy_contexts = len(slots)
        for i, slot in enumerate(slots):
            thread = threading.Thread(target=self._work, args=(slot,), name=f"vidpipe-infer-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Workers finish the batch in hand and exit; queued frames stay for the caller."""
        self._stop.set()

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)
        self.pool.close()

    def _work(self, slot: Slot) -> None:
        next_probe = time.monotonic() + self.settings.health_interval_s
        try:
            while not self._stop.is_set():
                batch = self._collect(max(0.0, min(next_probe - time.monotonic(), 0.25)))
                if batch is None:
                    break
                if batch:
                    slot = self._run(slot, batch)
                now = time.monotonic()
                overdue = now >= next_probe + self.settings.health_interval_s
                if now >= next_probe and (not batch or overdue):
                    slot = self._check(slot)
                    next_probe = time.monotonic() + self.settings.health_interval_s
        except (ModelError, WorkerBudgetExhausted) as err:
            self.on_fatal(err)
            return
        finally:
            self.healthy_contexts -= 1
        self.pool.discard(slot)

    def _collect(self, wait: float) -> list[Frame] | None:
        """Up to max_batch frames; [] when idle for `wait`; None when the queue is closed."""
        try:
            first = self.queue.get(timeout=wait)
        except Closed:
            return None
        if first is None:
            return []
        batch = [first]
        until = min(time.monotonic() + self.settings.max_delay_s, first.deadline - self._infer_s)
        while len(batch) < self.max_batch:
            try:
                frame = self.queue.get(timeout=max(0.0, until - time.monotonic()))
            except Closed:
                break
            if frame is None:
                break
            batch.append(frame)
            until = min(until, frame.deadline - self._infer_s)
        return batch

    def _run(self, slot: Slot, frames: list[Frame]) -> Slot:
        failed_at: float | None = None
        last_error: str | None = None
        attempts = 0
        while True:
            now = time.monotonic()
            # A frame with less than half an inference's time left cannot make it: failing it
            # now keeps a healthy context out of a sure timeout (and a needless rebuild).
            cutoff = now + 0.5 * self._infer_s
            live = [f for f in frames if f.deadline > cutoff]
            for frame in frames:
                if frame.deadline <= cutoff:
                    self.stats.add(deadline_misses=1)
                    self.on_failed(frame, Reason.DEADLINE, last_error)
            frames = live
            if not frames:
                return slot
            if attempts >= self.settings.max_attempts:
                self.stats.add(inference_failures=len(frames))
                for frame in frames:
                    self.on_failed(frame, Reason.INFERENCE, last_error)
                return slot
            attempts += 1
            for frame in frames:
                frame.attempts = attempts
            time_left = min(f.deadline for f in frames) - now
            # A call may use the time to the earliest deadline, less room for one retry: a
            # context that hangs is given up while a spare can still answer in time.
            timeout = time_left - min(max(4 * self._infer_s, RETRY_ROOM_S), time_left / 2)
            start = time.monotonic()
            try:
                inputs = self.stage.inputs(frames, slot.context)
                outputs = slot.call(inputs, timeout, self.settings.call_grace_s)
            except InferenceError as err:
                failed_at = failed_at or time.monotonic()
                last_error = str(err)
                timed_out = isinstance(err, InferenceTimeout)
                sticky = isinstance(err, StickyInferenceError)
                self.stats.add(timeouts=int(timed_out), errors=int(not timed_out), sticky_errors=int(sticky))
                if sticky:
                    self.pool.flush_spares()
                elif slot.fresh:
                    self.pool.ladder.fresh_failed()
                try:
                    slot = self._replace(slot, abandoned=isinstance(err, Abandoned))
                except (ModelError, WorkerBudgetExhausted) as fatal:
                    for frame in frames:
                        self.on_failed(frame, Reason.INFERENCE, str(fatal))
                    raise
                if any(f.deadline > time.monotonic() for f in frames) and attempts < self.settings.max_attempts:
                    self.stats.add(retries=1)
                continue
            except Exception as err:  # a bug, not a fault: report it loudly, still fail the frames
                log.exception("inference worker error")
                for frame in frames:
                    self.on_failed(frame, Reason.INFERENCE, f"internal error: {err}")
                return slot
            took = time.monotonic() - start
            if slot.fresh:
                slot.fresh = False
                self.pool.ladder.fresh_ok()
            self._infer_s = 0.8 * self._infer_s + 0.2 * took if self._infer_s else took
            with self.stats.lock:
                self.stats.batches += 1
                self.stats.frames += len(frames)
                self.stats.batch_sizes[len(frames)] = self.stats.batch_sizes.get(len(frames), 0) + 1
                self.stats.infer_ms.append(took * 1000)
                if failed_at is not None:
                    recovery = time.monotonic() - failed_at
                    self.stats.recovery_ms.append(recovery * 1000)
                    # What recovery cost beyond the retry's own inference: the swap and the wait for it.
                    self.stats.recovery_overhead_ms.append((recovery - took) * 1000)
            self.stage.split(frames, outputs)
            for frame in frames:
                frame.timings["infer"] = took * 1000
            self.on_done(frames)
            return slot

    def _replace(self, slot: Slot, abandoned: bool) -> Slot:
        start = time.monotonic()
        self.pool.discard(slot, abandoned=abandoned)
        fresh = self.pool.take()
        with self.stats.lock:
            self.stats.rebuilds += 1
            self.stats.rebuild_ms.append((time.monotonic() - start) * 1000)
        return fresh

    def _check(self, slot: Slot) -> Slot:
        ok = self.pool.probe(slot, timeout=max(1.0, 20 * self._infer_s))
        self.stats.add(probes=1, probe_failures=int(not ok))
        if ok:
            return slot
        log.warning("health probe failed; rebuilding the context")
        return self._replace(slot, abandoned=False)
