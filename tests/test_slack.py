"""The slack connector, against a fake Slack driven through the real slack_sdk and a real Redis.

End to end (signed webhook in, worker, Slack out) with the shipped default messages of
docs/examples/slack.yaml, plus focused tests of the connector's threads, errors and checks.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from bridge.jobs import POSSIBLE_DUPLICATES_KEY
from bridge.state import RedisConnectorStore
from bridge.store import Status
from connectors.base import ActionRequest, PermanentError, TransientError
from connectors.slack import PostMessage, SlackConnector, SlackSettings
from mappings.config import ConfigError, load_config, load_config_text
from tests.fakes.slack_server import BOT_NAME, DEFAULT_TOKEN, Channel, FakeSlack, Message
from tests.harness import SECRET, Bridge, sample

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "slack.yaml"
TENANT = "uuid-tenant"

HOSTILE_NAME = "<!channel> Ana & <@U0ADMIN>"
HOSTILE_NOTE = "<https://evil.example/login|Pulsa aquí> para <!here>"


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    for name in ("caja", "recepcion", "tienda"):
        fake.add_channel(name)
    yield fake
    fake.stop()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    connection = Redis.from_url(redis_url)
    yield connection
    connection.close()


def shipped_mappings() -> str:
    """The `mappings:` entries of docs/examples/slack.yaml, exactly as shipped."""
    return EXAMPLE.read_text(encoding="utf-8").split("\nmappings:\n", 1)[1]


def config_text(fake: FakeSlack, mappings: str | None = None, connector: str | None = None) -> str:
    """A config whose `staff` connector talks to the fake; the mappings default to the shipped ones."""
    if connector is None:
        connector = f'    token: "{DEFAULT_TOKEN}"\n    base_url: "{fake.api_url}"\n    timeout: 2\n'
    return (
        "version: 1\ntimezone: Europe/Madrid\n"
        f'webhook:\n  secrets: ["{SECRET}"]\n'
        "retry:\n  schedule: [0.1, 0.1, 0.1]\n  jitter: 0\n"
        f"connectors:\n  staff:\n    type: slack\n{connector}"
        f"mappings:\n{shipped_mappings() if mappings is None else mappings}"
    )


def run(bridge: Bridge, *events: dict[str, Any]) -> None:
    """Post events in this order, each processed before the next arrives."""
    for event in events:
        assert bridge.post(event).status_code == 202, event["type"]
        bridge.drain()


def booking_event(event_type: str, booking_id: int = 12345, **booking: Any) -> dict[str, Any]:
    event = sample(event_type)
    event["data"]["booking"]["id"] = booking_id
    event["data"]["booking"].update(booking)
    return event


def make_connector(fake: FakeSlack, **settings: Any) -> SlackConnector:
    values = {"type": "slack", "token": DEFAULT_TOKEN, "base_url": fake.api_url, "timeout": 2, **settings}
    if "webhook_url" in settings:
        values.pop("token")
    return SlackConnector("staff", SlackSettings.model_validate(values))


def make_request(
    redis: Redis, event_id: str = "evt_1", action_id: str = "m/a", tenant: str = TENANT, **fields: Any
) -> ActionRequest:
    """One action as the core hands it over: validated fields (already rendered) and the store."""
    values = PostMessage.model_validate({"channel": "#recepcion", "text": "hola", **fields}).model_dump()
    return ActionRequest(
        action="post_message",
        fields=values,
        event_id=event_id,
        event_type="booking.no_show",
        event_created="2024-01-25T11:30:00Z",
        tenant_id=tenant,
        action_id=action_id,
        store=RedisConnectorStore(redis, "staff"),
    )


def only(messages: list[Message]) -> Message:
    assert len(messages) == 1, [m.text for m in messages]
    return messages[0]


def channel(fake: FakeSlack, name: str) -> Channel:
    return next(c for c in fake.channels.values() if c.name == name)


# -- the shipped config ------------------------------------------------------------------------


def test_the_shipped_fragment_loads_as_written(write_config: Callable[..., Path]) -> None:
    text = f'version: 1\nwebhook:\n  secrets: ["{SECRET}"]\n' + EXAMPLE.read_text(encoding="utf-8")
    config = load_config(write_config(text), environ={"SLACK_BOT_TOKEN": "xoxb-real-looking"})
    assert sorted(m.name for m in config.mappings) == [
        "slack-booking-cancelled",
        "slack-new-order",
        "slack-no-show",
        "slack-payment-failed",
        "slack-payment-refunded",
    ]
    settings = config.connectors["staff"].settings
    assert isinstance(settings, SlackSettings) and settings.base_url == "https://slack.com/api/"
    # Shipped in dry run: without the token set, the example still loads and only warns.
    unset = load_config(write_config(text), environ={})
    assert unset.connectors["staff"].dry_run and "SLACK_BOT_TOKEN is not set" in unset.warnings[0]


def test_payment_failed_default_message(make_bridge: Callable[[str], Bridge], slack: FakeSlack) -> None:
    bridge = make_bridge(config_text(slack))
    event = sample("payment.failed")
    run(bridge, event)
    message = only(slack.top_level(channel(slack, "caja")))
    assert message.text == ":x: *Pago fallido* de 25,00 € · Tu tarjeta fue rechazada (card_declined)"
    assert bridge.record(event["id"]).actions["slack-payment-failed/caja"].status == Status.DONE


def test_payment_failed_names_the_booking_when_remembered(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    bridge = make_bridge(config_text(slack))
    run(bridge, sample("booking.created"), booking_event("payment.failed"))
    message = only(slack.top_level(channel(slack, "caja")))
    assert message.text == (
        ":x: *Pago fallido* de 25,00 € · reserva ABC123XY · Juan Pérez · cita del 25/01/2024"
        " · Tu tarjeta fue rechazada (card_declined)"
    )


def test_payment_refunded_default_message_joins_the_bookings_thread_in_caja(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    bridge = make_bridge(config_text(slack))
    run(bridge, sample("booking.created"), booking_event("payment.failed"), sample("payment.refunded"))
    parent = only(slack.top_level(channel(slack, "caja")))
    reply = only(slack.replies(parent))
    assert reply.text == (
        ":leftwards_arrow_with_hook: *Reembolso* de 25,00 € · reserva ABC123XY · Juan Pérez"
        " · Motivo: Cancelación por cliente"
    )


def test_no_show_default_message_uses_entity_memory(make_bridge: Callable[[str], Bridge], slack: FakeSlack) -> None:
    bridge = make_bridge(config_text(slack))
    run(bridge, sample("booking.created"), sample("booking.no_show"))
    message = only(slack.top_level(channel(slack, "recepcion")))
    assert message.text == (
        ":no_entry_sign: *No se presentó:* Juan Pérez · jueves, 25 de enero de 2024 a las 10:30"
        " · con Carlos García · reserva ABC123XY · tel. +34612345678 · Notas: Primera visita"
    )


def test_no_show_without_memory_is_still_sent_with_what_is_known(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    bridge = make_bridge(config_text(slack))
    event = sample("booking.no_show")
    run(bridge, event)
    assert only(slack.top_level()).text == ":no_entry_sign: *No se presentó:* cliente sin datos"
    state = bridge.record(event["id"]).actions["slack-no-show/recepcion"]
    assert (state.status, state.attempts) == (Status.DONE, 1)


def test_cancellation_default_message_and_strike_through_of_the_first_message(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    bridge = make_bridge(config_text(slack))
    run(bridge, sample("booking.created"), sample("booking.no_show"), sample("booking.cancelled"))
    parent = only(slack.top_level(channel(slack, "recepcion")))
    reply = only(slack.replies(parent))
    assert reply.text == (
        ":wastebasket: *Reserva cancelada* por el cliente: Juan Pérez · jueves, 25 de enero de 2024 a las 10:30"
        " · con Carlos García · reserva ABC123XY · Motivo: Cambio de planes · Reembolso: 25,00 € (pendiente)"
    )
    assert parent.edits[0]["text"].startswith(":no_entry_sign: *No se presentó:* Juan Pérez")
    assert parent.text == "~Juan Pérez · 25/01/2024 10:30 · ABC123XY~ · cancelada (ver hilo)"
    [update] = slack.calls_of("chat.update")
    assert update.params["channel"] == parent.channel and update.params["ts"] == parent.ts


def test_cancellation_without_refund_or_reason(make_bridge: Callable[[str], Bridge], slack: FakeSlack) -> None:
    bridge = make_bridge(config_text(slack))
    event = sample("booking.cancelled")
    event["data"]["cancellation"].update(cancelled_by="negocio", reason="")
    event["data"]["refund"] = {"applicable": False, "amount": 0, "status": "none"}
    run(bridge, event)
    assert only(slack.top_level()).text == (
        ":wastebasket: *Reserva cancelada* por el salón: cliente sin datos · reserva ABC123XY · Sin reembolso"
    )


def test_new_order_default_message_with_blocks(make_bridge: Callable[[str], Bridge], slack: FakeSlack) -> None:
    bridge = make_bridge(config_text(slack))
    run(bridge, sample("order.created"))
    message = only(slack.top_level(channel(slack, "tienda")))
    assert message.text == ":shopping_bags: Nuevo pedido PED-2024-0789 de Juan Pérez · 35,00 €"
    assert message.blocks == [
        {"type": "header", "text": {"type": "plain_text", "text": "Nuevo pedido PED-2024-0789"}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": "*Juan Pérez* · juan@email.com\n• 2 × Shampoo Profesional · 30,00 €\n"
                "Envío: 5,00 € · *Total: 35,00 €*",
            },
        },
    ]


# -- escaping ----------------------------------------------------------------------------------


def assert_inert(text: str) -> None:
    """Nothing in the text can ping, mention or link: Slack's control characters are all escaped."""
    assert "<" not in text and ">" not in text
    assert "&amp;" in text or "&lt;" in text


