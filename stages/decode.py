"""Decode a video source into Frames with PyAV: gap-free seq, pts, deadline.

Colour conversion happens after downscaling to the size the model needs (swscale
scales in YUV, then converts), which keeps decode close to raw decoding speed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
from av.codec.hwaccel import HWAccel, hwdevices_available
import numpy as np

from pipeline.redact import redact, redact_url
from pipeline.types import Frame, SourceEvent
from stages.errors import SourceError
from stages.preprocess import fit_size


NAME_MAX = 64


@dataclass(frozen=True)
class StreamInfo:
    width: int
    height: int
    fps: float | None
    frames: int | None  # as the container declares it; None when unknown
    codec: str


def _open_error(url: str, err: Exception) -> SourceError:
    # FFmpeg's messages quote the URL, credentials and all.
    url, reason = redact_url(url), redact(str(err))
    if isinstance(err, FileNotFoundError) or (isinstance(err, av.error.FileNotFoundError)):
        return SourceError(f"{url}: no such file; check the path")
    if isinstance(err, PermissionError):
        return SourceError(f"{url}: permission denied; check the file's permissions")
    if isinstance(err, IsADirectoryError):
        return SourceError(f"{url}: is a directory; pass a video file")
    return SourceError(f"{url}: not a video PyAV can open ({reason}); pass an mp4/mkv/ts file or a working URL")


class VideoDecoder:
    """Iterates one source: yields Frames (seq 0, 1, 2, ...) and SourceEvents.

    Opening happens in the constructor so a bad source fails before the run starts.
    """

    def __init__(
        self,
        name: str,
        url: str,
        deadline_s: float,
        fit_to: tuple[int, int] | None = None,
        options: dict[str, str] | None = None,
        timeout: float | tuple[float, float] | None = None,
        first_seq: int = 0,
        hwaccel: str = "cpu",
        stall_s: float | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.deadline_s = deadline_s
        self.fit_to = fit_to
        self.seq = first_seq
        self.errors = 0
        self.stall_s = stall_s
        self._stopped = False
        if "://" not in url and not Path(url).exists():
            raise SourceError(f"{url}: no such file; check the path")
        try:
            self._container = av.open(url, options=options or {}, timeout=timeout, hwaccel=_hwaccel(hwaccel))
        except SourceError:
            raise
        except Exception as err:  # PyAV raises many error types; all mean "cannot open"
            if hwaccel != "cpu" and Path(url).exists():
                raise SourceError(
                    f"{url}: NVDEC decoding unavailable ({redact(str(err))}); check the NVIDIA driver and GPU, "
                    "or use --decode cpu"
                ) from None
            raise _open_error(url, err) from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{redact_url(url)}: has no video stream; pass a file with video")
        self._stream = self._container.streams.video[0]
        if hwaccel == "cpu":
            # Frame threading is for software decoding; with a hardware decoder FFmpeg's frame
            # threads race on the device's surfaces and report packets as invalid.
            self._stream.thread_type = "AUTO"
        ctx = self._stream.codec_context
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.info = StreamInfo(
            width=ctx.width,
            height=ctx.height,
            fps=float(rate) if rate else None,
            frames=self._stream.frames or None,
            codec=ctx.name,
        )
        if not ctx.width or not ctx.height:
            self._container.close()
            raise SourceError(f"{redact_url(url)}: video stream has no frame size; the file is damaged")

    def __iter__(self) -> Iterator[Frame | SourceEvent]:
        try:
            yield from self._decode()
        finally:
            self._container.close()

    def stop(self) -> None:
        """Ask the reading thread to end after the current packet."""
        self._stopped = True

    def close(self) -> None:
        self._container.close()

    def _decode(self) -> Iterator[Frame | SourceEvent]:
        # A live source demuxes every stream so control comes back on each packet: audio
        # that keeps flowing must not hide a video stall from the watchdog.
        packets = self._container.demux() if self.stall_s else self._container.demux(self._stream)
        demuxed = 0
        last_frame = time.monotonic()
        while not self._stopped:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as err:
                self.errors += 1
                yield self._event("decode_error", error=f"demux failed: {redact(str(err))}", fatal=True)
                return
            if self.stall_s and time.monotonic() - last_frame > self.stall_s:
                yield self._event("decode_error", error=f"stalled: no frame for {self.stall_s:g} s", fatal=True)
                return
            if packet.stream is not self._stream:
                continue
            demuxed += packet.size > 0
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as err:
                self.errors += 1
                # With frame threading FFmpeg reports an error a few packets late: approximate.
                time_s = float(packet.pts * packet.time_base) if packet.pts is not None else None
                yield self._event("decode_error", error=redact(str(err)), packet_time_s=time_s)
                continue
            for av_frame in decoded:
                last_frame = time.monotonic()
                yield self._frame(av_frame)
        declared = self.info.frames
        if declared and demuxed < declared:
            # The container promised more packets than the file holds: it was cut short.
            self.errors += 1
            yield self._event(
                "decode_error", error="truncated", fatal=True, packets=demuxed, declared=declared
            )

    def _frame(self, av_frame: av.VideoFrame) -> Frame:
        start = time.perf_counter()
        source_size = (av_frame.width, av_frame.height)
        image = to_rgb(av_frame, self.fit_to)
        now = time.monotonic()
        frame = Frame(
            source=self.name,
            seq=self.seq,
            pts=float(av_frame.time) if av_frame.time is not None else None,
            decoded_at=now,
            deadline=now + self.deadline_s,
            wall_time=time.time(),
            image=image,
            source_size=source_size,
        )
        frame.timings["convert"] = (time.perf_counter() - start) * 1000
        self.seq += 1
        return frame

    def _event(self, kind: str, **details: object) -> SourceEvent:
        return SourceEvent(self.name, kind, self.seq - 1, time.time(), dict(details))


def _hwaccel(kind: str) -> HWAccel | None:
    if kind == "cpu":
        return None
    if "cuda" not in hwdevices_available():
        raise SourceError("--decode nvdec: this FFmpeg build has no CUDA hwaccel; use --decode cpu")
    # No software fallback: asking for NVDEC and silently getting the CPU would hide a problem.
    return HWAccel(device_type="cuda", allow_software_fallback=False)


def to_rgb(av_frame: av.VideoFrame, fit_to: tuple[int, int] | None) -> np.ndarray:
    """RGB uint8, downscaled (never upscaled) to fit `fit_to` before colour conversion."""
    if fit_to is not None:
        w, h = fit_size((av_frame.width, av_frame.height), fit_to)
        if w < av_frame.width:
            return av_frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
    return av_frame.to_ndarray(format="rgb24")


def iter_images(path: Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Full-size RGB images of a video file (for calibration and tools)."""
    decoder = VideoDecoder(Path(path).stem, str(path), deadline_s=0.0)
    count = 0
    for item in decoder:
        if isinstance(item, Frame):
            yield item.image
            count += 1
            if max_frames is not None and count >= max_frames:
                decoder.close()
                return


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
