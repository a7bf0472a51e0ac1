"""Contexts over one engine: created, warmed on every batch shape, checked, kept spare.

A context serves only after it has run every batch shape the scheduler will use and each
output matched the engine's reference: a GPU's first call on a new shape can take a second
or more (cuDNN picks its algorithms then), and that must never look like a hang.

What healthy calls take per shape, and so when a call is hung, is measured in
pipeline/runtime/shape_times.py (`ShapeTimes`).
"""

from __future__ import annotations

import logging
import threading
import time
from enum import Enum

import numpy as np

from engines.base import Engine, WarmShapes
from engines.errors import (
    InferenceError,
    InferenceTimeout,
    ModelError,
    StickyInferenceError,
    WorkerBudgetExhausted,
    WorkerLost,
)
from pipeline.runtime.heap import release_freed
from pipeline.runtime.infer_stats import InferStats
from pipeline.runtime.ladder import EscalationLadder
from pipeline.runtime.settings import SchedulerSettings
from pipeline.runtime.shape_times import ShapeTimes
from pipeline.runtime.slot import Abandoned, CallThreads, Slot
from stages.bindings import TensorBindings

log = logging.getLogger("vidpipe.scheduler")

# A new batch shape's outputs are held against the batch-1 reference this loosely (relative
# L2 error): kernels differ per shape (TF32 on GPUs gives ~3e-4), a broken context does not.
NEW_SHAPE_TOLERANCE = 1e-2
# A warm-up call that raises is tried again on the same context, up to WARMUP_TRIES calls in
# all (a readiness probe's failure threshold): one transient error does not condemn a context.
# At 30% injected errors, a cold context's three shapes failed its warm-up two times in three,
# five such contexts in a row reloaded the engine, which made every shape cold again, and
# runs died after 8 failed creations. Wrong outputs, hangs and sticky errors are not retried.
WARMUP_TRIES = 3
# Batch measurement times a shape up to MEASURE_CALLS times while its calls take less than
# MEASURE_AGAIN_S seconds: the fastest call counts, so noise and first-call costs fall out.
MEASURE_CALLS, MEASURE_AGAIN_S = 3, 0.1


class CorruptOutput(InferenceError):
    """A context answered with outputs that cannot be right (NaN, scores outside 0..1, ...)."""


class ProbeOutcome(Enum):
    OK = "ok"
    FAILED = "failed"  # an error or a timeout: nothing to judge
    WRONG = "wrong"  # outputs unlike the reference


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """‖got − ref‖ / ‖ref‖ in float64 (inf when the shapes differ). Outputs near zero (a
    detector that sees nothing) are measured against an RMS floor of 1e-3 per element instead,
    so float noise on zeros does not count as a wrong answer."""
    if got.shape != ref.shape:
        return float("inf")
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    scale = max(float(np.linalg.norm(ref64)), 1e-3 * np.sqrt(ref64.size), 1e-12)
    return float(np.linalg.norm(got64 - ref64)) / scale


