"""Bookings with reminders in the chaos run: stories of a second salon whose appointments start a few
minutes after the run begins, with a reminder due `OFFSET` seconds before each one, fired by the
workers' scheduler while workers are killed and Redis crashes.

Each story is one of: booked (one reminder), moved right after booking (one reminder, for the new
time), cancelled right after booking (none), cancelled and then a stale update delivered late that
would move it (none: it must not come back), and moved after its reminder went out (one for each
time). The check counts what the destination got per (booking, start time): never a time the
booking no longer had, never two sends for one time, none missing, never early.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bench.chaos_events import Event, Post, _sample

TENANT = "chaos-reminders-0002"
OFFSET = 240  # seconds between a reminder and its appointment
ACTION = "recordatorio/reminder"
ZONE = ZoneInfo("Europe/Madrid")
KINDS = {"booked": 0.4, "moved": 0.2, "cancelled": 0.15, "stale_after_cancel": 0.1, "moved_after_sent": 0.15}

MAPPING = f"""
  - name: recordatorio
    on: ["booking.created", "booking.updated"]
    tenant: "{TENANT}"
    schedule: {{at: "booking.start - {OFFSET}s"}}
    when: "booking.estado == 'confirmada'"
    actions:
      - connector: crm
        name: reminder
        body:
          booking: "{{{{ booking.id }}}}"
          start: "{{{{ booking.fecha }}}} {{{{ booking.hora_inicio }}}}"
