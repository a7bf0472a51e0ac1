"""vidpipe's public Python API, imported on first use so `import pipeline.config` stays light.

    import pipeline
    summary = pipeline.run(pipeline.build_config({"sources": [{"url": "cars.mp4"}]}))

    for delivery in pipeline.subscribe("redis://localhost:6379/0", ["cars"], group="dash"):
        print(delivery.result)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run": "pipeline.api",
    "build_config": "pipeline.config",
    "load_config": "pipeline.config",
    "RunConfig": "pipeline.config",
    "RunSummary": "pipeline.summary",
    "VidpipeError": "engines.errors",
    "ConfigError": "engines.errors",
    "subscribe": "pipeline.sinks.redis.subscriber",
    "live": "pipeline.sinks.redis.subscriber",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
