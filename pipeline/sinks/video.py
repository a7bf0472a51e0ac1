"""Annotated video: each source's video with boxes, labels, scores and a status overlay.

Frames in the pipeline are shrunk to the model's input and results carry no image, so
this sink decodes each file source a second time, with the same decoder the pipeline
uses, in step with the results: results reach a sink in seq order per source and a
file decodes to the same frames every time, so frame k of this decode is the frame of
result seq k. A live stream cannot be read twice: annotated video needs file sources.

Every result becomes one output frame, failed ones marked FAILED with their reason, so
the output has exactly as many frames as the pipeline decoded, at the source's size,
frame rate and timestamps (H.264; the audio track is not copied). Each file is written
under a temporary name beside it and renamed into place once finalised (moov written), so
the path holds either a playable video or what it held before; it is locked (flock) for
the run, one run per output. With analytics on (`--track`, stages/analytics.py) each box
also shows its track id with a short trail of its centres, and the source's zones and lines
are outlined with their running counts from the result, at the places the counting uses
(stages/zones.py `to_pixels`, against the source size the pipeline reported). Decoding, drawing
and encoding run in one thread per source behind a small bounded queue, so the
publisher only waits when encoding falls behind (backpressure, never unbounded memory).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from engines.errors import OutputError
from pipeline.config import AnalyticsConfig
from pipeline.sinks import PRIVATE, FileModes, lock_output, make_dirs, write_failed
from pipeline.summary import RunSummary
from stages.decode import VideoDecoder
from stages.preprocess import i420_to_rgb
from stages.types import Frame, Result, SourceEvent, Status

log = logging.getLogger("vidpipe.video")

QUEUE_SIZE = 32
FPS_WINDOW_S = 2.0
# RGB colours (the images are RGB): one per class id, and the marks of a failed frame.
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]  # fmt: skip
FAILED_RGB = (255, 0, 0)
WHITE = (255, 255, 255)
ZONE_RGB = (255, 220, 0)
LINE_RGB = (0, 230, 255)
TRAIL_FRAMES = 25  # a trail shows the last second or so of a track's centres


def video_paths(path: Path, sources: list[str]) -> dict[str, Path]:
    """A path with a suffix is the file of the one source; else a directory of `<source>.mp4`.

    (RunConfig checks that a file is given for one source only, and file sources only.)
    """
    path = Path(path)
    if path.suffix:
        return {sources[0]: path}
    return {name: path / f"{name}.mp4" for name in sources}


class VideoSink:
    """Writes `<path>` (one source) or `<path>/<source>.mp4` (several), annotated."""

    def __init__(
        self, path: Path, sources: dict[str, str], analytics: AnalyticsConfig | None = None, modes: FileModes = PRIVATE
    ) -> None:
        """`analytics`: the run's tracks, zones and lines to draw (None or no tracker: boxes only);
        `modes`: of the files and directories it creates (0600 and 0700 by default)."""
        self.path = Path(path)
        self._videos: dict[str, _SourceVideo] = {}
        self._closed = False
        drawn = analytics if analytics is not None and analytics.tracker is not None else None
        try:
            for name, out in video_paths(self.path, list(sources)).items():
                self._videos[name] = _SourceVideo(name, sources[name], out, drawn, modes)
        except BaseException:
            self.close()
            raise
        self._arrivals: dict[str, deque[float]] = {name: deque() for name in sources}
        self._failures = dict.fromkeys(sources, 0)

    def write_result(self, result: Result) -> None:
        """Raises OutputError once a file's write failed (it happened on the encoding thread)."""
        self._raise_failed()
        now = time.monotonic()
        arrivals = self._arrivals[result.source]
        arrivals.append(now)
        while now - arrivals[0] > FPS_WINDOW_S:
            arrivals.popleft()
        fps = (len(arrivals) - 1) / (now - arrivals[0]) if len(arrivals) > 1 and now > arrivals[0] else 0.0
        self._failures[result.source] += result.status is Status.FAILED
        self._videos[result.source].put(result, fps, self._failures[result.source])

    def write_event(self, event: SourceEvent) -> None:
        pass

    def write_summary(self, summary: RunSummary) -> None:
        """Finalises every file; raises OutputError when one could not be written."""
        self.close()
        report: dict[str, object] = {"path": str(self.path), "frames": sum(v.frames for v in self._videos.values())}
        errors = [f"{v.name}: {v.error}" for v in self._videos.values() if v.error]
        if errors:
            report["error"] = "; ".join(errors)
        summary.outputs["video"] = report
        self._raise_failed()

    def _raise_failed(self) -> None:
        for video in self._videos.values():
            if video.os_error is not None:
                raise write_failed("annotated video", video.path, video.os_error, "--video")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for video in self._videos.values():
            video.finish()


