"""Calendar feeds and the agenda index, end to end: signed webhooks in, real workers, the feed
read back over HTTP and parsed by two independent parsers (icalendar and ical)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import icalendar
import pytest
import requests
from ical.calendar_stream import IcsCalendarStream

from bridge import agenda
from bridge.cli import main
from bridge.feeds import TOKEN_LENGTH, feed_path, feed_token
from mappings.config import ConfigError
from tests.conftest import http_config
from tests.harness import Bridge, sample
from tests.test_cli import with_redis
from tests.test_server import Serve

FEED_SECRET = "feed-secret-0123456789"
TENANT = "uuid-tenant"
MADRID = ZoneInfo("Europe/Madrid")
DAY = datetime.now(UTC).astimezone(MADRID).date() + timedelta(days=3)


def feeds_config(url: str, settings: str = "", staff: str = "") -> str:
    extra = f"""
calendar_feeds:
  secret: "{FEED_SECRET}"
{settings}
staff:
  "5": {{name: "Carlos García", email: "carlos@salon.example"}}
{staff}
"""
    return http_config(url, extra=extra)


@pytest.fixture
def feed_bridge(make_bridge: Callable[[str], Bridge], destination, redis_url: str) -> Bridge:  # noqa: ANN001
    return make_bridge(with_redis(feeds_config(destination.url), redis_url))


def booking_event(event_type: str, created: str, **booking: object) -> dict:
    envelope = sample(event_type, created=created)
    envelope["data"]["booking"].update({"fecha": DAY.isoformat(), **booking})
    return envelope


def deliver(bridge: Bridge, *envelopes: dict) -> None:
    for envelope in envelopes:
        assert bridge.post(envelope).status_code == 202
    bridge.drain()


def fetch(bridge: Bridge, professional: str | None, headers: dict[str, str] | None = None):  # noqa: ANN201
    return bridge.client.get(feed_path(feed_token(FEED_SECRET, TENANT, professional)), headers=headers or {})


def both_parsers(body: bytes) -> tuple[list[icalendar.Event], list]:
    """The feed's events as icalendar and as ical (allenporter) read them."""
    events = list(icalendar.Calendar.from_ical(body).walk("VEVENT"))
    other = IcsCalendarStream.calendar_from_ics(body.decode()).events
    assert len(events) == len(other)
    return events, other


def test_lifecycle_create_move_change_professional_cancel_complete(feed_bridge: Bridge) -> None:
    deliver(feed_bridge, booking_event("booking.created", "2026-01-01T10:00:00Z"))
    response = fetch(feed_bridge, "5")
    assert response.status_code == 200
    assert response.content_type == "text/calendar; charset=utf-8"
    (event,), (other,) = both_parsers(response.data)
    assert event["UID"] == other.uid == f"booking-12345.{TENANT}@salon-bridge"
    assert event.decoded("DTSTART") == datetime.combine(DAY, datetime.min.time().replace(hour=10, minute=30), MADRID)
    assert event["DTSTART"].params["TZID"] == "Europe/Madrid"
    assert other.dtstart == event.decoded("DTSTART")
    assert other.dtend == event.decoded("DTSTART") + timedelta(minutes=30)
    assert str(event["SUMMARY"]) == "Corte Clásico · Juan"  # first_name by default
    assert "Código: ABC123XY" in str(event["DESCRIPTION"]) and "25,00 €" in str(event["DESCRIPTION"])
    assert str(event["STATUS"]) == "CONFIRMED"
    calendar = icalendar.Calendar.from_ical(response.data)
    assert str(calendar["X-WR-CALNAME"]) == "Agenda de Carlos García"
    assert [str(tz["TZID"]) for tz in calendar.walk("VTIMEZONE")] == ["Europe/Madrid"]
    sequences = [int(event["SEQUENCE"])]

    # moved to 17:00
    deliver(
        feed_bridge, booking_event("booking.updated", "2026-01-02T10:00:00Z", hora_inicio="17:00", hora_fin="17:45")
    )
    (event,), (other,) = both_parsers(fetch(feed_bridge, "5").data)
    assert event.decoded("DTSTART").hour == 17 and other.dtstart.hour == 17
    assert other.dtend - other.dtstart == timedelta(minutes=45)
    sequences.append(int(event["SEQUENCE"]))

    # given to professional 7: leaves 5's feed, enters 7's; the salon's keeps it
    deliver(
        feed_bridge,
        booking_event("booking.updated", "2026-01-03T10:00:00Z", hora_inicio="17:00", hora_fin="17:45",
                      profesional={"id": 7, "nombre": "Lucía Martín"}),
    )  # fmt: skip
    assert both_parsers(fetch(feed_bridge, "5").data) == ([], [])
    (event,), (other,) = both_parsers(fetch(feed_bridge, "7").data)
    assert other.uid == str(event["UID"]) == f"booking-12345.{TENANT}@salon-bridge"
    sequences.append(int(event["SEQUENCE"]))
    salon = fetch(feed_bridge, None).data
    (salon_event,), _ = both_parsers(salon)
    assert "Profesional: Lucía Martín" in str(salon_event["DESCRIPTION"])

    # cancelled: stays, with its status and a raised SEQUENCE
    cancel = booking_event("booking.cancelled", "2026-01-04T10:00:00Z", hora_inicio="17:00", hora_fin="17:45",
                           profesional={"id": 7, "nombre": "Lucía Martín"})  # fmt: skip
    deliver(feed_bridge, cancel)
    (event,), (other,) = both_parsers(fetch(feed_bridge, "7").data)
    assert str(event["STATUS"]) == "CANCELLED" and str(other.status).endswith("CANCELLED")
    assert str(event["SUMMARY"]).startswith("Cancelada: ")
    sequences.append(int(event["SEQUENCE"]))

    # completed (the platform's later word)
    done = booking_event("booking.completed", "2026-01-05T10:00:00Z", hora_inicio="17:00", hora_fin="17:45",
                         profesional={"id": 7, "nombre": "Lucía Martín"})  # fmt: skip
    deliver(feed_bridge, done)
    (event,), (other,) = both_parsers(fetch(feed_bridge, "7").data)
    assert str(event["STATUS"]) == "CONFIRMED" and "Estado: completada" in other.description
    sequences.append(int(event["SEQUENCE"]))
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences), sequences


