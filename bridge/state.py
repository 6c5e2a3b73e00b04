"""Durable memory beside the event log: what the platform said about each booking, order and
customer (entity memory), which event was last applied to an external object (ordering), the
per-entity lock, and the connectors' own key-value stores.

Entity memory: one hash per (tenant, kind, id) at `sb:mem:<tenant>:<kind>:<id>`. Nested objects
are flattened to dotted fields (`cliente.nombre`); each field keeps the `created` time of the
event that set it (`~cliente.nombre`) and only a newer event overwrites it, atomically (Lua).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import LockError, NoScriptError

from bridge.store import PREFIX, text
from mappings.templates import EntityView

KINDS = ("booking", "order", "customer")
# Seconds an entity lock lives without renewal: longer than one action (connector timeouts are
# at most 60 s), short enough that a killed worker's lock frees the entity soon.
LOCK_TIMEOUT = 75

# Event types accepted for memory even when no mapping acts on them (so later events can use them).
MEMORY_TYPES = frozenset(
    {
        "booking.created",
        "booking.updated",
        "booking.cancelled",
        "booking.completed",
        "payment.completed",
        "payment.failed",
        "payment.refunded",
        "order.created",
        "customer.created",
        "customer.updated",
    }
)

# Per field: take the value when this event is at least as new as the one that set it. Counts the
# fields whose value really changed and, if any did, bumps the entity's version.
_MERGE = """
local ts = tonumber(ARGV[1])
local changed = 0
for i = 3, #ARGV, 2 do
  local seen = redis.call('HGET', KEYS[1], '~' .. ARGV[i])
  if (not seen) or tonumber(seen) <= ts then
    if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
      changed = changed + 1
    end
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1], '~' .. ARGV[i], ARGV[1])
  end
