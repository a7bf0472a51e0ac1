"""`vidpipe build-engine` and `vidpipe inspect`.

build-engine prepares the ONNX for a precision on the CPU (fp16 conversion, int8 Q/DQ
calibrated on frames vidpipe decodes itself), then builds and caches a TensorRT engine;
--prepare-only stops after the CPU step. inspect describes an ONNX model or an engine.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import onnx

from engines import prepare
from engines.build import (
    DEFAULT_BATCH,
    DEFAULT_WORKSPACE_MB,
    BatchProfile,
    build_engine,
    timing_cache_path,
)
from engines.cache import DEFAULT_CACHE_DIR, CacheKey, EngineCache, sha256_file, write_atomic
from engines.errors import ConfigError, ModelError
from engines.plan import read_header


def add_build_engine_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "build-engine",
        help="prepare an ONNX model for fp16/int8 and build a TensorRT engine",
        description=__doc__,
        allow_abbrev=False,  # --batch must not pass for --batch-profile: `vidpipe run --batch` is another thing
    )
    parser.add_argument("model", type=Path, help="the fp32 ONNX model (or one already prepared)")
    parser.add_argument(
        "--precision",
        choices=prepare.PRECISIONS,
        help="fp16 or int8 are written into the ONNX first (default: the model's own precision)",
    )
    parser.add_argument("--calib", type=Path, help="int8 calibration frames: a video or a folder of images")
    parser.add_argument(
        "--batch-profile",
        default=":".join(map(str, DEFAULT_BATCH.astuple())),
        help="batch sizes of the optimization profile, MIN:OPT:MAX, or one size (default %(default)s)",
    )
    parser.add_argument("--batch", dest="old_batch", help=argparse.SUPPRESS)  # renamed: says so in one line
    parser.add_argument("--input-size", help="WxH, for models with a dynamic height/width")
    parser.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB, help="builder workspace limit")
    parser.add_argument("--cache-dir", type=Path, help=f"engine and timing cache (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--output", type=Path, help="write here instead of the cache (the ONNX with --prepare-only)")
    parser.add_argument("--prepare-only", action="store_true", help="only write the prepared ONNX (no TensorRT needed)")
    parser.add_argument(
        "--version-compatible",
        action="store_true",
        help="build an engine later TensorRT versions and the lean runtime (tensorrt_lean) can run",
    )
    return parser


def add_inspect_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("inspect", help="describe an ONNX model or a TensorRT engine")
    parser.add_argument("model", type=Path, help="a .onnx model or a .engine file")
    return parser


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) <= 0 or int(height) <= 0:
        raise ConfigError(f"--input-size {text!r}: expected WxH, e.g. 640x640")
    return int(width), int(height)


def model_input_size(model: onnx.ModelProto, given: tuple[int, int] | None, origin: Path) -> tuple[int, int]:
    """(width, height) of the model's image input, or --input-size when it is dynamic."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
        return dims[3], dims[2]
    if given is None:
        raise ConfigError(f"model {origin} has a dynamic input size; pass --input-size WxH")
    return given


def run_build_engine(args: argparse.Namespace) -> int:
    model_path: Path = args.model
    model = prepare.load(model_path)
    input_size = parse_size(args.input_size)
    if args.old_batch is not None:
        raise ConfigError(
            f"build-engine --batch is now --batch-profile {args.old_batch} (MIN:OPT:MAX); "
            "vidpipe run --batch is the largest inference batch"
        )
    batch = BatchProfile.parse(args.batch_profile)
    found = prepare.detect_precision(model)
    precision: str = args.precision or found
    if args.prepare_only and args.output is None:
        raise ConfigError("--prepare-only writes the prepared ONNX to --output; give --output PATH")
    if args.calib is not None and precision != "int8":
        raise ConfigError("--calib is only used with --precision int8")
    if args.workspace_mb <= 0:
        raise ConfigError(f"--workspace-mb {args.workspace_mb}: must be positive")

    with tempfile.TemporaryDirectory(prefix="vidpipe-build-") as tmp:
        target = args.output if args.prepare_only else Path(tmp) / "prepared.onnx"
        if found == precision:
            prepared = model_path
            if args.prepare_only:
                shutil.copyfile(model_path, target)
        elif found != "fp32":
            raise ModelError(f"model {model_path} is already {found}; for {precision} give its fp32 original")
        else:
            batches = None
            if precision == "int8":
                if args.calib is None:
                    raise ConfigError("--precision int8 needs calibration frames: pass --calib VIDEO_OR_DIR")
                from pipeline.cli.calibration import calibration_batches

                batches = calibration_batches(args.calib, model_input_size(model, input_size, model_path))
            prepared = prepare.prepare(model_path, target, precision, batches)
        if args.prepare_only:
            print(f"wrote the {precision} ONNX model {target}")
            return 0
        return _build(args, model_path, prepared, precision, batch, input_size)


