"""Tracks, zones and lines in the annotated video and in Prometheus, from real runs on the sample clip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import numpy as np

from pipeline.api import run
from pipeline.assets.sample_clip import FRAME_COUNT, SAMPLE_CLIP, TRACKS
from pipeline.config import build_config
from pipeline.runtime.pipeline import RunHooks
from stages.types import Result
from tests.pipeline.observability.test_metrics import ScrapeAtEnd, in_hook, parse, value
from tests.redis_server import free_port
from tests.stages.test_analytics import ANALYTICS, LINE_X, ZONE_X

FRAME = 80  # red rect (TRACKS[0]) is left of the line, its last second of centres on open asphalt


def rgb_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24").astype(np.float32) for frame in container.decode(video=0)]


def yellowness(patch: np.ndarray) -> float:
    return float(((patch[..., 0] + patch[..., 1]) / 2 - patch[..., 2]).mean())


def cyanness(patch: np.ndarray) -> float:
    return float(((patch[..., 1] + patch[..., 2]) / 2 - patch[..., 0]).mean())


def redness(patch: np.ndarray) -> float:
    return float((patch[..., 0] - patch[..., 1]).mean())


def test_annotated_video_draws_zones_lines_and_trails(tmp_path: Path) -> None:
    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    config = build_config({"outputs": {"video": str(video), "jsonl": str(jsonl)}, "analytics": ANALYTICS,
                           "progress": False})  # fmt: skip
    summary = run(config)
    assert summary.balanced
    frames = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["type"] == "frame"]
    source, out = rgb_frames(SAMPLE_CLIP), rgb_frames(video)
    assert len(out) == len(source) == len(frames) == FRAME_COUNT
    record = next(r for r in frames if r["seq"] == FRAME)
    assert record["status"] == "ok" and all(d["track_id"] >= 0 for d in record["detections"])
    before, after = source[FRAME], out[FRAME]

    # The zone's right edge (x = ZONE_X) is outlined in yellow; asphalt beside it is untouched.
    edge, beside = np.s_[120:170, ZONE_X - 1 : ZONE_X + 2], np.s_[120:170, ZONE_X + 30 : ZONE_X + 40]
    assert yellowness(after[edge]) - yellowness(before[edge]) > 60
    assert abs(yellowness(after[beside]) - yellowness(before[beside])) < 15
    # The line (x = LINE_X, top to bottom) in cyan, away from its label and the objects.
    line = np.s_[210:240, LINE_X - 1 : LINE_X + 2]
    assert cyanness(after[line]) - cyanness(before[line]) > 60

    # The red rect's trail: its recent centres, behind the box, along its lane (y = 70).
    rect = TRACKS[0]
    cx, cy = rect.centre(FRAME)
    behind = np.s_[int(cy) - 1 : int(cy) + 2, int(cx - rect.width / 2 - 35) : int(cx - rect.width / 2 - 5)]
    assert redness(after[behind]) - redness(before[behind]) > 60
    above = np.s_[int(cy) + 25 : int(cy) + 28, behind[1]]  # the same stretch below the lane: no trail
    assert abs(redness(after[above]) - redness(before[above])) < 15


def test_line_crossings_and_zone_occupancy_in_prometheus(tmp_path: Path) -> None:
    port = free_port()
    jsonl = tmp_path / "out.jsonl"
    config = build_config({"outputs": {"jsonl": str(jsonl)}, "analytics": ANALYTICS, "metrics": {"port": port},
                           "progress": False})  # fmt: skip
    during: dict[str, Any] = {}

    def look(result: Result) -> None:  # the metrics sink has seen this frame and its events
        if result.seq % 20 == 10:
            in_hook(during, str(result.seq), port, "/metrics")

    at_end = ScrapeAtEnd(port)
    summary = run(config, sinks=[at_end], hooks=RunHooks(on_result=look))
    assert summary.balanced
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    frames = {r["seq"]: r for r in records if r["type"] == "frame"}
    crossings = [r for r in records if r["type"] == "line_cross"]
    assert len(during) == FRAME_COUNT // 20 and crossings

    occupied = 0
    for seq, scraped in during.items():
        m = parse(scraped)
        for direction in ("in", "out"):
            so_far = sum(r["direction"] == direction and r["seq"] <= int(seq) for r in crossings)
            scraped = value(m, "vidpipe_line_crossings_total", source="sample", line="middle", direction=direction)
            assert scraped == so_far
        zones = frames[int(seq)]["analytics"]["zones"]["left"]
        scraped_zone = {s.labels["class"]: s.value for s in m["vidpipe_zone_occupancy"].samples
                        if s.labels["zone"] == "left"}  # fmt: skip
        assert {k: v for k, v in scraped_zone.items() if v} == zones, seq
        occupied += sum(zones.values())
    assert occupied > 0

    totals = summary.analytics["sample"]["middle"]
    m = at_end.families
    assert value(m, "vidpipe_line_crossings_total", source="sample", line="middle", direction="in") == totals["in"]
    assert value(m, "vidpipe_line_crossings_total", source="sample", line="middle", direction="out") == totals["out"]
    assert totals["in"] + totals["out"] == len(crossings)
