"""The batch on the CPU is chosen by measurement (issue 18, 3): the rule on given figures, and
real runs that report the choice with the figures behind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.api import run
from pipeline.config import build_config
from pipeline.runtime.sizing import CPU_CANDIDATE_SHAPES, choose_batch, size_run
from tests.sinks import CollectSink


@pytest.mark.parametrize(
    ("call_ms", "chosen"),
    [
        ({1: 10.0, 2: 20.0, 4: 40.0}, 1),  # no faster per frame: batch 1
        ({1: 10.0, 2: 18.0, 4: 36.0}, 1),  # 10% faster is not clearly faster
        ({1: 10.0, 2: 17.0, 4: 40.0}, 2),  # 15% faster at 2, no gain at 4
        ({1: 10.0, 2: 16.0, 4: 24.0}, 4),  # the fastest per frame of those clearly faster
        ({1: 10.0, 2: 12.0, 4: 24.0}, 2),  # equal per frame at 2 and 4: the smaller batch
        ({2: 12.0, 4: 24.0}, 1),  # batch 1 not measured: nothing to compare against
        ({1: 10.0}, 1),
    ],
)
def test_a_larger_batch_is_chosen_only_when_clearly_faster_per_frame(call_ms: dict, chosen: int) -> None:
    assert choose_batch({batch: ms / 1000 for batch, ms in call_ms.items()}) == chosen


def test_the_cpu_measures_unless_the_batch_is_set() -> None:
    _, sizing = size_run(build_config({}), sources=1)
    assert (sizing.batch_rule, sizing.batch_shapes, sizing.max_batch) == ("measure", CPU_CANDIDATE_SHAPES, 4)
    chosen = sizing.measured({1: 0.010, 2: 0.021, 4: 0.030})
    assert (chosen.batch_rule, chosen.max_batch, chosen.batch_shapes) == ("measured", 4, (1, 2, 4))
    assert chosen.batch_ms_per_frame == {"1": 10.0, "2": 10.5, "4": 7.5}
    assert sizing.measured({1: 0.010, 2: 0.020, 4: 0.040}).batch_shapes == (1,)
    sized, sizing = size_run(build_config({"infer": {"max_batch": 2}}), sources=1)
    assert (sizing.batch_rule, sizing.max_batch, sizing.batch_shapes) == ("config", 2, (1, 2))
    assert sizing.measured({1: 0.010, 4: 0.001}) is sizing  # a batch that was set stays set
    assert size_run(sized, sources=1)[1] == sizing  # sizing a sized config changes nothing


def assert_choice_matches_its_figures(sizing: dict, shapes: dict) -> None:
    figures = {int(batch): ms * int(batch) / 1000 for batch, ms in sizing["batch_ms_per_frame"].items()}
    assert sorted(figures) == list(CPU_CANDIDATE_SHAPES)
    assert sizing["batch_rule"] == "measured"
    assert sizing["max_batch"] == choose_batch(figures)
    assert sizing["batch_shapes"] == [s for s in CPU_CANDIDATE_SHAPES if s <= sizing["max_batch"]]
    # Only the chosen batch shapes ran after the choice (larger ones only at warm-up: no p50).
    assert all(shapes[str(s)]["p50_ms"] is None for s in CPU_CANDIDATE_SHAPES if s > sizing["max_batch"])


def test_a_real_run_reports_its_measured_choice(car_clip: Path, bench_model: Path) -> None:
    for model in (None, bench_model):  # the tiny default model, and a detector-sized one
        sink = CollectSink()
        config = {"sources": [{"url": str(car_clip), "name": "cam"}], "max_frames": 40}
        summary = run(build_config({**config, "model": {"path": str(model)} if model else {}}), sinks=[sink])
        assert summary.balanced and summary.ok == 40 and sink.seqs("cam") == list(range(40))
        assert_choice_matches_its_figures(summary.sizing, summary.inference["shapes"])
