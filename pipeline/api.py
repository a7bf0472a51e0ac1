"""vidpipe's Python API: `run(config) -> RunSummary`."""

from __future__ import annotations

import gc
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from rich.console import Console

from engines.errors import ConfigError, OutputError, SourceError
from pipeline.assets.sample_clip import SAMPLE_CLIP
from pipeline.config import OverloadPolicy, RunConfig, SourceConfig
from pipeline.observability.report import RunDisplay, print_summary
from pipeline.runtime import interrupts
from pipeline.runtime.assemble import assemble, load_sized_model
from pipeline.runtime.heap import release_freed
from pipeline.runtime.pipeline import RunHooks
from pipeline.runtime.sources import SourceRun
from pipeline.sinks import Draining, FileModes, Settling, Sink
from pipeline.summary import RunSummary, SourceLedger
from stages.decode import VideoDecoder
from stages.live import LiveSource
from stages.source import LIVE_SCHEMES, NAME_MAX, Source, is_live, source_name, url_scheme

if TYPE_CHECKING:
    from pipeline.observability.metrics import RunMetrics


def source_configs(config: RunConfig) -> list[SourceConfig]:
    """The configured sources, or the bundled sample clip when there are none."""
    return list(config.sources) or [SourceConfig(url=str(SAMPLE_CLIP), name="sample")]


def unique_names(sources: list[SourceConfig]) -> list[str]:
    """Each source's name: its own (validated by pipeline.config), else one derived from its URL
    (stages.source.source_name) with -2, -3, ... where it repeats another. Given names are
    never changed: derived ones make way for them."""
    taken = {src.name for src in sources if src.name}
    names: list[str] = []
    for src in sources:
        if src.name:
            names.append(src.name)
            continue
        base = source_name(src.url)
        name, n = base, 2
        while name in taken:
            suffix = f"-{n}"
            name, n = base[: NAME_MAX - len(suffix)] + suffix, n + 1
        taken.add(name)
        names.append(name)
    return names


def check_geometry_sources(config: RunConfig, names: list[str]) -> None:
    """ConfigError when a zone or line names a source the run does not have: it would never fire."""
    for kind, items in (("zones", config.analytics.zones), ("lines", config.analytics.lines)):
        for item in items:
            if item.source is not None and item.source not in names:
                raise ConfigError(
                    f"analytics.{kind} {item.name}: no source is named {item.source} (this run's: "
                    f"{', '.join(names)}); give the source that name (--name, sources[].name) or drop `source`"
                )


def open_source(config: RunConfig, src: SourceConfig, name: str) -> SourceRun:
    """Open one source now, so a bad path or an unreachable camera fails before the run."""
    deadline_s = config.deadline_ms / 1000
    live = is_live(src.url)
    scheme = url_scheme(src.url)
    if scheme is not None and not live and scheme != "file":
        raise SourceError(
            f"source {name}: unsupported URL scheme {scheme}://; pass a file path or an "
            + ", ".join(f"{s}://" for s in LIVE_SCHEMES) + " URL"
        )
    if live:
        decoder: Source = LiveSource(
            name,
            src.url,
            deadline_s,
            transport=src.transport,
            open_timeout_s=src.open_timeout_s,
            stall_s=src.stall_s,
            connect_attempts=src.connect_attempts,
            max_reconnects=src.max_reconnects,
            decode=config.decode,
        )
    else:
        decoder = VideoDecoder(name, src.url, deadline_s, decode=config.decode)
    return SourceRun(
        decoder,
        policy=src.policy or (OverloadPolicy.SHED if live else OverloadPolicy.BLOCK),
        realtime=not live and (config.realtime if src.realtime is None else src.realtime),
        max_frames=config.max_frames,
        duration_s=config.duration_s,
    )


