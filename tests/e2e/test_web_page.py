"""The web page in a real headless Chromium (Debian chromium + chromium-driver)."""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from ttsha.server.app import create_app
from ttsha.server.service import Service
from ttsha.store import AudioStore

from ..server.conftest import SERVE

pytestmark = pytest.mark.e2e
#: The page as the last run saw it, kept in the repository (README links it).
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "web-page.png"

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


@pytest.fixture
def page(embedded_engine, tmp_path):
    """A real serve with the embedded engine on loopback: the URL of its web page."""
    service = Service(replace(SERVE, workers=1), embedded_engine, AudioStore(tmp_path / "store"))
    service.start()
    server = make_server("127.0.0.1", 0, create_app(service), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        service.stop(timeout=5)


def test_type_click_and_play(browser, page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "voice").get_attribute("value") == "baker")
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys("今天天气很好。")
    browser.find_element(By.ID, "play").click()
    wait.until(lambda d: (d.find_element(By.ID, "player").get_attribute("src") or "").endswith(".wav"))
    src = browser.find_element(By.ID, "player").get_attribute("src")
    assert src.startswith(page + "v1/audio/")
    # The browser itself decoded the file: the element knows its duration.
    duration = wait.until(
        lambda d: d.execute_script(
            "const a = document.getElementById('player'); return a.readyState >= 1 ? a.duration : null;"
        )
    )
    assert 0.5 < duration < 5
    assert "秒" in browser.find_element(By.ID, "status").text
    browser.save_screenshot(str(tmp_path / "page.png"))


def test_chinese_labels_server_limits_formats_and_errors_in_place(browser, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.set_window_size(900, 760)
    browser.get(page)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.ID, "voice").get_attribute("value") == "baker")
    # Emotions in Chinese, their values the API's.
    emotions = {o.get_attribute("value"): o.text for o in Select(browser.find_element(By.ID, "emotion")).options}
    assert emotions == {"neutral": "中性", "happy": "高兴", "sad": "悲伤", "angry": "生气", "calm": "平静"}
    # Limits from the server: SERVE.max_chars, the engine's speed range.
    text = browser.find_element(By.ID, "text")
    assert text.get_attribute("maxlength") == str(SERVE.max_chars)
    assert f"/ {SERVE.max_chars}" in browser.find_element(By.ID, "text-count").text
    speed = browser.find_element(By.ID, "speed")
    assert (speed.get_attribute("min"), speed.get_attribute("max")) == ("0.5", "2")
    # The server's refusal shown beside the text it is about.
    text.clear()
    text.send_keys("!!!")
    browser.find_element(By.ID, "play").click()
    error = wait.until(lambda d: d.find_element(By.ID, "text-error").text)
    assert "nothing to say" in error and "invalid" in text.get_attribute("class")
    # Each playable format, decoded by the browser itself.
    formats = Select(browser.find_element(By.ID, "format"))
    assert [o.get_attribute("value") for o in formats.options] == ["wav", "mp3", "opus", "flac"]
    text.clear()
    text.send_keys("今天天气很好。")
    assert browser.find_element(By.ID, "text-error").text == ""  # typing clears the error
    for fmt in ("mp3", "opus", "flac"):
        formats.select_by_value(fmt)
        browser.find_element(By.ID, "play").click()
        wait.until(lambda d, f=fmt: (d.find_element(By.ID, "player").get_attribute("src") or "").endswith(f".{f}"))
        duration = wait.until(lambda d: d.execute_script(
            "const a = document.getElementById('player'); return a.readyState >= 1 ? a.duration : null;"))
        assert 0.5 < duration < 5, fmt
        assert fmt.upper() in browser.find_element(By.ID, "status").text
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
