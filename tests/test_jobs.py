"""The worker side: routing every sample, retries, dead letters, independence of actions, crashes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import SimpleWorker
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

from bridge.jobs import LOST_IN_REDIS, POSSIBLE_DUPLICATES_KEY, judge
from bridge.operations import replay
from bridge.queue import PROCESS_EVENT, enqueue
from bridge.store import DEAD_INDEX, EVENT_ACTION, EVENTS_INDEX, ActionState, Status, event_key, record_key
from bridge.worker import BridgeWorker
from tests.conftest import http_config
from tests.fakes.http_server import CapturingServer, Reply
from tests.harness import EVENT_TYPES, Bridge, encode, sample
from tests.test_state import SHIPPED_NOTICE

TWO_ACTIONS = """
  - name: fan-out
    on: ["*"]
    actions:
      - connector: crm
        name: first
        body: {n: 1, id: "{{ event.id }}"}
      - connector: crm
        name: second
        body: {n: 2, id: "{{ event.id }}"}
"""


def test_all_13_samples_are_routed_and_delivered(bridge: Bridge, destination) -> None:  # noqa: ANN001
    assert len(EVENT_TYPES) == 13
    events = [sample(t) for t in EVENT_TYPES]
    for event in events:
        assert bridge.post(event).status_code == 202
    bridge.drain()
    delivered = sorted((r.json()["type"], r.json()["id"]) for r in destination.requests)
    assert delivered == sorted((e["type"], e["id"]) for e in events)
    for event in events:
        state = bridge.record(event["id"]).actions["all-to-crm/notify"]
        assert (state.status, state.attempts) == (Status.DONE, 1)


def test_request_carries_rendered_body_and_idempotency_key(bridge: Bridge, destination) -> None:  # noqa: ANN001
    event = sample("booking.created")
    bridge.post(event)
    bridge.drain()
    [request] = destination.requests
    assert request.method == "POST" and request.path == "/hooks"
    assert request.json() == {"id": event["id"], "type": "booking.created", "tenant": "uuid-tenant"}
    assert request.headers["Idempotency-Key"] == f"{event['id']}/all-to-crm/notify"


def test_transient_failure_is_retried_then_succeeds(bridge: Bridge, destination) -> None:  # noqa: ANN001
    destination.respond_with(503, "maintenance")
    destination.respond_with(429, "slow down")
    event = sample("payment.failed")
    bridge.post(event)
    bridge.drain()
    assert len(destination.requests) == 3
    state = bridge.record(event["id"]).actions["all-to-crm/notify"]
    assert (state.status, state.attempts, state.last_error) == (Status.DONE, 3, "")
    assert [h["outcome"] for h in state.history] == [Status.RETRYING, Status.RETRYING, Status.DONE]
    assert "HTTP 503: maintenance" in state.history[0]["error"]


def test_a_late_answer_is_counted_as_a_possible_duplicate(make_bridge, destination, caplog) -> None:  # noqa: ANN001
    bridge = make_bridge(http_config(destination.url).replace("timeout: 2", "timeout: 0.3"))
    destination.respond_with(503, "maintenance")  # an answer: nothing was done, nothing to count
    destination.respond_with(200, delay=1.0)  # received and done, answered after the client's timeout
    event = sample("payment.failed")
    bridge.post(event)
    with caplog.at_level(logging.WARNING, logger="salon_bridge.jobs"):
        bridge.drain()
    # The receiver had it twice, with one Idempotency-Key to recognise the repeat by.
    assert len(destination.requests) == 3
    assert {r.headers["Idempotency-Key"] for r in destination.requests} == {f"{event['id']}/all-to-crm/notify"}
    state = bridge.record(event["id"]).actions["all-to-crm/notify"]
    assert (state.status, state.attempts) == (Status.DONE, 3)
    assert bridge.redis.get(POSSIBLE_DUPLICATES_KEY) == b"1"
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("possible duplicate")]
    assert f"event={event['id']} action=all-to-crm/notify was sent but not answered" in line


def test_late_answers_until_the_action_is_dead_are_all_counted(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(http_config(destination.url).replace("timeout: 2", "timeout: 0.3"))
    destination.default = Reply(200, delay=1.0)
    event = sample("payment.failed")
    bridge.post(event)
    bridge.drain()
    state = bridge.record(event["id"]).actions["all-to-crm/notify"]
    assert (state.status, state.attempts) == (Status.DEAD, 4)
    assert len(destination.requests) == 4
    assert bridge.redis.get(POSSIBLE_DUPLICATES_KEY) == b"4"


def test_retries_exhausted_go_to_the_dead_letters(bridge: Bridge, destination) -> None:  # noqa: ANN001
    destination.default.status = 500
    event = sample("booking.created")
    bridge.post(event)
    bridge.drain()
    assert len(destination.requests) == 4  # first try + the 3 steps of retry.schedule
    state = bridge.record(event["id"]).actions["all-to-crm/notify"]
    assert state.status == Status.DEAD
    assert state.last_error.startswith("gave up after 4 attempts; last error: HTTP 500")
    [(record, action_id)] = bridge.runtime.store.dead_letters()
    assert (record.id, action_id) == (event["id"], "all-to-crm/notify")


def test_permanent_error_goes_straight_to_the_dead_letters(bridge: Bridge, destination) -> None:  # noqa: ANN001
    destination.respond_with(422, '{"error": "unknown booking"}')
    event = sample("booking.created")
    bridge.post(event)
    bridge.drain()
    assert len(destination.requests) == 1
    state = bridge.record(event["id"]).actions["all-to-crm/notify"]
    assert (state.status, state.attempts) == (Status.DEAD, 1)
    assert state.last_error == 'HTTP 422: {"error": "unknown booking"}'
    assert len(bridge.runtime.store.dead_letters()) == 1


def test_retry_after_longer_than_the_step_wins(bridge: Bridge, destination) -> None:  # noqa: ANN001
    destination.respond_with(429, "busy", headers={"Retry-After": "120"})
    event = sample("booking.created")
    before = time.time()
    bridge.post(event)
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    SimpleWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer).work(burst=True)
    state = bridge.record(event["id"]).actions["all-to-crm/notify"]
    assert state.status == Status.RETRYING
    assert state.next_attempt_at is not None and state.next_attempt_at >= before + 120
    [job_id] = bridge.runtime.queue.scheduled_job_registry.get_job_ids()
    assert bridge.runtime.queue.scheduled_job_registry.get_scheduled_time(job_id).timestamp() >= before + 119


def test_a_failing_action_never_reruns_one_that_succeeded(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(http_config(destination.url, mappings=TWO_ACTIONS))
    destination.respond_with(200)  # first action
    destination.respond_with(502)  # second action, first try
    destination.respond_with(502)
    event = sample("booking.created")
    bridge.post(event)
    bridge.drain()
    numbers = [r.json()["n"] for r in destination.requests]
    assert numbers == [1, 2, 2, 2]
    actions = bridge.record(event["id"]).actions
    assert (actions["fan-out/first"].status, actions["fan-out/first"].attempts) == (Status.DONE, 1)
    assert (actions["fan-out/second"].status, actions["fan-out/second"].attempts) == (Status.DONE, 3)


def test_template_reading_a_missing_field_is_a_permanent_error(make_bridge, destination) -> None:  # noqa: ANN001
    mappings = """
  - name: names
    on: ["booking.*"]
    actions:
      - connector: crm
        body: {who: "{{ data.booking.cliente.nombre }}"}
