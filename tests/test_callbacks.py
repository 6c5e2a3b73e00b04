"""WhatsApp and Twilio callbacks end to end: signatures, storage and dedupe, delivery statuses on the
sending action, failed after sending, opt-out / opt-in, and fallbacks exactly once.

Real Redis, real workers (in-process, and a killed worker process), the fake Graph API and fake
Twilio driven through the real connectors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from rq import SimpleWorker
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from twilio.request_validator import RequestValidator

from bridge import schedules
from bridge.deliveries import CALLBACK_PREFIX
from bridge.jobs import POSSIBLE_DUPLICATES_KEY
from bridge.store import GAVE_UP, Status
from tests.conftest import SECRET
from tests.fakes.graph_server import GraphServer, hub_signature, message_callback, status_callback
from tests.fakes.http_server import CapturingServer
from tests.fakes.twilio_server import TwilioServer, form
from tests.harness import Bridge, sample
from tests.redis_server import RedisServer

APP_SECRET = "meta-app-secret"
VERIFY_TOKEN = "verify-me-please"
AUTH_TOKEN = "twilio-auth-token"
PUBLIC_URL = "https://bridge.salon.example"
TWILIO_URL = PUBLIC_URL + "/webhooks/twilio"
PHONE = "+34612345678"  # the sample booking's customer
MADRID = ZoneInfo("Europe/Madrid")

# WhatsApp first; SMS when it fails; the CRM (an http connector standing in for e-mail) last.
CHAIN = """
      - connector: whatsapp
        name: wa
        to: "{{ booking.cliente.telefono }}"
        template: recordatorio_cita
        parameters: ["{{ booking.cliente.nombre }}"]
        fallback:
          connector: sms
          to: "{{ booking.cliente.telefono }}"
          body: "Hola {{ booking.cliente.nombre }}, te esperamos."
          fallback:
            connector: crm
            body: {id: "{{ event.id }}"}
"""


def config_text(graph: str, twilio: str, crm: str, schedule: str = "", redis_url: str = "") -> str:
    return f"""
version: 1
timezone: Europe/Madrid
webhook:
  secrets: ["{SECRET}"]
retry:
  schedule: [0.1, 0.1]
  jitter: 0
{f'redis_url: "{redis_url}"' if redis_url else ""}
connectors:
  whatsapp:
    type: whatsapp
    phone_number_id: "1055"
    token: "EAAtoken"
    app_secret: "{APP_SECRET}"
    verify_token: "{VERIFY_TOKEN}"
    base_url: "{graph}"
  sms:
    type: sms
    account_sid: AC123
    auth_token: "{AUTH_TOKEN}"
    from: "+34600000000"
    status_callback: true
    public_url: "{PUBLIC_URL}"
    base_url: "{twilio}"
  crm:
    type: http
    url: "{crm}/hooks"
    timeout: 2
