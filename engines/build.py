"""Build a TensorRT engine from a prepared ONNX model (TensorRT 10 and 11).

The network is strongly typed: every tensor keeps the type the ONNX gives it, so the
precision is whatever engines/prepare.py wrote into the model (fp16 casts, int8 Q/DQ),
never a builder flag. TensorRT 11 removed those flags (BuilderFlag.FP16/INT8, the int8
calibrator); TensorRT 10 gets the STRONGLY_TYPED creation flag to behave the same way.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines import prepare
from engines.cache import CacheKey, EngineCache, sha256_file, write_atomic
from engines.cuda import Device, current_device
from engines.errors import ModelError
from engines.plan import EngineHeader, pack
from engines.trt_module import import_tensorrt, major_version, make_logger

log = logging.getLogger("vidpipe.tensorrt")

DEFAULT_WORKSPACE_MB = 1024
# Lowest compute capability with native support: fp16 arithmetic from 5.3, int8 dot
# products (DP4A) from 6.1. TensorRT 10 itself needs 7.5+, so this bites older builds of
# exotic setups first, but the message is better than a failed build.
MIN_COMPUTE_CAPABILITY = {"fp32": (0, 0), "fp16": (5, 3), "int8": (6, 1)}


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """'MIN:OPT:MAX' (or one number for a fixed batch)."""
        parts = text.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) == 1:
            values *= 3
        if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
            raise ModelError(f"batch profile {text!r}: expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:4:8")
        return cls(*values)

    def astuple(self) -> tuple[int, int, int]:
        return (self.min, self.opt, self.max)


DEFAULT_BATCH = BatchProfile(1, 4, 8)


def check_precision_supported(precision: str, device: Device) -> None:
    if precision not in MIN_COMPUTE_CAPABILITY:
        raise ModelError(f"unknown precision {precision!r}; use one of {', '.join(MIN_COMPUTE_CAPABILITY)}")
    need = MIN_COMPUTE_CAPABILITY[precision]
    if device.compute_capability < need:
        have = "{}.{}".format(*device.compute_capability)
        raise ModelError(
            f"{device.name} (compute capability {have}) has no native {precision}; it needs "
            f"{need[0]}.{need[1]} or newer: build with --precision fp32, or on a newer GPU"
        )


def profile_shapes(
    name: str, shape: tuple[int, ...], batch: BatchProfile, input_size: tuple[int, int] | None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes for one NCHW input; -1 marks a dynamic dimension."""
    if len(shape) != 4:
        raise ModelError(f"input '{name}' has shape {list(shape)}; vidpipe models take [batch, 3, height, width]")
    n, c, h, w = shape
    if c == -1:
        raise ModelError(f"input '{name}' has a dynamic channel dimension; export it with 3 channels")
    if h == -1 or w == -1:
        if input_size is None:
            raise ModelError(f"input '{name}' has a dynamic height/width; pass --input-size WxH (e.g. 640x640)")
        w, h = input_size
    elif input_size is not None and input_size != (w, h):
        raise ModelError(
            f"input '{name}' is fixed at {w}x{h}, not the --input-size {input_size[0]}x{input_size[1]}; "
            "drop --input-size or re-export the model with dynamic height/width"
        )
    if n == -1:
        sizes = batch.astuple()
    else:
        sizes = (n, n, n)
    return tuple((b, c, h, w) for b in sizes)  # type: ignore[return-value]


def timing_cache_path(cache_dir: Path, tensorrt_version: str, device: Device) -> Path:
    """One timing cache per TensorRT version and GPU: its timings mean nothing elsewhere."""
    gpu = "".join(ch if ch.isalnum() else "-" for ch in device.name).strip("-")
    return Path(cache_dir).expanduser() / f"timing-{tensorrt_version}-{gpu}.cache"


def _add_profile(builder, network, config, profile: BatchProfile, input_size: tuple[int, int] | None) -> BatchProfile:
    """One optimization profile over every input (min, opt, max shapes); the batch range it got."""
    optimization_profile = builder.create_optimization_profile()
    batch = profile
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shapes = profile_shapes(tensor.name, tuple(tensor.shape), profile, input_size)
        optimization_profile.set_shape(tensor.name, *shapes)
        batch = BatchProfile(shapes[0][0], shapes[1][0], shapes[2][0])
    config.add_optimization_profile(optimization_profile)
    return batch


