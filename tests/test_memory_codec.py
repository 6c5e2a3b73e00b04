"""Entity memory's layout in Redis (bridge/memory_codec.py): order-independent merges, exact
values, memory written by the earlier layout, retention tied to the appointment, the size bound."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from redis import Redis

from bridge import memory_codec
from bridge.state import EntityMemory, Keep
from bridge.store import event_key
from mappings.config import RetentionModel
from tests.harness import sample

DAY = 86400


def at(event: dict, created: str) -> dict:
    event["created"] = created
    return event


def remembered(memory: EntityMemory, key: str) -> memory_codec.Remembered:
    found = memory_codec.decode(memory.load_raw(key))
    assert found is not None
    return found


def test_merges_in_any_order_give_the_same_memory_and_version(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    events = [
        at(sample("booking.created"), "2024-01-20T10:30:00Z"),
        at(sample("booking.updated"), "2024-01-20T11:00:00Z"),
        at(sample("booking.cancelled"), "2024-01-21T09:00:00Z"),
    ]
    results = []
    for n, order in enumerate(([0, 1, 2], [2, 1, 0], [1, 2, 0])):
        memory = EntityMemory(redis, 3600)
        tenant = f"t{n}"
        for i in order:
            memory.remember({**events[i], "tenant_id": tenant})
        found = remembered(memory, memory.key(tenant, "booking", "12345"))
        results.append(found.data())
        assert found.version >= 1
    assert results[0] == results[1] == results[2]
    assert (results[0]["fecha"], results[0]["hora_inicio"], results[0]["estado"]) == (
        "2024-01-26",
        "11:00",
        "cancelada",
    )


def test_the_version_rises_only_when_a_value_really_changed(redis_url: str) -> None:
    memory = EntityMemory(Redis.from_url(redis_url), 3600)
    key = memory.key("uuid-tenant", "booking", "12345")
    memory.remember(sample("booking.created"))
    memory.remember(sample("booking.created"))  # the same again: nothing new
    assert remembered(memory, key).version == 1
    memory.remember(at(sample("booking.created"), "2023-01-01T00:00:00Z"))  # older: overwrites nothing
    assert remembered(memory, key).version == 1
    memory.remember(sample("booking.updated"))
    assert remembered(memory, key).version == 2


@pytest.mark.parametrize(
    "value",
    [25.0, 25, -0.5, 1e100, "25.0", "12", "true", "null", "", '"quoted"', "2024-01-25", "José ñ 😀", "a\nb",
     [1, 2.0, "x"], {"a": {"b": None}}, [], True, None, "[not json", "NaN", "\x00\x01"],
    ids=repr,
)  # fmt: skip
def test_values_round_trip_exactly(redis_url: str, value: object) -> None:
    memory = EntityMemory(Redis.from_url(redis_url), 3600)
    event = sample("order.created")
    event["data"]["order"]["v"] = value
    memory.remember(event)
    stored = memory.load("uuid-tenant", "order", "789")
    assert stored is not None
    assert json.dumps(stored["v"]) == json.dumps(value)  # 25.0 stays 25.0, "12" stays a string


@pytest.mark.parametrize("name", ["\x03", "\x00x", "~~version", "\\x", "g"], ids=repr)
def test_odd_field_names_are_kept_apart_from_codes_and_bookkeeping(redis_url: str, name: str) -> None:
    memory = EntityMemory(Redis.from_url(redis_url), 3600)
    event = sample("booking.created")
    event["data"]["booking"][name] = "odd"
    memory.remember(event)
    booking = memory.load("uuid-tenant", "booking", "12345")
    assert booking is not None and booking[name] == "odd" and booking["fecha"] == "2024-01-25"


def _legacy_hash(redis: Redis, key: str) -> None:
    """A booking as the earlier version wrote it: fields, a `~` time beside each, bookkeeping."""
    created, newer = "1705746600.0", "1705750200.0"  # 10:30 and 11:30 on 2024-01-20
    redis.hset(
        key,
        mapping={
            "id": "12345", "~id": created,
            "fecha": '"2024-01-27"', "~fecha": newer,
            "hora_inicio": '"12:00"', "~hora_inicio": newer,
            "total": "25.0", "~total": created,
            "\\~odd": '"kept"', "~\\~odd": created,
            "cliente.id": "456", "~cliente.id": created,
            "~~version": "4", "~~ev:booking.created": "e-evt_abc123", "~~agenda.pro": "5", "~~agenda.seen": "4",
        },
    )  # fmt: skip
    redis.expire(key, 3600)


def test_memory_of_the_earlier_layout_is_read_then_converted_by_the_next_merge(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    memory = EntityMemory(redis, 3600)
    key = memory.key("uuid-tenant", "booking", "12345")
    _legacy_hash(redis, key)
    old = remembered(memory, key)
    assert old.data() == {"id": 12345, "fecha": "2024-01-27", "hora_inicio": "12:00", "total": 25.0, "~odd": "kept",
                          "cliente": {"id": 456}}  # fmt: skip
    assert (old.version, old.events, old.modified) == (4, {"booking.created": "e-evt_abc123"}, 1705750200.0)
    assert memory.events_of(memory.load_raw(key)) == {"booking.created": "e-evt_abc123"}

    updated = at(sample("booking.updated"), "2024-01-20T11:00:00Z")  # between the two legacy times
    memory.remember(updated, event_key(updated["id"]))
    assert redis.type(key) == b"string"
    new = remembered(memory, key)
    booking = new.data()
    assert (booking["fecha"], booking["hora_inicio"]) == ("2024-01-27", "12:00")  # the legacy times were newer
    assert (booking["hora_fin"], booking["codigo"], booking["total"], booking["~odd"]) == (
        "11:30",
        "ABC123XY",
        25.0,
        "kept",
    )
    assert new.version == 5
    assert new.events == {"booking.created": "e-evt_abc123", "booking.updated": event_key(updated["id"])}
    assert redis.ttl(key) > 0


def test_the_agenda_indexes_a_converted_booking_in_its_professionals_set(redis_url: str) -> None:
    from bridge import agenda

    redis = Redis.from_url(redis_url)
    memory = EntityMemory(redis, 20 * 365 * DAY)  # the agenda keeps 2024 that long
    key = memory.key("uuid-tenant", "booking", "12345")
    _legacy_hash(redis, key)
    memory.remember(at(sample("booking.created"), "2024-01-20T10:00:00Z"))  # older than every legacy field
    day = date(2024, 1, 27)
    assert agenda.booking_ids(redis, "uuid-tenant", agenda.day_score(day), agenda.day_score(day) + DAY, "5") == [
        "12345"
    ]


def _appointment_in(days: int) -> dict:
    event = sample("booking.created")
    event["created"] = datetime.now(UTC).isoformat()
    event["data"]["booking"]["fecha"] = (date.today() + timedelta(days=days)).isoformat()
    return event


def test_a_booking_is_kept_for_a_while_after_its_own_day_and_its_customer_as_long(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    keep = Keep({"booking": 7 * DAY, "customer": 30 * DAY, "order": 30 * DAY}, after_day=45 * DAY)
    memory = EntityMemory(redis, keep)
    memory.remember(_appointment_in(100))
    booking = redis.ttl(memory.key("uuid-tenant", "booking", "12345"))
    assert 100 * DAY + 45 * DAY - 2 * DAY < booking <= 100 * DAY + 47 * DAY
    assert redis.ttl(memory.key("uuid-tenant", "customer", "456")) >= booking - 5  # not 30 days

    memory.remember(at(_appointment_in(-400), datetime.now(UTC).isoformat()))  # moved long into the past
    assert 7 * DAY - 60 < redis.ttl(memory.key("uuid-tenant", "booking", "12345")) <= 7 * DAY  # the floor


def test_an_order_and_a_customer_are_kept_after_their_last_event(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    memory = EntityMemory(redis, Keep({"booking": DAY, "customer": 400 * DAY, "order": 90 * DAY}, after_day=45 * DAY))
    memory.remember(sample("order.created"))
    assert 90 * DAY - 60 < redis.ttl(memory.key("uuid-tenant", "order", "789")) <= 90 * DAY
    assert 400 * DAY - 60 < redis.ttl(memory.key("uuid-tenant", "customer", "456")) <= 400 * DAY


def test_a_realistic_booking_takes_at_most_600_bytes(redis_url: str) -> None:
    """Created, moved, paid, completed: MEMORY USAGE of its key (a byte count, not a time)."""
    redis = Redis.from_url(redis_url)
    memory = EntityMemory(redis, Keep.uniform(30 * DAY))
    created = sample("booking.created")
    paid = sample("payment.completed")
    completed = {**sample("booking.completed"), "created": "2024-01-26T12:00:00Z"}
    events = [created, sample("booking.updated"), paid, completed]
    for n, event in enumerate(events):
        event["id"] = f"evt_{n:02d}_3f9a2c71d4e8b6a05c1e"
        event["tenant_id"] = "6f1d2c3b-9a8e-4f7d-b6c5-a4b3c2d1e0f9"
        memory.remember(event, event_key(event["id"]))
    key = memory.key(events[0]["tenant_id"], "booking", "12345")
    assert len(remembered(memory, key).events) == 4
    assert redis.memory_usage(key, samples=0) <= 600


def test_the_earlier_entities_setting_keeps_every_kind_after_its_last_event() -> None:
    old = RetentionModel(entities=30 * DAY)
    assert (old.after_event("booking"), old.after_event("order"), old.after_appointment()) == (30 * DAY, 30 * DAY, None)
    new = RetentionModel()
    assert (new.after_event("customer"), new.after_event("order"), new.after_appointment()) == (
        400 * DAY,
        90 * DAY,
        45 * DAY,
    )
    assert new.after_event("booking") == new.events  # a booking's floor: the event log's retention
    with pytest.raises(ValueError, match="cannot be combined with bookings"):
        RetentionModel(entities=30 * DAY, bookings=10 * DAY)


def test_retention_follows_what_the_config_reads_of_past_bookings(write_config) -> None:  # noqa: ANN001
    from mappings.config import load_config
    from tests.conftest import http_config

    mapping = """
  - name: review
    on: ["booking.completed"]
    schedule: {at: "booking.start + 60d"}
    actions:
      - connector: crm
        body: "{{ booking.codigo }}"
"""
    config = load_config(write_config(http_config("http://127.0.0.1:1/", mappings=mapping)))
    keep = Keep.of(config)
    assert keep.after_day >= 61 * DAY  # the review request needs the booking after 60 days
    assert keep.after_event["customer"] == 400 * DAY
