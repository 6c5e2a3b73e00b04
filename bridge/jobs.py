"""What a worker runs: route an event to its actions, run each, retry or dead-letter it on its own."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from datetime import timedelta
from typing import Any

from bridge import runtime as runtime_module
from bridge.queue import CRASH_RETRY, FAILURE_TTL
from bridge.runtime import Runtime
from bridge.state import RedisConnectorStore
from bridge.store import DEAD, DONE, DRY_RUN, PENDING, RETRYING, SKIPPED, ActionState, EventRecord
from connectors.base import ActionRequest, PermanentError, TransientError
from mappings.config import ActionSpec
from mappings.routing import plan, render_action
from mappings.templates import RenderError

log = logging.getLogger("salon_bridge.jobs")


def process_event(key: str) -> str:
    """First attempt of every action an accepted event triggers."""
    rt = runtime_module.current()
    record = rt.store.load(key)
    if record is None:
        log.warning("event %s expired before it was processed", key)
        return "expired"
    context = template_context(record.envelope)
    outcomes = []
    for planned in plan(rt.config, record.envelope, context):
        spec = planned.spec
        state = record.actions.get(spec.id)
        if state is not None and state.status != PENDING:
            continue  # already done, dead, skipped, or scheduled for a retry
        state = state or ActionState(connector=spec.connector)
        if planned.skip_reason:
            state.status, state.detail = SKIPPED, planned.skip_reason
            rt.store.save_action(key, spec.id, state)
        else:
            attempt(rt, record, spec, state, context)
        outcomes.append(f"{spec.id}={state.status}")
    return ", ".join(outcomes) or "no actions"


def run_action(key: str, action_id: str) -> str:
    """A retry (scheduled by `attempt`) or a replay of one action."""
    rt = runtime_module.current()
    record = rt.store.load(key)
    if record is None:
        log.warning("event %s expired before action %s could run again", key, action_id)
        return "expired"
    state = record.actions.get(action_id)
    if state is None or state.status not in (PENDING, RETRYING):
        return f"nothing to do ({state.status if state else 'unknown action'})"
    spec = rt.config.action(action_id)
    if spec is None:
        state.status = DEAD
        state.last_error = f"action {action_id!r} is no longer in the config"
        rt.store.save_action(key, action_id, state)
        return state.status
    attempt(rt, record, spec, state, template_context(record.envelope))
    return state.status


def template_context(envelope: dict[str, Any]) -> dict[str, Any]:
    data = envelope["data"]
    return {
        "event": envelope,
        "data": data,
        "type": envelope["type"],
        "tenant_id": envelope["tenant_id"],
        "booking": data.get("booking"),
        "order": data.get("order"),
        "customer": data.get("customer") or data.get("cliente"),
    }


def attempt(rt: Runtime, record: EventRecord, spec: ActionSpec, state: ActionState, context: dict[str, Any]) -> None:
    """Run one action once and record the outcome; schedule the next try on a transient error."""
    state.attempts += 1
    state.connector = spec.connector
    started = time.monotonic()
    error: str | None = None
    retry_after: float | None = None
    try:
        fields = render_action(spec, context)
        state.rendered = fields
        connector = rt.connector(spec.connector)
        if rt.dry_run or connector.settings.dry_run:
            state.status, state.detail = DRY_RUN, "would send (dry run): nothing left the machine"
        else:
            request = ActionRequest(
                action=spec.action,
                fields=fields,
                event_id=record.id,
                event_type=record.type,
                event_created=str(record.envelope["created"]),
                tenant_id=record.tenant_id,
                action_id=spec.id,
                context=context,
                store=RedisConnectorStore(rt.redis, spec.connector),
            )
            result = connector.send(request)
            state.status, state.detail, state.last_error = DONE, result.detail, ""
    except (RenderError, PermanentError) as exc:
        state.status, error = DEAD, str(exc)
    except TransientError as exc:
        error, retry_after = str(exc), exc.retry_after
    except Exception as exc:  # a connector bug or an unexpected library error: retry, but say so
        log.exception("unexpected error in %s for event %s", spec.id, record.id)
        error = f"unexpected error: {type(exc).__name__}: {exc}"
    duration = time.monotonic() - started

    pipe = rt.redis.pipeline(transaction=True)
    if error is not None and state.status != DEAD:
        delay = next_delay(rt, state.attempts, retry_after)
        if delay is None:
            state.status = DEAD
            error = f"gave up after {state.attempts} attempts; last error: {error}"
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
                pipeline=pipe,
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
    rt.store.save_action(record.key, spec.id, state, pipe=pipe)
    pipe.execute()
    log_attempt(record, spec, state, duration, error)


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
