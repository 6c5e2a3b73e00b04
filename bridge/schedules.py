"""Scheduled sends: one plan per (scheduled mapping, booking), kept in Redis, fired by the workers.

Keys (under `sb:`):
  sb:plans        sorted set: plan id -> when a worker should look at it (its due time; pushed
                  a few minutes later while its job is on the queue, so a lost job is looked at again)
  sb:plan-data    hash: plan id -> "<event key>|<due>|<booking start>|<note>" (epoch seconds)
  sb:plans:past   sorted set: "<event key> <action id>" of plans that ended (sent, cancelled,
                  missed) by their planned time, for `scheduled`; trimmed with the event log
  sb:fired:<plan id>:<start>   the event key whose plan went out for that booking start
  sb:plans:config the fingerprint of the scheduled mappings the plans were made with

A daily mapping (the morning digest) has one plan, `<mapping>:~daily`, in the same sets, woken the
same way; bridge.digest fires it and moves it to the next day.

A plan id is `<mapping>:<tenant>:<b|o|c>:<id>` of the event's entity, its booking (parts escaped
by `key_part`). Every change to a plan is made by a worker holding the booking's entity lock, so
the plan data is the truth and the
sorted set only wakes it up. The plan's actions are ordinary actions of the event that last
(re)planned it: their states on that event's record say `scheduled`, then what happened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any
from zoneinfo import ZoneInfo

from redis import Redis
from redis.client import Pipeline

from bridge.queue import enqueue, work_queue
from bridge.store import PREFIX, ActionState, EventStore, Status, keep_until, key_part, record_key, text
from mappings.config import BridgeConfig, MappingSpec
from mappings.routing import DIGEST_TYPE
from mappings.schedule import Decision, decide

log = logging.getLogger("salon_bridge.schedules")

PLANS = PREFIX + "plans"
PLAN_DATA = PREFIX + "plan-data"
PAST = PREFIX + "plans:past"
FIRED_PREFIX = PREFIX + "fired:"
CONFIG_KEY = PREFIX + "plans:config"
REPLAN_LOCK = PREFIX + "plans:replanning"
ENDING_EVENTS = frozenset({"booking.cancelled", "booking.no_show", "booking.completed"})
FIRE_PLAN = "bridge.jobs.fire_plan"
FIRE_DIGEST = "bridge.digest.fire_digest"  # a daily mapping's plan (id ends with DIGEST_SUFFIX)
DIGEST_SUFFIX = ":~daily"
SNOOZE = 300  # seconds before a plan whose job was queued is looked at again (the job was lost)
WAKE_BATCH = 500  # plans queued per scheduler tick at most
# The stored event a plan belongs to is kept until the send is over (retries included).
KEEP_AFTER_SEND = 2 * 86400


def plan_id(mapping: str, tenant: str, kind: str, entity_id: str) -> str:
    """`<mapping>:<tenant>:<b|o|c>:<id>`: kept twice per pending plan, so the kind is one letter."""
    return f"{mapping}:{key_part(tenant)}:{kind[0]}:{key_part(entity_id)}"


def digest_plan_id(mapping: str) -> str:
    """The one plan of a daily mapping (bridge/digest.py): `<mapping>:~daily`."""
    return f"{mapping}{DIGEST_SUFFIX}"


def is_digest_plan(plan: str) -> bool:
    return plan.endswith(DIGEST_SUFFIX)


def mapping_of(plan: str) -> str:
    return plan.split(":", 1)[0]


@dataclass
class Plan:
    id: str
    event: str  # key of the event whose actions it runs
    due: float
    start: float | None  # the booking start it is for (None for event.created anchors)
    note: str = ""  # e.g. how quiet hours moved it

    def to_json(self) -> str:
        """Compact (`<event>|<due>|<start>|<note>`, whole seconds): it is kept for every pending plan."""
        start = "" if self.start is None else f"{self.start:.0f}"
        return f"{self.event}|{self.due:.0f}|{start}|{self.note}"

    @classmethod
    def from_json(cls, plan: str, raw: bytes | str) -> Plan:
        event, due, start, note = text(raw).split("|", 3)
        return cls(plan, event, float(due), float(start) if start else None, note)

    def as_state(self) -> dict[str, Any]:
        """What an action's state keeps of its plan (ActionState.plan)."""
        return {"id": self.id, "due": self.due, "start": self.start, "note": self.note}

    def fired_key(self) -> str:
        return f"{FIRED_PREFIX}{self.id}:{int(self.start if self.start is not None else self.due)}"


def read_plans(redis: Redis, plans: list[str]) -> dict[str, Plan]:
    if not plans:
        return {}
    raw = redis.hmget(PLAN_DATA, plans)
    return {p: Plan.from_json(p, r) for p, r in zip(plans, raw, strict=True) if r is not None}


def scheduled_mappings(config: BridgeConfig, tenant: str) -> list[MappingSpec]:
    return [m for m in config.mappings if m.schedule is not None and (m.tenants is None or tenant in m.tenants)]


