"""The `email` connector against a real SMTP server (aiosmtpd): plain, STARTTLS, SSL and AUTH; MIME,
encodings, hostile input, address checks, retries and permanent failures; and the shipped mappings
and templates (docs/examples/email.yaml, templates/emails/) rendered from the sample payloads."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from email import message_from_bytes, message_from_string, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from bridge.state import RedisConnectorStore
from bridge.store import Status
from connectors.base import KINDS, ActionRequest, Entity, PermanentError, Subject, TransientError, connector_class
from connectors.email import (
    MAX_NAME_CHARS,
    MAX_SUBJECT_CHARS,
    AddressError,
    EmailConnector,
    EmailSettings,
    address_header,
    clean_text,
    html_to_text,
    parse_mailbox,
    unstructured_header,
)
from mappings.config import ConfigError, load_config_text
from tests.fakes.smtp_server import Certificates, SilentServer, SmtpServer, free_port, make_certificates
from tests.harness import SECRET, Bridge, sample

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "email.yaml"
EXAMPLE_TEXT = EXAMPLE.read_text(encoding="utf-8")
FROM = "Salón Ejemplo <reservas@salon.example>"
USERS = {"reservas@salon.example": "s3cret-Contraseña"}
HEADER = f"""
version: 1
timezone: Europe/Madrid
webhook:
  secrets: ["{SECRET}"]
retry:
  schedule: [0.1, 0.1, 0.1]
  jitter: 0
"""


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer("plain").start()
    yield server
    server.stop()


@pytest.fixture
def make_server() -> Iterator[Callable[..., SmtpServer]]:
    servers: list[SmtpServer] = []

    def make(*args: Any, **kwargs: Any) -> SmtpServer:
        server = SmtpServer(*args, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def make_connector() -> Iterator[Callable[..., EmailConnector]]:
    connectors: list[EmailConnector] = []

    def make(server: SmtpServer | None = None, **settings: Any) -> EmailConnector:
        raw: dict[str, Any] = {"type": "email", "from": FROM, "security": "none", "timeout": 5}
        if server is not None:
            raw.update(host=server.host, port=server.port)
        raw.update(settings)
        connector = EmailConnector("mailer", EmailSettings.model_validate(raw))
        connectors.append(connector)
        return connector

    yield make
    for connector in connectors:
        connector.close()


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisConnectorStore]:
    redis = Redis.from_url(redis_url)
    yield RedisConnectorStore(redis, "mailer")
    redis.close()


def request(
    fields: dict[str, Any],
    event_type: str = "order.shipped",
    known: dict[str, dict[str, Any]] | None = None,
    event_id: str = "evt_ord456",
    action_id: str = "order-shipped-email/customer",
    store: RedisConnectorStore | None = None,
) -> ActionRequest:
    """One rendered action, as the core hands it to the connector, with what memory `known`s."""
    known = known or {}
    entities = {kind: Entity(kind, str(obj["id"]), obj) for kind, obj in known.items()}
    subject = Subject("uuid-tenant", tuple((kind, entities[kind].id) for kind in KINDS if kind in entities))
    return ActionRequest(
        action="send",
        fields={"subject": "Hola", "text": "Hola.\n", **fields},
        event_id=event_id,
        event_type=event_type,
        event_created="2024-01-21T10:00:00Z",
        tenant_id="uuid-tenant",
        action_id=action_id,
        store=store,
        subject=subject,
        **entities,  # type: ignore[arg-type]
    )


def decoded(raw: bytes, name: str) -> str:
    """A header as RFC 5322/2047 say to read it: unfolded, encoded words decoded."""
    value = message_from_bytes(raw, policy=policy.compat32)[name]
    assert value is not None, f"no {name} header"
    return str(make_header(decode_header(value.replace("\r\n", "").replace("\n", ""))))


def parts(message: EmailMessage) -> dict[str, str]:
    """content type -> decoded text of each leaf part."""
    found = {}
    for part in message.walk():
        if not part.is_multipart():
            assert isinstance(part, EmailMessage)
            found[part.get_content_type()] = part.get_content().replace("\r\n", "\n")
    return found


def bridge_config(server: SmtpServer, switch_on: bool = False, connector_extra: str = "") -> str:
    """The shipped example's mappings, verbatim, with the connector pointed at the fake server."""
    _, mappings = EXAMPLE_TEXT.split("\nmappings:", 1)
    if switch_on:
        mappings = mappings.replace('when: "false"', 'when: "true"')
    return f"""{HEADER}
connectors:
  mailer:
    type: email
    host: "{server.host}"
    port: {server.port}
    security: none
    from: "{FROM}"
    reply_to: "hola@salon.example"
    timeout: 5
{connector_extra}
mappings:{mappings}"""


def messages_with_subject(server: SmtpServer, subject: str) -> list[Any]:
    return [m for m in server.messages if decoded(m.data, "Subject") == subject]


# ---------------------------------------------------------------------------------------------
# The example config and the settings


def test_the_type_is_registered() -> None:
    assert connector_class("email") is EmailConnector


