"""One validated place for configuration: a YAML file and CLI flags both become a RunConfig."""

from __future__ import annotations

import difflib
import re
import types
import typing
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engines.errors import ConfigError
from engines.faults import FaultPlan
from stages.redact import has_secret, redact

# A source name becomes a file name (<video dir>/<name>.mp4), a Redis key and a metrics label.
SOURCE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
SOURCE_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
MAX_THREADS = 256
DAY_S = 86_400.0
HOUR_S = 3_600.0


def check_source_name(name: str) -> str:
    """`name` if it is a valid source name (SOURCE_NAME_RULE), else ValueError."""
    if not SOURCE_NAME.fullmatch(name):
        raise ValueError(f"a source name is {SOURCE_NAME_RULE}")
    return name


def check_mode(value: Any, owner: int) -> int:
    """Permission bits from an int or an octal string ('640', '0640', '0o640'), else ValueError.
    The owner (this run) must keep the bits in `owner` (rw for files, rwx for directories)."""
    text = str(value).strip().lower().removeprefix("0o") if isinstance(value, str) else None
    if text is not None and re.fullmatch(r"[0-7]{1,4}", text):
        value = int(text, 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError("must be permission bits in octal, 0o000 to 0o777, e.g. 0o640 (in YAML: '640' or 0o640)")
    if value & owner != owner:
        raise ValueError(f"must keep {oct(owner)} for the owner (vidpipe writes there), e.g. {oct(owner | 0o040)}")
    return value


def check_redis_url(url: str) -> str:
    """`url` if redis-py can connect with it, else ValueError saying why (never quoting a secret)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
    if scheme == "unix":
        if not rest.partition("?")[0].lstrip("/"):
            raise ValueError("unix:// needs the socket's path: unix:///path/to/redis.sock")
        return url
    encode = " (percent-encode special characters in the password: # as %23, @ as %40, / as %2F)"
    hint = encode if has_secret(url) else ""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"is not a valid URL: its host or port cannot be read{hint}") from None
    if not parts.hostname or any(c.isspace() for c in parts.hostname):
        raise ValueError(f"has no valid host{hint}; use redis://[:password@]host:port/db")
    if port == 0:
        raise ValueError("port 0 is not a Redis port; give the server's port (6379 by default)")
    if scheme == "redis" and any(key.startswith("ssl_") for key in parse_qs(parts.query)):
        raise ValueError("ssl_ options need TLS: use rediss://")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the path must be a database number (redis://host:port/0), not /{db}{hint}")
    return url


class OverloadPolicy(StrEnum):
    """What a source does when preprocessing cannot keep up (README, overload)."""

    BLOCK = "block"  # the decoder waits: nothing is dropped (files)
    SHED = "shed"  # the oldest waiting frame fails as `shed` (live sources)


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo in a config file is caught, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(StrictModel):
    url: str = Field(description="A video file path or an rtsp:// URL.")
    name: str | None = Field(
        None, description=f"Source name ({SOURCE_NAME_RULE}); derived from the URL when absent."
    )
    policy: OverloadPolicy | None = Field(
        None, description="Overload policy; default block for files, shed for live sources."
    )
    realtime: bool | None = Field(None, description="Pace a file at its frame rate (default: the run's realtime).")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    open_timeout_s: float = Field(10.0, gt=0, le=HOUR_S, description="Connecting to a live source gives up after this.")
    stall_s: float = Field(5.0, gt=0, le=HOUR_S, description="No frame for this long: reconnect.")
    connect_attempts: int = Field(3, ge=1, le=1000, description="Tries to connect at start before the run fails.")
    max_reconnects: int | None = Field(
        None, ge=0, le=1_000_000, description="Reconnects per outage before giving up; none: forever."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str | None) -> str | None:
        return name if name is None else check_source_name(name)


class ProviderConfig(StrictModel):
    """One ONNX Runtime execution provider with its options (ORT's provider_options)."""

    name: str = Field(description="e.g. CUDAExecutionProvider")
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)


class ModelConfig(StrictModel):
    path: Path | None = Field(None, description="ONNX model; the embedded default when absent.")
    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    precision: Literal["fp32", "fp16", "int8"] | None = Field(
        None, description="TensorRT: the precision to build at; none: the ONNX model's own."
    )
    engine_cache: Path | None = Field(None, description="TensorRT engine cache (default ~/.cache/vidpipe/engines).")
    layout: Literal["auto", "yolov8", "yolov5", "yolox", "e2e"] = "auto"
    imgsz: int | None = Field(
        None,
        ge=32,
        le=4096,
        description="A square model input of this size for a model with dynamic height and width; "
        "none: the smallest stride-aligned rectangle that fits the sources at the model's nominal size.",
    )
    labels: Path | None = Field(None, description="Class names, one per line.")
    conf: float = Field(0.25, ge=0.0, le=1.0)
    iou: float = Field(0.45, ge=0.0, le=1.0)
    classes: list[str] | None = Field(None, description="Keep only these labels.")
    intra_op_threads: int | None = Field(
        None, ge=0, le=MAX_THREADS,
        description="ONNX Runtime threads per inference; none: usable CPUs / contexts (pipeline/runtime/sizing.py).",
    )
    providers: list[str | ProviderConfig] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference: names, or {name, options}.",
    )

    gpu_letterbox: bool = Field(
        True, description="GPU engines letterbox on the GPU from the decoded planes (CuPy); false: on the CPU."
    )

    @property
    def provider_names(self) -> list[str]:
        return [p if isinstance(p, str) else p.name for p in self.providers]