"""


@dataclass
class Story:
    """One booking's events (relative post times, seconds after the run starts) and, once the posts
    are laid out, the appointment times its reminders are for."""

    kind: str
    booking_id: int
    posts: list[tuple[float, str, float]] = field(default_factory=list)  # (post at, type, due after it)
    events: list[Event] = field(default_factory=list)
    allowed: set[str] = field(default_factory=set)  # start times a reminder may go out for
    required: set[str] = field(default_factory=set)  # ... and must
    due: dict[str, float] = field(default_factory=dict)  # start time -> when its reminder is due


class Reminders:
    def __init__(self, count: int, seed: int):
        self.rng = random.Random(seed * 7919 + 1)
        self.stories = [self._story(500000 + n) for n in range(count)]

    def _story(self, booking_id: int) -> Story:
        rng = self.rng
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        story = Story(kind, booking_id)
        p = rng.uniform(5, 60)
        if kind == "moved_after_sent":
            first_due = rng.uniform(60, 80)
            story.posts.append((p, "booking.created", first_due))
            moved_at = p + first_due + 45  # well after that reminder went out
            story.posts.append((moved_at, "booking.updated", rng.uniform(90, 120)))
            return story
        story.posts.append((p, "booking.created", rng.uniform(100, 140)))
        if kind == "moved":
            story.posts.append((p + rng.uniform(2, 6), "booking.updated", rng.uniform(110, 160)))
        elif kind == "cancelled":
            story.posts.append((p + rng.uniform(2, 6), "booking.cancelled", 0))
        elif kind == "stale_after_cancel":
            story.posts.append((p + 2, "booking.cancelled", 0))
            story.posts.append((p + 4, "booking.updated", rng.uniform(100, 140)))  # created before the cancel
        return story

    @property
    def events(self) -> list[Event]:
        return [event for story in self.stories for event in story.events]

    def merge(self, posts: list[Post], rate: float, starts_at: float) -> list[Post]:
        """The run's posts with these stories' laid in at their times (and ~20% duplicates); fills in
        each event from the time its post will go out (bench/chaos_send.py: in line, not before `not_before`)."""
        rng = self.rng
        placed: list[tuple[Story, int, Post]] = []
        for story in self.stories:
            for number, (at, event_type, _due) in enumerate(story.posts):
                event = Event({"type": event_type}, 0.0, ("booking", str(story.booking_id)))
                story.events.append(event)
                placed.append((story, number, Post(event, False, at * rate, not_before=at)))
        extra = []
        for _, _, post in placed:
            if rng.random() < 0.2:
                later = rng.uniform(0, 1.5) if rng.random() < 0.5 else rng.uniform(20, 30)
                extra.append(Post(post.event, True, post.key + later * rate, not_before=post.not_before + later))
        merged = sorted([*posts, *(p for _, _, p in placed), *extra], key=lambda p: p.key)
        sent_at = {id(p): starts_at + max(index / rate, p.not_before) for index, p in enumerate(merged)}
        for story in self.stories:
            self._fill(story, [sent_at[id(post)] for s, _, post in placed if s is story])
        return merged

    def _fill(self, story: Story, sent: list[float]) -> None:
        """Envelopes, appointment times and expectations, from when each post goes out."""
        created_at = list(sent)
        if story.kind == "stale_after_cancel":
            created_at[2] = created_at[1] - 30  # the platform made it before the cancellation
        codigo = f"RM{story.booking_id}"
        starts: list[datetime] = []
        for number, ((_, event_type, due_after), event) in enumerate(zip(story.posts, story.events, strict=True)):
            envelope = _sample(event_type)
            created = datetime.fromtimestamp(created_at[number], UTC).replace(microsecond=0)
            envelope.update(
                id=f"evt_rem_{uuid.UUID(int=self.rng.getrandbits(128)).hex[:20]}",
                created=created.isoformat().replace("+00:00", "Z"),
                tenant_id=TENANT,
            )
            if event_type == "booking.cancelled":
                envelope["data"]["booking"].update(id=story.booking_id, codigo=codigo, estado="cancelada")
            else:
                # Appointments on whole minutes, as the platform sends them: the reminder is due at
                # least `due_after` seconds after the post.
                start = datetime.fromtimestamp(math.ceil((sent[number] + due_after + OFFSET) / 60) * 60, ZONE)
                starts.append(start)
                booking = envelope["data"]["booking"]
                fields = {"fecha": start.date().isoformat(), "hora_inicio": start.strftime("%H:%M")}
                fields["hora_fin"] = (start + timedelta(minutes=30)).strftime("%H:%M")
                if event_type == "booking.created":
                    booking.update(copy.deepcopy(fields), id=story.booking_id, codigo=codigo, estado="confirmada")
                    booking["cliente"] = {**booking["cliente"], "email": f"rem{story.booking_id}@chaos.example"}
                else:
                    envelope["data"] = {
                        "booking": {"id": story.booking_id, "codigo": codigo, **fields},
                        "changes": {"hora_inicio": {"old": None, "new": fields["hora_inicio"]}},
                    }
            event.envelope = envelope
        times = [_label(s) for s in starts]
        for start in starts:
            story.due[_label(start)] = start.timestamp() - OFFSET
        if story.kind == "booked":
            story.allowed = story.required = {times[0]}
        elif story.kind == "moved":
            story.allowed = story.required = {times[1]}
        elif story.kind == "moved_after_sent":
            story.allowed, story.required = set(times), {times[1]}  # the first: sent unless overtaken
        # cancelled, stale_after_cancel: nothing may go out


def _label(start: datetime) -> str:
    return f"{start.date().isoformat()} {start.strftime('%H:%M')}"


@dataclass
class ReminderFindings:
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def check_reminders(
    reminders: Reminders,
    hits: list[Any],
    records: dict[str, dict[str, Any] | None],
    acked: dict[str, float | None],
    lost_in_window: set[str],
) -> ReminderFindings:
    """What the destination got for the reminder stories, against what each story allows."""
    found = ReminderFindings()
    sends: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)  # (booking, start) -> key -> first at
    for hit in hits:
        if hit.status < 300 and hit.idempotency_key.endswith("/" + ACTION):
            body = hit.body
            sends[(str(body["booking"]), body["start"])].setdefault(hit.idempotency_key, hit.at)
    lateness: list[float] = []
    outcome: defaultdict[str, int] = defaultdict(int)
    states: defaultdict[str, int] = defaultdict(int)
    for story in reminders.stories:
        booking = str(story.booking_id)
        lost = [e.id for e in story.events if e.id in lost_in_window]
        for event in story.events:
            if acked.get(event.id) is None:
                found.problems.append(f"reminders: {event.id} ({event.type}) was never acknowledged")
            record = records.get(event.id)
            state = (record or {}).get("actions", {}).get(ACTION)
            if state is not None:
                states[state["status"]] += 1
                if state["status"] in ("scheduled", "pending", "sending", "retrying"):
                    found.problems.append(f"STUCK reminder: {event.id} of booking {booking}: {state['status']}")
        got = {start: keys for (b, start), keys in sends.items() if b == booking}
        for start, keys in got.items():
            if start not in story.allowed:
                found.problems.append(
                    f"REMINDER FOR A CANCELLED OR STALE TIME: booking {booking} ({story.kind}) got one for {start}"
                    + (f" (an event of it was lost in the AOF window: {lost})" if lost else "")
                )
            if len(keys) > 1:
                found.problems.append(f"DOUBLE REMINDER: booking {booking} got {len(keys)} for {start}: {sorted(keys)}")
            first = min(keys.values())
            due = story.due.get(start)
            if due is not None:
                if first < due - 0.5:
                    found.problems.append(f"EARLY REMINDER: booking {booking} {start}: {due - first:.1f} s early")
                lateness.append(first - due)
        for start in story.required - set(got):
            if lost:
                outcome["not sent: its event lost in the AOF window"] += 1
            else:
                found.problems.append(f"LOST REMINDER: booking {booking} ({story.kind}) got none for {start}")
        outcome[story.kind] += 1
        if story.kind == "moved_after_sent" and len(got) < 2:
            outcome["moved after sent: the first overtaken by the move (sent only for the new time)"] += 1
    sent = sum(len(keys) for keys in sends.values())
    found.figures["reminder bookings by story"] = dict(sorted(outcome.items()))
    found.figures["reminders sent (distinct sends)"] = sent
    found.figures["reminder action states"] = dict(sorted(states.items()))
    if lateness:
        ordered = sorted(lateness)
        p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
        found.figures["reminder lateness p50 / p99 / max (s)"] = (
            f"{statistics.median(ordered):.2f} / {p99:.2f} / {ordered[-1]:.2f}"
        )
    return found
