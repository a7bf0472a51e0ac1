"""The supervised inference worker, with real worker processes, real crashes and the real clip."""

from __future__ import annotations

import functools
import gc
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from engines.errors import InferenceError, ModelError, WorkerBudgetExhausted
from engines.fault_plan import FaultPlan
from engines.faults import FaultyEngine
from engines.onnxruntime import OnnxRuntimeEngine
from engines.process import ProcessEngine
from pipeline.api import run
from pipeline.config import build_config
from pipeline.runtime.assemble import assemble
from pipeline.runtime.context_pool import ContextPool
from pipeline.runtime.infer_stats import InferStats
from pipeline.runtime.model import DEFAULT_MODEL, load_model
from pipeline.runtime.settings import SchedulerSettings
from pipeline.runtime.sources import SourceRun
from stages.bindings import TensorBindings
from stages.decode import VideoDecoder
from stages.types import Reason, Status
from tests.cli_run import vidpipe_run
from tests.models import build_yolov8_model
from tests.sinks import CollectSink

REPO = Path(__file__).resolve().parents[2]
PRELOAD = ("numpy", "onnxruntime", "engines.onnxruntime", "tests.engines.test_process_worker")


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    boxes = [(0, 0.9, 4, 4, 20, 20)]
    return build_yolov8_model(tmp_path / "tiny.onnx", boxes=boxes, input_size=(64, 64), num_classes=2)


def _engine_that_dies_after_its_first_start(marker: Path, model: Path) -> OnnxRuntimeEngine:
    """The first worker builds the engine; every later one dies on start, as on a broken driver."""
    if marker.exists():
        os.kill(os.getpid(), signal.SIGKILL)
    marker.touch()
    return OnnxRuntimeEngine(model)


class _NoReload:
    """A real engine without an in-place reload, as some backends are."""

    def __init__(self, model: Path) -> None:
        self.inner = OnnxRuntimeEngine(model)
        self.name, self.inputs, self.outputs, self.metadata = (
            self.inner.name, self.inner.inputs, self.inner.outputs, self.inner.metadata)  # fmt: skip

    def create_context(self):
        return self.inner.create_context()

    def close(self) -> None:
        self.inner.close()


def test_sticky_errors_and_crashes_restart_the_worker_and_every_frame_gets_one_result(car_clip):
    # Seed 51: the first worker crashes at its 22nd call, the second hits a sticky error at
    # its 19th, the third runs clean far past the end of the clip; so exactly two restarts.
    sink = CollectSink()
    config = {
        "sources": [{"url": str(car_clip), "name": "cam"}],
        # Batches of up to 4, all run at shape 4 (one warm-up call per context): the calls this seed counts.
        "infer": {"isolation": "process", "max_batch": 4, "batch_shapes": [4]},
        "faults": {"sticky_rate": 0.01, "crash_rate": 0.01, "seed": 51},
    }
    summary = run(build_config(config), sinks=[sink])
    assert sink.seqs("cam") == list(range(377))
    assert summary.balanced and summary.error is None
    ok = sum(r.status is Status.OK for r in sink.results)
    assert ok / 377 >= 0.9, sink.outcomes()
    inference = summary.inference
    assert inference["worker_restarts"] == 2
    assert inference["worker_restart_ms_p50"] is not None
    lost = [e for e in sink.events if e.type == "worker_lost"]
    assert {e.details["status"] for e in lost} == {"killed by SIGKILL"}
    assert any("sticky" in e.details["reason"] for e in lost)
    assert [e.type for e in sink.events if e.type == "worker_restarted"] == ["worker_restarted"] * 2


def test_a_worker_that_dies_on_every_start_ends_the_run_with_every_decoded_frame_reported(car_clip, tmp_path):
    config = build_config({
        "sources": [{"url": str(car_clip), "name": "cam"}],
        "infer": {"isolation": "process", "max_restarts": 2},
    })  # fmt: skip
    model = load_model(config.model)
    model.engine.close()
    factory = functools.partial(_engine_that_dies_after_its_first_start, tmp_path / "started", DEFAULT_MODEL)
    model.engine = ProcessEngine(factory, preload=PRELOAD, max_restarts=2)
    model.engine.inject_faults(FaultPlan(crash_rate=0.02, seed=11))  # first crash at call 25: frames flow first
    decoder = VideoDecoder("cam", str(car_clip), config.deadline_ms / 1000)
    sink = CollectSink()
    try:
        summary = assemble(config, [SourceRun(decoder)], model, [sink]).run()
    finally:
        model.engine.close()
    assert summary.error and "restart budget of 2" in summary.error
    assert summary.inference["worker_budget_exhausted"]
    assert summary.inference["worker_start_failures"] == 2
    decoded = summary.sources["cam"].decoded
    assert 0 < decoded
    assert sink.seqs("cam") == list(range(decoded))
    assert summary.balanced
    assert {r.reason for r in sink.results if r.status is Status.FAILED} <= {Reason.INFERENCE, Reason.DEADLINE}
    assert [e.type for e in sink.events].count("worker_budget_exhausted") == 1


