"""`process_event` in 4 Redis round trips instead of 10-12: a prototype of the proposed change.

Used by bench/prototypes/lean_worker.py (SB_LEAN=trips), which replaces `bridge.jobs.process_event`
with `process_event_lean` in the worker process. Based on bridge/jobs.py and bridge/state.py as
they are on 2026-11-28 (entity lock renewed per action, memory versions); same behaviour, fewer
round trips:

  1. HGETALL of the event (as now).
  2. ONE pipeline: the memory merges (the same script), the entity lock (SET NX PX with a token),
     the version fields (HMGET), the views (HGETALL of the booking/order and of the customer when
     the event names it) and the event's action states again (now under the lock). Only when the
     lock is taken does it fall back to the product's path (which waits for the lock).
  3. Per action: the `sending` mark and the lock renewal in one MULTI (the renewal was its own
     round trip before each action).
  4. Per action: the outcome, the metrics and (after the last action) the lock release in one
     MULTI (the release was its own round trip).

Scripts go on pipelines as plain EVALSHA of a script loaded once per process: a redis-py Script
called on a pipeline makes every `execute()` send SCRIPT EXISTS first, one more round trip (the
product's memory merge pays it today). After a Redis restart (scripts gone) the EVALSHA fails
with NOSCRIPT: the product version must then load the scripts and run the pipeline again.

Not covered: an event whose customer is known only through memory (not named in the event)
costs one more round trip for that customer's view and version, as now.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

from bridge import jobs, metrics
from bridge import runtime as runtime_module
from bridge.jobs import (
    MISSING_DATA_RETRIES,
    POSSIBLE_DUPLICATES_KEY,
    _sync_target,
    log,
    log_attempt,
    next_delay,
    retry_job_id,
    run_action,
    template_context,
)
from bridge.queue import CRASH_RETRY, FAILURE_TTL
from bridge.runtime import Runtime
from bridge.state import (
    _MERGE,
    LOCK_TIMEOUT,
    RedisConnectorStore,
    _flatten,
    _unflatten,
    entity_parts,
    event_time,
    primary_entity,
)
from bridge.store import (
    DEAD,
    DONE,
    DRY_RUN,
    PENDING,
    PREFIX,
    RETRYING,
    SENDING,
    SKIPPED,
    STALE,
    ActionState,
    EventRecord,
    _record,
    record_key,
    text,
)
from connectors.base import ActionRequest, PermanentError, TransientError
from mappings.config import ActionSpec
from mappings.routing import plan, render_action
from mappings.templates import EntityView, MissingDataError, RenderError

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

product_process_event = jobs.process_event


_loaded: dict[str, str] = {}


def sha_of(rt: Runtime, script: str) -> str:
    """The script's SHA, loaded into Redis once per process."""
    if script not in _loaded:
        _loaded[script] = rt.redis.script_load(script)
    return _loaded[script]


class HeldLock:
    """The entity lock taken in the prepare pipeline; renewed and released on other pipelines."""

    def __init__(self, rt: Runtime, name: str, token: str):
        self.name, self.token = name, token
        self.renew_sha = sha_of(rt, _RENEW)
        self.release_sha = sha_of(rt, _RELEASE)
        self.released = False

    def renew_on(self, pipe: Any) -> None:
        pipe.evalsha(self.renew_sha, 1, self.name, self.token, int(LOCK_TIMEOUT * 1000))

    def release_on(self, pipe: Any) -> None:
        pipe.evalsha(self.release_sha, 1, self.name, self.token)
        self.released = True


