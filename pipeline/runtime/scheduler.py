"""The infer scheduler: worker threads that batch frames and run them on the context pool.

Workers take frames earliest-deadline-first, pad each batch up to one of the engine's batch
shapes, and when a context fails, hangs or answers nonsense they swap in a warm spare and
retry the batch. Every frame leaves through `on_done` or `on_failed`; none is dropped.

Deadlines (see Frame.latency_bound):
- Live sources and paced files (`--realtime`): the deadline runs from decode, a latency
  promise. A frame that cannot be inferred in time, or whose result comes back late,
  fails as `deadline`.
- Unpaced files: waiting in queues never fails a frame. The deadline clock starts when the
  frame is taken into a batch and bounds the retries: the first attempt always runs, a
  retry starts only before the deadline, and `max_attempts` bounds attempts as well. So a
  fault-free file run never fails a frame, at any model speed, source count or load.
Hangs are told from slow calls by measurement (pipeline/runtime/shape_times.py), never by
the deadline: a slow call is waited for, and only a hung one costs a context.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from engines.errors import InferenceError, InferenceTimeout, ModelError, StickyInferenceError, WorkerBudgetExhausted
from pipeline.runtime.context_pool import ContextPool, CorruptOutput, ProbeOutcome
from pipeline.runtime.queues import Closed, FrameQueue
from pipeline.runtime.slot import Abandoned, Slot
from stages.types import Frame, Reason

log = logging.getLogger("vidpipe.scheduler")


class InferScheduler:
    """A pool of worker threads, one context each, over one FrameQueue.

    Each worker takes a batch (up to `max_batch` frames, waiting at most `max_delay_s`, never
    past the earliest deadline), runs it on its context and hands the frames to `on_done`.
    On InferenceError or a timeout it swaps in a warm spare (pipeline/runtime/context_pool.py)
    and retries while the frames' deadlines allow; frames out of time go to `on_failed` with
    Reason.DEADLINE. ModelError or WorkerBudgetExhausted, which no retry can fix, fail the
    frames in hand as Reason.INFERENCE and go to `on_fatal`, which ends the run.
    """

    def __init__(
        self,
        pool: ContextPool,
        queue: FrameQueue,
        on_done: Callable[[list[Frame]], None],
        on_failed: Callable[[Frame, Reason, str | None], None],
        on_fatal: Callable[[Exception], None],
        on_suspect: Callable[[str, int, int, int, str], None] | None = None,
    ) -> None:
        self.pool = pool
        self.bindings = pool.bindings
        self.settings = pool.settings
        self.stats = pool.stats
        self.times = pool.times
        self.queue = queue
        self.on_done = on_done
        self.on_failed = on_failed
        self.on_fatal = on_fatal
        self.on_suspect = on_suspect  # (source, first seq, last seq, frames, why): results not to trust
        self.max_batch = min(self.bindings.max_batch(self.settings.max_batch), pool.shapes[-1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.healthy_contexts = 0

    def start(self) -> None:
        """Create and warm the contexts now (a model that cannot run fails here, before any frame)."""
        slots = [self.pool.create() for _ in range(self.settings.contexts)]
        self.healthy_contexts = len(slots)
        for i, slot in enumerate(slots):
            thread = threading.Thread(target=self._work, args=(slot,), name=f"vidpipe-infer-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def use_batch(self, max_batch: int, shapes: tuple[int, ...]) -> None:
        """Batches of at most `max_batch` frames padded to `shapes` from now on (the batch
        chosen by measurement, before any frame is queued)."""
        self.pool.use_shapes(shapes)
        self.max_batch = min(self.bindings.max_batch(max_batch), self.pool.shapes[-1])

    def stop(self) -> None:
        """Workers finish the batch in hand and exit; queued frames stay for the caller."""
        self._stop.set()

    def running(self) -> bool:
        """Whether any worker thread is still alive (it exits when the queue is closed and
        drained, on `stop`, or after a fatal error it has reported to `on_fatal`)."""
        return any(thread.is_alive() for thread in self._threads)

    def wait(self, timeout: float) -> None:
        """Wait at most `timeout` seconds for the workers to exit; returns as soon as they have."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def join(self, timeout: float | None = None) -> None:
        """Wait for each worker thread (at most `timeout` seconds each; None: until it exits),
        then close the context pool and its spares."""
        for thread in self._threads:
            thread.join(timeout)
        self.pool.close()

    # ---- the worker loop ---------------------------------------------------------------

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
        if slot.since_probe and not self._stop.is_set():
            self._vouch(slot, "health probe failed at the end of the run")
        self.pool.discard(slot)

    def _collect(self, wait: float) -> list[Frame] | None:
        """Up to max_batch frames; [] when idle for `wait`; None when the queue is closed.

        Batching never waits past `max_delay_s`, nor past the time the earliest latency
        deadline leaves for one inference. Frames whose deadline starts at their batch get
        it stamped here."""
        try:
            first = self.queue.get(timeout=wait)
        except Closed:
            return None
        if first is None:
            return []
        batch = [first]
        infer_s = self.times.typical(self.max_batch)
        until = min(time.monotonic() + self.settings.max_delay_s, first.deadline - infer_s)
        while len(batch) < self.max_batch:
            try:
                frame = self.queue.get(timeout=max(0.0, until - time.monotonic()))
            except Closed:
                break
            if frame is None:
                break
            batch.append(frame)
            until = min(until, frame.deadline - infer_s)
        now = time.monotonic()
        for frame in batch:
            if not frame.latency_bound:
                frame.deadline = now + self.settings.deadline_s
        return batch

    def _out_of_time(self, frames: list[Frame], attempts: int, error: str | None) -> list[Frame]:
        """Fail the frames that cannot be tried (again) in time; return the rest.

        A latency-bound frame with less than half a typical call's time left cannot make it:
        failing it now keeps a healthy context out of a sure miss. A frame whose deadline
        started at its batch is always tried once, and retried only before its deadline."""
        now = time.monotonic()
        typical = self.times.typical(self.bindings.shape_for(len(frames), self.pool.shapes))
        keep = []
        for frame in frames:
            if frame.latency_bound:
                late = frame.deadline <= now + 0.5 * typical
            else:
                late = attempts > 0 and frame.deadline <= now
            if late:
                self.stats.add(deadline_misses=1)
                self.on_failed(frame, Reason.DEADLINE, error)
            else:
                keep.append(frame)
        return keep

    def _run(self, slot: Slot, frames: list[Frame]) -> Slot:
        failed_at: float | None = None
        last_error: str | None = None
        corrupt_before = False
        attempts = 0
        while True:
            frames = self._out_of_time(frames, attempts, last_error)
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
            shape = self.bindings.shape_for(len(frames), self.pool.shapes)
            start = time.monotonic()
            try:
                outputs = self._attempt(slot, frames, shape, confirm=corrupt_before)
            except InferenceError as err:
                failed_at = failed_at or time.monotonic()
                last_error = str(err)
                corrupt_before = corrupt_before or isinstance(err, CorruptOutput)
                slot = self._recover(slot, frames, err)
                if attempts < self.settings.max_attempts:
                    self.stats.add(retries=1)
                continue
            except Exception as err:  # a bug, not a fault: report it loudly, still fail the frames
                log.exception("inference worker error")
                for frame in frames:
                    self.on_failed(frame, Reason.INFERENCE, f"internal error: {err}")
                return slot
            took = time.monotonic() - start
            self._succeeded(slot, frames, shape, took, failed_at, outputs)
            return slot

    def _attempt(self, slot: Slot, frames: list[Frame], shape: int, confirm: bool) -> dict:
        """One call at batch `shape`, its outputs checked before anything trusts them.

        Outputs that fail the check are the context's fault (CorruptOutput: replaced and
        retried) unless, on a retry (`confirm`), the context that gave them again still passes
        a health probe: then they are the model's own answer to these frames, and postprocess
        fails just the frames whose values are not detections."""
        inputs = self.bindings.inputs(frames, slot.context, shape)
        outputs = slot.call(inputs, self.times.hang_timeout(shape), self.settings.call_grace_s)
        problem = self.bindings.output_problem(outputs, len(frames))
        if problem and not (confirm and self.pool.probe(slot)):
            raise CorruptOutput(f"context returned outputs that cannot be right: {problem}")
        return outputs

    def _recover(self, slot: Slot, frames: list[Frame], err: InferenceError) -> Slot:
        """Count the fault and swap in a fresh context (the ladder escalates past that)."""
        timed_out = isinstance(err, InferenceTimeout)
        corrupt = isinstance(err, CorruptOutput)
        sticky = isinstance(err, StickyInferenceError)
        self.stats.add(
            timeouts=int(timed_out),
            corrupt_outputs=int(corrupt),
            errors=int(not timed_out and not corrupt),
            sticky_errors=int(sticky),
        )
        if sticky:
            self.pool.flush_spares()
        elif slot.fresh:
            self.pool.ladder.fresh_failed()
        try:
            return self._replace(slot, abandoned=isinstance(err, Abandoned), suspect=corrupt)
        except (ModelError, WorkerBudgetExhausted) as fatal:
            for frame in frames:
                self.on_failed(frame, Reason.INFERENCE, str(fatal))
            raise

    def _succeeded(
        self, slot: Slot, frames: list[Frame], shape: int, took: float, failed_at: float | None, outputs: dict
    ) -> None:
        if slot.fresh:
            slot.fresh = False
            self.pool.ladder.fresh_ok()
        self.times.steady(shape, took)
        self.stats.batch_done(len(frames), took, failed_at, time.monotonic())
        self.bindings.split(frames, outputs)
        now = time.monotonic()
        done = []
        for frame in frames:
            frame.timings["infer"] = took * 1000
            if frame.latency_bound and frame.deadline < now:
                self.stats.add(deadline_misses=1)
                late_ms = (now - frame.deadline) * 1000
                self.on_failed(frame, Reason.DEADLINE, f"inferred {late_ms:.0f} ms after its deadline")
            else:
                done.append(frame)
        if done:
            slot.inferred(done)
            self.on_done(done)

    def _replace(self, slot: Slot, abandoned: bool, suspect: bool = False) -> Slot:
        start = time.monotonic()
        self.pool.discard(slot, abandoned=abandoned, suspect=suspect)
        fresh = self.pool.take()
        self.stats.rebuilt(time.monotonic() - start)
        return fresh

    def _check(self, slot: Slot) -> Slot:
        if self._vouch(slot, "health probe failed"):
            return slot
        log.warning("health probe failed; rebuilding the context")
        return self._replace(slot, abandoned=False, suspect=True)

    def _vouch(self, slot: Slot, why: str) -> bool:
        """Run a health probe on `slot`. A good one vouches for the frames it inferred since
        the last; a failed one flags them (`on_suspect`, per source): they were published
        after passing the per-batch output check, but the probe shows this context gives
        plausible wrong answers that no such check can see. A probe that raised or timed out
        judges nothing: its context is replaced, like one whose batch raised."""
        outcome = self.pool.probe_outcome(slot)
        ok = outcome is ProbeOutcome.OK
        self.stats.add(probes=1, probe_failures=int(not ok))
        if outcome is ProbeOutcome.WRONG:
            self.stats.add(suspect_frames=sum(frames for _, _, frames in slot.since_probe.values()))
            for source, (first, last, frames) in slot.since_probe.items():
                if self.on_suspect is not None:
                    self.on_suspect(source, first, last, frames, why)
        slot.since_probe.clear()
        return ok
