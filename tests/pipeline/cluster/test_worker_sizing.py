"""How many cluster workers a Ray cluster's resources hold, and what each one reserves."""

from __future__ import annotations

import pytest

from pipeline.cluster.client import worker_options
from pipeline.cluster.worker import PipelineWorker
from pipeline.config import build_config
from pipeline.runtime.sizing import usable_cpus
from tests.cli_run import vidpipe


@pytest.mark.parametrize(
    "resources, worker_cpus, per_gpu, want",
    [
        ({"CPU": 32.0, "GPU": 2.0}, 16.0, 1, (2, {"num_gpus": 1.0, "num_cpus": 16.0})),
        # Two processes per GPU, each with half of it: how one GPU is fed past one process's GIL.
        ({"CPU": 32.0, "GPU": 2.0}, 8.0, 2, (4, {"num_gpus": 0.5, "num_cpus": 8.0})),
        ({"CPU": 16.0, "GPU": 1.0}, 4.0, 4, (4, {"num_gpus": 0.25, "num_cpus": 4.0})),
        ({"CPU": 6.0}, 2.0, 2, (3, {"num_cpus": 2.0})),  # CPU nodes: per --worker-cpus only
        ({"CPU": 1.0}, 2.0, 1, (1, {"num_cpus": 2.0})),
    ],
)
def test_workers_are_one_per_gpu_share_or_per_worker_cpus(resources, worker_cpus, per_gpu, want) -> None:
    assert worker_options(resources, worker_cpus, per_gpu) == want


def test_a_workers_per_gpu_out_of_range_is_one_line_and_exit_2() -> None:
    proc = vidpipe("cluster", "--workers-per-gpu", "0", "--redis", "redis://127.0.0.1:1/0", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "vidpipe: error: --workers-per-gpu 0: give 1 to 16 workers per GPU"


@pytest.mark.skipif(usable_cpus() < 2, reason="one CPU: the sized threads equal the fallback of 1")
def test_a_cluster_workers_engine_is_sized_for_its_host_as_a_single_runs_is(tmp_path) -> None:
    """The worker loads its model before any source (pipeline/runtime/assemble.py): it used to
    load it from the unsized config, and ONNX Runtime ran on 1 thread where a run uses the CPUs."""
    redis = {"url": "redis://127.0.0.1:1/0", "spool_dir": str(tmp_path)}  # never reached: no source starts
    config = build_config({"infer": {"contexts": 1}, "outputs": {"redis": redis}})
    worker = PipelineWorker("w", config.model_dump_json())
    model = worker._model_once()
    try:
        assert worker.config.model.intra_op_threads == usable_cpus()
        assert model.engine._session.get_session_options().intra_op_num_threads == usable_cpus()
    finally:
        model.engine.close()
