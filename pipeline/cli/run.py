"""`vidpipe run`: its flags, the config they build, and the exit code a run ends with."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.errors import ConfigError
from pipeline.cli.exits import (
    EXIT_FAILED_FRAMES,
    EXIT_INTERRUPTED,
    EXIT_LEDGER,
    EXIT_USER_ERROR,
    EXIT_WORKER_BUDGET,
)
from stages.redact import printable, redact

if TYPE_CHECKING:
    import argparse


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.config import OverloadPolicy

    parser.add_argument("videos", nargs="*", help="video files or rtsp:// URLs (default: the bundled sample clip)")
    parser.add_argument("--config", type=Path, help="a YAML config file (flags override its fields)")
    parser.add_argument("--name", action="append", help="name of each source, in order (repeat it; sources "
                        "without one get a name from the file or URL, with -2, -3... when taken)")
    parser.add_argument("--model", type=Path, help="an ONNX model (default: the embedded colour-blob detector)")
    parser.add_argument("--backend", choices=["onnxruntime", "tensorrt"])
    parser.add_argument("--engine", type=Path, help="a serialized TensorRT engine to load (implies --backend tensorrt)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="TensorRT build precision")
    parser.add_argument("--layout", choices=["auto", "yolov8", "yolov5", "yolox", "e2e"])
    parser.add_argument("--imgsz", type=int, help="square input size for a model with dynamic height and width "
                        "(default: a rectangle fitting the video)")
    parser.add_argument("--labels", type=Path, help="class names, one per line")
    parser.add_argument("--out", type=Path, help="write one JSON line per frame result here")
    parser.add_argument("--file-mode", metavar="OCTAL",
                        help="permission bits of the JSONL, video and spool files created (default 600)")
    parser.add_argument("--dir-mode", metavar="OCTAL",
                        help="permission bits of the spool and video directories created (default 700)")
    parser.add_argument(
        "--redis", nargs="?", const="", metavar="URL",
        help="publish results to Redis Streams at URL (redis://, rediss://); --redis alone uses $REDIS_URL",
    )
    parser.add_argument("--deadline-ms", type=float, help="live and paced sources: ms after decode before a frame "
                        "fails as deadline; unpaced files: ms after a frame enters its batch during which it may be "
                        "retried (default 2000)")
    parser.add_argument("--batch", type=int, help="largest inference batch")
    parser.add_argument("--max-delay-ms", type=float, help="longest wait to fill a batch")
    parser.add_argument("--contexts", type=int, help="inference contexts (one worker each)")
    parser.add_argument("--max-attempts", type=int, help="inference attempts per frame")
    parser.add_argument("--isolation", choices=["thread", "process"],
                        help="process: run the engine in a supervised worker process (default: thread)")
    parser.add_argument("--max-restarts", type=int, help="worker restarts allowed within --restart-window-s")
    parser.add_argument("--restart-window-s", type=float, help="the window of the worker restart budget")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads per inference")
    parser.add_argument("--conf", type=float, help="confidence threshold")
    parser.add_argument("--iou", type=float, help="NMS IoU threshold")
    parser.add_argument("--classes", help="keep only these labels, comma-separated (e.g. person,car)")
    parser.add_argument("--queue-size", type=int, help="capacity of each queue between stages")
    parser.add_argument("--faults", help="inject faults, e.g. error_rate=0.2,hang_rate=0.02")
    parser.add_argument("--max-frames", type=int, help="stop each source after N frames")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="stop each source after SECONDS (of video for files, of wall-clock for live sources)")
    parser.add_argument("--realtime", action="store_true", default=None, help="pace files at their frame rate")
    parser.add_argument("--policy", choices=[p.value for p in OverloadPolicy], help="overload policy for every source")
    parser.add_argument("--transport", choices=["tcp", "udp"], help="RTSP transport for every live source")
    parser.add_argument("--decode", choices=["cpu", "nvdec"], help="nvdec: NVIDIA hardware decoding")
    parser.add_argument("--device", metavar="cpu|cuda[:N]", help="where ONNX Runtime infers: cuda[:N] is the CUDA "
                        "provider on GPU N (needs onnxruntime-gpu)")
    parser.add_argument("--video", type=Path, help="annotated video: a .mp4 file, or a directory for several sources")
    parser.add_argument("--track", action="store_true", default=None,
                        help="give each detection a track id (ByteTrack); zones and lines come from --config")
    parser.add_argument("--mqtt", metavar="URL", help="publish events and counts to MQTT (mqtt://, mqtts://)")
    parser.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz on this port (0: any)")
    parser.add_argument("--metrics-host", help="listen for metrics on this address (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--log-format", choices=["text", "json"], help="json: one JSON object per log line")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


# Flags that set one config field as they are (None: not given).
FLAG_FIELDS = {
    "backend": "model.backend",
    "precision": "model.precision",
    "layout": "model.layout",
    "imgsz": "model.imgsz",
    "conf": "model.conf",
    "iou": "model.iou",
    "threads": "model.intra_op_threads",
    "deadline_ms": "deadline_ms",
    "batch": "infer.max_batch",
    "max_delay_ms": "infer.max_delay_ms",
    "contexts": "infer.contexts",
    "max_attempts": "infer.max_attempts",
    "isolation": "infer.isolation",
    "max_restarts": "infer.max_restarts",
    "restart_window_s": "infer.restart_window_s",
    "queue_size": "queues.size",
    "max_frames": "max_frames",
    "duration": "duration_s",
    "realtime": "realtime",
    "decode": "decode",
    "metrics_port": "metrics.port",
    "metrics_host": "metrics.host",
    "log_format": "log_format",
    "mqtt": "outputs.mqtt.url",
    "file_mode": "outputs.file_mode",
    "dir_mode": "outputs.dir_mode",
}
# Flags that name a file or directory.
PATH_FLAGS = {"model": "model.path", "labels": "model.labels", "out": "outputs.jsonl", "video": "outputs.video"}


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags as a partial config dict (only the flags given)."""
    from pipeline.config import parse_key_values

    out: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        node = out
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    if args.name and not args.videos:
        raise ConfigError("--name names the sources given on the command line; give them too "
                          "(vidpipe run VIDEO --name NAME), or set sources[].name in the config")
    if args.videos:
        names = args.name or []
        if len(names) > len(args.videos):
            given = f"{len(args.videos)} source" + ("s" if len(args.videos) > 1 else "")
            raise ConfigError(f"--name given {len(names)} times for {given}; give one per source")
        out["sources"] = [
            {"url": url, **({"name": names[i]} if i < len(names) else {})} for i, url in enumerate(args.videos)
        ]
    if args.policy or args.transport:
        if "sources" not in out:
            raise ConfigError("--policy/--transport need the sources on the command line")
        for source in out["sources"]:
            source.update({k: v for k, v in (("policy", args.policy), ("transport", args.transport)) if v})
    for flag, path in FLAG_FIELDS.items():
        put(path, getattr(args, flag))
    for flag, path in PATH_FLAGS.items():
        value = getattr(args, flag)
        put(path, value and str(value))
    if args.engine:
        if args.model:
            raise ConfigError("give either --model or --engine, not both")
        put("model.path", str(args.engine))
        put("model.backend", "tensorrt")
    if args.device:
        put("model.providers", device_providers(args.device))
    if args.classes:
        put("model.classes", [c.strip() for c in args.classes.split(",") if c.strip()])
    if args.redis is not None:
        from pipeline.sinks.redis.entries import resolve_redis_url

        url = resolve_redis_url(args.redis)
        if not url:
            raise ConfigError("--redis without a URL needs the REDIS_URL environment variable; pass --redis redis://HOST:PORT/DB")
        put("outputs.redis.url", url)
    if args.faults:
        put("faults", parse_key_values(args.faults, "--faults"))
    if args.quiet:
        put("progress", False)
    if args.track:
        put("analytics.tracker", "bytetrack")
    return out


