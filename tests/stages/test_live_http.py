"""HTTP cameras are live sources: timeouts, stall watchdog, flush before an outage, --duration,
signals and the no-video message, against a real MJPEG / MPEG-TS server on loopback."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from engines.errors import SourceError
from pipeline.api import run
from pipeline.config import build_config
from tests.cli_run import start, vidpipe
from tests.clips import make_clip, remux
from tests.http_server import MjpegCamera
from tests.sinks import CollectSink

FAST = {"stall_s": 1.0, "open_timeout_s": 2.0}


def run_live(url: str, **config) -> tuple:
    sink = CollectSink()
    run_config = build_config({"sources": [{"url": url, "name": "cam", **FAST}], "progress": False, **config})
    summary = run(run_config, sinks=[sink])
    assert summary.balanced
    assert sink.seqs("cam") == list(range(summary.sources["cam"].decoded))
    return summary, sink


def test_a_hung_http_camera_is_an_outage_and_duration_ends_the_run():
    with MjpegCamera() as camera:
        start = time.monotonic()
        summary, sink = run_live(camera.url("/cam.mjpg?frames=30&then=hang"), duration_s=4.0)
        elapsed = time.monotonic() - start
    assert elapsed < 20
    starts = [e for e in sink.events if e.type == "outage_start"]
    assert starts and starts[0].after_seq == 29  # the first connection's 30 frames, all of them
    assert "Immediate exit" in starts[0].details["error"] or "stalled" in starts[0].details["error"]
    assert sink.events[-1].type == "source_end" and sink.events[-1].details["reason"] == "duration"
    # Each connection gives 30 frames; --duration may end the last one part-way.
    assert summary.error is None and summary.sources["cam"].decoded >= 30


@pytest.fixture(scope="module")
def h264_ts(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("ts")
    return remux(make_clip(folder / "c.mp4", frames=50, fps=25), folder / "c.ts").read_bytes()


def test_a_stalled_h264_stream_is_flushed_before_the_outage(h264_ts: bytes):
    """50 frames then silence with the connection open: all 50 reach a result before the
    outage (the frame-threaded decoder holds a few, which a flush gives back)."""
    with MjpegCamera(ts=h264_ts) as camera:
        summary, sink = run_live(camera.url("/stream.ts?then=hang"), duration_s=4.0)
    start = next(e for e in sink.events if e.type == "outage_start")
    assert start.after_seq == 49
    assert [r.seq for r in sink.results if r.seq <= start.after_seq] == list(range(50))


def test_a_camera_that_sends_no_video_gets_an_accurate_message():
    with MjpegCamera() as camera:
        url = camera.url("/novideo")
        config = build_config({"sources": [{"url": url, "connect_attempts": 1, "open_timeout_s": 1.0}]})
        with pytest.raises(SourceError) as raised:
            run(config)
    message = str(raised.value)
    assert "connected, but no video arrived within 1 s" in message and "open_timeout_s" in message
    assert "damaged" not in message


def test_sigterm_during_an_http_outage_ends_cleanly(tmp_path: Path):
    """SIGTERM while the camera is down and the source reconnecting: exit 143, no error, every
    frame received has its result, the ledger balanced."""
    out = tmp_path / "r.jsonl"
    config = tmp_path / "cam.yaml"
    with MjpegCamera() as camera:
        url = camera.url("/cam.mjpg?frames=20&then=hang&once=1")
        settings = {"sources": [{"url": url, "name": "cam", **FAST}], "outputs": {"jsonl": str(out)}}
        config.write_text(json.dumps(settings))
        proc = start("run", "--config", str(config), "--quiet", stdout=None)
        deadline = time.monotonic() + 60
        while camera.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the second connection is the reconnect: the outage has begun
        assert camera.connections >= 2, "vidpipe never reconnected"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr  # 128 + SIGTERM
    assert "damaged" not in stderr and "Traceback" not in stderr and "gave up" not in stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in records if r["type"] == "frame"] == list(range(20))
    assert [r["type"] for r in records if r["type"] not in ("frame", "summary")][:1] == ["outage_start"]


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/cam.mp4", "gopher://x/y"])
def test_an_unsupported_url_scheme_is_refused_in_one_line(url: str):
    proc = vidpipe("run", url, "--quiet")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unsupported URL scheme" in lines[0] and "http://" in lines[0]
