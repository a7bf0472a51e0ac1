"""File and live sources behind one Source protocol, and the one answer to "is it live?"
(a real clip, a real MJPEG camera on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.api import open_source
from pipeline.config import build_config
from stages.decode import VideoDecoder
from stages.live import LiveSource
from stages.source import Source, is_live, source_name
from stages.types import Frame
from tests.http_server import MjpegCamera


@pytest.mark.parametrize(
    ("url", "live"),
    [
        ("clip.mp4", False),
        ("/videos/a b.mkv", False),
        ("file:///videos/clip.mp4", False),
        ("rtsp://cam/stream1", True),
        ("RTSP://cam/stream1", True),
        ("https://cam/video.m3u8", True),
        ("srt://0.0.0.0:9000", True),
        ("ftp://host/clip.mp4", False),  # not a source vidpipe reads: refused when opened
    ],
)
def test_is_live_by_scheme(url: str, live: bool):
    assert is_live(url) is live


def test_a_file_source_is_a_source_and_not_live(car_clip: Path):
    decoder = VideoDecoder("cam", str(car_clip), 1.0)
    try:
        assert isinstance(decoder, Source) and decoder.live is False
        assert next(iter(decoder)).seq == 0
    finally:
        decoder.close()


def test_a_camera_is_a_live_source_and_the_run_treats_it_as_one():
    config = build_config({"sources": [{"url": "x"}], "deadline_ms": 1000})
    with MjpegCamera() as camera:
        url = camera.url("/cam.mjpg?frames=5&then=close")
        src = config.sources[0].model_copy(update={"url": url, "stall_s": 1.0, "open_timeout_s": 2.0})
        opened = open_source(config, src, source_name(url))
        try:
            assert isinstance(opened.decoder, LiveSource) and isinstance(opened.decoder, Source)
            assert opened.decoder.live is True
            assert opened.policy == "shed" and opened.latency_bound
            first = next(iter(opened.decoder))
            assert isinstance(first, Frame) and first.seq == 0
        finally:
            opened.decoder.close()
