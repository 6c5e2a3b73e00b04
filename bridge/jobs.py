"""What a worker runs: route an event to its actions, run each, retry or dead-letter it on its own."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from redis.client import Pipeline

from bridge import metrics
from bridge import runtime as runtime_module
from bridge.queue import CRASH_RETRY, FAILURE_TTL
from bridge.runtime import Runtime
from bridge.state import EntityBusy, RedisConnectorStore, primary_entity
from bridge.store import (
    DEAD,
    DONE,
    DRY_RUN,
    PENDING,
    RETRYING,
    SENDING,
    SKIPPED,
    STALE,
    ActionState,
    EventRecord,
    load_record,
    record_key,
)
from connectors.base import ActionRequest, PermanentError, TransientError
from mappings.config import ActionSpec
from mappings.routing import plan, render_action
from mappings.templates import EntityView, MissingDataError, RenderError

log = logging.getLogger("salon_bridge.jobs")

POSSIBLE_DUPLICATES_KEY = "sb:stats:possible_duplicates"
BUSY_DELAY = 2  # seconds before a job whose entity is locked by another worker runs again


def process_event(key: str) -> str:
    """Remember what the event says, then make the first attempt of every action it triggers."""
    rt = runtime_module.current()
    record = rt.store.load(key)
    if record is None:
        log.warning("event %s expired before it was processed", key)
        return "expired"
    outcomes = []
    try:
        with EntityWork(rt, record, remember=True) as work:
            for planned in plan(rt.config, work.record.envelope, work.context):
                spec = planned.spec
                state = work.record.actions.get(spec.id)
                if state is not None and state.status not in (PENDING, SENDING):
                    continue  # the ledger: already done, dead, skipped, or scheduled for a retry
                state = state or ActionState(connector=spec.connector)
                if planned.skip_reason:
                    state.status, state.detail = SKIPPED, planned.skip_reason
                    rt.store.save_action(key, spec.id, state, pipe=work.writes)
                    metrics.record_action(work.writes, spec.connector, SKIPPED, None)
                else:
                    attempt(rt, work, spec, state)
                outcomes.append(f"{spec.id}={state.status}")
    except EntityBusy as busy:
        return _later(rt, process_event, key, busy)
    return ", ".join(outcomes) or "no actions"


def run_action(key: str, action_id: str) -> str:
    """A retry (scheduled by `attempt`) or a replay of one action."""
    rt = runtime_module.current()
    record = rt.store.load(key)
    if record is None:
        log.warning("event %s expired before action %s could run again", key, action_id)
        return "expired"
    try:
        with EntityWork(rt, record, remember=False) as work:
            state = work.record.actions.get(action_id)
            if state is None or state.status not in (PENDING, RETRYING, SENDING):
                return f"nothing to do ({state.status if state else 'unknown action'})"
            spec = rt.config.action(action_id)
            if spec is None:
                state.status = DEAD
                state.last_error = f"action {action_id!r} is no longer in the config"
                rt.store.save_action(key, action_id, state, pipe=work.writes)
                return state.status
            attempt(rt, work, spec, state)
    except EntityBusy as busy:
        return _later(rt, run_action, key, busy, action_id)
    return state.status


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
        self.lock = rt.ordering.entity_lock(record.tenant_id, primary_entity(record.envelope))
        self.writes = rt.redis.pipeline(transaction=True)
        self.context: dict[str, Any] = {}
        self.version = ""

    def __enter__(self) -> EntityWork:
        envelope = self.record.envelope
        pipe = self.rt.redis.pipeline(transaction=False)
        if self.remember:
            self.rt.memory.remember_on(pipe, envelope)
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
        keys = self.rt.memory.keys(envelope)
        for key in keys.values():
            pipe.hgetall(key)
        pipe.hgetall(record_key(self.record.key))
        answers = pipe.execute()
        raw_record, hashes = answers[-1], answers[-1 - len(keys) : -1]
        if raw_record:
            self.record = load_record(self.record.key, raw_record)
        views, self.version = self.rt.memory.read(envelope, dict(zip(keys, hashes, strict=True)))
        self.context = template_context(self.rt.config.model.timezone, envelope, views)
        return answers[: -1 - len(keys)]

    def before_send(self) -> None:
        """Send the collected writes with the lock's renewal; raises EntityBusy when another
        worker took the lock meanwhile (it had expired)."""
        if self.lock is not None:
            self.lock.renew_on(self.writes)
        answers = self.writes.execute()
        if self.lock is not None and not answers[-1]:
            raise EntityBusy(f"{self.lock.entity}: its lock expired and another worker took it")

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release_on(self.writes)
        if len(self.writes):
            self.writes.execute()


def _later(rt: Runtime, job: Callable[..., str], key: str, busy: EntityBusy, *args: str) -> str:
    """Run this job again in a few seconds: the entity is locked by a worker processing another event."""
    rt.queue.enqueue_in(
        timedelta(seconds=BUSY_DELAY),
        job,
        key,
        *args,
        retry=CRASH_RETRY,
        result_ttl=600,
        failure_ttl=FAILURE_TTL,
    )
    log.info("event %s: %s; trying again in %d s", key, busy, BUSY_DELAY)
    return f"busy, again in {BUSY_DELAY} s"


def template_context(timezone: str, envelope: dict[str, Any], views: dict[str, EntityView | None]) -> dict[str, Any]:
    """What templates (and connectors, as `request.context`) see."""
    return {
        "event": envelope,
        "data": envelope["data"],
        "type": envelope["type"],
        "tenant_id": envelope["tenant_id"],
        "timezone": timezone,
        **views,
    }


def attempt(rt: Runtime, work: EntityWork, spec: ActionSpec, state: ActionState) -> None:
    """Run one action once and record the outcome (on `work.writes`); schedule the next try on a
    transient error. Actions that sync an entity's state to an external object skip an event that
    brings nothing new since the object's last write (`work.version`)."""
    record = work.record
    if state.status == SENDING:
        # A previous attempt died between sending and recording: the destination may have it.
        work.writes.incr(POSSIBLE_DUPLICATES_KEY)
        log.warning("possible duplicate: event=%s action=%s was interrupted while sending", record.id, spec.id)
    status_before = state.status
    state.attempts += 1
    state.connector = spec.connector
    started = time.monotonic()
    error: str | None = None
    missing_data = ""  # what a template needed from an event not received yet
    retry_after: float | None = None
    target = _sync_target(spec, record)
    try:
        fields = render_action(spec, work.context)
        state.rendered = fields
        if target and not state.forced and rt.ordering.is_synced(target, work.version):
            state.status = STALE
            state.detail = f"stale: {target} already has everything known up to this event (version {work.version})"
        elif rt.dry_run or rt.config.connectors[spec.connector].dry_run:
            state.status, state.detail = DRY_RUN, "would send (dry run): nothing left the machine"
        else:
            connector = rt.connector(spec.connector)
            state.status = SENDING
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
                context=work.context,
                store=RedisConnectorStore(rt.redis, spec.connector),
                forced=state.forced,
            )
            result = connector.send(request)
            state.status, state.detail, state.last_error, state.forced = DONE, result.detail, "", False
            if target:
                rt.ordering.mark_synced_on(work.writes, target, work.version)
    except EntityBusy:
        # Nothing was sent: the action is as it was, for the job that runs again.
        state.status, state.attempts = status_before, state.attempts - 1
        rt.store.save_action(record.key, spec.id, state, pipe=work.writes)
        raise
    except MissingDataError as exc:
        # Events arrive out of order, and an earlier one can be held up by a crash: the one carrying
        # this data may still come. Retried on the schedule for `retry.wait_for_missing_data`.
        missing_data = str(exc)
        if time.time() - record.received_at < rt.config.model.retry.wait_for_missing_data:
            error = f"waiting for earlier events: {exc}"
        else:
            state.status, error = DEAD, missing_data
    except (RenderError, PermanentError) as exc:
        state.status, error = DEAD, str(exc)
    except TransientError as exc:
        error, retry_after = str(exc), exc.retry_after
        if exc.maybe_delivered:
            # Sent, but the answer never came: the destination may have it, and a retry sends it again.
            work.writes.incr(POSSIBLE_DUPLICATES_KEY)
            log.warning("possible duplicate: event=%s action=%s was sent but not answered: %s", record.id, spec.id, exc)
    except Exception as exc:  # a connector bug or an unexpected library error: retry, but say so
        log.exception("unexpected error in %s for event %s", spec.id, record.id)
        error = f"unexpected error: {type(exc).__name__}: {exc}"
    duration = time.monotonic() - started

    if error is not None and state.status != DEAD:
        delay = next_delay(rt, state.attempts, retry_after)
        if delay is None:
            state.status = DEAD
            error = missing_data or f"gave up after {state.attempts} attempts; last error: {error}"
        else:
            state.status = RETRYING
            state.next_attempt_at = time.time() + delay
            rt.queue.enqueue_in(
                timedelta(seconds=delay),
                run_action,
                record.key,
                spec.id,
                job_id=retry_job_id(record.key, spec.id, state.attempts),
                retry=CRASH_RETRY,
                result_ttl=600,
                failure_ttl=FAILURE_TTL,
                pipeline=work.writes,
            )
    if state.status != RETRYING:
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
        }
    )
    rt.store.save_action(record.key, spec.id, state, pipe=work.writes)
    metrics.record_action(work.writes, spec.connector, state.status, duration)
    log_attempt(record, spec, state, duration, error)


def _sync_target(spec: ActionSpec, record: EventRecord) -> str | None:
    """The external object a state-syncing action writes (per connector and entity), else None."""
    entity = primary_entity(record.envelope)
    if not type(spec.fields).syncs_state or entity is None:
        return None
    return f"{spec.connector}:{record.tenant_id}:{entity[0]}:{entity[1]}"


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
    level = logging.WARNING if state.status in (DEAD, RETRYING) else logging.INFO
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
