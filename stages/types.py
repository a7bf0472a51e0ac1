"""The values that flow through vidpipe: plain dataclasses of numpy arrays and scalars."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

import numpy as np

from engines.base import EngineEvent


class Status(str, Enum):
    OK = "ok"
    FAILED = "failed"


class Reason(str, Enum):
    """Why a frame failed. Every failed Result carries exactly one."""

    DEADLINE = "deadline"
    INFERENCE = "inference"
    PREPROCESS = "preprocess"
    POSTPROCESS = "postprocess"
    SHED = "shed"
    SHUTDOWN = "shutdown"


class EventType(StrEnum):
    """What a SourceEvent reports. The value is the `type` field of its record (README, outputs)."""

    SOURCE_END = "source_end"
    DECODE_ERROR = "decode_error"
    SOURCE_FAILED = "source_failed"
    OUTAGE_START = "outage_start"
    OUTAGE_END = "outage_end"
    TIMESTAMP_JUMP = "timestamp_jump"
    TRACK_START = "track_start"
    TRACK_END = "track_end"
    ZONE_ENTER = "zone_enter"
    ZONE_EXIT = "zone_exit"
    LINE_CROSS = "line_cross"
    # Frames a context inferred after its last good health probe, before the probe it failed
    # (pipeline/runtime/scheduler.py): published already, and not to be trusted.
    SUSPECT_RESULTS = "suspect_results"
    REDIS_DATA_LOST = "redis_data_lost"  # written by the Redis sink itself, not a SourceEvent


class EndReason(StrEnum):
    """Why a source stopped being read: the `reason` field of its `source_end` event."""

    END_OF_STREAM = "end_of_stream"  # the file ended, or a live source ended for good
    DURATION = "duration"  # --duration reached (seconds of video for a file, wall-clock for live)
    MAX_FRAMES = "max_frames"  # --max-frames reached
    STOPPED = "stopped"  # the run stopped reading (a signal, Pipeline.stop())


class SourceState(StrEnum):
    """Where a source stands, as /readyz reports it (pipeline/observability/metrics.py)."""

    CONNECTING = "connecting"  # not opened yet
    CONNECTED = "connected"  # opened, or back after an outage
    DISCONNECTED = "disconnected"  # in an outage, reconnecting
    FAILED = "failed"  # a fatal event: the source cannot go on
    ENDED = "ended"  # its source_end event went out


@dataclass(frozen=True)
class Letterbox:
    """How a source image was fitted into the model input: model_xy = source_xy * ratio + pad."""

    ratio: float
    pad_x: float
    pad_y: float
    source_size: tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Detections:
    """Boxes in source pixels: xyxy (N, 4) float32, score (N,) float32, class_id (N,) int32.

    `track_id` (N,) int64 when tracking is on (stages/track.py): stable per object within
    a source, -1 for a detection no track took.
    """

    xyxy: np.ndarray
    score: np.ndarray
    class_id: np.ndarray
    labels: tuple[str, ...]
    track_id: np.ndarray | None = None

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            score=np.zeros((0,), np.float32),
            class_id=np.zeros((0,), np.int32),
            labels=(),
        )

    def __len__(self) -> int:
        return len(self.score)


@dataclass
class Frame:
    """One decoded frame on its way through the stages.

    `time_s` is the frame's presentation time in seconds on the source's clock (PyAV's
    `frame.time`: FFmpeg's integer pts times the stream's time base), None when the stream
    has no timestamps. `decoded_at` and `deadline` are time.monotonic() seconds; `wall_time`
    is time.time().
    `image` is the decoded picture's I420 (yuv420p) planes, uint8 (H2 * 3 // 2, W2), BT.601
    limited range, with (W2, H2) the displayed `source_size` (width, height) rounded up to
    even (see stages.decode.to_i420); preprocessing turns it into RGB.
    `latency_bound`: the deadline runs from decode (live sources, paced files) and a late
    result fails as `deadline`; False for unpaced files, whose deadline the scheduler
    stamps when the frame enters a batch and which bounds only retries.
    Stages fill `tensor`/`letterbox` (preprocess), `outputs` (infer) and `detections`
    (postprocess); `timings` collects per-stage milliseconds.
    """

    source: str
    seq: int
    time_s: float | None
    decoded_at: float
    deadline: float
    wall_time: float
    image: np.ndarray
    source_size: tuple[int, int]
    tensor: np.ndarray | None = None
    letterbox: Letterbox | None = None
    outputs: dict[str, np.ndarray] | None = None
    detections: Detections | None = None
    attempts: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    latency_bound: bool = True


@dataclass(frozen=True)
class Result:
    """The one outcome of one frame: ok with detections, or failed with a reason.

    `time_s`: the frame's presentation time in seconds (Frame.time_s); records carry it as `pts`.
    """

    source: str
    seq: int
    time_s: float | None
    status: Status
    reason: Reason | None
    error: str | None
    attempts: int
    detections: Detections
    timings: dict[str, float]
    latency_ms: float
    wall_time: float
    # Zone occupancy and line totals after this frame (stages/analytics.py); None without zones/lines.
    analytics: dict[str, Any] | None = None


@dataclass(frozen=True)
class SourceEvent:
    """Something that happened to a source outside the frame flow (end, decode error, outage).

    `after_seq` is the last seq decoded before the event (-1 for none): the publisher
    releases the event right after that frame's result, so every sink sees it in place.
    """

    source: str
    type: EventType | EngineEvent
    after_seq: int
    wall_time: float
    details: dict[str, Any] = field(default_factory=dict)
    # The source cannot go on (a demux failure, a stall, a truncated file, a failed reconnect).
    # The record carries it as `"fatal": true` (pipeline/sinks/records.py); a non-fatal
    # event's record has no `fatal` field.
    fatal: bool = False
