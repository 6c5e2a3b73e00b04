"""What a worker runs: route an event to its actions, run each, retry or dead-letter it on its own.

Every job ends with an outcome in the event log: each action done, retrying or dead with its
reason, or, when the event itself could not be processed, the event's own entry (`EVENT_ACTION`)
dead with the reason. Only a Redis that is away lets an error through, for RQ to run the job
again; when RQ gives up on a job, `job_gave_up` records that too.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from bridge import agenda, deliveries, metrics, redis_health, schedules
from bridge import runtime as runtime_module
from bridge.queue import JOB_TIMEOUT, PROCESS_CALLBACK, PROCESS_EVENT, RUN_ACTION, enqueue
from bridge.runtime import Runtime
from bridge.state import EntityBusy, RedisConnectorStore, event_moment, memory_fields, subject_of
from bridge.store import (
    EVENT_ACTION,
    ActionState,
    EventRecord,
    Status,
    keep_until,
    key_part,
    load_record,
    record_key,
    text,
)
from connectors.base import (
    KINDS,
    ActionRequest,
    Entity,
    MissingDataError,
    PermanentError,
    SkipSend,
    Subject,
    TransientError,
)
from mappings.config import ActionSpec, MappingSpec
from mappings.routing import event_context, plan, render_action, skip_reason
from mappings.schedule import Decision, booking_times
from mappings.templates import EntityView, RenderError

log = logging.getLogger("salon_bridge.jobs")

POSSIBLE_DUPLICATES_KEY = "sb:stats:possible_duplicates"
# The reason when an event's stored body is gone (evicted, or Redis restarted without its data).
LOST_IN_REDIS = "data lost in Redis: the event's stored body is gone, so it cannot be processed"
BUSY_DELAY = 2  # seconds before a job whose entity is locked by another worker runs again


def process_event(key: str) -> str:
    """Remember what the event says, then make the first attempt of every action it triggers."""
    rt = runtime_module.current()
    try:
        record = rt.store.load(key)
        if record is None:
            log.warning("event %s expired before it was processed", key)
            return "expired"
        if record.data_lost:
            return fail_event(rt, key, EVENT_ACTION, LOST_IN_REDIS)
        with EntityWork(rt, record, remember=True) as work:
            rt.store.pack_body_on(work.writes, record)
            outcomes = [f"{action_id}={status}" for action_id, status in _first_attempts(rt, work)]
            outcomes += [f"{mapping}={status}" for mapping, status in plan_sends(rt, work)]
            event_state = work.record.actions.get(EVENT_ACTION)
            if event_state is not None and event_state.status != Status.DONE:  # a replay of an event that had failed
                event_state.status, event_state.detail = Status.DONE, "processed"
                rt.store.save_action(key, EVENT_ACTION, event_state, pipe=work.writes)
    except EntityBusy as busy:
        return _later(rt, PROCESS_EVENT, key, busy)
    except RedisError:
        raise  # Redis is away: RQ runs the job again
    except Exception as exc:  # noqa: BLE001 - whatever it is, the event gets an outcome
        return fail_event(rt, key, EVENT_ACTION, exc)
    return ", ".join(outcomes) or "no actions"


def _first_attempts(rt: Runtime, work: EntityWork) -> list[tuple[str, str]]:
    """Run (or skip) each action the event triggers that has not run yet; their statuses."""
    outcomes = []
    for planned in plan(rt.config, work.record.envelope, work.context):
        spec = planned.spec
        state = work.record.actions.get(spec.id)
        if state is not None and state.status not in (Status.PENDING, Status.SENDING):
            continue  # the ledger: already done, dead, skipped, or scheduled for a retry
        state = state or ActionState(connector=spec.connector)
        if planned.skip_reason:
            state.status, state.detail = Status.SKIPPED, planned.skip_reason
            rt.store.save_action(work.record.key, spec.id, state, pipe=work.writes)
            metrics.record_action(work.writes, spec.connector, Status.SKIPPED, None)
        else:
            attempt(rt, work, spec, state)
        outcomes.append((spec.id, state.status))
    return outcomes


def run_action(key: str, action_id: str) -> str:
    """A retry (scheduled by `attempt`) or a replay of one action."""
    rt = runtime_module.current()
    try:
        record = rt.store.load(key)
        if record is None:
            log.warning("event %s expired before action %s could run again", key, action_id)
            return "expired"
        if record.data_lost:
            return fail_event(rt, key, action_id, LOST_IN_REDIS)
        with EntityWork(rt, record, remember=False) as work:
            state = work.record.actions.get(action_id)
            if state is None or state.status not in (Status.PENDING, Status.RETRYING, Status.SENDING):
                return f"nothing to do ({state.status if state else 'unknown action'})"
            spec = rt.config.action(action_id)
            if spec is None:
                state.status = Status.DEAD
                state.last_error = f"action {action_id!r} is no longer in the config"
                rt.store.save_action(key, action_id, state, pipe=work.writes)
                return state.status
            if state.plan is not None and _plan_no_longer_holds(rt, work, spec, state):
                return state.status
            attempt(rt, work, spec, state)
    except EntityBusy as busy:
        return _later(rt, RUN_ACTION, key, busy, action_id)
    except RedisError:
        raise
    except Exception as exc:  # noqa: BLE001
        return fail_event(rt, key, action_id, exc)
    return state.status


def plan_sends(rt: Runtime, work: EntityWork) -> list[tuple[str, str]]:
    """Make, move or drop the plans of the event's entity for every scheduled mapping: the ones the
    event matches are (re)planned as its own actions; the others' existing plans follow what
    memory now says (a move, a cancellation). Two round trips, only when there is a plan to see."""
    record, subject = work.record, work.subject
    mappings = schedules.scheduled_mappings(rt.config, subject.tenant)
    if not mappings or subject.primary is None:
        return []
    kind, entity_id = subject.primary
    ids = [schedules.plan_id(m.name, subject.tenant, kind, entity_id) for m in mappings]
    existing = schedules.read_plans(rt.redis, ids)
    now, created = time.time(), event_moment(record.envelope)
    booking = work.context.get("booking")
    todo: list[tuple[MappingSpec, str, str, Decision]] = []
    for mapping, plan_ref in zip(mappings, ids, strict=True):
        matches = mapping.matches(record.type, subject.tenant)
        if not matches and plan_ref not in existing:
            continue
        owner = record.key if matches else existing[plan_ref].event
        owner_type = record.type if matches else _event_type(rt, owner)
        decision = schedules.decide_for(mapping, booking, created, owner_type, rt.planner.zone, now)
        old = existing.get(plan_ref)
        if not matches and old is not None and decision.due == old.due and decision.start == old.start:
            continue  # nothing this event says changes that plan
        todo.append((mapping, plan_ref, owner, decision))
    outcomes = _apply_plans(
        rt, work, todo, existing, lambda owner: f" (event {record.id})" if owner != record.key else ""
    )
    start = next((d.start for _, _, _, d in todo if d.start), None)
    if start:  # a later config change can still attach a send to this event until the appointment
        keep_until(work.writes, record_key(record.key), start + rt.store.retention)
    return outcomes


def _apply_plans(
    rt: Runtime,
    work: EntityWork,
    todo: list[tuple[MappingSpec, str, str, Decision]],
    existing: dict[str, schedules.Plan],
    why: Callable[[str], str],
) -> list[tuple[str, str]]:
    """Make each (mapping, plan, owner, decision) so, on `work.writes`; (mapping, status) of each.
    `why(owner)`: what to add to a reason."""
    fired = _fired_by(rt, [(p, o, d) for _, p, o, d in todo])
    outcomes = []
    for (mapping, plan_ref, owner, decision), fired_by in zip(todo, fired, strict=True):
        old = existing.get(plan_ref)
        status = rt.planner.apply(work.writes, mapping, plan_ref, owner, decision, old, fired_by, why(owner))
        metrics.record_plan(work.writes, status)
        outcomes.append((mapping.name, status))
    return outcomes


def _event_type(rt: Runtime, key: str) -> str:
    raw = rt.redis.hget(record_key(key), "type")
    return text(raw) if raw is not None else ""


def _fired_by(rt: Runtime, plans: list[tuple[str, str, Decision]]) -> list[str | None]:
    """For each plan that would send, the event whose send already went out for that booking time."""
    keys = [schedules.Plan(p, o, d.due or 0, d.start).fired_key() for p, o, d in plans]
    if not keys:
        return []
    found = rt.redis.mget(keys)
    return [text(f) if f is not None and text(f) != o else None for f, (_, o, _) in zip(found, plans, strict=True)]


def fire_plan(plan: str) -> str:
    """A plan's time has come (queued by the worker's scheduler): check it against what memory
    says now, then run its mapping's actions as the actions of the event that planned it."""
    rt = runtime_module.current()
    found = schedules.read_plans(rt.redis, [plan]).get(plan)
    if found is None:
        return "nothing to do: already sent or dropped"
    mapping = rt.config.mapping(schedules.mapping_of(plan))
    record = rt.store.load(found.event)
    try:
        if record is None or record.data_lost:
            pipe = rt.redis.pipeline(transaction=True)
            rt.planner.drop(pipe, mapping, found, Status.MISSED, "the event that planned it is gone from Redis")
            pipe.execute()
            return Status.MISSED
        with EntityWork(rt, record, remember=False) as work:
            return _fire(rt, work, plan, mapping)
    except EntityBusy as busy:
        enqueue(rt.queue, schedules.FIRE_PLAN, plan, delay=BUSY_DELAY)
        log.info("plan %s: %s; trying again in %d s", plan, busy, BUSY_DELAY)
        return f"busy, again in {BUSY_DELAY} s"


