"""vidpipe's Python API: `run(config) -> RunSummary`."""

from __future__ import annotations

import sys
import uuid
from contextlib import ExitStack

from rich.console import Console

from pipeline.config import RunConfig, SourceConfig
from pipeline.model import SAMPLE_CLIP, load_model
from pipeline.report import ProgressDisplay, print_summary
from pipeline.runtime import Pipeline, RunHooks, Source
from pipeline.sinks import Sink
from pipeline.summary import RunSummary
from stages.decode import VideoDecoder, source_name


def is_live(url: str) -> bool:
    return url.startswith(("rtsp://", "rtsps://", "rtmp://", "udp://", "tcp://", "srt://"))


def source_configs(config: RunConfig) -> list[SourceConfig]:
    """The configured sources, or the bundled sample clip when there are none."""
    return list(config.sources) or [SourceConfig(url=str(SAMPLE_CLIP), name="sample")]


def unique_names(sources: list[SourceConfig]) -> list[str]:
    names: list[str] = []
    for src in sources:
        base = src.name or source_name(src.url)
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def open_sinks(config: RunConfig, run_id: str) -> list[Sink]:
    sinks: list[Sink] = []
    if config.outputs.jsonl:
        from pipeline.sinks.jsonl import JsonlSink

        sinks.append(JsonlSink(config.outputs.jsonl))
    if config.outputs.redis:
        from pipeline.sinks.redis import RedisSink

        sinks.append(RedisSink(config.outputs.redis, run_id))
    return sinks


def run(config: RunConfig, show: bool = False, sinks: list[Sink] | None = None, hooks: RunHooks | None = None) -> RunSummary:
    """Run the pipeline to the end of every source and return its summary.

    `show` prints progress (on a terminal) and the summary table; `sinks` adds
    sinks of the caller's besides those the config names.
    """
    console = Console(file=sys.stdout)
    run_id = uuid.uuid4().hex[:12]
    with ExitStack() as stack:
        all_sinks = open_sinks(config, run_id) + list(sinks or [])
        for sink in all_sinks:
            stack.callback(sink.close)
        configs = source_configs(config)
        decoders = []
        for src, name in zip(configs, unique_names(configs)):
            decoder = VideoDecoder(name, src.url, config.deadline_ms / 1000)
            stack.callback(decoder.close)
            decoders.append(Source(decoder, src.policy or ("shed" if is_live(src.url) else "block")))
        model = load_model(config.model, config.faults)
        stack.callback(model.engine.close)
        for source in decoders:
            source.decoder.fit_to = model.input_size
        hooks = hooks or RunHooks()
        pipeline = Pipeline(config, decoders, model, all_sinks, hooks)
        if show and config.progress and console.is_terminal:
            totals = {s.name: s.decoder.info.frames for s in decoders}
            display = stack.enter_context(ProgressDisplay(totals, console))
            hooks.on_result = _chain(hooks.on_result, display.advance)
        summary = pipeline.run()
        summary.inference["backend"] = config.model.backend
        for sink in all_sinks:
            sink.write_summary(summary)
    if show:
        print_summary(summary, console)
    return summary


def _chain(first, second):
    if first is None:
        return second

    def both(result):
        first(result)
        second(result)

    return both
