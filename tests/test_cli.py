"""The salon-bridge command: check-config, simulate, events, dead-letters, replay, send-sample."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from bridge.cli import main, read_event
from bridge.samples import SEND_ORDER, sample_types
from bridge.store import Status
from bridge.up import EmbeddedRedis
from tests.conftest import http_config
from tests.fakes.slack_server import BOT_NAME, DEFAULT_TOKEN, FakeSlack
from tests.fakes.smtp_server import SmtpServer
from tests.harness import SECRET, Bridge, sample
from tests.test_up import _processes_mentioning

REPO = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def with_redis(text: str, redis_url: str) -> str:
    return text.replace("connectors:", f'redis_url: "{redis_url}"\nconnectors:', 1)


def test_every_command_has_help_with_examples(capsys) -> None:  # noqa: ANN001
    commands = [
        "serve", "worker", "up", "check-config", "slack-check", "simulate", "events", "dead-letters", "replay",
        "send-sample", "hash-password", "reload", "status", "preview",
    ]  # fmt: skip
    for command in commands:
        code, out, _ = run(capsys, command, "--help")
        assert code == 0
        assert "examples:" in out and f"salon-bridge {command}" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["events", "--limit", "0"], "must be a positive number", id="zero-limit"),
        pytest.param(["events", "--status", "lost"], "invalid choice: 'lost'", id="bad-status"),
        pytest.param(["replay"], "required: event_id", id="replay-without-id"),
        pytest.param(["send-sample", "booking.moved"], "invalid choice: 'booking.moved'", id="unknown-type"),
        pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="unknown-command"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(capsys, argv: list[str], message: str) -> None:  # noqa: ANN001
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err.strip().splitlines()[-1]


def test_missing_config_is_one_line_not_a_traceback(capsys, tmp_path) -> None:  # noqa: ANN001
    code, _, err = run(capsys, "events", "--config", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert err.strip() == f"{tmp_path / 'nope.yaml'}: config file not found"


def test_unreadable_config_is_one_line(capsys, tmp_path) -> None:  # noqa: ANN001
    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    code, _, err = run(capsys, "check-config", str(folder))
    assert code == 1
    assert err.strip().startswith(f"{folder}: cannot read the config file")
    assert "Traceback" not in err


def test_check_config_valid_and_invalid(capsys, write_config, destination) -> None:  # noqa: ANN001
    good = write_config(http_config(destination.url))
    code, out, _ = run(capsys, "check-config", str(good))
    assert (code, out.strip()) == (0, f"{good}: OK (1 connectors, 1 mappings)")
    bad = write_config(http_config(destination.url).replace("connector: crm", "connector: slak"), "bad.yaml")
    code, _, err = run(capsys, "check-config", str(bad))
    assert code == 1
    line = bad.read_text().splitlines().index("      - connector: slak") + 1
    assert err.strip() == f"{bad}:{line}: mappings[0].actions[0].connector: unknown connector 'slak' (known: crm)"


def test_example_config_is_valid_with_only_the_webhook_secret(capsys, monkeypatch) -> None:  # noqa: ANN001
    for name in ("SLACK_BOT_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS", "SMTP_USER", "SMTP_PASSWORD", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SALONBOOKIT_WEBHOOK_SECRET", "x")
    code, out, err = run(capsys, "check-config", str(REPO / "config.example.yaml"))
    assert code == 0, err
    assert "OK" in out


def test_simulate_renders_actions_and_sends_nothing(capsys, write_config, destination) -> None:  # noqa: ANN001
    config = write_config(http_config(destination.url))
    code, out, _ = run(capsys, "simulate", "--config", str(config), "booking.created")
    assert code == 0
    assert "all-to-crm/notify -> crm (http) send" in out
    assert '"type": "booking.created"' in out
    event_file = config.parent / "event.json"
    event_file.write_text(json.dumps(sample("order.created", id="evt_from_file")))
    code, out, _ = run(capsys, "simulate", "--config", str(config), str(event_file))
    assert code == 0 and '"id": "evt_from_file"' in out
    assert destination.requests == []


def test_simulate_rejects_a_file_that_is_not_an_event(capsys, write_config, destination) -> None:  # noqa: ANN001
    config = write_config(http_config(destination.url))
    not_event = config.parent / "x.json"
    not_event.write_text('{"hello": 1}')
    code, _, err = run(capsys, "simulate", "--config", str(config), str(not_event))
    assert code == 1
    assert (
        err.strip()
        == f"salon-bridge simulate: {not_event}: not a platform event: field 'id' must be a non-empty string"
    )


def test_events_dead_letters_and_replay(capsys, make_bridge, destination, redis_url, write_config) -> None:  # noqa: ANN001
    text = with_redis(http_config(destination.url), redis_url)
    bridge: Bridge = make_bridge(text)
    config = str(write_config(text, "cli.yaml"))
    destination.respond_with(400, "bad request: missing field")
    failing, working = sample("booking.created"), sample("order.created")
    bridge.post(failing)
    bridge.post(working)
    bridge.drain()

    code, out, _ = run(capsys, "events", "--config", config)
    assert code == 0
    assert f"{failing['id']}  booking.created  tenant=uuid-tenant  booking ABC123XY" in out
    assert "all-to-crm/notify: dead, 1 attempt(s), last error: HTTP 400: bad request: missing field" in out
    assert f"{working['id']}  order.created  tenant=uuid-tenant  order PED-2024-0789" in out

    code, out, _ = run(capsys, "events", "--config", config, "--status", "dead")
    assert failing["id"] in out and working["id"] not in out
    code, out, _ = run(capsys, "events", "--config", config, "--type", "order.created", "--limit", "1")
    assert working["id"] in out and failing["id"] not in out

    code, out, _ = run(capsys, "dead-letters", "--config", config)
    assert code == 0
    assert "all-to-crm/notify (crm), 1 attempt(s): HTTP 400: bad request: missing field" in out
    assert f"replay: salon-bridge replay {failing['id']} --action all-to-crm/notify" in out

    code, out, _ = run(capsys, "replay", "--config", config, failing["id"])
    assert (code, out.strip()) == (0, f"queued again: {failing['id']} all-to-crm/notify")
    bridge.drain()
    assert bridge.record(failing["id"]).actions["all-to-crm/notify"].status == Status.DONE
    code, out, _ = run(capsys, "dead-letters", "--config", config)
    assert out.strip() == "no dead letters"
    assert len(destination.requests) == 3


def test_replay_refuses_done_actions_without_force(capsys, make_bridge, destination, redis_url, write_config) -> None:  # noqa: ANN001
    text = with_redis(http_config(destination.url), redis_url)
    bridge: Bridge = make_bridge(text)
    config = str(write_config(text, "cli.yaml"))
    event = sample("payment.failed")
    bridge.post(event)
    bridge.drain()
    code, _, err = run(capsys, "replay", "--config", config, event["id"])
    assert code == 1
    assert "nothing to replay" in err and "all-to-crm/notify=done" in err and "--force" in err
    bridge.drain()
    assert len(destination.requests) == 1  # the ledger held

    code, _, err = run(capsys, "replay", "--config", config, event["id"], "--action", "nope/0")
    assert code == 1 and "has no action 'nope/0' (its actions: all-to-crm/notify)" in err
    code, _, err = run(capsys, "replay", "--config", config, "evt_unknown")
    assert code == 1 and "'evt_unknown' is not in the event log" in err

    code, out, _ = run(capsys, "replay", "--config", config, event["id"], "--force")
    assert code == 0
    bridge.drain()
    assert len(destination.requests) == 2
    state = bridge.record(event["id"]).actions["all-to-crm/notify"]
    assert state.status == Status.DONE and "replay of done" in [h["outcome"] for h in state.history]


def test_events_with_redis_unreachable_is_one_line(capsys, write_config, destination) -> None:  # noqa: ANN001
    config = write_config(with_redis(http_config(destination.url), "redis://:hunter2@127.0.0.1:1/0"))
    code, _, err = run(capsys, "events", "--config", str(config))
    assert code == 1
    assert err.startswith("salon-bridge events: cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "hunter2" not in err


@pytest.fixture
def live_server(bridge: Bridge) -> Iterator[str]:
    """The bridge's Flask app on a real socket."""
    server = make_server("127.0.0.1", 0, bridge.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/webhooks"
    server.shutdown()
    server.server_close()


def test_send_sample_all_against_a_running_server(capsys, bridge: Bridge, live_server: str, destination) -> None:  # noqa: ANN001
    code, out, _ = run(capsys, "send-sample", "all", "--url", live_server, "--secret", SECRET, "--tenant", "salon-7")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 13 and all("-> 202" in line for line in lines)
    bridge.drain()
    assert {r.json()["tenant"] for r in destination.requests} == {"salon-7"}
    assert len({r.json()["id"] for r in destination.requests}) == 13


def test_send_sample_with_a_wrong_secret_reports_the_401(capsys, bridge: Bridge, live_server: str) -> None:  # noqa: ANN001
    code, out, _ = run(capsys, "send-sample", "booking.created", "--url", live_server, "--secret", "nope")
    assert code == 1
    assert "-> 401" in out and "does not match" in out


def test_send_sample_to_nothing_listening_is_one_line(capsys) -> None:  # noqa: ANN001
    code, _, err = run(
        capsys, "send-sample", "booking.created", "--url", "http://127.0.0.1:1/webhooks", "--secret", "s"
    )
    assert code == 1
    assert err.startswith("salon-bridge send-sample: cannot reach http://127.0.0.1:1/webhooks")


def test_looking_around_after_a_dry_run_uses_its_generated_secret(capsys, monkeypatch, tmp_path, redis_url) -> None:  # noqa: ANN001
    """`up --dry-run` without a secret keeps one in ./var; events, replay and simulate use it there."""
    monkeypatch.delenv("SALONBOOKIT_WEBHOOK_SECRET", raising=False)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        with_redis(http_config("http://127.0.0.1:9"), redis_url).replace(SECRET, "${SALONBOOKIT_WEBHOOK_SECRET}")
    )
    code, _, err = run(capsys, "events", "--config", str(config))
    assert code == 1 and "SALONBOOKIT_WEBHOOK_SECRET is not set" in err
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "webhook-secret").write_text("generated-for-the-dry-run\n")
    code, out, _ = run(capsys, "events", "--config", str(config))
    assert (code, out.strip()) == (0, "no events yet")
    monkeypatch.delenv("SALONBOOKIT_WEBHOOK_SECRET")  # one command per process: start afresh
    code, _, err = run(capsys, "serve", "--config", str(config), "--port", "1")
    assert code == 1 and "SALONBOOKIT_WEBHOOK_SECRET is not set" in err  # serving never falls back