def test_hostile_name_and_notes_show_as_typed_and_ping_nobody(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    bridge = make_bridge(config_text(slack))
    created = sample("booking.created")
    created["data"]["booking"]["cliente"]["nombre"] = HOSTILE_NAME
    created["data"]["booking"]["notas"] = HOSTILE_NOTE
    cancelled = sample("booking.cancelled")
    cancelled["data"]["cancellation"]["reason"] = "<!everyone> 50% & <#C0GENERAL>"
    run(bridge, created, sample("booking.no_show"), cancelled)
    parent = only(slack.top_level())
    reply = only(slack.replies(parent))
    for text in (parent.edits[0]["text"], reply.text, parent.text):
        assert_inert(text)
    assert "&lt;!channel&gt; Ana &amp; &lt;@U0ADMIN&gt;" in parent.edits[0]["text"]
    assert "Notas: &lt;https://evil.example/login|Pulsa aquí&gt; para &lt;!here&gt;" in parent.edits[0]["text"]
    assert "Motivo: &lt;!everyone&gt; 50% &amp; &lt;#C0GENERAL&gt;" in reply.text
    # The template's own markup is untouched: only what came from the event is escaped.
    assert parent.text.startswith("~&lt;!channel&gt; Ana") and parent.text.endswith("~ · cancelada (ver hilo)")


def test_hostile_order_data_is_escaped_inside_blocks(make_bridge: Callable[[str], Bridge], slack: FakeSlack) -> None:
    bridge = make_bridge(config_text(slack))
    event = sample("order.created")
    event["data"]["order"]["cliente"]["nombre"] = HOSTILE_NAME
    event["data"]["order"]["items"][0]["nombre"] = "Champú <https://evil.example|GRATIS>"
    run(bridge, event)
    message = only(slack.top_level())
    assert_inert(message.text)
    section = message.blocks[1]["text"]["text"]  # type: ignore[index]
    assert_inert(section)
    assert section.startswith("*&lt;!channel&gt; Ana &amp; &lt;@U0ADMIN&gt;*")
    assert "• 2 × Champú &lt;https://evil.example|GRATIS&gt; · 30,00 €" in section


def test_payment_error_message_is_escaped(make_bridge: Callable[[str], Bridge], slack: FakeSlack) -> None:
    bridge = make_bridge(config_text(slack))
    event = sample("payment.failed")
    event["data"]["payment"]["error_message"] = "<!subteam^S0STAFF> rechazada > 3 veces"
    run(bridge, event)
    text = only(slack.top_level()).text
    assert_inert(text)
    assert "&lt;!subteam^S0STAFF&gt; rechazada &gt; 3 veces" in text


RAW_AND_PLAIN = """
  - name: custom
    on: ["booking.created"]
    actions:
      - connector: staff
        channel: "#recepcion"
        text: "<https://agenda.example/{{ data.booking.id }}|Reserva> de {{ data.booking.cliente.nombre }}"
        blocks:
          - type: header
            text: {type: plain_text, text: "{{ data.booking.cliente.nombre }}"}
          - type: context
            elements:
              - {type: mrkdwn, text: "{{ data.booking.notas }}"}
              - {type: mrkdwn, text: "{{ data.booking.notas | raw }}"}
"""


def test_template_markup_stays_event_data_is_escaped_and_raw_opts_out(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    bridge = make_bridge(config_text(slack, mappings=RAW_AND_PLAIN))
    event = sample("booking.created")
    event["data"]["booking"]["cliente"]["nombre"] = HOSTILE_NAME
    event["data"]["booking"]["notas"] = "<!here>"
    run(bridge, event)
    message = only(slack.top_level())
    assert message.text == "<https://agenda.example/12345|Reserva> de &lt;!channel&gt; Ana &amp; &lt;@U0ADMIN&gt;"
    assert message.blocks is not None
    # plain_text gets the same escaping: Slack decodes &amp; &lt; &gt; in every text object.
    assert message.blocks[0]["text"]["text"] == "&lt;!channel&gt; Ana &amp; &lt;@U0ADMIN&gt;"
    escaped, raw = message.blocks[1]["elements"]
    assert (escaped["text"], raw["text"]) == ("&lt;!here&gt;", "<!here>")


# -- threads -----------------------------------------------------------------------------------

THREADED = """
  - name: notices
    on: ["booking.no_show", "payment.failed"]
    actions:
      - connector: staff
        name: post
        channel: "#recepcion"
        thread_key: "booking-{{ data.booking.id }}"
        text: "{{ type }} {{ data.booking.id }}"
  - name: cancellations
    on: ["booking.cancelled"]
    actions:
      - connector: staff
        name: post
        channel: "#recepcion"
        thread_key: "booking-{{ data.booking.id }}"
        text: "booking.cancelled {{ data.booking.id }}"
        update_parent: true
        parent_text: "~booking {{ data.booking.id }}~ cancelled"
"""


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations(["booking.no_show", "payment.failed", "booking.cancelled"])),
    ids=lambda order: " > ".join(t.split(".")[1] for t in order),
)
def test_follow_ups_stay_in_one_thread_whatever_the_order(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack, order: tuple[str, ...]
) -> None:
    bridge = make_bridge(config_text(slack, mappings=THREADED))
    other_booking = booking_event("booking.no_show", booking_id=999)
    events = [booking_event(t) for t in order]
    run(bridge, events[0], other_booking, *events[1:])

    first_texts = {(m.edits[0]["text"] if m.edits else m.text): m for m in slack.top_level()}
    assert sorted(first_texts) == sorted([f"{order[0]} 12345", "booking.no_show 999"])  # one thread per booking
    parent = first_texts[f"{order[0]} 12345"]
    assert [m.text for m in slack.replies(parent)] == [f"{t} 12345" for t in order[1:]]
    if order[0] == "booking.cancelled":
        # The cancellation became the thread's first message: nothing to edit.
        assert slack.calls_of("chat.update") == [] and parent.text == "booking.cancelled 12345"
    else:
        assert len(slack.calls_of("chat.update")) == 1 and parent.text == "~booking 12345~ cancelled"
    for event in events:
        assert (
            bridge.record(event["id"])
            .actions[f"{'cancellations' if event['type'] == 'booking.cancelled' else 'notices'}/post"]
            .status
            == Status.DONE
        )


