"""The morning digest: mappings with `schedule: {daily: "08:00", for_each: professional}`.

Each daily mapping has one plan, `<mapping>:~daily`, in the sorted set of the scheduled sends
(bridge.schedules), due at that day's time in the salon's zone; the workers' scheduler wakes it
as it wakes reminders, and `fire_digest` runs it:

- the digests of that day: for each tenant of the agenda index (bridge.agenda), one per
  professional booked that day or listed in `staff:` (`for_each: professional`), or one for the
  whole salon (`for_each: salon`);
- each is a record of type `schedule.daily` in the event log, its key made from (mapping, tenant,
  professional, date), holding that day's bookings as memory has them when it fires. Its actions
  are ordinary actions of that record (retries, dead letters, replay, /admin, `events`, metrics),
  and the record is the ledger: a second run for the same day finds them done and sends nothing;
- then the plan moves to the next day. A run seen later than its `grace` (the workers were down)
  records each digest as `missed`, with the reason, instead of sending it.

Two jobs for one plan (a duplicated wake, a second worker) never run together: the firing holds
a lock; a job killed midway is woken again with its plan (SNOOZE) and carries on from the ledger.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, date, datetime
from typing import Any

from bridge import agenda, metrics, schedules
from bridge import runtime as runtime_module
from bridge.jobs import EntityWork, attempt
from bridge.queue import JOB_TIMEOUT
from bridge.runtime import Runtime
from bridge.state import EntityBusy, EntityLock
from bridge.store import EVENTS_INDEX, PREFIX, ActionState, EventRecord, Status, event_key, key_part, record_key, text
from mappings.config import MappingSpec
from mappings.routing import DIGEST_TYPE, skip_reason
from mappings.schedule import Daily, daily_missed_reason, next_occurrence, occurrence
from mappings.templates import EntityView

log = logging.getLogger("salon_bridge.digest")

FIRE_LOCK_PREFIX = PREFIX + "lock:digest:"


def daily_mappings(rt: Runtime) -> dict[str, Daily]:
    return {m.name: m.daily for m in rt.config.mappings if m.daily is not None}


def digest_plans(rt: Runtime) -> dict[str, schedules.Plan]:
    """The pending plans of daily mappings, by plan id (those of removed mappings included)."""
    ids = [text(m) for m, _ in rt.redis.zscan_iter(schedules.PLANS, match="*" + schedules.DIGEST_SUFFIX)]
    return schedules.read_plans(rt.redis, ids)


def plan_digests(rt: Runtime, now: float | None = None) -> int:
    """Give each daily mapping its plan, at worker start and config reload; the plans changed.

    A plan still right for the config is kept, even when its time has passed (the workers were
    down): its run is then judged, sent within grace or recorded as missed. Otherwise the plan
    moves to the next run; plans of mappings no longer daily are dropped."""
    now = time.time() if now is None else now
    wanted, existing = daily_mappings(rt), digest_plans(rt)
    pipe = rt.redis.pipeline(transaction=True)
    changed = 0
    for plan in existing.values():
        if schedules.mapping_of(plan.id) not in wanted:
            rt.planner.drop(pipe, None, plan, Status.CANCELLED, "")
            changed += 1
    for name, daily in wanted.items():
        plan_ref = schedules.digest_plan_id(name)
        old = existing.get(plan_ref)
        if old is not None and _still_right(daily, old, rt):
            continue
        _plan_run(pipe, plan_ref, daily, rt, now)
        changed += 1
    pipe.execute()
    if changed:
        log.info("daily digests: %d plan(s) made, moved or dropped", changed)
    return changed


def _still_right(daily: Daily, plan: schedules.Plan, rt: Runtime) -> bool:
    """Whether the plan is the run of its day under this schedule (the time or quiet hours did not change)."""
    zone = rt.planner.zone
    if plan.start is None:
        return False
    run = occurrence(daily, datetime.fromtimestamp(plan.start, zone).date(), zone)
    return run.start == plan.start and run.due == plan.due


def _plan_run(pipe: Any, plan_ref: str, daily: Daily, rt: Runtime, after: float) -> schedules.Plan:
    """Queue the plan of the first run due at or after `after`."""
    run = next_occurrence(daily, rt.planner.zone, after)
    plan = schedules.Plan(plan_ref, "", run.due, run.start, run.note)
    pipe.hset(schedules.PLAN_DATA, plan_ref, plan.to_json())
    pipe.zadd(schedules.PLANS, {plan_ref: plan.due})
    return plan


def next_runs(rt: Runtime) -> list[tuple[MappingSpec, schedules.Plan | None]]:
    """Each daily mapping with its pending plan (None until a worker has started on this config)."""
    plans = digest_plans(rt)
    return [(m, plans.get(schedules.digest_plan_id(m.name))) for m in rt.config.mappings if m.daily is not None]


# ---- firing (a job queued by the workers' scheduler) ----------------------------------------------


def fire_digest(plan_ref: str) -> str:
    """A daily plan's time has come: store and send that day's digests, then plan the next day."""
    rt = runtime_module.current()
    lock = EntityLock(rt.redis, FIRE_LOCK_PREFIX + key_part(plan_ref), f"daily plan {plan_ref}", JOB_TIMEOUT)
    try:
        lock.acquire(wait=0)
    except EntityBusy:
        return "nothing to do: another worker is sending these digests"
    try:
        return _fire(rt, plan_ref)
    finally:
        lock.release()


def _fire(rt: Runtime, plan_ref: str) -> str:
    found = schedules.read_plans(rt.redis, [plan_ref]).get(plan_ref)
    now = time.time()
    if found is None:
        return "nothing to do: the plan was dropped"
    if found.due > now + 1:
        return "not due: it was planned again for later"
    mapping = rt.config.mapping(schedules.mapping_of(plan_ref))
    if mapping is None or mapping.daily is None:
        pipe = rt.redis.pipeline(transaction=True)
        rt.planner.drop(pipe, None, found, Status.CANCELLED, "")
        pipe.execute()
        return f"{Status.CANCELLED}: the mapping is no longer a daily one"
    zone = rt.planner.zone
    day = datetime.fromtimestamp(found.start if found.start is not None else found.due, zone).date()
    missed = daily_missed_reason(mapping.daily, found.due, now, zone)
    outcomes = []
    for tenant, professional, bookings in targets(rt, mapping, day):
        record = stored_digest(rt, mapping, found, day, tenant, professional, bookings)
        outcomes += _send(rt, mapping, record, found, missed)
    pipe = rt.redis.pipeline(transaction=True)
    _plan_run(pipe, plan_ref, mapping.daily, rt, max(now, found.due + 1))
    metrics.record_plan(pipe, Status.MISSED if missed else "fired", None if missed else max(0.0, now - found.due))
    pipe.execute()
    return ", ".join(outcomes) or f"no digests for {day}: no tenant in the agenda index yet"


def targets(rt: Runtime, mapping: MappingSpec, day: date) -> list[tuple[str, str | None, list[EntityView]]]:
    """(tenant, professional or None for the salon, that day's bookings) of each digest of the day.
    Professionals: those booked that day, and those in `staff:` (an empty day a `when:` skips)."""
    assert mapping.daily is not None
    zone = rt.planner.zone
    tenants = [t for t in agenda.tenants(rt.redis) if mapping.tenants is None or t in mapping.tenants]
    if mapping.daily.for_each == "salon":
        return [(t, None, agenda.agenda(rt.redis, t, day, None, zone)) for t in tenants]
    booked = agenda.booked_on(rt.redis, day)
    found: list[tuple[str, str | None, list[EntityView]]] = []
    for tenant in tenants:
        pros = set(booked.get(tenant, [])) | set(rt.config.model.staff)
        for pro in sorted(pros, key=lambda p: (not p.isdigit(), int(p) if p.isdigit() else 0, p)):
            found.append((tenant, pro, agenda.agenda(rt.redis, tenant, day, pro, zone)))
    return found


def digest_id(mapping: str, tenant: str, professional: str | None, day: date) -> str:
    """The record's event id: one per (mapping, tenant, professional, date), the digest's ledger key."""
    return f"daily:{mapping}:{tenant}:{professional if professional is not None else '(salon)'}:{day.isoformat()}"


def digest_envelope(
    mapping: MappingSpec, moment: float, day: date, tenant: str, professional: str | None, bookings: list[EntityView]
) -> dict[str, Any]:
    """The record's body: the day's bookings as they are now (`moment`: the run's time)."""
    assert mapping.daily is not None
    return {
        "id": digest_id(mapping.name, tenant, professional, day),
        "type": DIGEST_TYPE,
        "tenant_id": tenant,
        "created": datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "mapping": mapping.name,
            "for_each": mapping.daily.for_each,
            "professional": professional,
            "date": day.isoformat(),
            "agenda": bookings,
        },
    }


def stored_digest(
    rt: Runtime,
    mapping: MappingSpec,
    plan: schedules.Plan,
    day: date,
    tenant: str,
    professional: str | None,
    bookings: list[EntityView],
) -> EventRecord:
    """The digest's record, stored in the event log the first time (a job run again finds it)."""
    key = event_key(digest_id(mapping.name, tenant, professional, day))
    record = rt.store.load(key)
    if record is not None and not record.data_lost:
        return record
    moment = plan.start if plan.start is not None else plan.due
    body = json.dumps(digest_envelope(mapping, moment, day, tenant, professional, bookings), ensure_ascii=False)
    now = time.time()
    pipe = rt.redis.pipeline(transaction=True)
    pipe.hset(record_key(key), mapping={"body": body, "received_at": now})
    pipe.expire(record_key(key), rt.store.retention)
    pipe.zadd(EVENTS_INDEX, {key: now})
    pipe.execute()
    return EventRecord(key, json.loads(body), now, record.actions if record else {})


def _send(
    rt: Runtime, mapping: MappingSpec, record: EventRecord, plan: schedules.Plan, missed: str | None
) -> list[str]:
    """Run the digest's actions that have not run (the ledger), or record them missed."""
    outcomes = []
    with EntityWork(rt, record, remember=False) as work:  # no entity: no lock; reads the states, builds the context
        reason = None if missed else skip_reason(mapping, work.context)
        for spec in mapping.actions:
            state = work.record.actions.get(spec.id)
            if state is not None and state.status not in (Status.PENDING, Status.SENDING):
                continue  # done, dead, skipped, missed or retrying: this day's digest ran already
            state = state or ActionState(connector=spec.connector)
            state.plan = plan.as_state()
            if missed or reason:
                state.status = Status.MISSED if missed else Status.SKIPPED
                state.detail = f"not sent: {missed}" if missed else f"at its time, {reason}"
                state.history.append({"at": time.time(), "attempt": 0, "outcome": state.status, "detail": state.detail})
                rt.store.save_action(record.key, spec.id, state, pipe=work.writes)
                metrics.record_action(work.writes, spec.connector, state.status, None)
            else:
                attempt(rt, work, spec, state)
            work.writes.zadd(schedules.PAST, {f"{record.key} {spec.id}": plan.due})
            outcomes.append(f"{spec.id}@{record.tenant_id}/{record.envelope['data']['professional']}={state.status}")
    return outcomes
