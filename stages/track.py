"""Object tracks for one source: ByteTrack gives each detection a track id stable across frames.

Why ByteTrack: ByteTrack (Zhang et al., 2022) is the tracker DeepStream, Frigate-like NVRs
and roboflow's tools default to for detector output without appearance features.

Why trackforge's: it is ByteTrack in Rust behind a small Python API (`BYTETRACK.update`
takes ([x, y, w, h], score, class) per detection and returns each tracked one's id with
the index of the detection it matched), with no dependencies, MIT, by a maintainer of
supervision. Measured here (samples/bench_analytics.py, 100 objects moving per frame):
0.3 ms per frame against 10.4 ms for supervision 0.30's ByteTrack, whose per-track Python
(a Kalman update and a runtime `typing.cast` per object) made tracking a fifth of the
detector-sized model's time; roboflow's `trackers` was about 3x faster than supervision but
requires `opencv-python`, which clashes with our `opencv-python-headless`. Its thresholds are
set as supervision's defaults were (activation 0.25, new tracks from 0.35, IoU match 0.8).
trackforge is 0.x and says its API may change: it is pinned below 0.5.

State is per source and the calls must come in seq order: the publisher calls `update`
as it releases each result (pipeline/runtime/publisher.py), so this runs on one thread, after
the runtime has restored order, whatever the number of postprocess workers.

A failed frame is a gap: the tracker advances one frame with no detections, so its
Kalman filter predicts the motion over the gap; a track lost for fewer than
`lost_frames` frames is found again with the same id, so a single failed frame never
breaks one. Each track's record counts the failed frames it lived through.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from trackforge import BYTETRACK

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

    def record(self, kind: EventType) -> dict:
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

    # supervision 0.30's ByteTrack defaults, which the ground-truth tests were first held to.
    ACTIVATION, NEW_TRACK, MATCH_IOU = 0.25, 0.35, 0.8

    def __init__(self, lost_frames: int = 30) -> None:
        self._tracker = BYTETRACK(
            track_thresh=self.ACTIVATION,
            track_buffer=lost_frames,
            match_thresh=self.MATCH_IOU,
            det_thresh=self.NEW_TRACK,
        )
        self.lost_frames = lost_frames
        self.tracks: dict[int, Track] = {}

    def update(self, result: Result) -> tuple[Detections, list[Track], list[Track]]:
        det = result.detections
        failed = result.status is Status.FAILED
        if failed:
            for track in self.tracks.values():
                track.unseen_gaps += 1
        track_id = np.full(len(det), -1, np.int64)
        for tid, _, _, _, index in self._tracker.update(_to_trackforge(det)):
            if index is not None:
                track_id[index] = tid
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


def _to_trackforge(det: Detections) -> list[tuple[list[float], float, int]]:
    """Our detections as trackforge's: ([x, y, w, h], score, class_id), in our order."""
    xywh = np.hstack([det.xyxy[:, :2], det.xyxy[:, 2:] - det.xyxy[:, :2]]).astype(np.float64).reshape(-1, 4)
    return list(zip(xywh.tolist(), det.score.astype(np.float64).tolist(), det.class_id.astype(np.int64).tolist()))
