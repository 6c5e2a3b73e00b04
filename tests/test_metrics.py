"""/metrics (web counters in-process or multiprocess, worker figures in Redis) and the log lines
(`--log-format text|json`, secrets and personal data masked)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from app import create_app
from bridge import jobs, logs, metrics
from bridge.operations import replay
from mappings.config import load_config_text
from tests.conftest import http_config
from tests.fakes.http_server import CapturingServer
from tests.harness import SECRET, Bridge, encode, sample, sign

REPO = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            found[(item.name, tuple(sorted(item.labels.items())))] = item.value
    return found


def scrape(bridge: Bridge) -> Samples:
    response = bridge.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


BOOKINGS_ONLY = """
  - name: bookings
    on: ["booking.*"]
    actions:
      - connector: crm
        name: notify
        body: {id: "{{ event.id }}"}
"""


def test_webhook_deliveries_by_type_outcome_and_reason(make_bridge, destination) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(http_config(destination.url, BOOKINGS_ONLY))
    event = sample("booking.created")
    assert bridge.post(event).status_code == 202
    assert bridge.post(event).status_code == 200  # duplicate
    assert bridge.post(sample("order.shipped")).status_code == 200  # ignored: no mapping
    assert bridge.post(sample("order.shipped", type="Weird Type!")).status_code == 200  # ignored
    assert bridge.post(event, secret=None).status_code == 401
    assert bridge.post(event, secret="wrong").status_code == 401
    assert bridge.post(b"{not json").status_code == 400
    assert bridge.post({"id": "x"}).status_code == 400
    samples = scrape(bridge)
    received = "salon_bridge_events_received_total"
    assert value(samples, received, type="booking.created", outcome="accepted") == 1
    assert value(samples, received, type="booking.created", outcome="duplicate") == 1
    assert value(samples, received, type="order.shipped", outcome="ignored") == 1
    assert value(samples, received, type="other", outcome="ignored") == 1
    assert value(samples, received, type="unknown", outcome="rejected") == 4
    for reason in ("unsigned", "bad_signature", "bad_json", "bad_envelope"):
        assert value(samples, "salon_bridge_events_rejected_total", reason=reason) == 1, reason
    ack = "salon_bridge_ack_duration_seconds"
    assert value(samples, ack + "_count", outcome="accepted") == 1
    assert value(samples, ack + "_count", outcome="rejected") == 4
    assert value(samples, ack + "_bucket", outcome="rejected", le="+Inf") == 4
    assert value(samples, ack + "_sum", outcome="accepted") > 0
    assert value(samples, "salon_bridge_events_stored") == 1


def test_rejected_deliveries_write_nothing_to_redis(bridge: Bridge) -> None:
    bridge.post(sample("booking.created"), secret="wrong")
    bridge.post(b"[]")
    assert bridge.keys_written() == []
    assert value(scrape(bridge), "salon_bridge_events_rejected_total", reason="bad_signature") == 1


TWO_MAPPINGS = """
  - name: all
    on: ["*"]
    actions:
      - connector: crm
        name: notify
        body: {id: "{{ event.id }}"}
  - name: never
    on: ["order.created"]
    when: "false"
    actions:
      - connector: crm
        name: off
        body: {}
