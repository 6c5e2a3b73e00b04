"""Loading config.yaml: every problem listed with file, line and key path; env expansion; templates."""

from __future__ import annotations

import pytest

from mappings.config import ConfigError, load_config_text
from mappings.routing import render_action
from mappings.templates import RenderError

BASE = """\
version: 1
timezone: Europe/Madrid
webhook:
  secrets: ["s3cret"]
connectors:
  crm:
    type: http
    url: "https://crm.example.com/hook"
mappings:
  - name: m
    on: ["booking.*"]
    actions:
      - connector: crm
        body: {id: "{{ event.id }}"}
"""


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "config.yaml", environ or {})
    return caught.value.problems


def test_the_base_config_loads() -> None:
    config = load_config_text(BASE, "config.yaml", {})
    assert list(config.connectors) == ["crm"]
    assert [a.id for a in config.mappings[0].actions] == ["m/0"]
    assert config.model.retry.schedule == [30, 120, 600, 3600, 21600, 64800]
    assert sum(config.model.retry.schedule) >= 24 * 3600
    assert config.model.webhook.dedupe_window == 7 * 86400


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param("version: 1", "version: 2", "config.yaml:1: version: Input should be 1, got 2", id="version"),
        pytest.param(
            "timezone: Europe/Madrid",
            "timezone: Mars/Base",
            "config.yaml:2: timezone: unknown time zone 'Mars/Base', expected a name like Europe/Madrid",
            id="zone",
        ),
        pytest.param(
            'secrets: ["s3cret"]',
            "secrets: []",
            "config.yaml:4: webhook.secrets: List should have at least 1 item after validation, not 0",
            id="no-secret",
        ),
        pytest.param(
            'secrets: ["s3cret"]',
            'secrets: ["s3cret"]\n  colour: red',
            "config.yaml:5: webhook.colour: unknown key",
            id="unknown-key",
        ),
        pytest.param(
            'url: "https://crm.example.com/hook"',
            'url: "ftp://crm"',
            "config.yaml:8: connectors.crm.url: url must start with http:// or https://, got 'ftp://crm'",
            id="url",
        ),
        pytest.param(
            "type: http",
            "type: htp",
            "config.yaml:7: connectors.crm.type: unknown connector type 'htp' "
            "(known: email, google_calendar, http, slack, sms, whatsapp)",
            id="type",
        ),
        pytest.param(
            "      - connector: crm",
            "      - connector: slak",
            "config.yaml:13: mappings[0].actions[0].connector: unknown connector 'slak' (known: crm)",
            id="connector",
        ),
        pytest.param(
            '        body: {id: "{{ event.id }}"}',
            '        body: {id: "{{ event.id }"}',
            "config.yaml:14: mappings[0].actions[0].body: template does not compile: unexpected '}' (template line 1)",
            id="template",
        ),
        pytest.param(
            '        body: {id: "{{ event.id }}"}',
            "        body: {}\n        colour: red",
            "config.yaml:15: mappings[0].actions[0].colour: unknown key",
            id="unknown-action-field",
        ),
        pytest.param(
            "      - connector: crm",
            "      - connector: crm\n        action: explode",
            "config.yaml:14: mappings[0].actions[0].action: "
            "connector 'crm' (http) has no action 'explode' (known: send, sync)",
            id="action",
        ),
        pytest.param(
            'on: ["booking.*"]',
            'on: ["booking.*"]\n    when: "data.total >"',
            "config.yaml:12: mappings[0].when: condition does not compile: unexpected 'end of print statement'",
            id="condition",
        ),
    ],
)
def test_each_problem_names_file_line_and_key(old: str, new: str, expected: str) -> None:
    assert old in BASE
    found = problems(BASE.replace(old, new, 1))
    assert expected in found, found


def test_every_problem_is_listed_not_only_the_first() -> None:
    text = (
        BASE.replace("version: 1", "version: 3")
        .replace("type: http", "type: htp")
        .replace("name: m", "name: m\n    bogus: 1")
    )
    found = problems(text)
    assert len(found) == 3, found
    assert [p.split(": ")[1] for p in found] == ["version", "connectors.crm.type", "mappings[0].bogus"]