def _fire(rt: Runtime, work: EntityWork, plan: str, mapping: MappingSpec | None) -> str:
    found = schedules.read_plans(rt.redis, [plan]).get(plan)  # again, now under the entity's lock
    now = time.time()
    if found is None:
        return "nothing to do: already sent or dropped"
    if found.due > now + 1:
        return "not due: it was planned again for later"
    record, planner = work.record, rt.planner
    if mapping is None or mapping.schedule is None:
        _drop_removed(rt, work.writes, found, record)
        return Status.CANCELLED
    created = event_moment(record.envelope)
    decision = schedules.decide_for(mapping, work.context.get("booking"), created, record.type, planner.zone, now)
    if decision.due != found.due or decision.start != found.start:
        # Memory says something the plan does not (a late event, a config not applied yet).
        status = planner.apply(work.writes, mapping, plan, found.event, decision, found, None)
        return f"planned again: {status}"
    fired_by = rt.redis.get(found.fired_key())
    if fired_by is not None and text(fired_by) != found.event:
        return planner.apply(work.writes, mapping, plan, found.event, decision, found, text(fired_by))
    lateness = max(0.0, now - found.due)
    # The mark is sent before the first connector call (with the action's `sending`): exactly once
    # per booking time, even if this job runs again after a crash (same event: it carries on).
    work.writes.set(found.fired_key(), found.event, exat=int(max(found.start or 0, now) + schedules.KEEP_AFTER_SEND))
    reason = skip_reason(mapping, work.context)
    outcomes = []
    for spec in mapping.actions:
        state = record.actions.get(spec.id) or ActionState(connector=spec.connector)
        if state.status not in (Status.SCHEDULED, Status.PENDING, Status.SENDING):
            continue
        state.plan = state.plan or found.as_state()
        if reason:
            state.status, state.detail = Status.SKIPPED, f"at its time, {reason}"
            rt.store.save_action(record.key, spec.id, state, pipe=work.writes)
            metrics.record_action(work.writes, spec.connector, Status.SKIPPED, None)
        else:
            if state.status == Status.SCHEDULED:
                state.status = Status.PENDING
            attempt(rt, work, spec, state)
        outcomes.append(f"{spec.id}={state.status}")
    planner.forget(work.writes, found, [spec.id for spec in mapping.actions])
    metrics.record_plan(work.writes, "fired", lateness)
    return ", ".join(outcomes) or "nothing left to send"


