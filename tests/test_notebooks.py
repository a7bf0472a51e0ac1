"""The sample notebooks run top to bottom in a real Jupyter kernel, against a real redis-server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.redis_server import RedisServer

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
NOTEBOOKS = sorted(SAMPLES.glob("*.ipynb"))


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> str:
    """A `python3` kernel that runs this interpreter (JUPYTER_PATH comes before any user or
    system kernelspec), with the private Redis in VIDPIPE_REDIS_URL."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (vidpipe tests)",
        "language": "python",
    }))  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("VIDPIPE_REDIS_URL", redis_server.url)
    return "python3"


def test_the_promised_notebooks_are_there() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01-quickstart.ipynb", "02-subscribe.ipynb", "03-recovery.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebooks_have_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, kernel: str) -> None:
    notebook = nbformat.read(path, as_version=4)

    # Raises CellExecutionError, with the cell and its traceback, if any cell fails.
    NotebookClient(notebook, timeout=120, kernel_name=kernel, resources={"metadata": {"path": str(SAMPLES)}}).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "every sample draws at least one plot"