def test_replay_of_an_event_never_processed_routes_it_again(
    capsys, make_bridge, destination, redis_url, write_config
) -> None:  # noqa: ANN001
    """RQ gave up on the event's job (or lost it) before any action ran: replay starts it over."""
    text = with_redis(http_config(destination.url), redis_url)
    bridge: Bridge = make_bridge(text)
    config = str(write_config(text, "cli.yaml"))
    event = sample("order.created")
    bridge.post(event)
    bridge.runtime.queue.empty()  # the job is gone
    code, out, _ = run(capsys, "replay", "--config", config, event["id"])
    assert (code, out.strip()) == (0, f"queued again: {event['id']} (every action of the event)")
    bridge.drain()
    assert bridge.record(event["id"]).actions["all-to-crm/notify"].status == Status.DONE


def posted(make_bridge, write_config, text: str, event_type: str) -> tuple[Bridge, str, dict]:  # noqa: ANN001
    """The bridge on `text`, its config file for the CLI, and a sample of `event_type` posted and run."""
    bridge: Bridge = make_bridge(text)
    config = str(write_config(text, "cli.yaml"))
    event = sample(event_type)
    bridge.post(event)
    bridge.drain()
    return bridge, config, event


def test_force_runs_a_skipped_action_only_when_its_condition_is_true_now(
    capsys, make_bridge, destination, redis_url, write_config
) -> None:  # noqa: ANN001
    """A no-show that came before its booking was skipped; --force runs it once memory knows the customer."""
    mappings = """
  - name: no-show
    on: ["booking.no_show"]
    when: "booking.cliente is defined"
    actions:
      - connector: crm
        name: notify
        body: {customer: "{{ booking.cliente.nombre }}"}
"""
    text = with_redis(http_config(destination.url, mappings), redis_url)
    bridge, config, no_show = posted(make_bridge, write_config, text, "booking.no_show")
    assert bridge.record(no_show["id"]).actions["no-show/notify"].status == Status.SKIPPED

    code, _, err = run(capsys, "replay", "--config", config, no_show["id"], "--force")
    assert code == 1
    assert "no-show/notify=skipped, and still would be: condition of mapping 'no-show' is false" in err
    bridge.drain()
    assert destination.requests == []

    bridge.post(sample("booking.created"))  # now the bridge knows the customer
    bridge.drain()
    code, out, _ = run(capsys, "replay", "--config", config, no_show["id"])
    assert code == 1  # without --force a skipped action is left alone
    code, out, _ = run(capsys, "replay", "--config", config, no_show["id"], "--force")
    assert (code, out.strip()) == (0, f"queued again: {no_show['id']} no-show/notify")
    bridge.drain()
    assert [r.json() for r in destination.requests] == [{"customer": "Juan Pérez"}]


