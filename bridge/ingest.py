"""The request path: verify, validate, dedupe, store and enqueue. Nothing else happens here."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgpack
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError, NoScriptError, RedisError, TimeoutError
from rq import Queue

from bridge.queue import PROCESS_EVENT, JobRecord, lua_string
from bridge.state import MEMORY_TYPES
from bridge.store import EVENTS_INDEX, event_key, record_key, seen_key
from mappings.config import BridgeConfig

SIGNATURE_HEADER = "X-SalonBookIt-Signature"
RETRY_AFTER_SECONDS = 30
# The platform's payloads are 3-4 levels deep; far deeper ones cannot be remembered or rendered.
MAX_DEPTH = 32
# Characters an id or tenant cannot carry into Redis keys, RQ job ids, headers and log lines.
_UNSAFE_IN_ID = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# A parsed body can hold a lone UTF-16 surrogate only if the raw one has a \uD800-\uDFFF escape or
# surrogate bytes (json.loads decodes bytes with `surrogatepass`): a cheap test before a walk.
_MAY_HOLD_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


@dataclass
class Outcome:
    """The answer to one delivery, and a short label for logs and metrics."""

    status: int
    body: dict[str, Any]
    label: str
    headers: dict[str, str] = field(default_factory=dict)
    envelope: dict[str, Any] | None = None


def reject(status: int, message: str, label: str) -> Outcome:
    return Outcome(status, {"error": message}, label)


def signature_matches(secrets: list[str], body: bytes, header: str | None) -> bool:
    """Constant-time check of `sha256=<hex>` against every configured secret (rotation)."""
    if not header or not header.startswith("sha256="):
        return False
    given = header[len("sha256=") :].strip().lower().encode()
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
        matched |= hmac.compare_digest(expected, given)
    return matched


def envelope_problem(envelope: Any) -> str | None:
    """What is wrong with a parsed body, naming the field; None when it is a valid envelope."""
    if not isinstance(envelope, dict):
        return f"the body must be a JSON object, got {type(envelope).__name__}"
    event_id = envelope.get("id")
    if not isinstance(event_id, str) or not event_id.strip():
        return "field 'id' must be a non-empty string"
    if len(event_id) > 256:
        return "field 'id' is longer than 256 characters"
    if event_id != event_id.strip():
        return "field 'id' starts or ends with white space"
    if _UNSAFE_IN_ID.search(event_id):
        return "field 'id' contains a control character or a lone UTF-16 surrogate"
    if not isinstance(envelope.get("type"), str) or not envelope["type"]:
        return "field 'type' must be a non-empty string"
    created = envelope.get("created")
    if not isinstance(created, str):
        return "field 'created' must be an ISO 8601 date-time string"
    try:
        datetime.fromisoformat(created)
    except ValueError:
        return f"field 'created' is not an ISO 8601 date-time: {created[:40]!r}"
    if not isinstance(envelope.get("tenant_id"), str):
        return "field 'tenant_id' must be a string"
    if _UNSAFE_IN_ID.search(envelope["tenant_id"]):
        return "field 'tenant_id' contains a control character or a lone UTF-16 surrogate"
    if not isinstance(envelope.get("data"), dict):
        return "field 'data' must be a JSON object"
    return None


def too_deep(body: bytes, envelope: Any) -> str | None:
    """The path of the first value nested deeper than MAX_DEPTH, else None. Only a body with more
    than MAX_DEPTH brackets can be that deep, so the walk is skipped for every real event."""
    if body.count(b"{") + body.count(b"[") <= MAX_DEPTH:
        return None
    stack: list[tuple[Any, str, int]] = [(envelope, "", 0)]
    while stack:  # iterative: a recursive walk would fail on the very input it is looking for
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return path
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for name, child in children:
            stack.append((child, f"{path}.{name}" if path else str(name), depth + 1))
    return None


def replace_lone_surrogates(value: Any, path: str, replaced: list[str]) -> Any:
    """`value` with each lone UTF-16 surrogate (half an emoji, cut by the sender) replaced by
    U+FFFD, which can be stored and sent anywhere; the paths changed are added to `replaced`."""
    if isinstance(value, str):
        fixed, count = _LONE_SURROGATE.subn("\ufffd", value)
        if count:
            replaced.append(path)
        return fixed
    if isinstance(value, list):
        return [replace_lone_surrogates(item, f"{path}.{i}", replaced) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {
            replace_lone_surrogates(k, path, replaced): replace_lone_surrogates(v, f"{path}.{k}", replaced)
            for k, v in value.items()
        }
    return value


# KEYS[1]: the seen mark. ARGV: now, dedupe window, the commands to run as one MessagePack array of
# arrays of strings (raw strings, binary-safe: Redis's cmsgpack does not read the newer bin type).
# One argument instead of ~75: redis-py packs each argument in Python, and that
# was a quarter of a webhook's CPU.
def packed_commands(recorder: Pipeline) -> bytes:
    """The commands queued on `recorder` (never executed) as STORE_IF_NEW's last argument; empties it."""
    # Numbers as redis-py would send them (repr), so Redis stores the same text.
    commands = [[a if isinstance(a, bytes | str) else repr(a) for a in args] for args, _ in recorder.command_stack]
    recorder.reset()
    packed: bytes = msgpack.packb(commands, use_bin_type=False)
    return packed