"""
    bridge = make_bridge(http_config(destination.url, mappings=mappings))
    event = sample("booking.no_show")
    bridge.post(event)
    bridge.drain()
    assert destination.requests == []
    state = bridge.record(event["id"]).actions["names/0"]
    assert state.status == Status.DEAD
    assert state.last_error == (
        "mappings[0].actions[0].body.who: the template reads a field the event does not have "
        "('dict object' has no attribute 'cliente')"
    )


def test_condition_false_skips_with_the_reason(make_bridge, destination) -> None:  # noqa: ANN001
    mappings = """
  - name: big-orders
    on: ["order.created"]
    when: "data.order.total >= 100"
    actions:
      - connector: crm
        body: {n: "{{ data.order.numero }}"}
"""
    bridge = make_bridge(http_config(destination.url, mappings=mappings))
    small, big = sample("order.created"), sample("order.created")
    big["data"]["order"]["total"] = 150
    bridge.post(small)
    bridge.post(big)
    bridge.drain()
    assert [r.json() for r in destination.requests] == [{"n": "PED-2024-0789"}]
    skipped = bridge.record(small["id"]).actions["big-orders/0"]
    assert skipped.status == Status.SKIPPED
    assert "data.order.total >= 100" in skipped.detail


def test_dry_run_connector_records_the_rendered_action_and_sends_nothing(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(http_config(destination.url, connector_extra="    dry_run: true"))
    event = sample("booking.created")
    bridge.post(event)
    bridge.drain()
    assert destination.requests == []
    state = bridge.record(event["id"]).actions["all-to-crm/notify"]
    assert state.status == Status.DRY_RUN
    assert state.rendered == {"body": {"id": event["id"], "type": "booking.created", "tenant": "uuid-tenant"}}


def _worker_process(config: Path, redis_url: str, *extra: str) -> subprocess.Popen[bytes]:
    """`salon-bridge worker` in its own process group (it forks a scheduler process)."""
    env = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "worker", "--config", str(config), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_while_calling(config: Path, redis_url: str, destination: CapturingServer) -> None:
    """Start a worker, and SIGKILL it (and its scheduler, as a crash would) once it has called the
    destination (which should hang: the call is then in flight)."""
    worker = _worker_process(config, redis_url)
    try:
        assert destination.received.wait(30), "the worker never called the destination"
        os.killpg(worker.pid, signal.SIGKILL)
        worker.communicate(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.communicate()


def _redis_url_config(config_text: str, redis_url: str) -> str:
    return config_text.replace("connectors:", f'redis_url: "{redis_url}"\nconnectors:', 1)


def test_a_separate_worker_process_delivers(make_bridge, destination, redis_url, write_config) -> None:  # noqa: ANN001
    text = _redis_url_config(http_config(destination.url), redis_url)
    bridge = make_bridge(text)
    events = [sample("booking.created"), sample("order.shipped")]
    for event in events:
        bridge.post(event)
    worker = _worker_process(write_config(text, "worker.yaml"), redis_url, "--burst")
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output.decode()
    assert sorted(r.json()["id"] for r in destination.requests) == sorted(e["id"] for e in events)


@pytest.mark.slow
def test_a_killed_workers_job_runs_again(make_bridge, destination, redis_url, write_config) -> None:  # noqa: ANN001
    text = _redis_url_config(http_config(destination.url), redis_url)
    bridge = make_bridge(text)
    destination.respond_with(200, delay=30)  # the destination hangs while we kill the worker
    event = sample("booking.created")
    bridge.post(event)
    kill_while_calling(write_config(text, "worker.yaml"), redis_url, destination)
    interrupted = bridge.record(event["id"]).actions["all-to-crm/notify"]
    assert (interrupted.status, interrupted.attempts) == (Status.SENDING, 1)  # handed over, never recorded
    # RQ's maintenance finds the job once its heartbeat expires; the dead scheduler's lock and the
    # booking's lock expire by themselves (61 s, 75 s). Instead of waiting minutes, let that happen now.
    registry = StartedJobRegistry(queue=bridge.runtime.queue)
    assert registry.count == 1
    registry.cleanup(timestamp=int(time.time()) + 3600)
    bridge.redis.delete(RQScheduler.get_locking_key(bridge.runtime.queue.name), *bridge.redis.keys("sb:lock:*"))
    bridge.drain(timeout=30)
    assert len(destination.requests) == 2
    state = bridge.record(event["id"]).actions["all-to-crm/notify"]
    assert (state.status, state.attempts) == (Status.DONE, 2)
    # The destination may have had the first call: that possible duplicate is counted.
    assert bridge.redis.get(POSSIBLE_DUPLICATES_KEY) == b"1"


def test_monitors_see_what_a_worker_is_doing(make_bridge, destination, redis_url, write_config) -> None:  # noqa: ANN001
    """The worker skips some of RQ's own writes (docs/performance.md); RQ's view of it stays true:
    busy with the job at hand during a call, idle after, and its job counts."""
    from rq import Worker

    text = http_config(destination.url).replace("connectors:", f'redis_url: "{redis_url}"\nconnectors:', 1)
    bridge: Bridge = make_bridge(text)
    seen: list[tuple[str, str | None]] = []

    def look(request) -> None:  # noqa: ANN001
        seen.extend((w.get_state(), w.get_current_job_id()) for w in Worker.all(connection=bridge.redis))

    destination.on_request = look
    worker = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "worker", "--config", str(write_config(text, "worker.yaml"))],
        env=os.environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        events = [sample("booking.created"), sample("payment.failed")]
        for event in events:
            bridge.post(event)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = Worker.all(connection=bridge.redis)
            if workers and workers[0].successful_job_count == 2 and workers[0].get_state() == "idle":
                break
            time.sleep(0.05)
        assert [(w.get_state(), w.successful_job_count) for w in workers] == [("idle", 2)]
        assert seen == [("busy", "e-" + event["id"]) for event in events]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)  # never leave a worker on the tests' database
            worker.wait()


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_worker_logs_one_line_per_action_and_rq_job_lines_only_at_debug(
    level, bridge, destination, redis_url, write_config
) -> None:  # noqa: ANN001, E501
    text = http_config(destination.url)
    config = write_config(text.replace("connectors:", f'redis_url: "{redis_url}"\nconnectors:', 1), "worker.yaml")
    event = sample("booking.created")
    bridge.post(event)
    worker = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "--log-level", level, "worker", "--burst", "--config", str(config)],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    lines = worker.stderr.splitlines()
    assert len([line for line in lines if f"action event={event['id']} " in line]) == 1
    rq_job_lines = [line for line in lines if "Job OK" in line or "Successfully completed" in line]
    assert len(rq_job_lines) == (2 if level == "debug" else 0)
    assert any("started with PID" in line for line in lines)  # RQ's other lines stay


def _wrapped(event: dict, depth: int) -> bytes:
    """The event as JSON with its booking wrapped `depth` levels deep (as text: json.dumps recurses)."""
    booking = encode(event["data"]["booking"])
    return encode(event).replace(booking, b'{"x": ' * depth + booking + b"}" * depth)


def _half_character_in(body: bytes) -> bytes:
    """The body with the raw bytes of a lone surrogate in the customer's name."""
    return body.replace(b"Juan P", b"Juan \xed\xa0\xbd P")


