"""What an owner does to the event log: list events and dead letters, replay actions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from bridge.queue import PROCESS_EVENT, RUN_ACTION, enqueue
from bridge.runtime import Runtime
from bridge.state import event_views, subject_of
from bridge.store import EVENT_ACTION, ActionState, EventRecord, Status
from mappings.routing import plan, template_context
from mappings.templates import EntityView

# Dead actions, and unfinished ones whose job RQ gave up on (they stay pending or sending); the
# entity lock and the ledger make a replay of one that is in fact still queued harmless.
REPLAYABLE = {Status.DEAD, Status.FAILED_AFTER_SENDING, Status.PENDING, Status.SENDING}
# With force, also what already ran; a skipped action only when its `when:` is true now.
REPLAYABLE_WITH_FORCE = REPLAYABLE | {Status.DONE, Status.DRY_RUN, Status.SKIPPED, Status.STALE}
# A record with action states but no body: Redis lost it (evicted it, or restarted empty) while a
# job was running, and that job wrote its action's state back (bridge.store.EventRecord.data_lost).
DATA_LOST = (
    "data lost in Redis: the event itself is gone (Redis evicted it or restarted empty while it was being "
    "processed); only what its actions did is left, so it cannot be run again: ask SalonBookIt to send it "
    "again, or do by hand what it should have done"
)


class ReplayError(Exception):
    """Nothing could be replayed; the message says why."""


@dataclass
class Replayed:
    event_id: str
    action_ids: list[str]
    still_skipped: dict[str, str] = field(default_factory=dict)  # skipped actions left alone, and why


def replay(rt: Runtime, event_id: str, action: str | None = None, force: bool = False) -> Replayed:
    """Queue the dead actions of an event again (with `force`, also done/dry-run/stale ones, and
    skipped ones whose mapping's condition is true now)."""
    record = rt.store.find(event_id)
    if record is None:
        raise ReplayError(f"event {event_id!r} is not in the event log (unknown, or older than the retention)")
    if record.data_lost:
        raise ReplayError(f"event {event_id!r}: {DATA_LOST}")
    if not record.actions and action is None:
        # Never processed (its job was lost or given up on by RQ): route the whole event again.
        enqueue(rt.queue, PROCESS_EVENT, record.key)
        return Replayed(event_id, ["(every action of the event)"])
    eligible = REPLAYABLE_WITH_FORCE if force else REPLAYABLE
    if action is not None and action not in record.actions:
        known = ", ".join(sorted(record.actions)) or "none"
        raise ReplayError(f"event {event_id!r} has no action {action!r} (its actions: {known})")
    candidates = [
        (action_id, state)
        for action_id, state in sorted(record.actions.items())
        if (action is None or action_id == action) and state.status in eligible
    ]
    still_skipped = _still_skipped(rt, record) if any(s.status == Status.SKIPPED for _, s in candidates) else {}
    chosen = [(a, s) for a, s in candidates if not (s.status == Status.SKIPPED and a in still_skipped)]
    if not chosen:
        raise ReplayError(_nothing_to_replay(record, force, still_skipped))
    pipe = rt.redis.pipeline(transaction=True)
    pipe.multi()  # explicit: RQ's enqueue on a pipeline expects one already in MULTI
    for action_id, state in chosen:
        state.history.append({"at": None, "attempt": state.attempts, "outcome": f"replay of {state.status}"})
        state.forced = force and state.status not in (Status.DEAD, Status.FAILED_AFTER_SENDING)
        state.status, state.attempts, state.last_error, state.next_attempt_at = Status.PENDING, 0, "", None
        rt.store.save_action(record.key, action_id, state, pipe=pipe)
        job_id = _replay_job_id(record, action_id, len(state.history))
        if action_id == EVENT_ACTION:  # the event itself had failed: route it again, whole
            enqueue(rt.queue, PROCESS_EVENT, record.key, job_id=job_id, pipeline=pipe)
        else:
            enqueue(rt.queue, RUN_ACTION, record.key, action_id, job_id=job_id, pipeline=pipe)
    pipe.execute()
    left = {a: still_skipped[a] for a, s in candidates if s.status == Status.SKIPPED and a in still_skipped}
    return Replayed(event_id, [a for a, _ in chosen], left)


def _still_skipped(rt: Runtime, record: EventRecord) -> dict[str, str]:
    """The actions of the event whose mapping's condition is false now (action id -> why)."""
    context = current_context(rt, record.envelope)
    return {p.spec.id: p.skip_reason for p in plan(rt.config, record.envelope, context) if p.skip_reason}


def current_context(rt: Runtime, envelope: dict[str, Any]) -> dict[str, Any]:
    """What templates would see for the event now: entity memory read, nothing written."""
    return template_context(rt.config.model.timezone, envelope, rt.memory.views(subject_of(envelope)))


def simulated_context(rt: Runtime, envelope: dict[str, Any]) -> dict[str, Any]:
    """What templates would see if the event arrived now: entity memory (read, nothing written)
    with the event's own facts merged on top, as a worker merges them before routing."""
    remembered = rt.memory.views(subject_of(envelope))
    views: dict[str, EntityView | None] = {}
    for kind, own in event_views(envelope).items():
        known = remembered.get(kind)
        views[kind] = EntityView(_merged(known, own), kind, own.entity_id) if own and known else own or known
    return template_context(rt.config.model.timezone, envelope, views)


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both_dicts else value
    return merged


def _nothing_to_replay(record: EventRecord, force: bool, still_skipped: dict[str, str]) -> str:
    statuses = ", ".join(f"{a}={_status(a, s, still_skipped)}" for a, s in sorted(record.actions.items()))
    hint = "" if force else "; use --force to run done actions again"
    return f"nothing to replay for {record.id!r} ({statuses or 'no actions'}){hint}"


def _status(action_id: str, state: ActionState, still_skipped: dict[str, str]) -> str:
    if action_id in still_skipped:
        return f"skipped, and still would be: {still_skipped[action_id]}"
    return state.status


def _replay_job_id(record: EventRecord, action_id: str, generation: int) -> str:
    digest = hashlib.sha1(action_id.encode()).hexdigest()[:12]
    return f"{record.key}-{digest}-replay{generation}"


def matching_events(
    rt: Runtime, event_type: str | None = None, status: str | None = None, limit: int = 20
) -> list[EventRecord]:
    """Recent events, newest first, filtered by type (glob-free exact match) and action status."""
    found: list[EventRecord] = []
    offset, page = 0, max(limit * 4, 100)
    while len(found) < limit:
        batch = rt.store.recent(limit=page, offset=offset)
        if not batch:
            break
        for record in batch:
            if event_type and record.type != event_type:
                continue
            if status and not any(s.status == status for s in record.actions.values()):
                continue
            found.append(record)
            if len(found) == limit:
                break
        offset += page
    return found
