"""Calendar feeds: `GET /calendars/<token>.ics`, one professional's bookings (or the salon's) as
an RFC 5545 calendar that Google, Apple and Outlook calendars subscribe to with just the link.

A token is the first 16 bytes of HMAC-SHA256(`calendar_feeds.secret`, tenant + professional),
in lowercase base32 (26 characters): it names nobody, cannot be guessed, and changing the
secret revokes every link. The server finds a token's owner by signing each known (tenant,
professional) again and comparing in constant time. Feeds are read from the agenda index
(bridge/agenda.py); a rendered feed is kept until the tenant's bookings change or the day turns
(its ETag says which), so a calendar app polling an unchanged feed costs one Redis read.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask, Response, abort, request
from icalendar import Calendar, Event
from redis import Redis
from werkzeug.http import http_date, parse_date

from bridge import agenda, memory_codec
from bridge.memory_codec import Remembered
from connectors.base import wall_clock
from mappings.config import BridgeConfig, CalendarFeedsModel
from mappings.templates import EntityView, money

log = logging.getLogger("salon_bridge.feeds")

TOKEN_LENGTH = 26
CACHE_CONTROL = "max-age=300"  # short: a change shows at the next poll of clients that honour it
REFRESH = timedelta(hours=1)  # REFRESH-INTERVAL / X-PUBLISHED-TTL (Google ignores both)
CACHED_FEEDS = 512
CACHED_EVENTS = 50_000  # rendered VEVENTs (~450 bytes each) kept by booking and version
DEFAULT_MINUTES = 30  # a booking with neither hora_fin nor service durations
CANCELLED = frozenset({"cancelada", "cancelled", "canceled"})
NO_SHOW = frozenset({"no_show", "no-show"})


def feed_token(secret: str, tenant: str, professional: str | None) -> str:
    """The fixed-length token of one professional's feed (None: the whole salon's)."""
    message = f"salon\0{tenant}" if professional is None else f"pro\0{tenant}\0{professional}"
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()[:16]
    return base64.b32encode(digest).decode().rstrip("=").lower()


def feed_path(token: str) -> str:
    return f"/calendars/{token}.ics"


def owners(config: BridgeConfig, redis: Redis) -> list[tuple[str, str | None]]:
    """Every (tenant, professional) that has a feed: the salon (None) and each professional the
    index or `staff:` knows, per tenant the index knows."""
    found: list[tuple[str, str | None]] = []
    for tenant in agenda.tenants(redis):
        pros = agenda.professionals(redis, tenant)
        pros += [pro for pro in config.model.staff if pro not in pros]
        found += [(tenant, None), *((tenant, pro) for pro in pros)]
    return found


def staff_name(config: BridgeConfig, professional: str, bookings: list[EntityView]) -> str:
    """What to call a professional: `staff:` name, else the platform's, else the id."""
    entry = config.staff_entry(professional)
    if entry is not None and entry.name:
        return entry.name
    for booking in reversed(bookings):
        pro = booking.get("profesional")
        if isinstance(pro, dict) and pro.get("nombre"):
            return str(pro["nombre"])
    return f"profesional {professional}"


@dataclass(frozen=True)
class Rendered:
    etag: str
    body: bytes
    gzipped: bytes
    last_modified: float


