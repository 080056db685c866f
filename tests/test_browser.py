"""What a person sees: headless Chromium opens the Visdom page that a two-epoch run pushed to."""

import os
import shutil
import time

import pytest

import main

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1100"]
PANES = """return Array.from(document.querySelectorAll('.react-grid-item')).map(pane => ({
    text: pane.innerText,
    images: Array.from(pane.querySelectorAll('img')).filter(i => i.complete).map(i => [i.naturalWidth, i.naturalHeight]),
    traces: Array.from(pane.querySelectorAll('.js-plotly-plot')).flatMap(p => p.data.map(t => [t.name, Array.from(t.x)])),
}))"""


def skip_unless_ci(reason: str) -> None:
    """Skip where Chromium cannot run; in CI (.ci/run installs it) that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        skip_unless_ci("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    try:  # explicit paths: Selenium Manager would otherwise try to download a driver
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as error:
        skip_unless_ci(f"Chromium could not be started: {error.msg}")
    yield driver
    driver.quit()


def test_the_page_shows_the_grids_and_the_loss_plot(visdom_server, browser, data_dir, tmp_path):
    assert main.main(["--epochs", "2", "--batch-size", "64", "--num-images", "16", "--data-dir", str(data_dir),
                      "--out", str(tmp_path / "run"), "--visdom-server", "http://127.0.0.1",
                      "--visdom-port", str(visdom_server.port), "--visdom-env", "browser"]) == 0
    browser.get(f"{visdom_server.url}/env/browser")
    expected = {  # title → pixel size of its image: 16 images in a 4x4 grid, the views 10 wide
        "test images (fixed)": (122, 122),
        "reconstructions, epoch 2": (122, 122),
        "samples from fixed z ~ N(0, I), epoch 2": (122, 122),
        "traversal: 10 most used dims, -3..3, epoch 2": (302, 302),
        "interpolations, epoch 2": (302, 122),  # 4 pairs of test images
    }
    deadline = time.monotonic() + 30
    while True:
        panes = browser.execute_script(PANES)
        found = {title: pane["images"] for pane in panes for title in expected if title in pane["text"]}
        plots = [pane["traces"] for pane in panes if pane["traces"]]
        if (all(len(images) == 1 for images in found.values()) and len(found) == len(expected) and plots) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(1)  # let the grid layout settle before the screenshot
    browser.save_screenshot(str(tmp_path / "visdom.png"))
    print(f"screenshot: {tmp_path / 'visdom.png'}")
    assert {title: tuple(images[0]) for title, images in found.items() if images} == expected
    assert len(plots) == 1 and sorted(plots[0]) == [["test", [1, 2]], ["train", [1, 2]]]
    assert (tmp_path / "visdom.png").stat().st_size > 10_000
