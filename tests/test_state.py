"""Entity memory, ordering and the ledger: what makes out-of-order, repeated events come out right."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from redis import Redis

from bridge.state import EntityMemory, Ordering, subject_of
from bridge.store import Status, seen_key
from tests.conftest import http_config
from tests.fakes.http_server import CapturingServer
from tests.harness import Bridge, sample

SYNC = """
  - name: crm-sync
    on: ["booking.*"]
    actions:
      - connector: crm
        action: sync
        name: booking
        body:
          event: "{{ event.id }}"
          estado: "{{ booking.estado }}"
          fecha: "{{ booking.fecha }}"
          hora: "{{ booking.hora_inicio }}"
          cliente: "{{ booking.cliente.nombre }}"
"""

NO_SHOW_NOTICE = """
  - name: no-shows
    on: ["booking.no_show"]
    actions:
      - connector: crm
        body: >-
          {{ booking.cliente.nombre }} no vino el {{ booking.fecha | date }}
          a las {{ booking.hora_inicio }} con {{ booking.profesional.nombre }}
"""

SHIPPED_NOTICE = """
  - name: shipped
    on: ["order.shipped"]
    actions:
      - connector: crm
        body: {to: "{{ order.cliente.email }}", tracking: "{{ order.tracking_url }}"}
