"""A changed config taken on without a restart (bridge.reload): `serve` and two workers as real
processes pick up a valid change (on a watched write, or on `salon-bridge reload`'s SIGHUP), keep
running on the old config when the change is invalid and say why, and switch between jobs only."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from redis import Redis

from bridge.reload import ConfigSource, processes, version_of
from bridge.samples import fresh_sample, signed_request
from bridge.server import LiveApp
from bridge.store import EventStore
from mappings.config import load_config
from tests.conftest import DEFAULT_MAPPINGS, http_config
from tests.fakes.http_server import CapturingServer
from tests.harness import SECRET
from tests.test_admin import admin_config, login
from tests.test_server import Serve
from tests.test_worker import WorkerProcess

EXTRA_MAPPING = (
    DEFAULT_MAPPINGS.rstrip("\n")
    + """
  - name: bookings-too
    on: ["booking.*"]
    actions:
      - connector: crm
        name: extra
        body: {booking: "{{ booking.codigo }}"}
"""
)


def editor_write(path: Path, text: str) -> None:
    """As editors save: a temp file next to it, renamed over it."""
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def wait_for(what: str, check: Callable[[], object], timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """`serve` (one web process) and two workers on one config file and one Redis db."""

    def __init__(self, config: Path, redis_url: str, tmp_path: Path, watch: bool):
        self.config, self.redis = config, Redis.from_url(redis_url)
        flags = ["--watch-config"] if watch else []
        self.workers = [WorkerProcess(config, redis_url, tmp_path / f"worker-{n}.log", *flags) for n in (1, 2)]
        self.serve = Serve(config, tmp_path / "serve.log", workers=1, watch=watch)
        self.store = EventStore(self.redis, 3600, 3600)
        wait_for("three processes reporting", lambda: len(processes(self.redis)) == 3)

    def versions(self) -> dict[str, str]:
        """role:name -> the version it runs, or will run from its next job on."""
        return {f"{p.role}:{p.name}": p.pending or p.version for p in processes(self.redis)}

    def all_on(self, version: str) -> bool:
        versions = self.versions()
        return len(versions) == 3 and set(versions.values()) == {version}

    def deliver(self, event_type: str = "booking.created") -> str:
        event = fresh_sample(event_type)
        body, headers = signed_request(event, SECRET)
        answer = requests.post(f"{self.serve.url}/webhooks", data=body, headers=headers, timeout=5)
        assert answer.status_code == 202, answer.text
        return str(event["id"])

    def versions_of(self, event_id: str) -> dict[str, str]:
        """action id -> the config version its last attempt ran under, once every action is done."""

        def done() -> dict[str, str] | None:
            record = self.store.find(event_id)
            if record is None or not record.actions or any(s.status != "done" for s in record.actions.values()):
                return None
            return {a: s.history[-1]["config"] for a, s in record.actions.items()}

        return wait_for(f"the actions of {event_id}", done)  # type: ignore[return-value]

    def readyz(self) -> dict:
        return requests.get(f"{self.serve.url}/readyz", timeout=5).json()

    def logs(self) -> str:
        return self.serve.output() + "".join(w.output() for w in self.workers)

    def stop(self) -> None:
        self.serve.stop()
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def running(
    redis_url: str, write_config: Callable[[str], Path], tmp_path: Path, destination: CapturingServer
) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(watch: bool = True) -> Running:
        config = write_config(http_config(destination.url) + f'redis_url: "{redis_url}"\n')
        bridge = Running(config, redis_url, tmp_path, watch)
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        bridge.stop()


def with_redis(text: str, redis_url: str) -> str:
    return text + f'redis_url: "{redis_url}"\n'


pytestmark = pytest.mark.slow


def test_a_valid_change_is_taken_on_by_every_process_and_each_attempt_keeps_its_version(
    running, destination, redis_url
) -> None:  # noqa: ANN001
    bridge: Running = running()
    old = version_of(bridge.config.read_bytes())
    assert bridge.all_on(old)
    before = bridge.deliver()
    assert bridge.versions_of(before) == {"all-to-crm/notify": old}

    new_text = with_redis(http_config(destination.url, EXTRA_MAPPING), redis_url)
    editor_write(bridge.config, new_text)
    new = version_of(new_text.encode())
    wait_for("every process on the new version", lambda: bridge.all_on(new))
    assert wait_for("/readyz on the new version", lambda: bridge.readyz()["config"] == new)

    after = bridge.deliver()
    assert bridge.versions_of(after) == {"all-to-crm/notify": new, "bookings-too/extra": new}
    assert bridge.versions_of(before) == {"all-to-crm/notify": old}  # what ran, ran on its config
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "events", "--config", str(bridge.config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"all-to-crm/notify: done, 1 attempt(s) on config {old}" in out
    assert f"bookings-too/extra: done, 1 attempt(s) on config {new}" in out


def test_an_invalid_change_changes_nothing_and_readyz_says_why(running, destination, redis_url) -> None:  # noqa: ANN001
    bridge: Running = running()
    old = version_of(bridge.config.read_bytes())
    broken = with_redis(http_config(destination.url, EXTRA_MAPPING.replace("connector: crm\n        name: extra",
                                                                           "connector: nowhere\n        name: extra")),
                        redis_url)  # fmt: skip
    with bridge.config.open("w", encoding="utf-8") as out:  # a truncating write, as `>` or many editors do
        out.write(broken)

    def rejected() -> str:
        state = bridge.readyz()
        return state["config"] if state["config"].startswith("rejected") else ""

    state = wait_for("/readyz to show the rejection", rejected)
    assert "mappings[1].actions[0].connector" in str(state) and "nowhere" in str(state)
    body = bridge.readyz()
    assert body["status"] == "ready"  # the old config still runs
    assert requests.get(f"{bridge.serve.url}/readyz", timeout=5).status_code == 200
    wait_for("workers reporting the rejection", lambda: all(p.rejected for p in processes(bridge.redis)))
    assert bridge.versions_of(bridge.deliver()) == {"all-to-crm/notify": old}
    assert "the changed config is rejected" in bridge.logs()
    assert "config.yaml:" in bridge.logs()  # file:line, as check-config prints it

    bridge.config.write_bytes(b"version: 1\n\xff\xfe not text")  # not UTF-8
    wait_for("the next rejection", lambda: "UTF-8" in bridge.readyz()["config"])
    bridge.config.unlink()  # vanished
    wait_for("the file's absence", lambda: "not found" in bridge.readyz()["config"])
    good = with_redis(http_config(destination.url, EXTRA_MAPPING), redis_url)
    editor_write(bridge.config, good)
    wait_for("every process on the fixed config", lambda: bridge.all_on(version_of(good.encode())))
    assert bridge.readyz()["config"] == version_of(good.encode())
    assert all(p.poll() is None for p in [bridge.serve.process, *(w.process for w in bridge.workers)])


def test_reload_sends_sighup_to_processes_that_do_not_watch(running, destination, redis_url) -> None:  # noqa: ANN001
    bridge: Running = running(watch=False)
    new_text = with_redis(http_config(destination.url, EXTRA_MAPPING), redis_url)
    bridge.config.write_text(new_text, encoding="utf-8")
    new = version_of(new_text.encode())
    time.sleep(1.0)  # nobody watches: nothing may change by itself
    assert not any(v == new for v in bridge.versions().values())
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "reload", "--config", str(bridge.config)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("asked ") == 3
    wait_for("every process on the new version", lambda: bridge.all_on(new))
    assert bridge.versions_of(bridge.deliver()) == {"all-to-crm/notify": new, "bookings-too/extra": new}
    status = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "status", "--config", str(bridge.config)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"config file {bridge.config}: version {new}" in status
    assert status.count(new) == 4 and "not on the file's version" not in status


def test_a_job_in_flight_during_a_switch_finishes_on_its_config(running, destination, redis_url) -> None:  # noqa: ANN001
    bridge: Running = running()
    old = version_of(bridge.config.read_bytes())
    new_text = with_redis(http_config(destination.url, EXTRA_MAPPING), redis_url)
    new = version_of(new_text.encode())
    switched = threading.Event()

    def change_while_sending(request: object) -> None:
        if destination.on_request is None:
            return
        destination.on_request = None  # once
        editor_write(bridge.config, new_text)
        wait_for("the workers to have the new config ready", lambda: bridge.all_on(new))
        switched.set()

    destination.on_request = change_while_sending
    in_flight = bridge.deliver("order.created")
    assert bridge.versions_of(in_flight) == {"all-to-crm/notify": old}
    assert switched.is_set()
    assert bridge.versions_of(bridge.deliver()) == {"all-to-crm/notify": new, "bookings-too/extra": new}


# -- ConfigSource on its own: the bad files of a watch --


def test_a_half_written_missing_or_non_utf8_file_is_rejected_with_the_reason(write_config, destination) -> None:  # noqa: ANN001
    path = write_config(http_config(destination.url))
    source = ConfigSource(load_config(path))
    start = source.version
    cases = [
        (b"", "the config must be a mapping"),
        (path.read_bytes()[:60], "config.yaml"),  # cut mid-file: never half-loaded
        (b"version: 1\n\xc3(", "config.yaml:2: not UTF-8 text"),
    ]
    for data, reason in cases:
        path.write_bytes(data)
        assert source.refresh() is False
        assert source.rejected is not None and reason in " ".join(source.rejected.errors), source.rejected
        assert source.version == start and source.take() is None
    path.unlink()
    assert source.refresh() is False and "config file not found" in source.rejected.first
    path.write_text(http_config(destination.url, EXTRA_MAPPING), encoding="utf-8")
    assert source.refresh() is True and source.rejected is None
    taken = source.take()
    assert taken is not None and taken[1] == source.version != start
    assert [m.name for m in taken[0].mappings] == ["all-to-crm", "bookings-too"]


def test_the_admin_shows_a_banner_with_the_errors_of_a_rejected_config(write_config, destination, redis_url) -> None:  # noqa: ANN001
    path = write_config(with_redis(admin_config(destination.url), redis_url))
    source = ConfigSource(load_config(path))
    redis = Redis.from_url(redis_url)
    live = LiveApp(source, redis)
    client = live.app.test_client()
    assert login(client).status_code == 303
    assert "config-banner" not in client.get("/admin/").text
    path.write_text(path.read_text().replace("type: http", "type: htp"), encoding="utf-8")
    assert source.refresh() is False
    page = client.get("/admin/").text
    assert "The changed config file was rejected" in page and "htp" in page
    assert "rejected (" in client.get("/readyz").json["config"]


# -- preview: the stored events through the config in force and a new one --

OLD_MAPPINGS = """
  - name: all-to-crm
    on: ["*"]
    actions:
      - connector: crm
        name: notify
        body: {id: "{{ event.id }}", type: "{{ type }}"}
  - name: bookings
    on: ["booking.*"]
    actions:
      - connector: crm
        name: note
        body: {code: "{{ booking.codigo }}"}
