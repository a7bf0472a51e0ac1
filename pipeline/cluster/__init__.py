"""vidpipe over a Ray cluster: pipeline workers as Ray actors, sources assigned by load.

- `worker.py`: the `PipelineWorker` actor: one per GPU (or per N CPUs), running the same
  `pipeline.runtime.pipeline.Pipeline` a single run uses, one Pipeline per assigned source.
- `coordinator.py`: the detached `Coordinator` actor: assigns sources, watches workers,
  moves the sources of a dead worker to the survivors.
- `streams.py`: what the cluster reads back from Redis: where a source resumes, the
  assignment state (so a restarted coordinator recovers it) and the cluster-wide ledger.
- `cli.py`: `vidpipe cluster ...`.

Ray is an optional dependency (`pip install 'vidpipe[cluster]'`).
"""

from __future__ import annotations

from enum import StrEnum
from types import ModuleType

from engines.errors import ConfigError

NAMESPACE = "vidpipe"
COORDINATOR = "vidpipe-coordinator"


class SegmentState(StrEnum):
    """Where one source's run on a worker stands (`vidpipe cluster status`'s state column)."""

    WAITING = "waiting"  # the coordinator's view: no worker holds it yet
    ASSIGNED = "assigned"  # the coordinator's view: placed, its worker has not reported it
    STARTING = "starting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"  # `vidpipe cluster remove`, or the worker was told to stop
    LOST = "lost"  # the worker's engine is past its restart budget: the coordinator moves it


FINISHED = frozenset({SegmentState.DONE, SegmentState.FAILED, SegmentState.STOPPED})
ACTIVE = frozenset({SegmentState.STARTING, SegmentState.RUNNING})


def require_ray() -> ModuleType:
    """Ray, or ConfigError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "vidpipe cluster needs Ray, which is not installed; pip install 'vidpipe[cluster]'"
        ) from None
    return ray