def test_an_older_event_arriving_late_does_not_move_the_booking_back(feed_bridge: Bridge) -> None:
    moved = booking_event("booking.updated", "2026-01-02T10:00:00Z", hora_inicio="18:00", hora_fin="18:30")
    deliver(feed_bridge, moved, booking_event("booking.created", "2026-01-01T10:00:00Z"))
    (event,), _ = both_parsers(fetch(feed_bridge, "5").data)
    assert event.decoded("DTSTART").hour == 18
    day = agenda.agenda(feed_bridge.redis, TENANT, DAY, "5", MADRID)
    assert [(b["id"], b["hora_inicio"]) for b in day] == [(12345, "18:00")]


def test_agenda_query_orders_a_day_and_lists_who_works(feed_bridge: Bridge) -> None:
    late = booking_event("booking.created", "2026-01-01T10:00:00Z", id=2, hora_inicio="19:00", hora_fin="19:30")
    early = booking_event("booking.created", "2026-01-01T10:00:00Z", id=1, hora_inicio="09:00", hora_fin="09:30")
    other = booking_event("booking.created", "2026-01-01T10:00:00Z", id=3, hora_inicio="12:00",
                          profesional={"id": 9, "nombre": "Ana"})  # fmt: skip
    next_day = booking_event(
        "booking.created", "2026-01-01T10:00:00Z", id=4, fecha=(DAY + timedelta(days=1)).isoformat()
    )
    deliver(feed_bridge, late, early, other, next_day)
    assert [b["id"] for b in agenda.agenda(feed_bridge.redis, TENANT, DAY, "5", MADRID)] == [1, 2]
    assert [b["id"] for b in agenda.agenda(feed_bridge.redis, TENANT, DAY, None, MADRID)] == [1, 3, 2]
    assert agenda.booked_on(feed_bridge.redis, DAY) == {TENANT: ["5", "9"]}
    assert agenda.agenda(feed_bridge.redis, TENANT, DAY + timedelta(days=9), None, MADRID) == []


def test_dst_change_day_has_the_right_offsets(feed_bridge: Bridge) -> None:
    # Madrid's clocks go back on the last Sunday of October: 10:00 is UTC+1 that day, UTC+2 the day before.
    year = DAY.year if DAY.month < 10 else DAY.year + 1
    sunday = max(date(year, 10, d) for d in range(25, 32) if date(year, 10, d).weekday() == 6)
    before = booking_event(
        "booking.created", "2026-01-01T10:00:00Z", id=1, fecha=(sunday - timedelta(days=1)).isoformat()
    )
    after = booking_event("booking.created", "2026-01-01T10:00:00Z", id=2, fecha=sunday.isoformat())
    deliver(feed_bridge, before, after)
    bridge = feed_bridge
    settings = bridge.config.model.calendar_feeds
    assert settings is not None
    feeds = bridge.app.extensions["salon_bridge"]["feeds"]
    body = feeds.render(TENANT, "5", sunday - timedelta(days=2))
    events, other = both_parsers(body)
    offsets = sorted(e.decoded("DTSTART").utcoffset() for e in events)
    assert offsets == [timedelta(hours=1), timedelta(hours=2)]
    assert sorted(e.dtstart.utcoffset() for e in other) == offsets


