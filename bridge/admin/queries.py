"""Reading the event log for the admin: filtered pages of events, and the dashboard figures.

The event log index is a Redis sorted set by time received. A page without filters is one range
read. With filters, events are read newest first in batches and tested here, at most SCAN_CAP
events per request (the page then says how far back it looked and offers to continue): enough
for one salon's retention window, bounded for a busy one (docs/operations.md).
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask_babel import gettext as _
from redis.exceptions import RedisError

from bridge import metrics
from bridge.runtime import Runtime
from bridge.state import entity_parts, event_time
from bridge.store import DEAD_INDEX, EVENTS_INDEX, EventRecord, Status, text

PAGE_SIZE = 25
BATCH = 250
SCAN_CAP = 5000
# Payload keys whose values the free-text search looks at (at any depth of `data`).
SEARCHED_KEYS = frozenset(
    {"id", "codigo", "numero", "nombre", "email", "telefono", "tracking_number", "stripe_payment_intent_id"}
)


@dataclass
class Filters:
    event_type: str = ""
    status: str = ""
    text: str = ""
    date_from: date | None = None
    date_to: date | None = None
    before: float | None = None  # the page starts below this time received (exclusive)

    @property
    def narrowing(self) -> bool:
        """Whether events must be read and tested one by one."""
        return bool(self.event_type or self.status or self.text)

    @property
    def active(self) -> bool:
        return self.narrowing or self.date_from is not None or self.date_to is not None

    def query(self, **changes: Any) -> dict[str, str]:
        """The URL query for these filters (with `changes`), without empty values."""
        values = {
            "type": self.event_type,
            "status": self.status,
            "q": self.text,
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "before": repr(self.before) if self.before is not None else "",
        }
        values.update({k: str(v) if v is not None else "" for k, v in changes.items()})
        return {k: v for k, v in values.items() if v}


def parse_filters(args: Any, statuses: list[str]) -> tuple[Filters, list[str]]:
    """Filters from the query string, and what was wrong with it (those parts are ignored)."""
    problems: list[str] = []
    filters = Filters(
        event_type=str(args.get("type", "")).strip()[:100],
        text=str(args.get("q", "")).strip()[:200],
    )
    status = str(args.get("status", "")).strip()
    if status and status not in statuses:
        problems.append(_("unknown status %(status)s; choose one of the list", status=repr(status)))
    else:
        filters.status = status
    for name, attribute in (("from", "date_from"), ("to", "date_to")):
        raw = str(args.get(name, "")).strip()
        if raw:
            try:
                setattr(filters, attribute, date.fromisoformat(raw))
            except ValueError:
                problems.append(_("the date %(date)s is not a date like 2024-01-25", date=repr(raw[:20])))
    before = str(args.get("before", "")).strip()
    if before:
        try:
            filters.before = float(before)
        except ValueError:
            problems.append(_("the page link is damaged; showing the newest events"))
    return filters, problems


@dataclass
class Page:
    records: list[EventRecord]
    older: float | None  # `before` for the next (older) page, None when there is none
    scanned: int = 0
    capped: bool = False  # the scan stopped at SCAN_CAP; `older` continues it
    exact: bool = False  # the text was an event id


def fold(text: str) -> str:
    """Lower case without accents: "Pérez" matches "perez"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def searchable(record: EventRecord) -> str:
    parts = [record.id, record.key, record.type, record.tenant_id]

    def walk(value: Any, key: str | None) -> None:
        if isinstance(value, dict):
            for child_key, child in value.items():
                walk(child, child_key)
        elif isinstance(value, list):
            for child in value:
                walk(child, key)
        elif key in SEARCHED_KEYS and value is not None:
            parts.append(str(value))

    walk(record.envelope.get("data"), None)
    return fold("\n".join(parts))


def matches(record: EventRecord, filters: Filters, needle: str) -> bool:
    if filters.event_type and record.type != filters.event_type:
        return False
    if filters.status and not any(s.status == filters.status for s in record.actions.values()):
        return False
    return not needle or needle in searchable(record)