def test_threads_are_per_channel_and_per_salon(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack)
    connector.send(make_request(redis, "evt_1", thread_key="booking-1"))
    connector.send(make_request(redis, "evt_2", thread_key="booking-1", channel="#caja"))
    connector.send(make_request(redis, "evt_3", thread_key="booking-1", tenant="other-salon"))
    connector.send(make_request(redis, "evt_4", thread_key="booking-1"))
    assert len(slack.top_level()) == 3
    [reply] = [m for m in slack.messages if m.thread_ts]
    assert reply.thread_ts == slack.messages[0].ts


def test_a_message_being_posted_as_parent_makes_the_next_one_wait(redis: Redis, slack: FakeSlack) -> None:
    first, second = make_connector(slack), make_connector(slack)  # two workers
    slack.slow("chat.postMessage", 1.0)
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(first.send(make_request(redis, "evt_1", thread_key="booking-1")))
    )
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while not slack.calls_of("chat.postMessage") and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(TransientError) as busy:
            second.send(make_request(redis, "evt_2", thread_key="booking-1"))
    finally:
        worker.join()
    assert busy.value.retry_after == 5
    assert "being posted to #recepcion right now" in busy.value.reason
    assert len(slack.messages) == 1 and outcome[0].data["thread_ts"] == slack.messages[0].ts
    second.send(make_request(redis, "evt_2", thread_key="booking-1"))  # the retry
    assert slack.messages[1].thread_ts == slack.messages[0].ts


def test_a_failed_parent_post_lets_the_next_message_become_the_parent(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack)
    slack.fail("chat.postMessage", "internal_error")
    with pytest.raises(TransientError):
        connector.send(make_request(redis, "evt_1", thread_key="booking-1"))
    connector.send(make_request(redis, "evt_2", thread_key="booking-1"))
    assert only(slack.top_level()).thread_ts is None and slack.messages[0].text == "hola"


