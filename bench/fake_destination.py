"""A fake HTTP destination for the drain benchmark: answers every request, after an optional delay.

    .venv/bin/python bench/fake_destination.py --port 9100                 # zero latency
    .venv/bin/python bench/fake_destination.py --port 9100 --delay-ms 100  # a slow CRM
    .venv/bin/python bench/fake_destination.py --port 9100 --throttle-every 10 --retry-after 30
    curl http://127.0.0.1:9100/stats    # {"requests": N, "throttled": M}
    .venv/bin/python bench/fake_destination.py --port 9100 --record   # also count calls per key
    curl http://127.0.0.1:9100/calls    # {"<Idempotency-Key>": calls, ...}: what bench/scaleout.py checks
    .venv/bin/python bench/fake_destination.py --port 9100 --arrivals  # also note when each call came
    curl http://127.0.0.1:9100/arrivals # {"<body's event>": unix time, ...}, then forgets them (bench/latency.py)

Real HTTP/1.1 with keep-alive over asyncio (one process, no thread per request), so that a
zero-latency destination costs the machine far less than the workers that call it, and a 100 ms
destination can hold hundreds of calls in flight. `--throttle-every N` answers every Nth call
429 with Retry-After, to show that a throttled call does not hold a worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.throttled = 0
        self.calls: dict[str, int] = {}  # per Idempotency-Key (the bridge's event/action), with --record
        self.arrivals: dict[str, float] = {}  # the body's "event" -> when its request was read, with --arrivals


class HttpProtocol(asyncio.Protocol):
    def __init__(self, args: argparse.Namespace, counters: Counters):
        self.args = args
        self.counters = counters
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            close = False
            idempotency_key = ""
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
                elif name == "idempotency-key":
                    idempotency_key = value.strip()
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            path = head.split(" ", 2)[1] if " " in head else "/"
            if self.args.arrivals and body:
                self.note_arrival(body)
            self.answer(path, close, idempotency_key)

    def note_arrival(self, body: bytes) -> None:
        arrived = time.time()  # before anything else: the wall clock the sender's schedule uses
        try:
            event = json.loads(body).get("event")
        except (ValueError, AttributeError):
            return
        if isinstance(event, str):
            self.counters.arrivals.setdefault(event, arrived)  # a repeat call keeps the first arrival

    def answer(self, path: str, close: bool, idempotency_key: str = "") -> None:
        if path == "/stats":
            body = json.dumps({"requests": self.counters.requests, "throttled": self.counters.throttled}).encode()
            self.send(200, body, {}, close)
            return
        if path == "/calls":
            self.send(200, json.dumps(self.counters.calls).encode(), {}, close)
            return
        if path == "/arrivals":
            arrivals, self.counters.arrivals = self.counters.arrivals, {}
            self.send(200, json.dumps(arrivals).encode(), {}, close)
            return
        self.counters.requests += 1
        if self.args.record:
            calls = self.counters.calls
            calls[idempotency_key] = calls.get(idempotency_key, 0) + 1
        every = self.args.throttle_every
        if every and self.counters.requests % every == 0:
            self.counters.throttled += 1
            reply = (429, b'{"error":"rate limited"}', {"Retry-After": str(self.args.retry_after)})
        else:
            reply = (self.args.status, b'{"ok":true}', {})
        if self.args.delay_ms > 0:
            self.loop.call_later(self.args.delay_ms / 1000, self.send, *reply, close)
        else:
            self.send(*reply, close)

    def send(self, status: int, body: bytes, headers: dict[str, str], close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = {200: "OK", 202: "Accepted", 429: "Too Many Requests"}.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if close:
            lines.append("Connection: close")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        if close:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(args: argparse.Namespace) -> None:
    counters = Counters()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpProtocol(args, counters), "127.0.0.1", args.port, backlog=1024, reuse_address=True
    )
    print(f"fake destination on http://127.0.0.1:{args.port}/ (delay {args.delay_ms:g} ms)", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="time before each answer (default 0)")
    parser.add_argument("--status", type=int, default=200, help="HTTP status of the answers (default 200)")
    parser.add_argument("--throttle-every", type=int, default=0, help="answer every Nth call 429 (default never)")
    parser.add_argument("--record", action="store_true", help="count calls per Idempotency-Key (GET /calls)")
    parser.add_argument("--arrivals", action="store_true", help="note when each call came (GET /arrivals)")
    parser.add_argument("--retry-after", type=int, default=30, help="Retry-After of a 429, seconds (default 30)")
    try:
        asyncio.run(serve(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
