"""Open a Visdom page in headless Chromium (Debian's chromium, chromium-driver); save a screenshot.

    python tools/screenshot_visdom.py http://localhost:8097/env/main docs/latent.png --crop

tests/test_browser.py drives the browser through the same functions.
"""

import argparse
import io
import math
import shutil
import sys
import tempfile
import time

CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1600,1100",
]
# Every pane's text (title included), its loaded images' pixel sizes, its plot traces (name, x),
# and the number of its input fields (a properties pane's values).
PANES = """return Array.from(document.querySelectorAll('.react-grid-item')).map(pane => ({
    text: pane.innerText,
    inputs: pane.querySelectorAll('input').length,
    images: Array.from(pane.querySelectorAll('img')).filter(i => i.complete)
        .map(i => [i.naturalWidth, i.naturalHeight]),
    traces: Array.from(pane.querySelectorAll('.js-plotly-plot'))
        .flatMap(p => p.data.map(t => [t.name, Array.from(t.x)])),
}))"""
# The box [left, top, right, bottom] around every pane, with the grid's 10-pixel margin.
WINDOWS_BOX = """const boxes = Array.from(document.querySelectorAll('.react-grid-item'))
    .map(pane => pane.getBoundingClientRect());
return [Math.min(...boxes.map(b => b.left)) - 10, Math.min(...boxes.map(b => b.top)) - 10,
    Math.max(...boxes.map(b => b.right)) + 10, Math.max(...boxes.map(b => b.bottom)) + 10]"""


def chromium(profile_dir: str):
    """Headless Chromium driven by chromedriver, both from PATH; RuntimeError if either fails."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        raise RuntimeError(
            "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROME_FLAGS, f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    try:  # explicit paths: Selenium Manager would otherwise try to download a driver
        return webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as error:
        raise RuntimeError(f"Chromium could not be started: {error.msg}") from None


def wait_for_panes(driver, ready, seconds: float = 30) -> list[dict]:
    """Poll the page's panes until ready(panes) or the time is up; then let the layout settle."""
    deadline = time.monotonic() + seconds
    while not ready(driver.execute_script(PANES)) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    return driver.execute_script(PANES)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="the Visdom page, e.g. http://localhost:8097/env/main")
    parser.add_argument("png", help="where to write the screenshot")
    parser.add_argument(
        "--panes",
        type=int,
        default=6,
        help="wait until this many panes have content (default: %(default)s)",
    )
    parser.add_argument(
        "--crop", action="store_true", help="keep only the windows, not the page around them"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as profile:
        try:
            driver = chromium(profile)
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        try:
            driver.get(args.url)
            panes = wait_for_panes(
                driver,
                lambda panes: (
                    len(panes) >= args.panes
                    and all(p["images"] or p["traces"] or p["inputs"] for p in panes)
                ),
            )
            # the window tall enough for every pane and its margin, so that the shot holds them
            bottom = driver.execute_script(WINDOWS_BOX)[3]
            missing = math.ceil(bottom - driver.execute_script("return window.innerHeight"))
            if missing > 0:
                size = driver.get_window_size()
                driver.set_window_size(size["width"], size["height"] + missing)
                panes = wait_for_panes(driver, lambda panes: True)
            if args.crop:  # 256 colours: the page has few, and the file is a third of the size
                from PIL import Image

                box = [round(edge) for edge in driver.execute_script(WINDOWS_BOX)]
                page = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
                page.crop(box).quantize(256).save(args.png, optimize=True)
            else:
                driver.save_screenshot(args.png)
        finally:
            driver.quit()
    print(f"{len(panes)} panes; screenshot in {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