class _SourceVideo:
    """Decodes one file again and encodes it annotated, in a thread of its own."""

    def __init__(
        self, name: str, url: str, path: Path, analytics: AnalyticsConfig | None, modes: FileModes
    ) -> None:
        self.name = name
        self.path = path
        self.frames = 0
        self.error: str | None = None
        self.os_error: OSError | None = None  # a failed write: the user's to fix (disk full, ...)
        with av.open(url) as probe:
            stream = probe.streams.video[0]
            self._time_base: Fraction = stream.time_base or Fraction(1, 90_000)
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        self._step = max(1, round(1 / (rate * self._time_base)))  # one frame's duration in pts units
        self._decoder = VideoDecoder(name, url, deadline_s=0.0)
        self._source = iter(self._decoder)
        self._rgb = VideoReformatter()  # one swscale context for the frames' I420 -> RGB
        width, height = self._decoder.info.width, self._decoder.info.height
        self._overlay = _Overlay(analytics, name, (width, height)) if analytics is not None else None
        self._partial = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
        self._lock_fd = -1
        self._created = False
        try:
            make_dirs(path.parent, modes.dir)
            self._created = not path.exists()
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, modes.file)
            lock_output(self._lock_fd, path, "--video")
            # Created here with the mode, then written by FFmpeg (which keeps it) and renamed into place.
            os.close(os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, modes.file))
            self._output = av.open(str(self._partial), "w")
        except (OSError, av.error.FFmpegError, OutputError) as err:
            self._decoder.close()
            self._release(replaced=False)
            if isinstance(err, OutputError):
                raise
            raise OutputError(f"outputs.video: cannot write {path} ({err}); choose a writable path") from None
        self._stream = self._output.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
        self._stream.time_base = self._time_base
        self._last_pts: int | None = None
        self._blank: np.ndarray | None = None
        # The decoder turns rotated (phone) video upright, so the first frame tells the size.
        first = next(self._source, None)
        self._pending = first if isinstance(first, Frame) else None
        if self._pending is not None:
            width, height = self._pending.source_size
        self._size(width, height)
        self._queue: queue.Queue[tuple[Result, float, int] | None] = queue.Queue(QUEUE_SIZE)
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=f"vidpipe-video-{name}", daemon=True)
        self._thread.start()

    def _size(self, width: int, height: int) -> None:
        self._stream.width, self._stream.height = width, height
        # 4:2:0 needs even sizes; an odd-sized source keeps its size in 4:4:4.
        self._stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._blank = np.zeros((height, width, 3), np.uint8)

    def put(self, result: Result, fps: float, failures: int) -> None:
        self._queue.put((result, fps, failures))

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._queue.put(None)
        self._thread.join()
        try:
            if not self.error:
                for packet in self._stream.encode():
                    self._output.mux(packet)
        except av.error.FFmpegError as err:
            self._failed(err)
        finally:
            try:
                self._output.close()  # writes the moov
            except (OSError, av.error.FFmpegError) as err:
                self._failed(err)
            self._decoder.close()
        self._release(replaced=not self.error and self.frames > 0)
        if self.error and self.os_error is None:  # a failed write is reported by the run itself
            log.error("annotated video %s: %s", self.path, self.error)

    def _failed(self, err: BaseException) -> None:
        if self.error is None:
            self.error = f"writing failed: {err}"
            if isinstance(err, OSError) and err.errno:
                self.os_error = err

    def _release(self, replaced: bool) -> None:
        """Rename the finished file into place, or drop the partial one (and an empty file we made)."""
        try:
            if replaced:
                os.replace(self._partial, self.path)
            else:
                self._partial.unlink(missing_ok=True)
                if self._created and self._lock_fd >= 0 and os.fstat(self._lock_fd).st_size == 0:
                    self.path.unlink(missing_ok=True)
        except OSError as err:
            self._failed(err)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error:
                continue  # keep draining so the publisher never blocks on a dead writer
            try:
                self._write(*item)
            except OSError as err:  # a full disk: the run stops and says so (VideoSink.write_result)
                self._failed(err)
            except Exception as err:  # a bad output must not stop the results
                log.exception("annotated video %s failed", self.path)
                self.error = str(err)

    def _next_source_frame(self, seq: int) -> Frame | None:
        pending, self._pending = self._pending, None
        if pending is not None and pending.seq >= seq:
            return pending
        for item in self._source:
            if isinstance(item, Frame) and item.seq >= seq:
                return item
        return None

    def _write(self, result: Result, fps: float, failures: int) -> None:
        frame = self._next_source_frame(result.seq)
        if frame is None:  # the file changed since the pipeline read it
            image, pts, missing = self._blank.copy(), None, True
        else:
            image, missing = i420_to_rgb(frame.image, frame.source_size, reformatter=self._rgb), False
            pts = round(frame.time_s / self._time_base) if frame.time_s is not None else None
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + self._step
        self._last_pts = pts
        if self._overlay is not None:
            self._overlay.draw(image, result)
        annotate(image, result, f"{self.name}  #{result.seq}  {fps:.1f} fps  failed {failures}")
        if missing:
            _label(image, "source frame unavailable", (10, image.shape[0] // 2), FAILED_RGB)
        out = av.VideoFrame.from_ndarray(image, format="rgb24")
        out.pts = pts
        out.time_base = self._time_base
        for packet in self._stream.encode(out):
            self._output.mux(packet)
        self.frames += 1


def annotate(image: np.ndarray, result: Result, status: str) -> None:
    """Draw boxes with label and score, a status line, and a FAILED mark, in place (RGB)."""
    height = image.shape[0]
    thickness = max(1, round(height / 360))
    det = result.detections
    for i in range(len(det)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in det.xyxy[i])
        colour = PALETTE[int(det.class_id[i]) % len(PALETTE)]
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness)
        track = f"#{det.track_id[i]} " if det.track_id is not None and det.track_id[i] >= 0 else ""
        _label(image, f"{track}{det.labels[i]} {float(det.score[i]):.2f}", (x1, max(y1, 0)), colour)
    _label(image, status, (0, 0), (0, 0, 0))
    if result.status is Status.FAILED:
        cv2.rectangle(image, (0, 0), (image.shape[1] - 1, height - 1), FAILED_RGB, 3 * thickness)
        reason = result.reason.value if result.reason else "unknown"
        _label(image, f"FAILED: {reason}", (0, height), FAILED_RGB, anchor_bottom=True)


class _Overlay:
    """One source's zones, lines and track trails, drawn under the boxes of each frame.

    Trails are the centres of each track's boxes over its last TRAIL_FRAMES ok frames; a
    track unseen for longer is forgotten, so memory stays bounded on endless streams.
    """

    def __init__(self, analytics: AnalyticsConfig, source: str, size: tuple[int, int]) -> None:
        from stages.zones import to_pixels  # the counting's own mapping: drawn where it counts

        self.zones = [(z.name, to_pixels(z.polygon, z.units, size))
                      for z in analytics.zones if z.source in (None, source)]  # fmt: skip
        self.lines = [(ln.name, to_pixels([ln.start, ln.end], ln.units, size))
                      for ln in analytics.lines if ln.source in (None, source)]  # fmt: skip
        self.trails: dict[int, tuple[int, deque[tuple[int, int]], tuple[int, int, int]]] = {}

    def draw(self, image: np.ndarray, result: Result) -> None:
        thickness = 2 * max(1, round(image.shape[0] / 360))
        counts = result.analytics or {}
        for name, polygon in self.zones:
            cv2.polylines(image, [polygon.reshape(-1, 1, 2)], True, ZONE_RGB, thickness, cv2.LINE_AA)
            occupancy = counts.get("zones", {}).get(name, {})
            text = f"{name}: " + (", ".join(f"{n} {label}" for label, n in sorted(occupancy.items())) or "0")
            _label(image, text, tuple(int(v) for v in polygon.mean(axis=0)), (120, 100, 0))
        for name, points in self.lines:
            cv2.line(image, tuple(int(v) for v in points[0]), tuple(int(v) for v in points[1]), LINE_RGB, thickness,
                     cv2.LINE_AA)  # fmt: skip
            total = counts.get("lines", {}).get(name, {})
            _label(image, f"{name}: in {total.get('in', 0)} out {total.get('out', 0)}",
                   tuple(int(v) for v in points[0]), (0, 100, 120))  # fmt: skip
        self._follow(result)
        for _, centres, colour in self.trails.values():
            if len(centres) > 1:
                path = np.array(centres, np.int32).reshape(-1, 1, 2)
                cv2.polylines(image, [path], False, colour, thickness, cv2.LINE_AA)

    def _follow(self, result: Result) -> None:
        det = result.detections
        if result.status is Status.OK and det.track_id is not None:
            centres = np.round((det.xyxy[:, :2] + det.xyxy[:, 2:]) / 2).astype(int)
            for i in np.flatnonzero(det.track_id >= 0):
                tid = int(det.track_id[i])
                if tid in self.trails:
                    _, trail, colour = self.trails[tid]
                else:
                    trail, colour = deque(maxlen=TRAIL_FRAMES), PALETTE[int(det.class_id[i]) % len(PALETTE)]
                trail.append((int(centres[i, 0]), int(centres[i, 1])))
                self.trails[tid] = (result.seq, trail, colour)
        for tid in [t for t, (seen, _, _) in self.trails.items() if result.seq - seen > TRAIL_FRAMES]:
            del self.trails[tid]


def _label(image: np.ndarray, text: str, at: tuple[int, int], background: tuple[int, int, int],
           anchor_bottom: bool = False) -> None:  # fmt: skip
    """White text on a filled box whose top-left (or bottom-left) corner is `at`."""
    scale = max(0.4, image.shape[0] / 900)
    weight = max(1, round(scale * 1.5))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, weight)
    x, y = at
    top = y - h - base - 4 if anchor_bottom else y
    top = min(max(top, 0), image.shape[0] - h - base - 4)
    cv2.rectangle(image, (x, top), (x + w + 6, top + h + base + 4), background, cv2.FILLED)
    cv2.putText(image, text, (x + 3, top + h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, WHITE, weight, cv2.LINE_AA)
