"""The HTTP server of /metrics, /healthz and /readyz (`--metrics-port`; what they serve is
pipeline/observability/metrics.py).

The server listens on 127.0.0.1 unless `metrics.host` opens it. Each connection serves one
request (HTTP/1.0), which must arrive and be answered within REQUEST_TIMEOUT_S; at most
MAX_CONNECTIONS are served at once and more are answered 503 at once, so idle or slow
clients cannot pile up threads and file descriptors. A connection cut under a request (the
client left, or the timeout cut it) is expected: one debug line, never a traceback.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from engines.errors import OutputError
from pipeline.observability.metrics import RunMetrics

log = logging.getLogger("vidpipe.metrics")

REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 16
# A connection that ended under a request: the client left, or REQUEST_TIMEOUT_S cut it.
CUT = (ConnectionError, TimeoutError)
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS of them; the rest get 503 at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(0)
                request.send(_BUSY)  # a fresh socket's send buffer takes it whole: never blocks
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection cut (by the client, or by us past the request timeout) is expected: one
        debug line. Anything else is a bug: logged with its traceback (not printed raw to stderr)."""
        err = sys.exc_info()[1]
        if isinstance(err, CUT):
            log.debug("metrics: connection from %s cut (%s)", client_address[0], err)
        else:
            log.error("metrics: request from %s failed", client_address[0], exc_info=True)


class MetricsServer:
    """/metrics, /healthz and /readyz over HTTP on host:port in a daemon thread, until close().

    Raises OutputError when it cannot listen there (port in use, unknown host).
    """

    def __init__(
        self, metrics: RunMetrics, port: int, host: str = "127.0.0.1", request_timeout_s: float = REQUEST_TIMEOUT_S
    ) -> None:
        handler = type("Handler", (_Handler,), {"metrics": metrics, "timeout": request_timeout_s})
        try:
            self._server = _Server((host, port), handler)
        except OSError as err:
            raise OutputError(
                f"metrics port {port}: cannot listen on {host} ({err.strerror or err}); "
                "choose a free port (0 for any) and an address of this machine (--metrics-host)"
            ) from None
        self.port = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        metrics.url = f"http://{shown}:{self.port}/metrics"
        self._thread = threading.Thread(target=self._server.serve_forever, name="vidpipe-metrics", daemon=True)
        self._thread.start()
        if port == 0:
            log.warning("serving metrics on port %d of %s (/metrics, /healthz, /readyz)", self.port, host)
        else:
            log.info("serving metrics on port %d of %s (/metrics, /healthz, /readyz)", self.port, host)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    metrics: RunMetrics
    timeout = REQUEST_TIMEOUT_S  # each read and write on the socket, and the whole request

    def setup(self) -> None:
        super().setup()
        # A client sending a byte now and then would pass the per-read timeout forever:
        # the whole request and answer get `timeout` seconds, then the socket is cut.
        self._cut = threading.Timer(self.timeout, self._cut_off)
        self._cut.daemon = True
        self._cut.start()

    def finish(self) -> None:
        self._cut.cancel()
        super().finish()

    def _cut_off(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        try:
            self._answer(self.path.split("?", 1)[0])
        except CUT as err:  # the client went, or the request timeout cut it: nothing to answer
            log.debug("metrics: %s from %s cut (%s)", self.path, self.client_address[0], err)
        except Exception as err:  # a bug here must show, but never end the run or hang a scraper
            log.exception("metrics endpoint %s failed", self.path)
            self._json(500, {"error": str(err)})

    def _answer(self, path: str) -> None:
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self.metrics.scrape())
        elif path == "/healthz":
            self._json(200, {"alive": True})
        elif path == "/readyz":
            state = self.metrics.readiness.state()
            self._json(200 if state["ready"] else 503, state)
        else:
            self._json(404, {"error": f"no such endpoint {path}; try /metrics, /healthz or /readyz"})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(body).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s %s", self.address_string(), format % args)