"""


def at(event: dict, created: str) -> dict:
    event["created"] = created
    return event


def test_memory_keeps_the_newest_value_of_each_field(redis_url: str) -> None:
    memory = EntityMemory(Redis.from_url(redis_url), 3600)
    created = at(sample("booking.created"), "2024-01-20T10:30:00Z")
    updated = at(sample("booking.updated"), "2024-01-20T11:00:00Z")
    memory.remember(updated)
    memory.remember(created)  # older, arrives later: fills gaps, overwrites nothing newer
    booking = memory.load("uuid-tenant", "booking", "12345")
    assert booking is not None
    assert (booking["fecha"], booking["hora_inicio"], booking["hora_fin"]) == ("2024-01-26", "11:00", "11:30")
    assert booking["cliente"] == {
        "id": 456,
        "nombre": "Juan Pérez",
        "email": "juan@email.com",
        "telefono": "+34612345678",
    }
    assert booking["servicios"][0]["nombre"] == "Corte Clásico"
    assert booking["estado"] == "confirmada"


def test_customer_changes_reach_the_booking_view(redis_url: str) -> None:
    memory = EntityMemory(Redis.from_url(redis_url), 3600)
    memory.remember(sample("booking.created"))
    memory.remember(sample("customer.updated"))  # renames customer 456 two days later
    views = memory.views(subject_of(sample("booking.no_show")))
    assert views["booking"]["cliente"]["nombre"] == "Juan Pérez García"
    assert views["customer"]["nombre"] == "Juan Pérez García"
    assert views["order"] is None


def test_memory_is_per_tenant_and_expires(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    memory = EntityMemory(redis, 3600)
    memory.remember(sample("order.created"))
    assert memory.load("another-salon", "order", "789") is None
    assert 3500 < redis.ttl(memory.key("uuid-tenant", "order", "789")) <= 3600


def test_a_partial_event_is_filled_in_from_memory(make_bridge, destination: CapturingServer) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(http_config(destination.url, mappings=NO_SHOW_NOTICE))
    bridge.post(sample("booking.created"))  # unmapped here, accepted for memory
    bridge.post(sample("booking.no_show"))
    bridge.drain()
    assert [r.json() for r in destination.requests] == [
        "Juan Pérez no vino el 25/01/2024 a las 10:30 con Carlos García"
    ]


def test_order_shipped_reaches_the_customer_remembered_from_order_created(make_bridge, destination) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(http_config(destination.url, mappings=SHIPPED_NOTICE))
    bridge.post(sample("order.created"))
    bridge.post(sample("order.shipped"))
    bridge.drain()
    assert [r.json() for r in destination.requests] == [
        {"to": "juan@email.com", "tracking": "https://tracking.example.com/1Z999AA10123456784"}
    ]


def test_data_never_seen_fails_with_a_reason_a_person_understands(make_bridge, destination) -> None:  # noqa: ANN001
    config = http_config(destination.url, mappings=SHIPPED_NOTICE).replace(
        "  jitter: 0", "  jitter: 0\n  wait_for_missing_data: 1s"
    )
    bridge: Bridge = make_bridge(config)
    shipped = sample("order.shipped")
    bridge.post(shipped)
    bridge.drain()
    assert destination.requests == []
    state = bridge.record(shipped["id"]).actions["shipped/0"]
    assert state.status == Status.DEAD
    assert state.last_error == "mappings[0].actions[0].body.to: order 789: cliente unknown (order.created not received)"
    # It waited for a late order.created before giving up.
    assert state.history[0]["outcome"] == Status.RETRYING
    assert state.history[0]["error"].startswith("waiting for earlier events: ")
    assert state.history[-1]["outcome"] == Status.DEAD


def test_data_arriving_late_is_used_by_the_retry(make_bridge, destination) -> None:  # noqa: ANN001
    config = http_config(destination.url, mappings=NO_SHOW_NOTICE).replace("[0.1, 0.1, 0.1]", "[1, 1, 1]")
    bridge: Bridge = make_bridge(config)
    no_show = sample("booking.no_show")
    bridge.post(no_show)
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    SimpleWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer).work(burst=True)
    assert bridge.record(no_show["id"]).actions["no-shows/0"].status == Status.RETRYING
    bridge.post(sample("booking.created"))  # the platform delivers the earlier event late
    bridge.drain()
    assert [r.json() for r in destination.requests] == [
        "Juan Pérez no vino el 25/01/2024 a las 10:30 con Carlos García"
    ]
    assert bridge.record(no_show["id"]).actions["no-shows/0"].status == Status.DONE


@pytest.mark.parametrize(
    ("order", "stale"),
    [
        pytest.param(["created", "updated", "cancelled"], [], id="in-order"),
        # The late update still brings the new date: it is written, and the booking stays cancelled.
        pytest.param(["created", "cancelled", "updated"], [], id="late-update-after-cancel"),
        pytest.param(["updated", "created", "cancelled"], [], id="late-create-after-update"),
        pytest.param(["cancelled", "updated", "created"], [], id="reversed"),
        # A redelivery under a new id, after everything: it brings nothing new and writes nothing.
        pytest.param(["created", "updated", "cancelled", "created-again"], ["created-again"], id="late-repeat"),
    ],
)
def test_the_last_write_is_always_the_newest_known_state(make_bridge, destination, order, stale) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(http_config(destination.url, mappings=SYNC))
    events = {
        "created": at(sample("booking.created"), "2024-01-20T10:30:00Z"),
        "updated": at(sample("booking.updated"), "2024-01-20T11:00:00Z"),
        "cancelled": at(sample("booking.cancelled"), "2024-01-20T12:00:00Z"),
        "created-again": at(sample("booking.created"), "2024-01-20T10:30:00Z"),
    }
    for name in order:  # delivered in this order, processed as they come
        bridge.post(events[name])
    bridge.drain()
    statuses = {name: bridge.record(events[name]["id"]).actions["crm-sync/booking"].status for name in order}
    assert set(statuses.values()) <= {Status.DONE, Status.STALE}
    assert all(statuses[name] == Status.STALE for name in stale)
    # Whatever the order, the last write carries the newest value of every field, and a late
    # event never brings a cancelled booking back.
    last = destination.requests[-1].json()
    assert (last["estado"], last["fecha"], last["hora"], last["cliente"]) == (
        "cancelada", "2024-01-26", "11:00", "Juan Pérez",
    )  # fmt: skip
    for name in stale:
        detail = bridge.record(events[name]["id"]).actions["crm-sync/booking"].detail
        assert detail.startswith("stale: crm:uuid-tenant:booking:12345 already has everything known")


def test_a_redelivery_after_the_dedupe_window_does_not_repeat_done_actions(bridge: Bridge, destination) -> None:  # noqa: ANN001
    event = sample("booking.created")
    bridge.post(event)
    bridge.drain()
    bridge.redis.delete(seen_key(bridge.record(event["id"]).key))  # the dedupe window has passed
    assert bridge.post(event).status_code == 202  # accepted again: the platform is not told "duplicate"
    bridge.drain()
    assert len(destination.requests) == 1  # but the ledger remembers the action is done


def test_one_bookings_events_never_run_at_the_same_time(make_bridge, destination, redis_url, write_config) -> None:  # noqa: ANN001
    """Two worker processes, six events of each of two bookings, a slow destination: it never
    sees two calls about the same booking at once."""
    mappings = """
  - name: per-booking
    on: ["booking.*"]
    actions:
      - connector: crm
        body: {booking: "{{ booking.id }}", event: "{{ event.id }}"}