class InferConfig(StrictModel):
    contexts: int = Field(2, ge=1, le=64)
    max_batch: int | None = Field(
        None, ge=1, le=256, description="Largest inference batch; none: measured on the CPU (1, 2 or 4), 16 on a GPU (pipeline/runtime/sizing.py)."
    )
    batch_shapes: list[Annotated[int, Field(ge=1, le=256)]] | None = Field(
        None, min_length=1, max_length=16,
        description="Batch sizes a batch is padded up to, each warmed before a context serves; none: sized to the device.",
    )
    hang_factor: float = Field(
        8.0, ge=2.0, le=1000.0, description="A call is hung past this many times its shape's slowest recent healthy call."
    )
    hang_floor_ms: float = Field(250.0, ge=10.0, le=600_000.0, description="...and never before this.")
    max_delay_ms: float = Field(5.0, ge=0.0, le=10_000.0)
    max_attempts: int = Field(5, ge=1, le=100, description="Inference attempts per frame; deadlines bound them too.")
    health_interval_s: float = Field(5.0, gt=0.0, le=DAY_S)
    probe_tolerance: float = Field(1e-3, gt=0.0, le=1.0)
    isolation: Literal["thread", "process"] = Field(
        "thread",
        description="process: the engine runs in a supervised worker process, restarted after a crash "
        "or an error that poisons it; thread: in vidpipe's own process.",
    )
    max_restarts: int = Field(5, ge=0, le=1000, description="Worker restarts allowed within restart_window_s.")
    restart_window_s: float = Field(60.0, gt=0.0, le=DAY_S, description="The window of the restart budget.")


# The `faults:` section is the engines' own fault plan (engines/faults.py), defined once there.
FaultConfig = FaultPlan


class QueueConfig(StrictModel):
    size: int = Field(8, ge=1, le=10_000, description="Capacity per source of each bounded queue between stages.")
    preprocess_workers: int | None = Field(None, ge=1, le=MAX_THREADS, description="None: sized to the host (pipeline/runtime/sizing.py).")
    postprocess_workers: int | None = Field(None, ge=1, le=MAX_THREADS, description="None: sized to the host (pipeline/runtime/sizing.py).")


class RedisConfig(StrictModel):
    """Publishing results to Redis Streams (see pipeline/sinks/redis/sink.py)."""

    url: str = Field(description="redis://[:password@]host:port/db, rediss:// for TLS or unix:///path.")
    key_prefix: str = "vidpipe:results:"
    maxlen: int = Field(100_000, ge=1, le=1_000_000_000, description="Approximate per-stream length (MAXLEN ~).")
    spool_dir: Path = Field(Path(".vidpipe-spool"), description="Where results wait while Redis is down.")
    drain_timeout_s: float = Field(10.0, ge=0.0, le=HOUR_S, description="How long the end of a run waits for Redis.")
    pubsub: bool = Field(False, description="Also publish each result on a lossy Pub/Sub channel.")

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        return check_redis_url(url)


