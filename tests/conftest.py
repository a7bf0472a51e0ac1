"""Shared fixtures: real media, real models, real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO / ".." / "shared" / "media"
CAR_CLIP = MEDIA / "car-detection.mp4"
PERSON_CLIP = MEDIA / "one-by-one-person-detection.mp4"


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