def test_the_cli_exits_3_with_one_clear_line_when_the_restart_budget_is_spent(car_clip):
    done = vidpipe_run(
        str(car_clip), "--isolation", "process", "--faults", "crash_rate=1.0", "--max-restarts", "1", cwd=REPO
    )
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vidpipe: error:")]
    assert len(errors) == 1 and "restart budget of 1" in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_memory_and_open_files_stay_flat_across_50_worker_restarts(tiny_model):
    # A budget that never runs out, and a window too short for backoff to build up.
    engine = ProcessEngine(
        functools.partial(OnnxRuntimeEngine, tiny_model), preload=PRELOAD, max_restarts=1000, restart_window_s=0.001
    )
    x = {"images": np.zeros((1, 3, 64, 64), np.float32)}

    def crash_and_recover(times: int) -> None:
        for _ in range(times):
            generation = engine.generation
            os.kill(engine.pid, signal.SIGKILL)
            while True:
                try:
                    context = engine.create_context()
                    context.infer(x, 5.0)
                except InferenceError:
                    continue  # the old worker, not yet replaced
                context.close()
                if engine.generation > generation:
                    break

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    try:
        crash_and_recover(5)  # allocators and the fork server reach their steady state
        gc.collect()
        rss, files = _rss_kb(), open_files()
        crash_and_recover(50)
        gc.collect()
        assert abs(_rss_kb() - rss) <= 0.05 * rss
        assert abs(open_files() - files) <= max(1, 0.05 * files)
        assert engine.restarts == 55
    finally:
        engine.close()


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_outputs_from_the_worker_match_in_process_inference(tiny_model):
    local = OnnxRuntimeEngine(tiny_model)
    engine = ProcessEngine(functools.partial(OnnxRuntimeEngine, tiny_model), preload=PRELOAD)
    try:
        assert engine.inputs == local.inputs and engine.outputs == local.outputs
        context = engine.create_context()
        for batch in (1, 4, 2):  # the output block grows, then is reused
            x = {"images": np.random.default_rng(batch).random((batch, 3, 64, 64), dtype=np.float32)}
            got, want = context.infer(x, 5.0), local.create_context().infer(x, 5.0)
            assert got.keys() == want.keys()
            np.testing.assert_array_equal(got["output0"], want["output0"])
        context.close()
        engine.reload()  # in place, in the same worker
        context = engine.create_context()
        np.testing.assert_array_equal(context.infer(x, 5.0)["output0"], want["output0"])
        context.close()
        assert engine.generation == 1
    finally:
        engine.close()


def test_a_failed_engine_reload_restarts_the_worker(tiny_model):
    engine = ProcessEngine(functools.partial(_NoReload, tiny_model), preload=PRELOAD)
    try:
        with pytest.raises(ModelError, match="reloading the engine failed"):
            engine.reload()
        context = engine.create_context()  # waits for the new worker
        assert engine.generation == 2 and engine.restarts == 1
        context.infer({"images": np.zeros((1, 3, 64, 64), np.float32)}, 5.0)
        context.close()
    finally:
        engine.close()


def test_fresh_contexts_that_keep_failing_reload_the_engine(tiny_model):
    inner = OnnxRuntimeEngine(tiny_model)
    bindings = TensorBindings(inner)
    reference = inner.create_context().infer(bindings.probe_inputs(), 5.0)
    stats = InferStats()
    engine = FaultyEngine(inner, FaultPlan(error_rate=1.0))
    settings = SchedulerSettings(spares=0, create_attempts=10, reload_after=5)
    pool = ContextPool(engine, bindings, reference, settings, stats)
    sessions = []
    original = inner.reload
    inner.reload = lambda: (original(), sessions.append(inner._session))
    with pytest.raises(ModelError, match="cannot create a working inference context"):
        pool.create()
    pool.close()
    assert stats.engine_reloads == 2 and len(set(map(id, sessions))) == 2


def test_a_sticky_error_without_a_worker_process_stops_the_run_with_a_hint(car_clip):
    sink = CollectSink()
    config = {"sources": [{"url": str(car_clip), "name": "cam"}], "faults": {"sticky_rate": 0.05, "seed": 1}}
    summary = run(build_config(config), sinks=[sink])
    assert summary.error and "--isolation process" in summary.error
    assert summary.balanced
    assert sink.seqs("cam") == list(range(summary.sources["cam"].decoded))


def test_crash_faults_need_a_worker_process():
    from engines.errors import ConfigError

    with pytest.raises(ConfigError, match="infer.isolation: process"):
        build_config({"faults": {"crash_rate": 0.1}})


def test_past_the_budget_new_contexts_are_refused(tiny_model):
    engine = ProcessEngine(functools.partial(OnnxRuntimeEngine, tiny_model), preload=PRELOAD, max_restarts=0)
    try:
        os.kill(engine.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        with pytest.raises(WorkerBudgetExhausted, match="restart budget of 0"):
            while time.monotonic() < deadline:
                try:
                    engine.create_context().close()
                except InferenceError:
                    pass
                time.sleep(0.01)
    finally:
        engine.close()


def test_faults_injected_later_reach_the_contexts_already_open(tiny_model):
    engine = ProcessEngine(functools.partial(OnnxRuntimeEngine, tiny_model), preload=PRELOAD)
    x = {"images": np.zeros((1, 3, 64, 64), np.float32)}
    try:
        context = engine.create_context()
        context.infer(x, 30)
        engine.inject_faults(FaultPlan(error_rate=1.0))
        # The plan reaches the worker on its control pipe, the request on the context's own:
        # the first requests may still beat it. A cap on attempts guards against a hang.
        with pytest.raises(InferenceError, match="injected fault"):
            for _ in range(1_000):
                context.infer(x, 30)
                time.sleep(0.01)
    finally:
        engine.close()