class MqttConfig(StrictModel):
    """Publishing analytics to an MQTT broker (see pipeline/sinks/mqtt.py)."""

    url: str = Field(description="mqtt://[user:password@]host[:1883], or mqtts:// for TLS (port 8883).")
    topic_prefix: str = Field("vidpipe", description="Topics are <prefix>/<source>/events, .../counts.")
    detections: bool = Field(False, description="Also publish every frame's detections (QoS 0).")
    spool: int = Field(10_000, ge=1, le=60_000, description="Events held while the broker is unreachable; more are dropped and counted.")
    drain_timeout_s: float = Field(10.0, ge=0.0, description="How long the end of a run waits for the broker.")
    home_assistant: bool = Field(False, description="Publish Home Assistant MQTT discovery for the counters.")
    discovery_prefix: str = "homeassistant"


class OutputConfig(StrictModel):
    jsonl: Path | None = Field(None, description="One JSON line per frame result, events and the summary.")
    redis: RedisConfig | None = None
    video: Path | None = Field(
        None,
        description="Annotated video: a .mp4 file (one source) or a directory (<dir>/<source>.mp4).",
    )
    mqtt: MqttConfig | None = None
    file_mode: int = Field(0o600, description="Permission bits of the JSONL and spool files vidpipe creates (octal: 0o640 or '640'); the umask still applies.")
    dir_mode: int = Field(0o700, description="Permission bits of the spool directory vidpipe creates (octal: 0o750 or '750').")

    @field_validator("file_mode", "dir_mode", mode="before")
    @classmethod
    def _valid_mode(cls, value: Any, info: Any) -> int:
        return check_mode(value, 0o700 if info.field_name == "dir_mode" else 0o600)


