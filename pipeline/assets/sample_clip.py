"""The bundled sample clip: red, green and blue objects crossing grey asphalt, with ground truth.

Made for the embedded default model (pipeline/assets/default_model.py), whose detections the tests
compare with `scene_objects`. `python -m pipeline.assets.default_assets` regenerates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

SAMPLE_CLIP = Path(__file__).parent / "sample.mp4"

WIDTH, HEIGHT, FPS, FRAME_COUNT = 640, 360, 25, 200
SEED = 20240611
CRF = "23"


@dataclass(frozen=True)
class Track:
    """One object moving in a straight line; (x, y) is its centre at frame 0, in source pixels."""

    class_id: int
    shape: str  # "rect" or "disc"
    width: float
    height: float
    x: float
    y: float
    vx: float
    vy: float

    def centre(self, index: int) -> tuple[float, float]:
        return self.x + self.vx * index, self.y + self.vy * index


# Drawn in this order (later ones on top). Same-colour objects keep to lanes far apart.
TRACKS: tuple[Track, ...] = (
    Track(0, "rect", 86, 40, -60, 70, 3.4, 0.0),
    Track(2, "disc", 46, 46, 720, 150, -4.8, 0.0),
    Track(1, "rect", 28, 56, 120, 205, 2.2, 0.0),
    Track(0, "disc", 24, 24, -200, 292, 6.5, 0.0),
    Track(1, "disc", 70, 70, 800, 300, -2.0, 0.0),
    Track(2, "rect", 60, 22, 500, 380, -1.2, -1.1),
)
COLOURS = np.array([(0.82, 0.16, 0.14), (0.14, 0.76, 0.18), (0.14, 0.24, 0.86)], np.float32)


def _span_coverage(lo: float, hi: float, n: int) -> np.ndarray:
    """How much of each pixel [i, i + 1) the interval [lo, hi) covers."""
    i = np.arange(n, dtype=np.float32)
    return np.clip(np.minimum(i + 1, hi) - np.maximum(i, lo), 0, 1)


def _coverage(track: Track, index: int) -> np.ndarray:
    """The fraction of each frame pixel the object covers at frame `index` ([H, W])."""
    cx, cy = track.centre(index)
    if track.shape == "rect":
        xs = _span_coverage(cx - track.width / 2, cx + track.width / 2, WIDTH)
        ys = _span_coverage(cy - track.height / 2, cy + track.height / 2, HEIGHT)
        return np.outer(ys, xs)
    radius = track.width / 2
    xs = np.arange(WIDTH, dtype=np.float32) + 0.5 - cx
    ys = np.arange(HEIGHT, dtype=np.float32)[:, None] + 0.5 - cy
    return np.clip(radius + 0.5 - np.sqrt(xs * xs + ys * ys), 0, 1)


def _visible_coverages(index: int) -> list[np.ndarray]:
    """Each track's coverage with what the tracks drawn over it hide taken away."""
    coverages = [_coverage(track, index) for track in TRACKS]
    visible = []
    for k, coverage in enumerate(coverages):
        for above in coverages[k + 1 :]:
            coverage = coverage * (1 - above)
        visible.append(coverage)
    return visible


def _edges(profile: np.ndarray) -> tuple[float, float] | None:
    """The sub-pixel extent of a coverage profile (max coverage along one axis)."""
    inside = np.flatnonzero(profile > 0.01)
    if len(inside) == 0:
        return None
    first, last = inside[0], inside[-1]
    return float(first + 1 - profile[first]), float(last + profile[last])


def scene_objects(index: int) -> list[tuple[int, float, float, float, float]]:
    """Ground truth for frame `index`: (class_id, x1, y1, x2, y2) of each object's visible part."""
    objects = []
    for track, visible in zip(TRACKS, _visible_coverages(index)):
        xs, ys = _edges(visible.max(axis=0)), _edges(visible.max(axis=1))
        if xs is not None and ys is not None:
            objects.append((track.class_id, xs[0], ys[0], xs[1], ys[1]))
    return objects


def _asphalt(rng: np.random.Generator) -> np.ndarray:
    """A grey [H, W] road: blotches, grain and dashed lane marks. Neutral grey never
    triggers a colour mask, yet its grain keeps the encoder busy."""
    blotches = cv2.GaussianBlur(rng.normal(0, 1, (HEIGHT, WIDTH)).astype(np.float32), (0, 0), 5)
    blotches /= blotches.std()
    road = np.full((HEIGHT, WIDTH), 0.40, np.float32) + 0.035 * blotches
    for y in (112, 248):
        for x in range(0, WIDTH, 90):
            road[y - 2 : y + 2, x : x + 45] = 0.80
    road += rng.normal(0, 0.045, (HEIGHT, WIDTH)).astype(np.float32)
    return np.clip(road, 0, 1)


def _render(index: int, road: np.ndarray) -> np.ndarray:
    """Frame `index` as RGB uint8 [H, W, 3]."""
    image = np.repeat(road[:, :, None], 3, axis=2)
    for track in TRACKS:
        alpha = _coverage(track, index)[:, :, None]
        image = image * (1 - alpha) + COLOURS[track.class_id] * alpha
    return (image * 255 + 0.5).clip(0, 255).astype(np.uint8)


def make_sample_clip(path: Path) -> None:
    """Write the sample clip (8 s, 640x360, 25 fps, H.264 yuv420p) to `path`. The content is
    fixed; the bytes depend only on the libx264 build."""
    road = _asphalt(np.random.default_rng(SEED))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264", rate=FPS, options={"crf": CRF, "preset": "medium", "g": str(2 * FPS)}
        )
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for index in range(FRAME_COUNT):
            frame = av.VideoFrame.from_ndarray(_render(index, road), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