def test_the_example_loads_as_shipped_with_booking_mails_off() -> None:
    config = load_config_text(HEADER + EXAMPLE_TEXT, str(EXAMPLE.parent / "config.yaml"), environ={})
    settings = config.connectors["mailer"].settings
    assert isinstance(settings, EmailSettings)
    assert (settings.host, settings.effective_port, settings.security) == ("smtp.example.com", 587, "starttls")
    assert (settings.from_, settings.reply_to, settings.dry_run) == (FROM, "hola@salon.example", True)
    switches = {m.name: (m.when.source if m.when else None) for m in config.mappings}
    assert switches == {
        "order-shipped-email": None,
        "order-delivered-email": None,
        "booking-confirmed-email": "false",
        "booking-moved-email": "false",
        "booking-cancelled-email": "false",
        "new-order-to-staff": "false",
    }


def test_the_example_reads_the_credentials_from_the_environment() -> None:
    environ = {"SMTP_USER": "reservas@salon.example", "SMTP_PASSWORD": "pw"}
    config = load_config_text(HEADER + EXAMPLE_TEXT, str(EXAMPLE.parent / "config.yaml"), environ=environ)
    settings = config.connectors["mailer"].settings
    assert isinstance(settings, EmailSettings)
    assert (settings.username, settings.password) == ("reservas@salon.example", "pw")
    assert config.warnings == []
    assert "password" in EmailConnector.secret_fields


def test_the_example_needs_the_credentials_once_it_really_sends() -> None:
    as_shipped = load_config_text(HEADER + EXAMPLE_TEXT, "config.yaml", environ={})
    assert [w.split(": ", 2)[1] for w in as_shipped.warnings] == [
        "connectors.mailer.username",
        "connectors.mailer.password",
    ]
    live = re.sub(r"\n    dry_run: true[^\n]*", "", EXAMPLE_TEXT)
    assert live != EXAMPLE_TEXT
    with pytest.raises(ConfigError, match="environment variable SMTP_USER is not set"):
        load_config_text(HEADER + live, "config.yaml", environ={})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"from": "reservas"}, "from must be one address like 'Salón Ejemplo <reservas@salon.example>'"),
        ({"from": "a@salon.example, b@salon.example"}, "from must be one address"),
        ({"reply_to": "hola@"}, "reply_to must be one address"),
        ({"username": "u"}, "set both username and password"),
        ({"username": "u", "password": "p", "security": "none"}, "security: none would send the password"),
        ({"security": "tls"}, "Input should be 'starttls', 'ssl' or 'none', got 'tls'"),
        ({"host": "smtp://smtp.example.com"}, "host must be a server name like smtp.example.com"),
        ({"port": 0}, "greater than or equal to 1"),
    ],
    ids=[
        "from-no-domain",
        "from-two",
        "reply-to",
        "user-no-password",
        "password-in-clear",
        "security",
        "host-url",
        "port",
    ],
)
def test_unusable_settings_stop_the_config(settings: dict[str, Any], message: str) -> None:
    connector = {"type": "email", "host": "smtp.example.com", "from": FROM, **settings}
    lines = "\n".join(f"    {k}: {v!r}" for k, v in connector.items())
    with pytest.raises(ConfigError) as caught:
        load_config_text(f"{HEADER}\nconnectors:\n  mailer:\n{lines}\n", "config.yaml", environ={})
    assert message in str(caught.value)
    assert "config.yaml:" in str(caught.value)


def test_empty_credentials_mean_no_auth() -> None:
    settings = EmailSettings.model_validate(
        {"type": "email", "host": "localhost", "from": FROM, "security": "none", "username": "", "password": " "}
    )
    assert (settings.username, settings.password, settings.effective_port) == (None, None, 25)


