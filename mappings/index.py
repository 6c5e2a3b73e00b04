"""Lookups into a loaded config's mappings that cost the same with 1 mapping or 200.

A platform-wide install has a mapping or more per salon, each limited to its tenant: the mappings
an event can match are the untenanted ones and its own salon's, not every one in the file. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mappings.config import ActionSpec, MappingSpec

# Routes kept per (event type, tenant); a full cache starts over (types and tenants are few in
# practice, but both come from signed webhooks, so the cache must not grow without limit).
ROUTE_CACHE_SIZE = 4096


class MappingIndex:
    """The config's mappings by tenant and by name, its actions by id, and a cache of routes."""

    def __init__(self, mappings: Sequence[MappingSpec]):
        self._position = {id(m): n for n, m in enumerate(mappings)}
        self._untenanted = [m for m in mappings if m.tenants is None]
        self._by_tenant: dict[str, list[MappingSpec]] = {}
        for mapping in mappings:
            for tenant in dict.fromkeys(mapping.tenants or ()):  # a tenant listed twice: once
                self._by_tenant.setdefault(tenant, []).append(mapping)
        self._by_name: dict[str, MappingSpec] = {}
        self._actions: dict[str, ActionSpec] = {}
        for mapping in mappings:  # the first of a name or id wins, as a scan in config order would
            self._by_name.setdefault(mapping.name, mapping)
            for action in mapping.actions:
                for spec in action.chain():
                    self._actions.setdefault(spec.id, spec)
        self._routes: dict[tuple[str, str], tuple[MappingSpec, ...]] = {}

    def matching(self, event_type: str, tenant_id: str) -> list[MappingSpec]:
        """The mappings matching an event type and tenant, in config order."""
        key = (event_type, tenant_id)
        found = self._routes.get(key)
        if found is None:
            found = self._route(event_type, tenant_id)
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[key] = found
        return list(found)

    def _route(self, event_type: str, tenant_id: str) -> tuple[MappingSpec, ...]:
        own = self._by_tenant.get(tenant_id, [])
        candidates = sorted([*self._untenanted, *own], key=lambda m: self._position[id(m)]) if own else self._untenanted
        return tuple(m for m in candidates if any(fnmatchcase(event_type, p) for p in m.patterns))

    def mapping(self, name: str) -> MappingSpec | None:
        return self._by_name.get(name)

    def action(self, action_id: str) -> ActionSpec | None:
        return self._actions.get(action_id)
