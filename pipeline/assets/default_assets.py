"""Regenerate vidpipe's embedded default: `python -m pipeline.assets.default_assets`."""

from pipeline.assets import DEFAULT_MODEL
from pipeline.assets.default_model import build_default_model
from pipeline.assets.sample_clip import SAMPLE_CLIP, make_sample_clip


def main() -> None:
    build_default_model(DEFAULT_MODEL)
    make_sample_clip(SAMPLE_CLIP)
    print(f"wrote {DEFAULT_MODEL} and {SAMPLE_CLIP}")


if __name__ == "__main__":
    main()