class MetricsConfig(StrictModel):
    host: str = Field(
        "127.0.0.1", description="The address to listen on; 0.0.0.0 (or ::) opens the endpoints to the network."
    )
    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve /metrics, /healthz and /readyz on this port (0: any free port).",
    )

    @field_validator("host")
    @classmethod
    def _valid_host(cls, host: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
            raise ValueError("must be a host name or an IP address, e.g. 127.0.0.1 or 0.0.0.0")
        return host


Point = tuple[float, float]


class ZoneConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Letters, digits, - and _.")
    source: str | None = Field(None, description="The source it belongs to; none: every source.")
    polygon: list[Point] = Field(min_length=3, description="Corners, in source pixels or fractions of the frame.")
    units: Literal["pixels", "fraction"] = "pixels"


class LineConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Letters, digits, - and _.")
    source: str | None = Field(None, description="The source it belongs to; none: every source.")
    start: Point
    end: Point
    units: Literal["pixels", "fraction"] = "pixels"


class AnalyticsConfig(StrictModel):
    """Tracks, zones and lines (stages/track.py, stages/zones.py)."""

    tracker: Literal["bytetrack"] | None = Field(None, description="bytetrack: give detections track ids (--track).")
    lost_frames: int = Field(30, ge=1, le=100_000, description="A track not seen for this many frames ends.")
    zones: list[ZoneConfig] = Field(default_factory=list)
    lines: list[LineConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _zones_need_tracks(self) -> AnalyticsConfig:
        if (self.zones or self.lines) and self.tracker is None:
            raise ValueError("analytics: zones and lines follow tracks; set analytics.tracker: bytetrack (--track)")
        for kind, items in (("zones", self.zones), ("lines", self.lines)):
            keys = [(z.source, z.name) for z in items]
            dupes = sorted({name for source, name in keys if keys.count((source, name)) > 1})
            if dupes:
                raise ValueError(f"analytics.{kind}: names must be unique per source, repeated: {', '.join(dupes)}")
        return self


class RunConfig(StrictModel):
    sources: list[SourceConfig] = Field(default_factory=list)
    deadline_ms: float = Field(2000.0, gt=0.0, le=HOUR_S * 1000, description="Live and paced sources: ms after decode before a frame fails as deadline; unpaced files: ms of retries after a frame enters its batch.")
    max_frames: int | None = Field(None, ge=1, le=10**12, description="Stop each source after this many frames.")
    duration_s: float | None = Field(None, gt=0, le=365 * DAY_S, description="Stop each source after this many seconds.")
    realtime: bool = Field(False, description="Pace file sources at their native frame rate.")
    decode: Literal["cpu", "nvdec"] = Field("cpu", description="nvdec: PyAV's CUDA hwaccel (NVIDIA GPUs).")
    model: ModelConfig = ModelConfig()
    infer: InferConfig = InferConfig()
    faults: FaultConfig = FaultConfig()
    queues: QueueConfig = QueueConfig()
    outputs: OutputConfig = OutputConfig()
    metrics: MetricsConfig = MetricsConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    progress: bool = Field(True, description="Show progress when stdout is a terminal.")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line.")

    @model_validator(mode="after")
    def _unique_source_names(self) -> RunConfig:
        names = [s.name for s in self.sources if s.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sources: names must be unique, repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _video_needs_files(self) -> RunConfig:
        video = self.outputs.video
        if video is None:
            return self
        live = [s.url for s in self.sources if "://" in s.url]
        if live:
            raise ValueError(
                f"outputs.video: {live[0]} is a live stream; annotated video decodes each source "
                "a second time, so it needs file sources"
            )
        if video.suffix and len(self.sources) > 1:
            raise ValueError(
                f"outputs.video = {str(video)!r}: one file cannot hold {len(self.sources)} sources; "
                "give a directory (one <source>.mp4 each)"
            )
        return self

    @model_validator(mode="after")
    def _crashes_need_a_worker_process(self) -> RunConfig:
        if self.faults.crash_rate > 0 and self.infer.isolation == "thread":
            raise ValueError(
                "faults.crash_rate kills the process that runs the engine, which with infer.isolation "
                "thread is vidpipe itself; set infer.isolation: process (--isolation process)"
            )
        return self


MAX_ERRORS_SHOWN = 3


def _format_validation_error(err: ValidationError, origin: str) -> str:
    """One line: each error's dotted path, the bad value and what is allowed."""
    errors = err.errors()
    shown = "; ".join(_describe_error(e) for e in errors[:MAX_ERRORS_SHOWN])
    more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
    return redact(f"{origin}: {shown}{more}")  # a bad value may be a URL with a password


def _describe_error(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = _dotted(loc) or "(top level)"
    value = error.get("input")
    kind = error["type"]
    if kind == "missing":
        return f"{path}: missing; this field is required"
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{path}: unknown field{hint}; allowed: {', '.join(allowed)}"
    if kind == "model_type":
        model = _model_at(loc)
        fields = ", ".join(model.model_fields) if model else ""
        return f"{path} = {value!r}: must be a mapping with the fields {fields}"
    if kind == "path_type":
        return f"{path} = {value!r}: must be a path (a string)"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if kind == "value_error" and not loc:
        return message  # a rule across fields: the message names them
    return f"{path} = {value!r}: {message}"


def _dotted(loc: tuple[Any, ...]) -> str:
    """('sources', 0, 'url') -> 'sources[0].url'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config section (pydantic model) a location points into, e.g. ('infer',) -> InferConfig."""
    annotation: Any = RunConfig
    for part in loc:
        model = _find_model(annotation)
        if isinstance(part, int):
            annotation = _list_item(annotation)
        elif model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
        else:
            return None
    return _find_model(annotation)


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if (model := _find_model(arg)) is not None:
                return model
    return None


def _list_item(annotation: Any) -> Any:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is list:
            return typing.get_args(candidate)[0]
    return None


def build_config(data: dict[str, Any], origin: str = "config") -> RunConfig:
    """Validate a plain dict; raise ConfigError naming the field's dotted path."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(path: Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (validated later, after CLI overrides)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"config {path}: cannot read it ({err.strerror}); check the path") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path}: not valid YAML ({err}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of fields at the top level")
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge overrides (from CLI flags) into a config dict."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_key_values(text: str, what: str) -> dict[str, str]:
    """Parse 'a=1,b=2' (as in --faults error_rate=0.2,hang_rate=0.02)."""
    pairs: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: expected key=value pairs separated by commas, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs
