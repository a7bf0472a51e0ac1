"""One validated place for configuration: a YAML file and CLI flags both become a RunConfig.

The sections live in pipeline/config/sections.py and, per backend, pipeline/config/model.py;
pipeline/config/messages.py turns a validation error into one line. Import them all from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from engines.errors import ConfigError
from pipeline.config.messages import format_validation_error
from pipeline.config.model import ModelConfig, OnnxRuntimeModelConfig, ProviderConfig, TensorRTModelConfig
from pipeline.config.sections import (
    DAY_S,
    HOUR_S,
    MAX_THREADS,
    SOURCE_NAME,
    SOURCE_NAME_RULE,
    AnalyticsConfig,
    FaultConfig,
    InferConfig,
    LineConfig,
    MetricsConfig,
    MqttConfig,
    OutputConfig,
    OverloadPolicy,
    QueueConfig,
    RedisConfig,
    SourceConfig,
    StrictModel,
    ZoneConfig,
    check_redis_url,
    check_source_name,
)
from stages.source import is_live

__all__ = [
    "DAY_S", "HOUR_S", "MAX_THREADS", "SOURCE_NAME", "SOURCE_NAME_RULE", "AnalyticsConfig", "FaultConfig",
    "InferConfig", "LineConfig", "MetricsConfig", "ModelConfig", "MqttConfig", "OnnxRuntimeModelConfig",
    "OutputConfig", "OverloadPolicy", "ProviderConfig", "QueueConfig", "RedisConfig", "RunConfig", "SourceConfig",
    "StrictModel", "TensorRTModelConfig", "ZoneConfig", "build_config", "check_redis_url", "check_source_name",
    "load_config", "merge", "parse_key_values",
]  # fmt: skip


class RunConfig(StrictModel):
    sources: list[SourceConfig] = Field(default_factory=list)
    deadline_ms: float = Field(
        2000.0, gt=0.0, le=HOUR_S * 1000,
        description="Live and paced sources: ms after decode before a frame fails as deadline; "
        "unpaced files: ms of retries after a frame enters its batch.",
    )
    max_frames: int | None = Field(None, ge=1, le=10**12, description="Stop each source after this many frames.")
    duration_s: float | None = Field(
        None, gt=0, le=365 * DAY_S, description="Stop each source after this many seconds."
    )
    realtime: bool = Field(False, description="Pace file sources at their native frame rate.")
    decode: Literal["cpu", "nvdec"] = Field("cpu", description="nvdec: PyAV's CUDA hwaccel (NVIDIA GPUs).")
    model: ModelConfig = OnnxRuntimeModelConfig()
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
        live = [s.url for s in self.sources if is_live(s.url)]
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


def build_config(data: dict[str, Any], origin: str = "config") -> RunConfig:
    """Validate a plain dict; raise ConfigError naming the field's dotted path."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin, RunConfig)) from None


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