"""
NEW_MAPPINGS = """
  - name: all-to-crm
    on: ["*"]
    actions:
      - connector: crm
        name: notify
        body: {id: "{{ event.id }}", type: "{{ type }}", hello: "Hola {{ customer.nombre }}"}
  - name: bookings
    on: ["booking.*"]
    when: "false"
    actions:
      - connector: crm
        name: note
        body: {code: "{{ booking.codigo }}"}
  - name: orders
    on: ["order.*"]
    actions:
      - connector: crm
        name: order-note
        body: {order: "{{ order.id }}"}
  - name: broken
    on: ["booking.created"]
    actions:
      - connector: crm
        name: needs-room
        body: {room: "{{ 1 / 0 }}"}
"""


def test_preview_shows_additions_removals_field_changes_and_new_failures(
    capsys, make_bridge, write_config, destination, redis_url
) -> None:  # noqa: ANN001
    import json as json_

    from bridge.cli import main
    from tests.harness import sample

    old_text = with_redis(http_config(destination.url, OLD_MAPPINGS), redis_url)
    bridge = make_bridge(old_text)
    old = write_config(old_text, "old.yaml")
    new = write_config(with_redis(http_config(destination.url, NEW_MAPPINGS), redis_url), "new.yaml")
    booking, order = sample("booking.created"), sample("order.created")
    bridge.post(booking)
    bridge.post(order)
    bridge.drain()
    sent = len(destination.requests)

    assert main(["preview", str(new), "--config", str(old), "--since", "1h", "--format", "json"]) == 0
    sections = json_.loads(capsys.readouterr().out)["sections"]
    assert [(e["action"], e["event"]) for e in sections["added"]] == [("orders/order-note", order["id"])]
    assert [(e["action"], e["event"], e["booking"], e["customer"]) for e in sections["removed"]] == [
        ("bookings/note", booking["id"], "ABC123XY", "Juan Pérez")
    ]
    assert "condition of mapping 'bookings' is false" in sections["removed"][0]["detail"]
    changed = {(e["action"], e["event"]): e["changes"] for e in sections["changed"]}
    assert set(changed) == {("all-to-crm/notify", booking["id"]), ("all-to-crm/notify", order["id"])}
    old_body, new_body = changed[("all-to-crm/notify", booking["id"])]["body"]
    assert "hello" not in old_body and new_body["hello"] == "Hola Juan Pérez"
    assert [(e["action"], e["event"]) for e in sections["failing"]] == [("broken/needs-room", booking["id"])]
    assert (
        "template error" in sections["failing"][0]["detail"] and "division by zero" in sections["failing"][0]["detail"]
    )

    assert main(["preview", str(new), "--config", str(old), "--since", "1h"]) == 0
    text = capsys.readouterr().out
    assert "2 stored event(s)" in text and "mapping orders:" in text and "Actions whose fields change (2):" in text
    assert "booking ABC123XY · Juan Pérez" in text
    assert len(destination.requests) == sent  # nothing was sent

    assert main(["preview", str(old.parent / "nope.yaml"), "--config", str(old)]) == 1
    assert "nope.yaml: config file not found" in capsys.readouterr().err
    invalid = write_config(
        with_redis(http_config(destination.url, NEW_MAPPINGS.replace("crm", "crn")), redis_url), "x.yaml"
    )
    assert main(["preview", str(invalid), "--config", str(old)]) == 1
    assert "x.yaml:" in capsys.readouterr().err
    bridge.redis.delete("sb:events")
    assert main(["preview", str(new), "--config", str(old), "--since", "1h"]) == 0
    assert "no stored events in the period" in capsys.readouterr().out


def test_the_admin_previews_a_config_file_the_server_reads(make_bridge, write_config, destination, redis_url) -> None:  # noqa: ANN001
    from tests.harness import sample

    bridge = make_bridge(with_redis(admin_config(destination.url, OLD_MAPPINGS), redis_url))
    new = write_config(with_redis(http_config(destination.url, NEW_MAPPINGS), redis_url), "new.yaml")
    booking = sample("booking.created")
    bridge.post(booking)
    bridge.drain()
    client = bridge.app.test_client()
    assert client.get(f"/admin/preview?path={new}").status_code in (302, 303)  # behind the login
    assert login(client).status_code == 303
    page = client.get(f"/admin/preview?path={new}&since=1h").text
    assert "1 stored event(s) compared" in page and "mapping bookings:" in page and "broken/needs-room" in page
    broken = write_config("version: 1\n", "broken.yaml")
    page = client.get(f"/admin/preview?path={broken}").text
    assert "This config is not valid" in page and "webhook" in page


def test_preview_shows_scheduled_sends_planned_moved_and_dropped(
    capsys, make_bridge, write_config, destination, redis_url
) -> None:  # noqa: ANN001
    """A reminder added, one moved (a changed offset) and one removed, for a booking a week ahead."""
    import json as json_
    from datetime import UTC, datetime, timedelta

    from bridge.cli import main
    from tests.harness import sample

    def reminders(*pairs: tuple[str, str]) -> str:
        return "".join(
            f"""
  - name: {name}
    on: ["booking.created"]
    schedule: {{at: "{at}"}}
    actions:
      - connector: crm
        body: {{code: "{{{{ booking.codigo }}}}"}}
