"""The front of `serve`: each request's body is read in granian's event loop, with a deadline and a
size limit, and only a complete request is handed to a thread that runs the WSGI app.

Under granian's WSGI interface the app's thread reads the body itself, so a client that sends
headers and then a few bytes holds that thread: eight of them stalled `serve` (issue 13). Here a
slow or idle client costs a waiting coroutine, not a thread; a body that does not arrive within
`webhook.body_timeout` is answered 408 and its connection closed; one larger than
`webhook.max_body_bytes` (declared or, chunked, counted as it arrives) is answered 413.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from granian.rsgi import ProtocolClosed, ProtocolError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger("salon_bridge.web")

SIGNATURE = "x-salonbookit-signature"
# POST /webhooks, answered without building a WSGI environ: (body, signature) -> status, headers, body
Webhook = Callable[[bytes, str | None], tuple[int, list[tuple[str, str]], bytes]]

# What every request's environ shares (PEP 3333); per-request keys are added to a copy.
_BASE_ENVIRON: dict[str, Any] = {
    "GATEWAY_INTERFACE": "CGI/1.1",
    "SCRIPT_NAME": "",
    "SERVER_SOFTWARE": "salon-bridge (granian)",
    "wsgi.version": (1, 0),
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    # The body is complete and CONTENT_LENGTH says its size: safe to read to the end.
    "wsgi.input_terminated": True,
}
# Hop-by-hop framing: the front has already de-chunked the body and states its length.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


class BodyTooLarge(Exception):
    """The request's body is over the limit."""


class Front:
    """RSGI application wrapping a WSGI application (granian calls `__rsgi__` per request)."""

    def __init__(
        self,
        wsgi_app: WSGIApplication,
        threads: int,
        max_body: int,
        body_timeout: float,
        webhook: Webhook | None = None,
    ):
        self.wsgi_app = wsgi_app
        self.webhook = webhook
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="web")

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await self._read_body(scope, proto)
        except TimeoutError:
            log.info("slow client %s: %s %r body incomplete after %g s, answered 408", scope.client, scope.method,
                     scope.path, self.body_timeout)  # fmt: skip
            self._refuse(proto, 408, f"the request body did not arrive within {self.body_timeout:g} s")
            return
        except BodyTooLarge:
            self._refuse(proto, 413, f"body is larger than {self.max_body} bytes")
            return
        except (ProtocolClosed, ProtocolError):  # the client went away mid-body: nobody to answer
            return
        if self.webhook is not None and scope.path == "/webhooks" and scope.method == "POST":
            job = partial(self.webhook, body, scope.headers.get(SIGNATURE))
        else:
            job = partial(self._call, wsgi_environ(scope, body))
        try:
            answer = await asyncio.get_running_loop().run_in_executor(self.pool, job)
        except Exception:
            log.exception("the web app failed on %s %r", scope.method, scope.path)
            answer = 500, [("content-type", "application/json")], b'{"error": "internal error, see the log"}\n'
        proto.response_bytes(*answer)

    async def _read_body(self, scope: Any, proto: Any) -> bytes:
        declared = scope.headers.get("content-length")  # granian has refused a malformed one already
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_body:
                raise BodyTooLarge()
            return bytes(await proto())
        received = bytearray()
        async for chunk in proto:
            received += chunk
            if len(received) > self.max_body:
                raise BodyTooLarge()
        return bytes(received)

    def _refuse(self, proto: Any, status: int, message: str) -> None:
        payload = json.dumps({"error": message}).encode() + b"\n"
        # The rest of the body may still come: the connection cannot carry another request.
        headers = [("content-type", "application/json"), ("connection", "close")]
        proto.response_bytes(status, headers, payload)

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run the WSGI app on a pool thread and collect its whole answer."""
        answer: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer[:] = [int(status[:3]), headers]
            return lambda data: None

        result: Iterable[bytes] = self.wsgi_app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return answer[0], answer[1], payload


def wsgi_environ(scope: Any, body: bytes) -> dict[str, Any]:
    """The WSGI environ of one RSGI request whose body has been read."""
    host, _, port = scope.server.rpartition(":")
    client, _, client_port = scope.client.rpartition(":")
    environ = {
        **_BASE_ENVIRON,
        "REQUEST_METHOD": scope.method,
        # RSGI gives the path percent-decoded as text; WSGI wants its UTF-8 bytes as Latin-1 text.
        "PATH_INFO": scope.path.encode().decode("latin-1"),
        "QUERY_STRING": scope.query_string,
        "SERVER_NAME": host,
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
        "REMOTE_ADDR": client,
        "REMOTE_PORT": client_port,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body),
    }
    for name, value in scope.headers.items():
        if name in _FRAMING:
            continue
        key = "CONTENT_TYPE" if name == "content-type" else "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