def replan_all(rt: Runtime) -> int | None:
    """After a config change, plans follow it for every booking in memory still ahead: a new
    scheduled mapping plans for them, a changed one moves its plans, a removed one drops them.
    One worker does it (a lock); None when nothing changed or another worker is on it."""
    fingerprint = schedules.fingerprint(rt.config)
    stored = rt.redis.get(schedules.CONFIG_KEY)
    if stored is not None and text(stored) == fingerprint:
        return None
    token = uuid.uuid4().hex
    if not rt.redis.set(schedules.REPLAN_LOCK, token, nx=True, ex=600):
        return None
    try:
        names = {m.name for m in rt.config.mappings if m.schedule is not None}
        pipe = rt.redis.pipeline(transaction=True)
        pending = [p for p in schedules.pending(rt.redis) if not schedules.is_digest_plan(p.id)]  # bridge.digest's
        removed = [p for p in pending if schedules.mapping_of(p.id) not in names]
        for found in removed:
            _drop_removed(rt, pipe, found, rt.store.load(found.event))
        pipe.execute()
        changed = len(removed)
        if names:
            ahead = agenda.upcoming_memory_keys(rt.redis, rt.planner.zone)
            changed += sum(_replan_booking(rt, key) for key in ahead)
        rt.redis.set(schedules.CONFIG_KEY, fingerprint)
        if changed or names:
            log.warning("scheduled sends follow the new config: %d plan(s) made, moved or dropped", changed)
        return changed
    finally:
        if rt.redis.get(schedules.REPLAN_LOCK) == token.encode():
            rt.redis.delete(schedules.REPLAN_LOCK)