def _bounds(filters: Filters, zone: ZoneInfo) -> tuple[str, str]:
    """ZREVRANGEBYSCORE max and min for the date range and the page cursor."""
    high, low = "+inf", "-inf"
    if filters.date_to is not None:
        end = datetime.combine(filters.date_to + timedelta(days=1), datetime.min.time(), zone)
        high = f"({end.timestamp()!r}"
    if filters.before is not None and (filters.date_to is None or filters.before < float(high.lstrip("("))):
        high = f"({filters.before!r}"
    if filters.date_from is not None:
        low = repr(datetime.combine(filters.date_from, datetime.min.time(), zone).timestamp())
    return high, low


def find_events(rt: Runtime, filters: Filters, zone: ZoneInfo, page_size: int = PAGE_SIZE) -> Page:
    """One page of events, newest first, that pass the filters."""
    needle = fold(filters.text)
    if filters.text and filters.before is None:
        record = rt.store.find(filters.text)
        if record is not None:
            return Page([record] if matches(record, filters, "") else [], None, 1, exact=True)
    high, low = _bounds(filters, zone)
    found: list[EventRecord] = []
    scanned = 0
    last_score: float | None = None
    batch = page_size + 1 if not filters.narrowing else BATCH
    while True:
        raw = rt.redis.zrevrangebyscore(EVENTS_INDEX, high, low, start=0, num=batch, withscores=True)
        entries: list[tuple[str, float]] = [(text(pair[0]), float(pair[1])) for pair in raw]
        if not entries:
            return Page(found, None, scanned)
        scores = dict(entries)
        records = rt.store.load_many(list(scores), EVENTS_INDEX)  # expired ones leave the index
        for record in records:
            scanned += 1
            last_score = scores[record.key]
            if not matches(record, filters, needle):
                continue
            found.append(record)
            if len(found) > page_size:
                return Page(found[:page_size], scores[found[page_size - 1].key], scanned)
        if len(entries) < batch:
            return Page(found, None, scanned)
        high = f"({entries[-1][1]!r}"
        if scanned >= SCAN_CAP:
            return Page(found, last_score if last_score is not None else entries[-1][1], scanned, capped=True)


def booking_events(rt: Runtime, tenant: str, booking_id: str) -> list[EventRecord]:
    """Every stored event about one booking, oldest first (at most SCAN_CAP events looked at)."""
    found: list[EventRecord] = []
    for start in range(0, SCAN_CAP, BATCH):
        keys = [text(k) for k in rt.redis.zrevrange(EVENTS_INDEX, start, start + BATCH - 1)]
        for record in rt.store.load_many(keys, EVENTS_INDEX):
            if record.tenant_id == tenant and ("booking", booking_id) in _entities(record):
                found.append(record)
        if len(keys) < BATCH:
            break
    return sorted(found, key=lambda r: (_created(r), r.received_at))


def _entities(record: EventRecord) -> set[tuple[str, str]]:
    return {(kind, str(obj["id"])) for kind, obj in entity_parts(record.envelope)}


def _created(record: EventRecord) -> float:
    try:
        return event_time(record.envelope)
    except (KeyError, TypeError, ValueError):
        return record.received_at


@dataclass
class Dashboard:
    """The figures `salon-bridge` itself reports: events and actions done in the last 24 h, dead
    letters waiting (as `dead-letters` lists them, not failed attempts), test runs as such."""

    events_24h: int = 0
    done_24h: int = 0
    dry_run_24h: int = 0
    dead_letters: int = 0
    dry_run: bool = False  # the whole bridge runs in dry run: nothing is sent
    queue: metrics.QueueStatus | None = None
    problems: list[str] = field(default_factory=list)


def dashboard(rt: Runtime, now: float | None = None) -> Dashboard:
    now = time.time() if now is None else now
    try:
        pipe = rt.redis.pipeline(transaction=False)
        pipe.zcount(EVENTS_INDEX, now - 86400, "+inf")
        pipe.zcard(DEAD_INDEX)
        events, dead = pipe.execute()
        outcomes = metrics.recent_outcomes(rt.redis, now)
        queue = metrics.queue_status(rt.queue, now)
    except RedisError as exc:
        message = _("The database (Redis) does not answer (%(error)s); figures unavailable", error=type(exc).__name__)
        return Dashboard(problems=[message])
    return Dashboard(
        int(events),
        outcomes.get(Status.DONE, 0),
        outcomes.get(Status.DRY_RUN, 0),
        int(dead),
        bool(rt.dry_run),
        queue,
    )
