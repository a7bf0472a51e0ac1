"""Shared fixtures: real media, real models, real processes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO / ".." / "shared" / "media"
CAR_CLIP = MEDIA / "car-detection.mp4"
PERSON_CLIP = MEDIA / "one-by-one-person-detection.mp4"


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A test that runs the CLI in this process configures the root logger (its handler and
    level): each test gets it back as it found it, so no test's logging leaks into the next."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def media() -> Path:
    if not CAR_CLIP.exists():
        pytest.skip(f"test media not found at {MEDIA}")
    return MEDIA


@pytest.fixture(scope="session")
def car_clip(media: Path) -> Path:
    return media / "car-detection.mp4"


@pytest.fixture(scope="session")
def person_clip(media: Path) -> Path:
    return media / "one-by-one-person-detection.mp4"


# ---- generated clips (decode, preprocess, pipeline and CLI tests) ----------------------------

ODD_SIZE = (641, 359)  # odd in both dimensions: encoded 4:4:4, letterboxed with uneven pads
VFR_FPS, VFR_STEPS = 25, [100, 50, 200, 100, 30]  # frame intervals in 1/(fps * 100) s


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def odd_clip(clip_dir: Path) -> Path:
    """31 frames of 641x359: an odd frame count too, so fixed batches must be padded."""
    from tests.clips import make_clip

    return make_clip(clip_dir / "odd.mp4", frames=31, size=ODD_SIZE)


@pytest.fixture(scope="session")
def vfr_clip(clip_dir: Path) -> Path:
    from tests.clips import make_clip

    return make_clip(clip_dir / "vfr.mp4", frames=60, fps=VFR_FPS, pts_steps=VFR_STEPS)


@pytest.fixture(scope="session")
def tiny_clip(clip_dir: Path) -> Path:
    from tests.clips import make_clip

    return make_clip(clip_dir / "tiny.mp4", frames=16)


@pytest.fixture(scope="session")
def truncated_car_clip(car_clip: Path, clip_dir: Path) -> Path:
    from tests.clips import truncate

    return truncate(car_clip, clip_dir / "car-truncated.mp4")


@pytest.fixture(scope="session")
def corrupt_car_clip(car_clip: Path, clip_dir: Path) -> Path:
    """The car clip with 3 video packets in its middle damaged (see clips.corrupt_middle)."""
    from tests.clips import corrupt_middle

    return corrupt_middle(car_clip, clip_dir / "car-corrupt.mp4", packets=3)


@pytest.fixture(scope="session")
def not_video(clip_dir: Path) -> Path:
    """Random bytes with a video file's name."""
    import numpy as np

    path = clip_dir / "noise.mp4"
    path.write_bytes(np.random.default_rng(7).bytes(100_000))
    return path


# --- Redis: private servers on free ports (tests/redis_server.py) ---
# Imported inside the fixtures, so the GPU machine (no redis-py there) can still collect tests.


@pytest.fixture
def make_redis_server(tmp_path: Path):
    """Factory: make_redis_server(start=True, password=None, aof=False); all are killed at the end."""
    from tests.redis_server import RedisServer

    servers: list[RedisServer] = []

    def make(start: bool = True, **options) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", **options)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(make_redis_server):
    return make_redis_server()


# ---- load: timing-sensitive tests run beside a CPU hog ---------------------------------------


@pytest.fixture
def cpu_hog():
    """One busy process per usable CPU for the test's duration: deadlines, recovery, shedding
    and live sources must hold on a loaded machine, not only on an idle one."""
    import os
    import subprocess
    import sys

    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(len(os.sched_getaffinity(0)))
    ]
    yield len(hogs)
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


@pytest.fixture(scope="session")
def bench_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """samples/bench_model.py's detector-sized model (about 5 GFLOPs a frame at 640x640)."""
    import importlib.util

    import onnx

    spec = importlib.util.spec_from_file_location("bench_model", REPO / "samples" / "bench_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path_factory.mktemp("models") / "bench-model.onnx"
    onnx.save(module.build(), path)
    return path
