"""What an owner does to the event log: list events and dead letters, replay actions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bridge.queue import PROCESS_EVENT, RUN_ACTION, enqueue
from bridge.runtime import Runtime
from bridge.store import DEAD, DONE, DRY_RUN, EVENT_ACTION, PENDING, SENDING, SKIPPED, STALE, EventRecord

# Dead actions, and unfinished ones whose job RQ gave up on (they stay pending or sending); the
# entity lock and the ledger make a replay of one that is in fact still queued harmless.
REPLAYABLE = {DEAD, PENDING, SENDING}
REPLAYABLE_WITH_FORCE = REPLAYABLE | {DONE, DRY_RUN, SKIPPED, STALE}
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


def replay(rt: Runtime, event_id: str, action: str | None = None, force: bool = False) -> Replayed:
    """Queue the dead actions of an event again (with `force`, also done/dry-run/skipped ones)."""
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
    chosen = [
        (action_id, state)
        for action_id, state in sorted(record.actions.items())
        if (action is None or action_id == action) and state.status in eligible
    ]
    if not chosen:
        statuses = ", ".join(f"{a}={s.status}" for a, s in sorted(record.actions.items())) or "no actions"
        hint = "" if force else "; use --force to run done actions again"
        raise ReplayError(f"nothing to replay for {event_id!r} ({statuses}){hint}")
    pipe = rt.redis.pipeline(transaction=True)
    pipe.multi()  # explicit: RQ's enqueue on a pipeline expects one already in MULTI
    for action_id, state in chosen:
        state.history.append({"at": None, "attempt": state.attempts, "outcome": f"replay of {state.status}"})
        state.forced = force and state.status != DEAD
        state.status, state.attempts, state.last_error, state.next_attempt_at = PENDING, 0, "", None
        rt.store.save_action(record.key, action_id, state, pipe=pipe)
        job_id = _replay_job_id(record, action_id, len(state.history))
        if action_id == EVENT_ACTION:  # the event itself had failed: route it again, whole
            enqueue(rt.queue, PROCESS_EVENT, record.key, job_id=job_id, pipeline=pipe)
        else:
            enqueue(rt.queue, RUN_ACTION, record.key, action_id, job_id=job_id, pipeline=pipe)
    pipe.execute()
    return Replayed(event_id, [a for a, _ in chosen])


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