STORE_IF_NEW = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for _, command in ipairs(cmsgpack.unpack(ARGV[3])) do
  redis.call(unpack(command))
end
return 1
"""


def accept_script(job: JobRecord) -> str:
    """What one accepted event costs Redis, in one script that does it only for a new id: the seen
    mark, the event record, the events index and RQ's enqueue of its job (`JobRecord`).
    KEYS[1]: the seen mark. ARGV[1]: MessagePack of [now, dedupe window, retention, body, note,
    the job's enqueued_at, the event key]. The key names are written into the script: it stays
    one argument, as redis-py spends CPU on each (docs/performance.md)."""
    return f"""
local now, window, retention, body, note, moment, key = unpack(cmsgpack.unpack(ARGV[1]))
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', window) then
  return 0
end
local record = {lua_string(record_key(""))} .. key
redis.call('HSET', record, 'body', body, 'received_at', now)
if note ~= '' then
  redis.call('HSET', record, 'note', note)
end
redis.call('EXPIRE', record, retention)
redis.call('ZADD', {lua_string(EVENTS_INDEX)}, now, key)
redis.call('SADD', {lua_string(job.queues_key)}, {lua_string(job.queue_key)})
redis.call('HSET', {lua_string(job.key(""))} .. key, 'created_at', moment, 'enqueued_at', moment,
  {job.lua_fields("key")})
redis.call('RPUSH', {lua_string(job.queue_key)}, key)
return 1
"""


class ScriptCall:
    """Runs one Redis script with the least client work redis-py allows: EVALSHA on a pooled
    connection, loading the script when Redis does not know it (its first use, or Redis restarted).
    redis-py's Script object costs 13 µs more per call, a seventh of a webhook's CPU
    (docs/performance.md). Errors are redis-py's own (RedisError)."""

    def __init__(self, redis: Redis, source: str):
        self.redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, key: str, arg: bytes) -> Any:
        try:
            return self._evalsha(key, arg)
        except NoScriptError:
            self.redis.script_load(self.source)
            return self._evalsha(key, arg)

    def _evalsha(self, key: str, arg: bytes) -> Any:
        pool = self.redis.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_command("EVALSHA", self.sha, 1, key, arg)
            return connection.read_response()
        except (ConnectionError, TimeoutError, OSError):
            connection.disconnect()  # half a command may be on the wire: never reuse it
            raise
        finally:
            pool.release(connection)