"""
    text = http_config(destination.url, mappings=mappings).replace(
        "connectors:", f'redis_url: "{redis_url}"\nconnectors:', 1
    )
    bridge: Bridge = make_bridge(text)
    destination.default.delay = 0.1
    destination.key_of = lambda request: request.json()["booking"]
    for booking_id in (1001, 1002):
        for event_type in ("booking.created", "booking.updated", "booking.completed") * 2:
            event = sample(event_type)
            event["data"]["booking"]["id"] = booking_id
            assert bridge.post(event).status_code == 202
    config = write_config(text, "workers.yaml")
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "worker", "--burst", "--config", str(config)],
            env=os.environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.wait(120) == 0
    assert len(destination.requests) == 12
    assert destination.max_in_flight == {"1001": 1, "1002": 1}


def test_an_event_whose_booking_is_locked_waits_its_turn(bridge: Bridge, destination) -> None:  # noqa: ANN001
    """Another worker holds booking 12345: the job is put back for later instead of failing."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    held = bridge.redis.lock("sb:lock:uuid-tenant:booking:12345", timeout=30)
    assert held.acquire()
    event = sample("booking.created")
    bridge.post(event)
    SimpleWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer).work(burst=True)
    assert destination.requests == []
    assert bridge.runtime.queue.scheduled_job_registry.count == 1
    held.release()
    bridge.drain()
    assert len(destination.requests) == 1
    assert bridge.record(event["id"]).actions["all-to-crm/notify"].status == Status.DONE


