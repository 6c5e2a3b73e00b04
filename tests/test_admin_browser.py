"""The admin in a real headless browser (Debian's chromium and chromium-driver, via selenium):
log in, find an event by its booking code, open it, replay its dead action and watch the status
change. Screenshots of the pages, at desktop and phone width, are saved for review."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as conditions
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from tests.fakes.http_server import CapturingServer
from tests.harness import Bridge, sample
from tests.test_admin import PASSWORD, admin_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DESKTOP = (1280, 900)
PHONE = (390, 844)
WAIT = 20  # seconds: an upper bound for the browser, never an assertion about speed

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them: "
    "apt-get install -y chromium chromium-driver)",
)


@pytest.fixture
def admin_bridge(make_bridge: Callable[[str], Bridge], destination: CapturingServer) -> Bridge:
    return make_bridge(admin_config(destination.url))


@pytest.fixture
def live_admin(admin_bridge: Bridge) -> Iterator[str]:
    """The bridge's Flask app on a real localhost port."""
    server = make_server("127.0.0.1", 0, admin_bridge.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Shots:
    """Full-page screenshots at desktop and phone width, into the test's output folder."""

    def __init__(self, driver: WebDriver, folder: Path):
        self.driver = driver
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []

    def take(self, name: str) -> None:
        for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
            self.driver.set_window_size(width, height)
            full = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(width, max(height, int(full) + 140))
            path = self.folder / f"{len(self.paths) // 2 + 1:02d}-{name}-{label}.png"
            assert self.driver.save_screenshot(str(path)), f"no screenshot for {path}"
            self.paths.append(path)
        self.driver.set_window_size(*DESKTOP)


def test_find_an_event_by_booking_code_and_replay_its_dead_action(
    admin_bridge: Bridge, live_admin: str, browser: WebDriver, destination: CapturingServer, tmp_path: Path
) -> None:
    bridge = admin_bridge
    for event_type in ("customer.created", "order.created", "payment.completed", "booking.created"):
        bridge.post(sample(event_type))
    bridge.drain()
    destination.respond_with(400, "calendar refused the entry: the time slot is closed")
    target = sample("booking.created")
    target["data"]["booking"].update(id=99001, codigo="BRW42Z", fecha="2024-02-14", hora_inicio="17:30")
    target["data"]["booking"]["cliente"].update(id=9901, nombre="Lucía Fernández", email="lucia@example.org")
    bridge.post(target)
    bridge.drain()
    bridge.post(sample("order.shipped"))
    bridge.drain()
    assert bridge.record(target["id"]).actions["all-to-crm/notify"].status == "dead"

    shots = Shots(browser, tmp_path / "screenshots")
    wait = WebDriverWait(browser, WAIT)

    # Nothing without a login: the admin sends the browser to the login form.
    browser.get(f"{live_admin}/admin/")
    wait.until(conditions.url_contains("/admin/login"))
    shots.take("login")
    browser.find_element(By.NAME, "username").send_keys("owner")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(conditions.presence_of_element_located((By.ID, "events")))
    assert browser.current_url == f"{live_admin}/admin/"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#events > li")) == 6
    assert browser.find_element(By.ID, "dash-failed").text == "1"
    shots.take("list")

    # Find the booking by its code.
    search = browser.find_element(By.NAME, "q")
    search.send_keys("brw42z")
    search.submit()
    wait.until(conditions.url_contains("q=brw42z"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#events > li")
    assert len(rows) == 1
    assert "booking BRW42Z" in rows[0].text and "Lucía Fernández" in rows[0].text
    assert rows[0].find_element(By.CSS_SELECTOR, ".badge").get_attribute("data-status") == "dead"
    shots.take("search")

    # Open it: the dead action, its reason and the payload are there.
    rows[0].find_element(By.CSS_SELECTOR, "a.event-link").click()
    wait.until(conditions.presence_of_element_located((By.ID, "actions")))
    badge = browser.find_element(By.CSS_SELECTOR, "#action-all-to-crm-notify .badge")
    assert (badge.get_attribute("data-status"), badge.text) == ("dead", "dead")
    assert "calendar refused the entry: the time slot is closed" in browser.find_element(By.ID, "actions").text
    assert "lucia@example.org" in browser.find_element(By.CSS_SELECTOR, "pre.payload").text
    shots.take("event-dead")

    # One click sends it again; the page follows the action until a worker has run it.
    browser.find_element(By.CSS_SELECTOR, "#action-all-to-crm-notify form.replay button").click()
    wait.until(conditions.text_to_be_present_in_element((By.CSS_SELECTOR, ".flash-ok"), "queued to be sent again"))
    queued = browser.find_element(By.CSS_SELECTOR, "#action-all-to-crm-notify .badge")
    assert (queued.get_attribute("data-status"), queued.text) == ("pending", "queued")
    shots.take("event-queued")
    bridge.drain()  # a worker runs the replay; the open page updates by itself
    wait.until(
        conditions.text_to_be_present_in_element_attribute(
            (By.CSS_SELECTOR, "#action-all-to-crm-notify .badge"), "data-status", "done"
        )
    )
    assert browser.find_element(By.CSS_SELECTOR, "#action-all-to-crm-notify .badge").text == "done"
    assert "Attempts (3)" in browser.find_element(By.ID, "actions").text  # failed, replay, done
    assert bridge.record(target["id"]).actions["all-to-crm/notify"].status == "done"
    shots.take("event-done")

    # The replayed request reached the destination.
    assert destination.requests[-1].json()["id"] == target["id"]
    print("\nscreenshots of the admin:\n" + "\n".join(f"  {path}" for path in shots.paths))


def test_a_forced_replay_asks_for_confirmation_in_the_browser(
    admin_bridge: Bridge, live_admin: str, browser: WebDriver, destination: CapturingServer, tmp_path: Path
) -> None:
    event = sample("order.created")
    admin_bridge.post(event)
    admin_bridge.drain()
    wait = WebDriverWait(browser, WAIT)
    browser.get(f"{live_admin}/admin/login")
    browser.find_element(By.NAME, "username").send_keys("owner")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(conditions.presence_of_element_located((By.ID, "events")))
    browser.find_element(By.CSS_SELECTOR, "#events a.event-link").click()
    button = wait.until(conditions.element_to_be_clickable((By.CSS_SELECTOR, "form.replay button")))
    assert button.text == "Send again anyway…"

    button.click()
    alert = wait.until(conditions.alert_is_present())
    assert "Send it again anyway?" in alert.text
    alert.dismiss()  # cancelled: nothing is queued
    assert admin_bridge.runtime.queue.count == 0

    browser.find_element(By.CSS_SELECTOR, "form.replay button").click()
    wait.until(conditions.alert_is_present()).accept()
    wait.until(conditions.text_to_be_present_in_element((By.CSS_SELECTOR, ".flash-ok"), "queued to be sent again"))
    admin_bridge.drain()
    wait.until(
        conditions.text_to_be_present_in_element_attribute((By.CSS_SELECTOR, "form.replay"), "data-confirm", "is done")
    )
    assert len(destination.requests) == 2