"""


def test_worker_figures_by_connector_and_outcome(make_bridge, destination: CapturingServer) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(http_config(destination.url, TWO_MAPPINGS))
    destination.respond_with(503, "busy")  # first event: a retry, then done
    bridge.post(sample("booking.created"))
    bridge.drain()
    destination.respond_with(400, "refused")  # second: dead
    failing = sample("payment.failed")
    bridge.post(failing)
    bridge.drain()
    bridge.post(sample("order.created"))  # third: done, and one skipped action
    bridge.drain()
    samples = scrape(bridge)
    actions = "salon_bridge_actions_total"
    assert value(samples, actions, connector="crm", outcome="done") == 2
    assert value(samples, actions, connector="crm", outcome="retrying") == 1
    assert value(samples, actions, connector="crm", outcome="dead") == 1
    assert value(samples, actions, connector="crm", outcome="skipped") == 1
    assert value(samples, "salon_bridge_action_retries_total", connector="crm") == 1
    assert value(samples, "salon_bridge_dead_letters_total", connector="crm") == 1
    assert value(samples, "salon_bridge_dead_letters_waiting") == 1
    duration = "salon_bridge_action_duration_seconds"
    assert value(samples, duration + "_count", connector="crm") == 4  # skipped took no time
    assert value(samples, duration + "_bucket", connector="crm", le="+Inf") == 4
    assert value(samples, duration + "_bucket", connector="crm", le="120.0") == 4
    assert 0 < value(samples, duration + "_sum", connector="crm") < 60
    assert value(samples, "salon_bridge_events_stored") == 3
    assert value(samples, "salon_bridge_redis_up") == 1

    replay(bridge.runtime, failing["id"])
    bridge.drain()
    after = scrape(bridge)
    assert value(after, actions, connector="crm", outcome="done") == 3
    assert value(after, "salon_bridge_dead_letters_waiting") == 0
    assert value(after, "salon_bridge_dead_letters_total", connector="crm") == 1  # a counter never goes down


def test_queue_depth_oldest_job_and_workers(bridge: Bridge) -> None:
    bridge.post(sample("booking.created"))
    bridge.post(sample("order.created"))
    worker = SimpleWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer)
    worker.register_birth()
    try:
        samples = scrape(bridge)
    finally:
        worker.register_death()
    assert value(samples, "salon_bridge_queue_depth") == 2
    assert value(samples, "salon_bridge_workers") == 1
    assert 0 <= value(samples, "salon_bridge_oldest_job_age_seconds") < 3600
    assert value(samples, "salon_bridge_retries_scheduled") == 0
    bridge.drain()
    idle = scrape(bridge)
    assert (value(idle, "salon_bridge_queue_depth"), value(idle, "salon_bridge_workers")) == (0, 0)
    assert value(idle, "salon_bridge_oldest_job_age_seconds") == 0


def test_possible_duplicates_are_exposed(bridge: Bridge) -> None:
    assert metrics.POSSIBLE_DUPLICATES_KEY == jobs.POSSIBLE_DUPLICATES_KEY
    bridge.redis.incrby(jobs.POSSIBLE_DUPLICATES_KEY, 2)
    assert value(scrape(bridge), "salon_bridge_possible_duplicates_total") == 2


def test_the_dashboard_counts_come_from_the_same_records(bridge: Bridge, destination: CapturingServer) -> None:
    destination.respond_with(400, "no")
    bridge.post(sample("booking.created"))
    bridge.post(sample("order.created"))
    bridge.drain()
    assert metrics.recent_outcomes(bridge.redis) == {"dead": 1, "done": 1}
    assert metrics.recent_outcomes(bridge.redis, now=time.time() + 25 * 3600) == {}


TOKEN = "metrics-token-0123456789abcdef"


def test_metrics_behind_a_token(make_bridge, destination) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(http_config(destination.url, extra=f'metrics:\n  token: "{TOKEN}"'))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN + "x"}):
        response = bridge.client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert "salon_bridge" not in response.get_data(as_text=True)
    response = bridge.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and "salon_bridge_redis_up 1.0" in response.get_data(as_text=True)
    assert bridge.client.get("/healthz").status_code == 200, "health checks stay open"


def test_metrics_answer_when_redis_does_not(destination) -> None:  # noqa: ANN001
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        client = create_app(load_config_text(http_config(destination.url)), redis=unreachable).test_client()
        body = encode(sample("booking.created"))
        assert client.post("/webhooks", data=body, headers={"X-SalonBookIt-Signature": sign(body)}).status_code == 503
        samples = parse(client.get("/metrics").get_data(as_text=True))
    finally:
        unreachable.close()
    assert value(samples, "salon_bridge_redis_up") == 0
    assert value(samples, "salon_bridge_events_rejected_total", reason="unavailable") == 1
    assert ("salon_bridge_queue_depth", ()) not in samples


# ---- several processes --------------------------------------------------------------------------

CHILD = """
import json, sys
mode, config_path, redis_url = sys.argv[1:4]
if mode == "late":
    import prometheus_client  # imported before the directory is known, as under `serve`
    import os
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[5]
from app import create_app
from bridge.queue import connect
from mappings.config import load_config
from tests.harness import encode, sample, sign
redis = connect(redis_url)
client = create_app(load_config(config_path), redis=redis).test_client()
if mode in ("post", "late"):
    for _ in range(int(sys.argv[4])):
        body = encode(sample("booking.created"))
        assert client.post("/webhooks", data=body, headers={"X-SalonBookIt-Signature": sign(body)}).status_code == 202
    client.post("/webhooks", data=b"{}", headers={"X-SalonBookIt-Signature": "sha256=00"})
