"""The infer scheduler's promise, with real ONNX Runtime sessions, real threads and the real clock."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engines.errors import InferenceError, InferenceTimeout, ModelError
from engines.onnxruntime import OnnxRuntimeEngine
from pipeline.api import run
from pipeline.config import build_config
from pipeline.runtime.assemble import assemble
from pipeline.runtime.context_pool import WARMUP_TRIES, ContextPool
from pipeline.runtime.infer_stats import InferStats
from pipeline.runtime.model import load_model
from pipeline.runtime.settings import SchedulerSettings
from pipeline.runtime.sources import SourceRun
from stages.bindings import TensorBindings
from stages.decode import VideoDecoder
from stages.types import Reason, Status
from tests.models import build_yolov8_model
from tests.sinks import CollectSink


def run_clip(clip: Path, **config) -> tuple[CollectSink, object]:
    sink = CollectSink()
    summary = run(build_config({"sources": [{"url": str(clip), "name": "cam"}], **config}), sinks=[sink])
    return sink, summary


def assert_every_seq_once(sink: CollectSink, frames: int) -> None:
    assert sink.seqs("cam") == list(range(frames))
    assert sink.summary.balanced
    assert sink.summary.sources["cam"].decoded == frames


def test_errors_and_hangs_recover_when_deadlines_allow_a_retry(car_clip, cpu_hog):
    sink, summary = run_clip(
        car_clip,
        deadline_ms=1500,
        # Seed 2 draws errors for 21.5% of the first 200 calls: the nominal rate (seed 7 drew 27.5%).
        faults={"error_rate": 0.2, "hang_rate": 0.02, "hang_s": 3.0, "seed": 2},
    )
    assert_every_seq_once(sink, 377)
    ok = sum(r.status is Status.OK for r in sink.results)
    assert ok / 377 >= 0.95, sink.outcomes()
    assert summary.inference["retries"] > 0 and summary.inference["rebuilds"] > 0
    retried_ok = [r for r in sink.results if r.status is Status.OK and r.attempts > 1]
    assert retried_ok, "some frames must have succeeded on a retry"
    for r in sink.results:
        if r.status is Status.FAILED:
            assert r.reason in (Reason.DEADLINE, Reason.INFERENCE), r


def test_deadline_too_short_to_retry_fails_frames_as_deadline_never_missing(car_clip, cpu_hog):
    # Every call takes 40 ms and a fifth of them then fail: no time is left for a retry.
    sink, summary = run_clip(
        car_clip,
        deadline_ms=60,
        infer={"max_batch": 1},
        faults={"error_rate": 0.2, "slow_rate": 1.0, "slow_ms": 40, "seed": 3},
    )
    assert_every_seq_once(sink, 377)
    failed = [r for r in sink.results if r.status is Status.FAILED]
    assert failed, "with 20% errors and no time to retry some frames must fail"
    assert {r.reason for r in failed} == {Reason.DEADLINE}
    assert summary.inference["deadline_misses"] == len(failed)


def test_a_hang_longer_than_the_deadline_is_given_up_in_time_to_retry(car_clip, cpu_hog):
    # A call is hung past 8x its shape's slowest recent healthy call (at least 250 ms): on a
    # busy machine that can be most of a second, so the deadline leaves room for that and a retry.
    # Batch 1: a hang is told from a healthy call of the same shape, so a larger measured batch
    # (slower calls) would stretch the bound this test holds it to.
    hang_s = 8.0
    sink, summary = run_clip(
        car_clip,
        deadline_ms=2000,
        infer={"max_batch": 1},
        faults={"hang_rate": 0.03, "hang_s": hang_s, "seed": 11},
    )
    assert_every_seq_once(sink, 377)
    assert summary.inference["abandoned"] >= 1
    # Only hangs are injected: a frame tried twice had its first context given up on, and the
    # retry on a spare answered before its deadline.
    assert any(r.status is Status.OK and r.attempts >= 2 for r in sink.results)
    assert all(r.reason is Reason.DEADLINE for r in sink.results if r.status is Status.FAILED)
    # No frame waited for a hang to end.
    assert max(r.latency_ms for r in sink.results) < hang_s * 1000 / 2
    assert sum(r.status is Status.OK for r in sink.results) / 377 >= 0.95


def tiny_pool(tmp_path: Path, settings: SchedulerSettings, stats: InferStats):
    """A context pool over a real ONNX Runtime engine of a tiny model: (pool, bindings, reference)."""
    model = tmp_path / "tiny.onnx"
    build_yolov8_model(model, boxes=[(0, 0.9, 4, 4, 20, 20)], input_size=(64, 64), num_classes=2)
    engine = OnnxRuntimeEngine(model)
    bindings = TensorBindings(engine)
    reference = engine.create_context().infer(bindings.probe_inputs(), 5.0)
    return ContextPool(engine, bindings, reference, settings, stats), bindings, reference


class CountedContext:
    """A real context whose calls are recorded (their batch sizes); its WarmShapes answers pass through."""

    def __init__(self, inner, calls: list[int]) -> None:
        self.inner, self.calls = inner, calls

    def infer(self, inputs, timeout):
        self.calls.append(len(next(iter(inputs.values()))))
        return self.inner.infer(inputs, timeout)

    def is_warm(self, inputs) -> bool:
        return self.inner.is_warm(inputs)

    def forget_warm(self) -> None:
        self.inner.forget_warm()

    def close(self) -> None:
        self.inner.close()


def test_a_rebuilt_context_warms_only_the_shapes_its_session_has_not_run(tmp_path):
    # CPU contexts share their engine's session: once it has run every batch shape, a context
    # made to replace one is probed once instead of warming every shape again (on a GPU, the
    # session a replaced context hands on). After outputs found wrong, every shape again.
    pool, _, _ = tiny_pool(tmp_path, SchedulerSettings(spares=0, batch_shapes=(1, 2, 4)), InferStats())
    calls: list[int] = []
    create = pool.engine.create_context
    pool.engine.create_context = lambda: CountedContext(create(), calls)
    slot = pool.take()
    assert calls == [1, 2, 4]  # the first context times every shape
    for suspect, warmed in ((False, [1]), (False, [1]), (True, [1, 2, 4]), (False, [1])):
        calls.clear()
        pool.discard(slot, suspect=suspect)
        slot = pool.take()
        assert calls == warmed, (suspect, calls)
    pool.discard(slot)
    pool.close()


def test_the_batch_is_measured_on_warm_calls(tmp_path):
    # A shape's first call pays what later calls do not; timing batch 1 only cold made batch 4
    # look cheaper per frame than it is (and held 200 MB more, with YOLO11n on 2 cores).
    settings = SchedulerSettings(spares=0, batch_shapes=(1,), measure_batches=(2, 4))
    pool, _, _ = tiny_pool(tmp_path, settings, InferStats())
    calls: list[int] = []
    create = pool.engine.create_context
    pool.engine.create_context = lambda: CountedContext(create(), calls)
    slot = pool.take()
    assert calls == [1, 1, 1, 1, 2, 2, 2, 4, 4, 4]  # warm-up, then each shape 3 times (its calls are cheap)
    assert set(pool.times.fastest_first_calls()) == {1, 2, 4}
    pool.discard(slot)
    pool.close()


def test_abandoned_contexts_are_reaped_when_their_call_returns(tmp_path):
    stats = InferStats()
    pool, bindings, reference = tiny_pool(tmp_path, SchedulerSettings(), stats)
    slot = pool.take()
    slot.context.infer = lambda inputs, timeout: time.sleep(0.5) or reference  # a call that ignores its timeout
    with pytest.raises(InferenceTimeout):
        slot.call(bindings.probe_inputs(), 0.05, 0.0)
    pool.discard(slot, abandoned=True)
    assert stats.abandoned_live == 1
    deadline = time.monotonic() + 5
    while stats.abandoned_live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats.abandoned_live == 0 and stats.abandoned == 1
    pool.close()



class FlakyContext(CountedContext):
    """A real context whose first `failures` calls raise, as a transient fault would."""

    def __init__(self, inner, calls: list[int], failures: int) -> None:
        super().__init__(inner, calls)
        self.failures = failures

    def infer(self, inputs, timeout):
        self.calls.append(len(next(iter(inputs.values()))))
        if self.failures:
            self.failures -= 1
            raise InferenceError("injected: transient")
        return self.inner.infer(inputs, timeout)


@pytest.mark.parametrize("failures", [WARMUP_TRIES - 1, WARMUP_TRIES])
def test_a_warm_up_call_that_raises_is_tried_again_up_to_the_failure_threshold(tmp_path, failures):
    stats = InferStats()
    settings = SchedulerSettings(batch_shapes=(1, 2), spares=0, create_attempts=2)
    pool, _, _ = tiny_pool(tmp_path, settings, stats)
    real, calls = pool.engine.create_context, []
    pool.engine.create_context = lambda: FlakyContext(real(), calls, failures)
    if failures < WARMUP_TRIES:  # transient: the same context warms both shapes and serves
        slot = pool.create()
        assert calls == [1] * WARMUP_TRIES + [2] and stats.create_failures == 0
        pool.discard(slot)
    else:  # every try of the first shape raised: the context is given up, and so is the next
        with pytest.raises(ModelError, match="cannot create a working inference context"):
            pool.create()
        assert calls == [1] * (2 * WARMUP_TRIES) and stats.create_failures == 2
    pool.close()

def test_health_probe_catches_a_context_that_returns_wrong_outputs(car_clip):
    sink, summary = run_clip(
        car_clip,
        infer={"health_interval_s": 0.05},
        faults={"corrupt_rate": 0.05, "seed": 5},
    )
    assert_every_seq_once(sink, 377)
    inference = summary.inference
    assert inference["probes"] > 0
    # A corrupted context is caught by whichever looks first: the check on every batch's
    # outputs (issue 17) or the idle probe; each costs it its place.
    caught = inference["probe_failures"] + inference["corrupt_outputs"]
    assert caught >= 1
    assert inference["rebuilds"] >= caught


def test_the_probe_catches_outputs_that_look_plausible_but_drifted(tmp_path):
    """Drift the per-batch checks cannot see (boxes 1% off, scores in range) fails the probe."""
    pool, bindings, _ = tiny_pool(tmp_path, SchedulerSettings(batch_shapes=(1,), spares=0), InferStats())
    slot = pool.take()
    assert pool.probe(slot)
    healthy = slot.context.infer

    def drifted(inputs, timeout):
        outputs = {k: v.copy() for k, v in healthy(inputs, timeout).items()}
        for value in outputs.values():
            value[:, :4] *= np.float32(1.01)
        return outputs

    slot.context.infer = drifted
    assert bindings.output_problem(drifted(bindings.probe_inputs(1), 5.0), 1) is None
    assert not pool.probe(slot)
    pool.close()


def test_a_model_that_fails_to_load_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    from engines.errors import ModelError

    with pytest.raises(ModelError, match="broken.onnx"):
        load_model(build_config({"model": {"path": str(bad)}}).model)


class _ContextsStopComing:
    """A real ONNX Runtime engine whose context creation starts failing after `working`
    contexts: a stand-in for a device that has gone away (no real part can do that here)."""

    def __init__(self, inner, working: int) -> None:
        self.inner, self.left = inner, working
        self.name, self.inputs, self.outputs, self.metadata = inner.name, inner.inputs, inner.outputs, inner.metadata

    def create_context(self):
        self.left -= 1
        if self.left < 0:
            from engines.errors import InferenceError

            raise InferenceError("device lost")
        return self.inner.create_context()

    def close(self) -> None:
        self.inner.close()


def test_contexts_that_can_never_be_created_end_the_run_with_every_frame_reported(car_clip):
    config = build_config(
        {
            "sources": [{"url": str(car_clip), "name": "cam"}],
            "faults": {"error_rate": 0.3, "seed": 2},
        }
    )
    model = load_model(config.model)
    from engines.fault_plan import FaultPlan
    from engines.faults import FaultyEngine

    model.engine = FaultyEngine(_ContextsStopComing(model.engine, working=6), FaultPlan(error_rate=0.3, seed=2))
    decoder = VideoDecoder("cam", str(car_clip), config.deadline_ms / 1000)
    sink = CollectSink()
    summary = assemble(config, [SourceRun(decoder)], model, [sink]).run()
    assert summary.error and "cannot create a working inference context" in summary.error
    decoded = summary.sources["cam"].decoded
    assert 0 < decoded
    assert sink.seqs("cam") == list(range(decoded))
    assert summary.balanced
    assert any(r.reason is Reason.INFERENCE for r in sink.results)


def _slow_model(path: Path) -> Path:
    """A real model that takes seconds: a long chain of 1024x1024 matrix products."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1024, 1024], np.full(1024 * 1024, 1e-3, np.float32))
    nodes, prev = [], "x"
    for i in range(400):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"m{i}"]))
        prev = f"m{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 1024])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, path)
    return path


