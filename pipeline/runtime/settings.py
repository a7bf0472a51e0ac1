"""How the infer scheduler and its context pool batch, time and recover (`SchedulerSettings`).

It imports nothing of the runtime, so the pool (pipeline/runtime/context_pool.py) and the
scheduler (pipeline/runtime/scheduler.py) both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

# Warm spare contexts a run keeps beside its `infer.contexts`, at most: a failed context is
# swapped for a spare already warmed on every batch shape, so recovery never waits for a new
# context to be created (a GPU's can take seconds). Two cover a failure while the spare
# that replaced the last one is still being made; more only hold memory. A run with fewer
# contexts keeps as many spares as contexts.
MAX_SPARES = 2


def spares_for(contexts: int) -> int:
    """The warm spares a run with `contexts` contexts keeps: as many, at most MAX_SPARES."""
    return min(contexts, MAX_SPARES)


@dataclass(frozen=True)
class SchedulerSettings:
    """How the scheduler batches, times and recovers. Times are seconds."""

    contexts: int = 2
    max_batch: int = 4
    batch_shapes: tuple[int, ...] = (1, 2, 3, 4)
    measure_batches: tuple[int, ...] = ()  # timed once on the first context, to choose the batch
    deadline_s: float = 2.0  # the budget of a frame whose deadline starts at its batch
    max_delay_s: float = 0.005
    max_attempts: int = 5
    health_interval_s: float = 5.0
    probe_tolerance: float = 1e-3
    hang_factor: float = 8.0
    hang_floor_s: float = 0.25
    create_timeout_s: float = 30.0
    create_attempts: int = 8
    spares: int = 1  # warm spare contexts kept ready for swaps (a run keeps spares_for(contexts))
    # Slack for a backend to report its own timeout before the context is abandoned.
    call_grace_s: float = 0.02
    # Escalation: this many fresh contexts failing in a row (no first batch succeeding between
    # them) within the window reload the engine. At 5, a 20% error rate alone almost never does.
    reload_after: int = 5
    reload_window_s: float = 30.0
