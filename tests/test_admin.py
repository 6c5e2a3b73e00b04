"""/admin: off without `admin:`, login and sessions, CSRF, the login rate limit, the event list
with its filters and dashboard, the event page, replay and forced replay; `hash-password`."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from werkzeug.security import check_password_hash, generate_password_hash

from app import create_app
from bridge.admin import queries
from bridge.admin.auth import COOKIE_NAME, FAILURES, SESSIONS, SIGNING_KEY
from bridge.cli import main
from bridge.store import Status, event_key
from mappings.config import ConfigError, load_config_text
from tests.conftest import http_config
from tests.fakes.http_server import CapturingServer
from tests.harness import Bridge, encode, sample

PASSWORD = "correct horse battery"
# A cheap hash keeps the tests fast; `hash-password` makes the strong default one (tested below).
PASSWORD_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
TOKEN = "tok-0123456789abcdefghijklmnop"
ZONE = ZoneInfo("Europe/Madrid")


def admin_yaml(**fields: Any) -> str:
    """The `admin:` section; English unless a test asks for another language (tests/test_admin_i18n.py)."""
    fields = fields or {"username": "owner", "password_hash": PASSWORD_HASH}
    fields.setdefault("language", "en")
    lines = "".join(
        f'  {key}: "{value}"\n' if isinstance(value, str) else f"  {key}: {value}\n" for key, value in fields.items()
    )
    return "admin:\n" + lines


def admin_config(url: str, mappings: str | None = None, **fields: Any) -> str:
    return http_config(
        url,
        mappings,
        extra=admin_yaml(**fields),
        connector_extra='    headers: {Authorization: "Bearer crm-secret-value-123"}',
    )


@pytest.fixture
def admin(make_bridge: Callable[[str], Bridge], destination: CapturingServer) -> Bridge:
    return make_bridge(admin_config(destination.url))


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def login(client: FlaskClient, username: str = "owner", password: str = PASSWORD, ip: str = "10.0.0.1", **extra: str):  # noqa: ANN201
    page = client.get("/admin/login", environ_base={"REMOTE_ADDR": ip})
    data = {"csrf_token": csrf_of(page.text), "username": username, "password": password, **extra}
    return client.post("/admin/login", data=data, environ_base={"REMOTE_ADDR": ip})


def logged_in(bridge: Bridge) -> FlaskClient:
    client = bridge.app.test_client()
    assert login(client).status_code == 303
    return client


def post_form(client: FlaskClient, path: str, data: dict[str, str], page: str = "/admin/"):  # noqa: ANN201
    token = csrf_of(client.get(page).text)
    return client.post(path, data={"csrf_token": token, **data})


def booking(code: str, name: str = "Juan Pérez", notes: str = "Primera visita") -> dict[str, Any]:
    event = sample("booking.created")
    event["data"]["booking"]["codigo"] = code
    event["data"]["booking"]["cliente"]["nombre"] = name
    event["data"]["booking"]["notas"] = notes
    return event


# ---- off unless configured ----------------------------------------------------------------------


def test_without_an_admin_section_there_is_no_admin(bridge: Bridge) -> None:
    for path in ["/admin", "/admin/", "/admin/login", "/admin/events/e-x", "/admin/static/admin.css"]:
        assert bridge.client.get(path).status_code == 404, path
    assert bridge.client.post("/admin/login", data={"username": "owner"}).status_code == 404


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"username": "owner"}, "set both username and password_hash", id="user-without-hash"),
        pytest.param({"password_hash": PASSWORD_HASH}, "set both username and password_hash", id="hash-without-user"),
        pytest.param(
            {"username": "owner", "password_hash": PASSWORD}, "never the password itself", id="plain-password"
        ),
        pytest.param({"token": "short"}, "at least 24 characters", id="short-token"),
        pytest.param({"session_lifetime": "12h"}, "needs username and password_hash, or token", id="no-credentials"),
        pytest.param({"token": TOKEN, "session_secret": "too-short"}, "at least 32 characters", id="short-secret"),
        pytest.param({"token": TOKEN, "pasword": "x"}, "admin.pasword: unknown key", id="typo"),
    ],
)
def test_bad_admin_sections_stop_start_up(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(admin_config("http://127.0.0.1:9", **fields), "config.yaml")
    assert message in "\n".join(caught.value.problems)


# ---- nothing without a login --------------------------------------------------------------------


def test_every_page_needs_a_login(admin: Bridge) -> None:
    event = sample("booking.created")
    admin.post(event)
    key = event_key(event["id"])
    client = admin.app.test_client()
    for path in ["/admin", "/admin/", f"/admin/events/{key}", "/admin/?q=ABC", "/admin/static/admin.js", "/admin/nope"]:
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["Location"].startswith("/admin/login"), path
    for path in [f"/admin/events/{key}/replay", "/admin/logout", "/admin/events/x/replay"]:
        response = client.post(path, data={"action": "all-to-crm/notify", "force": "1", "confirmed": "1"})
        assert (response.status_code, response.headers["Location"]) == (303, "/admin/login"), path
    assert admin.runtime.queue.count == 1  # only the webhook's own job: nothing was replayed
    assert client.get("/admin/login").status_code == 200
    with client.get("/admin/static/admin.css") as css:
        assert css.status_code == 200 and b".badge" in css.data


def test_a_login_remembers_where_it_was_going_but_never_leaves_the_admin(admin: Bridge) -> None:
    event = sample("order.created")
    admin.post(event)
    key = event_key(event["id"])
    client = admin.app.test_client()
    assert client.get(f"/admin/events/{key}").headers["Location"] == f"/admin/login?next=/admin/events/{key}"
    assert login(client, next=f"/admin/events/{key}").headers["Location"] == f"/admin/events/{key}"
    for target in ["https://evil.example/", "//evil.example/admin/", "/webhooks", "javascript:alert(1)"]:
        other = admin.app.test_client()
        assert login(other, next=target).headers["Location"] == "/admin/", target


@pytest.mark.parametrize("target", ["/admin/\r\nSet-Cookie: x=1", "/admin/events\n", "/admin/\x00", "/admin/\t"])
def test_a_next_with_control_characters_is_unsafe_and_goes_to_the_list(admin: Bridge, target: str) -> None:
    """urlsplit drops CR, LF and tab before parsing, so such a target looked like an admin path (was a 500)."""
    client = admin.app.test_client()
    assert client.get("/admin/login", query_string={"next": target}).status_code == 200
    response = login(client, next=target)
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/"


# ---- login, sessions ----------------------------------------------------------------------------


def test_login_with_the_password_gives_a_session_cookie(admin: Bridge) -> None:
    client = admin.app.test_client()
    wrong = login(client, password="wrong password")
    assert wrong.status_code == 401 and "Wrong user name or password." in wrong.text
    assert login(client, username="Owner").status_code == 401
    response = login(client)
    assert (response.status_code, response.headers["Location"]) == (303, "/admin/")
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(COOKIE_NAME + "="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie and "Expires=" in cookie
    assert "Secure" not in cookie  # plain HTTP here; Secure behind HTTPS (next test)
    page = client.get("/admin/")
    assert page.status_code == 200 and "Log out" in page.text and "owner" in page.text
    assert [k for k in admin.redis.scan_iter(SESSIONS + "*")], "the session lives in Redis"
    ttl = admin.redis.ttl(next(admin.redis.scan_iter(SESSIONS + "*")))
    assert 12 * 3600 - 60 < ttl <= 12 * 3600


def test_the_cookie_is_secure_over_https_or_when_configured(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(admin_config(destination.url))
    client = bridge.app.test_client()
    page = client.get("/admin/login", base_url="https://bridge.example")
    assert "Secure" in page.headers["Set-Cookie"]
    forced = make_bridge(admin_config(destination.url, token=TOKEN, secure_cookie=True))
    assert "Secure" in forced.app.test_client().get("/admin/login").headers["Set-Cookie"]


def test_login_with_a_token(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(admin_config(destination.url, token=TOKEN))
    client = bridge.app.test_client()
    page = client.get("/admin/login")
    assert 'name="token"' in page.text and 'name="password"' not in page.text
    data = {"csrf_token": csrf_of(page.text), "token": TOKEN + "x"}
    assert client.post("/admin/login", data=data).status_code == 401
    data["token"] = TOKEN
    assert client.post("/admin/login", data=data).status_code == 303
    assert client.get("/admin/").status_code == 200


def test_password_and_token_both_work_when_both_are_set(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(admin_config(destination.url, username="owner", password_hash=PASSWORD_HASH, token=TOKEN))
    page = bridge.app.test_client().get("/admin/login")
    assert 'name="password"' in page.text and 'name="token"' in page.text
    assert login(bridge.app.test_client()).status_code == 303
    client = bridge.app.test_client()
    token_login = client.post(
        "/admin/login", data={"csrf_token": csrf_of(client.get("/admin/login").text), "token": TOKEN}
    )
    assert token_login.status_code == 303


def test_logging_out_ends_the_session_even_for_a_copied_cookie(admin: Bridge) -> None:
    client = logged_in(admin)
    stolen = client.get_cookie(COOKIE_NAME, path="/admin")
    assert stolen is not None
    response = post_form(client, "/admin/logout", {})
    assert (response.status_code, response.headers["Location"]) == (303, "/admin/login")
    assert client.get("/admin/").status_code == 303
    thief = admin.app.test_client()
    thief.set_cookie(COOKIE_NAME, stolen.value, path="/admin")
    assert thief.get("/admin/").status_code == 303
    assert list(admin.redis.scan_iter(SESSIONS + "*")) == []


def test_changing_the_password_ends_existing_sessions(admin: Bridge, destination, write_config) -> None:  # noqa: ANN001
    client = logged_in(admin)
    cookie = client.get_cookie(COOKIE_NAME, path="/admin")
    assert cookie is not None
    new_hash = generate_password_hash("another long password", method="pbkdf2:sha256:1000")
    changed = load_config_text(admin_config(destination.url, username="owner", password_hash=new_hash))
    app = create_app(changed, redis=admin.redis)
    other = app.test_client()
    other.set_cookie(COOKIE_NAME, cookie.value, path="/admin")
    assert other.get("/admin/").status_code == 303
    assert client.get("/admin/").status_code == 200  # the app with the old password still takes it


def test_a_tampered_cookie_is_not_a_session(admin: Bridge) -> None:
    client = logged_in(admin)
    cookie = client.get_cookie(COOKIE_NAME, path="/admin")
    assert cookie is not None
    forged = admin.app.test_client()
    forged.set_cookie(COOKIE_NAME, cookie.value[:-3] + "abc", path="/admin")
    assert forged.get("/admin/").status_code == 303


def test_the_signing_key_is_made_once_and_shared(admin: Bridge, destination) -> None:  # noqa: ANN001
    client = logged_in(admin)
    key = admin.redis.get(SIGNING_KEY)
    assert key is not None and len(key) == 64
    second_app = create_app(load_config_text(admin_config(destination.url)), redis=admin.redis)
    second = second_app.test_client()
    cookie = client.get_cookie(COOKIE_NAME, path="/admin")
    assert cookie is not None
    second.set_cookie(COOKIE_NAME, cookie.value, path="/admin")
    assert second.get("/admin/").status_code == 200, "another web process accepts the session"


# ---- CSRF ---------------------------------------------------------------------------------------


def test_every_post_needs_the_csrf_token(admin: Bridge, destination: CapturingServer) -> None:
    anonymous = admin.app.test_client()
    anonymous.get("/admin/login")
    response = anonymous.post("/admin/login", data={"username": "owner", "password": PASSWORD})
    assert response.status_code == 400 and "Form expired" in response.text
    assert anonymous.get("/admin/").status_code == 303, "no session without the token"

    destination.default.status = 400
    event = sample("booking.created")
    admin.post(event)
    admin.drain()
    key = event_key(event["id"])
    client = logged_in(admin)
    for token in [None, "", "not-the-token"]:
        data = {"action": "all-to-crm/notify"} | ({"csrf_token": token} if token is not None else {})
        assert client.post(f"/admin/events/{key}/replay", data=data).status_code == 400
        assert client.post("/admin/logout", data=data).status_code == 400
    assert admin.record(event["id"]).actions["all-to-crm/notify"].status == Status.DEAD
    assert admin.runtime.queue.count == 0
    assert client.get("/admin/").status_code == 200, "still logged in"
    # The token also travels in a header, for scripts.
    token = csrf_of(client.get("/admin/").text)
    response = client.post(
        f"/admin/events/{key}/replay", data={"action": "all-to-crm/notify"}, headers={"X-CSRF-Token": token}
    )
    assert response.status_code == 303 and admin.runtime.queue.count == 1


def test_a_login_starts_a_new_csrf_token(admin: Bridge) -> None:
    client = admin.app.test_client()
    before = csrf_of(client.get("/admin/login").text)
    data = {"csrf_token": before, "username": "owner", "password": PASSWORD}
    assert client.post("/admin/login", data=data).status_code == 303
    after = csrf_of(client.get("/admin/").text)
    assert after != before


# ---- login rate limit ---------------------------------------------------------------------------


def test_five_failures_from_one_address_lock_it_for_the_window(admin: Bridge) -> None:
    client = admin.app.test_client()
    for number in range(5):
        assert login(client, username=f"guess{number}", password="nope", ip="10.0.0.9").status_code == 401
    locked = login(client, ip="10.0.0.9")  # even the right password
    assert locked.status_code == 429 and "Too many failed logins" in locked.text
    assert 14 * 60 < int(locked.headers["Retry-After"]) <= 15 * 60
    assert client.get("/admin/").status_code == 303
    assert login(admin.app.test_client(), ip="10.0.0.10").status_code == 303, "another address may log in"


def test_five_failures_for_one_user_name_lock_it_from_every_address(admin: Bridge) -> None:
    for number in range(5):
        assert login(admin.app.test_client(), password="nope", ip=f"10.1.0.{number}").status_code == 401
    assert login(admin.app.test_client(), ip="10.1.0.99").status_code == 429
    assert login(admin.app.test_client(), username="someone-else", password="x", ip="10.1.0.98").status_code == 401


def test_a_success_forgets_earlier_failures(admin: Bridge) -> None:
    for _ in range(4):
        assert login(admin.app.test_client(), password="nope").status_code == 401
    assert login(admin.app.test_client()).status_code == 303
    assert list(admin.redis.scan_iter(FAILURES + "*")) == []
    for _ in range(4):
        assert login(admin.app.test_client(), password="nope").status_code == 401
    assert login(admin.app.test_client()).status_code == 303


def test_the_limit_and_window_come_from_the_config(make_bridge, destination) -> None:  # noqa: ANN001
    bridge = make_bridge(
        admin_config(
            destination.url, username="owner", password_hash=PASSWORD_HASH, login_max_failures=2, login_window="1h"
        )
    )
    for _ in range(2):
        assert login(bridge.app.test_client(), password="nope").status_code == 401
    locked = login(bridge.app.test_client())
    assert locked.status_code == 429 and 3500 < int(locked.headers["Retry-After"]) <= 3600


# ---- the list -----------------------------------------------------------------------------------


def event_ids_on(html: str) -> list[str]:
    return re.findall(r'<li class="event" data-event="([^"]+)">', html)


def test_the_list_shows_newest_first_with_badges(admin: Bridge, destination: CapturingServer) -> None:
    destination.respond_with(400, "customer email rejected")
    first, second, third = booking("AAA111"), sample("order.created"), sample("payment.failed")
    for event in (first, second, third):
        admin.post(event)
        admin.drain()
    page = logged_in(admin).get("/admin/").text
    assert event_ids_on(page) == [third["id"], second["id"], first["id"]]
    assert "Booking AAA111 · Juan Pérez" in page and "Order PED-2024-0789" in page
    assert page.count('data-status="done"') == 2 and page.count('data-status="dead"') == 1
    assert '<span class="reason">The destination refused it.</span>' in page  # the dead action's reason


def test_a_retrying_action_shows_its_next_attempt(make_bridge, destination: CapturingServer) -> None:  # noqa: ANN001
    text = admin_config(destination.url).replace("schedule: [0.1, 0.1, 0.1]", "schedule: [600]")
    bridge = make_bridge(text)
    destination.default.status = 503
    event = booking("RETRY1")
    bridge.post(event)
    SimpleWorker([bridge.runtime.queue], connection=bridge.redis, serializer=JSONSerializer).work(burst=True)
    page = logged_in(bridge).get("/admin/").text
    assert 'data-status="retrying"' in page
    assert re.search(r">Retrying at \d\d:\d\d</span>", page)


def test_pages_of_25_with_an_older_link(admin: Bridge) -> None:
    events = [sample("customer.updated") for _ in range(30)]
    for event in events:
        admin.post(event)
    client = logged_in(admin)
    first = client.get("/admin/").text
    assert event_ids_on(first) == [e["id"] for e in reversed(events[5:])]
    older = re.search(r'rel="next" href="([^"]+)"', first)
    assert older is not None
    second = client.get(older.group(1).replace("&amp;", "&")).text
    assert event_ids_on(second) == [e["id"] for e in reversed(events[:5])]
    assert 'rel="next"' not in second and "« Newest" in second


def test_search_by_booking_code_customer_name_professional_or_event_id(admin: Bridge) -> None:
    target = booking("ZX81QQ", name="María Núñez")
    others = [booking("OTHER1"), sample("order.created"), sample("payment.failed")]
    for event in [target, *others]:
        admin.post(event)
    client = logged_in(admin)

    def search(text: str) -> str:
        return client.get("/admin/", query_string={"q": text}).text

    assert event_ids_on(search("zx81qq")) == [target["id"]]
    assert event_ids_on(search("maria nunez")) == [target["id"]], "accents and case do not matter"
    assert event_ids_on(search("PED-2024")) == [others[1]["id"]]
    assert len(event_ids_on(search("Carlos García"))) == 2  # the professional of both bookings
    assert event_ids_on(search(others[2]["id"])) == [others[2]["id"]]
    nothing = search("nobody-has-this")
    assert event_ids_on(nothing) == [] and "No event matches these filters (looked at 4 events)" in nothing


def test_a_long_search_stops_at_the_scan_cap_and_can_go_on(admin: Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries, "SCAN_CAP", 5)
    monkeypatch.setattr(queries, "BATCH", 5)
    oldest = booking("FAR001")
    admin.post(oldest)
    for _ in range(11):
        admin.post(sample("customer.updated"))
    client = logged_in(admin)
    page = client.get("/admin/", query_string={"q": "far001"}).text
    assert event_ids_on(page) == [] and "Looked at 5 events, back to" in page
    pages = 1
    while "Keep looking" in page:
        link = re.search(r'rel="next" href="([^"]+)"', page)
        assert link is not None
        page = client.get(link.group(1).replace("&amp;", "&")).text
        pages += 1
    assert event_ids_on(page) == [oldest["id"]] and pages == 3


def test_filter_by_type_status_and_date_range(admin: Bridge, destination: CapturingServer) -> None:
    destination.respond_with(400, "bad")
    dead, done = booking("DEAD01"), sample("order.created")
    admin.post(dead)
    admin.post(done)
    admin.drain()
    client = logged_in(admin)
    assert event_ids_on(client.get("/admin/?status=dead").text) == [dead["id"]]
    assert event_ids_on(client.get("/admin/?status=done").text) == [done["id"]]
    assert event_ids_on(client.get("/admin/?type=order.created").text) == [done["id"]]
    assert event_ids_on(client.get("/admin/?type=order.created&status=dead").text) == []
    today = date.today()
    around = f"from={(today - timedelta(days=1)).isoformat()}&to={(today + timedelta(days=1)).isoformat()}"
    assert event_ids_on(client.get(f"/admin/?{around}").text) == [done["id"], dead["id"]]
    assert event_ids_on(client.get(f"/admin/?from={(today + timedelta(days=2)).isoformat()}").text) == []
    assert event_ids_on(client.get(f"/admin/?to={(today - timedelta(days=2)).isoformat()}").text) == []


def test_the_dead_letters_tile_links_to_the_dead_filter(admin: Bridge, destination: CapturingServer) -> None:
    destination.default.status = 400
    admin.post(booking("D1"))
    admin.drain()
    page = logged_in(admin).get("/admin/").text
    assert re.search(r'href="/admin/\?status=dead"><span class="num" id="dash-dead">1</span>', page)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("status=lost", "unknown status &#39;lost&#39;", id="status"),
        pytest.param("from=25/01/2024", "is not a date like 2024-01-25", id="date"),
        pytest.param("before=yesterday", "the page link is damaged", id="cursor"),
    ],
)
def test_bad_filters_are_explained_not_a_crash(admin: Bridge, query: str, message: str) -> None:
    admin.post(sample("order.created"))
    response = logged_in(admin).get(f"/admin/?{query}")
    assert response.status_code == 200
    assert message in response.text and len(event_ids_on(response.text)) == 1


# ---- the dashboard strip ------------------------------------------------------------------------


def tile(html: str, name: str) -> str:
    match = re.search(rf'id="dash-{name}">([^<]*)<', html)
    assert match, name
    return match.group(1)


def test_the_dashboard_counts_the_last_24_hours_the_queue_and_the_workers(admin: Bridge, destination) -> None:  # noqa: ANN001
    destination.respond_with(400, "no")
    for event in (booking("DASH1"), sample("order.created"), sample("payment.failed")):
        admin.post(event)
    admin.drain()
    admin.post(sample("customer.updated"))  # waits in the queue
    worker = SimpleWorker([admin.runtime.queue], connection=admin.redis, serializer=JSONSerializer, name="dash-worker")
    worker.register_birth()
    try:
        page = logged_in(admin).get("/admin/").text
    finally:
        worker.register_death()
    # Dead letters as `salon-bridge dead-letters` counts them, not failed attempts.
    assert (tile(page, "events"), tile(page, "done"), tile(page, "dead")) == ("4", "2", "1")
    assert (tile(page, "queue"), tile(page, "workers")) == ("1", "1")
    assert re.fullmatch(r"\d+s", tile(page, "oldest"))
    assert 'id="dash-dry-run"' not in page  # no test runs: no tile for them
    idle = logged_in(admin).get("/admin/").text
    assert tile(idle, "workers") == "0" and 'class="tile tone-bad"><span class="num" id="dash-workers">' in idle


# ---- one event ----------------------------------------------------------------------------------

SECRET_FIELD_MAPPING = """
  - name: all-to-crm
    on: ["*"]
    actions:
      - connector: crm
        name: notify
        body:
          id: "{{ event.id }}"
          customer: "{{ booking.cliente.nombre }}"
          api_token: "tk-{{ event.id }}"
