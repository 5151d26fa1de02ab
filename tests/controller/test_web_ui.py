"""The web interface in a real browser: Debian's chromium, driven by selenium
through Debian's /usr/bin/chromedriver, against a running daemon behind a
real Postfix.

Log in with the enable password, see the rows of the messages just sent,
open one (its symbols with scores, options and descriptions), learn it as
spam, and see the Bayes spam count on the status view go up. A screenshot
of the opened row is saved under the test's tmp path (a test artifact) and,
with SMTPPROXY_SAVE_SCREENSHOT=1, copied to docs/screenshots/web-ui.png for
the README. Nothing here is skipped: no chromium is a failure (scripts/test.sh
installs it).
"""

from __future__ import annotations

import os
import shutil
import smtplib

import pytest

from tests.support.controller import READ_PASSWORD, WRITE_PASSWORD, controller_config, request
from tests.support.dns_server import DnsTestServer
from tests.support.net import free_port
from tests.support.pipeline import REPO
from tests.support.postfix import wait_until

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 20
SCREENSHOT = REPO / "docs" / "screenshots" / "web-ui.png"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# Markup in a subject must show as text, never become an element.
HOSTILE_SUBJECT = "<img src=x id=injected> Weekly report"
MESSAGES = [
    ("alice@example.org", "bob@example.net", "Minutes of the Tuesday meeting", b"See you all next week.\r\n"),
    ("carol@example.org", "dave@example.net", HOSTILE_SUBJECT, b"Numbers attached.\r\n"),
    ("offers@example.com", "bob@example.net", "You have WON a prize", GTUBE + b"\r\n"),
    ("erin@example.org", "frank@example.net", "Invoice 2291 for March",
     b"Please find the invoice for March. Cheap pills, best prices, click now!\r\n"),
]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    from tests.support.pipeline import Pipeline

    dns = DnsTestServer({})
    dns.start()
    port = free_port()
    p = Pipeline(tmp_path_factory.mktemp("webui"), scan=True, extra_config=f"""
[dns]
nameserver = "{dns.nameserver}"
timeout_s = 1.0
{controller_config(port)}
""")
    p.controller_port = port
    p.start()
    try:
        wait_until(lambda: _answers(port), 30, "the controller")
        yield p
    finally:
        p.stop()
        dns.stop()


def _answers(port: int) -> bool:
    try:
        return request(port, "GET", "/ping", timeout=2)[0] == 200
    except OSError:
        return False


def _send(port: int) -> None:
    for i, (sender, rcpt, subject, body) in enumerate(MESSAGES):
        raw = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
               f"Message-ID: <webui-{i}@example.org>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n"
               "\r\n").encode() + body
        with smtplib.SMTP("127.0.0.1", port, timeout=60, local_hostname="client.example.org") as s:
            try:
                s.sendmail(sender, [rcpt], raw)
            except smtplib.SMTPDataError:
                pass  # GTUBE is refused: its row is history all the same


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver "
                        "(scripts/test.sh does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100", "--lang=en-US", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    # An explicit service path: selenium's driver manager never runs (no download).
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER,
                                              log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _stat(port: int) -> dict:
    status, data = request(port, "GET", "/stat", headers={"Password": READ_PASSWORD})
    assert status == 200, data
    return data


