"""`vidpipe` as a user runs it: a real process, its exit code, stdout, stderr and JSONL output.

The one way the tests start the CLI: the installed console script beside this Python, else
`python -m pipeline.cli`. Output is text; extra keyword arguments go to subprocess (cwd, env,
preexec_fn, stdout, ...).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).parent / "vidpipe"
VIDPIPE = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "pipeline.cli"]


def vidpipe(*args: str, timeout: float = 120, **popen: Any) -> subprocess.CompletedProcess[str]:
    """`vidpipe ARGS` to its end, its stdout and stderr captured; TimeoutExpired past timeout s."""
    return subprocess.run([*VIDPIPE, *args], capture_output=True, text=True, timeout=timeout, **popen)


def vidpipe_run(*args: str, timeout: float = 120, **popen: Any) -> subprocess.CompletedProcess[str]:
    """`vidpipe run --quiet ARGS` to its end (see `vidpipe`)."""
    return vidpipe("run", "--quiet", *args, timeout=timeout, **popen)


def start(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """`vidpipe ARGS` started, not waited for; stdout and stderr are pipes unless popen says otherwise."""
    return subprocess.Popen([*VIDPIPE, *args], **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen},
                            text=True)  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSONL file (`--out`), in order."""
    return [json.loads(line) for line in path.read_text().splitlines()]
