"""Live sources against a real RTSP server on loopback: reconnects, timeouts, shedding, pacing."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from engines.errors import SourceError
from pipeline.api import run
from pipeline.config import build_config
from pipeline.runtime.pipeline import RunHooks
from stages.types import Status
from tests.cli_run import read_jsonl, start, vidpipe
from tests.rtsp_server import GstRtspServer, RtspServer, free_port, gst_rtsp_available
from tests.sinks import CollectSink

FAST_RECONNECT = {"stall_s": 1.5, "open_timeout_s": 3.0}


@pytest.fixture
def rtsp(media: Path, tmp_path: Path):
    with RtspServer(media.resolve(), tmp_path / "rtsp.log") as server:
        yield server


def run_through_an_outage(server, source: dict, frames: int, outage_after: int) -> CollectSink:
    """Run one live source for `frames` frames; kill its server after `outage_after` frames and
    start it again a second later."""
    decoded = threading.Event()
    count = [0]

    def on_decoded(frame) -> None:
        count[0] += 1
        if count[0] == outage_after:
            decoded.set()

    sink = CollectSink()
    config = build_config({"sources": [{"name": "cam", **FAST_RECONNECT, **source}], "max_frames": frames})
    runner = threading.Thread(target=lambda: run(config, sinks=[sink], hooks=RunHooks(on_decoded=on_decoded)))
    runner.start()
    assert decoded.wait(30), "no frames from the RTSP server"
    server.stop()
    time.sleep(1.0)
    server.start()
    runner.join(60)
    assert not runner.is_alive()
    return sink


def assert_outage_reported_and_seq_gap_free(sink: CollectSink, frames: int, outage_after: int) -> None:
    assert [r.seq for r in sink.results] == list(range(frames))
    assert sink.summary.balanced and sink.summary.sources["cam"].decoded == frames
    start = next(e for e in sink.events if e.type == "outage_start")
    end = next(e for e in sink.events if e.type == "outage_end")
    assert start.after_seq == end.after_seq >= outage_after - 1
    assert end.details["duration_s"] > 0
    after = [r for r in sink.results if r.seq > end.after_seq]
    assert after and all(r.status is Status.OK for r in after)
    assert sink.events[-1].type == "source_end" and sink.events[-1].details["reason"] == "max_frames"


def test_rtsp_outage_is_reported_and_seq_continues_after_reconnect(rtsp):
    sink = run_through_an_outage(rtsp, {"url": rtsp.url("car-detection.mp4")}, frames=60, outage_after=25)
    assert_outage_reported_and_seq_gap_free(sink, frames=60, outage_after=25)


@pytest.mark.skipif(not gst_rtsp_available(), reason="needs Debian's GStreamer RTSP server (.ci/run installs it)")
def test_udp_transport_reconnects_after_the_server_restarts(car_clip, tmp_path):
    with GstRtspServer(car_clip.resolve(), tmp_path / "gst.log") as server:
        sink = run_through_an_outage(server, {"url": server.url, "transport": "udp"}, frames=45, outage_after=20)
    assert_outage_reported_and_seq_gap_free(sink, frames=45, outage_after=20)


def test_unreachable_rtsp_url_fails_after_the_configured_attempts():
    url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    config = build_config({"sources": [{"url": url, "connect_attempts": 2, "open_timeout_s": 1.0}]})
    with pytest.raises(SourceError, match="gave up after 2 attempts") as err:
        run(config)
    assert url in str(err.value)
    assert "cannot connect" in str(err.value) and "check the camera's address" in str(err.value)


def test_a_url_that_never_answers_does_not_hang_past_its_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never says a word
    url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/cam"
    config = build_config({"sources": [{"url": url, "connect_attempts": 2, "open_timeout_s": 1.0}]})
    start = time.monotonic()
    with pytest.raises(SourceError, match="gave up"):
        run(config)
    # Two 1 s attempts and one backoff, far from a hang.
    assert time.monotonic() - start < 10
    silent.close()


def test_cli_reports_an_unreachable_camera_in_one_line():
    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    proc = vidpipe("run", url, "--quiet")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidpipe: error:") and url in lines[0]
    assert "Traceback" not in proc.stderr


FRAMES = 120


def test_three_sources_one_flooding_under_shed_the_others_lose_nothing(rtsp, car_clip, cpu_hog):
    sink = CollectSink()
    config = build_config(
        {
            "sources": [
                {"url": rtsp.url("car-detection.mp4"), "name": "cam1", **FAST_RECONNECT},
                {"url": rtsp.url("one-by-one-person-detection.mp4"), "name": "cam2", **FAST_RECONNECT},
                {"url": str(car_clip), "name": "flood", "policy": "shed"},
            ],
            "max_frames": FRAMES,
            # What is tested is shedding: a latency deadline the loaded machine can always keep
            # (beside the CPU hog a frame can wait seconds), so no camera frame fails for time.
            "deadline_ms": 10_000,
            # The test server sends video in bursts of about ten frames, and a loaded machine
            # stalls for a second or more: lanes with room for that, still far below the
            # flooding file's frames.
            "queues": {"size": 48},
            # One slow context: about 60-90 frames/s even beside a CPU hog, room for both
            # cameras (25 frames/s each) but far below the unpaced file's decode rate. The
            # cameras' frames carry deadlines and the file's do not (it is unpaced), so EDF
            # serves the cameras first, and a full lane downstream holds back only its own source.
            "infer": {"contexts": 1, "max_batch": 1},
            "faults": {"slow_rate": 1.0, "slow_ms": 8},
        }
    )
    summary = run(config, sinks=[sink])
    assert summary.balanced
    for cam in ("cam1", "cam2"):
        results = [r for r in sink.results if r.source == cam]
        assert [r.seq for r in results] == list(range(FRAMES))
        not_ok = [(r.seq, r.reason, r.error) for r in results if r.status is not Status.OK]
        assert all(r.status is Status.OK for r in results), (cam, not_ok)
    flood = [r for r in sink.results if r.source == "flood"]
    assert [r.seq for r in flood] == list(range(FRAMES))
    shed = [r for r in flood if r.status is Status.FAILED]
    assert shed and all(r.reason.value == "shed" for r in shed)
    assert summary.sources["flood"].failed == {"shed": len(shed)}


def test_realtime_paces_a_file_and_duration_stops_it(car_clip):
    sink = CollectSink()
    config = build_config({"sources": [{"url": str(car_clip), "name": "cam"}], "realtime": True, "duration_s": 1.0})
    start = time.monotonic()
    summary = run(config, sinks=[sink])
    elapsed = time.monotonic() - start
    frames = summary.sources["cam"].decoded
    # 12.5 fps for about one second: paced, not the hundreds of frames an unpaced second decodes.
    assert 10 <= frames <= 16
    assert elapsed >= 0.9
    assert sink.events[-1].details["reason"] == "duration"
    assert summary.balanced


def test_duration_ends_a_live_source_while_it_reconnects(rtsp):
    """The camera goes away for good: --duration still ends the source on time, without an error."""
    decoded = threading.Event()
    sink = CollectSink()
    url = rtsp.url("car-detection.mp4")
    config = build_config({"sources": [{"url": url, "name": "cam", **FAST_RECONNECT}], "duration_s": 6.0})
    hooks = RunHooks(on_decoded=lambda f: decoded.set())
    runner = threading.Thread(target=lambda: run(config, sinks=[sink], hooks=hooks))
    start = time.monotonic()
    runner.start()
    assert decoded.wait(30), "no frames from the RTSP server"
    rtsp.stop()
    runner.join(60)
    assert not runner.is_alive()
    assert time.monotonic() - start < 30
    assert sink.summary.error is None and sink.summary.balanced
    assert [r.seq for r in sink.results] == list(range(sink.summary.sources["cam"].decoded))
    assert "outage_start" in [e.type for e in sink.events]
    assert "source_failed" not in [e.type for e in sink.events]
    assert sink.events[-1].type == "source_end" and sink.events[-1].details["reason"] == "duration"


def test_nvdec_without_a_gpu_is_a_clear_error(car_clip):
    proc = vidpipe("run", str(car_clip), "--decode", "nvdec", "--quiet")
    if proc.returncode == 0:
        pytest.skip("this machine decodes with NVDEC")
    assert proc.returncode == 2
    assert proc.stderr.startswith("vidpipe: error:") and "nvdec" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr


def _start_live(tmp_path: Path, source: dict) -> tuple[subprocess.Popen[str], Path]:
    """`vidpipe run` on one live source, its JSONL at the returned path; returns once 10 frames are in."""
    out, config = tmp_path / "r.jsonl", tmp_path / "cam.yaml"
    config.write_text(json.dumps({"sources": [{"name": "cam", **FAST_RECONNECT, **source}],
                                  "outputs": {"jsonl": str(out)}}))  # fmt: skip
    proc = start("run", "--config", str(config), "--quiet")
    _wait_for_records(proc, out, lambda records: sum(r["type"] == "frame" for r in records) >= 10)
    return proc, out


def _wait_for_records(proc: subprocess.Popen[str], out: Path, done) -> None:
    deadline = time.monotonic() + 60
    while not (out.exists() and done([json.loads(line) for line in out.read_text().split("\n")[:-1]])):  # whole lines
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.1)


def test_sigterm_during_an_rtsp_outage_ends_cleanly(rtsp, tmp_path: Path) -> None:
    """The RTSP server dies; SIGTERM while the source reconnects (forever): exit 143, the source
    ends as stopped, every frame received has its result, nothing is called damaged."""
    proc, out = _start_live(tmp_path, {"url": rtsp.url("car-detection.mp4")})
    rtsp.stop()
    _wait_for_records(proc, out, lambda records: any(r["type"] == "outage_start" for r in records))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "damaged" not in stderr and "Traceback" not in stderr and "gave up" not in stderr
    records = read_jsonl(out)
    frames = [r["seq"] for r in records if r["type"] == "frame"]
    assert frames == list(range(len(frames))) and len(frames) >= 10
    events = [r for r in records if r["type"] not in ("frame", "summary")]
    assert [e["type"] for e in events] == ["outage_start", "source_end"]
    assert events[-1]["reason"] == "stopped" and records[-1]["type"] == "summary"


def test_a_camera_gone_for_good_could_not_connect_and_is_not_damaged(rtsp, tmp_path: Path) -> None:
    proc, out = _start_live(tmp_path, {"url": rtsp.url("car-detection.mp4"), "max_reconnects": 1})
    rtsp.stop()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    url = rtsp.url("car-detection.mp4")
    assert stderr.splitlines()[-1].startswith(f"vidpipe: error: {url}: lost, and could not connect again: cannot "
                                              "connect (")  # fmt: skip
    assert "check the camera's address and that it is up" in stderr and "damaged" not in stderr
    frames = [r["seq"] for r in read_jsonl(out) if r["type"] == "frame"]
    assert frames == list(range(len(frames)))


def test_control_characters_in_a_url_are_escaped_in_the_error_line(tmp_path: Path) -> None:
    config = tmp_path / "cam.yaml"
    url = f"rtsp://admin:S3cret@127.0.0.1:{free_port()}/a\0b\x1b[31m"
    config.write_text(json.dumps({"sources": [{"url": url, "connect_attempts": 1}]}))
    proc = vidpipe("run", "--quiet", "--config", str(config))
    assert proc.returncode == 2
    shown = f"rtsp://admin:***@127.0.0.1:{url.split(':')[3].split('/')[0]}/a\\x00b\\x1b[31m"
    assert proc.stderr.startswith(f"vidpipe: error: {shown}: cannot connect (") and proc.stderr.count("\n") == 1
    assert "\0" not in proc.stderr and "\x1b" not in proc.stderr and "S3cret" not in proc.stderr