CUSTOMER = "{{ order.cliente.email }}"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"to": "ana@salon.example, luis@salon.example"}, "write one address per entry, several as a list"),
        ({"to": ["ana@salon.example", "luis"]}, "to[1]: 'luis' is not one e-mail address"),
        ({"bcc": "jefa@"}, "bcc[0]: 'jefa@' is not one e-mail address"),
        ({"to": {"mail": CUSTOMER}}, "an entry with a name is {email: ..., name: ...}"),
        ({"text_template": "emails/order_shipped.txt"}, "give text or text_template, not both"),
        ({"html_template": "emails/nope.html"}, "template file 'emails/nope.html' not found"),
        ({"text": None}, "an e-mail needs a body"),
        ({"to": []}, "List should have at least 1 item"),
    ],
    ids=["comma-list", "one-bad-entry", "bcc", "dict-keys", "two-texts", "missing-file", "no-body", "no-recipient"],
)
def test_unusable_actions_stop_the_config(fields: dict[str, Any], message: str) -> None:
    action = {"connector": "mailer", "to": CUSTOMER, "subject": "Hola", "text": "Hola", **fields}
    action = {key: value for key, value in action.items() if value is not None}
    text = f"""{HEADER}
connectors:
  mailer: {{type: email, host: localhost, security: none, from: "{FROM}"}}
mappings:
  - name: m
    on: ["order.shipped"]
    actions:
      - {json.dumps(action, ensure_ascii=False)}
"""
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "config.yaml", environ={})
    assert message in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize(
    ("text", "name", "address"),
    [
        ("juan@email.com", "", "juan@email.com"),
        ("  Juan Pérez <juan@email.com> ", "Juan Pérez", "juan@email.com"),
        ('"Pérez, Juan" <juan@email.com>', "Pérez Juan", "juan@email.com"),
        ("JUAN.perez+citas@Email.COM", "", "JUAN.perez+citas@email.com"),
        ("maría@peluquería.es", "", "maría@xn--peluquera-n5a.es"),
        ('Juan" <evil@x.com>, "X <juan@email.com>', "Juan evil x.com X", "juan@email.com"),
    ],
    ids=["bare", "name-addr", "quoted-comma", "case-and-plus", "idn", "hostile-name"],
)
def test_addresses_that_are_accepted(text: str, name: str, address: str) -> None:
    mailbox = parse_mailbox(text)
    assert (mailbox.name, mailbox.address) == (name, address)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "juan",
        "juan@",
        "@email.com",
        "juan@@email.com",
        "juan@email",
        "juan@email..com",
        "juan@-email.com",
        "juan@10.0.0.1",
        "juan pérez@email.com",
        "juan@email.com, ana@email.com",
        "juan@email.com\r\nBcc: evil@attacker.example",
        "Juan <juan@email.com\r\nBcc: evil@attacker.example>",
        "juan@email.com>",
        "juan(comment)@email.com",
        "x" * 65 + "@email.com",
        "juan@" + "a" * 250 + ".com",
    ],
    ids=lambda t: repr(t)[:30],
)
def test_addresses_that_are_refused(text: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(text)


def test_missing_customer_email_names_the_order_and_the_missing_event(smtp, make_connector) -> None:  # noqa: ANN001
    known = {"order": {"id": 789, "numero": "PED-2024-0789"}}
    with pytest.raises(PermanentError) as caught:
        make_connector(smtp).send(request({"to": [""]}, known=known))
    assert caught.value.reason.startswith(
        "order 789: customer e-mail unknown (order.created not received); to is empty"
    )
    assert smtp.messages == []


def test_customer_without_email_is_named(smtp, make_connector) -> None:  # noqa: ANN001
    known = {"booking": {"id": 12345, "cliente": {"id": 456, "nombre": "Juan", "email": None}}}
    with pytest.raises(PermanentError) as caught:
        make_connector(smtp).send(request({"to": ["None"]}, event_type="booking.created", known=known))
    assert caught.value.reason.startswith(
        "booking 12345: customer e-mail unknown (the customer has no e-mail address on the platform)"
    )


def test_invalid_customer_email_says_where_to_correct_it(smtp, make_connector) -> None:  # noqa: ANN001
    known = {"order": {"id": 789, "cliente": {"id": 456, "email": "juan@@email.com"}}}
    with pytest.raises(PermanentError) as caught:
        make_connector(smtp).send(request({"to": ["juan@@email.com"]}, known=known))
    assert caught.value.reason == (
        "order 789: the customer's e-mail 'juan@@email.com' is not a valid address (the part before @ has characters "
        "an address cannot have); nothing was sent. Correct it in the customer's profile on the platform"
    )


@pytest.mark.parametrize(
    ("fields", "label"),
    [
        pytest.param({"subject": "Tu pedido \ud83d"}, "subject", id="subject"),
        pytest.param({"text": "Hola \ud83d"}, "text", id="text"),
        pytest.param({"text": None, "html": "<p>Hola \ud83d</p>"}, "html", id="html-only"),
        pytest.param({"to": [{"email": "juan@email.com", "name": "Juan \ud83d"}]}, "the name in to", id="name"),
        pytest.param({"to": ["ju\ud83dan@email.com"]}, "to", id="address"),
    ],
)
def test_text_that_cannot_be_encoded_is_a_dead_letter_naming_the_field(  # noqa: ANN001
    smtp, make_connector, fields: dict[str, Any], label: str
) -> None:
    """Half of an emoji (a lone surrogate) from event data: nothing to retry, so dead at once."""
    fields = {"to": ["juan@email.com"], **fields}
    with pytest.raises(PermanentError) as caught:
        make_connector(smtp).send(request(fields, known={"order": {"id": 789}}))
    assert caught.value.reason.startswith(f"order 789: {label} holds a character that cannot be sent ('\\ud83d' at")
    assert smtp.messages == []


def test_one_bad_recipient_means_nothing_is_sent(smtp, make_connector) -> None:  # noqa: ANN001
    fields = {"to": ["juan@email.com"], "cc": ["ana@salon.example", "no es una dirección"]}
    with pytest.raises(PermanentError) as caught:
        make_connector(smtp).send(request(fields, known={"order": {"id": 789}}))
    assert caught.value.reason.startswith("order 789: cc[1] is not a valid e-mail address: 'no es una dirección'")
    assert smtp.messages == []


# ---------------------------------------------------------------------------------------------
# SMTP variants


def test_plain_relay_message_headers_and_mime_structure(smtp, make_connector) -> None:  # noqa: ANN001
    connector = make_connector(smtp, reply_to="hola@salon.example")
    fields = {
        "to": [{"email": "juan@email.com", "name": "Juan Pérez"}],
        "cc": ["ana@salon.example"],
        "bcc": ["archivo@salon.example", "JUAN@email.com"],
        "subject": "Tu pedido PED-2024-0789 va de camino ✈",
        "text": "Hola Juan:\n.\nTu pedido va de camino. Ñandú €\n",
        "html": "<p>Hola <b>Juan</b>: tu pedido va de camino. Ñandú €</p>",
    }
    result = connector.send(request(fields))
    [received] = smtp.messages
    assert received.mail_from == "reservas@salon.example"
    assert received.rcpt_tos == ["juan@email.com", "ana@salon.example", "archivo@salon.example"]
    assert received.data.isascii()  # 7-bit: encoded words and quoted-printable, no 8BITMIME needed
    assert decoded(received.data, "Subject") == "Tu pedido PED-2024-0789 va de camino ✈"
    assert decoded(received.data, "From") == FROM
    assert decoded(received.data, "To") == "Juan Pérez <juan@email.com>"
    assert decoded(received.data, "Cc") == "ana@salon.example"
    assert decoded(received.data, "Reply-To") == "hola@salon.example"
    message = received.message()
    assert message["Bcc"] is None and b"archivo@" not in received.data
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"].datetime is not None
    assert message["Message-ID"] == connector.message_id(request(fields))[0]
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    for part in message.iter_parts():
        assert (part.get_content_charset(), part["Content-Transfer-Encoding"]) == ("utf-8", "quoted-printable")
    assert parts(message) == {
        "text/plain": "Hola Juan:\n.\nTu pedido va de camino. Ñandú €\n",
        "text/html": "<p>Hola <b>Juan</b>: tu pedido va de camino. Ñandú €</p>\n",
    }
    assert result.detail.startswith("sent to juan@email.com, ana@salon.example (+2 bcc) as <")
    assert result.detail.endswith("250 2.0.0 queued as FAKE123")


def test_text_only_is_a_single_text_part(smtp, make_connector) -> None:  # noqa: ANN001
    make_connector(smtp).send(request({"to": ["juan@email.com"], "text": "Sólo texto\n"}))
    message = smtp.messages[0].message()
    assert message.get_content_type() == "text/plain"
    assert parts(message) == {"text/plain": "Sólo texto\n"}


def test_html_only_gets_a_text_part_made_from_it(smtp, make_connector) -> None:  # noqa: ANN001
    html = (
        "<html><head><title>t</title><style>p {color: red}</style></head><body>"
        "<h1>Tu pedido</h1><p>Hola&nbsp;Juan &amp; Ana,<br>va de <i>camino</i>.</p>"
        '<ul><li>2 × Champú</li><li>1 × Peine</li></ul><p><a href="https://tracking.example.com/1Z">Seguir</a> '
        '<a href="javascript:alert(1)">x</a></p><script>alert("no")</script></body></html>'
    )
    make_connector(smtp).send(request({"to": ["juan@email.com"], "text": None, "html": html}))
    found = parts(smtp.messages[0].message())
    assert found["text/plain"] == (
        "Tu pedido\n\nHola Juan & Ana,\nva de camino.\n\n- 2 × Champú\n- 1 × Peine\n\n"
        "Seguir (https://tracking.example.com/1Z) x\n"
    )
    assert found["text/html"] == html + "\n"  # the HTML itself is left as it was


def test_starttls_with_ca_file_and_auth(make_server, make_connector, certs) -> None:  # noqa: ANN001
    server = make_server("starttls", certificates=certs, users=USERS)
    connector = make_connector(
        server,
        security="starttls",
        ca_file=str(certs.ca_file),
        username="reservas@salon.example",
        password=USERS["reservas@salon.example"],
    )
    connector.send(request({"to": ["juan@email.com"]}))
    [received] = server.messages
    assert received.authenticated_as == "reservas@salon.example"
    assert server.auth_attempts == [("reservas@salon.example", True)]
    assert connector.online_check() == []
    assert len(server.messages) == 1  # the check sends nothing


def test_implicit_ssl(make_server, make_connector, certs) -> None:  # noqa: ANN001
    server = make_server("ssl", certificates=certs)
    make_connector(server, security="ssl", ca_file=str(certs.ca_file)).send(request({"to": ["juan@email.com"]}))
    assert [m.rcpt_tos for m in server.messages] == [["juan@email.com"]]


def test_a_certificate_from_an_unknown_authority_is_refused(make_server, make_connector, certs, tmp_path) -> None:  # noqa: ANN001
    server = make_server("starttls", certificates=certs)
    other = make_certificates(tmp_path / "other", common_name="someone else")
    connector = make_connector(server, security="starttls", ca_file=str(other.ca_file))
    with pytest.raises(PermanentError) as caught:
        connector.send(request({"to": ["juan@email.com"]}))
    assert caught.value.reason.startswith("the certificate of 127.0.0.1 could not be verified (")
    assert "set ca_file" in caught.value.reason
    assert server.messages == []


def test_system_trust_does_not_accept_a_self_made_certificate(make_server, make_connector, certs) -> None:  # noqa: ANN001
    server = make_server("ssl", certificates=certs)
    with pytest.raises(PermanentError, match="could not be verified"):
        make_connector(server, security="ssl").send(request({"to": ["juan@email.com"]}))


def test_wrong_password_is_permanent_and_not_shown(make_server, make_connector, certs) -> None:  # noqa: ANN001
    server = make_server("starttls", certificates=certs, users=USERS)
    connector = make_connector(
        server, security="starttls", ca_file=str(certs.ca_file), username="reservas@salon.example", password="wrong-pw"
    )
    with pytest.raises(PermanentError) as caught:
        connector.send(request({"to": ["juan@email.com"]}))
    assert "refused the username or password (535" in caught.value.reason
    assert "wrong-pw" not in caught.value.reason
    assert server.messages == []
    [problem] = connector.online_check()
    assert "refused the username or password" in problem


def test_starttls_not_offered_is_permanent(smtp, make_connector, certs) -> None:  # noqa: ANN001
    connector = make_connector(smtp, security="starttls", ca_file=str(certs.ca_file))
    with pytest.raises(PermanentError, match="does not offer STARTTLS, so the e-mail would travel unencrypted"):
        connector.send(request({"to": ["juan@email.com"]}))
    assert smtp.messages == []


def test_connection_refused_is_transient(make_connector) -> None:  # noqa: ANN001
    connector = make_connector(host="127.0.0.1", port=free_port())
    with pytest.raises(TransientError, match=r"cannot connect to 127\.0\.0\.1:\d+: connection refused"):
        connector.send(request({"to": ["juan@email.com"]}))


def test_a_server_that_never_answers_is_a_timeout(make_connector) -> None:  # noqa: ANN001
    silent = SilentServer()
    try:
        connector = make_connector(host=silent.host, port=silent.port, timeout=0.3)
        with pytest.raises(TransientError) as caught:
            connector.send(request({"to": ["juan@email.com"]}))
    finally:
        silent.stop()
    assert caught.value.reason == f"127.0.0.1:{silent.port} did not answer within 0.3 s"
    assert not caught.value.maybe_delivered  # nothing was sent


def test_a_timeout_after_data_may_have_been_delivered(make_connector, smtp: SmtpServer) -> None:  # noqa: ANN001
    smtp.data_delay = 1.0  # the server takes the message, then answers after the client's timeout
    with pytest.raises(TransientError) as caught:
        make_connector(smtp, timeout=0.3).send(request({"to": ["juan@email.com"]}))
    assert caught.value.reason == f"127.0.0.1:{smtp.port} did not answer within 0.3 s"
    assert caught.value.maybe_delivered and len(smtp.messages) == 1


def test_a_refused_message_was_not_delivered(make_connector, smtp: SmtpServer) -> None:  # noqa: ANN001
    smtp.respond_with("DATA", "451 4.3.0 try again later")
    with pytest.raises(TransientError) as caught:
        make_connector(smtp).send(request({"to": ["juan@email.com"]}))
    assert not caught.value.maybe_delivered


@pytest.mark.parametrize(
    ("stage", "reply", "error", "text"),
    [
        ("MAIL", "451 4.3.0 busy", TransientError, "refused the sender reservas@salon.example (451 4.3.0 busy)"),
        ("MAIL", "553 5.7.1 sender not allowed", PermanentError, "(553 5.7.1 sender not allowed): check from"),
        ("RCPT", "452 4.2.2 mailbox full", TransientError, "cannot take a recipient right now"),
        ("DATA", "451 4.3.0 try later", TransientError, "did not accept the message: 451 4.3.0 try later"),
        (
            "DATA",
            "554 5.6.0 message rejected",
            PermanentError,
            "did not accept the message: 554 5.6.0 message rejected",
        ),
    ],
    ids=["mail-4xx", "mail-5xx", "rcpt-4xx", "data-4xx", "data-5xx"],
)
def test_smtp_answers(smtp, make_connector, stage, reply, error, text) -> None:  # noqa: ANN001
    smtp.respond_with(stage, reply)
    with pytest.raises(error) as caught:
        make_connector(smtp).send(request({"to": ["juan@email.com"]}))
    assert text in caught.value.reason
    assert smtp.messages == []


def test_a_refused_recipient_is_permanent_and_nobody_gets_a_copy(smtp, make_connector) -> None:  # noqa: ANN001
    smtp.refuse_recipient("nadie@email.com", "550 5.1.1 <nadie@email.com>: Recipient address rejected")
    fields = {"to": ["juan@email.com", "nadie@email.com"]}
    with pytest.raises(PermanentError) as caught:
        make_connector(smtp).send(request(fields))
    assert caught.value.reason == (
        f"127.0.0.1:{smtp.port} refused a recipient, so nothing was sent: nadie@email.com: 550 5.1.1 "
        "<nadie@email.com>: Recipient address rejected"
    )
    assert smtp.messages == []


def test_international_addresses(make_server, make_connector) -> None:  # noqa: ANN001
    server = make_server("plain", smtputf8=True)
    make_connector(server).send(request({"to": ["María <maría@peluquería.es>"], "subject": "Cita ñ"}))
    [received] = server.messages
    assert received.rcpt_tos == ["maría@xn--peluquera-n5a.es"]
    assert "SMTPUTF8" in received.mail_options
    assert received.data.decode("utf-8").startswith("From: ")  # RFC 6532: UTF-8 headers, sent with SMTPUTF8
    to = message_from_string(received.data.decode("utf-8"), policy=policy.default)["To"]
    assert [(a.display_name, a.addr_spec) for a in to.addresses] == [("María", "maría@xn--peluquera-n5a.es")]


def test_international_address_without_smtputf8_is_permanent(smtp, make_connector) -> None:  # noqa: ANN001
    with pytest.raises(PermanentError, match="does not accept such addresses"):
        make_connector(smtp).send(request({"to": ["maría@email.com"]}))
    assert smtp.messages == []


def test_an_ascii_address_with_an_idn_domain_needs_no_smtputf8(smtp, make_connector) -> None:  # noqa: ANN001
    make_connector(smtp).send(request({"to": ["juan@peluquería.es"]}))
    assert smtp.messages[0].rcpt_tos == ["juan@xn--peluquera-n5a.es"]


# ---------------------------------------------------------------------------------------------
# Idempotency


def test_message_id_comes_from_event_and_action(make_connector) -> None:  # noqa: ANN001
    connector = make_connector(host="localhost")
    first = connector.message_id(request({}, event_id="evt_1", action_id="a/0"))[0]
    assert first == connector.message_id(request({}, event_id="evt_1", action_id="a/0"))[0]
    assert first != connector.message_id(request({}, event_id="evt_1", action_id="a/1"))[0]
    assert first != connector.message_id(request({}, event_id="evt_2", action_id="a/0"))[0]
    assert re.fullmatch(r"<[0-9a-f]{32}@salon\.example>", first)


def test_a_repeat_is_not_sent_twice(smtp, make_connector, store) -> None:  # noqa: ANN001
    connector = make_connector(smtp)
    connector.send(request({"to": ["juan@email.com"]}, store=store))
    again = connector.send(request({"to": ["juan@email.com"]}, store=store))
    assert len(smtp.messages) == 1
    assert again.detail.startswith("already sent as <") and again.detail.endswith("; an e-mail is sent once per event")
    connector.send(request({"to": ["juan@email.com"]}, store=store, action_id="other/0"))
    assert len(smtp.messages) == 2


def test_a_failed_send_is_not_marked_as_sent(smtp, make_connector, store) -> None:  # noqa: ANN001
    connector = make_connector(smtp)
    smtp.respond_with("DATA", "421 4.3.2 shutting down")
    with pytest.raises(TransientError):
        connector.send(request({"to": ["juan@email.com"]}, store=store))
    connector.send(request({"to": ["juan@email.com"]}, store=store))
    assert len(smtp.messages) == 1


# ---------------------------------------------------------------------------------------------
# Hostile input and encodings


def test_crlf_in_a_name_or_subject_cannot_add_a_header(smtp, make_connector) -> None:  # noqa: ANN001
    hostile = "Juan\r\nBcc: evil@attacker.example\r\n\r\n<script>alert(1)</script>"
    fields = {
        "to": [{"email": "juan@email.com", "name": hostile}],
        "subject": f"Pedido de {hostile}",
        "text": f"Hola {hostile}\n",
    }
    make_connector(smtp).send(request(fields))
    [received] = smtp.messages
    assert received.rcpt_tos == ["juan@email.com"]
    message = received.message()
    assert message["Bcc"] is None
    assert decoded(received.data, "Subject") == "Pedido de Juan Bcc: evil@attacker.example <script>alert(1)</script>"
    assert decoded(received.data, "To") == "Juan Bcc evil attacker.example script alert 1 /script <juan@email.com>"
    headers = received.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    names = [line.split(":", 1)[0] for line in headers.split("\r\n") if not line.startswith(" ")]
    assert names == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Auto-Submitted",
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
    ]