def _build(
    args: argparse.Namespace,
    model_path: Path,
    prepared: Path,
    precision: str,
    batch: BatchProfile,
    input_size: tuple[int, int] | None,
) -> int:
    from engines.cuda import current_device
    from engines.trt_module import import_tensorrt

    trt, _ = import_tensorrt(builder=True)
    device = current_device()
    cache = EngineCache(args.cache_dir)
    data = build_engine(
        prepared,
        precision,
        batch,
        args.workspace_mb,
        timing_cache_path(cache.directory, trt.__version__, device),
        input_size,
        args.version_compatible,
    )
    if args.output is not None:
        path = write_atomic(args.output, data)
    else:
        key = CacheKey.for_build(
            prepared, trt.__version__, device, precision, batch.astuple(), input_size, args.version_compatible
        )
        path = cache.store(key, model_path.name, data)
    print(f"wrote the {precision} TensorRT {trt.__version__} engine for {device.name} to {path}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    path: Path = args.model
    if not path.is_file():
        raise ModelError(f"{path}: no such file; check the path")
    if path.suffix.lower() == ".onnx":
        print("\n".join(describe_onnx(path)))
    else:
        print("\n".join(describe_engine(path)))
    return 0


def _value_line(value: onnx.ValueInfoProto) -> str:
    """One graph input or output: its name, dims and dtype."""
    tensor = value.type.tensor_type
    return f"  {value.name}  {_dims(tensor.shape)}  {_dtype(tensor.elem_type)}"


def _dims(shape: onnx.TensorShapeProto) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.dim_value > 0 else (d.dim_param or "?") for d in shape.dim) + "]"


def _dtype(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def describe_onnx(path: Path) -> list[str]:
    model = prepare.load(path)
    graph = model.graph
    precision = prepare.detect_precision(model)
    qdq = sum(node.op_type in prepare.QDQ_OPS for node in graph.node)
    lines = [
        f"model:     {path} (ONNX, sha256 {sha256_file(path)[:16]})",
        f"producer:  {model.producer_name or '?'} {model.producer_version}".rstrip(),
        "opset:     " + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import),
        f"precision: {precision}" + (f" (explicit Q/DQ: {qdq} QuantizeLinear/DequantizeLinear nodes)" if qdq else ""),
        "inputs:",
    ]
    initializers = {i.name for i in graph.initializer}
    for value in graph.input:
        if value.name not in initializers:
            lines.append(_value_line(value))
    lines.append("outputs:")
    for value in graph.output:
        lines.append(_value_line(value))
    if model.metadata_props:
        lines.append("metadata:")
        lines += [f"  {p.key}: {p.value}" for p in model.metadata_props]
    return lines


def describe_engine(path: Path) -> list[str]:
    header = read_header(path)
    lines = [f"engine:    {path} (TensorRT plan)"]
    if header is None:
        lines.append("built for: unknown (a bare TensorRT plan without vidpipe's header)")
    else:
        lines += [
            f"built for: TensorRT {header.tensorrt} on {header.gpu} (compute capability {header.compute_capability})"
            + (", version-compatible" if header.version_compatible else ""),
            f"precision: {header.precision}",
            "profile:   batch {}:{}:{} (min:opt:max)".format(*header.batch)
            + (" at {}x{}".format(*header.input_size) if header.input_size else ""),
            f"from ONNX: sha256 {header.onnx_sha256[:16]}",
            "inputs:",
            *[f"  {t['name']}  {t['shape']}  {t['dtype']}" for t in header.inputs],
            "outputs:",
            *[f"  {t['name']}  {t['shape']}  {t['dtype']}" for t in header.outputs],
        ]
    try:
        from engines.tensorrt import TensorRTEngine

        engine = TensorRTEngine(path)
    except ModelError as err:
        lines.append(f"not loaded here: {err}")
        return lines
    try:
        lean = " (lean runtime)" if engine.lean else ""
        lines.append(f"loaded by: TensorRT {engine.trt.__version__}{lean} on {engine.device.name}")
        for spec in engine.inputs:
            low, opt, high = engine.profiles[spec.name]
            lines.append(
                f"  input  {spec.name}  {spec.dtype.name}  profile 0: min {list(low)} opt {list(opt)} max {list(high)}"
            )
        for spec in engine.outputs:
            shape = ["?" if d is None else d for d in spec.shape]
            lines.append(f"  output {spec.name}  {spec.dtype.name}  {shape}")
    finally:
        engine.close()
    return lines


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add `vidpipe build-engine` or `vidpipe inspect` to the command line (pipeline/cli/main.py calls it)."""
    if name == "build-engine":
        add_build_engine_parser(sub).set_defaults(func=run_build_engine)
    else:
        add_inspect_parser(sub).set_defaults(func=run_inspect)
