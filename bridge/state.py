"""Durable memory beside the event log: what the platform said about each booking, order and
customer (entity memory), which event was last applied to an external object (ordering), the
per-entity lock, and the connectors' own key-value stores.

Entity memory: one key per (tenant, kind, id) at `sb:mem:<tenant>:<kind>:<id>` (each part
escaped by `key_part`), laid out by `bridge.memory_codec`. Nested objects are flattened to dotted
fields (`cliente.nombre`); each field takes the value of the newest event that set it (by the
envelope's `created`), merged atomically in Lua, so events may come in any order. A booking is kept
for a while after its own appointment day, a customer and an order after their last event (`Keep`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgpack
from redis import Redis
from redis.client import Pipeline

from bridge import agenda, memory_codec
from bridge.memory_codec import Remembered
from bridge.store import PREFIX, key_part, text
from connectors.base import CODE_FIELDS, KINDS, Subject
from mappings.templates import EntityView

if TYPE_CHECKING:
    from mappings.config import BridgeConfig

RawMemory = bytes | list[bytes] | None  # one entity's memory as `EntityMemory.read_on` answers

# Seconds an entity lock lives without renewal: short enough that a killed worker's lock frees the
# entity soon. A connector call can take longer (timeouts up to 120 s, several calls in a row), so
# the lock is renewed while a call is in flight (`EntityLock.held_during`).
LOCK_TIMEOUT = 75
# Event types accepted for memory even when no mapping acts on them (so later events can use them).
MEMORY_TYPES = frozenset(
    {
        "booking.created",
        "booking.updated",
        "booking.cancelled",
        "booking.completed",
        "booking.no_show",  # the agenda keeps a no-show in place with its status
        "payment.completed",
        "payment.failed",
        "payment.refunded",
        "order.created",
        "customer.created",
        "customer.updated",
    }
)


def event_time(envelope: dict[str, Any]) -> float:
    """The envelope's `created` as epoch seconds (UTC when the string has no offset)."""
    moment = datetime.fromisoformat(str(envelope["created"]))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def event_moment(envelope: dict[str, Any]) -> datetime:
    """The envelope's `created` as an aware moment (UTC)."""
    return datetime.fromtimestamp(event_time(envelope), UTC)


