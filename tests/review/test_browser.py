"""The review page in a real browser: Debian's headless Chromium driven by Selenium through chromedriver.

Open the grid, filter it, open a photo, reject an instance, reload and see the decision kept, mark
the photo reviewed, export, and read the exported COCO with pycocotools.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from .conftest import NEEDS_REVIEW_EXTRA

pytest.importorskip("starlette", reason=NEEDS_REVIEW_EXTRA)
pytest.importorskip("uvicorn", reason=NEEDS_REVIEW_EXTRA)
webdriver = pytest.importorskip("selenium.webdriver", reason="browser tests need selenium (pip install selenium)")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="browser tests need Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout: float = 15.0):
    # The page re-renders lists after each change: an element found a moment ago may be replaced.
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: condition(d))


def cards(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#grid .card")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_review_a_photo_in_the_browser_and_export_it(browser, live_server: str, tmp_path: Path):
    damaged_total = get_json(f"{live_server}/api/items?gate=damaged")["total"]
    dent_total = get_json(f"{live_server}/api/items?cls=dent")["total"]
    assert 0 < damaged_total < 10 and 0 < dent_total

    browser.get(live_server + "/")
    wait_for(browser, lambda d: len(cards(d)) == 10)
    Select(browser.find_element(By.ID, "f-gate")).select_by_value("damaged")
    wait_for(browser, lambda d: len(cards(d)) == damaged_total)
    Select(browser.find_element(By.ID, "f-cls")).select_by_value("dent")
    wait_for(browser, lambda d: len(cards(d)) == len(get_json(f"{live_server}/api/items?gate=damaged&cls=dent")["items"]))
    scores = [float(c.find_element(By.CSS_SELECTOR, ".score").text) for c in cards(browser)]
    assert scores == sorted(scores, reverse=True)

    first = cards(browser)[0]
    item_id = first.get_attribute("data-id")
    first.click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#instances li.inst"))
    n_instances = len(browser.find_elements(By.CSS_SELECTOR, "#instances li.inst"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#pred-svg .shape")) == n_instances
    assert browser.find_element(By.ID, "gt-figure").is_displayed(), "an evaluation shows its ground truth"
    assert browser.find_elements(By.CSS_SELECTOR, "#gt-svg .shape")
    # The photo itself loaded (decoded and re-encoded by the server).
    assert wait_for(browser, lambda d: d.execute_script("return document.getElementById('pred-img').naturalWidth") == 128)

    browser.find_element(By.CSS_SELECTOR, '#instances li[data-index="0"] .reject').click()
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, '#instances li[data-index="0"]').get_attribute("data-decision") == "reject")
    assert "rejected" in browser.find_element(By.CSS_SELECTOR, '#pred-svg .shape[data-index="0"]').get_attribute("class")

    # Class toggles hide a class's shapes; the slider sets the fill opacity.
    dent_toggle = browser.find_element(By.CSS_SELECTOR, '#class-toggles input[data-class="dent"]')
    dent_toggle.click()
    assert all(not s.is_displayed() for s in browser.find_elements(By.CSS_SELECTOR, '#pred-svg .shape[data-class="dent"]'))
    dent_toggle.click()
    browser.execute_script("const s = document.getElementById('opacity'); s.value = 0.9; s.dispatchEvent(new Event('input'));")
    assert browser.find_element(By.CSS_SELECTOR, "#pred-svg .shape:not(.rejected)").value_of_css_property("fill-opacity") == "0.9"

    # Keyboard: next photo and back.
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    wait_for(browser, lambda d: d.current_url.split("#/item/")[-1] != item_id)
    body.send_keys(Keys.ARROW_LEFT)
    wait_for(browser, lambda d: d.current_url.endswith(item_id))

    browser.refresh()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#instances li[data-decision="reject"]'))
    assert browser.find_element(By.CSS_SELECTOR, '#instances li[data-index="0"]').get_attribute("data-decision") == "reject"

    browser.find_element(By.ID, "done").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "item-status").get_attribute("data-reviewed") == "1")
    browser.find_element(By.ID, "export").click()
    link = wait_for(browser, lambda d: d.find_elements(By.ID, "export-coco"))[0]
    coco_path = tmp_path / "exported_coco.json"
    with urllib.request.urlopen(link.get_attribute("href"), timeout=10) as response:
        coco_path.write_bytes(response.read())
    coco = COCO(str(coco_path))
    assert len(coco.getImgIds()) == 1
    assert len(coco.getAnnIds()) == n_instances - 1, "the rejected instance is left out"
    for annotation in coco.loadAnns(coco.getAnnIds()):
        assert coco.annToMask(annotation).sum() > 0

    screenshot = os.environ.get("DEFECTKIT_REVIEW_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)
