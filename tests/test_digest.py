"""The morning digest: daily mappings fired by the workers' scheduler, one record per
(mapping, tenant, professional, day) in the event log (bridge/digest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from bridge import digest, schedules
from bridge.operations import replay
from bridge.queue import enqueue
from bridge.store import Status
from mappings.config import ConfigError, load_config_text
from mappings.schedule import Daily, daily_missed_reason, next_occurrence, occurrence, parse_quiet_hours
from tests.conftest import http_config
from tests.fakes.http_server import CapturingServer
from tests.fakes.slack_server import DEFAULT_TOKEN, FakeSlack
from tests.fakes.smtp_server import SmtpServer
from tests.harness import SECRET, Bridge, sample
from tests.test_cli import with_redis
from tests.test_schedules import fire_due

MADRID = ZoneInfo("Europe/Madrid")
TENANT = "uuid-tenant"
STAFF = """
staff:
  "5": {name: "Carlos García", email: "carlos@salon.example"}
  "9": {name: "Lucía Gil", email: "lucia@salon.example"}
"""


# ---- the time of each run, pure ------------------------------------------------------------------


def test_a_daily_run_is_at_its_wall_clock_time_in_the_salon_zone() -> None:
    daily = Daily("08:00", clock(8, 0))
    run = occurrence(daily, date(2026, 7, 1), MADRID)
    assert run.start == run.due == datetime(2026, 7, 1, 6, 0, tzinfo=UTC).timestamp()  # 08:00 CEST
    winter = occurrence(daily, date(2026, 12, 1), MADRID)
    assert winter.start == datetime(2026, 12, 1, 7, 0, tzinfo=UTC).timestamp()  # 08:00 CET


def test_dst_change_nights_for_a_daily_time() -> None:
    """Madrid skips 02:00-03:00 on 2026-03-29 and shows it twice on 2026-10-25."""
    daily = Daily("02:30", clock(2, 30))
    spring = occurrence(daily, date(2026, 3, 29), MADRID)
    assert spring.start == datetime(2026, 3, 29, 1, 30, tzinfo=UTC).timestamp()  # 03:30 CEST, after the gap
    autumn = occurrence(daily, date(2026, 10, 25), MADRID)
    assert autumn.start == datetime(2026, 10, 25, 0, 30, tzinfo=UTC).timestamp()  # the first 02:30 (CEST)
    # 08:00 stays 08:00 on both sides of a change: 23 h and 25 h apart in real time.
    eight = Daily("08:00", clock(8, 0))
    before, after = (occurrence(eight, date(2026, 10, d), MADRID).start for d in (24, 25))
    assert after - before == 25 * 3600
    before, after = (occurrence(eight, date(2026, 3, d), MADRID).start for d in (28, 29))
    assert after - before == 23 * 3600


def test_the_next_run_is_today_until_its_time_then_tomorrow() -> None:
    daily = Daily("08:00", clock(8, 0))
    seven = datetime(2026, 7, 1, 7, 0, tzinfo=MADRID).timestamp()
    assert next_occurrence(daily, MADRID, seven).day == date(2026, 7, 1)
    nine = datetime(2026, 7, 1, 9, 0, tzinfo=MADRID).timestamp()
    assert next_occurrence(daily, MADRID, nine).day == date(2026, 7, 2)


def test_quiet_hours_move_a_daily_run_to_their_end() -> None:
    daily = Daily("07:00", clock(7, 0), quiet=parse_quiet_hours("21:00-08:30"))
    run = occurrence(daily, date(2026, 7, 1), MADRID)
    assert run.due == datetime(2026, 7, 1, 8, 30, tzinfo=MADRID).timestamp()
    assert run.start == datetime(2026, 7, 1, 7, 0, tzinfo=MADRID).timestamp()
    assert "quiet hours" in run.note


def test_a_run_later_than_its_grace_is_missed_with_the_reason() -> None:
    daily = Daily("08:00", clock(8, 0), grace=900)
    due = occurrence(daily, date(2026, 7, 1), MADRID).due
    assert daily_missed_reason(daily, due, due + 600, MADRID) is None
    reason = daily_missed_reason(daily, due, due + 2 * 3600, MADRID)
    assert reason is not None and "was due 2 h ago (01/07 08:00), more than the grace of 15 min" in reason


# ---- config errors -------------------------------------------------------------------------------

BAD_DAILY = [  # the mapping's lines start at config.yaml:19
    ('schedule: {daily: "08:00", for_each: professionals}', "mappings[0].schedule.for_each", 19, "'professional'"),
    ('schedule: {daily: "8 am"}', "mappings[0].schedule.daily", 19, "expected a time of day like '08:00'"),
    ('schedule: {daily: "25:00"}', "mappings[0].schedule.daily", 19, "expected a time of day"),
    ('schedule: {daily: "08:00", at: "event.created"}', "mappings[0].schedule", 19, "both `at:` and `daily:`"),
    ('on: ["booking.created"]\n    schedule: {daily: "08:00"}', "mappings[0].on", 19, "runs by the clock"),
    (
        'on: ["booking.created"]\n    schedule: {at: "booking.start", for_each: salon}',
        "mappings[0].schedule",
        20,
        "`for_each:` goes with `daily:`",
    ),
    ("schedule: {grace: 10m}", "mappings[0].schedule", 19, "neither `at:` nor `daily:`"),
    ('when: "true"', "mappings[0].on", 18, "missing required key"),  # the mapping's own line
]


@pytest.mark.parametrize(
    ("mapping", "path", "line", "message"),
    BAD_DAILY,
    ids=["for_each", "daily", "hour", "both", "on", "for_each-at", "neither", "no-on"],
)
def test_check_config_names_a_bad_daily_schedule(mapping: str, path: str, line: int, message: str) -> None:
    text = http_config(
        "http://127.0.0.1:9",
        mappings=f"""
  - name: agenda-del-dia
    {mapping}
    actions:
      - connector: crm
        body: {{pro: "{{{{ professional }}}}"}}
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "config.yaml")
    problem = next(p for p in caught.value.problems if f": {path}:" in p)
    assert message in problem and problem.startswith(f"config.yaml:{line}:")


