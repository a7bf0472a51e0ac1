"""The batch on the CPU is chosen by measurement (issue 18, 3): the rule on given figures, and
real runs that report the choice with the figures behind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.api import run
from pipeline.config import build_config
from pipeline.runtime.sizing import CPU_CANDIDATE_BATCHES, choose_batch, size_run
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
    assert choose_batch({batch: ms / 1000 for batch, ms in call_ms.items()}, overhead_s=0.0) == chosen


@pytest.mark.parametrize(
    ("call_ms", "chosen"),
    [
        ({1: 1.6, 2: 3.6, 4: 8.0}, 4),  # a tiny model: the pipeline's cost per batch makes batching pay
        ({1: 48.0, 2: 96.0, 4: 200.0}, 1),  # a detector-sized one: it does not
        ({1: 9.0, 2: 17.5, 4: 35.0}, 1),  # 13% faster with the overhead counted: not clearly faster
    ],
)
def test_the_pipelines_cost_per_batch_counts(call_ms: dict, chosen: int) -> None:
    assert choose_batch({batch: ms / 1000 for batch, ms in call_ms.items()}, overhead_s=0.0015) == chosen


def test_the_cpu_measures_unless_the_batch_is_set() -> None:
    _, sizing = size_run(build_config({}), sources=1)
    assert (sizing.batch_rule, sizing.max_batch, sizing.batch_shapes) == ("measure", 1, (1,))
    assert sizing.batch_candidates == CPU_CANDIDATE_BATCHES == (2, 4)
    chosen = sizing.measured({1: 0.010, 2: 0.021, 4: 0.030})
    assert (chosen.batch_rule, chosen.max_batch, chosen.batch_shapes) == ("measured", 4, (4,))
    assert chosen.batch_ms_per_frame == {"1": 10.0, "2": 10.5, "4": 7.5} and chosen.batch_candidates == (2, 4)
    assert sizing.measured({1: 0.010, 2: 0.020, 4: 0.040}).batch_shapes == (1,)
    assert sizing.measured({1: 0.010}).max_batch == 1  # the candidates' calls failed: batch 1
    assert sizing.measured({4: 0.040}).batch_shapes == (4,)  # a model with a fixed batch of 4
    sized, sizing = size_run(build_config({"infer": {"max_batch": 2}}), sources=1)
    assert (sizing.batch_rule, sizing.max_batch, sizing.batch_shapes) == ("config", 2, (1, 2))
    assert sizing.measured({1: 0.010, 4: 0.001}) is sizing  # a batch that was set stays set
    assert size_run(sized, sources=1)[1] == sizing  # sizing a sized config changes nothing


def assert_choice_matches_its_figures(sizing: dict, shapes: dict) -> None:
    figures = {int(batch): ms * int(batch) / 1000 for batch, ms in sizing["batch_ms_per_frame"].items()}
    assert sorted(figures) == [1, *CPU_CANDIDATE_BATCHES]
    assert sizing["batch_rule"] == "measured"
    assert sizing["max_batch"] == choose_batch(figures)
    assert sizing["batch_shapes"] == [sizing["max_batch"]]
    # Only the chosen batch ran frames after the choice (the others only their measuring call).
    assert {s for s, times in shapes.items() if times["p50_ms"] is not None} == {str(sizing["max_batch"])}


def test_a_real_run_reports_its_measured_choice(car_clip: Path, bench_model: Path) -> None:
    for model in (None, bench_model):  # the tiny default model, and a detector-sized one
        sink = CollectSink()
        config = {"sources": [{"url": str(car_clip), "name": "cam"}], "max_frames": 40}
        summary = run(build_config({**config, "model": {"path": str(model)} if model else {}}), sinks=[sink])
        assert summary.balanced and summary.ok == 40 and sink.seqs("cam") == list(range(40))
        assert_choice_matches_its_figures(summary.sizing, summary.inference["shapes"])
