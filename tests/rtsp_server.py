"""A real RTSP server on loopback (aio-rtsp-toolkit: pure Python on PyAV, TCP only) serving a folder."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    def __init__(self, folder: Path, log: Path) -> None:
        self.folder = folder
        self.log = log
        self.port = free_port()
        self.control_port = free_port()
        self.process: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{name}"

    def start(self) -> RtspServer:
        code = "import sys; from server_demo import main; sys.exit(main())"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, "--dir", str(self.folder), "--host", "127.0.0.1",
             "--port", str(self.port), "--control-port", str(self.control_port)],
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"RTSP server did not start; see {self.log}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


GST_PYTHON = "/usr/bin/python3"  # GStreamer's Python bindings come from Debian, for the system Python


def gst_rtsp_available() -> bool:
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    try:
        return subprocess.run([GST_PYTHON, "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class GstRtspServer:
    """Debian's GStreamer RTSP server (TCP and UDP) serving one mp4 at rtsp://127.0.0.1:PORT/stream."""

    def __init__(self, video: Path, log: Path) -> None:
        self.video = video
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/stream"

    def start(self) -> GstRtspServer:
        script = Path(__file__).with_name("gst_rtsp_server.py")
        self.process = subprocess.Popen(
            [GST_PYTHON, str(script), str(self.port), str(self.video)],
            stdout=subprocess.PIPE,
            stderr=open(self.log, "ab"),
            text=True,
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"GStreamer RTSP server did not start; see {self.log}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> GstRtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
