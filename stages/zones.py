"""Zones and lines of one source: occupancy, zone_enter/zone_exit with dwell, line_cross.

The geometry is supervision's (`PolygonZone`: is an anchor inside a polygon;
`LineZone`: which tracked anchors crossed a line since the last frame, and in which
direction), the same package as the tracker (stages/track.py), so none of it is ours.
What is ours is the bookkeeping around it: which track is in which zone since when.

An object's position is the centre of its box (`Position.CENTER`) for zones and lines
alike. Direction follows supervision: `in` is a crossing from the right of the line,
seen walking from `start` to `end`, to its left; `out` the other way.

A zone's exit comes when its track is seen outside, or when the track ends: a
frame where the detector missed the object, or a failed frame, changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import supervision as sv

from stages.track import Track
from stages.types import Detections, EventType


class ZoneSpec(Protocol):
    """A zone as configured (pipeline.config's ZoneConfig is one): its name, the source it
    belongs to (None: every source), its corners as (x, y) and their units ("pixels", or
    "fraction" of the frame)."""

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str | None: ...

    @property
    def polygon(self) -> Sequence[tuple[float, float]]: ...

    @property
    def units(self) -> str: ...


class LineSpec(Protocol):
    """A line as configured (pipeline.config's LineConfig is one): its name, the source it
    belongs to (None: every source), its ends as (x, y) and their units, as a zone's."""

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str | None: ...

    @property
    def start(self) -> tuple[float, float]: ...

    @property
    def end(self) -> tuple[float, float]: ...

    @property
    def units(self) -> str: ...


ANCHOR = (sv.Position.CENTER,)


def to_pixels(points: list[tuple[float, float]], units: str, size: tuple[int, int]) -> np.ndarray:
    """Config points as source pixels [(x, y)], int32; `size` is the source's (width, height)."""
    scale = np.array(size, np.float64) if units == "fraction" else np.ones(2)
    return np.round(np.array(points, np.float64) * scale).astype(np.int32)


@dataclass
class _Zone:
    name: str
    polygon: np.ndarray
    zone: sv.PolygonZone
    inside: dict[int, tuple[int, float]] = field(default_factory=dict)  # track -> (seq, time) of entry
    entries: int = 0


@dataclass
class _Line:
    name: str
    points: np.ndarray
    line: sv.LineZone
    totals: Counter = field(default_factory=Counter)  # (direction, label) -> crossings


class SourceZones:
    """The zones and lines of one source, fed each ok frame's tracked detections in seq order."""

    def __init__(self, zones: Sequence[ZoneSpec], lines: Sequence[LineSpec], size: tuple[int, int]) -> None:
        self.zones = []
        for z in zones:
            polygon = to_pixels(z.polygon, z.units, size)
            self.zones.append(_Zone(z.name, polygon, sv.PolygonZone(polygon, triggering_anchors=ANCHOR)))
        self.lines = []
        for ln in lines:
            points = to_pixels([ln.start, ln.end], ln.units, size)
            start, end = (sv.Point(int(x), int(y)) for x, y in points)
            self.lines.append(_Line(ln.name, points, sv.LineZone(start, end, triggering_anchors=ANCHOR)))

    def update(self, seq: int, time: float, det: Detections) -> tuple[dict, list[tuple[EventType, dict]]]:
        """Occupancy and line totals after this frame, and the events it caused, in order."""
        tracked = np.flatnonzero(det.track_id >= 0) if det.track_id is not None else np.zeros(0, np.int64)
        svd = sv.Detections(
            xyxy=det.xyxy[tracked].astype(np.float32).reshape(-1, 4),
            class_id=det.class_id[tracked].astype(np.int64),
            tracker_id=det.track_id[tracked] if det.track_id is not None else np.zeros(0, np.int64),
        )
        labels = [det.labels[i] for i in tracked]
        ids = svd.tracker_id.tolist()
        events: list[tuple[EventType, dict]] = []
        occupancy: dict[str, dict[str, int]] = {}
        for zone in self.zones:
            inside = zone.zone.trigger(svd) if len(svd) else np.zeros(0, bool)
            occupancy[zone.name] = dict(Counter(labels[k] for k in np.flatnonzero(inside)))
            # Only the detections whose side changed cause events, in detection order.
            was = np.fromiter((tid in zone.inside for tid in ids), bool, len(ids))
            for k in np.flatnonzero(inside != was):
                tid = ids[k]
                if inside[k]:
                    zone.inside[tid] = (seq, time)
                    zone.entries += 1
                    events.append((EventType.ZONE_ENTER, {"zone": zone.name, "track_id": tid, "label": labels[k]}))
                else:
                    events.append((EventType.ZONE_EXIT, self._exit(zone, tid, labels[k], seq, time)))
        for line in self.lines:
            if not len(svd):
                continue
            crossed_in, crossed_out = line.line.trigger(svd)
            for k in np.flatnonzero(crossed_in | crossed_out):
                for direction, crossed in (("in", crossed_in), ("out", crossed_out)):
                    if crossed[k]:
                        line.totals[(direction, labels[k])] += 1
                        events.append((EventType.LINE_CROSS, {"line": line.name, "direction": direction,
                                                      "track_id": ids[k], "label": labels[k]}))  # fmt: skip
        return self.counts(occupancy), events

    def ended(self, tracks: list[Track]) -> list[tuple[EventType, dict]]:
        """Tracks that ended leave every zone they were in, as of when they were last seen."""
        events = []
        for zone in self.zones:
            for track in tracks:
                if track.track_id in zone.inside:
                    details = self._exit(zone, track.track_id, track.label, track.last_seq, track.last_time)
                    events.append((EventType.ZONE_EXIT, details))
        return events

    @staticmethod
    def _exit(zone: _Zone, tid: int, label: str, seq: int, time: float) -> dict:
        """`exit_seq`: the frame it was seen outside, or last seen at all when its track ended."""
        entered_seq, entered_time = zone.inside.pop(tid)
        return {"zone": zone.name, "track_id": tid, "label": label, "entered_seq": entered_seq,
                "exit_seq": seq, "dwell_s": round(time - entered_time, 3)}  # fmt: skip

    def counts(self, occupancy: dict[str, dict[str, int]] | None = None) -> dict:
        """{"zones": {zone: {label: n}}, "lines": {line: {"in": n, "out": n, "by_label": {...}}}}."""
        lines = {}
        for line in self.lines:
            by_label: dict[str, dict[str, int]] = {}
            for (direction, label), n in sorted(line.totals.items()):
                by_label.setdefault(label, {"in": 0, "out": 0})[direction] = n
            lines[line.name] = {"in": sum(v["in"] for v in by_label.values()),
                                "out": sum(v["out"] for v in by_label.values()), "by_label": by_label}  # fmt: skip
        out: dict = {}
        if self.zones:
            out["zones"] = occupancy if occupancy is not None else {z.name: {} for z in self.zones}
        if self.lines:
            out["lines"] = lines
        return out
