"""When a scheduled mapping's actions should run, worked out from the booking (pure: no I/O).

A mapping with `schedule: {at: "booking.start - 24h", quiet_hours: "21:00-09:00", grace: 15m}`
runs at a moment computed from the newest state of the booking. `decide` gives the verdict for
one booking at one moment: send at a time, or not, and why, in words an owner reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

from connectors.base import wall_clock

ANCHORS = ("booking.start", "booking.end", "event.created")
_AT = re.compile(r"^\s*([a-z]+\.[a-z]+)\s*(?:([+-])\s*(.+?))?\s*$")
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
# A booking in one of these states has no appointment to remind of any more.
ENDED_STATES = {"cancelada": "cancelled", "no_show": "marked as a no-show", "completada": "completed"}


@dataclass(frozen=True)
class QuietHours:
    start: clock_time
    end: clock_time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, moment: clock_time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end  # the window spans midnight


@dataclass(frozen=True)
class Schedule:
    """A mapping's `schedule:`, parsed."""

    source: str  # the `at:` text, for messages
    anchor: str  # one of ANCHORS
    offset: float  # seconds added to the anchor (negative: before it)
    grace: float = 900.0
    quiet: QuietHours | None = None

    @property
    def on_booking(self) -> bool:
        return self.anchor.startswith("booking.")


def parse_at(text: str, parse_duration: Any) -> tuple[str, float]:
    """`booking.start - 24h` → ("booking.start", -86400); ValueError says what is wrong."""
    match = _AT.match(text)
    if not match:
        raise ValueError(f"expected an anchor and an optional offset like 'booking.start - 24h', got {text!r}")
    anchor, sign, amount = match.groups()
    if anchor not in ANCHORS:
        raise ValueError(f"unknown anchor {anchor!r}: use one of {', '.join(ANCHORS)}")
    offset = 0.0
    if amount is not None:
        offset = float(parse_duration(amount))
        if sign == "-":
            offset = -offset
    return anchor, offset


def parse_quiet_hours(text: str) -> QuietHours:
    parts = [part.strip() for part in text.split("-")]
    clocks = [_CLOCK.match(part) for part in parts]
    if len(parts) != 2 or not all(clocks):
        raise ValueError(f"expected a window like '21:00-09:00' (24-hour clock, salon time), got {text!r}")
    start, end = (clock_time(int(m.group(1)), int(m.group(2))) for m in clocks if m)
    if start == end:
        raise ValueError(f"the quiet hours {text!r} start and end at the same time")
    return QuietHours(start, end)


def booking_times(booking: Mapping[str, Any] | None, zone: ZoneInfo) -> tuple[datetime, datetime | None] | str:
    """The booking's start and end (end None when `hora_fin` is unknown) as moments in the salon's
    zone, or the reason they cannot be known."""
    booking = booking or {}
    fecha, inicio, fin = booking.get("fecha"), booking.get("hora_inicio"), booking.get("hora_fin")
    if not fecha or not inicio:
        return "the booking's fecha and hora_inicio are not known yet (no booking.created received)"
    try:
        day = date.fromisoformat(str(fecha))
        start = wall_clock(day, _clock(str(inicio)), zone)
        end = wall_clock(day, _clock(str(fin)), zone) if fin else None
    except ValueError as exc:
        return f"the booking's date or time cannot be read ({fecha!r} {inicio!r}: {exc})"
    if end is not None and end <= start:
        end += timedelta(days=1)  # ends after midnight
    return start, end


def _clock(text: str) -> clock_time:
    return clock_time.fromisoformat(text if len(text) > 5 else f"{text}:00" if text.count(":") == 1 else text)


@dataclass(frozen=True)
class Decision:
    """Send at `due` (epoch seconds), or not (`status` cancelled/missed/skipped with `reason`).
    `start`: the booking's start the plan is for (exactly once per start); `note`: what moved it."""

    due: float | None
    start: float | None = None
    status: str = ""
    reason: str = ""
    note: str = ""

    @property
    def sends(self) -> bool:
        return self.due is not None


def decide(
    schedule: Schedule,
    booking: Mapping[str, Any] | None,
    event_created: datetime,
    zone: ZoneInfo,
    now: float,
    may_start_ended: bool = False,
) -> Decision:
    """When to send for this booking's newest state, seen at `now`.

    `may_start_ended`: the mapping itself reacts to the event that ended the booking (a review
    request on booking.completed), so an ended state does not cancel it."""
    start: datetime | None = None
    if schedule.on_booking:
        times = booking_times(booking, zone)
        if isinstance(times, str):
            return Decision(None, status="skipped", reason=f"not planned: {times}")
        start, end = times
        state = str((booking or {}).get("estado") or "")
        if schedule.anchor == "booking.start" and state in ENDED_STATES and not may_start_ended:
            return Decision(None, start.timestamp(), "cancelled", f"the booking was {ENDED_STATES[state]}")
        if schedule.anchor == "booking.end":
            if end is None:
                return Decision(None, status="skipped", reason="not planned: the booking's hora_fin is not known")
            anchor = end
        else:
            anchor = start
    else:
        anchor = event_created.astimezone(zone)
    planned = anchor + timedelta(seconds=schedule.offset)
    due, note = _outside_quiet_hours(planned, schedule.quiet, start, zone)
    start_at = start.timestamp() if start is not None else None
    before_start = start is not None and due < start
    late = now - due.timestamp()
    if late > schedule.grace or (before_start and start is not None and now >= start.timestamp()):
        return Decision(None, start_at, "missed", _missed_reason(schedule, planned, due, start, late, event_created))
    return Decision(float(math.ceil(due.timestamp())), start_at, note=note)  # whole seconds, never early