def _store_as_an_older_bridge_would(bridge: Bridge, body: bytes, event_id: str) -> str:
    """An event record written without today's ingest checks (data from before an upgrade), queued."""
    key = event_key(event_id)
    bridge.redis.hset(record_key(key), mapping={"body": body, "received_at": time.time()})
    enqueue(bridge.runtime.queue, PROCESS_EVENT, key, job_id=key)
    return key


@pytest.mark.parametrize(
    ("body_of", "cause"),
    [
        pytest.param(
            lambda e: encode(e).replace(b"Juan P", b"Juan \xed\xa0\xbd P"), "UnicodeEncodeError", id="surrogate"
        ),
        pytest.param(lambda e: _wrapped(e, 1500), "RecursionError", id="nested-1500"),
    ],
)
def test_an_event_that_cannot_be_processed_ends_dead_with_the_reason(bridge: Bridge, body_of, cause) -> None:  # noqa: ANN001
    """Whatever fails between taking the job and recording its outcome is recorded: the event's own
    entry is dead with the reason, in the dead letters, and the booking's lock is free."""
    event = sample("booking.created")
    body = body_of(event)
    key = _store_as_an_older_bridge_would(bridge, body, event["id"])
    bridge.drain()
    state = ActionState.from_json(bridge.redis.hget(record_key(key), "a:" + EVENT_ACTION))  # the body may not parse
    assert state.status == Status.DEAD
    assert state.last_error.startswith(f"could not be processed: {cause}")
    assert bridge.redis.zrange(DEAD_INDEX, 0, -1) == [f"{key} {EVENT_ACTION}".encode()]
    assert bridge.redis.keys("sb:lock:*") == []
    assert bridge.runtime.queue.failed_job_registry.count == 0  # not left to RQ's retries


