"""`preview`: what a changed config would have done with the events already received, sent nowhere.

Each stored event of the period is routed and rendered twice, through the config in force and
through the new one, with the same template context (entity memory read from Redis, nothing
written, the event's own facts merged on top, as `simulate` does), so every difference comes from
the config alone. The differences are grouped by section (SECTIONS, a list of builders: a new kind
of difference is one more builder) and by mapping.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from bridge.operations import simulated_context
from bridge.runtime import Runtime
from bridge.schedules import when_text
from bridge.state import subject_of
from bridge.store import EventRecord
from mappings.config import BridgeConfig
from mappings.routing import plan, render_action
from mappings.schedule import next_occurrence
from mappings.templates import MissingDataError, RenderError


@dataclass
class Outcome:
    """What one config does with one action of one event."""

    runs: bool
    fields: dict[str, Any] | None = None
    failure: str = ""  # it would run, but rendering fails (missing data, a template error)
    skip_reason: str = ""


@dataclass
class Compared:
    """One action of one event, under the config in force (`old`) and the new one (`new`)."""

    record: EventRecord
    action_id: str
    mapping: str
    old: Outcome | None  # None: no mapping of that config handles the event with this action
    new: Outcome | None
    scheduled: bool = False  # a scheduled mapping's send for the event's booking (action_id: the mapping)

    @property
    def old_runs(self) -> bool:
        return self.old is not None and self.old.runs and not self.old.failure

    @property
    def new_runs(self) -> bool:
        return self.new is not None and self.new.runs and not self.new.failure


@dataclass
class Entry:
    """One line of the preview: an action of an event, and what changes for it."""

    mapping: str
    action: str
    event: str
    event_type: str
    received_at: float
    booking: str  # the booking (or order) code, when the event has one
    customer: str
    detail: str = ""
    changes: dict[str, list[Any]] = field(default_factory=dict)  # field -> [old, new]


@dataclass
class Section:
    name: str
    title: str
    build: Callable[[list[Compared]], list[Entry]]


def _entry(item: Compared, detail: str = "", changes: dict[str, list[Any]] | None = None) -> Entry:
    subject = subject_of(item.record.envelope)
    return Entry(
        item.mapping,
        item.action_id,
        item.record.id,
        item.record.type,
        item.record.received_at,
        subject.code,
        subject.customer_name,
        detail,
        changes or {},
    )


def _why_not(outcome: Outcome | None) -> str:
    if outcome is None:
        return "no mapping handles it"
    return outcome.skip_reason or outcome.failure or "it does not run"


def added(items: list[Compared]) -> list[Entry]:
    return [
        _entry(i, f"did not run before: {_why_not(i.old)}")
        for i in items
        if i.new_runs and not i.old_runs and not i.scheduled
    ]


def removed(items: list[Compared]) -> list[Entry]:
    return [
        _entry(i, f"would not run any more: {_why_not(i.new)}")
        for i in items
        if i.old_runs and not i.new_runs and not (i.new is not None and i.new.failure) and not i.scheduled
    ]


def scheduled(items: list[Compared]) -> list[Entry]:
    """Scheduled sends whose plan for a booking would be made, moved or dropped (one per mapping and booking)."""
    latest = {(i.mapping, subject_of(i.record.envelope).primary): i for i in items if i.scheduled}
    entries = []
    for item in latest.values():
        old = (item.old.fields or {}).get("send at") if item.old_runs and item.old else None
        new = (item.new.fields or {}).get("send at") if item.new_runs and item.new else None
        if old == new:
            continue
        if old is None:
            entries.append(_entry(item, f"would be planned for {new} (before: {_why_not(item.old)})"))
        elif new is None:
            entries.append(_entry(item, f"the send at {old} would be dropped: {_why_not(item.new)}"))
        else:
            entries.append(_entry(item, f"would move from {old} to {new}", {"send at": [old, new]}))
    return entries


def changed(items: list[Compared]) -> list[Entry]:
    entries = []
    for item in items:
        if item.scheduled or not (item.old_runs and item.new_runs):
            continue
        assert item.old is not None and item.new is not None
        old, new = item.old.fields or {}, item.new.fields or {}
        changes = {name: [old.get(name), new.get(name)] for name in {**old, **new} if old.get(name) != new.get(name)}
        if changes:
            entries.append(_entry(item, changes=dict(sorted(changes.items()))))
    return entries


def failing(items: list[Compared]) -> list[Entry]:
    return [
        _entry(item, item.new.failure)
        for item in items
        if item.new is not None and item.new.failure and not (item.old is not None and item.old.failure)
    ]


# In order of appearance.
SECTIONS: list[Section] = [
    Section("added", "Actions that would now run and did not", added),
    Section("removed", "Actions that ran and would not any more", removed),
    Section("changed", "Actions whose fields change", changed),
    Section("failing", "Actions that would fail under the new config", failing),
    Section("scheduled", "Scheduled sends that would be planned, moved or dropped", scheduled),
]


def scheduled_outcomes(config: BridgeConfig, envelope: dict[str, Any], context: dict[str, Any]) -> dict[str, Outcome]:
    """mapping name -> when `config`'s scheduled mapping would send for the event's booking (judged now)."""
    from bridge.schedules import decide_for, when_text
    from bridge.state import event_moment

    zone = ZoneInfo(config.model.timezone)
    created = event_moment(envelope)
    found = {}
    for mapping in config.mappings_for(envelope["type"], envelope["tenant_id"]):
        if mapping.schedule is None:
            continue
        decision = decide_for(mapping, context.get("booking"), created, envelope["type"], zone, time.time())
        if decision.sends and decision.due is not None:
            found[mapping.name] = Outcome(True, {"send at": when_text(decision.due, zone)})
        else:
            found[mapping.name] = Outcome(False, skip_reason=f"{decision.status}: {decision.reason}")
    return found


def outcomes(config: BridgeConfig, envelope: dict[str, Any], context: dict[str, Any]) -> dict[str, tuple[str, Outcome]]:
    """action id -> (mapping, what `config` does with it), for one event."""
    found: dict[str, tuple[str, Outcome]] = {}
    for item in plan(config, envelope, context):
        spec = item.spec
        if item.skip_reason:
            found[spec.id] = (spec.mapping, Outcome(False, skip_reason=item.skip_reason))
            continue
        try:
            found[spec.id] = (spec.mapping, Outcome(True, render_action(spec, context)))
        except MissingDataError as exc:
            found[spec.id] = (spec.mapping, Outcome(True, failure=f"missing data: {exc}"))
        except RenderError as exc:
            found[spec.id] = (spec.mapping, Outcome(True, failure=f"template error: {exc}"))
    return found


def compare(rt: Runtime, new: BridgeConfig, records: list[EventRecord]) -> list[Compared]:
    compared = []
    for record in records:
        context = simulated_context(rt, record.envelope)
        before = outcomes(rt.config, record.envelope, context)
        after = outcomes(new, record.envelope, context)
        for action_id in [*before, *(a for a in after if a not in before)]:
            mapping = (after.get(action_id) or before[action_id])[0]
            old, now = before.get(action_id), after.get(action_id)
            compared.append(Compared(record, action_id, mapping, old and old[1], now and now[1]))
        plans_before = scheduled_outcomes(rt.config, record.envelope, context)
        plans_after = scheduled_outcomes(new, record.envelope, context)
        for name in dict.fromkeys([*plans_before, *plans_after]):
            compared.append(Compared(record, name, name, plans_before.get(name), plans_after.get(name), True))
    return compared


def stored_events(rt: Runtime, since: float, limit: int, now: float | None = None) -> list[EventRecord]:
    """The stored events received in the last `since` seconds (at most `limit`), oldest first."""
    cutoff = (time.time() if now is None else now) - since
    found: list[EventRecord] = []
    offset, page = 0, 200
    while len(found) < limit:
        batch = rt.store.recent(limit=page, offset=offset)
        if not batch:
            break
        for record in batch:
            if record.received_at < cutoff:
                return found[::-1]
            if not record.data_lost:
                found.append(record)
                if len(found) == limit:
                    break
        offset += page
    return found[::-1]


@dataclass
class Preview:
    events: int
    sections: dict[str, list[Entry]]
    daily: list[str] = field(default_factory=list)  # daily mappings whose next run changes (daily_changes)

    def to_json(self) -> str:
        body = {
            "events": self.events,
            "sections": {name: [asdict(e) for e in entries] for name, entries in self.sections.items()},
            "daily": self.daily,
        }
        return json.dumps(body, ensure_ascii=False, indent=2, default=str)


def preview(rt: Runtime, new: BridgeConfig, since: float, limit: int) -> Preview:
    records = stored_events(rt, since, limit)
    compared = compare(rt, new, records)
    sections = {section.name: section.build(compared) for section in SECTIONS}
    return Preview(len(records), sections, daily_changes(rt.config, new, time.time()))


def daily_changes(old: BridgeConfig, new: BridgeConfig, now: float) -> list[str]:
    """The daily mappings (bridge.digest) whose next run the new config adds, moves or drops."""
    zones = ZoneInfo(old.model.timezone), ZoneInfo(new.model.timezone)
    before = {m.name: m.daily for m in old.mappings if m.daily is not None}
    after = {m.name: m.daily for m in new.mappings if m.daily is not None}
    lines = []
    for name in sorted(before.keys() | after.keys()):
        was, will = before.get(name), after.get(name)
        if was == will and zones[0] == zones[1]:
            continue
        if will is None:
            lines.append(f"{name}: no daily run any more (its plan is dropped)")
            continue
        when = when_text(next_occurrence(will, zones[1], now).due, zones[1])
        was_when = when_text(next_occurrence(was, zones[0], now).due, zones[0]) if was is not None else ""
        lines.append(f"{name}: next run {when}" + (f" (was {was_when})" if was_when else " (a new daily mapping)"))
    return lines


def render_text(result: Preview, show_time: Callable[[float], str]) -> str:
    lines: list[str] = []
    for section in SECTIONS:
        entries = result.sections.get(section.name, [])
        if not entries:
            continue
        lines.append(f"{section.title} ({len(entries)}):")
        by_mapping: dict[str, list[Entry]] = {}
        for entry in entries:
            by_mapping.setdefault(entry.mapping, []).append(entry)
        for mapping, group in by_mapping.items():
            lines.append(f"  mapping {mapping}:")
            for entry in group:
                who = " · ".join(filter(None, [entry.booking and f"booking {entry.booking}", entry.customer]))
                lines.append(
                    f"    {entry.action}  event {entry.event} ({entry.event_type}, {show_time(entry.received_at)})"
                    + (f"  {who}" if who else "")
                )
                if entry.detail:
                    lines.append(f"      {entry.detail}")
                for name, (old, new) in entry.changes.items():
                    lines.append(f"      {name}: {_shown(old)} → {_shown(new)}")
        lines.append("")
    if result.daily:
        lines.append(f"Daily runs ({len(result.daily)}):")
        lines.extend(f"  {line}" for line in result.daily)
    if not any(result.sections.values()) and not result.daily:
        lines.append(f"no difference: the new config does the same with these {result.events} event(s)")
    return "\n".join(lines).rstrip()


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    return json.dumps(value, ensure_ascii=False, default=str)
