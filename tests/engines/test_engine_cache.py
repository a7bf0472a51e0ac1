"""The engine cache key, the engine file header and the checks that refuse a wrong engine.

All of it runs without TensorRT or a GPU: the decisions made before TensorRT is called,
the one-line errors a user sees when it is missing, and the rule that frees a context's
memory only after its stream is done, never on the caller's thread.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import threading
import time
from pathlib import Path

import pytest

from engines.build import BatchProfile, check_precision_supported, profile_shapes, timing_cache_path
from engines.cache import CacheKey, EngineCache
from engines.cuda import Device, release_when_done
from engines.errors import ModelError
from engines.plan import EngineHeader, check_compatible, pack, read_header, unpack
from pipeline.cli.main import main

HAS_TENSORRT = any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_lean"))
H100 = Device(0, "NVIDIA H100 80GB HBM3", (9, 0))

KEY = CacheKey(
    onnx_sha256="a" * 64,
    tensorrt="10.13.0.35",
    gpu=H100.name,
    compute_capability="9.0",
    precision="fp16",
    batch=(1, 4, 8),
)
HEADER = EngineHeader(
    tensorrt="10.13.0.35",
    gpu=H100.name,
    compute_capability="9.0",
    precision="int8",
    batch=(1, 4, 8),
    input_size=None,
    onnx_sha256="b" * 64,
    inputs=[{"name": "images", "shape": [-1, 3, 320, 320], "dtype": "float32"}],
    outputs=[{"name": "output0", "shape": [-1, 7, 2100], "dtype": "float32"}],
)


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "c" * 64},
        {"tensorrt": "10.13.2.6"},
        {"tensorrt": "11.0.0.1"},
        {"gpu": "NVIDIA H200"},
        {"compute_capability": "8.9"},
        {"precision": "int8"},
        {"batch": (1, 4, 16)},
        {"input_size": (640, 640)},
        {"version_compatible": True},
    ],
)
def test_the_cache_key_changes_when_any_part_changes(change):
    assert dataclasses.replace(KEY, **change).digest() != KEY.digest()


def test_the_cache_key_is_stable():
    assert dataclasses.replace(KEY).digest() == KEY.digest()
    assert len({dataclasses.replace(KEY, precision=p).digest() for p in ("fp32", "fp16", "int8")}) == 3


def test_the_cache_stores_and_finds_an_engine_under_its_key(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    assert cache.lookup(KEY, "yolov8n.onnx") is None
    path = cache.store(KEY, "yolov8n.onnx", b"engine bytes")
    assert path.parent == tmp_path / "engines" and path.name.startswith("yolov8n-fp16-")
    assert cache.lookup(KEY, "yolov8n.onnx") == path and path.read_bytes() == b"engine bytes"
    assert cache.lookup(dataclasses.replace(KEY, tensorrt="10.14.1.48"), "yolov8n.onnx") is None
    assert [p.name for p in (tmp_path / "engines").iterdir()] == [path.name], "no temporary files left"


def test_the_default_cache_is_under_the_users_cache_dir():
    assert EngineCache().directory == Path("~/.cache/vidpipe/engines").expanduser()


def test_the_engine_header_round_trips_in_front_of_the_plan(tmp_path):
    data = pack(HEADER, b"\x00plan\xff")
    header, plan = unpack(data, "x.engine")
    assert header == HEADER and bytes(plan) == b"\x00plan\xff"
    path = tmp_path / "x.engine"
    path.write_bytes(data)
    assert read_header(path) == HEADER


def test_a_bare_tensorrt_plan_has_no_header(tmp_path):
    header, plan = unpack(b"ftrt\x00\x01plan", "bare.engine")
    assert header is None and bytes(plan) == b"ftrt\x00\x01plan"
    (tmp_path / "bare.engine").write_bytes(b"ftrt\x00\x01plan")
    assert read_header(tmp_path / "bare.engine") is None


def test_a_damaged_header_is_a_model_error():
    data = pack(HEADER, b"plan")
    broken = data[:20] + b"{" + data[21:]
    with pytest.raises(ModelError, match="damaged vidpipe engine header"):
        unpack(broken, "x.engine")


def test_an_engine_for_this_tensorrt_and_gpu_is_accepted():
    check_compatible(HEADER, "10.13.0.35", H100, "x.engine")


def test_an_engine_from_another_tensorrt_version_is_refused():
    with pytest.raises(ModelError) as err:
        check_compatible(HEADER, "10.14.1.48", H100, "x.engine")
    message = str(err.value)
    assert "built by TensorRT 10.13.0.35" in message and "10.14.1.48" in message
    assert "vidpipe build-engine" in message


def test_an_engine_for_another_gpu_is_refused():
    for device in (Device(0, "NVIDIA L4", (8, 9)), Device(0, "NVIDIA H100 PCIe", (9, 0))):
        with pytest.raises(ModelError, match=f"built for {HEADER.gpu}.*this GPU is {device.name}"):
            check_compatible(HEADER, "10.13.0.35", device, "x.engine")


def test_a_version_compatible_engine_runs_on_later_tensorrt_only():
    compatible = dataclasses.replace(HEADER, version_compatible=True)
    check_compatible(compatible, "10.14.1.48", H100, "x.engine")
    check_compatible(compatible, "11.0.0.1", H100, "x.engine", lean=True)
    with pytest.raises(ModelError, match="newer than the installed 10.12.0.36"):
        check_compatible(compatible, "10.12.0.36", H100, "x.engine")


def test_the_lean_runtime_refuses_an_engine_that_is_not_version_compatible():
    with pytest.raises(ModelError, match="lean runtime.*--version-compatible"):
        check_compatible(HEADER, "10.13.0.35", H100, "x.engine", lean=True)


@pytest.mark.parametrize(
    "text, expected",
    [("1:4:8", BatchProfile(1, 4, 8)), ("4", BatchProfile(4, 4, 4)), ("2:2:16", BatchProfile(2, 2, 16))],
)
def test_batch_profiles_parse(text, expected):
    assert BatchProfile.parse(text) == expected


@pytest.mark.parametrize("text", ["0:1:2", "4:2:8", "1:2", "a:b:c", ""])
def test_bad_batch_profiles_are_refused(text):
    with pytest.raises(ModelError, match="MIN:OPT:MAX"):
        BatchProfile.parse(text)


def test_the_profile_covers_the_batch_dimension_and_dynamic_spatial_dims():
    batch = BatchProfile(1, 4, 8)
    assert profile_shapes("images", (-1, 3, 320, 320), batch, None) == (
        (1, 3, 320, 320), (4, 3, 320, 320), (8, 3, 320, 320),
    )
    assert profile_shapes("images", (-1, 3, -1, -1), batch, (640, 384)) == (
        (1, 3, 384, 640), (4, 3, 384, 640), (8, 3, 384, 640),
    )
    assert profile_shapes("images", (2, 3, 320, 320), batch, None) == ((2, 3, 320, 320),) * 3


def test_the_profile_needs_a_size_for_dynamic_spatial_dims_and_respects_fixed_ones():
    with pytest.raises(ModelError, match="--input-size WxH"):
        profile_shapes("images", (-1, 3, -1, -1), BatchProfile(1, 1, 1), None)
    with pytest.raises(ModelError, match="fixed at 320x320"):
        profile_shapes("images", (-1, 3, 320, 320), BatchProfile(1, 1, 1), (640, 640))


def test_a_precision_the_gpu_lacks_is_refused_with_the_fix():
    old = Device(0, "Tesla K80", (3, 7))
    with pytest.raises(ModelError, match=r"Tesla K80 \(compute capability 3.7\) has no native fp16.*--precision fp32"):
        check_precision_supported("fp16", old)
    with pytest.raises(ModelError, match="no native int8"):
        check_precision_supported("int8", Device(0, "Jetson TX1", (5, 3)))
    for precision in ("fp32", "fp16", "int8"):
        check_precision_supported(precision, H100)


def test_timing_caches_are_kept_apart_per_tensorrt_version_and_gpu(tmp_path):
    a = timing_cache_path(tmp_path, "10.13.0.35", H100)
    assert a != timing_cache_path(tmp_path, "11.0.0.1", H100)
    assert a != timing_cache_path(tmp_path, "10.13.0.35", Device(0, "NVIDIA L4", (8, 9)))
    assert a.parent == tmp_path and " " not in a.name


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown where TensorRT is not installed")
def test_without_tensorrt_the_tensorrt_backend_is_one_line_and_exit_2(tmp_path, car_clip, capsys):
    assert main(["run", str(car_clip), "--backend", "tensorrt", "--quiet", "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidpipe: error: TensorRT is not installed") and "--backend onnxruntime" in err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown where TensorRT is not installed")
def test_without_tensorrt_build_engine_is_one_line_and_exit_2(tmp_path, capsys):
    from tests.conv_model import save_conv_detector

    model = save_conv_detector(tmp_path / "conv.onnx")
    assert main(["build-engine", str(model), "--precision", "fp16", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "TensorRT is not installed" in err and "\n" not in err


@pytest.mark.skipif(HAS_TENSORRT, reason="checks what inspect shows where TensorRT is not installed")
def test_inspect_describes_an_engine_from_its_header_without_tensorrt(tmp_path, capsys):
    path = tmp_path / "conv-int8.engine"
    path.write_bytes(pack(HEADER, b"plan"))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "built for: TensorRT 10.13.0.35 on NVIDIA H100 80GB HBM3 (compute capability 9.0)" in out
    assert "precision: int8" in out and "batch 1:4:8" in out
    assert "images  [-1, 3, 320, 320]  float32" in out
    assert "not loaded here: TensorRT is not installed" in out


class FakeEvent:
    """A CUDA event stand-in: done once `finish` is set."""

    def __init__(self) -> None:
        self.finish = threading.Event()

    def wait(self, timeout: float) -> bool:
        return self.finish.wait(timeout)


def test_a_context_is_freed_only_after_its_stream_is_done_and_never_on_the_callers_thread():
    done, freed = FakeEvent(), []
    start = time.monotonic()
    released = release_when_done(done, [lambda: freed.append(threading.current_thread().name)], "test")
    assert time.monotonic() - start < 0.1
    assert not released.wait(0.2) and freed == []
    done.finish.set()
    assert released.wait(5.0)
    assert freed == ["vidpipe-cuda-release"]


def test_a_sticky_cuda_error_is_raised_as_sticky():
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="needs cuda-python for its error names")
    from engines.cuda import check
    from engines.errors import InferenceError, StickyInferenceError

    with pytest.raises(StickyInferenceError, match="cudaEventQuery failed: cudaErrorIllegalAddress"):
        check((cudart.cudaError_t.cudaErrorIllegalAddress,), "cudaEventQuery")
    with pytest.raises(InferenceError, match="cudaMalloc failed: cudaErrorMemoryAllocation") as err:
        check((cudart.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc")
    assert type(err.value) is InferenceError
    assert check((cudart.cudaError_t.cudaSuccess, 42), "cudaMalloc") == 42