def test_a_failed_event_replayed_after_the_fix_is_processed(bridge: Bridge, destination) -> None:  # noqa: ANN001
    event = sample("booking.created")
    key = _store_as_an_older_bridge_would(bridge, _half_character_in(encode(event)), event["id"])
    bridge.drain()
    bridge.redis.hset(record_key(key), "body", encode(event))  # the owner fixed the data
    replay(bridge.runtime, event["id"])
    bridge.drain()
    actions = bridge.record(event["id"]).actions
    assert actions[EVENT_ACTION].status == Status.DONE
    assert actions["all-to-crm/notify"].status == Status.DONE
    assert len(destination.requests) == 1


def redis_fails_midway(key: str) -> None:
    """A job for the test below: Redis failing under it, as when it is unreachable for minutes."""
    raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def test_a_job_rq_gives_up_on_leaves_an_outcome(bridge: Bridge) -> None:
    """When RQ runs a job for the last time and it fails again, the event's own entry says so."""
    event = sample("booking.created")
    bridge.post(event)
    queue = bridge.runtime.queue
    queue.empty()
    job = enqueue(queue, "tests.test_jobs.redis_fails_midway", event_key(event["id"]))
    job.retries_left = 0  # its last try
    job.save()
    bridge.drain()
    state = bridge.record(event["id"]).actions[EVENT_ACTION]
    assert state.status == Status.DEAD
    assert state.last_error == (
        "the worker failed on every try (ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection "
        "refused.); fix the cause, then replay it"
    )
    assert queue.failed_job_registry.get_job_ids() == [job.id]


def test_a_job_timeout_is_a_permanent_failure_not_a_retry_loop() -> None:
    failure = judge(JobTimeoutException("Task exceeded maximum timeout value (120 seconds)"), 0.0, 900, 10.0)
    assert failure.permanent
    assert failure.error == "took longer than the job's limit of 120 s; nothing more is tried"