"""


def test_the_event_page_shows_payload_memory_fields_and_attempts(make_bridge, destination: CapturingServer) -> None:  # noqa: ANN001
    bridge = make_bridge(admin_config(destination.url, SECRET_FIELD_MAPPING))
    created = booking("MEM001", name="Ana <script>alert(1)</script>")
    bridge.post(created)
    bridge.drain()
    destination.respond_with(503, "busy")
    destination.respond_with(400, "calendar refused the entry")
    no_show = sample("booking.no_show")
    bridge.post(no_show)
    bridge.drain()
    page = logged_in(bridge).get(f"/admin/events/{event_key(no_show['id'])}")
    assert page.status_code == 200
    html = page.text
    assert "<script>alert(1)</script>" not in html and "Ana &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;estado&#34;: &#34;no_show&#34;" in html  # the payload, pretty-printed (and escaped)
    # What memory holds about the booking (from booking.created): the code, the customer.
    memory = html[html.index("What the bridge remembers") : html.index('<pre class="payload">')]
    assert "MEM001" in memory and "Carlos García" in memory and "juan@email.com" in memory
    # The rendered fields, with the credential-like one hidden; connector settings never shown.
    assert "&#34;api_token&#34;: &#34;*** (hidden)&#34;" in html and f"tk-{no_show['id']}" not in html
    assert "crm-secret-value-123" not in html and "Bearer" not in html
    assert "<code>crm</code> (http)" in html
    # Attempts, newest first, with their errors; the dead action can be sent again.
    assert html.index("HTTP 400: calendar refused the entry") < html.index("HTTP 503: busy")
    assert 'data-status="dead"' in html and ">Send again</button>" in html
    assert 'name="force"' not in html


def test_an_unknown_event_is_a_404_page(admin: Bridge) -> None:
    client = logged_in(admin)
    response = client.get("/admin/events/e-nope")
    assert response.status_code == 404 and "Event not found" in response.text
    assert client.get("/admin/events/" + "x" * 300).status_code == 404
    token = csrf_of(client.get("/admin/").text)
    assert client.post("/admin/events/e-nope/replay", data={"csrf_token": token, "action": "a"}).status_code == 404


# ---- replay -------------------------------------------------------------------------------------


def test_replay_a_dead_action_with_one_click(admin: Bridge, destination: CapturingServer) -> None:
    destination.respond_with(400, "bad request")
    event = booking("REPLAY1")
    admin.post(event)
    admin.drain()
    key = event_key(event["id"])
    client = logged_in(admin)
    response = post_form(client, f"/admin/events/{key}/replay", {"action": "all-to-crm/notify"}, f"/admin/events/{key}")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/admin/events/{key}#action-all-to-crm-notify"
    page = client.get(f"/admin/events/{key}").text
    assert "Queued to be sent again" in page and 'data-status="pending"' in page and 'data-live="1"' in page
    assert admin.record(event["id"]).actions["all-to-crm/notify"].status == Status.PENDING
    admin.drain()
    page = client.get(f"/admin/events/{key}").text
    assert 'data-status="done"' in page and "data-live" not in page and "replay of dead" in page
    assert len(destination.requests) == 2


def test_forcing_a_done_action_asks_first(admin: Bridge, destination: CapturingServer) -> None:
    event = sample("order.created")
    admin.post(event)
    admin.drain()
    key = event_key(event["id"])
    client = logged_in(admin)
    page = client.get(f"/admin/events/{key}").text
    assert "Send again anyway…" in page and "data-confirm=" in page
    ask = post_form(
        client, f"/admin/events/{key}/replay", {"action": "all-to-crm/notify", "force": "1"}, f"/admin/events/{key}"
    )
    assert ask.status_code == 200 and "Send it again?" in ask.text and "get it a second time" in ask.text
    assert (
        admin.runtime.queue.count == 0 and admin.record(event["id"]).actions["all-to-crm/notify"].status == Status.DONE
    )
    confirmed = client.post(
        f"/admin/events/{key}/replay",
        data={"csrf_token": csrf_of(ask.text), "action": "all-to-crm/notify", "force": "1", "confirmed": "1"},
    )
    assert confirmed.status_code == 303
    admin.drain()
    assert len(destination.requests) == 2
    assert admin.record(event["id"]).actions["all-to-crm/notify"].status == Status.DONE


def test_replay_refusals_are_shown_not_raised(admin: Bridge, destination: CapturingServer) -> None:
    event = sample("order.created")
    admin.post(event)
    admin.drain()
    key = event_key(event["id"])
    client = logged_in(admin)
    done = post_form(client, f"/admin/events/{key}/replay", {"action": "all-to-crm/notify"})
    assert done.status_code == 303
    page = client.get(done.headers["Location"]).text
    assert "nothing to replay" in page and "all-to-crm/notify=done" in page and "--force" not in page
    unknown = post_form(client, f"/admin/events/{key}/replay", {"action": "nope/0"})
    assert "This event has no action &#39;nope/0&#39;." in client.get(unknown.headers["Location"]).text
    assert admin.runtime.queue.count == 0 and len(destination.requests) == 1


# ---- headers, the webhook, Redis down -----------------------------------------------------------


def test_admin_pages_are_not_cached_framed_or_sniffed(admin: Bridge) -> None:
    client = logged_in(admin)
    for path in ["/admin/", "/admin/login"]:
        headers = client.get(path).headers
        assert headers["Cache-Control"] == "no-store"
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "script-src 'self'" in headers["Content-Security-Policy"]


def test_the_webhook_neither_reads_nor_sets_an_admin_session(admin: Bridge) -> None:
    response = admin.post(sample("booking.created"))
    assert response.status_code == 202
    assert "Set-Cookie" not in response.headers and "Cookie" not in response.headers.get("Vary", "")
    assert admin.redis.get(SIGNING_KEY) is None and list(admin.redis.scan_iter("sb:admin:*")) == []
    assert "Content-Security-Policy" not in response.headers


def test_redis_down_is_a_503_page(destination) -> None:  # noqa: ANN001
    config = load_config_text(admin_config(destination.url))
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        client = create_app(config, redis=unreachable).test_client()
        response = client.get("/admin/login")
        assert response.status_code == 503 and "does not answer right now" in response.text
        # With session_secret the login form still shows; logging in needs Redis.
        with_secret = load_config_text(admin_config(destination.url, token=TOKEN, session_secret="s" * 40))
        client = create_app(with_secret, redis=unreachable).test_client()
        form = client.get("/admin/login")
        assert form.status_code == 200
        response = client.post("/admin/login", data={"csrf_token": csrf_of(form.text), "token": TOKEN})
        assert response.status_code == 503 and "does not answer right now" in response.text
    finally:
        unreachable.close()


# ---- hash-password ------------------------------------------------------------------------------


def test_hash_password_prints_a_hash_the_config_accepts(capsys, monkeypatch, destination) -> None:  # noqa: ANN001
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["hash-password"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("scrypt:") and check_password_hash(printed, "a long enough password")
    config = load_config_text(admin_config(destination.url, username="owner", password_hash=printed))
    assert config.model.admin is not None and config.model.admin.password_hash == printed


def test_hash_password_refuses_a_short_password(capsys, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["hash-password"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "use at least 10 characters" in captured.err


def test_an_event_whose_data_was_lost_in_redis(admin: Bridge, destination: CapturingServer) -> None:
    destination.respond_with(400, "bad request")
    event = booking("LOST1")
    admin.post(event)
    admin.drain()
    key = event_key(event["id"])
    admin.redis.hdel(f"sb:event:{key}", "body")  # evicted, or Redis restarted mid-action
    client = logged_in(admin)
    assert "data lost in Redis" in client.get("/admin/").text
    page = client.get(f"/admin/events/{key}")
    assert page.status_code == 200 and "data lost in Redis: the event itself is gone" in page.text
    assert "Send again" not in page.text


def test_the_admin_pages_say_when_redis_keeps_nothing_on_disk(admin: Bridge) -> None:
    page = logged_in(admin).get("/admin/").text  # the shared test Redis has no persistence
    assert 'class="flash flash-error redis-banner"' in page and "Redis keeps nothing on disk" in page


def test_the_event_page_says_what_ingest_changed_to_store_it(make_bridge, destination: CapturingServer) -> None:  # noqa: ANN001
    bridge = make_bridge(admin_config(destination.url, SECRET_FIELD_MAPPING))
    event = sample("booking.created")
    bridge.post(encode(event).replace(b"Juan P", b"Juan \\ud83d P"))
    html = logged_in(bridge).get(f"/admin/events/{event_key(event['id'])}").text
    assert "Stored with a change" in html
    assert "replaced with U+FFFD in data.booking.cliente.nombre" in html


def test_an_event_page_labels_its_booking_from_memory(make_bridge, destination: CapturingServer) -> None:  # noqa: ANN001
    """A booking.no_show carries neither the code nor the customer: its page shows memory's."""
    bridge = make_bridge(admin_config(destination.url, SECRET_FIELD_MAPPING))
    bridge.post(sample("booking.created"))
    no_show = sample("booking.no_show")
    bridge.post(no_show)
    bridge.drain()
    html = logged_in(bridge).get(f"/admin/events/{event_key(no_show['id'])}").text
    assert '<span class="entity">Booking ABC123XY · Juan Pérez</span>' in html
