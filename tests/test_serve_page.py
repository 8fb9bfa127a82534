"""The ``clipindex serve`` page in a real headless Chromium (Debian's ``chromium`` driven by
Selenium through Debian's ``chromium-driver``): a query typed, results with decoded
thumbnails, a click that searches by a result, filters, the backbone picker, an image
upload, the keyboard alone on a narrow window; no console error; screenshots saved."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_serve import LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
MISSING = ("Debian's chromium and chromium-driver are not installed: "
           "apt-get install -y chromium chromium-driver (make browser)")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif((CHROMIUM is None or DRIVER is None) and not os.environ.get(
                  "CI"), reason=MISSING)]
WAIT = 60


@pytest.fixture(scope="module")
def server(serve_app: Any) -> Iterator[LiveServer]:
    with LiveServer(serve_app()) as live:
        yield live


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition)


_GRID = """
var imgs = Array.prototype.slice.call(document.querySelectorAll('#results img'));
return {
  query: document.getElementById('results').dataset.query || '',
  rows: Array.prototype.map.call(document.querySelectorAll('#results .hit'),
                                 function (b) { return Number(b.dataset.row); }),
  labels: Array.prototype.map.call(document.querySelectorAll('#results .label'),
                                   function (s) { return s.textContent; }),
  loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
  images: imgs.length,
  status: document.getElementById('status').textContent,
  error: document.getElementById('status').className === 'error',
  scrollWidth: document.documentElement.scrollWidth,
  clientWidth: document.documentElement.clientWidth
};"""


def _grid(driver: Any) -> dict[str, Any]:
    return dict(driver.execute_script(_GRID))


def _results_after(driver: Any, previous: str | None) -> dict[str, Any]:
    """The grid once it shows a new query and every thumbnail has decoded."""
    def ready(d: Any) -> dict[str, Any] | bool:
        g = _grid(d)
        assert not g["error"], g["status"]
        done = g["query"] and g["query"] != previous and g["images"] and \
            g["loaded"] == g["images"]
        return g if done else False

    return dict(_wait(driver, ready))


def _severe(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _not_blank(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))[::4, ::4].reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50, "the screenshot looks blank"


def test_search_click_filter_and_upload_in_chromium(server: LiveServer, browser: Any,
                                                    tmp_path: Path, serve_copy: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    browser.get(server.url + "/")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#backbones input")) == 3)
    box = browser.find_element(By.ID, "q")
    box.send_keys("a photo of a cow in a field", Keys.ENTER)
    first = _results_after(browser, None)
    assert len(first["rows"]) == 24 and first["loaded"] == 24
    assert "fused" in first["status"] and first["labels"].count("cow") >= 12

    target = browser.find_elements(By.CSS_SELECTOR, "#results .hit")[2]
    clicked = int(target.get_attribute("data-row"))
    target.click()
    second = _results_after(browser, first["query"])
    assert second["rows"] != first["rows"] and second["rows"][0] == clicked  # finds itself

    Select(browser.find_element(By.ID, "label")).select_by_visible_text("sheep")
    Select(browser.find_element(By.ID, "k")).select_by_visible_text("12")
    for name in ("tiny-rn", "tiny-vit-s"):  # the backbone picker: tiny-vit alone
        browser.find_element(By.CSS_SELECTOR, f"#backbones input[value='{name}']").click()
    box.clear()
    box.send_keys("an animal", Keys.ENTER)
    third = _results_after(browser, second["query"])
    assert third["labels"] == ["sheep"] * 12 and "fused" not in third["status"]

    root = Path(json.loads((serve_copy / "dataset.json").read_text())["root"])
    upload = next(iter(sorted((root / "val").glob("*.jpg"))))
    browser.find_element(By.ID, "file").send_keys(str(upload))
    fourth = _results_after(browser, third["query"])
    assert upload.name in fourth["query"] and len(fourth["rows"]) == 12

    shot = tmp_path / "serve-page.png"
    assert browser.save_screenshot(str(shot))
    _not_blank(shot)
    assert _severe(browser) == []
    print(f"screenshot: {shot}")


def test_keyboard_alone_on_a_narrow_window(server: LiveServer, browser: Any,
                                           tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.set_window_size(380, 900)
    browser.get(server.url + "/")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#backbones input")) == 3)
    keys = ActionChains(browser)

    def tab_to(element_id: str | None, css: str | None = None, limit: int = 40) -> None:
        for _ in range(limit):
            keys.send_keys(Keys.TAB).perform()
            active = browser.switch_to.active_element
            if (element_id and active.get_attribute("id") == element_id) or (
                    css and browser.execute_script("return arguments[0].matches(arguments[1])",
                                                   active, css)):
                return
        pytest.fail(f"Tab never reached {element_id or css}")

    tab_to("q")
    keys.send_keys("a dog on a road", Keys.ENTER).perform()
    first = _results_after(browser, None)
    tab_to(None, "#results .hit")
    focused = int(browser.switch_to.active_element.get_attribute("data-row"))
    keys.send_keys(Keys.ENTER).perform()
    second = _results_after(browser, first["query"])
    assert second["rows"][0] == focused and second["rows"] != first["rows"]
    assert second["scrollWidth"] <= second["clientWidth"]  # no sideways scrolling
    assert browser.switch_to.active_element.get_attribute("id") == "status"
    shot = tmp_path / "serve-page-narrow.png"
    assert browser.save_screenshot(str(shot))
    _not_blank(shot)
    assert _severe(browser) == []


def test_the_page_asks_for_the_token_and_sends_it(serve_app: Any, browser: Any) -> None:
    """With --token the page loads, asks for the token after the first 401, then sends
    it with every request: results and their thumbnails (fetched with the header)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    token = "page-token-0123"
    with LiveServer(serve_app(token=token)) as live:
        browser.get(live.url + "/")
        _wait(browser, lambda d: d.find_element(By.ID, "token-form").is_displayed())
        browser.find_element(By.ID, "token").send_keys(token, Keys.ENTER)
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#backbones input")) == 3)
        browser.find_element(By.ID, "q").send_keys("a photo of a horse", Keys.ENTER)
        grid = _results_after(browser, None)
        assert grid["loaded"] == grid["images"] == 24
        sources = browser.execute_script(
            "return Array.prototype.map.call(document.querySelectorAll('#results img'),"
            " function (i) { return i.src; });")
        assert all(src.startswith("blob:") for src in sources)  # fetched with the token
        severe = _severe(browser)
        # the one expected error: the first /info before the token was given
        assert len(severe) == 1 and "/info" in severe[0] and "401" in severe[0], severe
