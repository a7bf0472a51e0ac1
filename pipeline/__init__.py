"""vidpipe's public Python API, imported on first use so `import pipeline.types` stays light.

    import pipeline
    summary = pipeline.run(pipeline.build_config({"sources": [{"url": "cars.mp4"}]}))

`pipeline.subscribe` is the subscriber module: `pipeline.subscribe.subscribe(url, sources, ...)`
yields the results a run published to Redis.
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
    "VidpipeError": "pipeline.errors",
    "ConfigError": "pipeline.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name == "subscribe":
        return importlib.import_module("pipeline.subscribe")
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, "subscribe"])