def build_engine(
    onnx_path: Path,
    precision: str,
    profile: BatchProfile = DEFAULT_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache_path: Path | None = None,
    input_size: tuple[int, int] | None = None,
    version_compatible: bool = False,
) -> bytes:
    """The .engine file (vidpipe header + TensorRT plan) for an already prepared ONNX."""
    trt, _ = import_tensorrt(builder=True)
    device = current_device()
    check_precision_supported(precision, device)
    model = prepare.load(onnx_path)
    found = prepare.detect_precision(model)
    if found != precision:
        raise ModelError(
            f"model {onnx_path} is {found}, not {precision}: prepare it first "
            f"(vidpipe build-engine {onnx_path} --precision {precision} --prepare-only)"
        )
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 11 networks are always strongly typed and the flag is deprecated there.
    flags = 0 if major_version(trt) >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes(), str(onnx_path)):
        raise ModelError(_parser_message(parser, onnx_path))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)

    batch = _add_profile(builder, network, config, profile, input_size)

    cache = _attach_timing_cache(config, timing_cache_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(
            f"TensorRT could not build an engine from {onnx_path} ({logger.last_error()}); "
            "try a larger --workspace-mb or check the model with vidpipe inspect"
        )
    if timing_cache_path is not None:
        # Serialized after the build: the cache now holds this build's new timings too.
        write_atomic(timing_cache_path, bytes(cache.serialize()))

    header = EngineHeader(
        tensorrt=trt.__version__,
        gpu=device.name,
        compute_capability="{}.{}".format(*device.compute_capability),
        precision=precision,
        batch=batch.astuple(),
        input_size=input_size,
        onnx_sha256=sha256_file(Path(onnx_path)),
        version_compatible=version_compatible,
        inputs=[_describe(trt, network.get_input(i)) for i in range(network.num_inputs)],
        outputs=[_describe(trt, network.get_output(i)) for i in range(network.num_outputs)],
        onnx_metadata={p.key: p.value for p in model.metadata_props},
    )
    return pack(header, bytes(plan))


def _parser_message(parser: object, onnx_path: Path) -> str:
    errors = [parser.get_error(i) for i in range(parser.num_errors)]  # type: ignore[attr-defined]
    if not errors:
        return f"TensorRT's ONNX parser rejected {onnx_path}; check it with vidpipe inspect"
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (
        f"TensorRT's ONNX parser rejected {onnx_path} at node '{first.node_name()}' "
        f"({first.node_operator()}): {first.desc()}{more}; re-export the model with "
        "operators TensorRT supports, or run it with --backend onnxruntime"
    )


def _attach_timing_cache(config: object, path: Path | None) -> object:
    blob = b""
    if path is not None and Path(path).is_file():
        blob = Path(path).read_bytes()
    cache = config.create_timing_cache(blob)  # type: ignore[attr-defined]
    if not config.set_timing_cache(cache, False):  # type: ignore[attr-defined]
        log.warning("timing cache %s does not fit this TensorRT/GPU; starting a new one", path)
        cache = config.create_timing_cache(b"")  # type: ignore[attr-defined]
        config.set_timing_cache(cache, False)  # type: ignore[attr-defined]
    return cache


def _describe(trt: object, tensor: object) -> dict:
    return {
        "name": tensor.name,  # type: ignore[attr-defined]
        "shape": [int(d) for d in tensor.shape],  # type: ignore[attr-defined]
        "dtype": np.dtype(trt.nptype(tensor.dtype)).name,  # type: ignore[attr-defined]
    }


def find_or_build_engine(
    onnx_path: Path,
    precision: str | None = None,
    profile: BatchProfile = DEFAULT_BATCH,
    input_size: tuple[int, int] | None = None,
    cache_dir: Path | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
) -> Path:
    """The cached engine for this model, precision and profile, built on a miss.

    Without a precision the model's own is used (an fp16- or int8-prepared ONNX builds as
    such). An fp32 model is prepared here for fp16 (deterministic, so the key is stable);
    int8 needs calibration frames, so it asks for build-engine first.
    """
    trt, lean = import_tensorrt()
    cache = EngineCache(cache_dir)
    device = current_device()
    found = prepare.detect_precision(prepare.load(onnx_path))
    precision = precision or found
    if found != precision and found != "fp32":
        raise ModelError(f"model {onnx_path} is already {found}; for an {precision} engine give its fp32 original")
    if found != precision and precision == "int8":
        raise ModelError(
            f"an int8 engine for {onnx_path} needs calibration frames: run vidpipe build-engine "
            f"{onnx_path} --precision int8 --calib VIDEO_OR_DIR --prepare-only --output MODEL-int8.onnx, "
            "then run that model"
        )
    with tempfile.TemporaryDirectory(prefix="vidpipe-prepare-") as tmp:
        prepared = Path(onnx_path)
        if found != precision:
            prepared = prepare.prepare(Path(onnx_path), Path(tmp) / "prepared.onnx", precision)
        key = CacheKey.for_build(prepared, trt.__version__, device, precision, profile.astuple(), input_size)
        hit = cache.lookup(key, Path(onnx_path).name)
        if hit is not None:
            return hit
        if lean:
            raise ModelError(
                f"no cached engine for {onnx_path} and only the lean TensorRT runtime is installed, "
                "which cannot build; build it where tensorrt is installed and pass the .engine file"
            )
        log.info("building a %s TensorRT engine for %s (cached afterwards)", precision, onnx_path)
        data = build_engine(
            prepared,
            precision,
            profile,
            workspace_mb,
            timing_cache_path(cache.directory, trt.__version__, device),
            input_size,
        )
        return cache.store(key, Path(onnx_path).name, data)
