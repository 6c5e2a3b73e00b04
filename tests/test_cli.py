"""The salon-bridge command: check-config, simulate, events, dead-letters, replay, send-sample."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from bridge.cli import main
from bridge.store import DONE
from tests.conftest import http_config
from tests.harness import SECRET, Bridge, sample

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
        "serve", "worker", "up", "check-config", "simulate", "events", "dead-letters", "replay", "send-sample",
        "hash-password",
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
    assert bridge.record(failing["id"]).actions["all-to-crm/notify"].status == DONE
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
    assert state.status == DONE and "replay of done" in [h["outcome"] for h in state.history]


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
    assert bridge.record(event["id"]).actions["all-to-crm/notify"].status == DONE


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