def when_text(moment: float, zone: ZoneInfo) -> str:
    """A moment as the salon reads it: `03/12 10:30 CET`."""
    return datetime.fromtimestamp(moment, zone).strftime("%d/%m/%Y %H:%M %Z")


@dataclass
class Planner:
    """Makes, moves and drops plans, on a job's `writes` pipeline (sent with the job's other records)."""

    redis: Redis
    store: EventStore
    zone: ZoneInfo

    def apply(
        self,
        writes: Pipeline,
        mapping: MappingSpec,
        plan: str,
        owner: str,
        decision: Decision,
        existing: Plan | None,
        fired_by: str | None,
        why: str = "",
    ) -> str:
        """Make the plan say `decision` for the event `owner`; returns a short outcome."""
        now = time.time()
        if decision.sends and fired_by is not None:
            decision = Decision(
                None,
                decision.start,
                Status.SKIPPED,
                f"already sent for this appointment time (by event {fired_by.removeprefix('e-')})",
            )
        if not decision.sends:
            if existing is not None:
                self.drop(writes, mapping, existing, decision.status, decision.reason + why)
                if existing.event == owner:
                    return decision.status
            self._mark(writes, mapping, owner, decision.status, decision.reason + why, None, now)
            return decision.status
        assert decision.due is not None
        new = Plan(plan, owner, decision.due, decision.start, decision.note)
        if existing is not None and existing.event != owner:
            detail = f"re-planned by event {owner.removeprefix('e-')} for {when_text(new.due, self.zone)}"
            self._mark(writes, mapping, existing.event, Status.CANCELLED, detail, existing, now)
        writes.hset(PLAN_DATA, plan, new.to_json())
        writes.zadd(PLANS, {plan: new.due})
        # The event must outlive the send (the record's retention counts from when it came).
        keep_until(writes, record_key(owner), new.due + KEEP_AFTER_SEND + self.store.retention)
        detail = (
            f"scheduled for {when_text(new.due, self.zone)} ({mapping.schedule.source if mapping.schedule else ''})"
        )
        if new.note:
            detail += f"; {new.note}"
        self._mark(writes, mapping, owner, Status.SCHEDULED, detail, new, now)
        return Status.SCHEDULED

    def drop(self, writes: Pipeline, mapping: MappingSpec | None, plan: Plan, status: str, reason: str) -> None:
        """Remove a plan that will not fire, saying why on its event's actions (those of `mapping`;
        without it, the caller does)."""
        writes.hdel(PLAN_DATA, plan.id)
        writes.zrem(PLANS, plan.id)
        if mapping is not None:
            self._mark(writes, mapping, plan.event, status, reason, plan, time.time())

    def forget(self, writes: Pipeline, plan: Plan, action_ids: list[str]) -> None:
        """The plan fired: it leaves the pending set and joins the past ones."""
        writes.hdel(PLAN_DATA, plan.id)
        writes.zrem(PLANS, plan.id)
        writes.zadd(PAST, {f"{plan.event} {a}": plan.due for a in action_ids})

    def _mark(
        self,
        writes: Pipeline,
        mapping: MappingSpec,
        owner: str,
        status: str,
        detail: str,
        plan: Plan | None,
        now: float,
    ) -> None:
        """Each of the mapping's actions on `owner`'s record takes the plan's status."""
        for spec in mapping.actions:
            state = ActionState(connector=spec.connector, status=status, detail=detail)
            if plan is not None:
                state.plan = plan.as_state()
                state.next_attempt_at = plan.due if status == Status.SCHEDULED else None
            state.history.append({"at": now, "attempt": 0, "outcome": status, "error": "", "detail": detail})
            self.store.save_action(owner, spec.id, state, pipe=writes)
            if status != Status.SCHEDULED:
                writes.zadd(PAST, {f"{owner} {spec.id}": plan.due if plan is not None else now})


def decide_for(
    mapping: MappingSpec, booking: Any, event_created: datetime, event_type: str, zone: ZoneInfo, now: float
) -> Decision:
    """The plan for the newest `booking`, made by an event of `event_type`."""
    assert mapping.schedule is not None
    # A mapping on the very event that ended the booking (booking.completed) means it.
    ends = event_type in ENDING_EVENTS and any(fnmatchcase(event_type, pattern) for pattern in mapping.patterns)
    return decide(mapping.schedule, booking, event_created, zone, now, may_start_ended=ends)


# ---- waking due plans (in the worker's scheduler) -------------------------------------------------