def test_memory_survives_a_redis_that_forgot_its_scripts(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    memory = EntityMemory(redis, 3600)
    redis.script_flush()  # as after a Redis restart
    memory.remember(sample("order.created"))
    assert memory.load("uuid-tenant", "order", "789")["numero"] == "PED-2024-0789"


TWO_NOTICES = """
  - name: two
    on: ["booking.created"]
    actions:
      - {connector: crm, name: first, body: "first {{ booking.id }}"}
      - {connector: crm, name: second, body: "second {{ booking.id }}"}
"""
BOOKING_LOCK = "sb:lock:uuid-tenant:booking:12345"


def test_a_worker_whose_lock_another_worker_took_stops_before_its_next_action(make_bridge, destination) -> None:  # noqa: ANN001
    """The booking's lock expired during the first action (a stalled worker) and another worker
    took it: the second action is not sent; it is left as it was, and the job comes back later."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    bridge: Bridge = make_bridge(http_config(destination.url, mappings=TWO_NOTICES))
    destination.on_request = lambda request: bridge.redis.set(BOOKING_LOCK, "another-worker", px=30_000)
    event = sample("booking.created")
    bridge.post(event)
    SimpleWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer).work(burst=True)
    assert [r.json() for r in destination.requests] == ["first 12345"]
    actions = bridge.record(event["id"]).actions
    assert actions["two/first"].status == Status.DONE
    assert (actions["two/second"].status, actions["two/second"].attempts) == ("pending", 0)
    assert bridge.runtime.queue.scheduled_job_registry.count == 1
    assert bridge.redis.get(BOOKING_LOCK) == b"another-worker"  # not released by the worker that lost it

    destination.on_request = None
    bridge.redis.delete(BOOKING_LOCK)  # the other worker is done
    bridge.drain()
    assert [r.json() for r in destination.requests] == ["first 12345", "second 12345"]
    second = bridge.record(event["id"]).actions["two/second"]
    assert (second.status, second.attempts) == (Status.DONE, 1)
    assert bridge.redis.get("sb:stats:possible_duplicates") is None
    assert bridge.redis.keys("sb:lock:*") == []


def test_a_lock_that_expired_with_nobody_taking_it_is_taken_again(make_bridge, destination) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(http_config(destination.url, mappings=TWO_NOTICES))
    destination.on_request = lambda request: bridge.redis.delete(BOOKING_LOCK)  # expired during the call
    event = sample("booking.created")
    bridge.post(event)
    bridge.drain()
    assert [r.json() for r in destination.requests] == ["first 12345", "second 12345"]
    assert {a.status for a in bridge.record(event["id"]).actions.values()} == {Status.DONE}
    assert bridge.runtime.queue.scheduled_job_registry.count == 0
    assert bridge.redis.keys("sb:lock:*") == []


@pytest.mark.parametrize("odd_key", ["~id", "~~version", "\\backslash", "~"])
def test_event_data_never_reaches_memorys_own_bookkeeping(make_bridge, destination, odd_key: str) -> None:  # noqa: ANN001
    """A key like `~id` in a booking is kept as data; later events of that booking still merge,
    and a calendar-like sync is not skipped as stale."""
    bridge: Bridge = make_bridge(http_config(destination.url, mappings=SYNC))
    created = at(sample("booking.created"), "2024-01-20T10:30:00Z")
    created["data"]["booking"][odd_key] = "12"
    updated = at(sample("booking.updated"), "2024-01-20T11:00:00Z")
    bridge.post(created)
    bridge.post(updated)
    bridge.drain()
    assert [bridge.record(e["id"]).actions["crm-sync/booking"].status for e in (created, updated)] == [
        Status.DONE,
        Status.DONE,
    ]
    assert destination.requests[-1].json()["hora"] == "11:00"
    booking = bridge.runtime.memory.load("uuid-tenant", "booking", "12345")
    assert booking is not None and booking[odd_key] == "12" and booking["hora_inicio"] == "11:00"


def test_distinct_tenants_and_ids_never_share_memory(redis_url: str) -> None:
    """Tenant `acme` with booking `customer:77` against tenant `acme:booking` with customer 77."""
    memory = EntityMemory(Redis.from_url(redis_url), 3600)
    one = {"id": "1", "created": "2024-01-20T10:00:00Z", "tenant_id": "acme", "type": "booking.created"}
    one["data"] = {"booking": {"id": "customer:77", "estado": "confirmada"}}
    other = {"id": "2", "created": "2024-01-20T10:00:00Z", "tenant_id": "acme:booking", "type": "customer.created"}
    other["data"] = {"customer": {"id": "77", "nombre": "Ana"}}
    memory.remember(one)
    memory.remember(other)
    assert memory.load("acme", "booking", "customer:77") == {"id": "customer:77", "estado": "confirmada"}
    assert memory.load("acme:booking", "customer", "77") == {"id": "77", "nombre": "Ana"}
    assert memory.key("uuid-tenant", "booking", "12345") == "sb:mem:uuid-tenant:booking:12345"  # plain ids unchanged


def test_the_synced_mark_never_moves_back_to_an_older_version(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    ordering = Ordering(redis, ttl=3600)
    for version in ["1", "2", "1.1", "2", "2.1", "10.0", "9.9"]:
        pipe = redis.pipeline()
        ordering.mark_synced_on(pipe, "crm:t:booking:1", version)
        pipe.execute()
    assert redis.get("sb:synced:crm:t:booking:1") == b"10.0"


def test_the_lock_is_kept_while_a_call_outlasts_its_lifetime(make_bridge, destination) -> None:  # noqa: ANN001
    """A destination slower than the lock's lifetime: another worker cannot take the booking meanwhile."""
    bridge: Bridge = make_bridge(http_config(destination.url, mappings=TWO_NOTICES))
    bridge.runtime.ordering.lock_timeout = 0.6
    seen_while_in_flight: list[bytes | None] = []

    def look_later(_request: object) -> None:
        time.sleep(1.2)  # twice the lock's lifetime, before the answer
        seen_while_in_flight.append(bridge.redis.get(BOOKING_LOCK))

    destination.on_request = look_later
    bridge.post(sample("booking.created"))
    bridge.drain()
    assert len(seen_while_in_flight) == 2 and all(seen_while_in_flight), "the lock expired during the call"
    assert bridge.redis.keys("sb:lock:*") == []


@pytest.mark.parametrize(
    ("event_type", "label"),
    [
        pytest.param("booking.created", "booking ABC123XY · Juan Pérez", id="booking"),
        pytest.param("booking.no_show", "booking 12345", id="booking-without-code"),
        pytest.param("payment.completed", "booking ABC123XY · Juan Pérez", id="payment"),
        pytest.param("order.created", "order PED-2024-0789 · Juan Pérez", id="order"),
        pytest.param("customer.updated", "customer 456", id="customer"),
    ],
)
def test_what_an_event_is_about_is_worked_out_once(event_type: str, label: str) -> None:
    subject = subject_of(sample(event_type))
    assert subject.label == label
    assert subject.tenant == "uuid-tenant"


def test_memory_gives_the_label_an_event_lacks(redis_url: str) -> None:
    memory = EntityMemory(Redis.from_url(redis_url), 3600)
    memory.remember(sample("booking.created"))
    no_show = sample("booking.no_show")
    subject = subject_of(no_show)
    assert subject.primary == ("booking", "12345") and subject.entities == (("booking", "12345"),)
    assert subject_of(no_show, memory.views(subject)).label == "booking ABC123XY · Juan Pérez"