class Ingestor:
    def __init__(self, config: BridgeConfig, redis: Redis, queue: Queue):
        self.config = config
        self.redis = redis
        self.queue = queue
        self._accept: ScriptCall | None = None  # made at the first event: RQ asks Redis its version

    def _accept_script(self) -> ScriptCall:
        if self._accept is None:
            self._accept = ScriptCall(self.redis, accept_script(JobRecord(self.queue, PROCESS_EVENT)))
        return self._accept

    def handle(self, body: bytes, signature: str | None) -> Outcome:
        webhook = self.config.webhook
        if len(body) > webhook.max_body_bytes:
            return reject(413, f"body is larger than {webhook.max_body_bytes} bytes", "too_large")
        if not signature:
            return reject(401, f"missing {SIGNATURE_HEADER} header", "unsigned")
        if not signature_matches(webhook.secrets, body, signature):
            return reject(
                401, f"{SIGNATURE_HEADER} does not match the body (check the webhook secret)", "bad_signature"
            )
        try:
            envelope = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return reject(400, f"body is not valid JSON: {exc}", "bad_json")
        except RecursionError:
            return reject(400, f"body is nested deeper than {MAX_DEPTH} levels", "too_deep")
        problem = envelope_problem(envelope)
        if problem:
            return reject(400, problem, "bad_envelope")
        deep = too_deep(body, envelope)
        if deep:
            return reject(400, f"field {deep!r} is nested deeper than {MAX_DEPTH} levels", "too_deep")
        note = ""
        # `in` first: a byte search is many times faster than the regex, and nearly always false.
        if (b"\\u" in body or b"\xed" in body) and _MAY_HOLD_SURROGATE.search(body):
            replaced: list[str] = []
            envelope = replace_lone_surrogates(envelope, "", replaced)
            if replaced:
                # What is stored must encode as UTF-8 (Redis, templates, destinations): the body as fixed.
                body = json.dumps(envelope, ensure_ascii=False).encode()
                fields = ", ".join(p.lstrip(".") for p in replaced[:5]) + (" ..." if len(replaced) > 5 else "")
                note = f"a lone UTF-16 surrogate (half a character) was replaced with U+FFFD in {fields}"

        ignored = self.ignore_reason(envelope)
        if ignored:
            return Outcome(200, {"received": True, "ignored": ignored}, "ignored", envelope=envelope)
        try:
            accepted = self.store_and_enqueue(envelope, body, note)
        except RedisError as exc:
            outcome = reject(
                503, f"cannot store the event right now ({type(exc).__name__}); retry later", "unavailable"
            )
            outcome.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return outcome
        if not accepted:
            return Outcome(200, {"received": True, "duplicate": True}, "duplicate", envelope=envelope)
        return Outcome(202, {"received": True, "event_id": envelope["id"]}, "accepted", envelope=envelope)

    def ignore_reason(self, envelope: dict[str, Any]) -> str | None:
        tenants = self.config.webhook.tenants
        if tenants and envelope["tenant_id"] not in tenants:
            return f"tenant {envelope['tenant_id']!r} is not in webhook.tenants"
        if envelope["type"] not in MEMORY_TYPES and not self.config.mappings_for(
            envelope["type"], envelope["tenant_id"]
        ):
            return f"no mapping handles {envelope['type']!r}"
        return None

    def store_and_enqueue(self, envelope: dict[str, Any], body: bytes, note: str = "") -> bool:
        """Atomically, in one round trip: mark the id seen, store the event, enqueue its job.
        False for a duplicate (seen before, or a concurrent delivery won).

        The job is RQ's own record (`JobRecord`), written by the script only when the id is new.
        On any Redis failure nothing happened, so the platform's retry is accepted."""
        key = event_key(envelope["id"])
        now = time.time()
        window, retention = int(self.config.webhook.dedupe_window), int(self.config.model.retention.events)
        # `note`: what ingest changed to store the event faithfully.
        fields = [repr(now), window, retention, body, note, JobRecord.moment(now), key]
        packed = msgpack.packb(fields, use_bin_type=False)
        return bool(self._accept_script()(seen_key(key), packed))