def test_very_long_names_and_subjects_are_cut_and_folded(smtp, make_connector) -> None:  # noqa: ANN001
    name = "María José " + "Ñ" * 5000
    make_connector(smtp).send(
        request({"to": [{"email": "juan@email.com", "name": name}], "subject": f"Reserva de {name}"})
    )
    data = smtp.messages[0].data
    headers = data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in headers.split(b"\r\n")) <= 78
    subject = decoded(data, "Subject")
    assert len(subject) == MAX_SUBJECT_CHARS and subject.startswith("Reserva de María José ÑÑÑ") and subject[-1] == "…"
    [(shown, address)] = getaddresses([decoded(data, "To")])
    assert (len(shown), address) == (MAX_NAME_CHARS, "juan@email.com")


def test_bidi_overrides_and_control_characters_are_dropped() -> None:
    assert clean_text("Juan\u202e moc.live\x00\x1b[31m\tPérez", 100) == "Juan moc.live [31m Pérez"


def test_random_hostile_headers_decode_to_exactly_what_was_meant() -> None:
    """Whatever a customer types, each address header holds exactly our addresses, and a reader
    following RFC 2047 gets the cleaned text back unchanged (CPython 3.11's folder does not)."""
    rng = random.Random(7)
    alphabet = "abcñáÉü€✈ ¿?¡!\"'<>,;:@()[]\\.=?&_-\t\r\n\u202e"
    for _ in range(300):
        names = ["".join(rng.choice(alphabet) for _ in range(rng.choice([0, 3, 40, 64, 200]))) for _ in range(3)]
        boxes = [parse_mailbox(f"u{i}@email.com", name) for i, name in enumerate(names)]
        subject = clean_text("".join(rng.choice(alphabet) for _ in range(rng.choice([0, 5, 80, 500]))), 200)
        message = EmailMessage()
        message["To"] = address_header("To", boxes)
        message["Subject"] = unstructured_header("Subject", subject)
        message.set_content("x")
        data = message.as_bytes(policy=policy.SMTP)
        assert max(len(line) for line in data.split(b"\r\n")) <= 78
        assert getaddresses([decoded(data, "To")]) == [(b.name, b.address) for b in boxes]
        assert message_from_bytes(data, policy=policy.default)["To"].addresses[2].addr_spec == "u2@email.com"
        if subject:
            assert decoded(data, "Subject") == subject