def test_own_claim_left_by_a_dead_attempt_is_taken_over(redis: Redis, slack: FakeSlack) -> None:
    store = RedisConnectorStore(redis, "staff")
    store.set(f"thread:{TENANT}:recepcion:booking-1", "pending evt_1 m/a", ttl=300)
    make_connector(slack).send(make_request(redis, "evt_1", thread_key="booking-1"))
    parent = only(slack.top_level())
    assert store.get(f"thread:{TENANT}:recepcion:booking-1") == f"{parent.channel} {parent.ts}"


def test_a_retry_after_the_reply_was_posted_only_edits_the_parent(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack)
    connector.send(make_request(redis, "evt_1", thread_key="booking-1"))
    cancel = make_request(
        redis, "evt_2", thread_key="booking-1", text="cancelada", update_parent=True, parent_text="~hola~"
    )
    slack.fail("chat.update", status=503, body=b"<html>Service Unavailable</html>")
    with pytest.raises(TransientError) as failed:
        connector.send(cancel)
    assert failed.value.reason == "Slack had a problem on its side (chat.update: HTTP 503)"
    result = connector.send(cancel)
    parent = only(slack.top_level())
    assert [m.text for m in slack.replies(parent)] == ["cancelada"]  # not posted twice
    assert parent.text == "~hola~" and "already posted" in result.detail


def test_a_deleted_parent_is_reported_not_retried(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack)
    connector.send(make_request(redis, "evt_1", thread_key="booking-1"))
    slack.messages.clear()  # someone deleted the first message in Slack
    result = connector.send(
        make_request(redis, "evt_2", thread_key="booking-1", text="x", update_parent=True, parent_text="~y~")
    )
    assert "was deleted in Slack; nothing to update" in result.detail


def test_the_same_action_is_not_posted_twice(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack)
    connector.send(make_request(redis, "evt_1"))
    again = connector.send(make_request(redis, "evt_1"))
    assert len(slack.messages) == 1 and again.detail.startswith("already posted to #recepcion")


def test_a_rerun_of_a_cancellation_that_became_the_parent_edits_nothing(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack)
    cancel = make_request(
        redis, "evt_1", thread_key="booking-1", text="cancelada", update_parent=True, parent_text="~x~"
    )
    connector.send(cancel)
    connector.send(cancel)  # the worker died after Slack answered, before the ledger was written
    assert only(slack.top_level()).text == "cancelada" and slack.calls_of("chat.update") == []


def test_message_options_reach_slack(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack)
    connector.send(make_request(redis, "evt_1", thread_key="k", username="Recepción", icon_emoji=":scissors:"))
    connector.send(make_request(redis, "evt_2", thread_key="k", reply_broadcast=True))
    first, second = slack.calls_of("chat.postMessage")
    assert (first.params["username"], first.params["icon_emoji"]) == ("Recepción", ":scissors:")
    assert (first.params["unfurl_links"], first.params["unfurl_media"], first.params["link_names"]) == (
        False,
        False,
        False,
    )
    assert "thread_ts" not in first.params and "reply_broadcast" not in first.params
    assert second.params["reply_broadcast"] is True and second.params["thread_ts"] == slack.messages[0].ts
    assert first.headers["Authorization"] == f"Bearer {DEFAULT_TOKEN}"


# -- errors ------------------------------------------------------------------------------------


def _no_public_scope(fake: FakeSlack) -> dict[str, Any]:
    fake.scopes.remove("chat:write.public")
    fake.add_channel("privado", member=False)
    return {"channel": "#privado"}


def _archived(fake: FakeSlack) -> dict[str, Any]:
    fake.add_channel("viejo", archived=True)
    return {"channel": "#viejo"}


def _revoked(fake: FakeSlack) -> dict[str, Any]:
    fake.revoked = True
    return {}


def _only_read_scopes(fake: FakeSlack) -> dict[str, Any]:
    fake.scopes = ["channels:read"]
    return {}


def _inactive(fake: FakeSlack) -> dict[str, Any]:
    fake.fail("chat.postMessage", "account_inactive")
    return {}


PERMANENT = [
    ("channel_not_found", lambda fake: {"channel": "#no-existe"}, "check the name in the mapping"),
    ("not_in_channel", _no_public_scope, "invite it (in #privado, type /invite @<app name>)"),
    ("is_archived", _archived, "#viejo is archived"),
    ("invalid_auth", lambda fake: {"token": "xoxb-wrong"}, "SLACK_BOT_TOKEN holds the app's Bot User OAuth Token"),
    ("account_inactive", _inactive, "reinstall the app to the workspace"),
    ("token_revoked", _revoked, "reinstall the app"),
    ("missing_scope", _only_read_scopes, "lacks the scope chat:write: add it under OAuth & Permissions"),
    ("invalid_blocks", lambda fake: {"blocks": [{"type": "section"}]}, "must provide text or fields"),
]


@pytest.mark.parametrize(("error", "arrange", "advice"), PERMANENT, ids=[p[0] for p in PERMANENT])
def test_permanent_errors_say_what_to_do(
    redis: Redis, slack: FakeSlack, error: str, arrange: Callable[[FakeSlack], dict[str, Any]], advice: str
) -> None:
    fields = arrange(slack)
    token = fields.pop("token", DEFAULT_TOKEN)
    connector = make_connector(slack, token=token)
    with pytest.raises(PermanentError) as failed:
        connector.send(make_request(redis, thread_key="booking-1", **fields))
    assert advice in failed.value.reason and f"(Slack: {error})" in failed.value.reason
    assert token not in failed.value.reason
    assert slack.messages == []
    # The failed first message released its claim: a corrected retry can become the parent.
    name = fields.get("channel", "#recepcion").removeprefix("#")
    assert RedisConnectorStore(redis, "staff").get(f"thread:{TENANT}:{name}:booking-1") is None