def test_force_with_a_dead_action_leaves_a_still_skipped_one_and_says_so(
    capsys, make_bridge, destination, redis_url, write_config
) -> None:  # noqa: ANN001
    mappings = """
  - name: always
    on: ["payment.failed"]
    actions:
      - {connector: crm, name: notify, body: {id: "{{ event.id }}"}}
  - name: never
    on: ["payment.failed"]
    when: "false"
    actions:
      - {connector: crm, name: notify, body: {id: "{{ event.id }}"}}
"""
    text = with_redis(http_config(destination.url, mappings), redis_url)
    bridge, config, event = posted(make_bridge, write_config, text, "payment.failed")
    code, out, _ = run(capsys, "replay", "--config", config, event["id"], "--force")
    assert code == 0
    assert out.splitlines() == [
        f"queued again: {event['id']} always/notify",
        f"still skipped: {event['id']} never/notify (condition of mapping 'never' is false: false)",
    ]
    bridge.drain()
    assert len(destination.requests) == 2  # the done action twice, the skipped one never


def test_forced_replay_of_a_done_email_sends_a_new_email(capsys, make_bridge, redis_url, write_config) -> None:  # noqa: ANN001
    """What replay --help and docs/email.md promise: the customer gets a second copy, with a new Message-ID
    (a mailbox drops a copy whose Message-ID it already has)."""
    smtp = SmtpServer().start()
    try:
        text = f"""
version: 1
webhook: {{secrets: ["{SECRET}"]}}
redis_url: "{redis_url}"
connectors:
  mailer: {{type: email, host: "{smtp.host}", port: {smtp.port}, security: none, from: "s@salon.example"}}
mappings:
  - name: payment-failed-email
    on: ["payment.failed"]
    actions:
      - {{connector: mailer, name: customer, to: "juan@email.com", subject: "Pago", text: "Hola"}}
"""
        bridge, config, event = posted(make_bridge, write_config, text, "payment.failed")
        code, _, _ = run(capsys, "replay", "--config", config, event["id"])
        assert code == 1 and len(smtp.messages) == 1  # not without --force
        for _ in range(2):
            code, _, _ = run(capsys, "replay", "--config", config, event["id"], "--force")
            assert code == 0
            bridge.drain()
        ids = [m.message()["Message-ID"] for m in smtp.messages]
        assert len(ids) == 3 and len(set(ids)) == 3
        detail = bridge.record(event["id"]).actions["payment-failed-email/customer"].detail
        assert detail.startswith("sent to juan@email.com as " + ids[-1])
    finally:
        smtp.stop()
    _, out, _ = run(capsys, "replay", "--help")
    assert "a done e-mail is sent again as a new e-mail, with a new Message-ID" in " ".join(out.split())
    email_doc = " ".join((REPO / "docs" / "email.md").read_text().split())
    assert "`replay --force` of a done e-mail action sends it again as a new e-mail" in email_doc