def _drop_removed(rt: Runtime, pipe: Pipeline, found: schedules.Plan, record: EventRecord | None) -> None:
    """Drop the plan of a mapping no longer scheduled in the config, saying so on its actions."""
    for action_id, state in (record.actions if record else {}).items():
        if state.plan and state.plan.get("id") == found.id and state.status == Status.SCHEDULED:
            state.status, state.next_attempt_at = Status.CANCELLED, None
            state.detail = f"not sent: mapping {schedules.mapping_of(found.id)!r} was removed from the config"
            rt.store.save_action(found.event, action_id, state, pipe=pipe)
            pipe.zadd(schedules.PAST, {f"{found.event} {action_id}": found.due})
    rt.planner.drop(pipe, None, found, Status.CANCELLED, "")
    metrics.record_plan(pipe, Status.CANCELLED)


def _replan_booking(rt: Runtime, memory_key: str) -> int:
    """Re-plan one remembered booking whose appointment is still ahead; the plans changed."""
    raw = rt.memory.load_raw(memory_key)
    events = rt.memory.events_of(raw)
    times = booking_times(memory_fields(raw), rt.planner.zone)
    if not events or isinstance(times, str) or times[0].timestamp() < time.time():
        return 0
    records = {r.key: r for r in rt.store.load_many(list(dict.fromkeys(events.values()))) if not r.data_lost}
    if not records:
        return 0
    newest = max(records.values(), key=lambda r: r.received_at)
    changed = 0
    with EntityWork(rt, newest, remember=False) as work:
        subject = work.subject
        if subject.primary is None:
            return 0
        mappings = schedules.scheduled_mappings(rt.config, subject.tenant)
        ids = [schedules.plan_id(m.name, subject.tenant, *subject.primary) for m in mappings]
        existing = schedules.read_plans(rt.redis, ids)
        booking, now = work.context.get("booking"), time.time()
        todo = []
        for mapping, plan in zip(mappings, ids, strict=True):
            old = existing.get(plan)
            owners = [records[k] for t, k in events.items() if k in records and mapping.matches(t, subject.tenant)]
            owner = records.get(old.event) if old else max(owners, key=lambda r: r.received_at, default=None)
            if owner is None:
                continue
            created = event_moment(owner.envelope)
            decision = schedules.decide_for(mapping, booking, created, owner.type, rt.planner.zone, now)
            if old is None and not decision.sends:
                continue  # a new mapping says nothing about bookings it would not send for
            if old is not None and decision.due == old.due and decision.start == old.start:
                continue
            todo.append((mapping, plan, owner.key, decision))
        changed = len(_apply_plans(rt, work, todo, existing, lambda owner: " (the config changed)"))
    return changed


def _plan_no_longer_holds(rt: Runtime, work: EntityWork, spec: ActionSpec, state: ActionState) -> bool:
    """A retry of a scheduled send checks the booking again: not for a cancelled or moved booking,
    never after the appointment began. Records why and returns True when it does not go out."""
    plan = state.plan or {}
    mapping = rt.config.mapping(spec.mapping)
    if mapping is None or mapping.schedule is None:
        return False
    created = event_moment(work.record.envelope)
    due = float(plan.get("due") or 0)
    decision = schedules.decide_for(
        mapping, work.context.get("booking"), created, work.record.type, rt.planner.zone, due
    )
    if not decision.sends:
        status, reason = (Status.MISSED if decision.status == Status.MISSED else Status.CANCELLED), decision.reason
    elif decision.start != plan.get("start"):
        when = schedules.when_text(decision.start or 0, rt.planner.zone)
        status, reason = Status.CANCELLED, f"the booking was moved (now {when})"
    elif decision.start is not None and due < decision.start <= time.time():
        status, reason = Status.MISSED, "the appointment has begun; a reminder is never sent after that"
    else:
        return False
    state.status = status
    state.detail, state.next_attempt_at = f"not sent: {reason}", None
    rt.store.save_action(work.record.key, spec.id, state, pipe=work.writes)
    metrics.record_plan(work.writes, state.status)
    return True


def fail_event(rt: Runtime, key: str, action_id: str, exc: BaseException | str) -> str:
    """Record that a job could not finish: `action_id` (or the event's own entry) dead with the
    reason, in the dead letters and the metrics, for `replay` once the cause is fixed. Reads only
    that action's state: the record as a whole may be what cannot be read."""
    reason = exc if isinstance(exc, str) else f"could not be processed: {type(exc).__name__}: {exc}"
    log.error("event %s: %s", key, reason, exc_info=exc if isinstance(exc, BaseException) else None)
    raw = rt.redis.hget(record_key(key), "a:" + action_id)
    state = ActionState.from_json(raw) if raw else ActionState(connector="bridge")
    state.status, state.last_error, state.next_attempt_at = Status.DEAD, reason[:2000], None
    state.history.append({"at": time.time(), "attempt": state.attempts, "outcome": Status.DEAD, "error": reason[:2000]})
    pipe = rt.redis.pipeline(transaction=True)
    rt.store.save_action(key, action_id, state, pipe=pipe)
    metrics.record_action(pipe, state.connector, Status.DEAD, None)
    pipe.execute()
    return f"{action_id}={Status.DEAD}"