TRANSIENT = [
    ("429", {"status": 429, "error": "ratelimited", "headers": {"Retry-After": "7"}}, 7.0, "rate limiting"),
    ("ratelimited-200", {"error": "ratelimited", "headers": {"Retry-After": "3"}}, 3.0, "rate limiting"),
    ("500-html", {"status": 500, "body": b"<html>Internal Server Error</html>"}, None, "HTTP 500"),
    ("503-json", {"status": 503, "error": "service_unavailable"}, None, "service_unavailable"),
    ("internal_error", {"error": "internal_error"}, None, "internal_error"),
    ("fatal_error", {"error": "fatal_error"}, None, "fatal_error"),
]


@pytest.mark.parametrize(("name", "failure", "retry_after", "reason"), TRANSIENT, ids=[t[0] for t in TRANSIENT])
def test_transient_errors_are_retried(
    redis: Redis, slack: FakeSlack, name: str, failure: dict[str, Any], retry_after: float | None, reason: str
) -> None:
    slack.fail("chat.postMessage", **failure)
    connector = make_connector(slack)
    with pytest.raises(TransientError) as failed:
        connector.send(make_request(redis))
    assert failed.value.retry_after == retry_after
    assert reason in failed.value.reason
    connector.send(make_request(redis))  # the next attempt goes through
    assert len(slack.messages) == 1


def test_a_timeout_is_transient(redis: Redis, slack: FakeSlack) -> None:
    slack.fail("chat.postMessage", delay=3)
    with pytest.raises(TransientError) as failed:
        make_connector(slack, timeout=0.3).send(make_request(redis))
    assert failed.value.reason == "Slack did not answer chat.postMessage within 0.3 s"
    assert failed.value.maybe_delivered  # sent, never answered: Slack may have posted it


def test_a_timed_out_edit_is_not_a_possible_duplicate(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack, timeout=0.3)
    connector.send(make_request(redis, "evt_1", thread_key="booking-1"))
    slack.fail("chat.update", delay=3)
    with pytest.raises(TransientError) as failed:
        connector.send(make_request(redis, "evt_2", thread_key="booking-1", update_parent=True, parent_text="~x~"))
    assert failed.value.reason == "Slack did not answer chat.update within 0.3 s"
    assert not failed.value.maybe_delivered  # an edit done twice is the same edit


def test_an_unreachable_slack_is_transient(redis: Redis) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = SlackSettings(type="slack", token=DEFAULT_TOKEN, base_url=f"http://127.0.0.1:{port}/api/")
    with pytest.raises(TransientError) as failed:
        SlackConnector("staff", settings).send(make_request(redis))
    assert failed.value.reason.startswith("cannot reach Slack (chat.postMessage): ")
    assert not failed.value.maybe_delivered


# -- late answers: posted, but the answer came after the timeout ---------------------------------

MARKER = {"event_type": "salon_bridge_action", "event_payload": {"action": "evt_1/m/a"}}


def test_every_message_carries_its_action_as_metadata(redis: Redis, slack: FakeSlack) -> None:
    make_connector(slack).send(make_request(redis))
    assert only(slack.messages).metadata == MARKER


def test_a_late_answer_is_found_in_the_channel_not_posted_again(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack, timeout=0.3)
    slack.late("chat.postMessage", 1.0)
    with pytest.raises(TransientError) as late:
        connector.send(make_request(redis))
    assert late.value.maybe_delivered and len(slack.messages) == 1
    result = connector.send(make_request(redis))  # the retry
    message = only(slack.messages)
    assert (
        result.detail
        == f"found the message an earlier attempt posted in #recepcion (ts {message.ts}): not posted again"
    )
    assert result.data == {"channel": message.channel, "ts": message.ts}
    [search] = slack.calls_of("conversations.history")
    assert search.params["channel"] == message.channel and search.params["include_all_metadata"] == "1"
    assert float(search.params["oldest"]) < float(message.ts) < float(search.params["latest"])
    assert connector.send(make_request(redis)).detail.startswith("already posted")  # and remembered


def test_every_late_attempt_is_searched_for(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack, timeout=0.3)
    slack.fail("chat.postMessage", delay=1.0)  # no answer, and (this time) nothing posted
    with pytest.raises(TransientError):
        connector.send(make_request(redis))
    slack.late("chat.postMessage", 1.0)  # the second attempt searches, finds nothing, posts: late again
    with pytest.raises(TransientError):
        connector.send(make_request(redis))
    assert len(slack.messages) == 1
    assert connector.send(make_request(redis)).detail.startswith("found the message an earlier attempt posted")
    only(slack.messages)
    first_search, second_search = slack.calls_of("conversations.history")
    assert float(first_search.params["latest"]) < float(second_search.params["latest"])
    assert float(second_search.params["oldest"]) == float(first_search.params["oldest"])


def test_a_late_reply_is_found_in_its_thread(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack, timeout=0.3)
    connector.send(make_request(redis, "evt_0", thread_key="booking-1"))
    parent = only(slack.top_level())
    slack.late("chat.postMessage", 1.0)
    with pytest.raises(TransientError):
        connector.send(make_request(redis, "evt_1", thread_key="booking-1"))
    result = connector.send(make_request(redis, "evt_1", thread_key="booking-1"))
    assert len(slack.replies(parent)) == 1 and result.detail.startswith("found the message an earlier attempt")
    [search] = slack.calls_of("conversations.replies")
    assert search.params["ts"] == parent.ts


def test_an_answered_failure_is_posted_again_without_searching(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack)
    slack.fail("chat.postMessage", "internal_error")
    with pytest.raises(TransientError) as failed:
        connector.send(make_request(redis, thread_key="booking-1"))
    assert not failed.value.maybe_delivered
    connector.send(make_request(redis, thread_key="booking-1"))
    assert len(slack.messages) == 1 and slack.calls_of("conversations.history") == []


