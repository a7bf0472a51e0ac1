"""The .engine file: a small vidpipe header in front of TensorRT's serialized plan.

A TensorRT plan runs only on the TensorRT version and the GPU it was built for, and
TensorRT's own error for a mismatch is a log line and a None. The header records both,
so a wrong engine is refused with one clear sentence before TensorRT ever sees it, and
`vidpipe inspect` can describe an engine without TensorRT installed.

Layout: MAGIC, a little-endian uint32 header length, the header as UTF-8 JSON, the plan.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engines.cuda import Device
from engines.errors import ModelError

MAGIC = b"VIDPIPE-TRT\x00"
FORMAT = 1


@dataclass(frozen=True)
class EngineHeader:
    tensorrt: str
    gpu: str
    compute_capability: str  # "major.minor"
    precision: str
    batch: tuple[int, int, int]  # min, opt, max of the optimization profile
    input_size: tuple[int, int] | None  # (width, height) when the model's were dynamic
    onnx_sha256: str  # of the prepared ONNX the plan was built from
    version_compatible: bool = False
    inputs: list[dict] = field(default_factory=list)  # name, shape, dtype as built
    outputs: list[dict] = field(default_factory=list)
    onnx_metadata: dict[str, str] = field(default_factory=dict)  # e.g. Ultralytics' `names`

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, origin: str) -> EngineHeader:
        try:
            fields = json.loads(data)
            if fields.pop("format") != FORMAT:
                raise ValueError("unknown header format")
            fields["batch"] = tuple(fields["batch"])
            if fields["input_size"] is not None:
                fields["input_size"] = tuple(fields["input_size"])
            return cls(**fields)
        except (ValueError, KeyError, TypeError) as err:
            raise ModelError(
                f"{origin}: damaged vidpipe engine header ({err}); rebuild it with vidpipe build-engine"
            ) from None


def pack(header: EngineHeader, plan: bytes) -> bytes:
    meta = header.to_json()
    return MAGIC + struct.pack("<I", len(meta)) + meta + bytes(plan)


def unpack(data: bytes, origin: str) -> tuple[EngineHeader | None, memoryview]:
    """Split an engine file into (header, plan); a bare TensorRT plan has no header."""
    view = memoryview(data)
    if not data.startswith(MAGIC):
        return None, view
    start = len(MAGIC) + 4
    if len(data) < start:
        raise ModelError(f"{origin}: truncated engine file; rebuild it with vidpipe build-engine")
    (size,) = struct.unpack_from("<I", data, len(MAGIC))
    header = EngineHeader.from_json(bytes(view[start : start + size]), origin)
    return header, view[start + size :]


def read_header(path: Path) -> EngineHeader | None:
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 4)
        if not head.startswith(MAGIC) or len(head) < len(MAGIC) + 4:
            return None
        (size,) = struct.unpack_from("<I", head, len(MAGIC))
        return EngineHeader.from_json(f.read(size), str(path))


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def check_compatible(
    header: EngineHeader, tensorrt_version: str, device: Device, origin: str, lean: bool = False
) -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming both and the fix."""
    rebuild = "rebuild it on this machine with: vidpipe build-engine MODEL.onnx"
    cc = "{}.{}".format(*device.compute_capability)
    if header.compute_capability != cc or header.gpu != device.name:
        raise ModelError(
            f"{origin} was built for {header.gpu} (compute capability {header.compute_capability}), "
            f"this GPU is {device.name} ({cc}); {rebuild}"
        )
    if lean and not header.version_compatible:
        raise ModelError(
            f"{origin} is not version-compatible, and only the lean runtime (tensorrt_lean) is "
            "installed, which runs version-compatible engines only; rebuild it with "
            "vidpipe build-engine --version-compatible, or install tensorrt"
        )
    built, running = version_tuple(header.tensorrt), version_tuple(tensorrt_version)
    if header.version_compatible:
        if running < built:
            raise ModelError(
                f"{origin} was built by TensorRT {header.tensorrt}, newer than the installed "
                f"{tensorrt_version}; upgrade TensorRT or {rebuild}"
            )
    elif built != running:
        raise ModelError(
            f"{origin} was built by TensorRT {header.tensorrt}, this is TensorRT "
            f"{tensorrt_version}; {rebuild}"
        )
