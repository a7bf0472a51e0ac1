"""NVDEC decoding through PyAV's CUDA hwaccel, on a real NVIDIA GPU (skipped elsewhere)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.decode import VideoDecoder
from stages.types import Frame

has_gpu = shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not has_gpu, reason="needs an NVIDIA GPU and driver")]


def frames(path: Path, decode: str) -> list[Frame]:
    return [f for f in VideoDecoder("cam", str(path), 1.0, decode=decode) if isinstance(f, Frame)]


@pytest.mark.parametrize("clip, count", [("car_clip", 377), ("person_clip", 1394)])
def test_nvdec_decodes_every_frame_like_the_cpu(clip, count, request):
    path = request.getfixturevalue(clip)
    gpu, cpu = frames(path, "nvdec"), frames(path, "cpu")
    assert [f.seq for f in gpu] == [f.seq for f in cpu] == list(range(count))
    assert [f.time_s for f in gpu] == [f.time_s for f in cpu]
    for a, b in zip(gpu[::25], cpu[::25]):
        assert a.image.shape == b.image.shape
        # Different decoders and scalers: close, not bit-identical.
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 6
