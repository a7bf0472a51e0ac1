"""Decode a video source into Frames with PyAV: gap-free seq, presentation time (seconds), deadline.

A Frame carries the decoded picture's I420 planes (see `to_i420`), not RGB: scaling
and colour conversion happen in the preprocess workers (several threads) or on the
GPU, so the one decode thread per source only demuxes, decodes and copies planes
(about 4,400 fps against 190 with swscale to RGB on the decode thread).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from av.codec.hwaccel import HWAccel, hwdevices_available
from av.video.reformatter import VideoReformatter

from engines.errors import SourceError
from stages.preprocess import i420_to_rgb
from stages.redact import redact, redact_url
from stages.source import StreamInfo, is_live, url_scheme
from stages.types import EventType, Frame, SourceEvent

MAX_GOP_PACKETS = 1000  # packets kept since the last keyframe, to re-decode after damage (_recover)


class NoVideo(SourceError):
    """A live source that gave no video in time: opening timed out, or the probe found no frame."""


def _open(url: str, options: dict[str, str] | None, timeout: float | tuple[float, float] | None, decode: str):
    """PyAV's container for `url`; SourceError (NoVideo when nothing arrived in time) naming the fix."""
    if url_scheme(url) is None and not Path(url).exists():
        raise SourceError(f"{url}: no such file; check the path")
    try:
        return av.open(url, options=options or {}, timeout=timeout, hwaccel=_hwaccel(decode))
    except SourceError:
        raise
    except av.error.ExitError:  # the timeout's interrupt: nothing usable arrived in time
        raise NoVideo(f"{url}: no video in time") from None
    except Exception as err:  # PyAV raises many error types; all mean "cannot open"
        if decode != "cpu" and Path(url).exists():
            raise SourceError(
                f"{url}: NVDEC decoding unavailable ({redact(str(err))}); check the NVIDIA driver and GPU, "
                "or use --decode cpu"
            ) from None
        raise _open_error(url, err) from None


def _open_error(url: str, err: Exception) -> SourceError:
    # FFmpeg's messages quote the URL, credentials and all: the line names it once, redacted.
    strerror = err.strerror if isinstance(err, OSError) else None
    url, reason = redact_url(url), redact(f"[Errno {err.errno}] {strerror}" if strerror else str(err))
    if isinstance(err, FileNotFoundError) or (isinstance(err, av.error.FileNotFoundError)):
        return SourceError(f"{url}: no such file; check the path")
    if isinstance(err, PermissionError):
        return SourceError(f"{url}: permission denied; check the file's permissions")
    if isinstance(err, IsADirectoryError):
        return SourceError(f"{url}: is a directory; pass a video file")
    if is_live(url) and isinstance(err, OSError):
        # Connection refused, host unreachable, timed out...: the camera, not the video.
        return SourceError(f"{url}: cannot connect ({reason}); check the camera's address and that it is up")
    return SourceError(f"{url}: not a video PyAV can open ({reason}); pass an mp4/mkv/ts file or a working URL")


