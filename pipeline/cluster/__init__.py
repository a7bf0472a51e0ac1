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

from types import ModuleType

from engines.errors import ConfigError

NAMESPACE = "vidpipe"
COORDINATOR = "vidpipe-coordinator"


def require_ray() -> ModuleType:
    """Ray, or ConfigError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "vidpipe cluster needs Ray, which is not installed; pip install 'vidpipe[cluster]'"
        ) from None
    return ray