def device_providers(device: str) -> list:
    """--device cpu | cuda | cuda:N as ONNX Runtime providers (the CPU stays as ORT's per-node fallback)."""
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return ["CPUExecutionProvider"]
    if kind == "cuda" and (not index or index.isdigit()):
        options = {"device_id": int(index or 0)}
        return [{"name": "CUDAExecutionProvider", "options": options}, "CPUExecutionProvider"]
    raise ConfigError(f"--device {device!r}: give cpu, cuda or cuda:N (N the GPU's index)")


def config_from_args(args: argparse.Namespace):
    from pipeline.config import build_config, load_config, merge

    base = load_config(args.config) if args.config else {}
    origin = str(args.config) if args.config else "flags"
    return build_config(merge(base, overrides_from_args(args)), origin)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.api import run
    from pipeline.observability.logs import configure_logging

    config = config_from_args(args)
    configure_logging(args.log_level, config.log_format)
    summary = run(config, show=True)
    if summary.error:
        print(f"vidpipe: error: {printable(redact(summary.error))}", file=sys.stderr)
    abandoned = summary.inference.abandoned_live if summary.inference else 0
    if abandoned:
        # Their threads never return; main() ends the process without waiting for them.
        print(f"vidpipe: {abandoned} hung inference call(s) were abandoned; they are not waited for", file=sys.stderr)
    if not summary.balanced:
        print(
            "vidpipe: error: the ledger did not balance (a frame has no result); this is a bug, please report it",
            file=sys.stderr,
        )
        return EXIT_LEDGER
    if summary.inference and summary.inference.worker_budget_exhausted:
        return EXIT_WORKER_BUDGET
    if summary.error:
        return EXIT_USER_ERROR
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return failed_frames_exit(summary)


def failed_frames_exit(summary) -> int:
    """Exit 4 and one line when frames failed for a reason a batch job must hear about."""
    from stages.types import Reason

    # Failures a run that did its job may have: frames shed by a source whose policy is shed,
    # and (after a signal) frames in flight when it came.
    excused = {Reason.SHED} | ({Reason.SHUTDOWN} if summary.interrupted else set())
    failed = {reason: n for reason, n in sorted(summary.failed.items()) if reason not in excused and n}
    suspect = summary.inference.suspect_frames
    if suspect:  # ok results that are not to be trusted: the exit code stays, the line says it
        print(f"vidpipe: warning: {suspect} results are flagged by suspect_results events (a context gave "
              "them, then failed its health probe); see the summary", file=sys.stderr)
    if not failed:
        return 0
    counts = ", ".join(f"{reason} {n}" for reason, n in failed.items())
    message = f"vidpipe: {sum(failed.values())} of {summary.frames} frames failed ({counts}); see the summary"
    print(message, file=sys.stderr)
    return EXIT_FAILED_FRAMES


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add `vidpipe run` to the command line (pipeline/cli/main.py calls it)."""
    parser = sub.add_parser(name, help=help)
    add_run_arguments(parser)
    parser.set_defaults(func=cmd_run)