def test_yaml_syntax_error_names_the_line() -> None:
    found = problems(BASE.replace("  secrets:", "  secrets: [", 1))
    assert len(found) == 1 and found[0].startswith("config.yaml:5: not valid YAML: expected ',' or ']'")


def test_environment_expansion_and_defaults() -> None:
    text = BASE.replace('["s3cret"]', '["${HOOK_SECRET}", "${OLD_SECRET:-legacy}"]').replace(
        "https://crm.example.com/hook", "${CRM_URL:-https://fallback.example.com}"
    )
    config = load_config_text(text, "config.yaml", {"HOOK_SECRET": "from-env"})
    assert config.webhook.secrets == ["from-env", "legacy"]
    assert config.connectors["crm"].settings.url == "https://fallback.example.com"


def test_unset_variable_is_an_error_naming_it() -> None:
    found = problems(BASE.replace('["s3cret"]', '["${HOOK_SECRET}"]'))
    assert found == [
        "config.yaml:4: webhook.secrets[0]: environment variable HOOK_SECRET is not set or empty "
        "(and ${HOOK_SECRET} has no :-default)"
    ]


def test_a_connector_in_dry_run_turns_its_problems_into_warnings() -> None:
    text = BASE.replace("    type: http", "    type: http\n    dry_run: true").replace(
        "https://crm.example.com/hook", "${CRM_URL}"
    )
    config = load_config_text(text, "config.yaml", {})
    assert config.connectors["crm"].dry_run
    assert any("CRM_URL is not set" in w and "accepted: this connector is in dry run" in w for w in config.warnings)
    # Without dry_run the same thing is an error:
    assert problems(BASE.replace("https://crm.example.com/hook", "${CRM_URL}"))


def test_on_is_a_key_not_a_yaml_11_boolean() -> None:
    config = load_config_text(BASE.replace('on: ["booking.*"]', "on: booking.created"), "config.yaml", {})
    assert config.mappings[0].patterns == ["booking.created"]


def test_durations_accept_units() -> None:
    text = BASE.replace('secrets: ["s3cret"]', 'secrets: ["s3cret"]\n  dedupe_window: 36h')
    text += "retry:\n  schedule: [10s, 5m, 2h]\nretention:\n  events: 14d\n"
    config = load_config_text(text, "config.yaml", {})
    assert config.webhook.dedupe_window == 36 * 3600
    assert config.model.retry.schedule == [10, 300, 7200]
    assert config.model.retention.events == 14 * 86400
    found = problems(text.replace("36h", "a while"))
    assert "expected a duration like 30s, 10m, 12h or 7d, got 'a while'" in found[0]


def test_duplicate_mapping_and_action_names_are_errors() -> None:
    text = (
        BASE
        + """  - name: m
    on: ["order.*"]
    actions:
      - connector: crm
        name: a
        body: {}
      - connector: crm
        name: a
        body: {}
"""
    )
    found = problems(text)
    assert "mappings[1].name: another mapping is already named 'm'" in found[0]
    assert "mappings[1].actions[1].name: two actions of this mapping are named 'm/a'" in found[1]


def test_template_file_missing_is_reported(tmp_path) -> None:  # noqa: ANN001
    text = """\
version: 1
webhook: {secrets: [s]}
connectors:
  mailer: {type: email, host: localhost, port: 25, security: none, from: "a@example.com"}
mappings:
  - name: m
    on: [order.shipped]
    actions:
      - connector: mailer
        to: "x@example.com"
        subject: "hi"
        text_template: emails/nope.txt
"""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    from mappings.config import load_config

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert any("text_template: template file 'emails/nope.txt' not found" in p for p in caught.value.problems)


def test_an_unknown_type_is_an_error_even_in_dry_run() -> None:
    """Its mappings would silently vanish: a dry run cannot render actions of a type it does not know."""
    text = BASE.replace("    type: http", "    type: slak\n    dry_run: true")
    assert problems(text) == [
        "config.yaml:7: connectors.crm.type: unknown connector type 'slak' "
        "(known: email, google_calendar, http, slack, sms, whatsapp)"
    ]