end
if changed > 0 then
  redis.call('HINCRBY', KEYS[1], '~~version', 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return changed
"""


def event_time(envelope: dict[str, Any]) -> float:
    """The envelope's `created` as epoch seconds (UTC when the string has no offset)."""
    moment = datetime.fromisoformat(str(envelope["created"]))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


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


def primary_entity(envelope: dict[str, Any]) -> tuple[str, str] | None:
    """The entity whose external objects an event may write: its booking, else order, else customer."""
    parts = entity_parts(envelope)
    for kind in KINDS:
        for part_kind, obj in parts:
            if part_kind == kind:
                return kind, str(obj["id"])
    return None


def _flatten(obj: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _unflatten(fields: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for dotted, value in sorted(fields.items()):
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return result


class EntityMemory:
    def __init__(self, redis: Redis, ttl: float):
        self.redis = redis
        self.ttl = int(ttl)
        self._merge = redis.register_script(_MERGE)

    def key(self, tenant: str, kind: str, entity_id: str) -> str:
        return f"{PREFIX}mem:{tenant}:{kind}:{entity_id}"

    def remember(self, envelope: dict[str, Any]) -> None:
        """Merge what the event says into memory; each field keeps the newest event's value."""
        created = repr(event_time(envelope))
        merges = []
        for kind, obj in entity_parts(envelope):
            args: list[str] = [created, str(self.ttl)]
            for name, value in _flatten(obj):
                args += [name, json.dumps(value, ensure_ascii=False)]
            merges.append((self.key(envelope["tenant_id"], kind, str(obj["id"])), args))

        def run() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for key, args in merges:
                # EVALSHA straight on the pipeline: a Script object would first ask SCRIPT EXISTS.
                pipe.evalsha(self._merge.sha, 1, key, *args)
            pipe.execute()

        try:
            run()
        except NoScriptError:  # a restarted Redis forgot the script; merging again is harmless
            self.redis.script_load(_MERGE)
            run()

    def load(self, tenant: str, kind: str, entity_id: str) -> dict[str, Any] | None:
        raw: dict[bytes, bytes] = self.redis.hgetall(self.key(tenant, kind, entity_id))  # type: ignore[assignment]
        if not raw:
            return None
        fields = {k.decode(): json.loads(v) for k, v in raw.items() if not k.startswith(b"~")}
        return _unflatten(fields)

    def version(self, envelope: dict[str, Any]) -> str:
        """What is known of the event's primary entity and its customer, as a version that changes
        whenever memory learns something new about either."""
        entity = primary_entity(envelope)
        if entity is None:
            return ""
        tenant = envelope["tenant_id"]
        key = self.key(tenant, *entity)
        own, customer_id = self.redis.hmget(key, "~~version", "cliente.id")
        versions = [text(own or b"0")]
        if customer_id is not None and entity[0] != "customer":
            customer = self.redis.hget(self.key(tenant, "customer", text(json.loads(customer_id))), "~~version")
            versions.append(text(customer or b"0"))
        return ".".join(versions)

    def views(self, envelope: dict[str, Any]) -> dict[str, EntityView | None]:
        """The merged `booking`, `order` and `customer` an event refers to (None when it refers to none)."""
        tenant = envelope["tenant_id"]
        ids: dict[str, str] = {}
        for kind, obj in entity_parts(envelope):
            ids.setdefault(kind, str(obj["id"]))
        merged: dict[str, dict[str, Any] | None] = {
            kind: self.load(tenant, kind, ids[kind]) if kind in ids else None for kind in ("booking", "order")
        }
        if "customer" not in ids:
            for kind in ("booking", "order"):
                cliente = (merged[kind] or {}).get("cliente")
                if isinstance(cliente, dict) and "id" in cliente:
                    ids["customer"] = str(cliente["id"])
                    break
        customer = self.load(tenant, "customer", ids["customer"]) if "customer" in ids else None
        for kind in ("booking", "order"):
            view = merged[kind]
            cliente = (view or {}).get("cliente")
            # The customer record holds the newest of everything said about that person.
            if view is not None and customer is not None and isinstance(cliente, dict):
                if str(cliente.get("id")) == ids.get("customer"):
                    view["cliente"] = {**cliente, **customer}
        merged["customer"] = customer
        return {
            kind: EntityView(value, kind, ids[kind]) if value is not None else None for kind, value in merged.items()
        }


class EntityBusy(Exception):
    """Another worker holds the entity's lock; the job is run again a little later."""


class Ordering:
    """The lock that keeps two workers from writing one entity's external objects at the same time,
    and which version of the entity each external object was last written with."""

    def __init__(self, redis: Redis, ttl: float, lock_timeout: float = LOCK_TIMEOUT):
        self.redis = redis
        self.ttl = int(ttl)
        self.lock_timeout = lock_timeout

    @contextmanager
    def lock(self, tenant: str, entity: tuple[str, str] | None, wait: float = 5) -> Iterator[Callable[[], None]]:
        """Hold the entity's lock; yields `renew`, to call before each action so that the lock only
        has to outlive one action (it expires by itself if this worker dies). No entity, no lock.
        Raises EntityBusy when another worker keeps it for `wait` seconds."""
        if entity is None:
            yield lambda: None
            return
        lock = self.redis.lock(
            f"{PREFIX}lock:{tenant}:{entity[0]}:{entity[1]}", timeout=self.lock_timeout, blocking_timeout=wait
        )
        if not lock.acquire():
            raise EntityBusy(f"{entity[0]} {entity[1]} is being worked on by another worker")
        try:
            yield lock.reacquire
        finally:
            try:
                lock.release()
            except LockError:
                pass  # expired while we worked; nothing to release

    def is_synced(self, target: str, version: str) -> bool:
        """Whether `target` was already written with this version of what is known."""
        value = self.redis.get(f"{PREFIX}synced:{target}")
        return value is not None and text(value) == version

    def mark_synced(self, target: str, version: str) -> None:
        self.redis.set(f"{PREFIX}synced:{target}", version, ex=self.ttl)


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