def test_html_to_text_drops_markup_and_keeps_links() -> None:
    assert html_to_text('<p>Hola <a href="https://x.es/a">https://x.es/a</a></p><p>Adiós</p>') == (
        "Hola https://x.es/a\n\nAdiós\n"
    )


# ---------------------------------------------------------------------------------------------
# End to end: the shipped mappings and templates, through the bridge


def test_order_shipped_uses_the_customer_from_order_created(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp))
    created, shipped = sample("order.created"), sample("order.shipped")
    bridge.post(created)
    bridge.post(shipped)
    bridge.drain()
    [received] = smtp.messages
    assert received.rcpt_tos == ["juan@email.com"]
    assert decoded(received.data, "Subject") == "Tu pedido PED-2024-0789 va de camino"
    assert decoded(received.data, "Reply-To") == "hola@salon.example"
    found = parts(received.message())
    assert found["text/plain"].startswith("Hola Juan Pérez:\n\nTu pedido PED-2024-0789 ya va de camino.\n")
    assert "Número de seguimiento: 1Z999AA10123456784" in found["text/plain"]
    assert "Sigue tu envío aquí: https://tracking.example.com/1Z999AA10123456784" in found["text/plain"]
    assert "- 2 × Shampoo Profesional" in found["text/plain"]
    assert '<a href="https://tracking.example.com/1Z999AA10123456784"' in found["text/html"]
    assert "<strong>1Z999AA10123456784</strong>" in found["text/html"]
    state = bridge.record(shipped["id"]).actions["order-shipped-email/customer"]
    assert (state.status, state.attempts) == (Status.DONE, 1)
    assert bridge.record(created["id"]).actions["new-order-to-staff/staff"].status == Status.SKIPPED