def test_commands_use_the_data_up_left_when_it_is_stopped(capsys, monkeypatch, tmp_path, destination) -> None:  # noqa: ANN001
    """After `up` stops, `events` in its folder reads ./var (its Redis started for the command), not another Redis."""
    for name in ("REDIS_URL", "SALON_BRIDGE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(http_config(destination.url))
    embedded = EmbeddedRedis(tmp_path / "var")
    embedded.start()
    try:
        bridge = Bridge(config, embedded.url)
        event = sample("booking.created")
        bridge.post(event)
        bridge.drain()
        bridge.close()
    finally:
        embedded.stop()
    assert not (tmp_path / "var" / "redis.sock").exists()

    code, out, err = run(capsys, "events", "--config", str(config))
    assert code == 0
    assert f"{event['id']}  booking.created" in out and "all-to-crm/notify: done" in out
    assert err.strip() == (
        f"salon-bridge up is not running: using its data in {tmp_path / 'var'}, "
        "with its Redis started for this command only"
    )
    assert _processes_mentioning(str(tmp_path)) == []  # and stopped again


ADMIN = 'admin:\n  username: owner\n  password_hash: "${ADMIN_PASSWORD_HASH}"\nmetrics:\n  token: "${METRICS_TOKEN}"'


def test_commands_that_do_not_serve_need_no_admin_variables(capsys, monkeypatch, write_config, redis_url) -> None:  # noqa: ANN001
    for name in ("ADMIN_PASSWORD_HASH", "METRICS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    config = str(write_config(with_redis(http_config("http://127.0.0.1:9", extra=ADMIN), redis_url)))
    for argv in (["events"], ["dead-letters"], ["simulate", "booking.created"]):
        code, _, err = run(capsys, *argv, "--config", config)
        assert (code, err) == (0, ""), argv
    code, _, err = run(capsys, "serve", "--config", config, "--port", "1")
    assert code == 1
    assert [line.split(": ", 2)[1] for line in err.strip().splitlines()] == ["admin.password_hash", "metrics.token"]
    assert all(
        "ADMIN_PASSWORD_HASH is not set" in line or "METRICS_TOKEN is not set" in line for line in err.splitlines()
    )


def test_check_config_after_a_dry_run_uses_its_secret_and_says_so(capsys, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.delenv("SALONBOOKIT_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("SALON_BRIDGE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(http_config("http://127.0.0.1:9").replace(SECRET, "${SALONBOOKIT_WEBHOOK_SECRET}"))
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "webhook-secret").write_text("generated-for-the-dry-run\n")
    code, out, err = run(capsys, "check-config", str(config))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "warning: SALONBOOKIT_WEBHOOK_SECRET is not set: checked with the dry run's secret in var/webhook-secret",
        f"{config}: OK (1 connectors, 1 mappings)",
    ]


def test_warnings_once_and_only_from_check_config_and_start_up(capsys, monkeypatch, tmp_path, redis_url) -> None:  # noqa: ANN001
    for name in ("SLACK_BOT_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS", "SMTP_USER", "SMTP_PASSWORD", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SALONBOOKIT_WEBHOOK_SECRET", "x")
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "config.example.yaml").read_text().replace("# redis_url: ", "redis_url: ", 1))
    config.write_text(config.read_text().replace('"redis://localhost:6379/0"', f'"{redis_url}"'))
    code, out, _ = run(capsys, "check-config", str(config))
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warnings) == len(set(warnings)) == 4
    assert sum("connectors.staff.token" in w for w in warnings) == 1
    for argv in (
        ["events"],
        ["simulate", "payment.failed"],
        ["send-sample", "booking.created", "--url", "http://127.0.0.1:1/"],
    ):
        _, out, err = run(capsys, *argv, "--config", str(config))
        assert "warning:" not in out + err, argv


