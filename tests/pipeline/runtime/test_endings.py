"""How a run ends, through the CLI in real processes: signals at any moment, a second signal,
hung inference calls, and two runs aimed at one output. (Failed writes: tests/pipeline/sinks/test_write_failures.py.)"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from tests.cli_run import VIDPIPE, read_jsonl, start, vidpipe_run

SIGCGT_SIGTERM = 1 << (signal.SIGTERM - 1)


def wait_for_handlers(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Until the process catches SIGTERM (Python's default does not): vidpipe's handlers are in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except FileNotFoundError:
            return
        caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
        if caught & SIGCGT_SIGTERM:
            return
        time.sleep(0.002)
    raise AssertionError("vidpipe never installed its signal handlers")


def frames_in(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def assert_ended_whole(out: Path, video: Path, old: str, stdout: str) -> int:
    """The JSONL (or the file it replaced, untouched), the video and the summary agree; returns frames decoded."""
    assert "frames " in stdout  # the summary table, every time
    if out.read_text() == old:  # stopped during start-up: nothing written, nothing emptied
        assert "interrupted during start-up" in stdout
        assert not video.exists()
        decoded = 0
    else:
        records = read_jsonl(out)
        summary = records[-1]
        assert summary["type"] == "summary" and summary["balanced"] is True, summary
        decoded = summary["frames"]
        frames = [r for r in records if r["type"] == "frame"]
        assert [r["seq"] for r in frames] == list(range(decoded))  # every decoded frame, once, in order
        assert all(r["status"] == "ok" or r["reason"] == "shutdown" for r in frames)
        if decoded:
            assert frames_in(video) == decoded  # finalised: PyAV opens it and finds every frame
            assert summary["outputs"]["video"]["frames"] == decoded
        else:
            assert not video.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [out.name] + ([video.name] if video.exists() else [])
    ), "a temporary file was left behind"
    return decoded


def frame_lines(out: Path) -> int:
    return out.read_text().count('"type":"frame"')


def summary_written(out: Path) -> bool:
    text = out.read_text()
    try:
        return text.endswith("\n") and json.loads(text.splitlines()[-1])["type"] == "summary" and "from" not in text
    except ValueError:
        return False


def test_a_signal_at_any_moment_ends_the_run_whole(tmp_path: Path, car_clip: Path) -> None:
    """Seeded moments over a run's whole life, by turns: start-up (a delay after the handlers are
    in), steady state and drain (after k of the 40 results), and the end (just after the last
    result: summary, video finalisation, exit). SIGINT and SIGTERM alternate."""
    args = [str(car_clip), "--max-frames", "40", "--batch", "1"]
    rng = random.Random(14)
    delivered, attempts, phases = 0, 0, {"start-up": 0, "running": 0}
    while delivered < 30:
        attempts += 1
        # A signal aimed at the very end often comes after the process is gone (it is then not
        # counted), more so on a loaded machine: a generous cap, only to end a run-away loop.
        assert attempts <= 90, f"only {delivered} of {attempts} signals came before the run ended"
        folder = tmp_path / f"run{attempts}"
        folder.mkdir()
        out, video = folder / "out.jsonl", folder / "out.mp4"
        old = '{"type": "summary", "from": "an earlier run"}\n'
        out.write_text(old)
        sig = (signal.SIGINT, signal.SIGTERM)[attempts % 2]
        proc = start("run", "--quiet", *args, "--out", str(out), "--video", str(video))
        wait_for_handlers(proc)
        kind = attempts % 3
        if kind == 0:
            time.sleep(rng.uniform(0, 1.5))
        else:
            results = rng.randint(1, 39) if kind == 1 else 40
            while proc.poll() is None and frame_lines(out) < results:
                time.sleep(0.001)
            time.sleep(0 if kind == 1 else rng.uniform(0, 0.3))
        # Once everything is written the process exits 0; the kernel can take a few ms to end it,
        # and a signal then comes too late to count: only then may a signalled run exit 0.
        written = summary_written(out)
        sent = proc.poll() is None
        if sent:
            proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
        assert "Traceback" not in stderr, stderr
        decoded = assert_ended_whole(out, video, old, stdout)
        if not sent or (proc.returncode == 0 and written):
            assert proc.returncode == 0, stderr
            continue
        delivered += 1
        assert proc.returncode == 128 + sig, (attempts, kind, decoded, proc.returncode, stderr)
        phases["start-up" if decoded == 0 else "running"] += 1
    assert phases["running"] >= 10 and phases["start-up"] >= 3, phases


def test_second_signal_ends_the_process_within_a_second_despite_hung_calls(tmp_path: Path, car_clip: Path) -> None:
    out = tmp_path / "hung.jsonl"
    proc = start("run", "--quiet", str(car_clip), "--faults", "hang_rate=0.3,hang_s=60,seed=2", "--out", str(out))
    deadline = time.monotonic() + 60
    while not (out.exists() and len(out.read_text().splitlines()) >= 5):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no results within 60 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    second = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - second

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert took < 1.5, f"{took:.1f} s after the second Ctrl-C"  # hung calls would hold it 60 s
    lines = out.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # whole lines only, whatever was cut short
    frames = [json.loads(line) for line in lines if '"type":"frame"' in line]
    assert [r["seq"] for r in frames] == list(range(len(frames)))


def test_abandoned_hung_calls_do_not_keep_the_process_alive(tmp_path: Path, car_clip: Path) -> None:
    """Issue 17: a call hung for 60 s is abandoned; the process ends once the summary is written."""
    out = tmp_path / "hung.jsonl"
    began = time.monotonic()
    proc = vidpipe_run(
        str(car_clip), "--max-frames", "30", "--faults", "hang_rate=0.3,hang_s=60,seed=2", "--out", str(out)
    )
    took = time.monotonic() - began

    assert proc.returncode == 0, proc.stderr
    summary = read_jsonl(out)[-1]
    assert summary["type"] == "summary" and summary["balanced"] is True and summary["frames"] == 30
    hung = summary["inference"]["abandoned_live"]
    assert hung >= 1  # the seed hangs calls; they are still running when the summary is written
    assert f"{hung} hung inference call(s) were abandoned" in proc.stderr
    assert took < 45, f"the process outlived its summary by waiting on hung calls ({took:.0f} s)"


def test_two_runs_on_one_output_the_second_exits_2_naming_the_first(tmp_path: Path, car_clip: Path) -> None:
    out = tmp_path / "shared.jsonl"
    first = start("run", "--quiet", str(car_clip), "--realtime", "--max-frames", "60", "--out", str(out))
    deadline = time.monotonic() + 60
    while not (out.exists() and out.stat().st_size > 0):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = vidpipe_run(str(car_clip), "--max-frames", "5", "--out", str(out))
    first.communicate(timeout=120)

    assert second.returncode == 2
    assert "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines() == [
        f"vidpipe: error: output {out} is being written by another vidpipe run (PID {first.pid}); "
        "wait for it to end or choose another path with --out"
    ]
    assert first.returncode == 0
    records = read_jsonl(out)
    assert [r["seq"] for r in records if r["type"] == "frame"] == list(range(60))
    assert records[-1]["type"] == "summary" and records[-1]["balanced"] is True


def test_jsonl_is_created_private(tmp_path: Path, tiny_clip: Path) -> None:
    out = tmp_path / "private.jsonl"
    proc = vidpipe_run(str(tiny_clip), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o600


def test_file_mode_is_configurable_and_checked(tmp_path: Path, tiny_clip: Path) -> None:
    out = tmp_path / "shared.jsonl"
    run = [*VIDPIPE, "run", "--quiet", str(tiny_clip), "--out", str(out)]
    options = {"capture_output": True, "text": True, "timeout": 120, "preexec_fn": lambda: os.umask(0o022)}
    proc = subprocess.run([*run, "--file-mode", "640"], **options)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o640
    config = tmp_path / "modes.yaml"
    config.write_text("outputs:\n  file_mode: 0o644\n")
    out.unlink()
    proc = subprocess.run([*run, "--config", str(config)], **options)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o644
    for flag, value in (("--file-mode", "999"), ("--file-mode", "440"), ("--dir-mode", "600")):
        bad = subprocess.run([*run, flag, value], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        (line,) = bad.stderr.strip().splitlines()
        assert f"outputs.{flag[2:].replace('-', '_')} = '{value}'" in line, line


def test_help_imports_nothing_heavy() -> None:
    """`vidpipe --help` stays quick: no numpy, PyAV, ONNX Runtime, OpenCV, rich or pydantic."""
    code = (
        "import sys\n"
        "from pipeline.cli.main import main\n"
        "assert main(['--help']) == 0\n"
        "heavy = {'numpy', 'av', 'onnxruntime', 'onnx', 'cv2', 'rich', 'pydantic', 'redis'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[3], env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "usage: vidpipe" in proc.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_leaves_an_existing_output_as_it_was(
    tmp_path: Path, car_clip: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "earlier.jsonl"
    out.write_text('{"type": "summary"}\n')
    proc = start("run", "--quiet", str(car_clip), "--out", str(out))
    wait_for_handlers(proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    assert out.read_text() == '{"type": "summary"}\n'
    assert "interrupted during start-up" in stdout


def test_two_runs_on_one_spool_directory_the_second_exits_2_naming_the_first(
    tmp_path: Path, car_clip: Path, redis_server
) -> None:
    """The Redis spool directory is one run's too (here the default, .vidpipe-spool in the cwd)."""
    url, client = redis_server.url, redis_server.client()
    command = [str(car_clip), "--redis", url]
    first = start("run", "--quiet", *command, "--realtime", "--max-frames", "40", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not client.xlen("vidpipe:results:car-detection"):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    # Another source name: the streams do not clash (that is refused too), only the spool directory.
    second = vidpipe_run(*command, "--max-frames", "5", "--name", "other", cwd=tmp_path)
    first.communicate(timeout=120)

    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"vidpipe: error: outputs.redis.spool_dir .vidpipe-spool is in use by another vidpipe run (PID {first.pid}); "
        "give each run its own outputs.redis.spool_dir"
    ]
    assert first.returncode == 0
    assert (tmp_path / ".vidpipe-spool").stat().st_mode & 0o777 == 0o700


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_videos_and_their_directories_are_created_private(tmp_path: Path, tiny_clip: Path, umask: int) -> None:
    """--video files get outputs.file_mode (0600) and the directories vidpipe makes for them
    outputs.dir_mode (0700), whatever the umask lets through."""
    run = [*VIDPIPE, "run", "--quiet", "--max-frames", "5"]
    options = {"capture_output": True, "text": True, "timeout": 120, "preexec_fn": lambda: os.umask(umask)}
    two = subprocess.run([*run, str(tiny_clip), str(tiny_clip), "--name", "a", "--name", "b",
                          "--video", str(tmp_path / "videos" / "two")], **options)  # fmt: skip
    assert two.returncode == 0, two.stderr
    one = subprocess.run([*run, str(tiny_clip), "--video", str(tmp_path / "single" / "one.mp4")], **options)
    assert one.returncode == 0, one.stderr
    assert _modes(tmp_path) == {"single": 0o700, "single/one.mp4": 0o600, "videos": 0o700, "videos/two": 0o700,
                                "videos/two/a.mp4": 0o600, "videos/two/b.mp4": 0o600}  # fmt: skip


def test_a_run_that_fails_at_start_leaves_no_video_file(tmp_path: Path, tiny_clip: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    proc = vidpipe_run(str(tiny_clip), str(tiny_clip), "--video", str(videos),
                       "--out", str(tmp_path / "missing" / "r.jsonl"))  # fmt: skip
    assert proc.returncode == 2 and "missing" in proc.stderr, proc.stderr
    assert list(videos.iterdir()) == []