class ContextPool:
    """Creates, warms and checks contexts; keeps warm spares ready for swaps.

    `reference` is the engine's outputs for `bindings.probe_inputs()` (one probe image, batch
    1 or the model's fixed batch), recorded at load. The first context to warm a batch
    shape records that shape's reference (checked loosely against the batch-1 one); every
    later context, and every health probe, must match it within `probe_tolerance`.
    """

    def __init__(
        self,
        engine: Engine,
        bindings: TensorBindings,
        reference: dict[str, np.ndarray],
        settings: SchedulerSettings,
        stats: InferStats,
    ) -> None:
        self.engine = engine
        self.bindings = bindings
        self.settings = settings
        self.stats = stats
        self.shapes = bindings.batch_shapes(settings.batch_shapes)
        self.probe_shape = self.shapes[0]
        # Batches timed once, on the first context, for choosing the batch (pipeline/runtime/sizing.py).
        self.candidates = () if bindings.fixed_batch else tuple(settings.measure_batches)
        self.times = ShapeTimes(settings.hang_factor, settings.hang_floor_s, settings.create_timeout_s)
        self._base_rows = bindings.fixed_batch or 1
        self._refs: dict[int, dict[str, np.ndarray]] = {self._base_rows: reference}
        self._base = reference
        self.ladder = EscalationLadder(
            engine, stats.escalation, settings.reload_after, settings.reload_window_s, self.flush_spares
        )
        self._spares: list[Slot] = []
        self._probes: dict[int, dict[str, np.ndarray]] = {}  # the probe inputs per batch shape, made once
        self._threads = CallThreads()
        self._lock = threading.Lock()
        self._want_spare = threading.Event()
        self._want_spare.set()  # spares are warm before the first failure needs one
        self._closed = threading.Event()
        self._spare_thread = threading.Thread(target=self._keep_spare, name="vidpipe-spare", daemon=True)
        self._spare_thread.start()

    # ---- checking outputs --------------------------------------------------------------

    def mismatch(self, shape: int, outputs: dict[str, np.ndarray]) -> str | None:
        """Why `outputs` of the probe at batch `shape` are not what a healthy context gives."""
        with self._lock:
            ref = self._refs.get(shape)
        strict = ref is not None
        for name, base in self._base.items():
            got = outputs.get(name)
            if got is None or got.shape[1:] != base.shape[1:] or len(got) != shape:
                return f"output '{name}' has shape {None if got is None else list(got.shape)}"
            if strict:
                error, tol = relative_error(got, ref[name]), self.settings.probe_tolerance
            else:
                error = max(relative_error(row[None], base[:1]) for row in got)
                tol = max(NEW_SHAPE_TOLERANCE, self.settings.probe_tolerance)
            if not error <= tol:
                return f"output '{name}' is off by {error:.2e} (relative), more than {tol:.0e}"
        if not strict:
            with self._lock:
                self._refs.setdefault(shape, {k: v.copy() for k, v in outputs.items()})
        return None

    def probe_inputs(self, shape: int) -> dict[str, np.ndarray]:
        """The probe image at batch `shape`, made once per shape: every warm-up and health probe
        reuses it rather than allocating megabytes on whichever thread runs it."""
        with self._lock:
            inputs = self._probes.get(shape)
        if inputs is None:
            inputs = self.bindings.probe_inputs(shape)
            with self._lock:
                inputs = self._probes.setdefault(shape, inputs)
        return inputs

    def probe(self, slot: Slot) -> bool:
        """Run the probe through `slot`; False on error, timeout or outputs unlike the reference."""
        return self.probe_outcome(slot) is ProbeOutcome.OK

    def probe_outcome(self, slot: Slot) -> ProbeOutcome:
        """Run the probe through `slot`: OK, FAILED (an error or timeout: no answer to judge) or
        WRONG (it answered, unlike the reference: the context gives wrong outputs)."""
        shape = self.probe_shape
        try:
            timeout = self.times.hang_timeout(shape)
            outputs = slot.call(self.probe_inputs(shape), timeout, self.settings.call_grace_s)
        except InferenceError:
            return ProbeOutcome.FAILED
        return ProbeOutcome.OK if self.mismatch(shape, outputs) is None else ProbeOutcome.WRONG

    def use_shapes(self, shapes: tuple[int, ...]) -> None:
        """Run these batch shapes from now on (the batch chosen by measurement): contexts made
        later warm only them, and health probes run the smallest."""
        self.shapes = self.bindings.batch_shapes(shapes)
        self.probe_shape = self.shapes[0]

    def _measure(self, slot: Slot) -> None:
        """Timed calls per batch in `self.candidates` on a warm `slot`, checked like a warm-up;
        once per run. A shape's first call pays what later calls do not (a tenth of a second
        on a 2-core CPU for YOLO11n at batch 1, twice a later call), and the batch is chosen by
        the fastest call of each shape (pipeline/runtime/sizing.py), so each shape is timed
        again while that is cheap (MEASURE_CALLS calls while under MEASURE_AGAIN_S each); the
        smallest shape, warmed just before, too. A costly shape keeps its first-call figure,
        which errs toward the smaller batch. A failed call ends the measuring (the run stays at
        the shapes it has) and fails this context's warm-up."""
        with self._lock:
            candidates, self.candidates = self.candidates, ()
        for shape in (self.probe_shape, *candidates) if candidates else ():
            for _ in range(MEASURE_CALLS):
                if self._timed_probe(slot, shape) >= MEASURE_AGAIN_S:
                    break

    def _timed_probe(self, slot: Slot, shape: int, timeout: float | None = None) -> float:
        """One probe call at batch `shape` (within `timeout`, else a first call's), timed into
        ShapeTimes (a warm call only lowers the shape's fastest) and checked; its seconds."""
        start = time.monotonic()
        timeout = self.times.warmup_timeout(shape) if timeout is None else timeout
        outputs = slot.call(self.probe_inputs(shape), timeout, self.settings.call_grace_s)
        took = time.monotonic() - start
        self.times.first_call(shape, took)
        problem = self.mismatch(shape, outputs)
        if problem:
            raise CorruptOutput(f"a new context failed its warm-up at batch {shape}: {problem}")
        return took

    # ---- creating --------------------------------------------------------------------

    def _warm(self, slot: Slot) -> None:
        """Run on `slot` every batch shape its session has not run yet (all of them unless its
        context is `WarmShapes`), timed as first calls; when none is cold, the probe shape alone
        (a session handed on already paid its first calls, and a new context is still checked
        before it serves). Each output is checked against the shape's reference. Shapes not yet
        timed in this pool always run: the first context measures them all."""
        context = slot.context
        warm = {
            s for s in self.shapes
            if self.times.timed(s) and isinstance(context, WarmShapes) and context.is_warm(self.probe_inputs(s))
        }  # fmt: skip
        cold = [s for s in self.shapes if s not in warm]
        for shape in cold or [self.probe_shape]:
            for tries_left in range(WARMUP_TRIES - 1, -1, -1):
                try:
                    self._timed_probe(slot, shape, self.times.hang_timeout(shape) if shape in warm else None)
                    break
                except (CorruptOutput, InferenceTimeout, StickyInferenceError):
                    raise  # wrong outputs, a hang or a poisoned process: no second chance
                except InferenceError:
                    if not tries_left:
                        raise

    def _create_once(self, measure: bool = False) -> Slot:
        slot = Slot(self.engine.create_context(), self._threads)
        try:
            self._warm(slot)
            if measure and self.candidates:  # only in create(): the run's start waits for it
                self._measure(slot)
        except InferenceError as err:
            self.discard(slot, abandoned=isinstance(err, Abandoned))
            if not isinstance(err, StickyInferenceError):
                self.ladder.fresh_failed()
            raise
        # A context that passed its warm-up breaks a run of failures: the engine still works.
        self.ladder.fresh_ok()
        with self.stats.lock:
            self.stats.shapes = self.times.snapshot()
        return slot

    def create(self) -> Slot:
        """A new context, warmed and checked against the reference (the first also times the batches);
        ModelError after `create_attempts` failures (a lost worker's successor is tried without counting)."""
        last: Exception | None = None
        failures = 0
        while failures < self.settings.create_attempts:
            try:
                return self._create_once(measure=True)
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

    # ---- spares and swaps --------------------------------------------------------------

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

    def discard(self, slot: Slot, abandoned: bool = False, suspect: bool = False) -> None:
        """Close `slot` (once its call returns, when `abandoned`). `suspect`: its outputs were
        wrong, so its session's warm shapes are forgotten and checked again by the next context."""
        if suspect and isinstance(slot.context, WarmShapes):
            slot.context.forget_warm()
        if not abandoned:
            slot.close()
            release_freed()
            return
        self.stats.add(abandoned=1, abandoned_live=1)

        def reap() -> None:
            slot.close()
            release_freed()
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
        """Stop the spare keeper (waiting up to 5 s) and close the spares; workers discard their own contexts."""
        self._closed.set()
        self._want_spare.set()
        self._spare_thread.join(timeout=5)
        with self._lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.close()
        self._threads.close()
        with self.stats.lock:
            self.stats.shapes = self.times.snapshot()
