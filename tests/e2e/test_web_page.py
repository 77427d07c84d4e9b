"""The web page in a real headless Chromium (Debian chromium + chromium-driver)."""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import replace

import pytest
from werkzeug.serving import make_server

from ttsha.server.app import create_app
from ttsha.server.service import Service
from ttsha.store import AudioStore

from ..server.conftest import SERVE

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, DRIVER) if not os.path.exists(p)]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing component is a failure
        pytest.skip(message)


@pytest.fixture
def browser():
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def test_type_click_and_play(browser, embedded_engine, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    service = Service(replace(SERVE, workers=1), embedded_engine, AudioStore(tmp_path))
    service.start()
    server = make_server("127.0.0.1", 0, create_app(service), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        browser.get(base)
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "voice").get_attribute("value") == "baker")
        text = browser.find_element(By.ID, "text")
        text.clear()
        text.send_keys("今天天气很好。")
        browser.find_element(By.ID, "play").click()
        wait.until(lambda d: (d.find_element(By.ID, "player").get_attribute("src") or "").endswith(".wav"))
        src = browser.find_element(By.ID, "player").get_attribute("src")
        assert src.startswith(base + "v1/audio/")
        # The browser itself decoded the file: the element knows its duration.
        duration = wait.until(
            lambda d: d.execute_script(
                "const a = document.getElementById('player'); return a.readyState >= 1 ? a.duration : null;"
            )
        )
        assert 0.5 < duration < 5
        assert "秒" in browser.find_element(By.ID, "status").text
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        server.shutdown()
        server.server_close()
        service.stop(timeout=5)
