"""What the small internal HTTP servers share (a worker's /health and /metrics, the API's
metrics listener): answers written whole with their length, problem-shaped 404 and 500
bodies, and request lines logged at DEBUG instead of on stderr."""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)
NOT_FOUND = b'{"status": 404, "title": "Not Found"}'
INTERNAL_ERROR = b'{"status": 500, "title": "Internal error"}'


class ProbeServer(ThreadingHTTPServer):
    """One thread per request; none of them keeps the process alive."""

    daemon_threads = True


class ProbeHandler(BaseHTTPRequestHandler):
    """A request to an internal server; `label` names the server in its log lines."""

    label = "probe server"

    def send_whole(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def not_found(self) -> None:
        self.send_whole(404, NOT_FOUND, "application/json")

    def failed(self, what: str) -> None:
        """A 500, the exception being handled logged with its traceback."""
        log.exception("%s: %s failed", self.label, what)
        self.send_whole(500, INTERNAL_ERROR, "application/json")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug(f"{self.label}: " + format, *args)
