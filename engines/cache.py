"""Built engines, stored under a key of everything that makes a plan valid.

A plan is only good for the exact prepared ONNX, TensorRT version, GPU and build
settings it came from; the key hashes all of them, so a change in any one is a miss
(and a rebuild), never a stale engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engines.errors import ModelError

DEFAULT_CACHE_DIR = Path("~/.cache/vidpipe/engines")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    onnx_sha256: str  # of the prepared ONNX, so fp16/int8 variants never collide
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    batch: tuple[int, int, int]
    input_size: tuple[int, int] | None = None
    version_compatible: bool = False

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @classmethod
    def for_build(
        cls,
        prepared: Path,
        tensorrt_version: str,
        device: Any,
        precision: str,
        batch: tuple[int, int, int],
        input_size: tuple[int, int] | None,
        version_compatible: bool = False,
    ) -> CacheKey:
        """The key of an engine built from `prepared` on `device` (an engines.cuda.Device)."""
        return cls(
            onnx_sha256=sha256_file(prepared),
            tensorrt=tensorrt_version,
            gpu=device.name,
            compute_capability="{}.{}".format(*device.compute_capability),
            precision=precision,
            batch=batch,
            input_size=input_size,
            version_compatible=version_compatible,
        )


class EngineCache:
    """A directory of `<model>-<precision>-<key>.engine` files."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory or DEFAULT_CACHE_DIR).expanduser()

    def path(self, key: CacheKey, model_name: str) -> Path:
        return self.directory / f"{Path(model_name).stem}-{key.precision}-{key.digest()[:20]}.engine"

    def lookup(self, key: CacheKey, model_name: str) -> Path | None:
        path = self.path(key, model_name)
        return path if path.is_file() else None

    def store(self, key: CacheKey, model_name: str, data: bytes) -> Path:
        return write_atomic(self.path(key, model_name), data)


def write_atomic(path: Path, data: bytes) -> Path:
    """Write via a temporary file and rename, so a reader never sees half an engine."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        raise ModelError(f"cannot write {path} ({err.strerror}); check the directory is writable") from None
    return path