class Feeds:
    """Resolves tokens and renders (and caches) feeds for one loaded config."""

    def __init__(self, config: BridgeConfig, redis: Redis, settings: CalendarFeedsModel):
        self.config = config
        self.redis = redis
        self.settings = settings
        self.zone = ZoneInfo(config.model.timezone)
        self._owners: dict[str, tuple[str, str | None]] = {}
        self._scanned = -1  # the index's owners revision the lookup was built at
        self._cache: OrderedDict[str, Rendered] = OrderedDict()
        self._events: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()
        # Anything of the config a feed shows: a reload with other settings makes new ETags.
        shown = repr((settings.model_dump(exclude={"secret"}), config.model.staff, config.model.timezone))
        self._settings_tag = hashlib.sha256(shown.encode()).hexdigest()[:12]

    def resolve(self, token: str) -> tuple[str, str | None] | None:
        """The owner of a token, None when unknown, tampered with or revoked."""
        if len(token) != TOKEN_LENGTH:
            return None
        owner = self._find(token)
        if owner is None:
            current = agenda.owners_revision(self.redis)
            if current != self._scanned:  # someone new has bookings since the lookup was built
                self._scan(current)
                owner = self._find(token)
        return owner

    def _find(self, token: str) -> tuple[str, str | None] | None:
        found = None
        for known, owner in list(self._owners.items()):
            if hmac.compare_digest(known, token):
                found = owner
        return found

    def _scan(self, revision: int) -> None:
        secret = self.settings.secret
        self._owners = {feed_token(secret, t, p): (t, p) for t, p in owners(self.config, self.redis)}
        self._scanned = revision

    def etag(self, tenant: str, professional: str | None, today: date) -> tuple[str, float]:
        """The feed's current ETag and Last-Modified, from one Redis read."""
        count, changed_at = agenda.revision(self.redis, tenant)
        midnight = wall_clock(today, clock_time(0), self.zone).timestamp()  # the window moved
        tag = f"{tenant}\0{professional}\0{count}\0{today}\0{self._settings_tag}"
        return '"' + hashlib.sha256(tag.encode()).hexdigest()[:24] + '"', max(changed_at or 0.0, midnight)

    def feed(self, token: str, now: datetime | None = None) -> Rendered | None:
        """The feed behind a token (from the cache when unchanged), None for an unknown token."""
        owner = self.resolve(token)
        if owner is None:
            return None
        tenant, professional = owner
        today = (now or datetime.now(UTC)).astimezone(self.zone).date()
        etag, last_modified = self.etag(tenant, professional, today)
        with self._lock:
            cached = self._cache.get(token)
            if cached is not None and cached.etag == etag:
                self._cache.move_to_end(token)
                return cached
        body = self.render(tenant, professional, today)
        rendered = Rendered(etag, body, gzip.compress(body, compresslevel=6), last_modified)
        with self._lock:
            self._cache[token] = rendered
            while len(self._cache) > CACHED_FEEDS:
                self._cache.popitem(last=False)
        return rendered

    def render(self, tenant: str, professional: str | None, today: date) -> bytes:
        """The calendar: one VEVENT per booking from `past_days` before today to `future_days` after.

        Each VEVENT is icalendar's text of one version of its booking (memory's version, raised
        by every change), kept while that version is current: after a change only the changed
        bookings are read in full and rendered again."""
        start = agenda.day_score(today - timedelta(days=self.settings.past_days))
        end = agenda.day_score(today + timedelta(days=self.settings.future_days + 1))
        ids = agenda.booking_ids(self.redis, tenant, start, end, professional)
        with_professional = professional is None
        keys = [(tenant, booking_id, with_professional, version) for booking_id, version in self._versions(tenant, ids)]
        with self._lock:
            texts = {key: self._events[key] for key in keys if key in self._events}
        missing = [key for key in keys if key not in texts]
        for view, remembered in agenda.load_bookings(self.redis, tenant, [key[1] for key in missing]):
            event = self.event(tenant, view, remembered, with_professional)
            key = (tenant, view.entity_id, with_professional, str(remembered.version))
            texts[key] = event.to_ical() if event is not None else b""
        with self._lock:
            for key in missing:
                self._events[key] = texts.get(key, b"")
            while len(self._events) > CACHED_EVENTS:
                self._events.popitem(last=False)
        cal = Calendar()
        cal.add("prodid", "-//salon-bridge//agenda//ES")
        cal.add("version", "2.0")
        cal.add("calscale", "GREGORIAN")
        cal.add("method", "PUBLISH")
        cal.add("x-wr-calname", self._calendar_name(tenant, professional, ids))
        cal.add("x-wr-timezone", self.config.model.timezone)
        cal.add("refresh-interval", REFRESH, parameters={"VALUE": "DURATION"})
        cal.add("x-published-ttl", "PT1H")
        cal.add_component(self._zone_component(today))
        head, tail = cal.to_ical().rsplit(b"END:VCALENDAR", 1)
        return head + b"".join(texts.get(key, b"") for key in keys) + b"END:VCALENDAR" + tail

    def _versions(self, tenant: str, ids: list[str]) -> list[tuple[str, str]]:
        """Each booking's memory version (bookings whose memory expired are left out)."""
        pipe = self.redis.pipeline(transaction=False)
        for booking_id in ids:
            memory_codec.read_on(pipe, agenda.memory_key(tenant, booking_id))
        found = [(i, memory_codec.decode(raw)) for i, raw in zip(ids, pipe.execute(), strict=True)]
        return [(i, str(remembered.version)) for i, remembered in found if remembered is not None]

    def _calendar_name(self, tenant: str, professional: str | None, ids: list[str]) -> str:
        if professional is None:
            return "Agenda del salón"
        views = [view for view, _ in agenda.load_bookings(self.redis, tenant, ids[-1:])]
        return f"Agenda de {staff_name(self.config, professional, views)}"

    def _zone_component(self, today: date) -> Any:
        """The salon zone's VTIMEZONE, with its transitions from two years before today to two after."""
        first, last = today.replace(day=1) - timedelta(days=800), today + timedelta(days=800)
        probe = Calendar()
        event = Event()
        event.add("dtstart", wall_clock(today, clock_time(12), self.zone))
        probe.add_component(event)
        probe.add_missing_timezones(first_date=first, last_date=last)
        return probe.walk("VTIMEZONE")[0]

    def event(self, tenant: str, booking: EntityView, remembered: Remembered, with_professional: bool) -> Event | None:
        """One booking as a VEVENT (None when hidden, or when its date or times do not parse)."""
        estado = str(booking.get("estado") or "").lower()
        cancelled = estado in CANCELLED
        if cancelled and self.settings.cancelled == "hide":
            return None
        try:
            day = date.fromisoformat(str(booking["fecha"]))
            start = wall_clock(day, clock_time.fromisoformat(str(booking["hora_inicio"])), self.zone)
            end = _end(day, start, booking, self.zone)
        except (KeyError, ValueError) as exc:
            log.warning("tenant %s booking %s left out of the feed: %s", tenant, booking.entity_id, exc)
            return None
        modified = datetime.fromtimestamp(remembered.modified, UTC).replace(microsecond=0)
        event = Event()
        event.add("uid", f"booking-{booking.entity_id}.{tenant}@salon-bridge")
        event.add("sequence", remembered.version)
        event.add("dtstamp", modified)
        event.add("last-modified", modified)
        event.add("dtstart", start)
        event.add("dtend", end)
        event.add("summary", self.summary(booking, estado))
        event.add("description", self.description(booking, estado, with_professional))
        event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
        event.add("transp", "TRANSPARENT" if cancelled else "OPAQUE")
        return event

    def summary(self, booking: EntityView, estado: str) -> str:
        services = ", ".join(_service_names(booking)) or "Cita"
        customer = self.customer(booking)
        text = f"{services} · {customer}" if customer else services
        if estado in CANCELLED:
            return f"Cancelada: {text}"
        if estado in NO_SHOW:
            return f"No vino: {text}"
        return text

    def customer(self, booking: EntityView) -> str:
        cliente = booking.get("cliente")
        full = str(cliente.get("nombre") or "").strip() if isinstance(cliente, dict) else ""
        if self.settings.customer == "none" or not full:
            return ""
        return full if self.settings.customer == "full_name" else full.split()[0]

    def description(self, booking: EntityView, estado: str, with_professional: bool) -> str:
        lines = []
        if booking.get("codigo"):
            lines.append(f"Código: {booking['codigo']}")
        for service in booking.get("servicios") or []:
            if isinstance(service, dict) and service.get("nombre"):
                price = _euros(service.get("precio"))
                lines.append(f"· {service['nombre']}" + (f" ({price})" if price else ""))
        total = _euros(booking.get("total"))
        if total:
            lines.append(f"Total: {total}")
        pro = booking.get("profesional")
        if with_professional and isinstance(pro, dict) and pro.get("nombre"):
            lines.append(f"Profesional: {pro['nombre']}")
        customer = self.customer(booking)
        if customer:
            lines.append(f"Cliente: {customer}")
        if booking.get("notas"):
            lines.append(f"Notas: {booking['notas']}")
        if estado:
            lines.append(f"Estado: {estado}")
        return "\n".join(lines)