def test_etag_and_last_modified_answer_304_and_gzip_when_accepted(feed_bridge: Bridge) -> None:
    deliver(feed_bridge, booking_event("booking.created", "2026-01-01T10:00:00Z"))
    first = fetch(feed_bridge, "5", {"Accept-Encoding": "gzip"})
    assert first.headers["Content-Encoding"] == "gzip"
    assert both_parsers(gzip.decompress(first.data))[0]
    assert first.headers["Cache-Control"] == "max-age=300"
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert fetch(feed_bridge, "5", {"If-None-Match": etag}).status_code == 304
    assert fetch(feed_bridge, "5", {"If-Modified-Since": modified}).status_code == 304
    assert "Content-Encoding" not in fetch(feed_bridge, "5").headers
    deliver(feed_bridge, booking_event("booking.updated", "2026-01-02T10:00:00Z", hora_inicio="12:00"))
    changed = fetch(feed_bridge, "5", {"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(feed_token(FEED_SECRET, TENANT, "5")[:-1], id="too-short"),
        pytest.param(feed_token(FEED_SECRET, TENANT, "5") + "a", id="too-long"),
        pytest.param(feed_token(FEED_SECRET, TENANT, "5")[:-1] + "x", id="tampered"),
        pytest.param(feed_token("another-secret-0123456", TENANT, "5"), id="revoked-by-new-secret"),
        pytest.param(feed_token(FEED_SECRET, "other-tenant", "5"), id="unknown-tenant"),
    ],
)
def test_unknown_or_revoked_token_is_404_without_detail(feed_bridge: Bridge, token: str) -> None:
    deliver(feed_bridge, booking_event("booking.created", "2026-01-01T10:00:00Z"))
    response = feed_bridge.client.get(feed_path(token))
    assert response.status_code == 404
    assert TENANT.encode() not in response.data and b"secret" not in response.data


def test_staff_without_bookings_gets_a_valid_empty_calendar(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(feeds_config(destination.url, staff='  "8": {name: "Marta"}'))
    deliver(bridge, booking_event("booking.created", "2026-01-01T10:00:00Z"))
    response = fetch(bridge, "8")
    assert response.status_code == 200
    calendar = icalendar.Calendar.from_ical(response.data)
    assert both_parsers(response.data) == ([], []) and str(calendar["X-WR-CALNAME"]) == "Agenda de Marta"
    assert len(feed_token(FEED_SECRET, TENANT, "8")) == TOKEN_LENGTH


def test_hidden_cancellations_and_full_names(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(feeds_config(destination.url, settings="  cancelled: hide\n  customer: full_name"))
    kept = booking_event("booking.created", "2026-01-01T10:00:00Z", id=1)
    gone = booking_event("booking.cancelled", "2026-01-01T10:00:00Z", id=2)
    deliver(bridge, kept, gone)
    (event,), _ = both_parsers(fetch(bridge, "5").data)
    assert str(event["SUMMARY"]) == "Corte Clásico · Juan Pérez"


def test_feeds_are_off_without_the_section(bridge: Bridge) -> None:
    deliver(bridge, booking_event("booking.created", "2026-01-01T10:00:00Z"))
    assert fetch(bridge, "5").status_code == 404


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("  customer: surname", "calendar_feeds.customer"),
        ("  cancelled: maybe", "calendar_feeds.cancelled"),
        ("  past_days: -1", "calendar_feeds.past_days"),
    ],
)
def test_bad_feed_settings_are_clear_errors(write_config, destination, settings: str, expected: str) -> None:  # noqa: ANN001
    from mappings.config import load_config

    with pytest.raises(ConfigError) as caught:
        load_config(write_config(feeds_config(destination.url, settings=settings)))
    assert expected in "\n".join(caught.value.problems)


def test_short_secret_is_refused(write_config, destination) -> None:  # noqa: ANN001
    from mappings.config import load_config

    text = feeds_config(destination.url).replace(FEED_SECRET, "short")
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(text))
    assert "calendar_feeds.secret" in "\n".join(caught.value.problems)


