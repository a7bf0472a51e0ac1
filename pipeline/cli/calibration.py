"""Calibration frames for int8: decoded and letterboxed by vidpipe's own stages.

Calibrating on exactly what the pipeline will feed the model (same decoder, same RGB
order, same letterbox and padding grey) is what makes the int8 ranges right.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from engines.errors import SourceError
from stages.decode import iter_images
from stages.preprocess import letterbox

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
CALIBRATION_FRAMES = 64
# Every 4th frame of a video: neighbouring frames are near-duplicates and add nothing.
FRAME_STEP = 4


def calibration_images(source: Path, max_images: int = CALIBRATION_FRAMES) -> Iterator[np.ndarray]:
    """RGB uint8 images from a video file or a folder of images."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"--calib {source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
        for path in files[:max_images]:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"--calib: cannot read image {path}; remove it or convert it to PNG/JPEG")
            yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return
    if not source.is_file():
        raise SourceError(f"--calib {source}: no such video or folder; check the path")
    count = 0
    for index, image in enumerate(iter_images(source, max_frames=max_images * FRAME_STEP)):
        if index % FRAME_STEP == 0:
            yield image
            count += 1
    if count == 0:
        raise SourceError(f"--calib {source}: no frames decoded; check it is a video vidpipe can read")


def calibration_batches(
    source: Path, input_size: tuple[int, int], max_images: int = CALIBRATION_FRAMES
) -> Iterator[np.ndarray]:
    """[1, 3, H, W] float32 batches, letterboxed to `input_size` (width, height)."""
    for image in calibration_images(source, max_images):
        tensor, _ = letterbox(image, input_size)
        yield tensor[None]
