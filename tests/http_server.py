"""A real HTTP camera on loopback: multipart MJPEG (what most IP cameras serve), in a thread.

`/cam.mjpg?frames=N&then=hang|close` sends N JPEG frames at `fps`, then either keeps the
connection open and silent (a hung camera) or closes it; with `once=1` later connections
to it get no frames (a camera that stays down). `/stream.ts?then=hang` sends the
bytes of `ts` (an H.264 MPEG-TS clip) in small timed chunks, the same way. `/novideo`
answers with the MJPEG headers and never sends a frame (a camera that connects but
streams nothing).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

BOUNDARY = "vidpipeframe"


def jpeg(i: int, size: tuple[int, int] = (320, 240)) -> bytes:
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = (np.arange(width) * 255 // width)[None, :]
    image[:, :, 1] = (7 * i) % 256
    return cv2.imencode(".jpg", image)[1].tobytes()


class MjpegCamera:
    def __init__(self, fps: float = 25.0, ts: bytes = b"") -> None:
        self.fps = fps
        self.ts = ts
        self.released = threading.Event()  # ends the silent waits at shutdown
        self.connections = 0
        self.served: set[str] = set()
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                camera.connections += 1
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                self.send_response(200)
                if url.path == "/stream.ts":
                    self.send_header("Content-Type", "video/mp2t")
                    self.end_headers()
                    self._send_ts(query)
                    return
                self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
                self.end_headers()
                first = self.path not in camera.served
                camera.served.add(self.path)
                if url.path == "/novideo" or (query.get("once") and not first):
                    camera.released.wait()
                    return
                try:
                    for i in range(int(query.get("frames", "1000000"))):
                        data = jpeg(i)
                        self.wfile.write(
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                            + data + b"\r\n"
                        )
                        self.wfile.flush()
                        time.sleep(1 / camera.fps)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if query.get("then") == "hang":
                    camera.released.wait()

            def _send_ts(self, query: dict[str, str]) -> None:
                chunk = 188 * 16
                try:
                    for at in range(0, len(camera.ts), chunk):
                        self.wfile.write(camera.ts[at : at + chunk])
                        self.wfile.flush()
                        time.sleep(0.01)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if query.get("then") == "hang":
                    camera.released.wait()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> MjpegCamera:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
