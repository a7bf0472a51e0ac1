"""Object tracks for one source: ByteTrack gives each detection a track id stable across frames.

Why supervision's ByteTrack: ByteTrack (Zhang et al., 2022) is the tracker DeepStream,
Frigate-like NVRs and roboflow's tools default to for detector output without
appearance features, and supervision's implementation is small, numpy-only and well
used. We pin supervision 0.30: the last release that still ships `ByteTrack` (0.31 moved
it to roboflow's `trackers` package) and the first that does not require the
non-headless `opencv-python` wheel, which would clash with our `opencv-python-headless`
(two OpenCV builds in one environment overwrite each other's `cv2`). `trackers` itself
requires `opencv-python`, so it is not used until it offers a headless way in. It is faster:
its ByteTrack took about 0.3 of supervision's time per frame at 100 objects (2.6.1; 0.6 for
2.1.0, the last release that did not require `opencv-python`, pinned there forever if used).
ByteTrack is nearly all of tracking's cost (samples/bench_analytics.py, README), so that is
the lever if the cost matters.

State is per source and the calls must come in seq order: the publisher calls `update`
as it releases each result (pipeline/runtime/publisher.py), so this runs on one thread, after
the runtime has restored order, whatever the number of postprocess workers.

A failed frame is a gap: the tracker advances one frame with no detections, so its
Kalman filter predicts the motion over the gap; a track lost for fewer than
`lost_frames` frames is found again with the same id, so a single failed frame never
breaks one. Each track's record counts the failed frames it lived through.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import supervision as sv

from stages.types import Detections, EventType, Result, Status


@dataclass
class Track:
    """What we know of one track: first/last seq seen, its class, the failed frames it spanned."""

    track_id: int
    class_id: int
    label: str
    first_seq: int
    last_seq: int
    first_time: float
    last_time: float
    gaps: int = 0
    unseen_gaps: int = 0  # failed frames since last seen: they count once the track is seen again

    def record(self, kind: str) -> dict:
        """The `track_start` / `track_end` event's fields."""
        out = {"track_id": self.track_id, "class_id": self.class_id, "label": self.label,
               "first_seq": self.first_seq, "last_seq": self.last_seq}  # fmt: skip
        if kind == EventType.TRACK_END:
            out["duration_s"] = round(self.last_time - self.first_time, 3)
            out["gaps"] = self.gaps
        return out


def frame_time(result: Result) -> float:
    """Seconds on the source's clock: the presentation time when known, else the wall clock at decode."""
    return result.time_s if result.time_s is not None else result.wall_time


class SourceTracker:
    """ByteTrack over one source's results, in seq order.

    `update(result)` returns the detections with `track_id` filled, the tracks that
    started on this frame and the tracks that ended (not seen for `lost_frames` frames).
    """

    def __init__(self, lost_frames: int = 30, frame_rate: int = 30) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated in supervision, kept here on purpose
            # lost_track_buffer is scaled by frame_rate / 30 inside; pass 30 so it counts frames.
            self._tracker = sv.ByteTrack(lost_track_buffer=lost_frames, frame_rate=30)
        self.lost_frames = lost_frames
        self.tracks: dict[int, Track] = {}

    def update(self, result: Result) -> tuple[Detections, list[Track], list[Track]]:
        det = result.detections
        failed = result.status is Status.FAILED
        if failed:
            for track in self.tracks.values():
                track.unseen_gaps += 1
        tracked = self._tracker.update_with_detections(_to_supervision(det))
        track_id = np.full(len(det), -1, np.int64)
        if len(tracked):
            track_id[tracked.data["index"]] = tracked.tracker_id
        started = []
        now = frame_time(result)
        for i in np.flatnonzero(track_id >= 0):
            tid = int(track_id[i])
            track = self.tracks.get(tid)
            if track is None:
                track = Track(tid, int(det.class_id[i]), det.labels[i], result.seq, result.seq, now, now)
                self.tracks[tid] = track
                started.append(track)
            track.last_seq, track.last_time = result.seq, now
            track.gaps, track.unseen_gaps = track.gaps + track.unseen_gaps, 0
        ended = [t for t in self.tracks.values() if result.seq - t.last_seq > self.lost_frames]
        for track in ended:
            del self.tracks[track.track_id]
        return replace(det, track_id=track_id), started, ended

    def finish(self) -> list[Track]:
        """The end of the source: every live track ends."""
        ended = list(self.tracks.values())
        self.tracks.clear()
        return ended


def _to_supervision(det: Detections) -> sv.Detections:
    """Our detections as supervision's, each carrying its index so ids map back to our order."""
    return sv.Detections(
        xyxy=det.xyxy.astype(np.float32).reshape(-1, 4),
        confidence=det.score.astype(np.float32),
        class_id=det.class_id.astype(np.int64),
        data={"index": np.arange(len(det))},
    )