else:
    sys.stdout.write(client.get("/metrics").get_data(as_text=True))
redis.close()
"""


@pytest.mark.slow
def test_figures_add_up_across_web_and_worker_processes(
    redis_url: str, write_config, destination: CapturingServer, tmp_path: Path
) -> None:  # noqa: ANN001
    config = str(write_config(http_config(destination.url)))
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "REDIS_URL": redis_url, "PYTHONPATH": str(REPO)}

    def child(*args: str, environ: dict[str, str] = env) -> str:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    child("post", config, redis_url, "3")
    child("post", config, redis_url, "2")
    late_env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    child("late", config, redis_url, "1", str(shared), environ=late_env)
    worker = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "worker", "--burst", "--config", config],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    samples = parse(child("scrape", config, redis_url))
    assert value(samples, "salon_bridge_events_received_total", type="booking.created", outcome="accepted") == 6
    assert value(samples, "salon_bridge_events_rejected_total", reason="bad_signature") == 3
    assert value(samples, "salon_bridge_ack_duration_seconds_count", outcome="accepted") == 6
    assert value(samples, "salon_bridge_actions_total", connector="crm", outcome="done") == 6
    assert len(destination.requests) == 6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_every_web_process_answers_the_same_totals(
    redis_url: str, write_config, destination: CapturingServer, tmp_path: Path
) -> None:  # noqa: ANN001
    """`serve` with several web processes: whichever process a scrape reaches, it counts them all."""
    config = str(write_config(http_config(destination.url)))
    shared = tmp_path / "prometheus"
    shared.mkdir()
    port = _free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "REDIS_URL": redis_url, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bridge.cli", "serve", "--config", config, "--port", str(port), "--workers", "3"]
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        with requests.Session() as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.get(f"{base}/healthz", timeout=2)
                    break
                except requests.ConnectionError:
                    assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
                    time.sleep(0.1)
            for _ in range(12):
                body = encode(sample("booking.created"))
                # a new connection each time, so that the deliveries spread over the processes
                answer = requests.post(
                    f"{base}/webhooks", data=body, headers={"X-SalonBookIt-Signature": sign(body)}, timeout=5
                )
                assert answer.status_code == 202
            totals = set()
            for _ in range(6):
                samples = parse(requests.get(f"{base}/metrics", timeout=5).text)
                totals.add(
                    value(samples, "salon_bridge_events_received_total", type="booking.created", outcome="accepted")
                )
    finally:
        server.terminate()
        server.communicate(timeout=15)
    assert totals == {12.0}
    assert len(list(shared.glob("*.db"))) >= 2, "more than one process counted"


# ---- logs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("to juan@email.com refused", "to j***@email.com refused", id="email"),
        pytest.param("tel. +34612345678 ok", "tel. +34******678 ok", id="e164"),
        pytest.param("tel. +34 612 34 56 78.", "tel. +34******678.", id="spaced-phone"),
        pytest.param("call 612345678 now", "call ******678 now", id="bare-phone"),
        pytest.param("Authorization: Bearer abcdef123456", "Authorization: *** ***", id="bearer"),
        pytest.param("token xoxb-123-456-abc failed", "token xoxb-*** failed", id="slack-token"),
        pytest.param(
            "https://hooks.slack.com/services/T0/B0/XyZ timed out",
            "https://hooks.slack.com/services/*** timed out",
            id="slack-webhook",
        ),
        pytest.param("redis://:hunter22@10.0.0.1:6379/0", "redis://:***@10.0.0.1:6379/0", id="url-password"),
        pytest.param("{'password': 'p4ss w0rd', 'user': 'a'}", "{'password': ***, 'user': 'a'}", id="dict-password"),
        pytest.param("api_key=sk_live_123 retry", "api_key=*** retry", id="key-value"),
        pytest.param("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----", "***", id="private-key"),
        pytest.param("got eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl back", "got *** back", id="jwt"),
        pytest.param("header basic dXNlcjpwYXNz sent", "header basic *** sent", id="basic-auth"),
    ],
)
def test_masking_hides_secrets_and_personal_data(text: str, expected: str) -> None:
    assert logs.mask(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "created 2024-01-25T10:30:00Z and 2024-01-25 10:30",
        "event=evt_1234567890abcdef duration_ms=1234.5 attempt=3",
        "booking 12345 order PED-2024-0789 at 1700000000.25",
        "X-SalonBookIt-Signature does not match the body (check the webhook secret)",
    ],
)
def test_masking_leaves_ids_dates_and_numbers_readable(text: str) -> None:
    assert logs.mask(text) == text


def test_configured_secrets_are_masked_wherever_they_appear(destination) -> None:  # noqa: ANN001
    text = http_config(
        destination.url, connector_extra='    headers: {X-Api: "abc-very-secret"}\n    signing_secret: "sig-secret-42"'
    )
    config = load_config_text(text)
    logs.remember_secrets(logs.config_secrets(config))
    line = f"failed with abc-very-secret and sig-secret-42 and {SECRET}"
    assert logs.mask(line) == "failed with *** and *** and ***"


def test_json_lines_carry_the_fields_of_webhook_and_action_lines(
    bridge: Bridge, destination: CapturingServer, caplog: pytest.LogCaptureFixture
) -> None:
    destination.respond_with(400, "juan@email.com is not a valid address")
    event = sample("booking.created")
    with caplog.at_level(logging.DEBUG):  # an accepted webhook's line is at debug level
        bridge.post(event)
        bridge.drain()
    formatter = logs.JsonFormatter()
    lines = [json.loads(formatter.format(record)) for record in caplog.records]
    [webhook] = [line for line in lines if line.get("kind") == "webhook"]
    assert webhook["event"] == event["id"] and webhook["type"] == "booking.created"
    assert (webhook["tenant"], webhook["outcome"], webhook["status"]) == ("uuid-tenant", "accepted", 202)
    assert isinstance(webhook["duration_ms"], float) and webhook["logger"] == "salon_bridge.web"
    [action] = [line for line in lines if line.get("kind") == "action"]
    assert (action["event"], action["connector"], action["action"]) == (event["id"], "crm", "all-to-crm/notify")
    assert (action["attempt"], action["outcome"], action["level"]) == (1, "dead", "warning")
    assert action["error"] == "HTTP 400: j***@email.com is not a valid address"
    assert "juan@email.com" not in json.dumps(lines)


def test_text_lines_are_masked_too(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("salon_bridge.test").info("mail to %s failed", "ana.lopez@example.org")
    [record] = caplog.records
    line = logs.TextFormatter().format(record)
    assert line.endswith("INFO salon_bridge.test: mail to a***@example.org failed")


@pytest.mark.slow
def test_a_worker_run_with_log_format_json(
    redis_url: str, write_config, destination: CapturingServer, make_bridge
) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(http_config(destination.url))
    config = str(write_config(http_config(destination.url), "worker.yaml"))
    destination.respond_with(400, "no such customer: +34612345678")
    event = sample("payment.failed")
    bridge.post(event)
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO)}
    env.pop(logs.FORMAT_ENV, None)
    command = [sys.executable, "-m", "bridge.cli", "--log-format", "json", "worker", "--burst", "--config", config]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    [action] = [line for line in lines if line.get("kind") == "action"]
    assert action["event"] == event["id"] and action["outcome"] == "dead" and action["attempt"] == 1
    assert action["error"] == "HTTP 400: no such customer: +34******678"
    assert "+34612345678" not in done.stderr
    # The format is inherited through the environment (as the processes `up` starts inherit it).
    bridge.post(sample("order.created"))
    env[logs.FORMAT_ENV] = "json"
    command.remove("--log-format")
    command.remove("json")
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and all(json.loads(line) for line in again.stderr.splitlines() if line.strip())


def test_a_value_with_a_newline_cannot_forge_a_text_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("salon_bridge.test").info("webhook event=%s outcome=accepted", "e1\n2026-01-01 INFO fake")
    [record] = caplog.records
    line = logs.TextFormatter().format(record)
    assert "\n" not in line
    assert line.endswith("webhook event=e1\\n2026-01-01 INFO fake outcome=accepted")