def test_a_parent_answered_late_keeps_its_thread(redis: Redis, slack: FakeSlack) -> None:
    first, second = make_connector(slack, timeout=0.3), make_connector(slack)
    slack.late("chat.postMessage", 1.0)
    with pytest.raises(TransientError):
        first.send(make_request(redis, "evt_1", thread_key="booking-1"))
    # The message may be in Slack: the thread stays claimed for its retry, others wait.
    with pytest.raises(TransientError, match="being posted"):
        second.send(make_request(redis, "evt_2", thread_key="booking-1"))
    first.send(make_request(redis, "evt_1", thread_key="booking-1"))
    second.send(make_request(redis, "evt_2", thread_key="booking-1"))
    parent = only(slack.top_level())
    assert [m.text for m in slack.replies(parent)] == ["hola"]


def test_a_search_that_fails_for_now_is_tried_again_later(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack, timeout=0.3)
    slack.late("chat.postMessage", 1.0)
    with pytest.raises(TransientError):
        connector.send(make_request(redis, thread_key="booking-1"))
    slack.fail("conversations.history", "internal_error")
    with pytest.raises(TransientError) as failed:
        connector.send(make_request(redis, thread_key="booking-1"))
    assert failed.value.reason == "Slack had a problem on its side (conversations.history: internal_error)"
    assert not failed.value.maybe_delivered
    connector.send(make_request(redis, thread_key="booking-1"))
    assert only(slack.messages).thread_ts is None