def job_gave_up(job: Job, connection: Redis, exc_type: type | None, exc: BaseException | None, _tb: object) -> None:
    """RQ's failure callback: when a job fails for the last time (crashed or its worker killed on
    every try), its event gets that as its outcome."""
    if job.retries_left:
        return  # RQ runs it again
    rt = runtime_module.current()
    key, action_id = job.args[0], (job.args[1] if len(job.args) > 1 else EVENT_ACTION)
    if not rt.redis.exists(record_key(key)):
        return  # expired: nothing to show it on
    cause = f"{exc_type.__name__}: {exc}" if exc_type is not None else "unknown"
    fail_event(rt, key, action_id, f"the worker failed on every try ({cause}); fix the cause, then replay it")


class EntityWork:
    """One job's hold on its event's entity, in as few Redis round trips as the guarantees allow.

    Entering is one round trip (a pipeline): merge the event into entity memory (`remember`),
    take the entity's lock, read what memory knows and the event's action states again (now
    under the lock). Only when another worker holds the lock does it wait for it, then read again.

    `writes` is a MULTI that collects the job's records (action states, metrics, retries, sync
    marks). It is sent where they must be durable: before each connector call, together with the
    action's `sending` mark and the lock's renewal (`before_send`), and on leaving, together with
    the lock's release. So an action costs one round trip of its own, and the job two more."""

    def __init__(self, rt: Runtime, record: EventRecord, remember: bool):
        self.rt = rt
        self.record = record
        self.remember = remember
        self.subject = subject_of(record.envelope)  # with memory's code and customer name once read
        self.lock = rt.ordering.entity_lock(self.subject)
        self.writes = rt.redis.pipeline(transaction=True)
        self.context: dict[str, Any] = {}
        self.version = ""

    def __enter__(self) -> EntityWork:
        envelope = self.record.envelope
        pipe = self.rt.redis.pipeline(transaction=False)
        if self.remember:
            self.rt.memory.remember_on(pipe, envelope, self.record.key)
        if self.lock is not None:
            self.lock.acquire_on(pipe)
        try:
            answers = self._read(pipe)
            if self.lock is not None and not answers[-1]:
                self.lock.acquire(wait=5)  # raises EntityBusy
                self._read(self.rt.redis.pipeline(transaction=False))
        except Exception:
            if self.lock is not None:
                self.lock.release()  # only if it is ours: the token says
            raise
        return self

    def _read(self, pipe: Pipeline) -> list[Any]:
        """Queue the reads on `pipe`, send it, keep what was read; returns the answers before the reads."""
        envelope = self.record.envelope
        keys = self.rt.memory.keys(self.subject)
        for key in keys.values():
            self.rt.memory.read_on(pipe, key)
        pipe.hgetall(record_key(self.record.key))
        answers = pipe.execute()
        raw_record, hashes = answers[-1], answers[-1 - len(keys) : -1]
        if raw_record:  # the action states, now under the lock; the body was parsed already
            self.record = load_record(self.record.key, raw_record, envelope)
        views, self.version = self.rt.memory.read(self.subject, dict(zip(keys, hashes, strict=True)))
        self.subject = subject_of(envelope, views)
        self.context = event_context(self.rt.config, envelope, views)
        return answers[: -1 - len(keys)]

    def before_send(self) -> None:
        """Send the collected writes with the lock's renewal; raises EntityBusy when another
        worker took the lock meanwhile (it had expired)."""
        if self.lock is not None:
            self.lock.renew_on(self.writes)
        answers = self.writes.execute()
        if self.lock is not None and not answers[-1]:
            raise EntityBusy(f"{self.lock.entity}: its lock expired and another worker took it")

    def entities(self) -> dict[str, Entity | None]:
        return entities_of({kind: self.context.get(kind) for kind in KINDS})

    def held_during_send(self) -> AbstractContextManager[None]:
        """The entity stays locked for as long as the connector's call takes."""
        return self.lock.held_during() if self.lock is not None else nullcontext()

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release_on(self.writes)
        try:
            if len(self.writes):
                self.writes.execute()
        except Exception:
            if self.lock is not None:  # the writes failed, the lock must not wait 75 s for that
                self.lock.release()
            raise


def entities_of(views: dict[str, EntityView | None]) -> dict[str, Entity | None]:
    """The merged views as the read-only entities connectors receive."""
    return {kind: Entity(v.kind, v.entity_id, v) if v is not None else None for kind, v in views.items()}


