"""Decode a video source into Frames with PyAV: gap-free seq, pts, deadline.

A Frame carries the decoded picture's I420 planes (see `to_i420`), not RGB: scaling
and colour conversion happen in the preprocess workers (several threads) or on the
GPU, so the one decode thread per source only demuxes, decodes and copies planes
(about 4,400 fps against 190 with swscale to RGB on the decode thread).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
from av.codec.hwaccel import HWAccel, hwdevices_available
from av.video.reformatter import VideoReformatter
import numpy as np

from pipeline.types import Frame, SourceEvent
from stages.errors import SourceError
from stages.preprocess import i420_to_rgb


@dataclass(frozen=True)
class StreamInfo:
    width: int
    height: int
    fps: float | None
    frames: int | None  # as the container declares it; None when unknown
    codec: str


def _open_error(url: str, err: Exception) -> SourceError:
    if isinstance(err, FileNotFoundError) or (isinstance(err, av.error.FileNotFoundError)):
        return SourceError(f"{url}: no such file; check the path")
    if isinstance(err, PermissionError):
        return SourceError(f"{url}: permission denied; check the file's permissions")
    if isinstance(err, IsADirectoryError):
        return SourceError(f"{url}: is a directory; pass a video file")
    return SourceError(f"{url}: not a video PyAV can open ({err}); pass an mp4/mkv/ts file or a working URL")


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
        self._reformatter = VideoReformatter()  # one swscale context for the source's frames
        if "://" not in url and not Path(url).exists():
            raise SourceError(f"{url}: no such file; check the path")
        try:
            self._container = av.open(url, options=options or {}, timeout=timeout, hwaccel=_hwaccel(hwaccel))
        except SourceError:
            raise
        except Exception as err:  # PyAV raises many error types; all mean "cannot open"
            if hwaccel != "cpu" and Path(url).exists():
                raise SourceError(
                    f"{url}: NVDEC decoding unavailable ({err}); check the NVIDIA driver and GPU, or use --decode cpu"
                ) from None
            raise _open_error(url, err) from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{url}: has no video stream; pass a file with video")
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
            raise SourceError(f"{url}: video stream has no frame size; the file is damaged")

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
                yield self._event("decode_error", error=f"demux failed: {err}", fatal=True)
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
                yield self._event("decode_error", error=str(err), packet_time_s=time_s)
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
        image = to_i420(av_frame, self._reformatter)
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


# Colour spaces whose matrix differs from BT.601's; the others (unspecified included) are
# converted with BT.601, as swscale's RGB conversion did by default.
_NOT_BT601 = {1, 7, 9, 10}  # AVCOL_SPC_BT709, SMPTE240M, BT2020_NCL, BT2020_CL
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG: full-range luma 0..255


def to_i420(av_frame: av.VideoFrame, reformatter: VideoReformatter | None = None) -> np.ndarray:
    """The frame's planes as I420 (yuv420p): uint8 (H2 * 3 // 2, W2), BT.601, limited range.

    (W2, H2) is the frame's (width, height) rounded up to even: rows 0..H2 hold Y, then U and
    V, each (H2 // 2, W2 // 2) flattened, the layout of `VideoFrame.to_ndarray(format="yuv420p")`
    and of OpenCV's COLOR_YUV2RGB_I420. An odd width or height (which that call refuses)
    has its last luma column or row repeated; the chroma planes already hold ceil(W / 2)
    samples. Consumers crop the picture back to (width, height).

    yuv420p BT.601 limited range (most video) is copied as it is. Other pixel formats
    (yuvj420p, yuv444p, NVDEC's NV12, 10-bit) and other matrices or full range are
    converted by swscale through `reformatter`, which keeps its context across frames of
    the same size and format: pass the source's own.
    """
    if av_frame.format.name != "yuv420p" or av_frame.color_range == _JPEG_RANGE or av_frame.colorspace in _NOT_BT601:
        av_frame = (reformatter or VideoReformatter()).reformat(
            av_frame, format="yuv420p", dst_colorspace="ITU601", dst_color_range="MPEG"
        )
    width, height = av_frame.width, av_frame.height
    if width % 2 == 0 and height % 2 == 0:
        return av_frame.to_ndarray(format="yuv420p")
    w2, h2 = width + width % 2, height + height % 2
    out = np.empty((h2 * 3 // 2, w2), np.uint8)
    y = out[:h2]
    y[:height, :width] = _plane(av_frame, 0)
    y[:height, width:] = y[:height, width - 1 : width]
    y[height:] = y[height - 1 : height]
    chroma = out[h2:].reshape(2, h2 // 2, w2 // 2)
    chroma[0], chroma[1] = _plane(av_frame, 1), _plane(av_frame, 2)
    return out


def _plane(av_frame: av.VideoFrame, index: int) -> np.ndarray:
    plane = av_frame.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


def iter_images(path: Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Full-size RGB uint8 (H, W, 3) images of a video file (for calibration and tools)."""
    decoder = VideoDecoder(Path(path).stem, str(path), deadline_s=0.0)
    reformatter = VideoReformatter()
    count = 0
    for item in decoder:
        if isinstance(item, Frame):
            yield i420_to_rgb(item.image, item.source_size, reformatter=reformatter)
            count += 1
            if max_frames is not None and count >= max_frames:
                decoder.close()
                return


def source_name(url: str) -> str:
    """A readable name derived from a path or URL: the file stem, or host+path for URLs."""
    if "://" in url:
        rest = url.split("://", 1)[1].split("@")[-1]
        return rest.strip("/").replace("/", "_").replace(":", "_") or "source"
    return Path(url).stem or "source"