def open_sinks(config: RunConfig, run_id: str, sources: dict[str, str]) -> list[Sink]:
    """The sinks the config names; `sources` maps each source's name to its URL."""
    sinks: list[Sink] = []
    try:
        _open_sinks(config, run_id, sources, sinks)
    except BaseException:  # one failed: those already open are closed (an empty video file goes)
        for sink in reversed(sinks):
            sink.close()
        raise
    return sinks


def _open_sinks(config: RunConfig, run_id: str, sources: dict[str, str], sinks: list[Sink]) -> None:
    modes = FileModes(config.outputs.file_mode, config.outputs.dir_mode)
    if config.outputs.video:
        from pipeline.sinks.video import VideoSink

        sinks.append(VideoSink(config.outputs.video, sources, config.analytics, modes))
    if config.outputs.jsonl:
        from pipeline.sinks.jsonl import JsonlSink

        sinks.append(JsonlSink(config.outputs.jsonl, modes.file))
    if config.outputs.redis:
        from pipeline.sinks.redis.sink import RedisSink

        sinks.append(RedisSink(config.outputs.redis, run_id, list(sources), modes))
    if config.outputs.mqtt:
        from pipeline.sinks.mqtt import MqttSink

        sinks.append(MqttSink(config.outputs.mqtt, list(sources), run_id))


def start_metrics(config: RunConfig, names: list[str], stack: ExitStack) -> RunMetrics | None:
    """Serve /metrics, /healthz and /readyz from now (before the model loads) to the end."""
    if config.metrics.port is None:
        return None
    from pipeline.observability.metrics import RunMetrics
    from pipeline.observability.metrics_server import MetricsServer

    metrics = RunMetrics(names)
    stack.enter_context(MetricsServer(metrics, config.metrics.port, config.metrics.host))
    return metrics


def run(
    config: RunConfig, show: bool = False, sinks: list[Sink] | None = None, hooks: RunHooks | None = None
) -> RunSummary:
    """Run the pipeline to the end of every source and return its summary.

    `show` prints progress (on a terminal) and the summary table; `sinks` adds
    sinks of the caller's besides those the config names.
    """
    try:
        return _run(config, show, sinks, hooks)
    finally:
        # The run's pipeline, threads and engine hold each other in reference cycles: collected
        # now, their memory goes back before the caller's next run (200 MB on the H200 with the
        # bench model, which waited for Python's next collection).
        gc.collect()
        release_freed(0)


def _run(config: RunConfig, show: bool, sinks: list[Sink] | None, hooks: RunHooks | None) -> RunSummary:
    console = Console(file=sys.stdout)
    run_id = uuid.uuid4().hex[:12]
    hooks = replace(hooks) if hooks else RunHooks()
    started, first_result = time.monotonic(), []
    hooks.on_result = _chain(hooks.on_result, lambda _: first_result or first_result.append(time.monotonic()))
    configs = source_configs(config)
    names = unique_names(configs)
    check_geometry_sources(config, names)
    with ExitStack() as stack:
        metrics = start_metrics(config, names, stack)
        decoders = [open_source(config, src, name) for src, name in zip(configs, names)]
        for source in decoders:
            stack.callback(source.decoder.close)
        if metrics:
            metrics.sources_opened()
        if _signalled():
            return _not_started(names, show, console)
        sizes = [(s.decoder.info.width, s.decoder.info.height) for s in decoders]
        config, model = load_sized_model(config, sizes)  # sized for this host (pipeline/runtime/assemble.py)
        stack.callback(model.engine.close)
        if _signalled():
            return _not_started(names, show, console)
        # Outputs open last: a run rejected for its input never truncates an earlier --out file.
        all_sinks = open_sinks(config, run_id, {n: c.url for n, c in zip(names, configs)}) + list(sinks or [])
        for sink in all_sinks:
            stack.callback(sink.close)
        views: list[Sink] = []
        if metrics:
            metrics.readiness.model_loaded = True
            hooks.on_decoded = _chain(hooks.on_decoded, metrics.on_decoded)
            all_sinks.insert(0, metrics)  # first: its summary line reaches the other sinks' records
        if show and config.progress and console.is_terminal:
            files = {s.name: _expected_frames(s.decoder.info.frames, config.max_frames) for s in decoders
                     if not s.decoder.live}  # fmt: skip
            live = [s.name for s in decoders if s.decoder.live]
            views.append(stack.enter_context(RunDisplay(files, live, console)))
        pipeline = assemble(config, decoders, model, all_sinks + views, hooks)
        if metrics:
            metrics.attach(pipeline)
        summary = pipeline.run()
        summary.inference = replace(summary.inference, backend=config.model.backend)
        summary.first_result_s = first_result[0] - started if first_result else None
        summary.interrupted = summary.interrupted or _signalled()  # a signal after the drain counts too
        with _signals_end_waits(all_sinks, pipeline.interrupted):
            failed = write_summary(summary, [s for s in all_sinks if s not in pipeline.publisher.dead])
    if show:
        _show_summary(summary, Console(file=sys.stderr) if pipeline.publisher.dead or failed else console)
    return summary


