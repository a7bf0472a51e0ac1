"""ONNX Runtime's CUDA provider: contexts on their own streams with IO binding, every batch
shape warmed, recovery on the GPU, and one clear line where there is no GPU.

The `gpu` tests need onnxruntime-gpu and an NVIDIA GPU (they skip elsewhere, saying why);
the others run everywhere.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.api import run
from pipeline.config import build_config
from tests.gpu import StreamGate, cuda_skip_reason
from tests.sinks import CollectSink

REPO = Path(__file__).resolve().parents[2]
CUDA = "CUDAExecutionProvider"


def ort_cuda_skip_reason() -> str | None:
    if CUDA not in ort.get_available_providers():
        return "needs onnxruntime-gpu (this ONNX Runtime has no CUDAExecutionProvider)"
    return cuda_skip_reason()


def gpu(test):
    """`pytest -m gpu` selects it; it skips, saying why, without onnxruntime-gpu and a GPU."""
    reason = ort_cuda_skip_reason()
    return pytest.mark.gpu(pytest.mark.skipif(reason is not None, reason=str(reason))(test))


def cuda_config(clip: Path, model: Path | None = None, **extra) -> dict:
    return {
        "sources": [{"url": str(clip), "name": "cam"}],
        "model": {"providers": [{"name": CUDA, "options": {"device_id": 0}}, "CPUExecutionProvider"],
                  **({"path": str(model)} if model else {})},
        **extra,
    }


# ---- everywhere ----------------------------------------------------------------------------


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this ONNX Runtime has the CUDA provider")
def test_asking_for_the_gpu_without_onnxruntime_gpu_is_one_line_and_exit_2(car_clip: Path) -> None:
    argv = [sys.executable, "-m", "pipeline.cli", "run", str(car_clip), "--device", "cuda", "--max-frames", "3"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "vidpipe: error: ONNX Runtime here has no CUDAExecutionProvider; available: "
        f"{', '.join(ort.get_available_providers())}; "
        "install onnxruntime-gpu (pip install -e '.[gpu]' in vidpipe's checkout)"
    ]


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1"])
def test_a_bad_device_is_one_line_and_exit_2(device: str, car_clip: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(car_clip), "--device", device],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"vidpipe: error: --device {device!r}: give cpu, cuda or cuda:N (N the GPU's index)"


def test_provider_options_are_parsed_and_the_gpu_is_sized_as_one() -> None:
    from pipeline.runtime.sizing import size_run

    options = {"device_id": 1, "cudnn_conv_algo_search": "DEFAULT"}
    config = build_config({"model": {"providers": [{"name": CUDA, "options": options}]}})
    assert config.model.provider_names == [CUDA]
    assert config.model.providers[0].options == {"device_id": 1, "cudnn_conv_algo_search": "DEFAULT"}
    _, sizing = size_run(config, sources=1)
    assert sizing.device == "gpu" and sizing.max_batch == 16 and sizing.batch_shapes == (1, 2, 4, 8, 16)
    assert sizing.intra_op_threads == 1
    _, planes = size_run(config, sources=16, letterbox_on_gpu=True)
    assert planes.preprocess_workers == 2  # geometry only: the GPU letterboxes
    _, cpu = size_run(build_config({}), sources=1)
    assert cpu.device == "cpu" and cpu.max_batch == 1


def test_padding_to_a_batch_shape_never_reaches_a_result(odd_clip: Path) -> None:
    # 31 frames in batches of up to 3, run at shapes {4}: every batch is padded, and a padded
    # row's outputs (zeros in) must never become a result.
    padded, plain = CollectSink(), CollectSink()
    base = {"sources": [{"url": str(odd_clip), "name": "odd"}]}
    run(build_config({**base, "infer": {"max_batch": 3, "batch_shapes": [4], "max_delay_ms": 50}}), sinks=[padded])
    run(build_config({**base, "infer": {"max_batch": 1}}), sinks=[plain])
    assert padded.seqs("odd") == plain.seqs("odd") == list(range(31))
    want = {r.seq: r.detections for r in plain.results}
    for result in padded.results:
        assert np.allclose(result.detections.xyxy, want[result.seq].xyxy, atol=1e-3)
    assert padded.summary.inference["shapes"].keys() == {"4"}


# ---- on an NVIDIA GPU ------------------------------------------------------------------------


@gpu
def test_cuda_contexts_each_have_their_own_session_and_stream_and_match_the_cpu(bench_model: Path) -> None:
    from engines.onnxruntime import OnnxRuntimeEngine
    from pipeline.runtime.context_pool import relative_error

    cpu = OnnxRuntimeEngine(bench_model)
    gpu_engine = OnnxRuntimeEngine(bench_model, providers=[(CUDA, {})])
    a, b = gpu_engine.create_context(), gpu_engine.create_context()
    assert a._stream.handle != b._stream.handle and a._session is not b._session
    rng = np.random.default_rng(0)
    for batch in (1, 2, 4, 8, 16):
        x = rng.random((batch, 3, 640, 640), dtype=np.float32)
        want = cpu.create_context().infer({"images": x}, 60.0)["output0"]
        for context in (a, b):
            got = context.infer({"images": x}, 60.0)["output0"]
            assert relative_error(got, want) < 1e-2, batch
    a.close()
    b.close()


@gpu
def test_a_fault_free_gpu_run_at_default_flags_ends_every_frame_ok(person_clip: Path, bench_model: Path) -> None:
    sink = CollectSink()
    summary = run(build_config(cuda_config(person_clip, bench_model)), sinks=[sink])
    assert sink.seqs("cam") == list(range(summary.sources["cam"].decoded))
    assert summary.ok == summary.frames > 1000, sink.outcomes()
    inference = summary.inference
    assert (inference["timeouts"], inference["abandoned"], inference["engine_reloads"]) == (0, 0, 0)
    assert set(inference["shapes"]) == {"1", "2", "4", "8", "16"}


@gpu
def test_injected_faults_on_the_gpu_rebuild_and_retry(car_clip: Path, bench_model: Path) -> None:
    sink = CollectSink()
    # Batches of 16 make few calls (about 25 for the clip): a high rate so faults surely come.
    # A GPU context is a session that tunes every batch shape when made (about 1-2 s), so the
    # deadline leaves room for a swap when the warm spares run out.
    faults = {"error_rate": 0.1, "hang_rate": 0.02, "hang_s": 3.0, "seed": 2}
    summary = run(build_config(cuda_config(car_clip, bench_model, faults=faults, deadline_ms=10_000)), sinks=[sink])
    assert sink.seqs("cam") == list(range(377)) and summary.balanced
    assert summary.ok / 377 >= 0.95, sink.outcomes()
    assert summary.inference["rebuilds"] >= 1 and summary.inference["retries"] >= 1


@gpu
def test_a_context_given_up_on_frees_its_buffers_only_after_its_stream_completes(bench_model: Path) -> None:
    from engines.errors import InferenceTimeout
    from engines.onnxruntime import OnnxRuntimeEngine

    context = OnnxRuntimeEngine(bench_model, providers=[(CUDA, {})]).create_context()
    x = np.zeros((1, 3, 640, 640), np.float32)
    context.infer({"images": x}, 60.0)
    gate = StreamGate(context._stream.handle)  # the stream stops here, as behind a hung kernel
    with pytest.raises(InferenceTimeout):
        context.infer({"images": x}, 0.2)
    host = context._pinned["input"]
    context.close()
    time.sleep(0.3)
    assert host.ptr != 0, "freed while its stream was still held"
    gate.release()
    deadline = time.monotonic() + 10
    while host.ptr and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host.ptr == 0


def default_model_detections(setting: str, on: bool) -> dict:
    """The embedded default on its sample clip on the CUDA provider with model.`setting` on or
    off (every frame ok, the summary saying so): its detections by seq."""
    sink = CollectSink()
    config = {"model": {"providers": [CUDA, "CPUExecutionProvider"], setting: on}}
    summary = run(build_config(config), sinks=[sink])
    assert summary.inference[setting] is on and summary.ok == summary.frames
    return {r.seq: r.detections for r in sink.results}


@gpu
def test_letterboxing_on_the_gpu_finds_what_the_cpu_path_finds() -> None:
    """The embedded default on its sample clip, CUDA provider, letterboxed on the GPU from the
    decoded planes and on the CPU: the same objects, boxes within 2 source pixels."""
    results = {on_gpu: default_model_detections("gpu_letterbox", on_gpu) for on_gpu in (True, False)}
    matched = 0
    for seq, cpu in results[False].items():
        gpu = results[True][seq]
        if len(gpu) != len(cpu):
            continue
        # Each GPU box against its nearest CPU box (L-infinity, source pixels).
        distance = np.abs(gpu.xyxy[:, None, :] - cpu.xyxy[None, :, :]).max(axis=2)
        assert distance.min(axis=1).max(initial=0) <= 2.0, seq
        matched += 1
    assert matched >= 0.95 * len(results[False])


@gpu
def test_candidates_made_on_the_gpu_give_what_the_whole_output_gives() -> None:
    """The embedded default on its sample clip with the detector output reduced to candidate
    rows on the GPU (stages/gpu_candidates.py) and copied whole: the same results, boxes
    within 0.01 source pixels."""
    results = {reduced: default_model_detections("gpu_candidates", reduced) for reduced in (True, False)}
    assert results[True].keys() == results[False].keys()
    boxes = 0
    for seq, whole in results[False].items():
        rows = results[True][seq]
        assert list(rows.class_id) == list(whole.class_id), seq
        np.testing.assert_allclose(rows.xyxy, whole.xyxy, atol=0.01)
        boxes += len(whole)
    assert boxes > 100


@gpu
def test_a_cuda_context_reduces_the_bench_models_output_to_the_reference_rows(
    person_clip: Path, bench_model: Path
) -> None:
    """One context, one batch of decoded planes, with and without the reduction: the rows it
    returns are stages/gpu_candidates.reference of the whole output it returns."""
    from engines.onnxruntime import OnnxRuntimeEngine
    from stages.bindings import TensorBindings
    from stages.decode import VideoDecoder
    from stages.gpu_candidates import GpuCandidates, reference
    from stages.layouts import CANDIDATES, Head
    from stages.preprocess import Preprocess
    from stages.types import Frame

    engine = OnnxRuntimeEngine(bench_model, providers=[(CUDA, {})])
    bindings = TensorBindings(engine)
    bindings.gpu_planes = True
    decoder = VideoDecoder("cam", str(person_clip), 1.0)
    pre = Preprocess(bindings.input_size, geometry_only=True)
    frames = [pre(f) for f in decoder if isinstance(f, Frame) and f.seq < 11]
    decoder.close()
    context = engine.create_context()
    head = Head("yolov8", 80)
    bindings.gpu_candidates = GpuCandidates("output0", head)
    rows = context.infer(bindings.inputs(frames, context, 16), 60.0)
    bindings.gpu_candidates = None
    whole = context.infer(bindings.inputs(frames, context, 16), 60.0)
    context.close()
    assert set(rows) == {CANDIDATES} and rows[CANDIDATES].shape == (16, 8400, 6)
    np.testing.assert_allclose(rows[CANDIDATES][:11], reference(whole["output0"], head)[:11], rtol=1e-6, atol=1e-6)


@gpu
def test_corrupt_outputs_of_gpu_candidates_are_caught_and_retried(person_clip: Path, bench_model: Path) -> None:
    sink = CollectSink()
    faults = {"corrupt_rate": 0.1, "seed": 1}
    summary = run(build_config(cuda_config(person_clip, bench_model, faults=faults, max_frames=400)), sinks=[sink])
    assert summary.inference["gpu_candidates"] is True and summary.inference["corrupt_outputs"] >= 1
    assert sink.seqs("cam") == list(range(400)) and summary.balanced
    for result in sink.results:
        if result.detections is not None and len(result.detections):
            boxes = result.detections.xyxy
            assert result.detections.score.max() <= 1.0 and (boxes[:, 2:] >= boxes[:, :2]).all()



class StandInSession:
    """Stands in for a CudaSession, which needs a GPU: SessionPool only makes, keeps and closes them."""

    def __init__(self) -> None:
        self.generation = 0
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_an_engine_reload_retires_the_sessions_in_use_when_they_come_back() -> None:
    from engines.onnxruntime_cuda import SessionPool

    pool = SessionPool(StandInSession)
    in_use, idle = pool.take(), pool.take()
    pool.give(idle)
    pool.clear()  # what OnnxRuntimeEngine.reload does
    assert idle.closed and not in_use.closed  # a context still runs on it
    pool.give(in_use)  # its context closes after the reload: made from the old model file
    assert in_use.closed and pool._idle == []
    fresh = pool.take()
    assert fresh is not in_use and fresh.generation == 1
    pool.give(fresh)
    assert pool.take() is fresh and not fresh.closed  # sessions made since the reload are kept

@gpu
def test_a_replaced_context_hands_its_tuned_session_on_unless_it_was_given_up_on(bench_model: Path) -> None:
    from engines.errors import InferenceTimeout
    from engines.onnxruntime import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(bench_model, providers=[(CUDA, {})])
    x = np.zeros((1, 3, 640, 640), np.float32)
    first = engine.create_context()
    first.infer({"images": x}, 60.0)
    session = first._cuda
    first.close()
    deadline = time.monotonic() + 10
    while not engine._cuda_sessions._idle and time.monotonic() < deadline:
        time.sleep(0.01)  # handed on once its stream is done
    second = engine.create_context()
    assert second._cuda is session  # already tuned: a swap, not a new session
    # ...so the pool warms only the shapes it has not run (pipeline/runtime/context_pool.py).
    assert second.is_warm({"images": x}) and not second.is_warm({"images": np.zeros((2, 3, 640, 640), np.float32)})
    second.infer({"images": x}, 60.0)
    gate = StreamGate(second._stream.handle)
    with pytest.raises(InferenceTimeout):
        second.infer({"images": x}, 0.2)
    second.close()
    gate.release()
    time.sleep(0.5)
    assert session not in engine._cuda_sessions._idle  # a stream that hung is never reused
    third = engine.create_context()
    assert third._cuda is not session and not third.is_warm({"images": x})
    third.close()


@gpu
def test_sessions_in_use_at_an_engine_reload_are_closed_when_their_contexts_close(bench_model: Path) -> None:
    from engines.onnxruntime import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(bench_model, providers=[(CUDA, {})])
    x = np.zeros((1, 3, 640, 640), np.float32)
    old = engine.create_context()
    old.infer({"images": x}, 60.0)
    session = old._cuda
    engine.reload()
    old.close()
    deadline = time.monotonic() + 10
    while session.session is not None and time.monotonic() < deadline:
        time.sleep(0.01)  # closed once its stream is done
    assert session.session is None and session.pinned == {} and engine._cuda_sessions._idle == []
    new = engine.create_context()
    assert new._cuda is not session
    new.infer({"images": x}, 60.0)
    new.close()
    engine.close()
