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
    # The text as spoken, one span per character, highlighted while it plays.
    spans = browser.find_elements(By.CSS_SELECTOR, "#spoken span")
    assert [s.text for s in spans] == list("今天天气很好")
    seen = set()

    def speaking(d):
        lit = d.execute_script("return [...document.querySelectorAll('#spoken span')].findIndex("
                               "(s) => s.classList.contains('speaking'))")
        if lit >= 0:
            seen.add(lit)
        return len(seen) >= 2 or d.execute_script("return document.getElementById('player').ended")

    browser.execute_script("const a = document.getElementById('player'); a.currentTime = 0; a.play();")
    wait.until(speaking)
    assert len(seen) >= 2, seen  # the highlight moved along the text as the audio played
    assert _seek_and_read_highlight(browser, wait, 4) == "很"
    assert browser.find_element(By.ID, "subtitles").get_attribute("href").endswith(".vtt")
    browser.save_screenshot(str(tmp_path / "page.png"))


def _seek_and_read_highlight(browser, wait, index: int) -> str:
    """Pause, seek into the middle of character ``index``'s time, and read what is highlighted."""
    browser.execute_script(
        "const a = document.getElementById('player'); a.pause();"
        "a.currentTime = (marks[arguments[0]].start + marks[arguments[0]].end) / 2;", index)
    return wait.until(lambda d: d.execute_script(
        "const s = document.querySelector('#spoken span.speaking'); return s ? s.textContent : null;"))


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
    # The screenshot shows a character highlighted as it is spoken (in WAV, which the browser can seek:
    # the encoded formats are sent without Range).
    formats.select_by_value("wav")
    browser.find_element(By.ID, "play").click()
    wait.until(lambda d: (d.find_element(By.ID, "player").get_attribute("src") or "").endswith(".wav"))
    wait.until(lambda d: d.execute_script("return document.getElementById('player').readyState >= 1"))
    assert _seek_and_read_highlight(browser, wait, 2) == "天"
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