def test_without_history_scope_it_posts_again_and_says_so(
    redis: Redis, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    slack.scopes.remove("channels:history")
    connector = make_connector(slack, timeout=0.3)
    slack.late("chat.postMessage", 1.0)
    with pytest.raises(TransientError):
        connector.send(make_request(redis))
    with caplog.at_level(logging.WARNING, logger="salon_bridge.connectors.slack"):
        result = connector.send(make_request(redis))
    assert len(slack.top_level()) == 2
    assert result.detail.endswith(
        "could not check whether an earlier attempt posted it (Slack: missing_scope): it may show twice"
    )
    assert "cannot look for the message an earlier attempt of evt_1/m/a may have posted in #recepcion" in caplog.text


def test_a_rerun_after_a_crash_between_the_answer_and_its_record_finds_the_message(
    redis: Redis, slack: FakeSlack
) -> None:
    store = RedisConnectorStore(redis, "staff")
    make_connector(slack).send(make_request(redis, thread_key="booking-1"))
    # As if the worker died once Slack had answered, before the connector wrote anything down.
    store.delete("sent:evt_1:m/a")
    store.set(f"thread:{TENANT}:recepcion:booking-1", "pending evt_1 m/a", ttl=300)
    result = make_connector(slack).send(make_request(redis, thread_key="booking-1"))
    parent = only(slack.messages)
    assert result.detail.startswith("found the message an earlier attempt posted")
    assert store.get(f"thread:{TENANT}:recepcion:booking-1") == f"{parent.channel} {parent.ts}"


def test_a_forced_replay_posts_again_without_searching(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack, timeout=0.3)
    slack.late("chat.postMessage", 1.0)
    with pytest.raises(TransientError):
        connector.send(make_request(redis))
    connector.send(replace(make_request(redis), forced=True))
    assert len(slack.messages) == 2 and slack.calls_of("conversations.history") == []


def test_a_late_first_message_end_to_end_is_posted_once_and_keeps_its_thread(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    bridge = make_bridge(config_text(slack, mappings=THREADED).replace("timeout: 2", "timeout: 0.3"))
    slack.late("chat.postMessage", 1.0)  # posted, answered after the client's timeout
    no_show, failed = booking_event("booking.no_show"), booking_event("payment.failed")
    run(bridge, no_show, failed)
    parent = only(slack.top_level())
    assert parent.text == "booking.no_show 12345"
    assert [m.text for m in slack.replies(parent)] == ["payment.failed 12345"]
    state = bridge.record(no_show["id"]).actions["notices/post"]
    assert (state.status, state.attempts) == (Status.DONE, 2)
    assert state.detail.startswith("found the message an earlier attempt posted in #recepcion")
    # Counted when the answer did not come; the retry then found the message and posted nothing.
    assert bridge.redis.get(POSSIBLE_DUPLICATES_KEY) == b"1"


def test_a_late_first_message_without_history_scope_is_posted_twice_and_counted(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    slack.scopes.remove("channels:history")
    bridge = make_bridge(config_text(slack, mappings=THREADED).replace("timeout: 2", "timeout: 0.3"))
    slack.late("chat.postMessage", 1.0)
    no_show, failed = booking_event("booking.no_show"), booking_event("payment.failed")
    run(bridge, no_show, failed)
    first, second = slack.top_level()
    assert first.text == second.text == "booking.no_show 12345"
    assert [m.text for m in slack.replies(second)] == ["payment.failed 12345"]  # the retry's copy is the parent
    assert bridge.redis.get(POSSIBLE_DUPLICATES_KEY) == b"1"


def test_a_wrong_base_url_is_permanent(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack, base_url=slack.url + "/wrong/")
    with pytest.raises(PermanentError) as failed:
        connector.send(make_request(redis))
    assert (
        failed.value.reason
        == "Slack answered HTTP 404 to chat.postMessage: check base_url (normally https://slack.com/api/)"
    )


def test_rate_limit_is_rescheduled_without_holding_the_worker(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    bridge = make_bridge(config_text(slack))
    slack.fail("chat.postMessage", status=429, error="ratelimited", headers={"Retry-After": "120"})
    event = sample("payment.failed")
    before = time.time()
    bridge.post(event)
    # One burst of the worker returns at once: the 120 s wait is a scheduled job, not a sleeping worker.
    SimpleWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer).work(burst=True)
    state = bridge.record(event["id"]).actions["slack-payment-failed/caja"]
    assert state.status == Status.RETRYING and "rate limiting" in state.last_error
    assert state.next_attempt_at is not None and state.next_attempt_at >= before + 120
    [job_id] = bridge.runtime.queue.scheduled_job_registry.get_job_ids()
    assert bridge.runtime.queue.scheduled_job_registry.get_scheduled_time(job_id).timestamp() >= before + 119


def test_retry_after_is_honoured_then_the_message_goes_out_once(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    bridge = make_bridge(config_text(slack))
    slack.fail("chat.postMessage", status=429, error="ratelimited", headers={"Retry-After": "1"})
    event = sample("payment.failed")
    run(bridge, event)
    assert len(slack.calls_of("chat.postMessage")) == 2 and len(slack.messages) == 1
    state = bridge.record(event["id"]).actions["slack-payment-failed/caja"]
    assert (state.status, state.attempts) == (Status.DONE, 2)
    assert [h["outcome"] for h in state.history] == [Status.RETRYING, Status.DONE]


def test_permanent_error_end_to_end_goes_to_the_dead_letters(
    make_bridge: Callable[[str], Bridge], slack: FakeSlack
) -> None:
    del slack.channels[channel(slack, "caja").id]
    bridge = make_bridge(config_text(slack))
    event = sample("payment.failed")
    run(bridge, event)
    state = bridge.record(event["id"]).actions["slack-payment-failed/caja"]
    assert (state.status, state.attempts) == (Status.DEAD, 1)
    assert state.last_error.startswith("Slack has no channel #caja that the app can see")


# -- incoming-webhook mode ---------------------------------------------------------------------


def test_webhook_mode_end_to_end(make_bridge: Callable[[str], Bridge], slack: FakeSlack) -> None:
    connector = f'    webhook_url: "{slack.webhook_url}"\n    timeout: 2\n'
    bridge = make_bridge(config_text(slack, connector=connector))
    failed, order = sample("payment.failed"), sample("order.created")
    run(bridge, failed, order)
    assert slack.calls == []  # no Web API call at all
    first, second = slack.webhook_posts
    assert first["text"] == ":x: *Pago fallido* de 25,00 € · Tu tarjeta fue rechazada (card_declined)"
    assert "channel" not in first and "thread_ts" not in first
    assert second["blocks"][0]["text"]["text"] == "Nuevo pedido PED-2024-0789"
    state = bridge.record(failed["id"]).actions["slack-payment-failed/caja"]
    assert state.status == Status.DONE and "thread_key, channel ignored" in state.detail


WEBHOOK_PERMANENT = [
    (400, "invalid_payload", "the message is not valid for Slack"),
    (403, "invalid_token", "create a new webhook and update SLACK_WEBHOOK_URL"),
    (404, "no_service", "the incoming webhook was removed"),
    (404, "channel_not_found", "the webhook's channel no longer exists"),
    (410, "channel_is_archived", "the webhook's channel is archived"),
    (403, "something_new", "the Slack incoming webhook refused the message (HTTP 403: something_new)"),
]


@pytest.mark.parametrize(("status", "body", "advice"), WEBHOOK_PERMANENT, ids=[w[1] for w in WEBHOOK_PERMANENT])
def test_webhook_4xx_is_permanent(redis: Redis, slack: FakeSlack, status: int, body: str, advice: str) -> None:
    slack.fail_webhook(status, body)
    connector = make_connector(slack, webhook_url=slack.webhook_url)
    with pytest.raises(PermanentError) as failed:
        connector.send(make_request(redis))
    assert advice in failed.value.reason and "s3cr3tp4th" not in failed.value.reason


def test_a_webhook_timeout_may_have_been_delivered(redis: Redis, slack: FakeSlack) -> None:
    slack.fail_webhook(200, "ok", delay=1.0)
    with pytest.raises(TransientError) as failed:
        make_connector(slack, webhook_url=slack.webhook_url, timeout=0.3).send(make_request(redis))
    assert failed.value.reason == "the Slack incoming webhook did not answer within 0.3 s"
    assert failed.value.maybe_delivered  # and there is no history to look in


def test_webhook_5xx_and_429_are_transient(redis: Redis, slack: FakeSlack) -> None:
    connector = make_connector(slack, webhook_url=slack.webhook_url)
    slack.fail_webhook(500, "rollup_error")
    slack.fail_webhook(429, "rate_limited", headers={"Retry-After": "30"})
    with pytest.raises(TransientError) as server:
        connector.send(make_request(redis))
    assert server.value.reason == "the Slack incoming webhook failed (HTTP 500: rollup_error)"
    with pytest.raises(TransientError) as limited:
        connector.send(make_request(redis))
    assert limited.value.retry_after == 30
    connector.send(make_request(redis))
    assert [p["text"] for p in slack.webhook_posts] == ["hola"]


# -- configuration -----------------------------------------------------------------------------

BAD_SETTINGS = [
    ('    token: "xoxb-1"\n    webhook_url: "https://hooks.slack.com/services/x"\n', "not both"),
    ("    timeout: 5\n", 'set token: "${SLACK_BOT_TOKEN}"'),
    ('    token: "sk-not-slack-12345"\n', "does not look like a Slack token"),
    ('    token: "xapp-1-A0-123-abc"\n', "app-level token"),
    ('    webhook_url: "hooks.slack.com/services/x"\n', "must start with https://"),
]


@pytest.mark.parametrize(("settings", "message"), BAD_SETTINGS, ids=["both", "neither", "token", "xapp", "url"])
def test_bad_settings_stop_the_config(settings: str, message: str, slack: FakeSlack) -> None:
    with pytest.raises(ConfigError) as failed:
        load_config_text(config_text(slack, mappings="  []\n", connector=settings))
    assert message in str(failed.value)
    assert "sk-not-slack-12345" not in str(failed.value) and "xapp-1-A0-123-abc" not in str(failed.value)


BAD_ACTIONS = [
    ("update_parent: true", "update_parent needs a thread_key"),
    ('thread_key: "k"\n        update_parent: true', "update_parent needs parent_text"),
    ('parent_text: "~x~"', "used only with update_parent: true"),
    ('icon_emoji: "scissors"', "expected an emoji code like :scissors:"),
    ('channel: "caja general"', "expected a channel like #caja"),
    ("blocks: [{text: hola}]", "block 0 has no type"),
    ('text: "  "', "text is empty"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_ACTIONS, ids=[b[1].split(":")[0][:30] for b in BAD_ACTIONS])
def test_bad_actions_stop_the_config(extra: str, message: str, slack: FakeSlack) -> None:
    fields = {"text": 'text: "hola"', "channel": 'channel: "#caja"'}
    key = extra.split(":")[0]
    if key in fields:
        fields.pop(key)
    mapping = (
        '  - name: m\n    on: ["payment.failed"]\n    actions:\n      - connector: staff\n        '
        + "\n        ".join([*fields.values(), extra])
        + "\n"
    )
    with pytest.raises(ConfigError) as failed:
        load_config_text(config_text(slack, mappings=mapping))
    assert message in str(failed.value)


def test_offline_check_flags_fields_that_do_not_fit_the_route(slack: FakeSlack) -> None:
    token = make_connector(slack)
    hook = make_connector(slack, webhook_url=slack.webhook_url)
    plain, threaded = PostMessage(text="x"), PostMessage(channel="#caja", text="x", thread_key="k")
    assert token.offline_check({"m/a": threaded}) == [] and hook.offline_check({"m/a": plain}) == []
    assert token.offline_check({"m/a": plain}) == ['action m/a has no channel: add channel: "#name" to it']
    [problem] = hook.offline_check({"m/b": threaded})
    assert problem.startswith("action m/b: an incoming webhook") and "so channel, thread_key will be ignored" in problem


def test_a_token_action_without_channel_is_a_permanent_error(redis: Redis, slack: FakeSlack) -> None:
    request = make_request(redis)
    request = replace(request, fields={**request.fields, "channel": None})
    with pytest.raises(PermanentError) as failed:
        make_connector(slack).send(request)
    assert 'add channel: "#name"' in failed.value.reason


def test_text_rendered_blank_is_a_permanent_error(redis: Redis, slack: FakeSlack) -> None:
    request = make_request(redis)
    request = replace(request, fields={**request.fields, "text": " \n"})
    with pytest.raises(PermanentError) as failed:
        make_connector(slack).send(request)
    assert "rendered empty" in failed.value.reason and slack.calls == []


# -- online check (salon-bridge slack-check) ---------------------------------------------------


def shipped_actions(fake: FakeSlack) -> dict[str, Any]:
    """What the core hands to the checks: action id -> validated fields, for this connector."""
    config = load_config_text(config_text(fake))
    return {a.id: a.fields for m in config.mappings for a in m.actions if a.connector == "staff"}


def test_online_check_passes_for_the_shipped_config(slack: FakeSlack) -> None:
    assert make_connector(slack).online_check(shipped_actions(slack)) == []
    assert [c.method for c in slack.calls] == ["auth.test", "conversations.list"]


def test_online_check_without_actions_checks_the_token_only(slack: FakeSlack) -> None:
    assert make_connector(slack).online_check() == []
    assert [c.method for c in slack.calls] == ["auth.test"]


def test_online_check_reports_a_bad_token(slack: FakeSlack) -> None:
    [problem] = make_connector(slack, token="xoxb-wrong").online_check()
    assert problem.startswith("Slack refused the token: check that SLACK_BOT_TOKEN")
    assert "xoxb-wrong" not in problem


def test_online_check_reports_missing_scopes_and_channels(slack: FakeSlack) -> None:
    slack.scopes = ["channels:read", "groups:read"]
    del slack.channels[channel(slack, "tienda").id]
    channel(slack, "caja").is_member = False
    slack.add_channel("secreto", private=True, member=False)
    slack.page_size = 1  # several pages of channels
    actions = {**shipped_actions(slack), "m/x": PostMessage(channel="#secreto", text="x", username="Recepción")}
    problems = make_connector(slack).online_check(actions)
    assert problems == [
        "the Slack app lacks the scope chat:write: add it under OAuth & Permissions → Bot Token Scopes, "
        "reinstall the app to the workspace, and update SLACK_BOT_TOKEN if the token changed",
        "username/icon_emoji are ignored by Slack without the scope chat:write.customize; add it "
        "(OAuth & Permissions → Bot Token Scopes) and reinstall the app, or remove them",
        f"the app is not in #caja: invite it (in #caja, type /invite @{BOT_NAME})",
        f"channel #secreto not found: check the name in the mappings; if it is private, invite the app "
        f"(in the channel, type /invite @{BOT_NAME})",
        f"channel #tienda not found: check the name in the mappings; if it is private, invite the app "
        f"(in the channel, type /invite @{BOT_NAME})",
    ]
    assert len(slack.calls_of("conversations.list")) == 2  # #recepcion is on the second page


def test_online_check_finds_private_channels_and_channel_ids(slack: FakeSlack) -> None:
    private = slack.add_channel("direccion", private=True)
    hidden = slack.add_channel("archivo", archived=True)
    actions = {"m/a": PostMessage(channel="#direccion", text="x"), "m/b": PostMessage(channel=hidden.id, text="x")}
    assert make_connector(slack).online_check(actions) == [
        f"channel {hidden.id} is archived: unarchive it or choose another channel"
    ]
    slack.scopes.remove("groups:read")
    [problem] = make_connector(slack).online_check({"m/a": actions["m/a"]})
    assert problem.endswith("and add the scope groups:read so this check can see it")
    assert private.is_private


def test_online_check_without_channels_read_says_so(slack: FakeSlack) -> None:
    slack.scopes = ["chat:write"]
    [problem] = make_connector(slack).online_check(shipped_actions(slack))
    assert problem.startswith("cannot check #caja, #recepcion, #tienda: add the scope channels:read")


def test_online_check_of_a_webhook(slack: FakeSlack) -> None:
    connector = make_connector(slack, webhook_url=slack.webhook_url)
    assert connector.online_check() == []
    assert slack.webhook_posts == []  # the probe posts nothing
    slack.fail_webhook(404, "no_service")
    [problem] = connector.online_check()
    assert problem.startswith("the incoming webhook was removed or the app uninstalled")
