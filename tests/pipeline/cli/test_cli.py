"""`vidpipe run` as a user runs it: a real process, its exit code, stderr and JSONL output."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.cli_run import read_jsonl, start, vidpipe_run
from tests.clips import count_frames
from tests.models import build_bad_layout_model, build_non_image_model, build_yolov8_model


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *names: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vidpipe: error: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


def test_no_video_runs_the_bundled_sample(tmp_path: Path) -> None:
    out = tmp_path / "sample.jsonl"
    proc = vidpipe_run("--out", str(out))

    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    records = read_jsonl(out)
    frames = [r for r in records if r["type"] == "frame"]
    assert [(r["source"], r["seq"]) for r in frames] == [("sample", i) for i in range(200)]
    events = [r for r in records if r["type"] not in ("frame", "summary")]
    assert [(e["type"], e["frames"]) for e in events] == [("source_end", 200)]
    summary = records[-1]
    assert summary["type"] == "summary" and summary["balanced"] is True
    assert summary["frames"] == 200 and summary["error"] is None
    assert len(records) == 200 + 1 + 1
    assert "balanced" in proc.stdout  # the summary table


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    build_non_image_model(folder / "vector.onnx")
    build_bad_layout_model(folder / "bad_layout.onnx")
    (folder / "typo.yaml").write_text("deadline_ms: 500\ninfer:\n  max_bach: 3\n")
    return folder


# Each case: the arguments that make the run fail, and what the error line must name.
BAD_INPUTS: dict[str, Callable[[SimpleNamespace], tuple[list, list]]] = {
    "missing file": lambda p: ([p.tmp / "missing.mp4"], [p.tmp / "missing.mp4", "no such file"]),
    "not a video": lambda p: ([p.noise], [p.noise, "not a video"]),
    "directory": lambda p: ([p.tmp], [p.tmp, "is a directory"]),
    "missing model": lambda p: (
        ["--model", p.tmp / "none.onnx"],
        [p.tmp / "none.onnx", "no such file"],
    ),
    "non-image model": lambda p: (
        ["--model", p.models / "vector.onnx"],
        ["vector.onnx", "[1, 10]"],
    ),
    "no decoder fits": lambda p: (["--model", p.models / "bad_layout.onnx"], ["layout", "7, 7"]),
    "output dir missing": lambda p: (
        ["--out", p.tmp / "no" / "x.jsonl"],
        [p.tmp / "no" / "x.jsonl"],
    ),
    "output is a directory": lambda p: (["--out", p.tmp], [p.tmp]),
    "output in /proc": lambda p: (["--out", "/proc/x.jsonl"], ["/proc/x.jsonl"]),
    "bad --faults": lambda p: (["--faults", "error_rate"], ["--faults", "error_rate"]),
    "unknown fault": lambda p: (["--faults", "eror_rate=0.1"], ["faults.eror_rate"]),
    "--batch 0": lambda p: (["--batch", "0"], ["infer.max_batch", "0"]),
    "config typo": lambda p: (
        ["--config", p.models / "typo.yaml"],
        ["typo.yaml", "infer.max_bach"],
    ),
    "unknown class": lambda p: (["--classes", "zebra"], ["zebra"]),
    "--name without a video": lambda p: (["--name", "gate"], ["--name", "VIDEO --name NAME"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(
    case: str, tmp_path: Path, not_video: Path, bad_models: Path
) -> None:
    paths = SimpleNamespace(tmp=tmp_path, noise=not_video, models=bad_models)
    arguments, names = BAD_INPUTS[case](paths)
    # --out comes first so a case's own --out overrides it.
    proc = vidpipe_run("--out", str(tmp_path / "out.jsonl"), *map(str, arguments))
    assert_one_error_line(proc, *map(str, names))


def test_model_no_decoder_fits_names_the_model(tmp_path: Path, bad_models: Path) -> None:
    proc = vidpipe_run(
        "--model", str(bad_models / "bad_layout.onnx"), "--out", str(tmp_path / "o.jsonl")
    )
    assert_one_error_line(proc, "bad_layout.onnx")


def test_rejected_run_leaves_an_existing_output_alone(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text('{"type": "summary"}\n')
    proc = vidpipe_run(str(tmp_path / "missing.mp4"), "--out", str(out))
    assert_one_error_line(proc, "missing.mp4")
    assert out.read_text() == '{"type": "summary"}\n'


def test_truncated_video_exits_2_after_publishing_every_decoded_frame(
    tmp_path: Path, truncated_car_clip: Path
) -> None:
    out = tmp_path / "truncated.jsonl"
    proc = vidpipe_run(str(truncated_car_clip), "--out", str(out))

    line = assert_one_error_line(proc, str(truncated_car_clip), "truncated")
    decoded = count_frames(truncated_car_clip)
    assert f"{decoded} of its 377 frames" in line
    records = read_jsonl(out)
    frames = [r for r in records if r["type"] == "frame"]
    assert [r["seq"] for r in frames] == list(range(decoded))
    assert all(r["status"] == "ok" for r in frames)
    damage = [r for r in records if r["type"] == "decode_error"]
    assert [(d["error"], d["fatal"], d["after_seq"]) for d in damage] == [
        ("truncated", True, decoded - 1)
    ]
    summary = records[-1]
    assert summary["type"] == "summary" and summary["balanced"] is True
    assert summary["frames"] == decoded and "truncated" in summary["error"]


def test_classes_flag_filters_labels(tmp_path: Path, odd_clip: Path) -> None:
    model = build_yolov8_model(tmp_path / "yolov8.onnx")
    out = tmp_path / "dogs.jsonl"
    proc = vidpipe_run(
        str(odd_clip), "--model", str(model), "--classes", "dog, bicycle", "--out", str(out)
    )

    assert proc.returncode == 0, proc.stderr
    frames = [r for r in read_jsonl(out) if r["type"] == "frame"]
    assert len(frames) == count_frames(odd_clip)
    assert all([d["label"] for d in r["detections"]] == ["dog", "bicycle"] for r in frames)


def interrupt(out: Path, video: Path, signals: int) -> tuple[int, str, list[dict]]:
    """Start `vidpipe run`, send SIGINT `signals` times once results flow.

    Returns the exit code, stderr and the JSONL records.
    """
    proc = start("run", "--quiet", str(video), "--out", str(out))
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and len(out.read_text().splitlines()) >= 20):
            assert proc.poll() is None, "vidpipe ended before it was interrupted"
            assert time.monotonic() < deadline, "no results within 60 s"
            time.sleep(0.05)
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.01)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, stderr, read_jsonl(out)


def assert_every_decoded_frame_has_a_result(records: list[dict], source: str, total: int) -> None:
    summary = records[-1]
    assert summary["type"] == "summary" and summary["balanced"] is True
    ledger = summary["sources"][source]
    decoded = ledger["decoded"]
    assert 20 <= decoded < total
    assert set(ledger["failed"]) <= {"shutdown"}
    frames = [r for r in records if r["type"] == "frame"]
    assert [r["seq"] for r in frames] == list(range(decoded))
    assert all(r["status"] == "ok" or r["reason"] == "shutdown" for r in frames)
    assert sum(r["status"] == "ok" for r in frames) == ledger["ok"]
    ends = [r for r in records if r["type"] == "source_end"]
    assert [(e["after_seq"], e["frames"]) for e in ends] == [(decoded - 1, decoded)]


@pytest.mark.parametrize("signals", [1, 2], ids=["one SIGINT drains", "a second SIGINT aborts"])
def test_sigint_stops_with_every_frame_accounted_for(tmp_path: Path, person_clip: Path, signals: int) -> None:
    """One Ctrl-C stops reading and finishes the frames in flight; a second aborts them as
    failed/shutdown. Either way the exit code says it was interrupted."""
    code, stderr, records = interrupt(tmp_path / "person.jsonl", person_clip, signals=signals)

    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert_every_decoded_frame_has_a_result(records, "one-by-one-person-detection", 1394)
