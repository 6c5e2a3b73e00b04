"""Routing through mappings.index: the same mappings, in the same order, as a scan of every mapping."""

from __future__ import annotations

import pytest

from mappings import index as index_module
from mappings.config import EVENT_TYPES, BridgeConfig, load_config_text

HEAD = """\
version: 1
timezone: Europe/Madrid
webhook:
  secrets: ["s3cret"]
connectors:
  crm:
    type: http
    url: "https://crm.example.com/hook"
  sms:
    type: http
    url: "https://sms.example.com/hook"
mappings:
"""

# Tenanted and untenanted mappings interleaved, so config order is not the index's order.
MAPPINGS = [
    ("all", '["*"]', None),
    ("salon-a-bookings", '["booking.*"]', '["salon-a"]'),
    ("payments", '["payment.completed", "payment.refunded"]', None),
    ("salon-b-all", '["*"]', '["salon-b"]'),
    ("a-and-b-customers", '["customer.*"]', '["salon-a", "salon-b", "salon-a"]'),
    ("nobody", '["*"]', "[]"),
    ("orders", '["order.shipped"]', None),
    ("salon-a-cancelled", '["booking.cancelled"]', '["salon-a"]'),
]


def config_text(mappings: list[tuple[str, str, str | None]]) -> str:
    blocks = []
    for name, on, tenant in mappings:
        block = f"  - name: {name}\n    on: {on}\n"
        if tenant is not None:
            block += f"    tenant: {tenant}\n"
        block += (
            '    actions:\n      - connector: crm\n        body: {id: "{{ event.id }}"}\n'
            '        fallback:\n          connector: sms\n          body: {id: "{{ event.id }}"}\n'
        )
        blocks.append(block)
    return HEAD + "".join(blocks)


@pytest.fixture
def config() -> BridgeConfig:
    return load_config_text(config_text(MAPPINGS), "config.yaml", {})


def scan(config: BridgeConfig, event_type: str, tenant: str) -> list[str]:
    """What routing means: every mapping, in config order, kept when it matches."""
    return [m.name for m in config.mappings if m.matches(event_type, tenant)]


@pytest.mark.parametrize("tenant", ["salon-a", "salon-b", "salon-c", ""])
@pytest.mark.parametrize("event_type", [*EVENT_TYPES, "unknown.type"])
def test_routes_are_the_scan_of_every_mapping(config: BridgeConfig, event_type: str, tenant: str) -> None:
    assert [m.name for m in config.mappings_for(event_type, tenant)] == scan(config, event_type, tenant)


@pytest.mark.parametrize(
    ("event_type", "tenant", "expected"),
    [
        pytest.param("booking.cancelled", "salon-a", ["all", "salon-a-bookings", "salon-a-cancelled"], id="own-salon"),
        pytest.param("booking.cancelled", "salon-c", ["all"], id="other-salon"),
        pytest.param("customer.created", "salon-a", ["all", "a-and-b-customers"], id="listed-twice-once"),
        pytest.param("payment.completed", "salon-b", ["all", "payments", "salon-b-all"], id="config-order"),
        pytest.param("payment.failed", "salon-c", ["all"], id="type-not-listed"),
    ],
)
def test_routes_by_type_and_tenant(config: BridgeConfig, event_type: str, tenant: str, expected: list[str]) -> None:
    assert [m.name for m in config.mappings_for(event_type, tenant)] == expected


def test_a_returned_route_can_be_changed_without_changing_the_next(config: BridgeConfig) -> None:
    config.mappings_for("booking.created", "salon-a").clear()
    assert [m.name for m in config.mappings_for("booking.created", "salon-a")] == ["all", "salon-a-bookings"]


def test_routes_stay_right_when_the_cache_starts_over(config: BridgeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "ROUTE_CACHE_SIZE", 3)
    for n in range(10):
        tenant = "salon-a" if n % 3 == 0 else f"salon-{n}"
        assert [m.name for m in config.mappings_for("booking.cancelled", tenant)] == scan(
            config, "booking.cancelled", tenant
        )
    assert len(config.index._routes) <= 3


def test_actions_and_fallbacks_by_id_and_mappings_by_name(config: BridgeConfig) -> None:
    for mapping in config.mappings:
        assert config.mapping(mapping.name) is mapping
        for action in mapping.actions:
            assert config.action(action.id) is action
            assert action.fallback is not None and config.action(f"{action.id}/fallback") is action.fallback
    assert config.mapping("missing") is None
    assert config.action("all/9") is None


def test_two_hundred_salon_mappings_route_each_salon_to_its_own() -> None:
    many = [(f"salon-{n}-crm", '["booking.*", "payment.*"]', f'["salon-{n}"]') for n in range(200)]
    config = load_config_text(config_text([*many, ("all", '["*"]', None)]), "config.yaml", {})
    for n in (0, 57, 199):
        assert [m.name for m in config.mappings_for("booking.created", f"salon-{n}")] == [f"salon-{n}-crm", "all"]
    assert [m.name for m in config.mappings_for("order.created", "salon-57")] == ["all"]
