"""The admin in a real headless browser (Debian's chromium and chromium-driver, via selenium), in
Spanish and English at 1280 and 390 px: log in, find a booking by its code and by the customer's
name, open its page, see the Slack message and the e-mail as sent, send a failed call again and see
the confirmation on screen. axe-core (npm) finds no serious or critical accessibility problem on
the login, list, booking and event pages, and no script from event data ever runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as conditions
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from tests.fakes.http_server import CapturingServer
from tests.harness import Bridge, sample
from tests.test_admin import PASSWORD, admin_config
from tests.test_admin_previews import HOSTILE, booking, salon, slack, smtp  # noqa: F401 - fixtures
from tests.test_google_calendar import google, key_file, private_key  # noqa: F401 - fixtures

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


@contextmanager
def serving(bridge: Bridge) -> Iterator[str]:
    """The bridge's Flask app on a real localhost port."""
    server = make_server("127.0.0.1", 0, bridge.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def live_admin(admin_bridge: Bridge) -> Iterator[str]:
    with serving(admin_bridge) as url:
        yield url


def chromium(folder: Path, language: str) -> WebDriver:
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
        f"--user-data-dir={folder / 'chromium-profile'}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        f"--lang={language}",
    ):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": language})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(folder / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


@pytest.fixture
def browsers(tmp_path: Path) -> Iterator[Callable[[str], WebDriver]]:
    """Headless chromium whose Accept-Language is the given language; quit at the end."""
    started: list[WebDriver] = []

    def start(language: str) -> WebDriver:
        folder = tmp_path / language
        folder.mkdir()
        started.append(chromium(folder, language))
        return started[-1]

    yield start
    for driver in started:
        driver.quit()


@pytest.fixture
def browser(browsers: Callable[[str], WebDriver]) -> WebDriver:
    return browsers("en")


AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
# What each language calls the things the test looks for.
WORDS = {
    "es": {
        "login": "Entrar",
        "queued": "En cola para enviarse otra vez",
        "dead": "Fallido",
        "done": "Enviado",
        "text": "Versión de texto",
    },
    "en": {
        "login": "Log in",
        "queued": "Queued to be sent again",
        "dead": "Failed",
        "done": "Sent",
        "text": "Text version",
    },
}


def accessibility_problems(driver: WebDriver) -> list[str]:
    """axe-core's serious and critical violations on the current page (axe from npm: `make install`)."""
    assert AXE.exists(), f"{AXE} is missing: run `make install` (npm install --prefix tests)"
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    violations = driver.execute_async_script(
        "axe.run(document, {resultTypes: ['violations']}).then(r => arguments[arguments.length - 1](r.violations))"
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
        if v["impact"] in ("serious", "critical")
    ]


def in_view(driver: WebDriver, css: str, whole: bool = True) -> bool:
    """Whether the element is on the screen as it is now, without scrolling (`whole`: all of it)."""
    return bool(
        driver.execute_script(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            "return r.height > 0 && r.top >= 0 && (arguments[1] ? r.bottom : r.top + 40) <= window.innerHeight;",
            css,
            whole,
        )
    )


