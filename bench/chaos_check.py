"""After a chaos run has drained: what reached each fake destination, checked against the event log
and against what the events themselves say (the expected final state of every booking and customer)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from redis import Redis

from bench.chaos_events import ESTADO_BY_TYPE, FUTURE_TYPE, TENANT, Event
from bench.chaos_fakes import BIG_ORDER, CALENDARS, DEFAULT_CALENDAR, EXPECTED_ACTIONS, Destinations
from bench.chaos_send import Delivery
from bridge import compact
from bridge.store import event_key, record_key
from connectors.google_calendar import google_event_id

FINAL = {"done", "dead", "skipped", "stale", "dry-run"}
ZONE = ZoneInfo("Europe/Madrid")
CALENDAR_STATE = {"confirmada": "active", "completada": "completed", "no_show": "no_show", "cancelada": "cancelled"}
MAIL_DOMAIN = "salon.example"


@dataclass
class Findings:
    """Figures for the summary, and every problem found (an empty `problems` is a green run)."""

    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def load_records(redis: Redis, events: list[Event]) -> dict[str, dict[str, Any] | None]:
    """Each event's record in the event log: envelope fields and action states (None: not there)."""
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.hgetall(record_key(event_key(event.id)))
    records: dict[str, dict[str, Any] | None] = {}
    for event, raw in zip(events, pipe.execute(), strict=True):
        if not raw:
            records[event.id] = None
            continue
        actions = {k.decode()[2:]: json.loads(compact.unpack(v)) for k, v in raw.items() if k.startswith(b"a:")}
        records[event.id] = {"received_at": float(raw.get(b"received_at", b"0")), "actions": actions}
    return records


def message_id(event_id: str, action_id: str) -> str:
    """The Message-ID the e-mail connector gives an (event, action): the same on every attempt."""
    digest = hashlib.sha256(f"{event_id}\n{action_id}".encode()).hexdigest()[:32]
    return f"<{digest}@{MAIL_DOMAIN}>"


