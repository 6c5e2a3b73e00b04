"""google_calendar: the booking lifecycle end to end through the real Google client libraries, against
a fake Google (token endpoint + Calendar v3) on 127.0.0.1, with the shipped example config."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from bridge.cli import main
from bridge.jobs import entities_of
from bridge.operations import replay
from bridge.state import RedisConnectorStore, event_views, subject_of
from bridge.store import Status
from connectors.base import ActionRequest, MissingDataError, PermanentError, TransientError
from connectors.google_calendar import DEFAULT_SUMMARY, GoogleCalendarConnector, booking_times, google_event_id
from mappings.config import BridgeConfig, ConfigError, load_config_text
from mappings.routing import render_action, template_context
from tests.fakes.google_server import FakeGoogle, generate_key, key_file_info
from tests.harness import SECRET, Bridge, sample

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "google_calendar.yaml"
SA = "salon-bridge@salon-test.iam.gserviceaccount.com"
CARLOS, SALON = "carlos@example.com", "salon@example.com"
TENANT = "uuid-tenant"
EID = google_event_id(TENANT, "12345")
ACTION = "agenda/sync"
BOOKING_TYPES = ["booking.created", "booking.updated", "booking.cancelled", "booking.completed", "booking.no_show"]
HEADER = f"""
version: 1
timezone: Europe/Madrid
webhook:
  secrets: ["{SECRET}"]
retry:
  schedule: [0.1, 0.1, 0.1]
  jitter: 0
"""
# The connector's own `timezone` setting; the config's top-level `timezone` reaches a connector only
# once the core passes it in the action context (see test_the_config_timezone_is_used_by_default).
CONNECTOR_TZ = "    timezone: Europe/Madrid\n"


def example_config(on_cancel: str = "delete", connector: str = CONNECTOR_TZ, action: str = "") -> str:
    """The shipped example, verbatim but for the option under test, after a test header."""
    text = EXAMPLE.read_text(encoding="utf-8")
    if on_cancel != "delete":
        text = text.replace("on_cancel: delete ", f"on_cancel: {on_cancel} ", 1)
    text = text.replace("    type: google_calendar\n", "    type: google_calendar\n" + connector, 1)
    text = text.replace("        action: sync_booking\n", "        action: sync_booking\n" + action, 1)
    return HEADER + text


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return generate_key()


@pytest.fixture
def google(private_key: rsa.RSAPrivateKey) -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    fake.add_service_account(SA, private_key.public_key())
    fake.add_calendar(CARLOS, {SA: "writer"})
    fake.add_calendar(SALON, {SA: "writer"})
    yield fake
    fake.stop()


@pytest.fixture
def key_file(
    tmp_path: Path, private_key: rsa.RSAPrivateKey, google: FakeGoogle, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A real key file (fresh RSA key) whose token_uri is the fake; the example's env vars point at it."""
    path = tmp_path / "google-key.json"
    path.write_text(json.dumps(key_file_info(private_key, SA, google.token_uri)), encoding="utf-8")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("GOOGLE_CALENDAR_API_ENDPOINT", google.api_endpoint)
    return path


@pytest.fixture
def agenda(make_bridge: Callable[[str], Bridge], key_file: Path) -> Callable[..., Bridge]:
    def make(**options: str) -> Bridge:
        return make_bridge(example_config(**options))

    return make


@pytest.fixture
def connector(key_file: Path) -> Iterator[Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]]]:
    """A connector built from the example config, for calling send() and the checks directly."""
    built: list[GoogleCalendarConnector] = []

    def make(text: str | None = None) -> tuple[GoogleCalendarConnector, BridgeConfig]:
        config = load_config_text(text or example_config(), str(key_file.parent / "config.yaml"))
        instance = config.connectors["agenda"].build()
        assert isinstance(instance, GoogleCalendarConnector)
        built.append(instance)
        return instance, config

    yield make
    for instance in built:
        instance.close()


# --- events -----------------------------------------------------------------------------------

CREATED = sample("booking.created")["data"]["booking"]
STATE_OF = {
    "booking.created": "confirmada",
    "booking.updated": "confirmada",
    "booking.cancelled": "cancelada",
    "booking.completed": "completada",
    "booking.no_show": "no_show",
}


def booking_event(event_type: str, created: str, tenant: str = TENANT, **booking: Any) -> dict[str, Any]:
    """An event carrying the full booking (as the platform documents for all but no_show)."""
    full = {**json.loads(json.dumps(CREATED)), "estado": STATE_OF[event_type], **booking}
    return {
        "id": f"evt_{uuid.uuid4().hex[:16]}",
        "type": event_type,
        "created": created,
        "tenant_id": tenant,
        "data": {"booking": full},
    }


def the_event(google: FakeGoogle) -> tuple[str, dict[str, Any]]:
    """The one live Google event (there must be exactly one across all calendars)."""
    live = google.live_events()
    assert len(live) == 1, f"expected exactly one live event, got {sorted(live)}"
    [((calendar_id, event_id), event)] = live.items()
    assert event_id == EID
    return calendar_id, event


def request_for(config: BridgeConfig, envelope: dict[str, Any], store: Any = None) -> ActionRequest:
    """What the core hands send() for this event alone (no entity memory)."""
    spec = config.action(ACTION)
    assert spec is not None
    views = event_views(envelope)
    context = template_context(config.model.timezone, envelope, views)
    return ActionRequest(
        action=spec.action,
        fields=render_action(spec, context),
        event_id=envelope["id"],
        event_type=envelope["type"],
        event_created=envelope["created"],
        tenant_id=envelope["tenant_id"],
        action_id=spec.id,
        store=store,
        subject=subject_of(envelope, views),
        **entities_of(views),  # type: ignore[arg-type]
        timezone=config.model.timezone,
        data=envelope["data"],
    )


