"""The morning digest: daily mappings fired by the workers' scheduler, one record per
(mapping, tenant, professional, day) in the event log (bridge/digest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from zoneinfo import ZoneInfo

import pytest

from bridge import digest, schedules
from bridge.store import Status
from mappings.config import ConfigError, load_config_text
from mappings.schedule import Daily, daily_missed_reason, next_occurrence, occurrence, parse_quiet_hours
from tests.conftest import http_config
from tests.fakes.http_server import CapturingServer
from tests.harness import Bridge, sample

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
        id=booking_id, codigo=code, fecha=day.isoformat(), hora_inicio=hora, hora_fin=None, **extra
    )
    event["data"]["booking"]["profesional"] = {"id": professional, "nombre": f"P{professional}"}
    return event


def fire_due(bridge: Bridge, until: float) -> None:
    while True:
        bridge.drain()
        if time.time() > until:
            bridge.drain()
            return
        time.sleep(0.2)


def sent(destination: CapturingServer) -> dict[str, dict]:
    return {r.json()["pro"]: r.json() for r in destination.requests}


def test_a_digest_per_professional_fires_once_with_the_day_in_time_order(
    make_bridge: Callable[[str], Bridge], destination: CapturingServer
) -> None:
    daily, moment = soon(lead=4)
    day = moment.date()
    bridge = make_bridge(digest_config(destination.url, daily))
    for event in (
        booked("evt_1", 1, day, "12:00", 5, "B1"),
        booked("evt_2", 2, day, "09:30", 5, "B2"),
        booked("evt_3", 3, day, "10:00", 7, "B3"),
        booked("evt_4", 4, day + timedelta(days=1), "09:00", 5, "TOMORROW"),
    ):
        assert bridge.post(event).status_code == 202
    bridge.drain()
    assert digest.plan_digests(bridge.runtime) == 1
    assert digest.plan_digests(bridge.runtime) == 0  # a second start keeps the plan
    fire_due(bridge, until=moment.timestamp() + 1)
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

    # A duplicated wake, a second start, a worker taking the plan again: nothing more is sent.
    schedules.wake_due_plans(bridge.redis, now=plan.due + 1)
    bridge.redis.zadd(schedules.PLANS, {plan.id: 0})
    bridge.redis.hset(
        schedules.PLAN_DATA, plan.id, schedules.Plan(plan.id, "", moment.timestamp(), moment.timestamp()).to_json()
    )
    bridge.drain()
    assert len(destination.requests) == 3