def _later(rt: Runtime, job: str, key: str, busy: EntityBusy, *args: str) -> str:
    """Run this job again in a few seconds: the entity is locked by a worker processing another event."""
    enqueue(rt.queue, job, key, *args, delay=BUSY_DELAY)
    log.info("event %s: %s; trying again in %d s", key, busy, BUSY_DELAY)
    return f"busy, again in {BUSY_DELAY} s"


@dataclass
class Failure:
    """What a failed attempt means: dead now, or retried (after at least `retry_after` seconds,
    and for data still missing, no later than `retry_by`)."""

    error: str
    permanent: bool
    retry_after: float | None = None
    retry_by: float | None = None  # epoch seconds: the end of retry.wait_for_missing_data
    unexpected: bool = False  # not one of the errors connectors and templates raise on purpose
    reason_if_dead: str | None = None  # recorded when no try is left (default: "gave up after ...")
    maybe_delivered: bool = False  # sent, but the answer never came: the destination may have it


def judge(exc: Exception, received_at: float, wait_for_missing_data: float, now: float, lost: str = "") -> Failure:
    """The verdict on an attempt that raised `exc` (pure: no I/O); `lost`: what Redis lost, if it did."""
    if isinstance(exc, MissingDataError):
        # Events arrive out of order, and an earlier one can be held up by a crash: the one carrying
        # this data may still come, until the end of `retry.wait_for_missing_data`.
        deadline = received_at + wait_for_missing_data
        if now >= deadline:
            return Failure(f"{exc}{lost}", permanent=True)
        waiting = f"waiting for earlier events: {exc}{lost}"
        return Failure(waiting, permanent=False, retry_by=deadline, reason_if_dead=f"{exc}{lost}")
    if isinstance(exc, RenderError | PermanentError):
        return Failure(str(exc), permanent=True)
    if isinstance(exc, JobTimeoutException):
        # Running it again would take as long again, while the event's other actions wait.
        return Failure(f"took longer than the job's limit of {JOB_TIMEOUT} s; nothing more is tried", permanent=True)
    if isinstance(exc, TransientError):
        return Failure(str(exc), permanent=False, retry_after=exc.retry_after, maybe_delivered=exc.maybe_delivered)
    # A connector bug or an unexpected library error: retried, and logged with its traceback.
    return Failure(f"unexpected error: {type(exc).__name__}: {exc}", permanent=False, unexpected=True)


def attempt(rt: Runtime, work: EntityWork, spec: ActionSpec, state: ActionState) -> None:
    """Run one action once and record the outcome (on `work.writes`); schedule the next try on a
    transient error."""
    record = work.record
    if state.status == Status.SENDING:
        # A previous attempt died between sending and recording: the destination may have it.
        work.writes.incr(POSSIBLE_DUPLICATES_KEY)
        log.warning("possible duplicate: event=%s action=%s was interrupted while sending", record.id, spec.id)
    status_before = state.status
    state.attempts += 1
    state.connector = spec.connector
    started = time.monotonic()
    error: str | None = None
    try:
        _run(rt, work, spec, state)
    except EntityBusy:
        # Nothing was sent: the action is as it was, for the job that runs again.
        state.status, state.attempts = status_before, state.attempts - 1
        rt.store.save_action(record.key, spec.id, state, pipe=work.writes)
        raise
    except Exception as exc:  # noqa: BLE001 - judged below; nothing escapes unrecorded
        # Data missing after Redis lost data: say so rather than blame the platform (one GET, only then).
        lost = redis_health.data_loss_note(rt.redis, record.received_at) if isinstance(exc, MissingDataError) else ""
        failure = judge(exc, record.received_at, rt.config.model.retry.wait_for_missing_data, time.time(), lost)
        if failure.unexpected:
            log.exception("unexpected error in %s for event %s", spec.id, record.id)
        if failure.maybe_delivered:
            # Counted now, whether the retry finds it done, sends it again or the action dies.
            work.writes.incr(POSSIBLE_DUPLICATES_KEY)
            log.warning(
                "possible duplicate: event=%s action=%s was sent but not answered: %s",
                record.id,
                spec.id,
                failure.error,
            )
        error = _after_failure(rt, work, spec, state, failure)
        if state.status == Status.DEAD:
            start_fallback(rt, work, spec.id, state)
    duration = time.monotonic() - started
    if state.status != Status.RETRYING:
        state.next_attempt_at = None
    if error is not None:
        state.last_error = error
    state.history.append(
        {
            "at": time.time(),
            "attempt": state.attempts,
            "outcome": state.status,
            "error": error or "",
            "duration_ms": round(duration * 1000, 1),
            "config": rt.version,  # the config version this attempt ran under (bridge.reload)
            **({"planned_for": state.plan.get("due")} if state.plan else {}),
        }
    )
    rt.store.save_action(record.key, spec.id, state, pipe=work.writes)
    metrics.record_action(work.writes, spec.connector, state.status, duration)
    log_attempt(record, spec, state, duration, error)