def check(
    events: list[Event],
    deliveries: dict[str, Delivery],
    records: dict[str, dict[str, Any] | None],
    destinations: Destinations,
    redis_kill_at: float | None,
    lost_at_kill: dict[str, float],
    possible_duplicates: int,
) -> Findings:
    found = Findings()
    fig = found.figures

    # --- what the fakes received ------------------------------------------------------------
    http_ok: Counter[str] = Counter()
    http_first: dict[str, float] = {}
    for hit in destinations.http.hits:
        if hit.status < 300:
            http_ok[hit.idempotency_key] += 1
            http_first.setdefault(hit.idempotency_key, hit.at)
    slack_refs: Counter[str] = Counter()
    for message in destinations.slack.messages:
        text = message.edits[0]["text"] if message.edits else message.text  # as posted, before chat.update
        ref = text.rsplit("ref ", 1)[-1].strip() if "ref " in text else ""
        slack_refs[ref] += 1
    mail_ids: Counter[str] = Counter()
    for received in destinations.smtp.messages:
        mail_ids[str(received.message()["Message-ID"])] += 1
    google_written: set[str] = set()
    google_deleted: set[str] = set()
    for request in destinations.google.api_requests():
        if request.method == "DELETE":
            google_deleted.add(request.path.rsplit("/", 1)[-1])
        elif request.body:
            try:
                body = json.loads(request.body)
            except ValueError:
                continue
            private = (body.get("extendedProperties") or {}).get("private") or {}
            if private.get("salonBridgeEvent"):
                google_written.add(private["salonBridgeEvent"])

    # --- every event: accepted, kept, and each of its actions final and delivered ------------
    creations = {e.entity: e for e in events if e.type in ("booking.created", "order.created")}
    statuses: Counter[str] = Counter()
    effects: Counter[str] = Counter()
    lost_must, lost_window, never_acked, dead, stuck = [], [], [], [], []
    present: list[Event] = []
    for event in events:
        delivery = deliveries.get(event.id)
        if event.type == FUTURE_TYPE:
            if delivery is None or delivery.answers.get("200 ignored", 0) == 0:
                got = dict(delivery.answers) if delivery else "nothing"
                found.problem(f"{event.id} ({FUTURE_TYPE}): expected the answer 200 ignored, got {got}")
            if records.get(event.id) is not None:
                found.problem(f"{event.id} ({FUTURE_TYPE}) was stored although no mapping handles it")
            continue
        if delivery is None or delivery.acked_at is None:
            never_acked.append(event.id)
            continue
        record = records.get(event.id)
        if record is None:
            age = lost_at_kill.get(event.id)
            if age is not None and age <= 1.0:
                lost_window.append(event.id)
            else:
                lost_must.append(event.id)
            continue
        present.append(event)
        expected = EXPECTED_ACTIONS[event.type]
        extra = set(record["actions"]) - set(expected)
        if extra:
            found.problem(f"{event.id} ({event.type}) ran actions the chaos config does not expect: {sorted(extra)}")
        for action_id in expected:
            state = record["actions"].get(action_id)
            status = state["status"] if state else "never attempted"
            statuses[status] += 1
            if status == "dead":
                line = f"{event.id} ({event.type}) {action_id}: {state['last_error']}"
                creation = creations.get(event.entity)
                gave_up = state["history"][-1]["at"] if state.get("history") else None
                acked = deliveries[creation.id].acked_at if creation and creation.id in deliveries else None
                if "not received" in state["last_error"] and gave_up and acked and acked < gave_up:
                    line += (
                        f" -- yet {creation.type} {creation.id} had been accepted {gave_up - acked:.0f} s before "
                        "this action gave up: its own job had not run yet (held up by a crash)"
                    )
                dead.append(line)
                continue
            if status not in FINAL:
                stuck.append(f"{event.id} ({event.type}) {action_id}: {status}")
                continue
            if status == "skipped":
                if not (action_id == "crm-big-orders/order" and event.envelope["data"]["order"]["total"] < BIG_ORDER):
                    found.problem(f"{event.id} ({event.type}) {action_id} was skipped: {state['detail']}")
                continue
            if status == "stale":
                if action_id not in ("crm-bookings/booking", "crm-customers/customer", "agenda/sync"):
                    found.problem(f"{event.id} ({event.type}) {action_id} marked stale but does not sync state")
                continue
            connector = action_id.split("/")[0]
            if connector.startswith(("crm-", "ledger-")):
                seen = http_ok[f"{event.id}/{action_id}"] > 0
                kind = "http"
            elif connector.startswith("slack-"):
                seen, kind = slack_refs[event.id] > 0, "slack"
            elif connector == "agenda":
                # The write renders the booking's merged state: an older event handled after the
                # cancellation deletes (or finds deleted) the entry, as the ledger's detail says.
                if " cancelled: " in state.get("detail", ""):
                    booking_id = str(event.envelope["data"]["booking"]["id"])
                    seen = google_event_id(TENANT, booking_id) in google_deleted
                else:
                    seen = event.id in google_written
                kind = "calendar"
            else:
                seen, kind = mail_ids[message_id(event.id, action_id)] > 0, "e-mail"
            effects[f"{kind} {'found' if seen else 'MISSING'}"] += 1
            if not seen:
                found.problem(f"{event.id} ({event.type}) {action_id} is done in the ledger but {kind} never got it")

    fig["events accepted and kept"] = len(present)
    fig["action states"] = dict(sorted(statuses.items()))
    fig["effects at destinations"] = dict(sorted(effects.items()))
    fig["lost (acked > 1 s before the Redis kill, or never in Redis)"] = len(lost_must)
    fig["lost in the AOF window (acked <= 1 s before the Redis kill)"] = len(lost_window)
    for event_id in lost_must:
        found.problem(f"LOST: {event_id} was acknowledged to the platform but is not in the event log")
    for event_id in never_acked:
        got = dict(deliveries[event_id].answers) if event_id in deliveries else "not sent"
        found.problem(f"{event_id}: the platform never got a 2xx for it ({got})")
    for line in dead:
        found.problem(f"DEAD: {line}")
    for line in stuck:
        found.problem(f"STUCK: {line}")

    # --- duplicates at the destinations -------------------------------------------------------
    slack_dupes = {ref: n - 1 for ref, n in slack_refs.items() if n > 1}
    mail_dupes = {mid: n - 1 for mid, n in mail_ids.items() if n > 1}
    http_dupes = {key: n - 1 for key, n in http_ok.items() if n > 1}
    fig["duplicates: Slack messages"] = sum(slack_dupes.values())
    fig["duplicates: e-mails (same Message-ID)"] = sum(mail_dupes.values())
    fig["duplicates: http (same Idempotency-Key, 2xx)"] = sum(http_dupes.values())
    fig["sb:stats:possible_duplicates"] = possible_duplicates
    observed = sum(slack_dupes.values()) + sum(mail_dupes.values()) + sum(http_dupes.values())
    in_window = 0
    if redis_kill_at is not None:
        in_window = sum(n for key, n in http_dupes.items() if 0 <= redis_kill_at - http_first[key] <= 1.0)
    if observed - in_window > possible_duplicates:
        found.problem(
            f"{observed} duplicate deliveries but only {possible_duplicates} flagged as possible "
            f"(sb:stats:possible_duplicates): a repeat happened that the ledger did not see coming "
            f"(slack {sorted(slack_dupes)[:5]}, e-mail {sorted(mail_dupes)[:5]}, http {sorted(http_dupes)[:5]})"
        )
    found.figures["_duplicates_detail"] = {"slack": slack_dupes, "email": mail_dupes, "http": http_dupes}

    # --- final state per booking (calendar and CRM) and per customer (CRM) ----------------------
    _final_states(found, present, records, deliveries, destinations)
    return found