def test_feed_urls_prints_each_professional_and_the_salon(feed_bridge: Bridge, capsys, redis_url: str) -> None:  # noqa: ANN001
    deliver(feed_bridge, booking_event("booking.created", "2026-01-01T10:00:00Z"))
    code = main(["feed-urls", "--config", feed_bridge.config.path, "--base-url", "https://agenda.example/"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"https://agenda.example{feed_path(feed_token(FEED_SECRET, TENANT, None))}" in out
    line = next(line for line in out.splitlines() if "Carlos García" in line)
    assert line.endswith(f"https://agenda.example{feed_path(feed_token(FEED_SECRET, TENANT, '5'))}")
    assert FEED_SECRET not in out


def test_feed_urls_says_when_feeds_are_off(make_bridge, destination, redis_url: str, capsys) -> None:  # noqa: ANN001
    bridge = make_bridge(with_redis(http_config(destination.url), redis_url))
    assert main(["feed-urls", "--config", bridge.config.path]) == 1
    assert "calendar_feeds:" in capsys.readouterr().err


def test_a_no_show_keeps_its_place_with_its_status(feed_bridge: Bridge) -> None:
    no_show = sample("booking.no_show", created="2026-01-02T10:00:00Z")  # only id and estado
    deliver(feed_bridge, booking_event("booking.created", "2026-01-01T10:00:00Z"), no_show)
    (event,), (other,) = both_parsers(fetch(feed_bridge, "5").data)
    assert str(event["SUMMARY"]).startswith("No vino: ") and other.dtstart.hour == 10
    assert [b["estado"] for b in agenda.agenda(feed_bridge.redis, TENANT, DAY, "5", MADRID)] == ["no_show"]


def test_the_index_keeps_nothing_older_than_entity_retention(make_bridge, destination, redis_url: str) -> None:  # noqa: ANN001
    text = with_redis(feeds_config(destination.url), redis_url).replace(
        "retry:", "retention:\n  entities: 2d\nretry:", 1
    )
    bridge = make_bridge(text)
    old = booking_event("booking.created", "2026-01-01T10:00:00Z", id=1, fecha=(DAY - timedelta(days=8)).isoformat())
    deliver(bridge, old, booking_event("booking.created", "2026-01-01T10:00:00Z", id=2))
    assert [m.decode() for m in bridge.redis.zrange(agenda.salon_key(TENANT), 0, -1)] == ["2"]
    assert 0 < bridge.redis.ttl(agenda.salon_key(TENANT)) <= 2 * 86400


def test_a_no_show_is_remembered_even_when_no_mapping_acts_on_it(make_bridge, destination, redis_url: str) -> None:  # noqa: ANN001
    only_created = """
  - name: created-to-crm
    on: ["booking.created"]
    actions:
      - connector: crm
        body: {id: "{{ event.id }}"}
"""
    extra = f'calendar_feeds:\n  secret: "{FEED_SECRET}"'
    bridge = make_bridge(with_redis(http_config(destination.url, mappings=only_created, extra=extra), redis_url))
    no_show = sample("booking.no_show", created="2026-01-02T10:00:00Z")
    deliver(bridge, booking_event("booking.created", "2026-01-01T10:00:00Z"), no_show)
    (event,), _ = both_parsers(fetch(bridge, "5").data)
    assert str(event["SUMMARY"]).startswith("No vino: ")


def test_serve_front_passes_feeds_with_their_conditional_headers(feed_bridge: Bridge, tmp_path) -> None:  # noqa: ANN001
    deliver(feed_bridge, booking_event("booking.created", "2026-01-01T10:00:00Z"))
    server = Serve(Path(feed_bridge.config.path), tmp_path / "serve.log", workers=1, threads=1)
    try:
        url = server.url + feed_path(feed_token(FEED_SECRET, TENANT, "5"))
        first = requests.get(url, timeout=10)  # requests asks for gzip and undoes it
        assert first.status_code == 200 and first.headers["Content-Encoding"] == "gzip"
        assert both_parsers(first.content)[0]
        again = requests.get(url, headers={"If-None-Match": first.headers["ETag"]}, timeout=10)
        assert again.status_code == 304 and again.content == b""
        assert requests.get(url[:-5] + "x.ics", timeout=10).status_code == 404
    finally:
        server.stop()


def test_the_index_reads_the_memory_hash_entity_memory_writes(feed_bridge: Bridge) -> None:
    from bridge.state import EntityMemory

    memory = EntityMemory(feed_bridge.redis, 60)
    assert agenda.memory_key("a:b%", "1:2") == memory.key("a:b%", "booking", "1:2")
