"""Durable memory beside the event log: connector stores (and, below, entity memory)."""

from __future__ import annotations

from redis import Redis

from bridge.store import PREFIX


class RedisConnectorStore:
    """A connector instance's key-value memory (see connectors.base.ConnectorStore)."""

    def __init__(self, redis: Redis, connector_name: str):
        self.redis = redis
        self.prefix = f"{PREFIX}cx:{connector_name}:"

    def get(self, key: str) -> str | None:
        value = self.redis.get(self.prefix + key)
        return value.decode() if value is not None else None

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self.redis.set(self.prefix + key, value, ex=int(ttl) if ttl else None)

    def set_if_absent(self, key: str, value: str, ttl: float | None = None) -> bool:
        return bool(self.redis.set(self.prefix + key, value, ex=int(ttl) if ttl else None, nx=True))

    def delete(self, key: str) -> None:
        self.redis.delete(self.prefix + key)
