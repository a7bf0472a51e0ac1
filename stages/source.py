"""The Source protocol that file sources (stages/decode.py) and live sources (stages/live.py)
both implement, and `is_live`: the one answer to "is this source live?".

A source is not a stage: it is where frames begin. The runtime reads one on a thread of its
own and routes what it yields; whether it is live decides its overload policy (shed, not
block), its deadline (from decode) and what --duration counts (wall-clock seconds).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from stages.types import Frame, SourceEvent

NAME_MAX = 64  # the longest source name

# Every network scheme FFmpeg reads video from: each is a live source, with timeouts,
# a stall watchdog and reconnects (an HTTP camera can hang like an RTSP one).
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")


def url_scheme(url: str) -> str | None:
    """The URL's scheme in lower case ("rtsp", "file", ...), or None for a plain path."""
    if "://" not in url:
        return None
    return url.split("://", 1)[0].lower()


def is_live(url: str) -> bool:
    """Whether a source at `url` is live: a network stream (LIVE_SCHEMES), not a file path or file://."""
    return url_scheme(url) in LIVE_SCHEMES


@dataclass(frozen=True)
class StreamInfo:
    """A source's video stream: its size in pixels, frame rate (None when the container does
    not say), declared frame count (None when unknown) and codec name."""

    width: int
    height: int
    fps: float | None
    frames: int | None  # as the container declares it; None when unknown
    codec: str


@runtime_checkable
class Source(Protocol):
    """Where a source's frames come from.

    Iterating yields Frames with gap-free `seq` (0, 1, 2, ... from the first) and SourceEvents
    (end, decode errors, outages), each placed after the frame its `after_seq` names; a fatal
    event ends it. Opening (the constructor) raises SourceError for a bad path or an
    unreachable camera, so a run fails before it starts.
    """

    name: str  # the source name: a file name, a Redis key, a metrics label
    url: str  # a path or a URL as given (it may hold credentials: redact before showing it)
    info: StreamInfo  # the video stream's size (pixels), frame rate and declared frame count
    seq: int  # the next frame's seq

    @property
    def live(self) -> bool:
        """True for a network stream (`is_live(url)`): deadlines from decode, shed when behind."""
        ...

    def __iter__(self) -> Iterator[Frame | SourceEvent]: ...

    def stop(self) -> None:
        """Ask the reading thread to end soon (after the current packet, or out of a reconnect wait)."""
        ...

    def close(self) -> None:
        """Release the container or connection; safe to call more than once."""
        ...


def source_name(url: str) -> str:
    """A valid source name derived from a path or URL; never fails, whatever the string.

    The file stem, or host, port and path for URLs; never the user-info or the query, which
    may hold credentials. Runs of characters other than letters, digits, '.', '_' and '-'
    become '_', leading '.' and '-' are dropped and the name is cut to NAME_MAX characters,
    so it is safe as a file name and a Redis key (see pipeline.config.SOURCE_NAME).
    """
    if "://" in url:
        rest = url.split("://", 1)[1].rpartition("@")[2]  # the last '@': a password may hold '#' or '/'
        raw = re.split(r"[?#]", rest, maxsplit=1)[0].strip("/")
    else:
        raw = Path(url).stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).lstrip(".-")[:NAME_MAX]
    return name or "source"
