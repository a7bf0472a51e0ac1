"""Live sources (RTSP, RTMP, HTTP(S) MJPEG/HLS cameras, UDP/TCP/SRT streams): reconnect with
backoff and jitter, seq continues across outages.

An outage is published as `outage_start` / `outage_end` events (with its duration), so
subscribers see the gap; the frames around it keep consecutive seq numbers.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from engines.errors import SourceError
from stages.decode import NoVideo, VideoDecoder
from stages.redact import redact
from stages.source import StreamInfo, is_live
from stages.types import EventType, Frame, SourceEvent

DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "http": 80, "https": 443}


class LiveSource:
    """A live source (stages/source.py's Source): a VideoDecoder per connection, reconnected with
    backoff after an outage, with seq continuing across it. Raises SourceError at start when
    the stream cannot be opened in `connect_attempts` tries."""

    def __init__(
        self,
        name: str,
        url: str,
        deadline_s: float,
        transport: str = "tcp",
        open_timeout_s: float = 10.0,
        stall_s: float = 5.0,
        connect_attempts: int = 3,
        max_reconnects: int | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        decode: str = "cpu",
    ) -> None:
        self.name = name
        self.url = url
        self.deadline_s = deadline_s
        self.transport = transport
        self.open_timeout_s = open_timeout_s
        self.stall_s = stall_s
        self.max_reconnects = max_reconnects
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.decode = decode
        self.seq = 0
        self.reconnects = 0
        self.connected = False
        self._closed = threading.Event()
        self._decoder = self._connect(connect_attempts)
        self.info: StreamInfo = self._decoder.info

    def _open(self) -> VideoDecoder:
        # A short probe: FFmpeg's default buffers seconds of video before the first frame,
        # which a live pipeline then receives as one burst.
        options = {"analyzeduration": "500000", "probesize": "1000000"}
        if self.url.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = self.transport
        try:
            decoder = VideoDecoder(
                self.name,
                self.url,
                self.deadline_s,
                options=options,
                timeout=(self.open_timeout_s, self.stall_s),
                first_seq=self.seq,
                decode=self.decode,
                stall_s=self.stall_s,
            )
        except NoVideo:
            raise SourceError(self._no_video()) from None
        return decoder

    def _no_video(self) -> str:
        """Why opening gave no video: a connection that was made, or one that never was."""
        parts = urlsplit(self.url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        if parts.hostname and port and parts.scheme != "udp":
            try:
                socket.create_connection((parts.hostname, port), timeout=min(self.open_timeout_s, 3.0)).close()
            except OSError as err:
                return (
                    f"{self.url}: cannot connect ({err}); check the camera's address and the network, "
                    "or raise open_timeout_s for a slow link"
                )
        return (
            f"{self.url}: connected, but no video arrived within {self.open_timeout_s:g} s; check that the "
            "camera streams video at this path, or raise open_timeout_s if it is slow to start"
        )

    def _connect(self, attempts: int | None) -> VideoDecoder:
        """Open the stream, retrying with backoff; SourceError after `attempts` (None: forever)."""
        tried = 0
        while True:
            tried += 1
            try:
                decoder = self._open()
                self.connected = True
                return decoder
            except SourceError as err:
                if (attempts is not None and tried >= attempts) or self._closed.is_set():
                    raise SourceError(f"{err} (gave up after {tried} attempts)") from None
            self._closed.wait(self._backoff(tried))

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)  # jitter: cameras that dropped together don't retry together

    def __iter__(self) -> Iterator[Frame | SourceEvent]:
        while not self._closed.is_set():
            decoder, error = self._decoder, "stream ended"
            for item in decoder:
                if isinstance(item, Frame):
                    self.seq = item.seq + 1
                    yield item
                elif item.fatal:
                    error = str(item.details.get("error"))
                else:
                    yield item
            self.connected = False
            if self._closed.is_set():
                return
            started, began = time.time(), time.monotonic()
            yield SourceEvent(self.name, EventType.OUTAGE_START, self.seq - 1, started, {"error": error})
            try:
                self._decoder = self._connect(self.max_reconnects)
            except SourceError as err:
                if self._closed.is_set():
                    return  # stopped (a signal, --duration) while reconnecting: not a failure
                details = {"error": redact(str(err))}
                yield SourceEvent(self.name, EventType.SOURCE_FAILED, self.seq - 1, time.time(), details, fatal=True)
                return
            self.reconnects += 1
            yield SourceEvent(
                self.name,
                EventType.OUTAGE_END,
                self.seq - 1,
                time.time(),
                {"duration_s": round(time.monotonic() - began, 3), "started": started, "reconnects": self.reconnects},
            )

    @property
    def live(self) -> bool:
        return is_live(self.url)

    def stop(self) -> None:
        """Ask the reading thread to end: it leaves a reconnect wait at once, a read within stall_s."""
        self._closed.set()
        self._decoder.stop()

    def close(self) -> None:
        self._closed.set()
        self._decoder.close()