def test_order_shipped_without_order_created_is_dead_and_says_why(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp))
    shipped = sample("order.shipped")
    bridge.post(shipped)
    bridge.drain()
    assert smtp.messages == []
    state = bridge.record(shipped["id"]).actions["order-shipped-email/customer"]
    assert state.status == Status.DEAD
    assert "order 789" in state.last_error and "order.created not received" in state.last_error
    assert ".to" in state.last_error  # names the field


def test_order_delivered(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp))
    bridge.post(sample("order.created"))
    bridge.post(sample("order.delivered"))
    bridge.drain()
    [received] = messages_with_subject(smtp, "Tu pedido PED-2024-0789 ha sido entregado")
    text = parts(received.message())["text/plain"]
    assert "Tu pedido PED-2024-0789 ha sido entregado el 23/01/2024." in text


def test_booking_mails_are_off_as_shipped(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp))
    event = sample("booking.created")
    bridge.post(event)
    bridge.drain()
    assert smtp.messages == []
    state = bridge.record(event["id"]).actions["booking-confirmed-email/customer"]
    assert state.status == Status.SKIPPED and "is false" in state.detail


def test_booking_confirmation(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp, switch_on=True))
    bridge.post(sample("booking.created"))
    bridge.drain()
    [received] = messages_with_subject(smtp, "Reserva confirmada: 25/01/2024 a las 10:30")
    assert received.rcpt_tos == ["juan@email.com"]
    found = parts(received.message())
    for fact in (
        "Hola Juan Pérez:",
        "Te esperamos el jueves, 25 de enero de 2024 a las 10:30.",
        "Código de reserva: ABC123XY",
        "Hora: 10:30 – 11:00",
        "Profesional: Carlos García",
        "- Corte Clásico (30 min): 25,00 €",
        "Total: 25,00 €",
    ):
        assert fact in found["text/plain"], fact
    assert "<strong>ABC123XY</strong>" in found["text/html"]
    assert "<td>Carlos García</td>" in found["text/html"]