def test_log_in_see_rows_open_one_learn_it_and_see_the_count_change(proxy, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    port = proxy.controller_port
    before = len(proxy.sink.files())
    _send(proxy.inbound_port)
    proxy.wait_delivered(before + len(MESSAGES) - 1)  # all but GTUBE
    wait_until(lambda: _stat(port)["history"]["written"] >= len(MESSAGES), 20, "history rows")
    wait = WebDriverWait(browser, WAIT_S)
    url = f"http://127.0.0.1:{port}/"

    # The page itself: CSP on, and served with no password.
    status, _ = request(port, "GET", "/")
    assert status == 200

    browser.get(url)
    password = wait.until(ec.visibility_of_element_located((By.ID, "password")))
    password.send_keys("not the password", Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.ID, "notice"), "Wrong password"))
    password.clear()
    password.send_keys(WRITE_PASSWORD, Keys.ENTER)  # the keyboard submits the form
    wait.until(ec.text_to_be_present_in_element((By.ID, "who-mode"), "read and write"))

    # Status: counters, health, the graph.
    wait.until(lambda d: d.find_element(By.ID, "st-learned-spam").text.isdigit())
    learned_before = int(browser.find_element(By.ID, "st-learned-spam").text)
    wait.until(lambda d: "OK" in d.find_element(By.ID, "st-store").text)
    wait.until(lambda d: "OK" in d.find_element(By.ID, "st-dns").text)
    assert browser.find_elements(By.CSS_SELECTOR, "#graph svg path")

    # History: the rows of the messages just sent.
    browser.find_element(By.CSS_SELECTOR, "#nav button[data-view=history]").click()
    rows = "#history-table tbody tr"
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) >= len(MESSAGES))
    table = browser.find_element(By.ID, "history-table").text
    for sender, rcpt, subject, _ in MESSAGES:
        assert sender in table and rcpt in table and subject in table
    assert not browser.find_elements(By.ID, "injected")  # the subject stayed text
    assert "reject" in table

    # Search narrows the table.
    search = browser.find_element(By.ID, "hf-q")
    search.send_keys("Invoice 2291", Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 1)

    # Open the row: every symbol with score, options and description.
    opener = browser.find_element(By.CSS_SELECTOR, f"{rows} button.open-row")
    opener.send_keys(Keys.ENTER)
    detail = wait.until(ec.visibility_of_element_located((By.ID, "history-detail")))
    wait.until(lambda d: len(detail.find_elements(By.CSS_SELECTOR, "table.symbols tbody tr")) > 0)
    assert "Invoice 2291 for March" in detail.text
    assert "webui-3@example.org" in detail.text
    cells = detail.find_elements(By.CSS_SELECTOR, "table.symbols tbody tr td")
    assert any(c.text for c in cells[2::3]), "no symbol has a description"

    browser.save_screenshot(str(tmp_path / "web-ui-history.png"))

    # Learn it as spam from the row; the count on the status view goes up.
    detail.find_element(By.CSS_SELECTOR, "button.learn-spam").click()
    wait.until(lambda d: "Learned as spam" in detail.find_element(By.CSS_SELECTOR, ".learn-result").text)
    browser.find_element(By.CSS_SELECTOR, "#nav button[data-view=status]").click()
    wait.until(lambda d: d.find_element(By.ID, "st-learned-spam").text == str(learned_before + 1))
    assert _stat(port)["statfiles"][0]["revision"] == learned_before + 1

    shot = tmp_path / "web-ui.png"
    browser.find_element(By.CSS_SELECTOR, "#nav button[data-view=history]").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 1)
    browser.find_element(By.CSS_SELECTOR, f"{rows} button.open-row").click()
    wait.until(ec.visibility_of_element_located((By.ID, "history-detail")))
    wait.until(lambda d: "Learn as spam" in d.find_element(By.ID, "history-detail").text)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    # No script error, no CSP violation along the way.
    problems = [e["message"] for e in browser.get_log("browser")
                if e["level"] == "SEVERE" and e["source"] in ("javascript", "security")]
    assert not problems, problems
    if os.environ.get("SMTPPROXY_SAVE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOT)


def test_read_password_shows_but_cannot_learn(proxy, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"http://127.0.0.1:{proxy.controller_port}/#history")
    password = wait.until(ec.visibility_of_element_located((By.ID, "password")))
    password.send_keys(READ_PASSWORD, Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.ID, "who-mode"), "read-only"))
    rows = "#history-table tbody tr"
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) >= 1)
    browser.find_element(By.CSS_SELECTOR, f"{rows} button.open-row").click()
    detail = wait.until(ec.visibility_of_element_located((By.ID, "history-detail")))
    assert "needs the enable password" in detail.text
    assert not detail.find_elements(By.CSS_SELECTOR, "button.learn-spam")
    # The password lives in this tab's sessionStorage only.
    assert browser.execute_script("return localStorage.length") == 0


def test_page_is_served_with_a_content_security_policy(proxy):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", proxy.controller_port, timeout=10)
    try:
        for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"),
                           ("/static/app.css", "text/css")):
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, path
            assert response.getheader("Content-Type").startswith(kind)
            assert "default-src 'self'" in response.getheader("Content-Security-Policy")
            assert response.getheader("X-Content-Type-Options") == "nosniff"
        conn.request("GET", "/static/../api.py")
        response = conn.getresponse()
        response.read()
        assert response.status == 404
    finally:
        conn.close()
