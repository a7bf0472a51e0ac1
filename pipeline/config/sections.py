"""The config's sections as pydantic models: sources, inference, queues, outputs, metrics,
analytics (the model section is in pipeline/config/model.py). Every section forbids
unknown keys, so a typo in a config file is an error, not a silently ignored setting."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engines.fault_plan import FaultPlan
from stages.redact import has_secret

# A source name becomes a file name (<video dir>/<name>.mp4), a Redis key and a metrics label.
SOURCE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
SOURCE_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
MAX_THREADS = 256
SIZED = "None: sized to the host (pipeline/runtime/sizing.py)."
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
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be permission bits in octal, 0o000 to 0o777, e.g. 0o640 (in YAML: '640' or 0o640)")
    if value > 0o777:
        return value  # the field's bound says so
    if value & owner != owner:
        raise ValueError(f"must keep {oct(owner)} for the owner (vidpipe writes there), e.g. {oct(owner | 0o040)}")
    return value


def _host_and_port(url: str, shape: str) -> tuple[SplitResult, str]:
    """`url` split, with a readable host and port, and the hint to add to later complaints
    (how to encode a password, when the URL has one); else ValueError ending in `shape`."""
    encode = " (percent-encode special characters in the password: # as %23, @ as %40, / as %2F)"
    hint = encode if has_secret(url) else ""
    try:
        parts = urlsplit(url)
        _ = parts.port  # reading it checks it
    except ValueError:
        raise ValueError(f"is not a valid URL: its host or port cannot be read{hint}; {shape}") from None
    if not parts.hostname or any(c.isspace() or not c.isprintable() for c in parts.hostname):
        raise ValueError(f"has no valid host{hint}; {shape}")
    return parts, hint


def check_redis_url(url: str) -> str:
    """`url` if redis-py can connect with it, else ValueError saying why (never quoting a secret)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
    _check_redis_query(scheme, rest.partition("?")[2])
    if scheme == "unix":
        if not rest.partition("?")[0].lstrip("/"):
            raise ValueError("unix:// needs the socket's path: unix:///path/to/redis.sock")
        return url
    parts, hint = _host_and_port(url, "use redis://[:password@]host:port/db")
    if parts.port == 0:
        raise ValueError("port 0 is not a Redis port; give the server's port (6379 by default)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the path must be a database number (redis://host:port/0), not /{db}{hint}")
    return url


# The query parameters a Redis URL may carry (redis-py passes each to its connection; an
# unknown one fails at the first command, not here); ssl_ ones with rediss:// only.
REDIS_URL_PARAMS = (
    "db", "username", "password", "client_name", "protocol", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "health_check_interval", "retry_on_timeout", "max_connections", "timeout",
)
REDIS_TLS_PARAMS = (
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile", "ssl_password",
    "ssl_check_hostname", "ssl_ciphers", "ssl_min_version",
)


def _check_redis_query(scheme: str, query: str) -> None:
    """ValueError naming a query parameter redis-py would not take (never its value)."""
    names = list(parse_qs(query, keep_blank_values=True))
    if scheme != "rediss" and any(name.startswith("ssl_") for name in names):
        raise ValueError("has ssl_ options, which need TLS: use rediss://")
    accepted = REDIS_URL_PARAMS + (REDIS_TLS_PARAMS if scheme == "rediss" else ())
    for name in names:
        if name not in accepted:
            raise ValueError(f"has an unknown query parameter {name!r}; accepted: {', '.join(accepted)}")


class OverloadPolicy(StrEnum):
    """What a source does when preprocessing cannot keep up (README, overload)."""

    BLOCK = "block"  # the decoder waits: nothing is dropped (files)
    SHED = "shed"  # the oldest waiting frame fails as `shed` (live sources)


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo in a config file is caught, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


class InferConfig(StrictModel):
    contexts: int = Field(2, ge=1, le=64)
    max_batch: int | None = Field(
        None, ge=1, le=256,
        description="Largest inference batch; none: measured on the CPU (1, 2 or 4), 16 on a GPU "
        "(pipeline/runtime/sizing.py).",
    )
    batch_shapes: list[Annotated[int, Field(ge=1, le=256)]] | None = Field(
        None, min_length=1, max_length=16,
        description="Batch sizes a batch is padded up to, each warmed before a context serves; "
        "none: sized to the device.",
    )
    hang_factor: float = Field(
        8.0, ge=2.0, le=1000.0,
        description="A call is hung past this many times its shape's slowest recent healthy call.",
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
    preprocess_workers: int | None = Field(None, ge=1, le=MAX_THREADS, description=SIZED)
    postprocess_workers: int | None = Field(None, ge=1, le=MAX_THREADS, description=SIZED)


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


def check_mqtt_url(url: str) -> str:
    """`url` if paho can connect with it (mqtt[s]://[user[:password]@]host[:port]), else ValueError
    saying why (never quoting a secret: config/messages.py redacts the value it shows)."""
    shape = "use mqtt://HOST[:1883] or mqtts://HOST[:8883] (TLS), with USER:PASSWORD@ before HOST if needed"
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"must start with mqtt:// or mqtts:// (TLS); {shape}")
    parts, hint = _host_and_port(url, shape)
    if parts.port == 0:
        raise ValueError("port 0 is not an MQTT port; give the broker's port (1883, or 8883 for mqtts)")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"has a path, query or fragment, which MQTT does not use{hint}; {shape}")
    return url


class MqttConfig(StrictModel):
    """Publishing analytics to an MQTT broker (see pipeline/sinks/mqtt.py)."""

    url: str = Field(description="mqtt://[user:password@]host[:1883], or mqtts:// for TLS (port 8883).")
    topic_prefix: str = Field("vidpipe", description="Topics are <prefix>/<source>/events, .../counts.")
    detections: bool = Field(False, description="Also publish every frame's detections (QoS 0).")
    spool: int = Field(
        10_000, ge=1, le=60_000,
        description="Events held while the broker is unreachable; more are dropped and counted.",
    )
    drain_timeout_s: float = Field(
        10.0, ge=0.0, le=HOUR_S,
        description="How long the end of a run waits for the broker (a signal ends the wait at once).",
    )
    home_assistant: bool = Field(False, description="Publish Home Assistant MQTT discovery for the counters.")
    discovery_prefix: str = "homeassistant"

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        return check_mqtt_url(url)


class OutputConfig(StrictModel):
    jsonl: Path | None = Field(None, description="One JSON line per frame result, events and the summary.")
    redis: RedisConfig | None = None
    video: Path | None = Field(
        None,
        description="Annotated video: a .mp4 file (one source) or a directory (<dir>/<source>.mp4).",
    )
    mqtt: MqttConfig | None = None
    file_mode: int = Field(
        0o600, ge=0, le=0o777,
        description="Permission bits of the JSONL, video and spool files vidpipe creates (octal: 0o640 or '640'); "
        "the umask still applies.",
    )
    dir_mode: int = Field(
        0o700, ge=0, le=0o777,
        description="Permission bits of the spool and video directories vidpipe creates (octal: 0o750 or '750').",
    )

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


MAX_COORDINATE = 100_000.0
# A zone's corner or a line's end: finite, within MAX_COORDINATE pixels (or fractions) of the origin.
Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)]
Point = tuple[Coordinate, Coordinate]


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