def post_all(bridge: Bridge, events: list[dict[str, Any]]) -> None:
    for event in events:
        assert bridge.post(event).status_code == 202, event["type"]
    bridge.drain()


def status_of(bridge: Bridge, event: dict[str, Any]) -> str:
    return bridge.record(event["id"]).actions[ACTION].status


# --- the shipped example ----------------------------------------------------------------------


def test_the_example_maps_all_five_booking_events_to_one_state_syncing_action(agenda: Callable[..., Bridge]) -> None:
    bridge = agenda()
    for event_type in BOOKING_TYPES:
        [mapping] = bridge.config.mappings_for(event_type, TENANT)
        assert [a.id for a in mapping.actions] == [ACTION]
    for other in ("payment.completed", "order.created", "customer.created"):
        assert bridge.config.mappings_for(other, TENANT) == []
    spec = bridge.config.action(ACTION)
    assert spec is not None and spec.action == "sync_booking"
    assert type(spec.fields).syncs_state is True
    settings = bridge.config.connectors["agenda"].settings
    assert settings.calendars.by_professional == {"5": CARLOS}  # type: ignore[attr-defined]


# --- the booking lifecycle --------------------------------------------------------------------


def test_created_inserts_one_event_in_the_professionals_calendar(
    agenda: Callable[..., Bridge], google: FakeGoogle, private_key: rsa.RSAPrivateKey
) -> None:
    bridge = agenda()
    event = sample("booking.created")
    post_all(bridge, [event])
    assert status_of(bridge, event) == Status.DONE
    calendar_id, entry = the_event(google)
    assert calendar_id == CARLOS
    assert entry["status"] == "confirmed"
    assert entry["summary"] == "Corte Clásico · Juan Pérez"
    assert entry["start"] == {"dateTime": "2024-01-25T10:30:00+01:00", "timeZone": "Europe/Madrid"}
    assert entry["end"] == {"dateTime": "2024-01-25T11:00:00+01:00", "timeZone": "Europe/Madrid"}
    assert entry["description"] == (
        "Reserva ABC123XY\n- Corte Clásico: 25,00 €\nTotal: 25,00 €\nCliente: Juan Pérez · +34612345678\n"
        "Notas: Primera visita"
    )
    assert entry["transparency"] == "opaque" and "colorId" not in entry
    assert entry["extendedProperties"]["private"]["salonBridgeBooking"] == "12345"
    # Signed in through the key file's token_uri with a JWT grant the fake verified.
    [token_request] = google.token_requests()
    assert b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in token_request.body
    [insert] = google.api_requests("POST")
    assert insert.query["sendUpdates"] == ["none"]


def test_samples_in_order_end_as_one_no_show_event_with_the_updated_time(
    agenda: Callable[..., Bridge], google: FakeGoogle
) -> None:
    """created, updated (time), cancelled (deleted), completed (restored), no_show: the newest wins."""
    bridge = agenda()
    events = [sample(t) for t in BOOKING_TYPES]
    post_all(bridge, events)
    assert [status_of(bridge, e) for e in events] == [Status.DONE] * 5  # each brought something new
    calendar_id, entry = the_event(google)
    assert calendar_id == CARLOS
    assert entry["summary"] == "No se presentó · Corte Clásico · Juan Pérez"
    assert entry["colorId"] == "11"
    assert entry["start"]["dateTime"] == "2024-01-26T11:00:00+01:00"
    assert entry["end"]["dateTime"] == "2024-01-26T11:30:00+01:00"
    assert entry["status"] == "confirmed"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4], ids=lambda s: f"shuffle{s}")
def test_samples_in_any_order_end_in_the_same_final_event(
    agenda: Callable[..., Bridge], google: FakeGoogle, seed: int
) -> None:
    bridge = agenda()
    events = [sample(t) for t in BOOKING_TYPES]
    if seed == 0:
        events.reverse()  # newest first, oldest last
    else:
        random.Random(seed).shuffle(events)
    post_all(bridge, events)
    calendar_id, entry = the_event(google)
    assert calendar_id == CARLOS
    assert entry["summary"] == "No se presentó · Corte Clásico · Juan Pérez"
    assert entry["colorId"] == "11"
    assert (entry["start"]["dateTime"], entry["end"]["dateTime"]) == (
        "2024-01-26T11:00:00+01:00",
        "2024-01-26T11:30:00+01:00",
    )
    statuses = [status_of(bridge, e) for e in events]
    assert Status.DONE in statuses and set(statuses) <= {Status.DONE, Status.STALE}  # stale: nothing new left to write


def test_completed_and_no_show_from_the_partial_samples_use_the_remembered_booking(
    agenda: Callable[..., Bridge], google: FakeGoogle
) -> None:
    bridge = agenda()
    post_all(bridge, [sample("booking.created"), sample("booking.completed")])
    _, entry = the_event(google)
    assert (entry["summary"], entry["colorId"]) == ("✔ Corte Clásico · Juan Pérez", "10")
    assert entry["start"]["dateTime"] == "2024-01-25T10:30:00+01:00"
    post_all(bridge, [sample("booking.no_show")])
    _, entry = the_event(google)
    assert (entry["summary"], entry["colorId"]) == ("No se presentó · Corte Clásico · Juan Pérez", "11")