"""
            for name, at in pairs
        )

    old_text = with_redis(
        http_config(destination.url, reminders(("r24", "booking.start - 24h"), ("r2", "booking.start - 2h"))), redis_url
    )
    new_text = with_redis(
        http_config(destination.url, reminders(("r24", "booking.start - 48h"), ("r1", "booking.start - 1h"))), redis_url
    )
    bridge = make_bridge(old_text)
    booking = sample("booking.created")
    booking["data"]["booking"]["fecha"] = (datetime.now(UTC) + timedelta(days=7)).date().isoformat()
    bridge.post(booking)
    bridge.drain()
    old, new = write_config(old_text, "old.yaml"), write_config(new_text, "new.yaml")
    assert main(["preview", str(new), "--config", str(old), "--since", "1h", "--format", "json"]) == 0
    entries = {e["action"]: e for e in json_.loads(capsys.readouterr().out)["sections"]["scheduled"]}
    assert set(entries) == {"r24", "r2", "r1"}
    assert entries["r24"]["detail"].startswith("would move from ") and entries["r24"]["booking"] == "ABC123XY"
    assert entries["r2"]["detail"].startswith("the send at ") and "would be dropped" in entries["r2"]["detail"]
    assert entries["r1"]["detail"].startswith("would be planned for ")
