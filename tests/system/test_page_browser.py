"""The status page in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium), served by the real agent watching a private systemd user manager (issue 12, §1)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.agentproc import AgentProcess, journal_rows, wait_until
from tests.needs import tool
from tests.sysmgr import SystemdUser

pytestmark = pytest.mark.systemd
UNIT = "sp-page.service"
TOKEN = "page-test-token-0123456789"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium through Debian's chromedriver: Selenium downloads nothing."""
    driver_path = tool("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = tool("chromium", "chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def start(mgr: SystemdUser, tmp_path: Path, *extra: str) -> AgentProcess:
    mgr.write_unit(UNIT, "[Service]\nExecStart=/bin/sleep infinity\n")
    mgr.daemon_reload()
    goals = tmp_path / "goals.yaml"
    goals.write_text(f"apiVersion: setpoint/v1\nservices:\n  web: {{unit: {UNIT}}}\n")
    agent = AgentProcess(goals, tmp_path / "state", bus="user", env=mgr.env, extra=extra)
    agent.wait_started()
    return agent


def service(driver: WebDriver, attr: str) -> str:
    """The web service row's `data-<attr>`; "" while the page is between two renders (a row
    found just before an update replaced it is stale: the caller polls again)."""
    rows = driver.find_elements(By.ID, "service-web")
    try:
        return (rows[0].get_attribute(f"data-{attr}") or "") if rows else ""
    except StaleElementReferenceException:
        return ""


def click(driver: WebDriver, css: str) -> None:
    """Click what `css` finds, again if an update replaced it in between."""

    def clicked() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
        except StaleElementReferenceException:
            return False
        return True

    wait_until(clicked, 10, f"{css} to click")


def row_text(driver: WebDriver) -> str:
    try:
        return driver.find_element(By.ID, "service-web").text
    except StaleElementReferenceException:
        return ""


def commands(state: Path) -> list[dict[str, str]]:
    rows = journal_rows(state)
    return [r["input"] for r in rows if r["input"]["type"] == "OperatorCommand"]


def test_read_only_page_shows_a_restart_live_and_refuses_a_forged_post(
    systemd_user: SystemdUser, tmp_path: Path, browser: WebDriver
) -> None:
    with start(systemd_user, tmp_path) as agent:
        url = f"http://127.0.0.1:{agent.port}/"
        browser.get(url)
        wait_until(lambda: service(browser, "lifecycle") == "Running", 20, "web Running")
        browser.execute_script("window.sameDocument = true;")  # gone if the page reloads
        os.kill(systemd_user.main_pid(UNIT), signal.SIGKILL)
        wait_until(lambda: service(browser, "restarts") == "1", 15, "the restart on the page")
        wait_until(lambda: service(browser, "lifecycle") == "Running", 15, "Running again")
        assert browser.execute_script("return window.sameDocument") is True
        history = browser.find_element(By.ID, "history").text
        assert "main process was killed" in history or "SIGKILL" in history, history
        assert browser.find_elements(By.CSS_SELECTOR, "[data-command]") == []
        assert not browser.find_element(By.ID, "operator").is_displayed()
        browser.save_screenshot(str(tmp_path / "read-only.png"))

        forged = browser.execute_async_script(
            """const done = arguments[arguments.length - 1];
            fetch("/api/v1/commands", {method: "POST", headers: {"Content-Type":
              "application/json"}, body: JSON.stringify({command: "maintenance_on"})})
              .then(r => done(r.status));"""
        )
        assert forged == 403
        form = (f"<form id=f method=post action='{url}api/v1/commands'>"
                "<input name=command value=maintenance_on></form>")  # fmt: skip
        browser.get("data:text/html," + form)
        browser.execute_script("document.getElementById('f').submit()")
        wait_until(lambda: "operator actions are off" in browser.page_source, 10, "refusal")
        assert commands(tmp_path / "state") == []
        assert agent.stop() == 0


def test_with_actions_and_the_token_maintenance_toggles_and_is_journaled_with_who(
    systemd_user: SystemdUser, tmp_path: Path, browser: WebDriver
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    state = tmp_path / "state"
    with start(systemd_user, tmp_path, "--page-actions", "--page-token-file", str(token)) as agent:
        browser.get(f"http://127.0.0.1:{agent.port}/")
        wait_until(lambda: service(browser, "lifecycle") == "Running", 20, "web Running")
        on = '#service-web [data-command="maintenance_on"]'
        click(browser, on)  # no token yet
        wait_until(lambda: "refused (401)" in browser.find_element(By.ID, "answer").text, 10, "401")
        assert commands(state) == []
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "operator-name").send_keys("carol")
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        click(browser, on)
        off = '#service-web [data-command="maintenance_off"]'
        wait_until(lambda: bool(browser.find_elements(By.CSS_SELECTOR, off)), 10, "maintenance")
        wait_until(lambda: "maintenance" in row_text(browser), 10, "the row says maintenance")
        browser.save_screenshot(str(tmp_path / "actions.png"))
        click(browser, off)
        wait_until(lambda: bool(browser.find_elements(By.CSS_SELECTOR, on)), 10, "maintenance off")
        journaled = [(c["command"], c["target"], c["by"]) for c in commands(state)]
        who = "carol via http from 127.0.0.1"
        assert journaled == [("maintenance_off", "web", who), ("maintenance_on", "web", who)]
        assert TOKEN not in agent.output()
        assert agent.stop() == 0
