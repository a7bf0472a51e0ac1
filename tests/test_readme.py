"""The README's promises: its first command works from a clean clone, and CI runs its test command."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_command(section: str) -> str:
    text = (REPO / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", body, re.S).group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert readme_command("Tests") in ci


@pytest.mark.timeout(1500)  # pip installs everything into a fresh venv: longer than the suite's 300 s
def test_the_quick_start_command_works_from_a_clean_clone(tmp_path):
    clone = tmp_path / "vidpipe"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.run(
        ["bash", "-c", readme_command("Quick start")],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (clone / "results.jsonl").read_text().splitlines()]
    frames = [r for r in records if r["type"] == "frame"]
    assert [r["seq"] for r in frames] == list(range(200))
    assert sum(bool(r["detections"]) for r in frames) > 150
    assert records[-1]["type"] == "summary" and records[-1]["balanced"]
    assert "frames 200" in proc.stdout