def entity_parts(envelope: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The (kind, object) pairs an event carries, each with an `id`."""
    data = envelope.get("data") or {}
    parts: list[tuple[str, dict[str, Any]]] = []
    for kind, obj in (("booking", data.get("booking")), ("order", data.get("order"))):
        if isinstance(obj, dict) and "id" in obj:
            parts.append((kind, obj))
            cliente = obj.get("cliente")
            if isinstance(cliente, dict) and "id" in cliente:
                parts.append(("customer", cliente))
    for obj in (data.get("customer"), data.get("cliente")):
        if isinstance(obj, dict) and "id" in obj:
            parts.append(("customer", obj))
    return parts


def event_views(envelope: dict[str, Any]) -> dict[str, EntityView | None]:
    """The views an event alone gives (no memory): for `simulate`."""
    views: dict[str, EntityView | None] = dict.fromkeys(KINDS)
    for kind, obj in entity_parts(envelope):
        if views[kind] is None:
            views[kind] = EntityView(obj, kind, str(obj["id"]))
    return views


def subject_of(envelope: dict[str, Any], views: dict[str, EntityView | None] | None = None) -> Subject:
    """What the event is about (see `Subject`); `views` (memory) fill in a code or a customer's
    name the event itself does not carry (a `booking.no_show` has neither)."""
    parts = entity_parts(envelope)
    ids: dict[str, str] = {}
    for kind, obj in parts:
        ids.setdefault(kind, str(obj["id"]))
    entities = tuple((kind, ids[kind]) for kind in KINDS if kind in ids)
    if not entities:
        return Subject(str(envelope.get("tenant_id", "")))
    kind, views = entities[0][0], views or {}
    known = [obj for k, obj in parts if k == kind] + [views.get(kind) or {}]
    code = next((str(o[CODE_FIELDS[kind]]) for o in known if o.get(CODE_FIELDS[kind])), "")
    people: list[Any] = [obj for k, obj in parts if k == "customer"] + [views.get("customer")]
    people += [o.get("cliente") for o in known]
    name = next((str(p["nombre"]) for p in people if isinstance(p, dict) and p.get("nombre")), "")
    return Subject(str(envelope.get("tenant_id", "")), entities, code, name)


def _flatten(obj: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@dataclass(frozen=True)
class Keep:
    """How long entity memory keeps each kind, in seconds: the config's `retention`, resolved."""

    after_event: dict[str, int]  # per kind; for a booking kept by its date, the least after its last event
    after_day: int = 0  # a booking: kept this long after its appointment day (0: by its last event)

    @classmethod
    def uniform(cls, ttl: float) -> Keep:
        """Every kind kept `ttl` after its last event (the earlier `retention.entities`)."""
        return cls(dict.fromkeys(KINDS, int(ttl)))

    @classmethod
    def of(cls, config: BridgeConfig) -> Keep:
        retention = config.model.retention
        after_day = config.booking_retention()
        return cls({kind: int(retention.after_event(kind)) for kind in KINDS}, int(after_day or 0))

    @property
    def agenda_window(self) -> int:
        """How far back the agenda index keeps bookings (their memory is gone after that)."""
        return self.after_day or self.after_event["booking"]


class EntityMemory:
    """Reads and merges entity memory. A job does both in the one pipeline that also takes the
    entity lock (`bridge.jobs`): `remember_on` and `read_on` queue the commands, `read` makes the
    views and the version of what came back."""

    def __init__(self, redis: Redis, keep: Keep | float, zone: ZoneInfo | None = None):
        self.redis = redis
        self.keep = keep if isinstance(keep, Keep) else Keep.uniform(keep)
        self.zone = zone or ZoneInfo("UTC")  # the salon's: bookings' wall-clock times are in it

    def key(self, tenant: str, kind: str, entity_id: str) -> str:
        return f"{PREFIX}mem:{key_part(tenant)}:{kind}:{key_part(entity_id)}"

    def remember_on(self, pipe: Pipeline, envelope: dict[str, Any], event_key: str | None = None) -> None:
        """Queue the merge of what the event says; each field keeps the newest event's value.
        With `event_key`, the booking also notes the event as the latest of its type, to which a
        scheduled mapping added later attaches its sends (bridge.schedules)."""
        created, now = repr(event_time(envelope)), int(time.time())
        tenant = str(envelope["tenant_id"])
        booking_key = None
        for kind, obj in entity_parts(envelope):
            key = self.key(tenant, kind, str(obj["id"]))
            after_day = self.keep.after_day if kind == "booking" else 0
            note = ["", ""]
            if kind == "booking" and booking_key is None and event_key is not None:
                note = [memory_codec.type_code(str(envelope["type"])), memory_codec.event_text(event_key)]
            given = [part for name, value in _flatten(obj) for part in memory_codec.field_pair(name, value)]
            args: list[Any] = [created, now, self.keep.after_event[kind], after_day, *note]
            args.append(msgpack.packb(given, use_bin_type=False))
            # A booking's customer lives at least as long as the booking (its views merge them).
            floor = booking_key if kind == "customer" and booking_key else key
            # EVAL, not EVALSHA: Redis caches the compiled script by its hash anyway, and a
            # restarted Redis that forgot its scripts cannot fail the pipeline with NOSCRIPT.
            pipe.eval(memory_codec.MERGE, 2, key, floor, *args)
            if kind == "booking" and booking_key is None:  # the agenda follows the merged, newest state
                booking_key = key
                agenda.index_on(pipe, key, tenant, str(obj["id"]), self.keep.agenda_window, self.zone)

    def read_on(self, pipe: Pipeline, key: str) -> None:
        """Queue reading one entity's memory (`memory_fields`, `load_raw` take the answer)."""
        memory_codec.read_on(pipe, key)

    def events_of(self, raw: RawMemory) -> dict[str, str]:
        """The latest event key of each type, from a booking's memory (as `read_on` answered)."""
        found = memory_codec.decode(raw)
        return dict(found.events) if found is not None else {}

    def remember(self, envelope: dict[str, Any], event_key: str | None = None) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.remember_on(pipe, envelope, event_key)
        pipe.execute()

    def keys(self, subject: Subject) -> dict[str, str]:
        """The memory key of each kind of entity the event names (its first of each kind)."""
        return {kind: self.key(subject.tenant, kind, entity_id) for kind, entity_id in subject.entities}

    def read(self, subject: Subject, answers: dict[str, RawMemory]) -> tuple[dict[str, EntityView | None], str]:
        """The merged `booking`, `order` and `customer` views the event refers to (None when it
        refers to none), and the version of what is known of its primary entity and that entity's
        customer (it changes whenever memory learns something new about either).

        `answers`: `read_on` of `keys(subject)`, by kind. A customer the event does not name but
        memory knows (a booking's `cliente.id`) is read here: one more round trip."""
        tenant = subject.tenant
        ids = dict(subject.entities)
        found = {kind: memory_codec.decode(raw) for kind, raw in answers.items()}
        merged: dict[str, dict[str, Any] | None] = {kind: _data(found.get(kind)) for kind in ("booking", "order")}
        if "customer" not in ids:
            for kind in ("booking", "order"):
                cliente = (merged[kind] or {}).get("cliente")
                if isinstance(cliente, dict) and "id" in cliente:
                    ids["customer"] = str(cliente["id"])
                    found["customer"] = self._load(self.key(tenant, "customer", ids["customer"]))
                    break
        customer = _data(found.get("customer"))
        for kind in ("booking", "order"):
            view = merged[kind]
            cliente = (view or {}).get("cliente")
            # The customer record holds the newest of everything said about that person.
            if view is not None and customer is not None and isinstance(cliente, dict):
                if str(cliente.get("id")) == ids.get("customer"):
                    view["cliente"] = {**cliente, **customer}
        merged["customer"] = customer
        views = {kind: EntityView(data, kind, ids[kind]) if data else None for kind, data in merged.items()}
        return views, self._version(subject, found, ids.get("customer"))

    def _version(self, subject: Subject, found: dict[str, Remembered | None], customer_id: str | None) -> str:
        entity = subject.primary
        if entity is None:
            return ""
        own = found.get(entity[0])
        versions = [str(own.version if own else 0)]
        own_customer = own.values.get("cliente.id") if own else None
        if own_customer is not None and entity[0] != "customer":
            own_customer_id = str(memory_codec.value_of(own_customer))
            if own_customer_id == customer_id:
                customer = found.get("customer")
            else:  # memory's customer differs from the one the event names
                customer = self._load(self.key(subject.tenant, "customer", own_customer_id))
            versions.append(str(customer.version if customer else 0))
        return ".".join(versions)

    def views(self, subject: Subject) -> dict[str, EntityView | None]:
        """The views alone, read in one round trip (two when the customer is known only through memory)."""
        keys = self.keys(subject)
        pipe = self.redis.pipeline(transaction=False)
        for key in keys.values():
            self.read_on(pipe, key)
        return self.read(subject, dict(zip(keys, pipe.execute(), strict=True)))[0]

    def load(self, tenant: str, kind: str, entity_id: str) -> dict[str, Any] | None:
        return _data(self._load(self.key(tenant, kind, entity_id)))

    def load_raw(self, key: str) -> RawMemory:
        """One entity's memory as `read_on` answers it, in a round trip of its own."""
        pipe = self.redis.pipeline(transaction=False)
        self.read_on(pipe, key)
        return pipe.execute()[0]

    def _load(self, key: str) -> Remembered | None:
        return memory_codec.decode(self.load_raw(key))


def memory_fields(raw: RawMemory) -> dict[str, Any] | None:
    """One entity's memory (as `read_on` answered) as the nested object it was flattened from."""
    return _data(memory_codec.decode(raw))


def _data(found: Remembered | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return found.data() or None


class EntityBusy(Exception):
    """Another worker holds the entity's lock; the job is run again a little later."""


# The lock's value is a random token: only its holder renews or releases it. Renewing takes the
# lock again when it expired and nobody else took it.
_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
return 1
"""
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

# Versions are dotted counters ("3", "3.1": the entity's, then its customer's), compared part by
# part as numbers: set the mark unless it already holds a newer version.
_MARK_SYNCED = """
local old = redis.call('get', KEYS[1])
if old then
  local a, b = {}, {}
  for n in string.gmatch(old, '[^.]+') do a[#a + 1] = tonumber(n) or 0 end
  for n in string.gmatch(ARGV[1], '[^.]+') do b[#b + 1] = tonumber(n) or 0 end
  for i = 1, math.max(#a, #b) do
    local x, y = a[i] or -1, b[i] or -1
    if x > y then return 0 end
    if x < y then break end
  end
end
redis.call('set', KEYS[1], ARGV[1], 'ex', ARGV[2])
return 1
"""


class EntityLock:
    """The lock that keeps two workers from writing one entity's external objects at the same
    time. It expires by itself when its worker dies, so the holder renews it before each action,
    and while a connector call is in flight. Each step before and after a call is queued on a
    pipeline the job sends anyway."""

    def __init__(self, redis: Redis, name: str, entity: str, timeout: float = LOCK_TIMEOUT):
        self.redis = redis
        self.name = name
        self.entity = entity  # "booking 12345", for messages
        self.token = uuid.uuid4().hex
        self.timeout_ms = int(timeout * 1000)

    def acquire_on(self, pipe: Pipeline) -> None:
        """Queue taking the lock; its answer is true when taken."""
        pipe.set(self.name, self.token, nx=True, px=self.timeout_ms)

    def acquire(self, wait: float) -> None:
        """Take the lock, trying for `wait` seconds; raises EntityBusy."""
        deadline = time.monotonic() + wait
        while not self.redis.set(self.name, self.token, nx=True, px=self.timeout_ms):
            if time.monotonic() > deadline:
                raise EntityBusy(f"{self.entity} is being worked on by another worker")
            time.sleep(0.1)

    def renew_on(self, pipe: Pipeline) -> None:
        """Queue the renewal; its answer is 0 when the lock expired and another worker took it."""
        pipe.eval(_RENEW, 1, self.name, self.token, self.timeout_ms)

    def release_on(self, pipe: Pipeline) -> None:
        pipe.eval(_RELEASE, 1, self.name, self.token)

    @contextmanager
    def held_during(self) -> Iterator[None]:
        """Keep the lock while the block runs (a connector call may outlast LOCK_TIMEOUT): a
        thread renews it every third of its lifetime. It stops renewing when another worker
        has the lock; the job finds that out at its next `before_send`."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.timeout_ms / 3000):
                try:
                    if not self.redis.eval(_RENEW, 1, self.name, self.token, self.timeout_ms):
                        return
                except Exception:  # noqa: BLE001 - Redis away for a moment: try again at the next tick
                    continue

        renewer = threading.Thread(target=renew, name=f"lock {self.entity}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def release(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.release_on(pipe)
        pipe.execute()


class Ordering:
    """Entity locks, and which version of the entity each external object was last written with."""

    def __init__(self, redis: Redis, ttl: float, lock_timeout: float = LOCK_TIMEOUT):
        self.redis = redis
        self.ttl = int(ttl)
        self.lock_timeout = lock_timeout

    def entity_lock(self, subject: Subject) -> EntityLock | None:
        """The lock of the entity an event may write (None when it names no entity)."""
        if subject.primary is None:
            return None
        kind, entity_id = subject.primary
        name = f"{PREFIX}lock:{key_part(subject.tenant)}:{kind}:{key_part(entity_id)}"
        return EntityLock(self.redis, name, f"{kind} {entity_id}", self.lock_timeout)

    def is_synced(self, target: str, version: str) -> bool:
        """Whether `target` was already written with this version of what is known."""
        value = self.redis.get(f"{PREFIX}synced:{target}")
        return value is not None and text(value) == version

    def mark_synced_on(self, pipe: Pipeline, target: str, version: str) -> None:
        """Queue the mark; it never moves back to an older version (a late job that somehow ran
        with older data must not make the next event look new or old again)."""
        pipe.eval(_MARK_SYNCED, 1, f"{PREFIX}synced:{target}", version, self.ttl)


class RedisConnectorStore:
    """A connector instance's key-value memory (see connectors.base.ConnectorStore)."""

    def __init__(self, redis: Redis, connector_name: str):
        self.redis = redis
        self.prefix = f"{PREFIX}cx:{connector_name}:"

    def get(self, key: str) -> str | None:
        value = self.redis.get(self.prefix + key)
        return text(value) if value is not None else None

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self.redis.set(self.prefix + key, value, ex=int(ttl) if ttl else None)

    def set_if_absent(self, key: str, value: str, ttl: float | None = None) -> bool:
        return bool(self.redis.set(self.prefix + key, value, ex=int(ttl) if ttl else None, nx=True))

    def delete(self, key: str) -> None:
        self.redis.delete(self.prefix + key)
