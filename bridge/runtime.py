"""What a worker's jobs need: the loaded config, Redis, the queue, the event log and connectors.

RQ calls plain functions, so the worker installs one Runtime per process before it starts
working; a process that did not (a bare `rq worker`) loads it from SALON_BRIDGE_CONFIG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from redis import Redis
from rq import Queue

from bridge.queue import connect, resolve_redis_url, work_queue
from bridge.schedules import Planner
from bridge.state import EntityMemory, Keep, Ordering
from bridge.store import EventStore
from connectors.base import Connector
from mappings.config import BridgeConfig, default_config_path, load_config


@dataclass
class Runtime:
    config: BridgeConfig
    redis: Redis
    dry_run: bool = False
    reachable: bool = True  # False: a command that can do without Redis found it not answering
    version: str = ""  # the config's version (bridge.reload.version_of), recorded on each action attempt
    queue: Queue = field(init=False)
    store: EventStore = field(init=False)
    memory: EntityMemory = field(init=False)
    ordering: Ordering = field(init=False)
    planner: Planner = field(init=False)
    _connectors: dict[str, Connector] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.queue = work_queue(self.redis)
        retention = self.config.model.retention
        self.store = EventStore(self.redis, retention.events, retention.dead_letters)
        self.memory = EntityMemory(self.redis, Keep.of(self.config), ZoneInfo(self.config.model.timezone))
        self.ordering = Ordering(self.redis, retention.longest())
        self.planner = Planner(self.redis, self.store, ZoneInfo(self.config.model.timezone))

    @classmethod
    def from_config(cls, config: BridgeConfig, redis_url: str | None = None, dry_run: bool = False) -> Runtime:
        return cls(config, connect(redis_url or resolve_redis_url(config)), dry_run)

    def connector(self, name: str) -> Connector:
        """Connectors are built on first use and kept for the life of the worker (pooled sockets)."""
        if name not in self._connectors:
            self._connectors[name] = self.config.connectors[name].build()
        return self._connectors[name]

    def switch_config(self, config: BridgeConfig, version: str) -> None:
        """From the next job on, run on `config` (called between jobs: a job runs on one config).
        A connector whose type or settings changed is closed (rebuilt on first use); the others keep
        their client. The worker then re-plans scheduled sends (bridge.worker.switch_config)."""
        for name in list(self._connectors):
            new = config.connectors.get(name)
            old = self.config.connectors[name]
            if new is None or new.cls is not old.cls or new.settings != old.settings or new.dry_run != old.dry_run:
                self._connectors.pop(name).close()
        self.config, self.version = config, version
        self.__post_init__()  # retention may have changed

    def close(self) -> None:
        for connector in self._connectors.values():
            connector.close()
        self._connectors.clear()


_current: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    global _current
    if _current is not None and _current is not runtime:
        _current.close()
    _current = runtime


def current() -> Runtime:
    global _current
    if _current is None:
        config = load_config(default_config_path())
        _current = Runtime.from_config(config, dry_run=os.environ.get("SALON_BRIDGE_DRY_RUN") == "1")
    return _current
