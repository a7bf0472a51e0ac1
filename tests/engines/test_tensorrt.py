"""TensorRT end to end: build engines from a real convolutional model, run them, compare.

Needs TensorRT's builder (pip install tensorrt) and an NVIDIA GPU: `pytest -m tensorrt`.
TensorRT cannot be installed from the registries this project reaches, so these tests
skip in its CI and on its GPU machine; they are written to run as they are where it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engines.build import BatchProfile, build_engine, find_or_build_engine
from engines.errors import InferenceError, InferenceTimeout, ModelError
from engines.plan import pack, unpack
from pipeline.api import run
from pipeline.config import build_config
from stages.decode import iter_images
from stages.preprocess import letterbox
from stages.types import Status
from tests.conv_model import INPUT_SIZE, NAMES, prepared_conv_models
from tests.detections import agreement, detect, onnxruntime_runner
from tests.engines.test_prepare import FP16_AGREEMENT, INT8_AGREEMENT
from tests.gpu import StreamGate, tensorrt_skip_reason
from tests.sinks import CollectSink

SKIP = tensorrt_skip_reason()
pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, person_clip: Path) -> dict[str, Path]:
    return prepared_conv_models(tmp_path_factory.mktemp("trt"), person_clip)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("engines")
    paths = {}
    for precision, model in models.items():
        paths[precision] = tmp / f"conv-{precision}.engine"
        paths[precision].write_bytes(
            build_engine(model, precision, BatchProfile(1, 2, 4), 512, tmp / "timing.cache")
        )
    return paths


@pytest.fixture(scope="module")
def car_frames(car_clip: Path) -> list[np.ndarray]:
    return [image for i, image in enumerate(iter_images(car_clip)) if i % 4 == 0]


def tensorrt_runner(engine):
    context = engine.create_context()
    return context, (lambda batch: context.infer({"images": batch}, timeout=5.0)["output0"])


def test_an_engine_describes_its_tensors_and_where_it_was_built(engines):
    from engines.tensorrt import TensorRTEngine

    engine = TensorRTEngine(engines["int8"])
    try:
        assert [(s.name, s.shape, s.dtype) for s in engine.inputs] == [("images", (None, 3, 320, 320), np.float32)]
        assert [(s.name, s.shape) for s in engine.outputs] == [("output0", (None, 7, 2100))]
        assert engine.profiles["images"] == ((1, 3, 320, 320), (2, 3, 320, 320), (4, 3, 320, 320))
        assert engine.metadata["precision"] == "int8" and engine.header.gpu == engine.device.name
    finally:
        engine.close()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engines_find_the_boxes_onnxruntime_finds_on_car_footage(engines, models, car_frames, precision):
    from engines.tensorrt import TensorRTEngine

    reference = detect(onnxruntime_runner(models["fp32"]), car_frames, NAMES, INPUT_SIZE)
    engine = TensorRTEngine(engines[precision])
    context, runner = tensorrt_runner(engine)
    try:
        share, total = agreement(reference, detect(runner, car_frames, NAMES, INPUT_SIZE))
    finally:
        context.close()
        engine.close()
    bound = INT8_AGREEMENT if precision == "int8" else FP16_AGREEMENT
    print(f"TensorRT {precision} agreement with ONNX Runtime fp32: {share:.3f} of {total}")
    assert share >= bound


def test_batches_beyond_the_profile_run_in_slices_with_the_same_outputs(engines, models, car_frames):
    from engines.tensorrt import TensorRTEngine

    batch = np.stack([letterbox(image, INPUT_SIZE)[0] for image in car_frames[:6]])
    expected = onnxruntime_runner(models["fp32"])(batch)
    engine = TensorRTEngine(engines["fp32"])
    context = engine.create_context()
    try:
        got = context.infer({"images": batch}, timeout=10.0)["output0"]  # 6 > max batch 4
    finally:
        context.close()
        engine.close()
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=0.5)  # TF32 on by default


def test_the_cache_finds_the_engine_it_built(tmp_path, models):
    first = find_or_build_engine(models["fp32"], "fp16", cache_dir=tmp_path)
    built = first.stat().st_mtime_ns
    assert find_or_build_engine(models["fp32"], "fp16", cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == built, "a cache hit must not rebuild"
    assert list(tmp_path.glob("timing-*.cache")), "the timing cache is kept for rebuilds"
    assert find_or_build_engine(models["fp32"], "fp32", cache_dir=tmp_path) != first


def test_an_onnx_the_parser_rejects_names_the_node(tmp_path):
    node = helper.make_node("Frobnicate", ["images"], ["output0"], name="frob_1", domain="com.example")
    graph = helper.make_graph(
        [node], "bad",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelError, match=r"parser rejected .*bad.onnx at node 'frob_1' \(Frobnicate\)"):
        build_engine(tmp_path / "bad.onnx", "fp32")


def test_an_engine_from_another_tensorrt_or_gpu_is_refused_in_one_line(engines, tmp_path, car_clip, capsys):
    from engines.tensorrt import TensorRTEngine
    from pipeline.cli.main import main

    header, plan = unpack(engines["fp16"].read_bytes(), "conv-fp16.engine")
    for change, message in (
        ({"tensorrt": "9.0.0"}, "was built by TensorRT 9.0.0"),
        ({"gpu": "NVIDIA Imaginary", "compute_capability": "1.0"}, "was built for NVIDIA Imaginary"),
    ):
        other = tmp_path / "other.engine"
        other.write_bytes(pack(dataclasses.replace(header, **change), bytes(plan)))
        with pytest.raises(ModelError, match=message):
            TensorRTEngine(other)
        assert main(["run", str(car_clip), "--backend", "tensorrt", "--model", str(other), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


def test_a_hung_context_is_abandoned_and_a_new_one_runs(engines, car_frames):
    from engines.tensorrt import TensorRTEngine

    engine = TensorRTEngine(engines["fp16"])
    batch = letterbox(car_frames[0], INPUT_SIZE)[0][None]
    hung = engine.create_context()
    gate = StreamGate(hung._stream.handle)  # the context's stream stops here
    try:
        with pytest.raises(InferenceTimeout):
            hung.infer({"images": batch}, timeout=0.2)
        with pytest.raises(InferenceError, match="still running"):
            hung.infer({"images": batch}, timeout=0.2)
        fresh = engine.create_context()
        assert fresh.infer({"images": batch}, timeout=5.0)["output0"].shape == (1, 7, 2100)
        hung.close()
        fresh.close()
        assert not hung.released.wait(0.3)
    finally:
        gate.release()
    assert hung.released.wait(10.0) and fresh.released.wait(10.0)
    engine.close()


def test_injected_failures_rebuild_contexts_and_every_frame_is_accounted_for(engines, car_clip):
    sink = CollectSink()
    config = build_config(
        {
            "sources": [{"url": str(car_clip), "name": "cam"}],
            "model": {"path": str(engines["fp16"]), "backend": "tensorrt"},
            "deadline_ms": 2000,
            "faults": {"error_rate": 0.2, "seed": 7},
        }
    )
    summary = run(config, sinks=[sink])
    assert sink.seqs("cam") == list(range(377)) and summary.balanced
    assert summary.inference["rebuilds"] > 0 and summary.inference["retries"] > 0
    ok = sum(r.status is Status.OK for r in sink.results)
    assert ok / 377 >= 0.95