def test_onnxruntime_cancels_a_run_past_its_timeout(tmp_path):
    engine = OnnxRuntimeEngine(_slow_model(tmp_path / "slow.onnx"))
    context = engine.create_context()
    x = {"x": np.ones((256, 1024), np.float32)}
    start = time.monotonic()
    with pytest.raises(InferenceTimeout, match="cancelled"):
        context.infer(x, timeout=0.1)
    cancelled_after = time.monotonic() - start
    # The run was stopped by RunOptions.terminate, far sooner than it takes to finish.
    start = time.monotonic()
    context.infer(x, timeout=60)
    full_run = time.monotonic() - start
    assert cancelled_after < full_run / 2


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def measure_rebuilds(model: str, rebuilds: int) -> dict:
    """Rebuild a context `rebuilds` times; memory and threads before and after (run in a fresh process)."""
    engine = OnnxRuntimeEngine(Path(model))
    bindings = TensorBindings(engine)
    reference = engine.create_context().infer(bindings.probe_inputs(), 5.0)
    stats = InferStats()
    pool = ContextPool(engine, bindings, reference, SchedulerSettings(spares=1), stats)

    def rebuild(n: int) -> None:
        slot = pool.take()
        for _ in range(n):
            pool.discard(slot)
            slot = pool.take()
        pool.discard(slot)

    rebuild(1000)  # let allocators and thread pools reach their steady state
    gc.collect()
    time.sleep(0.2)
    before = {"rss_kb": _rss_kb(), "threads": threading.active_count()}
    rebuild(rebuilds)
    gc.collect()
    time.sleep(0.2)
    after = {"rss_kb": _rss_kb(), "threads": threading.active_count()}
    pool.close()
    return {"before": before, "after": after, "create_failures": stats.create_failures}


def test_ten_thousand_rebuilds_leave_memory_and_threads_where_they_were(tmp_path):
    model = tmp_path / "tiny.onnx"
    build_yolov8_model(model, boxes=[(0, 0.9, 4, 4, 20, 20)], input_size=(64, 64), num_classes=2)
    # A fresh process: the suite's own memory (freed or grown by other tests) must not blur the figure.
    code = (
        "import json; from tests.pipeline.runtime.test_scheduler import measure_rebuilds; "
        f"print(json.dumps(measure_rebuilds({str(model)!r}, 10_000)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[3], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after = figures["before"], figures["after"]
    assert abs(after["rss_kb"] - before["rss_kb"]) <= 0.05 * before["rss_kb"], figures
    assert abs(after["threads"] - before["threads"]) <= max(1, 0.05 * before["threads"]), figures
    assert figures["create_failures"] == 0
