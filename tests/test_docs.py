"""The docs describe this program: the commands they name exist, and what they show is what it does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bridge.cli import build_parser
from mappings.config import load_config
from tests.harness import SECRET, Bridge, sample
from tests.test_cli import run, with_redis

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "config.example.yaml", *sorted((REPO / "docs").glob("*.md"))]


def _commands() -> set[str]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    return set(sub.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_a_doc_names_exists(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    code = re.findall(r"`([^`\n]+)`", text) + re.findall(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    pattern = r"(?:^|\s|\$|/)salon-bridge (?:--[a-z-]+ \S+ )*([a-z][a-z-]+)"
    named = {name for span in code for name in re.findall(pattern, span, re.MULTILINE)}
    named |= set(re.findall(r"\b([a-z]+-check)\b", text))  # "... and slack-check passes"
    assert named <= _commands(), named - _commands()


def test_the_help_examples_name_actions_of_the_shipped_config(capsys, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("SALONBOOKIT_WEBHOOK_SECRET", "x")
    action_ids = {a.id for m in load_config(REPO / "config.example.yaml").mappings for a in m.actions}
    for command in ("replay", "dead-letters", "events"):
        _, out, _ = run(capsys, command, "--help")
        for action in re.findall(r"--action (\S+/\S+)", out):
            assert action in action_ids, f"{command} --help: {action}"


def test_the_payment_failed_message_in_slack_md_is_what_simulate_shows(
    capsys, monkeypatch, make_bridge, redis_url, write_config
) -> None:  # noqa: ANN001
    """docs/slack.md: the shipped sample alone, and a failed payment of a booking the bridge knows."""
    monkeypatch.setenv("SALONBOOKIT_WEBHOOK_SECRET", SECRET)
    text = (REPO / "config.example.yaml").read_text()
    text = with_redis(text.replace('# redis_url: "redis://localhost:6379/0"\n', ""), redis_url)
    bridge: Bridge = make_bridge(text)
    config = str(write_config(text, "example.yaml"))
    bridge.post(sample("booking.created"))
    bridge.drain()
    doc = (REPO / "docs" / "slack.md").read_text(encoding="utf-8")
    _, out, _ = run(capsys, "simulate", "--config", config, "payment.failed")
    alone = re.search(r"booking's code, customer and\sdate: `([^`]+)`", doc)
    assert alone is not None and f'"text": "{alone.group(1)}"' in out  # booking 12346: never created
    known = sample("payment.failed")
    known["data"]["booking"]["id"] = 12345  # the booking of booking.created
    event_file = Path(config).parent / "known.json"
    event_file.write_text(json.dumps(known))
    _, out, _ = run(capsys, "simulate", "--config", config, str(event_file))
    [row] = [line for line in doc.splitlines() if line.startswith("| `payment.failed` | `#caja` |")]
    message = row.split(" | ")[2].removesuffix(" |").replace("**", "*")
    assert f'"text": "{message}"' in out


def test_the_webhook_route_in_slack_md_is_what_check_config_says(capsys, write_config) -> None:  # noqa: ANN001
    mappings = (REPO / "docs" / "examples" / "slack.yaml").read_text().split("\nmappings:\n", 1)[1]
    config = write_config(
        f'version: 1\nwebhook:\n  secrets: ["{SECRET}"]\nconnectors:\n  staff:\n    type: slack\n'
        f'    webhook_url: "https://hooks.slack.com/services/T0/B0/xyz"\nmappings:\n{mappings}'
    )
    code, _, err = run(capsys, "check-config", str(config))
    doc = " ".join((REPO / "docs" / "slack.md").read_text().split())
    quoted = re.search(r'exit 1: "([^"]+)"', doc)
    assert code == 1 and quoted is not None
    assert all(quoted.group(1) in line for line in err.strip().splitlines() if "caja" in line)


def test_pasting_an_event_id_in_the_admin_is_described_as_it_behaves() -> None:
    """tests/test_admin.py searches by event id and gets that one event listed."""
    doc = " ".join((REPO / "docs" / "operations.md").read_text().split())
    assert "Pasting an exact event id lists just that event (one row: open it from there)." in doc
    admin_tests = (REPO / "tests" / "test_admin.py").read_text()
    assert 'assert event_ids_on(search(others[2]["id"])) == [others[2]["id"]]' in admin_tests
