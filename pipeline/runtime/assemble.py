"""Where a run is put together: `pipeline.run` (pipeline/api.py), the cluster worker
(pipeline/cluster/worker.py) and `vidpipe bench` all size and build their runs here.

Each auto value is sized for this host once (pipeline/runtime/sizing.py), in two steps because
the model sits between them:

1. `load_sized_model`: the engine's ONNX Runtime threads, which are fixed when an engine is
   built, then the model on them.
2. `size_for_model`: the rest (the batch, the preprocess and postprocess workers), once the
   model says whether it letterboxes on the GPU; `assemble` does it and builds the Pipeline.

A caller that loads its model otherwise (a test wrapping the engine) still goes through
`assemble`.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from pipeline.config import RunConfig
from pipeline.runtime.model import Model, load_model
from pipeline.runtime.pipeline import Pipeline, RunHooks
from pipeline.runtime.sizing import Sizing, size_engine, size_run
from pipeline.runtime.sources import SourceRun
from pipeline.sinks import Sink

log = logging.getLogger("vidpipe.runtime")


def load_sized_model(
    config: RunConfig, source_sizes: list[tuple[int, int]], bare: bool = False
) -> tuple[RunConfig, Model]:
    """The config with the engine sized for this host, and the model loaded on it.

    `source_sizes` ((width, height) of each source; none where not known yet) choose the input
    size of a model with dynamic height and width. `bare`: in this process and without the
    config's injected faults (bench's stages alone). Raises ModelError.
    """
    config = size_engine(config)
    if bare:
        return config, load_model(config.model, source_sizes=source_sizes)
    return config, load_model(config.model, config.faults, config.infer, source_sizes=source_sizes)


def size_for_model(config: RunConfig, sources: int, model: Model) -> tuple[RunConfig, Sizing]:
    """The config with every other auto value sized for `sources` sources on this model, and
    what was chosen (the run's `sizing`)."""
    config, sizing = size_run(config, sources, letterbox_on_gpu=model.bindings.gpu_planes)
    return config, replace(sizing, input_size=model.input_size)


def assemble(
    config: RunConfig, sources: list[SourceRun], model: Model, sinks: list[Sink], hooks: RunHooks | None = None
) -> Pipeline:
    """The Pipeline of a run over `sources`, sized for this host and `model`; `run()` runs it."""
    config, sizing = size_for_model(config, len(sources), model)
    log.info("sized for this host: %s", sizing.describe())
    return Pipeline(config, sources, model, sinks, hooks, sizing=sizing)
