"""A real HTTP server on localhost that records requests and answers as a test scripts it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LocalHTTPServer:
    """A threaded HTTP server on a free 127.0.0.1 port: the plumbing every fake shares."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        """Stop accepting requests (handlers already running go on)."""
        self._server.shutdown()

    def close(self) -> None:
        self._server.server_close()

    def stop(self) -> None:
        self.shutdown()
        self.close()


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class CapturingServer:
    """Answers each request with the next scripted Reply, then with `default`."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.replies: list[Reply] = []
        self.default = Reply()
        self.received = threading.Event()
        # Optional: a key per request (e.g. the booking id in the body); the most requests with
        # one key in progress at the same time is kept in `max_in_flight`.
        self.key_of: Callable[[RecordedRequest], str] | None = None
        self.max_in_flight: dict[str, int] = {}
        # Optional: called with each request before it is answered (to act while a worker waits).
        self.on_request: Callable[[RecordedRequest], None] | None = None
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = RecordedRequest(self.command, self.path, dict(self.headers), body)
                key = server.key_of(recorded) if server.key_of else None
                with server._lock:
                    server.requests.append(recorded)
                    reply = server.replies.pop(0) if server.replies else server.default
                    if key is not None:
                        server._in_flight[key] = server._in_flight.get(key, 0) + 1
                        server.max_in_flight[key] = max(server.max_in_flight.get(key, 0), server._in_flight[key])
                server.received.set()
                if server.on_request:
                    server.on_request(recorded)
                if reply.delay:
                    time.sleep(reply.delay)
                if key is not None:
                    with server._lock:
                        server._in_flight[key] -= 1
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout, killed worker): nothing to answer

            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LocalHTTPServer(Handler)

    @property
    def url(self) -> str:
        return self._http.url

    def respond_with(
        self, status: int = 200, body: bytes | str = b"{}", headers: dict[str, str] | None = None, delay: float = 0.0
    ) -> None:
        """Script the next answer (answers are used in the order they were scripted)."""
        if isinstance(body, str):
            body = body.encode()
        with self._lock:
            self.replies.append(Reply(status, body, headers or {}, delay))

    def start(self) -> CapturingServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()