def _outside_quiet_hours(
    planned: datetime, quiet: QuietHours | None, start: datetime | None, zone: ZoneInfo
) -> tuple[datetime, str]:
    """A time inside the quiet hours moves to their end; when that is not before the booking
    starts (and the plan was), to their beginning instead."""
    local = planned.astimezone(zone)
    if quiet is None or not quiet.contains(local.time().replace(tzinfo=None)):
        return planned, ""
    day = local.date()
    end_day = day + timedelta(days=1) if quiet.start > quiet.end and local.time() >= quiet.start else day
    window_end = wall_clock(end_day, quiet.end, zone)
    shown = f"{local:%H:%M} falls in the quiet hours {quiet}"
    if start is None or planned >= start or window_end < start:
        return window_end, f"{shown}: moved to {window_end:%d/%m %H:%M}"
    begin_day = end_day - timedelta(days=1) if quiet.start > quiet.end else end_day
    window_start = wall_clock(begin_day, quiet.start, zone) - timedelta(minutes=1)
    return window_start, f"{shown}: moved before them, to {window_start:%d/%m %H:%M} (after them is too late)"


def _missed_reason(
    schedule: Schedule,
    planned: datetime,
    due: datetime,
    start: datetime | None,
    late: float,
    event_created: datetime,
) -> str:
    what = f"the send at '{schedule.source}'"
    if start is not None and late <= schedule.grace:
        return f"{what} would go out after the appointment began ({start:%d/%m %H:%M}); never sent then"
    if start is not None and event_created < start and event_created > planned.astimezone(UTC) - timedelta(days=366):
        ahead = start - event_created
        if event_created > due:
            return (
                f"booked {_span(ahead.total_seconds())} before the appointment: {what} was due "
                f"{_span(late)} ago ({due:%d/%m %H:%M}), more than the grace of {_span(schedule.grace)}"
            )
    return f"{what} was due {_span(late)} ago ({due:%d/%m %H:%M}), more than the grace of {_span(schedule.grace)}"


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds >= 86400 and seconds % 86400 < 3600:
        return f"{seconds / 86400:.0f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


# ---- daily schedules (the morning digest, bridge/digest.py) --------------------------------------

FOR_EACH = ("professional", "salon")
_DAILY = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


@dataclass(frozen=True)
class Daily:
    """A mapping's `schedule: {daily: "08:00", for_each: professional}`, parsed: its actions run
    every day at that wall-clock time in the salon's zone, once per professional (or per salon)."""

    source: str  # the `daily:` text, for messages
    at: clock_time
    for_each: str = "professional"  # one of FOR_EACH
    grace: float = 900.0
    quiet: QuietHours | None = None


def parse_daily(text: str) -> clock_time:
    """`08:00` or `08:00:30` (seconds, for tests and odd needs) → a time; ValueError says what is wrong."""
    match = _DAILY.match(text.strip())
    if not match:
        raise ValueError(f"expected a time of day like '08:00' (24-hour clock, salon time), got {text!r}")
    hours, minutes, seconds = match.groups()
    return clock_time(int(hours), int(minutes), int(seconds or 0))


@dataclass(frozen=True)
class Occurrence:
    """One day's run of a daily schedule: the salon's `day`, the moment its time denotes (`start`,
    what the run is for: exactly once per start) and when it goes out (`due`, after quiet hours)."""

    day: date
    start: float
    due: float
    note: str = ""


def occurrence(daily: Daily, day: date, zone: ZoneInfo) -> Occurrence:
    """That day's run. A time the clocks skip (02:30 on the spring change night) is the moment
    after the gap (03:30); a time shown twice in autumn is its first occurrence, as booking times
    are (connectors.base.wall_clock)."""
    planned = wall_clock(day, daily.at, zone)
    due, note = _outside_quiet_hours(planned, daily.quiet, None, zone)
    return Occurrence(day, planned.timestamp(), float(math.ceil(due.timestamp())), note)


def next_occurrence(daily: Daily, zone: ZoneInfo, now: float) -> Occurrence:
    """The first run whose due time is not before `now`."""
    day = datetime.fromtimestamp(now, zone).date() - timedelta(days=1)
    while True:
        found = occurrence(daily, day, zone)
        if found.due >= now:
            return found
        day += timedelta(days=1)


def daily_missed_reason(daily: Daily, due: float, now: float, zone: ZoneInfo) -> str | None:
    """Why a run seen at `now` is missed (its due time passed beyond the grace), or None."""
    late = now - due
    if late <= daily.grace:
        return None
    when = datetime.fromtimestamp(due, zone)
    return (
        f"the daily send at {daily.source} was due {_span(late)} ago ({when:%d/%m %H:%M}), "
        f"more than the grace of {_span(daily.grace)} (no worker was running then, or all were busy)"
    )