def test_booking_moved_lists_what_changed(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp, switch_on=True))
    bridge.post(sample("booking.created"))
    bridge.post(sample("booking.updated"))
    bridge.drain()
    [received] = messages_with_subject(smtp, "Tu cita ABC123XY ha cambiado")
    assert received.rcpt_tos == ["juan@email.com"]
    found = parts(received.message())
    text = found["text/plain"]
    assert "- Día: antes jueves, 25 de enero de 2024, ahora viernes, 26 de enero de 2024" in text
    assert "- Hora: antes 10:30, ahora 11:00" in text
    assert "Día: viernes, 26 de enero de 2024\nHora: 11:00 – 11:30\nProfesional: Carlos García" in text
    assert "ahora <strong>viernes, 26 de enero de 2024</strong>" in found["text/html"]


def test_booking_cancelled_gives_reason_and_refund(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp, switch_on=True))
    bridge.post(sample("booking.created"))
    bridge.post(sample("booking.cancelled"))
    bridge.drain()
    [received] = messages_with_subject(smtp, "Tu cita ABC123XY ha sido cancelada")
    found = parts(received.message())
    text = found["text/plain"]
    assert "Hemos cancelado tu cita, como nos pediste." in text
    assert "Día: jueves, 25 de enero de 2024 a las 10:30" in text
    assert "Motivo: Cambio de planes" in text
    assert "Te devolveremos 25,00 €. El reembolso está en trámite" in text
    assert "<td>Cambio de planes</td>" in found["text/html"]


def test_staff_notice_with_a_hostile_customer_name(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp, switch_on=True))
    event = sample("order.created")
    event["data"]["order"]["cliente"]["nombre"] = "Eve\r\nBcc: all@attacker.example\r\n<script>x()</script>"
    bridge.post(event)
    bridge.drain()
    [received] = smtp.messages
    assert received.rcpt_tos == ["hola@salon.example"]
    assert received.message()["Bcc"] is None
    assert decoded(received.data, "Subject") == (
        "Nuevo pedido PED-2024-0789 de Eve Bcc: all@attacker.example <script>x()</script>: 35,00 €"
    )
    assert received.message().get_content_type() == "text/plain"