mappings:
  - name: aviso
    on: ["booking.created"]
    {schedule}
    actions:
{CHAIN}
"""


@pytest.fixture
def graph() -> Iterator[GraphServer]:
    server = GraphServer().start()
    yield server
    server.stop()


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    server = TwilioServer().start()
    yield server
    server.stop()


@pytest.fixture
def messaging(make_bridge: Callable[[str], Bridge], graph, twilio, destination, redis_url) -> Bridge:  # noqa: ANN001
    return make_bridge(config_text(graph.url, twilio.url, destination.url, redis_url=redis_url))


def post_whatsapp(bridge: Bridge, payload: dict | bytes, secret: str | None = APP_SECRET):  # noqa: ANN201
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Hub-Signature-256"] = hub_signature(body, secret)
    return bridge.client.post("/webhooks/whatsapp", data=body, headers=headers)


def post_twilio(bridge: Bridge, params: dict[str, str], token: str | None = AUTH_TOKEN, url: str = TWILIO_URL):  # noqa: ANN201
    headers = {} if token is None else {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}
    return bridge.client.post("/webhooks/twilio", data=params, headers=headers)


def twilio_status(sid: str, status: str, error_code: str = "") -> dict[str, str]:
    params = {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC123", "To": PHONE, "From": "+34600000000"}
    return params | ({"ErrorCode": error_code} if error_code else {})


def send_booking(bridge: Bridge) -> str:
    event = sample("booking.created")
    assert bridge.post(event).status_code == 202
    bridge.drain()
    return event["id"]


def callbacks_stored(bridge: Bridge) -> int:
    return len(bridge.redis.keys(CALLBACK_PREFIX + "*"))


# ---- the endpoints ----------------------------------------------------------------------------------


def test_meta_subscription_check_echoes_the_challenge_only_with_the_verify_token(messaging: Bridge) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    answer = messaging.client.get("/webhooks/whatsapp", query_string=query)
    assert (answer.status_code, answer.text, answer.content_type) == (200, "1158201444", "text/plain; charset=utf-8")
    for wrong in ({"hub.verify_token": "guess"}, {"hub.mode": "unsubscribe"}, {"hub.verify_token": ""}):
        answer = messaging.client.get("/webhooks/whatsapp", query_string=query | wrong)
        assert answer.status_code == 403 and "verify_token" in answer.json["error"]


@pytest.mark.parametrize(
    ("secret", "tamper", "message"),
    [(None, False, "missing"), ("another-secret", False, "does not match"), (APP_SECRET, True, "does not match")],
    ids=["missing", "wrong-secret", "body-changed"],
)
def test_a_whatsapp_callback_without_a_good_signature_is_401_and_nothing_is_stored(
    messaging: Bridge, secret: str | None, tamper: bool, message: str
) -> None:
    body = json.dumps(status_callback("wamid.X", "delivered")).encode()
    headers = {"X-Hub-Signature-256": hub_signature(body, secret)} if secret else {}
    sent = body.replace(b"delivered", b"read") if tamper else body
    answer = messaging.client.post("/webhooks/whatsapp", data=sent, headers=headers)
    assert answer.status_code == 401 and message in answer.json["error"]
    assert messaging.keys_written() == [] and messaging.runtime.queue.count == 0


@pytest.mark.parametrize(
    ("token", "url", "message"),
    [(None, TWILIO_URL, "missing"), ("other-token", TWILIO_URL, "does not match"),
     (AUTH_TOKEN, "https://elsewhere.example/webhooks/twilio", "does not match")],
    ids=["missing", "wrong-token", "wrong-url"],
)  # fmt: skip
def test_a_twilio_callback_without_a_good_signature_is_403_and_nothing_is_stored(
    messaging: Bridge, token: str | None, url: str, message: str
) -> None:
    answer = post_twilio(messaging, twilio_status("SM1", "delivered"), token, url)
    assert answer.status_code == 403 and message in answer.json["error"]
    assert messaging.keys_written() == [] and messaging.runtime.queue.count == 0


def test_a_redelivered_callback_is_stored_once(messaging: Bridge, graph: GraphServer, twilio: TwilioServer) -> None:
    graph.accept("wamid.A")
    first = send_booking(messaging)
    graph.fail(131026, "Message undeliverable")
    twilio.accept("SM9")
    second = send_booking(messaging)  # WhatsApp dead, so its SMS fallback sends SM9
    payload = status_callback("wamid.A", "delivered")
    assert [post_whatsapp(messaging, payload).status_code for _ in range(2)] == [200, 200]
    assert callbacks_stored(messaging) == 1 and messaging.runtime.queue.count == 1
    answers = [post_twilio(messaging, twilio_status("SM9", "delivered")) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200] and "<Response>" in answers[0].text
    assert callbacks_stored(messaging) == 2
    messaging.drain()
    assert [d["status"] for d in messaging.record(first).actions["aviso/wa"].delivery] == ["delivered"]
    assert [d["status"] for d in messaging.record(second).actions["aviso/wa/fallback"].delivery] == ["delivered"]


def test_callbacks_while_redis_is_down_are_503_with_retry_after_and_stored_once_later(
    private_redis: Callable[..., RedisServer],
    write_config: Callable[[str], Path],
    graph: GraphServer,
    twilio: TwilioServer,
    destination: CapturingServer,
) -> None:
    """Meta and Twilio redeliver what was not answered 2xx: a callback that cannot be stored is
    not acknowledged, and the redelivery after Redis is back is stored once."""
    server = private_redis()
    bridge = Bridge(write_config(config_text(graph.url, twilio.url, destination.url, redis_url=server.url)), server.url)
    try:
        whatsapp = status_callback("wamid.DOWN", "delivered")
        twilio_params = twilio_status("SMDOWN", "delivered")
        server.kill()
        for answer in (post_whatsapp(bridge, whatsapp), post_twilio(bridge, twilio_params)):
            assert answer.status_code == 503
            assert answer.headers["Retry-After"].isdigit()
            assert "cannot store the callback right now" in answer.json["error"]
            assert "retry later" in answer.json["error"]
        server.start()
        for _ in range(2):  # the platform's redelivery, and once more
            assert post_whatsapp(bridge, whatsapp).status_code == 200
            assert post_twilio(bridge, twilio_params).status_code == 200
        assert callbacks_stored(bridge) == 2
    finally:
        bridge.close()


# ---- statuses on the sending action ------------------------------------------------------------------


def test_statuses_are_recorded_on_the_action_that_sent_the_message_in_their_order(
    messaging: Bridge, graph: GraphServer
) -> None:
    graph.accept("wamid.B")
    event_id = send_booking(messaging)
    for status, at in (("read", "1764680030"), ("delivered", "1764680020"), ("sent", "1764680010")):  # late ones
        post_whatsapp(messaging, status_callback("wamid.B", status, timestamp=at))
    messaging.drain()
    state = messaging.record(event_id).actions["aviso/wa"]
    assert state.status == Status.DONE
    assert state.delivery == [
        {"status": "sent", "at": 1764680010.0, "error": ""},
        {"status": "delivered", "at": 1764680020.0, "error": ""},
        {"status": "read", "at": 1764680030.0, "error": ""},
    ]
    assert "aviso/wa/fallback" not in messaging.record(event_id).actions


def test_failed_after_sending_is_a_dead_letter_counted_in_metrics_and_its_fallback_runs_once(
    messaging: Bridge,
    graph: GraphServer,
    twilio: TwilioServer,
    destination: CapturingServer,
    capsys,  # noqa: ANN001
) -> None:
    graph.accept("wamid.C")
    twilio.accept("SMfallback")
    event_id = send_booking(messaging)
    error = [{"code": 131026, "title": "Message undeliverable", "error_data": {"details": "not on WhatsApp"}}]
    post_whatsapp(messaging, status_callback("wamid.C", "sent", timestamp="1764680001"))
    post_whatsapp(messaging, status_callback("wamid.C", "failed", error, timestamp="1764680002"))
    post_whatsapp(messaging, status_callback("wamid.C", "failed", error, timestamp="1764680003"))  # sent again
    messaging.drain()
    actions = messaging.record(event_id).actions
    first = actions["aviso/wa"]
    assert first.status == Status.FAILED_AFTER_SENDING == "failed after sending"
    assert "cannot receive WhatsApp messages" in first.last_error and "Meta 131026" in first.last_error
    assert [d["status"] for d in first.delivery] == ["sent", "failed"]
    assert len(twilio.requests) == 1 and form(twilio.requests[0])["To"] == PHONE
    assert actions["aviso/wa/fallback"].status == Status.DONE
    assert "aviso/wa/fallback/fallback" not in actions and destination.requests == []

    dead = [(record.id, action) for record, action in messaging.runtime.store.dead_letters()]
    assert dead == [(event_id, "aviso/wa")]
    metrics = messaging.client.get("/metrics").text
    assert 'salon_bridge_dead_letters_total{connector="whatsapp"} 1.0' in metrics
    assert 'salon_bridge_actions_total{connector="whatsapp",outcome="failed after sending"} 1.0' in metrics

    from bridge.cli import main

    assert main(["dead-letters", "--config", messaging.config.path]) == 0
    assert "cannot receive WhatsApp messages" in capsys.readouterr().out
    assert main(["events", "--config", messaging.config.path, "--status", "failed after sending"]) == 0
    shown = capsys.readouterr().out
    assert "aviso/wa: failed after sending, 1 attempt(s)" in shown and "; delivery: sent 2025-12-02 " in shown
    assert shown.index("aviso/wa:") < shown.index("aviso/wa/fallback: done")


def test_twilio_undelivered_turns_the_sms_fallback_failed_and_runs_the_last_fallback(
    messaging: Bridge, graph: GraphServer, twilio: TwilioServer, destination: CapturingServer
) -> None:
    graph.fail(131026, "Message undeliverable")  # dead at once
    twilio.accept("SM42")
    event_id = send_booking(messaging)
    assert messaging.record(event_id).actions["aviso/wa"].status == Status.DEAD
    for _ in range(2):
        post_twilio(messaging, twilio_status("SM42", "undelivered", "30003"))
        post_twilio(messaging, twilio_status("SM42", "undelivered", "30005"))  # another body, same status
    messaging.drain()
    actions = messaging.record(event_id).actions
    sms = actions["aviso/wa/fallback"]
    assert sms.status == Status.FAILED_AFTER_SENDING and "phone is off or unreachable" in sms.last_error
    assert actions["aviso/wa/fallback/fallback"].status == Status.DONE
    assert [r.json() for r in destination.requests] == [{"id": event_id}]
    assert {a for _, a in messaging.runtime.store.dead_letters()} == {"aviso/wa", "aviso/wa/fallback"}
    assert all(actions[a].status in GAVE_UP for a in ("aviso/wa", "aviso/wa/fallback"))


def test_a_status_that_comes_before_its_send_is_recorded_is_recorded_when_it_is(
    messaging: Bridge, graph: GraphServer
) -> None:
    post_whatsapp(messaging, status_callback("wamid.early", "sent"))  # queued first: the worker sees it first
    graph.accept("wamid.early")
    event = sample("booking.created")
    assert messaging.post(event).status_code == 202
    queue = messaging.runtime.queue
    SimpleWorker([queue], connection=messaging.redis, serializer=JSONSerializer).work(burst=True)
    [key] = [k.decode().removeprefix(CALLBACK_PREFIX) for k in messaging.redis.keys(CALLBACK_PREFIX + "*")]
    [second_look] = queue.scheduled_job_registry.get_job_ids()  # the first look found no send
    assert second_look.startswith(key + "-")
    assert messaging.record(event["id"]).actions["aviso/wa"].delivery == []
    messaging.drain()  # the second look, 2 s later
    assert [d["status"] for d in messaging.record(event["id"]).actions["aviso/wa"].delivery] == ["sent"]


def test_a_whatsapp_callback_that_is_signed_but_not_json_is_400_and_not_stored(messaging: Bridge) -> None:
    answer = post_whatsapp(messaging, b"{not json")
    assert answer.status_code == 400 and "not valid JSON" in answer.json["error"]
    assert messaging.keys_written() == []


def test_a_status_for_a_message_no_action_sent_is_logged_not_retried_for_ever(messaging: Bridge, caplog) -> None:  # noqa: ANN001
    post_whatsapp(messaging, status_callback("wamid.nobody", "delivered"))
    [key] = messaging.redis.keys(CALLBACK_PREFIX + "*")
    messaging.redis.hset(key, "received_at", time.time() - 120)  # past the wait for a send being recorded
    messaging.drain()
    assert "wamid.nobody" in caplog.text and "no action sent" in caplog.text
    assert messaging.runtime.queue.count == 0 and messaging.runtime.queue.scheduled_job_registry.count == 0


# ---- opt-out and opt-in ------------------------------------------------------------------------------


@pytest.mark.parametrize("words", ["BAJA", "  ¡Baja! ", "stop.", "Cancelar suscripción"])
def test_a_customer_who_writes_an_opt_out_word_gets_nothing_more(
    messaging: Bridge, graph: GraphServer, twilio: TwilioServer, destination: CapturingServer, words: str
) -> None:
    post_whatsapp(messaging, message_callback("34612345678", words))
    messaging.drain()
    event_id = send_booking(messaging)
    state = messaging.record(event_id).actions["aviso/wa"]
    today = datetime.fromtimestamp(1764680000, MADRID).date().isoformat()
    assert (state.status, state.detail) == (Status.SKIPPED, f"skipped: opted out on {today}")
    assert graph.requests == [] and twilio.requests == [] and destination.requests == []  # no fallback either


def test_alta_opts_back_in_and_an_older_baja_processed_later_does_not_undo_it(
    messaging: Bridge, graph: GraphServer
) -> None:
    post_whatsapp(messaging, message_callback("34612345678", "Alta", timestamp="1764680100"))
    post_whatsapp(messaging, message_callback("34612345678", "BAJA", timestamp="1764680000"))  # older, arrives late
    messaging.drain()
    graph.accept("wamid.D")
    event_id = send_booking(messaging)
    assert messaging.record(event_id).actions["aviso/wa"].status == Status.DONE and len(graph.requests) == 1


def test_other_messages_change_nothing_and_a_twilio_inbound_stop_opts_out(
    messaging: Bridge, graph: GraphServer
) -> None:
    post_whatsapp(messaging, message_callback("34612345678", "¿Puedo cambiar mi cita de baja?"))
    inbound = {"MessageSid": "SMin", "SmsStatus": "received", "From": PHONE, "To": "+34600000000", "Body": " Stop "}
    messaging.drain()
    graph.accept("wamid.E")
    first = send_booking(messaging)
    assert messaging.record(first).actions["aviso/wa"].status == Status.DONE
    assert post_twilio(messaging, inbound).status_code == 200
    messaging.drain()
    second = send_booking(messaging)
    assert messaging.record(second).actions["aviso/wa"].status == Status.SKIPPED
    assert len(graph.requests) == 1


# ---- fallbacks ---------------------------------------------------------------------------------------


def test_a_dead_action_runs_its_fallback_once_and_a_replay_does_not_run_it_again(
    messaging: Bridge, graph: GraphServer, twilio: TwilioServer
) -> None:
    graph.fail(190, "Error validating access token")
    twilio.accept("SM1")
    event_id = send_booking(messaging)
    actions = messaging.record(event_id).actions
    assert actions["aviso/wa"].status == Status.DEAD and "renew the token" in actions["aviso/wa"].last_error
    assert actions["aviso/wa/fallback"].status == Status.DONE and len(twilio.requests) == 1
    from bridge.operations import replay

    graph.fail(190, "Error validating access token")
    replay(messaging.runtime, event_id, "aviso/wa")
    messaging.drain()
    assert messaging.record(event_id).actions["aviso/wa"].status == Status.DEAD
    assert len(graph.requests) == 2 and len(twilio.requests) == 1


def _worker_process(config: Path, redis_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": redis_url}
    command = [sys.executable, "-m", "bridge.cli", "worker", "--config", str(config)]
    quiet = subprocess.DEVNULL
    return subprocess.Popen(command, env=env, stdout=quiet, stderr=quiet, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("killed_in", ["the-first-action", "its-fallback"])
def test_a_killed_worker_leaves_exactly_one_fallback(
    make_bridge, graph, twilio, destination, redis_url, write_config, killed_in  # noqa: ANN001
) -> None:  # fmt: skip
    text = config_text(graph.url, twilio.url, destination.url, redis_url=redis_url)
    bridge = make_bridge(text)
    refusal = json.dumps({"error": {"message": "Message undeliverable", "code": 131026}})
    accepted = json.dumps({"sid": "SMonce", "status": "queued", "to": PHONE, "from": "+34600000000", "body": ""})
    # The call that hangs while the worker is killed: Meta's refusal, or Twilio's acceptance.
    hanging = graph if killed_in == "the-first-action" else twilio
    graph.respond_with(400, refusal, delay=30 if hanging is graph else 0)
    graph.respond_with(400, refusal)
    twilio.respond_with(201, accepted, delay=30 if hanging is twilio else 0)
    twilio.respond_with(201, accepted)
    event = sample("booking.created")
    bridge.post(event)
    worker = _worker_process(write_config(text, "worker.yaml"), redis_url)
    try:
        assert hanging.received.wait(30), "the worker never made the call"
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    actions = bridge.record(event["id"]).actions
    if hanging is graph:
        assert actions["aviso/wa"].status == Status.SENDING and "aviso/wa/fallback" not in actions
    else:
        assert (actions["aviso/wa"].status, actions["aviso/wa/fallback"].status) == (Status.DEAD, Status.SENDING)
    # As in test_jobs: let RQ's maintenance and the locks' expiry happen now instead of in minutes.
    StartedJobRegistry(queue=bridge.runtime.queue).cleanup(timestamp=int(time.time()) + 3600)
    bridge.redis.delete(RQScheduler.get_locking_key(bridge.runtime.queue.name), *bridge.redis.keys("sb:lock:*"))
    bridge.drain(timeout=30)
    actions = bridge.record(event["id"]).actions
    assert sorted(actions) == ["aviso/wa", "aviso/wa/fallback"]
    assert (actions["aviso/wa"].status, actions["aviso/wa/fallback"].status) == (Status.DEAD, Status.DONE)
    # The interrupted call runs again (it may have reached the destination: counted as a possible
    # duplicate); nothing else does.
    assert (len(graph.requests), len(twilio.requests)) == ((2, 1) if hanging is graph else (1, 2))
    assert bridge.redis.get(POSSIBLE_DUPLICATES_KEY) == b"1"


def test_a_scheduled_reminder_falls_back_at_its_time(
    make_bridge: Callable[[str], Bridge], graph: GraphServer, twilio: TwilioServer, destination: CapturingServer
) -> None:
    start = (datetime.now(MADRID) + timedelta(minutes=3, seconds=4)).replace(second=0, microsecond=0)
    offset = round(start.timestamp() - time.time() - 4)  # due 4 s from now
    schedule = f'schedule: {{at: "booking.start - {offset}s"}}'
    bridge = make_bridge(config_text(graph.url, twilio.url, destination.url, schedule=schedule))
    graph.fail(131026, "Message undeliverable")
    twilio.fail(21211, "Invalid 'To' Phone Number")
    event = sample("booking.created")
    event["data"]["booking"].update(fecha=start.date().isoformat(), hora_inicio=start.strftime("%H:%M"),
                                    hora_fin=(start + timedelta(minutes=30)).strftime("%H:%M"))  # fmt: skip
    bridge.post(event)
    bridge.drain()
    assert bridge.record(event["id"]).actions["aviso/wa"].status == Status.SCHEDULED
    due = start.timestamp() - offset
    while time.time() < due + 1:
        bridge.drain()
        time.sleep(0.2)
    bridge.drain()
    actions = bridge.record(event["id"]).actions
    assert [actions[a].status for a in ("aviso/wa", "aviso/wa/fallback", "aviso/wa/fallback/fallback")] == [
        Status.DEAD, Status.DEAD, Status.DONE
    ]  # fmt: skip
    assert [r.json() for r in destination.requests] == [{"id": event["id"]}]
    assert actions["aviso/wa/fallback/fallback"].plan == actions["aviso/wa"].plan
    assert schedules.pending(bridge.redis) == []