def _run(rt: Runtime, work: EntityWork, spec: ActionSpec, state: ActionState) -> None:
    """Render the action and hand it to its connector; sets the state of a success. Actions that
    sync an entity's state to an external object skip an event that brings nothing new since the
    object's last write (`work.version`)."""
    record = work.record
    target = _sync_target(spec, work.subject)
    fields = render_action(spec, work.context)
    state.rendered = fields
    if target and not state.forced and rt.ordering.is_synced(target, work.version):
        state.status = Status.STALE
        state.detail = f"stale: {target} already has everything known up to this event (version {work.version})"
        return
    if rt.dry_run or rt.config.connectors[spec.connector].dry_run:
        state.status, state.detail = Status.DRY_RUN, "would send (dry run): nothing left the machine"
        return
    connector = rt.connector(spec.connector)
    state.status = Status.SENDING
    rt.store.save_action(record.key, spec.id, state, pipe=work.writes)
    work.before_send()
    request = ActionRequest(
        action=spec.action,
        fields=fields,
        event_id=record.id,
        event_type=record.type,
        event_created=str(record.envelope["created"]),
        tenant_id=record.tenant_id,
        action_id=spec.id,
        store=RedisConnectorStore(rt.redis, spec.connector),
        forced=state.forced,
        subject=work.subject,
        **work.entities(),
        timezone=rt.config.model.timezone,
        data=MappingProxyType(record.envelope["data"]),
        opt_outs=deliveries.OptOuts(rt.redis, rt.config.model.timezone),
    )
    with work.held_during_send():
        try:
            result = connector.send(request)
        except SkipSend as skip:  # on purpose (an opted-out customer): not an error, not retried
            state.status, state.detail, state.last_error, state.forced = Status.SKIPPED, skip.reason, "", False
            return
    state.status, state.detail, state.last_error, state.forced = Status.DONE, result.detail, "", False
    if result.message_id:  # its status callbacks find this action by it
        deliveries.index_on(work.writes, result.message_id, record.key, spec.id, rt.store.retention)
        state.delivery = []
    if target:
        rt.ordering.mark_synced_on(work.writes, target, work.version)


def _after_failure(rt: Runtime, work: EntityWork, spec: ActionSpec, state: ActionState, failure: Failure) -> str:
    """Dead-letter the action or schedule its next try (on `work.writes`); the error to record."""
    delay = None if failure.permanent else next_delay(rt, state.attempts, failure.retry_after)
    if delay is not None and failure.retry_by is not None:
        # The last try is at the end of the wait, not a schedule step beyond it.
        delay = min(delay, failure.retry_by - time.time())
    if delay is None or delay < 0:
        state.status = Status.DEAD
        if failure.permanent:
            return failure.error
        return failure.reason_if_dead or f"gave up after {state.attempts} attempts; last error: {failure.error}"
    state.status = Status.RETRYING
    state.next_attempt_at = time.time() + delay
    job_id = retry_job_id(work.record.key, spec.id, state.attempts)
    enqueue(rt.queue, RUN_ACTION, work.record.key, spec.id, job_id=job_id, delay=delay, pipeline=work.writes)
    return failure.error


def _sync_target(spec: ActionSpec, subject: Subject) -> str | None:
    """The external object a state-syncing action writes (per connector and entity), else None."""
    entity = subject.primary
    if not type(spec.fields).syncs_state or entity is None:
        return None
    return f"{spec.connector}:{key_part(subject.tenant)}:{entity[0]}:{key_part(entity[1])}"


def next_delay(rt: Runtime, attempts: int, retry_after: float | None) -> float | None:
    """Seconds until the next try, or None when the schedule is used up."""
    retry = rt.config.model.retry
    if attempts > len(retry.schedule):
        return None
    step = retry.schedule[attempts - 1]
    delay = step + step * retry.jitter * random.random()
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return delay


def retry_job_id(key: str, action_id: str, attempt: int) -> str:
    digest = hashlib.sha1(action_id.encode()).hexdigest()[:12]
    return f"{key}-{digest}-{attempt}"


def log_attempt(record: EventRecord, spec: ActionSpec, state: ActionState, duration: float, error: str | None) -> None:
    level = logging.WARNING if state.status in (Status.DEAD, Status.RETRYING) else logging.INFO
    log.log(
        level,
        "action event=%s type=%s tenant=%s connector=%s action=%s attempt=%d outcome=%s duration_ms=%.1f%s",
        record.id,
        record.type,
        record.tenant_id,
        spec.connector,
        spec.id,
        state.attempts,
        state.status,
        duration * 1000,
        f" error={error!r}" if error else "",
    )