def test_a_retry_after_is_honoured_to_the_second_never_early(bridge: Bridge, destination) -> None:  # noqa: ANN001
    """RQ's scheduler keeps whole seconds: the retry's time is rounded up, never down."""
    destination.respond_with(503, "busy", headers={"Retry-After": "2"})
    bridge.post(sample("booking.created"))
    SimpleWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer).work(burst=True)
    registry = bridge.runtime.queue.scheduled_job_registry
    [job_id] = registry.get_job_ids()
    assert registry.get_scheduled_time(job_id).timestamp() >= destination.requests[0].received_at + 2
    bridge.drain()
    first, second = destination.requests
    assert second.received_at - first.received_at >= 2.0


def test_missing_data_is_awaited_for_the_configured_window_not_a_schedule_step_more(make_bridge, destination) -> None:  # noqa: ANN001
    """A 2 s wait with a schedule of 1 s then 1 hour: the last try is at the end of the 2 s."""
    config = http_config(destination.url, mappings=SHIPPED_NOTICE).replace("[0.1, 0.1, 0.1]", "[1, 3600]")
    bridge: Bridge = make_bridge(config.replace("  jitter: 0", "  jitter: 0\n  wait_for_missing_data: 2s"))
    shipped = sample("order.shipped")
    bridge.post(shipped)
    bridge.drain(timeout=15)
    record = bridge.record(shipped["id"])
    state = record.actions["shipped/0"]
    assert state.status == Status.DEAD
    assert {h["outcome"] for h in state.history[:-1]} == {Status.RETRYING}
    assert record.received_at + 2 <= state.history[-1]["at"] < record.received_at + 10
    assert state.last_error.endswith("(order.created not received)")


def test_a_workers_maintenance_trims_the_event_index_to_its_retention(bridge: Bridge) -> None:
    """The index of events would otherwise keep every id forever (the records expire by TTL)."""
    old, new = sample("booking.created"), sample("booking.updated")
    bridge.post(old)
    bridge.post(new)
    retention = bridge.config.model.retention.events
    bridge.redis.zadd(EVENTS_INDEX, {event_key(old["id"]): time.time() - retention - 60})
    BridgeWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer).work(burst=True)
    assert bridge.redis.zrange(EVENTS_INDEX, 0, -1) == [event_key(new["id"]).encode()]


def test_an_event_whose_body_was_lost_in_redis_ends_dead_saying_so(bridge: Bridge) -> None:
    event = sample("booking.created")
    bridge.post(event)
    key = event_key(event["id"])
    bridge.redis.hdel(record_key(key), "body")  # evicted, or lost in a restart mid-action
    bridge.drain()
    state = ActionState.from_json(bridge.redis.hget(record_key(key), "a:" + EVENT_ACTION))
    assert (state.status, state.last_error) == (Status.DEAD, LOST_IN_REDIS)


NAME_TO_CRM = """
  - name: names
    on: ["booking.*"]
    actions:
      - connector: crm
        body: {nombre: "{{ booking.cliente.nombre }}"}
"""


@pytest.mark.slow
def test_a_worker_process_gives_every_hostile_event_an_outcome(
    make_bridge, destination, redis_url, write_config
) -> None:  # noqa: ANN001, E501
    """Real processes: a half character accepted by the web app is delivered as U+FFFD; an event
    stored before today's ingest checks, which cannot be remembered, ends dead with the reason."""
    text = _redis_url_config(http_config(destination.url, mappings=NAME_TO_CRM), redis_url)
    bridge = make_bridge(text)
    accepted = sample("booking.created")
    assert bridge.post(_half_character_in(encode(accepted))).status_code == 202
    older = sample("booking.created")
    older_key = _store_as_an_older_bridge_would(bridge, _half_character_in(encode(older)), older["id"])
    worker = _worker_process(write_config(text, "worker.yaml"), redis_url, "--burst")
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output.decode()
    assert bridge.record(accepted["id"]).actions["names/0"].status == Status.DONE
    assert destination.requests[0].json() == {"nombre": "Juan \ufffd Pérez"}
    state = ActionState.from_json(bridge.redis.hget(record_key(older_key), "a:" + EVENT_ACTION))
    assert state.status == Status.DEAD and "UnicodeEncodeError" in state.last_error
    assert bridge.redis.keys("sb:lock:*") == []


def test_the_web_process_does_not_load_the_worker_tier() -> None:
    """app.py enqueues jobs by their dotted path: importing it does not import bridge.jobs."""
    probe = "import sys, app; print('bridge.jobs' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
