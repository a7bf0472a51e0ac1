"""Analytics of a run: per source, a tracker (stages/track.py) and its zones and lines (stages/zones.py).

`step(result)` must see each source's results in seq order, failed ones included; the
publisher calls it as it releases them (pipeline/runtime/publisher.py). It returns the result
with track ids and the frame's occupancy, and the events that frame caused as
SourceEvents with `after_seq = seq`, so every sink gets them right after the frame, in
order, with the guarantees of any source event (JSONL, Redis Streams, MQTT).

Events: `track_start`, `track_end` (class, first and last seq, duration, failed frames
spanned), `zone_enter`, `zone_exit` (with `dwell_s`) and `line_cross` (direction,
class, track).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from time import time as wall_clock
from typing import Protocol

from stages.track import SourceTracker, Track, frame_time
from stages.types import EventType, Result, SourceEvent, Status
from stages.zones import LineSpec, SourceZones, ZoneSpec


class AnalyticsSpec(Protocol):
    """The analytics settings this reads (pipeline.config's AnalyticsConfig is one): frames a
    lost track is kept for, and the zones and lines of every source."""

    @property
    def lost_frames(self) -> int: ...

    @property
    def zones(self) -> Sequence[ZoneSpec]: ...

    @property
    def lines(self) -> Sequence[LineSpec]: ...


class Analytics:
    """One tracker and one set of zones and lines per source."""

    def __init__(self, config: AnalyticsSpec, sizes: dict[str, tuple[int, int]]) -> None:
        """`sizes` maps each source to its frame (width, height) in pixels, for fractional geometry."""
        self.trackers = {name: SourceTracker(config.lost_frames) for name in sizes}
        self.zones = {
            name: SourceZones(
                [z for z in config.zones if z.source in (None, name)],
                [ln for ln in config.lines if ln.source in (None, name)],
                size,
            )
            for name, size in sizes.items()
        }
        self._last: dict[str, tuple[int, float]] = {}

    def step(self, result: Result) -> tuple[Result, list[SourceEvent]]:
        tracker, zones = self.trackers[result.source], self.zones[result.source]
        time = frame_time(result)
        self._last[result.source] = (result.seq, time)
        detections, started, ended = tracker.update(result)
        found = _track_events(EventType.TRACK_START, started)
        if not zones.zones and not zones.lines:  # tracks only (--track): no geometry to run
            result = replace(result, detections=detections)
        elif result.status is Status.OK:
            counts, events = zones.update(result.seq, time, detections)
            found += events
            result = replace(result, detections=detections, analytics=counts or None)
        else:  # a gap: nothing is known of this frame's zones; totals stand
            result = replace(result, analytics=zones.counts() or None)
        found += zones.ended(ended)
        found += _track_events(EventType.TRACK_END, ended)
        return result, self._events(result.source, result.seq, result.wall_time, found)

    def finish(self, source: str) -> list[SourceEvent]:
        """The source ended: its live tracks end and leave their zones (before `source_end`)."""
        if source not in self.trackers:
            return []
        seq, _ = self._last.get(source, (-1, 0.0))
        ended = self.trackers[source].finish()
        found = self.zones[source].ended(ended) + _track_events(EventType.TRACK_END, ended)
        return self._events(source, seq, None, found)

    def totals(self) -> dict[str, dict]:
        """Per source: line in/out totals (summary and metrics)."""
        return {name: zones.counts().get("lines", {}) for name, zones in self.zones.items() if zones.lines}

    @staticmethod
    def _events(
        source: str, seq: int, wall_time: float | None, found: list[tuple[EventType, dict]]
    ) -> list[SourceEvent]:
        now = wall_time if wall_time is not None else wall_clock()
        return [SourceEvent(source, kind, seq, now, {"seq": seq, **details}) for kind, details in found]


def _track_events(kind: EventType, tracks: list[Track]) -> list[tuple[EventType, dict]]:
    """`track_start` or `track_end` events of `tracks`: (kind, the event's fields)."""
    return [(kind, track.record(kind)) for track in tracks]
