"""Make docs/images/review.png: the review page over a real run on the car config's built-in synthetic data.

Runs ``defectkit run configs/car_damage.py`` small (a few minutes on two cores) in a temporary
folder, serves it with the review app on 127.0.0.1, opens the highest-scoring photo in headless
Chromium, rejects its first instance and takes a screenshot, reduced to a palette PNG under 300 KB.
Only generated images are shown (never the licensed data sets).

Usage: ``PYTHONPATH=$PWD python docs/images/make_review_screenshot.py`` (needs the ``review``
extra, selenium, and Debian's chromium + chromium-driver).
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "car_damage.py")
OPTIONS = {
    "builtin_dataset.n_damaged": 24,
    "builtin_dataset.n_normal": 16,
    "pipeline.0.epochs": 1,
    "pipeline.0.max_images": 8,
    "pipeline.0.train_size": (64, 64),
    "pipeline.1.enabled": True,
    "pipeline.1.image_size": (64, 64),
    "pipeline.1.epochs": 3,
    "pipeline.1.target_recall": 0.5,
    "pipeline.2.image_size": (128, 160),
    "pipeline.2.epochs": 15,
    "split.ratios": (0.5, 0.15, 0.35),
}
OUT = REPO / "docs" / "images" / "review.png"


def main() -> int:
    import uvicorn
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from defectkit.cli import main as cli
    from defectkit.review.app import ReviewState, create_app

    work_dir = Path(tempfile.mkdtemp(prefix="review-shot-"))
    try:
        options = [f"{k}={v}".replace(" ", "") for k, v in OPTIONS.items()]
        if cli(["run", CONFIG, "--work-dir", str(work_dir), "--cfg-options", *options]) not in (0, 3):
            return 1
        state = ReviewState(work_dir, CONFIG, dict(OPTIONS))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning"))
        threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        chrome = webdriver.ChromeOptions()
        chrome.binary_location = shutil.which("chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,720", "--hide-scrollbars"):
            chrome.add_argument(flag)
        driver = webdriver.Chrome(options=chrome, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
        wait = WebDriverWait(driver, 30)
        try:
            driver.get(base + "/")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"))
            # The photo with the fewest instances (two or more) shows the page best: a long list scrolls off the shot.
            counts = [int(c.text.split(" inst.")[0].split()[-1]) for c in driver.find_elements(By.CSS_SELECTOR, "#grid .card .meta")]
            pick = min(range(len(counts)), key=lambda i: (counts[i] < 2, counts[i]))
            driver.find_elements(By.CSS_SELECTOR, "#grid .card")[pick].click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#instances li.inst"))
            driver.find_element(By.CSS_SELECTOR, '#instances li[data-index="0"] .reject').click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#instances li[data-decision="reject"]'))
            wait.until(lambda d: d.execute_script("return document.getElementById('pred-img').complete"))
            shot = work_dir / "shot.png"
            driver.save_screenshot(str(shot))
        finally:
            driver.quit()
            server.should_exit = True
        Image.open(shot).convert("RGB").quantize(colors=128).save(OUT, optimize=True)
        print(f"{OUT}: {OUT.stat().st_size / 1024:.0f} KB")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