def test_cancel_with_delete_removes_the_event(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    bridge = agenda()
    post_all(bridge, [sample("booking.created"), sample("booking.cancelled")])
    assert google.live_events() == {}
    assert google.event(CARLOS, EID)["status"] == "cancelled"  # type: ignore[index]


def test_cancel_with_keep_marks_it_cancelled_and_free(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    bridge = agenda(on_cancel="keep")
    post_all(bridge, [sample("booking.created"), sample("booking.cancelled")])
    calendar_id, entry = the_event(google)
    assert calendar_id == CARLOS
    assert entry["summary"] == "Cancelada · Corte Clásico · Juan Pérez"
    assert (entry["status"], entry["transparency"], entry["colorId"]) == ("confirmed", "transparent", "8")


def test_cancelled_then_reactivated_restores_the_deleted_id(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    """Google keeps a deleted id (insert answers 409): the event is taken over and set confirmed again."""
    bridge = agenda()
    post_all(
        bridge,
        [
            booking_event("booking.created", "2024-01-20T10:30:00Z"),
            booking_event("booking.cancelled", "2024-01-20T11:00:00Z"),
        ],
    )
    assert google.live_events() == {}
    post_all(bridge, [booking_event("booking.updated", "2024-01-20T12:00:00Z", hora_inicio="12:00", hora_fin="12:30")])
    _, entry = the_event(google)
    assert entry["status"] == "confirmed"
    assert entry["start"]["dateTime"] == "2024-01-25T12:00:00+01:00"
    assert [r.method for r in google.api_requests()][-2:] == ["POST", "PUT"]  # insert -> 409 -> update


def test_marks_are_configurable(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    bridge = agenda(action='        completed_prefix: "[hecho] "\n        completed_color_id: 2\n')
    post_all(bridge, [booking_event("booking.completed", "2024-01-25T11:05:00Z")])
    _, entry = the_event(google)
    assert (entry["summary"], entry["colorId"]) == ("[hecho] Corte Clásico · Juan Pérez", "2")


# --- moves between professionals --------------------------------------------------------------


def test_moving_between_professionals_keeps_exactly_one_event(
    agenda: Callable[..., Bridge], google: FakeGoogle
) -> None:
    bridge = agenda()
    ana = {"id": 7, "nombre": "Ana López"}  # not in by_professional: the default (salon) calendar
    carlos = {"id": 5, "nombre": "Carlos García"}
    post_all(bridge, [booking_event("booking.created", "2024-01-20T10:00:00Z")])
    assert the_event(google)[0] == CARLOS
    post_all(bridge, [booking_event("booking.updated", "2024-01-20T10:01:00Z", profesional=ana, hora_inicio="16:00")])
    calendar_id, entry = the_event(google)
    assert calendar_id == SALON
    assert entry["start"]["dateTime"] == "2024-01-25T16:00:00+01:00"
    assert google.api_requests("POST")[-1].path.endswith("/move")
    # Back to Carlos, whose calendar still holds the id as deleted (moved away): taken over, not duplicated.
    post_all(bridge, [booking_event("booking.updated", "2024-01-20T10:02:00Z", profesional=carlos)])
    calendar_id, entry = the_event(google)
    assert calendar_id == CARLOS
    assert entry["start"]["dateTime"] == "2024-01-25T10:30:00+01:00"


def test_a_move_google_refuses_is_done_as_write_new_then_delete_old(
    agenda: Callable[..., Bridge], google: FakeGoogle
) -> None:
    bridge = agenda()
    post_all(bridge, [booking_event("booking.created", "2024-01-20T10:00:00Z")])
    google.fail(403, "forbidden", "The event cannot be moved.", method="POST")  # the events.move
    post_all(bridge, [booking_event("booking.updated", "2024-01-20T10:01:00Z", profesional={"id": 7, "nombre": "Ana"})])
    assert the_event(google)[0] == SALON
    assert [r.method for r in google.api_requests()][-3:] == ["POST", "POST", "DELETE"]  # move, insert, delete


def test_a_move_without_the_store_record_uses_the_changes_of_the_update(
    agenda: Callable[..., Bridge], google: FakeGoogle
) -> None:
    bridge = agenda()
    post_all(bridge, [booking_event("booking.created", "2024-01-20T10:00:00Z")])
    RedisConnectorStore(bridge.redis, "agenda").delete(f"booking:{TENANT}:12345")
    moved = booking_event("booking.updated", "2024-01-20T10:01:00Z", profesional={"id": 7, "nombre": "Ana"})
    moved["data"]["changes"] = {"profesional": {"old": {"id": 5, "nombre": "Carlos García"}, "new": {"id": 7}}}
    post_all(bridge, [moved])
    assert the_event(google)[0] == SALON


def test_a_failed_clean_up_after_a_move_is_done_by_the_next_write(
    agenda: Callable[..., Bridge], google: FakeGoogle
) -> None:
    """Found by the chaos run: Carlos -> Lucía -> Carlos, the delete of Lucía's copy fails once."""
    bridge = agenda()
    ana = {"id": 7, "nombre": "Ana López"}
    carlos = {"id": 5, "nombre": "Carlos García"}
    post_all(bridge, [booking_event("booking.created", "2024-01-20T10:00:00Z")])
    post_all(bridge, [booking_event("booking.updated", "2024-01-20T10:01:00Z", profesional=ana)])
    google.fail(503, "backendError", "Backend Error", method="DELETE")
    post_all(bridge, [booking_event("booking.updated", "2024-01-20T10:02:00Z", profesional=carlos)])
    post_all(bridge, [booking_event("booking.completed", "2024-01-25T11:05:00Z")])
    assert the_event(google)[0] == CARLOS  # exactly one live entry, in Carlos's calendar


def test_a_write_whose_answer_was_lost_is_found_by_the_next_write(
    agenda: Callable[..., Bridge], google: FakeGoogle
) -> None:
    """Found by the chaos run: the worker died after Google inserted, before the store recorded it."""
    bridge = agenda()
    post_all(bridge, [booking_event("booking.created", "2024-01-20T10:00:00Z")])
    RedisConnectorStore(bridge.redis, "agenda").delete(f"booking:{TENANT}:12345")  # never recorded
    post_all(bridge, [booking_event("booking.updated", "2024-01-20T10:01:00Z", profesional={"id": 7, "nombre": "Ana"})])
    assert the_event(google)[0] == SALON


def test_calendar_id_field_overrides_the_lookup(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    google.add_calendar("sala2@example.com", {SA: "writer"})
    bridge = agenda(action="        calendar_id: \"{{ 'sala2@example.com' if booking.total > 20 else '' }}\"\n")
    post_all(bridge, [sample("booking.created")])
    assert the_event(google)[0] == "sala2@example.com"


# --- replays and duplicates -------------------------------------------------------------------


def test_duplicates_and_replays_never_add_a_second_event(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    bridge = agenda()
    created = sample("booking.created")
    post_all(bridge, [created])
    assert bridge.post(created).status_code == 200  # the same delivery again: deduplicated at ingest
    resent = dict(created, id="evt_resent_by_platform")  # the same content under a new event id
    post_all(bridge, [resent])
    replay(bridge.runtime, created["id"], ACTION, force=True)
    bridge.drain()
    assert status_of(bridge, created) in (Status.DONE, Status.STALE)
    _, entry = the_event(google)
    assert len(google.api_requests("POST")) == 1  # one insert; the rest were updates
    assert entry["summary"] == "Corte Clásico · Juan Pérez"


def test_replaying_an_older_event_changes_nothing(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    bridge = agenda()
    created, updated = sample("booking.created"), sample("booking.updated")
    post_all(bridge, [created, updated])
    before = the_event(google)[1]
    replay(bridge.runtime, created["id"], ACTION, force=True)
    bridge.drain()
    assert status_of(bridge, created) in (Status.DONE, Status.STALE)  # skipped, or written again from the newest state
    after = the_event(google)[1]
    assert after["start"] == before["start"] == {"dateTime": "2024-01-26T11:00:00+01:00", "timeZone": "Europe/Madrid"}


def test_the_same_request_twice_without_memory_inserts_then_takes_over(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle
) -> None:
    instance, config = connector()
    request = request_for(config, sample("booking.created"))
    first = instance.send(request)
    second = instance.send(request)  # no store: insert answers 409, so it updates
    assert (first.data["operation"], second.data["operation"]) == ("inserted", "updated")
    the_event(google)
    assert len(google.token_requests()) == 1  # one client, one token, reused


def test_an_event_gone_from_google_is_inserted_again(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    bridge = agenda()
    post_all(bridge, [sample("booking.created")])
    google.forget(CARLOS, EID)  # update will answer 404
    post_all(bridge, [booking_event("booking.updated", "2024-01-20T11:00:00Z", hora_inicio="17:00", hora_fin="18:00")])
    _, entry = the_event(google)
    assert entry["start"]["dateTime"] == "2024-01-25T17:00:00+01:00"
    assert [r.method for r in google.api_requests()][-2:] == ["PUT", "POST"]


def test_a_lost_answer_is_retried_without_a_duplicate(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    """Google inserted the event but the answer came too late: the retry's insert gets 409 and updates."""
    bridge = agenda(connector=CONNECTOR_TZ + "    timeout: 0.5\n")
    google.slow(2.0, apply=True, method="POST")
    event = sample("booking.created")
    post_all(bridge, [event])
    state = bridge.record(event["id"]).actions[ACTION]
    assert (state.status, state.attempts) == (Status.DONE, 2)
    assert "did not answer within 0.5 s" in state.history[0]["error"]
    the_event(google)


def test_two_tenants_with_the_same_booking_id_get_two_events(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    bridge = agenda()
    post_all(bridge, [sample("booking.created"), sample("booking.created", tenant_id="other-tenant")])
    assert sorted(google.live_events()) == sorted([(CARLOS, EID), (CARLOS, google_event_id("other-tenant", "12345"))])


# --- times ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("booking", "start", "end"),
    [
        (
            {"fecha": "2024-03-31", "hora_inicio": "01:30", "hora_fin": "03:30"},
            "2024-03-31T01:30:00+01:00",
            "2024-03-31T03:30:00+02:00",
        ),
        (
            {"fecha": "2024-10-27", "hora_inicio": "01:30", "hora_fin": None},
            "2024-10-27T01:30:00+02:00",
            "2024-10-27T02:00:00+01:00",  # 60 + 30 minutes of services, across the hour going back
        ),
        (
            {"fecha": "2024-03-31", "hora_inicio": "02:30", "hora_fin": "04:00"},
            "2024-03-31T03:30:00+02:00",  # 02:30 does not exist that night: the clock reads 03:30
            "2024-03-31T04:00:00+02:00",
        ),
        (
            {"fecha": "2024-07-01", "hora_inicio": "18:00", "hora_fin": None},
            "2024-07-01T18:00:00+02:00",
            "2024-07-01T19:30:00+02:00",
        ),
        (
            # Inside the skipped hour: the start moves forward by the gap and meets the end, so the
            # booking keeps its booked hour (it was a 24-hour entry: end <= start read as overnight).
            {"fecha": "2024-03-31", "hora_inicio": "02:30", "hora_fin": "03:30"},
            "2024-03-31T03:30:00+02:00",
            "2024-03-31T04:30:00+02:00",
        ),
        (
            {"fecha": "2024-03-31", "hora_inicio": "02:15", "hora_fin": "02:45"},
            "2024-03-31T03:15:00+02:00",
            "2024-03-31T03:45:00+02:00",
        ),
        (
            # 02:30 happens twice that night: the first time (still summer time, +02:00) is meant.
            {"fecha": "2024-10-27", "hora_inicio": "02:30", "hora_fin": "03:30"},
            "2024-10-27T02:30:00+02:00",
            "2024-10-27T03:30:00+01:00",
        ),
        (
            {"fecha": "2024-10-27", "hora_inicio": "02:30", "hora_fin": None},
            "2024-10-27T02:30:00+02:00",
            "2024-10-27T03:00:00+01:00",  # 90 real minutes, of which an hour was shown twice by the clock
        ),
        (
            {"fecha": "2024-03-30", "hora_inicio": "23:00", "hora_fin": "02:30"},
            "2024-03-30T23:00:00+01:00",
            "2024-03-31T03:30:00+02:00",  # ends after midnight, at a time skipped that night
        ),
    ],
    ids=[
        "spring-forward",
        "fall-back-by-duration",
        "in-the-gap",
        "summer-by-duration",
        "wholly-in-the-gap",
        "wholly-in-the-gap-short",
        "ambiguous-first-occurrence",
        "ambiguous-by-duration",
        "overnight-into-the-gap",
    ],
)
def test_times_are_wall_clock_in_the_salon_zone_across_dst(
    agenda: Callable[..., Bridge], google: FakeGoogle, booking: dict[str, Any], start: str, end: str
) -> None:
    services = [
        {"id": 1, "nombre": "Color", "precio": 40.0, "duracion_minutos": 60},
        {"id": 2, "nombre": "Peinado", "precio": 15.0, "duracion_minutos": 30},
    ]
    bridge = agenda()
    post_all(bridge, [booking_event("booking.created", "2024-01-20T10:00:00Z", servicios=services, **booking)])
    _, entry = the_event(google)
    assert (entry["start"]["dateTime"], entry["end"]["dateTime"]) == (start, end)
    assert entry["start"]["timeZone"] == entry["end"]["timeZone"] == "Europe/Madrid"
    assert entry["summary"] == "Color, Peinado · Juan Pérez"


@pytest.mark.parametrize(
    ("booking", "reason"),
    [
        pytest.param(
            {"servicios": [{"nombre": "Color", "duracion_minutos": 10**20}]},
            "booking 12345 has servicios[0].duracion_minutos 100000000000000000000, expected a number of minutes "
            "from 0 to 1440",
            id="huge-duration",
        ),
        pytest.param(
            {"servicios": [{"nombre": "Color", "duracion_minutos": 1e308}]},
            "booking 12345 has servicios[0].duracion_minutos 1e+308",
            id="float-duration",
        ),
        pytest.param(
            {"servicios": [{"nombre": "Color", "duracion_minutos": "una hora"}]},
            "booking 12345 has servicios[0].duracion_minutos 'una hora'",
            id="text-duration",
        ),
        pytest.param(
            {"servicios": [{"nombre": "Color", "duracion_minutos": 60}, {"nombre": "Corte", "duracion_minutos": -30}]},
            "booking 12345 has servicios[1].duracion_minutos -30",
            id="negative-duration",
        ),
        pytest.param(
            {
                "servicios": [
                    {"nombre": "Color", "duracion_minutos": 1000},
                    {"nombre": "Corte", "duracion_minutos": 1000},
                ]
            },
            "booking 12345 lasts 2000 minutes by its servicios' duracion_minutos, more than a day",
            id="more-than-a-day",
        ),
        pytest.param(
            {"fecha": "9999-12-31", "hora_inicio": "23:00", "hora_fin": "00:30"},
            "booking 12345 on fecha '9999-12-31' would end outside the dates a calendar can hold",
            id="last-day-overnight",
        ),
        pytest.param(
            {"fecha": "9999-12-31", "hora_inicio": "23:30", "hora_fin": None},
            "booking 12345 on fecha '9999-12-31' would end outside the dates a calendar can hold",
            id="last-day-by-duration",
        ),
    ],
)
def test_booking_data_no_calendar_can_hold_is_dead_at_once_with_the_field_named(
    agenda: Callable[..., Bridge], google: FakeGoogle, booking: dict[str, Any], reason: str
) -> None:
    bridge = agenda()
    event = booking_event("booking.created", "2024-01-20T10:00:00Z", **booking)
    post_all(bridge, [event])
    state = bridge.record(event["id"]).actions[ACTION]
    assert (state.status, state.attempts) == (Status.DEAD, 1)
    assert state.last_error.startswith(reason)
    assert google.live_events() == {}


def test_booking_times_without_end_or_durations_last_the_default_half_hour() -> None:
    start, end = booking_times({"id": 1, "fecha": "2024-01-25", "hora_inicio": "10:00"}, ZoneInfo("Europe/Madrid"))
    assert (end - start).total_seconds() == 1800
    assert start == datetime(2024, 1, 25, 10, 0, tzinfo=ZoneInfo("Europe/Madrid"))


def test_the_config_timezone_is_used_by_default(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    """No `timezone` on the connector: the config's (Europe/Madrid) applies, not UTC."""
    bridge = agenda(connector="")
    event = sample("booking.created")
    post_all(bridge, [event])
    assert status_of(bridge, event) == Status.DONE, bridge.record(event["id"]).actions[ACTION].last_error
    assert the_event(google)[1]["start"]["dateTime"] == "2024-01-25T10:30:00+01:00"


# --- what lands in Google ---------------------------------------------------------------------


def test_event_data_is_escaped_for_the_html_description_only(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    bridge = agenda()
    cliente = {"id": 9, "nombre": "Ana <b>&</b>", "telefono": "+34600000000"}
    post_all(
        bridge,
        [booking_event("booking.created", "2024-01-20T10:00:00Z", cliente=cliente, notas="<script>x</script>")],
    )
    _, entry = the_event(google)
    assert entry["summary"] == "Corte Clásico · Ana <b>&</b>"  # plain text in Google
    assert "Cliente: Ana &lt;b&gt;&amp;&lt;/b&gt; · +34600000000" in entry["description"]
    assert "Notas: &lt;script&gt;x&lt;/script&gt;" in entry["description"]


def test_event_ids_are_deterministic_base32hex() -> None:
    ids = {google_event_id(t, b) for t in ("t1", "t2") for b in ("1", "2", "12345")}
    assert len(ids) == 6
    for event_id in ids:
        assert re.fullmatch(r"[a-v0-9]{5,1024}", event_id)
    assert google_event_id("t1", "1") == google_event_id("t1", "1")


# --- errors -----------------------------------------------------------------------------------

NOT_SHARED = (
    f"calendar {CARLOS} is not shared with {SA} (or does not exist): share it with {SA} with 'Make changes to events'"
)


def _unshare(google: FakeGoogle) -> None:
    google.share(CARLOS, SA, None)


def _read_only(google: FakeGoogle) -> None:
    google.share(CARLOS, SA, "reader")


def _account_deleted(google: FakeGoogle) -> None:
    google.remove_service_account(SA)


@dataclass(frozen=True)
class ErrorCase:
    setup: Callable[[FakeGoogle], None]
    kind: type
    text: str  # in the reason
    retry_after: float | None = None
    calls: tuple[int, int] = (1, 1)  # (token requests, API requests): send() never retries by itself


ERROR_CASES = {
    "429": ErrorCase(lambda g: g.fail(429, retry_after="17"), TransientError, "HTTP 429 rateLimitExceeded", 17.0),
    "403-rate": ErrorCase(lambda g: g.fail(403, "rateLimitExceeded"), TransientError, "busy"),
    "403-user-rate": ErrorCase(
        lambda g: g.fail(403, "userRateLimitExceeded", retry_after="5"), TransientError, "busy", 5
    ),
    "403-daily-quota": ErrorCase(lambda g: g.fail(403, "quotaExceeded"), TransientError, "daily quota", 3600),
    "500": ErrorCase(lambda g: g.fail(500), TransientError, "HTTP 500 backendError"),
    "503-retry-after": ErrorCase(lambda g: g.fail(503, retry_after="120"), TransientError, "HTTP 503", 120),
    "token-503": ErrorCase(
        lambda g: g.fail(503, target="token"), TransientError, "token service answered HTTP 503", calls=(1, 0)
    ),
    "token-429": ErrorCase(
        lambda g: g.fail(429, target="token", retry_after="9"), TransientError, "HTTP 429", 9, calls=(1, 0)
    ),
    "401": ErrorCase(
        lambda g: g.fail(401, "authError", "Invalid Credentials", times=2),
        PermanentError,
        "did not accept the credentials of " + SA,
        calls=(2, 2),  # one new token and one more try, then it is the key
    ),
    "not-shared": ErrorCase(_unshare, PermanentError, NOT_SHARED),
    "read-only": ErrorCase(_read_only, PermanentError, f"does not let {SA} change events"),
    "forbidden-for-sa": ErrorCase(
        lambda g: g.fail(403, "forbiddenForServiceAccounts", "Service accounts cannot invite attendees"),
        PermanentError,
        "domain-wide delegation",
    ),
    "api-disabled": ErrorCase(
        lambda g: g.fail(403, "accessNotConfigured", "Google Calendar API has not been used in project 1"),
        PermanentError,
        "APIs & Services → Library → Google Calendar API",
    ),
    "400": ErrorCase(lambda g: g.fail(400, "invalid", "Invalid value"), PermanentError, "HTTP 400 invalid"),
    "key-deleted": ErrorCase(_account_deleted, PermanentError, "account not found", calls=(1, 0)),
}


@pytest.mark.parametrize("case", list(ERROR_CASES.values()), ids=list(ERROR_CASES))
def test_every_error_class(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle, case: ErrorCase
) -> None:
    instance, config = connector()
    case.setup(google)
    with pytest.raises((TransientError, PermanentError)) as caught:
        instance.send(request_for(config, sample("booking.created")))
    assert type(caught.value) is case.kind
    assert case.text in caught.value.reason
    if isinstance(caught.value, TransientError):
        assert caught.value.retry_after == case.retry_after
    assert "PRIVATE KEY" not in caught.value.reason
    assert (len(google.token_requests()), len(google.api_requests())) == case.calls


def test_a_slow_answer_is_a_timeout(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle
) -> None:
    instance, config = connector(example_config(connector=CONNECTOR_TZ + "    timeout: 0.3\n"))
    google.slow(2.0, apply=False)
    with pytest.raises(TransientError, match=r"did not answer within 0.3 s"):
        instance.send(request_for(config, sample("booking.created")))
    assert google.live_events() == {}
    instance.send(request_for(config, sample("booking.created")))  # the connection pool recovered
    the_event(google)


def test_google_unreachable_is_transient(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle
) -> None:
    instance, config = connector()
    google.stop()
    with pytest.raises(TransientError, match="cannot reach Google"):
        instance.send(request_for(config, sample("booking.created")))


def test_a_revoked_token_is_replaced_once(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle
) -> None:
    instance, config = connector()
    instance.send(request_for(config, sample("booking.created")))
    google.revoke_tokens()
    instance.send(request_for(config, booking_event("booking.updated", "2024-01-20T11:00:00Z", hora_fin="11:15")))
    assert len(google.token_requests()) == 2
    assert the_event(google)[1]["end"]["dateTime"] == "2024-01-25T11:15:00+01:00"


def test_a_key_the_service_account_does_not_have_is_refused(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle, key_file: Path
) -> None:
    info = json.loads(key_file.read_text())
    key_file.write_text(json.dumps(key_file_info(generate_key(), SA, info["token_uri"])))
    instance, config = connector()
    with pytest.raises(PermanentError, match="Invalid JWT Signature.*create a new JSON key"):
        instance.send(request_for(config, sample("booking.created")))


def test_domain_wide_delegation_acts_as_the_subject(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]],
    google: FakeGoogle,
    private_key: rsa.RSAPrivateKey,
) -> None:
    owner = "owner@salon.example"
    text = example_config(connector=CONNECTOR_TZ + f"    subject: {owner}\n")
    instance, config = connector(text)
    with pytest.raises(PermanentError, match="domain-wide delegation to act as owner@salon.example"):
        instance.send(request_for(config, sample("booking.created")))
    google.add_service_account(SA, private_key.public_key(), delegation_subjects={owner})
    instance, config = connector(text)
    with pytest.raises(PermanentError, match=f"calendar {CARLOS} is not shared with {owner}"):
        instance.send(request_for(config, sample("booking.created")))
    google.share(CARLOS, owner, "owner")
    instance.send(request_for(config, sample("booking.created")))
    assert the_event(google)[1]["creator"] == {"email": owner}


def test_a_professional_without_calendar_and_no_default_is_permanent(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle
) -> None:
    text = example_config().replace('      default: "salon@example.com"', "      # no default")
    instance, config = connector(text)
    event = booking_event("booking.created", "2024-01-20T10:00:00Z", profesional={"id": 8, "nombre": "Luis"})
    with pytest.raises(PermanentError, match=r'no calendar for professional 8 \(Luis\): add "8"'):
        instance.send(request_for(config, event))


def test_a_booking_whose_date_never_arrived_waits_for_the_earlier_event(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle
) -> None:
    text = example_config(action='        description: "{{ booking.id }}"\n')
    assert DEFAULT_SUMMARY in text  # the example's summary is the default one
    instance, config = connector(text.replace(DEFAULT_SUMMARY, "Reserva {{ booking.id }}"))
    with pytest.raises(MissingDataError, match=r"booking 12345: profesional unknown \(booking.created not received\)"):
        instance.send(request_for(config, sample("booking.no_show")))
    event = booking_event("booking.updated", "2024-01-20T11:00:00Z")
    del event["data"]["booking"]["fecha"]
    with pytest.raises(MissingDataError, match=r"booking 12345: fecha unknown"):
        instance.send(request_for(config, event))
    assert google.requests == []


def test_transient_errors_are_retried_by_the_core_and_permanent_ones_dead_lettered(
    agenda: Callable[..., Bridge], google: FakeGoogle
) -> None:
    bridge = agenda()
    google.fail(503)
    first = sample("booking.created")
    post_all(bridge, [first])
    state = bridge.record(first["id"]).actions[ACTION]
    assert (state.status, state.attempts) == (Status.DONE, 2)
    google.share(CARLOS, SA, None)
    second = booking_event("booking.updated", "2024-01-20T11:00:00Z", hora_inicio="12:00", hora_fin="12:30")
    post_all(bridge, [second])
    state = bridge.record(second["id"]).actions[ACTION]
    assert (state.status, state.attempts) == (Status.DEAD, 1)
    assert NOT_SHARED in state.last_error
    google.share(CARLOS, SA, "writer")  # the owner fixes the sharing, then replays the dead letter
    replay(bridge.runtime, second["id"], ACTION)
    bridge.drain()
    assert status_of(bridge, second) == Status.DONE
    assert the_event(google)[1]["start"]["dateTime"] == "2024-01-25T12:00:00+01:00"


def test_retry_after_sets_the_next_attempt(agenda: Callable[..., Bridge], google: FakeGoogle) -> None:
    bridge = agenda()
    google.fail(429, retry_after="30")
    event = sample("booking.created")
    assert bridge.post(event).status_code == 202
    queue = bridge.runtime.queue
    SimpleWorker([queue], connection=bridge.redis, serializer=JSONSerializer).work(burst=True)
    state = bridge.record(event["id"]).actions[ACTION]
    assert state.status == Status.RETRYING
    assert state.next_attempt_at is not None
    assert state.next_attempt_at - state.history[-1]["at"] >= 29.0  # the schedule says 0.1 s


# --- config, offline and online checks --------------------------------------------------------

BAD_CONFIGS: list[tuple[str, list[tuple[str, str]], str]] = [
    (
        "no-key",
        [('    credentials_file: "${GOOGLE_APPLICATION_CREDENTIALS}"', "")],
        "set exactly one of credentials_file",
    ),
    (
        "two-keys",
        [("    type: google_calendar\n", '    type: google_calendar\n    credentials_json: "{}"\n')],
        "set exactly one of credentials_file",
    ),
    ("bad-endpoint", [('api_endpoint: "${', 'api_endpoint: "ftp://x/${')], "api_endpoint must start with https://"),
    ("primary", [('default: "salon@example.com"', 'default: "primary"')], "calendar 'primary' is the service account"),
    (
        "no-calendars",
        [
            ('      by_professional: {"5": "carlos@example.com"}', ""),
            ('    calendars:\n      default: "salon@example.com"', "    calendars: {}\n     "),
        ],
        "set calendars.default",
    ),
    ("bad-color", [("on_cancel: delete", 'color_id: "12"\n        on_cancel: delete')], "colour 1-11"),
    ("bad-mark-color", [("on_cancel: delete", "no_show_color_id: 0\n        on_cancel: delete")], "colour 1-11"),
    ("bad-on-cancel", [("on_cancel: delete", "on_cancel: archive")], "'delete' or 'keep'"),
    (
        "bad-zone",
        [("    type: google_calendar\n", "    type: google_calendar\n    timezone: Mars/Base\n")],
        "Mars/Base",
    ),
    ("unknown-key", [("on_cancel: delete", "colour: 3\n        on_cancel: delete")], "unknown key"),
]


@pytest.mark.parametrize(("changes", "message"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_config_mistakes_stop_loading_with_a_clear_message(
    key_file: Path, changes: list[tuple[str, str]], message: str
) -> None:
    text = example_config(connector="")
    for old, new in changes:
        assert old in text
        text = text.replace(old, new, 1)
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "config.yaml")
    assert any(message in p for p in caught.value.problems), caught.value.problems


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


OFFLINE_CASES: list[tuple[str, Callable[[Path, dict[str, Any]], None], str]] = [
    ("missing", lambda p, i: p.unlink(), "does not exist: download a new JSON key"),
    ("not-json", lambda p, i: _write(p, "-----BEGIN PRIVATE KEY-----\n"), "is not JSON"),
    ("user-key", lambda p, i: _write(p, json.dumps({**i, "type": "authorized_user"})), "type is 'authorized_user'"),
    ("no-email", lambda p, i: _write(p, json.dumps({**i, "client_email": ""})), "has no client_email"),
    ("no-token-uri", lambda p, i: _write(p, json.dumps({k: v for k, v in i.items() if k != "token_uri"})), "token_uri"),
    ("bad-token-uri", lambda p, i: _write(p, json.dumps({**i, "token_uri": "oauth2"})), "not a URL"),
    (
        "bad-private-key",
        lambda p, i: _write(p, json.dumps({**i, "private_key": i["private_key"][:200]})),
        "private_key cannot be read",
    ),
]


@pytest.mark.parametrize(("spoil", "message"), [c[1:] for c in OFFLINE_CASES], ids=[c[0] for c in OFFLINE_CASES])
def test_offline_check_finds_key_problems_without_the_network(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]],
    google: FakeGoogle,
    key_file: Path,
    spoil: Callable[[Path, dict[str, Any]], None],
    message: str,
) -> None:
    instance, config = connector()
    assert instance.offline_check() == []
    spoil(key_file, json.loads(key_file.read_text()))
    [problem] = instance.offline_check()
    assert message in problem
    assert instance.online_check() == ["Google not reached: the key must be fixed first"]
    assert "PRIVATE KEY" not in problem
    with pytest.raises(PermanentError, match=re.escape(message)):
        instance.send(request_for(config, sample("booking.created")))
    assert google.requests == []


def test_credentials_json_holds_the_key_itself(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]],
    google: FakeGoogle,
    key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT_JSON", key_file.read_text())
    text = example_config().replace(
        '    credentials_file: "${GOOGLE_APPLICATION_CREDENTIALS}"',
        '    credentials_json: "${GOOGLE_SERVICE_ACCOUNT_JSON}"',
    )
    instance, config = connector(text)
    assert "credentials_json" in GoogleCalendarConnector.secret_fields
    assert instance.offline_check() == []
    instance.send(request_for(config, sample("booking.created")))
    the_event(google)


def test_online_check_confirms_every_calendar_is_writable(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle
) -> None:
    instance, _ = connector()
    assert instance.online_check() == []
    assert google.live_events() == {}  # the probes were deleted
    assert {unquote(r.path.split("/")[4]) for r in google.api_requests("POST")} == {CARLOS, SALON}
    google.share(CARLOS, SA, "reader")
    google.share(SALON, SA, None)
    problems = instance.online_check()
    assert len(problems) == 2
    assert f"calendar {CARLOS} does not let {SA} change events" in problems[0]
    assert f"calendar {SALON} is not shared with {SA}" in problems[1]
    assert all("Make changes to events" in p for p in problems)


def test_online_check_also_covers_a_fixed_calendar_id_of_an_action(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle
) -> None:
    instance, config = connector(example_config(action='        calendar_id: "sala2@example.com"\n'))
    actions = {a.id: a.fields for m in config.mappings for a in m.actions if a.connector == "agenda"}
    assert instance.online_check(actions) == [
        f"calendar sala2@example.com is not shared with {SA} (or does not exist): share it with {SA} with "
        "'Make changes to events' (Google Calendar → the calendar's Settings and sharing → Share with specific "
        "people) and check the calendar id in the config"
    ]


def test_online_check_reports_a_refused_key_once(
    connector: Callable[..., tuple[GoogleCalendarConnector, BridgeConfig]], google: FakeGoogle
) -> None:
    instance, _ = connector()
    google.remove_service_account(SA)
    [problem] = instance.online_check()
    assert "Google refused the key of " + SA in problem


def test_check_config_validates_the_key_offline_and_reaches_google_with_online(
    write_config: Callable[[str], Path], key_file: Path, google: FakeGoogle, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write_config(example_config()))
    assert main(["check-config", path]) == 0
    assert google.requests == []  # offline: nothing reached Google
    assert main(["check-config", path, "--online"]) == 0
    google.share(SALON, SA, None)
    capsys.readouterr()
    assert main(["check-config", path, "--online"]) == 1
    assert f"connectors.agenda: calendar {SALON} is not shared with {SA}" in capsys.readouterr().err
    key_file.write_text('{"type": "authorized_user"}', encoding="utf-8")
    assert main(["check-config", path]) == 1
    assert f"connectors.agenda: key file {key_file} is not a service account key" in capsys.readouterr().err


def test_distinct_tenant_and_booking_pairs_never_share_an_event_id() -> None:
    assert google_event_id("a\x00b", "c") != google_event_id("a", "b\x00c")
    assert google_event_id("a\\", "0b") != google_event_id("a", "\\0b")
