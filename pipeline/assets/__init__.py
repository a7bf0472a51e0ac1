"""vidpipe's embedded default model and sample clip, and the code that regenerates them.

`python -m pipeline.assets.default_assets` rebuilds both files. The model's path lives here,
not in default_model.py, so that loading the model does not import onnx, which only building
it needs (about 80 ms of every run's start).
"""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).parent / "default.onnx"