def _expected_booking(events: list[Event]) -> dict[str, Any]:
    """What a booking's newest events say: its state, its slot, its professional."""
    ordered = sorted(events, key=lambda e: e.envelope["created"])
    lifecycle = [e for e in ordered if e.type in ESTADO_BY_TYPE]
    state = ESTADO_BY_TYPE[lifecycle[-1].type] if lifecycle else "confirmada"
    slot: dict[str, Any] = {}
    for event in ordered:
        booking = event.envelope["data"].get("booking") or {}
        for name in ("fecha", "hora_inicio", "profesional"):
            if name in booking:
                slot[name] = booking[name]
    return {"estado": state, **slot, "newest": ordered[-1]}


def _final_states(
    found: Findings,
    present: list[Event],
    records: dict[str, dict[str, Any] | None],
    deliveries: dict[str, Delivery],
    destinations: Destinations,
) -> None:
    by_booking: dict[str, list[Event]] = defaultdict(list)
    by_customer: dict[str, list[Event]] = defaultdict(list)
    for event in present:
        if event.type.startswith("booking."):
            by_booking[str(event.envelope["data"]["booking"]["id"])].append(event)
        for customer in _customers_in(event):
            by_customer[str(customer["id"])].append(event)

    crm_last: dict[tuple[str, str], dict[str, Any]] = {}
    for hit in destinations.http.hits:
        if hit.path == "/crm" and hit.status < 300 and isinstance(hit.body, dict):
            if "booking_id" in hit.body:
                crm_last[("booking", str(hit.body["booking_id"]))] = hit.body
            elif "customer_id" in hit.body:
                crm_last[("customer", str(hit.body["customer_id"]))] = hit.body

    calendar_ok = crm_ok = 0
    wrong: list[str] = []
    for booking_id, events in sorted(by_booking.items()):
        if not any(e.type == "booking.created" for e in events):
            continue  # its creation was lost with Redis (counted above): the bridge cannot know the slot
        want = _expected_booking(events)
        story = _story(events, records, deliveries)
        # Google Calendar: one event per booking, in the newest professional's calendar, newest state and slot.
        gid = google_event_id(TENANT, booking_id)
        live = [
            (calendar_id, entry)
            for calendar_id, entries in destinations.google.calendars.items()
            for event_id, entry in entries.items()
            if event_id == gid and entry.get("status") != "cancelled"
        ]
        problem = None
        if want["estado"] == "cancelada":
            if live:
                problem = f"cancelled but still in calendar(s) {[c for c, _ in live]}"
        elif len(live) != 1:
            want_calendar = CALENDARS.get(str(want["profesional"]["id"]), DEFAULT_CALENDAR)
            problem = f"{len(live)} live calendar entries, in {[c for c, _ in live]} (want 1, in {want_calendar})"
        else:
            calendar_id, entry = live[0]
            private = (entry.get("extendedProperties") or {}).get("private") or {}
            start = datetime.fromisoformat(entry["start"]["dateTime"])
            want_start = datetime.combine(
                date.fromisoformat(want["fecha"]), time.fromisoformat(want["hora_inicio"]), tzinfo=ZONE
            )
            want_calendar = CALENDARS.get(str(want["profesional"]["id"]), DEFAULT_CALENDAR)
            got = (calendar_id, private.get("salonBridgeState"), start)
            expected = (want_calendar, CALENDAR_STATE[want["estado"]], want_start)
            if got != expected:
                writer = private.get("salonBridgeEvent")
                problem = (
                    f"calendar has ({calendar_id}, {got[1]}, {start.isoformat()}) written by {writer}, "
                    f"want ({want_calendar}, {expected[1]}, {want_start.isoformat()})"
                )
        if problem:
            wrong.append(f"booking {booking_id}: {problem}\n{story}")
        else:
            calendar_ok += 1
        # The CRM's `sync` body: the last one received must carry the newest state and slot.
        body = crm_last.get(("booking", booking_id))
        want_crm = {
            "estado": want["estado"],
            "fecha": want["fecha"],
            "hora_inicio": want["hora_inicio"],
            "profesional": str(want["profesional"]["id"]),
        }
        got_crm = {k: (body or {}).get(k) for k in want_crm}
        if got_crm != want_crm:
            sent_by = (body or {}).get("event")
            wrong.append(f"booking {booking_id}: CRM last got {got_crm} (from {sent_by}), want {want_crm}\n{story}")
        else:
            crm_ok += 1
    customers_ok = synced_customers = 0
    for customer_id, events in sorted(by_customer.items()):
        if not any(e.type.startswith("customer.") for e in events):
            continue  # only bookings and orders mention them: nothing syncs them to the CRM
        synced_customers += 1
        newest = max(events, key=lambda e: e.envelope["created"])
        want_name = next(c["nombre"] for c in _customers_in(newest) if str(c["id"]) == customer_id)
        body = crm_last.get(("customer", customer_id)) or {}
        if body.get("nombre") != want_name:
            wrong.append(
                f"customer {customer_id}: CRM last got {body.get('nombre')!r} (from {body.get('event')}), want "
                f"{want_name!r} (from {newest.id})\n{_story(events, records, deliveries)}"
            )
        else:
            customers_ok += 1
    checked = sum(1 for events in by_booking.values() if any(e.type == "booking.created" for e in events))
    found.figures["final state: bookings right in Google Calendar"] = f"{calendar_ok}/{checked}"
    found.figures["final state: bookings right at the CRM (http sync)"] = f"{crm_ok}/{checked}"
    found.figures["final state: customers right at the CRM (http sync)"] = f"{customers_ok}/{synced_customers}"
    for line in wrong:
        found.problem(f"WRONG FINAL STATE: {line}")