# Due plans are pushed SNOOZE seconds later and returned, atomically: the caller queues their jobs.
_WAKE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[2]), due[i])
end
return due
"""


def wake_due_plans(redis: Redis, now: float | None = None) -> int:
    """Queue a fire job for each plan whose time has come; the number queued."""
    now = time.time() if now is None else now
    answer = redis.eval(_WAKE, 1, PLANS, repr(now), SNOOZE, WAKE_BATCH)
    if not answer:
        return 0
    queue = work_queue(redis)
    pipe = redis.pipeline(transaction=True)
    pairs = list(zip(answer[::2], answer[1::2], strict=True))
    for member, score in pairs:
        plan = text(member)
        digest = hashlib.sha1(plan.encode()).hexdigest()[:20]
        job = FIRE_DIGEST if is_digest_plan(plan) else FIRE_PLAN
        enqueue(queue, job, plan, job_id=f"plan-{digest}-{int(float(score) * 1000)}", pipeline=pipe)
    pipe.execute()
    return len(pairs)


# ---- the config the plans were made with ----------------------------------------------------------


def fingerprint(config: BridgeConfig) -> str:
    """Changes whenever a config change can change a plan: scheduled mappings and the zone."""
    parts = [
        (m.name, m.patterns, m.tenants, repr(m.schedule), [a.id for a in m.actions])
        for m in config.mappings
        if m.schedule is not None
    ]
    return hashlib.sha256(json.dumps([config.model.timezone, parts], default=str).encode()).hexdigest()[:16]


def pending(redis: Redis) -> list[Plan]:
    """Every pending plan, soonest first."""
    plans = [text(p) for p in redis.zrange(PLANS, 0, -1)]
    found = read_plans(redis, plans)
    return sorted(found.values(), key=lambda p: p.due)


# ---- what is planned and what happened, for people ------------------------------------------------

# What `scheduled --status` calls each action status of a scheduled send.
SHOWN_STATUS = {
    Status.SCHEDULED: "pending",
    Status.DONE: "sent",
    Status.DRY_RUN: "sent",
    Status.RETRYING: "pending",
    Status.PENDING: "pending",
    Status.SENDING: "pending",
}


@dataclass
class ScheduledSend:
    """One action of a plan, pending or past, with what `scheduled` and /admin show of it."""

    due: float
    event: str  # key of the event the send belongs to
    action: str
    status: str  # pending | sent | cancelled | missed | skipped | dead
    detail: str
    code: str  # the booking's code (or id); for a daily digest, whose and which day
    customer: str
    sent_at: float | None = None
    kind: str = "booking"  # or "digest" (bridge.digest)

    @property
    def mapping(self) -> str:
        return self.action.split("/", 1)[0]


def listing(
    redis: Redis,
    store: EventStore,
    booking: str | None = None,
    within: float | None = None,
    status: str | None = None,
    now: float | None = None,
) -> list[ScheduledSend]:
    """Upcoming sends (within `within` seconds ahead) and past ones (as far back), soonest first."""
    from bridge.state import subject_of  # bridge.state imports the agenda, which needs nothing of this

    now = time.time() if now is None else now
    low, high = ("-inf", "+inf") if within is None else (now - within, now + within)
    members = [text(m).split(" ", 1) for m in redis.zrangebyscore(PAST, low, high)]
    plans = [p for p in pending(redis) if within is None or p.due <= now + within]
    keys = list(dict.fromkeys([p.event for p in plans] + [k for k, _ in members]))
    records = {r.key: r for r in store.load_many(keys)}
    pairs = [(key, action) for key, action in members if key in records]
    for plan in plans:
        record = records.get(plan.event)
        for action, planned in (record.actions if record else {}).items():
            if planned.plan and planned.plan.get("id") == plan.id:
                pairs.append((plan.event, action))
    sends = []
    for key, action in dict.fromkeys(pairs):
        record = records[key]
        state = record.actions.get(action)
        if state is None or not state.plan:
            continue
        subject = subject_of(record.envelope)
        shown = SHOWN_STATUS.get(Status(state.status), state.status) if state.status in set(Status) else state.status
        sent_at = next((h["at"] for h in reversed(state.history) if h.get("planned_for")), None)
        code = subject.code or (subject.primary[1] if subject.primary else "")
        digest = record.type == DIGEST_TYPE
        if digest:
            data = record.envelope.get("data") or {}
            whose = f"professional {data['professional']}" if data.get("professional") is not None else "salon"
            code = f"{data.get('date', '')} {whose}"
        sends.append(
            ScheduledSend(
                float(state.plan["due"] or 0),
                key,
                action,
                shown,
                state.last_error or state.detail,
                code,
                subject.customer_name,
                sent_at,
                "digest" if digest else "booking",
            )
        )
    if booking:
        sends = [s for s in sends if booking in (s.code, _booking_id(records[s.event]))]
    if status:
        sends = [s for s in sends if s.status == status]
    return sorted(sends, key=lambda s: (s.due, s.action))


def _booking_id(record: Any) -> str:
    booking = (record.envelope.get("data") or {}).get("booking") or {}
    return str(booking.get("id", "")) if isinstance(booking, dict) else ""


def trim(redis: Redis, retention: float, now: float | None = None) -> None:
    """Forget past sends older than the event log's retention (their events are gone too)."""
    now = time.time() if now is None else now
    redis.zremrangebyscore(PAST, "-inf", now - retention)