def _fields(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
    if not raw:
        return None
    return _unflatten({k.decode(): json.loads(v) for k, v in raw.items() if not k.startswith(b"~")})


def process_event_lean(key: str) -> str:
    """As `bridge.jobs.process_event`, with the round trips batched (see the module docstring)."""
    rt = runtime_module.current()
    record = rt.store.load(key)
    if record is None:
        log.warning("event %s expired before it was processed", key)
        return "expired"
    envelope = record.envelope
    tenant = envelope["tenant_id"]
    entity = primary_entity(envelope)
    memory = rt.memory
    ids: dict[str, str] = {}
    own = customer_id = None
    merge_sha = sha_of(rt, _MERGE)
    pipe = rt.redis.pipeline(transaction=False)
    created = repr(event_time(envelope))
    for kind, obj in entity_parts(envelope):
        ids.setdefault(kind, str(obj["id"]))
        args: list[str] = [created, str(memory.ttl)]
        for name, value in _flatten(obj):
            args += [name, json.dumps(value, ensure_ascii=False)]
        pipe.evalsha(merge_sha, 1, memory.key(tenant, kind, str(obj["id"])), *args)
    token = uuid.uuid4().hex
    lock_name = f"{PREFIX}lock:{tenant}:{entity[0]}:{entity[1]}" if entity else None
    if lock_name:
        pipe.set(lock_name, token, nx=True, px=int(LOCK_TIMEOUT * 1000))
        pipe.hmget(memory.key(tenant, *entity), "~~version", "cliente.id")
    wanted = [k for k in ("booking", "order", "customer") if k in ids]
    for kind in wanted:
        pipe.hgetall(memory.key(tenant, kind, ids[kind]))
    pipe.hgetall(record_key(key))
    answers = pipe.execute()[len(entity_parts(envelope)) :]
    if lock_name:
        got_lock, (own, customer_id) = answers[0], answers[1]
        answers = answers[2:]
        if not got_lock:
            return product_process_event(key)  # busy: the product's path waits for the lock
    raws = dict(zip(wanted, answers[: len(wanted)], strict=True))
    record = _record(key, answers[len(wanted)]) if answers[len(wanted)] else record
    lock = HeldLock(rt, lock_name, token) if lock_name else None

    # Views, as EntityMemory.views builds them.
    merged: dict[str, dict[str, Any] | None] = {
        k: _fields(raws[k]) if k in raws else None for k in ("booking", "order")
    }
    if "customer" not in ids:
        for kind in ("booking", "order"):
            cliente = (merged[kind] or {}).get("cliente")
            if isinstance(cliente, dict) and "id" in cliente:
                ids["customer"] = str(cliente["id"])
                break
    if "customer" in ids and "customer" not in raws:
        raws["customer"] = rt.redis.hgetall(memory.key(tenant, "customer", ids["customer"]))  # extra round trip
    customer = _fields(raws["customer"]) if "customer" in raws else None
    for kind in ("booking", "order"):
        view = merged[kind]
        cliente = (view or {}).get("cliente")
        if view is not None and customer is not None and isinstance(cliente, dict):
            if str(cliente.get("id")) == ids.get("customer"):
                view["cliente"] = {**cliente, **customer}
    merged["customer"] = customer
    views = {k: EntityView(v, k, ids[k]) if v is not None else None for k, v in merged.items()}

    # Version, as EntityMemory.version computes it.
    version = ""
    if entity is not None:
        versions = [text(own or b"0")]
        if customer_id is not None and entity[0] != "customer":
            cid = text(json.loads(customer_id))
            raw_customer = raws.get("customer") if ids.get("customer") == cid else None
            if raw_customer is None:
                raw_customer = {b"~~version": rt.redis.hget(memory.key(tenant, "customer", cid), "~~version") or b"0"}
            versions.append(text(raw_customer.get(b"~~version") or b"0"))
        version = ".".join(versions)

    outcomes = []
    try:
        context = template_context(rt.config.model.timezone, envelope, views)
        planned_all = plan(rt.config, envelope, context)
        for index, planned in enumerate(planned_all):
            spec = planned.spec
            state = record.actions.get(spec.id)
            if state is not None and state.status not in (PENDING, SENDING):
                continue
            state = state or ActionState(connector=spec.connector)
            last = index == len(planned_all) - 1
            if planned.skip_reason:
                state.status, state.detail = SKIPPED, planned.skip_reason
                pipe = rt.redis.pipeline(transaction=True)
                rt.store.save_action(key, spec.id, state, pipe=pipe)
                metrics.record_action(pipe, spec.connector, SKIPPED, None)
                if lock is not None and last:
                    lock.release_on(pipe)
                pipe.execute()
            else:
                attempt_lean(rt, record, spec, state, context, version, lock, last)
            outcomes.append(f"{spec.id}={state.status}")
    finally:
        if lock is not None and not lock.released:
            pipe = rt.redis.pipeline(transaction=False)
            lock.release_on(pipe)
            pipe.execute()
    return ", ".join(outcomes) or "no actions"


def attempt_lean(
    rt: Runtime,
    record: EventRecord,
    spec: ActionSpec,
    state: ActionState,
    context: dict[str, Any],
    version: str,
    lock: HeldLock | None,
    last: bool,
) -> None:
    """`bridge.jobs.attempt`, with the lock renewal in the `sending` MULTI and the release in the last outcome's."""
    if state.status == SENDING:
        rt.redis.incr(POSSIBLE_DUPLICATES_KEY)
        log.warning("possible duplicate: event=%s action=%s was interrupted while sending", record.id, spec.id)
    state.attempts += 1
    state.connector = spec.connector
    started = time.monotonic()
    error: str | None = None
    retry_after: float | None = None
    target = _sync_target(spec, record)
    try:
        fields = render_action(spec, context)
        state.rendered = fields
        if target and not state.forced and rt.ordering.is_synced(target, version):
            state.status = STALE
            state.detail = f"stale: {target} already has everything known up to this event (version {version})"
        elif rt.dry_run or rt.config.connectors[spec.connector].dry_run:
            state.status, state.detail = DRY_RUN, "would send (dry run): nothing left the machine"
        else:
            connector = rt.connector(spec.connector)
            state.status = SENDING
            pipe = rt.redis.pipeline(transaction=True)
            if lock is not None:
                lock.renew_on(pipe)
            rt.store.save_action(record.key, spec.id, state, pipe=pipe)
            pipe.execute()
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
                forced=state.forced,
            )
            result = connector.send(request)
            state.status, state.detail, state.last_error, state.forced = DONE, result.detail, "", False
            if target:
                rt.ordering.mark_synced(target, version)
    except MissingDataError as exc:
        if state.attempts <= MISSING_DATA_RETRIES:
            error = f"waiting for earlier events: {exc}"
        else:
            state.status, error = DEAD, str(exc)
    except (RenderError, PermanentError) as exc:
        state.status, error = DEAD, str(exc)
    except TransientError as exc:
        error, retry_after = str(exc), exc.retry_after
    except Exception as exc:
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
    metrics.record_action(pipe, spec.connector, state.status, duration)
    if lock is not None and last:
        lock.release_on(pipe)
    pipe.execute()
    log_attempt(record, spec, state, duration, error)


def install() -> None:
    """Make RQ run the lean version: it resolves `bridge.jobs.process_event` by name at each job."""
    jobs.process_event = process_event_lean  # type: ignore[assignment]