def test_html_templates_escape_what_customers_typed(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp, switch_on=True))
    event = sample("booking.created")
    event["data"]["booking"]["cliente"]["nombre"] = '<script>alert("x")</script> & <b>Juan</b>'
    bridge.post(event)
    bridge.drain()
    [received] = smtp.messages
    found = parts(received.message())
    assert "<script>" not in found["text/html"] and "<b>Juan</b>" not in found["text/html"]
    assert "Hola &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;Juan&lt;/b&gt;:" in found["text/html"]
    assert found["text/plain"].startswith('Hola <script>alert("x")</script> & <b>Juan</b>:')


def test_a_4xx_is_retried_then_delivered_once(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp))
    smtp.respond_with("DATA", "451 4.3.0 temporary failure, try again")
    bridge.post(sample("order.created"))
    shipped = sample("order.shipped")
    bridge.post(shipped)
    bridge.drain()
    assert len(smtp.messages) == 1
    state = bridge.record(shipped["id"]).actions["order-shipped-email/customer"]
    assert (state.status, state.attempts) == (Status.DONE, 2)
    assert [h["outcome"] for h in state.history] == [Status.RETRYING, Status.DONE]
    assert "451 4.3.0 temporary failure, try again" in state.history[0]["error"]


def test_a_5xx_recipient_is_a_dead_letter_with_the_server_text(make_bridge, smtp) -> None:  # noqa: ANN001
    bridge: Bridge = make_bridge(bridge_config(smtp))
    smtp.refuse_recipient("juan@email.com", "550 5.1.1 User unknown")
    bridge.post(sample("order.created"))
    shipped = sample("order.shipped")
    bridge.post(shipped)
    bridge.drain()
    assert smtp.messages == []
    state = bridge.record(shipped["id"]).actions["order-shipped-email/customer"]
    assert (state.status, state.attempts) == (Status.DEAD, 1)
    assert state.last_error.endswith("refused a recipient, so nothing was sent: juan@email.com: 550 5.1.1 User unknown")


def test_connection_refused_is_retried_until_the_schedule_ends(make_bridge, smtp) -> None:  # noqa: ANN001
    config = bridge_config(smtp).replace(f"port: {smtp.port}", f"port: {free_port()}")
    bridge: Bridge = make_bridge(config)
    bridge.post(sample("order.created"))
    shipped = sample("order.shipped")
    bridge.post(shipped)
    bridge.drain()
    state = bridge.record(shipped["id"]).actions["order-shipped-email/customer"]
    assert (state.status, state.attempts) == (Status.DEAD, 4)
    assert state.last_error.startswith("gave up after 4 attempts; last error: cannot connect to 127.0.0.1:")


def test_offline_check_finds_an_unreadable_ca_file(make_connector, tmp_path) -> None:  # noqa: ANN001
    connector = make_connector(host="localhost", security="ssl", ca_file=str(tmp_path / "missing.pem"))
    [problem] = connector.offline_check()
    assert problem.startswith(f"ca_file {str(tmp_path / 'missing.pem')!r} cannot be used as a certificate authority")
    with pytest.raises(PermanentError, match="cannot be used as a certificate authority"):
        connector.send(request({"to": ["juan@email.com"]}))


@pytest.mark.parametrize(
    ("event_type", "template", "expected"),
    [
        ("order.shipped", "order_shipped", "Sigue tu envío aquí: https://tracking.example.com/1Z999AA10123456784"),
        ("order.delivered", "order_delivered", "Tu pedido PED-2024-0789 ha sido entregado el 23/01/2024."),
        ("booking.created", "booking_created", "Te esperamos el jueves, 25 de enero de 2024 a las 10:30."),
        ("booking.updated", "booking_updated", "Día: viernes, 26 de enero de 2024\nHora: 11:00 – 11:30\nCódigo"),
        ("booking.cancelled", "booking_cancelled", "Cita: ABC123XY\nMotivo: Cambio de planes\n"),
    ],
)
def test_shipped_templates_render_from_the_sample_alone(make_bridge, smtp, event_type, template, expected) -> None:  # noqa: ANN001
    """With nothing remembered (the event arrives first), a template leaves out what it does not know."""
    mappings = f"""
  - name: to-the-salon
    on: ["{event_type}"]
    actions:
      - connector: mailer
        to: "hola@salon.example"
        subject: "{event_type}"
        text_template: emails/{template}.txt
        html_template: emails/{template}.html
"""
    bridge: Bridge = make_bridge(bridge_config(smtp).split("\nmappings:", 1)[0] + "\nmappings:" + mappings)
    event = sample(event_type)
    bridge.post(event)
    bridge.drain()
    assert bridge.record(event["id"]).actions["to-the-salon/0"].status == Status.DONE
    found = parts(smtp.messages[0].message())
    greeting = "Hola Juan Pérez:" if event_type == "booking.created" else "Hola:"  # only it carries the customer
    assert found["text/plain"].startswith(f"{greeting}\n\n")
    assert expected in found["text/plain"]
    assert found["text/html"].startswith("<!DOCTYPE html>") and f"<p>{greeting}</p>" in found["text/html"]
