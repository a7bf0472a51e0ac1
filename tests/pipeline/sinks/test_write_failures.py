"""A failed write is a user error: through the CLI, each way an output can fail ends the run with
exit 2 and one line, the summary on stderr (and in every output that still works), the results
written before the failure kept whole, and no traceback."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_run import start, vidpipe_run

CAR_FRAMES = 377


def assert_output_failed(proc: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit 2, one error line naming the output and the OS error, the summary on stderr."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vidpipe: error: ")]
    assert len(errors) == 1, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error" in line.lower() and "vidpipe: error" not in line] == []
    for name in names:
        assert name in errors[0], errors[0]
    assert "ledger" in proc.stderr and "balanced" in proc.stderr  # the summary table
    return errors[0]


def assert_whole_prefix(path: Path) -> list[dict]:
    """Every line whole JSON, frames 0..k-1 in order: nothing written before the failure was lost."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    frames = [r for r in records if r["type"] == "frame"]
    assert [r["seq"] for r in frames] == list(range(len(frames)))
    return records


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, mounted for the test (needs root or CAP_SYS_ADMIN)."""
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_out_on_dev_full(car_clip: Path) -> None:
    proc = vidpipe_run(str(car_clip), "--out", "/dev/full", timeout=180)
    assert_output_failed(proc, "/dev/full", "No space left on device", "--out")
    assert "frames " in proc.stderr


def test_out_on_a_full_tmpfs_keeps_whole_lines_and_stops_decoding(car_clip: Path, small_tmpfs: Path) -> None:
    out = small_tmpfs / "results.jsonl"
    proc = vidpipe_run(str(car_clip), "--out", str(out), timeout=180)

    assert_output_failed(proc, str(out), "No space left on device", "free space")
    records = assert_whole_prefix(out)
    written = len([r for r in records if r["type"] == "frame"])
    assert written > 100  # 64 KiB holds a couple of hundred results
    # The run stopped reading once the write failed: the summary on stderr counts fewer frames.
    decoded = int(next(line for line in proc.stderr.splitlines() if line.startswith("frames ")).split()[1])
    assert written <= decoded < CAR_FRAMES


def test_out_over_the_file_size_limit(tmp_path: Path, car_clip: Path) -> None:
    out = tmp_path / "limited.jsonl"
    limit = 64 * 1024

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = vidpipe_run(str(car_clip), "--out", str(out), preexec_fn=limit_file_size, timeout=180)

    assert_output_failed(proc, str(out), "File too large", "ulimit -f")
    assert_whole_prefix(out)
    assert 0 < out.stat().st_size <= limit


def test_video_on_a_full_disk_keeps_the_jsonl_and_its_summary(
    tmp_path: Path, car_clip: Path, small_tmpfs: Path
) -> None:
    out, video = tmp_path / "results.jsonl", small_tmpfs / "annotated.mp4"
    proc = vidpipe_run(str(car_clip), "--out", str(out), "--video", str(video), timeout=180)

    line = assert_output_failed(proc, str(video), "No space left on device", "--video")
    records = assert_whole_prefix(out)
    summary = records[-1]
    assert summary["type"] == "summary" and summary["balanced"] is True
    assert summary["error"] == line.removeprefix("vidpipe: error: ")
    assert summary["frames"] < CAR_FRAMES  # stopped decoding
    assert sorted(os.listdir(small_tmpfs)) == []  # no half-written video left behind


def test_out_to_a_closed_pipe(car_clip: Path) -> None:
    """`vidpipe run --out /dev/stdout | head -c 1`: the reader goes away."""
    reader = start("run", "--quiet", str(car_clip), "--out", "/dev/stdout")
    assert reader.stdout is not None
    reader.stdout.read(1)
    reader.stdout.close()
    stderr = reader.stderr.read() if reader.stderr else ""
    reader.wait(timeout=180)
    proc = subprocess.CompletedProcess(reader.args, reader.returncode, "", stderr)

    assert_output_failed(proc, "/dev/stdout", "Broken pipe")