class VideoDecoder:
    """A file source (stages/source.py's Source), and one connection of a live one (stages/live.py):
    yields Frames (seq 0, 1, 2, ...) and SourceEvents. `decode`: "cpu", or "nvdec" for NVIDIA
    hardware decoding (the config's `decode`, --decode); SourceError where it is unavailable.

    Opening happens in the constructor so a bad source fails before the run starts.
    """

    def __init__(
        self,
        name: str,
        url: str,
        deadline_s: float,
        options: dict[str, str] | None = None,
        timeout: float | tuple[float, float] | None = None,
        first_seq: int = 0,
        decode: str = "cpu",
        stall_s: float | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.deadline_s = deadline_s
        self.seq = first_seq
        self.errors = 0
        self.stall_s = stall_s
        self._stopped = False
        self._reformatter = VideoReformatter()  # one swscale context for the source's frames
        self._packets = 0  # video packets with data sent to the decoder
        self._emitted = 0  # frames yielded
        self._failed = 0  # packets the decoder rejected with an error
        self._gop: list[av.Packet] | None = []
        self._last_pts: int | None = None
        self._end_s: float | None = None  # where the frames read so far end, in seconds
        self._concealed = 0  # frames FFmpeg decoded with damage concealed (flagged corrupt)
        self._last_corrupt = False
        self._container = _open(url, options, timeout, decode)
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{redact_url(url)}: has no video stream; pass a file with video")
        self._stream = self._container.streams.video[0]
        if decode == "cpu":
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
            if stall_s:
                raise NoVideo(f"{redact_url(url)}: the stream sent no video frame")
            raise SourceError(f"{redact_url(url)}: video stream has no frame size; the file is damaged")

    def __iter__(self) -> Iterator[Frame | SourceEvent]:
        try:
            yield from self._decode()
        finally:
            self._container.close()

    @property
    def live(self) -> bool:
        return is_live(self.url)

    def stop(self) -> None:
        """Ask the reading thread to end after the current packet."""
        self._stopped = True

    def close(self) -> None:
        self._container.close()

    def _decode(self) -> Iterator[Frame | SourceEvent]:
        # A live source demuxes every stream so control comes back on each packet: audio
        # that keeps flowing must not hide a video stall from the watchdog.
        packets = self._container.demux() if self.stall_s else self._container.demux(self._stream)
        last_frame = time.monotonic()
        while not self._stopped:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as err:
                # A dropped connection or a read timeout: the frames the decoder holds are good.
                yield from self._drain()
                self.errors += 1
                yield self._event(EventType.DECODE_ERROR, error=f"demux failed: {redact(str(err))}", fatal=True)
                return
            if packet.stream is self._stream and packet.size:  # not the empty end-of-stream packet
                self._keep(packet)
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as err:
                    self.errors += 1
                    self._failed += 1
                    # With frame threading FFmpeg reports an error a few packets late: approximate.
                    time_s = float(packet.pts * packet.time_base) if packet.pts is not None else None
                    yield self._event(EventType.DECODE_ERROR, error=redact(str(err)), packet_time_s=time_s)
                    decoded = []
                for av_frame in decoded:
                    last_frame = time.monotonic()
                    yield self._frame(av_frame)
            if self.stall_s and time.monotonic() - last_frame > self.stall_s:
                yield from self._drain()
                yield self._event(EventType.DECODE_ERROR, error=f"stalled: no frame for {self.stall_s:g} s", fatal=True)
                return
        if self._stopped:
            return
        yield from self._drain()
        yield from self._damage_report()

    def _keep(self, packet: av.Packet) -> None:
        """Count a packet and keep it with the others since the last keyframe (for _recover)."""
        self._packets += 1
        if packet.is_keyframe:
            self._gop = []
        if self._gop is not None:
            self._gop.append(packet)
            if len(self._gop) > MAX_GOP_PACKETS:
                self._gop = None  # too long to re-decode; recovery waits for the next keyframe

    def _drain(self) -> Iterator[Frame | SourceEvent]:
        """Flush the frames the decoder still holds (frame threads and B-frame reordering hold a few).

        With frame threading FFmpeg reports a damaged packet when its frame is due, and a
        failure while draining strands the frames behind it (PyAV cannot receive without
        sending, and a drained decoder takes no more packets). Those are decoded again
        from the last keyframe by a fresh single-threaded decoder: see _recover.
        """
        pending = self._packets - self._emitted - self._failed
        try:
            flushed = self._stream.codec_context.decode(None)
        except av.error.FFmpegError as err:
            self.errors += 1
            self._failed += 1
            yield self._event(EventType.DECODE_ERROR, error=redact(str(err)))
            flushed = []
        for av_frame in flushed:
            av_frame.time_base = self._stream.time_base  # a flush has no packet to take it from
            yield self._frame(av_frame)
        if len(flushed) < pending:
            for av_frame in self._recover():
                yield self._frame(av_frame)

    def _recover(self) -> list[av.VideoFrame]:
        """Frames after the last one emitted, decoded again from the kept GOP (may be none)."""
        if not self._gop or self._stream.codec_context.name is None:
            return []
        template = self._stream.codec_context
        codec = av.CodecContext.create(template.name, "r")
        if template.extradata:
            codec.extradata = template.extradata
        frames: list[av.VideoFrame] = []
        for packet in [*self._gop, None]:
            try:
                frames += codec.decode(packet)
            except av.error.FFmpegError:
                continue  # the damaged packet fails again; the ones after it decode
        last = self._last_pts
        return [f for f in frames if f.pts is not None and (last is None or f.pts > last)]

    def _damage_report(self) -> Iterator[SourceEvent]:
        """After the end of a file: a truncated container (fatal) and frames lost to damage."""
        truncated = self._truncation() if url_scheme(self.url) is None else None
        if truncated:
            self.errors += 1
            yield self._event(
                EventType.DECODE_ERROR, error="truncated", fatal=True,
                packets=self._packets, frames=self._emitted, **truncated,
            )
        lost = self._packets - self._emitted
        if lost > 0 or self._concealed:
            # The decoder skips frames that refer to damaged ones, mostly without an error,
            # and conceals damage in others (FFmpeg flags those frames corrupt).
            yield self._event(
                EventType.DECODE_ERROR,
                error=f"damaged: {lost} of {self._packets} packets gave no frame, {self._concealed} frames concealed",
                packets=self._packets, frames=self._emitted, lost=lost, concealed=self._concealed,
            )

    def _truncation(self) -> dict[str, object] | None:
        """What the container promised and did not hold, or None when it held it all."""
        declared = self.info.frames
        if declared:  # MP4 declares its frame count
            return {"declared": declared} if self._packets < declared else None
        if self._last_corrupt:
            return {"last_frame": "incomplete"}  # cut inside the last frame's data
        container = self._container
        if "matroska" in container.format.name and container.duration and self._end_s is not None:
            # MKV/WebM declare their duration in the header; the packets must reach it.
            declared_s = container.duration / 1_000_000 - (container.start_time or 0) / 1_000_000
            tolerance = max(0.5, 2 / self.info.fps) if self.info.fps else 0.5
            if self._end_s < declared_s - tolerance:
                return {"declared_s": round(declared_s, 3), "read_s": round(self._end_s, 3)}
        if container.format.name == "mpegts" and url_scheme(self.url) is None:
            # A transport stream is a run of 188-byte packets (192 in M2TS): a cut one is truncation.
            size = Path(self.url).stat().st_size
            if size % 188 and size % 192:
                return {"bytes": size}
        return None

    def _frame(self, av_frame: av.VideoFrame) -> Frame:
        start = time.perf_counter()
        image = to_i420(av_frame, self._reformatter)
        source_size = (av_frame.width, av_frame.height)
        # The display matrix (phone video) says how to turn the coded picture upright:
        # detection runs on the picture as displayed and boxes are in displayed pixels.
        turns = round(av_frame.rotation / 90) % 4  # counterclockwise quarter turns
        if turns:
            image, source_size = rotate_i420(image, source_size, turns)
        now = time.monotonic()
        frame = Frame(
            source=self.name,
            seq=self.seq,
            time_s=float(av_frame.time) if av_frame.time is not None else None,
            decoded_at=now,
            deadline=now + self.deadline_s,
            wall_time=time.time(),
            image=image,
            source_size=source_size,
        )
        frame.timings["convert"] = (time.perf_counter() - start) * 1000
        self.seq += 1
        self._emitted += 1
        self._concealed += av_frame.is_corrupt
        self._last_corrupt = av_frame.is_corrupt
        if av_frame.pts is not None:
            self._last_pts = av_frame.pts if self._last_pts is None else max(self._last_pts, av_frame.pts)
            if av_frame.time is not None:
                end = float(av_frame.time) + (1 / self.info.fps if self.info.fps else 0.0)
                self._end_s = end if self._end_s is None else max(self._end_s, end)
        return frame

    def _event(self, kind: EventType, fatal: bool = False, **details: object) -> SourceEvent:
        return SourceEvent(self.name, kind, self.seq - 1, time.time(), dict(details), fatal=fatal)


def _hwaccel(decode: str) -> HWAccel | None:
    """PyAV's hardware acceleration for `decode` ("cpu": none, "nvdec": CUDA, no software fallback)."""
    if decode == "cpu":
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
    if av_frame.width % 2 == 0 and av_frame.height % 2 == 0:
        return av_frame.to_ndarray(format="yuv420p")
    return _pack(*(_plane(av_frame, i) for i in range(3)))


def rotate_i420(planes: np.ndarray, size: tuple[int, int], turns: int) -> tuple[np.ndarray, tuple[int, int]]:
    """I420 `planes` of a (width, height) picture turned `turns` quarter turns counterclockwise
    (as np.rot90), and the turned picture's (width, height). Each plane turns on its own, so
    an odd size's padding stays at the right and bottom edges."""
    width, height = size
    h2, w2 = planes.shape[0] * 2 // 3, planes.shape[1]
    chroma = planes[h2:].reshape(2, h2 // 2, w2 // 2)
    turned = _pack(*(np.rot90(p, turns) for p in (planes[:height, :width], chroma[0], chroma[1])))
    return turned, ((height, width) if turns % 2 else size)


def _pack(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One I420 array from a (height, width) luma plane and its ceil-half chroma planes, an
    odd width or height padded by repeating the last luma column or row."""
    height, width = y.shape
    w2, h2 = width + width % 2, height + height % 2
    out = np.empty((h2 * 3 // 2, w2), np.uint8)
    luma = out[:h2]
    luma[:height, :width] = y
    luma[:height, width:] = luma[:height, width - 1 : width]
    luma[height:] = luma[height - 1 : height]
    chroma = out[h2:].reshape(2, h2 // 2, w2 // 2)
    chroma[0], chroma[1] = u, v
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