def _service_names(booking: EntityView) -> list[str]:
    return [str(s["nombre"]) for s in booking.get("servicios") or [] if isinstance(s, dict) and s.get("nombre")]


def _end(day: date, start: datetime, booking: EntityView, zone: ZoneInfo) -> datetime:
    """`hora_fin` when it is after the start, else the services' durations, else 30 minutes."""
    if booking.get("hora_fin"):
        end = wall_clock(day, clock_time.fromisoformat(str(booking["hora_fin"])), zone)
        if end > start:
            return end
    minutes = sum(int(s.get("duracion_minutos") or 0) for s in booking.get("servicios") or [] if isinstance(s, dict))
    return (start.astimezone(UTC) + timedelta(minutes=minutes or DEFAULT_MINUTES)).astimezone(zone)


def _euros(amount: Any) -> str:
    """An amount as templates' `money` shows it; nothing when it is not a number."""
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        return ""
    return money(amount)


def register_feeds(app: Flask, config: BridgeConfig, redis: Redis) -> None:
    """`GET /calendars/<token>.ics`, when the config has `calendar_feeds:`."""
    settings = config.model.calendar_feeds
    if settings is None:
        return
    feeds = Feeds(config, redis, settings)
    app.extensions["salon_bridge"]["feeds"] = feeds

    @app.get("/calendars/<token>.ics")
    def calendar_feed(token: str) -> Response:
        rendered = feeds.feed(token)
        if rendered is None:
            abort(404)
        headers = {
            "ETag": rendered.etag,
            "Last-Modified": http_date(rendered.last_modified),
            "Cache-Control": CACHE_CONTROL,
            "Vary": "Accept-Encoding",
        }
        if _not_modified(rendered):
            return Response(status=304, headers=headers)
        body = rendered.body
        if request.accept_encodings["gzip"] > 0:
            body, headers["Content-Encoding"] = rendered.gzipped, "gzip"
        headers["Content-Disposition"] = 'inline; filename="agenda.ics"'
        return Response(body, status=200, headers=headers, content_type="text/calendar; charset=utf-8")


def _not_modified(rendered: Rendered) -> bool:
    """RFC 9110 13.1: If-None-Match decides when present; else If-Modified-Since."""
    match = request.headers.get("If-None-Match")
    if match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in match.split(",")}
        return "*" in tags or rendered.etag in tags
    since = parse_date(request.headers.get("If-Modified-Since"))
    return since is not None and int(rendered.last_modified) <= since.timestamp()
