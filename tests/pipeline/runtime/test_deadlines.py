"""Every frame of a fault-free file run ends ok, whatever the model's speed or the machine's
load; hangs are told from slow calls by measurement; a batch job hears about failed frames.

These run beside a CPU hog (one busy process per core) with the detector-sized model from
samples/bench_model.py: the regime in which deadlines used to throw away finished work.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.api import run
from pipeline.config import build_config
from tests.cli_run import read_jsonl, vidpipe, vidpipe_run
from tests.sinks import CollectSink


def frame_records(path: Path) -> list[dict]:
    return [r for r in read_jsonl(path) if r["type"] == "frame"]


def summary_record(path: Path) -> dict:
    return [r for r in read_jsonl(path) if r["type"] == "summary"][-1]


def assert_fault_free(summary: dict) -> None:
    """No hang machinery fired: nothing timed out, was abandoned or reloaded."""
    inference = summary["inference"]
    assert (inference["timeouts"], inference["abandoned"], inference["engine_reloads"]) == (0, 0, 0), inference


@pytest.mark.parametrize("flags", [[], ["--deadline-ms", "1000", "--batch", "4"]], ids=["defaults", "readme-flags"])
def test_the_bench_model_on_a_busy_machine_ends_every_frame_ok(
    tmp_path: Path, cpu_hog: int, bench_model: Path, car_clip: Path, person_clip: Path, flags: list[str]
) -> None:
    out = tmp_path / "out.jsonl"
    done = vidpipe_run(str(car_clip), str(person_clip), "--model", str(bench_model), "--max-frames", "30",
                       "--out", str(out), *flags, timeout=600)
    assert done.returncode == 0, done.stderr
    frames = frame_records(out)
    for source in ("car-detection", "one-by-one-person-detection"):
        mine = [r for r in frames if r["source"] == source]
        assert [r["seq"] for r in mine] == list(range(30)), source
        assert all(r["status"] == "ok" for r in mine), [r for r in mine if r["status"] != "ok"][:3]
    summary = summary_record(out)
    assert summary["balanced"] and summary["ok"] == 60
    assert_fault_free(summary)


def test_sixteen_file_sources_at_default_flags_end_every_frame_ok(cpu_hog: int, car_clip: Path) -> None:
    sink = CollectSink()
    sources = [{"url": str(car_clip), "name": f"cam{i}"} for i in range(16)]
    summary = run(build_config({"sources": sources, "max_frames": 40}), sinks=[sink])
    assert summary.balanced
    for i in range(16):
        assert sink.seqs(f"cam{i}") == list(range(40))
    assert summary.ok == 16 * 40, sink.outcomes()
    assert (summary.inference["timeouts"], summary.inference["abandoned"]) == (0, 0)
    assert summary.inference["engine_reloads"] == 0


def test_defaults_are_sized_to_the_host_and_reported(tmp_path: Path, car_clip: Path) -> None:
    out = tmp_path / "out.jsonl"
    # --log-level after the command works as before it (the other tests put it before).
    done = vidpipe("run", "--quiet", str(car_clip), "--max-frames", "5", "--out", str(out), "--log-level", "INFO")
    assert done.returncode == 0, done.stderr
    sizing = summary_record(out)["sizing"]
    cpus = len(os.sched_getaffinity(0))
    assert sizing["cpus"] == cpus and sizing["device"] == "cpu"
    assert sizing["intra_op_threads"] == max(1, cpus // sizing["contexts"])
    assert sizing["batch_rule"] == "measured" and sizing["max_batch"] in (1, 2, 4)  # tests/.../test_sizing.py
    assert sizing["batch_shapes"] == [sizing["max_batch"]]
    assert "sized for this host" in done.stderr and "by measurement" in done.stderr
    assert "batch measured at start (1 against 2, 4)" in done.stderr
    # Every auto value stays overridable.
    done = vidpipe_run(str(car_clip), "--max-frames", "5", "--out", str(out), "--threads", "3", "--batch", "6")
    sizing = summary_record(out)["sizing"]
    assert (sizing["intra_op_threads"], sizing["max_batch"], sizing["batch_shapes"]) == (3, 6, [1, 2, 3, 4, 5, 6])
    assert sizing["batch_rule"] == "config" and sizing["batch_ms_per_frame"] == {}
    # Each batch shape was warmed before a context served and measured after.
    assert set(summary_record(out)["inference"]["shapes"]) == {"1", "2", "3", "4", "5", "6"}


def test_frames_that_fail_give_exit_4_and_one_line(tmp_path: Path, car_clip: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = vidpipe_run(str(car_clip), "--max-frames", "40", "--out", str(out), "--max-attempts", "1",
                       "--faults", "error_rate=0.3,seed=4")
    assert done.returncode == 4, done.stderr
    summary = summary_record(out)
    failed = summary["failed"]
    assert failed.get("inference", 0) > 0 and summary["balanced"]
    lines = [line for line in done.stderr.splitlines() if line.startswith("vidpipe:")]
    assert lines == [f"vidpipe: {sum(failed.values())} of 40 frames failed "
                     f"({', '.join(f'{k} {v}' for k, v in sorted(failed.items()))}); see the summary"]
    assert "Traceback" not in done.stderr


def test_a_slow_call_is_not_a_hang(car_clip: Path, cpu_hog: int) -> None:
    # Every call sleeps 150 ms: far slower than the model, but steady. Measured times set the
    # hang timeout, so no context is abandoned and no engine reloaded.
    sink = CollectSink()
    summary = run(build_config({
        "sources": [{"url": str(car_clip), "name": "cam"}], "max_frames": 30, "deadline_ms": 100,
        "faults": {"slow_rate": 1.0, "slow_ms": 150},
    }), sinks=[sink])
    assert sink.seqs("cam") == list(range(30))
    assert summary.ok == 30, sink.outcomes()
    inference = summary.inference
    assert (inference["timeouts"], inference["abandoned"], inference["engine_reloads"]) == (0, 0, 0)
