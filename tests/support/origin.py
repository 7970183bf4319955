"""A real HTTP server on a loopback port, answering as a test scripts it: the origin the
`http.request` action calls in tests."""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # bytes or str as is; anything else as JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    # Send the body in pieces without a Content-Length (chunked), as a stream would.
    chunked: bool = False

    def payload(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), "application/json"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (a timeout, a size cap) is expected here."""
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError):
            super().handle_error(request, client_address)


class Origin:
    """`script(path, *answers)`: the answers to successive requests of `path` (the last one
    repeats); every request is kept in `received`."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.answers: dict[str, list[Answer]] = {}
        self.received: list[Received] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.partition("?")[0]
                origin.received.append(
                    Received(self.command, self.path, dict(self.headers), body, time.monotonic())
                )
                queue = origin.answers.get(path) or [Answer(404, {"error": "no such path"})]
                answer = queue.pop(0) if len(queue) > 1 else queue[0]
                time.sleep(answer.delay_s)
                payload, media = answer.payload()
                self.send_response(answer.status)
                headers = {"Content-Type": media, **answer.headers}
                if answer.chunked:
                    headers["Transfer-Encoding"] = "chunked"
                else:
                    headers.setdefault("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if answer.chunked:
                    for start in range(0, len(payload), 8192):
                        piece = payload[start : start + 8192]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_one

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server((host, 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host = host
        self.scheme = "https" if tls is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.server.server_port}"

    def script(self, path: str, *answers: Answer) -> str:
        """Script `path`'s answers; its full URL."""
        self.answers[path] = list(answers)
        return self.url + path

    def requests_of(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path.partition("?")[0] == path]


@contextmanager
def origin(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[Origin]:
    """A running Origin; `tls` (a server context) makes it answer HTTPS."""
    server = Origin(host, tls)
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