def _expected_frames(declared: int | None, max_frames: int | None) -> int | None:
    """The frames a file's progress bar counts to: what the container declares (None: unknown), at
    most --max-frames."""
    return declared if declared is None or max_frames is None else min(declared, max_frames)


def _show_summary(summary: RunSummary, console: Console) -> None:
    """The summary table; to stderr when `console` fails (a closed pipe on stdout, say). A run
    whose outputs failed passes stderr already: a failed output may be stdout itself."""
    try:
        print_summary(summary, console)
    except OSError:
        print_summary(summary, Console(file=sys.stderr))


def write_summary(summary: RunSummary, sinks: list[Sink]) -> bool:
    """The summary to every sink that still works; one that fails now is named in the later ones'.

    Sinks that learn only at the end what their service kept (`Settling`: Redis) settle first,
    so every sink's summary carries their report and error, and their events come before it.
    Returns whether one failed.
    """
    failed = False
    for settling in [s for s in sinks if isinstance(s, Settling)]:
        try:
            events = settling.settle(summary)
        except (OutputError, OSError) as err:
            summary.error = "; ".join(filter(None, [summary.error, str(err)]))
            events, failed = [], True
        for sink in sinks:
            for event in events if sink is not settling else ():
                try:
                    sink.write_event(event)
                except (OutputError, OSError):
                    pass  # the same failure comes again with its summary, and is named there
    for sink in sinks:
        try:
            sink.write_summary(summary)
        except (OutputError, OSError) as err:
            summary.error = "; ".join(filter(None, [summary.error, str(err)]))
            failed = True
    return failed


@contextmanager
def _signals_end_waits(sinks: list[Sink], interrupted_run: bool) -> Iterator[None]:
    """While the summary is written (CLI), a SIGINT or SIGTERM ends the sinks' waits for their
    services (`Draining`): the process then exits 130/143 at once. A signal the run did not see
    (it came between the run's end and now) counts as one that came now."""
    process = interrupts.current
    if process is None:  # the Python API: the caller's own handlers (KeyboardInterrupt) apply
        yield
        return

    def give_up() -> None:
        for sink in sinks:
            if isinstance(sink, Draining):
                sink.give_up()

    process.stop = process.abort = give_up
    if process.count and not interrupted_run:
        give_up()
    try:
        yield
    finally:
        process.stop = process.abort = None


def _signalled() -> bool:
    """Ctrl-C or SIGTERM during start-up (CLI only): the run does not start."""
    return interrupts.current is not None and interrupts.current.count > 0


def _not_started(names: list[str], show: bool, console: Console) -> RunSummary:
    """Stopped before any output was opened: existing files are left as they were."""
    summary = RunSummary({name: SourceLedger() for name in names}, 0.0, None, None, interrupted=True)
    summary.outputs["outputs"] = {"written": "none (interrupted during start-up; existing files untouched)"}
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