def click(driver: WebDriver, element: WebElement) -> None:
    """Click as a person would after scrolling it to the middle of the screen (not under the sticky header)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def no_script_ran(driver: WebDriver) -> None:
    assert driver.execute_script("return window.__xss === undefined"), "a script from event data ran"


@pytest.fixture
def salon_admin(salon: Callable[..., Bridge], request: pytest.FixtureRequest) -> Bridge:  # noqa: F811
    language = request.param
    return salon(language="es" if language == "es" else None)  # English: from the browser's Accept-Language


@pytest.fixture
def live_salon(salon_admin: Bridge) -> Iterator[str]:
    with serving(salon_admin) as url:
        yield url


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280px", "390px"])
@pytest.mark.parametrize("salon_admin", ["es", "en"], indirect=True)
def test_an_owner_finds_a_booking_sees_what_was_sent_and_sends_a_failed_call_again(
    salon_admin: Bridge,
    live_salon: str,
    browsers: Callable[[str], WebDriver],
    destination: CapturingServer,
    size: tuple[int, int],
    tmp_path: Path,
) -> None:
    bridge = salon_admin
    language = "es" if bridge.config.model.admin and bridge.config.model.admin.language == "es" else "en"
    words = WORDS[language]
    browser = browsers(language)
    browser.set_window_size(*size)
    other = booking("OTHER1", name="Pedro Gómez", id=11111)
    other["data"]["booking"]["cliente"]["id"] = 1111
    bridge.post(other)
    bridge.drain()
    destination.respond_with(400, "the CRM refused the booking")
    target = booking("BRW42Z", name="Lucía Fernández", notes=HOSTILE, id=99001)
    target["data"]["booking"]["cliente"].update(id=9901, email="lucia@example.org")
    bridge.post(target)
    bridge.drain()
    assert bridge.record(target["id"]).actions["crm/notify"].status == "dead"
    wait = WebDriverWait(browser, WAIT)
    shots = tmp_path / "screenshots"
    shots.mkdir()

    browser.get(f"{live_salon}/admin/")
    wait.until(conditions.url_contains("/admin/login"))
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == language
    assert accessibility_problems(browser) == []
    browser.find_element(By.NAME, "username").send_keys("owner")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(conditions.presence_of_element_located((By.ID, "events")))
    browser.save_screenshot(str(shots / "list.png"))
    assert in_view(browser, "#events > li", whole=False), "the events start on the first screen"
    assert accessibility_problems(browser) == []

    # Find the booking by its code, then by the customer's name (accents and case do not matter).
    for query in ("brw42z", "lucia FERNANDEZ"):
        search = browser.find_element(By.NAME, "q")
        search.clear()
        search.send_keys(query)
        search.submit()
        wait.until(conditions.url_contains("q="))
        rows = browser.find_elements(By.CSS_SELECTOR, "#events > li")
        assert len(rows) == 1 and "BRW42Z · Lucía Fernández" in rows[0].text, query
    assert rows[0].find_element(By.CSS_SELECTOR, ".badge[data-status=dead]").text == words["dead"]

    # The booking page: the Slack message as Slack draws it, the e-mail as sent.
    click(browser, rows[0].find_element(By.CSS_SELECTOR, "a.booking-link"))
    wait.until(conditions.presence_of_element_located((By.ID, "booking-label")))
    assert browser.find_element(By.ID, "booking-label").text.endswith("BRW42Z · Lucía Fernández")
    assert accessibility_problems(browser) == []
    message = browser.find_element(By.CSS_SELECTOR, ".preview.slack")
    assert message.find_element(By.CSS_SELECTOR, ".slack-text strong").text == "Nueva reserva"
    assert "<!channel>" in message.text and "<script>window.__xss=1</script>" in message.text
    assert not message.find_elements(By.CSS_SELECTOR, "img, script, .mention")
    mail = browser.find_element(By.CSS_SELECTOR, ".preview.email")
    assert "Tu reserva BRW42Z" in mail.text
    frame = mail.find_element(By.CSS_SELECTOR, "iframe.mail-body")
    assert frame.get_attribute("sandbox") == ""
    browser.switch_to.frame(frame)
    wait.until(conditions.presence_of_element_located((By.TAG_NAME, "b")))
    assert browser.find_element(By.TAG_NAME, "b").text == "Lucía Fernández"
    assert "<script>window.__xss=1</script>" in browser.find_element(By.TAG_NAME, "body").text
    browser.switch_to.default_content()
    click(browser, mail.find_element(By.XPATH, f".//button[text()='{words['text']}']"))
    assert mail.find_element(By.CSS_SELECTOR, "pre.mail-text").is_displayed() and not frame.is_displayed()
    no_script_ran(browser)
    browser.save_screenshot(str(shots / "booking.png"))

    # The event page; the failed call is sent again and the page lands on it, confirmation in view.
    click(browser, browser.find_element(By.CSS_SELECTOR, ".timeline-event h3 a"))
    wait.until(conditions.presence_of_element_located((By.ID, "actions")))
    assert accessibility_problems(browser) == []
    destination.respond_with(200, "ok")
    click(browser, browser.find_element(By.CSS_SELECTOR, "#action-crm-notify form.replay button"))
    wait.until(conditions.url_contains("#action-crm-notify"))
    result = wait.until(
        conditions.visibility_of_element_located((By.CSS_SELECTOR, "#action-crm-notify .replay-result"))
    )
    assert words["queued"] in result.text and in_view(browser, "#action-crm-notify .replay-result")
    bridge.drain()  # a worker runs it; the open page follows by itself
    wait.until(
        conditions.text_to_be_present_in_element_attribute(
            (By.CSS_SELECTOR, "#action-crm-notify .badge"), "data-status", "done"
        )
    )
    assert browser.find_element(By.CSS_SELECTOR, "#action-crm-notify .badge").text == words["done"]
    no_script_ran(browser)
    browser.save_screenshot(str(shots / "event-replayed.png"))
    assert destination.requests[-1].json()["codigo"] == "BRW42Z"


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
    wait.until(conditions.text_to_be_present_in_element((By.CSS_SELECTOR, ".replay-result"), "Queued to be sent again"))
    admin_bridge.drain()
    wait.until(lambda driver: "Attempts (2)" in driver.find_element(By.ID, "actions").get_attribute("textContent"))
    assert len(destination.requests) == 2