@pytest.mark.parametrize(
    ("on", "expected"),
    [
        pytest.param(
            '["payment.fialed"]',
            "config.yaml:11: mappings[0].on[0]: 'payment.fialed' matches no event type; did you mean 'payment.failed'?",
            id="typo",
        ),
        pytest.param(
            '["booking.*", "invoice.*"]',
            "config.yaml:11: mappings[0].on[1]: 'invoice.*' matches no event type; the platform's types: "
            "booking.created, booking.updated, booking.cancelled, booking.completed, booking.no_show, "
            "payment.completed, payment.failed, payment.refunded, customer.created, customer.updated, "
            "order.created, order.shipped, order.delivered",
            id="no-close-match",
        ),
    ],
)
def test_an_on_entry_matching_no_event_type_is_a_warning_with_the_nearest_type(on: str, expected: str) -> None:
    """A warning, not an error: the platform may add types; `check-config --strict` makes it one."""
    assert load_config_text(BASE.replace('on: ["booking.*"]', f"on: {on}"), environ={}).warnings == [expected]


def test_the_event_types_are_the_shipped_samples() -> None:
    from bridge.samples import sample_types
    from mappings.config import EVENT_TYPES

    assert sorted(EVENT_TYPES) == sample_types()


def test_reference_errors_come_in_the_same_run_as_structural_ones() -> None:
    text = BASE.replace('on: ["booking.*"]', 'on: ["payment.fialed"]\n    whne: "true"').replace(
        "connector: crm", "connector: slak"
    )
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "config.yaml", environ={})
    assert caught.value.problems == [  # by line
        "config.yaml:12: mappings[0].whne: unknown key",
        "config.yaml:14: mappings[0].actions[0].connector: unknown connector 'slak' (known: crm)",
    ]
    assert caught.value.warnings == [
        "config.yaml:11: mappings[0].on[0]: 'payment.fialed' matches no event type; did you mean 'payment.failed'?"
    ]


def test_an_unset_variable_is_said_once_not_judged_again() -> None:
    """The value is still `${VAR}`: a second message about its shape would only mislead."""
    text = BASE.replace(
        '  secrets: ["s3cret"]', '  secrets: ["s3cret"]\nadmin:\n  password_hash: "${ADMIN_HASH}"\n  username: owner'
    )
    assert problems(text) == [
        "config.yaml:6: admin.password_hash: environment variable ADMIN_HASH is not set or empty "
        "(and ${ADMIN_HASH} has no :-default)"
    ]
    dry = BASE.replace("    type: http", "    type: http\n    dry_run: true").replace(
        "https://crm.example.com/hook", "${CRM_URL}"
    )
    assert len(load_config_text(dry, "config.yaml", {}).warnings) == 1


def test_a_section_the_caller_does_not_use_is_not_read() -> None:
    text = BASE.replace(
        '  secrets: ["s3cret"]', '  secrets: ["s3cret"]\nadmin:\n  password_hash: "${ADMIN_HASH}"\n  username: owner'
    )
    config = load_config_text(text, "config.yaml", {}, unused=("admin", "metrics"))
    assert config.model.admin is None


BOMB_ACTION = """\
        body:
          id: "{{ event.id }}"
          padded: "{{ '%0200000000d' % 1 }}"
          loop: "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
"""


def test_template_bombs_compile_cheaply_and_fail_at_render_with_a_permanent_error() -> None:
    """Compiling evaluates nothing (no constant folding); rendering stops at a size or time limit."""
    text = BASE.replace('        body: {id: "{{ event.id }}"}\n', BOMB_ACTION) + "templates:\n  render_timeout: 50ms\n"
    assert "render_timeout" in problems(text)[0]  # durations take s, m, h, d: not ms
    config = load_config_text(text.replace("50ms", "0.05"), "config.yaml", {})
    spec = config.mappings[0].actions[0]
    assert spec.render_timeout == 0.05
    context = {"event": {"id": "evt_1"}}
    with pytest.raises(RenderError, match=r"^mappings\[0\]\.actions\[0\]\.body\.padded: the template was stopped: "):
        render_action(spec, context)
    spec.compiled["body"].pop("padded")
    with pytest.raises(
        RenderError, match=r"body\.loop: .*longer than its limit of 0\.05 s \(templates\.render_timeout\)"
    ):
        render_action(spec, context)


