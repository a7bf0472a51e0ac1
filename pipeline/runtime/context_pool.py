"""Contexts over one engine: created, warmed on every batch shape, checked, kept spare.

A context serves only after it has run every batch shape the scheduler will use and each
output matched the engine's reference: a GPU's first call on a new shape can take a second
or more (cuDNN picks its algorithms then), and that must never look like a hang.

`ShapeTimes` holds what healthy calls take, per batch shape, measured on this machine under
its present load. A call is hung only when it runs `hang_factor` times longer than the
slowest recent healthy call of its shape (and at least `hang_floor_s`); until a shape has
steady samples, its measured first call stands in. So a slow model, a busy machine or a
first call is never mistaken for a hang, and a fault-free run abandons no context.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from engines.base import Engine, WarmShapes
from engines.errors import (
    InferenceError,
    ModelError,
    StickyInferenceError,
    WorkerBudgetExhausted,
    WorkerLost,
)
from pipeline.runtime.heap import release_freed
from pipeline.runtime.infer_stats import InferStats
from pipeline.runtime.ladder import EscalationLadder
from pipeline.runtime.settings import SchedulerSettings
from pipeline.runtime.slot import Abandoned, CallThreads, Slot
from stages.bindings import TensorBindings

log = logging.getLogger("vidpipe.scheduler")

# A new batch shape's outputs are held against the batch-1 reference this loosely (relative
# L2 error): kernels differ per shape (TF32 on GPUs gives ~3e-4), a broken context does not.
NEW_SHAPE_TOLERANCE = 1e-2
# Batch measurement times a shape up to MEASURE_CALLS times while its calls take less than
# MEASURE_AGAIN_S seconds: the fastest call counts, so noise and first-call costs fall out.
MEASURE_CALLS, MEASURE_AGAIN_S = 3, 0.1


class CorruptOutput(InferenceError):
    """A context answered with outputs that cannot be right (NaN, scores outside 0..1, ...)."""


class ShapeTimes:
    """Measured call times per batch shape (seconds), and the timeouts derived from them."""

    WINDOW = 256  # recent healthy calls per shape that set its hang timeout
    MIN_STEADY = 8  # fewer steady samples than this: the first call stands in

    def __init__(self, factor: float, floor_s: float, cap_s: float) -> None:
        self.factor, self.floor_s, self.cap_s = factor, floor_s, cap_s
        self._lock = threading.Lock()
        self._first: dict[int, float] = {}
        self._fastest_first: dict[int, float] = {}
        self._steady: dict[int, deque[float]] = {}

    def first_call(self, shape: int, seconds: float) -> None:
        with self._lock:
            self._first[shape] = max(self._first.get(shape, 0.0), seconds)
            self._fastest_first[shape] = min(self._fastest_first.get(shape, seconds), seconds)

    def timed(self, shape: int) -> bool:
        """Whether a first call of this shape has been measured."""
        with self._lock:
            return shape in self._first

    def fastest_first_calls(self) -> dict[int, float]:
        """The fastest warm-up call measured per batch shape (seconds): what a call of that
        shape costs at best here, for choosing the batch (pipeline/runtime/sizing.py)."""
        with self._lock:
            return dict(self._fastest_first)

    def steady(self, shape: int, seconds: float) -> None:
        with self._lock:
            self._steady.setdefault(shape, deque(maxlen=self.WINDOW)).append(seconds)

    def typical(self, shape: int) -> float:
        """The median healthy call of this shape (0 before any was measured)."""
        with self._lock:
            samples = self._steady.get(shape)
            if samples:
                return statistics.median(samples)
            return self._first.get(shape, 0.0)

    def _base(self, shape: int) -> float | None:
        samples = self._steady.get(shape)
        if samples and len(samples) >= self.MIN_STEADY:
            return max(samples)
        if shape in self._first:
            return self._first[shape]
        return max(self._first.values()) if self._first else None

    def hang_timeout(self, shape: int) -> float:
        """How long a call of this shape may run before it counts as hung."""
        with self._lock:
            base = self._base(shape)
        return self.cap_s if base is None else self._hang_after(base)

    def _hang_after(self, base: float) -> float:
        """`factor` times a measured call (seconds), at least the floor, at most the cap."""
        return min(self.cap_s, max(self.floor_s, self.factor * base))

    def warmup_timeout(self, shape: int) -> float:
        """How long a new context's first call of this shape may take: generous (a first call
        on a GPU tunes kernels), derived from first calls already measured, and bounded."""
        with self._lock:
            first = self._first.get(shape) or (max(self._first.values()) if self._first else None)
        if first is None:
            return self.cap_s
        return min(self.cap_s, max(1.0, self.floor_s, 2 * self.factor * first))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            shapes = sorted(set(self._first) | set(self._steady))
            out = {}
            for shape in shapes:
                samples = list(self._steady.get(shape, ()))
                base = self._base(shape)
                out[str(shape)] = {
                    "first_call_ms": round(self._first.get(shape, 0.0) * 1000, 2),
                    "p50_ms": round(statistics.median(samples) * 1000, 2) if samples else None,
                    "max_ms": round(max(samples) * 1000, 2) if samples else None,
                    "hang_after_ms": round(self._hang_after(base) * 1000, 1) if base is not None else None,
                }
            return out


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
        shape = self.probe_shape
        try:
            timeout = self.times.hang_timeout(shape)
            outputs = slot.call(self.probe_inputs(shape), timeout, self.settings.call_grace_s)
        except InferenceError:
            return False
        return self.mismatch(shape, outputs) is None

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
            raise InferenceError(f"a new context failed its warm-up at batch {shape}: {problem}")
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
            self._timed_probe(slot, shape, self.times.hang_timeout(shape) if shape in warm else None)

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
