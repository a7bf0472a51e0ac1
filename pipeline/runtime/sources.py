"""A source's run (a Source, file or live, with its run-time settings) and the thread that reads it.

`read_source` runs on one thread per source: it paces a --realtime file, stops at
--max-frames or --duration, hands each decoded frame to the pipeline and ends the source
with one `source_end` event (its `reason`: an EndReason).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import OverloadPolicy
from pipeline.runtime.pacing import PacingClock
from stages.redact import redact, redact_url
from stages.source import Source
from stages.types import EndReason, EventType, Frame, SourceEvent

log = logging.getLogger("vidpipe.runtime")


@dataclass
class SourceRun:
    """A source (stages/source.py's `Source`: a file or live decoder) with its run-time settings:
    its overload policy, whether a file is paced (--realtime), and where it stops (--max-frames,
    --duration in seconds)."""

    decoder: Source
    policy: OverloadPolicy = OverloadPolicy.BLOCK
    realtime: bool = False
    max_frames: int | None = None
    duration_s: float | None = None

    @property
    def name(self) -> str:
        return self.decoder.name

    @property
    def latency_bound(self) -> bool:
        """Live sources and paced files promise latency: their frames' deadlines run from
        decode. An unpaced file's frames get theirs when they enter a batch
        (pipeline/runtime/scheduler.py)."""
        return self.realtime or self.decoder.live


@dataclass
class SourceOutlets:
    """Where a source's reader hands its output: `admit` takes each decoded frame, `emit` each
    event (in order, before the frames that follow it), `errors` collects the messages that
    become the summary's error; `stopping` is set when the run stops reading."""

    admit: Callable[[SourceRun, Frame], None]
    emit: Callable[[SourceEvent], None]
    errors: list[str]
    stopping: threading.Event


def read_source(source: SourceRun, out: SourceOutlets) -> None:
    """Read one source to its end, pacing a --realtime file and stopping at --duration.

    --duration is seconds of video for a file (like --max-frames, whatever the speed)
    and wall-clock seconds for a live source, enforced by a timer so that it also ends
    a source that is reconnecting or stalled.
    """
    decoder = source.decoder
    expired = threading.Event()
    timer = _duration_timer(source, expired)
    end_reason = EndReason.END_OF_STREAM
    try:
        end_reason = _read_frames(source, out)
    except Exception as err:  # a decoder bug must not lose the frames already decoded
        log.exception("source %s failed", source.name)
        out.errors.append(f"{source.name}: reading failed: {redact(str(err))}")
    finally:
        if timer is not None:
            timer.cancel()
        if expired.is_set() and not out.stopping.is_set():
            end_reason = EndReason.DURATION
        elif out.stopping.is_set() and end_reason == EndReason.END_OF_STREAM:
            end_reason = EndReason.STOPPED
        decoder.close()
        details = {"frames": decoder.seq, "reason": end_reason}
        out.emit(SourceEvent(source.name, EventType.SOURCE_END, decoder.seq - 1, time.time(), details))


def _duration_timer(source: SourceRun, expired: threading.Event) -> threading.Timer | None:
    """A live source's --duration: a started timer that stops its decoder, or None."""
    decoder = source.decoder
    if not decoder.live or source.duration_s is None:
        return None
    timer = threading.Timer(source.duration_s, lambda: (expired.set(), decoder.stop()))
    timer.daemon = True
    timer.start()
    return timer


def _read_frames(source: SourceRun, out: SourceOutlets) -> EndReason:
    """Frames and events of the decoder to `out` until one ends the reading; why it ended."""
    decoder = source.decoder
    live = decoder.live
    clock = PacingClock(decoder.info.fps)
    for item in decoder:
        if isinstance(item, SourceEvent):
            out.emit(item)
            if item.fatal:
                out.errors.append(describe_damage(decoder, item))
            continue
        video_s, jump = clock.position(item.time_s) if not live else (0.0, None)
        if not live and source.duration_s is not None and video_s >= source.duration_s:
            return EndReason.DURATION
        if jump is not None:
            out.emit(SourceEvent(source.name, EventType.TIMESTAMP_JUMP, item.seq - 1, time.time(), jump))
        if source.realtime:
            waited = clock.wait_s()
            out.stopping.wait(waited)
            # A paced frame enters the pipeline now: its latency and deadline start here.
            item.decoded_at += waited
            item.deadline += waited
        out.admit(source, item)
        if out.stopping.is_set():
            return EndReason.STOPPED
        if source.max_frames is not None and decoder.seq >= source.max_frames:
            return EndReason.MAX_FRAMES
    return EndReason.END_OF_STREAM


def describe_damage(decoder: Source, event: SourceEvent) -> str:
    """The summary's error for a fatal source event: a truncated or damaged file, or a live source
    that could not reconnect."""
    details = event.details
    url = redact_url(decoder.url)
    if details.get("error") == "truncated":
        if "declared" in details:
            held = f"holds {details['packets']} of its {details['declared']} frames"
        elif "declared_s" in details:
            held = f"holds {details['read_s']:g} s of its {details['declared_s']:g} s"
        else:
            held = "ends inside a frame"
        return (
            f"{url}: truncated: the file {held}; all that could be read were processed; "
            "re-copy or re-encode the file"
        )
    error = redact(str(details.get("error")))
    if event.type == EventType.SOURCE_FAILED:  # a live source that could not reconnect: nothing is damaged
        reason = error.removeprefix(f"{url}: ")
        return f"{url}: lost, and could not connect again: {reason}; the frames received before were processed"
    return f"{url}: damaged ({error}); frames up to the damage were processed"