def test_render_timeout_defaults_to_two_seconds_and_is_at_most_a_minute() -> None:
    config = load_config_text(BASE, "config.yaml", {})
    assert config.model.templates.render_timeout == 2.0
    assert config.mappings[0].actions[0].render_timeout == 2.0
    found = problems(BASE + "templates:\n  render_timeout: 5m\n")
    assert found == ["config.yaml:16: templates.render_timeout: Input should be less than or equal to 60"]


def test_a_template_error_points_at_the_template_line(tmp_path) -> None:  # noqa: ANN001
    """In a block scalar, the problem is on the config line of the broken template line."""
    from mappings.config import load_config
    from tests.conftest import http_config

    mappings = """
  - name: inline
    on: ["booking.created"]
    actions:
      - connector: crm
        body: |
          first line
          {{ broken }
"""
    text = http_config("http://127.0.0.1:9", mappings=mappings)
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    expected = text.splitlines().index("          {{ broken }") + 1
    assert caught.value.problems[0].startswith(f"{path}:{expected}: mappings[0].actions[0].body: template does not")


MESSAGING = """\
version: 1
webhook:
  secrets: ["s3cret"]
connectors:
  crm:
    type: http
    url: "https://crm.example.com/hook"
  sms:
    type: sms
    account_sid: AC1
    auth_token: tok
    from: "+34600000000"
mappings:
  - name: m
    on: ["booking.*"]
    actions:
      - connector: crm
        body: {id: "{{ event.id }}"}
        fallback:
          connector: sms
          to: "{{ booking.cliente.telefono }}"
          body: "{{ booking.codigo }}"
          fallback:
            connector: crm
            body: {last: true}
"""


def test_a_fallback_is_an_action_named_after_the_one_it_stands_in_for() -> None:
    config = load_config_text(MESSAGING, "config.yaml", {})
    [first] = config.mappings[0].actions
    assert [(a.id, a.connector) for a in first.chain()] == [
        ("m/0", "crm"), ("m/0/fallback", "sms"), ("m/0/fallback/fallback", "crm")
    ]  # fmt: skip
    assert config.action("m/0/fallback/fallback") is first.fallback.fallback  # type: ignore[union-attr]
    assert config.action("m/0/fallback").fields.body == "{{ booking.codigo }}"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("          connector: sms\n", "          connector: smz\n",
         "config.yaml:20: mappings[0].actions[0].fallback.connector: unknown connector 'smz'"),
        ("          body: \"{{ booking.codigo }}\"\n", "          body: \"{{ booking.codigo \"\n",
         "config.yaml:22: mappings[0].actions[0].fallback.body: "),
        ("            body: {last: true}\n", "            body: {last: true}\n            name: last\n",
         "config.yaml:26: mappings[0].actions[0].fallback.fallback.name: a fallback has no name of its own: "
         "it is 'm/0/fallback/fallback'"),
        ("        fallback:\n          connector: sms\n",
         "        fallback: sms\n        other:\n          connector: sms\n",
         "config.yaml:19: mappings[0].actions[0].fallback: a fallback is an action (connector: and its fields), "
         "got str"),
    ],
    ids=["unknown-connector", "bad-template", "named", "not-an-action"],
)  # fmt: skip
def test_a_bad_fallback_is_reported_with_file_line_and_key(old: str, new: str, expected: str) -> None:
    assert old in MESSAGING
    found = problems(MESSAGING.replace(old, new, 1))
    assert any(p.startswith(expected) for p in found), found


def test_a_fixed_sms_body_over_three_parts_is_a_warning_not_an_error() -> None:
    long_body = "Hola, te recordamos tu cita de mañana. " * 12
    text = MESSAGING.replace('body: "{{ booking.codigo }}"', f'body: "{long_body}"', 1)
    config = load_config_text(text, "config.yaml", {})
    assert config.warnings == [
        "config.yaml:22: mappings[0].actions[0].fallback.body: the SMS takes 4 parts (GSM-7); each part is billed"
    ]
