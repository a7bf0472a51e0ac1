"""Secrets never leave the process, source names never become paths unchecked, every numeric
config field has a bound: real CLI runs, a real RTSP server and a real redis-server."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.observability.report import print_summary
from pipeline.summary import RunSummary, SourceLedger
from stages.redact import redact, redact_url
from tests.cli_run import read_jsonl, start, vidpipe
from tests.redis_server import RedisServer
from tests.rtsp_server import RtspServer, free_port

SECRET = "S3cretPW"


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidpipe: error: "), proc.stderr
    return lines[0]


def redis_dump(server: RedisServer) -> str:
    """Every key and every stream entry in the server, as text."""
    with server.client() as client:
        out = []
        for key in client.keys("*"):
            out.append(key)
            if client.type(key) == "stream":
                out += [json.dumps(fields) for _, fields in client.xrange(key)]
        return "\n".join(out)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:pw@cam/live", "rtsp://admin:***@cam/live"),
        ("rtsp://admin:pa#ss/x@cam/live", "rtsp://admin:***@cam/live"),
        ("rtsp://token@cam", "rtsp://***@cam"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://h:1/0?ssl_password=pw&db=2", "rediss://h:1/0?ssl_password=***&db=2"),
        ("http://cam/v?user=a&pwd=pw&token=t", "http://cam/v?user=a&pwd=***&token=***"),
        ("redis://[::1/0", "redis://[::1/0"),
        ("car.mp4", "car.mp4"),
    ],
)
def test_redact_url_hides_passwords_and_never_raises(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact(f"cannot open '{url}': refused") == f"cannot open '{shown}': refused"


def test_camera_credentials_never_leave_the_process(media: Path, tmp_path: Path, make_redis_server) -> None:
    """A camera that works, then dies for good: the error line, the JSONL source_failed event,
    the summary, the logs and the Redis stream all carry the URL, none its password."""
    redis_server = make_redis_server()
    out = tmp_path / "r.jsonl"
    with RtspServer(media.resolve(), tmp_path / "rtsp.log") as rtsp:
        url = f"rtsp://admin:{SECRET}@127.0.0.1:{rtsp.port}/car-detection.mp4"
        config = tmp_path / "cam.yaml"
        config.write_text(json.dumps({
            "sources": [{"url": url, "stall_s": 1.0, "open_timeout_s": 2.0, "max_reconnects": 0}],
            "outputs": {"jsonl": str(out), "redis": {"url": redis_server.url, "spool_dir": str(tmp_path / "spool")}},
        }))  # fmt: skip
        proc = start("--log-level", "DEBUG", "run", "--config", str(config), "--quiet")
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not (out.exists() and '"type":"frame"' in out.read_text()):
                time.sleep(0.2)
            assert '"type":"frame"' in out.read_text(), "no frames from the RTSP server"
        except BaseException:
            proc.kill()
            raise
    stdout, stderr = proc.communicate(timeout=90)

    records = read_jsonl(out)
    failed = [r for r in records if r["type"] == "source_failed"]
    assert proc.returncode == 2 and failed, stderr
    assert f"rtsp://admin:***@127.0.0.1:{rtsp.port}/car-detection.mp4" in records[-1]["error"]
    assert "vidpipe: error: rtsp://admin:***@" in stderr
    stream = redis_dump(redis_server)
    assert '"source_failed"' in stream and '"summary"' in stream
    for text in (stdout, stderr, out.read_text(), stream):
        assert SECRET not in text


def test_an_unreachable_camera_with_a_hash_in_its_password(tmp_path: Path) -> None:
    url = f"rtsp://admin:pa#ss{SECRET}@127.0.0.1:{free_port()}/cam"

    line = one_error_line(vidpipe("run", url, "--quiet"))
    logged = vidpipe("--log-level", "DEBUG", "run", url, "--quiet", "--log-format", "json")

    assert "rtsp://admin:***@127.0.0.1" in line
    assert logged.returncode == 2
    for text in (line, logged.stdout, logged.stderr):
        assert SECRET not in text and "pa#ss" not in text


def test_redis_url_secrets_are_redacted_and_bad_urls_are_one_line(tmp_path: Path, redis_server: RedisServer) -> None:
    for bad in (f"redis://:pa#ss{SECRET}@127.0.0.1:{redis_server.port}/0", "redis://[::1/0", "redis://127.0.0.1:1/abc",
                f"redis://127.0.0.1:1/0?ssl_password={SECRET}", "http://127.0.0.1:1/0"):  # fmt: skip
        line = one_error_line(vidpipe("run", "--quiet", "--max-frames", "1", "--redis", bad))
        assert "outputs.redis.url" in line and SECRET not in line and "pa#ss" not in line
    # TLS against a plain server: an outage, spooled; the summary names the URL, not the password.
    out = tmp_path / "r.jsonl"
    url = f"rediss://127.0.0.1:{redis_server.port}/0?ssl_password={SECRET}&socket_timeout=2"
    config = tmp_path / "tls.yaml"
    config.write_text(json.dumps({"outputs": {"redis": {"url": url, "spool_dir": str(tmp_path / "spool"),
                                                        "drain_timeout_s": 1}}}))  # fmt: skip
    proc = vidpipe("--log-level", "DEBUG", "run", "--config", str(config), "--max-frames", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "ssl_password=***" in proc.stdout  # the summary's redis line
    spooled = "".join(p.read_text() for p in (tmp_path / "spool").iterdir())
    for text in (proc.stdout, proc.stderr, out.read_text(), spooled):
        assert SECRET not in text


@pytest.mark.parametrize("name", ["../../evil", "/tmp/vidpipe-evil", ".hidden", "[/x]", "a b", "x" * 65, ""])
def test_a_bad_source_name_is_one_line_and_writes_nothing(tmp_path: Path, car_clip: Path, name: str) -> None:
    video = tmp_path / "a" / "b" / "video"
    video.mkdir(parents=True)

    line = one_error_line(vidpipe("run", str(car_clip), str(car_clip), "--name", name, "--name", "ok",
                                  "--video", str(video), "--out", str(video / "r.jsonl")))  # fmt: skip

    assert "sources[0].name" in line and "letters, digits" in line
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert not Path("/tmp/vidpipe-evil.mp4").exists()


def test_a_nul_byte_in_a_name_from_a_config_file(tmp_path: Path, car_clip: Path) -> None:
    config = tmp_path / "nul.yaml"
    config.write_text(f'sources:\n  - url: {car_clip}\n    name: "cam\\0x"\n')

    line = one_error_line(vidpipe("run", "--config", str(config), "--quiet"))

    assert "sources[0].name = 'cam\\x00x'" in line


def test_names_derived_from_odd_paths_stay_inside_the_video_dir(tmp_path: Path, car_clip: Path) -> None:
    odd = tmp_path / "in" / "[red]x[bold] my clip.mp4"
    odd.parent.mkdir()
    odd.symlink_to(car_clip)
    video = tmp_path / "video"

    proc = vidpipe("run", str(odd), str(car_clip), str(car_clip), "--max-frames", "3", "--video", str(video),
                   "--out", str(tmp_path / "r.jsonl"))  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in video.iterdir()) == ["_red_x_bold_my_clip.mp4", "car-detection-2.mp4",
                                                       "car-detection.mp4"]  # fmt: skip
    assert "_red_x_bold_my_clip" in proc.stdout  # the summary table


def test_the_summary_table_shows_markup_in_a_name_as_text() -> None:
    console = Console(file=io.StringIO(), width=120)
    summary = RunSummary({"[/x]": SourceLedger(decoded=1, ok=1)}, 1.0, None, None, error="rtsp://a:pw@h/x: gone")

    print_summary(summary, console)

    assert "[/x]" in console.file.getvalue()


@pytest.mark.parametrize(("flags", "field"), [(["--deadline-ms", "1e13"], "deadline_ms"),
                                              (["--threads", "100000"], "model.intra_op_threads")])  # fmt: skip
def test_huge_values_are_one_line_and_exit_2(flags: list[str], field: str) -> None:
    assert field in one_error_line(vidpipe("run", "--quiet", *flags))