def start_fallback(rt: Runtime, work: EntityWork, action_id: str, state: ActionState) -> None:
    """Queue the `fallback:` of an action that gave up (on `work.writes`, with its verdict), once:
    the fallback's own entry in the ledger says it was started (by a duplicate callback, a replay)."""
    spec = rt.config.action(action_id)
    if spec is None or spec.fallback is None or spec.fallback.id in work.record.actions:
        return
    fallback = ActionState(connector=spec.fallback.connector, plan=state.plan)
    fallback.detail = f"fallback of {action_id}, which ended {state.status}"
    work.record.actions[spec.fallback.id] = fallback
    rt.store.save_action(work.record.key, spec.fallback.id, fallback, pipe=work.writes)
    job_id = retry_job_id(work.record.key, spec.fallback.id, 0)
    # Delayed by 0 (runs within a second): RQ's immediate enqueue on a pipeline wants it still empty.
    enqueue(rt.queue, RUN_ACTION, work.record.key, spec.fallback.id, job_id=job_id, delay=0, pipeline=work.writes)
    log.info("event %s: %s ended %s; its fallback is queued", work.record.id, action_id, state.status)


def process_callback(key: str) -> str:
    """A WhatsApp or Twilio callback (stored by bridge/callbacks.py): opt-outs and opt-ins, then each
    delivery status on the action that sent that message."""
    rt = runtime_module.current()
    callback = deliveries.load_callback(rt.redis, key)
    if callback is None:
        return "expired"
    statuses, messages = deliveries.read(callback)
    outcomes = [heard for message in messages if (heard := _hear(rt, callback, message))]
    waiting, busy = [], False
    for report in statuses:
        sender = deliveries.sender_of(rt.redis, report.message_id)
        if sender is None:
            waiting.append(report.message_id)
            continue
        try:
            outcomes.append(f"{report.message_id}={_record_delivery(rt, *sender, report)}")
        except EntityBusy:
            busy = True
    # A send may not be recorded yet (Meta and Twilio answer within milliseconds): looked for again
    # after 2, 2, 4, 8... s. Running the whole callback again is harmless: nothing is recorded twice.
    age = time.time() - callback.received_at
    if busy or (waiting and age < deliveries.UNKNOWN_WAIT):
        delay = BUSY_DELAY if busy else max(BUSY_DELAY, round(age))
        enqueue(rt.queue, PROCESS_CALLBACK, key, job_id=f"{key}-{uuid.uuid4().hex[:8]}", delay=delay)
        outcomes.append(f"again in {delay} s (busy, or messages not recorded yet: {len(waiting)})")
    elif waiting:
        log.warning("%s callback: status for messages no action sent (or forgotten): %s", callback.source, waiting)
        outcomes += [f"{message_id}=unknown" for message_id in waiting]
    return ", ".join(outcomes) or "nothing to record"


def _hear(rt: Runtime, callback: deliveries.Callback, message: deliveries.Incoming) -> str | None:
    """Opt the customer out (or back in) when their message is one of the connector's words."""
    spec = rt.config.connectors.get(callback.connector)
    settings = spec.settings if spec is not None else None
    out_words, in_words = getattr(settings, "opt_out_words", None), getattr(settings, "opt_in_words", None)
    if out_words is None or in_words is None:
        return None
    heard = deliveries.OptOuts(rt.redis, rt.config.model.timezone).hear(message, out_words, in_words)
    if heard:
        log.warning("%s callback: a customer %s (they wrote %r)", callback.source, heard, message.text[:40])
    return heard


def _record_delivery(rt: Runtime, key: str, action_id: str, report: deliveries.StatusReport) -> str:
    """Record one status on its action, under the entity's lock; a failure after an accepted send is
    that action's outcome (dead-lettered, counted, and its fallback started)."""
    record = rt.store.load(key)
    if record is None or record.data_lost:
        return "its event is gone"
    with EntityWork(rt, record, remember=False) as work:  # raises EntityBusy
        state = work.record.actions.get(action_id)
        if state is None or not deliveries.record_status(state, report):
            return "already recorded"
        if report.status in deliveries.FAILED and state.status == Status.DONE:
            state.status, state.last_error = Status.FAILED_AFTER_SENDING, report.error
            state.history.append(
                {"at": report.at, "attempt": state.attempts, "outcome": state.status, "error": report.error}
            )
            metrics.record_action(work.writes, state.connector, state.status, None)
            log.warning("action event=%s action=%s %s: %s", record.id, action_id, state.status, report.error)
            start_fallback(rt, work, action_id, state)
        rt.store.save_action(key, action_id, state, pipe=work.writes)
    return report.status
