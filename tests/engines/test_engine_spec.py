"""Engine specs: what model.py makes of a config is plain values, and the worker process builds
its engine from one without `pipeline` or `stages` (real worker processes, a real ONNX model)."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.onnxruntime import OnnxRuntimeEngine
from engines.spec import OnnxRuntimeSpec, TensorRTSpec, build_engine
from pipeline.config import build_config
from pipeline.runtime.model import engine_spec
from tests.models import build_yolov8_model

# Run with `pipeline` and `stages` made unimportable (packages of those names that raise on
# import shadow the real ones): it unpickles the spec model.py made, runs it in a worker
# process, and prints the outputs.
_WORKER_ONLY = """
import pickle, sys
import numpy as np
from engines.process import ProcessEngine
spec = pickle.loads(sys.stdin.buffer.read())
engine = ProcessEngine(spec)
try:
    context = engine.create_context()
    x = np.full((1, 3, 64, 64), 0.5, np.float32)
    outputs = context.infer({engine.inputs[0].name: x}, 30.0)
    context.close()
    assert engine.pid is not None
finally:
    engine.close()
assert "pipeline" not in sys.modules or sys.modules["pipeline"] is None
np.save(sys.stdout.buffer, outputs["output0"])
"""


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    boxes = [(0, 0.9, 4, 4, 20, 20)]
    return build_yolov8_model(tmp_path / "tiny.onnx", boxes=boxes, input_size=(64, 64), num_classes=2)


def test_a_config_becomes_a_spec_of_plain_values():
    providers = ["CPUExecutionProvider", {"name": "X", "options": {"a": 1}}]
    config = build_config({"model": {"path": "m.onnx", "intra_op_threads": 3, "providers": providers}})
    spec = engine_spec(config.model)
    assert spec == OnnxRuntimeSpec(Path("m.onnx"), ("CPUExecutionProvider", ("X", {"a": 1})), 3)
    trt = engine_spec(build_config({"model": {"backend": "tensorrt", "path": "m.onnx", "precision": "fp16"}}).model)
    assert trt == TensorRTSpec(Path("m.onnx"), "fp16", None)
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_the_worker_builds_its_engine_without_pipeline_or_stages(tiny_model, tmp_path):
    spec = engine_spec(build_config({"model": {"path": str(tiny_model)}}).model)
    for package in ("pipeline", "stages"):
        (tmp_path / "blocked" / package).mkdir(parents=True)
        (tmp_path / "blocked" / package / "__init__.py").write_text(
            f"raise ImportError('{package} imported where only engines may run')\n"
        )
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER_ONLY],
        input=pickle.dumps(spec),
        capture_output=True,
        cwd=tmp_path / "blocked",  # first on sys.path, for this process and its fork server alike
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    got = np.load(io.BytesIO(proc.stdout))
    engine = build_engine(spec)
    try:
        context = engine.create_context()
        want = context.infer({engine.inputs[0].name: np.full((1, 3, 64, 64), 0.5, np.float32)}, 30.0)["output0"]
        context.close()
    finally:
        engine.close()
    assert isinstance(engine, OnnxRuntimeEngine)
    np.testing.assert_array_equal(got, want)


def test_the_poisoned_packages_do_block_pipeline(tmp_path):
    """The check above can fail: with the same set-up, importing pipeline is an error."""
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text("raise ImportError('blocked')\n")
    command = [sys.executable, "-c", "import pipeline.config"]
    proc = subprocess.run(command, capture_output=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1 and b"blocked" in proc.stderr