def test_a_daily_mapping_loads_with_seconds_and_a_default_for_each() -> None:
    config = load_config_text(digest_config("http://127.0.0.1:9", "08:00:30"))
    mapping = config.mappings[0]
    assert mapping.daily == Daily("08:00:30", clock(8, 0, 30), "professional")
    assert mapping.patterns == [] and mapping.schedule is None


# ---- with Redis and workers ----------------------------------------------------------------------


def digest_config(url: str, daily: str, for_each: str = "", when: str = "", extra: str = STAFF) -> str:
    return http_config(
        url,
        extra=extra,
        mappings=f"""
  - name: agenda-del-dia
    schedule: {{daily: "{daily}"{for_each}}}
    {when}
    actions:
      - connector: crm
        name: send
        body:
          pro: "{{{{ professional }}}}"
          date: "{{{{ date }}}}"
          to: "{{{{ staff.email if staff is defined else 'salon' }}}}"
          codes: "{{{{ agenda | map(attribute='codigo') | join(',') }}}}"
          states: "{{{{ agenda | map(attribute='estado') | join(',') }}}}"
          times: "{{{{ agenda | map(attribute='hora_inicio') | join(',') }}}}"
""",
    )


def soon(lead: float) -> tuple[str, datetime]:
    """A daily time `lead` seconds from now, in the salon's zone (`HH:MM:SS`), and that moment."""
    moment = (datetime.now(MADRID) + timedelta(seconds=lead)).replace(microsecond=0)
    return f"{moment:%H:%M:%S}", moment


def booked(event_id: str, booking_id: int, day: date, hora: str, professional: int, code: str, **extra: object) -> dict:
    event = sample("booking.created", id=event_id)
    event["data"]["booking"].update(
        {"hora_fin": None, **extra}, id=booking_id, codigo=code, fecha=day.isoformat(), hora_inicio=hora
    )
    event["data"]["booking"]["profesional"] = {"id": professional, "nombre": f"P{professional}"}
    return event


def run_day(bridge: Bridge, moment: datetime, *events: dict) -> None:
    """Deliver the events, start the workers (they plan the digest), and let its time come."""
    for event in events:
        assert bridge.post(event).status_code == 202
    bridge.drain()
    digest.plan_digests(bridge.runtime)
    fire_due(bridge, until=moment.timestamp() + 1)


def sent(destination: CapturingServer) -> dict[str, dict]:
    return {r.json()["pro"]: r.json() for r in destination.requests}