def test_send_sample_all_follows_a_booking_and_an_order_through_their_lives(
    capsys, monkeypatch, make_bridge, redis_url
) -> None:  # noqa: ANN001
    """With the shipped config no action waits for an event still to come, and the appointment is tomorrow."""
    monkeypatch.setenv("SALONBOOKIT_WEBHOOK_SECRET", SECRET)
    example = (REPO / "config.example.yaml").read_text()
    bridge: Bridge = make_bridge(
        example.replace('# redis_url: "redis://localhost:6379/0"', f'redis_url: "{redis_url}"')
    )
    server = make_server("127.0.0.1", 0, bridge.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, out, _ = run(capsys, "send-sample", "all", "--url", f"http://127.0.0.1:{server.server_port}/webhooks")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(SEND_ORDER)
    bridge.drain()
    records = {r.type: r for r in bridge.runtime.store.recent(limit=20)}
    statuses = {f"{t} {a}": s.status for t, r in records.items() for a, s in r.actions.items()}
    # Scheduled sends (reminders) are planned, missed or cancelled as the booking goes; none waits or dies.
    done = {Status.DRY_RUN, Status.SKIPPED, Status.STALE, Status.SCHEDULED, Status.MISSED, Status.CANCELLED}
    assert set(statuses.values()) <= done, statuses
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    assert records["booking.created"].envelope["data"]["booking"]["fecha"] == tomorrow
    created = [records[t].envelope["created"] for t in SEND_ORDER]
    assert created == sorted(created) and len(set(created)) == 13


def test_the_send_order_is_the_samples_own_timeline() -> None:
    assert sorted(SEND_ORDER) == sample_types()
    created = [read_event(t)["created"] for t in SEND_ORDER]
    assert created == sorted(created)


SIMULATE_MAPPINGS = """
  - name: no-show
    on: ["booking.no_show"]
    actions:
      - {connector: crm, name: notify, body: {customer: "{{ booking.cliente.nombre }}"}}
  - name: shipped
    on: ["order.shipped"]
    actions:
      - {connector: crm, name: notify, body: {to: "{{ order.cliente.email }}"}}
"""


def test_simulate_reads_entity_memory_read_only_and_says_so(capsys, make_bridge, redis_url, write_config) -> None:  # noqa: ANN001
    text = with_redis(http_config("http://127.0.0.1:9", SIMULATE_MAPPINGS), redis_url)
    bridge: Bridge = make_bridge(text)
    config = str(write_config(text, "cli.yaml"))
    code, out, _ = run(capsys, "simulate", "--config", config, "order.shipped")
    assert code == 0
    assert f"entity memory: read from Redis at {redis_url} (read-only)" in out
    assert "would wait for earlier events, retrying for 900 s, then fail: " in out  # as the worker would
    assert "order 789: cliente unknown (order.created not received)" in out

    code, out, _ = run(capsys, "simulate", "--config", config, "booking.created")
    assert bridge.runtime.memory.load("uuid-tenant", "booking", "12345") is None  # nothing written
    bridge.post(sample("booking.created"))
    bridge.drain()
    code, out, _ = run(capsys, "simulate", "--config", config, "booking.no_show")
    assert code == 0 and '"customer": "Juan Pérez"' in out


def test_simulate_without_redis_says_it_used_the_event_alone(capsys, write_config) -> None:  # noqa: ANN001
    config = write_config(with_redis(http_config("http://127.0.0.1:9", SIMULATE_MAPPINGS), "redis://127.0.0.1:1/0"))
    code, out, _ = run(capsys, "simulate", "--config", str(config), "booking.no_show")
    assert code == 0
    assert (
        "entity memory: not used (Redis at redis://127.0.0.1:1/0 does not answer): "
        "booking, order and customer are what this event says alone"
    ) in out
    assert "would wait for earlier events" in out


def test_events_show_gives_rendered_fields_hidden_secrets_and_the_email_text(
    capsys, make_bridge, redis_url, write_config
) -> None:  # noqa: ANN001
    """What docs/email.md promises: in a dry run, read what each e-mail would have been in `events`."""
    text = f"""
version: 1
webhook: {{secrets: ["{SECRET}"]}}
redis_url: "{redis_url}"
connectors:
  mailer: {{type: email, host: smtp.example.com, from: "s@salon.example", dry_run: true}}
  crm: {{type: http, url: "http://127.0.0.1:9/hooks", dry_run: true}}
mappings:
  - name: order-email
    on: ["order.created"]
    actions:
      - connector: mailer
        name: customer
        to: "{{{{ order.cliente.email }}}}"
        subject: "Pedido {{{{ order.numero }}}}"
        html: "<p>Hola {{{{ order.cliente.nombre }}}},</p><p>tu pedido va <b>bien</b>.</p>"
      - connector: crm
        name: copy
        body: {{order: "{{{{ order.numero }}}}", api_key: "k-{{{{ event.id }}}}"}}
"""
    bridge: Bridge = make_bridge(text)
    config = str(write_config(text, "cli.yaml"))
    event = sample("order.created")
    bridge.post(event)
    bridge.drain()
    code, out, _ = run(capsys, "events", "--config", config, "--show")
    assert code == 0
    assert out.splitlines()[1:] == [
        "    order-email/copy: dry-run, 1 attempt(s) (would send (dry run): nothing left the machine)",
        '        body: {"order": "PED-2024-0789", "api_key": "*** (hidden)"}',
        "    order-email/customer: dry-run, 1 attempt(s) (would send (dry run): nothing left the machine)",
        "        to: juan@email.com",
        "        subject: Pedido PED-2024-0789",
        "        text part:",
        "          Hola Juan Pérez,",
        "",
        "          tu pedido va bien.",
    ]
    _, plain, _ = run(capsys, "events", "--config", config)
    assert "text part" not in plain
    assert "in `salon-bridge events --show`" in " ".join((REPO / "docs" / "email.md").read_text().split())


def slack_check_config(fake: FakeSlack, token: str = f'"{DEFAULT_TOKEN}"') -> str:
    """The shipped Slack connector (in dry run, as config.example.yaml has it) and mappings, on the fake."""
    mappings = (REPO / "docs" / "examples" / "slack.yaml").read_text().split("\nmappings:\n", 1)[1]
    return (
        f'version: 1\nwebhook:\n  secrets: ["{SECRET}"]\nconnectors:\n  staff:\n    type: slack\n'
        f'    token: {token}\n    base_url: "{fake.api_url}"\n    dry_run: true\nmappings:\n{mappings}'
    )


def test_slack_check_checks_token_scopes_and_channels(capsys, write_config, monkeypatch) -> None:  # noqa: ANN001
    """What docs/slack.md tells an owner to run before removing dry_run from the Slack connector."""
    fake = FakeSlack().start()
    try:
        for name in ("caja", "recepcion", "tienda"):
            fake.add_channel(name)
        config = write_config(slack_check_config(fake))
        code, out, err = run(capsys, "slack-check", str(config))
        assert (code, err) == (0, "")
        assert out.strip() == f"{config}: Slack OK (staff: token, scopes and channels checked)"
        assert fake.calls_of("auth.test") and not fake.calls_of("chat.postMessage")

        next(c for c in fake.channels.values() if c.name == "tienda").is_member = False
        fake.scopes.remove("chat:write.public")  # with it the app could post there uninvited
        code, _, err = run(capsys, "slack-check", str(config))
        assert code == 1
        invite = f"invite it (in #tienda, type /invite @{BOT_NAME})"
        assert err.strip() == f"{config}: connectors.staff: the app is not in #tienda: {invite}"

        monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
        unset = write_config(slack_check_config(fake, '"${SLACK_BOT_TOKEN}"'), "unset.yaml")
        code, _, err = run(capsys, "slack-check", str(unset))
        assert code == 1
        assert err.strip().endswith(
            "connectors.staff.token: environment variable SLACK_BOT_TOKEN is not set or empty "
            "(and ${SLACK_BOT_TOKEN} has no :-default)"
        )
    finally:
        fake.stop()
    code, _, err = run(capsys, "slack-check", str(write_config(http_config("http://127.0.0.1:9"), "http.yaml")))
    assert code == 1 and err.strip().endswith("has no connector of type slack")


def _lose_the_body(bridge: Bridge, event_id: str) -> None:
    """What an eviction or an empty restart mid-action leaves: the action's state written back alone."""
    from bridge.store import event_key, record_key

    key = record_key(event_key(event_id))
    bridge.redis.hdel(key, "body", "received_at")


def test_a_record_whose_data_was_lost_is_said_so_by_every_command(
    capsys,
    make_bridge,
    destination,
    redis_url,
    write_config,  # noqa: ANN001
) -> None:
    text = with_redis(http_config(destination.url), redis_url)
    bridge: Bridge = make_bridge(text)
    config = str(write_config(text, "cli.yaml"))
    destination.respond_with(400, "bad request")
    event = sample("booking.created")
    bridge.post(event)
    bridge.drain()
    _lose_the_body(bridge, event["id"])

    code, out, _ = run(capsys, "dead-letters", "--config", config)
    assert code == 0 and "data lost in Redis: the event itself is gone" in out
    assert "all-to-crm/notify (crm), 1 attempt(s): HTTP 400" in out and "replay:" not in out
    code, out, _ = run(capsys, "events", "--config", config)
    assert code == 0 and "data lost in Redis" in out
    code, _, err = run(capsys, "replay", "--config", config, event["id"])
    assert code == 1 and "data lost in Redis" in err and "ask SalonBookIt to send it again" in err


def test_check_config_online_reports_an_evicting_redis_and_one_without_persistence(
    capsys,
    write_config,
    destination,
    private_redis,  # noqa: ANN001
) -> None:
    evicting = private_redis(maxmemory_policy="allkeys-lru", appendonly="no", save="")
    config = str(write_config(with_redis(http_config(destination.url), evicting.url)))
    code, out, err = run(capsys, "check-config", config, "--online")
    assert code == 1
    assert f"{config}: redis_url: Redis at {evicting.url}: Redis evicts keys when it is full" in err
    assert "`CONFIG SET maxmemory-policy noeviction`" in err
    assert "warning: Redis at" in out and "Redis keeps nothing on disk" in out

    keeping = private_redis(appendonly="yes")
    config = str(write_config(with_redis(http_config(destination.url), keeping.url), "keeping.yaml"))
    code, out, err = run(capsys, "check-config", config, "--online")
    assert (code, err) == (0, "")
    assert out.strip().endswith("OK (1 connectors, 1 mappings) (destinations and Redis reached)")


def test_check_config_warns_about_an_on_typo_and_strict_makes_it_an_error(capsys, write_config, destination) -> None:  # noqa: ANN001
    typo = http_config(destination.url).replace('on: ["*"]', 'on: ["payment.fialed"]')
    config = str(write_config(typo))
    code, out, _ = run(capsys, "check-config", config)
    assert code == 0
    assert "'payment.fialed' matches no event type; did you mean 'payment.failed'?" in out
    code, _, err = run(capsys, "check-config", config, "--strict")
    assert code == 1 and "did you mean 'payment.failed'? (an error with --strict)" in err
    broken = str(write_config(typo.replace("connector: crm", "connector: crn"), "broken.yaml"))
    code, out, err = run(capsys, "check-config", broken)
    assert code == 1
    assert "warning: " in out and "did you mean 'payment.failed'?" in out  # shown with the errors
    assert "unknown connector 'crn'" in err


def test_check_config_warns_about_a_long_fixed_sms_and_strict_makes_it_an_error(capsys, write_config) -> None:  # noqa: ANN001
    long_body = "Hola, te recordamos tu cita de mañana. " * 12
    text = http_config(
        "http://127.0.0.1:9",
        mappings=f"""
  - name: aviso
    on: ["booking.created"]
    actions:
      - connector: sms
        to: "{{{{ booking.cliente.telefono }}}}"
        body: "{long_body}"
""",
        connector_extra='  sms:\n    type: sms\n    account_sid: AC1\n    auth_token: tok\n    from: "+34600000000"',
    )
    config = str(write_config(text))
    code, out, _ = run(capsys, "check-config", config)
    assert code == 0 and "mappings[0].actions[0].body: the SMS takes 4 parts (GSM-7); each part is billed" in out
    code, _, err = run(capsys, "check-config", config, "--strict")
    assert code == 1 and "the SMS takes 4 parts (GSM-7); each part is billed (an error with --strict)" in err