def _customers_in(event: Event) -> list[dict[str, Any]]:
    """The customers an event describes (with a name), wherever the platform puts them."""
    data = event.envelope["data"]
    found = [data.get("customer"), data.get("cliente")]
    for kind in ("booking", "order"):
        found.append((data.get(kind) or {}).get("cliente"))
    return [c for c in found if isinstance(c, dict) and "id" in c and "nombre" in c]


def _story(events: list[Event], records: dict[str, dict[str, Any] | None], deliveries: dict[str, Delivery]) -> str:
    """One entity's events by `created`, with when each was first accepted and what its syncs did: the
    material to tell a reordering from a loss."""
    lines = []
    first_ack = min((deliveries[e.id].acked_at or 0) for e in events)
    for event in sorted(events, key=lambda e: e.envelope["created"]):
        record = records.get(event.id) or {"actions": {}}
        syncs = {
            a.split("/")[0]: record["actions"].get(a, {}).get("status", "-")
            for a in ("agenda/sync", "crm-bookings/booking", "crm-customers/customer")
            if a in EXPECTED_ACTIONS[event.type]
        }
        acked = (deliveries[event.id].acked_at or 0) - first_ack
        lines.append(
            f"      {event.envelope['created']} {event.type:<17} {event.id} accepted at +{acked:.1f} s  {syncs}"
        )
    return "\n".join(lines)