def test_a_digest_per_professional_fires_once_with_the_day_in_time_order(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    daily, moment = soon(lead=4)
    day = moment.date()
    bridge = make_bridge(digest_config(destination.url, daily))
    run_day(
        bridge,
        moment,
        booked("evt_1", 1, day, "12:00", 5, "B1"),
        booked("evt_2", 2, day, "09:30", 5, "B2"),
        booked("evt_3", 3, day, "10:00", 7, "B3"),
        booked("evt_4", 4, day + timedelta(days=1), "09:00", 5, "TOMORROW"),
    )
    by_pro = sent(destination)
    assert set(by_pro) == {"5", "7", "9"}  # booked that day, or listed in staff:
    assert by_pro["5"]["codes"] == "B2,B1" and by_pro["5"]["to"] == "carlos@salon.example"
    assert by_pro["7"]["codes"] == "B3"
    assert by_pro["9"]["codes"] == "" and by_pro["9"]["date"] == day.isoformat()
    record = bridge.record(digest.digest_id("agenda-del-dia", TENANT, "5", day))
    assert record.type == "schedule.daily"
    state = record.actions["agenda-del-dia/send"]
    assert state.status == Status.DONE and state.history[-1]["planned_for"] == moment.timestamp()
    assert all(r.received_at >= moment.timestamp() for r in destination.requests)  # never early
    (plan,) = digest.digest_plans(bridge.runtime).values()
    assert plan.start == (moment + timedelta(days=1)).timestamp()  # the next day's run
    assert digest.plan_digests(bridge.runtime) == 0  # a worker starting again keeps that plan

    # A duplicated wake, a second start, a worker taking the plan again: nothing more is sent.
    schedules.wake_due_plans(bridge.redis, now=plan.due + 1)
    bridge.redis.zadd(schedules.PLANS, {plan.id: 0})
    bridge.redis.hset(
        schedules.PLAN_DATA, plan.id, schedules.Plan(plan.id, "", moment.timestamp(), moment.timestamp()).to_json()
    )
    bridge.drain()
    assert len(destination.requests) == 3


def test_a_salon_digest_shows_each_booking_in_its_newest_state(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    daily, moment = soon(lead=4)
    day = moment.date()
    bridge = make_bridge(digest_config(destination.url, daily, for_each=", for_each: salon"))
    moved = sample("booking.updated", id="evt_move", created="2026-01-02T10:00:00Z")
    moved["data"]["booking"].update(id=1, codigo="B1", fecha=day.isoformat(), hora_inicio="16:00")
    cancelled = sample("booking.cancelled", id="evt_cancel", created="2026-01-02T11:00:00Z")
    cancelled["data"]["booking"].update(id=2, codigo="B2")
    elsewhere = sample("booking.updated", id="evt_away", created="2026-01-02T12:00:00Z")
    elsewhere["data"]["booking"].update(id=3, codigo="B3", fecha=(day + timedelta(days=2)).isoformat())
    run_day(
        bridge,
        moment,
        booked("evt_1", 1, day, "09:00", 5, "B1"),
        booked("evt_2", 2, day, "10:00", 7, "B2"),
        booked("evt_3", 3, day, "11:00", 5, "B3"),
        moved,  # B1 to 16:00
        cancelled,  # B2 stays, cancelled
        elsewhere,  # B3 to another day
    )
    (only,) = destination.requests
    body = only.json()
    assert body["pro"] == "None" and body["to"] == "salon"
    assert (body["codes"], body["times"], body["states"]) == ("B2,B1", "10:00,16:00", "cancelada,confirmada")
    record = bridge.record(digest.digest_id("agenda-del-dia", TENANT, None, day))
    assert [b["codigo"] for b in record.envelope["data"]["agenda"]] == ["B2", "B1"]  # what it was built from


def test_when_skips_an_empty_day_and_says_why(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    daily, moment = soon(lead=4)
    day = moment.date()
    bridge = make_bridge(digest_config(destination.url, daily, when='when: "agenda | length > 0"'))
    run_day(bridge, moment, booked("evt_1", 1, day, "09:00", 5, "B1"))
    assert list(sent(destination)) == ["5"]
    empty = bridge.record(digest.digest_id("agenda-del-dia", TENANT, "9", day)).actions["agenda-del-dia/send"]
    assert empty.status == Status.SKIPPED
    assert empty.detail == "at its time, condition of mapping 'agenda-del-dia' is false: agenda | length > 0"


def test_no_staff_entry_makes_that_action_dead_naming_the_professional(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    daily, moment = soon(lead=4)
    day = moment.date()
    text = digest_config(destination.url, daily).replace("staff.email if staff is defined else 'salon'", "staff.email")
    bridge = make_bridge(text)
    run_day(bridge, moment, booked("evt_1", 1, day, "09:00", 5, "B1"), booked("evt_2", 2, day, "10:00", 12, "B2"))
    assert set(sent(destination)) == {"5", "9"}
    state = bridge.record(digest.digest_id("agenda-del-dia", TENANT, "12", day)).actions["agenda-del-dia/send"]
    assert state.status == Status.DEAD and state.attempts == 1
    assert "no `staff:` entry for professional 12: add its email to config.yaml" in state.last_error
    assert bridge.runtime.store.dead_letters()[0][1] == "agenda-del-dia/send"

    # The owner adds the entry and replays the event: the same bookings go to the new address.
    fixed = make_bridge(text.replace("staff:\n", 'staff:\n  "12": {email: "nuevo@salon.example"}\n', 1))
    replay(fixed.runtime, digest.digest_id("agenda-del-dia", TENANT, "12", day))
    fixed.drain()
    assert sent(destination)["12"]["to"] == "nuevo@salon.example" and sent(destination)["12"]["codes"] == "B2"


def test_missed_beyond_grace_after_downtime(make_bridge: Callable[[str], Bridge], destination: CapturingServer) -> None:
    daily, moment = soon(lead=4)
    day = moment.date()
    bridge = make_bridge(digest_config(destination.url, daily.replace('"', "") + '", grace: "1s'))
    bridge.post(booked("evt_1", 1, day, "09:00", 5, "B1"))
    bridge.drain()
    digest.plan_digests(bridge.runtime)  # the workers started before the time...
    time.sleep(max(0.0, moment.timestamp() + 2.5 - time.time()))  # ...and were down past it and its grace
    assert digest.plan_digests(bridge.runtime) == 0  # a restart keeps the overdue plan: it is judged
    bridge.drain()
    assert destination.requests == []
    state = bridge.record(digest.digest_id("agenda-del-dia", TENANT, "5", day)).actions["agenda-del-dia/send"]
    assert state.status == Status.MISSED
    assert "more than the grace of 1 s" in state.detail and state.detail.startswith("not sent: the daily send at")
    (plan,) = digest.digest_plans(bridge.runtime).values()
    assert plan.start == (moment + timedelta(days=1)).timestamp()


def test_a_restart_within_grace_still_sends_it(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    daily, moment = soon(lead=4)
    bridge = make_bridge(digest_config(destination.url, daily))
    bridge.post(booked("evt_1", 1, moment.date(), "09:00", 5, "B1"))
    bridge.drain()
    digest.plan_digests(bridge.runtime)
    time.sleep(max(0.0, moment.timestamp() + 1.5 - time.time()))  # down at its time, back within grace
    restarted = make_bridge(digest_config(destination.url, daily))
    assert digest.plan_digests(restarted.runtime) == 0
    restarted.drain()
    assert set(sent(destination)) == {"5", "9"}
    assert destination.requests[0].received_at > moment.timestamp() + 1  # sent late, within grace


def test_a_config_change_moves_the_plan_and_a_removed_mapping_drops_it(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    from bridge.jobs import replan_all

    first = make_bridge(digest_config(destination.url, "08:00"))
    digest.plan_digests(first.runtime)
    (plan,) = digest.digest_plans(first.runtime).values()
    assert datetime.fromtimestamp(plan.due, MADRID).strftime("%H:%M:%S") == "08:00:00"
    later = make_bridge(digest_config(destination.url, "09:15"))
    assert replan_all(later.runtime) == 0  # the reminders' re-planning leaves the digest's plan alone
    assert [p.id for p in digest.digest_plans(later.runtime).values()] == ["agenda-del-dia:~daily"]
    assert digest.plan_digests(later.runtime) == 1
    (plan,) = digest.digest_plans(later.runtime).values()
    assert datetime.fromtimestamp(plan.due, MADRID).strftime("%H:%M:%S") == "09:15:00"
    removed = make_bridge(http_config(destination.url))
    assert digest.plan_digests(removed.runtime) == 1
    assert digest.digest_plans(removed.runtime) == {} and schedules.pending(removed.redis) == []


def test_two_real_workers_and_a_duplicated_wake_send_each_digest_once(
    make_bridge: Callable[[str], Bridge],
    destination: CapturingServer,
    redis_url: str,
    write_config: Callable[[str, str], Path],
    tmp_path: Path,
) -> None:
    """`salon-bridge worker` plans the digest at start; with two of them and a second fire job
    queued for the same second, each professional still gets one message."""
    from tests.test_worker import WorkerProcess

    daily, moment = soon(lead=15)  # two worker processes start well before it, even on a busy machine
    text = digest_config(destination.url, daily)
    bridge = make_bridge(text)
    for event in (
        booked("evt_1", 1, moment.date(), "09:00", 5, "B1"),
        booked("evt_2", 2, moment.date(), "10:00", 7, "B2"),
    ):
        bridge.post(event)
    bridge.drain()
    for _ in range(6):
        destination.respond_with(200, delay=0.5)  # slow answers: the two jobs overlap
    config = write_config(text, "worker.yaml")
    workers = [WorkerProcess(config, redis_url, tmp_path / f"worker-{n}.log") for n in range(2)]
    try:
        deadline = time.monotonic() + 40
        while not digest.digest_plans(bridge.runtime) and time.monotonic() < deadline:
            time.sleep(0.1)
        (plan,) = digest.digest_plans(bridge.runtime).values()
        assert plan.due == moment.timestamp(), workers[0].output()
        enqueue(bridge.runtime.queue, schedules.FIRE_DIGEST, plan.id, delay=plan.due - time.time())
        while len(destination.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # time enough for a duplicate to arrive
    finally:
        for worker in workers:
            worker.stop()
    assert sorted(r.json()["pro"] for r in destination.requests) == ["5", "7", "9"], workers[0].output()


# ---- the shipped digests (config.example.yaml, templates/emails/agenda_diaria.*) -----------------

REPO = Path(__file__).resolve().parent.parent
HOSTILE = "Ana <b>&</b> <!channel>"


def shipped_mapping(name: str, daily: str) -> str:
    """One mapping of config.example.yaml as shipped, switched on and set to `daily`."""
    example = yaml.safe_load((REPO / "config.example.yaml").read_text(encoding="utf-8"))
    mapping = next(m for m in example["mappings"] if m["name"] == name)
    mapping["schedule"]["daily"] = daily
    if mapping.get("when"):
        mapping["when"] = mapping["when"].removeprefix("false and ")
    return yaml.safe_dump([mapping], allow_unicode=True, sort_keys=False)


def shipped_day(bridge: Bridge, moment: datetime) -> None:
    """Three bookings of a hostile-named customer that day, one of them cancelled, and the digest's time."""
    day = moment.date()
    cancelled = sample("booking.cancelled", id="evt_cancel", created="2026-01-02T11:00:00Z")
    cancelled["data"]["booking"].update(id=2, codigo="B2")
    events = (
        booked("evt_1", 1, day, "12:00", 5, "B1", hora_fin="12:30"),
        booked("evt_2", 2, day, "10:00", 5, "B2"),
        cancelled,
        booked("evt_3", 3, day, "11:00", 7, "B3"),
    )
    for event in events:
        if "cliente" in event["data"]["booking"]:
            event["data"]["booking"]["cliente"]["nombre"] = HOSTILE
    run_day(bridge, moment, *events)


def test_the_shipped_email_digest(make_bridge: Callable[[str], Bridge]) -> None:
    smtp = SmtpServer("plain").start()
    try:
        daily, moment = soon(lead=4)
        day = moment.date()
        text = f"""
version: 1
timezone: Europe/Madrid
webhook:
  secrets: ["{SECRET}"]
{STAFF}
connectors:
  mailer: {{type: email, host: "{smtp.host}", port: {smtp.port}, security: none, from: "reservas@salon.example"}}
mappings:
{shipped_mapping("agenda-del-dia", daily)}"""
        bridge = make_bridge(text)
        shipped_day(bridge, moment)
    finally:
        smtp.stop()
    (message,) = [m.message() for m in smtp.messages]  # 7 has no staff entry (dead), 9 has no bookings (skipped)
    assert message["To"] == "carlos@salon.example"
    assert message["Subject"] == "Tu agenda de hoy: 2 citas"
    plain = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = message.get_body(("html",)).get_content()
    longdate = bridge.config.engine.compile("{{ d | longdate }}", "t").render({"d": day.isoformat()})
    assert f"Hola Carlos García:\n\nTu agenda del {longdate}: 2 citas." in plain
    assert plain.index("10:00 [CANCELADA]") < plain.index("12:00–12:30 · " + HOSTILE)
    assert "Ana &lt;b&gt;&amp;&lt;/b&gt;" in html and "<b>&</b>" not in html
    assert "<strong>Cancelada</strong>" in html
    seven = bridge.record(digest.digest_id("agenda-del-dia", TENANT, "7", day)).actions["agenda-del-dia/staff"]
    assert seven.status == Status.DEAD and "no `staff:` entry for professional 7" in seven.last_error
    nine = bridge.record(digest.digest_id("agenda-del-dia", TENANT, "9", day)).actions["agenda-del-dia/staff"]
    assert nine.status == Status.SKIPPED


def test_the_shipped_slack_digest(make_bridge: Callable[[str], Bridge]) -> None:
    slack = FakeSlack().start()
    slack.add_channel("recepcion")
    try:
        daily, moment = soon(lead=4)
        text = f"""
version: 1
timezone: Europe/Madrid
webhook:
  secrets: ["{SECRET}"]
connectors:
  staff: {{type: slack, token: "{DEFAULT_TOKEN}", base_url: "{slack.api_url}", timeout: 2}}
mappings:
{shipped_mapping("agenda-del-salon-slack", daily)}"""
        bridge = make_bridge(text)
        shipped_day(bridge, moment)
    finally:
        slack.stop()
    (message,) = slack.messages
    lines = message.text.splitlines()
    assert lines[0].startswith(":calendar: *Agenda del ") and lines[0].endswith("*: 3 citas")
    escaped = "Ana &lt;b&gt;&amp;&lt;/b&gt; &lt;!channel&gt;"
    assert lines[1:] == [
        f"• ~*10:00* · {escaped} · Corte Clásico · con P5~ (cancelada)",
        f"• *11:00* · {escaped} · Corte Clásico · con P7",
        f"• *12:00*–12:30 · {escaped} · Corte Clásico · con P5",
    ]


def test_scheduled_and_simulate_show_the_next_run_and_past_digests(
    make_bridge: Callable[[str], Bridge],
    destination: CapturingServer,
    redis_url: str,
    write_config: Callable[[str, str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bridge.cli import main

    daily, moment = soon(lead=4)
    text = with_redis(digest_config(destination.url, daily, when='when: "agenda | length > 0"'), redis_url)
    bridge = make_bridge(text)
    config = str(write_config(text, "cli.yaml"))
    bridge.post(booked("evt_1", 1, moment.date(), "09:00", 5, "B1"))
    bridge.drain()

    assert main(["simulate", "agenda-del-dia", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "agenda-del-dia (daily " + daily + ", for each professional)" in out
    assert "not planned yet (a worker plans it when it starts)" in out
    assert "professional 5 (tenant uuid-tenant), 1 booking(s)" in out and '"codes": "B1"' in out
    assert "professional 9 (tenant uuid-tenant), 0 booking(s)" in out
    assert "skipped: condition of mapping 'agenda-del-dia' is false: agenda | length > 0" in out

    digest.plan_digests(bridge.runtime)
    assert main(["scheduled", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"{moment:%Y-%m-%d %H:%M:%S}  next  agenda-del-dia (daily {daily}, for each professional)" in out

    fire_due(bridge, until=moment.timestamp() + 1)
    assert main(["scheduled", "--config", config]) == 0
    out = capsys.readouterr().out
    day = moment.date().isoformat()
    assert f"sent       digest {day} professional 5  agenda-del-dia/send" in out
    assert f"skipped    digest {day} professional 9  agenda-del-dia/send" in out
    tomorrow = moment + timedelta(days=1)
    assert f"{tomorrow:%Y-%m-%d %H:%M:%S}  next  agenda-del-dia" in out


def test_preview_says_which_daily_runs_a_new_config_adds_moves_or_drops() -> None:
    from bridge.preview import daily_changes

    old = load_config_text(digest_config("http://127.0.0.1:9", "08:00"))
    moved = load_config_text(digest_config("http://127.0.0.1:9", "09:15"))
    none = load_config_text(http_config("http://127.0.0.1:9"))
    now = datetime(2026, 7, 1, 8, 30, tzinfo=MADRID).timestamp()
    assert daily_changes(old, old, now) == []
    assert daily_changes(old, moved, now) == [
        "agenda-del-dia: next run 01/07/2026 09:15 CEST (was 02/07/2026 08:00 CEST)"
    ]
    assert daily_changes(none, old, now) == ["agenda-del-dia: next run 02/07/2026 08:00 CEST (a new daily mapping)"]
    assert daily_changes(old, none, now) == ["agenda-del-dia: no daily run any more (its plan is dropped)"]
